// Supply chain: Envoy loads bffgate from a URL with its SHA-256 pinned (`vm_config.code.remote`),
// as docs/supply-chain.md shows, from a local HTTP server on 127.0.0.1.
// - The module built by `make build`, served with its own SHA-256 pinned: both wasm filters (the
//   app's and the operator API's) run it, a login works end to end, the module came over HTTP.
// - The same module with one byte changed (still a valid module: a letter of one of its log
//   messages) and the same pinned SHA-256: Envoy fetches it, refuses it, retries per the
//   retry_policy, gives up and fails closed: every request through either filter is answered 503
//   by Envoy itself (`wasm_fail_stream`), nothing reaches an upstream or the provider, the
//   changed module never runs (its changed log line never appears) and the log says why.
// What Envoy 1.40 does is written down in docs/supply-chain.md.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { adminReady } from '../../scripts/lib/admin.mjs';
import { waitUntil } from '../../scripts/lib/http.mjs';
import { Proc, envWithout, envoyArgs } from '../../scripts/lib/processes.mjs';
import { SECRET_KEYS, findEnvoy, readSecrets } from '../../scripts/lib/paths.mjs';
import {
  APP, Browser, IDP, ROOT, apiCounts, describe as d, idpStats, loginOk, rawRequest, resetApis, startLogin,
} from '../lib/client.mjs';
import { ACCEPT_JSON, bootStack, readLogSince } from '../lib/harness.mjs';
import { accessEntries, logSize, operatorCount, operatorRequest } from '../lib/observe.mjs';
import { remoteCodeVariant, renderVariant } from '../lib/variant.mjs';
import { REQUIRED, UNUSED, exportsOf } from '../../scripts/wasm-exports.mjs';

const WASM = path.join(ROOT, 'target/wasm32-wasip1/release/bffgate.wasm');
// This file's Envoys log into their own directory: the log lines read here are this file's only.
const LOG_DIR = '.run/logs/supply-chain-test';
const ENVOY_LOG = path.join(ROOT, LOG_DIR, 'envoy.log');
// config:debug has the fetcher's reason for refusing a module ("data is invalid").
const LOG_LEVELS = { componentLogLevel: 'wasm:debug,config:debug', logDir: LOG_DIR };
// Fast retries, so that the refusal is final within a second (Envoy's default: one retry after ~1 s).
const RETRY_POLICY = { num_retries: 2, retry_back_off: { base_interval: '0.1s', max_interval: '0.2s' } };
// A text of the module's own log line ("configured: N route policies, ..."), and the same text
// with one letter changed: the tampered module is still a valid module that would run and say so.
const ORIGINAL_TEXT = ' route policies, ';
const TAMPERED_TEXT = ' Route policies, ';

let original;
let sha256;
let tampered;
let server;
let uri; // where the server serves the module
let served; // the bytes the server answers GET /bffgate.wasm with
const fetches = []; // one entry per GET /bffgate.wasm: 'original' | 'tampered'
let config;
let boot;
let envoy; // the Envoy this file starts itself for the tampered module

before(async () => {
  if (!fs.existsSync(WASM)) throw new Error(`${path.relative(ROOT, WASM)} not found: run \`make build\``);
  original = fs.readFileSync(WASM);
  sha256 = crypto.createHash('sha256').update(original).digest('hex');
  const at = original.indexOf(ORIGINAL_TEXT);
  assert.ok(at > 0, `the module holds the text ${JSON.stringify(ORIGINAL_TEXT)}`);
  tampered = Buffer.from(original);
  tampered.write(TAMPERED_TEXT, at, 'latin1');
  assert.equal(original.filter((byte, i) => byte !== tampered[i]).length, 1, 'exactly one byte differs');

  server = http.createServer((req, res) => {
    if (req.method !== 'GET' || req.url !== '/bffgate.wasm') {
      res.writeHead(404).end();
      return;
    }
    fetches.push(served === original ? 'original' : 'tampered');
    res.writeHead(200, { 'content-type': 'application/wasm', 'content-length': served.length }).end(served);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0 }, resolve);
  });
  uri = `http://127.0.0.1:${server.address().port}/bffgate.wasm`;
  const { file, modules } = remoteCodeVariant('supply-chain-remote', renderVariant('supply-chain', {}), {
    uri, sha256, retryPolicy: RETRY_POLICY,
  });
  assert.equal(modules, 2, 'both wasm filters (app and operator API) load the remote module');
  config = file;
  const text = fs.readFileSync(config, 'utf8');
  assert.ok(!/filename: \S*bffgate\.wasm/.test(text), 'no local bffgate.wasm left in the config');
  assert.equal(text.split(`sha256: ${sha256}`).length - 1, 2, 'both filters pin the sha256');
}, { timeout: 120_000 });

after(async () => {
  await envoy?.stop();
  if (boot) await boot.stack.stop();
  server?.close();
}, { timeout: 30_000 });

test('the built module exports the callbacks bffgate implements and none it leaves to the SDK (make build removes them: Envoy then never calls them)', () => {
  const names = exportsOf(original);
  for (const n of REQUIRED) assert.ok(names.includes(n), `exports ${n}`);
  for (const n of UNUSED) assert.ok(!names.includes(n), `does not export ${n}`);
});

test('the module fetched over HTTP with its sha256 pinned runs bffgate: login, token swap, operator API', async () => {
  served = original;
  const offset = logSize(ENVOY_LOG);
  boot = await bootStack({ envoyConfig: config, ...LOG_LEVELS }); // ready: GET / answered 200 through the filter
  assert.ok(fetches.length >= 1 && fetches.every((f) => f === 'original'), `Envoy fetched the module from the server: ${fetches}`);

  const b = new Browser({ name: 'supply-chain' });
  try {
    const r = await startLogin(b);
    assert.equal(r.status, 302, d(r));
    assert.ok(r.location.startsWith(`${IDP}/auth?`), `redirect to the provider: ${r.location}`);
    await loginOk(b, 'alice');
    const orders = await b.get('/api/orders', { headers: ACCEPT_JSON });
    assert.equal(orders.status, 200, d(orders));
    assert.equal(orders.json.seen.claims.aud, 'https://orders.api.local', d(orders));
    // The operator API's filter is the other one rewritten to `remote`: it runs too, in the same
    // VM (it sees alice's session).
    assert.ok(await operatorCount('alice') >= 1, 'the operator API sees the session');
  } finally {
    b.close();
  }
  await boot.stack.stopEnvoy(); // flushes the access log
  const log = readLogSince(ENVOY_LOG, offset);
  assert.ok(/configured: \d+ route policies/.test(log), 'the module logged its configuration');
  const access = accessEntries(ENVOY_LOG, offset);
  assert.ok(access.length >= 4, `the requests are in the access log (${access.length})`);
  assert.deepEqual(access.filter((a) => a.details === 'wasm_fail_stream').map((a) => a.line), [], 'no request failed for want of the module');
});

test('a tampered module (one byte changed, same pinned sha256) is refused: Envoy fails closed and says why', async () => {
  assert.ok(boot, 'the stack of the first test is up (IdP and APIs)');
  await boot.stack.stopEnvoy();
  served = tampered;
  fetches.length = 0;
  await resetApis();
  const idpBefore = await idpStats();
  const offset = logSize(ENVOY_LOG);

  // Started by hand: the stack's readiness (GET / answers 200) can never come true here.
  envoy = new Proc('envoy', {
    cmd: findEnvoy(),
    args: envoyArgs({ config, concurrency: 2, logLevel: 'info', componentLogLevel: LOG_LEVELS.componentLogLevel }),
    env: { ...envWithout(SECRET_KEYS), ...readSecrets() },
    logFile: ENVOY_LOG,
    who: 'supply-chain.test',
  }).start();
  // Envoy is ready once its init has finished, i.e. once both fetches have given up.
  await waitUntil('Envoy with the tampered module (admin /ready)', adminReady(boot.stack.urls.admin), {
    timeoutMs: 30_000,
    check: () => { if (envoy.exited) throw new Error(`Envoy ${envoy.describeExit()}:\n${readLogSince(ENVOY_LOG, offset).slice(-3000)}`); },
  });

  assert.ok(fetches.length >= 1 + RETRY_POLICY.num_retries && fetches.every((f) => f === 'tampered'),
    `Envoy fetched the tampered module and retried (${fetches.length} fetches)`);

  const b = new Browser({ name: 'supply-chain-tampered' });
  try {
    const answers = [
      await b.get('/', { headers: { accept: 'text/html' } }),
      await b.navigate(`${APP}/auth/login`),
      await b.get('/api/orders', { headers: ACCEPT_JSON }),
      await b.get('/api/public/hello', { headers: ACCEPT_JSON }),
      await operatorRequest('GET', '/sessions?sub=alice'),
    ];
    for (const r of answers) {
      assert.equal(r.status, 503, `fail closed, answered by Envoy: ${d(r)}`);
      assert.equal(r.headers.location, undefined, `no redirect to the provider: ${d(r)}`);
      assert.ok(!String(r.text).includes('"error"'), `no answer of bffgate's: ${d(r)}`);
    }
  } finally {
    b.close();
  }
  assert.deepEqual(await apiCounts(), { orders: 0, profile: 0, public: 0 }, 'no request reached an upstream');
  assert.deepEqual(await idpStats(), idpBefore, 'nothing reached the provider');

  await envoy.stop(); // flushes the access log
  const access = accessEntries(ENVOY_LOG, offset);
  assert.equal(access.length, 4, `the app's four requests in the access log: ${access.map((a) => a.line).join('\n')}`);
  for (const a of access) assert.equal(a.details, 'wasm_fail_stream', `Envoy failed the stream for want of the module: ${a.line}`);
  const log = readLogSince(ENVOY_LOG, offset);
  // Why, in Envoy's words: the fetcher's verdict (config:debug), the retries giving up, the plugin not loaded.
  assert.ok(log.includes(`fetch remote data [uri = ${uri}]: data is invalid`), 'the log names the refused fetch');
  for (const line of [
    'Retry limit exceeded for fetching data from remote data source',
    'Plugin bffgate failed to load',
    'Plugin bffgate_admin failed to load',
  ]) assert.ok(log.includes(line), `the log says: ${line}`);
  assert.ok(!log.includes(TAMPERED_TEXT.trim()), 'the tampered module never ran (its changed log line never appears)');
  assert.ok(!/configured: \d+ route policies/.test(log), 'no module was configured');
});
