//! Delivery to the intake: routing, the SMTP session with mandatory STARTTLS, and
//! the classification of failures. Workers deliver and report; the queue decides.

pub mod cert_match;
pub mod error;
pub mod route;
pub mod smtp;
pub mod tls;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;

pub use error::{
    DeliveryError, DnsFailure, FailureClass, Kind, Reply, Stage, TlsFailure, TlsProblem,
};

use crate::config::Settings;
use crate::record::Record;
use crate::tdclog::{Event, Log, Step};
use route::{Router, Target};
use smtp::Timeouts;

/// Everything a delivery needs, built once from the settings.
pub struct Deliverer {
    router: Router,
    tls: tls::TlsClient,
    helo_name: String,
    timeouts: Timeouts,
    next_dcid: AtomicU64,
    log: Log,
}

impl Deliverer {
    pub fn new(settings: &Settings, log: Log) -> Result<Deliverer, String> {
        let tls = tls::TlsClient::new(&settings.delivery.tls).map_err(|e| e.to_string())?;
        let router = Router::new(
            settings.delivery.route.clone(),
            &settings.delivery.resolver,
            settings.delivery.port,
        )?;
        Ok(Deliverer {
            router,
            tls,
            helo_name: helo_name(&settings.journal.sender),
            timeouts: Timeouts::default(),
            next_dcid: AtomicU64::new(1),
            log,
        })
    }

    /// Where journals for `domain` go, best first.
    pub async fn route(&self, domain: &str) -> Result<Vec<Target>, DeliveryError> {
        self.router.targets(domain).await
    }

    /// The names a certificate of `target` must carry (`None`: verification is off).
    pub fn accepted_names(&self, target: &Target) -> Option<Vec<cert_match::Accepted>> {
        self.tls.accepted(&target.nexthop, &target.tls_name)
    }

    /// One session to one target: connect, greeting, EHLO, STARTTLS, EHLO.
    pub async fn open(
        &self,
        target: &Target,
        dcid: u64,
        deadline: Instant,
    ) -> Result<smtp::Session, smtp::OpenError> {
        let dialer = smtp::Dialer {
            helo_name: &self.helo_name,
            tls: &self.tls,
            timeouts: self.timeouts,
            log: &self.log,
        };
        dialer.open(target, dcid, deadline).await
    }

    /// Opens a session to the intake of `domain`, trying each route target in turn
    /// while the failure is a network one before any transaction. `deadline` caps every
    /// stage: it is the lifetime of the first journal the connection is opened for.
    pub async fn connect(
        &self,
        domain: &str,
        deadline: Instant,
    ) -> Result<Connection<'_>, DeliveryError> {
        // The resolver's own timeouts and retries add up per name (MX, then A and AAAA
        // of each host): without this bound a slow DNS could hold a journal past its
        // lifetime, and a connection slot with it.
        let routed = tokio::time::timeout_at(deadline, self.route(domain))
            .await
            .unwrap_or_else(|_| {
                Err(DeliveryError::new(
                    Stage::Dns,
                    Kind::DnsTemporary(DnsFailure::lookup(
                        domain,
                        "MX",
                        "Timeout (the lookup outlasted the journal's lifetime)",
                    )),
                ))
            });
        let targets = match routed {
            Ok(t) => t,
            Err(e) => {
                if let Kind::DnsPermanent(failure) | Kind::DnsTemporary(failure) = &e.kind {
                    self.log.event(Event::DnsError {
                        detail: &failure.to_string(),
                    });
                }
                return Err(e);
            }
        };
        let mut last_error = None;
        for target in &targets {
            let dcid = self.next_dcid.fetch_add(1, Ordering::Relaxed);
            match self.open(target, dcid, deadline).await {
                Ok(session) => {
                    return Ok(Connection {
                        deliverer: self,
                        session,
                        target: target.clone(),
                    })
                }
                Err(smtp::OpenError { error, local }) => {
                    self.log_connection_error(dcid, target, local, &error);
                    let next_host = error.class() == FailureClass::Network
                        && matches!(error.stage, Stage::Connect | Stage::Greeting | Stage::Ehlo);
                    if !next_host || Instant::now() >= deadline {
                        return Err(error);
                    }
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| {
            DeliveryError::new(
                Stage::Dns,
                Kind::DnsPermanent(DnsFailure::lookup(domain, "MX", "NoHost")),
            )
        }))
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
            // The appliance's words for a connect that got no answer.
            Kind::Timeout if e.stage == Stage::Connect => "connection timed out".to_string(),
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

/// An open, encrypted session with an intake, for one journal after another.
pub struct Connection<'d> {
    deliverer: &'d Deliverer,
    session: smtp::Session,
    target: Target,
}

impl Connection<'_> {
    /// One journal on this connection, `message` its bytes. No SMTP stage runs past
    /// `deadline` (the journal's lifetime), except the wait for the final reply (see
    /// [`Timeouts::final_reply_grace`]). A failure that leaves the connection unusable
    /// is logged as a connection error; what a refusal means is the queue's to say.
    pub async fn send(
        &mut self,
        journal: &Record,
        message: &[u8],
        deadline: Instant,
    ) -> Result<Reply, DeliveryError> {
        let dcid = self.session.dcid;
        let log = &self.deliverer.log;
        log.event(Event::journal(journal.mid, Step::DeliveryStart { dcid }));
        let result = self
            .session
            .send(
                &journal.sender,
                &journal.intake,
                message,
                journal.eight_bit,
                deadline,
            )
            .await;
        if let Err(e) = &result {
            if e.is_connection_level() {
                self.deliverer
                    .log_connection_error(dcid, &self.target, self.session.local, e)
            }
        }
        result
    }

    /// The connection's DCID, as the log names it.
    pub fn dcid(&self) -> u64 {
        self.session.dcid
    }

    /// RSET before the next journal; an error means the connection is done.
    pub async fn reset(&mut self, deadline: Instant) -> Result<(), DeliveryError> {
        self.session.reset(deadline).await
    }

    /// QUIT, as a future that no longer borrows the deliverer.
    pub fn close(self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.session.quit()
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
