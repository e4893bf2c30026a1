//! The pieces of the human output: aligned tables, UTC times, and cells kept to one line.

use std::collections::BTreeMap;

/// Columns padded to their widest cell, two spaces apart, no trailing spaces.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(header: I) -> Table {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<I: IntoIterator<Item = S>, S: Into<String>>(&mut self, cells: I) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn render(&self) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.header.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for line in std::iter::once(&self.header).chain(&self.rows) {
            for (index, cell) in line.iter().enumerate() {
                widths[index] = widths[index].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.header).chain(&self.rows) {
            let mut text = String::new();
            for (index, cell) in line.iter().enumerate() {
                if index > 0 {
                    text.push_str("  ");
                }
                text.push_str(cell);
                let pad = widths[index] - cell.chars().count();
                text.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
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
/// `civil_from_days`), so the CLI needs no date library for one column.
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

/// The first line of `text`, cut to `chars_max` characters with `…`: keeps table rows one line.
pub(super) fn one_line(text: &str, chars_max: usize) -> String {
    let first = text.lines().next().unwrap_or("").trim_end();
    let cut: String = first.chars().take(chars_max).collect();
    if cut.len() < first.len() || text.trim_end().contains('\n') {
        format!(
            "{}…",
            cut.chars()
                .take(chars_max.saturating_sub(1))
                .collect::<String>()
        )
    } else {
        cut
    }
}

pub(super) fn labels_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".to_string();
    }
    labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_in_utc() {
        assert_eq!(format_time_ms(0), "-");
        assert_eq!(format_time_ms(1), "1970-01-01 00:00:00");
        assert_eq!(format_time_ms(1_714_566_605_123), "2024-05-01 12:30:05");
        assert_eq!(format_time_ms(951_782_400_000), "2000-02-29 00:00:00");
    }

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let mut table = Table::new(["A", "LONG HEADER", "C"]);
        table.row(["wide cell", "x", ""]);
        assert_eq!(table.render(), "A          LONG HEADER  C\nwide cell  x\n");
    }

    #[test]
    fn long_errors_are_cut_to_one_line() {
        assert_eq!(one_line("short", 10), "short");
        assert_eq!(one_line("first\nsecond", 10), "first…");
        assert_eq!(one_line("abcdefghijkl", 5), "abcd…");
    }
}
