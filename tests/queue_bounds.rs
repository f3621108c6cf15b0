//! When the queue is full or the spool cannot be written, new journals are refused
//! with a log line and a counter, and the original still flows.

mod common;

use common::daemon::{settings_with, Daemon};
use common::fake_intake::{IntakeScript, Stage, Step};

fn with_queue(yaml: String, queue: &str) -> String {
    yaml.replacen("queue:\n", &format!("queue:\n{queue}"), 1)
}

#[tokio::test]
async fn a_full_queue_refuses_new_journals_but_accepts_the_mail() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The intake never answers DATA, so the first journal stays in the queue.
    let script = IntakeScript::default().on(Stage::Data, Step::Stall);
    let (intake, ca) = common::start_intake(script, dir.path()).await;
    let yaml = with_queue(
        settings_with(intake.addr(), &ca, "", "  lifetime: 3s\n"),
        "  max_messages: 1\n",
    );
    let daemon = Daemon::start(&yaml, dir.path()).await;
    daemon.journal("QFIRST", "<bob@example.com>").await;
    daemon.journal("QSECOND", "<bob@example.com>").await;
    let lines = daemon.wait_for_log("not journaled", 1).await;
    let refused = daemon.lines_with("(queue ID QSECOND) not journaled");
    assert_eq!(refused.len(), 1, "{lines:#?}");
    assert!(
        refused[0].starts_with("Warning: TDC: message with Message-ID '' (queue ID QSECOND) not journaled: the.tdc.queue is full: 1 journals waiting (queue.max_messages)"),
        "{}",
        refused[0]
    );
    assert_eq!(daemon.stats.snapshot().refused, 1);
    daemon.stop().await;
    intake.shutdown().await;
}

#[tokio::test]
async fn an_unwritable_spool_refuses_journals_but_accepts_the_mail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let daemon = Daemon::start(&settings_with(intake.addr(), &ca, "", ""), dir.path()).await;
    // What a full or broken disk looks like to us: writing the journal fails. (Root
    // ignores permissions, so put a file where the spool's journal directory was.)
    let active = dir.path().join("spool/active");
    std::fs::remove_dir_all(&active).expect("remove");
    std::fs::write(&active, b"in the way").expect("block");
    daemon.journal("QDISK", "<bob@example.com>").await;
    let refused = daemon.lines_with("(queue ID QDISK) not journaled");
    assert_eq!(refused.len(), 1, "{:#?}", daemon.log.lines());
    assert!(
        refused[0].contains("the journal could not be spooled: cannot create"),
        "{}",
        refused[0]
    );
    assert_eq!(daemon.stats.snapshot().refused, 1);
    assert_eq!(daemon.stats.snapshot().active, 0);

    // Space comes back: journaling resumes by itself.
    std::fs::remove_file(&active).expect("unblock");
    std::fs::create_dir(&active).expect("recreate");
    daemon.journal("QBACK", "<bob@example.com>").await;
    daemon.wait_for_log("successfully delivered", 1).await;
    daemon.stop().await;
    assert_eq!(intake.messages().len(), 1);
    intake.shutdown().await;
}
