//! Routing through DNS (docs/DELIVERY.md, "Routing") against a scripted fake DNS on loopback: MX order,
//! implicit MX, null MX, and how each DNS failure is classified for the retry table
//! (docs/DELIVERY.md, "The retry table").

#[path = "common/fake_dns.rs"]
mod fake_dns;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fake_dns::{Answer, FakeDns, RecordType, Zone};
use tdc_milter::config::{HostPort, ResolverSpec, Route};
use tdc_milter::delivery::route::{Router, Target};
use tdc_milter::delivery::{DeliveryError, FailureClass, Kind, Stage};

const PORT: u16 = 25;

async fn router(dns: &FakeDns, route: Route) -> Router {
    Router::new(route, &ResolverSpec::Server(dns.addr()), PORT).expect("router")
}

/// Routes `domain` by DNS against a fake serving `zone`; the lookup must succeed.
async fn resolves(zone: Zone, domain: &str) -> (FakeDns, Vec<Target>) {
    let dns = FakeDns::start(zone).await;
    let targets = router(&dns, Route::Dns)
        .await
        .targets(domain)
        .await
        .expect("targets");
    (dns, targets)
}

/// Routes `domain` by DNS against a fake serving `zone`; the lookup must fail.
async fn fails(zone: Zone, domain: &str) -> (FakeDns, DeliveryError) {
    let dns = FakeDns::start(zone).await;
    let e = router(&dns, Route::Dns)
        .await
        .targets(domain)
        .await
        .expect_err("a DNS failure");
    (dns, e)
}

/// A target found for `nexthop` (the intake domain, or a static route's own host).
fn target(address: &str, tls_name: &str, nexthop: &str) -> Target {
    Target {
        address: address.parse::<SocketAddr>().expect("socket address"),
        tls_name: tls_name.to_string(),
        nexthop: nexthop.to_string(),
    }
}

fn assert_permanent(e: &DeliveryError, text: &str) {
    assert_eq!(e.stage, Stage::Dns, "{e}");
    match &e.kind {
        Kind::DnsPermanent(detail) => assert!(detail.to_string().contains(text), "{detail:?}"),
        other => panic!("expected a permanent DNS failure, got {other:?}"),
    }
    assert_eq!(e.class(), FailureClass::Permanent);
}

fn assert_temporary(e: &DeliveryError, text: &str) {
    assert_eq!(e.stage, Stage::Dns, "{e}");
    match &e.kind {
        Kind::DnsTemporary(detail) => assert!(detail.to_string().contains(text), "{detail:?}"),
        other => panic!("expected a temporary DNS failure, got {other:?}"),
    }
    assert_eq!(e.class(), FailureClass::Network);
}

#[tokio::test]
async fn mx_hosts_in_preference_order_each_with_its_addresses() {
    // Answered worst preference first: the router must sort.
    let zone = Zone::new()
        .mx(
            "intake.test",
            &[(20, "mx2.intake.test"), (10, "mx1.intake.test")],
        )
        .ip("mx1.intake.test", &["127.0.0.1", "127.0.0.2"])
        .ip("mx2.intake.test", &["127.0.0.3"]);
    let (dns, targets) = resolves(zone, "intake.test").await;
    assert_eq!(
        targets,
        vec![
            target("127.0.0.1:25", "mx1.intake.test", "intake.test"),
            target("127.0.0.2:25", "mx1.intake.test", "intake.test"),
            target("127.0.0.3:25", "mx2.intake.test", "intake.test"),
        ]
    );
    assert_eq!(dns.count("intake.test", RecordType::MX), 1);
    for host in ["mx1.intake.test", "mx2.intake.test"] {
        assert_eq!(dns.count(host, RecordType::A), 1, "{host}");
        assert_eq!(dns.count(host, RecordType::AAAA), 1, "{host}");
    }
    assert_eq!(dns.count("intake.test", RecordType::A), 0);
}

#[tokio::test]
async fn no_mx_means_the_domain_itself_is_the_mail_host() {
    let zone = Zone::new().ip("nomx.test", &["127.0.0.5"]);
    let (dns, targets) = resolves(zone, "nomx.test").await;
    assert_eq!(
        targets,
        vec![target("127.0.0.5:25", "nomx.test", "nomx.test")]
    );
    assert_eq!(dns.count("nomx.test", RecordType::MX), 1);
    assert_eq!(dns.count("nomx.test", RecordType::A), 1);
}

#[tokio::test]
async fn implicit_mx_without_address_is_permanent() {
    // The name exists (it has a TXT-like entry) but no MX, A or AAAA.
    let zone = Zone::new().answer("empty.test", RecordType::TXT, Answer::NoData);
    let (_dns, e) = fails(zone, "empty.test").await;
    assert_permanent(&e, "empty.test A - NoData");
}

#[tokio::test]
async fn null_mx_is_a_hard_bounce() {
    let zone = Zone::new()
        .null_mx("nomail.test")
        .ip("nomail.test", &["127.0.0.6"]);
    let (dns, e) = fails(zone, "nomail.test").await;
    assert_permanent(&e, "nomail.test MX - ");
    // Nothing is looked up after the null MX: neither the root nor the implicit MX.
    assert_eq!(dns.queries().len(), 1, "{:?}", dns.queries());
}

#[tokio::test]
async fn nxdomain_is_permanent_and_not_retried() {
    let dns = FakeDns::start(Zone::new()).await;
    let e = router(&dns, Route::Dns)
        .await
        .targets("esa.example.com")
        .await
        .expect_err("NXDOMAIN");
    assert_permanent(&e, "MX - NXDomain");
    let Kind::DnsPermanent(detail) = &e.kind else {
        unreachable!()
    };
    // The appliance logs `DNS Error esa.example.com MX - NXDomain`.
    assert_eq!(detail.to_string(), "esa.example.com MX - NXDomain");
    assert_eq!(e.to_string(), "DNS: esa.example.com MX - NXDomain");
    assert_eq!(dns.count("esa.example.com", RecordType::MX), 1);
    assert_eq!(dns.queries().len(), 1, "{:?}", dns.queries());
}

#[tokio::test]
async fn servfail_is_temporary() {
    let zone = Zone::new().answer("intake.test", RecordType::MX, Answer::ServFail);
    let (dns, e) = fails(zone, "intake.test").await;
    assert_temporary(&e, "intake.test MX - ServFail");
    // Retried on the spot at most once (the queue does the real retry later).
    assert!(
        dns.count("intake.test", RecordType::MX) <= 2,
        "{:?}",
        dns.queries()
    );
    // Not mistaken for "no MX": the implicit MX is not tried.
    assert_eq!(dns.count("intake.test", RecordType::A), 0);
}

#[tokio::test]
async fn refused_is_temporary() {
    let zone = Zone::new().answer("intake.test", RecordType::MX, Answer::Refused);
    let (_dns, e) = fails(zone, "intake.test").await;
    assert_temporary(&e, "intake.test MX - Refused");
}

#[tokio::test]
async fn no_reply_is_a_temporary_timeout_and_finishes_quickly() {
    let zone = Zone::new().answer("intake.test", RecordType::MX, Answer::NoReply);
    let dns = FakeDns::start(zone).await;
    let router = router(&dns, Route::Dns).await;
    let started = Instant::now();
    let e = router.targets("intake.test").await.expect_err("no reply");
    let took = started.elapsed();
    assert_temporary(&e, "intake.test MX - Timeout");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert_eq!(dns.count("intake.test", RecordType::A), 0);
}

#[tokio::test]
async fn mx_host_without_address_falls_back_to_the_next_mx() {
    // mx1 does not exist at all; mx2 resolves.
    let zone = Zone::new()
        .mx(
            "intake.test",
            &[(10, "mx1.intake.test"), (20, "mx2.intake.test")],
        )
        .ip("mx2.intake.test", &["127.0.0.3"]);
    let (dns, targets) = resolves(zone, "intake.test").await;
    assert_eq!(
        targets,
        vec![target("127.0.0.3:25", "mx2.intake.test", "intake.test")]
    );
    assert_eq!(dns.count("mx1.intake.test", RecordType::A), 1);
}

#[tokio::test]
async fn mx_host_whose_lookup_fails_falls_back_to_the_next_mx() {
    let zone = Zone::new()
        .mx(
            "intake.test",
            &[(10, "mx1.intake.test"), (20, "mx2.intake.test")],
        )
        .answer("mx1.intake.test", RecordType::A, Answer::ServFail)
        .answer("mx1.intake.test", RecordType::AAAA, Answer::ServFail)
        .ip("mx2.intake.test", &["127.0.0.3"]);
    let (_dns, targets) = resolves(zone, "intake.test").await;
    assert_eq!(
        targets,
        vec![target("127.0.0.3:25", "mx2.intake.test", "intake.test")]
    );
}

#[tokio::test]
async fn all_mx_hosts_unresolvable_permanently_is_permanent() {
    let zone = Zone::new().mx(
        "intake.test",
        &[(10, "mx1.intake.test"), (20, "mx2.intake.test")],
    );
    let (_dns, e) = fails(zone, "intake.test").await;
    // The last failure.
    assert_permanent(&e, "mx2.intake.test A - NXDomain");
}

#[tokio::test]
async fn one_temporary_failure_among_unresolvable_mx_hosts_makes_it_temporary() {
    // The better MX fails temporarily, the other does not exist: worth a retry.
    let zone = Zone::new()
        .mx(
            "intake.test",
            &[(10, "mx1.intake.test"), (20, "mx2.intake.test")],
        )
        .answer("mx1.intake.test", RecordType::A, Answer::ServFail)
        .answer("mx1.intake.test", RecordType::AAAA, Answer::NoData);
    let (_dns, e) = fails(zone, "intake.test").await;
    assert_temporary(&e, "mx1.intake.test A - ServFail");
}

#[tokio::test]
async fn aaaa_only_mx_host_gives_an_ipv6_target() {
    let zone = Zone::new()
        .mx("intake.test", &[(10, "mx6.intake.test")])
        .ip("mx6.intake.test", &["::1"]);
    let (_dns, targets) = resolves(zone, "intake.test").await;
    assert_eq!(
        targets,
        vec![target("[::1]:25", "mx6.intake.test", "intake.test")]
    );
}

#[tokio::test]
async fn dual_stack_mx_host_gives_both_families_ipv4_first() {
    let zone = Zone::new()
        .mx("intake.test", &[(10, "mx.intake.test")])
        .ip("mx.intake.test", &["::1", "127.0.0.1"]);
    let (_dns, targets) = resolves(zone, "intake.test").await;
    assert_eq!(
        targets,
        vec![
            target("127.0.0.1:25", "mx.intake.test", "intake.test"),
            target("[::1]:25", "mx.intake.test", "intake.test"),
        ]
    );
}

#[tokio::test]
async fn static_route_resolves_host_names_and_keeps_ips() {
    let zone = Zone::new().ip("relay.test", &["127.0.0.7", "::1"]);
    let dns = FakeDns::start(zone).await;
    let route = Route::Static(vec![
        HostPort {
            host: "relay.test".into(),
            port: Some(2525),
        },
        HostPort {
            host: "127.0.0.9".into(),
            port: None,
        },
        HostPort {
            host: "::1".into(),
            port: Some(2626),
        },
    ]);
    let targets = router(&dns, route)
        .await
        .targets("intake.test")
        .await
        .expect("targets");
    assert_eq!(
        targets,
        vec![
            target("127.0.0.7:2525", "relay.test", "relay.test"),
            target("[::1]:2525", "relay.test", "relay.test"),
            target("127.0.0.9:25", "127.0.0.9", "127.0.0.9"),
            target("[::1]:2626", "::1", "::1"),
        ]
    );
    // No MX lookup with a static route, and IPs are not looked up.
    assert_eq!(
        dns.queries()
            .iter()
            .filter(|(name, _)| name != "relay.test")
            .count(),
        0,
        "{:?}",
        dns.queries()
    );
}

#[tokio::test]
async fn static_route_with_an_unresolvable_name_uses_the_others() {
    let dns = FakeDns::start(Zone::new()).await;
    let route = Route::Static(vec![
        HostPort {
            host: "gone.test".into(),
            port: None,
        },
        HostPort {
            host: "127.0.0.9".into(),
            port: None,
        },
    ]);
    let targets = router(&dns, route)
        .await
        .targets("intake.test")
        .await
        .expect("targets");
    assert_eq!(
        targets,
        vec![target("127.0.0.9:25", "127.0.0.9", "127.0.0.9")]
    );

    let only_gone = Route::Static(vec![HostPort {
        host: "gone.test".into(),
        port: None,
    }]);
    let e = router(&dns, only_gone)
        .await
        .targets("intake.test")
        .await
        .expect_err("unresolvable");
    assert_permanent(&e, "gone.test A - NXDomain");
}
