//! The indymilter callbacks. They collect the envelope and the message, and at end of
//! message hand over to policy → journal → queue. They fail open: whatever goes wrong
//! here, the original is accepted, and the trouble is logged.
//!
//! No callback does network I/O: the MTA waits on every callback, and delivery to the
//! intake can take as long as its lifetime.

mod decide;
pub mod listener;
mod message;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use indymilter::{
    Actions, Callbacks, Context, EomContext, MacroStage, NegotiateContext, ProtoOpts, SocketInfo,
    Status,
};
use time::OffsetDateTime;

use crate::config::Settings;
use crate::journal::{self, JournalFormat};
use crate::outcome::{Outcome, Skip};
use crate::policy;
use crate::queue::Queue;
use crate::record::Record;
use crate::stats::MilterSlot;
use crate::tdclog::{Event, Log};
use crate::tracking::Tracker;
use decide::{decide, MessageContext, QUARANTINED_PREFIX};
use message::Message;

/// What all milter connections share.
pub struct Shared {
    /// Replaced as a whole on reload; each message keeps the snapshot it began with.
    settings: RwLock<Arc<Settings>>,
    pub queue: Queue,
    pub log: Log,
    /// Where messages that were not journaled are kept for `track`.
    tracker: Arc<Tracker>,
    /// `enabled: false` was logged for the settings in force.
    disabled_noted: AtomicBool,
}

impl Shared {
    pub fn new(settings: Arc<Settings>, queue: Queue, log: Log, tracker: Arc<Tracker>) -> Shared {
        Shared {
            settings: RwLock::new(settings),
            queue,
            log,
            tracker,
            disabled_noted: AtomicBool::new(false),
        }
    }

    pub fn settings(&self) -> Arc<Settings> {
        match self.settings.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// New messages use `settings` from now on.
    pub fn replace_settings(&self, settings: Arc<Settings>) {
        match self.settings.write() {
            Ok(mut s) => *s = settings,
            Err(poisoned) => *poisoned.into_inner() = settings,
        }
        self.disabled_noted.store(false, Ordering::Relaxed);
    }
}

/// Per MTA connection.
#[derive(Debug, Default)]
pub struct Connection {
    client_ip: Option<IpAddr>,
    /// LEADING_SPACE was negotiated: header values arrive exactly as sent.
    exact_header_values: bool,
    /// The stages the MTA agreed not to wait for our reply to.
    no_reply: ProtoOpts,
    /// The place among milter.max_connections; `None`: the connection came past the
    /// limit and its messages are only counted ("milter busy").
    slot: Option<MilterSlot>,
    message: Option<Message>,
}

pub fn callbacks(shared: Arc<Shared>) -> Callbacks<Connection> {
    let mail_shared = shared.clone();
    let negotiate_shared = shared.clone();
    Callbacks::new()
        .on_negotiate(move |cx, _actions, opts| {
            let limit = negotiate_shared.settings().milter.max_connections;
            let slot = negotiate_shared.queue.stats().milter_session(limit);
            Box::pin(negotiate(cx, opts, slot))
        })
        .on_connect(|cx, _host, socket| Box::pin(connect(cx, socket)))
        .on_mail(move |cx, args| Box::pin(mail(mail_shared.settings(), cx, args)))
        .on_rcpt(|cx, args| Box::pin(rcpt(cx, args)))
        .on_header(|cx, name, value| {
            Box::pin(async move {
                if let (exact, Some(msg)) = message_of(cx) {
                    msg.add_header(name.as_bytes(), value.as_bytes(), exact);
                }
                reply(cx, ProtoOpts::NOREPLY_HEADER)
            })
        })
        .on_eoh(|cx| {
            Box::pin(async move {
                if let (_, Some(msg)) = message_of(cx) {
                    msg.end_of_headers();
                }
                reply(cx, ProtoOpts::NOREPLY_EOH)
            })
        })
        .on_body(|cx, chunk| {
            Box::pin(async move {
                if let (_, Some(msg)) = message_of(cx) {
                    msg.add_body(&chunk);
                }
                reply(cx, ProtoOpts::NOREPLY_BODY)
            })
        })
        .on_eom(move |cx| Box::pin(end_of_message(shared.clone(), cx)))
        .on_abort(|cx| {
            Box::pin(async move {
                if let Some(conn) = cx.data.as_mut() {
                    conn.message = None;
                }
                Status::Continue
            })
        })
        .on_close(|cx| {
            Box::pin(async move {
                cx.data = None;
                Status::Continue
            })
        })
}

/// Continue, or no reply at all where the MTA agreed not to wait for one.
fn reply(cx: &Context<Connection>, stage: ProtoOpts) -> Status {
    match &cx.data {
        Some(conn) if conn.no_reply.contains(stage) => Status::Noreply,
        _ => Status::Continue,
    }
}

fn message_of(cx: &mut Context<Connection>) -> (bool, Option<&mut Message>) {
    match cx.data.as_mut() {
        Some(conn) => (conn.exact_header_values, conn.message.as_mut()),
        None => (false, None),
    }
}

async fn negotiate(
    cx: &mut NegotiateContext<Connection>,
    offered: ProtoOpts,
    slot: Option<MilterSlot>,
) -> Status {
    // We change nothing in the message: ask for no modification actions at all.
    cx.requested_actions = Actions::REQUEST_MACROS;
    let exact = offered.contains(ProtoOpts::LEADING_SPACE);
    if exact {
        cx.requested_opts |= ProtoOpts::LEADING_SPACE;
    }
    // Only end of message has an answer that matters (and even that is always to go
    // on), so the MTA need not wait for one anywhere else: one round trip less per
    // connection, sender, recipient, header and body chunk.
    let no_reply = offered
        & (ProtoOpts::NOREPLY_CONNECT
            | ProtoOpts::NOREPLY_MAIL
            | ProtoOpts::NOREPLY_RCPT
            | ProtoOpts::NOREPLY_HEADER
            | ProtoOpts::NOREPLY_EOH
            | ProtoOpts::NOREPLY_BODY);
    cx.requested_opts |= no_reply;
    // Asking for a stage's list replaces the MTA's default list for that stage, so
    // each list names everything we read there. {daemon_name} comes with the default
    // connect macros of both Postfix and Sendmail. {quarantine} is Sendmail's: set
    // when an earlier filter quarantined the message (Postfix never sends it, and
    // stops its later milters instead).
    cx.requested_macros
        .insert(MacroStage::Mail, c"{auth_authen}".into());
    cx.requested_macros
        .insert(MacroStage::Eom, c"i {auth_authen} {quarantine}".into());
    // Sendmail (8.14 to at least 8.17) uses a filter's own end-of-message list only
    // when the filter also asked for an end-of-header list (milter.c, milter_data()).
    cx.requested_macros.insert(MacroStage::Eoh, c"i".into());
    cx.data = Some(Connection {
        exact_header_values: exact,
        no_reply,
        slot,
        ..Connection::default()
    });
    Status::Continue
}

async fn connect(cx: &mut Context<Connection>, socket: SocketInfo) -> Status {
    let conn = cx.data.get_or_insert_with(Connection::default);
    conn.client_ip = match socket {
        SocketInfo::Inet(addr) => Some(addr.ip()),
        _ => None,
    };
    reply(cx, ProtoOpts::NOREPLY_CONNECT)
}

async fn mail(
    settings: Arc<Settings>,
    cx: &mut Context<Connection>,
    args: Vec<std::ffi::CString>,
) -> Status {
    let sender = args
        .first()
        .map(|a| a.to_string_lossy().into_owned())
        .unwrap_or_default();
    let conn = cx.data.get_or_insert_with(Connection::default);
    let store = conn.slot.is_some();
    conn.message = Some(Message::with_storage(sender, settings, store));
    reply(cx, ProtoOpts::NOREPLY_MAIL)
}

async fn rcpt(cx: &mut Context<Connection>, args: Vec<std::ffi::CString>) -> Status {
    if let (Some(msg), Some(rcpt)) = (
        cx.data.as_mut().and_then(|c| c.message.as_mut()),
        args.first(),
    ) {
        msg.recipients.push(rcpt.to_string_lossy().into_owned());
    }
    // Never Accept here: that would hide the remaining recipients from us.
    reply(cx, ProtoOpts::NOREPLY_RCPT)
}

fn macro_value(cx: &EomContext<Connection>, name: &std::ffi::CStr) -> Option<String> {
    cx.macros
        .get(name)
        .map(|v| v.to_string_lossy().into_owned())
        .filter(|v| !v.is_empty())
}

async fn end_of_message(shared: Arc<Shared>, cx: &mut EomContext<Connection>) -> Status {
    let started = std::time::Instant::now();
    let status = end_of_message_inner(&shared, cx).await;
    shared
        .queue
        .stats()
        .end_of_message_seconds
        .observe(started.elapsed().as_secs_f64());
    status
}

async fn end_of_message_inner(shared: &Shared, cx: &mut EomContext<Connection>) -> Status {
    let queue_id = macro_value(cx, c"i").unwrap_or_else(|| "NONE".into());
    let authenticated = macro_value(cx, c"{auth_authen}").is_some();
    let daemon_name = macro_value(cx, c"{daemon_name}");
    let quarantine = macro_value(cx, c"{quarantine}");
    let Some(conn) = cx.data.as_mut() else {
        return Status::Accept;
    };
    let Some(mut msg) = conn.message.take() else {
        return Status::Accept;
    };
    msg.end_of_body();
    let context = MessageContext {
        queue_id: &queue_id,
        authenticated,
        daemon_name: daemon_name.as_deref(),
        client_ip: conn.client_ip,
        quarantine: quarantine.as_deref(),
        busy: conn.slot.is_none(),
    };
    let outcome = journal_message(shared, &context, &msg).await;
    shared.queue.stats().message(outcome);
    // The original always goes on, whatever happened to its journals.
    Status::Accept
}

/// Decides, then builds and enqueues one journal per intake; logs, tracks and
/// returns the message's one outcome.
async fn journal_message(shared: &Shared, cx: &MessageContext<'_>, msg: &Message) -> Outcome {
    let message_id = msg.message_id.as_deref().unwrap_or("");
    let jobs = match decide(cx, msg) {
        Ok(jobs) => jobs,
        Err(skip) => {
            note_skip(shared, cx.queue_id, message_id, &skip);
            return skip.outcome;
        }
    };
    let settings = &msg.settings;
    let client_ip = cx.client_ip.map(|ip| ip.to_string());
    let added_headers =
        message::client_ip_line(&settings.journal.client_ip_header, client_ip.as_deref());
    let sender = policy::strip_brackets(&msg.sender);
    let mut refused: Option<String> = None;
    for job in jobs {
        let mid = match shared.queue.next_mid().await {
            Ok(mid) => mid,
            Err(e) => {
                refused = Some(journal_refused(shared, cx.queue_id, message_id, &e));
                continue;
            }
        };
        let now = OffsetDateTime::now_utc();
        let journal_id = journal::journal_message_id(mid, &settings.journal.sender, now);
        let built = journal::build(
            JournalFormat::default(),
            &journal::Envelope {
                from: &settings.journal.sender,
                to: &job.intake,
                recipients: &job.recipients,
                message_id: &journal_id,
                date: now,
            },
            &journal::Original {
                sender,
                subject: msg.subject.as_deref(),
                message_id: msg.message_id.as_deref(),
                added_headers: added_headers.as_bytes(),
                bytes: msg.original(),
            },
        );
        let record = Record::new(
            mid,
            &settings.journal.sender,
            &job.intake,
            built.eight_bit,
            cx.queue_id,
            message_id,
        );
        if let Err(e) = shared.queue.enqueue(record, built.bytes.into()).await {
            refused = Some(journal_refused(shared, cx.queue_id, message_id, &e));
        }
    }
    match refused {
        // Logged per journal already; tracked once for the message.
        Some(reason) => {
            let skip = Skip::new(Outcome::Refused, reason);
            shared.tracker.not_journaled(cx.queue_id, message_id, &skip);
            Outcome::Refused
        }
        None => Outcome::Journaled,
    }
}

/// A journal the queue would not take: logged and counted; the reason for `track`.
fn journal_refused(
    shared: &Shared,
    queue_id: &str,
    message_id: &str,
    error: &dyn std::fmt::Display,
) -> String {
    let reason = error.to_string();
    shared.queue.stats().refused();
    shared.log.event(Event::NotJournaled {
        queue_id,
        message_id,
        reason: &reason,
    });
    reason
}

/// Tracks every skip; logs those the settings do not ask for (docs/LOGGING.md).
fn note_skip(shared: &Shared, queue_id: &str, message_id: &str, skip: &Skip) {
    shared.tracker.not_journaled(queue_id, message_id, skip);
    match skip.outcome {
        outcome if outcome.expected() => {}
        Outcome::TooLarge => {
            shared.queue.stats().too_large();
            log_skip(shared, queue_id, message_id, &skip.reason);
        }
        Outcome::Quarantined => {
            let reason = skip
                .reason
                .strip_prefix(QUARANTINED_PREFIX)
                .unwrap_or(&skip.reason);
            shared.log.event(Event::Quarantined {
                queue_id,
                message_id,
                reason,
            });
        }
        // Once per settings: a switched-off connector is one decision, not news
        // about each message.
        Outcome::Disabled => {
            if !shared.disabled_noted.swap(true, Ordering::Relaxed) {
                let reason = format!(
                    "{} (logged once until the settings are reloaded; every such message is counted)",
                    skip.reason
                );
                log_skip(shared, queue_id, message_id, &reason);
            }
        }
        _ => log_skip(shared, queue_id, message_id, &skip.reason),
    }
}

fn log_skip(shared: &Shared, queue_id: &str, message_id: &str, reason: &str) {
    shared.log.event(Event::NotJournaled {
        queue_id,
        message_id,
        reason,
    });
}
