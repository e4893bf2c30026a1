//! The durability model as pure decisions: from a journal's records to the plan of what a power
//! cut undoes (and which write it tears). No file system here; `rollback` carries the plan out.

use std::collections::HashMap;

use crate::journal::{FileId, Record, Saved, SyncTarget};

/// How a cut treats the last non-durable writes of each file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tear {
    /// Every non-durable write is discarded whole.
    None,
    /// Per file with non-durable data changes, a seeded-random count `m` of them (in order) is
    /// kept whole and the next one, if it is a write of 2 bytes or more, is kept torn (a random
    /// prefix of 1..len-1 bytes): writeback that reached the disk in part. The rest is
    /// discarded. The same seed and journal give the same result.
    Seeded(u64),
}

/// An operation the journal says happened, or may have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Index of its record in the journal: the order of everything, syncs included.
    pub pos: usize,
    pub record: Record,
    /// Its record is the last of a run (of the journal, or before a [`Record::RunStart`]): the
    /// process died after writing it, maybe before the operation ran. Its undo must tolerate
    /// that it never happened.
    pub pending: bool,
}

/// The operations that happened: an operation whose [`Record::Outcome`] says it failed changed
/// nothing and is dropped; a short write is shortened to what it wrote.
pub fn settle(records: &[Record]) -> Vec<Op> {
    let mut ops: Vec<Op> = Vec::new();
    let mut last_op_at: Option<usize> = None;
    let run_ended = |ops: &mut Vec<Op>, pos: usize| {
        if let Some(last) = ops.last_mut() {
            last.pending |= last.pos + 1 == pos;
        }
    };
    for (pos, record) in records.iter().enumerate() {
        match record {
            Record::SyncBegin { .. } | Record::SyncEnd { .. } => {}
            Record::RunStart { .. } => run_ended(&mut ops, pos),
            Record::Outcome { result } => {
                // An outcome always follows its operation's record directly (both are written
                // under the shim's lock), so anything else is a shim bug.
                assert_eq!(
                    last_op_at,
                    pos.checked_sub(1),
                    "journal record {pos}: stray outcome"
                );
                let op = ops.last_mut().expect("an outcome follows an operation");
                if *result < 0 {
                    ops.pop();
                } else if let Record::Write { len, saved, .. } = &mut op.record {
                    let written = (*result as u64).min(*len);
                    *len = written;
                    saved.len = saved.len.min(written);
                }
            }
            op => {
                ops.push(Op {
                    pos,
                    record: op.clone(),
                    pending: false,
                });
                last_op_at = Some(pos);
            }
        }
    }
    run_ended(&mut ops, records.len());
    ops
}

/// For each sync target, the journal position of the latest sync that BEGAN there and then
/// returned: an operation is durable iff such a sync began after it.
#[derive(Debug, Default)]
pub struct Horizons {
    files: HashMap<FileId, usize>,
    devices: HashMap<u64, usize>,
    all: Option<usize>,
}

impl Horizons {
    pub fn of(records: &[Record]) -> Horizons {
        let mut begun: HashMap<u64, (usize, SyncTarget)> = HashMap::new();
        let mut horizons = Horizons::default();
        for (pos, record) in records.iter().enumerate() {
            match record {
                Record::SyncBegin { sync, target } => {
                    begun.insert(*sync, (pos, *target));
                }
                Record::SyncEnd { sync } => {
                    let Some((began_at, target)) = begun.remove(sync) else {
                        panic!("journal record {pos}: end of sync {sync} that never began");
                    };
                    let slot = match target {
                        SyncTarget::File(file) => horizons.files.entry(file).or_default(),
                        SyncTarget::Device(dev) => horizons.devices.entry(dev).or_default(),
                        SyncTarget::All => horizons.all.get_or_insert(0),
                    };
                    *slot = (*slot).max(began_at);
                }
                _ => {}
            }
        }
        horizons
    }

    /// Whether an operation on `id` recorded at `pos` survives a power cut.
    pub fn durable(&self, id: FileId, pos: usize) -> bool {
        let file = self.files.get(&id).copied();
        let device = self.devices.get(&id.dev).copied();
        [file, device, self.all]
            .into_iter()
            .flatten()
            .any(|began_at| began_at > pos)
    }
}

/// A change to a file's bytes or size, as the journal recorded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataChange {
    Write {
        offset: u64,
        len: u64,
        size_before: u64,
        saved: Saved,
    },
    SetSize {
        size: u64,
        size_before: u64,
        saved: Saved,
    },
}

/// How much of a non-durable data change survives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Undone whole.
    Nothing,
    /// The first `n` bytes of a write reached the disk; the rest is undone.
    Prefix(u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataUndo {
    pub change: DataChange,
    pub keep: Keep,
    pub pending: bool,
}

/// What to undo in one file, latest change first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilePlan {
    pub file: FileId,
    pub undo: Vec<DataUndo>,
}

/// A non-durable directory change to undo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameUndo {
    pub record: Record,
    pub pending: bool,
}

/// Everything a cut undoes. Data and names are independent: data undo works on inodes (found
/// wherever they are after the kill), name undo on directory entries, so data goes first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Files in the order of their first non-durable change.
    pub files: Vec<FilePlan>,
    /// Latest first.
    pub names: Vec<NameUndo>,
    pub ops: usize,
    pub durable_ops: usize,
}

/// Decides, for a settled journal, what a power cut keeps.
pub fn plan(records: &[Record], tear: Tear) -> Plan {
    let ops = settle(records);
    let horizons = Horizons::of(records);
    let mut plan = Plan {
        ops: ops.len(),
        ..Plan::default()
    };
    let mut by_file: Vec<(FileId, Vec<(DataChange, bool)>)> = Vec::new();
    let mut file_slot: HashMap<FileId, usize> = HashMap::new();
    for op in &ops {
        if let Some((file, change)) = data_change(&op.record) {
            if horizons.durable(file, op.pos) {
                plan.durable_ops += 1;
                continue;
            }
            let slot = *file_slot.entry(file).or_insert_with(|| {
                by_file.push((file, Vec::new()));
                by_file.len() - 1
            });
            by_file[slot].1.push((change, op.pending));
        } else if name_change_durable(&op.record, op.pos, &horizons) {
            plan.durable_ops += 1;
        } else {
            plan.names.push(NameUndo {
                record: op.record.clone(),
                pending: op.pending,
            });
        }
    }
    plan.names.reverse();
    let mut rng = match tear {
        Tear::None => None,
        Tear::Seeded(seed) => Some(SplitMix64(seed)),
    };
    for (file, changes) in by_file {
        let undo = undo_file(&changes, rng.as_mut());
        plan.files.push(FilePlan { file, undo });
    }
    plan
}

/// The undo list (latest first) for one file's non-durable changes, in journal order.
fn undo_file(changes: &[(DataChange, bool)], rng: Option<&mut SplitMix64>) -> Vec<DataUndo> {
    // `kept_whole` changes survive as they are; the one after them may survive torn.
    let (kept_whole, torn) = match rng {
        None => (0, None),
        Some(rng) => {
            let kept_whole = rng.below(changes.len() as u64 + 1) as usize;
            let torn = match changes.get(kept_whole) {
                Some((DataChange::Write { len, .. }, _)) if *len >= 2 => {
                    Some(1 + rng.below(len - 1))
                }
                _ => None,
            };
            (kept_whole, torn)
        }
    };
    let mut undo = Vec::new();
    for (i, (change, pending)) in changes.iter().enumerate().skip(kept_whole).rev() {
        let keep = match torn {
            Some(prefix) if i == kept_whole => Keep::Prefix(prefix),
            _ => Keep::Nothing,
        };
        undo.push(DataUndo {
            change: *change,
            keep,
            pending: *pending,
        });
    }
    undo
}

fn data_change(record: &Record) -> Option<(FileId, DataChange)> {
    match *record {
        Record::Write {
            file,
            offset,
            len,
            size_before,
            saved,
        } => Some((
            file,
            DataChange::Write {
                offset,
                len,
                size_before,
                saved,
            },
        )),
        Record::SetSize {
            file,
            size,
            size_before,
            saved,
        } => Some((
            file,
            DataChange::SetSize {
                size,
                size_before,
                saved,
            },
        )),
        _ => None,
    }
}

/// A name change is durable once its directory is synced; a rename across two directories once
/// either is (ext4 commits a rename as one transaction).
fn name_change_durable(record: &Record, pos: usize, horizons: &Horizons) -> bool {
    match record {
        Record::Create { dir, .. }
        | Record::Mkdir { dir, .. }
        | Record::Link { dir, .. }
        | Record::Unlink { dir, .. }
        | Record::Rmdir { dir, .. } => horizons.durable(*dir, pos),
        Record::Rename {
            from_dir, to_dir, ..
        } => horizons.durable(*from_dir, pos) || horizons.durable(*to_dir, pos),
        other => unreachable!("not an operation record: {other:?}"),
    }
}

/// SplitMix64: tiny, seedable, and stable across versions, so a seed replays forever.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; `n` > 0. The modulo bias is below 2^-40 for the sizes seen here.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: FileId = FileId { dev: 1, ino: 2 };
    const OTHER_DIR: FileId = FileId { dev: 1, ino: 3 };
    const A: FileId = FileId { dev: 1, ino: 10 };
    const B: FileId = FileId { dev: 1, ino: 11 };

    fn append(file: FileId, size_before: u64, len: u64) -> Record {
        Record::Write {
            file,
            offset: size_before,
            len,
            size_before,
            saved: Saved::default(),
        }
    }

    fn begin(sync: u64, file: FileId) -> Record {
        Record::SyncBegin {
            sync,
            target: SyncTarget::File(file),
        }
    }

    fn end(sync: u64) -> Record {
        Record::SyncEnd { sync }
    }

    fn create(name: &str) -> Record {
        Record::Create {
            dir: DIR,
            name: name.as_bytes().to_vec(),
        }
    }

    fn undone_sizes(plan: &Plan, file: FileId) -> Vec<u64> {
        let file_plan = plan
            .files
            .iter()
            .find(|f| f.file == file)
            .expect("file in plan");
        file_plan
            .undo
            .iter()
            .map(|u| match u.change {
                DataChange::Write { size_before, .. } | DataChange::SetSize { size_before, .. } => {
                    size_before
                }
            })
            .collect()
    }

    #[test]
    fn a_write_before_a_completed_fsync_is_durable_and_one_after_is_not() {
        let records = [append(A, 0, 5), begin(1, A), end(1), append(A, 5, 3)];
        let plan = plan(&records, Tear::None);
        assert_eq!(plan.durable_ops, 1);
        assert_eq!(undone_sizes(&plan, A), vec![5]);
    }

    #[test]
    fn a_write_during_an_fsync_is_not_made_durable_by_it() {
        let records = [append(A, 0, 5), begin(1, A), append(A, 5, 3), end(1)];
        let plan = plan(&records, Tear::None);
        assert_eq!(undone_sizes(&plan, A), vec![5]);
    }

    #[test]
    fn an_fsync_that_never_returned_makes_nothing_durable() {
        let records = [append(A, 0, 5), begin(1, A)];
        let plan = plan(&records, Tear::None);
        assert_eq!(plan.durable_ops, 0);
        assert_eq!(undone_sizes(&plan, A), vec![0]);
    }

    #[test]
    fn overlapping_fsyncs_count_from_the_latest_completed_begin() {
        // Sync 1 begins after the first write; sync 2 begins after the second but never ends.
        let records = [
            append(A, 0, 1),
            begin(1, A),
            append(A, 1, 1),
            begin(2, A),
            end(1),
            append(A, 2, 1),
        ];
        let plan = plan(&records, Tear::None);
        assert_eq!(undone_sizes(&plan, A), vec![2, 1]);
    }

    #[test]
    fn an_fsync_of_one_file_leaves_another_file_volatile() {
        let records = [append(A, 0, 5), append(B, 0, 5), begin(1, B), end(1)];
        let plan = plan(&records, Tear::None);
        assert_eq!(plan.files.len(), 1);
        assert_eq!(plan.files[0].file, A);
    }

    #[test]
    fn sync_and_syncfs_make_everything_on_their_scope_durable() {
        let all = [
            append(A, 0, 5),
            create("x"),
            Record::SyncBegin {
                sync: 1,
                target: SyncTarget::All,
            },
            end(1),
        ];
        let plan_all = plan(&all, Tear::None);
        assert_eq!(
            (
                plan_all.files.len(),
                plan_all.names.len(),
                plan_all.durable_ops
            ),
            (0, 0, 2)
        );

        let elsewhere = FileId { dev: 9, ino: 10 };
        let device = [
            append(A, 0, 5),
            append(elsewhere, 0, 5),
            Record::SyncBegin {
                sync: 1,
                target: SyncTarget::Device(1),
            },
            end(1),
        ];
        let plan_device = plan(&device, Tear::None);
        assert_eq!(plan_device.files.len(), 1);
        assert_eq!(plan_device.files[0].file, elsewhere);
    }

    #[test]
    fn a_file_fsync_does_not_make_its_directory_entry_durable() {
        let records = [create("a"), append(A, 0, 5), begin(1, A), end(1)];
        let plan = plan(&records, Tear::None);
        assert_eq!(
            plan.names,
            vec![NameUndo {
                record: create("a"),
                pending: false
            }]
        );
        assert!(plan.files.is_empty());
    }

    #[test]
    fn name_changes_are_undone_latest_first_until_the_directory_sync() {
        let records = [create("a"), begin(1, DIR), end(1), create("b"), create("c")];
        let plan = plan(&records, Tear::None);
        let names: Vec<_> = plan.names.iter().map(|n| n.record.clone()).collect();
        assert_eq!(names, vec![create("c"), create("b")]);
    }

    #[test]
    fn a_rename_across_directories_is_durable_when_either_is_synced() {
        let rename = Record::Rename {
            from_dir: DIR,
            from_name: b"a".to_vec(),
            to_dir: OTHER_DIR,
            to_name: b"b".to_vec(),
            moved: A,
            replaced: crate::journal::Replaced::Nothing,
        };
        for synced in [DIR, OTHER_DIR] {
            let records = [rename.clone(), begin(1, synced), end(1)];
            assert!(
                plan(&records, Tear::None).names.is_empty(),
                "synced {synced}"
            );
        }
        assert_eq!(plan(&[rename], Tear::None).names.len(), 1);
    }

    #[test]
    fn failed_operations_are_dropped_and_short_writes_shortened() {
        let records = [
            create("a"),
            Record::Outcome {
                result: -(libc::ENOENT as i64),
            },
            Record::Write {
                file: A,
                offset: 0,
                len: 10,
                size_before: 4,
                saved: Saved { offset: 0, len: 4 },
            },
            Record::Outcome { result: 3 },
            append(B, 0, 1),
        ];
        let plan = plan(&records, Tear::None);
        assert!(plan.names.is_empty());
        assert_eq!(
            plan.files[0].undo[0].change,
            DataChange::Write {
                offset: 0,
                len: 3,
                size_before: 4,
                saved: Saved { offset: 0, len: 3 }
            }
        );
        assert!(!plan.files[0].undo[0].pending);
        assert!(
            plan.files[1].undo[0].pending,
            "the journal's last operation may not have run"
        );
    }

    #[test]
    fn the_last_operation_of_an_earlier_run_is_pending_too() {
        let records = [
            append(A, 0, 1),
            Record::RunStart { pid: 2 },
            append(B, 0, 1),
            begin(1, B),
        ];
        let ops = settle(&records);
        assert_eq!(
            ops.iter().map(|op| op.pending).collect::<Vec<_>>(),
            vec![true, false]
        );
    }

    #[test]
    fn an_operation_followed_by_a_sync_record_is_not_pending() {
        let records = [append(A, 0, 1), begin(1, B)];
        assert!(!plan(&records, Tear::None).files[0].undo[0].pending);
    }

    #[test]
    fn a_seeded_tear_keeps_a_whole_prefix_of_changes_then_a_torn_one_and_replays() {
        let records: Vec<_> = (0..5).map(|i| append(A, i * 100, 100)).collect();
        let mut tore = 0;
        for seed in 0..200 {
            let plan = plan(&records, Tear::Seeded(seed));
            assert_eq!(
                plan,
                super::plan(&records, Tear::Seeded(seed)),
                "seed {seed} replays"
            );
            let undo = &plan
                .files
                .first()
                .map(|f| f.undo.clone())
                .unwrap_or_default();
            // Undo is latest first: every entry undone whole except possibly the earliest.
            for (i, u) in undo.iter().enumerate() {
                match u.keep {
                    Keep::Nothing => {}
                    Keep::Prefix(n) => {
                        assert_eq!(
                            i,
                            undo.len() - 1,
                            "seed {seed}: only the earliest undone is torn"
                        );
                        assert!((1..100).contains(&n), "seed {seed}: prefix {n}");
                        tore += 1;
                    }
                }
            }
            let sizes: Vec<u64> = undo
                .iter()
                .map(|u| match u.change {
                    DataChange::Write { size_before, .. } => size_before,
                    DataChange::SetSize { .. } => unreachable!(),
                })
                .collect();
            let expected: Vec<u64> = (5 - undo.len() as u64..5).rev().map(|i| i * 100).collect();
            assert_eq!(
                sizes, expected,
                "seed {seed}: a suffix of the writes is undone"
            );
        }
        assert!(tore > 100, "most seeds tear a write, {tore} of 200 did");
    }

    #[test]
    fn tear_none_undoes_every_non_durable_change_whole() {
        let records: Vec<_> = (0..3).map(|i| append(A, i * 10, 10)).collect();
        let plan = plan(&records, Tear::None);
        assert!(plan.files[0].undo.iter().all(|u| u.keep == Keep::Nothing));
        assert_eq!(undone_sizes(&plan, A), vec![20, 10, 0]);
    }

    #[test]
    fn a_one_byte_write_or_a_size_change_is_never_torn() {
        let records = [
            append(A, 0, 1),
            Record::SetSize {
                file: B,
                size: 0,
                size_before: 9,
                saved: Saved { offset: 0, len: 9 },
            },
        ];
        for seed in 0..50 {
            let plan = plan(&records, Tear::Seeded(seed));
            for file in &plan.files {
                assert!(
                    file.undo.iter().all(|u| u.keep == Keep::Nothing),
                    "seed {seed}"
                );
            }
        }
    }
}
