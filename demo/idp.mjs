// bffgate demo identity provider: oidc-provider 9 on 127.0.0.1:9000 (issuer http://localhost:9000).
//
// What it offers (see /work/shared/CONTRACT.md and common.md for the contract around it):
//   - one confidential client `bffgate` (client_secret_basic, secret from $BFFGATE_CLIENT_SECRET),
//     code flow with mandatory S256 PKCE, refresh tokens, revocation, introspection,
//     RP-initiated logout and back-channel logout;
//   - resource indicators (RFC 8707): JWT access tokens whose `aud` is the requested resource,
//     https://orders.api.local (orders:read orders:write) and https://profile.api.local (profile);
//   - demo users alice/alice (orders:read orders:write profile) and bob/bob (orders:read profile),
//     a plain HTML login form at /interaction/:uid and consent granted server-side, per user;
//   - GET /__stats (token-endpoint grants and revocations counted) and POST /__reset.
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
//
// Never logs tokens, codes, secrets or query strings.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as path from 'node:path';

import Provider, { errors } from 'oidc-provider';

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
const ISSUER = `http://localhost:${PORT}`;
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

// OIDC scopes every user may grant; resource scopes are per user below.
const OIDC_SCOPES = new Set(['openid', 'profile', 'email', 'offline_access']);

const USERS = {
  alice: {
    password: 'alice',
    scopes: new Set(['orders:read', 'orders:write', 'profile']),
    claims: {
      name: 'Alice Example', preferred_username: 'alice', email: 'alice@example.test', email_verified: true,
    },
  },
  bob: {
    password: 'bob',
    scopes: new Set(['orders:read', 'profile']),
    claims: {
      name: 'Bob Example', preferred_username: 'bob', email: 'bob@example.test', email_verified: true,
    },
  },
};

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
  const { calculateJwkThumbprint } = await import('jose');
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

function loginPage(uid, { error, login = '', clientId } = {}) {
  const action = `/interaction/${encodeURIComponent(uid)}`;
  return page('Sign in', `<h1>Sign in</h1>
<p class="hint">to <b>${esc(clientId || 'the application')}</b> &mdash; demo users: alice / alice, bob / bob</p>
${error ? `<p id="error" class="error" role="alert">${esc(error)}</p>` : ''}
<form id="login-form" method="post" action="${esc(action)}" autocomplete="off">
<label>Username <input id="login" name="login" type="text" value="${esc(login)}" required autofocus></label>
<label>Password <input id="password" name="password" type="password" required></label>
<button id="submit" type="submit">Sign in</button>
</form>
<form id="abort-form" method="post" action="${esc(`${action}/abort`)}">
<button id="abort" type="submit">Cancel</button>
</form>`);
}

// ---------------------------------------------------------------------------------------------
// provider

const provider = new Provider(ISSUER, {
  clients: [{
    client_id: 'bffgate',
    client_secret: CLIENT_SECRET,
    client_name: 'bffgate demo',
    token_endpoint_auth_method: 'client_secret_basic',
    redirect_uris: [`${PUBLIC_ORIGIN}/auth/callback`],
    post_logout_redirect_uris: [`${PUBLIC_ORIGIN}/`],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    ...(BACKCHANNEL_URI ? {
      backchannel_logout_uri: BACKCHANNEL_URI,
      backchannel_logout_session_required: true,
    } : {}),
  }],
  jwks: { keys: keyData.keys },
  cookies: { keys: keyData.cookieKeys },
  findAccount,
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
  },
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
      defaultResource: async (ctx, client, oneOf) => oneOf,
      // A token request without `resource` gets an opaque userinfo token (openid is requested),
      // never a silently chosen API audience.
      useGrantedResource: async () => false,
      getResourceServerInfo: async (ctx, resourceIndicator, client) => {
        const rs = Object.hasOwn(RESOURCE_SERVERS, resourceIndicator) ? RESOURCE_SERVERS[resourceIndicator] : undefined;
        if (!rs || client.clientId !== 'bffgate') {
          throw new errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
        }
        return {
          scope: rs.scope,
          audience: resourceIndicator,
          accessTokenTTL: ACCESS_TOKEN_TTL,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
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
  },
});
provider.proxy = false;

// ---------------------------------------------------------------------------------------------
// stats: successful token issuances by grant type (grant.success fires after the response body is
// built), token requests by grant type, and revocation requests. Node runs these handlers on one
// thread, so plain increments are race-free.

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
function zeroStats() {
  return {
    grants: { authorization_code: 0, refresh_token: 0, [TOKEN_EXCHANGE]: 0 },
    token_requests: { authorization_code: 0, refresh_token: 0, [TOKEN_EXCHANGE]: 0, other: 0 },
    revocations: 0,
    revocation_requests: 0,
    introspections: 0,
  };
}
let stats = zeroStats();

provider.on('grant.success', (ctx) => {
  const gty = ctx.oidc.params.grant_type;
  stats.grants[gty] = (stats.grants[gty] || 0) + 1;
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
    if (req.method === 'GET') {
      sendHtml(res, 200, loginPage(uid, { clientId: params.client_id }));
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
      sendHtml(res, 401, loginPage(uid, { error: 'Invalid username or password.', login, clientId: params.client_id }));
      return;
    }
    log('login.success', { account: accountId });
    await provider.interactionFinished(req, res, { login: { accountId } }, { mergeWithLastSubmission: false });
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
      return sendJson(res, 200, { reset: true });
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
