//! `bffgate-config`: renders the Envoy configuration from the filter settings and the policy
//! files, and checks a configuration with the same code the filter runs.
//!
//! ```text
//! bffgate-config render --settings envoy/bffgate.yaml --policies policies \
//!     --template envoy/envoy.template.yaml [--out envoy/envoy.yaml]
//! bffgate-config render --settings envoy/bffgate.yaml --overlay envoy/fleet.yaml --policies policies \
//!     --template envoy/envoy.template.yaml --out envoy/envoy.fleet.yaml
//! bffgate-config json   --settings envoy/bffgate.yaml --policies policies
//! bffgate-config check  --settings envoy/bffgate.yaml --policies policies \
//!     --template envoy/envoy.template.yaml --envoy envoy/envoy.yaml
//! bffgate-config explain --settings envoy/bffgate.yaml --policies policies \
//!     --route orders-write --method POST --header 'X-CSRF: 1' --scopes 'orders:read'
//! ```
//!
//! `explain` prints what the filter decides for one request to one route and every reason
//! (see `bffgate::explain`); exit status 0 whatever the decision.
//!
//! Secrets are read from the environment when set (so a deployment can check its real ones);
//! otherwise well-formed placeholders are used (a key ring for `*KEYS*`, a P-256 JWK for
//! `*KEY*`, a string for the rest) and only their absence is reported.

use bffgate::config::RawConfig;
use bffgate::render::{self, PolicyFile};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

struct Args {
    cmd: String,
    settings: PathBuf,
    overlay: Option<PathBuf>,
    policies: PathBuf,
    template: Option<PathBuf>,
    out: Option<PathBuf>,
    envoy: Option<PathBuf>,
    /// `render --lds FILE`: the listeners go to FILE (an LDS resource file Envoy watches), the
    /// bootstrap (`--out`) reads them from there.
    lds: Option<PathBuf>,
    /// `explain`: the request and the session it carries.
    ask: Option<bffgate::explain::Ask>,
    /// `explain --json`.
    json: bool,
}

fn usage() -> String {
    "usage: bffgate-config (render|json|check) --settings FILE [--overlay FILE] --policies DIR \
     [--template FILE] [--out FILE] [--lds FILE] [--envoy FILE]\n       \
     bffgate-config explain --settings FILE [--overlay FILE] --policies DIR --route NAME \
     --method M [--path P] [--header 'Name: value']... [--scopes 'a b'] [--claims JSON] \
     [--acr ACR] [--auth-age SECONDS] [--no-session] [--json]"
        .into()
}

/// Options that take no value.
const FLAGS: [&str; 2] = ["--no-session", "--json"];

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let cmd = it.next().ok_or_else(usage)?;
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    let mut headers = Vec::new();
    let mut flags = Vec::new();
    while let Some(k) = it.next() {
        if FLAGS.contains(&k.as_str()) {
            flags.push(k);
            continue;
        }
        let v = it
            .next()
            .ok_or_else(|| format!("{k} needs a value\n{}", usage()))?;
        if k == "--header" {
            let (name, value) = v
                .split_once(':')
                .ok_or_else(|| format!("--header `{v}`: write it as 'Name: value'"))?;
            headers.push((name.trim().to_string(), value.trim().to_string()));
            continue;
        }
        if map.insert(k.clone(), v).is_some() {
            return Err(format!("{k} given twice"));
        }
    }
    let ask = if cmd == "explain" {
        let claims = match map.remove("--claims") {
            None => serde_json::Map::new(),
            Some(c) => match serde_json::from_str::<Value>(&c) {
                Ok(Value::Object(m)) => m,
                _ => return Err(format!("--claims `{c}`: must be a JSON object")),
            },
        };
        let auth_age_s = match map.remove("--auth-age") {
            None => None,
            Some(a) => Some(
                a.parse::<u64>()
                    .map_err(|_| format!("--auth-age `{a}`: seconds, a whole number"))?,
            ),
        };
        Some(bffgate::explain::Ask {
            route: map.remove("--route").ok_or("explain needs --route NAME")?,
            method: map.remove("--method").ok_or("explain needs --method M")?,
            path: map.remove("--path"),
            headers,
            session: !flags.iter().any(|f| f == "--no-session"),
            scopes: map
                .remove("--scopes")
                .map(|s| s.split_whitespace().map(str::to_string).collect()),
            claims,
            acr: map.remove("--acr"),
            auth_age_s,
        })
    } else {
        if let Some(f) = flags.first() {
            return Err(format!("{f} is an option of explain\n{}", usage()));
        }
        if !headers.is_empty() {
            return Err(format!("--header is an option of explain\n{}", usage()));
        }
        None
    };
    let mut take = |k: &str| map.remove(k).map(PathBuf::from);
    let a = Args {
        cmd,
        settings: take("--settings").ok_or_else(usage)?,
        overlay: take("--overlay"),
        policies: take("--policies").ok_or_else(usage)?,
        template: take("--template"),
        out: take("--out"),
        envoy: take("--envoy"),
        lds: take("--lds"),
        ask,
        json: flags.iter().any(|f| f == "--json"),
    };
    if let Some(k) = map.keys().next() {
        return Err(format!("unknown option {k}\n{}", usage()));
    }
    Ok(a)
}

fn read(p: &Path) -> Result<String, String> {
    std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn yaml_to<T: serde::de::DeserializeOwned>(file: &str, text: &str) -> Result<T, String> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        format!("{file}: field `{path}`: {}", e.inner())
    })
}

fn load_policies(dir: &Path) -> Result<Vec<(String, PolicyFile)>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no policy files (*.yaml)", dir.display()));
    }
    let mut out = Vec::new();
    for f in files {
        let name = f.display().to_string();
        let pf: PolicyFile = yaml_to(&name, &read(&f)?)?;
        out.push((name, pf));
    }
    Ok(out)
}

fn secret(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => Some(match name {
            n if n.contains("KEYS") => "check:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8".into(),
            // `client.private_key_env` (`BFFGATE_CLIENT_KEY`): a private key is parsed at load.
            n if n.contains("KEY") => placeholder_client_key(),
            _ => "placeholder-secret-for-check-only-0123456789".into(),
        }),
    }
}

/// A well-formed P-256 private JWK for `private_key_jwt` settings checked without their key:
/// its scalar is a fixed, public number, so it is good for nothing but the check.
fn placeholder_client_key() -> String {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let b64 = |b: &[u8]| bffgate::util::b64url(b);
    p256::SecretKey::from_slice(&[0x42; 32])
        .map(|sk| {
            let p = sk.public_key().to_encoded_point(false);
            serde_json::json!({
                "kty": "EC", "crv": "P-256", "d": b64(&sk.to_bytes()),
                "x": p.x().map(|c| b64(c)).unwrap_or_default(),
                "y": p.y().map(|c| b64(c)).unwrap_or_default(),
            })
            .to_string()
        })
        .unwrap_or_default()
}

fn build(a: &Args) -> Result<(Value, RawConfig, bffgate::config::Config), String> {
    let settings_name = a.settings.display().to_string();
    let mut settings: Value = yaml_to(&settings_name, &read(&a.settings)?)?;
    let mut settings_name = settings_name;
    if let Some(o) = &a.overlay {
        let name = o.display().to_string();
        let over: Value = yaml_to(&name, &read(o)?)?;
        render::overlay(&mut settings, over).map_err(|m| format!("{name}: {m}"))?;
        settings_name = format!("{settings_name} + {name}");
    }
    let policies = load_policies(&a.policies)?;
    let (json, origin) = render::merge(settings, policies)?;
    let cfg = render::validate(&json, &origin, &settings_name, &secret)?;
    let raw: RawConfig = serde_json::from_value(json.clone()).map_err(|e| e.to_string())?;
    Ok((json, raw, cfg))
}

/// The first line of a rendered Envoy configuration: it is generated, from what.
fn generated_header(a: &Args, template: &std::path::Path) -> String {
    let settings = match &a.overlay {
        Some(o) => format!("{} + {}", a.settings.display(), o.display()),
        None => a.settings.display().to_string(),
    };
    format!(
        "# GENERATED by `make config` (bffgate-config render) from {}, {} and {}/*.yaml: edit those, not this file (`make check` refuses a stale copy).\n",
        template.display(),
        settings,
        a.policies.display()
    )
}

/// The rendered Envoy configuration: the header line, then the template with the JSON.
fn rendered(a: &Args, template: &std::path::Path, json: &Value) -> Result<String, String> {
    let body = render::render_template(&read(template)?, json)
        .map_err(|e| format!("{}: {e}", template.display()))?;
    Ok(format!("{}{body}", generated_header(a, template)))
}

/// Moves the listeners of a rendered bootstrap into an LDS resource file at `lds`: the
/// bootstrap gets `dynamic_resources.lds_config` reading that file, watched through its
/// directory (Envoy reloads it when a file is moved into the directory: write the new file
/// next to it and rename it over, see `write_atomically`).
fn split_listeners(rendered: &str, lds: &Path) -> Result<(String, String), String> {
    use serde_yaml::Value as Y;
    let (header, body) = rendered.split_once('\n').unwrap_or(("", rendered));
    let mut v: Y = serde_yaml::from_str(body).map_err(|e| format!("rendered config: {e}"))?;
    let listeners = v
        .get_mut("static_resources")
        .and_then(|s| s.as_mapping_mut())
        .and_then(|m| m.remove("listeners"))
        .ok_or("--lds: the template has no static_resources.listeners")?;
    let Y::Sequence(listeners) = listeners else {
        return Err("--lds: static_resources.listeners is not a list".into());
    };
    let resources: Vec<Y> = listeners
        .into_iter()
        .map(|mut l| {
            if let Some(m) = l.as_mapping_mut() {
                let mut typed = serde_yaml::Mapping::new();
                typed.insert(
                    "@type".into(),
                    "type.googleapis.com/envoy.config.listener.v3.Listener".into(),
                );
                typed.extend(std::mem::take(m));
                *m = typed;
            }
            l
        })
        .collect();
    // Absolute: Envoy resolves the file and the watched directory against its own working
    // directory, which need not be this one.
    let lds = &std::env::current_dir()
        .map_err(|e| e.to_string())?
        .join(lds);
    let dir = lds.parent().unwrap_or(Path::new("/"));
    let lds_config = serde_yaml::from_str::<Y>(&format!(
        "lds_config:\n  resource_api_version: V3\n  path_config_source:\n    path: {}\n    watched_directory:\n      path: {}\n",
        serde_json::to_string(&lds.display().to_string()).map_err(|e| e.to_string())?,
        serde_json::to_string(&dir.display().to_string()).map_err(|e| e.to_string())?,
    ))
    .map_err(|e| e.to_string())?;
    if let Some(m) = v.as_mapping_mut() {
        m.insert("dynamic_resources".into(), lds_config);
    }
    let mut doc = serde_yaml::Mapping::new();
    doc.insert("resources".into(), Y::Sequence(resources));
    let bootstrap = serde_yaml::to_string(&v).map_err(|e| e.to_string())?;
    let listeners = serde_yaml::to_string(&Y::Mapping(doc)).map_err(|e| e.to_string())?;
    Ok((
        format!(
            "{header}\n# Listeners: {} (LDS, watched).\n{bootstrap}",
            lds.display()
        ),
        format!("{header}\n{listeners}"),
    ))
}

/// Writes `path` by writing a temporary file in the same directory and renaming it over: a
/// watcher never sees half a file, and Envoy's `watched_directory` sees the move.
fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| format!("{}: not a file name", path.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

fn run() -> Result<(), String> {
    let a = parse_args()?;
    match a.cmd.as_str() {
        "json" => {
            let (json, _, _) = build(&a)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?
            );
            Ok(())
        }
        "render" => {
            let (json, _, _) = build(&a)?;
            let t = a.template.as_ref().ok_or("render needs --template")?;
            let mut out = rendered(&a, t, &json)?;
            if let Some(lds) = &a.lds {
                let (bootstrap, listeners) = split_listeners(&out, lds)?;
                write_atomically(lds, &listeners)?;
                out = bootstrap;
            }
            match &a.out {
                Some(p) => std::fs::write(p, out).map_err(|e| format!("{}: {e}", p.display()))?,
                None => print!("{out}"),
            }
            Ok(())
        }
        "check" => {
            let (json, raw, cfg) = build(&a)?;
            let mut problems = Vec::new();
            if let (Some(t), Some(e)) = (&a.template, &a.envoy) {
                let want = rendered(&a, t, &json)?;
                if read(e)? != want {
                    problems.push(format!(
                        "{}: out of date with the settings and policies: run `make config`",
                        e.display()
                    ));
                }
            }
            if let Some(e) = &a.envoy {
                let name = e.display().to_string();
                let text = read(e)?;
                if let Some(p) = render::access_log_state_problem(&text, &raw) {
                    problems.push(format!("{name}: {p}"));
                }
                let v: Value = yaml_to(&name, &text)?;
                let facts = render::envoy_facts(&v);
                for (i, (plugin, _)) in facts.plugins.iter().enumerate() {
                    if let Err(err) = bffgate::config::Config::from_json(plugin.as_bytes(), &secret)
                    {
                        problems.push(format!("{name}: wasm filter #{i} configuration: {err}"));
                    }
                }
                problems.extend(
                    render::cross_check(&facts, &raw)
                        .into_iter()
                        .map(|p| format!("{name}: {p}")),
                );
            }
            for (name, rp) in &raw.routes {
                if rp.mode == bffgate::policy::Mode::Report {
                    eprintln!(
                        "bffgate-config: warning: routes.{name}.mode is `report`: its scopes, claims and sign-in level are only logged (policy_report), not enforced"
                    );
                }
            }
            if problems.is_empty() {
                println!(
                    "bffgate-config: ok: {} route policies, {} audiences{}",
                    raw.routes.len(),
                    raw.audiences.len(),
                    if a.envoy.is_some() {
                        ", Envoy routes and policies agree"
                    } else {
                        ""
                    }
                );
                println!("bffgate-config: {}", render::provider_summary(&cfg));
                Ok(())
            } else {
                Err(problems.join("\n"))
            }
        }
        "explain" => {
            let (_, _, cfg) = build(&a)?;
            let ask = a.ask.as_ref().ok_or_else(usage)?;
            let e = bffgate::explain::explain(&cfg, ask)?;
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&e.to_json()).map_err(|e| e.to_string())?
                );
            } else {
                print!("{}", e.to_text());
            }
            Ok(())
        }
        other => Err(format!("unknown command `{other}`\n{}", usage())),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bffgate-config: {e}");
            ExitCode::FAILURE
        }
    }
}
