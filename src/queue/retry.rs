//! The retry table (docs/DELIVERY.md), as one pure function.

use std::time::Duration;

use crate::delivery::FailureClass;

/// How many retries a soft failure gets.
pub const RETRIES: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again, not sooner than this delay.
    Retry(Duration),
    /// The journal leaves the queue as hard bounced.
    HardBounce,
}

/// `failed_attempts` counts the attempt that just failed.
pub fn decide(class: FailureClass, failed_attempts: u32, retry_delay: Duration) -> Decision {
    match class {
        // TLS problems need an administrator, not a retry (docs/DELIVERY.md, "Decisions of our own"), and 5xx replies
        // (other than 503/552) are permanent by definition.
        FailureClass::Tls | FailureClass::Permanent => Decision::HardBounce,
        FailureClass::Transient | FailureClass::Network if failed_attempts <= RETRIES => {
            Decision::Retry(retry_delay)
        }
        FailureClass::Transient | FailureClass::Network => Decision::HardBounce,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_secs(5);

    #[test]
    fn the_table() {
        use FailureClass::*;
        assert_eq!(decide(Permanent, 1, DELAY), Decision::HardBounce);
        assert_eq!(decide(Tls, 1, DELAY), Decision::HardBounce);
        assert_eq!(decide(Transient, 1, DELAY), Decision::Retry(DELAY));
        assert_eq!(decide(Network, 1, DELAY), Decision::Retry(DELAY));
        assert_eq!(decide(Transient, 2, DELAY), Decision::HardBounce);
        assert_eq!(decide(Network, 2, DELAY), Decision::HardBounce);
    }
}
