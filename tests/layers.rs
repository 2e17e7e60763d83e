//! The core is layered and its imports only point down (docs/architecture.md):
//!
//! 0. values and codecs with nothing below them: `util`, `secret`, `cookie`, `redirect`,
//!    `policy`, `reply`, `callout`, `audit`, `keyspec`, `jwt`, `anomaly`;
//! 1. values built on those: `seal`, `vault`, `jose`, `assertion`, `session`, `record`,
//!    `verified`, `discovery`;
//! 2. `config`;
//! 3. `store`, `oauth`, `render` (the config tool's);
//! 4. `engine`;
//! 5. `explain` (the config tool's: runs the engine on a request it describes);
//!
//! and `wasm` (the shell) on top, which this test does not read. Every `crate::<module>` a
//! top-level module of `src/` mentions outside its `#[cfg(test)]` part (its files under
//! `src/<module>/` included) must be in the same layer or a lower one, and there must be no
//! cycle. A new module fails this test until it is given a layer here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const LAYERS: &[(&str, u8)] = &[
    ("util", 0),
    ("secret", 0),
    ("cookie", 0),
    ("redirect", 0),
    ("policy", 0),
    ("reply", 0),
    ("callout", 0),
    ("audit", 0),
    ("keyspec", 0),
    ("jwt", 0),
    ("anomaly", 0),
    ("seal", 1),
    ("vault", 1),
    ("jose", 1),
    ("assertion", 1),
    ("session", 1),
    ("record", 1),
    ("verified", 1),
    ("discovery", 1),
    ("config", 2),
    ("store", 3),
    ("oauth", 3),
    ("render", 3),
    ("engine", 4),
    ("explain", 5),
];

/// Modules that are not part of the layered core: the shell, the test kit, the crate root.
const OUTSIDE: &[&str] = &["wasm", "testkit", "lib", "bin"];

/// Top-level module -> the top-level modules it mentions as `crate::<name>`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_str()
                .unwrap()
                .trim_end_matches(".rs")
                .to_string();
            if OUTSIDE.contains(&top.as_str()) {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            let deps = g.entry(top.clone()).or_default();
            let mut rest = code;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    deps.insert(name);
                }
            }
        }
    }
    g
}

fn layer(m: &str) -> u8 {
    LAYERS
        .iter()
        .find(|(n, _)| *n == m)
        .map(|(_, l)| *l)
        .unwrap_or_else(|| panic!("module `{m}` has no layer in tests/layers.rs: give it one"))
}

#[test]
fn every_import_of_the_core_points_down_or_sideways() {
    let g = graph();
    assert!(g.len() >= LAYERS.len(), "modules found: {:?}", g.keys());
    let mut up = Vec::new();
    for (from, deps) in &g {
        for to in deps {
            if OUTSIDE.contains(&to.as_str()) {
                up.push(format!("{from} -> {to} (outside the core)"));
            } else if layer(to) > layer(from) {
                up.push(format!(
                    "{from} (layer {}) -> {to} (layer {})",
                    layer(from),
                    layer(to)
                ));
            }
        }
    }
    assert!(up.is_empty(), "imports pointing up: {up:#?}");
}

#[test]
fn the_core_has_no_import_cycle() {
    let g = graph();
    // Depth-first search for a back edge; report the cycle.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut cycle = path[i..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in g.keys() {
        if let Some(cycle) = visit(n, &g, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_check_sees_a_cycle_and_an_upward_import_when_there_is_one() {
    // The graph reader itself: the engine does import the store (and not the other way).
    let g = graph();
    assert!(g["engine"].contains("store"));
    assert!(!g["store"].contains("engine"));
    assert!(layer("engine") > layer("store"));
}
