//! tophosts and status through the control socket: in-process, through the real
//! command line, when the daemon is not running, and for a user who may not ask.

mod common;

use common::daemon::{settings_with, Daemon};
use common::fake_intake::{reply, IntakeScript, Stage};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use tdc_milter::control::{self, Status, TopHosts};

const BIN: &str = env!("CARGO_BIN_EXE_tdc-milter");

/// The client is blocking (it is the CLI's); keep it off the test's runtime thread.
async fn ask(socket: &std::path::Path, request: &'static str) -> String {
    let socket = socket.to_path_buf();
    tokio::task::spawn_blocking(move || control::request(&socket, request))
        .await
        .expect("join")
        .expect("answer from the daemon")
}

#[tokio::test]
async fn tophosts_and_status_show_the_queue_counters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = IntakeScript::default().on_message(1, Stage::Rcpt, reply(550, "5.1.1 unknown"));
    let (intake, ca) = common::start_intake(script, dir.path()).await;
    let yaml = settings_with(intake.addr(), &ca, "", "");
    let settings_file = dir.path().join("tdc-milter.yaml");
    std::fs::write(&settings_file, &yaml).expect("write settings");
    let daemon = Daemon::start(&yaml, dir.path()).await;
    daemon.journal("QOK", "<bob@example.com>").await;
    daemon.wait_for_log("Message finished MID 1 done", 1).await;
    daemon.journal("QBAD", "<bob@example.com>").await;
    daemon.wait_for_log("Message finished MID 2 done", 1).await;

    let socket = dir.path().join("control.sock");
    let mode = std::fs::metadata(&socket)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);

    let answer = ask(&socket, "tophosts").await;
    let top: TopHosts = serde_json::from_str(&answer).expect("json");
    let row = &top.hosts[0];
    assert_eq!(row.host, "the.tdc.queue");
    assert_eq!(
        (
            row.active_recipients,
            row.connections_out,
            row.delivered_recipients,
            row.soft_bounced,
            row.hard_bounced
        ),
        (0, 0, 1, 0, 1)
    );

    let answer = ask(&socket, "status").await;
    let status: Status = serde_json::from_str(&answer).expect("json");
    assert_eq!(status.queue.journals, 0);
    assert_eq!(status.intakes.len(), 1);
    let counts = status.intakes["global@intake.test"];
    assert_eq!((counts.delivered, counts.hard_bounced), (1, 1));
    let last = status.last_error.expect("last error");
    assert_eq!(last.mid, 2);
    assert!(last.error.contains("550 5.1.1 unknown"), "{}", last.error);

    let answer = ask(&socket, "frobnicate").await;
    assert!(answer.contains("\"error\""), "{answer}");

    // The same through the command line, as an administrator runs it.
    let config = settings_file.to_str().expect("utf-8 path").to_string();
    let out = tokio::task::spawn_blocking(move || {
        let text = Command::new(BIN)
            .args(["-c", &config, "tophosts"])
            .output()
            .expect("run");
        let json = Command::new(BIN)
            .args(["-c", &config, "status", "--json"])
            .output()
            .expect("run");
        let human = Command::new(BIN)
            .args(["-c", &config, "status"])
            .output()
            .expect("run");
        (text, json, human)
    })
    .await
    .expect("join");
    assert!(
        out.0.status.success(),
        "{}",
        String::from_utf8_lossy(&out.0.stderr)
    );
    let text = String::from_utf8_lossy(&out.0.stdout);
    let row = text
        .lines()
        .find(|l| l.contains("the.tdc.queue"))
        .expect("queue row");
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        vec!["1", "the.tdc.queue", "0", "0", "1", "0", "1"]
    );
    assert!(out.1.status.success());
    let parsed: Status = serde_json::from_slice(&out.1.stdout).expect("status --json parses");
    assert_eq!(parsed.counters.delivered, 1);
    let human = String::from_utf8_lossy(&out.2.stdout);
    assert!(
        human.contains("since start: 1 delivered, 0 soft bounced, 1 hard bounced"),
        "{human}"
    );
    assert!(
        human.contains("last error:") && human.contains("MID 2"),
        "{human}"
    );

    daemon.stop().await;
    assert!(!socket.exists(), "the socket is removed at shutdown");
    intake.shutdown().await;
}

#[test]
fn the_cli_says_clearly_when_the_daemon_is_not_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = dir.path().join("tdc-milter.yaml");
    std::fs::write(
        &settings,
        format!(
            "intake_address: a@intake.test\ncontrol:\n  socket: {}\n",
            dir.path().join("nothing.sock").display()
        ),
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["-c", settings.to_str().expect("utf-8"), "tophosts"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("tdc-milter: tdc-milter is not running (nothing answers on"),
        "{err}"
    );
}

#[tokio::test]
async fn another_user_is_refused() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        eprintln!("skipped: needs root to run the client as another user");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let yaml = settings_with(intake.addr(), &ca, "", "");
    let settings_file = dir.path().join("tdc-milter.yaml");
    std::fs::write(&settings_file, &yaml).expect("write settings");
    std::fs::set_permissions(&settings_file, std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let daemon = Daemon::start(&yaml, dir.path()).await;
    let config = settings_file.to_str().expect("utf-8").to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["-c", &config, "tophosts"])
            .uid(65534)
            .gid(65534)
            .output()
            .expect("run as nobody")
    })
    .await
    .expect("join");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied on"), "{err}");
    daemon.stop().await;
    intake.shutdown().await;
}
