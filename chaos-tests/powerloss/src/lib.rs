//! A power-loss fault for the chaos suite: run a process under an LD_PRELOAD shim that journals
//! every change it makes under one root folder, SIGKILL it, then [`cut`] rewinds the folder to
//! what a power cut at that instant could have left on disk.
//!
//! SIGKILL alone loses nothing that was written, because the kernel keeps the page cache; a power
//! cut loses everything that was not synced. The shim (crate `baton-powerloss-preload`, built as
//! `libbaton_powerloss_preload.so`) records each mutating file operation under the root before
//! doing it, with the old bytes it overwrites and a hard link to each file it removes; this crate
//! holds the journal format ([`journal`]), the durability model ([`model`]) and the rollback.
//!
//! # Use
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! let (root, journal) = (Path::new("/tmp/n1/data"), Path::new("/tmp/n1/powerloss"));
//! let preload = baton_powerloss::find_preload(Path::new("target/debug"))?;
//! let mut child = std::process::Command::new("target/debug/batond")
//!     .envs(baton_powerloss::child_env(&preload, root, journal)?)
//!     .spawn()?;
//! // ... later, the fault:
//! child.kill()?; // SIGKILL
//! child.wait()?;
//! let report = baton_powerloss::cut(root, journal, baton_powerloss::Tear::Seeded(42))?;
//! println!("{report}");
//! # Ok(()) }
//! ```
//!
//! # The durability model
//!
//! Identity is by inode (device and inode number), not by path: files are renamed while open.
//! Time is the journal's order, which is the order the operations really ran in (the shim holds
//! one lock across each record and its operation).
//!
//! - **File data.** A write, pwrite, writev, pwritev, ftruncate, truncate, size-changing fallocate,
//!   hole punch or O_TRUNC open of inode I is durable iff an fsync or fdatasync of I (through any
//!   fd) *began* after the operation completed and then *returned* success before the kill.
//!   `sync()` makes everything durable the same way, `syncfs(fd)` everything on that filesystem.
//!   A write to an fd opened with O_SYNC or O_DSYNC (or a pwritev2 with RWF_SYNC or RWF_DSYNC)
//!   counts as a write followed by a complete fsync. `sync_file_range` promises nothing: it makes
//!   nothing durable. A write that lands while an fsync is running is not covered by it.
//! - **Names.** A create, mkdir, link, unlink, rmdir or rename in directory D is durable iff an
//!   fsync of D began after it and returned. A rename across two directories is durable when
//!   either directory is synced so (ext4 commits a rename as one transaction). Syncing a file
//!   does not make its directory entry durable.
//! - **Consequences.** A file whose directory entry is not durable vanishes with its data, even if
//!   its data was synced; a directory whose mkdir is not durable vanishes with everything in it;
//!   an unlinked file whose unlink is not durable comes back with its content (rolled back as its
//!   own syncs say); a rename that is not durable is reversed, and the file it replaced comes back.
//! - **Torn writes.** With [`Tear::None`] every non-durable write is discarded whole. With
//!   [`Tear::Seeded`], per file, a random number of its non-durable changes (in order) is kept
//!   whole and the next write is kept torn: a random prefix of 1..len-1 of its bytes, the rest of
//!   its range back to the old bytes. The same seed and journal give the same files.
//!
//! The model is a superset of what ext4 does (ext4 with data=ordered commits more, earlier), so
//! every state it produces is one a real power cut could produce under the POSIX promises, which
//! is what a database may rely on.
//!
//! # How the rollback works
//!
//! `cut` starts from the files as the killed process left them (page cache intact) and undoes,
//! latest first, every operation that is not durable: writes by restoring the saved old bytes and
//! the old size, names by removing, relinking (from the stash) or renaming back. The process may
//! have died after journalling an operation and before running it, so every undo checks the files
//! first and tolerates an operation that never happened. Then the journal folder is emptied, so
//! the next run under the shim starts clean.
//!
//! # Limits
//!
//! - Only what goes through glibc's exported functions is seen: a raw `syscall()`, io_uring, or a
//!   glibc-internal call (stdio's `fwrite` on a FILE, `dprintf`, for some) bypasses the shim. The
//!   shim aborts the process, naming the call and path, rather than mis-model what it can see but
//!   not model: a shared writable mmap, copy_file_range/sendfile/splice into a tracked file,
//!   O_TMPFILE, fopen/fdopen for writing, a rename or link across the root's edge,
//!   RENAME_EXCHANGE/RENAME_WHITEOUT, fallocate collapse/insert range, a change to the root's
//!   own entry.
//! - Symlinks: an operation whose last path component is a symlink under the root aborts; a
//!   symlink to a directory, used as a middle component, is not detected (paths are compared
//!   lexically with the root, which itself is canonicalized).
//! - What exists under the root when the process starts counts as durable.
//! - One process per journal: a child exec'd under the same shim finds the journal taken; it may
//!   read the root, and aborts if it changes it. A forked child that changes the root aborts too.
//!   A process that re-executes itself continues the journal (fds it inherits under the root are
//!   tracked again).
//! - A journal spans every run until a cut: a process killed and restarted without a cut keeps
//!   journalling, and the next cut undoes what none of the runs made durable.
//! - O_DIRECT writes are modelled like buffered ones (not durable until fsync). O_SYNC/O_DSYNC
//!   and RWF_SYNC/RWF_DSYNC writes count as followed by an fsync of the whole file, which may
//!   keep slightly more than a real cut would.
//! - The root and the journal folder must be on one filesystem (the stash is hard links), and
//!   `cut` must be able to open for writing every file it rolls back.
//! - The journal grows without bound during a run (each overwrite saves its old bytes); one
//!   operation may save at most [`journal::SAVED_BYTES_PER_OP_MAX`] bytes.
//! - Linux with glibc on x86-64 or AArch64 only.

pub mod journal;
pub mod model;
mod report;
mod rollback;

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub use journal::FileId;
pub use model::Tear;
pub use report::{CutReport, TornWrite};

/// The folder whose files the shim journals (absolute, canonical).
pub const ROOT_ENV: &str = "BATON_POWERLOSS_ROOT";
/// The journal folder (absolute, canonical; same filesystem as the root, outside it).
pub const JOURNAL_ENV: &str = "BATON_POWERLOSS_JOURNAL";
/// The shim's file name in a cargo target folder.
pub const PRELOAD_FILE_NAME: &str = "libbaton_powerloss_preload.so";

/// Why a child cannot be set up to run under the shim.
#[derive(Debug)]
pub enum SetupError {
    /// The shim is not in the folder: it is built by `cargo build -p baton-powerloss-preload`.
    PreloadMissing {
        path: PathBuf,
    },
    Io {
        what: String,
        path: PathBuf,
        source: io::Error,
    },
    DifferentFilesystems {
        root: PathBuf,
        journal_dir: PathBuf,
    },
    /// The journal folder and the root must not contain each other.
    Nested {
        root: PathBuf,
        journal_dir: PathBuf,
    },
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::PreloadMissing { path } => write!(
                f,
                "power-loss shim {}: not found (build it with `cargo build -p baton-powerloss-preload`)",
                path.display()
            ),
            SetupError::Io { what, path, source } => {
                write!(f, "{}: {what}: {source}", path.display())
            }
            SetupError::DifferentFilesystems { root, journal_dir } => write!(
                f,
                "power-loss journal {} is not on the filesystem of root {} (the stash needs hard links)",
                journal_dir.display(),
                root.display()
            ),
            SetupError::Nested { root, journal_dir } => write!(
                f,
                "power-loss journal {} and root {} must not contain each other",
                journal_dir.display(),
                root.display()
            ),
        }
    }
}

impl std::error::Error for SetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SetupError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Why [`cut`] failed. The root may be partly rolled back after an `Io` or `FileMissing`.
#[derive(Debug)]
pub enum CutError {
    Io {
        what: String,
        path: PathBuf,
        source: io::Error,
    },
    DifferentFilesystems {
        root: PathBuf,
        journal_dir: PathBuf,
    },
    /// Someone holds the journal: the process under the shim is still alive (or not yet reaped).
    JournalInUse {
        path: PathBuf,
    },
    CorruptJournal {
        path: PathBuf,
        error: journal::DecodeError,
    },
    /// A file with changes to undo is under no name in the root or the stash: something outside
    /// the shim's view removed it.
    FileMissing {
        file: FileId,
    },
}

impl CutError {
    pub(crate) fn io(what: &str, path: &Path, source: io::Error) -> CutError {
        CutError::Io {
            what: what.to_owned(),
            path: path.to_owned(),
            source,
        }
    }
}

impl fmt::Display for CutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CutError::Io { what, path, source } => {
                write!(f, "{}: {what}: {source}", path.display())
            }
            CutError::DifferentFilesystems { root, journal_dir } => {
                let setup = SetupError::DifferentFilesystems {
                    root: root.clone(),
                    journal_dir: journal_dir.clone(),
                };
                write!(f, "{setup}")
            }
            CutError::JournalInUse { path } => write!(
                f,
                "power-loss journal {}: still held by a live process (kill and reap it before the cut)",
                path.display()
            ),
            CutError::CorruptJournal { path, error } => {
                write!(f, "power-loss journal {}: corrupt {error}", path.display())
            }
            CutError::FileMissing { file } => write!(
                f,
                "{file}: has changes to undo but no name under the root or in the stash"
            ),
        }
    }
}

impl std::error::Error for CutError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CutError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Finds the shim in `bin_dir` (a cargo target folder such as `$CARGO_TARGET_DIR/debug`).
pub fn find_preload(bin_dir: &Path) -> Result<PathBuf, SetupError> {
    let path = bin_dir.join(PRELOAD_FILE_NAME);
    if !path.is_file() {
        return Err(SetupError::PreloadMissing { path });
    }
    fs::canonicalize(&path).map_err(|source| SetupError::Io {
        what: "canonicalize".into(),
        path,
        source,
    })
}

/// The environment a child needs to run under the shim: `LD_PRELOAD`, [`ROOT_ENV`] and
/// [`JOURNAL_ENV`]. Creates the journal folder; checks that it and the root (which must exist)
/// are on one filesystem and apart. `LD_PRELOAD` is set to the shim alone.
pub fn child_env(
    preload: &Path,
    root: &Path,
    journal_dir: &Path,
) -> Result<Vec<(OsString, OsString)>, SetupError> {
    let io = |what: &str, path: &Path| {
        let (what, path) = (what.to_owned(), path.to_owned());
        move |source| SetupError::Io { what, path, source }
    };
    let root = fs::canonicalize(root).map_err(io("canonicalize root", root))?;
    let nested =
        |journal_dir: &Path| root.starts_with(journal_dir) || journal_dir.starts_with(&root);
    // Checked before creating the folder too, so a refused setup leaves nothing in the root.
    let journal_abs = std::path::absolute(journal_dir).map_err(io("absolute path", journal_dir))?;
    if nested(&journal_abs) {
        return Err(SetupError::Nested {
            root: root.clone(),
            journal_dir: journal_abs,
        });
    }
    fs::create_dir_all(journal_dir).map_err(io("create journal folder", journal_dir))?;
    let journal_dir =
        fs::canonicalize(journal_dir).map_err(io("canonicalize journal folder", journal_dir))?;
    let preload = fs::canonicalize(preload).map_err(io("canonicalize shim", preload))?;
    if nested(&journal_dir) {
        return Err(SetupError::Nested { root, journal_dir });
    }
    let root_dev = fs::metadata(&root).map_err(io("stat root", &root))?.dev();
    let journal_dev = fs::metadata(&journal_dir)
        .map_err(io("stat journal folder", &journal_dir))?
        .dev();
    if root_dev != journal_dev {
        return Err(SetupError::DifferentFilesystems { root, journal_dir });
    }
    Ok(vec![
        ("LD_PRELOAD".into(), preload.into_os_string()),
        (ROOT_ENV.into(), root.into_os_string()),
        (JOURNAL_ENV.into(), journal_dir.into_os_string()),
    ])
}

/// Rewinds `root` to what a power cut could have left, from the journal in `journal_dir`, then
/// empties the journal folder for the next run. Call it after the process under the shim is dead
/// and reaped. A missing or empty journal changes nothing.
pub fn cut(root: &Path, journal_dir: &Path, tear: Tear) -> Result<CutReport, CutError> {
    let root_dev = fs::metadata(root)
        .map_err(|e| CutError::io("stat root", root, e))?
        .dev();
    let journal_path = journal_dir.join(journal::JOURNAL_FILE);
    let mut journal_file = match File::open(&journal_path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(CutReport::default()),
        Err(e) => return Err(CutError::io("open", &journal_path, e)),
    };
    let journal_dev = fs::metadata(journal_dir)
        .map_err(|e| CutError::io("stat", journal_dir, e))?
        .dev();
    if root_dev != journal_dev {
        return Err(CutError::DifferentFilesystems {
            root: root.to_owned(),
            journal_dir: journal_dir.to_owned(),
        });
    }
    // The shim holds this lock for its process's life; taking it proves the writer is gone.
    // SAFETY: flock on an fd we own; no memory is passed.
    if unsafe { libc::flock(journal_file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(CutError::JournalInUse { path: journal_path });
        }
        return Err(CutError::io("lock", &journal_path, e));
    }
    let mut bytes = Vec::new();
    journal_file
        .read_to_end(&mut bytes)
        .map_err(|e| CutError::io("read", &journal_path, e))?;
    let decoded = journal::decode(&bytes).map_err(|error| CutError::CorruptJournal {
        path: journal_path.clone(),
        error,
    })?;
    let plan = model::plan(&decoded.records, tear);
    let report = rollback::apply(&plan, root, journal_dir)?;
    reset(journal_dir)?;
    Ok(report)
}

/// Empties the journal folder: no journal, no saved bytes, no stash.
fn reset(journal_dir: &Path) -> Result<(), CutError> {
    for name in [journal::SAVED_FILE, journal::JOURNAL_FILE] {
        let path = journal_dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(CutError::io("remove", &path, e)),
        }
    }
    let stash = journal_dir.join(journal::STASH_DIR);
    match fs::remove_dir_all(&stash) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CutError::io("remove stash", &stash, e)),
    }
}
