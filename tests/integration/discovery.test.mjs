// Discovery that fails, through the real Envoy and the demo provider: bffgate configured with an
// issuer whose document cannot be had (a path with no document: 404) or names another issuer
// (`http://127.0.0.1:9000` while the provider says `http://localhost:9000`). Each is one audit
// line naming what was wrong (both issuers for a mismatch), the metric, 503 idp_unavailable as
// JSON for a login, no VM trap, and public routes served as before; a login right after is not
// another read (the failure is kept for a few seconds).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, test } from 'node:test';

import { APP, Browser, describe as d, rawRequest } from '../lib/client.mjs';
import { ACCEPT_JSON, assertJsonError, bootStack, eventually } from '../lib/harness.mjs';
import { auditEvents, prometheus } from '../lib/observe.mjs';
import { renderVariant } from '../lib/variant.mjs';

let boot = null;
after(async () => {
  await boot?.stack.stop();
});

async function failingIssuer(name, issuer, why) {
  await boot?.stack.stop();
  boot = await bootStack({ envoyConfig: renderVariant(name, { provider: { issuer } }) });
  const off = fs.statSync(boot.envoyLog).size;
  const b = new Browser({ name });
  const r = await b.get(`${APP}/auth/login?return_to=%2F`, { headers: ACCEPT_JSON });
  assertJsonError(r, 503, 'idp_unavailable', `${name}: login without metadata`);
  assert.equal(r.setCookies.length, 0, 'no flow cookie for a login that cannot start');
  const failed = await eventually(() => auditEvents(boot.envoyLog, off).filter((e) => e.event === 'discovery_failed'), { ms: 3000 });
  assert.equal(failed.length, 1, `one discovery_failed line: ${failed.map((e) => e.line).join('\n')}`);
  assert.match(failed[0].reason, why, failed[0].line);
  assert.equal(failed[0].url, `${issuer}/.well-known/openid-configuration`);
  // Again at once: answered from the kept failure, no second read.
  const again = await b.get(`${APP}/auth/login?return_to=%2F`, { headers: ACCEPT_JSON });
  assertJsonError(again, 503, 'idp_unavailable');
  assert.equal(auditEvents(boot.envoyLog, off).filter((e) => e.event === 'discovery_failed').length, 1, 'not read again within 5 s');
  const m = (await prometheus()).get('bffgate_discovery_failed') ?? 0;
  assert.ok(m >= 1, `bffgate_discovery_failed = ${m}`);
  // The VM is fine: public routes and the filter's own endpoints answer.
  const pub = await rawRequest('GET', `${APP}/api/public/hello`);
  assert.equal(pub.status, 200, d(pub));
  const user = await b.get(`${APP}/auth/user`, { headers: ACCEPT_JSON });
  assertJsonError(user, 401, 'unauthenticated');
  assert.equal((await prometheus()).get('bffgate_vm_memory_kib') !== undefined, true);
}

test('an issuer whose discovery document is not there: 503 idp_unavailable, one audit line', async () => {
  await failingIssuer('discovery-404', 'http://localhost:9000/no-such-issuer', /404/);
});

test('a document naming another issuer is refused, and the line names both', async () => {
  await failingIssuer('discovery-mismatch', 'http://127.0.0.1:9000', /http:\/\/localhost:9000.*http:\/\/127\.0\.0\.1:9000|http:\/\/127\.0\.0\.1:9000.*http:\/\/localhost:9000/);
});
