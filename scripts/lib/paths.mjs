// Where things are, for the scripts (scripts/*.mjs) and the integration tests (tests/lib/*.mjs):
// the repository root, the runtime directory .run/ (logs, the demo TLS certificate, the demo
// secrets), the Envoy binary in .venv, and the fixed loopback ports and URLs of the demo stack.
// Also the readers of the two .run/ files everything needs: secrets.env and the certificate.
// node:* only.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** `p` relative to the repository root (for messages). */
export const rel = (p) => path.relative(ROOT, p);

// ---------------------------------------------------------------------------------------------
// .run/ (git-ignored; `make setup` creates the certificate and the secrets)

export const RUN_DIR = path.join(ROOT, '.run');
export const LOG_DIR = path.join(RUN_DIR, 'logs');
export const TLS_CERT = path.join(RUN_DIR, 'tls/cert.pem');
export const TLS_KEY = path.join(RUN_DIR, 'tls/key.pem');
export const SECRETS_FILE = path.join(RUN_DIR, 'secrets.env');
/** The lines .run/secrets.env must have (scripts/setup.sh writes them). */
export const SECRET_KEYS = Object.freeze(['BFFGATE_CLIENT_SECRET', 'BFFGATE_COOKIE_KEYS', 'BFFGATE_ADMIN_TOKEN']);

/** Parses shell-style KEY=value lines (comments and blank lines ignored). */
export function readSecrets(file = SECRETS_FILE) {
  let text;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read ${rel(file)} (${err.code}): run \`make setup\` first`);
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
    if (!out[k]) throw new Error(`${rel(file)} lacks ${k}: delete it and run \`make setup\``);
  }
  return out;
}

let caCache;
/** The demo's self-signed certificate (.run/tls/cert.pem, name localhost), read once. */
export function demoCa() {
  if (!caCache) caCache = fs.readFileSync(TLS_CERT);
  return caCache;
}

/** Path of the real Envoy binary inside .venv (not the python wrapper); BFFGATE_ENVOY_BIN overrides. */
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

// ---------------------------------------------------------------------------------------------
// the demo stack (scripts/stack.mjs): fixed loopback ports

export const PORTS = Object.freeze({
  envoy: 8443,
  admin: 9901,
  operator: 9902,
  idp: 9000,
  orders: 9101,
  profile: 9102,
  public: 9103,
});

export const URLS = Object.freeze({
  app: 'https://localhost:8443',
  idp: 'http://localhost:9000',
  admin: 'http://127.0.0.1:9901',
  /** bffgate's operator API (the `bffgate_admin` listener of the shipped config). */
  operator: 'http://127.0.0.1:9902',
  orders: 'http://127.0.0.1:9101',
  profile: 'http://127.0.0.1:9102',
  public: 'http://127.0.0.1:9103',
});

export const APP = URLS.app;
export const IDP = URLS.idp;
export const ADMIN = URLS.admin;
export const OPERATOR = URLS.operator;
/** The redirect URI registered at the demo IdP. */
export const CALLBACK = `${APP}/auth/callback`;
export const API_PORTS = Object.freeze({ orders: PORTS.orders, profile: PORTS.profile, public: PORTS.public });

export const DEMO_USERS = Object.freeze([
  { login: 'alice', password: 'alice', scopes: 'orders:read orders:write profile' },
  { login: 'bob', password: 'bob', scopes: 'orders:read profile' },
]);

/** bffgate's cookie names (envoy/bffgate.yaml). */
export const SESSION_COOKIE = '__Host-bff-session';
export const FLOW_PREFIX = '__Host-bff-flow-';
