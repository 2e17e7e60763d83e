// Session anomaly signals through the real stack (Envoy + bffgate, oidc-provider, the demo
// APIs), with `session.on_anomaly` set to `revoke` for a client-binding drift:
//
// - a stolen session cookie replayed from another client address (a loopback address in
//   another /24, as Envoy resolves it with use_remote_address) and another User-Agent: the
//   replay is refused, the session ends, its refresh token is revoked at the provider, and the
//   legitimate browser is signed out with a clear reason on /auth/user;
// - the audit line (`session_anomaly`) and the counter (`bffgate_session_anomalies`, kind
//   `network`) say so, and neither the log nor the store holds the address or the User-Agent;
// - the same client on the same network is never an anomaly (many requests, fresh connections).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, test } from 'node:test';

import {
  APP, Browser, SESSION_COOKIE, envoyStats, idpStats, loginOk,
} from '../lib/client.mjs';
import {
  assertJsonError, bootStack, eventually, readLogSince,
} from '../lib/harness.mjs';
import { ADMIN, adminPrometheus } from '../lib/observe.mjs';
import { renderVariant } from '../lib/variant.mjs';

const LEGIT_UA = 'Mozilla/5.0 (X11; Linux x86_64) legit-browser-7f3a';
const THIEF_UA = 'python-requests/2.32 thief-tool-9c1e';
const THIEF_ADDR = '127.0.1.9';

let boot;
const browsers = [];
function browser(name, o) {
  const b = new Browser({ name, ...o });
  browsers.push(b);
  return b;
}

before(async () => {
  const config = renderVariant('anomaly', {
    session: { on_anomaly: { network: 'revoke', user_agent: 'revoke' } },
  });
  boot = await bootStack({ envoyConfig: config });
}, { timeout: 120_000 });

after(async () => {
  for (const b of browsers) b.close();
  if (boot) await boot.stack.stop();
}, { timeout: 60_000 });

const anomalyCount = async (kind) => {
  const stats = await envoyStats(`bffgate_session_anomalies_${kind}`);
  assert.ok(stats.has(`wasmcustom.bffgate_session_anomalies_${kind}`), `the counter is defined: ${[...stats.keys()]}`);
  return stats.get(`wasmcustom.bffgate_session_anomalies_${kind}`);
};

test('the same client on its network is never an anomaly', async () => {
  const b = browser('steady', { headers: { 'user-agent': LEGIT_UA } });
  await loginOk(b, 'bob');
  const before = await anomalyCount('network') + await anomalyCount('user_agent');
  for (let i = 0; i < 20; i++) {
    const r = await b.fetchApi('GET', `${APP}/api/orders`, { fresh: i % 2 === 0 });
    assert.equal(r.status, 200, `request ${i}: ${r.status} ${r.text}`);
  }
  assert.equal(await anomalyCount('network') + await anomalyCount('user_agent'), before);
});

test('a stolen cookie replayed from another network and browser is revoked; the owner is told why', async () => {
  const logOffset = fs.statSync(boot.envoyLog).size;
  const legit = browser('legit', { headers: { 'user-agent': LEGIT_UA } });
  await loginOk(legit, 'alice');
  assert.equal((await legit.fetchApi('GET', `${APP}/api/orders`)).status, 200);
  const cookie = legit.sessionCookie;
  const revocations0 = (await idpStats()).revocations;
  const networkSignals0 = await anomalyCount('network');

  const thief = browser('thief', { headers: { 'user-agent': THIEF_UA }, localAddress: THIEF_ADDR });
  thief.setCookie(SESSION_COOKIE, cookie);
  const r = await thief.fetchApi('GET', `${APP}/api/orders`);
  assertJsonError(r, 401, 'unauthenticated');
  assert.ok(r.setCookies.some((c) => c.startsWith(`${SESSION_COOKIE}=;`) || /Max-Age=0/i.test(c)), `the cookie is cleared: ${r.setCookies}`);
  assert.equal(r.json.api, undefined, 'nothing reached the API');
  // The refresh token was revoked at the provider before the answer.
  assert.ok((await idpStats()).revocations > revocations0, 'the provider revoked the grant');
  // The owner is signed out, with the reason: on /auth/user (what the page asks first), and
  // on an API call (each answer also clears the dead cookie).
  const owner2 = legit.clone('legit-2');
  browsers.push(owner2);
  const u = await legit.fetchApi('GET', `${APP}/auth/user`);
  assertJsonError(u, 401, 'unauthenticated');
  assert.match(u.json.reason, /^anomaly:(network|user_agent)$/);
  assert.match(u.json.error_description, /another (network|browser)/);
  const again = await owner2.fetchApi('GET', `${APP}/api/orders`, { headers: { 'user-agent': LEGIT_UA } });
  assertJsonError(again, 401, 'unauthenticated');
  assert.match(again.json.error_description, /another (network|browser)/);
  // The thief's cookie is dead too.
  assertJsonError(await thief.fetchApi('GET', `${APP}/api/orders`), 401, 'unauthenticated');
  assert.ok(await anomalyCount('network') > networkSignals0, 'bffgate_session_anomalies_network moved');
  // In Prometheus' form, one counter with a kind label (the shipped stats_config).
  const prom = await adminPrometheus(ADMIN);
  assert.ok(prom.get('bffgate_session_anomalies{kind="network"}') >= 1, `prometheus: ${[...prom.keys()].filter((k) => k.includes('anomal'))}`);

  // The audit line names the kind and the session handle, never the address or User-Agent.
  const seen = await eventually(() => {
    const log = readLogSince(boot.envoyLog, logOffset);
    return /audit \{[^\n]*"event":"session_anomaly"[^\n]*"kind":"network"/.test(log)
      && /audit \{[^\n]*"event":"session_ended"[^\n]*"reason":"anomaly"/.test(log);
  }, { ms: 5000 });
  assert.ok(seen, 'session_anomaly (network) and session_ended (anomaly) audit lines');
  const audit = readLogSince(boot.envoyLog, logOffset)
    .split('\n').filter((l) => l.includes('audit {'));
  for (const secret of [THIEF_UA, LEGIT_UA, 'thief-tool', 'legit-browser', THIEF_ADDR]) {
    assert.ok(!audit.some((l) => l.includes(secret)), `${secret} in an audit line`);
  }
});

test('a new sign-in after the revocation works from the owner\'s browser', async () => {
  const b = browser('after', { headers: { 'user-agent': LEGIT_UA } });
  await loginOk(b, 'alice');
  assert.equal((await b.fetchApi('GET', `${APP}/api/orders`)).status, 200);
});
