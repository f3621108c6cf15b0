//! The retry table (docs/DELIVERY.md), row by row, against the scripted intake: what is
//! retried, how often, what each outcome logs and counts.

mod common;

use common::daemon::{settings_with, Daemon};
use common::fake_intake::{reply, FakeIntake, IntakeScript, Stage, Step};
use std::path::Path;
use std::time::Duration;
use tdc_milter::stats::Snapshot;

const FAST_RETRY: &str = "  retry_delay: 200ms\n";

async fn daemon_for(intake: &FakeIntake, ca: &Path, dir: &Path, delivery: &str) -> Daemon {
    Daemon::start(&settings_with(intake.addr(), ca, "", delivery), dir).await
}

/// Journals one message and waits until MID 1 has finished; returns the log.
async fn one_journal(script: IntakeScript) -> (Vec<String>, Snapshot, FakeIntake) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(script, dir.path()).await;
    let daemon = daemon_for(&intake, &ca, dir.path(), FAST_RETRY).await;
    daemon.journal("QRETRY", "<bob@example.com>").await;
    daemon.wait_for_log("Message finished MID 1 done", 1).await;
    let stats = daemon.stats.clone();
    let lines = daemon.stop().await;
    (lines, stats.snapshot(), intake)
}

fn has(lines: &[String], needle: &str) -> bool {
    lines.iter().any(|l| l.contains(needle))
}

fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|l| l.contains(needle)).count()
}

const DELIVERED: &str = "TDC: MID 1 successfully delivered for scanning";
const HARD: &str = "TDC: MID 1 delivery failed to Cisco Secure Email Threat Defense: Hard Bounced.";
const TLS: &str = "TDC: MID 1 delivery failed to Cisco Secure Email Threat Defense: TLS Error.";
const SOFT: &str = "TDC: MID 1 soft bounced, one retry in";

#[tokio::test]
async fn smtp_5xx_is_a_hard_bounce_without_retry() {
    let script = IntakeScript::default().on(Stage::Rcpt, reply(550, "5.1.1 no such intake"));
    let (lines, stats, intake) = one_journal(script).await;
    assert!(has(&lines, HARD), "{lines:#?}");
    assert!(has(
        &lines,
        "Bounced: DCID 1 MID 1 to RID 0 - Bounced by destination server with response: 550 5.1.1 no such intake"
    ));
    assert!(!has(&lines, SOFT));
    assert_eq!(intake.connections(), 1, "no second attempt");
    assert_eq!(
        (stats.hard_bounced, stats.soft_bounced, stats.delivered),
        (1, 0, 0)
    );
    assert_eq!((stats.active, stats.connections), (0, 0));
    intake.shutdown().await;
}

#[tokio::test]
async fn smtp_4xx_is_retried_once_then_delivered() {
    let script =
        IntakeScript::default().on_message(0, Stage::Rcpt, reply(452, "4.2.2 mailbox full"));
    let (lines, stats, intake) = one_journal(script).await;
    assert_eq!(count(&lines, SOFT), 1, "{lines:#?}");
    assert!(has(
        &lines,
        "delivery attempt failed: RCPT TO: server replied 452 4.2.2 mailbox full"
    ));
    assert!(has(&lines, DELIVERED));
    assert_eq!(intake.messages().len(), 1);
    assert_eq!(
        (stats.delivered, stats.soft_bounced, stats.hard_bounced),
        (1, 1, 0)
    );
    intake.shutdown().await;
}

#[tokio::test]
async fn smtp_4xx_twice_is_a_hard_bounce_after_one_retry() {
    let script = IntakeScript::default().on(Stage::Mail, reply(451, "4.3.0 try later"));
    let (lines, stats, intake) = one_journal(script).await;
    assert_eq!(count(&lines, SOFT), 1, "{lines:#?}");
    assert_eq!(
        count(
            &lines,
            "delivery attempt failed: MAIL FROM: server replied 451"
        ),
        2
    );
    assert!(has(&lines, HARD));
    assert!(intake.messages().is_empty());
    assert_eq!(
        (stats.delivered, stats.soft_bounced, stats.hard_bounced),
        (0, 1, 1)
    );
    intake.shutdown().await;
}

#[tokio::test]
async fn tls_failure_is_a_hard_bounce_without_retry() {
    let (lines, stats, intake) = one_journal(IntakeScript::default().without_starttls()).await;
    assert!(has(&lines, TLS), "{lines:#?}");
    assert!(!has(&lines, SOFT));
    assert_eq!(intake.connections(), 1);
    assert_eq!((stats.hard_bounced, stats.soft_bounced), (1, 0));
    intake.shutdown().await;
}

#[tokio::test]
async fn network_failure_is_retried_once() {
    // The first connection is dropped at the greeting; the second works.
    let script = IntakeScript::default().on_connection(0, Stage::Greeting, Step::Close);
    let (lines, stats, intake) = one_journal(script).await;
    assert!(
        has(&lines, "TDC: Connection Error: DCID 1 domain: the.tdc.queue IP: 127.0.0.1")
            && has(&lines, "details: greeting interface: 127.0.0.1 reason: greeting: connection closed by the server"),
        "{lines:#?}"
    );
    assert_eq!(count(&lines, SOFT), 1);
    assert!(has(&lines, DELIVERED));
    assert_eq!(intake.connections(), 2);
    assert_eq!((stats.delivered, stats.soft_bounced), (1, 1));
    intake.shutdown().await;
}

#[tokio::test]
async fn network_failure_twice_is_a_hard_bounce() {
    let script = IntakeScript::default().on(Stage::Greeting, Step::Close);
    let (lines, stats, intake) = one_journal(script).await;
    assert_eq!(count(&lines, "TDC: Connection Error:"), 2, "{lines:#?}");
    assert!(has(&lines, HARD));
    assert_eq!((stats.hard_bounced, stats.soft_bounced), (1, 1));
    intake.shutdown().await;
}

#[tokio::test]
async fn each_stage_4xx_is_retried() {
    for (stage, code) in [
        (Stage::Mail, 451),
        (Stage::Rcpt, 450),
        (Stage::Data, 451),
        (Stage::Dot, 452),
        (Stage::Greeting, 421),
    ] {
        let script = IntakeScript::default().on_connection(0, stage, reply(code, "4.0.0 later"));
        let (lines, stats, intake) = one_journal(script).await;
        assert_eq!(count(&lines, SOFT), 1, "{stage:?}: {lines:#?}");
        assert!(has(&lines, DELIVERED), "{stage:?}: {lines:#?}");
        assert_eq!(intake.messages().len(), 1, "{stage:?}");
        assert_eq!((stats.delivered, stats.soft_bounced), (1, 1), "{stage:?}");
        intake.shutdown().await;
    }
}

#[tokio::test]
async fn reply_421_mid_session_is_retried_and_logged_with_its_text() {
    let script = IntakeScript::default().on_connection(
        0,
        Stage::Mail,
        reply(421, "4.7.0 intake.test closing connection"),
    );
    let (lines, _, intake) = one_journal(script).await;
    assert!(
        has(&lines, "delivery attempt failed: MAIL FROM: server replied 421 4.7.0 intake.test closing connection"),
        "{lines:#?}"
    );
    assert!(has(&lines, DELIVERED));
    intake.shutdown().await;
}

#[tokio::test]
async fn reply_421_then_hang_up_is_reported_with_the_421() {
    // A real intake closes the connection after 421; the pipelined RCPT and DATA then
    // get no reply. The 421 is the reason, and the journal is retried.
    let script = IntakeScript::default()
        .on_connection(0, Stage::Mail, reply(421, "4.7.0 too busy"))
        .on_connection(0, Stage::Rcpt, Step::Close);
    let (lines, stats, intake) = one_journal(script).await;
    assert!(
        has(
            &lines,
            "delivery attempt failed: MAIL FROM: server replied 421 4.7.0 too busy"
        ),
        "{lines:#?}"
    );
    assert!(has(&lines, DELIVERED));
    assert_eq!((stats.soft_bounced, stats.delivered), (1, 1));
    intake.shutdown().await;
}

#[tokio::test]
async fn replies_503_and_552_are_retried() {
    for (stage, code) in [(Stage::Data, 503), (Stage::Dot, 552), (Stage::Mail, 552)] {
        let script = IntakeScript::default().on_connection(0, stage, reply(code, "5.3.4 odd"));
        let (lines, stats, intake) = one_journal(script).await;
        assert_eq!(count(&lines, SOFT), 1, "{stage:?} {code}: {lines:#?}");
        assert!(has(&lines, DELIVERED), "{stage:?} {code}");
        assert_eq!(stats.hard_bounced, 0);
        intake.shutdown().await;
    }
}

#[tokio::test]
async fn rcpt_5xx_decides_over_the_pipelined_data_503() {
    // With PIPELINING the client sends MAIL, RCPT and DATA at once; the fake refuses
    // the RCPT and answers DATA with 503 (no valid recipient). The RCPT reply decides.
    let script = IntakeScript::default().on(Stage::Rcpt, reply(550, "5.1.1 unknown intake"));
    let (lines, stats, intake) = one_journal(script).await;
    assert!(
        has(&lines, "RCPT TO: server replied 550 5.1.1 unknown intake"),
        "{lines:#?}"
    );
    assert!(!has(&lines, SOFT));
    assert!(has(&lines, HARD));
    assert_eq!(stats.hard_bounced, 1);
    let transcript = intake.transcript(0);
    assert!(
        transcript.iter().any(|l| l == "DATA"),
        "DATA was pipelined: {transcript:?}"
    );
    intake.shutdown().await;
}

#[tokio::test]
async fn lifetime_ends_while_waiting_for_the_retry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = IntakeScript::default().on(Stage::Rcpt, reply(451, "4.3.0 later"));
    let (intake, ca) = common::start_intake(script, dir.path()).await;
    let daemon = daemon_for(
        &intake,
        &ca,
        dir.path(),
        "  retry_delay: 10s\n  lifetime: 2s\n",
    )
    .await;
    daemon.journal("QEXP", "<bob@example.com>").await;
    let lines = daemon.wait_for_log("Message finished MID 1 done", 1).await;
    assert!(
        has(
            &lines,
            "TDC: MID 1 removed from the.tdc.queue: not delivered within its lifetime of 2 s"
        ),
        "{lines:#?}"
    );
    assert!(has(&lines, HARD));
    let stats = daemon.stats.snapshot();
    assert_eq!(
        (stats.expired, stats.hard_bounced, stats.soft_bounced),
        (1, 1, 1)
    );
    daemon.stop().await;
    assert_eq!(intake.connections(), 1, "the retry never ran");
    intake.shutdown().await;
}

#[tokio::test]
async fn lifetime_ends_during_a_stalled_retry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = IntakeScript::default()
        .on_connection(0, Stage::Rcpt, reply(451, "4.3.0 later"))
        .on_connection(1, Stage::Data, Step::Stall);
    let (intake, ca) = common::start_intake(script, dir.path()).await;
    let daemon = daemon_for(
        &intake,
        &ca,
        dir.path(),
        "  retry_delay: 100ms\n  lifetime: 2s\n",
    )
    .await;
    let started = tokio::time::Instant::now();
    daemon.journal("QSTALL", "<bob@example.com>").await;
    let lines = daemon.wait_for_log("Message finished MID 1 done", 1).await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the stall was not cut at the lifetime"
    );
    assert!(
        has(&lines, "delivery attempt failed: DATA: timeout"),
        "{lines:#?}"
    );
    assert!(has(&lines, "details: timeout"), "{lines:#?}");
    assert!(
        has(&lines, "TDC: MID 1 removed from the.tdc.queue"),
        "{lines:#?}"
    );
    assert_eq!(daemon.stats.snapshot().expired, 1);
    daemon.stop().await;
    intake.shutdown().await;
}
