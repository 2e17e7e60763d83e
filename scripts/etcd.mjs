#!/usr/bin/env node
// Starts and stops a real, loopback-only etcd v3 cluster for bffgate fleet mode, and a tiny
// client for etcd's gRPC-JSON gateway (the same HTTP/JSON surface the filter will call with
// dispatch_http_call).
//
// Library:
//   import { startEtcdCluster, gateway } from './scripts/etcd.mjs';
//   const c = await startEtcdCluster({ members: 3, basePort: 23790 });
//   c.endpoints            // ['http://127.0.0.1:23790', 'http://127.0.0.1:23792', ...]
//   await c.stopMember(0); await c.startMember(0); await c.stop();
//   const g = gateway(c.endpoints[0]);
//   await g.put('k', 'v'); await g.get('k');
// CLI:
//   node scripts/etcd.mjs run    [--members N] [--base-port P]   foreground until SIGINT/SIGTERM
//   node scripts/etcd.mjs verify [--members N] [--base-port P]   runs the checks in
//                                                                 docs/fleet-notes.md, prints timings
//
// Ports: member i listens for clients on basePort + 2i and for peers on basePort + 2i + 1, on
// 127.0.0.1 only. Data: <dataDir>/<basePort>/m<i>, wiped at every start (a fresh cluster per
// run). Logs: <logDir>/etcd-<basePort>-m<i>.log (appended). Every wait is bounded; members are
// stopped on stop(), on process exit and on SIGINT/SIGTERM/SIGHUP, and (where util-linux
// `setpriv` exists) get a parent-death signal so that a SIGKILLed parent leaves no orphans.
// No npm dependencies.

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

import { isMain, parseArgs } from './lib/cli.mjs';
import { request, sleep, waitUntil } from './lib/http.mjs';
import { tail } from './lib/logs.mjs';
import { ROOT } from './lib/paths.mjs';
import { Proc, commandExists } from './lib/processes.mjs';

export { ROOT };
const HOST = '127.0.0.1';

// ---------------------------------------------------------------- gateway client

const b64 = (s) => Buffer.from(s).toString('base64');
const unb64 = (s) => (s === undefined ? undefined : Buffer.from(s, 'base64').toString());

/** The key just after every key that starts with `prefix` (for range_end). */
export function prefixEnd(prefix) {
  const b = Buffer.from(prefix);
  for (let i = b.length - 1; i >= 0; i--) {
    if (b[i] < 0xff) {
      const out = Buffer.from(b.subarray(0, i + 1));
      out[i] += 1;
      return out;
    }
  }
  return Buffer.from([0]); // whole keyspace
}

// Connections to the members are kept alive between calls (as a browser or the filter would).
const agent = new http.Agent({ keepAlive: true });

/** One request to a member; { status, json, ms } or { status: 0, error, ms } (timeout, refused...). */
async function memberRequest(method, url, { timeoutMs, headers, body }) {
  const t0 = performance.now();
  try {
    const r = await request(method, url, { headers, body, timeoutMs, agent });
    return { status: r.status, json: r.json ?? { raw: r.text }, ms: performance.now() - t0 };
  } catch (e) {
    return { status: 0, error: e.code === 'ETIMEDOUT' ? 'timeout' : (e.code ?? e.message), ms: performance.now() - t0 };
  }
}

/**
 * POSTs `body` (an object) as JSON to `endpoint + path` with a timeout.
 * Resolves { status, json, ms } or { status: 0, error, ms } on timeout / connection failure.
 */
export function gatewayCall(endpoint, p, body, { timeoutMs = 2000, contentType = 'application/json' } = {}) {
  return memberRequest('POST', endpoint + p, {
    timeoutMs,
    headers: { 'content-type': contentType, accept: 'application/json' },
    body: JSON.stringify(body ?? {}),
  });
}

/** A small client over one gateway endpoint; keys and values are strings (base64 on the wire). */
export function gateway(endpoint, { timeoutMs = 2000 } = {}) {
  const call = (p, body, o) => gatewayCall(endpoint, p, body, { timeoutMs, ...o });
  return {
    endpoint,
    call,
    /** Range on one key; resolves { status, kv?: {key, value, mod_revision, lease, ...}, header } */
    async get(key, opts = {}) {
      const r = await call('/v3/kv/range', { key: b64(key), ...opts });
      const kv = r.json?.kvs?.[0];
      return { ...r, kv: kv && { ...kv, key: unb64(kv.key), value: unb64(kv.value) } };
    },
    /** Range over a prefix. */
    async list(prefix, opts = {}) {
      const r = await call('/v3/kv/range', { key: b64(prefix), range_end: prefixEnd(prefix).toString('base64'), ...opts });
      return { ...r, kvs: (r.json?.kvs ?? []).map((kv) => ({ ...kv, key: unb64(kv.key), value: unb64(kv.value) })) };
    },
    put(key, value, { lease, prevKv } = {}) {
      const body = { key: b64(key), value: b64(value) };
      if (lease) body.lease = String(lease);
      if (prevKv) body.prev_kv = true;
      return call('/v3/kv/put', body);
    },
    del(key, { prefix = false } = {}) {
      const body = { key: b64(key) };
      if (prefix) body.range_end = prefixEnd(key).toString('base64');
      return call('/v3/kv/deleterange', body);
    },
    /** Put only if the key's mod_revision is still `modRevision` (0 = the key must not exist). */
    cas(key, modRevision, value, { lease } = {}) {
      const put = { key: b64(key), value: b64(value) };
      if (lease) put.lease = String(lease);
      return call('/v3/kv/txn', {
        compare: [{ target: 'MOD', result: 'EQUAL', key: b64(key), mod_revision: String(modRevision) }],
        success: [{ request_put: put }],
        failure: [{ request_range: { key: b64(key) } }],
      });
    },
    txn(body) { return call('/v3/kv/txn', body); },
    leaseGrant(ttl) { return call('/v3/lease/grant', { TTL: String(ttl) }); },
    leaseKeepAlive(id) { return call('/v3/lease/keepalive', { ID: String(id) }); },
    leaseTtl(id, keys = false) { return call('/v3/lease/timetolive', { ID: String(id), keys }); },
    leaseRevoke(id) { return call('/v3/lease/revoke', { ID: String(id) }); },
    status() { return call('/v3/maintenance/status', {}); },
    health(timeoutMs2 = 1000) { return memberRequest('GET', `${endpoint}/health`, { timeoutMs: timeoutMs2 }); },
  };
}

// ---------------------------------------------------------------- cluster

function findEtcd(bin) {
  if (bin) return bin;
  for (const p of ['/usr/bin/etcd', '/usr/local/bin/etcd']) if (fs.existsSync(p)) return p;
  if (commandExists('etcd')) return 'etcd';
  throw new Error('etcd not found: run scripts/etcd-setup.sh');
}

/**
 * Starts an etcd cluster of `members` members on loopback and waits until every member reports
 * healthy. Rejects (after stopping whatever it started) if that takes longer than `startTimeoutMs`.
 */
export async function startEtcdCluster({
  members = 3,
  basePort = 23790,
  dataDir = '.run/etcd',
  logDir = '.run/logs',
  startTimeoutMs = 20000,
  heartbeatMs = 100,
  electionMs = 1000,
  etcdBin,
  extraArgs = [],
  quiet = true,
} = {}) {
  const bin = findEtcd(etcdBin);
  const absData = path.resolve(ROOT, dataDir, String(basePort));
  const absLogs = path.resolve(ROOT, logDir);
  fs.rmSync(absData, { recursive: true, force: true });
  fs.mkdirSync(absData, { recursive: true, mode: 0o700 });
  fs.mkdirSync(absLogs, { recursive: true });

  const token = `bffgate-${basePort}-${crypto.randomBytes(6).toString('hex')}`;
  const m = Array.from({ length: members }, (_, i) => ({
    name: `m${i}`,
    client: `http://${HOST}:${basePort + 2 * i}`,
    peer: `http://${HOST}:${basePort + 2 * i + 1}`,
    dir: path.join(absData, `m${i}`),
    log: path.join(absLogs, `etcd-${basePort}-m${i}.log`),
    proc: null,
  }));
  const initialCluster = m.map((x) => `${x.name}=${x.peer}`).join(',');

  function spawnMember(i) {
    const x = m[i];
    if (x.proc?.running) return;
    const args = [
      '--name', x.name,
      '--data-dir', x.dir,
      '--listen-client-urls', x.client,
      '--advertise-client-urls', x.client,
      '--listen-peer-urls', x.peer,
      '--initial-advertise-peer-urls', x.peer,
      '--initial-cluster', initialCluster,
      '--initial-cluster-token', token,
      // ignored once the data dir exists (a restart rejoins with its own membership)
      '--initial-cluster-state', 'new',
      '--heartbeat-interval', String(heartbeatMs),
      '--election-timeout', String(electionMs),
      '--enable-v2=false',
      '--logger', 'zap',
      '--log-outputs', 'stderr',
      // sessions churn revisions: keep history short so the backend stays small
      '--auto-compaction-mode', 'periodic',
      '--auto-compaction-retention', '10m',
      ...extraArgs,
    ];
    x.proc = new Proc(`etcd ${x.name}`, { cmd: bin, args, logFile: x.log, who: 'etcd' }).start();
  }

  async function stopMember(i, { timeoutMs = 5000 } = {}) {
    await m[i].proc?.stop(timeoutMs);
  }

  const running = (i) => Boolean(m[i].proc?.running);

  /** Waits until members `which` answer GET /health with health "true" (bounded). */
  async function waitHealthy(which, timeoutMs) {
    const pending = new Set(which);
    const names = () => [...pending].map((i) => `m${i}`).join(',');
    const tails = () => [...pending].map((i) => tail(m[i].log, 15)).join('\n---\n');
    await waitUntil(`etcd members ${names()} healthy`, async () => {
      for (const i of [...pending]) {
        const h = await gateway(m[i].client).health(500);
        if (h.status === 200 && String(h.json?.health) === 'true') pending.delete(i);
      }
      return pending.size === 0 || `not healthy yet: ${names()}`;
    }, {
      timeoutMs,
      everyMs: 100,
      check: () => {
        for (const i of pending) if (!running(i)) throw new Error(`etcd member m${i} exited during start:\n${tail(m[i].log, 15)}`);
      },
      detail: () => `:\n${tails()}`,
    });
  }

  /** Stops every member (SIGTERM, SIGKILL after `timeoutMs`). */
  async function stop({ timeoutMs = 5000 } = {}) {
    await Promise.all(m.map((_, i) => stopMember(i, { timeoutMs })));
  }

  try {
    for (let i = 0; i < members; i++) spawnMember(i);
    await waitHealthy(m.map((_, i) => i), startTimeoutMs);
  } catch (e) {
    await stop();
    throw e;
  }
  if (!quiet) console.error(`etcd: ${members} members healthy: ${m.map((x) => x.client).join(' ')}`);

  return {
    endpoints: m.map((x) => x.client),
    peers: m.map((x) => x.peer),
    logs: m.map((x) => x.log),
    pids: () => m.map((x) => x.proc?.pid ?? null),
    running,
    stopMember,
    /** Restarts member i on its existing data; waits (bounded) until it is healthy when `wait`. */
    async startMember(i, { wait = true, timeoutMs = startTimeoutMs } = {}) {
      spawnMember(i);
      if (wait) await waitHealthy([i], timeoutMs);
    },
    waitHealthy: (which = m.map((_, i) => i), timeoutMs = startTimeoutMs) => waitHealthy(which, timeoutMs),
    stop,
  };
}

// ---------------------------------------------------------------- verify

const assert = (cond, msg) => { if (!cond) throw new Error('verify: ' + msg); };
const r1 = (x) => Math.round(x * 10) / 10;

/** Exercises the gateway the way the bffgate etcd store will; returns measurements. */
export async function verify(cluster, log = console.log) {
  const out = {};
  const [e0, e1, e2] = cluster.endpoints;
  const g = gateway(e0, { timeoutMs: 3000 });

  const st = await g.status();
  assert(st.status === 200, 'maintenance/status ' + JSON.stringify(st));
  out.version = st.json.version;
  log('status', JSON.stringify(st.json));

  // put / get with base64 keys and values
  const put = await g.put('bffgate/s/demo', 'hello');
  log('put ->', put.status, JSON.stringify(put.json));
  assert(put.status === 200, 'put');
  const got = await g.get('bffgate/s/demo');
  log('range ->', got.status, JSON.stringify(got.json));
  assert(got.kv?.value === 'hello', 'get value');
  const missing = await g.get('bffgate/s/none');
  log('range missing ->', missing.status, JSON.stringify(missing.json));
  assert(missing.status === 200 && !missing.json.kvs, 'missing key has no kvs');

  // read through another member (linearizable by default; serializable on request)
  const other = await gateway(e1).get('bffgate/s/demo');
  assert(other.kv?.value === 'hello', 'read via member 1');
  const ser = await gateway(e2).get('bffgate/s/demo', { serializable: true });
  assert(ser.kv?.value === 'hello', 'serializable read via member 2');

  // form-urlencoded content-type (what the filter's dispatch currently sends) with a JSON body
  const form = await gatewayCall(e0, '/v3/kv/range', { key: b64('bffgate/s/demo') }, { contentType: 'application/x-www-form-urlencoded' });
  log('range with content-type form-urlencoded ->', form.status, JSON.stringify(form.json));
  out.formContentTypeOk = form.status === 200 && unb64(form.json?.kvs?.[0]?.value) === 'hello';

  // CAS on mod_revision
  const rev = got.kv.mod_revision;
  const ok = await g.cas('bffgate/s/demo', rev, 'v2');
  log('txn cas (current rev) ->', ok.status, JSON.stringify(ok.json));
  assert(ok.status === 200 && ok.json.succeeded === true, 'cas should succeed');
  const bad = await g.cas('bffgate/s/demo', rev, 'v3');
  log('txn cas (stale rev) ->', bad.status, JSON.stringify(bad.json));
  assert(bad.status === 200 && !bad.json.succeeded, 'cas with stale rev should fail');
  const create = await g.cas('bffgate/s/new', 0, 'first');
  const create2 = await g.cas('bffgate/s/new', 0, 'second');
  log('txn create-if-absent ->', JSON.stringify(create.json), '| again ->', JSON.stringify(create2.json));
  assert(create.json.succeeded === true && !create2.json.succeeded, 'create-if-absent');

  // lease grant, put with lease, keepalive, time-to-live, expiry
  const lease = await g.leaseGrant(2);
  log('lease grant ->', lease.status, JSON.stringify(lease.json));
  assert(lease.status === 200 && lease.json.ID, 'lease grant');
  const id = lease.json.ID;
  const lp = await g.put('bffgate/s/leased', 'x', { lease: id });
  assert(lp.status === 200, 'put with lease');
  const lg = await g.get('bffgate/s/leased');
  log('range leased ->', JSON.stringify(lg.json));
  assert(lg.kv?.lease === id, 'kv carries lease id');
  const ka = await g.leaseKeepAlive(id);
  log('lease keepalive ->', ka.status, JSON.stringify(ka.json));
  const ttl = await g.leaseTtl(id, true);
  log('lease timetolive ->', ttl.status, JSON.stringify(ttl.json));
  const t0 = Date.now();
  let gone = false;
  while (Date.now() - t0 < 8000) {
    const r = await g.get('bffgate/s/leased');
    if (!r.kv) { gone = true; break; }
    await sleep(100);
  }
  out.leaseExpiryMs = Date.now() - t0;
  log(`lease (TTL 2 s) key gone after ${out.leaseExpiryMs} ms of polling`);
  assert(gone, 'leased key should expire');
  const ka2 = await g.leaseKeepAlive(id);
  log('keepalive on expired lease ->', ka2.status, JSON.stringify(ka2.json));
  const lpx = await g.put('bffgate/s/leased', 'x', { lease: id });
  log('put with expired lease ->', lpx.status, JSON.stringify(lpx.json));
  const rv = await g.leaseGrant(60);
  const rvk = await g.put('bffgate/s/revoked', 'y', { lease: rv.json.ID });
  const rvr = await g.leaseRevoke(rv.json.ID);
  const rvg = await g.get('bffgate/s/revoked');
  log('lease revoke ->', rvr.status, JSON.stringify(rvr.json), '| key after revoke present:', Boolean(rvg.kv), rvk.status);

  // deleterange: one key, then a prefix
  const d1 = await g.del('bffgate/s/new');
  log('deleterange key ->', d1.status, JSON.stringify(d1.json));
  assert(d1.json.deleted === '1', 'deleted one');
  await g.put('bffgate/t/a', '1'); await g.put('bffgate/t/b', '2');
  const d2 = await g.del('bffgate/t/', { prefix: true });
  log('deleterange prefix ->', d2.status, JSON.stringify(d2.json));
  assert(d2.json.deleted === '2', 'deleted prefix');

  // take (read + delete atomically): deleterange with prev_kv; only one caller gets prev_kvs
  await g.put('bffgate/p/state', 'login');
  const take1 = await g.call('/v3/kv/deleterange', { key: b64('bffgate/p/state'), prev_kv: true });
  const take2 = await g.call('/v3/kv/deleterange', { key: b64('bffgate/p/state'), prev_kv: true });
  log('deleterange prev_kv (take) ->', JSON.stringify(take1.json), '| again ->', JSON.stringify(take2.json));
  assert(take1.json.prev_kvs?.length === 1 && !take2.json.prev_kvs, 'take once');
  // lock: create-only on CREATE revision, with a lease; delete-if-unchanged via txn
  const ll = await g.leaseGrant(5);
  const lockTxn = () => g.txn({
    compare: [{ target: 'CREATE', result: 'EQUAL', key: b64('bffgate/l/x'), create_revision: '0' }],
    success: [{ request_put: { key: b64('bffgate/l/x'), value: b64('owner'), lease: ll.json.ID } }],
  });
  const lk1 = await lockTxn();
  const lk2 = await lockTxn();
  log('lock (CREATE == 0) ->', JSON.stringify(lk1.json), '| again ->', JSON.stringify(lk2.json));
  assert(lk1.json.succeeded === true && !lk2.json.succeeded, 'lock once');
  const lr = await g.get('bffgate/l/x');
  const unlock = await g.txn({
    compare: [{ target: 'MOD', result: 'EQUAL', key: b64('bffgate/l/x'), mod_revision: lr.kv.mod_revision }],
    success: [{ request_delete_range: { key: b64('bffgate/l/x') } }],
  });
  log('unlock (delete if unchanged) ->', JSON.stringify(unlock.json));
  assert(unlock.json.succeeded === true && unlock.json.responses[0].response_delete_range.deleted === '1', 'unlock');

  // bad request shapes
  const badKey = await g.call('/v3/kv/range', { key: 'not base64!' });
  log('range with non-base64 key ->', badKey.status, JSON.stringify(badKey.json));
  const nf = await g.call('/v3/kv/nope', {});
  log('unknown path ->', nf.status, JSON.stringify(nf.json));

  // latency with quorum (sequential, bounded count)
  out.latency3 = await timings(g, 50);
  log('latency, 3 of 3 up:', JSON.stringify(out.latency3));

  // one member down: still works
  let t = performance.now();
  await cluster.stopMember(2);
  log(`stopped m2 in ${r1(performance.now() - t)} ms`);
  const one = await gateway(e0).put('bffgate/s/demo', 'with-2');
  assert(one.status === 200, 'write with 2 of 3');
  out.latency2 = await timings(g, 50);
  log('latency, 2 of 3 up:', JSON.stringify(out.latency2));
  const stopped = await gateway(e2).get('bffgate/s/demo');
  log('request to a stopped member ->', stopped.status, stopped.error, `${r1(stopped.ms)} ms`);
  out.stoppedMember = { error: stopped.error, ms: r1(stopped.ms) };

  // two down: no quorum
  t = performance.now();
  await cluster.stopMember(1);
  log(`stopped m1 in ${r1(performance.now() - t)} ms`);
  out.noQuorum = {};
  const nq = gateway(e0, { timeoutMs: 10000 });
  for (const [name, fn] of [
    ['put', () => nq.put('bffgate/s/demo', 'no-quorum')],
    ['range (linearizable)', () => nq.get('bffgate/s/demo')],
    ['range (serializable)', () => nq.get('bffgate/s/demo', { serializable: true })],
    ['txn', () => nq.cas('bffgate/s/demo', 1, 'x')],
    ['lease grant', () => nq.leaseGrant(10)],
    ['lease keepalive', () => nq.leaseKeepAlive(rv.json.ID)],
    ['put (again)', () => nq.put('bffgate/s/demo', 'no-quorum')],
    ['health', () => nq.health(3000)],
  ]) {
    const r = await fn();
    const summary = { status: r.status, ms: r1(r.ms), error: r.error, body: r.json && JSON.stringify(r.json).slice(0, 160) };
    out.noQuorum[name] = summary;
    log(`no quorum: ${name} ->`, JSON.stringify(summary));
  }
  // a short client timeout bounds it regardless
  const short = await gateway(e0, { timeoutMs: 300 }).put('bffgate/s/demo', 'x');
  out.noQuorum['put with 300 ms client timeout'] = { status: short.status, error: short.error, ms: r1(short.ms) };
  log('no quorum: put with 300 ms client timeout ->', JSON.stringify(out.noQuorum['put with 300 ms client timeout']));

  // restart members: quorum is back
  t = performance.now();
  await cluster.startMember(1);
  out.rejoinMs = r1(performance.now() - t);
  log(`restarted m1, healthy after ${out.rejoinMs} ms`);
  const back = await gateway(e1).put('bffgate/s/demo', 'back');
  assert(back.status === 200, 'write after quorum restored');
  t = performance.now();
  await cluster.startMember(2);
  log(`restarted m2, healthy after ${r1(performance.now() - t)} ms`);
  const via2 = await gateway(e2).get('bffgate/s/demo');
  assert(via2.kv?.value === 'back', 'restarted member serves current data');
  log('value read via restarted m2:', via2.kv.value);
  return out;
}

async function timings(g, n) {
  const ms = { range: [], put: [], txn: [] };
  for (let i = 0; i < n; i++) {
    let r = await g.get('bffgate/s/demo'); ms.range.push(r.ms);
    const p = await g.put('bffgate/s/lat', String(i)); ms.put.push(p.ms);
    r = await g.get('bffgate/s/lat');
    const c = await g.cas('bffgate/s/lat', r.kv.mod_revision, 'c' + i); ms.txn.push(c.ms);
  }
  const stat = (a) => { a.sort((x, y) => x - y); return { p50: r1(a[a.length >> 1]), p99: r1(a[Math.floor(a.length * 0.99)]), max: r1(a[a.length - 1]) }; };
  return { n, range: stat(ms.range), put: stat(ms.put), txn: stat(ms.txn) };
}

// ---------------------------------------------------------------- CLI

const USAGE = 'usage: node scripts/etcd.mjs run|verify [--members N] [--base-port P] [--data-dir D] [--log-dir L]';

async function main(argv) {
  let cmd;
  let flags;
  try {
    ({ cmd, flags } = parseArgs(argv));
  } catch (err) {
    console.error(`${err.message}\n${USAGE}`);
    process.exit(2);
  }
  const o = {
    members: Number(flags.members || 3),
    basePort: Number(flags['base-port'] || 23790),
    dataDir: flags['data-dir'] || '.run/etcd',
    logDir: flags['log-dir'] || '.run/logs',
    quiet: false,
  };
  if (cmd === 'run') {
    const c = await startEtcdCluster(o);
    console.log(JSON.stringify({ endpoints: c.endpoints, pids: c.pids(), logs: c.logs }));
    let stopping = false;
    const bye = async (sig) => {
      if (stopping) return;
      stopping = true;
      console.error(`etcd: ${sig}: stopping`);
      await c.stop();
      process.exit(0);
    };
    for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(s, () => bye(s));
    setInterval(() => {}, 1 << 30); // stay in the foreground
  } else if (cmd === 'verify') {
    const t0 = Date.now();
    const c = await startEtcdCluster(o);
    console.log(`cluster healthy after ${Date.now() - t0} ms: ${c.endpoints.join(' ')}`);
    const guard = setTimeout(() => { console.error('verify: overall timeout (120 s)'); c.stop().then(() => process.exit(2)); }, 120000);
    let code = 0;
    try {
      const out = await verify(c);
      console.log('SUMMARY ' + JSON.stringify(out));
      console.log('verify: OK');
    } catch (e) {
      console.error(e.stack || e);
      code = 1;
    } finally {
      clearTimeout(guard);
      await c.stop();
    }
    process.exit(code);
  } else {
    console.error(USAGE);
    process.exit(2);
  }
}

if (isMain(import.meta.url)) {
  // process.exit kills every member still running (scripts/lib/processes.mjs)
  main(process.argv.slice(2)).catch((e) => { console.error(e.stack || e); process.exit(1); });
}
