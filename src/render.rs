//! Building the filter's JSON configuration from the human-edited files, and checking an Envoy
//! configuration against it. Used by the native `bffgate-config` tool (`make config`,
//! `make check`); the filter itself only ever reads the resulting JSON.

use crate::config::{Config, ConfigError, RawConfig, Secrets};
use crate::policy::RawPolicy;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Why settings, policies or a template were refused: a message naming the file and the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderError(pub String);

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RenderError {}

impl From<RenderError> for String {
    fn from(e: RenderError) -> String {
        e.0
    }
}

impl From<String> for RenderError {
    fn from(s: String) -> RenderError {
        RenderError(s)
    }
}

impl From<&str> for RenderError {
    fn from(s: &str) -> RenderError {
        RenderError(s.to_string())
    }
}

/// One policy file: `routes:` mapping route names to policies.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Policies by Envoy route name.
    pub routes: BTreeMap<String, RawPolicy>,
}

/// The placeholder line in the Envoy template that receives the JSON.
pub const PLACEHOLDER: &str = "__BFFGATE_CONFIG_JSON__";
/// The optional placeholder for the operator API instance (the same JSON with `admin: true`).
pub const ADMIN_PLACEHOLDER: &str = "__BFFGATE_ADMIN_CONFIG_JSON__";

/// Merges settings (everything but `routes`) with policy files. Returns the merged JSON value
/// and, for each route, the file that defined it.
pub fn merge(
    settings: Value,
    policies: Vec<(String, PolicyFile)>,
) -> Result<(Value, BTreeMap<String, String>), RenderError> {
    let Value::Object(mut obj) = settings else {
        return Err("settings: the document must be a mapping".into());
    };
    if obj.contains_key("routes") {
        return Err("settings: field `routes`: route policies belong in the policy files".into());
    }
    let mut routes = Map::new();
    let mut origin: BTreeMap<String, String> = BTreeMap::new();
    for (file, pf) in policies {
        for (name, p) in pf.routes {
            if let Some(first) = origin.get(&name) {
                return Err(RenderError(format!(
                    "{file}: field `routes.{name}`: route already has a policy in {first}"
                )));
            }
            routes.insert(
                name.clone(),
                serde_json::to_value(&p).map_err(|e| RenderError(format!("{file}: {e}")))?,
            );
            origin.insert(name, file.clone());
        }
    }
    obj.insert("routes".into(), Value::Object(routes));
    Ok((Value::Object(obj), origin))
}

/// Deep-merges `over` into `base`: mappings merge key by key, anything else replaces. Lets a
/// deployment variant (the fleet's `store:` block) sit in a small file over the shared settings.
pub fn overlay(base: &mut Value, over: Value) -> Result<(), RenderError> {
    let Value::Object(over) = over else {
        return Err("the overlay must be a mapping".into());
    };
    if over.contains_key("routes") {
        return Err("field `routes`: route policies belong in the policy files".into());
    }
    merge_into(base, Value::Object(over));
    Ok(())
}

fn merge_into(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge_into(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// Validates merged JSON with the filter's own entry point, attributing errors to files.
pub fn validate(
    json: &Value,
    origin: &BTreeMap<String, String>,
    settings_file: &str,
    secrets: &dyn Secrets,
) -> Result<Config, RenderError> {
    let bytes = serde_json::to_vec(json).map_err(|e| RenderError(e.to_string()))?;
    Config::from_json(&bytes, secrets).map_err(|e: ConfigError| {
        let file = e
            .field
            .strip_prefix("routes.")
            .and_then(|rest| {
                origin
                    .iter()
                    .filter(|(name, _)| {
                        rest == name.as_str() || rest.starts_with(&format!("{name}."))
                    })
                    .map(|(_, f)| f.as_str())
                    .next()
            })
            .unwrap_or(settings_file);
        RenderError(format!("{file}: {e}"))
    })
}

/// Where the filter takes the provider's endpoints from, for `make check`: discovery (and
/// which endpoints the configuration overrides) or the configuration alone.
pub fn provider_summary(cfg: &Config) -> String {
    let by_hand = cfg.provider.by_hand.fields();
    let mut s = match &cfg.provider.discovery {
        Some(d) => {
            let mut s = format!(
                "provider: endpoints from discovery ({}, read again after {} s)",
                d.url, d.max_age_s
            );
            if by_hand.is_empty() {
                s.push_str("; none set by hand");
            } else {
                s.push_str(&format!("; set by hand: {}", by_hand.join(", ")));
            }
            s
        }
        None => format!(
            "provider: discovery off; every endpoint set by hand: {}",
            by_hand.join(", ")
        ),
    };
    let algs = match (&cfg.provider.id_token_algs, &cfg.provider.discovery) {
        (Some(p), Some(_)) => format!("{} (pinned), those the provider lists", p.join(", ")),
        (Some(p), None) => format!("{} (pinned)", p.join(", ")),
        (None, Some(_)) => "those the provider lists".to_string(),
        (None, None) => crate::jose::ASYMMETRIC_ALGS.join(", "),
    };
    s.push_str(&format!("; ID token algorithms: {algs}"));
    s
}

/// An Envoy config whose access log prints bffgate's filter state while the settings do not set
/// it (`access_log_state` off): the fields would always be empty.
pub fn access_log_state_problem(envoy_yaml: &str, raw: &RawConfig) -> Option<String> {
    (envoy_yaml.contains("FILTER_STATE(wasm.bffgate_") && !raw.access_log_state).then(|| {
        "an access log prints %FILTER_STATE(wasm.bffgate_...)% but access_log_state is off: set `access_log_state: true` (or drop those fields)".to_string()
    })
}

/// Replaces the placeholder line with the pretty JSON, indented like the placeholder.
pub fn render_template(template: &str, json: &Value) -> Result<String, RenderError> {
    let pretty = serde_json::to_string_pretty(json).map_err(|e| RenderError(e.to_string()))?;
    let mut admin = json.clone();
    if let Some(o) = admin.as_object_mut() {
        o.insert("admin".into(), Value::Bool(true));
    }
    let admin_pretty =
        serde_json::to_string_pretty(&admin).map_err(|e| RenderError(e.to_string()))?;
    let mut out = String::with_capacity(template.len() + pretty.len() * 3);
    let mut found = 0;
    for line in template.lines() {
        let t = line.trim();
        if t == PLACEHOLDER || t == ADMIN_PLACEHOLDER {
            if t == PLACEHOLDER {
                found += 1;
            }
            let body = if t == PLACEHOLDER {
                &pretty
            } else {
                &admin_pretty
            };
            let indent = line
                .get(..line.len() - line.trim_start().len())
                .unwrap_or("");
            for j in body.lines() {
                out.push_str(indent);
                out.push_str(j);
                out.push('\n');
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    match found {
        1 => Ok(out),
        0 => Err(format!("template: no line containing only `{PLACEHOLDER}`").into()),
        n => Err(format!("template: `{PLACEHOLDER}` appears {n} times").into()),
    }
}

/// What the check found in an Envoy configuration (as JSON converted from YAML).
#[derive(Debug, Default)]
pub struct EnvoyFacts {
    /// Route names of every route config (unnamed routes appear as `""`).
    pub routes: Vec<String>,
    /// The bffgate plugin configurations (StringValue contents) and their failure policies.
    pub plugins: Vec<(String, Option<String>)>,
}

/// Walks an Envoy bootstrap for route names and wasm plugin configurations.
pub fn envoy_facts(v: &Value) -> EnvoyFacts {
    let mut f = EnvoyFacts::default();
    walk(v, &mut f);
    f
}

fn walk(v: &Value, f: &mut EnvoyFacts) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(vhs)) = m.get("virtual_hosts") {
                for vh in vhs {
                    if let Some(Value::Array(routes)) = vh.get("routes") {
                        for r in routes {
                            f.routes.push(
                                r.get("name")
                                    .and_then(Value::as_str)
                                    .unwrap_or("")
                                    .to_string(),
                            );
                        }
                    }
                }
            }
            let is_wasm = m
                .get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("envoy.extensions.filters.http.wasm.v3.Wasm"));
            if is_wasm {
                if let Some(cfg) = m.get("config") {
                    let value = cfg
                        .get("configuration")
                        .and_then(|c| c.get("value"))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    let fp = cfg
                        .get("failure_policy")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    f.plugins.push((value, fp));
                }
            }
            for (_, child) in m {
                walk(child, f);
            }
        }
        Value::Array(a) => {
            for child in a {
                walk(child, f);
            }
        }
        _ => {}
    }
}

/// Cross-checks Envoy routes against policies. Returns every problem found.
pub fn cross_check(facts: &EnvoyFacts, cfg: &RawConfig) -> Vec<String> {
    let mut problems = Vec::new();
    for r in &facts.routes {
        if r.is_empty() {
            problems.push(
                "envoy: a route has no `name`: bffgate finds policies by route name".to_string(),
            );
        } else if !cfg.routes.contains_key(r) {
            problems.push(format!(
                "envoy: route `{r}` has no policy (requests to it would be refused)"
            ));
        }
    }
    for name in cfg.routes.keys() {
        if !facts.routes.iter().any(|r| r == name) {
            problems.push(format!(
                "policy for route `{name}` names no route in the Envoy config"
            ));
        }
    }
    if facts.plugins.is_empty() {
        problems.push("envoy: no envoy.filters.http.wasm filter found".into());
    }
    for (_, fp) in &facts.plugins {
        if fp.as_deref() != Some("FAIL_RELOAD") {
            problems.push(format!(
                "envoy: wasm failure_policy is {:?}; ship FAIL_RELOAD (FAIL_OPEN would serve protected routes unauthenticated)",
                fp.as_deref().unwrap_or("unset (FAIL_CLOSED: 503 forever after a crash)")
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_summary_says_where_endpoints_come_from() {
        let c = |patch: &dyn Fn(&mut Value)| {
            let mut v = crate::testkit::demo_json();
            patch(&mut v);
            Config::from_json(v.to_string().as_bytes(), &crate::testkit::test_secrets).unwrap()
        };
        let s = provider_summary(&c(&|_| {}));
        assert!(s.starts_with("provider: discovery off; every endpoint set by hand: provider.authorization_endpoint, provider.token_endpoint"), "{s}");
        let s = provider_summary(&c(&|v| {
            let p = v["provider"].as_object_mut().unwrap();
            p.remove("authorization_endpoint");
            p.remove("revocation_endpoint");
            p.remove("end_session_endpoint");
        }));
        assert_eq!(s, "provider: endpoints from discovery (http://localhost:9000/.well-known/openid-configuration, read again after 3600 s); set by hand: provider.token_endpoint; ID token algorithms: those the provider lists");
        let s = provider_summary(&c(&|v| {
            let p = v["provider"].as_object_mut().unwrap();
            for k in [
                "authorization_endpoint",
                "token_endpoint",
                "revocation_endpoint",
                "end_session_endpoint",
            ] {
                p.remove(k);
            }
        }));
        assert!(
            s.ends_with("; none set by hand; ID token algorithms: those the provider lists"),
            "{s}"
        );
        let s = provider_summary(&c(&|v| {
            v["provider"]["id_token_signing_algs"] = json!(["PS256", "ES384"]);
        }));
        assert!(
            s.ends_with("; ID token algorithms: PS256, ES384 (pinned)"),
            "{s}"
        );
        let s = provider_summary(&c(&|_| {}));
        assert!(
            s.ends_with(
                "; ID token algorithms: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384"
            ),
            "{s}"
        );
    }

    #[test]
    fn an_access_log_of_filter_state_needs_access_log_state() {
        let mut raw = crate::testkit::test_raw();
        let log = "json_format:\n  d: \"%FILTER_STATE(wasm.bffgate_decision:PLAIN)%\"\n";
        raw.access_log_state = false;
        let p = access_log_state_problem(log, &raw).expect("refused");
        assert!(p.contains("access_log_state: true"), "{p}");
        assert!(access_log_state_problem("json_format: {}", &raw).is_none());
        raw.access_log_state = true;
        assert!(access_log_state_problem(log, &raw).is_none());
    }

    #[test]
    fn placeholder_is_replaced_with_indented_json() {
        let t = "a:\n  value: |\n    __BFFGATE_CONFIG_JSON__\nb: 1\n";
        let out = render_template(t, &json!({"k": 1})).unwrap();
        assert_eq!(out, "a:\n  value: |\n    {\n      \"k\": 1\n    }\nb: 1\n");
        assert!(render_template("x: 1\n", &json!({})).is_err());
    }

    #[test]
    fn overlay_merges_mappings_and_replaces_the_rest() {
        let mut base = json!({"store": {"max_sessions": 5, "when_full": "refuse"}, "a": [1, 2]});
        overlay(
            &mut base,
            json!({"store": {"backend": "etcd", "max_sessions": 7}, "a": [3]}),
        )
        .unwrap();
        assert_eq!(
            base,
            json!({"store": {"max_sessions": 7, "when_full": "refuse", "backend": "etcd"}, "a": [3]})
        );
        assert!(overlay(&mut base, json!([1])).is_err());
        assert!(overlay(&mut base, json!({"routes": {}})).is_err());
    }

    #[test]
    fn duplicate_routes_across_files_are_refused() {
        let pf = |n: &str| PolicyFile {
            routes: [(
                n.to_string(),
                serde_json::from_value(json!({"access": "public"})).unwrap(),
            )]
            .into_iter()
            .collect(),
        };
        let e = merge(
            json!({}),
            vec![("a.yaml".into(), pf("r")), ("b.yaml".into(), pf("r"))],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("b.yaml") && e.contains("a.yaml") && e.contains("routes.r"),
            "{e}"
        );
    }

    #[test]
    fn cross_check_finds_missing_and_extra_routes() {
        let envoy = json!({"static_resources": {"listeners": [{"filter_chains": [{"filters": [{"typed_config": {
            "http_filters": [{"typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {"failure_policy": "FAIL_OPEN", "configuration": {"value": "{}"}}}}],
            "route_config": {"virtual_hosts": [{"routes": [{"name": "a"}, {"name": "b"}, {}]}]}}}]}]}]}});
        let facts = envoy_facts(&envoy);
        assert_eq!(facts.routes, vec!["a", "b", ""]);
        let mut raw = crate::testkit::test_raw();
        raw.routes = [
            (
                "a".to_string(),
                serde_json::from_value(json!({"access": "public"})).unwrap(),
            ),
            (
                "c".to_string(),
                serde_json::from_value(json!({"access": "public"})).unwrap(),
            ),
        ]
        .into_iter()
        .collect();
        let p = cross_check(&facts, &raw).join("\n");
        assert!(p.contains("route `b` has no policy"), "{p}");
        assert!(p.contains("route `c` names no route"), "{p}");
        assert!(p.contains("has no `name`"), "{p}");
        assert!(p.contains("FAIL_RELOAD"), "{p}");
    }
}
