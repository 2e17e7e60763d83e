// How a provider is asked for "a token for this API", through the real stack: Envoy with bffgate
// configured per audience with `indicator: resource | audience | scope`, against the demo
// provider speaking Auth0's dialect (`audience` parameter, resource ignored) and Entra ID's
// (resource-qualified scopes, `scp`), both emulated by demo/idp.mjs (BFFGATE_IDP_PROFILE), and
// against providers that ignore what bffgate asks:
//   - auth0 and entra: the login audience and a second one obtained by a refresh grant each get
//     a token whose `aud` is exactly that API, route scopes hold (alice writes orders, bob may
//     not), and tokens are renewed;
//   - a token response without `scope` (BFFGATE_IDP_OMIT_SCOPE) is read as "as requested":
//     scope-protected routes keep working across renewals;
//   - an indicator the provider ignores: the token it issues for another audience is refused
//     (403, audit token_refused with the aud it had, bffgate_tokens_refused) and never reaches
//     the API; the session and its login audience are untouched.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, test } from 'node:test';

import { APP, Browser, describe as d, idpStats, jwtPayload, loginOk } from '../lib/client.mjs';
import {
  ACCEPT_JSON, CSRF, assertJsonError, bootStack, eventually,
} from '../lib/harness.mjs';
import { auditEvents, prometheus } from '../lib/observe.mjs';
import { renderVariant } from '../lib/variant.mjs';

const ORDERS = 'https://orders.api.local';
const PROFILE = 'https://profile.api.local';

let boot = null;
/** (Re)starts the stack with the provider's `env` and bffgate's setting `overrides`. */
async function start(name, env, overrides) {
  await boot?.stack.stop();
  boot = null;
  boot = await bootStack({ envoyConfig: renderVariant(name, overrides), env });
  return boot;
}
after(async () => {
  await boot?.stack.stop();
});

async function call(b, method, path, o = {}) {
  const r = await b.fetchApi(method, `${APP}${path}`, { headers: { ...ACCEPT_JSON, ...(o.headers || {}) }, ...o });
  const bearer = r.json?.seen?.authorization ?? null;
  const jwt = bearer && /^Bearer [\w-]+\.[\w-]+\.[\w-]*$/.test(bearer);
  return { res: r, bearer, claims: jwt ? jwtPayload(bearer.replace(/^Bearer /, '')) : null };
}

const audOf = (claims) => (Array.isArray(claims.aud) ? claims.aud : [claims.aud]);

/** alice and bob through a profile: per-audience tokens, route scopes, a renewal. */
async function exercise(profile) {
  const off = fs.statSync(boot.envoyLog).size;
  const s0 = await idpStats();
  const alice = new Browser({ name: `${profile}-alice` });
  await loginOk(alice, 'alice');
  const o = await call(alice, 'GET', '/api/orders');
  assert.equal(o.res.status, 200, d(o.res));
  assert.ok(audOf(o.claims).includes(ORDERS), `${profile}: orders token aud ${JSON.stringify(o.claims.aud)}`);
  assert.ok(!audOf(o.claims).includes(PROFILE));
  const w = await call(alice, 'POST', '/api/orders', { json: { item: 'x' }, headers: CSRF });
  assert.equal(w.res.status, 201, `${profile}: alice may write orders: ${d(w.res)}`);
  const p = await call(alice, 'GET', '/api/profile');
  assert.equal(p.res.status, 200, d(p.res));
  assert.ok(audOf(p.claims).includes(PROFILE), `${profile}: profile token aud ${JSON.stringify(p.claims.aud)}`);
  assert.ok(!audOf(p.claims).includes(ORDERS), 'the profile token is useless at the orders API');
  if (profile === 'entra') {
    assert.equal(p.claims.scope, undefined, 'Entra-style tokens carry scp, not scope');
    assert.ok(String(o.claims.scp).split(' ').includes('orders:read'), `scp: ${o.claims.scp}`);
  }

  const bob = new Browser({ name: `${profile}-bob` });
  await loginOk(bob, 'bob');
  assert.equal((await call(bob, 'GET', '/api/orders')).res.status, 200);
  const bw = await call(bob, 'POST', '/api/orders', { json: { item: 'x' }, headers: CSRF });
  assertJsonError(bw.res, 403, 'insufficient_scope', `${profile}: bob may not write orders`);

  // 8 s tokens: the orders token is renewed for the same audience.
  const renewed = await eventually(async () => {
    const r = await call(alice, 'GET', '/api/orders');
    assert.equal(r.res.status, 200, d(r.res));
    return r.bearer !== o.bearer ? r : null;
  }, { ms: 15_000, every: 500 });
  assert.ok(renewed, `${profile}: renewed within 15 s`);
  assert.ok(audOf(renewed.claims).includes(ORDERS));
  assert.equal((await call(alice, 'POST', '/api/orders', { json: { item: 'y' }, headers: CSRF })).res.status, 201,
    'scopes still hold after the renewal');

  const s1 = await idpStats();
  const issued = (aud) => (s1.issued?.[aud] || 0) - (s0.issued?.[aud] || 0);
  assert.ok(issued(ORDERS) >= 3, `${profile}: orders tokens issued ${JSON.stringify(s1.issued)}`);
  assert.ok(issued(PROFILE) >= 1, `${profile}: profile tokens issued ${JSON.stringify(s1.issued)}`);
  const refused = auditEvents(boot.envoyLog, off).filter((e) => e.event === 'token_refused');
  assert.deepEqual(refused.map((e) => e.line), [], `${profile}: no token refused`);
}

test('Auth0 dialect: indicator audience for the login audience and a refresh-grant audience', async () => {
  await start('profile-auth0', { BFFGATE_IDP_PROFILE: 'auth0', BFFGATE_ACCESS_TOKEN_TTL: '8' }, {
    audiences: {
      [ORDERS]: { acquire: 'login', indicator: 'audience' },
      [PROFILE]: { acquire: 'refresh', indicator: 'audience', scopes: null },
    },
  });
  await exercise('auth0');
});

test('Entra ID dialect: indicator scope with resource-qualified scopes, scp in the tokens', async () => {
  await start('profile-entra', { BFFGATE_IDP_PROFILE: 'entra', BFFGATE_ACCESS_TOKEN_TTL: '8' }, {
    client: { scopes: ['openid', 'profile', 'offline_access'] },
    audiences: {
      [ORDERS]: { acquire: 'login', indicator: 'scope', scopes: [`${ORDERS}/.default`] },
      [PROFILE]: { acquire: 'refresh', indicator: 'scope', scopes: [`${PROFILE}/profile`] },
    },
  });
  await exercise('entra');
});

test('token responses without scope: route scopes hold across renewals (RFC 6749 5.1)', async () => {
  await start('profile-omit-scope', { BFFGATE_IDP_OMIT_SCOPE: '1', BFFGATE_ACCESS_TOKEN_TTL: '6' }, {});
  const alice = new Browser({ name: 'omit-alice' });
  await loginOk(alice, 'alice');
  const first = await call(alice, 'GET', '/api/orders');
  assert.equal(first.res.status, 200, d(first.res));
  let last = first.bearer;
  for (let i = 0; i < 2; i += 1) {
    const renewed = await eventually(async () => {
      const r = await call(alice, 'GET', '/api/orders');
      assert.equal(r.res.status, 200, `after renewal ${i}: ${d(r.res)}`);
      return r.bearer !== last ? r : null;
    }, { ms: 15_000, every: 500 });
    assert.ok(renewed, `renewal ${i + 1}`);
    last = renewed.bearer;
    const wr = await call(alice, 'POST', '/api/orders', { json: { item: 'z' }, headers: CSRF });
    assert.equal(wr.res.status, 201, `orders:write still granted after renewal ${i + 1}: ${d(wr.res)}`);
  }
});

test('an indicator the provider ignores: the token for another audience is refused, never forwarded', async () => {
  // The Entra-style provider ignores `resource`: a refresh grant for the profile audience
  // without that API's scopes comes back with a JWT for the login audience (orders).
  await start('profile-mismatch', { BFFGATE_IDP_PROFILE: 'entra', BFFGATE_ACCESS_TOKEN_TTL: '300' }, {
    client: { scopes: ['openid', 'profile', 'offline_access'] },
    audiences: {
      [ORDERS]: { acquire: 'login', indicator: 'scope', scopes: [`${ORDERS}/.default`] },
      [PROFILE]: { acquire: 'refresh', indicator: 'resource', scopes: null },
    },
  });
  const off = fs.statSync(boot.envoyLog).size;
  const before = (await prometheus()).get('bffgate_tokens_refused') ?? 0;
  const alice = new Browser({ name: 'mismatch-alice' });
  await loginOk(alice, 'alice');
  const p = await call(alice, 'GET', '/api/profile');
  assertJsonError(p.res, 403, 'forbidden', 'a token for another audience');
  assert.equal(p.bearer, null, 'the profile API never got a token');
  const refused = auditEvents(boot.envoyLog, off).find((e) => e.event === 'token_refused');
  assert.ok(refused, 'a token_refused audit line');
  assert.equal(refused.audience, PROFILE);
  assert.equal(refused.reason, 'audience');
  assert.match(refused.detail, /orders\.api\.local/, `the aud it had: ${refused.line}`);
  const afterN = (await prometheus()).get('bffgate_tokens_refused') ?? 0;
  assert.ok(afterN >= before + 1, `bffgate_tokens_refused ${before} -> ${afterN}`);
  assert.equal((await call(alice, 'GET', '/api/orders')).res.status, 200, 'the login audience is untouched');
});

test('opaque access tokens cannot be checked: forwarded as issued (documented limit)', async () => {
  // oidc-provider (default dialect) ignores `audience`: without `resource` a refresh grant
  // gives an opaque token (for its userinfo endpoint). bffgate cannot read its audience, so it
  // forwards it, and the API, which verifies its tokens, refuses it: the API stays the judge.
  await start('profile-opaque', { BFFGATE_ACCESS_TOKEN_TTL: '300' }, {
    audiences: { [PROFILE]: { acquire: 'refresh', indicator: 'audience', scopes: null } },
  });
  const alice = new Browser({ name: 'opaque-alice' });
  await loginOk(alice, 'alice');
  const p = await call(alice, 'GET', '/api/profile');
  assert.ok(p.bearer, 'a bearer was forwarded');
  assert.equal(p.claims, null, 'it is not a JWT');
  assert.equal(p.res.status, 401, `the API refused it: ${d(p.res)}`);
});
