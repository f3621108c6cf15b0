//! The durable spool of the.tdc.queue: one file per journal, written before the
//! milter answers the MTA, so a crash or restart loses nothing still in its lifetime.
//!
//! A journal is written straight to its place and marked complete the way Postfix
//! marks its queue files (cleanup's `mail_stream_finish`): the owner-execute bit is
//! set, then the file is fsynced, once. A file without the mark is a write that never
//! finished, was never acknowledged to the MTA, and is removed at start; a marked file
//! must still match the size in its header. One fsync, no rename and no directory
//! sync is the end-of-message cost: on ext4 (Debian's default, journalled) the fsync
//! of a new file commits the transaction that holds its directory entry, and Postfix
//! relies on the same for its own queue. File names carry the MID and the attempts
//! made, so marking a retry is one atomic rename.
//!
//! ```text
//! SPOOL/active/<mid>.<attempts>   header lines, an empty line, the journal bytes
//! SPOOL/incoming/next-mid.tmp     the MID counter being replaced; removed at start
//! SPOOL/next-mid                  MIDs handed out are below this number
//! ```
//!
//! Format 1 files (tdc-milter before the completion mark) were renamed into place
//! once complete, so they are taken back whatever their mode.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const MAGIC: &str = "tdc-milter-spool 2";
/// Written by earlier versions; complete by construction (renamed into place).
const MAGIC_RENAMED: &str = "tdc-milter-spool 1";
/// The mode of a journal being written, and the bit that marks it complete.
const MODE_WRITING: u32 = 0o600;
const COMPLETE_BIT: u32 = 0o100;
/// MIDs are reserved in blocks so the counter file is written rarely, and a MID is
/// never reused after a crash.
const MID_BLOCK: u64 = 1000;

/// What the queue keeps in memory of a spooled journal (the bytes stay on disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolEntry {
    pub mid: u64,
    pub intake: String,
    pub sender: String,
    pub eight_bit: bool,
    pub queue_id: String,
    pub message_id: String,
    /// Wall-clock enqueue time, milliseconds since the Unix epoch.
    pub enqueued_ms: u64,
    /// Delivery attempts that failed so far.
    pub attempts: u32,
    /// Size of the journal bytes.
    pub size: u64,
}

#[derive(Debug)]
pub struct SpoolError {
    pub what: String,
    pub path: PathBuf,
    pub error: io::Error,
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.what, self.path.display(), self.error)
    }
}

impl std::error::Error for SpoolError {}

fn err(what: &str, path: &Path) -> impl FnOnce(io::Error) -> SpoolError {
    let what = what.to_string();
    let path = path.to_path_buf();
    move |error| SpoolError { what, path, error }
}

/// A file in the spool that could not be read back; it is moved aside, never deleted.
#[derive(Debug)]
pub struct Damaged {
    pub path: PathBuf,
    pub reason: String,
}

pub struct Spool {
    active: PathBuf,
    incoming: PathBuf,
    corrupt: PathBuf,
    mid_file: PathBuf,
    mids: Mutex<MidCounter>,
}

struct MidCounter {
    next: u64,
    reserved_until: u64,
}

impl Spool {
    /// Opens (creating) the spool and returns what it holds.
    pub fn open(dir: &Path) -> Result<(Spool, Vec<SpoolEntry>, Vec<Damaged>), SpoolError> {
        let active = dir.join("active");
        let incoming = dir.join("incoming");
        let corrupt = dir.join("corrupt");
        for d in [dir, &active, &incoming] {
            fs::create_dir_all(d).map_err(err("cannot create spool directory", d))?;
        }
        // Leftovers of writes that never completed were never acknowledged as spooled;
        // their originals were accepted with a log line saying the journal failed.
        for leftover in fs::read_dir(&incoming).map_err(err("cannot read", &incoming))? {
            let path = leftover.map_err(err("cannot read", &incoming))?.path();
            let _ = fs::remove_file(&path);
        }
        let mut entries = Vec::new();
        let mut damaged = Vec::new();
        for item in fs::read_dir(&active).map_err(err("cannot read", &active))? {
            let path = item.map_err(err("cannot read", &active))?.path();
            if unfinished_write(&path) {
                let _ = fs::remove_file(&path);
                continue;
            }
            match read_header(&path) {
                Ok(entry) => entries.push(entry),
                Err(reason) => damaged.push(Damaged { path, reason }),
            }
        }
        if !damaged.is_empty() {
            fs::create_dir_all(&corrupt).map_err(err("cannot create spool directory", &corrupt))?;
            for d in &damaged {
                if let Some(name) = d.path.file_name() {
                    let _ = fs::rename(&d.path, corrupt.join(name));
                }
            }
        }
        entries.sort_by_key(|e| e.mid);

        let mid_file = dir.join("next-mid");
        let stored = match fs::read_to_string(&mid_file) {
            Ok(text) => text.trim().parse::<u64>().unwrap_or(1),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 1,
            Err(e) => return Err(err("cannot read", &mid_file)(e)),
        };
        let after_spool = entries.last().map_or(1, |e| e.mid + 1);
        let next = stored.max(after_spool).max(1);
        let spool = Spool {
            active,
            incoming,
            corrupt,
            mid_file,
            mids: Mutex::new(MidCounter {
                next,
                reserved_until: next,
            }),
        };
        Ok((spool, entries, damaged))
    }

    /// Where damaged files go.
    pub fn corrupt_dir(&self) -> &Path {
        &self.corrupt
    }

    /// A MID unique for the life of the spool, across restarts.
    pub fn allocate_mid(&self) -> Result<u64, SpoolError> {
        let mut mids = self.mids.lock().map_err(|_| {
            err("cannot allocate a MID in", &self.mid_file)(io::Error::other("lock poisoned"))
        })?;
        if mids.next >= mids.reserved_until {
            let until = mids.next + MID_BLOCK;
            write_durably(&self.mid_file, &self.incoming, until.to_string().as_bytes())?;
            mids.reserved_until = until;
        }
        let mid = mids.next;
        mids.next += 1;
        Ok(mid)
    }

    fn path(&self, mid: u64, attempts: u32) -> PathBuf {
        self.active.join(format!("{mid}.{attempts}"))
    }

    /// Writes a journal durably; when this returns Ok the journal survives a crash.
    pub fn write(&self, entry: &SpoolEntry, journal: &[u8]) -> Result<(), SpoolError> {
        let path = self.path(entry.mid, entry.attempts);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(MODE_WRITING)
            .open(&path)
            .map_err(err("cannot create", &path))?;
        let result = (|| {
            // Two writes: joining header and journal would copy the whole journal.
            file.write_all(render_header(entry).as_bytes())
                .and_then(|()| file.write_all(journal))
                .map_err(err("cannot write", &path))?;
            file.set_permissions(fs::Permissions::from_mode(MODE_WRITING | COMPLETE_BIT))
                .map_err(err("cannot mark complete", &path))?;
            file.sync_all().map_err(err("cannot sync", &path))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&path);
        }
        result
    }

    /// The journal bytes of a spooled entry.
    pub fn read_journal(&self, entry: &SpoolEntry) -> Result<Vec<u8>, SpoolError> {
        let path = self.path(entry.mid, entry.attempts);
        let mut bytes = fs::read(&path).map_err(err("cannot read", &path))?;
        let start = header_end(&bytes).ok_or_else(|| {
            err("damaged spool file", &path)(io::Error::new(
                io::ErrorKind::InvalidData,
                "no header end",
            ))
        })?;
        bytes.drain(..start);
        Ok(bytes)
    }

    /// Records a failed attempt (atomic rename to the new attempt count).
    pub fn record_attempt(&self, entry: &SpoolEntry, attempts: u32) -> Result<(), SpoolError> {
        let from = self.path(entry.mid, entry.attempts);
        let to = self.path(entry.mid, attempts);
        fs::rename(&from, &to).map_err(err("cannot rename", &from))?;
        sync_dir(&self.active)
    }

    /// The journal has left the queue.
    pub fn remove(&self, entry: &SpoolEntry) -> Result<(), SpoolError> {
        let path = self.path(entry.mid, entry.attempts);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err("cannot remove", &path)(e)),
        }
    }
}

/// temp file in `scratch`, write, fsync, rename into place, fsync the directory.
fn write_durably(path: &Path, scratch: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = scratch.join(format!("{name}.tmp"));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(err("cannot create", &tmp))?;
        file.write_all(bytes).map_err(err("cannot write", &tmp))?;
        file.sync_all().map_err(err("cannot sync", &tmp))?;
        fs::rename(&tmp, path).map_err(err("cannot rename", &tmp))?;
        if let Some(parent) = path.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("cannot sync directory", dir))
}

/// A journal file whose write never finished: no completion mark, and what is there
/// is (the start of) a current-format header. Anything else is judged by its header.
fn unfinished_write(path: &Path) -> bool {
    let Ok(meta) = fs::metadata(path) else {
        return false;
    };
    if meta.permissions().mode() & COMPLETE_BIT != 0 {
        return false;
    }
    let mut start = Vec::with_capacity(MAGIC.len());
    File::open(path)
        .and_then(|f| f.take(MAGIC.len() as u64).read_to_end(&mut start))
        .is_ok_and(|_| MAGIC.as_bytes().starts_with(&start))
}

/// Header values are ours or sanitised, but a Message-ID may hold anything: keep each
/// value on its line.
fn one_line(value: &str) -> String {
    value
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect()
}

fn render_header(e: &SpoolEntry) -> String {
    format!(
        "{MAGIC}\nmid {}\nenqueued-ms {}\nintake {}\nsender {}\neight-bit {}\nqueue-id {}\nmessage-id {}\nsize {}\n\n",
        e.mid,
        e.enqueued_ms,
        one_line(&e.intake),
        one_line(&e.sender),
        u8::from(e.eight_bit),
        one_line(&e.queue_id),
        one_line(&e.message_id),
        e.size
    )
}

fn header_end(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\n\n").map(|p| p + 2)
}

/// Reads the header of a spool file; the file name gives MID and attempts.
fn read_header(path: &Path) -> Result<SpoolEntry, String> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (mid, attempts) = name
        .split_once('.')
        .and_then(|(m, a)| Some((m.parse::<u64>().ok()?, a.parse::<u32>().ok()?)))
        .ok_or_else(|| format!("unexpected file name {name:?}"))?;
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    let end = header_end(&bytes).ok_or("no end of header")?;
    let header = String::from_utf8_lossy(&bytes[..end]);
    let mut lines = header.lines();
    if !matches!(lines.next(), Some(MAGIC | MAGIC_RENAMED)) {
        return Err("not a tdc-milter spool file".into());
    }
    let mut entry = SpoolEntry {
        mid,
        intake: String::new(),
        sender: String::new(),
        eight_bit: false,
        queue_id: String::new(),
        message_id: String::new(),
        enqueued_ms: 0,
        attempts,
        size: (bytes.len() - end) as u64,
    };
    let mut size_in_header = None;
    for line in lines.filter(|l| !l.is_empty()) {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "mid" if value.parse() == Ok(mid) => {}
            "mid" => return Err(format!("MID {value} does not match the file name")),
            "enqueued-ms" => entry.enqueued_ms = value.parse().map_err(|_| "bad enqueued-ms")?,
            "intake" => entry.intake = value.to_string(),
            "sender" => entry.sender = value.to_string(),
            "eight-bit" => entry.eight_bit = value == "1",
            "queue-id" => entry.queue_id = value.to_string(),
            "message-id" => entry.message_id = value.to_string(),
            "size" => size_in_header = value.parse::<u64>().ok(),
            _ => {}
        }
    }
    if entry.intake.is_empty() || entry.enqueued_ms == 0 {
        return Err("incomplete header".into());
    }
    if size_in_header != Some(entry.size) {
        return Err(format!(
            "journal is {} bytes, header says {:?}",
            entry.size, size_in_header
        ));
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(mid: u64) -> SpoolEntry {
        SpoolEntry {
            mid,
            intake: "i@intake.test".into(),
            sender: "tdc@gw.test".into(),
            eight_bit: true,
            queue_id: "Q1".into(),
            message_id: "<a\r\nb@x>".into(),
            enqueued_ms: 1_795_000_000_000,
            attempts: 0,
            size: 0,
        }
    }

    #[test]
    fn written_journals_come_back_after_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, found, damaged) = Spool::open(dir.path()).expect("open");
        assert!(found.is_empty() && damaged.is_empty());
        let mid = spool.allocate_mid().expect("mid");
        assert_eq!(mid, 1);
        let mut e = entry(mid);
        let journal = b"From: x\r\n\r\n\n\nbody with blank lines\r\n";
        e.size = journal.len() as u64;
        spool.write(&e, journal).expect("write");
        spool.record_attempt(&e, 1).expect("attempt");
        drop(spool);

        let (spool, found, _) = Spool::open(dir.path()).expect("reopen");
        assert_eq!(found.len(), 1);
        let back = &found[0];
        assert_eq!(back.attempts, 1);
        assert_eq!(back.message_id, "<a  b@x>");
        assert_eq!(
            (back.mid, back.size, back.eight_bit),
            (1, journal.len() as u64, true)
        );
        assert_eq!(spool.read_journal(back).expect("read"), journal);
        // MIDs continue past everything handed out before, even with an empty spool.
        spool.remove(back).expect("remove");
        let next = spool.allocate_mid().expect("mid");
        assert!(next > 1);
        drop(spool);
        let (spool, found, _) = Spool::open(dir.path()).expect("reopen");
        assert!(found.is_empty());
        assert!(spool.allocate_mid().expect("mid") > next);
    }

    fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) {
        fs::write(path, bytes).expect("write");
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn half_written_and_damaged_files_never_become_deliveries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, _, _) = Spool::open(dir.path()).expect("open");
        let mut e = entry(7);
        e.size = 3;
        spool.write(&e, b"abc").expect("write");
        let written = dir.path().join("active/7.0");
        let mode = fs::metadata(&written).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "marked complete");
        drop(spool);
        let whole = fs::read(&written).expect("read");
        let active = |name: &str| dir.path().join("active").join(name);
        // A marked file that is not a spool file, or is shorter than its header says:
        // damaged, moved aside.
        write_with_mode(&active("9.0"), b"garbage without header", 0o700);
        write_with_mode(&active("10.0"), &whole[..whole.len() - 1], 0o700);
        // Unmarked garbage is not ours to delete either.
        write_with_mode(&active("11.0"), b"garbage", 0o600);
        // Writes that never finished (no mark), cut anywhere: removed quietly, since
        // the MTA never heard they were spooled.
        write_with_mode(&active("12.0"), &whole, 0o600);
        write_with_mode(&active("13.0"), &whole[..10], 0o600);
        write_with_mode(&active("14.0"), b"", 0o600);
        // A file of the format before the mark was renamed into place complete.
        let renamed = String::from_utf8_lossy(&whole).replace(MAGIC, MAGIC_RENAMED);
        let renamed = renamed.replace("mid 7", "mid 15");
        write_with_mode(&active("15.0"), renamed.as_bytes(), 0o600);

        let (spool, found, damaged) = Spool::open(dir.path()).expect("reopen");
        assert_eq!(found.iter().map(|e| e.mid).collect::<Vec<_>>(), vec![7, 15]);
        assert_eq!(spool.read_journal(&found[1]).expect("read"), b"abc");
        let mut damaged: Vec<String> = damaged
            .iter()
            .filter_map(|d| d.path.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        damaged.sort();
        assert_eq!(damaged, ["10.0", "11.0", "9.0"]);
        for name in ["9.0", "10.0", "11.0"] {
            assert!(spool.corrupt_dir().join(name).exists(), "{name}");
        }
        for name in ["12.0", "13.0", "14.0"] {
            assert!(!active(name).exists(), "{name}");
        }
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, _, _) = Spool::open(dir.path()).expect("open");
        let mut e = entry(3);
        e.size = 1;
        spool.write(&e, b"x").expect("write");
        // The same name again: the write is refused and the first file kept intact.
        let error = spool.write(&e, b"y").expect_err("must fail");
        assert!(error.to_string().starts_with("cannot create"), "{error}");
        drop(spool);
        let (_, found, damaged) = Spool::open(dir.path()).expect("reopen");
        assert_eq!((found.len(), damaged.len()), (1, 0));
    }

    #[test]
    fn unwritable_spool_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("not-a-dir");
        fs::write(&file, b"x").expect("write");
        let e = Spool::open(&file.join("spool")).err().expect("must fail");
        assert!(
            e.to_string().starts_with("cannot create spool directory"),
            "{e}"
        );
    }
}
