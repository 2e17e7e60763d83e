// The session store, ending sessions by subject, metrics and audit, through the real stack:
// - a bounded store (variants of the shipped config with store.max_sessions 20): 60 real logins
//   never hold more than 20 sessions, memory stays flat after the table is full, the newest
//   sessions keep working, the evicted ones get 401 and are counted and audited; with
//   when_full: refuse the 21st login gets 503 login_failed and the others keep working;
//   unfinished logins are bounded by max_pending_logins and a fresh login still completes;
// - OIDC back-channel logout for real (the provider's own end-session page) and forged,
//   replayed or expired logout tokens;
// - the operator API on the admin listener (and its absence on the public one);
// - metrics in /stats/prometheus, the access log's decision and subject, and the audit lines
//   after one scripted login/use/refusal/logout.
// Each `describe` runs its own stack (Envoy --concurrency 2), one after the other.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import * as jose from 'jose';

import {
  APP, Browser, ROOT, SESSION_COOKIE,
  authorizeAtIdp, deliverCallback, describe as d, idpStats, login, loginOk, rawRequest, setsSession, startLogin,
} from '../lib/client.mjs';
import {
  ACCEPT_JSON, CSRF, assertJsonError, assertNoSessionSet, bootStack, eventually,
} from '../lib/harness.mjs';
import {
  OPERATOR, accessEntries, auditEvents, deltas, envoyMemory, logSize, loginMany, logoutAtIdp, mib,
  onEveryWorker, operatorCount, operatorRequest, operatorRevoke, ordersStatus, prometheus, sessionOf, sleep, userStatus,
} from '../lib/observe.mjs';
import { renderVariant } from '../lib/variant.mjs';

// This file's stacks log into their own directory, so that the audit and access lines read here
// are this file's only (whatever else runs on the machine).
const LOG_DIR = '.run/logs/store-test';
const ENVOY_LOG = path.join(ROOT, LOG_DIR, 'envoy.log');
// The filter logs its audit lines at info; wasm:debug keeps Envoy's per-hostcall trace (tens of
// MB with the shipped 10000-slot table) out of the log these tests read.
const LOG_LEVELS = { componentLogLevel: 'wasm:debug', logDir: LOG_DIR };

/** Polls the sessions_in_use / pending_logins gauges (the filter sets them from its root timer). */
async function gaugeBecomes(name, want, ms = 12_000) {
  let last;
  const ok = await eventually(async () => {
    last = (await prometheus()).get(name);
    return last === want;
  }, { ms, every: 250 });
  assert.ok(ok, `${name} should become ${want} within ${ms} ms; last ${last}`);
}

/**
 * /stats/prometheus once the callout latency histogram has caught up with the callout counters
 * (histograms reach the admin endpoint at Envoy's stats flush, every 5 s; counters at once).
 */
async function settledMetrics() {
  const callouts = (m) => ['ok', 'http_error', 'failed'].reduce((a, k) => a + (m.get(`bffgate_callouts_${k}`) ?? 0), 0);
  let m;
  const ok = await eventually(async () => {
    m = await prometheus();
    return m.get('bffgate_callout_duration_ms_count') === callouts(m);
  }, { ms: 12_000, every: 250 });
  assert.ok(ok, `callout histogram count ${m.get('bffgate_callout_duration_ms_count')} = callouts ${callouts(m)} within 12 s`);
  return m;
}

async function startStackOn(envoyConfig) {
  return bootStack({ ...LOG_LEVELS, ...(envoyConfig ? { envoyConfig } : {}) });
}

// =============================================================================================
describe('bounded store, when_full: evict_least_recently_used (max_sessions 20, max_pending_logins 20)', () => {
  const MAX = 20;
  let boot;
  before(async () => {
    const envoyConfig = renderVariant('store-evict', {
      store: { max_sessions: MAX, max_pending_logins: MAX, when_full: 'evict_least_recently_used' },
    });
    boot = await startStackOn(envoyConfig);
  }, { timeout: 120_000 });
  after(async () => {
    if (boot) await boot.stack.stop();
  }, { timeout: 30_000 });

  test('60 logins: never more than 20 sessions, memory flat once full, newest work, oldest 401, evictions counted and audited', { timeout: 120_000 }, async () => {
    const offset = logSize(ENVOY_LOG);
    const m0 = await prometheus();
    const pid = boot.stack.envoyPid;
    const counts = [];
    const gauges = [];
    let memFull;
    // Paced: at most 3 logins per 250 ms, so fewer than 20 sessions share a wall-clock second
    // (last_seen has second resolution) and "least recently used" is well defined for the test.
    let batchStart = Date.now();
    const browsers = await loginMany(60, {
      parallel: 3,
      name: 'evict-',
      onBatch: async (done) => {
        const n = (await operatorCount('alice')) + (await operatorCount('bob'));
        counts.push([done, n]);
        gauges.push([done, (await prometheus()).get('bffgate_sessions_in_use')]);
        if (done >= MAX && !memFull) memFull = { done, ...(await envoyMemory(pid)) };
        const wait = 250 - (Date.now() - batchStart);
        if (wait > 0) await sleep(wait);
        batchStart = Date.now();
      },
    });
    const mem60 = await envoyMemory(pid);
    const over = counts.filter(([, n]) => n > MAX);
    assert.deepEqual(over, [], `operator API counts (alice+bob) never above ${MAX}: ${JSON.stringify(counts)}`);
    assert.equal(counts.at(-1)[1], MAX, `the table is full after 60 logins: ${JSON.stringify(counts)}`);
    assert.ok(gauges.every(([, g]) => g <= MAX), `gauge never above ${MAX}: ${JSON.stringify(gauges)}`);
    await gaugeBecomes('bffgate_sessions_in_use', MAX);

    // Memory: 40 more sessions after the table filled up cost (almost) nothing.
    const growA = mem60.allocated - memFull.allocated;
    const growR = mem60.rss - memFull.rss;
    console.log(`# memory after ${memFull.done} logins: allocated ${mib(memFull.allocated)}, RSS ${mib(memFull.rss)}; `
      + `after 60: allocated ${mib(mem60.allocated)} (${growA >= 0 ? '+' : ''}${(growA / 1024).toFixed(0)} KiB), RSS ${mib(mem60.rss)} (${(growR / 1024).toFixed(0)} KiB)`);
    assert.ok(growA < 512 * 1024, `Envoy allocated grew by ${(growA / 1024).toFixed(0)} KiB over 40 logins into a full table (limit 512 KiB)`);
    assert.ok(growR < 2 * 1048576, `Envoy RSS grew by ${(growR / 1024).toFixed(0)} KiB over 40 logins into a full table (limit 2 MiB)`);

    // Exactly 20 sessions work: the 20 newest. The 20 oldest were evicted.
    const status = await Promise.all(browsers.map(async (b) => (await userStatus(b)).status));
    const working = status.filter((s) => s === 200).length;
    assert.equal(working, MAX, `exactly ${MAX} of 60 sessions work: ${status.join(',')}`);
    for (const b of browsers.slice(-10)) {
      const u = await userStatus(b);
      assert.equal(u.status, 200, `newest session ${b.name}: ${d(u)}`);
      assert.equal(u.json.sub, b.user);
      const o = await ordersStatus(b);
      assert.equal(o.status, 200, `newest session ${b.name} GET /api/orders: ${d(o)}`);
    }
    for (const b of browsers.slice(0, MAX)) {
      const o = await ordersStatus(b);
      assertJsonError(o, 401, 'unauthenticated', `evicted session ${b.name} GET /api/orders`);
      const u = await userStatus(b);
      assertJsonError(u, 401, 'unauthenticated', `evicted session ${b.name} GET /auth/user`);
    }

    // Metrics and audit: 40 evictions, each naming the evicted session's handle.
    const dm = deltas(m0, await prometheus());
    assert.equal(dm.get('bffgate_logins_completed'), 60);
    assert.equal(dm.get('bffgate_store_evictions'), 60 - MAX, 'bffgate_store_evictions');
    assert.equal(dm.get('bffgate_sessions_ended_evicted'), 60 - MAX, 'bffgate_sessions_ended_evicted');
    const evictedHandles = new Set(browsers.filter((_, i) => status[i] !== 200).map((b) => sessionOf(b.sessionCookie).handle));
    const audited = await eventually(() => {
      const ev = auditEvents(ENVOY_LOG, offset).filter((e) => e.event === 'session_ended' && e.reason === 'evicted');
      return ev.length >= 60 - MAX ? ev : null;
    });
    assert.ok(audited, 'audit lines for the evictions');
    assert.deepEqual(new Set(audited.map((e) => e.session)), evictedHandles, 'the audit names exactly the evicted sessions by handle');
  });

  test('pending logins: 3x max_pending_logins unfinished logins stay bounded, the newest still completes, a fresh login completes', { timeout: 90_000 }, async () => {
    const m0 = await prometheus();
    const started = [];
    for (let i = 0; i < 3 * MAX; i += 1) {
      const b = new Browser({ name: `pending-${i}`, keepAlive: false });
      const r = await startLogin(b, { returnTo: '/' });
      assert.equal(r.status, 302, d(r));
      started.push({ b, authorizeUrl: r.location });
      // A pending login's age has second resolution: the first one is made strictly the oldest,
      // so that it is the one that must give way when the table is full.
      if (i === 0) await sleep(1100);
    }
    assert.equal(deltas(m0, await prometheus()).get('bffgate_logins_started'), 3 * MAX);
    // The gauge shows the bound, never more.
    const seen = [];
    await eventually(async () => {
      const g = (await prometheus()).get('bffgate_pending_logins');
      seen.push(g);
      return g === MAX;
    }, { ms: 12_000, every: 250 });
    assert.ok(seen.every((g) => g <= MAX), `bffgate_pending_logins never above ${MAX}: ${seen.join(',')}`);
    assert.equal(seen.at(-1), MAX, `bffgate_pending_logins settles at the bound: ${seen.join(',')}`);

    // The oldest pending login gave way: its callback is refused (JSON error, no session).
    const first = started[0];
    const cbFirst = await authorizeAtIdp(first.b, first.authorizeUrl, 'alice', 'alice');
    const rFirst = await deliverCallback(first.b, cbFirst);
    assert.ok(rFirst.status >= 400 && rFirst.status < 500, `oldest pending login: ${d(rFirst)}`);
    assertJsonError(rFirst, rFirst.status, rFirst.json?.error, 'oldest pending login');
    assert.ok(['login_failed', 'invalid_request'].includes(rFirst.json.error), d(rFirst));
    assertNoSessionSet(rFirst, 'oldest pending login');

    // The newest one is still there and completes.
    const last = started.at(-1);
    const cbLast = await authorizeAtIdp(last.b, last.authorizeUrl, 'bob', 'bob');
    const rLast = await deliverCallback(last.b, cbLast);
    assert.equal(rLast.status, 302, `newest pending login completes: ${d(rLast)}`);
    assert.ok(setsSession(rLast), d(rLast));
    assert.equal((await userStatus(last.b)).status, 200);

    // And a brand-new login completes.
    const fresh = new Browser({ name: 'pending-fresh', keepAlive: false });
    await loginOk(fresh, 'alice');
    const u = await userStatus(fresh);
    assert.equal(u.status, 200, d(u));
    assert.equal(u.json.sub, 'alice');
  });
});

// =============================================================================================
describe('bounded store, when_full: refuse (max_sessions 20)', () => {
  const MAX = 20;
  let boot;
  before(async () => {
    const envoyConfig = renderVariant('store-refuse', {
      store: { max_sessions: MAX, max_pending_logins: MAX, when_full: 'refuse' },
    });
    boot = await startStackOn(envoyConfig);
  }, { timeout: 120_000 });
  after(async () => {
    if (boot) await boot.stack.stop();
  }, { timeout: 30_000 });

  test('the 21st login gets 503 login_failed, no cookie; the 20 others keep working; a logout makes room', { timeout: 90_000 }, async () => {
    const offset = logSize(ENVOY_LOG);
    const m0 = await prometheus();
    const browsers = await loginMany(MAX, { parallel: 2, name: 'refuse-' });
    assert.equal((await operatorCount('alice')) + (await operatorCount('bob')), MAX);

    for (const user of ['alice', 'bob']) {
      const b = new Browser({ name: `refused-${user}`, keepAlive: false });
      const r = await login(b, user, user);
      assertJsonError(r.callback, 503, 'login_failed', `login #${MAX + 1} (${user}) into a full store`);
      assertNoSessionSet(r.callback, 'refused login');
      const u = await userStatus(b);
      assert.equal(u.status, 401, `the refused browser has no session: ${d(u)}`);
    }
    assert.equal((await operatorCount('alice')) + (await operatorCount('bob')), MAX, 'still exactly the 20 sessions');

    // All 20 existing sessions keep working, on fresh connections to both workers.
    let k = 0;
    await onEveryWorker(async () => {
      const b = browsers[k % browsers.length];
      k += 1;
      const u = await userStatus(b);
      assert.equal(u.status, 200, `existing session ${b.name} after the refusals: ${d(u)}`);
      return u.status;
    }, { min: MAX, max: 3 * MAX });

    const dm = deltas(m0, await prometheus());
    assert.equal(dm.get('bffgate_logins_completed'), MAX);
    assert.equal(dm.get('bffgate_logins_failed'), 2, 'bffgate_logins_failed');
    assert.equal(dm.get('bffgate_store_evictions'), 0, 'refuse never evicts');
    const failed = await eventually(() => {
      const ev = auditEvents(ENVOY_LOG, offset).filter((e) => e.event === 'login_failed');
      return ev.length >= 2 ? ev : null;
    });
    assert.ok(failed, 'two login_failed audit lines');
    for (const e of failed) assert.equal(typeof e.reason, 'string');

    // A logout frees a slot: the next login succeeds.
    const out = await browsers[0].fetchApi('POST', '/auth/logout', { headers: CSRF });
    assert.equal(out.status, 200, d(out));
    const b = new Browser({ name: 'after-logout', keepAlive: false });
    await loginOk(b, 'alice');
    assert.equal((await userStatus(b)).status, 200);
  });
});

// =============================================================================================
describe('shipped config: back-channel logout, operator API, metrics, access log, audit', () => {
  let boot;
  before(async () => {
    boot = await startStackOn(undefined);
  }, { timeout: 120_000 });
  after(async () => {
    if (boot) await boot.stack.stop();
  }, { timeout: 30_000 });

  const newBrowser = (name) => new Browser({ name, keepAlive: false });

  test('back-channel logout for real: the provider\'s end-session page ends that session within 2 s on every worker, not the other', { timeout: 60_000 }, async () => {
    const offset = logSize(ENVOY_LOG);
    const a1 = newBrowser('bcl-alice-1');
    const a2 = newBrowser('bcl-alice-2');
    const b1 = newBrowser('bcl-bob');
    await loginOk(a1, 'alice');
    await loginOk(a2, 'alice');
    await loginOk(b1, 'bob');
    assert.ok(a1.getCookie('_session') && a2.getCookie('_session'), 'both browsers hold a provider session cookie');
    assert.notEqual(a1.getCookie('_session'), a2.getCookie('_session'), 'two distinct provider sessions');
    for (const b of [a1, a2, b1]) assert.equal((await ordersStatus(b)).status, 200, `${b.name} works before`);
    const m0 = await prometheus();

    const confirm = await logoutAtIdp(a1);
    const t0 = Date.now();
    assert.ok(confirm.status < 400, `provider end-session confirm: ${d(confirm)}`);
    let gone = false;
    while (Date.now() - t0 < 2000) {
      if ((await ordersStatus(a1)).status === 401) {
        gone = true;
        break;
      }
      await sleep(50);
    }
    assert.ok(gone, 'the session whose provider session ended gets 401 within 2 s');

    await onEveryWorker(async () => {
      assertJsonError(await ordersStatus(a1), 401, 'unauthenticated', 'ended session, /api/orders');
      assertJsonError(await userStatus(a1), 401, 'unauthenticated', 'ended session, /auth/user');
      const o2 = await ordersStatus(a2);
      assert.equal(o2.status, 200, `the other alice session keeps working: ${d(o2)}`);
      const u2 = await userStatus(a2);
      assert.equal(u2.status, 200, d(u2));
      assert.equal((await ordersStatus(b1)).status, 200, 'bob keeps working');
    }, { min: 3 });

    const dm = deltas(m0, await prometheus());
    assert.equal(dm.get('bffgate_sessions_ended_backchannel'), 1, 'bffgate_sessions_ended_backchannel');
    const h1 = sessionOf(a1.sessionCookie).handle;
    const ev = await eventually(() => {
      const e = auditEvents(ENVOY_LOG, offset).filter((x) => x.event === 'session_ended' && x.reason === 'backchannel');
      return e.length ? e : null;
    });
    assert.ok(ev, 'an audit line for the back-channel logout');
    assert.deepEqual(ev.map((e) => [e.session, e.sub]), [[h1, 'alice']], 'exactly that session, by handle');
  });

  test('logout tokens: garbage, alg none, forged, expired, wrong claims, replayed -> 400 invalid_request and no session ends', { timeout: 60_000 }, async () => {
    const c1 = newBrowser('lt-alice');
    const c2 = newBrowser('lt-bob');
    await loginOk(c1, 'alice');
    await loginOk(c2, 'bob');
    const before0 = { alice: await operatorCount('alice'), bob: await operatorCount('bob') };
    const m0 = await prometheus();

    // The demo provider's own signing keys (test fixture, .run/idp-keys.json): lets the test make
    // tokens that are genuinely signed by the provider but wrong in one claim, and a valid token
    // to replay (a real one cannot be captured: the provider posts it straight to bffgate).
    const idpKeys = JSON.parse(fs.readFileSync(path.join(ROOT, '.run/idp-keys.json'), 'utf8')).keys;
    const ecJwk = idpKeys.find((k) => k.kty === 'EC');
    const rsaJwk = idpKeys.find((k) => k.kty === 'RSA');
    const ecKey = await jose.importJWK(ecJwk, 'ES256');
    const rsaKey = await jose.importJWK(rsaJwk, 'RS256');
    const now = Math.floor(Date.now() / 1000);
    const EVENT = { 'http://schemas.openid.net/event/backchannel-logout': {} };
    const good = (over = {}) => ({
      iss: 'http://localhost:9000', aud: 'bffgate', iat: now, exp: now + 120, jti: crypto.randomUUID(), events: EVENT, sub: 'alice', ...over,
    });
    const sign = async (claims, { key = ecKey, alg = 'ES256', kid = ecJwk.kid } = {}) => {
      const body = { ...claims };
      for (const k of Object.keys(body)) if (body[k] === undefined) delete body[k];
      return new jose.SignJWT(body).setProtectedHeader({ alg, kid, typ: 'logout+jwt' }).sign(key);
    };
    const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const { privateKey: strangerKey } = await jose.generateKeyPair('ES256');
    const publicJwkText = JSON.stringify({ kty: ecJwk.kty, crv: ecJwk.crv, x: ecJwk.x, y: ecJwk.y });
    // a valid header+payload with the signature of another valid token
    const t1 = (await sign(good())).split('.');
    const t2 = (await sign(good({ sub: 'bob' }))).split('.');

    const cases = [
      ['garbage', 'not-a-jwt'],
      ['three garbage segments', 'aaa.bbb.ccc'],
      ['alg none', `${b64({ alg: 'none', typ: 'logout+jwt' })}.${b64(good())}.`],
      ['alg none with the provider kid', `${b64({ alg: 'none', kid: ecJwk.kid })}.${b64(good())}.`],
      ['signed by another key under the provider kid', await sign(good(), { key: strangerKey })],
      ['signed by another key, unknown kid', await sign(good(), { key: strangerKey, kid: 'no-such-kid' })],
      ['HS256 with the provider public key as secret', await new jose.SignJWT(good())
        .setProtectedHeader({ alg: 'HS256', kid: ecJwk.kid }).sign(new TextEncoder().encode(publicJwkText))],
      ['signature of another token', `${t2[0]}.${t2[1]}.${t1[2]}`],
      ['expired (iat 1 h ago, exp 50 min ago)', await sign(good({ iat: now - 3600, exp: now - 3000 }))],
      ['issued in the future', await sign(good({ iat: now + 3600, exp: now + 7200 }))],
      ['wrong iss', await sign(good({ iss: 'http://evil.example' }))],
      ['wrong aud', await sign(good({ aud: 'someone-else' }))],
      ['no events claim', await sign(good({ events: undefined }))],
      ['wrong event', await sign(good({ events: { 'http://schemas.openid.net/event/other': {} } }))],
      ['with a nonce', await sign(good({ nonce: 'n' }))],
      ['neither sub nor sid', await sign(good({ sub: undefined }))],
      ['no jti', await sign(good({ jti: undefined }))],
      ['RS256 with the wrong key type under the EC kid', await sign(good(), { key: rsaKey, alg: 'RS256', kid: ecJwk.kid })],
    ];

    const post = (body, headers = {}) => rawRequest('POST', `${APP}/auth/backchannel-logout`, {
      headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers }, body,
    });
    for (const [what, token] of cases) {
      const r = await post(new URLSearchParams({ logout_token: token }).toString());
      assertJsonError(r, 400, 'invalid_request', `logout token: ${what}`);
    }
    assertJsonError(await post(''), 400, 'invalid_request', 'no logout_token');
    assertJsonError(await post('logout_token=a&logout_token=b'), 400, 'invalid_request', 'two logout_token');

    // Replay: a genuinely valid token (for a subject without sessions) is accepted once only.
    const valid = await sign(good({ sub: `nobody-${crypto.randomUUID()}` }));
    const first = await post(new URLSearchParams({ logout_token: valid }).toString());
    assert.equal(first.status, 200, `a valid logout token is accepted: ${d(first)}`);
    assert.equal(first.json?.sessions_ended, 0, d(first));
    const replay = await post(new URLSearchParams({ logout_token: valid }).toString());
    assertJsonError(replay, 400, 'invalid_request', 'replayed logout token');

    assert.deepEqual({ alice: await operatorCount('alice'), bob: await operatorCount('bob') }, before0, 'no session ended');
    assert.equal((await ordersStatus(c1)).status, 200);
    assert.equal((await ordersStatus(c2)).status, 200);
    const dm = deltas(m0, await prometheus());
    assert.equal(dm.get('bffgate_sessions_ended_backchannel'), 0, 'no back-channel session end counted');
  });

  test('operator API: counts and ends every session of a subject on every worker; needs X-CSRF; not on the public listener', { timeout: 60_000 }, async () => {
    const offset = logSize(ENVOY_LOG);
    const o1 = newBrowser('op-alice-1');
    const o2 = newBrowser('op-alice-2');
    const o3 = newBrowser('op-bob');
    await loginOk(o1, 'alice');
    await loginOk(o2, 'alice');
    await loginOk(o3, 'bob');
    const nAlice = await operatorCount('alice');
    const nBob = await operatorCount('bob');
    assert.ok(nAlice >= 2, `alice has at least the two sessions just created: ${nAlice}`);
    const m0 = await prometheus();

    // A subject is required.
    assertJsonError(await operatorRequest('GET', '/sessions'), 400, 'invalid_request', 'GET /sessions without sub');
    // Without the CSRF header nothing ends.
    assertJsonError(await operatorRevoke('alice', { csrf: false }), 403, 'csrf', 'revoke without X-CSRF');
    assert.equal(await operatorCount('alice'), nAlice);

    // The public listener does not offer the operator API (with or without a session and CSRF).
    for (const [method, p, cookie] of [
      ['GET', '/sessions?sub=alice', undefined],
      ['POST', '/sessions/revoke?sub=alice', undefined],
      ['POST', '/sessions/revoke?sub=alice', `${SESSION_COOKIE}=${o1.sessionCookie}`],
      ['POST', '/auth/sessions/revoke?sub=alice', `${SESSION_COOKIE}=${o1.sessionCookie}`],
      ['POST', '/api/sessions/revoke?sub=alice', `${SESSION_COOKIE}=${o1.sessionCookie}`],
    ]) {
      const r = await rawRequest(method, `${APP}${p}`, {
        headers: { ...ACCEPT_JSON, ...CSRF, origin: APP, ...(cookie ? { cookie } : {}) },
      });
      assert.notEqual(r.status, 200, `public listener ${method} ${p}: ${d(r)}`);
      assert.ok(!/sessions_ended|"sessions"/.test(r.text), `public listener ${method} ${p} answered like the operator API: ${d(r)}`);
    }
    assert.equal(await operatorCount('alice'), nAlice, 'nothing ended through the public listener');
    assert.equal((await ordersStatus(o1)).status, 200);

    const r = await operatorRevoke('alice');
    assert.equal(r.status, 200, d(r));
    assert.equal(r.json?.sessions_ended, nAlice, `sessions_ended = alice's count: ${d(r)}`);
    assert.equal(await operatorCount('alice'), 0);
    assert.equal(await operatorCount('bob'), nBob, 'bob untouched');
    await onEveryWorker(async () => {
      assertJsonError(await ordersStatus(o1), 401, 'unauthenticated', 'revoked session 1');
      assertJsonError(await userStatus(o2), 401, 'unauthenticated', 'revoked session 2');
      assert.equal((await ordersStatus(o3)).status, 200, 'bob keeps working');
    }, { min: 3 });

    assert.equal(deltas(m0, await prometheus()).get('bffgate_sessions_ended_admin'), nAlice, 'bffgate_sessions_ended_admin');
    const ev = await eventually(() => {
      const e = auditEvents(ENVOY_LOG, offset).filter((x) => x.event === 'session_ended' && x.reason === 'admin');
      return e.length >= nAlice ? e : null;
    });
    assert.ok(ev, 'audit lines for the revoked sessions');
    const handles = new Set(ev.map((e) => e.session));
    assert.equal(ev.length, nAlice, 'one audit line per ended session');
    assert.ok(handles.has(sessionOf(o1.sessionCookie).handle) && handles.has(sessionOf(o2.sessionCookie).handle), 'named by handle');
    assert.ok(ev.every((e) => e.sub === 'alice'));
  });

  // -------------------------------------------------------------------------------------------
  describe('one scripted login / use / refusals / logout', () => {
    const run = {};
    before(async () => {
      // A clean slate, so that the sessions gauge has an exact expected value.
      for (const sub of ['alice', 'bob']) assert.equal((await operatorRevoke(sub)).status, 200);
      await gaugeBecomes('bffgate_sessions_in_use', 0);
      // Envoy flushes its access log about once a second: let earlier tests' lines land first,
      // and keep only lines of requests started from here on.
      await sleep(1500);
      run.offset = logSize(ENVOY_LOG);
      run.t0 = Date.now();
      run.m0 = await settledMetrics();
      run.idp0 = await idpStats();
      const b = new Browser({ name: 'scripted', keepAlive: false });
      run.browser = b;
      run.anon = await b.fetchApi('GET', '/api/orders'); // no session: 401
      const lr = await login(b, 'alice', 'alice');
      run.login = lr;
      run.cookie = b.sessionCookie;
      run.user = await b.fetchApi('GET', '/auth/user');
      run.orders = await b.fetchApi('GET', '/api/orders');
      run.profile = await b.fetchApi('GET', '/api/profile');
      run.csrfDenied = await b.fetchApi('POST', '/api/orders', { json: { item: 'book' } }); // no X-CSRF
      run.posted = await b.fetchApi('POST', '/api/orders', { json: { item: 'book' }, headers: CSRF });
      await gaugeBecomes('bffgate_sessions_in_use', 1);
      run.gaugeDuring = 1;
      run.logout = await b.fetchApi('POST', '/auth/logout', { headers: CSRF });
      await gaugeBecomes('bffgate_sessions_in_use', 0);
      run.gaugeAfter = 0;
      run.idp1 = await idpStats();
      run.m1 = await settledMetrics();
      run.tokens = [run.orders, run.profile, run.posted].map((r) => r.json?.seen?.authorization?.replace(/^Bearer /, '')).filter(Boolean);
      run.code = run.login.callbackUrl.searchParams.get('code');
      // Envoy writes its access log buffered, flushed every --file-flush-interval-msec (10 s)
      run.access = await eventually(() => {
        const a = accessEntries(ENVOY_LOG, run.offset).filter((x) => Date.parse(x.time) >= run.t0);
        return a.some((x) => x.path === '/auth/logout') ? a : null;
      }, { ms: 15_000, every: 250 });
      assert.ok(run.access, 'the access log lines of the script appear within 15 s');
      run.audit = auditEvents(ENVOY_LOG, run.offset);
    }, { timeout: 90_000 });

    test('the script ran as expected', () => {
      assertJsonError(run.anon, 401, 'unauthenticated');
      assert.equal(run.login.callback.status, 302, d(run.login.callback));
      assert.equal(run.user.status, 200, d(run.user));
      assert.equal(run.orders.status, 200, d(run.orders));
      assert.equal(run.profile.status, 200, d(run.profile));
      assertJsonError(run.csrfDenied, 403, 'csrf');
      assert.ok([200, 201].includes(run.posted.status), d(run.posted));
      assert.equal(run.logout.status, 200, d(run.logout));
      assert.equal(run.tokens.length, 3, 'the APIs saw three bearer tokens');
    });

    test('metrics: /stats/prometheus moved by exactly what the script did', () => {
      const dm = deltas(run.m0, run.m1);
      const want = {
        bffgate_logins_started: 1,
        bffgate_logins_completed: 1,
        bffgate_logins_failed: 0,
        bffgate_sessions_ended_logout: 1,
        bffgate_denied_unauthenticated: 1,
        bffgate_denied_csrf: 1,
        bffgate_csrf_rejections: 1,
        bffgate_requests_allowed: 3,
        bffgate_exchanges_ok: 1,
        bffgate_revocations_sent: 1,
        bffgate_callouts_failed: 0,
        bffgate_store_evictions: 0,
      };
      const got = Object.fromEntries(Object.keys(want).map((k) => [k, dm.get(k)]));
      assert.deepEqual(got, want, 'counter deltas');
      assert.equal(run.m1.get('bffgate_sessions_in_use'), run.gaugeAfter);
      // Every callout is an IdP request: token endpoint, revocation, or (once per stack) the JWKS.
      const sum = (o) => Object.values(o.token_requests).reduce((a, v) => a + v, 0) + o.revocation_requests;
      const idpCalls = sum(run.idp1) - sum(run.idp0);
      const ok = dm.get('bffgate_callouts_ok');
      const all = ok + dm.get('bffgate_callouts_http_error') + dm.get('bffgate_callouts_failed');
      assert.ok(all === idpCalls || all === idpCalls + 1, `callouts (ok ${ok} + http_error + failed = ${all}) = the provider's token+revocation requests ${idpCalls} (+1 JWKS fetch)`);
      assert.ok(ok >= 3, 'code exchange, token exchange, revocation');
      // The latency histogram: buckets with le labels, cumulative, +Inf = count, one sample per callout.
      const count = dm.get('bffgate_callout_duration_ms_count');
      assert.equal(count, all, 'bffgate_callout_duration_ms_count delta = callouts');
      const buckets = [...run.m1].filter(([k]) => k.startsWith('bffgate_callout_duration_ms_bucket{'))
        .map(([k, v]) => [/le="([^"]+)"/.exec(k)[1], v]);
      assert.ok(buckets.length >= 5, `histogram buckets: ${JSON.stringify(buckets)}`);
      for (let i = 1; i < buckets.length; i += 1) assert.ok(buckets[i][1] >= buckets[i - 1][1], 'cumulative buckets');
      assert.equal(buckets.at(-1)[0], '+Inf');
      assert.equal(buckets.at(-1)[1], run.m1.get('bffgate_callout_duration_ms_count'));
      assert.ok(run.m1.has('bffgate_callout_duration_ms_sum'));
    });

    test('logout: every revocation callout succeeds (bffgate_callouts_http_error unchanged)', () => {
      // A healthy logout should not count as failed callouts. (Found: the filter also revokes the
      // session's unexpired JWT access tokens; the provider answers 400 unsupported_token_type
      // to each, so every logout adds 2 to bffgate_callouts_http_error.)
      const dm = deltas(run.m0, run.m1);
      const revReq = run.idp1.revocation_requests - run.idp0.revocation_requests;
      const revOk = run.idp1.revocations - run.idp0.revocations;
      assert.equal(dm.get('bffgate_callouts_http_error'), 0,
        `bffgate_callouts_http_error moved by ${dm.get('bffgate_callouts_http_error')}; the provider got ${revReq} revocation requests, ${revOk} succeeded`);
    });

    test('access log: decision and subject for each request, and no cookie value, code or token', () => {
      const find = (method, p, status) => {
        const hits = run.access.filter((a) => a.method === method && a.path === p && String(a.status) === String(status));
        assert.equal(hits.length, 1, `one access line for ${method} ${p} ${status}: ${hits.map((h) => h.line).join('\n')}`);
        return hits[0];
      };
      const expect = [
        ['GET', '/api/orders', 401, 'deny:unauthenticated', null],
        ['GET', '/auth/login', 302, 'endpoint', null],
        ['GET', '/auth/callback', 302, 'endpoint', 'alice'],
        ['GET', '/auth/user', 200, 'endpoint', 'alice'],
        ['GET', '/api/orders', 200, 'allow', 'alice'],
        ['GET', '/api/profile', 200, 'allow', 'alice'],
        ['POST', '/api/orders', 403, 'deny:csrf', undefined], // subject: see the next test
        ['POST', '/api/orders', run.posted.status, 'allow', 'alice'],
        ['POST', '/auth/logout', 200, 'endpoint', undefined], // subject: see the next test
      ];
      const problems = [];
      for (const [method, p, status, decision, subject] of expect) {
        const a = find(method, p, status);
        if (a.bffgate_decision !== decision) problems.push(`${method} ${p} ${status}: decision ${JSON.stringify(a.bffgate_decision)}, want ${decision}`);
        const sub = a.bffgate_subject === '-' || a.bffgate_subject === '' ? null : a.bffgate_subject;
        if (subject === undefined) continue;
        if (subject !== null && sub !== subject) problems.push(`${method} ${p} ${status}: subject ${JSON.stringify(a.bffgate_subject)}, want ${subject}`);
        if (subject === null && sub !== null) problems.push(`${method} ${p} ${status}: subject ${JSON.stringify(a.bffgate_subject)} for a request without a session`);
      }
      assert.deepEqual(problems, [], 'decisions and subjects in the access log');
      const secrets = [run.cookie, sessionOf(run.cookie).payloadB64, run.code, ...run.tokens];
      for (const a of run.access) {
        for (const s of secrets) assert.ok(!a.line.includes(s), `secret in access log line: ${a.line.replace(s, '<SECRET>')}`);
        assert.ok(!/eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+\./.test(a.line), `JWT-looking string in access log line: ${a.line}`);
      }
    });

    test('access log: a CSRF denial and a logout of a live session name the subject', () => {
      const line = (method, p, status) => run.access.find((a) => a.method === method && a.path === p && a.status === status);
      const got = {
        csrfDenial: line('POST', '/api/orders', 403)?.bffgate_subject ?? null,
        logout: line('POST', '/auth/logout', 200)?.bffgate_subject ?? null,
      };
      assert.deepEqual(got, { csrfDenial: 'alice', logout: 'alice' }, 'bffgate_subject of requests that carried alice\'s live session');
    });

    test('audit: one JSON line per login, denial and logout, naming the session by a handle that reveals nothing', () => {
      const sess = sessionOf(run.cookie);
      const h = sess.handle;
      const of = (pred) => run.audit.filter(pred);
      assert.equal(of((e) => e.event === 'login_started').length, 1, 'one login_started');
      const logins = of((e) => e.event === 'login');
      assert.deepEqual(logins.map((e) => [e.sub, e.session]), [['alice', h]], 'one login line, naming the session by its handle');
      const denied = of((e) => e.event === 'denied');
      assert.equal(denied.filter((e) => e.code === 'csrf').length, 1, `one line for the CSRF denial: ${denied.map((e) => e.line).join('\n')}`);
      const ended = of((e) => e.event === 'session_ended');
      assert.deepEqual(ended.map((e) => [e.reason, e.session, e.sub]), [['logout', h, 'alice']], 'one logout line');
      assert.deepEqual(of((e) => e.event === 'token_renewed').map((e) => [e.session, e.grant]), [[h, 'token_exchange']], 'the profile token exchange');
      assert.equal(of((e) => e.event === 'revocation').length, 1, 'one revocation line');
      for (const e of run.audit) {
        assert.equal(typeof e.ts, 'number', `timestamp: ${e.line}`);
        if (e.session !== undefined && e.session !== null) assert.match(e.session, /^[0-9a-f]{12}$/, `handle format: ${e.line}`);
      }
      // The handle is not part of anything that identifies the session, and no audit line
      // carries the cookie, the session id (any encoding), the store's verifier, a code or a token.
      for (const v of [run.cookie, sess.payloadB64, sess.payloadHex, sess.idHex, sess.idB64, sess.verifier, sess.mac]) {
        assert.ok(!v.includes(h), `the handle ${h} appears inside ${v.length}-char session material`);
      }
      const secrets = [run.cookie, sess.payloadB64, sess.payloadHex, sess.idHex, sess.idB64, sess.verifier, sess.mac, run.code, ...run.tokens];
      for (const e of run.audit) {
        for (const s of secrets) assert.ok(!e.line.includes(s), `secret in audit line: ${e.line.replace(s, '<SECRET>')}`);
      }
    });

    test('audit: the 401 without a session is a denial line too, and the CSRF denial names the session it targeted', () => {
      const h = sessionOf(run.cookie).handle;
      const denied = run.audit.filter((e) => e.event === 'denied').map((e) => [e.code, e.session ?? null]);
      assert.deepEqual(denied.sort(), [['csrf', h], ['unauthenticated', null]].sort(),
        `denied lines (code, session): ${JSON.stringify(denied)}; metrics counted both denials`);
    });
  });
});
