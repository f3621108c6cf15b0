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
    assert_tls_error(
        &lines,
        "invalid peer certificate: certificate not valid for the intake: it names wrong.example; \
         delivery.tls.match accepts 127.0.0.1, any name under .cisco.com",
    );
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

/// A man in the middle who answers STARTTLS and adds a reply of his own in the same
/// segment: bytes that arrive before encryption must never be read as the server's
/// first reply inside TLS.
#[tokio::test]
async fn plaintext_injected_after_the_starttls_reply_is_a_tls_error() {
    use common::fake_intake::Step;
    let dir = tempfile::tempdir().expect("tempdir");
    let script = IntakeScript::default().on(
        Stage::StartTls,
        Step::Raw(
            220,
            vec![b"220 2.0.0 Ready to start TLS\r\n250-injected\r\n250 8BITMIME\r\n".to_vec()],
        ),
    );
    let (intake, ca) = common::start_intake(script, dir.path()).await;
    let lines = journal_one(&intake, ca, dir.path()).await;
    assert_tls_error(&lines, "plaintext data after the STARTTLS reply");
    assert!(intake.messages().is_empty());
    intake.shutdown().await;
}

/// A multi-line greeting of 6 KB (each line well under the 4 KiB line limit), sent in
/// pieces that cut lines and the reply code apart: read whole, and the journal goes
/// through.
#[tokio::test]
async fn a_multiline_reply_longer_than_4_kib_split_across_segments_is_read_whole() {
    use common::fake_intake::Step;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut greeting = Vec::new();
    for n in 0..100 {
        greeting.extend_from_slice(
            format!("220-intake.test line {n:03} {}\r\n", "x".repeat(40)).as_bytes(),
        );
    }
    greeting.extend_from_slice(b"220 intake.test ESMTP ready\r\n");
    assert!(greeting.len() > 4096);
    let pieces: Vec<Vec<u8>> = greeting.chunks(701).map(<[u8]>::to_vec).collect();
    assert!(pieces.len() > 6);
    let script = IntakeScript::default().on(Stage::Greeting, Step::Raw(220, pieces));
    let (intake, ca) = common::start_intake(script, dir.path()).await;
    let lines = journal_one(&intake, ca, dir.path()).await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("MID 1 successfully delivered")),
        "{lines:#?}"
    );
    assert_eq!(intake.messages().len(), 1);
    intake.shutdown().await;
}

/// `delivery.tls.verify: false` (labs): a certificate from an unknown CA, for another
/// name, is taken, the session is still encrypted, and the start says verification
/// is off.
#[tokio::test]
async fn verification_off_takes_any_certificate_but_still_encrypts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let intake =
        FakeIntake::start(IntakeScript::default().pki(TestPki::with_names(&["x.example"]))).await;
    let unrelated_ca = TestPki::new().write_ca_file(dir.path());
    let yaml =
        settings_yaml(intake.addr(), &unrelated_ca, "").replace("verify: true", "verify: false");
    assert!(yaml.contains("verify: false"));
    let daemon = Daemon::start(&yaml, dir.path()).await;
    daemon.journal("QOFF", "<bob@example.com>").await;
    daemon.wait_for_log("Message finished MID 1 done", 1).await;
    let lines = daemon.stop().await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("delivery.tls.verify: false")),
        "{lines:#?}"
    );
    let received = intake.messages();
    assert_eq!(received.len(), 1, "{lines:#?}");
    assert!(received[0].tls_version.is_some());
    intake.shutdown().await;
}
