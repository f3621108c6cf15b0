//! Cluster, group and machine levels (docs/POLICIES.md, "Levels"): the most specific file that sets a
//! key wins. Sections merge key by key; a list (policies, routes, verdicts) is one key
//! and is replaced whole, because half of one level's list and half of another's
//! would be nobody's intent.

use super::{Origins, RawSettings};
use crate::config::Level;

/// Moves each key that `over` sets into `base` and records where it came from.
macro_rules! overlay_section {
    ($base:expr, $over:expr, $origins:expr, $level:expr, $file:expr, $section:literal, [$($field:ident),* $(,)?]) => {
        if let Some(over) = $over {
            let base = $base.get_or_insert_with(Default::default);
            $(
                if over.$field.is_some() {
                    base.$field = over.$field;
                    $origins.insert(concat!($section, ".", stringify!($field)).to_string(), ($level, $file));
                }
            )*
        }
    };
}

/// Applies one level's file on top of `base` (the cluster file on an empty base).
pub(super) fn overlay(
    base: &mut RawSettings,
    over: RawSettings,
    origins: &mut Origins,
    level: Level,
    file: usize,
) {
    if over.enabled.is_some() {
        base.enabled = over.enabled;
        origins.insert("enabled".into(), (level, file));
    }
    if over.intake_address.is_some() {
        base.intake_address = over.intake_address;
        origins.insert("intake_address".into(), (level, file));
    }
    if over.policies.is_some() {
        base.policies = over.policies;
        origins.insert("policies".into(), (level, file));
    }
    overlay_section!(
        base.milter,
        over.milter,
        origins,
        level,
        file,
        "milter",
        [
            listen,
            max_connections,
            idle_timeout,
            socket_mode,
            socket_group
        ]
    );
    overlay_section!(
        base.incoming,
        over.incoming,
        origins,
        level,
        file,
        "incoming",
        [daemon_names, internal_networks]
    );
    overlay_section!(
        base.journal,
        over.journal,
        origins,
        level,
        file,
        "journal",
        [sender, client_ip_header, max_size, not_clean]
    );
    if let Some(mut delivery) = over.delivery {
        let mut tls = delivery.tls.take();
        let base_delivery = base.delivery.get_or_insert_with(Default::default);
        // `match` is a Rust keyword, so the field has another name than the key.
        if let Some(cert_match) = tls.as_mut().and_then(|t| t.cert_match.take()) {
            base_delivery
                .tls
                .get_or_insert_with(Default::default)
                .cert_match = Some(cert_match);
            origins.insert("delivery.tls.match".into(), (level, file));
        }
        overlay_section!(
            base_delivery.tls,
            tls,
            origins,
            level,
            file,
            "delivery.tls",
            [verify, ca_file]
        );
        overlay_section!(
            base.delivery,
            Some(delivery),
            origins,
            level,
            file,
            "delivery",
            [
                route,
                resolver,
                port,
                lifetime,
                retry_delay,
                shutdown_grace,
                min_connections,
                max_connections,
                max_messages_per_connection
            ]
        );
    }
    overlay_section!(
        base.queue,
        over.queue,
        origins,
        level,
        file,
        "queue",
        [spool_dir, max_messages, max_bytes]
    );
    overlay_section!(
        base.control,
        over.control,
        origins,
        level,
        file,
        "control",
        [socket]
    );
    overlay_section!(
        base.metrics,
        over.metrics,
        origins,
        level,
        file,
        "metrics",
        [listen]
    );
    overlay_section!(
        base.tracking,
        over.tracking,
        origins,
        level,
        file,
        "tracking",
        [max_journals, max_age]
    );
    overlay_section!(
        base.check,
        over.check,
        origins,
        level,
        file,
        "check",
        [window, queue_warning]
    );
}
