//! Carries out a [`Plan`] on the files the killed process left: data first (inodes found by a
//! walk of the root and the stash), then names, latest first. Every undo tolerates that its
//! operation never ran, which is possible for the journal's last one.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::CutError;
use crate::journal::{FileId, Record, Replaced, SAVED_FILE, STASH_DIR, stash_name};
use crate::model::{DataChange, DataUndo, Keep, NameUndo, Plan};
use crate::report::{CutReport, TornWrite};

/// Applies `plan` under `root`, reading saved bytes and stash entries from `journal_dir`.
pub fn apply(plan: &Plan, root: &Path, journal_dir: &Path) -> Result<CutReport, CutError> {
    let mut report = CutReport {
        ops: plan.ops,
        durable_ops: plan.durable_ops,
        ..CutReport::default()
    };
    let stash = journal_dir.join(STASH_DIR);
    if plan.files.iter().any(|f| !f.undo.is_empty()) {
        let saved = Saved::open(&journal_dir.join(SAVED_FILE))?;
        let files = walk_files(root, &stash)?;
        for file_plan in plan.files.iter().filter(|f| !f.undo.is_empty()) {
            let path = files.get(&file_plan.file).ok_or(CutError::FileMissing {
                file: file_plan.file,
            })?;
            undo_data(path, &file_plan.undo, &saved, &mut report)?;
            report.files_rolled_back += 1;
        }
    }
    let mut dirs = DirIndex::new(root)?;
    for undo in &plan.names {
        if undo_name(undo, &mut dirs, &stash)? {
            report.names_undone += 1;
        } else {
            report.names_already_gone += 1;
        }
    }
    Ok(report)
}

/// The saved-bytes file, read lazily: it can be large.
struct Saved {
    file: Option<File>,
    path: PathBuf,
}

impl Saved {
    fn open(path: &Path) -> Result<Saved, CutError> {
        match File::open(path) {
            Ok(file) => Ok(Saved {
                file: Some(file),
                path: path.to_owned(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Saved {
                file: None,
                path: path.to_owned(),
            }),
            Err(e) => Err(CutError::io("open saved bytes", path, e)),
        }
    }

    fn read(&self, saved: crate::journal::Saved) -> Result<Vec<u8>, CutError> {
        let mut bytes = vec![0; saved.len as usize];
        if saved.len == 0 {
            return Ok(bytes);
        }
        let file = self.file.as_ref().ok_or_else(|| {
            CutError::io(
                "read saved bytes",
                &self.path,
                io::Error::from(io::ErrorKind::NotFound),
            )
        })?;
        file.read_exact_at(&mut bytes, saved.offset).map_err(|e| {
            CutError::io(
                &format!("read {} saved bytes at {}", saved.len, saved.offset),
                &self.path,
                e,
            )
        })?;
        Ok(bytes)
    }
}

/// Every regular file under `root` and in `stash`, by identity (any one of its names).
fn walk_files(root: &Path, stash: &Path) -> Result<HashMap<FileId, PathBuf>, CutError> {
    let mut files = HashMap::new();
    let mut dirs = vec![root.to_owned()];
    if stash.is_dir() {
        dirs.push(stash.to_owned());
    }
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).map_err(|e| CutError::io("list", &dir, e))? {
            let entry = entry.map_err(|e| CutError::io("list", &dir, e))?;
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).map_err(|e| CutError::io("stat", &path, e))?;
            if meta.is_dir() {
                dirs.push(path);
            } else if meta.is_file() {
                files.entry(file_id(&meta)).or_insert(path);
            }
        }
    }
    Ok(files)
}

fn file_id(meta: &fs::Metadata) -> FileId {
    FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    }
}

/// Undoes one file's changes, latest first: each leaves the file as it was before that change.
fn undo_data(
    path: &Path,
    undo: &[DataUndo],
    saved: &Saved,
    report: &mut CutReport,
) -> Result<(), CutError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| CutError::io("open for rollback", path, e))?;
    let io_err = |what: &str, e: io::Error| CutError::io(what, path, e);
    for step in undo {
        let size_now = file.metadata().map_err(|e| io_err("stat", e))?.len();
        match (step.change, step.keep) {
            (
                DataChange::Write {
                    offset,
                    len,
                    size_before,
                    saved: old,
                },
                Keep::Nothing,
            ) => {
                file.set_len(size_before)
                    .map_err(|e| io_err("truncate", e))?;
                file.write_all_at(&saved.read(old)?, offset)
                    .map_err(|e| io_err("restore old bytes", e))?;
                report.bytes_discarded +=
                    written_len(offset, len, size_before, size_now, step.pending);
            }
            (
                DataChange::Write {
                    offset,
                    len,
                    size_before,
                    saved: old,
                },
                Keep::Prefix(prefix),
            ) => {
                // The pending write may not have run (in full): never extend past what is there.
                let size = size_before.max((offset + prefix).min(size_now));
                file.set_len(size).map_err(|e| io_err("truncate", e))?;
                let old_bytes = saved.read(old)?;
                let tail = old_bytes.get(prefix as usize..).unwrap_or_default();
                file.write_all_at(tail, offset + prefix)
                    .map_err(|e| io_err("restore old bytes", e))?;
                let written = written_len(offset, len, size_before, size_now, step.pending);
                let kept = prefix.min(written);
                report.bytes_discarded += written - kept;
                report.torn.push(TornWrite {
                    path: path.to_owned(),
                    offset,
                    kept_bytes: kept,
                    write_bytes: len,
                });
            }
            (
                DataChange::SetSize {
                    size,
                    size_before,
                    saved: old,
                },
                _,
            ) => {
                file.set_len(size_before)
                    .map_err(|e| io_err("truncate", e))?;
                file.write_all_at(&saved.read(old)?, size.min(size_before))
                    .map_err(|e| io_err("restore truncated bytes", e))?;
            }
        }
    }
    Ok(())
}

/// How many bytes a write put in the file: its length, except that a pending write that extended
/// the file may have written only up to the size the file has now.
fn written_len(offset: u64, len: u64, size_before: u64, size_now: u64, pending: bool) -> u64 {
    if pending && offset + len > size_before {
        len.min(size_before.max(size_now).saturating_sub(offset))
    } else {
        len
    }
}

/// Finds directories by identity; a path found once is checked before reuse, and a miss walks
/// the root again (renames and undone mkdirs move whole subtrees).
struct DirIndex {
    root: PathBuf,
    paths: HashMap<FileId, PathBuf>,
    /// A directory recreated by an undo has a new inode; the journal knows the old one.
    aliases: HashMap<FileId, FileId>,
}

impl DirIndex {
    fn new(root: &Path) -> Result<DirIndex, CutError> {
        let mut index = DirIndex {
            root: root.to_owned(),
            paths: HashMap::new(),
            aliases: HashMap::new(),
        };
        index.rewalk()?;
        Ok(index)
    }

    fn rewalk(&mut self) -> Result<(), CutError> {
        self.paths.clear();
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            let meta = fs::symlink_metadata(&dir).map_err(|e| CutError::io("stat", &dir, e))?;
            self.paths.insert(file_id(&meta), dir.clone());
            for entry in fs::read_dir(&dir).map_err(|e| CutError::io("list", &dir, e))? {
                let entry = entry.map_err(|e| CutError::io("list", &dir, e))?;
                if entry
                    .file_type()
                    .map_err(|e| CutError::io("stat", &entry.path(), e))?
                    .is_dir()
                {
                    dirs.push(entry.path());
                }
            }
        }
        Ok(())
    }

    /// The directory's current path, or None if it no longer exists (a later, durable change
    /// removed it, so what happened inside it no longer matters).
    fn find(&mut self, dir: FileId) -> Result<Option<PathBuf>, CutError> {
        let mut dir = dir;
        while let Some(&newer) = self.aliases.get(&dir) {
            dir = newer;
        }
        if let Some(path) = self.paths.get(&dir)
            && fs::symlink_metadata(path).is_ok_and(|meta| meta.is_dir() && file_id(&meta) == dir)
        {
            return Ok(Some(path.clone()));
        }
        self.rewalk()?;
        Ok(self.paths.get(&dir).cloned())
    }

    fn entry(&mut self, dir: FileId, name: &[u8]) -> Result<Option<PathBuf>, CutError> {
        Ok(self
            .find(dir)?
            .map(|path| path.join(OsStr::from_bytes(name))))
    }

    /// Recreates an empty directory removed by the journalled process; remembers its new inode.
    fn recreate(&mut self, path: &Path, old: FileId, mode: u32) -> Result<(), CutError> {
        fs::DirBuilder::new()
            .mode(mode)
            .create(path)
            .map_err(|e| CutError::io("recreate directory", path, e))?;
        // DirBuilder's mode is masked by the umask; the original directory's was not.
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|e| CutError::io("chmod recreated directory", path, e))?;
        let meta = fs::symlink_metadata(path).map_err(|e| CutError::io("stat", path, e))?;
        self.aliases.insert(old, file_id(&meta));
        self.paths.insert(file_id(&meta), path.to_owned());
        Ok(())
    }
}

/// Undoes one directory change. Returns false when there was nothing to undo: its directory is
/// gone, or the change never ran.
fn undo_name(undo: &NameUndo, dirs: &mut DirIndex, stash: &Path) -> Result<bool, CutError> {
    match &undo.record {
        Record::Create { dir, name } | Record::Link { dir, name, .. } => {
            let Some(path) = dirs.entry(*dir, name)? else {
                return Ok(false);
            };
            let Some(meta) = lstat(&path)? else {
                return Ok(false);
            };
            if let Record::Link { file, .. } = &undo.record
                && file_id(&meta) != *file
            {
                return Ok(false);
            }
            fs::remove_file(&path).map_err(|e| CutError::io("remove created file", &path, e))?;
            Ok(true)
        }
        Record::Mkdir { dir, name } => {
            let Some(path) = dirs.entry(*dir, name)? else {
                return Ok(false);
            };
            if !lstat(&path)?.is_some_and(|meta| meta.is_dir()) {
                return Ok(false);
            }
            fs::remove_dir_all(&path)
                .map_err(|e| CutError::io("remove created directory", &path, e))?;
            Ok(true)
        }
        Record::Unlink {
            dir,
            name,
            stash: n,
            ..
        } => {
            let Some(path) = dirs.entry(*dir, name)? else {
                return Ok(false);
            };
            if lstat(&path)?.is_some() {
                return Ok(false);
            }
            let stashed = stash.join(stash_name(*n));
            fs::hard_link(&stashed, &path)
                .map_err(|e| CutError::io("relink unlinked file", &path, e))?;
            Ok(true)
        }
        Record::Rmdir {
            dir,
            name,
            removed,
            mode,
        } => {
            let Some(path) = dirs.entry(*dir, name)? else {
                return Ok(false);
            };
            if lstat(&path)?.is_some() {
                return Ok(false);
            }
            dirs.recreate(&path, *removed, *mode)?;
            Ok(true)
        }
        Record::Rename {
            from_dir,
            from_name,
            to_dir,
            to_name,
            moved,
            replaced,
        } => {
            let Some(to) = dirs.entry(*to_dir, to_name)? else {
                return Ok(false);
            };
            if lstat(&to)?.is_none_or(|meta| file_id(&meta) != *moved) {
                return Ok(false);
            }
            let Some(from) = dirs.entry(*from_dir, from_name)? else {
                return Ok(false);
            };
            fs::rename(&to, &from)
                .map_err(|e| CutError::io(&format!("rename back to {}", from.display()), &to, e))?;
            match replaced {
                Replaced::Nothing => {}
                Replaced::File { stash: n, .. } => {
                    let stashed = stash.join(stash_name(*n));
                    fs::hard_link(&stashed, &to)
                        .map_err(|e| CutError::io("relink replaced file", &to, e))?;
                }
                Replaced::Dir { dir, mode } => dirs.recreate(&to, *dir, *mode)?,
            }
            Ok(true)
        }
        other => unreachable!("not a name change: {other:?}"),
    }
}

fn lstat(path: &Path) -> Result<Option<fs::Metadata>, CutError> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CutError::io("stat", path, e)),
    }
}
