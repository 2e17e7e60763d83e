// private_key_jwt (RFC 7523, OIDC Core 9) through the real stack: Envoy with bffgate configured
// as a user would for a client that has no secret (`client.auth_method: private_key_jwt`, the
// key in BFFGATE_CLIENT_KEY listed in the filter's host_env_keys), and the demo provider
// (oidc-provider) with a client `bffgate-pkjwt` that knows only the public key.
//   - login, a protected call, renewals and logout all authenticate with a signed assertion
//     (the provider counts grants by authentication method; it refuses a replayed `jti`, so
//     renewals that succeed prove a fresh assertion per request);
//   - the wrong key (a key the provider does not know, under the configured kid) makes logins
//     fail cleanly: the browser gets login_failed, the audit line carries the provider's error
//     code, no session is created, and the key never shows in a log or a response.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { after, test } from 'node:test';

import { APP, Browser, idpStats, login, loginOk, resetApis } from '../lib/client.mjs';
import {
  ACCEPT_JSON, CSRF, assertJsonError, bootStack, eventually, findSecretsInLog,
} from '../lib/harness.mjs';
import { auditEvents } from '../lib/observe.mjs';
import { renderVariant } from '../lib/variant.mjs';

const KID = 'pkjwt-test-1';
const ORDERS = 'https://orders.api.local';

/** A fresh P-256 key pair as JWKs (private with kid, and the public set for the provider). */
function keyPair() {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const priv = { ...privateKey.export({ format: 'jwk' }), kid: KID };
  const pub = { ...publicKey.export({ format: 'jwk' }), kid: KID, use: 'sig', alg: 'ES256' };
  return { priv, jwks: { keys: [pub] } };
}

/**
 * The shipped settings with the private_key_jwt client; the rendered Envoy config lists
 * BFFGATE_CLIENT_KEY in host_env_keys (next to the other secrets), as docs/configuration.md
 * tells a user to.
 */
function pkjwtConfig() {
  const file = renderVariant('pkjwt', {
    client: { client_id: 'bffgate-pkjwt', auth_method: 'private_key_jwt', private_key_kid: KID },
  });
  const yaml = fs.readFileSync(file, 'utf8');
  const withKey = yaml.replace(/^(\s*)- BFFGATE_ADMIN_TOKEN$/gm, '$1- BFFGATE_ADMIN_TOKEN\n$1- BFFGATE_CLIENT_KEY');
  assert.notEqual(withKey, yaml, 'the rendered config has host_env_keys to extend');
  fs.writeFileSync(file, withKey);
  return file;
}

let boot = null;
async function start({ envoyKey, providerJwks }) {
  await boot?.stack.stop();
  boot = await bootStack({
    envoyConfig: pkjwtConfig(),
    // 6 s tokens: renewals within a test (the renewal rule renews at half the lifetime).
    env: { BFFGATE_IDP_PKJWT_JWKS: JSON.stringify(providerJwks), BFFGATE_ACCESS_TOKEN_TTL: '6' },
    envoyEnv: { BFFGATE_CLIENT_KEY: JSON.stringify(envoyKey) },
  });
  return boot;
}
after(async () => {
  await boot?.stack.stop();
});

async function orders(b) {
  const r = await b.fetchApi('GET', `${APP}/api/orders`, { headers: ACCEPT_JSON });
  return { res: r, token: r.json?.seen?.authorization ?? null };
}

const tokenPayload = (bearer) => JSON.parse(Buffer.from(bearer.replace(/^Bearer /, '').split('.')[1], 'base64url'));

test('login, renewals and logout authenticate with a fresh signed assertion each', async () => {
  const { priv, jwks } = keyPair();
  await start({ envoyKey: priv, providerJwks: jwks });
  const s0 = await idpStats();
  await resetApis();

  const b = new Browser({ name: 'alice-pkjwt' });
  await loginOk(b, 'alice');
  const first = await orders(b);
  assert.equal(first.res.status, 200, `orders: ${first.res.status} ${first.res.text}`);
  assert.equal(tokenPayload(first.token).aud, ORDERS);
  assert.equal(tokenPayload(first.token).client_id, 'bffgate-pkjwt');

  // Two renewals (each a refresh grant with its own assertion; a replayed jti is refused).
  let last = first.token;
  for (let i = 0; i < 2; i += 1) {
    const renewed = await eventually(async () => {
      const r = await orders(b);
      assert.equal(r.res.status, 200, `orders: ${r.res.status} ${r.res.text}`);
      return r.token !== last ? r.token : null;
    }, { ms: 15_000, every: 500 });
    assert.ok(renewed, `renewal ${i + 1} within 15 s`);
    last = renewed;
  }

  const s1 = await idpStats();
  const auth = (m) => (s1.client_auth?.[m] || 0) - (s0.client_auth?.[m] || 0);
  assert.ok(auth('private_key_jwt') >= 3, `code exchange + 2 refreshes by private_key_jwt: ${JSON.stringify(s1.client_auth)}`);
  assert.equal(auth('client_secret_basic'), 0, 'no grant by the client secret');
  assert.ok((s1.grants.refresh_token || 0) - (s0.grants.refresh_token || 0) >= 2);

  const off = fs.statSync(boot.envoyLog).size;
  const lo = await b.post('/auth/logout', { headers: { ...ACCEPT_JSON, ...CSRF } });
  assert.ok(lo.status < 400, `logout: ${lo.status} ${lo.text}`);
  const revocation = await eventually(
    () => auditEvents(boot.envoyLog, off).find((e) => e.event === 'revocation'),
    { ms: 5000 },
  );
  assert.ok(revocation, 'a revocation audit line');
  const refresh = revocation.results.find((r) => r.token === 'refresh_token');
  assert.equal(refresh?.result, 'revoked', `the provider took the assertion at revocation too: ${revocation.line}`);

  const leaks = findSecretsInLog(boot.envoyLog, boot.offset, [[priv.d, 'client private key']]);
  assert.deepEqual(leaks, [], 'the private key never appears in Envoy\'s log');
});

test('a key the provider does not know: login_failed with the provider\'s error code, no session', async () => {
  const { jwks } = keyPair();
  const { priv: wrong } = keyPair(); // same kid, another key
  await start({ envoyKey: wrong, providerJwks: jwks });
  const b = new Browser({ name: 'alice-wrong-key' });
  const r = await login(b, 'alice', 'alice');
  assertJsonError(r.callback, [400, 502], 'login_failed', 'callback with a refused assertion');
  assert.equal(b.sessionCookie, undefined, 'no session cookie');
  assert.ok(!r.callback.text.includes(wrong.d), 'the key is not in the answer');
  const failed = await eventually(
    () => auditEvents(boot.envoyLog, boot.offset).find((e) => e.event === 'login_failed'),
    { ms: 5000 },
  );
  assert.ok(failed, 'a login_failed audit line');
  assert.match(failed.line, /invalid_client/, `the provider's error code in the audit line: ${failed.line}`);
  assert.deepEqual(findSecretsInLog(boot.envoyLog, boot.offset, [[wrong.d, 'client private key']]), []);
});
