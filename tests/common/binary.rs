//! The real `tdc-milter run` as a child process, logging to stderr, for what only a
//! process shows: its exit code, its file descriptor limit, its sockets.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tdc-milter");

pub struct Running {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// `run --log stderr --allow-root` with `settings`, under `wrapper` (a command such
    /// as `prlimit --nofile=256:256`) if one is given.
    pub fn start(settings: &Path, wrapper: &[&str]) -> Running {
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = command
            .arg("-c")
            .arg(settings)
            .args(["run", "--log", "stderr", "--allow-root"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tdc-milter");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = child.stderr.take().map(|stderr| {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(mut l) = lines.lock() {
                        l.push(line);
                    }
                }
            })
        });
        Running {
            child,
            lines,
            reader,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits for a stderr line containing `needle`; fails if the process exits first.
    pub fn wait_for_line(&mut self, needle: &str, within: Duration) -> Vec<String> {
        let started = Instant::now();
        loop {
            let lines = self.lines();
            if lines.iter().any(|l| l.contains(needle)) {
                return lines;
            }
            if let Some(status) = self.child.try_wait().expect("wait") {
                panic!(
                    "tdc-milter exited ({status}) before '{needle}':\n{}",
                    lines.join("\n")
                );
            }
            assert!(
                started.elapsed() < within,
                "no '{needle}' within {within:?}:\n{}",
                lines.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    /// The exit code of a process expected to end by itself within `within`, and
    /// everything it wrote.
    pub fn exit(mut self, within: Duration) -> (i32, Vec<String>) {
        let started = Instant::now();
        let code = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status.code().unwrap_or(-1);
            }
            if started.elapsed() > within {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("tdc-milter kept running:\n{}", self.lines().join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (code, self.finish())
    }

    /// SIGKILL: nothing is cleaned up.
    pub fn kill(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.finish()
    }

    /// SIGTERM, as systemd stops it; waits for the exit.
    pub fn stop(mut self) -> Vec<String> {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        );
        let _ = self.child.wait();
        self.finish()
    }

    fn finish(&mut self) -> Vec<String> {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.lines()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
