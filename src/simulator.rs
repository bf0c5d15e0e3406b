//! `sensorgate simulate`: EnOcean gateways that stream real ESP3 bytes to an `esp3_websocket`
//! source, the way Aruba APs with an EnOcean USB stick do (or as raw ESP3 gateways).
//!
//! A deterministic fleet of devices (from `--seed`) sends `--rate` distinct telegrams per second in
//! total; each telegram is received by `--overlap` gateways, as radio telegrams are when APs are
//! close together, so the pipeline sees it `overlap` times with different RSSI. Each gateway is one
//! websocket connection. `--manifest` writes every distinct telegram as a JSON line, so a test can
//! check that each one is stored exactly once after deduplication.
//!
//! Devices cycle over profiles with simple ERP1 layouts (enocean.md §5): A5-02-05, A5-04-01,
//! A5-09-09, D5-00-01 and D2-14-41. A device's successive telegrams differ (a per-device counter
//! walks the value fields, and the unused 4BS bytes), so a deduplicating pipeline never drops one as
//! a repeat. A D5-00-01 contact has only two states, so each contact device sends at most once per
//! 30 s: its equal telegrams are at least 60 s apart.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::{BufMut as _, Bytes, BytesMut};
use futures_util::{SinkExt as _, StreamExt as _};
use prost::Message as _;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, connect_async_tls_with_config};

use crate::codecs::enocean::esp3::{self, packet_type};
use crate::config::duration::parse_duration;
use crate::sources::esp3_websocket::aruba::proto::{
    IotSbMessage, Meta, NbTopic, Reporter, Telemetry,
};
use crate::sources::esp3_websocket::tls::{load_certs, load_key, load_roots};

/// Arguments of `sensorgate simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// The source's URL: ws://host:port/path or wss://host:port/path.
    #[arg(long)]
    pub target: String,
    /// Gateways, each its own websocket connection.
    #[arg(long, default_value_t = 3)]
    pub gateways: u32,
    /// Simulated EnOcean devices.
    #[arg(long, default_value_t = 100)]
    pub devices: u32,
    /// Distinct telegrams per second, all gateways together (receptions are rate × overlap).
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// How long to send ("10s", "1m"): rate × duration distinct telegrams.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Send this many distinct telegrams, then stop (instead of --duration).
    #[arg(long)]
    pub count: Option<u64>,
    /// Gateways that receive each telegram (capped at --gateways).
    #[arg(long, default_value_t = 1)]
    pub overlap: u32,
    /// ESP3 frames per websocket message.
    #[arg(long, default_value_t = 1)]
    pub batch: u32,
    /// `aruba`: each message is an aruba_telemetry.Telemetry protobuf; `raw`: the ESP3 bytes
    /// themselves, with ?gateway=NAME in the URL.
    #[arg(long, value_enum, default_value_t = SimMode::Aruba)]
    pub mode: SimMode,
    /// Access token: Meta.access_token (aruba) or ?token= (raw).
    #[arg(long)]
    pub token: Option<String>,
    /// Trust this CA (PEM) for wss:// instead of the built-in web roots.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Do not verify the server's certificate (quick manual runs only).
    #[arg(long)]
    pub insecure: bool,
    /// Client certificate chain (PEM) for mutual TLS.
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Seed of the device population (EURIDs).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write one JSON line per distinct telegram sent: sender, eep, data (RORG and payload, hex),
    /// frame (the ESP3 frame as the first gateway sent it, hex).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Write the device registry (devices.toml) of the population that --devices and --seed give,
    /// and exit without connecting: the pipeline under test then knows every simulated device.
    #[arg(long)]
    pub registry_out: Option<PathBuf>,
    /// No progress bar (for scripts).
    #[arg(long)]
    pub quiet: bool,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The population as a `devices.toml` the pipeline can load.
pub fn registry_toml(population: &Population) -> String {
    let mut out =
        String::from("# The gateway simulator's devices (sensorgate simulate --registry-out).\n");
    for device in population.devices() {
        out.push_str(&format!(
            "\n[[devices]]\neurid = \"{:08x}\"\neep = \"{}\"\nfriendly_id = \"sim {:08x}\"\nlocation = \"simulator\"\n",
            device.eurid,
            device.profile.eep(),
            device.eurid
        ));
    }
    out
}

/// How the simulated gateways wrap their bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SimMode {
    Aruba,
    Raw,
}

#[derive(clap::Parser)]
#[command(name = "simulate")]
struct ArgsOnly {
    #[command(flatten)]
    args: SimulateArgs,
}

impl SimulateArgs {
    /// Parses arguments as `sensorgate simulate` would (without the program name), defaults included.
    pub fn parse_from<I, T>(args: I) -> Result<SimulateArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::Parser as _;
        let argv = std::iter::once(std::ffi::OsString::from("simulate"))
            .chain(args.into_iter().map(Into::into));
        ArgsOnly::try_parse_from(argv).map(|a| a.args)
    }

    /// Distinct telegrams the run sends.
    pub fn total(&self) -> u64 {
        self.count
            .unwrap_or_else(|| (self.duration.as_secs_f64() * f64::from(self.rate)).round() as u64)
    }

    fn overlap(&self) -> u32 {
        self.overlap.clamp(1, self.gateways.max(1))
    }
}

/// An EEP the simulated devices use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Temperature sensor 0..40 °C: DB1 = temperature, 255..0.
    A50205,
    /// Temperature and humidity: DB2 humidity 0..250, DB1 temperature 0..250, DB0 = 0x0A (TSN).
    A50401,
    /// CO2 sensor: DB1 = CO2 0..255, DB0 = 0x08.
    A50909,
    /// Single contact: DB0 = 0x08 | contact.
    D50001,
    /// Multisensor (temperature, humidity, illumination, acceleration, contact), 9-byte VLD.
    D21441,
}

const PROFILES: [Profile; 5] = [
    Profile::A50205,
    Profile::A50401,
    Profile::A50909,
    Profile::D50001,
    Profile::D21441,
];

impl Profile {
    pub fn eep(self) -> &'static str {
        match self {
            Profile::A50205 => "a5-02-05",
            Profile::A50401 => "a5-04-01",
            Profile::A50909 => "a5-09-09",
            Profile::D50001 => "d5-00-01",
            Profile::D21441 => "d2-14-41",
        }
    }

    fn rorg(self) -> u8 {
        match self {
            Profile::A50205 | Profile::A50401 | Profile::A50909 => 0xA5,
            Profile::D50001 => 0xD5,
            Profile::D21441 => 0xD2,
        }
    }

    /// The payload of the device's `counter`-th telegram. Distinct for every counter below 2^24
    /// (D5-00-01: two states only).
    fn payload(self, counter: u64, out: &mut Vec<u8>) {
        let byte = |shift: u32| ((counter >> shift) & 0xFF) as u8;
        match self {
            // DB3 and DB2 are unused by the profile; walking them keeps successive telegrams apart.
            Profile::A50205 => out.extend_from_slice(&[byte(16), byte(8), 255 - byte(0), 0x08]),
            Profile::A50401 => {
                let temperature = (counter % 251) as u8;
                let humidity = ((counter / 251) % 251) as u8;
                let unused = ((counter / (251 * 251)) % 256) as u8;
                out.extend_from_slice(&[unused, humidity, temperature, 0x0A]);
            }
            Profile::A50909 => out.extend_from_slice(&[byte(16), byte(8), byte(0), 0x08]),
            Profile::D50001 => out.push(0x08 | (counter & 1) as u8),
            Profile::D21441 => {
                let mut bits = [0u8; 9];
                let temperature = counter % 1001;
                let humidity = (counter / 1001) % 201;
                let illumination = (counter / (1001 * 201)) % 100_001;
                set_bits(&mut bits, 0, 10, temperature);
                set_bits(&mut bits, 10, 8, humidity);
                set_bits(&mut bits, 18, 17, illumination);
                set_bits(&mut bits, 35, 2, 0); // periodic
                set_bits(&mut bits, 37, 10, 500);
                set_bits(&mut bits, 47, 10, 500);
                set_bits(&mut bits, 57, 10, 900);
                set_bits(&mut bits, 67, 1, counter & 1);
                out.extend_from_slice(&bits);
            }
        }
    }
}

/// Writes `value` into `size` bits at `offset`, counted from the most significant bit of byte 0
/// (the EEP convention).
fn set_bits(bytes: &mut [u8], offset: usize, size: usize, value: u64) {
    for i in 0..size {
        let bit = (value >> (size - 1 - i)) & 1;
        let at = offset + i;
        if bit == 1 {
            bytes[at / 8] |= 0x80 >> (at % 8);
        } else {
            bytes[at / 8] &= !(0x80 >> (at % 8));
        }
    }
}

/// A simulated device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    pub eurid: u32,
    pub profile: Profile,
}

/// The fleet, and which device sends the `t`-th distinct telegram.
#[derive(Debug, Clone)]
pub struct Population {
    devices: Vec<Device>,
    /// Devices with many distinct states (all but D5-00-01).
    frequent: Vec<u32>,
    /// D5-00-01 contacts: every `contact_gap`-th telegram is one of theirs.
    contacts: Vec<u32>,
    contact_gap: u64,
}

/// How long equal telegrams of a device must be apart (a deduplicating pipeline's window).
const DISTINCT_WINDOW_S: u64 = 60;

impl Population {
    /// `devices` devices with EURIDs 0x05xxxxxx drawn from `seed`, for a run at `rate` telegrams/s.
    pub fn new(devices: u32, seed: u64, rate: u32) -> Self {
        // An odd multiplier makes i -> i*K + offset a bijection on 24 bits: distinct EURIDs.
        let offset = (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as u32;
        let devices: Vec<Device> = (0..devices.max(1))
            .map(|i| Device {
                eurid: 0x0500_0000
                    | (i.wrapping_mul(0x00B5_AD4B).wrapping_add(offset) & 0x00FF_FFFF),
                profile: PROFILES[i as usize % PROFILES.len()],
            })
            .collect();
        let (contacts, frequent): (Vec<u32>, Vec<u32>) = (0..devices.len() as u32)
            .partition(|&i| devices[i as usize].profile == Profile::D50001);
        // Each contact device sends once per half window, so its two states repeat a window apart.
        let per_contact = u64::from(rate.max(1)) * DISTINCT_WINDOW_S / 2;
        let contact_gap = per_contact.div_ceil(contacts.len().max(1) as u64).max(2);
        Population {
            devices,
            frequent,
            contacts,
            contact_gap,
        }
    }

    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// The device of the `t`-th distinct telegram and that device's own telegram counter.
    pub fn sender_of(&self, t: u64) -> (Device, u64) {
        let (index, counter) = if self.contacts.is_empty() || self.frequent.is_empty() {
            let all = self.devices.len() as u64;
            ((t % all) as u32, t / all)
        } else if t.is_multiple_of(self.contact_gap) {
            let j = t / self.contact_gap;
            let n = self.contacts.len() as u64;
            (self.contacts[(j % n) as usize], j / n)
        } else {
            let k = t - t / self.contact_gap - 1;
            let n = self.frequent.len() as u64;
            (self.frequent[(k % n) as usize], k / n)
        };
        (self.devices[index as usize], counter)
    }

    /// The ERP1 data of the `t`-th telegram: RORG, payload, sender ID, status.
    pub fn erp1(&self, t: u64, out: &mut Vec<u8>) -> Device {
        let (device, counter) = self.sender_of(t);
        out.push(device.profile.rorg());
        device.profile.payload(counter, out);
        out.extend_from_slice(&device.eurid.to_be_bytes());
        out.push(0x00);
        device
    }
}

/// The RSSI gateway `g` reports (as ESP3's positive dBm): each gateway its own plausible value.
pub fn gateway_dbm(g: u32) -> u8 {
    40 + ((g * 7) % 56) as u8
}

/// Appends the RADIO_ERP1 frame of `erp1` data as gateway `g` received it.
fn frame_into(erp1: &[u8], g: u32, out: &mut Vec<u8>) {
    let optional = [1, 0xFF, 0xFF, 0xFF, 0xFF, gateway_dbm(g), 0];
    esp3::encode_into(packet_type::RADIO_ERP1, erp1, &optional, out);
}

/// Whether gateway `g` of `n` receives the `t`-th telegram (telegram t goes to gateways t..t+k-1
/// mod n).
fn receives(g: u32, t: u64, n: u32, overlap: u32) -> bool {
    let n = u64::from(n);
    (u64::from(g) + n - t % n) % n < u64::from(overlap)
}

/// The name and MAC of simulated gateway `g`.
pub fn gateway_name(g: u32) -> String {
    format!("sim-gw-{g}")
}

pub fn gateway_mac(g: u32) -> [u8; 6] {
    let [_, _, hi, lo] = g.to_be_bytes();
    [0x02, 0x00, 0x00, 0x00, hi, lo]
}

/// Builds a gateway's websocket messages: the fixed Telemetry header encoded once, then per
/// message only the serial-data entry is appended.
struct MessageBuilder {
    mode: SimMode,
    /// Aruba: `meta` and `reporter`, encoded.
    header: Vec<u8>,
    device_id: String,
    buf: BytesMut,
}

impl MessageBuilder {
    fn new(mode: SimMode, g: u32, token: Option<&str>) -> Self {
        let header = Telemetry {
            meta: Meta {
                version: 1,
                access_token: token.map(str::to_string),
                nb_topic: Some(NbTopic::SerialDataNb as i32),
                sb_topic: None,
            },
            reporter: Reporter {
                name: Some(gateway_name(g)),
                mac: Some(Bytes::copy_from_slice(&gateway_mac(g))),
                hw_type: Some("AP-505".into()),
                sw_version: Some("8.10.0.0".into()),
                time: None,
            },
            nb_s_data: Vec::new(),
            ap_health: None,
        }
        .encode_to_vec();
        MessageBuilder {
            mode,
            header,
            device_id: format!("ENOCEAN_USB:sim{g}"),
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// One message carrying `frames` (concatenated ESP3 frames).
    fn message(&mut self, frames: &[u8]) -> Bytes {
        match self.mode {
            SimMode::Raw => self.buf.extend_from_slice(frames),
            SimMode::Aruba => {
                // Telemetry.nbSData (11) = NbSerialData { nbSerialPayload (1), nbDeviceId (2) }:
                // appending a field to an encoded message is the same as encoding it with the field.
                let id = self.device_id.as_bytes();
                let inner = key_len(1)
                    + encoded_len_varint(frames.len() as u64)
                    + frames.len()
                    + key_len(2)
                    + encoded_len_varint(id.len() as u64)
                    + id.len();
                self.buf.extend_from_slice(&self.header);
                encode_key(11, WireType::LengthDelimited, &mut self.buf);
                encode_varint(inner as u64, &mut self.buf);
                encode_key(1, WireType::LengthDelimited, &mut self.buf);
                encode_varint(frames.len() as u64, &mut self.buf);
                self.buf.put_slice(frames);
                encode_key(2, WireType::LengthDelimited, &mut self.buf);
                encode_varint(id.len() as u64, &mut self.buf);
                self.buf.put_slice(id);
            }
        }
        self.buf.split().freeze()
    }
}

/// Totals all gateways add to.
#[derive(Default)]
struct Tally {
    receptions: AtomicU64,
    messages: AtomicU64,
    bytes: AtomicU64,
}

/// The summary of a run.
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub mode: SimMode,
    pub gateways: u32,
    pub devices: u32,
    pub overlap: u32,
    pub batch: u32,
    /// Distinct telegrams planned (each sent by `overlap` gateways).
    pub distinct: u64,
    /// Frames sent, all gateways together (distinct × overlap when no gateway failed).
    pub receptions: u64,
    pub messages: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub distinct_per_s: f64,
    pub receptions_per_s: f64,
    /// Gateways that could not connect or were disconnected before they finished.
    pub connection_errors: u64,
    /// What went wrong, one line per failed gateway.
    pub errors: Vec<String>,
}

/// Runs the simulation and prints the summary; fails when a gateway could not send everything.
pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.registry_out {
        let population = Population::new(args.devices, args.seed, args.rate);
        std::fs::write(path, registry_toml(&population))
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        println!("{}: {} devices", path.display(), population.devices().len());
        return Ok(());
    }
    let summary = simulate(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "gateways {}  devices {}  overlap {}  batch {}  mode {:?}",
            summary.gateways, summary.devices, summary.overlap, summary.batch, summary.mode
        );
        println!(
            "distinct telegrams {}  receptions sent {}  messages {}  bytes {}  in {:.2}s",
            summary.distinct, summary.receptions, summary.messages, summary.bytes, summary.seconds
        );
        println!(
            "rate {:.0} distinct/s, {:.0} receptions/s  connection errors {}",
            summary.distinct_per_s, summary.receptions_per_s, summary.connection_errors
        );
        for e in &summary.errors {
            println!("error: {e}");
        }
    }
    if summary.connection_errors > 0 {
        bail!(
            "{} of {} gateways failed",
            summary.connection_errors,
            summary.gateways
        );
    }
    Ok(())
}

/// Runs the simulation and returns its summary (without printing). Each gateway closes its
/// connection cleanly and waits for the server's close frame, so when this returns the server has
/// read everything.
pub async fn simulate(args: &SimulateArgs) -> anyhow::Result<Summary> {
    if args.gateways == 0 {
        bail!("--gateways must be at least 1");
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if args.rate == 0 {
        bail!("--rate must be at least 1");
    }
    let connector = client_tls(args)?;
    let population = Arc::new(Population::new(args.devices, args.seed, args.rate));
    let total = args.total();
    let overlap = args.overlap();
    if let Some(path) = &args.manifest {
        write_manifest(path, &population, total, args.gateways)?;
    }
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for g in 0..args.gateways {
        let gateway = Gateway {
            index: g,
            url: gateway_url(args, g),
            connector: connector.clone(),
            builder: MessageBuilder::new(args.mode, g, args.token.as_deref()),
            population: population.clone(),
            gateways: args.gateways,
            overlap,
            batch: args.batch as usize,
            rate: args.rate,
            total,
            tally: tally.clone(),
        };
        tasks.push(tokio::spawn(gateway.run(started)));
    }

    let progress =
        (!args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
            let bar = indicatif::ProgressBar::new(total * u64::from(overlap));
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} receptions {per_sec} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let bar_tally = tally.clone();
            let shown = bar.clone();
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    shown.set_position(bar_tally.receptions.load(Ordering::Relaxed));
                }
            });
            (bar, ticker)
        });

    let mut errors = Vec::new();
    for (g, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(format!("{} (gateway {g}): {e:#}", gateway_name(g as u32))),
            Err(e) => errors.push(format!(
                "{} (gateway {g}): task failed: {e}",
                gateway_name(g as u32)
            )),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some((bar, ticker)) = progress {
        ticker.abort();
        bar.finish_and_clear();
    }
    let receptions = tally.receptions.load(Ordering::Relaxed);
    Ok(Summary {
        mode: args.mode,
        gateways: args.gateways,
        devices: population.devices().len() as u32,
        overlap,
        batch: args.batch,
        distinct: total,
        receptions,
        messages: tally.messages.load(Ordering::Relaxed),
        bytes: tally.bytes.load(Ordering::Relaxed),
        seconds,
        distinct_per_s: total as f64 / seconds.max(1e-9),
        receptions_per_s: receptions as f64 / seconds.max(1e-9),
        connection_errors: errors.len() as u64,
        errors,
    })
}

fn gateway_url(args: &SimulateArgs, g: u32) -> String {
    if args.mode == SimMode::Aruba {
        return args.target.clone();
    }
    let mut url = args.target.clone();
    url.push(if url.contains('?') { '&' } else { '?' });
    url.push_str(&format!("gateway={}", gateway_name(g)));
    if let Some(token) = &args.token {
        url.push_str("&token=");
        for b in token.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                url.push(b as char);
            } else {
                url.push_str(&format!("%{b:02X}"));
            }
        }
    }
    url
}

/// One JSON line per distinct telegram: what a lake must hold exactly once.
fn write_manifest(
    path: &std::path::Path,
    population: &Population,
    total: u64,
    gateways: u32,
) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)
        .with_context(|| format!("cannot create the manifest {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let mut erp1 = Vec::with_capacity(32);
    let mut frame = Vec::with_capacity(48);
    for t in 0..total {
        erp1.clear();
        frame.clear();
        let device = population.erp1(t, &mut erp1);
        let first_gateway = (t % u64::from(gateways)) as u32;
        frame_into(&erp1, first_gateway, &mut frame);
        let line = serde_json::json!({
            "sender": format!("{:08x}", device.eurid),
            "eep": device.profile.eep(),
            "data": hex::encode(&erp1[..erp1.len() - 5]),
            "frame": hex::encode(&frame),
        });
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()
        .with_context(|| format!("writing the manifest {}", path.display()))?;
    Ok(())
}

/// One simulated gateway.
struct Gateway {
    index: u32,
    url: String,
    connector: Option<Connector>,
    builder: MessageBuilder,
    population: Arc<Population>,
    gateways: u32,
    overlap: u32,
    batch: usize,
    rate: u32,
    total: u64,
    tally: Arc<Tally>,
}

/// How often a gateway sends what became due.
const TICK: Duration = Duration::from_millis(10);

impl Gateway {
    async fn run(mut self, started: Instant) -> anyhow::Result<()> {
        let config = WebSocketConfig::default().write_buffer_size(64 * 1024);
        let (ws, _) = connect_async_tls_with_config(
            self.url.as_str(),
            Some(config),
            true,
            self.connector.take(),
        )
        .await
        .with_context(|| format!("connecting to {}", self.url))?;
        let (mut sink, mut stream) = ws.split();
        // The server may talk back: a ConnectStatus, a close frame with its reason.
        let reader = tokio::spawn(async move {
            let mut said = None;
            while let Some(message) = stream.next().await {
                match message {
                    Ok(Message::Close(Some(frame))) => {
                        said = Some(format!(
                            "closed by the server: {} {}",
                            u16::from(frame.code),
                            frame.reason
                        ));
                    }
                    Ok(Message::Binary(bytes)) => {
                        if let Ok(sb) = IotSbMessage::decode(bytes)
                            && let Some(status) = sb.status
                        {
                            tracing::warn!(
                                code = ?status.connect_code,
                                description = status.connect_description.as_deref().unwrap_or(""),
                                "ConnectStatus from the server"
                            );
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            said
        });

        let sent = self.send_all(&mut sink, started).await;
        let closing = async {
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Normal,
                    reason: "simulation done".into(),
                })))
                .await;
        };
        if sent.is_ok() {
            closing.await;
        }
        // The server answers our close only after reading everything before it.
        let said = match tokio::time::timeout(Duration::from_secs(30), reader).await {
            Ok(Ok(said)) => said,
            _ => Some("no close frame from the server within 30 s".into()),
        };
        match (sent, said) {
            (Ok(()), Some(said)) if !said.contains(" 1000 ") => bail!("{said}"),
            (Ok(()), _) => Ok(()),
            (Err(e), Some(said)) => bail!("{said} ({e})"),
            (Err(e), None) => Err(e.into()),
        }
    }

    /// Sends this gateway's share of the telegrams at the run's pace.
    async fn send_all<S>(
        &mut self,
        sink: &mut S,
        started: Instant,
    ) -> Result<(), tungstenite::Error>
    where
        S: futures_util::Sink<Message, Error = tungstenite::Error> + Unpin,
    {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut erp1 = Vec::with_capacity(32);
        let mut frames = Vec::with_capacity(self.batch * 40);
        let mut in_batch = 0usize;
        let mut next = 0u64;
        while next < self.total {
            ticker.tick().await;
            let due = ((started.elapsed().as_secs_f64() * f64::from(self.rate)) as u64)
                .clamp(next, self.total);
            let (mut messages, mut bytes, mut receptions) = (0u64, 0u64, 0u64);
            for t in next..due {
                if !receives(self.index, t, self.gateways, self.overlap) {
                    continue;
                }
                erp1.clear();
                self.population.erp1(t, &mut erp1);
                frame_into(&erp1, self.index, &mut frames);
                in_batch += 1;
                receptions += 1;
                if in_batch == self.batch || t + 1 == self.total {
                    let message = self.builder.message(&frames);
                    frames.clear();
                    in_batch = 0;
                    messages += 1;
                    bytes += message.len() as u64;
                    sink.feed(Message::Binary(message)).await?;
                }
            }
            next = due;
            // The last frames of the run may not fill a batch.
            if next == self.total && in_batch > 0 {
                let message = self.builder.message(&frames);
                frames.clear();
                in_batch = 0;
                messages += 1;
                bytes += message.len() as u64;
                sink.feed(Message::Binary(message)).await?;
            }
            sink.flush().await?;
            self.tally
                .receptions
                .fetch_add(receptions, Ordering::Relaxed);
            self.tally.messages.fetch_add(messages, Ordering::Relaxed);
            self.tally.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The TLS connector for wss:// targets: `--ca`, `--insecure`, client certificate. `None` means the
/// websocket library's default (web roots, no client certificate).
fn client_tls(args: &SimulateArgs) -> anyhow::Result<Option<Connector>> {
    use rustls::ClientConfig;
    if !args.target.starts_with("wss://") {
        if args.ca.is_some() || args.insecure || args.client_cert.is_some() {
            bail!("--ca, --insecure and --client-cert need a wss:// target");
        }
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = if args.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCertificate(provider)))
    } else if let Some(ca) = &args.ca {
        builder.with_root_certificates(load_roots(ca)?)
    } else if args.client_cert.is_some() {
        bail!("--client-cert needs --ca (or --insecure) to check the server");
    } else {
        return Ok(None);
    };
    let config = match (&args.client_cert, &args.client_key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .context("the client certificate and key do not form a usable pair")?,
        _ => builder.with_no_client_auth(),
    };
    Ok(Some(Connector::Rustls(Arc::new(config))))
}

/// `--insecure`: accepts any server certificate (signatures are still checked, so the handshake is
/// real, but anyone can impersonate the server).
#[derive(Debug)]
struct AnyServerCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    #[test]
    fn aruba_messages_decode_as_telemetry_with_the_frames() {
        let population = Population::new(10, 7, 1000);
        let mut erp1 = Vec::new();
        let mut frames = Vec::new();
        for t in 0..3 {
            erp1.clear();
            population.erp1(t, &mut erp1);
            frame_into(&erp1, 2, &mut frames);
        }
        let mut builder = MessageBuilder::new(SimMode::Aruba, 2, Some("tok"));
        for _ in 0..2 {
            let message = builder.message(&frames);
            let telemetry = Telemetry::decode(message).unwrap();
            assert_eq!(telemetry.meta.access_token.as_deref(), Some("tok"));
            assert_eq!(telemetry.reporter.mac.as_deref(), Some(&gateway_mac(2)[..]));
            assert_eq!(telemetry.nb_s_data.len(), 1);
            let serial = &telemetry.nb_s_data[0];
            assert_eq!(serial.nb_device_id.as_deref(), Some("ENOCEAN_USB:sim2"));
            let payload = serial.nb_serial_payload.as_deref().unwrap();
            assert_eq!(payload, &frames[..]);
            let packets = esp3::parse_packets(payload).unwrap();
            assert_eq!(packets.len(), 3);
            assert_eq!(packets[0].optional[5], gateway_dbm(2));
        }
        let mut raw = MessageBuilder::new(SimMode::Raw, 0, None);
        assert_eq!(&raw.message(&frames)[..], &frames[..]);
    }

    #[test]
    fn each_telegram_goes_to_overlap_gateways() {
        for t in 0..50u64 {
            let n = (0..5).filter(|&g| receives(g, t, 5, 3)).count();
            assert_eq!(n, 3);
            assert!(receives((t % 5) as u32, t, 5, 3));
        }
        assert!((0..4).all(|g| receives(g, 9, 4, 4)));
    }

    #[test]
    fn the_registry_of_a_population_loads_with_every_profile_known() {
        let population = Population::new(50, 7, 1000);
        let (devices, warnings) =
            crate::registry::parse("sim.toml", &registry_toml(&population)).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(devices.len(), 50);
        for d in population.devices() {
            assert_eq!(
                devices.get(&d.eurid).unwrap().eep.as_deref(),
                Some(d.profile.eep())
            );
        }
    }

    #[test]
    fn devices_never_repeat_a_telegram_within_the_window() {
        let rate = 1000;
        let population = Population::new(100, 1, rate);
        let eurids: HashSet<u32> = population.devices().iter().map(|d| d.eurid).collect();
        assert_eq!(eurids.len(), 100);
        assert!(eurids.iter().all(|e| e >> 24 == 0x05));
        // Two minutes of telegrams: every telegram equal to an earlier one must be at least
        // 60 s (60 × rate telegrams) after it.
        let mut last_seen: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut erp1 = Vec::new();
        let mut profiles = HashSet::new();
        for t in 0..120 * u64::from(rate) {
            erp1.clear();
            let device = population.erp1(t, &mut erp1);
            profiles.insert(device.profile.eep());
            if let Some(before) = last_seen.insert(erp1.clone(), t) {
                assert!(
                    t - before >= 60 * u64::from(rate),
                    "telegram {t} repeats telegram {before}: {}",
                    hex::encode(&erp1)
                );
            }
        }
        assert_eq!(profiles.len(), 5);
    }

    #[test]
    fn profiles_follow_their_eep_layouts() {
        let mut out = Vec::new();
        Profile::A50401.payload(251 + 7, &mut out);
        assert_eq!(out, [0, 1, 7, 0x0A]);
        out.clear();
        Profile::A50205.payload(5, &mut out);
        assert_eq!(out, [0, 0, 250, 0x08]);
        out.clear();
        Profile::D50001.payload(3, &mut out);
        assert_eq!(out, [0x09]);
        // The published D2-14-41 example packs TMP 639 / HUM 58 / ILL 67 as d29fce80 08...:
        // check the packer against it.
        let mut bits = [0u8; 9];
        set_bits(&mut bits, 0, 10, 639);
        set_bits(&mut bits, 10, 8, 58);
        set_bits(&mut bits, 18, 17, 67);
        set_bits(&mut bits, 37, 10, 474);
        set_bits(&mut bits, 47, 10, 517);
        set_bits(&mut bits, 57, 10, 305);
        assert_eq!(hex::encode(bits), "9fce800863b502a620");
    }

    #[test]
    fn arguments_have_the_documented_defaults() {
        let args = SimulateArgs::parse_from(["--target", "ws://127.0.0.1:1/aruba"]).unwrap();
        assert_eq!(
            (
                args.gateways,
                args.devices,
                args.rate,
                args.overlap,
                args.batch
            ),
            (3, 100, 1000, 1, 1)
        );
        assert_eq!(args.mode, SimMode::Aruba);
        assert_eq!(args.total(), 10_000);
        let args = SimulateArgs::parse_from([
            "--target",
            "ws://h/aruba",
            "--mode",
            "raw",
            "--token",
            "a b",
            "--count",
            "5",
        ])
        .unwrap();
        assert_eq!(args.total(), 5);
        assert_eq!(
            gateway_url(&args, 1),
            "ws://h/aruba?gateway=sim-gw-1&token=a%20b"
        );
        assert!(SimulateArgs::parse_from(["--target", "x", "--client-cert", "c.pem"]).is_err());
    }
}
