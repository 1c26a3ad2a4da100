//! Durations as users write them: Go's `time.ParseDuration` syntax plus a whole-value `d` suffix.
//!
//! `30m`, `2h30m`, `1.5h`, `500ms`, `90d`, `1.5d` parse; `1d12h`, `-1h`, `""` and `10` do not
//! (bare numbers are seconds only where a JSON number is given, which callers handle).

use std::time::Duration;

/// Why a duration string was refused; the message names the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error(
        "invalid duration {0:?}: expected a number with a unit, like 30s, 15m, 2h30m, 1.5h or 90d"
    )]
    Invalid(String),
    #[error("invalid duration {0:?}: negative durations are not allowed")]
    Negative(String),
    #[error("invalid duration {0:?}: too large")]
    Overflow(String),
}

const NANOS_PER_DAY: f64 = 86_400e9;

/// Parses Go duration syntax, or a single number followed by `d` (days).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let invalid = || DurationError::Invalid(text.to_owned());
    if text.starts_with('-') {
        return Err(DurationError::Negative(text.to_owned()));
    }
    let unsigned = text.strip_prefix('+').unwrap_or(text);
    if let Some(days) = unsigned.strip_suffix('d') {
        let value = parse_decimal(days).ok_or_else(invalid)?;
        return nanos_to_duration(value * NANOS_PER_DAY, text);
    }
    if unsigned == "0" {
        return Ok(Duration::ZERO);
    }
    if unsigned.is_empty() {
        return Err(invalid());
    }
    let mut total_nanos = 0f64;
    let mut rest = unsigned;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let value = parse_decimal(&rest[..number_len]).ok_or_else(invalid)?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3_600e9,
            _ => return Err(invalid()),
        };
        total_nanos += value * nanos_per_unit;
        rest = &rest[unit_len..];
    }
    nanos_to_duration(total_nanos, text)
}

/// Formats like Go's `Duration.String()` for whole seconds and above, e.g. `1h0m0s`, `15m0s`.
pub fn format_go_duration(duration: Duration) -> String {
    let total = duration.as_secs();
    let (hours, minutes, seconds) = (total / 3600, (total % 3600) / 60, total % 60);
    let fraction = duration.subsec_nanos();
    let seconds_text = if fraction == 0 {
        seconds.to_string()
    } else {
        let text = format!("{seconds}.{fraction:09}");
        text.trim_end_matches('0').to_owned()
    };
    match (hours, minutes) {
        (0, 0) => format!("{seconds_text}s"),
        (0, _) => format!("{minutes}m{seconds_text}s"),
        _ => format!("{hours}h{minutes}m{seconds_text}s"),
    }
}

/// A non-negative decimal without exponent or sign: `12`, `1.5`, `.5`, `5.`.
fn parse_decimal(text: &str) -> Option<f64> {
    let valid = !text.is_empty()
        && text != "."
        && text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && text.bytes().filter(|&b| b == b'.').count() <= 1;
    valid.then(|| text.parse().ok()).flatten()
}

fn nanos_to_duration(nanos: f64, text: &str) -> Result<Duration, DurationError> {
    // Go's limit: about 290 years in int64 nanoseconds.
    if !nanos.is_finite() || nanos > i64::MAX as f64 {
        return Err(DurationError::Overflow(text.to_owned()));
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_units_combinations_decimals_and_days() {
        let cases = [
            ("30m", 1_800),
            ("2h30m", 9_000),
            ("1.5h", 5_400),
            ("90d", 7_776_000),
            ("1.5d", 129_600),
            ("1h0m0s", 3_600),
            ("45s", 45),
            ("0", 0),
        ];
        for (text, seconds) in cases {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(seconds)),
                "{text}"
            );
        }
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1us"), Ok(Duration::from_micros(1)));
    }

    #[test]
    fn refuses_what_go_and_upstream_refuse() {
        for text in [
            "",
            "10",
            "1d12h",
            "h",
            "1x",
            "1.2.3s",
            ".s",
            "d",
            "1 h",
            "ten minutes",
        ] {
            assert!(
                matches!(parse_duration(text), Err(DurationError::Invalid(_))),
                "{text:?} should be invalid"
            );
        }
        assert_eq!(
            parse_duration("-1h"),
            Err(DurationError::Negative("-1h".into()))
        );
        assert!(matches!(
            parse_duration("9999999999h"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn error_message_names_the_text_and_the_expected_form() {
        let message = parse_duration("soon").unwrap_err().to_string();
        assert_eq!(
            message,
            "invalid duration \"soon\": expected a number with a unit, like 30s, 15m, 2h30m, 1.5h or 90d"
        );
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format_go_duration(Duration::from_secs(900)), "15m0s");
        assert_eq!(format_go_duration(Duration::from_secs(5)), "5s");
        assert_eq!(format_go_duration(Duration::from_millis(1500)), "1.5s");
    }
}
