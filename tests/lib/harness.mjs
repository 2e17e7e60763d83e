// Shared pieces of the integration test files: one stack per file, assertions for the
// contract's error shape, and leak scans (responses to the browser, Envoy's log).

import assert from 'node:assert/strict';
import path from 'node:path';

import { eventually } from '../../scripts/lib/http.mjs';
import { forEachLogChunk, logSince as readLogSince, logSize } from '../../scripts/lib/logs.mjs';
import { APP, LOG_DIR } from '../../scripts/lib/paths.mjs';
import { startStack } from '../../scripts/stack.mjs';
import {
  describe as describeRes, isDeletion, parseSetCookie, SESSION_COOKIE, FLOW_PREFIX, transcript,
} from './client.mjs';

// The shared pieces (scripts/lib), under the names the tests use. The logs under .run/logs are
// appended to by every run and grow by hundreds of MB per test file with the wasm component at
// trace level: forEachLogChunk reads them from an offset, a chunk at a time.
export { eventually, forEachLogChunk, readLogSince };

export const ACCEPT_JSON = Object.freeze({ accept: 'application/json' });
export const CSRF = Object.freeze({ 'x-csrf': '1' });

/** Error codes of the contract. */
export const ERROR_CODES = new Set([
  'unauthenticated', 'insufficient_scope', 'forbidden', 'csrf', 'invalid_request', 'login_failed', 'idp_unavailable',
  'insufficient_user_authentication',
]);

/**
 * Starts one stack for a test file. Returns a holder whose `stack` is set once started, and the
 * byte offset of envoy.log at start (so leak scans read only this run's lines).
 * Envoy runs with --concurrency 2 and the wasm component at trace level, so that the leak scan
 * covers every log level the filter may use.
 */
export async function bootStack(opts = {}) {
  const envoyLog = path.join(LOG_DIR, 'envoy.log');
  const offset = logSize(envoyLog);
  // BFFGATE_TEST_ENVOY_CONFIG: run the suites against another Envoy config (e.g. one with a
  // defence removed, to see that the test naming that defence fails).
  const envoyConfig = process.env.BFFGATE_TEST_ENVOY_CONFIG;
  const stack = await startStack({
    concurrency: 2, componentLogLevel: 'wasm:trace', ...(envoyConfig ? { envoyConfig } : {}), ...opts,
  });
  return { stack, envoyLog, offset };
}

/** Asserts a filter error: status, JSON content type, {"error": code, "error_description": text}. */
export function assertJsonError(res, status, code, msg = '') {
  const what = `${msg ? `${msg}: ` : ''}${describeRes(res)}`;
  if (Array.isArray(status)) assert.ok(status.includes(res.status), `status in ${status}: ${what}`);
  else if (typeof status === 'function') assert.ok(status(res.status), `status check: ${what}`);
  else assert.equal(res.status, status, `status: ${what}`);
  assert.match(String(res.headers['content-type'] || ''), /^application\/json\b/i, `content-type: ${what}`);
  assert.ok(res.json && typeof res.json === 'object' && !Array.isArray(res.json), `JSON object body: ${what}`);
  assert.equal(res.json.error, code, `error code: ${what}`);
  assert.equal(typeof res.json.error_description, 'string', `error_description is a string: ${what}`);
  assert.ok(res.json.error_description.length > 0, `error_description not empty: ${what}`);
  assert.ok(ERROR_CODES.has(res.json.error), `error code is one of the contract's: ${what}`);
}

/** Asserts that `res` does not set (create or replace) the session cookie. */
export function assertNoSessionSet(res, msg = '') {
  const bad = res.setCookies.map(parseSetCookie).filter((c) => c.name === SESSION_COOKIE && !isDeletion(c) && c.value !== '');
  assert.equal(bad.length, 0, `${msg ? `${msg}: ` : ''}no ${SESSION_COOKIE} may be set: ${describeRes(res)}`);
}

/** Asserts that `res` carries a Set-Cookie that deletes the session cookie (Path=/, Secure). */
export function assertSessionCleared(res, msg = '') {
  const del = res.setCookies.map(parseSetCookie).filter((c) => c.name === SESSION_COOKIE && isDeletion(c));
  assert.equal(del.length, 1, `${msg ? `${msg}: ` : ''}one Set-Cookie deleting ${SESSION_COOKIE}: ${describeRes(res)}`);
  assert.equal(del[0].attrs.path, '/', `deletion has Path=/ (else the browser keeps the cookie): ${del[0].raw}`);
  assert.ok(del[0].attrs.secure !== undefined, `deletion has Secure (required for __Host-): ${del[0].raw}`);
  assert.equal(del[0].attrs.domain, undefined, `deletion has no Domain: ${del[0].raw}`);
}

/** A value looks like a JWT (header starting with `{"`). */
export const JWT_RE = /eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*/;

/**
 * Secrets seen in this process's transcript: access tokens the upstream received
 * (seen.authorization), authorization codes (callback URLs), session and flow cookie values.
 * Returns Map secret -> kind.
 */
export function secretsSeen() {
  const out = new Map();
  for (const r of transcript) {
    const auth = r.json?.seen?.authorization;
    if (typeof auth === 'string' && /^Bearer eyJ/.test(auth)) out.set(auth.slice(7), 'access token');
    try {
      const u = new URL(r.url);
      const code = u.searchParams.get('code');
      // real codes only (tests also send made-up short ones)
      if (u.pathname === '/auth/callback' && code && code.length >= 20) out.set(code, 'authorization code');
    } catch {
      // not a URL
    }
    for (const l of r.setCookies) {
      const c = parseSetCookie(l);
      if ((c.name === SESSION_COOKIE || c.name.startsWith(FLOW_PREFIX)) && c.value.length >= 16) out.set(c.value, `${c.name} value`);
    }
  }
  return out;
}

/** Lines of `file` from byte `offset` that contain any of `secrets` (Map secret -> kind). */
export function findSecretsInLog(file, offset, secrets) {
  const hits = [];
  const found = new Set();
  forEachLogChunk(file, offset, (text) => {
    for (const [secret, kind] of secrets) {
      if (found.has(secret)) continue;
      const i = text.indexOf(secret);
      if (i >= 0) {
        found.add(secret);
        const lineStart = text.lastIndexOf('\n', i) + 1;
        hits.push(`${kind} in log line: ${text.slice(lineStart, Math.min(lineStart + 200, text.length)).replace(secret, '<SECRET>')}`);
      }
    }
  });
  return hits;
}

/**
 * Responses to the browser that may carry a token: every response from the app origin except the
 * demo APIs' own bodies (they echo the bearer they received, by design). Checks headers
 * (including Set-Cookie) of all, bodies of the filter's own (/auth/*) and error answers.
 */
export function tokenLeaksInResponses(secrets) {
  const hits = [];
  for (const r of transcript) {
    let u;
    try {
      u = new URL(r.url);
    } catch {
      continue;
    }
    if (u.origin !== APP) continue;
    const headerText = JSON.stringify(r.headers);
    const bodyIsFilters = u.pathname.startsWith('/auth/') || (r.json && typeof r.json === 'object' && !('api' in r.json));
    const scan = bodyIsFilters ? `${headerText}\n${r.text}` : headerText;
    if (JWT_RE.test(scan)) hits.push(`JWT-looking string in ${r.method} ${u.pathname} -> ${r.status}`);
    for (const [secret, kind] of secrets) {
      if (kind === 'access token' || kind === 'authorization code') {
        if (scan.includes(secret)) hits.push(`${kind} in ${r.method} ${u.pathname} -> ${r.status}`);
      }
    }
  }
  return hits;
}

