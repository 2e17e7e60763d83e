// The demo identity provider's profiles (BFFGATE_IDP_PROFILE = default | auth0 | entra, and
// BFFGATE_IDP_OMIT_SCOPE), against the provider ALONE: no Envoy, no bffgate, no APIs. Each
// describe block spawns `node demo/idp.mjs` with its profile on its own port (fresh secret and key
// file in a temporary directory), waits until the discovery document answers, and runs the code
// flow + S256 PKCE as alice or bob through the login form with a cookie jar, then the token
// endpoint directly with client_secret_basic. Access tokens are verified against the provider's
// JWKS before their claims are asserted.
//
// The entra block also starts the demo APIs, to show that they accept its `scp` tokens.
//
// Ports: IDP_PROFILES_PORT_BASE (default 19400) + 0..3, and + 12..14 for the APIs, on 127.0.0.1.
// Run inside a network namespace when others may use those ports.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { createLocalJWKSet, jwtVerify } from 'jose';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const PORT_BASE = Number(process.env.IDP_PROFILES_PORT_BASE || 19400);
const ORDERS = 'https://orders.api.local';
const PROFILE = 'https://profile.api.local';
const REDIRECT_URI = 'https://localhost:8443/auth/callback';
const XCHG = 'urn:ietf:params:oauth:grant-type:token-exchange';
const AT_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const START_DEADLINE_MS = 20_000;

// ---------------------------------------------------------------------------------------------
// one provider process

/**
 * Spawns `node demo/<script>` with `env` (logs to dir/<name>.log); resolves once `readyUrl`
 * answers 200, polling (never a fixed sleep), or fails with the log when the process exits or
 * the deadline passes.
 */
async function startProcess(name, script, env, readyUrl, dir) {
  const logFile = path.join(dir, `${name}.log`);
  const out = fs.openSync(logFile, 'a');
  const child = spawn(process.execPath, [path.join(ROOT, 'demo', script)], {
    cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', out, out],
  });
  fs.closeSync(out);
  const exited = new Promise((r) => { child.on('exit', (code, signal) => r({ code, signal })); });
  let gone = null;
  exited.then((e) => { gone = e; });
  const end = Date.now() + START_DEADLINE_MS;
  for (;;) {
    if (gone) throw new Error(`${name} exited (${JSON.stringify(gone)}) before answering:\n${fs.readFileSync(logFile, 'utf8')}`);
    try {
      const r = await fetch(readyUrl, { signal: AbortSignal.timeout(1000) });
      if (r.status === 200) break;
    } catch { /* not listening yet */ }
    if (Date.now() > end) {
      child.kill('SIGKILL');
      throw new Error(`${name} not ready within ${START_DEADLINE_MS} ms:\n${fs.readFileSync(logFile, 'utf8')}`);
    }
    await new Promise((r) => { setTimeout(r, 100); });
  }
  return {
    log: () => fs.readFileSync(logFile, 'utf8'),
    async stop() {
      if (gone) return;
      child.kill('SIGTERM');
      const res = await Promise.race([exited, new Promise((r) => { setTimeout(() => r(null), 5000); })]);
      if (res === null) {
        child.kill('SIGKILL');
        await exited;
      }
    },
  };
}

/**
 * The demo provider with `env` on `port` (fresh secret and key file), and with `apis: true` the
 * demo APIs trusting it on port + 10 (orders), + 11 (profile), + 12 (public).
 */
async function startIdp(name, port, env = {}, { apis = false } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `bffgate-idp-${name}-`));
  const secret = crypto.randomBytes(32).toString('base64url');
  const issuer = `http://localhost:${port}`;
  const procs = [];
  const stopAll = async () => {
    for (const p of procs.reverse()) await p.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  };
  try {
    procs.push(await startProcess('idp', 'idp.mjs', {
      BFFGATE_CLIENT_SECRET: secret,
      BFFGATE_IDP_PORT: String(port),
      BFFGATE_IDP_KEYS: path.join(dir, 'idp-keys.json'),
      BFFGATE_BACKCHANNEL_LOGOUT_URI: 'off',
      BFFGATE_IDP_PROFILE: '',
      BFFGATE_IDP_OMIT_SCOPE: '',
      ...env,
    }, `${issuer}/.well-known/openid-configuration`, dir));
    if (apis) {
      procs.push(await startProcess('api', 'api.mjs', {
        BFFGATE_IDP_ISSUER: issuer,
        BFFGATE_API_ORDERS_PORT: String(port + 10),
        BFFGATE_API_PROFILE_PORT: String(port + 11),
        BFFGATE_API_PUBLIC_PORT: String(port + 12),
      }, `http://127.0.0.1:${port + 12}/__stats`, dir));
    }
  } catch (err) {
    await stopAll();
    throw err;
  }
  const jwks = createLocalJWKSet(await (await fetch(`${issuer}/jwks`)).json());
  return {
    name,
    issuer,
    secret,
    jwks,
    api: { orders: `http://127.0.0.1:${port + 10}`, profile: `http://127.0.0.1:${port + 11}` },
    log: () => procs[0].log(),
    stop: stopAll,
  };
}

// ---------------------------------------------------------------------------------------------
// HTTP with a cookie jar (the IdP's interaction and session cookies; one host)

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
    return [...this.cookies.values()]
      .filter((c) => urlPath === c.path || urlPath.startsWith(c.path.endsWith('/') ? c.path : `${c.path}/`))
      .sort((a, b) => b.path.length - a.path.length)
      .map((c) => `${c.name}=${c.value}`)
      .join('; ');
  }
}

async function req(method, url, { jar, headers = {}, form } = {}) {
  const u = new URL(url);
  const h = { ...headers };
  const c = jar?.header(u.pathname);
  if (c) h.cookie = c;
  let body;
  if (form) {
    h['content-type'] = 'application/x-www-form-urlencoded';
    body = new URLSearchParams(form).toString();
  }
  const res = await fetch(u, {
    method, headers: h, body, redirect: 'manual', signal: AbortSignal.timeout(10_000),
  });
  jar?.store(res);
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { json = null; }
  return {
    status: res.status, headers: res.headers, text, json, location: res.headers.get('location'),
  };
}

const short = (r) => `${r.status} ${r.location || r.text.slice(0, 300)}`;

// ---------------------------------------------------------------------------------------------
// the code flow as bffgate + a browser run it

/**
 * Authorization request with `extra` ([name, value] pairs, repeated names allowed) as `user`,
 * through the login form and the server-side consent. Returns the callback URL's parameters
 * (code or error) with the PKCE verifier and the state sent.
 */
async function authorize(idp, user, extra) {
  const jar = new Jar();
  const state = crypto.randomBytes(16).toString('base64url');
  const verifier = crypto.randomBytes(32).toString('base64url');
  const q = new URLSearchParams([
    ['response_type', 'code'],
    ['client_id', 'bffgate'],
    ['redirect_uri', REDIRECT_URI],
    ['state', state],
    ['nonce', crypto.randomBytes(16).toString('base64url')],
    ['code_challenge', crypto.createHash('sha256').update(verifier).digest('base64url')],
    ['code_challenge_method', 'S256'],
    ['prompt', 'consent'],
    ...extra,
  ]);
  let r = await req('GET', `${idp.issuer}/auth?${q}`, { jar });
  const trail = [];
  for (let hop = 0; hop < 12; hop += 1) {
    trail.push(short(r));
    if (r.status >= 300 && r.status < 400 && r.location) {
      const next = new URL(r.location, idp.issuer);
      if (next.href.startsWith(REDIRECT_URI)) return { cb: next.searchParams, verifier, state };
      assert.equal(next.origin, idp.issuer, `redirect stays at the IdP: ${trail.join(' | ')}`);
      r = await req('GET', next.href, { jar });
    } else if (r.status === 200 && /id="login-form"/.test(r.text)) {
      const action = /<form[^>]*id="login-form"[^>]*action="([^"]+)"/.exec(r.text)[1].replace(/&amp;/g, '&');
      r = await req('POST', new URL(action, idp.issuer).href, { jar, form: { login: user, password: user } });
    } else {
      assert.fail(`unexpected IdP answer: ${trail.join(' | ')}`);
    }
  }
  return assert.fail(`too many hops: ${trail.join(' | ')}`);
}

/** authorize() that must end with a code; returns { code, verifier }. */
async function loginCode(idp, user, extra) {
  const { cb, verifier, state } = await authorize(idp, user, extra);
  assert.equal(cb.get('error'), null, `no error at the callback: ${cb.get('error')} ${cb.get('error_description')}`);
  assert.equal(cb.get('state'), state);
  assert.ok(cb.get('code'), 'a code');
  return { code: cb.get('code'), verifier };
}

/** POST /token with client_secret_basic; `params` as [name, value] pairs or an object. */
function token(idp, params) {
  const basic = Buffer.from(`bffgate:${encodeURIComponent(idp.secret)}`).toString('base64');
  return req('POST', `${idp.issuer}/token`, { headers: { authorization: `Basic ${basic}` }, form: params });
}

async function exchangeCode(idp, { code, verifier }, extra = []) {
  return token(idp, [
    ['grant_type', 'authorization_code'], ['code', code], ['redirect_uri', REDIRECT_URI],
    ['code_verifier', verifier], ...extra,
  ]);
}

const refresh = (idp, rt, extra = []) => token(idp, [['grant_type', 'refresh_token'], ['refresh_token', rt], ...extra]);

const exchange = (idp, subject, extra = []) => token(idp, [
  ['grant_type', XCHG], ['subject_token', subject], ['subject_token_type', AT_TYPE], ...extra,
]);

/** A 200 token response whose access token is a JWT of this IdP: its verified claims. */
async function claimsOf(idp, r) {
  assert.equal(r.status, 200, `token response: ${short(r)}`);
  assert.equal(r.json.token_type, 'Bearer');
  assert.equal(r.json.access_token.split('.').length, 3, 'the access token is a JWT');
  const { payload, protectedHeader } = await jwtVerify(r.json.access_token, idp.jwks, { issuer: idp.issuer, typ: 'at+jwt' });
  assert.equal(protectedHeader.typ, 'at+jwt');
  assert.equal(payload.client_id, 'bffgate');
  return payload;
}

const words = (s) => String(s ?? '').split(' ').filter(Boolean).sort();
const stats = async (idp) => (await req('GET', `${idp.issuer}/__stats`)).json;

/** An error answer of the token endpoint. */
function assertTokenError(r, error, msg) {
  assert.equal(r.status, 400, `${msg}: ${short(r)}`);
  assert.equal(r.json?.error, error, `${msg}: ${short(r)}`);
  assert.equal(typeof r.json.error_description, 'string', msg);
  assert.equal(r.json.access_token, undefined, msg);
}

const ALICE_SCOPE = 'openid profile offline_access orders:read orders:write';

// ---------------------------------------------------------------------------------------------

describe('default profile (RFC 8707 resource)', () => {
  let idp;
  before(async () => { idp = await startIdp('default', PORT_BASE); }, { timeout: 30_000 });
  after(async () => { await idp?.stop(); }, { timeout: 10_000 });

  test('resource selects the audience at the code exchange and on refresh; audience is not a parameter', async () => {
    const s0 = await stats(idp);
    assert.equal(s0.profile, 'default');
    const login = await loginCode(idp, 'alice', [
      ['scope', ALICE_SCOPE], ['resource', ORDERS], ['resource', PROFILE], ['audience', PROFILE],
    ]);
    const r = await exchangeCode(idp, login, [['resource', ORDERS], ['audience', PROFILE]]);
    const c = await claimsOf(idp, r);
    assert.equal(c.aud, ORDERS);
    assert.deepEqual(words(c.scope), ['orders:read', 'orders:write']);
    assert.equal(c.scp, undefined);
    assert.equal(c.azp, undefined, 'no profile claims in the default profile');
    assert.deepEqual(words(r.json.scope), ['orders:read', 'orders:write']);

    const p = await refresh(idp, r.json.refresh_token, [['resource', PROFILE], ['audience', ORDERS]]);
    const pc = await claimsOf(idp, p);
    assert.equal(pc.aud, PROFILE);
    assert.deepEqual(words(pc.scope), ['profile']);

    // without resource: an opaque userinfo token, never an API audience
    const u = await refresh(idp, r.json.refresh_token);
    assert.equal(u.status, 200, short(u));
    assert.notEqual(u.json.access_token.split('.').length, 3, 'opaque');

    const s1 = await stats(idp);
    assert.equal((s1.issued[ORDERS] || 0) - (s0.issued[ORDERS] || 0), 1);
    assert.equal((s1.issued[PROFILE] || 0) - (s0.issued[PROFILE] || 0), 1);
    assert.equal((s1.issued.userinfo || 0) - (s0.issued.userinfo || 0), 1);
    assert.equal(s1.issued_by_grant.authorization_code[ORDERS] - (s0.issued_by_grant.authorization_code?.[ORDERS] || 0), 1);
    assert.equal(s1.issued_by_grant.refresh_token[PROFILE] - (s0.issued_by_grant.refresh_token?.[PROFILE] || 0), 1);
  });

  test('bob never gets orders:write', async () => {
    const login = await loginCode(idp, 'bob', [['scope', ALICE_SCOPE], ['resource', ORDERS], ['resource', PROFILE]]);
    const r = await exchangeCode(idp, login, [['resource', ORDERS]]);
    assert.equal((await claimsOf(idp, r)).scope, 'orders:read');
    assertTokenError(await refresh(idp, r.json.refresh_token, [['resource', ORDERS], ['scope', 'orders:write']]),
      'invalid_scope', 'bob: refresh asking orders:write');
  });
});

describe('auth0 profile (audience parameter)', () => {
  let idp;
  before(async () => { idp = await startIdp('auth0', PORT_BASE + 1, { BFFGATE_IDP_PROFILE: 'auth0' }); }, { timeout: 30_000 });
  after(async () => { await idp?.stop(); }, { timeout: 10_000 });

  let alice; // the code exchange's response for alice (audience orders)

  test('login audience orders: the code gives a JWT for [orders, userinfo] with scope (OIDC scopes first); resource is ignored', async () => {
    const s0 = await stats(idp);
    assert.equal(s0.profile, 'auth0');
    const login = await loginCode(idp, 'alice', [
      ['scope', ALICE_SCOPE], ['audience', ORDERS], ['resource', PROFILE],
    ]);
    const r = await exchangeCode(idp, login, [['resource', PROFILE]]);
    const c = await claimsOf(idp, r);
    assert.deepEqual(c.aud, [ORDERS, `${idp.issuer}/me`]);
    assert.equal(typeof c.scope, 'string');
    assert.deepEqual(words(c.scope), ['offline_access', 'openid', 'orders:read', 'orders:write', 'profile']);
    assert.equal(c.scope.split(' ')[0], 'openid');
    assert.equal(c.scp, undefined);
    assert.equal(c.azp, 'bffgate');
    assert.equal(r.json.scope, c.scope, 'the token response lists the same scope');
    assert.ok(r.json.refresh_token && r.json.id_token);
    alice = r.json;
    const s1 = await stats(idp);
    assert.equal(s1.issued_by_grant.authorization_code[ORDERS] - (s0.issued_by_grant.authorization_code?.[ORDERS] || 0), 1);
  });

  test('the code exchange honours audience (another API of the client)', async () => {
    const login = await loginCode(idp, 'alice', [['scope', ALICE_SCOPE], ['audience', ORDERS]]);
    const c = await claimsOf(idp, await exchangeCode(idp, login, [['audience', PROFILE]]));
    assert.deepEqual(c.aud, [PROFILE, `${idp.issuer}/me`]);
    assert.ok(words(c.scope).includes('profile'));
    assert.ok(!words(c.scope).some((s) => s.startsWith('orders:')), c.scope);
  });

  test('login audience profile: the code exchange and refresh without audience give profile tokens', async () => {
    const login = await loginCode(idp, 'alice', [['scope', ALICE_SCOPE], ['audience', PROFILE]]);
    const r = await exchangeCode(idp, login);
    const c = await claimsOf(idp, r);
    assert.deepEqual(c.aud, [PROFILE, `${idp.issuer}/me`]);
    const again = await claimsOf(idp, await refresh(idp, r.json.refresh_token));
    assert.deepEqual(again.aud, [PROFILE, `${idp.issuer}/me`]);
    const o = await claimsOf(idp, await refresh(idp, r.json.refresh_token, [['audience', ORDERS]]));
    assert.deepEqual(o.aud, [ORDERS, `${idp.issuer}/me`]);
    assert.ok(words(o.scope).includes('orders:write'), 'the other API gets every scope the user holds');
  });

  test('refresh with audience=profile gives a profile token (multi-resource refresh token); resource is ignored', async () => {
    const p = await refresh(idp, alice.refresh_token, [['audience', PROFILE], ['resource', ORDERS]]);
    const pc = await claimsOf(idp, p);
    assert.deepEqual(pc.aud, [PROFILE, `${idp.issuer}/me`]);
    assert.ok(!words(pc.scope).some((s) => s.startsWith('orders:')), pc.scope);
    assert.ok(words(pc.scope).includes('profile'));

    // resource alone is not a target: the login audience, as without any target
    const o = await refresh(idp, alice.refresh_token, [['resource', PROFILE]]);
    const oc = await claimsOf(idp, o);
    assert.deepEqual(oc.aud, [ORDERS, `${idp.issuer}/me`]);

    // down-scoping with audience + scope: only the asked scope, and no userinfo audience
    const d = await refresh(idp, alice.refresh_token, [['audience', ORDERS], ['scope', 'orders:read']]);
    const dc = await claimsOf(idp, d);
    assert.equal(dc.aud, ORDERS);
    assert.equal(dc.scope, 'orders:read');
    assert.equal(d.json.scope, 'orders:read');
  });

  test('without audience at /auth the code gives an opaque userinfo-only token, whatever resource says', async () => {
    const s0 = await stats(idp);
    const login = await loginCode(idp, 'alice', [['scope', ALICE_SCOPE], ['resource', ORDERS]]);
    const r = await exchangeCode(idp, login, [['resource', ORDERS]]);
    assert.equal(r.status, 200, short(r));
    assert.notEqual(r.json.access_token.split('.').length, 3, 'opaque, not an API JWT');
    const s1 = await stats(idp);
    assert.equal((s1.issued.userinfo || 0) - (s0.issued.userinfo || 0), 1);
    assert.equal((s1.issued[ORDERS] || 0) - (s0.issued[ORDERS] || 0), 0, 'no orders token issued');
  });

  test('bob never gets orders:write', async () => {
    const login = await loginCode(idp, 'bob', [['scope', ALICE_SCOPE], ['audience', ORDERS]]);
    const r = await exchangeCode(idp, login);
    const c = await claimsOf(idp, r);
    assert.deepEqual(c.aud, [ORDERS, `${idp.issuer}/me`]);
    assert.ok(words(c.scope).includes('orders:read'));
    assert.ok(!words(c.scope).includes('orders:write'), c.scope);
    assertTokenError(await refresh(idp, r.json.refresh_token, [['audience', ORDERS], ['scope', 'orders:write']]),
      'invalid_scope', 'bob: refresh asking orders:write');
    const p = await claimsOf(idp, await refresh(idp, r.json.refresh_token, [['audience', PROFILE]]));
    assert.ok(!words(p.scope).includes('orders:write'));
  });

  test('token exchange honours audience and ignores resource', async () => {
    const e = await exchange(idp, alice.access_token, [['audience', PROFILE], ['resource', ORDERS]]);
    const ec = await claimsOf(idp, e);
    assert.equal(ec.aud, PROFILE);
    assert.equal(ec.scope, 'profile');
    assert.equal(ec.azp, 'bffgate');
    assert.equal(e.json.issued_token_type, AT_TYPE);
    assertTokenError(await exchange(idp, alice.access_token, [['resource', PROFILE]]), 'invalid_target', 'exchange with resource only');
  });

  test('an unknown audience at /auth is refused at the callback (access_denied, as Auth0)', async () => {
    const { cb, state } = await authorize(idp, 'alice', [['scope', ALICE_SCOPE], ['audience', 'https://unknown.api.local']]);
    assert.equal(cb.get('error'), 'access_denied');
    assert.match(cb.get('error_description'), /Service not found/);
    assert.equal(cb.get('state'), state);
    assert.equal(cb.get('iss'), idp.issuer);
    assert.equal(cb.get('code'), null);
  });
});

describe('entra profile (resource-qualified scopes, scp)', () => {
  let idp;
  before(async () => {
    idp = await startIdp('entra', PORT_BASE + 2, { BFFGATE_IDP_PROFILE: 'entra' }, { apis: true });
  }, { timeout: 45_000 });
  after(async () => { await idp?.stop(); }, { timeout: 10_000 });

  const ENTRA_LOGIN = `openid profile offline_access ${ORDERS}/orders:read ${ORDERS}/orders:write`;
  let alice;

  test('login with orders scopes: JWT aud orders, scp (short names) and no scope; resource and audience are ignored', async () => {
    const s0 = await stats(idp);
    assert.equal(s0.profile, 'entra');
    const login = await loginCode(idp, 'alice', [['scope', ENTRA_LOGIN], ['resource', PROFILE], ['audience', PROFILE]]);
    const r = await exchangeCode(idp, login, [['resource', PROFILE], ['audience', PROFILE]]);
    const c = await claimsOf(idp, r);
    assert.equal(c.aud, ORDERS);
    assert.equal(c.scope, undefined, 'no scope claim');
    assert.deepEqual(words(c.scp), ['orders:read', 'orders:write']);
    assert.equal(c.azp, 'bffgate');
    assert.deepEqual(words(r.json.scope), [`${ORDERS}/orders:read`, `${ORDERS}/orders:write`]);
    assert.ok(r.json.refresh_token && r.json.id_token);
    alice = r.json;
    const s1 = await stats(idp);
    assert.equal(s1.issued_by_grant.authorization_code[ORDERS] - (s0.issued_by_grant.authorization_code?.[ORDERS] || 0), 1);
  });

  test('refresh with the profile resource\'s scopes gives a profile token (named scope and .default)', async () => {
    for (const scope of [`${PROFILE}/profile`, `${PROFILE}/.default`, `openid offline_access ${PROFILE}/profile`]) {
      const p = await refresh(idp, alice.refresh_token, [['scope', scope], ['resource', ORDERS], ['audience', ORDERS]]);
      const pc = await claimsOf(idp, p);
      assert.equal(pc.aud, PROFILE, scope);
      assert.equal(pc.scp, 'profile', scope);
      assert.equal(pc.scope, undefined, scope);
      assert.equal(p.json.scope, `${PROFILE}/profile`, scope);
    }
    // back to orders, down-scoped
    const o = await refresh(idp, alice.refresh_token, [['scope', `${ORDERS}/orders:read`], ['resource', PROFILE]]);
    const oc = await claimsOf(idp, o);
    assert.equal(oc.aud, ORDERS);
    assert.equal(oc.scp, 'orders:read');
    assert.equal(o.json.scope, `${ORDERS}/orders:read`);
  });

  test('the code exchange may name the resource with scope; .default at /auth gives every scope the user holds', async () => {
    const login = await loginCode(idp, 'alice', [['scope', `openid offline_access ${ORDERS}/.default`]]);
    const c = await claimsOf(idp, await exchangeCode(idp, login, [['scope', `${PROFILE}/.default`]]));
    assert.equal(c.aud, PROFILE);
    assert.equal(c.scp, 'profile');
    const login2 = await loginCode(idp, 'alice', [['scope', `openid offline_access ${ORDERS}/.default`]]);
    const c2 = await claimsOf(idp, await exchangeCode(idp, login2));
    assert.equal(c2.aud, ORDERS);
    assert.deepEqual(words(c2.scp), ['orders:read', 'orders:write']);
  });

  test('login with profile scopes: the code exchange and refresh without scope give profile tokens', async () => {
    const login = await loginCode(idp, 'alice', [['scope', `openid offline_access ${PROFILE}/profile`]]);
    const r = await exchangeCode(idp, login);
    const c = await claimsOf(idp, r);
    assert.equal(c.aud, PROFILE);
    assert.equal(c.scp, 'profile');
    const again = await claimsOf(idp, await refresh(idp, r.json.refresh_token));
    assert.equal(again.aud, PROFILE);
    const o = await claimsOf(idp, await refresh(idp, r.json.refresh_token, [['scope', `${ORDERS}/.default`]]));
    assert.equal(o.aud, ORDERS);
    assert.deepEqual(words(o.scp), ['orders:read', 'orders:write']);
  });

  test('scopes of two resources in one request: invalid_scope at /auth and at /token', async () => {
    const { cb, state } = await authorize(idp, 'alice', [['scope', `openid ${ORDERS}/orders:read ${PROFILE}/profile`]]);
    assert.equal(cb.get('error'), 'invalid_scope');
    assert.match(cb.get('error_description'), /more than one resource/);
    assert.equal(cb.get('state'), state);
    assert.equal(cb.get('iss'), idp.issuer);
    assert.equal(cb.get('code'), null);

    const s0 = await stats(idp);
    assertTokenError(await refresh(idp, alice.refresh_token, [['scope', `${ORDERS}/orders:read ${PROFILE}/profile`]]),
      'invalid_scope', 'refresh with two resources');
    assertTokenError(await refresh(idp, alice.refresh_token, [['scope', 'orders:read']]),
      'invalid_scope', 'refresh with an unqualified resource scope');
    assertTokenError(await refresh(idp, alice.refresh_token, [['scope', `${ORDERS}/.default ${ORDERS}/orders:read`]]),
      'invalid_scope', '.default mixed with a named scope');
    const odd = await refresh(idp, alice.refresh_token, [['scope', `${ORDERS}/"x\\`]]);
    assertTokenError(odd, 'invalid_scope', 'a scope with characters RFC 6749 excludes');
    assert.doesNotMatch(odd.json.error_description, /["\\]/, 'the description does not echo them');
    const s1 = await stats(idp);
    assert.equal(s1.token_requests.refresh_token - s0.token_requests.refresh_token, 4, 'refused requests are counted');
    assert.equal(s1.grants.refresh_token - s0.grants.refresh_token, 0, 'and issue nothing');
  });

  test('bob never gets orders:write', async () => {
    const login = await loginCode(idp, 'bob', [['scope', ENTRA_LOGIN]]);
    const r = await exchangeCode(idp, login);
    const c = await claimsOf(idp, r);
    assert.equal(c.aud, ORDERS);
    assert.equal(c.scp, 'orders:read');
    assert.equal(r.json.scope, `${ORDERS}/orders:read`);
    assertTokenError(await refresh(idp, r.json.refresh_token, [['scope', `${ORDERS}/orders:write`]]),
      'invalid_scope', 'bob: refresh asking orders:write');
    const d = await claimsOf(idp, await refresh(idp, r.json.refresh_token, [['scope', `${ORDERS}/.default`]]));
    assert.equal(d.scp, 'orders:read');
  });

  test('token exchange takes the target from scope; resource and audience are ignored', async () => {
    const e = await exchange(idp, alice.access_token, [['scope', `${PROFILE}/profile`], ['resource', ORDERS]]);
    const ec = await claimsOf(idp, e);
    assert.equal(ec.aud, PROFILE);
    assert.equal(ec.scp, 'profile');
    assert.equal(ec.scope, undefined);
    assert.equal(e.json.scope, `${PROFILE}/profile`);
    assertTokenError(await exchange(idp, alice.access_token, [['audience', PROFILE], ['resource', PROFILE]]),
      'invalid_target', 'exchange without scope');
  });

  test('the demo APIs take the scopes of an entra token from scp', async () => {
    const bearer = (t) => ({ authorization: `Bearer ${t}` });
    const ok = await req('GET', `${idp.api.orders}/api/orders`, { headers: bearer(alice.access_token) });
    assert.equal(ok.status, 200, short(ok));
    const login = await loginCode(idp, 'bob', [['scope', ENTRA_LOGIN]]);
    const bob = await exchangeCode(idp, login);
    assert.equal(bob.status, 200, short(bob));
    const read = await req('GET', `${idp.api.orders}/api/orders`, { headers: bearer(bob.json.access_token) });
    assert.equal(read.status, 200, short(read));
    const write = await fetch(`${idp.api.orders}/api/orders`, {
      method: 'POST', headers: { ...bearer(bob.json.access_token), 'content-type': 'application/json' }, body: '{"item":"x"}',
    });
    assert.equal(write.status, 403, 'bob: scp orders:read only, POST needs orders:write');
    const p = await refresh(idp, alice.refresh_token, [['scope', `${PROFILE}/profile`]]);
    const prof = await req('GET', `${idp.api.profile}/api/profile`, { headers: bearer(p.json.access_token) });
    assert.equal(prof.status, 200, short(prof));
    const wrongAud = await req('GET', `${idp.api.profile}/api/profile`, { headers: bearer(alice.access_token) });
    assert.equal(wrongAud.status, 401, 'an orders token at the profile API');
  });
});

describe('BFFGATE_IDP_OMIT_SCOPE=1', () => {
  let idp;
  before(async () => { idp = await startIdp('omit-scope', PORT_BASE + 3, { BFFGATE_IDP_OMIT_SCOPE: '1' }); }, { timeout: 30_000 });
  after(async () => { await idp?.stop(); }, { timeout: 10_000 });

  test('no scope in any token response (code, refresh, exchange); the tokens still carry it', async () => {
    const login = await loginCode(idp, 'alice', [['scope', ALICE_SCOPE], ['resource', ORDERS], ['resource', PROFILE]]);
    const r = await exchangeCode(idp, login, [['resource', ORDERS]]);
    const c = await claimsOf(idp, r);
    assert.equal('scope' in r.json, false, 'code exchange response without scope');
    assert.deepEqual(words(c.scope), ['orders:read', 'orders:write']);
    const p = await refresh(idp, r.json.refresh_token, [['resource', PROFILE], ['scope', 'profile']]);
    assert.equal((await claimsOf(idp, p)).scope, 'profile');
    assert.equal('scope' in p.json, false, 'refresh response without scope');
    const e = await exchange(idp, r.json.access_token, [['resource', PROFILE]]);
    assert.equal((await claimsOf(idp, e)).aud, PROFILE);
    assert.equal('scope' in e.json, false, 'exchange response without scope');
  });
});
