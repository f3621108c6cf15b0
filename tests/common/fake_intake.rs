//! A scripted STARTTLS SMTP intake. Each stage answers as the script says (a reply,
//! a dropped connection, or silence); everything the client did is recorded, and
//! `shutdown` fails the test if the client broke the protocol.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::pki::{TestPki, TlsVersions};

/// A stage of the SMTP conversation that a script can steer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Greeting,
    Ehlo,
    StartTls,
    Mail,
    Rcpt,
    Data,
    /// The reply to the final dot.
    Dot,
    Rset,
}

/// What the intake does at a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Reply with this code and text ('\n' in the text makes a multi-line reply).
    Reply(u16, String),
    /// Drop the connection without a word.
    Close,
    /// Never answer; keep the connection open until the intake shuts down.
    Stall,
    /// Reply after a pause (a slow intake).
    Slow(Duration, u16, String),
    /// Send these bytes exactly, one write each with a pause between: a reply split
    /// across TCP segments, or more than a reply. The code is what the script acts
    /// on (220 to STARTTLS starts TLS).
    Raw(u16, Vec<Vec<u8>>),
}

impl Step {
    /// The reply code this step sends, if it sends one.
    fn code(&self) -> Option<u16> {
        match self {
            Step::Reply(code, _) | Step::Slow(_, code, _) | Step::Raw(code, _) => Some(*code),
            Step::Close | Step::Stall => None,
        }
    }

    fn positive(&self) -> bool {
        self.code().is_some_and(|c| (200..300).contains(&c))
    }
}

pub fn reply(code: u16, text: &str) -> Step {
    Step::Reply(code, text.to_string())
}

/// The script of one intake. `IntakeScript::default()` is a healthy intake.
#[derive(Clone)]
pub struct IntakeScript {
    steps: HashMap<Stage, Step>,
    /// (0-based message number on the intake, stage) → step, overriding `steps`.
    per_message: HashMap<(usize, Stage), Step>,
    /// (0-based connection number, stage) → step, overriding both.
    per_connection: HashMap<(usize, Stage), Step>,
    /// EHLO keywords after the host name (STARTTLS is added before TLS when offered).
    capabilities: Vec<String>,
    offer_starttls: bool,
    tls: TlsVersions,
    pki: TestPki,
}

impl Default for IntakeScript {
    fn default() -> Self {
        IntakeScript {
            steps: HashMap::new(),
            per_message: HashMap::new(),
            per_connection: HashMap::new(),
            capabilities: [
                "PIPELINING",
                "8BITMIME",
                "SIZE 52428800",
                "ENHANCEDSTATUSCODES",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            offer_starttls: true,
            tls: TlsVersions::Any,
            pki: TestPki::new(),
        }
    }
}

impl IntakeScript {
    fn step_on(&self, connection: usize, stage: Stage, message: usize) -> Step {
        self.step(stage, message, connection)
    }

    pub fn pki(mut self, pki: TestPki) -> Self {
        self.pki = pki;
        self
    }
    pub fn on(mut self, stage: Stage, step: Step) -> Self {
        self.steps.insert(stage, step);
        self
    }
    /// Steers one stage of the `n`th transaction only (0-based, counted on the intake).
    pub fn on_message(mut self, n: usize, stage: Stage, step: Step) -> Self {
        self.per_message.insert((n, stage), step);
        self
    }
    /// Steers one stage on the `n`th connection only (0-based).
    pub fn on_connection(mut self, n: usize, stage: Stage, step: Step) -> Self {
        self.per_connection.insert((n, stage), step);
        self
    }
    pub fn without_starttls(mut self) -> Self {
        self.offer_starttls = false;
        self
    }
    pub fn capabilities(mut self, caps: &[&str]) -> Self {
        self.capabilities = caps.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn tls(mut self, versions: TlsVersions) -> Self {
        self.tls = versions;
        self
    }

    fn step(&self, stage: Stage, message: usize, connection: usize) -> Step {
        if let Some(step) = self.per_connection.get(&(connection, stage)) {
            return step.clone();
        }
        if let Some(step) = self.per_message.get(&(message, stage)) {
            return step.clone();
        }
        if let Some(step) = self.steps.get(&stage) {
            return step.clone();
        }
        match stage {
            Stage::Greeting => reply(220, "intake.test ESMTP fake"),
            Stage::Ehlo => reply(250, "intake.test"),
            Stage::StartTls => reply(220, "2.0.0 Ready to start TLS"),
            Stage::Mail | Stage::Rcpt | Stage::Rset => reply(250, "2.1.0 Ok"),
            Stage::Data => reply(354, "End data with <CR><LF>.<CR><LF>"),
            Stage::Dot => reply(250, "2.0.0 Ok: queued"),
        }
    }
}

/// One message the intake accepted.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    pub mail_from: String,
    pub mail_params: Vec<String>,
    pub rcpt_to: Vec<String>,
    /// The message, dot-stuffing undone, ending with the CRLF before the final dot.
    pub data: Vec<u8>,
    pub tls_version: Option<String>,
    pub cipher: Option<String>,
    pub connection: usize,
}

#[derive(Default)]
struct Record {
    messages: Vec<ReceivedMessage>,
    transcripts: Vec<Vec<String>>,
    connections: usize,
    open: usize,
    peak: usize,
    per_connection: Vec<usize>,
    /// Transactions started (MAIL accepted), for per-message scripting.
    transactions: usize,
    protocol_errors: Vec<String>,
    tls_failures: Vec<String>,
}

pub struct FakeIntake {
    addr: SocketAddr,
    record: Arc<Mutex<Record>>,
    tasks: Arc<Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl FakeIntake {
    pub async fn start(script: IntakeScript) -> FakeIntake {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind intake");
        let addr = listener.local_addr().expect("intake addr");
        let record = Arc::new(Mutex::new(Record::default()));
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let script = Arc::new(script);
        let accept = {
            let record = record.clone();
            let tasks = tasks.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let conn = {
                        let mut r = record.lock().expect("record");
                        r.connections += 1;
                        r.open += 1;
                        r.peak = r.peak.max(r.open);
                        r.transcripts.push(Vec::new());
                        r.per_connection.push(0);
                        r.connections - 1
                    };
                    let record = record.clone();
                    let script = script.clone();
                    tasks.lock().expect("tasks").spawn(async move {
                        serve(stream, conn, &script, &record).await;
                        record.lock().expect("record").open -= 1;
                    });
                }
            })
        };
        FakeIntake {
            addr,
            record,
            tasks,
            accept,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.record.lock().expect("record").messages.clone()
    }

    pub fn transcript(&self, connection: usize) -> Vec<String> {
        self.record.lock().expect("record").transcripts[connection].clone()
    }

    pub fn connections(&self) -> usize {
        self.record.lock().expect("record").connections
    }

    pub fn peak_concurrent(&self) -> usize {
        self.record.lock().expect("record").peak
    }

    pub fn messages_per_connection(&self) -> Vec<usize> {
        self.record.lock().expect("record").per_connection.clone()
    }

    pub fn tls_failures(&self) -> Vec<String> {
        self.record.lock().expect("record").tls_failures.clone()
    }

    /// Waits for at least `n` accepted messages, or panics with the transcripts.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<ReceivedMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            if tokio::time::Instant::now() > deadline {
                let r = self.record.lock().expect("record");
                panic!(
                    "intake got {} of {n} messages in {timeout:?}; transcripts: {:#?}; protocol errors: {:?}",
                    messages.len(),
                    r.transcripts,
                    r.protocol_errors
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the intake; fails the test if the client broke the protocol.
    pub async fn shutdown(self) {
        self.accept.abort();
        let mut tasks = std::mem::take(&mut *self.tasks.lock().expect("tasks"));
        tasks.shutdown().await;
        let r = self.record.lock().expect("record");
        assert!(
            r.protocol_errors.is_empty(),
            "the client broke the protocol: {:?}",
            r.protocol_errors
        );
    }
}

enum End {
    Done,
    StartTls,
}

async fn serve(stream: TcpStream, conn: usize, script: &IntakeScript, record: &Mutex<Record>) {
    let mut plain = BufReader::new(stream);
    let mut session = Session {
        conn,
        script,
        record,
        tls: None,
        transaction: None,
    };
    if !session.say(&mut plain, Stage::Greeting, 0).await {
        return;
    }
    match session.converse(&mut plain).await {
        End::Done => {}
        End::StartTls => {
            if !plain.buffer().is_empty() {
                session.protocol_error("client sent data right after STARTTLS");
                return;
            }
            let acceptor = TlsAcceptor::from(script.pki.server_config(script.tls));
            match acceptor.accept(plain.into_inner()).await {
                Ok(tls) => {
                    let (_, c) = tls.get_ref();
                    session.tls = Some((
                        match c.protocol_version() {
                            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".into(),
                            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".into(),
                            other => format!("{other:?}"),
                        },
                        c.negotiated_cipher_suite()
                            .map(|s| format!("{:?}", s.suite()))
                            .unwrap_or_default(),
                    ));
                    let mut tls = BufReader::new(tls);
                    session.converse(&mut tls).await;
                }
                Err(e) => record
                    .lock()
                    .expect("record")
                    .tls_failures
                    .push(e.to_string()),
            }
        }
    }
}

struct Transaction {
    mail_from: String,
    mail_params: Vec<String>,
    rcpt_to: Vec<String>,
    number: usize,
}

struct Session<'a> {
    conn: usize,
    script: &'a IntakeScript,
    record: &'a Mutex<Record>,
    tls: Option<(String, String)>,
    transaction: Option<Transaction>,
}

impl Session<'_> {
    fn protocol_error(&self, what: &str) {
        self.record
            .lock()
            .expect("record")
            .protocol_errors
            .push(format!("connection {}: {what}", self.conn));
    }

    /// Performs the scripted step; false when the connection is to end.
    async fn say<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut BufReader<S>,
        stage: Stage,
        message: usize,
    ) -> bool {
        match self.script.step_on(self.conn, stage, message) {
            Step::Reply(code, text) => write_reply(io, code, &text).await,
            Step::Close => false,
            Step::Slow(pause, code, text) => {
                tokio::time::sleep(pause).await;
                write_reply(io, code, &text).await
            }
            Step::Stall => {
                std::future::pending::<()>().await;
                false
            }
            Step::Raw(_, pieces) => {
                for piece in pieces {
                    let sent = io.get_mut().write_all(&piece).await.is_ok()
                        && io.get_mut().flush().await.is_ok();
                    if !sent {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                true
            }
        }
    }

    async fn converse<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut BufReader<S>) -> End {
        loop {
            let Some(line) = self.read_line(io).await else {
                return End::Done;
            };
            self.record.lock().expect("record").transcripts[self.conn].push(line.clone());
            let upper = line.to_ascii_uppercase();
            let verb = upper.split(' ').next().unwrap_or("");
            let number = self.record.lock().expect("record").transactions;
            let ok = match verb {
                "EHLO" | "HELO" => {
                    let mut lines = vec!["intake.test".to_string()];
                    lines.extend(self.script.capabilities.iter().cloned());
                    if self.tls.is_none() && self.script.offer_starttls {
                        lines.push("STARTTLS".into());
                    }
                    match self.script.step_on(self.conn, Stage::Ehlo, number) {
                        step if step.code() == Some(250) => {
                            write_reply(io, 250, &lines.join("\n")).await
                        }
                        _ => self.say(io, Stage::Ehlo, number).await,
                    }
                }
                "STARTTLS" if self.tls.is_none() && self.script.offer_starttls => {
                    let step = self.script.step_on(self.conn, Stage::StartTls, number);
                    let go = step.code() == Some(220);
                    if !self.say(io, Stage::StartTls, number).await {
                        return End::Done;
                    }
                    if go {
                        return End::StartTls;
                    }
                    true
                }
                "MAIL" if self.tls.is_none() => {
                    write_reply(io, 530, "5.7.0 Must issue a STARTTLS command first").await
                }
                "MAIL" => {
                    let (from, params) = parse_path(&line, "MAIL FROM:");
                    let step = self.script.step_on(self.conn, Stage::Mail, number);
                    if step.positive() {
                        self.transaction = Some(Transaction {
                            mail_from: from,
                            mail_params: params,
                            rcpt_to: Vec::new(),
                            number,
                        });
                        self.record.lock().expect("record").transactions += 1;
                    }
                    self.say(io, Stage::Mail, number).await
                }
                "RCPT" => {
                    let n = self.transaction.as_ref().map_or(number, |t| t.number);
                    let step = self.script.step_on(self.conn, Stage::Rcpt, n);
                    let accepted = step.positive();
                    if let (Some(t), true) = (self.transaction.as_mut(), accepted) {
                        t.rcpt_to.push(parse_path(&line, "RCPT TO:").0);
                    }
                    self.say(io, Stage::Rcpt, n).await
                }
                "DATA" => {
                    let ready = self
                        .transaction
                        .as_ref()
                        .is_some_and(|t| !t.rcpt_to.is_empty());
                    if !ready {
                        write_reply(io, 503, "5.5.1 Error: need RCPT command").await
                    } else {
                        let n = self.transaction.as_ref().map_or(number, |t| t.number);
                        let go = self.script.step_on(self.conn, Stage::Data, n).code() == Some(354);
                        if !self.say(io, Stage::Data, n).await {
                            return End::Done;
                        }
                        if go {
                            let Some(data) = self.read_data(io).await else {
                                return End::Done;
                            };
                            let stored = self.script.step_on(self.conn, Stage::Dot, n).positive();
                            if stored {
                                self.store(data);
                            } else {
                                self.transaction = None;
                            }
                            self.say(io, Stage::Dot, n).await
                        } else {
                            true
                        }
                    }
                }
                "RSET" => {
                    self.transaction = None;
                    self.say(io, Stage::Rset, number).await
                }
                "NOOP" => write_reply(io, 250, "2.0.0 Ok").await,
                "QUIT" => {
                    write_reply(io, 221, "2.0.0 Bye").await;
                    return End::Done;
                }
                _ => write_reply(io, 502, "5.5.2 Error: command not recognized").await,
            };
            if !ok {
                return End::Done;
            }
        }
    }

    fn store(&mut self, data: Vec<u8>) {
        let Some(t) = self.transaction.take() else {
            return;
        };
        let mut r = self.record.lock().expect("record");
        r.per_connection[self.conn] += 1;
        r.messages.push(ReceivedMessage {
            mail_from: t.mail_from,
            mail_params: t.mail_params,
            rcpt_to: t.rcpt_to,
            data,
            tls_version: self.tls.as_ref().map(|t| t.0.clone()),
            cipher: self.tls.as_ref().map(|t| t.1.clone()),
            connection: self.conn,
        });
    }

    /// One command line; a line without CRLF is a protocol error.
    async fn read_line<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut BufReader<S>,
    ) -> Option<String> {
        let mut buf = Vec::new();
        let n = io.read_until(b'\n', &mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        if !buf.ends_with(b"\r\n") {
            self.protocol_error(&format!(
                "command without CRLF: {:?}",
                String::from_utf8_lossy(&buf)
            ));
            return None;
        }
        buf.truncate(buf.len() - 2);
        Some(String::from_utf8_lossy(&buf).into_owned())
    }

    /// The message up to the final dot, with dot-stuffing undone. A bare LF or a bare
    /// CR is a protocol error (RFC 5321 §2.3.8).
    async fn read_data<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: &mut BufReader<S>,
    ) -> Option<Vec<u8>> {
        let mut data = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = io.read_until(b'\n', &mut line).await.ok()?;
            if n == 0 {
                return None;
            }
            if !line.ends_with(b"\r\n") || line[..line.len() - 2].contains(&b'\n') {
                self.protocol_error("bare LF or missing CRLF in DATA");
            }
            // What an intake lenient about line ends might take for the end of the
            // data (`<CR>.<CR>`, SMTP smuggling): no bare CR may reach it.
            if line[..line.len().saturating_sub(2)].contains(&b'\r') {
                self.protocol_error("bare CR in DATA");
            }
            if line == b".\r\n" {
                return Some(data);
            }
            let content = line.strip_prefix(b".").unwrap_or(&line);
            if line.starts_with(b".") && !content.starts_with(b".") && content != b"\r\n" {
                self.protocol_error("a line starting with '.' was not dot-stuffed");
            }
            data.extend_from_slice(content);
        }
    }
}

/// `MAIL FROM:<a@b> BODY=8BITMIME` → ("a@b", ["BODY=8BITMIME"]).
fn parse_path(line: &str, prefix: &str) -> (String, Vec<String>) {
    let rest = if line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix) {
        &line[prefix.len()..]
    } else {
        line
    };
    let mut parts = rest.split(' ');
    let path = parts.next().unwrap_or("");
    let path = path
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string();
    (
        path,
        parts
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect(),
    )
}

async fn write_reply<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    code: u16,
    text: &str,
) -> bool {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        out.push_str(&format!("{code}{sep}{line}\r\n"));
    }
    io.get_mut().write_all(out.as_bytes()).await.is_ok() && io.get_mut().flush().await.is_ok()
}
