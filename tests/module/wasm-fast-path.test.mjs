// The fast path's demands on its host, counted on the built module itself: the module runs in
// Node's V8 with scripts/wasm-profile.mjs playing Envoy's side of the proxy-wasm ABI (every
// import the module has, over plain maps), fed the native core bench's signed-in session
// (tests/fast_path_fixture.rs checks natively that it takes the fast path, then writes it).
// Envoy itself is not here: every behaviour is tested through the real stack by the other files;
// this file pins what makes a request cheap in Envoy and cannot be counted there: how many host
// calls and calls into the VM a repeated fast-path request makes, and which ones. A change that
// adds one (a shared-data read the record cache should have saved, a filter-state write without
// an access log asking, a metric or a log line per request) fails here, where `make bench`'s
// CPU figures would only drift within their noise.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { before, test } from 'node:test';

import { DEFAULT_WASM, runFastPath, writeFixture } from '../../scripts/wasm-profile.mjs';
import { ROOT } from '../../scripts/lib/paths.mjs';

const FIXTURE = path.join(ROOT, 'target/wasm-fast-path-fixture.json');
// What one repeated fast-path request asks of the host: read the request's headers (one call for
// the map) and its route's name, the clock, the record cache's shard write count; replace
// `authorization` and `cookie`; look for a step-up challenge and a planted bffgate cookie in the
// response (one absent-header read each).
const FAST_PATH_HOST_CALLS = {
  proxy_get_header_map_pairs: 1,
  proxy_get_property: 1,
  proxy_get_current_time_nanoseconds: 1,
  proxy_get_metric: 1,
  proxy_replace_header_map_value: 2,
  proxy_get_header_map_value: 2,
};

before(() => {
  assert.ok(fs.existsSync(DEFAULT_WASM), 'make build first');
  writeFixture(FIXTURE);
});

test('a repeated fast-path request: the token forwarded, 8 host calls, 7 calls into the VM, nothing else', () => {
  const r = runFastPath({ fixture: FIXTURE, requests: 3000 });
  assert.equal(r.forwarded.cookie, 'theme=dark', "the site's cookie is kept, bffgate's stripped");
  // Every request but one took the fast path; the one that did not is the session's request-rate
  // signal (the clock stands still here, so thousands of requests fall in one window).
  assert.ok(r.taken >= r.requests - 1, `fast path taken ${r.taken} of ${r.requests}: ${JSON.stringify(r.missed)}`);
  assert.deepEqual(Object.keys(r.missed).filter((k) => k !== 'anomaly'), []);
  assert.deepEqual(r.hostCalls, FAST_PATH_HOST_CALLS);
  // Callbacks: context create, request headers, response headers, done, delete. Allocations: the
  // header map and the route name the host hands over.
  assert.deepEqual(r.vmCalls, { callbacks: 5, allocations: 2 });
});

test('with access_log_state on, the decision and the subject are written for the access log: two more host calls', () => {
  const r = runFastPath({ fixture: FIXTURE, requests: 500, configuration: { access_log_state: true } });
  assert.deepEqual(r.hostCalls, { ...FAST_PATH_HOST_CALLS, proxy_set_property: 2 });
});
