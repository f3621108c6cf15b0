//! The spool survives a restart: journals waiting when the daemon stops are delivered
//! exactly once by the next run, those past their lifetime are expired, not sent, and
//! MIDs never repeat.

mod common;

use common::daemon::{settings_with, Daemon};
use common::fake_intake::IntakeScript;
use std::net::SocketAddr;
use std::time::Duration;

/// A loopback port with nothing listening: connections are refused. Port 1 (tcpmux)
/// rather than a freed ephemeral port, which the daemon's own metrics listener on
/// port 0 can be given next.
async fn dead_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 1))
}

#[tokio::test]
async fn journals_spooled_while_the_intake_is_down_are_delivered_once_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let down = dead_port().await;
    let first = Daemon::start(
        &settings_with(down, &ca, "", "  retry_delay: 60s\n  lifetime: 120s\n"),
        dir.path(),
    )
    .await;
    for q in ["QA", "QB", "QC"] {
        first.journal(q, "<bob@example.com>").await;
    }
    first
        .wait_for_log("soft bounced, one retry in 60 s", 3)
        .await;
    assert!(
        first
            .lines_with("reason: connect: connection refused")
            .len()
            >= 3
    );
    assert_eq!(first.stats.snapshot().active, 3);
    first.stop().await;

    let second = Daemon::start(&settings_with(intake.addr(), &ca, "", ""), dir.path()).await;
    let received = intake.wait_for_messages(3, Duration::from_secs(20)).await;
    second.wait_for_log("successfully delivered", 3).await;
    assert_eq!(
        second
            .lines_with("TDC: 3 journals recovered from the spool")
            .len(),
        1
    );
    // Exactly once: nothing more arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(intake.messages().len(), 3, "{received:?}");
    for mid in 1..=3 {
        assert_eq!(
            second
                .lines_with(&format!("TDC: MID {mid} successfully delivered"))
                .len(),
            1
        );
    }
    // A new journal gets a MID never used before.
    second.journal("QD", "<bob@example.com>").await;
    let lines = second.wait_for_log("successfully delivered", 4).await;
    let fourth = lines
        .iter()
        .find(|l| l.contains(" enqueued ") && l.contains("(queue ID QD)"))
        .expect("enqueue line of QD");
    let mid: u64 = fourth
        .split_whitespace()
        .nth(3)
        .and_then(|m| m.parse().ok())
        .expect("MID in the line");
    assert!(mid > 3, "{fourth}");
    assert_eq!(second.stats.snapshot().active, 0);
    second.stop().await;
    let spooled = std::fs::read_dir(dir.path().join("spool/active"))
        .expect("spool")
        .count();
    assert_eq!(spooled, 0, "delivered journals leave the spool");
    intake.shutdown().await;
}

#[tokio::test]
async fn journals_past_their_lifetime_at_restart_are_expired_not_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let down = dead_port().await;
    let first = Daemon::start(
        &settings_with(down, &ca, "", "  retry_delay: 60s\n"),
        dir.path(),
    )
    .await;
    first.journal("QOLD", "<bob@example.com>").await;
    first.wait_for_log("soft bounced", 1).await;
    first.stop().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let second = Daemon::start(
        &settings_with(intake.addr(), &ca, "", "  lifetime: 1s\n"),
        dir.path(),
    )
    .await;
    let lines = second
        .wait_for_log(
            "TDC: MID 1 removed from the.tdc.queue: not delivered within its lifetime of 1 s",
            1,
        )
        .await;
    assert!(lines.iter().any(|l| l.ends_with(
        "TDC: MID 1 delivery failed to Cisco Secure Email Threat Defense: Hard Bounced."
    )));
    assert_eq!(second.stats.snapshot().expired, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(intake.messages().is_empty());
    second.stop().await;
    intake.shutdown().await;
}
