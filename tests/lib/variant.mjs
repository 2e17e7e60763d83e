// Variants of the shipped Envoy config for tests and the soak run: the filter settings of
// envoy/bffgate.yaml with some fields overridden (e.g. a small `store`), rendered with the
// project's own tool (bffgate-config, which validates them with the filter's code) into
// .run/variants/<name>.yaml. Start a stack on it with startStack({ envoyConfig }).
//
// How: `bffgate-config json` prints the merged settings + policies; the `routes` (which belong to
// the policy files) are dropped, the overrides deep-merged in, and the result (JSON is YAML) is
// rendered with --policies policies and the shipped template, exactly as `make config` does.

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

import { ROOT, RUN_DIR } from '../../scripts/lib/paths.mjs';
import { mergeSettings } from '../../scripts/lib/settings.mjs';

function configTool(args) {
  // `cargo run` rebuilds the tool if src/ changed. If cargo cannot run (e.g. Cargo.toml is being
  // edited), fall back to the last built binary.
  try {
    return execFileSync('cargo', ['run', '-q', '--features', 'cli', '--bin', 'bffgate-config', '--', ...args], {
      cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 16 << 20,
    });
  } catch (err) {
    const bin = path.join(ROOT, 'target/debug/bffgate-config');
    // the tool's own refusals start with `bffgate-config:`; anything else is cargo failing
    const toolRefused = /^bffgate-config:/m.test(String(err.stderr));
    if (toolRefused || !fs.existsSync(bin)) throw err;
    process.stderr.write(`variant: cargo run failed (${String(err.stderr).split('\n')[0]}); using ${path.relative(ROOT, bin)}\n`);
    return execFileSync(bin, args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 16 << 20 });
  }
}

/** The filter settings of envoy/bffgate.yaml as JSON, with the policies' `routes`. */
function shippedMerged() {
  return JSON.parse(configTool(['json', '--settings', 'envoy/bffgate.yaml', '--policies', 'policies']));
}

/** The filter settings of envoy/bffgate.yaml as JSON (without the policies' `routes`). */
export function shippedSettings() {
  const merged = shippedMerged();
  delete merged.routes;
  return merged;
}

/**
 * Renders an Envoy config whose filter settings are envoy/bffgate.yaml deep-merged with
 * `overrides`. A `routes` key in `overrides` is deep-merged into the shipped policies instead
 * (written as one policy file of the variant). Returns the absolute path of the rendered file
 * (.run/variants/<name>.yaml). Throws with the tool's message if the settings are refused.
 * `template`: another Envoy template; `lds`: put the listeners in that LDS file (watched by the
 * rendered bootstrap; rendering again replaces it atomically, as `bffgate-config render --lds`
 * does).
 */
export function renderVariant(name, overrides, { template = 'envoy/envoy.template.yaml', lds } = {}) {
  if (!/^[a-z0-9-]+$/.test(name)) throw new Error(`variant name ${name}: [a-z0-9-] only`);
  const dir = path.join(RUN_DIR, 'variants');
  fs.mkdirSync(dir, { recursive: true });
  const settingsFile = path.join(dir, `${name}.settings.json`);
  const out = path.join(dir, `${name}.yaml`);
  const { routes: routeOverrides, ...settingOverrides } = overrides;
  let policies = 'policies';
  if (routeOverrides) {
    policies = path.join(dir, `${name}.policies`);
    fs.rmSync(policies, { recursive: true, force: true });
    fs.mkdirSync(policies);
    const routes = mergeSettings(shippedMerged().routes, routeOverrides, { keepNull: true });
    fs.writeFileSync(path.join(policies, 'all.yaml'), `${JSON.stringify({ routes }, null, 2)}\n`);
  }
  fs.writeFileSync(settingsFile, `${JSON.stringify(mergeSettings(shippedSettings(), settingOverrides, { keepNull: true }), null, 2)}\n`);
  try {
    configTool(['render', '--settings', settingsFile, '--policies', policies,
      '--template', template, '--out', out, ...(lds ? ['--lds', lds] : [])]);
  } catch (err) {
    throw new Error(`rendering variant ${name} failed: ${err.stderr || err.message}`);
  }
  return out;
}

/**
 * Rewrites a rendered Envoy config so that every wasm filter loads bffgate from `uri` instead of
 * the local file (`vm_config.code.remote`: the module is fetched over HTTP through a cluster
 * named `cluster`, added here for the host:port of `uri`, and refused unless its SHA-256 is
 * `sha256`). `retryPolicy` is the fetch's `retry_policy` (Envoy's default: one retry). Writes
 * .run/variants/<name>.yaml; returns { file: its path, modules: how many filters were rewritten }.
 * Throws if the config has no local module or no `clusters:` to rewrite.
 */
export function remoteCodeVariant(name, renderedFile, { uri, sha256, cluster = 'bffgate_wasm_source', retryPolicy }) {
  if (!/^[a-z0-9-]+$/.test(name)) throw new Error(`variant name ${name}: [a-z0-9-] only`);
  const { hostname, port } = new URL(uri);
  let text = fs.readFileSync(renderedFile, 'utf8');
  let modules = 0;
  text = text.replace(/^( *)code:\n +local:\n +filename: \S*bffgate\.wasm\n/gm, (_, indent) => {
    modules += 1;
    const i = `${indent}  `;
    return [
      `${indent}code:`,
      `${i}remote:`,
      `${i}  http_uri: ${JSON.stringify({ uri, cluster, timeout: '5s' })}`,
      `${i}  sha256: ${sha256}`,
      ...(retryPolicy ? [`${i}  retry_policy: ${JSON.stringify(retryPolicy)}`] : []),
      '',
    ].join('\n');
  });
  if (!modules) throw new Error(`${renderedFile}: no \`code: local: filename: …bffgate.wasm\` to rewrite`);
  const clusters = /^( *)clusters:\n/m.exec(text);
  if (!clusters) throw new Error(`${renderedFile}: no \`clusters:\` to add ${cluster} to`);
  const i = `${clusters[1]}  `;
  const endpoint = { address: { socket_address: { address: hostname, port_value: Number(port) } } };
  const def = [
    `${i}- name: ${cluster}`,
    `${i}  type: STATIC`,
    `${i}  connect_timeout: 1s`,
    `${i}  load_assignment: ${JSON.stringify({ cluster_name: cluster, endpoints: [{ lb_endpoints: [{ endpoint }] }] })}`,
    '',
  ].join('\n');
  text = text.slice(0, clusters.index + clusters[0].length) + def + text.slice(clusters.index + clusters[0].length);
  const out = path.join(RUN_DIR, 'variants', `${name}.yaml`);
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, text);
  return { file: out, modules };
}
