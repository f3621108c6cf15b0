//! The catalogue of what tdc-milter logs: each event and its wording.
//!
//! The wording of the `TDC:` lines follows the appliance's samples (the vendor's
//! per-policy journaling guide; docs/LOGGING.md quotes each line), so that log tooling
//! written for the appliance works unchanged. Values that come from a message
//! (Message-ID, addresses, server replies) pass through [`sanitize`] first.

use std::fmt;
use std::net::IpAddr;

use super::sanitize::sanitize;

/// The appliance's product name in the outcome lines.
const SETD: &str = "Cisco Secure Email Threat Defense";

/// The appliance's severity words; they are part of the message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Debug,
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub(super) fn word(self) -> &'static str {
        match self {
            Severity::Debug => "Debug",
            Severity::Info => "Info",
            Severity::Warning => "Warning",
            Severity::Critical => "Critical",
        }
    }
}

/// One thing worth a log line. Adding an event means adding its wording here, nowhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    Starting {
        version: &'a str,
        listen: &'a str,
    },
    Stopping,
    /// At start: how long no instance ran on this spool, so mail went unjournaled.
    JournalingGap {
        /// When the previous instance was last seen alive, as the log stamps time.
        last_alive: &'a str,
        off_secs: u64,
    },
    /// Warning at start when certificate checks are off.
    TlsVerifyOff,
    /// The original was not journaled (size, internal error, ...), with the reason.
    NotJournaled {
        queue_id: &'a str,
        message_id: &'a str,
        reason: &'a str,
    },
    /// An earlier filter quarantined the message (Sendmail's `{quarantine}` macro at end
    /// of message): not clean, so not journaled. `reason` is the filter's reason.
    Quarantined {
        queue_id: &'a str,
        message_id: &'a str,
        reason: &'a str,
    },
    NewConnection {
        dcid: u64,
        interface: IpAddr,
        address: IpAddr,
        port: u16,
    },
    TlsSuccess {
        dcid: u64,
        protocol: &'a str,
        cipher: &'a str,
    },
    /// A connection could not be made or was lost.
    ConnectionError {
        dcid: u64,
        address: Option<IpAddr>,
        port: u16,
        details: &'a str,
        interface: Option<IpAddr>,
        reason: &'a str,
    },
    /// A DNS lookup failed; `detail` is `NAME TYPE - REASON` (e.g. `x.test MX - NXDomain`).
    DnsError {
        detail: &'a str,
    },
    /// The intake domain cannot receive mail (NXDOMAIN, null MX, no address): the
    /// lookup that said so.
    BadDestinationHost {
        name: &'a str,
        qtype: &'a str,
        reason: &'a str,
    },
    /// Journals found in the spool at start.
    Recovered {
        count: usize,
    },
    /// A spool file that could not be read back was moved aside.
    DamagedSpoolFile {
        path: &'a str,
        reason: &'a str,
    },
    /// SIGHUP applied the settings file; `restart_needed` lists sections that changed
    /// but only apply at the next start (empty: none).
    Reloaded {
        path: &'a str,
        restart_needed: &'a str,
    },
    /// SIGHUP found a bad settings file; the previous settings stay in force.
    ReloadRefused {
        error: &'a str,
    },
    /// The control socket could not be set up; journaling goes on without it.
    ControlUnavailable {
        error: &'a str,
    },
    MetricsListening {
        address: &'a str,
    },
    MetricsUnavailable {
        error: &'a str,
    },
    /// The open file limit is below what the settings can hold open.
    FileLimitLow {
        limit: u64,
        needed: u64,
    },
    /// The first failed accept of a burst on one of our sockets.
    AcceptFailing {
        socket: &'a str,
        error: &'a str,
    },
    /// Accepting works again after a burst of failures.
    AcceptRecovered {
        socket: &'a str,
        errors: u64,
        seconds: u64,
    },
    /// Shutdown grace period over with deliveries still running.
    DeliveriesAbandoned,
    /// A step in the life of the journal `mid`.
    Journal {
        mid: u64,
        step: Step<&'a str>,
    },
}

/// The IDs a journal is known by besides its MID, as its queued lines name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids<T> {
    pub message_id: T,
    pub intake: T,
    pub queue_id: T,
}

impl<T> Ids<T> {
    pub fn map<U>(self, mut f: impl FnMut(T) -> U) -> Ids<U> {
        Ids {
            message_id: f(self.message_id),
            intake: f(self.intake),
            queue_id: f(self.queue_id),
        }
    }
}

impl<T: std::ops::Deref<Target = str>> Ids<T> {
    pub fn as_str(&self) -> Ids<&str> {
        Ids {
            message_id: &self.message_id,
            intake: &self.intake,
            queue_id: &self.queue_id,
        }
    }
}

/// What can happen to one journal, from the.tdc.queue to its end: the lines that
/// carry a MID. Message tracking keeps these as they are and renders them here, so a
/// tracked line is the mail log's line to the byte.
///
/// `T` holds a text: borrowed when an event is logged, shared when tracking keeps it.
/// `I` holds the journal's [`Ids`] in the lines that name them; tracking keeps them
/// once per journal and leaves them out of each line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<T, I = Ids<T>> {
    /// The journal entered the.tdc.queue.
    Enqueued(I),
    /// The journal was taken back from the spool at start.
    Recovered(I),
    DeliveryStart {
        dcid: u64,
    },
    Delivered,
    /// The appliance's Message Tracking line for a delivered journal. Tracking shows
    /// it after the `Delivered` line; the mail log does not carry it, as the
    /// appliance's does not.
    DeliveredForScanning,
    Finished,
    TlsFailed,
    HardBounced,
    Bounced {
        dcid: u64,
        response: T,
    },
    /// Why an attempt failed, in our words, before the appliance's outcome line.
    FailureDetail(T),
    /// A soft failure: the journal is tried once more after the delay.
    RetryScheduled {
        delay_secs: u64,
    },
    /// The journal's lifetime ended before it was delivered.
    Expired {
        lifetime_secs: u64,
    },
    /// The spool failed for this journal (read, rename, remove).
    SpoolFailure(T),
}

impl<T, I> Step<T, I> {
    /// The same step with its texts and IDs held another way.
    pub fn map<U, J>(self, mut text: impl FnMut(T) -> U, ids: impl FnOnce(I) -> J) -> Step<U, J> {
        match self {
            Step::Enqueued(i) => Step::Enqueued(ids(i)),
            Step::Recovered(i) => Step::Recovered(ids(i)),
            Step::DeliveryStart { dcid } => Step::DeliveryStart { dcid },
            Step::Delivered => Step::Delivered,
            Step::DeliveredForScanning => Step::DeliveredForScanning,
            Step::Finished => Step::Finished,
            Step::TlsFailed => Step::TlsFailed,
            Step::HardBounced => Step::HardBounced,
            Step::Bounced { dcid, response } => Step::Bounced {
                dcid,
                response: text(response),
            },
            Step::FailureDetail(detail) => Step::FailureDetail(text(detail)),
            Step::RetryScheduled { delay_secs } => Step::RetryScheduled { delay_secs },
            Step::Expired { lifetime_secs } => Step::Expired { lifetime_secs },
            Step::SpoolFailure(error) => Step::SpoolFailure(text(error)),
        }
    }

    pub fn as_ref(&self) -> Step<&T, &I> {
        match self {
            Step::Enqueued(i) => Step::Enqueued(i),
            Step::Recovered(i) => Step::Recovered(i),
            Step::DeliveryStart { dcid } => Step::DeliveryStart { dcid: *dcid },
            Step::Delivered => Step::Delivered,
            Step::DeliveredForScanning => Step::DeliveredForScanning,
            Step::Finished => Step::Finished,
            Step::TlsFailed => Step::TlsFailed,
            Step::HardBounced => Step::HardBounced,
            Step::Bounced { dcid, response } => Step::Bounced {
                dcid: *dcid,
                response,
            },
            Step::FailureDetail(detail) => Step::FailureDetail(detail),
            Step::RetryScheduled { delay_secs } => Step::RetryScheduled {
                delay_secs: *delay_secs,
            },
            Step::Expired { lifetime_secs } => Step::Expired {
                lifetime_secs: *lifetime_secs,
            },
            Step::SpoolFailure(error) => Step::SpoolFailure(error),
        }
    }
}

impl Step<&str> {
    /// Not written to the mail log, only shown by `track`.
    pub(super) fn tracking_only(&self) -> bool {
        matches!(self, Step::DeliveredForScanning)
    }

    fn write(&self, f: &mut fmt::Formatter<'_>, mid: u64) -> fmt::Result {
        match self {
            Step::Enqueued(ids) => write!(
                f,
                "TDC: MID {mid} with Message-ID '{}' enqueued for forwarding to {SETD} to the message intake address {} (queue ID {})",
                sanitize(ids.message_id),
                sanitize(ids.intake),
                sanitize(ids.queue_id)
            ),
            Step::Recovered(ids) => write!(
                f,
                "TDC: MID {mid} with Message-ID '{}' recovered from the spool for the message intake address {} (queue ID {})",
                sanitize(ids.message_id),
                sanitize(ids.intake),
                sanitize(ids.queue_id)
            ),
            Step::DeliveryStart { dcid } => {
                write!(f, "TDC: Delivery start DCID {dcid} MID {mid}")
            }
            Step::Delivered => write!(
                f,
                "TDC: MID {mid} successfully delivered for scanning with {SETD}."
            ),
            Step::DeliveredForScanning => write!(
                f,
                "TDC: Message {mid} was successfully delivered for scanning with {SETD}."
            ),
            Step::Finished => write!(f, "Message finished MID {mid} done"),
            Step::TlsFailed => {
                write!(f, "TDC: MID {mid} delivery failed to {SETD}: TLS Error.")
            }
            Step::HardBounced => {
                write!(f, "TDC: MID {mid} delivery failed to {SETD}: Hard Bounced.")
            }
            Step::Bounced { dcid, response } => write!(
                f,
                "Bounced: DCID {dcid} MID {mid} to RID 0 - Bounced by destination server with response: {}",
                sanitize(response)
            ),
            Step::FailureDetail(detail) => {
                write!(f, "TDC: MID {mid} delivery attempt failed: {}", sanitize(detail))
            }
            Step::RetryScheduled { delay_secs } => write!(
                f,
                "TDC: MID {mid} soft bounced, one retry in {delay_secs} s"
            ),
            Step::Expired { lifetime_secs } => write!(
                f,
                "TDC: MID {mid} removed from the.tdc.queue: not delivered within its lifetime of {lifetime_secs} s"
            ),
            Step::SpoolFailure(error) => write!(
                f,
                "TDC: MID {mid}: spool failure: {}; if the file stays, the journal is delivered again after a restart",
                sanitize(error)
            ),
        }
    }
}

impl<'a> Event<'a> {
    /// `step` of the journal `mid`.
    pub fn journal(mid: u64, step: Step<&'a str>) -> Event<'a> {
        Event::Journal { mid, step }
    }
}

impl Event<'_> {
    pub fn severity(&self) -> Severity {
        match self {
            Event::TlsVerifyOff
            | Event::JournalingGap { .. }
            | Event::NotJournaled { .. }
            | Event::DamagedSpoolFile { .. }
            | Event::ReloadRefused { .. }
            | Event::ControlUnavailable { .. }
            | Event::MetricsUnavailable { .. }
            | Event::AcceptFailing { .. }
            | Event::FileLimitLow { .. }
            | Event::DeliveriesAbandoned => Severity::Warning,
            Event::Journal {
                step: Step::SpoolFailure(_),
                ..
            } => Severity::Critical,
            _ => Severity::Info,
        }
    }
}

impl fmt::Display for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Starting { version, listen } => {
                write!(f, "tdc-milter {version} starting, milter socket {listen}")
            }
            Event::Stopping => write!(f, "tdc-milter stopping"),
            Event::JournalingGap {
                last_alive,
                off_secs,
            } => write!(
                f,
                "TDC: journaling was off for {off_secs} s: the previous instance was last running at {last_alive}; mail received meanwhile was not journaled"
            ),
            Event::TlsVerifyOff => write!(
                f,
                "TDC: certificate verification of the message intake is off (delivery.tls.verify: false)"
            ),
            Event::NotJournaled {
                queue_id,
                message_id,
                reason,
            } => write!(
                f,
                "TDC: message with Message-ID '{}' (queue ID {}) not journaled: {}",
                sanitize(message_id),
                sanitize(queue_id),
                sanitize(reason)
            ),
            Event::Quarantined {
                queue_id,
                message_id,
                reason,
            } => write!(
                f,
                "TDC: message with Message-ID '{}' (queue ID {}) not journaled: quarantined by an earlier mail filter: {}",
                sanitize(message_id),
                sanitize(queue_id),
                sanitize(reason)
            ),
            Event::Journal { mid, step } => step.write(f, *mid),
            Event::NewConnection {
                dcid,
                interface,
                address,
                port,
            } => write!(
                f,
                "TDC: New SMTP DCID {dcid} interface {interface} address {address} port {port}"
            ),
            Event::TlsSuccess {
                dcid,
                protocol,
                cipher,
            } => write!(f, "DCID {dcid} TLS success protocol {protocol} cipher {cipher}"),
            Event::ConnectionError {
                dcid,
                address,
                port,
                details,
                interface,
                reason,
            } => {
                let address = address.map_or_else(|| "-".to_string(), |a| a.to_string());
                let interface = interface.map_or_else(|| "-".to_string(), |a| a.to_string());
                write!(
                    f,
                    "TDC: Connection Error: DCID {dcid} domain: the.tdc.queue IP: {address} port: {port} details: {} interface: {interface} reason: {}",
                    sanitize(details),
                    sanitize(reason)
                )
            }
            Event::DnsError { detail } => write!(f, "DNS Error {}", sanitize(detail)),
            Event::BadDestinationHost {
                name,
                qtype,
                reason,
            } => write!(
                f,
                "TDC: Hard bounced - {}",
                bad_destination_host(name, qtype, reason)
            ),
            Event::Recovered { count } => {
                write!(f, "TDC: {count} journals recovered from the spool")
            }
            Event::DamagedSpoolFile { path, reason } => write!(
                f,
                "TDC: damaged spool file {} moved aside: {}",
                sanitize(path),
                sanitize(reason)
            ),
            Event::Reloaded {
                path,
                restart_needed,
            } => {
                write!(f, "TDC: settings reloaded from {}", sanitize(path))?;
                if !restart_needed.is_empty() {
                    write!(
                        f,
                        "; changes to {restart_needed} take effect only after a restart"
                    )?;
                }
                Ok(())
            }
            Event::ReloadRefused { error } => write!(
                f,
                "TDC: settings not reloaded, the previous settings stay in force: {}",
                sanitize(error)
            ),
            Event::ControlUnavailable { error } => write!(
                f,
                "TDC: control socket not available ({}); tophosts, status and track will not answer",
                sanitize(error)
            ),
            Event::MetricsListening { address } => {
                write!(f, "TDC: metrics on http://{address}/metrics")
            }
            Event::MetricsUnavailable { error } => {
                write!(f, "TDC: metrics not available: {}", sanitize(error))
            }
            Event::FileLimitLow { limit, needed } => write!(
                f,
                "TDC: the open file limit is {limit}, below the {needed} that milter.max_connections and delivery.max_connections can hold open; raise LimitNOFILE (systemctl edit tdc-milter) or lower those settings"
            ),
            Event::AcceptFailing { socket, error } => write!(
                f,
                "TDC: cannot accept connections on the {socket} socket: {}; retrying{}",
                sanitize(error),
                if *socket == "milter" {
                    "; meanwhile the MTA waits for its milter connect timeout, then applies its default_action: mail flows, not journaled"
                } else {
                    ""
                }
            ),
            Event::AcceptRecovered {
                socket,
                errors,
                seconds,
            } => write!(
                f,
                "TDC: accepting connections on the {socket} socket again after {errors} failed accepts in {seconds} s"
            ),
            Event::DeliveriesAbandoned => write!(
                f,
                "TDC: deliveries still running at shutdown were abandoned; their journals stay in the spool"
            ),
        }
    }
}

/// The appliance's response text for an intake domain that cannot receive mail; it
/// appears in the `Hard bounced` and the `Bounced` lines: the lookup of `name` for
/// records of type `qtype` failed for `reason`.
pub fn bad_destination_host(name: &str, qtype: &str, reason: &str) -> String {
    format!(
        "5.1.2 - Bad destination host ('000', ['DNS Hard Error looking up {} ({}) : {}'])",
        sanitize(name),
        sanitize(qtype),
        sanitize(reason)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_path_lines_match_the_reference_wording() {
        let enq = Event::journal(
            14501404,
            Step::Enqueued(Ids {
                message_id: "<O7afv777xxreILg2OQ@gostrt-sstp-0>",
                intake: "33c48e-27xp9-05ecb4@beta.cmd.cisco.com",
                queue_id: "3E354998043",
            }),
        );
        assert_eq!(
            enq.to_string(),
            "TDC: MID 14501404 with Message-ID '<O7afv777xxreILg2OQ@gostrt-sstp-0>' enqueued for forwarding to Cisco Secure Email Threat Defense to the message intake address 33c48e-27xp9-05ecb4@beta.cmd.cisco.com (queue ID 3E354998043)"
        );
        let conn = Event::NewConnection {
            dcid: 4566150,
            interface: "10.13.0.99".parse().expect("ip"),
            address: "10.10.55.171".parse().expect("ip"),
            port: 25,
        };
        assert_eq!(
            conn.to_string(),
            "TDC: New SMTP DCID 4566150 interface 10.13.0.99 address 10.10.55.171 port 25"
        );
        let tls = Event::TlsSuccess {
            dcid: 4566150,
            protocol: "TLSv1.2",
            cipher: "ECDHE-RSA-AES128-GCM-SHA256",
        };
        assert_eq!(
            tls.to_string(),
            "DCID 4566150 TLS success protocol TLSv1.2 cipher ECDHE-RSA-AES128-GCM-SHA256"
        );
        assert_eq!(
            Event::journal(14501404, Step::DeliveryStart { dcid: 4566150 }).to_string(),
            "TDC: Delivery start DCID 4566150 MID 14501404"
        );
        assert_eq!(
            Event::journal(14501404, Step::Delivered).to_string(),
            "TDC: MID 14501404 successfully delivered for scanning with Cisco Secure Email Threat Defense."
        );
        assert_eq!(
            Event::journal(14501404, Step::Finished).to_string(),
            "Message finished MID 14501404 done"
        );
    }

    #[test]
    fn failure_lines_match_the_reference_wording() {
        let e = Event::ConnectionError {
            dcid: 36,
            address: Some("10.10.0.3".parse().expect("ip")),
            port: 25,
            details: "timeout",
            interface: Some("10.10.11.63".parse().expect("ip")),
            reason: "connection timed out",
        };
        assert_eq!(
            e.to_string(),
            "TDC: Connection Error: DCID 36 domain: the.tdc.queue IP: 10.10.0.3 port: 25 details: timeout interface: 10.10.11.63 reason: connection timed out"
        );
        assert_eq!(
            Event::journal(1450012, Step::TlsFailed).to_string(),
            "TDC: MID 1450012 delivery failed to Cisco Secure Email Threat Defense: TLS Error."
        );
        assert_eq!(
            Event::journal(171, Step::HardBounced).to_string(),
            "TDC: MID 171 delivery failed to Cisco Secure Email Threat Defense: Hard Bounced."
        );
        assert_eq!(
            Event::BadDestinationHost {
                name: "outbound.cisco.om",
                qtype: "MX",
                reason: "NXDomain"
            }
            .to_string(),
            "TDC: Hard bounced - 5.1.2 - Bad destination host ('000', ['DNS Hard Error looking up outbound.cisco.om (MX) : NXDomain'])"
        );
        assert_eq!(
            Event::DnsError {
                detail: "esa.example.com MX - NXDomain"
            }
            .to_string(),
            "DNS Error esa.example.com MX - NXDomain"
        );
    }
}
