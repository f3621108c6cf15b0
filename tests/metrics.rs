//! The Prometheus endpoint, scraped over HTTP and read with an independent parser of
//! the exposition format.

mod common;

use common::daemon::{settings_with, Daemon};
use common::fake_intake::{reply, IntakeScript, Stage};
use prometheus_parse::{Scrape, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(address: &str, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("http response");
    (head.to_string(), body.to_string())
}

fn value(scrape: &Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no sample {name} {label:?}"));
    match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
        Value::Summary(_) => panic!("{name} is a summary"),
    }
}

#[tokio::test]
async fn metrics_match_the_counters_and_parse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = IntakeScript::default().on_message(1, Stage::Rcpt, reply(550, "5.1.1 unknown"));
    let (intake, ca) = common::start_intake(script, dir.path()).await;
    let daemon = Daemon::start(&settings_with(intake.addr(), &ca, "", ""), dir.path()).await;
    daemon.journal("QOK", "<bob@example.com>").await;
    daemon.wait_for_log("Message finished MID 1 done", 1).await;
    daemon.journal("QBAD", "<bob@example.com>").await;
    daemon.wait_for_log("Message finished MID 2 done", 1).await;

    let line = daemon
        .lines_with("TDC: metrics on http://")
        .pop()
        .expect("metrics line");
    let address = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.strip_suffix("/metrics"))
        .expect("address")
        .to_string();
    assert!(address.starts_with("127.0.0.1:"), "{address}");

    let (head, body) = get(&address, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("exposition parses");
    assert_eq!(
        value(&scrape, "tdc_milter_journals_delivered_total", None),
        1.0,
        "{body}"
    );
    assert_eq!(
        value(&scrape, "tdc_milter_journals_hard_bounced_total", None),
        1.0
    );
    assert_eq!(
        value(&scrape, "tdc_milter_journals_soft_bounced_total", None),
        0.0
    );
    assert_eq!(value(&scrape, "tdc_milter_queue_journals", None), 0.0);
    assert_eq!(value(&scrape, "tdc_milter_queue_bytes", None), 0.0);
    assert_eq!(value(&scrape, "tdc_milter_connections_out", None), 0.0);
    assert_eq!(
        value(
            &scrape,
            "tdc_milter_delivery_failures_total",
            Some(("class", "permanent"))
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "tdc_milter_delivery_failures_total",
            Some(("class", "tls"))
        ),
        0.0
    );
    assert_eq!(
        value(&scrape, "tdc_milter_end_of_message_seconds", None),
        2.0,
        "two originals"
    );
    assert_eq!(
        value(&scrape, "tdc_milter_spool_write_seconds", None),
        2.0,
        "two journals spooled"
    );
    assert_eq!(
        value(&scrape, "tdc_milter_accept_to_delivered_seconds", None),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "tdc_milter_messages_total",
            Some(("outcome", "journaled"))
        ),
        2.0
    );
    for outcome in tdc_milter::outcome::Outcome::ALL {
        let _ = value(
            &scrape,
            "tdc_milter_messages_total",
            Some(("outcome", outcome.label())),
        );
    }
    assert_eq!(
        value(&scrape, "tdc_milter_milter_max_connections", None),
        1000.0
    );
    assert_eq!(
        value(&scrape, "tdc_milter_milter_busy_connections_total", None),
        0.0
    );
    assert_eq!(value(&scrape, "tdc_milter_milter_connections", None), 0.0);
    // The bounds an alert rule compares with (milter-config/tdc-milter.rules.yml):
    // the defaults, and the test settings' lifetime.
    assert_eq!(
        value(&scrape, "tdc_milter_queue_max_journals", None),
        100_000.0
    );
    assert_eq!(
        value(&scrape, "tdc_milter_queue_max_bytes", None),
        2.0 * 1024.0 * 1024.0 * 1024.0
    );
    assert_eq!(
        value(&scrape, "tdc_milter_delivery_lifetime_seconds", None),
        10.0
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    for name in [
        "tdc_milter_last_message_timestamp_seconds",
        "tdc_milter_last_delivery_timestamp_seconds",
    ] {
        let at = value(&scrape, name, None);
        assert!((now - 600.0..=now + 1.0).contains(&at), "{name} {at}");
    }

    // Every metric the shipped alert rules read is one the daemon exports.
    let rules = include_str!("../milter-config/tdc-milter.rules.yml");
    let names: std::collections::BTreeSet<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("tdc_milter_"))
        .collect();
    assert!(names.len() >= 8, "{names:?}");
    for name in names {
        assert!(
            scrape.samples.iter().any(|s| s.metric == name),
            "the alert rules read {name}, which /metrics does not have"
        );
    }

    let (head, _) = get(&address, "/other").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    daemon.stop().await;
    intake.shutdown().await;
}
