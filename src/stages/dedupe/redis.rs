//! The shared dedupe store: several sensorgate instances behind one load balancer (or one Kafka
//! consumer group) agree on which copy of an item is the first through one Redis.
//!
//! A key is claimed with `SET key value NX PX window GET`, one round trip per batch (pipelined):
//! - no old value: this instance claimed it and stores the record. The value is `p:<instance>`
//!   ("pending") when the record's sender waits for an answer, and becomes `d` ("delivered") once the
//!   record is stored; a record that fails deletes the key (only if it is still this instance's
//!   claim), so the sender's retry is let through by whichever instance gets it.
//! - `d`: a copy of an item already stored: dropped and settled delivered.
//! - `p:...`: the first copy is still on its way in another instance. A sender that waits for an
//!   answer is told "not stored" (it sends again and then hears "stored"), because the first copy may
//!   yet fail; a sender that waits for nothing (a gateway relaying radio telegrams) has its copy dropped.
//!
//! Keys expire after the dedupe window. If Redis cannot be reached within `timeout`, `on_error` says
//! what happens: `"pass"` (the default) lets records through as first copies (a duplicate is
//! possible, nothing is lost), `"fail"` fails them (senders retry later).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc};

use crate::config::HumanDuration;
use crate::metrics::{self, Counter};
use crate::record::{Delivery, Outcome};

/// `redis = { url = "redis://127.0.0.1:6379", prefix = "sensorgate:dedupe:", timeout = "500ms" }`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`; `${NAME}` takes it from the environment.
    pub url: String,
    /// Prepended to every key, followed by the flow's name: instances share state when both match.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// How long a batch's lookup may take before Redis counts as unavailable.
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// `"pass"` or `"fail"`: what happens to records while Redis is unavailable.
    #[serde(default)]
    pub on_error: OnError,
}

/// What a dedupe stage does with records it cannot look up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Treat them as first copies: at least once, never lost.
    #[default]
    Pass,
    /// Fail them: their senders retry later.
    Fail,
}

fn default_prefix() -> String {
    "sensorgate:dedupe:".into()
}

fn default_timeout() -> HumanDuration {
    HumanDuration(Duration::from_millis(500))
}

impl RedisConfig {
    /// Semantic problems, for `sensorgate validate`.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = redis::Client::open(self.url.as_str()) {
            out.push(format!(
                "redis.url `{}`: {e}; write e.g. \"redis://127.0.0.1:6379\"",
                self.url
            ));
        }
        if self.timeout.get().is_zero() {
            out.push("redis.timeout is 0: every lookup would time out; use e.g. \"500ms\"".into());
        }
        out
    }
}

/// What the store said about one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// This instance has it now: the record is a first copy.
    Claimed,
    /// An earlier copy was stored.
    Stored,
    /// An earlier copy is on its way in another instance (or this one forgot it).
    Pending,
    /// Redis did not answer.
    Unavailable(String),
}

/// The store as a stage holds it: cheap to clone into a batch's lookup.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Option<redis::Client>,
    connection: Mutex<Option<redis::aio::MultiplexedConnection>>,
    prefix: String,
    /// `p:<instance>`: the value of this instance's pending claims.
    pending_value: String,
    window_ms: u64,
    timeout: Duration,
    on_error: OnError,
    /// Outcomes of claimed records, for the task that marks them stored or releases them.
    outcomes: mpsc::UnboundedSender<(String, bool)>,
    errors: Counter,
    lookups: Counter,
}

impl RedisStore {
    /// Must be called inside a tokio runtime: it starts the task that writes outcomes back.
    pub fn new(flow: &str, config: &RedisConfig, window: Duration) -> Self {
        let client = match redis::Client::open(config.url.as_str()) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(flow, error = %e, "dedupe: bad redis url; every lookup fails");
                None
            }
        };
        let (outcomes, rx) = mpsc::unbounded_channel();
        let instance = format!("{:08x}{:08x}", std::process::id(), rand::random::<u32>());
        let inner = Arc::new(Inner {
            client,
            connection: Mutex::new(None),
            prefix: format!("{}{flow}:", config.prefix),
            pending_value: format!("p:{instance}"),
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1),
            timeout: config.timeout.get(),
            on_error: config.on_error,
            outcomes,
            errors: metrics::counter("dedupe_store_errors_total", &[("flow", flow)]),
            lookups: metrics::counter("dedupe_store_lookups_total", &[("flow", flow)]),
        });
        tokio::spawn(write_outcomes(Arc::downgrade(&inner), rx));
        RedisStore { inner }
    }

    pub fn fails_when_unavailable(&self) -> bool {
        self.inner.on_error == OnError::Fail
    }

    fn redis_key(&self, key: u64) -> String {
        format!("{}{key:016x}", self.inner.prefix)
    }

    /// Claims every key of a batch in one pipelined round trip. `watched` says whether the record's
    /// sender waits for its outcome (then the claim stays pending until it is known).
    pub async fn claim(&self, keys: &[(u64, bool)]) -> Vec<Answer> {
        self.inner.lookups.add(keys.len() as u64);
        let mut pipe = redis::pipe();
        for &(key, watched) in keys {
            let value = if watched {
                self.inner.pending_value.as_str()
            } else {
                "d"
            };
            pipe.cmd("SET")
                .arg(self.redis_key(key))
                .arg(value)
                .arg("NX")
                .arg("PX")
                .arg(self.inner.window_ms)
                .arg("GET");
        }
        let result = tokio::time::timeout(self.inner.timeout, self.query(&pipe)).await;
        let error = match result {
            Ok(Ok(old)) if old.len() == keys.len() => {
                return old
                    .into_iter()
                    .map(|old| match old.as_deref() {
                        None => Answer::Claimed,
                        Some("d") => Answer::Stored,
                        Some(_) => Answer::Pending,
                    })
                    .collect();
            }
            Ok(Ok(old)) => format!("{} answers for {} keys", old.len(), keys.len()),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:?}", self.inner.timeout),
        };
        // Reconnect on the next batch.
        *self.inner.connection.lock().await = None;
        self.inner.errors.inc();
        tracing::warn!(prefix = %self.inner.prefix, error = %error, "dedupe store unavailable");
        vec![Answer::Unavailable(error); keys.len()]
    }

    async fn query(&self, pipe: &redis::Pipeline) -> redis::RedisResult<Vec<Option<String>>> {
        let mut connection = self.inner.connect().await?;
        pipe.query_async(&mut connection).await
    }

    /// Arranges for a claimed record's outcome to reach the store: stored marks the key `d`, failed
    /// deletes this instance's claim.
    pub fn track(&self, key: u64, delivery: &Delivery) {
        let redis_key = self.redis_key(key);
        let outcomes = self.inner.outcomes.clone();
        delivery.on_settle(move |outcome| {
            let stored = !matches!(outcome, Outcome::Failed { .. });
            let _ = outcomes.send((redis_key, stored));
        });
    }
}

impl Inner {
    async fn connect(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let mut guard = self.connection.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let Some(client) = &self.client else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "bad redis url",
            )));
        };
        let c = client.get_multiplexed_async_connection().await?;
        *guard = Some(c.clone());
        Ok(c)
    }
}

/// Deletes a key only while it still holds this instance's claim.
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// Writes outcomes back in batches until the stage is gone.
async fn write_outcomes(
    inner: std::sync::Weak<Inner>,
    mut rx: mpsc::UnboundedReceiver<(String, bool)>,
) {
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 1024).await > 0 {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let mut pipe = redis::pipe();
        for (key, stored) in batch.drain(..) {
            if stored {
                pipe.cmd("SET")
                    .arg(&key)
                    .arg("d")
                    .arg("XX")
                    .arg("KEEPTTL")
                    .ignore();
            } else {
                // EVAL, not EVALSHA: a fresh or restarted Redis has no script cache.
                pipe.cmd("EVAL")
                    .arg(RELEASE)
                    .arg(1)
                    .arg(&key)
                    .arg(&inner.pending_value)
                    .ignore();
            }
        }
        let result = tokio::time::timeout(inner.timeout, async {
            let mut connection = inner.connect().await?;
            pipe.query_async::<()>(&mut connection).await
        })
        .await;
        if !matches!(result, Ok(Ok(()))) {
            // A key left pending expires with the window; until then other instances answer its
            // copies "send again" (or drop copies nobody waits for).
            inner.errors.inc();
            *inner.connection.lock().await = None;
            tracing::warn!(prefix = %inner.prefix, "dedupe store: could not record outcomes");
        }
    }
}
