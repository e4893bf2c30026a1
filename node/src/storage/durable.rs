//! Files and folders made durable before anything relies on them.
//!
//! A power cut keeps only what was synced: a file's bytes need an fsync of the file, and its name
//! (a create, a rename, a new folder) an fsync of the folder that holds it. Every file and folder
//! the node writes itself goes through here; RocksDB syncs its own files and its own folder, but
//! not the folder that holds it, so the node creates that one here first. The chaos suite's
//! power-loss fault (docs/CHAOS.md) discards whatever this gets wrong.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Creates `dir` and any missing parents, syncing each parent whose new entry it made, so the
/// folder survives a power cut with everything later synced inside it.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        // Made meanwhile by someone else, who syncs it.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    sync_parent(dir)
}

/// Replaces `path` with `bytes` so that a power cut leaves the old file or the new one, whole:
/// written to `<path>.tmp`, synced, renamed over `path`, and the folder synced.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    {
        let mut file = fs::File::create(tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(tmp, path)?;
    sync_parent(path)
}

/// Syncs the folder holding `path`, which makes its entry (a create, a rename) durable.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => sync_dir(parent),
        None => sync_dir(Path::new(".")),
    }
}

/// Syncs a folder: the entries made in it so far survive a power cut.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_and_files_are_made_whole() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a/b/c");
        create_dir_all(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all(&deep).unwrap();
        let file = deep.join("IDENTITY");
        write_atomically(&file, b"one").unwrap();
        write_atomically(&file, b"two").unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"two");
        assert!(!deep.join("IDENTITY.tmp").exists());
        assert!(
            create_dir_all(&file.join("x")).is_err(),
            "a file where a folder should be is an error"
        );
    }
}
