//! The HTTP API (`[api]` in pipeline.toml): device onboarding into a persistent store that the
//! running pipeline's decode and enrich stages read (`registry = "api"`), health, readiness,
//! Prometheus metrics and an OpenAPI document with a page that renders it.
//!
//! Routes under `/api/v1` need the bearer token or basic credentials from the environment;
//! `/health`, `/ready`, `/metrics`, `/openapi.json` and `/docs` hold no device data and need none.

pub mod auth;
pub mod config;
pub mod openapi;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::downlink::Downlinks;
use crate::health::Health;
use crate::live::Live;
use crate::metrics;
use crate::registry::Registry;
use auth::Credentials;
use config::ApiConfig;
use store::{DeviceBody, RestoreMode, Store, StoreError};

/// The largest request body: a restore of 100k devices fits.
const MAX_BODY: usize = 64 << 20;

#[derive(Clone)]
struct AppState {
    store: Arc<Store>,
    credentials: Arc<Credentials>,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
    /// What the flows saw go by: latest values, gateways.
    live: Arc<Live>,
    /// Efento configuration changes, delivered in the ACKs of the CoAP source.
    downlinks: Downlinks,
    /// Whether each source listens or is connected, and each sink is connected.
    health: Arc<Health>,
}

/// Records kept in brief per device for `GET /api/v1/telemetry/{id}`.
const RECENT_PER_DEVICE: usize = 10;

/// The API, bound and with its store open, not serving yet.
pub struct Api {
    state: AppState,
    listener: tokio::net::TcpListener,
}

impl Api {
    /// Reads the credentials, opens the store, imports the seed and binds the address. Stops
    /// serving when `shutdown` is cancelled.
    pub async fn open(config: &ApiConfig, shutdown: CancellationToken) -> anyhow::Result<Api> {
        let credentials =
            Credentials::from_env(config.token_env.as_deref(), config.basic_env.as_deref())?;
        Self::open_with(config, credentials, shutdown).await
    }

    /// [`Api::open`] with the credentials given rather than read from the environment.
    pub async fn open_with(
        config: &ApiConfig,
        credentials: Credentials,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Api> {
        let path = config.store.clone();
        let seed = config.seed.clone();
        let store = tokio::task::spawn_blocking(move || -> anyhow::Result<Store> {
            let store = Store::open(&path)?;
            if let Some(seed) = seed {
                let entries = config::read_seed(&seed)?;
                let added = store
                    .seed(entries)
                    .with_context(|| format!("seed {}", seed.display()))?;
                tracing::info!(seed = %seed.display(), added, "device store seeded");
            }
            tracing::info!(store = %path.display(), devices = store.len(), "device store open");
            Ok(store)
        })
        .await
        .context("opening the device store")??;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (in use? pick another listen address)",
                    config.listen
                )
            })?;
        Ok(Api {
            state: AppState {
                store: Arc::new(store),
                credentials: Arc::new(credentials),
                ready: Arc::new(AtomicBool::new(false)),
                shutdown,
                live: Live::new(RECENT_PER_DEVICE),
                downlinks: Downlinks::new(),
                health: Health::new(),
            },
            listener,
        })
    }

    /// The live view the flows feed (latest values, gateways, the tap).
    pub fn live(&self) -> Arc<Live> {
        self.state.live.clone()
    }

    /// Queues configuration changes into the pipeline's downlinks (those its CoAP sources answer from).
    pub fn with_downlinks(mut self, downlinks: Downlinks) -> Self {
        self.state.downlinks = downlinks;
        self
    }

    /// `/ready` answers 200 only while every component of `health` is up.
    pub fn with_health(mut self, health: Arc<Health>) -> Self {
        self.state.health = health;
        self
    }

    /// The device registry the stages read with `registry = "api"`.
    pub fn registry(&self) -> Arc<Registry> {
        self.state.store.registry().clone()
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Set once the pipeline runs: `/ready` answers 200 from then on (until shutdown).
    pub fn readiness(&self) -> Arc<AtomicBool> {
        self.state.ready.clone()
    }

    /// [`Api::serve`] on a thread of its own with a single-threaded runtime: requests are then
    /// answered on their own OS thread rather than queued behind flow and source work on the
    /// pipeline's workers, and the data path never waits behind a slow request. Ends when serving
    /// ends.
    pub async fn serve_apart(self) -> anyhow::Result<()> {
        let Api { state, listener } = self;
        // The listener moves to the API's runtime (its readiness is then polled there).
        let listener = listener.into_std().context("HTTP API listener")?;
        let (done, finished) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("sensorgate-api".into())
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("the HTTP API's runtime")
                    .and_then(|runtime| {
                        runtime.block_on(async move {
                            let listener = tokio::net::TcpListener::from_std(listener)
                                .context("HTTP API listener")?;
                            Api { state, listener }.serve().await
                        })
                    });
                let _ = done.send(result);
            })
            .context("starting the HTTP API's thread")?;
        finished
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the HTTP API's thread ended abnormally")))
    }

    /// Serves until shutdown.
    pub async fn serve(self) -> anyhow::Result<()> {
        let shutdown = self.state.shutdown.clone();
        tracing::info!(listen = %self.listener.local_addr()?, "HTTP API listening");
        axum::serve(self.listener, router(self.state))
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .context("HTTP API")
    }
}

/// Every route: (path, method, handler). The router is built from this and the OpenAPI document
/// is checked against it.
fn routes() -> Vec<(&'static str, Method, MethodRouter<AppState>)> {
    vec![
        ("/health", Method::GET, get(health)),
        ("/ready", Method::GET, get(ready)),
        ("/metrics", Method::GET, get(metrics_text)),
        ("/openapi.json", Method::GET, get(openapi_json)),
        ("/docs", Method::GET, get(docs)),
        ("/live", Method::GET, get(live_page)),
        ("/api/v1/devices", Method::GET, get(list_devices)),
        ("/api/v1/devices/backup", Method::GET, get(backup_devices)),
        (
            "/api/v1/devices/restore",
            Method::POST,
            post(restore_devices),
        ),
        ("/api/v1/devices/{id}", Method::GET, get(get_device)),
        ("/api/v1/devices/{id}", Method::PUT, put(put_device)),
        (
            "/api/v1/devices/{id}",
            Method::DELETE,
            delete(delete_device),
        ),
        ("/api/v1/telemetry", Method::GET, get(list_telemetry)),
        ("/api/v1/telemetry/{id}", Method::GET, get(device_telemetry)),
        ("/api/v1/gateways", Method::GET, get(list_gateways)),
        (
            "/api/v1/gateways/connected",
            Method::GET,
            get(connected_gateways),
        ),
        (
            "/api/v1/statistics/devices",
            Method::GET,
            get(device_statistics),
        ),
        (
            "/api/v1/statistics/devices/{id}",
            Method::GET,
            get(one_device_statistics),
        ),
        (
            "/api/v1/statistics/gateways",
            Method::GET,
            get(gateway_statistics),
        ),
        ("/api/v1/tap", Method::GET, get(tap)),
        ("/api/v1/downlinks/{id}", Method::GET, get(list_downlinks)),
        ("/api/v1/downlinks/{id}", Method::POST, post(queue_downlink)),
    ]
}

fn router(state: AppState) -> Router {
    let mut public = Router::new();
    let mut devices = Router::new();
    for (path, _, handler) in routes() {
        if path.starts_with("/api/") {
            devices = devices.route(path, handler);
        } else {
            public = public.route(path, handler);
        }
    }
    let devices = devices
        .route_layer(middleware::from_fn_with_state(state.clone(), require_auth))
        .layer(DefaultBodyLimit::max(MAX_BODY));
    public
        .merge(devices)
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// An error answer: `{ "error": "..." }` with its status.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    fn not_found(id: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("no device {id}; onboard it with PUT /api/v1/devices/{id}"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(message) => ApiError::bad_request(message),
            StoreError::Failed(e) => {
                metrics::counter(
                    "component_errors_total",
                    &[("component", "api"), ("error", "store")],
                )
                .inc();
                tracing::error!(error = %format!("{e:#}"), "device store write failed");
                ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message: format!("device store: {e:#}"),
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

async fn require_auth(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if state.credentials.allows(authorization) {
        return next.run(request).await;
    }
    metrics::counter("api_unauthorized_total", &[]).inc();
    tracing::debug!(path = %request.uri().path(), "API request refused: missing or wrong credentials");
    let mut response = ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: "missing or wrong credentials: send Authorization: Bearer TOKEN (or Basic)".into(),
    }
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"sensorgate\""),
    );
    response
}

async fn unknown_route(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("no route {method} {}; see /openapi.json", uri.path()),
    }
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: format!(
            "{method} is not served on {}; see /openapi.json",
            uri.path()
        ),
    }
}

/// A body that could not be read (too large, cut off) as a JSON error with its status.
fn unreadable(rejection: axum::extract::rejection::BytesRejection) -> ApiError {
    ApiError {
        status: rejection.status(),
        message: format!("body: {}", rejection.body_text()),
    }
}

/// Every device the flows have seen (`?limit=N`: the N most recently heard), most recently heard
/// first: last values and when.
async fn list_telemetry(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let mut limit = None;
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("limit", n)) => {
                limit = Some(n.parse::<usize>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "limit={n}: give a count of devices, e.g. limit=100"
                    ))
                })?);
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{pair}`; the only one is limit=N"
                )));
            }
        }
    }
    Ok(axum::Json(json!(state.live.devices(limit))))
}

/// One device's latest value per reading key and its last records in brief. Ids match in any case.
async fn device_telemetry(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    [id.clone(), id.to_ascii_uppercase(), id.to_ascii_lowercase()]
        .iter()
        .find_map(|candidate| state.live.device(candidate))
        .map(|view| axum::Json(json!(view)))
        .ok_or_else(|| ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("no record of device `{id}` has gone by since the start"),
        })
}

async fn list_gateways(State(state): State<AppState>) -> axum::Json<serde_json::Value> {
    axum::Json(json!(state.live.gateways()))
}

/// The gateways connected to the websocket sources now.
async fn connected_gateways(State(state): State<AppState>) -> axum::Json<serde_json::Value> {
    axum::Json(json!(state.live.connected()))
}

/// Telegram statistics of every EnOcean device (the IoTC's `[{device, stats}]`).
async fn device_statistics(State(state): State<AppState>) -> axum::Json<serde_json::Value> {
    axum::Json(json!(state.live.device_statistics(None)))
}

/// One EnOcean device's telegram statistics, in a one-element array as the IoTC answers.
async fn one_device_statistics(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let sender = (id.len() == 8)
        .then(|| u32::from_str_radix(&id, 16).ok())
        .flatten()
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "`{id}` is not an EnOcean sender id (8 hex digits, e.g. 0180a1b2)"
            ))
        })?;
    let stats = state.live.device_statistics(Some(sender));
    if stats.is_empty() {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("no telegram of {id} has been decoded since the start"),
        });
    }
    Ok(axum::Json(json!(stats)))
}

/// Telegram statistics of every gateway (the IoTC's `[{device: {mac}, stats}]`).
async fn gateway_statistics(State(state): State<AppState>) -> axum::Json<serde_json::Value> {
    axum::Json(json!(state.live.gateway_statistics()))
}

/// Every record's document as it goes to the sinks, one JSON object per line, for as long as the
/// client reads (`?flow=NAME` for one flow's). A client that falls behind gets `{"skipped": N}`.
async fn tap(State(state): State<AppState>, RawQuery(query): RawQuery) -> Response {
    let flow = query.as_deref().and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("flow="))
            .map(str::to_string)
    });
    let rx = state.live.subscribe();
    let shutdown = state.shutdown.clone();
    let stream = futures_util::stream::unfold(
        (rx, flow, shutdown),
        |(mut rx, flow, shutdown)| async move {
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    next = rx.recv() => next,
                };
                let line = match next {
                    Ok((from, text)) => {
                        if flow.as_deref().is_some_and(|f| f != &*from) {
                            continue;
                        }
                        format!("{text}\n")
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        format!("{{\"skipped\":{n}}}\n")
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                };
                return Some((
                    Ok::<_, std::convert::Infallible>(Bytes::from(line)),
                    (rx, flow, shutdown),
                ));
            }
        },
    );
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        )],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// The configuration changes of an Efento serial and what became of each.
async fn list_downlinks(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> axum::Json<serde_json::Value> {
    axum::Json(json!(state.downlinks.changes(&id)))
}

/// Queues a configuration change for an Efento serial: it goes out in the ACK of the device's next
/// confirmable request. Answers 202 with the change and its status.
async fn queue_downlink(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(unreadable)?;
    if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request(format!(
            "`{id}` is not an Efento serial (12 hex digits)"
        )));
    }
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("body: not JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "body: a JSON object of ProtoConfig fields, e.g. {\"measurement_period_base\": 120}",
        ));
    }
    let change = crate::codecs::efento::config_from_json(&value)
        .map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    let queued = state.downlinks.enqueue(&id, change);
    metrics::counter("api_downlinks_queued_total", &[]).inc();
    tracing::info!(serial = %id.to_ascii_uppercase(), change = queued, "configuration change queued");
    let change = state.downlinks.change(queued);
    Ok((StatusCode::ACCEPTED, axum::Json(json!(change))).into_response())
}

async fn health() -> &'static str {
    "ok\n"
}

/// 200 once the pipeline runs and while every source listens or is connected and every sink is
/// connected (or writing); 503 otherwise. The body lists each component and why it is not ready.
async fn ready(State(state): State<AppState>) -> Response {
    let started = state.ready.load(Ordering::Acquire) && !state.shutdown.is_cancelled();
    let components = state.health.report();
    let ready = started && components.iter().all(|c| c.up);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({ "ready": ready, "components": components });
    if !started {
        body["detail"] = json!(if state.shutdown.is_cancelled() {
            "shutting down"
        } else {
            "starting"
        });
    }
    (status, axum::Json(body)).into_response()
}

async fn metrics_text() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        metrics::render(),
    )
        .into_response()
}

async fn openapi_json() -> axum::Json<serde_json::Value> {
    axum::Json(openapi::document())
}

async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}

/// The live page: devices with last seen, last values and RSSI, gateways with their counters. It
/// holds no data; its script reads the telemetry routes with the credentials the user gives.
async fn live_page() -> Html<&'static str> {
    Html(include_str!("live.html"))
}

async fn list_devices(State(state): State<AppState>) -> Response {
    axum::Json(state.store.list()).into_response()
}

async fn backup_devices(State(state): State<AppState>) -> Response {
    let mut response = axum::Json(state.store.list()).into_response();
    response.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"devices.json\""),
    );
    response
}

async fn get_device(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let device = state
        .store
        .get(&id)
        .ok_or_else(|| ApiError::not_found(&id))?;
    Ok(axum::Json(device).into_response())
}

/// The body as `T`, or a 400 that says where it went wrong (`[3].eep: ...`).
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the body is empty; send the device as JSON",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::bad_request(format!("body: {inner}"))
        } else {
            ApiError::bad_request(format!("body {path}: {inner}"))
        }
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    Ok(value)
}

/// Runs a store write off the runtime's workers (it waits for the file to sync).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("device store: {e}"),
        })?
        .map_err(ApiError::from)
}

async fn put_device(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let body: DeviceBody = parse_body(&body.map_err(unreadable)?)?;
    if id.trim().is_empty() {
        return Err(ApiError::bad_request("the device id is empty"));
    }
    let store = state.store.clone();
    let shown = id.clone();
    let (created, view) = blocking(move || store.put(&id, body)).await?;
    let (status, change) = if created {
        (StatusCode::CREATED, "onboarded")
    } else {
        (StatusCode::OK, "updated")
    };
    device_changed(&shown, change);
    Ok((status, axum::Json(view)).into_response())
}

async fn delete_device(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let store = state.store.clone();
    let shown = id.clone();
    if blocking(move || store.delete(&id)).await? {
        device_changed(&shown, "removed");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(&shown))
    }
}

/// A device onboarded, updated or removed through the API: logged and counted in one place.
fn device_changed(id: &str, change: &'static str) {
    metrics::counter("api_device_changes_total", &[("change", change)]).inc();
    tracing::info!(device = %id, change, "device registry changed through the API");
}

/// `mode=merge` (the default) or `mode=replace`.
fn restore_mode(query: Option<&str>) -> Result<RestoreMode, ApiError> {
    let mut mode = RestoreMode::Merge;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("mode", "merge")) => mode = RestoreMode::Merge,
            Some(("mode", "replace")) => mode = RestoreMode::Replace,
            Some(("mode", other)) => {
                return Err(ApiError::bad_request(format!(
                    "mode={other}: use mode=merge (keep devices the array does not list) or mode=replace"
                )));
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{pair}`; the only one is mode=merge|replace"
                )));
            }
        }
    }
    Ok(mode)
}

async fn restore_devices(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let mode = restore_mode(query.as_deref())?;
    let bodies: Vec<DeviceBody> = parse_body(&body.map_err(unreadable)?)?;
    let store = state.store.clone();
    let summary = blocking(move || store.restore(bodies, mode)).await?;
    metrics::counter("api_device_changes_total", &[("change", "restored")])
        .add((summary.created + summary.updated + summary.removed) as u64);
    tracing::info!(?summary, "devices restored");
    Ok(axum::Json(summary).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_lists_exactly_the_routes_the_router_serves() {
        let mut served: Vec<(String, String)> = routes()
            .into_iter()
            .map(|(path, method, _)| (path.to_string(), method.to_string()))
            .collect();
        served.sort();
        assert_eq!(openapi::operations(&openapi::document()), served);
    }

    #[tokio::test]
    async fn ready_is_503_until_the_pipeline_runs_and_again_once_it_stops() {
        let dir = tempfile::tempdir().unwrap();
        let config = ApiConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            token_env: None,
            basic_env: None,
            store: dir.path().join("registry.redb"),
            seed: None,
        };
        let shutdown = CancellationToken::new();
        let credentials = Credentials::new(Some("0123456789abcdef".into()), None);
        let api = Api::open_with(&config, credentials, shutdown.clone())
            .await
            .unwrap();
        let base = format!("http://{}", api.local_addr().unwrap());
        let readiness = api.readiness();
        let server = tokio::spawn(api.serve());
        let client = reqwest::Client::new();
        let status = |path: &'static str| {
            let request = client.get(format!("{base}{path}"));
            async move { request.send().await.unwrap().status().as_u16() }
        };
        assert_eq!(status("/health").await, 200);
        assert_eq!(status("/ready").await, 503, "sources not started yet");
        readiness.store(true, Ordering::Release);
        assert_eq!(status("/ready").await, 200);
        assert_eq!(status("/api/v1/devices").await, 401);
        assert_eq!(status("/no/such/route").await, 404);
        let wrong_method = client.post(format!("{base}/health")).send().await.unwrap();
        assert_eq!(wrong_method.status(), 405);
        let body: serde_json::Value = wrong_method.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("POST"), "{body}");
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }

    #[test]
    fn restore_mode_is_merge_unless_replace_is_asked_for() {
        assert_eq!(restore_mode(None).unwrap(), RestoreMode::Merge);
        assert_eq!(
            restore_mode(Some("mode=replace")).unwrap(),
            RestoreMode::Replace
        );
        let e = restore_mode(Some("mode=wipe")).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(restore_mode(Some("force=1")).is_err());
    }

    #[test]
    fn a_bad_body_says_where() {
        let e =
            parse_body::<Vec<DeviceBody>>(br#"[{"eurid": "0180a1b2"}, {"eep": 5}]"#).unwrap_err();
        assert!(e.message.contains("[1].eep"), "{}", e.message);
        let e = parse_body::<DeviceBody>(br#"{"friendly": "x"}"#).unwrap_err();
        assert!(e.message.contains("friendly"), "{}", e.message);
        assert!(parse_body::<DeviceBody>(b"").is_err());
    }
}
