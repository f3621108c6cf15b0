//! Whether a message at its end is journaled, and if not, why: the checks in the
//! order of [`Outcome`], the first that applies gives the reason. Pure: the caller
//! logs, counts and tracks what comes out (docs/LOGGING.md, "Not journaled").

use std::net::IpAddr;

use crate::config::{Connector, Settings};
use crate::journal;
use crate::outcome::{Outcome, Skip};
use crate::policy::{self, Job};

use super::message::Message;

/// What the MTA told us about the message besides its content.
pub struct MessageContext<'a> {
    pub queue_id: &'a str,
    pub authenticated: bool,
    pub daemon_name: Option<&'a str>,
    pub client_ip: Option<IpAddr>,
    /// Sendmail's `{quarantine}`: the reason an earlier filter quarantined the message.
    pub quarantine: Option<&'a str>,
    /// The connection came past milter.max_connections.
    pub busy: bool,
}

/// How the reason for [`Outcome::Quarantined`] begins; the log line has its own
/// wording around the filter's reason.
pub const QUARANTINED_PREFIX: &str = "quarantined by an earlier mail filter: ";

/// The journals to build, or why there are none.
pub fn decide(cx: &MessageContext<'_>, msg: &Message) -> Result<Vec<Job>, Skip> {
    let settings = &msg.settings;
    if !settings.enabled {
        return Err(Skip::new(
            Outcome::Disabled,
            "delivery disabled by enabled: false",
        ));
    }
    if cx.authenticated {
        return Err(Skip::new(
            Outcome::Authenticated,
            "authenticated submission",
        ));
    }
    let daemons = &settings.incoming.daemon_names;
    if !daemons.is_empty()
        && !cx
            .daemon_name
            .is_some_and(|d| daemons.iter().any(|n| n == d))
    {
        let reason = match cx.daemon_name {
            Some(d) => format!("received on service '{d}', not one of incoming.daemon_names"),
            None => "the MTA sent no {daemon_name}, and incoming.daemon_names is set".into(),
        };
        return Err(Skip::new(Outcome::NotIncoming, reason));
    }
    if let Some(ip) = cx.client_ip.filter(|ip| settings.incoming.is_internal(*ip)) {
        return Err(Skip::new(
            Outcome::InternalClient,
            format!(
                "internal client {} (incoming.internal_networks)",
                ip.to_canonical()
            ),
        ));
    }
    if let Some(why) = loop_reason(settings, msg) {
        return Err(Skip::new(Outcome::Loop, format!("loop: {why}")));
    }
    let jobs = policy::resolve(settings, &msg.sender, &msg.recipients);
    if jobs.is_empty() {
        return Err(
            match policy::why_no_journal(settings, &msg.sender, &msg.recipients) {
                Outcome::NoPolicy => Skip::new(Outcome::NoPolicy, "no policy matched"),
                outcome => Skip::new(outcome, "connector off for every recipient"),
            },
        );
    }
    if let Some(reason) = cx.quarantine {
        return Err(Skip::new(
            Outcome::Quarantined,
            format!("{QUARANTINED_PREFIX}{reason}"),
        ));
    }
    if let Some((header, value)) = &msg.verdict {
        return Err(Skip::new(
            Outcome::NotClean,
            format!("not clean: verdict header {header}: {value}"),
        ));
    }
    if cx.busy {
        return Err(Skip::new(
            Outcome::MilterBusy,
            format!(
                "milter busy: milter.max_connections ({}) was reached when the MTA connected",
                settings.milter.max_connections
            ),
        ));
    }
    if msg.over_limit() {
        return Err(Skip::new(
            Outcome::TooLarge,
            format!(
                "size {} bytes exceeds journal.max_size {} bytes",
                msg.size(),
                settings.journal.max_size
            ),
        ));
    }
    Ok(jobs)
}

/// Why the message is a journal of ours coming back, or mail to an intake itself.
fn loop_reason(settings: &Settings, msg: &Message) -> Option<&'static str> {
    let sender = policy::strip_brackets(&msg.sender);
    if sender.eq_ignore_ascii_case(&settings.journal.sender) {
        return Some("the envelope sender is journal.sender");
    }
    // The marker alone a sender can write; with a journal's Message-ID too it is
    // one of ours (or forged with care, which this line then shows).
    if msg.journal_marker
        && msg
            .message_id
            .as_deref()
            .is_some_and(journal::is_journal_message_id)
    {
        return Some("the message is a journal (its marker header and Message-ID)");
    }
    let is_intake = |rcpt: &String| {
        let rcpt = policy::strip_brackets(rcpt);
        settings
            .intake_address
            .as_deref()
            .is_some_and(|i| i.eq_ignore_ascii_case(rcpt))
            || settings.policies.iter().any(|p| match &p.connector {
                Connector::Custom(i) => i.eq_ignore_ascii_case(rcpt),
                _ => false,
            })
    };
    if !msg.recipients.is_empty() && msg.recipients.iter().all(is_intake) {
        return Some("every recipient is an intake address");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::Arc;

    const SETTINGS: &str = r#"
intake_address: i@intake.test
journal:
  sender: tdc@gw.test
  max_size: 200B
  not_clean: [ { header: X-Spam-Flag, value: "YES" } ]
incoming:
  daemon_names: [ inbound ]
  internal_networks: [ 10.0.0.0/8, "2001:db8::/32" ]
milter:
  max_connections: 7
policies:
  - name: research
    recipients: [ research.test ]
    connector: { custom: r@intake.test }
  - name: quiet
    recipients: [ quiet.test ]
    connector: off
  - name: DEFAULT
    connector: global
"#;

    fn settings(extra: &str) -> Arc<Settings> {
        let yaml = format!("{SETTINGS}{extra}");
        Arc::new(Settings::from_yaml(&yaml, Path::new("t.yaml")).expect("settings"))
    }

    fn message(settings: Arc<Settings>, sender: &str, rcpts: &[&str]) -> Message {
        let mut m = Message::new(sender.into(), settings);
        m.recipients = rcpts.iter().map(|r| r.to_string()).collect();
        m.add_header(b"Message-ID", b" <m@example.net>", true);
        m.end_of_headers();
        m
    }

    fn context() -> MessageContext<'static> {
        MessageContext {
            queue_id: "4Q",
            authenticated: false,
            daemon_name: Some("inbound"),
            client_ip: Some("192.0.2.7".parse().expect("ip")),
            quarantine: None,
            busy: false,
        }
    }

    fn outcome(cx: &MessageContext<'_>, msg: &Message) -> (Outcome, String) {
        match decide(cx, msg) {
            Ok(jobs) => (Outcome::Journaled, format!("{} jobs", jobs.len())),
            Err(skip) => (skip.outcome, skip.reason),
        }
    }

    #[test]
    fn a_clean_incoming_message_is_journaled() {
        let msg = message(settings(""), "<a@example.net>", &["<b@example.com>"]);
        assert_eq!(outcome(&context(), &msg).0, Outcome::Journaled);
        let ipv4_mapped = MessageContext {
            client_ip: Some("::ffff:192.0.2.7".parse().expect("ip")),
            ..context()
        };
        assert_eq!(outcome(&ipv4_mapped, &msg).0, Outcome::Journaled);
    }

    #[test]
    fn each_reason_in_its_place() {
        let s = settings("");
        let clean = message(s.clone(), "<a@example.net>", &["<b@example.com>"]);
        let cases: Vec<(MessageContext<'_>, Message, Outcome, &str)> = vec![
            (
                context(),
                message(settings("enabled: false\n"), "<a@x.net>", &["<b@y.com>"]),
                Outcome::Disabled,
                "delivery disabled by enabled: false",
            ),
            (
                MessageContext {
                    authenticated: true,
                    ..context()
                },
                message(s.clone(), "<a@x.net>", &["<b@y.com>"]),
                Outcome::Authenticated,
                "authenticated submission",
            ),
            (
                MessageContext {
                    daemon_name: Some("submission"),
                    ..context()
                },
                message(s.clone(), "<a@x.net>", &["<b@y.com>"]),
                Outcome::NotIncoming,
                "received on service 'submission', not one of incoming.daemon_names",
            ),
            (
                MessageContext {
                    daemon_name: None,
                    ..context()
                },
                message(s.clone(), "<a@x.net>", &["<b@y.com>"]),
                Outcome::NotIncoming,
                "the MTA sent no {daemon_name}, and incoming.daemon_names is set",
            ),
            (
                MessageContext {
                    client_ip: Some("10.9.8.7".parse().expect("ip")),
                    ..context()
                },
                message(s.clone(), "<a@x.net>", &["<b@y.com>"]),
                Outcome::InternalClient,
                "internal client 10.9.8.7 (incoming.internal_networks)",
            ),
            (
                MessageContext {
                    client_ip: Some("::ffff:10.0.0.1".parse().expect("ip")),
                    ..context()
                },
                message(s.clone(), "<a@x.net>", &["<b@y.com>"]),
                Outcome::InternalClient,
                "internal client 10.0.0.1 (incoming.internal_networks)",
            ),
            (
                MessageContext {
                    client_ip: Some("2001:db8::5".parse().expect("ip")),
                    ..context()
                },
                message(s.clone(), "<a@x.net>", &["<b@y.com>"]),
                Outcome::InternalClient,
                "internal client 2001:db8::5 (incoming.internal_networks)",
            ),
            (
                context(),
                message(s.clone(), "<TDC@gw.test>", &["<b@y.com>"]),
                Outcome::Loop,
                "loop: the envelope sender is journal.sender",
            ),
            (
                context(),
                message(
                    s.clone(),
                    "<a@x.net>",
                    &["<i@intake.test>", "<R@intake.test>"],
                ),
                Outcome::Loop,
                "loop: every recipient is an intake address",
            ),
            (
                context(),
                message(s.clone(), "<a@x.net>", &["<n@quiet.test>"]),
                Outcome::ConnectorOff,
                "connector off for every recipient",
            ),
            (
                MessageContext {
                    quarantine: Some("held"),
                    ..context()
                },
                message(s.clone(), "<a@x.net>", &["<b@y.com>"]),
                Outcome::Quarantined,
                "quarantined by an earlier mail filter: held",
            ),
            (
                MessageContext {
                    busy: true,
                    ..context()
                },
                message(s.clone(), "<a@x.net>", &["<b@y.com>"]),
                Outcome::MilterBusy,
                "milter busy: milter.max_connections (7) was reached when the MTA connected",
            ),
        ];
        for (cx, msg, expected, reason) in &cases {
            assert_eq!(outcome(cx, msg), (*expected, reason.to_string()));
        }
        // The same message, clean, from the same context is journaled: each case
        // above differs in its one reason only.
        assert_eq!(outcome(&context(), &clean).0, Outcome::Journaled);
    }

    #[test]
    fn verdict_marker_and_size_from_the_content() {
        let s = settings("");
        let mut spam = Message::new("<a@x.net>".into(), s.clone());
        spam.recipients = vec!["<b@y.com>".into()];
        spam.add_header(b"X-Spam-Flag", b" YES", true);
        assert_eq!(
            outcome(&context(), &spam),
            (
                Outcome::NotClean,
                "not clean: verdict header X-Spam-Flag: YES".into()
            )
        );

        let mut journal = Message::new("<bounce@x.net>".into(), s.clone());
        journal.recipients = vec!["<b@y.com>".into()];
        journal.add_header(b"X-MS-Journal-Report", b"", true);
        journal.add_header(b"Message-ID", b" <1795000000000.42.tdc@other.gw>", true);
        assert_eq!(outcome(&context(), &journal).0, Outcome::Loop);
        // The marker without a journal's Message-ID is a sender's header: journaled.
        let mut forged = Message::new("<a@x.net>".into(), s.clone());
        forged.recipients = vec!["<b@y.com>".into()];
        forged.add_header(b"X-MS-Journal-Report", b"", true);
        forged.add_header(b"Message-ID", b" <m@x.net>", true);
        assert_eq!(outcome(&context(), &forged).0, Outcome::Journaled);

        let mut big = Message::new("<a@x.net>".into(), s);
        big.recipients = vec!["<b@y.com>".into()];
        big.end_of_headers();
        big.add_body(&[b'x'; 300]);
        assert_eq!(
            outcome(&context(), &big),
            (
                Outcome::TooLarge,
                "size 302 bytes exceeds journal.max_size 200 bytes".into()
            )
        );
    }
}
