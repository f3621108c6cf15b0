//! What the outcome path decided for a journal after one attempt. One verdict is
//! the single source of both the appliance's outcome lines and the counters of
//! `tophosts` and the metrics, so the two cannot disagree (docs/ARCHITECTURE.md,
//! "Who owns what").

use super::event::{bad_destination_host, Event, Step};

/// The intake domain cannot receive mail: the lookup of `name` for records of type
/// `qtype` failed permanently for `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadHost<'a> {
    pub name: &'a str,
    pub qtype: &'a str,
    pub reason: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// The intake took the journal `waited_ms` after it was enqueued.
    Delivered { waited_ms: u64 },
    /// A soft failure; the journal is tried once more after the delay.
    SoftBounced { delay_secs: u64 },
    /// A failure that ends the journal: refused for good, or a TLS failure (never
    /// retried), or an intake domain that cannot receive mail.
    HardBounced {
        tls: bool,
        bad_host: Option<BadHost<'a>>,
    },
    /// The lifetime ended before the journal was delivered; counted as a hard bounce
    /// too, as the appliance does.
    Expired { lifetime_secs: u64 },
}

impl Verdict<'_> {
    /// Whether the journal leaves the.tdc.queue (and the spool).
    pub fn ends_journal(&self) -> bool {
        !matches!(self, Verdict::SoftBounced { .. })
    }

    /// The lines of this verdict for the journal `mid`, in the appliance's order.
    pub fn each_event(&self, mid: u64, mut emit: impl FnMut(Event<'_>)) {
        match *self {
            Verdict::Delivered { .. } => {
                emit(Event::journal(mid, Step::Delivered));
                emit(Event::journal(mid, Step::DeliveredForScanning));
            }
            Verdict::SoftBounced { delay_secs } => {
                emit(Event::journal(mid, Step::RetryScheduled { delay_secs }));
            }
            Verdict::HardBounced { tls, bad_host } => {
                if let Some(BadHost {
                    name,
                    qtype,
                    reason,
                }) = bad_host
                {
                    emit(Event::BadDestinationHost {
                        name,
                        qtype,
                        reason,
                    });
                }
                let outcome = if tls {
                    Step::TlsFailed
                } else {
                    Step::HardBounced
                };
                emit(Event::journal(mid, outcome));
                if let Some(host) = bad_host {
                    let response = bad_destination_host(host.name, host.qtype, host.reason);
                    emit(Event::journal(
                        mid,
                        Step::Bounced {
                            dcid: 0,
                            response: &response,
                        },
                    ));
                }
            }
            Verdict::Expired { lifetime_secs } => {
                emit(Event::journal(mid, Step::Expired { lifetime_secs }));
                emit(Event::journal(mid, Step::HardBounced));
            }
        }
        if self.ends_journal() {
            emit(Event::journal(mid, Step::Finished));
        }
    }
}
