//! SIGHUP: re-read the settings file. A bad file is refused and the settings in force
//! stay; a good one applies to new messages (policies, intake addresses, journal and
//! incoming settings). Settings of running parts (sockets, delivery, queue) need a
//! restart, and the log says which.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::Settings;
use crate::milter::Shared;
use crate::tdclog::{Event, Log};

/// Keys that a reload cannot apply to a running daemon.
pub fn restart_needed(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let mut keys = Vec::new();
    // milter.max_connections is read at each new connection: a reload applies it.
    if old.milter.listen != new.milter.listen || old.milter.idle_timeout != new.milter.idle_timeout
    {
        keys.push("milter");
    }
    if old.delivery != new.delivery {
        keys.push("delivery");
    }
    if old.queue != new.queue {
        keys.push("queue");
    }
    if old.control != new.control {
        keys.push("control");
    }
    if old.metrics != new.metrics {
        keys.push("metrics");
    }
    if old.tracking != new.tracking {
        keys.push("tracking");
    }
    keys
}

/// Reloads once per message on `requests` until the sender side is gone.
pub async fn serve(mut requests: mpsc::Receiver<()>, shared: Arc<Shared>, log: Log) {
    while requests.recv().await.is_some() {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
        reload(&shared, &log);
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }
}

/// One reload; its outcome is logged.
pub fn reload(shared: &Shared, log: &Log) {
    let current = shared.settings();
    let path = current.path.display().to_string();
    match Settings::load(&current.path) {
        Ok(new) => {
            let pending = restart_needed(&current, &new);
            shared.replace_settings(Arc::new(new));
            log.event(Event::Reloaded {
                path: &path,
                restart_needed: &pending.join(", "),
            });
        }
        Err(e) => log.event(Event::ReloadRefused {
            error: &e.to_string(),
        }),
    }
}
