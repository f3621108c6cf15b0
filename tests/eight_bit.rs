//! An original with 8-bit bytes goes out unaltered with BODY=8BITMIME; an intake
//! without 8BITMIME gets no re-encoded copy: the journal fails with a clear line.

mod common;

use common::daemon::{settings_yaml, Daemon, TestMessage};
use common::fake_intake::IntakeScript;
use std::time::Duration;

const BODY: &[u8] = b"Gr\xc3\xbc\xc3\x9fe aus M\xfcnchen\r\n";

fn message() -> TestMessage<'static> {
    TestMessage {
        queue_id: "Q8BIT",
        sender: "<a@sender.example>",
        recipients: &["<bob@example.com>"],
        headers: &[
            ("Subject", "=?utf-8?q?Gr=C3=BC=C3=9Fe?="),
            ("Content-Type", "text/plain; charset=utf-8"),
        ],
        body: BODY,
        auth: None,
    }
}

#[tokio::test]
async fn eight_bit_original_is_sent_unaltered_with_body_8bitmime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let daemon = Daemon::start(&settings_yaml(intake.addr(), &ca, ""), dir.path()).await;
    assert_eq!(
        daemon.send_one(&message()).await,
        indymilter_test::Status::Accept
    );

    let received = intake.wait_for_messages(1, Duration::from_secs(20)).await;
    let m = &received[0];
    assert!(
        m.mail_params.iter().any(|p| p == "BODY=8BITMIME"),
        "{:?}",
        m.mail_params
    );
    assert!(
        m.mail_params.iter().any(|p| p.starts_with("SIZE=")),
        "{:?}",
        m.mail_params
    );
    let text = String::from_utf8_lossy(&m.data);
    assert!(text.contains("Content-Transfer-Encoding: 8bit\r\n"));
    assert!(!text.to_ascii_lowercase().contains("base64"));
    let expected = message().expected_original("192.0.2.7");
    assert!(
        m.data
            .windows(expected.len())
            .any(|w| w == expected.as_slice()),
        "the original is not in the journal byte for byte"
    );
    let parsed = mail_parser::MessageParser::default()
        .parse(&m.data)
        .expect("parses");
    let report = parsed.body_text(0).expect("report");
    assert!(report.contains("Subject: Grüße"), "{report}");
    daemon.stop().await;
    intake.shutdown().await;
}

#[tokio::test]
async fn intake_without_8bitmime_gets_no_reencoded_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = IntakeScript::default().capabilities(&["PIPELINING", "SIZE 52428800"]);
    let (intake, ca) = common::start_intake(script, dir.path()).await;
    let daemon = Daemon::start(&settings_yaml(intake.addr(), &ca, ""), dir.path()).await;
    assert_eq!(
        daemon.send_one(&message()).await,
        indymilter_test::Status::Accept
    );
    let lines = daemon.wait_for_log("Message finished MID 1 done", 1).await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("TDC: MID 1 delivery attempt failed:")
                && l.contains("does not offer 8BITMIME")),
        "{lines:#?}"
    );
    assert!(lines.iter().any(|l| l.ends_with(
        "TDC: MID 1 delivery failed to Cisco Secure Email Threat Defense: Hard Bounced."
    )));
    daemon.stop().await;
    assert!(intake.messages().is_empty());
    intake.shutdown().await;
}
