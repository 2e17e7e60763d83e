// The attack suite: one test per attack class of docs/security.md ("What attackers and faults
// try"), each with several variants, each asserting both the answer and that no upstream saw
// the request (the demo APIs count what they receive: GET /__stats).
//
// Rows already covered case by case elsewhere are referenced and extended here with variants
// those files do not try (other encodings, HTTP/2, other workers, other ways a session dies):
//   session.test.mjs  forged cookies, client Authorization, path tricks, CSRF, logout
//   login.test.mjs    callback state checks, return_to, parallel tabs (2), fixation
//   routing.test.mjs  path tricks with sessions, forwarding headers, underscores
//   lifecycle.test.mjs refresh faults, single-flight renewal, revocation
//
// Three stacks, one after the other (Envoy --concurrency 2, wasm at trace level so the leak row
// scans every log level): A, the shipped configuration; B, the shipped configuration with short
// session lifetimes (idle 5 s, absolute 12 s), for the expiry row; C, the shipped session
// lifetimes with 20 s access tokens (due for renewal after 10 s: min(refresh_skew_s 30, half
// their life) before expiry), for the refresh row. The login-fault row replaces the identity
// provider with a scripted one on 127.0.0.1:9000 for a while. Tests run in file order.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, test } from 'node:test';

import { readSecrets, startStack } from '../../scripts/stack.mjs';
import {
  APP, Browser, FLOW_PREFIX, IDP, ROOT, SESSION_COOKIE,
  apiCount, apiCounts, authorizeAtIdp, ca, deliverCallback, describe as d, envoyStats, idpStats, isDeletion, login,
  loginOk, parseSetCookie, rawHttp1, rawRequest, resetApis, setCookiesNamed, setsSession, startLogin,
  transcript,
} from '../lib/client.mjs';
import {
  ACCEPT_JSON, CSRF, assertJsonError, assertNoSessionSet, assertSessionCleared,
  forEachLogChunk, secretsSeen, tokenLeaksInResponses,
} from '../lib/harness.mjs';
import {
  ADMIN, logSince, logSize, onEveryWorker, operatorRevoke,
} from '../lib/observe.mjs';
import { renderVariant } from '../lib/variant.mjs';

const sleep = (ms) => new Promise((r) => { setTimeout(r, Math.max(0, ms)); });
const CALLOUT_TIMEOUT_MS = 3000; // envoy/bffgate.yaml provider.timeout_ms
const LOGS = { a: '.run/logs/attacks-a', b: '.run/logs/attacks-b', c: '.run/logs/attacks-c' };
const PROTECTED = ['orders', 'profile'];

let stack; // the running stack (A, then B)
const logs = []; // envoy.log of every stack this file started
const browsers = [];
const extraSecrets = new Map(); // secret -> kind, for the leak row (beyond what the transcript shows)

function browser(name, o) {
  const b = new Browser({ name, ...o });
  browsers.push(b);
  return b;
}

async function boot(which, opts = {}) {
  const logDir = LOGS[which];
  fs.rmSync(path.join(ROOT, logDir), { recursive: true, force: true });
  stack = await startStack({ concurrency: 2, componentLogLevel: 'wasm:trace', logDir, ...opts });
  logs.push(stack.logs.envoy);
  await resetApis();
}

before(async () => {
  await boot('a');
}, { timeout: 90_000 });

after(async () => {
  for (const b of browsers) b.close();
  if (stack) await stack.stop();
}, { timeout: 30_000 });

// ---------------------------------------------------------------------------------------------
// helpers

/** Asserts that no upstream (or only those not in `names`) counted a request since `before0`. */
async function assertUntouched(before0, msg, names = ['orders', 'profile', 'public']) {
  const now = await apiCounts();
  for (const n of names) assert.equal(now[n], before0[n], `${msg}: the ${n} API saw ${now[n] - before0[n]} request(s)`);
}

/** A request carrying exactly `cookie` (no jar), on a fresh connection. */
function withCookie(method, p, cookie, headers = {}, o = {}) {
  return rawRequest(method, `${APP}${p}`, {
    headers: { ...ACCEPT_JSON, ...(cookie === undefined ? {} : { cookie }), ...headers }, ...o,
  });
}

const sessionHeader = (v) => `${SESSION_COOKIE}=${v}`;

/** One HTTP/2 request on its own connection; a response shaped like client.mjs's. */
function h2(p, headers = {}, { method = 'GET', body, trailers } = {}) {
  return new Promise((resolve, reject) => {
    const client = http2.connect(APP, { ca: ca(), servername: 'localhost' });
    client.on('error', reject);
    const req = client.request({ ':method': method, ':path': p, ...headers }, trailers ? { waitForTrailers: true } : {});
    if (trailers) req.on('wantTrailers', () => req.sendTrailers(trailers));
    let head = {};
    const chunks = [];
    req.setTimeout(10_000, () => req.close(http2.constants.NGHTTP2_CANCEL));
    req.on('response', (h) => { head = h; });
    req.on('data', (c) => chunks.push(c));
    req.on('error', (e) => { client.close(); reject(e); });
    req.on('end', () => {
      client.close();
      const text = Buffer.concat(chunks).toString('utf8');
      let json;
      try { json = JSON.parse(text); } catch { json = undefined; }
      const sc = head['set-cookie'];
      resolve({
        method, url: `${APP}${p}`, status: Number(head[':status']), headers: head,
        setCookies: Array.isArray(sc) ? sc : sc ? [sc] : [], text, json, location: head.location,
      });
    });
    req.end(body);
  });
}

/** Sends a request whose body keeps coming after the answer; resolves the answer's status. */
function streamingBody(requestHead, { chunks = 64, chunkBytes = 16 * 1024, everyMs = 15 } = {}) {
  return new Promise((resolve, reject) => {
    const sock = tls.connect({ host: '127.0.0.1', port: 8443, servername: 'localhost', ca: ca(), ALPNProtocols: ['http/1.1'] });
    const got = [];
    let sent = 0;
    let timer;
    const done = (v) => { clearInterval(timer); sock.destroy(); resolve(v); };
    sock.on('secureConnect', () => {
      sock.write(requestHead);
      timer = setInterval(() => {
        if (sent >= chunks || sock.destroyed) { clearInterval(timer); return; }
        sent += 1;
        sock.write(Buffer.alloc(chunkBytes, 0x61));
      }, everyMs);
    });
    sock.on('data', (c) => {
      got.push(c);
      // (a `100 Continue` first is not the answer)
      const text = Buffer.concat(got).toString('latin1').replace(/^(HTTP\/1\.1 1\d\d[^\r]*\r\n(?:[^\r]+\r\n)*\r\n)+/, '');
      const m = /^HTTP\/1\.1 (\d{3})/.exec(text);
      const end = text.indexOf('\r\n\r\n');
      const len = /content-length: (\d+)/i.exec(text);
      if (m && end >= 0 && len && text.length >= end + 4 + Number(len[1])) {
        // Keep the body coming a little longer after the answer, then hang up.
        setTimeout(() => done({ status: Number(m[1]), sentChunks: sent, text: text.slice(end + 4) }), 300);
      }
    });
    sock.on('error', (e) => { clearInterval(timer); if (got.length) resolve({ status: 0, sentChunks: sent }); else reject(e); });
    sock.setTimeout(15_000, () => done({ status: 0, sentChunks: sent, timeout: true }));
  });
}

/** Logs `user` in, in a new browser, and returns [browser, session cookie value]. */
async function signedIn(name, user = 'alice') {
  const b = browser(name);
  const v = await loginOk(b, user);
  return [b, v];
}

/** GET /api/orders with exactly this session cookie, fresh connection. */
const ordersWith = (v, headers = {}) => withCookie('GET', '/api/orders', sessionHeader(v), headers);

/** A login started in `b` (GET /auth/login): { state, nonce, flowName, flowValue, location }. */
async function pendingLogin(b, o = {}) {
  const r = await startLogin(b, o);
  assert.equal(r.status, 302, d(r));
  const u = new URL(r.location);
  const flow = r.setCookies.map(parseSetCookie).find((c) => c.name.startsWith(FLOW_PREFIX));
  assert.ok(flow, `a flow cookie: ${d(r)}`);
  return {
    state: u.searchParams.get('state'), nonce: u.searchParams.get('nonce'), flowName: flow.name, flowValue: flow.value, location: r.location,
  };
}

const codeGrants = async () => (await idpStats())?.grants?.authorization_code || 0;
const refreshGrants = async () => (await idpStats())?.grants?.refresh_token || 0;

async function setFault(f) {
  const r = await rawRequest('POST', `${IDP}/__fault`, { headers: { 'content-type': 'application/json' }, body: JSON.stringify(f) });
  assert.equal(r.status, 200, `POST /__fault ${JSON.stringify(f)}: ${r.status} ${r.text}`);
}

const b64u = (x) => Buffer.from(x).toString('base64url');

// =============================================================================================
// Cookies and sessions
// =============================================================================================

test('row: a bearer token or Authorization header in place of a session is never trusted, never forwarded (CVE-2022-29226)', async () => {
  // session.test.mjs and routing.test.mjs send real and fake bearers in `Authorization`; here the
  // other places a token can be smuggled in, over HTTP/1.1 and HTTP/2.
  const [alice] = await signedIn('bearer-alice');
  const o = await alice.fetchApi('GET', '/api/orders');
  assert.equal(o.status, 200, d(o));
  const real = o.json.seen.authorization.replace(/^Bearer /, '');
  assert.match(real, /^eyJ/, 'captured a real orders access token');
  extraSecrets.set(real, 'access token');
  const c0 = await apiCounts();
  const variants = [
    ['Authorization: Bearer <real>', { authorization: `Bearer ${real}` }],
    ['Authorization: <real> (no scheme)', { authorization: real }],
    ['Authorization: DPoP <real>', { authorization: `DPoP ${real}` }],
    ['Proxy-Authorization', { 'proxy-authorization': `Bearer ${real}` }],
    ['X-Forwarded-Access-Token', { 'x-forwarded-access-token': real }],
    ['X-Auth-Request-Access-Token', { 'x-auth-request-access-token': real }],
    ['X-Amzn-Oidc-Accesstoken', { 'x-amzn-oidc-accesstoken': real }],
    ['cookie named access_token', { cookie: `access_token=${real}` }],
    ['cookie named Authorization', { cookie: `Authorization=Bearer%20${real}` }],
    ['token as the session cookie value', { cookie: sessionHeader(real) }],
  ];
  for (const [name, headers] of variants) {
    for (const p of ['/api/orders', '/api/profile']) {
      const r = await rawRequest('GET', `${APP}${p}`, { headers: { ...ACCEPT_JSON, ...headers } });
      assertJsonError(r, 401, 'unauthenticated', `${name} on ${p}`);
      assertNoSessionSet(r, name);
    }
  }
  for (const q of [`access_token=${real}`, `token=${real}`, `id_token=${real}`]) {
    const r = await withCookie('GET', `/api/orders?${q}`, undefined);
    assertJsonError(r, 401, 'unauthenticated', `token in the query (${q.split('=')[0]})`);
  }
  const r2 = await h2('/api/orders', { ...ACCEPT_JSON, authorization: `Bearer ${real}` });
  assertJsonError(r2, 401, 'unauthenticated', 'HTTP/2 bearer');
  const post = await h2('/api/orders', { ...ACCEPT_JSON, ...CSRF, authorization: `Bearer ${real}`, 'content-type': 'application/json' }, { method: 'POST', body: '{"item":"x"}' });
  assert.ok([401, 403].includes(post.status), `HTTP/2 POST with a bearer: ${d(post)}`);
  await assertUntouched(c0, 'client tokens without a session');
  // Never forwarded: a public route sees no Authorization, a protected one sees bffgate's own.
  const pub = await h2('/api/public/hello', { ...ACCEPT_JSON, authorization: `Bearer ${real}` });
  assert.equal(pub.status, 200, d(pub));
  assert.equal(pub.json.seen.authorization, null, 'the public upstream got no client Authorization (HTTP/2)');
  const mine = await alice.fetchApi('GET', '/api/profile', { headers: { authorization: `Bearer ${real}` } });
  assert.equal(mine.status, 200, d(mine));
  assert.notEqual(mine.json.seen.authorization, `Bearer ${real}`, 'the client token was replaced');
  assert.equal(mine.json.seen.claims.aud, 'https://profile.api.local', 'the profile upstream got a profile token');
});

test('row: cookie fields re-split so a naive MAC over their concatenation would still match are refused (CVE-2023-35941)', async () => {
  const [alice, valid] = await signedIn('resplit');
  const [kid, p64, mac] = valid.split('.');
  const std = (s) => Buffer.from(s, 'base64url').toString('base64'); // +/ and = padding
  const variants = {
    'kid|payload boundary moved right': [kid + p64.slice(0, 1), p64.slice(1), mac].join('.'),
    'kid|payload boundary moved left': [kid.slice(0, -1), kid.slice(-1) + p64, mac].join('.'),
    'payload|mac boundary moved right': [kid, p64 + mac.slice(0, 2), mac.slice(2)].join('.'),
    'payload|mac boundary moved left': [kid, p64.slice(0, -2), p64.slice(-2) + mac].join('.'),
    'fields concatenated': `${kid}${p64}${mac}`,
    'separator ,': [kid, p64, mac].join(','),
    'separator |': [kid, p64, mac].join('|'),
    'separator %2E': [kid, p64, mac].join('%2E'),
    'leading dot': `.${valid}`,
    'trailing dot': `${valid}.`,
    'doubled dot': [kid, p64, '', mac].join('.'),
    'standard base64 payload': [kid, std(p64), mac].join('.'),
    'standard base64 MAC': [kid, p64, std(mac)].join('.'),
    'padded MAC': `${valid}=`,
    'kid moved to the end': [p64, mac, kid].join('.'),
    'kid in upper case': [kid.toUpperCase() === kid ? kid.toLowerCase() : kid.toUpperCase(), p64, mac].join('.'),
    'payload and MAC swapped': [kid, mac, p64].join('.'),
  };
  const c0 = await apiCounts();
  for (const [name, v] of Object.entries(variants)) {
    if (v === valid) continue;
    const r = await ordersWith(v);
    assertJsonError(r, 401, 'unauthenticated', name);
    assertSessionCleared(r, name);
  }
  await assertUntouched(c0, 're-split cookies');
  const ok = await alice.fetchApi('GET', '/api/orders');
  assert.equal(ok.status, 200, `the real session is unharmed: ${d(ok)}`);
});

test('row: malformed, truncated, oversized, duplicated, differently-cased cookies, unknown key ids, and dead sessions with a valid MAC', async () => {
  // session.test.mjs tries 25 forged values over HTTP/1.1; these are the other shapes.
  const [alice, valid] = await signedIn('cookies-alice');
  const [, bobValue] = await signedIn('cookies-bob', 'bob');
  const c0 = await apiCounts();
  const h1 = {
    'two Cookie headers, both the session (HTTP/2 style, joined)': `${sessionHeader(valid)}; ${sessionHeader(valid)}`,
    'alice and bob': `${sessionHeader(valid)}; ${sessionHeader(bobValue)}`,
    'quoted and duplicated': `${SESSION_COOKIE}="${valid}"; ${sessionHeader(valid)}`,
    'truncated to the kid': sessionHeader(valid.split('.')[0]),
    'only dots': sessionHeader('..'),
    'empty name': `=${valid}`,
    'name with a trailing space and a dup': `${SESSION_COOKIE} =${bobValue}; ${sessionHeader(valid)}`,
    '8 KB of value': sessionHeader(`${valid}${'A'.repeat(8192)}`),
  };
  for (const [name, cookie] of Object.entries(h1)) {
    const r = await withCookie('GET', '/api/orders', cookie);
    assertJsonError(r, 401, 'unauthenticated', name);
  }
  // HTTP/2: two cookie header fields (Envoy joins them), a huge header, a NUL.
  const two = await h2('/api/orders', { ...ACCEPT_JSON, cookie: [sessionHeader(valid), sessionHeader(bobValue)] });
  assertJsonError(two, 401, 'unauthenticated', 'HTTP/2: two cookie fields with two sessions');
  const big = await h2('/api/orders', { ...ACCEPT_JSON, cookie: `${'x'.repeat(30_000)}=1; ${sessionHeader('k.a.b')}` }).catch((e) => ({ status: 0, err: e }));
  assert.ok(big.status === 0 || big.status === 401 || big.status === 431, `HTTP/2 30 KB cookie: ${big.status}`);
  const nul = await rawHttp1(`GET /api/orders HTTP/1.1\r\nHost: localhost:8443\r\nAccept: application/json\r\nCookie: ${SESSION_COOKIE}=${valid}\u0000x\r\nConnection: close\r\n\r\n`);
  assert.ok([0, 400, 401].includes(nul.status), `NUL in the cookie: ${nul.status}`);
  await assertUntouched(c0, 'malformed cookies');
  // A valid MAC for a session that no longer exists: ended by the operator API (not by logout,
  // which session.test.mjs covers), refused on every worker.
  const [, doomed] = await signedIn('cookies-doomed', 'bob');
  assert.equal((await ordersWith(doomed)).status, 200);
  const rv = await operatorRevoke('bob');
  assert.equal(rv.status, 200, `operator revoke: ${rv.status} ${rv.text}`);
  const c1 = await apiCounts();
  const seen = await onEveryWorker(() => ordersWith(doomed));
  for (const r of seen) {
    assertJsonError(r, 401, 'unauthenticated', 'revoked session, valid MAC');
    assertSessionCleared(r, 'revoked session');
  }
  await assertUntouched(c1, 'revoked sessions on every worker');
  const still = await alice.fetchApi('GET', '/api/orders');
  assert.equal(still.status, 200, `alice's session survived all of it: ${d(still)}`);
  // A differently-cased copy is another cookie: the real one decides, and the copy (bob's value)
  // is not forwarded either.
  const cased = await withCookie('GET', '/api/orders', `__HOST-bff-session=${bobValue}; ${sessionHeader(valid)}; theme=dark`);
  assert.equal(cased.status, 200, d(cased));
  assert.equal(cased.json.seen.claims.sub, 'alice');
  assert.ok(!/bff/i.test(String(cased.json.seen.cookie)), `no bffgate cookie upstream: ${cased.json.seen.cookie}`);
});

test('row: session fixation: a cookie issued or planted before login is dropped when login mints a new one', async () => {
  // login.test.mjs: relogin and a planted bob session. Here: a planted forged value, a planted
  // dead session, two planted values at once, and the old id dead on every worker.
  const variants = [];
  {
    const [, dead] = await signedIn('fix-dead', 'bob');
    const lo = await withCookie('POST', '/auth/logout', sessionHeader(dead), CSRF);
    assert.equal(lo.status, 200, d(lo));
    variants.push(['a logged-out session', dead]);
  }
  variants.push(['a forged value', `k1.${b64u(crypto.randomBytes(20))}.${b64u(crypto.randomBytes(32))}`]);
  const [, planted] = await signedIn('fix-planted', 'bob');
  variants.push(['a live session of another user', planted]);
  for (const [name, value] of variants) {
    const b = browser(`fix-${name}`);
    b.setCookie(SESSION_COOKIE, value);
    const r = await login(b, 'alice', 'alice');
    assert.equal(r.callback.status, 302, `${name}: ${d(r.callback)}`);
    assert.ok(setsSession(r.callback), `${name}: a new session cookie`);
    const fresh = b.sessionCookie;
    assert.notEqual(fresh, value, `${name}: a new session id`);
    const mine = await b.fetchApi('GET', '/api/orders');
    assert.equal(mine.json?.seen?.claims?.sub, 'alice', `${name}: the new session is alice's`);
    const c0 = await apiCounts();
    const old = await onEveryWorker(() => ordersWith(value));
    for (const o of old) assertJsonError(o, 401, 'unauthenticated', `${name}: the planted value after login`);
    await assertUntouched(c0, `${name}: the planted cookie reaches nothing`);
  }
  // Two planted session cookies at the callback: still a fresh session, both old ones dead.
  const b = browser('fix-two');
  const [, p1] = await signedIn('fix-two-1', 'bob');
  const start = await pendingLogin(b);
  const cb = await authorizeAtIdp(b, start.location, 'alice', 'alice');
  const res = await b.navigate(cb.href, { headers: { cookie: `${b.cookieHeader(APP)}; ${sessionHeader(p1)}; ${sessionHeader(planted)}` } });
  assert.equal(res.status, 302, d(res));
  assert.ok(setsSession(res), 'a fresh session although the callback carried two');
  // Neither planted id became alice's: the one already dropped is dead, the other is still bob's.
  const c0 = await apiCounts();
  assertJsonError(await ordersWith(planted), 401, 'unauthenticated', 'planted session');
  await assertUntouched(c0, 'planted sessions');
  const other = await ordersWith(p1);
  if (other.status === 200) assert.equal(other.json.seen.claims.sub, 'bob', 'the planted session never becomes alice\'s');
  const mine = await b.fetchApi('GET', '/api/orders', { headers: { cookie: sessionHeader(b.sessionCookie) } });
  assert.equal(mine.json?.seen?.claims?.sub, 'alice', 'alice has her own new session');
});

// =============================================================================================
// Login flow
// =============================================================================================

test('row: callback without state, with undecodable state, another browser\'s state, or replayed: rejected, no cookie (CVE-2023-27496)', async () => {
  // login.test.mjs: missing, garbage, other browser, replay. Here: more encodings of "no state",
  // flow cookies swapped between two logins, and replays on every worker.
  const b = browser('state');
  const l1 = await pendingLogin(b);
  const l2 = await pendingLogin(b);
  const long = 'A'.repeat(300);
  const grants0 = await codeGrants();
  const c0 = await apiCounts();
  const cases = [
    ['state empty', `code=c&state=`, b.cookieHeader(APP)],
    ['state twice (same value)', `code=c&state=${encodeURIComponent(l1.state)}&state=${encodeURIComponent(l1.state)}`, b.cookieHeader(APP)],
    ['state twice (two logins)', `code=c&state=${encodeURIComponent(l1.state)}&state=${encodeURIComponent(l2.state)}`, b.cookieHeader(APP)],
    ['state with NUL', `code=c&state=${encodeURIComponent(l1.state)}%00`, b.cookieHeader(APP)],
    ['state over 256 bytes', `code=c&state=${long}`, b.cookieHeader(APP)],
    ['state half-percent-encoded', `code=c&state=%E0%A4%A`, b.cookieHeader(APP)],
    ['state in upper case', `code=c&state=${encodeURIComponent(l1.state.toUpperCase())}`, b.cookieHeader(APP)],
    ['state of login 1, only login 2\'s flow cookie', `code=c&state=${encodeURIComponent(l1.state)}`, `${l2.flowName}=${l2.flowValue}`],
    ['flow cookie values swapped', `code=c&state=${encodeURIComponent(l1.state)}`, `${l1.flowName}=${l2.flowValue}; ${l2.flowName}=${l1.flowValue}`],
    ['flow cookie name in lower case', `code=c&state=${encodeURIComponent(l1.state)}`, `${l1.flowName.toLowerCase()}=${l1.flowValue}`],
    ['no cookies at all', `code=c&state=${encodeURIComponent(l1.state)}`, undefined],
    ['state in a fragment-looking parameter', `code=c&%23state=${encodeURIComponent(l1.state)}`, b.cookieHeader(APP)],
  ];
  for (const [name, q, cookie] of cases) {
    const r = await withCookie('GET', `/auth/callback?${q}`, cookie, { accept: 'text/html', 'sec-fetch-mode': 'navigate' });
    assertJsonError(r, 400, 'login_failed', name);
    assertNoSessionSet(r, name);
  }
  const post = await withCookie('POST', `/auth/callback?code=c&state=${encodeURIComponent(l1.state)}`, b.cookieHeader(APP));
  assertJsonError(post, 405, 'invalid_request', 'POST /auth/callback');
  assert.equal(await codeGrants(), grants0, 'no code was exchanged for any of them');
  // Login 1 is spent by the swapped-cookie attempt (a state is taken once); login 2 still works.
  const cb = await authorizeAtIdp(b, l2.location, 'alice', 'alice');
  const ok = await deliverCallback(b, cb);
  assert.equal(ok.status, 302, `login 2 completes: ${d(ok)}`);
  assert.ok(setsSession(ok));
  // Replays of the successful callback, on fresh connections to every worker, with the flow
  // cookie put back: all refused, no second exchange.
  const g1 = await codeGrants();
  const replays = await onEveryWorker(() => withCookie('GET', `${cb.pathname}${cb.search}`, `${l2.flowName}=${l2.flowValue}`, { accept: 'text/html' }));
  for (const r of replays) {
    assertJsonError(r, 400, 'login_failed', 'replayed callback');
    assertNoSessionSet(r, 'replayed callback');
  }
  assert.equal(await codeGrants(), g1, 'no replay reached the token endpoint');
  await assertUntouched(c0, 'callbacks');
});

// --- a scripted identity provider on 127.0.0.1:9000 --------------------------------------------

let fake; // { server, mode, requests }

function idpKeys() {
  return JSON.parse(fs.readFileSync(path.join(ROOT, '.run/idp-keys.json'), 'utf8')).keys;
}

/** An ID token signed with the real provider's RS256 key (so the filter's JWKS check passes). */
function signIdToken(claims) {
  const jwk = idpKeys().find((k) => k.kty === 'RSA');
  const key = crypto.createPrivateKey({ key: jwk, format: 'jwk' });
  const input = `${b64u(JSON.stringify({ alg: 'RS256', typ: 'JWT', kid: jwk.kid }))}.${b64u(JSON.stringify(claims))}`;
  const t = `${input}.${crypto.sign('sha256', Buffer.from(input), key).toString('base64url')}`;
  extraSecrets.set(t, 'id token (scripted provider)');
  return t;
}

function publicJwks() {
  const keys = idpKeys().map(({ d: _d, p: _p, q: _q, dp: _dp, dq: _dq, qi: _qi, ...pub }) => pub);
  return JSON.stringify({ keys });
}

async function startFakeIdp() {
  await stack.stopIdp();
  fake = { mode: () => ({ status: 500, body: '' }), requests: [] };
  fake.server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', async () => {
      fake.requests.push({ method: req.method, url: req.url });
      if (req.url.startsWith('/jwks')) {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(publicJwks());
        return;
      }
      const a = await fake.mode(req);
      if (a.reset) { req.socket.destroy(); return; }
      if (a.hang) return; // never answers (the filter's timeout decides)
      if (a.delayMs) await sleep(a.delayMs);
      res.writeHead(a.status, { 'content-type': a.type || 'application/json' });
      if (a.partial) { res.write(a.body.slice(0, 10)); setTimeout(() => req.socket.destroy(), 50); return; }
      res.end(a.body);
    });
  });
  await new Promise((resolve, reject) => { fake.server.once('error', reject); fake.server.listen(9000, '127.0.0.1', resolve); });
}

async function stopFakeIdp() {
  if (!fake) return;
  fake.server.closeAllConnections?.();
  await new Promise((r) => fake.server.close(r));
  fake = undefined;
  await stack.startIdp();
}

test('row: error= from the provider; token endpoint 4xx, 5xx, timeout, reset, non-JSON, 200 without access_token, missing or string expires_in', async () => {
  // lifecycle.test.mjs injects 500, garbage, slow, reset, invalid_grant at the real provider.
  // Here a scripted provider answers the code exchange with everything else.
  const [keeper] = await signedIn('faults-keeper');
  assert.equal((await keeper.fetchApi('GET', '/api/orders')).status, 200);
  await startFakeIdp();
  try {
    const now = () => Math.floor(Date.now() / 1000);
    const idClaims = (nonce, extra = {}) => ({
      iss: 'http://localhost:9000', aud: 'bffgate', sub: 'mallory', nonce, iat: now(), exp: now() + 300, ...extra,
    });
    const tok = (o) => JSON.stringify({ token_type: 'Bearer', ...o });
    const scenarios = [
      // [name, answer(nonce), expected status, expected code, session expected]
      ['400 invalid_grant', () => ({ status: 400, body: '{"error":"invalid_grant"}' }), 400, 'login_failed'],
      ['401 invalid_client', () => ({ status: 401, body: '{"error":"invalid_client"}' }), 400, 'login_failed'],
      ['403 with an HTML page', () => ({ status: 403, type: 'text/html', body: '<h1>no</h1>' }), 503, 'idp_unavailable'],
      ['404', () => ({ status: 404, body: '' }), 503, 'idp_unavailable'],
      ['429 slow_down', () => ({ status: 429, body: '{"error":"slow_down"}' }), 503, 'idp_unavailable'],
      ['500', () => ({ status: 500, body: '{"error":"server_error"}' }), 503, 'idp_unavailable'],
      ['502 HTML', () => ({ status: 502, type: 'text/html', body: '<html>bad gateway</html>' }), 503, 'idp_unavailable'],
      ['timeout (no answer)', () => ({ hang: true }), 503, 'idp_unavailable'],
      ['connection reset', () => ({ reset: true }), 503, 'idp_unavailable'],
      ['body cut off mid-way', () => ({ status: 200, partial: true, body: tok({ access_token: 'x'.repeat(200) }) }), [400, 503], undefined],
      ['200 not JSON', () => ({ status: 200, type: 'text/plain', body: 'access_token=abc&token_type=bearer' }), 400, 'login_failed'],
      ['200 JSON array', () => ({ status: 200, body: '[]' }), 400, 'login_failed'],
      ['200 without access_token', (n) => ({ status: 200, body: tok({ expires_in: 300, id_token: signIdToken(idClaims(n)) }) }), 400, 'login_failed'],
      ['200 access_token is a number', (n) => ({ status: 200, body: tok({ access_token: 5, id_token: signIdToken(idClaims(n)) }) }), 400, 'login_failed'],
      ['200 token_type mac', (n) => ({ status: 200, body: JSON.stringify({ access_token: 'x', token_type: 'mac', id_token: signIdToken(idClaims(n)) }) }), 400, 'login_failed'],
      ['200 over 64 KB', (n) => ({ status: 200, body: tok({ access_token: 'x', pad: 'p'.repeat(70_000), id_token: signIdToken(idClaims(n)) }) }), [400, 503], undefined],
      ['200 without id_token', () => ({ status: 200, body: tok({ access_token: 'opaque-at', expires_in: 300 }) }), 400, 'login_failed'],
      ['200 id_token of another login (nonce)', () => ({ status: 200, body: tok({ access_token: 'opaque-at', id_token: signIdToken(idClaims('other-nonce')) }) }), 400, 'login_failed'],
      ['200 id_token unsigned', (n) => ({ status: 200, body: tok({ access_token: 'opaque-at', id_token: `${b64u('{"alg":"none"}')}.${b64u(JSON.stringify(idClaims(n)))}.` }) }), 400, 'login_failed'],
      ['200 id_token expired', (n) => ({ status: 200, body: tok({ access_token: 'opaque-at', id_token: signIdToken(idClaims(n, { exp: now() - 3600 })) }) }), 400, 'login_failed'],
      ['200 id_token for another client', (n) => ({ status: 200, body: tok({ access_token: 'opaque-at', id_token: signIdToken(idClaims(n, { aud: 'evil' })) }) }), 400, 'login_failed'],
      // Odd but well-formed answers: a session, with a sane lifetime.
      ['200 with expires_in as a string', (n) => ({ status: 200, body: tok({ access_token: 'opaque-at-1', expires_in: '300', id_token: signIdToken(idClaims(n)) }) }), 302, null, true],
      ['200 without expires_in', (n) => ({ status: 200, body: tok({ access_token: 'opaque-at-2', id_token: signIdToken(idClaims(n)) }) }), 302, null, true],
      ['200 with expires_in "soon"', (n) => ({ status: 200, body: tok({ access_token: 'opaque-at-3', expires_in: 'soon', id_token: signIdToken(idClaims(n)) }) }), 302, null, true],
    ];
    const c0 = await apiCounts();
    for (const [name, answer, status, code, session] of scenarios) {
      const b = browser(`fault-${name}`);
      const l = await pendingLogin(b);
      fake.mode = () => answer(l.nonce);
      const t0 = Date.now();
      const r = await withCookie('GET', `/auth/callback?code=fake-code&state=${encodeURIComponent(l.state)}`, b.cookieHeader(APP), { accept: 'text/html' }, { timeoutMs: 15_000 });
      const ms = Date.now() - t0;
      assert.ok(ms < CALLOUT_TIMEOUT_MS + 1500, `${name}: answered within the callout timeout (${ms} ms)`);
      if (session) {
        assert.equal(r.status, 302, `${name}: ${d(r)}`);
        assert.ok(setsSession(r), `${name}: a session`);
        const v = setCookiesNamed(r, SESSION_COOKIE)[0].value;
        const u = await withCookie('GET', '/auth/user', sessionHeader(v));
        assert.equal(u.status, 200, `${name}: /auth/user ${d(u)}`);
        assert.equal(u.json.sub, 'mallory');
        assert.ok(u.json.expires_at > now(), `${name}: expires_at in the future`);
        const lo = await withCookie('POST', '/auth/logout', sessionHeader(v), CSRF);
        assert.equal(lo.status, 200, `${name}: logout ${d(lo)}`);
      } else {
        if (Array.isArray(status)) assert.ok(status.includes(r.status), `${name}: ${d(r)}`);
        else assertJsonError(r, status, code, name);
        assert.ok(r.json && typeof r.json.error === 'string', `${name}: a JSON error: ${d(r)}`);
        assertNoSessionSet(r, name);
        const flow = setCookiesNamed(r, l.flowName);
        assert.ok(flow.length === 1 && isDeletion(flow[0]), `${name}: the flow cookie is cleared`);
      }
    }
    // error= from the provider (no exchange at all).
    for (const q of ['error=access_denied', 'error=server_error&error_description=%3Cscript%3Ealert(1)%3C%2Fscript%3E',
      'error=invalid_request&code=c', 'error=temporarily_unavailable&error=access_denied', 'error=']) {
      const b = browser('idp-error');
      const l = await pendingLogin(b);
      const before0 = fake.requests.length;
      const r = await withCookie('GET', `/auth/callback?${q}&state=${encodeURIComponent(l.state)}`, b.cookieHeader(APP), { accept: 'text/html' });
      assertJsonError(r, 400, 'login_failed', q);
      assertNoSessionSet(r, q);
      assert.ok(!/<script>/i.test(r.text), `${q}: provider text is not echoed raw`);
      assert.equal(fake.requests.length, before0, `${q}: no code exchange`);
    }
    await assertUntouched(c0, 'login faults');
    // The session that existed before all this still works (its token is cached).
    const k = await keeper.fetchApi('GET', '/api/orders');
    assert.equal(k.status, 200, `a valid session survived the provider's nonsense: ${d(k)}`);
  } finally {
    await stopFakeIdp();
  }
  // The real provider is back: a login works again.
  const [again] = await signedIn('faults-after');
  assert.equal((await again.fetchApi('GET', '/api/orders')).status, 200);
});

test('row: several logins started in parallel tabs each finish (Envoy #41902)', async () => {
  // login.test.mjs finishes two tabs in reverse order; here five, completed concurrently on
  // fresh connections (both workers), in shuffled order.
  const b = browser('tabs');
  const tabs = [];
  for (let i = 0; i < 5; i += 1) tabs.push(await pendingLogin(b, { returnTo: `/tab/${i}` }));
  const urls = [];
  for (const t of tabs) urls.push(await authorizeAtIdp(b, t.location, 'alice', 'alice'));
  const c0 = await apiCounts();
  const g0 = await codeGrants();
  const cookie = b.cookieHeader(APP);
  const order = [3, 0, 4, 1, 2];
  const results = await Promise.all(order.map((i) => withCookie('GET', `${urls[i].pathname}${urls[i].search}`, cookie, { accept: 'text/html' })));
  results.forEach((r, j) => {
    const i = order[j];
    assert.equal(r.status, 302, `tab ${i}: ${d(r)}`);
    assert.equal(r.location, `/tab/${i}`, `tab ${i} returns to its own page`);
    assert.ok(setsSession(r), `tab ${i}: a session`);
    const flow = setCookiesNamed(r, tabs[i].flowName);
    assert.ok(flow.length === 1 && isDeletion(flow[0]), `tab ${i}: its flow cookie is cleared`);
  });
  assert.equal(await codeGrants(), g0 + 5, 'five code exchanges');
  await assertUntouched(c0, 'callbacks are answered by bffgate');
  for (const [j, r] of results.entries()) {
    const v = setCookiesNamed(r, SESSION_COOKIE)[0].value;
    const o = await ordersWith(v);
    assert.equal(o.status, 200, `session of tab ${order[j]} works: ${d(o)}`);
  }
});

test('row: return_to targets that leave the site (scheme-relative, backslash, encoded, whitespace, other schemes) become /', async () => {
  // login.test.mjs sends 10 through the whole flow; here 16 more, through the whole flow too,
  // and the same values as the path of an unauthenticated navigation.
  const bad = [
    '//evil.example', '///evil.example', '/\\evil.example', '\\/evil.example', '/%2F%2Fevil.example', '/%2f/evil.example',
    '/%5Cevil.example', '/%5C%5Cevil.example', ' //evil.example', '\t//evil.example', '/%09/evil.example', '/%0A/evil.example',
    'https:evil.example', 'javascript:alert(document.domain)', 'data:text/html,<script>x</script>', '/\u3000/evil.example',
  ];
  const c0 = await apiCount('public');
  for (const rt of bad) {
    const b = browser('rt');
    const r = await login(b, 'alice', 'alice', { returnTo: rt });
    assert.equal(r.callback.status, 302, `${JSON.stringify(rt)}: ${d(r.callback)}`);
    assert.equal(r.callback.location, '/', `${JSON.stringify(rt)} -> ${r.callback.location}`);
  }
  const good = ['/orders?id=5&q=%2F%2F', '/a/b/c', '/~alice/'];
  for (const rt of good) {
    const r = await login(browser('rt-good'), 'alice', 'alice', { returnTo: rt });
    assert.equal(r.callback.location, rt, `a local path is kept: ${rt}`);
  }
  assert.equal(await apiCount('public'), c0, 'no callback reached the page server');
  // The 302 to login of an unauthenticated navigation carries only a local return_to.
  const c1 = await apiCounts();
  for (const p of ['//evil.example/api/orders', '/api/orders/..//evil.example', '/api/orders?x=//evil.example', '/api/orders#//evil']) {
    let r;
    try {
      r = await rawRequest('GET', APP, { rawPath: p, headers: { accept: 'text/html', 'sec-fetch-mode': 'navigate' } });
    } catch {
      continue;
    }
    if (r.status !== 302) continue;
    const loc = new URL(r.location, APP);
    assert.equal(loc.origin, APP, `${p}: redirect stays on the site`);
    const rt = loc.searchParams.get('return_to');
    if (rt !== null) assert.ok(rt.startsWith('/') && !rt.startsWith('//') && !rt.startsWith('/\\'), `${p}: return_to ${rt}`);
  }
  await assertUntouched(c1, 'unauthenticated navigations', PROTECTED);
});

// =============================================================================================
// Routing and headers
// =============================================================================================

test('row: path tricks never reach a protected upstream without that route\'s checks (GHSA-7rh7-c77v-6434, GHSA-pxq7-h93f-9jrg)', async () => {
  // session.test.mjs (19 paths) and routing.test.mjs (with sessions); these are other spellings,
  // over HTTP/1.1 and HTTP/2, and with bob's session on a route he lacks the scope for.
  const paths = [
    '/api/orders/..;/x', '/api/public/..%2f..%2fapi/orders', '/%2Fapi%2Forders', '/api%2Forders', '/api/orders%2F',
    '/api/%6Frders', '/api/%6frders', '/api/orders/%2e', '/api/orders/.', '/./api/orders', '/api/ORDERS', '/Api/orders',
    '/api/public%23/../orders', '/api/public/hello?x=/../../api/orders', '/api/public/./../orders', '/api/public/%2e%2e%2forders',
    '/api/orders%09', '/api/orders%0d%0a', '/api/orders\\', '/api/public/..\\orders', '/api///orders', '/api/orders/..%00/',
    '/api/profile;jsessionid=1', '/api/pro%66ile', '/API/PROFILE',
  ];
  const [, bob] = await signedIn('paths-bob', 'bob');
  const c0 = await apiCounts();
  const bad = [];
  for (const p of paths) {
    for (const [proto, send] of [
      ['h1', () => rawRequest('GET', APP, { rawPath: p, headers: ACCEPT_JSON })],
      ['h2', () => h2(p, ACCEPT_JSON)],
      ['h1 bob POST', () => rawRequest('POST', APP, { rawPath: p, headers: { ...ACCEPT_JSON, ...CSRF, cookie: sessionHeader(bob), 'content-type': 'application/json' }, body: '{"item":"x"}' })],
    ]) {
      let r;
      try {
        r = await send();
      } catch {
        continue; // a reset stream is a refusal too
      }
      // Whatever answered, it was not a protected API (no session; bob lacks orders:write).
      if (r.json?.api === 'orders' || r.json?.api === 'profile') bad.push(`${proto} ${p} -> ${r.status} ${r.json.api}`);
      if (r.status === 201) bad.push(`${proto} ${p} created something`);
    }
  }
  assert.deepEqual(bad, [], bad.join('\n'));
  const now = await apiCounts();
  assert.equal(now.profile, c0.profile, 'the profile API saw none of them');
  // bob's session may reach orders through orders-read (GET) only; no POST got through.
  assert.equal(now.orders - c0.orders, 0, 'the orders API saw none of them (GETs had no session, POSTs lacked the scope)');
});

test('row: client-sent identity or forwarding headers (X-Forwarded-*, underscore and case variants) never steer a decision (CVE-2026-40575, CVE-2025-64484)', async () => {
  const [bobB, bob] = await signedIn('hdr-bob', 'bob');
  const steer = {
    'x-forwarded-user': 'alice', 'x-forwarded-email': 'alice@example.test', 'x-forwarded-groups': 'admins',
    'x-forwarded-preferred-username': 'alice', 'x-auth-request-user': 'alice', 'x-auth-request-groups': 'admins',
    'x-bffgate-sub': 'alice', 'x-bffgate-scope': 'orders:write', 'x-scope': 'orders:write', 'x-original-method': 'GET',
    'x-http-method-override': 'GET', 'x-envoy-original-path': '/api/orders', 'x-original-uri': '/api/public/hello',
    'x-forwarded-prefix': '/api/public', 'x-forwarded-proto': 'http', 'x-forwarded-host': 'evil.example',
    forwarded: 'for=127.0.0.1;host=evil.example;proto=http', 'x-real-ip': '127.0.0.1', 'x-envoy-internal': 'true',
  };
  const c0 = await apiCounts();
  // bob (orders:read) cannot write orders, whatever he claims in headers, over HTTP/1.1 and /2.
  for (const [k, v] of Object.entries(steer)) {
    const r = await withCookie('POST', '/api/orders', sessionHeader(bob), { ...CSRF, origin: APP, [k]: v, 'content-type': 'application/json' }, { body: '{"item":"x"}' });
    assertJsonError(r, 403, 'insufficient_scope', `POST as bob with ${k}`);
  }
  const r2 = await h2('/api/orders', { ...ACCEPT_JSON, ...CSRF, ...steer, cookie: sessionHeader(bob), 'content-type': 'application/json' }, { method: 'POST', body: '{"item":"x"}' });
  assertJsonError(r2, 403, 'insufficient_scope', 'HTTP/2 POST as bob with every steering header at once');
  // Without a session, the headers do not authenticate.
  const anon = await withCookie('GET', '/api/orders', undefined, steer);
  assertJsonError(anon, 401, 'unauthenticated', 'identity headers without a session');
  // A cross-site POST does not become same-site with forwarding headers matching the evil origin.
  const xs = await withCookie('POST', '/api/orders', sessionHeader(bob), {
    ...CSRF, origin: 'https://evil.example', 'x-forwarded-host': 'evil.example', 'x-forwarded-proto': 'https', 'content-type': 'application/json',
  }, { body: '{}' });
  assertJsonError(xs, 403, 'csrf', 'forwarding headers matching a cross-site Origin');
  // Underscore variants of headers the filter reads (Envoy refuses them, or they are ignored).
  for (const [k, v] of [['x_csrf', '1'], ['X_CSRF', '1'], ['x-csrf_', '1']]) {
    const raw = `POST /api/orders HTTP/1.1\r\nHost: localhost:8443\r\nAccept: application/json\r\nCookie: ${sessionHeader(bob)}\r\n${k}: ${v}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}`;
    const r = await rawHttp1(raw);
    assert.ok([0, 400, 403].includes(r.status), `${k}: ${r.status} ${r.body.slice(0, 200)}`);
  }
  // Redirects to login ignore Host and X-Forwarded-Host: relative, on this site.
  for (const h of [{ 'x-forwarded-host': 'evil.example' }, { 'x-forwarded-proto': 'http' }, { host: 'evil.example' }]) {
    const r = await withCookie('GET', '/api/orders', undefined, { accept: 'text/html', 'sec-fetch-mode': 'navigate', ...h });
    if (r.status === 302) {
      assert.ok(r.location.startsWith('/auth/login?'), `${JSON.stringify(h)}: ${r.location}`);
      const authz = await withCookie('GET', r.location, undefined, { ...h, 'sec-fetch-mode': 'navigate' });
      assert.ok(authz.location.startsWith('http://localhost:9000/auth?'), `${JSON.stringify(h)}: to the configured provider, ${authz.location}`);
      assert.ok(authz.location.includes('redirect_uri=https%3A%2F%2Flocalhost%3A8443%2Fauth%2Fcallback'), 'configured redirect_uri');
    } else {
      assert.ok(r.status === 400 || r.status === 404, `${JSON.stringify(h)}: ${d(r)}`);
    }
  }
  await assertUntouched(c0, 'steering headers', PROTECTED);
  // The upstream sees bob as bob, whatever he sends.
  const g = await bobB.fetchApi('GET', '/api/orders', { headers: steer });
  assert.equal(g.status, 200, d(g));
  assert.equal(g.json.seen.claims.sub, 'bob');
  assert.ok(!/orders:write/.test(g.json.seen.claims.scope), 'no scope gained from headers');
});

test('row: a local reply from the filter stops the request: nothing reaches the upstream after it (CVE-2022-29228)', async () => {
  const [, bob] = await signedIn('stop-bob', 'bob');
  const c0 = await apiCounts();
  const head = (cookie, extra = '') => `POST /api/orders HTTP/1.1\r\nHost: localhost:8443\r\nAccept: application/json\r\nContent-Type: application/octet-stream\r\nContent-Length: ${64 * 16 * 1024}\r\n${cookie ? `Cookie: ${cookie}\r\n` : ''}${extra}\r\n`;
  const cases = [
    ['no session, 1 MiB body streaming', head(undefined, 'X-CSRF: 1\r\n'), [401]],
    ['no session, no CSRF header, body streaming', head(undefined), [403]],
    ['no CSRF header, body streaming', head(sessionHeader(bob)), [403]],
    ['insufficient scope, body streaming', head(sessionHeader(bob), 'X-CSRF: 1\r\n'), [403]],
    ['Expect: 100-continue without a session', head(undefined, 'X-CSRF: 1\r\nExpect: 100-continue\r\n'), [401, 417]],
    ['forged cookie, body streaming', head(sessionHeader('k1.AAAA.BBBB'), 'X-CSRF: 1\r\n'), [401]],
  ];
  for (const [name, h, statuses] of cases) {
    const r = await streamingBody(h);
    assert.ok(statuses.includes(r.status), `${name}: status ${r.status}`);
  }
  // Chunked bodies, HTTP/2 DATA frames and trailers after the local reply.
  const chunked = await streamingBody(`POST /api/orders HTTP/1.1\r\nHost: localhost:8443\r\nTransfer-Encoding: chunked\r\nAccept: application/json\r\n\r\n`, { chunks: 0 });
  assert.ok([401, 403, 0].includes(chunked.status), `chunked without a session: ${chunked.status}`);
  const t = await h2('/api/orders', { ...ACCEPT_JSON, ...CSRF, cookie: sessionHeader(bob), 'content-type': 'application/json' }, {
    method: 'POST', body: Buffer.alloc(256 * 1024, 0x7b), trailers: { 'x-trailer': '1' },
  }).catch((e) => ({ status: 0, err: e }));
  assert.ok([403, 0].includes(t.status), `HTTP/2 body + trailers, bob: ${t.status}`);
  const p = await h2('/api/profile', { ...ACCEPT_JSON, cookie: sessionHeader('k1.AAAA.BBBB') }, { method: 'GET' });
  assertJsonError(p, 401, 'unauthenticated', 'HTTP/2 GET, forged cookie');
  // Pipelined: the second request after a local reply is a request of its own (a public one).
  const pipe = await rawHttp1('GET /api/orders HTTP/1.1\r\nHost: localhost:8443\r\nAccept: application/json\r\n\r\n'
    + 'GET /api/public/hello HTTP/1.1\r\nHost: localhost:8443\r\nAccept: application/json\r\nConnection: close\r\n\r\n');
  assert.equal(pipe.status, 401, 'first pipelined answer: 401');
  await sleep(500);
  const now = await apiCounts();
  assert.equal(now.orders, c0.orders, 'the orders API saw none of the refused requests');
  assert.equal(now.profile, c0.profile, 'the profile API saw none');
  assert.ok(now.public - c0.public <= 1, 'only the pipelined public request reached the public API');
});

// =============================================================================================
// Faults (stack A)
// =============================================================================================

test('row: identity provider down, slow or flapping; Envoy restarted: answers within the timeouts, nothing opens (faults)', async () => {
  const [alice, aliceV] = await signedIn('faults-alice');
  assert.equal((await alice.fetchApi('GET', '/api/orders')).status, 200, 'orders token cached');
  const c0 = await apiCounts();
  // Down: nothing listens on :9000.
  await stack.stopIdp();
  try {
    const b = browser('down');
    const l = await pendingLogin(b);
    const t0 = Date.now();
    const cb = await withCookie('GET', `/auth/callback?code=c&state=${encodeURIComponent(l.state)}`, b.cookieHeader(APP), { accept: 'text/html' });
    assertJsonError(cb, 503, 'idp_unavailable', 'callback, provider down');
    assert.ok(Date.now() - t0 < CALLOUT_TIMEOUT_MS + 1000, 'answered quickly');
    const t1 = Date.now();
    const pr = await alice.fetchApi('GET', '/api/profile');
    assertJsonError(pr, 503, 'idp_unavailable', 'profile needs a token, provider down');
    assert.ok(Date.now() - t1 < CALLOUT_TIMEOUT_MS + 1500, `profile answered within the timeout (${Date.now() - t1} ms)`);
    const o = await alice.fetchApi('GET', '/api/orders');
    assert.equal(o.status, 200, `a cached token still works: ${d(o)}`);
    c0.orders += 1; // that one was meant to reach the orders API
    const login0 = await startLogin(browser('down-login'));
    assert.equal(login0.status, 302, '/auth/login needs no provider');
  } finally {
    await stack.startIdp();
  }
  // Slow: the provider takes longer than the callout timeout.
  await setFault({ endpoint: 'token', mode: 'slow', delay_ms: CALLOUT_TIMEOUT_MS + 1500 });
  try {
    const b = browser('slow');
    const t0 = Date.now();
    const r = await login(b, 'bob', 'bob');
    const ms = Date.now() - t0;
    assertJsonError(r.callback, 503, 'idp_unavailable', 'slow provider at the callback');
    assertNoSessionSet(r.callback, 'slow');
    assert.ok(ms < CALLOUT_TIMEOUT_MS + 4000, `the whole login attempt took ${ms} ms`);
  } finally {
    await setFault({ endpoint: 'all', mode: 'none' });
  }
  // Flapping: reset, 500, garbage, then fine.
  await setFault({ endpoint: 'token', mode: 'reset', count: 1 });
  const f1 = await login(browser('flap-1'), 'bob', 'bob');
  assertJsonError(f1.callback, 503, 'idp_unavailable', 'flap: reset');
  await setFault({ endpoint: 'token', mode: 'error500', count: 1 });
  const f2 = await login(browser('flap-2'), 'bob', 'bob');
  assertJsonError(f2.callback, 503, 'idp_unavailable', 'flap: 500');
  await setFault({ endpoint: 'token', mode: 'garbage', count: 1 });
  const f3 = await login(browser('flap-3'), 'bob', 'bob');
  assert.ok([400, 503].includes(f3.callback.status), `flap: garbage ${d(f3.callback)}`);
  const f4 = await login(browser('flap-4'), 'bob', 'bob');
  assert.equal(f4.callback.status, 302, `flap over: ${d(f4.callback)}`);
  await assertUntouched(c0, 'provider faults', PROTECTED);
  // Envoy restarted: sessions (shared data) are gone; old cookies open nothing.
  await stack.stopEnvoy();
  await stack.startEnvoy();
  const c1 = await apiCounts();
  const after0 = await onEveryWorker(() => ordersWith(aliceV));
  for (const r of after0) {
    assertJsonError(r, 401, 'unauthenticated', 'a session cookie from before the restart');
    assertSessionCleared(r, 'after restart');
  }
  await assertUntouched(c1, 'old cookies after a restart');
  // A VM crash would be reloaded (FAIL_RELOAD), never failed open: the shipped config says so.
  const cfg = fs.readFileSync(path.join(ROOT, 'envoy/envoy.yaml'), 'utf8');
  const policies = [...cfg.matchAll(/^\s*failure_policy:\s*(\S+)/gm)].map((m) => m[1]);
  assert.ok(policies.length >= 1 && policies.every((p) => p === 'FAIL_RELOAD'), `every wasm failure_policy is FAIL_RELOAD: ${policies}`);
  const [again] = await signedIn('after-restart');
  assert.equal((await again.fetchApi('GET', '/api/orders')).status, 200, 'logins work after the restart');
});

// =============================================================================================
// Stack B: short lifetimes
// =============================================================================================

const IDLE = 5;
const ABSOLUTE = 12;

test('row: idle and absolute expiry, logout and revocation hold on every Envoy worker', { timeout: 120_000 }, async () => {
  await stack.stop();
  stack = undefined;
  const cfg = renderVariant('attacks-short', {
    session: { idle_timeout_s: IDLE, absolute_timeout_s: ABSOLUTE, touch_interval_s: 1, refresh_skew_s: 30 },
  });
  await boot('b', { envoyConfig: cfg, env: { BFFGATE_ACCESS_TOKEN_TTL: '31' } });
  // Three sessions at once: one left idle, one kept busy past the absolute lifetime, one for
  // logout and one for revocation.
  const [, idle] = await signedIn('exp-idle', 'bob');
  const t0 = Date.now();
  const [busyB, busy] = await signedIn('exp-busy');
  const [, lo] = await signedIn('exp-logout', 'bob');
  assert.equal((await ordersWith(idle)).status, 200);
  // Every worker serves the session first (so each holds a copy of its record, see
  // store::RecordCache: the first request on each worker reads the record, a miss), then a
  // logout on one connection: refused on every worker, at once.
  const MISSES = 'bffgate_store_record_cache_misses';
  const misses = async () => (await envoyStats(MISSES)).get(`wasmcustom.${MISSES}`) ?? 0;
  const m0 = await misses();
  for (const r of await onEveryWorker(() => ordersWith(lo))) assert.equal(r.status, 200, d(r));
  assert.ok(await misses() >= m0 + 2, `${MISSES}: each worker read the record once (${m0} -> ${await misses()})`);
  const c0 = await apiCounts();
  const out = await withCookie('POST', '/auth/logout', sessionHeader(lo), CSRF);
  assert.equal(out.status, 200, d(out));
  for (const r of await onEveryWorker(() => ordersWith(lo))) assertJsonError(r, 401, 'unauthenticated', 'after logout');
  await assertUntouched(c0, 'logged-out session');
  // Keep `busy` in use every second; let `idle` sit.
  const useUntil = async (ms) => {
    while (Date.now() < ms) {
      const r = await busyB.fetchApi('GET', '/auth/user');
      assert.equal(r.status, 200, `the busy session is alive at +${Date.now() - t0} ms: ${d(r)}`);
      await sleep(900);
    }
  };
  await useUntil(t0 + (IDLE + 2.5) * 1000);
  const c1 = await apiCounts();
  for (const r of await onEveryWorker(() => ordersWith(idle))) {
    assertJsonError(r, 401, 'unauthenticated', 'idle past idle_timeout_s');
    assertSessionCleared(r, 'idle');
  }
  await assertUntouched(c1, 'idle session');
  await useUntil(t0 + (ABSOLUTE - 1.5) * 1000);
  await sleep(Math.max(0, t0 + (ABSOLUTE + 1.5) * 1000 - Date.now()));
  const c2 = await apiCounts();
  for (const r of await onEveryWorker(() => ordersWith(busy))) {
    assertJsonError(r, 401, 'unauthenticated', 'past absolute_timeout_s although in use');
    assertSessionCleared(r, 'absolute');
  }
  await assertUntouched(c2, 'expired session');
  // Revocation by the operator: every worker, at once.
  const [, rv] = await signedIn('exp-revoke', 'bob');
  for (const r of await onEveryWorker(() => ordersWith(rv))) assert.equal(r.status, 200, d(r));
  assert.equal((await operatorRevoke('bob')).status, 200);
  const c3 = await apiCounts();
  for (const r of await onEveryWorker(() => ordersWith(rv))) assertJsonError(r, 401, 'unauthenticated', 'revoked');
  await assertUntouched(c3, 'revoked session');
  // An operator resets Envoy's counters: the session write counts the workers' record caches
  // rely on start again from 0, so every worker empties its cache (a count could otherwise come
  // back to one a copy was read under); then a logout is still refused on every worker.
  const [, rc] = await signedIn('exp-reset', 'bob');
  for (const r of await onEveryWorker(() => ordersWith(rc))) assert.equal(r.status, 200, d(r));
  const at = logSize(stack.logs.envoy);
  const reset = await rawRequest('POST', `${ADMIN}/reset_counters`);
  assert.equal(reset.status, 200, d(reset));
  // Envoy's log lines carry the thread: one line from each of the two workers. The main
  // thread's VM (it validates configurations and sweeps; a sweep's write defines its counts)
  // may empty its own, empty, cache too: it is not a worker and not counted.
  const thread = (l) => /^\[[^\]]*\]\[(\d+)\]/.exec(l)?.[1];
  // (The running Envoy's: the last start in the log, which a restarted Envoy appends to.)
  const mainThread = thread(fs.readFileSync(stack.logs.envoy, 'utf8').split('\n')
    .filter((l) => l.includes('starting main dispatch loop')).pop() ?? '');
  assert.ok(mainThread, "Envoy's log names its main thread");
  const emptied = () => new Set(logSince(stack.logs.envoy, at).split('\n')
    .filter((l) => l.includes('session record cache emptied on this worker: the counters were reset'))
    .map(thread).filter((t) => t !== mainThread)).size;
  for (let i = 0; i < 50 && emptied() < 2; i += 1) await sleep(100);
  assert.equal(emptied(), 2, 'both workers emptied their record cache within 5 s of the reset');
  for (const r of await onEveryWorker(() => ordersWith(rc))) assert.equal(r.status, 200, `served again after the reset: ${d(r)}`);
  const out2 = await withCookie('POST', '/auth/logout', sessionHeader(rc), CSRF);
  assert.equal(out2.status, 200, d(out2));
  for (const r of await onEveryWorker(() => ordersWith(rc))) assertJsonError(r, 401, 'unauthenticated', 'logout after a counter reset');
});

test('row: refresh: invalid_grant ends the session, a timeout or 5xx keeps it with idp_unavailable; concurrent requests on a stale token cause one refresh', { timeout: 150_000 }, async () => {
  // lifecycle.test.mjs runs these on one timeline; here stack C's 20 s tokens are due for
  // renewal 10 s after login and valid until 20 s. Every variant gets its own session; all are
  // signed in at once and used in turn once they are stale, the slow variant last but one.
  await stack.stop();
  stack = undefined;
  const cfg = renderVariant('attacks-refresh', { session: { touch_interval_s: 1, refresh_skew_s: 30 } });
  await boot('c', { envoyConfig: cfg, env: { BFFGATE_ACCESS_TOKEN_TTL: '20' } });
  const STALE_AFTER_MS = 10_000 + 1200;
  const names = ['inv-false', 'inv-true', 'transient-error500', 'transient-garbage', 'transient-reset', 'transient-slow', 'concurrent'];
  const t0 = Date.now();
  const sessions = new Map(await Promise.all(names.map(async (n) => [n, await signedIn(n)])));
  await sleep(t0 + STALE_AFTER_MS - Date.now());
  const stale = async (name) => {
    // The transient variants need the old token still valid (the concurrent one does not).
    if (name.startsWith('transient')) {
      assert.ok(Date.now() - t0 < 18_500, `${name}: still before the tokens' expiry (+${Date.now() - t0} ms); the run is too slow`);
    }
    return sessions.get(name);
  };
  // invalid_grant: that request 401 (302 for a navigation), session over, upstream untouched.
  for (const nav of [false, true]) {
    const [b, v] = await stale(`inv-${nav}`);
    await setFault({ endpoint: 'token', mode: 'invalid_grant', count: 1 });
    const c0 = await apiCounts();
    const r = nav
      ? await withCookie('GET', '/api/orders', sessionHeader(v), { accept: 'text/html', 'sec-fetch-mode': 'navigate' })
      : await ordersWith(v);
    if (nav) {
      assert.equal(r.status, 302, d(r));
      assert.ok(r.location.startsWith('/auth/login?'), r.location);
    } else assertJsonError(r, 401, 'unauthenticated', 'invalid_grant');
    assertSessionCleared(r, 'invalid_grant');
    await assertUntouched(c0, 'invalid_grant', PROTECTED);
    assertJsonError(await withCookie('GET', '/auth/user', sessionHeader(v)), 401, 'unauthenticated', 'the session ended');
    b.close();
  }
  // Transient faults where a token is needed that the session does not hold (profile, first use,
  // the orders token stale): 503 idp_unavailable, session kept; the old orders token still serves.
  for (const [mode, extra] of [['error500', {}], ['garbage', {}], ['reset', {}], ['slow', { delay_ms: CALLOUT_TIMEOUT_MS + 1000 }]]) {
    const [, v] = await stale(`transient-${mode}`);
    await setFault({ endpoint: 'token', mode, ...extra });
    try {
      const c0 = await apiCounts();
      const t0 = Date.now();
      const p = await withCookie('GET', '/api/profile', sessionHeader(v));
      assertJsonError(p, 503, 'idp_unavailable', `profile with the provider in ${mode}`);
      assert.ok(Date.now() - t0 < CALLOUT_TIMEOUT_MS + 2000, `${mode}: answered within the timeout`);
      await assertUntouched(c0, `${mode}: profile`, ['profile']);
      const o = await ordersWith(v);
      assert.equal(o.status, 200, `${mode}: the still-valid orders token serves: ${d(o)}`);
      assert.equal((await withCookie('GET', '/auth/user', sessionHeader(v))).status, 200, `${mode}: the session is kept`);
    } finally {
      await setFault({ endpoint: 'all', mode: 'none' });
    }
    if (mode === 'slow') await sleep(1500); // let the slow provider request finish
    const ok = await withCookie('GET', '/api/profile', sessionHeader(v));
    assert.equal(ok.status, 200, `${mode}: fault cleared, the same cookie works: ${d(ok)}`);
  }
  // 30 concurrent requests on a stale token, fresh connections (both workers): one refresh.
  const [, v] = await stale('concurrent');
  const g0 = await refreshGrants();
  const rs = await Promise.all(Array.from({ length: 30 }, () => ordersWith(v)));
  for (const r of rs) assert.equal(r.status, 200, d(r));
  await sleep(300);
  assert.equal(await refreshGrants() - g0, 1, 'exactly one refresh_token grant for 30 requests');
});

// =============================================================================================
// Tokens: leaks (both stacks)
// =============================================================================================

test('row: no token, code, verifier, client secret or cookie value in any log line (trace level) or any response to the browser', () => {
  const secrets = secretsSeen();
  for (const [k, v] of extraSecrets) secrets.set(k, v);
  const env = readSecrets();
  secrets.set(env.BFFGATE_CLIENT_SECRET, 'client secret');
  for (const entry of env.BFFGATE_COOKIE_KEYS.split(',')) secrets.set(entry.split(':')[1], 'cookie key');
  assert.ok([...secrets.values()].includes('access token'), 'the scan knows real access tokens');
  assert.ok([...secrets.values()].includes('authorization code'), 'the scan knows real codes');
  const hits = tokenLeaksInResponses(secrets);
  // Responses: no JWT, no refresh token field, no client secret in anything the filter answered.
  for (const r of transcript) {
    let u;
    try { u = new URL(r.url); } catch { continue; }
    if (u.origin !== APP || r.json?.api) continue;
    const text = `${JSON.stringify(r.headers)}\n${r.text}`;
    if (text.includes(env.BFFGATE_CLIENT_SECRET)) hits.push(`client secret in ${r.method} ${u.pathname}`);
    if (/"(access_token|refresh_token|id_token|code_verifier)"/.test(r.text)) hits.push(`token field in ${r.method} ${u.pathname}`);
  }
  let bytes = 0;
  const t0 = Date.now();
  const list = [...secrets].filter(([k]) => k && k.length >= 8);
  for (const file of logs) {
    forEachLogChunk(file, 0, (text) => {
      bytes += text.length;
      for (const [s, kind] of list) if (text.includes(s)) hits.push(`${kind} in ${path.relative(ROOT, file)}`);
    });
  }
  console.log(`leak scan: ${list.length} secrets over ${(bytes / 1048576).toFixed(1)} MiB of log in ${Date.now() - t0} ms`);
  assert.ok(bytes > 100_000, `the logs were written at trace level (${bytes} bytes scanned)`);
  assert.deepEqual([...new Set(hits)], [], [...new Set(hits)].join('\n'));
});
