//! The durable spool of the.tdc.queue: one file per journal, written before the
//! milter answers the MTA, so a crash or restart loses nothing still in its lifetime.
//!
//! A journal is marked complete the way Postfix marks its queue files (cleanup's
//! `mail_stream_finish`): the owner-execute bit is set, then the file is fsynced, once;
//! its header also carries the journal's size and CRC-32. A file without the mark is a
//! write that never finished, was never acknowledged to the MTA, and is dropped at
//! start; a marked file must match its size and CRC. While free files last, that one
//! fsync, with no directory sync, is the end-of-message cost: the journal's content
//! and mark are durable wherever its name ends up, because the start scans every
//! place a name can be.
//!
//! Files of delivered journals are recycled rather than deleted: taking a new inode
//! for every journal and freeing it again was over a third of the daemon's CPU on an
//! ext4 without journal (the kernel's `recently_deleted` scan; `docs/BENCHMARKS.md`),
//! and overwriting a file of the same size allocates no blocks either. A recycled file
//! waits in `free/`; a new journal is written into it, marked, fsynced, and renamed to
//! its name in `active/`.
//!
//! # Power loss
//!
//! A power cut keeps only what a completed fsync covered; anything else may or may
//! not reach the disk, in any order (the rules, and the simulation that checks them,
//! are in `storage.rs` and `power_loss.rs`). So:
//!
//! * A journal that leaves the queue is first **invalidated**: its magic is
//!   overwritten with `FREED` and the mark cleared, then fsynced; only then is the
//!   file renamed to `free/` or removed, neither of which needs to be durable. A file
//!   that starts with `FREED` is free wherever a power loss left its name, so an
//!   undone release can never bring a delivered journal back.
//! * Because every free file was invalidated durably, a completion mark that reaches
//!   the disk before the new journal's data (the disk may write the mode first) marks
//!   a `FREED` file, which is still free: the old journal cannot come back with a
//!   valid CRC. Files found free at a start are invalidated before they join the pool.
//! * A journal written into a new file (no free file left) also syncs `active/`, as
//!   its name would otherwise not be durable; a recycled file's name already is.
//!
//! The cost of this is one fsync per delivered journal, in the delivery path, and none
//! more at the end of a message while free files last.
//!
//! ```text
//! SPOOL/active/<mid>.<attempts>   header lines, an empty line, the journal bytes
//! SPOOL/free/s<n>                 invalidated files waiting to be reused
//! SPOOL/incoming/next-mid.tmp     the MID counter being replaced; removed at start
//! SPOOL/next-mid                  MIDs handed out are below this number
//! ```
//!
//! Format 1 files (tdc-milter before the completion mark) were renamed into place
//! once complete, so they are taken back whatever their mode and without a CRC.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

mod format;

use super::storage::{Disk, Storage, StorageFile};
use crate::record::Record;
#[cfg(test)]
use format::MAGIC_RENAMED;
use format::{header_end, render_header, FREED, MAGIC};

/// The mode of a journal being written, and the bit that marks it complete.
const MODE_WRITING: u32 = 0o600;
const COMPLETE_BIT: u32 = 0o100;
/// Files kept for reuse: enough for the journals in flight under load (a journal
/// beyond them costs a new inode again, and freeing its blocks), and no more than
/// 64 MiB of disk held after a burst, against `queue.max_bytes` of 2 GiB by default;
/// a journal's file over 2 MiB is not kept. With 16 MiB, 1 MB journals from 20
/// sessions still took a new inode each: the kernel's inode allocation was then a
/// fifth of the daemon's CPU (`docs/BENCHMARKS.md`).
const FREE_FILES: usize = 4096;
const FREE_BYTES: u64 = 64 * 1024 * 1024;
const FREE_FILE_MAX: u64 = 2 * 1024 * 1024;
/// MIDs are reserved in blocks so the counter file is written rarely, and a MID is
/// never reused after a crash.
const MID_BLOCK: u64 = 1000;

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
    disk: Box<dyn Storage>,
    active: PathBuf,
    free: PathBuf,
    incoming: PathBuf,
    mid_file: PathBuf,
    mids: Mutex<MidCounter>,
    free_files: Mutex<FreePool>,
    /// Names for released files: unique for the life of the process.
    next_free_name: std::sync::atomic::AtomicU64,
}

/// The files in `free/`, and their bytes.
#[derive(Default)]
struct FreePool {
    files: Vec<(PathBuf, u64)>,
    bytes: u64,
}

impl FreePool {
    fn has_room(&self, size: u64) -> bool {
        self.files.len() < FREE_FILES && self.bytes + size <= FREE_BYTES && size <= FREE_FILE_MAX
    }

    fn push(&mut self, path: PathBuf, size: u64) {
        self.bytes += size;
        self.files.push((path, size));
    }

    fn pop(&mut self) -> Option<PathBuf> {
        let (path, size) = self.files.pop()?;
        self.bytes = self.bytes.saturating_sub(size);
        Some(path)
    }
}

struct MidCounter {
    next: u64,
    reserved_until: u64,
}

impl Spool {
    /// Opens (creating) the spool and returns what it holds.
    pub fn open(dir: &Path) -> Result<(Spool, Vec<Record>, Vec<Damaged>), SpoolError> {
        Spool::open_on(Box::new(Disk), dir)
    }

    /// [`Spool::open`] on any storage (a simulated disk in the power-loss tests).
    pub fn open_on(
        disk: Box<dyn Storage>,
        dir: &Path,
    ) -> Result<(Spool, Vec<Record>, Vec<Damaged>), SpoolError> {
        let active = dir.join("active");
        let free = dir.join("free");
        let incoming = dir.join("incoming");
        let corrupt = dir.join("corrupt");
        for d in [dir, &active, &free, &incoming] {
            disk.create_dir_all(d)
                .map_err(err("cannot create spool directory", d))?;
        }
        for d in [&active, &free, &incoming] {
            let meta = disk.stat(d).map_err(err("cannot read", d))?;
            if !meta.is_dir {
                return Err(err("not a directory (a link is not followed):", d)(
                    io::Error::new(io::ErrorKind::InvalidInput, "remove it and restart"),
                ));
            }
        }
        // Leftovers of writes that never completed were never acknowledged as spooled;
        // their originals were accepted with a log line saying the journal failed.
        for path in disk
            .list(&incoming)
            .map_err(err("cannot read", &incoming))?
        {
            let _ = disk.remove(&path);
        }
        let mut entries = Vec::new();
        let mut damaged = Vec::new();
        let mut free_files = Vec::new();
        let mut moved = false;
        for place in [&active, &free] {
            for path in disk.list(place).map_err(err("cannot read", place))? {
                if !disk.stat(&path).is_ok_and(|m| m.is_file) {
                    damaged.push(Damaged {
                        path,
                        reason: "not a regular file (a link or a directory is not followed)".into(),
                    });
                    continue;
                }
                // A released file is free wherever it is. In free/, every unmarked file
                // is free, whatever it held; in active/, an unmarked file of this
                // format was never acknowledged.
                let unmarked = if freed(&*disk, &path) {
                    true
                } else if place == &free {
                    !marked(&*disk, &path)
                } else {
                    unfinished_write(&*disk, &path)
                };
                if unmarked {
                    free_files.push(path);
                    continue;
                }
                match read_record(&*disk, &path) {
                    Ok(entry) => {
                        // A recycled file whose rename into place did not reach the
                        // disk before a crash: the header says which journal it is.
                        let canonical = active.join(format!("{}.{}", entry.mid, entry.attempts));
                        if path != canonical {
                            disk.rename(&path, &canonical)
                                .map_err(err("cannot rename", &path))?;
                            moved = true;
                        }
                        entries.push(entry);
                    }
                    Err(reason) => damaged.push(Damaged { path, reason }),
                }
            }
        }
        if moved {
            sync_dir(&*disk, &active)?;
        }
        if !damaged.is_empty() {
            disk.create_dir_all(&corrupt)
                .map_err(err("cannot create spool directory", &corrupt))?;
            for d in &damaged {
                if let Some(name) = d.path.file_name() {
                    let _ = disk.rename(&d.path, &corrupt.join(name));
                }
            }
        }
        entries.sort_by_key(|e| e.mid);
        // Released files are named s<n>, n counting up from past every name there.
        let mut next_name = free_files
            .iter()
            .filter(|p| p.parent() == Some(free.as_path()))
            .filter_map(|p| {
                p.file_name()?
                    .to_str()?
                    .strip_prefix('s')?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .map_or(0, |n| n + 1);
        let mut pool = FreePool::default();
        for path in free_files {
            let size = disk.stat(&path).map_or(u64::MAX, |m| m.len);
            let to = if path.parent() == Some(free.as_path()) {
                path.clone()
            } else {
                next_name += 1;
                free.join(format!("s{}", next_name - 1))
            };
            // Whatever a free file held (an unfinished write can hold a whole journal
            // with a valid CRC), it is durably invalidated before it can be reused:
            // a completion mark that reaches the disk ahead of the new data must
            // never bring the old content back.
            let keep = pool.has_room(size)
                && invalidate(&*disk, &path).is_ok()
                && (path == to || disk.rename(&path, &to).is_ok());
            if keep {
                pool.push(to, size);
            } else {
                let _ = disk.remove(&path);
            }
        }

        let mid_file = dir.join("next-mid");
        let stored = match disk.read(&mid_file) {
            Ok(text) => String::from_utf8_lossy(&text)
                .trim()
                .parse::<u64>()
                .unwrap_or(1),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 1,
            Err(e) => return Err(err("cannot read", &mid_file)(e)),
        };
        let after_spool = entries.last().map_or(1, |e| e.mid + 1);
        let next = stored.max(after_spool).max(1);
        let spool = Spool {
            disk,
            active,
            free,
            incoming,
            mid_file,
            mids: Mutex::new(MidCounter {
                next,
                reserved_until: next,
            }),
            free_files: Mutex::new(pool),
            next_free_name: std::sync::atomic::AtomicU64::new(next_name),
        };
        Ok((spool, entries, damaged))
    }

    /// Where damaged files go.
    #[cfg(test)]
    pub fn corrupt_dir(&self) -> PathBuf {
        self.active.with_file_name("corrupt")
    }

    /// A MID unique for the life of the spool, across restarts.
    pub fn allocate_mid(&self) -> Result<u64, SpoolError> {
        let mut mids = self.mids.lock().map_err(|_| {
            err("cannot allocate a MID in", &self.mid_file)(io::Error::other("lock poisoned"))
        })?;
        if mids.next >= mids.reserved_until {
            let until = mids.next + MID_BLOCK;
            write_durably(
                &*self.disk,
                &self.mid_file,
                &self.incoming,
                until.to_string().as_bytes(),
            )?;
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
    pub fn write(&self, entry: &Record, journal: &[u8]) -> Result<(), SpoolError> {
        let path = self.path(entry.mid, entry.attempts);
        let header = render_header(entry, crc32fast::hash(journal));
        let Some(recycled) = self.take_free_file() else {
            // A new name is durable only with its directory: the one extra sync of a
            // journal that finds no free file.
            let file = self
                .disk
                .create(&path, MODE_WRITING)
                .map_err(err("cannot create", &path))?;
            let result = write_marked(file, &path, &header, journal)
                .and_then(|()| sync_dir(&*self.disk, &self.active));
            if result.is_err() {
                self.discard(&path);
            }
            return result;
        };
        // The free file's name is durable (free/, or where a power loss left it) and
        // its old content durably invalidated, so the one fsync of the file suffices:
        // the journal is found under whichever name the rename reached.
        let result = self
            .disk
            .open(&recycled)
            .map_err(err("cannot open", &recycled))
            .and_then(|file| write_marked(file, &recycled, &header, journal))
            .and_then(|()| {
                self.disk
                    .rename(&recycled, &path)
                    .map_err(err("cannot rename", &recycled))
            });
        if result.is_err() {
            // Marked or half written, it must not be taken for a journal or reused.
            self.discard(&recycled);
        }
        result
    }

    /// A file that must not become a journal: invalidated as far as the disk allows,
    /// then removed.
    fn discard(&self, path: &Path) {
        let _ = invalidate(&*self.disk, path);
        let _ = self.disk.remove(path);
    }

    fn take_free_file(&self) -> Option<PathBuf> {
        self.free_files.lock().ok()?.pop()
    }

    /// The journal bytes of a spooled entry.
    pub fn read_journal(&self, entry: &Record) -> Result<Vec<u8>, SpoolError> {
        let path = self.path(entry.mid, entry.attempts);
        let mut bytes = self.disk.read(&path).map_err(err("cannot read", &path))?;
        let start = header_end(&bytes).ok_or_else(|| {
            err("damaged spool file", &path)(io::Error::new(
                io::ErrorKind::InvalidData,
                "no header end",
            ))
        })?;
        bytes.drain(..start);
        Ok(bytes)
    }

    /// Records a failed attempt (atomic rename to the new attempt count). The rename
    /// is durable after [`Spool::sync_attempts`]; until then a power loss can only
    /// cost the count, so a journal may be tried once more than the table says.
    pub fn record_attempt(&self, entry: &Record, attempts: u32) -> Result<(), SpoolError> {
        let from = self.path(entry.mid, entry.attempts);
        let to = self.path(entry.mid, attempts);
        self.disk
            .rename(&from, &to)
            .map_err(err("cannot rename", &from))
    }

    /// Makes the recorded attempts durable (an fsync of `active/`: for a blocking
    /// thread).
    pub fn sync_attempts(&self) -> Result<(), SpoolError> {
        sync_dir(&*self.disk, &self.active)
    }

    /// The journal has left the queue: its file is invalidated (durably, before
    /// anything else: neither a release nor a removal is durable, and a power loss
    /// that undoes one must not bring the journal back), then kept for reuse or
    /// removed.
    pub fn remove(&self, entry: &Record) -> Result<(), SpoolError> {
        let path = self.path(entry.mid, entry.attempts);
        match invalidate(&*self.disk, &path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(err("cannot invalidate", &path)(e)),
        }
        if self.release(&path, entry.size) {
            return Ok(());
        }
        match self.disk.remove(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err("cannot remove", &path)(e)),
        }
    }

    /// Moves an invalidated file to `free/`; false if it was not kept.
    fn release(&self, path: &Path, size: u64) -> bool {
        let Ok(mut pool) = self.free_files.lock() else {
            return false;
        };
        if !pool.has_room(size) {
            return false;
        }
        let n = self
            .next_free_name
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let to = self.free.join(format!("s{n}"));
        if self.disk.rename(path, &to).is_err() {
            return false;
        }
        pool.push(to, size);
        true
    }
}

/// Header, journal, the completion mark, one fsync. The file may be a recycled one
/// that was longer: it is cut to what was written.
fn write_marked(
    mut file: Box<dyn StorageFile>,
    path: &Path,
    header: &str,
    journal: &[u8],
) -> Result<(), SpoolError> {
    // Two writes: joining header and journal would copy the whole journal.
    file.write_at(0, header.as_bytes())
        .and_then(|()| file.write_at(header.len() as u64, journal))
        .and_then(|()| file.set_len((header.len() + journal.len()) as u64))
        .map_err(err("cannot write", path))?;
    file.set_mode(MODE_WRITING | COMPLETE_BIT)
        .map_err(err("cannot mark complete", path))?;
    file.sync().map_err(err("cannot sync", path))
}

/// Overwrites the magic with [`FREED`], unmarks, fsyncs: from here on the file is
/// free whatever else a power loss keeps or drops.
fn invalidate(disk: &dyn Storage, path: &Path) -> io::Result<()> {
    let mut file = disk.open(path)?;
    file.write_at(0, FREED.as_bytes())?;
    file.set_mode(MODE_WRITING)?;
    file.sync()
}

/// Whether a file starts with [`FREED`].
fn freed(disk: &dyn Storage, path: &Path) -> bool {
    disk.read_prefix(path, FREED.len())
        .is_ok_and(|start| start == FREED.as_bytes())
}

/// temp file in `scratch`, write, fsync, rename into place, fsync the directory.
fn write_durably(
    disk: &dyn Storage,
    path: &Path,
    scratch: &Path,
    bytes: &[u8],
) -> Result<(), SpoolError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = scratch.join(format!("{name}.tmp"));
    let result = (|| {
        match disk.remove(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err("cannot remove", &tmp)(e)),
        }
        let mut file = disk
            .create(&tmp, MODE_WRITING)
            .map_err(err("cannot create", &tmp))?;
        file.write_at(0, bytes).map_err(err("cannot write", &tmp))?;
        file.sync().map_err(err("cannot sync", &tmp))?;
        disk.rename(&tmp, path)
            .map_err(err("cannot rename", &tmp))?;
        if let Some(parent) = path.parent() {
            sync_dir(disk, parent)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = disk.remove(&tmp);
    }
    result
}

fn sync_dir(disk: &dyn Storage, dir: &Path) -> Result<(), SpoolError> {
    disk.sync_dir(dir)
        .map_err(err("cannot sync directory", dir))
}

/// Whether a file carries the completion mark.
fn marked(disk: &dyn Storage, path: &Path) -> bool {
    disk.stat(path).is_ok_and(|m| m.mode & COMPLETE_BIT != 0)
}

/// A journal file whose write never finished: no completion mark, and what is there
/// is (the start of) a current-format header. Anything else is judged by its header.
fn unfinished_write(disk: &dyn Storage, path: &Path) -> bool {
    if marked(disk, path) {
        return false;
    }
    disk.read_prefix(path, MAGIC.len())
        .is_ok_and(|start| MAGIC.as_bytes().starts_with(&start))
}

/// The record in a spool file's header, checked against the journal it holds.
fn read_record(disk: &dyn Storage, path: &Path) -> Result<Record, String> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bytes = disk.read(path).map_err(|e| e.to_string())?;
    format::parse(&name, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn entry(mid: u64) -> Record {
        Record {
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
        spool.sync_attempts().expect("sync");
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
        // They are free files now.
        assert_eq!(
            fs::read_dir(dir.path().join("free")).expect("free").count(),
            3
        );
    }

    #[test]
    fn links_in_the_spool_are_never_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("outside");
        let (spool, _, _) = Spool::open(dir.path()).expect("open");
        let mut e = entry(3);
        e.size = 3;
        spool.write(&e, b"abc").expect("write");
        drop(spool);
        // A valid journal outside the spool, linked in as active/4.0 and as a free file.
        let planted = outside.path().join("planted");
        fs::copy(dir.path().join("active/3.0"), &planted).expect("copy");
        fs::set_permissions(&planted, fs::Permissions::from_mode(0o700)).expect("chmod");
        let victim = outside.path().join("victim");
        fs::write(&victim, "keep me").expect("victim");
        std::os::unix::fs::symlink(&planted, dir.path().join("active/4.0")).expect("link");
        std::os::unix::fs::symlink(&victim, dir.path().join("free/s9")).expect("link");

        let (spool, found, damaged) = Spool::open(dir.path()).expect("reopen");
        assert_eq!(found.iter().map(|e| e.mid).collect::<Vec<_>>(), vec![3]);
        let mut names: Vec<_> = damaged
            .iter()
            .map(|d| d.path.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        assert_eq!(names, [Some("4.0".to_string()), Some("s9".to_string())]);
        assert!(damaged.iter().all(|d| d.reason.contains("not followed")));
        // Writing new journals reuses no link, and leaves the files outside alone.
        for mid in 10..20 {
            spooled(&spool, mid, b"new journal bytes");
        }
        assert_eq!(fs::read_to_string(&victim).expect("victim"), "keep me");
        assert!(fs::symlink_metadata(spool.corrupt_dir().join("4.0"))
            .expect("moved aside")
            .file_type()
            .is_symlink());

        // A spool subdirectory that is a link makes the start fail, naming it.
        drop(spool);
        fs::remove_dir_all(dir.path().join("incoming")).expect("rm");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("incoming")).expect("link");
        let e = Spool::open(dir.path())
            .err()
            .expect("a linked incoming/ is refused");
        assert!(e.to_string().contains("incoming"), "{e}");
        assert!(victim.exists());
    }

    fn ino(path: &Path) -> u64 {
        std::os::unix::fs::MetadataExt::ino(&fs::metadata(path).expect("stat"))
    }

    fn spooled(spool: &Spool, mid: u64, journal: &[u8]) -> Record {
        let mut e = entry(mid);
        e.message_id = "<m@x>".into();
        e.size = journal.len() as u64;
        spool.write(&e, journal).expect("write");
        e
    }

    #[test]
    fn delivered_files_are_reused_not_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, _, _) = Spool::open(dir.path()).expect("open");
        let long = vec![b'x'; 5000];
        let first = spooled(&spool, 1, &long);
        let inode = ino(&spool.path(1, 0));
        spool.remove(&first).expect("remove");
        assert!(!spool.path(1, 0).exists());
        let second = spooled(&spool, 2, b"short");
        assert_eq!(ino(&spool.path(2, 0)), inode, "the same file");
        assert_eq!(spool.read_journal(&second).expect("read"), b"short");
        let mode = fs::metadata(spool.path(2, 0))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        drop(spool);
        let (_, found, damaged) = Spool::open(dir.path()).expect("reopen");
        assert_eq!(found, vec![second]);
        assert!(damaged.is_empty(), "{damaged:?}");
    }

    #[test]
    fn free_files_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, _, _) = Spool::open(dir.path()).expect("open");
        // By bytes: 1000 KiB journals, more than FREE_BYTES of them (the bound counts
        // journal bytes when a file is released, whole files at a start; the headers
        // of these do not change the count).
        let journal = vec![b'j'; 1000 * 1024];
        let count = FREE_BYTES / journal.len() as u64 + 5;
        let entries: Vec<Record> = (1..=count)
            .map(|mid| spooled(&spool, mid, &journal))
            .collect();
        for e in &entries {
            spool.remove(e).expect("remove");
        }
        let kept = FREE_BYTES / journal.len() as u64;
        let free = fs::read_dir(dir.path().join("free")).expect("free").count();
        assert_eq!(free as u64, kept);
        assert_eq!(
            fs::read_dir(dir.path().join("active"))
                .expect("active")
                .count(),
            0
        );
        // By size: a big journal's file is not kept.
        let other = tempfile::tempdir().expect("tempdir");
        let (spool, _, _) = Spool::open(other.path()).expect("open");
        let big = spooled(&spool, 1, &vec![b'b'; FREE_FILE_MAX as usize + 1]);
        spool.remove(&big).expect("remove");
        assert!(spool.free_files.lock().expect("pool").files.is_empty());
        // By count, the pool's own rule.
        let mut pool = FreePool::default();
        for n in 0..FREE_FILES {
            assert!(pool.has_room(1));
            pool.push(PathBuf::from(format!("s{n}")), 1);
        }
        assert!(!pool.has_room(1));
        // Reopening finds the free files again, within the same bounds.
        drop(spool);
        let (spool, _, _) = Spool::open(dir.path()).expect("reopen");
        assert_eq!(
            spool.free_files.lock().expect("pool").files.len() as u64,
            kept
        );
    }

    /// What a crash can leave of a recycled file: the journal under a free file's name
    /// or under the name of the journal the file held before.
    #[test]
    fn recycled_files_are_found_wherever_a_crash_left_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, _, _) = Spool::open(dir.path()).expect("open");
        let a = spooled(&spool, 1, b"journal one");
        let b = spooled(&spool, 2, b"journal two");
        let c = spooled(&spool, 3, b"journal three");
        spool.record_attempt(&c, 2).expect("attempt");
        drop(spool);
        let active = dir.path().join("active");
        let free = dir.path().join("free");
        // 1: written into free/s7, marked and fsynced, the rename lost.
        fs::rename(active.join("1.0"), free.join("s7")).expect("mv");
        // 2: written into the file of an earlier journal 9, whose release was lost.
        fs::rename(active.join("2.0"), active.join("9.4")).expect("mv");
        // A released file of the format before the mark: free, never a journal.
        let old = fs::read(active.join("3.2")).expect("read");
        let old = String::from_utf8_lossy(&old).replace(MAGIC, MAGIC_RENAMED);
        write_with_mode(&free.join("s3"), old.as_bytes(), 0o600);
        // A marked file whose content does not match its CRC.
        let bytes = fs::read(active.join("3.2")).expect("read");
        let mut flipped = bytes.clone();
        if let Some(last) = flipped.last_mut() {
            *last ^= 1;
        }
        write_with_mode(
            &active.join("4.0"),
            &String::from_utf8_lossy(&flipped)
                .replace("mid 3", "mid 4")
                .into_bytes(),
            0o700,
        );

        let (spool, found, damaged) = Spool::open(dir.path()).expect("reopen");
        let mut want_c = c.clone();
        want_c.attempts = 2;
        assert_eq!(found, vec![a.clone(), b.clone(), want_c]);
        assert!(spool.path(1, 0).exists() && spool.path(2, 0).exists());
        assert_eq!(spool.read_journal(&found[1]).expect("read"), b"journal two");
        assert_eq!(damaged.len(), 1, "{damaged:?}");
        assert!(
            damaged[0].reason.contains("CRC-32"),
            "{}",
            damaged[0].reason
        );
        assert_eq!(spool.free_files.lock().expect("pool").files.len(), 1, "s3");
        // Names for released files do not clobber the free file already there.
        spool.remove(&a).expect("remove");
        assert_eq!(fs::read_dir(&free).expect("free").count(), 2);
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
