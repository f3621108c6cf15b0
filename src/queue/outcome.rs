//! The outcome path: what one attempt's result means for its journal (delivered,
//! retried, hard bounced, expired) by the retry table and the lifetime, and the one
//! place that logs and counts each outcome and takes the journal out of the spool.

use tokio::time::Instant;

use super::attempt::AttemptError;
use super::retry::{self, Decision};
use super::spool::Spool;
use super::state::Queued;
use super::Shared;
use crate::clock::now_ms;
use crate::delivery::{FailureClass, Kind, Reply};
use crate::record::Record;
use crate::tdclog::{self, Event, Step};

impl Shared {
    /// Records the outcome of one attempt and decides what follows.
    /// `dcid`: the connection the transaction ran on, if it got that far.
    pub(super) fn finish(&self, mid: u64, result: Result<Reply, AttemptError>, dcid: Option<u64>) {
        match result {
            Ok(_) => {
                let Some(q) = self.forget(mid) else { return };
                self.delivered(&q.record);
            }
            Err(error) => self.failed(mid, &error, dcid),
        }
        self.wake.notify_one();
    }

    /// Takes the journal out of the queue state; the lock is given back on return,
    /// so what follows (logging, counting, the spool) runs outside it.
    fn forget(&self, mid: u64) -> Option<Queued> {
        self.lock().forget(mid)
    }

    fn delivered(&self, record: &Record) {
        let mid = record.mid;
        self.log.event(Event::journal(mid, Step::Delivered));
        self.log
            .event(Event::journal(mid, Step::DeliveredForScanning));
        self.log.event(Event::journal(mid, Step::Finished));
        self.stats.delivered(&record.intake);
        let waited = now_ms().saturating_sub(record.enqueued_ms);
        self.stats.delivery_latency(waited as f64 / 1000.0);
        self.stats.journal_left(record.size);
        self.remove_from_spool(record);
    }

    fn failed(&self, mid: u64, error: &AttemptError, dcid: Option<u64>) {
        // The appliance's "Bounced" line is for a refusal of the transaction that ends
        // the journal.
        if let (Some(dcid), Some(refusal)) = (dcid, error.delivery()) {
            if let Kind::Reply(reply) = &refusal.kind {
                if refusal.class() == FailureClass::Permanent {
                    self.log.event(Event::journal(
                        mid,
                        Step::Bounced {
                            dcid,
                            response: &reply.to_string(),
                        },
                    ));
                }
            }
        }
        let detail = error.to_string();
        self.log
            .event(Event::journal(mid, Step::FailureDetail(&detail)));
        self.stats.failure(mid, &detail);
        self.stats.failure_class(error.class_name());
        let (record, deadline) = {
            let state = self.lock();
            let Some(q) = state.journals.get(&mid) else {
                return;
            };
            (q.record.clone(), q.deadline)
        };
        if Instant::now() >= deadline {
            if let Some(q) = self.forget(mid) {
                self.expire(&q.record);
            }
            return;
        }
        let attempts = record.attempts + 1;
        match retry::decide(error.cause(), attempts, self.limits.retry_delay) {
            Decision::Retry(delay) => self.soft_bounced(&record, attempts, delay),
            Decision::HardBounce => {
                if let Some(q) = self.forget(mid) {
                    self.hard_bounced(&q, error);
                }
            }
        }
    }

    fn soft_bounced(&self, record: &Record, attempts: u32, delay: std::time::Duration) {
        let mid = record.mid;
        match self.spool.record_attempt(record, attempts) {
            Ok(()) => self.spool_in_background(mid, Spool::sync_attempts),
            Err(e) => self
                .log
                .event(Event::journal(mid, Step::SpoolFailure(&e.to_string()))),
        }
        self.log.event(Event::journal(
            mid,
            Step::RetryScheduled {
                delay_secs: delay.as_secs(),
            },
        ));
        self.stats.soft_bounced(&record.intake);
        self.lock().retry(mid, attempts, Instant::now() + delay);
    }

    fn hard_bounced(&self, q: &Queued, error: &AttemptError) {
        let mid = q.record.mid;
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
            self.log.event(Event::journal(mid, Step::TlsFailed));
        } else {
            self.log.event(Event::journal(mid, Step::HardBounced));
        }
        if let Some((name, qtype, reason)) = bad_host {
            self.log.event(Event::journal(
                mid,
                Step::Bounced {
                    dcid: 0,
                    response: &tdclog::bad_destination_host(name, qtype, reason),
                },
            ));
        }
        self.log.event(Event::journal(mid, Step::Finished));
        self.stats.hard_bounced(&q.record.intake);
        self.stats.journal_left(q.record.size);
        self.remove_from_spool(&q.record);
    }

    /// A journal whose lifetime ended, already out of the queue state.
    pub(super) fn expire(&self, record: &Record) {
        let mid = record.mid;
        self.log.event(Event::journal(
            mid,
            Step::Expired {
                lifetime_secs: self.limits.lifetime.as_secs(),
            },
        ));
        self.log.event(Event::journal(mid, Step::HardBounced));
        self.log.event(Event::journal(mid, Step::Finished));
        self.stats.expired(&record.intake);
        self.stats.journal_left(record.size);
        self.remove_from_spool(record);
    }
}
