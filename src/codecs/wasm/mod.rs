//! Decoder plugins: WebAssembly components that implement `plugins/wit/decoder.wit`
//! (`sensorgate:decoder@0.1.0`), run by wasmtime.
//!
//! A [`Host`] loads every `*.wasm` in the configured directory at start, asks each for its
//! metadata (name, version, what it decodes: `eep:a5-20-01`, `vendor:flespi`), and polls the
//! directory for new or changed files. Compiled code is cached on disk (`<dir>/.cache/` unless
//! configured otherwise), keyed by a hash of the component's bytes and of wasmtime's
//! compatibility hash, so a restart deserializes instead of compiling.
//!
//! A [`Runner`] belongs to one flow: it keeps one store and instance per plugin and reuses them
//! from call to call. Each call runs under a fuel budget and a memory cap. A trap, running out of
//! fuel, growing memory past the cap or returning output the host refuses (a NaN, an over-long
//! string, a document that is not a JSON object) fails that one call with a [`Failure`], drops
//! the instance (the next call gets a fresh one) and is counted:
//! `plugin_calls_total{plugin}`, `plugin_fuel_used_total{plugin}`,
//! `plugin_traps_total{plugin, reason}` (reason `out_of_fuel`, `memory`, `trap`, `bad_output`)
//! and `plugin_decode_errors_total{plugin}` for the plugin's own typed errors.
//!
//! Plugins get no WASI: the linker provides `sensorgate:decoder/host.log` and nothing else, so a
//! component that imports anything more fails to load with the names of those imports. The SDK
//! (`plugins/sdk`) builds `no_std` guests that import nothing else.

mod bindings {
    wasmtime::component::bindgen!({
        world: "decoder",
        path: "plugins/wit",
        // Frames are lowered straight from the caller's bytes and strings: no copies on the host.
        ownership: Borrowing {
            duplicate_if_necessary: true
        },
    });
}

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Store, Trap};

use self::bindings::sensorgate::decoder::types as wit;
use self::bindings::{Decoder, DecoderPre};
use super::Fnv1a;
use super::enocean::{self, DataPoint};
use crate::config::HumanDuration;
use crate::metrics::{self, Counter};

pub use self::bindings::sensorgate::decoder::types::{Output, Transport};

/// `[plugins]` in pipeline.toml.
///
/// ```toml
/// [plugins]
/// dir = "plugins/dist"     # every *.wasm here is loaded; new and changed files are picked up
/// fuel = 10_000_000        # per call: about as many wasm instructions
/// memory_mib = 16          # a plugin instance's memory cap
/// prefer = "builtin"       # or "plugin": who decodes an EEP that both know
/// ```
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// The directory of `.wasm` components.
    pub dir: PathBuf,
    /// Fuel per decode call (wasmtime counts roughly one unit per instruction). A call that runs
    /// out fails its record (reason `out_of_fuel`).
    #[serde(default = "default_fuel")]
    pub fuel: u64,
    /// The most linear memory one plugin instance may have, in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// Which decoder wins when a plugin decodes an EEP the built-in table also has.
    #[serde(default)]
    pub prefer: Prefer,
    /// Where compiled code is cached; default `<dir>/.cache`.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Keep compiled code on disk (fast restarts). `false` compiles at every start.
    #[serde(default = "default_cache")]
    pub cache: bool,
    /// How often the directory is checked for new or changed files; "0s" never.
    #[serde(default = "default_watch")]
    pub watch: HumanDuration,
}

fn default_fuel() -> u64 {
    10_000_000
}

fn default_memory_mib() -> u32 {
    16
}

fn default_cache() -> bool {
    true
}

fn default_watch() -> HumanDuration {
    HumanDuration::from_secs(1)
}

impl PluginsConfig {
    /// Settings for `dir` with every default (the CLI's `--plugin DIR`).
    pub fn for_dir(dir: &Path) -> PluginsConfig {
        PluginsConfig {
            dir: dir.to_path_buf(),
            fuel: default_fuel(),
            memory_mib: default_memory_mib(),
            prefer: Prefer::default(),
            cache_dir: None,
            cache: default_cache(),
            watch: default_watch(),
        }
    }

    /// Semantic problems, for `sensorgate validate`: (key, message, hint).
    pub fn problems(&self) -> Vec<(&'static str, String, String)> {
        let mut out = Vec::new();
        if !self.dir.is_dir() {
            out.push((
                "dir",
                format!("plugin directory {} does not exist", self.dir.display()),
                "create it (plugins/build.sh fills plugins/dist) or point dir at the folder of .wasm files".into(),
            ));
        }
        if self.fuel < 1_000 {
            out.push((
                "fuel",
                format!("fuel = {} is too little for any decoder", self.fuel),
                "the default is 10000000; a table-driven decoder uses a few thousand per call"
                    .into(),
            ));
        }
        if !(1..=4096).contains(&self.memory_mib) {
            out.push((
                "memory_mib",
                format!("memory_mib = {} is out of range", self.memory_mib),
                "write a number of MiB between 1 and 4096; the default is 16".into(),
            ));
        }
        out
    }

    fn cache_path(&self) -> Option<PathBuf> {
        self.cache.then(|| {
            self.cache_dir
                .clone()
                .unwrap_or_else(|| self.dir.join(".cache"))
        })
    }
}

/// Who decodes an EEP that a plugin and the built-in table both know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Prefer {
    #[default]
    Builtin,
    Plugin,
}

/// Why a plugin call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The plugin said it does not decode this (its `unsupported` error).
    Unsupported,
    /// The plugin said the payload is not what the profile says (its `malformed` error).
    Malformed,
    /// The call used up its fuel (an endless or too long loop).
    OutOfFuel,
    /// The instance tried to grow its memory past the cap.
    Memory,
    /// The instance trapped (a panic, `unreachable`, a bad memory access, an ABI violation).
    Trap,
    /// The plugin returned something the host refuses (NaN, over-long strings, bad JSON).
    BadOutput,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unsupported => "unsupported",
            Reason::Malformed => "malformed",
            Reason::OutOfFuel => "out_of_fuel",
            Reason::Memory => "memory",
            Reason::Trap => "trap",
            Reason::BadOutput => "bad_output",
        }
    }

    /// The plugin answered, with one of its typed errors: the frame does not fit the profile.
    /// Anything else is the plugin misbehaving.
    pub fn is_decode_error(self) -> bool {
        matches!(self, Reason::Unsupported | Reason::Malformed)
    }
}

/// A failed plugin call: which plugin, why, and the details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugin {plugin} ({profile}): {}: {message}", reason.as_str())]
pub struct Failure {
    pub plugin: String,
    pub profile: String,
    pub reason: Reason,
    pub message: String,
}

/// A plugin that could not be loaded, and why.
#[derive(Debug, Clone)]
pub struct LoadFailure {
    pub file: PathBuf,
    pub error: String,
}

/// Counters of one plugin, looked up once.
#[derive(Debug)]
struct Counters {
    calls: Counter,
    fuel: Counter,
    decode_errors: Counter,
    out_of_fuel: Counter,
    memory: Counter,
    trap: Counter,
    bad_output: Counter,
}

impl Counters {
    fn new(plugin: &str) -> Counters {
        let trap = |reason: &str| {
            metrics::counter(
                "plugin_traps_total",
                &[("plugin", plugin), ("reason", reason)],
            )
        };
        Counters {
            calls: metrics::counter("plugin_calls_total", &[("plugin", plugin)]),
            fuel: metrics::counter("plugin_fuel_used_total", &[("plugin", plugin)]),
            decode_errors: metrics::counter("plugin_decode_errors_total", &[("plugin", plugin)]),
            out_of_fuel: trap(Reason::OutOfFuel.as_str()),
            memory: trap(Reason::Memory.as_str()),
            trap: trap(Reason::Trap.as_str()),
            bad_output: trap(Reason::BadOutput.as_str()),
        }
    }

    fn failure(&self, reason: Reason) -> &Counter {
        match reason {
            Reason::Unsupported | Reason::Malformed => &self.decode_errors,
            Reason::OutOfFuel => &self.out_of_fuel,
            Reason::Memory => &self.memory,
            Reason::Trap => &self.trap,
            Reason::BadOutput => &self.bad_output,
        }
    }
}

/// One loaded plugin.
pub struct Plugin {
    pub name: String,
    pub version: String,
    /// What it decodes, as it declared it (`eep:a5-20-01`, `vendor:flespi`).
    pub decodes: Vec<String>,
    pub file: PathBuf,
    pub size: u64,
    /// Whether the compiled code came from the on-disk cache.
    pub cached: bool,
    /// Compile (or deserialize) plus the metadata call.
    pub load_time: Duration,
    id: u64,
    stamp: Stamp,
    pre: DecoderPre<StoreData>,
    counters: Counters,
}

/// What identifies a file's version: modification time and size.
type Stamp = (SystemTime, u64);

/// The plugins of the directory at one moment.
#[derive(Default)]
pub struct PluginSet {
    /// Loaded plugins, by file name.
    pub plugins: Vec<Arc<Plugin>>,
    /// Files that did not load, and declarations that clash with an earlier file's.
    pub failures: Vec<LoadFailure>,
    /// `a5-20-01` -> index in `plugins`, and the profile as frames name it (`eep:a5-20-01`).
    eeps: HashMap<String, (usize, String)>,
    /// `flespi` -> index in `plugins`.
    vendors: HashMap<String, usize>,
    stamps: BTreeMap<PathBuf, Stamp>,
}

impl PluginSet {
    /// The plugin that decodes `profile` (`eep:a5-20-01`, `vendor:flespi`).
    pub fn find(&self, profile: &str) -> Option<&Arc<Plugin>> {
        let index = match parse_profile(profile)? {
            Profile::Eep(eep) => &self.eeps.get(&eep)?.0,
            Profile::Vendor(name) => self.vendors.get(&name)?,
        };
        self.plugins.get(*index)
    }
}

enum Profile {
    Eep(String),
    Vendor(String),
}

/// `eep:A5-20-01` -> `Eep("a5-20-01")`, `vendor:Flespi` -> `Vendor("flespi")`.
fn parse_profile(text: &str) -> Option<Profile> {
    let (kind, rest) = text.trim().split_once(':')?;
    match kind.trim().to_ascii_lowercase().as_str() {
        "eep" => crate::registry::normalize_eep(rest).map(Profile::Eep),
        "vendor" if !rest.trim().is_empty() => {
            Some(Profile::Vendor(rest.trim().to_ascii_lowercase()))
        }
        _ => None,
    }
}

/// The store's data: the memory cap and the plugin's name for its log lines.
struct StoreData {
    limits: MemoryCap,
    plugin: Arc<str>,
    /// Log lines written during the current call (capped, a plugin must not flood the log).
    logged: u32,
}

/// Caps linear memory; remembers that the cap was hit so the failure can say so.
struct MemoryCap {
    bytes: usize,
    exceeded: bool,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.bytes {
            self.exceeded = true;
            wasmtime::bail!(
                "memory would grow from {current} to {desired} bytes, past the cap of {} bytes",
                self.bytes
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Log lines one call may write.
const MAX_LOG_LINES_PER_CALL: u32 = 8;
/// Longest key, unit, meaning or device id a plugin may return.
const MAX_NAME_BYTES: usize = 256;
/// Longest text value.
const MAX_TEXT_BYTES: usize = 4096;
/// Most readings per frame.
const MAX_READINGS: usize = 1024;
/// Largest JSON document.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

impl wit::Host for StoreData {}

impl bindings::sensorgate::decoder::host::Host for StoreData {
    fn log(&mut self, level: wit::Level, message: String) {
        self.logged += 1;
        if self.logged > MAX_LOG_LINES_PER_CALL {
            return;
        }
        let message: String = message.chars().take(MAX_TEXT_BYTES).collect();
        let plugin = &*self.plugin;
        match level {
            wit::Level::Debug => tracing::debug!(plugin, "{message}"),
            wit::Level::Info => tracing::info!(plugin, "{message}"),
            wit::Level::Warn => tracing::warn!(plugin, "{message}"),
            wit::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

/// Loads and watches the plugin directory; shared by every flow.
pub struct Host {
    engine: wasmtime::Engine,
    linker: Linker<StoreData>,
    config: PluginsConfig,
    current: RwLock<Arc<PluginSet>>,
    generation: AtomicU64,
    next_id: AtomicU64,
}

impl Host {
    /// Loads every plugin in `config.dir`. Fails if the directory cannot be read; a plugin that
    /// does not load is listed in [`PluginSet::failures`] and logged, and the others still load.
    pub fn open(config: &PluginsConfig) -> anyhow::Result<Arc<Host>> {
        let mut wasm = wasmtime::Config::new();
        wasm.wasm_component_model(true);
        wasm.consume_fuel(true);
        wasm.max_wasm_stack(512 * 1024);
        let engine = wasmtime::Engine::new(&wasm)
            .map_err(|e| anyhow::anyhow!("cannot start wasmtime: {e}"))?;
        let mut linker = Linker::new(&engine);
        Decoder::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(|e| anyhow::anyhow!("cannot set up the plugin linker: {e}"))?;
        let host = Arc::new(Host {
            engine,
            linker,
            config: config.clone(),
            current: RwLock::new(Arc::new(PluginSet::default())),
            generation: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
        });
        let set = host.load_dir(None)?;
        for failure in &set.failures {
            tracing::error!(file = %failure.file.display(), error = %failure.error, "plugin not loaded");
        }
        for plugin in &set.plugins {
            tracing::info!(plugin = %plugin.name, version = %plugin.version, decodes = ?plugin.decodes, cached = plugin.cached, "plugin loaded");
        }
        *host.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        Ok(host)
    }

    pub fn config(&self) -> &PluginsConfig {
        &self.config
    }

    /// The plugins loaded now.
    pub fn plugins(&self) -> Arc<PluginSet> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Polls the directory every `config.watch` from a task of the current tokio runtime (none
    /// outside one) and loads new or changed files. Stops when the host is dropped.
    pub fn watch(self: &Arc<Self>) {
        let every = self.config.watch.get();
        if every.is_zero() {
            return;
        }
        crate::registry::poll_while_alive(self, every, true, |host| {
            host.reload_if_changed();
        });
    }

    /// Reloads the directory if a `.wasm` file appeared, changed or went away. Returns whether
    /// it did.
    pub fn reload_if_changed(&self) -> bool {
        let current = self.plugins();
        match scan(&self.config.dir) {
            Ok(stamps) if stamps == current.stamps => return false,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(dir = %self.config.dir.display(), error = %e, "plugin directory not readable; keeping the plugins loaded");
                return false;
            }
        }
        match self.load_dir(Some(&current)) {
            Ok(set) => {
                for plugin in &set.plugins {
                    if !current.plugins.iter().any(|p| p.id == plugin.id) {
                        tracing::info!(plugin = %plugin.name, version = %plugin.version, decodes = ?plugin.decodes, file = %plugin.file.display(), "plugin loaded");
                    }
                }
                for failure in &set.failures {
                    tracing::error!(file = %failure.file.display(), error = %failure.error, "plugin not loaded");
                }
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
                self.generation.fetch_add(1, Ordering::Release);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "plugin directory not reloaded");
                false
            }
        }
    }

    /// Loads every `.wasm` file of the directory; files unchanged since `previous` keep their
    /// loaded plugin.
    fn load_dir(&self, previous: Option<&PluginSet>) -> anyhow::Result<PluginSet> {
        let stamps = scan(&self.config.dir).map_err(|e| {
            anyhow::anyhow!(
                "plugin directory {}: {e} (check [plugins] dir)",
                self.config.dir.display()
            )
        })?;
        let mut set = PluginSet::default();
        for (path, stamp) in &stamps {
            let reused = previous.and_then(|p| {
                p.plugins
                    .iter()
                    .find(|plugin| &plugin.file == path && plugin.stamp == *stamp)
                    .cloned()
            });
            let plugin = match reused {
                Some(plugin) => plugin,
                None => match self.load(path, *stamp) {
                    Ok(plugin) => Arc::new(plugin),
                    Err(error) => {
                        set.failures.push(LoadFailure {
                            file: path.clone(),
                            error,
                        });
                        continue;
                    }
                },
            };
            set.add(plugin);
        }
        set.stamps = stamps;
        Ok(set)
    }

    fn load(&self, path: &Path, stamp: Stamp) -> Result<Plugin, String> {
        let started = Instant::now();
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
        let (component, cached) = self.compile(&bytes)?;
        let foreign: Vec<String> = component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_string())
            .filter(|name| !name.starts_with("sensorgate:decoder/"))
            .collect();
        if !foreign.is_empty() {
            return Err(format!(
                "imports {}, which sensorgate does not provide: a plugin may import only sensorgate:decoder/host (build it no_std with plugins/sdk)",
                foreign.join(", ")
            ));
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(DecoderPre::new)
            .map_err(|e| format!("does not implement sensorgate:decoder@0.1.0: {e:#}"))?;
        let name: Arc<str> = Arc::from(
            path.file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default(),
        );
        let mut live = Live::new(&self.engine, &pre, &self.config, name)
            .map_err(|e| format!("cannot be instantiated: {e:#}"))?;
        live.store
            .set_fuel(self.config.fuel)
            .map_err(|e| e.to_string())?;
        let meta = live
            .decoder
            .call_metadata(&mut live.store)
            .map_err(|e| format!("metadata() failed: {e:#}"))?;
        check_metadata(&meta)?;
        Ok(Plugin {
            counters: Counters::new(&meta.name),
            name: meta.name,
            version: meta.version,
            decodes: meta.decodes,
            file: path.to_path_buf(),
            size: bytes.len() as u64,
            cached,
            load_time: started.elapsed(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            stamp,
            pre,
        })
    }

    /// Compiles `bytes`, or deserializes the cached result of an earlier compilation. Returns
    /// whether it came from the cache.
    fn compile(&self, bytes: &[u8]) -> Result<(Component, bool), String> {
        let Some(cache) = self.config.cache_path() else {
            let component = Component::new(&self.engine, bytes)
                .map_err(|e| format!("not a valid component: {e:#}"))?;
            return Ok((component, false));
        };
        let mut hash = Fnv1a::new();
        hash.write(bytes);
        std::hash::Hash::hash(&self.engine.precompile_compatibility_hash(), &mut hash);
        let file = cache.join(format!("{:016x}.cwasm", hash.finish()));
        if file.is_file() {
            // SAFETY: the cache directory holds only files this host wrote with
            // `Component::serialize` (written to a temporary name, then renamed), for an engine
            // with the same compatibility hash (part of the name).
            match unsafe { Component::deserialize_file(&self.engine, &file) } {
                Ok(component) => return Ok((component, true)),
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "cached plugin code not usable; compiling again");
                }
            }
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| format!("not a valid component: {e:#}"))?;
        let written = component
            .serialize()
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|code| {
                std::fs::create_dir_all(&cache)?;
                let tmp = cache.join(format!(
                    ".{:016x}.{}.tmp",
                    hash.finish(),
                    std::process::id()
                ));
                std::fs::write(&tmp, code)?;
                std::fs::rename(&tmp, &file)
            });
        if let Err(e) = written {
            tracing::warn!(dir = %cache.display(), error = %e, "compiled plugin code not cached; the next start compiles again");
        }
        Ok((component, false))
    }
}

impl PluginSet {
    fn add(&mut self, plugin: Arc<Plugin>) {
        let index = self.plugins.len();
        for declared in &plugin.decodes {
            let taken = match parse_profile(declared) {
                Some(Profile::Eep(eep)) => match self.eeps.get(&eep) {
                    Some(&(other, _)) => Some(other),
                    None => {
                        let profile = format!("eep:{eep}");
                        self.eeps.insert(eep, (index, profile));
                        None
                    }
                },
                Some(Profile::Vendor(name)) => match self.vendors.get(&name) {
                    Some(&other) => Some(other),
                    None => {
                        self.vendors.insert(name, index);
                        None
                    }
                },
                None => None,
            };
            if let Some(other) = taken {
                self.failures.push(LoadFailure {
                    file: plugin.file.clone(),
                    error: format!(
                        "{declared} is already decoded by {} ({}); this plugin is not used for it",
                        self.plugins[other].name,
                        self.plugins[other].file.display()
                    ),
                });
            }
        }
        self.plugins.push(plugin);
    }
}

fn check_metadata(meta: &wit::Metadata) -> Result<(), String> {
    if meta.name.trim().is_empty() || meta.name.len() > MAX_NAME_BYTES {
        return Err("metadata() gives no usable name".into());
    }
    if meta.decodes.is_empty() {
        return Err(format!(
            "plugin {} declares nothing it decodes (metadata().decodes is empty)",
            meta.name
        ));
    }
    for declared in &meta.decodes {
        if parse_profile(declared).is_none() {
            return Err(format!(
                "plugin {} declares `{declared}`: write eep:RR-FF-TT (e.g. eep:a5-20-01) or vendor:NAME",
                meta.name
            ));
        }
    }
    Ok(())
}

/// The `.wasm` files of `dir` with their stamps, sorted by path.
fn scan(dir: &Path) -> std::io::Result<BTreeMap<PathBuf, Stamp>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "wasm") {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() {
            let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            out.insert(path, (modified, meta.len()));
        }
    }
    Ok(out)
}

/// One store and instance of a plugin.
struct Live {
    store: Store<StoreData>,
    decoder: Decoder,
}

impl Live {
    fn new(
        engine: &wasmtime::Engine,
        pre: &DecoderPre<StoreData>,
        config: &PluginsConfig,
        plugin: Arc<str>,
    ) -> wasmtime::Result<Live> {
        let data = StoreData {
            limits: MemoryCap {
                bytes: config.memory_mib as usize * 1024 * 1024,
                exceeded: false,
            },
            plugin,
            logged: 0,
        };
        let mut store = Store::new(engine, data);
        store.limiter(|data| &mut data.limits);
        // Instantiation runs start functions: under the budget too.
        store.set_fuel(config.fuel)?;
        let decoder = pre.instantiate(&mut store)?;
        Ok(Live { store, decoder })
    }
}

/// One frame for a plugin, borrowed from the caller.
#[derive(Debug, Clone, Copy)]
pub struct FrameRef<'a> {
    pub payload: &'a [u8],
    pub device: &'a str,
    pub rorg: u8,
    pub status: u8,
    pub gateway: Option<&'a str>,
    pub route: Option<&'a str>,
}

/// A vendor codec's document, checked: the device and a JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct VendorDocument {
    pub device: String,
    pub body: Map<String, Value>,
}

/// A flow's plugin instances. Not shared: each flow has its own, so calls never wait on another
/// flow.
pub struct Runner {
    host: Arc<Host>,
    generation: u64,
    set: Arc<PluginSet>,
    live: HashMap<u64, Live>,
}

impl Runner {
    pub fn new(host: Arc<Host>) -> Runner {
        let generation = host.generation.load(Ordering::Acquire);
        let set = host.plugins();
        Runner {
            host,
            generation,
            set,
            live: HashMap::new(),
        }
    }

    pub fn prefer(&self) -> Prefer {
        self.host.config.prefer
    }

    /// Picks up a reload of the directory: instances of plugins that changed or went away go.
    fn refresh(&mut self) {
        let generation = self.host.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.generation = generation;
            self.set = self.host.plugins();
            let set = &self.set;
            self.live
                .retain(|id, _| set.plugins.iter().any(|p| p.id == *id));
        }
    }

    /// Whether a plugin decodes EEP `eep` (normalized, `a5-20-01`).
    pub fn decodes_eep(&mut self, eep: &str) -> bool {
        self.refresh();
        self.set.eeps.contains_key(eep)
    }

    /// Decodes an EnOcean telegram with the plugin for EEP `eep` (normalized): its readings as
    /// `data` entries. `None` if no plugin decodes that EEP.
    pub fn decode_eep(
        &mut self,
        eep: &str,
        frame: FrameRef<'_>,
    ) -> Option<Result<Vec<DataPoint>, Failure>> {
        self.refresh();
        let set = self.set.clone();
        let (index, profile) = set.eeps.get(eep)?;
        let plugin = set.plugins.get(*index)?;
        Some(
            self.call(plugin, profile, frame)
                .and_then(|output| readings(output).map_err(|m| (Reason::BadOutput, m)))
                .map_err(|(reason, message)| self.fail(plugin, profile, reason, message)),
        )
    }

    /// Runs a vendor codec (`profile` as configured, e.g. `vendor:flespi`) over a payload.
    /// `None` if no plugin decodes it.
    pub fn decode_vendor(
        &mut self,
        profile: &str,
        frame: FrameRef<'_>,
    ) -> Option<Result<Vec<VendorDocument>, Failure>> {
        self.refresh();
        let plugin = self.set.find(profile)?.clone();
        Some(
            self.call(&plugin, profile, frame)
                .and_then(|output| documents(output).map_err(|m| (Reason::BadOutput, m)))
                .map_err(|(reason, message)| self.fail(&plugin, profile, reason, message)),
        )
    }

    /// Counts a failure and drops the instance unless the plugin merely answered with an error.
    fn fail(&mut self, plugin: &Plugin, profile: &str, reason: Reason, message: String) -> Failure {
        plugin.counters.failure(reason).inc();
        if !reason.is_decode_error() {
            self.live.remove(&plugin.id);
            tracing::warn!(plugin = %plugin.name, reason = reason.as_str(), %message, "plugin call failed; its instance is recreated for the next call");
        }
        Failure {
            plugin: plugin.name.clone(),
            profile: profile.to_string(),
            reason,
            message,
        }
    }

    fn call(
        &mut self,
        plugin: &Plugin,
        profile: &str,
        frame: FrameRef<'_>,
    ) -> Result<Output, (Reason, String)> {
        let config = &self.host.config;
        let live = match self.live.entry(plugin.id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let name = Arc::from(plugin.name.as_str());
                match Live::new(&self.host.engine, &plugin.pre, config, name) {
                    Ok(live) => e.insert(live),
                    Err(error) => return Err(classify(None, &error)),
                }
            }
        };
        let wit_frame = wit::Frame {
            payload: frame.payload,
            device: frame.device,
            profile,
            transport: wit::Transport {
                rorg: frame.rorg,
                status: frame.status,
                gateway: frame.gateway,
                route: frame.route,
            },
        };
        live.store.data_mut().logged = 0;
        if let Err(e) = live.store.set_fuel(config.fuel) {
            return Err((Reason::Trap, e.to_string()));
        }
        plugin.counters.calls.inc();
        let result = live.decoder.call_decode(&mut live.store, wit_frame);
        let left = live.store.get_fuel().unwrap_or(0);
        plugin.counters.fuel.add(config.fuel.saturating_sub(left));
        match result {
            Ok(Ok(output)) => Ok(output),
            Ok(Err(wit::DecodeError::Unsupported(m))) => Err((Reason::Unsupported, clip(m))),
            Ok(Err(wit::DecodeError::Malformed(m))) => Err((Reason::Malformed, clip(m))),
            Err(error) => Err(classify(Some(&live.store.data().limits), &error)),
        }
    }
}

fn classify(limits: Option<&MemoryCap>, error: &wasmtime::Error) -> (Reason, String) {
    // The root cause, without the wasm backtrace that the error carries as context.
    let message = clip(error.root_cause().to_string());
    if limits.is_some_and(|l| l.exceeded) {
        return (Reason::Memory, message);
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => (Reason::OutOfFuel, "ran out of fuel".into()),
        _ => (Reason::Trap, message),
    }
}

/// Plugin error texts go into documents: keep them short.
fn clip(mut text: String) -> String {
    if text.len() > MAX_TEXT_BYTES {
        let mut end = MAX_TEXT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

fn check_name(what: &str, text: &str) -> Result<(), String> {
    if text.is_empty() || text.len() > MAX_NAME_BYTES {
        return Err(format!(
            "{what} of {} bytes (1 to {MAX_NAME_BYTES} allowed)",
            text.len()
        ));
    }
    Ok(())
}

/// The readings of an EnOcean profile plugin as `data` entries, checked.
fn readings(output: Output) -> Result<Vec<DataPoint>, String> {
    let list = match output {
        Output::Readings(list) => list,
        Output::Documents(_) => {
            return Err("an EnOcean profile must give readings, not documents".into());
        }
    };
    if list.len() > MAX_READINGS {
        return Err(format!(
            "{} readings (at most {MAX_READINGS} allowed)",
            list.len()
        ));
    }
    list.into_iter()
        .map(|r| {
            check_name("a key", &r.key)?;
            let value = match r.value {
                wit::Value::Int(v) => enocean::Value::Int(v),
                wit::Value::Float(v) if v.is_finite() => enocean::Value::Float(v),
                wit::Value::Float(v) => {
                    return Err(format!(
                        "reading {}: {v} is not a number JSON can hold",
                        r.key
                    ));
                }
                wit::Value::Text(t) if t.len() <= MAX_TEXT_BYTES => enocean::Value::Text(t.into()),
                wit::Value::Text(t) => {
                    return Err(format!(
                        "reading {}: a text of {} bytes (at most {MAX_TEXT_BYTES})",
                        r.key,
                        t.len()
                    ));
                }
                wit::Value::Boolean(b) => enocean::Value::Bool(b),
            };
            for (what, text) in [("a unit", &r.unit), ("a meaning", &r.meaning)] {
                if let Some(text) = text {
                    check_name(what, text)?;
                }
            }
            Ok(DataPoint {
                key: r.key.into(),
                value,
                unit: r.unit.map(Into::into),
                meaning: r.meaning.map(Into::into),
            })
        })
        .collect()
}

/// A vendor codec's documents, checked; readings become one `{"telemetry": {"data": [...]}}`
/// document without a device (the caller keeps the record's).
fn documents(output: Output) -> Result<Vec<VendorDocument>, String> {
    match output {
        Output::Documents(list) => list
            .into_iter()
            .map(|d| {
                check_name("a device id", &d.device)?;
                if d.json.len() > MAX_DOCUMENT_BYTES {
                    return Err(format!(
                        "a document of {} bytes (at most {MAX_DOCUMENT_BYTES})",
                        d.json.len()
                    ));
                }
                match serde_json::from_str::<Value>(&d.json) {
                    Ok(Value::Object(body)) => Ok(VendorDocument {
                        device: d.device,
                        body,
                    }),
                    Ok(_) => Err("a document that is not a JSON object".into()),
                    Err(e) => Err(format!("a document that is not JSON: {e}")),
                }
            })
            .collect(),
        readings_output @ Output::Readings(_) => {
            let data = readings(readings_output)?;
            let mut body = Map::new();
            body.insert("telemetry".into(), serde_json::json!({ "data": data }));
            Ok(vec![VendorDocument {
                device: String::new(),
                body,
            }])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_normalized() {
        assert!(matches!(parse_profile("eep:A5-20-01"), Some(Profile::Eep(e)) if e == "a5-20-01"));
        assert!(
            matches!(parse_profile("vendor:Flespi"), Some(Profile::Vendor(v)) if v == "flespi")
        );
        assert!(parse_profile("eep:a5-20").is_none());
        assert!(parse_profile("flespi").is_none());
        assert!(parse_profile("vendor:").is_none());
    }

    #[test]
    fn readings_refuse_nan_long_keys_and_documents() {
        let reading = |key: &str, value| wit::Reading {
            key: key.into(),
            value,
            unit: None,
            meaning: None,
        };
        let nan = Output::Readings(vec![reading("t", wit::Value::Float(f64::NAN))]);
        assert!(readings(nan).unwrap_err().contains("not a number"));
        let long = Output::Readings(vec![reading(&"k".repeat(300), wit::Value::Int(1))]);
        assert!(readings(long).unwrap_err().contains("a key of 300 bytes"));
        let docs = Output::Documents(vec![]);
        assert!(readings(docs).is_err());
        let ok = Output::Readings(vec![reading("t", wit::Value::Float(19.92))]);
        assert_eq!(
            readings(ok).unwrap(),
            vec![DataPoint::new("t", enocean::Value::Float(19.92))]
        );
    }

    #[test]
    fn documents_must_be_json_objects() {
        let doc = |json: &str| {
            Output::Documents(vec![wit::Document {
                device: "d1".into(),
                json: json.into(),
            }])
        };
        assert!(
            documents(doc("{\"a\": 1"))
                .unwrap_err()
                .contains("not JSON")
        );
        assert!(
            documents(doc("[1]"))
                .unwrap_err()
                .contains("not a JSON object")
        );
        let ok = documents(doc("{\"a\": 1}")).unwrap();
        assert_eq!(ok[0].device, "d1");
        assert_eq!(ok[0].body["a"], 1);
    }
}
