//! The journal copy, byte for byte (`docs/JOURNAL-FORMAT.md`): a short envelope report and the
//! unaltered original as a `message/rfc822` attachment.
//!
//! Pure: inputs in, bytes out. We write the MIME structure ourselves rather than with a
//! MIME builder because the layout is fixed to the byte: header order, the original's
//! Subject passed on exactly as it arrived (folding and encoded words included), and an
//! attachment that must never be re-encoded.

use time::format_description::well_known::Rfc2822;
use time::OffsetDateTime;

/// The longest line RFC 5322 allows, without its CRLF.
const MAX_LINE_OCTETS: usize = 998;

/// Which journal layout to write. Only the Exchange-style envelope journal exists
/// today; the setting keeps another layout addable without touching the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JournalFormat {
    #[default]
    EnvelopeReport,
}

/// The original message as the milter saw it.
#[derive(Debug, Clone, Copy)]
pub struct Original<'a> {
    /// Envelope MAIL FROM without angle brackets; empty for the null sender.
    pub sender: &'a str,
    /// The Subject header's raw value (after the colon, CRLF line ends), if any.
    pub subject: Option<&'a [u8]>,
    /// The Message-ID header's value, trimmed, if any.
    pub message_id: Option<&'a str>,
    /// Header lines tdc-milter puts first in the attached original (the client-IP
    /// header), CRLF line ends; empty for none. Apart from `bytes` so that the
    /// original, up to `journal.max_size`, is copied once, into the journal.
    pub added_headers: &'a [u8],
    /// The headers and body exactly as the MTA passed them, CRLF line ends.
    pub bytes: &'a [u8],
}

/// Everything about the journal itself.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// `From:` of the journal (the journal sender).
    pub from: &'a str,
    /// The intake address (`To:`).
    pub to: &'a str,
    /// The envelope recipients that resolved to this intake.
    pub recipients: &'a [String],
    /// The journal's own Message-ID, with angle brackets.
    pub message_id: &'a str,
    pub date: OffsetDateTime,
}

/// A built journal copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journal {
    pub bytes: Vec<u8>,
    /// Any byte ≥ 0x80: the intake must offer 8BITMIME and gets `BODY=8BITMIME`.
    pub eight_bit: bool,
}

/// The header that marks a journal (its top-level envelope report marker), also how a
/// journal that comes back through the gateway is known (docs/LOGGING.md, "loop").
pub const MARKER_HEADER: &str = "X-MS-Journal-Report";

/// Whether `id` has the form [`journal_message_id`] gives (`<millis.mid.tdc@domain>`),
/// of this gateway or of any other running tdc-milter.
pub fn is_journal_message_id(id: &str) -> bool {
    let Some(inner) = id
        .trim()
        .strip_prefix('<')
        .and_then(|i| i.strip_suffix('>'))
    else {
        return false;
    };
    let Some((local, domain)) = inner.split_once('@') else {
        return false;
    };
    let mut parts = local.split('.');
    let digits =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    digits(parts.next())
        && digits(parts.next())
        && parts.next() == Some("tdc")
        && parts.next().is_none()
        && !domain.is_empty()
}

/// The `Message-ID` of a journal: unique per MID and time, in the sender's domain.
pub fn journal_message_id(mid: u64, sender: &str, now: OffsetDateTime) -> String {
    let domain = sender.rsplit_once('@').map_or("localhost", |(_, d)| d);
    format!(
        "<{}.{mid}.tdc@{domain}>",
        now.unix_timestamp_nanos() / 1_000_000
    )
}

/// Builds the journal bytes (CRLF everywhere).
pub fn build(format: JournalFormat, envelope: &Envelope<'_>, original: &Original<'_>) -> Journal {
    match format {
        JournalFormat::EnvelopeReport => build_envelope_report(envelope, original),
    }
}

fn build_envelope_report(envelope: &Envelope<'_>, original: &Original<'_>) -> Journal {
    let report = report_text(envelope, original);
    // 7bit allows no line over 998 octets (RFC 2045 §2.7, RFC 5322 §2.1.1): a long
    // Subject or address goes quoted-printable, whose soft breaks keep the lines short,
    // rather than being broken on the wire into a field the report does not have.
    let short_lines = report
        .split("\r\n")
        .all(|line| line.len() <= MAX_LINE_OCTETS);
    let (report_cte, report_body) = if report.is_ascii() && short_lines {
        ("7bit", report.into_bytes())
    } else {
        ("quoted-printable", quoted_printable_lines(&report))
    };
    // Added headers end with CRLF and a boundary has neither: no match can straddle
    // the two parts of the original.
    let boundary = boundary_for(
        &[original.added_headers, original.bytes, &report_body],
        &mut os_random,
    );
    let attachment_cte = if original.added_headers.is_ascii() && original.bytes.is_ascii() {
        "7bit"
    } else {
        "8bit"
    };

    let mut out = Vec::with_capacity(
        original.added_headers.len() + original.bytes.len() + report_body.len() + 1024,
    );
    push_line(&mut out, &format!("From: <{}>", envelope.from));
    push_line(&mut out, &format!("To: <{}>", envelope.to));
    out.extend_from_slice(b"Subject:");
    if let Some(subject) = original.subject {
        // The value keeps its own leading space and folding; add one only if it has none.
        if !subject.starts_with(b" ") && !subject.starts_with(b"\t") {
            out.push(b' ');
        }
        push_folded(&mut out, trim_trailing_crlf(subject));
    }
    out.extend_from_slice(b"\r\n");
    push_line(
        &mut out,
        &format!(
            "Date: {}",
            envelope
                .date
                .format(&Rfc2822)
                .unwrap_or_else(|_| envelope.date.to_string())
        ),
    );
    push_line(&mut out, &format!("Message-ID: {}", envelope.message_id));
    push_line(&mut out, "MIME-Version: 1.0");
    push_line(
        &mut out,
        &format!("Content-Type: multipart/mixed; boundary=\"{boundary}\""),
    );
    push_line(&mut out, "X-MS-Journal-Report:");
    push_line(&mut out, "");

    push_line(&mut out, &format!("--{boundary}"));
    push_line(&mut out, "Content-Type: text/plain; charset=\"utf-8\"");
    push_line(
        &mut out,
        &format!("Content-Transfer-Encoding: {report_cte}"),
    );
    push_line(&mut out, "");
    out.extend_from_slice(&report_body);
    push_line(&mut out, "");

    push_line(&mut out, &format!("--{boundary}"));
    push_line(&mut out, "Content-Type: message/rfc822");
    push_line(&mut out, "Content-Disposition: attachment");
    push_line(
        &mut out,
        &format!("Content-Transfer-Encoding: {attachment_cte}"),
    );
    push_line(&mut out, "");
    // The original was checked for 8-bit octets above; what follows it is ASCII, so
    // only what precedes it (the Subject and addresses may be 8-bit) is checked here.
    let eight_bit = attachment_cte == "8bit" || !out.is_ascii();
    out.extend_from_slice(original.added_headers);
    out.extend_from_slice(original.bytes);
    // The CRLF before a boundary belongs to the boundary (RFC 2046 §5.1.1), so the
    // original keeps its own final line end.
    push_line(&mut out, "");
    push_line(&mut out, &format!("--{boundary}--"));

    Journal {
        bytes: out,
        eight_bit,
    }
}

/// The envelope report (Exchange "Envelope-Part"), one field per line, ending in CRLF.
fn report_text(envelope: &Envelope<'_>, original: &Original<'_>) -> String {
    let mut text = String::new();
    let sender = if original.sender.is_empty() {
        "<>".to_string()
    } else {
        controls_to_spaces(original.sender)
    };
    text.push_str(&format!("Sender: {sender}\r\n"));
    let subject = original.subject.map(decode_subject).unwrap_or_default();
    text.push_str(&format!("Subject: {subject}\r\n"));
    let message_id = original
        .message_id
        .map(controls_to_spaces)
        .unwrap_or_default();
    text.push_str(&format!("Message-Id: {message_id}\r\n"));
    for recipient in envelope.recipients {
        text.push_str(&format!("Recipient: {}\r\n", controls_to_spaces(recipient)));
    }
    text
}

/// The Subject as a reader sees it: unfolded and with encoded words decoded. Control
/// characters (which an encoded word can smuggle in) become spaces so the report keeps
/// one field per line.
fn decode_subject(raw: &[u8]) -> String {
    let mut header = Vec::with_capacity(raw.len() + 16);
    header.extend_from_slice(b"Subject:");
    header.extend_from_slice(trim_trailing_crlf(raw));
    header.extend_from_slice(b"\r\n\r\n");
    let decoded = mail_parser::MessageParser::default()
        .parse_headers(&header)
        .and_then(|m| m.subject().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(raw).into_owned());
    controls_to_spaces(decoded.trim())
}

fn controls_to_spaces(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Quoted-printable, encoding each CRLF-terminated line on its own so the line ends stay
/// hard line breaks.
fn quoted_printable_lines(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() * 2);
    for line in text.split_terminator("\r\n") {
        out.extend_from_slice(&quoted_printable::encode(line.as_bytes()));
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// How every boundary of ours begins.
const BOUNDARY_PREFIX: &str = "----=_TDC_";
/// Random boundaries tried before the counted fallback.
const RANDOM_BOUNDARY_ATTEMPTS: u32 = 16;

/// A boundary that occurs in none of the parts (RFC 2046 §5.1.1): 128 random bits
/// from the operating system, so that a sender cannot write the boundary of its own
/// journal into the original in advance and make the search for a free one long. The
/// search is capped: each try scans the whole original. Only if the random source
/// fails, or keeps giving boundaries that occur (which it cannot, by chance), does a
/// counted search take over; it ends, since the parts are finite.
fn boundary_for(parts: &[&[u8]], random: &mut dyn FnMut() -> Option<u128>) -> String {
    let free = |candidate: &str| !parts.iter().any(|p| contains(p, candidate.as_bytes()));
    for _ in 0..RANDOM_BOUNDARY_ATTEMPTS {
        let Some(bits) = random() else {
            break;
        };
        let candidate = format!("{BOUNDARY_PREFIX}{bits:032x}");
        if free(&candidate) {
            return candidate;
        }
    }
    let mut attempt: u64 = 0;
    loop {
        let candidate = format!("{BOUNDARY_PREFIX}n{attempt}");
        if free(&candidate) {
            return candidate;
        }
        attempt += 1;
    }
}

fn os_random() -> Option<u128> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    Some(u128::from_le_bytes(bytes))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

fn trim_trailing_crlf(value: &[u8]) -> &[u8] {
    let mut v = value;
    while let Some(rest) = v.strip_suffix(b"\n") {
        v = rest.strip_suffix(b"\r").unwrap_or(rest);
    }
    v
}

/// Appends a header value keeping its folding, but only as folding: every line break
/// (CRLF, or a bare CR or LF, which the MTA should not pass but a hostile sender may
/// try) becomes CRLF followed by whitespace, so the value can neither end the header
/// section nor start a header of its own. Used for the journal's Subject and for every
/// header of the attached original.
pub(crate) fn push_folded(out: &mut Vec<u8>, value: &[u8]) {
    let mut i = 0;
    while i < value.len() {
        match value[i] {
            b'\r' | b'\n' => {
                i += if value[i] == b'\r' && value.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                out.extend_from_slice(b"\r\n");
                if !matches!(value.get(i), Some(b' ' | b'\t')) {
                    out.push(b' ');
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
}

fn push_line(out: &mut Vec<u8>, line: &str) {
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MimeHeaders;

    fn date() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_795_000_000).expect("valid")
    }

    fn recipients(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    const ORIGINAL: &[u8] = b"X-IronPort-RemoteIP: 192.0.2.7\r\nFrom: a@example.org\r\nSubject: hello\r\n there\r\nMessage-ID: <m1@example.org>\r\n\r\nbody line\r\n";

    fn build_plain(original: &[u8], subject: Option<&[u8]>, rcpts: &[String]) -> Journal {
        build_with_added(b"", original, subject, rcpts)
    }

    fn build_with_added(
        added_headers: &[u8],
        original: &[u8],
        subject: Option<&[u8]>,
        rcpts: &[String],
    ) -> Journal {
        build(
            JournalFormat::EnvelopeReport,
            &Envelope {
                from: "tdc@gw.example.org",
                to: "5f1c2e@intake.example.net",
                recipients: rcpts,
                message_id: "<1.1.tdc@gw.example.org>",
                date: date(),
            },
            &Original {
                sender: "a@example.org",
                subject,
                message_id: Some("<m1@example.org>"),
                added_headers,
                bytes: original,
            },
        )
    }

    #[test]
    fn added_headers_are_the_first_lines_of_the_attached_original() {
        let rcpts = recipients(&["b@example.com"]);
        let (ip_line, rest) = ORIGINAL.split_at(
            ORIGINAL
                .windows(2)
                .position(|w| w == b"\r\n")
                .expect("a line")
                + 2,
        );
        let joined = build_plain(ORIGINAL, Some(b" hello"), &rcpts);
        let split = build_with_added(ip_line, rest, Some(b" hello"), &rcpts);
        assert_eq!(ip_line, b"X-IronPort-RemoteIP: 192.0.2.7\r\n");
        // Byte for byte, once each has the same (random) boundary.
        let same_boundary = String::from_utf8_lossy(&split.bytes)
            .replace(&boundary_of(&split), &boundary_of(&joined));
        assert_eq!(same_boundary.as_bytes(), joined.bytes.as_slice());
        assert_eq!(split.eight_bit, joined.eight_bit);
    }

    #[test]
    fn layout_is_byte_exact() {
        let rcpts = recipients(&["b@example.com", "c@example.com"]);
        let j = build_plain(ORIGINAL, Some(b" hello\r\n there"), &rcpts);
        let b = boundary_of(&j);
        let expected = format!(
            "From: <tdc@gw.example.org>\r\nTo: <5f1c2e@intake.example.net>\r\nSubject: hello\r\n there\r\nDate: Wed, 18 Nov 2026 11:06:40 +0000\r\nMessage-ID: <1.1.tdc@gw.example.org>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{b}\"\r\nX-MS-Journal-Report:\r\n\r\n--{b}\r\nContent-Type: text/plain; charset=\"utf-8\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\nSender: a@example.org\r\nSubject: hello there\r\nMessage-Id: <m1@example.org>\r\nRecipient: b@example.com\r\nRecipient: c@example.com\r\n\r\n--{b}\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment\r\nContent-Transfer-Encoding: 7bit\r\n\r\n{}\r\n--{b}--\r\n",
            String::from_utf8_lossy(ORIGINAL)
        );
        assert_eq!(String::from_utf8_lossy(&j.bytes), expected);
        assert!(!j.eight_bit);
    }

    #[test]
    fn independent_parser_sees_report_and_unaltered_original() {
        let original: &[u8] = b"X-IronPort-RemoteIP: 192.0.2.7\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n\r\n.leading dot\r\n8-bit \xe9\xff\r\n";
        let rcpts = recipients(&["b@example.com"]);
        let j = build_plain(original, Some(b" =?utf-8?q?Gr=C3=BC=C3=9Fe?="), &rcpts);
        assert!(j.eight_bit);
        let msg = mail_parser::MessageParser::default()
            .parse(&j.bytes)
            .expect("journal parses");
        assert_eq!(msg.parts.len(), 3, "root, report, attachment");
        let report = msg.body_text(0).expect("report part");
        assert!(report.contains("Subject: Grüße\r\n") || report.contains("Subject: Grüße\n"));
        assert!(report.contains("Recipient: b@example.com"));
        let attached = msg.attachment(0).expect("attachment");
        assert_eq!(
            attached.content_type().map(|c| (c.ctype(), c.subtype())),
            Some(("message", Some("rfc822")))
        );
        // The attachment's raw bytes are exactly the original.
        let raw = &j.bytes[attached.raw_body_offset() as usize..attached.raw_end_offset() as usize];
        assert_eq!(raw, original);
        assert!(String::from_utf8_lossy(&j.bytes).contains("Content-Transfer-Encoding: 8bit\r\n"));
    }

    #[test]
    fn non_ascii_report_is_quoted_printable() {
        let rcpts = recipients(&["jürgen@bücher.example"]);
        let j = build_plain(ORIGINAL, Some(b" hello"), &rcpts);
        let text = String::from_utf8_lossy(&j.bytes);
        assert!(text.contains("Content-Transfer-Encoding: quoted-printable\r\n"));
        assert!(text.contains("Recipient: j=C3=BCrgen@b=C3=BCcher.example\r\n"));
        assert!(!j.eight_bit, "the report alone stays 7-bit");
    }

    #[test]
    fn missing_subject_and_message_id_leave_empty_fields() {
        let rcpts = recipients(&["b@example.com"]);
        let j = build(
            JournalFormat::EnvelopeReport,
            &Envelope {
                from: "tdc@gw",
                to: "i@x",
                recipients: &rcpts,
                message_id: "<1@gw>",
                date: date(),
            },
            &Original {
                sender: "",
                subject: None,
                message_id: None,
                added_headers: b"",
                bytes: b"X-IronPort-RemoteIP: 192.0.2.7\r\n\r\n",
            },
        );
        let text = String::from_utf8_lossy(&j.bytes);
        assert!(text.contains("\r\nSubject:\r\nDate:"));
        assert!(text
            .contains("Sender: <>\r\nSubject: \r\nMessage-Id: \r\nRecipient: b@example.com\r\n"));
    }

    #[test]
    fn encoded_control_characters_cannot_forge_report_lines() {
        let rcpts = recipients(&["b@example.com"]);
        let j = build_plain(
            ORIGINAL,
            Some(b" =?utf-8?q?hi=0D=0ARecipient:_evil@x?="),
            &rcpts,
        );
        let text = String::from_utf8_lossy(&j.bytes);
        assert!(
            text.contains("Subject: hi  Recipient: evil@x\r\n"),
            "{text}"
        );
        assert_eq!(text.matches("\r\nRecipient:").count(), 1);
    }

    /// The boundary a journal declares, checked to have the random form.
    fn boundary_of(j: &Journal) -> String {
        let text = String::from_utf8_lossy(&j.bytes);
        let b = text
            .split("boundary=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a boundary")
            .to_string();
        let bits = b.strip_prefix(BOUNDARY_PREFIX).expect("our prefix");
        assert!(
            bits.len() == 32 && bits.bytes().all(|c| c.is_ascii_hexdigit()),
            "{b}"
        );
        b
    }

    #[test]
    fn boundaries_are_random() {
        let rcpts = recipients(&["b@example.com"]);
        let first = boundary_of(&build_plain(ORIGINAL, None, &rcpts));
        let second = boundary_of(&build_plain(ORIGINAL, None, &rcpts));
        assert_ne!(
            first, second,
            "the same message, the same time, another boundary"
        );
    }

    #[test]
    fn boundary_never_occurs_in_the_parts() {
        let taken = format!("{BOUNDARY_PREFIX}{:032x}", 7u128);
        let hostile = format!("X-IronPort-RemoteIP: 192.0.2.7\r\n\r\n--{taken}--\r\n");
        let mut script = [7u128, 7, 9].into_iter();
        let chosen = boundary_for(&[hostile.as_bytes()], &mut || script.next());
        assert_eq!(chosen, format!("{BOUNDARY_PREFIX}{:032x}", 9u128));

        // A random source that fails, or that keeps repeating a boundary that occurs:
        // the counted search, after a bounded number of tries.
        let mut calls = 0;
        let stuck = boundary_for(&[hostile.as_bytes()], &mut || {
            calls += 1;
            Some(7)
        });
        assert_eq!(calls, RANDOM_BOUNDARY_ATTEMPTS);
        assert_eq!(stuck, format!("{BOUNDARY_PREFIX}n0"));
        let counted = format!("--{BOUNDARY_PREFIX}n0\r\n--{BOUNDARY_PREFIX}n1\r\n");
        let chosen = boundary_for(&[counted.as_bytes()], &mut || None);
        assert_eq!(chosen, format!("{BOUNDARY_PREFIX}n2"));

        // And through build: the attachment keeps the hostile original intact.
        let rcpts = recipients(&["b@example.com"]);
        let j = build_plain(hostile.as_bytes(), None, &rcpts);
        assert_ne!(boundary_of(&j), taken);
        let msg = mail_parser::MessageParser::default()
            .parse(&j.bytes)
            .expect("parses");
        let attached = msg.attachment(0).expect("attachment");
        let raw = &j.bytes[attached.raw_body_offset() as usize..attached.raw_end_offset() as usize];
        assert_eq!(raw, hostile.as_bytes());
    }

    #[test]
    fn a_report_line_over_998_octets_is_quoted_printable() {
        let rcpts = recipients(&["b@example.com"]);
        let subject = format!(" {}", "w ".repeat(600));
        let j = build_plain(ORIGINAL, Some(subject.as_bytes()), &rcpts);
        let text = String::from_utf8_lossy(&j.bytes);
        assert!(text.contains("Content-Transfer-Encoding: quoted-printable\r\n"));
        let msg = mail_parser::MessageParser::default()
            .parse(&j.bytes)
            .expect("journal parses");
        let report = msg.body_text(0).expect("report part");
        assert!(report.contains(&format!("Subject: {}\r\n", subject.trim())));
        let report_start = text.find(&format!("{MARKER_HEADER}:")).expect("report");
        let attachment_start = text
            .find("Content-Type: message/rfc822")
            .expect("attachment");
        assert!(text[report_start..attachment_start]
            .lines()
            .all(|l| l.len() <= 998));
        // Short ASCII reports stay 7bit.
        let j = build_plain(ORIGINAL, Some(b" hello"), &rcpts);
        assert!(String::from_utf8_lossy(&j.bytes)
            .contains("Content-Transfer-Encoding: 7bit\r\n\r\nSender:"));
    }

    #[test]
    fn message_id_uses_the_sender_domain() {
        let id = journal_message_id(42, "tdc@gw.example.org", date());
        assert_eq!(id, "<1795000000000.42.tdc@gw.example.org>");
        assert!(is_journal_message_id(&id));
        for other in [
            "<1.2.tdc@>",
            "<1.tdc@x>",
            "<a.2.tdc@x>",
            "<1.2.tdc.x@y>",
            "1.2.tdc@x",
            "<m1@example.org>",
        ] {
            assert!(!is_journal_message_id(other), "{other}");
        }
    }

    #[test]
    fn a_subject_cannot_add_headers_or_end_the_header_section() {
        let mut out = Vec::new();
        push_folded(&mut out, b" a\r\n b\nX-Injected: 1\rY: 2\r\n\r\nbody\n\tc");
        assert_eq!(
            out,
            b" a\r\n b\r\n X-Injected: 1\r\n Y: 2\r\n \r\n body\r\n\tc".to_vec()
        );
    }
}
