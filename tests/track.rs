//! `track`: a journal's lines found by MID, queue ID or Message-ID, through the
//! control socket and the command line, and still there after a restart for journals
//! that were in the spool.

mod common;

use common::daemon::{settings_with, Daemon, TestMessage};
use common::fake_intake::{reply, IntakeScript, Stage};
use std::process::Command;
use tdc_milter::control::{self, Tracked};

const BIN: &str = env!("CARGO_BIN_EXE_tdc-milter");

async fn track(socket: &std::path::Path, key: &str) -> Tracked {
    let socket = socket.to_path_buf();
    let request = format!("track {key}");
    let answer = tokio::task::spawn_blocking(move || control::request(&socket, &request))
        .await
        .expect("join")
        .expect("answer");
    serde_json::from_str(&answer).expect("json")
}

fn texts(t: &Tracked) -> Vec<String> {
    t.journals[0].lines.iter().map(|l| l.text.clone()).collect()
}

#[tokio::test]
async fn a_journal_can_be_followed_by_any_of_its_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = IntakeScript::default().on_message(0, Stage::Rcpt, reply(451, "4.3.0 later"));
    let (intake, ca) = common::start_intake(script, dir.path()).await;
    let yaml = settings_with(intake.addr(), &ca, "", "  retry_delay: 100ms\n");
    let daemon = Daemon::start(&yaml, dir.path()).await;
    let msg = TestMessage {
        queue_id: "4B1C2D3E4F",
        sender: "<a@sender.example>",
        recipients: &["<bob@example.com>"],
        headers: &[
            ("Subject", "tracked"),
            ("Message-ID", "<t1@sender.example>"),
        ],
        body: b"body\r\n",
        auth: None,
    };
    daemon.send_one(&msg).await;
    daemon.wait_for_log("Message finished MID 1 done", 1).await;
    let socket = dir.path().join("control.sock");

    let by_qid = track(&socket, "4B1C2D3E4F").await;
    assert_eq!(by_qid.journals.len(), 1);
    let lines = texts(&by_qid);
    let order = [
        "enqueued for forwarding",
        "TDC: Delivery start DCID 1 MID 1",
        "delivery attempt failed: RCPT TO: server replied 451 4.3.0 later",
        "soft bounced, one retry in 0 s",
        "TDC: Delivery start DCID 2 MID 1",
        "TDC: MID 1 successfully delivered for scanning",
        "TDC: Message 1 was successfully delivered for scanning with Cisco Secure Email Threat Defense.",
        "Message finished MID 1 done",
    ];
    let mut at = 0;
    for want in order {
        let found = lines[at..]
            .iter()
            .position(|l| l.contains(want))
            .unwrap_or_else(|| panic!("missing (in order) {want:?} in {lines:#?}"));
        at += found + 1;
    }
    assert!(
        !lines.iter().any(|l| l.starts_with("Bounced:")),
        "a 4xx is no bounce: {lines:#?}"
    );
    for key in ["1", "<t1@sender.example>", "t1@sender.example"] {
        assert_eq!(track(&socket, key).await.journals, by_qid.journals, "{key}");
    }
    assert!(track(&socket, "NOSUCHID").await.journals.is_empty());

    let config = dir.path().join("tdc-milter.yaml");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["-c", config.to_str().expect("utf-8"), "track", "4B1C2D3E4F"])
            .output()
            .expect("run")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(
            "MID 1 (queue ID 4B1C2D3E4F, Message-ID '<t1@sender.example>') to global@intake.test\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("was successfully delivered for scanning"),
        "{text}"
    );
    daemon.stop().await;
    intake.shutdown().await;
}

#[tokio::test]
async fn tracking_survives_a_restart_for_journals_in_the_spool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let first = Daemon::start(
        &settings_with(dead, &ca, "", "  retry_delay: 60s\n"),
        dir.path(),
    )
    .await;
    first.journal("QSPOOLED", "<bob@example.com>").await;
    first.wait_for_log("soft bounced", 1).await;
    first.stop().await;

    let second = Daemon::start(&settings_with(intake.addr(), &ca, "", ""), dir.path()).await;
    second.wait_for_log("Message finished MID 1 done", 1).await;
    let tracked = track(&dir.path().join("control.sock"), "QSPOOLED").await;
    let lines = texts(&tracked);
    assert!(
        lines[0].contains("TDC: MID 1 with Message-ID '' recovered from the spool"),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("successfully delivered")),
        "{lines:#?}"
    );
    second.stop().await;
    intake.shutdown().await;
}
