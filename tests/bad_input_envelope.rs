//! The bad-input catalogue: hostile or broken envelopes, each sent to the real daemon
//! in-process.
//! What every case asserts is in `tests/common/catalogue.rs`.

mod common;

use common::catalogue::*;

// Envelope
// ---------------------------------------------------------------------------------

/// Expected: journaled; CR, LF, ESC and BEL in the envelope sender become spaces in
/// the report's one Sender line; no log line carries them.
#[tokio::test]
async fn envelope_sender_with_crlf_and_control_bytes() {
    let m = Raw::new("QSNDCTL")
        .sender(b"<ev\r\nSender: forged\x1b\x07@sender.example>")
        .header("Message-ID", "<sndctl@sender.example>");
    let original = m.expected_original();
    let j = journaled_once(
        m,
        Report {
            sender: "ev  Sender: forged  @sender.example",
            subject: "",
            message_id: "<sndctl@sender.example>",
            recipients: &["bob@example.com"],
        },
        &original,
        "<sndctl@sender.example>",
    )
    .await;
    assert_eq!(
        j.report
            .lines()
            .filter(|l| l.starts_with("Sender:"))
            .count(),
        1
    );
}

/// Expected: journaled; CR and LF in an envelope recipient cannot forge a second
/// Recipient line: the report lists it on one line.
#[tokio::test]
async fn envelope_recipient_with_crlf() {
    let m = Raw::new("QRCPTCTL")
        .recipients(&[&b"<bob\r\nRecipient: forged@evil.example>"[..]])
        .header("Message-ID", "<rcptctl@sender.example>");
    let original = m.expected_original();
    let j = journaled_once(
        m,
        Report {
            sender: "a@sender.example",
            subject: "",
            message_id: "<rcptctl@sender.example>",
            recipients: &["bob  Recipient: forged@evil.example"],
        },
        &original,
        "<rcptctl@sender.example>",
    )
    .await;
    assert_eq!(
        j.report
            .lines()
            .filter(|l| l.starts_with("Recipient:"))
            .count(),
        1
    );
}

/// Expected: journaled; the null sender is reported as `Sender: <>`.
#[tokio::test]
async fn null_sender() {
    let m = Raw::new("QNULL")
        .sender("<>")
        .header("Subject", "Undelivered Mail Returned to Sender")
        .header("Message-ID", "<bounce@sender.example>");
    let original = m.expected_original();
    journaled_once(
        m,
        Report {
            sender: "<>",
            subject: "Undelivered Mail Returned to Sender",
            message_id: "<bounce@sender.example>",
            recipients: &["bob@example.com"],
        },
        &original,
        "<bounce@sender.example>",
    )
    .await;
}

/// Expected: journaled; a sender with a quoted local part holding spaces and escaped
/// quotes is reported exactly, without the angle brackets.
#[tokio::test]
async fn sender_with_spaces_and_quotes() {
    let m = Raw::new("QSNDQ")
        .sender(r#"<"john \"q\" public"@sender.example>"#)
        .header("Message-ID", "<sndq@sender.example>");
    let original = m.expected_original();
    journaled_once(
        m,
        Report {
            sender: r#""john \"q\" public"@sender.example"#,
            subject: "",
            message_id: "<sndq@sender.example>",
            recipients: &["bob@example.com"],
        },
        &original,
        "<sndq@sender.example>",
    )
    .await;
}

/// Expected: one journal per distinct intake; a recipient given twice is listed once,
/// a different spelling of it (case) is its own recipient.
#[tokio::test]
async fn duplicated_recipients() {
    let m = Raw::new("QDUPRCPT")
        .recipients(&[
            "<bob@example.com>",
            "<carol@example.com>",
            "<bob@example.com>",
            "bob@example.com",
            "<Bob@Example.com>",
        ])
        .header("Message-ID", "<duprcpt@sender.example>");
    let original = m.expected_original();
    journaled_once(
        m,
        Report {
            sender: "a@sender.example",
            subject: "",
            message_id: "<duprcpt@sender.example>",
            recipients: &["bob@example.com", "carol@example.com", "Bob@Example.com"],
        },
        &original,
        "<duprcpt@sender.example>",
    )
    .await;
}

const RESEARCH: &str = r#"  - name: research
    recipients: [".lab.example.com"]
    connector: { custom: research@intake.test }
"#;

/// Expected: a recipient domain with a trailing dot matches its policy as without the
/// dot (the research journal) and is reported as given; the parent domain with a
/// trailing dot is not a sub-domain (the global journal).
#[tokio::test]
async fn recipient_with_trailing_dot_domain() {
    let m = Raw::new("QDOT")
        .recipients(&["<x@dept.lab.example.com.>", "<y@lab.example.com.>"])
        .header("Message-ID", "<dot@sender.example>");
    let original = m.expected_original();
    let h = Harness::with_policies(RESEARCH).await;
    h.send(&m).await;
    let received = h.journals(2).await;
    for r in &received {
        let (intake, rcpt) = if r.rcpt_to == ["research@intake.test"] {
            ("research@intake.test", "x@dept.lab.example.com.")
        } else {
            (GLOBAL, "y@lab.example.com.")
        };
        check_journal(
            r,
            intake,
            &Report {
                sender: "a@sender.example",
                subject: "",
                message_id: "<dot@sender.example>",
                recipients: &[rcpt],
            },
            &original,
        );
    }
    assert_ne!(received[0].rcpt_to, received[1].rcpt_to);
    let lines = h.finish(2).await;
    for intake in ["research@intake.test", GLOBAL] {
        assert!(lines.iter().any(|l| l.contains(&format!("enqueued for forwarding to {SETD} to the message intake address {intake} (queue ID QDOT)"))), "{lines:#?}");
    }
}

/// Expected: a recipient domain in Unicode and the same domain in punycode both match
/// the one IDN policy: one journal to its intake with both recipients, as given (the
/// report is quoted-printable); another domain goes to the global intake.
#[tokio::test]
async fn idn_recipient_domains_unicode_and_punycode() {
    let policies = r#"  - name: idn
    recipients: ["bücher.example"]
    connector: { custom: idn@intake.test }
"#;
    let m = Raw::new("QIDN")
        .recipients(&[
            "<jürgen@bücher.example>",
            "<b@xn--bcher-kva.example>",
            "<c@BÜCHER.example>",
            "<d@buecher.example>",
        ])
        .header("Message-ID", "<idn@sender.example>");
    let original = m.expected_original();
    let h = Harness::with_policies(policies).await;
    h.send(&m).await;
    let received = h.journals(2).await;
    for r in &received {
        if r.rcpt_to == ["idn@intake.test"] {
            check_journal(
                r,
                "idn@intake.test",
                &Report {
                    sender: "a@sender.example",
                    subject: "",
                    message_id: "<idn@sender.example>",
                    recipients: &[
                        "jürgen@bücher.example",
                        "b@xn--bcher-kva.example",
                        "c@BÜCHER.example",
                    ],
                },
                &original,
            );
            assert!(String::from_utf8_lossy(&r.data)
                .contains("Content-Transfer-Encoding: quoted-printable\r\n"));
        } else {
            check_journal(
                r,
                GLOBAL,
                &Report {
                    sender: "a@sender.example",
                    subject: "",
                    message_id: "<idn@sender.example>",
                    recipients: &["d@buecher.example"],
                },
                &original,
            );
        }
    }
    assert_ne!(received[0].rcpt_to, received[1].rcpt_to);
    h.finish(2).await;
}

/// Expected: a quoted local part matches the policy written with the same quoted local
/// part (case-insensitively); the unquoted dotted variant is a different address.
#[tokio::test]
async fn quoted_local_part_recipient() {
    let policies = r#"  - name: quoted
    recipients: ['"John Doe"@example.com']
    connector: { custom: quoted@intake.test }
"#;
    let m = Raw::new("QQUOTE")
        .recipients(&[r#"<"john doe"@example.com>"#, "<john.doe@example.com>"])
        .header("Message-ID", "<quote@sender.example>");
    let original = m.expected_original();
    let h = Harness::with_policies(policies).await;
    h.send(&m).await;
    let received = h.journals(2).await;
    for r in &received {
        let (intake, rcpt) = if r.rcpt_to == ["quoted@intake.test"] {
            ("quoted@intake.test", r#""john doe"@example.com"#)
        } else {
            (GLOBAL, "john.doe@example.com")
        };
        check_journal(
            r,
            intake,
            &Report {
                sender: "a@sender.example",
                subject: "",
                message_id: "<quote@sender.example>",
                recipients: &[rcpt],
            },
            &original,
        );
    }
    assert_ne!(received[0].rcpt_to, received[1].rcpt_to);
    h.finish(2).await;
}

/// Expected: 1,000 recipients across 100 custom-intake policies give exactly 100
/// journals, one per intake, each listing exactly its 10 recipients in arrival order.
#[tokio::test]
async fn thousand_recipients_across_hundred_policies() {
    let mut policies = String::new();
    for p in 0..100 {
        policies.push_str(&format!(
            "  - name: p{p}\n    recipients: [\"d{p}.example\"]\n    connector: {{ custom: i{p}@intake.test }}\n"
        ));
    }
    // Interleaved: recipient n goes to policy n % 100.
    let rcpts: Vec<String> = (0..1000)
        .map(|n| format!("<r{n}@d{}.example>", n % 100))
        .collect();
    let m = Raw::new("QMANY")
        .recipients(&rcpts)
        .header("Message-ID", "<many@sender.example>");
    let original = m.expected_original();
    let h = Harness::with_policies(&policies).await;
    h.send(&m).await;
    let received = h.journals(100).await;
    let mut intakes: Vec<String> = Vec::new();
    for r in &received {
        let intake = r.rcpt_to[0].clone();
        let p: usize = intake
            .strip_prefix('i')
            .and_then(|s| s.strip_suffix("@intake.test"))
            .and_then(|s| s.parse().ok())
            .expect("custom intake");
        let expected: Vec<String> = (0..10)
            .map(|k| format!("r{}@d{p}.example", p + 100 * k))
            .collect();
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        check_journal(
            r,
            &intake,
            &Report {
                sender: "a@sender.example",
                subject: "",
                message_id: "<many@sender.example>",
                recipients: &expected,
            },
            &original,
        );
        intakes.push(intake);
    }
    intakes.sort();
    intakes.dedup();
    assert_eq!(intakes.len(), 100, "one journal per distinct intake");
    let lines = h.finish(100).await;
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("(queue ID QMANY)"))
            .count(),
        100
    );
}

// ---------------------------------------------------------------------------------
