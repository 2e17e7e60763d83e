// bffgate demo upstream APIs: one process, three listeners on 127.0.0.1.
//
//   orders  :9101  GET /api/orders (orders:read), POST /api/orders (orders:write),
//                  bearer JWT with aud https://orders.api.local
//   profile :9102  GET /api/profile (profile), bearer JWT with aud https://profile.api.local
//   public  :9103  GET /api/public/hello (no auth; `?set_cookie=1` also sets bffgate's cookie names,
//                  a test of the filter's stripping) and the static demo page (GET /, /app.js, /style.css)
//
// Every API answer is JSON with "api" and "seen": {"authorization", "cookie", "claims"} where
// claims is the payload of the bearer JWT verified against the identity provider's JWKS (issuer,
// audience, signature, expiry, typ at+jwt), or null. A missing or unverifiable token gets 401
// invalid_token, a token without the scope (claim `scope`, or `scp` as Entra ID writes it) gets
// 403 insufficient_scope.
//
// Every listener answers GET /__stats -> {"requests": n} (requests received other than /__stats
// and /__reset) and POST /__reset (zeroes that listener's counter; on orders also the orders).
//
// Environment:
//   BFFGATE_API_ORDERS_PORT (9101), BFFGATE_API_PROFILE_PORT (9102), BFFGATE_API_PUBLIC_PORT (9103)
//   BFFGATE_IDP_ISSUER      issuer to trust, default http://localhost:<BFFGATE_IDP_PORT or 9000>;
//                           keys from <issuer>/jwks
//
// Logs one line per request (method, path without query, status); never a header value.

import * as fs from 'node:fs';
import * as http from 'node:http';
import * as crypto from 'node:crypto';

import { createRemoteJWKSet, jwtVerify } from 'jose';

function log(line) {
  process.stdout.write(`${new Date().toISOString()} api ${line}\n`);
}

function fail(msg) {
  process.stderr.write(`api: ${msg}\n`);
  process.stdout.write(`${new Date().toISOString()} api fatal: ${msg}\n`);
  process.exit(2);
}

function portEnv(name, dflt) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return dflt;
  if (!/^\d+$/.test(raw) || Number(raw) < 1 || Number(raw) > 65535) fail(`${name} must be a port number, got ${JSON.stringify(raw)}`);
  return Number(raw);
}

const ISSUER = (process.env.BFFGATE_IDP_ISSUER
  || `http://localhost:${portEnv('BFFGATE_IDP_PORT', 9000)}`).replace(/\/+$/, '');
const JWKS = createRemoteJWKSet(new URL(`${ISSUER}/jwks`), {
  timeoutDuration: 2000,
  cooldownDuration: 5000,
});

const ORDERS_AUD = 'https://orders.api.local';
const PROFILE_AUD = 'https://profile.api.local';

// ---------------------------------------------------------------------------------------------
// helpers

function bearerOf(req) {
  const h = req.headers.authorization;
  if (typeof h !== 'string') return undefined;
  const m = /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i.exec(h);
  return m ? m[1] : undefined;
}

async function verify(req, audience) {
  const token = bearerOf(req);
  if (!token) return { claims: null, error: 'missing bearer token' };
  try {
    const { payload } = await jwtVerify(token, JWKS, {
      issuer: ISSUER,
      ...(audience ? { audience } : {}),
      typ: 'at+jwt',
      algorithms: ['ES256', 'RS256', 'PS256', 'EdDSA'],
      clockTolerance: 5,
    });
    return { claims: payload, error: null };
  } catch (err) {
    return { claims: null, error: `${err.code || err.name}: ${err.message}` };
  }
}

function seenOf(req, claims) {
  return {
    authorization: typeof req.headers.authorization === 'string' ? req.headers.authorization : null,
    cookie: typeof req.headers.cookie === 'string' ? req.headers.cookie : null,
    claims: claims ?? null,
  };
}

// `scope` (RFC 9068), else `scp` (Entra ID's claim: tokens of the IdP's entra profile)
function scopesOf(claims) {
  const raw = typeof claims?.scope === 'string' ? claims.scope : claims?.scp;
  return new Set(typeof raw === 'string' ? raw.split(' ').filter(Boolean) : []);
}

function send(res, status, body, headers = {}) {
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, {
    'content-type': 'application/json',
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
    ...headers,
  });
  res.end(res.req.method === 'HEAD' ? undefined : text);
}

async function readBody(req, limit = 64 * 1024) {
  let size = 0;
  const chunks = [];
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) return { tooLarge: true };
    chunks.push(chunk);
  }
  return { text: Buffer.concat(chunks).toString('utf8') };
}

function drain(req) {
  req.resume();
}

// Check token + scope. Answers 401/403 itself and returns undefined, or returns the claims.
async function authorize(req, res, api, audience, scope) {
  const { claims, error } = await verify(req, audience);
  if (!claims) {
    drain(req);
    send(res, 401, {
      api, error: 'invalid_token', error_description: error, seen: seenOf(req, null),
    }, { 'www-authenticate': 'Bearer error="invalid_token"' });
    return undefined;
  }
  if (!scopesOf(claims).has(scope)) {
    drain(req);
    send(res, 403, {
      api, error: 'insufficient_scope', error_description: `scope ${scope} required`, scope_required: scope, seen: seenOf(req, claims),
    }, { 'www-authenticate': `Bearer error="insufficient_scope", scope="${scope}"` });
    return undefined;
  }
  return claims;
}

// ---------------------------------------------------------------------------------------------
// handlers

let orders = new Map(); // sub -> [{id, item, created_at}]

async function ordersHandler(req, res, path) {
  const api = 'orders';
  if ((path === '/api/orders/export' || path === '/api/orders/audit') && (req.method === 'GET' || req.method === 'HEAD')) {
    const claims = await authorize(req, res, api, ORDERS_AUD, 'orders:read');
    if (!claims) return undefined;
    if (path === '/api/orders/audit') {
      // An API that asks for step-up itself (RFC 9470): the audit trail always wants a sign-in
      // with a second factor made in the last minute, which an access token cannot show here;
      // bffgate turns this challenge into its own JSON answer for the browser.
      return send(res, 401, {
        api, error: 'insufficient_user_authentication', seen: seenOf(req, claims),
      }, { 'www-authenticate': 'Bearer error="insufficient_user_authentication", error_description="A second factor is required", acr_values="urn:bffgate:demo:mfa", max_age="60"' });
    }
    // The export: bffgate's route policy requires a recent second-factor sign-in before it
    // gets here (orders-export in policies/orders.yaml).
    const list = orders.get(claims.sub) || [];
    return send(res, 200, { api, export: { format: 'json', count: list.length, orders: list }, seen: seenOf(req, claims) });
  }
  if (path !== '/api/orders' && path !== '/api/orders/') {
    drain(req);
    const { claims } = await verify(req, ORDERS_AUD);
    return send(res, 404, { api, error: 'not_found', seen: seenOf(req, claims) });
  }
  if (req.method === 'GET' || req.method === 'HEAD') {
    const claims = await authorize(req, res, api, ORDERS_AUD, 'orders:read');
    if (!claims) return undefined;
    return send(res, 200, { api, orders: orders.get(claims.sub) || [], seen: seenOf(req, claims) });
  }
  if (req.method === 'POST') {
    const claims = await authorize(req, res, api, ORDERS_AUD, 'orders:write');
    if (!claims) return undefined;
    const body = await readBody(req);
    if (body.tooLarge) return send(res, 413, { api, error: 'invalid_request', error_description: 'body too large', seen: seenOf(req, claims) });
    let input;
    try {
      input = JSON.parse(body.text);
    } catch {
      return send(res, 400, {
        api, error: 'invalid_request', error_description: 'body must be JSON like {"item":"..."}', seen: seenOf(req, claims),
      });
    }
    const item = input && typeof input === 'object' ? input.item : undefined;
    if (typeof item !== 'string' || item.trim() === '' || item.length > 200) {
      return send(res, 400, {
        api, error: 'invalid_request', error_description: '"item" must be a non-empty string of at most 200 characters', seen: seenOf(req, claims),
      });
    }
    const order = { id: crypto.randomUUID(), item: item.trim(), created_at: new Date().toISOString() };
    const list = orders.get(claims.sub) || [];
    list.push(order);
    orders.set(claims.sub, list);
    return send(res, 201, { api, order, seen: seenOf(req, claims) });
  }
  drain(req);
  const { claims } = await verify(req, ORDERS_AUD);
  return send(res, 405, { api, error: 'method_not_allowed', seen: seenOf(req, claims) }, { allow: 'GET, HEAD, POST' });
}

async function profileHandler(req, res, path) {
  const api = 'profile';
  drain(req);
  if (path !== '/api/profile' && path !== '/api/profile/') {
    const { claims } = await verify(req, PROFILE_AUD);
    return send(res, 404, { api, error: 'not_found', seen: seenOf(req, claims) });
  }
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    const { claims } = await verify(req, PROFILE_AUD);
    return send(res, 405, { api, error: 'method_not_allowed', seen: seenOf(req, claims) }, { allow: 'GET, HEAD' });
  }
  const claims = await authorize(req, res, api, PROFILE_AUD, 'profile');
  if (!claims) return undefined;
  const profile = { sub: claims.sub };
  for (const k of ['name', 'preferred_username', 'email']) {
    if (typeof claims[k] === 'string') profile[k] = claims[k];
  }
  return send(res, 200, { api, profile, seen: seenOf(req, claims) });
}

const STATIC_DIR = new URL('./static/', import.meta.url);
const STATIC_FILES = {
  '/': ['index.html', 'text/html; charset=utf-8'],
  '/index.html': ['index.html', 'text/html; charset=utf-8'],
  '/app.js': ['app.js', 'text/javascript; charset=utf-8'],
  '/style.css': ['style.css', 'text/css; charset=utf-8'],
  '/favicon.svg': ['favicon.svg', 'image/svg+xml'],
};
const PAGE_CSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
  + "base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

async function publicHandler(req, res, path) {
  const api = 'public';
  drain(req);
  if (path === '/api/public/hello' || path === '/api/public/hello/') {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      return send(res, 405, { api, error: 'method_not_allowed', seen: seenOf(req, null) }, { allow: 'GET, HEAD' });
    }
    // the public API needs no token; should one arrive anyway, show what it was (any audience)
    const { claims } = bearerOf(req) ? await verify(req, undefined) : { claims: null };
    // Test knob: `?set_cookie=1` plays a hostile or careless upstream that sets bffgate's own
    // cookie names (in two letter cases) next to a cookie of its own; bffgate must strip its names.
    const plant = new URL(req.url, 'http://x').searchParams.get('set_cookie') === '1';
    const cookies = plant ? {
      'set-cookie': [
        '__Host-bff-session=planted-by-upstream; Path=/; Secure; HttpOnly; SameSite=Lax',
        '__HOST-BFF-SESSION=planted-upper; Path=/; Secure; HttpOnly',
        '__Host-bff-flow-0123456789ab=planted-flow; Path=/; Secure; HttpOnly',
        'theme=dark; Path=/',
      ],
    } : {};
    return send(res, 200, { api, message: 'hello', seen: seenOf(req, claims) }, cookies);
  }
  if (path.startsWith('/api/')) {
    return send(res, 404, { api, error: 'not_found', seen: seenOf(req, null) });
  }
  if (Object.hasOwn(STATIC_FILES, path) && (req.method === 'GET' || req.method === 'HEAD')) {
    const [file, type] = STATIC_FILES[path];
    let data;
    try {
      data = await fs.promises.readFile(new URL(file, STATIC_DIR));
    } catch {
      return send(res, 404, { error: 'not_found' });
    }
    res.writeHead(200, {
      'content-type': type,
      'content-length': data.length,
      'cache-control': 'no-cache',
      'x-content-type-options': 'nosniff',
      'referrer-policy': 'same-origin',
      ...(type.startsWith('text/html') ? { 'content-security-policy': PAGE_CSP, 'x-frame-options': 'DENY' } : {}),
    });
    return res.end(req.method === 'HEAD' ? undefined : data);
  }
  if (Object.hasOwn(STATIC_FILES, path)) {
    return send(res, 405, { error: 'method_not_allowed' }, { allow: 'GET, HEAD' });
  }
  return send(res, 404, { error: 'not_found' });
}

// ---------------------------------------------------------------------------------------------
// listeners

const LISTENERS = [
  { name: 'orders', port: portEnv('BFFGATE_API_ORDERS_PORT', 9101), handler: ordersHandler },
  { name: 'profile', port: portEnv('BFFGATE_API_PROFILE_PORT', 9102), handler: profileHandler },
  { name: 'public', port: portEnv('BFFGATE_API_PUBLIC_PORT', 9103), handler: publicHandler },
];

const servers = [];
for (const l of LISTENERS) {
  l.requests = 0;
  const server = http.createServer(async (req, res) => {
    const started = process.hrtime.bigint();
    let path = '/';
    try {
      path = new URL(req.url, 'http://localhost').pathname;
    } catch {
      path = '(unparsable)';
    }
    res.on('finish', () => {
      const ms = Number((process.hrtime.bigint() - started) / 1000000n);
      log(`${l.name} ${req.method} ${JSON.stringify(path)} ${res.statusCode} ${ms}ms`);
    });
    try {
      if (path === '/__stats') {
        drain(req);
        return send(res, 200, { requests: l.requests });
      }
      if (path === '/__reset') {
        drain(req);
        if (req.method !== 'POST') return send(res, 405, { error: 'method_not_allowed' }, { allow: 'POST' });
        l.requests = 0;
        if (l.name === 'orders') orders = new Map();
        return send(res, 200, { reset: true, requests: 0 });
      }
      l.requests += 1;
      return await l.handler(req, res, path);
    } catch (err) {
      log(`${l.name} error ${err.message}`);
      if (!res.headersSent) return send(res, 500, { api: l.name, error: 'server_error', seen: seenOf(req, null) });
      return res.destroy();
    }
  });
  server.on('error', (err) => fail(`${l.name}: cannot listen on 127.0.0.1:${l.port}: ${err.message}`));
  // Envoy keeps idle upstream connections for an hour and reuses them; Node closes an idle
  // keep-alive connection after 5 s by default, and a request Envoy sends on it just then is
  // reset (503 UC under load). Envoy closes them: Node never does.
  server.keepAliveTimeout = 0;
  server.listen(l.port, '127.0.0.1', () => log(`${l.name} listening on 127.0.0.1:${l.port} issuer=${ISSUER}`));
  servers.push(server);
}

let stopping = false;
function stop(signal) {
  if (stopping) return;
  stopping = true;
  log(`stopping signal=${signal}`);
  let open = servers.length;
  for (const s of servers) {
    s.close(() => {
      open -= 1;
      if (open === 0) process.exit(0);
    });
    s.closeAllConnections();
  }
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
