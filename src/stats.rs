//! Counters and gauges of the.tdc.queue, read as one snapshot by the CLI and metrics.
//!
//! The names follow the appliance's `tophosts` columns where one exists.

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::clock::now_secs as epoch_secs;
use crate::outcome::Outcome;
use crate::tdclog::Verdict;

#[derive(Debug)]
pub struct Stats {
    /// Journals in the queue (waiting, retrying or being delivered): "Active Recip.".
    active: AtomicU64,
    /// Bytes of those journals in the spool.
    active_bytes: AtomicU64,
    /// Open connections to the intake: "Conn. Out".
    connections: AtomicU64,
    /// "Deliv. Recip."
    delivered: AtomicU64,
    /// Failures that got their retry: "Soft Bounced".
    soft_bounced: AtomicU64,
    /// Failures that ended the journal, expiry included: "Hard Bounced".
    hard_bounced: AtomicU64,
    /// Of the hard bounces, those removed because their lifetime ended.
    expired: AtomicU64,
    /// Journals refused because the queue was full or the spool could not be written.
    refused: AtomicU64,
    /// Originals over journal.max_size.
    too_large: AtomicU64,
    /// Messages by outcome, indexed by [`Outcome::index`].
    messages: [AtomicU64; Outcome::ALL.len()],
    /// MTA connections being served in full now.
    milter_connections: AtomicU64,
    /// MTA connections answered as busy since start (past milter.max_connections).
    milter_busy_connections: AtomicU64,
    /// milter.max_connections as last applied.
    milter_connection_limit: AtomicU64,
    /// Failed accepts by socket ([`Socket::index`]).
    accept_errors: [AtomicU64; Socket::ALL.len()],
    /// Connections closed at once because their socket's limit was reached.
    connections_refused: [AtomicU64; Socket::ALL.len()],
    /// When a message last reached end of message, and when the intake last accepted
    /// a journal: seconds since the Unix epoch, 0 for never.
    last_message_at: AtomicU64,
    last_delivery_at: AtomicU64,
    /// When a journal last soft or hard bounced (expiry included), and when a
    /// connection last came past milter.max_connections: for `status --check`.
    last_soft_bounce_at: AtomicU64,
    last_hard_bounce_at: AtomicU64,
    last_busy_at: AtomicU64,
    /// Outcomes per intake address.
    per_intake: Mutex<BTreeMap<String, IntakeCounts>>,
    /// The latest failure, for `status`.
    last_error: Mutex<Option<LastError>>,
    /// Failed attempts by the retry table's class (tls, permanent, transient, network).
    failures: Mutex<BTreeMap<&'static str, u64>>,
    /// Time the milter spends at end of message (policy, journal, spool), seconds.
    pub end_of_message_seconds: Histogram,
    /// The part of it spent writing the journal to the spool (write and fsync).
    pub spool_write_seconds: Histogram,
    /// From enqueue to the intake's 250 for the journal, seconds.
    accept_to_delivered_seconds: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            active: AtomicU64::default(),
            active_bytes: AtomicU64::default(),
            connections: AtomicU64::default(),
            delivered: AtomicU64::default(),
            soft_bounced: AtomicU64::default(),
            hard_bounced: AtomicU64::default(),
            expired: AtomicU64::default(),
            refused: AtomicU64::default(),
            too_large: AtomicU64::default(),
            messages: Default::default(),
            milter_connections: AtomicU64::default(),
            milter_busy_connections: AtomicU64::default(),
            milter_connection_limit: AtomicU64::default(),
            accept_errors: Default::default(),
            connections_refused: Default::default(),
            last_message_at: AtomicU64::default(),
            last_delivery_at: AtomicU64::default(),
            last_soft_bounce_at: AtomicU64::default(),
            last_hard_bounce_at: AtomicU64::default(),
            last_busy_at: AtomicU64::default(),
            per_intake: Mutex::default(),
            last_error: Mutex::default(),
            failures: Mutex::default(),
            end_of_message_seconds: Histogram::new(end_of_message_buckets()),
            spool_write_seconds: Histogram::new(end_of_message_buckets()),
            // 5 ms .. ~160 s: a healthy intake takes tens of ms, the lifetime is 120 s.
            accept_to_delivered_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 16)),
        }
    }
}

/// 100 µs .. 6.5 s in steps of √2: end of message must stay in the low milliseconds,
/// and a factor of 2 per bucket was too coarse to tell 2 ms from 3 ms.
fn end_of_message_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, std::f64::consts::SQRT_2, 33)
}

/// The sockets the daemon accepts connections on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Socket {
    Milter = 0,
    Metrics = 1,
    Control = 2,
}

impl Socket {
    pub const ALL: [Socket; 3] = [Socket::Milter, Socket::Metrics, Socket::Control];

    /// The metrics label and the word in log lines.
    pub fn label(self) -> &'static str {
        match self {
            Socket::Milter => "milter",
            Socket::Metrics => "metrics",
            Socket::Control => "control",
        }
    }
}

/// Outcomes for one intake address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntakeCounts {
    pub delivered: u64,
    pub soft_bounced: u64,
    pub hard_bounced: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub mid: u64,
    pub error: String,
}

/// The values at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub active: u64,
    pub active_bytes: u64,
    pub connections: u64,
    pub delivered: u64,
    pub soft_bounced: u64,
    pub hard_bounced: u64,
    pub expired: u64,
    pub refused: u64,
    pub too_large: u64,
}

impl Stats {
    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            active: get(&self.active),
            active_bytes: get(&self.active_bytes),
            connections: get(&self.connections),
            delivered: get(&self.delivered),
            soft_bounced: get(&self.soft_bounced),
            hard_bounced: get(&self.hard_bounced),
            expired: get(&self.expired),
            refused: get(&self.refused),
            too_large: get(&self.too_large),
        }
    }

    pub fn journal_queued(&self, bytes: u64) {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.active_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A journal left the queue, whatever the outcome.
    pub fn journal_left(&self, bytes: u64) {
        let _ = self
            .active
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        let _ = self
            .active_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(bytes))
            });
    }

    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        let _ = self
            .connections
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }

    fn for_intake(&self, intake: &str, count: impl FnOnce(&mut IntakeCounts)) {
        if let Ok(mut map) = self.per_intake.lock() {
            count(map.entry(intake.to_string()).or_default());
        }
    }

    /// Counts what the outcome path decided for a journal of `bytes` to `intake`:
    /// the same verdict that writes its lines.
    pub fn verdict(&self, intake: &str, bytes: u64, verdict: &Verdict<'_>) {
        let now = epoch_secs();
        match *verdict {
            Verdict::Delivered { waited_ms } => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                self.last_delivery_at.store(now, Ordering::Relaxed);
                self.accept_to_delivered_seconds
                    .observe(waited_ms as f64 / 1000.0);
                self.for_intake(intake, |c| c.delivered += 1);
            }
            Verdict::SoftBounced { .. } => {
                self.soft_bounced.fetch_add(1, Ordering::Relaxed);
                self.last_soft_bounce_at.store(now, Ordering::Relaxed);
                self.for_intake(intake, |c| c.soft_bounced += 1);
            }
            Verdict::HardBounced { .. } | Verdict::Expired { .. } => {
                // Expiry counts as a hard bounce too (docs/DELIVERY.md, "The queue").
                if matches!(verdict, Verdict::Expired { .. }) {
                    self.expired.fetch_add(1, Ordering::Relaxed);
                }
                self.hard_bounced.fetch_add(1, Ordering::Relaxed);
                self.last_hard_bounce_at.store(now, Ordering::Relaxed);
                self.for_intake(intake, |c| c.hard_bounced += 1);
            }
        }
        if verdict.ends_journal() {
            self.journal_left(bytes);
        }
    }

    /// End of message, its spool write, and accept → delivered.
    pub fn latency_histograms(&self) -> (Histogram, Histogram, Histogram) {
        (
            self.end_of_message_seconds.clone(),
            self.spool_write_seconds.clone(),
            self.accept_to_delivered_seconds.clone(),
        )
    }

    /// Counts a failed attempt by its class in the retry table.
    pub fn failure_class(&self, class: &'static str) {
        if let Ok(mut map) = self.failures.lock() {
            *map.entry(class).or_default() += 1;
        }
    }

    pub fn failures(&self) -> BTreeMap<&'static str, u64> {
        self.failures.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Remembers the latest failed attempt.
    pub fn failure(&self, mid: u64, error: &str) {
        let at = epoch_secs();
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(LastError {
                at,
                mid,
                error: error.to_string(),
            });
        }
    }

    pub fn per_intake(&self) -> BTreeMap<String, IntakeCounts> {
        self.per_intake
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    pub fn last_error(&self) -> Option<LastError> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }

    pub fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn too_large(&self) {
        self.too_large.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one message's outcome.
    pub fn message(&self, outcome: Outcome) {
        self.messages[outcome.index()].fetch_add(1, Ordering::Relaxed);
        self.last_message_at.store(epoch_secs(), Ordering::Relaxed);
    }

    /// Messages by outcome since start, every outcome present.
    pub fn messages(&self) -> BTreeMap<String, u64> {
        Outcome::ALL
            .iter()
            .map(|o| {
                let n = self.messages[o.index()].load(Ordering::Relaxed);
                (o.label().to_string(), n)
            })
            .collect()
    }

    /// Takes a full milter session if fewer than `limit` are open; the session ends
    /// when the slot is dropped. `None`: busy, counted.
    pub fn milter_session(self: &Arc<Self>, limit: usize) -> Option<MilterSlot> {
        self.milter_connection_limit
            .store(limit as u64, Ordering::Relaxed);
        let taken =
            self.milter_connections
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < limit as u64).then_some(n + 1)
                });
        match taken {
            Ok(_) => Some(MilterSlot(self.clone())),
            Err(_) => {
                self.milter_busy_connections.fetch_add(1, Ordering::Relaxed);
                self.last_busy_at.store(epoch_secs(), Ordering::Relaxed);
                None
            }
        }
    }

    pub fn accept_error(&self, socket: Socket) {
        self.accept_errors[socket as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn accept_errors(&self, socket: Socket) -> u64 {
        self.accept_errors[socket as usize].load(Ordering::Relaxed)
    }

    pub fn connection_refused(&self, socket: Socket) {
        self.connections_refused[socket as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn connections_refused(&self, socket: Socket) -> u64 {
        self.connections_refused[socket as usize].load(Ordering::Relaxed)
    }

    /// (full sessions open now, connections answered as busy since start)
    pub fn milter_connections(&self) -> (u64, u64) {
        (
            self.milter_connections.load(Ordering::Relaxed),
            self.milter_busy_connections.load(Ordering::Relaxed),
        )
    }

    /// Records milter.max_connections for `status` and the metrics before the first
    /// connection comes (each connection records the limit it met).
    pub fn set_milter_connection_limit(&self, limit: usize) {
        self.milter_connection_limit
            .store(limit as u64, Ordering::Relaxed);
    }

    pub fn milter_connection_limit(&self) -> u64 {
        self.milter_connection_limit.load(Ordering::Relaxed)
    }

    /// (last soft bounce, last hard bounce, last busy connection), as [`Self::last_activity`].
    pub fn last_trouble(&self) -> (u64, u64, u64) {
        (
            self.last_soft_bounce_at.load(Ordering::Relaxed),
            self.last_hard_bounce_at.load(Ordering::Relaxed),
            self.last_busy_at.load(Ordering::Relaxed),
        )
    }

    /// (last message, last delivery) in seconds since the Unix epoch, 0 for never.
    pub fn last_activity(&self) -> (u64, u64) {
        (
            self.last_message_at.load(Ordering::Relaxed),
            self.last_delivery_at.load(Ordering::Relaxed),
        )
    }
}

/// One full milter session; its drop frees the place, however the session ends.
#[derive(Debug)]
pub struct MilterSlot(Arc<Stats>);

impl Drop for MilterSlot {
    fn drop(&mut self) {
        let _ = self
            .0
            .milter_connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tdclog::{BadHost, Log};

    #[test]
    fn gauges_never_go_below_zero_and_expiry_is_a_hard_bounce() {
        let stats = Stats::default();
        stats.journal_queued(100);
        stats.journal_left(100);
        stats.journal_left(100);
        stats.connection_closed();
        stats.journal_queued(10);
        stats.journal_queued(20);
        stats.verdict(
            "i@intake.test",
            10,
            &Verdict::Expired { lifetime_secs: 120 },
        );
        stats.verdict("j@intake.test", 20, &Verdict::Delivered { waited_ms: 5 });
        let s = stats.snapshot();
        assert_eq!((s.active, s.active_bytes, s.connections), (0, 0, 0));
        assert_eq!((s.expired, s.hard_bounced, s.delivered), (1, 1, 1));
        let per = stats.per_intake();
        assert_eq!(per["i@intake.test"].hard_bounced, 1);
        assert_eq!(per["j@intake.test"].delivered, 1);
        stats.failure(3, "RCPT TO: server replied 452");
        assert_eq!(stats.last_error().map(|e| e.mid), Some(3));
    }

    /// The counters and the lines of each verdict come from the same value; this
    /// holds them to what an administrator reads: each "successfully delivered" line
    /// is one delivered, each "Hard Bounced." or "TLS Error." line one hard bounce,
    /// each "soft bounced" line one soft bounce, each "removed from the.tdc.queue"
    /// line one expiry, and each "Message finished" one journal leaving the queue.
    #[test]
    fn every_verdict_counts_what_its_lines_say() {
        let bad_host = BadHost {
            name: "intake.test",
            qtype: "MX",
            reason: "NXDomain",
        };
        let verdicts = [
            Verdict::Delivered { waited_ms: 40 },
            Verdict::SoftBounced { delay_secs: 5 },
            Verdict::HardBounced {
                tls: false,
                bad_host: None,
            },
            Verdict::HardBounced {
                tls: true,
                bad_host: None,
            },
            Verdict::HardBounced {
                tls: false,
                bad_host: Some(bad_host),
            },
            Verdict::Expired { lifetime_secs: 120 },
        ];
        for verdict in verdicts {
            let stats = Stats::default();
            stats.journal_queued(100);
            let log = Log::memory();
            verdict.each_event(7, |event| log.event(event));
            let lines = log.lines();
            stats.verdict("i@intake.test", 100, &verdict);
            let count = |words: &[&str]| {
                lines
                    .iter()
                    .filter(|l| words.iter().any(|w| l.contains(w)))
                    .count() as u64
            };
            let s = stats.snapshot();
            let per = stats.per_intake()["i@intake.test"];
            let seen = (
                s.delivered,
                s.soft_bounced,
                s.hard_bounced,
                s.expired,
                1 - s.active,
            );
            let said = (
                count(&["successfully delivered"]),
                count(&["soft bounced"]),
                count(&["Hard Bounced.", "TLS Error."]),
                count(&["removed from the.tdc.queue"]),
                count(&["Message finished"]),
            );
            assert_eq!(seen, said, "{verdict:?}: {lines:#?}");
            assert_eq!(
                (per.delivered, per.soft_bounced, per.hard_bounced),
                (s.delivered, s.soft_bounced, s.hard_bounced),
                "{verdict:?}"
            );
        }
    }

    #[test]
    fn milter_sessions_past_the_limit_are_busy_and_a_dropped_slot_frees_its_place() {
        let stats = Arc::new(Stats::default());
        let first = stats.milter_session(2);
        let second = stats.milter_session(2);
        assert!(first.is_some() && second.is_some());
        assert!(stats.milter_session(2).is_none());
        assert_eq!(stats.milter_connections(), (2, 1));
        drop(first);
        assert_eq!(stats.milter_connections(), (1, 1));
        assert!(stats.milter_session(2).is_some());
    }

    #[test]
    fn each_outcome_counts_under_its_own_label() {
        let stats = Stats::default();
        stats.message(Outcome::Journaled);
        stats.message(Outcome::Loop);
        stats.message(Outcome::Loop);
        let m = stats.messages();
        assert_eq!(m.len(), Outcome::ALL.len());
        assert_eq!((m["journaled"], m["loop"], m["not_clean"]), (1, 2, 0));
        assert_ne!(stats.last_activity().0, 0);
    }
}
