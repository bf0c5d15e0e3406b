//! What the command line does beyond parsing arguments, kept in the library so it is tested.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::codecs::enocean::engine;
use crate::codecs::enocean::secure::{Key, Slf};
use crate::codecs::wasm::{self, PluginsConfig, Prefer};
use crate::registry::{self, Device, Registry, Security};

/// `sensorgate configfile`: a pipeline.toml of every component and option, commented.
pub const CONFIGFILE: &str = include_str!("configfile.toml");

/// Plugins for the CLI: `dir` with every default but `prefer`, loaded once, not watched.
fn plugin_host(dir: &Path, prefer: Prefer) -> Result<Arc<wasm::Host>, String> {
    let mut config = PluginsConfig::for_dir(dir);
    config.prefer = prefer;
    config.watch = crate::config::HumanDuration::from_secs(0);
    let host = wasm::Host::open(&config).map_err(|e| format!("{e:#}"))?;
    for failure in &host.plugins().failures {
        eprintln!("warning: {}: {}", failure.file.display(), failure.error);
    }
    Ok(host)
}

/// `sensorgate decode esp3`: the documents of the frames in `hex`, one object for one telegram, an
/// array for several. Senders are looked up in the registry file if given; the others are decoded
/// with `eep` and `key` when given (the data is shown raw without an EEP). With `plugins`, EEPs
/// are decoded by the plugins in that directory too (`prefer` says who wins where both know one).
#[allow(clippy::too_many_arguments)]
pub fn decode_esp3(
    hex: &str,
    registry_file: Option<&Path>,
    eep: Option<&str>,
    key: Option<&str>,
    slf: &str,
    rlc: &str,
    plugins: Option<&Path>,
    prefer: Prefer,
) -> Result<Value, String> {
    let runner = match plugins {
        Some(dir) => Some(wasm::Runner::new(plugin_host(dir, prefer)?)),
        None => None,
    };
    let registry = match registry_file {
        Some(path) => Registry::open(path).map_err(|e| e.to_string())?,
        None => Registry::empty(),
    };
    let eep = match eep {
        Some(text) => Some(registry::normalize_eep(text).ok_or_else(|| {
            format!("--eep {text}: not an EEP; write it as RORG-FUNC-TYPE, e.g. a5-02-05")
        })?),
        None => None,
    };
    let security = match key {
        Some(key) => {
            let key = Key::from_hex(key).map_err(|_| "--key must be 32 hex digits (AES-128)")?;
            let slf = registry::hex_u32(slf)
                .and_then(|v| u8::try_from(v).ok())
                .ok_or_else(|| format!("--slf {slf}: one byte in hex, e.g. 0x8b"))?;
            let rlc =
                registry::hex_u32(rlc).ok_or_else(|| format!("--rlc {rlc}: hex, e.g. c0ffee"))?;
            Some(Security {
                key,
                slf: Slf(slf),
                rlc,
            })
        }
        None => None,
    };
    let default_device =
        (eep.is_some() || security.is_some() || registry_file.is_none()).then(|| Device {
            eurid: 0,
            id: String::new(),
            eep,
            friendly_id: String::new(),
            location: String::new(),
            custom_tag: String::new(),
            security,
            fields: Default::default(),
        });
    let outputs = engine::decode_hex(hex, registry, default_device, runner)?;
    one_or_many(outputs.into_iter().map(|o| Value::Object(o.body)).collect())
        .ok_or_else(|| "no complete telegram (a chained telegram still missing parts?)".into())
}

/// One document as an object, several as an array, none as `None`.
fn one_or_many(mut docs: Vec<Value>) -> Option<Value> {
    match docs.len() {
        0 => None,
        1 => Some(docs.remove(0)),
        _ => Some(Value::Array(docs)),
    }
}

/// `sensorgate decode plugin`: runs the vendor codec plugin for `profile` (`vendor:flespi`) from
/// `dir` over `payload`, as the decode stage would; each document with its device.
pub fn decode_plugin(
    dir: &Path,
    profile: &str,
    device: Option<&str>,
    payload: &[u8],
) -> Result<Value, String> {
    let mut runner = wasm::Runner::new(plugin_host(dir, Prefer::Builtin)?);
    let frame = wasm::FrameRef {
        payload,
        device: device.unwrap_or(""),
        rorg: 0,
        status: 0,
        gateway: None,
        route: None,
    };
    let documents = runner
        .decode_vendor(profile, frame)
        .ok_or_else(|| {
            format!(
                "no plugin in {} decodes {profile} (see `sensorgate plugins list {}`)",
                dir.display(),
                dir.display()
            )
        })?
        .map_err(|e| e.to_string())?;
    let docs = documents
        .into_iter()
        .map(|d| {
            let mut doc = serde_json::Map::new();
            doc.insert("device".into(), Value::String(d.device));
            doc.extend(d.body);
            Value::Object(doc)
        })
        .collect();
    Ok(one_or_many(docs).unwrap_or(Value::Array(Vec::new())))
}

/// `sensorgate plugins list`: what each plugin in `dir` is and decodes, and what did not load.
/// With `timing`, how long loading took (and whether compiled code came from the cache).
pub fn plugins_list(dir: &Path, timing: bool, cache: bool) -> Result<String, String> {
    let mut config = PluginsConfig::for_dir(dir);
    config.cache = cache;
    let started = Instant::now();
    let host = wasm::Host::open(&config).map_err(|e| format!("{e:#}"))?;
    let elapsed = started.elapsed();
    let set = host.plugins();
    let mut out = String::new();
    let _ = writeln!(out, "NAME\tVERSION\tDECODES\tFILE\tSIZE");
    for p in &set.plugins {
        let _ = write!(
            out,
            "{}\t{}\t{}\t{}\t{}",
            p.name,
            p.version,
            p.decodes.join(","),
            p.file.display(),
            p.size
        );
        if timing {
            let from = if p.cached { "cache" } else { "compiled" };
            let _ = write!(out, "\t{:.1} ms ({from})", p.load_time.as_secs_f64() * 1e3);
        }
        out.push('\n');
    }
    for f in &set.failures {
        let _ = writeln!(out, "error\t{}\t{}", f.file.display(), f.error);
    }
    if timing {
        let _ = writeln!(
            out,
            "loaded {} plugins ({} errors) in {:.1} ms, compiled-code cache {}",
            set.plugins.len(),
            set.failures.len(),
            elapsed.as_secs_f64() * 1e3,
            if cache { "on" } else { "off" }
        );
    }
    Ok(out)
}

/// `sensorgate tap`: streams the documents a running instance's flows send to their sinks (its
/// HTTP API's `/api/v1/tap`), one JSON object per line on stdout, until interrupted. `token`: the
/// API's bearer token, if it needs one.
pub async fn tap(api: &str, flow: Option<&str>, token: Option<&str>) -> anyhow::Result<()> {
    use std::io::Write as _;
    let base = api.trim_end_matches('/');
    let mut url = format!("{base}/api/v1/tap");
    if let Some(flow) = flow {
        url.push_str("?flow=");
        url.push_str(flow);
    }
    let client = reqwest::Client::new();
    let mut request = client.get(&url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let mut response = request.send().await.map_err(|e| {
        anyhow::anyhow!("cannot reach {url}: {e} (is the instance running with an [api] section?)")
    })?;
    if !response.status().is_success() {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        anyhow::bail!("{url}: {status}: {}", text.trim());
    }
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?
    {
        if out.write_all(&chunk).and_then(|()| out.flush()).is_err() {
            break; // stdout closed (a pipe into head)
        }
    }
    Ok(())
}
