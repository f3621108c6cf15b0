//! The control socket: how `tdc-milter tophosts` and `status` reach the running daemon.
//!
//! One request per connection: the client writes a command line, the daemon answers
//! with one JSON document and closes. The socket is mode 0660, so only root and the
//! daemon's user and group can use it.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

use crate::accept::Gate;
use crate::clock::now_secs as epoch_secs;
use crate::queue::{Queue, QueueStatus, QUEUE_NAME};
use crate::stats::{IntakeCounts, LastError, Snapshot};
use crate::stats::{Socket, Stats};
use crate::tdclog::Log;
use crate::tracking::{Journal, NotJournaled, Tracker};
use crate::unix_socket::BoundSocket;

/// Longest request line we read.
const MAX_REQUEST: u64 = 1024;

/// The appliance's tophosts columns for the.tdc.queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopHosts {
    /// Seconds since the Unix epoch when the figures were taken.
    pub status_time: u64,
    pub hosts: Vec<HostRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRow {
    pub host: String,
    pub active_recipients: u64,
    pub connections_out: u64,
    pub delivered_recipients: u64,
    pub soft_bounced: u64,
    pub hard_bounced: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub status_time: u64,
    pub version: String,
    pub uptime_secs: u64,
    pub queue: QueueStatus,
    /// Counters since start; `connections` is the open connections now.
    pub counters: Snapshot,
    /// Outcomes per intake address.
    pub intakes: BTreeMap<String, IntakeCounts>,
    pub last_error: Option<LastError>,
    /// Messages by outcome since start (journaled, and each reason not to).
    #[serde(default)]
    pub messages: BTreeMap<String, u64>,
    #[serde(default)]
    pub milter: MilterStatus,
    #[serde(default)]
    pub activity: Activity,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MilterStatus {
    /// MTA connections served in full now, and the limit (milter.max_connections).
    pub connections: u64,
    pub max_connections: u64,
    /// Connections that came past the limit since start.
    pub busy_connections: u64,
}

/// When things last happened, in seconds since the Unix epoch; 0 for never since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    pub last_message_at: u64,
    /// The intake's last 250 for a journal.
    pub last_delivery_at: u64,
    pub last_soft_bounce_at: u64,
    /// Expiry included.
    pub last_hard_bounce_at: u64,
    /// A connection came past milter.max_connections.
    pub last_busy_at: u64,
}

/// The answer to `track`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tracked {
    pub key: String,
    pub journals: Vec<Journal>,
    /// Messages with that queue ID or Message-ID that were not journaled, and why.
    #[serde(default)]
    pub not_journaled: Vec<NotJournaled>,
}

/// What the daemon answers with.
pub struct Controller {
    queue: Queue,
    tracker: Arc<Tracker>,
    started: SystemTime,
}

impl Controller {
    pub fn new(queue: Queue, tracker: Arc<Tracker>) -> Controller {
        Controller {
            queue,
            tracker,
            started: SystemTime::now(),
        }
    }

    pub fn track(&self, key: &str) -> Tracked {
        Tracked {
            key: key.to_string(),
            journals: self.tracker.find(key),
            not_journaled: self.tracker.find_not_journaled(key),
        }
    }

    pub fn tophosts(&self) -> TopHosts {
        let s = self.queue.stats().snapshot();
        TopHosts {
            status_time: epoch_secs(),
            hosts: vec![host_row(&s)],
        }
    }

    pub fn status(&self) -> Status {
        let stats = self.queue.stats();
        Status {
            status_time: epoch_secs(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: self.started.elapsed().map_or(0, |d| d.as_secs()),
            queue: self.queue.status(),
            counters: stats.snapshot(),
            intakes: stats.per_intake(),
            last_error: stats.last_error(),
            messages: stats.messages(),
            milter: {
                let (connections, busy_connections) = stats.milter_connections();
                MilterStatus {
                    connections,
                    max_connections: stats.milter_connection_limit(),
                    busy_connections,
                }
            },
            activity: {
                let (last_message_at, last_delivery_at) = stats.last_activity();
                let (last_soft_bounce_at, last_hard_bounce_at, last_busy_at) = stats.last_trouble();
                Activity {
                    last_message_at,
                    last_delivery_at,
                    last_soft_bounce_at,
                    last_hard_bounce_at,
                    last_busy_at,
                }
            },
        }
    }

    /// The JSON answer to one request line.
    pub fn answer(&self, line: &str) -> String {
        let result = match Request::parse(line) {
            Ok(Request::TopHosts) => serde_json::to_string(&self.tophosts()),
            Ok(Request::Status) => serde_json::to_string(&self.status()),
            Ok(Request::Track(key)) => serde_json::to_string(&self.track(&key)),
            Err(unknown) => Ok(serde_json::json!({ "error": unknown }).to_string()),
        };
        result.unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string())
    }
}

/// What the CLI may ask the daemon: one line on the wire, written by [`Request`]'s
/// `Display` and read by [`Request::parse`], so the two ends cannot drift apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    TopHosts,
    Status,
    /// `track KEY`: a MID, an MTA queue ID or a Message-ID.
    Track(String),
}

impl Request {
    /// Reads a request line. The error is the message the client is answered with.
    pub fn parse(line: &str) -> Result<Request, String> {
        match line.trim() {
            "tophosts" => Ok(Request::TopHosts),
            "status" => Ok(Request::Status),
            line => match line.strip_prefix("track ") {
                Some(key) if !key.trim().is_empty() => Ok(Request::Track(key.trim().to_string())),
                _ => Err(format!(
                    "unknown request {:?}; expected tophosts, status or track KEY",
                    crate::tdclog::sanitize(line)
                )),
            },
        }
    }
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::TopHosts => f.write_str("tophosts"),
            Request::Status => f.write_str("status"),
            Request::Track(key) => write!(f, "track {key}"),
        }
    }
}

fn host_row(s: &Snapshot) -> HostRow {
    HostRow {
        host: QUEUE_NAME.to_string(),
        active_recipients: s.active,
        connections_out: s.connections,
        delivered_recipients: s.delivered,
        soft_bounced: s.soft_bounced,
        hard_bounced: s.hard_bounced,
    }
}

/// Binds the control socket: creates its directory, refuses to take over the socket of
/// a daemon that is still running, and restricts it to mode 0660.
pub fn bind(path: &Path) -> Result<(UnixListener, BoundSocket), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    crate::unix_socket::bind(path, 0o660, None)
}

/// Requests served at once (one request per connection); past it a connection is
/// closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// The request must arrive within this, and the answer be taken within as long.
const REQUEST_TIME: Duration = Duration::from_secs(5);

/// Serves requests until the task is aborted at shutdown.
pub async fn serve(
    listener: UnixListener,
    controller: Arc<Controller>,
    log: Log,
    stats: Arc<Stats>,
) {
    let mut gate = Gate::new(Socket::Control, MAX_CONNECTIONS, log, stats);
    loop {
        let ((stream, _), slot) = gate.next(|| listener.accept()).await;
        let controller = controller.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
            let read = tokio::time::timeout(REQUEST_TIME, reader.read_line(&mut line)).await;
            if !matches!(read, Ok(Ok(_))) {
                return;
            }
            let mut answer = controller.answer(&line);
            answer.push('\n');
            let _ = tokio::time::timeout(REQUEST_TIME, async {
                let _ = write.write_all(answer.as_bytes()).await;
                let _ = write.shutdown().await;
            })
            .await;
        });
    }
}

/// Why the CLI could not get an answer.
#[derive(Debug)]
pub enum ClientError {
    NotRunning(String),
    Denied(String),
    Io(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::NotRunning(path) => write!(
                f,
                "tdc-milter is not running (nothing answers on {path}; check `systemctl status tdc-milter`)"
            ),
            ClientError::Denied(path) => write!(
                f,
                "permission denied on {path}: run as root or as a member of the daemon's group"
            ),
            ClientError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Sends one request line (a [`Request`], written out) to the daemon and returns its
/// JSON answer.
pub fn request(path: &Path, command: &str) -> Result<String, ClientError> {
    let shown = path.display().to_string();
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning(shown.clone())
        }
        io::ErrorKind::PermissionDenied => ClientError::Denied(shown.clone()),
        _ => ClientError::Io(format!("cannot connect to {shown}: {e}")),
    })?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    stream
        .write_all(format!("{command}\n").as_bytes())
        .map_err(|e| ClientError::Io(format!("cannot send the request: {e}")))?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| ClientError::Io(format!("no answer from the daemon: {e}")))?;
    if answer.trim().is_empty() {
        return Err(ClientError::Io(
            "the daemon closed the connection without an answer".into(),
        ));
    }
    Ok(answer)
}

fn stamp(epoch: u64) -> String {
    const FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
        "[weekday repr:short] [month repr:short] [day padding:space] [hour]:[minute]:[second] [year] GMT"
    );
    OffsetDateTime::from_unix_timestamp(epoch as i64)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_else(|| epoch.to_string())
}

/// The appliance's `tophosts` layout.
pub fn render_tophosts(t: &TopHosts) -> String {
    let mut out = format!("Status as of:                   {}\n", stamp(t.status_time));
    out.push_str("Hosts marked 'down':            0\n\n");
    out.push_str(
        "       Recipient Host                  Active   Conn.   Deliv.     Soft     Hard\n",
    );
    out.push_str(
        "   #                                   Recip.    Out    Recip.  Bounced  Bounced\n",
    );
    for (i, h) in t.hosts.iter().enumerate() {
        out.push_str(&format!(
            "{:>4}  {:<32}{:>7}{:>8}{:>9}{:>9}{:>9}\n",
            i + 1,
            h.host,
            h.active_recipients,
            h.connections_out,
            h.delivered_recipients,
            h.soft_bounced,
            h.hard_bounced
        ));
    }
    out
}

/// `track` for people.
pub fn render_tracked(t: &Tracked) -> String {
    if t.journals.is_empty() && t.not_journaled.is_empty() {
        return format!(
            "no journal found for {:?} (journals kept: the most recent ones, see tracking.max_journals)\n",
            t.key
        );
    }
    let mut out = String::new();
    for m in &t.not_journaled {
        out.push_str(&format!(
            "queue ID {}, Message-ID '{}': not journaled ({})\n  {}  {}\n\n",
            m.queue_id,
            crate::tdclog::sanitize(&m.message_id),
            m.outcome.label(),
            stamp(m.at),
            crate::tdclog::sanitize(&m.reason)
        ));
    }
    for j in &t.journals {
        out.push_str(&format!(
            "MID {} (queue ID {}, Message-ID '{}') to {}\n",
            j.mid, j.queue_id, j.message_id, j.intake
        ));
        for line in &j.lines {
            out.push_str(&format!("  {}  {}\n", stamp(line.at), line.text));
        }
        out.push('\n');
    }
    out
}

/// `status` for people.
pub fn render_status(s: &Status) -> String {
    let mut out = format!(
        "tdc-milter {} up {}s, status as of {}\n\n",
        s.version,
        s.uptime_secs,
        stamp(s.status_time)
    );
    let oldest = s
        .queue
        .oldest_age_secs
        .map_or("-".to_string(), |a| format!("{a}s"));
    out.push_str(&format!(
        "{QUEUE_NAME}: {} journals ({} bytes), {} being delivered, {} waiting for their retry, oldest {oldest}\n",
        s.queue.journals, s.queue.bytes, s.queue.in_flight, s.queue.waiting_for_retry
    ));
    let c = &s.counters;
    out.push_str(&format!("connections to the intake: {}\n", c.connections));
    out.push_str(&format!(
        "since start: {} delivered, {} soft bounced, {} hard bounced ({} expired), {} refused (queue full or spool error), {} too large\n",
        c.delivered, c.soft_bounced, c.hard_bounced, c.expired, c.refused, c.too_large
    ));
    let m = &s.milter;
    let busy = if m.busy_connections > 0 {
        format!(
            "; the limit was reached: {} connections came past it since start",
            m.busy_connections
        )
    } else {
        String::new()
    };
    out.push_str(&format!(
        "milter connections: {} of milter.max_connections {}{busy}\n",
        m.connections, m.max_connections
    ));
    let when = |at: u64| {
        if at == 0 {
            "never".to_string()
        } else {
            stamp(at)
        }
    };
    out.push_str(&format!(
        "last message: {}; last journal delivered: {}\n",
        when(s.activity.last_message_at),
        when(s.activity.last_delivery_at)
    ));
    if !s.messages.is_empty() {
        let total: u64 = s.messages.values().sum();
        let journaled = s.messages.get("journaled").copied().unwrap_or(0);
        let others: Vec<String> = s
            .messages
            .iter()
            .filter(|(k, v)| k.as_str() != "journaled" && **v > 0)
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        let others = if others.is_empty() {
            "none".to_string()
        } else {
            others.join(", ")
        };
        out.push_str(&format!(
            "messages since start: {total}, {journaled} journaled; not journaled: {others}\n"
        ));
    }
    if !s.intakes.is_empty() {
        out.push_str(
            "\nintake address                              delivered  soft bounced  hard bounced\n",
        );
        for (intake, i) in &s.intakes {
            out.push_str(&format!(
                "{:<42}{:>11}{:>14}{:>14}\n",
                intake, i.delivered, i.soft_bounced, i.hard_bounced
            ));
        }
    }
    match &s.last_error {
        Some(e) => out.push_str(&format!(
            "\nlast error: {} MID {}: {}\n",
            stamp(e.at),
            e.mid,
            e.error
        )),
        None => out.push_str("\nlast error: none\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reads_back_as_itself() {
        for request in [
            Request::TopHosts,
            Request::Status,
            Request::Track("<a b@example.com>".into()),
        ] {
            assert_eq!(Request::parse(&request.to_string()), Ok(request));
        }
        assert_eq!(
            Request::parse("  track  Q7CLEAN \n"),
            Ok(Request::Track("Q7CLEAN".into()))
        );
        for bad in [
            "",
            "track",
            "track  ",
            "frobnicate",
            "Status",
            "tophosts now",
        ] {
            let error = Request::parse(bad).expect_err(bad);
            assert!(error.starts_with("unknown request"), "{error}");
        }
    }

    #[test]
    fn tophosts_has_the_appliance_columns() {
        let t = TopHosts {
            status_time: 1_708_118_362,
            hosts: vec![HostRow {
                host: QUEUE_NAME.into(),
                active_recipients: 2,
                connections_out: 3,
                delivered_recipients: 1234,
                soft_bounced: 5,
                hard_bounced: 6,
            }],
        };
        let text = render_tophosts(&t);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "Status as of:                   Fri Feb 16 21:19:22 2024 GMT"
        );
        assert!(
            lines[3].contains("Active")
                && lines[3].contains("Conn.")
                && lines[3].contains("Deliv.")
        );
        assert!(lines[4].contains("Recip.") && lines[4].contains("Bounced"));
        let row: Vec<&str> = lines[5].split_whitespace().collect();
        assert_eq!(row, vec!["1", "the.tdc.queue", "2", "3", "1234", "5", "6"]);
    }
}
