// Step-up authentication per route (RFC 9470) through the real stack: Envoy + bffgate, the demo
// oidc-provider (which asks for a one-time code when `acr_values` names its second factor), the
// demo APIs, and Debian's Chromium for the demo page.
//
// - GET /api/orders/export (route orders-export: acr urn:bffgate:demo:mfa, max_age_s 300) after
//   a password sign-in: 401 insufficient_user_authentication with acr_values, max_age, login_url
//   and an RFC 9470 WWW-Authenticate; a navigation gets a 302 to the step-up login;
// - the step-up login (password + TOTP) upgrades the session: new cookie, same user, the
//   profile token obtained before is still the one forwarded, the export is served;
// - a wrong one-time code leaves the old session as it was;
// - the orders API's own step-up challenge (GET /api/orders/audit) reaches the browser as
//   bffgate's JSON answer, never as the upstream's raw challenge, and is not retried;
// - in Chromium: the demo page's Export button, the step-up, the export after it.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, test } from 'node:test';

import {
  APP, Browser, IDP, SESSION_COOKIE, apiCount, login, loginOk, resetApis,
} from '../lib/client.mjs';
import { assertJsonError, bootStack } from '../lib/harness.mjs';
import { launchChromium, newAppContext, signInThroughPage, waitForText } from '../lib/browser.mjs';

const MFA = 'urn:bffgate:demo:mfa';
const PWD = 'urn:bffgate:demo:pwd';
// The demo IdP's authenticator secrets (demo/idp.mjs), public like the demo passwords.
const TOTP_SECRETS = { alice: 'JBSWY3DPEHPK3PXP', bob: 'KRSXG5CTMVRXEZLU' };

/** RFC 6238 (SHA-1, 30 s, 6 digits), computed independently of the IdP's code. */
function totp(user, ms = Date.now()) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0; let value = 0; const key = [];
  for (const c of TOTP_SECRETS[user]) {
    value = (value << 5) | alphabet.indexOf(c); bits += 5;
    if (bits >= 8) { key.push((value >>> (bits - 8)) & 0xff); bits -= 8; }
  }
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(ms / 30000)));
  const h = crypto.createHmac('sha1', Buffer.from(key)).update(counter).digest();
  const o = h[h.length - 1] & 0xf;
  const n = ((h[o] & 0x7f) << 24) | (h[o + 1] << 16) | (h[o + 2] << 8) | h[o + 3];
  return String(n % 1_000_000).padStart(6, '0');
}

let boot;
let chrome;
const browsers = [];
function browser(name) {
  const b = new Browser({ name });
  browsers.push(b);
  return b;
}

before(async () => {
  boot = await bootStack();
  await resetApis();
}, { timeout: 120_000 });

after(async () => {
  for (const b of browsers) b.close();
  if (chrome) await chrome.close();
  if (boot) await boot.stack.stop();
}, { timeout: 60_000 });

const userOf = async (b) => (await b.fetchApi('GET', `${APP}/auth/user`)).json;

test('a password sign-in gets 401 insufficient_user_authentication on the export route, a navigation a step-up login', async () => {
  const b = browser('pwd');
  await loginOk(b, 'alice');
  assert.equal((await userOf(b)).acr, PWD, 'the session knows the sign-in level');
  const before = await apiCount('orders');
  const r = await b.fetchApi('GET', `${APP}/api/orders/export`);
  assertJsonError(r, 401, 'insufficient_user_authentication');
  assert.equal(r.json.acr_values, MFA);
  assert.equal(r.json.max_age, 300);
  const url = new URL(r.json.login_url, APP);
  assert.equal(url.pathname, '/auth/login');
  assert.equal(url.searchParams.get('return_to'), '/api/orders/export');
  assert.equal(url.searchParams.get('acr_values'), MFA);
  assert.equal(url.searchParams.get('max_age'), '300');
  const challenge = String(r.headers['www-authenticate']);
  assert.match(challenge, /^Bearer error="insufficient_user_authentication"/);
  assert.match(challenge, new RegExp(`acr_values="${MFA}"`));
  assert.match(challenge, /max_age="300"/);
  assert.equal(await apiCount('orders'), before, 'nothing reached the API');
  // A navigation goes to the step-up login, which asks the provider for the level.
  const nav = await b.navigate(`${APP}/api/orders/export`);
  assert.equal(nav.status, 302);
  const loc = new URL(nav.location, APP);
  assert.equal(loc.pathname, '/auth/login');
  assert.equal(loc.searchParams.get('acr_values'), MFA);
  const start = await b.navigate(loc.href);
  assert.equal(start.status, 302);
  const authz = new URL(start.location);
  assert.equal(authz.searchParams.get('acr_values'), MFA);
  assert.equal(authz.searchParams.get('max_age'), '300');
  // Other routes are unaffected.
  assert.equal((await b.fetchApi('GET', `${APP}/api/orders`)).status, 200);
});

test('the step-up login upgrades the session: same user, other audiences\' tokens kept, export served', async () => {
  const b = browser('stepup');
  await loginOk(b, 'alice');
  const profile1 = await b.fetchApi('GET', `${APP}/api/profile`);
  assert.equal(profile1.status, 200);
  const token1 = profile1.json.seen.authorization;
  const cookie1 = b.sessionCookie;
  const ask = await b.fetchApi('GET', `${APP}/api/orders/export`);
  const q = new URL(ask.json.login_url, APP).search.slice(1);
  const r = await login(b, 'alice', 'alice', { query: q, otp: () => totp('alice') });
  assert.equal(r.callback.status, 302, r.callback.text);
  assert.equal(r.callback.location, '/api/orders/export', 'back to where step-up was asked');
  const cookie2 = b.sessionCookie;
  assert.ok(cookie2 && cookie2 !== cookie1, 'a fresh session id');
  const u = await userOf(b);
  assert.equal(u.acr, MFA);
  assert.equal(u.sub, 'alice');
  assert.ok(Math.abs(u.auth_time - Date.now() / 1000) < 60, `auth_time ${u.auth_time} is the new sign-in`);
  const exp = await b.fetchApi('GET', `${APP}/api/orders/export`);
  assert.equal(exp.status, 200, exp.text);
  assert.equal(exp.json.export.format, 'json');
  const profile2 = await b.fetchApi('GET', `${APP}/api/profile`);
  assert.equal(profile2.status, 200);
  assert.equal(profile2.json.seen.authorization, token1, 'the profile token obtained before the step-up is still used');
  // The cookie from before the step-up is dead.
  const old = browser('old-cookie');
  old.setCookie(SESSION_COOKIE, cookie1);
  assertJsonError(await old.fetchApi('GET', `${APP}/api/orders`), 401, 'unauthenticated');
});

test('a wrong one-time code changes nothing: the session stays at its level', async () => {
  const b = browser('wrong-otp');
  await loginOk(b, 'bob');
  const cookie = b.sessionCookie;
  const q = new URLSearchParams({ return_to: '/', acr_values: MFA, max_age: '300' }).toString();
  await assert.rejects(
    login(b, 'bob', 'bob', { query: q, otp: '000000' === totp('bob') ? '111111' : '000000' }),
    /unexpected IdP answer 401/,
    'the IdP refuses the code and shows its form again',
  );
  assert.equal(b.sessionCookie, cookie);
  const u = await userOf(b);
  assert.equal(u.sub, 'bob');
  assert.equal(u.acr, PWD);
  assertJsonError(await b.fetchApi('GET', `${APP}/api/orders/export`), 401, 'insufficient_user_authentication');
});

test('an upstream\'s own step-up challenge becomes bffgate\'s JSON answer, not retried', async () => {
  const b = browser('upstream');
  await loginOk(b, 'alice');
  const before = await apiCount('orders');
  const r = await b.fetchApi('GET', `${APP}/api/orders/audit?since=2026-01-01`);
  assertJsonError(r, 401, 'insufficient_user_authentication');
  assert.equal(r.json.acr_values, MFA);
  assert.equal(r.json.max_age, 60);
  const url = new URL(r.json.login_url, APP);
  assert.equal(url.searchParams.get('return_to'), '/api/orders/audit?since=2026-01-01');
  assert.equal(url.searchParams.get('max_age'), '60');
  assert.equal(r.json.api, undefined, 'the upstream body is not passed on');
  const challenge = String(r.headers['www-authenticate']);
  assert.ok(!challenge.includes('A second factor is required'), `not the upstream's raw challenge: ${challenge}`);
  assert.match(challenge, /^Bearer error="insufficient_user_authentication"/);
  assert.equal(await apiCount('orders'), before + 1, 'one request upstream: no retry');
  // The session is untouched.
  assert.equal((await b.fetchApi('GET', `${APP}/api/orders`)).status, 200);
});

test('Chromium: the demo page shows the step-up and exports after it', async (t) => {
  chrome = chrome || await launchChromium();
  const ctx = await newAppContext(chrome);
  t.after(() => ctx.close());
  const page = await ctx.newPage();
  await signInThroughPage(page, 'alice');
  await waitForText(page, '#level', new RegExp(PWD));
  await page.click('#export-orders');
  await waitForText(page, '#export', /Step-up required/);
  assert.equal(await page.isVisible('#stepup'), true);
  await Promise.all([
    page.waitForURL((u) => u.origin === IDP && u.pathname.startsWith('/interaction/')),
    page.click('#stepup'),
  ]);
  assert.equal(await page.isVisible('#otp'), true, 'the provider asks for the second factor');
  await page.fill('#login', 'alice');
  await page.fill('#password', 'alice');
  await page.fill('#otp', totp('alice'));
  await Promise.all([
    page.waitForURL((u) => u.origin === APP && u.pathname === '/'),
    page.click('#submit'),
  ]);
  await waitForText(page, '#level', new RegExp(MFA));
  await waitForText(page, '#export', /Exported \d+ order/);
  await waitForText(page, '#profile', /alice|Alice/);
});
