//! `probe` names each failure on the path to the intake, and sends no message.

mod common;

use common::daemon::settings_with;
use common::fake_dns::{FakeDns, Zone};
use common::fake_intake::{reply, FakeIntake, IntakeScript, Stage};
use common::pki::TestPki;
use std::path::Path;
use tdc_milter::config::Settings;
use tdc_milter::probe::{probe, Report};

fn settings(yaml: &str, dir: &Path) -> Settings {
    Settings::from_yaml(yaml, &dir.join("tdc-milter.yaml")).expect("settings")
}

async fn probe_intake(script: IntakeScript) -> (Report, FakeIntake) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(script, dir.path()).await;
    let s = settings(&settings_with(intake.addr(), &ca, "", ""), dir.path());
    (probe(&s, None).await, intake)
}

fn failed_step(report: &Report) -> &str {
    report
        .steps
        .iter()
        .find(|s| !s.ok)
        .map(|s| s.detail.as_str())
        .unwrap_or_else(|| panic!("no failed step in {}", report.render()))
}

/// The probe says a journal would not be accepted, names `step` in its first failed
/// step, and says `verdict` in its verdict.
fn assert_refused(report: &Report, step: &str, verdict: &str) {
    assert!(!report.accepted, "{}", report.render());
    assert!(failed_step(report).contains(step), "{}", report.render());
    assert!(report.verdict.contains(verdict), "{}", report.render());
}

#[tokio::test]
async fn a_healthy_intake_would_accept_and_gets_no_message() {
    let (report, intake) = probe_intake(IntakeScript::default()).await;
    let text = report.render();
    assert!(report.accepted, "{text}");
    assert!(
        text.contains("[ ok ] route: 127.0.0.1 (127.0.0.1:"),
        "{text}"
    );
    assert!(text.contains("[ ok ] TLS: TLSv1.3 TLS_"), "{text}");
    assert!(
        text.contains(
            "[ ok ] certificate names: a certificate must name one of (delivery.tls.match) \
             127.0.0.1: 127.0.0.1, any name under .cisco.com\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("[ ok ] RCPT TO: <global@intake.test>: 250"),
        "{text}"
    );
    assert!(
        text.contains("A journal to global@intake.test would be accepted"),
        "{text}"
    );
    let transcript = intake.transcript(0);
    assert!(!transcript.iter().any(|l| l == "DATA"), "{transcript:?}");
    assert!(transcript.iter().any(|l| l == "RSET"), "{transcript:?}");
    assert_eq!(transcript.last().map(String::as_str), Some("QUIT"));
    assert!(intake.messages().is_empty());
    intake.shutdown().await;
}

#[tokio::test]
async fn no_starttls_is_named_and_fails() {
    let (report, intake) = probe_intake(IntakeScript::default().without_starttls()).await;
    assert_refused(
        &report,
        "does not offer STARTTLS",
        "never sends journals in plaintext",
    );
    intake.shutdown().await;
}

#[tokio::test]
async fn an_untrusted_certificate_is_explained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, _) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let other = TestPki::new().write_ca_file(dir.path());
    let report = probe(
        &settings(&settings_with(intake.addr(), &other, "", ""), dir.path()),
        None,
    )
    .await;
    assert_refused(
        &report,
        "not signed by a CA we trust",
        "delivery.tls.ca_file",
    );
    intake.shutdown().await;
}

#[tokio::test]
async fn a_certificate_for_another_name_is_explained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::with_names(&["wrong.example"]);
    let ca = pki.write_ca_file(dir.path());
    let intake = FakeIntake::start(IntakeScript::default().pki(pki)).await;
    let report = probe(
        &settings(&settings_with(intake.addr(), &ca, "", ""), dir.path()),
        None,
    )
    .await;
    assert_refused(
        &report,
        "carries no name that delivery.tls.match accepts (invalid peer certificate: \
         certificate not valid for the intake: it names wrong.example;",
        "",
    );
    intake.shutdown().await;
}

#[tokio::test]
async fn a_refused_intake_address_is_explained() {
    let (report, intake) =
        probe_intake(IntakeScript::default().on(Stage::Rcpt, reply(550, "5.1.1 no such intake")))
            .await;
    assert_refused(&report, "550 5.1.1 no such intake", "Check intake_address");
    assert!(intake.messages().is_empty());
    intake.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_host_is_explained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestPki::new().write_ca_file(dir.path());
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let report = probe(
        &settings(&settings_with(dead, &ca, "", ""), dir.path()),
        None,
    )
    .await;
    assert_refused(&report, "connection refused", "Check firewalls");
}

#[tokio::test]
async fn a_domain_that_does_not_exist_is_explained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let dns = FakeDns::start(Zone::new()).await;
    let yaml = settings_with(intake.addr(), &ca, "", "").replace(
        &format!("  route: [\"{}\"]", intake.addr()),
        &format!("  route: dns\n  resolver: \"{}\"", dns.addr()),
    );
    let report = probe(&settings(&yaml, dir.path()), Some("test@esa.example.com")).await;
    assert_refused(
        &report,
        "esa.example.com MX - NXDomain",
        "cannot receive mail",
    );
    intake.shutdown().await;
}
