//! Message tracking: the lines of each journal's life (queued, each attempt, outcome),
//! kept in a bounded store and found by MID, MTA queue ID or Message-ID.
//!
//! The store sees every log event through a [`Tap`], so tracking and the mail log
//! can never tell different stories. Journals still in the spool at start are taken
//! back with a "recovered" line, so their tracking survives a restart.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::tdclog::{Event, Tap};

/// How many journals the store keeps by default; the oldest are dropped first.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// How long a journal's lines are kept by default.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Lines kept per journal: the first ones (how it was queued and first tried) and
/// the latest ones (how it ended), with one line saying how many were left out in
/// between. A journal that waits out a long intake outage is tried again and again;
/// keeping all its lines cost about 6 KiB a journal (`integration/bench`, 10,000
/// queued), the store's whole bound.
const HEAD_LINES: usize = 4;
const TAIL_LINES: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackedLine {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub mid: u64,
    pub queue_id: String,
    pub message_id: String,
    pub intake: String,
    pub lines: Vec<TrackedLine>,
    /// Lines left out between the first and the latest ones.
    #[serde(default)]
    pub omitted: u64,
}

#[derive(Default)]
struct Store {
    journals: HashMap<u64, Journal>,
    /// MIDs oldest first, for eviction.
    order: VecDeque<u64>,
}

pub struct Tracker {
    capacity: usize,
    max_age: Duration,
    store: Mutex<Store>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The MID an event is about, if any.
fn mid_of(event: &Event<'_>) -> Option<u64> {
    match event {
        Event::Enqueued { mid, .. }
        | Event::RecoveredJournal { mid, .. }
        | Event::DeliveryStart { mid, .. }
        | Event::Delivered { mid }
        | Event::Finished { mid }
        | Event::TlsFailed { mid }
        | Event::HardBounced { mid }
        | Event::Bounced { mid, .. }
        | Event::FailureDetail { mid, .. }
        | Event::RetryScheduled { mid, .. }
        | Event::Expired { mid, .. }
        | Event::SpoolFailure { mid, .. } => Some(*mid),
        _ => None,
    }
}

impl Tracker {
    pub fn new(capacity: usize, max_age: Duration) -> Tracker {
        Tracker {
            capacity: capacity.max(1),
            max_age,
            store: Mutex::new(Store::default()),
        }
    }

    /// Journals whose MID, queue ID or Message-ID (brackets optional) is `key`.
    pub fn find(&self, key: &str) -> Vec<Journal> {
        let key = key.trim();
        let bare = key.trim_start_matches('<').trim_end_matches('>');
        let Ok(store) = self.store.lock() else {
            return Vec::new();
        };
        let mid: Option<u64> = key.parse().ok();
        let mut found: Vec<Journal> = store
            .journals
            .values()
            .filter(|j| {
                Some(j.mid) == mid
                    || (!key.is_empty() && j.queue_id.eq_ignore_ascii_case(key))
                    || (!bare.is_empty()
                        && j.message_id.trim_start_matches('<').trim_end_matches('>') == bare)
            })
            .cloned()
            .collect();
        found.sort_by_key(|j| j.mid);
        found
    }
}

impl Tap for Tracker {
    fn event(&self, event: &Event<'_>, line: &str) {
        let Some(mid) = mid_of(event) else { return };
        let Ok(mut store) = self.store.lock() else {
            return;
        };
        let store = &mut *store;
        if !store.journals.contains_key(&mid) {
            let (queue_id, message_id, intake) = match event {
                Event::Enqueued {
                    queue_id,
                    message_id,
                    intake,
                    ..
                }
                | Event::RecoveredJournal {
                    queue_id,
                    message_id,
                    intake,
                    ..
                } => (
                    queue_id.to_string(),
                    message_id.to_string(),
                    intake.to_string(),
                ),
                // Lines about a journal we never saw queued (evicted, or from before
                // a restart without its recovery line) are not worth a stub entry.
                _ => return,
            };
            // Oldest first: over the count, or queued longer ago than the age limit.
            let oldest_kept = now().saturating_sub(self.max_age.as_secs());
            while let Some(&old) = store.order.front() {
                let too_old = store
                    .journals
                    .get(&old)
                    .and_then(|j| j.lines.first())
                    .is_some_and(|l| l.at < oldest_kept);
                if store.order.len() < self.capacity && !too_old {
                    break;
                }
                store.order.pop_front();
                store.journals.remove(&old);
            }
            store.order.push_back(mid);
            store.journals.insert(
                mid,
                Journal {
                    mid,
                    queue_id,
                    message_id,
                    intake,
                    lines: Vec::new(),
                    omitted: 0,
                },
            );
        }
        if let Some(journal) = store.journals.get_mut(&mid) {
            let at = now();
            journal.push(at, line.to_string());
            // The appliance's message-tracking wording for a delivered journal.
            if matches!(event, Event::Delivered { .. }) {
                journal.push(
                    at,
                    format!(
                        "TDC: Message {mid} was successfully delivered for scanning with Cisco Secure Email Threat Defense."
                    ),
                );
            }
        }
    }
}

impl Journal {
    /// Appends a line, leaving out the oldest line after the first HEAD_LINES once
    /// the journal has HEAD_LINES + TAIL_LINES.
    fn push(&mut self, at: u64, text: String) {
        if self.lines.len() == HEAD_LINES + TAIL_LINES {
            self.lines.insert(
                HEAD_LINES,
                TrackedLine {
                    at,
                    text: String::new(),
                },
            );
        }
        if self.lines.len() > HEAD_LINES + TAIL_LINES {
            self.lines.remove(HEAD_LINES + 1);
            self.omitted += 1;
            self.lines[HEAD_LINES].text = format!("({} lines left out)", self.omitted);
        }
        self.lines.push(TrackedLine { at, text });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enqueue(t: &Tracker, mid: u64, qid: &str, id: &str) {
        let e = Event::Enqueued {
            mid,
            message_id: id,
            intake: "i@intake.test",
            queue_id: qid,
        };
        t.event(&e, &e.to_string());
    }

    #[test]
    fn finds_by_mid_queue_id_and_message_id() {
        let t = Tracker::new(10, DEFAULT_MAX_AGE);
        enqueue(&t, 1, "Q1", "<a@x>");
        enqueue(&t, 2, "Q1", "<a@x>");
        enqueue(&t, 3, "Q3", "<b@x>");
        let d = Event::Delivered { mid: 1 };
        t.event(&d, &d.to_string());
        assert_eq!(t.find("1").len(), 1);
        assert_eq!(
            t.find("q1").iter().map(|j| j.mid).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(t.find("b@x")[0].mid, 3);
        assert_eq!(t.find("<b@x>")[0].mid, 3);
        assert!(t.find("nothing").is_empty());
        let found = t.find("1");
        let lines: Vec<&str> = found[0].lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[2],
            "TDC: Message 1 was successfully delivered for scanning with Cisco Secure Email Threat Defense."
        );
    }

    #[test]
    fn the_store_is_bounded_oldest_first() {
        let t = Tracker::new(2, DEFAULT_MAX_AGE);
        enqueue(&t, 1, "Q1", "");
        enqueue(&t, 2, "Q2", "");
        enqueue(&t, 3, "Q3", "");
        assert!(t.find("1").is_empty());
        assert_eq!(t.find("3").len(), 1);
        // Lines about an evicted journal do not bring it back.
        let d = Event::Delivered { mid: 1 };
        t.event(&d, &d.to_string());
        assert!(t.find("1").is_empty());
    }

    #[test]
    fn journals_older_than_the_age_limit_are_dropped() {
        let t = Tracker::new(100, Duration::ZERO);
        enqueue(&t, 1, "Q1", "");
        // Backdate the first journal's lines past any age limit.
        if let Ok(mut store) = t.store.lock() {
            if let Some(j) = store.journals.get_mut(&1) {
                j.lines[0].at = 0;
            }
        }
        enqueue(&t, 2, "Q2", "");
        assert!(t.find("1").is_empty());
        assert_eq!(t.find("2").len(), 1);
    }

    #[test]
    fn a_journal_keeps_its_first_and_latest_lines() {
        let t = Tracker::new(10, Duration::from_secs(3600));
        enqueue(&t, 7, "q7", "<m7@x>");
        for n in 0..100 {
            let e = Event::RetryScheduled {
                mid: 7,
                delay_secs: n,
            };
            t.event(&e, &format!("attempt {n}"));
        }
        let e = Event::Finished { mid: 7 };
        t.event(&e, "the end");
        let j = &t.find("7")[0];
        assert_eq!(j.lines.len(), HEAD_LINES + 1 + TAIL_LINES);
        let texts: Vec<&str> = j.lines.iter().map(|l| l.text.as_str()).collect();
        assert!(texts[0].contains("enqueued"), "{texts:?}");
        assert_eq!(
            texts[1..HEAD_LINES],
            ["attempt 0", "attempt 1", "attempt 2"]
        );
        assert_eq!(j.omitted, 101 - (HEAD_LINES as u64 - 1) - TAIL_LINES as u64);
        assert_eq!(texts[HEAD_LINES], format!("({} lines left out)", j.omitted));
        assert_eq!(texts.last(), Some(&"the end"));
        assert_eq!(texts[texts.len() - 2], "attempt 99");
    }
}
