// The second OpenID provider on its own: Glewlwyd 2.7 from Debian (scripts/provider2.mjs), with
// no Envoy and no bffgate. The browser's side goes through tests/lib/client.mjs's Browser (cookie
// jar) the way Glewlwyd's login page does it (tests/lib/glewlwyd.mjs); the client's side (token,
// revocation, introspection, userinfo) is plain fetch, as bffgate's callouts would be. Checks
// what docs/providers/glewlwyd.md states: discovery and its exact issuer, code flow with S256
// PKCE, the token responses, RS256 ID and access tokens verified against the JWKS, resource
// indicators, refresh (and rotation when asked for), revocation, introspection, RP-initiated
// logout and the back-channel logout token.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { after, before, test } from 'node:test';

import { createLocalJWKSet, jwtVerify } from 'jose';

import { startProvider2 } from '../../scripts/provider2.mjs';
import { Browser } from '../lib/client.mjs';
import { authorizeAtGlewlwyd, logoutAtGlewlwyd } from '../lib/glewlwyd.mjs';

const ORDERS = 'https://orders.api.local';
const PROFILE = 'https://profile.api.local';
const SCOPES = 'openid profile offline_access orders:read orders:write';

let p; // the running provider (startProvider2's handle)
let env; // its environment
let disc; // discovery document
let jwks; // local JWKS (jose)
let secret;
let logStart = 0; // byte offset of this file's part of the provider's log
const seen = new Set(); // every token, code and secret this file handled, for the log check
const browsers = [];
const backchannel = { server: null, url: '', received: [] };

function browser(name) {
  const b = new Browser({ name });
  browsers.push(b);
  return b;
}

before(async () => {
  // A loopback receiver for back-channel logout tokens (Glewlwyd POSTs them form-encoded).
  backchannel.server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      backchannel.received.push({ method: req.method, path: req.url, type: req.headers['content-type'], body });
      res.writeHead(200).end();
    });
  });
  await new Promise((resolve) => backchannel.server.listen(0, '127.0.0.1', resolve));
  backchannel.url = `http://127.0.0.1:${backchannel.server.address().port}/auth/backchannel-logout`;
  env = { ...process.env, BFFGATE_BACKCHANNEL_LOGOUT_URI: backchannel.url, BFFGATE_ROTATE_REFRESH: '' };
  try {
    logStart = fs.statSync('.run/logs/glewlwyd.log').size;
  } catch {
    logStart = 0;
  }
  p = await startProvider2({ env });
  console.log(`glewlwyd answered discovery ${p.startMs} ms after start`);
  secret = p.clientSecret();
  seen.add(secret);
}, { timeout: 60_000 });

after(async () => {
  for (const b of browsers) b.close();
  if (p) await p.stop();
  backchannel.server?.close();
}, { timeout: 30_000 });

// ---------------------------------------------------------------------------------------------
// helpers: the client's side

const basic = () => `Basic ${Buffer.from(`${p.clientId}:${secret}`).toString('base64')}`;

/** POSTs a form to a provider endpoint as the client (client_secret_basic unless `auth` says otherwise). */
async function clientPost(url, fields, { auth = 'basic' } = {}) {
  const body = new URLSearchParams(fields);
  const headers = { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' };
  if (auth === 'basic') headers.authorization = basic();
  if (auth === 'post') {
    body.set('client_id', p.clientId);
    body.set('client_secret', secret);
  }
  const res = await fetch(url, { method: 'POST', headers, body, redirect: 'manual', signal: AbortSignal.timeout(10_000) });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  for (const k of ['access_token', 'refresh_token', 'id_token']) if (typeof json?.[k] === 'string') seen.add(json[k]);
  return { status: res.status, type: res.headers.get('content-type'), text, json };
}

const token = (fields, o) => clientPost(disc.token_endpoint, fields, o);

function pkce() {
  const verifier = crypto.randomBytes(32).toString('base64url');
  return { verifier, challenge: crypto.createHash('sha256').update(verifier).digest('base64url') };
}

function authorizeUrl({
  scope = SCOPES, resources = [ORDERS, PROFILE], challenge, state, nonce = crypto.randomBytes(12).toString('base64url'), extra = {},
}) {
  const u = new URL(disc.authorization_endpoint);
  const q = {
    response_type: 'code', client_id: p.clientId, redirect_uri: p.redirectUri, scope, state, nonce,
    ...(challenge ? { code_challenge: challenge, code_challenge_method: 'S256' } : {}),
    ...extra,
  };
  for (const [k, v] of Object.entries(q)) if (v !== undefined && v !== null) u.searchParams.set(k, v);
  for (const r of resources) u.searchParams.append('resource', r);
  return u.href;
}

/**
 * Signs in as `user` in a fresh browser and exchanges the code (with `resource` when given).
 * Returns { b, back, tokens, res, verifier, state, nonce }.
 */
async function login(user, { scope, resources, tokenResource, auth } = {}) {
  const b = browser(`login-${user}`);
  const { verifier, challenge } = pkce();
  const state = crypto.randomBytes(12).toString('base64url');
  const nonce = crypto.randomBytes(12).toString('base64url');
  const back = await authorizeAtGlewlwyd(b, authorizeUrl({ scope, resources, challenge, state, nonce }), user, user, { redirectUri: p.redirectUri });
  assert.equal(`${back.origin}${back.pathname}`, p.redirectUri, 'back at the redirect URI');
  assert.equal(back.searchParams.get('error'), null, `authorization error ${back.searchParams.get('error')}`);
  assert.equal(back.searchParams.get('state'), state, 'state round-trips');
  assert.equal(back.searchParams.get('iss'), p.issuer, 'RFC 9207 iss in the authorization response');
  const code = back.searchParams.get('code');
  assert.ok(code, 'a code');
  seen.add(code);
  const fields = { grant_type: 'authorization_code', code, redirect_uri: p.redirectUri, code_verifier: verifier };
  if (tokenResource) fields.resource = tokenResource;
  const res = await token(fields, { auth });
  return { b, back, code, tokens: res.json, res, verifier, state, nonce };
}

async function verify(jwt, claims = {}) {
  return jwtVerify(jwt, jwks, { issuer: p.issuer, algorithms: ['RS256'], ...claims });
}

async function userinfo(accessToken) {
  const res = await fetch(disc.userinfo_endpoint, { headers: { authorization: `Bearer ${accessToken}` }, signal: AbortSignal.timeout(10_000) });
  const text = await res.text();
  return { status: res.status, json: res.ok ? JSON.parse(text) : undefined };
}

// ---------------------------------------------------------------------------------------------
// tests (in order: later ones use what earlier ones established)

test('discovery: the exact issuer, its endpoints, S256 PKCE required, RS256, and a JWKS', async () => {
  const res = await fetch(p.discovery, { signal: AbortSignal.timeout(10_000) });
  assert.equal(res.status, 200);
  disc = await res.json();
  console.log(`discovery issuer: ${JSON.stringify(disc.issuer)}`);
  assert.equal(disc.issuer, p.issuer);
  if (!process.env.BFFGATE_GLEWLWYD_PORT) assert.equal(disc.issuer, 'http://localhost:9100/api/oidc', 'no trailing slash');
  assert.equal(p.discovery, `${disc.issuer}/.well-known/openid-configuration`, 'discovery lives under the issuer');
  for (const [k, suffix] of Object.entries({
    authorization_endpoint: '/auth', token_endpoint: '/token', userinfo_endpoint: '/userinfo', jwks_uri: '/jwks',
    revocation_endpoint: '/revoke', introspection_endpoint: '/introspect', end_session_endpoint: '/end_session',
  })) {
    assert.equal(disc[k], `${p.issuer}${suffix}`, k);
  }
  assert.deepEqual(disc.code_challenge_methods_supported, ['S256']);
  assert.equal(disc.require_code_challenge, true);
  assert.ok(disc.id_token_signing_alg_values_supported.includes('RS256'));
  assert.deepEqual(disc.token_endpoint_auth_methods_supported, ['client_secret_basic', 'client_secret_post']);
  // Supported (see the logout test) but not announced:
  assert.equal(disc.backchannel_logout_supported, undefined);
  assert.equal(disc.frontchannel_logout_supported, undefined);
  // No OIDC discovery at the server root: only under the issuer.
  assert.equal((await fetch(`${p.base}/.well-known/openid-configuration`)).status, 404);

  const keys = await (await fetch(disc.jwks_uri)).json();
  assert.equal(keys.keys.length, 1);
  assert.equal(keys.keys[0].kty, 'RSA');
  assert.equal(keys.keys[0].alg, 'RS256');
  assert.ok(keys.keys[0].kid);
  assert.equal(keys.keys[0].d, undefined, 'public JWKS has no private part');
  jwks = createLocalJWKSet(keys);
});

let alice; // login('alice') with both resources at the authorization request

test('alice: code + S256 PKCE login; token response with access, refresh and ID token; RS256 JWTs', async () => {
  alice = await login('alice', { resources: [ORDERS, PROFILE] });
  const { res, tokens } = alice;
  assert.equal(res.status, 200, res.text);
  assert.match(res.type, /application\/json/);
  for (const k of ['access_token', 'refresh_token', 'id_token']) assert.equal(typeof tokens[k], 'string', k);
  assert.equal(tokens.token_type, 'bearer');
  assert.equal(tokens.expires_in, 300);
  assert.equal(tokens.scope, SCOPES, 'granted scope in the code exchange response');

  const id = await verify(tokens.id_token, { audience: p.clientId });
  assert.equal(id.protectedHeader.alg, 'RS256');
  assert.equal(id.payload.sub, 'alice');
  assert.equal(id.payload.nonce, alice.nonce);
  assert.equal(id.payload.azp, p.clientId);
  assert.equal(id.payload.name, 'Alice Demo');
  assert.equal(id.payload.preferred_username, 'alice');
  assert.deepEqual(id.payload.amr, ['password']);
  assert.match(id.payload.sid, /^[A-Za-z0-9]{32}$/, 'sid (session management on)');

  // Two resources at the authorization request and none at the token request: the audience is
  // the scope list, as a single string.
  const at = await verify(tokens.access_token);
  assert.equal(at.protectedHeader.typ, 'at+jwt');
  assert.equal(at.payload.aud, SCOPES);
  assert.equal(at.payload.scope, SCOPES);
  assert.equal(at.payload.sub, 'alice');
  assert.equal(at.payload.client_id, p.clientId);
  assert.equal(at.payload.exp - at.payload.iat, 300);
});

test('resource indicators: one resource gives that audience; the token request picks one of those authorized', async () => {
  const one = await login('alice', { resources: [ORDERS] });
  assert.equal(one.res.status, 200, one.res.text);
  assert.equal((await verify(one.tokens.access_token)).payload.aud, ORDERS);

  const pick = await login('alice', { resources: [ORDERS, PROFILE], tokenResource: PROFILE });
  assert.equal(pick.res.status, 200, pick.res.text);
  const at = await verify(pick.tokens.access_token);
  assert.equal(at.payload.aud, PROFILE);
  assert.equal(at.payload.scope, SCOPES, 'the resource does not narrow the scope');

  // A resource the authorization request did not carry is refused at the token endpoint...
  const none = await login('alice', { resources: [], tokenResource: ORDERS });
  assert.equal(none.res.status, 403);
  assert.equal(none.res.json?.error, 'invalid_target');
  // ...and an unknown one at the authorization endpoint.
  const b = browser('bad-resource');
  const { challenge } = pkce();
  const back = await authorizeAtGlewlwyd(b, authorizeUrl({ resources: ['https://evil.example'], challenge, state: 's1' }), 'alice', 'alice', { redirectUri: p.redirectUri });
  assert.equal(back.searchParams.get('error'), 'invalid_target');
  assert.equal(back.searchParams.get('code'), null);
});

test('PKCE is required, S256 only; a wrong verifier or a replayed code gets no tokens', async () => {
  const b = browser('pkce');
  let back = await authorizeAtGlewlwyd(b, authorizeUrl({ state: 's2' }), 'alice', 'alice', { redirectUri: p.redirectUri });
  assert.equal(back.searchParams.get('error'), 'invalid_request', 'no code_challenge');
  assert.equal(back.searchParams.get('code'), null);
  back = await authorizeAtGlewlwyd(b, authorizeUrl({ state: 's3', extra: { code_challenge: 'x'.repeat(43), code_challenge_method: 'plain' } }), 'alice', 'alice', { redirectUri: p.redirectUri });
  assert.equal(back.searchParams.get('error'), 'invalid_request', 'plain');
  // A nonce is required in the code flow too.
  back = await authorizeAtGlewlwyd(b, authorizeUrl({ state: 's6', nonce: null, challenge: pkce().challenge }), 'alice', 'alice', { redirectUri: p.redirectUri });
  assert.equal(back.searchParams.get('error'), 'invalid_request', 'no nonce');
  assert.equal(back.searchParams.get('error_description'), 'nonce required');

  const { challenge } = pkce();
  back = await authorizeAtGlewlwyd(b, authorizeUrl({ challenge, state: 's4' }), 'alice', 'alice', { redirectUri: p.redirectUri });
  const code = back.searchParams.get('code');
  seen.add(code);
  const wrong = await token({ grant_type: 'authorization_code', code, redirect_uri: p.redirectUri, code_verifier: pkce().verifier });
  assert.equal(wrong.status, 403);
  assert.equal(wrong.json?.error, 'invalid_code');

  const ok = await login('alice');
  assert.equal(ok.res.status, 200);
  const replay = await token({ grant_type: 'authorization_code', code: ok.code, redirect_uri: p.redirectUri, code_verifier: ok.verifier });
  assert.equal(replay.status, 403);
  assert.equal(replay.json?.error, 'invalid_code');
  // auth-type-code-revoke-replayed: the replay also revokes what the code gave.
  const r = await token({ grant_type: 'refresh_token', refresh_token: ok.tokens.refresh_token });
  assert.equal(r.status, 400);
});

test('client authentication: client_secret_post works too; a wrong secret is a bare 400', async () => {
  const viaPost = await login('alice', { auth: 'post' });
  assert.equal(viaPost.res.status, 200, viaPost.res.text);
  const bad = await fetch(disc.token_endpoint, {
    method: 'POST',
    headers: { authorization: `Basic ${Buffer.from(`${p.clientId}:wrong`).toString('base64')}`, 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: alice.tokens.refresh_token }),
  });
  assert.equal(bad.status, 400);
  assert.equal(await bad.text(), '', 'no error body');
});

test('bob: scopes he does not hold are dropped from the grant', async () => {
  const bob = await login('bob');
  assert.equal(bob.res.status, 200, bob.res.text);
  assert.equal(bob.tokens.scope, 'openid profile offline_access orders:read');
  const id = await verify(bob.tokens.id_token, { audience: p.clientId });
  assert.equal(id.payload.sub, 'bob');
});

test('userinfo: the profile claims, and e-mail only with the email scope', async () => {
  const u = await userinfo(alice.tokens.access_token);
  assert.equal(u.status, 200);
  assert.deepEqual(u.json, { sub: 'alice', name: 'Alice Demo', preferred_username: 'alice' });
  const withEmail = await login('alice', { scope: 'openid email', resources: [] });
  const e = await userinfo(withEmail.tokens.access_token);
  assert.deepEqual(e.json, { sub: 'alice', email: 'alice@example.test' });
  const id = await verify(withEmail.tokens.id_token, { audience: p.clientId });
  assert.equal(id.payload.email, 'alice@example.test', 'e-mail is in the ID token as well');
});

test('refresh: a new access token with scope, no new refresh token; the old one stays valid; no down-scoping', async () => {
  const first = await token({ grant_type: 'refresh_token', refresh_token: alice.tokens.refresh_token });
  assert.equal(first.status, 200, first.text);
  assert.deepEqual(Object.keys(first.json).sort(), ['access_token', 'expires_in', 'iat', 'scope', 'token_type']);
  assert.equal(first.json.scope, SCOPES);
  assert.notEqual(first.json.access_token, alice.tokens.access_token);
  const at = await verify(first.json.access_token);
  assert.equal(at.payload.aud, SCOPES, 'refresh without resource: the scope list again');

  const again = await token({ grant_type: 'refresh_token', refresh_token: alice.tokens.refresh_token });
  assert.equal(again.status, 200, 'no rotation: the same refresh token works again');

  const narrower = await token({ grant_type: 'refresh_token', refresh_token: alice.tokens.refresh_token, scope: 'openid orders:read' });
  assert.equal(narrower.status, 200);
  assert.equal(narrower.json.scope, SCOPES, '`scope` on refresh is ignored');

  const toOrders = await token({ grant_type: 'refresh_token', refresh_token: alice.tokens.refresh_token, resource: ORDERS });
  assert.equal(toOrders.status, 200, toOrders.text);
  assert.equal((await verify(toOrders.json.access_token)).payload.aud, ORDERS, 'refresh with one of the authorized resources');
  const elsewhere = await token({ grant_type: 'refresh_token', refresh_token: alice.tokens.refresh_token, resource: 'https://other.api.local' });
  assert.equal(elsewhere.status, 400);
  assert.equal(elsewhere.json?.error, 'invalid_target');
});

test('introspection and revocation (RFC 7662, RFC 7009) with the client credentials', async () => {
  const s = await login('alice');
  const intro = await clientPost(disc.introspection_endpoint, { token: s.tokens.access_token });
  assert.equal(intro.status, 200);
  assert.equal(intro.json.active, true);
  assert.equal(intro.json.sub, 'alice');
  assert.equal(intro.json.client_id, p.clientId);
  const introRt = await clientPost(disc.introspection_endpoint, { token: s.tokens.refresh_token, token_type_hint: 'refresh_token' });
  assert.equal(introRt.json.active, true);
  assert.equal(introRt.json.token_type, 'refresh_token');
  const anon = await fetch(disc.introspection_endpoint, {
    method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ token: s.tokens.access_token }),
  });
  assert.equal(anon.status, 401, 'introspection needs client authentication');
  const anonRevoke = await fetch(disc.revocation_endpoint, {
    method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams({ token: s.tokens.refresh_token }),
  });
  assert.equal(anonRevoke.status, 401, 'so does revocation');

  // Revoke the access token: Glewlwyd's own endpoints refuse it from then on (the JWT itself
  // still verifies until it expires).
  const ra = await clientPost(disc.revocation_endpoint, { token: s.tokens.access_token, token_type_hint: 'access_token' });
  assert.equal(ra.status, 200);
  assert.equal(ra.text, '');
  assert.equal((await userinfo(s.tokens.access_token)).status, 401);
  assert.equal((await clientPost(disc.introspection_endpoint, { token: s.tokens.access_token })).json.active, false);

  // Revoke the refresh token (client_secret_post works although discovery lists only basic).
  const rr = await clientPost(disc.revocation_endpoint, { token: s.tokens.refresh_token, token_type_hint: 'refresh_token' }, { auth: 'post' });
  assert.equal(rr.status, 200);
  const after = await token({ grant_type: 'refresh_token', refresh_token: s.tokens.refresh_token });
  assert.equal(after.status, 400);
  assert.equal(after.text, '', 'a refused refresh token: 400 with no error body');
  // Unknown tokens are "revoked" as well (RFC 7009 §2.2).
  assert.equal((await clientPost(disc.revocation_endpoint, { token: 'not-a-token' })).status, 200);
});

test('RP-initiated logout with id_token_hint: back-channel logout token, tokens of the session disabled, back to the app', async () => {
  const s = await login('alice');
  const sid = (await verify(s.tokens.id_token, { audience: p.clientId })).payload.sid;
  backchannel.received.length = 0;
  const u = new URL(disc.end_session_endpoint);
  u.searchParams.set('id_token_hint', s.tokens.id_token);
  u.searchParams.set('post_logout_redirect_uri', p.postLogoutRedirectUri);
  u.searchParams.set('state', 'bye');
  const out = await logoutAtGlewlwyd(s.b, u.href);
  assert.equal(out.params.get('sid'), sid);
  assert.equal(out.params.get('client_id'), p.clientId);
  assert.equal(out.deleted.status, 200);
  assert.equal(out.landing?.href, `${p.postLogoutRedirectUri}?state=bye`);

  // The back-channel logout token: a thread in Glewlwyd sends it; wait for it (bounded).
  for (let i = 0; i < 50 && backchannel.received.length === 0; i += 1) await new Promise((r) => setTimeout(r, 100));
  assert.equal(backchannel.received.length, 1, 'one logout token');
  const msg = backchannel.received[0];
  assert.equal(msg.method, 'POST');
  assert.equal(msg.path, new URL(backchannel.url).pathname);
  assert.match(msg.type, /application\/x-www-form-urlencoded/);
  const logoutToken = new URLSearchParams(msg.body).get('logout_token');
  seen.add(logoutToken);
  const lt = await verify(logoutToken, { audience: p.clientId });
  assert.equal(lt.protectedHeader.typ, 'JWT', 'not logout+jwt');
  assert.equal(lt.payload.sub, 'alice');
  assert.equal(lt.payload.sid, sid);
  assert.deepEqual(lt.payload.events, { 'http://schemas.openid.net/event/backchannel-logout': {} });
  assert.equal(lt.payload.exp, undefined, 'no exp');
  assert.equal(lt.payload.nonce, undefined);

  // Tokens of that session: refresh refused, access token refused by userinfo.
  assert.equal((await token({ grant_type: 'refresh_token', refresh_token: s.tokens.refresh_token })).status, 400);
  assert.equal((await userinfo(s.tokens.access_token)).status, 401);
  // Signed out at the provider: the next authorization shows the login page again.
  const again = await s.b.navigate(authorizeUrl({ challenge: pkce().challenge, state: 's5' }) + '&g_continue');
  assert.equal(again.status, 302);
  assert.match(new URL(again.location).pathname, /\/login\.html$/);

  // Without a valid id_token_hint the endpoint sends to a "single logout" page, with no sid.
  const noHint = await s.b.navigate(disc.end_session_endpoint + '?id_token_hint=x.y.z');
  assert.equal(noHint.status, 302);
  assert.equal(new URL(noHint.location).searchParams.get('prompt'), 'single_logout');
  assert.equal((await s.b.navigate(disc.end_session_endpoint)).status, 200, 'no parameters at all: an empty 200');
});

test('BFFGATE_ROTATE_REFRESH=1: one-time refresh tokens; reusing an old one ends the chain', async () => {
  await p.stop();
  p = await startProvider2({ env: { ...env, BFFGATE_ROTATE_REFRESH: '1' } });
  const s = await login('alice');
  const r1 = await token({ grant_type: 'refresh_token', refresh_token: s.tokens.refresh_token });
  assert.equal(r1.status, 200, r1.text);
  assert.equal(typeof r1.json.refresh_token, 'string', 'a new refresh token');
  assert.notEqual(r1.json.refresh_token, s.tokens.refresh_token);
  const reuse = await token({ grant_type: 'refresh_token', refresh_token: s.tokens.refresh_token });
  assert.equal(reuse.status, 400, 'the old one is spent');
  const next = await token({ grant_type: 'refresh_token', refresh_token: r1.json.refresh_token });
  assert.equal(next.status, 400, 'replay detected: the newest one is revoked too');
});

test('back-channel logout to https with the demo certificate: refused, unless BFFGATE_GLEWLWYD_TLS_NO_VERIFY=1', async () => {
  const received = [];
  const tls = https.createServer({ cert: fs.readFileSync('.run/tls/cert.pem'), key: fs.readFileSync('.run/tls/key.pem') }, (req, res) => {
    req.resume();
    req.on('end', () => { received.push(req.url); res.writeHead(200).end(); });
  });
  await new Promise((resolve) => tls.listen(0, '127.0.0.1', resolve));
  const uri = `https://localhost:${tls.address().port}/auth/backchannel-logout`;
  const logoutOnce = async () => {
    const s = await login('alice');
    const u = new URL(disc.end_session_endpoint);
    u.searchParams.set('id_token_hint', s.tokens.id_token);
    await logoutAtGlewlwyd(s.b, u.href);
  };
  try {
    for (const noVerify of ['', '1']) {
      await p.stop();
      const from = fs.statSync(p.logFile).size;
      p = await startProvider2({ env: { ...env, BFFGATE_BACKCHANNEL_LOGOUT_URI: uri, BFFGATE_GLEWLWYD_TLS_NO_VERIFY: noVerify } });
      await logoutOnce();
      const failed = () => fs.readFileSync(p.logFile).subarray(from).toString('utf8').includes('run_backchannel_logout_thread - Error ulfius_send_http_request');
      for (let i = 0; i < 50 && received.length === 0 && !failed(); i += 1) await new Promise((r) => setTimeout(r, 100));
      if (noVerify) {
        assert.deepEqual(received, ['/auth/backchannel-logout'], 'delivered without verification');
      } else {
        assert.ok(failed(), 'Glewlwyd logs the failed back-channel call');
        assert.equal(received.length, 0, 'nothing delivered: the certificate is not in the system store');
      }
    }
  } finally {
    tls.close();
  }
});

test('the provider log holds no token, code or secret', () => {
  const log = fs.readFileSync(p.logFile).subarray(logStart).toString('utf8');
  assert.ok(log.includes('Glewlwyd started'), 'this run is in the log');
  const leaked = [...seen].filter((s) => s && log.includes(s));
  if (leaked.length) console.log(`leaked: ${leaked.map((s) => `${s.length} chars at ${log.indexOf(s)}`).join(', ')}`);
  assert.ok(seen.size > 40, `${seen.size} values checked`);
  assert.equal(leaked.length, 0, `${leaked.length} secret value(s) in ${p.logFile}`);
});
