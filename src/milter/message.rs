//! One message as the milter sees it: envelope, the original rebuilt byte for byte
//! from the header and body callbacks, and what the checks need.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use crate::config::{JournalSettings, Settings};

/// The state of one SMTP transaction (MAIL … end of message).
#[derive(Debug)]
pub struct Message {
    /// The settings in force when the transaction began: a reload changes new
    /// messages only.
    pub settings: Arc<Settings>,
    /// Envelope sender as the MTA passed it (with or without angle brackets).
    pub sender: String,
    pub recipients: Vec<String>,
    /// The original: headers (`name:value` CRLF, folding kept), CRLF, body.
    original: BytesMut,
    /// Size of the original so far, counted even after we stop storing it.
    size: u64,
    over_limit: bool,
    pub subject: Option<Vec<u8>>,
    pub message_id: Option<String>,
    /// The first configured "not clean" verdict header present: (name, value) as
    /// the message carries them.
    pub verdict: Option<(String, String)>,
    /// The journal's own marker header (`X-MS-Journal-Report`) was present.
    pub journal_marker: bool,
    /// Whether the original is kept: not on a connection past milter.max_connections,
    /// which is never journaled and must cost next to nothing.
    store: bool,
    /// The body so far ends with CR (a chunk may end between CR and LF).
    body_ends_with_cr: bool,
}

impl Message {
    #[cfg(test)]
    pub fn new(sender: String, settings: Arc<Settings>) -> Message {
        Message::with_storage(sender, settings, true)
    }

    /// A message whose original is only counted, not kept (`store` false).
    pub fn with_storage(sender: String, settings: Arc<Settings>, store: bool) -> Message {
        Message {
            settings,
            sender,
            recipients: Vec::new(),
            original: BytesMut::new(),
            size: 0,
            over_limit: false,
            subject: None,
            message_id: None,
            verdict: None,
            journal_marker: false,
            store,
            body_ends_with_cr: false,
        }
    }

    fn journal_settings(&self) -> &JournalSettings {
        &self.settings.journal
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn over_limit(&self) -> bool {
        self.over_limit
    }

    /// The original as the MTA passed it, without our client-IP header.
    pub fn original(&self) -> &[u8] {
        &self.original
    }

    /// Adds one header. `value` is everything after the colon; with the milter option
    /// LEADING_SPACE it is exact, otherwise the MTA dropped one space that we put back.
    /// A copy of the client-IP header already present is the sender's forgery and is
    /// left out of the journal's copy (the delivered original is untouched).
    pub fn add_header(&mut self, name: &[u8], value: &[u8], exact_value: bool) {
        let settings = self.settings.clone();
        let settings = &settings.journal;
        let name_str = String::from_utf8_lossy(name);
        let value = folded_value(value);
        if name_str.eq_ignore_ascii_case("subject") && self.subject.is_none() {
            self.subject = Some(if exact_value {
                value.clone()
            } else {
                [b" ".as_slice(), &value].concat()
            });
        }
        if name_str.eq_ignore_ascii_case("message-id") && self.message_id.is_none() {
            self.message_id = Some(String::from_utf8_lossy(&value).trim().to_string());
        }
        if self.verdict.is_none() {
            let trimmed = String::from_utf8_lossy(&value);
            let trimmed = trimmed.trim();
            if settings.not_clean.iter().any(|v| {
                name_str.eq_ignore_ascii_case(&v.header) && trimmed.eq_ignore_ascii_case(&v.value)
            }) {
                self.verdict = Some((name_str.to_string(), trimmed.to_string()));
            }
        }
        if name_str.eq_ignore_ascii_case(crate::journal::MARKER_HEADER) {
            self.journal_marker = true;
        }
        if name_str.eq_ignore_ascii_case(&settings.client_ip_header) {
            return;
        }
        let space = if exact_value { 0 } else { 1 };
        self.append(
            name.len() + 1 + space + value.len() + 2,
            settings.max_size,
            |buf| {
                buf.put_slice(name);
                buf.put_u8(b':');
                if !exact_value {
                    buf.put_u8(b' ');
                }
                buf.put_slice(&value);
                buf.put_slice(b"\r\n");
            },
        );
    }

    pub fn end_of_headers(&mut self) {
        let max = self.journal_settings().max_size;
        self.append(2, max, |buf| buf.put_slice(b"\r\n"));
    }

    /// Adds a body chunk. A bare LF or a bare CR (an MTA passes CRLF line ends; a
    /// broken one, or a hostile sender past a lenient one, may not) becomes CRLF: SMTP
    /// forbids both (RFC 5321 §2.3.8), an intake refuses them, and one that took
    /// `<CR>.<CR>` for the end of the data would let the original smuggle a second
    /// message into the journal's session (docs/SECURITY.md). A CR that ends a chunk
    /// is completed by the next chunk, or by [`Message::end_of_body`].
    pub fn add_body(&mut self, chunk: &[u8]) {
        let max = self.journal_settings().max_size;
        let chunk = crlf_body(chunk, self.body_ends_with_cr);
        if let Some(&last) = chunk.last() {
            self.body_ends_with_cr = last == b'\r';
        }
        self.append(chunk.len(), max, |buf| buf.put_slice(&chunk));
    }

    /// The body is complete: a CR that ended it gets its LF.
    pub fn end_of_body(&mut self) {
        if std::mem::take(&mut self.body_ends_with_cr) {
            let max = self.journal_settings().max_size;
            self.append(1, max, |buf| buf.put_u8(b'\n'));
        }
    }

    /// Appends unless the original has grown past the journal size limit; past it, only
    /// the size is counted and the stored bytes are released.
    fn append(&mut self, len: usize, max_size: u64, write: impl FnOnce(&mut BytesMut)) {
        self.size = self.size.saturating_add(len as u64);
        if self.over_limit || !self.store {
            return;
        }
        if self.size > max_size {
            self.over_limit = true;
            self.original = BytesMut::new();
            return;
        }
        write(&mut self.original);
    }
}

/// The header line that goes first in the attached original: the client's IP under
/// the configured name (`journal.client_ip_header`); empty without a client IP.
pub fn client_ip_line(header: &str, client_ip: Option<&str>) -> String {
    client_ip.map_or_else(String::new, |ip| format!("{header}: {ip}\r\n"))
}

/// A header value for the copy. Folded values arrive LF-separated (libmilter
/// convention); RFC 5322 wants CRLF. A line break that is not folding (CR, LF or CRLF
/// not followed by a space or tab) cannot come from a real header: it is made folding,
/// and line breaks at the end are dropped, so that a value can neither add a header to
/// the attached copy (a forged client-IP header, say) nor end its header section.
fn folded_value(value: &[u8]) -> Vec<u8> {
    let mut end = value.len();
    while end > 0 && matches!(value[end - 1], b'\r' | b'\n') {
        end -= 1;
    }
    let value = &value[..end];
    let mut out = Vec::with_capacity(value.len() + 8);
    crate::journal::push_folded(&mut out, value);
    out
}

/// A body chunk with each bare LF and each bare CR made CRLF; `after_cr` says the
/// previous chunk ended with CR, whose LF is then either this chunk's first byte or
/// added before it. A CR at the end of this chunk is left for the next one. Borrows
/// the chunk when there is nothing to change (the usual case).
fn crlf_body(chunk: &[u8], after_cr: bool) -> std::borrow::Cow<'_, [u8]> {
    let Some(&first) = chunk.first() else {
        return std::borrow::Cow::Borrowed(chunk);
    };
    let completes_cr = after_cr && first != b'\n';
    let bare = |i: usize| match chunk[i] {
        b'\n' => {
            if i == 0 {
                !after_cr
            } else {
                chunk[i - 1] != b'\r'
            }
        }
        // A CR at the very end may still be followed by the next chunk's LF.
        _ => chunk.get(i + 1).is_some_and(|&next| next != b'\n'),
    };
    if !completes_cr && !memchr::memchr2_iter(b'\r', b'\n', chunk).any(bare) {
        return std::borrow::Cow::Borrowed(chunk);
    }
    let mut out = Vec::with_capacity(chunk.len() + chunk.len() / 32 + 2);
    if completes_cr {
        out.push(b'\n');
    }
    for (i, &b) in chunk.iter().enumerate() {
        let fix = matches!(b, b'\r' | b'\n') && bare(i);
        if fix && b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
        if fix && b == b'\r' {
            out.push(b'\n');
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_size: u64) -> Arc<Settings> {
        let yaml = format!("intake_address: i@intake.test\njournal:\n  sender: tdc@gw.test\n  max_size: {max_size}B\n  not_clean: [{{ header: X-Spam-Flag, value: \"YES\" }}]\n");
        Arc::new(Settings::from_yaml(&yaml, std::path::Path::new("t.yaml")).expect("settings"))
    }

    #[test]
    fn rebuilds_headers_exactly_and_drops_forged_client_ip() {
        let s = settings(1 << 20);
        let mut m = Message::new("<a@b>".into(), s.clone());
        m.add_header(b"Subject", b" folded\n\tline", true);
        m.add_header(b"x-ironport-remoteip", b" 6.6.6.6", true);
        m.add_header(b"Message-ID", b" <id@x> ", true);
        m.add_header(b"X-Bare", b"no-space", true);
        m.end_of_headers();
        m.add_body(b"body\r\n");
        assert_eq!(
            m.original(),
            b"Subject: folded\r\n\tline\r\nMessage-ID: <id@x> \r\nX-Bare:no-space\r\n\r\nbody\r\n"
        );
        assert_eq!(m.subject.as_deref(), Some(b" folded\r\n\tline".as_slice()));
        assert_eq!(m.message_id.as_deref(), Some("<id@x>"));
        assert_eq!(
            client_ip_line("X-IronPort-RemoteIP", Some("192.0.2.1")),
            "X-IronPort-RemoteIP: 192.0.2.1\r\n"
        );
        assert_eq!(client_ip_line("X-IronPort-RemoteIP", None), "");
    }

    #[test]
    fn restores_the_space_when_leading_space_was_not_negotiated() {
        let s = settings(1 << 20);
        let mut m = Message::new("<a@b>".into(), s.clone());
        m.add_header(b"Subject", b"hi", false);
        assert_eq!(m.original(), b"Subject: hi\r\n");
        assert_eq!(m.subject.as_deref(), Some(b" hi".as_slice()));
    }

    #[test]
    fn not_clean_verdict_is_case_insensitive() {
        let s = settings(1 << 20);
        let mut m = Message::new("<a@b>".into(), s.clone());
        m.add_header(b"x-spam-flag", b" yes ", true);
        assert_eq!(m.verdict, Some(("x-spam-flag".into(), "yes".into())));
        let mut m = Message::new("<a@b>".into(), s.clone());
        m.add_header(b"X-Spam-Flag", b" NO", true);
        assert_eq!(m.verdict, None);
    }

    #[test]
    fn a_message_on_a_busy_connection_is_counted_not_kept() {
        let s = settings(1 << 20);
        let mut m = Message::with_storage("<a@b>".into(), s, false);
        m.add_header(b"X-MS-Journal-Report", b"", true);
        m.end_of_headers();
        m.add_body(b"body\r\n");
        assert!(m.original().is_empty());
        assert_eq!(m.size(), 30);
        assert!(m.journal_marker);
    }

    #[test]
    fn a_line_break_in_a_value_cannot_add_a_header_or_end_the_section() {
        let s = settings(1 << 20);
        let mut m = Message::new("<a@b>".into(), s.clone());
        m.add_header(b"Subject", b" x\nX-IronPort-RemoteIP: 6.6.6.6\n", true);
        m.add_header(b"Message-ID", b" <a@b>\r\nX: 1\rY: 2\r\n\r\nbody", true);
        m.add_header(b"X-Folded", b" a\n\tb\r\n c", true);
        m.end_of_headers();
        assert_eq!(
            m.original(),
            b"Subject: x\r\n X-IronPort-RemoteIP: 6.6.6.6\r\nMessage-ID: <a@b>\r\n X: 1\r\n Y: 2\r\n \r\n body\r\nX-Folded: a\r\n\tb\r\n c\r\n\r\n"
        );
        assert_eq!(
            m.subject.as_deref(),
            Some(b" x\r\n X-IronPort-RemoteIP: 6.6.6.6".as_slice())
        );
    }

    #[test]
    fn bare_lf_in_the_body_becomes_crlf_across_chunks() {
        let s = settings(1 << 20);
        let mut m = Message::new("<a@b>".into(), s.clone());
        m.end_of_headers();
        m.add_body(b"a\nb\r");
        m.add_body(b"\nc\n");
        m.add_body(b"\nd\r\n\0\re");
        m.end_of_body();
        assert_eq!(m.original(), b"\r\na\r\nb\r\nc\r\n\r\nd\r\n\0\r\ne");
        assert_eq!(m.size(), m.original().len() as u64);
    }

    #[test]
    fn bare_cr_in_the_body_becomes_crlf_across_chunks_and_at_the_end() {
        let s = settings(1 << 20);
        let mut m = Message::new("<a@b>".into(), s.clone());
        m.end_of_headers();
        // <CR>.<CR>: what an intake that is lenient about line ends might take for
        // the end of the data.
        m.add_body(b"x\r.\rMAIL FROM:<e@v>\r\r\n");
        m.add_body(b"y\r");
        m.add_body(b"z\r");
        m.add_body(b"");
        m.add_body(b"\r");
        m.end_of_body();
        assert_eq!(
            m.original(),
            b"\r\nx\r\n.\r\nMAIL FROM:<e@v>\r\n\r\ny\r\nz\r\n\r\n"
        );
        assert_eq!(m.size(), m.original().len() as u64);
        let journal = m.original();
        for (i, &b) in journal.iter().enumerate() {
            match b {
                b'\r' => assert_eq!(journal.get(i + 1), Some(&b'\n'), "bare CR at {i}"),
                b'\n' => assert_eq!(journal[i - 1], b'\r', "bare LF at {i}"),
                _ => {}
            }
        }
    }

    #[test]
    fn stops_storing_past_the_size_limit_but_keeps_counting() {
        let s = settings(20);
        let mut m = Message::new("<a@b>".into(), s.clone());
        m.add_header(b"Subject", b" hi", true);
        m.end_of_headers();
        assert!(!m.over_limit());
        m.add_body(b"0123456789\r\n");
        assert!(m.over_limit());
        assert!(m.original().is_empty());
        m.add_body(b"more\r\n");
        assert_eq!(m.size(), 13 + 2 + 12 + 6);
    }
}
