//! A record in the spool of when a daemon last ran on it, so that the next start can
//! say how long journaling was off (docs/LOGGING.md, "Gaps"). A crash leaves no
//! stop record, so the running daemon rewrites the file every [`PERIOD`]: the gap
//! is then known to within that period, for a clean stop to the second.

use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;

use crate::clock::now_secs;
use crate::tdclog::{appliance_timestamp, Event, Log};

/// How often the running daemon records that it is alive.
pub const PERIOD: Duration = Duration::from_secs(5);
const FILE: &str = "alive";

#[derive(Clone)]
pub struct Heartbeat {
    path: PathBuf,
}

impl Heartbeat {
    pub fn new(spool_dir: &Path) -> Heartbeat {
        Heartbeat {
            path: spool_dir.join(FILE),
        }
    }

    /// When a daemon last recorded itself alive on this spool; `None` on a first start
    /// (or an unreadable record).
    pub fn last_alive(&self) -> Option<u64> {
        std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    /// Records now. No fsync: after a power loss the record may be a few seconds old,
    /// which makes the gap look longer, never shorter.
    pub fn beat(&self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, format!("{}\n", now_secs()))?;
        std::fs::rename(&tmp, &self.path)
    }

    /// At start: logs the gap since the previous instance, then records this one.
    pub fn start(&self, log: &Log) {
        if let Some(last) = self.last_alive() {
            let now = now_secs();
            let at = OffsetDateTime::from_unix_timestamp(last as i64)
                .map(appliance_timestamp)
                .unwrap_or_else(|_| last.to_string());
            log.event(Event::JournalingGap {
                last_alive: &at,
                off_secs: now.saturating_sub(last),
            });
        }
        if let Err(e) = self.beat() {
            self.cannot_record(log, &e);
        }
    }

    /// Beats every [`PERIOD`] until the task is aborted.
    pub async fn run(self, log: Log) {
        let mut every = tokio::time::interval(PERIOD);
        every.tick().await;
        let mut failing = false;
        loop {
            every.tick().await;
            // Once per failing stretch: a full disk is reported by the spool too.
            match self.beat() {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    self.cannot_record(&log, &e);
                }
                Err(_) => {}
            }
        }
    }

    fn cannot_record(&self, log: &Log, e: &std::io::Error) {
        log.line(
            crate::tdclog::Severity::Warning,
            &format!(
                "TDC: cannot record the daemon as running in {}: {e}; the next start may report a longer gap",
                self.path.display()
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_start_reports_the_gap_since_the_first_was_last_alive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Log::memory();
        let beat = Heartbeat::new(dir.path());
        beat.start(&log);
        assert!(log.lines().is_empty(), "a first start has no gap");
        std::fs::write(dir.path().join(FILE), "1000\n").expect("write");
        beat.start(&log);
        let lines = log.lines();
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with("Warning: TDC: journaling was off for ")
                && lines[0].contains("last running at Thu Jan  1 00:16:40 1970;"),
            "{lines:?}"
        );
        assert!(beat.last_alive().is_some_and(|t| t > 1000));
    }
}
