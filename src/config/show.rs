//! `show-config`: the effective settings, one key per line, each with the level it
//! came from (cluster, group, machine, or default). Which keys, in which order, and
//! with which of the renderers below comes from the table in `load/raw.rs`.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Connector, HeaderVerdict, Pattern, Policy, ResolverSpec, Route, Settings};

pub fn duration(d: Duration) -> String {
    if d.subsec_millis() != 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

// ---------------------------------------------------------------------------------
// Renderers: the typed value of one key → its text.

pub(super) fn display<T: Display>(value: &T) -> String {
    value.to_string()
}

/// [`duration`], for the table.
pub(super) fn period(d: &Duration) -> String {
    duration(*d)
}

pub(super) fn or_null<T: Display>(value: &Option<T>) -> String {
    value.as_ref().map_or("null".into(), T::to_string)
}

pub(super) fn path(p: &Path) -> String {
    p.display().to_string()
}

pub(super) fn path_or_null(p: &Option<PathBuf>) -> String {
    p.as_ref().map_or("null".into(), |p| path(p))
}

pub(super) fn address_or_off(a: &Option<SocketAddr>) -> String {
    a.map_or("off".into(), |a| a.to_string())
}

pub(super) fn octal(mode: &u32) -> String {
    format!("{mode:04o}")
}

pub(super) fn bytes(n: &u64) -> String {
    format!("{n}B")
}

/// A share from 0 to 1, as the percentage it was written as.
pub(super) fn percent(share: &f64) -> String {
    format!("{}%", share * 100.0)
}

/// `["a", "b"]`.
pub(super) fn list<T: Display>(items: &[T]) -> String {
    quoted_list(items.iter().map(T::to_string))
}

pub(super) fn verdicts(verdicts: &[HeaderVerdict]) -> String {
    let items: Vec<String> = verdicts
        .iter()
        .map(|v| format!("{{ header: {}, value: \"{}\" }}", v.header, v.value))
        .collect();
    format!("[{}]", items.join(", "))
}

pub(super) fn route(route: &Route) -> String {
    match route {
        Route::Dns => "dns".into(),
        Route::Static(hosts) => quoted_list(hosts.iter().map(|h| match h.port {
            Some(p) if h.host.contains(':') => format!("[{}]:{p}", h.host),
            Some(p) => format!("{}:{p}", h.host),
            None => h.host.clone(),
        })),
    }
}

pub(super) fn resolver(resolver: &ResolverSpec) -> String {
    match resolver {
        ResolverSpec::System => "system".into(),
        ResolverSpec::Server(a) => a.to_string(),
    }
}

/// One row per policy.
pub(super) fn policies(policies: &[Policy]) -> Vec<String> {
    policies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let connector = match &p.connector {
                Connector::UseDefault => "use-default".to_string(),
                Connector::Global => "global".to_string(),
                Connector::Off => "off".to_string(),
                Connector::Custom(a) => format!("{{ custom: {a} }}"),
            };
            format!(
                "[{i}] {}: recipients {} senders {} connector {connector}",
                p.name,
                quoted_list(p.recipients.iter().map(pattern)),
                quoted_list(p.senders.iter().map(pattern)),
            )
        })
        .collect()
}

fn pattern(p: &Pattern) -> String {
    match p {
        Pattern::Address { local, domain } => format!("{local}@{domain}"),
        Pattern::Domain(d) => d.clone(),
        Pattern::SubDomain(d) => format!(".{d}"),
        Pattern::LocalPart(l) => format!("{l}@"),
    }
}

fn quoted_list(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| format!("\"{i}\"")).collect();
    format!("[{}]", items.join(", "))
}

// ---------------------------------------------------------------------------------
// The listing.

/// (key, value) for every setting, in the order of the annotated example file.
pub fn values(s: &Settings) -> Vec<(String, String)> {
    super::load::rows(s)
}

/// The level a key's value came from.
pub fn level_of(s: &Settings, key: &str) -> &'static str {
    s.origins.get(key).map_or("default", |l| l.name())
}

/// The whole listing.
pub fn render(s: &Settings) -> String {
    let mut out = format!("# effective settings of {}", s.path.display());
    for f in &s.level_files {
        out.push_str(&format!(", {}", f.display()));
    }
    out.push('\n');
    for (key, value) in values(s) {
        out.push_str(&format!("{key} = {value}    # {}\n", level_of(s, &key)));
    }
    out
}
