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

import fs from 'node:fs';
import path from 'node:path';

import { runCli } from './lib/cli.mjs';
import { expect200 } from './lib/http.mjs';
import { adminReady, revokeAllAndWait } from './lib/admin.mjs';
import {
  DEMO_USERS, PORTS, ROOT, SECRET_KEYS, TLS_CERT, URLS, findEnvoy, readSecrets, rel,
} from './lib/paths.mjs';
import {
  Proc, READY_TIMEOUT_MS, assertPortsFree, envWithout, envoyArgs, waitFor,
} from './lib/processes.mjs';

export {
  DEMO_USERS, PORTS, ROOT, TLS_CERT, URLS, readSecrets,
};

const portsOf = (names) => names.map((n) => [n, PORTS[n]]);
const PORTS_HINT = 'A stale stack is probably running: `node scripts/stack.mjs stop`, or find it with `ss -ltnp` and kill it by pid.';

// ---------------------------------------------------------------------------
// the stack

/**
 * Starts IdP, APIs and Envoy (in that order) and waits until each is ready.
 * @param {object} [opts]
 * @param {number} [opts.concurrency=2]        Envoy --concurrency (worker threads)
 * @param {string} [opts.envoyLogLevel='info'] Envoy -l
 * @param {string} [opts.componentLogLevel]    Envoy --component-log-level, e.g. 'wasm:debug'
 * @param {object} [opts.env]                  extra environment for the IdP (e.g. BFFGATE_ACCESS_TOKEN_TTL)
 * @param {object} [opts.apiEnv]               extra environment for the demo APIs (e.g.
 *                                             BFFGATE_IDP_ISSUER of another provider)
 * @param {object} [opts.envoyEnv]             extra environment for Envoy only (e.g. a secret the
 *                                             config names in host_env_keys)
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
    envoyEnv: {},
    apiEnv: {},
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
    if (!fs.existsSync(f)) throw new Error(`${what} not found: ${rel(f)} (${hint})`);
  }
  const secrets = readSecrets();
  const envoyBin = findEnvoy();
  const ca = fs.readFileSync(TLS_CERT);

  // Children inherit our environment minus any secret; each gets only what it needs.
  const baseEnv = envWithout(SECRET_KEYS);
  let idpEnv = { ...o.env };

  const makeIdp = () =>
    new Proc('idp', {
      cmd: process.execPath,
      args: [o.idpScript],
      env: { ...baseEnv, ...idpEnv, BFFGATE_CLIENT_SECRET: secrets.BFFGATE_CLIENT_SECRET },
      logFile: logs.idp,
    });
  const makeApi = () =>
    new Proc('api', { cmd: process.execPath, args: [o.apiScript], env: { ...baseEnv, ...o.apiEnv }, logFile: logs.api });
  const makeEnvoy = () =>
    new Proc('envoy', {
      cmd: envoyBin,
      args: envoyArgs({
        config: envoyConfig,
        baseId: o.baseId,
        hotRestart: o.hotRestart,
        concurrency: o.concurrency,
        logLevel: o.envoyLogLevel,
        componentLogLevel: o.componentLogLevel,
      }),
      env: { ...baseEnv, ...secrets, ...o.envoyEnv },
      logFile: logs.envoy,
    });

  const procs = { idp: null, api: null, envoy: null };
  let stopping = false;
  const onUnexpectedExit = (p) => {
    const msg = `stack: ${p.name} ${p.describeExit()} unexpectedly (see ${rel(p.logFile)})`;
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
    await waitFor(p, `GET ${URLS.admin}/ready`, adminReady(URLS.admin), deadline);
    await waitFor(p, `GET ${URLS.app}/`, expect200(`${URLS.app}/`, { ca }), deadline);
  };

  async function startOne(name, make, ready, ports) {
    stopping = false;
    await assertPortsFree(portsOf(ports), PORTS_HINT);
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
    await assertPortsFree(portsOf(['idp', 'orders', 'profile', 'public', ...(o.envoy ? ['envoy', 'admin'] : [])]), PORTS_HINT);
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
    `  operator API           ${URLS.operator}  (GET /sessions?sub=alice; POST /sessions/revoke?sub=alice with X-CSRF: 1;\n                         each with Authorization: Bearer $BFFGATE_ADMIN_TOKEN from .run/secrets.env)`,
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
    '       [--log-level info] [--component-log-level wasm:debug] [--base-id N] [--log-dir .run/logs]\n' +
    '       node scripts/stack.mjs revoke-all [--timeout-s 60]   (end every session and revoke its grant; run before stop)',
  commands: {
    async 'revoke-all'(flags) {
      const r = await revokeAllAndWait({ timeoutMs: 1000 * Number(flags['timeout-s'] ?? 60) });
      console.log(`stack: revoke-all: ${r.ended} sessions ended; of ${r.queued} refresh tokens ${r.revoked} revoked, ${r.failed} failed, ${r.notSent} not sent, in ${r.ms} ms`);
      if (!r.done) throw new Error(`revoke-all: ${r.queued - r.revoked - r.failed - r.notSent} revocations still unanswered after the timeout`);
    },
  },
  start: startStack,
  optsFromFlags,
  banner,
  logFile: '.run/logs/stack.log',
});
