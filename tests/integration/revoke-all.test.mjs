// `POST /sessions/revoke-all` on the operator listener, through the real stack (Envoy + bffgate,
// oidc-provider with slow revocations, the demo APIs):
//
// - every session ends at once (each browser gets 401 and its cookie cleared on its next call);
// - every refresh token is revoked at the provider, in the background, never more than
//   `admin_revoke_concurrency` (4) at once, while the answer came at once (202);
// - progress is in the log (`revoke-all: ... done`) and in counters; no token in the log;
// - before a stop: `node scripts/stack.mjs revoke-all` ends the sessions and waits for the
//   provider's answers, so an Envoy stopped after it leaves no live grant behind.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { promisify } from 'node:util';
import { after, before, test } from 'node:test';

import {
  APP, IDP, ROOT, browserPool, envoyStats, idpStats, loginOk, rawRequest,
} from '../lib/client.mjs';
import {
  CSRF, assertJsonError, bootStack, eventually, readLogSince,
} from '../lib/harness.mjs';
import { operatorRequest } from '../../scripts/lib/admin.mjs';

const SESSIONS = 12;
const SLOW_MS = 250;

let boot;
const pool = browserPool();

before(async () => {
  boot = await bootStack();
}, { timeout: 120_000 });

after(async () => {
  pool.closeAll();
  if (boot) await boot.stack.stop();
}, { timeout: 60_000 });

const counter = async (name) => (await envoyStats(name)).get(`wasmcustom.${name}`) ?? 0;

async function idp(method, path, body) {
  const r = await rawRequest(method, `${IDP}${path}`, {
    headers: { 'content-type': 'application/json' }, body: body && JSON.stringify(body),
  });
  assert.equal(r.status, 200, `${method} ${path}: ${r.status} ${r.text}`);
  return r.json;
}

test('revoke-all ends every session now and revokes every grant at the provider, paced', async () => {
  const browsers = [];
  for (let i = 0; i < SESSIONS; i++) {
    const b = pool.open(`user-${i}`);
    await loginOk(b, i % 2 ? 'bob' : 'alice');
    assert.equal((await b.fetchApi('GET', `${APP}/api/orders`)).status, 200);
    browsers.push(b);
  }
  await idp('POST', '/__reset');
  await idp('POST', '/__fault', { endpoint: 'revocation', mode: 'slow', delay_ms: SLOW_MS, count: SESSIONS * 2 });
  const revoked0 = await counter('bffgate_revoke_all_revoked');
  const logOffset = fs.statSync(boot.envoyLog).size;

  const started = Date.now();
  const r = await operatorRequest('POST', '/sessions/revoke-all', { headers: CSRF });
  const answeredMs = Date.now() - started;
  assert.equal(r.status, 202, `${r.status} ${r.text}`);
  assert.ok(r.json.sessions_ended >= SESSIONS, JSON.stringify(r.json));
  assert.equal(r.json.revocations_queued, r.json.sessions_ended, 'one refresh token per session');
  assert.equal(r.json.revocations_not_sent, 0);
  assert.equal(r.json.concurrency, 4);
  assert.ok(answeredMs < SLOW_MS * 2, `the answer does not wait for the provider (${answeredMs} ms)`);

  // Every session is over now, before the provider has answered.
  for (const b of browsers) {
    const res = await b.fetchApi('GET', `${APP}/api/orders`);
    assertJsonError(res, 401, 'unauthenticated');
  }

  const queued = r.json.revocations_queued;
  const done = await eventually(async () => (await idpStats()).revocations >= queued, { ms: 30_000 });
  assert.ok(done, `the provider revoked ${(await idpStats()).revocations} of ${queued}`);
  const stats = await idpStats();
  assert.equal(stats.revocations, queued);
  assert.ok(stats.revocation_max_inflight <= 4, `at most 4 at once, saw ${stats.revocation_max_inflight}`);
  assert.ok(stats.revocation_max_inflight >= 2, `several at once, saw ${stats.revocation_max_inflight}`);
  assert.ok(Date.now() - started >= Math.ceil(queued / 4) * SLOW_MS * 0.9, 'paced, not all at once');
  assert.equal(await counter('bffgate_revoke_all_revoked'), revoked0 + queued);

  const finished = await eventually(() => /revoke-all: done on this worker: \d+ revoked, 0 not revoked, 0 left/
    .test(readLogSince(boot.envoyLog, logOffset)), { ms: 5000 });
  assert.ok(finished, 'the progress line says done');
  const log = readLogSince(boot.envoyLog, logOffset);
  assert.match(log, /audit \{[^\n]*"event":"revoke_all"/);
  assert.ok(!/refresh_token=|"token":"[A-Za-z0-9_-]{20,}/.test(log), 'no token in the log');
  await idp('POST', '/__fault', { endpoint: 'revocation', mode: 'none' });
});

test('revoke-all needs the CSRF header, and signing in again works after it', async () => {
  const r = await operatorRequest('POST', '/sessions/revoke-all', {});
  assertJsonError(r, 403, 'csrf');
  const b = pool.open('after');
  await loginOk(b, 'alice');
  assert.equal((await b.fetchApi('GET', `${APP}/api/orders`)).status, 200);
});

test('before a stop: stack.mjs revoke-all waits for the provider, then Envoy stops with no live grant', async () => {
  for (let i = 0; i < 5; i++) await loginOk(pool.open(`stop-${i}`), i % 2 ? 'bob' : 'alice');
  await idp('POST', '/__reset');
  await idp('POST', '/__fault', { endpoint: 'revocation', mode: 'slow', delay_ms: SLOW_MS, count: 20 });
  const { stdout } = await promisify(execFile)('node', ['scripts/stack.mjs', 'revoke-all', '--timeout-s', '30'], { cwd: ROOT });
  const m = /revoke-all: (\d+) sessions ended; of (\d+) refresh tokens (\d+) revoked, 0 failed, 0 not sent/.exec(stdout);
  assert.ok(m, stdout);
  assert.ok(Number(m[1]) >= 6 && m[2] === m[1] && m[3] === m[2], stdout);
  // Every revocation was answered before the command returned: stopping Envoy now loses none.
  assert.equal((await idpStats()).revocations, Number(m[3]));
  await boot.stack.stopEnvoy();
  assert.equal((await idpStats()).revocations, Number(m[3]));
  await idp('POST', '/__fault', { endpoint: 'revocation', mode: 'none' });
});
