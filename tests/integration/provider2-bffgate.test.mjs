// bffgate in front of the second real provider, Glewlwyd 2.7 (Debian; scripts/provider2.mjs),
// configured as docs/providers/glewlwyd.md tells a user: the issuer alone (discovery), the
// provider's cluster pointed at it, its client secret, and the audiences it can serve. The real
// Envoy with the filter, the demo APIs trusting Glewlwyd's tokens, and Glewlwyd's own login page.
//   - login with PKCE and nonce, /auth/user, the bearer swap with a token for exactly the route's
//     audience (RFC 8707 resource), a second audience by refresh grant, renewals of 6 s tokens,
//     logout revoking refresh and access tokens at Glewlwyd, RP-initiated logout with
//     id_token_hint;
//   - where Glewlwyd cannot do what bffgate asks: it ignores down-scoping on refresh, so an
//     audience configured with narrower scopes gets a 403 and a token_refused audit line and the
//     token never reaches the API; its back-channel logout tokens have no `exp` (required by
//     OIDC Back-Channel Logout 1.0), so bffgate refuses them with 400 and a log line.
//   - no token, code or secret in Envoy's log.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, test } from 'node:test';

import { startProvider2 } from '../../scripts/provider2.mjs';
import { APP, Browser, describe as d, jwtPayload } from '../lib/client.mjs';
import { logoutAtGlewlwyd, authorizeAtGlewlwyd } from '../lib/glewlwyd.mjs';
import {
  ACCEPT_JSON, CSRF, assertJsonError, bootStack, eventually, findSecretsInLog, readLogSince,
} from '../lib/harness.mjs';
import { auditEvents, prometheus } from '../lib/observe.mjs';
import { renderVariant } from '../lib/variant.mjs';

const ISSUER = 'http://localhost:9100/api/oidc';
const ORDERS = 'https://orders.api.local';
const PROFILE = 'https://profile.api.local';

/**
 * The shipped settings with Glewlwyd as the provider: its issuer (discovery does the rest), the
 * demo's provider cluster pointed at Glewlwyd's port, id_token_hint on RP-initiated logout (its
 * end_session needs one), access tokens revoked at logout (Glewlwyd can), and the profile
 * audience obtained by a refresh grant (Glewlwyd has no token exchange). `profileScopes` sets
 * that audience's down-scoping.
 */
function glewlwydConfig(profileScopes = null) {
  const file = renderVariant('glewlwyd', {
    provider: { issuer: ISSUER, revoke_access_tokens: true },
    client: { logout_id_token_hint: true },
    audiences: { [PROFILE]: { acquire: 'refresh', scopes: profileScopes } },
  });
  const yaml = fs.readFileSync(file, 'utf8');
  const re = /(cluster_name: bffgate_idp\s+endpoints:\s+- lb_endpoints:\s+- endpoint: \{ address: \{ socket_address: \{ address: 127\.0\.0\.1, port_value: )9000/;
  assert.match(yaml, re, 'the rendered config has the provider cluster');
  fs.writeFileSync(file, yaml.replace(re, '$19100'));
  return file;
}

let boot;
let p;
const seen = new Map(); // secret -> kind, for the log scan
before(async () => {
  // 6 s tokens: renewals within the test. Back-channel logout to Envoy's https listener (self-signed).
  p = await startProvider2({
    env: { ...process.env, BFFGATE_ACCESS_TOKEN_TTL: '6', BFFGATE_GLEWLWYD_TLS_NO_VERIFY: '1', BFFGATE_ROTATE_REFRESH: '' },
  });
  seen.set(p.clientSecret(), 'client secret');
  boot = await bootStack({
    envoyConfig: glewlwydConfig(),
    apiEnv: { BFFGATE_IDP_ISSUER: ISSUER },
    envoyEnv: { BFFGATE_CLIENT_SECRET: p.clientSecret() },
  });
}, { timeout: 90_000 });
after(async () => {
  await boot?.stack.stop();
  await p?.stop();
}, { timeout: 30_000 });

/** Signs in through bffgate and Glewlwyd's login page; returns the browser. */
async function signIn(user) {
  const b = new Browser({ name: `glewlwyd-${user}` });
  const start = await b.navigate(`${APP}/auth/login?return_to=%2Forders`);
  assert.equal(start.status, 302, d(start));
  const authorize = new URL(start.location);
  assert.equal(`${authorize.origin}${authorize.pathname}`, `${ISSUER.replace('/api/oidc', '')}/api/oidc/auth`, 'the discovered authorization endpoint');
  assert.equal(authorize.searchParams.get('code_challenge_method'), 'S256');
  assert.ok(authorize.searchParams.get('nonce'), 'nonce (Glewlwyd requires one)');
  assert.deepEqual(authorize.searchParams.getAll('resource').sort(), [ORDERS, PROFILE], 'every resource audience at authorize');
  const back = await authorizeAtGlewlwyd(b, start.location, user, user, { redirectUri: `${APP}/auth/callback` });
  assert.equal(back.searchParams.get('error'), null, `authorization error: ${back.searchParams.get('error')}`);
  seen.set(back.searchParams.get('code'), 'authorization code');
  const cb = await b.navigate(back.href);
  assert.equal(cb.status, 302, `callback: ${d(cb)}`);
  assert.ok(b.sessionCookie, 'a session cookie');
  assert.equal(cb.location, '/orders', 'back at return_to');
  return b;
}

async function api(b, path) {
  const r = await b.fetchApi('GET', `${APP}${path}`, { headers: ACCEPT_JSON });
  const bearer = r.json?.seen?.authorization ?? null;
  if (bearer) seen.set(bearer.replace(/^Bearer /, ''), 'access token');
  return { res: r, bearer, claims: bearer ? jwtPayload(bearer.replace(/^Bearer /, '')) : null };
}

test('login, both audiences, renewals and logout through bffgate against Glewlwyd', async () => {
  const off = fs.statSync(boot.envoyLog).size;
  const glewOff = fs.statSync(p.logFile).size;
  const b = await signIn('alice');

  const user = await b.get(`${APP}/auth/user`, { headers: ACCEPT_JSON });
  assert.equal(user.status, 200, d(user));
  assert.equal(user.json.sub, 'alice');

  const o1 = await api(b, '/api/orders');
  assert.equal(o1.res.status, 200, d(o1.res));
  assert.equal(o1.claims.iss, ISSUER);
  assert.equal(o1.claims.aud, ORDERS, 'a token for exactly the orders audience');
  assert.ok(!String(o1.res.json.seen.cookie || '').includes('__Host-bff-session'), 'the session cookie is not forwarded');

  const p1 = await api(b, '/api/profile');
  assert.equal(p1.res.status, 200, d(p1.res));
  assert.equal(p1.claims.aud, PROFILE, 'the refresh grant with resource= gave a profile token');
  assert.notEqual(p1.bearer, o1.bearer);

  // 6 s tokens: the next requests renew (one refresh grant per audience and lifetime).
  const renewed = await eventually(async () => {
    const r = await api(b, '/api/orders');
    assert.equal(r.res.status, 200, d(r.res));
    return r.bearer !== o1.bearer ? r : null;
  }, { ms: 15_000, every: 500 });
  assert.ok(renewed, 'the orders token was renewed within 15 s');
  assert.equal(renewed.claims.aud, ORDERS, 'the renewed token is for the same audience');
  const renewals = auditEvents(boot.envoyLog, off).filter((e) => e.event === 'token_renewed');
  assert.ok(renewals.some((e) => e.audience === ORDERS), `token_renewed for orders: ${renewals.map((e) => e.line).join('\n')}`);
  assert.ok(renewals.some((e) => e.audience === PROFILE), 'token_renewed for profile (its first token)');

  // Logout: refresh and access tokens revoked at Glewlwyd, and where to end Glewlwyd's session.
  const lo = await b.post('/auth/logout', { headers: { ...ACCEPT_JSON, ...CSRF } });
  assert.equal(lo.status, 200, d(lo));
  const es = new URL(lo.json.end_session_url);
  assert.equal(`${es.origin}${es.pathname}`, 'http://localhost:9100/api/oidc/end_session', 'the discovered end_session endpoint');
  assert.ok(es.searchParams.get('id_token_hint'), 'id_token_hint (client.logout_id_token_hint)');
  seen.set(es.searchParams.get('id_token_hint'), 'ID token');
  const revocation = await eventually(() => auditEvents(boot.envoyLog, off).find((e) => e.event === 'revocation'), { ms: 5000 });
  assert.ok(revocation, 'a revocation audit line');
  const results = Object.fromEntries(revocation.results.map((r) => [r.token, r.result]));
  assert.equal(results.refresh_token, 'revoked', revocation.line);
  assert.equal(results.access_token, 'revoked', revocation.line);
  const after1 = await api(b, '/api/orders');
  assertJsonError(after1.res, 401, 'unauthenticated', 'after logout');

  // RP-initiated logout at Glewlwyd with that hint: it ends its own session and sends a
  // back-channel logout token without `exp`, which bffgate refuses (400) and logs.
  const glew = await logoutAtGlewlwyd(b, es.href);
  assert.equal(glew.deleted.status, 200, 'Glewlwyd ended its session');
  const refused = await eventually(() => /back-channel logout refused: logout_token: exp missing/.test(readLogSince(boot.envoyLog, off)), { ms: 10_000 });
  assert.ok(refused, 'bffgate logged why it refused Glewlwyd\'s logout token');
  // ... and Glewlwyd saw the refusal (its log names the status).
  const status400 = await eventually(
    () => /backchannel_logout response for client bffgate, response status 400/.test(readLogSince(p.logFile, glewOff)),
    { ms: 5000 },
  );
  assert.ok(status400, 'Glewlwyd got 400 for its logout token');
});

test('Glewlwyd ignores down-scoping on refresh: bffgate refuses the token (403, audit, metric) and the API never sees it', async () => {
  // The profile audience asks for `profile` only; Glewlwyd returns the whole grant's scope.
  await boot.stack.stopEnvoy();
  glewlwydConfig(['profile']);
  await boot.stack.startEnvoy();
  const off = fs.statSync(boot.envoyLog).size;
  const before0 = (await prometheus()).get('bffgate_tokens_refused') ?? 0;
  const b = await signIn('alice');
  const o = await api(b, '/api/orders');
  assert.equal(o.res.status, 200, 'the login audience is unaffected');
  const r = await api(b, '/api/profile');
  assertJsonError(r.res, 403, 'forbidden', 'a token with more scopes than asked for');
  assert.equal(r.bearer, null, 'the API never got it');
  const refused = auditEvents(boot.envoyLog, off).find((e) => e.event === 'token_refused');
  assert.ok(refused, 'a token_refused audit line');
  assert.equal(refused.audience, PROFILE);
  assert.equal(refused.reason, 'scope');
  assert.match(refused.detail, /orders:read/, `the extra scopes are named: ${refused.line}`);
  const after0 = (await prometheus()).get('bffgate_tokens_refused') ?? 0;
  assert.ok(after0 >= before0 + 1, `bffgate_tokens_refused ${before0} -> ${after0}`);
  // The session is intact: orders still works.
  assert.equal((await api(b, '/api/orders')).res.status, 200);
});

test('nothing secret in Envoy\'s log', () => {
  assert.deepEqual(findSecretsInLog(boot.envoyLog, boot.offset, seen), []);
});
