//! Connection workers: one per connection to an intake domain, delivering journal
//! after journal on it (RSET between) through the queue's [`Agent`](super::agent),
//! and reporting each attempt's result to the outcome path. A worker decides
//! nothing about a journal; it only says what happened.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::time::Instant;

use super::attempt::{AttemptError, InternalError};
use super::spool::SpoolError;
use super::Shared;
use crate::delivery::{DeliveryError, FailureClass, Reply};
use crate::record::Record;
use crate::tdclog::{Event, Step};

/// One connection: journal after journal for `domain` until there is nothing left for
/// it, the per-connection limit is reached, or the connection fails.
pub(super) async fn worker(shared: Arc<Shared>, domain: String) {
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
pub(super) struct Slot<'a> {
    pub shared: &'a Shared,
    pub domain: &'a str,
    /// The connection to the intake is open (counted in `connections_out`).
    pub open: bool,
}

impl Slot<'_> {
    pub fn opened(&mut self) {
        self.shared.stats.connection_opened();
        self.open = true;
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.open {
            self.shared.stats.connection_closed();
        }
        self.shared.lock().worker_ended(self.domain);
        self.shared.wake.notify_one();
    }
}

/// The journal a worker holds. Should the worker end without reporting it (a panic in
/// delivery code), it counts as a failed attempt, so it is retried once or bounced
/// instead of staying in flight until a restart.
pub(super) struct Held<'a> {
    pub shared: &'a Shared,
    pub mid: Option<u64>,
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
    pub fn put_back(&mut self) {
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
            if e.class() == FailureClass::Network {
                shared.lock().back_off(domain, Instant::now());
            }
            held.finish(Err(e.into()));
            return;
        }
    };
    shared.lock().connected(domain);
    slot.opened();
    let (mut record, mut deadline) = (first, deadline);
    let mut sent = 0;
    loop {
        match read_journal(shared, &record).await {
            Ok(message) => {
                // RSET only between transactions; a journal skipped unread started none.
                if sent > 0 && connection.reset(deadline).await.is_err() {
                    held.put_back();
                    return;
                }
                let result = connection.send(&record, &message, deadline).await;
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
                shared
                    .log
                    .event(Event::journal(record.mid, Step::SpoolFailure(&error)));
                held.finish(Err(AttemptError::Internal(InternalError::SpoolUnreadable(
                    error,
                ))));
            }
        }
        if sent >= shared.limits.per_connection
            || shared.stopping.load(Ordering::Relaxed)
            || !shared.lock().still_wanted(domain, &shared.limits)
        {
            break;
        }
        let Some(next) = shared.take(domain) else {
            break;
        };
        held.mid = Some(next.0.mid);
        (record, deadline) = next;
    }
    connection.close().await;
}

/// The journal's bytes, off the async threads: a journal is up to journal.max_size.
async fn read_journal(shared: &Arc<Shared>, record: &Record) -> Result<Vec<u8>, SpoolError> {
    let (shared, record) = (shared.clone(), record.clone());
    tokio::task::spawn_blocking(move || shared.spool.read_journal(&record))
        .await
        .map_err(|e| SpoolError {
            what: "spool reader failed for".into(),
            path: Default::default(),
            error: std::io::Error::other(e.to_string()),
        })?
}
