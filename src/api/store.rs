//! The persistent device store behind the HTTP API: one redb table of device entries (the registry
//! file's format, as JSON), loaded into memory at start. Every change is committed to the file
//! first, then published to the pipeline as a whole new [`Devices`] through [`Registry::replace`],
//! so the decode and enrich stages that read `registry = "api"` see it at their next record.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::registry::{Device, DeviceEntry, Devices, Registry};

/// Device entries by their id in lowercase (`04138bb4`, `282c024156af`, `room-7-meter`).
const DEVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("devices");

/// A device as callers send it: the registry file's keys, plus `security` (see
/// [`DeviceEntry::security`]).
pub type DeviceBody = DeviceEntry;

/// A device as the API shows it: everything but the key material, which shows as `security: true`.
#[derive(Serialize)]
pub struct DeviceView {
    #[serde(flatten)]
    entry: DeviceEntry,
    security: bool,
}

impl std::fmt::Debug for DeviceView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&serde_json::to_string(self).unwrap_or_default())
    }
}

impl DeviceView {
    fn of(entry: &DeviceEntry) -> Self {
        let mut entry = entry.clone();
        let security = entry.key.take().is_some();
        entry.slf = None;
        entry.rlc = None;
        DeviceView { entry, security }
    }
}

/// A refused change: the caller's mistake (400) or the store's failure (500).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Invalid(String),
    #[error("device store: {0:#}")]
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for StoreError {
    fn from(e: anyhow::Error) -> Self {
        StoreError::Failed(e)
    }
}

/// What `restore` does with devices the array does not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreMode {
    /// They stay (the default): the array adds and updates.
    Merge,
    /// They go: the store holds exactly the array afterwards.
    Replace,
}

/// What a restore changed.
#[derive(Debug, Serialize, PartialEq)]
pub struct RestoreSummary {
    pub mode: &'static str,
    pub created: usize,
    pub updated: usize,
    pub removed: usize,
    pub total: usize,
}

struct State {
    entries: BTreeMap<String, DeviceEntry>,
    devices: Devices,
}

pub struct Store {
    db: Database,
    state: Mutex<State>,
    registry: Arc<Registry>,
}

impl Store {
    /// Opens (or makes) the store file and loads its devices.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot make the folder {}", dir.display()))?;
        }
        let db = Database::create(path).with_context(|| {
            format!(
                "cannot open the device store {} (is another sensorgate using it?)",
                path.display()
            )
        })?;
        // It holds security keys: readable by its owner only.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot restrict access to {}", path.display()))?;
        }
        let txn = db.begin_write().context("device store")?;
        txn.open_table(DEVICES).context("device store")?;
        txn.commit().context("device store")?;

        let mut entries = BTreeMap::new();
        let mut devices = Devices::default();
        let read = db.begin_read().context("device store")?;
        let table = read.open_table(DEVICES).context("device store")?;
        for item in table.iter().context("device store")? {
            let (key, value) = item.context("device store")?;
            let key = key.value().to_string();
            let entry: DeviceEntry = match serde_json::from_slice(value.value()) {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::error!(device = %key, error = %e, "device store: entry not readable; skipped");
                    continue;
                }
            };
            match entry.to_device(&key) {
                Ok((device, _)) => {
                    devices.insert(device);
                    entries.insert(key, entry);
                }
                Err(e) => tracing::error!(error = %e, "device store: entry not usable; skipped"),
            }
        }
        drop(table);
        drop(read);
        let registry = Registry::from_devices(devices.clone());
        Ok(Store {
            db,
            state: Mutex::new(State { entries, devices }),
            registry,
        })
    }

    /// The registry the pipeline's stages read (`registry = "api"`).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the seed's devices that the store does not have; returns how many.
    pub fn seed(&self, entries: Vec<DeviceEntry>) -> Result<usize, StoreError> {
        let mut state = self.state();
        let mut added = Vec::new();
        for (index, entry) in entries.into_iter().enumerate() {
            let (device, _) = entry
                .to_device(&format!("devices[{index}]"))
                .map_err(StoreError::Invalid)?;
            let key = device.id.to_ascii_lowercase();
            if !state.entries.contains_key(&key) && !added.iter().any(|(k, _, _)| *k == key) {
                added.push((key, normalized(entry, &device), device));
            }
        }
        let count = added.len();
        if count > 0 {
            self.commit(&mut state, added, Vec::new())?;
        }
        Ok(count)
    }

    /// Every device, by id.
    pub fn list(&self) -> Vec<DeviceView> {
        self.state().entries.values().map(DeviceView::of).collect()
    }

    pub fn len(&self) -> usize {
        self.state().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One device, by its id in any case.
    pub fn get(&self, id: &str) -> Option<DeviceView> {
        self.state()
            .entries
            .get(&id.to_ascii_lowercase())
            .map(DeviceView::of)
    }

    /// Onboards or updates the device `id`; true if it is new.
    pub fn put(&self, id: &str, body: DeviceBody) -> Result<(bool, DeviceView), StoreError> {
        let mut state = self.state();
        let key = id.to_ascii_lowercase();
        let existing = state.entries.get(&key);
        let created = existing.is_none();
        let (entry, device) = resolve(Some(id), body, existing, "body")?;
        let view = DeviceView::of(&entry);
        self.commit(&mut state, vec![(key, entry, device)], Vec::new())?;
        Ok((created, view))
    }

    /// Removes the device `id`; false if there was none.
    pub fn delete(&self, id: &str) -> Result<bool, StoreError> {
        let mut state = self.state();
        let key = id.to_ascii_lowercase();
        if !state.entries.contains_key(&key) {
            return Ok(false);
        }
        self.commit(&mut state, Vec::new(), vec![key])?;
        Ok(true)
    }

    /// Takes a whole array of devices in one transaction: all of it, or (on any bad entry) none.
    pub fn restore(
        &self,
        bodies: Vec<DeviceBody>,
        mode: RestoreMode,
    ) -> Result<RestoreSummary, StoreError> {
        let mut state = self.state();
        let mut upserts: Vec<(String, DeviceEntry, Device)> = Vec::with_capacity(bodies.len());
        let mut seen = std::collections::HashMap::with_capacity(bodies.len());
        let mut created = 0;
        for (index, body) in bodies.into_iter().enumerate() {
            let at = format!("[{index}]");
            let key = body_key(&body).ok_or_else(|| {
                StoreError::Invalid(format!(
                    "{at}: give exactly one of eurid (EnOcean, \"04138bb4\"), serial (Efento, \"282C024156AF\") or id (any other device)"
                ))
            })?;
            let existing = state.entries.get(&key);
            let (entry, device) = resolve(None, body, existing, &at)?;
            let key = device.id.to_ascii_lowercase();
            if let Some(first) = seen.insert(key.clone(), index) {
                return Err(StoreError::Invalid(format!(
                    "{at}: device {} is listed twice (first at [{first}]); keep one entry per device",
                    device.id
                )));
            }
            if !state.entries.contains_key(&key) {
                created += 1;
            }
            upserts.push((key, entry, device));
        }
        let removals: Vec<String> = match mode {
            RestoreMode::Merge => Vec::new(),
            RestoreMode::Replace => state
                .entries
                .keys()
                .filter(|k| !seen.contains_key(*k))
                .cloned()
                .collect(),
        };
        let summary = RestoreSummary {
            mode: match mode {
                RestoreMode::Merge => "merge",
                RestoreMode::Replace => "replace",
            },
            created,
            updated: upserts.len() - created,
            removed: removals.len(),
            total: state.entries.len() + created - removals.len(),
        };
        self.commit(&mut state, upserts, removals)?;
        Ok(summary)
    }

    /// Writes the changes to the file, then to memory, then publishes them to the pipeline.
    fn commit(
        &self,
        state: &mut State,
        upserts: Vec<(String, DeviceEntry, Device)>,
        removals: Vec<String>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().context("begin")?;
        {
            let mut table = txn.open_table(DEVICES).context("open table")?;
            for (key, entry, _) in &upserts {
                let value = serde_json::to_vec(entry).context("encode")?;
                table
                    .insert(key.as_str(), value.as_slice())
                    .context("insert")?;
            }
            for key in &removals {
                table.remove(key.as_str()).context("remove")?;
            }
        }
        txn.commit().context("commit")?;
        for key in &removals {
            state.entries.remove(key);
            state.devices.remove(key);
        }
        for (key, entry, device) in upserts {
            state.devices.remove(&key);
            state.devices.insert(device);
            state.entries.insert(key, entry);
        }
        self.registry.replace(state.devices.clone());
        Ok(())
    }
}

/// The lowercase id a restore entry names (before it is checked), to find the stored device.
fn body_key(body: &DeviceBody) -> Option<String> {
    match (&body.eurid, &body.serial, &body.id) {
        (Some(eurid), None, None) => Some(
            crate::codecs::enocean::parse_id(eurid)
                .map(crate::codecs::enocean::id_hex)
                .unwrap_or_else(|| eurid.to_ascii_lowercase()),
        ),
        (None, Some(serial), None) => Some(
            serial
                .chars()
                .filter(|c| *c != ':' && *c != '-')
                .collect::<String>()
                .to_ascii_lowercase(),
        ),
        (None, None, Some(id)) => Some(id.to_ascii_lowercase()),
        _ => None,
    }
}

/// What a path id means when the body names no id: 8 hex digits are an EnOcean sender, 12 an
/// Efento serial, anything else a free id.
fn id_from_path(id: &str, body: &mut DeviceBody) {
    let hex = !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit());
    match id.len() {
        8 if hex => body.eurid = Some(id.to_string()),
        12 if hex => body.serial = Some(id.to_string()),
        _ => body.id = Some(id.to_string()),
    }
}

/// The entry to store for `body`, checked as the registry file is, with the stored key kept when
/// the body gives none (see [`DeviceBody`]). `path_id`: the id in the URL, which the body must match.
fn resolve(
    path_id: Option<&str>,
    mut body: DeviceBody,
    existing: Option<&DeviceEntry>,
    at: &str,
) -> Result<(DeviceEntry, Device), StoreError> {
    let invalid = StoreError::Invalid;
    if let Some(id) = path_id
        && body.eurid.is_none()
        && body.serial.is_none()
        && body.id.is_none()
    {
        id_from_path(id, &mut body);
    }
    let (key, slf, rlc) = match (body.security, body.key.take()) {
        (Some(false), Some(_)) => {
            return Err(invalid(format!(
                "{at}: security is false but a key is given; send one or the other"
            )));
        }
        (Some(false), None) => {
            if body.slf.is_some() || body.rlc.is_some() {
                return Err(invalid(format!(
                    "{at}: security is false but slf or rlc is given; a device without a key has neither"
                )));
            }
            (None, None, None)
        }
        (_, Some(key)) => (Some(key), body.slf.take(), body.rlc.take()),
        (wanted, None) => match existing.and_then(|e| e.key.clone()) {
            Some(key) => {
                let existing = existing.cloned().unwrap_or_default();
                (
                    Some(key),
                    body.slf.take().or(existing.slf),
                    body.rlc.take().or(existing.rlc),
                )
            }
            None if wanted == Some(true) => {
                return Err(invalid(format!(
                    "{at}: security is true but no key is stored for this device; send key (32 hex digits)"
                )));
            }
            None => (None, body.slf.take(), body.rlc.take()),
        },
    };
    let entry = DeviceEntry {
        key,
        slf,
        rlc,
        security: None,
        ..body
    };
    let (device, warning) = entry.to_device(at).map_err(invalid)?;
    if let Some(w) = warning {
        tracing::warn!("device API: {}", w.0);
    }
    if let Some(id) = path_id
        && !device.id.eq_ignore_ascii_case(id)
    {
        return Err(invalid(format!(
            "{at}: the body names device {} but the path names {id}; they must agree",
            device.id
        )));
    }
    Ok((normalized(entry, &device), device))
}

/// The entry with its id and EEP written the one way documents print them.
fn normalized(mut entry: DeviceEntry, device: &Device) -> DeviceEntry {
    if entry.eurid.is_some() {
        entry.eurid = Some(device.id.clone());
    }
    if entry.serial.is_some() {
        entry.serial = Some(device.id.clone());
    }
    entry.eep.clone_from(&device.eep);
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> DeviceBody {
        serde_json::from_str(json).unwrap()
    }

    const KEY: &str = "456E4F6365616E20476D62482E313300";

    #[test]
    fn a_device_put_is_in_the_registry_at_once_and_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/registry.redb");
        let store = Store::open(&path).unwrap();
        let generation = store.registry().generation();
        let (created, _) = store
            .put(
                "0180A1B2",
                body(r#"{"eep": "A5-02-05", "friendly_id": "T1", "fields": {"room": "221"}}"#),
            )
            .unwrap();
        assert!(created);
        assert!(store.registry().generation() > generation);
        let devices = store.registry().snapshot();
        let device = devices.get(&0x0180a1b2).expect("decodable at once");
        assert_eq!(device.eep.as_deref(), Some("a5-02-05"));
        assert_eq!(device.fields["room"], "221");
        drop(store);

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the store holds keys: owner only");
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.len(), 1);
        let devices = store.registry().snapshot();
        assert_eq!(devices.get(&0x0180a1b2).unwrap().friendly_id, "T1");
        let view = serde_json::to_value(store.get("0180a1b2").unwrap()).unwrap();
        assert_eq!(view["eurid"], "0180a1b2");
        assert_eq!(view["security"], false);
    }

    #[test]
    fn the_key_is_never_shown_and_kept_when_an_update_omits_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("r.redb")).unwrap();
        let put = format!(r#"{{"eep": "a5-02-05", "key": "{KEY}", "rlc": "c0ffee"}}"#);
        store.put("01020304", body(&put)).unwrap();
        let shown = serde_json::to_string(&store.list()).unwrap();
        assert!(
            !shown.contains("456E") && !shown.contains("c0ffee"),
            "{shown}"
        );
        assert!(shown.contains(r#""security":true"#), "{shown}");

        let (created, view) = store
            .put(
                "01020304",
                body(r#"{"eep": "a5-02-05", "location": "hall"}"#),
            )
            .unwrap();
        assert!(!created);
        assert!(serde_json::to_value(&view).unwrap()["security"] == true);
        let security = store
            .registry()
            .snapshot()
            .get(&0x01020304)
            .unwrap()
            .security
            .clone();
        assert_eq!(
            security.unwrap().rlc,
            0xc0ffee,
            "the stored key and rolling code stay"
        );

        store
            .put(
                "01020304",
                body(r#"{"eep": "a5-02-05", "security": false}"#),
            )
            .unwrap();
        assert!(
            store
                .registry()
                .snapshot()
                .get(&0x01020304)
                .unwrap()
                .security
                .is_none()
        );
        let e = store
            .put("01020304", body(r#"{"security": true}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no key is stored"), "{e}");
    }

    #[test]
    fn bad_input_is_refused_with_the_reason_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("r.redb")).unwrap();
        let e = store
            .put("0180a1b2", body(r#"{"eep": "a5-02"}"#))
            .unwrap_err();
        assert!(
            matches!(e, StoreError::Invalid(ref m) if m.contains("RORG-FUNC-TYPE")),
            "{e}"
        );
        let e = store
            .put("0180a1b2", body(r#"{"eurid": "0180a1b3"}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("must agree"), "{e}");
        let e = store
            .put("0180a1b2", body(r#"{"key": "1234"}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("32 hex digits") && !e.contains("1234"), "{e}");
        let bad_restore = vec![
            body(r#"{"eurid": "0180a1b2", "eep": "a5-02-05"}"#),
            body(r#"{"serial": "nope"}"#),
        ];
        let e = store
            .restore(bad_restore, RestoreMode::Merge)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("[1]") && e.contains("12 hex digits"), "{e}");
        assert!(store.is_empty(), "a refused restore changes nothing");
        let twice = vec![
            body(r#"{"eurid": "0180a1b2"}"#),
            body(r#"{"eurid": "0180A1B2"}"#),
        ];
        let e = store
            .restore(twice, RestoreMode::Merge)
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn restore_merges_or_replaces_and_says_what_it_did() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("r.redb")).unwrap();
        store.put("keep-me", body("{}")).unwrap();
        store
            .put("0180a1b2", body(r#"{"location": "old"}"#))
            .unwrap();
        let array = || {
            vec![
                body(r#"{"eurid": "0180a1b2", "location": "new"}"#),
                body(r#"{"serial": "282c024156af"}"#),
            ]
        };
        let merged = store.restore(array(), RestoreMode::Merge).unwrap();
        assert_eq!(
            merged,
            RestoreSummary {
                mode: "merge",
                created: 1,
                updated: 1,
                removed: 0,
                total: 3
            }
        );
        assert!(store.get("KEEP-ME").is_some());
        assert!(store.registry().snapshot().lookup("282C024156AF").is_some());
        let replaced = store.restore(array(), RestoreMode::Replace).unwrap();
        assert_eq!(
            replaced,
            RestoreSummary {
                mode: "replace",
                created: 0,
                updated: 2,
                removed: 1,
                total: 2
            }
        );
        assert!(store.get("keep-me").is_none());
        assert!(store.registry().snapshot().lookup("keep-me").is_none());
        assert!(store.delete("0180a1b2").unwrap());
        assert!(!store.delete("0180a1b2").unwrap());
        assert!(store.registry().snapshot().get(&0x0180a1b2).is_none());
    }

    #[test]
    fn the_seed_adds_only_devices_the_store_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("r.redb")).unwrap();
        store
            .put("0180a1b2", body(r#"{"location": "from the API"}"#))
            .unwrap();
        let seed = crate::registry::parse_entries(
            "devices.toml",
            "[[devices]]\neurid = \"0180a1b2\"\nlocation = \"seed\"\n[[devices]]\neurid = \"0180a1b3\"\n",
        )
        .unwrap();
        assert_eq!(store.seed(seed).unwrap(), 1);
        let view = serde_json::to_value(store.get("0180a1b2").unwrap()).unwrap();
        assert_eq!(
            view["location"], "from the API",
            "the store wins over the seed"
        );
        assert_eq!(store.len(), 2);
    }
}
