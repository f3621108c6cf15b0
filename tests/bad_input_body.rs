//! The bad-input catalogue: broken bodies and milter conversations, each sent to the
//! real daemon in-process.
//! What every case asserts is in `tests/common/catalogue.rs`.

mod common;

use std::ffi::CString;
use std::time::Duration;

use bytes::Bytes;
use common::catalogue::*;

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
