// Under load, no crash: a bounded run (BFFGATE_LOAD_SECONDS, default 45 s, and at most
// BFFGATE_LOAD_MAX requests, default 60000) of mixed valid and hostile requests, 32 in flight,
// over HTTP/2 (4 connections) and HTTP/1.1 (keep-alive), at Envoy --concurrency 2. Then: Envoy is
// alive, the wasm VM never trapped or reloaded (no RuntimeError / panicked / wasm trap in
// envoy.log; every `*vm_reload*` counter in /stats?filter=wasm is zero and no VM was created
// after the start), every answer was the expected one, no hostile request reached an upstream
// (each demo API counted exactly the valid requests that were answered by it), and the valid
// sessions still work.
//
// The wasm component logs at info here (not trace): the run is about throughput and crashes;
// attacks.test.mjs and the other files scan trace-level logs for leaks.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http2 from 'node:http2';
import https from 'node:https';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { startStack } from '../../scripts/stack.mjs';
import {
  APP, Browser, ROOT, SESSION_COOKIE, apiCounts, ca, envoyStats, loginOk, rawRequest, resetApis,
} from '../lib/client.mjs';
import { forEachLogChunk } from '../lib/harness.mjs';

const SECONDS = Number(process.env.BFFGATE_LOAD_SECONDS || 45);
const MAX_REQUESTS = Number(process.env.BFFGATE_LOAD_MAX || 150_000);
const IN_FLIGHT = 32;
const H2_CONNECTIONS = 4;
const LOG_DIR = '.run/logs/load';

let stack;
let baseline;
const browsers = [];
const sess = {};

async function wasmCounters() {
  const s = await envoyStats('wasm');
  const pick = {};
  for (const [k, v] of s) if (/vm_reload|\.runtime\.v8\.created$|wasm_vm_count|vm\.(active|created)/.test(k)) pick[k] = v;
  return pick;
}

before(async () => {
  fs.rmSync(path.join(ROOT, LOG_DIR), { recursive: true, force: true });
  stack = await startStack({ concurrency: 2, componentLogLevel: 'wasm:info', logDir: LOG_DIR });
  baseline = await wasmCounters();
  for (const user of ['alice', 'bob']) {
    const b = new Browser({ name: `load-${user}` });
    browsers.push(b);
    sess[user] = `${SESSION_COOKIE}=${await loginOk(b, user)}`;
  }
  // The profile token is obtained once (token exchange) before the run.
  const p = await rawRequest('GET', `${APP}/api/profile`, { headers: { accept: 'application/json', cookie: sess.alice } });
  assert.equal(p.status, 200, `warm-up: ${p.status} ${p.text}`);
  await resetApis();
}, { timeout: 90_000 });

after(async () => {
  for (const b of browsers) b.close();
  if (stack) await stack.stop();
}, { timeout: 30_000 });

// ---------------------------------------------------------------------------------------------
// the request mix

/** xorshift32: a reproducible mix. */
function rng(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x / 0x1_0000_0000;
  };
}

const J = { accept: 'application/json' };
const X = { 'x-csrf': '1', origin: APP, 'content-type': 'application/json' };
const forged = () => `${SESSION_COOKIE}=k1.${crypto.randomBytes(20).toString('base64url')}.${crypto.randomBytes(32).toString('base64url')}`;

/** Each kind: weight, request, the statuses it may get, and which API (if any) answers it. */
const KINDS = [
  // valid
  { name: 'orders GET (alice)', w: 8, api: 'orders', ok: [200], req: () => ({ path: '/api/orders', headers: { ...J, cookie: sess.alice } }) },
  { name: 'orders GET (bob)', w: 4, api: 'orders', ok: [200], req: () => ({ path: '/api/orders', headers: { ...J, cookie: `theme=dark; ${sess.bob}` } }) },
  { name: 'profile GET', w: 4, api: 'profile', ok: [200], req: () => ({ path: '/api/profile', headers: { ...J, cookie: sess.alice } }) },
  { name: 'orders POST (alice)', w: 1, api: 'orders', ok: [201], req: () => ({ method: 'POST', path: '/api/orders', headers: { ...J, ...X, cookie: sess.alice }, body: '{"item":"load"}' }) },
  { name: '/auth/user', w: 3, ok: [200], req: () => ({ path: '/auth/user', headers: { ...J, cookie: sess.bob } }) },
  { name: 'public', w: 3, api: 'public', ok: [200], req: () => ({ path: '/api/public/hello', headers: J }) },
  { name: '/auth/login', w: 1, ok: [302], req: () => ({ path: '/auth/login?return_to=%2Forders', headers: { 'sec-fetch-mode': 'navigate' } }) },
  // hostile
  { name: 'forged session', w: 4, ok: [401], req: () => ({ path: '/api/orders', headers: { ...J, cookie: forged() } }) },
  { name: 'duplicated session', w: 2, ok: [401], req: () => ({ path: '/api/profile', headers: { ...J, cookie: `${sess.alice}; ${sess.bob}` } }) },
  { name: 'truncated session', w: 2, ok: [401], req: () => ({ path: '/api/orders', headers: { ...J, cookie: sess.alice.slice(0, -3) } }) },
  { name: 'oversized session', w: 1, ok: [401], req: () => ({ path: '/api/orders', headers: { ...J, cookie: `${sess.alice}${'A'.repeat(6000)}` } }) },
  { name: 'client bearer, no session', w: 2, ok: [401], req: () => ({ path: '/api/orders', headers: { ...J, authorization: 'Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJtYWxsb3J5In0.' } }) },
  { name: 'POST without CSRF', w: 2, ok: [403], req: () => ({ method: 'POST', path: '/api/orders', headers: { ...J, cookie: sess.alice, 'content-type': 'application/json' }, body: '{}' }) },
  { name: 'cross-site POST', w: 1, ok: [403], req: () => ({ method: 'POST', path: '/api/orders', headers: { ...J, ...X, origin: 'https://evil.example', cookie: sess.alice }, body: '{}' }) },
  { name: 'POST without the scope (bob)', w: 2, ok: [403], req: () => ({ method: 'POST', path: '/api/orders', headers: { ...J, ...X, cookie: sess.bob }, body: '{"item":"x"}' }) },
  { name: 'path tricks, no session', w: 2, ok: [400, 401, 404], req: (r) => ({ path: ['/api/./orders', '/api//orders', '/api/orders/', '/api/profile/../orders', '/api/%6Frders', '/api/orders;x=1'][Math.floor(r() * 6)], headers: J }) },
  { name: 'callback garbage', w: 2, ok: [400], req: (r) => ({ path: `/auth/callback?code=x&state=${Math.floor(r() * 1e9)}.${crypto.randomBytes(8).toString('hex')}`, headers: { cookie: `__Host-bff-flow-${crypto.randomBytes(6).toString('hex')}=x` } }) },
  { name: 'callback without state', w: 1, ok: [400], req: () => ({ path: '/auth/callback?code=x', headers: {} }) },
  { name: 'logout without CSRF', w: 1, ok: [403], req: () => ({ method: 'POST', path: '/auth/logout', headers: { ...J, cookie: sess.bob } }) },
  { name: 'unknown /auth path', w: 1, ok: [404, 405], req: (r) => ({ method: r() < 0.5 ? 'GET' : 'PUT', path: r() < 0.5 ? '/auth/nope' : '/auth/logout', headers: J }) },
  { name: 'back-channel garbage', w: 1, ok: [400], req: () => ({ method: 'POST', path: '/auth/backchannel-logout', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `logout_token=${crypto.randomBytes(30).toString('base64url')}.e30.x` }) },
  { name: 'random query', w: 1, ok: [401], req: () => ({ path: `/api/orders?${crypto.randomBytes(24).toString('base64url')}=%ff%00`, headers: J }) },
];
const TOTAL_W = KINDS.reduce((s, k) => s + k.w, 0);
function pick(r) {
  let x = r() * TOTAL_W;
  for (const k of KINDS) {
    x -= k.w;
    if (x < 0) return k;
  }
  return KINDS[KINDS.length - 1];
}

// ---------------------------------------------------------------------------------------------
// transports

class H2Pool {
  constructor(n) {
    this.n = n;
    this.sessions = [];
    this.i = 0;
  }

  session() {
    this.i = (this.i + 1) % this.n;
    let s = this.sessions[this.i];
    if (!s || s.closed || s.destroyed) {
      s = http2.connect(APP, { ca: ca(), servername: 'localhost' });
      s.on('error', () => {});
      this.sessions[this.i] = s;
    }
    return s;
  }

  request({ method = 'GET', path: p, headers = {}, body }) {
    return new Promise((resolve) => {
      let req;
      try {
        req = this.session().request({ ':method': method, ':path': p, ...headers });
      } catch (e) {
        resolve({ status: 0, error: e.code || e.message });
        return;
      }
      let status = 0;
      req.setTimeout(15_000, () => req.close(http2.constants.NGHTTP2_CANCEL));
      req.on('response', (h) => { status = Number(h[':status']); });
      req.on('data', () => {});
      req.on('end', () => resolve({ status }));
      req.on('error', (e) => resolve({ status, error: e.code || e.message }));
      req.end(body);
    });
  }

  close() {
    for (const s of this.sessions) s?.close();
  }
}

const h1Agent = new https.Agent({ keepAlive: true, maxSockets: 8 });
function h1(o) {
  return rawRequest(o.method || 'GET', `${APP}${o.path}`, { headers: o.headers, body: o.body, agent: h1Agent, timeoutMs: 15_000 })
    .then((r) => ({ status: r.status }), (e) => ({ status: 0, error: e.code || e.message }));
}

// ---------------------------------------------------------------------------------------------

test(`load: ${SECONDS} s of mixed valid and hostile requests (${IN_FLIGHT} in flight, Envoy --concurrency 2): every answer as expected, no hostile request upstream`, { timeout: (SECONDS + 120) * 1000 }, async () => {
  const r = rng(0xbff6a7e);
  const pool = new H2Pool(H2_CONNECTIONS);
  const stats = new Map(KINDS.map((k) => [k.name, { sent: 0, ok: 0, bad: new Map() }]));
  const c0 = await apiCounts();
  const deadline = Date.now() + SECONDS * 1000;
  let sent = 0;
  const t0 = Date.now();
  async function worker(id) {
    while (Date.now() < deadline && sent < MAX_REQUESTS) {
      sent += 1;
      const k = pick(r);
      const o = k.req(r);
      // Every third worker speaks HTTP/1.1.
      const res = id % 3 === 0 ? await h1(o) : await pool.request(o);
      const s = stats.get(k.name);
      s.sent += 1;
      if (k.ok.includes(res.status)) s.ok += 1;
      else {
        const key = `${res.status}${res.error ? ` ${res.error}` : ''}`;
        s.bad.set(key, (s.bad.get(key) || 0) + 1);
      }
    }
  }
  await Promise.all(Array.from({ length: IN_FLIGHT }, (_, i) => worker(i)));
  const secs = (Date.now() - t0) / 1000;
  pool.close();
  h1Agent.destroy();
  const table = [...stats].map(([n, s]) => `${n.padEnd(30)} ${String(s.sent).padStart(6)} ${String(s.ok).padStart(6)}${s.bad.size ? `  unexpected: ${JSON.stringify(Object.fromEntries(s.bad))}` : ''}`);
  console.log(`load: ${sent} requests in ${secs.toFixed(1)} s (${(sent / secs).toFixed(0)}/s)\n${table.join('\n')}`);
  assert.ok(sent >= 1000, `a real load: ${sent} requests`);
  const bad = [...stats].filter(([, s]) => s.bad.size).map(([n, s]) => `${n}: ${JSON.stringify(Object.fromEntries(s.bad))}`);
  assert.deepEqual(bad, [], `unexpected answers:\n${bad.join('\n')}`);
  // Each API saw exactly the valid requests it answered: nothing hostile got through.
  await new Promise((res) => { setTimeout(res, 300); });
  const c1 = await apiCounts();
  for (const api of ['orders', 'profile', 'public']) {
    const answered = KINDS.filter((k) => k.api === api).reduce((n, k) => n + stats.get(k.name).ok, 0);
    assert.equal(c1[api] - c0[api], answered, `${api}: upstream requests = valid requests answered`);
  }
});

test('after the load: Envoy alive, no VM trap or reload (stats and envoy.log), valid sessions still work', async () => {
  const ready = await rawRequest('GET', 'http://127.0.0.1:9901/ready');
  assert.equal(ready.status, 200, 'Envoy is ready');
  assert.deepEqual(stack.unexpectedExits, [], 'no process of the stack died');
  const now = await wasmCounters();
  const reloads = Object.entries(now).filter(([k]) => /vm_reload/.test(k));
  assert.ok(reloads.length > 0, `the vm_reload counters exist: ${JSON.stringify(now)}`);
  for (const [k, v] of reloads) assert.equal(v, 0, `${k} = ${v}`);
  assert.deepEqual(now, baseline, 'no VM was created or reloaded during the run');
  console.log(`wasm counters after the load: ${JSON.stringify(now)}`);
  const badLines = [];
  forEachLogChunk(stack.logs.envoy, 0, (text) => {
    for (const l of text.split('\n')) {
      if (/panicked|RuntimeError|wasm trap|Uncaught|Function: proxy_on_\w+ failed|VM .*(crash|fail)/i.test(l)) badLines.push(l.slice(0, 300));
    }
  });
  assert.deepEqual(badLines.slice(0, 5), [], `crash lines in envoy.log (${badLines.length})`);
  for (const [user, cookie] of Object.entries(sess)) {
    for (const p of ['/api/orders', '/api/profile', '/auth/user']) {
      const r = await rawRequest('GET', `${APP}${p}`, { headers: { accept: 'application/json', cookie } });
      assert.equal(r.status, 200, `${user} ${p} after the load: ${r.status} ${r.text.slice(0, 200)}`);
    }
  }
  const post = await rawRequest('POST', `${APP}/api/orders`, {
    headers: { accept: 'application/json', ...X, cookie: sess.alice }, body: '{"item":"after"}',
  });
  assert.equal(post.status, 201, `alice can still order: ${post.status} ${post.text}`);
  const b = new Browser({ name: 'load-after' });
  browsers.push(b);
  await loginOk(b, 'bob');
  const o = await b.fetchApi('GET', '/api/orders');
  assert.equal(o.status, 200, 'a new login works after the load');
});
