//! Shared test helpers: a test PKI, the scripted fake intake, and the daemon started
//! in-process on port 0.
#![allow(dead_code)]

pub mod binary;
pub mod catalogue;
pub mod daemon;
pub mod fake_dns;
pub mod fake_intake;
pub mod pki;

use std::path::{Path, PathBuf};

/// A fake intake with a fresh test PKI, and the CA file the daemon must trust.
pub async fn start_intake(
    script: fake_intake::IntakeScript,
    dir: &Path,
) -> (fake_intake::FakeIntake, PathBuf) {
    let pki = pki::TestPki::new();
    let ca = pki.write_ca_file(dir);
    let intake = fake_intake::FakeIntake::start(script.pki(pki)).await;
    (intake, ca)
}

/// The journal of MID 1 ended in the appliance's "TLS Error." outcome, with our
/// attempt line naming `detail`, and nothing was delivered.
pub fn assert_tls_error(lines: &[String], detail: &str) {
    assert!(
        lines.iter().any(|l| l
            == "Info: TDC: MID 1 delivery failed to Cisco Secure Email Threat Defense: TLS Error."),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("TDC: MID 1 delivery attempt failed:") && l.contains(detail)),
        "no detail '{detail}' in {lines:#?}"
    );
    assert!(!lines.iter().any(|l| l.contains("successfully delivered")));
}
