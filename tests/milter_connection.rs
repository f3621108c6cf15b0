//! Several messages on one MTA connection, with an aborted transaction between them:
//! nothing of one message leaks into the next, and the aborted one is not journaled.

mod common;

use common::daemon::{send, settings_yaml, Daemon, TestMessage};
use common::fake_intake::IntakeScript;
use indymilter_test::Status;
use std::time::Duration;

#[tokio::test]
async fn two_messages_and_an_abort_on_one_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let daemon = Daemon::start(&settings_yaml(intake.addr(), &ca, ""), dir.path()).await;
    let mut conn = daemon.connect().await;
    conn.connect("client.example", [192, 0, 2, 7])
        .await
        .expect("connect");

    let first = TestMessage {
        queue_id: "QFIRST",
        sender: "<a@sender.example>",
        recipients: &["<one@example.com>"],
        headers: &[
            ("Subject", "first"),
            ("Message-ID", "<first@sender.example>"),
        ],
        body: b"first body\r\n",
        auth: None,
    };
    assert_eq!(send(&mut conn, &first).await, Status::Accept);

    // RSET after headers: the MTA sends ABORT, and no end of message follows.
    conn.mail(["<b@sender.example>"]).await.expect("mail");
    conn.rcpt(["<aborted@example.com>"]).await.expect("rcpt");
    conn.header("Subject", "aborted").await.expect("header");
    conn.eoh().await.expect("eoh");
    conn.body(b"never finished\r\n".to_vec())
        .await
        .expect("body");
    conn.abort().await.expect("abort");

    let second = TestMessage {
        queue_id: "QSECOND",
        sender: "<c@sender.example>",
        recipients: &["<two@example.com>"],
        headers: &[("Subject", "second")],
        body: b"second body\r\n",
        auth: None,
    };
    assert_eq!(send(&mut conn, &second).await, Status::Accept);
    conn.close().await.expect("close");

    let received = intake.wait_for_messages(2, Duration::from_secs(20)).await;
    let mut by_subject: Vec<(String, Vec<u8>)> = received
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(&m.data).into_owned();
            let subject = text
                .lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap_or_default()
                .to_string();
            (subject, m.data.clone())
        })
        .collect();
    by_subject.sort();
    assert_eq!(by_subject[0].0, "first");
    assert_eq!(by_subject[1].0, "second");
    for (subject, data) in &by_subject {
        let text = String::from_utf8_lossy(data);
        assert!(!text.contains("aborted"), "{subject}: {text}");
        assert!(!text.contains("never finished"), "{subject}: {text}");
    }
    let second_text = String::from_utf8_lossy(&by_subject[1].1);
    assert!(second_text.contains("Recipient: two@example.com\r\n"));
    assert!(!second_text.contains("one@example.com"));
    assert!(!second_text.contains("first body"));
    assert!(
        second_text.contains("Message-Id: \r\n"),
        "no Message-ID in the second"
    );

    daemon.wait_for_log("Message finished", 2).await;
    let lines = daemon.stop().await;
    assert_eq!(lines.iter().filter(|l| l.contains(" enqueued ")).count(), 2);
    intake.shutdown().await;
}
