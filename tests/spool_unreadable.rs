//! A journal whose spool file cannot be read back when its turn comes: the log says
//! it is our failure, not the intake's, it is retried once and then hard bounced,
//! and the connection goes on with the next journal.

mod common;

use common::daemon::{settings_with, Daemon};
use common::fake_intake::{IntakeScript, Stage, Step};
use std::time::Duration;

#[tokio::test]
async fn an_unreadable_spool_file_is_an_internal_failure_and_the_connection_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A slow greeting holds the one connection while three journals are queued.
    let script = IntakeScript::default().on_connection(
        0,
        Stage::Greeting,
        Step::Slow(Duration::from_millis(1500), 220, "intake.test ESMTP".into()),
    );
    let (intake, ca) = common::start_intake(script, dir.path()).await;
    let delivery = "  min_connections: 1\n  max_connections: 1\n  retry_delay: 200ms\n";
    let daemon = Daemon::start(&settings_with(intake.addr(), &ca, "", delivery), dir.path()).await;
    for queue_id in ["QA", "QB", "QC"] {
        daemon.journal(queue_id, "<bob@example.com>").await;
    }
    let active = dir.path().join("spool/active");
    let mut removed = 0;
    for file in std::fs::read_dir(&active).expect("active/") {
        let path = file.expect("entry").path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("2."))
        {
            std::fs::remove_file(&path).expect("remove MID 2's file");
            removed += 1;
        }
    }
    assert_eq!(removed, 1, "MID 2's spool file");

    for mid in 1..=3 {
        daemon
            .wait_for_log(&format!("Message finished MID {mid} done"), 1)
            .await;
    }
    let stats = daemon.stats.snapshot();
    let lines = daemon.stop().await;
    let has = |needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(
        has("TDC: MID 2 delivery attempt failed: internal error: spool file unreadable"),
        2,
        "tried, retried once: {lines:#?}"
    );
    assert_eq!(has("TDC: MID 2 soft bounced, one retry in"), 1);
    assert_eq!(
        has("TDC: MID 2 delivery failed to Cisco Secure Email Threat Defense: Hard Bounced."),
        1
    );
    assert_eq!(has("protocol error"), 0, "{lines:#?}");
    for mid in [1, 3] {
        assert_eq!(
            has(&format!(
                "TDC: MID {mid} successfully delivered for scanning"
            )),
            1
        );
    }
    assert_eq!(
        intake.messages_per_connection().first(),
        Some(&2),
        "MID 1 and MID 3 on the first connection: {:?}",
        intake.messages_per_connection()
    );
    assert_eq!((stats.delivered, stats.hard_bounced), (2, 1));
    intake.shutdown().await;
}
