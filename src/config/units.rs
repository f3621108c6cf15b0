//! Durations and sizes as admins write them: a whole number and a unit (`120s`, `50MiB`).
//!
//! A bare number is refused on purpose: `lifetime: 120` could mean seconds or
//! milliseconds, and `max_size: 50` bytes is surely not what was meant.

use std::time::Duration;

/// Duration units, longest spelling first so `ms` is not read as `m` + junk.
const DURATION_UNITS: &[(&str, u64)] = &[("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)];

/// Size units (bytes per unit). Binary units are powers of 1024, decimal ones of 1000.
const SIZE_UNITS: &[(&str, u64)] = &[
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("kB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("B", 1),
];

/// Parses `250ms`, `120s`, `5m` or `2h`. White space between number and unit is allowed.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = split(text, "duration", "120s", &unit_names(DURATION_UNITS))?;
    let Some(&(_, millis)) = DURATION_UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(unknown_unit(text, unit, DURATION_UNITS));
    };
    number
        .checked_mul(millis)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration '{}' is too large", text.trim()))
}

/// Parses `50MiB`, `2GiB`, `512kB`, `100B` into a number of bytes.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let (number, unit) = split(text, "size", "50MiB", &unit_names(SIZE_UNITS))?;
    let Some(&(_, factor)) = SIZE_UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(unknown_unit(text, unit, SIZE_UNITS));
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("size '{}' is too large", text.trim()))
}

fn unit_names(units: &[(&str, u64)]) -> String {
    units
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn unknown_unit(text: &str, unit: &str, units: &[(&str, u64)]) -> String {
    format!(
        "unknown unit '{unit}' in '{}'; use one of {}",
        text.trim(),
        unit_names(units)
    )
}

/// Splits `120s` into (120, "s"). `what` and `example` only word the errors.
fn split<'t>(
    text: &'t str,
    what: &str,
    example: &str,
    units: &str,
) -> Result<(u64, &'t str), String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("{what} is empty; write it like {example}"));
    }
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let unit = unit.trim_start();
    if number.is_empty() {
        return Err(format!(
            "{what} '{text}' must start with a whole number, like {example}"
        ));
    }
    if unit.is_empty() {
        return Err(format!(
            "{what} '{text}' has no unit; write it like {example} (units: {units})"
        ));
    }
    if unit.starts_with(['.', ',']) {
        return Err(format!(
            "{what} '{text}' must be a whole number with a unit, like {example}"
        ));
    }
    let number = number
        .parse::<u64>()
        .map_err(|_| format!("{what} '{text}' is too large"))?;
    Ok((number, unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("120s"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration(" 10 s "), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn duration_without_unit_is_refused() {
        let err = parse_duration("120").unwrap_err();
        assert!(err.contains("'120' has no unit"), "{err}");
        assert!(err.contains("ms, s, m, h"), "{err}");
    }

    #[test]
    fn duration_mistakes_are_refused() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").unwrap_err().contains("whole number"));
        assert!(parse_duration("1.5s").unwrap_err().contains("whole number"));
        assert!(parse_duration("-5s").is_err());
        let err = parse_duration("5 days").unwrap_err();
        assert!(err.contains("unknown unit 'days'"), "{err}");
        assert!(parse_duration("5S").is_err());
        assert!(parse_duration("99999999999999999999s")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_duration("18446744073709551615h")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn sizes_binary_and_decimal() {
        assert_eq!(parse_size("100B"), Ok(100));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("50MiB"), Ok(50 * 1024 * 1024));
        assert_eq!(parse_size("2GiB"), Ok(2 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("512kB"), Ok(512_000));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("1 GB"), Ok(1_000_000_000));
    }

    #[test]
    fn size_mistakes_are_refused() {
        let err = parse_size("52428800").unwrap_err();
        assert!(err.contains("has no unit"), "{err}");
        assert!(err.contains("MiB"), "{err}");
        assert!(parse_size("50M").unwrap_err().contains("unknown unit 'M'"));
        assert!(parse_size("50mib").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("0.5GiB").is_err());
        assert!(parse_size("99999999999GiB")
            .unwrap_err()
            .contains("too large"));
    }
}
