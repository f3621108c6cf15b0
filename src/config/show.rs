//! `show-config`: the effective settings, one key per line, each with the level it
//! came from (cluster, group, machine, or default).

use super::{Connector, Pattern, Route, Settings, SocketSpec};

pub fn duration(d: std::time::Duration) -> String {
    if d.subsec_millis() != 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

fn socket(s: &SocketSpec) -> String {
    match s {
        SocketSpec::Inet { host, port } if host.contains(':') => format!("inet:[{host}]:{port}"),
        SocketSpec::Inet { host, port } => format!("inet:{host}:{port}"),
        SocketSpec::Unix(p) => format!("unix:{}", p.display()),
    }
}

fn pattern(p: &Pattern) -> String {
    match p {
        Pattern::Address { local, domain } => format!("{local}@{domain}"),
        Pattern::Domain(d) => d.clone(),
        Pattern::SubDomain(d) => format!(".{d}"),
        Pattern::LocalPart(l) => format!("{l}@"),
    }
}

fn list(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| format!("\"{i}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// (key, value) for every setting, in the order of the annotated example file.
pub fn values(s: &Settings) -> Vec<(String, String)> {
    let d = &s.delivery;
    let mut out: Vec<(&str, String)> = vec![
        ("enabled", s.enabled.to_string()),
        (
            "intake_address",
            s.intake_address.clone().unwrap_or_else(|| "null".into()),
        ),
        ("milter.listen", socket(&s.milter.listen)),
        (
            "milter.max_connections",
            s.milter.max_connections.to_string(),
        ),
        ("milter.idle_timeout", duration(s.milter.idle_timeout)),
        (
            "milter.socket_mode",
            format!("{:04o}", s.milter.socket_mode),
        ),
        (
            "milter.socket_group",
            s.milter
                .socket_group
                .clone()
                .unwrap_or_else(|| "null".into()),
        ),
        (
            "incoming.daemon_names",
            list(s.incoming.daemon_names.clone()),
        ),
        (
            "incoming.internal_networks",
            list(s.incoming.internal_networks.iter().map(|n| n.to_string())),
        ),
        ("journal.sender", s.journal.sender.clone()),
        (
            "journal.client_ip_header",
            s.journal.client_ip_header.clone(),
        ),
        ("journal.max_size", format!("{}B", s.journal.max_size)),
        (
            "journal.not_clean",
            format!(
                "[{}]",
                s.journal
                    .not_clean
                    .iter()
                    .map(|v| format!("{{ header: {}, value: \"{}\" }}", v.header, v.value))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        (
            "delivery.route",
            match &d.route {
                Route::Dns => "dns".into(),
                Route::Static(hosts) => list(hosts.iter().map(|h| match h.port {
                    Some(p) if h.host.contains(':') => format!("[{}]:{p}", h.host),
                    Some(p) => format!("{}:{p}", h.host),
                    None => h.host.clone(),
                })),
            },
        ),
        (
            "delivery.resolver",
            match &d.resolver {
                super::ResolverSpec::System => "system".into(),
                super::ResolverSpec::Server(a) => a.to_string(),
            },
        ),
        ("delivery.port", d.port.to_string()),
        ("delivery.tls.verify", d.tls.verify.to_string()),
        (
            "delivery.tls.ca_file",
            d.tls
                .ca_file
                .as_ref()
                .map_or("null".into(), |p| p.display().to_string()),
        ),
        (
            "delivery.tls.match",
            list(d.tls.cert_match.iter().map(|m| m.to_string())),
        ),
        ("delivery.lifetime", duration(d.lifetime)),
        ("delivery.retry_delay", duration(d.retry_delay)),
        ("delivery.shutdown_grace", duration(d.shutdown_grace)),
        ("delivery.min_connections", d.min_connections.to_string()),
        ("delivery.max_connections", d.max_connections.to_string()),
        (
            "delivery.max_messages_per_connection",
            d.max_messages_per_connection.to_string(),
        ),
        ("queue.spool_dir", s.queue.spool_dir.display().to_string()),
        ("queue.max_messages", s.queue.max_messages.to_string()),
        ("queue.max_bytes", format!("{}B", s.queue.max_bytes)),
        ("control.socket", s.control.socket.display().to_string()),
        (
            "metrics.listen",
            s.metrics.listen.map_or("off".into(), |a| a.to_string()),
        ),
        ("tracking.max_journals", s.tracking.max_journals.to_string()),
        ("tracking.max_age", duration(s.tracking.max_age)),
        ("check.window", duration(s.check.window)),
        (
            "check.queue_warning",
            format!("{}%", s.check.queue_warning * 100.0),
        ),
    ];
    for (i, p) in s.policies.iter().enumerate() {
        let connector = match &p.connector {
            Connector::UseDefault => "use-default".to_string(),
            Connector::Global => "global".to_string(),
            Connector::Off => "off".to_string(),
            Connector::Custom(a) => format!("{{ custom: {a} }}"),
        };
        out.push((
            "policies",
            format!(
                "[{i}] {}: recipients {} senders {} connector {connector}",
                p.name,
                list(p.recipients.iter().map(pattern)),
                list(p.senders.iter().map(pattern)),
            ),
        ));
    }
    out.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
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
