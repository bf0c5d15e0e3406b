//! The command line as a user meets it: `sensorgate decode` against every shared Efento vector, and
//! `sensorgate validate` on the default pipeline and on a file full of mistakes.

mod common;

use common::*;

#[test]
fn decode_command_matches_every_efento_vector() {
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(vectors_dir("efento"))
        .unwrap()
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(entry.path()).unwrap()).unwrap();
        let path = match v["endpoint"].as_str().unwrap() {
            "/m" => "m",
            "/i" => "i",
            "/c" => "c",
            _ => continue, // server answers, not device frames
        };
        let out = sensorgate()
            .args([
                "decode",
                "efento",
                "--path",
                path,
                v["hex"].as_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            v["name"],
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_matches(&v["expected"], &doc, v["name"].as_str().unwrap(), true);
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} device-frame vectors checked");
}

#[test]
fn decode_command_refuses_bad_hex_and_bad_frames_with_one_line_and_exit_1() {
    for bad in ["zz01", "0a06282c"] {
        let out = sensorgate()
            .args(["decode", "efento", "--path", "m", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{bad}: {err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn validate_accepts_the_default_pipeline() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline.toml");
    let out = sensorgate().arg("validate").arg(&file).output().unwrap();
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn every_example_pipeline_validates_without_warnings() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "toml") {
            let out = sensorgate()
                .arg("validate")
                .arg(entry.path())
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{}: {err}", entry.path().display());
            assert!(
                !err.contains("warning"),
                "{}: {err}",
                entry.path().display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 1);
}

#[test]
fn validate_reports_typo_unknown_key_missing_sink_and_bad_duration_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.toml");
    std::fs::write(
        &file,
        r#"[sources.efento]
type = "coap"
listen = "0.0.0.0:5683"
ack_deadline = "1.5 seconds"

[sinks.lake]
type = "parqet"
path = "data/"

[sinks.rejects]
type = "json_lines"
pth = "rejects.jsonl"

[[flows]]
name = "efento"
from = ["efento"]
stages = [{ type = "decode", codec = "efento" }]
to = ["lakes"]
dead_letter = "rejects"
"#,
    )
    .unwrap();
    let out = sensorgate().arg("validate").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let name = file.display().to_string();
    for (line_col, words) in [
        ("4:16", "ack_deadline"),
        ("7:8", "parqet"),
        ("12:1", "pth"),
        ("18:7", "lakes"),
    ] {
        let line = err
            .lines()
            .find(|l| l.starts_with(&format!("{name}:{line_col}: error")))
            .unwrap_or_else(|| panic!("no error at {line_col}; got:\n{err}"));
        assert!(line.contains(words) || err.contains(words), "{line}");
    }
    assert!(err.contains("did you mean `parquet`?"), "{err}");
    assert!(err.contains("did you mean `path`?"), "{err}");
    assert!(err.contains("did you mean `lake`?"), "{err}");
    assert!(err.contains("4 errors"), "{err}");
}

#[test]
fn validate_warns_about_unused_components_and_refuses_undefined_env_vars() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        r#"[sources.efento]
type = "coap"
listen = "127.0.0.1:5683"

[sinks.lake]
type = "parquet"
path = "${SENSORGATE_TEST_SURELY_UNSET}"

[sinks.spare]
type = "json_lines"
path = "-"

[[flows]]
name = "efento"
from = ["efento"]
to = ["lake"]
"#,
    )
    .unwrap();
    let out = sensorgate().arg("validate").arg(&file).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(":7:8: error: environment variable `SENSORGATE_TEST_SURELY_UNSET` is not set"),
        "{err}"
    );
    assert!(
        err.contains(":9:8: warning: sink `spare` is not written by any flow"),
        "{err}"
    );

    let out = sensorgate()
        .arg("validate")
        .arg(&file)
        .env("SENSORGATE_TEST_SURELY_UNSET", dir.path())
        .output()
        .unwrap();
    assert_success(&out);
}

#[test]
fn validate_names_missing_and_broken_schemas_registries_redis_urls_and_json_mappings_with_their_line()
 {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.schema.json"), r#"{"type": 12}"#).unwrap();
    let file = dir.path().join("pipeline.toml");
    std::fs::write(
        &file,
        r#"[sources.s]
type = "coap"
listen = "127.0.0.1:0"

[sinks.out]
type = "json_lines"
path = "-"

[[flows]]
name = "f"
from = ["s"]
stages = [
  { type = "decode", codec = "efento" },
  { type = "validate", schema = "missing.schema.json" },
  { type = "validate", schemas = { measurements = "broken.schema.json" } },
  { type = "enrich", registry = "nope.toml" },
  { type = "dedupe", key = "efento", backend = "redis" },
  { type = "decode", codec = "json" },
  { type = "decode", codec = "json", json = { device = "ident" } },
  { type = "decode", codec = "efento", json = { preset = "flespi" } },
]
to = ["out"]
"#,
    )
    .unwrap();
    let out = sensorgate()
        .arg("validate")
        .arg("pipeline.toml")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    for expected in [
        "pipeline.toml:14:3",
        "schema missing.schema.json: cannot read it",
        "pipeline.toml:15:3",
        "schema broken.schema.json: does not compile",
        "pipeline.toml:16:3",
        "registry: nope.toml",
        "pipeline.toml:17:3",
        "backend \"redis\" needs redis = { url",
        "pipeline.toml:18:3",
        "codec \"json\" needs json = { preset = \"flespi\" }",
        "pipeline.toml:19:3",
        "`ident` is not a JSON pointer: write \"/ident\"",
        "pipeline.toml:20:3",
        "json = { ... } is read by codec \"json\" only",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}
