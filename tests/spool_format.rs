//! A spool written by an earlier version is taken back by this one: the fixture in
//! `tests/fixtures/spool-format-2/` is recovered, its journal delivered byte for byte
//! and its MIDs never reused. A change to the spool's layout that cannot read it fails
//! here.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::daemon::{settings_with, Daemon};
use common::fake_intake::IntakeScript;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/spool-format-2");

/// Copies the fixture to `spool` with the modes the daemon gave it (git keeps only
/// the execute bit).
fn install_fixture(spool: &Path) {
    std::fs::create_dir_all(spool.join("active")).expect("mkdir");
    let journal = spool.join("active/1.1");
    std::fs::copy(Path::new(FIXTURE).join("active/1.1"), &journal).expect("copy journal");
    std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::fs::copy(Path::new(FIXTURE).join("next-mid"), spool.join("next-mid")).expect("copy");
    for dir in [spool.to_path_buf(), spool.join("active")] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
}

#[tokio::test]
async fn a_spool_of_format_2_is_recovered_and_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    install_fixture(&dir.path().join("spool"));
    let spooled = std::fs::read(Path::new(FIXTURE).join("active/1.1")).expect("fixture");
    let body_at = spooled
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("header end")
        + 2;
    let journal = &spooled[body_at..];

    let daemon = Daemon::start(
        &settings_with(intake.addr(), &ca, "", "  lifetime: 1000000h\n"),
        dir.path(),
    )
    .await;
    daemon
        .wait_for_log("TDC: MID 1 successfully delivered", 1)
        .await;
    let received = intake.wait_for_messages(1, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].rcpt_to, ["global@intake.test"]);
    assert_eq!(received[0].mail_from, "tdc@gw.test");
    assert!(
        received[0].data == journal,
        "the journal's bytes, unchanged"
    );
    assert_eq!(
        daemon
            .lines_with("TDC: 1 journals recovered from the spool")
            .len(),
        1
    );
    assert_eq!(
        daemon
            .lines_with("recovered from the spool for the message intake address global@intake.test (queue ID QFIXTURE)")
            .len(),
        1
    );
    daemon.journal("QNEW", "<bob@example.com>").await;
    let lines = daemon.wait_for_log("successfully delivered", 2).await;
    let new_mid: u64 = lines
        .iter()
        .find(|l| l.contains(" enqueued ") && l.contains("(queue ID QNEW)"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|m| m.parse().ok())
        .expect("the MID of QNEW");
    let next_mid: u64 = std::fs::read_to_string(Path::new(FIXTURE).join("next-mid"))
        .expect("next-mid")
        .trim()
        .parse()
        .expect("a number");
    assert!(
        new_mid >= next_mid,
        "MID {new_mid}: the old spool's MIDs are reused"
    );
    daemon.stop().await;
    intake.shutdown().await;
}
