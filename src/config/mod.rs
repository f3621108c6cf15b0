//! Typed settings (the annotated example `milter-config/tdc-milter.yaml`) and their loading from the YAML file.
//!
//! The key names are a contract with administrators: they may be extended, never
//! renamed. Loading turns every mistake into a [`ConfigError`] that names the file,
//! line and column, so `check-config` can point at the exact spot.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod load;
pub mod show;
mod units;
mod values;
mod yaml_path;

pub use load::{setting_keys, ConfigError};
pub use values::parse_socket_spec;

/// Default path of the settings file (README.md, "Command line").
pub const DEFAULT_PATH: &str = "/etc/tdc-milter/tdc-milter.yaml";

/// The effective settings of one running daemon.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The file the settings were read from (for messages): the cluster level.
    pub path: PathBuf,
    /// The group and machine files that were read, if any (docs/POLICIES.md, "Levels").
    pub level_files: Vec<PathBuf>,
    /// For each key set in a file (`delivery.lifetime`, `policies`, ...): its level.
    /// Keys not listed have their default.
    pub origins: std::collections::BTreeMap<String, Level>,
    /// Global switch: when false, nothing is journaled and every message is accepted.
    pub enabled: bool,
    /// Default (global) message intake address, already normalised (domain in A-labels, lower case).
    pub intake_address: Option<String>,
    pub milter: MilterSettings,
    pub incoming: IncomingSettings,
    pub journal: JournalSettings,
    pub delivery: DeliverySettings,
    pub queue: QueueSettings,
    pub control: ControlSettings,
    pub metrics: MetricsSettings,
    pub tracking: TrackingSettings,
    pub check: CheckSettings,
    /// Ordered incoming mail policies; the last one is always `DEFAULT`.
    pub policies: Vec<Policy>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MilterSettings {
    pub listen: SocketSpec,
    /// MTA connections served in full; past it a connection is answered at once and
    /// its messages are logged and counted as "milter busy" (docs/LOGGING.md).
    pub max_connections: usize,
    /// A connection on which the MTA sends nothing for this long is closed. Longer
    /// than any MTA timeout, so that the MTA, not we, ends an idle session.
    pub idle_timeout: Duration,
    /// The mode of a `unix:` milter socket: the MTA's user needs read and write.
    pub socket_mode: u32,
    /// The group a `unix:` milter socket is given (the MTA's user is a member);
    /// `None`: the daemon's own group.
    pub socket_group: Option<String>,
}

/// A milter socket in Postfix syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSpec {
    /// `inet:HOST:PORT` (an IPv6 host is written in brackets: `inet:[::1]:8895`).
    Inet {
        /// Host name or IP address; an IPv6 address is kept without its brackets.
        host: String,
        port: u16,
    },
    /// `unix:/absolute/path`
    Unix(PathBuf),
}

impl std::str::FromStr for SocketSpec {
    type Err = String;

    /// Same as [`parse_socket_spec`].
    fn from_str(text: &str) -> Result<SocketSpec, String> {
        parse_socket_spec(text)
    }
}

impl fmt::Display for SocketSpec {
    /// Postfix syntax, as written in the settings file (`inet:[::1]:8895` for IPv6).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketSpec::Inet { host, port } if host.contains(':') => {
                write!(f, "inet:[{host}]:{port}")
            }
            SocketSpec::Inet { host, port } => write!(f, "inet:{host}:{port}"),
            SocketSpec::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct IncomingSettings {
    /// `{daemon_name}` values that count as inbound; empty means every service.
    pub daemon_names: Vec<String>,
    /// SMTP clients whose mail is internal (relayed outbound or between sites), not
    /// incoming: like Postfix's `mynetworks`.
    pub internal_networks: Vec<ipnet::IpNet>,
}

impl IncomingSettings {
    /// Whether `ip` (an IPv4-mapped IPv6 address counts as its IPv4 address) is in
    /// `internal_networks`.
    pub fn is_internal(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.internal_networks.iter().any(|n| n.contains(&ip))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct JournalSettings {
    /// Envelope MAIL FROM and `From:` of the journal copy.
    pub sender: String,
    /// Header that carries the SMTP client IP as the first header of the attached original.
    pub client_ip_header: String,
    /// Originals larger than this many bytes are not journaled (logged).
    pub max_size: u64,
    /// Header verdicts that mark a message as not clean.
    pub not_clean: Vec<HeaderVerdict>,
}

/// A header whose value marks a message as not clean. Both compare case-insensitively;
/// the value is compared after trimming surrounding white space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderVerdict {
    pub header: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeliverySettings {
    pub route: Route,
    pub resolver: ResolverSpec,
    /// SMTP port used for hosts found through DNS and for static hosts written without a port.
    pub port: u16,
    pub tls: TlsSettings,
    /// How long a journal may stay in the.tdc.queue; every SMTP stage is capped by it.
    pub lifetime: Duration,
    /// The one retry of a soft failure waits at least this long.
    pub retry_delay: Duration,
    /// At shutdown, deliveries in progress may finish for this long; what is left
    /// stays in the spool.
    pub shutdown_grace: Duration,
    /// While journals wait, at least this many connections (or one per journal, if fewer).
    pub min_connections: usize,
    /// Upper bound on simultaneous connections to the intake.
    pub max_connections: usize,
    /// Journals sent on one connection before it is closed (RSET between them).
    pub max_messages_per_connection: usize,
}

/// Where the CLI reaches the running daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlSettings {
    /// Unix socket; only root and the daemon's group may open it (mode 0660).
    pub socket: PathBuf,
}

/// Message tracking (`tdc-milter track`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackingSettings {
    /// Journals whose lines are kept; the oldest are dropped first.
    pub max_journals: usize,
    /// Lines of journals queued longer ago than this are dropped.
    pub max_age: Duration,
}

/// The thresholds of `status --check` (docs/LOGGING.md, "Alerting").
#[derive(Debug, Clone, PartialEq)]
pub struct CheckSettings {
    /// How far back a hard bounce, soft bounce or busy connection counts.
    pub window: Duration,
    /// WARNING when the queue holds more than this share of queue.max_messages or
    /// queue.max_bytes (0 to 1).
    pub queue_warning: f64,
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSettings {
    /// `None`: off.
    pub listen: Option<SocketAddr>,
}

/// the.tdc.queue's spool and its bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueSettings {
    pub spool_dir: PathBuf,
    pub max_messages: usize,
    pub max_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// MX of the intake domain, then A/AAAA (docs/DELIVERY.md, "Routing").
    Dns,
    /// Fixed list of hosts tried in order instead of DNS.
    Static(Vec<HostPort>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// A domain name (lower case, A-labels) or an IP address (IPv6 without brackets).
    pub host: String,
    /// `None` means `delivery.port`.
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolverSpec {
    /// `/etc/resolv.conf`.
    System,
    /// One name server at `IP:PORT` (labs and tests).
    Server(SocketAddr),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Verify the intake's certificate chain and name (on by default).
    pub verify: bool,
    /// Extra trust anchors (PEM), added to the system roots.
    pub ca_file: Option<PathBuf>,
    /// `delivery.tls.match`: the names an intake certificate may carry; one is enough.
    pub cert_match: Vec<CertMatch>,
}

/// One entry of `delivery.tls.match`, after Postfix's `smtp_tls_secure_cert_match`.
/// What each trusts is in `docs/SECURITY.md` ("Whose certificate is the intake's").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertMatch {
    /// The destination itself: the intake address's domain when routed by DNS, the
    /// listed host with a static route.
    Nexthop,
    /// Any name below the destination (`mx1.intake.example` for `intake.example`).
    DotNexthop,
    /// The host connected to: an MX host name from DNS. Only as trustworthy as the DNS
    /// answer that named it.
    Hostname,
    /// Exactly this host name (or IP address).
    Name(String),
    /// Any name below this domain (written `.cisco.com`, stored without the dot).
    Under(String),
}

impl CertMatch {
    /// The default list: the intake domain, names below it, and names below
    /// cisco.com, where SETD's own mail hosts live even when the intake address's
    /// domain is another one (`docs/SECURITY.md` says why).
    pub fn defaults() -> Vec<CertMatch> {
        vec![
            CertMatch::Nexthop,
            CertMatch::DotNexthop,
            CertMatch::Under("cisco.com".into()),
        ]
    }
}

impl std::fmt::Display for CertMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertMatch::Nexthop => f.write_str("nexthop"),
            CertMatch::DotNexthop => f.write_str("dot-nexthop"),
            CertMatch::Hostname => f.write_str("hostname"),
            CertMatch::Name(name) => f.write_str(name),
            CertMatch::Under(domain) => write!(f, ".{domain}"),
        }
    }
}

/// One incoming mail policy. It matches a recipient when both its recipient and its
/// sender criteria match; an empty list matches anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub recipients: Vec<Pattern>,
    pub senders: Vec<Pattern>,
    pub connector: Connector,
}

/// An address pattern, normalised at load time: lower case, domains in A-labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// `user@example.com`: exactly this address.
    Address { local: String, domain: String },
    /// `example.com` or `@example.com`: any address in exactly this domain.
    Domain(String),
    /// `.example.com`: any address in a sub-domain of example.com (stored without the dot).
    SubDomain(String),
    /// `postmaster@`: this local part in any domain.
    LocalPart(String),
}

/// The per-policy connector setting (docs/POLICIES.md, "Policies").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connector {
    /// Inherit the DEFAULT policy's setting.
    UseDefault,
    /// Journal to the global intake address.
    Global,
    /// Journal to this intake address (normalised).
    Custom(String),
    /// No journaling.
    Off,
}

/// Where a setting came from (docs/POLICIES.md, "Levels").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The main settings file.
    Cluster,
    /// `levels.group`.
    Group,
    /// `levels.machine`.
    Machine,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Cluster => "cluster",
            Level::Group => "group",
            Level::Machine => "machine",
        }
    }
}

/// Name of the catch-all policy that must come last.
pub const DEFAULT_POLICY: &str = "DEFAULT";
