//! Converters: from a key's value as written to its typed value, or to an error that
//! names the file, line and column of the value. Each is a function
//! `(loader, key, &written) -> Result<typed, ConfigError>`; the table in `raw.rs` names
//! one per key. The combinators (`parsed`, `some`, `each`, `not_empty`) make such
//! functions from the plain parsers of `values.rs`, which return a message.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::error::{quoted, ConfigError};
use super::raw::RawVerdict;
use super::Loader;
use crate::config::units::{parse_duration, parse_size};
use crate::config::values::{check_header_name, normalise_address};
use crate::config::HeaderVerdict;

/// A value taken as serde read it (`true`, `false`, and their YAML 1.1 spellings).
pub(super) fn copied<T: Copy>(_: &Loader<'_>, _: &str, value: &T) -> Result<T, ConfigError> {
    Ok(*value)
}

/// Converts with `parse`, whose message follows the key in the error.
pub(super) fn parsed<T>(
    parse: fn(&str) -> Result<T, String>,
) -> impl Fn(&Loader<'_>, &str, &Spanned<String>) -> Result<T, ConfigError> {
    move |loader, key, value| parse(&value.value).map_err(|e| loader.bad(value, key, e))
}

/// A key whose typed value is an `Option` (its default `None`): `Some` of `convert`.
pub(super) fn some<R, T>(
    convert: impl Fn(&Loader<'_>, &str, &R) -> Result<T, ConfigError>,
) -> impl Fn(&Loader<'_>, &str, &R) -> Result<Option<T>, ConfigError> {
    move |loader, key, value| convert(loader, key, value).map(Some)
}

/// A list: each item with `convert`, named `key[i]` in errors.
pub(super) fn each<R, T>(
    convert: impl Fn(&Loader<'_>, &str, &R) -> Result<T, ConfigError>,
) -> impl Fn(&Loader<'_>, &str, &[R]) -> Result<Vec<T>, ConfigError> {
    move |loader, key, list| {
        list.iter()
            .enumerate()
            .map(|(i, item)| convert(loader, &format!("{key}[{i}]"), item))
            .collect()
    }
}

/// The text without surrounding white space; refused with `message` when nothing is left.
pub(super) fn not_empty(
    message: &'static str,
) -> impl Fn(&Loader<'_>, &str, &Spanned<String>) -> Result<String, ConfigError> {
    move |loader, key, value| match value.value.trim() {
        "" => Err(loader.bad(value, key, message)),
        text => Ok(text.to_string()),
    }
}

/// A path, taken relative to the directory of the file that set it.
pub(super) fn path(
    loader: &Loader<'_>,
    key: &str,
    value: &Spanned<String>,
) -> Result<PathBuf, ConfigError> {
    match value.value.trim() {
        "" => Err(loader.bad(value, key, "the path is empty")),
        written => Ok(loader.relative_to_file(written, key)),
    }
}

/// A count: 1 or more.
pub(super) fn at_least_one(
    loader: &Loader<'_>,
    key: &str,
    value: &Spanned<usize>,
) -> Result<usize, ConfigError> {
    match value.value {
        0 => Err(loader.bad(value, key, "must be at least 1")),
        n => Ok(n),
    }
}

/// A duration with its unit (`120s`), longer than 0.
pub(super) fn duration(
    loader: &Loader<'_>,
    key: &str,
    value: &Spanned<String>,
) -> Result<Duration, ConfigError> {
    match parse_duration(&value.value) {
        Ok(d) if d.is_zero() => Err(loader.bad(value, key, "must be longer than 0")),
        Ok(d) => Ok(d),
        Err(e) => Err(loader.bad(value, key, e)),
    }
}

/// A size with its unit (`50MiB`) in bytes, more than 0.
pub(super) fn size(
    loader: &Loader<'_>,
    key: &str,
    value: &Spanned<String>,
) -> Result<u64, ConfigError> {
    match parse_size(&value.value) {
        Ok(0) => Err(loader.bad(value, key, "must be more than 0 bytes")),
        Ok(n) => Ok(n),
        Err(e) => Err(loader.bad(value, key, e)),
    }
}

/// A share written as a percentage (`50%`), as a fraction from 0 to 1.
pub(super) fn percentage(
    loader: &Loader<'_>,
    key: &str,
    value: &Spanned<String>,
) -> Result<f64, ConfigError> {
    let share = value
        .value
        .trim()
        .strip_suffix('%')
        .and_then(|p| p.trim().parse::<f64>().ok())
        .filter(|p| (0.0..=100.0).contains(p))
        .ok_or_else(|| {
            loader.bad(
                value,
                key,
                "expected a percentage from 0% to 100%, like 50%",
            )
        })?;
    Ok(share / 100.0)
}

/// A header field name, without surrounding white space.
pub(super) fn header_name(
    loader: &Loader<'_>,
    key: &str,
    value: &Spanned<String>,
) -> Result<String, ConfigError> {
    let name = value.value.trim();
    check_header_name(name).map_err(|e| loader.bad(value, key, e))?;
    Ok(name.to_string())
}

/// One entry of `journal.not_clean`: a header name and a value that is not empty.
pub(super) fn verdict(
    loader: &Loader<'_>,
    key: &str,
    verdict: &RawVerdict,
) -> Result<HeaderVerdict, ConfigError> {
    let header = header_name(loader, &format!("{key}.header"), &verdict.header)?;
    let value = verdict.value.value.trim();
    if value.is_empty() {
        return Err(loader.bad(
            &verdict.value,
            &format!("{key}.value"),
            format!("the value for header {header} is empty"),
        ));
    }
    Ok(HeaderVerdict {
        header,
        value: value.to_string(),
    })
}

/// `journal.sender`'s default: `tdc@` and this machine's host name, so that bounces of
/// journals reach someone.
pub(super) fn default_sender(loader: &Loader<'_>, key: &str) -> Result<String, ConfigError> {
    let host = gethostname::gethostname();
    let host = host.to_string_lossy();
    normalise_address(&format!("tdc@{host}")).map_err(|e| {
        let message = format!(
            "{key} is not set and the host name {} does not make an address \
             ({e}); set {key}",
            quoted(&host)
        );
        loader.err(None, message)
    })
}

/// `metrics.listen`: `off` (unquoted or not), or the address to serve on.
pub(super) fn metrics_listen(
    loader: &Loader<'_>,
    key: &str,
    value: &Spanned<String>,
) -> Result<Option<SocketAddr>, ConfigError> {
    match value.value.trim() {
        "off" => Ok(None),
        text => text.parse().map(Some).map_err(|_| {
            loader.bad(
                value,
                key,
                format!(
                    "expected off or IP:PORT (like 127.0.0.1:9466), found {}",
                    quoted(&value.value)
                ),
            )
        }),
    }
}
