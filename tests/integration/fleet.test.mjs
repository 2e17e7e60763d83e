// Fleet mode through the real parts (docs/fleet.md): a 3-member etcd cluster, the demo IdP and APIs,
// Envoy A (https://localhost:8444) and Envoy B (:8445) with bffgate and `store.backend: etcd`
// (envoy/envoy.fleet.yaml), and the TCP round-robin load balancer on :8443 (scripts/fleet.mjs).
//
// Sessions created on one Envoy are used on the other; a refresh on B serves A; concurrent
// requests over both refresh once; a logout on A is honoured on B within cache_ttl_ms; a
// restarted Envoy keeps its sessions; one etcd member down changes nothing; without quorum a
// protected request gets 503 store_unavailable (fail_closed) within the callout timeout and the
// session survives; records at rest are AEAD envelopes with a lease; serve_cached serves a
// cached session only while young enough and never a miss; an operator's revoke-all on one
// Envoy ends the whole fleet's sessions and revokes their grants.
//
// One fleet for the file. The provider's access tokens live TTL = 40 s; bffgate renews a token
// min(refresh_skew_s = 30, half its life) before expiry, so a token is fresh for 20 s, then
// renewed on use, and expired 40 s after issue. Two sessions are
// logged in first (before()) and left untouched for the refresh tests, which run once their
// tokens are stale (refresh on B) and expired (single-flight), so the file waits for an expiry
// only once. Tests run in file order.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import crypto from 'node:crypto';
import path from 'node:path';

import { startFleet } from '../../scripts/fleet.mjs';
import { ROOT, readSecrets } from '../../scripts/stack.mjs';
import {
  Browser, SESSION_COOKIE, authorizeAtIdp, deliverCallback, idpStats, jwtPayload, rawRequest, setsSession, transcript,
} from '../lib/client.mjs';
import { JWT_RE, findSecretsInLog, secretsSeen } from '../lib/harness.mjs';
import { logSize, sessionOf } from '../lib/observe.mjs';
import { operatorRequest } from '../../scripts/lib/admin.mjs';
import {
  adminPrometheus, adminStats, entropy, keyRing, loginThroughOk, openRecord, parseEnvelope,
} from '../lib/fleet.mjs';

const TTL = 40; // provider access-token lifetime (s)
const SKEW = 30; // envoy/bffgate.yaml session.refresh_skew_s
const ABSOLUTE_S = 28800; // envoy/bffgate.yaml session.absolute_timeout_s
const CACHE_TTL_MS = 1000; // envoy/fleet.yaml store.etcd.cache_ttl_ms
const CALLOUT_MS = 500; // envoy/fleet.yaml store.etcd.timeout_ms
const MARGIN_MS = 1000;
const ORDERS = 'https://orders.api.local';
const PROFILE = 'https://profile.api.local';
const XCHG = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ORIGIN = 'https://localhost:8443';

const sleep = (ms) => new Promise((r) => { setTimeout(r, Math.max(0, ms)); });
const waitUntil = (t) => sleep(t - Date.now());

let fleet;
let A; // https://localhost:8444
let B; // https://localhost:8445
let LB; // https://localhost:8443
let ring; // BFFGATE_STORE_KEYS
const sessions = {}; // name -> { cookie, b, user, loggedInAt, ... }
const logOffsets = {}; // envoy-a/b log sizes before this run

// ---------------------------------------------------------------------------------------------
// helpers

/** One request with a session cookie on a fresh connection (no jar: a 401 cannot drop it). */
async function call(base, path, cookie, { method = 'GET', headers = {}, body, timeoutMs = 10_000 } = {}) {
  const t0 = performance.now();
  const res = await rawRequest(method, `${base}${path}`, {
    headers: {
      accept: 'application/json',
      ...(cookie ? { cookie: `${SESSION_COOKIE}=${cookie}` } : {}),
      ...headers,
    },
    body,
    timeoutMs,
  });
  res.ms = performance.now() - t0;
  transcript.push({ ...res, setCookies: res.setCookies });
  return res;
}

const orders = (base, s) => call(base, '/api/orders', s.cookie);
const d = (r) => `${r.method} ${r.url} -> ${r.status} (${Math.round(r.ms ?? 0)} ms) ${r.text.slice(0, 300)}`;

function assertOrdersOk(r, what) {
  assert.equal(r.status, 200, `${what}: ${d(r)}`);
  assert.equal(r.json?.api, 'orders', `${what}: the orders API answered: ${d(r)}`);
  assert.match(String(r.json?.seen?.authorization), /^Bearer eyJ/, `${what}: a bearer JWT reached the API`);
  const aud = r.json.seen.claims?.aud;
  assert.ok(aud === ORDERS || (Array.isArray(aud) && aud.length === 1 && aud[0] === ORDERS), `${what}: aud is the orders audience, got ${JSON.stringify(aud)}`);
  assert.ok(!String(r.json.seen.cookie ?? '').includes('__Host-bff-'), `${what}: no bffgate cookie upstream`);
}

function assertJsonErr(r, status, code, what) {
  assert.equal(r.status, status, `${what}: ${d(r)}`);
  assert.match(String(r.headers['content-type']), /^application\/json/, `${what}: JSON: ${d(r)}`);
  assert.equal(r.json?.error, code, `${what}: error code: ${d(r)}`);
  assert.equal(typeof r.json?.error_description, 'string', `${what}: error_description: ${d(r)}`);
}

const grants = async () => {
  const s = await idpStats();
  return {
    code: s?.grants?.authorization_code || 0,
    refresh: s?.grants?.refresh_token || 0,
    exchange: s?.grants?.[XCHG] || 0,
  };
};
const minus = (a, b) => ({ code: a.code - b.code, refresh: a.refresh - b.refresh, exchange: a.exchange - b.exchange });

/** Requests the Envoy `name` sent to the etcd cluster so far (Envoy's own cluster counter). */
async function etcdRequests(name) {
  const st = await adminStats(fleet.envoys[name].adminUrl, '^cluster\\.bffgate_etcd\\.upstream_rq_total$');
  return st.get('cluster.bffgate_etcd.upstream_rq_total') ?? 0;
}

/** Sum of bffgate_store_* metrics (optionally only names matching `re`) of Envoy `name`. */
async function storeMetrics(name) {
  return adminPrometheus(fleet.envoys[name].adminUrl, 'bffgate_store_');
}

async function login(name, user = 'alice', { start = A, callback = A } = {}) {
  const b = new Browser({ name, keepAlive: false });
  const cookie = await loginThroughOk(b, user, { start, callback });
  const s = { name, user, b, cookie, loggedInAt: Date.now(), ...sessionOf(cookie) };
  sessions[name] = s;
  return s;
}

/** Waits until both Envoys' health checks see the running etcd members healthy, the others not. */
const envoysSeeEtcd = () => fleet.waitEtcdView({ timeoutMs: 6000 });

/** Index of the etcd member that is the leader. */
async function leaderIndex() {
  for (const [i, ep] of fleet.etcd.endpoints.entries()) {
    if (!fleet.etcd.running(i)) continue;
    const r = await fetch(`${ep}/v3/maintenance/status`, { method: 'POST', body: '{}', signal: AbortSignal.timeout(2000) }).then((x) => x.json());
    if (r.leader && r.leader === r.header?.member_id) return i;
  }
  throw new Error('no etcd leader');
}

/** Key of a session's record in etcd. */
const recordKey = (s) => `bffgate/s/${s.verifier}`;

// ---------------------------------------------------------------------------------------------

before(async () => {
  const settings = process.env.BFFGATE_TEST_FLEET_SETTINGS ? JSON.parse(process.env.BFFGATE_TEST_FLEET_SETTINGS) : undefined;
  for (const n of ['a', 'b']) logOffsets[n] = logSize(path.join(ROOT, `.run/logs/fleet/envoy-${n}.log`));
  fleet = await startFleet({ env: { BFFGATE_ACCESS_TOKEN_TTL: String(TTL) }, settings });
  A = fleet.urls.a;
  B = fleet.urls.b;
  LB = fleet.urls.app;
  ring = keyRing(readSecrets().BFFGATE_STORE_KEYS);
  // Sessions for the refresh tests: logged in now, then left alone until their tokens age.
  for (const name of ['refreshOnB', 'singleFlight']) {
    const s = await login(name);
    const r = await orders(A, s);
    assertOrdersOk(r, `${name}: first use on A`);
    s.firstJti = r.json.seen.claims.jti;
    s.tokenAt = Date.now();
  }
}, { timeout: 90_000 });

after(async () => {
  for (const s of Object.values(sessions)) s.b.close();
  await fleet?.stop();
});

test('log in through Envoy A, use the session through Envoy B: the orders token reaches the API, and B read the session from etcd', async () => {
  const s = await login('main');
  const b0 = await etcdRequests('b');
  const r = await orders(B, s);
  assertOrdersOk(r, 'session from A used on B');
  assert.ok(await etcdRequests('b') > b0, 'B sent requests to the etcd cluster (cluster.bffgate_etcd.upstream_rq_total)');
  // /auth/user on B: the same subject, no token in it
  const u = await call(B, '/auth/user', s.cookie);
  assert.equal(u.status, 200, d(u));
  assert.equal(u.json?.sub, 'alice', d(u));
  assert.ok(!JWT_RE.test(u.text), 'no token in /auth/user');
  // and through the load balancer
  assertOrdersOk(await orders(LB, s), 'through the load balancer');
  const m = await storeMetrics('b');
  assert.ok([...m.keys()].length > 0, `B exposes bffgate_store_* metrics: ${[...m.keys()].join(', ') || 'none'}`);
});

test('a profile token obtained on B (token exchange) is used on A without another grant', async () => {
  const s = sessions.main;
  const g0 = await grants();
  const r = await call(B, '/api/profile', s.cookie);
  assert.equal(r.status, 200, d(r));
  assert.equal(r.json.seen.claims?.aud, PROFILE, `aud profile: ${d(r)}`);
  const g1 = await grants();
  assert.deepEqual(minus(g1, g0), { code: 0, refresh: 0, exchange: 1 }, 'B obtained the profile token with one token exchange');
  // A's cache entry of this session (if any) is past its bound: A reads the record from etcd.
  await sleep(CACHE_TTL_MS + 200);
  const r2 = await call(A, '/api/profile', s.cookie);
  assert.equal(r2.status, 200, d(r2));
  assert.equal(r2.json.seen.claims?.aud, PROFILE, d(r2));
  assert.equal(r2.json.seen.claims.jti, r.json.seen.claims.jti, 'A sent the token B obtained');
  assert.deepEqual(minus(await grants(), g1), { code: 0, refresh: 0, exchange: 0 }, 'no grant at the IdP for A');
});

test('tokens at rest: every value under bffgate/ is free of tokens and names; session records are AEAD envelopes bound to key and session', async () => {
  const kvs = await fleet.etcdKeys('bffgate/');
  assert.ok(kvs.length > 0, 'there are keys under bffgate/');
  const known = Object.values(sessions);
  const records = kvs.filter((kv) => /^bffgate\/s\/[0-9a-f]{64}$/.test(kv.key));
  for (const s of known) {
    assert.ok(records.some((kv) => kv.key === recordKey(s)), `session ${s.name} has a record ${recordKey(s)}; keys: ${kvs.map((k) => k.key).join(' ')}`);
  }
  // Open each record as src/vault.rs seals it: with the store key ring and AD bound to the etcd
  // key and the session's handle. The plaintexts give the secrets to look for in clear.
  const secrets = new Map();
  for (const [tok, kind] of secretsSeen()) if (kind === 'access token') secrets.set(tok, kind);
  for (const s of known) {
    const kv = records.find((x) => x.key === recordKey(s));
    const env = parseEnvelope(kv.value);
    assert.ok(env, `${kv.key}: an envelope "V2" || handle || kid || nonce || ciphertext (${kv.value.length} bytes)`);
    assert.equal(env.handle, s.handle, `${kv.key}: names its session's audit handle (what an operator's revoke-all opens it with)`);
    assert.equal(env.kid, [...ring.keys()][0], `${kv.key}: sealed with the current key id`);
    assert.ok(entropy(env.ct) > 6.5 || env.ct.length < 256, `${kv.key}: ciphertext looks random (entropy ${entropy(env.ct).toFixed(2)})`);
    let plain;
    assert.doesNotThrow(() => { plain = openRecord(ring, kv.key, s.handle, kv.value); }, `${kv.key} opens with BFFGATE_STORE_KEYS and AD (key, handle ${s.handle})`);
    const other = known.find((o) => o !== s);
    assert.throws(() => openRecord(ring, kv.key, other.handle, kv.value), `${kv.key} does not open for another session`);
    assert.throws(() => openRecord(ring, recordKey(other), s.handle, kv.value), `${kv.key} does not open under another key`);
    const text = plain.toString('latin1');
    for (const m of text.matchAll(new RegExp(JWT_RE.source, 'g'))) secrets.set(m[0], 'token from a record');
    for (const m of text.matchAll(/"(refresh_token|rt|id_token)"\s*:\s*"([^"]{16,})"/g)) secrets.set(m[2], m[1]);
  }
  assert.ok([...secrets.values()].includes('token from a record'), 'the opened records hold the tokens (so the scan below has something to find)');
  const hits = [];
  for (const kv of kvs) {
    const raw = kv.value.toString('latin1');
    const b64 = kv.value.toString('base64');
    for (const hay of [kv.key, raw]) {
      if (hay.includes('eyJ')) hits.push(`${kv.key}: "eyJ"`);
      if (/alice|bob/.test(hay)) hits.push(`${kv.key}: a user name`);
      if (hay.includes('orders.api.local') || hay.includes('profile.api.local')) hits.push(`${kv.key}: an audience in clear`);
    }
    for (const [secret, kind] of secrets) {
      if (raw.includes(secret) || kv.key.includes(secret) || b64.includes(Buffer.from(secret).toString('base64'))) hits.push(`${kv.key}: ${kind} in clear`);
    }
  }
  assert.deepEqual(hits, [], `nothing readable in etcd:\n${hits.join('\n')}`);
});

test('leases: a session record has a lease no longer than absolute_timeout_s, and the lease holds the record', async () => {
  const s = sessions.main;
  const kv = (await fleet.etcdKeys(recordKey(s))).find((x) => x.key === recordKey(s));
  assert.ok(kv, `record ${recordKey(s)} exists`);
  assert.ok(kv.lease && kv.lease !== '0', `record has a lease: ${JSON.stringify({ ...kv, value: undefined })}`);
  const t = await fleet.leaseTimeToLive(kv.lease);
  const ttl = Number(t.TTL);
  const granted = Number(t.grantedTTL);
  assert.ok(ttl > 0 && ttl <= ABSOLUTE_S, `0 < TTL ${ttl} <= ${ABSOLUTE_S}: ${JSON.stringify(t)}`);
  assert.ok(granted > 0 && granted <= ABSOLUTE_S, `0 < grantedTTL ${granted} <= ${ABSOLUTE_S}`);
  const keys = (t.keys || []).map((k) => Buffer.from(k, 'base64').toString());
  assert.ok(keys.includes(recordKey(s)), `the lease holds the record: ${keys.join(' ')}`);
});

test('log out on A: refused on A at once, on B within cache_ttl_ms; the record is gone from etcd', async () => {
  const s = await login('logout');
  assertOrdersOk(await orders(B, s), 'B uses (and caches) the session');
  assertOrdersOk(await orders(A, s), 'A uses the session');
  const out = await call(A, '/auth/logout', s.cookie, { method: 'POST', headers: { 'x-csrf': '1', origin: ORIGIN } });
  const t0 = Date.now();
  assert.equal(out.status, 200, d(out));
  const onA = await orders(A, s);
  assert.equal(onA.status, 401, `A refuses at once: ${d(onA)}`);
  assert.equal((await fleet.etcdKeys(recordKey(s))).filter((k) => k.key === recordKey(s)).length, 0, 'the record was deleted from etcd');
  let refusedAt;
  const seen = [];
  while (Date.now() - t0 < CACHE_TTL_MS + MARGIN_MS) {
    const r = await orders(B, s);
    seen.push(r.status);
    if (r.status === 401) {
      refusedAt = Date.now() - t0;
      break;
    }
    assert.equal(r.status, 200, `B before it refuses: only the cached answer: ${d(r)}`);
    await sleep(100);
  }
  assert.ok(refusedAt !== undefined, `B refused within ${CACHE_TTL_MS + MARGIN_MS} ms (statuses ${seen.join(',')})`);
  // and stays refused
  const again = await orders(B, s);
  assert.equal(again.status, 401, d(again));
});

test('logins through the load balancer: login on one Envoy, callback on the other, session good on both', async () => {
  for (let k = 0; k < 2; k++) {
    const b = new Browser({ name: `lb${k}`, keepAlive: false });
    const h0 = fleet.lb.history.length;
    const first = await b.navigate(`${LB}/auth/login`);
    assert.equal(first.status, 302, d(first));
    const startedOn = fleet.lb.last();
    assert.equal(fleet.lb.history.length, h0 + 1, 'one connection through the balancer');
    const cb = await authorizeAtIdp(b, first.location, 'bob', 'bob');
    const res = await deliverCallback(b, cb);
    const finishedOn = fleet.lb.last();
    assert.notEqual(finishedOn, startedOn, `callback on the other Envoy (${fleet.lb.history.slice(h0).join('')})`);
    assert.equal(res.status, 302, `callback on ${finishedOn} for a login started on ${startedOn}: ${d(res)}`);
    assert.ok(setsSession(res), 'the callback sets the session cookie');
    const s = { cookie: b.sessionCookie };
    for (const base of [A, B, LB]) {
      const r = await orders(base, s);
      assert.equal(r.status, 200, `${base}: ${d(r)}`);
      assert.equal(r.json.seen.claims.sub, 'bob', d(r));
    }
    b.close();
  }
});

test('restart Envoy A: the same cookie still works on A (the session lives in etcd)', async () => {
  const s = sessions.main;
  assertOrdersOk(await orders(A, s), 'before the restart');
  const pid0 = fleet.pids().a;
  await fleet.stopEnvoy('a');
  const down = await rawRequest('GET', `${A}/`, { timeoutMs: 2000 }).catch((e) => e);
  assert.ok(down instanceof Error, 'A is down');
  await fleet.startEnvoy('a');
  assert.notEqual(fleet.pids().a, pid0, 'a new Envoy process');
  const r = await orders(A, s);
  assertOrdersOk(r, 'after the restart');
  assert.ok(await etcdRequests('a') > 0, 'the new A read from etcd');
});

test('one etcd member down (the leader): login, use and logout keep working; it rejoins', async () => {
  const i = await leaderIndex();
  await fleet.stopEtcdMember(i);
  // Before the health checks notice (up to 1 s), a callout may still pick the stopped member:
  // outlier detection sets it aside at its first refused connection, so at most one request
  // per Envoy worker (2 Envoys x 2 workers) fails, with store_unavailable, never worse.
  const early = [];
  for (let k = 0; k < 12; k++) early.push(await call(k % 2 ? B : A, '/auth/login', undefined, { headers: { accept: 'text/html' } }));
  const failed = early.filter((r) => r.status !== 302);
  for (const r of failed) assertJsonErr(r, 503, 'store_unavailable', 'a login start that met the stopped member');
  assert.ok(failed.length <= 4, `at most one failure per Envoy worker right after the stop: ${early.map((r) => r.status).join(',')}`);
  const others = [0, 1, 2].filter((x) => x !== i);
  await fleet.etcd.waitHealthy(others, 10_000); // a new leader
  await envoysSeeEtcd();
  const s = await login('oneDown', 'bob', { start: A, callback: B });
  assert.equal((await orders(A, s)).status, 200);
  assert.equal((await orders(B, s)).status, 200);
  const out = await call(B, '/auth/logout', s.cookie, { method: 'POST', headers: { 'x-csrf': '1', origin: ORIGIN } });
  assert.equal(out.status, 200, d(out));
  assert.equal((await orders(B, s)).status, 401, 'B refuses after its own logout');
  await sleep(CACHE_TTL_MS + 200);
  assert.equal((await orders(A, s)).status, 401, 'A refuses after the bound');
  delete sessions.oneDown;
  await fleet.startEtcdMember(i);
  await envoysSeeEtcd();
  assertOrdersOk(await orders(A, sessions.main), 'after the member rejoined');
});

test('refresh on B: B renews the stale orders token once; A then uses the new token without a grant', async () => {
  const s = sessions.refreshOnB;
  // Due for renewal (min(skew, half its life) before expiry), still valid.
  await waitUntil(s.tokenAt + (TTL - Math.min(SKEW, Math.floor(TTL / 2))) * 1000 + 1500);
  const g0 = await grants();
  const r = await orders(B, s);
  assertOrdersOk(r, 'B with a stale token');
  const g1 = await grants();
  assert.deepEqual(minus(g1, g0), { code: 0, refresh: 1, exchange: 0 }, 'one refresh_token grant, by B');
  assert.notEqual(r.json.seen.claims.jti, s.firstJti, 'B sent a new token');
  await sleep(CACHE_TTL_MS + 200);
  const r2 = await orders(A, s);
  assertOrdersOk(r2, 'A after B refreshed');
  assert.equal(r2.json.seen.claims.jti, r.json.seen.claims.jti, 'A sent the token B obtained');
  assert.deepEqual(minus(await grants(), g1), { code: 0, refresh: 0, exchange: 0 }, 'no grant for A');
});

test('refresh single-flight across the fleet: 20 concurrent requests over A and B on an expired token, one refresh grant, all 200', { timeout: 90_000 }, async () => {
  const s = sessions.singleFlight;
  await waitUntil(s.tokenAt + TTL * 1000 + 1500); // expired
  const g0 = await grants();
  const rs = await Promise.all(Array.from({ length: 20 }, (_, k) => orders(k % 2 ? B : A, s)));
  const g1 = await grants();
  rs.forEach((r, k) => assertOrdersOk(r, `request ${k} on ${k % 2 ? 'B' : 'A'}`));
  assert.deepEqual(minus(g1, g0), { code: 0, refresh: 1, exchange: 0 }, `exactly one refresh for the fleet (statuses ${rs.map((r) => r.status).join(',')})`);
  const jtis = new Set(rs.map((r) => r.json.seen.claims.jti));
  assert.equal(jtis.size, 1, `every request carried the one new token: ${[...jtis].join(' ')}`);
  assert.ok(!jtis.has(s.firstJti), 'not the expired token');
  for (const r of rs) assert.ok(jwtPayload(r.json.seen.authorization).exp * 1000 > Date.now(), 'the token sent is not expired');
});

test('no quorum (two members down), fail_closed: 503 store_unavailable within the callout timeout, never 200; the session survives', { timeout: 60_000 }, async () => {
  const s = sessions.main;
  assertOrdersOk(await orders(A, s), 'before');
  assertOrdersOk(await orders(B, s), 'before');
  const m0 = await storeMetrics('a');
  await sleep(CACHE_TTL_MS + 200); // cache entries past their bound: every answer needs etcd
  const down = [1, 2];
  for (const i of down) await fleet.stopEtcdMember(i);
  const t0 = Date.now();
  const results = [];
  while (Date.now() - t0 < 4000) {
    for (const base of [A, B]) {
      const r = await orders(base, s);
      results.push(r);
      assertJsonErr(r, 503, 'store_unavailable', `${base} without quorum at +${Date.now() - t0} ms`);
      assert.ok(r.ms <= CALLOUT_MS + MARGIN_MS, `answered within ${CALLOUT_MS + MARGIN_MS} ms: ${Math.round(r.ms)} ms`);
    }
    await sleep(200);
  }
  // a login cannot complete either (pending logins live in etcd), and is refused, not hung
  const st = await call(A, '/auth/login', undefined, { headers: { accept: 'text/html' } });
  assert.ok(st.status === 503 || st.status === 302, `login start without quorum: ${d(st)}`);
  const m1 = await storeMetrics('a');
  const grew = [...m1].filter(([k, v]) => v > (m0.get(k) ?? 0)).map(([k]) => k);
  assert.ok(grew.length > 0, `a bffgate_store_* metric counted the outage on A: ${[...m1].map(([k, v]) => `${k}=${v}`).join(' ')}`);
  for (const i of down) await fleet.startEtcdMember(i, { wait: false });
  await fleet.etcd.waitHealthy([0, 1, 2], 15_000);
  const t1 = Date.now();
  const after = [];
  let ok;
  while (Date.now() - t1 < 8000) {
    const r = await orders(A, s);
    after.push(r.status);
    assert.ok(r.status === 200 || r.status === 503, `after quorum returned: 200 or a last 503, never a lost session: ${d(r)}`);
    if (r.status === 200) { ok = r; break; }
    await sleep(200);
  }
  assert.ok(ok, `the session works again on A (statuses ${after.join(',')})`);
  assertOrdersOk(ok, 'A after quorum returned');
  const rb = await eventuallyOk(() => orders(B, s));
  assertOrdersOk(rb, 'B after quorum returned');
});

async function eventuallyOk(fn, ms = 8000) {
  const t0 = Date.now();
  let r;
  while (Date.now() - t0 < ms) {
    r = await fn();
    if (r.status === 200) return r;
    await sleep(200);
  }
  return r;
}

test('serve_cached: without quorum A serves its cached session until serve_cached_max_ms, B (no cache entry) refuses; then fail closed', { timeout: 90_000 }, async () => {
  const MAX_MS = 4000;
  const settings = { store: { etcd: { when_unavailable: 'serve_cached', serve_cached_max_ms: MAX_MS } } };
  await Promise.all([fleet.restartEnvoy('a', { settings }), fleet.restartEnvoy('b', { settings })]);
  await envoysSeeEtcd();
  const s = await login('cached', 'alice', { start: A, callback: A });
  assertOrdersOk(await orders(A, s), 'A reads (and caches) the session');
  const readAt = Date.now();
  await fleet.stopEtcdMember(1);
  await fleet.stopEtcdMember(2);
  await sleep(CACHE_TTL_MS + 300); // past the staleness bound: A must ask etcd, which cannot answer
  const r = await orders(A, s);
  assert.equal(r.status, 200, `A serves the cached session ${Date.now() - readAt} ms after the last read: ${d(r)}`);
  assert.ok(r.ms <= CALLOUT_MS + MARGIN_MS, `within the callout timeout: ${Math.round(r.ms)} ms`);
  const rb = await orders(B, s);
  assertJsonErr(rb, 503, 'store_unavailable', 'B never saw the session: a miss is never served');
  await waitUntil(readAt + MAX_MS + 500);
  const late = await orders(A, s);
  assertJsonErr(late, 503, 'store_unavailable', `A after serve_cached_max_ms (${Date.now() - readAt} ms since the last read)`);
  await fleet.startEtcdMember(1, { wait: false });
  await fleet.startEtcdMember(2, { wait: false });
  await fleet.etcd.waitHealthy([0, 1, 2], 15_000);
  assertOrdersOk(await eventuallyOk(() => orders(A, s)), 'A after quorum returned');
});

test('key rotation without logging anyone out: new cookie and store keys in front, then the old ones dropped', { timeout: 90_000 }, async () => {
  const secrets = readSecrets();
  const fresh = () => crypto.randomBytes(32).toString('base64url');
  const oldCookie = secrets.BFFGATE_COOKIE_KEYS;
  const oldStore = secrets.BFFGATE_STORE_KEYS;
  const oldStoreKid = oldStore.split(',')[0].split(':')[0];
  const newCookie = `r2:${fresh()}`;
  const newStore = `r2:${fresh()}`;
  const settings = { store: { etcd: { when_unavailable: 'fail_closed' } } };
  const s = await login('rotation-old', 'alice', { start: A, callback: A });
  assert.notEqual(s.kid, 'r2');
  // Step 1: every Envoy signs and seals with the new keys and still accepts the old ones.
  const both = { BFFGATE_COOKIE_KEYS: `${newCookie},${oldCookie}`, BFFGATE_STORE_KEYS: `${newStore},${oldStore}` };
  await Promise.all([fleet.restartEnvoy('a', { settings, env: both }), fleet.restartEnvoy('b', { settings, env: both })]);
  await envoysSeeEtcd();
  assertOrdersOk(await orders(A, s), 'old cookie and old record on A after the rotation');
  assertOrdersOk(await orders(B, s), 'old cookie and old record on B after the rotation');
  const n = await login('rotation-new', 'bob', { start: B, callback: B });
  assert.equal(n.kid, 'r2', 'a new login gets a cookie signed with the new key');
  const rec = (await fleet.etcdKeys(`bffgate/s/${n.verifier}`)).find((kv) => kv.key === `bffgate/s/${n.verifier}`);
  assert.ok(rec, 'the new session is in etcd');
  assert.equal(parseEnvelope(rec.value)?.kid, 'r2', 'and sealed with the new store key');
  const old = (await fleet.etcdKeys(`bffgate/s/${s.verifier}`)).find((kv) => kv.key === `bffgate/s/${s.verifier}`);
  assert.equal(parseEnvelope(old?.value)?.kid, oldStoreKid, 'the old record keeps its key until rewritten');
  assert.equal((await orders(A, n)).status, 200, 'the new session on the other Envoy');
  // Step 2: the old keys dropped: the old cookie is refused (a clean 401), the new one works.
  const only = { BFFGATE_COOKIE_KEYS: newCookie, BFFGATE_STORE_KEYS: newStore };
  await Promise.all([fleet.restartEnvoy('a', { settings, env: only }), fleet.restartEnvoy('b', { settings, env: only })]);
  await envoysSeeEtcd();
  assertJsonErr(await orders(A, s), 401, 'unauthenticated', 'a cookie under a dropped key');
  assertOrdersOk(await orders(B, n), 'the new session after the old keys are gone');
  // Back to the shipped secrets for the tests after this one.
  await Promise.all([fleet.restartEnvoy('a', { settings, env: {} }), fleet.restartEnvoy('b', { settings, env: {} })]);
  await envoysSeeEtcd();
});

test('revoke-all on A\'s operator API ends every session of the fleet, those only B has seen too, and revokes their grants', { timeout: 60_000 }, async () => {
  const onB = await login('revoke-all-b', 'bob', { start: B, callback: B });
  const onA = await login('revoke-all-a', 'alice', { start: A, callback: A });
  assertOrdersOk(await orders(B, onB), 'a session only B has used');
  assertOrdersOk(await orders(A, onA), 'a session on A');
  const revocations0 = (await idpStats()).revocations;
  const r = await operatorRequest('POST', '/sessions/revoke-all', { headers: { 'x-csrf': '1' }, base: fleet.envoys.a.operatorUrl });
  assert.equal(r.status, 202, `${r.status} ${r.text}`);
  assert.ok(r.json.sessions_ended >= 2, JSON.stringify(r.json));
  assert.ok(r.json.revocations_queued >= 2, JSON.stringify(r.json));
  assert.deepEqual((await fleet.etcdKeys('bffgate/s/')).map((kv) => kv.key), [], 'no session record left in etcd');
  // A refuses at once; B once its cache entry is older than cache_ttl_ms.
  assertJsonErr(await orders(A, onA), 401, 'unauthenticated', 'A after the revoke-all');
  const deadline = Date.now() + CACHE_TTL_MS + MARGIN_MS;
  let onBNow = await orders(B, onB);
  while (onBNow.status !== 401 && Date.now() < deadline) {
    await sleep(100);
    onBNow = await orders(B, onB);
  }
  assertJsonErr(onBNow, 401, 'unauthenticated', 'B within cache_ttl_ms of the revoke-all');
  // Every queued grant is revoked at the provider, in the background.
  const until = Date.now() + 10_000;
  while ((await idpStats()).revocations - revocations0 < r.json.revocations_queued && Date.now() < until) await sleep(100);
  assert.equal((await idpStats()).revocations - revocations0, r.json.revocations_queued);
});

test('a release with a new first cookie key and revoke_on_key_change ends the fleet\'s sessions once', { timeout: 90_000 }, async () => {
  const s1 = await login('keychange-a', 'alice', { start: A, callback: A });
  const s2 = await login('keychange-b', 'bob', { start: B, callback: B });
  assertOrdersOk(await orders(A, s1), 'before the release');
  const revocations0 = (await idpStats()).revocations;
  const old = readSecrets().BFFGATE_COOKIE_KEYS;
  const env = { BFFGATE_COOKIE_KEYS: `r3:${crypto.randomBytes(32).toString('base64url')},${old}` };
  const settings = { store: { etcd: { when_unavailable: 'fail_closed' } }, cookie: { revoke_on_key_change: true } };
  // Rolling release: A first. Its first request notes the new key in etcd and, winning that
  // write, ends every session of the fleet.
  await fleet.restartEnvoy('a', { settings, env });
  await envoysSeeEtcd();
  const deadline = Date.now() + 10_000;
  let r = await orders(A, s1);
  while (r.status !== 401 && Date.now() < deadline) {
    await sleep(100);
    r = await orders(A, s1);
  }
  assertJsonErr(r, 401, 'unauthenticated', 'a session made before the release, on A');
  await sleep(CACHE_TTL_MS + MARGIN_MS);
  assertJsonErr(await orders(B, s2), 401, 'unauthenticated', 'a session made before the release, on B (not yet released)');
  const list = (await fleet.etcdKeys('bffgate/ring_head'))[0]?.value.toString();
  assert.match(String(list), /(^| )r3$/, `the fleet's list ends with the new key id: ${list}`);
  const until = Date.now() + 10_000;
  while ((await idpStats()).revocations - revocations0 < 2 && Date.now() < until) await sleep(100);
  const revoked = (await idpStats()).revocations - revocations0;
  assert.ok(revoked >= 2, `the grants were revoked at the provider: ${revoked}`);
  // B next: the key is listed, nothing more is ended (a session made now survives B's restart).
  const s3 = await login('keychange-after', 'alice', { start: A, callback: A });
  await fleet.restartEnvoy('b', { settings, env });
  await envoysSeeEtcd();
  assertOrdersOk(await orders(B, s3), 'a session made after the release survives the rest of the rollout');
  assertOrdersOk(await orders(B, s3), 'and B\'s check');
  assert.equal((await idpStats()).revocations - revocations0, revoked, 'once: no second revoke-all');
  // Back to the shipped secrets and settings for the tests after this one.
  await Promise.all([fleet.restartEnvoy('a', { env: {} }), fleet.restartEnvoy('b', { env: {} })]);
  await envoysSeeEtcd();
});

test('no token in either Envoy log; no Envoy died', async () => {
  const secrets = secretsSeen();
  assert.ok(secrets.size > 0, 'there are secrets to look for');
  for (const name of ['a', 'b']) {
    const hits = findSecretsInLog(fleet.logs[name], logOffsets[name], secrets);
    assert.deepEqual(hits, [], `envoy-${name}.log`);
  }
  assert.deepEqual(fleet.unexpectedExits, [], 'no component exited by itself');
});
