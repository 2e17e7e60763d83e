// Live policy changes through the real stack: Envoy reads its listeners (with bffgate's filter
// configuration and the routes) from an LDS file it watches (`bffgate-config render --lds`), and
// a new configuration is rendered next to it and renamed over it. Checked:
//
// - a policy change (orders-read now needs orders:write, which bob lacks) and a route added
//   (/api/reports, a session route to the orders API) take effect without a restart;
// - every session made before survives (same cookies, same Envoy process, no new login), because
//   the VM id and code are unchanged and shared data lives in the process;
// - a configuration Envoy delivers that bffgate refuses (an audience that does not exist,
//   written straight into the file) leaves the previous one serving: requests are decided as
//   before, the log names the field, Envoy counts the rejected update; a good file applies again;
// - with `cookie.revoke_on_key_change`, a configuration whose key ring has another first key
//   ends every session and revokes the grants, once.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  APP, browserPool, envoyStats, idpStats, loginOk,
} from '../lib/client.mjs';
import {
  assertJsonError, bootStack, eventually, readLogSince,
} from '../lib/harness.mjs';
import { renderVariant } from '../lib/variant.mjs';
import { ROOT, RUN_DIR, readSecrets } from '../../scripts/lib/paths.mjs';

const LIVE = path.join(RUN_DIR, 'live');
const LDS = path.join(LIVE, 'lds', 'listeners.yaml');
const SETTINGS = { store: { revoke_on_shutdown: true } };
const NEXT_KEYS = `k9:${crypto.randomBytes(32).toString('base64url')}`;

let boot;
const pool = browserPool();
let alice;
let bob;

/**
 * The shipped template, with the variable `BFFGATE_COOKIE_KEYS_NEXT` (a rotated cookie key ring)
 * visible to the VM too, and with `reports` one more route before the catch-all of /api/.
 */
function liveTemplate({ reports = false } = {}) {
  let t = fs.readFileSync(path.join(ROOT, 'envoy/envoy.template.yaml'), 'utf8');
  const keys = '                              - BFFGATE_COOKIE_KEYS\n';
  assert.ok(t.includes(keys), 'the template lists BFFGATE_COOKIE_KEYS');
  t = t.replaceAll(keys, `${keys}${keys.replace('BFFGATE_COOKIE_KEYS', 'BFFGATE_COOKIE_KEYS_NEXT')}`);
  if (reports) {
    const anchor = '                        - name: public-api\n';
    assert.ok(t.includes(anchor), 'the template has the public-api route');
    const route = '                        - name: reports\n'
      + '                          match: { path_separated_prefix: /api/reports }\n'
      + '                          route: { cluster: orders_api }\n';
    t = t.replace(anchor, route + anchor);
  }
  const file = path.join(LIVE, reports ? 'template-reports.yaml' : 'template.yaml');
  fs.writeFileSync(file, t);
  return file;
}

const ldsUpdates = async () => (await envoyStats('listener_manager.lds')).get('listener_manager.lds.update_success') ?? 0;
const ldsRejects = async () => (await envoyStats('listener_manager.lds')).get('listener_manager.lds.update_rejected') ?? 0;

/** A GET on a new connection: a listener update applies to new connections (an open one keeps
 * the filter chain it started with until it closes or Envoy's drain time ends). */
const get = (b, p) => b.fetchApi('GET', `${APP}${p}`, { fresh: true });

/** Replaces the LDS file the way a deployment would: a new file next to it, renamed over it. */
function moveIntoPlace(text) {
  const tmp = path.join(path.dirname(LDS), `.next-${process.pid}.yaml`);
  fs.writeFileSync(tmp, text);
  fs.renameSync(tmp, LDS);
}

before(async () => {
  fs.rmSync(LIVE, { recursive: true, force: true });
  fs.mkdirSync(path.dirname(LDS), { recursive: true });
  // revoke_on_shutdown on: a replaced configuration's end (its listener drained) must not be
  // taken for a shutdown.
  const bootstrap = renderVariant('live', SETTINGS, { lds: LDS, template: liveTemplate() });
  boot = await bootStack({
    envoyConfig: bootstrap,
    envoyEnv: { BFFGATE_COOKIE_KEYS_NEXT: `${NEXT_KEYS},${readSecrets().BFFGATE_COOKIE_KEYS}` },
  });
  alice = pool.open('alice');
  bob = pool.open('bob');
  await loginOk(alice, 'alice');
  await loginOk(bob, 'bob');
}, { timeout: 120_000 });

after(async () => {
  pool.closeAll();
  if (boot) await boot.stack.stop();
}, { timeout: 60_000 });

test('a policy change and a new route apply without a restart, and every session survives', async () => {
  assert.equal((await get(bob, '/api/orders')).status, 200, 'bob reads orders under the shipped policy');
  const none = await get(alice, '/api/reports');
  assert.equal(none.status, 404, 'no reports route yet');
  assert.equal(none.json?.error_description, 'no such API route', 'Envoy\'s own 404: no route');
  const pid = boot.stack.envoyPid;
  const offset = fs.statSync(boot.envoyLog).size;
  const logins = (await envoyStats('bffgate_logins_completed')).get('wasmcustom.bffgate_logins_completed');
  const updates0 = await ldsUpdates();

  // `make config` for the new policies, rendered next to the live file and renamed over it.
  renderVariant('live-2', {
    ...SETTINGS,
    routes: {
      'orders-read': { scopes: ['orders:read', 'orders:write'] },
      reports: { access: 'session', audience: 'https://orders.api.local', scopes: ['orders:read'] },
    },
  }, { lds: LDS, template: liveTemplate({ reports: true }) });
  const applied = await eventually(async () => (await ldsUpdates()) > updates0
    && (await get(bob, '/api/orders')).status === 403, { ms: 15_000 });
  assert.ok(applied, 'the new policy applies: bob now lacks a scope orders-read needs');
  assertJsonError(await get(bob, '/api/orders'), 403, 'insufficient_scope');

  // The sessions made before the change: same cookies, alice still served, both still signed in.
  const a = await get(alice, '/api/orders');
  assert.equal(a.status, 200, `alice under the new policy: ${a.status} ${a.text}`);
  for (const b of [alice, bob]) assert.equal((await get(b, '/auth/user')).status, 200);
  // The new route: decided by bffgate, forwarded with alice's token to the orders API.
  const r = await get(alice, '/api/reports');
  assert.equal(r.json?.api, 'orders', `the reports route reaches the orders API: ${r.status} ${r.text}`);
  assert.match(String(r.json?.seen?.authorization), /^Bearer eyJ/);
  assertJsonError(await pool.open('nobody').fetchApi('GET', `${APP}/api/reports`), 401, 'unauthenticated');
  // A connection opened before the change (a browser's keep-alive) is closed by Envoy's drain
  // (the stack runs Envoy with --drain-time-s 5 --drain-strategy immediate): the page's next
  // requests get the new configuration too, within seconds.
  const keptAlive = await eventually(async () => (await bob.fetchApi('GET', `${APP}/api/orders`)).status === 403, { ms: 10_000 });
  assert.ok(keptAlive, 'a browser connection from before the change gets the new policy within the drain time');
  assert.equal(boot.stack.envoyPid, pid, 'the same Envoy process');
  // The replaced configuration ends once its listener has drained (5 s): with
  // revoke_on_shutdown on, that is not a shutdown, and the sessions live on.
  const ended = await eventually(() => /a configuration ended, \d+ still live in this VM: sessions are kept/
    .test(readLogSince(boot.envoyLog, offset)), { ms: 15_000 });
  assert.ok(ended, 'the old configuration ended');
  assert.doesNotMatch(readLogSince(boot.envoyLog, offset), /shutdown: \d+ sessions ended/);
  assert.equal((await get(alice, '/api/orders')).status, 200, 'alice after the old configuration ended');
  assert.equal((await get(bob, '/auth/user')).status, 200, 'bob is still signed in');
  assert.equal((await envoyStats('bffgate_logins_completed')).get('wasmcustom.bffgate_logins_completed'), logins, 'no new login');
});

test('a configuration bffgate refuses leaves the previous one serving; a good one applies again', async () => {
  const good = fs.readFileSync(LDS, 'utf8');
  const offset = fs.statSync(boot.envoyLog).size;
  const rejects0 = await ldsRejects();
  const refused0 = (await envoyStats('bffgate_config_refused')).get('wasmcustom.bffgate_config_refused') ?? 0;
  // Straight into the file, past `make config`'s checks: a policy naming an unknown audience.
  const bad = good.replaceAll('"audience": "https://orders.api.local",\\n      "scopes": [\\n        "orders:read"\\n      ]\\n    },\\n    "reports"', '"audience": "https://nowhere.example",\\n      "scopes": [\\n        "orders:read"\\n      ]\\n    },\\n    "reports"');
  const variant = bad !== good ? bad : good.replace('https://orders.api.local', 'https://nowhere.example');
  assert.notEqual(variant, good, 'the bad file differs');
  moveIntoPlace(variant);
  const refused = await eventually(async () => (await ldsRejects()) > rejects0, { ms: 15_000 });
  assert.ok(refused, 'Envoy counts the rejected update (listener_manager.lds.update_rejected)');
  assert.ok((await envoyStats('bffgate_config_refused')).get('wasmcustom.bffgate_config_refused') > refused0, 'and bffgate its refusal');
  const log = readLogSince(boot.envoyLog, offset);
  assert.match(log, /configuration refused: [^\n]*audience/, 'bffgate says which field');
  // Still the previous configuration: bob refused on orders-read, alice served, reports there.
  assertJsonError(await get(bob, '/api/orders'), 403, 'insufficient_scope');
  assert.equal((await get(alice, '/api/orders')).status, 200);
  assert.equal((await get(alice, '/api/reports')).json?.api, 'orders');
  // The shipped policies again: applied, bob reads orders again, the sessions still live.
  const updates0 = await ldsUpdates();
  renderVariant('live-3', SETTINGS, { lds: LDS, template: liveTemplate() });
  const back = await eventually(async () => (await ldsUpdates()) > updates0
    && (await get(bob, '/api/orders')).status === 200, { ms: 15_000 });
  assert.ok(back, 'the good configuration applies after the refused one');
});

test('with cookie.revoke_on_key_change, a configuration whose ring has another first key ends every session and revokes its grant', async () => {
  const a = pool.open('alice-3');
  const b = pool.open('bob-3');
  await loginOk(a, 'alice');
  await loginOk(b, 'bob');
  assert.equal((await get(a, '/api/orders')).status, 200);
  const offset = fs.statSync(boot.envoyLog).size;
  const revocations0 = (await idpStats()).revocations;
  const updates0 = await ldsUpdates();
  // The rotated ring (new key first, the old one still verifying) in a variable the VM sees.
  renderVariant('live-4', {
    ...SETTINGS,
    cookie: { keys_env: 'BFFGATE_COOKIE_KEYS_NEXT', revoke_on_key_change: true },
  }, { lds: LDS, template: liveTemplate() });
  const ended = await eventually(async () => (await ldsUpdates()) > updates0
    && (await get(a, '/api/orders')).status === 401, { ms: 15_000 });
  assert.ok(ended, 'the old sessions end once the new ring is in');
  for (const x of [a, b, alice, bob]) assertJsonError(await get(x, '/api/orders'), 401, 'unauthenticated');
  const line = await eventually(() => /cookie key ring: first key `k1` -> `k9`: ended (\d+) sessions, (\d+) refresh tokens queued/
    .exec(readLogSince(boot.envoyLog, offset)), { ms: 5000 });
  assert.ok(line, 'the log says the ring changed and what ended');
  const [, n, queued] = line.map(Number);
  assert.ok(n >= 4 && queued === n, line[0]);
  assert.equal(readLogSince(boot.envoyLog, offset).match(/cookie key ring: first key/g).length, 1, 'once per Envoy, whichever VM saw it first');
  const revoked = await eventually(async () => (await idpStats()).revocations - revocations0 >= queued, { ms: 15_000 });
  assert.ok(revoked, 'every grant revoked at the provider');
  // A new sign-in gets a cookie signed with the new first key.
  const c = pool.open('after-rotation');
  await loginOk(c, 'alice');
  assert.equal((await get(c, '/api/orders')).status, 200);
});
