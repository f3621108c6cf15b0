//! The machinery of the [`sections!`] table in `raw.rs`, where every settings key is
//! declared once: the macro, and the trait that merges the levels.

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

leaf_layer!(bool, @T Spanned<T>, @T Vec<T>);

/// `section.key`, or `key` at the top.
pub(super) fn child(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    }
}

/// The full name of a key (`delivery.tls.match`): the section's, a dot, and the
/// field's own name or the one given with `as`.
macro_rules! key_name {
    ($section:expr, $field:ident) => {
        $crate::config::load::sections::child($section, stringify!($field))
    };
    ($section:expr, $field:ident $key:literal) => {
        $crate::config::load::sections::child($section, $key)
    };
}

/// The typed value of one key (see [`sections!`] for the forms of `how`).
macro_rules! convert_key {
    ($loader:ident, $raw:ident, $key:expr, $field:ident, $ty:ty; section) => {
        match &$raw.$field {
            Some(written) => <$ty>::convert($loader, written, $key)?,
            None => <$ty>::convert($loader, &<$ty>::default(), $key)?,
        }
    };
    ($loader:ident, $raw:ident, $key:expr, $field:ident, $ty:ty; by $by:expr, $show:expr) => {
        ($by)($loader, $key, $raw)?
    };
    ($loader:ident, $raw:ident, $key:expr, $field:ident, $ty:ty;
        $convert:expr, default_with $default:expr, $($show:tt)*) => {
        match &$raw.$field {
            Some(written) => ($convert)($loader, $key, written)?,
            None => ($default)($loader, $key)?,
        }
    };
    ($loader:ident, $raw:ident, $key:expr, $field:ident, $ty:ty;
        $convert:expr, default $default:expr, $($show:tt)*) => {
        match &$raw.$field {
            Some(written) => ($convert)($loader, $key, written)?,
            None => $default,
        }
    };
}

/// The `show-config` rows of one key (see [`sections!`] for the forms of `how`).
macro_rules! show_key {
    ($out:ident, $value:expr, $key:expr, $ty:ty; section) => {
        <$ty>::show($value, &$key, $out)
    };
    ($out:ident, $value:expr, $key:expr, $ty:ty; by $by:expr, $show:expr) => {
        $out.push(($key, ($show)($value)))
    };
    ($out:ident, $value:expr, $key:expr, $ty:ty;
        $convert:expr, $default_kind:ident $default:expr, rows $show:expr) => {{
        let key = $key;
        for row in ($show)($value) {
            $out.push((key.clone(), row));
        }
    }};
    ($out:ident, $value:expr, $key:expr, $ty:ty;
        $convert:expr, $default_kind:ident $default:expr, $show:expr) => {
        $out.push(($key, ($show)($value)))
    };
}

/// Declares the sections of the file: `struct Raw => Typed { key: RawType [how], .. }`.
/// Each key becomes an optional field of `Raw` (serde reads it; `key as "name"` reads
/// key `name`, for names that are Rust keywords) and the field of the same name of
/// `Typed`. The order of the keys is the order serde lists them in when one is
/// unknown, the order of conversion (so of errors) and the order of `show-config`.
///
/// `how` is one of:
/// - `section`: a section of its own, declared in the same table;
/// - `convert, default VALUE, show::render`: when the key is set,
///   `convert(loader, key, &written)` checks the value written and gives the typed one,
///   or an error that points at it; when it is not, the typed value is `VALUE`.
///   `default_with f` instead computes it, `f(loader, key)`, where that can fail;
///   `rows show::render` gives a row per item, not one row. `render(&typed)` is the
///   text `show-config` prints;
/// - `by f, show::render`: a key whose value depends on other keys of the section:
///   `f(loader, key, &raw_section)` gives it, default included.
///
/// After the keys, optionally: `unread { key: RawType }` for keys serde reads but the
/// levels and the conversion leave alone; `extra { field: VALUE }` for fields of `Typed`
/// that are no keys; `check f;` for a rule across keys, `f(loader, &raw, &typed)`, run
/// once the section is converted.
macro_rules! sections {
    ($(
        $(#[$meta:meta])*
        struct $name:ident => $typed:ident {
            $(
                $(#[$field_meta:meta])*
                $field:ident $(as $key:literal)? : $ty:ty [$($how:tt)*]
            ),* $(,)?
        }
        $(unread { $($unread:ident : $unread_ty:ty),* $(,)? })?
        $(extra { $($extra:ident : $extra_value:expr),* $(,)? })?
        $(check $check:expr;)?
    )*) => {$(
        $(#[$meta])*
        #[derive(::serde::Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        pub(super) struct $name {
            $(
                $(#[$field_meta])*
                $(#[serde(rename = $key)])?
                pub(super) $field: Option<$ty>,
            )*
            $($(pub(super) $unread: Option<$unread_ty>,)*)?
        }

        impl $name {
            /// Puts every key that `over` sets into `self`, key by key.
            pub(super) fn merge(
                &mut self,
                over: $name,
                section: &str,
                record: &mut dyn FnMut(&str),
            ) {
                $(
                    $crate::config::load::sections::Layer::overlay(
                        &mut self.$field,
                        over.$field,
                        &key_name!(section, $field $($key)?),
                        record,
                    );
                )*
            }

            /// The typed section: each key checked, or its default, in the order of
            /// the declaration.
            pub(super) fn convert(
                loader: &$crate::config::load::Loader<'_>,
                raw: &$name,
                section: &str,
            ) -> Result<$typed, $crate::config::ConfigError> {
                let typed = $typed {
                    $($field: {
                        let key = key_name!(section, $field $($key)?);
                        convert_key!(loader, raw, key.as_str(), $field, $ty; $($how)*)
                    },)*
                    $($($extra: $extra_value,)*)?
                };
                $(($check)(loader, raw, &typed)?;)?
                Ok(typed)
            }

            /// The `show-config` rows of the section, (key, value), in the order of
            /// the declaration.
            pub(super) fn show(typed: &$typed, section: &str, out: &mut Vec<(String, String)>) {
                $(
                    show_key!(
                        out,
                        &typed.$field,
                        key_name!(section, $field $($key)?),
                        $ty;
                        $($how)*
                    );
                )*
            }
        }

        impl $crate::config::load::sections::Layer for $name {
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
                $(
                    <$ty as $crate::config::load::sections::Layer>::keys(
                        &key_name!(key, $field $($key)?),
                        out,
                    );
                )*
            }
        }
    )*};
}
