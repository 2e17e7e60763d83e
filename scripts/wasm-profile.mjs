#!/usr/bin/env node
// The built module's fast path on its own, in Node's V8 (no Envoy): which host calls and calls
// into the VM one request makes, and (`--instructions`) which of the filter's functions its
// instructions are spent in.
//
//   node scripts/wasm-profile.mjs [--requests N] [--wasm PATH] [--fixture FILE]
//   node scripts/wasm-profile.mjs --instructions       (`make wasm-profile`; valgrind, ~3 min)
//
// The fixture is the native core bench's signed-in session (`bffgate::testkit::fast_path`,
// written by `BFFGATE_WASM_FIXTURE=FILE cargo test --test fast_path_fixture`, which first checks
// natively that the request takes the fast path): the plugin configuration and its secrets,
// shared data as the filter's store wrote it, the request's headers and route, the clock. This
// script plays Envoy's side of the ABI over JavaScript maps (every proxy-wasm and WASI import the
// module has) and drives the lifecycle Envoy drives per request: context create, request
// headers, response headers, done, delete; the root's tick every 400 requests (20 ms at 20 000
// requests/s). Every checked request must come out as Envoy would forward it: `authorization:
// Bearer <the audience's token>`, the site's cookie kept and bffgate's gone, Continue; and the
// fast path counted (`bffgate_fast_path_taken`). Otherwise it fails.
//
// What it prints is exact (counted, not timed): the host calls of one fast-path request by name,
// the calls into the VM (callbacks, and allocations for data the host hands over). The time per
// request it prints includes this script's JavaScript host, so it is only a rough figure.
// `--instructions` runs it twice under callgrind (node --perf-basic-prof names V8's compiled
// functions) and prints, per request, the instructions and simulated L1 instruction-cache misses
// of each of the module's functions: the difference of a long and a short run, so start-up
// (configuration, slot table) cancels out. Envoy's side of each host call is not here:
// `make bench` and `make bench-instr` measure the filter inside Envoy.

import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const DEFAULT_WASM = path.join(ROOT, 'target/wasm32-wasip1/release/bffgate.wasm');

const OK = 0;
const NOT_FOUND = 1;
const CAS_MISMATCH = 8;
const EMPTY = 7;
// proxy-wasm map and buffer types
const REQUEST_HEADERS = 0;
const RESPONSE_HEADERS = 2;
const PLUGIN_CONFIGURATION = 7;

/** The host: Envoy's side of the ABI, over JavaScript maps. */
class Host {
  constructor(fixture) {
    this.fx = fixture;
    this.shared = new Map(Object.entries(fixture.shared_data)
      .map(([k, v]) => [k, { value: Buffer.from(v, 'base64url'), cas: 1 }]));
    this.nextCas = 2;
    this.metrics = [];
    this.metricIds = new Map();
    this.headers = { [REQUEST_HEADERS]: [], [RESPONSE_HEADERS]: [] };
    this.calls = new Map();
    this.counting = false;
    this.allocations = 0;
    this.local = null;
    this.nowNs = BigInt(fixture.now_ms) * 1_000_000n;
    this.env = Object.entries(fixture.env).map(([k, v]) => Buffer.from(`${k}=${v}\0`));
    this.instance = null;
  }

  mem() { return new DataView(this.instance.exports.memory.buffer); }
  bytes(ptr, len) { return Buffer.from(this.instance.exports.memory.buffer, ptr, len); }
  str(ptr, len) { return this.bytes(ptr, len).toString('utf8'); }
  /** Hands `buf` to the VM the way Envoy does: allocated by the module, pointer and size out. */
  give(buf, retPtr, retSize) {
    if (this.counting && buf.length) this.allocations += 1;
    const p = buf.length ? this.instance.exports.proxy_on_memory_allocate(buf.length) : 0;
    if (buf.length) new Uint8Array(this.instance.exports.memory.buffer, p, buf.length).set(buf);
    const m = this.mem();
    m.setUint32(retPtr, p, true);
    m.setUint32(retSize, buf.length, true);
    return OK;
  }
  count(name) {
    if (this.counting) this.calls.set(name, (this.calls.get(name) ?? 0) + 1);
  }

  imports() {
    const h = this;
    const wrap = (name, fn) => (...args) => { h.count(name); return fn(...args); };
    const env = {
      proxy_log: (level, p, n) => {
        if (process.env.WASM_PROFILE_LOG) process.stderr.write(`[vm ${level}] ${h.str(p, n)}\n`);
        return OK;
      },
      proxy_set_tick_period_milliseconds: () => OK,
      proxy_get_buffer_bytes: (type, start, max, rp, rs) => {
        if (type !== PLUGIN_CONFIGURATION) return NOT_FOUND;
        return h.give(Buffer.from(h.fx.configuration), rp, rs);
      },
      proxy_set_buffer_bytes: () => OK,
      proxy_set_property: () => OK,
      proxy_get_property: (p, n, rp, rs) => {
        const parts = h.str(p, n).split('\0').filter(Boolean).join('.');
        if (parts === 'xds.route_name') return h.give(Buffer.from(h.fx.route), rp, rs);
        return NOT_FOUND;
      },
      proxy_get_shared_data: (kp, kn, rp, rs, rcas) => {
        const e = h.shared.get(h.str(kp, kn));
        if (!e) return NOT_FOUND;
        h.give(e.value, rp, rs);
        h.mem().setUint32(rcas, e.cas, true);
        return OK;
      },
      proxy_set_shared_data: (kp, kn, vp, vn, cas) => {
        const k = h.str(kp, kn);
        const e = h.shared.get(k);
        if (cas !== 0 && (!e || e.cas !== cas)) return CAS_MISMATCH;
        h.shared.set(k, { value: Buffer.from(h.bytes(vp, vn)), cas: h.nextCas++ });
        return OK;
      },
      proxy_register_shared_queue: (p, n, rid) => { h.mem().setUint32(rid, 1, true); return OK; },
      proxy_resolve_shared_queue: () => NOT_FOUND,
      proxy_enqueue_shared_queue: () => OK,
      proxy_dequeue_shared_queue: () => EMPTY,
      proxy_get_current_time_nanoseconds: (rp) => { h.mem().setBigUint64(rp, h.nowNs, true); return OK; },
      proxy_get_header_map_pairs: (type, rp, rs) => {
        const pairs = h.headers[type] ?? [];
        const kv = pairs.map(([k, v]) => [Buffer.from(k), Buffer.from(v)]);
        const size = 4 + kv.length * 8 + kv.reduce((a, [k, v]) => a + k.length + v.length + 2, 0);
        const b = Buffer.alloc(size);
        b.writeUInt32LE(kv.length, 0);
        let o = 4;
        for (const [k, v] of kv) { b.writeUInt32LE(k.length, o); b.writeUInt32LE(v.length, o + 4); o += 8; }
        for (const [k, v] of kv) { k.copy(b, o); o += k.length + 1; v.copy(b, o); o += v.length + 1; }
        return h.give(b, rp, rs);
      },
      proxy_get_header_map_value: (type, kp, kn, rp, rs) => {
        const k = h.str(kp, kn);
        const hit = (h.headers[type] ?? []).find(([name]) => name === k);
        if (!hit) return NOT_FOUND;
        return h.give(Buffer.from(hit[1]), rp, rs);
      },
      proxy_replace_header_map_value: (type, kp, kn, vp, vn) => {
        const k = h.str(kp, kn);
        const v = h.str(vp, vn);
        const list = h.headers[type];
        const i = list.findIndex(([name]) => name === k);
        if (i >= 0) {
          list[i] = [k, v];
          for (let j = list.length - 1; j > i; j -= 1) if (list[j][0] === k) list.splice(j, 1);
        } else list.push([k, v]);
        return OK;
      },
      proxy_add_header_map_value: (type, kp, kn, vp, vn) => { h.headers[type].push([h.str(kp, kn), h.str(vp, vn)]); return OK; },
      proxy_remove_header_map_value: (type, kp, kn) => {
        const k = h.str(kp, kn);
        h.headers[type] = h.headers[type].filter(([name]) => name !== k);
        return OK;
      },
      proxy_set_header_map_pairs: () => OK,
      proxy_define_metric: (type, p, n, rid) => {
        const name = h.str(p, n);
        let id = h.metricIds.get(name);
        if (id === undefined) {
          id = h.metrics.length;
          h.metrics.push({ name, value: 0n });
          h.metricIds.set(name, id);
        }
        h.mem().setUint32(rid, id, true);
        return OK;
      },
      proxy_increment_metric: (id, d) => { h.metrics[id].value += BigInt(d); return OK; },
      proxy_record_metric: (id, v) => { h.metrics[id].value = BigInt(v); return OK; },
      proxy_get_metric: (id, rp) => { h.mem().setBigUint64(rp, BigInt.asUintN(64, h.metrics[id].value), true); return OK; },
      proxy_http_call: (...a) => { h.mem().setUint32(a[a.length - 1], 1, true); return OK; },
      proxy_send_local_response: (status) => { h.local = status; return OK; },
      proxy_set_effective_context: () => OK,
      proxy_done: () => OK,
      proxy_continue_stream: () => OK,
      proxy_close_stream: () => OK,
      proxy_get_status: () => NOT_FOUND,
      proxy_call_foreign_function: () => NOT_FOUND,
      proxy_grpc_call: () => NOT_FOUND,
      proxy_grpc_stream: () => NOT_FOUND,
      proxy_grpc_send: () => NOT_FOUND,
      proxy_grpc_cancel: () => NOT_FOUND,
      proxy_grpc_close: () => NOT_FOUND,
    };
    const wasi = {
      random_get: (p, n) => { crypto.randomFillSync(new Uint8Array(h.instance.exports.memory.buffer, p, n)); return 0; },
      environ_sizes_get: (rc, rs) => {
        h.mem().setUint32(rc, h.env.length, true);
        h.mem().setUint32(rs, h.env.reduce((a, b) => a + b.length, 0), true);
        return 0;
      },
      environ_get: (rptrs, rbuf) => {
        let o = rbuf;
        h.env.forEach((b, i) => {
          h.mem().setUint32(rptrs + i * 4, o, true);
          new Uint8Array(h.instance.exports.memory.buffer, o, b.length).set(b);
          o += b.length;
        });
        return 0;
      },
      fd_write: (fd, iovs, n, rwritten) => {
        let total = 0;
        for (let i = 0; i < n; i += 1) total += h.mem().getUint32(iovs + i * 8 + 4, true);
        h.mem().setUint32(rwritten, total, true);
        return 0;
      },
      proc_exit: (code) => { throw new Error(`the module exited (${code})`); },
    };
    const counted = (o) => Object.fromEntries(Object.entries(o).map(([k, f]) => [k, wrap(k, f)]));
    return { env: counted(env), wasi_snapshot_preview1: counted(wasi) };
  }
}

/** Writes the fixture with the native test that also checks it (see the header). */
export function writeFixture(file) {
  // With the features `make unit` builds with, so that its build is reused.
  const r = spawnSync('cargo', ['test', '--quiet', '--features', 'cli', '--test', 'fast_path_fixture'], {
    cwd: ROOT, env: { ...process.env, BFFGATE_WASM_FIXTURE: file }, encoding: 'utf8', timeout: 600_000,
  });
  if (r.status !== 0 || !fs.existsSync(file)) {
    throw new Error(`could not write the fixture (cargo test --test fast_path_fixture):\n${r.stdout}${r.stderr}`);
  }
  return file;
}

/**
 * Runs `requests` fast-path requests through the module at `wasm` with `fixture` (a file), and
 * `configuration` laid over the fixture's top-level settings, and returns what one request did: { hostCalls: {name: n}, vmCalls: {callbacks, allocations},
 * taken, missed: {reason: n}, requests, nsPerRequest, forwarded: {authorization, cookie} }.
 */
export function runFastPath({
  wasm = DEFAULT_WASM, fixture, requests = 20000, tick = true, configuration = {},
} = {}) {
  const fx = JSON.parse(fs.readFileSync(fixture, 'utf8'));
  // Top-level settings laid over the fixture's configuration (e.g. `access_log_state`).
  fx.configuration = JSON.stringify({ ...JSON.parse(fx.configuration), ...configuration });
  const host = new Host(fx);
  const instance = new WebAssembly.Instance(new WebAssembly.Module(fs.readFileSync(wasm)), host.imports());
  host.instance = instance;
  const x = instance.exports;
  x._initialize();
  const ROOT_ID = 1;
  x.proxy_on_context_create(ROOT_ID, 0);
  if (!x.proxy_on_vm_start(ROOT_ID, 0)) throw new Error('proxy_on_vm_start refused');
  if (!x.proxy_on_configure(ROOT_ID, Buffer.byteLength(fx.configuration))) {
    throw new Error('proxy_on_configure refused the fixture configuration (WASM_PROFILE_LOG=1 shows why)');
  }
  let callbacks = 0;
  const enter = (f) => (...a) => { if (host.counting) callbacks += 1; return f(...a); };
  const on = {
    create: enter(x.proxy_on_context_create),
    req: enter(x.proxy_on_request_headers),
    resp: enter(x.proxy_on_response_headers),
    done: enter(x.proxy_on_done),
    del: enter(x.proxy_on_delete),
  };
  const wantAuthorization = `Bearer ${fx.token}`;
  const wantCookie = fx.headers.find(([k]) => k === 'cookie')[1].split('; ')
    .filter((c) => !c.startsWith(`${fx.session_cookie}=`)).join('; ');
  let ctx = ROOT_ID + 1;
  let forwarded = null;
  const one = (check) => {
    const id = ctx;
    ctx += 1;
    host.headers[REQUEST_HEADERS] = fx.headers.map(([k, v]) => [k, v]);
    host.headers[RESPONSE_HEADERS] = [[':status', '200'], ['content-type', 'application/json'], ['content-length', '2']];
    host.local = null;
    on.create(id, ROOT_ID);
    const a = on.req(id, host.headers[REQUEST_HEADERS].length, 1);
    if (check) {
      const hd = Object.fromEntries(host.headers[REQUEST_HEADERS]);
      if (a !== 0 || host.local !== null) throw new Error(`request ${id}: not forwarded (action ${a}, local reply ${host.local})`);
      if (hd.authorization !== wantAuthorization) throw new Error(`request ${id}: authorization is not the audience's token`);
      if ((hd.cookie ?? '') !== wantCookie) throw new Error(`request ${id}: cookie forwarded as ${JSON.stringify(hd.cookie)}, want ${JSON.stringify(wantCookie)}`);
      forwarded = { authorization: `Bearer <${fx.token.length} bytes>`, cookie: hd.cookie };
    }
    if (on.resp(id, host.headers[RESPONSE_HEADERS].length, 0) !== 0 && check) throw new Error(`request ${id}: response not continued`);
    on.done(id);
    on.del(id);
  };
  const metric = (name) => Number(host.metrics[host.metricIds.get(name)]?.value ?? 0n);

  // Warm-up: the VM's memo of verified cookies and its record cache fill on the first request.
  for (let i = 0; i < 1000; i += 1) { one(true); if (tick && i % 400 === 399) x.proxy_on_tick(ROOT_ID); }
  x.proxy_on_tick(ROOT_ID);
  const taken0 = metric('bffgate_fast_path_taken');
  host.counting = true;
  host.calls.clear();
  one(true);
  host.counting = false;
  const hostCalls = Object.fromEntries([...host.calls.entries()].sort((a, b) => b[1] - a[1]));
  const vmCalls = { callbacks, allocations: host.allocations };

  const t0 = process.hrtime.bigint();
  for (let i = 0; i < requests; i += 1) {
    one(i % 1000 === 0);
    if (tick && i % 400 === 399) x.proxy_on_tick(ROOT_ID);
  }
  const t1 = process.hrtime.bigint();
  x.proxy_on_tick(ROOT_ID);
  const missed = Object.fromEntries(host.metrics
    .filter((m) => m.name.startsWith('bffgate_fast_path_missed_') && m.value > 0n)
    .map((m) => [m.name.slice('bffgate_fast_path_missed_'.length), Number(m.value)]));
  return {
    hostCalls,
    vmCalls,
    taken: metric('bffgate_fast_path_taken') - taken0,
    missed,
    requests: requests + 1,
    nsPerRequest: Number(t1 - t0) / requests,
    forwarded,
  };
}

// ---------------------------------------------------------------------------------------------
// --instructions: callgrind over two runs, per-function instructions of the module per request.

function callgrindRun(o, fixture, requests, dir) {
  const out = path.join(dir, `cg-${requests}.out`);
  const r = spawnSync('valgrind', ['--tool=callgrind', '--smc-check=all-non-file', '--dump-instr=yes', '--cache-sim=yes',
    `--callgrind-out-file=${out}`, process.execPath, '--no-liftoff', '--perf-basic-prof',
    fileURLToPath(import.meta.url), '--fixture', fixture, '--wasm', o.wasm, '--requests', String(requests), '--no-tick'],
  { cwd: dir, encoding: 'utf8', timeout: 1_200_000 });
  if (r.status !== 0) throw new Error(`valgrind run failed: ${r.stderr.slice(-2000)}`);
  const pid = fs.readFileSync(out, 'utf8').match(/^pid: (\d+)/m)[1];
  return { out, map: `/tmp/perf-${pid}.map` };
}

/** Per V8-compiled function: [instructions, I1 misses] over a callgrind run. */
function perFunction({ out, map }) {
  const syms = fs.readFileSync(map, 'utf8').split('\n').filter(Boolean).map((l) => {
    const [a, s, ...name] = l.split(' ');
    return [parseInt(a, 16), parseInt(s, 16), name.join(' ')];
  }).sort((p, q) => p[0] - q[0]);
  const find = (a) => {
    let lo = 0;
    let hi = syms.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (syms[mid][0] <= a) lo = mid + 1; else hi = mid - 1;
    }
    const s = syms[hi];
    return s && a < s[0] + s[1] ? s[2] : null;
  };
  const agg = new Map();
  let events = null;
  let last = 0;
  let skip = false;
  for (const line of fs.readFileSync(out, 'utf8').split('\n')) {
    if (line.startsWith('events:')) { events = line.split(' ').slice(1); continue; }
    if (line.startsWith('calls=')) { skip = true; continue; }
    const c = line[0];
    if (!c || !'0123456789+-*'.includes(c)) { skip = false; continue; }
    const parts = line.split(' ');
    const p = parts[0];
    if (p.startsWith('0x')) last = parseInt(p, 16);
    else if (p[0] === '+') last += parseInt(p.slice(1), 10);
    else if (p[0] === '-') last -= parseInt(p.slice(1), 10);
    if (skip) { skip = false; continue; }
    const name = find(last);
    if (!name) continue;
    const ir = Number(parts[2] ?? 0);
    const i1 = Number(parts[2 + events.indexOf('I1mr')] ?? 0) || 0;
    const k = name.replace(/17h[0-9a-f]{16}E/, '').replace(/-\d+-turbofan$/, '').replace(/^JS:/, '');
    const v = agg.get(k) ?? [0, 0];
    v[0] += ir;
    v[1] += i1;
    agg.set(k, v);
  }
  return agg;
}

function instructions(o, fixture) {
  if (spawnSync('valgrind', ['--version']).status !== 0) throw new Error('--instructions needs valgrind');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wasm-profile-'));
  const [n1, n2] = [1000, 5000];
  const a = perFunction(callgrindRun(o, fixture, n1, dir));
  const b = perFunction(callgrindRun(o, fixture, n2, dir));
  // The module's functions (named from its name section): not this script's JavaScript, not
  // Node's built-ins, not V8's stubs.
  const ours = (k) => !/^[*~^]|file:|node:|^(Builtin|Stub|RegExp|Function|Eval|Script):/.test(k) && !k.includes(' ');
  const rows = [...new Set([...a.keys(), ...b.keys()])].filter(ours).map((k) => {
    const [x1, y1] = a.get(k) ?? [0, 0];
    const [x2, y2] = b.get(k) ?? [0, 0];
    return [k, (x2 - x1) / (n2 - n1), (y2 - y1) / (n2 - n1)];
  }).filter((r) => r[1] > 0.5).sort((p, q) => q[1] - p[1]);
  const total = rows.reduce((s, r) => s + r[1], 0);
  const misses = rows.reduce((s, r) => s + r[2], 0);
  console.log(`  the module's instructions per fast-path request (callgrind, runs of ${n1} and ${n2}): ${total.toFixed(0)}, simulated L1i misses ${misses.toFixed(0)}`);
  const groups = [
    ['allocator', /^(dlmalloc|dlfree|malloc|free|realloc|calloc|__rust_|_RNvCs\w+___rust|_RNvCs\w+___rdl|.*___rdl_|.*___rust_)/],
    ['UTF-8 checks', /from_utf8|run_utf8_validation/],
    ['proxy-wasm SDK', /proxy_wasm|^proxy_on_/],
    ['bffgate', /bffgate/],
  ];
  const by = new Map();
  for (const r of rows) {
    const g = (groups.find(([, re]) => re.test(r[0])) ?? ['other (core, hashbrown, memcpy...)'])[0];
    by.set(g, (by.get(g) ?? 0) + r[1]);
  }
  console.log(`  by kind: ${[...by.entries()].sort((p, q) => q[1] - p[1]).map(([g, n]) => `${g} ${n.toFixed(0)} (${((100 * n) / total).toFixed(0)} %)`).join(', ')}`);
  for (const [k, ir, i1] of rows.slice(0, 40)) {
    console.log(`    ${ir.toFixed(0).padStart(6)} instr ${i1.toFixed(1).padStart(6)} L1i misses  ${k.slice(0, 140)}`);
  }
  fs.rmSync(dir, { recursive: true, force: true });
}

function options() {
  const { values: v } = parseArgs({
    options: {
      requests: { type: 'string', default: '20000' },
      wasm: { type: 'string' },
      fixture: { type: 'string' },
      instructions: { type: 'boolean', default: false },
      'no-tick': { type: 'boolean', default: false },
    },
  });
  const requests = Number(v.requests);
  if (!Number.isInteger(requests) || requests < 100 || requests > 1_000_000) {
    throw new Error('--requests: an integer in 100..1000000');
  }
  return {
    requests,
    wasm: v.wasm ? path.resolve(v.wasm) : DEFAULT_WASM,
    fixture: v.fixture ? path.resolve(v.fixture) : null,
    instructions: v.instructions,
    tick: !v['no-tick'],
  };
}

async function main() {
  const o = options();
  const fixture = o.fixture ?? writeFixture(path.join(ROOT, 'target/wasm-fast-path-fixture.json'));
  const r = runFastPath({ wasm: o.wasm, fixture, requests: o.requests, tick: o.tick });
  if (r.taken < 0.999 * r.requests) {
    throw new Error(`fast path taken ${r.taken} times for ${r.requests} requests (missed: ${JSON.stringify(r.missed)})`);
  }
  const n = Object.values(r.hostCalls).reduce((s, v) => s + v, 0);
  console.log(`wasm-profile: ${path.relative(ROOT, o.wasm)} (${fs.statSync(o.wasm).size} bytes), Node ${process.version} (V8 ${process.versions.v8})`);
  console.log(`  fast path taken ${r.taken} of ${r.requests} requests${Object.keys(r.missed).length ? ` (left it: ${Object.entries(r.missed).map(([k, v]) => `${k} ${v}`).join(', ')})` : ''}; forwarded: authorization ${r.forwarded.authorization}, cookie ${JSON.stringify(r.forwarded.cookie)}`);
  console.log(`  calls into the VM per request: ${r.vmCalls.callbacks + r.vmCalls.allocations} (${r.vmCalls.callbacks} callbacks, ${r.vmCalls.allocations} allocations for data handed over)`);
  console.log(`  host calls per request: ${n} (${Object.entries(r.hostCalls).map(([k, v]) => `${k} ${v}`).join(', ')})`);
  console.log(`  time per request, VM and this script's host together: ${(r.nsPerRequest / 1000).toFixed(2)} µs (rough)`);
  if (o.instructions) instructions(o, fixture);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  main().catch((e) => {
    console.error(`wasm-profile: ${e.message}`);
    process.exit(1);
  });
}
