//! The bad-input catalogue's harness: raw messages, the daemon and intake they go
//! through, and the checks every case makes. The cases are in `tests/bad_input_*.rs`.
//!
//! Every case asserts the same four things:
//! * the end-of-message answer lets the original through (tdc-milter never rejects or
//!   tempfails);
//! * the exact journaling outcome: the journal that reached the fake intake, checked
//!   byte for byte in its structure (the journal's own headers, the report, the attached
//!   original) and by an independent parser (mail-parser), or the exact `not journaled`
//!   line, or no journal at all;
//! * every line the daemon logged is one line without control characters, starting
//!   with a severity word (no log injection);
//! * the daemon still journals a clean message sent after the bad one.
//!
//! Header values and envelope addresses are passed as raw bytes (`CString`), so 8-bit,
//! invalid UTF-8, CR, LF and other control bytes reach the milter exactly. The milter
//! protocol carries them as NUL-terminated strings: a NUL cannot be part of a header
//! value or an address (see `nul_in_header_value_cannot_be_sent_and_nul_in_body_is_carried`).
//! Header values are sent exactly (`exact_leading_space`): what a test gives is what
//! follows the colon.

use std::ffi::CString;
use std::time::Duration;

use bytes::Bytes;
use indymilter::MacroStage;
use indymilter_test::{Status, TestConnection};
use mail_parser::MimeHeaders;

use super::daemon::{settings_yaml, Daemon};
use super::fake_intake::{FakeIntake, IntakeScript, ReceivedMessage};

pub const WAIT: Duration = Duration::from_secs(30);
pub const CLIENT_IP: &str = "192.0.2.7";
pub const GLOBAL: &str = "global@intake.test";
pub const SETD: &str = "Cisco Secure Email Threat Defense";

// ---------------------------------------------------------------------------------
// The message, the daemon and the intake
// ---------------------------------------------------------------------------------

/// One message as the MTA passes it to the milter, in raw bytes.
#[derive(Clone)]
pub struct Raw {
    pub queue_id: String,
    pub sender: Vec<u8>,
    pub recipients: Vec<Vec<u8>>,
    /// Name and exact value (everything after the colon).
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Sent in one or more chunks (65,535 bytes at most, as Postfix does); none if empty.
    pub body: Bytes,
}

impl Raw {
    pub fn new(queue_id: &str) -> Raw {
        Raw {
            queue_id: queue_id.to_string(),
            sender: b"<a@sender.example>".to_vec(),
            recipients: vec![b"<bob@example.com>".to_vec()],
            headers: Vec::new(),
            body: Bytes::from_static(b"body\r\n"),
        }
    }

    /// A header as an MTA usually passes it: one space after the colon.
    pub fn header(self, name: &str, value: impl AsRef<[u8]>) -> Raw {
        let mut v = b" ".to_vec();
        v.extend_from_slice(value.as_ref());
        self.header_exact(name.as_bytes(), v)
    }

    pub fn header_exact(mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Raw {
        self.headers
            .push((name.as_ref().to_vec(), value.as_ref().to_vec()));
        self
    }

    pub fn sender(mut self, sender: impl AsRef<[u8]>) -> Raw {
        self.sender = sender.as_ref().to_vec();
        self
    }

    pub fn recipients<T: AsRef<[u8]>>(mut self, rcpts: &[T]) -> Raw {
        self.recipients = rcpts.iter().map(|r| r.as_ref().to_vec()).collect();
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Raw {
        self.body = body.into();
        self
    }

    /// The attached original when nothing needed repair: our client-IP header, each
    /// header `name:value` (libmilter's LF folding as CRLF), a blank line, the body.
    pub fn expected_original(&self) -> Vec<u8> {
        let mut out = format!("X-IronPort-RemoteIP: {CLIENT_IP}\r\n").into_bytes();
        for (name, value) in &self.headers {
            if name.eq_ignore_ascii_case(b"X-IronPort-RemoteIP") {
                continue;
            }
            out.extend_from_slice(name);
            out.push(b':');
            out.extend_from_slice(&lf_to_crlf(value));
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

pub fn lf_to_crlf(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for (i, &b) in value.iter().enumerate() {
        if b == b'\n' && (i == 0 || value[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

pub fn c(bytes: &[u8]) -> CString {
    CString::new(bytes.to_vec()).expect("the milter protocol cannot carry a NUL here")
}

pub fn passes(status: &Status) -> bool {
    matches!(status, Status::Accept | Status::Continue)
}

/// Headers, end of header and body chunks: tdc-milter asks the MTA not to wait for
/// a reply (indymilter-test offers that), so there is none.
pub fn no_reply(status: Status) {
    assert_eq!(status, Status::Noreply);
}

/// MAIL … end of message on an open connection; returns the end-of-message answer.
pub async fn transmit(conn: &mut TestConnection, m: &Raw) -> Status {
    start_transaction(conn, m).await;
    if !m.body.is_empty() {
        no_reply(conn.body(m.body.clone()).await.expect("body"));
    }
    conn.macros(MacroStage::Eom, [("i", m.queue_id.as_str())])
        .await
        .expect("macros");
    let (actions, status) = conn.eom().await.expect("eom");
    assert!(
        actions.actions.is_empty(),
        "tdc-milter never changes the original: {:?}",
        actions.actions
    );
    status
}

/// MAIL, RCPT, the headers and end of headers.
pub async fn start_transaction(conn: &mut TestConnection, m: &Raw) {
    conn.macros(MacroStage::Mail, [("{mail_addr}", c(&m.sender))])
        .await
        .expect("macros");
    no_reply(conn.mail([c(&m.sender)]).await.expect("mail"));
    for rcpt in &m.recipients {
        no_reply(conn.rcpt([c(rcpt)]).await.expect("rcpt"));
    }
    for (name, value) in &m.headers {
        no_reply(conn.header(c(name), c(value)).await.expect("header"));
    }
    no_reply(conn.eoh().await.expect("eoh"));
}

pub struct Harness {
    pub _dir: tempfile::TempDir,
    pub intake: FakeIntake,
    pub daemon: Daemon,
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::with_policies("").await
    }

    pub async fn with_policies(policies: &str) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let (intake, ca) = super::start_intake(IntakeScript::default(), dir.path()).await;
        let daemon = Daemon::start(&settings_yaml(intake.addr(), &ca, policies), dir.path()).await;
        Harness {
            _dir: dir,
            intake,
            daemon,
        }
    }

    /// A milter connection from client 192.0.2.7 that passes header values exactly.
    pub async fn open(&self) -> TestConnection {
        let mut conn = TestConnection::configure()
            .exact_leading_space(true)
            .open_tcp(self.daemon.addr)
            .await
            .expect("milter connection");
        conn.connect("client.example", [192, 0, 2, 7])
            .await
            .expect("connect");
        conn
    }

    /// Sends one message on its own connection; the original must pass.
    pub async fn send(&self, m: &Raw) {
        let mut conn = self.open().await;
        let status = transmit(&mut conn, m).await;
        assert!(
            passes(&status),
            "the original was not let through: {status:?}"
        );
        conn.close().await.expect("close");
    }

    pub async fn journals(&self, n: usize) -> Vec<ReceivedMessage> {
        self.intake.wait_for_messages(n, WAIT).await
    }

    /// Sends a clean message after the bad one(s) and checks that exactly it was
    /// journaled next; stops the daemon, checks every log line, and returns them.
    pub async fn finish(self, journals_before: usize) -> Vec<String> {
        let follow = Raw::new("QFOLLOW")
            .recipients(&["<after@example.com>"])
            .header("Subject", "follow-up")
            .header("Message-ID", "<follow@sender.example>")
            .body(&b"clean\r\n"[..]);
        self.send(&follow).await;
        let received = self.journals(journals_before + 1).await;
        check_journal(
            &received[journals_before],
            GLOBAL,
            &Report {
                sender: "a@sender.example",
                subject: "follow-up",
                message_id: "<follow@sender.example>",
                recipients: &["after@example.com"],
            },
            &follow.expected_original(),
        );
        let mid = journals_before + 1;
        self.daemon
            .wait_for_log(&format!("Message finished MID {mid} done"), 1)
            .await;
        let lines = self.daemon.stop().await;
        assert_log_is_clean(&lines);
        assert!(
            lines.contains(&enqueued(
                mid as u64,
                "<follow@sender.example>",
                GLOBAL,
                "QFOLLOW"
            )),
            "{lines:#?}"
        );
        assert_eq!(
            lines.iter().filter(|l| l.contains(" enqueued ")).count(),
            journals_before + 1,
            "{lines:#?}"
        );
        assert!(
            !lines
                .iter()
                .any(|l| l.starts_with("Warning:") || l.starts_with("Critical:")),
            "{lines:#?}"
        );
        assert_eq!(
            self.intake.messages().len(),
            journals_before + 1,
            "no other journal arrived"
        );
        self.intake.shutdown().await;
        lines
    }
}

// ---------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------

/// UTF-8 of what must never reach syslog raw, listed here independently of the
/// sanitizer: C1 controls (U+0080..U+009F: C2 80..C2 9F, checked below), the line and
/// paragraph separators, and the bidi marks, embeddings, overrides and isolates.
pub const FORBIDDEN_SEQUENCES: &[&[u8]] = &[
    b"\xE2\x80\xA8", // U+2028
    b"\xE2\x80\xA9", // U+2029
    b"\xD8\x9C",     // U+061C
    b"\xE2\x80\x8E", // U+200E
    b"\xE2\x80\x8F", // U+200F
    b"\xE2\x80\xAA", // U+202A
    b"\xE2\x80\xAB", // U+202B
    b"\xE2\x80\xAC", // U+202C
    b"\xE2\x80\xAD", // U+202D
    b"\xE2\x80\xAE", // U+202E
    b"\xE2\x81\xA6", // U+2066
    b"\xE2\x81\xA7", // U+2067
    b"\xE2\x81\xA8", // U+2068
    b"\xE2\x81\xA9", // U+2069
];

/// Every log line is one line, and starts with a severity word: a value from a message
/// cannot add or forge a line. Checked on the bytes syslog would receive: no byte below
/// 0x20, no DEL, no C1 control, none of [`FORBIDDEN_SEQUENCES`].
pub fn assert_log_is_clean(lines: &[String]) {
    for line in lines {
        let bytes = line.as_bytes();
        assert!(
            !bytes.iter().any(|&b| b < 0x20 || b == 0x7F),
            "control byte in a log line: {line:?}"
        );
        assert!(
            !bytes
                .windows(2)
                .any(|w| w[0] == 0xC2 && (0x80..=0x9F).contains(&w[1])),
            "C1 control in a log line: {line:?}"
        );
        for seq in FORBIDDEN_SEQUENCES {
            assert_eq!(count(bytes, seq), 0, "{seq:X?} in a log line: {line:?}");
        }
        assert!(
            ["Info: ", "Warning: ", "Critical: ", "Debug: "]
                .iter()
                .any(|p| line.starts_with(p)),
            "log line without a severity word: {line:?}"
        );
    }
}

pub fn enqueued(mid: u64, message_id: &str, intake: &str, queue_id: &str) -> String {
    format!("Info: TDC: MID {mid} with Message-ID '{message_id}' enqueued for forwarding to {SETD} to the message intake address {intake} (queue ID {queue_id})")
}

/// The report fields a journal must carry.
pub struct Report<'a> {
    pub sender: &'a str,
    pub subject: &'a str,
    pub message_id: &'a str,
    pub recipients: &'a [&'a str],
}

impl Report<'_> {
    pub fn text(&self) -> String {
        let mut t = format!(
            "Sender: {}\r\nSubject: {}\r\nMessage-Id: {}\r\n",
            self.sender, self.subject, self.message_id
        );
        for r in self.recipients {
            t.push_str(&format!("Recipient: {r}\r\n"));
        }
        t
    }
}

/// A journal taken apart by hand.
pub struct Journal {
    /// The journal's own header fields, name and raw (folded) value.
    pub headers: Vec<(String, Vec<u8>)>,
    pub boundary: String,
    pub report: String,
    pub original: Vec<u8>,
}

impl Journal {
    pub fn header(&self, name: &str) -> &[u8] {
        &self
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .expect("journal header")
            .1
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

pub fn show(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.chars().count() > 2000 {
        let head: String = text.chars().take(2000).collect();
        format!("{head}… ({} bytes)", bytes.len())
    } else {
        text.into_owned()
    }
}

/// Splits a journal along the layout of docs/JOURNAL-FORMAT.md, asserting every fixed byte.
pub fn open_journal(data: &[u8]) -> Journal {
    let end = find(data, b"\r\n\r\n").expect("journal header section ends") + 2;
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    for line in data[..end].split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        let line = line
            .strip_suffix(b"\r")
            .expect("CRLF in the journal's header");
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            let last = headers.last_mut().expect("continuation after a header");
            last.1.extend_from_slice(b"\r\n");
            last.1.extend_from_slice(line);
            continue;
        }
        let colon = line.iter().position(|&b| b == b':').expect("name: value");
        headers.push((
            String::from_utf8(line[..colon].to_vec()).expect("ASCII header name"),
            line[colon + 1..].to_vec(),
        ));
    }
    let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "MIME-Version",
            "Content-Type",
            "X-MS-Journal-Report"
        ],
        "the journal's own header section was altered"
    );
    let content_type = String::from_utf8_lossy(&headers[6].1).into_owned();
    let boundary = content_type
        .strip_prefix(" multipart/mixed; boundary=\"")
        .and_then(|b| b.strip_suffix('"'))
        .expect("boundary")
        .to_string();
    assert_eq!(
        count(data, boundary.as_bytes()),
        4,
        "the boundary occurs only in Content-Type and as the three delimiters"
    );
    let body = &data[end + 2..];
    let first = format!("--{boundary}\r\nContent-Type: text/plain; charset=\"utf-8\"\r\nContent-Transfer-Encoding: ");
    let body = body
        .strip_prefix(first.as_bytes())
        .expect("report part header");
    let cte_end = find(body, b"\r\n\r\n").expect("report part header ends");
    let cte = String::from_utf8_lossy(&body[..cte_end]).into_owned();
    let body = &body[cte_end + 4..];
    let second = format!("\r\n--{boundary}\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment\r\nContent-Transfer-Encoding: ");
    let split = find(body, second.as_bytes()).expect("second delimiter");
    let report_raw = &body[..split];
    let report = match cte.as_str() {
        "7bit" => String::from_utf8(report_raw.to_vec()).expect("7-bit report"),
        "quoted-printable" => {
            assert!(report_raw.is_ascii());
            let decoded = quoted_printable::decode(report_raw, quoted_printable::ParseMode::Strict)
                .expect("quoted-printable report");
            String::from_utf8(decoded).expect("UTF-8 report")
        }
        other => panic!("report Content-Transfer-Encoding {other}"),
    };
    let rest = &body[split + second.len()..];
    let (attachment_cte, rest) = if let Some(r) = rest.strip_prefix(b"7bit\r\n\r\n") {
        ("7bit", r)
    } else if let Some(r) = rest.strip_prefix(b"8bit\r\n\r\n") {
        ("8bit", r)
    } else {
        panic!(
            "attachment Content-Transfer-Encoding: {}",
            show(&rest[..40.min(rest.len())])
        );
    };
    let closing = format!("\r\n--{boundary}--\r\n");
    let original = rest
        .strip_suffix(closing.as_bytes())
        .expect("closing delimiter ends the journal")
        .to_vec();
    assert_eq!(
        attachment_cte == "8bit",
        !original.is_ascii(),
        "attachment encoding label"
    );
    Journal {
        headers,
        boundary,
        report,
        original,
    }
}

/// Checks one journal completely: envelope, layout, report, the attached original, and
/// the same seen through mail-parser.
pub fn check_journal(
    m: &ReceivedMessage,
    intake: &str,
    report: &Report<'_>,
    original: &[u8],
) -> Journal {
    check_journal_with(m, intake, report, original, Parser::Exact)
}

/// How mail-parser sees the attachment's end.
#[derive(Clone, Copy, PartialEq)]
pub enum Parser {
    /// Exactly where the original ends.
    Exact,
    /// mail-parser does not let the journal's closing delimiter end an unterminated
    /// multipart inside the original (RFC 2046 §5.1.2 says it should), so its attachment
    /// runs to the end of the journal.
    RunsToTheEnd,
}

pub fn check_journal_with(
    m: &ReceivedMessage,
    intake: &str,
    report: &Report<'_>,
    original: &[u8],
    parser: Parser,
) -> Journal {
    assert_eq!(m.mail_from, "tdc@gw.test");
    assert_eq!(m.rcpt_to, vec![intake.to_string()]);
    assert_eq!(
        m.mail_params.iter().any(|p| p == "BODY=8BITMIME"),
        !m.data.is_ascii(),
        "BODY=8BITMIME exactly when the journal has 8-bit bytes: {:?}",
        m.mail_params
    );
    let j = open_journal(&m.data);
    assert_eq!(j.header("From"), b" <tdc@gw.test>");
    assert_eq!(j.header("To"), format!(" <{intake}>").as_bytes());
    assert_eq!(j.report, report.text(), "report");
    assert!(
        j.original == original,
        "attached original differs:\n--- got\n{}\n--- expected\n{}",
        show(&j.original),
        show(original)
    );
    // An independent parser agrees.
    let parsed = mail_parser::MessageParser::default()
        .parse(&m.data)
        .expect("journal parses");
    let text = parsed.body_text(0).expect("report part");
    assert_eq!(
        text.replace("\r\n", "\n"),
        report.text().replace("\r\n", "\n"),
        "report as mail-parser reads it"
    );
    let attachment = parsed.attachment(0).expect("attached original");
    assert_eq!(
        attachment.content_type().map(|c| (c.ctype(), c.subtype())),
        Some(("message", Some("rfc822")))
    );
    let raw = &m.data[attachment.raw_body_offset() as usize..attachment.raw_end_offset() as usize];
    let seen = match parser {
        Parser::Exact => original.to_vec(),
        Parser::RunsToTheEnd => {
            [original, format!("\r\n--{}--\r\n", j.boundary).as_bytes()].concat()
        }
    };
    assert!(
        raw == seen,
        "mail-parser's view of the attachment differs:\n{}",
        show(raw)
    );
    j
}

/// One journal for one bad message to the global intake, then the follow-up.
pub async fn journaled_once(
    m: Raw,
    report: Report<'_>,
    original: &[u8],
    logged_id: &str,
) -> Journal {
    let h = Harness::start().await;
    h.send(&m).await;
    let received = h.journals(1).await;
    let j = check_journal(&received[0], GLOBAL, &report, original);
    let lines = h.finish(1).await;
    assert!(
        lines.contains(&enqueued(1, logged_id, GLOBAL, &m.queue_id)),
        "{lines:#?}"
    );
    j
}

pub fn default_report<'a>(subject: &'a str, message_id: &'a str) -> Report<'a> {
    Report {
        sender: "a@sender.example",
        subject,
        message_id,
        recipients: &["bob@example.com"],
    }
}
