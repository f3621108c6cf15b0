//! Message tracking: the lines of each journal's life (queued, each attempt, outcome),
//! kept in a bounded store and found by MID, MTA queue ID or Message-ID.
//!
//! The store sees every log event through a [`Tap`], so tracking and the mail log
//! can never tell different stories. Journals still in the spool at start are taken
//! back with a "recovered" line, so their tracking survives a restart.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::now_secs as now;
use crate::outcome::Skip;
use crate::tdclog::{Event, Ids, Step, Tap};

mod skipped;
pub use skipped::NotJournaled;

/// How many journals the store keeps by default; the oldest are dropped first.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// How long a journal's lines are kept by default.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Lines kept per journal: the first ones (how it was queued and first tried) and
/// the latest ones (how it ended), with one line saying how many were left out in
/// between. A journal that waits out a long intake outage is tried again and again,
/// three lines a try; keeping all its lines let one journal grow without bound. Even
/// so bounded, 10,000 journals at their 17 lines, kept as formatted text, cost about
/// 2,970 bytes and 21 allocations a journal, the daemon's biggest memory; kept as
/// `Line`s, about 730 bytes and 3 allocations (the ignored test `memory_per_journal`).
const HEAD_LINES: usize = 4;
const TAIL_LINES: usize = 12;
/// Distinct free texts (failure details, bounce responses, spool errors, intake
/// addresses) the store shares between journals. During an outage every journal fails
/// with the same few texts, so a few suffice; the bound keeps texts no journal shares
/// any more (a reply quoting a queue ID, say) from piling up.
const SHARED_TEXTS: usize = 256;

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

/// A kept line is the event itself, the catalogue's [`Step`]: its wording is rendered
/// by `tdclog` when the line is asked for, so it is the mail log's to the byte, and a
/// line costs `size_of::<Line>()` (32 bytes) instead of its 20 to 230 bytes of text.
struct Line {
    /// Seconds since the Unix epoch.
    at: u64,
    step: KeptStep,
}

/// A step as kept: texts shared, and the IDs of a queued line left out when they are
/// the journal's (stored once in [`Kept`]). Other IDs than the journal's (a MID
/// handed out twice) are kept with their line.
type KeptStep = Step<Text, Option<Box<Ids<Box<str>>>>>;

/// A free text a line quotes (failure detail, bounce response, spool error, intake
/// address), one allocation however many lines quote it. One word wide, so that a
/// line with a text and a DCID still fits in 32 bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Text(Arc<Box<str>>);

impl Borrow<str> for Text {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// One journal's lines: up to HEAD_LINES + TAIL_LINES, and the count of those left out
/// in between.
struct Kept {
    queue_id: Box<str>,
    message_id: Box<str>,
    intake: Text,
    lines: Vec<Line>,
    omitted: u64,
    /// When the first line was left out: the time of the "(N lines left out)" line.
    omitted_at: u64,
}

/// Free texts, shared by the lines that quote them.
#[derive(Default)]
struct Interner {
    texts: HashSet<Text>,
}

#[derive(Default)]
struct Store {
    journals: HashMap<u64, Kept>,
    /// MIDs oldest first, for eviction.
    order: VecDeque<u64>,
    texts: Interner,
}

pub struct Tracker {
    capacity: usize,
    max_age: Duration,
    store: Mutex<Store>,
    /// Messages not journaled, and why.
    skipped: skipped::Skipped,
}

impl Tracker {
    pub fn new(capacity: usize, max_age: Duration) -> Tracker {
        Tracker {
            capacity: capacity.max(1),
            max_age,
            store: Mutex::new(Store::default()),
            skipped: skipped::Skipped::new(capacity, max_age),
        }
    }

    /// Keeps the message that `skip` says was not journaled, for `track`.
    pub fn not_journaled(&self, queue_id: &str, message_id: &str, skip: &Skip) {
        self.skipped.keep(now(), queue_id, message_id, skip);
    }

    /// Messages not journaled whose queue ID or Message-ID is `key`.
    pub fn find_not_journaled(&self, key: &str) -> Vec<NotJournaled> {
        self.skipped.find(key)
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
            .iter()
            .filter(|(&m, j)| {
                Some(m) == mid
                    || (!key.is_empty() && j.queue_id.eq_ignore_ascii_case(key))
                    || (!bare.is_empty()
                        && j.message_id.trim_start_matches('<').trim_end_matches('>') == bare)
            })
            .map(|(&m, j)| j.journal(m))
            .collect();
        found.sort_by_key(|j| j.mid);
        found
    }
}

impl Tap for Tracker {
    fn event(&self, event: &Event<'_>) {
        let Event::Journal { mid, step } = event else {
            return;
        };
        let mid = *mid;
        let Ok(mut store) = self.store.lock() else {
            return;
        };
        let Store {
            journals,
            order,
            texts,
        } = &mut *store;
        if !journals.contains_key(&mid) {
            let (Step::Enqueued(ids) | Step::Recovered(ids)) = step else {
                // Lines about a journal we never saw queued (evicted, or from before
                // a restart without its recovery line) are not worth a stub entry.
                return;
            };
            // Oldest first: over the count, or queued longer ago than the age limit.
            let oldest_kept = now().saturating_sub(self.max_age.as_secs());
            while let Some(&old) = order.front() {
                let too_old = journals
                    .get(&old)
                    .and_then(|j| j.lines.first())
                    .is_some_and(|l| l.at < oldest_kept);
                if order.len() < self.capacity && !too_old {
                    break;
                }
                order.pop_front();
                journals.remove(&old);
            }
            order.push_back(mid);
            journals.insert(
                mid,
                Kept {
                    queue_id: ids.queue_id.into(),
                    message_id: ids.message_id.into(),
                    intake: texts.share(ids.intake),
                    lines: Vec::new(),
                    omitted: 0,
                    omitted_at: 0,
                },
            );
        }
        if let Some(journal) = journals.get_mut(&mid) {
            let step = step.clone().map(
                |text| texts.share(text),
                |ids| (ids != journal.ids()).then(|| Box::new(ids.map(Box::from))),
            );
            journal.push(now(), step);
        }
    }
}

impl Kept {
    /// Appends a line, leaving out the oldest line after the first HEAD_LINES once
    /// the journal has HEAD_LINES + TAIL_LINES.
    fn push(&mut self, at: u64, step: KeptStep) {
        if self.lines.len() >= HEAD_LINES + TAIL_LINES {
            self.lines.remove(HEAD_LINES);
            if self.omitted == 0 {
                self.omitted_at = at;
            }
            self.omitted += 1;
        }
        self.lines.push(Line { at, step });
    }

    fn ids(&self) -> Ids<&str> {
        Ids {
            message_id: &self.message_id,
            intake: &self.intake.0,
            queue_id: &self.queue_id,
        }
    }

    /// A line's text, worded by the catalogue.
    fn text(&self, mid: u64, step: &KeptStep) -> String {
        let step = step.as_ref().map(
            |text| &**text.0,
            |other| other.as_deref().map_or(self.ids(), Ids::as_str),
        );
        Event::journal(mid, step).to_string()
    }

    /// The journal as `track` shows it.
    fn journal(&self, mid: u64) -> Journal {
        let mut lines = Vec::with_capacity(self.lines.len() + 1);
        for (n, line) in self.lines.iter().enumerate() {
            if n == HEAD_LINES && self.omitted > 0 {
                lines.push(TrackedLine {
                    at: self.omitted_at,
                    text: format!("({} lines left out)", self.omitted),
                });
            }
            lines.push(TrackedLine {
                at: line.at,
                text: self.text(mid, &line.step),
            });
        }
        Journal {
            mid,
            queue_id: self.queue_id.to_string(),
            message_id: self.message_id.to_string(),
            intake: self.intake.0.to_string(),
            lines,
            omitted: self.omitted,
        }
    }
}

impl Interner {
    /// `text`, shared with every other holder of the same text while the interner
    /// still has it.
    fn share(&mut self, text: &str) -> Text {
        if let Some(shared) = self.texts.get(text) {
            return shared.clone();
        }
        if self.texts.len() >= SHARED_TEXTS {
            // Texts no kept line holds any more go first. If most are still held,
            // start over rather than sweep again at the next new text: held texts stay
            // valid where they are, and the next journals share new copies.
            self.texts.retain(|t| Arc::strong_count(&t.0) > 1);
            if self.texts.len() >= SHARED_TEXTS / 2 {
                self.texts.clear();
            }
        }
        let shared = Text(Arc::new(text.into()));
        self.texts.insert(shared.clone());
        shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enqueue(t: &Tracker, mid: u64, qid: &str, id: &str) {
        let e = Event::journal(
            mid,
            Step::Enqueued(Ids {
                message_id: id,
                intake: "i@intake.test",
                queue_id: qid,
            }),
        );
        t.event(&e);
    }

    /// What the log does: the event with its own wording.
    fn log(t: &Tracker, e: &Event<'_>) {
        t.event(e);
    }

    fn texts(j: &Journal) -> Vec<&str> {
        j.lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn finds_by_mid_queue_id_and_message_id() {
        let t = Tracker::new(10, DEFAULT_MAX_AGE);
        enqueue(&t, 1, "Q1", "<a@x>");
        enqueue(&t, 2, "Q1", "<a@x>");
        enqueue(&t, 3, "Q3", "<b@x>");
        assert_eq!(t.find("1").len(), 1);
        assert_eq!(
            t.find("q1").iter().map(|j| j.mid).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(t.find("b@x")[0].mid, 3);
        assert_eq!(t.find("<b@x>")[0].mid, 3);
        assert!(t.find("nothing").is_empty());
    }

    #[test]
    fn the_appliance_tracking_line_is_tracked_and_not_logged() {
        let t = Arc::new(Tracker::new(10, DEFAULT_MAX_AGE));
        let log = crate::tdclog::Log::memory();
        let tapped = log.with_tap(t.clone());
        let ids = Ids {
            message_id: "<a@x>",
            intake: "i@intake.test",
            queue_id: "Q1",
        };
        tapped.event(Event::journal(1, Step::Enqueued(ids)));
        tapped.event(Event::journal(1, Step::Delivered));
        tapped.event(Event::journal(1, Step::DeliveredForScanning));
        let delivered = "TDC: MID 1 successfully delivered for scanning with Cisco Secure Email Threat Defense.";
        let tracking = "TDC: Message 1 was successfully delivered for scanning with Cisco Secure Email Threat Defense.";
        let found = t.find("1");
        assert_eq!(texts(&found[0])[1..], [delivered, tracking]);
        let logged = log.lines();
        assert_eq!(logged.len(), 2, "{logged:?}");
        assert_eq!(logged[1], format!("Info: {delivered}"));
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
        log(&t, &Event::journal(1, Step::Delivered));
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
        let retry = |n| Event::journal(7, Step::RetryScheduled { delay_secs: n }).to_string();
        for n in 0..100 {
            log(
                &t,
                &Event::journal(7, Step::RetryScheduled { delay_secs: n }),
            );
        }
        log(&t, &Event::journal(7, Step::Finished));
        let j = &t.find("7")[0];
        assert_eq!(j.lines.len(), HEAD_LINES + 1 + TAIL_LINES);
        let texts = texts(j);
        assert!(texts[0].contains("enqueued"), "{texts:?}");
        assert_eq!(texts[1..HEAD_LINES], [retry(0), retry(1), retry(2)]);
        assert_eq!(j.omitted, 101 - (HEAD_LINES as u64 - 1) - TAIL_LINES as u64);
        assert_eq!(texts[HEAD_LINES], format!("({} lines left out)", j.omitted));
        assert_eq!(texts.last(), Some(&"Message finished MID 7 done"));
        assert_eq!(texts[texts.len() - 2], retry(99));
    }

    #[test]
    fn the_left_out_line_is_dated_when_lines_were_first_left_out() {
        let t = Tracker::new(10, DEFAULT_MAX_AGE);
        enqueue(&t, 7, "q7", "");
        for n in 0..(HEAD_LINES + TAIL_LINES) as u64 - 1 {
            log(
                &t,
                &Event::journal(7, Step::RetryScheduled { delay_secs: n }),
            );
        }
        // Date the lines so far, to tell them from the one that overflows.
        if let Ok(mut store) = t.store.lock() {
            if let Some(j) = store.journals.get_mut(&7) {
                for (n, line) in j.lines.iter_mut().enumerate() {
                    line.at = n as u64;
                }
            }
        }
        assert_eq!(t.find("7")[0].omitted, 0);
        log(&t, &Event::journal(7, Step::Finished));
        let first = t.find("7").remove(0);
        assert_eq!(first.omitted, 1);
        let left_out_at = first.lines[HEAD_LINES].at;
        assert!(left_out_at > 1_000_000_000, "{left_out_at}");
        assert_eq!(first.lines[HEAD_LINES + 1].at, HEAD_LINES as u64 + 1);
        log(&t, &Event::journal(7, Step::Finished));
        let second = t.find("7").remove(0);
        assert_eq!(second.omitted, 2);
        assert_eq!(second.lines[HEAD_LINES].at, left_out_at);
        assert_eq!(second.lines[HEAD_LINES].text, "(2 lines left out)");
    }

    #[test]
    fn every_tracked_line_reads_as_the_log_line() {
        let t = Tracker::new(10, DEFAULT_MAX_AGE);
        let odd_id = "<odd'\"\\x0A id\r\n\u{0}\u{7f}é\u{1b}[31m@x y>";
        let detail =
            "RCPT TO: server replied 451 4.3.0 \\ later\r\nInfo: TDC: MID 9 forged\t\u{85}";
        let events = [
            Event::journal(41, Step::Enqueued(Ids { message_id: odd_id, intake: "33c48e-27xp9\n-05ecb4@beta.cmd.cisco.com", queue_id: "4b1C2d\\3E4F" })),
            Event::journal(41, Step::DeliveryStart { dcid: 17 }),
            Event::journal(41, Step::FailureDetail(detail)),
            Event::journal(41, Step::SpoolFailure("rename /var/spool/tdc-milter/active/41.1: No space left on device\n")),
            Event::journal(41, Step::RetryScheduled { delay_secs: 3600 }),
            Event::journal(41, Step::TlsFailed),
            Event::journal(41, Step::HardBounced),
            Event::journal(
                41,
                Step::Bounced {
                    dcid: u64::MAX,
                    response: "5.1.2 - Bad destination host ('000', ['DNS Hard Error looking up x\u{0} (MX) : NXDomain'])",
                },
            ),
            Event::journal(41, Step::Expired { lifetime_secs: 259_200 }),
            Event::journal(41, Step::Delivered),
            Event::journal(41, Step::DeliveredForScanning),
            Event::journal(41, Step::Finished),
            // Same IDs: kept without them, rendered with the journal's IDs.
            Event::journal(41, Step::Recovered(Ids { message_id: odd_id, intake: "33c48e-27xp9\n-05ecb4@beta.cmd.cisco.com", queue_id: "4b1C2d\\3E4F" })),
            // Other IDs than the journal's: kept with the line.
            Event::journal(41, Step::Enqueued(Ids { message_id: "<other@x>", intake: "other@intake.test", queue_id: "OTHER" })),
        ];
        let mut want = Vec::new();
        for e in &events {
            log(&t, e);
            want.push(e.to_string());
        }
        let recovered = Event::journal(
            42,
            Step::Recovered(Ids {
                message_id: "",
                intake: "i@intake.test",
                queue_id: "Q42",
            }),
        );
        log(&t, &recovered);

        let found = t.find("41");
        assert_eq!(found.len(), 1);
        assert_eq!(texts(&found[0]), want);
        assert_eq!(found[0].queue_id, "4b1C2d\\3E4F");
        assert_eq!(found[0].message_id, odd_id);
        assert_eq!(found[0].intake, "33c48e-27xp9\n-05ecb4@beta.cmd.cisco.com");
        assert_eq!(t.find(odd_id)[0].mid, 41);
        assert_eq!(t.find("4B1C2D\\3e4f")[0].mid, 41);
        assert_eq!(texts(&t.find("42")[0]), [recovered.to_string()]);
        assert!(want.contains(
            &"TDC: Message 41 was successfully delivered for scanning with Cisco Secure Email Threat Defense."
                .to_string()
        ));
        // Only the queued line with other IDs keeps IDs of its own.
        let store = t.store.lock().expect("store");
        let own_ids = store
            .journals
            .values()
            .flat_map(|j| &j.lines)
            .filter(|l| matches!(l.step, Step::Enqueued(Some(_)) | Step::Recovered(Some(_))))
            .count();
        assert_eq!(own_ids, 1);
    }

    /// The interned text of a journal's failure-detail line.
    fn detail_of(t: &Tracker, mid: u64) -> Option<Text> {
        let store = t.store.lock().ok()?;
        store
            .journals
            .get(&mid)?
            .lines
            .iter()
            .find_map(|l| match &l.step {
                Step::FailureDetail(d) => Some(d.clone()),
                _ => None,
            })
    }

    #[test]
    fn journals_failing_alike_share_one_text() {
        let t = Tracker::new(DEFAULT_CAPACITY, DEFAULT_MAX_AGE);
        for mid in 1..=1000 {
            enqueue(&t, mid, &format!("Q{mid}"), "");
            // A new String each time, as the queue makes one from each error.
            let detail = format!(
                "connect: {}",
                "connection refused by 203.0.113.25:25; ".repeat(8)
            );
            log(&t, &Event::journal(mid, Step::FailureDetail(&detail)));
        }
        let first = detail_of(&t, 1).expect("detail");
        for mid in 2..=1000 {
            let other = detail_of(&t, mid).expect("detail");
            assert!(Arc::ptr_eq(&first.0, &other.0), "MID {mid}");
        }
        // 1,000 lines, the interner, and `first` here.
        assert_eq!(Arc::strong_count(&first.0), 1002);
        let want = Event::journal(1000, Step::FailureDetail(&first.0)).to_string();
        assert_eq!(t.find("1000")[0].lines[1].text, want);
    }

    #[test]
    fn the_shared_texts_stay_bounded() {
        let t = Tracker::new(DEFAULT_CAPACITY, DEFAULT_MAX_AGE);
        let interned = |t: &Tracker| t.store.lock().map(|s| s.texts.texts.len()).unwrap_or(0);
        // Texts dropped with the lines that quoted them.
        enqueue(&t, 1, "Q1", "");
        for n in 0..10 * SHARED_TEXTS {
            let detail = format!("RCPT TO: server replied 451 try {n}");
            log(&t, &Event::journal(1, Step::FailureDetail(&detail)));
            assert!(interned(&t) <= SHARED_TEXTS, "after {n}");
        }
        // Texts all still quoted, each by its journal.
        for mid in 2..2 + 5 * SHARED_TEXTS as u64 {
            enqueue(&t, mid, &format!("Q{mid}"), "");
            let detail = format!("RCPT TO: server replied 451 journal {mid}");
            log(&t, &Event::journal(mid, Step::FailureDetail(&detail)));
            assert!(interned(&t) <= SHARED_TEXTS, "after MID {mid}");
        }
        // Texts let go by the interner still read right where they are kept.
        for mid in [2, 3, SHARED_TEXTS as u64, 1 + 5 * SHARED_TEXTS as u64] {
            let detail = format!("RCPT TO: server replied 451 journal {mid}");
            assert_eq!(
                t.find(&mid.to_string())[0].lines[1].text,
                Event::journal(mid, Step::FailureDetail(&detail)).to_string()
            );
        }
        let last = format!("RCPT TO: server replied 451 try {}", 10 * SHARED_TEXTS - 1);
        let lines = &t.find("1")[0].lines;
        assert_eq!(
            lines[lines.len() - 1].text,
            Event::journal(1, Step::FailureDetail(&last)).to_string()
        );
    }

    /// The store's size in the worst case: DEFAULT_CAPACITY journals, each at its
    /// HEAD_LINES + 1 + TAIL_LINES lines, failing with the same long text, beside
    /// what the same journals cost kept as formatted text. Heap bytes from sizes and
    /// capacities; the allocator's own overhead (about 16 bytes an allocation) is not
    /// in them. `cargo test --lib memory_per_journal -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn memory_per_journal() {
        use std::mem::size_of;
        /// Bytes of a hashbrown table: its buckets, a control byte each.
        fn table(capacity: usize, entry: usize) -> usize {
            let buckets = (capacity * 8 / 7).next_power_of_two();
            buckets * (entry + 1)
        }
        /// A shared text's two allocations: the two counts with the boxed text's
        /// pointer and length, and the text.
        fn shared(text: &str) -> usize {
            2 * size_of::<usize>() + size_of::<Box<str>>() + text.len()
        }

        let t = Tracker::new(DEFAULT_CAPACITY, DEFAULT_MAX_AGE);
        let detail = "RCPT TO: server replied 451 4.3.0 Temporary failure: the message intake is unavailable, please try again later (queue full, intake 33c48e-27xp9-05ecb4)";
        for mid in 1..=DEFAULT_CAPACITY as u64 {
            let qid = format!("4B1C{mid:06X}");
            let id = format!("<{mid}.20240216211922.4B1C2D3E4F@sender.example.com>");
            log(
                &t,
                &Event::journal(
                    mid,
                    Step::Enqueued(Ids {
                        message_id: &id,
                        intake: "33c48e-27xp9-05ecb4@beta.cmd.cisco.com",
                        queue_id: &qid,
                    }),
                ),
            );
            for n in 0..10 {
                log(
                    &t,
                    &Event::journal(mid, Step::DeliveryStart { dcid: mid * 10 + n }),
                );
                log(&t, &Event::journal(mid, Step::FailureDetail(detail)));
                log(
                    &t,
                    &Event::journal(mid, Step::RetryScheduled { delay_secs: 60 }),
                );
            }
        }

        let store = t.store.lock().expect("store");
        let mut compact = table(store.journals.capacity(), size_of::<(u64, Kept)>())
            + store.order.capacity() * size_of::<u64>()
            + table(store.texts.texts.capacity(), size_of::<Text>())
            + store
                .texts
                .texts
                .iter()
                .map(|s| shared(&s.0))
                .sum::<usize>();
        let mut compact_allocations = 3 + 2 * store.texts.texts.len();
        for j in store.journals.values() {
            assert_eq!(j.lines.len(), HEAD_LINES + TAIL_LINES);
            compact +=
                j.lines.capacity() * size_of::<Line>() + j.queue_id.len() + j.message_id.len();
            compact_allocations += 3;
            for line in &j.lines {
                if let Step::Enqueued(Some(ids)) | Step::Recovered(Some(ids)) = &line.step {
                    compact += size_of::<Ids<Box<str>>>()
                        + ids.message_id.len()
                        + ids.intake.len()
                        + ids.queue_id.len();
                    compact_allocations += 4;
                }
            }
        }

        // As formatted text: a Journal each, its lines' Vec grown by doubling to 17.
        let found: Vec<Journal> = store
            .journals
            .iter()
            .map(|(&mid, j)| j.journal(mid))
            .collect();
        let mut as_text = table(store.journals.capacity(), size_of::<(u64, Journal)>())
            + store.order.capacity() * size_of::<u64>();
        let mut as_text_allocations = 2;
        for j in &found {
            assert_eq!(j.lines.len(), HEAD_LINES + 1 + TAIL_LINES);
            as_text += j.lines.len().next_power_of_two() * size_of::<TrackedLine>()
                + j.queue_id.len()
                + j.message_id.len()
                + j.intake.len()
                + j.lines.iter().map(|l| l.text.len()).sum::<usize>();
            as_text_allocations += 4 + j.lines.len();
        }
        let n = store.journals.len();
        println!(
            "{n} journals of {} lines: as text {} bytes a journal ({} allocations), compact {} bytes a journal ({} allocations); size_of Line {}, Kept {}",
            HEAD_LINES + 1 + TAIL_LINES,
            as_text / n,
            as_text_allocations / n,
            compact / n,
            compact_allocations / n,
            size_of::<Line>(),
            size_of::<Kept>(),
        );
        assert!(compact < as_text);
    }
}
