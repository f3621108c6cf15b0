//! Delivery routed by DNS, end to end: the MX host found through the (fake) DNS gets
//! the journal with its name verified, and a domain that does not exist gives the
//! appliance's hard-bounce lines in the appliance's order.

mod common;

use common::daemon::{settings_with, Daemon};
use common::fake_dns::{Answer, FakeDns, RecordType, Zone};
use common::fake_intake::{FakeIntake, IntakeScript};
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

#[tokio::test]
async fn the_journal_goes_to_the_mx_host_and_its_name_is_verified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let dns = FakeDns::start(
        Zone::new()
            .mx("intake.test", &[(10, "mx1.intake.test")])
            .ip("mx1.intake.test", &["127.0.0.1"]),
    )
    .await;
    let daemon = Daemon::start(&dns_settings(&intake, &dns, &ca), dir.path()).await;
    daemon.journal("QDNS", "<bob@example.com>").await;
    intake.wait_for_messages(1, Duration::from_secs(20)).await;
    let lines = daemon.wait_for_log("successfully delivered", 1).await;
    assert!(
        lines.iter().any(|l| l.contains("TLS success protocol")),
        "{lines:#?}"
    );
    daemon.stop().await;
    intake.shutdown().await;
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
