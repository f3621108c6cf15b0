//! What became of a message the milter saw to its end: journaled, or not journaled
//! for one named reason. Every message gets exactly one outcome, counted by
//! [`crate::stats::Stats`] (the metric `tdc_milter_messages_total{outcome}`), and
//! each one that was not journaled is kept for `track` (docs/LOGGING.md).

use serde::{Deserialize, Serialize};

/// One message's outcome. The order is the order of the checks at end of message:
/// the first reason that applies is the one given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A journal for each intake is in the.tdc.queue.
    Journaled,
    /// `enabled: false`.
    Disabled,
    /// The sender authenticated (`{auth_authen}`): a submission, not incoming mail.
    Authenticated,
    /// Received on a service that `incoming.daemon_names` does not list.
    NotIncoming,
    /// The SMTP client is in `incoming.internal_networks`.
    InternalClient,
    /// A journal coming back, or mail to the intake itself.
    Loop,
    /// No policy matched a recipient.
    NoPolicy,
    /// Every recipient's policy has `connector: off`.
    ConnectorOff,
    /// An earlier filter quarantined it (Sendmail's `{quarantine}`).
    Quarantined,
    /// A `journal.not_clean` verdict header was present.
    NotClean,
    /// More connections than `milter.max_connections` were open.
    MilterBusy,
    /// Larger than `journal.max_size`.
    TooLarge,
    /// A journal could not be queued (queue full, spool error).
    Refused,
}

impl Outcome {
    pub const ALL: [Outcome; 13] = [
        Outcome::Journaled,
        Outcome::Disabled,
        Outcome::Authenticated,
        Outcome::NotIncoming,
        Outcome::InternalClient,
        Outcome::Loop,
        Outcome::NoPolicy,
        Outcome::ConnectorOff,
        Outcome::Quarantined,
        Outcome::NotClean,
        Outcome::MilterBusy,
        Outcome::TooLarge,
        Outcome::Refused,
    ];

    /// The label value of the metric, and the word `status` and `track` use.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Journaled => "journaled",
            Outcome::Disabled => "disabled",
            Outcome::Authenticated => "authenticated",
            Outcome::NotIncoming => "not_incoming",
            Outcome::InternalClient => "internal_client",
            Outcome::Loop => "loop",
            Outcome::NoPolicy => "no_policy",
            Outcome::ConnectorOff => "connector_off",
            Outcome::Quarantined => "quarantined",
            Outcome::NotClean => "not_clean",
            Outcome::MilterBusy => "milter_busy",
            Outcome::TooLarge => "too_large",
            Outcome::Refused => "refused",
        }
    }

    /// What the settings ask for: counted and tracked, but no log line, since a
    /// gateway sees such messages all day.
    pub fn expected(self) -> bool {
        matches!(
            self,
            Outcome::Journaled
                | Outcome::Authenticated
                | Outcome::NotIncoming
                | Outcome::NoPolicy
                | Outcome::ConnectorOff
        )
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A message that was not journaled, and why in words (the end of its log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub outcome: Outcome,
    pub reason: String,
}

impl Skip {
    pub fn new(outcome: Outcome, reason: impl Into<String>) -> Skip {
        Skip {
            outcome,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_own_label_and_index() {
        let labels: std::collections::HashSet<&str> =
            Outcome::ALL.iter().map(|o| o.label()).collect();
        assert_eq!(labels.len(), Outcome::ALL.len());
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i, "{o:?} out of order in ALL");
        }
    }
}
