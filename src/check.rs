//! `status --check`: the daemon's state as one Nagios-plugin line and exit code
//! (docs/LOGGING.md, "Alerting"). Pure: a `status` answer, the thresholds and the
//! time in, the verdict out.

use std::time::Duration;

use crate::config::Settings;
use crate::control::Status;

/// The plugin exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok = 0,
    Warning = 1,
    Critical = 2,
    Unknown = 3,
}

impl Level {
    pub fn word(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
            Level::Unknown => "UNKNOWN",
        }
    }
}

/// What the verdict is judged against, from the settings file.
#[derive(Debug, Clone)]
pub struct Limits {
    pub window: Duration,
    pub queue_warning: f64,
    pub max_messages: usize,
    pub max_bytes: u64,
    pub lifetime: Duration,
}

impl Limits {
    pub fn from_settings(s: &Settings) -> Limits {
        Limits {
            window: s.check.window,
            queue_warning: s.check.queue_warning,
            max_messages: s.queue.max_messages,
            max_bytes: s.queue.max_bytes,
            lifetime: s.delivery.lifetime,
        }
    }
}

/// The line (`TDC OK - …`) and its level.
pub fn evaluate(status: &Status, limits: &Limits, now: u64) -> (Level, String) {
    let a = &status.activity;
    let window = limits.window.as_secs();
    let recent = |at: u64| at != 0 && now.saturating_sub(at) <= window;
    let window_text = in_largest_unit(limits.window);
    let mut critical = Vec::new();
    let mut warning = Vec::new();
    let c = &status.counters;
    if recent(a.last_hard_bounce_at) {
        critical.push(format!(
            "journals hard bounced or expired in the last {window_text} ({} since start, {} expired)",
            c.hard_bounced, c.expired
        ));
    }
    let q = &status.queue;
    // Since the last delivery, or since start when there was none.
    let started = status.status_time.saturating_sub(status.uptime_secs);
    let since = a.last_delivery_at.max(started);
    let lifetime = limits.lifetime.as_secs();
    if q.journals > 0 && now.saturating_sub(since) > lifetime {
        critical.push(format!(
            "no journal delivered for {} s, longer than a journal's lifetime ({lifetime} s), while {} wait",
            now.saturating_sub(since),
            q.journals
        ));
    }
    if recent(a.last_soft_bounce_at) {
        warning.push(format!(
            "soft bounces in the last {window_text} ({} since start)",
            c.soft_bounced
        ));
    }
    if recent(a.last_busy_at) {
        warning.push(format!(
            "milter busy in the last {window_text}: milter.max_connections {} reached ({} connections past it since start)",
            status.milter.max_connections, status.milter.busy_connections
        ));
    }
    let share = |used: u64, max: u64| max > 0 && used as f64 > limits.queue_warning * max as f64;
    if share(q.journals as u64, limits.max_messages as u64) || share(q.bytes, limits.max_bytes) {
        warning.push(format!(
            "the.tdc.queue above {}% of its limit: {} journals of {}, {} bytes of {}",
            limits.queue_warning * 100.0,
            q.journals,
            limits.max_messages,
            q.bytes,
            limits.max_bytes
        ));
    }
    let (level, reasons) = if !critical.is_empty() {
        critical.extend(warning);
        (Level::Critical, critical)
    } else if !warning.is_empty() {
        (Level::Warning, warning)
    } else {
        let journaled = status.messages.get("journaled").copied().unwrap_or(0);
        (
            Level::Ok,
            vec![format!(
                "{journaled} messages journaled, {} journals delivered since start, {} in the queue",
                c.delivered, q.journals
            )],
        )
    };
    let perf = format!(
        "queue={};{};{} delivered={}c soft_bounced={}c hard_bounced={}c busy_connections={}c",
        q.journals,
        (limits.queue_warning * limits.max_messages as f64) as u64,
        limits.max_messages,
        c.delivered,
        c.soft_bounced,
        c.hard_bounced,
        status.milter.busy_connections
    );
    (
        level,
        format!("TDC {} - {} | {perf}", level.word(), reasons.join("; ")),
    )
}

/// `15m` rather than `900s`: the window as an administrator writes it.
fn in_largest_unit(d: Duration) -> String {
    match d.as_secs() {
        s if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        _ => crate::config::show::duration(d),
    }
}

/// The line when there is no status to judge.
pub fn unknown(why: &str) -> String {
    format!("TDC {} - {why}", Level::Unknown.word())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Activity, MilterStatus};
    use crate::queue::QueueStatus;

    const NOW: u64 = 2_000_000_000;

    fn limits() -> Limits {
        Limits {
            window: Duration::from_secs(900),
            queue_warning: 0.5,
            max_messages: 100,
            max_bytes: 1 << 30,
            lifetime: Duration::from_secs(120),
        }
    }

    fn healthy() -> Status {
        Status {
            status_time: NOW,
            version: "0".into(),
            uptime_secs: 3600,
            queue: QueueStatus::default(),
            counters: Default::default(),
            intakes: Default::default(),
            last_error: None,
            messages: [("journaled".to_string(), 7)].into_iter().collect(),
            milter: MilterStatus {
                connections: 3,
                max_connections: 1000,
                busy_connections: 0,
            },
            activity: Activity {
                last_message_at: NOW - 5,
                last_delivery_at: NOW - 5,
                ..Activity::default()
            },
        }
    }

    #[test]
    fn healthy_is_ok() {
        let (level, line) = evaluate(&healthy(), &limits(), NOW);
        assert_eq!(level, Level::Ok);
        assert!(line.starts_with("TDC OK - 7 messages journaled"), "{line}");
        assert!(line.contains(" | queue=0;50;100 "), "{line}");
    }

    #[test]
    fn each_condition_sets_its_level() {
        let mut s = healthy();
        s.activity.last_soft_bounce_at = NOW - 60;
        assert_eq!(evaluate(&s, &limits(), NOW).0, Level::Warning);
        s.activity.last_soft_bounce_at = NOW - 901;
        assert_eq!(
            evaluate(&s, &limits(), NOW).0,
            Level::Ok,
            "outside the window"
        );

        let mut s = healthy();
        s.activity.last_busy_at = NOW - 1;
        let (level, line) = evaluate(&s, &limits(), NOW);
        assert_eq!(level, Level::Warning);
        assert!(line.contains("milter busy in the last 15m:"), "{line}");

        let mut s = healthy();
        s.queue.journals = 51;
        assert_eq!(evaluate(&s, &limits(), NOW).0, Level::Warning);

        let mut s = healthy();
        s.activity.last_hard_bounce_at = NOW - 10;
        s.activity.last_soft_bounce_at = NOW - 10;
        let (level, line) = evaluate(&s, &limits(), NOW);
        assert_eq!(level, Level::Critical);
        assert!(
            line.starts_with("TDC CRITICAL - journals hard bounced"),
            "{line}"
        );
        assert!(
            line.contains("; soft bounces"),
            "the warnings follow: {line}"
        );

        // Journals waiting and nothing delivered for longer than their lifetime.
        let mut s = healthy();
        s.queue.journals = 2;
        s.activity.last_delivery_at = NOW - 121;
        assert_eq!(evaluate(&s, &limits(), NOW).0, Level::Critical);
        s.activity.last_delivery_at = NOW - 100;
        assert_eq!(evaluate(&s, &limits(), NOW).0, Level::Ok);
        // Never delivered: counted from the start.
        s.activity.last_delivery_at = 0;
        s.uptime_secs = 60;
        assert_eq!(evaluate(&s, &limits(), NOW).0, Level::Ok);
        s.uptime_secs = 600;
        assert_eq!(evaluate(&s, &limits(), NOW).0, Level::Critical);
    }

    #[test]
    fn unknown_names_why() {
        assert_eq!(
            unknown("daemon not reachable"),
            "TDC UNKNOWN - daemon not reachable"
        );
    }
}
