//! The journal format: what the shim writes and `cut` reads, encoded and decoded in this one place.
//!
//! A journal folder holds three things:
//! - [`JOURNAL_FILE`]: [`MAGIC`], then records, each framed as `len: u32 LE | crc32: u32 LE |
//!   payload` (the CRC covers the payload). Records are appended under the shim's lock, so file
//!   order is the order in which the operations really happened.
//! - [`SAVED_FILE`]: bytes an operation was about to overwrite or drop, referenced by [`Saved`].
//!   They are written before the record that points at them.
//! - [`STASH_DIR`]: hard links to files that an unlink or a rename was about to remove, named by
//!   [`stash_name`], so that `cut` can bring them back.
//!
//! A kill can tear only the last record (the journal is appended by one process under a lock), so
//! an incomplete frame at the end is the trace of a kill and is ignored; a complete frame whose
//! CRC does not match is corruption and is an error.

use std::fmt;

/// The record file, inside the journal folder.
pub const JOURNAL_FILE: &str = "journal";
/// The file of saved old bytes, inside the journal folder.
pub const SAVED_FILE: &str = "saved";
/// The folder of hard links to removed files, inside the journal folder.
pub const STASH_DIR: &str = "stash";
/// First bytes of [`JOURNAL_FILE`]; the last digit is the format version.
pub const MAGIC: &[u8; 8] = b"BPLJRNL1";
/// The most old bytes one operation may save. The shim aborts beyond it rather than journal an
/// operation `cut` could not undo.
pub const SAVED_BYTES_PER_OP_MAX: u64 = 256 << 20;
/// The largest record payload: names are bounded by NAME_MAX, so anything bigger is corruption.
pub const RECORD_BYTES_MAX: u32 = 64 << 10;

const FRAME_HEADER_BYTES: usize = 8;

/// The name of stash entry `n` inside [`STASH_DIR`].
pub fn stash_name(n: u64) -> String {
    format!("{n:016}")
}

/// A file or directory, by identity rather than path: files are renamed while open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "inode {}:{}", self.dev, self.ino)
    }
}

/// Where an operation's old bytes are in [`SAVED_FILE`]; `len` 0 when it saved none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Saved {
    pub offset: u64,
    pub len: u64,
}

/// What a rename replaced at its destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replaced {
    Nothing,
    /// A file (or symlink), hard-linked into the stash as entry `stash` first.
    File {
        file: FileId,
        stash: u64,
    },
    /// An empty directory, recreated with `mode` on undo.
    Dir {
        dir: FileId,
        mode: u32,
    },
}

/// What a sync covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncTarget {
    /// fsync or fdatasync of one file or directory.
    File(FileId),
    /// syncfs of one filesystem.
    Device(u64),
    /// sync().
    All,
}

/// One journal record. Operation records are written BEFORE the operation, under the lock that
/// is held until the operation returns; an [`Record::Outcome`] follows only when the operation
/// failed or wrote less than asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// Bytes `[offset, offset + len)` of `file` change (new data, or zeros for a hole punch).
    /// `saved` holds the old bytes of `[offset, min(offset + len, size_before))`.
    Write {
        file: FileId,
        offset: u64,
        len: u64,
        size_before: u64,
        saved: Saved,
    },
    /// `file`'s size changes from `size_before` to `size` (truncate, O_TRUNC, fallocate);
    /// `saved` holds the dropped bytes `[size, size_before)` when it shrinks.
    SetSize {
        file: FileId,
        size: u64,
        size_before: u64,
        saved: Saved,
    },
    /// A new file `name` in directory `dir`.
    Create { dir: FileId, name: Vec<u8> },
    /// A new directory `name` in `dir`.
    Mkdir { dir: FileId, name: Vec<u8> },
    /// A new name for existing `file`.
    Link {
        dir: FileId,
        name: Vec<u8>,
        file: FileId,
    },
    /// `name` in `dir` removed; `file` was hard-linked into the stash as entry `stash` first.
    Unlink {
        dir: FileId,
        name: Vec<u8>,
        file: FileId,
        stash: u64,
    },
    /// Empty directory `name` in `dir` removed.
    Rmdir {
        dir: FileId,
        name: Vec<u8>,
        removed: FileId,
        mode: u32,
    },
    /// `from_dir/from_name` renamed to `to_dir/to_name`.
    Rename {
        from_dir: FileId,
        from_name: Vec<u8>,
        to_dir: FileId,
        to_name: Vec<u8>,
        moved: FileId,
        replaced: Replaced,
    },
    /// A sync starts (recorded before the real call).
    SyncBegin { sync: u64, target: SyncTarget },
    /// Sync `sync` returned success (recorded after the real call).
    SyncEnd { sync: u64 },
    /// The previous record's operation returned `result`: `-errno` on failure, else the byte
    /// count of a short write.
    Outcome { result: i64 },
    /// A process started journalling here (a journal can span runs killed without a cut). The
    /// operation just before it may not have run, like the journal's last.
    RunStart { pid: u32 },
}

mod tag {
    pub const WRITE: u8 = 1;
    pub const SET_SIZE: u8 = 2;
    pub const CREATE: u8 = 3;
    pub const MKDIR: u8 = 4;
    pub const LINK: u8 = 5;
    pub const UNLINK: u8 = 6;
    pub const RMDIR: u8 = 7;
    pub const RENAME: u8 = 8;
    pub const SYNC_BEGIN: u8 = 9;
    pub const SYNC_END: u8 = 10;
    pub const OUTCOME: u8 = 11;
    pub const RUN_START: u8 = 12;

    pub const REPLACED_NOTHING: u8 = 0;
    pub const REPLACED_FILE: u8 = 1;
    pub const REPLACED_DIR: u8 = 2;

    pub const SYNC_FILE: u8 = 0;
    pub const SYNC_DEVICE: u8 = 1;
    pub const SYNC_ALL: u8 = 2;
}

/// Appends `record`, framed, to `out`.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    let mut w = Writer(out);
    match record {
        Record::Write {
            file,
            offset,
            len,
            size_before,
            saved,
        } => {
            w.u8(tag::WRITE);
            w.file(file);
            w.u64(*offset);
            w.u64(*len);
            w.u64(*size_before);
            w.saved(saved);
        }
        Record::SetSize {
            file,
            size,
            size_before,
            saved,
        } => {
            w.u8(tag::SET_SIZE);
            w.file(file);
            w.u64(*size);
            w.u64(*size_before);
            w.saved(saved);
        }
        Record::Create { dir, name } => {
            w.u8(tag::CREATE);
            w.file(dir);
            w.bytes(name);
        }
        Record::Mkdir { dir, name } => {
            w.u8(tag::MKDIR);
            w.file(dir);
            w.bytes(name);
        }
        Record::Link { dir, name, file } => {
            w.u8(tag::LINK);
            w.file(dir);
            w.bytes(name);
            w.file(file);
        }
        Record::Unlink {
            dir,
            name,
            file,
            stash,
        } => {
            w.u8(tag::UNLINK);
            w.file(dir);
            w.bytes(name);
            w.file(file);
            w.u64(*stash);
        }
        Record::Rmdir {
            dir,
            name,
            removed,
            mode,
        } => {
            w.u8(tag::RMDIR);
            w.file(dir);
            w.bytes(name);
            w.file(removed);
            w.u32(*mode);
        }
        Record::Rename {
            from_dir,
            from_name,
            to_dir,
            to_name,
            moved,
            replaced,
        } => {
            w.u8(tag::RENAME);
            w.file(from_dir);
            w.bytes(from_name);
            w.file(to_dir);
            w.bytes(to_name);
            w.file(moved);
            match replaced {
                Replaced::Nothing => w.u8(tag::REPLACED_NOTHING),
                Replaced::File { file, stash } => {
                    w.u8(tag::REPLACED_FILE);
                    w.file(file);
                    w.u64(*stash);
                }
                Replaced::Dir { dir, mode } => {
                    w.u8(tag::REPLACED_DIR);
                    w.file(dir);
                    w.u32(*mode);
                }
            }
        }
        Record::SyncBegin { sync, target } => {
            w.u8(tag::SYNC_BEGIN);
            w.u64(*sync);
            match target {
                SyncTarget::File(file) => {
                    w.u8(tag::SYNC_FILE);
                    w.file(file);
                }
                SyncTarget::Device(dev) => {
                    w.u8(tag::SYNC_DEVICE);
                    w.u64(*dev);
                }
                SyncTarget::All => w.u8(tag::SYNC_ALL),
            }
        }
        Record::SyncEnd { sync } => {
            w.u8(tag::SYNC_END);
            w.u64(*sync);
        }
        Record::Outcome { result } => {
            w.u8(tag::OUTCOME);
            w.u64(*result as u64);
        }
        Record::RunStart { pid } => {
            w.u8(tag::RUN_START);
            w.u32(*pid);
        }
    }
    let payload_len = out.len() - start - FRAME_HEADER_BYTES;
    // Names are at most NAME_MAX bytes, so a record can never reach the bound; checked anyway
    // because the reader treats a bigger frame as corruption.
    assert!(
        payload_len <= RECORD_BYTES_MAX as usize,
        "journal record of {payload_len} bytes"
    );
    let crc = crc32(&out[start + FRAME_HEADER_BYTES..]);
    out[start..start + 4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The records of a journal file, and how it ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    pub records: Vec<Record>,
    /// Bytes of an incomplete last frame: a kill landed inside the shim's journal write.
    pub torn_tail_bytes: usize,
}

/// Why a journal cannot be read. `offset` is the byte offset of the bad frame in the file.
#[derive(Debug, PartialEq, Eq)]
pub struct DecodeError {
    pub offset: usize,
    pub reason: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {}: {}", self.offset, self.reason)
    }
}

/// Decodes a whole journal file (magic included). An empty file is an empty journal: the shim
/// may have been killed before writing the magic.
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let bad = |offset: usize, reason: String| DecodeError { offset, reason };
    if bytes.len() < MAGIC.len() {
        if MAGIC.starts_with(bytes) {
            return Ok(Decoded {
                records: Vec::new(),
                torn_tail_bytes: bytes.len(),
            });
        }
        return Err(bad(0, "not a power-loss journal (bad magic)".into()));
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(bad(0, "not a power-loss journal (bad magic)".into()));
    }
    let mut records = Vec::new();
    let mut at = MAGIC.len();
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < FRAME_HEADER_BYTES {
            return Ok(Decoded {
                records,
                torn_tail_bytes: rest.len(),
            });
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len > RECORD_BYTES_MAX {
            return Err(bad(
                at,
                format!("record length {len} beyond {RECORD_BYTES_MAX}"),
            ));
        }
        let end = FRAME_HEADER_BYTES + len as usize;
        if rest.len() < end {
            return Ok(Decoded {
                records,
                torn_tail_bytes: rest.len(),
            });
        }
        let payload = &rest[FRAME_HEADER_BYTES..end];
        if crc32(payload) != crc {
            return Err(bad(at, "record checksum mismatch".into()));
        }
        let record = decode_payload(payload).map_err(|reason| bad(at, reason))?;
        records.push(record);
        at += end;
    }
    Ok(Decoded {
        records,
        torn_tail_bytes: 0,
    })
}

fn decode_payload(payload: &[u8]) -> Result<Record, String> {
    let mut r = Reader {
        bytes: payload,
        at: 0,
    };
    let record = match r.u8()? {
        tag::WRITE => Record::Write {
            file: r.file()?,
            offset: r.u64()?,
            len: r.u64()?,
            size_before: r.u64()?,
            saved: r.saved()?,
        },
        tag::SET_SIZE => Record::SetSize {
            file: r.file()?,
            size: r.u64()?,
            size_before: r.u64()?,
            saved: r.saved()?,
        },
        tag::CREATE => Record::Create {
            dir: r.file()?,
            name: r.bytes()?,
        },
        tag::MKDIR => Record::Mkdir {
            dir: r.file()?,
            name: r.bytes()?,
        },
        tag::LINK => Record::Link {
            dir: r.file()?,
            name: r.bytes()?,
            file: r.file()?,
        },
        tag::UNLINK => Record::Unlink {
            dir: r.file()?,
            name: r.bytes()?,
            file: r.file()?,
            stash: r.u64()?,
        },
        tag::RMDIR => Record::Rmdir {
            dir: r.file()?,
            name: r.bytes()?,
            removed: r.file()?,
            mode: r.u32()?,
        },
        tag::RENAME => Record::Rename {
            from_dir: r.file()?,
            from_name: r.bytes()?,
            to_dir: r.file()?,
            to_name: r.bytes()?,
            moved: r.file()?,
            replaced: match r.u8()? {
                tag::REPLACED_NOTHING => Replaced::Nothing,
                tag::REPLACED_FILE => Replaced::File {
                    file: r.file()?,
                    stash: r.u64()?,
                },
                tag::REPLACED_DIR => Replaced::Dir {
                    dir: r.file()?,
                    mode: r.u32()?,
                },
                other => return Err(format!("unknown rename replacement tag {other}")),
            },
        },
        tag::SYNC_BEGIN => Record::SyncBegin {
            sync: r.u64()?,
            target: match r.u8()? {
                tag::SYNC_FILE => SyncTarget::File(r.file()?),
                tag::SYNC_DEVICE => SyncTarget::Device(r.u64()?),
                tag::SYNC_ALL => SyncTarget::All,
                other => return Err(format!("unknown sync target tag {other}")),
            },
        },
        tag::SYNC_END => Record::SyncEnd { sync: r.u64()? },
        tag::OUTCOME => Record::Outcome {
            result: r.u64()? as i64,
        },
        tag::RUN_START => Record::RunStart { pid: r.u32()? },
        other => return Err(format!("unknown record tag {other}")),
    };
    if r.at != payload.len() {
        return Err(format!("{} trailing bytes in record", payload.len() - r.at));
    }
    Ok(record)
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn file(&mut self, file: &FileId) {
        self.u64(file.dev);
        self.u64(file.ino);
    }
    fn saved(&mut self, saved: &Saved) {
        self.u64(saved.offset);
        self.u64(saved.len);
    }
    fn bytes(&mut self, bytes: &[u8]) {
        self.u32(bytes.len() as u32);
        self.0.extend_from_slice(bytes);
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len());
        let end = end.ok_or_else(|| "record ends early".to_string())?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn file(&mut self) -> Result<FileId, String> {
        Ok(FileId {
            dev: self.u64()?,
            ino: self.u64()?,
        })
    }
    fn saved(&mut self) -> Result<Saved, String> {
        Ok(Saved {
            offset: self.u64()?,
            len: self.u64()?,
        })
    }
    fn bytes(&mut self) -> Result<Vec<u8>, String> {
        let len = self.u32()? as usize;
        Ok(self.take(len)?.to_vec())
    }
}

/// CRC-32 (IEEE), bitwise: records are small and the shim's cost is the syscalls, not this.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ino: u64) -> FileId {
        FileId { dev: 7, ino }
    }

    fn every_kind() -> Vec<Record> {
        vec![
            Record::Write {
                file: id(1),
                offset: 10,
                len: 20,
                size_before: 15,
                saved: Saved { offset: 0, len: 5 },
            },
            Record::SetSize {
                file: id(1),
                size: 0,
                size_before: 30,
                saved: Saved { offset: 5, len: 30 },
            },
            Record::Create {
                dir: id(2),
                name: b"CURRENT.tmp".to_vec(),
            },
            Record::Mkdir {
                dir: id(2),
                name: b"sub".to_vec(),
            },
            Record::Link {
                dir: id(2),
                name: b"b".to_vec(),
                file: id(1),
            },
            Record::Unlink {
                dir: id(2),
                name: b"a".to_vec(),
                file: id(1),
                stash: 3,
            },
            Record::Rmdir {
                dir: id(2),
                name: b"sub".to_vec(),
                removed: id(4),
                mode: 0o755,
            },
            Record::Rename {
                from_dir: id(2),
                from_name: b"x".to_vec(),
                to_dir: id(5),
                to_name: b"y".to_vec(),
                moved: id(1),
                replaced: Replaced::Nothing,
            },
            Record::Rename {
                from_dir: id(2),
                from_name: b"x".to_vec(),
                to_dir: id(2),
                to_name: b"y".to_vec(),
                moved: id(1),
                replaced: Replaced::File {
                    file: id(6),
                    stash: 9,
                },
            },
            Record::Rename {
                from_dir: id(2),
                from_name: b"d".to_vec(),
                to_dir: id(2),
                to_name: b"e".to_vec(),
                moved: id(8),
                replaced: Replaced::Dir {
                    dir: id(9),
                    mode: 0o700,
                },
            },
            Record::SyncBegin {
                sync: 1,
                target: SyncTarget::File(id(1)),
            },
            Record::SyncBegin {
                sync: 2,
                target: SyncTarget::Device(7),
            },
            Record::SyncBegin {
                sync: 3,
                target: SyncTarget::All,
            },
            Record::SyncEnd { sync: 2 },
            Record::Outcome { result: -2 },
            Record::Outcome { result: 7 },
            Record::RunStart { pid: 4242 },
        ]
    }

    fn journal_of(records: &[Record]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        for record in records {
            encode(record, &mut bytes);
        }
        bytes
    }

    #[test]
    fn every_record_kind_round_trips() {
        let records = every_kind();
        let decoded = decode(&journal_of(&records)).expect("decodes");
        assert_eq!(
            decoded,
            Decoded {
                records,
                torn_tail_bytes: 0
            }
        );
    }

    #[test]
    fn golden_bytes_of_a_sync_end_record() {
        // Pins the frame: length, CRC-32 of the payload, tag, then the id little-endian.
        let mut bytes = Vec::new();
        encode(&Record::SyncEnd { sync: 1 }, &mut bytes);
        let payload = [10u8, 1, 0, 0, 0, 0, 0, 0, 0];
        let mut expected = vec![9, 0, 0, 0];
        expected.extend_from_slice(&crc32(&payload).to_le_bytes());
        expected.extend_from_slice(&payload);
        assert_eq!(bytes, expected);
        assert_eq!(
            crc32(b"123456789"),
            0xCBF4_3926,
            "the standard CRC-32 check value"
        );
    }

    #[test]
    fn a_torn_last_frame_is_ignored_at_every_cut_point() {
        let records = every_kind();
        let whole = journal_of(&records);
        let before_last = journal_of(&records[..records.len() - 1]).len();
        for cut in before_last + 1..whole.len() {
            let decoded = decode(&whole[..cut]).expect("a torn tail is not an error");
            assert_eq!(
                decoded.records,
                records[..records.len() - 1],
                "cut at {cut}"
            );
            assert_eq!(decoded.torn_tail_bytes, cut - before_last);
        }
    }

    #[test]
    fn an_empty_or_magic_only_journal_has_no_records() {
        assert_eq!(decode(b"").expect("empty").records, vec![]);
        assert_eq!(decode(&MAGIC[..3]).expect("torn magic").records, vec![]);
        assert_eq!(decode(MAGIC).expect("magic only").records, vec![]);
    }

    #[test]
    fn a_flipped_bit_in_a_complete_record_is_corruption_naming_the_offset() {
        let mut bytes = journal_of(&every_kind());
        bytes[MAGIC.len() + FRAME_HEADER_BYTES + 3] ^= 1;
        let err = decode(&bytes).expect_err("corrupt");
        assert_eq!(err.offset, MAGIC.len());
        assert!(err.reason.contains("checksum"), "{err}");
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let err = decode(b"hello, world").expect_err("bad magic");
        assert!(err.reason.contains("magic"), "{err}");
    }
}
