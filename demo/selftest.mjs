// Self-test of the demo identity provider and demo APIs, acting as the bffgate client without
// Envoy: authorize (PKCE S256, state, nonce, both resources, prompt=consent) through the login
// form with a cookie jar, code exchange for the orders audience, refresh for the profile audience,
// API calls with those bearers, per-user scopes (bob), revocation, /__stats, wrong audience,
// RFC 8693 token exchange, refresh down-scoping, exact counters under concurrency and (--spawn
// only: they change shared state) the /__fault fault injection and forged subject tokens.
//
// Usage:
//   node demo/selftest.mjs           test the running processes (IdP :9000, APIs :9101-9103);
//                                    needs BFFGATE_CLIENT_SECRET (and honours BFFGATE_IDP_PORT,
//                                    BFFGATE_API_*_PORT, BFFGATE_ACCESS_TOKEN_TTL)
//   node demo/selftest.mjs --spawn   start its own IdP and APIs on ports 19000, 19101-19103
//                                    (base from SELFTEST_PORT_BASE) with a fresh secret and key
//                                    file, also test key reuse across an IdP restart and refresh
//                                    token rotation, then stop them
// Exit status 0 when every check passed, 1 otherwise. Prints no token values.

import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

import {
  createLocalJWKSet, decodeJwt, decodeProtectedHeader, generateKeyPair, importJWK, jwtVerify, SignJWT,
} from 'jose';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SPAWN = process.argv.includes('--spawn');
const DEADLINE_MS = 90_000;

const ORDERS = 'https://orders.api.local';
const PROFILE = 'https://profile.api.local';
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const AT_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const REDIRECT_URI = 'https://localhost:8443/auth/callback';
const SCOPE = 'openid profile offline_access orders:read orders:write';

let passed = 0;
let failed = 0;
function check(name, cond, detail) {
  if (cond) {
    passed += 1;
    console.log(`ok ${passed + failed} - ${name}`);
  } else {
    failed += 1;
    console.log(`not ok ${passed + failed} - ${name}${detail !== undefined ? ` -- ${typeof detail === 'string' ? detail : JSON.stringify(detail)}` : ''}`);
  }
  return Boolean(cond);
}
class Abort extends Error {}
function must(name, cond, detail) {
  if (!check(name, cond, detail)) throw new Abort(name);
}

// ---------------------------------------------------------------------------------------------
// environment: running processes, or our own

const children = [];
let cfg;

function portEnv(name, dflt) {
  return Number(process.env[name] || dflt);
}

async function waitFor(url, ms = 15000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    try {
      const r = await fetch(url, { signal: AbortSignal.timeout(1000) });
      if (r.status < 500) return true;
    } catch { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 150));
  }
  return false;
}

function startProcess(name, script, env, logFile) {
  const out = fs.openSync(logFile, 'a');
  const child = spawn(process.execPath, [path.join(HERE, script)], {
    env: { ...process.env, ...env }, stdio: ['ignore', out, out],
  });
  fs.closeSync(out);
  const entry = { name, child, exited: new Promise((r) => child.on('exit', (code, sig) => r({ code, sig }))) };
  children.push(entry);
  return entry;
}

async function stopProcess(entry) {
  if (entry.child.exitCode !== null || entry.child.signalCode !== null) return entry.exited;
  entry.child.kill('SIGTERM');
  const res = await Promise.race([entry.exited, new Promise((r) => setTimeout(() => r(null), 3000))]);
  if (res === null) {
    entry.child.kill('SIGKILL');
    return entry.exited;
  }
  return res;
}

async function setup() {
  if (!SPAWN) {
    const idpPort = portEnv('BFFGATE_IDP_PORT', 9000);
    cfg = {
      issuer: `http://localhost:${idpPort}`,
      secret: process.env.BFFGATE_CLIENT_SECRET,
      orders: `http://127.0.0.1:${portEnv('BFFGATE_API_ORDERS_PORT', 9101)}`,
      profile: `http://127.0.0.1:${portEnv('BFFGATE_API_PROFILE_PORT', 9102)}`,
      public: `http://127.0.0.1:${portEnv('BFFGATE_API_PUBLIC_PORT', 9103)}`,
      ttl: portEnv('BFFGATE_ACCESS_TOKEN_TTL', 300),
    };
    must('BFFGATE_CLIENT_SECRET is set', Boolean(cfg.secret));
    return;
  }
  const base = portEnv('SELFTEST_PORT_BASE', 19000);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bffgate-selftest-'));
  cfg = {
    dir,
    issuer: `http://localhost:${base}`,
    secret: crypto.randomBytes(32).toString('base64url'),
    orders: `http://127.0.0.1:${base + 101}`,
    profile: `http://127.0.0.1:${base + 102}`,
    public: `http://127.0.0.1:${base + 103}`,
    ttl: 120,
  };
  cfg.env = {
    BFFGATE_CLIENT_SECRET: cfg.secret,
    BFFGATE_IDP_PORT: String(base),
    BFFGATE_IDP_KEYS: path.join(dir, 'idp-keys.json'),
    BFFGATE_ACCESS_TOKEN_TTL: String(cfg.ttl),
    BFFGATE_ROTATE_REFRESH: '0',
    BFFGATE_BACKCHANNEL_LOGOUT_URI: `http://127.0.0.1:${base + 104}/backchannel`,
    BFFGATE_API_ORDERS_PORT: String(base + 101),
    BFFGATE_API_PROFILE_PORT: String(base + 102),
    BFFGATE_API_PUBLIC_PORT: String(base + 103),
  };
  // stands in for the filter's back-channel logout endpoint
  cfg.logoutTokens = [];
  cfg.backchannel = http.createServer((rq, rs) => {
    const chunks = [];
    rq.on('data', (c) => chunks.push(c));
    rq.on('end', () => {
      const p = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
      if (rq.method === 'POST' && rq.url === '/backchannel' && p.get('logout_token')) cfg.logoutTokens.push(p.get('logout_token'));
      rs.writeHead(200).end();
    });
  });
  await new Promise((r) => cfg.backchannel.listen(base + 104, '127.0.0.1', r));
  cfg.idp = startProcess('idp', 'idp.mjs', cfg.env, path.join(dir, 'idp.log'));
  cfg.api = startProcess('api', 'api.mjs', cfg.env, path.join(dir, 'api.log'));
  must('spawned IdP answers', await waitFor(`${cfg.issuer}/.well-known/openid-configuration`));
  must('spawned APIs answer', await waitFor(`${cfg.public}/__stats`));
}

// ---------------------------------------------------------------------------------------------
// HTTP with a cookie jar (name + path aware; one host)

class Jar {
  constructor() { this.cookies = new Map(); }

  store(res) {
    for (const line of res.headers.getSetCookie()) {
      const [pair, ...attrs] = line.split(';');
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      let cpath = '/';
      let expired = value === '';
      for (const a of attrs) {
        const [k, v = ''] = a.split('=');
        const key = k.trim().toLowerCase();
        if (key === 'path') cpath = v.trim() || '/';
        if (key === 'max-age' && Number(v) <= 0) expired = true;
        if (key === 'expires' && Date.parse(v) <= Date.now()) expired = true;
      }
      const id = `${name}\u0000${cpath}`;
      if (expired) this.cookies.delete(id);
      else this.cookies.set(id, { name, value, path: cpath });
    }
  }

  header(urlPath) {
    const list = [...this.cookies.values()]
      .filter((c) => urlPath === c.path || urlPath.startsWith(c.path.endsWith('/') ? c.path : `${c.path}/`))
      .sort((a, b) => b.path.length - a.path.length);
    return list.map((c) => `${c.name}=${c.value}`).join('; ');
  }
}

async function req(method, url, { jar, headers = {}, body, json } = {}) {
  const u = new URL(url);
  const h = { ...headers };
  if (jar) {
    const c = jar.header(u.pathname);
    if (c) h.cookie = c;
  }
  let payload = body;
  if (body instanceof URLSearchParams) {
    h['content-type'] = 'application/x-www-form-urlencoded';
    payload = body.toString();
  } else if (json !== undefined) {
    h['content-type'] = 'application/json';
    payload = JSON.stringify(json);
  }
  const res = await fetch(u, {
    method, headers: h, body: payload, redirect: 'manual', signal: AbortSignal.timeout(5000),
  });
  if (jar) jar.store(res);
  const text = await res.text();
  let data = null;
  try { data = JSON.parse(text); } catch { data = null; }
  return { status: res.status, headers: res.headers, text, json: data, location: res.headers.get('location') };
}

const basic = () => `Basic ${Buffer.from(`${encodeURIComponent('bffgate')}:${encodeURIComponent(cfg.secret)}`).toString('base64')}`;

function tokenRequest(params) {
  return req('POST', `${cfg.issuer}/token`, {
    headers: { authorization: basic(), accept: 'application/json' },
    body: new URLSearchParams(params),
  });
}

// ---------------------------------------------------------------------------------------------
// the login flow as the filter + a browser would run it

function authorizeUrl({ state, nonce, challenge }) {
  // the parameters bffgate's own authorization request carries (src/oauth.rs, authorize_url)
  const q = [
    ['response_type', 'code'],
    ['client_id', 'bffgate'],
    ['redirect_uri', REDIRECT_URI],
    ['scope', SCOPE],
    ['state', state],
    ['nonce', nonce],
    ['code_challenge', challenge],
    ['code_challenge_method', 'S256'],
    ['prompt', 'consent'],
    ['resource', ORDERS],
    ['resource', PROFILE],
  ].map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join('&');
  return `${cfg.issuer}/auth?${q}`;
}

function formOf(html) {
  const form = /<form[^>]*id="login-form"[^>]*>/i.exec(html)?.[0] || /<form[^>]*>/i.exec(html)?.[0];
  const action = form && /action="([^"]*)"/i.exec(form)?.[1].replace(/&amp;/g, '&');
  const method = form && /method="([^"]*)"/i.exec(form)?.[1];
  return {
    action,
    method,
    hasLogin: /<input[^>]*name="login"/i.test(html),
    hasPassword: /<input[^>]*name="password"[^>]*type="password"|<input[^>]*type="password"[^>]*name="password"/i.test(html),
    hasSubmit: /<button[^>]*type="submit"/i.test(html),
  };
}

// follow 30x on the IdP; stop at the client's redirect_uri (never fetched)
async function follow(jar, first) {
  let r = first;
  for (let hops = 0; hops < 10; hops += 1) {
    if (r.status < 300 || r.status >= 400 || !r.location) return { response: r };
    const next = new URL(r.location, cfg.issuer);
    if (next.href.startsWith(REDIRECT_URI)) return { callback: next };
    if (next.origin !== new URL(cfg.issuer).origin) return { response: r, foreign: next };
    r = await req('GET', next.href, { jar });
  }
  return { response: r, loop: true };
}

async function login(user, password, { badPasswordFirst = false, label = user } = {}) {
  const jar = new Jar();
  const state = crypto.randomBytes(16).toString('base64url');
  const nonce = crypto.randomBytes(16).toString('base64url');
  const verifier = crypto.randomBytes(32).toString('base64url');
  const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');

  const start = await req('GET', authorizeUrl({ state, nonce, challenge }), { jar });
  must(`${label}: /auth redirects to the interaction`, start.status === 303 && /^\/interaction\//.test(new URL(start.location, cfg.issuer).pathname), { status: start.status, body: start.text.slice(0, 300) });
  const interactionUrl = new URL(start.location, cfg.issuer).href;
  const page = await req('GET', interactionUrl, { jar });
  const form = formOf(page.text);
  must(`${label}: login page is an HTML form (POST, login, password, submit)`, page.status === 200
    && /text\/html/.test(page.headers.get('content-type')) && form.method?.toLowerCase() === 'post'
    && form.hasLogin && form.hasPassword && form.hasSubmit && form.action, { status: page.status, form });
  const action = new URL(form.action, interactionUrl).href;

  if (badPasswordFirst) {
    const bad = await req('POST', action, { jar, body: new URLSearchParams({ login: user, password: `${password}-wrong` }) });
    check(`${label}: wrong password re-renders the form with an error`, (bad.status === 200 || bad.status === 401)
      && formOf(bad.text).hasPassword && /invalid/i.test(bad.text), { status: bad.status });
    const unknown = await req('POST', action, { jar, body: new URLSearchParams({ login: 'mallory', password: 'mallory' }) });
    check(`${label}: unknown user re-renders the form`, (unknown.status === 200 || unknown.status === 401) && formOf(unknown.text).hasLogin, { status: unknown.status });
  }

  const posted = await req('POST', action, { jar, body: new URLSearchParams({ login: user, password }) });
  const end = await follow(jar, posted);
  must(`${label}: login + automatic consent end at the client's redirect_uri`, end.callback, {
    status: end.response?.status, location: end.response?.location, body: end.response?.text?.slice(0, 300),
  });
  const cb = end.callback;
  check(`${label}: callback carries the same state`, cb.searchParams.get('state') === state);
  check(`${label}: callback carries iss`, cb.searchParams.get('iss') === cfg.issuer, cb.searchParams.get('iss'));
  const code = cb.searchParams.get('code');
  must(`${label}: callback carries a code`, Boolean(code) && !cb.searchParams.get('error'), cb.searchParams.get('error'));
  return {
    jar, code, verifier, nonce, state,
  };
}

// ---------------------------------------------------------------------------------------------

async function jwks() {
  const r = await req('GET', `${cfg.issuer}/jwks`);
  return r.json;
}

const scopesOf = (claims) => new Set(String(claims?.scope || '').split(' ').filter(Boolean));
const same = (set, list) => set.size === list.length && list.every((s) => set.has(s));
const stats = async () => (await req('GET', `${cfg.issuer}/__stats`)).json;
const apiStats = async (base) => (await req('GET', `${base}/__stats`)).json?.requests;

async function main() {
  await setup();
  const keys = await jwks();
  must('JWKS has an RS256 and an ES256 key', keys?.keys?.some((k) => k.alg === 'RS256') && keys.keys.some((k) => k.alg === 'ES256'), keys);
  check('JWKS exposes no private key material', keys.keys.every((k) => k.d === undefined && k.p === undefined));
  const localKeys = createLocalJWKSet(keys);

  const disco = (await req('GET', `${cfg.issuer}/.well-known/openid-configuration`)).json;
  check('discovery: issuer, S256 only, revocation, introspection, end_session', disco?.issuer === cfg.issuer
    && same(new Set(disco.code_challenge_methods_supported), ['S256']) && disco.revocation_endpoint === `${cfg.issuer}/token/revocation`
    && disco.introspection_endpoint && disco.end_session_endpoint === `${cfg.issuer}/session/end`, disco);
  check('discovery: grant_types_supported has authorization_code, refresh_token and token-exchange', ['authorization_code', 'refresh_token', TOKEN_EXCHANGE]
    .every((g) => disco?.grant_types_supported?.includes(g)), disco?.grant_types_supported);

  const stats0 = await stats();
  must('/__stats answers grants and revocations', stats0?.grants && typeof stats0.grants.authorization_code === 'number'
    && typeof stats0.grants.refresh_token === 'number' && stats0.grants['urn:ietf:params:oauth:grant-type:token-exchange'] === 0
    && typeof stats0.revocations === 'number', stats0);
  for (const base of [cfg.orders, cfg.profile, cfg.public]) {
    await req('POST', `${base}/__reset`);
  }

  // PKCE is mandatory
  {
    const u = new URL(authorizeUrl({ state: 'state-0123456789', nonce: 'nonce-0123456789', challenge: crypto.randomBytes(32).toString('base64url') }));
    u.searchParams.delete('code_challenge');
    u.searchParams.delete('code_challenge_method');
    const r = await req('GET', u.href);
    const loc = r.location ? new URL(r.location, cfg.issuer) : undefined;
    check('authorize without PKCE is refused', loc?.href.startsWith(REDIRECT_URI) && loc.searchParams.get('error') === 'invalid_request', { status: r.status, error: loc?.searchParams.get('error') });
  }
  {
    const u = new URL(authorizeUrl({ state: 'state-0123456789', nonce: 'nonce-0123456789', challenge: crypto.randomBytes(32).toString('base64url') }));
    u.searchParams.set('resource', 'https://unknown.api.local');
    const r = await req('GET', u.href);
    const loc = r.location ? new URL(r.location, cfg.issuer) : undefined;
    check('authorize with an unknown resource is refused (invalid_target)', loc?.searchParams.get('error') === 'invalid_target', { status: r.status, error: loc?.searchParams.get('error') });
  }

  // Cancel on the login page -> error=access_denied at the client; a stale interaction -> 400 page
  {
    const jar = new Jar();
    const start = await req('GET', authorizeUrl({ state: 'state-abort-0123', nonce: 'nonce-0123456789', challenge: crypto.randomBytes(32).toString('base64url') }), { jar });
    const interactionUrl = new URL(start.location, cfg.issuer).href;
    const page = await req('GET', interactionUrl, { jar });
    const abortAction = /<form[^>]*id="abort-form"[^>]*action="([^"]+)"/.exec(page.text)?.[1];
    const aborted = abortAction && await req('POST', new URL(abortAction, interactionUrl).href, { jar, body: new URLSearchParams() });
    const end = aborted && await follow(jar, aborted);
    check('Cancel on the login page -> callback with error=access_denied and the state', end?.callback?.searchParams.get('error') === 'access_denied'
      && end.callback.searchParams.get('state') === 'state-abort-0123' && !end.callback.searchParams.get('code'), end?.callback?.search);
    const stale = await req('GET', `${cfg.issuer}/interaction/doesnotexist123`);
    check('unknown interaction -> 400 HTML, no crash', stale.status === 400 && /expired or invalid/.test(stale.text), stale.status);
    const staleLogin = await req('POST', `${cfg.issuer}/interaction/doesnotexist123`, { body: new URLSearchParams({ login: 'alice', password: 'alice' }) });
    check('login POST without the interaction cookie -> 400, no crash', staleLogin.status === 400, staleLogin.status);
  }

  // ---- alice
  const a = await login('alice', 'alice', { badPasswordFirst: true });
  {
    const wrongVerifier = await tokenRequest({
      grant_type: 'authorization_code', code: a.code, redirect_uri: REDIRECT_URI, code_verifier: crypto.randomBytes(32).toString('base64url'), resource: ORDERS,
    });
    check('code exchange with a wrong code_verifier fails invalid_grant', wrongVerifier.status === 400 && wrongVerifier.json?.error === 'invalid_grant', wrongVerifier.json);
  }
  // a failed PKCE check does not consume the code in oidc-provider, so log in again for a clean code
  const a2 = await login('alice', 'alice', { label: 'alice (2nd login)' });
  const badSecret = await req('POST', `${cfg.issuer}/token`, {
    headers: { authorization: `Basic ${Buffer.from('bffgate:wrong-secret').toString('base64')}` },
    body: new URLSearchParams({
      grant_type: 'authorization_code', code: a2.code, redirect_uri: REDIRECT_URI, code_verifier: a2.verifier, resource: ORDERS,
    }),
  });
  check('token endpoint refuses a wrong client secret (invalid_client)', badSecret.status === 401 && badSecret.json?.error === 'invalid_client', badSecret.json);

  const t1 = await tokenRequest({
    grant_type: 'authorization_code', code: a2.code, redirect_uri: REDIRECT_URI, code_verifier: a2.verifier, resource: ORDERS,
  });
  must('alice: code exchange (resource=orders) answers 200 with access, refresh and ID token', t1.status === 200
    && t1.json?.access_token && t1.json.refresh_token && t1.json.id_token && t1.json.token_type === 'Bearer', { status: t1.status, error: t1.json?.error, desc: t1.json?.error_description, keys: Object.keys(t1.json || {}) });
  const at1 = decodeJwt(t1.json.access_token);
  const at1h = decodeProtectedHeader(t1.json.access_token);
  check('alice: orders access token is a JWT (typ at+jwt) with aud=orders', at1h.typ === 'at+jwt' && at1.aud === ORDERS, { typ: at1h.typ, aud: at1.aud });
  check('alice: orders access token scope is exactly orders:read orders:write', same(scopesOf(at1), ['orders:read', 'orders:write']), at1.scope);
  check('alice: token response scope matches the access token', t1.json.scope === at1.scope, t1.json.scope);
  check('alice: orders access token sub=alice, client_id=bffgate, iss', at1.sub === 'alice' && at1.client_id === 'bffgate' && at1.iss === cfg.issuer, { sub: at1.sub, client_id: at1.client_id });
  check(`access token lifetime is BFFGATE_ACCESS_TOKEN_TTL (${cfg.ttl}s)`, at1.exp - at1.iat === cfg.ttl && t1.json.expires_in === cfg.ttl, { life: at1.exp - at1.iat, expires_in: t1.json.expires_in });
  {
    const { payload } = await jwtVerify(t1.json.access_token, localKeys, { issuer: cfg.issuer, audience: ORDERS });
    check('alice: orders access token verifies against the JWKS', payload.sub === 'alice');
    const { payload: idt } = await jwtVerify(t1.json.id_token, localKeys, { issuer: cfg.issuer, audience: 'bffgate' });
    a2.sid = idt.sid;
    check('alice: ID token verifies (aud=bffgate), nonce matches, has sid and name', idt.nonce === a2.nonce && typeof idt.sid === 'string' && idt.name === 'Alice Example' && idt.sub === 'alice', { nonce: idt.nonce === a2.nonce, sid: typeof idt.sid, name: idt.name });
  }

  let rt = t1.json.refresh_token;
  const t2 = await tokenRequest({ grant_type: 'refresh_token', refresh_token: rt, resource: PROFILE });
  must('alice: refresh_token grant (resource=profile) answers 200', t2.status === 200 && t2.json?.access_token, { status: t2.status, error: t2.json?.error, desc: t2.json?.error_description });
  if (t2.json.refresh_token) rt = t2.json.refresh_token;
  const at2 = decodeJwt(t2.json.access_token);
  check('alice: profile access token aud=profile', at2.aud === PROFILE, at2.aud);
  check('alice: profile access token scope contains profile (and nothing of orders)', scopesOf(at2).has('profile') && !scopesOf(at2).has('orders:read'), at2.scope);
  check('alice: profile access token carries name and email', at2.name === 'Alice Example' && at2.email === 'alice@example.test', { name: at2.name, email: at2.email });

  const t3 = await tokenRequest({ grant_type: 'refresh_token', refresh_token: rt, resource: ORDERS });
  check('alice: refresh_token grant (resource=orders) gives orders:read orders:write again', t3.status === 200 && decodeJwt(t3.json.access_token).aud === ORDERS
    && same(scopesOf(decodeJwt(t3.json.access_token)), ['orders:read', 'orders:write']), { status: t3.status, error: t3.json?.error });
  if (t3.json?.refresh_token) rt = t3.json.refresh_token;

  const t3b = await tokenRequest({ grant_type: 'refresh_token', refresh_token: rt });
  check('refresh without resource: opaque token for /me only (no API audience guessed), OIDC scopes', t3b.status === 200
    && t3b.json.access_token.split('.').length === 1 && same(new Set(t3b.json.scope.split(' ')), ['openid', 'profile', 'offline_access']), { status: t3b.status, scope: t3b.json?.scope });
  if (t3b.json?.refresh_token) rt = t3b.json.refresh_token;
  {
    const me = await req('GET', `${cfg.issuer}/me`, { headers: { authorization: `Bearer ${t3b.json.access_token}` } });
    check('userinfo with that token -> sub alice, name', me.status === 200 && me.json?.sub === 'alice' && me.json.name === 'Alice Example', me.json);
  }
  const t4 = await tokenRequest({ grant_type: 'refresh_token', refresh_token: rt, resource: 'https://unknown.api.local' });
  check('refresh with an unknown resource is refused (invalid_target)', t4.status === 400 && t4.json?.error === 'invalid_target', t4.json);
  const t5 = await req('POST', `${cfg.issuer}/token`, {
    headers: { authorization: basic(), 'content-type': 'application/x-www-form-urlencoded' },
    body: `grant_type=refresh_token&refresh_token=${encodeURIComponent(rt)}&resource=${encodeURIComponent(ORDERS)}&resource=${encodeURIComponent(PROFILE)}`,
  });
  check('refresh with two resources at once is refused (invalid_target)', t5.status === 400 && t5.json?.error === 'invalid_target', t5.json);

  // ---- APIs with alice's tokens
  const ordersGet = await req('GET', `${cfg.orders}/api/orders`, { headers: { authorization: `Bearer ${t1.json.access_token}` } });
  check('orders API: GET with alice orders token -> 200, api=orders, seen.claims.aud=orders', ordersGet.status === 200 && ordersGet.json?.api === 'orders'
    && ordersGet.json.seen?.claims?.aud === ORDERS && Array.isArray(ordersGet.json.orders), { status: ordersGet.status, body: ordersGet.json?.error });
  check('orders API: seen.authorization is the header, seen.cookie null', ordersGet.json?.seen?.authorization === `Bearer ${t1.json.access_token}` && ordersGet.json.seen.cookie === null);
  const ordersPost = await req('POST', `${cfg.orders}/api/orders`, {
    headers: { authorization: `Bearer ${t1.json.access_token}`, cookie: 'a=b' }, json: { item: 'coffee' },
  });
  check('orders API: POST with orders:write -> 201 with the order', ordersPost.status === 201 && ordersPost.json?.order?.item === 'coffee'
    && ordersPost.json.order.id && ordersPost.json.order.created_at && ordersPost.json.seen?.cookie === 'a=b', { status: ordersPost.status, body: ordersPost.json });
  const ordersList = await req('GET', `${cfg.orders}/api/orders`, { headers: { authorization: `Bearer ${t1.json.access_token}` } });
  check('orders API: the order is listed for alice', ordersList.json?.orders?.length === 1 && ordersList.json.orders[0].item === 'coffee', ordersList.json?.orders);
  const badBody = await req('POST', `${cfg.orders}/api/orders`, { headers: { authorization: `Bearer ${t1.json.access_token}`, 'content-type': 'application/json' }, body: 'not json' });
  check('orders API: invalid JSON body -> 400 JSON', badBody.status === 400 && badBody.json?.api === 'orders' && badBody.json.error === 'invalid_request', badBody.status);
  const emptyBody = await req('POST', `${cfg.orders}/api/orders`, { headers: { authorization: `Bearer ${t1.json.access_token}` } });
  check('orders API: empty body -> 400 JSON', emptyBody.status === 400 && emptyBody.json?.api === 'orders', emptyBody.status);

  const profileGet = await req('GET', `${cfg.profile}/api/profile`, { headers: { authorization: `Bearer ${t2.json.access_token}` } });
  check('profile API: GET with alice profile token -> 200, seen.claims.aud=profile, profile.sub/name', profileGet.status === 200 && profileGet.json?.api === 'profile'
    && profileGet.json.seen?.claims?.aud === PROFILE && profileGet.json.profile?.sub === 'alice' && profileGet.json.profile.name === 'Alice Example', { status: profileGet.status, body: profileGet.json });

  const noToken = await req('GET', `${cfg.orders}/api/orders`);
  check('orders API: no token -> 401 invalid_token with api and seen (claims null)', noToken.status === 401 && noToken.json?.api === 'orders'
    && noToken.json.error === 'invalid_token' && noToken.json.seen?.authorization === null && noToken.json.seen.claims === null, noToken.json);
  const wrongAud = await req('GET', `${cfg.orders}/api/orders`, { headers: { authorization: `Bearer ${t2.json.access_token}` } });
  check('orders API: profile-audience token -> 401 (wrong aud), seen.claims null', wrongAud.status === 401 && wrongAud.json?.error === 'invalid_token' && wrongAud.json.seen?.claims === null, wrongAud.json?.error_description);
  const wrongAud2 = await req('GET', `${cfg.profile}/api/profile`, { headers: { authorization: `Bearer ${t1.json.access_token}` } });
  check('profile API: orders-audience token -> 401 (wrong aud)', wrongAud2.status === 401 && wrongAud2.json?.api === 'profile', wrongAud2.status);
  const idAsAt = await req('GET', `${cfg.orders}/api/orders`, { headers: { authorization: `Bearer ${t1.json.id_token}` } });
  check('orders API: an ID token is not accepted as access token -> 401', idAsAt.status === 401, idAsAt.status);
  {
    const forged = `${t1.json.access_token.slice(0, -4)}AAAA`;
    const r = await req('GET', `${cfg.orders}/api/orders`, { headers: { authorization: `Bearer ${forged}` } });
    check('orders API: tampered signature -> 401', r.status === 401, r.status);
  }
  const pub = await req('GET', `${cfg.public}/api/public/hello`, { headers: { cookie: 'x=y' } });
  check('public API: 200 without auth, seen fields', pub.status === 200 && pub.json?.api === 'public' && pub.json.message === 'hello'
    && pub.json.seen?.authorization === null && pub.json.seen.cookie === 'x=y' && pub.json.seen.claims === null, pub.json);
  for (const [p, type] of [['/', 'text/html'], ['/app.js', 'text/javascript'], ['/style.css', 'text/css']]) {
    const r = await req('GET', `${cfg.public}${p}`);
    check(`static ${p} -> 200 ${type}`, r.status === 200 && r.headers.get('content-type')?.startsWith(type), { status: r.status, type: r.headers.get('content-type') });
  }
  {
    const r = await req('GET', `${cfg.public}/`);
    check('static page has no inline script and the stable ids', !/<script(?![^>]*\bsrc=)[^>]*>/i.test(r.text)
      && ['status', 'signin', 'signout', 'orders', 'profile', 'create-order', 'message'].every((id) => r.text.includes(`id="${id}"`)));
    const nf = await req('GET', `${cfg.public}/nope.txt`);
    check('static unknown path -> 404 JSON', nf.status === 404 && nf.json?.error === 'not_found', nf.status);
  }

  // ---- bob: orders:read + profile only
  const b = await login('bob', 'bob');
  const bt = await tokenRequest({
    grant_type: 'authorization_code', code: b.code, redirect_uri: REDIRECT_URI, code_verifier: b.verifier, resource: ORDERS,
  });
  must('bob: code exchange answers 200 with a refresh token', bt.status === 200 && bt.json?.refresh_token, { status: bt.status, error: bt.json?.error });
  const bat = decodeJwt(bt.json.access_token);
  check('bob: orders access token scope is exactly orders:read', same(scopesOf(bat), ['orders:read']) && bat.aud === ORDERS && bat.sub === 'bob', bat.scope);
  const bpt = await tokenRequest({ grant_type: 'refresh_token', refresh_token: bt.json.refresh_token, resource: PROFILE });
  check('bob: profile access token scope contains profile', bpt.status === 200 && scopesOf(decodeJwt(bpt.json.access_token)).has('profile'), bpt.json?.scope);
  const bobGet = await req('GET', `${cfg.orders}/api/orders`, { headers: { authorization: `Bearer ${bt.json.access_token}` } });
  check('bob: GET /api/orders -> 200 with his own (empty) orders', bobGet.status === 200 && bobGet.json?.orders?.length === 0, { status: bobGet.status, orders: bobGet.json?.orders });
  const bobPost = await req('POST', `${cfg.orders}/api/orders`, { headers: { authorization: `Bearer ${bt.json.access_token}` }, json: { item: 'tea' } });
  check('bob: POST /api/orders -> 403 insufficient_scope with api and seen.claims', bobPost.status === 403 && bobPost.json?.error === 'insufficient_scope'
    && bobPost.json.api === 'orders' && bobPost.json.seen?.claims?.sub === 'bob', { status: bobPost.status, body: bobPost.json?.error });

  // ---- concurrent token requests are each counted once
  {
    const s0 = await stats();
    const all = await Promise.all(Array.from({ length: 10 }, () => tokenRequest({ grant_type: 'refresh_token', refresh_token: bt.json.refresh_token, resource: PROFILE })));
    const s1 = await stats();
    check('10 concurrent refreshes all succeed and /__stats counts exactly 10 more', all.every((r) => r.status === 200)
      && s1.grants.refresh_token === s0.grants.refresh_token + 10 && s1.token_requests.refresh_token === s0.token_requests.refresh_token + 10,
    { statuses: all.map((r) => r.status), before: s0.grants.refresh_token, after: s1.grants.refresh_token });
  }

  // ---- RP-initiated logout at the provider (+ back-channel logout when we spawned the IdP)
  {
    const url = `${cfg.issuer}/session/end?client_id=bffgate&post_logout_redirect_uri=${encodeURIComponent('https://localhost:8443/')}`;
    const page = await req('GET', url, { jar: a2.jar });
    const xsrf = /name="xsrf" value="([^"]+)"/.exec(page.text)?.[1];
    check('end_session: confirmation page with the logout form', page.status === 200 && xsrf && /name="logout"/.test(page.text), page.status);
    const done = await req('POST', `${cfg.issuer}/session/end/confirm`, { jar: a2.jar, body: new URLSearchParams({ xsrf: xsrf || '', logout: 'yes' }) });
    check('end_session: confirmed logout redirects to post_logout_redirect_uri', done.status === 303 && done.location === 'https://localhost:8443/', { status: done.status, location: done.location });
    if (SPAWN) {
      check('back-channel logout: one logout_token delivered', cfg.logoutTokens.length === 1, cfg.logoutTokens.length);
      if (cfg.logoutTokens[0]) {
        const { payload: lt } = await jwtVerify(cfg.logoutTokens[0], localKeys, { issuer: cfg.issuer, audience: 'bffgate', typ: 'logout+jwt' });
        check('back-channel logout: logout_token has sub, sid of the session, the event and no nonce', lt.sub === 'alice' && lt.sid === a2.sid
          && lt.events && 'http://schemas.openid.net/event/backchannel-logout' in lt.events && lt.nonce === undefined, lt);
      }
    }
    const again = await req('GET', authorizeUrl({ state: 'state-0123456789', nonce: 'nonce-0123456789', challenge: crypto.randomBytes(32).toString('base64url') }), { jar: a2.jar });
    const next = again.location && (await req('GET', new URL(again.location, cfg.issuer).href, { jar: a2.jar }));
    check('after end_session the provider asks for the password again', next && next.status === 200 && formOf(next.text).hasPassword, next?.status);
  }

  // ---- introspection
  {
    const r = await req('POST', `${cfg.issuer}/token/introspection`, {
      headers: { authorization: basic() }, body: new URLSearchParams({ token: rt, token_type_hint: 'refresh_token' }),
    });
    check('introspection: alice refresh token is active', r.status === 200 && r.json?.active === true && r.json.sub === 'alice', { status: r.status, active: r.json?.active });
  }

  // ---- revocation
  const before = await stats();
  const rev = await req('POST', `${cfg.issuer}/token/revocation`, {
    headers: { authorization: basic() }, body: new URLSearchParams({ token: rt, token_type_hint: 'refresh_token' }),
  });
  check('revocation of alice refresh token -> 200', rev.status === 200, rev.status);
  const afterRevoke = await tokenRequest({ grant_type: 'refresh_token', refresh_token: rt, resource: PROFILE });
  check('refresh after revocation -> 400 invalid_grant', afterRevoke.status === 400 && afterRevoke.json?.error === 'invalid_grant', afterRevoke.json);
  {
    const r = await req('POST', `${cfg.issuer}/token/introspection`, {
      headers: { authorization: basic() }, body: new URLSearchParams({ token: rt }),
    });
    check('introspection after revocation: inactive', r.json?.active === false, r.json);
  }
  const bobStill = await tokenRequest({ grant_type: 'refresh_token', refresh_token: bt.json.refresh_token, resource: ORDERS });
  check("revoking alice's refresh token leaves bob's working", bobStill.status === 200, bobStill.json?.error);
  const after = await stats();
  check('/__stats: revocations moved by 1', after.revocations === before.revocations + 1, { before: before.revocations, after: after.revocations });
  check('/__stats: refresh_token grants counted (successes only: +1 for bob, 0 for the refused one)', after.grants.refresh_token === before.grants.refresh_token + 1, { before: before.grants.refresh_token, after: after.grants.refresh_token });
  check('/__stats: authorization_code grants counted since start (alice + bob = +2)', after.grants.authorization_code === stats0.grants.authorization_code + 2, { start: stats0.grants.authorization_code, now: after.grants.authorization_code });
  check('/__stats: refresh_token grants since start (alice 3 + bob 2 + 10 concurrent = +15)', after.grants.refresh_token === stats0.grants.refresh_token + 15, { start: stats0.grants.refresh_token, now: after.grants.refresh_token });

  // code replay: refused, and oidc-provider revokes the grant the code belonged to
  const replay = await tokenRequest({
    grant_type: 'authorization_code', code: b.code, redirect_uri: REDIRECT_URI, code_verifier: b.verifier, resource: ORDERS,
  });
  check('code replay is refused (invalid_grant)', replay.status === 400 && replay.json?.error === 'invalid_grant', replay.json);
  const bobAfterReplay = await tokenRequest({ grant_type: 'refresh_token', refresh_token: bt.json.refresh_token, resource: ORDERS });
  check("code replay revokes that grant: bob's refresh token -> invalid_grant", bobAfterReplay.status === 400 && bobAfterReplay.json?.error === 'invalid_grant', bobAfterReplay.json);

  const oStats = await apiStats(cfg.orders);
  check('orders API /__stats counts requests (not /__stats)', oStats === 11, oStats);
  check('profile API /__stats counts requests', await apiStats(cfg.profile) === 2);
  await req('POST', `${cfg.orders}/__reset`);
  check('orders API /__reset zeroes the counter', await apiStats(cfg.orders) === 0);
  const cleared = await req('GET', `${cfg.orders}/api/orders`, { headers: { authorization: `Bearer ${t1.json.access_token}` } });
  check('orders API /__reset clears the orders', cleared.json?.orders?.length === 0, cleared.json?.orders);

  await lifecycleChecks(localKeys, t3b.json.access_token);
  if (SPAWN) await restartChecks(t1.json.access_token, keys);
}

// ---------------------------------------------------------------------------------------------
// token lifecycle: RFC 8693 token exchange, refresh down-scoping, fault injection, counters

function exchange(subjectToken, extra = {}, { headers } = {}) {
  const body = new URLSearchParams({ grant_type: TOKEN_EXCHANGE });
  if (subjectToken !== undefined) body.set('subject_token', subjectToken);
  body.set('subject_token_type', AT_TYPE);
  for (const [k, v] of Object.entries(extra)) {
    body.delete(k);
    if (v !== undefined) for (const one of [].concat(v)) body.append(k, one);
  }
  return req('POST', `${cfg.issuer}/token`, { headers: { authorization: basic(), accept: 'application/json', ...headers }, body });
}

// like req(), but a connection error is a result ({error}) instead of an exception
async function attempt(method, url, opts) {
  const t0 = Date.now();
  try {
    const r = await req(method, url, opts);
    return { ...r, ms: Date.now() - t0 };
  } catch (err) {
    return { error: err.cause?.code || err.cause?.message || err.name, ms: Date.now() - t0 };
  }
}

const setFault = (body) => req('POST', `${cfg.issuer}/__fault`, { json: body });
const getFault = async () => (await req('GET', `${cfg.issuer}/__fault`)).json;
const errorIs = (r, status, error) => r.status === status && r.json?.error === error;

async function codeTokens(user) {
  const l = await login(user, user, { label: `${user} (lifecycle)` });
  const t = await tokenRequest({
    grant_type: 'authorization_code', code: l.code, redirect_uri: REDIRECT_URI, code_verifier: l.verifier, resource: ORDERS,
  });
  must(`${user} (lifecycle): code exchange -> 200 with access and refresh token`, t.status === 200 && t.json?.access_token && t.json.refresh_token, { status: t.status, error: t.json?.error });
  return t.json;
}

async function lifecycleChecks(localKeys, endedSessionToken) {
  const alice = await codeTokens('alice');
  const bob = await codeTokens('bob');
  const s0 = await stats();
  let teRequests = 0;
  let teGrants = 0;
  let rtRequests = 0;
  let rtGrants = 0;
  const te = async (...args) => {
    teRequests += 1;
    const r = await exchange(...args);
    if (r.status === 200) teGrants += 1;
    return r;
  };
  const rtReq = async (params) => {
    rtRequests += 1;
    const r = await tokenRequest({ grant_type: 'refresh_token', ...params });
    if (r.status === 200) rtGrants += 1;
    return r;
  };

  // ---- token exchange: success
  {
    const r = await te(alice.access_token, { resource: PROFILE });
    must('exchange: alice orders token -> profile answers 200', r.status === 200 && r.json?.access_token, { status: r.status, body: r.json });
    check('exchange: response has exactly access_token, issued_token_type, token_type, expires_in, scope', same(new Set(Object.keys(r.json)), ['access_token', 'issued_token_type', 'token_type', 'expires_in', 'scope'])
      && r.json.issued_token_type === AT_TYPE && r.json.token_type === 'Bearer' && r.json.expires_in === cfg.ttl && r.json.scope === 'profile', { keys: Object.keys(r.json), ...r.json, access_token: undefined });
    check('exchange: response is not cacheable', /no-store/.test(r.headers.get('cache-control') || ''), r.headers.get('cache-control'));
    const { payload, protectedHeader } = await jwtVerify(r.json.access_token, localKeys, { issuer: cfg.issuer, audience: PROFILE, typ: 'at+jwt' });
    check('exchange: issued token verifies against the JWKS: typ at+jwt, aud=profile, sub=alice, client_id=bffgate, scope=profile, ttl', protectedHeader.typ === 'at+jwt'
      && payload.aud === PROFILE && payload.sub === 'alice' && payload.client_id === 'bffgate' && payload.scope === 'profile' && payload.exp - payload.iat === cfg.ttl,
    { typ: protectedHeader.typ, aud: payload.aud, sub: payload.sub, scope: payload.scope });
    check('exchange: profile token carries the profile claims (name)', payload.name === 'Alice Example', payload.name);
    const api = await req('GET', `${cfg.profile}/api/profile`, { headers: { authorization: `Bearer ${r.json.access_token}` } });
    check('exchange: the profile API accepts the exchanged token (profile.sub alice)', api.status === 200 && api.json?.profile?.sub === 'alice', { status: api.status, error: api.json?.error });
    const wrong = await req('GET', `${cfg.orders}/api/orders`, { headers: { authorization: `Bearer ${r.json.access_token}` } });
    check('exchange: the orders API refuses the exchanged token (wrong aud)', wrong.status === 401, wrong.status);
  }
  {
    const r = await te(bob.access_token, { resource: PROFILE, scope: 'profile' });
    const p = r.status === 200 ? decodeJwt(r.json.access_token) : {};
    check('exchange: bob with scope=profile -> 200, sub=bob, scope profile', r.status === 200 && p.sub === 'bob' && p.aud === PROFILE && p.scope === 'profile' && r.json.scope === 'profile', { status: r.status, body: r.json?.error });
    const a = await te(bob.access_token, { audience: PROFILE, requested_token_type: AT_TYPE });
    check('exchange: `audience` instead of `resource` (and requested_token_type access_token) -> 200 aud=profile', a.status === 200 && decodeJwt(a.json.access_token).aud === PROFILE, { status: a.status, body: a.json });
    const opaque = await rtReq({ refresh_token: alice.refresh_token });
    const o = await te(opaque.json?.access_token, { resource: PROFILE });
    check('exchange: an opaque (userinfo) access token of alice is a valid subject token -> sub alice', o.status === 200 && decodeJwt(o.json.access_token).sub === 'alice', { status: o.status, body: o.json });
    const ended = await te(endedSessionToken, { resource: PROFILE });
    check('exchange: an opaque access token of an ended session (logged out at the IdP) -> 400 invalid_grant', errorIs(ended, 400, 'invalid_grant'), ended.json);
  }

  // ---- token exchange: refused
  {
    const r = await te('not-a-token', { resource: PROFILE });
    check('exchange: garbage subject_token -> 400 invalid_grant', errorIs(r, 400, 'invalid_grant'), r.json);
    const tampered = `${alice.access_token.slice(0, -4)}AAAA`;
    const r2 = await te(tampered, { resource: PROFILE });
    check('exchange: subject_token with a tampered signature -> 400 invalid_grant', errorIs(r2, 400, 'invalid_grant'), r2.json);
    const [h, p, sig] = alice.access_token.split('.');
    const claims = JSON.parse(Buffer.from(p, 'base64url').toString());
    const swapped = `${h}.${Buffer.from(JSON.stringify({ ...claims, sub: 'bob' })).toString('base64url')}.${sig}`;
    const r3 = await te(swapped, { resource: PROFILE });
    check('exchange: subject_token with a modified payload (sub) -> 400 invalid_grant', errorIs(r3, 400, 'invalid_grant'), r3.json);
    const r4 = await te(alice.id_token, { resource: PROFILE });
    check('exchange: an ID token as subject_token -> 400 invalid_grant', errorIs(r4, 400, 'invalid_grant'), r4.json);
    const r5 = await te(alice.refresh_token, { resource: PROFILE });
    check('exchange: a refresh token as subject_token -> 400 invalid_grant', errorIs(r5, 400, 'invalid_grant'), r5.json);
  }
  if (SPAWN) {
    // tokens forged with the IdP's own signing key (from the spawned IdP's key file) and a foreign one
    const keyFile = JSON.parse(fs.readFileSync(cfg.env.BFFGATE_IDP_KEYS, 'utf8'));
    const jwk = keyFile.keys.find((k) => k.alg === 'ES256');
    const ownKey = await importJWK(jwk, 'ES256');
    const real = decodeJwt(alice.access_token);
    const now = Math.floor(Date.now() / 1000);
    const forge = (claims, key = ownKey, kid = jwk.kid) => new SignJWT({ ...real, jti: crypto.randomUUID(), ...claims })
      .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid }).sign(key);
    const control = await te(await forge({}), { resource: PROFILE });
    check('exchange (forged with the IdP key, control): valid claims -> 200', control.status === 200, control.json);
    const expired = await te(await forge({ iat: now - 600, exp: now - 300 }), { resource: PROFILE });
    check('exchange: expired subject_token -> 400 invalid_grant (expired)', errorIs(expired, 400, 'invalid_grant') && /expired/.test(expired.json.error_description), expired.json);
    const otherClient = await te(await forge({ client_id: 'some-other-client' }), { resource: PROFILE });
    check('exchange: subject_token issued to another client -> 400 invalid_grant', errorIs(otherClient, 400, 'invalid_grant'), otherClient.json);
    const gone = await te(await forge({ sub: 'mallory' }), { resource: PROFILE });
    check('exchange: subject_token of an account that does not exist -> 400 invalid_grant', errorIs(gone, 400, 'invalid_grant'), gone.json);
    const otherIss = await te(await forge({ iss: 'http://localhost:1' }), { resource: PROFILE });
    check('exchange: subject_token with a foreign iss -> 400 invalid_grant', errorIs(otherIss, 400, 'invalid_grant'), otherIss.json);
    const { privateKey } = await generateKeyPair('ES256');
    const foreignSameKid = await te(await forge({}, privateKey), { resource: PROFILE });
    check('exchange: subject_token signed by a foreign key (same kid) -> 400 invalid_grant', errorIs(foreignSameKid, 400, 'invalid_grant'), foreignSameKid.json);
    const foreignKid = crypto.randomBytes(16).toString('base64url');
    const foreign = await te(await forge({}, privateKey, foreignKid), { resource: PROFILE });
    check('exchange: subject_token signed by a foreign key (unknown kid) -> 400 invalid_grant', errorIs(foreign, 400, 'invalid_grant'), foreign.json);
    const foreignAud = await te(await forge({ aud: 'https://elsewhere.example' }), { resource: PROFILE });
    check('exchange: subject_token for an audience this IdP does not serve -> 400 invalid_grant', errorIs(foreignAud, 400, 'invalid_grant'), foreignAud.json);
  }
  {
    const unknown = await te(alice.access_token, { resource: 'https://unknown.api.local' });
    check('exchange: unknown target -> 400 invalid_target', errorIs(unknown, 400, 'invalid_target'), unknown.json);
    const notAllowed = await te(alice.access_token, { resource: ORDERS });
    check('exchange: orders is not an allowed exchange target -> 400 invalid_target', errorIs(notAllowed, 400, 'invalid_target'), notAllowed.json);
    const none = await te(alice.access_token, {});
    check('exchange: no target -> 400 invalid_target', errorIs(none, 400, 'invalid_target'), none.json);
    const two = await te(alice.access_token, { resource: [PROFILE, ORDERS] });
    check('exchange: two targets -> 400 invalid_target', errorIs(two, 400, 'invalid_target'), two.json);
    const beyond = await te(bob.access_token, { resource: PROFILE, scope: 'profile orders:write' });
    check('exchange: bob asking for profile + orders:write at the profile target -> 400 invalid_scope, nothing granted', errorIs(beyond, 400, 'invalid_scope') && !beyond.json.access_token, beyond.json);
    const oidc = await te(bob.access_token, { resource: PROFILE, scope: 'openid' });
    check('exchange: scope the target does not define (openid) -> 400 invalid_scope', errorIs(oidc, 400, 'invalid_scope'), oidc.json);
    const badType = await te(alice.access_token, { resource: PROFILE, subject_token_type: 'urn:ietf:params:oauth:token-type:id_token' });
    check('exchange: unsupported subject_token_type -> 400 invalid_request', errorIs(badType, 400, 'invalid_request'), badType.json);
    const noSubject = await te(undefined, { resource: PROFILE });
    check('exchange: missing subject_token -> 400 invalid_request', errorIs(noSubject, 400, 'invalid_request'), noSubject.json);
    const actor = await te(alice.access_token, { resource: PROFILE, actor_token: bob.access_token, actor_token_type: AT_TYPE });
    check('exchange: actor_token (delegation) -> 400 invalid_request', errorIs(actor, 400, 'invalid_request'), actor.json);
    const reqType = await te(alice.access_token, { resource: PROFILE, requested_token_type: 'urn:ietf:params:oauth:token-type:refresh_token' });
    check('exchange: requested_token_type refresh_token -> 400 invalid_request', errorIs(reqType, 400, 'invalid_request'), reqType.json);
    const badClient = await te(alice.access_token, { resource: PROFILE }, { headers: { authorization: `Basic ${Buffer.from('bffgate:wrong-secret').toString('base64')}` } });
    check('exchange: wrong client secret -> 401 invalid_client', errorIs(badClient, 401, 'invalid_client'), badClient.json);
  }

  // ---- refresh_token grant: down-scoping with resource + scope
  {
    const r1 = await rtReq({ refresh_token: alice.refresh_token, resource: ORDERS, scope: 'orders:read' });
    const p1 = r1.status === 200 ? decodeJwt(r1.json.access_token) : {};
    check('refresh down-scoping: alice resource=orders scope=orders:read -> token with only orders:read', r1.status === 200 && p1.aud === ORDERS
      && same(scopesOf(p1), ['orders:read']) && r1.json.scope === 'orders:read', { status: r1.status, scope: p1.scope, body: r1.json?.error });
    if (r1.status === 200) {
      const get = await req('GET', `${cfg.orders}/api/orders`, { headers: { authorization: `Bearer ${r1.json.access_token}` } });
      const post = await req('POST', `${cfg.orders}/api/orders`, { headers: { authorization: `Bearer ${r1.json.access_token}` }, json: { item: 'x' } });
      check('refresh down-scoping: the orders:read token may GET (200) but not POST (403 insufficient_scope)', get.status === 200 && post.status === 403 && post.json?.error === 'insufficient_scope', { get: get.status, post: post.status });
    }
    const r2 = await rtReq({ refresh_token: alice.refresh_token, resource: ORDERS, scope: 'orders:write' });
    check('refresh down-scoping: scope=orders:write -> only orders:write', r2.status === 200 && same(scopesOf(decodeJwt(r2.json.access_token)), ['orders:write']), { status: r2.status, scope: r2.json?.scope });
    const r3 = await rtReq({ refresh_token: alice.refresh_token, resource: ORDERS });
    check('refresh down-scoping does not narrow the refresh token: no scope -> orders:read orders:write again', r3.status === 200 && same(scopesOf(decodeJwt(r3.json.access_token)), ['orders:read', 'orders:write']), { status: r3.status, scope: r3.json?.scope });
    const r4 = await rtReq({ refresh_token: alice.refresh_token, resource: ORDERS, scope: 'openid orders:read' });
    check('refresh down-scoping: OIDC scopes next to orders:read are dropped from the API token', r4.status === 200 && same(scopesOf(decodeJwt(r4.json.access_token)), ['orders:read']), { status: r4.status, scope: r4.json?.scope });
    const r5 = await rtReq({ refresh_token: alice.refresh_token, resource: ORDERS, scope: 'profile' });
    check('refresh down-scoping: scope of another resource (profile at orders) -> 400 invalid_scope', errorIs(r5, 400, 'invalid_scope'), r5.json);
    const r6 = await rtReq({ refresh_token: alice.refresh_token, resource: ORDERS, scope: 'orders:delete' });
    check('refresh down-scoping: scope never requested (orders:delete) -> 400 invalid_scope', errorIs(r6, 400, 'invalid_scope'), r6.json);
    const r7 = await rtReq({ refresh_token: alice.refresh_token, resource: PROFILE, scope: 'profile' });
    check('refresh down-scoping: resource=profile scope=profile -> profile', r7.status === 200 && decodeJwt(r7.json.access_token).aud === PROFILE && same(scopesOf(decodeJwt(r7.json.access_token)), ['profile']), { status: r7.status, scope: r7.json?.scope });
    const b1 = await rtReq({ refresh_token: bob.refresh_token, resource: ORDERS, scope: 'orders:write' });
    check('refresh down-scoping: bob asking for orders:write (not his) -> 400 invalid_scope', errorIs(b1, 400, 'invalid_scope'), b1.json);
    const b2 = await rtReq({ refresh_token: bob.refresh_token, resource: ORDERS, scope: 'orders:read orders:write' });
    check('refresh down-scoping: bob asking for orders:read orders:write -> 400 invalid_scope (orders:write was never granted to him)', errorIs(b2, 400, 'invalid_scope'), b2.json);
    const b3 = await rtReq({ refresh_token: bob.refresh_token, resource: ORDERS, scope: 'orders:read' });
    check('refresh down-scoping: bob scope=orders:read -> orders:read', b3.status === 200 && same(scopesOf(decodeJwt(b3.json.access_token)), ['orders:read']) && b3.json.scope === 'orders:read', { status: b3.status, scope: b3.json?.scope });
  }

  {
    const s1 = await stats();
    check('/__stats: token-exchange grants count exactly the successful exchanges', s1.grants[TOKEN_EXCHANGE] - s0.grants[TOKEN_EXCHANGE] === teGrants, { delta: s1.grants[TOKEN_EXCHANGE] - s0.grants[TOKEN_EXCHANGE], teGrants });
    check('/__stats: token_requests count every token-exchange request (refused ones too)', s1.token_requests[TOKEN_EXCHANGE] - s0.token_requests[TOKEN_EXCHANGE] === teRequests, { delta: s1.token_requests[TOKEN_EXCHANGE] - s0.token_requests[TOKEN_EXCHANGE], teRequests });
    check('/__stats: refresh_token grants and requests moved exactly by the down-scoping calls', s1.grants.refresh_token - s0.grants.refresh_token === rtGrants
      && s1.token_requests.refresh_token - s0.token_requests.refresh_token === rtRequests, {
      grants: s1.grants.refresh_token - s0.grants.refresh_token, rtGrants, requests: s1.token_requests.refresh_token - s0.token_requests.refresh_token, rtRequests,
    });
  }

  // ---- counters stay exact under concurrency: 50 parallel refreshes, then 25 refreshes + 25 exchanges
  {
    const a0 = await stats();
    const all = await Promise.all(Array.from({ length: 50 }, () => tokenRequest({ grant_type: 'refresh_token', refresh_token: bob.refresh_token, resource: PROFILE })));
    const a1 = await stats();
    check('50 parallel refreshes: all 200, grants.refresh_token and token_requests.refresh_token +50 exactly', all.every((r) => r.status === 200)
      && a1.grants.refresh_token - a0.grants.refresh_token === 50 && a1.token_requests.refresh_token - a0.token_requests.refresh_token === 50,
    { statuses: [...new Set(all.map((r) => r.status))], grants: a1.grants.refresh_token - a0.grants.refresh_token, requests: a1.token_requests.refresh_token - a0.token_requests.refresh_token });
    const mixed = await Promise.all(Array.from({ length: 50 }, (_, i) => (i % 2
      ? exchange(bob.access_token, { resource: PROFILE })
      : tokenRequest({ grant_type: 'refresh_token', refresh_token: alice.refresh_token, resource: ORDERS }))));
    const a2 = await stats();
    check('25 refreshes + 25 exchanges in parallel: all 200, each grant type +25 exactly', mixed.every((r) => r.status === 200)
      && a2.grants.refresh_token - a1.grants.refresh_token === 25 && a2.grants[TOKEN_EXCHANGE] - a1.grants[TOKEN_EXCHANGE] === 25
      && a2.token_requests.refresh_token - a1.token_requests.refresh_token === 25 && a2.token_requests[TOKEN_EXCHANGE] - a1.token_requests[TOKEN_EXCHANGE] === 25,
    { statuses: [...new Set(mixed.map((r) => r.status))], rt: a2.grants.refresh_token - a1.grants.refresh_token, te: a2.grants[TOKEN_EXCHANGE] - a1.grants[TOKEN_EXCHANGE] });
  }

  if (SPAWN) await faultChecks(alice, bob);
}

// /__fault changes the IdP for every client: only against our own spawned IdP
async function faultChecks(alice, bob) {
  const refresh = () => attempt('POST', `${cfg.issuer}/token`, {
    headers: { authorization: basic(), accept: 'application/json' },
    body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: alice.refresh_token, resource: ORDERS }),
  });
  const revoke = (token) => attempt('POST', `${cfg.issuer}/token/revocation`, {
    headers: { authorization: basic() }, body: new URLSearchParams({ token, token_type_hint: 'refresh_token' }),
  });
  const isNone = (f) => f?.mode === 'none' && f.remaining === null;

  {
    const f = await getFault();
    check('GET /__fault: no fault at start, shape {token, revocation, applied}', isNone(f?.token) && isNone(f.revocation) && f.applied?.token === 0 && f.applied.revocation === 0, f);
    const plain = await req('POST', `${cfg.issuer}/__fault`, { headers: { 'content-type': 'text/plain' }, body: '{"endpoint":"token","mode":"error500"}' });
    check('POST /__fault without a JSON content type -> 415', plain.status === 415, plain.status);
    for (const [label, body] of [
      ['unknown mode', { endpoint: 'token', mode: 'explode' }],
      ['unknown endpoint', { endpoint: 'jwks', mode: 'error500' }],
      ['unknown field', { endpoint: 'token', mode: 'error500', delay: 5 }],
      ['negative delay_ms', { endpoint: 'token', mode: 'slow', delay_ms: -1 }],
      ['count 0', { endpoint: 'token', mode: 'error500', count: 0 }],
    ]) {
      const r = await setFault(body);
      check(`POST /__fault with ${label} -> 400 invalid_request`, r.status === 400 && r.json?.error === 'invalid_request', r.json);
    }
    const bad = await req('POST', `${cfg.issuer}/__fault`, { headers: { 'content-type': 'application/json' }, body: 'not json' });
    check('POST /__fault with a non-JSON body -> 400', bad.status === 400, bad.status);
    check('refused /__fault requests changed nothing', isNone((await getFault()).token));
  }

  const s0 = await stats();
  let requests = 0;
  let successes = 0;

  // every mode once (count 1), seen from a client, then back to none by itself
  {
    const set = await setFault({ endpoint: 'token', mode: 'slow', delay_ms: 700, count: 1 });
    check('POST /__fault slow -> 200 with the new state', set.status === 200 && set.json?.token?.mode === 'slow' && set.json.token.delay_ms === 700 && set.json.token.remaining === 1 && isNone(set.json.revocation), set.json);
    const r = await refresh();
    requests += 1;
    if (r.status === 200) successes += 1;
    check('fault slow: the token request answers normally (200 with a token) after >= delay_ms', r.status === 200 && r.json?.access_token && r.ms >= 650, { status: r.status, ms: r.ms, error: r.error });
    check('fault slow with count 1: back to none afterwards', isNone((await getFault()).token));
  }
  {
    await setFault({ endpoint: 'token', mode: 'error500', count: 1 });
    const r = await refresh();
    requests += 1;
    check('fault error500: 500 with an HTML body', r.status === 500 && /^text\/html/.test(r.headers?.get('content-type') || '') && /<html/i.test(r.text) && r.json === null, { status: r.status, error: r.error });
  }
  {
    await setFault({ endpoint: 'token', mode: 'garbage', count: 1 });
    const r = await refresh();
    requests += 1;
    let parsed = true;
    try { JSON.parse(r.text); } catch { parsed = false; }
    check('fault garbage: 200 with a body that is not JSON', r.status === 200 && typeof r.text === 'string' && r.text.length > 0 && !parsed, { status: r.status, error: r.error });
  }
  {
    await setFault({ endpoint: 'token', mode: 'reset', count: 1 });
    const r = await refresh();
    requests += 1;
    check('fault reset: the connection is closed without an answer', r.error !== undefined && r.status === undefined, { status: r.status, error: r.error });
  }
  {
    await setFault({ endpoint: 'token', mode: 'invalid_grant', count: 1 });
    const r = await refresh();
    requests += 1;
    check('fault invalid_grant: 400 {"error":"invalid_grant"}', r.status === 400 && r.json?.error === 'invalid_grant' && /^application\/json/.test(r.headers.get('content-type')), { status: r.status, body: r.json });
    const after = await refresh();
    requests += 1;
    if (after.status === 200) successes += 1;
    check('after the count-1 faults: the next token request succeeds (the refresh token was never touched)', after.status === 200 && after.json?.access_token, { status: after.status, body: after.json?.error });
  }
  {
    await setFault({ endpoint: 'token', mode: 'error500', count: 2 });
    const rs = [];
    for (let i = 0; i < 3; i += 1) rs.push(await refresh());
    requests += 3;
    successes += rs.filter((r) => r.status === 200).length;
    check('fault count 2: exactly the next 2 token requests fail, the 3rd succeeds', rs[0].status === 500 && rs[1].status === 500 && rs[2].status === 200, rs.map((r) => r.status ?? r.error));
  }
  {
    await setFault({ endpoint: 'token', mode: 'invalid_grant' });
    const f = await getFault();
    check('fault without count: remaining null (until changed)', f.token.mode === 'invalid_grant' && f.token.remaining === null, f.token);
    const rs = [await refresh(), await refresh()];
    requests += 2;
    check('fault without count: stays on (2 requests refused)', rs.every((r) => r.status === 400 && r.json?.error === 'invalid_grant'), rs.map((r) => r.status));
    const ex = await exchange(bob.access_token, { resource: PROFILE });
    check('fault on token also hits token exchange', ex.status === 400 && ex.json?.error === 'invalid_grant' && ex.json.error_description === undefined, ex.json);
    const cleared = await setFault({ endpoint: 'token', mode: 'none' });
    check('POST /__fault mode none clears it', cleared.status === 200 && isNone(cleared.json?.token), cleared.json);
    const r = await refresh();
    requests += 1;
    if (r.status === 200) successes += 1;
    check('after clearing: token requests succeed again', r.status === 200, r.status);
  }
  {
    await setFault({ endpoint: 'token', mode: 'error500', delay_ms: 400, count: 1 });
    const r = await refresh();
    requests += 1;
    check('fault error500 with delay_ms: 500 after >= delay_ms', r.status === 500 && r.ms >= 350, { status: r.status, ms: r.ms });
  }
  {
    const s1 = await stats();
    check('faulted token requests are counted in token_requests, not in grants (slow counts as a normal grant)', s1.token_requests.refresh_token - s0.token_requests.refresh_token === requests
      && s1.grants.refresh_token - s0.grants.refresh_token === successes, {
      requests: s1.token_requests.refresh_token - s0.token_requests.refresh_token, expected: requests, grants: s1.grants.refresh_token - s0.grants.refresh_token, successes,
    });
  }

  // revocation endpoint faults; /token unaffected by them
  {
    const r0 = await stats();
    await setFault({ endpoint: 'revocation', mode: 'invalid_grant' });
    const rv = await revoke(bob.refresh_token);
    check('fault on revocation: POST /token/revocation -> 400 invalid_grant', rv.status === 400 && rv.json?.error === 'invalid_grant', { status: rv.status, error: rv.error });
    const tok = await refresh();
    check('fault on revocation only: /token still answers 200', tok.status === 200, tok.status);
    await setFault({ endpoint: 'revocation', mode: 'error500', count: 1 });
    const rv2 = await revoke(bob.refresh_token);
    check('fault error500 on revocation: 500', rv2.status === 500, rv2.status ?? rv2.error);
    const bobOk = await tokenRequest({ grant_type: 'refresh_token', refresh_token: bob.refresh_token, resource: PROFILE });
    check("faulted revocations did not revoke bob's refresh token", bobOk.status === 200, bobOk.status);
    const r1 = await stats();
    check('faulted revocations: revocation_requests +2, revocations +0', r1.revocation_requests - r0.revocation_requests === 2 && r1.revocations === r0.revocations,
      { requests: r1.revocation_requests - r0.revocation_requests, revocations: r1.revocations - r0.revocations });
    await setFault({ endpoint: 'revocation', mode: 'none' });
  }

  // endpoint "all": both endpoints reset the connection; everything else is unaffected
  {
    const set = await setFault({ endpoint: 'all', mode: 'reset' });
    check('POST /__fault endpoint all -> both endpoints set', set.json?.token?.mode === 'reset' && set.json.revocation.mode === 'reset', set.json);
    const tok = await refresh();
    const rv = await revoke(bob.refresh_token);
    check('fault all/reset: /token and /token/revocation both close the connection', tok.error !== undefined && rv.error !== undefined, { token: tok.status ?? tok.error, revocation: rv.status ?? rv.error });
    const jwksR = await attempt('GET', `${cfg.issuer}/jwks`);
    const disco = await attempt('GET', `${cfg.issuer}/.well-known/openid-configuration`);
    const intro = await attempt('POST', `${cfg.issuer}/token/introspection`, { headers: { authorization: basic() }, body: new URLSearchParams({ token: bob.refresh_token }) });
    const jar = new Jar();
    const auth = await attempt('GET', authorizeUrl({ state: 'state-0123456789', nonce: 'nonce-0123456789', challenge: crypto.randomBytes(32).toString('base64url') }), { jar });
    const loginPage = auth.location ? await attempt('GET', new URL(auth.location, cfg.issuer).href, { jar }) : {};
    const getToken = await attempt('GET', `${cfg.issuer}/token`);
    check('fault all: jwks, discovery, introspection, /auth + login page and a GET on /token are unaffected', jwksR.status === 200 && disco.status === 200 && intro.status === 200 && intro.json?.active === true
      && auth.status === 303 && loginPage.status === 200 && formOf(loginPage.text).hasPassword && getToken.status === 404,
    { jwks: jwksR.status, disco: disco.status, intro: intro.status, auth: auth.status, login: loginPage.status ?? loginPage.error, getToken: getToken.status ?? getToken.error });
    const f = await getFault();
    check('GET /__fault: applied counts the faulted requests per endpoint', f.applied.token === 12 && f.applied.revocation === 3, f.applied);
    const reset = await req('POST', `${cfg.issuer}/__reset`);
    const after = await getFault();
    check('POST /__reset clears the faults and their counts', reset.status === 200 && isNone(after.token) && isNone(after.revocation) && after.applied.token === 0 && after.applied.revocation === 0, after);
    const s = await stats();
    check('POST /__reset zeroes /__stats (all grant types present)', Object.values(s.grants).every((n) => n === 0) && s.revocations === 0 && s.token_requests[TOKEN_EXCHANGE] === 0, s);
    const tok2 = await refresh();
    const rv2 = await revoke(alice.refresh_token);
    check('after /__reset: /token and /token/revocation answer normally', tok2.status === 200 && rv2.status === 200, { token: tok2.status ?? tok2.error, revocation: rv2.status ?? rv2.error });
  }

  // count-limited fault under concurrency: exactly `count` requests are faulted
  {
    const s1 = await stats();
    await setFault({ endpoint: 'token', mode: 'error500', count: 10 });
    const rs = await Promise.all(Array.from({ length: 30 }, () => tokenRequest({ grant_type: 'refresh_token', refresh_token: bob.refresh_token, resource: PROFILE })));
    const s2 = await stats();
    const by = (code) => rs.filter((r) => r.status === code).length;
    check('30 parallel refreshes with error500 count 10: exactly 10 x 500 and 20 x 200; counters exact', by(500) === 10 && by(200) === 20
      && s2.token_requests.refresh_token - s1.token_requests.refresh_token === 30 && s2.grants.refresh_token - s1.grants.refresh_token === 20
      && isNone((await getFault()).token), { s500: by(500), s200: by(200), requests: s2.token_requests.refresh_token - s1.token_requests.refresh_token, grants: s2.grants.refresh_token - s1.grants.refresh_token });
  }
}

async function restartChecks(oldAccessToken, oldKeys) {
  // keys survive an IdP restart; refresh-token rotation when BFFGATE_ROTATE_REFRESH=1
  const r = await stopProcess(cfg.idp);
  check('IdP exits 0 on SIGTERM', r.code === 0, r);
  cfg.idp = startProcess('idp', 'idp.mjs', { ...cfg.env, BFFGATE_ROTATE_REFRESH: '1', BFFGATE_EXCHANGE_TARGETS: `${PROFILE}, ${ORDERS}` }, path.join(cfg.dir, 'idp.log'));
  must('IdP restarted', await waitFor(`${cfg.issuer}/.well-known/openid-configuration`));
  const keys = await jwks();
  check('IdP restart reuses the persisted keys (same kids)', same(new Set(keys.keys.map((k) => k.kid)), oldKeys.keys.map((k) => k.kid)));
  const api = await req('GET', `${cfg.orders}/api/orders`, { headers: { authorization: `Bearer ${oldAccessToken}` } });
  check('a token issued before the restart is still accepted by the API', api.status === 200, api.status);
  const mode = fs.statSync(cfg.env.BFFGATE_IDP_KEYS).mode & 0o777;
  check('key file is mode 600', mode === 0o600, mode.toString(8));

  const a = await login('alice', 'alice', { label: 'alice (rotation)' });
  const t = await tokenRequest({
    grant_type: 'authorization_code', code: a.code, redirect_uri: REDIRECT_URI, code_verifier: a.verifier, resource: ORDERS,
  });
  const rt0 = t.json?.refresh_token;
  const t2 = await tokenRequest({ grant_type: 'refresh_token', refresh_token: rt0, resource: PROFILE });
  check('rotation on: refresh answers a new refresh token', t2.status === 200 && t2.json.refresh_token && t2.json.refresh_token !== rt0, t2.json?.error);
  const t3 = await tokenRequest({ grant_type: 'refresh_token', refresh_token: rt0, resource: PROFILE });
  check('rotation on: reusing the old refresh token -> invalid_grant', t3.status === 400 && t3.json?.error === 'invalid_grant', t3.json);

  // BFFGATE_EXCHANGE_TARGETS=profile,orders: exchange to orders, limited to what the user holds
  const exchanged = [];
  {
    const bob = await codeTokens('bob');
    const partial = await exchange(bob.access_token, { resource: ORDERS, scope: 'orders:read orders:write' });
    const pp = partial.status === 200 ? decodeJwt(partial.json.access_token) : {};
    check('exchange to orders (allowed by BFFGATE_EXCHANGE_TARGETS): bob asking orders:read orders:write gets only orders:read', partial.status === 200
      && pp.aud === ORDERS && pp.sub === 'bob' && same(scopesOf(pp), ['orders:read']) && partial.json.scope === 'orders:read', { status: partial.status, body: partial.json?.error, scope: pp.scope });
    const beyond = await exchange(bob.access_token, { resource: ORDERS, scope: 'orders:write' });
    check('exchange to orders: bob asking only orders:write (not his) -> 400 invalid_scope, no token', errorIs(beyond, 400, 'invalid_scope') && !beyond.json.access_token, beyond.json);
    const dflt = await exchange(bob.access_token, { resource: ORDERS });
    check('exchange to orders without scope: bob gets what he holds (orders:read)', dflt.status === 200 && same(scopesOf(decodeJwt(dflt.json.access_token)), ['orders:read']), { status: dflt.status, scope: dflt.json?.scope });
    const aliceEx = await exchange(t.json.access_token, { resource: ORDERS });
    exchanged.push(bob.access_token, partial.json?.access_token, dflt.json?.access_token, aliceEx.json?.access_token);
    check('exchange to orders without scope: alice gets orders:read orders:write', aliceEx.status === 200 && same(scopesOf(decodeJwt(aliceEx.json.access_token)), ['orders:read', 'orders:write']), { status: aliceEx.status, scope: aliceEx.json?.scope });
  }

  const noSecret = startProcess('idp-nosecret', 'idp.mjs', { ...cfg.env, BFFGATE_CLIENT_SECRET: '', BFFGATE_IDP_PORT: String(Number(new URL(cfg.issuer).port) + 50) }, path.join(cfg.dir, 'idp-nosecret.log'));
  const res = await Promise.race([noSecret.exited, new Promise((x) => setTimeout(() => x(null), 5000))]);
  const log = fs.readFileSync(path.join(cfg.dir, 'idp-nosecret.log'), 'utf8');
  check('IdP refuses to start without BFFGATE_CLIENT_SECRET, with a clear message', res && res.code !== 0 && /BFFGATE_CLIENT_SECRET/.test(log), { res, log: log.slice(0, 200) });
  if (!res) await stopProcess(noSecret);
  const badTarget = startProcess('idp-badtarget', 'idp.mjs', { ...cfg.env, BFFGATE_EXCHANGE_TARGETS: 'https://unknown.api.local', BFFGATE_IDP_PORT: String(Number(new URL(cfg.issuer).port) + 51) }, path.join(cfg.dir, 'idp-badtarget.log'));
  const res2 = await Promise.race([badTarget.exited, new Promise((x) => setTimeout(() => x(null), 5000))]);
  const log2 = fs.readFileSync(path.join(cfg.dir, 'idp-badtarget.log'), 'utf8');
  check('IdP refuses to start with an unknown BFFGATE_EXCHANGE_TARGETS entry', res2 && res2.code !== 0 && /BFFGATE_EXCHANGE_TARGETS/.test(log2), { res2, log: log2.slice(0, 200) });
  if (!res2) await stopProcess(badTarget);

  const idpLog = fs.readFileSync(path.join(cfg.dir, 'idp.log'), 'utf8');
  const apiLog = fs.readFileSync(path.join(cfg.dir, 'api.log'), 'utf8');
  const secrets = [cfg.secret, oldAccessToken, rt0, t2.json?.refresh_token, a.code, a.verifier, ...exchanged].filter(Boolean);
  check('no secret, token (exchanged ones too), code or verifier in the IdP or API logs', secrets.every((s) => !idpLog.includes(s) && !apiLog.includes(s)));
}

const timer = setTimeout(() => {
  console.log('not ok - selftest deadline exceeded');
  failed += 1;
  finish();
}, DEADLINE_MS);

let finished = false;
async function finish() {
  if (finished) return;
  finished = true;
  clearTimeout(timer);
  for (const c of children) {
    const r = await stopProcess(c);
    if (SPAWN && c.name === 'api') check('API process exits 0 on SIGTERM', r.code === 0, r);
  }
  if (cfg?.backchannel) cfg.backchannel.close();
  if (cfg?.dir && failed === 0) fs.rmSync(cfg.dir, { recursive: true, force: true });
  else if (cfg?.dir) console.log(`# logs kept in ${cfg.dir}`);
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 ? 0 : 1);
}

main().catch((err) => {
  if (!(err instanceof Abort)) {
    failed += 1;
    console.log(`not ok - unexpected error: ${err.stack || err}`);
  }
}).finally(finish);
