//! Messages that were not journaled, with the reason: kept so that `track` by queue
//! ID or Message-ID can say why a message has no journal, for the expected reasons
//! too (which have no log line). Bounded like the journals' store: by count and age.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::outcome::{Outcome, Skip};

/// Longest queue ID or Message-ID kept; longer ones are cut, with a marker. A sender
/// writes the Message-ID, and Postfix lets a header grow to 100 KiB.
const MAX_ID_BYTES: usize = 256;
const CUT_MARKER: &str = "…(cut)";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotJournaled {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub queue_id: String,
    pub message_id: String,
    pub outcome: Outcome,
    pub reason: String,
}

pub(super) struct Skipped {
    capacity: usize,
    max_age: Duration,
    kept: Mutex<VecDeque<NotJournaled>>,
}

impl Skipped {
    pub(super) fn new(capacity: usize, max_age: Duration) -> Skipped {
        Skipped {
            capacity: capacity.max(1),
            max_age,
            kept: Mutex::new(VecDeque::new()),
        }
    }

    pub(super) fn keep(&self, at: u64, queue_id: &str, message_id: &str, skip: &Skip) {
        let Ok(mut kept) = self.kept.lock() else {
            return;
        };
        let oldest_kept = at.saturating_sub(self.max_age.as_secs());
        while kept
            .front()
            .is_some_and(|m| kept.len() >= self.capacity || m.at < oldest_kept)
        {
            kept.pop_front();
        }
        kept.push_back(NotJournaled {
            at,
            queue_id: capped(queue_id),
            message_id: capped(message_id),
            outcome: skip.outcome,
            reason: capped(&skip.reason),
        });
    }

    /// Messages whose queue ID (any case) or Message-ID (brackets optional) is `key`.
    pub(super) fn find(&self, key: &str) -> Vec<NotJournaled> {
        let key = key.trim();
        let bare = unbracket(key);
        if key.is_empty() {
            return Vec::new();
        }
        let Ok(kept) = self.kept.lock() else {
            return Vec::new();
        };
        kept.iter()
            .filter(|m| {
                m.queue_id.eq_ignore_ascii_case(key)
                    || (!bare.is_empty() && unbracket(&m.message_id) == bare)
            })
            .cloned()
            .collect()
    }
}

fn unbracket(id: &str) -> &str {
    id.trim_start_matches('<').trim_end_matches('>')
}

fn capped(text: &str) -> String {
    if text.len() <= MAX_ID_BYTES {
        return text.to_string();
    }
    let mut end = MAX_ID_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{CUT_MARKER}", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn found_by_queue_id_or_message_id_and_bounded_by_count_and_age() {
        let s = Skipped::new(2, Duration::from_secs(3600));
        let skip = Skip::new(Outcome::Loop, "loop: envelope sender is journal.sender");
        s.keep(10_000, "4AbC", "<a@x>", &skip);
        s.keep(10_001, "5DeF", "<b@x>", &skip);
        assert_eq!(s.find("4abc").len(), 1);
        assert_eq!(s.find("b@x")[0].queue_id, "5DeF");
        assert_eq!(s.find("b@x")[0].outcome, Outcome::Loop);
        s.keep(10_002, "6GhI", "<c@x>", &skip);
        assert!(s.find("4AbC").is_empty(), "over the count: the oldest goes");
        s.keep(20_000, "7JkL", "<d@x>", &skip);
        assert!(s.find("5DeF").is_empty() && s.find("6GhI").is_empty());
        assert_eq!(s.find("7JkL").len(), 1);
        assert!(s.find("").is_empty());
    }

    #[test]
    fn a_huge_message_id_is_cut_with_a_marker() {
        let s = Skipped::new(5, Duration::from_secs(3600));
        let id = format!("<{}@x>", "é".repeat(100_000));
        s.keep(1, "Q", &id, &Skip::new(Outcome::NotClean, "r"));
        let kept = &s.find("Q")[0];
        assert!(kept.message_id.len() <= MAX_ID_BYTES + CUT_MARKER.len());
        assert!(kept.message_id.ends_with(CUT_MARKER));
    }
}
