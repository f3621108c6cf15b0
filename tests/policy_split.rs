//! One message, three recipients: a custom-policy recipient, a global one, and an `off`
//! one. Two journals come out, each listing only its own recipients, each carrying the
//! original byte for byte.

mod common;

use common::daemon::{settings_yaml, Daemon, TestMessage};
use common::fake_intake::IntakeScript;
use std::time::Duration;

const POLICIES: &str = r#"  - name: research
    recipients: [".lab.example.com"]
    connector: { custom: research@intake.test }
  - name: bulk
    recipients: ["nojournal@example.com"]
    connector: off
"#;

#[tokio::test]
async fn recipients_split_into_one_journal_per_intake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let daemon = Daemon::start(&settings_yaml(intake.addr(), &ca, POLICIES), dir.path()).await;

    let msg = TestMessage {
        queue_id: "4B1C2D3E4F",
        sender: "<alice@sender.example>",
        recipients: &[
            "<x@dept.lab.example.com>",
            "<bob@example.com>",
            "<nojournal@example.com>",
            "<carol@example.com>",
        ],
        headers: &[
            ("From", "alice@sender.example"),
            ("Subject", "quarterly\n\tfigures"),
            ("Message-ID", "<q1@sender.example>"),
            ("X-IronPort-RemoteIP", "6.6.6.6"),
        ],
        body: b"line one\r\n.dotted line\r\n",
        auth: None,
    };
    assert_eq!(daemon.send_one(&msg).await, indymilter_test::Status::Accept);

    let received = intake.wait_for_messages(2, Duration::from_secs(20)).await;
    let expected_original = msg.expected_original("192.0.2.7");
    let mut seen = Vec::new();
    for m in &received {
        assert_eq!(m.mail_from, "tdc@gw.test");
        assert_eq!(m.rcpt_to.len(), 1, "one intake per transaction");
        assert!(m.tls_version.is_some(), "delivered over TLS");
        let parsed = mail_parser::MessageParser::default()
            .parse(&m.data)
            .expect("journal parses");
        let report = parsed.body_text(0).expect("report").replace("\r\n", "\n");
        let recipients: Vec<&str> = report
            .lines()
            .filter_map(|l| l.strip_prefix("Recipient: "))
            .collect();
        assert!(
            report.contains("Sender: alice@sender.example\n"),
            "{report}"
        );
        assert!(report.contains("Subject: quarterly figures\n"), "{report}");
        assert!(
            report.contains("Message-Id: <q1@sender.example>\n"),
            "{report}"
        );
        let attachment = parsed.attachment(0).expect("attached original");
        let raw =
            &m.data[attachment.raw_body_offset() as usize..attachment.raw_end_offset() as usize];
        assert_eq!(
            String::from_utf8_lossy(raw),
            String::from_utf8_lossy(&expected_original),
            "attached original differs"
        );
        seen.push((m.rcpt_to[0].clone(), recipients.join(",")));
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (
                "global@intake.test".to_string(),
                "bob@example.com,carol@example.com".to_string()
            ),
            (
                "research@intake.test".to_string(),
                "x@dept.lab.example.com".to_string()
            ),
        ]
    );

    daemon
        .wait_for_log("successfully delivered for scanning", 2)
        .await;
    let lines = daemon.stop().await;
    let enqueued: Vec<&String> = lines.iter().filter(|l| l.contains(" enqueued ")).collect();
    assert_eq!(enqueued.len(), 2, "{lines:#?}");
    assert!(enqueued
        .iter()
        .all(|l| l.contains("Message-ID '<q1@sender.example>'")
            && l.ends_with("(queue ID 4B1C2D3E4F)")));
    for mid in [1, 2] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains("TDC: Delivery start DCID")
                    && l.ends_with(&format!(" MID {mid}"))),
            "no Delivery start for MID {mid}: {lines:#?}"
        );
        for needle in [
            format!("TDC: MID {mid} successfully delivered for scanning with Cisco Secure Email Threat Defense."),
            format!("Message finished MID {mid} done"),
        ] {
            assert!(lines.iter().any(|l| l.contains(&needle)), "missing '{needle}' in {lines:#?}");
        }
    }
    assert!(lines
        .iter()
        .any(|l| l.contains("TLS success protocol TLSv1.")));
    intake.shutdown().await;
}
