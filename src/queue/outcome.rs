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
use crate::tdclog::{BadHost, Event, Step, Verdict};

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
        let waited_ms = now_ms().saturating_sub(record.enqueued_ms);
        self.report(record, Verdict::Delivered { waited_ms });
    }

    /// The one place an attempt's verdict becomes the journal's lines and counts.
    fn report(&self, record: &Record, verdict: Verdict<'_>) {
        verdict.each_event(record.mid, |event| self.log.event(event));
        self.stats.verdict(&record.intake, record.size, &verdict);
        if verdict.ends_journal() {
            self.remove_from_spool(record);
        }
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
        self.report(
            record,
            Verdict::SoftBounced {
                delay_secs: delay.as_secs(),
            },
        );
        self.lock().retry(mid, attempts, Instant::now() + delay);
    }

    fn hard_bounced(&self, q: &Queued, error: &AttemptError) {
        // The appliance's sequence for an intake domain that cannot receive mail.
        let bad_host = match error.delivery().map(|e| &e.kind) {
            Some(Kind::DnsPermanent(failure)) => {
                let (name, qtype, reason) = failure.parts();
                Some(BadHost {
                    name,
                    qtype,
                    reason,
                })
            }
            _ => None,
        };
        let tls = error.cause() == retry::Cause::Delivery(FailureClass::Tls);
        self.report(&q.record, Verdict::HardBounced { tls, bad_host });
    }

    /// A journal whose lifetime ended, already out of the queue state.
    pub(super) fn expire(&self, record: &Record) {
        let lifetime_secs = self.limits.lifetime.as_secs();
        self.report(record, Verdict::Expired { lifetime_secs });
    }
}
