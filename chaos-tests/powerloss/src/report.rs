//! What a cut did, for the chaos run's log and for tests to assert on.

use std::fmt;
use std::path::PathBuf;

/// The result of [`crate::cut`]. `Display` gives one log line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Operations the journal says happened (failed ones not counted).
    pub ops: usize,
    /// Of those, the ones a sync made durable.
    pub durable_ops: usize,
    /// Files whose bytes or size were rolled back.
    pub files_rolled_back: usize,
    /// Bytes of writes that the cut discarded (torn writes count their lost tail).
    pub bytes_discarded: u64,
    /// Directory changes undone: created names removed, removed names brought back, renames
    /// reversed.
    pub names_undone: usize,
    /// Directory changes with nothing left to undo: the operation never ran (the process died
    /// between journalling it and doing it), or its directory was durably removed later.
    pub names_already_gone: usize,
    /// Writes kept in part, in the order they were torn.
    pub torn: Vec<TornWrite>,
}

/// A write a seeded cut kept torn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornWrite {
    /// The file's path at the time of the cut, before names were undone (it may be a stash
    /// entry, or vanish with an undone create).
    pub path: PathBuf,
    /// Where the write began.
    pub offset: u64,
    pub kept_bytes: u64,
    pub write_bytes: u64,
}

impl fmt::Display for CutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "power cut: {} journalled ops ({} durable); rolled back {} files ({} bytes discarded); \
             undid {} names ({} never ran or already gone); tore {} writes",
            self.ops,
            self.durable_ops,
            self.files_rolled_back,
            self.bytes_discarded,
            self.names_undone,
            self.names_already_gone,
            self.torn.len(),
        )?;
        for (i, torn) in self.torn.iter().enumerate() {
            let sep = if i == 0 { ": " } else { ", " };
            write!(
                f,
                "{sep}{} at {} kept {} of {} bytes",
                torn.path.display(),
                torn.offset,
                torn.kept_bytes,
                torn.write_bytes
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_line_naming_the_torn_files() {
        let report = CutReport {
            ops: 9,
            durable_ops: 4,
            files_rolled_back: 2,
            bytes_discarded: 300,
            names_undone: 1,
            names_already_gone: 0,
            torn: vec![TornWrite {
                path: "/d/wal".into(),
                offset: 64,
                kept_bytes: 7,
                write_bytes: 100,
            }],
        };
        assert_eq!(
            report.to_string(),
            "power cut: 9 journalled ops (4 durable); rolled back 2 files (300 bytes discarded); \
             undid 1 names (0 never ran or already gone); tore 1 writes: /d/wal at 64 kept 7 of 100 bytes"
        );
    }
}
