// Sessions through the real stack: what a request without a valid session gets (401 JSON or a
// redirect to login), forged/garbled/expired cookies, CSRF, client Authorization headers, path
// tricks, logout (on every worker), the error shape, and the IdP being down for a refresh.
// One stack for the whole file (Envoy --concurrency 2).

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, beforeEach, test } from 'node:test';

import {
  APP, Browser, SESSION_COOKIE,
  apiCount, apiCounts, describe as d, envoyStats, idpStats, isDeletion, loginOk, rawRequest,
  resetApis, setCookiesNamed, startLogin,
} from '../lib/client.mjs';
import {
  ACCEPT_JSON, CSRF, ERROR_CODES, assertJsonError, assertNoSessionSet, assertSessionCleared, bootStack,
  eventually, findSecretsInLog, secretsSeen, tokenLeaksInResponses,
} from '../lib/harness.mjs';

let boot;
const browsers = [];
function browser(name, o) {
  const b = new Browser({ name, ...o });
  browsers.push(b);
  return b;
}

before(async () => {
  boot = await bootStack();
}, { timeout: 90_000 });

after(async () => {
  for (const b of browsers) b.close();
  if (boot) await boot.stack.stop();
}, { timeout: 30_000 });

beforeEach(async () => {
  await resetApis();
});

/** A request carrying exactly `cookie` (no jar), over a fresh connection. */
function withCookie(method, path, cookie, headers = {}) {
  return rawRequest(method, `${APP}${path}`, {
    headers: { ...ACCEPT_JSON, ...(cookie === undefined ? {} : { cookie }), ...headers },
  });
}

const flipChar = (s, i) => `${s.slice(0, i)}${s[i] === 'A' ? 'B' : 'A'}${s.slice(i + 1)}`;

// ---------------------------------------------------------------------------------------------
// no session: 401 JSON or a redirect to login

test('no session: navigations get 302 to /auth/login?return_to=<path>, everything else 401 JSON; upstream untouched', async () => {
  const b = browser('anonymous');
  const cases = [
    { path: '/api/orders', headers: { accept: 'application/json' }, expect: 401 },
    { path: '/api/orders', headers: { 'sec-fetch-mode': 'navigate' }, expect: 302 },
    { path: '/api/orders', headers: { accept: 'text/html' }, expect: 302 },
    { path: '/api/orders', headers: { accept: 'text/html,application/xhtml+xml;q=0.9,*/*;q=0.8' }, expect: 302 },
    { path: '/api/orders', headers: { 'sec-fetch-mode': 'cors', accept: 'text/html' }, expect: 401 },
    { path: '/api/orders', headers: { 'sec-fetch-mode': 'no-cors', accept: 'text/html' }, expect: 401 },
    { path: '/api/orders', headers: { accept: '*/*' }, expect: 401 },
    { path: '/api/orders', headers: {}, expect: 401 },
    { path: '/api/orders', headers: { 'sec-fetch-mode': 'navigate', accept: 'application/json' }, expect: 302 },
    { path: '/api/profile', headers: { 'sec-fetch-mode': 'navigate' }, expect: 302 },
    { path: '/api/profile', headers: { accept: 'application/json' }, expect: 401 },
  ];
  const before0 = await apiCounts();
  for (const c of cases) {
    const r = await b.get(c.path, { headers: c.headers });
    const what = `${c.path} ${JSON.stringify(c.headers)}`;
    if (c.expect === 401) {
      assertJsonError(r, 401, 'unauthenticated', what);
    } else {
      assert.equal(r.status, 302, `${what}: ${d(r)}`);
      const loc = new URL(r.location, APP);
      assert.equal(loc.origin, APP, `${what}: redirect stays on the app: ${r.location}`);
      assert.equal(loc.pathname, '/auth/login', `${what}: ${r.location}`);
      assert.equal(loc.searchParams.get('return_to'), c.path, `${what}: ${r.location}`);
      assert.ok(r.location.includes(`return_to=${encodeURIComponent(c.path)}`), `${what}: return_to percent-encoded: ${r.location}`);
    }
    assertNoSessionSet(r, what);
  }
  // a POST without a session is never a navigation that reaches the upstream
  const p = await b.post('/api/orders', { headers: { ...ACCEPT_JSON, ...CSRF }, json: { item: 'x' } });
  assert.ok([401, 403].includes(p.status), `POST without a session: ${d(p)}`);
  assert.deepEqual(await apiCounts(), before0, 'no request reached any protected upstream');
  // and the redirect leads to a working login
  const nav = await b.get('/api/orders', { headers: { 'sec-fetch-mode': 'navigate' } });
  const lr = await b.navigate(nav.location);
  assert.equal(lr.status, 302, `the login redirect answers: ${d(lr)}`);
  assert.ok(lr.location.startsWith('http://localhost:9000/auth?'), lr.location);
});

test('public routes need no session', async () => {
  const b = browser('anon-public');
  const r = await b.get('/api/public/hello', { headers: ACCEPT_JSON });
  assert.equal(r.status, 200, d(r));
  assert.equal(r.json.api, 'public');
  const page = await b.get('/', { headers: { accept: 'text/html' } });
  assert.equal(page.status, 200, d(page));
});

// ---------------------------------------------------------------------------------------------
// forged, garbled, expired cookies

test('forged, garbled, duplicated, oversized or unknown session cookies: 401, cookie cleared, upstream untouched', async () => {
  const alice = browser('forge-alice');
  const valid = await loginOk(alice, 'alice');
  const parts = valid.split('.');
  assert.equal(parts.length, 3, `value is kid.payload.mac: ${valid.length} chars`);
  const [kid, payload, mac] = parts;
  const otherKid = kid === 'zz' ? 'zy' : 'zz';
  const rnd = (n) => crypto.randomBytes(n).toString('base64url');
  const forged = {
    'random value': rnd(48),
    'random kid.payload.mac': `${kid}.${rnd(16)}.${rnd(32)}`,
    'flipped MAC char': [kid, payload, flipChar(mac, Math.floor(mac.length / 2))].join('.'),
    'flipped first MAC char': [kid, payload, flipChar(mac, 0)].join('.'),
    'flipped payload char': [kid, flipChar(payload, 3), mac].join('.'),
    'unknown key id': [otherKid, payload, mac].join('.'),
    'empty key id': ['', payload, mac].join('.'),
    'fields re-split (payload|mac boundary moved)': [kid, payload.slice(0, -1), payload.slice(-1) + mac].join('.'),
    'fields re-split (kid|payload boundary moved)': [kid.slice(0, -1), kid.slice(-1) + payload, mac].join('.'),
    'MAC dropped': [kid, payload].join('.'),
    'MAC empty': [kid, payload, ''].join('.'),
    'extra field': [kid, payload, mac, mac].join('.'),
    'truncated by 1': valid.slice(0, -1),
    'truncated by 6': valid.slice(0, -6),
    'truncated to half': valid.slice(0, Math.floor(valid.length / 2)),
    'MAC of another cookie value': [kid, payload, rnd(32)].join('.'),
    'oversize (valid prefix, 4000 chars)': valid + 'A'.repeat(4000 - valid.length),
    'oversize (4000 x A)': 'A'.repeat(4000),
    'non-base64 bytes': `${kid}.${payload}!!.${mac}`,
    'empty value': '',
    'lower-case hex of the valid value': Buffer.from(valid).toString('hex'),
  };
  const baseline = await apiCount('orders');
  for (const [name, value] of Object.entries(forged)) {
    const r = await withCookie('GET', '/api/orders', `${SESSION_COOKIE}=${value}`);
    assertJsonError(r, 401, 'unauthenticated', name);
    assertSessionCleared(r, name);
  }
  // duplicated cookies: ambiguous, never "pick the good one"
  const dups = {
    'valid twice': `${SESSION_COOKIE}=${valid}; ${SESSION_COOKIE}=${valid}`,
    'valid then forged': `${SESSION_COOKIE}=${valid}; ${SESSION_COOKIE}=${forged['flipped MAC char']}`,
    'forged then valid': `${SESSION_COOKIE}=${forged['flipped MAC char']}; ${SESSION_COOKIE}=${valid}`,
    'empty then valid': `${SESSION_COOKIE}=; ${SESSION_COOKIE}=${valid}`,
  };
  for (const [name, cookie] of Object.entries(dups)) {
    const r = await withCookie('GET', '/api/orders', cookie);
    assertJsonError(r, 401, 'unauthenticated', name);
    assertSessionCleared(r, name);
  }
  // a differently-cased name is another cookie: no session from it
  for (const n of ['__host-bff-session', '__HOST-BFF-SESSION', '__Host-Bff-Session']) {
    const r = await withCookie('GET', '/api/orders', `${n}=${valid}`);
    assertJsonError(r, 401, 'unauthenticated', `cookie named ${n}`);
    assertNoSessionSet(r, n);
  }
  assert.equal(await apiCount('orders'), baseline, 'the orders API saw none of these requests');
  // the navigation form of the same: 302 to login, and the bad cookie is still cleared
  const nav = await withCookie('GET', '/api/orders', `${SESSION_COOKIE}=${forged['unknown key id']}`, { accept: 'text/html', 'sec-fetch-mode': 'navigate' });
  assert.equal(nav.status, 302, d(nav));
  assert.equal(new URL(nav.location, APP).pathname, '/auth/login');
  // /auth/user too
  const u = await withCookie('GET', '/auth/user', `${SESSION_COOKIE}=${forged['flipped MAC char']}`);
  assertJsonError(u, 401, 'unauthenticated', '/auth/user with a forged cookie');
  // the real session was not harmed by all this
  const ok = await withCookie('GET', '/api/orders', `${SESSION_COOKIE}=${valid}; theme=dark`);
  assert.equal(ok.status, 200, `the valid session still works: ${d(ok)}`);
});

test('a session cookie after logout (session gone, MAC still valid): 401, cleared, upstream untouched', async () => {
  const b = browser('expired');
  const old = await loginOk(b, 'alice');
  const lo = await b.post('/auth/logout', { headers: { ...ACCEPT_JSON, ...CSRF } });
  assert.equal(lo.status, 200, d(lo));
  const n0 = await apiCount('orders');
  for (const p of ['/api/orders', '/api/profile', '/auth/user']) {
    const r = await withCookie('GET', p, `${SESSION_COOKIE}=${old}`);
    assertJsonError(r, 401, 'unauthenticated', `old cookie on ${p}`);
    assertSessionCleared(r, `old cookie on ${p}`);
  }
  assert.equal(await apiCount('orders'), n0, 'orders API untouched');
});

// ---------------------------------------------------------------------------------------------
// CSRF

test('CSRF: POST /api/orders needs X-CSRF: 1 and no cross-site Origin; otherwise 403 csrf and the upstream sees nothing', async () => {
  const b = browser('csrf');
  await loginOk(b, 'alice');
  const refused = [
    { name: 'no X-CSRF', headers: {} },
    { name: 'X-CSRF: 0', headers: { 'x-csrf': '0' } },
    { name: 'X-CSRF empty', headers: { 'x-csrf': '' } },
    { name: 'X-CSRF: true', headers: { 'x-csrf': 'true' } },
    { name: 'X-CSRF + Origin evil', headers: { ...CSRF, origin: 'https://evil.example' } },
    { name: 'X-CSRF + Origin null', headers: { ...CSRF, origin: 'null' } },
    { name: 'X-CSRF + Origin http (other scheme)', headers: { ...CSRF, origin: 'http://localhost:8443' } },
    { name: 'X-CSRF + Origin other port', headers: { ...CSRF, origin: 'https://localhost:9443' } },
    { name: 'X-CSRF + Origin suffix host', headers: { ...CSRF, origin: 'https://localhost:8443.evil.example' } },
    { name: 'X-CSRF + Origin prefix host', headers: { ...CSRF, origin: 'https://evil-localhost:8443' } },
    { name: 'X-CSRF + Sec-Fetch-Site cross-site', headers: { ...CSRF, 'sec-fetch-site': 'cross-site' } },
    { name: 'X-CSRF + same Origin but Sec-Fetch-Site cross-site', headers: { ...CSRF, origin: APP, 'sec-fetch-site': 'cross-site' } },
  ];
  const n0 = await apiCount('orders');
  for (const c of refused) {
    const r = await b.post('/api/orders', { headers: { ...ACCEPT_JSON, ...c.headers }, json: { item: 'x' } });
    assertJsonError(r, 403, 'csrf', c.name);
    assertNoSessionSet(r, c.name);
  }
  assert.equal(await apiCount('orders'), n0, 'the orders API saw none of the refused POSTs');
  // the same session is still good, and a same-origin POST with the header passes
  const ok = await b.post('/api/orders', {
    headers: { ...ACCEPT_JSON, ...CSRF, origin: APP, 'sec-fetch-site': 'same-origin' }, json: { item: 'x' },
  });
  assert.equal(ok.status, 201, d(ok));
  const ok2 = await b.post('/api/orders', { headers: { ...ACCEPT_JSON, ...CSRF }, json: { item: 'y' } });
  assert.equal(ok2.status, 201, `X-CSRF without Origin (non-browser client): ${d(ok2)}`);
  assert.equal(await apiCount('orders'), n0 + 2, 'exactly the two accepted POSTs reached the API');
  // GET needs no CSRF header, even cross-site (SameSite=Lax decides what the browser sends)
  const g = await b.get('/api/orders', { headers: { ...ACCEPT_JSON, 'sec-fetch-site': 'cross-site', origin: 'https://evil.example' } });
  assert.equal(g.status, 200, `safe method: ${d(g)}`);
});

test('CSRF: forwarding headers, Host and header-name variants never turn a cross-site POST into a same-site one', async () => {
  const b = browser('csrf-steer');
  await loginOk(b, 'alice');
  const n0 = await apiCount('orders');
  const evil = 'https://evil.example';
  const cases = [
    { name: 'X-Forwarded-Host matching the evil Origin', headers: { ...CSRF, origin: evil, 'x-forwarded-host': 'evil.example' } },
    { name: 'Host matching the evil Origin', headers: { ...CSRF, host: 'evil.example:8443', origin: 'https://evil.example:8443' } },
    { name: 'X-Forwarded-Proto http + http Origin', headers: { ...CSRF, 'x-forwarded-proto': 'http', origin: 'http://localhost:8443' } },
    { name: 'Forwarded header', headers: { ...CSRF, origin: evil, forwarded: 'host=evil.example;proto=https' } },
    { name: 'X-Forwarded-For loopback', headers: { ...CSRF, origin: evil, 'x-forwarded-for': '127.0.0.1' } },
    { name: 'X-Original-URL / X-Envoy-Original-Path to a public path', headers: { origin: evil, 'x-original-url': '/api/public/hello', 'x-envoy-original-path': '/api/public/hello' } },
  ];
  for (const c of cases) {
    const r = await b.post('/api/orders', { headers: { ...ACCEPT_JSON, ...c.headers }, json: { item: 'x' } });
    assertJsonError(r, 403, 'csrf', c.name);
  }
  // an underscore variant of the CSRF header is not the CSRF header (Envoy may reject it outright)
  const u = await b.post('/api/orders', { headers: { ...ACCEPT_JSON, x_csrf: '1' }, json: { item: 'x' } });
  assert.ok(u.status === 400 || u.status === 403, `x_csrf: ${d(u)}`);
  if (u.status === 403) assertJsonError(u, 403, 'csrf', 'x_csrf');
  assert.equal(await apiCount('orders'), n0, 'the orders API saw none of them');
  // identity headers sent by the client do not change who the upstream sees
  const g = await b.get('/api/orders', {
    headers: { ...ACCEPT_JSON, 'x-forwarded-user': 'bob', 'x-auth-request-user': 'bob', 'x-bffgate-sub': 'bob', 'x-forwarded-host': 'evil.example' },
  });
  assert.equal(g.status, 200, d(g));
  assert.equal(g.json.seen.claims.sub, 'alice');
});

// ---------------------------------------------------------------------------------------------
// client Authorization headers

test('client Authorization is stripped: public route sees none, protected route sees bffgate\'s bearer', async () => {
  const anon = browser('auth-anon');
  const pub = await anon.get('/api/public/hello', { headers: { ...ACCEPT_JSON, authorization: 'Bearer evil' } });
  assert.equal(pub.status, 200, d(pub));
  assert.equal(pub.json.seen.authorization, null, `public upstream saw ${pub.json.seen.authorization}`);

  const b = browser('auth-alice');
  await loginOk(b, 'alice');
  const pub2 = await b.get('/api/public/hello', { headers: { ...ACCEPT_JSON, authorization: 'Bearer evil' } });
  assert.equal(pub2.json?.seen?.authorization, null, `public upstream with a session saw ${pub2.json?.seen?.authorization}`);
  assert.ok(!/__Host-bff/i.test(String(pub2.json.seen.cookie)), `no bffgate cookie on the public route: ${pub2.json.seen.cookie}`);
  const two = await b.get('/api/public/hello', { headers: { ...ACCEPT_JSON, authorization: ['Bearer evil', 'Bearer evil2'] } });
  assert.equal(two.json?.seen?.authorization, null, `two client Authorization headers: ${two.json?.seen?.authorization}`);

  for (const evil of ['Bearer evil', 'Basic ZXZpbDpldmls', 'bearer evil']) {
    const o = await b.get('/api/orders', { headers: { ...ACCEPT_JSON, authorization: evil } });
    assert.equal(o.status, 200, `${evil}: ${d(o)}`);
    assert.match(o.json.seen.authorization, /^Bearer eyJ/, `bffgate's token, not the client's (${evil})`);
    assert.ok(!o.json.seen.authorization.includes('evil') && !o.json.seen.authorization.includes('ZXZpbD'), 'client value dropped');
    assert.equal(o.json.seen.claims?.aud, 'https://orders.api.local');
  }
  const o2 = await b.get('/api/orders', { headers: { ...ACCEPT_JSON, authorization: ['Bearer evil', 'Bearer evil2'] } });
  assert.equal(o2.status, 200, d(o2));
  assert.equal(o2.json.seen.claims?.aud, 'https://orders.api.local', 'two client Authorization headers replaced by one bearer');
});

test('a bearer token instead of a session (even a real one): 401, never forwarded', async () => {
  const b = browser('stolen');
  await loginOk(b, 'alice');
  const o = await b.get('/api/orders', { headers: ACCEPT_JSON });
  const real = o.json.seen.authorization;
  assert.match(real, /^Bearer eyJ/, 'captured a real orders token');
  const p = await b.get('/api/profile', { headers: ACCEPT_JSON });
  const realProfile = p.json.seen.authorization;
  const anon = browser('stolen-anon');
  const before0 = await apiCounts();
  for (const [path, auth] of [
    ['/api/orders', real], ['/api/orders', real.replace('Bearer', 'bearer')], ['/api/profile', realProfile],
    ['/api/orders', 'Bearer evil'], ['/api/profile', real],
  ]) {
    const r = await anon.get(path, { headers: { ...ACCEPT_JSON, authorization: auth } });
    assertJsonError(r, 401, 'unauthenticated', `${path} with a client bearer and no session`);
  }
  const post = await anon.post('/api/orders', { headers: { ...ACCEPT_JSON, ...CSRF, authorization: real }, json: { item: 'x' } });
  assert.ok([401, 403].includes(post.status), d(post));
  assert.deepEqual(await apiCounts(), before0, 'no upstream saw a request');
});

// ---------------------------------------------------------------------------------------------
// routing tricks must not skip the route's checks

test('path tricks never reach a protected upstream without a session', async () => {
  const anon = browser('paths');
  const paths = [
    '/api/orders/', '/api//orders', '//api/orders', '/api/./orders', '/api/public/../orders',
    '/api/public/%2e%2e/orders', '/api/public/%2E%2E/orders', '/api/public%2F..%2Forders', '/api/public/..%2Forders',
    '/api/orders;x=1', '/api/orders%3Bx=1', '/API/orders', '/api/Orders', '/api/orders?/api/public/hello',
    '/api/public/hello/../../orders', '/api/orders%00', '/api/orders%20', '/api/orders#x', '/api/public/hello/..%5C..%5Corders',
  ];
  const before0 = await apiCounts();
  for (const p of paths) {
    let r;
    try {
      r = await rawRequest('GET', APP, { rawPath: p, headers: ACCEPT_JSON });
    } catch {
      continue; // a reset connection is a refusal too
    }
    assert.ok(!(r.json && (r.json.api === 'orders' || r.json.api === 'profile')), `${p} reached a protected API: ${d(r)}`);
    assert.ok(r.status >= 400 || r.json?.api === 'public', `${p}: refused, not found or public, got ${d(r)}`);
  }
  const after0 = await apiCounts();
  assert.equal(after0.orders, before0.orders, 'orders API untouched');
  assert.equal(after0.profile, before0.profile, 'profile API untouched');
});

// ---------------------------------------------------------------------------------------------
// logout

test('logout: needs X-CSRF; then 200 JSON with end_session_url, cookie expired, session dead', async () => {
  const b = browser('logout');
  const cookie = await loginOk(b, 'alice');
  const noCsrf = await b.post('/auth/logout', { headers: ACCEPT_JSON });
  assertJsonError(noCsrf, 403, 'csrf', 'logout without X-CSRF');
  assertNoSessionSet(noCsrf);
  assert.equal(setCookiesNamed(noCsrf, SESSION_COOKIE).length, 0, 'a refused logout does not touch the cookie');
  const still = await b.get('/auth/user', { headers: ACCEPT_JSON });
  assert.equal(still.status, 200, `session survives a refused logout: ${d(still)}`);

  const lo = await b.post('/auth/logout', { headers: { ...ACCEPT_JSON, ...CSRF } });
  assert.equal(lo.status, 200, d(lo));
  assert.match(String(lo.headers['content-type']), /^application\/json/);
  assert.equal(typeof lo.json?.end_session_url, 'string', `end_session_url: ${lo.text}`);
  const es = new URL(lo.json.end_session_url);
  assert.equal(`${es.origin}${es.pathname}`, 'http://localhost:9000/session/end', lo.json.end_session_url);
  assert.ok(!/eyJ/.test(lo.text), 'no token in the logout answer (no id_token_hint either)');
  const del = setCookiesNamed(lo, SESSION_COOKIE);
  assert.equal(del.length, 1, d(lo));
  assert.ok(isDeletion(del[0]), `expired: ${del[0].raw}`);
  assert.equal(del[0].attrs['max-age'], '0', `Max-Age=0: ${del[0].raw}`);
  assert.equal(del[0].attrs.path, '/', del[0].raw);
  assert.ok(del[0].attrs.secure !== undefined, del[0].raw);
  assert.equal(b.sessionCookie, undefined, 'the browser dropped the cookie');

  const n0 = await apiCount('orders');
  for (const p of ['/api/orders', '/auth/user']) {
    const r = await withCookie('GET', p, `${SESSION_COOKIE}=${cookie}`);
    assertJsonError(r, 401, 'unauthenticated', `old cookie on ${p} after logout`);
  }
  assert.equal(await apiCount('orders'), n0, 'orders API untouched after logout');
});

test('logout revokes the refresh token at the provider', async () => {
  const b = browser('logout-revoke');
  await loginOk(b, 'alice');
  const rev0 = await idpStats();
  const lo = await b.post('/auth/logout', { headers: { ...ACCEPT_JSON, ...CSRF } });
  assert.equal(lo.status, 200, d(lo));
  const revoked = await eventually(async () => (await idpStats())?.revocations > rev0.revocations, { ms: 4000 });
  assert.ok(revoked, `the IdP counted a revocation (before ${JSON.stringify(rev0)}, after ${JSON.stringify(await idpStats())})`);
});

test('logout twice / without a session does not fail badly', async () => {
  const b = browser('logout-anon');
  const r = await b.post('/auth/logout', { headers: { ...ACCEPT_JSON, ...CSRF } });
  assert.ok(r.status < 500, d(r));
  assert.match(String(r.headers['content-type']), /^application\/json/, d(r));
  assertNoSessionSet(r);
});

test('logout holds on every worker: 20 fresh connections with the old cookie all get 401', async () => {
  const b = browser('multiworker');
  const cookie = await loginOk(b, 'alice');
  const workerCx = async () => {
    const s = await envoyStats('downstream_cx_total');
    const out = {};
    for (const [k, v] of s) {
      const m = /^listener\.127\.0\.0\.1_8443\.(worker_\d+)\.downstream_cx_total$/.exec(k);
      if (m) out[m[1]] = v;
    }
    return out;
  };
  /** One request over a fresh connection; returns [response, worker that took the connection]. */
  const probe = async () => {
    const w0 = await workerCx();
    const r = await withCookie('GET', '/api/orders', `${SESSION_COOKIE}=${cookie}`);
    const w1 = await workerCx();
    const worker = Object.keys(w1).find((k) => w1[k] > (w0[k] || 0));
    return [r, worker];
  };
  const workers0 = await workerCx();
  assert.ok(Object.keys(workers0).length >= 2, `Envoy runs at least 2 workers: ${JSON.stringify(workers0)}`);

  // warm every worker with the live session first (a per-worker cache would then hold it)
  const warmed = new Set();
  for (let i = 0; i < 60 && warmed.size < 2; i += 1) {
    const [r, w] = await probe();
    assert.equal(r.status, 200, `live session on ${w}: ${d(r)}`);
    if (w) warmed.add(w);
  }
  assert.equal(warmed.size, 2, `the session was used on both workers before logout: ${[...warmed]}`);

  const lo = await b.post('/auth/logout', { headers: { ...ACCEPT_JSON, ...CSRF } });
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
// /auth endpoints and the error shape

test('unknown /auth path -> 404 JSON; GET /auth/logout -> 405 JSON', async () => {
  const b = browser('auth-paths');
  for (const p of ['/auth/nope', '/auth/', '/auth/login/extra', '/auth/user/x', '/auth/../auth/nope']) {
    const r = await b.get(p, { headers: ACCEPT_JSON });
    if (p === '/auth/login/extra' && r.status === 302) continue; // prefix-matching /auth/login is a choice
    assert.equal(r.status, 404, `${p}: ${d(r)}`);
    assert.match(String(r.headers['content-type']), /^application\/json/, `${p}: ${d(r)}`);
    assert.ok(ERROR_CODES.has(r.json?.error) && typeof r.json?.error_description === 'string', `${p}: ${d(r)}`);
  }
  const g = await b.get('/auth/logout', { headers: ACCEPT_JSON });
  assert.equal(g.status, 405, d(g));
  assert.match(String(g.headers['content-type']), /^application\/json/, d(g));
  assert.ok(ERROR_CODES.has(g.json?.error) && typeof g.json?.error_description === 'string', d(g));
});

test('every filter error is JSON {"error", "error_description"} with content-type application/json', async () => {
  const alice = browser('errors-alice');
  await loginOk(alice, 'alice');
  const bob = browser('errors-bob');
  await loginOk(bob, 'bob');
  const anon = browser('errors-anon');
  await startLogin(anon);
  const catalogue = [
    ['401 no session', () => anon.get('/api/orders', { headers: ACCEPT_JSON }), 401, 'unauthenticated'],
    ['401 /auth/user', () => anon.get('/auth/user', { headers: ACCEPT_JSON }), 401, 'unauthenticated'],
    ['401 forged cookie', () => withCookie('GET', '/api/profile', `${SESSION_COOKIE}=k1.AAAA.BBBB`), 401, 'unauthenticated'],
    ['403 csrf', () => alice.post('/api/orders', { headers: ACCEPT_JSON, json: { item: 'x' } }), 403, 'csrf'],
    ['403 csrf logout', () => alice.post('/auth/logout', { headers: ACCEPT_JSON }), 403, 'csrf'],
    ['403 insufficient_scope', () => bob.post('/api/orders', { headers: { ...ACCEPT_JSON, ...CSRF }, json: { item: 'x' } }), 403, 'insufficient_scope'],
    ['400 login_failed (no state)', () => anon.navigate('/auth/callback'), [400], 'login_failed'],
    ['400 login_failed (unknown state)', () => anon.navigate('/auth/callback?state=x&code=y'), [400], 'login_failed'],
    ['404 unknown /auth path', () => anon.get('/auth/whatever', { headers: ACCEPT_JSON }), 404, null],
    ['405 GET /auth/logout', () => anon.get('/auth/logout', { headers: ACCEPT_JSON }), 405, null],
    // even when the client prefers HTML, an error is JSON
    ['401 with Accept text/html + cors', () => anon.get('/api/orders', { headers: { accept: 'text/html', 'sec-fetch-mode': 'cors' } }), 401, 'unauthenticated'],
  ];
  for (const [name, run, status, code] of catalogue) {
    const r = await run();
    if (code) assertJsonError(r, status, code, name);
    else {
      assert.equal(r.status, status, `${name}: ${d(r)}`);
      assert.match(String(r.headers['content-type']), /^application\/json/, `${name}: ${d(r)}`);
      assert.ok(ERROR_CODES.has(r.json?.error), `${name}: contract error code: ${d(r)}`);
      assert.equal(typeof r.json?.error_description, 'string', `${name}: ${d(r)}`);
    }
  }
});

// ---------------------------------------------------------------------------------------------
// IdP down (keep near the end: restarts the IdP)

test('IdP down: a cached token still works; a route needing a refresh gets idp_unavailable; the session survives', async () => {
  const b = browser('idp-down');
  await loginOk(b, 'alice'); // the orders token comes with the login; profile needs a refresh
  await boot.stack.stopIdp();
  try {
    const o = await b.fetchApi('GET', '/api/orders');
    assert.equal(o.status, 200, `orders (token from the login) while the IdP is down: ${d(o)}`);
    const n0 = await apiCount('profile');
    const t0 = Date.now();
    const p = await b.fetchApi('GET', '/api/profile');
    assertJsonError(p, [502, 503, 504], 'idp_unavailable', 'profile while the IdP is down');
    assert.ok(Date.now() - t0 < 6000, 'answered within the filter timeout');
    assertNoSessionSet(p);
    assert.equal(setCookiesNamed(p, SESSION_COOKIE).length, 0, 'the session cookie is not cleared');
    assert.equal(await apiCount('profile'), n0, 'the profile API saw nothing');
    const u = await b.get('/auth/user', { headers: ACCEPT_JSON });
    assert.equal(u.status, 200, `session kept: ${d(u)}`);
    const o2 = await b.fetchApi('GET', '/api/orders');
    assert.equal(o2.status, 200, `orders still fine: ${d(o2)}`);
  } finally {
    await boot.stack.startIdp();
  }
});

// ---------------------------------------------------------------------------------------------
// leaks (keep last)

test('no token in responses to the browser, no token, code or cookie value in Envoy\'s log', () => {
  const secrets = secretsSeen();
  assert.ok([...secrets.values()].includes('access token'), 'the scan knows at least one access token');
  const hits = [...tokenLeaksInResponses(secrets), ...findSecretsInLog(boot.envoyLog, boot.offset, secrets)];
  assert.deepEqual(hits, [], hits.join('\n'));
});
