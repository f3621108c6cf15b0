//! Where to connect for an intake address: the static route, or DNS (MX in preference
//! order, then A/AAAA; implicit MX when there is none), SPEC §5.2.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

use super::error::{DeliveryError, Kind, Stage};
use crate::config::{ResolverSpec, Route};

/// One address to try, and the name its certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub address: SocketAddr,
    pub tls_name: String,
}

pub struct Router {
    route: Route,
    port: u16,
    resolver: TokioResolver,
}

impl Router {
    pub fn new(route: Route, resolver: &ResolverSpec, port: u16) -> Result<Router, String> {
        let resolver = match resolver {
            ResolverSpec::System => TokioResolver::builder_tokio()
                .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?
                .build()
                .map_err(|e| format!("cannot start the DNS resolver: {e}"))?,
            ResolverSpec::Server(server) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = server.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = server.port();
                let ns = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
                let mut builder = TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![ns]),
                    TokioRuntimeProvider::default(),
                );
                builder.options_mut().timeout = Duration::from_secs(2);
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
        match &self.route {
            Route::Static(hosts) => {
                let mut targets = Vec::new();
                let mut last_error = None;
                for host in hosts {
                    let port = host.port.unwrap_or(self.port);
                    match self.addresses(&host.host).await {
                        Ok(ips) => targets.extend(ips.into_iter().map(|ip| Target {
                            address: SocketAddr::new(ip, port),
                            tls_name: host.host.clone(),
                        })),
                        Err(e) => last_error = Some(e),
                    }
                }
                match (targets.is_empty(), last_error) {
                    (true, Some(e)) => Err(e),
                    _ => Ok(targets),
                }
            }
            Route::Dns => self.mx_targets(domain).await,
        }
    }

    async fn mx_targets(&self, domain: &str) -> Result<Vec<Target>, DeliveryError> {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let hosts: Vec<String> = match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let mut mx: Vec<(u16, bool, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(m) => {
                            Some((m.preference, m.exchange.is_root(), m.exchange.to_ascii()))
                        }
                        _ => None,
                    })
                    .collect();
                mx.sort_by_key(|(preference, _, _)| *preference);
                // RFC 7505: a null MX says the domain accepts no mail.
                if mx.iter().any(|(_, null, _)| *null) {
                    return Err(DeliveryError::new(
                        Stage::Dns,
                        Kind::DnsPermanent(format!("{domain} has a null MX")),
                    ));
                }
                mx.into_iter().map(|(_, _, host)| host).collect()
            }
            Err(e) if e.is_nx_domain() => {
                return Err(DeliveryError::new(
                    Stage::Dns,
                    Kind::DnsPermanent(format!("{domain} MX - NXDomain")),
                ))
            }
            // No MX records: the domain itself is the implicit MX (RFC 5321 §5.1).
            Err(e) if e.is_no_records_found() => vec![fqdn.clone()],
            Err(e) => return Err(temporary(domain, "MX", &e)),
        };
        let mut targets = Vec::new();
        let mut last_error = None;
        for host in hosts {
            match self.addresses(&host).await {
                Ok(ips) => targets.extend(ips.into_iter().map(|ip| Target {
                    address: SocketAddr::new(ip, self.port),
                    tls_name: host.trim_end_matches('.').to_string(),
                })),
                Err(e) => last_error = Some(e),
            }
        }
        match (targets.is_empty(), last_error) {
            (true, Some(e)) => Err(e),
            (true, None) => Err(DeliveryError::new(
                Stage::Dns,
                Kind::DnsPermanent(format!("{domain} has no usable mail host")),
            )),
            _ => Ok(targets),
        }
    }

    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DeliveryError> {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let fqdn = format!("{}.", bare.trim_end_matches('.'));
        match self.resolver.lookup_ip(fqdn.as_str()).await {
            Ok(ips) => Ok(ips.iter().collect()),
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Err(DeliveryError::new(
                Stage::Dns,
                Kind::DnsPermanent(format!("{bare} A - {}", short(&e))),
            )),
            Err(e) => Err(temporary(bare, "A", &e)),
        }
    }
}

fn temporary(name: &str, qtype: &str, e: &NetError) -> DeliveryError {
    DeliveryError::new(
        Stage::Dns,
        Kind::DnsTemporary(format!("{name} {qtype} - {}", short(e))),
    )
}

/// The appliance's short DNS error words.
fn short(e: &NetError) -> String {
    match e {
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => "ServFail".into(),
        NetError::Dns(DnsError::ResponseCode(code)) => format!("{code:?}"),
        _ if e.is_nx_domain() => "NXDomain".into(),
        _ if e.is_no_records_found() => "NoData".into(),
        NetError::Timeout => "Timeout".into(),
        other => other.to_string(),
    }
}
