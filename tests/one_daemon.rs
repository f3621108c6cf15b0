//! One spool, one daemon: a second `run` on the same spool, or on the same `unix:`
//! milter socket, exits non-zero with a line that names what is in use, and leaves the
//! running daemon, its socket and its spool alone. The real binary, as systemd or an
//! administrator would start it.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::binary::Running;

fn settings(dir: &Path, name: &str, spool: &str, socket: &Path, extra: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "intake_address: journal@intake.example\n\
             milter: {{ listen: \"unix:{}\"{extra} }}\n\
             queue: {{ spool_dir: {spool} }}\n\
             control: {{ socket: {spool}.control.sock }}\n\
             metrics: {{ listen: off }}\n",
            socket.display()
        ),
    )
    .expect("write settings");
    path
}

fn wait_answering(socket: &Path, daemon: &mut Running) {
    let started = Instant::now();
    while UnixStream::connect(socket).is_err() {
        assert!(
            daemon.is_running(),
            "the daemon exited: {:?}",
            daemon.lines()
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nothing answers on {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A daemon expected to give up at once: its exit code and what it wrote.
fn refused(settings: &Path) -> (i32, String) {
    let (code, lines) = Running::start(settings, &[]).exit(Duration::from_secs(10));
    (code, lines.join("\n"))
}

#[test]
fn a_second_daemon_on_the_same_spool_or_socket_leaves_the_first_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("milter.sock");
    let first_settings = settings(dir.path(), "first.yaml", "spool", &socket, "");
    let mut first = Running::start(&first_settings, &[]);
    wait_answering(&socket, &mut first);
    let pid = first.pid();

    // The same settings: the spool is taken; the line names it and the holder.
    let (code, err) = refused(&first_settings);
    assert_eq!(code, 1, "{err}");
    let spool = dir.path().join("spool");
    assert!(
        err.contains(&format!(
            "the spool {} is in use by another tdc-milter (pid {pid})",
            spool.display()
        )),
        "{err}"
    );

    // Its own spool, the same socket: the socket is answered on, so it stays.
    let other = settings(dir.path(), "other.yaml", "other-spool", &socket, "");
    let (code, err) = refused(&other);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("cannot listen on unix:{}", socket.display()))
            && err.contains("a process is answering on this socket"),
        "{err}"
    );

    // The first daemon still answers on its own socket, with the default mode.
    assert!(first.is_running(), "the first daemon exited");
    UnixStream::connect(&socket).expect("the first daemon's socket still answers");
    let meta = std::fs::symlink_metadata(&socket).expect("socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o7777, 0o660, "the socket's mode");
    first.stop();
    assert!(
        std::fs::symlink_metadata(&socket).is_err(),
        "a clean stop removes the daemon's own socket"
    );
}

#[test]
fn a_socket_left_by_a_killed_daemon_is_taken_over_with_the_mode_asked_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("milter.sock");
    let path = settings(
        dir.path(),
        "tdc-milter.yaml",
        "spool",
        &socket,
        ", socket_mode: \"0600\"",
    );
    let mut first = Running::start(&path, &[]);
    wait_answering(&socket, &mut first);
    first.kill();
    assert!(
        std::fs::symlink_metadata(&socket).is_ok(),
        "kill -9 leaves the socket"
    );

    // The kernel released the lock with the process; the stale socket is replaced.
    let mut second = Running::start(&path, &[]);
    wait_answering(&socket, &mut second);
    let meta = std::fs::symlink_metadata(&socket).expect("socket");
    assert_eq!(meta.mode() & 0o7777, 0o600);
    second.stop();
}

#[test]
fn an_unknown_socket_group_is_named_and_nothing_is_left_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("milter.sock");
    let path = settings(
        dir.path(),
        "tdc-milter.yaml",
        "spool",
        &socket,
        ", socket_group: no-such-group-tdc",
    );
    let (code, err) = refused(&path);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("milter.socket_group: there is no group named 'no-such-group-tdc'"),
        "{err}"
    );
    assert!(std::fs::symlink_metadata(&socket).is_err());
}
