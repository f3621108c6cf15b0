//! Binding a unix socket (the milter's `unix:` socket, the control socket) without
//! ever taking one over from a live process: a socket file is removed only when
//! nothing answers on it, and at exit only if it is still the one this process bound.
//! Removing a live daemon's socket leaves it running but unreachable: the MTA then
//! applies `default_action` to every message, and nothing is journaled.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use tokio::net::UnixListener;

/// The socket file this process created: device, inode and change time (an inode
/// number is reused at once by the next file created after a removal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundSocket {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

impl BoundSocket {
    fn of(meta: &std::fs::Metadata) -> BoundSocket {
        BoundSocket {
            dev: meta.dev(),
            ino: meta.ino(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl BoundSocket {
    /// Removes the socket at `path` if it is still ours (not replaced since).
    pub fn remove_if_unchanged(&self, path: &Path) {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if meta.file_type().is_socket() && BoundSocket::of(&meta) == *self {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Binds `path` with `mode` (and `group`, a GID), removing a stale socket first. The
/// error names the path.
pub fn bind(
    path: &Path,
    mode: u32,
    group: Option<u32>,
) -> Result<(UnixListener, BoundSocket), String> {
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    remove_if_stale(path).map_err(|e| at(&e))?;
    let listener = UnixListener::bind(path).map_err(|e| at(&e))?;
    let given = match group {
        // Only a member of the group (or root) may give the socket to it.
        Some(gid) => std::os::unix::fs::lchown(path, None, Some(gid)).map_err(|e| {
            format!(
                "cannot give it to group {gid}: {e} (the daemon's user must be a member of that group)"
            )
        }),
        None => Ok(()),
    }
    .and_then(|()| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot set its mode to {mode:04o}: {e}"))
    });
    if let Err(e) = given {
        // Ours: bound a moment ago, and a live one is never replaced.
        let _ = std::fs::remove_file(path);
        return Err(at(&e));
    }
    // After chown and chmod, which change the ctime.
    let meta = std::fs::symlink_metadata(path).map_err(|e| at(&e))?;
    Ok((listener, BoundSocket::of(&meta)))
}

/// A socket file nobody answers on is left from an earlier run: removed. One a process
/// answers on, or one we cannot tell about, stays, and binding fails.
fn remove_if_stale(path: &Path) -> Result<(), String> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        // Not ours to remove; bind reports it as in use.
        return Ok(());
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(
            "a process is answering on this socket (another tdc-milter still running?); \
             it is left alone"
                .into(),
        ),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)
            .or_else(|e| match e.kind() {
                io::ErrorKind::NotFound => Ok(()),
                _ => Err(format!("cannot remove the stale socket: {e}")),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!(
            "cannot tell whether a process answers on this socket ({e}); it is left alone"
        )),
    }
}

/// The GID of a group given by name or number.
pub fn group_id(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(found)) => Ok(found.gid.as_raw()),
        Ok(None) => Err(format!("there is no group named '{group}'")),
        Err(e) => Err(format!("cannot look up group '{group}': {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_live_socket_is_left_alone_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("milter.sock");
        let (live, first) = bind(&path, 0o660, None).expect("first bind");
        let e = bind(&path, 0o660, None).expect_err("second bind");
        assert!(e.contains("a process is answering"), "{e}");
        assert!(
            std::fs::symlink_metadata(&path).is_ok(),
            "the live socket was removed"
        );
        std::os::unix::net::UnixStream::connect(&path).expect("still reachable");

        // Gone without removing its file: a stale socket, which the next bind replaces.
        drop(live);
        // File times tick with the kernel's coarse clock (a jiffy): a daemon that
        // replaces a socket within the same tick, with its inode number reused, is
        // not told apart. A real restart takes far longer.
        std::thread::sleep(std::time::Duration::from_millis(30));
        let (_again, second) = bind(&path, 0o640, None).expect("bind over a stale socket");
        let meta = std::fs::symlink_metadata(&path).expect("socket");
        assert_eq!(meta.mode() & 0o777, 0o640);
        // The first process's exit must not remove the second one's socket.
        first.remove_if_unchanged(&path);
        assert!(
            std::fs::symlink_metadata(&path).is_ok(),
            "removed another's socket"
        );
        second.remove_if_unchanged(&path);
        assert!(
            std::fs::symlink_metadata(&path).is_err(),
            "own socket not removed"
        );
    }

    #[tokio::test]
    async fn the_socket_gets_the_group_asked_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("milter.sock");
        // The daemon's own primary group is always one it may give the socket to.
        let gid = rustix::process::getegid().as_raw();
        let (_listener, _) = bind(&path, 0o660, Some(gid)).expect("bind");
        assert_eq!(std::fs::symlink_metadata(&path).expect("socket").gid(), gid);
        assert_eq!(group_id(&gid.to_string()), Ok(gid));
        assert_eq!(group_id("root"), Ok(0));
        let e = group_id("no-such-group-tdc").expect_err("unknown group");
        assert!(e.contains("no group named 'no-such-group-tdc'"), "{e}");
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_not_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("milter.sock");
        std::fs::write(&path, "data").expect("file");
        assert!(bind(&path, 0o660, None).is_err());
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "data");
    }
}
