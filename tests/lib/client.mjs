// HTTP(S) client for the bffgate integration tests: node:http/node:https only, no npm deps.
//
// - trusts .run/tls/cert.pem (servername localhost) for https://localhost:8443;
// - never follows redirects by itself;
// - a cookie jar per Browser: host-only cookies keyed by (host, name, path) like a browser
//   (ports share cookies, as in browsers), Max-Age<=0 / past Expires deletes, Path matching,
//   Secure cookies only over https; the raw Set-Cookie lines of every response are kept
//   (`res.setCookies`, `browser.setCookieLog`) so tests can assert attributes;
// - login helpers that drive the real flow: GET /auth/login -> IdP -> login form -> consent
//   (granted server-side by the demo IdP) -> back to https://localhost:8443/auth/callback, with
//   hooks to stop before the callback so tests can tamper with state, code or cookies;
// - helpers for the demo APIs' and IdP's /__stats counters.

import http from 'node:http';
import https from 'node:https';
import tls from 'node:tls';

import { adminStats } from '../../scripts/lib/admin.mjs';
import { request as rawRequest } from '../../scripts/lib/http.mjs';
import {
  ADMIN, API_PORTS, APP, CALLBACK, FLOW_PREFIX, IDP, ROOT, SESSION_COOKIE, demoCa as ca,
} from '../../scripts/lib/paths.mjs';

// The shared pieces (scripts/lib), under the names the tests use.
export {
  ADMIN, API_PORTS, APP, CALLBACK, FLOW_PREFIX, IDP, ROOT, SESSION_COOKIE, adminStats, ca, rawRequest,
};

const DEFAULT_TIMEOUT_MS = 10_000;

/**
 * Every request/response made through a Browser in this process: { method, url, status, headers,
 * setCookies, text, sentCookie, sentHeaders }. Tests scan it for leaked tokens.
 */
export const transcript = [];

// ---------------------------------------------------------------------------------------------
// raw requests (rawRequest: scripts/lib/http.mjs)

/**
 * Sends `text` byte for byte over one TLS connection to the app (127.0.0.1:8443, SNI localhost) and
 * reads the first response: for requests no HTTP client library will send (lowercase methods,
 * odd request lines). The connection is not half-closed (a peer may answer a FIN with a reset
 * that loses its answer); the response ends at Content-Length or when the server closes.
 * Resolves { status, head, headers, body, raw } (status 0 when the server closed or reset the
 * connection without an answer).
 */
export function rawHttp1(text, { timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
  return new Promise((resolve, reject) => {
    const u = new URL(APP);
    const chunks = [];
    let settled = false;
    const parse = () => {
      const raw = Buffer.concat(chunks).toString('latin1');
      const end = raw.indexOf('\r\n\r\n');
      const head = end >= 0 ? raw.slice(0, end) : raw;
      const [statusLine = '', ...lines] = head.split('\r\n');
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(statusLine);
      const headers = {};
      for (const l of lines) {
        const k = l.indexOf(':');
        if (k > 0) headers[l.slice(0, k).trim().toLowerCase()] = l.slice(k + 1).trim();
      }
      const body = end >= 0 ? raw.slice(end + 4) : '';
      const complete = end >= 0 && headers['content-length'] !== undefined && Buffer.byteLength(body, 'latin1') >= Number(headers['content-length']);
      return {
        res: {
          status: m ? Number(m[1]) : 0, head, headers, body, raw,
        },
        complete,
      };
    };
    const finish = (err) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      if (err && chunks.length === 0 && err.code !== 'ECONNRESET') reject(err);
      else resolve(parse().res);
    };
    const sock = tls.connect({
      host: '127.0.0.1', port: Number(u.port), servername: 'localhost', ca: ca(), ALPNProtocols: ['http/1.1'],
    }, () => sock.write(text));
    const timer = setTimeout(() => finish(new Error(`raw request: timeout after ${timeoutMs} ms`)), timeoutMs);
    sock.on('data', (c) => {
      chunks.push(c);
      if (parse().complete) finish();
    });
    sock.on('error', (err) => finish(err));
    sock.on('close', () => finish());
  });
}

// ---------------------------------------------------------------------------------------------
// Set-Cookie parsing

/** Parses one Set-Cookie line: { name, value, attrs: {lowercased name: value|true}, raw }. */
export function parseSetCookie(line) {
  const [pair, ...rest] = line.split(';');
  const eq = pair.indexOf('=');
  const name = (eq >= 0 ? pair.slice(0, eq) : pair).trim();
  const value = eq >= 0 ? pair.slice(eq + 1).trim() : '';
  const attrs = {};
  const attrNames = []; // as written, in order
  for (const a of rest) {
    const t = a.trim();
    if (!t) continue;
    const i = t.indexOf('=');
    const k = (i >= 0 ? t.slice(0, i) : t).trim();
    const v = i >= 0 ? t.slice(i + 1).trim() : true;
    attrs[k.toLowerCase()] = v;
    attrNames.push(k);
  }
  return { name, value, attrs, attrNames, raw: line };
}

/** True when the Set-Cookie line deletes the cookie (Max-Age <= 0 or Expires in the past). */
export function isDeletion(sc) {
  const c = typeof sc === 'string' ? parseSetCookie(sc) : sc;
  if (c.attrs['max-age'] !== undefined && Number(c.attrs['max-age']) <= 0) return true;
  if (typeof c.attrs.expires === 'string' && Date.parse(c.attrs.expires) <= Date.now()) return true;
  return false;
}

function pathMatches(reqPath, cookiePath) {
  if (reqPath === cookiePath) return true;
  if (!reqPath.startsWith(cookiePath)) return false;
  return cookiePath.endsWith('/') || reqPath[cookiePath.length] === '/';
}

function defaultPath(reqPath) {
  if (!reqPath.startsWith('/')) return '/';
  const i = reqPath.lastIndexOf('/');
  return i <= 0 ? '/' : reqPath.slice(0, i);
}

// ---------------------------------------------------------------------------------------------
// a browser: cookie jar + connection reuse

let browserSeq = 0;

export class Browser {
  /**
   * @param {object} [o]
   * @param {string} [o.name]
   * @param {boolean} [o.keepAlive=true]  reuse connections (per browser); false = one connection per request
   */
  /**
   * @param {object} [o]
   * @param {object} [o.headers]  sent with every request unless the request sets them
   *   (e.g. a `user-agent`)
   * @param {string} [o.localAddress]  the loopback address to connect from (e.g. 127.0.1.9:
   *   another /24 than 127.0.0.1), as a client on another network would
   */
  constructor({ name, keepAlive = true, headers = {}, localAddress } = {}) {
    browserSeq += 1;
    this.name = name || `browser-${browserSeq}`;
    this.jar = new Map(); // key host\0name\0path -> cookie
    this.setCookieLog = []; // { url, status, lines }
    this.keepAlive = keepAlive || Boolean(localAddress);
    this.defaultHeaders = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
    const ao = { keepAlive: true, maxSockets: 4, ...(localAddress ? { localAddress } : {}) };
    this.agents = this.keepAlive ? { https: new https.Agent(ao), http: new http.Agent(ao) } : null;
  }

  /** Closes pooled connections. */
  close() {
    if (this.agents) {
      this.agents.https.destroy();
      this.agents.http.destroy();
    }
  }

  // ---- jar

  /** Stores the Set-Cookie lines of a response to `url`. */
  store(url, lines) {
    const u = new URL(url);
    for (const line of lines) {
      const c = parseSetCookie(line);
      if (!c.name) continue;
      let cpath = typeof c.attrs.path === 'string' && c.attrs.path.startsWith('/') ? c.attrs.path : defaultPath(u.pathname);
      if (c.name.startsWith('__Host-')) {
        // __Host- prefix: only accepted with Secure, Path=/, no Domain, from a secure origin
        if (c.attrs.secure === undefined || c.attrs.domain !== undefined || c.attrs.path !== '/' || u.protocol !== 'https:') continue;
        cpath = '/';
      }
      if (c.attrs.secure !== undefined && u.protocol !== 'https:') continue;
      const key = `${u.hostname}\u0000${c.name}\u0000${cpath}`;
      if (isDeletion(c)) {
        this.jar.delete(key);
        continue;
      }
      this.jar.set(key, {
        host: u.hostname,
        name: c.name,
        value: c.value,
        path: cpath,
        secure: c.attrs.secure !== undefined,
        httpOnly: c.attrs.httponly !== undefined,
        sameSite: c.attrs.samesite,
        raw: line,
      });
    }
  }

  /** The Cookie header the browser would send to `url` (or undefined). */
  cookieHeader(url) {
    const u = new URL(url);
    const list = [...this.jar.values()]
      .filter((c) => c.host === u.hostname && pathMatches(u.pathname, c.path) && (!c.secure || u.protocol === 'https:'))
      .sort((a, b) => b.path.length - a.path.length);
    return list.length ? list.map((c) => `${c.name}=${c.value}`).join('; ') : undefined;
  }

  /** Sets a cookie by hand (host-only, default localhost, Path=/). */
  setCookie(name, value, { host = 'localhost', path: p = '/', secure = true } = {}) {
    this.jar.set(`${host}\u0000${name}\u0000${p}`, { host, name, value, path: p, secure, httpOnly: true, raw: null });
  }

  /** Value of a cookie (first match on host), or undefined. */
  getCookie(name, host = 'localhost') {
    for (const c of this.jar.values()) if (c.host === host && c.name === name) return c.value;
    return undefined;
  }

  /** Every cookie of a host whose name starts with `prefix`. */
  cookiesWithPrefix(prefix, host = 'localhost') {
    return [...this.jar.values()].filter((c) => c.host === host && c.name.startsWith(prefix));
  }

  deleteCookie(name, host = 'localhost') {
    for (const [k, c] of this.jar) if (c.host === host && c.name === name) this.jar.delete(k);
  }

  /** A new Browser with a copy of this jar (no shared connections). */
  clone(name) {
    const b = new Browser({ name: name || `${this.name}-clone`, keepAlive: this.keepAlive });
    for (const [k, c] of this.jar) b.jar.set(k, { ...c });
    return b;
  }

  get sessionCookie() {
    return this.getCookie(SESSION_COOKIE);
  }

  // ---- requests

  /**
   * A request with this browser's cookies; stores Set-Cookie in the jar.
   * @param {object} [o]
   * @param {object} [o.headers]          extra headers (a `cookie` header here REPLACES the jar's)
   * @param {string|Buffer} [o.body]
   * @param {object} [o.json]             JSON body (sets content-type)
   * @param {URLSearchParams} [o.form]    form body
   * @param {boolean} [o.fresh=false]     use a brand-new connection for this request
   * @param {boolean} [o.noJar=false]     neither send nor store cookies
   * @param {string} [o.extraCookie]      appended to the jar's Cookie header, e.g. 'theme=dark'
   */
  async request(method, url, {
    headers = {}, body, json, form, fresh = false, noJar = false, extraCookie, timeoutMs,
  } = {}) {
    const abs = new URL(url, APP).href;
    const h = { ...this.defaultHeaders };
    for (const [k, v] of Object.entries(headers)) h[k.toLowerCase()] = v;
    if (!noJar && h.cookie === undefined) {
      const jarCookie = this.cookieHeader(abs);
      const parts = [jarCookie, extraCookie].filter(Boolean);
      if (parts.length) h.cookie = parts.join('; ');
    } else if (noJar && extraCookie && h.cookie === undefined) {
      h.cookie = extraCookie;
    }
    let payload = body;
    if (json !== undefined) {
      payload = JSON.stringify(json);
      if (!h['content-type']) h['content-type'] = 'application/json';
    } else if (form !== undefined) {
      payload = form.toString();
      if (!h['content-type']) h['content-type'] = 'application/x-www-form-urlencoded';
    }
    const isHttps = abs.startsWith('https:');
    const agent = fresh || !this.agents ? false : this.agents[isHttps ? 'https' : 'http'];
    const res = await rawRequest(method, abs, { headers: h, body: payload, agent, timeoutMs });
    res.sentCookie = h.cookie;
    res.sentHeaders = h;
    transcript.push(res);
    if (res.setCookies.length) this.setCookieLog.push({ url: abs, status: res.status, lines: res.setCookies });
    if (!noJar) this.store(abs, res.setCookies);
    return res;
  }

  get(url, o) { return this.request('GET', url, o); }

  post(url, o) { return this.request('POST', url, o); }

  /** A top-level navigation, as a browser sends it. */
  navigate(url, o = {}) {
    return this.get(url, {
      ...o,
      headers: {
        accept: 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8',
        'sec-fetch-mode': 'navigate',
        'sec-fetch-dest': 'document',
        'sec-fetch-site': 'none',
        ...(o.headers || {}),
      },
    });
  }

  /** A same-origin fetch() from the app's page. */
  fetchApi(method, url, o = {}) {
    return this.request(method, url, {
      ...o,
      headers: {
        accept: 'application/json',
        'sec-fetch-mode': 'cors',
        'sec-fetch-site': 'same-origin',
        ...(o.headers || {}),
      },
    });
  }
}

/**
 * The browsers of one test file: `pool.open(name, options)` makes a Browser and keeps it, and
 * `pool.closeAll()` (in the file's `after`) closes every one.
 */
export function browserPool() {
  const all = [];
  return {
    open(name, o = {}) {
      const b = new Browser({ name, ...o });
      all.push(b);
      return b;
    },
    closeAll() {
      for (const b of all.splice(0)) b.close();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// the login flow

/** The Set-Cookie lines of `res` for cookie `name` (parsed). */
export function setCookiesNamed(res, name) {
  return res.setCookies.map(parseSetCookie).filter((c) => c.name === name);
}

/** The Set-Cookie lines of `res` whose name starts with `prefix` (parsed). */
export function setCookiesWithPrefix(res, prefix) {
  return res.setCookies.map(parseSetCookie).filter((c) => c.name.startsWith(prefix));
}

/** True when `res` sets (not deletes) the session cookie. */
export function setsSession(res) {
  return setCookiesNamed(res, SESSION_COOKIE).some((c) => !isDeletion(c) && c.value !== '');
}

function formOf(html, id) {
  const re = id ? new RegExp(`<form[^>]*id="${id}"[^>]*>`, 'i') : /<form[^>]*>/i;
  const tag = re.exec(html)?.[0];
  if (!tag) return undefined;
  const action = /action="([^"]*)"/i.exec(tag)?.[1]?.replace(/&amp;/g, '&');
  const method = /method="([^"]*)"/i.exec(tag)?.[1] || 'get';
  return { action, method: method.toUpperCase() };
}

/**
 * Step 1: GET /auth/login (as a navigation) in `browser`.
 * @returns the response (expected 302 to the IdP's authorization endpoint)
 */
export function startLogin(browser, { returnTo, query } = {}) {
  let url = `${APP}/auth/login`;
  if (query !== undefined) url += `?${query}`;
  else if (returnTo !== undefined) url += `?return_to=${encodeURIComponent(returnTo)}`;
  return browser.navigate(url);
}

/**
 * Step 2: at the IdP, from the authorization URL to the redirect back to the app's callback.
 * Follows IdP redirects (never the callback itself), submits the login form if it is shown
 * (or presses Cancel with `cancel: true`). Consent is granted server-side by the demo IdP.
 * @returns {Promise<URL>} the callback URL the IdP sent the browser to
 */
export async function authorizeAtIdp(browser, authorizeUrl, user, password, { cancel = false, maxHops = 12, otp } = {}) {
  let r = await browser.navigate(authorizeUrl);
  const trail = [];
  for (let hop = 0; hop < maxHops; hop += 1) {
    trail.push(`${r.status} ${r.url}${r.location ? ` -> ${r.location}` : ''}`);
    if (r.status >= 300 && r.status < 400 && r.location) {
      const next = new URL(r.location, r.url);
      if (next.href.startsWith(CALLBACK)) return next;
      if (next.origin !== new URL(IDP).origin) {
        throw new Error(`IdP redirected off-site to ${next.href}; trail:\n${trail.join('\n')}`);
      }
      r = await browser.navigate(next.href);
      continue;
    }
    if (r.status === 200 && /<form[^>]*id="login-form"/i.test(r.text)) {
      const formId = cancel ? 'abort-form' : 'login-form';
      const f = formOf(r.text, formId);
      if (!f?.action) throw new Error(`no ${formId} on the IdP page ${r.url}`);
      const action = new URL(f.action, r.url).href;
      const fields = cancel ? new URLSearchParams() : new URLSearchParams({ login: user, password });
      // The second factor, when the form asks for it (a step-up login) and the test has one.
      if (!cancel && otp !== undefined && /<input[^>]*id="otp"/i.test(r.text)) fields.set('otp', typeof otp === 'function' ? otp() : otp);
      r = await browser.request('POST', action, {
        form: fields,
        headers: { accept: 'text/html', origin: new URL(IDP).origin, 'sec-fetch-mode': 'navigate', 'sec-fetch-site': 'same-origin' },
      });
      continue;
    }
    throw new Error(`unexpected IdP answer ${r.status} at ${r.url}: ${r.text.slice(0, 300)}\ntrail:\n${trail.join('\n')}`);
  }
  throw new Error(`too many IdP hops:\n${trail.join('\n')}`);
}

/** Step 3: deliver the callback URL in `browser` (a navigation, as the IdP's redirect is). */
export function deliverCallback(browser, callbackUrl, o = {}) {
  return browser.navigate(typeof callbackUrl === 'string' ? callbackUrl : callbackUrl.href, o);
}

/**
 * Full login. Returns { login, authorizeUrl, callbackUrl, callback } where `login` is the
 * /auth/login response, `callback` the /auth/callback response (302 + Set-Cookie).
 * @param {object} [o]
 * @param {string} [o.returnTo]
 * @param {boolean} [o.stopBeforeCallback]  do not deliver the callback (callback: undefined)
 * @param {(url: URL, ctx: object) => (URL|string|void)} [o.beforeCallback]  may rewrite the URL
 * @param {boolean} [o.cancel]  press Cancel on the IdP's login page
 */
export async function login(browser, user, password, {
  returnTo, query, stopBeforeCallback = false, beforeCallback, cancel = false, otp,
} = {}) {
  const start = await startLogin(browser, { returnTo, query });
  if (start.status !== 302 || !start.location) {
    throw new Error(`GET /auth/login: expected 302, got ${start.status} ${start.text.slice(0, 200)}`);
  }
  const authorizeUrl = start.location;
  let callbackUrl = await authorizeAtIdp(browser, authorizeUrl, user, password, { cancel, otp });
  const ctx = { login: start, authorizeUrl, callbackUrl };
  if (beforeCallback) {
    const rewritten = await beforeCallback(callbackUrl, ctx);
    if (rewritten) callbackUrl = new URL(rewritten);
  }
  ctx.callbackUrl = callbackUrl;
  if (stopBeforeCallback) return ctx;
  ctx.callback = await deliverCallback(browser, callbackUrl);
  return ctx;
}

/** Logs in and asserts success; returns the browser's session cookie value. */
export async function loginOk(browser, user, password = user, o = {}) {
  const r = await login(browser, user, password, o);
  if (r.callback.status !== 302 || !setsSession(r.callback)) {
    throw new Error(`login as ${user} failed: callback ${r.callback.status} ${r.callback.text.slice(0, 300)}`);
  }
  return browser.sessionCookie;
}

// ---------------------------------------------------------------------------------------------
// counters of the demo stack

/** Request count of a demo API (orders | profile | public). */
export async function apiCount(name) {
  const r = await rawRequest('GET', `http://127.0.0.1:${API_PORTS[name]}/__stats`);
  if (r.status !== 200 || typeof r.json?.requests !== 'number') throw new Error(`${name} /__stats: ${r.status} ${r.text}`);
  return r.json.requests;
}

/** All three API counts. */
export async function apiCounts() {
  const out = {};
  for (const n of Object.keys(API_PORTS)) out[n] = await apiCount(n);
  return out;
}

/** Zeroes the demo APIs' counters (and the orders store). */
export async function resetApis() {
  for (const port of Object.values(API_PORTS)) {
    const r = await rawRequest('POST', `http://127.0.0.1:${port}/__reset`);
    if (r.status !== 200) throw new Error(`POST :${port}/__reset: ${r.status}`);
  }
}

/** The IdP's /__stats ({grants: {...}, revocations}). */
export async function idpStats() {
  const r = await rawRequest('GET', `${IDP}/__stats`);
  return r.json;
}

/** The stack's Envoy admin stats (adminStats on 127.0.0.1:9901). */
export const envoyStats = (filter) => adminStats(ADMIN, filter);

// ---------------------------------------------------------------------------------------------
// small assertion helpers shared by the test files

/** A compact description of a response for assertion messages (no cookie values). */
export function describe(res) {
  const sc = res.setCookies.map((l) => {
    const c = parseSetCookie(l);
    return `${c.name}=<${c.value.length} chars>; ${c.attrNames.join('; ')}`;
  });
  return `${res.method} ${res.url} -> ${res.status} ${res.headers['content-type'] || ''}`
    + `${res.location ? ` location=${res.location}` : ''}${sc.length ? ` set-cookie=[${sc.join(' | ')}]` : ''}`
    + ` body=${res.text.slice(0, 300)}`;
}

/** Base64url-decodes the middle segment of a JWT (no verification). */
export function jwtPayload(token) {
  const part = String(token).replace(/^Bearer\s+/i, '').split('.')[1];
  return JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));
}
