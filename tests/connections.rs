//! Connection management of the.tdc.queue (docs/DELIVERY.md, "Connections"): at least three connections
//! while journals wait (fewer only if fewer wait), never more than the maximum, RSET
//! between journals, the per-connection limit, and QUIT when the work is done.

mod common;

use common::daemon::{settings_with, Daemon};
use common::fake_intake::{IntakeScript, Stage, Step};
use std::collections::HashSet;
use std::time::Duration;

fn slow_intake() -> IntakeScript {
    IntakeScript::default().on(
        Stage::Dot,
        Step::Slow(Duration::from_millis(300), 250, "2.0.0 Ok: queued".into()),
    )
}

#[tokio::test]
async fn a_backlog_is_spread_over_bounded_connections_with_a_limit_per_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(slow_intake(), dir.path()).await;
    let delivery = "  min_connections: 3\n  max_connections: 4\n  max_messages_per_connection: 5\n";
    let daemon = Daemon::start(&settings_with(intake.addr(), &ca, "", delivery), dir.path()).await;
    const N: usize = 40;
    for i in 0..N {
        daemon
            .journal(&format!("Q{i:03}"), "<bob@example.com>")
            .await;
    }
    let received = intake.wait_for_messages(N, Duration::from_secs(30)).await;
    daemon.wait_for_log("Message finished", N).await;

    // Each journal exactly once.
    let subjects: HashSet<String> = received
        .iter()
        .map(|m| {
            String::from_utf8_lossy(&m.data)
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(received.len(), N);
    assert_eq!(subjects.len(), N);

    let per_connection = intake.messages_per_connection();
    assert!(per_connection.iter().all(|&n| n <= 5), "{per_connection:?}");
    assert!(
        per_connection.iter().any(|&n| n > 1),
        "connections were reused: {per_connection:?}"
    );
    let peak = intake.peak_concurrent();
    assert!((3..=4).contains(&peak), "peak {peak} connections");

    // Stopping waits for the workers, so every QUIT has been sent by then.
    let stats = daemon.stats.clone();
    daemon.stop().await;
    // RSET between journals on one connection, QUIT at the end of every connection.
    for c in 0..intake.connections() {
        let transcript = intake.transcript(c);
        let mails = transcript
            .iter()
            .filter(|l| l.starts_with("MAIL FROM:"))
            .count();
        let rsets = transcript.iter().filter(|l| *l == "RSET").count();
        assert_eq!(
            rsets,
            mails.saturating_sub(1),
            "connection {c}: {transcript:?}"
        );
        assert_eq!(
            transcript.last().map(String::as_str),
            Some("QUIT"),
            "connection {c}: {transcript:?}"
        );
    }
    let stats = stats.snapshot();
    assert_eq!(
        (stats.delivered, stats.active, stats.connections),
        (N as u64, 0, 0)
    );
    intake.shutdown().await;
}

#[tokio::test]
async fn one_journal_opens_one_connection_and_closes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let daemon = Daemon::start(&settings_with(intake.addr(), &ca, "", ""), dir.path()).await;
    daemon.journal("QONE", "<bob@example.com>").await;
    intake.wait_for_messages(1, Duration::from_secs(20)).await;
    daemon.wait_for_log("Message finished MID 1 done", 1).await;
    // Give a wrongly eager pool the chance to open more.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = daemon.stats.clone();
    daemon.stop().await;
    assert_eq!(intake.connections(), 1);
    assert_eq!(
        intake.transcript(0).last().map(String::as_str),
        Some("QUIT")
    );
    assert_eq!(stats.snapshot().connections, 0);
    intake.shutdown().await;
}

#[tokio::test]
async fn the_maximum_holds_even_when_the_minimum_asks_for_more() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(slow_intake(), dir.path()).await;
    let delivery = "  min_connections: 1\n  max_connections: 1\n";
    let daemon = Daemon::start(&settings_with(intake.addr(), &ca, "", delivery), dir.path()).await;
    for i in 0..12 {
        daemon.journal(&format!("Q{i}"), "<bob@example.com>").await;
    }
    intake.wait_for_messages(12, Duration::from_secs(30)).await;
    assert_eq!(intake.peak_concurrent(), 1);
    assert!(intake.messages_per_connection().iter().all(|&n| n <= 10));
    assert!(
        intake.connections() >= 2,
        "10 per connection, then a new one"
    );
    daemon.stop().await;
    intake.shutdown().await;
}
