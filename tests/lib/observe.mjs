// What a test can observe of a running stack besides HTTP answers: Envoy's Prometheus metrics,
// its memory, which worker took a connection, the operator API on the admin listener, the
// audit and access-log lines in envoy.log, the session id inside a session cookie (and the audit
// handle derived from it), the provider's own logout (end-session page), and many logins.

import crypto from 'node:crypto';

import {
  adminMemory, adminPrometheus, adminStats, deltas, mib, operatorCount, operatorRequest, operatorRevoke, operatorToken,
} from '../../scripts/lib/admin.mjs';
import { sleep } from '../../scripts/lib/http.mjs';
import { logSince, logSize } from '../../scripts/lib/logs.mjs';
import { ADMIN, OPERATOR } from '../../scripts/lib/paths.mjs';
import {
  APP, Browser, IDP, SESSION_COOKIE, loginOk, rawRequest,
} from './client.mjs';

// The shared pieces (scripts/lib), under the names the tests use.
export {
  ADMIN, OPERATOR, adminPrometheus, deltas, logSince, logSize, mib, operatorCount, operatorRequest, operatorRevoke,
  operatorToken, sleep,
};

// ---------------------------------------------------------------------------------------------
// metrics and memory of the stack's Envoy (ADMIN)

/** The stack's Envoy /stats/prometheus (adminPrometheus on ADMIN). */
export const prometheus = (prefix = 'bffgate_') => adminPrometheus(ADMIN, prefix);

/** The stack's Envoy /memory (numbers) and its resident set size (VmRSS, bytes). */
export const envoyMemory = (pid) => adminMemory(ADMIN, pid);

/** Connections accepted so far by each Envoy worker on the public listener: [w0, w1, ...]. */
export async function workerConnections() {
  const out = [];
  for (const [name, v] of await adminStats(ADMIN, '^listener\\.127\\.0\\.0\\.1_8443\\.worker_\\d+\\.downstream_cx_total$')) {
    const m = /worker_(\d+)\.downstream_cx_total$/.exec(name);
    if (m) out[Number(m[1])] = v;
  }
  return out;
}

/**
 * Runs `probe()` (which must open a fresh connection) repeatedly until every Envoy worker has
 * accepted at least one of those connections and at least `min` probes ran (at most `max`).
 * Returns the probe results; throws if some worker never got one.
 */
export async function onEveryWorker(probe, { min = 4, max = 40 } = {}) {
  const start = await workerConnections();
  const results = [];
  for (let i = 0; i < max; i += 1) {
    results.push(await probe(i));
    if (results.length >= min) {
      const now = await workerConnections();
      if (start.length > 0 && start.every((v, w) => now[w] > v)) return results;
    }
  }
  const now = await workerConnections();
  throw new Error(`after ${max} fresh connections not every worker got one: before ${start}, after ${now}`);
}

// ---------------------------------------------------------------------------------------------
// session cookies, handles

/**
 * What a session cookie value (`kid.b64url(payload).b64url(mac)`) holds: the payload is the
 * 4-byte slot and the 16-byte random id. Returns the slot, the id in hex and base64url, the
 * store's verifier (hex SHA-256 of the id) and the audit handle (12 hex digits of SHA-256 of
 * "bffgate-handle:" + id), computed here independently of the filter.
 */
export function sessionOf(cookieValue) {
  const [kid, p64, mac] = String(cookieValue).split('.');
  const payload = Buffer.from(p64, 'base64url');
  const secret = payload.subarray(4);
  return {
    kid,
    payloadB64: p64,
    mac,
    slot: payload.readUInt32BE(0),
    payloadHex: payload.toString('hex'),
    idHex: secret.toString('hex'),
    idB64: secret.toString('base64url'),
    verifier: crypto.createHash('sha256').update(secret).digest('hex'),
    handle: crypto.createHash('sha256').update(Buffer.concat([Buffer.from('bffgate-handle:'), secret])).digest('hex').slice(0, 12),
  };
}

// ---------------------------------------------------------------------------------------------
// envoy.log: audit and access-log lines (logSince, logSize: scripts/lib/logs.mjs)

/** The audit events ({event, ...}) the filter logged in envoy.log since `offset`. */
export function auditEvents(file, offset) {
  const out = [];
  for (const line of logSince(file, offset).split('\n')) {
    const i = line.indexOf('audit {');
    if (i < 0) continue;
    try {
      out.push({ ...JSON.parse(line.slice(i + 6)), line });
    } catch {
      // not an audit line after all
    }
  }
  return out;
}

/** The JSON access-log entries ({"log":"access",...}) in envoy.log since `offset`. */
export function accessEntries(file, offset) {
  const out = [];
  for (const line of logSince(file, offset).split('\n')) {
    if (!line.startsWith('{') || !line.includes('"access"')) continue;
    try {
      const j = JSON.parse(line);
      if (j.log === 'access') out.push({ ...j, line });
    } catch {
      // not JSON
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// the provider's own logout

/**
 * Signs `browser` out at the identity provider itself: GET /session/end (the provider's
 * confirmation page), then POST its form (hidden `xsrf`) with logout=yes. The provider then
 * sends a back-channel logout token to bffgate for that provider session.
 * @returns the confirm response
 */
export async function logoutAtIdp(browser) {
  const page = await browser.navigate(`${IDP}/session/end`);
  if (page.status !== 200) throw new Error(`GET ${IDP}/session/end: ${page.status} ${page.text.slice(0, 200)}`);
  const form = /<form[^>]*id="op\.logoutForm"[^>]*action="([^"]+)"[^>]*>([\s\S]*?)<\/form>/i.exec(page.text);
  if (!form) throw new Error(`no logout form on the end-session page: ${page.text.slice(0, 400)}`);
  const fields = new URLSearchParams();
  for (const m of form[2].matchAll(/<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"/gi)) fields.set(m[1], m[2]);
  fields.set('logout', 'yes');
  return browser.request('POST', new URL(form[1].replace(/&amp;/g, '&'), page.url).href, {
    form: fields,
    headers: { accept: 'text/html', origin: IDP, 'sec-fetch-mode': 'navigate', 'sec-fetch-site': 'same-origin' },
  });
}

// ---------------------------------------------------------------------------------------------
// many logins

/**
 * Creates `n` sessions through the real login flow, each in its own Browser (own provider
 * session, no keep-alive), `parallel` at a time, users from `userOf(i)` (alice/bob alternating by
 * default). `onBatch(done, browsers)` runs after each batch (to sample gauges, memory...).
 * Returns the browsers in creation order (batch by batch).
 */
export async function loginMany(n, {
  parallel = 4, userOf = (i) => (i % 2 === 0 ? 'alice' : 'bob'), onBatch, name = 'b',
} = {}) {
  const browsers = [];
  for (let i = 0; i < n; i += parallel) {
    const batch = [];
    for (let j = i; j < Math.min(n, i + parallel); j += 1) {
      const b = new Browser({ name: `${name}${j}`, keepAlive: false });
      b.user = userOf(j);
      batch.push(loginOk(b, b.user).then(() => b));
    }
    browsers.push(...(await Promise.all(batch)));
    if (onBatch) await onBatch(browsers.length, browsers);
  }
  return browsers;
}

/** GET /auth/user in `browser` on a fresh connection, without touching its jar. */
export function userStatus(browser) {
  return rawRequest('GET', `${APP}/auth/user`, {
    headers: { accept: 'application/json', cookie: `${SESSION_COOKIE}=${browser.sessionCookie}` },
  });
}

/** GET /api/orders with `browser`'s session cookie on a fresh connection, jar untouched. */
export function ordersStatus(browser) {
  return rawRequest('GET', `${APP}/api/orders`, {
    headers: { accept: 'application/json', cookie: `${SESSION_COOKIE}=${browser.sessionCookie}` },
  });
}
