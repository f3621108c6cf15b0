//! Delivery failures, classified where the protocol stage is known.
//!
//! The retry table (docs/DELIVERY.md) depends on the stage as much as on the reply: a 5xx to
//! STARTTLS is a TLS failure, EOF during the handshake is a TLS failure, and a 503 to a
//! pipelined DATA after a refused RCPT is decided by the RCPT reply. So every failure
//! carries both.

use std::fmt;

/// Where in the session a failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Dns,
    Connect,
    Greeting,
    Ehlo,
    StartTls,
    TlsHandshake,
    /// EHLO again, inside TLS.
    TlsEhlo,
    Mail,
    Rcpt,
    Data,
    /// The message body and the reply to the final dot.
    Message,
    Rset,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Dns => "DNS",
            Stage::Connect => "connect",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "EHLO",
            Stage::StartTls => "STARTTLS",
            Stage::TlsHandshake => "TLS handshake",
            Stage::TlsEhlo => "EHLO after STARTTLS",
            Stage::Mail => "MAIL FROM",
            Stage::Rcpt => "RCPT TO",
            Stage::Data => "DATA",
            Stage::Message => "end of data",
            Stage::Rset => "RSET",
        }
    }
}

/// An SMTP reply: code, enhanced status code if any, text (lines joined by a space).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<[u8; 3]>,
    pub text: String,
}

impl Reply {
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some([a, b, c]) = self.enhanced {
            write!(f, " {a}.{b}.{c}")?;
        }
        if !self.text.is_empty() {
            write!(f, " {}", self.text)?;
        }
        Ok(())
    }
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// The server answered with an unexpected reply.
    Reply(Reply),
    /// The server does not offer STARTTLS, or refused it: we never send in plaintext.
    TlsUnavailable(String),
    /// The TLS handshake failed (certificate, version, alert, EOF during the handshake).
    Tls(TlsFailure),
    /// The journal has 8-bit content and the intake does not offer 8BITMIME; we never
    /// re-encode the original.
    No8BitMime,
    /// A connection-level failure: refused, reset, closed, unreachable.
    Network(String),
    /// No reply within the stage's time limit.
    Timeout,
    /// The intake domain does not exist, has a null MX, or has no address.
    DnsPermanent(DnsFailure),
    /// SERVFAIL, timeouts and other DNS trouble that may pass.
    DnsTemporary(DnsFailure),
    /// The server's bytes are not SMTP.
    Protocol(String),
}

/// Why routing through DNS found nowhere to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsFailure {
    /// A lookup failed; shown as the appliance logs it, `NAME TYPE - REASON`
    /// (`intake.example.net MX - NXDomain`).
    Lookup {
        name: String,
        qtype: String,
        reason: String,
    },
    /// The lookups answered, but left no address to connect to.
    NoUsableHost { what: String },
}

impl DnsFailure {
    pub fn lookup(name: &str, qtype: &str, reason: impl Into<String>) -> DnsFailure {
        DnsFailure::Lookup {
            name: name.to_string(),
            qtype: qtype.to_string(),
            reason: reason.into(),
        }
    }

    /// Name, record type and reason, for the appliance's "Bad destination host" text.
    pub fn parts(&self) -> (&str, &str, &str) {
        match self {
            DnsFailure::Lookup {
                name,
                qtype,
                reason,
            } => (name, qtype, reason),
            DnsFailure::NoUsableHost { what } => (what, "MX", "NoHost"),
        }
    }
}

impl fmt::Display for DnsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsFailure::Lookup {
                name,
                qtype,
                reason,
            } => write!(f, "{name} {qtype} - {reason}"),
            DnsFailure::NoUsableHost { what } => write!(f, "{what} has no usable mail host"),
        }
    }
}

/// A failed TLS handshake: what it was about, read from rustls's error type rather
/// than its wording (so `probe` can explain it), and the text for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFailure {
    pub problem: TlsProblem,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsProblem {
    /// The chain does not end at a trusted CA, or a signature in it is bad.
    UntrustedIssuer,
    /// Trusted, but it names no host that `delivery.tls.match` accepts.
    NotTheIntake,
    /// Trusted, but not valid for the name we connected to.
    WrongName,
    Expired,
    NotValidYet,
    /// Anything else: the protocol version, an alert, EOF, plaintext after STARTTLS.
    Other,
}

impl TlsFailure {
    pub fn new(problem: TlsProblem, detail: impl Into<String>) -> TlsFailure {
        TlsFailure {
            problem,
            detail: detail.into(),
        }
    }

    /// A failure that is not about the certificate.
    pub fn other(detail: impl Into<String>) -> TlsFailure {
        TlsFailure::new(TlsProblem::Other, detail)
    }
}

/// The class of a failure, as the retry table (docs/DELIVERY.md) sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// TLS failures are hard bounces: they need an administrator, not a retry.
    Tls,
    /// 5xx except 503/552, and other permanent causes.
    Permanent,
    /// 4xx, 503, 552.
    Transient,
    /// Network, connection, temporary DNS failures and timeouts.
    Network,
}

impl FailureClass {
    /// A stable lower-case name (metric labels, logs).
    pub fn name(self) -> &'static str {
        match self {
            FailureClass::Tls => "tls",
            FailureClass::Permanent => "permanent",
            FailureClass::Transient => "transient",
            FailureClass::Network => "network",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryError {
    pub stage: Stage,
    pub kind: Kind,
}

impl DeliveryError {
    pub fn new(stage: Stage, kind: Kind) -> DeliveryError {
        DeliveryError { stage, kind }
    }

    pub fn class(&self) -> FailureClass {
        match &self.kind {
            Kind::TlsUnavailable(_) | Kind::Tls(_) => FailureClass::Tls,
            // A refusal of STARTTLS itself is a TLS failure whatever its code.
            Kind::Reply(_) if self.stage == Stage::StartTls => FailureClass::Tls,
            Kind::Reply(r) if r.code >= 500 && r.code != 503 && r.code != 552 => {
                FailureClass::Permanent
            }
            Kind::Reply(_) => FailureClass::Transient,
            Kind::No8BitMime | Kind::DnsPermanent(_) => FailureClass::Permanent,
            Kind::Network(_) | Kind::Timeout | Kind::DnsTemporary(_) | Kind::Protocol(_) => {
                FailureClass::Network
            }
        }
    }

    /// Whether the failure concerns the connection rather than one journal.
    pub fn is_connection_level(&self) -> bool {
        matches!(
            self.stage,
            Stage::Dns
                | Stage::Connect
                | Stage::Greeting
                | Stage::Ehlo
                | Stage::StartTls
                | Stage::TlsHandshake
                | Stage::TlsEhlo
        ) || matches!(
            self.kind,
            Kind::Network(_) | Kind::Timeout | Kind::Protocol(_)
        )
    }
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = self.stage.name();
        match &self.kind {
            Kind::Reply(r) => write!(f, "{stage}: server replied {r}"),
            Kind::TlsUnavailable(why) => write!(f, "{stage}: {why}"),
            Kind::Tls(why) => write!(f, "{stage}: TLS failure: {}", why.detail),
            Kind::No8BitMime => write!(
                f,
                "{stage}: the journal has 8-bit content and the intake does not offer 8BITMIME"
            ),
            Kind::Network(why) => write!(f, "{stage}: {why}"),
            Kind::Timeout => write!(f, "{stage}: timeout"),
            Kind::DnsPermanent(why) | Kind::DnsTemporary(why) => write!(f, "{stage}: {why}"),
            Kind::Protocol(why) => write!(f, "{stage}: protocol error: {why}"),
        }
    }
}

impl std::error::Error for DeliveryError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dns_failure_reads_as_the_appliance_writes_it() {
        let nx = DnsFailure::lookup("intake.example.net", "MX", "NXDomain");
        assert_eq!(nx.to_string(), "intake.example.net MX - NXDomain");
        assert_eq!(nx.parts(), ("intake.example.net", "MX", "NXDomain"));
        let none = DnsFailure::NoUsableHost {
            what: "intake.example.net".into(),
        };
        assert_eq!(
            none.to_string(),
            "intake.example.net has no usable mail host"
        );
        assert_eq!(none.parts(), ("intake.example.net", "MX", "NoHost"));
    }

    fn reply(stage: Stage, code: u16) -> DeliveryError {
        DeliveryError::new(
            stage,
            Kind::Reply(Reply {
                code,
                enhanced: None,
                text: String::new(),
            }),
        )
    }

    #[test]
    fn classes_follow_the_retry_table() {
        assert_eq!(reply(Stage::Rcpt, 550).class(), FailureClass::Permanent);
        assert_eq!(reply(Stage::Rcpt, 452).class(), FailureClass::Transient);
        assert_eq!(reply(Stage::Data, 503).class(), FailureClass::Transient);
        assert_eq!(reply(Stage::Message, 552).class(), FailureClass::Transient);
        assert_eq!(reply(Stage::Greeting, 421).class(), FailureClass::Transient);
        assert_eq!(reply(Stage::StartTls, 454).class(), FailureClass::Tls);
        assert_eq!(reply(Stage::StartTls, 502).class(), FailureClass::Tls);
        let eof = DeliveryError::new(Stage::TlsHandshake, Kind::Tls(TlsFailure::other("eof")));
        assert_eq!(eof.class(), FailureClass::Tls);
        let none = DeliveryError::new(Stage::Ehlo, Kind::TlsUnavailable("no".into()));
        assert_eq!(none.class(), FailureClass::Tls);
        let refused = DeliveryError::new(Stage::Connect, Kind::Network("refused".into()));
        assert_eq!(refused.class(), FailureClass::Network);
        assert_eq!(
            DeliveryError::new(Stage::Message, Kind::Timeout).class(),
            FailureClass::Network
        );
        assert_eq!(
            DeliveryError::new(
                Stage::Dns,
                Kind::DnsPermanent(DnsFailure::lookup("a.test", "MX", "NXDomain"))
            )
            .class(),
            FailureClass::Permanent
        );
        assert_eq!(
            DeliveryError::new(Stage::Mail, Kind::No8BitMime).class(),
            FailureClass::Permanent
        );
    }

    #[test]
    fn reply_display_includes_enhanced_code() {
        let r = Reply {
            code: 550,
            enhanced: Some([5, 1, 1]),
            text: "no such user".into(),
        };
        assert_eq!(r.to_string(), "550 5.1.1 no such user");
        let e = DeliveryError::new(Stage::Rcpt, Kind::Reply(r));
        assert_eq!(
            e.to_string(),
            "RCPT TO: server replied 550 5.1.1 no such user"
        );
    }
}
