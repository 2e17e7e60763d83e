// Hardening through the real stack (Envoy + bffgate + oidc-provider + demo APIs):
//   - a client that goes away while its request renews a token (or finishes a login) loses
//     nothing: the answer is applied by the filter's root context, the rotated refresh token is
//     kept, the provider sees no reuse, and every callout is accounted for (no bookkeeping leak);
//   - tokens living 2, 8 and 60 s under the default 30 s refresh skew: 30 concurrent requests on
//     a token due for renewal make one refresh grant and all carry the same new token;
//   - return_to with dot segments that resolve off-site lands on /;
//   - an upstream cannot set bffgate's cookies;
//   - the operator API needs its bearer token, a loopback Host and no browser;
//   - CORS preflights and responses follow a route's allowed_origins.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  APP, Browser, IDP, apiCount, describe as d, idpStats, login, loginOk, rawRequest, startLogin,
} from '../lib/client.mjs';
import {
  ACCEPT_JSON, CSRF, assertJsonError, bootStack, forEachLogChunk,
} from '../lib/harness.mjs';
import { OPERATOR, logSince, operatorRequest, operatorToken, prometheus } from '../lib/observe.mjs';
import { renderVariant } from '../lib/variant.mjs';

const sleep = (ms) => new Promise((r) => { setTimeout(r, Math.max(0, ms)); });

/** Runs `fn` (which asserts) until it passes, polling every 100 ms; rethrows after `timeoutMs`. */
async function retry(fn, { timeoutMs = 5000 } = {}) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > end) throw err;
      await sleep(100);
    }
  }
}

let boot;
before(async () => {
  boot = await bootStack();
});
after(async () => {
  await boot?.stack.stop();
});

async function setFault(f) {
  const r = await rawRequest('POST', `${IDP}/__fault`, {
    headers: { 'content-type': 'application/json' }, body: JSON.stringify(f),
  });
  assert.equal(r.status, 200, `POST /__fault: ${r.status} ${r.text}`);
}
const clearFaults = () => setFault({ endpoint: 'all', mode: 'none' });

/** GET /api/orders as the page's fetch; the bearer token the orders API saw (or null). */
async function orders(b, o = {}) {
  const r = await b.fetchApi('GET', `${APP}/api/orders`, { headers: ACCEPT_JSON, ...o });
  return { res: r, token: r.json?.seen?.authorization ?? null };
}

/** Sends GET /api/orders and resets the connection after `ms`, before any answer. */
function abortedOrders(b, ms) {
  return rawRequest('GET', `${APP}/api/orders`, {
    headers: { ...ACCEPT_JSON, cookie: b.cookieHeader(APP), 'sec-fetch-mode': 'cors', 'sec-fetch-site': 'same-origin' },
    timeoutMs: ms,
  }).then((r) => ({ status: r.status }), (e) => ({ aborted: true, error: String(e.message) }));
}

const grants = (s) => s?.grants?.refresh_token || 0;
const refreshRequests = (s) => s?.token_requests?.refresh_token || 0;

/** Every callout the filter dispatched has been answered (or timed out) and accounted for. */
async function calloutsSettle(what) {
  await retry(async () => {
    const m = await prometheus();
    const sent = m.get('bffgate_callouts_dispatched') || 0;
    const done = (m.get('bffgate_callouts_ok') || 0) + (m.get('bffgate_callouts_http_error') || 0)
      + (m.get('bffgate_callouts_failed') || 0);
    assert.equal(done, sent, `${what}: callouts dispatched ${sent}, answered ${done}`);
  }, { timeoutMs: 15_000 });
}

// ---------------------------------------------------------------------------------------------

test('a fetch aborted while its request renews the token loses nothing: the rotated refresh token is kept, no reuse at the provider', { timeout: 120_000 }, async () => {
  // 4 s tokens (renewed at 2 s), refresh tokens rotated on every use (reuse is refused).
  await boot.stack.startIdp({ BFFGATE_ACCESS_TOKEN_TTL: '4', BFFGATE_ROTATE_REFRESH: '1' });
  try {
    const b = new Browser({ name: 'aborter' });
    await loginOk(b, 'alice');
    const first = await orders(b);
    assert.equal(first.res.status, 200, d(first.res));
    for (let round = 0; round < 3; round++) {
      await sleep(2200); // the token is due for renewal
      const s0 = await idpStats();
      // The provider answers the refresh only after the client has gone.
      await setFault({ endpoint: 'token', mode: 'slow', delay_ms: 800, count: 1 });
      const r = await abortedOrders(b, 150);
      assert.ok(r.aborted, `the request was aborted before its answer: ${JSON.stringify(r)}`);
      await retry(async () => {
        assert.equal(grants(await idpStats()) - grants(s0), 1, 'the refresh went through at the provider');
      });
      await calloutsSettle(`round ${round}`);
      // The next request uses the token that refresh obtained: no further grant, and 200.
      const next = await orders(b);
      assert.equal(next.res.status, 200, `round ${round}: session survives the aborted renewal: ${d(next.res)}`);
      const s1 = await idpStats();
      assert.equal(grants(s1) - grants(s0), 1, `round ${round}: no second grant`);
      assert.equal(refreshRequests(s1) - refreshRequests(s0), 1, `round ${round}: no refused (reused) refresh token`);
    }
  } finally {
    await clearFaults();
    await boot.stack.startIdp({ BFFGATE_ACCESS_TOKEN_TTL: '300', BFFGATE_ROTATE_REFRESH: '0' });
  }
});

/**
 * The VM memory each Envoy thread's filter logged (`vm memory N KiB`) since this file's stack
 * started, in KiB. Read a chunk at a time: the log of a whole suite at trace level is larger
 * than a string can be.
 */
function vmMemory() {
  const byThread = new Map();
  forEachLogChunk(boot.stack.logs.envoy, boot.offset, (text) => {
    for (const m of text.matchAll(/^\[[^\]]*\]\[(\d+)\][^\n]*vm memory (\d+) KiB/gm)) {
      byThread.set(m[1], Math.max(byThread.get(m[1]) || 0, Number(m[2])));
    }
  });
  return byThread;
}

/** `n` logins whose callback is reset by the client while the code exchange is in flight. */
async function abortedCallbacks(n, returnTo) {
  const ready = [];
  for (let i = 0; i < n; i += 10) {
    ready.push(...await Promise.all(Array.from({ length: Math.min(10, n - i) }, async (_, j) => {
      const b = new Browser({ name: `cb-abort-${i + j}`, keepAlive: false });
      const ctx = await login(b, 'bob', 'bob', { stopBeforeCallback: true, returnTo });
      return { b, ctx };
    })));
  }
  const aborted = await Promise.all(ready.map(({ b, ctx }) => rawRequest('GET', ctx.callbackUrl.href, {
    headers: { cookie: b.cookieHeader(ctx.callbackUrl.href), 'sec-fetch-mode': 'navigate', accept: 'text/html' },
    timeoutMs: 60,
  }).then(() => false, () => true)));
  return aborted.filter(Boolean).length;
}

test('callbacks aborted under load: every callout is accounted for, the VM memory stays flat, the stack keeps serving', { timeout: 240_000 }, async () => {
  // The provider answers code exchanges 400 ms late; clients reset at 60 ms. Each login carries
  // a 2 KB return_to, so any bookkeeping left behind would show in the VM's memory.
  await setFault({ endpoint: 'token', mode: 'slow', delay_ms: 400 });
  const returnTo = `/${'r'.repeat(2000)}`;
  try {
    const warm = await abortedCallbacks(100, returnTo);
    assert.ok(warm >= 80, `most callbacks aborted mid-exchange: ${warm}/100`);
    await calloutsSettle('warm-up');
    await sleep(1500); // a memory look (about once a second per worker)
    const m0 = vmMemory();
    let aborted = 0;
    for (let round = 0; round < 3; round++) aborted += await abortedCallbacks(150, returnTo);
    assert.ok(aborted >= 360, `most callbacks aborted mid-exchange: ${aborted}/450`);
    await calloutsSettle('aborted callbacks');
    await sleep(1500);
    const m1 = vmMemory();
    assert.ok(m1.size >= 1, 'the filter logs its VM memory');
    for (const [thread, kib] of m1) {
      const grew = kib - (m0.get(thread) || kib);
      assert.ok(grew <= 128, `VM on thread ${thread}: memory grew ${grew} KiB over 450 aborted callbacks (${m0.get(thread)} -> ${kib})`);
    }
    // The stack still serves: a fresh login and its API call work.
    await clearFaults();
    const ok = new Browser({ name: 'after-aborts' });
    await loginOk(ok, 'alice');
    assert.equal((await orders(ok)).res.status, 200);
  } finally {
    await clearFaults();
  }
});

// ---------------------------------------------------------------------------------------------

for (const ttl of [2, 8, 60]) {
  test(`tokens living ${ttl} s (refresh skew 30 s): 30 concurrent requests on an expired token make one grant and carry one token`, { timeout: 150_000 }, async () => {
    await boot.stack.startIdp({ BFFGATE_ACCESS_TOKEN_TTL: String(ttl) });
    try {
      const b = new Browser({ name: `ttl-${ttl}`, keepAlive: false });
      await loginOk(b, 'alice');
      // Expired (past the whole lifetime, not only due for renewal: while a token is still
      // valid, requests that find the renewal in progress use it instead of waiting).
      await sleep((ttl + 1) * 1000 + 300);
      const s0 = await idpStats();
      const renewedAt = Date.now();
      const rs = await Promise.all(Array.from({ length: 30 }, () => orders(b)));
      const batchEnd = Date.now();
      for (const r of rs) assert.equal(r.res.status, 200, d(r.res));
      const tokens = new Set(rs.map((r) => r.token));
      const s1 = await idpStats();
      // The filter's clock is in whole seconds: a token obtained at 12.95 s is due (half way
      // through a 2 s life, at least 1 s after it was obtained) at 13 s, 50 ms later. So a batch
      // that outlasts that boundary may rightly renew the renewed token once more.
      const earliestDueMs = (Math.floor(renewedAt / 1000) + Math.max(1, Math.floor(ttl / 2))) * 1000;
      const most = batchEnd < earliestDueMs ? 1 : 2;
      const n = grants(s1) - grants(s0);
      assert.ok(n >= 1 && n <= most, `ttl ${ttl}: ${most === 1 ? 'one refresh grant' : 'one grant, or two across a due second'} for 30 requests (${n})`);
      assert.ok(tokens.size <= most, `ttl ${ttl}: all 30 carry the same token${most === 1 ? '' : ' (or the next one)'} (${tokens.size} distinct)`);
      // The renewed token is not renewed again by the next requests while it is not due: a
      // token is due half way through its life, and never within 1 s of obtaining it (so a 2 s
      // token is due again 1 s after the renewal, which a slow machine can reach before the
      // next batch is out: then one more grant is right, and only one). The filter's clock for
      // this is in whole seconds: a token obtained at 12.95 s is due at 13 s, 50 ms later. So
      // the earliest it can be due is a whole second boundary after the batch started.
      const again = await Promise.all(Array.from({ length: 10 }, () => orders(b)));
      const sinceRenewal = Date.now() - renewedAt;
      if (Date.now() < earliestDueMs) {
        assert.deepEqual(new Set(again.map((r) => r.token)), tokens, `ttl ${ttl}: ${sinceRenewal} ms after the renewal`);
        assert.equal(grants(await idpStats()) - grants(s0), 1, `ttl ${ttl}: still one grant`);
      } else {
        assert.ok(new Set(again.map((r) => r.token)).size <= 2, `ttl ${ttl}: at most one more token`);
        assert.ok(grants(await idpStats()) - grants(s0) <= 2, `ttl ${ttl}: at most one more grant ${sinceRenewal} ms after the renewal`);
      }
    } finally {
      await boot.stack.startIdp({ BFFGATE_ACCESS_TOKEN_TTL: '300' });
    }
  });
}

// ---------------------------------------------------------------------------------------------

test('return_to with dot segments that resolve off-site lands on /; inside the site they are resolved', { timeout: 60_000 }, async () => {
  for (const [rt, want] of [
    ['/a/..//evil.com', '/'],
    ['/a/%2e%2e//evil.com', '/'],
    ['/a/..%2F%2Fevil.com', '/'],
    ['/a/..%5C%5Cevil.com', '/'],
    ['/../x', '/'],
    ['/orders/../profile?x=1', '/profile?x=1'],
  ]) {
    const b = new Browser({ name: 'rt-dots' });
    const r = await login(b, 'alice', 'alice', { returnTo: rt });
    assert.equal(r.callback.status, 302, d(r.callback));
    assert.equal(r.callback.location, want, `return_to ${rt}`);
  }
});

test('an upstream cannot set bffgate\'s cookies: they are stripped, its own cookie passes', async () => {
  const b = new Browser({ name: 'planted' });
  await loginOk(b, 'alice');
  const session = b.sessionCookie;
  const r = await b.get(`${APP}/api/public/hello?set_cookie=1`, { headers: ACCEPT_JSON });
  assert.equal(r.status, 200, d(r));
  const names = r.setCookies.map((c) => c.split('=')[0]);
  assert.deepEqual(names, ['theme'], `only the upstream's own cookie reaches the browser: ${r.setCookies.join(' | ')}`);
  assert.equal(b.sessionCookie, session, 'the session cookie was not swapped');
  assert.equal((await orders(b)).res.status, 200);
  const m = await prometheus();
  assert.ok((m.get('bffgate_upstream_cookies_removed') || 0) >= 1);
});

// ---------------------------------------------------------------------------------------------

test('operator API: bearer token required, loopback Host only, no browser requests', async () => {
  const good = await operatorRequest('GET', '/sessions?sub=nobody');
  assert.equal(good.status, 200, d(good));
  for (const token of [null, 'wrong-token', `${operatorToken()}x`]) {
    const r = await operatorRequest('GET', '/sessions?sub=nobody', { token });
    assertJsonError(r, 401, 'unauthenticated', `token ${token === null ? 'absent' : 'wrong'}`);
    assert.match(String(r.headers['www-authenticate']), /^Bearer/);
  }
  const basic = await rawRequest('GET', `${OPERATOR}/sessions?sub=x`, { headers: { authorization: `Basic ${operatorToken()}` } });
  assertJsonError(basic, 401, 'unauthenticated', 'Basic instead of Bearer');
  // DNS rebinding: the page's own host name arrives in Host.
  for (const host of ['evil.example:9902', 'localhost.evil.example', '127.0.0.1.nip.io:9902']) {
    const r = await operatorRequest('GET', '/sessions?sub=x', { headers: { host } });
    assertJsonError(r, 403, 'forbidden', `Host ${host}`);
  }
  for (const headers of [{ origin: 'http://127.0.0.1:9902' }, { 'sec-fetch-site': 'same-origin' }, { 'sec-fetch-site': 'cross-site' }]) {
    const r = await operatorRequest('POST', '/sessions/revoke?sub=x', { headers: { ...CSRF, ...headers } });
    assertJsonError(r, 403, 'forbidden', JSON.stringify(headers));
  }
  const ok = await operatorRequest('POST', '/sessions/revoke?sub=nobody', { headers: { ...CSRF, 'sec-fetch-site': 'none' } });
  assert.equal(ok.status, 200, d(ok));
});

// ---------------------------------------------------------------------------------------------

test('CORS per policy: an allowed origin gets its preflight and readable answers with credentials; others are refused', { timeout: 90_000 }, async () => {
  const allowed = 'https://localhost:8444';
  const config = renderVariant('cors', { routes: { 'orders-write': { allowed_origins: [allowed] } } });
  await boot.stack.stop();
  boot = await bootStack({ envoyConfig: config });
  const b = new Browser({ name: 'cors' });
  await loginOk(b, 'alice');
  const pre = (origin, route = '/api/orders') => b.request('OPTIONS', `${APP}${route}`, {
    headers: {
      origin,
      'access-control-request-method': 'POST',
      'access-control-request-headers': 'content-type, x-csrf',
      'sec-fetch-mode': 'cors',
      'sec-fetch-site': 'same-site',
    },
  });
  const p = await pre(allowed);
  assert.equal(p.status, 204, d(p));
  assert.equal(p.headers['access-control-allow-origin'], allowed);
  assert.equal(p.headers['access-control-allow-credentials'], 'true');
  assert.match(String(p.headers['access-control-allow-headers']), /x-csrf/);
  const before = await apiCount('orders');
  for (const origin of ['https://evil.example', 'https://localhost:8445']) {
    const r = await pre(origin);
    assertJsonError(r, 403, 'csrf', `preflight from ${origin}`);
    assert.equal(r.headers['access-control-allow-origin'], undefined);
  }
  assert.equal(await apiCount('orders'), before, 'preflights never reach the upstream');
  // The actual cross-origin POST: forwarded, and readable by the allowed origin.
  const post = await b.request('POST', `${APP}/api/orders`, {
    json: { item: 'cors' },
    headers: { ...ACCEPT_JSON, ...CSRF, origin: allowed, 'sec-fetch-mode': 'cors', 'sec-fetch-site': 'same-site' },
  });
  assert.equal(post.status, 201, d(post));
  assert.equal(post.headers['access-control-allow-origin'], allowed);
  assert.equal(post.headers['access-control-allow-credentials'], 'true');
  // A refusal is readable too (no session).
  const anon = await rawRequest('POST', `${APP}/api/orders`, {
    headers: { ...ACCEPT_JSON, ...CSRF, origin: allowed, 'content-type': 'application/json' }, body: '{}',
  });
  assertJsonError(anon, 401, 'unauthenticated');
  assert.equal(anon.headers['access-control-allow-origin'], allowed);
  // Our own origin needs no CORS headers; another origin's POST is refused without them.
  const own = await b.request('POST', `${APP}/api/orders`, {
    json: { item: 'own' }, headers: { ...ACCEPT_JSON, ...CSRF, origin: APP, 'sec-fetch-site': 'same-origin' },
  });
  assert.equal(own.status, 201, d(own));
  assert.equal(own.headers['access-control-allow-origin'], undefined);
  const evil = await b.request('POST', `${APP}/api/orders`, {
    json: { item: 'evil' }, headers: { ...ACCEPT_JSON, ...CSRF, origin: 'https://evil.example', 'sec-fetch-site': 'cross-site' },
  });
  assertJsonError(evil, 403, 'csrf');
  assert.equal(evil.headers['access-control-allow-origin'], undefined);
});
