//! The `delivery` section: routing, the resolver, TLS and the queue's connection
//! limits.

use std::time::Duration;

use super::error::{quoted, ConfigError};
use super::raw::{RawDelivery, RawRoute, RawTls};
use super::Loader;
use crate::config::values::{parse_cert_match, parse_host_port};
use crate::config::{CertMatch, DeliverySettings, ResolverSpec, Route, TlsSettings};

const DEFAULT_PORT: u16 = 25;
const DEFAULT_LIFETIME_SECS: u64 = 120;
const DEFAULT_MAX_CONNECTIONS: usize = 20;
const DEFAULT_MIN_CONNECTIONS: usize = 3;
const DEFAULT_MAX_MESSAGES_PER_CONNECTION: usize = 10;
const DEFAULT_RETRY_DELAY_SECS: u64 = 5;
const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;

impl Loader<'_> {
    pub(super) fn delivery(&self, raw: RawDelivery) -> Result<DeliverySettings, ConfigError> {
        let route = match &raw.route {
            None => Route::Dns,
            Some(spanned) => match &spanned.value {
                RawRoute::Keyword(word) if word.trim().eq_ignore_ascii_case("dns") => Route::Dns,
                RawRoute::Keyword(word) => {
                    let message = format!(
                        "expected dns or a list of hosts, found {}; \
                         write a single host as a list: [\"{}\"]",
                        quoted(word),
                        word.trim()
                    );
                    return Err(self.bad(spanned, "delivery.route", message));
                }
                RawRoute::Other(what) => {
                    return Err(self.bad(
                        spanned,
                        "delivery.route",
                        format!("expected dns or a list of hosts, found {what}"),
                    ))
                }
                RawRoute::Hosts(hosts) if hosts.is_empty() => {
                    return Err(self.bad(
                        spanned,
                        "delivery.route",
                        "the list of hosts is empty; write dns to use the intake's MX",
                    ))
                }
                RawRoute::Hosts(hosts) => {
                    let mut parsed = Vec::with_capacity(hosts.len());
                    for (i, host) in hosts.iter().enumerate() {
                        parsed.push(
                            parse_host_port(&host.value)
                                .map_err(|e| self.bad(host, &format!("delivery.route[{i}]"), e))?,
                        );
                    }
                    Route::Static(parsed)
                }
            },
        };
        let resolver = match &raw.resolver {
            None => ResolverSpec::System,
            Some(r) if r.value.trim().eq_ignore_ascii_case("system") => ResolverSpec::System,
            Some(r) => ResolverSpec::Server(r.value.trim().parse().map_err(|_| {
                self.bad(
                    r,
                    "delivery.resolver",
                    format!(
                        "expected system or IP:PORT (like 127.0.0.1:5353 or [::1]:53), found {}",
                        quoted(&r.value)
                    ),
                )
            })?),
        };
        let port = match &raw.port {
            Some(p) if p.value == 0 => {
                return Err(self.bad(p, "delivery.port", "port 0 is not usable"))
            }
            Some(p) => p.value,
            None => DEFAULT_PORT,
        };
        let tls = self.tls(raw.tls.unwrap_or_default())?;
        let lifetime = self.duration(
            &raw.lifetime,
            "delivery.lifetime",
            Duration::from_secs(DEFAULT_LIFETIME_SECS),
        )?;
        let retry_delay = self.duration(
            &raw.retry_delay,
            "delivery.retry_delay",
            Duration::from_secs(DEFAULT_RETRY_DELAY_SECS),
        )?;
        let shutdown_grace = self.duration(
            &raw.shutdown_grace,
            "delivery.shutdown_grace",
            Duration::from_secs(DEFAULT_SHUTDOWN_GRACE_SECS),
        )?;
        let max_connections = self.at_least_one(
            &raw.max_connections,
            "delivery.max_connections",
            DEFAULT_MAX_CONNECTIONS,
        )?;
        let min_connections = self.at_least_one(
            &raw.min_connections,
            "delivery.min_connections",
            DEFAULT_MIN_CONNECTIONS.min(max_connections),
        )?;
        if let Some(m) = &raw.min_connections {
            if m.value > max_connections {
                return Err(self.bad(
                    m,
                    "delivery.min_connections",
                    format!(
                        "{} is more than delivery.max_connections ({max_connections})",
                        m.value
                    ),
                ));
            }
        }
        let max_messages_per_connection = self.at_least_one(
            &raw.max_messages_per_connection,
            "delivery.max_messages_per_connection",
            DEFAULT_MAX_MESSAGES_PER_CONNECTION,
        )?;
        Ok(DeliverySettings {
            route,
            resolver,
            port,
            tls,
            lifetime,
            retry_delay,
            shutdown_grace,
            min_connections,
            max_connections,
            max_messages_per_connection,
        })
    }

    fn tls(&self, raw: RawTls) -> Result<TlsSettings, ConfigError> {
        let ca_file = match &raw.ca_file {
            None => None,
            Some(file) => {
                let written = file.value.trim();
                if written.is_empty() {
                    return Err(self.bad(
                        file,
                        "delivery.tls.ca_file",
                        "the path is empty; write null for none",
                    ));
                }
                let resolved = self.relative_to_file(written, "delivery.tls.ca_file");
                let readable = std::fs::metadata(&resolved).and_then(|meta| {
                    if meta.is_dir() {
                        Err(std::io::Error::other("is a directory"))
                    } else {
                        std::fs::File::open(&resolved).map(drop)
                    }
                });
                if let Err(e) = readable {
                    return Err(self.bad(
                        file,
                        "delivery.tls.ca_file",
                        format!(
                            "cannot read {}: {e}",
                            quoted(&resolved.display().to_string())
                        ),
                    ));
                }
                Some(resolved)
            }
        };
        let cert_match = match &raw.cert_match {
            None => CertMatch::defaults(),
            Some(list) if list.value.is_empty() => {
                return Err(self.bad(
                    list,
                    "delivery.tls.match",
                    "the list is empty, so no certificate could ever be accepted; leave it out for the default",
                ))
            }
            Some(list) => list
                .value
                .iter()
                .enumerate()
                .map(|(i, entry)| {
                    parse_cert_match(&entry.value)
                        .map_err(|e| self.bad(entry, &format!("delivery.tls.match[{i}]"), e))
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        Ok(TlsSettings {
            verify: raw.verify.unwrap_or(true),
            ca_file,
            cert_match,
        })
    }
}
