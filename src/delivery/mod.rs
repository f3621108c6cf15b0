//! Delivery to the intake: routing, the SMTP session with mandatory STARTTLS, and
//! the classification of failures. Workers deliver and report; the queue decides.

pub mod error;
pub mod route;
pub mod smtp;
pub mod tls;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

pub use error::{DeliveryError, FailureClass, Kind, Reply, Stage};

use crate::config::Settings;
use crate::tdclog::{Event, Log};
use route::{Router, Target};
use smtp::Timeouts;

/// One journal to deliver.
#[derive(Debug, Clone)]
pub struct Job {
    pub mid: u64,
    /// Envelope sender of the journal.
    pub sender: String,
    /// The intake address: the only RCPT TO.
    pub intake: String,
    pub message: Bytes,
    pub eight_bit: bool,
    /// No SMTP stage may run past this (the journal's lifetime), except the wait for
    /// the final reply (see [`Timeouts::final_reply_grace`]).
    pub deadline: Instant,
}

/// Everything a delivery needs, built once from the settings.
pub struct Deliverer {
    router: Router,
    connector: TlsConnector,
    helo_name: String,
    timeouts: Timeouts,
    next_dcid: AtomicU64,
    log: Log,
}

impl Deliverer {
    pub fn new(settings: &Settings, log: Log) -> Result<Deliverer, String> {
        let tls = tls::client_config(&settings.delivery.tls).map_err(|e| e.to_string())?;
        let router = Router::new(
            settings.delivery.route.clone(),
            &settings.delivery.resolver,
            settings.delivery.port,
        )?;
        Ok(Deliverer {
            router,
            connector: smtp::connector(tls),
            helo_name: helo_name(&settings.journal.sender),
            timeouts: Timeouts::default(),
            next_dcid: AtomicU64::new(1),
            log,
        })
    }

    /// Tests and labs use a short lifetime; the per-stage limits shrink with it.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Deliverer {
        self.timeouts = timeouts;
        self
    }

    /// Delivers one journal on a connection of its own, trying each route target in
    /// turn while the failure is a connection-level one.
    pub async fn deliver(&self, job: &Job) -> Result<Reply, DeliveryError> {
        let domain = job.intake.rsplit_once('@').map_or("", |(_, d)| d);
        let targets = match self.router.targets(domain).await {
            Ok(t) => t,
            Err(e) => {
                if let Kind::DnsPermanent(detail) | Kind::DnsTemporary(detail) = &e.kind {
                    self.log.event(Event::DnsError { domain, detail });
                }
                return Err(e);
            }
        };
        let mut last_error = None;
        for target in &targets {
            match self.deliver_to(target, job).await {
                Ok(reply) => return Ok(reply),
                // Only failures before a transaction started move on to the next host.
                Err(e)
                    if e.class() == FailureClass::Network
                        && matches!(e.stage, Stage::Connect | Stage::Greeting | Stage::Ehlo) =>
                {
                    last_error = Some(e)
                }
                Err(e) => return Err(e),
            }
            if Instant::now() >= job.deadline {
                break;
            }
        }
        Err(last_error.unwrap_or_else(|| {
            DeliveryError::new(
                Stage::Dns,
                Kind::DnsPermanent(format!("no host for {domain}")),
            )
        }))
    }

    async fn deliver_to(&self, target: &Target, job: &Job) -> Result<Reply, DeliveryError> {
        let dcid = self.next_dcid.fetch_add(1, Ordering::Relaxed);
        let opened = smtp::open(
            target,
            &self.helo_name,
            &self.connector,
            dcid,
            job.deadline,
            self.timeouts,
            &self.log,
        )
        .await;
        let mut session = match opened {
            Ok(s) => s,
            Err(smtp::OpenError { error, local }) => {
                self.log_connection_error(dcid, target, local, &error);
                return Err(error);
            }
        };
        self.log.event(Event::DeliveryStart { dcid, mid: job.mid });
        let result = session
            .send(
                &job.sender,
                &job.intake,
                &job.message,
                job.eight_bit,
                job.deadline,
            )
            .await;
        match &result {
            Err(e) if e.is_connection_level() => {
                self.log_connection_error(dcid, target, session.local, e);
            }
            Err(e) => {
                if let Kind::Reply(reply) = &e.kind {
                    self.log.event(Event::Bounced {
                        dcid,
                        mid: job.mid,
                        response: &reply.to_string(),
                    });
                }
                session.quit().await;
            }
            Ok(_) => session.quit().await,
        }
        result
    }

    fn log_connection_error(
        &self,
        dcid: u64,
        target: &Target,
        interface: Option<IpAddr>,
        e: &DeliveryError,
    ) {
        let details = match &e.kind {
            Kind::Timeout => "timeout".to_string(),
            Kind::Reply(r) => r.to_string(),
            _ => e.stage.name().to_string(),
        };
        let reason = match &e.kind {
            Kind::Timeout => format!("{} timed out", e.stage.name()),
            _ => e.to_string(),
        };
        self.log.event(Event::ConnectionError {
            dcid,
            address: Some(target.address.ip()),
            port: target.address.port(),
            details: &details,
            interface,
            reason: &reason,
        });
    }
}

/// The EHLO name: the journal sender's domain, which is the gateway's name by default.
fn helo_name(sender: &str) -> String {
    sender
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
