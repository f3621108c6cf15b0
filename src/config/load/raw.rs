//! Every settings key, declared once. The [`sections!`] table below lists each
//! section of the file and, in it, each key in the order of the annotated example,
//! with all that is known about it: the type serde reads, how the value written
//! becomes the typed one (its check, and so its error messages), its default, and how
//! `show-config` renders it. From that one line come the raw struct (every key
//! optional, unknown keys refused where they stand), the key-by-key merge of the
//! levels ([`Layer`]), the list of keys, the conversion into [`Settings`] and the
//! rows of `show-config`; so a key cannot be read and then be missed at a level, left
//! unconverted, or left out of `show-config`.
//!
//! A key is one of two things. A *section* (`delivery`, `delivery.tls`) merges key by
//! key. Anything else is a *leaf* and is replaced whole by a more specific level,
//! lists included (`policies`, `delivery.route`, `journal.not_clean`): half of one
//! level's list and half of another's would be nobody's intent.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::convert::{
    at_least_one, copied, default_sender, duration, each, header_name, metrics_listen, not_empty,
    parsed, path, percentage, size, some, verdict,
};
use super::delivery::{
    ca_file, cert_match, min_connections, port, resolver, route, MAX_CONNECTIONS,
};
use super::policies::{default_policies, intake_address_needed, policies};
use super::sections::Layer;
use crate::config::show;
use crate::config::values::{
    normalise_address, parse_network, parse_socket_mode, parse_socket_spec,
};
use crate::config::{
    CertMatch, CheckSettings, ControlSettings, DeliverySettings, IncomingSettings, JournalSettings,
    MetricsSettings, MilterSettings, QueueSettings, ResolverSpec, Route, Settings, SocketSpec,
    TlsSettings, TrackingSettings,
};

const MIB: u64 = 1024 * 1024;

sections! {
    /// The whole file.
    struct RawSettings => Settings {
        enabled: bool [copied, default true, show::display],
        intake_address: Spanned<String> [
            some(parsed(normalise_address)),
            default None,
            show::or_null
        ],
        milter: RawMilter [section],
        incoming: RawIncoming [section],
        journal: RawJournal [section],
        delivery: RawDelivery [section],
        queue: RawQueue [section],
        control: RawControl [section],
        metrics: RawMetrics [section],
        tracking: RawTracking [section],
        check: RawCheck [section],
        policies: Spanned<Vec<RawPolicy>> [
            policies,
            default default_policies(),
            rows show::policies
        ],
    }
    // Read from the main file only, before the levels are merged; it names files.
    unread { levels: RawLevels }
    // Set by `Settings::from_yaml` once the levels are known.
    extra { path: PathBuf::new(), level_files: Vec::new(), origins: Default::default() }
    check intake_address_needed;

    struct RawMilter => MilterSettings {
        listen: Spanned<String> [
            parsed(parse_socket_spec),
            default SocketSpec::Inet { host: "127.0.0.1".into(), port: 8895 },
            show::display
        ],
        /// Debian's Postfix runs up to `default_process_limit` (100) smtpd processes
        /// per service, each holding one milter connection: ten such services fit.
        max_connections: Spanned<usize> [at_least_one, default 1000, show::display],
        /// libmilter's own default, a little over Postfix's longest milter timeout (2 h).
        idle_timeout: Spanned<String> [duration, default Duration::from_secs(7210), show::period],
        /// Owner and group read and write: Postfix's user, a member of the socket's
        /// group, can connect; nobody else can.
        socket_mode: Spanned<String> [parsed(parse_socket_mode), default 0o660, show::octal],
        socket_group: Spanned<String> [
            some(not_empty("the group name is empty")),
            default None,
            show::or_null
        ],
    }

    struct RawIncoming => IncomingSettings {
        daemon_names: Vec<Spanned<String>> [
            each(not_empty("the daemon name is empty")),
            default Vec::new(),
            show::list
        ],
        internal_networks: Vec<Spanned<String>> [
            each(parsed(parse_network)),
            default Vec::new(),
            show::list
        ],
    }

    struct RawJournal => JournalSettings {
        sender: Spanned<String> [
            parsed(normalise_address),
            default_with default_sender,
            show::display
        ],
        client_ip_header: Spanned<String> [
            header_name,
            default "X-IronPort-RemoteIP".into(),
            show::display
        ],
        max_size: Spanned<String> [size, default 50 * MIB, show::bytes],
        /// No default verdict: a header that a filter before us did not set (or did not
        /// clean of the sender's copies) would let any sender opt out of scanning.
        not_clean: Vec<RawVerdict> [each(verdict), default Vec::new(), show::verdicts],
    }

    struct RawDelivery => DeliverySettings {
        route: Spanned<RawRoute> [route, default Route::Dns, show::route],
        resolver: Spanned<String> [resolver, default ResolverSpec::System, show::resolver],
        port: Spanned<u16> [port, default 25, show::display],
        tls: RawTls [section],
        lifetime: Spanned<String> [duration, default Duration::from_secs(120), show::period],
        retry_delay: Spanned<String> [duration, default Duration::from_secs(5), show::period],
        shutdown_grace: Spanned<String> [duration, default Duration::from_secs(30), show::period],
        /// At most `max_connections`; its default (3) gives way to a smaller one.
        min_connections: Spanned<usize> [by min_connections, show::display],
        max_connections: Spanned<usize> [at_least_one, default MAX_CONNECTIONS, show::display],
        max_messages_per_connection: Spanned<usize> [at_least_one, default 10, show::display],
    }

    struct RawTls => TlsSettings {
        verify: bool [copied, default true, show::display],
        ca_file: Spanned<String> [some(ca_file), default None, show::path_or_null],
        cert_match as "match": Spanned<Vec<Spanned<String>>> [
            cert_match,
            default CertMatch::defaults(),
            show::list
        ],
    }

    struct RawQueue => QueueSettings {
        spool_dir: Spanned<String> [path, default "/var/spool/tdc-milter".into(), show::path],
        max_messages: Spanned<usize> [at_least_one, default 100_000, show::display],
        max_bytes: Spanned<String> [size, default 2048 * MIB, show::bytes],
    }

    struct RawControl => ControlSettings {
        socket: Spanned<String> [path, default "/run/tdc-milter/control.sock".into(), show::path],
    }

    struct RawMetrics => MetricsSettings {
        listen: Spanned<String> [
            metrics_listen,
            default Some(SocketAddr::from(([127, 0, 0, 1], 9466))),
            show::address_or_off
        ],
    }

    struct RawTracking => TrackingSettings {
        max_journals: Spanned<usize> [
            at_least_one,
            default crate::tracking::DEFAULT_CAPACITY,
            show::display
        ],
        max_age: Spanned<String> [duration, default crate::tracking::DEFAULT_MAX_AGE, show::period],
    }

    struct RawCheck => CheckSettings {
        window: Spanned<String> [duration, default Duration::from_secs(15 * 60), show::period],
        queue_warning: Spanned<String> [percentage, default 0.5, show::percent],
    }
}

impl RawSettings {
    /// The name of every settings key the file may hold, levels aside, in the order
    /// of the declaration.
    pub(super) fn keys() -> Vec<String> {
        let mut out = Vec::new();
        <RawSettings as Layer>::keys("", &mut out);
        out
    }
}

/// The main file's `levels`: where the more specific files are.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLevels {
    pub(super) group: Option<Spanned<String>>,
    pub(super) machine: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVerdict {
    pub(super) header: Spanned<String>,
    pub(super) value: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) name: Spanned<String>,
    pub(super) recipients: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) senders: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) connector: Option<Spanned<RawConnector>>,
}

/// `off` is read as a variant name, whatever YAML 1.1 thinks of it; `false` or `no`
/// are unknown variants.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum RawConnector {
    UseDefault,
    Global,
    Off,
    Custom(Spanned<String>),
}

/// `route:` is the keyword `dns` or a list of hosts. Anything else is kept as `Other`
/// (described) so the error can point at the value itself.
pub(super) enum RawRoute {
    Keyword(String),
    Hosts(Vec<Spanned<String>>),
    Other(String),
}

impl<'de> Deserialize<'de> for RawRoute {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RouteVisitor;

        impl<'de> Visitor<'de> for RouteVisitor {
            type Value = RawRoute;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("dns or a list of hosts")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<RawRoute, E> {
                Ok(RawRoute::Keyword(value.to_string()))
            }

            fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawRoute, E> {
                Ok(RawRoute::Other("a boolean".to_string()))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<RawRoute, E> {
                Ok(RawRoute::Other(format!("the number {value}")))
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<RawRoute, E> {
                Ok(RawRoute::Other(format!("the number {value}")))
            }

            fn visit_f64<E: de::Error>(self, value: f64) -> Result<RawRoute, E> {
                Ok(RawRoute::Other(format!("the number {value}")))
            }

            fn visit_unit<E: de::Error>(self) -> Result<RawRoute, E> {
                Ok(RawRoute::Other("null".to_string()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawRoute, A::Error> {
                let mut hosts = Vec::new();
                while let Some(host) = seq.next_element::<Spanned<String>>()? {
                    hosts.push(host);
                }
                Ok(RawRoute::Hosts(hosts))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRoute, A::Error> {
                while map
                    .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(RawRoute::Other("a mapping".to_string()))
            }
        }

        deserializer.deserialize_any(RouteVisitor)
    }
}
