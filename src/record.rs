//! What tdc-milter knows of one journal apart from its bytes, from the end of the
//! original's message through the spool to the journal's last delivery attempt. The
//! milter makes it, the spool writes it as the file's header and reads it back after a
//! restart, the queue keeps it while the journal waits, and delivery takes its
//! envelope from it. The bytes stay on disk and are read only for an attempt.

use crate::tdclog::Ids;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The journal's MID, unique for the life of the spool.
    pub mid: u64,
    /// The intake address: the journal's only recipient.
    pub intake: String,
    /// The journal's envelope sender.
    pub sender: String,
    /// Any byte ≥ 0x80 in the journal: sent with `BODY=8BITMIME`.
    pub eight_bit: bool,
    /// The MTA's queue ID of the original, for the log.
    pub queue_id: String,
    /// The original's Message-ID (empty if none), for the log.
    pub message_id: String,
    /// Wall-clock time it was handed to the queue, milliseconds since the Unix epoch:
    /// its age after a restart, when the monotonic clock starts again.
    pub enqueued_ms: u64,
    /// Delivery attempts that failed so far.
    pub attempts: u32,
    /// Size of the journal's bytes.
    pub size: u64,
}

impl Record {
    /// The record of a journal about to be handed to the queue; its size and enqueue
    /// time are set by the queue as it spools the journal.
    pub fn new(
        mid: u64,
        sender: &str,
        intake: &str,
        eight_bit: bool,
        queue_id: &str,
        message_id: &str,
    ) -> Record {
        Record {
            mid,
            intake: intake.to_string(),
            sender: sender.to_string(),
            eight_bit,
            queue_id: queue_id.to_string(),
            message_id: message_id.to_string(),
            enqueued_ms: 0,
            attempts: 0,
            size: 0,
        }
    }

    /// The intake's domain, lower-cased: the queue schedules connections per domain.
    /// The IDs the journal's queued lines name it by.
    pub fn ids(&self) -> Ids<&str> {
        Ids {
            message_id: &self.message_id,
            intake: &self.intake,
            queue_id: &self.queue_id,
        }
    }

    pub fn domain(&self) -> String {
        self.intake
            .rsplit_once('@')
            .map_or(String::new(), |(_, d)| d.to_ascii_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_case_insensitive() {
        let mut record = Record::new(1, "s@gw.test", "a@Intake.Example", false, "Q", "");
        assert_eq!(record.domain(), "intake.example");
        record.intake = "nodomain".into();
        assert_eq!(record.domain(), "");
    }
}
