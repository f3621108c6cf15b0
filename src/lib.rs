//! tdc-milter: the Threat Defense Connector for Postfix and Sendmail.
//!
//! Every clean incoming message that matches an incoming mail policy is journaled to a
//! Secure Email Threat Defense message intake address. Data flows one way:
//!
//! ```text
//! MTA ──milter──▶ milter (collect; end of message: accept the original, always)
//!                   │
//!                   ▼
//!                 policy (recipient → intake address; one job per intake)
//!                   ▼
//!                 journal (report + original as message/rfc822)
//!                   ▼
//!                 queue (the.tdc.queue: decides outcomes, logs them)
//!                   ▼
//!                 delivery (route, SMTP + STARTTLS ≥ 1.2 → intake)
//! ```
//!
//! `config` and `tdclog` are leaves that every module may use. This library exists for
//! the binary and the integration tests; it makes no API promises.

mod accept;
pub mod check;
pub mod clock;
pub mod config;
pub mod control;
pub mod delivery;
mod fd_limit;
mod heartbeat;
pub mod journal;
pub mod metrics;
pub mod milter;
pub mod outcome;
pub mod policy;
pub mod probe;
pub mod queue;
pub mod record;
mod reload;
pub mod stats;
pub mod tdclog;
mod tracking;
pub mod unix_socket;

use std::future::Future;
use std::sync::Arc;

use config::Settings;
use stats::Stats;
use tdclog::{Event, Log};
use tokio::sync::mpsc;

/// Connections indymilter accepts at most: far past any milter.max_connections, so
/// that the process's file descriptor limit, not a silent wait, is what ends it.
const ACCEPT_CEILING: usize = 1 << 20;

#[derive(Debug)]
pub enum RunError {
    /// The delivery side could not be set up (TLS roots, resolver).
    Delivery(String),
    /// The spool could not be opened.
    Spool(queue::spool::SpoolError),
    /// The milter listener failed.
    Milter(std::io::Error),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Delivery(e) => write!(f, "cannot set up delivery to the intake: {e}"),
            RunError::Spool(e) => write!(f, "cannot open the spool: {e}"),
            RunError::Milter(e) => write!(f, "milter listener failed: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

/// Runs the daemon on a bound listener until `shutdown` completes, then lets running
/// deliveries finish (for a bounded time); undelivered journals stay in the spool.
pub async fn run(
    listener: impl indymilter::Listener,
    settings: Settings,
    log: Log,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    // Nobody can ask for a reload through a sender that is dropped at once.
    let (_, no_reload) = mpsc::channel(1);
    run_with(
        listener,
        settings,
        log,
        Arc::new(Stats::default()),
        no_reload,
        shutdown,
    )
    .await
}

/// [`run`], counting into the given [`Stats`] (the control socket and tests read
/// them) and re-reading the settings file whenever `reload` receives (SIGHUP).
pub async fn run_with(
    listener: impl indymilter::Listener,
    settings: Settings,
    log: Log,
    stats: Arc<Stats>,
    reload: mpsc::Receiver<()>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let tracker = Arc::new(tracking::Tracker::new(
        settings.tracking.max_journals,
        settings.tracking.max_age,
    ));
    let log = log.with_tap(tracker.clone());
    let grace = settings.delivery.shutdown_grace;
    let deliverer = delivery::Deliverer::new(&settings, log.clone()).map_err(RunError::Delivery)?;
    if !settings.delivery.tls.verify {
        log.event(Event::TlsVerifyOff);
    }
    stats.set_milter_connection_limit(settings.milter.max_connections);
    fd_limit::raise_and_check(&settings, &log);
    let listener = accept::Resilient::new(
        listener,
        accept::Backoff::new(stats::Socket::Milter, log.clone(), stats.clone()),
    );
    let (queue, scheduler) =
        queue::open(&settings, deliverer, stats.clone(), log.clone()).map_err(RunError::Spool)?;
    // The control socket is for looking; journaling goes on without it.
    let control_socket = settings.control.socket.clone();
    let controlling = match control::bind(&settings.control.socket) {
        Ok((listener, bound)) => Some((
            tokio::spawn(control::serve(
                listener,
                Arc::new(control::Controller::new(queue.clone(), tracker.clone())),
                log.clone(),
                stats.clone(),
            )),
            bound,
        )),
        Err(e) => {
            log.event(Event::ControlUnavailable { error: &e });
            None
        }
    };
    let exporting = match settings.metrics.listen {
        None => None,
        Some(address) => match metrics::bind(address).await {
            Ok(listener) => {
                let bound = listener.local_addr().map_or(address, |a| a);
                log.event(Event::MetricsListening {
                    address: &bound.to_string(),
                });
                let registry = Arc::new(metrics::registry(queue.clone()));
                Some(tokio::spawn(metrics::serve(
                    listener,
                    registry,
                    log.clone(),
                    stats.clone(),
                )))
            }
            Err(e) => {
                log.event(Event::MetricsUnavailable { error: &e });
                None
            }
        },
    };
    let (stop_delivery, delivery_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut delivering = tokio::spawn(scheduler.run(async {
        let _ = delivery_stopped.await;
    }));

    let listen = settings.milter.listen.to_string();
    log.event(Event::Starting {
        version: env!("CARGO_PKG_VERSION"),
        listen: &listen,
    });
    let heartbeat = heartbeat::Heartbeat::new(&settings.queue.spool_dir);
    heartbeat.start(&log);
    let beating = tokio::spawn(heartbeat.clone().run(log.clone()));
    let milter_config = indymilter::Config {
        // Our own limit (milter.max_connections) is applied at negotiation, where a
        // connection past it is answered at once; indymilter's would leave it
        // unanswered in the listen backlog until the MTA's timeout.
        max_connections: ACCEPT_CEILING,
        connection_timeout: settings.milter.idle_timeout,
        ..indymilter::Config::default()
    };
    let shared = Arc::new(milter::Shared::new(
        Arc::new(settings),
        queue,
        log.clone(),
        tracker,
    ));
    let reloading = tokio::spawn(reload::serve(reload, shared.clone(), log.clone()));
    // Ready for systemd (Type=notify); a no-op without NOTIFY_SOCKET.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let served =
        indymilter::run(listener, milter::callbacks(shared), milter_config, shutdown).await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    reloading.abort();

    // No new journals can come now: let the connections finish what they are sending.
    let _ = stop_delivery.send(());
    if tokio::time::timeout(grace, &mut delivering).await.is_err() {
        // Dropping the handle would leave the workers running; what they had in hand
        // stays in the spool and goes out after the next start.
        delivering.abort();
        log.event(Event::DeliveriesAbandoned);
    }
    if let Some((task, bound)) = controlling {
        task.abort();
        bound.remove_if_unchanged(&control_socket);
    }
    if let Some(task) = exporting {
        task.abort();
    }
    beating.abort();
    // The moment of a clean stop, for the next start's gap line.
    let _ = heartbeat.beat();
    log.event(Event::Stopping);
    served.map_err(RunError::Milter)
}
