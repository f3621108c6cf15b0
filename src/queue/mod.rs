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
mod outcome;
#[cfg(test)]
mod power_loss;
pub mod retry;
pub mod spool;
mod state;
pub mod storage;
mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::clock::now_ms;
use crate::config::Settings;
use crate::record::Record;
use crate::stats::Stats;
use crate::tdclog::{Event, Log, Step};
use agent::Agent;
use spool::{Spool, SpoolError};
use state::{Limits, State};

/// The reporting name of the queue, as the appliance shows it.
pub const QUEUE_NAME: &str = "the.tdc.queue";

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
    for record in found {
        // Wall-clock age, because the monotonic clock restarted with the process.
        let age = Duration::from_millis(now_wall.saturating_sub(record.enqueued_ms));
        shared
            .log
            .event(Event::journal(record.mid, Step::Recovered(record.ids())));
        match shared.limits.lifetime.checked_sub(age) {
            Some(left) if !left.is_zero() => shared.admit(record, Instant::now() + left),
            _ => {
                shared.stats.journal_queued(record.size);
                shared.expire(&record);
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
                .map(|q| q.record.enqueued_ms)
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
    /// returns Ok, the journal survives a crash. The queue sets the record's size,
    /// attempts and enqueue time.
    pub async fn enqueue(&self, record: Record, message: Bytes) -> Result<(), EnqueueError> {
        let shared = &self.shared;
        if shared.stopping.load(Ordering::Relaxed) {
            return Err(EnqueueError::Closed);
        }
        let size = message.len() as u64;
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
        let record = Record {
            enqueued_ms: now_ms(),
            attempts: 0,
            size,
            ..record
        };
        let writer = self.shared.clone();
        let to_write = record.clone();
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
        shared
            .log
            .event(Event::journal(record.mid, Step::Enqueued(record.ids())));
        shared.admit(record, Instant::now() + shared.limits.lifetime);
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
    fn admit(&self, record: Record, deadline: Instant) {
        self.stats.journal_queued(record.size);
        self.lock().admit(record, deadline);
        self.wake.notify_one();
    }

    /// The next ready journal for a worker of `domain`, marked in flight.
    fn take(&self, domain: &str) -> Option<(Record, Instant)> {
        self.lock().take(domain, Instant::now())
    }

    /// A journal taken by a worker that did not try it goes back to the head of the line.
    fn put_back(&self, mid: u64) {
        self.lock().put_back(mid);
        self.wake.notify_one();
    }

    /// Housekeeping: due retries become ready, expired journals leave, and workers are
    /// counted in where the backlog wants them. Returns the domains to start workers
    /// for, and when to look again.
    fn plan(&self) -> (Vec<String>, Option<Instant>) {
        let stopping = self.stopping.load(Ordering::Relaxed);
        let plan = self.lock().plan(Instant::now(), &self.limits, stopping);
        for q in &plan.expired {
            self.expire(&q.record);
        }
        (plan.starts, plan.next_wake)
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
                log.event(Event::journal(mid, Step::SpoolFailure(&e.to_string())));
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
    fn remove_from_spool(&self, record: &Record) {
        let record = record.clone();
        self.spool_in_background(record.mid, move |spool| spool.remove(&record));
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
                workers.spawn(worker::worker(shared.clone(), domain));
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

/// A small journal to i@intake.test, for the tests.
#[cfg(test)]
fn test_journal(mid: u64) -> (Record, Bytes) {
    (
        Record::new(mid, "tdc@gw.test", "i@intake.test", false, "Q1", ""),
        Bytes::from_static(b"Subject: x\r\n\r\nbody\r\n"),
    )
}

#[cfg(test)]
mod scheduler_tests;
#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::{Deliverer, DeliveryError, Kind};
    use worker::{Held, Slot};

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
        let (record, message) = test_journal(mid);
        queue.enqueue(record, message).await.expect("enqueue");
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
            assert_eq!(test_journal(1).1.len(), 20, "200 bytes hold 10 journals");
            let tasks: Vec<_> = (1..=100)
                .map(|mid| {
                    let queue = queue.clone();
                    tokio::spawn(async move {
                        let (record, message) = test_journal(mid);
                        queue.enqueue(record, message).await
                    })
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
}
