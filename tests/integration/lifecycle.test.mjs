// Token lifecycle through the real stack (docs/lifecycle.md): renewal before expiry, single-flight refresh
// across Envoy workers, refresh-token rotation, per-audience tokens (RFC 8707 refresh and RFC 8693
// exchange), invalid_grant, transient provider faults on refresh, login and logout, revocation at
// logout, logout on every worker, /auth/user expiry, and no VM crash after all of it.
//
// One stack for the whole file (Envoy --concurrency 2). The provider issues access tokens that
// live TTL = 60 s; bffgate renews a token min(refresh_skew_s = 30, half its life) before it
// expires, so a token is "fresh" for 30 s after issue, then due for renewal (renewed on use, but
// still valid if the provider fails) until it really expires 60 s after issue. To keep the file
// short, a batch of sessions is logged in once in before() and the tests use them in order
// along one timeline:
//
//   T0 ........ T0+30 ............................... T0+60 ...........................
//   logins      stale: renewal, invalid_grant,        expired: 50 concurrent requests,
//               faults with a still-valid token       faults with no valid token left
//
// so the file waits for an expiry only once. The tests must run in file order (node:test runs
// the tests of one file one after the other). The last part restarts the provider (which loses
// its in-memory grants) with refresh-token rotation and TTL 4 s (due for renewal 2 s after
// issue, so every other second brings a renewal).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, test } from 'node:test';

import {
  APP, Browser, IDP, SESSION_COOKIE,
  apiCount, deliverCallback, describe as d, envoyStats, idpStats, login, loginOk, rawRequest,
  setCookiesNamed, transcript,
} from '../lib/client.mjs';
import {
  ACCEPT_JSON, CSRF, assertJsonError, assertNoSessionSet, assertSessionCleared, bootStack, eventually,
  findSecretsInLog, forEachLogChunk, readLogSince, secretsSeen, tokenLeaksInResponses,
} from '../lib/harness.mjs';

const TTL = 60; // provider access-token lifetime (s)
const SKEW = 30; // envoy/bffgate.yaml session.refresh_skew_s
/** Seconds after issue a token of `ttl` seconds is due for renewal: min(skew, half its life) before it expires. */
const dueAfter = (ttl) => ttl - Math.min(SKEW, Math.floor(ttl / 2));
const CALLOUT_TIMEOUT_MS = 3000; // envoy/bffgate.yaml provider.timeout_ms
const REVOCATION_TIMEOUT_MS = 1000; // provider.revocation_timeout_ms (default)
const SLOW_MS = CALLOUT_TIMEOUT_MS + 700; // a "slow" provider: past the callout timeout
const ROTATION_TTL = 4; // last part: due for renewal 2 s after issue

const ORDERS = 'https://orders.api.local';
const PROFILE = 'https://profile.api.local';
const XCHG = 'urn:ietf:params:oauth:grant-type:token-exchange';

const sleep = (ms) => new Promise((r) => { setTimeout(r, Math.max(0, ms)); });
const waitUntil = (t) => sleep(t - Date.now());

let boot;
let baseline; // Envoy wasm counters after start
const browsers = [];
function browser(name) {
  const b = new Browser({ name });
  browsers.push(b);
  return b;
}

// ---------------------------------------------------------------------------------------------
// helpers

/** POST /__fault at the IdP. */
async function setFault(f) {
  const r = await rawRequest('POST', `${IDP}/__fault`, {
    headers: { 'content-type': 'application/json' }, body: JSON.stringify(f),
  });
  assert.equal(r.status, 200, `POST /__fault ${JSON.stringify(f)}: ${r.status} ${r.text}`);
}
const clearFaults = () => setFault({ endpoint: 'all', mode: 'none' });

/** Differences of the IdP's counters between two /__stats answers. */
function delta(s0, s1) {
  const g = (s, k) => s?.grants?.[k] || 0;
  const q = (s, k) => s?.token_requests?.[k] || 0;
  return {
    code: g(s1, 'authorization_code') - g(s0, 'authorization_code'),
    refresh: g(s1, 'refresh_token') - g(s0, 'refresh_token'),
    exchange: g(s1, XCHG) - g(s0, XCHG),
    refreshRequests: q(s1, 'refresh_token') - q(s0, 'refresh_token'),
    exchangeRequests: q(s1, XCHG) - q(s0, XCHG),
    codeRequests: q(s1, 'authorization_code') - q(s0, 'authorization_code'),
    revocations: (s1?.revocations || 0) - (s0?.revocations || 0),
    revocationRequests: (s1?.revocation_requests || 0) - (s0?.revocation_requests || 0),
  };
}

/**
 * When a token obtained by a request that ran between `start` and `end` (ms) is stale (inside
 * the skew window), still valid, and expired. bffgate stores exp = now_s + expires_in with
 * whole seconds; the margins cover the rounding.
 */
function times(start, end, ttl = TTL) {
  return {
    staleAt: (Math.floor(end / 1000) + dueAfter(ttl)) * 1000 + 150,
    validUntil: (Math.floor(start / 1000) + ttl) * 1000 - 400,
    expiredAt: (Math.floor(end / 1000) + ttl) * 1000 + 150,
  };
}

/** A logged-in session and what we know of its orders token. */
class Sess {
  constructor(name, user = 'alice') {
    this.name = name;
    this.user = user;
    this.b = browser(name);
  }

  async login() {
    const t0 = Date.now();
    this.cookie = await loginOk(this.b, this.user);
    this.setToken(t0, Date.now(), undefined);
    return this;
  }

  setToken(start, end, jti) {
    this.token = { start, end, jti, ...times(start, end) };
  }

  /** Asserts that the test's clock assumption holds: the orders token is stale but valid. */
  assertInWindow(what) {
    const now = Date.now();
    assert.ok(now >= this.token.staleAt && now < this.token.validUntil,
      `test timing: ${this.name} must be inside the skew window for ${what} (now ${now}, window `
      + `${this.token.staleAt}..${this.token.validUntil}); the run is too slow`);
  }

  /** A request carrying exactly this session's cookie, over a fresh connection. */
  raw(method, path, headers = {}) {
    return rawRequest(method, `${APP}${path}`, {
      headers: { ...ACCEPT_JSON, cookie: `${SESSION_COOKIE}=${this.cookie}`, ...headers }, timeoutMs: 15_000,
    });
  }
}

/** Resolves to [response, milliseconds it took]. */
async function timed(p) {
  const t0 = Date.now();
  const r = await p;
  return [r, Date.now() - t0];
}

/** GET an API as the app's fetch() does; returns [response, claims of the forwarded token]. */
async function api(b, path) {
  const r = await b.fetchApi('GET', path, { timeoutMs: 15_000 });
  return [r, r.json?.seen?.claims];
}

/** Asserts a 200 from the orders API with a verified orders token; returns its claims. */
function assertOrdersOk(r, what) {
  assert.equal(r.status, 200, `${what}: ${d(r)}`);
  assert.equal(r.json?.api, 'orders', `${what}: ${d(r)}`);
  const c = r.json.seen?.claims;
  assert.ok(c && typeof c === 'object', `${what}: the orders API verified the bearer: ${d(r)}`);
  assert.equal(c.aud, ORDERS, `${what}: aud of the forwarded token`);
  assert.match(String(r.json.seen.authorization), /^Bearer eyJ/, `${what}: bearer forwarded`);
  return c;
}

/** Envoy listener connections per worker: { worker_0: n, worker_1: n }. */
async function workerConnections() {
  const out = {};
  for (const [k, v] of await envoyStats('downstream_cx_total')) {
    const m = /^listener\.127\.0\.0\.1_8443\.(worker_\d+)\.downstream_cx_total$/.exec(k);
    if (m) out[m[1]] = v;
  }
  return out;
}

/** Workers whose connection count grew between two workerConnections() answers. */
const grewOn = (w0, w1) => Object.keys(w1).filter((k) => w1[k] > (w0[k] || 0));


/** Wasm counters that move when a VM crashes or is reloaded. */
async function wasmCounters() {
  const s = await envoyStats('wasm');
  const pick = {};
  for (const [k, v] of s) {
    if (/vm_reload|\.runtime\.v8\.created$|wasm_vm_count/.test(k)) pick[k] = v;
  }
  return pick;
}

/** Waits for slow-mode provider requests still in flight (they finish after SLOW_MS). */
async function settleSlow(since) {
  await waitUntil(since + SLOW_MS + 400);
}

// ---------------------------------------------------------------------------------------------
// the batch of sessions shared along the timeline

const S = {};

before(async () => {
  boot = await bootStack({ env: { BFFGATE_ACCESS_TOKEN_TTL: String(TTL) } });
  baseline = await wasmCounters();
  await rawRequest('POST', `${IDP}/__reset`);
  // Every session's orders token is issued here; each is read once right away (fresh: no
  // renewal) so later tests can tell the old token from a renewed one by its jti.
  for (const name of ['renew', 'inv', 'invNav', 'fault', 'xchg', 'busy', 'conc', 'down']) {
    const s = await new Sess(name).login();
    const [r, c] = await api(s.b, '/api/orders');
    assertOrdersOk(r, `${name}: first request after login`);
    s.token.jti = c.jti;
    s.token.iat = c.iat;
    S[name] = s;
  }
}, { timeout: 90_000 });

after(async () => {
  for (const b of browsers) b.close();
  try {
    await clearFaults();
  } catch {
    // IdP already gone
  }
  if (boot) await boot.stack.stop();
}, { timeout: 30_000 });

// ---------------------------------------------------------------------------------------------
// fresh tokens (T0 .. T0+5)

test('the batch: one code exchange per login, nothing renewed while the tokens are fresh', async () => {
  const st = await idpStats();
  assert.equal(st.grants.authorization_code, 8, `8 logins: ${JSON.stringify(st)}`);
  assert.equal(st.grants.refresh_token, 0, `no renewal of a fresh token: ${JSON.stringify(st)}`);
  assert.equal(st.grants[XCHG] || 0, 0, `no exchange for the orders audience: ${JSON.stringify(st)}`);
});

test('/auth/user reports expires_at: numeric, in the future, not after the absolute lifetime', async () => {
  const u = await S.renew.b.get('/auth/user', { headers: ACCEPT_JSON });
  assert.equal(u.status, 200, d(u));
  const now = Date.now() / 1000;
  const exp = u.json.expires_at;
  assert.equal(typeof exp, 'number', `expires_at is a number: ${u.text}`);
  assert.ok(Number.isInteger(exp), `expires_at is whole unix seconds: ${u.text}`);
  assert.ok(exp > now + 60, `expires_at is in the future: ${exp} vs now ${now}`);
  // absolute lifetime of the demo: session.absolute_timeout_s = 28800 (8 h) from the login
  assert.ok(exp <= S.renew.token.end / 1000 + 28800 + 1, `expires_at within the absolute lifetime: ${exp}`);
  if (u.json.absolute_expires_at !== undefined) {
    assert.ok(exp <= u.json.absolute_expires_at, `expires_at <= absolute_expires_at: ${u.text}`);
  }
  assert.ok(!/eyJ/.test(u.text), 'no token in /auth/user');
});

test('per-audience tokens: /api/profile by token exchange (aud profile, scope exactly "profile"), cached; orders never gets a profile token', async () => {
  const s = await new Sess('audiences').login();
  const st0 = await idpStats();
  const [o1, oc1] = await api(s.b, '/api/orders');
  const oclaims = assertOrdersOk(o1, 'orders');
  assert.notEqual(oclaims.aud, PROFILE);
  const oscopes = String(oclaims.scope).split(' ');
  assert.ok(!oscopes.includes('profile'), `the orders token carries no profile scope: ${oclaims.scope}`);
  assert.ok(oscopes.every((x) => x.startsWith('orders:')), `orders token: orders scopes only: ${oclaims.scope}`);

  const [p1, pc1] = await api(s.b, '/api/profile');
  assert.equal(p1.status, 200, d(p1));
  assert.equal(p1.json.api, 'profile');
  assert.equal(pc1?.aud, PROFILE, `aud of the profile token: ${JSON.stringify(pc1)}`);
  assert.equal(pc1.scope, 'profile', `profile token is down-scoped to exactly "profile": ${pc1.scope}`);
  assert.equal(pc1.sub, 'alice');
  const st1 = await idpStats();
  const d1 = delta(st0, st1);
  assert.equal(d1.exchange, 1, `one token exchange for the profile audience: ${JSON.stringify(d1)}`);
  assert.equal(d1.refresh, 0, `no refresh grant (the orders token was fresh): ${JSON.stringify(d1)}`);

  // cached: neither audience causes a grant now, and each keeps its own token
  const [p2, pc2] = await api(s.b, '/api/profile');
  assert.equal(p2.status, 200, d(p2));
  assert.equal(pc2.jti, pc1.jti, 'the second profile call reuses the cached profile token');
  const [o2, oc2] = await api(s.b, '/api/orders');
  assertOrdersOk(o2, 'orders after profile');
  assert.equal(oc2.jti, oc1.jti, 'the orders token is unchanged by the profile exchange');
  assert.notEqual(oc2.jti, pc1.jti);
  const d2 = delta(st1, await idpStats());
  assert.deepEqual([d2.exchange, d2.refresh, d2.exchangeRequests, d2.refreshRequests], [0, 0, 0, 0],
    `cached tokens: no request to the token endpoint: ${JSON.stringify(d2)}`);
});

test('faults on login (token endpoint 500, garbage, slow, reset, invalid_grant): JSON error, no session cookie', async () => {
  const cases = [
    { mode: 'error500', codes: ['idp_unavailable'] },
    { mode: 'garbage', codes: ['login_failed', 'idp_unavailable'] },
    { mode: 'reset', codes: ['idp_unavailable'] },
    { mode: 'invalid_grant', codes: ['login_failed'] },
    { mode: 'slow', delay_ms: SLOW_MS, codes: ['idp_unavailable'] },
  ];
  let slowSince = 0;
  for (const c of cases) {
    const b = browser(`login-${c.mode}`);
    const ctx = await login(b, 'alice', 'alice', { stopBeforeCallback: true });
    const st0 = await idpStats();
    await setFault({ endpoint: 'token', mode: c.mode, count: 1, ...(c.delay_ms ? { delay_ms: c.delay_ms } : {}) });
    const t0 = Date.now();
    if (c.mode === 'slow') slowSince = t0;
    const cb = await deliverCallback(b, ctx.callbackUrl, { timeoutMs: 15_000 });
    const ms = Date.now() - t0;
    const what = `callback with the token endpoint in mode ${c.mode}`;
    assertJsonError(cb, (st) => st >= 400 && st < 600, cb.json?.error, what);
    assert.ok(c.codes.includes(cb.json.error), `${what}: error in ${c.codes}: ${d(cb)}`);
    if (c.codes.length === 1 && c.codes[0] === 'idp_unavailable') assert.equal(cb.status, 503, `${what}: ${d(cb)}`);
    assertNoSessionSet(cb, what);
    assert.equal(b.sessionCookie, undefined, `${what}: no session cookie in the jar`);
    assert.ok(ms < CALLOUT_TIMEOUT_MS + 1500, `${what}: answered within the callout timeout (${ms} ms)`);
    if (c.mode !== 'slow') {
      const dd = delta(st0, await idpStats());
      assert.equal(dd.codeRequests, 1, `${what}: the code exchange reached the provider once: ${JSON.stringify(dd)}`);
      assert.equal(dd.code, 0, `${what}: and got no grant: ${JSON.stringify(dd)}`);
    }
    const u = await b.get('/auth/user', { headers: ACCEPT_JSON });
    assertJsonError(u, 401, 'unauthenticated', `${what}: /auth/user afterwards`);
  }
  // the provider is fine again: a login works
  await clearFaults();
  const ok = browser('login-after-faults');
  await loginOk(ok, 'alice');
  const [r] = await api(ok, '/api/orders');
  assertOrdersOk(r, 'after the login faults');
  await settleSlow(slowSince);
});

// ---------------------------------------------------------------------------------------------
// stale tokens, still valid (T0+30 .. T0+60)

test('renewal before expiry: past the skew point one request causes exactly one refresh_token grant and a new orders token', async () => {
  const s = S.renew;
  await waitUntil(s.token.staleAt);
  s.assertInWindow('renewal');
  const st0 = await idpStats();
  const t0 = Date.now();
  const [r, c] = await api(s.b, '/api/orders');
  const t1 = Date.now();
  assertOrdersOk(r, 'first request after the skew point');
  assert.notEqual(c.jti, s.token.jti, 'the upstream got a new token (jti)');
  assert.ok(c.iat > s.token.iat, `the new token was issued later (iat ${c.iat} > ${s.token.iat})`);
  assert.ok(c.exp > Date.now() / 1000 + SKEW - 2, `the new token lives on: exp ${c.exp}`);
  const dd = delta(st0, await idpStats());
  assert.equal(dd.refresh, 1, `exactly one refresh_token grant: ${JSON.stringify(dd)}`);
  assert.equal(dd.refreshRequests, 1, `exactly one refresh request at the token endpoint: ${JSON.stringify(dd)}`);
  assert.equal(dd.exchange, 0, JSON.stringify(dd));
  assertNoSessionSet(r, 'renewal keeps the session id');
  s.setToken(t0, t1, c.jti);
  // the renewed token is used as is
  const [r2, c2] = await api(s.b, '/api/orders');
  assertOrdersOk(r2, 'after renewal');
  assert.equal(c2.jti, c.jti, 'the renewed token is reused');
  assert.equal(delta(st0, await idpStats()).refresh, 1, 'no second refresh');
});

test('per-audience: /api/profile first needed while the orders token is stale: one refresh (orders) then one exchange', async () => {
  const s = S.xchg;
  await waitUntil(s.token.staleAt);
  s.assertInWindow('refresh-then-exchange');
  const st0 = await idpStats();
  const [p, pc] = await api(s.b, '/api/profile');
  assert.equal(p.status, 200, d(p));
  assert.equal(pc?.aud, PROFILE, JSON.stringify(pc));
  assert.equal(pc.scope, 'profile', `scope exactly profile: ${pc.scope}`);
  const dd = delta(st0, await idpStats());
  assert.equal(dd.exchange, 1, `one exchange: ${JSON.stringify(dd)}`);
  assert.ok(dd.refresh <= 1, `at most one refresh: ${JSON.stringify(dd)}`);
  const [o, oc] = await api(s.b, '/api/orders');
  assertOrdersOk(o, 'orders after the profile renewal');
  const dd2 = delta(st0, await idpStats());
  // the orders token was stale: exactly one refresh over both calls, whichever call made it
  assert.equal(dd2.refresh, 1, `one refresh over both calls: ${JSON.stringify(dd2)}`);
  assert.notEqual(oc.jti, s.token.jti, 'orders uses a renewed token');
});

test('invalid_grant on refresh: that request gets 401 unauthenticated (302 to login for a navigation), the session ends', async () => {
  for (const [s, nav] of [[S.inv, false], [S.invNav, true]]) {
    await waitUntil(s.token.staleAt);
    s.assertInWindow('invalid_grant');
    const n0 = await apiCount('orders');
    const st0 = await idpStats();
    await setFault({ endpoint: 'token', mode: 'invalid_grant', count: 1 });
    const r = nav ? await s.b.navigate('/api/orders') : await s.b.fetchApi('GET', '/api/orders');
    const what = `invalid_grant (${nav ? 'navigation' : 'fetch'})`;
    if (nav) {
      assert.equal(r.status, 302, `${what}: ${d(r)}`);
      const loc = new URL(r.location, APP);
      assert.equal(loc.origin, APP, `${what}: ${r.location}`);
      assert.equal(loc.pathname, '/auth/login', `${what}: ${r.location}`);
      assert.equal(loc.searchParams.get('return_to'), '/api/orders', `${what}: ${r.location}`);
    } else {
      assertJsonError(r, 401, 'unauthenticated', what);
    }
    assertSessionCleared(r, what);
    assert.equal(await apiCount('orders'), n0, `${what}: the upstream saw nothing`);
    const dd = delta(st0, await idpStats());
    assert.equal(dd.refreshRequests, 1, `${what}: the refresh reached the provider: ${JSON.stringify(dd)}`);
    // ended on the server, not just in this browser's jar
    const u = await s.raw('GET', '/auth/user');
    assertJsonError(u, 401, 'unauthenticated', `${what}: /auth/user with the old cookie`);
    const o = await s.raw('GET', '/api/orders');
    assertJsonError(o, 401, 'unauthenticated', `${what}: /api/orders with the old cookie`);
    assert.equal(delta(st0, await idpStats()).refreshRequests, 1, `${what}: a dead session tries no more refreshes`);
  }
});

const TRANSIENT = [
  { mode: 'error500' },
  { mode: 'garbage' },
  { mode: 'reset' },
  { mode: 'slow', delay_ms: SLOW_MS },
];

test('transient faults on refresh with a still-valid token (500, garbage, reset, slow past the timeout): 200 with the old token, session kept', async () => {
  const s = S.fault;
  await waitUntil(s.token.staleAt);
  let slowSince = 0;
  for (const f of TRANSIENT) {
    s.assertInWindow(`fault ${f.mode}`);
    const st0 = await idpStats();
    await setFault({ endpoint: 'token', count: 1, ...f });
    const t0 = Date.now();
    if (f.mode === 'slow') slowSince = t0;
    const [r, c] = await api(s.b, '/api/orders');
    const ms = Date.now() - t0;
    const what = `refresh fault ${f.mode} with a valid token`;
    assertOrdersOk(r, what);
    assert.equal(c.jti, s.token.jti, `${what}: the old (still valid) token is forwarded`);
    assertNoSessionSet(r, what);
    assert.equal(setCookiesNamed(r, SESSION_COOKIE).length, 0, `${what}: the session cookie is not touched`);
    assert.ok(ms < CALLOUT_TIMEOUT_MS + 1500, `${what}: answered within the callout timeout (${ms} ms)`);
    if (f.mode !== 'slow') {
      const dd = delta(st0, await idpStats());
      assert.equal(dd.refreshRequests, 1, `${what}: one refresh attempt reached the provider: ${JSON.stringify(dd)}`);
      assert.equal(dd.refresh, 0, `${what}: no grant: ${JSON.stringify(dd)}`);
    } else {
      assert.ok(ms >= CALLOUT_TIMEOUT_MS - 200, `${what}: the filter did wait for the provider (${ms} ms)`);
    }
  }
  const u = await s.b.get('/auth/user', { headers: ACCEPT_JSON });
  assert.equal(u.status, 200, `session kept: ${d(u)}`);
  await settleSlow(slowSince);
});

test('while one request renews (provider slow, 2 s), others with a still-valid token are not held: 200 at once with the old token', async () => {
  const s = S.busy;
  await waitUntil(s.token.staleAt);
  s.assertInWindow('renewal in progress');
  const st0 = await idpStats();
  await setFault({ endpoint: 'token', mode: 'slow', delay_ms: 2000, count: 1 });
  const a = timed(s.raw('GET', '/api/orders'));
  await sleep(400);
  const others = await Promise.all(Array.from({ length: 6 }, () => timed(s.raw('GET', '/api/orders'))));
  for (const [r, ms] of others) {
    transcript.push(r);
    const c = assertOrdersOk(r, 'a request while the renewal is in progress');
    assert.equal(c.jti, s.token.jti, 'it gets the old, still valid token');
    assert.ok(ms < 1000, `it is not held until the renewal ends (${ms} ms)`);
  }
  const [ra, msA] = await a;
  transcript.push(ra);
  const ca = assertOrdersOk(ra, 'the renewing request');
  assert.notEqual(ca.jti, s.token.jti, 'the renewing request forwards the new token');
  assert.ok(msA >= 1900, `the renewing request waited for the slow provider (${msA} ms)`);
  const dd = delta(st0, await idpStats());
  assert.equal(dd.refreshRequests, 1, `one refresh for all 7 requests: ${JSON.stringify(dd)}`);
  assert.equal(dd.refresh, 1, JSON.stringify(dd));
});

// ---------------------------------------------------------------------------------------------
// expired tokens (T0+60 ..)

test('50 concurrent requests (fresh connections, both workers) on an expired token: exactly one refresh, all 200 with aud orders', async () => {
  const s = S.conc;
  await waitUntil(s.token.expiredAt);
  const st0 = await idpStats();
  const w0 = await workerConnections();
  assert.ok(Object.keys(w0).length >= 2, `Envoy runs at least 2 workers: ${JSON.stringify(w0)}`);
  const n0 = await apiCount('orders');
  // the provider takes 1 s for the refresh, so that the 50 requests overlap the renewal and
  // most of them have to wait for it (on both workers)
  await setFault({ endpoint: 'token', mode: 'slow', delay_ms: 1000, count: 1 });
  const t0 = Date.now();
  const timedRs = await Promise.all(Array.from({ length: 50 }, () => timed(s.raw('GET', '/api/orders'))));
  const t1 = Date.now();
  const rs = timedRs.map(([r]) => r);
  for (const r of rs) transcript.push(r);
  const w1 = await workerConnections();
  const statuses = {};
  for (const r of rs) statuses[r.status] = (statuses[r.status] || 0) + 1;
  assert.deepEqual(statuses, { 200: 50 }, `all 50 succeed: ${JSON.stringify(statuses)}; e.g. ${d(rs.find((r) => r.status !== 200) || rs[0])}`);
  const jtis = new Set();
  rs.forEach((r, i) => jtis.add(assertOrdersOk(r, `request ${i + 1} of 50`).jti));
  const dd = delta(st0, await idpStats());
  assert.equal(dd.refreshRequests, 1, `exactly one refresh reached the provider: ${JSON.stringify(dd)}`);
  assert.equal(dd.refresh, 1, `exactly one refresh grant: ${JSON.stringify(dd)}`);
  assert.equal(jtis.size, 1, `one renewed token for all 50: ${[...jtis].length} distinct`);
  assert.ok(!jtis.has(s.token.jti), 'the expired token was not forwarded');
  assert.equal(await apiCount('orders'), n0 + 50, 'the orders API saw all 50');
  assert.deepEqual(grewOn(w0, w1).sort(), Object.keys(w0).sort(), `both workers took connections: ${JSON.stringify(w0)} -> ${JSON.stringify(w1)}`);
  const waited = timedRs.filter(([, ms]) => ms >= 700).length;
  assert.ok(waited >= 10, `requests overlapped the 1 s renewal and waited for it: ${waited} of 50 took >= 700 ms`);
  s.setToken(t0, t1, [...jtis][0]);
});

test('transient faults on refresh with no valid token left (500, garbage, reset, slow): 503 idp_unavailable, session kept; cleared fault: the same cookie renews', async () => {
  const s = S.fault;
  await waitUntil(s.token.expiredAt);
  let slowSince = 0;
  for (const f of TRANSIENT) {
    const st0 = await idpStats();
    const n0 = await apiCount('orders');
    await setFault({ endpoint: 'token', count: 1, ...f });
    const t0 = Date.now();
    if (f.mode === 'slow') slowSince = t0;
    const r = await s.b.fetchApi('GET', '/api/orders', { timeoutMs: 15_000 });
    const ms = Date.now() - t0;
    const what = `refresh fault ${f.mode}, token expired`;
    assertJsonError(r, 503, 'idp_unavailable', what);
    assertNoSessionSet(r, what);
    assert.equal(setCookiesNamed(r, SESSION_COOKIE).length, 0, `${what}: the session cookie is not cleared: ${d(r)}`);
    assert.equal(await apiCount('orders'), n0, `${what}: the upstream saw nothing`);
    assert.ok(ms < CALLOUT_TIMEOUT_MS + 1500, `${what}: answered within the callout timeout (${ms} ms)`);
    if (f.mode !== 'slow') {
      const dd = delta(st0, await idpStats());
      assert.equal(dd.refreshRequests, 1, `${what}: one refresh attempt: ${JSON.stringify(dd)}`);
    }
    const u = await s.raw('GET', '/auth/user');
    assert.equal(u.status, 200, `${what}: the session survives: ${d(u)}`);
  }
  await settleSlow(slowSince);
  await clearFaults();
  const st0 = await idpStats();
  const t0 = Date.now();
  const [r, c] = await api(s.b, '/api/orders');
  const t1 = Date.now();
  assertOrdersOk(r, 'same cookie after the faults are cleared');
  assert.notEqual(c.jti, s.token.jti, 'a renewed token');
  const dd = delta(st0, await idpStats());
  assert.equal(dd.refresh, 1, `one refresh grant: ${JSON.stringify(dd)}`);
  s.setToken(t0, t1, c.jti);
});

// ---------------------------------------------------------------------------------------------
// logout

test('logout revokes the refresh token at the provider; the session is gone', async () => {
  const s = await new Sess('logout-revoke').login();
  const [p] = await api(s.b, '/api/profile'); // a second live access token
  assert.equal(p.status, 200, d(p));
  const idpOff = fs.statSync(boot.stack.logs.idp).size;
  const st0 = await idpStats();
  const lo = await s.b.post('/auth/logout', { headers: { ...ACCEPT_JSON, ...CSRF } });
  assert.equal(lo.status, 200, d(lo));
  assertSessionCleared(lo, 'logout');
  const dd = delta(st0, await idpStats());
  // revocation happens before the answer (bounded): counts are final when the answer arrives
  assert.ok(dd.revocations >= 1, `the provider accepted a revocation: ${JSON.stringify(dd)}`);
  // (bffgate also sends the live JWT access tokens, which oidc-provider refuses with 400
  // unsupported_token_type: structured tokens cannot be revoked; only the refresh token counts.)
  // oidc-provider revokes the whole grant when a refresh token is revoked: it is dead for good.
  const revoked = await eventually(() => /grant\.revoked route=revocation/.test(readLogSince(boot.stack.logs.idp, idpOff)), { ms: 3000 });
  assert.ok(revoked, 'the IdP revoked the grant of the refresh token (grant.revoked route=revocation in idp.log)');
  const u = await s.raw('GET', '/auth/user');
  assertJsonError(u, 401, 'unauthenticated', '/auth/user after logout');
});

test('logout with a slow revocation endpoint (5 s): 200 within ~1.5 s per token, session gone', async () => {
  const s = await new Sess('logout-slow').login();
  const [p] = await api(s.b, '/api/profile');
  assert.equal(p.status, 200, d(p));
  const tokens = 3; // refresh token + orders + profile access tokens
  await setFault({ endpoint: 'revocation', mode: 'slow', delay_ms: 5000 });
  try {
    const t0 = Date.now();
    const lo = await s.b.post('/auth/logout', { headers: { ...ACCEPT_JSON, ...CSRF }, timeoutMs: 30_000 });
    const ms = Date.now() - t0;
    assert.equal(lo.status, 200, d(lo));
    assertSessionCleared(lo, 'slow logout');
    const u = await s.raw('GET', '/auth/user');
    assertJsonError(u, 401, 'unauthenticated', '/auth/user after the slow logout');
    assert.ok(ms <= 1500 * tokens,
      `logout answered in ${ms} ms; with ${tokens} tokens and revocation_timeout_ms=${REVOCATION_TIMEOUT_MS} it must be <= ${1500 * tokens} ms`);
  } finally {
    await clearFaults();
  }
});

test('a session revoked by logout on one worker is refused on all workers (>= 20 fresh connections)', async () => {
  const s = await new Sess('logout-workers').login();
  const probe = async () => {
    const w0 = await workerConnections();
    const r = await s.raw('GET', '/api/orders');
    const w1 = await workerConnections();
    return [r, grewOn(w0, w1)[0]];
  };
  const warmed = new Set();
  for (let i = 0; i < 40 && warmed.size < 2; i += 1) {
    const [r, w] = await probe();
    assert.equal(r.status, 200, `live session on ${w}: ${d(r)}`);
    if (w) warmed.add(w);
  }
  assert.equal(warmed.size, 2, `the session was used on both workers before logout: ${[...warmed]}`);
  const lo = await s.b.post('/auth/logout', { headers: { ...ACCEPT_JSON, ...CSRF }, timeoutMs: 15_000 });
  assert.equal(lo.status, 200, d(lo));
  const n0 = await apiCount('orders');
  const seen = new Map();
  for (let i = 0; i < 60 && (i < 20 || seen.size < 2); i += 1) {
    const [r, w] = await probe();
    assertJsonError(r, 401, 'unauthenticated', `old cookie, attempt ${i + 1} on ${w}`);
    seen.set(w, (seen.get(w) || 0) + 1);
  }
  assert.equal(seen.size, 2, `the old cookie was tried on both workers: ${JSON.stringify([...seen])}`);
  assert.equal(await apiCount('orders'), n0, 'no request reached the orders API after logout');
});

// ---------------------------------------------------------------------------------------------
// the provider stopped (restarts it: keep after everything that needs its grants)

test('IdP stopped: still-valid token -> 200 old token; expired -> 503, session kept; logout 200 quickly; login callback idp_unavailable', async () => {
  const w = S.fault; // renewed at the end of the expired-faults test
  const x = S.down; // untouched since T0: expired
  await waitUntil(Math.max(w.token.staleAt, x.token.expiredAt));
  w.assertInWindow('IdP stopped');
  const pendingLogin = browser('login-idp-stopped');
  const ctx = await login(pendingLogin, 'alice', 'alice', { stopBeforeCallback: true });
  await boot.stack.stopIdp();
  try {
    const [r, c] = await api(w.b, '/api/orders');
    assertOrdersOk(r, 'IdP stopped, stale but valid token');
    assert.equal(c.jti, w.token.jti, 'the old token is used');

    const n0 = await apiCount('orders');
    const t0 = Date.now();
    const e = await x.b.fetchApi('GET', '/api/orders', { timeoutMs: 15_000 });
    assertJsonError(e, 503, 'idp_unavailable', 'IdP stopped, expired token');
    assert.ok(Date.now() - t0 < CALLOUT_TIMEOUT_MS + 1500, 'answered within the callout timeout');
    assertNoSessionSet(e);
    assert.equal(setCookiesNamed(e, SESSION_COOKIE).length, 0, `session cookie not cleared: ${d(e)}`);
    assert.equal(await apiCount('orders'), n0, 'the upstream saw nothing');
    const u = await x.raw('GET', '/auth/user');
    assert.equal(u.status, 200, `session kept while the IdP is down: ${d(u)}`);

    const cb = await deliverCallback(pendingLogin, ctx.callbackUrl, { timeoutMs: 15_000 });
    assertJsonError(cb, 503, 'idp_unavailable', 'login callback with the IdP stopped');
    assertNoSessionSet(cb, 'login callback with the IdP stopped');

    const t1 = Date.now();
    const lo = await w.b.post('/auth/logout', { headers: { ...ACCEPT_JSON, ...CSRF }, timeoutMs: 15_000 });
    const ms = Date.now() - t1;
    assert.equal(lo.status, 200, `logout with the IdP stopped: ${d(lo)}`);
    assertSessionCleared(lo, 'logout with the IdP stopped');
    assert.ok(ms < 2000, `logout with the IdP stopped answers quickly (${ms} ms)`);
    const u2 = await w.raw('GET', '/auth/user');
    assertJsonError(u2, 401, 'unauthenticated', '/auth/user after logout with the IdP stopped');
  } finally {
    await boot.stack.startIdp({ BFFGATE_ROTATE_REFRESH: '1', BFFGATE_ACCESS_TOKEN_TTL: String(ROTATION_TTL) });
  }
});

// ---------------------------------------------------------------------------------------------
// rotation (the IdP now rotates refresh tokens and issues tokens due for renewal after 2 s)

test('refresh-token rotation: renewals in a row (sequential, concurrent, via exchange) keep working; the old refresh token is never reused', async () => {
  const s = await new Sess('rotation').login();
  const st0 = await idpStats();
  const jtis = new Set();
  let last = Date.now();
  const nextStale = () => waitUntil((Math.floor(last / 1000) + dueAfter(ROTATION_TTL)) * 1000 + 150);
  // four sequential renewals of the orders token
  for (let i = 0; i < 4; i += 1) {
    await nextStale();
    const before1 = await idpStats();
    const [r, c] = await api(s.b, '/api/orders');
    last = Date.now();
    assertOrdersOk(r, `rotation renewal ${i + 1}`);
    assert.ok(!jtis.has(c.jti), `renewal ${i + 1} forwards a new token`);
    jtis.add(c.jti);
    const dd = delta(before1, await idpStats());
    assert.equal(dd.refresh, 1, `renewal ${i + 1}: one refresh grant: ${JSON.stringify(dd)}`);
  }
  // profile while the orders token is stale: refresh (rotates) + exchange
  await nextStale();
  const [p, pc] = await api(s.b, '/api/profile');
  last = Date.now();
  assert.equal(p.status, 200, `profile under rotation: ${d(p)}`);
  assert.equal(pc?.aud, PROFILE);
  // 10 concurrent requests on a stale token
  await nextStale();
  const rs = await Promise.all(Array.from({ length: 10 }, () => s.raw('GET', '/api/orders')));
  last = Date.now();
  for (const r of rs) transcript.push(r);
  rs.forEach((r, i) => assertOrdersOk(r, `concurrent request ${i + 1} under rotation`));
  // and once more after all of that
  await nextStale();
  const [r2] = await api(s.b, '/api/orders');
  assertOrdersOk(r2, 'renewal after the concurrent burst');
  const dd = delta(st0, await idpStats());
  assert.ok(dd.refresh >= 6, `at least 6 rotations happened: ${JSON.stringify(dd)}`);
  assert.equal(dd.refreshRequests, dd.refresh,
    `every refresh request succeeded (a reused, rotated-out refresh token would be refused): ${JSON.stringify(dd)}`);
  const u = await s.b.get('/auth/user', { headers: ACCEPT_JSON });
  assert.equal(u.status, 200, `the session is alive: ${d(u)}`);
});

// ---------------------------------------------------------------------------------------------
// after all the faults (keep last)

test('every token forwarded to orders had aud orders, every profile token aud profile and scope "profile"', () => {
  let orders = 0;
  let profile = 0;
  for (const r of transcript) {
    const c = r.json?.seen?.claims;
    if (!c) continue;
    if (r.json.api === 'orders') {
      orders += 1;
      assert.equal(c.aud, ORDERS, `${r.method} ${r.url}: orders token aud`);
    } else if (r.json.api === 'profile') {
      profile += 1;
      assert.equal(c.aud, PROFILE, `${r.method} ${r.url}: profile token aud`);
      assert.equal(c.scope, 'profile', `${r.method} ${r.url}: profile token scope`);
    }
  }
  assert.ok(orders >= 50 && profile >= 3, `the scan saw the tokens (${orders} orders, ${profile} profile)`);
});

test('no crash: no wasm VM failure or reload in Envoy\'s stats, no panic or runtime error in envoy.log', async () => {
  const now = await wasmCounters();
  const keys = Object.keys(now);
  assert.ok(keys.some((k) => /vm_reload$/.test(k)) && keys.some((k) => /runtime\.v8\.created$/.test(k)),
    `the counters exist: ${JSON.stringify(now)}`);
  for (const k of keys.filter((x) => /vm_reload/.test(x))) assert.equal(now[k], 0, `${k}: ${JSON.stringify(now)}`);
  assert.deepEqual(now, baseline, 'no VM was created or reloaded since the start');
  const bad = [];
  forEachLogChunk(boot.envoyLog, boot.offset, (text) => {
    for (const l of text.split('\n')) {
      if (/panicked|RuntimeError|Uncaught|Function: proxy_on_\w+ failed|wasm trap/i.test(l)) bad.push(l.slice(0, 300));
    }
  });
  assert.deepEqual(bad.slice(0, 5), [], `crash lines in envoy.log (${bad.length})`);
  assert.deepEqual(boot.stack.unexpectedExits, [], 'no process of the stack died');
  const ready = await rawRequest('GET', 'http://127.0.0.1:9901/ready');
  assert.equal(ready.status, 200, 'Envoy is still ready');
});

test('no token in responses to the browser, no token, code or cookie value in Envoy\'s log', () => {
  const secrets = secretsSeen();
  assert.ok([...secrets.values()].includes('access token'), 'the scan knows at least one access token');
  const hits = [...tokenLeaksInResponses(secrets), ...findSecretsInLog(boot.envoyLog, boot.offset, secrets)];
  assert.deepEqual(hits, [], hits.join('\n'));
});
