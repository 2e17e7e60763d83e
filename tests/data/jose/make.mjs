// Generates the JWS fixtures of src/jose.rs's tests with npm `jose` (the library oidc-provider
// signs with), so bffgate's verification is checked against someone else's signer:
//   node tests/data/jose/make.mjs
// Writes jwks.json (the public keys: RSA 2048, P-256, P-384) and one <ALG>.jwt per algorithm
// (HS* with the HMAC secret "test-client-secret-for-hs-fixtures", the UTF-8 octets of a client
// secret as OIDC Core 10.1 says). Keys are made fresh on every run and thrown away; nothing here
// protects anything.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import crypto from 'node:crypto';
import { SignJWT, exportJWK } from 'jose';

const dir = path.dirname(fileURLToPath(import.meta.url));
export const HS_SECRET = 'test-client-secret-for-hs-fixtures';
const claims = { iss: 'http://localhost:9000', sub: 'alice', aud: 'bffgate', iat: 1750000000, exp: 4102444800 };

const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const p256 = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const p384 = crypto.generateKeyPairSync('ec', { namedCurve: 'P-384' });
const keys = [];
for (const [kid, pair, alg] of [['rsa-1', rsa, undefined], ['p256-1', p256, 'ES256'], ['p384-1', p384, 'ES384']]) {
  const jwk = await exportJWK(pair.publicKey);
  keys.push({ ...jwk, kid, use: 'sig', ...(alg ? { alg } : {}) });
}
fs.writeFileSync(path.join(dir, 'jwks.json'), JSON.stringify({ keys }, null, 1) + '\n');

const plan = [
  ['RS256', rsa, 'rsa-1'], ['RS384', rsa, 'rsa-1'], ['RS512', rsa, 'rsa-1'],
  ['PS256', rsa, 'rsa-1'], ['PS384', rsa, 'rsa-1'], ['PS512', rsa, 'rsa-1'],
  ['ES256', p256, 'p256-1'], ['ES384', p384, 'p384-1'],
  ['HS256', null, null], ['HS384', null, null], ['HS512', null, null],
];
for (const [alg, pair, kid] of plan) {
  const key = pair ? pair.privateKey : new TextEncoder().encode(HS_SECRET);
  const header = kid ? { alg, kid, typ: 'JWT' } : { alg, typ: 'JWT' };
  const jwt = await new SignJWT({ ...claims, alg_used: alg }).setProtectedHeader(header).sign(key);
  fs.writeFileSync(path.join(dir, `${alg}.jwt`), jwt);
}
console.log(`wrote jwks.json and ${plan.length} tokens to ${path.relative(process.cwd(), dir)}`);
