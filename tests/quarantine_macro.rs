//! Sendmail's `{quarantine}` macro: a message that an earlier filter quarantined is not
//! clean, so it gets no journal, and one line says why. Sendmail, unlike Postfix, still
//! passes such a message to the later filters (docs/SENDMAIL.md).

mod common;

use common::daemon::{settings_yaml, Daemon};
use common::fake_intake::IntakeScript;
use indymilter::MacroStage;
use indymilter_test::{Status, TestConnection};
use std::time::Duration;

/// MAIL … end of message, with these macros at end of message (as Sendmail sends them
/// just before it).
async fn send(conn: &mut TestConnection, queue_id: &str, eom_macros: &[(&str, &str)]) -> Status {
    let status = conn.mail(["<alice@sender.example>"]).await.expect("mail");
    assert_eq!(status, Status::Noreply);
    let status = conn.rcpt(["<bob@example.com>"]).await.expect("rcpt");
    assert_eq!(status, Status::Noreply);
    let message_id = format!("<{queue_id}@sender.example>");
    for (name, value) in [("Subject", queue_id), ("Message-ID", &message_id)] {
        conn.header(name, value).await.expect("header");
    }
    conn.eoh().await.expect("eoh");
    conn.body(b"hello\r\n".to_vec()).await.expect("body");
    let mut macros = vec![("i", queue_id)];
    macros.extend_from_slice(eom_macros);
    conn.macros(MacroStage::Eom, macros).await.expect("macros");
    let (_actions, status) = conn.eom().await.expect("eom");
    status
}

#[tokio::test]
async fn quarantined_message_is_not_journaled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let daemon = Daemon::start(&settings_yaml(intake.addr(), &ca, ""), dir.path()).await;
    let mut conn = daemon.connect().await;

    // The milter asks for {quarantine} at end of message, and for an end-of-header
    // list too: without one, Sendmail ignores the filter's end-of-message list.
    let requested = conn.requested_macros();
    let eom = requested
        .get(&MacroStage::Eom)
        .map(|m| m.to_string_lossy().into_owned())
        .unwrap_or_default();
    assert!(
        eom.split(' ').any(|m| m == "{quarantine}"),
        "end-of-message macros requested: {eom:?}"
    );
    assert!(eom.split(' ').any(|m| m == "i"), "{eom:?}");
    assert!(requested.contains_key(&MacroStage::Eoh), "{requested:?}");

    conn.connect("client.example", [192, 0, 2, 7])
        .await
        .expect("connect");
    // A reason with a line break must not forge a second log line.
    let status = send(
        &mut conn,
        "Q1HELD",
        &[("{quarantine}", "virus found\r\nInfo: TDC: forged")],
    )
    .await;
    assert_eq!(status, Status::Accept, "the original always goes on");
    // Sendmail resets {quarantine} to "" for each new message: clean.
    let status = send(&mut conn, "Q2CLEAN", &[("{quarantine}", "")]).await;
    assert_eq!(status, Status::Accept);
    // On the same connection, a message without the macro: clean, nothing is left
    // over from the quarantined one.
    let status = send(&mut conn, "Q3HELD", &[("{quarantine}", "held")]).await;
    assert_eq!(status, Status::Accept);
    let status = send(&mut conn, "Q4CLEAN", &[]).await;
    assert_eq!(status, Status::Accept);
    conn.close().await.expect("close");

    let received = intake.wait_for_messages(2, Duration::from_secs(20)).await;
    assert_eq!(received.len(), 2);
    daemon.wait_for_log("Message finished MID 2 done", 1).await;
    let lines = daemon.stop().await;

    let enqueued: Vec<&String> = lines.iter().filter(|l| l.contains(" enqueued ")).collect();
    assert_eq!(enqueued.len(), 2, "{lines:#?}");
    assert!(enqueued[0].contains("(queue ID Q2CLEAN)"), "{lines:#?}");
    assert!(enqueued[1].contains("(queue ID Q4CLEAN)"), "{lines:#?}");

    let held: Vec<&String> = lines.iter().filter(|l| l.contains("quarantined")).collect();
    assert_eq!(
        held,
        [
            "Info: TDC: message with Message-ID '<Q1HELD@sender.example>' (queue ID Q1HELD) not journaled: quarantined by an earlier mail filter: virus found\\x0D\\x0AInfo: TDC: forged",
            "Info: TDC: message with Message-ID '<Q3HELD@sender.example>' (queue ID Q3HELD) not journaled: quarantined by an earlier mail filter: held",
        ],
        "{lines:#?}"
    );
    assert!(lines.iter().all(|l| !l.contains('\r') && !l.contains('\n')));
    assert_eq!(intake.messages().len(), 2, "nothing else arrived later");
    intake.shutdown().await;
}

#[tokio::test]
async fn spam_that_is_also_quarantined_gets_one_line() {
    // Quarantined and carrying a "not clean" verdict: one outcome, one line, and the
    // quarantine (checked first) is the reason given.
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let yaml = format!(
        "{}journal:\n  sender: tdc@gw.test\n  not_clean:\n    - {{ header: X-Spam-Flag, value: \"YES\" }}\n",
        settings_yaml(intake.addr(), &ca, "").replace("journal:\n  sender: tdc@gw.test\n", "")
    );
    let daemon = Daemon::start(&yaml, dir.path()).await;
    let mut conn = daemon.connect().await;
    conn.connect("client.example", [192, 0, 2, 7])
        .await
        .expect("connect");
    let status = conn.mail(["<alice@sender.example>"]).await.expect("mail");
    assert_eq!(status, Status::Noreply);
    conn.rcpt(["<bob@example.com>"]).await.expect("rcpt");
    conn.header("X-Spam-Flag", "YES").await.expect("header");
    conn.eoh().await.expect("eoh");
    conn.macros(MacroStage::Eom, [("i", "Q5SPAM"), ("{quarantine}", "spam")])
        .await
        .expect("macros");
    let (_actions, status) = conn.eom().await.expect("eom");
    assert_eq!(status, Status::Accept);
    conn.close().await.expect("close");
    let lines = daemon.stop().await;
    let about: Vec<&String> = lines.iter().filter(|l| l.contains("Q5SPAM")).collect();
    assert_eq!(
        about,
        ["Info: TDC: message with Message-ID '' (queue ID Q5SPAM) not journaled: quarantined by an earlier mail filter: spam"],
        "{lines:#?}"
    );
    assert!(!lines.iter().any(|l| l.contains(" enqueued ")));
    assert!(intake.messages().is_empty());
    intake.shutdown().await;
}
