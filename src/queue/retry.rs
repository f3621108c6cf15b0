//! The retry table (docs/DELIVERY.md), as one pure function.

use std::time::Duration;

use crate::delivery::FailureClass;

/// How many retries a soft failure gets.
pub const RETRIES: u32 = 1;

/// What failed, as the table sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The attempt at the intake failed, in this class.
    Delivery(FailureClass),
    /// Our own side failed (the spool file could not be read, a worker died): the
    /// table does not list it. It is retried once, like a network failure, since
    /// what failed (a descriptor, memory, a disk hiccup) may well have passed.
    Internal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again, not sooner than this delay.
    Retry(Duration),
    /// The journal leaves the queue as hard bounced.
    HardBounce,
}

/// `failed_attempts` counts the attempt that just failed.
pub fn decide(cause: Cause, failed_attempts: u32, retry_delay: Duration) -> Decision {
    use FailureClass::*;
    match cause {
        // TLS problems need an administrator, not a retry (docs/DELIVERY.md, "Decisions
        // of our own"), and 5xx replies (other than 503/552) are permanent by definition.
        Cause::Delivery(Tls | Permanent) => Decision::HardBounce,
        Cause::Delivery(Transient | Network) | Cause::Internal if failed_attempts <= RETRIES => {
            Decision::Retry(retry_delay)
        }
        Cause::Delivery(Transient | Network) | Cause::Internal => Decision::HardBounce,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_secs(5);

    #[test]
    fn the_table() {
        use FailureClass::*;
        let d = Cause::Delivery;
        assert_eq!(decide(d(Permanent), 1, DELAY), Decision::HardBounce);
        assert_eq!(decide(d(Tls), 1, DELAY), Decision::HardBounce);
        assert_eq!(decide(d(Transient), 1, DELAY), Decision::Retry(DELAY));
        assert_eq!(decide(d(Network), 1, DELAY), Decision::Retry(DELAY));
        assert_eq!(decide(d(Transient), 2, DELAY), Decision::HardBounce);
        assert_eq!(decide(d(Network), 2, DELAY), Decision::HardBounce);
    }

    #[test]
    fn our_own_failures_are_retried_once() {
        assert_eq!(decide(Cause::Internal, 1, DELAY), Decision::Retry(DELAY));
        assert_eq!(decide(Cause::Internal, 2, DELAY), Decision::HardBounce);
    }
}
