//! The `thingworx` sink in a running pipeline, Efento frames in over CoAP (coap-client-notls).
//!
//! There is no ThingWorx server here: [`FakeThingworx`] stands in for one. It implements only the
//! REST surface PTC documents (`../shared/protocols/integrations.md` §1): `PUT .../Things/{thing}/
//! Properties/*`, `POST .../Things/{thing}/Services/{service}`, 405 for the wrong verb, 401 without
//! the right `appKey` header, 403 without a JSON content type, 404 for an unknown thing or service
//! or a missing `measurements` parameter, `text/html` without `Accept: application/json`, and 500s
//! on request. It records every request.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const SERIAL: &str = "282C024156AF";
const KEY: &str = "d0c3a1e2-5b7f-4c1a-9e0f-2a6b8c4d1e3f";
const SERVICE: &str = "IngestEfento";

/// One request the fake received, and its answer.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: String,
    status: u16,
}

#[derive(Default)]
struct State {
    requests: Vec<Request>,
    /// `GET /Thingworx` requests: sensorgate's readiness check that the server answers, kept
    /// apart from the data requests (and never given a scripted answer).
    probes: usize,
    /// Answered (status, text) to the next requests, before any check.
    scripted: Vec<(u16, String)>,
    /// Wait before answering.
    delay: Duration,
}

/// A stand-in for ThingWorx on a loopback port; it knows the thing `SERIAL` and the service
/// `SERVICE`.
struct FakeThingworx {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeThingworx {
    fn start() -> FakeThingworx {
        let mut fake = FakeThingworx {
            port: free_tcp_port(),
            state: Arc::default(),
            stop: Arc::default(),
            thread: None,
        };
        fake.listen();
        fake
    }

    fn listen(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        let state = self.state.clone();
        let stop = Arc::new(AtomicBool::new(false));
        self.stop = stop.clone();
        self.thread = Some(std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(stream) = stream {
                    let state = state.clone();
                    std::thread::spawn(move || serve(stream, &state));
                }
            }
        }));
    }

    /// The server goes away (its port refuses connections).
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/Thingworx", self.port)
    }

    fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    fn probes(&self) -> usize {
        self.state.lock().unwrap().probes
    }

    fn script(&self, answers: &[(u16, &str)]) {
        self.state.lock().unwrap().scripted =
            answers.iter().map(|(s, t)| (*s, t.to_string())).collect();
    }
}

impl Drop for FakeThingworx {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads one HTTP/1.1 request, answers it and closes the connection.
fn serve(stream: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut words = line.split_whitespace();
    let method = words.next().unwrap_or_default().to_string();
    let target = words.next().unwrap_or_default().to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let body = String::from_utf8_lossy(&body).to_string();
    if method == "GET" && target == "/Thingworx" {
        state.lock().unwrap().probes += 1;
        let status = if headers.get("appkey").map(String::as_str) == Some(KEY) {
            200
        } else {
            401
        };
        let mut stream = stream;
        let _ = write!(
            stream,
            "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return;
    }
    let (delay, scripted) = {
        let mut s = state.lock().unwrap();
        let next = (!s.scripted.is_empty()).then(|| s.scripted.remove(0));
        (s.delay, next)
    };
    std::thread::sleep(delay);
    let (status, content_type, text) = scripted.map_or_else(
        || answer(&method, &target, &headers, &body),
        |(s, t)| (s, "text/plain", t),
    );
    state.lock().unwrap().requests.push(Request {
        method,
        path: target,
        headers,
        body,
        status,
    });
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
}

/// What ThingWorx answers (fact sheet §1, "A faithful local fake").
fn answer(
    method: &str,
    target: &str,
    headers: &HashMap<String, String>,
    body: &str,
) -> (u16, &'static str, String) {
    let text = |s: &str| s.to_string();
    if target.contains('?') {
        return (
            400,
            "text/plain",
            text("no query strings (?appKey= is deprecated)"),
        );
    }
    let parts: Vec<&str> = target.trim_start_matches('/').split('/').collect();
    let ["Thingworx", "Things", thing, collection, name] = parts[..] else {
        return (404, "text/html", text("<html>Not Found</html>"));
    };
    let verb_ok = match collection {
        "Services" => method == "POST",
        "Properties" => method == "PUT",
        _ => return (404, "text/html", text("<html>Not Found</html>")),
    };
    if !verb_ok {
        return (405, "text/plain", text("Method Not Allowed"));
    }
    if headers.get("appkey").map(String::as_str) != Some(KEY) {
        return (
            401,
            "text/plain",
            text("Authentication failed: Invalid Application Key"),
        );
    }
    let json_body = headers
        .get("content-type")
        .and_then(|c| c.split(';').next())
        .is_some_and(|c| c.trim() == "application/json");
    if !json_body {
        return (
            403,
            "text/plain",
            text("Content-Type not allowed (CSRF filter)"),
        );
    }
    if thing != SERIAL {
        return (404, "text/plain", format!("Thing [{thing}] not found"));
    }
    if collection == "Services" && name != SERVICE {
        return (
            404,
            "text/plain",
            format!("Unable to Invoke Service {name} on {thing} : Not found"),
        );
    }
    if collection == "Properties" && name != "*" {
        return (404, "text/plain", format!("Property [{name}] not found"));
    }
    let Ok(serde_json::Value::Object(params)) = serde_json::from_str(body) else {
        return (400, "text/plain", text("body is not a JSON object"));
    };
    if collection == "Services" && !params.contains_key("measurements") {
        return (
            404,
            "text/plain",
            text("Required parameter measurements missing"),
        );
    }
    if !headers
        .get("accept")
        .is_some_and(|a| a.contains("application/json"))
    {
        return (200, "text/html", text("<html><body>ok</body></html>"));
    }
    if collection == "Properties" {
        return (200, "application/json", String::new());
    }
    (
        200,
        "application/json",
        text(
            r#"{"dataShape":{"fieldDefinitions":{"result":{"name":"result","baseType":"STRING"}}},"rows":[{"result":"ok"}]}"#,
        ),
    )
}

/// CoAP source, Efento decode, the `twx` sink with `options`, dead letters in `rejects.jsonl`.
fn pipeline(fake: &FakeThingworx, options: &str) -> String {
    let sink = format!(
        "type = \"thingworx\"\nurl = \"{}\"\napp_key_env = \"TWX_TEST_APP_KEY\"\n{options}",
        fake.url()
    );
    efento_to_sink("", "twx", &sink)
}

fn start(fake: &FakeThingworx, options: &str) -> Running {
    peer("coap-client-notls").expect("coap-client-notls");
    Running::start_pipeline_env(
        tempfile::tempdir().unwrap(),
        &pipeline(fake, options),
        &[("TWX_TEST_APP_KEY", KEY)],
    )
}

fn post(running: &Running) -> String {
    let uri = format!("coap://{}/m", running.coap);
    let seed = vector_bytes("efento", "m00_seed_open_close");
    coap_client("post", &uri, Some(&seed), running.dir.path())
        .expect("coap-client-notls")
        .0
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn properties_mode_puts_the_readings_with_the_app_key_and_answers_201_after_the_200() {
    let fake = FakeThingworx::start();
    fake.state.lock().unwrap().delay = Duration::from_millis(400);
    let running = start(&fake, "");
    let sent = Instant::now();
    assert_eq!(post(&running), "2.01", "log:\n{}", running.log());
    assert!(sent.elapsed() >= Duration::from_millis(400));
    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let r = &requests[0];
    assert_eq!(r.status, 200);
    assert_eq!(r.method, "PUT");
    assert_eq!(r.path, format!("/Thingworx/Things/{SERIAL}/Properties/*"));
    assert_eq!(r.headers["appkey"], KEY);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.headers["accept"], "application/json");
    let body = json(&r.body);
    let props = body.as_object().unwrap();
    assert!(!props.is_empty(), "{body}");
    assert!(props.values().all(|v| !v.is_object()), "{body}");
    assert!(!running.log().contains(KEY), "the appKey is logged");
    // The readiness check asked the server once, with the key, at start.
    assert_eq!(fake.probes(), 1);
}

#[test]
fn records_for_one_thing_arriving_within_linger_share_one_request() {
    let fake = FakeThingworx::start();
    let running = start(&fake, "linger = \"500ms\"");
    let answers: Vec<String> = std::thread::scope(|scope| {
        let posts: Vec<_> = (0..2).map(|_| scope.spawn(|| post(&running))).collect();
        posts.into_iter().map(|p| p.join().unwrap()).collect()
    });
    assert_eq!(answers, ["2.01", "2.01"], "log:\n{}", running.log());
    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(
        requests[0].path,
        format!("/Thingworx/Things/{SERIAL}/Properties/*")
    );
}

#[test]
fn service_mode_posts_the_efento_measurements_shape() {
    let fake = FakeThingworx::start();
    let running = start(
        &fake,
        &format!("mode = \"service\"\nservice = \"{SERVICE}\""),
    );
    assert_eq!(post(&running), "2.01", "log:\n{}", running.log());
    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let r = &requests[0];
    assert_eq!((r.method.as_str(), r.status), ("POST", 200));
    assert_eq!(
        r.path,
        format!("/Thingworx/Things/{SERIAL}/Services/{SERVICE}")
    );
    let body = json(&r.body);
    let items = body["measurements"].as_array().expect("measurements array");
    assert!(!items.is_empty(), "{body}");
    for item in items {
        assert_eq!(item["serial"], SERIAL, "{body}");
        assert!(item["measured_at"].is_string(), "{body}");
        for param in item["params"].as_array().unwrap() {
            assert!(
                param["type"].is_string() && param.get("value").is_some(),
                "{body}"
            );
        }
    }
}

#[test]
fn a_4xx_is_not_retried_and_the_record_goes_to_dead_letter_answered_400() {
    let fake = FakeThingworx::start();
    let running = start(&fake, "thing = \"Unknown-{device}\"");
    assert_eq!(post(&running), "4.00", "log:\n{}", running.log());
    std::thread::sleep(Duration::from_millis(500));
    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].status, 404);
    let dead = json_lines(&running.path("rejects.jsonl"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    let text = dead[0].to_string();
    assert!(text.contains("HTTP 404"), "{text}");
    assert!(
        text.contains(&format!("Thing [Unknown-{SERIAL}] not found")),
        "{text}"
    );
    assert!(text.contains("sink:twx"), "{text}");
}

#[test]
fn a_wrong_app_key_gets_401_once_and_is_dead_lettered() {
    let fake = FakeThingworx::start();
    peer("coap-client-notls").expect("coap-client-notls");
    let running = Running::start_pipeline_env(
        tempfile::tempdir().unwrap(),
        &pipeline(&fake, ""),
        &[("TWX_TEST_APP_KEY", "not-the-key")],
    );
    assert_eq!(post(&running), "4.00", "log:\n{}", running.log());
    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].status, 401);
    let text = json_lines(&running.path("rejects.jsonl"))[0].to_string();
    assert!(
        text.contains("HTTP 401") && text.contains("Invalid Application Key"),
        "{text}"
    );
    assert!(
        !running.log().contains("not-the-key"),
        "the appKey is logged"
    );
}

#[test]
fn a_500_is_retried_and_the_record_stored_once_then_answered_201() {
    let fake = FakeThingworx::start();
    fake.script(&[(500, "Unable to Invoke Service IngestEfento: script error")]);
    let running = start(
        &fake,
        &format!("mode = \"service\"\nservice = \"{SERVICE}\""),
    );
    assert_eq!(post(&running), "2.01", "log:\n{}", running.log());
    let requests = fake.requests();
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 200], "{requests:?}");
    assert_eq!(requests[0].body, requests[1].body);
    assert!(json_lines(&running.path("rejects.jsonl")).is_empty());
}

#[test]
fn a_server_down_past_the_deadline_gets_500_and_flow_resumes_when_it_is_back() {
    let mut fake = FakeThingworx::start();
    let running = start(&fake, "deadline = \"600ms\"\ntimeout = \"300ms\"");
    assert_eq!(post(&running), "2.01", "log:\n{}", running.log());
    fake.stop();
    assert_eq!(post(&running), "5.00", "log:\n{}", running.log());
    assert!(json_lines(&running.path("rejects.jsonl")).is_empty());
    fake.listen();
    let resumed = eventually(Duration::from_secs(10), || post(&running) == "2.01");
    assert!(resumed, "log:\n{}", running.log());
    let ok = fake.requests().iter().filter(|r| r.status == 200).count();
    assert!(ok >= 2, "{:?}", fake.requests());
}

#[test]
fn validate_names_bad_thingworx_keys_with_their_position() {
    let toml = r#"[sources.c]
type = "coap"
listen = "127.0.0.1:5683"

[sinks.t]
type = "thingworx"
url = "http://127.0.0.1:8080/Thingworx"
app_key = "secret"

[sinks.u]
type = "thingworx"
url = "http://127.0.0.1:8080/Thingworx"
mode = "service"

[sinks.v]
type = "thingworx"
url = "http://127.0.0.1:8080/Thingworx"
mode = "update"

[[flows]]
name = "f"
from = ["c"]
to = ["t", "u", "v"]
"#;
    let text = validate_fails(toml);
    assert!(text.contains("pipeline.toml:8:1"), "{text}");
    assert!(text.contains("app_key"), "{text}");
    assert!(text.contains("pipeline.toml:10:8"), "{text}");
    assert!(text.contains("needs `service`"), "{text}");
    assert!(text.contains("pipeline.toml:18:8"), "{text}");
    assert!(text.contains("update"), "{text}");
}
