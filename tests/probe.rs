//! `probe` names each failure on the path to the intake in plain words, and never sends
//! a message: MAIL FROM and RCPT TO, then RSET and QUIT.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::daemon::settings_with;
use common::fake_dns::{FakeDns, Zone};
use common::fake_intake::{reply, FakeIntake, IntakeScript, Stage};
use common::pki::TestPki;
use tdc_milter::config::Settings;
use tdc_milter::probe::{probe, Report, Step};

fn settings(yaml: &str, dir: &Path) -> Settings {
    match Settings::from_yaml(yaml, &dir.join("tdc-milter.yaml")) {
        Ok(s) => s,
        Err(e) => panic!("test settings are invalid: {e}\n{yaml}"),
    }
}

/// Static route to `intake`, trusting `ca`.
fn static_settings(intake: SocketAddr, ca: &Path, dir: &Path) -> Settings {
    settings(&settings_with(intake, ca, "", ""), dir)
}

/// Routed through the fake DNS, on the intake's port.
fn dns_yaml(intake: SocketAddr, dns: &FakeDns, ca: &Path) -> String {
    settings_with(intake, ca, "", "").replace(
        &format!("  route: [\"{intake}\"]"),
        &format!(
            "  route: dns\n  resolver: \"{}\"\n  port: {}",
            dns.addr(),
            intake.port()
        ),
    )
}

async fn probe_intake(script: IntakeScript) -> (Report, FakeIntake) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(script, dir.path()).await;
    let s = static_settings(intake.addr(), &ca, dir.path());
    (probe(&s, None).await, intake)
}

/// The step called `name` (the last one, if several hosts were tried).
fn step<'a>(report: &'a Report, name: &str) -> &'a Step {
    report
        .steps
        .iter()
        .rev()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step '{name}' in\n{}", report.render()))
}

/// The one failed step: the probe stops at the first failure of a host.
fn failed(report: &Report) -> &Step {
    let failed: Vec<&Step> = report.steps.iter().filter(|s| !s.ok).collect();
    match failed.as_slice() {
        [one] => one,
        _ => panic!("expected one failed step in\n{}", report.render()),
    }
}

fn names(report: &Report) -> Vec<&str> {
    report.steps.iter().map(|s| s.name.as_str()).collect()
}

/// No command of a transaction beyond MAIL/RCPT ever reached the intake.
fn assert_no_message(intake: &FakeIntake) {
    for c in 0..intake.connections() {
        let t = intake.transcript(c);
        assert!(
            !t.iter().any(|l| l.eq_ignore_ascii_case("DATA")),
            "DATA sent on connection {c}: {t:?}"
        );
    }
    assert!(intake.messages().is_empty());
}

#[tokio::test]
async fn a_healthy_intake_would_accept_and_gets_no_message() {
    let (report, intake) = probe_intake(IntakeScript::default()).await;
    let text = report.render();
    assert!(report.accepted, "{text}");
    assert!(report.steps.iter().all(|s| s.ok), "{text}");
    assert_eq!(
        names(&report),
        [
            "intake address",
            "route",
            "connect",
            "greeting",
            "EHLO",
            "STARTTLS",
            "TLS",
            "certificate",
            "EHLO after STARTTLS",
            "MAIL FROM",
            "RCPT TO",
            "RSET",
            "QUIT"
        ],
        "{text}"
    );
    let port = intake.addr().port();
    assert!(
        text.contains(&format!(
            "[ ok ] route: static route (delivery.route) → 127.0.0.1:{port}\n"
        )),
        "{text}"
    );
    assert_eq!(
        step(&report, "greeting").detail,
        "220 intake.test ESMTP fake"
    );
    assert_eq!(
        step(&report, "EHLO").detail,
        "EHLO gw.test: offers PIPELINING, 8BITMIME, SIZE 52428800, ENHANCEDSTATUSCODES, STARTTLS"
    );
    assert!(
        step(&report, "TLS").detail.starts_with("TLSv1.3, cipher TLS_"),
        "{text}"
    );
    let cert = &step(&report, "certificate").detail;
    assert!(
        cert.starts_with("verified for 127.0.0.1; subject ")
            && cert.contains("issued by CN=tdc-milter test CA")
            && cert.contains("names intake.test, localhost, mx1.intake.test, mx2.intake.test, 127.0.0.1, ::1"),
        "{text}"
    );
    assert_eq!(
        step(&report, "RCPT TO").detail,
        "<global@intake.test>: 250 2.1.0 Ok"
    );
    assert_eq!(step(&report, "QUIT").detail, "221 2.0.0 Bye");
    assert_eq!(
        report.verdict,
        format!(
            "Verdict: journals to global@intake.test would be accepted: 127.0.0.1:{port} takes them over TLSv1.3 with a verified certificate."
        )
    );

    let transcript = intake.transcript(0);
    assert_eq!(
        transcript,
        [
            "EHLO gw.test",
            "STARTTLS",
            "EHLO gw.test",
            "MAIL FROM:<tdc@gw.test>",
            "RCPT TO:<global@intake.test>",
            "RSET",
            "QUIT"
        ]
    );
    assert_eq!(intake.connections(), 1);
    assert_no_message(&intake);

    // The --json form carries the same.
    let json = serde_json::to_value(&report).expect("json");
    assert_eq!(json["accepted"], true);
    assert_eq!(json["address"], "global@intake.test");
    assert_eq!(json["steps"][1]["name"], "route");
    assert_eq!(json["steps"][1]["ok"], true);
    intake.shutdown().await;
}

#[tokio::test]
async fn the_mx_host_is_named_and_verified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let dns = FakeDns::start(
        Zone::new()
            .mx("intake.test", &[(10, "mx1.intake.test")])
            .ip("mx1.intake.test", &["127.0.0.1"]),
    )
    .await;
    let report = probe(
        &settings(&dns_yaml(intake.addr(), &dns, &ca), dir.path()),
        None,
    )
    .await;
    let port = intake.addr().port();
    assert!(report.accepted, "{}", report.render());
    assert_eq!(
        step(&report, "route").detail,
        format!("MX intake.test → mx1.intake.test (127.0.0.1:{port})")
    );
    assert!(step(&report, "certificate")
        .detail
        .starts_with("verified for mx1.intake.test;"));
    assert_no_message(&intake);
    intake.shutdown().await;
}

#[tokio::test]
async fn no_starttls_is_named_and_fails() {
    let (report, intake) = probe_intake(IntakeScript::default().without_starttls()).await;
    let text = report.render();
    assert!(!report.accepted);
    assert_eq!(
        step(&report, "EHLO").detail,
        "EHLO gw.test: offers PIPELINING, 8BITMIME, SIZE 52428800, ENHANCEDSTATUSCODES (no STARTTLS)"
    );
    let f = failed(&report);
    assert_eq!(f.name, "STARTTLS", "{text}");
    assert!(f.detail.contains("does not offer STARTTLS"), "{text}");
    assert_eq!(
        report.verdict,
        "Verdict: journals to global@intake.test would NOT be accepted: the intake (or something in between, such as a firewall that strips STARTTLS) does not offer STARTTLS; tdc-milter never sends journals in plaintext."
    );
    // Nothing after EHLO went out in plaintext.
    assert_eq!(intake.transcript(0), ["EHLO gw.test"]);
    intake.shutdown().await;
}

#[tokio::test]
async fn starttls_refused_is_named_and_fails() {
    let script = IntakeScript::default().on(Stage::StartTls, reply(454, "4.7.0 TLS not available"));
    let (report, intake) = probe_intake(script).await;
    let f = failed(&report);
    assert_eq!(
        (f.name.as_str(), f.detail.as_str()),
        ("STARTTLS", "refused: 454 4.7.0 TLS not available")
    );
    assert!(
        report.verdict.contains("never sends journals in plaintext"),
        "{}",
        report.render()
    );
    assert_no_message(&intake);
    intake.shutdown().await;
}

#[tokio::test]
async fn an_untrusted_certificate_is_explained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, _) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let other = TestPki::new().write_ca_file(dir.path());
    let report = probe(&static_settings(intake.addr(), &other, dir.path()), None).await;
    let text = report.render();
    assert!(!report.accepted);
    let f = failed(&report);
    assert_eq!(f.name, "certificate", "{text}");
    assert!(
        f.detail.starts_with(
            "not trusted: invalid peer certificate: UnknownIssuer (the intake's CA is not in the system store or delivery.tls.ca_file) (issuer: CN=tdc-milter test CA); the server presents subject "
        ),
        "{text}"
    );
    // TLS itself works: seen on a second connection that does not verify.
    assert!(
        step(&report, "TLS").ok && step(&report, "TLS").detail.contains("second connection"),
        "{text}"
    );
    assert!(
        report.verdict.contains("does not trust")
            && report.verdict.contains("delivery.tls.ca_file"),
        "{text}"
    );
    assert_eq!(intake.connections(), 2, "the look at the certificate");
    assert!(
        !intake
            .transcript(1)
            .iter()
            .any(|l| l.starts_with("MAIL") || l.starts_with("RCPT")),
        "nothing is sent over the unverified connection"
    );
    assert_no_message(&intake);
    intake.shutdown().await;
}

#[tokio::test]
async fn a_certificate_for_another_name_is_explained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::with_names(&["wrong.example", "other.example"]);
    let ca = pki.write_ca_file(dir.path());
    let intake = FakeIntake::start(IntakeScript::default().pki(pki)).await;
    let report = probe(&static_settings(intake.addr(), &ca, dir.path()), None).await;
    let text = report.render();
    assert!(!report.accepted);
    let f = failed(&report);
    assert_eq!(f.name, "certificate", "{text}");
    assert!(
        f.detail.starts_with(
            "not valid for the name 127.0.0.1 (it names wrong.example, other.example): "
        ),
        "{text}"
    );
    assert!(
        report
            .verdict
            .contains("not valid for 127.0.0.1, the host tdc-milter connects to (it names wrong.example, other.example)"),
        "{text}"
    );
    assert_no_message(&intake);
    intake.shutdown().await;
}

#[tokio::test]
async fn a_refused_intake_address_is_explained() {
    let script = IntakeScript::default().on(Stage::Rcpt, reply(550, "5.1.1 no such intake"));
    let (report, intake) = probe_intake(script).await;
    let text = report.render();
    assert!(!report.accepted);
    let f = failed(&report);
    assert_eq!(
        (f.name.as_str(), f.detail.as_str()),
        (
            "RCPT TO",
            "<global@intake.test>: 550 5.1.1 no such intake"
        ),
        "{text}"
    );
    assert!(
        report
            .verdict
            .contains("the intake refuses this address (550 5.1.1 no such intake): check intake_address"),
        "{text}"
    );
    assert!(step(&report, "RSET").ok && step(&report, "QUIT").ok);
    let transcript = intake.transcript(0);
    assert_eq!(transcript[transcript.len() - 2..], ["RSET", "QUIT"]);
    assert_no_message(&intake);
    intake.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_host_is_explained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestPki::new().write_ca_file(dir.path());
    let dead = dead_port().await;
    let report = probe(&static_settings(dead, &ca, dir.path()), None).await;
    let f = failed(&report);
    assert_eq!(
        (f.name.as_str(), f.detail.as_str()),
        ("connect", format!("{dead}: connection refused").as_str()),
        "{}",
        report.render()
    );
    assert_eq!(
        report.verdict,
        format!(
            "Verdict: journals to global@intake.test would NOT be accepted: cannot reach {dead} (connection refused): check firewalls and that outbound connections to port {} are allowed from this machine.",
            dead.port()
        )
    );
}

#[tokio::test]
async fn an_unreachable_first_host_falls_back_like_delivery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let dead = dead_port().await;
    let yaml = settings_with(intake.addr(), &ca, "", "").replace(
        &format!("  route: [\"{}\"]", intake.addr()),
        &format!("  route: [\"{dead}\", \"{}\"]", intake.addr()),
    );
    let report = probe(&settings(&yaml, dir.path()), None).await;
    let text = report.render();
    assert!(report.accepted, "{text}");
    assert_eq!(
        report.steps.iter().filter(|s| s.name == "connect").count(),
        2,
        "{text}"
    );
    assert!(
        report.verdict.ends_with(&format!(
            "(Before it, {dead} (connection refused) could not be reached; delivery falls back the same way.)"
        )),
        "{text}"
    );
    assert_no_message(&intake);
    intake.shutdown().await;
}

#[tokio::test]
async fn a_domain_that_does_not_exist_is_explained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let dns = FakeDns::start(Zone::new()).await;
    let s = settings(&dns_yaml(intake.addr(), &dns, &ca), dir.path());
    let report = probe(&s, Some("test@ESA.example.com")).await;
    let text = report.render();
    assert!(!report.accepted);
    assert_eq!(
        step(&report, "intake address").detail,
        "test@esa.example.com (given on the command line)"
    );
    let f = failed(&report);
    assert_eq!(
        (f.name.as_str(), f.detail.as_str()),
        ("route", "esa.example.com MX - NXDomain"),
        "{text}"
    );
    assert_eq!(
        report.verdict,
        "Verdict: journals to test@esa.example.com would NOT be accepted: the intake domain esa.example.com does not exist (esa.example.com MX - NXDomain): check intake_address; journals to it are hard bounced."
    );
    assert_eq!(intake.connections(), 0);
    intake.shutdown().await;
}

#[tokio::test]
async fn with_verification_off_the_certificate_is_still_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, _) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let other = TestPki::new().write_ca_file(dir.path());
    let yaml = settings_with(intake.addr(), &other, "", "").replace("verify: true", "verify: false");
    let report = probe(&settings(&yaml, dir.path()), None).await;
    let text = report.render();
    // Delivery would go through, so the probe says so, with the warning.
    assert!(report.accepted, "{text}");
    let cert = step(&report, "certificate");
    assert!(!cert.ok);
    assert!(
        cert.detail.starts_with(
            "not verified by delivery (delivery.tls.verify: false); it would fail: not trusted: invalid peer certificate: UnknownIssuer"
        ),
        "{text}"
    );
    assert!(
        report.verdict.contains("anyone in between could read the journals"),
        "{text}"
    );
    assert_no_message(&intake);
    intake.shutdown().await;
}

#[tokio::test]
async fn without_an_address_nothing_is_probed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestPki::new().write_ca_file(dir.path());
    let yaml = settings_with(dead_port().await, &ca, "", "")
        .replace("intake_address: global@intake.test\n", "");
    let report = probe(&settings(&yaml, dir.path()), None).await;
    assert!(!report.accepted);
    assert_eq!(report.steps.len(), 1);
    assert_eq!(
        report.verdict,
        "Verdict: nothing was probed: no intake address: give one (tdc-milter probe ADDRESS) or set intake_address."
    );
}

/// A loopback port nobody listens on.
async fn dead_port() -> SocketAddr {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr")
}
