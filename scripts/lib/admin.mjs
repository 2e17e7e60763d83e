// What an Envoy's admin listener tells (any Envoy: the stack's, the fleet's, the benchmark's):
// /stats, /stats/prometheus, /clusters health, /memory, /ready; and bffgate's operator API
// (bearer token from .run/secrets.env, a scan answered 429 retried after its Retry-After).
// `adminUrl` is the admin listener, e.g. http://127.0.0.1:9901.

import fs from 'node:fs';

import { expect200, request, sleep } from './http.mjs';
import { ADMIN, OPERATOR, readSecrets } from './paths.mjs';

/** /stats as a Map name -> number (counters and gauges; `filter` regex optional). */
export async function adminStats(adminUrl, filter) {
  const q = filter ? `?filter=${encodeURIComponent(filter)}` : '';
  const r = await request('GET', `${adminUrl}/stats${q}`);
  if (r.status !== 200) throw new Error(`${adminUrl}/stats: ${r.status}`);
  const out = new Map();
  for (const line of r.text.split('\n')) {
    const m = /^(\S+): (\d+)$/.exec(line.trim());
    if (m) out.set(m[1], Number(m[2]));
  }
  return out;
}

/**
 * /stats/prometheus as a Map: `name` (no labels) or `name{labels}` -> number. Only lines whose
 * name starts with `prefix` (default bffgate_) are kept.
 */
export async function adminPrometheus(adminUrl, prefix = 'bffgate_') {
  const r = await request('GET', `${adminUrl}/stats/prometheus`);
  if (r.status !== 200) throw new Error(`${adminUrl}/stats/prometheus: ${r.status}`);
  const out = new Map();
  for (const line of r.text.split('\n')) {
    if (!line.startsWith(prefix)) continue;
    const m = /^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})? (\S+)$/.exec(line);
    if (!m) continue;
    const labels = m[2] && m[2] !== '{}' ? m[2] : '';
    out.set(`${m[1]}${labels}`, Number(m[3]));
  }
  return out;
}

/** `after - before` for every key of `after` (missing in before = 0). */
export function deltas(before, after) {
  const out = new Map();
  for (const [k, v] of after) out.set(k, v - (before.get(k) ?? 0));
  return out;
}

/**
 * How Envoy sees the hosts 127.0.0.1:<port> of `cluster` (/clusters): per port its
 * health_flags ('healthy', else the flags), 'absent' when the host is not listed.
 */
export async function healthFlags(adminUrl, cluster, ports, { timeoutMs } = {}) {
  const r = await request('GET', `${adminUrl}/clusters`, { timeoutMs });
  return ports.map((port) => {
    const m = new RegExp(`^${cluster}::127\\.0\\.0\\.1:${port}::health_flags::(.*)$`, 'm').exec(r.text);
    return m ? m[1].trim() : 'absent';
  });
}

/** Envoy's /memory (numbers) and, with `pid`, the process's resident set size (VmRSS, bytes). */
export async function adminMemory(adminUrl, pid) {
  const r = await request('GET', `${adminUrl}/memory`);
  const m = JSON.parse(r.text);
  let rss = NaN;
  try {
    const st = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const k = /VmRSS:\s+(\d+) kB/.exec(st);
    if (k) rss = Number(k[1]) * 1024;
  } catch {
    // no /proc, or no pid
  }
  return { allocated: Number(m.allocated), heapSize: Number(m.heap_size), rss };
}

/** A probe (waitFor/waitUntil): the admin listener's /ready answers 200. */
export const adminReady = (adminUrl) => expect200(`${adminUrl}/ready`);

export const mib = (n) => `${(n / 1048576).toFixed(2)} MiB`;

// ---------------------------------------------------------------------------------------------
// bffgate's operator API

/** The operator API's bearer token (`BFFGATE_ADMIN_TOKEN` in .run/secrets.env). */
export function operatorToken() {
  return readSecrets().BFFGATE_ADMIN_TOKEN;
}

/**
 * A request to the operator API with its bearer token (unless `token: null`; another string
 * replaces it). A scan answered 429 (one per second per Envoy) is retried after its
 * Retry-After, a few times. `base`: another Envoy's operator listener.
 */
export async function operatorRequest(method, pathAndQuery, { token, headers = {}, base = OPERATOR } = {}) {
  const t = token === undefined ? operatorToken() : token;
  const h = { ...headers, ...(t === null ? {} : { authorization: `Bearer ${t}` }) };
  for (let attempt = 0; ; attempt++) {
    const r = await request(method, `${base}${pathAndQuery}`, { headers: h });
    if (r.status !== 429 || attempt >= 5) return r;
    await sleep(1000 * Number(r.headers['retry-after'] || 1));
  }
}

/** GET /sessions?sub=S on the operator listener -> number of live sessions. */
export async function operatorCount(sub, { base } = {}) {
  const r = await operatorRequest('GET', `/sessions?sub=${encodeURIComponent(sub)}`, { base });
  if (r.status !== 200 || typeof r.json?.sessions !== 'number') throw new Error(`GET /sessions?sub=${sub}: ${r.status} ${r.text}`);
  return r.json.sessions;
}

/** POST /sessions/revoke?sub=S (with the CSRF header unless csrf: false); the raw response. */
export function operatorRevoke(sub, { csrf = true, base } = {}) {
  return operatorRequest('POST', `/sessions/revoke?sub=${encodeURIComponent(sub)}`, {
    headers: csrf ? { 'x-csrf': '1' } : {},
    base,
  });
}

/**
 * POST /sessions/revoke-all, then waits until every refresh token it queued has been answered
 * by the provider (revoked, refused or timed out: the counters bffgate_revoke_all_revoked,
 * _failed and _not_sent moved by as many as were queued), or `timeoutMs` passed. Run it before
 * stopping an Envoy whose sessions must not leave live grants behind.
 * Returns { ended, queued, revoked, failed, notSent, done, ms }.
 */
export async function revokeAllAndWait({ base = OPERATOR, adminUrl = ADMIN, timeoutMs = 60_000 } = {}) {
  const names = ['revoked', 'failed', 'not_sent'].map((k) => `wasmcustom.bffgate_revoke_all_${k}`);
  const counts = async () => {
    const st = await adminStats(adminUrl, 'bffgate_revoke_all_');
    return names.map((n) => st.get(n) ?? 0);
  };
  const before = await counts();
  const started = Date.now();
  const r = await operatorRequest('POST', '/sessions/revoke-all', { headers: { 'x-csrf': '1' }, base });
  if (r.status !== 202) throw new Error(`POST /sessions/revoke-all: ${r.status} ${r.text}`);
  const queued = r.json.revocations_queued;
  let now = before;
  while (Date.now() - started < timeoutMs) {
    now = await counts();
    if (now.reduce((a, v, i) => a + v - before[i], 0) >= queued) break;
    await sleep(100);
  }
  const [revoked, failed, notSent] = now.map((v, i) => v - before[i]);
  return {
    ended: r.json.sessions_ended,
    queued,
    revoked,
    failed,
    notSent,
    done: revoked + failed + notSent >= queued,
    ms: Date.now() - started,
  };
}
