//! `sensorgate loadgen coap`: simulated Efento sensors that send confirmable `/m` requests to a running
//! pipeline and measure what a device sees: requests per second, latency percentiles of the 2.01
//! answers, and every other answer by code. With `--verify DIR` it then reads the Parquet files under
//! DIR and checks that every frame that got a 2.01 is stored, exactly once.
//!
//! Each simulated device sends one request at a time (like a real sensor), the next one as soon as the
//! answer arrives, so throughput is `devices / latency`. Devices share `--sockets` UDP sockets; message
//! ids are unique per socket, as the server deduplicates on (peer, message id).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use prost::Message as _;
use tokio::net::UdpSocket;

use crate::codecs::efento::proto::{ProtoChannel, ProtoMeasurements};
use crate::config::duration::parse_duration;

pub mod mqtt;

/// Arguments of `sensorgate loadgen coap`.
#[derive(Debug, Clone, clap::Args)]
pub struct CoapLoadArgs {
    /// The CoAP server to load.
    #[arg(long, default_value = "127.0.0.1:5683")]
    pub target: SocketAddr,
    /// Simulated devices, each with one request in flight at a time.
    #[arg(long, default_value_t = 2000)]
    pub devices: u32,
    /// UDP sockets the devices share.
    #[arg(long, default_value_t = 256)]
    pub sockets: u32,
    /// How long to send ("10s", "1m").
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Devices start one after another over this time (a fleet never starts in one instant).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub ramp: Duration,
    /// How long a device waits for an answer before it counts the request as unanswered.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// CoAP path of the measurements endpoint.
    #[arg(long, default_value = "m")]
    pub path: String,
    /// After the run, check that every acknowledged frame is in the Parquet files under this directory.
    #[arg(long)]
    pub verify: Option<PathBuf>,
    /// No progress bar (for scripts).
    #[arg(long)]
    pub quiet: bool,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// First serial of the simulated devices: 6 bytes, the last 4 are the device index.
const SERIAL_PREFIX: [u8; 2] = [0x4C, 0x47]; // "LG"
/// Samples per channel in each frame (temperature and humidity, as typical Efento T+H sensors send).
const SAMPLES: u32 = 4;
const PERIOD_S: u32 = 60;

fn serial_of(device: u32) -> Vec<u8> {
    let mut s = SERIAL_PREFIX.to_vec();
    s.extend_from_slice(&device.to_be_bytes());
    s
}

/// Timestamp of the first sample of a device's `seq`-th frame: frames never overlap, so every
/// stored row is (device, ts)-unique and the verification can count exactly.
fn first_ts(seq: u32) -> i32 {
    1_700_000_000 + (seq * SAMPLES * PERIOD_S) as i32
}

/// A typical T+H frame: 4 temperature and 4 humidity samples.
pub fn frame(device: u32, seq: u32) -> Vec<u8> {
    let ts = first_ts(seq);
    let t0 = 200 + (device % 50) as i32;
    let m = ProtoMeasurements {
        serial_number: serial_of(device),
        battery_status: true,
        measurement_period_base: PERIOD_S,
        measurement_period_factor: 1,
        channels: vec![
            ProtoChannel {
                r#type: 1,
                timestamp: ts,
                start_point: t0,
                sample_offsets: vec![0, 1, -1, 2],
            },
            ProtoChannel {
                r#type: 2,
                timestamp: ts,
                start_point: 45,
                sample_offsets: vec![0, 1, 2, 1],
            },
        ],
        next_transmission_at: (ts as u32) + SAMPLES * PERIOD_S,
        signal: 30,
        ..Default::default()
    };
    m.encode_to_vec()
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    created: AtomicU64,
    bad_request: AtomicU64,
    server_error: AtomicU64,
    busy: AtomicU64,
    other: AtomicU64,
    timeouts: AtomicU64,
}

struct SocketResult {
    latencies_us: Vec<u32>,
    /// (device, seq) of every frame answered 2.01.
    acked: Vec<(u32, u32)>,
}

/// The summary of a run.
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub devices: u32,
    pub seconds: f64,
    pub sent: u64,
    pub created: u64,
    pub bad_request: u64,
    pub server_error: u64,
    pub busy: u64,
    pub other: u64,
    pub timeouts: u64,
    pub created_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub verified: Option<Verification>,
}

/// What `--verify` found.
#[derive(Debug, serde::Serialize)]
pub struct Verification {
    pub acked_frames: u64,
    pub stored_frames: u64,
    pub missing: u64,
    pub duplicated_rows: u64,
}

pub async fn run_coap(args: CoapLoadArgs) -> anyhow::Result<()> {
    let summary = run_coap_load(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "devices {}  duration {:.1}s  sent {}  2.01 {}  4.00 {}  5.00 {}  5.03 {}  other {}  unanswered {}",
            summary.devices,
            summary.seconds,
            summary.sent,
            summary.created,
            summary.bad_request,
            summary.server_error,
            summary.busy,
            summary.other,
            summary.timeouts
        );
        println!(
            "2.01 per second {:.0}  latency p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            summary.created_per_s, summary.p50_ms, summary.p90_ms, summary.p99_ms, summary.max_ms
        );
        if let Some(v) = &summary.verified {
            println!(
                "verify: {} frames acknowledged, {} found in Parquet, {} missing, {} duplicated rows",
                v.acked_frames, v.stored_frames, v.missing, v.duplicated_rows
            );
        }
    }
    if let Some(v) = &summary.verified
        && v.missing > 0
    {
        anyhow::bail!("{} acknowledged frames are missing from Parquet", v.missing);
    }
    Ok(())
}

/// Runs the load and returns the summary (without printing).
pub async fn run_coap_load(args: &CoapLoadArgs) -> anyhow::Result<Summary> {
    let tally = Arc::new(Tally::default());
    let sockets = args.sockets.clamp(1, args.devices.max(1));
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut tasks = Vec::new();
    for s in 0..sockets {
        let devices: Vec<u32> = (0..args.devices).filter(|d| d % sockets == s).collect();
        let socket = UdpSocket::bind(if args.target.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        })
        .await
        .context("binding a load generator socket")?;
        socket.connect(args.target).await?;
        let tally = tally.clone();
        let path = args.path.clone();
        let timeout = args.timeout;
        let ramp = args.ramp.min(args.duration);
        tasks.push(tokio::spawn(async move {
            drive_socket(socket, devices, ramp, path, deadline, timeout, tally).await
        }));
    }

    let progress = (!args.quiet).then(|| {
        let bar = indicatif::ProgressBar::new(args.duration.as_secs().max(1));
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len}s {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    if let Some(bar) = &progress {
        let mut last = 0u64;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = tally.created.load(Ordering::Relaxed);
            bar.set_position(started.elapsed().as_secs());
            bar.set_message(format!(
                "{} 2.01/s, 5.00 {}, 5.03 {}, unanswered {}",
                now - last,
                tally.server_error.load(Ordering::Relaxed),
                tally.busy.load(Ordering::Relaxed),
                tally.timeouts.load(Ordering::Relaxed)
            ));
            last = now;
        }
        bar.finish_and_clear();
    }

    let mut latencies = Vec::new();
    let mut acked = Vec::new();
    for t in tasks {
        let r = t.await.context("load generator task")??;
        latencies.extend(r.latencies_us);
        acked.extend(r.acked);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| percentile_ms(&latencies, p);
    let verified = match &args.verify {
        Some(dir) => Some(verify_parquet(dir, &acked)?),
        None => None,
    };
    let created = tally.created.load(Ordering::Relaxed);
    Ok(Summary {
        devices: args.devices,
        seconds,
        sent: tally.sent.load(Ordering::Relaxed),
        created,
        bad_request: tally.bad_request.load(Ordering::Relaxed),
        server_error: tally.server_error.load(Ordering::Relaxed),
        busy: tally.busy.load(Ordering::Relaxed),
        other: tally.other.load(Ordering::Relaxed),
        timeouts: tally.timeouts.load(Ordering::Relaxed),
        created_per_s: created as f64 / args.duration.as_secs_f64(),
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        max_ms: latencies.last().map(|v| *v as f64 / 1000.0).unwrap_or(0.0),
        verified,
    })
}

/// The `p` quantile (0..=1, nearest rank) of latencies in microseconds, sorted ascending, in
/// milliseconds; 0 when there are none.
pub fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() as f64 - 1.0) * p.clamp(0.0, 1.0)).round() as usize;
    f64::from(sorted_us[i]) / 1000.0
}

struct InFlight {
    device_slot: usize,
    seq: u32,
    sent_at: Instant,
}

/// The devices of one socket: their next frame numbers, the socket's message ids, what waits for an answer.
struct SocketDevices {
    devices: Vec<u32>,
    next_seq: Vec<u32>,
    mid: u16,
    in_flight: HashMap<u16, InFlight>,
    path: String,
}

impl SocketDevices {
    /// Builds the device's next confirmable `/m` request and remembers it as waiting.
    fn next_request(&mut self, slot: usize) -> Vec<u8> {
        let seq = self.next_seq[slot];
        self.next_seq[slot] += 1;
        self.mid = self.mid.wrapping_add(1);
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.code = MessageClass::Request(RequestType::Post);
        p.header.message_id = self.mid;
        p.set_token(self.mid.to_be_bytes().to_vec());
        p.add_option(CoapOption::UriPath, self.path.as_bytes().to_vec());
        p.payload = frame(self.devices[slot], seq);
        let waiting = InFlight {
            device_slot: slot,
            seq,
            sent_at: Instant::now(),
        };
        self.in_flight.insert(self.mid, waiting);
        p.to_bytes().unwrap_or_default()
    }

    async fn send_next(&mut self, slot: usize, socket: &UdpSocket, tally: &Tally) {
        let bytes = self.next_request(slot);
        if socket.send(&bytes).await.is_ok() {
            tally.sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn drive_socket(
    socket: UdpSocket,
    devices: Vec<u32>,
    ramp: Duration,
    path: String,
    deadline: Instant,
    timeout: Duration,
    tally: Arc<Tally>,
) -> anyhow::Result<SocketResult> {
    let mut result = SocketResult {
        latencies_us: Vec::new(),
        acked: Vec::new(),
    };
    let count = devices.len();
    let mut fleet = SocketDevices {
        next_seq: vec![0u32; count],
        devices,
        mid: rand::random(),
        in_flight: HashMap::new(),
        path,
    };
    let mut buf = vec![0u8; 2048];

    // Devices start one after another over the ramp, as a fleet does, not all in the same instant.
    let mut started = 0usize;
    let step = ramp / u32::try_from(count.max(1)).unwrap_or(u32::MAX);
    let mut starter = tokio::time::interval(step.max(Duration::from_micros(100)));
    let mut sweep = tokio::time::interval(Duration::from_millis(100));
    loop {
        if fleet.in_flight.is_empty() && started == count {
            break;
        }
        tokio::select! {
            _ = starter.tick(), if started < count && Instant::now() < deadline => {
                fleet.send_next(started, &socket, &tally).await;
                started += 1;
            }
            _ = std::future::ready(()), if started < count && Instant::now() >= deadline => {
                started = count; // the run ended before every device started
            }
            r = socket.recv(&mut buf) => {
                let n = match r { Ok(n) => n, Err(_) => continue };
                let Ok(resp) = Packet::from_bytes(&buf[..n]) else { continue };
                let Some(req) = fleet.in_flight.remove(&resp.header.message_id) else { continue };
                let latency = req.sent_at.elapsed();
                match resp.header.code {
                    MessageClass::Response(ResponseType::Created) => {
                        tally.created.fetch_add(1, Ordering::Relaxed);
                        result.latencies_us.push(latency.as_micros().min(u32::MAX as u128) as u32);
                        result.acked.push((fleet.devices[req.device_slot], req.seq));
                    }
                    MessageClass::Response(ResponseType::BadRequest) => { tally.bad_request.fetch_add(1, Ordering::Relaxed); }
                    MessageClass::Response(ResponseType::InternalServerError) => { tally.server_error.fetch_add(1, Ordering::Relaxed); }
                    MessageClass::Response(ResponseType::ServiceUnavailable) => { tally.busy.fetch_add(1, Ordering::Relaxed); }
                    _ => { tally.other.fetch_add(1, Ordering::Relaxed); }
                }
                if Instant::now() < deadline {
                    fleet.send_next(req.device_slot, &socket, &tally).await;
                }
            }
            _ = sweep.tick() => {
                let now = Instant::now();
                let expired: Vec<u16> = fleet
                    .in_flight
                    .iter()
                    .filter(|(_, r)| now.duration_since(r.sent_at) > timeout)
                    .map(|(m, _)| *m)
                    .collect();
                for m in expired {
                    if let Some(req) = fleet.in_flight.remove(&m) {
                        tally.timeouts.fetch_add(1, Ordering::Relaxed);
                        if now < deadline {
                            fleet.send_next(req.device_slot, &socket, &tally).await;
                        }
                    }
                }
            }
        }
    }
    Ok(result)
}

/// Reads every committed Parquet file under `dir` and checks each acknowledged frame's rows.
pub fn verify_parquet(dir: &std::path::Path, acked: &[(u32, u32)]) -> anyhow::Result<Verification> {
    use arrow::array::{Array, Int32Array, StringArray, TimestampMicrosecondArray};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    let mut rows: HashMap<(String, i64), u32> = HashMap::new();
    let mut files = Vec::new();
    collect_parquet_files(dir, &mut files)?;
    for file in files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file)?)
            .with_context(|| format!("reading {}", file.display()))?
            .build()?;
        for batch in reader {
            let batch = batch?;
            let col = |name: &str| {
                batch
                    .column_by_name(name)
                    .with_context(|| format!("{} has no column `{name}`", file.display()))
            };
            let device = col("device")?
                .as_any()
                .downcast_ref::<StringArray>()
                .context("device column type")?
                .clone();
            let ts = col("ts")?
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .context("ts column type")?
                .clone();
            let channel = col("channel")?
                .as_any()
                .downcast_ref::<Int32Array>()
                .context("channel column type")?
                .clone();
            for i in 0..batch.num_rows() {
                // One row per frame is enough to identify it: channel 1's first sample.
                if channel.is_null(i) || channel.value(i) != 1 || device.is_null(i) {
                    continue;
                }
                *rows
                    .entry((device.value(i).to_string(), ts.value(i) / 1_000_000))
                    .or_default() += 1;
            }
        }
    }
    let mut missing = 0u64;
    let mut stored = 0u64;
    let mut duplicated = 0u64;
    let mut seen = HashSet::new();
    for (device, seq) in acked {
        if !seen.insert((*device, *seq)) {
            continue;
        }
        let serial = hex::encode_upper(serial_of(*device));
        match rows.get(&(serial, i64::from(first_ts(*seq)))) {
            Some(n) => {
                stored += 1;
                duplicated += u64::from(n.saturating_sub(1));
            }
            None => missing += 1,
        }
    }
    Ok(Verification {
        acked_frames: seen.len() as u64,
        stored_frames: stored,
        missing,
        duplicated_rows: duplicated,
    })
}

fn collect_parquet_files(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_parquet_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "parquet")
            && !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            out.push(path);
        }
    }
    Ok(())
}
