//! The open file limit. Every MTA connection, intake connection, scrape and spool file
//! takes a descriptor; at the limit, accepts fail and the MTA applies its
//! `default_action` to the mail it wanted us to see. The soft limit is raised to the
//! hard one at start (systemd's default soft limit is 1024, less than
//! `milter.max_connections` and delivery together), and a limit still too low for the
//! settings is logged once, naming what to raise.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

use crate::config::Settings;
use crate::tdclog::{Event, Log};

/// Descriptors beyond the connections: the spool, DNS sockets, the log, the runtime.
const MARGIN: u64 = 64;

/// What the settings can hold open at once.
pub fn needed(settings: &Settings) -> u64 {
    (settings.milter.max_connections
        + settings.delivery.max_connections
        + crate::metrics::MAX_CONNECTIONS
        + crate::control::MAX_CONNECTIONS) as u64
        + MARGIN
}

/// Raises the soft limit to the hard one; returns the limit now in force (`None`:
/// unlimited).
pub fn raise() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    // The soft limit never exceeds the hard one (None: unlimited).
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return limit.maximum;
        }
    }
    limit.current
}

/// Raises the limit and logs a warning if it is below what the settings need.
pub fn raise_and_check(settings: &Settings, log: &Log) {
    if let Some(limit) = raise() {
        let needed = needed(settings);
        if limit < needed {
            log.event(Event::FileLimitLow { limit, needed });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let before = getrlimit(Resource::Nofile);
        let now = raise();
        let after = getrlimit(Resource::Nofile);
        assert_eq!(after.current, after.maximum, "{before:?} → {after:?}");
        assert_eq!(now, after.current);
    }

    #[test]
    fn the_default_settings_need_more_than_systemds_default_soft_limit() {
        let s = Settings::from_yaml("intake_address: a@b.example\n", std::path::Path::new("/x"))
            .expect("settings");
        assert!(needed(&s) > 1024, "{}", needed(&s));
        assert!(needed(&s) < 65536, "the unit's LimitNOFILE covers them");
    }
}
