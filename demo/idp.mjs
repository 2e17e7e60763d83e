// bffgate demo identity provider: oidc-provider 9 on 127.0.0.1:9000 (issuer http://localhost:9000).
//
// What it offers (docs/http.md describes the demo stack's HTTP surface around it):
//   - one confidential client `bffgate` (client_secret_basic, secret from $BFFGATE_CLIENT_SECRET),
//     code flow with mandatory S256 PKCE, refresh tokens, revocation, introspection,
//     RP-initiated logout and back-channel logout;
//   - resource indicators (RFC 8707): JWT access tokens whose `aud` is the requested resource,
//     https://orders.api.local (orders:read orders:write) and https://profile.api.local (profile);
//   - demo users alice/alice (orders:read orders:write profile) and bob/bob (orders:read profile),
//     a plain HTML login form at /interaction/:uid and consent granted server-side, per user;
//   - RFC 8693 token exchange for `bffgate`: an access token this IdP issued to bffgate (JWT, or
//     opaque) exchanged for a JWT access token of another audience (allowed targets:
//     BFFGATE_EXCHANGE_TARGETS), scope limited to what the user holds for that audience;
//   - down-scoping on the refresh_token grant (`resource` + a narrower `scope`);
//   - GET /__stats (token-endpoint requests and grants by grant type, revocations counted, and
//     the most revocation requests answered at once),
//     GET/POST /__fault (fault injection on /token and /token/revocation, for tests) and
//     POST /__reset (zeroes the counters and clears the faults); loopback only.
//
// Environment:
//   BFFGATE_CLIENT_SECRET      (required) secret of client `bffgate`
//   BFFGATE_IDP_PORT           listen port on 127.0.0.1, default 9000; issuer http://localhost:<port>
//   BFFGATE_IDP_KEYS           signing/cookie key file, default .run/idp-keys.json (created once)
//   BFFGATE_ACCESS_TOKEN_TTL   access-token lifetime in seconds, default 300
//   BFFGATE_ROTATE_REFRESH     "1" rotates refresh tokens on every use, default off
//   BFFGATE_PUBLIC_ORIGIN      origin of the app, default https://localhost:8443 (redirect URIs)
//   BFFGATE_BACKCHANNEL_LOGOUT_URI  back-channel logout URI of the client,
//                              default <public origin>/auth/backchannel-logout; "off" disables it
//   BFFGATE_TLS_CA             PEM file trusted for the back-channel logout call,
//                              default .run/tls/cert.pem (read when a logout is sent)
//   BFFGATE_EXCHANGE_TARGETS   comma-separated resources a token exchange may target,
//                              default https://profile.api.local
//   BFFGATE_IDP_ISSUER         issuer URL, default http://localhost:<port> (e.g. http://127.0.0.1:<port>)
//   BFFGATE_IDP_CLIENT_ID      the client's id, default bffgate
//   BFFGATE_IDP_RESOURCES      more resource servers, `resource=scope scope,...` (e.g.
//                              `api://orders=orders.read`); every demo user holds their scopes
//   BFFGATE_IDP_PROFILE        which provider's wire dialect for choosing a token's audience:
//                              default (RFC 8707 `resource`, as described above), auth0 (an
//                              `audience` parameter) or entra (resource-qualified scopes, `scp`);
//                              see "provider profiles" below
//   BFFGATE_IDP_OMIT_SCOPE     "1" leaves `scope` out of every token endpoint response (any
//                              profile, any grant; RFC 6749 5.1: then it is the requested scope)
//   BFFGATE_IDP_PKJWT_JWKS     a public JWKS (JSON): adds client `<client id>-pkjwt`, which has no
//                              secret and authenticates with private_key_jwt (RFC 7523) signed by
//                              a key of that set; otherwise it is like the first client
//
// Never logs tokens, codes, secrets or query strings.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as path from 'node:path';
import * as querystring from 'node:querystring';

import { calculateJwkThumbprint, createLocalJWKSet, jwtVerify } from 'jose';
import Provider, { errors, interactionPolicy } from 'oidc-provider';

// ---------------------------------------------------------------------------------------------
// settings

function log(msg, fields = {}) {
  const parts = Object.entries(fields)
    .filter(([, v]) => v !== undefined && v !== null && v !== '')
    .map(([k, v]) => `${k}=${typeof v === 'string' && /[\s"]/.test(v) ? JSON.stringify(v) : v}`);
  process.stdout.write(`${new Date().toISOString()} idp ${msg}${parts.length ? ` ${parts.join(' ')}` : ''}\n`);
}

function fail(msg) {
  process.stderr.write(`idp: ${msg}\n`);
  process.stdout.write(`${new Date().toISOString()} idp fatal: ${msg}\n`);
  process.exit(2);
}

function intEnv(name, dflt, min, max) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return dflt;
  if (!/^\d+$/.test(raw)) fail(`${name} must be an integer, got ${JSON.stringify(raw)}`);
  const n = Number(raw);
  if (n < min || n > max) fail(`${name} must be between ${min} and ${max}, got ${n}`);
  return n;
}

const PORT = intEnv('BFFGATE_IDP_PORT', 9000, 1, 65535);
const ISSUER = (process.env.BFFGATE_IDP_ISSUER || `http://localhost:${PORT}`).replace(/\/+$/, '');
const CLIENT_ID = process.env.BFFGATE_IDP_CLIENT_ID || 'bffgate';
const PKJWT_CLIENT_ID = `${CLIENT_ID}-pkjwt`;
let PKJWT_JWKS = null;
if (process.env.BFFGATE_IDP_PKJWT_JWKS) {
  try {
    PKJWT_JWKS = JSON.parse(process.env.BFFGATE_IDP_PKJWT_JWKS);
  } catch {
    PKJWT_JWKS = null;
  }
  if (!Array.isArray(PKJWT_JWKS?.keys) || PKJWT_JWKS.keys.some((k) => k.d !== undefined)) {
    fail('BFFGATE_IDP_PKJWT_JWKS must be a JSON key set of public keys ({"keys":[...]}, no private part)');
  }
}
const ACCESS_TOKEN_TTL = intEnv('BFFGATE_ACCESS_TOKEN_TTL', 300, 1, 86400);
const ROTATE_REFRESH = process.env.BFFGATE_ROTATE_REFRESH === '1';
const KEYS_FILE = path.resolve(process.env.BFFGATE_IDP_KEYS || '.run/idp-keys.json');
const PUBLIC_ORIGIN = (process.env.BFFGATE_PUBLIC_ORIGIN || 'https://localhost:8443').replace(/\/+$/, '');
const BACKCHANNEL_URI = (() => {
  const raw = process.env.BFFGATE_BACKCHANNEL_LOGOUT_URI;
  if (raw === 'off' || raw === 'none') return undefined;
  return raw || `${PUBLIC_ORIGIN}/auth/backchannel-logout`;
})();
const TLS_CA_FILE = path.resolve(process.env.BFFGATE_TLS_CA || '.run/tls/cert.pem');
const EXCHANGE_TARGETS_RAW = process.env.BFFGATE_EXCHANGE_TARGETS || 'https://profile.api.local';
const IDP_PROFILE = process.env.BFFGATE_IDP_PROFILE || 'default';
if (!['default', 'auth0', 'entra'].includes(IDP_PROFILE)) {
  fail(`BFFGATE_IDP_PROFILE must be default, auth0 or entra, got ${JSON.stringify(IDP_PROFILE)}`);
}
const OMIT_SCOPE = process.env.BFFGATE_IDP_OMIT_SCOPE === '1';
const USERINFO_URL = `${ISSUER}/me`;

const CLIENT_SECRET = process.env.BFFGATE_CLIENT_SECRET;
if (!CLIENT_SECRET) {
  fail('BFFGATE_CLIENT_SECRET is not set: the secret of client "bffgate" is required '
    + '(run the setup, or export BFFGATE_CLIENT_SECRET=<random base64url>)');
}
if (CLIENT_SECRET.length < 16) fail('BFFGATE_CLIENT_SECRET is too short (at least 16 characters)');

// ---------------------------------------------------------------------------------------------
// resource servers and users

const ORDERS = 'https://orders.api.local';
const PROFILE = 'https://profile.api.local';

const RESOURCE_SERVERS = {
  [ORDERS]: { scope: 'orders:read orders:write' },
  [PROFILE]: { scope: 'profile' },
};
// BFFGATE_IDP_RESOURCES: `resource=scope scope,...`, scopes held by every demo user (below).
const EXTRA_SCOPES = [];
for (const entry of (process.env.BFFGATE_IDP_RESOURCES || '').split(',').map((s) => s.trim()).filter(Boolean)) {
  const i = entry.indexOf('=');
  const scopes = i > 0 ? entry.slice(i + 1).split(' ').filter(Boolean) : [];
  if (i <= 0 || !scopes.length) fail(`BFFGATE_IDP_RESOURCES: ${JSON.stringify(entry)} is not resource=scope[ scope...]`);
  RESOURCE_SERVERS[entry.slice(0, i)] = { scope: scopes.join(' ') };
  EXTRA_SCOPES.push(...scopes);
}

// OIDC scopes every user may grant; resource scopes are per user below.
const OIDC_SCOPES = new Set(['openid', 'profile', 'email', 'offline_access']);

const USERS = {
  alice: {
    password: 'alice',
    scopes: new Set(['orders:read', 'orders:write', 'profile', ...EXTRA_SCOPES]),
    claims: {
      name: 'Alice Example', preferred_username: 'alice', email: 'alice@example.test', email_verified: true,
    },
  },
  bob: {
    password: 'bob',
    scopes: new Set(['orders:read', 'profile', ...EXTRA_SCOPES]),
    claims: {
      name: 'Bob Example', preferred_username: 'bob', email: 'bob@example.test', email_verified: true,
    },
  },
};

const EXCHANGE_TARGETS = new Set(EXCHANGE_TARGETS_RAW.split(',').map((s) => s.trim()).filter(Boolean));
for (const t of EXCHANGE_TARGETS) {
  if (!Object.hasOwn(RESOURCE_SERVERS, t)) fail(`BFFGATE_EXCHANGE_TARGETS: ${JSON.stringify(t)} is not a resource server of this IdP`);
}

// Sign-in levels (`acr`): a password, or a password and a one-time code (RFC 6238 TOTP from the
// user's demo authenticator secret below). A route of the demo needs the second
// (`acr_values`); a login that asks for it gets the one-time-code field, and the ID token says
// which level the sign-in reached.
const ACR_PWD = 'urn:bffgate:demo:pwd';
const ACR_MFA = 'urn:bffgate:demo:mfa';
// Demo authenticator secrets (base32), public like the demo passwords.
const TOTP_SECRETS = { alice: 'JBSWY3DPEHPK3PXP', bob: 'KRSXG5CTMVRXEZLU' };

function base32Decode(s) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0; let value = 0; const out = [];
  for (const c of s.replace(/=+$/, '').toUpperCase()) {
    const i = alphabet.indexOf(c);
    if (i < 0) throw new Error('not base32');
    value = (value << 5) | i; bits += 5;
    if (bits >= 8) { out.push((value >>> (bits - 8)) & 0xff); bits -= 8; }
  }
  return Buffer.from(out);
}

/** The RFC 6238 code (SHA-1, 30 s, 6 digits) of `secret` at `ms`. */
function totp(secret, ms = Date.now()) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(ms / 30000)));
  const h = crypto.createHmac('sha1', base32Decode(secret)).update(counter).digest();
  const o = h[h.length - 1] & 0xf;
  const n = ((h[o] & 0x7f) << 24) | (h[o + 1] << 16) | (h[o + 2] << 8) | h[o + 3];
  return String(n % 1_000_000).padStart(6, '0');
}

function checkTotp(login, code) {
  const secret = Object.hasOwn(TOTP_SECRETS, login) ? TOTP_SECRETS[login] : undefined;
  const given = Buffer.from(String(code || '').trim().padEnd(6, ' ').slice(0, 6));
  let ok = false;
  for (const step of [-1, 0, 1]) {
    const want = Buffer.from(secret ? totp(secret, Date.now() + step * 30000) : 'xxxxxx');
    ok = crypto.timingSafeEqual(want, given) || ok;
  }
  return Boolean(secret) && ok;
}

function wantsMfa(params) {
  return String(params?.acr_values || '').split(' ').includes(ACR_MFA);
}

function checkPassword(login, password) {
  const user = Object.hasOwn(USERS, login) ? USERS[login] : undefined;
  const expected = Buffer.from(user ? user.password : 'x'.repeat(16));
  const given = Buffer.from(String(password));
  const same = expected.length === given.length && crypto.timingSafeEqual(expected, given);
  return user && same ? login : undefined;
}

async function findAccount(ctx, sub) {
  if (!Object.hasOwn(USERS, sub)) return undefined;
  const user = USERS[sub];
  return {
    accountId: sub,
    async claims() {
      return { sub, ...user.claims };
    },
  };
}

// ---------------------------------------------------------------------------------------------
// provider profiles (BFFGATE_IDP_PROFILE): how a client names the audience of a token
//
// The provider core always works with RFC 8707 resource indicators, the per-user consent above
// and oidc-provider's own checks (PKCE, refresh-token scope limits, rotation). A profile other
// than `default` translates the client's wire dialect into that core at the edge, before
// oidc-provider parses the request (GET/POST /auth, POST /request, POST /token), and shapes the
// token endpoint responses and the JWT access tokens on the way out. With `default` none of this
// is installed.
//
//   auth0  `resource` is ignored everywhere. `audience` at /auth (one API, the login audience),
//          at the code exchange and on refresh-token grants (any API of the client: Auth0's
//          multi-resource refresh tokens), and on the token exchange. Without `audience` at
//          /auth the code gives an opaque access token for the userinfo endpoint only; without
//          it on a token request, the login audience. JWTs: aud [<api>, <issuer>/me] when openid
//          was granted (else the api alone), azp, and `scope` with the OIDC scopes first, as the
//          token response's `scope`.
//   entra  `resource` and `audience` are ignored. Scopes name the API: `<api>/<scope>` or
//          `<api>/.default` (every scope of the API the client holds), plus the unqualified OIDC
//          scopes openid profile email offline_access; scopes of two APIs in one request,
//          `.default` mixed with named scopes of its API, unknown APIs or scopes: invalid_scope.
//          The code exchange may carry `scope` (it selects the API); a refresh-token grant with
//          another API's scopes answers a token for that API. JWTs: aud <api>, azp, `scp` with
//          the short names (orders:read), no `scope`; the token response's `scope` lists the
//          granted scopes as <api>/<scope>.
// Both: the login consent covers every API of the client (what a multi-resource refresh token
// needs), each filtered by what the user may hold, so per-user scopes hold in every profile.

/** A profile's refusal of a request, answered as an OAuth error `code`. */
class DialectError extends Error {
  constructor(code, description) {
    super(description);
    this.code = code;
  }
}

// internal parameter carrying a DialectError of /auth or /request into the provider, which then
// answers it as any authorization error (to the verified redirect_uri, with state and iss)
const DIALECT_ERROR_PARAM = 'bffgate_profile_error';

const resourceScopes = (r) => RESOURCE_SERVERS[r].scope.split(' ');
const splitScope = (v) => String(v || '').split(' ').filter(Boolean);
const uniq = (list) => [...new Set(list)];
// a client's value in an error_description only when it has no character RFC 6749 excludes there
const echo = (v) => (/^[\x21\x23-\x5B\x5D-\x7E]{1,256}$/.test(v) ? v : '(value not shown)');

/** The value of a parameter given at most once (undefined when absent or empty). */
function once(params, name) {
  const v = params[name];
  if (Array.isArray(v)) throw new DialectError('invalid_request', `${name} must be given once`);
  return v === '' ? undefined : v;
}

/**
 * The authorization request for login audience `loginResource`: that resource first (the code
 * exchange and refresh-token grants without a target default to the first), then every other
 * resource with all its scopes, so that the consent, the code and the refresh token cover every
 * API the client may later ask a token for.
 */
function multiResource(params, loginResource, loginScopes) {
  const others = Object.keys(RESOURCE_SERVERS).filter((r) => r !== loginResource);
  params.resource = [loginResource, ...others];
  params.scope = uniq([...loginScopes, ...others.flatMap(resourceScopes)]).join(' ');
}

/**
 * Entra-style scopes: the OIDC scopes, and the one resource the others name with its short
 * scope names (`names` undefined for `<resource>/.default`).
 */
function parseEntraScope(raw) {
  const oidc = [];
  const byResource = new Map();
  for (const s of splitScope(raw)) {
    if (OIDC_SCOPES.has(s)) {
      oidc.push(s);
      continue;
    }
    const r = Object.keys(RESOURCE_SERVERS).find((id) => s.startsWith(`${id}/`));
    if (!r) throw new DialectError('invalid_scope', `scope ${echo(s)} does not name a known resource (<resource>/<scope>)`);
    const name = s.slice(r.length + 1);
    if (name !== '.default' && !resourceScopes(r).includes(name)) {
      throw new DialectError('invalid_scope', `scope ${echo(name)} is not defined by ${r}`);
    }
    if (!byResource.has(r)) byResource.set(r, new Set());
    byResource.get(r).add(name);
  }
  if (byResource.size > 1) {
    throw new DialectError('invalid_scope', `scopes of more than one resource requested (${[...byResource.keys()].join(' ')}): one resource per request`);
  }
  if (byResource.size === 0) return { oidc, resource: undefined, names: undefined };
  const [[resource, names]] = byResource;
  if (names.has('.default') && names.size > 1) {
    throw new DialectError('invalid_scope', `${resource}/.default cannot be combined with other scopes of ${resource}`);
  }
  return { oidc, resource, names: names.has('.default') ? undefined : [...names] };
}

/** Rewrites the parameters of an authorization request (/auth, /request) in place. */
function translateAuthorization(params) {
  delete params.resource;
  if (IDP_PROFILE === 'auth0') {
    const audience = once(params, 'audience');
    delete params.audience;
    if (audience === undefined) return;
    if (!Object.hasOwn(RESOURCE_SERVERS, audience)) throw new DialectError('access_denied', `Service not found: ${echo(audience)}`);
    multiResource(params, audience, splitScope(once(params, 'scope')));
  } else {
    delete params.audience;
    const { oidc, resource, names } = parseEntraScope(once(params, 'scope'));
    if (!resource) return;
    multiResource(params, resource, [...oidc, ...(names || resourceScopes(resource))]);
  }
}

/** Rewrites the parameters of a token request in place. */
function translateToken(params) {
  const gty = params.grant_type;
  delete params.resource;
  if (IDP_PROFILE === 'auth0') {
    // the token exchange grant takes `audience` itself
    if (gty !== 'authorization_code' && gty !== 'refresh_token') return;
    const audience = once(params, 'audience');
    delete params.audience;
    if (audience !== undefined) params.resource = audience;
    return;
  }
  delete params.audience;
  if (gty !== 'authorization_code' && gty !== 'refresh_token' && gty !== TOKEN_EXCHANGE) return;
  const raw = once(params, 'scope');
  if (raw === undefined) return;
  const { oidc, resource, names } = parseEntraScope(raw);
  if (resource) params.resource = resource;
  if (gty === 'authorization_code' || (resource && !names)) {
    // the code exchange has no down-scoping; `.default`: every scope the grant holds for it
    delete params.scope;
  } else if (gty === TOKEN_EXCHANGE) {
    params.scope = (names || oidc).join(' ');
  } else {
    params.scope = [...oidc, ...(names || [])].join(' ');
  }
}

/** extraParams validator of DIALECT_ERROR_PARAM: answers the refusal the edge recorded. */
async function dialectErrorParam(ctx, value) {
  if (value === undefined) return;
  const sp = value.indexOf(' ');
  throw new errors.CustomOIDCProviderError(value.slice(0, sp), value.slice(sp + 1));
}

/**
 * auth0: the OIDC scopes granted with the code or refresh token a token request redeems (the
 * request's `scope` on a down-scoping refresh), for the access token's `scope`; none for a token
 * exchange.
 */
function auth0OidcScopes(ctx) {
  const entities = ctx?.oidc?.entities;
  const grant = entities?.Grant;
  if (!grant) return [];
  let source;
  if (entities.AuthorizationCode) source = entities.AuthorizationCode.scopes;
  else if (entities.RefreshToken) source = ctx.oidc.params.scope ? ctx.oidc.requestParamScopes : entities.RefreshToken.scopes;
  else return [];
  return splitScope(grant.getOIDCScopeFiltered(source));
}

const auth0Scope = (ctx, token) => uniq([...auth0OidcScopes(ctx), ...splitScope(token.scope)]);

/** formats.customizers.jwt of the profiles: the access token claims of that provider. */
async function profileJwt(ctx, token, jwt) {
  if (token.kind !== 'AccessToken' || !token.resourceServer) return;
  const { payload } = jwt;
  payload.azp = token.clientId;
  if (IDP_PROFILE === 'auth0') {
    const scopes = auth0Scope(ctx, token);
    if (scopes.length) payload.scope = scopes.join(' ');
    if (scopes.includes('openid')) payload.aud = [payload.aud, USERINFO_URL];
  } else if (IDP_PROFILE === 'entra') {
    if (payload.scope !== undefined) payload.scp = payload.scope;
    delete payload.scope;
  }
}

// ---------------------------------------------------------------------------------------------
// keys: generated once, reused on restart so tokens stay verifiable

async function loadOrCreateKeys(file) {
  try {
    const data = JSON.parse(fs.readFileSync(file, 'utf8'));
    if (!Array.isArray(data.keys) || data.keys.length === 0) throw new Error('no "keys" array');
    if (!Array.isArray(data.cookieKeys) || data.cookieKeys.length === 0) throw new Error('no "cookieKeys" array');
    log('keys loaded', { file, kids: data.keys.map((k) => k.kid).join(',') });
    return data;
  } catch (err) {
    if (err.code !== 'ENOENT') fail(`cannot use key file ${file}: ${err.message} (delete it to regenerate)`);
  }
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  const keys = [];
  for (const [jwk, alg] of [[rsa, 'RS256'], [ec, 'ES256']]) {
    keys.push({ ...jwk, alg, use: 'sig', kid: await calculateJwkThumbprint(jwk) });
  }
  const data = { keys, cookieKeys: [crypto.randomBytes(32).toString('base64url')] };
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, `${JSON.stringify(data, null, 2)}\n`, { mode: 0o600 });
  fs.renameSync(tmp, file);
  log('keys generated', { file, kids: keys.map((k) => k.kid).join(',') });
  return data;
}

const keyData = await loadOrCreateKeys(KEYS_FILE);

// ---------------------------------------------------------------------------------------------
// back-channel logout transport: oidc-provider's default fetch refuses loopback addresses (SSRF
// protection) and Node's fetch would not trust the demo's self-signed certificate. This fetch is
// only used for the one configured back-channel logout URI of the static client.

function backchannelFetch(url, options) {
  const target = new URL(url);
  if (!BACKCHANNEL_URI || target.href !== new URL(BACKCHANNEL_URI).href) {
    return Promise.reject(new Error('outgoing request refused: not the configured back-channel logout URI'));
  }
  const body = options.body === undefined ? undefined : String(options.body);
  const headers = Object.fromEntries(new Headers(options.headers));
  if (body !== undefined) headers['content-length'] = String(Buffer.byteLength(body));
  let ca;
  if (target.protocol === 'https:') {
    try { ca = fs.readFileSync(TLS_CA_FILE); } catch { ca = undefined; }
  }
  const lib = target.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = lib.request(target, {
      method: options.method || 'GET', headers, ca, timeout: 2500, signal: options.signal,
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const status = res.statusCode;
        const nullBody = [101, 204, 205, 304].includes(status);
        const h = new Headers();
        for (const [k, v] of Object.entries(res.headers)) h.set(k, Array.isArray(v) ? v.join(', ') : String(v));
        resolve(new Response(nullBody ? null : Buffer.concat(chunks), { status, headers: h }));
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('back-channel logout request timed out')));
    req.on('error', reject);
    req.end(body);
  });
}

// ---------------------------------------------------------------------------------------------
// pages

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
}[c]));

const PAGE_CSS = 'body{font-family:system-ui,sans-serif;max-width:26rem;margin:3rem auto;padding:0 1rem}'
  + 'label{display:block;margin:.6rem 0}input{display:block;width:100%;padding:.4rem;box-sizing:border-box}'
  + 'button{margin-top:1rem;padding:.5rem 1rem}.error{color:#b00020}.hint{color:#555;font-size:.9em}';

function page(title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)}</title>
<style>${PAGE_CSS}</style>
</head>
<body>
${body}
</body>
</html>
`;
}

function sendHtml(res, status, html) {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
    // no form-action: the login POST answers with redirects to the client's callback
    'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
  });
  res.end(html);
}

function sendJson(res, status, value) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(`${JSON.stringify(value)}\n`);
}

function loginPage(uid, { error, login = '', clientId, mfa = false } = {}) {
  const action = `/interaction/${encodeURIComponent(uid)}`;
  const codes = Object.entries(TOTP_SECRETS).map(([u, sec]) => `${u} ${totp(sec)}`).join(', ');
  return page('Sign in', `<h1>${mfa ? 'Confirm it is you' : 'Sign in'}</h1>
<p class="hint">to <b>${esc(clientId || 'the application')}</b> &mdash; demo users: alice / alice, bob / bob</p>
${mfa ? `<p id="mfa-hint" class="hint">This action needs a second factor: the one-time code of your authenticator (demo authenticator now shows: ${esc(codes)}).</p>` : ''}
${error ? `<p id="error" class="error" role="alert">${esc(error)}</p>` : ''}
<form id="login-form" method="post" action="${esc(action)}" autocomplete="off">
<label>Username <input id="login" name="login" type="text" value="${esc(login)}" required autofocus></label>
<label>Password <input id="password" name="password" type="password" required></label>
${mfa ? '<label>One-time code <input id="otp" name="otp" type="text" inputmode="numeric" pattern="[0-9]{6}" required></label>' : ''}
<button id="submit" type="submit">Sign in</button>
</form>
<form id="abort-form" method="post" action="${esc(`${action}/abort`)}">
<button id="abort" type="submit">Cancel</button>
</form>`);
}

// ---------------------------------------------------------------------------------------------
// provider

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const TOKEN_TYPE_ACCESS_TOKEN = 'urn:ietf:params:oauth:token-type:access_token';

async function getResourceServerInfo(ctx, resourceIndicator, client) {
  const rs = Object.hasOwn(RESOURCE_SERVERS, resourceIndicator) ? RESOURCE_SERVERS[resourceIndicator] : undefined;
  if (!rs || ![CLIENT_ID, PKJWT_CLIENT_ID].includes(client.clientId)) {
    throw new errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
  }
  // refresh_token grant with `scope` (down-scoping): oidc-provider checks the scopes against the
  // refresh token and filters them by the resource and the grant; when nothing would be left,
  // answer invalid_scope instead of issuing a token without any scope.
  if (ctx?.oidc?.route === 'token' && ctx.oidc.params?.grant_type === 'refresh_token' && ctx.oidc.params.scope) {
    const rsScopes = new Set(rs.scope.split(' '));
    const wanted = [...ctx.oidc.requestParamScopes].filter((s) => rsScopes.has(s));
    const grant = ctx.oidc.entities?.Grant;
    const left = grant ? String(grant.getResourceScopeFiltered(resourceIndicator, wanted) || '').split(' ').filter(Boolean) : wanted;
    if (left.length === 0) {
      throw new errors.InvalidScope(`none of the requested scopes is granted for ${resourceIndicator}`, ctx.oidc.params.scope);
    }
  }
  return {
    scope: rs.scope,
    audience: resourceIndicator,
    accessTokenTTL: ACCESS_TOKEN_TTL,
    accessTokenFormat: 'jwt',
    jwt: { sign: { alg: 'ES256' } },
  };
}

// The client(s): `bffgate` with its secret; with BFFGATE_IDP_PKJWT_JWKS also `<id>-pkjwt`, the
// same but authenticated by private_key_jwt with a key of that set.
const baseClient = {
  client_id: CLIENT_ID,
  client_secret: CLIENT_SECRET,
  client_name: 'bffgate demo',
  token_endpoint_auth_method: 'client_secret_basic',
  redirect_uris: [`${PUBLIC_ORIGIN}/auth/callback`],
  post_logout_redirect_uris: [`${PUBLIC_ORIGIN}/`],
  grant_types: ['authorization_code', 'refresh_token', TOKEN_EXCHANGE],
  response_types: ['code'],
  // auth_time in every ID token, so a route's max_age can be checked after any sign-in.
  require_auth_time: true,
  ...(BACKCHANNEL_URI ? {
    backchannel_logout_uri: BACKCHANNEL_URI,
    backchannel_logout_session_required: true,
  } : {}),
};
const clients = [baseClient];
if (PKJWT_JWKS) {
  const { client_secret: _unused, ...rest } = baseClient;
  clients.push({
    ...rest,
    client_id: PKJWT_CLIENT_ID,
    client_name: 'bffgate demo (private_key_jwt)',
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'ES256',
    jwks: PKJWT_JWKS,
  });
}

// The login prompt also comes up when a client asks for the second factor (`acr_values` naming
// it) and the provider's session did not reach it: acr_values alone is voluntary in
// oidc-provider, which would otherwise answer from the existing session at the lower level.
function stepUpPolicy() {
  const { base, Check } = interactionPolicy;
  const policy = base();
  policy.get('login').checks.add(new Check('acr_step_up', 'the requested sign-in level needs a second factor', 'login_required', (ctx) => {
    const { oidc } = ctx;
    return wantsMfa(oidc.params) && oidc.session?.acr !== ACR_MFA ? Check.REQUEST_PROMPT : Check.NO_NEED_TO_PROMPT;
  }));
  return policy;
}

const provider = new Provider(ISSUER, {
  clients,
  jwks: { keys: keyData.keys },
  cookies: { keys: keyData.cookieKeys },
  findAccount,
  claims: {
    // acr and amr with openid: every ID token says which sign-in level the session reached.
    openid: ['sub', 'acr', 'amr'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
    auth_time: null,
  },
  acrValues: [ACR_PWD, ACR_MFA],
  scopes: ['openid', 'offline_access', 'profile', 'email'],
  responseTypes: ['code'],
  pkce: {
    required: () => true,
  },
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true },
    introspection: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      async logoutSource(ctx, form) {
        ctx.type = 'html';
        ctx.set('cache-control', 'no-store');
        ctx.body = page('Sign out', `<h1>Sign out</h1>
<p>Do you want to sign out from the identity provider at ${esc(ctx.host)}?</p>
${form}
<button id="logout-yes" type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
<button id="logout-no" type="submit" form="op.logoutForm">No, stay signed in</button>`);
      },
      async postLogoutSuccessSource(ctx) {
        ctx.type = 'html';
        ctx.body = page('Signed out', '<h1>Signed out</h1><p id="signed-out">You are signed out of the identity provider.</p>');
      },
    },
    backchannelLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // No resource at the authorization endpoint: none is assumed. Several resources left to
      // choose from at the token endpoint: none is picked, so the request fails with
      // invalid_target ("only a single resource indicator ...") instead of guessing an audience.
      // Profiles: the login audience, which the dialect translation puts first.
      defaultResource: async (ctx, client, oneOf) => (IDP_PROFILE === 'default' ? oneOf : oneOf?.[0]),
      // A token request without `resource` gets an opaque userinfo token (openid is requested),
      // never a silently chosen API audience. Profiles: the granted login audience, as Auth0 and
      // Entra answer a code exchange or refresh without a target.
      useGrantedResource: async () => IDP_PROFILE !== 'default',
      getResourceServerInfo,
    },
  },
  // The client asks for offline_access (with prompt=consent); issue a refresh token whenever the
  // client may use the refresh_token grant, so the filter always has one.
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: ROTATE_REFRESH,
  // The profile API shows who called it: put the profile claims into profile-audience tokens.
  extraTokenClaims: async (ctx, token) => {
    if (token.kind !== 'AccessToken' || !token.resourceServer) return undefined;
    if (token.resourceServer.identifier() !== PROFILE) return undefined;
    if (!String(token.scope || '').split(' ').includes('profile')) return undefined;
    const user = USERS[token.accountId];
    return user ? { name: user.claims.name, preferred_username: user.claims.preferred_username, email: user.claims.email } : undefined;
  },
  ttl: {
    AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL || ACCESS_TOKEN_TTL,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: 14 * 24 * 3600,
    Interaction: 3600,
    Session: 14 * 24 * 3600,
    Grant: 14 * 24 * 3600,
  },
  fetch: backchannelFetch,
  clientBasedCORS: () => false,
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = page('Error', `<h1>Something went wrong</h1>
<p id="error" class="error">${esc(out.error)}${out.error_description ? `: ${esc(out.error_description)}` : ''}</p>`);
  },
  interactions: {
    url: (ctx, interaction) => `/interaction/${interaction.uid}`,
    policy: stepUpPolicy(),
  },
  ...(IDP_PROFILE === 'default' ? {} : {
    // runs at the end of the authorization request's validation (redirect_uri checked)
    extraParams: { [DIALECT_ERROR_PARAM]: dialectErrorParam },
    formats: { customizers: { jwt: profileJwt } },
  }),
});
provider.proxy = false;

// ---------------------------------------------------------------------------------------------
// RFC 8693 token exchange: bffgate trades an access token this IdP issued to it (normally the JWT
// for https://orders.api.local) for a JWT access token of another audience for the same user.
//
// POST /token (client authentication as for every grant)
//   grant_type=urn:ietf:params:oauth:grant-type:token-exchange
//   subject_token=<access token>  subject_token_type=urn:ietf:params:oauth:token-type:access_token
//   resource=<one allowed target> (or audience=<the same>)  [scope=<space-separated>]
//   [requested_token_type=urn:ietf:params:oauth:token-type:access_token]
// -> 200 {access_token, issued_token_type, token_type: "Bearer", expires_in, scope}
// Errors: invalid_request (missing/unsupported parameters, actor_token), invalid_grant (subject
// token not issued by this IdP to this client, bad signature, expired, wrong type, unknown user),
// invalid_target (no, several, unknown or not allowed target), invalid_scope (a requested scope
// the target does not define, or none left that the user holds).

const OWN_JWKS = createLocalJWKSet({
  keys: keyData.keys.map(({ kty, crv, x, y, n, e, kid, alg, use }) => Object.fromEntries(
    Object.entries({ kty, crv, x, y, n, e, kid, alg, use }).filter(([, v]) => v !== undefined),
  )),
});

function invalidGrant(description, detail) {
  const err = new errors.InvalidGrant(detail || description);
  err.error_description = description;
  return err;
}

const asList = (v) => (v === undefined ? [] : [].concat(v)).filter((x) => x !== '');

// returns the accountId the subject token was issued for
async function validateSubjectToken(ctx, value) {
  const { client } = ctx.oidc;
  if (value.split('.').length === 3) {
    let payload;
    try {
      ({ payload } = await jwtVerify(value, OWN_JWKS, {
        issuer: ISSUER,
        typ: 'at+jwt',
        algorithms: ['ES256', 'RS256'],
        requiredClaims: ['sub', 'exp', 'iat', 'client_id', 'aud', 'jti'],
      }));
    } catch (err) {
      if (err.code === 'ERR_JWT_EXPIRED') throw invalidGrant('subject_token is expired', err.code);
      throw invalidGrant('subject_token is invalid', err.code || err.name);
    }
    // auth0 profile: [<api>, <issuer>/me] when openid was granted
    const auds = asList(payload.aud).filter((a) => IDP_PROFILE !== 'auth0' || a !== USERINFO_URL);
    if (auds.length === 0 || !auds.every((a) => Object.hasOwn(RESOURCE_SERVERS, a))) {
      throw invalidGrant('subject_token is not an access token for a resource of this provider', 'audience');
    }
    if (payload.client_id !== client.clientId) {
      throw invalidGrant('subject_token was not issued to this client', 'client_id');
    }
    return String(payload.sub);
  }
  // opaque access tokens (the userinfo-only kind) are stored by the provider
  const token = await provider.AccessToken.find(value);
  if (!token) throw invalidGrant('subject_token is invalid', 'opaque access token not found or expired');
  if (token.clientId !== client.clientId) throw invalidGrant('subject_token was not issued to this client', 'client_id');
  if (!token.accountId) throw invalidGrant('subject_token has no subject', 'accountId');
  return token.accountId;
}

async function tokenExchangeHandler(ctx) {
  const { params, client } = ctx.oidc;
  for (const name of ['subject_token', 'subject_token_type']) {
    if (!params[name]) throw new errors.InvalidRequest(`missing required parameter '${name}'`);
  }
  if (params.subject_token_type !== TOKEN_TYPE_ACCESS_TOKEN) {
    throw new errors.InvalidRequest(`unsupported subject_token_type (only ${TOKEN_TYPE_ACCESS_TOKEN})`);
  }
  if (params.requested_token_type !== undefined && params.requested_token_type !== TOKEN_TYPE_ACCESS_TOKEN) {
    throw new errors.InvalidRequest(`unsupported requested_token_type (only ${TOKEN_TYPE_ACCESS_TOKEN})`);
  }
  if (params.actor_token !== undefined || params.actor_token_type !== undefined) {
    throw new errors.InvalidRequest('delegation (actor_token) is not supported');
  }

  const targets = [...new Set([...asList(params.resource), ...asList(params.audience)])];
  if (targets.length === 0) throw new errors.InvalidTarget('a target (resource or audience) is required for token exchange');
  if (targets.length > 1) throw new errors.InvalidTarget('only a single target is supported for token exchange');
  const [target] = targets;
  if (!Object.hasOwn(RESOURCE_SERVERS, target)) throw new errors.InvalidTarget(`unknown target ${target}`);
  if (!EXCHANGE_TARGETS.has(target)) throw new errors.InvalidTarget(`token exchange to ${target} is not allowed`);
  const rsInfo = await getResourceServerInfo(ctx, target, client);
  const rsScopes = rsInfo.scope.split(' ');

  const requested = params.scope === undefined ? undefined : [...new Set(params.scope.split(' ').filter(Boolean))];
  if (requested) {
    const unknown = requested.filter((sc) => !rsScopes.includes(sc));
    if (unknown.length) throw new errors.InvalidScope(`scope not available for ${target}: ${unknown.join(' ')}`, unknown.join(' '));
  }

  const accountId = await validateSubjectToken(ctx, params.subject_token);
  const account = await findAccount(ctx, accountId);
  if (!account) throw invalidGrant('the subject of subject_token does not exist', 'account');
  ctx.oidc.entity('Account', account);

  // what the user holds for the target; requested scopes beyond that are not granted
  const held = rsScopes.filter((sc) => USERS[accountId].scopes.has(sc));
  const granted = (requested || rsScopes).filter((sc) => held.includes(sc));
  if (granted.length === 0) {
    throw new errors.InvalidScope(`the user holds none of the requested scopes for ${target}`, (requested || rsScopes).join(' '));
  }

  const at = new provider.AccessToken({
    accountId,
    client,
    gty: TOKEN_EXCHANGE,
    scope: granted.join(' '),
  });
  at.resourceServer = new provider.ResourceServer(target, rsInfo);
  ctx.oidc.entity('AccessToken', at);
  const value = await at.save();

  ctx.body = {
    access_token: value,
    issued_token_type: TOKEN_TYPE_ACCESS_TOKEN,
    token_type: at.tokenType,
    expires_in: at.expiration,
    scope: at.scope,
  };
}

provider.registerGrantType(
  TOKEN_EXCHANGE,
  tokenExchangeHandler,
  ['subject_token', 'subject_token_type', 'requested_token_type', 'actor_token', 'actor_token_type', 'resource', 'audience', 'scope'],
  ['resource', 'audience'],
);

// ---------------------------------------------------------------------------------------------
// stats: successful token issuances by grant type (grant.success fires after the response body is
// built) and by the audience of the access token issued ("userinfo" for an opaque userinfo-only
// token), in total and per grant type, token requests by grant type, and revocation requests.
// Node runs these handlers on one thread, so plain increments are race-free.

function zeroStats() {
  return {
    profile: IDP_PROFILE,
    grants: { authorization_code: 0, refresh_token: 0, [TOKEN_EXCHANGE]: 0 },
    issued: {},
    issued_by_grant: {},
    token_requests: { authorization_code: 0, refresh_token: 0, [TOKEN_EXCHANGE]: 0, other: 0 },
    revocations: 0,
    revocation_requests: 0,
    // revocation requests being answered now, and the most at once (a paced revoke-all)
    revocation_inflight: 0,
    revocation_max_inflight: 0,
    introspections: 0,
    // grants by the client's authentication method (client_secret_basic, private_key_jwt, ...)
    client_auth: {},
  };
}
let stats = zeroStats();

provider.on('grant.success', (ctx) => {
  const gty = ctx.oidc.params.grant_type;
  stats.grants[gty] = (stats.grants[gty] || 0) + 1;
  const method = ctx.oidc.client?.clientAuthMethod || 'unknown';
  stats.client_auth[method] = (stats.client_auth[method] || 0) + 1;
  const aud = ctx.oidc.entities.AccessToken?.resourceServer?.identifier() ?? 'userinfo';
  stats.issued[aud] = (stats.issued[aud] || 0) + 1;
  const byGrant = stats.issued_by_grant[gty] ?? (stats.issued_by_grant[gty] = {});
  byGrant[aud] = (byGrant[aud] || 0) + 1;
  log('grant.success', {
    grant_type: gty,
    client: ctx.oidc.client?.clientId,
    account: ctx.oidc.account?.accountId,
    resource: ctx.oidc.entities.AccessToken?.resourceServer?.identifier(),
    scope: ctx.oidc.entities.AccessToken?.scope,
    refresh_token_issued: ctx.body && typeof ctx.body === 'object' ? Boolean(ctx.body.refresh_token) : undefined,
  });
});
// error_detail is oidc-provider's fixed explanation (e.g. "refresh token not found"), never a value
provider.on('grant.error', (ctx, err) => log('grant.error', {
  grant_type: ctx.oidc?.params?.grant_type, error: err.error || err.name, description: err.error_description, detail: err.error_detail,
}));
provider.on('revocation.error', (ctx, err) => log('revocation.error', { error: err.error || err.name, description: err.error_description }));
provider.on('introspection.error', (ctx, err) => log('introspection.error', { error: err.error || err.name }));
provider.on('authorization.error', (ctx, err) => log('authorization.error', { error: err.error || err.name, description: err.error_description }));
provider.on('end_session.error', (ctx, err) => log('end_session.error', { error: err.error || err.name, description: err.error_description }));
provider.on('end_session.success', (ctx) => log('end_session.success', { client: ctx.oidc.client?.clientId }));
provider.on('grant.revoked', (ctx, grantId) => log('grant.revoked', { route: ctx.oidc?.route, grant: grantId ? 'yes' : undefined }));
provider.on('backchannel.success', (ctx, client, accountId) => log('backchannel_logout.sent', { client: client.clientId, account: accountId }));
provider.on('backchannel.error', (ctx, err, client, accountId) => log('backchannel_logout.failed', { client: client.clientId, account: accountId, error: err.message }));
provider.on('server_error', (ctx, err) => log('server_error', { path: ctx.path, error: err.message }));
provider.on('interaction.started', (ctx, prompt) => log('interaction.started', { prompt: prompt.name, reasons: prompt.reasons.join(',') }));

provider.use(async (ctx, next) => {
  await next();
  if (ctx.method !== 'POST') return;
  if (ctx.oidc?.route === 'token') {
    const gty = ctx.oidc.params?.grant_type;
    const key = Object.hasOwn(stats.token_requests, gty) ? gty : 'other';
    stats.token_requests[key] += 1;
  } else if (ctx.oidc?.route === 'revocation') {
    stats.revocation_requests += 1;
    if (ctx.status === 200) stats.revocations += 1;
  } else if (ctx.oidc?.route === 'introspection') {
    stats.introspections += 1;
  }
});

// ---------------------------------------------------------------------------------------------
// provider profiles at the edge (see "provider profiles" above): the request's parameters are
// translated before oidc-provider reads them (a GET's query is replaced; a form body is read here
// and handed over as an already parsed body, which oidc-provider accepts with a one-time
// warning), the token endpoint's JSON answer is shaped after it.

const DIALECT_PATHS = { '/auth': 'authorization', '/request': 'authorization', '/token': 'token' };
const FORM_LIMIT = 56 * 1024; // oidc-provider's own limit

async function readLimited(req, limit) {
  let size = 0;
  const chunks = [];
  for await (const chunk of req) {
    size += chunk.length;
    if (size <= limit) chunks.push(chunk);
  }
  return size > limit ? undefined : Buffer.concat(chunks).toString('utf8');
}

function tokenError(ctx, status, error, description) {
  ctx.status = status;
  ctx.set('cache-control', 'no-store');
  ctx.body = { error, error_description: description };
}

async function dialectEdge(ctx, next) {
  const kind = Object.hasOwn(DIALECT_PATHS, ctx.path) ? DIALECT_PATHS[ctx.path] : undefined;
  const viaQuery = (ctx.method === 'GET' || ctx.method === 'HEAD') && ctx.path === '/auth';
  const viaBody = ctx.method === 'POST' && Boolean(ctx.is('application/x-www-form-urlencoded'));
  if (!kind || !(viaQuery || viaBody)) return next();

  let params;
  if (viaQuery) {
    params = { ...ctx.query };
  } else {
    const text = await readLimited(ctx.req, FORM_LIMIT);
    if (text === undefined) return tokenError(ctx, 400, 'invalid_request', 'request body too large');
    params = querystring.parse(text);
  }
  if (kind === 'token') {
    const gty = typeof params.grant_type === 'string' && Object.hasOwn(stats.token_requests, params.grant_type) ? params.grant_type : 'other';
    delete params[DIALECT_ERROR_PARAM];
    try {
      translateToken(params);
    } catch (err) {
      if (!(err instanceof DialectError)) throw err;
      // answered here, so counted here (the counting middleware sees no provider route)
      stats.token_requests[gty] += 1;
      log('grant.error', {
        grant_type: gty, profile: IDP_PROFILE, error: err.code, description: err.message,
      });
      return tokenError(ctx, 400, err.code, err.message);
    }
  } else {
    delete params[DIALECT_ERROR_PARAM];
    try {
      translateAuthorization(params);
    } catch (err) {
      if (!(err instanceof DialectError)) throw err;
      params[DIALECT_ERROR_PARAM] = `${err.code} ${err.message}`;
    }
  }
  if (viaQuery) ctx.query = params;
  else ctx.req.body = querystring.stringify(params);
  return next();
}

/** The token endpoint's answer in the profile's shape (and without `scope` if so configured). */
async function shapeTokenResponse(ctx, next) {
  await next();
  if (ctx.method !== 'POST' || ctx.path !== '/token' || ctx.status !== 200) return;
  const { body } = ctx;
  if (!body || typeof body !== 'object' || Buffer.isBuffer(body) || typeof body.pipe === 'function') return;
  const at = ctx.oidc?.entities?.AccessToken;
  const rs = at?.resourceServer;
  if (rs && IDP_PROFILE === 'auth0') {
    const scopes = auth0Scope(ctx, at);
    if (scopes.length) body.scope = scopes.join(' ');
  } else if (rs && IDP_PROFILE === 'entra' && typeof body.scope === 'string') {
    body.scope = splitScope(body.scope).map((sc) => `${rs.identifier()}/${sc}`).join(' ');
  }
  if (OMIT_SCOPE) delete body.scope;
}

if (IDP_PROFILE !== 'default') provider.use(dialectEdge);
if (IDP_PROFILE !== 'default' || OMIT_SCOPE) provider.use(shapeTokenResponse);

// ---------------------------------------------------------------------------------------------
// interactions: login form, then consent granted server-side with the scopes the user may hold

async function readForm(req, limit = 16 * 1024) {
  let size = 0;
  const chunks = [];
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw Object.assign(new Error('request body too large'), { status: 413 });
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

async function grantConsent(interaction) {
  const { prompt: { details }, params, session: { accountId } } = interaction;
  const user = USERS[accountId];
  let { grantId } = interaction;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId, clientId: params.client_id });
  if (!grant) throw new Error('grant referenced by the interaction not found');

  const granted = [];
  const rejected = [];
  if (details.missingOIDCScope) {
    const ok = details.missingOIDCScope.filter((s) => OIDC_SCOPES.has(s));
    const no = details.missingOIDCScope.filter((s) => !OIDC_SCOPES.has(s));
    if (ok.length) grant.addOIDCScope(ok.join(' '));
    if (no.length) grant.rejectOIDCScope(no.join(' '));
    granted.push(...ok);
    rejected.push(...no);
  }
  if (details.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);
  if (details.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(details.missingResourceScopes)) {
      const ok = scopes.filter((s) => user?.scopes.has(s));
      const no = scopes.filter((s) => !user?.scopes.has(s));
      if (ok.length) grant.addResourceScope(indicator, ok.join(' '));
      // rejected scopes count as "encountered": no new consent prompt, never in a token
      if (no.length) grant.rejectResourceScope(indicator, no.join(' '));
      granted.push(...ok.map((s) => `${indicator}#${s}`));
      rejected.push(...no.map((s) => `${indicator}#${s}`));
    }
  }
  const savedId = await grant.save();
  log('consent.granted', { account: accountId, granted: granted.join(','), rejected: rejected.join(',') });
  const consent = {};
  if (!grantId) {
    grantId = savedId;
    consent.grantId = grantId;
  }
  return { consent };
}

async function handleInteraction(req, res, uid, action) {
  let interaction;
  try {
    interaction = await provider.interactionDetails(req, res);
  } catch (err) {
    log('interaction.invalid', { error: err.error || err.name });
    sendHtml(res, 400, page('Sign-in expired', `<h1>Sign-in request expired or invalid</h1>
<p id="error" class="error">Start the sign-in again from the application.</p>`));
    return;
  }
  if (interaction.uid !== uid) {
    sendHtml(res, 400, page('Sign-in mismatch', '<h1>Sign-in request mismatch</h1><p id="error" class="error">Start again from the application.</p>'));
    return;
  }
  const { prompt, params } = interaction;

  if (action === 'abort' && req.method === 'POST') {
    log('interaction.aborted', { prompt: prompt.name });
    await provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
    return;
  }
  if (action) {
    sendJson(res, 404, { error: 'not_found' });
    return;
  }

  if (prompt.name === 'login') {
    const mfa = wantsMfa(params);
    if (req.method === 'GET') {
      sendHtml(res, 200, loginPage(uid, { clientId: params.client_id, mfa }));
      return;
    }
    if (req.method !== 'POST') {
      sendJson(res, 405, { error: 'method_not_allowed' });
      return;
    }
    const form = await readForm(req);
    const login = form.get('login') || '';
    const accountId = checkPassword(login, form.get('password') || '');
    if (!accountId) {
      log('login.failed', { login: login.slice(0, 64) });
      sendHtml(res, 401, loginPage(uid, { error: 'Invalid username or password.', login, clientId: params.client_id, mfa }));
      return;
    }
    if (mfa && !checkTotp(accountId, form.get('otp'))) {
      log('login.failed', { login: login.slice(0, 64), factor: 'otp' });
      sendHtml(res, 401, loginPage(uid, { error: 'Invalid one-time code.', login, clientId: params.client_id, mfa }));
      return;
    }
    const acr = mfa ? ACR_MFA : ACR_PWD;
    log('login.success', { account: accountId, acr });
    await provider.interactionFinished(req, res, {
      login: { accountId, acr, amr: mfa ? ['pwd', 'otp'] : ['pwd'] },
    }, { mergeWithLastSubmission: false });
    return;
  }

  if (prompt.name === 'consent') {
    // no consent page for the demo client: finish the consent interaction server-side
    const result = await grantConsent(interaction);
    await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
    return;
  }

  sendHtml(res, 400, page('Unsupported', `<h1>Unsupported prompt</h1><p id="error" class="error">${esc(prompt.name)}</p>`));
}

// ---------------------------------------------------------------------------------------------
// fault injection (tests): POST /__fault {"endpoint": "token"|"revocation"|"all",
// "mode": "none"|"slow"|"error500"|"garbage"|"reset"|"invalid_grant", "delay_ms": n, "count": n}
// applies to POST /token and POST /token/revocation only. "slow" waits delay_ms, then the provider
// answers normally; the other modes answer without the provider (after delay_ms when given) and
// are counted in token_requests / revocation_requests but never in grants / revocations. With
// "count" the fault applies to the next n matching requests, then that endpoint reverts to none.

const FAULT_MODES = new Set(['none', 'slow', 'error500', 'garbage', 'reset', 'invalid_grant']);
const FAULT_PATHS = { '/token': 'token', '/token/revocation': 'revocation' };
const FAULT_KEYS = new Set(['endpoint', 'mode', 'delay_ms', 'count']);
const noFault = () => ({ mode: 'none', delay_ms: 0, remaining: null });
let faults = { token: noFault(), revocation: noFault() };
let faultsApplied = { token: 0, revocation: 0 };

const faultState = () => ({
  token: { ...faults.token }, revocation: { ...faults.revocation }, applied: { ...faultsApplied },
});

function parseFault(body) {
  if (!body || typeof body !== 'object' || Array.isArray(body)) return 'body must be a JSON object';
  const extra = Object.keys(body).filter((k) => !FAULT_KEYS.has(k));
  if (extra.length) return `unknown field(s): ${extra.join(', ')}`;
  const { endpoint, mode } = body;
  if (!['token', 'revocation', 'all'].includes(endpoint)) return 'endpoint must be "token", "revocation" or "all"';
  if (!FAULT_MODES.has(mode)) return `mode must be one of ${[...FAULT_MODES].join(', ')}`;
  const intOrNull = (v, min, max) => (v === undefined || v === null ? null
    : (Number.isInteger(v) && v >= min && v <= max ? v : undefined));
  const delay = intOrNull(body.delay_ms, 0, 120000);
  if (delay === undefined) return 'delay_ms must be an integer between 0 and 120000';
  const count = intOrNull(body.count, 1, 1000000);
  if (count === undefined) return 'count must be an integer between 1 and 1000000';
  const setting = mode === 'none' ? noFault() : {
    mode, delay_ms: delay ?? (mode === 'slow' ? 1000 : 0), remaining: count,
  };
  return { endpoints: endpoint === 'all' ? ['token', 'revocation'] : [endpoint], setting };
}

// the fault for this request, if any (consumes one of "count")
function takeFault(endpoint) {
  const f = faults[endpoint];
  if (f.mode === 'none') return undefined;
  const taken = { ...f };
  if (f.remaining !== null) {
    f.remaining -= 1;
    if (f.remaining <= 0) faults[endpoint] = noFault();
  }
  faultsApplied[endpoint] += 1;
  return taken;
}

const sleep = (ms) => new Promise((r) => { setTimeout(r, ms); });

async function readBody(req, limit) {
  let size = 0;
  const chunks = [];
  for await (const chunk of req) {
    size += chunk.length;
    if (size <= limit) chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

// answers a faulted request itself; returns false when the provider should answer ("slow")
async function applyFault(req, res, endpoint, fault) {
  log('fault.applied', { endpoint, mode: fault.mode, delay_ms: fault.delay_ms || undefined });
  if (fault.mode === 'slow') {
    await sleep(fault.delay_ms);
    return false;
  }
  let body = '';
  try { body = await readBody(req, 64 * 1024); } catch { /* client went away: still counted */ }
  if (endpoint === 'token') {
    const gty = new URLSearchParams(body).get('grant_type');
    stats.token_requests[gty !== null && Object.hasOwn(stats.token_requests, gty) && gty !== 'other' ? gty : 'other'] += 1;
  } else {
    stats.revocation_requests += 1;
  }
  if (fault.delay_ms) await sleep(fault.delay_ms);
  switch (fault.mode) {
    case 'error500':
      sendHtml(res, 500, page('Internal Server Error', '<h1>500 Internal Server Error</h1><p>injected fault</p>'));
      break;
    case 'garbage':
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
      res.end('<html>this is not JSON {"access_token":');
      break;
    case 'invalid_grant':
      sendJson(res, 400, { error: 'invalid_grant' });
      break;
    case 'reset':
    default:
      req.socket.destroy();
      break;
  }
  return true;
}

const isLoopback = (addr) => addr === '127.0.0.1' || addr === '::1' || addr === '::ffff:127.0.0.1';

async function handleFaultApi(req, res) {
  if (req.method === 'GET' || req.method === 'HEAD') return sendJson(res, 200, faultState());
  if (req.method !== 'POST') return sendJson(res, 405, { error: 'method_not_allowed' });
  // a JSON content type keeps browsers from posting here cross-origin without a preflight
  if (!/^application\/json\b/i.test(req.headers['content-type'] || '')) {
    return sendJson(res, 415, { error: 'invalid_request', error_description: 'content-type must be application/json' });
  }
  const raw = await readBody(req, 8192);
  if (Buffer.byteLength(raw) >= 8192) return sendJson(res, 413, { error: 'payload_too_large' });
  let parsed;
  try { parsed = JSON.parse(raw); } catch { parsed = undefined; }
  const result = parseFault(parsed);
  if (typeof result === 'string') return sendJson(res, 400, { error: 'invalid_request', error_description: result });
  for (const ep of result.endpoints) faults[ep] = { ...result.setting };
  log('fault.set', {
    endpoint: result.endpoints.join(','), mode: result.setting.mode, delay_ms: result.setting.delay_ms, count: result.setting.remaining ?? undefined,
  });
  return sendJson(res, 200, faultState());
}

// ---------------------------------------------------------------------------------------------
// server

const providerCallback = provider.callback();

const server = http.createServer(async (req, res) => {
  const started = process.hrtime.bigint();
  const url = new URL(req.url, ISSUER);
  res.on('finish', () => {
    const ms = Number((process.hrtime.bigint() - started) / 1000000n);
    // path only: query strings may carry id_token_hint, state or nonce
    log('request', {
      method: req.method, path: url.pathname, status: res.statusCode, ms,
    });
  });
  try {
    if (url.pathname === '/__stats') {
      if (req.method !== 'GET' && req.method !== 'HEAD') return sendJson(res, 405, { error: 'method_not_allowed' });
      return sendJson(res, 200, stats);
    }
    if (url.pathname === '/__reset') {
      if (req.method !== 'POST') return sendJson(res, 405, { error: 'method_not_allowed' });
      stats = zeroStats();
      faults = { token: noFault(), revocation: noFault() };
      faultsApplied = { token: 0, revocation: 0 };
      log('reset', { stats: 'zeroed', faults: 'cleared' });
      return sendJson(res, 200, { reset: true });
    }
    if (url.pathname === '/__fault') {
      if (!isLoopback(req.socket.remoteAddress)) return sendJson(res, 403, { error: 'forbidden' });
      return await handleFaultApi(req, res);
    }
    if (req.method === 'POST' && url.pathname === '/token/revocation') {
      const counted = stats;
      counted.revocation_inflight += 1;
      counted.revocation_max_inflight = Math.max(counted.revocation_max_inflight, counted.revocation_inflight);
      res.on('close', () => { counted.revocation_inflight -= 1; });
    }
    if (req.method === 'POST' && Object.hasOwn(FAULT_PATHS, url.pathname)) {
      const endpoint = FAULT_PATHS[url.pathname];
      const fault = takeFault(endpoint);
      if (fault && await applyFault(req, res, endpoint, fault)) return undefined;
    }
    const m = /^\/interaction\/([A-Za-z0-9_-]{1,128})(?:\/(abort|login))?\/?$/.exec(url.pathname);
    if (m) {
      const action = m[2] === 'login' ? undefined : m[2];
      return await handleInteraction(req, res, m[1], action);
    }
    return providerCallback(req, res);
  } catch (err) {
    log('interaction.error', { path: url.pathname, error: err.message });
    if (!res.headersSent) {
      if (err.status === 413) return sendJson(res, 413, { error: 'payload_too_large' });
      return sendHtml(res, 500, page('Error', '<h1>Something went wrong</h1><p id="error" class="error">server_error</p>'));
    }
    res.destroy();
  }
  return undefined;
});

server.listen(PORT, '127.0.0.1', () => {
  log('listening', {
    addr: `127.0.0.1:${PORT}`,
    issuer: ISSUER,
    access_token_ttl: ACCESS_TOKEN_TTL,
    rotate_refresh: ROTATE_REFRESH,
    profile: IDP_PROFILE === 'default' ? undefined : IDP_PROFILE,
    omit_scope: OMIT_SCOPE ? true : undefined,
    backchannel_logout_uri: BACKCHANNEL_URI || 'off',
  });
});
server.on('error', (err) => fail(`cannot listen on 127.0.0.1:${PORT}: ${err.message}`));

let stopping = false;
function stop(signal) {
  if (stopping) return;
  stopping = true;
  log('stopping', { signal });
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
