//! Policy and settings files as the config tool reads them: `render::PolicyFile` from YAML (with
//! serde_path_to_error, as `bffgate-config` does) and from JSON, merged with the shipped
//! settings and validated by the filter's own code, then rendered into the Envoy template and
//! cross-checked; and the input as a settings file merged with the shipped policies.
//! Invariants: no panic (including in the YAML parser); a file that validates renders into a
//! template whose embedded JSON compiles again.
#![no_main]

use bffgate::render::{cross_check, envoy_facts, merge, render_template, validate, PolicyFile};
use bffgate_fuzz::{secrets, SHIPPED_POLICIES, SHIPPED_SETTINGS};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::OnceLock;

const TEMPLATE: &str = include_str!("../../envoy/envoy.template.yaml");

fn yaml_to<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| format!("{}: {}", e.path(), e.inner()))
}

fn settings() -> &'static Value {
    static S: OnceLock<Value> = OnceLock::new();
    S.get_or_init(|| serde_yaml::from_str(SHIPPED_SETTINGS).unwrap_or(Value::Null))
}

fn shipped_policies() -> Vec<(String, PolicyFile)> {
    SHIPPED_POLICIES
        .iter()
        .filter_map(|(n, t)| {
            serde_yaml::from_str::<PolicyFile>(t)
                .ok()
                .map(|p| (n.to_string(), p))
        })
        .collect()
}

fn check(settings: Value, files: Vec<(String, PolicyFile)>) {
    let Ok((json, origin)) = merge(settings, files) else {
        return;
    };
    if validate(&json, &origin, "settings.yaml", &secrets).is_err() {
        return;
    }
    let rendered = match render_template(TEMPLATE, &json) {
        Ok(r) => r,
        Err(e) => panic!("a valid config does not render: {e}"),
    };
    let envoy: Value = match serde_yaml::from_str(&rendered) {
        Ok(v) => v,
        Err(e) => panic!("the rendered Envoy config is not YAML: {e}"),
    };
    let facts = envoy_facts(&envoy);
    let Ok(raw) = serde_json::from_value::<bffgate::config::RawConfig>(json.clone()) else {
        panic!("validated JSON is not a RawConfig")
    };
    let _ = cross_check(&facts, &raw);
    let Some((plugin, _)) = facts.plugins.first() else {
        panic!("no plugin in the rendered config")
    };
    if let Err(e) = bffgate::config::Config::from_json(plugin.as_bytes(), &secrets) {
        panic!("the rendered plugin configuration does not compile: {e}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Alone (the shipped routes missing), and next to the shipped files (name clashes).
    if let Ok(pf) = yaml_to::<PolicyFile>(text) {
        check(settings().clone(), vec![("fuzz.yaml".to_string(), pf)]);
    }
    if let Ok(pf) = serde_json::from_str::<PolicyFile>(text) {
        let mut files = shipped_policies();
        files.push(("fuzz.json".to_string(), pf));
        check(settings().clone(), files);
    }
    if let Ok(s) = yaml_to::<Value>(text) {
        check(s, shipped_policies());
    }
});
