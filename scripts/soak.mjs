#!/usr/bin/env node
// `make soak`: churns the session store through the real login flow and shows that Envoy's memory
// levels off once the slot table is full.
//
// It starts its own stack (Envoy --concurrency 2, the IdP and the demo APIs) on a variant of the
// shipped config with a small store (store.max_sessions 200, max_pending_logins 200) and a short
// idle timeout (10 s), then creates ROUNDS x max_sessions sessions (alice/bob alternating, each in
// its own browser with its own provider session, PARALLEL at a time). Half of every batch is logged
// out right away (POST /auth/logout: slot emptied, refresh token revoked); the other half is left
// to be evicted when the table is full, or to go idle: half-way through, a quiet period of
// idle_timeout_s + 4 s lets the sweeper reclaim every kept session. Every SAMPLE_EVERY
// logins it prints Envoy's /memory (allocated, heap_size), its RSS, the store gauges and the
// operator API's session counts. At the end it checks the bound, that the newest sessions still
// work, and compares memory in the last quarter of the run with the second quarter: "levelled
// off" when the last quarter is not above the second by more than the tolerance.
//
// Bounded: at most ROUNDS x max_sessions logins and SOAK_MAX_SECONDS (default 240) of churn; it
// stops everything it started (also on Ctrl-C). Exit code 0 = bounded and levelled off.
//
// Knobs (environment): SOAK_MAX_SESSIONS (200), SOAK_ROUNDS (10), SOAK_PARALLEL (4),
// SOAK_SAMPLE_EVERY (100), SOAK_MAX_SECONDS (240), SOAK_TOLERANCE_BYTES (1 MiB),
// SOAK_TOLERANCE_RATIO (0.01): the last quarter may exceed the second by max(bytes, ratio x Q2).
// For scale: a store that kept every session would add about (2000 - 1000) x ~3.5 KB = 3.4 MiB
// between the two quarters.

import {
  adminMemory, adminPrometheus, mib, operatorCount,
} from './lib/admin.mjs';
import { request, sleep } from './lib/http.mjs';
import { ADMIN, APP, SESSION_COOKIE } from './lib/paths.mjs';
import { startStack } from './stack.mjs';
// The real login flow (a cookie jar per browser) and config variants: the integration tests' own.
import { loginMany, userStatus } from '../tests/lib/observe.mjs';
import { renderVariant } from '../tests/lib/variant.mjs';

const int = (name, dflt) => {
  const v = process.env[name];
  return v === undefined || v === '' ? dflt : Number.parseInt(v, 10);
};
const MAX_SESSIONS = int('SOAK_MAX_SESSIONS', 200);
const ROUNDS = int('SOAK_ROUNDS', 10);
const PARALLEL = int('SOAK_PARALLEL', 4);
const SAMPLE_EVERY = int('SOAK_SAMPLE_EVERY', 100);
const MAX_SECONDS = int('SOAK_MAX_SECONDS', 240);
const TOL_BYTES = int('SOAK_TOLERANCE_BYTES', 1048576);
const TOL_RATIO = Number(process.env.SOAK_TOLERANCE_RATIO || 0.01);
const IDLE_S = 10;
const TOTAL = ROUNDS * MAX_SESSIONS;

const t0 = Date.now();
const elapsed = () => ((Date.now() - t0) / 1000).toFixed(1);
const log = (msg) => console.log(`[soak ${elapsed().padStart(6)} s] ${msg}`);

function logout(b) {
  return request('POST', `${APP}/auth/logout`, {
    headers: { accept: 'application/json', 'x-csrf': '1', cookie: `${SESSION_COOKIE}=${b.sessionCookie}` },
  });
}

const envoyMemory = (pid) => adminMemory(ADMIN, pid);
const prometheus = () => adminPrometheus(ADMIN);

async function main() {
  log(`config: store.max_sessions ${MAX_SESSIONS}, max_pending_logins ${MAX_SESSIONS}, `
    + `session.idle_timeout_s ${IDLE_S}; ${TOTAL} logins, ${PARALLEL} in parallel, half logged out at once`);
  const envoyConfig = renderVariant('soak', {
    store: { max_sessions: MAX_SESSIONS, max_pending_logins: MAX_SESSIONS, when_full: 'evict_least_recently_used' },
    session: { idle_timeout_s: IDLE_S, touch_interval_s: 3 },
  });
  const stack = await startStack({ concurrency: 2, envoyConfig });
  let stopped = false;
  const stop = async () => {
    if (!stopped) {
      stopped = true;
      await stack.stop();
    }
  };
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.once(sig, () => {
      log(`${sig}: stopping the stack`);
      stop().finally(() => process.exit(130));
    });
  }
  const samples = [];
  const problems = [];
  try {
    const base = await envoyMemory(stack.envoyPid);
    log(`Envoy pid ${stack.envoyPid} ready; baseline allocated ${mib(base.allocated)}, heap ${mib(base.heapSize)}, RSS ${mib(base.rss)}`);
    console.log('   logins  logouts  allocated     heap_size     RSS           in_use  pending  alice+bob  evicted  idle/expired');
    let logouts = 0;
    let lastSample = 0;
    let maxLive = 0;
    let quiet = false;
    const kept = [];
    const sample = async (done, note) => {
      const mem = await envoyMemory(stack.envoyPid);
      const p = await prometheus();
      const live = (await operatorCount('alice')) + (await operatorCount('bob'));
      maxLive = Math.max(maxLive, live, p.get('bffgate_sessions_in_use') ?? 0);
      const s = {
        done, note, logouts, ...mem, inUse: p.get('bffgate_sessions_in_use'), pending: p.get('bffgate_pending_logins'),
        live, evictions: p.get('bffgate_store_evictions'),
        idle: (p.get('bffgate_sessions_ended_idle') ?? 0) + (p.get('bffgate_sessions_ended_expired') ?? 0),
      };
      samples.push(s);
      console.log(`   ${String(done).padStart(6)}  ${String(logouts).padStart(7)}  ${mib(s.allocated).padEnd(12)}  ${mib(s.heapSize).padEnd(12)}  `
        + `${mib(s.rss).padEnd(12)}  ${String(s.inUse).padStart(6)}  ${String(s.pending).padStart(7)}  ${String(live).padStart(9)}  ${String(s.evictions).padStart(7)}  ${String(s.idle).padStart(12)}${note ? `  (${note})` : ''}`);
      if (live > MAX_SESSIONS) problems.push(`${live} live sessions after ${done} logins > max_sessions ${MAX_SESSIONS}`);
    };
    let done = 0;
    while (done < TOTAL) {
      if ((Date.now() - t0) / 1000 > MAX_SECONDS) {
        problems.push(`time budget of ${MAX_SECONDS} s used up after ${done} logins`);
        break;
      }
      const n = Math.min(PARALLEL * 5, TOTAL - done);
      const browsers = await loginMany(n, { parallel: PARALLEL, name: `soak${done}-` });
      done += browsers.length;
      // log out every other one now; keep the rest (idle expiry or eviction ends them)
      const out = browsers.filter((_, i) => i % 2 === 0);
      const res = await Promise.all(out.map(logout));
      for (const r of res) if (r.status !== 200) problems.push(`logout: ${r.status} ${r.text.slice(0, 120)}`);
      logouts += out.length;
      kept.push(...browsers.filter((_, i) => i % 2 === 1));
      if (kept.length > 40) kept.splice(0, kept.length - 40);
      if (done - lastSample >= SAMPLE_EVERY || done >= TOTAL) {
        lastSample = done;
        await sample(done);
      }
      if (!quiet && done >= TOTAL / 2) {
        // A quiet period: every kept session goes idle and the sweeper must reclaim it.
        quiet = true;
        log(`quiet period: no requests for ${IDLE_S + 4} s (idle timeout ${IDLE_S} s + sweep)`);
        await sleep((IDLE_S + 4) * 1000);
        await sample(done, 'after the quiet period');
        const left = samples.at(-1).live;
        if (left !== 0) problems.push(`${left} sessions still live after the quiet period (idle sessions not reclaimed)`);
        kept.length = 0;
      }
    }
    // The newest kept sessions (created in the last seconds) must still work.
    const newest = kept.slice(-10);
    const st = await Promise.all(newest.map(userStatus));
    const bad = st.filter((r) => r.status !== 200);
    if (bad.length) problems.push(`${bad.length} of the 10 newest kept sessions do not work: ${bad.map((r) => r.status).join(',')}`);
    else log('the 10 newest kept sessions still work (GET /auth/user 200)');
    log(`most live sessions seen: ${maxLive} (bound ${MAX_SESSIONS})`);
    // Every session is accounted for: created = ended (logged out, evicted, idle/expired when
    // swept or when a login took the dead session's slot, ...) + the slots still occupied
    // (live sessions, and dead ones the sweeper has not reached yet). bffgate_sessions_in_use
    // is set once a second by each worker's sweep, so the identity is read again for a few
    // seconds until both sides are from after the last login.
    const live = (await operatorCount('alice')) + (await operatorCount('bob'));
    const reasons = ['logout', 'evicted', 'idle', 'expired', 'relogin', 'admin', 'backchannel', 'frontchannel', 'refresh_rejected', 'no_refresh_token'];
    let acct;
    for (let i = 0; i < 10; i += 1) {
      const p = await prometheus();
      const ended = reasons.map((r) => [r, p.get(`bffgate_sessions_ended_${r}`) ?? 0]).filter(([, v]) => v > 0);
      const inUse = p.get('bffgate_sessions_in_use') ?? 0;
      const created = p.get('bffgate_logins_completed');
      acct = { ended, inUse, created, sum: ended.reduce((a, [, v]) => a + v, 0) + inUse };
      if (acct.sum === acct.created) break;
      await sleep(1000);
    }
    log(`accounting: ${acct.created} sessions created = ${acct.ended.map(([r, v]) => `${v} ${r}`).join(' + ')} + ${acct.inUse} in the store (= ${acct.sum}; ${live} of them live)`);
    if (acct.sum !== acct.created) problems.push(`sessions unaccounted for: created ${acct.created}, ended + in the store ${acct.sum}`);
    if (live > acct.inUse) problems.push(`the operator API counts ${live} live sessions, more than the ${acct.inUse} in the store`);

    // verdict: second quarter vs last quarter of the run, by logins done
    // (the sample right after the quiet period is left out: the table is empty then)
    const q = (lo, hi) => samples.filter((s) => !s.note && s.done > lo * done && s.done <= hi * done);
    const q2 = q(0.25, 0.5);
    const q4 = q(0.75, 1.0);
    let levelled = false;
    if (q2.length && q4.length) {
      const stat = (arr, k) => ({ max: Math.max(...arr.map((s) => s[k])), mean: arr.reduce((a, s) => a + s[k], 0) / arr.length });
      const verdicts = [];
      levelled = true;
      for (const k of ['allocated', 'heapSize', 'rss']) {
        const a = stat(q2, k);
        const b = stat(q4, k);
        const growth = b.mean - a.mean;
        const tol = Math.max(TOL_BYTES, TOL_RATIO * a.mean);
        const ok = growth <= tol;
        if (k !== 'heapSize') levelled = levelled && ok; // heap_size only ever grows in tcmalloc; shown, not judged
        verdicts.push(`   ${k.padEnd(9)}  Q2 mean ${mib(a.mean)} (max ${mib(a.max)})  Q4 mean ${mib(b.mean)} (max ${mib(b.max)})  `
          + `growth ${mib(growth)}  tolerance ${mib(tol)}  ${k === 'heapSize' ? '(not judged)' : ok ? 'flat' : 'GROWING'}`);
      }
      console.log(`memory, second quarter (logins ${Math.round(0.25 * done)}-${Math.round(0.5 * done)}, ${q2.length} samples) `
        + `vs last quarter (${Math.round(0.75 * done)}-${done}, ${q4.length} samples):`);
      for (const v of verdicts) console.log(v);
    } else {
      problems.push('not enough samples for a verdict');
    }
    if (!levelled) problems.push('memory did not level off');
    log(`${done} logins, ${logouts} logouts in ${elapsed()} s`);
    if (problems.length) {
      console.log(`VERDICT: FAIL\n  - ${problems.join('\n  - ')}`);
      process.exitCode = 1;
    } else {
      console.log(`VERDICT: PASS: the store stayed within ${MAX_SESSIONS} sessions and Envoy's memory levelled off`);
    }
  } finally {
    await stop();
    log('stack stopped');
  }
}

main().catch((err) => {
  console.error(`soak: ${err.stack || err.message}`);
  process.exitCode = 1;
});
