//! The SMTP conversation as lines and replies over any stream: reading a reply within
//! limits, parsing it with smtp-proto, and what EHLO offered.

use smtp_proto::response::parser::ResponseReceiver;
use smtp_proto::{EhloResponse, EXT_8BIT_MIME, EXT_PIPELINING, EXT_SIZE, EXT_START_TLS};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use super::super::error::{Kind, Reply};

/// Longest reply line we accept (RFC 5321 §4.5.3.1.5 allows 512; servers exceed it).
const MAX_LINE: usize = 4096;
/// Most lines in one reply (a long EHLO list is about 20).
const MAX_REPLY_LINES: usize = 128;

/// What the server offered in EHLO (after TLS).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub starttls: bool,
    pub pipelining: bool,
    pub eight_bit_mime: bool,
    /// `SIZE` was offered; the limit if the server named one (0 = no limit stated).
    pub size: Option<usize>,
}

/// A line-oriented SMTP connection over any stream.
pub(super) struct Wire<S> {
    pub(super) io: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    pub(super) fn new(stream: S) -> Wire<S> {
        Wire {
            io: BufReader::new(stream),
        }
    }

    pub(super) async fn write(&mut self, bytes: &[u8]) -> Result<(), Kind> {
        self.io.get_mut().write_all(bytes).await.map_err(io_kind)?;
        self.io.get_mut().flush().await.map_err(io_kind)
    }

    /// Appends one line to `reply` (the lines of the reply read so far). The limit is
    /// on this line alone, wherever the segments cut it.
    pub(super) async fn read_line(&mut self, reply: &mut Vec<u8>) -> Result<(), Kind> {
        let start = reply.len();
        loop {
            let buf = self.io.fill_buf().await.map_err(io_kind)?;
            if buf.is_empty() {
                return Err(Kind::Network("connection closed by the server".into()));
            }
            let (taken, complete) = match buf.iter().position(|&b| b == b'\n') {
                Some(pos) => (pos + 1, true),
                None => (buf.len(), false),
            };
            reply.extend_from_slice(&buf[..taken]);
            self.io.consume(taken);
            if reply.len() - start > MAX_LINE {
                return Err(Kind::Protocol("reply line too long".into()));
            }
            if complete {
                return Ok(());
            }
        }
    }

    /// Reads one complete (possibly multi-line) reply; returns its raw bytes.
    pub(super) async fn read_raw_reply(&mut self) -> Result<Vec<u8>, Kind> {
        let mut raw = Vec::with_capacity(128);
        for _ in 0..MAX_REPLY_LINES {
            let start = raw.len();
            self.read_line(&mut raw).await?;
            let line = &raw[start..];
            // RFC 5321 §4.2: the first digit is 2 to 5, the second 0 to 5.
            if line.len() < 4
                || !(b'2'..=b'5').contains(&line[0])
                || !(b'0'..=b'5').contains(&line[1])
                || !line[2].is_ascii_digit()
            {
                return Err(Kind::Protocol(format!(
                    "malformed reply line '{}'",
                    crate::tdclog::sanitize_bytes(line.trim_ascii_end())
                )));
            }
            if start > 0 && line[..3] != raw[..3] {
                return Err(Kind::Protocol("reply lines with different codes".into()));
            }
            if line[3] != b'-' {
                return Ok(raw);
            }
        }
        Err(Kind::Protocol("reply has too many lines".into()))
    }

    pub(super) async fn read_reply(&mut self) -> Result<Reply, Kind> {
        let raw = self.read_raw_reply().await?;
        parse_reply(&raw)
    }

    /// Sends `EHLO name` and returns what the server offers.
    pub(super) async fn ehlo(&mut self, command: &str) -> Result<Capabilities, Kind> {
        self.write(command.as_bytes()).await?;
        let raw = self.read_raw_reply().await?;
        let reply = parse_reply(&raw)?;
        if !positive(reply.code) {
            return Err(Kind::Reply(reply));
        }
        Ok(parse_ehlo(&raw))
    }
}

/// Reads every reply in `input` the way a session reads a server's replies (line
/// and line-count limits, code checks, smtp-proto parsing, EHLO capabilities) until
/// the input ends or a reply is refused, which ends the list. Whatever a server
/// sends ends in a reply or a [`Kind`], never a panic: the fuzz target
/// `smtp_replies` holds it to that.
pub async fn read_replies(input: &[u8]) -> Vec<Result<(Reply, Capabilities), Kind>> {
    let mut wire = Wire::new(tokio::io::join(input, tokio::io::sink()));
    let mut out = Vec::new();
    loop {
        match wire.read_raw_reply().await {
            Ok(raw) => match parse_reply(&raw) {
                Ok(reply) => out.push(Ok((reply, parse_ehlo(&raw)))),
                Err(kind) => {
                    out.push(Err(kind));
                    return out;
                }
            },
            Err(Kind::Network(_)) => return out, // the input ended
            Err(kind) => {
                out.push(Err(kind));
                return out;
            }
        }
    }
}

/// Parses one complete reply with smtp-proto.
fn parse_reply(raw: &[u8]) -> Result<Reply, Kind> {
    let raw = within_parser_limit(raw);
    let parsed = ResponseReceiver::default()
        .parse(&mut raw.iter())
        .map_err(|e| Kind::Protocol(format!("unparsable reply: {e:?}")))?;
    let enhanced = (parsed.esc != [0, 0, 0]).then_some(parsed.esc);
    Ok(Reply {
        code: parsed.code,
        enhanced,
        text: join_reply_lines(&parsed.message),
    })
}

/// smtp-proto refuses a reply longer than 4,096 bytes in all; we take up to
/// [`MAX_REPLY_LINES`] lines of [`MAX_LINE`]. A longer reply is parsed from its
/// first lines and its last one (which ends it): the code is on every line, only
/// text in the middle is left out. The lines come checked by `read_raw_reply`.
fn within_parser_limit(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if raw.len() <= smtp_proto::response::parser::MAX_RESPONSE_LENGTH {
        return std::borrow::Cow::Borrowed(raw);
    }
    let lines: Vec<&[u8]> = raw.split_inclusive(|&b| b == b'\n').collect();
    let Some((last, first)) = lines.split_last() else {
        return std::borrow::Cow::Borrowed(raw);
    };
    let room = smtp_proto::response::parser::MAX_RESPONSE_LENGTH.saturating_sub(last.len());
    let mut out = Vec::with_capacity(smtp_proto::response::parser::MAX_RESPONSE_LENGTH);
    for line in first {
        if out.len() + line.len() > room {
            break;
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(last);
    std::borrow::Cow::Owned(out)
}

fn parse_ehlo(raw: &[u8]) -> Capabilities {
    let raw = within_parser_limit(raw);
    match EhloResponse::parse(&mut raw.iter()) {
        Ok(ehlo) => Capabilities {
            starttls: ehlo.has_capability(EXT_START_TLS),
            pipelining: ehlo.has_capability(EXT_PIPELINING),
            eight_bit_mime: ehlo.has_capability(EXT_8BIT_MIME),
            size: ehlo.has_capability(EXT_SIZE).then_some(ehlo.size),
        },
        Err(_) => Capabilities::default(),
    }
}

fn join_reply_lines(text: &str) -> String {
    text.split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn io_kind(e: std::io::Error) -> Kind {
    use std::io::ErrorKind as E;
    let what = match e.kind() {
        E::ConnectionRefused => "connection refused".to_string(),
        E::ConnectionReset => "connection reset by the server".to_string(),
        E::UnexpectedEof => "connection closed by the server".to_string(),
        E::TimedOut => return Kind::Timeout,
        _ => e.to_string(),
    };
    Kind::Network(what)
}

/// A 2xx reply.
pub(super) fn positive(code: u16) -> bool {
    (200..300).contains(&code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn replies_parse_with_enhanced_codes() {
        let r = parse_reply(b"550-5.1.1 no such\r\n550 5.1.1 user here\r\n").expect("parses");
        assert_eq!(r.code, 550);
        assert_eq!(r.enhanced, Some([5, 1, 1]));
        assert_eq!(r.text, "no such user here");
        let r = parse_reply(b"250 Ok\r\n").expect("parses");
        assert_eq!((r.code, r.enhanced, r.text.as_str()), (250, None, "Ok"));
    }

    #[test]
    fn ehlo_capabilities() {
        let caps = parse_ehlo(
            b"250-intake.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 STARTTLS\r\n",
        );
        assert_eq!(
            caps,
            Capabilities {
                starttls: true,
                pipelining: true,
                eight_bit_mime: true,
                size: Some(1000)
            }
        );
        assert_eq!(parse_ehlo(b"250 intake.test\r\n"), Capabilities::default());
    }

    #[tokio::test]
    async fn multi_line_and_pipelined_replies_are_kept_apart() {
        let (client, mut server) = tokio::io::duplex(1024);
        server
            .write_all(b"250-first\r\n250 second\r\n354 go ahead\r\n")
            .await
            .expect("write");
        let mut wire = Wire::new(client);
        let a = wire.read_reply().await.expect("first reply");
        let b = wire.read_reply().await.expect("second reply");
        assert_eq!((a.code, a.text.as_str()), (250, "first second"));
        assert_eq!(b.code, 354);
    }

    #[tokio::test]
    async fn malformed_and_truncated_replies_are_protocol_errors() {
        let (client, mut server) = tokio::io::duplex(1024);
        server.write_all(b"hello\r\n").await.expect("write");
        let mut wire = Wire::new(client);
        assert!(matches!(wire.read_reply().await, Err(Kind::Protocol(_))));

        let (client, mut server) = tokio::io::duplex(1024);
        server.write_all(b"250-partial\r\n").await.expect("write");
        drop(server);
        let mut wire = Wire::new(client);
        assert!(matches!(wire.read_reply().await, Err(Kind::Network(_))));

        let (client, mut server) = tokio::io::duplex(16 * 1024);
        let long = vec![b'x'; MAX_LINE + 10];
        server.write_all(b"250 ").await.expect("write");
        server.write_all(&long).await.expect("write");
        let mut wire = Wire::new(client);
        assert!(matches!(wire.read_reply().await, Err(Kind::Protocol(_))));
    }

    /// Longer in all than the 4 KiB smtp-proto parses, each line short, arriving in
    /// pieces that cut lines: read whole, the code and the capabilities kept.
    #[tokio::test]
    async fn a_reply_longer_than_4_kib_in_pieces_is_read_and_parsed() {
        let mut ehlo = b"250-intake.test\r\n250-STARTTLS\r\n250-8BITMIME\r\n".to_vec();
        for n in 0..120 {
            ehlo.extend_from_slice(
                format!("250-X-FILLER-{n:03} {}\r\n", "y".repeat(40)).as_bytes(),
            );
        }
        ehlo.extend_from_slice(b"250 PIPELINING\r\n");
        assert!(ehlo.len() > 6000);
        let (client, mut server) = tokio::io::duplex(64);
        let pieces = ehlo.clone();
        let writer = tokio::spawn(async move {
            for piece in pieces.chunks(333) {
                server.write_all(piece).await.expect("write");
            }
            server
        });
        let mut wire = Wire::new(client);
        let raw = wire.read_raw_reply().await.expect("a whole reply");
        assert_eq!(raw, ehlo);
        let reply = parse_reply(&raw).expect("parsed");
        assert_eq!(reply.code, 250);
        let caps = parse_ehlo(&raw);
        assert!(caps.starttls && caps.eight_bit_mime, "{caps:?}");
        drop(writer.await);
    }
}
