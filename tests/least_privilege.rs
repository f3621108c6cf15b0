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
        // As root of a user namespace (uid 0 inside), the refusal is still exercised.
        let inside = Command::new("timeout")
            .args(["10", "unshare", "--user", "--map-root-user", BIN, "-c"])
            .arg(&settings)
            .args(["run", "--log", "stderr"])
            .output();
        match inside {
            Ok(out) if out.status.code() == Some(1) => {
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(err.contains("refusing to run as root"), "{err}");
            }
            // timeout's code: it was still running, as root, after 10 s.
            Ok(out) if out.status.code() == Some(124) => panic!("it ran as root"),
            Ok(out) => eprintln!(
                "root refusal not exercised: unshare --map-root-user gave {:?} ({})",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("root refusal not exercised: no unshare ({e})"),
        }
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

/// The listening sockets on `port` in /proc/net/tcp and tcp6, as (hex address, hex
/// port) of the local end.
fn listeners_on(port: u16) -> Vec<String> {
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is field 1 ("ADDR:PORT" in hex), st is field 3 (0A: LISTEN).
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else {
                continue;
            };
            if *state == "0A" && local.ends_with(&format!(":{port:04X}")) {
                found.push(local.to_string());
            }
        }
    }
    found
}

/// The running binary with the default `metrics.listen` binds 127.0.0.1:9466 and
/// nothing else on that port: not the wildcard, not IPv6.
#[test]
fn the_running_daemon_serves_metrics_on_loopback_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = minimal_settings(dir.path());
    let text = std::fs::read_to_string(&settings).expect("read settings");
    std::fs::write(&settings, text.replace("metrics: { listen: off }\n", "")).expect("write");
    let port = 9466;
    assert!(
        listeners_on(port).is_empty(),
        "something else listens on {port} already: {:?}",
        listeners_on(port)
    );
    let mut child = Command::new(BIN)
        .arg("-c")
        .arg(&settings)
        .args(["run", "--log", "stderr", "--allow-root"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tdc-milter");
    let started = Instant::now();
    let listening = loop {
        let now = listeners_on(port);
        if !now.is_empty() || started.elapsed() > Duration::from_secs(10) {
            break now;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the daemon exited: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    // 127.0.0.1 is 0100007F in the kernel's byte order.
    assert_eq!(listening, vec![format!("0100007F:{port:04X}")]);
}
