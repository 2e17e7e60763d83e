#!/usr/bin/env node
// bffgate's second, real OpenID provider: Glewlwyd 2.7 (Debian package `glewlwyd`, installed by
// scripts/setup.sh), configured only from demo/glewlwyd/ and run on 127.0.0.1.
//
// Library:   import { startProvider2 } from './scripts/provider2.mjs';
//            const p = await startProvider2();   // p.issuer, p.clientId, p.secretFile, p.discovery
//            ...; await p.stop();
// CLI:       node scripts/provider2.mjs run      foreground until SIGINT/SIGTERM/SIGHUP
//            node scripts/provider2.mjs start    `run` in the background; returns when discovery
//                                                answers and prints one JSON line
//            node scripts/provider2.mjs stop
//
// At every start: a fresh SQLite database in .run/glewlwyd/ from the package's schema plus
// demo/glewlwyd/seed.sql (users alice/alice and bob/bob, client `bffgate`, scopes, consent, the
// OpenID Connect plugin from demo/glewlwyd/oidc-plugin.json), and .run/glewlwyd/glewlwyd.conf from
// demo/glewlwyd/glewlwyd.conf. Made once and kept (mode 600): the client secret
// (.run/glewlwyd/client-secret) and the RS256 signing key (.run/glewlwyd/jwks-private.json).
// Log: .run/logs/glewlwyd.log (the server), .run/logs/provider2.log (`start`'s background run).
//
// Environment:
//   BFFGATE_GLEWLWYD_PORT      listen port on 127.0.0.1, default 9100; issuer
//                              http://localhost:<port>/api/oidc
//   BFFGATE_PUBLIC_ORIGIN      origin of the app, default https://localhost:8443: redirect URI
//                              <origin>/auth/callback, post-logout redirect URI <origin>/
//   BFFGATE_BACKCHANNEL_LOGOUT_URI  back-channel logout URI of the client, default
//                              <origin>/auth/backchannel-logout; "off" disables it
//   BFFGATE_ACCESS_TOKEN_TTL   access-token lifetime in seconds, default 300
//   BFFGATE_ROTATE_REFRESH     "1": one-time-use refresh tokens (a new one on every refresh);
//                              default off (the same refresh token stays valid)
//   BFFGATE_GLEWLWYD_TLS_NO_VERIFY  "1": Glewlwyd's outgoing https calls (the back-channel
//                              logout POST) skip certificate verification. Default off: they verify
//                              against the system CA store only (libcurl-gnutls, no CA option), so an
//                              https receiver with the demo's self-signed certificate gets nothing
//   BFFGATE_GLEWLWYD_LOG_LEVEL Glewlwyd's log level (NONE ERROR WARNING INFO DEBUG), default INFO
//
// The server gets a parent-death signal (util-linux setpriv, like scripts/stack.mjs), so it never
// outlives this process. Never prints secrets, tokens or password hashes.

import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { parseArgs } from './lib/cli.mjs';
import { expect200 } from './lib/http.mjs';
import { tail } from './lib/logs.mjs';
import { ROOT } from './lib/paths.mjs';
import {
  Proc, installHooks, portFree, waitFor,
} from './lib/processes.mjs';

export const GLEWLWYD_BIN = '/usr/bin/glewlwyd';
/** The package's SQLite schema (dbconfig-common's copy; the same tables as docs/database/init.sqlite3.sql). */
export const GLEWLWYD_SCHEMA = '/usr/share/dbconfig-common/data/glewlwyd/install/sqlite3';
const WEBAPP_SRC = '/usr/share/glewlwyd/webapp';
const WEBAPP_CONFIG_SRC = '/etc/glewlwyd/config-2.7.json/config.json';

const CONF_DIR = path.join(ROOT, 'demo/glewlwyd');
export const RUN_DIR = path.join(ROOT, '.run/glewlwyd');
export const SECRET_FILE = path.join(RUN_DIR, 'client-secret');
const JWKS_FILE = path.join(RUN_DIR, 'jwks-private.json');
const PIDFILE = path.join(ROOT, '.run/provider2.pid');
const CLI_LOG = path.join(ROOT, '.run/logs/provider2.log');
const READY_TIMEOUT_MS = 30_000;

export const CLIENT_ID = 'bffgate';
export const USERS = Object.freeze([
  { login: 'alice', password: 'alice', scopes: 'orders:read orders:write profile' },
  { login: 'bob', password: 'bob', scopes: 'orders:read profile' },
]);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function intEnv(env, name, dflt, min, max) {
  const raw = env[name];
  if (raw === undefined || raw === '') return dflt;
  if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) {
    throw new Error(`${name} must be an integer between ${min} and ${max}, got ${JSON.stringify(raw)}`);
  }
  return Number(raw);
}

/** Settings from the environment (see the header). */
export function settings(env = process.env) {
  const port = intEnv(env, 'BFFGATE_GLEWLWYD_PORT', 9100, 1, 65535);
  const origin = (env.BFFGATE_PUBLIC_ORIGIN || 'https://localhost:8443').replace(/\/+$/, '');
  const bc = env.BFFGATE_BACKCHANNEL_LOGOUT_URI;
  const logLevel = env.BFFGATE_GLEWLWYD_LOG_LEVEL || 'INFO';
  if (!/^(NONE|ERROR|WARNING|INFO|DEBUG)$/.test(logLevel)) throw new Error(`BFFGATE_GLEWLWYD_LOG_LEVEL: bad level ${logLevel}`);
  const base = `http://localhost:${port}`;
  return {
    port,
    base,
    issuer: `${base}/api/oidc`,
    discovery: `${base}/api/oidc/.well-known/openid-configuration`,
    origin,
    redirectUri: `${origin}/auth/callback`,
    postLogoutRedirectUri: `${origin}/`,
    backchannelLogoutUri: bc === 'off' || bc === 'none' ? '' : bc || `${origin}/auth/backchannel-logout`,
    accessTokenTtl: intEnv(env, 'BFFGATE_ACCESS_TOKEN_TTL', 300, 1, 86400),
    rotateRefresh: env.BFFGATE_ROTATE_REFRESH === '1',
    tlsNoVerify: env.BFFGATE_GLEWLWYD_TLS_NO_VERIFY === '1',
    logLevel,
  };
}

// ---------------------------------------------------------------------------------------------
// generated material

function b64url(bytes) {
  return Buffer.from(bytes).toString('base64url');
}

/** Writes `make()` to `file` (mode 600) unless it exists; returns its content. */
function once(file, make) {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    if (err.code !== 'ENOENT') throw err;
  }
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, make(), { mode: 0o600 });
  fs.renameSync(tmp, file);
  return fs.readFileSync(file, 'utf8');
}

/** The client secret, made on first use. */
export function readClientSecret() {
  fs.mkdirSync(RUN_DIR, { recursive: true, mode: 0o700 });
  return once(SECRET_FILE, () => `${b64url(crypto.randomBytes(32))}\n`).trim();
}

/** The signing key as a private JWKS with one RS256 key (kid = its RFC 7638 thumbprint). */
function signingJwks() {
  const text = once(JWKS_FILE, () => {
    const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    const jwk = privateKey.export({ format: 'jwk' });
    const thumb = crypto.createHash('sha256')
      .update(JSON.stringify({ e: jwk.e, kty: jwk.kty, n: jwk.n })).digest('base64url');
    return `${JSON.stringify({ keys: [{ ...jwk, kid: thumb, alg: 'RS256', use: 'sig' }] })}\n`;
  });
  return JSON.parse(text);
}

/**
 * A password hash as Glewlwyd's database modules store it on SQLite (src/misc.c
 * generate_digest_pbkdf2): base64(PBKDF2-HMAC-SHA256(password, salt, n, 32) || salt) + "," + n,
 * salt = 16 random characters.
 */
export function glewlwydHash(password, iterations = 10_000) {
  const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789';
  const salt = Buffer.from(Array.from(crypto.randomBytes(16), (b) => alphabet[b % alphabet.length]).join(''));
  const dk = crypto.pbkdf2Sync(password, salt, iterations, 32, 'sha256');
  return `${Buffer.concat([dk, salt]).toString('base64')},${iterations}`;
}

/** Replaces every ${NAME} in `text` with escape(values[NAME]); a name without a value is an error. */
function render(text, values, escape, what) {
  return text.replace(/\$\{([A-Z0-9_]+)\}/g, (m, name) => {
    if (!Object.hasOwn(values, name)) throw new Error(`${what}: no value for \${${name}}`);
    return escape(String(values[name]));
  });
}

const sqlString = (s) => s.replace(/'/g, "''");
const jsonString = (s) => JSON.stringify(s).slice(1, -1);
const confString = (s) => {
  if (/["\\\n]/.test(s)) throw new Error(`glewlwyd.conf: unsupported character in ${JSON.stringify(s)}`);
  return s;
};

/** Writes .run/glewlwyd/{glewlwyd.conf, glewlwyd.db, webapp/}; returns their paths. */
export function prepare(s = settings()) {
  for (const [what, f] of [['glewlwyd', GLEWLWYD_BIN], ['the glewlwyd schema', GLEWLWYD_SCHEMA]]) {
    if (!fs.existsSync(f)) throw new Error(`${what} not found (${f}): run scripts/setup.sh`);
  }
  fs.mkdirSync(RUN_DIR, { recursive: true, mode: 0o700 });
  fs.chmodSync(RUN_DIR, 0o700);
  const secret = readClientSecret();
  const jwks = signingJwks();

  // The OpenID Connect plugin's parameters.
  const pluginText = render(fs.readFileSync(path.join(CONF_DIR, 'oidc-plugin.json'), 'utf8'), {
    ISSUER: s.issuer,
    JWKS_PRIVATE: JSON.stringify(jwks),
    KID: jwks.keys[0].kid,
    ACCESS_TOKEN_TTL: s.accessTokenTtl,
    REFRESH_ONE_USE: s.rotateRefresh ? 'always' : 'never',
    TLS_NO_VERIFY: s.tlsNoVerify,
  }, jsonString, 'oidc-plugin.json');
  const plugin = JSON.parse(pluginText);
  for (const k of Object.keys(plugin)) if (k.startsWith('_')) delete plugin[k];

  // A fresh database: schema, then the seed.
  const db = path.join(RUN_DIR, 'glewlwyd.db');
  for (const f of [db, `${db}-journal`, `${db}-wal`, `${db}-shm`]) fs.rmSync(f, { force: true });
  const seed = render(fs.readFileSync(path.join(CONF_DIR, 'seed.sql'), 'utf8'), {
    ALICE_PASSWORD_HASH: glewlwydHash('alice'),
    BOB_PASSWORD_HASH: glewlwydHash('bob'),
    CLIENT_PASSWORD_HASH: glewlwydHash(secret),
    REDIRECT_URI: s.redirectUri,
    POST_LOGOUT_REDIRECT_URI: s.postLogoutRedirectUri,
    BACKCHANNEL_LOGOUT_URI: s.backchannelLogoutUri,
    OIDC_PLUGIN_PARAMETERS: JSON.stringify(plugin),
  }, sqlString, 'seed.sql');
  const sql = `.bail on\nBEGIN;\n${fs.readFileSync(GLEWLWYD_SCHEMA, 'utf8')}\n${seed}\nCOMMIT;\n`;
  const r = spawnSync('sqlite3', [db], { input: sql, encoding: 'utf8', timeout: 30_000 });
  if (r.error || r.status !== 0) {
    throw new Error(`sqlite3 could not build ${path.relative(ROOT, db)}: ${r.error?.message ?? r.stderr.trim()}`);
  }
  fs.chmodSync(db, 0o600);

  // A copy of the package's login page (2 MB; Glewlwyd serves no symlinks), with the
  // config.json it loads: Debian links webapp/config.json to a directory
  // (/etc/glewlwyd/config-2.7.json/), so the page cannot start from the package's own copy.
  const webapp = path.join(RUN_DIR, 'webapp');
  fs.rmSync(webapp, { recursive: true, force: true });
  fs.cpSync(WEBAPP_SRC, webapp, { recursive: true, dereference: true, filter: (src) => src !== path.join(WEBAPP_SRC, 'config.json') });
  if (fs.existsSync(WEBAPP_CONFIG_SRC)) fs.copyFileSync(WEBAPP_CONFIG_SRC, path.join(webapp, 'config.json'));

  const conf = path.join(RUN_DIR, 'glewlwyd.conf');
  fs.writeFileSync(conf, render(fs.readFileSync(path.join(CONF_DIR, 'glewlwyd.conf'), 'utf8'), {
    PORT: s.port,
    EXTERNAL_URL: s.base,
    WEBAPP_DIR: `${webapp}/`,
    LOG_LEVEL: s.logLevel,
    DB_PATH: db,
  }, confString, 'glewlwyd.conf'), { mode: 0o600 });
  return { conf, db, webapp };
}

// ---------------------------------------------------------------------------------------------
// start / stop

/**
 * Prepares and starts Glewlwyd; resolves once its discovery document answers 200.
 * @param {object} [opts]
 * @param {object} [opts.env=process.env]  settings (see the header)
 * @param {string} [opts.logDir='.run/logs']
 * @param {number} [opts.timeoutMs=30000]
 */
export async function startProvider2({ env = process.env, logDir = '.run/logs', timeoutMs = READY_TIMEOUT_MS } = {}) {
  const t0 = performance.now();
  const s = settings(env);
  if (!(await portFree(s.port))) {
    throw new Error(`127.0.0.1:${s.port} is in use (a provider2 still running? \`node scripts/provider2.mjs stop\`, or find it with \`ss -ltnp\`)`);
  }
  const { conf } = prepare(s);
  installHooks();
  const logFile = path.resolve(ROOT, logDir, 'glewlwyd.log');
  // Only what the server needs from our environment: nothing secret is in it anyway.
  const childEnv = { PATH: process.env.PATH, LANG: 'C.UTF-8' };
  const proc = new Proc('glewlwyd', { cmd: GLEWLWYD_BIN, args: [`--config-file=${conf}`], env: childEnv, logFile });
  proc.start();
  try {
    await waitFor(proc, `GET ${s.discovery}`,
      expect200(`http://127.0.0.1:${s.port}/api/oidc/.well-known/openid-configuration`), Date.now() + timeoutMs);
  } catch (err) {
    await proc.stop();
    throw err;
  }
  const handle = {
    ...s,
    clientId: CLIENT_ID,
    secretFile: SECRET_FILE,
    users: USERS,
    logFile,
    startMs: Math.round(performance.now() - t0),
    get pid() { return proc.pid; },
    get running() { return proc.running; },
    /** Set to (exit) => void to hear of the server dying by itself. */
    set onUnexpectedExit(fn) { proc.onUnexpectedExit = fn && ((p) => fn(p.exited)); },
    clientSecret: () => readClientSecret(),
    stop: () => proc.stop(),
  };
  return handle;
}

/** The JSON line `start` and `run` print: no secret, only where it is. */
export function describe(h) {
  return JSON.stringify({
    provider: 'glewlwyd',
    issuer: h.issuer,
    discovery: h.discovery,
    client_id: h.clientId,
    client_secret_file: path.relative(ROOT, h.secretFile),
    redirect_uri: h.redirectUri,
    pid: h.pid,
    log: path.relative(ROOT, h.logFile),
    start_ms: h.startMs,
  });
}

// ---------------------------------------------------------------------------------------------
// CLI

const USAGE = 'usage: node scripts/provider2.mjs run|start|stop   (settings: environment, see the header)';

async function cliRun(flags) {
  let h;
  let stopping = false;
  const shutdown = async (code) => {
    if (stopping) return;
    stopping = true;
    if (h) await h.stop();
    if (flags.pidfile) {
      try {
        if (Number(fs.readFileSync(flags.pidfile, 'utf8')) === process.pid) fs.rmSync(flags.pidfile, { force: true });
      } catch {
        // gone already
      }
    }
    console.log('provider2: stopped');
    process.exit(code);
  };
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => shutdown(0));
  try {
    h = await startProvider2();
  } catch (err) {
    console.error(`provider2: failed to start: ${err.message}`);
    process.exit(1);
  }
  h.onUnexpectedExit = (exit) => {
    console.error(`provider2: glewlwyd died (${JSON.stringify(exit)}). Tail of ${path.relative(ROOT, h.logFile)}:\n${tail(h.logFile)}`);
    shutdown(1);
  };
  console.log(describe(h));
  setInterval(() => {}, 1 << 30); // stay in the foreground until a signal
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function readPid() {
  try {
    return Number(fs.readFileSync(PIDFILE, 'utf8').trim()) || 0;
  } catch {
    return 0;
  }
}

async function cliStart() {
  const old = readPid();
  if (old && alive(old)) {
    console.error(`provider2: already running (pid ${old}, ${path.relative(ROOT, PIDFILE)}); stop it with: node scripts/provider2.mjs stop`);
    process.exit(1);
  }
  fs.mkdirSync(path.dirname(CLI_LOG), { recursive: true });
  const fd = fs.openSync(CLI_LOG, 'a');
  const from = fs.fstatSync(fd).size;
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), 'run', '--pidfile', PIDFILE],
    { cwd: ROOT, detached: true, stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  fs.writeFileSync(PIDFILE, `${child.pid}\n`);
  let exited = false;
  child.once('exit', () => { exited = true; });
  const since = () => fs.readFileSync(CLI_LOG).subarray(from).toString('utf8');
  const deadline = Date.now() + READY_TIMEOUT_MS + 5000;
  while (Date.now() < deadline) {
    const line = since().split('\n').find((l) => l.startsWith('{"provider":'));
    if (line) {
      child.unref();
      console.log(line);
      process.exit(0);
    }
    if (exited) {
      fs.rmSync(PIDFILE, { force: true });
      console.error(`${since().trim()}\n(see ${path.relative(ROOT, CLI_LOG)})`);
      process.exit(1);
    }
    await sleep(100);
  }
  console.error('provider2: not ready in time; stopping it');
  process.kill(child.pid, 'SIGTERM');
  process.exit(1);
}

async function cliStop() {
  const pid = readPid();
  if (!pid || !alive(pid)) {
    console.log(`provider2: not running${pid ? ` (stale pid ${pid})` : ''}`);
    fs.rmSync(PIDFILE, { force: true });
    return;
  }
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + 10_000;
  while (alive(pid) && Date.now() < deadline) await sleep(100);
  if (alive(pid)) {
    console.error(`provider2: pid ${pid} still alive; SIGKILL (glewlwyd gets SIGTERM by its parent-death signal)`);
    process.kill(pid, 'SIGKILL');
  }
  fs.rmSync(PIDFILE, { force: true });
  console.log(`provider2: stopped (pid ${pid})`);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  let parsed;
  try {
    parsed = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error(`${err.message}\n${USAGE}`);
    process.exit(2);
  }
  const table = { run: cliRun, start: cliStart, stop: cliStop };
  const fn = Object.hasOwn(table, parsed.cmd) ? table[parsed.cmd] : null;
  if (!fn) {
    console.error(USAGE);
    process.exit(2);
  }
  fn(parsed.flags).catch((err) => {
    console.error(`provider2: ${err.message}`);
    process.exit(1);
  });
}
