//! STARTTLS is required: no plaintext fallback, TLS 1.2 or newer, a verified
//! certificate. Every TLS failure ends in the appliance's "TLS Error." line, with
//! our line saying why, and nothing reaches the intake unencrypted.

mod common;

use common::assert_tls_error;
use common::daemon::{settings_yaml, Daemon};
use common::fake_intake::{reply, FakeIntake, IntakeScript, Stage};
use common::pki::{TestPki, TlsVersions};
use std::path::PathBuf;

/// Sends one clean message and returns the daemon's log once its journal is finished.
async fn journal_one(intake: &FakeIntake, ca: PathBuf, dir: &std::path::Path) -> Vec<String> {
    let daemon = Daemon::start(&settings_yaml(intake.addr(), &ca, ""), dir).await;
    daemon.journal("QTLS", "<bob@example.com>").await;
    daemon.wait_for_log("Message finished MID 1 done", 1).await;
    daemon.stop().await
}

fn sent_mail_in_plaintext(intake: &FakeIntake) -> bool {
    (0..intake.connections()).any(|c| {
        intake
            .transcript(c)
            .iter()
            .any(|l| l.to_ascii_uppercase().starts_with("MAIL"))
    })
}

#[tokio::test]
async fn starttls_not_offered_is_a_tls_error_and_nothing_is_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) =
        common::start_intake(IntakeScript::default().without_starttls(), dir.path()).await;
    let lines = journal_one(&intake, ca, dir.path()).await;
    assert_tls_error(&lines, "does not offer STARTTLS");
    assert!(!sent_mail_in_plaintext(&intake));
    assert!(intake.messages().is_empty());
    intake.shutdown().await;
}

#[tokio::test]
async fn starttls_refused_is_a_tls_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = IntakeScript::default().on(Stage::StartTls, reply(454, "4.7.0 TLS not available"));
    let (intake, ca) = common::start_intake(script, dir.path()).await;
    let lines = journal_one(&intake, ca, dir.path()).await;
    assert_tls_error(
        &lines,
        "STARTTLS: server replied 454 4.7.0 TLS not available",
    );
    assert!(!sent_mail_in_plaintext(&intake));
    intake.shutdown().await;
}

#[tokio::test]
async fn untrusted_certificate_is_a_tls_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, _trusted_by_intake) =
        common::start_intake(IntakeScript::default(), dir.path()).await;
    // The daemon trusts a different CA than the one that signed the intake's certificate.
    let other_ca = TestPki::new().write_ca_file(dir.path());
    let lines = journal_one(&intake, other_ca, dir.path()).await;
    assert_tls_error(&lines, "invalid peer certificate");
    assert!(intake.messages().is_empty());
    intake.shutdown().await;
}

#[tokio::test]
async fn certificate_for_another_name_is_a_tls_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::with_names(&["wrong.example"]);
    let ca = pki.write_ca_file(dir.path());
    let intake = FakeIntake::start(IntakeScript::default().pki(pki)).await;
    let lines = journal_one(&intake, ca, dir.path()).await;
    assert_tls_error(&lines, "certificate not valid for name \"127.0.0.1\"");
    assert!(intake.messages().is_empty());
    intake.shutdown().await;
}

#[tokio::test]
async fn tls_1_2_intake_is_accepted_and_logged_with_openssl_cipher_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = IntakeScript::default().tls(TlsVersions::Tls12Only);
    let (intake, ca) = common::start_intake(script, dir.path()).await;
    let lines = journal_one(&intake, ca, dir.path()).await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("TLS success protocol TLSv1.2 cipher ECDHE-ECDSA-")),
        "{lines:#?}"
    );
    let received = intake.messages();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].tls_version.as_deref(), Some("TLSv1.2"));
    intake.shutdown().await;
}
