//! How user-given text and durations read inside messages: quoted and cut short, or written
//! the way a spec writes them, and times as the CLI and the node's messages show them.

/// A user-given string quoted for a message: escaped, and cut at 64 characters so that a
/// megabyte-long name cannot make a megabyte-long error.
pub(crate) fn quoted(text: &str) -> String {
    const SHOWN_CHARS_MAX: usize = 64;
    match text.char_indices().nth(SHOWN_CHARS_MAX) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
    }
}

/// Formats milliseconds the way [`crate::spec::parse_duration_ms`] reads them: `7d`, `1h30m`,
/// `1s500ms`, `0ms`. Public as `baton_proto::spec::format_duration_ms`.
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0ms".to_string();
    }
    let parts = [
        (ms / 86_400_000, "d"),
        (ms / 3_600_000 % 24, "h"),
        (ms / 60_000 % 60, "m"),
        (ms / 1000 % 60, "s"),
        (ms % 1000, "ms"),
    ];
    parts
        .iter()
        .filter(|(value, _)| *value > 0)
        .map(|(value, unit)| format!("{value}{unit}"))
        .collect()
}

/// `2024-05-01 12:30:05` (UTC) for milliseconds since the epoch; `-` for 0 ("not yet").
pub fn format_time_ms(ms: u64) -> String {
    if ms == 0 {
        return "-".to_string();
    }
    let seconds = ms / 1000;
    let (days, second_of_day) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`), so neither the CLI nor the node needs a date library for one column.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_cuts_long_text() {
        assert_eq!(quoted("a\"b"), "\"a\\\"b\"");
        let long = "é".repeat(100);
        assert_eq!(quoted(&long), format!("\"{}\"…", "é".repeat(64)));
    }

    #[test]
    fn times_read_as_utc_dates() {
        assert_eq!(format_time_ms(0), "-");
        assert_eq!(format_time_ms(1), "1970-01-01 00:00:00");
        assert_eq!(format_time_ms(1_714_566_605_123), "2024-05-01 12:30:05");
        assert_eq!(format_time_ms(951_782_400_000), "2000-02-29 00:00:00");
    }
}
