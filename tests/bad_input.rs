//! The bad-input catalogue: hostile or broken messages, envelopes and
//! milter conversations, each sent to the real daemon in-process.
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

mod common;

use std::ffi::CString;
use std::time::Duration;

use bytes::Bytes;
use common::daemon::{settings_yaml, Daemon};
use common::fake_intake::{FakeIntake, IntakeScript, ReceivedMessage};
use indymilter::MacroStage;
use indymilter_test::{Status, TestConnection};
use mail_parser::MimeHeaders;

const WAIT: Duration = Duration::from_secs(30);
const CLIENT_IP: &str = "192.0.2.7";
const GLOBAL: &str = "global@intake.test";
const SETD: &str = "Cisco Secure Email Threat Defense";

// ---------------------------------------------------------------------------------
// The message, the daemon and the intake
// ---------------------------------------------------------------------------------

/// One message as the MTA passes it to the milter, in raw bytes.
#[derive(Clone)]
struct Raw {
    queue_id: String,
    sender: Vec<u8>,
    recipients: Vec<Vec<u8>>,
    /// Name and exact value (everything after the colon).
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Sent in one or more chunks (65,535 bytes at most, as Postfix does); none if empty.
    body: Bytes,
}

impl Raw {
    fn new(queue_id: &str) -> Raw {
        Raw {
            queue_id: queue_id.to_string(),
            sender: b"<a@sender.example>".to_vec(),
            recipients: vec![b"<bob@example.com>".to_vec()],
            headers: Vec::new(),
            body: Bytes::from_static(b"body\r\n"),
        }
    }

    /// A header as an MTA usually passes it: one space after the colon.
    fn header(self, name: &str, value: impl AsRef<[u8]>) -> Raw {
        let mut v = b" ".to_vec();
        v.extend_from_slice(value.as_ref());
        self.header_exact(name.as_bytes(), v)
    }

    fn header_exact(mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Raw {
        self.headers
            .push((name.as_ref().to_vec(), value.as_ref().to_vec()));
        self
    }

    fn sender(mut self, sender: impl AsRef<[u8]>) -> Raw {
        self.sender = sender.as_ref().to_vec();
        self
    }

    fn recipients<T: AsRef<[u8]>>(mut self, rcpts: &[T]) -> Raw {
        self.recipients = rcpts.iter().map(|r| r.as_ref().to_vec()).collect();
        self
    }

    fn body(mut self, body: impl Into<Bytes>) -> Raw {
        self.body = body.into();
        self
    }

    /// The attached original when nothing needed repair: our client-IP header, each
    /// header `name:value` (libmilter's LF folding as CRLF), a blank line, the body.
    fn expected_original(&self) -> Vec<u8> {
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

fn lf_to_crlf(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for (i, &b) in value.iter().enumerate() {
        if b == b'\n' && (i == 0 || value[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

fn c(bytes: &[u8]) -> CString {
    CString::new(bytes.to_vec()).expect("the milter protocol cannot carry a NUL here")
}

fn passes(status: &Status) -> bool {
    matches!(status, Status::Accept | Status::Continue)
}

/// Headers, end of header and body chunks: tdc-milter asks the MTA not to wait for
/// a reply (indymilter-test offers that), so there is none.
fn no_reply(status: Status) {
    assert_eq!(status, Status::Noreply);
}

/// MAIL … end of message on an open connection; returns the end-of-message answer.
async fn transmit(conn: &mut TestConnection, m: &Raw) -> Status {
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
async fn start_transaction(conn: &mut TestConnection, m: &Raw) {
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

struct Harness {
    _dir: tempfile::TempDir,
    intake: FakeIntake,
    daemon: Daemon,
}

impl Harness {
    async fn start() -> Harness {
        Harness::with_policies("").await
    }

    async fn with_policies(policies: &str) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let (intake, ca) = common::start_intake(IntakeScript::default(), dir.path()).await;
        let daemon = Daemon::start(&settings_yaml(intake.addr(), &ca, policies), dir.path()).await;
        Harness {
            _dir: dir,
            intake,
            daemon,
        }
    }

    /// A milter connection from client 192.0.2.7 that passes header values exactly.
    async fn open(&self) -> TestConnection {
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
    async fn send(&self, m: &Raw) {
        let mut conn = self.open().await;
        let status = transmit(&mut conn, m).await;
        assert!(
            passes(&status),
            "the original was not let through: {status:?}"
        );
        conn.close().await.expect("close");
    }

    async fn journals(&self, n: usize) -> Vec<ReceivedMessage> {
        self.intake.wait_for_messages(n, WAIT).await
    }

    /// Sends a clean message after the bad one(s) and checks that exactly it was
    /// journaled next; stops the daemon, checks every log line, and returns them.
    async fn finish(self, journals_before: usize) -> Vec<String> {
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
const FORBIDDEN_SEQUENCES: &[&[u8]] = &[
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
fn assert_log_is_clean(lines: &[String]) {
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

fn enqueued(mid: u64, message_id: &str, intake: &str, queue_id: &str) -> String {
    format!("Info: TDC: MID {mid} with Message-ID '{message_id}' enqueued for forwarding to {SETD} to the message intake address {intake} (queue ID {queue_id})")
}

/// The report fields a journal must carry.
struct Report<'a> {
    sender: &'a str,
    subject: &'a str,
    message_id: &'a str,
    recipients: &'a [&'a str],
}

impl Report<'_> {
    fn text(&self) -> String {
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
struct Journal {
    /// The journal's own header fields, name and raw (folded) value.
    headers: Vec<(String, Vec<u8>)>,
    boundary: String,
    report: String,
    original: Vec<u8>,
}

impl Journal {
    fn header(&self, name: &str) -> &[u8] {
        &self
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .expect("journal header")
            .1
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

fn show(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.chars().count() > 2000 {
        let head: String = text.chars().take(2000).collect();
        format!("{head}… ({} bytes)", bytes.len())
    } else {
        text.into_owned()
    }
}

/// Splits a journal along the layout of docs/JOURNAL-FORMAT.md, asserting every fixed byte.
fn open_journal(data: &[u8]) -> Journal {
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
fn check_journal(
    m: &ReceivedMessage,
    intake: &str,
    report: &Report<'_>,
    original: &[u8],
) -> Journal {
    check_journal_with(m, intake, report, original, Parser::Exact)
}

/// How mail-parser sees the attachment's end.
#[derive(Clone, Copy, PartialEq)]
enum Parser {
    /// Exactly where the original ends.
    Exact,
    /// mail-parser does not let the journal's closing delimiter end an unterminated
    /// multipart inside the original (RFC 2046 §5.1.2 says it should), so its attachment
    /// runs to the end of the journal.
    RunsToTheEnd,
}

fn check_journal_with(
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
async fn journaled_once(m: Raw, report: Report<'_>, original: &[u8], logged_id: &str) -> Journal {
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

fn default_report<'a>(subject: &'a str, message_id: &'a str) -> Report<'a> {
    Report {
        sender: "a@sender.example",
        subject,
        message_id,
        recipients: &["bob@example.com"],
    }
}

// ---------------------------------------------------------------------------------
// Malformed MIME
// ---------------------------------------------------------------------------------

/// Expected: journaled; the attached original carries the unterminated multipart byte
/// for byte, and the journal's own MIME structure still delimits it (RFC 2046: the outer
/// closing delimiter ends it). mail-parser, which does not apply that rule, runs the
/// attachment on to the end of the journal; the report still parses.
#[tokio::test]
async fn unterminated_multipart_body() {
    let m = Raw::new("QMIME1")
        .header("Message-ID", "<mime1@sender.example>")
        .header("MIME-Version", "1.0")
        .header("Content-Type", "multipart/mixed; boundary=\"inner\"")
        .body(&b"--inner\r\nContent-Type: text/plain\r\n\r\nfirst part, never closed\r\n--inner\r\nContent-Type: text/html\r\n\r\n<p>cut"[..]);
    let original = m.expected_original();
    let h = Harness::start().await;
    h.send(&m).await;
    let received = h.journals(1).await;
    check_journal_with(
        &received[0],
        GLOBAL,
        &default_report("", "<mime1@sender.example>"),
        &original,
        Parser::RunsToTheEnd,
    );
    let lines = h.finish(1).await;
    assert!(lines.contains(&enqueued(1, "<mime1@sender.example>", GLOBAL, "QMIME1")));
}

/// Expected: journaled unchanged although the declared boundary never occurs in the
/// body and another, undeclared one does.
#[tokio::test]
async fn multipart_with_wrong_boundary() {
    let m = Raw::new("QMIME2")
        .header("Message-ID", "<mime2@sender.example>")
        .header(
            "Content-Type",
            "multipart/alternative; boundary=\"declared\"",
        )
        .body(&b"--other\r\nContent-Type: text/plain\r\n\r\nx\r\n--other--\r\n"[..]);
    let original = m.expected_original();
    journaled_once(
        m,
        default_report("", "<mime2@sender.example>"),
        &original,
        "<mime2@sender.example>",
    )
    .await;
}

/// Expected: journaled unchanged: a Content-Type without subtype, with a stray
/// parameter list, an empty boundary and an unbalanced quote.
#[tokio::test]
async fn broken_content_type_header() {
    let m = Raw::new("QMIME3")
        .header("Message-ID", "<mime3@sender.example>")
        .header(
            "Content-Type",
            "multipart/;;; boundary=; charset=\"unbalanced",
        )
        .header("Content-Transfer-Encoding", "base64!!")
        .body(&b"--\r\n--\r\n not base64 at all\r\n"[..]);
    let original = m.expected_original();
    journaled_once(
        m,
        default_report("", "<mime3@sender.example>"),
        &original,
        "<mime3@sender.example>",
    )
    .await;
}

// ---------------------------------------------------------------------------------
// Message-ID
// ---------------------------------------------------------------------------------

/// Expected: journaled; the log line shows `Message-ID ''` and the report's
/// `Message-Id:` line is empty.
#[tokio::test]
async fn missing_message_id() {
    let m = Raw::new("QNOID").header("Subject", "no id");
    let original = m.expected_original();
    journaled_once(m, default_report("no id", ""), &original, "").await;
}

/// Expected: journaled; the first Message-ID is the one logged and reported, and both
/// stay in the attached original.
#[tokio::test]
async fn duplicated_message_id_first_one_wins() {
    let m = Raw::new("QDUPID")
        .header("Message-ID", "<first@sender.example>")
        .header("Subject", "two ids")
        .header("Message-ID", "<second@sender.example>");
    let original = m.expected_original();
    let j = journaled_once(
        m,
        default_report("two ids", "<first@sender.example>"),
        &original,
        "<first@sender.example>",
    )
    .await;
    assert_eq!(count(&j.original, b"Message-ID: <"), 2);
}

/// Expected: journaled; the CRLF in the Message-ID is escaped (`\x0D\x0A`) in the one
/// log line, so the forged "successfully delivered" text stays inside it; the report
/// keeps one line; in the attached copy the line break is folding, not a new header.
#[tokio::test]
async fn message_id_with_crlf_forging_a_log_line() {
    let m = Raw::new("QIDCRLF")
        .header(
            "Message-ID",
            "<inj@sender.example>\r\nInfo: TDC: MID 99 successfully delivered for scanning",
        )
        .header("Subject", "crlf id");
    let mut original = format!("X-IronPort-RemoteIP: {CLIENT_IP}\r\n").into_bytes();
    original.extend_from_slice(b"Message-ID: <inj@sender.example>\r\n Info: TDC: MID 99 successfully delivered for scanning\r\nSubject: crlf id\r\n\r\nbody\r\n");
    let h = Harness::start().await;
    h.send(&m).await;
    let received = h.journals(1).await;
    check_journal(
        &received[0],
        GLOBAL,
        &default_report(
            "crlf id",
            "<inj@sender.example>   Info: TDC: MID 99 successfully delivered for scanning",
        ),
        &original,
    );
    let lines = h.finish(1).await;
    assert!(
        lines.contains(&enqueued(
            1,
            "<inj@sender.example>\\x0D\\x0A Info: TDC: MID 99 successfully delivered for scanning",
            GLOBAL,
            "QIDCRLF"
        )),
        "{lines:#?}"
    );
    assert!(!lines
        .iter()
        .any(|l| l.contains("MID 99 successfully") && !l.contains(" enqueued ")));
}

/// Expected: journaled; a bare LF and the control bytes ESC, BEL, DEL and TAB in the
/// Message-ID are escaped in the log line and become spaces in the report.
#[tokio::test]
async fn message_id_with_bare_lf_and_control_bytes() {
    let m = Raw::new("QIDCTL").header("Message-ID", "<a\x1b[31m\x07\x7f\tb@x>\nX-Evil: 1");
    let mut original = format!("X-IronPort-RemoteIP: {CLIENT_IP}\r\n").into_bytes();
    original
        .extend_from_slice(b"Message-ID: <a\x1b[31m\x07\x7f\tb@x>\r\n X-Evil: 1\r\n\r\nbody\r\n");
    journaled_once(
        m,
        default_report("", "<a [31m   b@x>   X-Evil: 1"),
        &original,
        "<a\\x1B[31m\\x07\\x7F\\x09b@x>\\x0D\\x0A X-Evil: 1",
    )
    .await;
}

/// Expected: journaled; the Unicode line separator and bidi controls in the Message-ID
/// (which a log viewer may break a line at, or show reordered) are escaped in the log
/// line; the report and the original carry them.
#[tokio::test]
async fn message_id_with_unicode_line_separator_and_bidi_controls() {
    let id = "<a\u{2028}Info: x\u{202E}gpj.exe\u{2066}b\u{0085}@x>";
    let m = Raw::new("QIDUNI").header("Message-ID", id);
    let original = m.expected_original();
    journaled_once(
        m,
        default_report("", "<a\u{2028}Info: x\u{202E}gpj.exe\u{2066}b @x>"),
        &original,
        "<a\\xE2\\x80\\xA8Info: x\\xE2\\x80\\xAEgpj.exe\\xE2\\x81\\xA6b\\xC2\\x85@x>",
    )
    .await;
}

/// Expected: journaled; a Message-ID of invalid UTF-8 is logged with replacement
/// characters (never raw bytes) and carried raw in the attached original.
#[tokio::test]
async fn message_id_with_invalid_utf8() {
    let m = Raw::new("QIDUTF").header("Message-ID", b"<\xff\xfe\xc3@sender.example>");
    let original = m.expected_original();
    journaled_once(
        m,
        default_report("", "<\u{FFFD}\u{FFFD}\u{FFFD}@sender.example>"),
        &original,
        "<\u{FFFD}\u{FFFD}\u{FFFD}@sender.example>",
    )
    .await;
}

/// Expected: journaled; the queue ID macro's CRLF is escaped in the log line.
#[tokio::test]
async fn queue_id_macro_with_crlf() {
    let m = Raw::new("Q1\r\nCritical: forged").header("Message-ID", "<qid@sender.example>");
    let original = m.expected_original();
    let h = Harness::start().await;
    h.send(&m).await;
    let received = h.journals(1).await;
    check_journal(
        &received[0],
        GLOBAL,
        &default_report("", "<qid@sender.example>"),
        &original,
    );
    let lines = h.finish(1).await;
    assert!(
        lines.contains(&enqueued(
            1,
            "<qid@sender.example>",
            GLOBAL,
            "Q1\\x0D\\x0ACritical: forged"
        )),
        "{lines:#?}"
    );
}

// ---------------------------------------------------------------------------------
// Subject
// ---------------------------------------------------------------------------------

/// Expected: journaled; a Subject with CRLF, a forged header and a blank line cannot
/// add a header to the journal or end its header section (it stays folded), nor add one
/// to the attached copy; the report's Subject stays one line.
#[tokio::test]
async fn subject_with_crlf_cannot_add_journal_headers() {
    let m = Raw::new("QSUBJ")
        .header("Subject", "hi\r\nX-Injected: 1\r\n\r\nbody injection")
        .header("Message-ID", "<subj@sender.example>");
    let mut original = format!("X-IronPort-RemoteIP: {CLIENT_IP}\r\n").into_bytes();
    original.extend_from_slice(b"Subject: hi\r\n X-Injected: 1\r\n \r\n body injection\r\nMessage-ID: <subj@sender.example>\r\n\r\nbody\r\n");
    let j = journaled_once(
        m,
        default_report("hi X-Injected: 1 body injection", "<subj@sender.example>"),
        &original,
        "<subj@sender.example>",
    )
    .await;
    assert_eq!(
        j.header("Subject"),
        b" hi\r\n X-Injected: 1\r\n \r\n body injection"
    );
}

/// Expected: journaled; a bare CR and the control bytes ESC, BEL and DEL in the Subject
/// do not break the journal's headers; the report shows them as spaces.
#[tokio::test]
async fn subject_with_bare_cr_and_control_bytes() {
    let m = Raw::new("QSUBJCR")
        .header("Subject", "a\rX-Injected: 1\x1b\x07\x7fz")
        .header("Message-ID", "<subjcr@sender.example>");
    let mut original = format!("X-IronPort-RemoteIP: {CLIENT_IP}\r\n").into_bytes();
    original.extend_from_slice(b"Subject: a\r\n X-Injected: 1\x1b\x07\x7fz\r\nMessage-ID: <subjcr@sender.example>\r\n\r\nbody\r\n");
    let j = journaled_once(
        m,
        default_report("a X-Injected: 1   z", "<subjcr@sender.example>"),
        &original,
        "<subjcr@sender.example>",
    )
    .await;
    assert_eq!(j.header("Subject"), b" a\r\n X-Injected: 1\x1b\x07\x7fz");
}

/// Expected: journaled; a Latin-1 (invalid UTF-8) Subject and another 8-bit header are
/// carried raw (8bit attachment, BODY=8BITMIME); the report shows replacement characters.
#[tokio::test]
async fn eight_bit_latin1_header_bytes() {
    let m = Raw::new("QLATIN")
        .header("Subject", b"Gr\xfc\xdfe aus M\xfcnchen")
        .header("X-Comment", b"\xff\xfe\x80")
        .header("Message-ID", "<latin@sender.example>");
    let original = m.expected_original();
    let j = journaled_once(
        m,
        default_report(
            "Gr\u{FFFD}\u{FFFD}e aus M\u{FFFD}nchen",
            "<latin@sender.example>",
        ),
        &original,
        "<latin@sender.example>",
    )
    .await;
    assert_eq!(j.header("Subject"), b" Gr\xfc\xdfe aus M\xfcnchen");
}

/// Expected: journaled; a raw UTF-8 Subject (RFC 6532) is passed on raw in the
/// journal's Subject and reported as is (quoted-printable report).
#[tokio::test]
async fn raw_utf8_subject() {
    let m = Raw::new("QUTF8")
        .header("Subject", "Grüße aus München ✉")
        .header("Message-ID", "<utf8@sender.example>");
    let original = m.expected_original();
    let j = journaled_once(
        m,
        default_report("Grüße aus München ✉", "<utf8@sender.example>"),
        &original,
        "<utf8@sender.example>",
    )
    .await;
    assert_eq!(j.header("Subject"), " Grüße aus München ✉".as_bytes());
}

/// Expected: journaled; RFC 2047 encoded words (Q and B, two charsets) are decoded in
/// the report and passed on encoded in the journal's Subject.
#[tokio::test]
async fn rfc2047_encoded_subject() {
    let m = Raw::new("Q2047")
        .header(
            "Subject",
            "=?iso-8859-1?q?M=FCnchen?= =?utf-8?b?4pyJIGJyaWVm?=",
        )
        .header("Message-ID", "<2047@sender.example>");
    let original = m.expected_original();
    let j = journaled_once(
        m,
        default_report("München✉ brief", "<2047@sender.example>"),
        &original,
        "<2047@sender.example>",
    )
    .await;
    assert_eq!(
        j.header("Subject"),
        b" =?iso-8859-1?q?M=FCnchen?= =?utf-8?b?4pyJIGJyaWVm?="
    );
}

/// Expected: journaled; encoded words that decode to CR, LF, NUL and ESC cannot forge
/// a report line: they become spaces, and the report keeps exactly one Recipient line.
#[tokio::test]
async fn rfc2047_subject_decoding_to_control_characters() {
    // "x\r\nRecipient: evil@x\0\x1by" in base64, and "\r\nSender: forged" in Q.
    let m = Raw::new("Q2047CTL")
        .header(
            "Subject",
            "=?utf-8?b?eA0KUmVjaXBpZW50OiBldmlsQHgAG3k=?= =?utf-8?q?=0D=0ASender:_forged?=",
        )
        .header("Message-ID", "<2047ctl@sender.example>");
    let original = m.expected_original();
    let j = journaled_once(
        m,
        default_report(
            "x  Recipient: evil@x  y  Sender: forged",
            "<2047ctl@sender.example>",
        ),
        &original,
        "<2047ctl@sender.example>",
    )
    .await;
    assert_eq!(j.report.matches("Recipient:").count(), 2);
    assert_eq!(
        j.report
            .lines()
            .filter(|l| l.starts_with("Recipient:"))
            .count(),
        1
    );
}

/// Expected: journaled; an unterminated encoded word stays literal in the report; one
/// with an unknown charset is decoded by its bytes (mail-parser's choice, no control
/// character can come of it); the journal's Subject passes both on unchanged.
#[tokio::test]
async fn malformed_rfc2047_subject() {
    let m = Raw::new("Q2047BAD")
        .header("Subject", "=?utf-8?q?unterminated =?x-unknown?q?abc?=")
        .header("Message-ID", "<2047bad@sender.example>");
    let original = m.expected_original();
    journaled_once(
        m,
        default_report("=?utf-8?q?unterminated abc", "<2047bad@sender.example>"),
        &original,
        "<2047bad@sender.example>",
    )
    .await;
}

// ---------------------------------------------------------------------------------
// Envelope
// ---------------------------------------------------------------------------------

/// Expected: journaled; CR, LF, ESC and BEL in the envelope sender become spaces in
/// the report's one Sender line; no log line carries them.
#[tokio::test]
async fn envelope_sender_with_crlf_and_control_bytes() {
    let m = Raw::new("QSNDCTL")
        .sender(b"<ev\r\nSender: forged\x1b\x07@sender.example>")
        .header("Message-ID", "<sndctl@sender.example>");
    let original = m.expected_original();
    let j = journaled_once(
        m,
        Report {
            sender: "ev  Sender: forged  @sender.example",
            subject: "",
            message_id: "<sndctl@sender.example>",
            recipients: &["bob@example.com"],
        },
        &original,
        "<sndctl@sender.example>",
    )
    .await;
    assert_eq!(
        j.report
            .lines()
            .filter(|l| l.starts_with("Sender:"))
            .count(),
        1
    );
}

/// Expected: journaled; CR and LF in an envelope recipient cannot forge a second
/// Recipient line: the report lists it on one line.
#[tokio::test]
async fn envelope_recipient_with_crlf() {
    let m = Raw::new("QRCPTCTL")
        .recipients(&[&b"<bob\r\nRecipient: forged@evil.example>"[..]])
        .header("Message-ID", "<rcptctl@sender.example>");
    let original = m.expected_original();
    let j = journaled_once(
        m,
        Report {
            sender: "a@sender.example",
            subject: "",
            message_id: "<rcptctl@sender.example>",
            recipients: &["bob  Recipient: forged@evil.example"],
        },
        &original,
        "<rcptctl@sender.example>",
    )
    .await;
    assert_eq!(
        j.report
            .lines()
            .filter(|l| l.starts_with("Recipient:"))
            .count(),
        1
    );
}

/// Expected: journaled; the null sender is reported as `Sender: <>`.
#[tokio::test]
async fn null_sender() {
    let m = Raw::new("QNULL")
        .sender("<>")
        .header("Subject", "Undelivered Mail Returned to Sender")
        .header("Message-ID", "<bounce@sender.example>");
    let original = m.expected_original();
    journaled_once(
        m,
        Report {
            sender: "<>",
            subject: "Undelivered Mail Returned to Sender",
            message_id: "<bounce@sender.example>",
            recipients: &["bob@example.com"],
        },
        &original,
        "<bounce@sender.example>",
    )
    .await;
}

/// Expected: journaled; a sender with a quoted local part holding spaces and escaped
/// quotes is reported exactly, without the angle brackets.
#[tokio::test]
async fn sender_with_spaces_and_quotes() {
    let m = Raw::new("QSNDQ")
        .sender(r#"<"john \"q\" public"@sender.example>"#)
        .header("Message-ID", "<sndq@sender.example>");
    let original = m.expected_original();
    journaled_once(
        m,
        Report {
            sender: r#""john \"q\" public"@sender.example"#,
            subject: "",
            message_id: "<sndq@sender.example>",
            recipients: &["bob@example.com"],
        },
        &original,
        "<sndq@sender.example>",
    )
    .await;
}

/// Expected: one journal per distinct intake; a recipient given twice is listed once,
/// a different spelling of it (case) is its own recipient.
#[tokio::test]
async fn duplicated_recipients() {
    let m = Raw::new("QDUPRCPT")
        .recipients(&[
            "<bob@example.com>",
            "<carol@example.com>",
            "<bob@example.com>",
            "bob@example.com",
            "<Bob@Example.com>",
        ])
        .header("Message-ID", "<duprcpt@sender.example>");
    let original = m.expected_original();
    journaled_once(
        m,
        Report {
            sender: "a@sender.example",
            subject: "",
            message_id: "<duprcpt@sender.example>",
            recipients: &["bob@example.com", "carol@example.com", "Bob@Example.com"],
        },
        &original,
        "<duprcpt@sender.example>",
    )
    .await;
}

const RESEARCH: &str = r#"  - name: research
    recipients: [".lab.example.com"]
    connector: { custom: research@intake.test }
"#;

/// Expected: a recipient domain with a trailing dot matches its policy as without the
/// dot (the research journal) and is reported as given; the parent domain with a
/// trailing dot is not a sub-domain (the global journal).
#[tokio::test]
async fn recipient_with_trailing_dot_domain() {
    let m = Raw::new("QDOT")
        .recipients(&["<x@dept.lab.example.com.>", "<y@lab.example.com.>"])
        .header("Message-ID", "<dot@sender.example>");
    let original = m.expected_original();
    let h = Harness::with_policies(RESEARCH).await;
    h.send(&m).await;
    let received = h.journals(2).await;
    for r in &received {
        let (intake, rcpt) = if r.rcpt_to == ["research@intake.test"] {
            ("research@intake.test", "x@dept.lab.example.com.")
        } else {
            (GLOBAL, "y@lab.example.com.")
        };
        check_journal(
            r,
            intake,
            &Report {
                sender: "a@sender.example",
                subject: "",
                message_id: "<dot@sender.example>",
                recipients: &[rcpt],
            },
            &original,
        );
    }
    assert_ne!(received[0].rcpt_to, received[1].rcpt_to);
    let lines = h.finish(2).await;
    for intake in ["research@intake.test", GLOBAL] {
        assert!(lines.iter().any(|l| l.contains(&format!("enqueued for forwarding to {SETD} to the message intake address {intake} (queue ID QDOT)"))), "{lines:#?}");
    }
}

/// Expected: a recipient domain in Unicode and the same domain in punycode both match
/// the one IDN policy: one journal to its intake with both recipients, as given (the
/// report is quoted-printable); another domain goes to the global intake.
#[tokio::test]
async fn idn_recipient_domains_unicode_and_punycode() {
    let policies = r#"  - name: idn
    recipients: ["bücher.example"]
    connector: { custom: idn@intake.test }
"#;
    let m = Raw::new("QIDN")
        .recipients(&[
            "<jürgen@bücher.example>",
            "<b@xn--bcher-kva.example>",
            "<c@BÜCHER.example>",
            "<d@buecher.example>",
        ])
        .header("Message-ID", "<idn@sender.example>");
    let original = m.expected_original();
    let h = Harness::with_policies(policies).await;
    h.send(&m).await;
    let received = h.journals(2).await;
    for r in &received {
        if r.rcpt_to == ["idn@intake.test"] {
            check_journal(
                r,
                "idn@intake.test",
                &Report {
                    sender: "a@sender.example",
                    subject: "",
                    message_id: "<idn@sender.example>",
                    recipients: &[
                        "jürgen@bücher.example",
                        "b@xn--bcher-kva.example",
                        "c@BÜCHER.example",
                    ],
                },
                &original,
            );
            assert!(String::from_utf8_lossy(&r.data)
                .contains("Content-Transfer-Encoding: quoted-printable\r\n"));
        } else {
            check_journal(
                r,
                GLOBAL,
                &Report {
                    sender: "a@sender.example",
                    subject: "",
                    message_id: "<idn@sender.example>",
                    recipients: &["d@buecher.example"],
                },
                &original,
            );
        }
    }
    assert_ne!(received[0].rcpt_to, received[1].rcpt_to);
    h.finish(2).await;
}

/// Expected: a quoted local part matches the policy written with the same quoted local
/// part (case-insensitively); the unquoted dotted variant is a different address.
#[tokio::test]
async fn quoted_local_part_recipient() {
    let policies = r#"  - name: quoted
    recipients: ['"John Doe"@example.com']
    connector: { custom: quoted@intake.test }
"#;
    let m = Raw::new("QQUOTE")
        .recipients(&[r#"<"john doe"@example.com>"#, "<john.doe@example.com>"])
        .header("Message-ID", "<quote@sender.example>");
    let original = m.expected_original();
    let h = Harness::with_policies(policies).await;
    h.send(&m).await;
    let received = h.journals(2).await;
    for r in &received {
        let (intake, rcpt) = if r.rcpt_to == ["quoted@intake.test"] {
            ("quoted@intake.test", r#""john doe"@example.com"#)
        } else {
            (GLOBAL, "john.doe@example.com")
        };
        check_journal(
            r,
            intake,
            &Report {
                sender: "a@sender.example",
                subject: "",
                message_id: "<quote@sender.example>",
                recipients: &[rcpt],
            },
            &original,
        );
    }
    assert_ne!(received[0].rcpt_to, received[1].rcpt_to);
    h.finish(2).await;
}

/// Expected: 1,000 recipients across 100 custom-intake policies give exactly 100
/// journals, one per intake, each listing exactly its 10 recipients in arrival order.
#[tokio::test]
async fn thousand_recipients_across_hundred_policies() {
    let mut policies = String::new();
    for p in 0..100 {
        policies.push_str(&format!(
            "  - name: p{p}\n    recipients: [\"d{p}.example\"]\n    connector: {{ custom: i{p}@intake.test }}\n"
        ));
    }
    // Interleaved: recipient n goes to policy n % 100.
    let rcpts: Vec<String> = (0..1000)
        .map(|n| format!("<r{n}@d{}.example>", n % 100))
        .collect();
    let m = Raw::new("QMANY")
        .recipients(&rcpts)
        .header("Message-ID", "<many@sender.example>");
    let original = m.expected_original();
    let h = Harness::with_policies(&policies).await;
    h.send(&m).await;
    let received = h.journals(100).await;
    let mut intakes: Vec<String> = Vec::new();
    for r in &received {
        let intake = r.rcpt_to[0].clone();
        let p: usize = intake
            .strip_prefix('i')
            .and_then(|s| s.strip_suffix("@intake.test"))
            .and_then(|s| s.parse().ok())
            .expect("custom intake");
        let expected: Vec<String> = (0..10)
            .map(|k| format!("r{}@d{p}.example", p + 100 * k))
            .collect();
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        check_journal(
            r,
            &intake,
            &Report {
                sender: "a@sender.example",
                subject: "",
                message_id: "<many@sender.example>",
                recipients: &expected,
            },
            &original,
        );
        intakes.push(intake);
    }
    intakes.sort();
    intakes.dedup();
    assert_eq!(intakes.len(), 100, "one journal per distinct intake");
    let lines = h.finish(100).await;
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("(queue ID QMANY)"))
            .count(),
        100
    );
}

// ---------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------

/// Expected: journaled; forged client-IP headers (any case) are left out of the attached
/// copy, and ours (the real client, 192.0.2.7) is its first header.
#[tokio::test]
async fn forged_client_ip_header_replaced_by_ours() {
    let m = Raw::new("QFORGE")
        .header("X-IronPort-RemoteIP", "6.6.6.6")
        .header("Subject", "forged")
        .header("x-ironport-remoteip", "7.7.7.7")
        .header("Message-ID", "<forge@sender.example>");
    let original = m.expected_original();
    let j = journaled_once(
        m,
        default_report("forged", "<forge@sender.example>"),
        &original,
        "<forge@sender.example>",
    )
    .await;
    assert!(j
        .original
        .starts_with(b"X-IronPort-RemoteIP: 192.0.2.7\r\nSubject: forged\r\n"));
    assert_eq!(
        count(&j.original.to_ascii_lowercase(), b"x-ironport-remoteip"),
        1
    );
}

/// Expected: journaled; a client-IP header smuggled in behind a line break in another
/// header's value stays folded into that value: ours is the only one in the copy.
#[tokio::test]
async fn client_ip_header_smuggled_behind_a_line_break() {
    let m = Raw::new("QSMUGGLE")
        .header("Subject", "x\nX-IronPort-RemoteIP: 6.6.6.6\n")
        .header("Message-ID", "<smuggle@sender.example>");
    let mut original = format!("X-IronPort-RemoteIP: {CLIENT_IP}\r\n").into_bytes();
    original.extend_from_slice(b"Subject: x\r\n X-IronPort-RemoteIP: 6.6.6.6\r\nMessage-ID: <smuggle@sender.example>\r\n\r\nbody\r\n");
    let j = journaled_once(
        m,
        default_report("x X-IronPort-RemoteIP: 6.6.6.6", "<smuggle@sender.example>"),
        &original,
        "<smuggle@sender.example>",
    )
    .await;
    let parsed = mail_parser::MessageParser::default()
        .parse(&j.original)
        .expect("original parses");
    assert_eq!(
        parsed
            .headers()
            .iter()
            .filter(|h| h.name().eq_ignore_ascii_case("X-IronPort-RemoteIP"))
            .count(),
        1
    );
}

/// Expected: journaled; a header with an empty value (nothing after the colon), an
/// empty Subject and an empty Message-ID are carried exactly; the report's fields are
/// empty and the log shows `Message-ID ''`.
#[tokio::test]
async fn headers_with_empty_values() {
    let m = Raw::new("QEMPTY")
        .header_exact("X-Empty", "")
        .header_exact("Subject", "")
        .header_exact("Message-ID", "")
        .header("X-Space-Only", "");
    let original = m.expected_original();
    assert!(original
        .ends_with(b"X-Empty:\r\nSubject:\r\nMessage-ID:\r\nX-Space-Only: \r\n\r\nbody\r\n"));
    let j = journaled_once(m, default_report("", ""), &original, "").await;
    assert_eq!(j.header("Subject"), b" ");
}

/// Expected: journaled; 10,000 headers all arrive in order in the attached copy.
#[tokio::test]
async fn ten_thousand_headers() {
    let mut m = Raw::new("QHDRS").header("Message-ID", "<hdrs@sender.example>");
    for i in 0..10_000 {
        m = m.header(&format!("X-H{i}"), format!("v{i}"));
    }
    let original = m.expected_original();
    let j = journaled_once(
        m,
        default_report("", "<hdrs@sender.example>"),
        &original,
        "<hdrs@sender.example>",
    )
    .await;
    assert_eq!(count(&j.original, b"\r\nX-H"), 10_000);
}

/// Expected: journaled; a Subject folded 2,000 times (libmilter's LF folding) keeps
/// every fold as CRLF in the journal's Subject and the copy, and is unfolded in the
/// report.
#[tokio::test]
async fn long_header_folded_many_times() {
    let words: Vec<String> = (0..2001).map(|i| format!("w{i}")).collect();
    let folded = words.join("\n\t");
    let m = Raw::new("QFOLD")
        .header("Subject", &folded)
        .header("Message-ID", "<fold@sender.example>");
    let original = m.expected_original();
    let unfolded = words.join(" ");
    let j = journaled_once(
        m,
        default_report(&unfolded, "<fold@sender.example>"),
        &original,
        "<fold@sender.example>",
    )
    .await;
    assert_eq!(
        j.header("Subject"),
        format!(" {}", words.join("\r\n\t")).as_bytes()
    );
}

/// Expected: journaled; a message with no header at all is attached as our client-IP
/// header, the blank line and the body.
#[tokio::test]
async fn no_headers_at_all() {
    let m = Raw::new("QNOHDR").body(&b"just a body\r\n"[..]);
    let original = m.expected_original();
    assert_eq!(
        original,
        b"X-IronPort-RemoteIP: 192.0.2.7\r\n\r\njust a body\r\n"
    );
    journaled_once(m, default_report("", ""), &original, "").await;
}

// ---------------------------------------------------------------------------------
// Body
// ---------------------------------------------------------------------------------

/// Expected: journaled; a message with an empty body (no body chunk at all) ends with
/// the blank line after its headers.
#[tokio::test]
async fn empty_body() {
    let m = Raw::new("QNOBODY")
        .header("Subject", "empty")
        .header("Message-ID", "<nobody@sender.example>")
        .body(Bytes::new());
    let original = m.expected_original();
    assert!(original.ends_with(b"<nobody@sender.example>\r\n\r\n"));
    journaled_once(
        m,
        default_report("empty", "<nobody@sender.example>"),
        &original,
        "<nobody@sender.example>",
    )
    .await;
}

/// Expected: journaled; a body whose last line has no CRLF is attached without one
/// (the CRLF before the closing delimiter belongs to the delimiter).
#[tokio::test]
async fn body_without_final_crlf() {
    let m = Raw::new("QNOEOL")
        .header("Message-ID", "<noeol@sender.example>")
        .body(&b"line\r\nlast line, no CRLF"[..]);
    let original = m.expected_original();
    journaled_once(
        m,
        default_report("", "<noeol@sender.example>"),
        &original,
        "<noeol@sender.example>",
    )
    .await;
}

/// Expected: journaled; bare LF line ends in the body (which an MTA should never pass)
/// reach the intake as CRLF — SMTP forbids bare LF (RFC 5321 §2.3.8) — also when a
/// chunk ends between CR and LF; everything else is unchanged.
#[tokio::test]
async fn bare_lf_body() {
    // The first chunk ends with the CR of the tail's CRLF, the second starts with LF.
    let body = across_chunks(b"one\ntwo\r\n.\nthree\n\n", b"\r\nend\n");
    let m = Raw::new("QBARELF")
        .header("Message-ID", "<barelf@sender.example>")
        .body(body.clone());
    let original = with_message_id_header("<barelf@sender.example>", &lf_to_crlf(&body));
    assert_eq!(original.len(), m.expected_original().len() + 5);
    journaled_once(
        m,
        default_report("", "<barelf@sender.example>"),
        &original,
        "<barelf@sender.example>",
    )
    .await;
}

/// Expected: journaled once; a bare CR in the body becomes CRLF, so that the
/// original cannot end the journal's data early on an intake that takes `<CR>.<CR>`
/// for its end (SMTP smuggling) and start a transaction of its own in the gateway's
/// session: the line that was `.` between two CRs is dot-stuffed, no bare CR or LF
/// reaches the intake (the fake intake refuses either), and exactly one message
/// arrives. Also when a chunk ends with a CR whose LF never comes.
#[tokio::test]
async fn bare_cr_body_cannot_smuggle_a_second_message() {
    let smuggled = b"one\r.\rMAIL FROM:<evil@attacker.example>\rRCPT TO:<victim@example.com>\rDATA\rinjected\r.\r";
    // The first chunk ends with the tail's first CR; the second starts with 'e'.
    let body = across_chunks(smuggled, b"\rend\r");
    let m = Raw::new("QBARECR")
        .header("Message-ID", "<barecr@sender.example>")
        .body(body.clone());
    let original = with_message_id_header("<barecr@sender.example>", &cr_to_crlf(&body));
    assert_eq!(original.len(), m.expected_original().len() + 9);
    journaled_once(
        m,
        default_report("", "<barecr@sender.example>"),
        &original,
        "<barecr@sender.example>",
    )
    .await;
}

/// `head`, filler lines up to 65,534 bytes, then `tail`: the milter protocol's first
/// body chunk (65,535 bytes) ends with the tail's first byte.
fn across_chunks(head: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut body = head.to_vec();
    while body.len() < 65_534 - 100 {
        body.extend_from_slice(&[b'x'; 98]);
        body.extend_from_slice(b"\r\n");
    }
    body.resize(65_534, b'x');
    body.extend_from_slice(tail);
    body
}

/// The attached original of a message with only a Message-ID header and `body`.
fn with_message_id_header(message_id: &str, body: &[u8]) -> Vec<u8> {
    let mut original =
        format!("X-IronPort-RemoteIP: {CLIENT_IP}\r\nMessage-ID: {message_id}\r\n\r\n")
            .into_bytes();
    original.extend_from_slice(body);
    original
}

/// Each CR not followed by LF made CRLF (the test's own reading of the rule).
fn cr_to_crlf(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for (i, &b) in value.iter().enumerate() {
        out.push(b);
        if b == b'\r' && value.get(i + 1) != Some(&b'\n') {
            out.push(b'\n');
        }
    }
    out
}

/// Expected: journaled; NUL bytes in the body are carried byte for byte. A header value
/// (or an envelope address) cannot hold a NUL: the milter protocol sends them as
/// NUL-terminated strings, so no MTA can pass one.
#[tokio::test]
async fn nul_in_header_value_cannot_be_sent_and_nul_in_body_is_carried() {
    assert!(CString::new(b"a\0b".to_vec()).is_err());
    let m = Raw::new("QNUL")
        .header("Message-ID", "<nul@sender.example>")
        .body(&b"a\0b\r\n\0\r\n\0\0\0 end\r\n"[..]);
    let original = m.expected_original();
    assert_eq!(count(&original, b"\0"), 5);
    journaled_once(
        m,
        default_report("", "<nul@sender.example>"),
        &original,
        "<nul@sender.example>",
    )
    .await;
}

/// Expected: journaled; a single line of 1 MiB (SMTP allows 998 octets) arrives broken
/// every 998 octets with CRLF and a space, as Postfix's smtp client breaks it
/// (`smtp_line_length_limit`): a strict intake refuses longer lines. Nothing else changes.
#[tokio::test]
async fn single_one_megabyte_line() {
    let mut body = vec![b'y'; 1 << 20];
    body.extend_from_slice(b"\r\n");
    let m = Raw::new("QLONG")
        .header("Message-ID", "<long@sender.example>")
        .body(body);
    let original = broken_at_998(&m.expected_original());
    assert_eq!(original.len(), m.expected_original().len() + 3 * 1051);
    journaled_once(
        m,
        default_report("", "<long@sender.example>"),
        &original,
        "<long@sender.example>",
    )
    .await;
}

/// Expected: journaled; a Subject of 10,000 octets on one line is reported whole (the
/// report goes quoted-printable to keep its lines short) and, like any line over 998
/// octets, is broken with CRLF and a space on the way to the intake.
#[tokio::test]
async fn subject_of_ten_thousand_octets_on_one_line() {
    let subject = "s".repeat(10_000);
    let m = Raw::new("QLONGSUBJ")
        .header("Subject", &subject)
        .header("Message-ID", "<longsubj@sender.example>");
    let original = broken_at_998(&m.expected_original());
    journaled_once(
        m,
        default_report(&subject, "<longsubj@sender.example>"),
        &original,
        "<longsubj@sender.example>",
    )
    .await;
}

/// What delivery does to a line over 998 octets: after 998 octets the line goes on in a
/// new line that starts with a space (and so on every 997 octets more).
fn broken_at_998(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 300);
    for line in data.split_inclusive(|&b| b == b'\n') {
        let (mut rest, end) = match line.strip_suffix(b"\r\n") {
            Some(content) => (content, &b"\r\n"[..]),
            None => (line, &b""[..]),
        };
        let n = rest.len().min(998);
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        while !rest.is_empty() {
            out.extend_from_slice(b"\r\n ");
            let n = rest.len().min(997);
            out.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        out.extend_from_slice(end);
    }
    out
}

/// Expected: journaled; lines that are a single `.`, `..`, or start with dots are
/// dot-stuffed on the wire and arrive at the intake intact.
#[tokio::test]
async fn dot_and_double_dot_lines() {
    let m = Raw::new("QDOTS")
        .header("Message-ID", "<dots@sender.example>")
        .body(&b".\r\n..\r\n...\r\n.x\r\n..y\r\nmid.dle\r\n.\r\n"[..]);
    let original = m.expected_original();
    journaled_once(
        m,
        default_report("", "<dots@sender.example>"),
        &original,
        "<dots@sender.example>",
    )
    .await;
}

/// Expected: journaled; the body holds, as closing delimiters, lines of the form of
/// our boundaries (the counted fallback's names, and random-looking ones): the journal
/// takes a boundary of 128 random bits that none of them is, it still parses, and the
/// original is intact. Sent twice, the same message gets two different boundaries, so
/// a sender cannot write its journal's boundary in advance.
#[tokio::test]
async fn body_containing_our_mime_boundary() {
    let mut body = Vec::new();
    for n in 0..1000u32 {
        body.extend_from_slice(format!("------=_TDC_n{n}--\r\n").as_bytes());
        body.extend_from_slice(format!("------=_TDC_{:032x}--\r\n", u128::from(n)).as_bytes());
    }
    let message = |queue_id| {
        Raw::new(queue_id)
            .header("Message-ID", "<bound@sender.example>")
            .body(body.clone())
    };
    let m = message("QBOUND");
    let original = m.expected_original();
    let h = Harness::start().await;
    h.send(&m).await;
    h.send(&message("QBOUND2")).await;
    let received = h.journals(2).await;
    let report = default_report("", "<bound@sender.example>");
    let first = check_journal(&received[0], GLOBAL, &report, &original);
    let second = check_journal(
        &received[1],
        GLOBAL,
        &report,
        &message("QBOUND2").expected_original(),
    );
    h.finish(2).await;
    for j in [&first, &second] {
        let bits = j.boundary.strip_prefix("----=_TDC_").expect("our prefix");
        assert!(
            bits.len() == 32 && bits.bytes().all(|c| c.is_ascii_hexdigit()),
            "{}",
            j.boundary
        );
        assert_eq!(count(&body, j.boundary.as_bytes()), 0);
    }
    assert_ne!(first.boundary, second.boundary);
}

/// Expected: not journaled: a body beyond journal.max_size (50 MiB by default) gets the
/// exact `not journaled: size … exceeds journal.max_size` warning; the original is
/// accepted.
#[tokio::test]
async fn fifty_megabyte_message_over_journal_max_size() {
    let body = Bytes::from(vec![b'z'; 50 * 1024 * 1024]);
    let m = Raw::new("QBIG")
        .header("Subject", "big")
        .header("Message-ID", "<big@sender.example>")
        .body(body);
    let size = "Subject: big\r\nMessage-ID: <big@sender.example>\r\n\r\n".len() + m.body.len();
    let h = Harness::start().await;
    h.send(&m).await;
    let line = format!("Warning: TDC: message with Message-ID '<big@sender.example>' (queue ID QBIG) not journaled: size {size} bytes exceeds journal.max_size 52428800 bytes");
    h.daemon.wait_for_log(&line, 1).await;
    // finish() allows no warning: check this one and the rest here.
    let lines = h.daemon.log.lines();
    assert_eq!(
        lines.iter().filter(|l| l.contains("not journaled")).count(),
        1
    );
    assert!(h.intake.messages().is_empty());
    let follow = Raw::new("QFOLLOW")
        .recipients(&["<after@example.com>"])
        .header("Subject", "follow-up")
        .header("Message-ID", "<follow@sender.example>")
        .body(&b"clean\r\n"[..]);
    h.send(&follow).await;
    let received = h.journals(1).await;
    check_journal(
        &received[0],
        GLOBAL,
        &Report {
            sender: "a@sender.example",
            subject: "follow-up",
            message_id: "<follow@sender.example>",
            recipients: &["after@example.com"],
        },
        &follow.expected_original(),
    );
    h.daemon
        .wait_for_log("Message finished MID 1 done", 1)
        .await;
    let lines = h.daemon.stop().await;
    assert_log_is_clean(&lines);
    assert!(lines.contains(&line));
    assert!(lines.contains(&enqueued(1, "<follow@sender.example>", GLOBAL, "QFOLLOW")));
    assert_eq!(lines.iter().filter(|l| l.contains(" enqueued ")).count(), 1);
    assert_eq!(h.intake.messages().len(), 1);
    h.intake.shutdown().await;
}

// ---------------------------------------------------------------------------------
// The milter conversation
// ---------------------------------------------------------------------------------

/// Expected: a message aborted after end of header (and after a body chunk) is not
/// journaled and logs nothing; the next message on the same milter connection is
/// journaled with nothing of the aborted one.
#[tokio::test]
async fn aborted_after_end_of_header_then_good_message_same_connection() {
    let h = Harness::start().await;
    let mut conn = h.open().await;
    let aborted = Raw::new("QABORT")
        .recipients(&["<aborted@example.com>"])
        .header("Subject", "aborted")
        .header("Message-ID", "<aborted@sender.example>");
    start_transaction(&mut conn, &aborted).await;
    conn.abort().await.expect("abort");
    // Once more, aborted after a body chunk.
    start_transaction(&mut conn, &aborted).await;
    no_reply(conn.body(&b"never finished\r\n"[..]).await.expect("body"));
    conn.abort().await.expect("abort");
    let good = Raw::new("QGOOD")
        .header("Subject", "good")
        .header("Message-ID", "<good@sender.example>");
    let status = transmit(&mut conn, &good).await;
    assert!(passes(&status), "{status:?}");
    conn.close().await.expect("close");
    let received = h.journals(1).await;
    check_journal(
        &received[0],
        GLOBAL,
        &default_report("good", "<good@sender.example>"),
        &good.expected_original(),
    );
    let lines = h.finish(1).await;
    assert!(lines.contains(&enqueued(1, "<good@sender.example>", GLOBAL, "QGOOD")));
    assert!(!lines.iter().any(|l| l.contains("aborted")), "{lines:#?}");
}

/// Expected: the MTA closes the milter connection in the middle of the body: nothing
/// is journaled or logged for that message, and the daemon keeps serving.
#[tokio::test]
async fn milter_connection_cut_mid_body() {
    let h = Harness::start().await;
    let mut conn = h.open().await;
    let cut = Raw::new("QCUT")
        .header("Subject", "cut")
        .header("Message-ID", "<cut@sender.example>");
    start_transaction(&mut conn, &cut).await;
    no_reply(conn.body(&b"half a bo"[..]).await.expect("body"));
    drop(conn);
    // A message on another connection while the cut one is being cleaned up.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let lines = h.finish(0).await;
    assert!(
        !lines.iter().any(|l| l.contains("cut@sender.example")),
        "{lines:#?}"
    );
}
