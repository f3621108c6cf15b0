//! SIGHUP reload (a bad file is refused, a good one applies to new messages, nothing
//! queued is lost) and SIGTERM drain (journals in flight finish, the rest wait in the
//! spool for the next start).

mod common;

use common::daemon::{settings_with, Daemon};
use common::fake_intake::{IntakeScript, Stage, Step};
use std::time::Duration;

fn slow(ms: u64) -> IntakeScript {
    IntakeScript::default().on(
        Stage::Dot,
        Step::Slow(Duration::from_millis(ms), 250, "2.0.0 Ok: queued".into()),
    )
}

#[tokio::test]
async fn a_good_file_applies_to_new_messages_and_a_bad_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let before = settings_with(intake.addr(), &ca, "", "");
    let daemon = Daemon::start(&before, dir.path()).await;

    // A broken file: refused with its position, the old settings stay.
    daemon.reload_with(&format!("{before}colour: red\n")).await;
    let lines = daemon.wait_for_log("settings not reloaded", 1).await;
    let refused = lines
        .iter()
        .find(|l| l.contains("settings not reloaded"))
        .expect("line");
    assert!(
        refused.starts_with(
            "Warning: TDC: settings not reloaded, the previous settings stay in force: "
        ),
        "{refused}"
    );
    assert!(
        refused.contains("tdc-milter.yaml:") && refused.contains("unknown key 'colour'"),
        "{refused}"
    );
    daemon.journal("QOLD", "<bob@example.com>").await;
    daemon.wait_for_log("successfully delivered", 1).await;
    assert_eq!(
        intake.messages()[0].rcpt_to,
        vec!["global@intake.test".to_string()]
    );

    // A good file with a new intake address and a new policy.
    let after = before
        .replace("intake_address: global@intake.test", "intake_address: second@intake.test")
        .replace(
            "policies:\n",
            "policies:\n  - name: quiet\n    recipients: [\"quiet@example.com\"]\n    connector: off\n",
        )
        .replace("  lifetime: 10s", "  lifetime: 20s");
    daemon.reload_with(&after).await;
    let lines = daemon.wait_for_log("TDC: settings reloaded from", 1).await;
    assert!(
        lines.iter().any(|l| l.contains("settings reloaded from")
            && l.ends_with("; changes to delivery take effect only after a restart")),
        "{lines:#?}"
    );
    daemon.journal("QNEW", "<bob@example.com>").await;
    daemon.journal("QQUIET", "<quiet@example.com>").await;
    daemon.wait_for_log("successfully delivered", 2).await;
    let received = intake.messages();
    assert_eq!(received.len(), 2, "the off recipient got no journal");
    assert_eq!(received[1].rcpt_to, vec!["second@intake.test".to_string()]);
    daemon.stop().await;
    intake.shutdown().await;
}

#[tokio::test]
async fn a_reload_during_deliveries_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(slow(100), dir.path()).await;
    let before = settings_with(intake.addr(), &ca, "", "");
    let daemon = Daemon::start(&before, dir.path()).await;
    for i in 0..10 {
        daemon.journal(&format!("QA{i}"), "<bob@example.com>").await;
    }
    daemon
        .reload_with(&before.replace(
            "intake_address: global@intake.test",
            "intake_address: second@intake.test",
        ))
        .await;
    daemon.wait_for_log("TDC: settings reloaded", 1).await;
    for i in 0..10 {
        daemon.journal(&format!("QB{i}"), "<bob@example.com>").await;
    }
    let received = intake.wait_for_messages(20, Duration::from_secs(30)).await;
    daemon.wait_for_log("Message finished", 20).await;
    let to_first = received
        .iter()
        .filter(|m| m.rcpt_to[0] == "global@intake.test")
        .count();
    let to_second = received
        .iter()
        .filter(|m| m.rcpt_to[0] == "second@intake.test")
        .count();
    assert_eq!(
        (to_first, to_second),
        (10, 10),
        "journals keep the intake they were queued for"
    );
    assert_eq!(daemon.stats.snapshot().delivered, 20);
    daemon.stop().await;
    intake.shutdown().await;
}

#[tokio::test]
async fn shutdown_finishes_deliveries_in_flight_and_keeps_the_rest_for_the_next_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(slow(700), dir.path()).await;
    let yaml = settings_with(
        intake.addr(),
        &ca,
        "",
        "  max_connections: 2\n  min_connections: 2\n",
    );
    let daemon = Daemon::start(&yaml, dir.path()).await;
    for i in 0..6 {
        daemon.journal(&format!("Q{i}"), "<bob@example.com>").await;
    }
    daemon.wait_for_log("TDC: Delivery start", 2).await;
    let lines = daemon.stop().await;
    let delivered_first = lines
        .iter()
        .filter(|l| l.contains("successfully delivered"))
        .count();
    assert!(
        (1..6).contains(&delivered_first),
        "in-flight journals finish, the others wait: {lines:#?}"
    );
    assert!(!lines.iter().any(|l| l.contains("abandoned")), "{lines:#?}");
    let left = std::fs::read_dir(dir.path().join("spool/active"))
        .expect("spool")
        .count();
    assert_eq!(left, 6 - delivered_first, "the rest stays in the spool");

    let again = Daemon::start(&yaml, dir.path()).await;
    again.wait_for_log("successfully delivered", left).await;
    intake.wait_for_messages(6, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let received = intake.messages();
    assert_eq!(received.len(), 6, "each journal exactly once");
    again.stop().await;
    intake.shutdown().await;
}

#[tokio::test]
async fn a_delivery_that_outlasts_the_grace_period_is_abandoned_but_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = IntakeScript::default().on_connection(0, Stage::Data, Step::Stall);
    let (intake, ca) = common::start_intake(script, dir.path()).await;
    let yaml = settings_with(
        intake.addr(),
        &ca,
        "",
        "  shutdown_grace: 500ms\n  lifetime: 60s\n",
    );
    let daemon = Daemon::start(&yaml, dir.path()).await;
    daemon.journal("QSTUCK", "<bob@example.com>").await;
    daemon.wait_for_log("TDC: Delivery start", 1).await;
    let started = tokio::time::Instant::now();
    let lines = daemon.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited past the grace"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("deliveries still running at shutdown were abandoned")),
        "{lines:#?}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("spool/active"))
            .expect("spool")
            .count(),
        1
    );

    // The next start delivers it (the stall was only on the first connection).
    let again = Daemon::start(&yaml, dir.path()).await;
    again.wait_for_log("successfully delivered", 1).await;
    again.stop().await;
    intake.shutdown().await;
}
