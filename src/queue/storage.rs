//! The file system operations the spool is built from, behind a trait, so that a test
//! can replace the disk with one that loses, at a simulated power failure, every
//! change not yet made durable (`power_loss.rs`). The real one is [`Disk`].
//!
//! What is durable when, which the spool's ordering relies on (and the simulation
//! enforces): a file's data, length and mode once [`StorageFile::sync`] (fsync) of it
//! returned; a name (a created file, a rename, a removal) once the directory holding
//! the new name was synced with [`Storage::sync_dir`], which also makes every earlier
//! name change durable (journaling file systems commit metadata in order). Nothing
//! else may be counted on; anything else may still reach the disk, in any order.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What a name in a directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub is_file: bool,
    pub is_dir: bool,
    /// Permission bits.
    pub mode: u32,
    pub len: u64,
}

/// A file opened for writing.
pub trait StorageFile {
    /// Writes all of `bytes` at `offset`.
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    fn set_mode(&mut self, mode: u32) -> io::Result<()>;
    /// fsync: data, length and mode are durable when this returns.
    fn sync(&mut self) -> io::Result<()>;
}

/// The spool's view of a file system. Nothing is followed through a symbolic link.
pub trait Storage: Send + Sync {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names in `dir`, as paths.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Like lstat: a link is reported as neither file nor directory.
    fn stat(&self, path: &Path) -> io::Result<Stat>;
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// At most `n` bytes from the start.
    fn read_prefix(&self, path: &Path, n: usize) -> io::Result<Vec<u8>>;
    /// A new file with `mode`; fails if the name exists.
    fn create(&self, path: &Path, mode: u32) -> io::Result<Box<dyn StorageFile>>;
    /// An existing regular file.
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
pub struct Disk;

fn no_follow(options: &mut OpenOptions) -> &mut OpenOptions {
    // Whoever could plant a link in the spool could make the daemon read another file
    // into a journal, or overwrite it.
    options.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
}

struct DiskFile(File);

impl StorageFile for DiskFile {
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.0.seek(SeekFrom::Start(offset))?;
        self.0.write_all(bytes)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn set_mode(&mut self, mode: u32) -> io::Result<()> {
        self.0.set_permissions(fs::Permissions::from_mode(mode))
    }

    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }
}

impl Storage for Disk {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        fs::read_dir(dir)?
            .map(|item| item.map(|i| i.path()))
            .collect()
    }

    fn stat(&self, path: &Path) -> io::Result<Stat> {
        let meta = fs::symlink_metadata(path)?;
        Ok(Stat {
            is_file: meta.file_type().is_file(),
            is_dir: meta.file_type().is_dir(),
            mode: meta.permissions().mode() & 0o7777,
            len: meta.len(),
        })
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut file = no_follow(OpenOptions::new().read(true)).open(path)?;
        let mut bytes = Vec::with_capacity(file.metadata().map_or(0, |m| m.len() as usize));
        file.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn read_prefix(&self, path: &Path, n: usize) -> io::Result<Vec<u8>> {
        let mut start = Vec::with_capacity(n);
        no_follow(OpenOptions::new().read(true))
            .open(path)?
            .take(n as u64)
            .read_to_end(&mut start)?;
        Ok(start)
    }

    fn create(&self, path: &Path, mode: u32) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)?;
        Ok(Box::new(DiskFile(file)))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let file = no_follow(OpenOptions::new().write(true)).open(path)?;
        Ok(Box::new(DiskFile(file)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}
