#!/usr/bin/env node
// `make build`, after cargo: removes from bffgate.wasm the exports of the proxy-wasm callbacks
// bffgate does not implement, so that Envoy never calls them.
//
//   node scripts/wasm-exports.mjs FILE.wasm        (rewrites FILE in place; idempotent)
//   node scripts/wasm-exports.mjs --check FILE     (exit 1 if FILE still exports any of them)
//
// Why: the proxy-wasm Rust SDK exports every `proxy_on_*` callback of the ABI, whether the
// filter implements it or not, and Envoy calls each one that is exported: on every request
// `proxy_on_response_body` (once per chunk of the response body) and `proxy_on_log`, which the
// SDK answers with "continue" and nothing else. Each call is a crossing from Envoy into the
// VM, about 2 k instructions and 1 us of CPU on the 2-core bench machine (bench/README.md), the
// single largest cost of a proxy-wasm filter. The host (proxy-wasm-cpp-host, `CHECK_HTTP`)
// skips a callback the module does not export and carries on as if it had answered "continue",
// so removing the export changes no behaviour. The list below is exactly the callbacks
// src/wasm/ leaves to the SDK's defaults; `proxy_on_delete` stays (the SDK frees the context
// there), as do the callbacks bffgate implements.
//
// Only the export section changes (the functions stay in the code section, unexported); the
// rewrite is deterministic, so `make repro` still compares like with like.

import fs from 'node:fs';

export const UNUSED = [
  'proxy_on_log',
  'proxy_on_response_body',
  'proxy_on_response_trailers',
  'proxy_on_new_connection',
  'proxy_on_downstream_data',
  'proxy_on_upstream_data',
  'proxy_on_downstream_connection_close',
  'proxy_on_upstream_connection_close',
  'proxy_on_grpc_receive_initial_metadata',
  'proxy_on_grpc_receive',
  'proxy_on_grpc_receive_trailing_metadata',
  'proxy_on_grpc_close',
  'proxy_on_foreign_function',
];

// What bffgate needs the host to call (checked after the rewrite).
export const REQUIRED = [
  'proxy_abi_version_0_2_1', 'proxy_on_memory_allocate', 'proxy_on_context_create',
  'proxy_on_vm_start', 'proxy_on_configure', 'proxy_on_tick', 'proxy_on_queue_ready',
  'proxy_on_http_call_response', 'proxy_on_request_headers', 'proxy_on_request_body',
  'proxy_on_request_trailers', 'proxy_on_response_headers', 'proxy_on_done', 'proxy_on_delete',
];

function uleb(buf, pos) {
  let result = 0;
  let shift = 0;
  for (;;) {
    if (pos >= buf.length) throw new Error('truncated LEB128');
    const b = buf[pos++];
    result += (b & 0x7f) * 2 ** shift;
    shift += 7;
    if (b < 0x80) return [result, pos];
    if (shift > 35) throw new Error('LEB128 too long');
  }
}

function encodeUleb(n) {
  const out = [];
  do {
    let b = n & 0x7f;
    n = Math.floor(n / 128);
    if (n) b |= 0x80;
    out.push(b);
  } while (n);
  return Buffer.from(out);
}

/** The module's export names, in order. */
export function exportsOf(buf) {
  return parse(buf).exports.map((e) => e.name);
}

function parse(buf) {
  if (buf.length < 8 || buf.readUInt32LE(0) !== 0x6d736100 || buf.readUInt32LE(4) !== 1) {
    throw new Error('not a WebAssembly binary module (version 1)');
  }
  const sections = [];
  let exports = [];
  let pos = 8;
  while (pos < buf.length) {
    const start = pos;
    const id = buf[pos++];
    let size;
    [size, pos] = uleb(buf, pos);
    const body = pos;
    pos += size;
    if (pos > buf.length) throw new Error(`section ${id} runs past the end of the file`);
    sections.push({ id, start, body, end: pos });
    if (id === 7) {
      let p = body;
      let count;
      [count, p] = uleb(buf, p);
      exports = [];
      for (let i = 0; i < count; i++) {
        const from = p;
        let len;
        [len, p] = uleb(buf, p);
        const name = buf.subarray(p, p + len).toString('utf8');
        p += len + 1; // name, kind
        [, p] = uleb(buf, p); // index
        exports.push({ name, bytes: buf.subarray(from, p) });
      }
      if (p !== pos) throw new Error('export section size does not match its entries');
    }
  }
  return { sections, exports };
}

/** `buf` without the exports named in `drop`; [new buffer, names dropped]. */
export function withoutExports(buf, drop) {
  const { sections, exports } = parse(buf);
  const dropped = exports.filter((e) => drop.includes(e.name)).map((e) => e.name);
  if (!dropped.length) return [buf, dropped];
  const kept = exports.filter((e) => !drop.includes(e.name));
  const body = Buffer.concat([encodeUleb(kept.length), ...kept.map((e) => e.bytes)]);
  const parts = [buf.subarray(0, 8)];
  for (const s of sections) {
    if (s.id === 7) parts.push(Buffer.from([7]), encodeUleb(body.length), body);
    else parts.push(buf.subarray(s.start, s.end));
  }
  return [Buffer.concat(parts), dropped];
}

function main(argv) {
  const check = argv[0] === '--check';
  const file = check ? argv[1] : argv[0];
  if (!file) {
    console.error('usage: node scripts/wasm-exports.mjs [--check] FILE.wasm');
    return 2;
  }
  const buf = fs.readFileSync(file);
  const names = exportsOf(buf);
  if (check) {
    const left = UNUSED.filter((n) => names.includes(n));
    if (left.length) {
      console.error(`wasm-exports: ${file} still exports ${left.join(', ')} (run make build)`);
      return 1;
    }
    return 0;
  }
  const [out, dropped] = withoutExports(buf, UNUSED);
  const missing = REQUIRED.filter((n) => !exportsOf(out).includes(n));
  if (missing.length) {
    console.error(`wasm-exports: ${file} does not export ${missing.join(', ')}`);
    return 1;
  }
  if (dropped.length) {
    // In place (same inode): cargo hard-links this file to its copy under deps/, which then
    // stays the same, so a later cargo build that finds everything fresh keeps the result.
    const fd = fs.openSync(file, 'r+');
    try {
      fs.writeSync(fd, out, 0, out.length, 0);
      fs.ftruncateSync(fd, out.length);
    } finally {
      fs.closeSync(fd);
    }
    console.log(`wasm-exports: ${file}: removed ${dropped.length} unused callback exports (${dropped.join(', ')})`);
  }
  return 0;
}

if (process.argv[1] && import.meta.url === new URL(`file://${process.argv[1]}`).href) {
  process.exitCode = main(process.argv.slice(2));
}
