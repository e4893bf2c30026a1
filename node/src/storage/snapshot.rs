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
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::raft::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"BATONSNP";
const VERSION: u8 = 1;
const HASH_LEN: usize = 32;

/// A snapshot read back from disk.
pub struct SnapshotFile {
    pub meta: SnapshotMeta,
    pub data: Vec<u8>,
}

/// The bytes of a snapshot file holding `meta` and `data`. Backups (`SaveSnapshot`) are these
/// same bytes, so a backup is a snapshot file and `batond restore` reads it like one.
pub fn encode(meta: &SnapshotMeta, data: &[u8]) -> io::Result<Vec<u8>> {
    let meta_bytes = rmp_serde::to_vec_named(meta).map_err(io::Error::other)?;
    let mut bytes = Vec::with_capacity(8 + 1 + 4 + meta_bytes.len() + 8 + data.len() + HASH_LEN);
    bytes.extend_from_slice(MAGIC);
    bytes.push(VERSION);
    bytes.extend_from_slice(&(meta_bytes.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&meta_bytes);
    bytes.extend_from_slice(&(data.len() as u64).to_be_bytes());
    bytes.extend_from_slice(data);
    let hash = Sha256::digest(&bytes);
    bytes.extend_from_slice(&hash);
    Ok(bytes)
}

/// Writes `meta` and `data` as the newest snapshot in `dir`, then removes older ones.
pub fn write(dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> io::Result<PathBuf> {
    let index = meta.last_log_id.map_or(0, |id| id.index);
    let bytes = encode(meta, data)?;
    let path = dir.join(format!("snapshot-{index:020}.bin"));
    let tmp = path.with_extension("tmp");
    {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, &path)?;
    fs::File::open(dir)?.sync_all()?;
    for old in list(dir)? {
        if old != path {
            // A leftover old file is harmless (the newest wins); don't fail the snapshot on it.
            let _ = fs::remove_file(old);
        }
    }
    Ok(path)
}

/// The newest snapshot in `dir`, if any. A corrupt newest file is an error, not a reason to fall
/// back silently: the log before it may already be purged.
pub fn read_latest(dir: &Path) -> io::Result<Option<SnapshotFile>> {
    // Half-written files from a crash are never referenced; clear them.
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            fs::remove_file(path)?;
        }
    }
    let Some(path) = list(dir)?.pop() else {
        return Ok(None);
    };
    let bytes = fs::read(&path)?;
    decode(&bytes).map(Some).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
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
    decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn decode(bytes: &[u8]) -> Result<SnapshotFile, String> {
    if bytes.len() < MAGIC.len() + 1 + 4 + 8 + HASH_LEN || &bytes[..8] != MAGIC {
        return Err("not a baton snapshot file".into());
    }
    let (body, hash) = bytes.split_at(bytes.len() - HASH_LEN);
    if Sha256::digest(body).as_slice() != hash {
        return Err("snapshot checksum mismatch: the file is corrupt".into());
    }
    if body[8] != VERSION {
        return Err(format!("snapshot format {} is not supported", body[8]));
    }
    let rest = &body[9..];
    let meta_len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
    let rest = &rest[4..];
    if rest.len() < meta_len + 8 {
        return Err("truncated snapshot metadata".into());
    }
    let meta: SnapshotMeta =
        rmp_serde::from_slice(&rest[..meta_len]).map_err(|e| format!("snapshot metadata: {e}"))?;
    let rest = &rest[meta_len..];
    let data_len = u64::from_be_bytes(rest[..8].try_into().expect("8 bytes")) as usize;
    let data = &rest[8..];
    if data.len() != data_len {
        return Err("truncated snapshot data".into());
    }
    Ok(SnapshotFile {
        meta,
        data: data.to_vec(),
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
        assert_eq!(latest.data, b"twelve");
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
            assert!(decode(garbage).is_err());
        }
    }
}
