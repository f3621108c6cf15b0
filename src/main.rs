//! The `tdc-milter` command: parses arguments, loads the settings, binds the milter
//! socket, wires signals, and maps errors to exit codes. The work is in the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use indymilter::EitherListener;
use tdc_milter::config::{MilterSettings, Settings, SocketSpec, DEFAULT_PATH};
use tdc_milter::control::{self, Request};
use tdc_milter::milter::listener::QuickAckListener;
use tdc_milter::queue::lock::SpoolLock;
use tdc_milter::tdclog::Log;
use tdc_milter::unix_socket::{self, BoundSocket};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(
    name = "tdc-milter",
    version,
    about = "Threat Defense Connector milter: journals clean incoming mail to a Secure Email Threat Defense intake"
)]
struct Cli {
    /// Settings file
    #[arg(short = 'c', long = "config", value_name = "FILE", default_value = DEFAULT_PATH, global = true)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (systemd runs this)
    Run {
        /// Where the log lines go: syslog facility mail, or stderr
        #[arg(long, value_enum, default_value_t = LogTarget::Syslog)]
        log: LogTarget,
        /// Run even as root (by default the daemon refuses: it reads mail from the
        /// network and needs no privilege; the package runs it as user tdc-milter)
        #[arg(long)]
        allow_root: bool,
    },
    /// Validate the settings file: exit 0 if valid, else 1 with file:line:column errors
    CheckConfig,
    /// The effective settings, each with the level it came from (cluster, group, machine, default)
    ShowConfig,
    /// Counters of the.tdc.queue in the running daemon, in the appliance's tophosts layout
    Tophosts {
        /// Print the JSON document instead
        #[arg(long)]
        json: bool,
    },
    /// Delivery status of the running daemon: queue, connections, per-intake figures, last error
    Status {
        /// Print the JSON document instead
        #[arg(long)]
        json: bool,
        /// One Nagios-plugin line (TDC OK/WARNING/CRITICAL/UNKNOWN - ...); exit 0, 1, 2 or 3
        #[arg(long, conflicts_with = "json")]
        check: bool,
    },
    /// Diagnose the path to the intake (route, TCP, STARTTLS, TLS, certificate, MAIL/RCPT); sends no message
    Probe {
        /// The intake address to probe (default: intake_address)
        address: Option<String>,
        /// Print the JSON document instead
        #[arg(long)]
        json: bool,
    },
    /// The tracking lines of a journal: queued, each attempt, outcome
    Track {
        /// A MID, an MTA queue ID or the original's Message-ID
        key: String,
        /// Print the JSON document instead
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogTarget {
    Syslog,
    Stderr,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig => check_config(&cli.config),
        Command::ShowConfig => match Settings::load(&cli.config) {
            Ok(settings) => {
                print!("{}", tdc_milter::config::show::render(&settings));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Tophosts { json } => ask(&cli.config, Request::TopHosts, json),
        Command::Status { check: true, .. } => status_check(&cli.config),
        Command::Status { json, .. } => ask(&cli.config, Request::Status, json),
        Command::Probe { address, json } => probe(&cli.config, address.as_deref(), json),
        Command::Track { key, json } => {
            // One request is one line: a key with a line break cannot be asked for.
            if key.contains(['\r', '\n']) {
                eprintln!("tdc-milter: the key must be on one line");
                return ExitCode::FAILURE;
            }
            ask(&cli.config, Request::Track(key), json)
        }
        Command::Run { log, allow_root } => {
            if rustix::process::geteuid().is_root() && !allow_root {
                eprintln!(
                    "tdc-milter: refusing to run as root: run it as its own user \
                     (the package's systemd unit runs it as tdc-milter), or pass --allow-root"
                );
                return ExitCode::FAILURE;
            }
            let log = match log {
                LogTarget::Syslog => Log::syslog(),
                LogTarget::Stderr => Log::stderr(),
            };
            match run(&cli.config, log) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tdc-milter: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check_config(path: &Path) -> ExitCode {
    match Settings::load(path) {
        Ok(_) => {
            println!("{}: settings are valid", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Asks the running daemon through its control socket and prints the answer.
fn ask(path: &Path, request: Request, json: bool) -> ExitCode {
    let settings = match Settings::load(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tdc-milter: {e}");
            return ExitCode::FAILURE;
        }
    };
    let answer = match control::request(&settings.control.socket, &request.to_string()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tdc-milter: {e}");
            return ExitCode::FAILURE;
        }
    };
    fn show<T: serde::de::DeserializeOwned + serde::Serialize>(
        answer: &str,
        json: bool,
        render: fn(&T) -> String,
    ) -> Result<String, serde_json::Error> {
        let value: T = serde_json::from_str(answer)?;
        Ok(if json { pretty(&value) } else { render(&value) })
    }
    let rendered = match request {
        Request::TopHosts => show(&answer, json, control::render_tophosts),
        Request::Status => show(&answer, json, control::render_status),
        Request::Track(_) => show(&answer, json, control::render_tracked),
    };
    match rendered {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "tdc-milter: unexpected answer from the daemon ({e}): {}",
                answer.trim()
            );
            ExitCode::FAILURE
        }
    }
}

/// `status --check`: a monitoring plugin's line and exit code; 3 whenever the
/// daemon's state cannot be known.
fn status_check(path: &Path) -> ExitCode {
    use tdc_milter::check;
    let judged = Settings::load(path)
        .map_err(|e| format!("settings unreadable: {e}"))
        .and_then(|settings| {
            let answer = control::request(&settings.control.socket, &Request::Status.to_string())
                .map_err(|e| format!("daemon not reachable: {e}"))?;
            let status: control::Status = serde_json::from_str(&answer)
                .map_err(|e| format!("unexpected answer from the daemon: {e}"))?;
            Ok(check::evaluate(
                &status,
                &check::Limits::from_settings(&settings),
                tdc_milter::clock::now_secs(),
            ))
        });
    let (level, line) = match judged {
        Ok(judged) => judged,
        Err(why) => (check::Level::Unknown, check::unknown(&why)),
    };
    println!("{line}");
    ExitCode::from(level as u8)
}

/// Exit 0 only if a journal would be accepted.
fn probe(path: &Path, address: Option<&str>, json: bool) -> ExitCode {
    let settings = match Settings::load(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tdc-milter: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tdc-milter: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(tdc_milter::probe::probe(&settings, address));
    if json {
        print!("{}", pretty(&report));
    } else {
        print!("{}", report.render());
    }
    if report.accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn pretty(value: &impl serde::Serialize) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text
}

fn run(path: &Path, log: Log) -> Result<(), String> {
    let settings = Settings::load(path).map_err(|e| e.to_string())?;
    // Before anything is bound: a second instance must leave the first one's socket
    // and spool alone. Held until the end of this function.
    let _spool = SpoolLock::acquire(&settings.queue.spool_dir).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        // Signals first, so an early SIGTERM or SIGHUP is not lost.
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
        let (reload, reloads) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                // A reload already waiting covers this one too.
                let _ = reload.try_send(());
            }
        });
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        let listen = settings.milter.listen.clone();
        let (listener, bound) = bind(&settings.milter).await?;
        let stats = std::sync::Arc::new(tdc_milter::stats::Stats::default());
        let result = tdc_milter::run_with(listener, settings, log, stats, reloads, shutdown).await;
        if let (SocketSpec::Unix(path), Some(ours)) = (&listen, bound) {
            ours.remove_if_unchanged(path);
        }
        result.map_err(|e| e.to_string())
    })
}

async fn bind(
    milter: &MilterSettings,
) -> Result<
    (
        EitherListener<QuickAckListener, UnixListener>,
        Option<BoundSocket>,
    ),
    String,
> {
    match &milter.listen {
        SocketSpec::Inet { host, port } => TcpListener::bind((host.as_str(), *port))
            .await
            .map(|tcp| (EitherListener::Tcp(QuickAckListener(tcp)), None))
            .map_err(|e| format!("cannot listen on inet:{host}:{port}: {e}")),
        SocketSpec::Unix(path) => {
            let group = match &milter.socket_group {
                Some(name) => Some(
                    unix_socket::group_id(name).map_err(|e| format!("milter.socket_group: {e}"))?,
                ),
                None => None,
            };
            let (listener, bound) = unix_socket::bind(path, milter.socket_mode, group)
                .map_err(|e| format!("cannot listen on unix:{e}"))?;
            Ok((EitherListener::Unix(listener), Some(bound)))
        }
    }
}
