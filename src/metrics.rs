//! Prometheus metrics over HTTP (`GET /metrics`), by default on loopback only.
//!
//! The counters are the ones `tophosts` and `status` show, read at scrape time from
//! the same [`Stats`], so the three views never disagree.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

use crate::accept::Gate;
use crate::outcome::Outcome;
use crate::queue::Queue;
use crate::stats::{Socket, Stats};
use crate::tdclog::Log;

/// Reads the queue's figures at each scrape.
#[derive(Debug)]
struct QueueCollector {
    queue: QueueHandle,
}

/// `Queue` is not `Debug`; the collector trait wants it.
struct QueueHandle(Queue);

impl std::fmt::Debug for QueueHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Queue")
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

/// One counter family with a value per label value.
fn counters_by<'v>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'v str, u64)>,
) -> Result<(), std::fmt::Error> {
    let family = ConstCounter::new(0u64);
    let mut metric = encoder.encode_descriptor(name, help, None, family.metric_type())?;
    for (value, count) in values {
        ConstCounter::new(count).encode(metric.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

impl Collector for QueueCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.queue.0.stats();
        let s = stats.snapshot();
        let q = self.queue.0.status();
        let e = &mut encoder;
        counter(
            e,
            "journals_delivered",
            "Journals the intake accepted.",
            s.delivered,
        )?;
        counter(
            e,
            "journals_soft_bounced",
            "Failed attempts that got their retry.",
            s.soft_bounced,
        )?;
        counter(
            e,
            "journals_hard_bounced",
            "Journals given up (expiry included).",
            s.hard_bounced,
        )?;
        counter(
            e,
            "journals_expired",
            "Journals removed at the end of their lifetime.",
            s.expired,
        )?;
        counter(
            e,
            "journals_refused",
            "Journals not queued: queue full or spool error.",
            s.refused,
        )?;
        counter(
            e,
            "originals_too_large",
            "Originals over journal.max_size, not journaled.",
            s.too_large,
        )?;
        gauge(
            e,
            "queue_journals",
            "Journals in the.tdc.queue.",
            None,
            q.journals as i64,
        )?;
        gauge(
            e,
            "queue",
            "Size of the journals in the.tdc.queue.",
            Some(&Unit::Bytes),
            q.bytes as i64,
        )?;
        let bounds = self.queue.0.bounds();
        gauge(
            e,
            "queue_max_journals",
            "queue.max_messages: journals the.tdc.queue holds at most.",
            None,
            bounds.max_journals as i64,
        )?;
        gauge(
            e,
            "queue_max",
            "queue.max_bytes: bytes of journals the.tdc.queue holds at most.",
            Some(&Unit::Bytes),
            i64::try_from(bounds.max_bytes).unwrap_or(i64::MAX),
        )?;
        gauge(
            e,
            "delivery_lifetime",
            "delivery.lifetime: how long a journal is tried before it expires.",
            Some(&Unit::Seconds),
            i64::try_from(bounds.lifetime.as_secs()).unwrap_or(i64::MAX),
        )?;
        gauge(
            e,
            "queue_oldest_age",
            "Age of the oldest journal in the.tdc.queue.",
            Some(&Unit::Seconds),
            q.oldest_age_secs.unwrap_or(0) as i64,
        )?;
        gauge(
            e,
            "connections_out",
            "Open connections to the intake.",
            None,
            s.connections as i64,
        )?;
        let (milter_connections, busy) = stats.milter_connections();
        gauge(
            e,
            "milter_connections",
            "MTA connections served in full now.",
            None,
            milter_connections as i64,
        )?;
        gauge(
            e,
            "milter_max_connections",
            "milter.max_connections: MTA connections served in full at most.",
            None,
            stats.milter_connection_limit() as i64,
        )?;
        counter(
            e,
            "milter_busy_connections",
            "MTA connections that came past milter.max_connections (their messages are not journaled).",
            busy,
        )?;
        let (last_message, last_delivery) = stats.last_activity();
        gauge(
            e,
            "last_message_timestamp",
            "When a message last reached end of message (Unix time; 0: none since start).",
            Some(&Unit::Seconds),
            last_message as i64,
        )?;
        gauge(
            e,
            "last_delivery_timestamp",
            "When the intake last accepted a journal (Unix time; 0: none since start).",
            Some(&Unit::Seconds),
            last_delivery as i64,
        )?;
        let messages = stats.messages();
        counters_by(
            e,
            "messages",
            "Messages at end of message by outcome: journaled, or the reason they were not.",
            "outcome",
            Outcome::ALL.map(|o| (o.label(), messages.get(o.label()).copied().unwrap_or(0))),
        )?;
        let failures = stats.failures();
        counters_by(
            e,
            "delivery_failures",
            "Failed delivery attempts by class of the retry table.",
            "class",
            ["tls", "permanent", "transient", "network", "internal"]
                .map(|c| (c, failures.get(c).copied().unwrap_or(0))),
        )?;
        counters_by(
            e,
            "accept_errors",
            "Failed accepts by socket (out of file descriptors, say); on the milter socket the MTA meanwhile applies its default_action.",
            "socket",
            Socket::ALL.map(|s| (s.label(), stats.accept_errors(s))),
        )?;
        counters_by(
            e,
            "connections_refused",
            "Connections to the metrics or control socket closed at once: its connection limit was reached.",
            "socket",
            [Socket::Metrics, Socket::Control].map(|s| (s.label(), stats.connections_refused(s))),
        )?;
        Ok(())
    }
}

/// The registry for one daemon.
pub fn registry(queue: Queue) -> Registry {
    let mut registry = Registry::with_prefix("tdc_milter");
    let (eom, spool_write, delivered) = queue.stats().latency_histograms();
    registry.register_with_unit(
        "end_of_message",
        "Time the milter takes at end of message (policy, journal, spool write).",
        Unit::Seconds,
        eom,
    );
    registry.register_with_unit(
        "spool_write",
        "Time spent at end of message writing the journal to the spool (write, fsync).",
        Unit::Seconds,
        spool_write,
    );
    registry.register_with_unit(
        "accept_to_delivered",
        "Time from enqueue until the intake accepted the journal.",
        Unit::Seconds,
        delivered,
    );
    registry.register_collector(Box::new(QueueCollector {
        queue: QueueHandle(queue),
    }));
    registry
}

/// The exposition text.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        text.clear();
    }
    text
}

/// Scrapers served at once: a Prometheus pair and a few people with curl need a
/// handful; past it a connection is closed at once.
pub const MAX_CONNECTIONS: usize = 64;
/// A request's headers must arrive within this, and a whole connection (one request,
/// no keep-alive) is over within `CONNECTION_TIME`, however slowly the peer reads.
const HEADER_TIME: Duration = Duration::from_secs(10);
const CONNECTION_TIME: Duration = Duration::from_secs(30);

/// Serves `GET /metrics` until the task is aborted.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, log: Log, stats: Arc<Stats>) {
    let mut gate = Gate::new(Socket::Metrics, MAX_CONNECTIONS, log, stats);
    loop {
        let ((stream, _), slot) = gate.next(|| listener.accept()).await;
        let registry = registry.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(respond(&request, &registry)) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIME)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIME, connection).await;
        });
    }
}

fn respond(request: &Request<hyper::body::Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if request.uri().path() == "/metrics" {
        (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            render(registry),
        )
    } else {
        (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "only /metrics is served here\n".to_string(),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// Binds the metrics listener.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot listen on {address}: {e}"))
}
