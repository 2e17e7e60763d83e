// `store.revoke_on_shutdown` through the real stack: when Envoy stops (SIGTERM) it shuts its
// wasm VMs down, and bffgate ends the sessions it holds and sends their refresh tokens'
// revocations at once. Measured on Envoy 1.40: Envoy's event loop has already stopped by then
// and it exits without waiting for proxy_done, so only the requests that leave at once on an
// open connection reach the provider (docs/operations.md has the figures). This file checks
// what bffgate controls: the VM takes every session, says so, and never revokes a grant twice;
// and without the setting a stop sends nothing.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';

import {
  IDP, browserPool, idpStats, loginOk, rawRequest,
} from '../lib/client.mjs';
import { bootStack, readLogSince } from '../lib/harness.mjs';
import { renderVariant } from '../lib/variant.mjs';

const SESSIONS = 6;

async function signInThenStop(name, settings) {
  const boot = await bootStack({ envoyConfig: renderVariant(name, settings) });
  const pool = browserPool();
  try {
    for (let i = 0; i < SESSIONS; i++) await loginOk(pool.open(`${name}-${i}`), i % 2 ? 'bob' : 'alice');
    const reset = await rawRequest('POST', `${IDP}/__reset`, { headers: { 'content-type': 'application/json' } });
    assert.equal(reset.status, 200);
    const offset = fs.statSync(boot.envoyLog).size;
    await boot.stack.stopEnvoy();
    return { log: readLogSince(boot.envoyLog, offset), idp: await idpStats() };
  } finally {
    pool.closeAll();
    await boot.stack.stop();
  }
}

test('with revoke_on_shutdown, the stopping VM ends every session and sends each revocation once', async (t) => {
  const { log, idp } = await signInThenStop('shutdown-on', { store: { revoke_on_shutdown: true } });
  const taken = [...log.matchAll(/shutdown: (\d+) sessions ended, (\d+) refresh tokens to revoke/g)]
    .map((m) => [Number(m[1]), Number(m[2])]);
  assert.ok(taken.length >= 1, 'the VMs said what they took');
  const ended = taken.reduce((a, [e]) => a + e, 0);
  const queued = taken.reduce((a, [, q]) => a + q, 0);
  assert.equal(ended, SESSIONS, `every session ended exactly once across the VMs: ${JSON.stringify(taken)}`);
  assert.equal(queued, SESSIONS, 'one refresh token each');
  assert.match(log, /audit \{[^\n]*"event":"revoke_all"[^\n]*"trigger":"shutdown"/);
  assert.ok(idp.revocation_requests <= SESSIONS, `never more than one revocation per grant: ${idp.revocation_requests}`);
  // What reached the provider before the process was gone (not asserted: Envoy does not wait).
  t.diagnostic(`revoke_on_shutdown: ${idp.revocations} of ${SESSIONS} revocations reached the provider`);
});

test('without it, stopping Envoy sends no revocation', async () => {
  const { log, idp } = await signInThenStop('shutdown-off', {});
  assert.doesNotMatch(log, /shutdown: \d+ sessions ended/);
  assert.equal(idp.revocation_requests, 0);
});
