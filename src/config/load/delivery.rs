//! The converters of the `delivery` section that are its own: routing, the resolver,
//! the port, TLS, and the connection limits that relate to each other.

use std::path::PathBuf;

use serde_saphyr::Spanned;

use super::convert::at_least_one;
use super::error::{quoted, ConfigError};
use super::raw::{RawDelivery, RawRoute};
use super::Loader;
use crate::config::values::{parse_cert_match, parse_host_port};
use crate::config::{CertMatch, ResolverSpec, Route};

/// `delivery.max_connections`' default, which `min_connections` also needs.
pub(super) const MAX_CONNECTIONS: usize = 20;
/// `delivery.min_connections`' default, unless `max_connections` is less.
const MIN_CONNECTIONS: usize = 3;

/// `delivery.route`: `dns` or a list of hosts.
pub(super) fn route(
    loader: &Loader<'_>,
    key: &str,
    value: &Spanned<RawRoute>,
) -> Result<Route, ConfigError> {
    match &value.value {
        RawRoute::Keyword(word) if word.trim().eq_ignore_ascii_case("dns") => Ok(Route::Dns),
        RawRoute::Keyword(word) => {
            let message = format!(
                "expected dns or a list of hosts, found {}; \
                 write a single host as a list: [\"{}\"]",
                quoted(word),
                word.trim()
            );
            Err(loader.bad(value, key, message))
        }
        RawRoute::Other(what) => Err(loader.bad(
            value,
            key,
            format!("expected dns or a list of hosts, found {what}"),
        )),
        RawRoute::Hosts(hosts) if hosts.is_empty() => Err(loader.bad(
            value,
            key,
            "the list of hosts is empty; write dns to use the intake's MX",
        )),
        RawRoute::Hosts(hosts) => hosts
            .iter()
            .enumerate()
            .map(|(i, host)| {
                parse_host_port(&host.value)
                    .map_err(|e| loader.bad(host, &format!("{key}[{i}]"), e))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Route::Static),
    }
}

/// `delivery.resolver`: `system` or one name server's `IP:PORT`.
pub(super) fn resolver(
    loader: &Loader<'_>,
    key: &str,
    value: &Spanned<String>,
) -> Result<ResolverSpec, ConfigError> {
    let text = value.value.trim();
    if text.eq_ignore_ascii_case("system") {
        return Ok(ResolverSpec::System);
    }
    text.parse().map(ResolverSpec::Server).map_err(|_| {
        loader.bad(
            value,
            key,
            format!(
                "expected system or IP:PORT (like 127.0.0.1:5353 or [::1]:53), found {}",
                quoted(&value.value)
            ),
        )
    })
}

/// A TCP port other than 0.
pub(super) fn port(
    loader: &Loader<'_>,
    key: &str,
    value: &Spanned<u16>,
) -> Result<u16, ConfigError> {
    match value.value {
        0 => Err(loader.bad(value, key, "port 0 is not usable")),
        port => Ok(port),
    }
}

/// `delivery.tls.ca_file`: a file we can read, relative to the file that names it.
pub(super) fn ca_file(
    loader: &Loader<'_>,
    key: &str,
    value: &Spanned<String>,
) -> Result<PathBuf, ConfigError> {
    let written = value.value.trim();
    if written.is_empty() {
        return Err(loader.bad(value, key, "the path is empty; write null for none"));
    }
    let resolved = loader.relative_to_file(written, key);
    let readable = std::fs::metadata(&resolved).and_then(|meta| {
        if meta.is_dir() {
            Err(std::io::Error::other("is a directory"))
        } else {
            std::fs::File::open(&resolved).map(drop)
        }
    });
    match readable {
        Ok(()) => Ok(resolved),
        Err(e) => Err(loader.bad(
            value,
            key,
            format!(
                "cannot read {}: {e}",
                quoted(&resolved.display().to_string())
            ),
        )),
    }
}

/// `delivery.tls.match`: a list that is not empty.
pub(super) fn cert_match(
    loader: &Loader<'_>,
    key: &str,
    list: &Spanned<Vec<Spanned<String>>>,
) -> Result<Vec<CertMatch>, ConfigError> {
    if list.value.is_empty() {
        return Err(loader.bad(
            list,
            key,
            "the list is empty, so no certificate could ever be accepted; leave it out for the default",
        ));
    }
    list.value
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            parse_cert_match(&entry.value).map_err(|e| loader.bad(entry, &format!("{key}[{i}]"), e))
        })
        .collect()
}

/// `delivery.min_connections`: at most `max_connections`, whose own mistakes are
/// reported first; its default gives way to a smaller `max_connections`.
pub(super) fn min_connections(
    loader: &Loader<'_>,
    key: &str,
    raw: &RawDelivery,
) -> Result<usize, ConfigError> {
    let max = match &raw.max_connections {
        Some(max) => at_least_one(loader, "delivery.max_connections", max)?,
        None => MAX_CONNECTIONS,
    };
    let Some(written) = &raw.min_connections else {
        return Ok(MIN_CONNECTIONS.min(max));
    };
    let min = at_least_one(loader, key, written)?;
    if min > max {
        return Err(loader.bad(
            written,
            key,
            format!("{min} is more than delivery.max_connections ({max})"),
        ));
    }
    Ok(min)
}
