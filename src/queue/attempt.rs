//! What one attempt at one journal came to when it did not deliver: the intake's
//! side failed (a [`DeliveryError`], with its SMTP stage), or ours did. Our own
//! failures are their own kind, so the log never dresses an unreadable spool file
//! as something the intake said.

use std::fmt;

use super::retry::Cause;
use crate::delivery::DeliveryError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptError {
    /// Delivery to the intake failed.
    Delivery(DeliveryError),
    /// tdc-milter itself failed before or while trying.
    Internal(InternalError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InternalError {
    /// The journal's spool file could not be read back.
    SpoolUnreadable(String),
    /// The worker delivering it ended without reporting (a panic: a bug).
    WorkerFailed,
}

impl AttemptError {
    /// How the retry table sees it.
    pub fn cause(&self) -> Cause {
        match self {
            AttemptError::Delivery(e) => Cause::Delivery(e.class()),
            AttemptError::Internal(_) => Cause::Internal,
        }
    }

    /// The label of `tdc_milter_delivery_failures_total`.
    pub fn class_name(&self) -> &'static str {
        match self {
            AttemptError::Delivery(e) => e.class().name(),
            AttemptError::Internal(_) => "internal",
        }
    }

    pub fn delivery(&self) -> Option<&DeliveryError> {
        match self {
            AttemptError::Delivery(e) => Some(e),
            AttemptError::Internal(_) => None,
        }
    }
}

impl From<DeliveryError> for AttemptError {
    fn from(e: DeliveryError) -> AttemptError {
        AttemptError::Delivery(e)
    }
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptError::Delivery(e) => write!(f, "{e}"),
            AttemptError::Internal(InternalError::SpoolUnreadable(why)) => {
                write!(f, "internal error: spool file unreadable: {why}")
            }
            AttemptError::Internal(InternalError::WorkerFailed) => write!(
                f,
                "internal error: the delivery worker failed (a bug: please report it)"
            ),
        }
    }
}
