//! `[api]` in pipeline.toml as `sensorgate validate` checks it: each problem with its line, column
//! and a fix, the credentials' variables read from the environment (never echoed), and stages that
//! read `registry = "api"` refused without the section.

use sensorgate::config::{Diagnostic, load_str};

const FLOW: &str = r#"
[sources.gateways]
type = "esp3_websocket"
listen = "127.0.0.1:0"

[sinks.out]
type = "json_lines"
path = "out.jsonl"

[[flows]]
name = "enocean"
from = ["gateways"]
stages = [
  { type = "decode", codec = "esp3", registry = "api" },
  { type = "enrich", registry = "api" },
]
to = ["out"]
"#;

fn env(name: &str) -> Option<String> {
    match name {
        "API_TOKEN" => Some("0123456789abcdef0123".into()),
        "SHORT_TOKEN" => Some("abc".into()),
        "API_BASIC" => Some("ops:secret-password".into()),
        "BASIC_NO_COLON" => Some("justapassword".into()),
        _ => None,
    }
}

fn errors(api: &str) -> Vec<Diagnostic> {
    let text = format!("{api}\n{FLOW}");
    match load_str("pipeline.toml", &text, &env) {
        Ok(_) => Vec::new(),
        Err(report) => report.diagnostics,
    }
}

fn only_error(api: &str) -> Diagnostic {
    let found = errors(api);
    assert_eq!(found.len(), 1, "{found:#?}");
    found.into_iter().next().unwrap()
}

#[test]
fn a_good_api_section_loads_with_defaults() {
    let text = format!("[api]\nlisten = \"127.0.0.1:8080\"\ntoken_env = \"API_TOKEN\"\n{FLOW}");
    let (config, _) = load_str("pipeline.toml", &text, &env).unwrap();
    let api = config.api.unwrap();
    assert_eq!(api.listen.port(), 8080);
    assert_eq!(api.store, std::path::PathBuf::from("data/registry.redb"));
    assert!(api.seed.is_none());
}

#[test]
fn a_missing_token_variable_is_named_at_its_line_with_the_fix() {
    let e = only_error("[api]\nlisten = \"127.0.0.1:8080\"\ntoken_env = \"NOT_SET\"\n");
    assert_eq!((e.line, e.column), (3, 13), "{e:?}");
    assert!(e.message.contains("NOT_SET is not set"), "{e:?}");
    assert!(e.hint.unwrap().contains("export NOT_SET="));
}

#[test]
fn weak_or_malformed_secrets_are_refused_without_echoing_them() {
    let e = only_error("[api]\nlisten = \"127.0.0.1:8080\"\ntoken_env = \"SHORT_TOKEN\"\n");
    assert!(e.message.contains("shorter than 16"), "{e:?}");
    assert!(!e.message.contains("abc"));
    let e = only_error("[api]\nlisten = \"127.0.0.1:8080\"\nbasic_env = \"BASIC_NO_COLON\"\n");
    assert_eq!(e.line, 3);
    assert!(e.message.contains("user:password"), "{e:?}");
    assert!(!e.message.contains("justapassword"));
}

#[test]
fn an_api_without_authentication_is_refused() {
    let e = only_error("[api]\nlisten = \"127.0.0.1:8080\"\n");
    assert!(e.message.contains("no authentication"), "{e:?}");
    assert!(e.hint.unwrap().contains("token_env"));
}

#[test]
fn bad_listen_unknown_keys_and_a_broken_seed_point_at_the_key() {
    let e = only_error("[api]\nlisten = \"localhost\"\ntoken_env = \"API_TOKEN\"\n");
    assert_eq!(e.line, 2, "{e:?}");
    assert!(e.message.contains("[api]"), "{e:?}");
    let e = only_error("[api]\nlisten = \"127.0.0.1:1\"\ntoken_env = \"API_TOKEN\"\ntokn = 1\n");
    assert_eq!(e.line, 4, "{e:?}");
    assert!(e.message.contains("tokn"), "{e:?}");

    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("devices.toml");
    std::fs::write(&seed, "[[devices]]\neurid = \"xyz\"\n").unwrap();
    let e = only_error(&format!(
        "[api]\nlisten = \"127.0.0.1:1\"\ntoken_env = \"API_TOKEN\"\nseed = \"{}\"\n",
        seed.display()
    ));
    assert_eq!(e.line, 4, "{e:?}");
    assert!(e.message.contains("8 hex digits"), "{e:?}");
}

#[test]
fn registry_api_needs_the_api_section() {
    let found = errors("");
    let messages: Vec<&str> = found.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(found.len(), 2, "{messages:#?}");
    assert!(
        found.iter().all(|d| d
            .message
            .contains("registry = \"api\" but the file has no [api] section")
            && d.hint.as_deref().unwrap_or("").contains("[api]")),
        "{messages:#?}"
    );
    assert!(found[0].message.contains("`decode`") && found[1].message.contains("`enrich`"));
}
