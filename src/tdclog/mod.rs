//! Every line tdc-milter writes to the mail log: the catalogue of events and their
//! wording (`event`), and where the lines go (syslog, stderr, memory). Values that come
//! from a message (Message-ID, addresses, server replies) pass through [`sanitize`]
//! first: no control character, and so no forged extra log line, can reach the log.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use syslog::{Facility, Formatter3164, Logger, LoggerBackend};
use time::OffsetDateTime;

mod event;
mod sanitize;
mod verdict;

pub use event::{bad_destination_host, Event, Ids, Severity, Step};
pub use sanitize::{sanitize, sanitize_bytes};
pub use verdict::{BadHost, Verdict};

/// Where log lines go.
#[derive(Clone)]
pub struct Log {
    sink: Arc<Sink>,
    /// Also sees every event (message tracking).
    tap: Option<Arc<dyn Tap>>,
}

/// Something that wants every event besides the log (message tracking).
pub trait Tap: Send + Sync {
    fn event(&self, event: &Event<'_>);
}

enum Sink {
    Syslog {
        /// `None`: the system's socket (/dev/log and the usual alternatives).
        socket: Option<PathBuf>,
        logger: Mutex<Option<Logger<LoggerBackend, Formatter3164>>>,
    },
    Stderr,
    Memory(Mutex<Vec<String>>),
}

impl fmt::Debug for Log {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match *self.sink {
            Sink::Syslog { .. } => "syslog",
            Sink::Stderr => "stderr",
            Sink::Memory(_) => "memory",
        };
        f.debug_struct("Log").field("sink", &kind).finish()
    }
}

impl Log {
    /// Syslog facility mail over /dev/log, so the lines land beside Postfix's. When the
    /// socket is missing or a write fails even after reconnecting, the line goes to stderr
    /// instead of being lost.
    pub fn syslog() -> Log {
        Log::syslog_to(None)
    }

    /// Syslog through a given socket instead of the system's (tests).
    pub fn syslog_at(socket: &Path) -> Log {
        Log::syslog_to(Some(socket.to_path_buf()))
    }

    fn syslog_to(socket: Option<PathBuf>) -> Log {
        let logger = connect_syslog(socket.as_deref());
        Log {
            sink: Arc::new(Sink::Syslog {
                socket,
                logger: Mutex::new(logger),
            }),
            tap: None,
        }
    }

    /// For foreground runs: one line per event on stderr, stamped like the appliance's log.
    pub fn stderr() -> Log {
        Log {
            sink: Arc::new(Sink::Stderr),
            tap: None,
        }
    }

    /// Keeps the lines in memory, for tests.
    pub fn memory() -> Log {
        Log {
            sink: Arc::new(Sink::Memory(Mutex::new(Vec::new()))),
            tap: None,
        }
    }

    /// The lines a memory log holds (`Severity: text`), empty for other sinks.
    pub fn lines(&self) -> Vec<String> {
        match &*self.sink {
            Sink::Memory(lines) => lines.lock().map(|l| l.clone()).unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// The same log, with every event also shown to `tap`.
    pub fn with_tap(&self, tap: Arc<dyn Tap>) -> Log {
        Log {
            sink: self.sink.clone(),
            tap: Some(tap),
        }
    }

    pub fn event(&self, event: Event<'_>) {
        if let Some(tap) = &self.tap {
            tap.event(&event);
        }
        if matches!(&event, Event::Journal { step, .. } if step.tracking_only()) {
            return;
        }
        self.write(event.severity(), &event.to_string());
    }

    /// A line that is not one of the appliance's events (errors of our own, start-up).
    pub fn line(&self, severity: Severity, text: &str) {
        self.write(severity, text);
    }

    fn write(&self, severity: Severity, text: &str) {
        let message = format!("{}: {text}", severity.word());
        match &*self.sink {
            Sink::Stderr => write_stderr(&message),
            Sink::Memory(lines) => {
                if let Ok(mut lines) = lines.lock() {
                    lines.push(message);
                }
            }
            Sink::Syslog { socket, logger } => {
                let Ok(mut logger) = logger.lock() else {
                    write_stderr(&message);
                    return;
                };
                if send_syslog(&mut logger, severity, &message).is_ok() {
                    return;
                }
                // The syslog socket may have been restarted: reconnect once, then fall back.
                *logger = connect_syslog(socket.as_deref());
                if send_syslog(&mut logger, severity, &message).is_err() {
                    write_stderr(&message);
                }
            }
        }
    }
}

fn connect_syslog(socket: Option<&Path>) -> Option<Logger<LoggerBackend, Formatter3164>> {
    let formatter = Formatter3164 {
        facility: Facility::LOG_MAIL,
        hostname: None,
        process: "tdc-milter".into(),
        pid: std::process::id(),
    };
    match socket {
        Some(path) => syslog::unix_custom(formatter, path).ok(),
        None => syslog::unix(formatter).ok(),
    }
}

fn send_syslog(
    logger: &mut Option<Logger<LoggerBackend, Formatter3164>>,
    severity: Severity,
    message: &str,
) -> Result<(), ()> {
    let Some(logger) = logger.as_mut() else {
        return Err(());
    };
    let sent = match severity {
        Severity::Debug => logger.debug(message),
        Severity::Info => logger.info(message),
        Severity::Warning => logger.warning(message),
        Severity::Critical => logger.crit(message),
    };
    sent.map_err(|_| ())
}

fn write_stderr(message: &str) {
    let stamp = appliance_timestamp(OffsetDateTime::now_utc());
    // A closed stderr must not take the daemon down; there is nowhere else to report it.
    let _ = writeln!(std::io::stderr().lock(), "{stamp} {message}");
}

/// `Fri Feb 16 21:19:22 2024`, the appliance's mail log stamp (UTC here).
pub(crate) fn appliance_timestamp(t: OffsetDateTime) -> String {
    const FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[weekday repr:short] [month repr:short] [day padding:space] [hour]:[minute]:[second] [year]"
    );
    t.format(FORMAT).unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_log_records_severity_word() {
        let log = Log::memory();
        log.event(Event::journal(7, Step::Finished));
        log.line(Severity::Critical, "spool broken");
        assert_eq!(
            log.lines(),
            vec![
                "Info: Message finished MID 7 done",
                "Critical: spool broken"
            ]
        );
    }

    #[test]
    fn syslog_lines_go_to_facility_mail_and_survive_a_restarted_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let receiver = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        let log = Log::syslog_at(&path);
        log.event(Event::journal(3, Step::Delivered));
        let mut buf = [0u8; 1024];
        let n = receiver.recv(&mut buf).expect("datagram");
        let datagram = String::from_utf8_lossy(&buf[..n]).into_owned();
        // <22> = facility mail (2) * 8 + severity info (6).
        assert!(datagram.starts_with("<22>"), "{datagram}");
        assert!(
            datagram.contains(&format!(
                "tdc-milter[{}]: Info: TDC: MID 3 successfully delivered",
                std::process::id()
            )),
            "{datagram}"
        );
        log.line(Severity::Warning, "w");
        let n = receiver.recv(&mut buf).expect("datagram");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("<20>"));

        // The syslog daemon restarts: the next line reaches the new socket.
        drop(receiver);
        std::fs::remove_file(&path).expect("remove");
        let receiver = std::os::unix::net::UnixDatagram::bind(&path).expect("rebind");
        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .expect("timeout");
        log.event(Event::journal(3, Step::Finished));
        let n = receiver.recv(&mut buf).expect("datagram after restart");
        assert!(String::from_utf8_lossy(&buf[..n]).contains("Info: Message finished MID 3 done"));
    }

    #[test]
    fn timestamp_has_the_appliance_shape() {
        let t = OffsetDateTime::from_unix_timestamp(1708118362).expect("valid time");
        assert_eq!(appliance_timestamp(t), "Fri Feb 16 21:19:22 2024");
    }
}
