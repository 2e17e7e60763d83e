// HTTP(S) for the scripts and the tests: one raw request (node:http/node:https, never following
// redirects), JSON reading, and polling until something is ready, bounded (never a blind sleep).

import http from 'node:http';
import https from 'node:https';
import net from 'node:net';

import { demoCa } from './paths.mjs';

export const sleep = (ms) => new Promise((r) => { setTimeout(r, ms); });

/**
 * One HTTP(S) request. Never follows redirects. Rejects on a connection error or when the
 * connection is idle for `timeoutMs` (error code ETIMEDOUT).
 * @param {object} [o]
 * @param {object} [o.headers]
 * @param {string|Buffer} [o.body]          Content-Length is set from it
 * @param {http.Agent|false} [o.agent=false] false: a connection of its own
 * @param {number} [o.timeoutMs=10000]
 * @param {string} [o.rawPath]              sent exactly as given (no normalization of dot
 *                                          segments or escapes) instead of the URL's path
 * @param {Buffer} [o.ca]                   default: the demo certificate (.run/tls/cert.pem)
 * @param {string} [o.servername]           TLS SNI; default the URL's host name (none for an IP)
 * @param {{host?: string, port?: number|string, tls?: boolean}} [o.connect]  where to connect
 *                                          instead of the URL's host and port, with or without
 *                                          TLS; the Host header stays the URL's
 * @returns {Promise<{method:string, url:string, status:number, headers:object, rawHeaders:string[],
 *   setCookies:string[], text:string, json:any, location:string|undefined}>}
 */
export function request(method, url, {
  headers = {}, body, agent = false, timeoutMs = 10_000, rawPath, ca, servername, connect,
} = {}) {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const isHttps = connect?.tls ?? u.protocol === 'https:';
    const h = { ...headers };
    if (connect && !Object.keys(h).some((k) => k.toLowerCase() === 'host')) h.host = u.host;
    let payload = body;
    if (payload !== undefined && payload !== null && !Buffer.isBuffer(payload)) payload = Buffer.from(String(payload));
    if (payload) h['content-length'] = String(payload.length);
    const opts = {
      method,
      hostname: connect?.host ?? u.hostname,
      port: connect?.port ?? (u.port || (u.protocol === 'https:' ? 443 : 80)),
      path: rawPath ?? `${u.pathname}${u.search}`,
      headers: h,
      timeout: timeoutMs,
      agent,
    };
    if (isHttps) {
      opts.ca = ca ?? demoCa();
      const sni = servername ?? u.hostname;
      if (!net.isIP(sni)) opts.servername = sni;
    }
    const req = (isHttps ? https : http).request(opts, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('error', reject);
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json;
        try {
          json = JSON.parse(text);
        } catch {
          json = undefined;
        }
        const sc = res.headers['set-cookie'];
        resolve({
          method,
          url: rawPath ? `${u.origin}${rawPath}` : u.href,
          status: res.statusCode,
          headers: res.headers,
          rawHeaders: res.rawHeaders,
          setCookies: Array.isArray(sc) ? sc : sc ? [sc] : [],
          text,
          json,
          location: res.headers.location,
        });
      });
    });
    req.on('timeout', () => req.destroy(Object.assign(new Error(`${method} ${u.href}: timeout after ${timeoutMs} ms`), { code: 'ETIMEDOUT' })));
    req.on('error', reject);
    req.end(payload || undefined);
  });
}

/** GET `url` and its JSON body; throws unless the answer is 200 with JSON. */
export async function getJson(url, o) {
  const r = await request('GET', url, o);
  if (r.status !== 200 || r.json === undefined) throw new Error(`GET ${url}: ${r.status} ${r.text.slice(0, 200)}`);
  return r.json;
}

/**
 * Polls `probe()` every `everyMs` until it returns true, for at most `timeoutMs` (or until the
 * absolute `deadline`; it is tried at least once). Any other value it returns (a string saying why not, best), or the code
 * or message of what it throws, is shown as the last reason when time runs out. `check()` runs
 * before every try and throws to give up at once (e.g. the process being waited for died);
 * `detail()` adds to the timeout's message (e.g. the tail of a log).
 */
export async function waitUntil(what, probe, {
  timeoutMs = 60_000, deadline = Date.now() + timeoutMs, everyMs = 150, check, detail,
} = {}) {
  let last;
  const started = Date.now();
  for (;;) { // at least one try, even past the deadline
    check?.();
    try {
      const r = await probe();
      if (r === true) return;
      last = r === false || r === undefined ? 'not yet' : r;
    } catch (err) {
      last = err.code || err.message;
    }
    if (Date.now() >= deadline) break;
    await sleep(everyMs);
  }
  const s = Math.round((deadline - started) / 100) / 10;
  throw new Error(`${what}: not ready within ${s} s (last: ${last})${detail ? detail() : ''}`);
}

/** A probe for waitUntil: GET `url` answers 200. */
export const expect200 = (url, o) => async () => {
  const r = await request('GET', url, { timeoutMs: 2000, ...o });
  return r.status === 200 ? true : `HTTP ${r.status}`;
};

/** Runs `fn` until it returns truthy or `ms` pass; returns its last value. */
export async function eventually(fn, { ms = 5000, every = 100 } = {}) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last) return last;
    await sleep(every);
  }
  return last;
}
