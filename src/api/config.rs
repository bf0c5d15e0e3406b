//! `[api]` in pipeline.toml: where the HTTP API listens, how callers authenticate, where the device
//! store lives and which registry file seeds it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// ```toml
/// [api]
/// listen = "127.0.0.1:8080"
/// token_env = "SENSORGATE_API_TOKEN"   # bearer token, read from this variable at start
/// basic_env = "SENSORGATE_API_BASIC"   # and/or "user:password" for basic auth
/// store = "data/registry.redb"         # the persistent device store
/// seed = "devices.toml"                # imported at start for devices not in the store yet
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// The address the HTTP server binds (port 0 picks a free one).
    pub listen: SocketAddr,
    /// The environment variable holding the bearer token (`Authorization: Bearer TOKEN`).
    #[serde(default)]
    pub token_env: Option<String>,
    /// The environment variable holding `user:password` for basic authentication.
    #[serde(default)]
    pub basic_env: Option<String>,
    /// The redb file of onboarded devices; made, with its folder, if missing.
    #[serde(default = "default_store")]
    pub store: PathBuf,
    /// A device registry file (the `devices.toml` format) whose devices are added to the store at
    /// start unless the store has them already.
    #[serde(default)]
    pub seed: Option<PathBuf>,
}

fn default_store() -> PathBuf {
    PathBuf::from("data/registry.redb")
}

/// A token shorter than this is refused: it would be guessed.
pub const MIN_SECRET_LEN: usize = 16;

impl ApiConfig {
    /// Problems for `sensorgate validate`: (key, message, hint). `env` reads environment variables.
    pub fn problems(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Vec<(&'static str, String, String)> {
        let mut out = Vec::new();
        if self.token_env.is_none() && self.basic_env.is_none() {
            out.push((
                "listen",
                "no authentication: the device API would be open to anyone who reaches it".into(),
                "add token_env = \"SENSORGATE_API_TOKEN\" (a bearer token) and/or basic_env = \"SENSORGATE_API_BASIC\" (user:password)".into(),
            ));
        }
        if let Some(name) = &self.token_env {
            match env(name).filter(|v| !v.is_empty()) {
                None => out.push((
                    "token_env",
                    format!("token_env: the environment variable {name} is not set"),
                    format!("export {name}=$(openssl rand -hex 32) before starting sensorgate"),
                )),
                Some(v) if v.len() < MIN_SECRET_LEN => out.push((
                    "token_env",
                    format!(
                        "token_env: the token in {name} is shorter than {MIN_SECRET_LEN} characters"
                    ),
                    "use a long random token, e.g. `openssl rand -hex 32`".into(),
                )),
                Some(_) => {}
            }
        }
        if let Some(name) = &self.basic_env {
            match env(name).filter(|v| !v.is_empty()) {
                None => out.push((
                    "basic_env",
                    format!("basic_env: the environment variable {name} is not set"),
                    format!("export {name}=user:password before starting sensorgate"),
                )),
                // The value is a secret: never repeated in a message.
                Some(v) if !v.contains(':') || v.starts_with(':') || v.ends_with(':') => {
                    out.push((
                        "basic_env",
                        format!("basic_env: {name} must hold user:password"),
                        format!("export {name}=user:password"),
                    ))
                }
                Some(_) => {}
            }
        }
        if self.store.as_os_str().is_empty() {
            out.push((
                "store",
                "store is empty".into(),
                "give the device store's file, e.g. store = \"data/registry.redb\"".into(),
            ));
        } else if self.store.is_dir() {
            out.push((
                "store",
                format!("store {} is a folder", self.store.display()),
                "name a file inside it, e.g. store = \"data/registry.redb\"".into(),
            ));
        }
        if let Some(seed) = &self.seed
            && let Err(e) = read_seed(seed)
        {
            out.push((
                "seed",
                format!("seed: {e}"),
                "fix the file, or remove seed to start from the store alone".into(),
            ));
        }
        out
    }
}

/// The seed file's entries, checked as the registry checks its file.
pub(crate) fn read_seed(
    path: &Path,
) -> Result<Vec<crate::registry::DeviceEntry>, crate::registry::RegistryError> {
    let shown = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|error| crate::registry::RegistryError::Read {
            path: shown.clone(),
            error,
        })?;
    crate::registry::parse(&shown, &text)?;
    crate::registry::parse_entries(&shown, &text)
}
