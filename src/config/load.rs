//! Reading the settings file: YAML → raw structs (unknown keys refused where they
//! stand) → checked, normalised [`Settings`].
//!
//! The raw structs mirror the file. To add a key: add an `Option<…>` field to the raw
//! struct of its section (wrapped in `Spanned` when the value needs checking after
//! parsing, so the error can point at it), then convert it in the matching `Loader`
//! method, with its default there.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::{DuplicateKeyPolicy, Error as YamlError, Location, Spanned};

use super::units::{parse_duration, parse_size};
use super::values::{
    check_header_name, normalise_address, parse_cert_match, parse_host_port, parse_network,
    parse_pattern, parse_socket_mode, parse_socket_spec,
};
use super::yaml_path::{node_at, Node};
use super::Level;
use super::{
    CertMatch, CheckSettings, Connector, ControlSettings, DeliverySettings, HeaderVerdict,
    IncomingSettings, JournalSettings, MetricsSettings, MilterSettings, Policy, QueueSettings,
    ResolverSpec, Route, Settings, TlsSettings, TrackingSettings, DEFAULT_POLICY,
};

const DEFAULT_LISTEN: &str = "inet:127.0.0.1:8895";
const DEFAULT_CHECK_WINDOW_SECS: u64 = 15 * 60;
const DEFAULT_CHECK_QUEUE_WARNING: f64 = 0.5;
/// Debian's Postfix runs up to `default_process_limit` (100) smtpd processes per
/// service, each holding one milter connection: ten such services fit.
const DEFAULT_MILTER_MAX_CONNECTIONS: usize = 1000;
/// libmilter's own default, a little over Postfix's longest milter timeout (2 h).
const DEFAULT_MILTER_IDLE_TIMEOUT_SECS: u64 = 7210;
/// Owner and group read and write: Postfix's user, a member of the socket's group,
/// can connect; nobody else can.
const DEFAULT_MILTER_SOCKET_MODE: u32 = 0o660;
const DEFAULT_CLIENT_IP_HEADER: &str = "X-IronPort-RemoteIP";
const DEFAULT_MAX_SIZE: u64 = 50 * 1024 * 1024;
const DEFAULT_PORT: u16 = 25;
const DEFAULT_LIFETIME_SECS: u64 = 120;
const DEFAULT_MAX_CONNECTIONS: usize = 20;
const DEFAULT_MIN_CONNECTIONS: usize = 3;
const DEFAULT_MAX_MESSAGES_PER_CONNECTION: usize = 10;
const DEFAULT_RETRY_DELAY_SECS: u64 = 5;
const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;
const DEFAULT_SPOOL_DIR: &str = "/var/spool/tdc-milter";
const DEFAULT_CONTROL_SOCKET: &str = "/run/tdc-milter/control.sock";
const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9466";
const DEFAULT_QUEUE_MAX_MESSAGES: usize = 100_000;
const DEFAULT_QUEUE_MAX_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Longest bad value quoted in an error message.
const MAX_QUOTED: usize = 120;

/// Line and column in the settings file, 1-based, in characters.
type Position = (usize, usize);

/// Why a settings file was refused. One line; names the file and, when known, the line
/// and column of the offending key or value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read settings file {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The file was read but does not hold valid settings.
    #[error("{}", render(path, *location, message))]
    Invalid {
        path: PathBuf,
        /// Line and column (1-based, in characters).
        location: Option<(usize, usize)>,
        message: String,
    },
}

fn render(path: &Path, location: Option<Position>, message: &str) -> String {
    match location {
        Some((line, column)) => format!("{}:{line}:{column}: {message}", path.display()),
        None => format!("{}: {message}", path.display()),
    }
}

impl ConfigError {
    fn invalid(path: &Path, location: Option<Position>, message: impl AsRef<str>) -> Self {
        ConfigError::Invalid {
            path: path.to_path_buf(),
            location,
            message: one_line(message.as_ref()),
        }
    }

    /// Line and column (1-based) of the offending key or value, when known.
    pub fn location(&self) -> Option<(usize, usize)> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { location, .. } => *location,
        }
    }

    /// The settings file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ConfigError::Read { path, .. } | ConfigError::Invalid { path, .. } => path,
        }
    }

    /// The message without file name and position.
    pub fn message(&self) -> String {
        match self {
            ConfigError::Read { path, error } => {
                format!("cannot read settings file {}: {error}", path.display())
            }
            ConfigError::Invalid { message, .. } => message.clone(),
        }
    }
}

/// Values from the file may hold line breaks or control characters (quoted scalars);
/// the message must stay one printable line.
fn one_line(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for c in message.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `'value'`, shortened when long.
fn quoted(value: &str) -> String {
    let mut chars = value.chars();
    let head: String = chars.by_ref().take(MAX_QUOTED).collect();
    if chars.next().is_some() {
        format!("'{head}…'")
    } else {
        format!("'{head}'")
    }
}

fn position(location: &Location) -> Option<Position> {
    if location.line() == 0 {
        return None;
    }
    let line = usize::try_from(location.line()).ok()?;
    let column = usize::try_from(location.column()).ok()?;
    Some((line, column))
}

fn at<T>(spanned: &Spanned<T>) -> Option<Position> {
    position(&spanned.referenced)
}

// ---------------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    enabled: Option<bool>,
    intake_address: Option<Spanned<String>>,
    milter: Option<RawMilter>,
    incoming: Option<RawIncoming>,
    journal: Option<RawJournal>,
    delivery: Option<RawDelivery>,
    queue: Option<RawQueue>,
    control: Option<RawControl>,
    metrics: Option<RawMetrics>,
    tracking: Option<RawTracking>,
    check: Option<RawCheck>,
    policies: Option<Spanned<Vec<RawPolicy>>>,
    levels: Option<RawLevels>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLevels {
    group: Option<Spanned<String>>,
    machine: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTracking {
    max_journals: Option<Spanned<usize>>,
    max_age: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    window: Option<Spanned<String>>,
    queue_warning: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawControl {
    socket: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    spool_dir: Option<Spanned<String>>,
    max_messages: Option<Spanned<usize>>,
    max_bytes: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMilter {
    listen: Option<Spanned<String>>,
    max_connections: Option<Spanned<usize>>,
    idle_timeout: Option<Spanned<String>>,
    socket_mode: Option<Spanned<String>>,
    socket_group: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawIncoming {
    daemon_names: Option<Vec<Spanned<String>>>,
    internal_networks: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawJournal {
    sender: Option<Spanned<String>>,
    client_ip_header: Option<Spanned<String>>,
    max_size: Option<Spanned<String>>,
    not_clean: Option<Vec<RawVerdict>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVerdict {
    header: Spanned<String>,
    value: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    route: Option<Spanned<RawRoute>>,
    resolver: Option<Spanned<String>>,
    port: Option<Spanned<u16>>,
    tls: Option<RawTls>,
    lifetime: Option<Spanned<String>>,
    retry_delay: Option<Spanned<String>>,
    shutdown_grace: Option<Spanned<String>>,
    min_connections: Option<Spanned<usize>>,
    max_connections: Option<Spanned<usize>>,
    max_messages_per_connection: Option<Spanned<usize>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    verify: Option<bool>,
    ca_file: Option<Spanned<String>>,
    #[serde(rename = "match")]
    cert_match: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: Spanned<String>,
    recipients: Option<Spanned<Vec<Spanned<String>>>>,
    senders: Option<Spanned<Vec<Spanned<String>>>>,
    connector: Option<Spanned<RawConnector>>,
}

/// `off` is read as a variant name, whatever YAML 1.1 thinks of it; `false` or `no`
/// are unknown variants.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawConnector {
    UseDefault,
    Global,
    Off,
    Custom(Spanned<String>),
}

/// `route:` is the keyword `dns` or a list of hosts. Anything else is kept as `Other`
/// (described) so the error can point at the value itself.
enum RawRoute {
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

// ---------------------------------------------------------------------------------
// Loading.

impl Settings {
    /// Reads and checks the settings file at `path`.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Settings::from_yaml(&text, path)
    }

    /// Checks `text` as if it had been read from `path`. `path` names the file in errors,
    /// and a relative `delivery.tls.ca_file` is taken relative to its directory.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Settings, ConfigError> {
        let mut main = parse(text, path)?;
        let named = main.levels.take().unwrap_or_default();
        let mut files = vec![path.to_path_buf()];
        let mut origins = Origins::new();
        let mut raw = RawSettings::default();
        levels::overlay(&mut raw, main, &mut origins, Level::Cluster, 0);
        // More specific files, in order: what they set wins.
        for (level, key, file) in [
            (Level::Group, "levels.group", named.group),
            (Level::Machine, "levels.machine", named.machine),
        ] {
            let Some(file) = file else { continue };
            let loader = Loader {
                path,
                files: &files,
                origins: &origins,
            };
            let level_path = loader.relative_to_file(file.value.trim(), key);
            let level_text = std::fs::read_to_string(&level_path).map_err(|error| {
                loader.bad(
                    &file,
                    key,
                    format!("cannot read {}: {error}", level_path.display()),
                )
            })?;
            let mut over = parse(&level_text, &level_path)?;
            if over.levels.take().is_some() {
                return Err(ConfigError::invalid(
                    &level_path,
                    None,
                    "levels: only the main (cluster) settings file may name level files",
                ));
            }
            files.push(level_path);
            levels::overlay(&mut raw, over, &mut origins, level, files.len() - 1);
        }
        let loader = Loader {
            path,
            files: &files,
            origins: &origins,
        };
        let mut settings = loader.settings(raw)?;
        settings.origins = origins
            .iter()
            .map(|(key, (level, _))| (key.clone(), *level))
            .collect();
        settings.level_files = files[1..].to_vec();
        Ok(settings)
    }
}

/// Parses one settings file.
fn parse(text: &str, path: &Path) -> Result<RawSettings, ConfigError> {
    let options = serde_saphyr::options! {
        // YAML 1.1 spellings (yes/no, on/off) are accepted for booleans: the target
        // type decides, so they never turn a string setting such as `connector: off`
        // into a boolean.
        strict_booleans: false,
        duplicate_keys: DuplicateKeyPolicy::Error,
        with_snippet: false,
    };
    let raw: Option<RawSettings> = serde_saphyr::from_str_with_options(text, options)
        .map_err(|e| yaml_error(&e, text, path))?;
    Ok(raw.unwrap_or_default())
}

/// For each key set in some file: its level and the index of that file.
type Origins = std::collections::BTreeMap<String, (Level, usize)>;

/// Turns a deserialiser error into one line that names the key and the bad value.
fn yaml_error(err: &YamlError, text: &str, path: &Path) -> ConfigError {
    let mut err = err.without_snippet();
    while let YamlError::AliasError { error, .. } = err {
        err = error.as_ref().without_snippet();
    }
    let location = err.location().as_ref().and_then(position);
    let node = location.and_then(|(line, column)| node_at(text, line as u64, column as u64));
    if let Some((connector, node)) = node.as_ref().and_then(|n| Some((connector_path(n)?, n))) {
        if !matches!(err, YamlError::DuplicateMappingKey { .. }) {
            // Whatever serde-saphyr says about the enum (unknown variant, wrong shape),
            // the admin needs the forms, and the word that was found.
            let found = match &node.scalar {
                Some(value) => format!(", found {}", quoted(value)),
                None => String::new(),
            };
            let at = (usize::try_from(node.line), usize::try_from(node.column));
            let location = match at {
                (Ok(line), Ok(column)) => Some((line, column)),
                _ => location,
            };
            return ConfigError::invalid(
                path,
                location,
                format!("{connector}: expected {CONNECTOR_FORMS}{found}"),
            );
        }
    }
    ConfigError::invalid(path, location, describe(err, node.as_ref()))
}

const CONNECTOR_FORMS: &str = "use-default, global, off or { custom: ADDRESS }";

/// The `policies[N].connector` a node belongs to, unless it is the address of `custom`
/// (whose own errors are clearer).
fn connector_path(node: &Node) -> Option<&str> {
    if node.path.ends_with(".connector") {
        return Some(&node.path);
    }
    let custom_address = !node.is_key && node.path.ends_with(".custom");
    if node.parent.ends_with(".connector") && !custom_address {
        return Some(&node.parent);
    }
    None
}

fn describe(err: &YamlError, node: Option<&Node>) -> String {
    let within = |node: Option<&Node>| match node.map(Node::container) {
        Some("") | None => "the top level".to_string(),
        Some(container) => container.to_string(),
    };
    let prefix = match node {
        Some(n) if !n.path.is_empty() => format!("{}: ", n.path),
        _ => String::new(),
    };
    let found = match node.and_then(|n| n.scalar.as_deref()) {
        Some(value) if !node.is_some_and(|n| n.is_key) => format!(", found {}", quoted(value)),
        _ => String::new(),
    };
    match err {
        YamlError::SerdeUnknownField {
            field, expected, ..
        } => format!(
            "unknown key {} in {}; expected one of {}",
            quoted(field),
            within(node),
            expected.join(", ")
        ),
        YamlError::SerdeMissingField { field, .. } => {
            format!("missing key '{field}' in {}", within(node))
        }
        YamlError::DuplicateMappingKey { key, .. } => match key {
            Some(key) => format!("duplicate key {} in {}", quoted(key), within(node)),
            None => format!("duplicate key in {}", within(node)),
        },
        YamlError::SerdeUnknownVariant {
            variant, expected, ..
        } => {
            format!(
                "{prefix}unknown value {}; expected one of {}",
                quoted(variant),
                expected.join(", ")
            )
        }
        YamlError::InvalidScalar { ty, .. } => {
            let wanted = match *ty {
                "boolean" | "bool" => "true or false",
                "u8" => "a whole number from 0 to 255",
                "u16" => "a whole number from 0 to 65535",
                "u32" | "u64" | "u128" | "usize" => "a whole number (0 or more)",
                "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
                other => other,
            };
            format!("{prefix}expected {wanted}{found}")
        }
        YamlError::Unexpected { expected, .. } => {
            let wanted = match *expected {
                "sequence start" => "a list",
                "mapping start" => "a mapping of keys and values",
                "string scalar" | "scalar" => "a single value, not a list or mapping",
                other => other,
            };
            format!("{prefix}expected {wanted}{found}")
        }
        YamlError::NullIntoString { .. } => format!("{prefix}a value is required here"),
        YamlError::MultipleDocuments { .. } => {
            "the file holds more than one YAML document (---); settings are one document"
                .to_string()
        }
        other => {
            let core = serde_saphyr::MessageFormatter::format_message(
                &serde_saphyr::UserMessageFormatter,
                other,
            );
            format!("{prefix}{core}{found}")
        }
    }
}

/// Converts the raw (merged) settings into settings, one section at a time. Errors
/// name the file that set the offending key.
struct Loader<'p> {
    path: &'p Path,
    files: &'p [PathBuf],
    origins: &'p Origins,
}

impl Loader<'_> {
    /// The file that set `key` (or a section above it); the main file otherwise.
    fn file_for(&self, key: &str) -> &Path {
        let mut k = key;
        loop {
            if let Some((_, index)) = self.origins.get(k) {
                if let Some(file) = self.files.get(*index) {
                    return file;
                }
            }
            match k.rfind(['.', '[']) {
                Some(cut) => k = &k[..cut],
                None => return self.path,
            }
        }
    }

    fn err(&self, location: Option<Position>, message: impl AsRef<str>) -> ConfigError {
        ConfigError::invalid(self.path, location, message)
    }

    /// An error at a position in the file that set `key`.
    fn err_in(
        &self,
        key: &str,
        location: Option<Position>,
        message: impl AsRef<str>,
    ) -> ConfigError {
        ConfigError::invalid(self.file_for(key), location, message)
    }

    /// An error about a spanned value, worded as `KEY: MESSAGE`.
    fn bad<T>(&self, value: &Spanned<T>, key: &str, message: impl fmt::Display) -> ConfigError {
        self.err_in(key, at(value), format!("{key}: {message}"))
    }

    fn settings(&self, raw: RawSettings) -> Result<Settings, ConfigError> {
        let enabled = raw.enabled.unwrap_or(true);
        let intake_address = match &raw.intake_address {
            Some(a) => {
                Some(normalise_address(&a.value).map_err(|e| self.bad(a, "intake_address", e))?)
            }
            None => None,
        };
        let milter = self.milter(raw.milter.unwrap_or_default())?;
        let incoming = self.incoming(raw.incoming.unwrap_or_default())?;
        let journal = self.journal(raw.journal.unwrap_or_default())?;
        let delivery = self.delivery(raw.delivery.unwrap_or_default())?;
        let queue = self.queue(raw.queue.unwrap_or_default())?;
        let control = match raw.control.unwrap_or_default().socket {
            None => ControlSettings {
                socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            },
            Some(s) if s.value.trim().is_empty() => {
                return Err(self.bad(&s, "control.socket", "the path is empty"))
            }
            Some(s) => ControlSettings {
                socket: self.relative_to_file(s.value.trim(), "control.socket"),
            },
        };
        let metrics = self.metrics(raw.metrics.unwrap_or_default())?;
        let raw_tracking = raw.tracking.unwrap_or_default();
        let tracking = TrackingSettings {
            max_journals: self.at_least_one(
                &raw_tracking.max_journals,
                "tracking.max_journals",
                crate::tracking::DEFAULT_CAPACITY,
            )?,
            max_age: self.duration(
                &raw_tracking.max_age,
                "tracking.max_age",
                crate::tracking::DEFAULT_MAX_AGE,
            )?,
        };
        let check = self.check(raw.check.unwrap_or_default())?;
        let (policies, connector_at) = self.policies(raw.policies)?;

        if enabled && intake_address.is_none() {
            let default = policies.last().map(|p| &p.connector);
            for (policy, location) in policies.iter().zip(&connector_at) {
                let effective = match &policy.connector {
                    Connector::UseDefault => default.unwrap_or(&Connector::Global),
                    other => other,
                };
                if *effective == Connector::Global {
                    let how = if policy.connector == Connector::UseDefault {
                        "use-default, and DEFAULT is global"
                    } else {
                        "global"
                    };
                    let message = format!(
                        "intake_address is not set, but policy {} journals to it (connector {how}); \
                         set intake_address or change the connector",
                        quoted(&policy.name)
                    );
                    return Err(self.err_in("policies", *location, message));
                }
            }
        }

        Ok(Settings {
            path: self.path.to_path_buf(),
            level_files: Vec::new(),
            origins: Default::default(),
            enabled,
            intake_address,
            milter,
            incoming,
            journal,
            delivery,
            queue,
            control,
            metrics,
            tracking,
            check,
            policies,
        })
    }

    fn check(&self, raw: RawCheck) -> Result<CheckSettings, ConfigError> {
        let window = self.duration(
            &raw.window,
            "check.window",
            std::time::Duration::from_secs(DEFAULT_CHECK_WINDOW_SECS),
        )?;
        let queue_warning = match &raw.queue_warning {
            None => DEFAULT_CHECK_QUEUE_WARNING,
            Some(v) => {
                let share = v
                    .value
                    .trim()
                    .strip_suffix('%')
                    .and_then(|p| p.trim().parse::<f64>().ok())
                    .filter(|p| (0.0..=100.0).contains(p))
                    .ok_or_else(|| {
                        self.bad(
                            v,
                            "check.queue_warning",
                            "expected a percentage from 0% to 100%, like 50%",
                        )
                    })?;
                share / 100.0
            }
        };
        Ok(CheckSettings {
            window,
            queue_warning,
        })
    }

    fn metrics(&self, raw: RawMetrics) -> Result<MetricsSettings, ConfigError> {
        let listen = match &raw.listen {
            None => DEFAULT_METRICS_LISTEN.parse().ok(),
            Some(l) if l.value.trim() == "off" => None,
            Some(l) => Some(l.value.trim().parse().map_err(|_| {
                self.bad(
                    l,
                    "metrics.listen",
                    format!(
                        "expected off or IP:PORT (like 127.0.0.1:9466), found {}",
                        quoted(&l.value)
                    ),
                )
            })?),
        };
        Ok(MetricsSettings { listen })
    }

    fn queue(&self, raw: RawQueue) -> Result<QueueSettings, ConfigError> {
        let spool_dir = match &raw.spool_dir {
            None => PathBuf::from(DEFAULT_SPOOL_DIR),
            Some(dir) if dir.value.trim().is_empty() => {
                return Err(self.bad(dir, "queue.spool_dir", "the path is empty"))
            }
            Some(dir) => self.relative_to_file(dir.value.trim(), "queue.spool_dir"),
        };
        let max_messages = self.at_least_one(
            &raw.max_messages,
            "queue.max_messages",
            DEFAULT_QUEUE_MAX_MESSAGES,
        )?;
        let max_bytes = match &raw.max_bytes {
            Some(s) => match parse_size(&s.value) {
                Ok(0) => return Err(self.bad(s, "queue.max_bytes", "must be more than 0 bytes")),
                Ok(n) => n,
                Err(e) => return Err(self.bad(s, "queue.max_bytes", e)),
            },
            None => DEFAULT_QUEUE_MAX_BYTES,
        };
        Ok(QueueSettings {
            spool_dir,
            max_messages,
            max_bytes,
        })
    }

    /// Paths in the file are relative to the file's directory, so a lab directory can be
    /// moved as a whole.
    fn relative_to_file(&self, written: &str, key: &str) -> PathBuf {
        match self.file_for(key).parent() {
            Some(dir) if Path::new(written).is_relative() => dir.join(written),
            _ => PathBuf::from(written),
        }
    }

    fn at_least_one(
        &self,
        value: &Option<Spanned<usize>>,
        key: &str,
        default: usize,
    ) -> Result<usize, ConfigError> {
        match value {
            Some(v) if v.value == 0 => Err(self.bad(v, key, "must be at least 1")),
            Some(v) => Ok(v.value),
            None => Ok(default),
        }
    }

    fn duration(
        &self,
        value: &Option<Spanned<String>>,
        key: &str,
        default: std::time::Duration,
    ) -> Result<std::time::Duration, ConfigError> {
        match value {
            Some(v) => match parse_duration(&v.value) {
                Ok(d) if d.is_zero() => Err(self.bad(v, key, "must be longer than 0")),
                Ok(d) => Ok(d),
                Err(e) => Err(self.bad(v, key, e)),
            },
            None => Ok(default),
        }
    }

    fn milter(&self, raw: RawMilter) -> Result<MilterSettings, ConfigError> {
        let listen = match &raw.listen {
            Some(listen) => parse_socket_spec(&listen.value)
                .map_err(|e| self.bad(listen, "milter.listen", e))?,
            None => parse_socket_spec(DEFAULT_LISTEN).map_err(|e| self.err(None, e))?,
        };
        let max_connections = match &raw.max_connections {
            Some(n) if n.value == 0 => {
                return Err(self.bad(n, "milter.max_connections", "must be at least 1"))
            }
            Some(n) => n.value,
            None => DEFAULT_MILTER_MAX_CONNECTIONS,
        };
        let idle_timeout = self.duration(
            &raw.idle_timeout,
            "milter.idle_timeout",
            std::time::Duration::from_secs(DEFAULT_MILTER_IDLE_TIMEOUT_SECS),
        )?;
        let socket_mode = match &raw.socket_mode {
            Some(mode) => parse_socket_mode(&mode.value)
                .map_err(|e| self.bad(mode, "milter.socket_mode", e))?,
            None => DEFAULT_MILTER_SOCKET_MODE,
        };
        let socket_group = match &raw.socket_group {
            Some(group) if group.value.trim().is_empty() => {
                return Err(self.bad(group, "milter.socket_group", "the group name is empty"))
            }
            Some(group) => Some(group.value.trim().to_string()),
            None => None,
        };
        Ok(MilterSettings {
            listen,
            max_connections,
            idle_timeout,
            socket_mode,
            socket_group,
        })
    }

    fn incoming(&self, raw: RawIncoming) -> Result<IncomingSettings, ConfigError> {
        let mut daemon_names = Vec::new();
        for (i, name) in raw.daemon_names.unwrap_or_default().iter().enumerate() {
            let value = name.value.trim();
            if value.is_empty() {
                return Err(self.bad(
                    name,
                    &format!("incoming.daemon_names[{i}]"),
                    "the daemon name is empty",
                ));
            }
            daemon_names.push(value.to_string());
        }
        let mut internal_networks = Vec::new();
        for (i, entry) in raw.internal_networks.unwrap_or_default().iter().enumerate() {
            let network = parse_network(&entry.value)
                .map_err(|e| self.bad(entry, &format!("incoming.internal_networks[{i}]"), e))?;
            internal_networks.push(network);
        }
        Ok(IncomingSettings {
            daemon_names,
            internal_networks,
        })
    }

    fn journal(&self, raw: RawJournal) -> Result<JournalSettings, ConfigError> {
        let sender = match &raw.sender {
            Some(s) => normalise_address(&s.value).map_err(|e| self.bad(s, "journal.sender", e))?,
            None => self.default_sender()?,
        };
        let client_ip_header = match &raw.client_ip_header {
            Some(h) => {
                let name = h.value.trim();
                check_header_name(name).map_err(|e| self.bad(h, "journal.client_ip_header", e))?;
                name.to_string()
            }
            None => DEFAULT_CLIENT_IP_HEADER.to_string(),
        };
        let max_size = match &raw.max_size {
            Some(s) => match parse_size(&s.value) {
                Ok(0) => return Err(self.bad(s, "journal.max_size", "must be more than 0 bytes")),
                Ok(size) => size,
                Err(e) => return Err(self.bad(s, "journal.max_size", e)),
            },
            None => DEFAULT_MAX_SIZE,
        };
        // No default verdict: a header that a filter before us did not set (or did not
        // clean of the sender's copies) would let any sender opt out of scanning.
        let not_clean = match raw.not_clean {
            None => Vec::new(),
            Some(list) => {
                let mut verdicts = Vec::with_capacity(list.len());
                for (i, v) in list.iter().enumerate() {
                    let key = format!("journal.not_clean[{i}]");
                    let header = v.header.value.trim();
                    check_header_name(header)
                        .map_err(|e| self.bad(&v.header, &format!("{key}.header"), e))?;
                    let value = v.value.value.trim();
                    if value.is_empty() {
                        return Err(self.bad(
                            &v.value,
                            &format!("{key}.value"),
                            format!("the value for header {header} is empty"),
                        ));
                    }
                    verdicts.push(HeaderVerdict {
                        header: header.to_string(),
                        value: value.to_string(),
                    });
                }
                verdicts
            }
        };
        Ok(JournalSettings {
            sender,
            client_ip_header,
            max_size,
            not_clean,
        })
    }

    /// `tdc@` and this machine's host name: bounces of journals then reach someone.
    fn default_sender(&self) -> Result<String, ConfigError> {
        let host = gethostname::gethostname();
        let host = host.to_string_lossy();
        normalise_address(&format!("tdc@{host}")).map_err(|e| {
            let message = format!(
                "journal.sender is not set and the host name {} does not make an address \
                 ({e}); set journal.sender",
                quoted(&host)
            );
            self.err(None, message)
        })
    }

    fn delivery(&self, raw: RawDelivery) -> Result<DeliverySettings, ConfigError> {
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
            std::time::Duration::from_secs(DEFAULT_LIFETIME_SECS),
        )?;
        let retry_delay = self.duration(
            &raw.retry_delay,
            "delivery.retry_delay",
            std::time::Duration::from_secs(DEFAULT_RETRY_DELAY_SECS),
        )?;
        let shutdown_grace = self.duration(
            &raw.shutdown_grace,
            "delivery.shutdown_grace",
            std::time::Duration::from_secs(DEFAULT_SHUTDOWN_GRACE_SECS),
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

    /// The policies, and for each where its connector is written (for later errors).
    fn policies(
        &self,
        raw: Option<Spanned<Vec<RawPolicy>>>,
    ) -> Result<(Vec<Policy>, Vec<Option<Position>>), ConfigError> {
        let Some(list) = raw else {
            return Ok((
                vec![Policy {
                    name: DEFAULT_POLICY.to_string(),
                    recipients: Vec::new(),
                    senders: Vec::new(),
                    connector: Connector::Global,
                }],
                vec![None],
            ));
        };
        let list_at = at(&list);
        let count = list.value.len();
        let mut policies = Vec::with_capacity(count);
        let mut connector_at = Vec::with_capacity(count);
        // Lower-cased name → line where it was first used.
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (index, raw) in list.value.into_iter().enumerate() {
            let key = format!("policies[{index}]");
            let name = raw.name.value.trim().to_string();
            if name.is_empty() {
                return Err(self.bad(&raw.name, &format!("{key}.name"), "the name is empty"));
            }
            let is_default = name == DEFAULT_POLICY;
            if !is_default && name.eq_ignore_ascii_case(DEFAULT_POLICY) {
                return Err(self.bad(
                    &raw.name,
                    &format!("{key}.name"),
                    format!(
                        "{} is reserved: the catch-all policy is spelled {DEFAULT_POLICY}",
                        quoted(&name)
                    ),
                ));
            }
            let line = at(&raw.name).map(|(line, _)| line).unwrap_or(0);
            if let Some(first) = seen.insert(name.to_lowercase(), line) {
                return Err(self.bad(
                    &raw.name,
                    &format!("{key}.name"),
                    format!(
                        "policy name {} is already used on line {first}",
                        quoted(&name)
                    ),
                ));
            }
            if is_default && index + 1 != count {
                return Err(self.bad(
                    &raw.name,
                    &key,
                    format!(
                        "policy {DEFAULT_POLICY} must be the last one; it matches every recipient, \
                         so policies after it would never apply"
                    ),
                ));
            }
            if is_default {
                for (field, criteria) in
                    [("recipients", &raw.recipients), ("senders", &raw.senders)]
                {
                    if let Some(c) = criteria.as_ref().filter(|c| !c.value.is_empty()) {
                        return Err(self.bad(
                            c,
                            &format!("{key}.{field}"),
                            format!(
                                "policy {DEFAULT_POLICY} matches everything and takes no {field}"
                            ),
                        ));
                    }
                }
            }
            let recipients = self.patterns(raw.recipients, &format!("{key}.recipients"))?;
            let senders = self.patterns(raw.senders, &format!("{key}.senders"))?;
            let (connector, location) = match raw.connector {
                // An omitted connector inherits; DEFAULT has nothing to inherit from.
                None if is_default => (Connector::Global, at(&raw.name)),
                None => (Connector::UseDefault, at(&raw.name)),
                Some(c) => {
                    let location = at(&c);
                    let connector = match c.value {
                        RawConnector::UseDefault if is_default => {
                            let message = format!(
                                "{key}.connector: policy {DEFAULT_POLICY} cannot be use-default; \
                                 write global, off or {{ custom: ADDRESS }}"
                            );
                            return Err(self.err_in("policies", location, message));
                        }
                        RawConnector::UseDefault => Connector::UseDefault,
                        RawConnector::Global => Connector::Global,
                        RawConnector::Off => Connector::Off,
                        RawConnector::Custom(address) => {
                            Connector::Custom(normalise_address(&address.value).map_err(|e| {
                                self.bad(&address, &format!("{key}.connector.custom"), e)
                            })?)
                        }
                    };
                    (connector, location)
                }
            };
            policies.push(Policy {
                name,
                recipients,
                senders,
                connector,
            });
            connector_at.push(location);
        }
        if policies.last().map(|p| p.name.as_str()) != Some(DEFAULT_POLICY) {
            let message = format!(
                "policies: the last policy must be {DEFAULT_POLICY} (it matches every recipient \
                 and says what happens to the rest); add one with connector global or off"
            );
            return Err(self.err_in("policies", list_at, message));
        }
        Ok((policies, connector_at))
    }

    fn patterns(
        &self,
        raw: Option<Spanned<Vec<Spanned<String>>>>,
        key: &str,
    ) -> Result<Vec<super::Pattern>, ConfigError> {
        let Some(list) = raw else {
            return Ok(Vec::new());
        };
        list.value
            .iter()
            .enumerate()
            .map(|(i, p)| {
                parse_pattern(&p.value).map_err(|e| self.bad(p, &format!("{key}[{i}]"), e))
            })
            .collect()
    }
}

mod levels;
#[cfg(test)]
mod tests;
