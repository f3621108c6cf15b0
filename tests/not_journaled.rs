//! Messages that must produce no journal: authenticated submissions, spam-flagged
//! mail, recipients whose policy is `off`, services not listed as inbound, and
//! everything while the connector is disabled. The original is accepted every time.

mod common;

use common::daemon::{send, settings_yaml, Daemon, TestMessage};
use common::fake_intake::IntakeScript;
use indymilter_test::Status;
use std::time::Duration;

const OFF_POLICY: &str = r#"  - name: bulk
    recipients: ["nojournal@example.com"]
    connector: off
"#;

fn message<'a>(
    queue_id: &'a str,
    rcpt: &'a [&'a str],
    headers: &'a [(&'a str, &'a str)],
) -> TestMessage<'a> {
    TestMessage {
        queue_id,
        sender: "<alice@sender.example>",
        recipients: rcpt,
        headers,
        body: b"hello\r\n",
        auth: None,
    }
}

#[tokio::test]
async fn only_the_clean_incoming_message_is_journaled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let daemon = Daemon::start(&settings_yaml(intake.addr(), &ca, OFF_POLICY), dir.path()).await;
    let mut conn = daemon.connect().await;
    conn.connect("client.example", [192, 0, 2, 7])
        .await
        .expect("connect");

    let mut authenticated = message(
        "Q1AUTH",
        &["<bob@example.com>"],
        &[("Subject", "sent by a user")],
    );
    authenticated.auth = Some("alice");
    assert_eq!(send(&mut conn, &authenticated).await, Status::Accept);

    let spam = message(
        "Q2SPAM",
        &["<bob@example.com>"],
        &[("Subject", "buy now"), ("x-spam-flag", "yes")],
    );
    assert_eq!(send(&mut conn, &spam).await, Status::Accept);

    let off = message(
        "Q3OFF",
        &["<nojournal@example.com>"],
        &[("Subject", "no journal")],
    );
    assert_eq!(send(&mut conn, &off).await, Status::Accept);

    let clean = message(
        "Q4CLEAN",
        &["<nojournal@example.com>", "<bob@example.com>"],
        &[("Subject", "clean"), ("X-Spam-Flag", "NO")],
    );
    assert_eq!(send(&mut conn, &clean).await, Status::Accept);
    conn.close().await.expect("close");

    let received = intake.wait_for_messages(1, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 1);
    let report = String::from_utf8_lossy(&received[0].data).into_owned();
    assert!(report.contains("Recipient: bob@example.com\r\n"));
    assert!(!report.contains("Recipient: nojournal@example.com"));
    daemon.wait_for_log("Message finished MID 1 done", 1).await;
    let lines = daemon.stop().await;
    let enqueued: Vec<&String> = lines.iter().filter(|l| l.contains(" enqueued ")).collect();
    assert_eq!(enqueued.len(), 1, "{lines:#?}");
    assert!(enqueued[0].contains("(queue ID Q4CLEAN)"));
    assert_eq!(intake.messages().len(), 1, "nothing else arrived later");
    intake.shutdown().await;
}

#[tokio::test]
async fn disabled_connector_and_unlisted_service_journal_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let base = settings_yaml(intake.addr(), &ca, "");

    for yaml in [
        format!("enabled: false\n{base}"),
        format!("incoming:\n  daemon_names: [inbound]\n{base}"),
    ] {
        let daemon = Daemon::start(&yaml, dir.path()).await;
        let mut conn = daemon.connect().await;
        conn.macros(
            indymilter::MacroStage::Connect,
            [("{daemon_name}", "submission")],
        )
        .await
        .expect("macros");
        conn.connect("client.example", [192, 0, 2, 7])
            .await
            .expect("connect");
        let msg = message("Q5", &["<bob@example.com>"], &[("Subject", "hi")]);
        assert_eq!(send(&mut conn, &msg).await, Status::Accept);
        conn.close().await.expect("close");
        let lines = daemon.stop().await;
        assert!(
            !lines.iter().any(|l| l.contains(" enqueued ")),
            "{lines:#?}"
        );
    }
    assert!(intake.messages().is_empty());

    // The listed service is journaled.
    let daemon = Daemon::start(
        &format!("incoming:\n  daemon_names: [inbound]\n{base}"),
        dir.path(),
    )
    .await;
    let mut conn = daemon.connect().await;
    conn.macros(
        indymilter::MacroStage::Connect,
        [("{daemon_name}", "inbound")],
    )
    .await
    .expect("macros");
    conn.connect("client.example", [192, 0, 2, 7])
        .await
        .expect("connect");
    let msg = message("Q6", &["<bob@example.com>"], &[("Subject", "hi")]);
    assert_eq!(send(&mut conn, &msg).await, Status::Accept);
    conn.close().await.expect("close");
    intake.wait_for_messages(1, Duration::from_secs(20)).await;
    daemon.stop().await;
    intake.shutdown().await;
}
