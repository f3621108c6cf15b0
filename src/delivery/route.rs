//! Where to connect for an intake address (docs/DELIVERY.md, "Routing"): the static route, or DNS.
//!
//! Through DNS: the MX records of the intake domain in preference order (equal
//! preferences keep the order of the answer), then the A and AAAA addresses of each MX
//! host, IPv4 first; the certificate must name the MX host. No MX record (NODATA) makes
//! the domain its own mail host (implicit MX, RFC 5321 §5.1). A static route lists
//! `host[:port]` entries: IPs are used as they are, names are resolved like MX hosts.
//! An MX host or static host that does not resolve is skipped while another one does.
//!
//! # How DNS failures are classified
//!
//! The retry table (docs/DELIVERY.md) hard-bounces permanent failures and retries temporary
//! ones once, so the classes follow what a retry could change:
//!
//! * **Permanent** ([`Kind::DnsPermanent`], a hard bounce, "Bad destination host"):
//!   NXDOMAIN, a null MX (`MX 0 .`, RFC 7505: the domain takes no mail), no address
//!   for the mail host(s). These are answers from the domain's own servers: asking again
//!   in a few seconds gets the same answer. NXDOMAIN is trusted, not retried on the spot
//!   (`trust_negative_responses`).
//! * **Temporary** ([`Kind::DnsTemporary`], class `Network`, one retry): SERVFAIL,
//!   REFUSED and other error codes, no reply (timeout), socket trouble. They say nothing
//!   about the domain, only that the resolver could not get an answer now.
//! * Several hosts that all fail: temporary if any of them failed temporarily (a retry
//!   may reach it), else permanent. The error reported is the last of that class.
//!
//! The text of every DNS failure reads `NAME TYPE - REASON`, as the appliance logs it
//! after `DNS Error ` (`esa.example.com MX - NXDomain`); REASON is one of `NXDomain`,
//! `NoData`, `Null MX`, `ServFail`, `Refused` (or another response code), `Timeout`.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
    ResolverOpts,
};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::TokioResolver;

use super::error::{DeliveryError, DnsFailure, Kind, Stage};
use crate::config::{ResolverSpec, Route};

/// Time limit for one DNS query round with a configured name server.
const DNS_TIMEOUT: Duration = Duration::from_secs(2);
/// Further rounds after the first (hickory counts retries): a dead name server costs
/// at most 2 × [`DNS_TIMEOUT`] per lookup. UDP queries are also resent within a round.
const DNS_RETRIES: usize = 1;

/// One address to try, the host name it was found under, and the destination it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub address: SocketAddr,
    /// The host connected to: an MX host (from DNS), or the host of a static route.
    pub tls_name: String,
    /// The destination the route was asked for: the intake address's domain, or for a
    /// static route the listed host. `delivery.tls.match`'s `nexthop` is this name.
    pub nexthop: String,
}

/// Why a lookup found no records, in the terms routing decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// The name does not exist (NXDOMAIN).
    NxDomain,
    /// The name exists without records of the type asked for (NODATA).
    NoData,
    /// The name cannot be carried by DNS (too long a label, say).
    InvalidName,
    /// No answer about the name: SERVFAIL, REFUSED or another code, a timeout,
    /// socket trouble. The text is the appliance's word for it where it has one.
    Unanswered(String),
}

impl LookupError {
    /// NXDOMAIN, NODATA and a bad name are answers about the name: asking again
    /// soon gets the same answer.
    fn is_permanent(&self) -> bool {
        !matches!(self, LookupError::Unanswered(_))
    }

    /// The appliance's short DNS error word.
    fn reason(&self) -> &str {
        match self {
            LookupError::NxDomain => "NXDomain",
            LookupError::NoData => "NoData",
            LookupError::InvalidName => "Invalid name",
            LookupError::Unanswered(reason) => reason,
        }
    }
}

/// An MX record: its preference and exchange (without the trailing dot; empty for the
/// root, a null MX).
pub type Mx = (u16, String);

/// The lookups routing needs. In the daemon they go to hickory ([`Hickory`]); a test
/// can answer them from a table, so that the routing rules run without a DNS server.
pub trait Resolve: Send + Sync {
    /// The MX records of `name` (an absolute name without the trailing dot), in the
    /// order of the answer.
    fn mx(&self, name: &str) -> impl Future<Output = Result<Vec<Mx>, LookupError>> + Send;
    fn ipv4(&self, name: &str) -> impl Future<Output = Result<Vec<IpAddr>, LookupError>> + Send;
    fn ipv6(&self, name: &str) -> impl Future<Output = Result<Vec<IpAddr>, LookupError>> + Send;
}

pub struct Router<R = Hickory> {
    route: Route,
    port: u16,
    resolver: R,
}

impl Router {
    pub fn new(route: Route, resolver: &ResolverSpec, port: u16) -> Result<Router, String> {
        Ok(Router::with_resolver(route, Hickory::new(resolver)?, port))
    }
}

impl<R: Resolve> Router<R> {
    pub fn with_resolver(route: Route, resolver: R, port: u16) -> Router<R> {
        Router {
            route,
            port,
            resolver,
        }
    }

    /// The addresses to try for `domain`, best first.
    pub async fn targets(&self, domain: &str) -> Result<Vec<Target>, DeliveryError> {
        let domain = domain.trim_end_matches('.');
        let mut found = Found::default();
        match &self.route {
            Route::Static(hosts) => {
                for host in hosts {
                    let port = host.port.unwrap_or(self.port);
                    let name = unbracket(&host.host);
                    let addresses = match name.parse::<IpAddr>() {
                        Ok(ip) => Ok(vec![ip]),
                        Err(_) => self.addresses(name).await,
                    };
                    found.add(addresses, port, name, name);
                }
                found.finish("the static route")
            }
            Route::Dns => {
                for host in self.mail_hosts(domain).await? {
                    let addresses = self.addresses(&host).await;
                    found.add(addresses, self.port, &host, domain);
                }
                found.finish(domain)
            }
        }
    }

    /// The mail hosts of `domain` (names without the trailing dot), best first.
    async fn mail_hosts(&self, domain: &str) -> Result<Vec<String>, DeliveryError> {
        let mut mx = match self.resolver.mx(domain).await {
            Ok(mx) => mx,
            // NODATA: no MX, the domain itself is the mail host (implicit MX).
            Err(LookupError::NoData) => return Ok(vec![domain.to_string()]),
            Err(e) => return Err(failure(domain, "MX", &e)),
        };
        // RFC 7505: a null MX says the domain accepts no mail.
        if mx.iter().any(|(_, exchange)| exchange.is_empty()) {
            return Err(permanent(domain, "MX", "Null MX"));
        }
        if mx.is_empty() {
            // An answer without MX records (a CNAME alone, say) is NODATA too.
            return Ok(vec![domain.to_string()]);
        }
        mx.sort_by_key(|(preference, _)| *preference); // stable: ties keep answer order
        let mut hosts: Vec<String> = Vec::with_capacity(mx.len());
        for (_, exchange) in mx {
            let host = exchange.to_ascii_lowercase();
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        Ok(hosts)
    }

    /// A and AAAA of `host` (A first). One family failing is fine if the other answers;
    /// if neither does, the error is temporary if either lookup failed temporarily.
    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DeliveryError> {
        let (v4, v6) = tokio::join!(self.resolver.ipv4(host), self.resolver.ipv6(host));
        match (v4, v6) {
            (Ok(mut a), Ok(aaaa)) if !a.is_empty() || !aaaa.is_empty() => {
                a.extend(aaaa);
                Ok(a)
            }
            (Ok(a), Err(_)) if !a.is_empty() => Ok(a),
            (Err(_), Ok(aaaa)) if !aaaa.is_empty() => Ok(aaaa),
            (v4, v6) => {
                let failure = |result: Result<Vec<IpAddr>, LookupError>, qtype| match result {
                    Ok(_) => permanent(host, qtype, "NoData"),
                    Err(e) => failure(host, qtype, &e),
                };
                let (a, aaaa) = (failure(v4, "A"), failure(v6, "AAAA"));
                if is_temporary(&aaaa) && !is_temporary(&a) {
                    Err(aaaa)
                } else {
                    Err(a)
                }
            }
        }
    }
}

/// The daemon's resolver: the system's, or one configured name server.
pub struct Hickory {
    resolver: TokioResolver,
}

impl Hickory {
    fn new(spec: &ResolverSpec) -> Result<Hickory, String> {
        let resolver = match spec {
            ResolverSpec::System => {
                let mut builder = TokioResolver::builder_tokio()
                    .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?;
                builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
                builder
                    .build()
                    .map_err(|e| format!("cannot start the DNS resolver: {e}"))?
            }
            ResolverSpec::Server(server) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = server.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = server.port();
                // `true`: trust NXDOMAIN, do not ask again.
                let ns = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
                let mut builder = TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![ns]),
                    TokioRuntimeProvider::default(),
                );
                server_options(builder.options_mut());
                builder
                    .build()
                    .map_err(|e| format!("cannot start the DNS resolver: {e}"))?
            }
        };
        Ok(Hickory { resolver })
    }
}

impl Resolve for Hickory {
    async fn mx(&self, name: &str) -> Result<Vec<Mx>, LookupError> {
        let lookup = self
            .resolver
            .mx_lookup(fqdn(name)?)
            .await
            .map_err(|e| lookup_error(&e))?;
        Ok(lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(m) => Some((
                    m.preference,
                    m.exchange.to_ascii().trim_end_matches('.').to_string(),
                )),
                _ => None,
            })
            .collect())
    }

    async fn ipv4(&self, name: &str) -> Result<Vec<IpAddr>, LookupError> {
        let lookup = self.resolver.ipv4_lookup(fqdn(name)?).await;
        lookup.map(|l| ips(&l)).map_err(|e| lookup_error(&e))
    }

    async fn ipv6(&self, name: &str) -> Result<Vec<IpAddr>, LookupError> {
        let lookup = self.resolver.ipv6_lookup(fqdn(name)?).await;
        lookup.map(|l| ips(&l)).map_err(|e| lookup_error(&e))
    }
}

/// Options for a configured name server (labs, tests): fail fast, both families, no
/// hosts file.
fn server_options(options: &mut ResolverOpts) {
    options.timeout = DNS_TIMEOUT;
    options.attempts = DNS_RETRIES;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.use_hosts_file = ResolveHosts::Never;
}

/// Targets gathered host by host, and the failures to report if none resolves.
#[derive(Default)]
struct Found {
    targets: Vec<Target>,
    last_permanent: Option<DeliveryError>,
    last_temporary: Option<DeliveryError>,
}

impl Found {
    fn add(
        &mut self,
        addresses: Result<Vec<IpAddr>, DeliveryError>,
        port: u16,
        tls_name: &str,
        nexthop: &str,
    ) {
        match addresses {
            Ok(ips) => {
                for ip in ips {
                    let target = Target {
                        address: SocketAddr::new(ip, port),
                        tls_name: tls_name.to_string(),
                        nexthop: nexthop.to_string(),
                    };
                    if !self.targets.contains(&target) {
                        self.targets.push(target);
                    }
                }
            }
            Err(e) if is_temporary(&e) => self.last_temporary = Some(e),
            Err(e) => self.last_permanent = Some(e),
        }
    }

    fn finish(self, what: &str) -> Result<Vec<Target>, DeliveryError> {
        if !self.targets.is_empty() {
            return Ok(self.targets);
        }
        Err(self
            .last_temporary
            .or(self.last_permanent)
            .unwrap_or_else(|| {
                DeliveryError::new(
                    Stage::Dns,
                    Kind::DnsPermanent(DnsFailure::NoUsableHost {
                        what: what.to_string(),
                    }),
                )
            }))
    }
}

fn ips(lookup: &Lookup) -> Vec<IpAddr> {
    lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect()
}

/// `host` as an absolute name (no search list).
fn fqdn(host: &str) -> Result<Name, LookupError> {
    let mut name =
        Name::from_utf8(host.trim_end_matches('.')).map_err(|_| LookupError::InvalidName)?;
    name.set_fqdn(true);
    Ok(name)
}

/// `[::1]` → `::1`; anything else unchanged.
fn unbracket(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The failure of the `qtype` lookup of `name`: permanent if it is an answer about the
/// name, else temporary.
fn failure(name: &str, qtype: &str, e: &LookupError) -> DeliveryError {
    if e.is_permanent() {
        permanent(name, qtype, e.reason())
    } else {
        DeliveryError::new(
            Stage::Dns,
            Kind::DnsTemporary(DnsFailure::lookup(name, qtype, e.reason())),
        )
    }
}

fn permanent(name: &str, qtype: &str, reason: &str) -> DeliveryError {
    DeliveryError::new(
        Stage::Dns,
        Kind::DnsPermanent(DnsFailure::lookup(name, qtype, reason)),
    )
}

fn is_temporary(e: &DeliveryError) -> bool {
    matches!(e.kind, Kind::DnsTemporary(_))
}

/// What hickory's error says, in routing's terms and the appliance's words.
fn lookup_error(e: &NetError) -> LookupError {
    match e {
        _ if e.is_nx_domain() => LookupError::NxDomain,
        _ if e.is_no_records_found() => LookupError::NoData,
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => {
            LookupError::Unanswered("ServFail".into())
        }
        NetError::Dns(DnsError::ResponseCode(code)) => LookupError::Unanswered(format!("{code:?}")),
        NetError::Timeout => LookupError::Unanswered("Timeout".into()),
        other => LookupError::Unanswered(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HostPort;
    use hickory_resolver::net::NoRecords;
    use hickory_resolver::proto::op::Query;

    fn error(kind: Kind) -> DeliveryError {
        DeliveryError::new(Stage::Dns, kind)
    }

    fn temporary(name: &str, qtype: &str, reason: &str) -> DeliveryError {
        error(Kind::DnsTemporary(DnsFailure::lookup(name, qtype, reason)))
    }

    #[test]
    fn reasons_use_the_appliance_words() {
        let nx = NetError::from(DnsError::NoRecordsFound(NoRecords::new(
            Query::default(),
            ResponseCode::NXDomain,
        )));
        let nodata = NetError::from(DnsError::NoRecordsFound(NoRecords::new(
            Query::default(),
            ResponseCode::NoError,
        )));
        let servfail = NetError::from(DnsError::ResponseCode(ResponseCode::ServFail));
        let refused = NetError::from(DnsError::ResponseCode(ResponseCode::Refused));
        let classify = |name, qtype, e: &NetError| failure(name, qtype, &lookup_error(e));
        assert_eq!(
            classify("esa.example.com", "MX", &nx),
            error(Kind::DnsPermanent(DnsFailure::lookup(
                "esa.example.com",
                "MX",
                "NXDomain"
            )))
        );
        assert_eq!(
            classify("a.test", "A", &nodata),
            error(Kind::DnsPermanent(DnsFailure::lookup(
                "a.test", "A", "NoData"
            )))
        );
        assert_eq!(
            classify("a.test", "MX", &servfail),
            temporary("a.test", "MX", "ServFail")
        );
        assert_eq!(
            classify("a.test", "MX", &refused),
            temporary("a.test", "MX", "Refused")
        );
        assert_eq!(
            classify("a.test", "MX", &NetError::Timeout),
            temporary("a.test", "MX", "Timeout")
        );
        assert_eq!(
            classify("a.test", "MX", &NetError::NoConnections).kind,
            Kind::DnsTemporary(DnsFailure::lookup(
                "a.test",
                "MX",
                "no connections available"
            ))
        );
    }

    #[test]
    fn a_temporary_failure_wins_over_permanent_ones() {
        let mut found = Found::default();
        found.add(
            Err(permanent("mx1.test", "A", "NXDomain")),
            25,
            "mx1.test",
            "x.test",
        );
        found.add(
            Err(temporary("mx2.test", "A", "ServFail")),
            25,
            "mx2.test",
            "x.test",
        );
        found.add(
            Err(permanent("mx3.test", "A", "NoData")),
            25,
            "mx3.test",
            "x.test",
        );
        assert_eq!(
            found.finish("x.test"),
            Err(temporary("mx2.test", "A", "ServFail"))
        );

        let mut found = Found::default();
        found.add(
            Err(permanent("mx1.test", "A", "NXDomain")),
            25,
            "mx1.test",
            "x.test",
        );
        found.add(
            Err(permanent("mx2.test", "A", "NoData")),
            25,
            "mx2.test",
            "x.test",
        );
        assert_eq!(
            found.finish("x.test"),
            Err(permanent("mx2.test", "A", "NoData"))
        );

        assert_eq!(
            Found::default().finish("the static route"),
            Err(error(Kind::DnsPermanent(DnsFailure::NoUsableHost {
                what: "the static route".into()
            })))
        );
    }

    #[test]
    fn names_dns_cannot_carry_are_permanent() {
        let long = "a".repeat(64) + ".test";
        assert_eq!(fqdn(&long), Err(LookupError::InvalidName));
        assert_eq!(
            failure(&long, "MX", &LookupError::InvalidName),
            permanent(&long, "MX", "Invalid name")
        );
        assert_eq!(
            fqdn("intake.test.").map(|n| n.to_ascii()),
            Ok("intake.test.".to_string())
        );
    }

    /// Static IPs never reach DNS: the resolver points at the discard port.
    #[tokio::test]
    async fn static_ips_are_used_as_they_are() {
        let route = Route::Static(vec![
            HostPort {
                host: "192.0.2.1".into(),
                port: None,
            },
            HostPort {
                host: "[2001:db8::1]".into(),
                port: Some(2525),
            },
            HostPort {
                host: "2001:db8::2".into(),
                port: None,
            },
        ]);
        let spec = ResolverSpec::Server(SocketAddr::from(([127, 0, 0, 1], 9)));
        let router = Router::new(route, &spec, 25).expect("router");
        let targets = router.targets("intake.test").await.expect("targets");
        let expected: Vec<(SocketAddr, &str)> = vec![
            ("192.0.2.1:25".parse().expect("addr"), "192.0.2.1"),
            ("[2001:db8::1]:2525".parse().expect("addr"), "2001:db8::1"),
            ("[2001:db8::2]:25".parse().expect("addr"), "2001:db8::2"),
        ];
        let got: Vec<(SocketAddr, &str)> = targets
            .iter()
            .map(|t| (t.address, t.tls_name.as_str()))
            .collect();
        assert_eq!(got, expected);
    }

    /// Answers from a table; a name it does not list does not exist.
    #[derive(Default)]
    struct Table {
        mx: Vec<(&'static str, Result<Vec<Mx>, LookupError>)>,
        a: Vec<(&'static str, Result<Vec<IpAddr>, LookupError>)>,
        aaaa: Vec<(&'static str, Result<Vec<IpAddr>, LookupError>)>,
    }

    fn look<T: Clone>(
        table: &[(&'static str, Result<T, LookupError>)],
        name: &str,
    ) -> Result<T, LookupError> {
        table
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(Err(LookupError::NxDomain), |(_, r)| r.clone())
    }

    impl Resolve for Table {
        async fn mx(&self, name: &str) -> Result<Vec<Mx>, LookupError> {
            look(&self.mx, name)
        }
        async fn ipv4(&self, name: &str) -> Result<Vec<IpAddr>, LookupError> {
            look(&self.a, name)
        }
        async fn ipv6(&self, name: &str) -> Result<Vec<IpAddr>, LookupError> {
            look(&self.aaaa, name)
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn mx(preference: u16, exchange: &str) -> Mx {
        (preference, exchange.to_string())
    }

    async fn route(
        table: Table,
        domain: &str,
    ) -> Result<Vec<(String, String, String)>, DeliveryError> {
        let router = Router::with_resolver(Route::Dns, table, 25);
        let targets = router.targets(domain).await?;
        Ok(targets
            .into_iter()
            .map(|t| (t.address.to_string(), t.tls_name, t.nexthop))
            .collect())
    }

    fn target(address: &str, host: &str, nexthop: &str) -> (String, String, String) {
        (address.into(), host.into(), nexthop.into())
    }

    #[tokio::test]
    async fn mx_hosts_go_by_preference_then_answer_order_ipv4_first() {
        let table = Table {
            mx: vec![(
                "intake.test",
                Ok(vec![
                    mx(20, "mx3.intake.test"),
                    mx(10, "MX2.Intake.Test"),
                    mx(10, "mx1.intake.test"),
                    mx(30, "mx2.intake.test"),
                ]),
            )],
            a: vec![
                ("mx1.intake.test", Ok(vec![ip("192.0.2.1")])),
                ("mx2.intake.test", Ok(vec![ip("192.0.2.2")])),
                ("mx3.intake.test", Err(LookupError::NoData)),
            ],
            aaaa: vec![
                ("mx1.intake.test", Err(LookupError::NoData)),
                ("mx2.intake.test", Ok(vec![ip("2001:db8::2")])),
                ("mx3.intake.test", Ok(vec![ip("2001:db8::3")])),
            ],
        };
        assert_eq!(
            route(table, "intake.test.").await,
            Ok(vec![
                target("192.0.2.2:25", "mx2.intake.test", "intake.test"),
                target("[2001:db8::2]:25", "mx2.intake.test", "intake.test"),
                target("192.0.2.1:25", "mx1.intake.test", "intake.test"),
                target("[2001:db8::3]:25", "mx3.intake.test", "intake.test"),
            ])
        );
    }

    #[tokio::test]
    async fn no_mx_makes_the_domain_its_own_mail_host() {
        for answer in [Err(LookupError::NoData), Ok(Vec::new())] {
            let table = Table {
                mx: vec![("intake.test", answer)],
                a: vec![("intake.test", Ok(vec![ip("192.0.2.9")]))],
                aaaa: vec![("intake.test", Err(LookupError::NoData))],
            };
            assert_eq!(
                route(table, "intake.test").await,
                Ok(vec![target("192.0.2.9:25", "intake.test", "intake.test")])
            );
        }
    }

    #[tokio::test]
    async fn domains_that_take_no_mail_are_permanent_failures() {
        let null_mx = Table {
            mx: vec![("intake.test", Ok(vec![mx(0, ""), mx(10, "mx.intake.test")]))],
            ..Table::default()
        };
        assert_eq!(
            route(null_mx, "intake.test").await,
            Err(permanent("intake.test", "MX", "Null MX"))
        );
        assert_eq!(
            route(Table::default(), "gone.test").await,
            Err(permanent("gone.test", "MX", "NXDomain"))
        );
        let no_address = Table {
            mx: vec![("intake.test", Ok(vec![mx(10, "mx.intake.test")]))],
            a: vec![("mx.intake.test", Ok(Vec::new()))],
            aaaa: vec![("mx.intake.test", Err(LookupError::NoData))],
        };
        assert_eq!(
            route(no_address, "intake.test").await,
            Err(permanent("mx.intake.test", "A", "NoData"))
        );
    }

    #[tokio::test]
    async fn trouble_getting_an_answer_is_temporary() {
        fn servfail<T>() -> Result<T, LookupError> {
            Err(LookupError::Unanswered("ServFail".into()))
        }
        let mx_unanswered = Table {
            mx: vec![("intake.test", servfail())],
            ..Table::default()
        };
        assert_eq!(
            route(mx_unanswered, "intake.test").await,
            Err(temporary("intake.test", "MX", "ServFail"))
        );
        // A has no records, AAAA no answer: a retry may get the AAAA answer.
        let aaaa_unanswered = Table {
            mx: vec![("intake.test", Ok(vec![mx(10, "mx.intake.test")]))],
            a: vec![("mx.intake.test", Err(LookupError::NoData))],
            aaaa: vec![("mx.intake.test", servfail())],
        };
        assert_eq!(
            route(aaaa_unanswered, "intake.test").await,
            Err(temporary("mx.intake.test", "AAAA", "ServFail"))
        );
        // One family unanswered is no failure while the other answers; a host that
        // does not resolve is skipped while another one does.
        let one_family = Table {
            mx: vec![(
                "intake.test",
                Ok(vec![mx(5, "gone.intake.test"), mx(10, "mx.intake.test")]),
            )],
            a: vec![("mx.intake.test", servfail())],
            aaaa: vec![("mx.intake.test", Ok(vec![ip("2001:db8::25")]))],
        };
        assert_eq!(
            route(one_family, "intake.test").await,
            Ok(vec![target(
                "[2001:db8::25]:25",
                "mx.intake.test",
                "intake.test"
            )])
        );
    }

    #[tokio::test]
    async fn static_names_resolve_like_mail_hosts_and_serve_themselves() {
        let route = Route::Static(vec![
            HostPort {
                host: "relay.test".into(),
                port: Some(2525),
            },
            HostPort {
                host: "gone.test".into(),
                port: None,
            },
        ]);
        let table = Table {
            a: vec![("relay.test", Ok(vec![ip("192.0.2.7")]))],
            aaaa: vec![("relay.test", Err(LookupError::NoData))],
            ..Table::default()
        };
        let router = Router::with_resolver(route, table, 25);
        let targets = router.targets("intake.test").await.expect("targets");
        assert_eq!(
            targets,
            vec![Target {
                address: "192.0.2.7:2525".parse().expect("addr"),
                tls_name: "relay.test".into(),
                nexthop: "relay.test".into(),
            }]
        );
    }
}
