// The command line of a script that runs a set of processes (scripts/stack.mjs, fleet.mjs):
// `run` in the foreground, `start` in the background with a pidfile, `stop`; and the argument
// parser of the scripts (scripts/etcd.mjs too).

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { expect200, sleep } from './http.mjs';
import { logSince, tail } from './logs.mjs';
import {
  ROOT, TLS_CERT, URLS, rel,
} from './paths.mjs';
import { READY_TIMEOUT_MS, STOP_GRACE_MS } from './processes.mjs';

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

/** Whether `script` (an import.meta.url) is the process's main script rather than imported. */
export function isMain(script) {
  return Boolean(process.argv[1]) && path.resolve(process.argv[1]) === fileURLToPath(script);
}

/**
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
  if (!isMain(script)) return;
  const file = fileURLToPath(script);
  const defaultPidfile = (flags) => path.resolve(ROOT, flags.pidfile || `.run/${name}.pid`);
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
    const since = () => logSince(log, startAt);
    const readyLine = banner().split('\n')[0];
    const appReady = expect200(`${URLS.app}/`, { ca: fs.existsSync(TLS_CERT) ? fs.readFileSync(TLS_CERT) : undefined });
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
      if (since().includes(readyLine) && (await appReady().catch(() => false)) === true) {
        child.unref();
        console.log(`${name}: running in the background, pid ${child.pid} (${rel(pidfile)})`);
        console.log(banner().split('\n').slice(0, -1).join('\n'));
        console.log(`Stop it with: ${stopHint}`);
        process.exit(0);
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
