// The demo page in a real browser: Debian's Chromium, headless, driven by playwright-core, against
// the real stack (Envoy + bffgate, oidc-provider, demo APIs). One stack and one Chromium for the
// file; a new browser context (own cookie jar and storage) per test.
//
// Proves in the browser what the HTTP-client suites prove on the wire:
// - sign-in through the provider's form, data through bffgate, create order (X-CSRF), sign-out
//   that really ends the session (the old cookie value is dead afterwards);
// - bob (no orders:write) is refused with a visible insufficient_scope message;
// - the session cookie's attributes as the browser stored them, and no token in any
//   script-readable place (document.cookie, localStorage, sessionStorage, the DOM);
// - cross-site and same-site-but-cross-origin attacker pages cannot create an order (form POST,
//   fetch with credentials, no-cors fetch) nor read data (<script src>, <img>).
// Screenshot of the signed-in page: tests/artifacts/signed-in.png (git-ignored).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, beforeEach, test } from 'node:test';

import {
  APP, IDP, SESSION_COOKIE, FLOW_PREFIX, apiCount, rawRequest, resetApis,
} from '../lib/client.mjs';
import { JWT_RE, bootStack, findSecretsInLog } from '../lib/harness.mjs';
import {
  ARTIFACTS, launchChromium, newAppContext, signInThroughPage, startSite, waitForText,
} from '../lib/browser.mjs';

const ORDERS_URL = `${APP}/api/orders`;
const ORDERS_AUD = 'https://orders.api.local';
const PROFILE_AUD = 'https://profile.api.local';

let boot;
let chrome;
const sites = [];
/** Secrets seen by this file (value -> kind), for the log scan at the end. */
const secrets = new Map();

before(async () => {
  boot = await bootStack();
  chrome = await launchChromium();
}, { timeout: 120_000 });

after(async () => {
  for (const s of sites) await s.close();
  if (chrome) await chrome.close();
  if (boot) await boot.stack.stop();
}, { timeout: 60_000 });

beforeEach(async () => {
  await resetApis();
});

/** A fresh context (cookie jar, storage) for one test, closed when the test ends. */
async function context(t, o) {
  const ctx = await newAppContext(chrome, o);
  t.after(() => ctx.close());
  return ctx;
}

/** The session cookie as the browser stores it (or undefined). */
async function sessionCookie(ctx) {
  return (await ctx.cookies(APP)).find((c) => c.name === SESSION_COOKIE);
}

/**
 * The access tokens bffgate forwards for this context's session, learned by the TEST (not the
 * page) through the demo APIs' echo of the Authorization header they received.
 */
async function learnTokens(ctx) {
  const out = {};
  for (const [name, p, aud] of [['orders', '/api/orders', ORDERS_AUD], ['profile', '/api/profile', PROFILE_AUD]]) {
    const r = await ctx.request.get(`${APP}${p}`, { headers: { accept: 'application/json' } });
    assert.equal(r.status(), 200, `GET ${p} by the test: ${await r.text()}`);
    const seen = (await r.json()).seen;
    assert.match(seen.authorization, /^Bearer eyJ/, `${p}: the API saw a bearer JWT`);
    assert.equal(seen.claims.aud, aud, `${p}: token audience`);
    // Defence: bffgate strips its own cookies before forwarding.
    assert.ok(!/__Host-bff/i.test(String(seen.cookie)), `${p}: no __Host-bff-* cookie upstream: ${String(seen.cookie).replace(/=[^;]{12,}/g, '=<value>')}`);
    const token = seen.authorization.slice('Bearer '.length);
    secrets.set(token, `${name} access token`);
    out[name] = token;
  }
  return out;
}

/** Orders of the session in `ctx`, listed by the test through bffgate. */
async function listOrders(ctx) {
  const r = await ctx.request.get(ORDERS_URL, { headers: { accept: 'application/json' } });
  assert.equal(r.status(), 200, `GET /api/orders by the test: ${await r.text()}`);
  return (await r.json()).orders;
}

/** Records every response of `ctx` for POST /api/orders (the browser's view of the network). */
function recordOrderPosts(ctx) {
  const seen = [];
  ctx.on('response', (r) => {
    if (r.url().startsWith(ORDERS_URL) && r.request().method() === 'POST') {
      seen.push({ status: r.status(), headers: r.headers(), response: r });
    }
  });
  return seen;
}

// ---------------------------------------------------------------------------------------------
// the happy path as a person sees it

test('alice signs in through the provider\'s form and sees her profile and orders (screenshot saved)', async (t) => {
  const ctx = await context(t);
  const page = await ctx.newPage();
  // The page itself never sends an Authorization header: only bffgate adds the bearer.
  const pageAuthorization = [];
  page.on('request', (r) => {
    if (r.url().startsWith(APP) && r.headers().authorization !== undefined) pageAuthorization.push(r.url());
  });

  await signInThroughPage(page, 'alice');
  const status = await waitForText(page, '#status', /Signed in as/);
  assert.match(status, /alice/i, `#status names alice: ${status}`);
  assert.ok(await page.isVisible('#signout'), 'sign-out button shown');
  assert.ok(await page.isHidden('#signin'), 'sign-in button hidden');
  assert.ok(await page.isVisible('#expiry'), 'session expiry shown');
  // data fetched through bffgate, each with the token of its own audience
  await waitForText(page, '#profile', /sub: alice/);
  await waitForText(page, '#profile', new RegExp(`aud: ${PROFILE_AUD.replace(/\./g, '\\.')}`));
  await waitForText(page, '#orders', /No orders yet/);
  await waitForText(page, '#orders', new RegExp(`aud: ${ORDERS_AUD.replace(/\./g, '\\.')}`));
  await waitForText(page, '#public', /message: hello/);

  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const shot = path.join(ARTIFACTS, 'signed-in.png');
  await page.screenshot({ path: shot, fullPage: true });
  assert.ok(fs.statSync(shot).size > 1000, `screenshot written: ${shot}`);
  assert.deepEqual(pageAuthorization, [], 'the page sent no Authorization header');
});

test('alice creates an order with the button (POST with X-CSRF) and sees it listed', async (t) => {
  const ctx = await context(t);
  const page = await ctx.newPage();
  await signInThroughPage(page, 'alice');
  await waitForText(page, '#orders', /No orders yet/);

  const [post] = await Promise.all([
    page.waitForResponse((r) => r.url() === ORDERS_URL && r.request().method() === 'POST'),
    page.click('#create-order'),
  ]);
  assert.equal(post.status(), 201, `POST /api/orders from the page: ${await post.text()}`);
  const sent = await post.request().allHeaders();
  assert.equal(sent['x-csrf'], '1', 'the page sends the CSRF header');
  assert.equal(sent['sec-fetch-site'], 'same-origin', 'a same-origin request');
  const created = (await post.json()).order;
  assert.ok(created.item.startsWith('Demo item 1'), `order item: ${created.item}`);

  const msg = await waitForText(page, '#message', /Order created/);
  assert.ok(msg.includes(created.item), `#message names the order: ${msg}`);
  assert.equal(await page.getAttribute('#message', 'class'), '', 'success is not styled as an error');
  await waitForText(page, '#orders', new RegExp(created.item.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));

  // stored server-side: the API lists it, and a reload shows it again
  const list = await listOrders(ctx);
  assert.deepEqual(list.map((o) => o.id), [created.id], 'exactly the created order');
  await page.reload();
  await waitForText(page, '#orders', /Demo item 1/);
});

// ---------------------------------------------------------------------------------------------
// cookie jar and script-readable storage

test('cookie jar: __Host-bff-session is HttpOnly, Secure, SameSite=Lax, Path=/, host-only, small; no token readable by scripts', async (t) => {
  const ctx = await context(t);
  const page = await ctx.newPage();
  await signInThroughPage(page, 'alice');
  await waitForText(page, '#orders', /No orders yet/);
  await waitForText(page, '#profile', /sub: alice/);
  // the page handles API answers that echo the bearer (by design of the demo APIs) and POSTs
  await page.click('#create-order');
  await waitForText(page, '#message', /Order created/);
  await waitForText(page, '#orders', /Demo item 1/);

  // Defence: cookie attributes (filter's Set-Cookie), as the browser really stored them.
  const all = await ctx.cookies();
  const appCookies = await ctx.cookies(APP);
  const sessions = appCookies.filter((c) => c.name === SESSION_COOKIE);
  assert.equal(sessions.length, 1, `one session cookie: ${appCookies.map((c) => c.name)}`);
  const s = sessions[0];
  secrets.set(s.value, 'session cookie value');
  assert.equal(s.httpOnly, true, 'HttpOnly (scripts cannot read it)');
  assert.equal(s.secure, true, 'Secure');
  assert.equal(s.sameSite, 'Lax', 'SameSite=Lax');
  assert.equal(s.path, '/', 'Path=/');
  assert.equal(s.domain, 'localhost', 'host-only cookie: no Domain attribute (a Domain cookie shows as ".localhost")');
  assert.ok(`${s.name}=${s.value}`.length < 4096, `name+value under 4096 bytes (${s.name.length + 1 + s.value.length})`);
  assert.ok(!JWT_RE.test(s.value), 'the session cookie is not a JWT');
  // Defence: flow cookies are per login attempt and cleared on callback.
  const flows = all.filter((c) => c.name.startsWith(FLOW_PREFIX));
  assert.deepEqual(flows.map((c) => c.name), [], 'no flow cookie left after the callback');

  // the real tokens, learned by the test through the APIs' echo (not by the page)
  const tokens = await learnTokens(ctx);
  assert.notEqual(tokens.orders, tokens.profile, 'one token per audience');
  for (const [kind, token] of Object.entries(tokens)) {
    assert.ok(!s.value.includes(token) && !s.value.includes(token.split('.')[2]), `${kind} token not in the cookie value`);
  }

  // Defence: tokens stay server-side. Nothing a script (or an XSS) can read holds one.
  for (const p of [page, await ctx.newPage()]) {
    if (p !== page) {
      await p.goto(`${APP}/`);
      await waitForText(p, '#orders', /Demo item 1/);
    }
    const readable = await p.evaluate(() => ({
      cookie: document.cookie,
      local: JSON.stringify(Object.fromEntries(Object.entries(localStorage))),
      session: JSON.stringify(Object.fromEntries(Object.entries(sessionStorage))),
      dom: document.documentElement.outerHTML,
      localLength: localStorage.length,
      sessionLength: sessionStorage.length,
    }));
    assert.ok(!readable.cookie.includes(SESSION_COOKIE), `document.cookie does not show the HttpOnly session cookie: ${readable.cookie}`);
    assert.ok(!readable.cookie.includes(s.value), 'document.cookie does not hold the session value');
    assert.equal(readable.localLength, 0, `localStorage is empty: ${readable.local}`);
    assert.equal(readable.sessionLength, 0, `sessionStorage is empty: ${readable.session}`);
    for (const [where, text] of Object.entries({
      'document.cookie': readable.cookie, localStorage: readable.local, sessionStorage: readable.session, DOM: readable.dom,
    })) {
      for (const [kind, token] of Object.entries(tokens)) {
        assert.ok(!text.includes(token), `${kind} token in ${where}`);
        assert.ok(!text.includes(token.split('.')[2]), `${kind} token signature in ${where}`);
      }
      assert.ok(!JWT_RE.test(text), `no JWT-looking string in ${where}`);
    }
  }
  // and no cookie of any origin in this browser holds a token
  for (const c of all) {
    for (const [kind, token] of Object.entries(tokens)) assert.ok(!c.value.includes(token), `${kind} token in cookie ${c.name} (${c.domain})`);
    assert.ok(!JWT_RE.test(c.value), `no JWT-looking cookie value: ${c.name} (${c.domain})`);
  }
});

// ---------------------------------------------------------------------------------------------
// sign-out

test('sign out: the page signs out at bffgate and the provider; the old cookie value no longer works anywhere', async (t) => {
  const ctx = await context(t);
  const page = await ctx.newPage();
  await signInThroughPage(page, 'alice');
  await waitForText(page, '#orders', /No orders yet/);
  const old = (await sessionCookie(ctx)).value;
  secrets.set(old, 'session cookie value');

  const [logout] = await Promise.all([
    page.waitForResponse((r) => r.url() === `${APP}/auth/logout` && r.request().method() === 'POST'),
    page.click('#signout'),
  ]);
  // (the body is gone once the page navigates on to the provider: status and headers only)
  assert.equal(logout.status(), 200, 'POST /auth/logout answers 200');
  const cleared = (await logout.headerValues('set-cookie')).join('\n');
  assert.match(cleared, new RegExp(`${SESSION_COOKIE}=[^\n]*(Max-Age=0|Expires=Thu, 01 Jan 1970)`, 'i'), `logout expires the session cookie: ${cleared.replace(/=[^;\n]{16,}/g, '=<value>')}`);
  assert.equal((await logout.request().allHeaders())['x-csrf'], '1', 'the page sends X-CSRF on logout');
  // then the provider's end-session page (RP-initiated logout): confirm, and back to the app
  await page.waitForURL((u) => u.origin === IDP && u.pathname === '/session/end');
  await Promise.all([
    page.waitForURL(`${APP}/`),
    page.click('#logout-yes'),
  ]);
  await waitForText(page, '#status', /Not signed in/);
  assert.ok(await page.isVisible('#signin'), 'sign-in button shown again');
  assert.ok(await page.isHidden('#apis'), 'no data section when signed out');
  assert.equal(await sessionCookie(ctx), undefined, 'the browser dropped the session cookie');

  // Defence: logout destroys the session server-side; the cookie value alone is worthless.
  const n0 = await apiCount('orders');
  // (1) the old value planted in a brand-new browser context
  const thief = await context(t);
  await thief.addCookies([{
    name: SESSION_COOKIE, value: old, url: APP, secure: true, httpOnly: true, sameSite: 'Lax',
  }]);
  const r1 = await thief.request.get(ORDERS_URL, { headers: { accept: 'application/json' } });
  assert.equal(r1.status(), 401, `old cookie in a fresh context: ${await r1.text()}`);
  assert.equal((await r1.json()).error, 'unauthenticated');
  const thiefPage = await thief.newPage();
  await thiefPage.goto(`${APP}/`);
  await waitForText(thiefPage, '#status', /Not signed in/);
  // (2) the old value sent by a plain HTTP client, on every protected route and /auth/user
  for (const p of ['/api/orders', '/api/profile', '/auth/user']) {
    const r = await rawRequest('GET', `${APP}${p}`, { headers: { accept: 'application/json', cookie: `${SESSION_COOKIE}=${old}` } });
    assert.equal(r.status, 401, `old cookie on ${p}: ${r.status} ${r.text}`);
  }
  const post = await rawRequest('POST', ORDERS_URL, {
    headers: { accept: 'application/json', 'content-type': 'application/json', 'x-csrf': '1', cookie: `${SESSION_COOKIE}=${old}` },
    body: JSON.stringify({ item: 'after logout' }),
  });
  assert.equal(post.status, 401, `old cookie, POST: ${post.status} ${post.text}`);
  assert.equal(await apiCount('orders'), n0, 'the orders API saw none of these requests');
});

// ---------------------------------------------------------------------------------------------
// scopes, visibly

test('bob (no orders:write) presses "Create order": refused with a visible insufficient_scope message, no order made', async (t) => {
  const ctx = await context(t);
  const page = await ctx.newPage();
  await signInThroughPage(page, 'bob');
  await waitForText(page, '#status', /bob/i);
  await waitForText(page, '#orders', /No orders yet/);
  await waitForText(page, '#profile', /sub: bob/);

  const [post] = await Promise.all([
    page.waitForResponse((r) => r.url() === ORDERS_URL && r.request().method() === 'POST'),
    page.click('#create-order'),
  ]);
  // Defence: route policy scopes (orders-write needs orders:write), decided by bffgate.
  assert.equal(post.status(), 403, `bob's POST: ${await post.text()}`);
  assert.equal((await post.json()).error, 'insufficient_scope');
  const msg = await waitForText(page, '#message', /insufficient_scope/);
  assert.match(msg, /403/, `#message shows the status: ${msg}`);
  assert.ok(await page.isVisible('#message'), '#message is visible');
  assert.equal(await page.getAttribute('#message', 'class'), 'error', '#message is styled as an error');
  assert.deepEqual(await listOrders(ctx), [], 'bob has no order');
});

// ---------------------------------------------------------------------------------------------
// attacker pages in the same browser

const ATTACK_BODY = JSON.stringify({ item: 'pwned by another site' });

/** Attacker pages; `target` is the app's orders URL. */
function attackerPages() {
  const esc = (s) => s.replace(/&/g, '&amp;').replace(/"/g, '&quot;').replace(/</g, '&lt;');
  return {
    // text/plain form that makes a JSON body: {"item":"pwned…","x":"="}
    '/form-json': `<!DOCTYPE html><title>win a prize</title>
<form id="f" method="POST" action="${ORDERS_URL}" enctype="text/plain">
<input type="hidden" name="${esc(ATTACK_BODY.slice(0, -1))},&quot;x&quot;:&quot;" value="&quot;}">
</form><script>document.getElementById('f').submit();</script>`,
    // url-encoded form that carries "X-CSRF: 1" in the BODY (a header cannot be set by a form)
    '/form-urlencoded': `<!DOCTYPE html><title>win a prize</title>
<form id="f" method="POST" action="${ORDERS_URL}">
<input type="hidden" name="X-CSRF" value="1"><input type="hidden" name="item" value="pwned">
</form><script>document.getElementById('f').submit();</script>`,
    '/fetch': `<!DOCTYPE html><title>win a prize</title><script>
window.results = {};
(async () => {
  const url = ${JSON.stringify(ORDERS_URL)};
  const body = ${JSON.stringify(ATTACK_BODY)};
  try {
    const r = await fetch(url, { method: 'POST', credentials: 'include',
      headers: { 'X-CSRF': '1', 'content-type': 'application/json' }, body });
    results.cors = { status: r.status, text: await r.text() };
  } catch (e) { results.cors = { error: String(e) }; }
  try {
    const r = await fetch(url, { method: 'POST', mode: 'no-cors', credentials: 'include',
      headers: { 'content-type': 'text/plain' }, body });
    results.noCors = { type: r.type, status: r.status, text: await r.text() };
  } catch (e) { results.noCors = { error: String(e) }; }
  try {
    const r = await fetch(url, { credentials: 'include' });
    results.read = { status: r.status, text: await r.text() };
  } catch (e) { results.read = { error: String(e) }; }
  results.done = true;
})();
</script>`,
    '/embed': `<!DOCTYPE html><title>cute cats</title><script>
window.results = { script: 'pending', img: 'pending' };
window.addEventListener('error', (e) => { results.scriptError = String(e.message); }, true);
</script>
<script src="${ORDERS_URL}" onload="results.script='load'" onerror="results.script='error'"></script>
<img src="${ORDERS_URL}" onload="results.img='load'" onerror="results.img='error'">
<script>window.addEventListener('load', () => { results.done = true; });</script>`,
  };
}

/** Navigates `page` to an attacker form page and waits for the browser's POST to the app. */
async function submitAttackForm(page, site, p, posts) {
  const n = posts.length;
  await page.goto(`${site.origin}${p}`, { waitUntil: 'commit' });
  const deadline = Date.now() + 10_000;
  while (posts.length === n && Date.now() < deadline) await page.waitForTimeout(50);
  assert.ok(posts.length > n, `the browser POSTed the ${p} form to the app`);
  await page.waitForLoadState('load');
  return posts[posts.length - 1];
}

test('cross-site attacker page (http://127.0.0.1, another site) cannot create an order: form POSTs and fetch refused', async (t) => {
  const site = await startSite(attackerPages());
  sites.push(site);
  const ctx = await context(t);
  const posts = recordOrderPosts(ctx);
  const page = await ctx.newPage();
  await signInThroughPage(page, 'alice');
  await waitForText(page, '#orders', /No orders yet/);
  const n0 = await apiCount('orders');

  // (a) auto-submitted forms. Defences: SameSite=Lax (the browser sends no session cookie on a
  // cross-site POST) and bffgate's CSRF check (no X-CSRF header; a body field is not a header;
  // Sec-Fetch-Site cross-site). Either way bffgate refuses and the upstream sees nothing.
  for (const p of ['/form-json', '/form-urlencoded']) {
    const atk = await submitAttackForm(page, site, p, posts);
    assert.ok([401, 403].includes(atk.status) || (atk.status === 302 && /\/auth\/login/.test(atk.headers.location || '')),
      `${p}: refused by bffgate (401/403, or a redirect to sign-in), got ${atk.status} ${atk.headers.location || ''}`);
    t.diagnostic(`${p}: bffgate answered ${atk.status}${atk.headers.location ? ` -> ${atk.headers.location}` : ''}`);
    const req = atk.response.request();
    const sentHeaders = await req.allHeaders();
    assert.equal(sentHeaders['sec-fetch-site'], 'cross-site', `${p}: the browser marks it cross-site`);
    assert.ok(!String(sentHeaders.cookie || '').includes(SESSION_COOKIE), `${p}: SameSite=Lax kept the session cookie off a cross-site POST`);
  }

  // (b) fetch with credentials and the CSRF header: needs a CORS preflight, which bffgate/Envoy
  // never grant (no Access-Control-Allow-* anywhere), so the browser never sends the POST.
  // A no-cors POST (no custom header possible) goes out without the cookie and is refused.
  await page.goto(`${site.origin}/fetch`);
  await page.waitForFunction(() => window.results && window.results.done, null, { timeout: 10_000 });
  const results = await page.evaluate(() => window.results);
  assert.match(String(results.cors.error), /TypeError|Failed to fetch/, `credentialed fetch with X-CSRF blocked: ${JSON.stringify(results.cors)}`);
  assert.deepEqual({ type: results.noCors.type, status: results.noCors.status, text: results.noCors.text }, { type: 'opaque', status: 0, text: '' },
    `no-cors POST: opaque, nothing readable: ${JSON.stringify(results.noCors)}`);
  assert.ok(results.read.error, `cross-site read of /api/orders blocked by CORS: ${JSON.stringify(results.read)}`);
  const noCorsPosts = posts.filter((r) => r.response.request().resourceType() === 'fetch');
  t.diagnostic(`fetch POSTs that left the browser: ${noCorsPosts.map((r) => r.status).join(', ') || 'none'}`);
  // only the no-cors POST left the browser (the credentialed one died at its preflight)
  assert.equal(noCorsPosts.length, 1, `one fetch POST reached the app: ${noCorsPosts.map((r) => r.status)}`);
  for (const r of noCorsPosts) assert.ok([401, 403].includes(r.status), `no-cors POST refused by bffgate: ${r.status}`);

  // no order: the orders API saw no request at all, and alice's list is empty
  assert.equal(await apiCount('orders'), n0, 'the orders API saw none of the attacker\'s requests');
  assert.deepEqual(await listOrders(ctx), [], 'alice has no order');
  // and alice's session is unharmed
  await page.goto(`${APP}/`);
  await waitForText(page, '#status', /Signed in as/);
});

test('same-site but cross-origin page (https://localhost:<other port>) gets the cookie yet cannot create an order: bffgate\'s CSRF check', async (t) => {
  // Same site (scheme https, host localhost), so SameSite=Lax does NOT protect here: the browser
  // attaches the session cookie to the form POST. Only bffgate's check (X-CSRF header, Origin /
  // Sec-Fetch-Site) stands between this page and an order — the test fails if that check goes.
  const site = await startSite(attackerPages(), { tls: true });
  sites.push(site);
  const ctx = await context(t);
  const posts = recordOrderPosts(ctx);
  const page = await ctx.newPage();
  await signInThroughPage(page, 'alice');
  await waitForText(page, '#orders', /No orders yet/);
  const n0 = await apiCount('orders');

  for (const p of ['/form-json', '/form-urlencoded']) {
    const atk = await submitAttackForm(page, site, p, posts);
    const sentHeaders = await atk.response.request().allHeaders();
    assert.ok(String(sentHeaders.cookie || '').includes(SESSION_COOKIE), `${p}: precondition: the browser sent the session cookie (same-site)`);
    assert.equal(sentHeaders['sec-fetch-site'], 'same-site', `${p}: Sec-Fetch-Site same-site`);
    assert.equal(sentHeaders.origin, site.origin, `${p}: Origin is the sibling's`);
    assert.equal(atk.status, 403, `${p}: bffgate refuses with 403`);
    assert.equal((await atk.response.json()).error, 'csrf', `${p}: error csrf`);
  }
  await page.goto(`${site.origin}/fetch`);
  await page.waitForFunction(() => window.results && window.results.done, null, { timeout: 10_000 });
  const results = await page.evaluate(() => window.results);
  assert.match(String(results.cors.error), /TypeError|Failed to fetch/, `credentialed fetch with X-CSRF blocked (no CORS): ${JSON.stringify(results.cors)}`);
  assert.equal(results.noCors.type, 'opaque', `no-cors POST is opaque: ${JSON.stringify(results.noCors)}`);
  assert.ok(results.read.error, `cross-origin read blocked by CORS: ${JSON.stringify(results.read)}`);
  const fetchPosts = posts.filter((x) => x.response.request().resourceType() === 'fetch');
  assert.equal(fetchPosts.length, 1, `only the no-cors POST left the browser: ${fetchPosts.map((r) => r.status)}`);
  assert.equal(fetchPosts[0].status, 403, 'no-cors POST (cookie attached, no X-CSRF) refused by bffgate');

  // The one credentialed GET (results.read) did reach the orders API: same-site, safe method,
  // so neither SameSite nor CSRF applies; CORS kept its answer from the page. No POST got through.
  assert.equal(await apiCount('orders'), n0 + 1, 'the orders API saw only the sibling\'s GET, none of its POSTs');
  assert.deepEqual(await listOrders(ctx), [], 'alice has no order');
});

test('cross-site <script src> / <img> of /api/orders: no cookie sent, the upstream sees nothing, nothing readable', async (t) => {
  // Defence: SameSite=Lax keeps the session cookie off cross-site subresource requests, so the
  // filter answers 401 and the upstream is never reached (and JSON + nosniff is not a script).
  const site = await startSite(attackerPages());
  sites.push(site);
  const ctx = await context(t);
  const page = await ctx.newPage();
  await signInThroughPage(page, 'alice');
  await waitForText(page, '#orders', /No orders yet/);
  const n0 = await apiCount('orders');
  const seen = [];
  page.on('response', (r) => {
    if (r.url() === ORDERS_URL) seen.push({ status: r.status(), type: r.request().resourceType() });
  });
  await page.goto(`${site.origin}/embed`);
  await page.waitForFunction(() => window.results && window.results.done, null, { timeout: 10_000 });
  const results = await page.evaluate(() => window.results);
  assert.equal(results.script, 'error', `the <script> did not load: ${JSON.stringify(results)}`);
  assert.equal(results.img, 'error', `the <img> did not load: ${JSON.stringify(results)}`);
  for (const r of seen) assert.equal(r.status, 401, `${r.type} request answered 401 (no session cookie sent cross-site)`);
  assert.equal(await apiCount('orders'), n0, 'the orders API saw nothing');
});

test('no token or session cookie value from the browser tests in Envoy\'s log', () => {
  assert.ok(secrets.size >= 3, `secrets collected by the earlier tests: ${[...secrets.values()]}`);
  const hits = findSecretsInLog(boot.envoyLog, boot.offset, secrets);
  assert.deepEqual(hits, []);
});
