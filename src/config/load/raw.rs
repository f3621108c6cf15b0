//! The settings file as written: one struct per section, every key optional, unknown
//! keys refused where they stand. Each section is declared once, with
//! [`sections!`]: the same declaration gives serde its fields and gives the levels
//! their key-by-key merge ([`Layer`]), so a new key cannot be read from the cluster
//! file and then be missed at the group or machine level.
//!
//! A key is one of two things. A *section* (`delivery`, `delivery.tls`) merges key by
//! key. Anything else is a *leaf* and is replaced whole by a more specific level,
//! lists included (`policies`, `delivery.route`, `journal.not_clean`): half of one
//! level's list and half of another's would be nobody's intent.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

/// How a key's value combines across levels.
pub(super) trait Layer: Sized {
    /// Puts what `over` sets into `base` and tells `record` the name of each key set.
    fn overlay(
        base: &mut Option<Self>,
        over: Option<Self>,
        key: &str,
        record: &mut dyn FnMut(&str),
    );
    /// Adds the name of every key this value holds (itself, for a leaf).
    fn keys(key: &str, out: &mut Vec<String>);
}

/// A leaf: the more specific level's value replaces the other whole.
macro_rules! leaf_layer {
    ($($(@$param:ident)? $ty:ty),* $(,)?) => {
        $(
            impl$(<$param>)? Layer for $ty {
                fn overlay(
                    base: &mut Option<Self>,
                    over: Option<Self>,
                    key: &str,
                    record: &mut dyn FnMut(&str),
                ) {
                    if over.is_some() {
                        *base = over;
                        record(key);
                    }
                }
                fn keys(key: &str, out: &mut Vec<String>) {
                    out.push(key.to_string());
                }
            }
        )*
    };
}

leaf_layer!(bool, @T Spanned<T>, @T Vec<T>, RawLevels);

/// `section.key`, or `key` at the top.
fn child(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    }
}

/// The name of a field in the file: its own, or the one given with `as`.
macro_rules! key_name {
    ($field:ident) => {
        stringify!($field)
    };
    ($field:ident $key:literal) => {
        $key
    };
}

/// Declares sections of the file. Each field is optional in the file; `field as
/// "name": Type` reads key `name` (for names that are Rust keywords). The field order
/// is the order serde lists the keys in when one is unknown.
macro_rules! sections {
    ($(
        $(#[$meta:meta])*
        struct $name:ident {
            $( $field:ident $(as $key:literal)? : $ty:ty ),* $(,)?
        }
    )*) => {$(
        $(#[$meta])*
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        pub(super) struct $name {
            $(
                $(#[serde(rename = $key)])?
                pub(super) $field: Option<$ty>,
            )*
        }

        impl $name {
            /// Puts every key that `over` sets into `self`, key by key.
            pub(super) fn merge(&mut self, over: $name, section: &str, record: &mut dyn FnMut(&str)) {
                $(
                    Layer::overlay(
                        &mut self.$field,
                        over.$field,
                        &child(section, key_name!($field $($key)?)),
                        record,
                    );
                )*
            }
        }

        impl Layer for $name {
            fn overlay(
                base: &mut Option<Self>,
                over: Option<Self>,
                key: &str,
                record: &mut dyn FnMut(&str),
            ) {
                if let Some(over) = over {
                    base.get_or_insert_with(Default::default).merge(over, key, record);
                }
            }
            fn keys(key: &str, out: &mut Vec<String>) {
                $( <$ty as Layer>::keys(&child(key, key_name!($field $($key)?)), out); )*
            }
        }
    )*};
}

sections! {
    /// The whole file. `levels` is read from the main file only and never merged.
    struct RawSettings {
        enabled: bool,
        intake_address: Spanned<String>,
        milter: RawMilter,
        incoming: RawIncoming,
        journal: RawJournal,
        delivery: RawDelivery,
        queue: RawQueue,
        control: RawControl,
        metrics: RawMetrics,
        tracking: RawTracking,
        check: RawCheck,
        policies: Spanned<Vec<RawPolicy>>,
        levels: RawLevels,
    }

    struct RawTracking {
        max_journals: Spanned<usize>,
        max_age: Spanned<String>,
    }

    struct RawCheck {
        window: Spanned<String>,
        queue_warning: Spanned<String>,
    }

    struct RawMetrics {
        listen: Spanned<String>,
    }

    struct RawControl {
        socket: Spanned<String>,
    }

    struct RawQueue {
        spool_dir: Spanned<String>,
        max_messages: Spanned<usize>,
        max_bytes: Spanned<String>,
    }

    struct RawMilter {
        listen: Spanned<String>,
        max_connections: Spanned<usize>,
        idle_timeout: Spanned<String>,
        socket_mode: Spanned<String>,
        socket_group: Spanned<String>,
    }

    struct RawIncoming {
        daemon_names: Vec<Spanned<String>>,
        internal_networks: Vec<Spanned<String>>,
    }

    struct RawJournal {
        sender: Spanned<String>,
        client_ip_header: Spanned<String>,
        max_size: Spanned<String>,
        not_clean: Vec<RawVerdict>,
    }

    struct RawDelivery {
        route: Spanned<RawRoute>,
        resolver: Spanned<String>,
        port: Spanned<u16>,
        tls: RawTls,
        lifetime: Spanned<String>,
        retry_delay: Spanned<String>,
        shutdown_grace: Spanned<String>,
        min_connections: Spanned<usize>,
        max_connections: Spanned<usize>,
        max_messages_per_connection: Spanned<usize>,
    }

    struct RawTls {
        verify: bool,
        ca_file: Spanned<String>,
        cert_match as "match": Spanned<Vec<Spanned<String>>>,
    }
}

impl RawSettings {
    /// The name of every settings key the file may hold, levels aside, in the order
    /// of the declaration.
    pub(super) fn keys() -> Vec<String> {
        let mut out = Vec::new();
        <RawSettings as Layer>::keys("", &mut out);
        out.retain(|key| key != "levels");
        out
    }
}

/// The main file's `levels`: where the more specific files are.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLevels {
    pub(super) group: Option<Spanned<String>>,
    pub(super) machine: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVerdict {
    pub(super) header: Spanned<String>,
    pub(super) value: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) name: Spanned<String>,
    pub(super) recipients: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) senders: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) connector: Option<Spanned<RawConnector>>,
}

/// `off` is read as a variant name, whatever YAML 1.1 thinks of it; `false` or `no`
/// are unknown variants.
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum RawConnector {
    UseDefault,
    Global,
    Off,
    Custom(Spanned<String>),
}

/// `route:` is the keyword `dns` or a list of hosts. Anything else is kept as `Other`
/// (described) so the error can point at the value itself.
pub(super) enum RawRoute {
    Keyword(String),
    Hosts(Vec<Spanned<String>>),
    Other(String),
}

impl<'de> Deserialize<'de> for RawRoute {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RouteVisitor;

        impl<'de> Visitor<'de> for RouteVisitor {
            type Value = RawRoute;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("dns or a list of hosts")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<RawRoute, E> {
                Ok(RawRoute::Keyword(value.to_string()))
            }

            fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawRoute, E> {
                Ok(RawRoute::Other("a boolean".to_string()))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<RawRoute, E> {
                Ok(RawRoute::Other(format!("the number {value}")))
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<RawRoute, E> {
                Ok(RawRoute::Other(format!("the number {value}")))
            }

            fn visit_f64<E: de::Error>(self, value: f64) -> Result<RawRoute, E> {
                Ok(RawRoute::Other(format!("the number {value}")))
            }

            fn visit_unit<E: de::Error>(self) -> Result<RawRoute, E> {
                Ok(RawRoute::Other("null".to_string()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawRoute, A::Error> {
                let mut hosts = Vec::new();
                while let Some(host) = seq.next_element::<Spanned<String>>()? {
                    hosts.push(host);
                }
                Ok(RawRoute::Hosts(hosts))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRoute, A::Error> {
                while map
                    .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(RawRoute::Other("a mapping".to_string()))
            }
        }

        deserializer.deserialize_any(RouteVisitor)
    }
}
