//! The journal's bytes as DATA carries them.

/// The longest text line SMTP carries, CRLF not counted (RFC 5321 §4.5.3.1.6).
const MAX_TEXT_LINE: usize = 998;

/// RFC 5321 §4.5.2 transparency: a line starting with "." gets another; the message is
/// terminated with CRLF.CRLF (adding the CRLF when the message does not end with a line
/// break). Every line break goes out as CRLF: a bare CR or a bare LF (which the milter
/// already replaces in the original, but a journal spooled by an older version may
/// hold) becomes CRLF, and the line after it is dot-stuffed like any other, so that
/// `<CR>.<CR>` can never reach the intake (docs/SECURITY.md, "SMTP smuggling").
/// Lines over 998 octets are broken with CRLF and a space (see [`DotStuffer`]).
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    let mut stuffer = DotStuffer::default();
    stuffer.push(message, &mut out);
    stuffer.finish(&mut out);
    out
}

/// [`dot_stuff`] a chunk at a time, so a journal goes out as it is read from the spool
/// and never has to be held whole: the bytes out are the same however the message is
/// cut into chunks (a CR at the end of one chunk and the LF that starts the next are
/// one line break; a line's first '.' or its 999th octet may come in any chunk).
#[derive(Debug)]
pub struct DotStuffer {
    /// No text octet of the current line has come yet.
    at_line_start: bool,
    /// Text octets the current piece of the line may still take.
    room: usize,
    /// The last octet was a CR: an LF that follows belongs to the same line break.
    after_cr: bool,
    /// The last octet ended a line (the message then needs no CRLF before the dot).
    ended_line: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            at_line_start: true,
            room: MAX_TEXT_LINE,
            after_cr: false,
            ended_line: false,
        }
    }
}

impl DotStuffer {
    /// Appends `chunk` as DATA carries it to `out`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) {
        // Line by line, found with memchr: a byte-at-a-time loop was the daemon's biggest
        // cost on large journals (`perf`, docs/BENCHMARKS.md).
        while !chunk.is_empty() {
            if std::mem::take(&mut self.after_cr) && chunk[0] == b'\n' {
                chunk = &chunk[1..];
                continue;
            }
            let end = memchr::memchr2(b'\r', b'\n', chunk).unwrap_or(chunk.len());
            self.text(&chunk[..end], out);
            let Some(&line_break) = chunk.get(end) else {
                break;
            };
            out.extend_from_slice(b"\r\n");
            self.at_line_start = true;
            self.room = MAX_TEXT_LINE;
            self.after_cr = line_break == b'\r';
            self.ended_line = true;
            chunk = &chunk[end + 1..];
        }
    }

    /// Octets of one line, with no line break among them.
    fn text(&mut self, mut text: &[u8], out: &mut Vec<u8>) {
        if text.is_empty() {
            return;
        }
        self.ended_line = false;
        if std::mem::take(&mut self.at_line_start) && text[0] == b'.' {
            out.push(b'.');
        }
        // RFC 5321 §4.5.3.1.6: at most 998 octets before CRLF. A longer line is
        // broken the way Postfix's smtp client breaks it (smtp_line_length_limit),
        // with CRLF and a space; an intake would refuse the journal otherwise.
        while !text.is_empty() {
            if self.room == 0 {
                out.extend_from_slice(b"\r\n ");
                self.room = MAX_TEXT_LINE - 1;
            }
            let (piece, rest) = text.split_at(text.len().min(self.room));
            out.extend_from_slice(piece);
            self.room -= piece.len();
            text = rest;
        }
    }

    /// The end of the message: its last line break if it had none, and the dot.
    pub fn finish(self, out: &mut Vec<u8>) {
        if !self.ended_line {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing() {
        assert_eq!(
            dot_stuff(b"a\r\n.b\r\n..c\r\n"),
            b"a\r\n..b\r\n...c\r\n.\r\n"
        );
        assert_eq!(dot_stuff(b".x\r\n"), b"..x\r\n.\r\n");
        assert_eq!(dot_stuff(b"no final crlf"), b"no final crlf\r\n.\r\n");
        assert_eq!(dot_stuff(b"a\r\n.\r\n"), b"a\r\n..\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b"\r\n.\r\n");
    }

    #[test]
    fn bare_cr_and_lf_go_out_as_crlf_and_cannot_end_the_data() {
        assert_eq!(
            dot_stuff(b"a\r.\rMAIL FROM:<e@v>\n.\n\r\r\nb"),
            b"a\r\n..\r\nMAIL FROM:<e@v>\r\n..\r\n\r\n\r\nb\r\n.\r\n"
        );
        assert_eq!(dot_stuff(b"x\r"), b"x\r\n.\r\n");
        assert_eq!(dot_stuff(b"x\n"), b"x\r\n.\r\n");
    }

    #[test]
    fn lines_longer_than_998_octets_are_broken_like_postfix_does() {
        let mut line = vec![b'x'; 998];
        line.extend_from_slice(b"\r\n");
        assert_eq!(dot_stuff(&line), [line.as_slice(), b".\r\n"].concat());

        let long = [vec![b'a'; 998], vec![b'b'; 998], b"c\r\n.d\r\n".to_vec()].concat();
        let expected = [
            vec![b'a'; 998],
            b"\r\n ".to_vec(),
            vec![b'b'; 997],
            b"\r\n b".to_vec(),
            b"c\r\n..d\r\n.\r\n".to_vec(),
        ]
        .concat();
        assert_eq!(dot_stuff(&long), expected);
        assert!(dot_stuff(&vec![b'z'; 1 << 20])
            .split(|&b| b == b'\n')
            .all(|l| l.len() <= 1000));
    }

    /// The rules of `dot_stuff` one byte at a time: a '.' after a line feed (or at the
    /// start) is doubled, and a line is broken with CRLF + space before a byte that
    /// would be its 999th octet (CR of CRLF and LF do not count).
    fn dot_stuff_by_byte(message: &[u8]) -> Vec<u8> {
        // Every line break as CRLF first: CRLF stays, a lone CR or LF becomes CRLF.
        let mut crlf = Vec::new();
        let mut i = 0;
        while i < message.len() {
            match message[i] {
                b'\r' if message.get(i + 1) == Some(&b'\n') => {
                    crlf.extend_from_slice(b"\r\n");
                    i += 2;
                }
                b'\r' | b'\n' => {
                    crlf.extend_from_slice(b"\r\n");
                    i += 1;
                }
                b => {
                    crlf.push(b);
                    i += 1;
                }
            }
        }
        let message = crlf.as_slice();
        let mut out = Vec::new();
        let mut line_start = true;
        let mut length = 0usize;
        for (i, &b) in message.iter().enumerate() {
            let ends_line = b == b'\n' || (b == b'\r' && message.get(i + 1) == Some(&b'\n'));
            if !ends_line && length >= MAX_TEXT_LINE {
                out.extend_from_slice(b"\r\n ");
                length = 1;
            }
            if line_start && b == b'.' {
                out.push(b'.');
            }
            out.push(b);
            line_start = b == b'\n';
            length = if ends_line { 0 } else { length + 1 };
        }
        if !message.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    /// `message` pushed in the pieces `cuts` makes.
    fn dot_stuff_in_pieces(message: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut stuffer = DotStuffer::default();
        let mut out = Vec::new();
        let mut from = 0;
        for &cut in cuts.iter().chain([&message.len()]) {
            let cut = cut.clamp(from, message.len());
            stuffer.push(&message[from..cut], &mut out);
            from = cut;
        }
        stuffer.finish(&mut out);
        out
    }

    #[test]
    fn a_message_cut_anywhere_goes_out_as_the_whole_does() {
        let long = [vec![b'a'; 997], b"\r\n".to_vec(), vec![b'b'; 2000]].concat();
        let messages: [&[u8]; 7] = [
            b"a\r\n.b\r\n..c\r\n",
            b"a\r.\rMAIL FROM:<e@v>\n.\n\r\r\nb",
            b"x\r",
            b".",
            b"\r\n.\r\n",
            b"",
            &long,
        ];
        for message in messages {
            let whole = dot_stuff(message);
            for a in 0..=message.len().min(40) {
                for b in a..=message.len().min(40) {
                    assert_eq!(
                        dot_stuff_in_pieces(message, &[a, b]),
                        whole,
                        "cut at {a} and {b}: {:?}",
                        String::from_utf8_lossy(message)
                    );
                }
            }
            for cut in (0..message.len()).filter(|c| c % 997 < 3 || c % 998 < 3) {
                assert_eq!(dot_stuff_in_pieces(message, &[cut]), whole, "cut at {cut}");
            }
            let bytes: Vec<usize> = (0..message.len()).collect();
            assert_eq!(dot_stuff_in_pieces(message, &bytes), whole, "byte by byte");
        }
    }

    #[test]
    fn dot_stuffing_agrees_with_the_byte_at_a_time_rules() {
        // Random lines of '.', 'a', CR and LF, with runs long enough to be broken.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let mut message = Vec::new();
            for _ in 0..next() % 12 {
                let run = match next() % 4 {
                    0 => 0,
                    1 => (next() % 5) as usize,
                    2 => 990 + (next() % 20) as usize,
                    _ => 1990 + (next() % 20) as usize,
                };
                let byte = [b'.', b'a', b'a', b'\r'][(next() % 4) as usize];
                message.extend(std::iter::repeat_n(byte, run));
                message
                    .extend_from_slice([&b"\r\n"[..], b"\n", b"\r", b"."][(next() % 4) as usize]);
            }
            let expected = dot_stuff_by_byte(&message);
            assert_eq!(
                dot_stuff(&message),
                expected,
                "{:?}",
                String::from_utf8_lossy(&message)
            );
            let cuts: Vec<usize> = (0..3)
                .map(|_| (next() % (message.len() as u64 + 1)) as usize)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            assert_eq!(dot_stuff_in_pieces(&message, &cuts), expected, "{cuts:?}");
        }
    }
}
