//! The journal builder. Input: a Subject, a Message-ID and a message body from the
//! fuzzer. Properties: the journal parses as a two-part multipart/mixed whose header
//! section is exactly ours (nothing from the original can add a header), and the
//! attached part is the client-IP line and the original, byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mail_parser::MessageParser;
use tdc_milter::journal::{build, Envelope, JournalFormat, Original};

/// The MTA hands over CRLF lines; a header value never holds NUL (milter strings).
fn crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 16);
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' && (i == 0 || bytes[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut fields = data.splitn(3, |&b| b == 0);
    let subject = fields.next().unwrap_or_default();
    let message_id = fields.next().unwrap_or_default();
    let body = crlf(fields.next().unwrap_or_default());
    let message_id = String::from_utf8_lossy(message_id).into_owned();
    let subject = [b" ".as_slice(), subject].concat();

    // The client-IP line goes beside the original, as the milter passes it; the
    // attachment must be the two joined.
    let added_headers = b"X-IronPort-RemoteIP: 192.0.2.1\r\n".as_slice();
    let mut original = b"Subject:".to_vec();
    original.extend_from_slice(&subject);
    original.extend_from_slice(b"\r\nMessage-ID: ");
    original.extend_from_slice(message_id.as_bytes());
    original.extend_from_slice(b"\r\n\r\n");
    original.extend_from_slice(&body);

    let recipients = vec!["b@example.com".to_string()];
    let envelope = Envelope {
        from: "tdc@gw.example.org",
        to: "journal@intake.example.net",
        recipients: &recipients,
        message_id: "<1.1.tdc@gw.example.org>",
        date: time::OffsetDateTime::UNIX_EPOCH,
    };
    let journal = build(
        JournalFormat::EnvelopeReport,
        &envelope,
        &Original {
            sender: "a@example.org",
            subject: Some(&subject),
            message_id: Some(message_id.trim()),
            added_headers,
            bytes: &original,
        },
    );
    let bytes = &journal.bytes;
    assert_eq!(journal.eight_bit, !bytes.is_ascii());

    // The header section: our eight headers, each starting a line, nothing else.
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header section");
    let names: Vec<&[u8]> = bytes[..end + 2]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty() && l[0] != b' ' && l[0] != b'\t')
        .map(|l| l.split(|&b| b == b':').next().unwrap_or_default())
        .collect();
    let expected: [&[u8]; 8] = [
        b"From",
        b"To",
        b"Subject",
        b"Date",
        b"Message-ID",
        b"MIME-Version",
        b"Content-Type",
        b"X-MS-Journal-Report",
    ];
    assert_eq!(
        names,
        expected,
        "{:?}",
        String::from_utf8_lossy(&bytes[..end])
    );
    assert!(
        !bytes[..end].contains(&b'\r')
            || bytes[..end]
                .windows(2)
                .filter(|w| w[0] == b'\r')
                .all(|w| w[1] == b'\n'),
        "a bare CR in the journal's header section"
    );

    // The attachment is the original, byte for byte, and the boundary occurs only
    // where we put it.
    let header = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let boundary = header
        .split("\r\nContent-Type: multipart/mixed; boundary=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a boundary");
    let open = format!("--{boundary}\r\nContent-Type: message/rfc822\r\n");
    let start = bytes
        .windows(open.len())
        .position(|w| w == open.as_bytes())
        .expect("the attachment part");
    let after_headers = bytes[start..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("the attachment's headers")
        + start
        + 4;
    let close = format!("\r\n--{boundary}--\r\n");
    assert!(bytes.ends_with(close.as_bytes()));
    assert_eq!(
        &bytes[after_headers..bytes.len() - close.len()],
        &[added_headers, &original[..]].concat()[..]
    );

    let parsed = MessageParser::default()
        .parse(bytes)
        .expect("the journal parses");
    assert_eq!(parsed.parts.len(), 3, "multipart, report, original");
});
