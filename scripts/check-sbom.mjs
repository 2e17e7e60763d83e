#!/usr/bin/env node
// Checks the SBOM `make sbom` wrote (CycloneDX JSON, cargo-cyclonedx) against Cargo.lock:
// - it is a CycloneDX BOM for the bffgate crate, made for wasm32-wasip1;
// - it lists the crates the filter is made of (proxy-wasm, serde_json, ...);
// - every component is a crate of Cargo.lock, with the lock's version and its .crate checksum;
// - crates the .wasm never contains are absent: dev-dependencies (criterion, proptest) and the
//   config tool's `cli` feature (serde_yaml).
// Prints one line and exits 0, or names every problem and exits 1. node:* only.
//
//   node scripts/check-sbom.mjs [target/sbom/bffgate.cdx.json]

import fs from 'node:fs';
import path from 'node:path';

import { ROOT, rel } from './lib/paths.mjs';

const file = path.resolve(ROOT, process.argv[2] ?? 'target/sbom/bffgate.cdx.json');
const MUST_LIST = ['proxy-wasm', 'serde_json', 'serde', 'sha2', 'hmac', 'rsa', 'p256', 'chacha20poly1305'];
const MUST_NOT_LIST = ['criterion', 'proptest', 'serde_yaml'];

/** Cargo.lock's packages: "name@version" -> checksum (undefined for path packages). */
function lockPackages() {
  const text = fs.readFileSync(path.join(ROOT, 'Cargo.lock'), 'utf8');
  const out = new Map();
  for (const block of text.split(/^\[\[package\]\]$/m).slice(1)) {
    const field = (k) => new RegExp(`^${k} = "([^"]*)"$`, 'm').exec(block)?.[1];
    out.set(`${field('name')}@${field('version')}`, field('checksum'));
  }
  return out;
}

const problems = [];
let bom;
try {
  bom = JSON.parse(fs.readFileSync(file, 'utf8'));
} catch (err) {
  console.error(`check-sbom: cannot read ${rel(file)}: ${err.message} (run \`make sbom\`)`);
  process.exit(1);
}

if (bom.bomFormat !== 'CycloneDX') problems.push(`bomFormat is ${bom.bomFormat}, not CycloneDX`);
if (bom.metadata?.component?.name !== 'bffgate') problems.push(`metadata.component is ${bom.metadata?.component?.name}, not bffgate`);
const triple = (bom.metadata?.properties ?? []).find((p) => p.name === 'cdx:rustc:sbom:target:triple')?.value;
if (triple !== 'wasm32-wasip1') problems.push(`made for target ${triple}, not wasm32-wasip1`);

const lock = lockPackages();
const components = Array.isArray(bom.components) ? bom.components : [];
const names = new Set(components.map((c) => c.name));
for (const c of components) {
  const id = `${c.name}@${c.version}`;
  if (!lock.has(id)) {
    problems.push(`${id} is not in Cargo.lock`);
    continue;
  }
  if (c.purl !== `pkg:cargo/${id}`) problems.push(`${id}: purl ${c.purl}`);
  const sha = (c.hashes ?? []).find((h) => h.alg === 'SHA-256')?.content;
  if (sha !== lock.get(id)) problems.push(`${id}: SHA-256 ${sha}, Cargo.lock has ${lock.get(id)}`);
}
for (const n of MUST_LIST) if (!names.has(n)) problems.push(`${n} is missing (the filter is built with it)`);
for (const n of MUST_NOT_LIST) if (names.has(n)) problems.push(`${n} is listed but is not in the .wasm (dev-dependency or cli feature)`);

if (problems.length) {
  console.error(`check-sbom: ${rel(file)}:\n  ${problems.join('\n  ')}`);
  process.exit(1);
}
console.log(`check-sbom: ${rel(file)}: CycloneDX ${bom.specVersion}, ${components.length} crates for wasm32-wasip1, `
  + `each matching Cargo.lock (version and checksum); ${MUST_LIST.join(', ')} listed; ${MUST_NOT_LIST.join(', ')} absent`);
