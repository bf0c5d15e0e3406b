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
            // As a user would run them: the API's token set (validate checks it is).
            let out = sensorgate()
                .arg("validate")
                .arg(entry.path())
                .env("SENSORGATE_API_TOKEN", "example-token-0123456789abcdef")
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

#[test]
fn configfile_validates_without_warnings_and_shows_every_documented_option() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = sensorgate().arg("configfile").output().unwrap();
    assert_success(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.toml");
    std::fs::write(&file, &text).unwrap();
    // Relative paths in it (devices.toml, schemas/, plugins/dist) are the repository's.
    let out = sensorgate()
        .arg("validate")
        .arg(&file)
        .current_dir(root)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("warning"), "{err}");

    // Every key of the reference tables in README.md appears as `key =`.
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let reference = &readme[readme.find("## pipeline.toml reference").unwrap()..];
    let reference = &reference[..reference.find("\n## ").unwrap_or(reference.len())];
    let mut keys = std::collections::BTreeSet::new();
    let mut section = "";
    for line in reference.lines() {
        if line.starts_with("### ") {
            section = line;
            continue;
        }
        // The registry file and the flows' table are not options of a component.
        if section.contains("devices.toml") || !line.starts_with("| `") {
            continue;
        }
        let cell = line.split('|').nth(1).unwrap();
        for key in cell.split('`').skip(1).step_by(2) {
            keys.insert(key.to_string());
        }
    }
    assert!(keys.len() > 80, "{keys:?}");
    let missing: Vec<_> = keys
        .iter()
        .filter(|k| !text.contains(&format!("{k} =")))
        .collect();
    assert!(missing.is_empty(), "not in the configfile: {missing:?}");
}

#[test]
fn graph_prints_the_default_pipeline_as_dot_and_mermaid() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline.toml");
    let (config, _) = sensorgate::config::load_file(&file).unwrap();
    for (format, start) in [("dot", "digraph sensorgate {"), ("mermaid", "flowchart LR")] {
        let out = sensorgate()
            .args(["graph", "--format", format])
            .arg(&file)
            .output()
            .unwrap();
        assert_success(&out);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with(start), "{text}");
        for name in config.sources.keys().chain(config.sinks.keys()) {
            assert!(text.contains(name.as_str()), "{name}: {text}");
        }
        for flow in &config.flows {
            assert!(text.contains(&format!("flow {}", flow.name)), "{text}");
        }
    }
    let out = sensorgate().args(["graph", "nope.toml"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read nope.toml"));
}

/// The container image's layout as the Dockerfile builds it: each `COPY` destination mapped to the
/// repository file it copies, and the `ENTRYPOINT` + `CMD` command line.
fn dockerfile() -> (Vec<(String, std::path::PathBuf)>, Vec<String>) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let mut copies = Vec::new();
    let mut command = Vec::new();
    for line in text.lines() {
        // Instructions start their line; indented lines continue one (the health check's CMD).
        let words: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with(' ') {
            continue;
        }
        match words.first() {
            Some(&"COPY") if !words[1].starts_with("--") && words[1] != "." => {
                copies.push((words[2].to_string(), root.join(words[1])));
            }
            Some(&"ENTRYPOINT") | Some(&"CMD") => {
                let json = line.split_once(' ').unwrap().1;
                let args: Vec<String> = serde_json::from_str(json).unwrap();
                command.extend(args);
            }
            _ => {}
        }
    }
    (copies, command)
}

/// A container config file with its paths pointing at the repository files the image copies and
/// at `volume` for /var/lib/sensorgate.
fn host_paths(
    text: &str,
    copies: &[(String, std::path::PathBuf)],
    volume: &std::path::Path,
) -> String {
    let mut text = text.replace("/var/lib/sensorgate", &volume.display().to_string());
    for (dst, src) in copies {
        text = text.replace(dst.as_str(), &src.display().to_string());
    }
    text
}

#[test]
fn the_container_command_line_runs_the_image_pipeline_and_stores_a_frame() {
    let Some(_) = peer("coap-client-notls") else {
        return;
    };
    let (copies, command) = dockerfile();
    assert_eq!(
        command,
        [
            "sensorgate",
            "run",
            "--config",
            "/etc/sensorgate/pipeline.toml"
        ]
    );
    for (dst, src) in &copies {
        assert!(src.exists(), "COPY {} {dst}: missing", src.display());
    }
    let config = copies
        .iter()
        .find(|(dst, _)| dst == &command[3])
        .map(|(_, src)| std::fs::read_to_string(src).unwrap())
        .expect("the Dockerfile copies the pipeline the command runs");
    let volume = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let text = host_paths(&config, &copies, volume.path())
        .replace("0.0.0.0:5683", &format!("127.0.0.1:{port}"))
        .replace("0.0.0.0:8080", &format!("127.0.0.1:{}", free_tcp_port()));
    assert!(!text.contains("\"data/"), "a relative data path: {text}");
    let file = volume.path().join("image-pipeline.toml");
    std::fs::write(&file, text).unwrap();
    let mut child = sensorgate()
        .args(&command[1..3])
        .arg(&file)
        .current_dir(volume.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let frame = vector_bytes("efento", "m00_seed_open_close");
    let uri = format!("coap://127.0.0.1:{port}/m");
    let stored = eventually(std::time::Duration::from_secs(30), || {
        coap_client("post", &uri, Some(&frame), volume.path()).map(|a| a.0) == Some("2.01".into())
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(stored);
    let lake = volume.path().join("data/lake");
    let files = walk(&lake);
    assert!(
        files
            .iter()
            .any(|f| f.extension().is_some_and(|e| e == "parquet")),
        "{files:?}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            out.extend(walk(&entry.path()));
        } else {
            out.push(entry.path());
        }
    }
    out
}

#[test]
fn the_compose_pipeline_validates_with_the_image_paths_and_its_mounts_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let (copies, _) = dockerfile();
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    let mut mounted = Vec::new();
    for line in compose.lines() {
        let line = line.trim().trim_start_matches("- ");
        if let Some(rest) = line.strip_prefix("./") {
            let mut parts = rest.split(':');
            let src = root.join(parts.next().unwrap());
            let dst = parts.next().unwrap().to_string();
            assert!(src.exists(), "{}: missing", src.display());
            mounted.push((dst, src));
        }
    }
    let config_path = "/etc/sensorgate/compose-pipeline.toml";
    assert!(
        compose.contains(&format!("\"--config\", \"{config_path}\"")),
        "{compose}"
    );
    let src = &mounted
        .iter()
        .find(|(dst, _)| dst == config_path)
        .unwrap()
        .1;
    let volume = tempfile::tempdir().unwrap();
    let text = host_paths(
        &std::fs::read_to_string(src).unwrap(),
        &copies,
        volume.path(),
    );
    let file = volume.path().join("compose-pipeline.toml");
    std::fs::write(&file, text).unwrap();
    let out = sensorgate().arg("validate").arg(&file).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("warning"), "{err}");
}
