//! the.tdc.queue: journals wait here, durably, until they are delivered, hard bounced
//! or expired. The queue owns every decision (when to try, how many connections, what
//! an outcome means) and logs and counts outcomes; delivery workers only deliver.
//!
//! Envelopes live in memory, journal bytes on disk (the spool). One scheduler task
//! wakes on new work, due retries, expiries and the end of a back-off, and starts
//! connection workers per intake domain; a worker delivers journal after journal on
//! one connection (RSET between) and exits when the queue has nothing for it.

pub mod agent;
mod attempt;
pub mod lock;
#[cfg(test)]
mod power_loss;
pub mod retry;
pub mod spool;
pub mod storage;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::clock::now_ms;
use crate::config::Settings;
use crate::delivery::{DeliveryError, FailureClass, Job, Kind, Reply};
use crate::stats::Stats;
use crate::tdclog::{self, Event, Log};
use agent::Agent;
use attempt::{AttemptError, InternalError};
use retry::Decision;
use spool::{Spool, SpoolEntry, SpoolError};

/// The reporting name of the queue, as the appliance shows it.
pub const QUEUE_NAME: &str = "the.tdc.queue";

/// New connection attempts to an unreachable intake back off from this...
const BACKOFF_START: Duration = Duration::from_secs(1);
/// ...doubling up to this (docs/DELIVERY.md, "Connections").
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// A journal handed to the queue by the milter.
#[derive(Debug, Clone)]
pub struct Entry {
    pub mid: u64,
    pub sender: String,
    pub intake: String,
    pub message: Bytes,
    pub eight_bit: bool,
    /// The MTA's queue ID of the original, for the log.
    pub queue_id: String,
    /// The original's Message-ID (empty if none), for the log.
    pub original_message_id: String,
}

#[derive(Debug)]
pub enum EnqueueError {
    /// The daemon is shutting down.
    Closed,
    /// A bound of the queue (settings `queue.max_messages`, `queue.max_bytes`) is reached.
    Full(String),
    /// The spool could not be written (disk full, permissions...).
    Spool(SpoolError),
}

impl std::fmt::Display for EnqueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnqueueError::Closed => {
                write!(f, "{QUEUE_NAME} is not accepting journals (shutting down)")
            }
            EnqueueError::Full(why) => write!(f, "{QUEUE_NAME} is full: {why}"),
            EnqueueError::Spool(e) => write!(f, "the journal could not be spooled: {e}"),
        }
    }
}

impl std::error::Error for EnqueueError {}

/// The settings the queue works by.
#[derive(Debug, Clone)]
struct Limits {
    lifetime: Duration,
    retry_delay: Duration,
    min_connections: usize,
    max_connections: usize,
    per_connection: usize,
    max_messages: usize,
    max_bytes: u64,
}

/// One journal in the queue.
struct Queued {
    entry: SpoolEntry,
    domain: String,
    deadline: Instant,
    in_flight: bool,
}

struct Backoff {
    until: Instant,
    delay: Duration,
}

#[derive(Default)]
struct State {
    journals: HashMap<u64, Queued>,
    /// Journals ready for delivery, per intake domain, oldest first.
    ready: HashMap<String, VecDeque<u64>>,
    retry_at: BTreeSet<(Instant, u64)>,
    expiry: BTreeSet<(Instant, u64)>,
    /// Open (or opening) connection workers per domain.
    connections: HashMap<String, usize>,
    backoff: HashMap<String, Backoff>,
    bytes: u64,
    /// Journals being written to the spool, and their bytes: they count against
    /// queue.max_messages and queue.max_bytes from the check on, so that concurrent
    /// ends of message cannot each pass the check and together overshoot.
    reserved_journals: usize,
    reserved_bytes: u64,
}

/// A place in the queue's bounds, held while a journal is spooled; given back when
/// the journal is admitted (it then counts itself) or its spooling failed.
struct Reservation<'a> {
    shared: &'a Shared,
    size: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.reserved_journals = state.reserved_journals.saturating_sub(1);
        state.reserved_bytes = state.reserved_bytes.saturating_sub(self.size);
    }
}

struct Shared {
    spool: Arc<Spool>,
    state: Mutex<State>,
    wake: Notify,
    stopping: AtomicBool,
    /// Spool work running on blocking threads (removals, attempt syncs); `run` waits
    /// for it before it returns, so a stopped queue leaves the spool as it says.
    background: std::sync::Mutex<JoinSet<()>>,
    deliverer: Box<dyn Agent>,
    limits: Limits,
    stats: Arc<Stats>,
    log: Log,
}

/// The enqueue side, cheap to clone.
#[derive(Clone)]
pub struct Queue {
    shared: Arc<Shared>,
}

/// The delivery side: run it with [`Scheduler::run`].
pub struct Scheduler {
    shared: Arc<Shared>,
}

fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map_or(String::new(), |(_, d)| d.to_ascii_lowercase())
}

/// Opens the spool, takes back what it holds (expiring what is past its lifetime), and
/// returns the two sides of the queue.
pub fn open(
    settings: &Settings,
    deliverer: impl Agent + 'static,
    stats: Arc<Stats>,
    log: Log,
) -> Result<(Queue, Scheduler), SpoolError> {
    let (spool, found, damaged) = Spool::open(&settings.queue.spool_dir)?;
    for d in &damaged {
        log.event(Event::DamagedSpoolFile {
            path: &d.path.display().to_string(),
            reason: &d.reason,
        });
    }
    let limits = Limits {
        lifetime: settings.delivery.lifetime,
        retry_delay: settings.delivery.retry_delay,
        min_connections: settings.delivery.min_connections,
        max_connections: settings.delivery.max_connections,
        per_connection: settings.delivery.max_messages_per_connection,
        max_messages: settings.queue.max_messages,
        max_bytes: settings.queue.max_bytes,
    };
    let shared = Arc::new(Shared {
        spool: Arc::new(spool),
        state: Mutex::new(State::default()),
        wake: Notify::new(),
        stopping: AtomicBool::new(false),
        background: std::sync::Mutex::new(JoinSet::new()),
        deliverer: Box::new(deliverer),
        limits,
        stats,
        log,
    });
    if !found.is_empty() {
        shared.log.event(Event::Recovered { count: found.len() });
    }
    let now_wall = now_ms();
    for entry in found {
        // Wall-clock age, because the monotonic clock restarted with the process.
        let age = Duration::from_millis(now_wall.saturating_sub(entry.enqueued_ms));
        shared.log.event(Event::RecoveredJournal {
            mid: entry.mid,
            message_id: &entry.message_id,
            intake: &entry.intake,
            queue_id: &entry.queue_id,
        });
        match shared.limits.lifetime.checked_sub(age) {
            Some(left) if !left.is_zero() => shared.admit(entry, Instant::now() + left),
            _ => {
                shared.stats.journal_queued(entry.size);
                shared.expire(&entry);
            }
        }
    }
    Ok((
        Queue {
            shared: shared.clone(),
        },
        Scheduler { shared },
    ))
}

/// What is in the queue right now, for `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueStatus {
    pub journals: usize,
    pub bytes: u64,
    pub in_flight: usize,
    pub waiting_for_retry: usize,
    /// Age of the oldest journal, in seconds.
    pub oldest_age_secs: Option<u64>,
}

/// The queue's bounds from the settings, for the metrics: an alert rule compares
/// the depth and the time since the last delivery with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBounds {
    pub max_journals: usize,
    pub max_bytes: u64,
    pub lifetime: Duration,
}

impl Queue {
    pub fn bounds(&self) -> QueueBounds {
        let limits = &self.shared.limits;
        QueueBounds {
            max_journals: limits.max_messages,
            max_bytes: limits.max_bytes,
            lifetime: limits.lifetime,
        }
    }

    pub fn status(&self) -> QueueStatus {
        let state = self.shared.lock();
        let now = now_ms();
        QueueStatus {
            journals: state.journals.len(),
            bytes: state.bytes,
            in_flight: state.journals.values().filter(|q| q.in_flight).count(),
            waiting_for_retry: state.retry_at.len(),
            oldest_age_secs: state
                .journals
                .values()
                .map(|q| q.entry.enqueued_ms)
                .min()
                .map(|t| now.saturating_sub(t) / 1000),
        }
    }

    /// A MID unique for the life of the spool. Off the async threads: once in a
    /// block of MIDs this writes and fsyncs the counter, under a lock other ends of
    /// message wait on.
    pub async fn next_mid(&self) -> Result<u64, EnqueueError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.spool.allocate_mid())
            .await
            .map_err(|e| {
                EnqueueError::Spool(SpoolError {
                    what: "MID allocation failed for".into(),
                    path: Default::default(),
                    error: std::io::Error::other(e.to_string()),
                })
            })?
            .map_err(EnqueueError::Spool)
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// Spools a journal durably, logs it as enqueued and hands it to delivery. When this
    /// returns Ok, the journal survives a crash.
    pub async fn enqueue(&self, entry: Entry) -> Result<(), EnqueueError> {
        let shared = &self.shared;
        if shared.stopping.load(Ordering::Relaxed) {
            return Err(EnqueueError::Closed);
        }
        let size = entry.message.len() as u64;
        let _reserved = {
            let mut state = shared.lock();
            let journals = state.journals.len() + state.reserved_journals;
            if journals >= shared.limits.max_messages {
                return Err(EnqueueError::Full(format!(
                    "{journals} journals waiting (queue.max_messages)"
                )));
            }
            let bytes = state.bytes + state.reserved_bytes;
            if bytes.saturating_add(size) > shared.limits.max_bytes {
                return Err(EnqueueError::Full(format!(
                    "{bytes} bytes waiting, this journal has {size} (queue.max_bytes {})",
                    shared.limits.max_bytes
                )));
            }
            state.reserved_journals += 1;
            state.reserved_bytes += size;
            Reservation { shared, size }
        };
        let spooled = SpoolEntry {
            mid: entry.mid,
            intake: entry.intake,
            sender: entry.sender,
            eight_bit: entry.eight_bit,
            queue_id: entry.queue_id,
            message_id: entry.original_message_id,
            enqueued_ms: now_ms(),
            attempts: 0,
            size,
        };
        let writer = self.shared.clone();
        let to_write = spooled.clone();
        let message = entry.message;
        let started = std::time::Instant::now();
        let written =
            tokio::task::spawn_blocking(move || writer.spool.write(&to_write, &message)).await;
        shared
            .stats
            .spool_write_seconds
            .observe(started.elapsed().as_secs_f64());
        written
            .map_err(|e| {
                EnqueueError::Spool(SpoolError {
                    what: "spool writer failed for".into(),
                    path: Default::default(),
                    error: std::io::Error::other(e.to_string()),
                })
            })?
            .map_err(EnqueueError::Spool)?;
        // Logged before delivery can see it, so a journal's lines are always in order.
        shared.log.event(Event::Enqueued {
            mid: spooled.mid,
            message_id: &spooled.message_id,
            intake: &spooled.intake,
            queue_id: &spooled.queue_id,
        });
        shared.admit(spooled, Instant::now() + shared.limits.lifetime);
        Ok(())
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough state for counting and
        // delivery; refusing all further work would lose journals instead.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts a spooled journal into the queue, ready now.
    fn admit(&self, entry: SpoolEntry, deadline: Instant) {
        let mid = entry.mid;
        let domain = domain_of(&entry.intake);
        self.stats.journal_queued(entry.size);
        {
            let mut state = self.lock();
            state.bytes += entry.size;
            state.expiry.insert((deadline, mid));
            state
                .ready
                .entry(domain.clone())
                .or_default()
                .push_back(mid);
            state.journals.insert(
                mid,
                Queued {
                    entry,
                    domain,
                    deadline,
                    in_flight: false,
                },
            );
        }
        self.wake.notify_one();
    }

    /// Takes the journal out of the queue state (the spool file is handled by the caller).
    fn forget(&self, mid: u64) -> Option<Queued> {
        let mut state = self.lock();
        let queued = state.journals.remove(&mid)?;
        state.bytes = state.bytes.saturating_sub(queued.entry.size);
        state.expiry.remove(&(queued.deadline, mid));
        if let Some(ready) = state.ready.get_mut(&queued.domain) {
            ready.retain(|m| *m != mid);
        }
        state.retry_at.retain(|(_, m)| *m != mid);
        Some(queued)
    }

    /// Spool work that ends in an fsync, off the threads that serve the MTA; a
    /// failure is logged for `mid`. The runtime waits for blocking work at shutdown;
    /// work that still does not happen (a power cut) can only mean a journal is sent
    /// again or tried once more, never lost.
    fn spool_in_background(
        &self,
        mid: u64,
        work: impl FnOnce(&Spool) -> Result<(), SpoolError> + Send + 'static,
    ) {
        let (spool, log) = (self.spool.clone(), self.log.clone());
        let job = move || {
            if let Err(e) = work(&spool) {
                // A file left on disk would be delivered again after a restart: say
                // so loudly.
                log.event(Event::SpoolFailure {
                    mid,
                    error: &e.to_string(),
                });
            }
        };
        // Outside a runtime (unit tests) it runs inline.
        if tokio::runtime::Handle::try_current().is_err() {
            return job();
        }
        let mut background = self
            .background
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while background.try_join_next().is_some() {}
        background.spawn_blocking(job);
    }

    /// Waits for the spool work still running on blocking threads.
    async fn background_done(&self) {
        let mut running = std::mem::take(
            &mut *self
                .background
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        while running.join_next().await.is_some() {}
    }

    /// Takes a finished journal's file out of the spool: its invalidation costs an
    /// fsync.
    fn remove_from_spool(&self, entry: &SpoolEntry) {
        let entry = entry.clone();
        self.spool_in_background(entry.mid, move |spool| spool.remove(&entry));
    }

    fn expire(&self, entry: &SpoolEntry) {
        let mid = entry.mid;
        self.log.event(Event::Expired {
            mid,
            lifetime_secs: self.limits.lifetime.as_secs(),
        });
        self.log.event(Event::HardBounced { mid });
        self.log.event(Event::Finished { mid });
        self.stats.expired(&entry.intake);
        self.stats.journal_left(entry.size);
        self.remove_from_spool(entry);
    }

    /// The next ready journal for a worker of `domain`, marked in flight.
    fn take(&self, domain: &str) -> Option<(SpoolEntry, Instant)> {
        let mut state = self.lock();
        let now = Instant::now();
        loop {
            let mid = state.ready.get_mut(domain)?.pop_front()?;
            if let Some(q) = state.journals.get_mut(&mid) {
                // Past its lifetime: the scheduler's expiry takes it, no attempt is made.
                if q.deadline <= now {
                    continue;
                }
                q.in_flight = true;
                return Some((q.entry.clone(), q.deadline));
            }
        }
    }

    /// Records the outcome of one attempt and decides what follows.
    /// `dcid`: the connection the transaction ran on, if it got that far.
    fn finish(&self, mid: u64, result: Result<Reply, AttemptError>, dcid: Option<u64>) {
        match result {
            Ok(_) => {
                let Some(q) = self.forget(mid) else { return };
                self.log.event(Event::Delivered { mid });
                self.log.event(Event::Finished { mid });
                self.stats.delivered(&q.entry.intake);
                let waited = now_ms().saturating_sub(q.entry.enqueued_ms);
                self.stats.delivery_latency(waited as f64 / 1000.0);
                self.stats.journal_left(q.entry.size);
                self.remove_from_spool(&q.entry);
            }
            Err(error) => self.failed(mid, &error, dcid),
        }
        self.wake.notify_one();
    }

    fn failed(&self, mid: u64, error: &AttemptError, dcid: Option<u64>) {
        // The appliance's "Bounced" line is for a refusal of the transaction that ends
        // the journal.
        if let (Some(dcid), Some(refusal)) = (dcid, error.delivery()) {
            if let Kind::Reply(reply) = &refusal.kind {
                if refusal.class() == FailureClass::Permanent {
                    self.log.event(Event::Bounced {
                        dcid,
                        mid,
                        response: &reply.to_string(),
                    });
                }
            }
        }
        let detail = error.to_string();
        self.log.event(Event::FailureDetail {
            mid,
            detail: &detail,
        });
        self.stats.failure(mid, &detail);
        self.stats.failure_class(error.class_name());
        let (attempts, deadline, entry) = {
            let state = self.lock();
            let Some(q) = state.journals.get(&mid) else {
                return;
            };
            (q.entry.attempts + 1, q.deadline, q.entry.clone())
        };
        if Instant::now() >= deadline {
            if let Some(q) = self.forget(mid) {
                self.expire(&q.entry);
            }
            return;
        }
        match retry::decide(error.cause(), attempts, self.limits.retry_delay) {
            Decision::Retry(delay) => {
                match self.spool.record_attempt(&entry, attempts) {
                    Ok(()) => self.spool_in_background(mid, Spool::sync_attempts),
                    Err(e) => self.log.event(Event::SpoolFailure {
                        mid,
                        error: &e.to_string(),
                    }),
                }
                self.log.event(Event::RetryScheduled {
                    mid,
                    delay_secs: delay.as_secs(),
                });
                self.stats.soft_bounced(&entry.intake);
                // A retry due after the deadline never runs: expiry comes first. The
                // scheduler drops the expiry of a journal in flight past its deadline,
                // and the deadline may have passed since the check above: restore it,
                // as `put_back` does, or a journal whose retry comes too late would
                // never leave the queue.
                let mut state = self.lock();
                if let Some(q) = state.journals.get_mut(&mid) {
                    q.in_flight = false;
                    q.entry.attempts = attempts;
                    state.expiry.insert((deadline, mid));
                }
                state.retry_at.insert((Instant::now() + delay, mid));
            }
            Decision::HardBounce => {
                let Some(q) = self.forget(mid) else { return };
                // The appliance's sequence for an intake domain that cannot receive mail.
                let bad_host = match error.delivery().map(|e| &e.kind) {
                    Some(Kind::DnsPermanent(failure)) => Some(failure.parts()),
                    _ => None,
                };
                if let Some((name, qtype, reason)) = bad_host {
                    self.log.event(Event::BadDestinationHost {
                        name,
                        qtype,
                        reason,
                    });
                }
                if error.cause() == retry::Cause::Delivery(FailureClass::Tls) {
                    self.log.event(Event::TlsFailed { mid });
                } else {
                    self.log.event(Event::HardBounced { mid });
                }
                if let Some((name, qtype, reason)) = bad_host {
                    self.log.event(Event::Bounced {
                        dcid: 0,
                        mid,
                        response: &tdclog::bad_destination_host(name, qtype, reason),
                    });
                }
                self.log.event(Event::Finished { mid });
                self.stats.hard_bounced(&q.entry.intake);
                self.stats.journal_left(q.entry.size);
                self.remove_from_spool(&q.entry);
            }
        }
    }

    /// A journal taken by a worker that did not try it goes back to the head of the line.
    fn put_back(&self, mid: u64) {
        let mut state = self.lock();
        let Some(q) = state.journals.get_mut(&mid) else {
            return;
        };
        q.in_flight = false;
        let domain = q.domain.clone();
        let deadline = q.deadline;
        // The scheduler dropped the expiry of a journal in flight past its deadline;
        // back on the ground, it must expire like any other.
        state.expiry.insert((deadline, mid));
        state.ready.entry(domain).or_default().push_front(mid);
        drop(state);
        self.wake.notify_one();
    }

    /// Journals waiting or in flight for a domain.
    fn pending(state: &State, domain: &str) -> usize {
        let ready = state.ready.get(domain).map_or(0, VecDeque::len);
        let in_flight = state
            .journals
            .values()
            .filter(|q| q.in_flight && q.domain == domain)
            .count();
        ready + in_flight
    }

    /// How many connections a domain's backlog wants: at least `min_connections` (or
    /// one per journal if fewer), more as the backlog grows, never above the maximum.
    fn wanted(&self, pending: usize) -> usize {
        let l = &self.limits;
        let by_backlog = pending.div_ceil(l.per_connection);
        pending
            .min(l.min_connections)
            .max(by_backlog)
            .min(l.max_connections)
    }

    /// Whether a worker that just finished a journal should carry on.
    fn still_wanted(&self, domain: &str) -> bool {
        let state = self.lock();
        let open = state.connections.get(domain).copied().unwrap_or(0);
        open <= self.wanted(Shared::pending(&state, domain))
    }

    fn connection_failed(&self, domain: &str, error: &DeliveryError) {
        if error.class() != FailureClass::Network {
            return;
        }
        let mut state = self.lock();
        let delay = state
            .backoff
            .get(domain)
            .map_or(BACKOFF_START, |b| (b.delay * 2).min(BACKOFF_MAX));
        state.backoff.insert(
            domain.to_string(),
            Backoff {
                until: Instant::now() + delay,
                delay,
            },
        );
    }

    fn connection_succeeded(&self, domain: &str) {
        self.lock().backoff.remove(domain);
    }

    /// Housekeeping: due retries become ready, expired journals leave, and workers are
    /// started where the backlog wants them. Returns the domains to start workers for,
    /// and when to look again.
    fn plan(&self) -> (Vec<String>, Option<Instant>) {
        let now = Instant::now();
        let mut expired = Vec::new();
        let mut starts = Vec::new();
        let next_wake;
        {
            let mut state = self.lock();
            while let Some(&(due, mid)) = state.retry_at.first() {
                if due > now {
                    break;
                }
                state.retry_at.pop_first();
                if let Some(domain) = state.journals.get(&mid).map(|q| q.domain.clone()) {
                    state.ready.entry(domain).or_default().push_back(mid);
                }
            }
            let due: Vec<(Instant, u64)> = state
                .expiry
                .iter()
                .take_while(|(d, _)| *d <= now)
                .copied()
                .collect();
            for (deadline, mid) in due {
                // In flight: the worker's stages are capped by the deadline, and it
                // reports the expiry itself (`failed`), or gives it back untried and
                // `put_back` restores the expiry.
                if state.journals.get(&mid).is_some_and(|q| !q.in_flight) {
                    expired.push(mid);
                } else {
                    state.expiry.remove(&(deadline, mid));
                }
            }
            drop(state);
            for mid in expired {
                if let Some(q) = self.forget(mid) {
                    self.expire(&q.entry);
                }
            }

            let mut state = self.lock();
            if !self.stopping.load(Ordering::Relaxed) {
                let mut total: usize = state.connections.values().sum();
                let domains: Vec<String> = state
                    .ready
                    .iter()
                    .filter(|(_, r)| !r.is_empty())
                    .map(|(d, _)| d.clone())
                    .collect();
                for domain in domains {
                    if state.backoff.get(&domain).is_some_and(|b| b.until > now) {
                        continue;
                    }
                    let ready = state.ready.get(&domain).map_or(0, VecDeque::len);
                    let open = state.connections.get(&domain).copied().unwrap_or(0);
                    let want = self.wanted(Shared::pending(&state, &domain));
                    let room = self.limits.max_connections.saturating_sub(total);
                    let new = want.saturating_sub(open).min(ready).min(room);
                    for _ in 0..new {
                        starts.push(domain.clone());
                    }
                    total += new;
                    *state.connections.entry(domain).or_default() += new;
                }
            }
            let backoff_end = state
                .backoff
                .iter()
                .filter(|(d, b)| {
                    b.until > now && state.ready.get(*d).is_some_and(|r| !r.is_empty())
                })
                .map(|(_, b)| b.until)
                .min();
            next_wake = [
                state.retry_at.first().map(|(t, _)| *t),
                state.expiry.first().map(|(t, _)| *t),
                backoff_end,
            ]
            .into_iter()
            .flatten()
            .min();
        }
        (starts, next_wake)
    }
}

impl Scheduler {
    /// Runs until `shutdown` completes; then stops starting connections, lets running
    /// workers finish their current journal and returns. What is left stays in the spool.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let shared = self.shared;
        let mut workers = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let (starts, next_wake) = shared.plan();
            for domain in starts {
                workers.spawn(worker(shared.clone(), domain));
            }
            let sleep = async {
                match next_wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = shared.wake.notified() => {}
                _ = sleep => {}
                Some(_) = workers.join_next(), if !workers.is_empty() => {}
            }
        }
        shared.stopping.store(true, Ordering::Relaxed);
        while workers.join_next().await.is_some() {}
        shared.background_done().await;
    }
}

/// One connection: journal after journal for `domain` until there is nothing left for
/// it, the per-connection limit is reached, or the connection fails.
async fn worker(shared: Arc<Shared>, domain: String) {
    let mut slot = Slot {
        shared: &shared,
        domain: &domain,
        open: false,
    };
    run_connection(&shared, &domain, &mut slot).await;
}

/// A worker's place among `delivery.max_connections`, given back however the worker
/// ends: a panic that skipped this would leave the slot taken for good, and after
/// `max_connections` such panics nothing would be delivered until a restart.
struct Slot<'a> {
    shared: &'a Shared,
    domain: &'a str,
    /// The connection to the intake is open (counted in `connections_out`).
    open: bool,
}

impl Slot<'_> {
    fn opened(&mut self) {
        self.shared.stats.connection_opened();
        self.open = true;
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.open {
            self.shared.stats.connection_closed();
        }
        {
            let mut state = self.shared.lock();
            if let Some(n) = state.connections.get_mut(self.domain) {
                *n = n.saturating_sub(1);
            }
        }
        self.shared.wake.notify_one();
    }
}

/// The journal a worker holds. Should the worker end without reporting it (a panic in
/// delivery code), it counts as a failed attempt, so it is retried once or bounced
/// instead of staying in flight until a restart.
struct Held<'a> {
    shared: &'a Shared,
    mid: Option<u64>,
}

impl Held<'_> {
    /// Reports the outcome of the held journal's attempt.
    fn finish(&mut self, result: Result<Reply, AttemptError>) {
        if let Some(mid) = self.mid.take() {
            self.shared.finish(mid, result, None);
        }
    }

    /// Reports the outcome of a transaction on connection `dcid`.
    fn finish_sent(&mut self, dcid: u64, result: Result<Reply, DeliveryError>) {
        if let Some(mid) = self.mid.take() {
            self.shared
                .finish(mid, result.map_err(AttemptError::Delivery), Some(dcid));
        }
    }

    /// Gives the held journal back untried.
    fn put_back(&mut self) {
        if let Some(mid) = self.mid.take() {
            self.shared.put_back(mid);
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.finish(Err(AttemptError::Internal(InternalError::WorkerFailed)));
    }
}

async fn run_connection(shared: &Arc<Shared>, domain: &str, slot: &mut Slot<'_>) {
    let Some((first, deadline)) = shared.take(domain) else {
        return;
    };
    let mut held = Held {
        shared,
        mid: Some(first.mid),
    };
    let mut connection = match shared.deliverer.connect(domain, deadline).await {
        Ok(c) => c,
        Err(e) => {
            shared.connection_failed(domain, &e);
            held.finish(Err(e.into()));
            return;
        }
    };
    shared.connection_succeeded(domain);
    slot.opened();
    let (mut entry, mut deadline) = (first, deadline);
    let mut sent = 0;
    loop {
        match load_job(shared, &entry, deadline).await {
            Ok(job) => {
                // RSET only between transactions; a journal skipped unread started none.
                if sent > 0 && connection.reset(deadline).await.is_err() {
                    held.put_back();
                    return;
                }
                let result = connection.send(&job).await;
                sent += 1;
                let usable = !matches!(&result, Err(e) if e.is_connection_level());
                held.finish_sent(connection.dcid(), result);
                if !usable {
                    return;
                }
            }
            // Our failure, not the connection's: the next journal can still go on it.
            Err(e) => {
                let error = e.to_string();
                shared.log.event(Event::SpoolFailure {
                    mid: entry.mid,
                    error: &error,
                });
                held.finish(Err(AttemptError::Internal(InternalError::SpoolUnreadable(
                    error,
                ))));
            }
        }
        if sent >= shared.limits.per_connection
            || shared.stopping.load(Ordering::Relaxed)
            || !shared.still_wanted(domain)
        {
            break;
        }
        let Some(next) = shared.take(domain) else {
            break;
        };
        held.mid = Some(next.0.mid);
        (entry, deadline) = next;
    }
    connection.close().await;
}

async fn load_job(
    shared: &Arc<Shared>,
    entry: &SpoolEntry,
    deadline: Instant,
) -> Result<Job, SpoolError> {
    // Off the async threads: a journal is up to journal.max_size on disk.
    let message = {
        let (shared, entry) = (shared.clone(), entry.clone());
        tokio::task::spawn_blocking(move || shared.spool.read_journal(&entry))
            .await
            .map_err(|e| SpoolError {
                what: "spool reader failed for".into(),
                path: Default::default(),
                error: std::io::Error::other(e.to_string()),
            })??
    };
    Ok(Job {
        mid: entry.mid,
        sender: entry.sender.clone(),
        intake: entry.intake.clone(),
        message: Bytes::from(message),
        eight_bit: entry.eight_bit,
        deadline,
    })
}

/// A small journal to i@intake.test, for the tests.
#[cfg(test)]
fn test_entry(mid: u64) -> Entry {
    Entry {
        mid,
        sender: "tdc@gw.test".into(),
        intake: "i@intake.test".into(),
        message: Bytes::from_static(b"Subject: x\r\n\r\nbody\r\n"),
        eight_bit: false,
        queue_id: "Q1".into(),
        original_message_id: String::new(),
    }
}

#[cfg(test)]
mod scheduler_tests;
#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Deliverer;

    fn shared(dir: &std::path::Path, lifetime_ms: u64) -> Arc<Shared> {
        shared_with(dir, lifetime_ms, "")
    }

    /// `queue_line` is one more key of the `queue:` section.
    fn shared_with(dir: &std::path::Path, lifetime_ms: u64, queue_line: &str) -> Arc<Shared> {
        let yaml = format!(
            "intake_address: i@intake.test\njournal:\n  sender: tdc@gw.test\nqueue:\n  spool_dir: {}\n  {queue_line}\ndelivery:\n  lifetime: {lifetime_ms}ms\n",
            dir.display()
        );
        let settings =
            Settings::from_yaml(&yaml, std::path::Path::new("t.yaml")).expect("settings");
        let log = Log::memory();
        let deliverer = Deliverer::new(&settings, log.clone()).expect("deliverer");
        let (queue, _scheduler) =
            open(&settings, deliverer, Arc::new(Stats::default()), log).expect("queue");
        queue.shared
    }

    async fn enqueue(shared: &Arc<Shared>, mid: u64) {
        let queue = Queue {
            shared: shared.clone(),
        };
        queue.enqueue(test_entry(mid)).await.expect("enqueue");
    }

    /// 100 ends of message at once against room for 10: exactly 10 are spooled,
    /// whether the bound is journals or bytes, and the refused ones leave no
    /// reservation behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_enqueues_never_overshoot_the_bounds() {
        for bound in ["max_messages: 10", "max_bytes: 200B"] {
            let dir = tempfile::tempdir().expect("tempdir");
            let queue = Queue {
                shared: shared_with(dir.path(), 60_000, bound),
            };
            assert_eq!(
                test_entry(1).message.len(),
                20,
                "200 bytes hold 10 journals"
            );
            let tasks: Vec<_> = (1..=100)
                .map(|mid| {
                    let queue = queue.clone();
                    tokio::spawn(async move { queue.enqueue(test_entry(mid)).await })
                })
                .collect();
            let mut spooled = 0;
            for task in tasks {
                match task.await.expect("join") {
                    Ok(()) => spooled += 1,
                    Err(EnqueueError::Full(_)) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(spooled, 10, "{bound}");
            let state = queue.shared.lock();
            assert_eq!(state.journals.len(), 10, "{bound}");
            assert_eq!((state.reserved_journals, state.reserved_bytes), (0, 0));
        }
    }

    fn finished(shared: &Shared, mid: u64) -> bool {
        let line = format!("Message finished MID {mid} done");
        shared.log.lines().iter().any(|l| l.ends_with(&line))
    }

    /// A worker holds a journal past its deadline (a stalled RSET), the scheduler looks
    /// meanwhile, then the worker gives the journal back untried: it must still expire.
    #[tokio::test]
    async fn a_journal_put_back_after_its_deadline_still_expires() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = shared(dir.path(), 50);
        enqueue(&shared, 1).await;
        let (entry, _deadline) = shared.take("intake.test").expect("ready");
        tokio::time::sleep(Duration::from_millis(80)).await;
        let _ = shared.plan();
        assert!(!finished(&shared, 1), "in flight, the worker reports it");
        shared.put_back(entry.mid);
        assert!(shared.take("intake.test").is_none(), "past its deadline");
        let (_, next_wake) = shared.plan();
        assert!(finished(&shared, 1), "{:?}", shared.log.lines());
        assert_eq!(shared.lock().journals.len(), 0);
        assert_eq!(next_wake, None);
    }

    /// The scheduler drops the expiry of a journal in flight once its deadline has
    /// passed; a soft failure reported just before that deadline schedules a retry
    /// that comes too late. The journal must still expire, not stay queued for good.
    #[tokio::test]
    async fn a_soft_failure_at_the_deadline_still_expires() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = shared(dir.path(), 200);
        enqueue(&shared, 1).await;
        let _ = shared.take("intake.test").expect("ready");
        // What `plan` does to a journal in flight past its deadline.
        shared.lock().expiry.clear();
        let refused = DeliveryError::new(
            crate::delivery::Stage::Connect,
            Kind::Network("connection refused".into()),
        );
        shared.finish(1, Err(refused.into()), None);
        assert!(!finished(&shared, 1), "retried, not yet expired");
        tokio::time::sleep(Duration::from_millis(250)).await;
        let _ = shared.plan();
        assert!(finished(&shared, 1), "{:?}", shared.log.lines());
        assert_eq!(shared.lock().journals.len(), 0);
    }

    /// A worker that dies holding a journal (a panic unwinds through `Held`): the
    /// journal's attempt counts as failed, it is no longer in flight, and a retry is due.
    #[tokio::test]
    async fn a_journal_held_by_a_failed_worker_is_not_stuck_in_flight() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = shared(dir.path(), 60_000);
        enqueue(&shared, 1).await;
        let (entry, _) = shared.take("intake.test").expect("ready");
        drop(Held {
            shared: &shared,
            mid: Some(entry.mid),
        });
        let lines = shared.log.lines();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("MID 1 delivery attempt failed")
                    && l.contains("the delivery worker failed")),
            "{lines:?}"
        );
        let state = shared.lock();
        assert!(state.journals.get(&1).is_some_and(|q| !q.in_flight));
        assert_eq!(state.retry_at.len(), 1);
        drop(state);
        // Once it has reported, the guard reports nothing more.
        let before = shared.log.lines().len();
        let mut held = Held {
            shared: &shared,
            mid: Some(1),
        };
        held.put_back();
        drop(held);
        assert_eq!(shared.log.lines().len(), before);
    }

    /// A worker that panics gives back its connection slot and its place in the
    /// open-connections gauge, so the scheduler can start another.
    #[tokio::test]
    async fn a_panicking_worker_gives_back_its_connection_slot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = shared(dir.path(), 60_000);
        enqueue(&shared, 1).await;
        let (starts, _) = shared.plan();
        assert_eq!(starts, ["intake.test"]);
        assert_eq!(shared.lock().connections.get("intake.test"), Some(&1));
        let worker_shared = shared.clone();
        let died = tokio::spawn(async move {
            let mut slot = Slot {
                shared: &worker_shared,
                domain: "intake.test",
                open: false,
            };
            slot.opened();
            assert_eq!(worker_shared.stats.snapshot().connections, 1);
            panic!("a bug in delivery");
        })
        .await;
        assert!(died.is_err_and(|e| e.is_panic()));
        assert_eq!(shared.lock().connections.get("intake.test"), Some(&0));
        assert_eq!(shared.stats.snapshot().connections, 0);
        let (starts, _) = shared.plan();
        assert_eq!(starts, ["intake.test"], "a new connection can start");
    }

    #[test]
    fn domains_are_case_insensitive() {
        assert_eq!(domain_of("a@Intake.Example"), "intake.example");
        assert_eq!(domain_of("nodomain"), "");
    }
}
