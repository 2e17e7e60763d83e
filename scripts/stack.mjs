#!/usr/bin/env node
// Starts, watches and stops the bffgate demo stack: the identity provider
// (demo/idp.mjs), the demo APIs (demo/api.mjs) and Envoy with the bffgate filter.
//
// Library:   import { startStack } from './scripts/stack.mjs';
//            const stack = await startStack({ env: { BFFGATE_ACCESS_TOKEN_TTL: '5' } });
//            ...; await stack.stop();
// CLI:       node scripts/stack.mjs run                       (foreground until SIGINT/SIGTERM)
//            node scripts/stack.mjs start [--pidfile FILE]    (background; returns when ready)
//            node scripts/stack.mjs stop  [--pidfile FILE]
//            options: --config FILE --concurrency N --log-level L --component-log-level C
//                     --base-id N --log-dir DIR
//
// No npm dependencies: node:* only. Children never outlive the stack: they are
// stopped on stop(), on process exit, on SIGINT/SIGTERM/SIGHUP and on uncaught
// errors, and (where util-linux `setpriv` exists) get a parent-death signal so
// that even a SIGKILLed parent leaves no orphans.

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

export const PORTS = Object.freeze({
  envoy: 8443,
  admin: 9901,
  idp: 9000,
  orders: 9101,
  profile: 9102,
  public: 9103,
});

export const URLS = Object.freeze({
  app: 'https://localhost:8443',
  idp: 'http://localhost:9000',
  admin: 'http://127.0.0.1:9901',
  orders: 'http://127.0.0.1:9101',
  profile: 'http://127.0.0.1:9102',
  public: 'http://127.0.0.1:9103',
});

export const DEMO_USERS = Object.freeze([
  { login: 'alice', password: 'alice', scopes: 'orders:read orders:write profile' },
  { login: 'bob', password: 'bob', scopes: 'orders:read profile' },
]);

export const TLS_CERT = path.join(ROOT, '.run/tls/cert.pem');
export const SECRETS_FILE = path.join(ROOT, '.run/secrets.env');
const SECRET_KEYS = ['BFFGATE_CLIENT_SECRET', 'BFFGATE_COOKIE_KEYS', 'BFFGATE_ADMIN_TOKEN'];

const STOP_GRACE_MS = 5000;
const READY_TIMEOUT_MS = 60000;

// ---------------------------------------------------------------------------
// small helpers

/** Parses shell-style KEY=value lines (comments and blank lines ignored). */
export function readSecrets(file = SECRETS_FILE) {
  let text;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read ${path.relative(ROOT, file)} (${err.code}): run \`make setup\` first`);
  }
  const out = {};
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (!m) continue;
    let v = m[2];
    if ((v.startsWith('"') && v.endsWith('"')) || (v.startsWith("'") && v.endsWith("'"))) v = v.slice(1, -1);
    out[m[1]] = v;
  }
  for (const k of SECRET_KEYS) {
    if (!out[k]) throw new Error(`${path.relative(ROOT, file)} lacks ${k}: delete it and run \`make setup\``);
  }
  return out;
}

/** Path of the real Envoy binary inside .venv (not the python wrapper). */
export function findEnvoy() {
  if (process.env.BFFGATE_ENVOY_BIN) return process.env.BFFGATE_ENVOY_BIN;
  const lib = path.join(ROOT, '.venv/lib');
  let pys = [];
  try {
    pys = fs.readdirSync(lib).filter((d) => d.startsWith('python'));
  } catch {
    // fall through
  }
  for (const py of pys) {
    const p = path.join(lib, py, 'site-packages/envoy/_bin/envoy');
    if (fs.existsSync(p)) return p;
  }
  throw new Error('Envoy binary not found under .venv (…/site-packages/envoy/_bin/envoy): run `make setup`');
}

export function tail(file, lines = 40) {
  try {
    const text = fs.readFileSync(file, 'utf8');
    return text.split('\n').slice(-lines - 1).join('\n').trimEnd();
  } catch {
    return '(no log)';
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** One GET; resolves { status, body } or rejects. Never follows redirects. */
export function get(url, { ca, timeoutMs = 2000 } = {}) {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const mod = u.protocol === 'https:' ? https : http;
    const opts = { method: 'GET', timeout: timeoutMs, agent: false };
    if (u.protocol === 'https:') {
      opts.ca = ca;
      opts.servername = u.hostname;
    }
    const req = mod.request(u, opts, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`timeout after ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end();
  });
}

/** Resolves true when nothing listens on 127.0.0.1:port (we can bind it). */
export function portFree(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen({ port, host: '127.0.0.1', exclusive: true }, () => srv.close(() => resolve(true)));
  });
}

async function assertPortsFree(names) {
  const busy = [];
  for (const n of names) if (!(await portFree(PORTS[n]))) busy.push(`${n} (127.0.0.1:${PORTS[n]})`);
  if (busy.length) {
    throw new Error(
      `port(s) already in use: ${busy.join(', ')}. A stale stack is probably running: ` +
        '`node scripts/stack.mjs stop`, or find it with `ss -ltnp` and kill it by pid.',
    );
  }
}

let setprivOk;
/** Whether `setpriv --pdeathsig` works here (children then die with their parent). */
export function hasSetpriv() {
  if (setprivOk === undefined) {
    const r = spawnSync('setpriv', ['--pdeathsig', 'TERM', '--', 'true'], { stdio: 'ignore' });
    setprivOk = r.status === 0;
  }
  return setprivOk;
}

// ---------------------------------------------------------------------------
// process registry: every child of every stack in this process, for cleanup

const live = new Set(); // of ChildProcess
let hooksInstalled = false;

function killAllSync(signal = 'SIGKILL') {
  for (const c of live) {
    try {
      c.kill(signal);
    } catch {
      // already gone
    }
  }
}

export function installHooks() {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', () => killAllSync('SIGKILL'));
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, function onSignal() {
      // The CLI installs its own graceful handler; as a library we only make
      // sure no child survives, then die as the signal would have made us die.
      if (process.listenerCount(sig) > 1) return;
      killAllSync('SIGTERM');
      setTimeout(() => {
        killAllSync('SIGKILL');
        process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1));
      }, 300).unref();
    });
  }
  // No 'uncaughtException' listener: it would change how test runners report
  // errors. Node emits 'exit' on an uncaught error too, which kills the children.
}

// ---------------------------------------------------------------------------
// one managed child

export class Proc {
  constructor(name, { cmd, args, env, logFile }) {
    Object.assign(this, { name, cmd, args, env, logFile });
    this.child = null;
    this.exited = null; // { code, signal } once exited
    this.expectedExit = false;
    this.onUnexpectedExit = null;
  }

  start() {
    fs.mkdirSync(path.dirname(this.logFile), { recursive: true });
    fs.appendFileSync(this.logFile, `\n=== ${new Date().toISOString()} stack: starting ${this.name} ===\n`);
    const fd = fs.openSync(this.logFile, 'a');
    let cmd = this.cmd;
    let args = this.args;
    // With a parent-death signal (the child gets SIGTERM if this process dies,
    // even by SIGKILL), children get their own process group: a Ctrl-C then
    // reaches only us, and we stop them in order (Envoy first). Without it they
    // stay in our group, so a terminal's Ctrl-C still reaches them.
    const pdeath = hasSetpriv();
    if (pdeath) {
      args = ['--pdeathsig', 'TERM', '--', cmd, ...args];
      cmd = 'setpriv';
    }
    try {
      this.child = spawn(cmd, args, { cwd: ROOT, env: this.env, stdio: ['ignore', fd, fd], detached: pdeath });
    } finally {
      fs.closeSync(fd);
    }
    this.exited = null;
    this.expectedExit = false;
    const child = this.child;
    live.add(child);
    this.exitPromise = new Promise((resolve) => {
      const done = (code, signal) => {
        live.delete(child);
        this.exited = { code, signal };
        if (!this.expectedExit && this.onUnexpectedExit) this.onUnexpectedExit(this, code, signal);
        resolve(this.exited);
      };
      child.once('exit', done);
      child.once('error', (err) => {
        fs.appendFileSync(this.logFile, `stack: cannot start ${this.name}: ${err.message}\n`);
        done(null, null);
      });
    });
    return this;
  }

  get pid() {
    return this.child && !this.exited ? this.child.pid : undefined;
  }

  get running() {
    return Boolean(this.child) && !this.exited;
  }

  async stop(graceMs = STOP_GRACE_MS) {
    if (!this.running) return;
    this.expectedExit = true;
    this.child.kill('SIGTERM');
    let t;
    const timer = new Promise((r) => { t = setTimeout(() => r('timeout'), graceMs); });
    const res = await Promise.race([this.exitPromise, timer]);
    clearTimeout(t);
    if (res === 'timeout') {
      fs.appendFileSync(this.logFile, `stack: ${this.name} ignored SIGTERM for ${graceMs} ms, sending SIGKILL\n`);
      this.child.kill('SIGKILL');
      await this.exitPromise;
    }
  }

  describeExit() {
    if (!this.exited) return 'running';
    return this.exited.signal ? `killed by ${this.exited.signal}` : `exited with code ${this.exited.code}`;
  }
}

/** Polls probe() until it resolves truthy; fails fast if proc exits. */
export async function waitFor(proc, what, probe, deadline) {
  let lastErr = 'not tried';
  while (Date.now() < deadline) {
    if (proc.exited) {
      throw new Error(
        `${proc.name} ${proc.describeExit()} before it was ready (${what}).\n` +
          `--- tail of ${path.relative(ROOT, proc.logFile)} ---\n${tail(proc.logFile)}`,
      );
    }
    try {
      const r = await probe();
      if (r === true) return;
      lastErr = r;
    } catch (err) {
      lastErr = err.code || err.message;
    }
    await sleep(150);
  }
  throw new Error(
    `${proc.name} not ready within ${READY_TIMEOUT_MS / 1000} s (${what}; last: ${lastErr}).\n` +
      `--- tail of ${path.relative(ROOT, proc.logFile)} ---\n${tail(proc.logFile)}`,
  );
}

export const expect200 = (url, opts) => async () => {
  const r = await get(url, opts);
  return r.status === 200 ? true : `HTTP ${r.status}`;
};

// ---------------------------------------------------------------------------
// the stack

/**
 * Starts IdP, APIs and Envoy (in that order) and waits until each is ready.
 * @param {object} [opts]
 * @param {number} [opts.concurrency=2]        Envoy --concurrency (worker threads)
 * @param {string} [opts.envoyLogLevel='info'] Envoy -l
 * @param {string} [opts.componentLogLevel]    Envoy --component-log-level, e.g. 'wasm:debug'
 * @param {object} [opts.env]                  extra environment for the IdP (e.g. BFFGATE_ACCESS_TOKEN_TTL)
 * @param {string} [opts.envoyConfig='envoy/envoy.yaml'] relative to the repo root or absolute
 * @param {string} [opts.logDir='.run/logs']
 * @param {number} [opts.baseId=0]             Envoy --base-id
 * @param {boolean} [opts.hotRestart=false]    false passes --disable-hot-restart
 * @param {string} [opts.idpScript='demo/idp.mjs']
 * @param {string} [opts.apiScript='demo/api.mjs']
 * @param {number} [opts.timeoutMs=60000]      overall readiness timeout
 * @param {boolean} [opts.envoy=true]          false: only the IdP and the APIs (scripts/fleet.mjs
 *                                             runs its own Envoys)
 */
export async function startStack(opts = {}) {
  const o = {
    concurrency: 2,
    envoyLogLevel: 'info',
    componentLogLevel: undefined,
    env: {},
    envoyConfig: 'envoy/envoy.yaml',
    logDir: '.run/logs',
    baseId: 0,
    hotRestart: false,
    idpScript: 'demo/idp.mjs',
    apiScript: 'demo/api.mjs',
    timeoutMs: READY_TIMEOUT_MS,
    envoy: true,
    ...opts,
  };
  installHooks();

  const logDir = path.resolve(ROOT, o.logDir);
  fs.mkdirSync(logDir, { recursive: true });
  const logs = {
    envoy: path.join(logDir, 'envoy.log'),
    idp: path.join(logDir, 'idp.log'),
    api: path.join(logDir, 'api.log'),
  };
  const envoyConfig = path.resolve(ROOT, o.envoyConfig);
  for (const [what, f, hint] of [
    ...(o.envoy ? [['Envoy config', envoyConfig, 'run `make config`']] : []),
    ['TLS certificate', TLS_CERT, 'run `make setup`'],
    ['IdP', path.resolve(ROOT, o.idpScript), 'demo files missing'],
    ['demo APIs', path.resolve(ROOT, o.apiScript), 'demo files missing'],
  ]) {
    if (!fs.existsSync(f)) throw new Error(`${what} not found: ${path.relative(ROOT, f)} (${hint})`);
  }
  const secrets = readSecrets();
  const envoyBin = findEnvoy();
  const ca = fs.readFileSync(TLS_CERT);

  // Children inherit our environment minus any secret; each gets only what it needs.
  const baseEnv = { ...process.env };
  for (const k of SECRET_KEYS) delete baseEnv[k];
  let idpEnv = { ...o.env };

  const makeIdp = () =>
    new Proc('idp', {
      cmd: process.execPath,
      args: [o.idpScript],
      env: { ...baseEnv, ...idpEnv, BFFGATE_CLIENT_SECRET: secrets.BFFGATE_CLIENT_SECRET },
      logFile: logs.idp,
    });
  const makeApi = () =>
    new Proc('api', { cmd: process.execPath, args: [o.apiScript], env: { ...baseEnv }, logFile: logs.api });
  const envoyArgs = [
    '-c', envoyConfig,
    '--base-id', String(o.baseId),
    // The stack never hot-restarts: without it Envoy uses no shared memory
    // (/dev/shm is shared even across network namespaces) and no domain socket,
    // so parallel or stale Envoys cannot clash through --base-id.
    ...(o.hotRestart ? [] : ['--disable-hot-restart']),
    '--concurrency', String(o.concurrency),
    '-l', o.envoyLogLevel,
    ...(o.componentLogLevel ? ['--component-log-level', o.componentLogLevel] : []),
  ];
  const makeEnvoy = () =>
    new Proc('envoy', {
      cmd: envoyBin,
      args: envoyArgs,
      env: { ...baseEnv, ...secrets },
      logFile: logs.envoy,
    });

  const procs = { idp: null, api: null, envoy: null };
  let stopping = false;
  const onUnexpectedExit = (p) => {
    const msg = `stack: ${p.name} ${p.describeExit()} unexpectedly (see ${path.relative(ROOT, p.logFile)})`;
    if (!stopping) {
      console.error(msg);
      handle.unexpectedExits.push({ name: p.name, ...p.exited });
      if (handle.onUnexpectedExit) handle.onUnexpectedExit(p.name, p.exited);
    }
  };

  const readyIdp = (p, deadline) =>
    waitFor(p, `GET ${URLS.idp}/.well-known/openid-configuration`,
      expect200(`http://127.0.0.1:${PORTS.idp}/.well-known/openid-configuration`), deadline);
  const readyApi = async (p, deadline) => {
    for (const n of ['orders', 'profile', 'public']) {
      await waitFor(p, `GET ${URLS[n]}/__stats`, expect200(`${URLS[n]}/__stats`), deadline);
    }
  };
  const readyEnvoy = async (p, deadline) => {
    await waitFor(p, `GET ${URLS.admin}/ready`, expect200(`${URLS.admin}/ready`), deadline);
    await waitFor(p, `GET ${URLS.app}/`, expect200(`${URLS.app}/`, { ca }), deadline);
  };

  async function startOne(name, make, ready, ports) {
    stopping = false;
    await assertPortsFree(ports);
    const p = make();
    p.onUnexpectedExit = onUnexpectedExit;
    procs[name] = p;
    p.start();
    await ready(p, Date.now() + o.timeoutMs);
    return p;
  }

  const handle = {
    logs,
    urls: URLS,
    ports: PORTS,
    users: DEMO_USERS,
    ca,
    envoyBin,
    unexpectedExits: [],
    /** set to (name, {code, signal}) => void to hear of a child dying by itself */
    onUnexpectedExit: null,
    get envoyPid() { return procs.envoy?.pid; },
    get idpPid() { return procs.idp?.pid; },
    get apiPid() { return procs.api?.pid; },
    /** Stops everything (Envoy first, then APIs and IdP). Idempotent. */
    async stop() {
      stopping = true;
      await procs.envoy?.stop();
      await Promise.all([procs.api?.stop(), procs.idp?.stop()]);
    },
    async stopIdp() { await procs.idp?.stop(); },
    /** (Re)starts the IdP; `env` is merged over startStack's opts.env and kept for later restarts. */
    async startIdp(env = {}) {
      await procs.idp?.stop();
      idpEnv = { ...idpEnv, ...env };
      await startOne('idp', makeIdp, readyIdp, ['idp']);
    },
    async stopApi() { await procs.api?.stop(); },
    async startApi() {
      await procs.api?.stop();
      await startOne('api', makeApi, readyApi, ['orders', 'profile', 'public']);
    },
    /** Envoy restart loses every session (shared data is per process). */
    async stopEnvoy() { await procs.envoy?.stop(); },
    async startEnvoy() {
      await procs.envoy?.stop();
      await startOne('envoy', makeEnvoy, readyEnvoy, ['envoy', 'admin']);
    },
  };

  try {
    await assertPortsFree(['idp', 'orders', 'profile', 'public', ...(o.envoy ? ['envoy', 'admin'] : [])]);
    const deadline = Date.now() + o.timeoutMs;
    // IdP and APIs start in parallel; Envoy's readiness probe goes through to the page server.
    procs.idp = makeIdp();
    procs.api = makeApi();
    for (const p of [procs.idp, procs.api]) {
      p.onUnexpectedExit = onUnexpectedExit;
      p.start();
    }
    await Promise.all([readyIdp(procs.idp, deadline), readyApi(procs.api, deadline)]);
    if (o.envoy) {
      procs.envoy = makeEnvoy();
      procs.envoy.onUnexpectedExit = onUnexpectedExit;
      procs.envoy.start();
      await readyEnvoy(procs.envoy, deadline);
    }
  } catch (err) {
    await handle.stop();
    throw err;
  }
  return handle;
}

// ---------------------------------------------------------------------------
// CLI

/** `cmd --flag value --flag=value ...` -> { cmd, flags }; throws on a stray or valueless argument. */
export function parseArgs(argv) {
  const [cmd, ...rest] = argv;
  const flags = {};
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument: ${a}`);
    const eq = a.indexOf('=');
    if (eq > 0) flags[a.slice(2, eq)] = a.slice(eq + 1);
    else if (rest[i + 1] === undefined) throw new Error(`${a} needs a value`);
    else flags[a.slice(2)] = rest[++i];
  }
  return { cmd, flags };
}

/**
 * The command line of a script that runs a set of processes (this one, scripts/fleet.mjs):
 *   run                 foreground until SIGINT/SIGTERM/SIGHUP (exit 0), or exit 1 when it
 *                       fails to start or a child dies by itself
 *   start [--pidfile F] `run` in the background, logging to `logFile`; returns (exit 0) once the
 *                       banner's first line is logged and the app answers, exit 1 otherwise
 *   stop  [--pidfile F] SIGTERM to the pid in the pidfile, SIGKILL after `stopWaitMs`
 *   ...plus `commands` (name -> (flags) => void | Promise).
 * Messages start with `${name}: `. Bad arguments print `usage` and exit 2; an error thrown by a
 * command prints `${name}: message` and exits 1.
 * @param {object} c
 * @param {string} c.name                     'stack' | 'fleet': message prefix, default pidfile .run/<name>.pid
 * @param {string} c.script                   the script's import.meta.url: runCli does nothing
 *                                            unless it is the process's main script; `start`
 *                                            re-runs it with `run`
 * @param {string} c.usage
 * @param {(opts: object) => Promise<object>} c.start  starts everything; the handle has stop(),
 *                                            logs and an onUnexpectedExit slot (startStack's shape)
 * @param {(flags: object) => object} c.optsFromFlags
 * @param {() => string} c.banner             printed once ready; its last line is the Ctrl-C hint
 * @param {string} c.logFile                  `start`'s log (the background `run`'s output)
 * @param {(handle, child: string) => string} [c.logOf]  log file of a child that died
 * @param {number} [c.stopWaitMs]
 * @param {object} [c.commands]
 * @param {string[]} [c.argv=process.argv.slice(2)]
 */
export async function runCli({
  name, script, usage, start, optsFromFlags, banner, logFile, logOf = (h, child) => h.logs[child],
  stopWaitMs = 3 * STOP_GRACE_MS, commands = {}, argv = process.argv.slice(2),
}) {
  const file = fileURLToPath(script);
  if (!process.argv[1] || path.resolve(process.argv[1]) !== file) return;
  const defaultPidfile = (flags) => path.resolve(ROOT, flags.pidfile || `.run/${name}.pid`);
  const rel = (p) => path.relative(ROOT, p);
  const stopHint = `node ${rel(file)} stop`;

  async function cliRun(flags) {
    let handle;
    let stopping = null;
    const shutdown = (code) => {
      if (!stopping) {
        stopping = (async () => {
          console.log(`${name}: stopping…`);
          if (handle) await handle.stop();
          if (flags.pidfile) fs.rmSync(path.resolve(ROOT, flags.pidfile), { force: true });
          console.log(`${name}: stopped`);
          process.exit(code);
        })();
      }
      return stopping;
    };
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => shutdown(0));
    try {
      handle = await start(optsFromFlags(flags));
    } catch (err) {
      console.error(`${name}: failed to start: ${err.message}`);
      process.exit(1);
    }
    handle.onUnexpectedExit = (child) => {
      // A signal meant for the whole process group may reach a child first: give
      // our own signal handler a moment before calling this a crash.
      setTimeout(() => {
        if (stopping) return;
        console.error(`${name}: ${child} died; stopping the ${name}. Tail of its log:\n${tail(logOf(handle, child))}`);
        shutdown(1);
      }, 300);
    };
    console.log(banner());
    // Keep the event loop alive until a signal arrives.
    setInterval(() => {}, 1 << 30);
  }

  async function cliStart(flags) {
    const pidfile = defaultPidfile(flags);
    try {
      const old = Number(fs.readFileSync(pidfile, 'utf8').trim());
      if (old) {
        process.kill(old, 0);
        console.error(`${name}: already running (pid ${old}, ${rel(pidfile)}); stop it with: ${stopHint}`);
        process.exit(1);
      }
    } catch {
      // no pidfile, or its process is gone: start
    }
    const log = path.resolve(ROOT, logFile);
    fs.mkdirSync(path.dirname(log), { recursive: true });
    const fd = fs.openSync(log, 'a');
    const startAt = fs.fstatSync(fd).size;
    const args = [file, 'run', '--pidfile', pidfile];
    for (const [k, v] of Object.entries(flags)) if (k !== 'pidfile') args.push(`--${k}`, v);
    const child = spawn(process.execPath, args, { cwd: ROOT, detached: true, stdio: ['ignore', fd, fd] });
    fs.closeSync(fd);
    fs.writeFileSync(pidfile, `${child.pid}\n`);
    let exited = null;
    child.once('exit', (code, signal) => { exited = { code, signal }; });
    // Only this run's output counts (the log is appended to); startAt is a byte offset.
    const since = () => fs.readFileSync(log).subarray(startAt).toString('utf8');
    const readyLine = banner().split('\n')[0];
    const ca = fs.existsSync(TLS_CERT) ? fs.readFileSync(TLS_CERT) : undefined;
    const deadline = Date.now() + READY_TIMEOUT_MS + 10000;
    while (Date.now() < deadline) {
      if (exited) {
        fs.rmSync(pidfile, { force: true });
        const text = since();
        const at = text.lastIndexOf(`${name}: failed to start`);
        const msg = (at >= 0 ? text.slice(at) : text).split('\n').slice(0, 80).join('\n').trimEnd();
        console.error(`${msg}\n(see ${rel(log)})`);
        process.exit(1);
      }
      if (since().includes(readyLine)) {
        try {
          if ((await get(`${URLS.app}/`, { ca })).status === 200) {
            child.unref();
            console.log(`${name}: running in the background, pid ${child.pid} (${rel(pidfile)})`);
            console.log(banner().split('\n').slice(0, -1).join('\n'));
            console.log(`Stop it with: ${stopHint}`);
            process.exit(0);
          }
        } catch {
          // not yet
        }
      }
      await sleep(200);
    }
    console.error(`${name}: not ready in time; stopping it`);
    process.kill(child.pid, 'SIGTERM');
    process.exit(1);
  }

  async function cliStop(flags) {
    const pidfile = defaultPidfile(flags);
    let pid;
    try {
      pid = Number(fs.readFileSync(pidfile, 'utf8').trim());
    } catch {
      console.log(`${name}: no pidfile ${rel(pidfile)}; nothing to stop`);
      return;
    }
    const alive = () => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    if (!pid || !alive()) {
      console.log(`${name}: pid ${pid} not running; removing stale pidfile`);
      fs.rmSync(pidfile, { force: true });
      return;
    }
    process.kill(pid, 'SIGTERM');
    const deadline = Date.now() + stopWaitMs;
    while (alive() && Date.now() < deadline) await sleep(100);
    if (alive()) {
      console.error(`${name}: pid ${pid} still alive; sending SIGKILL (its children get SIGTERM via pdeathsig)`);
      process.kill(pid, 'SIGKILL');
    }
    fs.rmSync(pidfile, { force: true });
    console.log(`${name}: stopped (pid ${pid})`);
  }

  let parsed;
  try {
    parsed = parseArgs(argv);
  } catch (err) {
    console.error(`${err.message}\n${usage}`);
    process.exit(2);
  }
  const { cmd, flags } = parsed;
  const table = { run: cliRun, start: cliStart, stop: cliStop, ...commands };
  const run = Object.hasOwn(table, cmd) ? table[cmd] : undefined;
  if (!run) {
    console.error(usage);
    process.exit(2);
  }
  try {
    await run(flags);
  } catch (err) {
    console.error(`${name}: ${err.message}`);
    process.exit(1);
  }
}

function optsFromFlags(f) {
  const o = {};
  if (f.config) o.envoyConfig = f.config;
  if (f.concurrency) o.concurrency = Number(f.concurrency);
  if (f['log-level']) o.envoyLogLevel = f['log-level'];
  if (f['component-log-level']) o.componentLogLevel = f['component-log-level'];
  if (f['base-id']) o.baseId = Number(f['base-id']);
  if (f['log-dir']) o.logDir = f['log-dir'];
  if (f.idp) o.idpScript = f.idp;
  if (f.api) o.apiScript = f.api;
  return o;
}

function banner() {
  return [
    'bffgate demo stack is ready:',
    `  app (Envoy + bffgate)  ${URLS.app}/   (self-signed: .run/tls/cert.pem)`,
    `  identity provider      ${URLS.idp}`,
    `  Envoy admin            ${URLS.admin}`,
    `  operator API           http://127.0.0.1:9902  (GET /sessions?sub=alice; POST /sessions/revoke?sub=alice with X-CSRF: 1;\n                         each with Authorization: Bearer $BFFGATE_ADMIN_TOKEN from .run/secrets.env)`,
    `  demo users             ${DEMO_USERS.map((u) => `${u.login}/${u.password} (${u.scopes})`).join(', ')}`,
    '  logs                   .run/logs/{envoy,idp,api}.log',
    'Press Ctrl-C to stop.',
  ].join('\n');
}

// Does nothing when this file is imported rather than run.
await runCli({
  name: 'stack',
  script: import.meta.url,
  usage:
    'usage: node scripts/stack.mjs run|start|stop [--pidfile F] [--config envoy/envoy.yaml] [--concurrency N]\n' +
    '       [--log-level info] [--component-log-level wasm:debug] [--base-id N] [--log-dir .run/logs]',
  start: startStack,
  optsFromFlags,
  banner,
  logFile: '.run/logs/stack.log',
});
