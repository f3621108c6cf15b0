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

pub struct Router {
    route: Route,
    port: u16,
    resolver: TokioResolver,
}

impl Router {
    pub fn new(route: Route, resolver: &ResolverSpec, port: u16) -> Result<Router, String> {
        let resolver = match resolver {
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
        Ok(Router {
            route,
            port,
            resolver,
        })
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
        let name = fqdn(domain, "MX")?;
        let lookup = match self.resolver.mx_lookup(name).await {
            Ok(lookup) => lookup,
            // NODATA: no MX, the domain itself is the mail host (implicit MX).
            Err(e) if e.is_no_records_found() && !e.is_nx_domain() => {
                return Ok(vec![domain.to_string()])
            }
            Err(e) => return Err(classify(domain, "MX", &e)),
        };
        let mut mx: Vec<(u16, &Name)> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(m) => Some((m.preference, &m.exchange)),
                _ => None,
            })
            .collect();
        // RFC 7505: a null MX says the domain accepts no mail.
        if mx.iter().any(|(_, exchange)| exchange.is_root()) {
            return Err(permanent(domain, "MX", "Null MX"));
        }
        if mx.is_empty() {
            // An answer without MX records (a CNAME alone, say) is NODATA too.
            return Ok(vec![domain.to_string()]);
        }
        mx.sort_by_key(|(preference, _)| *preference); // stable: ties keep answer order
        let mut hosts: Vec<String> = Vec::with_capacity(mx.len());
        for (_, exchange) in mx {
            let host = exchange
                .to_ascii()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        Ok(hosts)
    }

    /// A and AAAA of `host` (A first). One family failing is fine if the other answers;
    /// if neither does, the error is temporary if either lookup failed temporarily.
    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DeliveryError> {
        let name = fqdn(host, "A")?;
        let (v4, v6) = tokio::join!(
            self.resolver.ipv4_lookup(name.clone()),
            self.resolver.ipv6_lookup(name)
        );
        let v4 = v4.map(|lookup| ips(&lookup));
        let v6 = v6.map(|lookup| ips(&lookup));
        match (v4, v6) {
            (Ok(mut a), Ok(aaaa)) if !a.is_empty() || !aaaa.is_empty() => {
                a.extend(aaaa);
                Ok(a)
            }
            (Ok(a), Err(_)) if !a.is_empty() => Ok(a),
            (Err(_), Ok(aaaa)) if !aaaa.is_empty() => Ok(aaaa),
            (v4, v6) => {
                let failure = |result: Result<Vec<IpAddr>, NetError>, qtype| match result {
                    Ok(_) => permanent(host, qtype, "NoData"),
                    Err(e) => classify(host, qtype, &e),
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

/// `host` as an absolute name (no search list). A name DNS cannot carry is permanent.
fn fqdn(host: &str, qtype: &str) -> Result<Name, DeliveryError> {
    let mut name = Name::from_utf8(host.trim_end_matches('.'))
        .map_err(|_| permanent(host, qtype, "Invalid name"))?;
    name.set_fqdn(true);
    Ok(name)
}

/// `[::1]` → `::1`; anything else unchanged.
fn unbracket(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// NXDOMAIN and NODATA are answers about the name: permanent. Anything else is trouble
/// getting an answer: temporary.
fn classify(name: &str, qtype: &str, e: &NetError) -> DeliveryError {
    let reason = reason(e);
    if e.is_no_records_found() {
        permanent(name, qtype, &reason)
    } else {
        DeliveryError::new(
            Stage::Dns,
            Kind::DnsTemporary(DnsFailure::lookup(name, qtype, reason)),
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

/// The appliance's short DNS error words.
fn reason(e: &NetError) -> String {
    match e {
        _ if e.is_nx_domain() => "NXDomain".into(),
        _ if e.is_no_records_found() => "NoData".into(),
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => "ServFail".into(),
        NetError::Dns(DnsError::ResponseCode(code)) => format!("{code:?}"),
        NetError::Timeout => "Timeout".into(),
        other => other.to_string(),
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
            error(Kind::DnsTemporary(DnsFailure::lookup(
                "a.test", "MX", "ServFail"
            )))
        );
        assert_eq!(
            classify("a.test", "MX", &refused),
            error(Kind::DnsTemporary(DnsFailure::lookup(
                "a.test", "MX", "Refused"
            )))
        );
        assert_eq!(
            classify("a.test", "MX", &NetError::Timeout),
            error(Kind::DnsTemporary(DnsFailure::lookup(
                "a.test", "MX", "Timeout"
            )))
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
            Err(error(Kind::DnsTemporary(DnsFailure::lookup(
                "mx2.test", "A", "ServFail",
            )))),
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
            Err(error(Kind::DnsTemporary(DnsFailure::lookup(
                "mx2.test", "A", "ServFail"
            ))))
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
        assert_eq!(
            fqdn(&long, "MX"),
            Err(permanent(&long, "MX", "Invalid name"))
        );
        assert_eq!(
            fqdn("intake.test.", "MX").map(|n| n.to_ascii()),
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
}
