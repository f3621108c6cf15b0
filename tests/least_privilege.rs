//! Least privilege: the daemon will not run as root unless told to, and what it
//! exposes by default (milter port, metrics, control socket) is reachable from this
//! machine only. The control socket's mode against another user is in control.rs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tdc_milter::config::{Settings, SocketSpec};

const BIN: &str = env!("CARGO_BIN_EXE_tdc-milter");

fn minimal_settings(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("tdc-milter.yaml");
    let milter = dir.join("milter.sock");
    std::fs::write(
        &path,
        format!(
            "intake_address: journal@intake.example\n\
             milter: {{ listen: \"unix:{}\" }}\n\
             queue: {{ spool_dir: spool }}\n\
             control: {{ socket: control.sock }}\n\
             metrics: {{ listen: off }}\n",
            milter.display()
        ),
    )
    .expect("write settings");
    path
}

fn is_root() -> bool {
    // /proc/self is owned by the effective user of the process reading it.
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        == 0
}

/// Starts `run`; returns its exit status if it ended within `within`, else kills it.
fn run_daemon(settings: &Path, extra: &[&str], within: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .arg("-c")
        .arg(settings)
        .args(["run", "--log", "stderr"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tdc-milter");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status.code().unwrap_or(-1));
        }
        if started.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        use std::io::Read;
        let _ = stderr.read_to_string(&mut err);
    }
    (status, err)
}

#[test]
fn run_refuses_root_unless_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = minimal_settings(dir.path());
    let (status, err) = run_daemon(&settings, &[], Duration::from_secs(10));
    if is_root() {
        assert_eq!(status, Some(1), "stderr: {err}");
        assert!(
            err.contains("refusing to run as root") && err.contains("--allow-root"),
            "{err}"
        );
        // Refused before anything was created.
        assert!(!dir.path().join("spool").exists());
        // Told to, it runs (killed after a second, still up).
        let (status, err) = run_daemon(&settings, &["--allow-root"], Duration::from_secs(1));
        assert_eq!(status, None, "it exited: {err}");
        assert!(dir.path().join("spool").is_dir());
    } else {
        // Not root: nothing to refuse, it runs.
        assert_eq!(status, None, "it exited: {err}");
    }
}

#[test]
fn defaults_listen_on_this_machine_only() {
    let s = Settings::from_yaml("intake_address: a@intake.example\n", Path::new("/x.yaml"))
        .expect("minimal settings");
    match &s.milter.listen {
        SocketSpec::Inet { host, .. } => assert_eq!(host, "127.0.0.1"),
        SocketSpec::Unix(_) => {}
    }
    let metrics = s.metrics.listen.expect("metrics are on by default");
    assert!(metrics.ip().is_loopback(), "{metrics}");
    assert!(s.control.socket.starts_with("/run/tdc-milter"));
}
