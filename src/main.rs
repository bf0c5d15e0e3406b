//! The `sensorgate` command line: parse arguments, call into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

// glibc's allocator spent ~40% of the CPU in malloc/free and its consolidation under load
// (perf, `loadgen coap` at 15k requests/s); mimalloc's per-thread pages avoid that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sensorgate",
    version,
    about = "IoT ingestion pipeline: devices in, durable data out, acknowledged only once stored"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline until SIGINT or SIGTERM.
    Run {
        /// The pipeline file.
        #[arg(short, long, default_value = "pipeline.toml")]
        config: PathBuf,
    },
    /// Check a pipeline file: every problem with its line, column and a hint. Exits 1 on errors.
    Validate {
        /// The pipeline file.
        #[arg(default_value = "pipeline.toml")]
        file: PathBuf,
    },
    /// Run a pipeline's unit tests: `[[tests]]` files feed frames through a flow's real stages and
    /// compare the documents that reach each sink. Exit 0: all passed, 1: a test failed, 2: a file
    /// could not be loaded.
    Test {
        /// Test files, or directories of them (default: the test files in examples/tests/).
        files: Vec<PathBuf>,
    },
    /// Decode one frame and print the document as JSON.
    Decode {
        #[command(subcommand)]
        codec: DecodeCommand,
    },
    /// Load generators that measure a running pipeline end to end.
    Loadgen {
        #[command(subcommand)]
        kind: LoadgenCommand,
    },
    /// Simulated EnOcean gateways streaming ESP3 to an esp3_websocket source (Aruba or raw).
    Simulate(sensorgate::simulator::SimulateArgs),
    /// Print a pipeline's topology (sources, flows with their stages, sinks, dead letters) as
    /// Graphviz DOT or a Mermaid flowchart.
    Graph {
        /// The pipeline file.
        #[arg(default_value = "pipeline.toml")]
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = sensorgate::graph::Format::Dot)]
        format: sensorgate::graph::Format,
    },
    /// Print a complete pipeline.toml: every component and option with its default, commented.
    Configfile,
    /// Stream the records a running instance's flows send to their sinks (through its HTTP API),
    /// one JSON document per line, until interrupted.
    Tap {
        /// Only this flow's records.
        flow: Option<String>,
        /// The instance's API address.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        api: String,
        /// The environment variable that holds the API's bearer token.
        #[arg(long, default_value = "SENSORGATE_API_TOKEN")]
        token_env: String,
    },
    /// Decoder plugins (WebAssembly components).
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
    },
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Lists the plugins in a directory: name, version, what each decodes, file, size, and the
    /// files that did not load. Exits 1 if any did not.
    List {
        /// The plugin directory.
        #[arg(default_value = "plugins/dist")]
        dir: PathBuf,
        /// Also show how long each took to load, and the total.
        #[arg(long)]
        timing: bool,
        /// Compile every plugin, neither reading nor writing the compiled-code cache.
        #[arg(long)]
        no_cache: bool,
    },
}

#[derive(Subcommand)]
enum DecodeCommand {
    /// An Efento NB-IoT protobuf frame.
    Efento {
        /// Which endpoint the frame was sent to: m (measurements), i (device info), c (configuration).
        #[arg(long, default_value = "m")]
        path: String,
        /// The frame as hex (spaces allowed).
        hex: String,
    },
    /// EnOcean ESP3 frames (one or more, back to back) as the IoT Connector's JSON documents.
    Esp3(Esp3DecodeArgs),
    /// A payload through a vendor codec plugin (e.g. a flespi message), as the decode stage with
    /// codec "plugin" would: the documents, each with its device.
    Plugin {
        /// The plugin directory.
        #[arg(long, default_value = "plugins/dist")]
        plugin: PathBuf,
        /// What to decode it as, as the plugin declares it: vendor:NAME.
        #[arg(long)]
        profile: String,
        /// The device, when the transport names it (an MQTT topic, a CoAP path).
        #[arg(long)]
        device: Option<String>,
        /// Read the payload from this file ("-" for stdin) instead of the argument.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The payload as text (JSON for vendor codecs).
        #[arg(required_unless_present = "file")]
        payload: Option<String>,
    },
}

#[derive(clap::Args)]
struct Esp3DecodeArgs {
    /// Decode every sender with this EEP (e.g. a5-02-05); without it and without --registry the data
    /// is shown raw.
    #[arg(long)]
    eep: Option<String>,
    /// AES-128 key (32 hex digits) for secure telegrams.
    #[arg(long)]
    key: Option<String>,
    /// Security level format of the secure device.
    #[arg(long, default_value = "0x8b")]
    slf: String,
    /// Rolling code to expect (hex), for secure telegrams with an implicit rolling code.
    #[arg(long, default_value = "0")]
    rlc: String,
    /// Take devices (EEPs, keys) from this registry file.
    #[arg(long)]
    registry: Option<PathBuf>,
    /// List every built-in EEP, one per line with its title, and exit.
    #[arg(long)]
    list_eeps: bool,
    /// Decode EEPs with the plugins in this directory too.
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// With --plugin: who decodes an EEP that a plugin and the built-in table both know.
    #[arg(long, value_enum, default_value_t = PreferArg::Builtin)]
    prefer: PreferArg,
    /// The frames as hex (spaces allowed).
    #[arg(required_unless_present = "list_eeps")]
    hex: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum PreferArg {
    Builtin,
    Plugin,
}

#[derive(Subcommand)]
enum LoadgenCommand {
    /// Simulated Efento sensors sending confirmable /m requests.
    Coap(sensorgate::loadgen::CoapLoadArgs),
    /// Simulated devices publishing QoS 1 JSON to an MQTT broker, read back from the Kafka topic a
    /// pipeline writes: end-to-end rate, latency, missing and duplicated messages.
    Mqtt(sensorgate::loadgen::mqtt::MqttLoadArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Validate { file } => validate(&file),
        Command::Graph { file, format } => match sensorgate::config::load_file(&file) {
            Ok((config, _)) => {
                print_out(sensorgate::graph::render(&config, format).trim_end());
                ExitCode::SUCCESS
            }
            Err(report) => {
                eprint!("{report}");
                ExitCode::FAILURE
            }
        },
        Command::Tap {
            flow,
            api,
            token_env,
        } => {
            let token = std::env::var(&token_env).ok();
            run_async(
                async move { sensorgate::cli::tap(&api, flow.as_deref(), token.as_deref()).await },
            )
        }
        Command::Configfile => {
            print_out(sensorgate::cli::CONFIGFILE.trim_end());
            ExitCode::SUCCESS
        }
        Command::Decode {
            codec: DecodeCommand::Efento { path, hex },
        } => match sensorgate::codecs::efento::decode_hex(&path, &hex) {
            Ok(doc) => {
                print_out(&serde_json::to_string_pretty(&doc).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Decode {
            codec: DecodeCommand::Esp3(args),
        } => decode_esp3(args),
        Command::Test { files } => test(&files),
        Command::Run { config } => run_async(run(config)),
        Command::Loadgen {
            kind: LoadgenCommand::Coap(args),
        } => run_async(sensorgate::loadgen::run_coap(args)),
        Command::Loadgen {
            kind: LoadgenCommand::Mqtt(args),
        } => run_async(sensorgate::loadgen::mqtt::run_mqtt(args)),
        Command::Simulate(args) => run_async(sensorgate::simulator::run(args)),
        Command::Decode {
            codec:
                DecodeCommand::Plugin {
                    plugin,
                    profile,
                    device,
                    file,
                    payload,
                },
        } => decode_plugin(&plugin, &profile, device.as_deref(), file, payload),
        Command::Plugins {
            command:
                PluginsCommand::List {
                    dir,
                    timing,
                    no_cache,
                },
        } => match sensorgate::cli::plugins_list(&dir, timing, !no_cache) {
            Ok(text) => {
                print_out(text.trim_end());
                if text.lines().any(|l| l.starts_with("error\t")) {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn decode_plugin(
    dir: &std::path::Path,
    profile: &str,
    device: Option<&str>,
    file: Option<PathBuf>,
    payload: Option<String>,
) -> ExitCode {
    let bytes = match (file, payload) {
        (Some(path), _) if path.as_os_str() == "-" => {
            let mut buf = Vec::new();
            match std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf) {
                Ok(_) => Ok(buf),
                Err(e) => Err(format!("cannot read stdin: {e}")),
            }
        }
        (Some(path), _) => {
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        }
        (None, payload) => Ok(payload.unwrap_or_default().into_bytes()),
    };
    let result =
        bytes.and_then(|bytes| sensorgate::cli::decode_plugin(dir, profile, device, &bytes));
    print_result(result)
}

/// Prints a document, or the error on stderr with exit code 1.
fn print_result(result: Result<serde_json::Value, String>) -> ExitCode {
    match result {
        Ok(docs) => {
            print_out(&serde_json::to_string_pretty(&docs).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn decode_esp3(args: Esp3DecodeArgs) -> ExitCode {
    use sensorgate::codecs::enocean::eep;
    if args.list_eeps {
        for profile in eep::profiles() {
            print_out(&format!("{}\t{}", profile.id, profile.title));
        }
        return ExitCode::SUCCESS;
    }
    let result = sensorgate::cli::decode_esp3(
        args.hex.as_deref().unwrap_or_default(),
        args.registry.as_deref(),
        args.eep.as_deref(),
        args.key.as_deref(),
        &args.slf,
        &args.rlc,
        args.plugin.as_deref(),
        match args.prefer {
            PreferArg::Builtin => sensorgate::codecs::wasm::Prefer::Builtin,
            PreferArg::Plugin => sensorgate::codecs::wasm::Prefer::Plugin,
        },
    );
    print_result(result)
}

/// Prints a line to stdout; a closed pipe (`| head`) ends the output quietly instead of panicking.
fn print_out(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SENSORGATE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn validate(file: &std::path::Path) -> ExitCode {
    match sensorgate::config::load_file(file) {
        Ok((config, report)) => {
            eprint!("{report}");
            println!(
                "{}: ok ({} sources, {} flows, {} sinks; {} warnings)",
                file.display(),
                config.sources.len(),
                config.flows.len(),
                config.sinks.len(),
                report.warnings()
            );
            ExitCode::SUCCESS
        }
        Err(report) => {
            eprint!("{report}");
            eprintln!(
                "{}: {} errors, {} warnings",
                file.display(),
                report.errors(),
                report.warnings()
            );
            ExitCode::FAILURE
        }
    }
}

fn test(named: &[PathBuf]) -> ExitCode {
    use sensorgate::testing;
    let files = match testing::test_files(named) {
        Ok(files) => files,
        Err(message) => {
            eprint!("{message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let summary = runtime.block_on(testing::run_files(
        &files,
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    ));
    ExitCode::from(summary.exit_code())
}

fn run_async<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config_path: PathBuf) -> anyhow::Result<()> {
    let config = match sensorgate::config::load_file(&config_path) {
        Ok((config, report)) => {
            eprint!("{report}");
            config
        }
        Err(report) => {
            eprint!("{report}");
            anyhow::bail!(
                "{} has {} errors; nothing started (check it with `sensorgate validate`)",
                config_path.display(),
                report.errors()
            );
        }
    };
    let pipeline = sensorgate::topology::Pipeline::start(config).await?;
    tracing::info!(config = %config_path.display(), "pipeline running; SIGINT or SIGTERM stops it cleanly");
    let stopped = pipeline.shutdown_token();
    tokio::select! {
        _ = wait_for_signal() => {}
        _ = stopped.cancelled() => {}
    }
    tracing::info!(
        "stopping: finishing records in flight and closing files (a second signal exits at once)"
    );
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("second signal: exiting without finishing");
        std::process::exit(130);
    });
    pipeline.stop().await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
