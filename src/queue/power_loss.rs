//! A power-loss simulation of the spool: a [`Storage`] that keeps, beside what the
//! process sees, what the disk holds, and at a simulated power failure loses every
//! change that no completed sync covered (the rules are in `storage.rs`). Unlike a
//! `kill -9`, which keeps the page cache, this is what a power cut or a kernel crash
//! can leave.
//!
//! A scripted sequence of enqueues, deliveries and retries runs once to count its
//! storage operations, then once per operation with the power cut just before it.
//! For each cut, several disks are tried: the strict one (nothing unsynced survives),
//! everything surviving, and each unsynced data or mode change surviving alone or
//! missing alone (a disk may write those in any order), each with every prefix of the
//! unsynced name changes (which a journaling file system commits in order). After
//! every one, recovery must find each acknowledged, undelivered journal exactly once,
//! with its bytes, and no delivered one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::storage::{Stat, Storage, StorageFile};

#[derive(Debug, Clone)]
struct Inode {
    data: Vec<u8>,
    mode: u32,
}

/// One file system image: inodes and the names that point at them.
#[derive(Debug, Clone, Default)]
struct Image {
    inodes: HashMap<u64, Inode>,
    names: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
}

#[derive(Debug, Clone)]
enum Op {
    WriteAt {
        ino: u64,
        offset: u64,
        bytes: Vec<u8>,
    },
    SetLen {
        ino: u64,
        len: u64,
    },
    SetMode {
        ino: u64,
        mode: u32,
    },
    Create {
        path: PathBuf,
        ino: u64,
        mode: u32,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
        ino: u64,
    },
    Remove {
        path: PathBuf,
        ino: u64,
    },
}

impl Op {
    /// The inode whose data or mode this changes; `None` for a name change.
    fn data_of(&self) -> Option<u64> {
        match self {
            Op::WriteAt { ino, .. } | Op::SetLen { ino, .. } | Op::SetMode { ino, .. } => {
                Some(*ino)
            }
            _ => None,
        }
    }

    /// The directory a name change is made durable by.
    fn dir(&self) -> Option<&Path> {
        match self {
            Op::Create { path, .. } | Op::Remove { path, .. } => path.parent(),
            Op::Rename { to, .. } => to.parent(),
            _ => None,
        }
    }
}

fn inode(image: &mut Image, ino: u64) -> &mut Inode {
    image.inodes.entry(ino).or_insert(Inode {
        data: Vec::new(),
        mode: 0o600,
    })
}

fn apply(image: &mut Image, op: &Op) {
    match op {
        Op::WriteAt { ino, offset, bytes } => {
            let data = &mut inode(image, *ino).data;
            let end = *offset as usize + bytes.len();
            if data.len() < end {
                data.resize(end, 0);
            }
            data[*offset as usize..end].copy_from_slice(bytes);
        }
        Op::SetLen { ino, len } => inode(image, *ino).data.resize(*len as usize, 0),
        Op::SetMode { ino, mode } => inode(image, *ino).mode = *mode,
        Op::Create { path, ino, mode } => {
            image.inodes.entry(*ino).or_insert(Inode {
                data: Vec::new(),
                mode: *mode,
            });
            image.names.insert(path.clone(), *ino);
        }
        Op::Rename { from, to, ino } => {
            if image.names.get(from) == Some(ino) {
                image.names.remove(from);
            }
            inode(image, *ino);
            image.names.insert(to.clone(), *ino);
        }
        Op::Remove { path, ino } => {
            if image.names.get(path) == Some(ino) {
                image.names.remove(path);
            }
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// What the process sees.
    live: Image,
    /// What the disk holds for certain.
    durable: Image,
    /// Changes in `live` not yet in `durable`, oldest first.
    pending: Vec<Op>,
    next_ino: u64,
    /// Mutating operations so far, and the one the power is cut before.
    ops: u64,
    cut_at: Option<u64>,
    cut: bool,
}

/// Which unsynced changes reach the disk at the cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Survivors {
    /// The first this many unsynced name changes.
    pub names: usize,
    /// Indices (among the unsynced data and mode changes) of those that survive.
    pub data: BTreeSet<usize>,
}

#[derive(Clone, Default)]
pub struct SimDisk(Arc<Mutex<Inner>>);

impl SimDisk {
    /// A disk on which the power is cut just before mutating operation `cut_at`
    /// (counted from 1); every operation from there on fails.
    pub fn cut_before(cut_at: Option<u64>) -> SimDisk {
        let disk = SimDisk::default();
        disk.lock().cut_at = cut_at;
        disk
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    pub fn was_cut(&self) -> bool {
        self.lock().cut
    }

    /// Every choice of survivors this test tries for the current unsynced changes.
    pub fn survivor_choices(&self) -> Vec<Survivors> {
        let inner = self.lock();
        let names = inner
            .pending
            .iter()
            .filter(|o| o.data_of().is_none())
            .count();
        let data = inner.pending.len() - names;
        let all: BTreeSet<usize> = (0..data).collect();
        let mut data_choices = vec![BTreeSet::new(), all.clone()];
        for i in 0..data {
            data_choices.push(BTreeSet::from([i]));
            let mut but = all.clone();
            but.remove(&i);
            data_choices.push(but);
        }
        let mut out = Vec::new();
        for n in 0..=names {
            for d in &data_choices {
                let choice = Survivors {
                    names: n,
                    data: d.clone(),
                };
                if !out.contains(&choice) {
                    out.push(choice);
                }
            }
        }
        out
    }

    /// The disk as the next boot finds it: what was durable, plus `survivors`.
    pub fn after_cut(&self, survivors: &Survivors) -> SimDisk {
        let inner = self.lock();
        let mut image = inner.durable.clone();
        let (mut name_i, mut data_i) = (0, 0);
        for op in &inner.pending {
            let keep = if op.data_of().is_some() {
                data_i += 1;
                survivors.data.contains(&(data_i - 1))
            } else {
                name_i += 1;
                name_i <= survivors.names
            };
            if keep {
                apply(&mut image, op);
            }
        }
        let next = SimDisk::default();
        {
            let mut n = next.lock();
            n.live = image.clone();
            n.durable = image;
            n.next_ino = inner.next_ino;
        }
        next
    }

    /// Counts a mutating operation; fails from the cut on.
    fn step(inner: &mut Inner) -> io::Result<()> {
        inner.ops += 1;
        if inner.cut || inner.cut_at == Some(inner.ops) {
            inner.cut = true;
            return Err(io::Error::other("simulated power loss"));
        }
        Ok(())
    }

    fn change(&self, op: Op) -> io::Result<()> {
        let mut inner = self.lock();
        SimDisk::step(&mut inner)?;
        apply(&mut inner.live, &op);
        inner.pending.push(op);
        Ok(())
    }

    fn ino_of(inner: &Inner, path: &Path) -> io::Result<u64> {
        inner
            .live
            .names
            .get(path)
            .copied()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
}

struct SimFile {
    disk: SimDisk,
    ino: u64,
}

impl StorageFile for SimFile {
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.disk.change(Op::WriteAt {
            ino: self.ino,
            offset,
            bytes: bytes.to_vec(),
        })
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.disk.change(Op::SetLen { ino: self.ino, len })
    }

    fn set_mode(&mut self, mode: u32) -> io::Result<()> {
        self.disk.change(Op::SetMode {
            ino: self.ino,
            mode,
        })
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut inner = self.disk.lock();
        SimDisk::step(&mut inner)?;
        let pending = std::mem::take(&mut inner.pending);
        for op in pending {
            if op.data_of() == Some(self.ino) {
                apply(&mut inner.durable, &op);
            } else {
                inner.pending.push(op);
            }
        }
        Ok(())
    }
}

impl Storage for SimDisk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Directories are made once, at the first start: durable at once.
        let mut inner = self.lock();
        for d in dir.ancestors() {
            inner.live.dirs.insert(d.to_path_buf());
            inner.durable.dirs.insert(d.to_path_buf());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let inner = self.lock();
        Ok(inner
            .live
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect())
    }

    fn stat(&self, path: &Path) -> io::Result<Stat> {
        let inner = self.lock();
        if inner.live.dirs.contains(path) {
            return Ok(Stat {
                is_file: false,
                is_dir: true,
                mode: 0o700,
                len: 0,
            });
        }
        let ino = SimDisk::ino_of(&inner, path)?;
        let node = &inner.live.inodes[&ino];
        Ok(Stat {
            is_file: true,
            is_dir: false,
            mode: node.mode,
            len: node.data.len() as u64,
        })
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let inner = self.lock();
        let ino = SimDisk::ino_of(&inner, path)?;
        Ok(inner.live.inodes[&ino].data.clone())
    }

    fn read_prefix(&self, path: &Path, n: usize) -> io::Result<Vec<u8>> {
        let mut bytes = self.read(path)?;
        bytes.truncate(n);
        Ok(bytes)
    }

    fn create(&self, path: &Path, mode: u32) -> io::Result<Box<dyn StorageFile>> {
        let ino = {
            let mut inner = self.lock();
            if inner.live.names.contains_key(path) {
                return Err(io::Error::from(io::ErrorKind::AlreadyExists));
            }
            inner.next_ino += 1;
            inner.next_ino
        };
        self.change(Op::Create {
            path: path.to_path_buf(),
            ino,
            mode,
        })?;
        Ok(Box::new(SimFile {
            disk: self.clone(),
            ino,
        }))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let ino = SimDisk::ino_of(&self.lock(), path)?;
        Ok(Box::new(SimFile {
            disk: self.clone(),
            ino,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let ino = SimDisk::ino_of(&self.lock(), from)?;
        self.change(Op::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            ino,
        })
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let ino = SimDisk::ino_of(&self.lock(), path)?;
        self.change(Op::Remove {
            path: path.to_path_buf(),
            ino,
        })
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut inner = self.lock();
        SimDisk::step(&mut inner)?;
        let Some(last) = inner.pending.iter().rposition(|op| op.dir() == Some(dir)) else {
            return Ok(());
        };
        let pending = std::mem::take(&mut inner.pending);
        for (i, op) in pending.into_iter().enumerate() {
            if i <= last && op.data_of().is_none() {
                apply(&mut inner.durable, &op);
            } else {
                inner.pending.push(op);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::spool::Spool;
    use crate::record::Record;

    const DIR: &str = "/spool";

    fn journal_bytes(mid: u64) -> Vec<u8> {
        // Sizes differ, so a recycled file is cut to a shorter journal as well as
        // overwritten by a longer one.
        format!("journal {mid} ")
            .repeat(3 + (mid as usize * 7) % 11)
            .into_bytes()
    }

    fn entry(mid: u64) -> Record {
        Record {
            mid,
            intake: "i@intake.test".into(),
            sender: "tdc@gw.test".into(),
            eight_bit: false,
            queue_id: format!("Q{mid}"),
            message_id: format!("<{mid}@x>"),
            enqueued_ms: 1_795_000_000_000,
            attempts: 0,
            size: journal_bytes(mid).len() as u64,
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// A new journal: allocate its MID, write it (acknowledged when that returns).
        Enqueue,
        /// The n-th enqueued journal was delivered: it leaves the spool.
        Deliver(usize),
        /// The n-th enqueued journal failed once and is retried.
        Retry(usize),
    }

    /// Enqueues and deliveries interleaved so that new files, recycled files (longer
    /// and shorter than before), a retry and each release all happen.
    const SCRIPT: &[Step] = &[
        Step::Enqueue,
        Step::Enqueue,
        Step::Deliver(0),
        Step::Enqueue,
        Step::Retry(1),
        Step::Deliver(1),
        Step::Enqueue,
        Step::Deliver(2),
        Step::Enqueue,
        Step::Enqueue,
        Step::Deliver(4),
    ];

    /// What the script got done before the power went.
    #[derive(Debug, Default)]
    struct Progress {
        allocated: Vec<u64>,
        acknowledged: BTreeSet<u64>,
        /// A write that had started and not returned.
        writing: Option<u64>,
        delivering: BTreeSet<u64>,
        delivered: BTreeSet<u64>,
    }

    fn run(spool: &Spool, progress: &mut Progress) -> Result<(), String> {
        let mut entries: Vec<Record> = Vec::new();
        for step in SCRIPT {
            match *step {
                Step::Enqueue => {
                    let mid = spool.allocate_mid().map_err(|e| e.to_string())?;
                    progress.allocated.push(mid);
                    progress.writing = Some(mid);
                    let e = entry(mid);
                    spool
                        .write(&e, &journal_bytes(mid))
                        .map_err(|e| e.to_string())?;
                    progress.writing = None;
                    progress.acknowledged.insert(mid);
                    entries.push(e);
                }
                Step::Deliver(n) => {
                    let e = &entries[n];
                    progress.delivering.insert(e.mid);
                    spool.remove(e).map_err(|e| e.to_string())?;
                    progress.delivered.insert(e.mid);
                }
                Step::Retry(n) => {
                    let attempts = entries[n].attempts + 1;
                    spool
                        .record_attempt(&entries[n], attempts)
                        .and_then(|()| spool.sync_attempts())
                        .map_err(|e| e.to_string())?;
                    entries[n].attempts = attempts;
                }
            }
        }
        Ok(())
    }

    /// Recovery on `disk` finds what `progress` says it must, and nothing it must not.
    fn check_recovery(disk: SimDisk, progress: &Progress, what: &str) {
        let (spool, found, damaged) = Spool::open_on(Box::new(disk), Path::new(DIR))
            .unwrap_or_else(|e| panic!("{what}: recovery failed: {e}"));
        let mids: Vec<u64> = found.iter().map(|e| e.mid).collect();
        let unique: BTreeSet<u64> = mids.iter().copied().collect();
        assert_eq!(
            unique.len(),
            mids.len(),
            "{what}: a journal twice: {mids:?}"
        );
        for e in &found {
            assert!(
                !progress.delivered.contains(&e.mid),
                "{what}: delivered journal {} came back",
                e.mid
            );
            assert!(
                progress.acknowledged.contains(&e.mid) || progress.writing == Some(e.mid),
                "{what}: journal {} was never written",
                e.mid
            );
            assert_eq!(
                spool.read_journal(e).expect("read"),
                journal_bytes(e.mid),
                "{what}: journal {} has other bytes",
                e.mid
            );
        }
        for mid in &progress.acknowledged {
            if !progress.delivering.contains(mid) {
                assert!(
                    unique.contains(mid),
                    "{what}: acknowledged journal {mid} lost (found {mids:?})"
                );
            }
        }
        // A damaged file can only be a write that was never acknowledged.
        assert!(
            damaged.is_empty() || progress.writing.is_some(),
            "{what}: damaged {damaged:?}"
        );
        // No MID handed out before is handed out again.
        let next = spool.allocate_mid().expect("mid after recovery");
        assert!(
            progress.allocated.iter().all(|m| *m < next),
            "{what}: MID {next} again"
        );
    }

    #[test]
    fn the_script_runs_through_without_a_cut() {
        let disk = SimDisk::cut_before(None);
        let (spool, _, _) = Spool::open_on(Box::new(disk.clone()), Path::new(DIR)).expect("open");
        let mut progress = Progress::default();
        run(&spool, &mut progress).expect("script");
        assert!(disk.ops() > 40, "{} operations", disk.ops());
        check_recovery(
            disk.after_cut(&Survivors {
                names: 0,
                data: BTreeSet::new(),
            }),
            &progress,
            "no cut",
        );
    }

    #[test]
    fn a_power_loss_at_any_step_loses_nothing_and_brings_nothing_back() {
        let total = {
            let disk = SimDisk::cut_before(None);
            let (spool, _, _) =
                Spool::open_on(Box::new(disk.clone()), Path::new(DIR)).expect("open");
            run(&spool, &mut Progress::default()).expect("script");
            disk.ops()
        };
        let mut disks = 0;
        for cut in 1..=total {
            let disk = SimDisk::cut_before(Some(cut));
            let mut progress = Progress::default();
            // The start itself may be cut short too.
            if let Ok((spool, _, _)) = Spool::open_on(Box::new(disk.clone()), Path::new(DIR)) {
                let _ = run(&spool, &mut progress);
            }
            assert!(disk.was_cut(), "cut {cut} of {total}");
            for survivors in disk.survivor_choices() {
                disks += 1;
                check_recovery(
                    disk.after_cut(&survivors),
                    &progress,
                    &format!("cut before operation {cut} of {total}, survivors {survivors:?}"),
                );
            }
        }
        assert!(disks > total, "{disks} disks tried");
    }
}
