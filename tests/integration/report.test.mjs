// Report mode (`mode: report`, shadow mode) through the real stack (Envoy + bffgate,
// oidc-provider, the demo APIs): a route whose scopes and sign-in level are only reported.
//
// - bob (no orders:write, a password sign-in) reaches the orders API on `orders-write` and
//   `orders-export` with his own token: the API answers, not bffgate;
// - each would-be refusal is an audit line `policy_report` (route, code, session handle) and a
//   counter `bffgate_policy_report_<code>`; nothing is counted as denied;
// - the session and CSRF are enforced as usual (no cookie: 401; no CSRF header: 403).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, test } from 'node:test';

import {
  APP, browserPool, envoyStats, jwtPayload, loginOk,
} from '../lib/client.mjs';
import {
  CSRF, assertJsonError, bootStack, eventually, readLogSince,
} from '../lib/harness.mjs';
import { renderVariant } from '../lib/variant.mjs';

let boot;
const pool = browserPool();
const browser = (name) => pool.open(name);

before(async () => {
  boot = await bootStack({
    envoyConfig: renderVariant('report', {
      routes: { 'orders-write': { mode: 'report' }, 'orders-export': { mode: 'report' } },
    }),
  });
}, { timeout: 120_000 });

after(async () => {
  pool.closeAll();
  if (boot) await boot.stack.stop();
}, { timeout: 60_000 });

const counter = async (name) => {
  const stats = await envoyStats(name);
  assert.ok(stats.has(`wasmcustom.${name}`), `${name} is defined: ${[...stats.keys()]}`);
  return stats.get(`wasmcustom.${name}`);
};

test('a would-be refusal reaches the API with the user\'s token and is reported', async () => {
  const logOffset = fs.statSync(boot.envoyLog).size;
  const scope0 = await counter('bffgate_policy_report_insufficient_scope');
  const level0 = await counter('bffgate_policy_report_insufficient_user_authentication');
  const denied0 = await counter('bffgate_denied_insufficient_scope');
  const b = browser('bob');
  await loginOk(b, 'bob');

  // orders-write needs orders:write, which bob lacks: bffgate lets it through, the orders API
  // itself refuses it (its body names the API and the token it saw: bob's).
  const w = await b.fetchApi('POST', `${APP}/api/orders`, { json: { item: 'report-mode' }, headers: { ...CSRF, origin: APP } });
  assert.equal(w.status, 403, `${w.status} ${w.text}`);
  assert.equal(w.json.api, 'orders', 'the answer comes from the API, not from bffgate');
  assert.equal(w.json.error, 'insufficient_scope');
  const token = w.json.seen.authorization.replace(/^Bearer /, '');
  assert.equal(jwtPayload(token).sub, 'bob');
  assert.ok(!String(w.json.seen.cookie ?? '').includes('__Host-bff'), 'no bffgate cookie upstream');

  // orders-export asks for an MFA sign-in at most 300 s old: reported, served.
  const e = await b.fetchApi('GET', `${APP}/api/orders/export`);
  assert.equal(e.status, 200, `${e.status} ${e.text}`);
  assert.equal(e.json.api, 'orders');
  assert.ok(e.json.export, 'the export was served');

  assert.equal(await counter('bffgate_policy_report_insufficient_scope'), scope0 + 1);
  assert.equal(await counter('bffgate_policy_report_insufficient_user_authentication'), level0 + 1);
  assert.equal(await counter('bffgate_denied_insufficient_scope'), denied0, 'not counted as a refusal');
  const seen = await eventually(() => {
    const log = readLogSince(boot.envoyLog, logOffset);
    return /audit \{[^\n]*"event":"policy_report"[^\n]*"route":"orders-write"[^\n]*"would_refuse":"insufficient_scope"/.test(log)
      && /audit \{[^\n]*"event":"policy_report"[^\n]*"route":"orders-export"[^\n]*"would_refuse":"insufficient_user_authentication"/.test(log);
  }, { ms: 5000 });
  assert.ok(seen, 'policy_report audit lines for both routes');
  const lines = readLogSince(boot.envoyLog, logOffset).split('\n').filter((l) => l.includes('"policy_report"'));
  assert.ok(!lines.some((l) => l.includes(token)), 'no token in the audit line');
});

test('report mode still enforces the session and CSRF', async () => {
  const anonymous = browser('anonymous');
  assertJsonError(await anonymous.fetchApi('POST', `${APP}/api/orders`, { json: {}, headers: CSRF }), 401, 'unauthenticated');
  const b = browser('bob-2');
  await loginOk(b, 'bob');
  const r = await b.fetchApi('POST', `${APP}/api/orders`, { json: {} });
  assertJsonError(r, 403, 'csrf');
});
