//! One spool, one daemon. Two daemons on one spool would each take back the other's
//! journals at start and deliver them twice, or recycle a file the other is still
//! sending; so `run` takes an exclusive lock on `SPOOL/lock` before it binds
//! anything, and holds it until it exits. The lock is the kernel's (`flock`): it goes
//! with the process, whatever way the process ends, so a crash leaves no stale lock.
//!
//! The same place checks that the spool can be trusted: a directory of the daemon's
//! own user that nobody else can write to, because whoever can write there can plant a
//! journal (it is delivered to the intake) or a link that makes the daemon overwrite
//! another file.

use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const FILE: &str = "lock";

/// Held for as long as the daemon runs; dropping it releases the spool.
#[derive(Debug)]
pub struct SpoolLock {
    _file: File,
}

#[derive(Debug)]
pub enum LockError {
    /// Another process holds the lock.
    InUse { spool: PathBuf, pid: Option<u32> },
    /// The spool directory is not safe to use.
    Unsafe { spool: PathBuf, why: String },
    Io {
        what: &'static str,
        path: PathBuf,
        error: io::Error,
    },
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::InUse { spool, pid } => {
                write!(
                    f,
                    "the spool {} is in use by another tdc-milter",
                    spool.display()
                )?;
                if let Some(pid) = pid {
                    write!(f, " (pid {pid})")?;
                }
                write!(
                    f,
                    "; one spool serves one daemon: stop that one, or give this one its own queue.spool_dir"
                )
            }
            LockError::Unsafe { spool, why } => {
                write!(f, "the spool {} is not safe to use: {why}", spool.display())
            }
            LockError::Io { what, path, error } => {
                write!(f, "{what} {}: {error}", path.display())
            }
        }
    }
}

impl std::error::Error for LockError {}

impl SpoolLock {
    /// Creates the spool directory if needed, checks it, and locks it.
    pub fn acquire(spool: &Path) -> Result<SpoolLock, LockError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |error| LockError::Io { what, path, error }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(spool)
            .map_err(io("cannot create the spool directory", spool))?;
        check_directory(spool)?;
        let path = spool.join(FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(io("cannot open", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::InUse {
                    spool: spool.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io("cannot lock", &path)(e)),
        }
        // Who holds it, for the second instance's error line; best effort.
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        Ok(SpoolLock { _file: file })
    }
}

/// The spool must be a directory owned by the daemon's user, writable by no one else.
/// (The directory itself may be reached through a link an administrator made; what is
/// inside it is never followed.)
fn check_directory(spool: &Path) -> Result<(), LockError> {
    let unsafe_because = |why: String| LockError::Unsafe {
        spool: spool.to_path_buf(),
        why,
    };
    let meta = fs::metadata(spool).map_err(|error| LockError::Io {
        what: "cannot read",
        path: spool.to_path_buf(),
        error,
    })?;
    if !meta.is_dir() {
        return Err(unsafe_because("it is not a directory".into()));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(unsafe_because(format!(
            "it is owned by uid {}, not by the daemon's user (uid {me}); chown it",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_because(format!(
            "its group or others may write to it (mode {:04o}); chmod go-w it",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_second_lock_on_the_same_spool_is_refused_and_names_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = dir.path().join("spool");
        let held = SpoolLock::acquire(&spool).expect("first lock");
        let refused = SpoolLock::acquire(&spool).expect_err("second lock");
        match &refused {
            LockError::InUse { pid, .. } => assert_eq!(*pid, Some(std::process::id())),
            other => panic!("expected InUse, got {other:?}"),
        }
        let line = refused.to_string();
        assert!(line.contains(&spool.display().to_string()), "{line}");
        assert!(
            line.contains(&format!("pid {}", std::process::id())),
            "{line}"
        );
        drop(held);
        SpoolLock::acquire(&spool).expect("free again once the holder is gone");
    }

    #[test]
    fn a_spool_others_can_write_to_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = dir.path().join("spool");
        fs::create_dir(&spool).expect("mkdir");
        for mode in [0o777, 0o770, 0o1777] {
            fs::set_permissions(&spool, fs::Permissions::from_mode(mode)).expect("chmod");
            let e = SpoolLock::acquire(&spool).expect_err("unsafe");
            assert!(
                matches!(e, LockError::Unsafe { .. }) && e.to_string().contains("chmod go-w"),
                "{mode:o}: {e}"
            );
        }
        fs::set_permissions(&spool, fs::Permissions::from_mode(0o750)).expect("chmod");
        SpoolLock::acquire(&spool).expect("safe");
    }

    #[test]
    fn a_lock_file_that_is_a_link_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = dir.path().join("spool");
        fs::create_dir(&spool).expect("mkdir");
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep me\n").expect("victim");
        std::os::unix::fs::symlink(&victim, spool.join(FILE)).expect("link");
        let e = SpoolLock::acquire(&spool).expect_err("link");
        assert!(matches!(e, LockError::Io { .. }), "{e}");
        assert_eq!(fs::read_to_string(&victim).expect("read"), "keep me\n");
    }

    #[test]
    fn a_spool_that_is_a_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = dir.path().join("spool");
        fs::write(&spool, "").expect("file");
        assert!(SpoolLock::acquire(&spool).is_err());
    }
}
