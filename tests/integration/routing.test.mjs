// Routing and header tricks through the real Envoy + bffgate (plain HTTP client; paths sent
// unnormalised with rawPath). The filter decides on the route Envoy matched (xds.route_name), so
// what must hold is: after Envoy's path handling, a request lands on exactly one route and gets
// exactly that route's policy; nothing a client sends in a path or header moves it to another.
//
// Each check names the defence it proves, so that removing that defence fails a named test:
//   [normalize_path]      HCM normalize_path: dot segments, %-encoded unreserved chars, `\`
//   [merge_slashes]       HCM merge_slashes
//   [escaped_slashes]     HCM path_with_escaped_slashes_action: REJECT_REQUEST (%2F, %5C)
//   [route_match]         routes: case-sensitive path_separated_prefix + method matchers, and the
//                         `api-unknown` catch-all (no /api/ path falls through to `static`)
//   [route_policy]        bffgate applies the policy of the route Envoy matched (401 / scopes /
//                         audience of the forwarded token)
//   [underscores]         common_http_protocol_options.headers_with_underscores_action: REJECT_REQUEST
//   [strip_authorization] bffgate drops a client Authorization and sets its own bearer
//   [csrf]                bffgate's X-CSRF + Origin / Sec-Fetch-Site check
//   [edge_headers]        use_remote_address + xff_num_trusted_hops 0, x-envoy-* sanitising, and
//                         bffgate deriving origin/redirects from config, never from request headers
//   [hsts], [nosniff]     response headers on the TLS listener (virtual host + local_reply_config)
//   [auth_no_store]       bffgate's Cache-Control: no-store on /auth/*

import assert from 'node:assert/strict';
import http2 from 'node:http2';
import { after, before, beforeEach, test } from 'node:test';

import {
  APP, Browser, CALLBACK, IDP, SESSION_COOKIE, apiCounts, ca, describe as d, login, loginOk, rawHttp1, rawRequest, resetApis,
} from '../lib/client.mjs';
import { ACCEPT_JSON, CSRF, assertJsonError, bootStack } from '../lib/harness.mjs';

const ORDERS_AUD = 'https://orders.api.local';
const PROFILE_AUD = 'https://profile.api.local';

let boot;
const users = {}; // name -> { browser, cookie, token }

before(async () => {
  boot = await bootStack();
  for (const name of ['alice', 'bob']) {
    const b = new Browser({ name: `routing-${name}` });
    await loginOk(b, name);
    users[name] = { browser: b, cookie: `${SESSION_COOKIE}=${b.sessionCookie}` };
    const o = await b.get('/api/orders', { headers: ACCEPT_JSON });
    assert.equal(o.status, 200, d(o));
    users[name].ordersToken = o.json.seen.authorization.slice('Bearer '.length);
  }
}, { timeout: 90_000 });

after(async () => {
  for (const u of Object.values(users)) u.browser.close();
  if (boot) await boot.stack.stop();
}, { timeout: 30_000 });

beforeEach(async () => {
  await resetApis();
});

/** One request with the path sent exactly as written. A reset connection counts as status 0. */
async function send(method, rawPath, headers = {}, body) {
  try {
    return await rawRequest(method, APP, { rawPath, headers, body });
  } catch (err) {
    return {
      method, url: `${APP}${rawPath}`, status: 0, headers: {}, setCookies: [], text: String(err.message), json: undefined, error: err,
    };
  }
}

// ---------------------------------------------------------------------------------------------
// path tricks
//
// Outcome classes (measured on Envoy 1.40 with the shipped config):
//   orders    normalised to /api/orders: route orders-read / orders-write, that route's policy
//   profile   normalised to /api/profile: route profile
//   public    the public API (a query that looks like a path is just a query)
//   reject    Envoy answers 400 itself; no filter decision, no upstream
//   unknown   route api-unknown: 404 JSON from Envoy, no upstream
//   static404 route static (the demo page's upstream), which has no such file: 404, public upstream only

const TRICKS = [
  // [normalize_path] dot segments are resolved BEFORE routing, so the orders policy applies
  ['/api/public/../orders', 'orders'],
  ['/api/public/hello/../../orders', 'orders'],
  ['/api/profile/../orders', 'orders'],
  ['/./api/orders', 'orders'],
  ['/api/./orders', 'orders'],
  ['/api/orders/x/..', 'orders'],
  ['/api/orders/.', 'orders'],
  ['/api/orders/..', 'unknown'], // = /api/
  ['/api/orders/%2e%2e', 'unknown'],
  ['/api/orders/../profile', 'profile'],
  ['/api/public/../profile', 'profile'],
  // [normalize_path] %-encoded dots and unreserved characters are decoded first
  ['/api/public/%2e%2e/orders', 'orders'],
  ['/api/public/%2E%2E/orders', 'orders'],
  ['/api/public/.%2e/orders', 'orders'],
  ['/api/public/hello/%2E%2E/%2E%2E/orders', 'orders'],
  ['/api/%2e/orders', 'orders'],
  ['/api/orders/%2e', 'orders'],
  ['/api/orders/%2e%2e/profile', 'profile'],
  ['/api/%6frders', 'orders'],
  ['/api/ord%65rs', 'orders'],
  // [normalize_path] a backslash is a slash
  ['/api/public\\..\\orders', 'orders'],
  // [merge_slashes]
  ['//api//orders', 'orders'],
  ['/api//orders', 'orders'],
  // [escaped_slashes] an encoded / or \ is refused outright
  ['/api/public/..%2forders', 'reject'],
  ['/api/public%2F..%2Forders', 'reject'],
  ['/api%2forders', 'reject'],
  ['/api/orders%2F', 'reject'],
  ['/api/public/hello/..%2f..%2forders', 'reject'],
  ['/api/public/..%5corders', 'reject'],
  ['/api/public/hello/..%5C..%5Corders', 'reject'],
  // a raw '#' (fragment) in the request target, or a NUL: Envoy refuses the request
  ['/api/orders#x', 'reject'],
  ['/api/public/hello#/../../orders', 'reject'],
  ['/api/orders%00', 'reject'],
  // [route_match] reserved characters stay encoded: %23 '#', %3F '?', %3B ';' are not separators
  ['/api/orders%23', 'unknown'],
  ['/api/orders%3f', 'unknown'],
  ['/api/orders%3Fx=1', 'unknown'],
  ['/api/orders%3Bx=1', 'unknown'],
  // [route_match] matching is case-sensitive; /api/* never falls through to `static`
  ['/api/Orders', 'unknown'],
  ['/api/ORDERS', 'unknown'],
  ['/API/orders', 'static404'],
  // [route_match] matrix parameters are not stripped; path_separated_prefix is segment-exact
  ['/api/orders;x=1', 'unknown'],
  ['/api/orders/..;/', 'unknown'],
  ['/api/ordersx', 'unknown'],
  ['/api/orders.json', 'unknown'],
  ['/api/orders%20', 'unknown'],
  // [route_match] routing ignores the query: a path-looking query changes nothing
  ['/api/public/hello?/api/orders', 'public'],
  ['/api/public/hello?x=/../../api/orders', 'public'],
  ['/api/public/hello?/../../orders', 'public'],
  ['/api/orders?/api/public/hello', 'orders'],
  // [route_match] absolute-form request targets route on their path; the authority changes nothing
  ['https://localhost:8443/api/orders', 'orders'],
  ['http://evil.example/api/public/../orders', 'orders'],
  // not a path at all
  ['api/orders', 'reject'],
  ['*', 'reject'],
];

/** Asserts the outcome class of a response for a client WITHOUT a session. */
function assertAnonOutcome(r, kind, what) {
  const msg = `${what}: ${d(r)}`;
  switch (kind) {
    case 'orders':
    case 'profile':
      // [route_policy] the protected route's policy ran: 401 from bffgate
      assertJsonError(r, 401, 'unauthenticated', what);
      break;
    case 'reject':
      // Envoy's own 400 (HTTP/1) — or, equivalently, a refused connection
      assert.ok(r.status === 400 || r.status === 0, `400 from Envoy: ${msg}`);
      assert.ok(!(r.json && 'api' in r.json), `no upstream answered: ${msg}`);
      break;
    case 'unknown':
      assert.equal(r.status, 404, msg);
      assert.equal(r.json?.error, 'invalid_request', `api-unknown's JSON: ${msg}`);
      assert.ok(!('api' in r.json), `Envoy answered, no upstream: ${msg}`);
      break;
    case 'static404':
      assert.equal(r.status, 404, msg);
      assert.ok(!(r.json && 'api' in r.json), `the static site's 404, not an API: ${msg}`);
      break;
    case 'public':
      assert.equal(r.status, 200, msg);
      assert.equal(r.json?.api, 'public', msg);
      assert.equal(r.json.seen.authorization, null, `no token on the public route: ${msg}`);
      break;
    default:
      throw new Error(kind);
  }
}

test('path tricks without a session: bffgate 401 on the route they normalise to, Envoy 400, or 404; no protected upstream sees a request', async () => {
  for (const [p, kind] of TRICKS) {
    const r = await send('GET', p, ACCEPT_JSON);
    assertAnonOutcome(r, kind, `GET ${p} (${kind})`);
  }
  const c = await apiCounts();
  assert.equal(c.orders, 0, '[route_policy] the orders API saw no request');
  assert.equal(c.profile, 0, '[route_policy] the profile API saw no request');
  // only the `public` cases and the static 404 reached the public upstream
  assert.equal(c.public, TRICKS.filter(([, k]) => k === 'public' || k === 'static404').length, 'public upstream: only public/static cases');
});

test('path tricks with alice\'s session: whatever reaches an API got exactly that route\'s policy (audience, scope)', async () => {
  const { cookie } = users.alice;
  for (const [p, kind] of TRICKS) {
    const r = await send('GET', p, { ...ACCEPT_JSON, cookie });
    const what = `GET ${p} (${kind}) as alice`;
    if (kind === 'orders') {
      // [route_policy] orders-read: the orders audience and orders:read, never a public (no
      // token) or profile-audience forward
      assert.equal(r.status, 200, `${what}: ${d(r)}`);
      assert.equal(r.json.api, 'orders', what);
      assert.equal(r.json.seen.claims?.aud, ORDERS_AUD, `${what}: token audience`);
      assert.ok(String(r.json.seen.claims?.scope).split(' ').includes('orders:read'), `${what}: scope ${r.json.seen.claims?.scope}`);
      assert.equal(r.json.seen.claims.sub, 'alice', what);
    } else if (kind === 'profile') {
      assert.equal(r.status, 200, `${what}: ${d(r)}`);
      assert.equal(r.json.api, 'profile', what);
      assert.equal(r.json.seen.claims?.aud, PROFILE_AUD, `${what}: token audience`);
      assert.ok(!/orders:/.test(String(r.json.seen.claims?.scope)), `${what}: no orders scope in the profile token`);
    } else {
      assertAnonOutcome(r, kind, what);
    }
  }
  const c = await apiCounts();
  assert.equal(c.orders, TRICKS.filter(([, k]) => k === 'orders').length, 'orders API: exactly the orders cases');
  assert.equal(c.profile, TRICKS.filter(([, k]) => k === 'profile').length, 'profile API: exactly the profile cases');
});

test('POST path tricks with bob\'s session (orders:read only): each lands on orders-write and is refused 403 insufficient_scope, or 400/404; no order', async () => {
  // [route_match] + [route_policy]: the method-specific route is chosen on the NORMALISED path,
  // so no spelling gets bob's POST onto orders-read (whose scope he holds).
  const { cookie } = users.bob;
  const headers = {
    ...ACCEPT_JSON, ...CSRF, origin: APP, 'sec-fetch-site': 'same-origin', 'content-type': 'application/json', cookie,
  };
  const body = JSON.stringify({ item: 'bob was here' });
  for (const [p, kind] of TRICKS) {
    const r = await send('POST', p, headers, body);
    const what = `POST ${p} (${kind}) as bob`;
    if (kind === 'orders') assertJsonError(r, 403, 'insufficient_scope', what);
    else if (kind === 'profile') assertJsonError(r, 404, 'invalid_request', `${what} (no POST route for /api/profile)`);
    else if (kind === 'public') assert.equal(r.status, 405, `${what}: the public API does not take POST: ${d(r)}`);
    else assertAnonOutcome(r, kind, what);
  }
  const c = await apiCounts();
  assert.equal(c.orders, 0, 'the orders API saw none of bob\'s POSTs');
  assert.equal(c.profile, 0, 'the profile API saw none');
});

test('POST path tricks with alice\'s session reach orders only through orders-write (token with orders:write)', async () => {
  const { cookie } = users.alice;
  const headers = {
    ...ACCEPT_JSON, ...CSRF, origin: APP, 'sec-fetch-site': 'same-origin', 'content-type': 'application/json', cookie,
  };
  let created = 0;
  for (const [p, kind] of TRICKS.filter(([, k]) => k === 'orders')) {
    const r = await send('POST', p, headers, JSON.stringify({ item: `via ${p}` }));
    const what = `POST ${p} as alice`;
    // [route_policy] orders-write: audience orders and orders:write in the forwarded token
    assert.equal(r.status, 201, `${what}: ${d(r)}`);
    assert.equal(r.json.seen.claims?.aud, ORDERS_AUD, what);
    assert.ok(String(r.json.seen.claims?.scope).split(' ').includes('orders:write'), `${what}: scope ${r.json.seen.claims?.scope}`);
    created += 1;
  }
  assert.equal((await apiCounts()).orders, created);
});

test('methods: other methods on /api/orders find no route (404, no upstream); lowercase "post" is not POST', async () => {
  // [route_match] only GET/HEAD (orders-read) and POST (orders-write) are routed to the orders API;
  // PUT/PATCH/DELETE/OPTIONS/TRACE fall into api-unknown. A lowercase method token must not be
  // treated as POST by the route and as something else by the filter (or the other way round).
  const { cookie } = users.alice;
  for (const m of ['PUT', 'PATCH', 'DELETE', 'OPTIONS', 'TRACE', 'PROPFIND']) {
    const r = await send(m, '/api/orders', { ...ACCEPT_JSON, ...CSRF, origin: APP, cookie });
    assertJsonError(r, 404, 'invalid_request', `${m} /api/orders`);
  }
  for (const m of ['post', 'Post', 'get']) {
    const r = await rawHttp1(`${m} /api/orders HTTP/1.1\r\nHost: localhost:8443\r\nAccept: application/json\r\nX-CSRF: 1\r\n`
      + `Cookie: ${cookie}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
    // Envoy's HTTP/1 codec refuses a method token that is not upper-case (400, no route, no filter)
    assert.equal(r.status, 400, `${m} /api/orders: refused by Envoy, got ${r.status} ${r.raw.slice(0, 200)}`);
  }
  assert.equal((await apiCounts()).orders, 0, 'the orders API saw none of them');
});

// ---------------------------------------------------------------------------------------------
// client-sent headers

test('client Authorization (any case, any scheme, even a real token) never reaches an upstream and never replaces a session', async () => {
  // [strip_authorization]
  const bobToken = users.bob.ordersToken;
  const variants = [
    ['authorization', `Bearer ${bobToken}`],
    ['AUTHORIZATION', `Bearer ${bobToken}`],
    ['Authorization', 'Bearer evil'],
    ['aUtHoRiZaTiOn', 'Basic ZXZpbDpldmls'],
    ['authorization', `bearer ${bobToken}`],
  ];
  // no session: the token is not a credential here, and nothing is forwarded
  for (const [name, value] of variants) {
    const r = await send('GET', '/api/orders', { ...ACCEPT_JSON, [name]: value });
    assertJsonError(r, 401, 'unauthenticated', `${name}: ${value.slice(0, 12)}… without a session`);
    const pub = await send('GET', '/api/public/hello', { ...ACCEPT_JSON, [name]: value });
    assert.equal(pub.status, 200, d(pub));
    assert.equal(pub.json.seen.authorization, null, `${name} reached the public upstream`);
  }
  assert.equal((await apiCounts()).orders, 0, 'no orders request without a session');
  // alice's session + bob's real token: the upstream sees alice's bffgate token, not bob's
  for (const [name, value] of variants) {
    const r = await send('GET', '/api/orders', { ...ACCEPT_JSON, cookie: users.alice.cookie, [name]: value });
    assert.equal(r.status, 200, d(r));
    assert.equal(r.json.seen.claims.sub, 'alice', `${name}: the session decides who the upstream sees`);
    assert.ok(!r.json.seen.authorization.includes(bobToken) && !/evil|ZXZpbD/.test(r.json.seen.authorization), `${name}: client value dropped`);
  }
  // bob's session + alice's real token: still bob, still no orders:write
  const p = await send('POST', '/api/orders', {
    ...ACCEPT_JSON, ...CSRF, 'content-type': 'application/json', cookie: users.bob.cookie, authorization: `Bearer ${users.alice.ordersToken}`,
  }, JSON.stringify({ item: 'x' }));
  assertJsonError(p, 403, 'insufficient_scope', 'bob + alice\'s token');
  // HTTP/2: the same header
  const h2 = await h2Request({ ':path': '/api/public/hello', authorization: `Bearer ${bobToken}` });
  assert.equal(h2.status, 200, JSON.stringify(h2));
  assert.equal(JSON.parse(h2.body).seen.authorization, null, 'HTTP/2: client Authorization dropped');
});

test('forwarding and x-envoy-* headers never steer a decision (auth, CSRF, redirects)', async () => {
  // [edge_headers]
  const steering = {
    'x-forwarded-for': '127.0.0.1',
    'x-forwarded-host': 'evil.example',
    'x-forwarded-proto': 'http',
    'x-forwarded-port': '80',
    'x-forwarded-prefix': '/api/public',
    forwarded: 'for=127.0.0.1;host=evil.example;proto=http',
    'x-real-ip': '127.0.0.1',
    'x-envoy-internal': 'true',
    'x-envoy-original-path': '/api/public/hello',
    'x-envoy-external-address': '127.0.0.1',
    'x-original-url': '/api/public/hello',
    'x-rewrite-url': '/api/public/hello',
    'x-original-uri': '/api/public/hello',
  };
  for (const [name, value] of Object.entries(steering)) {
    // no session is still no session ([route_policy])
    const r = await send('GET', '/api/orders', { ...ACCEPT_JSON, [name]: value });
    assertJsonError(r, 401, 'unauthenticated', `${name} without a session`);
    // a cross-site POST stays cross-site ([csrf])
    const x = await send('POST', '/api/orders', {
      ...ACCEPT_JSON, ...CSRF, origin: 'https://evil.example', 'content-type': 'application/json', cookie: users.alice.cookie, [name]: value,
    }, '{"item":"x"}');
    assertJsonError(x, 403, 'csrf', `cross-site POST with ${name}`);
  }
  // all of them at once, upper-cased names too
  const upper = Object.fromEntries(Object.entries(steering).map(([k, v]) => [k.toUpperCase(), v]));
  const all = await send('POST', '/api/orders', {
    ...ACCEPT_JSON, ...CSRF, origin: 'http://localhost:8443', 'content-type': 'application/json', cookie: users.alice.cookie, ...upper,
  }, '{"item":"x"}');
  assertJsonError(all, 403, 'csrf', 'http:// Origin with X-Forwarded-Proto: http and friends');
  // a public path with x-envoy-original-path pointing at orders: still the public route, no token
  const pub = await send('GET', '/api/public/hello', { ...ACCEPT_JSON, cookie: users.alice.cookie, 'x-envoy-original-path': '/api/orders' });
  assert.equal(pub.json?.seen?.authorization, null, `x-envoy-original-path does not change the route's policy: ${d(pub)}`);
  assert.equal((await apiCounts()).orders, 0, 'the orders API saw none of these');

  // redirects come from the configured public origin, never from Host / X-Forwarded-* / Forwarded
  const evil = {
    host: 'evil.example:8443', 'x-forwarded-host': 'evil.example', 'x-forwarded-proto': 'http', forwarded: 'host=evil.example;proto=http',
  };
  const nav = await send('GET', '/api/orders', {
    accept: 'text/html', 'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'document', ...evil,
  });
  assert.equal(nav.status, 302, d(nav));
  assert.ok(!nav.location.includes('evil'), `redirect does not mention the client's host: ${nav.location}`);
  assert.equal(new URL(nav.location, APP).origin, APP, `login redirect on the app origin: ${nav.location}`);
  const li = await send('GET', '/auth/login', { accept: 'text/html', 'sec-fetch-mode': 'navigate', ...evil });
  assert.equal(li.status, 302, d(li));
  const authz = new URL(li.location);
  assert.equal(authz.origin, IDP, `authorize redirect to the provider: ${li.location}`);
  assert.equal(authz.searchParams.get('redirect_uri'), CALLBACK, 'redirect_uri from config, not from Host / X-Forwarded-*');
});

test('identity-looking headers never change who the upstream sees or what is allowed', async () => {
  // [route_policy]: identity comes only from the session
  const ident = {
    'x-user': 'alice',
    'x-auth-request-user': 'alice',
    'x-auth-request-email': 'alice@example.test',
    'x-auth-request-access-token': users.alice.ordersToken,
    'x-forwarded-user': 'alice',
    'x-forwarded-email': 'alice@example.test',
    'x-forwarded-access-token': users.alice.ordersToken,
    'x-remote-user': 'alice',
    'remote-user': 'alice',
    'x-userinfo': Buffer.from('{"sub":"alice"}').toString('base64'),
    'x-bffgate-sub': 'alice',
    'x-bffgate-scopes': 'orders:write',
    'x-jwt-payload': Buffer.from('{"sub":"alice","scope":"orders:write"}').toString('base64'),
  };
  // no session: still 401
  const anon = await send('GET', '/api/orders', { ...ACCEPT_JSON, ...ident });
  assertJsonError(anon, 401, 'unauthenticated', 'identity headers without a session');
  // bob's session: the upstream sees bob; bob still cannot POST
  const g = await send('GET', '/api/orders', { ...ACCEPT_JSON, cookie: users.bob.cookie, ...ident });
  assert.equal(g.status, 200, d(g));
  assert.equal(g.json.seen.claims.sub, 'bob', 'the upstream sees bob');
  assert.ok(!String(g.json.seen.claims.scope).includes('orders:write'), 'bob\'s token has no orders:write');
  const p = await send('POST', '/api/orders', {
    ...ACCEPT_JSON, ...CSRF, 'content-type': 'application/json', cookie: users.bob.cookie, ...ident,
  }, '{"item":"x"}');
  assertJsonError(p, 403, 'insufficient_scope', 'bob with alice\'s identity headers');
  assert.equal((await apiCounts()).orders, 1, 'only bob\'s GET reached the orders API');
});

test('header names with underscores are refused by Envoy (400 / stream reset) before bffgate or an upstream sees them', async () => {
  // [underscores] e.g. x_csrf would otherwise be a second spelling of x-csrf for CGI-style
  // upstreams; X_Forwarded_For of X-Forwarded-For, and so on.
  const { cookie } = users.alice;
  const cases = [
    ['POST', '/api/orders', { x_csrf: '1' }],
    ['POST', '/api/orders', { X_CSRF: '1' }],
    ['POST', '/api/orders', { ...CSRF, x_csrf: '0' }],
    ['GET', '/api/orders', { X_Forwarded_For: '1.2.3.4' }],
    ['GET', '/api/orders', { x_forwarded_host: 'evil.example' }],
    ['GET', '/api/orders', { x_user: 'bob' }],
    ['GET', '/api/public/hello', { x_authorization: 'Bearer evil' }],
    ['GET', '/auth/user', { x_forwarded_proto: 'http' }],
  ];
  for (const [m, p, h] of cases) {
    const r = await send(m, p, {
      ...ACCEPT_JSON, 'content-type': 'application/json', cookie, ...h,
    }, m === 'POST' ? '{"item":"x"}' : undefined);
    assert.equal(r.status, 400, `${m} ${p} with ${Object.keys(h).join(', ')}: ${d(r)}`);
  }
  // HTTP/2: the stream is refused (no response), never forwarded
  const h2 = await h2Request({ ':method': 'POST', ':path': '/api/orders', x_csrf: '1', cookie, 'content-type': 'application/json' }, '{"item":"x"}');
  assert.ok(h2.status === 400 || h2.error, `HTTP/2 x_csrf: ${JSON.stringify(h2)}`);
  const c = await apiCounts();
  assert.deepEqual(c, { orders: 0, profile: 0, public: 0 }, 'no upstream saw any of them');
  // ...while the real header name, in any case, is the CSRF header (names are case-insensitive)
  for (const name of ['X-CSRF', 'x-csrf', 'X-Csrf']) {
    const ok = await send('POST', '/api/orders', {
      ...ACCEPT_JSON, [name]: '1', 'content-type': 'application/json', cookie,
    }, '{"item":"x"}');
    assert.equal(ok.status, 201, `${name}: ${d(ok)}`);
  }
});

// ---------------------------------------------------------------------------------------------
// response security headers

/** One HTTP/2 request to the app (ALPN h2). Resolves {status, headers, body} or {error}. */
function h2Request(headers, body) {
  return new Promise((resolve) => {
    const c = http2.connect(APP, { ca: ca(), servername: 'localhost' });
    const done = (v) => {
      c.close();
      resolve(v);
    };
    c.on('error', (e) => done({ error: e.message }));
    const req = c.request({ ':method': 'GET', ...headers });
    req.setTimeout(10_000, () => req.close(http2.constants.NGHTTP2_CANCEL));
    let h;
    let data = '';
    req.setEncoding('utf8');
    req.on('response', (hh) => { h = hh; });
    req.on('data', (x) => { data += x; });
    req.on('end', () => done(h ? { status: h[':status'], headers: h, body: data } : { error: 'no response' }));
    req.on('error', (e) => done({ error: e.message }));
    req.end(body);
  });
}

/** Requests of every kind the TLS listener answers: upstream, filter, Envoy direct/local replies. */
async function varietyOfResponses() {
  const alice = users.alice.cookie;
  const out = [];
  const add = async (m, p, h = {}, body) => out.push(await send(m, p, h, body));
  await add('GET', '/', { accept: 'text/html' }); // static page (upstream)
  await add('GET', '/app.js');
  await add('GET', '/no-such-file'); // static 404 (upstream)
  await add('GET', '/api/public/hello', ACCEPT_JSON); // public API
  await add('GET', '/api/orders', { ...ACCEPT_JSON, cookie: alice }); // protected 200
  await add('GET', '/api/orders', ACCEPT_JSON); // bffgate 401
  await add('GET', '/api/orders', { accept: 'text/html', 'sec-fetch-mode': 'navigate' }); // bffgate 302
  await add('POST', '/api/orders', { ...ACCEPT_JSON, cookie: alice }, '{}'); // bffgate 403 csrf
  await add('POST', '/api/orders', { ...ACCEPT_JSON, ...CSRF, cookie: users.bob.cookie }, '{"item":"x"}'); // 403 scope
  await add('GET', '/api/nope', ACCEPT_JSON); // Envoy direct_response 404
  await add('GET', '/api/public%2F..%2Forders'); // Envoy 400 (escaped slash)
  await add('GET', '/api/orders', { x_csrf: '1' }); // Envoy 400 (underscore)
  await add('GET', '/api/orders#x'); // Envoy 400 (fragment)
  await add('OPTIONS', '/api/orders', { origin: 'https://evil.example', 'access-control-request-method': 'POST' });
  for (const r of await authResponses()) out.push(r);
  return out;
}

/** One of each /auth/* answer: redirects, JSON errors, JSON successes, HEAD. */
async function authResponses() {
  const b = new Browser({ name: 'routing-auth-headers' });
  try {
    const out = [];
    const add = async (m, p, h = {}) => out.push(await send(m, p, h));
    await add('GET', '/auth/login'); // 302 to the provider
    await add('GET', '/auth/login?return_to=%2F%2Fevil.example'); // 302, return_to sanitised
    await add('GET', '/auth/callback'); // 400 login_failed
    await add('GET', '/auth/callback?state=x&code=y'); // 400 login_failed
    await add('GET', '/auth/user', ACCEPT_JSON); // 401
    await add('HEAD', '/auth/user'); // 401, no body
    await add('GET', '/auth/user', { ...ACCEPT_JSON, cookie: users.alice.cookie }); // 200
    await add('GET', '/auth/logout'); // 405
    await add('OPTIONS', '/auth/user'); // 405
    await add('POST', '/auth/logout', ACCEPT_JSON); // 403 csrf
    await add('GET', '/auth/nope'); // 404
    await add('GET', '/auth/'); // 404
    // a real login: the callback's 302 with Set-Cookie, then a real logout
    const l = await login(b, 'alice', 'alice');
    out.push(l.login, l.callback);
    out.push(await b.post('/auth/logout', { headers: { ...ACCEPT_JSON, ...CSRF } })); // 200
    return out;
  } finally {
    b.close();
  }
}

test('every /auth/* response carries Cache-Control: no-store and X-Content-Type-Options: nosniff', async () => {
  // [auth_no_store] [nosniff]: redirects, errors and session answers are never cached or sniffed
  const rs = await authResponses();
  assert.ok(rs.length >= 15, `covered ${rs.length} /auth responses`);
  for (const r of rs) {
    const what = `${r.method} ${new URL(r.url).pathname}${new URL(r.url).search ? '?…' : ''} -> ${r.status}`;
    const cc = String(r.headers['cache-control'] || '').toLowerCase().split(',').map((x) => x.trim());
    assert.ok(cc.includes('no-store'), `${what}: Cache-Control no-store, got ${r.headers['cache-control']}`);
    assert.equal(r.headers['x-content-type-options'], 'nosniff', `${what}: X-Content-Type-Options`);
  }
});

test('every response on the TLS listener carries Strict-Transport-Security and nosniff (upstream, bffgate, Envoy local replies; HTTP/1.1 and HTTP/2)', async () => {
  // [hsts] [nosniff]
  const rs = await varietyOfResponses();
  const statuses = new Set(rs.map((r) => r.status));
  for (const s of [200, 302, 400, 401, 403, 404, 405]) assert.ok(statuses.has(s), `the sample includes a ${s}`);
  for (const r of rs) {
    const what = `${r.method} ${r.url.slice(APP.length)} -> ${r.status}`;
    const hsts = String(r.headers['strict-transport-security'] || '');
    const m = /(?:^|;)\s*max-age=(\d+)/i.exec(hsts);
    assert.ok(m && Number(m[1]) >= 15_552_000, `${what}: HSTS with max-age >= 180 days, got ${JSON.stringify(hsts)}`);
    assert.equal(r.headers['x-content-type-options'], 'nosniff', `${what}: X-Content-Type-Options`);
  }
  for (const [h, what] of [
    [{ ':path': '/' }, 'static page'],
    [{ ':path': '/api/orders', accept: 'application/json' }, 'bffgate 401'],
    [{ ':path': '/api/orders#x' }, 'Envoy 400'],
    [{ ':path': '/auth/user' }, '/auth/user'],
  ]) {
    const r = await h2Request(h);
    assert.ok(!r.error, `HTTP/2 ${what}: ${r.error}`);
    assert.match(String(r.headers['strict-transport-security']), /max-age=\d+/, `HTTP/2 ${what} (${r.status}): HSTS`);
  }
});
