//! The device registry: which devices are onboarded, their profile (EEP), names, location, tags and
//! security keys. Read from a file such as `devices.toml` and reloaded when the file changes; a file
//! that no longer parses is reported and the last good registry stays in use.
//!
//! ```toml
//! [[devices]]
//! eurid = "04138bb4"          # the sender id (sourceEurid in the EnOcean IoT Connector)
//! eep = "d2-14-41"
//! friendly_id = "Multisensor 1"
//! location = "Cloud center"
//! custom_tag = "floor-2"
//! # secure devices only:
//! key = "${KEY_04138BB4}"     # AES-128 key, 32 hex digits; never logged
//! slf = "0x8b"                # security level format from the device's secure teach-in
//! rlc = "000000"              # rolling code to start from
//! [devices.fields]            # anything else, added to records by the enrich stage
//! room = "221"
//!
//! [[devices]]
//! serial = "282C024156AF"     # an Efento sensor (12 hex digits); or id = "..." for any other device
//! friendly_id = "Cold room 3"
//! location = "Warehouse B"
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::codecs::enocean::secure::{Key, Slf};
use crate::codecs::enocean::{eep, id_hex, parse_id};

/// One onboarded device.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    /// The EnOcean sender id; 0 for a device listed by `serial` or `id` (not an EnOcean device).
    pub eurid: u32,
    /// How records name the device: `eurid` as 8 lowercase hex digits (the way documents print it),
    /// an Efento serial in uppercase hex, or the `id` as written.
    pub id: String,
    /// The profile, normalised to lowercase `rr-ff-tt`, as written (it may be one no decoder knows).
    pub eep: Option<String>,
    pub friendly_id: String,
    pub location: String,
    pub custom_tag: String,
    pub security: Option<Security>,
    /// User fields, for the enrich stage.
    pub fields: Map<String, Value>,
}

/// A secure device's key material. `Debug` never shows the key.
#[derive(Debug, Clone, PartialEq)]
pub struct Security {
    pub key: Key,
    pub slf: Slf,
    /// The rolling code to expect first.
    pub rlc: u32,
}

/// The devices of one registry file at one moment: EnOcean devices by sender id, every device by
/// the id records carry (`record.device`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Devices {
    eurids: HashMap<u32, Arc<Device>>,
    ids: HashMap<String, Arc<Device>>,
}

impl Devices {
    /// The EnOcean device with this sender id.
    pub fn get(&self, eurid: &u32) -> Option<&Arc<Device>> {
        self.eurids.get(eurid)
    }

    pub fn contains_key(&self, eurid: &u32) -> bool {
        self.eurids.contains_key(eurid)
    }

    /// The device a record names, whatever its kind; ids match without regard to case.
    pub fn lookup(&self, id: &str) -> Option<&Arc<Device>> {
        if let Some(d) = self.ids.get(id) {
            return Some(d);
        }
        self.ids.get(&id.to_ascii_lowercase())
    }

    /// How many devices are listed.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Removes the device with this id (any case); false if there was none.
    pub fn remove(&mut self, id: &str) -> bool {
        let Some(device) = self.ids.remove(&id.to_ascii_lowercase()) else {
            return false;
        };
        if self
            .eurids
            .get(&device.eurid)
            .is_some_and(|d| Arc::ptr_eq(d, &device))
        {
            self.eurids.remove(&device.eurid);
        }
        true
    }

    /// Adds a device; false if its id is taken.
    pub fn insert(&mut self, device: Device) -> bool {
        let key = device.id.to_ascii_lowercase();
        if self.ids.contains_key(&key) {
            return false;
        }
        let device = Arc::new(device);
        if device.eurid != 0 || parse_id(&device.id) == Some(0) {
            self.eurids.insert(device.eurid, device.clone());
        }
        self.ids.insert(key, device);
        true
    }
}

impl From<HashMap<u32, Arc<Device>>> for Devices {
    fn from(map: HashMap<u32, Arc<Device>>) -> Self {
        let mut devices = Devices::default();
        for device in map.into_values() {
            devices.insert(Device::clone(&device));
        }
        devices
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    devices: Vec<DeviceEntry>,
}

/// One device as the registry file writes it (and as the HTTP API's store keeps it). No `Debug`: it
/// holds the key as written.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceEntry {
    #[serde(
        default,
        alias = "sourceEurid",
        alias = "source_eurid",
        skip_serializing_if = "Option::is_none"
    )]
    pub eurid: Option<String>,
    /// An Efento sensor's serial number (12 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Any other device, by the id its records carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eep: Option<String>,
    #[serde(default, alias = "friendlyID", alias = "friendlyId")]
    pub friendly_id: String,
    #[serde(default)]
    pub location: String,
    #[serde(default, alias = "customTag")]
    pub custom_tag: String,
    #[serde(default, alias = "aes_key", skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slf: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rlc: Option<String>,
    #[serde(default)]
    pub fields: Map<String, Value>,
    /// HTTP API bodies only (a file giving it is refused): `false` removes a stored key; `true` or
    /// absent keeps the stored one when no new `key` is given, since a key is never returned.
    #[serde(default, skip_serializing)]
    pub security: Option<bool>,
}

/// Names the device only: the entry may hold a key.
impl std::fmt::Debug for DeviceEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceEntry")
            .field("eurid", &self.eurid)
            .field("serial", &self.serial)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a registry file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// A device that loaded, with something the operator should know (e.g. an EEP no decoder knows).
#[derive(Debug, Clone, PartialEq)]
pub struct Warning(pub String);

/// `rr-ff-tt` in lowercase from the ways people write an EEP (`A5-02-05`, `a50205`, `A5_02_05`).
pub fn normalize_eep(text: &str) -> Option<String> {
    let digits: String = text
        .chars()
        .filter(|c| !matches!(c, '-' | '_' | ' ' | ':'))
        .collect::<String>()
        .to_ascii_lowercase();
    if digits.len() != 6 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    Some(format!(
        "{}-{}-{}",
        &digits[0..2],
        &digits[2..4],
        &digits[4..6]
    ))
}

/// Calls `check` on `target` every `every` from a task of the current tokio runtime (nothing outside
/// one) until `target` is dropped; on a blocking-pool thread if `blocking` (work that takes long, such
/// as compiling plugins, must not hold a runtime worker).
pub(crate) fn poll_while_alive<T: Send + Sync + 'static>(
    target: &Arc<T>,
    every: Duration,
    blocking: bool,
    check: fn(&T),
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak: Weak<T> = Arc::downgrade(target);
    runtime.spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(target) = weak.upgrade() else { break };
            if !blocking {
                check(&target);
            } else if tokio::task::spawn_blocking(move || check(&target))
                .await
                .is_err()
            {
                break;
            }
        }
    });
}

/// A number in hex, with or without `0x`, up to 32 bits.
pub(crate) fn hex_u32(text: &str) -> Option<u32> {
    let t = text
        .trim()
        .trim_start_matches("0x")
        .trim_start_matches("0X");
    if t.is_empty() || t.len() > 8 {
        return None;
    }
    u32::from_str_radix(t, 16).ok()
}

/// The entries of a registry file, as written (not checked; see [`DeviceEntry::to_device`]).
pub fn parse_entries(path: &str, text: &str) -> Result<Vec<DeviceEntry>, RegistryError> {
    let file: RegistryFile = toml::from_str(text).map_err(|e| RegistryError::Invalid {
        path: path.to_string(),
        message: e.to_string(),
    })?;
    Ok(file.devices)
}

/// Parses a registry file's text. `path` is only used in messages.
pub fn parse(path: &str, text: &str) -> Result<(Devices, Vec<Warning>), RegistryError> {
    let invalid = |message: String| RegistryError::Invalid {
        path: path.to_string(),
        message,
    };
    let mut devices = Devices::default();
    let mut warnings = Vec::new();
    for (index, entry) in parse_entries(path, text)?.into_iter().enumerate() {
        let (device, warning) = entry
            .to_device(&format!("devices[{index}]"))
            .map_err(invalid)?;
        if let Some(Warning(w)) = warning {
            warnings.push(Warning(format!("{path}: {w}")));
        }
        let shown = device.id.clone();
        if !devices.insert(device) {
            return Err(invalid(format!(
                "devices[{index}] ({shown}): device {shown} is listed twice; keep one entry per device"
            )));
        }
    }
    Ok((devices, warnings))
}

impl DeviceEntry {
    /// The device this entry describes, checked as the registry file is; `at` (`devices[3]`) starts
    /// every message. The key is never repeated in a message.
    pub fn to_device(&self, at: &str) -> Result<(Device, Option<Warning>), String> {
        let entry = self;
        if entry.security.is_some() {
            return Err(format!(
                "{at}: `security` is what the HTTP API shows for a stored key; here give `key` (or leave it out)"
            ));
        }
        let (at, eurid, id) = match (&entry.eurid, &entry.serial, &entry.id) {
            (Some(text), None, None) => {
                let at = format!("{at} (eurid \"{text}\")");
                let eurid = parse_id(text).ok_or_else(|| {
                    format!("{at}: eurid must be 8 hex digits such as \"04138bb4\"")
                })?;
                (at, eurid, id_hex(eurid))
            }
            (None, Some(text), None) => {
                let at = format!("{at} (serial \"{text}\")");
                let digits: String = text.chars().filter(|c| *c != ':' && *c != '-').collect();
                if digits.len() != 12 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(format!(
                        "{at}: serial must be 12 hex digits such as \"282C024156AF\""
                    ));
                }
                (at, 0, digits.to_ascii_uppercase())
            }
            (None, None, Some(text)) if !text.is_empty() => {
                (format!("{at} (id \"{text}\")"), 0, text.clone())
            }
            _ => {
                return Err(format!(
                    "{at}: give exactly one of eurid (EnOcean, \"04138bb4\"), serial (Efento, \"282C024156AF\") or id (any other device)"
                ));
            }
        };
        if eurid == 0 && (entry.eep.is_some() || entry.key.is_some()) {
            return Err(format!(
                "{at}: eep and key apply to EnOcean devices only (listed by eurid)"
            ));
        }
        let mut warning = None;
        let eep = match &entry.eep {
            None => None,
            Some(text) => {
                let normalized = normalize_eep(text).ok_or_else(|| {
                    format!(
                        "{at}: eep \"{text}\" is not an EEP; write it as RORG-FUNC-TYPE, e.g. \"a5-02-05\""
                    )
                })?;
                if eep::lookup(&normalized).is_none() {
                    warning = Some(Warning(format!(
                        "{at}: no built-in decoder for EEP {normalized}; unless a decoder plugin declares it, its telegrams will give EEP_NOT_FOUND_ERROR events (see `sensorgate decode esp3 --list-eeps` and `sensorgate plugins list`)"
                    )));
                }
                Some(normalized)
            }
        };
        let security = match (&entry.key, &entry.slf, &entry.rlc) {
            (None, None, None) => None,
            (None, _, _) => {
                return Err(format!(
                    "{at}: slf or rlc without key; a secure device needs key = \"<32 hex digits>\""
                ));
            }
            (Some(key), slf, rlc) => {
                let key = Key::from_hex(key)
                    .map_err(|_| format!("{at}: key must be 32 hex digits (AES-128)"))?;
                let slf = match slf {
                    None => Slf(DEFAULT_SLF),
                    Some(text) => Slf(hex_u32(text)
                        .and_then(|v| u8::try_from(v).ok())
                        .ok_or_else(|| {
                            format!("{at}: slf \"{text}\" must be one byte in hex, e.g. \"0x8b\"")
                        })?),
                };
                let rlc = match rlc {
                    None => 0,
                    Some(text) => hex_u32(text).ok_or_else(|| {
                        format!(
                            "{at}: rlc \"{text}\" must be hex (up to 8 digits), e.g. \"000000\""
                        )
                    })?,
                };
                Some(Security { key, slf, rlc })
            }
        };
        let device = Device {
            eurid,
            id,
            eep,
            friendly_id: entry.friendly_id.clone(),
            location: entry.location.clone(),
            custom_tag: entry.custom_tag.clone(),
            security,
            fields: entry.fields.clone(),
        };
        Ok((device, warning))
    }
}

/// The security level format assumed when a secure device's entry names none: 24-bit implicit rolling
/// code, 3-byte CMAC, VAES (PTM 21x and most secure sensors).
pub const DEFAULT_SLF: u8 = 0x8B;

/// What a stage writes as `registry = "api"` to read the HTTP API's device store (the `[api]`
/// section) instead of a file.
pub const API_REGISTRY: &str = "api";

/// Whether a stage's `registry` names the HTTP API's store rather than a file.
pub fn is_api(path: &Path) -> bool {
    path == Path::new(API_REGISTRY)
}

/// The registry a stage of `flow` reads: the API's store for `registry = "api"` (`api`, when the
/// pipeline has an `[api]` section), else the file, watched for changes. A file that does not load
/// is reported and the stage starts with no devices until the file is fixed (`validate` reports it
/// before a run).
pub fn open_for_stage(flow: &str, path: &Path, api: Option<&Arc<Registry>>) -> Arc<Registry> {
    if is_api(path) {
        return match api {
            Some(registry) => registry.clone(),
            None => {
                tracing::error!(
                    flow,
                    "registry = \"api\" but the pipeline has no [api] section; every device counts as unknown"
                );
                Registry::empty()
            }
        };
    }
    let registry = match Registry::open(path) {
        Ok(registry) => registry,
        Err(e) => {
            tracing::error!(flow, error = %e, "device registry not loaded; every device counts as unknown until it is fixed");
            Registry::open_lazy(path)
        }
    };
    registry.watch(Duration::from_secs(1));
    registry
}

/// A registry loaded from a file, shared by the stages that read it. Readers keep a snapshot
/// ([`Registry::snapshot`]) and refresh it when [`Registry::generation`] changes.
#[derive(Debug)]
pub struct Registry {
    path: Option<PathBuf>,
    devices: RwLock<Arc<Devices>>,
    generation: AtomicU64,
    /// (modified time, length) of the file last loaded.
    stamp: RwLock<Option<(SystemTime, u64)>>,
}

impl Registry {
    /// A registry with no devices and no file.
    pub fn empty() -> Arc<Registry> {
        Arc::new(Registry {
            path: None,
            devices: RwLock::new(Arc::new(Devices::default())),
            generation: AtomicU64::new(0),
            stamp: RwLock::new(None),
        })
    }

    /// A registry holding `devices`, with no file behind it (tests, the CLI).
    pub fn from_devices(devices: impl Into<Devices>) -> Arc<Registry> {
        let registry = Registry::empty();
        *registry.devices.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(devices.into());
        registry
    }

    /// A registry for `path` that has not loaded it (the file is missing or broken): it holds no devices
    /// until [`Registry::watch`] or [`Registry::reload_if_changed`] finds a good version.
    pub fn open_lazy(path: &Path) -> Arc<Registry> {
        Arc::new(Registry {
            path: Some(path.to_path_buf()),
            devices: RwLock::new(Arc::new(Devices::default())),
            generation: AtomicU64::new(0),
            stamp: RwLock::new(None),
        })
    }

    /// Loads the file; fails if it cannot be read or parsed. Warnings are logged.
    pub fn open(path: &Path) -> Result<Arc<Registry>, RegistryError> {
        let registry = Arc::new(Registry {
            path: Some(path.to_path_buf()),
            devices: RwLock::new(Arc::new(Devices::default())),
            generation: AtomicU64::new(0),
            stamp: RwLock::new(None),
        });
        registry.reload()?;
        Ok(registry)
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The current devices.
    pub fn snapshot(&self) -> Arc<Devices> {
        self.devices
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Changes every time the devices change.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    }

    /// Reads the file again. On error the devices stay as they were.
    pub fn reload(&self) -> Result<usize, RegistryError> {
        let Some(path) = &self.path else {
            return Ok(self.snapshot().len());
        };
        let shown = path.display().to_string();
        let stamp = Self::file_stamp(path);
        let text = std::fs::read_to_string(path).map_err(|error| RegistryError::Read {
            path: shown.clone(),
            error,
        })?;
        let (devices, warnings) = parse(&shown, &text)?;
        for Warning(w) in &warnings {
            tracing::warn!("{w}");
        }
        let count = devices.len();
        *self.devices.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(devices);
        *self.stamp.write().unwrap_or_else(|p| p.into_inner()) = stamp;
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(count)
    }

    /// Puts `devices` in place of the current ones at once; readers see them at their next record.
    /// The HTTP API's store does this after every change.
    pub fn replace(&self, devices: Devices) {
        *self.devices.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(devices);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Reloads if the file's modification time or length changed since the last load.
    pub fn reload_if_changed(&self) {
        let Some(path) = &self.path else { return };
        let now = Self::file_stamp(path);
        if now.is_none() || now == *self.stamp.read().unwrap_or_else(|p| p.into_inner()) {
            return;
        }
        match self.reload() {
            Ok(count) => {
                tracing::info!(registry = %path.display(), devices = count, "device registry reloaded")
            }
            Err(e) => {
                // Remember the bad version so the error is reported once, not every poll.
                *self.stamp.write().unwrap_or_else(|p| p.into_inner()) = now;
                crate::metrics::counter(
                    "component_errors_total",
                    &[("component", "registry"), ("error", "reload")],
                )
                .inc();
                tracing::error!(error = %e, "device registry not reloaded; the previous version stays in use")
            }
        }
    }

    /// Watches the file from a background task (if a tokio runtime is running) until the registry is
    /// dropped.
    pub fn watch(self: &Arc<Self>, every: Duration) {
        if self.path.is_none() {
            return;
        }
        // File reads are small; a blocking read here is shorter than a thread hop.
        poll_while_alive(self, every, false, |registry| registry.reload_if_changed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[devices]]
eurid = "04138bb4"
eep = "D2-14-41"
friendly_id = "Multisensor 1"
location = "Cloud center"

[[devices]]
sourceEurid = "01020304"
eep = "a50204"
key = "456E4F6365616E20476D62482E313300"
slf = "0x8b"
rlc = "c0ffee"
[devices.fields]
room = "221"
"#;

    #[test]
    fn a_file_may_not_say_security_which_only_the_api_answers() {
        let e = parse(
            "devices.toml",
            "[[devices]]\neurid = \"04138bb4\"\nsecurity = true\n",
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("devices[0]: `security`"), "{e}");
    }

    #[test]
    fn a_registry_file_loads_with_normalised_eeps_and_keys() {
        let (devices, warnings) = parse("devices.toml", FILE).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let multi = devices.get(&0x04138bb4).unwrap();
        assert_eq!(multi.eep.as_deref(), Some("d2-14-41"));
        assert_eq!(multi.id, "04138bb4");
        let secure = devices.get(&0x01020304).unwrap();
        let security = secure.security.as_ref().unwrap();
        assert_eq!(security.rlc, 0xc0ffee);
        assert_eq!(security.slf, Slf(0x8b));
        assert_eq!(secure.fields["room"], "221");
        assert!(
            !format!("{secure:?}").contains("456E"),
            "the key never prints"
        );
    }

    #[test]
    fn bad_entries_name_the_device_and_the_fix() {
        let bad_key = "[[devices]]\neurid = \"01020304\"\nkey = \"1234\"\n";
        let e = parse("d.toml", bad_key).unwrap_err().to_string();
        assert!(
            e.contains("devices[0]") && e.contains("32 hex digits"),
            "{e}"
        );
        assert!(!e.contains("1234"), "the key is not echoed: {e}");
        let twice = "[[devices]]\neurid = \"01020304\"\n[[devices]]\neurid = \"01020304\"\n";
        assert!(
            parse("d.toml", twice)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        let typo = "[[devices]]\neurid = \"01020304\"\nfriendly = \"x\"\n";
        let e = parse("d.toml", typo).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("friendly"), "{e}");
        let eep = "[[devices]]\neurid = \"01020304\"\neep = \"a5-02\"\n";
        assert!(
            parse("d.toml", eep)
                .unwrap_err()
                .to_string()
                .contains("RORG-FUNC-TYPE")
        );
    }

    #[test]
    fn a_changed_file_is_reloaded_and_a_broken_one_keeps_the_last_good_devices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.toml");
        std::fs::write(&path, "[[devices]]\neurid = \"01020304\"\n").unwrap();
        let registry = Registry::open(&path).unwrap();
        let generation = registry.generation();
        assert_eq!(registry.snapshot().len(), 1);
        std::fs::write(
            &path,
            "[[devices]]\neurid = \"01020304\"\n[[devices]]\neurid = \"01020305\"\n",
        )
        .unwrap();
        registry.reload_if_changed();
        assert_eq!(registry.snapshot().len(), 2);
        assert!(registry.generation() > generation);
        std::fs::write(&path, "[[devices]]\neurid = \"nope and longer\"\n").unwrap();
        registry.reload_if_changed();
        assert_eq!(registry.snapshot().len(), 2, "last good version kept");
    }
}
