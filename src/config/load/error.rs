//! Errors about the settings file: one line that names the file, the line and
//! column, the key and the bad value, also for what the YAML reader refuses.

use std::path::{Path, PathBuf};

use serde_saphyr::{Error as YamlError, Location, Spanned};

use crate::config::yaml_path::{node_at, Node};

/// Longest bad value quoted in an error message.
const MAX_QUOTED: usize = 120;

/// Line and column in the settings file, 1-based, in characters.
pub(super) type Position = (usize, usize);

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
    pub(super) fn invalid(
        path: &Path,
        location: Option<Position>,
        message: impl AsRef<str>,
    ) -> Self {
        ConfigError::Invalid {
            path: path.to_path_buf(),
            location,
            message: escape_controls(message.as_ref()),
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
fn escape_controls(message: &str) -> String {
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
pub(super) fn quoted(value: &str) -> String {
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

pub(super) fn at<T>(spanned: &Spanned<T>) -> Option<Position> {
    position(&spanned.referenced)
}

/// Turns a deserialiser error into one line that names the key and the bad value.
pub(super) fn yaml_error(err: &YamlError, text: &str, path: &Path) -> ConfigError {
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
