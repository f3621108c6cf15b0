//! Every message has one outcome: journaled, or not journaled for a named reason.
//! The reasons the settings ask for (authenticated, `off`, a service not listed as
//! inbound) have no log line; the others do. All are counted by outcome and found
//! by `track`. The original is accepted every time.

mod common;

use common::daemon::{send, settings_yaml, Daemon, TestMessage};
use common::fake_intake::IntakeScript;
use indymilter_test::Status;
use std::time::Duration;
use tdc_milter::control::{self, Status as DaemonStatus, Tracked};

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

async fn ask<T: serde::de::DeserializeOwned>(socket: &std::path::Path, request: &str) -> T {
    let socket = socket.to_path_buf();
    let request = request.to_string();
    let answer = tokio::task::spawn_blocking(move || control::request(&socket, &request))
        .await
        .expect("join")
        .expect("answer");
    serde_json::from_str(&answer).expect("json")
}

/// The one not-journaled record `track` has for `queue_id`: (outcome label, reason).
async fn why(socket: &std::path::Path, queue_id: &str) -> (String, String) {
    let t: Tracked = ask(socket, &format!("track {queue_id}")).await;
    assert!(t.journals.is_empty(), "{queue_id} has a journal: {t:?}");
    assert_eq!(t.not_journaled.len(), 1, "{t:?}");
    let m = &t.not_journaled[0];
    (m.outcome.label().to_string(), m.reason.clone())
}

#[tokio::test]
async fn each_message_has_one_outcome_counted_tracked_and_logged_if_unexpected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let yaml = settings_yaml(intake.addr(), &ca, OFF_POLICY).replace(
        "journal:\n  sender: tdc@gw.test\n",
        "journal:\n  sender: tdc@gw.test\n  max_size: 1KiB\n  not_clean: [ { header: X-Spam-Flag, value: \"YES\" } ]\n",
    );
    let daemon = Daemon::start(&yaml, dir.path()).await;
    let socket = dir.path().join("control.sock");
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
    let spam = message(
        "Q2SPAM",
        &["<bob@example.com>"],
        &[("Subject", "buy now"), ("x-spam-flag", "yes")],
    );
    let off = message(
        "Q3OFF",
        &["<nojournal@example.com>"],
        &[("Subject", "no journal")],
    );
    let mut looped = message("Q4LOOP", &["<bob@example.com>"], &[("Subject", "again")]);
    looped.sender = "<tdc@gw.test>";
    let to_intake = message(
        "Q5INTAKE",
        &["<global@intake.test>"],
        &[("Subject", "to the intake")],
    );
    let body = vec![b'x'; 2000];
    let mut big = message("Q6BIG", &["<bob@example.com>"], &[("Subject", "big")]);
    big.body = &body;
    let clean = message(
        "Q7CLEAN",
        &["<nojournal@example.com>", "<bob@example.com>"],
        &[("Subject", "clean"), ("X-Spam-Flag", "NO")],
    );
    for m in [
        &authenticated,
        &spam,
        &off,
        &looped,
        &to_intake,
        &big,
        &clean,
    ] {
        assert_eq!(send(&mut conn, m).await, Status::Accept, "{}", m.queue_id);
    }
    conn.close().await.expect("close");

    let received = intake.wait_for_messages(1, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 1);
    let report = String::from_utf8_lossy(&received[0].data).into_owned();
    assert!(report.contains("Recipient: bob@example.com\r\n"));
    assert!(!report.contains("Recipient: nojournal@example.com"));
    daemon.wait_for_log("Message finished MID 1 done", 1).await;

    let expected = [
        ("Q1AUTH", "authenticated", "authenticated submission", false),
        (
            "Q2SPAM",
            "not_clean",
            "not clean: verdict header x-spam-flag: yes",
            true,
        ),
        (
            "Q3OFF",
            "connector_off",
            "connector off for every recipient",
            false,
        ),
        (
            "Q4LOOP",
            "loop",
            "loop: the envelope sender is journal.sender",
            true,
        ),
        (
            "Q5INTAKE",
            "loop",
            "loop: every recipient is an intake address",
            true,
        ),
        (
            "Q6BIG",
            "too_large",
            "size 2016 bytes exceeds journal.max_size 1024 bytes",
            true,
        ),
    ];
    for (queue_id, outcome, reason, logged) in expected {
        assert_eq!(
            why(&socket, queue_id).await,
            (outcome.to_string(), reason.to_string()),
            "{queue_id}"
        );
        let lines = daemon.lines_with(&format!("(queue ID {queue_id})"));
        if logged {
            assert_eq!(
                lines,
                [format!(
                    "Warning: TDC: message with Message-ID '' (queue ID {queue_id}) not journaled: {reason}"
                )]
            );
        } else {
            assert!(lines.is_empty(), "{lines:?}");
        }
    }
    let tracked: Tracked = ask(&socket, "track Q7CLEAN").await;
    assert_eq!(tracked.journals.len(), 1);
    assert!(tracked.not_journaled.is_empty());

    let status: DaemonStatus = ask(&socket, "status").await;
    let m = &status.messages;
    assert_eq!(m.values().sum::<u64>(), 7, "one outcome per message: {m:?}");
    assert_eq!(m["journaled"], 1);
    assert_eq!(m["loop"], 2);
    for label in ["authenticated", "not_clean", "connector_off", "too_large"] {
        assert_eq!(m[label], 1, "{label}: {m:?}");
    }
    assert_eq!(status.counters.too_large, 1);
    let text = control::render_status(&status);
    assert!(
        text.contains("messages since start: 7, 1 journaled; not journaled: 1 authenticated, 1 connector_off, 2 loop, 1 not_clean, 1 too_large"),
        "{text}"
    );
    let shown = control::render_tracked(&ask(&socket, "track Q2SPAM").await);
    assert!(
        shown.contains("queue ID Q2SPAM, Message-ID '': not journaled (not_clean)"),
        "{shown}"
    );

    let lines = daemon.stop().await;
    let enqueued: Vec<&String> = lines.iter().filter(|l| l.contains(" enqueued ")).collect();
    assert_eq!(enqueued.len(), 1, "{lines:#?}");
    assert!(enqueued[0].contains("(queue ID Q7CLEAN)"));
    assert_eq!(intake.messages().len(), 1, "nothing else arrived later");
    intake.shutdown().await;
}

#[tokio::test]
async fn a_sender_written_verdict_is_not_trusted_by_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let daemon = Daemon::start(&settings_yaml(intake.addr(), &ca, ""), dir.path()).await;
    let forged = message(
        "QFORGED",
        &["<bob@example.com>"],
        &[("X-Spam-Flag", "YES"), ("X-Spam-Flag", "YES")],
    );
    assert_eq!(daemon.send_one(&forged).await, Status::Accept);
    intake.wait_for_messages(1, Duration::from_secs(20)).await;
    daemon.stop().await;
    intake.shutdown().await;
}

#[tokio::test]
async fn disabled_internal_and_unlisted_service_journal_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let base = settings_yaml(intake.addr(), &ca, "");

    for (yaml, outcome, logged) in [
        (format!("enabled: false\n{base}"), "disabled", true),
        (
            format!("incoming:\n  daemon_names: [inbound]\n{base}"),
            "not_incoming",
            false,
        ),
        (
            format!("incoming:\n  internal_networks: [192.0.2.0/24]\n{base}"),
            "internal_client",
            true,
        ),
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
        for queue_id in ["Q5A", "Q5B"] {
            let msg = message(queue_id, &["<bob@example.com>"], &[("Subject", "hi")]);
            assert_eq!(send(&mut conn, &msg).await, Status::Accept);
        }
        conn.close().await.expect("close");
        let socket = dir.path().join("control.sock");
        assert_eq!(why(&socket, "Q5B").await.0, outcome);
        let status: DaemonStatus = ask(&socket, "status").await;
        assert_eq!(status.messages[outcome], 2, "{outcome}");
        assert_eq!(status.messages.values().sum::<u64>(), 2);
        let lines = daemon.stop().await;
        assert!(
            !lines.iter().any(|l| l.contains(" enqueued ")),
            "{lines:#?}"
        );
        let skipped: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains(") not journaled: "))
            .collect();
        // `enabled: false` is one decision: one line until the next reload.
        assert_eq!(
            skipped.len(),
            if logged {
                if outcome == "disabled" {
                    1
                } else {
                    2
                }
            } else {
                0
            },
            "{outcome}: {skipped:#?}"
        );
        if outcome == "internal_client" {
            assert!(
                skipped[0].ends_with(
                    "not journaled: internal client 192.0.2.7 (incoming.internal_networks)"
                ),
                "{skipped:?}"
            );
        }
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

#[tokio::test]
async fn past_max_connections_a_connection_is_answered_and_its_mail_counted_as_busy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let yaml = format!(
        "{}milter:\n  listen: inet:127.0.0.1:8895\n  max_connections: 1\n",
        settings_yaml(intake.addr(), &ca, "")
            .replace("milter:\n  listen: inet:127.0.0.1:8895\n", "")
    );
    let daemon = Daemon::start(&yaml, dir.path()).await;
    let mut first = daemon.connect().await;
    first
        .connect("client.example", [192, 0, 2, 7])
        .await
        .expect("connect");
    // The second connection is answered at once (the test would hang otherwise).
    let mut second = tokio::time::timeout(Duration::from_secs(5), daemon.connect())
        .await
        .expect("the connection past the limit is answered");
    second
        .connect("client.example", [192, 0, 2, 8])
        .await
        .expect("connect");
    let busy = message("QBUSY", &["<bob@example.com>"], &[("Subject", "busy")]);
    assert_eq!(send(&mut second, &busy).await, Status::Accept);
    let served = message("QSERVED", &["<bob@example.com>"], &[("Subject", "served")]);
    assert_eq!(send(&mut first, &served).await, Status::Accept);
    second.close().await.expect("close");
    first.close().await.expect("close");
    intake.wait_for_messages(1, Duration::from_secs(20)).await;

    let socket = dir.path().join("control.sock");
    assert_eq!(
        why(&socket, "QBUSY").await,
        (
            "milter_busy".to_string(),
            "milter busy: milter.max_connections (1) was reached when the MTA connected"
                .to_string()
        )
    );
    let status: DaemonStatus = ask(&socket, "status").await;
    assert_eq!(status.milter.busy_connections, 1);
    assert_eq!(status.milter.max_connections, 1);
    assert_eq!(
        (status.messages["milter_busy"], status.messages["journaled"]),
        (1, 1)
    );
    assert!(control::render_status(&status)
        .contains("the limit was reached: 1 connections came past it"));
    // Both connections are closed: the place is free again.
    let third = message("QTHIRD", &["<bob@example.com>"], &[("Subject", "third")]);
    assert_eq!(daemon.send_one(&third).await, Status::Accept);
    intake.wait_for_messages(2, Duration::from_secs(20)).await;
    let lines = daemon.stop().await;
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("not journaled: milter busy"))
            .count(),
        1,
        "{lines:#?}"
    );
    intake.shutdown().await;
}

/// MTA connections that negotiate and then say nothing (an smtpd process waiting on a
/// slow client) hold a place among milter.max_connections only until
/// milter.idle_timeout: then the daemon closes them and the places serve mail again.
#[tokio::test]
async fn idle_milter_sessions_give_their_places_back_after_the_idle_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let yaml = format!(
        "{}milter:\n  listen: inet:127.0.0.1:8895\n  max_connections: 2\n  idle_timeout: 1s\n",
        settings_yaml(intake.addr(), &ca, "")
            .replace("milter:\n  listen: inet:127.0.0.1:8895\n", "")
    );
    let daemon = Daemon::start(&yaml, dir.path()).await;
    let socket = dir.path().join("control.sock");
    let mut idle = Vec::new();
    for last in [7, 8] {
        let mut conn = daemon.connect().await;
        conn.connect("client.example", [192, 0, 2, last])
            .await
            .expect("connect");
        idle.push(conn);
    }
    let status: DaemonStatus = ask(&socket, "status").await;
    assert_eq!(status.milter.connections, 2, "both places are taken");
    // Past the idle timeout the daemon has closed both.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status: DaemonStatus = ask(&socket, "status").await;
        if status.milter.connections == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "idle sessions still hold {} places",
            status.milter.connections
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And really closed: writing to one fails (the first write may still be taken
    // by the kernel before the reset arrives).
    let mut first = idle.remove(0);
    let mut closed = false;
    for _ in 0..5 {
        if first.mail(["<alice@example.org>"]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed, "the idle session is still open");
    // A new connection gets a place and its message is journaled.
    let next = message("QNEXT", &["<bob@example.com>"], &[("Subject", "next")]);
    assert_eq!(daemon.send_one(&next).await, Status::Accept);
    intake.wait_for_messages(1, Duration::from_secs(20)).await;
    let status: DaemonStatus = ask(&socket, "status").await;
    assert_eq!(
        status.milter.busy_connections, 0,
        "no message was turned away"
    );
    daemon.stop().await;
    intake.shutdown().await;
}
