//! Delivery routed by DNS, end to end: the MX host found through the (fake) DNS gets
//! the journal when its certificate carries a name `delivery.tls.match` accepts (and
//! not when a forged MX answer points elsewhere), and a domain that does not exist
//! gives the appliance's hard-bounce lines in the appliance's order.

mod common;

use common::daemon::{settings_with, Daemon};
use common::fake_dns::{Answer, FakeDns, RecordType, Zone};
use common::fake_intake::{FakeIntake, IntakeScript};
use common::pki::TestPki;
use std::time::Duration;

fn dns_settings(intake: &FakeIntake, dns: &FakeDns, ca: &std::path::Path) -> String {
    settings_with(intake.addr(), ca, "", "").replace(
        &format!("  route: [\"{}\"]", intake.addr()),
        &format!(
            "  route: dns\n  resolver: \"{}\"\n  port: {}",
            dns.addr(),
            intake.addr().port()
        ),
    )
}

/// What became of one journal to global@intake.test, whose MX (in the fake DNS) is
/// `mx`, served by an intake whose certificate, from a trusted CA, names exactly
/// `cert_names`; `tls_match` is the `delivery.tls.match` list, if not the default.
struct Outcome {
    lines: Vec<String>,
    delivered: usize,
    hard_bounced: u64,
}

async fn journal_via_mx(mx: &str, cert_names: &[&str], tls_match: Option<&str>) -> Outcome {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::with_names(cert_names);
    let ca = pki.write_ca_file(dir.path());
    let intake = FakeIntake::start(IntakeScript::default().pki(pki)).await;
    let dns = FakeDns::start(
        Zone::new()
            .mx("intake.test", &[(10, mx)])
            .ip(mx, &["127.0.0.1"]),
    )
    .await;
    let mut yaml = dns_settings(&intake, &dns, &ca);
    if let Some(list) = tls_match {
        let ca_key = format!("ca_file: \"{}\"", ca.display());
        assert!(yaml.contains(&ca_key));
        yaml = yaml.replace(&ca_key, &format!("{ca_key}, match: {list}"));
    }
    let daemon = Daemon::start(&yaml, dir.path()).await;
    daemon.journal("QDNS", "<bob@example.com>").await;
    daemon.wait_for_log("Message finished MID 1 done", 1).await;
    let hard_bounced = daemon.stats.snapshot().hard_bounced;
    let lines = daemon.stop().await;
    let delivered = intake.messages().len();
    intake.shutdown().await;
    Outcome {
        lines,
        delivered,
        hard_bounced,
    }
}

fn assert_delivered(outcome: &Outcome) {
    assert_eq!(outcome.delivered, 1, "{:#?}", outcome.lines);
    assert!(
        outcome
            .lines
            .iter()
            .any(|l| l.contains("successfully delivered")),
        "{:#?}",
        outcome.lines
    );
}

fn assert_refused(outcome: &Outcome, why: &str) {
    assert_eq!(outcome.delivered, 0, "{:#?}", outcome.lines);
    assert_eq!(outcome.hard_bounced, 1, "a TLS failure is a hard bounce");
    common::assert_tls_error(&outcome.lines, why);
}

#[tokio::test]
async fn the_journal_goes_to_an_mx_host_below_the_intake_domain() {
    // dot-nexthop: the certificate names the MX host only, which lies below intake.test.
    let outcome = journal_via_mx("mx1.intake.test", &["mx1.intake.test"], None).await;
    assert_delivered(&outcome);
    assert!(
        outcome
            .lines
            .iter()
            .any(|l| l.contains("TLS success protocol")),
        "{:#?}",
        outcome.lines
    );
}

/// Whoever forges the MX answer points it at a host of his own, with a certificate
/// that a trusted CA issued for that host's name. The default list does not accept
/// it: not one journal goes there, and the log names both sides.
#[tokio::test]
async fn a_forged_mx_answer_does_not_take_the_journals() {
    let outcome = journal_via_mx("evil.test", &["evil.test"], None).await;
    assert_refused(
        &outcome,
        "invalid peer certificate: certificate not valid for the intake: it names evil.test; \
         delivery.tls.match accepts intake.test, any name under .intake.test, any name under .cisco.com",
    );
}

#[tokio::test]
async fn hostname_trusts_the_mx_answer_when_the_list_asks_for_it() {
    let outcome = journal_via_mx("evil.test", &["evil.test"], Some("[hostname]")).await;
    assert_delivered(&outcome);
}

#[tokio::test]
async fn nexthop_alone_refuses_a_certificate_for_a_host_below() {
    let outcome = journal_via_mx("mx1.intake.test", &["mx1.intake.test"], Some("[nexthop]")).await;
    assert_refused(
        &outcome,
        "it names mx1.intake.test; delivery.tls.match accepts intake.test",
    );
}

#[tokio::test]
async fn a_listed_domain_accepts_the_mx_hosts_below_it() {
    // As SETD's own hosts lie outside the intake address's domain.
    let outcome = journal_via_mx(
        "mx.eu.etd.example",
        &["*.eu.etd.example"],
        Some("[nexthop, \".etd.example\"]"),
    )
    .await;
    assert_delivered(&outcome);
    let outcome = journal_via_mx(
        "mx.eu.etd.example",
        &["*.eu.etd.example"],
        Some("[nexthop, mx.us.etd.example]"),
    )
    .await;
    assert_refused(
        &outcome,
        "it names *.eu.etd.example; delivery.tls.match accepts intake.test, mx.us.etd.example",
    );
}

#[tokio::test]
async fn a_domain_that_does_not_exist_is_a_bad_destination_host() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let dns = FakeDns::start(Zone::new()).await;
    let yaml = dns_settings(&intake, &dns, &ca).replace(
        "intake_address: global@intake.test",
        "intake_address: test@esa.example.com",
    );
    let daemon = Daemon::start(&yaml, dir.path()).await;
    daemon.journal("QNX", "<bob@example.com>").await;
    let lines = daemon.wait_for_log("Message finished MID 1 done", 1).await;
    let expected = [
        "Info: DNS Error esa.example.com MX - NXDomain",
        "Info: TDC: Hard bounced - 5.1.2 - Bad destination host ('000', ['DNS Hard Error looking up esa.example.com (MX) : NXDomain'])",
        "Info: TDC: MID 1 delivery failed to Cisco Secure Email Threat Defense: Hard Bounced.",
        "Info: Bounced: DCID 0 MID 1 to RID 0 - Bounced by destination server with response: 5.1.2 - Bad destination host ('000', ['DNS Hard Error looking up esa.example.com (MX) : NXDomain'])",
        "Info: Message finished MID 1 done",
    ];
    let mut at = 0;
    for want in expected {
        let found = lines[at..]
            .iter()
            .position(|l| l == want)
            .unwrap_or_else(|| panic!("missing (in order) {want:?} in {lines:#?}"));
        at += found + 1;
    }
    let stats = daemon.stats.snapshot();
    assert_eq!(
        (stats.hard_bounced, stats.soft_bounced),
        (1, 0),
        "NXDOMAIN is not retried"
    );
    daemon.stop().await;
    assert_eq!(intake.connections(), 0);
    intake.shutdown().await;
}

/// Each name that never answers costs the resolver its timeouts and retries: with
/// twelve MX hosts that is far past a journal's lifetime. The lookup is cut off at the
/// lifetime, logged as a DNS timeout, and the journal ends in time (expired), so its
/// connection slot is free again.
#[tokio::test]
async fn a_dns_lookup_never_outlasts_the_journal_lifetime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let hosts: Vec<String> = (1..=12).map(|n| format!("mx{n}.intake.test")).collect();
    let records: Vec<(u16, &str)> = hosts.iter().map(|h| (10, h.as_str())).collect();
    let mut zone = Zone::new().mx("intake.test", &records);
    for host in &hosts {
        zone = zone.answer(host, RecordType::A, Answer::NoReply).answer(
            host,
            RecordType::AAAA,
            Answer::NoReply,
        );
    }
    let dns = FakeDns::start(zone).await;
    let yaml = dns_settings(&intake, &dns, &ca).replace("  lifetime: 10s", "  lifetime: 3s");
    assert!(yaml.contains("lifetime: 3s"), "{yaml}");
    let daemon = Daemon::start(&yaml, dir.path()).await;
    let started = std::time::Instant::now();
    daemon.journal("QSLOW", "<bob@example.com>").await;
    let lines = daemon.wait_for_log("Message finished MID 1", 1).await;
    let took = started.elapsed();
    assert!(
        lines.iter().any(|l| l
            == "Info: DNS Error intake.test MX - Timeout (the lookup outlasted the journal's lifetime)"),
        "{lines:#?}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(daemon.stats.snapshot().connections, 0);
    daemon.stop().await;
    intake.shutdown().await;
}
