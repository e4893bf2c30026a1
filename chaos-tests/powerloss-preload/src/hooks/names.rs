//! Hooks that change directory entries: rename, unlink, link, mkdir, rmdir. Before a name
//! disappears, the file behind it is hard-linked into the stash (a removed directory is pinned
//! by an open fd instead), so that every inode the journal names exists until the cut.

use std::ffi::CStr;

use baton_powerloss::journal::{Record, Replaced};
use libc::{c_char, c_int, c_uint, mode_t};

use super::open::parent_dir;
use super::{Errno, failure};
use crate::paths::{self, AbsPath};
use crate::real::Real;
use crate::shim::{self, Reentry, Shim, file_id};
use crate::sys;

type RenameFn = unsafe extern "C" fn(*const c_char, *const c_char) -> c_int;
type RenameatFn = unsafe extern "C" fn(c_int, *const c_char, c_int, *const c_char) -> c_int;
type Renameat2Fn =
    unsafe extern "C" fn(c_int, *const c_char, c_int, *const c_char, c_uint) -> c_int;
type PathFn = unsafe extern "C" fn(*const c_char) -> c_int;
type UnlinkatFn = unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int;
type LinkFn = unsafe extern "C" fn(*const c_char, *const c_char) -> c_int;
type LinkatFn = unsafe extern "C" fn(c_int, *const c_char, c_int, *const c_char, c_int) -> c_int;
type MkdirFn = unsafe extern "C" fn(*const c_char, mode_t) -> c_int;
type MkdiratFn = unsafe extern "C" fn(c_int, *const c_char, mode_t) -> c_int;

static RENAME: Real<RenameFn> = Real::new(c"rename");
static RENAMEAT: Real<RenameatFn> = Real::new(c"renameat");
static RENAMEAT2: Real<Renameat2Fn> = Real::new(c"renameat2");
static UNLINK: Real<PathFn> = Real::new(c"unlink");
static UNLINKAT: Real<UnlinkatFn> = Real::new(c"unlinkat");
static LINK: Real<LinkFn> = Real::new(c"link");
static LINKAT: Real<LinkatFn> = Real::new(c"linkat");
static MKDIR: Real<MkdirFn> = Real::new(c"mkdir");
static MKDIRAT: Real<MkdiratFn> = Real::new(c"mkdirat");
static RMDIR: Real<PathFn> = Real::new(c"rmdir");

const RENAME_NOREPLACE: c_uint = 1;

const SYMLINKS: &str = "symlinks under the power-loss root are not modelled";

/// The absolute path of `path` (relative to `dirfd`) if the shim is active and it is under the
/// root; an operation on the root itself aborts (its directory is outside the model).
unsafe fn under_root(
    call: &str,
    shim: &Shim,
    dirfd: c_int,
    path: *const c_char,
) -> Option<AbsPath> {
    if path.is_null() {
        return None;
    }
    let abs = paths::resolve(dirfd, unsafe { CStr::from_ptr(path) })?;
    if !shim.contains(&abs) {
        return None;
    }
    if abs == shim.root {
        sys::die(
            call,
            abs.bytes(),
            "changing the power-loss root's own entry is not modelled",
        );
    }
    Some(abs)
}

/// `lstat`, aborting on a symlink; None when the path does not exist (or cannot be read).
fn existing(call: &str, path: &AbsPath) -> Option<libc::stat> {
    let st = sys::lstat(&path.c_string()).ok()?;
    if sys::is_symlink(&st) {
        sys::die(call, path.bytes(), SYMLINKS);
    }
    Some(st)
}

/// Runs `real` after `journal` (under the lock) chose whether to record; journals a failure.
/// `journal` returns whether it recorded, and may register what to do on failure.
fn journalled_name_change(
    call: &str,
    shim: &Shim,
    path: &AbsPath,
    errno: Errno,
    journal: impl FnOnce(&mut shim::State) -> Journalled,
    real: impl FnOnce() -> c_int,
) -> c_int {
    let mut state = shim.lock(call, path.bytes());
    let journalled = journal(&mut state);
    let (ret, err) = errno.call(real);
    match journalled {
        Journalled::Nothing => {}
        Journalled::Recorded { pinned } if ret != 0 => {
            state.record_outcome(failure(err));
            if let Some(fd) = pinned {
                sys::close(fd);
            }
        }
        Journalled::Recorded { pinned } => {
            if let Some(fd) = pinned {
                state.pin_dir(fd);
            }
        }
    }
    drop(state);
    sys::set_errno(err);
    ret
}

enum Journalled {
    Nothing,
    /// A record was written; `pinned` is an fd on a directory the call removes.
    Recorded {
        pinned: Option<c_int>,
    },
}

/// An fd that keeps a directory's inode (and so its number) alive after it is removed.
fn pin(call: &str, path: &AbsPath) -> c_int {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    sys::open(&path.c_string(), flags, 0).unwrap_or_else(|e| {
        let why = format!(
            "cannot pin the directory it removes: {}",
            std::io::Error::from_raw_os_error(e)
        );
        sys::die(call, path.bytes(), &why)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn rename(old: *const c_char, new: *const c_char) -> c_int {
    let real = || unsafe { RENAME.get()(old, new) };
    unsafe { rename_hook("rename", libc::AT_FDCWD, old, libc::AT_FDCWD, new, 0, real) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn renameat(
    olddirfd: c_int,
    old: *const c_char,
    newdirfd: c_int,
    new: *const c_char,
) -> c_int {
    let real = || unsafe { RENAMEAT.get()(olddirfd, old, newdirfd, new) };
    unsafe { rename_hook("renameat", olddirfd, old, newdirfd, new, 0, real) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn renameat2(
    olddirfd: c_int,
    old: *const c_char,
    newdirfd: c_int,
    new: *const c_char,
    flags: c_uint,
) -> c_int {
    let real = || unsafe { RENAMEAT2.get()(olddirfd, old, newdirfd, new, flags) };
    unsafe { rename_hook("renameat2", olddirfd, old, newdirfd, new, flags, real) }
}

unsafe fn rename_hook(
    call: &str,
    olddirfd: c_int,
    old: *const c_char,
    newdirfd: c_int,
    new: *const c_char,
    flags: c_uint,
    real: impl FnOnce() -> c_int,
) -> c_int {
    let Some(_reentry) = Reentry::enter() else {
        return real();
    };
    let Some(shim) = shim::get() else {
        return real();
    };
    let errno = Errno::at_entry();
    let from = unsafe { under_root(call, shim, olddirfd, old) };
    let to = unsafe { under_root(call, shim, newdirfd, new) };
    let (from, to) = match (from, to) {
        (None, None) => return errno.call(real).0,
        (Some(from), Some(to)) => (from, to),
        (Some(inside), None) | (None, Some(inside)) => sys::die(
            call,
            inside.bytes(),
            "a rename across the edge of the power-loss root is not modelled",
        ),
    };
    if flags & !RENAME_NOREPLACE != 0 {
        sys::die(
            call,
            from.bytes(),
            &format!("renameat2 flags {flags:#x} are not modelled"),
        );
    }
    let journal = |state: &mut shim::State| {
        let Some(moved) = existing(call, &from) else {
            return Journalled::Nothing;
        };
        let (Some((from_dir, from_name)), Some((to_dir, to_name))) =
            (parent_dir(call, &from), parent_dir(call, &to))
        else {
            return Journalled::Nothing;
        };
        let mut pinned = None;
        let replaced = match existing(call, &to) {
            None => Replaced::Nothing,
            // Two names of one inode: POSIX says rename does nothing.
            Some(victim) if file_id(&victim) == file_id(&moved) => return Journalled::Nothing,
            // Refused with EEXIST.
            Some(_) if flags & RENAME_NOREPLACE != 0 => return Journalled::Nothing,
            Some(victim) if sys::is_dir(&victim) => {
                pinned = Some(pin(call, &to));
                Replaced::Dir {
                    dir: file_id(&victim),
                    mode: victim.st_mode & 0o7777,
                }
            }
            Some(victim) => Replaced::File {
                file: file_id(&victim),
                stash: state.stash(call, &to),
            },
        };
        let moved = file_id(&moved);
        state.record(&Record::Rename {
            from_dir,
            from_name,
            to_dir,
            to_name,
            moved,
            replaced,
        });
        Journalled::Recorded { pinned }
    };
    journalled_name_change(call, shim, &from, errno, journal, real)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn unlink(path: *const c_char) -> c_int {
    let real = || unsafe { UNLINK.get()(path) };
    unsafe { unlink_hook("unlink", libc::AT_FDCWD, path, real) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn unlinkat(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    let real = || unsafe { UNLINKAT.get()(dirfd, path, flags) };
    if flags & libc::AT_REMOVEDIR != 0 {
        unsafe { rmdir_hook("unlinkat", dirfd, path, real) }
    } else {
        unsafe { unlink_hook("unlinkat", dirfd, path, real) }
    }
}

unsafe fn unlink_hook(
    call: &str,
    dirfd: c_int,
    path: *const c_char,
    real: impl FnOnce() -> c_int,
) -> c_int {
    let Some(_reentry) = Reentry::enter() else {
        return real();
    };
    let Some(shim) = shim::get() else {
        return real();
    };
    let errno = Errno::at_entry();
    let Some(abs) = (unsafe { under_root(call, shim, dirfd, path) }) else {
        return errno.call(real).0;
    };
    let journal = |state: &mut shim::State| {
        // A directory is refused with EISDIR; a missing name with ENOENT.
        let Some(st) = existing(call, &abs).filter(|st| !sys::is_dir(st)) else {
            return Journalled::Nothing;
        };
        let Some((dir, name)) = parent_dir(call, &abs) else {
            return Journalled::Nothing;
        };
        let stash = state.stash(call, &abs);
        state.record(&Record::Unlink {
            dir,
            name,
            file: file_id(&st),
            stash,
        });
        Journalled::Recorded { pinned: None }
    };
    journalled_name_change(call, shim, &abs, errno, journal, real)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn rmdir(path: *const c_char) -> c_int {
    let real = || unsafe { RMDIR.get()(path) };
    unsafe { rmdir_hook("rmdir", libc::AT_FDCWD, path, real) }
}

unsafe fn rmdir_hook(
    call: &str,
    dirfd: c_int,
    path: *const c_char,
    real: impl FnOnce() -> c_int,
) -> c_int {
    let Some(_reentry) = Reentry::enter() else {
        return real();
    };
    let Some(shim) = shim::get() else {
        return real();
    };
    let errno = Errno::at_entry();
    let Some(abs) = (unsafe { under_root(call, shim, dirfd, path) }) else {
        return errno.call(real).0;
    };
    let journal = |state: &mut shim::State| {
        let Some(st) = existing(call, &abs).filter(sys::is_dir) else {
            return Journalled::Nothing;
        };
        let Some((dir, name)) = parent_dir(call, &abs) else {
            return Journalled::Nothing;
        };
        let pinned = pin(call, &abs);
        let mode = st.st_mode & 0o7777;
        state.record(&Record::Rmdir {
            dir,
            name,
            removed: file_id(&st),
            mode,
        });
        Journalled::Recorded {
            pinned: Some(pinned),
        }
    };
    journalled_name_change(call, shim, &abs, errno, journal, real)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn mkdir(path: *const c_char, mode: mode_t) -> c_int {
    let real = || unsafe { MKDIR.get()(path, mode) };
    unsafe { mkdir_hook("mkdir", libc::AT_FDCWD, path, real) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn mkdirat(dirfd: c_int, path: *const c_char, mode: mode_t) -> c_int {
    let real = || unsafe { MKDIRAT.get()(dirfd, path, mode) };
    unsafe { mkdir_hook("mkdirat", dirfd, path, real) }
}

unsafe fn mkdir_hook(
    call: &str,
    dirfd: c_int,
    path: *const c_char,
    real: impl FnOnce() -> c_int,
) -> c_int {
    let Some(_reentry) = Reentry::enter() else {
        return real();
    };
    let Some(shim) = shim::get() else {
        return real();
    };
    let errno = Errno::at_entry();
    let Some(abs) = (unsafe { under_root(call, shim, dirfd, path) }) else {
        return errno.call(real).0;
    };
    let journal = |state: &mut shim::State| {
        // An existing name is refused with EEXIST.
        if existing(call, &abs).is_some() {
            return Journalled::Nothing;
        }
        let Some((dir, name)) = parent_dir(call, &abs) else {
            return Journalled::Nothing;
        };
        state.record(&Record::Mkdir { dir, name });
        Journalled::Recorded { pinned: None }
    };
    journalled_name_change(call, shim, &abs, errno, journal, real)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn link(old: *const c_char, new: *const c_char) -> c_int {
    let real = || unsafe { LINK.get()(old, new) };
    unsafe { link_hook("link", libc::AT_FDCWD, old, libc::AT_FDCWD, new, 0, real) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn linkat(
    olddirfd: c_int,
    old: *const c_char,
    newdirfd: c_int,
    new: *const c_char,
    flags: c_int,
) -> c_int {
    let real = || unsafe { LINKAT.get()(olddirfd, old, newdirfd, new, flags) };
    unsafe { link_hook("linkat", olddirfd, old, newdirfd, new, flags, real) }
}

unsafe fn link_hook(
    call: &str,
    olddirfd: c_int,
    old: *const c_char,
    newdirfd: c_int,
    new: *const c_char,
    flags: c_int,
    real: impl FnOnce() -> c_int,
) -> c_int {
    let Some(_reentry) = Reentry::enter() else {
        return real();
    };
    let Some(shim) = shim::get() else {
        return real();
    };
    let errno = Errno::at_entry();
    let Some(to) = (unsafe { under_root(call, shim, newdirfd, new) }) else {
        if let Some(from) = unsafe { under_root(call, shim, olddirfd, old) } {
            let why = "a link from the power-loss root to outside it is not modelled";
            sys::die(call, from.bytes(), why);
        }
        return errno.call(real).0;
    };
    if flags & libc::AT_EMPTY_PATH != 0 {
        sys::die(
            call,
            to.bytes(),
            "linkat with AT_EMPTY_PATH into the power-loss root is not modelled",
        );
    }
    let Some(from) = (unsafe { under_root(call, shim, olddirfd, old) }) else {
        sys::die(
            call,
            to.bytes(),
            "a link into the power-loss root from outside it is not modelled",
        );
    };
    let journal = |state: &mut shim::State| {
        let Some(file) = existing(call, &from) else {
            return Journalled::Nothing;
        };
        if sys::is_dir(&file) || existing(call, &to).is_some() {
            return Journalled::Nothing;
        }
        let Some((dir, name)) = parent_dir(call, &to) else {
            return Journalled::Nothing;
        };
        state.record(&Record::Link {
            dir,
            name,
            file: file_id(&file),
        });
        Journalled::Recorded { pinned: None }
    };
    journalled_name_change(call, shim, &to, errno, journal, real)
}
