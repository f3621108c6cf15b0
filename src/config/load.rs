//! Reading the settings file: YAML → raw structs (unknown keys refused where they
//! stand) → checked, normalised [`Settings`].
//!
//! To add a key: declare it in its section in `load/raw.rs` (wrapped in `Spanned` when
//! the value needs checking after parsing, so the error can point at it; the levels
//! then merge it), convert it in the matching `Loader` method with its default, and
//! render it in `show.rs` (a test fails until it is).

use std::fmt;
use std::path::{Path, PathBuf};

use serde_saphyr::{DuplicateKeyPolicy, Spanned};

use super::units::{parse_duration, parse_size};
use super::values::{
    check_header_name, normalise_address, parse_network, parse_socket_mode, parse_socket_spec,
};
use super::Level;
use super::{
    CheckSettings, Connector, ControlSettings, HeaderVerdict, IncomingSettings, JournalSettings,
    MetricsSettings, MilterSettings, QueueSettings, Settings, TrackingSettings,
};
pub use error::ConfigError;
use error::{at, quoted, yaml_error, Position};
use raw::{RawCheck, RawIncoming, RawJournal, RawMetrics, RawMilter, RawQueue, RawSettings};

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
const DEFAULT_SPOOL_DIR: &str = "/var/spool/tdc-milter";
const DEFAULT_CONTROL_SOCKET: &str = "/run/tdc-milter/control.sock";
const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9466";
const DEFAULT_QUEUE_MAX_MESSAGES: usize = 100_000;
const DEFAULT_QUEUE_MAX_BYTES: u64 = 2 * 1024 * 1024 * 1024;
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

/// The name of every key a settings file may set (`delivery.tls.match`, `policies`),
/// in the order of the annotated example; `levels` aside, which only names files.
pub fn setting_keys() -> Vec<String> {
    RawSettings::keys()
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
}

mod delivery;
mod error;
mod levels;
mod policies;
mod raw;
#[cfg(test)]
mod tests;
