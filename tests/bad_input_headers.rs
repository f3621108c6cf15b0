//! The bad-input catalogue: malformed MIME, Message-IDs, subjects and other headers,
//! each sent to the real daemon in-process.
//! What every case asserts is in `tests/common/catalogue.rs`.

mod common;

use common::catalogue::*;

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
