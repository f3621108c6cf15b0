//! The scheduler on tokio's paused clock, with a scripted delivery agent: every row
//! of the retry table and the lifetime, in virtual seconds (milliseconds of real
//! time), with the time of each attempt checked.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::agent::{Agent, Pending, Session};
use super::{open, test_journal};
use crate::config::Settings;
use crate::delivery::{DeliveryError, Kind, Reply, Stage, TlsFailure};
use crate::record::Record;
use crate::stats::Stats;
use crate::tdclog::Log;

/// What the intake does on one attempt.
#[derive(Clone)]
enum Try {
    /// The connection cannot be opened.
    NoConnection(DeliveryError),
    /// The connection opens and the transaction ends so.
    Send(Result<Reply, DeliveryError>),
}

/// Plays its script one attempt after another (the last step repeats) and notes
/// when each attempt was made.
struct ScriptedAgent {
    script: Vec<Try>,
    attempts: Arc<Mutex<Vec<Instant>>>,
}

struct ScriptedSession {
    result: Result<Reply, DeliveryError>,
}

impl ScriptedAgent {
    fn next(&self) -> Try {
        let mut attempts = self.attempts.lock().expect("attempts");
        attempts.push(Instant::now());
        let n = attempts.len() - 1;
        self.script[n.min(self.script.len() - 1)].clone()
    }
}

impl Agent for ScriptedAgent {
    fn connect<'a>(
        &'a self,
        _domain: &'a str,
        _deadline: Instant,
    ) -> Pending<'a, Result<Box<dyn Session + 'a>, DeliveryError>> {
        let step = self.next();
        Box::pin(async move {
            match step {
                Try::NoConnection(e) => Err(e),
                Try::Send(result) => Ok(Box::new(ScriptedSession { result }) as Box<dyn Session>),
            }
        })
    }
}

impl Session for ScriptedSession {
    fn send<'a>(
        &'a mut self,
        _journal: &'a Record,
        _message: &'a [u8],
        _deadline: Instant,
    ) -> Pending<'a, Result<Reply, DeliveryError>> {
        let result = self.result.clone();
        Box::pin(async move { result })
    }
    fn reset(&mut self, _deadline: Instant) -> Pending<'_, Result<(), DeliveryError>> {
        Box::pin(async { Ok(()) })
    }
    fn close(self: Box<Self>) -> Pending<'static, ()> {
        Box::pin(async {})
    }
    fn dcid(&self) -> u64 {
        1
    }
}

fn reply(code: u16) -> Reply {
    Reply {
        code,
        enhanced: None,
        text: "scripted".into(),
    }
}

fn refused(stage: Stage, code: u16) -> Try {
    Try::Send(Err(DeliveryError::new(stage, Kind::Reply(reply(code)))))
}

const DELIVERED: &str = "TDC: MID 1 successfully delivered for scanning";
const HARD: &str = "TDC: MID 1 delivery failed to Cisco Secure Email Threat Defense: Hard Bounced.";
const TLS: &str = "TDC: MID 1 delivery failed to Cisco Secure Email Threat Defense: TLS Error.";
const EXPIRED: &str =
    "TDC: MID 1 removed from the.tdc.queue: not delivered within its lifetime of 120 s";

/// The log, the attempts (as offsets from the enqueue) and when the journal was done.
async fn journal_with(
    script: Vec<Try>,
    retry_delay: &str,
) -> (Vec<String>, Vec<Duration>, Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "intake_address: i@intake.test\njournal: {{ sender: tdc@gw.test }}\n\
         queue: {{ spool_dir: {} }}\ndelivery: {{ lifetime: 120s, retry_delay: {retry_delay} }}\n",
        dir.path().display()
    );
    let settings = Settings::from_yaml(&yaml, std::path::Path::new("t.yaml")).expect("settings");
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let agent = ScriptedAgent {
        script,
        attempts: attempts.clone(),
    };
    let log = Log::memory();
    let (queue, scheduler) =
        open(&settings, agent, Arc::new(Stats::default()), log.clone()).expect("queue");
    let stop = Arc::new(Notify::new());
    let stopped = stop.clone();
    let running = tokio::spawn(scheduler.run(async move { stopped.notified().await }));
    let start = Instant::now();
    let (record, message) = test_journal(1);
    queue.enqueue(record, message).await.expect("enqueue");
    let finished = loop {
        if log
            .lines()
            .iter()
            .any(|l| l.ends_with("Message finished MID 1 done"))
        {
            break start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "{:#?}",
            log.lines()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    stop.notify_one();
    running.await.expect("scheduler");
    let offsets = attempts
        .lock()
        .expect("attempts")
        .iter()
        .map(|t| t.duration_since(start))
        .collect();
    (log.lines(), offsets, finished)
}

fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|l| l.contains(needle)).count()
}

/// Rows of the retry table: the script, how many attempts, the last line.
#[tokio::test(start_paused = true)]
async fn each_row_of_the_retry_table_in_virtual_time() {
    let network = DeliveryError::new(Stage::Connect, Kind::Network("connection refused".into()));
    let tls = DeliveryError::new(Stage::TlsHandshake, Kind::Tls(TlsFailure::other("alert")));
    let rows: Vec<(&str, Vec<Try>, usize, &str)> = vec![
        ("delivered", vec![Try::Send(Ok(reply(250)))], 1, DELIVERED),
        ("5xx", vec![refused(Stage::Rcpt, 550)], 1, HARD),
        ("TLS", vec![Try::NoConnection(tls)], 1, TLS),
        ("4xx twice", vec![refused(Stage::Rcpt, 451)], 2, HARD),
        ("503 twice", vec![refused(Stage::Mail, 503)], 2, HARD),
        ("552 twice", vec![refused(Stage::Message, 552)], 2, HARD),
        (
            "4xx, then delivered",
            vec![refused(Stage::Data, 421), Try::Send(Ok(reply(250)))],
            2,
            DELIVERED,
        ),
        (
            "network twice",
            vec![Try::NoConnection(network.clone())],
            2,
            HARD,
        ),
        (
            "network, then delivered",
            vec![Try::NoConnection(network), Try::Send(Ok(reply(250)))],
            2,
            DELIVERED,
        ),
    ];
    for (row, script, tries, last) in rows {
        let (lines, attempts, _) = journal_with(script, "5s").await;
        let bounced = if row == "5xx" { 1 } else { 0 };
        assert_eq!(
            count(
                &lines,
                "Info: Bounced: DCID 1 MID 1 to RID 0 - Bounced by destination server with response: 550 scripted"
            ),
            bounced,
            "{row}: the appliance's Bounced line, for a refusal that ends the journal"
        );
        assert_eq!(attempts.len(), tries, "{row}: {lines:#?}");
        assert_eq!(count(&lines, last), 1, "{row}: {lines:#?}");
        assert!(attempts[0] < Duration::from_secs(1), "{row}: tried at once");
        if tries == 2 {
            let gap = attempts[1] - attempts[0];
            assert!(
                gap >= Duration::from_secs(5) && gap < Duration::from_secs(6),
                "{row}: the retry waits retry_delay, {gap:?}"
            );
            assert_eq!(
                count(&lines, "TDC: MID 1 soft bounced, one retry in 5 s"),
                1,
                "{row}"
            );
        } else {
            assert_eq!(count(&lines, "soft bounced"), 0, "{row}");
        }
    }
}

/// A journal whose retry would come after its lifetime: it expires at 120 s exactly,
/// and the retry never runs.
#[tokio::test(start_paused = true)]
async fn a_journal_expires_at_the_end_of_its_lifetime() {
    let (lines, attempts, finished) = journal_with(vec![refused(Stage::Rcpt, 451)], "200s").await;
    assert_eq!(attempts.len(), 1, "{lines:#?}");
    assert_eq!(count(&lines, EXPIRED), 1, "{lines:#?}");
    assert_eq!(count(&lines, HARD), 1);
    assert!(
        finished >= Duration::from_secs(120) && finished < Duration::from_millis(120_100),
        "{finished:?}"
    );
}
