// Login flow end to end through the real stack: Envoy + bffgate, oidc-provider, demo APIs.
// One stack for the whole file. Covers: the authorize redirect, the callback and its cookie,
// /auth/user, token forwarding per audience, scopes, return_to sanitizing, every callback
// failure class, parallel tabs, session fixation, and leaks of tokens to the browser or the log.

import assert from 'node:assert/strict';
import { after, before, beforeEach, test } from 'node:test';

import {
  APP, Browser, CALLBACK, FLOW_PREFIX, IDP, SESSION_COOKIE,
  apiCount, authorizeAtIdp, deliverCallback, describe as d, isDeletion, login, loginOk, parseSetCookie,
  resetApis, setCookiesNamed, setCookiesWithPrefix, setsSession, startLogin,
} from '../lib/client.mjs';
import {
  ACCEPT_JSON, CSRF, JWT_RE, assertJsonError, assertNoSessionSet, bootStack, findSecretsInLog,
  secretsSeen, tokenLeaksInResponses,
} from '../lib/harness.mjs';

let boot;
const browsers = [];
function browser(name) {
  const b = new Browser({ name });
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

/** The browser has no session: /auth/user answers 401. */
async function assertLoggedOut(b, msg) {
  assert.equal(b.sessionCookie, undefined, `${msg}: no session cookie in the jar`);
  const u = await b.get('/auth/user', { headers: ACCEPT_JSON });
  assertJsonError(u, 401, 'unauthenticated', `${msg}: /auth/user`);
}

// ---------------------------------------------------------------------------------------------
// the happy path

test('GET /auth/login redirects to the IdP: code flow, S256 PKCE, state, nonce, both resources, flow cookie', async () => {
  const b = browser('login-redirect');
  const r = await startLogin(b, { returnTo: '/my-return-path' });
  assert.equal(r.status, 302, d(r));
  const u = new URL(r.location);
  assert.equal(`${u.origin}${u.pathname}`, `${IDP}/auth`, `authorization endpoint: ${r.location}`);
  const q = u.searchParams;
  assert.equal(q.get('response_type'), 'code');
  assert.equal(q.get('client_id'), 'bffgate');
  assert.equal(q.get('redirect_uri'), CALLBACK);
  assert.equal(q.get('code_challenge_method'), 'S256');
  assert.match(q.get('code_challenge') || '', /^[A-Za-z0-9_-]{43}$/, 'code_challenge is a base64url SHA-256');
  assert.ok((q.get('state') || '').length >= 16, `state of at least 16 chars: ${q.get('state')}`);
  assert.ok((q.get('nonce') || '').length >= 16, `nonce of at least 16 chars: ${q.get('nonce')}`);
  assert.deepEqual(q.getAll('resource').sort(), ['https://orders.api.local', 'https://profile.api.local']);
  const scopes = (q.get('scope') || '').split(' ');
  for (const s of ['openid', 'offline_access', 'orders:read', 'orders:write', 'profile']) assert.ok(scopes.includes(s), `scope ${s} in ${q.get('scope')}`);
  for (const forbidden of ['code_verifier', 'client_secret', 'return_to']) assert.equal(q.get(forbidden), null, `${forbidden} must not be in the authorize URL`);
  assert.ok(!decodeURIComponent(r.location).includes('my-return-path'), `return_to stays server-side: ${r.location}`);

  const flows = setCookiesWithPrefix(r, FLOW_PREFIX);
  assert.equal(flows.length, 1, `one ${FLOW_PREFIX}* cookie: ${d(r)}`);
  const f = flows[0];
  assert.ok(f.value.length >= 16, 'flow cookie value is not trivial');
  assert.ok(f.attrs.secure !== undefined, `Secure: ${f.raw}`);
  assert.ok(f.attrs.httponly !== undefined, `HttpOnly: ${f.raw}`);
  assert.equal(String(f.attrs.samesite).toLowerCase(), 'lax', `SameSite=Lax: ${f.raw}`);
  assert.equal(f.attrs.path, '/', `Path=/: ${f.raw}`);
  assert.equal(f.attrs.domain, undefined, `no Domain: ${f.raw}`);
  assert.ok(!isDeletion(f), 'flow cookie is not already expired');
  assertNoSessionSet(r);

  // every login gets its own state, nonce and challenge
  const r2 = await startLogin(b, { returnTo: '/my-return-path' });
  const q2 = new URL(r2.location).searchParams;
  for (const k of ['state', 'nonce', 'code_challenge']) assert.notEqual(q2.get(k), q.get(k), `fresh ${k} per login`);
  assert.notEqual(setCookiesWithPrefix(r2, FLOW_PREFIX)[0]?.name, f.name, 'a second login gets its own flow cookie');
});

test('callback: 302 to return_to with __Host-bff-session; Path=/; Secure; HttpOnly; SameSite=Lax, flow cookie cleared', async () => {
  const b = browser('alice-callback');
  const r = await login(b, 'alice', 'alice', { returnTo: '/app?x=1' });
  const cb = r.callback;
  assert.equal(cb.status, 302, d(cb));
  const loc = new URL(cb.location, APP);
  assert.equal(loc.origin, APP, `redirect stays on the app: ${cb.location}`);
  assert.equal(`${loc.pathname}${loc.search}`, '/app?x=1', `redirect to return_to: ${cb.location}`);

  const sess = setCookiesNamed(cb, SESSION_COOKIE);
  assert.equal(sess.length, 1, `exactly one session Set-Cookie: ${d(cb)}`);
  const s = sess[0];
  // RFC 6265 cookie-octets only, and long enough to be unguessable
  assert.match(s.value, /^[\x21\x23-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E]{20,}$/, `opaque cookie-safe value: ${s.value.length} chars`);
  assert.ok(!JWT_RE.test(s.value), 'the session cookie is not a JWT');
  assert.equal(s.attrs.path, '/', s.raw);
  assert.ok(s.attrs.secure !== undefined, `Secure: ${s.raw}`);
  assert.ok(s.attrs.httponly !== undefined, `HttpOnly: ${s.raw}`);
  assert.equal(String(s.attrs.samesite).toLowerCase(), 'lax', `SameSite=Lax: ${s.raw}`);
  assert.equal(s.attrs.domain, undefined, `no Domain attribute: ${s.raw}`);

  // the flow cookie of this login is deleted
  const flowName = setCookiesWithPrefix(r.login, FLOW_PREFIX)[0].name;
  const flowDel = setCookiesNamed(cb, flowName);
  assert.equal(flowDel.length, 1, `callback clears ${flowName}: ${d(cb)}`);
  assert.ok(isDeletion(flowDel[0]), `flow cookie deleted: ${flowDel[0].raw}`);
  assert.equal(flowDel[0].attrs.path, '/', 'flow cookie deletion has Path=/');
  assert.equal(b.cookiesWithPrefix(FLOW_PREFIX).length, 0, 'no flow cookie left in the jar');
  assert.ok(!JWT_RE.test(cb.text) && !JWT_RE.test(JSON.stringify(cb.headers)), 'no JWT in the callback response');
});

test('/auth/user: 200 with sub, claims and a future expires_at, and no token in it', async () => {
  const b = browser('alice-user');
  await loginOk(b, 'alice');
  const before = Math.floor(Date.now() / 1000);
  const u = await b.get('/auth/user', { headers: ACCEPT_JSON });
  assert.equal(u.status, 200, d(u));
  assert.match(String(u.headers['content-type']), /^application\/json/);
  assert.equal(u.json.sub, 'alice', u.text);
  assert.ok(u.json.claims && typeof u.json.claims === 'object' && !Array.isArray(u.json.claims), `claims object: ${u.text}`);
  assert.equal(u.json.claims.sub, 'alice', `claims.sub: ${u.text}`);
  assert.equal(typeof u.json.expires_at, 'number', `numeric expires_at: ${u.text}`);
  assert.ok(Number.isInteger(u.json.expires_at), 'expires_at in whole unix seconds');
  assert.ok(u.json.expires_at > before, `expires_at in the future: ${u.json.expires_at} vs now ${before}`);
  assert.ok(u.json.expires_at < before + 366 * 24 * 3600, `expires_at is unix seconds, not ms: ${u.json.expires_at}`);
  assert.ok(!/eyJ/.test(u.text), `no JWT-looking string in /auth/user: ${u.text}`);
  assert.ok(!/"(access_token|refresh_token|id_token|code_verifier)"/.test(u.text), `no token fields: ${u.text}`);
  assert.ok(!/eyJ/.test(JSON.stringify(u.headers)), 'no JWT in the headers either');
  // bob is bob
  const b2 = browser('bob-user');
  await loginOk(b2, 'bob');
  const u2 = await b2.get('/auth/user', { headers: ACCEPT_JSON });
  assert.equal(u2.json?.sub, 'bob', u2.text);
});

test('GET /api/orders: bearer with aud orders, no __Host-bff cookie upstream, other cookies kept', async () => {
  const b = browser('alice-orders');
  await loginOk(b, 'alice');
  // an unfinished login leaves a flow cookie in the jar: it must be stripped too
  await startLogin(b, { returnTo: '/' });
  assert.equal(b.cookiesWithPrefix(FLOW_PREFIX).length, 1, 'a flow cookie is in the jar');
  const r = await b.fetchApi('GET', '/api/orders', { extraCookie: 'theme=dark' });
  assert.equal(r.status, 200, d(r));
  assert.equal(r.json.api, 'orders');
  const { seen } = r.json;
  assert.match(String(seen.authorization), /^Bearer [A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/, `bearer JWT: ${String(seen.authorization).slice(0, 20)}`);
  assert.equal(seen.claims?.aud, 'https://orders.api.local', `aud: ${JSON.stringify(seen.claims)}`);
  assert.equal(seen.claims.sub, 'alice');
  assert.ok(String(seen.claims.scope).split(' ').includes('orders:read'), `scope: ${seen.claims.scope}`);
  assert.ok(!String(seen.claims.scope).split(' ').includes('profile'), `orders token carries no profile scope: ${seen.claims.scope}`);
  assert.ok(seen.cookie === null || !/__Host-bff/i.test(seen.cookie), `no bffgate cookie upstream: ${seen.cookie}`);
  assert.ok(String(seen.cookie).split(/;\s*/).includes('theme=dark'), `unrelated cookie forwarded: ${seen.cookie}`);
  assert.ok(!String(seen.cookie).includes(b.sessionCookie), 'session cookie value not upstream');
});

test('GET /api/profile: bearer with aud profile and scope profile', async () => {
  const b = browser('alice-profile');
  await loginOk(b, 'alice');
  const r = await b.fetchApi('GET', '/api/profile');
  assert.equal(r.status, 200, d(r));
  assert.equal(r.json.api, 'profile');
  assert.equal(r.json.seen.claims?.aud, 'https://profile.api.local', JSON.stringify(r.json.seen.claims));
  assert.ok(String(r.json.seen.claims.scope).split(' ').includes('profile'), `scope: ${r.json.seen.claims.scope}`);
  assert.ok(!/orders:/.test(String(r.json.seen.claims.scope)), `profile token carries no orders scope: ${r.json.seen.claims.scope}`);
  assert.equal(r.json.profile?.sub, 'alice');
  // and the orders token is a different one
  const o = await b.fetchApi('GET', '/api/orders');
  assert.equal(o.status, 200, d(o));
  assert.notEqual(o.json.seen.authorization, r.json.seen.authorization, 'one token per audience');
  // a second profile call reuses the session's profile token (still the right audience)
  const r2 = await b.fetchApi('GET', '/api/profile');
  assert.equal(r2.json?.seen?.claims?.aud, 'https://profile.api.local');
});

test('POST /api/orders: alice (orders:write) 201; bob 403 insufficient_scope and the upstream sees nothing', async () => {
  const a = browser('alice-post');
  await loginOk(a, 'alice');
  const r = await a.fetchApi('POST', '/api/orders', { headers: CSRF, json: { item: 'tea' } });
  assert.equal(r.status, 201, d(r));
  assert.equal(r.json.order?.item, 'tea');
  assert.equal(r.json.seen.claims.aud, 'https://orders.api.local');
  const list = await a.fetchApi('GET', '/api/orders');
  assert.equal(list.json?.orders?.length, 1, 'the order is there');

  const bob = browser('bob-post');
  await loginOk(bob, 'bob');
  const g = await bob.fetchApi('GET', '/api/orders');
  assert.equal(g.status, 200, `bob may read orders: ${d(g)}`);
  assert.ok(!String(g.json.seen.claims.scope).split(' ').includes('orders:write'), 'bob holds no orders:write');
  const n0 = await apiCount('orders');
  const p = await bob.fetchApi('POST', '/api/orders', { headers: CSRF, json: { item: 'coffee' } });
  assertJsonError(p, 403, 'insufficient_scope', 'bob POST /api/orders');
  assert.equal(await apiCount('orders'), n0, 'the orders API never saw bob\'s POST');
});

// ---------------------------------------------------------------------------------------------
// return_to

test('return_to: local paths are kept, anything that could leave the site becomes /', async () => {
  const b = browser('return-to');
  await loginOk(b, 'alice', 'alice', { returnTo: '/' });
  const kept = ['/orders?tab=2', '/a/b/c', '/'];
  const hostile = [
    '//evil.example/x',
    '/\\evil.example',
    '\\\\evil.example',
    '\\/evil.example',
    '/\t/evil.example',
    ' //evil.example',
    '\t//evil.example',
    'https://evil.example/',
    'http:evil.example',
    'javascript:alert(1)',
    'data:text/html,hi',
    '%2F%2Fevil.example',
    'evil.example',
    '/\r\nSet-Cookie: x=y',
    '',
  ];
  for (const rt of kept) {
    const r = await login(b, 'alice', 'alice', { returnTo: rt });
    assert.equal(r.callback.status, 302, d(r.callback));
    const loc = new URL(r.callback.location, APP);
    assert.equal(loc.origin, APP, `stays on the app for ${JSON.stringify(rt)}: ${r.callback.location}`);
    assert.equal(`${loc.pathname}${loc.search}`, rt, `local return_to ${JSON.stringify(rt)} kept: ${r.callback.location}`);
  }
  for (const rt of hostile) {
    const r = await login(b, 'alice', 'alice', { returnTo: rt });
    assert.equal(r.callback.status, 302, `${JSON.stringify(rt)}: ${d(r.callback)}`);
    const raw = r.callback.location;
    const loc = new URL(raw, APP); // WHATWG parsing, as a browser resolves Location
    assert.equal(loc.origin, APP, `return_to ${JSON.stringify(rt)} must not leave the site: Location ${JSON.stringify(raw)}`);
    assert.ok(raw === '/' || raw === `${APP}/`, `return_to ${JSON.stringify(rt)} is replaced by /: Location ${JSON.stringify(raw)}`);
    assert.ok(!r.callback.setCookies.some((l) => /^x=/.test(l)), 'no header injection');
  }
});

// ---------------------------------------------------------------------------------------------
// callback failures: JSON error, no session cookie

test('callback without state: 400 login_failed, no session', async () => {
  const b = browser('cb-nostate');
  await startLogin(b); // holds a flow cookie
  for (const q of ['', '?code=abc', '?code=abc&state=', '?state=&code=']) {
    const r = await b.navigate(`/auth/callback${q}`);
    assertJsonError(r, (s) => s >= 400 && s < 500, 'login_failed', `callback${q}`);
    assertNoSessionSet(r, `callback${q}`);
  }
  await assertLoggedOut(b, 'after callbacks without state');
});

test('callback with garbage or undecodable state: login_failed, no session, no crash', async () => {
  const b = browser('cb-garbage');
  await startLogin(b); // a real flow cookie is present
  const states = ['garbage', 'A'.repeat(43), '%00%FF%FE', '..%2F..%2F', 'x'.repeat(5000), '%E2%80%AE%F0%9F%92%A9', '{"a":1}', 'a.b.c'];
  for (const s of states) {
    const r = await b.navigate(`/auth/callback?code=abc&state=${s}`);
    assertJsonError(r, (st) => st >= 400 && st < 500, 'login_failed', `state=${s.slice(0, 30)}`);
    assertNoSessionSet(r, `state=${s.slice(0, 30)}`);
  }
  await assertLoggedOut(b, 'after garbage states');
  // the filter is still healthy
  await loginOk(b, 'alice');
});

test('callback delivered in another browser (state from browser A, no flow cookie in B): login_failed, no session', async () => {
  const a = browser('victim-A');
  const r = await login(a, 'alice', 'alice', { stopBeforeCallback: true });
  const bFresh = browser('attacker-B-fresh');
  const x = await deliverCallback(bFresh, r.callbackUrl);
  assertJsonError(x, (s) => s >= 400 && s < 500, 'login_failed', 'callback in a fresh browser');
  assertNoSessionSet(x, 'callback in a fresh browser');
  await assertLoggedOut(bFresh, 'browser B');

  // B has a login of its own in progress (its own flow cookie): A's state is still foreign to it
  const bBusy = browser('attacker-B-busy');
  await startLogin(bBusy);
  const y = await deliverCallback(bBusy, r.callbackUrl);
  assertJsonError(y, (s) => s >= 400 && s < 500, 'login_failed', 'callback in a browser with another flow cookie');
  assertNoSessionSet(y, 'callback in a browser with another flow cookie');
  await assertLoggedOut(bBusy, 'busy browser B');
});

test('replayed callback (same state and code twice): the second fails, even with the flow cookie put back', async () => {
  const b = browser('replay');
  const r = await login(b, 'alice', 'alice', { stopBeforeCallback: true });
  const flow = b.cookiesWithPrefix(FLOW_PREFIX);
  assert.equal(flow.length, 1, 'one flow cookie before the callback');
  const first = await deliverCallback(b, r.callbackUrl);
  assert.equal(first.status, 302, d(first));
  assert.ok(setsSession(first), d(first));
  const good = b.sessionCookie;

  const again = await deliverCallback(b, r.callbackUrl);
  assertJsonError(again, (s) => s >= 400 && s < 500, 'login_failed', 'replay');
  assertNoSessionSet(again, 'replay');

  // an attacker who kept the flow cookie and replays state+code with it
  const thief = browser('replay-thief');
  thief.setCookie(flow[0].name, flow[0].value);
  const stolen = await deliverCallback(thief, r.callbackUrl);
  assertJsonError(stolen, (s) => s >= 400 && s < 500, 'login_failed', 'replay with the flow cookie');
  assertNoSessionSet(stolen, 'replay with the flow cookie');
  await assertLoggedOut(thief, 'replaying browser');

  // the session minted by the first callback is unaffected
  const u = await b.get('/auth/user', { headers: { ...ACCEPT_JSON, cookie: `${SESSION_COOKIE}=${good}` }, noJar: true });
  assert.equal(u.status, 200, `original session still valid: ${d(u)}`);
});

test('provider error=access_denied (Cancel on the IdP login page): login_failed, no session', async () => {
  const b = browser('cancel');
  const r = await login(b, 'alice', 'alice', { cancel: true });
  assert.equal(r.callbackUrl.searchParams.get('error'), 'access_denied', `IdP sent error=access_denied: ${r.callbackUrl.href}`);
  assert.equal(r.callbackUrl.searchParams.get('code'), null);
  assertJsonError(r.callback, (s) => s >= 400 && s < 500, 'login_failed', 'access_denied');
  assertNoSessionSet(r.callback, 'access_denied');
  await assertLoggedOut(b, 'after Cancel');
});

test('provider error with a forged state or an error plus a code: login_failed, no session', async () => {
  const b = browser('error-forged');
  const r = await login(b, 'alice', 'alice', { stopBeforeCallback: true });
  const u = new URL(r.callbackUrl);
  u.searchParams.set('error', 'access_denied');
  const x = await deliverCallback(b, u);
  assertJsonError(x, (s) => s >= 400 && s < 500, 'login_failed', 'error together with a code');
  assertNoSessionSet(x, 'error together with a code');
  const y = await b.navigate('/auth/callback?error=server_error');
  assertJsonError(y, (s) => s >= 400 && s < 500, 'login_failed', 'error without state');
  assertNoSessionSet(y);
});

test('tampered code: login_failed, no session', async () => {
  const b = browser('tampered-code');
  const r = await login(b, 'alice', 'alice', {
    beforeCallback: (url) => {
      const u = new URL(url);
      const code = u.searchParams.get('code');
      u.searchParams.set('code', `${code.slice(0, -4)}${code.endsWith('AAAA') ? 'BBBB' : 'AAAA'}`);
      return u;
    },
  });
  assertJsonError(r.callback, (s) => s >= 400 && s < 600, 'login_failed', 'tampered code');
  assertNoSessionSet(r.callback, 'tampered code');
  await assertLoggedOut(b, 'after a tampered code');
});

test('code from another login (PKCE binding): login_failed, no session', async () => {
  const victim = browser('pkce-victim');
  const attacker = browser('pkce-attacker');
  const v = await login(victim, 'alice', 'alice', { stopBeforeCallback: true });
  const a = await login(attacker, 'bob', 'bob', { stopBeforeCallback: true });
  // victim's state (matches its flow cookie) with the attacker's code
  const u = new URL(v.callbackUrl);
  u.searchParams.set('code', a.callbackUrl.searchParams.get('code'));
  const r = await deliverCallback(victim, u);
  assertJsonError(r, (s) => s >= 400 && s < 600, 'login_failed', 'injected code');
  assertNoSessionSet(r, 'injected code');
  await assertLoggedOut(victim, 'victim after code injection');
});

test('IdP down at the callback: idp_unavailable, no session; login works again once it is back', async () => {
  const b = browser('idp-down-callback');
  const r = await login(b, 'alice', 'alice', { stopBeforeCallback: true });
  await boot.stack.stopIdp();
  try {
    const t0 = Date.now();
    const x = await deliverCallback(b, r.callbackUrl);
    const ms = Date.now() - t0;
    assertJsonError(x, [502, 503, 504], 'idp_unavailable', 'callback with the IdP down');
    assertNoSessionSet(x, 'callback with the IdP down');
    assert.ok(ms < 6000, `answered within the filter's timeout: ${ms} ms`);
  } finally {
    await boot.stack.startIdp();
  }
  await assertLoggedOut(b, 'after the failed callback');
  const b2 = browser('idp-back');
  await loginOk(b2, 'alice');
  const o = await b2.fetchApi('GET', '/api/orders');
  assert.equal(o.status, 200, d(o));
});

// ---------------------------------------------------------------------------------------------
// parallel tabs and session fixation

test('parallel tabs: two logins started in one browser, finished in reverse order, both succeed', async () => {
  const b = browser('tabs');
  const s1 = await startLogin(b, { returnTo: '/tab1' });
  const s2 = await startLogin(b, { returnTo: '/tab2' });
  assert.equal(s1.status, 302, d(s1));
  assert.equal(s2.status, 302, d(s2));
  assert.equal(b.cookiesWithPrefix(FLOW_PREFIX).length, 2, 'two flow cookies side by side');
  const cb1 = await authorizeAtIdp(b, s1.location, 'alice', 'alice');
  const cb2 = await authorizeAtIdp(b, s2.location, 'alice', 'alice');
  const r2 = await deliverCallback(b, cb2);
  assert.equal(r2.status, 302, `tab 2 first: ${d(r2)}`);
  assert.ok(setsSession(r2), `tab 2 sets a session: ${d(r2)}`);
  assert.equal(new URL(r2.location, APP).pathname, '/tab2');
  const r1 = await deliverCallback(b, cb1);
  assert.equal(r1.status, 302, `tab 1 second: ${d(r1)}`);
  assert.ok(setsSession(r1), `tab 1 sets a session: ${d(r1)}`);
  assert.equal(new URL(r1.location, APP).pathname, '/tab1');
  assert.equal(b.cookiesWithPrefix(FLOW_PREFIX).length, 0, 'both flow cookies cleared');
  const o = await b.fetchApi('GET', '/api/orders');
  assert.equal(o.status, 200, `the browser is logged in: ${d(o)}`);
  assert.equal(o.json.seen.claims.sub, 'alice');
});

test('session fixation: logging in again mints a new session id and kills the old one', async () => {
  const b = browser('fixation');
  const old = await loginOk(b, 'alice');
  const again = await login(b, 'alice', 'alice');
  assert.equal(again.callback.status, 302, d(again.callback));
  assert.ok(again.callback.sentCookie?.includes(old), 'the old session cookie was presented at the callback');
  const fresh = b.sessionCookie;
  assert.ok(fresh, 'a new session cookie');
  assert.notEqual(fresh, old, 'the session cookie changed');
  const nb = browser('fixation-probe');
  for (const p of ['/api/orders', '/auth/user']) {
    const r = await nb.get(p, { headers: { ...ACCEPT_JSON, cookie: `${SESSION_COOKIE}=${old}` }, noJar: true });
    assertJsonError(r, 401, 'unauthenticated', `old session on ${p}`);
  }
  const ok = await nb.get('/api/orders', { headers: { ...ACCEPT_JSON, cookie: `${SESSION_COOKIE}=${fresh}` }, noJar: true });
  assert.equal(ok.status, 200, `new session works: ${d(ok)}`);
});

test('session fixation by an attacker: a planted session (bob\'s) is replaced when alice logs in, and dies', async () => {
  const attacker = browser('fix-attacker');
  const planted = await loginOk(attacker, 'bob');
  const victim = browser('fix-victim');
  victim.setCookie(SESSION_COOKIE, planted);
  const r = await login(victim, 'alice', 'alice');
  assert.equal(r.callback.status, 302, d(r.callback));
  assert.ok(setsSession(r.callback), 'a session cookie is set');
  assert.notEqual(victim.sessionCookie, planted, 'victim got a new session id');
  const u = await victim.get('/auth/user', { headers: ACCEPT_JSON });
  assert.equal(u.json?.sub, 'alice', `victim is alice: ${u.text}`);
  const dead = await attacker.get('/auth/user', { headers: ACCEPT_JSON });
  assertJsonError(dead, 401, 'unauthenticated', 'the planted (attacker) session after the victim\'s login');

  // a planted forged value is replaced too
  const v2 = browser('fix-victim-2');
  v2.setCookie(SESSION_COOKIE, 'k1.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA');
  const r2 = await login(v2, 'alice', 'alice');
  assert.equal(r2.callback.status, 302, d(r2.callback));
  assert.ok(setsSession(r2.callback), 'new session despite a planted garbage cookie');
});

// ---------------------------------------------------------------------------------------------
// leaks (keep last: scans everything the tests above did)

test('no token or authorization code in any response to the browser', () => {
  const secrets = secretsSeen();
  assert.ok([...secrets.values()].includes('access token'), 'the scan knows at least one access token');
  assert.ok([...secrets.values()].includes('authorization code'), 'the scan knows at least one code');
  const hits = tokenLeaksInResponses(secrets);
  assert.deepEqual(hits, [], hits.join('\n'));
});

test('no token, code or cookie value in Envoy\'s log (wasm at trace level)', () => {
  const secrets = secretsSeen();
  assert.ok(secrets.size > 10, `enough secrets to look for: ${secrets.size}`);
  const hits = findSecretsInLog(boot.envoyLog, boot.offset, secrets);
  assert.deepEqual(hits, [], hits.join('\n'));
});
