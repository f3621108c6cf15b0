//! Running out of file descriptors or connections never stops the daemon, nor its
//! journaling. The real binary under `prlimit --nofile=256:256`: 1,100 idle
//! connections to the metrics port are refused past its limit or time out, and 300
//! idle milter connections run the process out of descriptors (accept fails with
//! EMFILE). Through both, the daemon keeps running, says what happened, and journals
//! the next message.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::binary::{free_port, Running};
use common::daemon::{send, settings_with, TestMessage};
use common::fake_intake::IntakeScript;
use indymilter_test::{Status, TestConnection};

const FD_LIMIT: u64 = 256;

/// The test holds well over 1,024 sockets itself.
fn raise_own_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(
        Resource::Nofile,
        Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        },
    );
    let now = getrlimit(Resource::Nofile).current;
    assert!(
        now.is_none_or(|n| n >= 4096),
        "the test needs 4096 descriptors, has {now:?}"
    );
}

async fn journal_one(milter: SocketAddr, queue_id: &str) {
    let mut conn = TestConnection::open(milter)
        .await
        .expect("milter connection");
    conn.connect("client.example", [192, 0, 2, 7])
        .await
        .expect("connect");
    let msg = TestMessage {
        queue_id,
        sender: "<a@sender.example>",
        recipients: &["<bob@example.com>"],
        headers: &[("Subject", queue_id)],
        body: b"body\r\n",
        auth: None,
    };
    assert_eq!(send(&mut conn, &msg).await, Status::Accept);
    conn.close().await.expect("close");
}

/// Whether the server has closed `stream` (EOF or reset) within `within`.
fn closed_by_server(mut stream: &TcpStream, within: Duration) -> bool {
    let _ = stream.set_read_timeout(Some(within));
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_and_connections_the_daemon_keeps_journaling() {
    raise_own_limit();
    let dir = tempfile::tempdir().expect("tempdir");
    let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
    let milter_port = free_port();
    let metrics_port = free_port();
    let yaml = settings_with(intake.addr(), &ca, "", "")
        .replace(
            "listen: inet:127.0.0.1:8895",
            &format!("listen: inet:127.0.0.1:{milter_port}"),
        )
        .replace(
            "listen: \"127.0.0.1:0\"",
            &format!("listen: \"127.0.0.1:{metrics_port}\""),
        );
    let settings = dir.path().join("tdc-milter.yaml");
    std::fs::write(&settings, &yaml).expect("settings");
    let limit = format!("--nofile={FD_LIMIT}:{FD_LIMIT}");
    let mut daemon = Running::start(&settings, &["prlimit", &limit]);
    let lines = daemon.wait_for_line("starting", Duration::from_secs(20));
    // The limit is too low for the default milter.max_connections: said at start.
    assert!(
        lines.iter().any(|l| l.contains(&format!(
            "TDC: the open file limit is {FD_LIMIT}, below the"
        ))),
        "{lines:#?}"
    );
    let milter: SocketAddr = ([127, 0, 0, 1], milter_port).into();
    let metrics: SocketAddr = ([127, 0, 0, 1], metrics_port).into();

    // 1,100 idle connections to the metrics port: the daemon serves 64 at once and
    // closes the rest at once.
    let idle: Vec<TcpStream> = (0..1100)
        .map(|_| TcpStream::connect(metrics).expect("connect to metrics"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let closed = idle
        .iter()
        .filter(|s| closed_by_server(s, Duration::from_millis(5)))
        .count();
    assert!(
        closed >= 1100 - tdc_milter::metrics::MAX_CONNECTIONS,
        "only {closed} of 1100 idle connections were closed"
    );
    // Mail still flows and is journaled, the idle ones still held.
    journal_one(milter, "QIDLE").await;
    intake.wait_for_messages(1, Duration::from_secs(20)).await;
    // The ones it served time out (a request's headers within 10 s).
    let started = Instant::now();
    for stream in &idle {
        assert!(
            closed_by_server(
                stream,
                Duration::from_secs(15).saturating_sub(started.elapsed())
            ),
            "an idle metrics connection was kept past the header timeout"
        );
    }
    drop(idle);
    let scrape = get_metrics(metrics);
    let refused = counter(
        &scrape,
        "tdc_milter_connections_refused_total{socket=\"metrics\"}",
    );
    assert!(refused >= 1000.0, "{refused}\n{scrape}");

    // More milter connections than descriptors: accept fails with EMFILE. The daemon
    // says so once, keeps running, and recovers when they go.
    let mut held = Vec::new();
    for _ in 0..300 {
        match TestConnection::open(milter).await {
            Ok(conn) => held.push(conn),
            Err(_) => break,
        }
    }
    let lines = daemon.wait_for_line(
        "TDC: cannot accept connections on the milter socket: Too many open files",
        Duration::from_secs(20),
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("cannot accept connections on the milter socket"))
            .count(),
        1,
        "once per burst: {lines:#?}"
    );
    assert!(daemon.is_running());
    drop(held);
    daemon.wait_for_line(
        "TDC: accepting connections on the milter socket again after",
        Duration::from_secs(20),
    );
    journal_one(milter, "QAFTER").await;
    intake.wait_for_messages(2, Duration::from_secs(20)).await;
    let scrape = get_metrics(metrics);
    assert!(
        counter(&scrape, "tdc_milter_accept_errors_total{socket=\"milter\"}") >= 1.0,
        "{scrape}"
    );
    assert!(daemon.is_running());
    let lines = daemon.stop();
    assert!(
        lines
            .iter()
            .filter(|l| l.contains("successfully delivered"))
            .count()
            == 2,
        "{lines:#?}"
    );
    intake.shutdown().await;
}

fn get_metrics(metrics: SocketAddr) -> String {
    use std::io::Write;
    let mut stream = TcpStream::connect(metrics).expect("scrape");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("response");
    text
}

fn counter(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{scrape}"))
}
