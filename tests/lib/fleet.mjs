// Helpers for the fleet tests (tests/integration/fleet.test.mjs): log in through a chosen Envoy,
// read an Envoy's admin stats, and open the etcd records' envelopes (XChaCha20-Poly1305, as
// src/vault.rs seals them) independently of the filter.

import crypto from 'node:crypto';

import {
  APP, CALLBACK, authorizeAtIdp, deliverCallback, setsSession,
} from './client.mjs';

/**
 * The whole login flow with GET /auth/login sent to `start` and the IdP's redirect back
 * (always https://localhost:8443/auth/callback, the registered URI) delivered to `callback`
 * instead: an origin (https://localhost:8444) or APP (the load balancer). Returns
 * { login, callbackUrl, callback }.
 */
export async function loginThrough(browser, user, { start = APP, callback = APP, password = user } = {}) {
  const first = await browser.navigate(`${start}/auth/login`);
  if (first.status !== 302 || !first.location) {
    throw new Error(`GET ${start}/auth/login: expected 302, got ${first.status} ${first.text.slice(0, 200)}`);
  }
  const cb = await authorizeAtIdp(browser, first.location, user, password);
  if (!cb.href.startsWith(CALLBACK)) throw new Error(`IdP sent the browser to ${cb.href}`);
  const url = new URL(cb.href);
  const target = new URL(callback);
  url.protocol = target.protocol;
  url.host = target.host;
  const res = await deliverCallback(browser, url);
  return { login: first, callbackUrl: url, callback: res };
}

/** loginThrough + assert success; returns the session cookie value. */
export async function loginThroughOk(browser, user, o = {}) {
  const r = await loginThrough(browser, user, o);
  if (r.callback.status !== 302 || !setsSession(r.callback)) {
    throw new Error(`login as ${user} via ${o.start || APP} -> ${o.callback || APP} failed: callback ${r.callback.status} ${r.callback.text.slice(0, 300)}`);
  }
  return browser.sessionCookie;
}

// One Envoy's admin /stats and /stats/prometheus, any admin URL.
export { adminPrometheus, adminStats } from '../../scripts/lib/admin.mjs';

// ---------------------------------------------------------------------------------------------
// XChaCha20-Poly1305 (node:crypto has the IETF ChaCha20-Poly1305; XChaCha20 = HChaCha20 subkey
// from the first 16 nonce bytes, then ChaCha20-Poly1305 with nonce 0x00000000 || last 8 bytes)

const rotl = (v, n) => ((v << n) | (v >>> (32 - n))) >>> 0;

/** HChaCha20(key 32 bytes, nonce16 16 bytes) -> 32-byte subkey (RFC draft-irtf-cfrg-xchacha). */
export function hchacha20(key, nonce16) {
  const s = new Uint32Array(16);
  s[0] = 0x61707865; s[1] = 0x3320646e; s[2] = 0x79622d32; s[3] = 0x6b206574;
  for (let i = 0; i < 8; i++) s[4 + i] = key.readUInt32LE(4 * i);
  for (let i = 0; i < 4; i++) s[12 + i] = nonce16.readUInt32LE(4 * i);
  const qr = (a, b, c, d) => {
    s[a] = (s[a] + s[b]) >>> 0; s[d] = rotl(s[d] ^ s[a], 16);
    s[c] = (s[c] + s[d]) >>> 0; s[b] = rotl(s[b] ^ s[c], 12);
    s[a] = (s[a] + s[b]) >>> 0; s[d] = rotl(s[d] ^ s[a], 8);
    s[c] = (s[c] + s[d]) >>> 0; s[b] = rotl(s[b] ^ s[c], 7);
  };
  for (let i = 0; i < 10; i++) {
    qr(0, 4, 8, 12); qr(1, 5, 9, 13); qr(2, 6, 10, 14); qr(3, 7, 11, 15);
    qr(0, 5, 10, 15); qr(1, 6, 11, 12); qr(2, 7, 8, 13); qr(3, 4, 9, 14);
  }
  const out = Buffer.alloc(32);
  for (let i = 0; i < 4; i++) out.writeUInt32LE(s[i], 4 * i);
  for (let i = 0; i < 4; i++) out.writeUInt32LE(s[12 + i], 16 + 4 * i);
  return out;
}

/**
 * An XChaCha20-Poly1305 cipher or decipher (`create`: crypto.createCipheriv or
 * createDecipheriv): ChaCha20-Poly1305 under the HChaCha20 subkey, nonce 0^4 || nonce24[16..24].
 */
function xchacha(create, key, nonce24) {
  const sub = hchacha20(key, nonce24.subarray(0, 16));
  const n12 = Buffer.concat([Buffer.alloc(4), nonce24.subarray(16, 24)]);
  return create('chacha20-poly1305', sub, n12, { authTagLength: 16 });
}

/** XChaCha20-Poly1305 open; returns the plaintext Buffer or throws. `ct` includes the 16-byte tag. */
export function xchachaOpen(key, nonce24, ct, aad) {
  const d = xchacha(crypto.createDecipheriv, key, nonce24);
  d.setAAD(aad, { plaintextLength: ct.length - 16 });
  d.setAuthTag(ct.subarray(ct.length - 16));
  return Buffer.concat([d.update(ct.subarray(0, ct.length - 16)), d.final()]);
}

/** XChaCha20-Poly1305 seal (for the self-test of xchachaOpen). */
export function xchachaSeal(key, nonce24, plain, aad) {
  const c = xchacha(crypto.createCipheriv, key, nonce24);
  c.setAAD(aad, { plaintextLength: plain.length });
  return Buffer.concat([c.update(plain), c.final(), c.getAuthTag()]);
}

const lp = (b) => {
  const buf = Buffer.from(b);
  const n = Buffer.alloc(4);
  n.writeUInt32BE(buf.length);
  return Buffer.concat([n, buf]);
};

/**
 * Parses a src/vault.rs envelope: "V2" || len(handle) u8 || handle || len(kid) u8 || kid ||
 * nonce (24) || ciphertext+tag. Returns { handle, kid, nonce, ct } or undefined when `value` is
 * not shaped like one.
 */
export function parseEnvelope(value) {
  if (value.length < 2 + 1 + 1 + 1 + 24 + 16 || value.subarray(0, 2).toString('latin1') !== 'V2') return undefined;
  const h = value[2];
  const handle = value.subarray(3, 3 + h).toString('latin1');
  const at = 3 + h;
  const n = value[at];
  if (n < 1 || n > 16 || value.length < at + 1 + n + 24 + 16) return undefined;
  const kid = value.subarray(at + 1, at + 1 + n).toString('latin1');
  if (!/^[A-Za-z0-9_-]+$/.test(kid)) return undefined;
  return {
    handle, kid, nonce: value.subarray(at + 1 + n, at + 1 + n + 24), ct: value.subarray(at + 1 + n + 24),
  };
}

/** Parses `kid:base64url[,kid:base64url...]` into Map kid -> key Buffer. */
export function keyRing(spec) {
  const out = new Map();
  for (const e of String(spec).split(',')) {
    const [kid, b64] = e.trim().split(':');
    if (kid && b64) out.set(kid, Buffer.from(b64, 'base64url'));
  }
  return out;
}

/**
 * Opens an etcd record as src/vault.rs does: AD = lp("bffgate-store-v1") || lp(etcd key) ||
 * lp(kid) || lp(session handle). Returns the plaintext Buffer; throws when it does not open.
 */
export function openRecord(ring, etcdKey, handle, value) {
  const env = parseEnvelope(value);
  if (!env) throw new Error(`${etcdKey}: not an envelope (${value.length} bytes, starts ${JSON.stringify(value.subarray(0, 8).toString('latin1'))})`);
  const key = ring.get(env.kid);
  if (!key) throw new Error(`${etcdKey}: sealed with unknown kid ${env.kid}`);
  const aad = Buffer.concat([lp('bffgate-store-v1'), lp(etcdKey), lp(env.kid), lp(handle)]);
  return xchachaOpen(key, env.nonce, env.ct, aad);
}

/** Shannon entropy of `buf` in bits per byte. */
export function entropy(buf) {
  const c = new Array(256).fill(0);
  for (const x of buf) c[x] += 1;
  let h = 0;
  for (const n of c) if (n) h -= (n / buf.length) * Math.log2(n / buf.length);
  return h;
}
