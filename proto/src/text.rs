//! How user-given text and durations read inside messages: quoted and cut short, or written
//! the way a spec writes them. Shared by spec parsing and validation.

/// A user-given string quoted for a message: escaped, and cut at 64 characters so that a
/// megabyte-long name cannot make a megabyte-long error.
pub(crate) fn quoted(text: &str) -> String {
    const SHOWN_CHARS_MAX: usize = 64;
    match text.char_indices().nth(SHOWN_CHARS_MAX) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
    }
}

/// Formats milliseconds the way [`crate::spec::parse_duration_ms`] reads them: `1h30m`,
/// `1s500ms`, `0ms`. Public as `baton_proto::spec::format_duration_ms`.
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0ms".to_string();
    }
    let parts = [
        (ms / 3_600_000, "h"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_cuts_long_text() {
        assert_eq!(quoted("a\"b"), "\"a\\\"b\"");
        let long = "é".repeat(100);
        assert_eq!(quoted(&long), format!("\"{}\"…", "é".repeat(64)));
    }
}
