//! Accept loops that outlive their errors. `accept` fails when the process is out of
//! file descriptors (EMFILE, ENFILE) or kernel memory; the connection then waits in
//! the listen backlog, and the next accept may well work. A loop that ended on the
//! first error would leave the daemon running but deaf: for the milter socket, every
//! message after it flows unjournaled. So each loop backs off (50 ms doubling to 1 s,
//! so a full fd table is not spun on), logs the first error of a burst and how the
//! burst ended, and counts every error.
//!
//! Also here: the connection limit of the metrics and control sockets, which serve
//! people and scrapers, not mail. Past it a connection is closed at once, so that
//! nobody can hold the daemon's descriptors by opening connections and sending
//! nothing.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::stats::{Socket, Stats};
use crate::tdclog::{Event, Log};

const FIRST_PAUSE: Duration = Duration::from_millis(50);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);

/// The state of one accept loop between errors.
pub struct Backoff {
    socket: Socket,
    log: Log,
    stats: Arc<Stats>,
    burst: Option<Burst>,
}

struct Burst {
    since: Instant,
    errors: u64,
    pause: Duration,
}

impl Backoff {
    pub fn new(socket: Socket, log: Log, stats: Arc<Stats>) -> Backoff {
        Backoff {
            socket,
            log,
            stats,
            burst: None,
        }
    }

    /// After a failed accept: how long to wait before the next one.
    pub fn failed(&mut self, error: &io::Error) -> Duration {
        if aborted_by_peer(error) {
            // That one connection is gone; the listener is fine.
            return Duration::ZERO;
        }
        self.stats.accept_error(self.socket);
        match &mut self.burst {
            Some(burst) => {
                burst.errors += 1;
                burst.pause = (burst.pause * 2).min(LONGEST_PAUSE);
                burst.pause
            }
            None => {
                self.log.event(Event::AcceptFailing {
                    socket: self.socket.label(),
                    error: &error.to_string(),
                });
                self.burst = Some(Burst {
                    since: Instant::now(),
                    errors: 1,
                    pause: FIRST_PAUSE,
                });
                FIRST_PAUSE
            }
        }
    }

    /// After an accept that worked: ends a burst of errors, with a line.
    pub fn accepted(&mut self) {
        if let Some(burst) = self.burst.take() {
            self.log.event(Event::AcceptRecovered {
                socket: self.socket.label(),
                errors: burst.errors,
                seconds: burst.since.elapsed().as_secs(),
            });
        }
    }
}

/// Errors of one connection that the peer ended before we accepted it.
fn aborted_by_peer(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// The milter listener, made to survive accept errors (indymilter's own accept loop
/// returns on the first one, and the daemon with it).
pub struct Resilient<L> {
    inner: L,
    backoff: Backoff,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<L> Resilient<L> {
    pub fn new(inner: L, backoff: Backoff) -> Resilient<L> {
        Resilient {
            inner,
            backoff,
            pause: None,
        }
    }
}

impl<L: indymilter::Listener> indymilter::Listener for Resilient<L> {
    type Io = L::Io;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        loop {
            if let Some(pause) = &mut self.pause {
                ready!(pause.as_mut().poll(cx));
                self.pause = None;
            }
            match ready!(self.inner.poll_accept(cx)) {
                Ok(io) => {
                    self.backoff.accepted();
                    return Poll::Ready(Ok(io));
                }
                Err(e) => {
                    let wait = self.backoff.failed(&e);
                    if !wait.is_zero() {
                        self.pause = Some(Box::pin(tokio::time::sleep(wait)));
                    }
                }
            }
        }
    }
}

/// The accept loop of a socket that serves people and scrapers (metrics, control):
/// errors backed off, connections past the limit closed at once.
pub struct Gate {
    backoff: Backoff,
    limit: ConnectionLimit,
}

impl Gate {
    pub fn new(socket: Socket, limit: usize, log: Log, stats: Arc<Stats>) -> Gate {
        Gate {
            backoff: Backoff::new(socket, log, stats.clone()),
            limit: ConnectionLimit::new(socket, limit, stats),
        }
    }

    /// The next connection with a free slot (held as long as the permit).
    pub async fn next<T, F, Fut>(&mut self, mut accept: F) -> (T, OwnedSemaphorePermit)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = io::Result<T>>,
    {
        loop {
            match accept().await {
                Ok(connection) => {
                    self.backoff.accepted();
                    // Past the limit, dropping it closes it.
                    if let Some(slot) = self.limit.admit() {
                        return (connection, slot);
                    }
                }
                Err(e) => tokio::time::sleep(self.backoff.failed(&e)).await,
            }
        }
    }
}

/// A fixed number of connections served at once.
#[derive(Clone)]
pub struct ConnectionLimit {
    slots: Arc<Semaphore>,
    socket: Socket,
    stats: Arc<Stats>,
}

impl ConnectionLimit {
    pub fn new(socket: Socket, limit: usize, stats: Arc<Stats>) -> ConnectionLimit {
        ConnectionLimit {
            slots: Arc::new(Semaphore::new(limit)),
            socket,
            stats,
        }
    }

    /// A slot for one connection, or `None` (counted): the caller closes it.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.slots.clone().try_acquire_owned().ok();
        if permit.is_none() {
            self.stats.connection_refused(self.socket);
        }
        permit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emfile() -> io::Error {
        io::Error::from_raw_os_error(24)
    }

    #[test]
    fn a_burst_is_logged_once_backs_off_and_its_end_is_logged() {
        let log = Log::memory();
        let stats = Arc::new(Stats::default());
        let mut backoff = Backoff::new(Socket::Milter, log.clone(), stats.clone());
        let pauses: Vec<Duration> = (0..7).map(|_| backoff.failed(&emfile())).collect();
        assert_eq!(pauses[0], FIRST_PAUSE);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]), "{pauses:?}");
        assert_eq!(pauses[6], LONGEST_PAUSE);
        assert_eq!(stats.accept_errors(Socket::Milter), 7);
        let lines = log.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("cannot accept connections on the milter socket")
                && lines[0].contains("os error 24"),
            "{lines:?}"
        );
        backoff.accepted();
        backoff.accepted();
        let lines = log.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[1].contains(
                "accepting connections on the milter socket again after 7 failed accepts"
            ),
            "{lines:?}"
        );
        // A connection the peer gave up on is no error of ours.
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(backoff.failed(&aborted), Duration::ZERO);
        assert_eq!(stats.accept_errors(Socket::Milter), 7);
        assert_eq!(log.lines().len(), 2);
    }

    #[test]
    fn past_the_limit_a_connection_is_refused_and_counted() {
        let stats = Arc::new(Stats::default());
        let limit = ConnectionLimit::new(Socket::Metrics, 2, stats.clone());
        let a = limit.admit().expect("first");
        let _b = limit.admit().expect("second");
        assert!(limit.admit().is_none());
        assert_eq!(stats.connections_refused(Socket::Metrics), 1);
        drop(a);
        assert!(
            limit.admit().is_some(),
            "a closed connection frees its slot"
        );
    }
}
