//! `sensorgate test` as a user meets it: the example test files pass, a wrong expectation fails with a
//! diff that names the JSON pointer and both values, and a file that cannot be loaded exits 2 with
//! its line and column.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::sensorgate;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `sensorgate test ARGS` from the repository root (where pipeline paths resolve).
fn run_test(args: &[&Path]) -> (Option<i32>, String, String) {
    let out: Output = sensorgate()
        .current_dir(repo())
        // Tests run flows without the HTTP API: its token need not be set.
        .env_remove("SENSORGATE_API_TOKEN")
        .arg("test")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("examples/tests"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            toml::from_str::<toml::Table>(&text)
                .unwrap()
                .contains_key("tests")
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_test_file_passes() {
    let files = example_files();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for wanted in [
        "efento.toml",
        "enocean.toml",
        "dead_letter.toml",
        "json.toml",
        "api_registry.toml",
    ] {
        assert!(names.iter().any(|n| n == wanted), "{wanted} in {names:?}");
    }
    for file in &files {
        let (code, stdout, stderr) = run_test(&[file]);
        assert_eq!(code, Some(0), "{}:\n{stdout}{stderr}", file.display());
        assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
        assert!(!stdout.contains("FAIL"), "{stdout}");
        let ok = stdout.lines().filter(|l| l.starts_with("ok   ")).count();
        assert!(
            ok >= 2,
            "{}: only {ok} tests ran:\n{stdout}",
            file.display()
        );
    }
}

#[test]
fn with_no_file_every_test_file_of_examples_tests_runs_and_the_registry_is_passed_by() {
    let (code, stdout, stderr) = run_test(&[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    for file in ["efento.toml", "enocean.toml", "dead_letter.toml"] {
        assert!(
            stdout.contains(&format!("ok   examples/tests/{file}: ")),
            "{file}:\n{stdout}"
        );
    }
    assert!(!stdout.contains("devices.toml"), "{stdout}");
    let summary = stdout.lines().last().unwrap_or_default();
    let passed: usize = summary.split(' ').next().unwrap().parse().unwrap();
    assert!(passed >= 9, "{summary}");
    assert!(summary.ends_with(" passed, 0 failed"), "{summary}");
}

#[test]
fn a_wrong_expectation_fails_with_the_pointer_and_both_values() {
    let fixture = Path::new("tests/fixtures/sensorgate-test/failing.toml");
    let (code, stdout, stderr) = run_test(&[fixture]);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    for wanted in [
        "FAIL tests/fixtures/sensorgate-test/failing.toml: a wrong expected temperature and a field the document does not have",
        "output 1 at `lake`:",
        "/measurements/0/value: expected -5.2, got -5.3",
        "/location: missing (expected \"Room 221\")",
        "actual document:",
        "\"serial\": \"282C0241A1B2\"",
        "more lines)",
        "FAIL tests/fixtures/sensorgate-test/failing.toml: a frame expected in lake that was rejected",
        "output 1 at `lake`: nothing arrived (0 documents reached it)",
        "arrived: `lake` 0, dead letter `rejects` 1",
        "rejected by decode: not an Efento measurements frame",
        "dead letter `rejects`: expected nothing, 1 document arrived",
        "\"raw_hex\": \"6e6f742061206672616d65\"",
    ] {
        assert!(stdout.contains(wanted), "missing {wanted:?} in:\n{stdout}");
    }
    // The values that matched are not reported.
    assert!(!stdout.contains("/measurements/1/value"), "{stdout}");
    assert!(stdout.ends_with("0 passed, 3 failed\n"), "{stdout}");
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_toml_error_exits_2_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.toml",
        "[[tests]]\nname = \"unclosed\nflow = \"efento\"\n",
    );
    let (code, stdout, stderr) = run_test(&[&bad]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    let shown = bad.display().to_string();
    assert!(
        stderr.contains(&format!("{shown}:2:")),
        "line 2 named:\n{stderr}"
    );
    assert!(stderr.contains("TOML syntax"), "{stderr}");
    assert!(stderr.contains("hint:"), "{stderr}");
    assert!(
        stdout.contains(&format!("ERROR {shown}: could not be loaded")),
        "{stdout}"
    );
}

#[test]
fn unknown_names_in_a_test_exit_2_naming_the_test_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = repo().join("pipeline.toml");
    let text = format!(
        r#"pipeline = "{}"

[[tests]]
name = "typos"
flow = "efentoo"
[[tests.inputs]]
path = "m"
hex = "0a06"
[[tests.outputs]]
at = "lake"

[[tests]]
name = "bad hex"
flow = "efento"
[[tests.inputs]]
path = "m"
hex = "0a0g"
[[tests.outputs]]
at = "laek"
"#,
        pipeline.display()
    );
    let file = write(dir.path(), "typos.toml", &text);
    let (code, stdout, stderr) = run_test(&[&file]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    let shown = file.display().to_string();
    for wanted in [
        format!("{shown}:5:8: error: test `typos`: the pipeline has no flow `efentoo`"),
        "did you mean `efento`?".to_string(),
        format!("{shown}:17:7: error: test `bad hex`, input 1: `hex` is not hex"),
        format!("{shown}:19:6: error: test `bad hex`: `laek` is not a sink of flow `efento`"),
        "did you mean `lake`?".to_string(),
    ] {
        assert!(stderr.contains(&wanted), "missing {wanted:?} in:\n{stderr}");
    }
}

#[test]
fn a_file_that_cannot_be_loaded_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let broken = write(dir.path(), "broken.toml", "[[tests]\n");
    let good = repo().join("examples/tests/efento.toml");
    let (code, stdout, stderr) = run_test(&[&broken, &good]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(stdout.contains("ok   "), "{stdout}");
    assert!(
        stdout.ends_with("3 passed, 0 failed; 1 file could not be loaded\n"),
        "{stdout}"
    );
}

#[test]
fn a_flow_reading_the_api_store_needs_a_registry_file_or_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = r#"
[api]
listen = "127.0.0.1:0"
token_env = "SENSORGATE_API_TOKEN"
store = "registry.redb"

[sources.gateways]
type = "esp3_websocket"
listen = "127.0.0.1:0"

[sinks.out]
type = "json_lines"
path = "out.jsonl"

[[flows]]
name = "enocean"
from = ["gateways"]
stages = [{ type = "decode", codec = "esp3", registry = "api" }, { type = "enrich", registry = "api" }]
to = ["out"]
"#;
    let test = r#"
[[tests]]
name = "a telegram"
[[tests.inputs]]
gateway = "gw-1"
hex = "55000a0701eba5007d8c0a0180a1b30001ffffffff50004d"
[[tests.outputs]]
at = "out"
kind = "event"
"#;
    let file = write(dir.path(), "api.toml", &format!("{pipeline}{test}"));
    let (code, stdout, stderr) = run_test(&[&file]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    for wanted in [
        "flow `enocean` reads registry = \"api\" (the HTTP API's device store), which `sensorgate test` does not start",
        "give the test a registry file: registry = \"devices.toml\"",
    ] {
        assert!(stderr.contains(wanted), "missing {wanted:?} in:\n{stderr}");
    }
    // Named, the registry file serves both stages: the device decodes and is enriched.
    let registry = repo().join("examples/tests/devices.toml");
    let test = format!(
        "registry = \"{}\"\n{test}kind = \"telemetry\"\ndocument = {{ meta = {{ friendly_id = \"Climate 3\" }} }}\n",
        registry.display()
    )
    .replace("kind = \"event\"\n", "kind = \"event\"\n[[tests.outputs]]\nat = \"out\"\n");
    let file = write(dir.path(), "api.toml", &format!("{test}{pipeline}"));
    let (code, stdout, stderr) = run_test(&[&file]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("1 passed, 0 failed"), "{stdout}");
}
