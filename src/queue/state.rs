//! What is in the queue and what the scheduler decides from it, as plain data and
//! functions of it: which journals are queued, ready, in flight, due for a retry or
//! an expiry, how many connections each intake domain has and wants, and which
//! domains are backing off. Nothing here logs, counts, sleeps or touches the spool;
//! `Shared` holds this under its lock and acts on what it returns.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::record::Record;

/// New connection attempts to an unreachable intake back off from this...
const BACKOFF_START: Duration = Duration::from_secs(1);
/// ...doubling up to this (docs/DELIVERY.md, "Connections").
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The settings the queue works by.
#[derive(Debug, Clone)]
pub(super) struct Limits {
    pub lifetime: Duration,
    pub retry_delay: Duration,
    pub min_connections: usize,
    pub max_connections: usize,
    pub per_connection: usize,
    pub max_messages: usize,
    pub max_bytes: u64,
}

impl Limits {
    /// How many connections a domain's backlog wants: at least `min_connections` (or
    /// one per journal if fewer), more as the backlog grows, never above the maximum.
    pub fn wanted(&self, pending: usize) -> usize {
        let by_backlog = pending.div_ceil(self.per_connection);
        pending
            .min(self.min_connections)
            .max(by_backlog)
            .min(self.max_connections)
    }
}

/// One journal in the queue.
pub(super) struct Queued {
    pub record: Record,
    pub domain: String,
    pub deadline: Instant,
    pub in_flight: bool,
}

struct Backoff {
    until: Instant,
    delay: Duration,
}

#[derive(Default)]
pub(super) struct State {
    pub journals: HashMap<u64, Queued>,
    /// Journals ready for delivery, per intake domain, oldest first.
    ready: HashMap<String, VecDeque<u64>>,
    pub retry_at: BTreeSet<(Instant, u64)>,
    pub expiry: BTreeSet<(Instant, u64)>,
    /// Open (or opening) connection workers per domain.
    pub connections: HashMap<String, usize>,
    backoff: HashMap<String, Backoff>,
    pub bytes: u64,
    /// Journals being written to the spool, and their bytes: they count against
    /// queue.max_messages and queue.max_bytes from the check on, so that concurrent
    /// ends of message cannot each pass the check and together overshoot.
    pub reserved_journals: usize,
    pub reserved_bytes: u64,
}

/// What the scheduler found to do at one look.
#[derive(Default)]
pub(super) struct Plan {
    /// Journals past their lifetime, out of the queue: to be logged as expired.
    pub expired: Vec<Queued>,
    /// One entry per connection worker to start.
    pub starts: Vec<String>,
    /// When to look again, if anything is waiting for a time.
    pub next_wake: Option<Instant>,
}

impl State {
    /// Puts a spooled journal into the queue, ready now.
    pub fn admit(&mut self, record: Record, deadline: Instant) {
        let mid = record.mid;
        let domain = record.domain();
        self.bytes += record.size;
        self.expiry.insert((deadline, mid));
        self.ready.entry(domain.clone()).or_default().push_back(mid);
        self.journals.insert(
            mid,
            Queued {
                record,
                domain,
                deadline,
                in_flight: false,
            },
        );
    }

    /// Takes the journal out of the queue, wherever it waits.
    pub fn forget(&mut self, mid: u64) -> Option<Queued> {
        let queued = self.journals.remove(&mid)?;
        self.bytes = self.bytes.saturating_sub(queued.record.size);
        self.expiry.remove(&(queued.deadline, mid));
        if let Some(ready) = self.ready.get_mut(&queued.domain) {
            ready.retain(|m| *m != mid);
        }
        self.retry_at.retain(|(_, m)| *m != mid);
        Some(queued)
    }

    /// The next ready journal for a worker of `domain`, marked in flight.
    pub fn take(&mut self, domain: &str, now: Instant) -> Option<(Record, Instant)> {
        loop {
            let mid = self.ready.get_mut(domain)?.pop_front()?;
            if let Some(q) = self.journals.get_mut(&mid) {
                // Past its lifetime: the scheduler's expiry takes it, no attempt is made.
                if q.deadline <= now {
                    continue;
                }
                q.in_flight = true;
                return Some((q.record.clone(), q.deadline));
            }
        }
    }

    /// A journal in flight goes back to the head of its domain's line, untried.
    pub fn put_back(&mut self, mid: u64) {
        let Some(q) = self.journals.get_mut(&mid) else {
            return;
        };
        q.in_flight = false;
        let domain = q.domain.clone();
        let deadline = q.deadline;
        // The scheduler dropped the expiry of a journal in flight past its deadline;
        // back on the ground, it must expire like any other.
        self.expiry.insert((deadline, mid));
        self.ready.entry(domain).or_default().push_front(mid);
    }

    /// A journal in flight failed and is tried again at `at`, its attempts so far
    /// `attempts`.
    pub fn retry(&mut self, mid: u64, attempts: u32, at: Instant) {
        let Some(q) = self.journals.get_mut(&mid) else {
            return;
        };
        q.in_flight = false;
        q.record.attempts = attempts;
        // A retry due after the deadline never runs: expiry comes first. The scheduler
        // drops the expiry of a journal in flight past its deadline, and the deadline
        // may have passed since its worker looked: restore it, as `put_back` does, or
        // a journal whose retry comes too late would never leave the queue.
        let deadline = q.deadline;
        self.expiry.insert((deadline, mid));
        self.retry_at.insert((at, mid));
    }

    /// Journals waiting or in flight for a domain.
    pub fn pending(&self, domain: &str) -> usize {
        let ready = self.ready.get(domain).map_or(0, VecDeque::len);
        let in_flight = self
            .journals
            .values()
            .filter(|q| q.in_flight && q.domain == domain)
            .count();
        ready + in_flight
    }

    /// Whether a worker of `domain` that just finished a journal should carry on.
    pub fn still_wanted(&self, domain: &str, limits: &Limits) -> bool {
        let open = self.connections.get(domain).copied().unwrap_or(0);
        open <= limits.wanted(self.pending(domain))
    }

    /// A connection to `domain` could not be made: new ones wait, longer each time.
    pub fn back_off(&mut self, domain: &str, now: Instant) {
        let delay = self
            .backoff
            .get(domain)
            .map_or(BACKOFF_START, |b| (b.delay * 2).min(BACKOFF_MAX));
        self.backoff.insert(
            domain.to_string(),
            Backoff {
                until: now + delay,
                delay,
            },
        );
    }

    pub fn connected(&mut self, domain: &str) {
        self.backoff.remove(domain);
    }

    /// A worker of `domain` has ended.
    pub fn worker_ended(&mut self, domain: &str) {
        if let Some(n) = self.connections.get_mut(domain) {
            *n = n.saturating_sub(1);
        }
    }

    /// Housekeeping at `now`: due retries become ready, journals past their lifetime
    /// leave, and workers are counted in where the backlog wants them (none when
    /// `stopping`).
    pub fn plan(&mut self, now: Instant, limits: &Limits, stopping: bool) -> Plan {
        let mut plan = Plan::default();
        while let Some(&(due, mid)) = self.retry_at.first() {
            if due > now {
                break;
            }
            self.retry_at.pop_first();
            if let Some(domain) = self.journals.get(&mid).map(|q| q.domain.clone()) {
                self.ready.entry(domain).or_default().push_back(mid);
            }
        }
        let due: Vec<(Instant, u64)> = self
            .expiry
            .iter()
            .take_while(|(d, _)| *d <= now)
            .copied()
            .collect();
        for (deadline, mid) in due {
            // In flight: the worker's stages are capped by the deadline, and it reports
            // the expiry itself, or gives the journal back untried and `put_back`
            // restores the expiry.
            if self.journals.get(&mid).is_some_and(|q| !q.in_flight) {
                plan.expired.extend(self.forget(mid));
            } else {
                self.expiry.remove(&(deadline, mid));
            }
        }
        if !stopping {
            let mut total: usize = self.connections.values().sum();
            let domains: Vec<String> = self
                .ready
                .iter()
                .filter(|(_, r)| !r.is_empty())
                .map(|(d, _)| d.clone())
                .collect();
            for domain in domains {
                if self.backoff.get(&domain).is_some_and(|b| b.until > now) {
                    continue;
                }
                let ready = self.ready.get(&domain).map_or(0, VecDeque::len);
                let open = self.connections.get(&domain).copied().unwrap_or(0);
                let want = limits.wanted(self.pending(&domain));
                let room = limits.max_connections.saturating_sub(total);
                let new = want.saturating_sub(open).min(ready).min(room);
                for _ in 0..new {
                    plan.starts.push(domain.clone());
                }
                total += new;
                *self.connections.entry(domain).or_default() += new;
            }
        }
        let backoff_end = self
            .backoff
            .iter()
            .filter(|(d, b)| b.until > now && self.ready.get(*d).is_some_and(|r| !r.is_empty()))
            .map(|(_, b)| b.until)
            .min();
        plan.next_wake = [
            self.retry_at.first().map(|(t, _)| *t),
            self.expiry.first().map(|(t, _)| *t),
            backoff_end,
        ]
        .into_iter()
        .flatten()
        .min();
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            lifetime: Duration::from_secs(120),
            retry_delay: Duration::from_secs(5),
            min_connections: 2,
            max_connections: 10,
            per_connection: 100,
            max_messages: 1000,
            max_bytes: 1 << 30,
        }
    }

    fn record(mid: u64, intake: &str) -> Record {
        let mut record = Record::new(mid, "tdc@gw.test", intake, false, "Q", "");
        record.size = 10;
        record
    }

    #[test]
    fn connections_follow_the_backlog_within_the_bounds() {
        let l = limits();
        assert_eq!(l.wanted(0), 0);
        assert_eq!(l.wanted(1), 1, "no more connections than journals");
        assert_eq!(l.wanted(2), 2);
        assert_eq!(l.wanted(150), 2, "min_connections carry 200");
        assert_eq!(l.wanted(201), 3);
        assert_eq!(l.wanted(100_000), 10, "never above the maximum");
    }

    #[test]
    fn a_look_starts_workers_for_the_backlog_and_no_more() {
        let (l, now) = (limits(), Instant::now());
        let mut state = State::default();
        for mid in 1..=3 {
            state.admit(record(mid, "i@a.test"), now + l.lifetime);
        }
        state.admit(record(4, "i@B.test"), now + l.lifetime);
        let mut plan = state.plan(now, &l, false);
        plan.starts.sort();
        assert_eq!(plan.starts, ["a.test", "a.test", "b.test"]);
        assert_eq!(plan.next_wake, Some(now + l.lifetime));
        assert!(
            state.plan(now, &l, false).starts.is_empty(),
            "already counted"
        );
        state.worker_ended("b.test");
        assert_eq!(state.plan(now, &l, false).starts, ["b.test"]);
        state.worker_ended("b.test");
        assert!(state.plan(now, &l, true).starts.is_empty(), "stopping");
    }

    #[test]
    fn an_unreachable_domain_backs_off_doubling_to_the_maximum() {
        let (l, now) = (limits(), Instant::now());
        let mut state = State::default();
        state.admit(record(1, "i@a.test"), now + l.lifetime);
        let mut waits = Vec::new();
        for _ in 0..6 {
            state.back_off("a.test", now);
            let plan = state.plan(now, &l, false);
            assert!(plan.starts.is_empty(), "backing off");
            waits.push(plan.next_wake.map(|t| (t - now).as_secs()));
        }
        assert_eq!(
            waits,
            [1, 2, 4, 8, 10, 10].map(Some),
            "doubling, capped at 10 s"
        );
        state.connected("a.test");
        assert_eq!(state.plan(now, &l, false).starts, ["a.test"]);
    }

    #[test]
    fn due_retries_become_ready_and_the_lifetime_ends_a_journal_on_the_ground() {
        let (l, now) = (limits(), Instant::now());
        let mut state = State::default();
        state.admit(record(1, "i@a.test"), now + l.lifetime);
        let (taken, deadline) = state.take("a.test", now).expect("ready");
        assert_eq!((taken.mid, deadline), (1, now + l.lifetime));
        assert!(state.take("a.test", now).is_none(), "in flight");
        state.retry(1, 1, now + l.retry_delay);
        let early = state.plan(now, &l, false);
        assert!(early.starts.is_empty(), "not yet due");
        assert_eq!(early.next_wake, Some(now + l.retry_delay));
        let later = now + l.retry_delay;
        let just_before = later - Duration::from_millis(1);
        assert!(state.plan(just_before, &l, false).starts.is_empty());
        assert_eq!(state.plan(later, &l, false).starts, ["a.test"]);
        assert_eq!(state.journals[&1].record.attempts, 1);
        let end = state.plan(now + l.lifetime, &l, false);
        assert_eq!(end.expired.len(), 1, "expired on the ground");
        assert!(state.journals.is_empty() && state.bytes == 0);
        assert_eq!(end.next_wake, None);
    }

    #[test]
    fn journals_go_oldest_first_and_one_put_back_goes_first_again() {
        let (l, now) = (limits(), Instant::now());
        let mut state = State::default();
        for mid in 1..=3 {
            state.admit(record(mid, "i@a.test"), now + l.lifetime);
        }
        let mid = |taken: Option<(Record, Instant)>| taken.map(|(r, _)| r.mid);
        assert_eq!(mid(state.take("a.test", now)), Some(1));
        assert_eq!(mid(state.take("a.test", now)), Some(2));
        state.put_back(2);
        assert_eq!(mid(state.take("a.test", now)), Some(2));
        assert_eq!(mid(state.take("a.test", now)), Some(3));
        assert_eq!(state.pending("a.test"), 3, "all in flight");
        assert_eq!(mid(state.take("b.test", now)), None);
    }

    #[test]
    fn the_lifetime_of_a_journal_in_flight_is_its_workers_to_report() {
        let (l, now) = (limits(), Instant::now());
        let mut state = State::default();
        state.admit(record(1, "i@a.test"), now + l.lifetime);
        let _ = state.take("a.test", now).expect("ready");
        let end = now + l.lifetime;
        assert!(state.plan(end, &l, false).expired.is_empty());
        assert!(state.expiry.is_empty(), "dropped while in flight");
        state.put_back(1);
        assert!(state.take("a.test", end).is_none(), "past its deadline");
        assert_eq!(state.plan(end, &l, false).expired.len(), 1);
    }
}
