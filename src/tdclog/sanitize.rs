//! Values from a message or a peer, made safe for a one-line log entry.

/// Makes a value taken from a message or a peer safe for a one-line log entry:
/// control characters (CR, LF, NUL, ...), the Unicode line and paragraph separators
/// (which some viewers break lines at) and the bidirectional controls (which make a
/// line read differently from its bytes, "Trojan Source") become `\xNN` per UTF-8
/// byte, and a backslash is doubled so the escape cannot be forged.
pub fn sanitize(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || is_separator_or_bidi(c) => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\x{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// U+2028 and U+2029, and the bidirectional formatting characters of Unicode's
/// bidi algorithm (UAX #9): marks, embeddings, overrides and isolates.
fn is_separator_or_bidi(c: char) -> bool {
    matches!(
        c,
        '\u{2028}' | '\u{2029}' | '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'
            ..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// Like [`sanitize`], for raw bytes that need not be UTF-8.
pub fn sanitize_bytes(value: &[u8]) -> String {
    sanitize(&String::from_utf8_lossy(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tdclog::{Event, Ids, Step};

    #[test]
    fn sanitize_keeps_one_line() {
        let forged = "<id@x>\r\nInfo: TDC: MID 9 successfully delivered\0\\x0A";
        let clean = sanitize(forged);
        assert!(!clean.chars().any(|c| c.is_control()), "{clean}");
        assert_eq!(
            clean,
            "<id@x>\\x0D\\x0AInfo: TDC: MID 9 successfully delivered\\x00\\\\x0A"
        );
        assert_eq!(sanitize_bytes(b"a\xffb\x7f"), "a\u{FFFD}b\\x7F");
        // Line separators and bidi controls, by their UTF-8 bytes.
        assert_eq!(
            sanitize("a\u{2028}b\u{2029}c\u{202E}d\u{2066}e\u{200F}f"),
            "a\\xE2\\x80\\xA8b\\xE2\\x80\\xA9c\\xE2\\x80\\xAEd\\xE2\\x81\\xA6e\\xE2\\x80\\x8Ff"
        );
        for c in [
            '\u{061C}', '\u{200E}', '\u{200F}', '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}',
            '\u{202E}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}', '\u{2028}', '\u{2029}',
        ] {
            assert!(
                sanitize(&c.to_string()).starts_with("\\x"),
                "{:04X}",
                c as u32
            );
        }
        assert_eq!(
            sanitize("\u{00E9}\u{4E2D}"),
            "\u{00E9}\u{4E2D}",
            "other text stays"
        );
        let line = Event::journal(
            1,
            Step::Enqueued(Ids {
                message_id: forged,
                intake: "i@x",
                queue_id: "Q\n",
            }),
        )
        .to_string();
        assert!(!line.contains('\n') && !line.contains('\r'));
    }
}
