// Long-lived children of the scripts (Envoys, identity providers, demo APIs, etcd members): one
// launcher, `Proc`, used by scripts/stack.mjs, fleet.mjs, etcd.mjs and bench.mjs alike.
//
// A Proc writes its output to a log file, stops with a grace period (SIGTERM, then SIGKILL), and
// can be waited on until it is ready (waitFor: polls a probe, fails at once with the log's tail
// if the child dies). Children never outlive this process: they are killed on exit (also on an
// uncaught error) and on SIGINT/SIGTERM/SIGHUP unless the script handles those itself, and (where
// util-linux `setpriv` exists) get a parent-death signal, so that even a SIGKILLed parent leaves
// no orphans. Also: checks that ports are free before starting anything on them.

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';

import { waitUntil } from './http.mjs';
import { tail } from './logs.mjs';
import { ROOT, rel } from './paths.mjs';

export const STOP_GRACE_MS = 5000;
export const READY_TIMEOUT_MS = 60000;

/** Whether `cmd` is on PATH. */
export function commandExists(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
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

// ---------------------------------------------------------------------------------------------
// every running Proc of this process, for cleanup

const live = new Set(); // of Proc
let hooksInstalled = false;

function killAllSync(signal) {
  for (const p of live) {
    try {
      p.child.kill(signal);
    } catch {
      // already gone
    }
  }
}

/** Kills every child on exit and on SIGINT/SIGTERM/SIGHUP (unless the script has its own handler). */
export function installHooks() {
  if (hooksInstalled) return;
  hooksInstalled = true;
  process.on('exit', () => killAllSync('SIGKILL'));
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, function onSignal() {
      // A script may install its own graceful handler; as a library we only make sure no child
      // survives, then die as the signal would have made us die.
      if (process.listenerCount(sig) > 1) return;
      killAllSync('SIGTERM');
      setTimeout(() => {
        killAllSync('SIGKILL');
        process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1));
      }, 300).unref();
    });
  }
  // No 'uncaughtException' listener: it would change how test runners report errors. Node emits
  // 'exit' on an uncaught error too, which kills the children.
}

/** Stops every running Proc (each with its grace period), all at once. */
export async function stopAll(graceMs = STOP_GRACE_MS) {
  await Promise.all([...live].map((p) => p.stop(graceMs)));
}

// ---------------------------------------------------------------------------------------------
// one managed child

export class Proc {
  /**
   * @param {string} name
   * @param {object} o
   * @param {string} o.cmd
   * @param {string[]} o.args
   * @param {object} [o.env]           the child's whole environment (default: this process's)
   * @param {string} o.logFile         stdout and stderr, appended to (after a `=== … ===` line)
   * @param {boolean} [o.freshLog]     truncate the log at every start instead
   * @param {string} [o.who='stack']   prefix of the lines the launcher itself writes to the log
   */
  constructor(name, { cmd, args, env, logFile, freshLog = false, who = 'stack' }) {
    Object.assign(this, { name, cmd, args, env, logFile, freshLog, who });
    this.child = null;
    this.exited = null; // { code, signal } once exited
    this.expectedExit = false;
    this.onUnexpectedExit = null;
  }

  start() {
    installHooks();
    fs.mkdirSync(path.dirname(this.logFile), { recursive: true });
    const header = `${this.freshLog ? '' : '\n'}=== ${new Date().toISOString()} ${this.who}: starting ${this.name} ===\n`;
    if (this.freshLog) fs.writeFileSync(this.logFile, header);
    else fs.appendFileSync(this.logFile, header);
    const fd = fs.openSync(this.logFile, 'a');
    let { cmd, args } = this;
    // With a parent-death signal (the child gets SIGTERM if this process dies, even by SIGKILL),
    // children get their own process group: a Ctrl-C then reaches only us, and we stop them in
    // order (Envoy first). Without it they stay in our group, so a terminal's Ctrl-C still
    // reaches them.
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
    const { child } = this;
    live.add(this);
    this.exitPromise = new Promise((resolve) => {
      const done = (code, signal) => {
        if (this.child === child) live.delete(this);
        this.exited = { code, signal };
        if (!this.expectedExit && this.onUnexpectedExit) this.onUnexpectedExit(this, code, signal);
        resolve(this.exited);
      };
      child.once('exit', done);
      child.once('error', (err) => {
        fs.appendFileSync(this.logFile, `${this.who}: cannot start ${this.name}: ${err.message}\n`);
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
      fs.appendFileSync(this.logFile, `${this.who}: ${this.name} ignored SIGTERM for ${graceMs} ms, sending SIGKILL\n`);
      this.child.kill('SIGKILL');
      await this.exitPromise;
    }
  }

  describeExit() {
    if (!this.exited) return 'running';
    return this.exited.signal ? `killed by ${this.exited.signal}` : `exited with code ${this.exited.code}`;
  }
}

/**
 * Polls probe() (waitUntil's rules) until it returns true, before `deadline`; fails at once,
 * with the tail of its log, if `proc` exits.
 */
export function waitFor(proc, what, probe, deadline) {
  const logTail = () => `\n--- tail of ${rel(proc.logFile)} ---\n${tail(proc.logFile)}`;
  return waitUntil(`${proc.name} (${what})`, probe, {
    deadline,
    check: () => {
      if (proc.exited) throw new Error(`${proc.name} ${proc.describeExit()} before it was ready (${what}).${logTail()}`);
    },
    detail: logTail,
  });
}

// ---------------------------------------------------------------------------------------------
// Envoy

/**
 * Envoy's command line (the binary: findEnvoy in paths.mjs). Hot restart is off unless asked
 * for: without it Envoy uses no shared memory (/dev/shm is shared even across network
 * namespaces) and no domain socket, so parallel or stale Envoys cannot clash through --base-id.
 */
export function envoyArgs({
  config, baseId = 0, concurrency = 2, logLevel = 'info', componentLogLevel, logPath, hotRestart = false,
  drainTimeS = 5,
}) {
  return [
    '-c', config,
    '--base-id', String(baseId),
    ...(hotRestart ? [] : ['--disable-hot-restart']),
    '--concurrency', String(concurrency),
    // A listener replaced by a live configuration change (LDS) closes its open connections
    // within this time (Envoy's default is 600 s, during which a browser's keep-alive
    // connection would keep the old policies).
    '--drain-time-s', String(drainTimeS), '--drain-strategy', 'immediate',
    '-l', logLevel,
    ...(componentLogLevel ? ['--component-log-level', componentLogLevel] : []),
    ...(logPath ? ['--log-path', logPath] : []),
  ];
}

/** This process's environment without `keys` (secrets a child must not inherit). */
export function envWithout(keys) {
  const env = { ...process.env };
  for (const k of keys) delete env[k];
  return env;
}

// ---------------------------------------------------------------------------------------------
// ports

/** Resolves true when nothing listens on 127.0.0.1:port (we can bind it). */
export function portFree(port) {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen({ port, host: '127.0.0.1', exclusive: true }, () => srv.close(() => resolve(true)));
  });
}

/**
 * Throws unless every port is free. `ports`: numbers or [label, number]. The message names the
 * busy ones and ends with `hint` (what is probably running and how to stop it).
 */
export async function assertPortsFree(ports, hint) {
  const busy = [];
  for (const p of ports) {
    const [label, port] = Array.isArray(p) ? p : [undefined, p];
    if (!(await portFree(port))) busy.push(label ? `${label} (127.0.0.1:${port})` : `127.0.0.1:${port}`);
  }
  if (busy.length) throw new Error(`port(s) already in use: ${busy.join(', ')}. ${hint}`);
}

/** Waits (bounded) until `ports` are free, e.g. those of a child that just stopped. */
export async function waitPortsFree(ports, what, timeoutMs = 5000) {
  await waitUntil(what, async () => {
    for (const port of ports) if (!(await portFree(port))) return `port ${port} in use`;
    return true;
  }, { timeoutMs, everyMs: 100 });
}

