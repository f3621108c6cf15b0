//! The bytes of a spool file: a header of `key value` lines that is the journal's
//! [`Record`], an empty line, then the journal. The header carries the journal's size
//! and CRC-32, so a file that does not match them is known as damaged; the file's name,
//! `<mid>.<attempts>`, carries the attempts made so far, so recording an attempt is a
//! rename, not a rewrite.
//!
//! The format is a promise across versions: a spool written by an earlier release is
//! taken back by a later one (`tests/fixtures/spool-format-2/`).

use crate::record::Record;

/// The first line of a journal's file.
pub(super) const MAGIC: &str = "tdc-milter-spool 2";
/// Written over the magic of a journal that has left the queue, and made durable
/// before its file is released or removed: a file that starts with it is free,
/// whatever its mode and wherever a power loss left its name.
pub(super) const FREED: &str = "tdc-milter-freed 2";
/// Written by earlier versions; complete by construction (renamed into place).
pub(super) const MAGIC_RENAMED: &str = "tdc-milter-spool 1";

/// Header values are ours or sanitised, but a Message-ID may hold anything: keep each
/// value on its line.
fn line_breaks_to_spaces(value: &str) -> String {
    value
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect()
}

pub(super) fn render_header(e: &Record, crc: u32) -> String {
    format!(
        "{MAGIC}\nmid {}\nenqueued-ms {}\nintake {}\nsender {}\neight-bit {}\nqueue-id {}\nmessage-id {}\nsize {}\ncrc32 {crc:08x}\n\n",
        e.mid,
        e.enqueued_ms,
        line_breaks_to_spaces(&e.intake),
        line_breaks_to_spaces(&e.sender),
        u8::from(e.eight_bit),
        line_breaks_to_spaces(&e.queue_id),
        line_breaks_to_spaces(&e.message_id),
        e.size
    )
}

pub(super) fn header_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\n\n").map(|p| p + 2)
}

/// The record of the spool file `name` holding `bytes`, checked against its size and
/// CRC. The header says which journal it is; the name gives the attempts made, when it
/// is that journal's name (a recycled file may still carry a free file's name, or an
/// earlier journal's, after a crash).
pub(super) fn parse(name: &str, bytes: &[u8]) -> Result<Record, String> {
    let from_name = name
        .split_once('.')
        .and_then(|(m, a)| Some((m.parse::<u64>().ok()?, a.parse::<u32>().ok()?)));
    let end = header_end(bytes).ok_or("no end of header")?;
    let header = String::from_utf8_lossy(&bytes[..end]);
    let mut lines = header.lines();
    let format = lines.next();
    if !matches!(format, Some(MAGIC | MAGIC_RENAMED)) {
        return Err("not a tdc-milter spool file".into());
    }
    let journal = &bytes[end..];
    let mut entry = Record {
        mid: 0,
        intake: String::new(),
        sender: String::new(),
        eight_bit: false,
        queue_id: String::new(),
        message_id: String::new(),
        enqueued_ms: 0,
        attempts: 0,
        size: journal.len() as u64,
    };
    let mut size_in_header = None;
    let mut crc_in_header = None;
    for line in lines.filter(|l| !l.is_empty()) {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "mid" => entry.mid = value.parse().map_err(|_| "bad mid")?,
            "enqueued-ms" => entry.enqueued_ms = value.parse().map_err(|_| "bad enqueued-ms")?,
            "intake" => entry.intake = value.to_string(),
            "sender" => entry.sender = value.to_string(),
            "eight-bit" => entry.eight_bit = value == "1",
            "queue-id" => entry.queue_id = value.to_string(),
            "message-id" => entry.message_id = value.to_string(),
            "size" => size_in_header = value.parse::<u64>().ok(),
            "crc32" => crc_in_header = u32::from_str_radix(value, 16).ok(),
            _ => {}
        }
    }
    if entry.mid == 0 || entry.intake.is_empty() || entry.enqueued_ms == 0 {
        return Err("incomplete header".into());
    }
    match from_name {
        Some((mid, attempts)) if mid == entry.mid => entry.attempts = attempts,
        _ if format == Some(MAGIC_RENAMED) => {
            return Err(format!("MID {} does not match the file name", entry.mid))
        }
        _ => {}
    }
    if size_in_header != Some(entry.size) {
        return Err(format!(
            "journal is {} bytes, header says {:?}",
            entry.size, size_in_header
        ));
    }
    if format == Some(MAGIC) {
        let crc = crc32fast::hash(journal);
        if crc_in_header != Some(crc) {
            return Err(format!(
                "journal CRC-32 is {crc:08x}, header says {}",
                crc_in_header.map_or("none".into(), |c| format!("{c:08x}"))
            ));
        }
    }
    Ok(entry)
}
