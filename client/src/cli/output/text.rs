//! The pieces of the human output: aligned tables, UTC times (`baton_proto::text`, which the
//! node's messages use too), and cells kept to one line.

use std::collections::BTreeMap;

pub use baton_proto::text::format_time_ms;

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
