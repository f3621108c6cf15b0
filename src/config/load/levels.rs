//! Cluster, group and machine levels (docs/POLICIES.md, "Levels"): the most specific
//! file that sets a key wins. Sections merge key by key and every other key is
//! replaced whole (`raw.rs` says why); this records, for each key set, the level and
//! file it came from.

use super::raw::RawSettings;
use super::Origins;
use crate::config::Level;

/// Applies one level's file on top of `base` (the cluster file on an empty base).
pub(super) fn overlay(
    base: &mut RawSettings,
    over: RawSettings,
    origins: &mut Origins,
    level: Level,
    file: usize,
) {
    base.merge(over, "", &mut |key| {
        origins.insert(key.to_string(), (level, file));
    });
}
