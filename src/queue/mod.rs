//! the.tdc.queue: journals wait here for delivery, and the queue decides what an
//! outcome means (delivered, bounced) and logs it.
//!
//! This first version keeps the queue in memory and gives every journal one delivery
//! attempt on a connection of its own, at most `delivery.max_connections` at a time.
//! The durable spool, the retry table and connection reuse slot in here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::delivery::{Deliverer, FailureClass, Job};
use crate::tdclog::{Event, Log};

/// The reporting name of the queue, as the appliance shows it.
pub const QUEUE_NAME: &str = "the.tdc.queue";

/// A journal handed to the queue.
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnqueueError {
    /// The delivery side has stopped (the daemon is shutting down).
    Closed,
}

impl std::fmt::Display for EnqueueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnqueueError::Closed => {
                write!(f, "{QUEUE_NAME} is not accepting journals (shutting down)")
            }
        }
    }
}

impl std::error::Error for EnqueueError {}

struct Queued {
    entry: Entry,
    deadline: Instant,
}

/// The enqueue side, cheap to clone.
#[derive(Clone)]
pub struct Queue {
    next_mid: Arc<AtomicU64>,
    lifetime: Duration,
    tx: mpsc::UnboundedSender<Queued>,
    log: Log,
}

/// The delivery side: run it with [`Scheduler::run`].
pub struct Scheduler {
    rx: mpsc::UnboundedReceiver<Queued>,
    deliverer: Arc<Deliverer>,
    connections: Arc<Semaphore>,
    log: Log,
}

pub fn new(
    deliverer: Deliverer,
    lifetime: Duration,
    max_connections: usize,
    log: Log,
) -> (Queue, Scheduler) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Queue {
            next_mid: Arc::new(AtomicU64::new(1)),
            lifetime,
            tx,
            log: log.clone(),
        },
        Scheduler {
            rx,
            deliverer: Arc::new(deliverer),
            connections: Arc::new(Semaphore::new(max_connections.max(1))),
            log,
        },
    )
}

impl Queue {
    /// A new message ID; MIDs are handed out before the journal is built because the
    /// journal's own Message-ID contains it.
    pub fn next_mid(&self) -> u64 {
        self.next_mid.fetch_add(1, Ordering::Relaxed)
    }

    /// Takes a journal and logs it as enqueued. The line is written before delivery can
    /// start, so a journal's lines always appear in the order they happened.
    pub fn enqueue(&self, entry: Entry) -> Result<(), EnqueueError> {
        if self.tx.is_closed() {
            return Err(EnqueueError::Closed);
        }
        self.log.event(Event::Enqueued {
            mid: entry.mid,
            message_id: &entry.original_message_id,
            intake: &entry.intake,
            queue_id: &entry.queue_id,
        });
        let deadline = Instant::now() + self.lifetime;
        let mid = entry.mid;
        self.tx.send(Queued { entry, deadline }).map_err(|_| {
            // Closed between the check and the send: the journal is gone, say so.
            self.log.event(Event::FailureDetail {
                mid,
                detail: "the queue closed while the journal was handed over (shutdown)",
            });
            EnqueueError::Closed
        })
    }
}

impl Scheduler {
    /// Delivers until every [`Queue`] handle is gone and the last delivery has ended.
    pub async fn run(mut self) {
        let mut running = JoinSet::new();
        loop {
            tokio::select! {
                next = self.rx.recv() => {
                    let Some(queued) = next else { break };
                    let permit = match self.connections.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => break,
                    };
                    let deliverer = self.deliverer.clone();
                    let log = self.log.clone();
                    running.spawn(async move {
                        attempt(&deliverer, &log, queued).await;
                        drop(permit);
                    });
                }
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
        }
        while running.join_next().await.is_some() {}
    }
}

/// One delivery attempt and its outcome lines.
async fn attempt(deliverer: &Deliverer, log: &Log, queued: Queued) {
    let Queued { entry, deadline } = queued;
    let mid = entry.mid;
    let job = Job {
        mid,
        sender: entry.sender,
        intake: entry.intake,
        message: entry.message,
        eight_bit: entry.eight_bit,
        deadline,
    };
    match deliverer.deliver(&job).await {
        Ok(_) => log.event(Event::Delivered { mid }),
        Err(e) => {
            log.event(Event::FailureDetail {
                mid,
                detail: &e.to_string(),
            });
            match e.class() {
                FailureClass::Tls => log.event(Event::TlsFailed { mid }),
                _ => log.event(Event::HardBounced { mid }),
            }
        }
    }
    log.event(Event::Finished { mid });
}
