//! Reading the settings file: YAML → raw structs (unknown keys refused where they
//! stand) → checked, normalised [`Settings`].
//!
//! To add a key: one line in its section of the table in `load/raw.rs`, and its typed
//! field in `config/mod.rs` (docs/ARCHITECTURE.md, "Adding a setting").

use std::fmt;
use std::path::{Path, PathBuf};

use serde_saphyr::{DuplicateKeyPolicy, Spanned};

use super::{Level, Settings};
pub use error::ConfigError;
use error::{at, yaml_error, Position};
use raw::RawSettings;

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
        let mut settings = RawSettings::convert(&loader, &raw, "")?;
        settings.path = path.to_path_buf();
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

    /// Paths in the file are relative to the file's directory, so a lab directory can be
    /// moved as a whole.
    fn relative_to_file(&self, written: &str, key: &str) -> PathBuf {
        match self.file_for(key).parent() {
            Some(dir) if Path::new(written).is_relative() => dir.join(written),
            _ => PathBuf::from(written),
        }
    }
}

/// `show-config`'s rows: (key, value) for every key, in the order of the table.
pub(super) fn rows(s: &Settings) -> Vec<(String, String)> {
    let mut out = Vec::new();
    RawSettings::show(s, "", &mut out);
    out
}

#[macro_use]
mod sections;
mod convert;
mod delivery;
mod error;
mod levels;
mod policies;
mod raw;
#[cfg(test)]
mod tests;
