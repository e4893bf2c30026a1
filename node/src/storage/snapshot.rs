//! Snapshot files: the state machine at one log index, written crash-safely and checked on read.
//!
//! Layout of `snapshot-<index>.bin` (all integers big-endian):
//! `MAGIC (8) | version (1) | meta_len (4) | meta (MessagePack, named) | data_len (8) | data |
//! sha256 of everything before (32)`. `data` is [`ClusterState::encode`](crate::state::ClusterState),
//! the same bytes that travel to a follower that installs the snapshot.
//!
//! A file is written as `*.tmp`, synced, renamed, and the directory synced: a crash leaves either
//! the old snapshot or the new one, never half of one. Only the newest file is kept.

use std::fs;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::raft::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"BATONSNP";
const VERSION: u8 = 1;
const HASH_LEN: usize = 32;
/// Bytes before the metadata: magic, version and the metadata's length.
const PREFIX_LEN: usize = MAGIC.len() + 1 + 4;

/// A snapshot read back from disk.
pub struct SnapshotFile {
    pub meta: SnapshotMeta,
    /// The whole file; the data is `bytes[data]`, kept in place rather than copied out.
    bytes: Vec<u8>,
    data: Range<usize>,
}

impl SnapshotFile {
    /// The encoded state.
    pub fn data(&self) -> &[u8] {
        &self.bytes[self.data.clone()]
    }

    /// The encoded state, owned: moved to the front of the file's buffer (a memmove), not copied
    /// to a new one.
    pub fn into_data(mut self) -> Vec<u8> {
        self.bytes.truncate(self.data.end);
        self.bytes.drain(..self.data.start);
        self.bytes
    }
}

/// A snapshot's data as openraft carries it. openraft asks for the current snapshot at every
/// start-up for its metadata alone, and builds one at every trigger: neither needs the data in
/// memory, which at a million workflows is hundreds of MiB. So a snapshot at rest is named by its
/// file, and read (and its checksum checked) only when it is sent to a follower or installed.
pub enum SnapshotData {
    /// Received from the leader, not yet installed.
    Bytes(Vec<u8>),
    /// A snapshot file this node wrote or checked. A newer snapshot may replace it before it is
    /// read; reading it then fails with `NotFound`, and openraft asks for the current one again.
    File(PathBuf),
}

impl SnapshotData {
    /// The encoded state. Reads the file for `File`: blocking I/O.
    pub fn into_bytes(self) -> io::Result<Vec<u8>> {
        match self {
            Self::Bytes(bytes) => Ok(bytes),
            Self::File(path) => read_checked(&path).map(SnapshotFile::into_data),
        }
    }
}

/// Everything before the data: magic, version, metadata, and the data's length.
fn header(meta: &SnapshotMeta, data_len: usize) -> io::Result<Vec<u8>> {
    let meta_bytes = rmp_serde::to_vec_named(meta).map_err(io::Error::other)?;
    let mut header = Vec::with_capacity(PREFIX_LEN + meta_bytes.len() + 8);
    header.extend_from_slice(MAGIC);
    header.push(VERSION);
    header.extend_from_slice(&(meta_bytes.len() as u32).to_be_bytes());
    header.extend_from_slice(&meta_bytes);
    header.extend_from_slice(&(data_len as u64).to_be_bytes());
    Ok(header)
}

/// The bytes of a snapshot file holding `meta` and `data`. Backups (`SaveSnapshot`) are these
/// same bytes, so a backup is a snapshot file and `batond restore` reads it like one.
pub fn encode(meta: &SnapshotMeta, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut bytes = header(meta, data.len())?;
    bytes.reserve_exact(data.len() + HASH_LEN);
    bytes.extend_from_slice(data);
    let hash = Sha256::digest(&bytes);
    bytes.extend_from_slice(&hash);
    Ok(bytes)
}

/// Writes `meta` and `data` as the newest snapshot in `dir`, then removes older ones. The file
/// holds [`encode`]'s bytes, written piece by piece: the data is not copied.
pub fn write(dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> io::Result<PathBuf> {
    let index = meta.last_log_id.map_or(0, |id| id.index);
    let header = header(meta, data.len())?;
    let mut hasher = Sha256::new();
    hasher.update(&header);
    hasher.update(data);
    let hash = hasher.finalize();
    let path = dir.join(format!("snapshot-{index:020}.bin"));
    let tmp = path.with_extension("tmp");
    {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&header)?;
        file.write_all(data)?;
        file.write_all(&hash)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, &path)?;
    super::durable::sync_dir(dir)?;
    // Only older files go: a build that finishes after a newer snapshot was installed must not
    // remove that one (the log before it may be purged). Names sort by index.
    for old in list(dir)? {
        if old < path {
            // A leftover old file is harmless (the newest wins); don't fail the snapshot on it.
            let _ = fs::remove_file(old);
        }
    }
    Ok(path)
}

/// The newest snapshot in `dir`, if any. A corrupt newest file is an error, not a reason to fall
/// back silently: the log before it may already be purged.
pub fn read_latest(dir: &Path) -> io::Result<Option<SnapshotFile>> {
    clear_tmp(dir)?;
    let Some(path) = list(dir)?.pop() else {
        return Ok(None);
    };
    read_checked(&path).map(Some)
}

/// Reads and checks one snapshot file. The kinds stay apart: a missing file (`NotFound`: replaced
/// by a newer snapshot) is worth asking again, a corrupt one (`InvalidData`) is not.
fn read_checked(path: &Path) -> io::Result<SnapshotFile> {
    let bytes = fs::read(path)?;
    decode(bytes).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

/// The metadata and path of the newest snapshot in `dir`, read from the file's header alone: the
/// checksum is checked when the data is read ([`SnapshotData::into_bytes`]).
pub fn latest_meta(dir: &Path) -> io::Result<Option<(SnapshotMeta, PathBuf)>> {
    // A snapshot written meanwhile removes the file just listed: list again.
    const ATTEMPTS: usize = 3;
    for attempt in 1..=ATTEMPTS {
        let Some(path) = list(dir)?.pop() else {
            return Ok(None);
        };
        match read_meta(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < ATTEMPTS => continue,
            result => return result.map(|meta| Some((meta, path))),
        }
    }
    unreachable!("the last attempt returns")
}

/// The metadata in a snapshot file's header, its length checked against the file's.
fn read_meta(path: &Path) -> io::Result<SnapshotMeta> {
    let invalid = |e: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    };
    let mut file = fs::File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut prefix = [0u8; PREFIX_LEN];
    file.read_exact(&mut prefix)
        .map_err(|e| invalid(format!("snapshot header: {e}")))?;
    let meta_len = check_prefix(&prefix).map_err(invalid)?;
    if (PREFIX_LEN + meta_len + 8 + HASH_LEN) as u64 > file_len {
        return Err(invalid("truncated snapshot metadata".into()));
    }
    let mut meta_bytes = vec![0; meta_len];
    file.read_exact(&mut meta_bytes)
        .map_err(|e| invalid(format!("snapshot metadata: {e}")))?;
    rmp_serde::from_slice(&meta_bytes).map_err(|e| invalid(format!("snapshot metadata: {e}")))
}

/// Half-written files from a crash are never referenced; clears them.
fn clear_tmp(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            fs::remove_file(path)?;
        }
    }
    Ok(())
}

/// Snapshot files in `dir`, oldest first (names sort by index).
fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("snapshot-") && n.ends_with(".bin"))
        })
        .collect();
    paths.sort();
    Ok(paths)
}

/// Reads one snapshot file (a backup, say), checking its trailer.
pub fn read_file(path: &Path) -> Result<SnapshotFile, String> {
    let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    decode(bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Checks magic and version; returns the metadata's length.
fn check_prefix(prefix: &[u8]) -> Result<usize, String> {
    if prefix.len() < PREFIX_LEN || &prefix[..MAGIC.len()] != MAGIC {
        return Err("not a baton snapshot file".into());
    }
    if prefix[MAGIC.len()] != VERSION {
        return Err(format!(
            "snapshot format {} is not supported",
            prefix[MAGIC.len()]
        ));
    }
    let len = &prefix[MAGIC.len() + 1..PREFIX_LEN];
    Ok(u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize)
}

fn decode(bytes: Vec<u8>) -> Result<SnapshotFile, String> {
    if bytes.len() < PREFIX_LEN + 8 + HASH_LEN || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a baton snapshot file".into());
    }
    let (body, hash) = bytes.split_at(bytes.len() - HASH_LEN);
    if Sha256::digest(body).as_slice() != hash {
        return Err("snapshot checksum mismatch: the file is corrupt".into());
    }
    let meta_len = check_prefix(body)?;
    let rest = &body[PREFIX_LEN..];
    if rest.len() < meta_len + 8 {
        return Err("truncated snapshot metadata".into());
    }
    let meta: SnapshotMeta =
        rmp_serde::from_slice(&rest[..meta_len]).map_err(|e| format!("snapshot metadata: {e}"))?;
    let rest = &rest[meta_len..];
    let data_len = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes")) as usize;
    if rest.len() - 8 != data_len {
        return Err("truncated snapshot data".into());
    }
    let start = PREFIX_LEN + meta_len + 8;
    Ok(SnapshotFile {
        meta,
        bytes,
        data: start..start + data_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(openraft::testing::log_id::<crate::raft::types::TypeConfig>(
                2, 1, index,
            )),
            last_membership: Default::default(),
        }
    }

    #[test]
    fn the_newest_snapshot_wins_and_older_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_latest(dir.path()).unwrap().is_none());
        write(dir.path(), &meta(5), b"five").unwrap();
        write(dir.path(), &meta(12), b"twelve").unwrap();
        // A crash mid-write leaves a tmp file that must not be taken for a snapshot.
        fs::write(
            dir.path().join("snapshot-00000000000000000099.tmp"),
            b"half",
        )
        .unwrap();
        let latest = read_latest(dir.path()).unwrap().unwrap();
        assert_eq!(latest.meta, meta(12));
        assert_eq!(latest.data(), b"twelve");
        let (newest, path) = latest_meta(dir.path()).unwrap().unwrap();
        assert_eq!(newest, meta(12));
        assert_eq!(
            SnapshotData::File(path).into_bytes().unwrap(),
            b"twelve",
            "the named file reads back as the data"
        );
        assert_eq!(latest.into_data(), b"twelve");
        assert_eq!(list(dir.path()).unwrap().len(), 1);
        assert!(
            !dir.path()
                .join("snapshot-00000000000000000099.tmp")
                .exists()
        );
    }

    #[test]
    fn a_flipped_bit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &meta(3), b"some state").unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let err = read_latest(dir.path()).err().expect("corruption detected");
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        for garbage in [
            &b""[..],
            b"BATONSNP",
            b"something else entirely, long enough to pass",
        ] {
            assert!(decode(garbage.to_vec()).is_err());
        }
        // Read by its name, the flipped file is refused too: a named snapshot is checked when
        // its data is read.
        let err = SnapshotData::File(path).into_bytes().unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
    }

    #[test]
    fn a_build_finishing_after_a_newer_install_leaves_the_newer_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &meta(200), b"installed").unwrap();
        write(dir.path(), &meta(100), b"built from an older view").unwrap();
        let latest = read_latest(dir.path()).unwrap().unwrap();
        assert_eq!(latest.meta, meta(200));
        assert_eq!(latest_meta(dir.path()).unwrap().unwrap().0, meta(200));
        // The next snapshot clears both.
        write(dir.path(), &meta(300), b"next").unwrap();
        assert_eq!(list(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn a_header_that_lies_about_its_length_is_refused_without_allocating_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot-00000000000000000007.bin");
        for bytes in [
            // Claims 4 GiB of metadata in a 20-byte file.
            [&MAGIC[..], &[VERSION], &u32::MAX.to_be_bytes(), b"tiny...."].concat(),
            // Shorter than the fixed header.
            b"BATONSN".to_vec(),
            // Another version.
            [&MAGIC[..], &[VERSION + 1], &0u32.to_be_bytes(), &[0; 40]].concat(),
        ] {
            fs::write(&path, &bytes).unwrap();
            let err = latest_meta(dir.path()).expect_err("refused");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            let err = SnapshotData::File(path.clone()).into_bytes().unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        }
        fs::remove_file(&path).unwrap();
        let err = SnapshotData::File(path).into_bytes().unwrap_err();
        assert_eq!(
            err.kind(),
            io::ErrorKind::NotFound,
            "a replaced snapshot: {err}"
        );
    }

    #[test]
    fn a_written_file_holds_the_encoded_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let path = write(dir.path(), &meta(7), &data).unwrap();
        assert_eq!(fs::read(&path).unwrap(), encode(&meta(7), &data).unwrap());
        assert_eq!(read_file(&path).unwrap().into_data(), data);
    }
}
