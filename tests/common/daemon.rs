//! The real daemon, in-process: bound to 127.0.0.1:0, logging to memory.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use indymilter_test::TestConnection;
use std::sync::Arc;
use tdc_milter::config::Settings;
use tdc_milter::stats::Stats;
use tdc_milter::tdclog::Log;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Daemon {
    pub addr: SocketAddr,
    pub log: Log,
    pub stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    reload: tokio::sync::mpsc::Sender<()>,
    path: std::path::PathBuf,
    task: JoinHandle<Result<(), tdc_milter::RunError>>,
}

impl Daemon {
    /// Starts the daemon with settings written as YAML (as if read from `dir/tdc-milter.yaml`).
    pub async fn start(yaml: &str, dir: &Path) -> Daemon {
        let path = dir.join("tdc-milter.yaml");
        std::fs::write(&path, yaml).expect("write settings file");
        let settings = match Settings::load(&path) {
            Ok(s) => s,
            Err(e) => panic!("test settings are invalid: {e}\n{yaml}"),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let log = Log::memory();
        let stats = Arc::new(Stats::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let (reload, reloads) = tokio::sync::mpsc::channel(4);
        let task = tokio::spawn(tdc_milter::run_with(
            listener,
            settings,
            log.clone(),
            stats.clone(),
            reloads,
            async {
                let _ = stopped.await;
            },
        ));
        let daemon = Daemon {
            addr,
            log,
            stats,
            stop: Some(stop),
            reload,
            path,
            task,
        };
        // Ready once the spool is open and the milter is about to serve.
        daemon
            .wait_for_log(
                concat!("tdc-milter ", env!("CARGO_PKG_VERSION"), " starting"),
                1,
            )
            .await;
        daemon
    }

    /// Writes a new settings file and sends what SIGHUP sends.
    pub async fn reload_with(&self, yaml: &str) {
        std::fs::write(&self.path, yaml).expect("write settings file");
        self.reload.send(()).await.expect("reload request");
    }

    pub async fn connect(&self) -> TestConnection {
        TestConnection::open(self.addr)
            .await
            .expect("milter connection")
    }

    /// Waits until a log line containing `needle` appears `count` times.
    pub async fn wait_for_log(&self, needle: &str, count: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let lines = self.log.lines();
            if lines.iter().filter(|l| l.contains(needle)).count() >= count {
                return lines;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("no {count}× '{needle}' in the log:\n{}", lines.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends one message on a new milter connection from client 192.0.2.7.
    pub async fn send_one(&self, msg: &TestMessage<'_>) -> indymilter_test::Status {
        let mut conn = self.connect().await;
        conn.connect("client.example", [192, 0, 2, 7])
            .await
            .expect("connect");
        let status = send(&mut conn, msg).await;
        conn.close().await.expect("close");
        status
    }

    /// Sends one simple message; the original must be accepted.
    pub async fn journal(&self, queue_id: &str, recipient: &str) {
        let msg = TestMessage {
            queue_id,
            sender: "<a@sender.example>",
            recipients: &[recipient],
            headers: &[("Subject", queue_id)],
            body: b"body\r\n",
            auth: None,
        };
        assert_eq!(self.send_one(&msg).await, indymilter_test::Status::Accept);
    }

    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.log
            .lines()
            .into_iter()
            .filter(|l| l.contains(needle))
            .collect()
    }

    /// Stops the milter, waits for deliveries to end, and fails the test if `run` failed.
    pub async fn stop(mut self) -> Vec<String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("daemon failed: {e}"),
            Err(e) => panic!("daemon task panicked: {e}"),
        }
        self.log.lines()
    }
}

/// Settings for a test: static route to the fake intake, its CA, short lifetime, and a
/// spool beside the CA file.
pub fn settings_yaml(intake: SocketAddr, ca_file: &Path, extra_policies: &str) -> String {
    settings_with(intake, ca_file, extra_policies, "")
}

/// [`settings_yaml`] with more `delivery:` keys (each line indented by two spaces);
/// a key given here replaces the default one.
pub fn settings_with(
    intake: SocketAddr,
    ca_file: &Path,
    extra_policies: &str,
    delivery: &str,
) -> String {
    let spool = ca_file
        .parent()
        .map(|d| d.join("spool"))
        .unwrap_or_else(|| "spool".into());
    let mut delivery_lines = vec![
        format!("  route: [\"{intake}\"]"),
        format!(
            "  tls: {{ verify: true, ca_file: \"{}\" }}",
            ca_file.display()
        ),
    ];
    let extra: Vec<&str> = delivery.lines().filter(|l| !l.trim().is_empty()).collect();
    if !extra
        .iter()
        .any(|l| l.trim_start().starts_with("lifetime:"))
    {
        delivery_lines.push("  lifetime: 10s".into());
    }
    delivery_lines.extend(extra.iter().map(|l| l.to_string()));
    let socket = spool.with_file_name("control.sock");
    format!(
        r#"queue:
  spool_dir: "{spool}"
control:
  socket: "{socket}"
metrics:
  listen: "127.0.0.1:0"
intake_address: global@intake.test
milter:
  listen: inet:127.0.0.1:8895
journal:
  sender: tdc@gw.test
delivery:
{delivery}
policies:
{extra_policies}  - name: DEFAULT
    connector: global
"#,
        spool = spool.display(),
        socket = socket.display(),
        delivery = delivery_lines.join("\n")
    )
}

/// One message as an MTA would pass it to the milter.
pub struct TestMessage<'a> {
    pub queue_id: &'a str,
    pub sender: &'a str,
    pub recipients: &'a [&'a str],
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
    /// `{auth_authen}` when the client authenticated.
    pub auth: Option<&'a str>,
}

impl TestMessage<'_> {
    /// What the attached original must be: the client-IP header, then the message.
    pub fn expected_original(&self, client_ip: &str) -> Vec<u8> {
        let mut out = format!("X-IronPort-RemoteIP: {client_ip}\r\n").into_bytes();
        for (name, value) in self.headers {
            if name.eq_ignore_ascii_case("X-IronPort-RemoteIP") {
                continue;
            }
            out.extend_from_slice(
                format!("{name}: {}\r\n", value.replace('\n', "\r\n")).as_bytes(),
            );
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.body);
        out
    }
}

/// Runs MAIL … end of message on an open connection and returns the EOM status.
pub async fn send(conn: &mut TestConnection, msg: &TestMessage<'_>) -> indymilter_test::Status {
    use indymilter::MacroStage;
    let mut mail_macros = vec![("{mail_addr}", msg.sender)];
    if let Some(auth) = msg.auth {
        mail_macros.push(("{auth_authen}", auth));
    }
    conn.macros(MacroStage::Mail, mail_macros)
        .await
        .expect("macros");
    // The MTA does not wait for an answer to MAIL or RCPT (negotiated no-reply).
    let status = conn.mail([msg.sender]).await.expect("mail");
    assert_eq!(status, indymilter_test::Status::Noreply);
    for rcpt in msg.recipients {
        let status = conn.rcpt([*rcpt]).await.expect("rcpt");
        assert_eq!(status, indymilter_test::Status::Noreply);
    }
    for (name, value) in msg.headers {
        conn.header(*name, *value).await.expect("header");
    }
    conn.eoh().await.expect("eoh");
    if !msg.body.is_empty() {
        conn.body(msg.body.to_vec()).await.expect("body");
    }
    conn.macros(MacroStage::Eom, [("i", msg.queue_id)])
        .await
        .expect("macros");
    let (_actions, status) = conn.eom().await.expect("eom");
    status
}
