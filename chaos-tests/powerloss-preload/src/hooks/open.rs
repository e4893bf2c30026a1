//! Hooks that create or retire fds: the open family (which also creates and truncates files),
//! close, and the dup family. They keep the fd table that every other fd hook checks.
//!
//! open and fcntl are variadic in C. The hooks take the optional argument as a fixed one: on the
//! x86-64 and AArch64 Linux ABIs a variadic integer travels exactly like a fixed one, and it is
//! only passed on, to the real function that reads it only when the flags say it is there.

use std::ffi::CStr;

use baton_powerloss::journal::Record;
use libc::{c_char, c_int, c_ulong, mode_t};

use super::{Errno, failure};
use crate::paths::{self, AbsPath};
use crate::real::Real;
use crate::shim::{self, Reentry, Tracked, file_id, maybe_tracked};
use crate::sys;

type OpenFn = unsafe extern "C" fn(*const c_char, c_int, ...) -> c_int;
type OpenatFn = unsafe extern "C" fn(c_int, *const c_char, c_int, ...) -> c_int;
type Open2Fn = unsafe extern "C" fn(*const c_char, c_int) -> c_int;
type Openat2Fn = unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int;
type CreatFn = unsafe extern "C" fn(*const c_char, mode_t) -> c_int;
type CloseFn = unsafe extern "C" fn(c_int) -> c_int;
type DupFn = unsafe extern "C" fn(c_int) -> c_int;
type Dup2Fn = unsafe extern "C" fn(c_int, c_int) -> c_int;
type Dup3Fn = unsafe extern "C" fn(c_int, c_int, c_int) -> c_int;
type FcntlFn = unsafe extern "C" fn(c_int, c_int, ...) -> c_int;
type OpendirFn = unsafe extern "C" fn(*const c_char) -> *mut libc::DIR;
type ClosedirFn = unsafe extern "C" fn(*mut libc::DIR) -> c_int;

static OPEN: Real<OpenFn> = Real::new(c"open");
static OPEN64: Real<OpenFn> = Real::new(c"open64");
static OPENAT: Real<OpenatFn> = Real::new(c"openat");
static OPENAT64: Real<OpenatFn> = Real::new(c"openat64");
static OPEN_2: Real<Open2Fn> = Real::new(c"__open_2");
static OPEN64_2: Real<Open2Fn> = Real::new(c"__open64_2");
static OPENAT_2: Real<Openat2Fn> = Real::new(c"__openat_2");
static OPENAT64_2: Real<Openat2Fn> = Real::new(c"__openat64_2");
static CREAT: Real<CreatFn> = Real::new(c"creat");
static CREAT64: Real<CreatFn> = Real::new(c"creat64");
static CLOSE: Real<CloseFn> = Real::new(c"close");
static DUP: Real<DupFn> = Real::new(c"dup");
static DUP2: Real<Dup2Fn> = Real::new(c"dup2");
static DUP3: Real<Dup3Fn> = Real::new(c"dup3");
static FCNTL: Real<FcntlFn> = Real::new(c"fcntl");
static FCNTL64: Real<FcntlFn> = Real::new(c"fcntl64");
static OPENDIR: Real<OpendirFn> = Real::new(c"opendir");
static CLOSEDIR: Real<ClosedirFn> = Real::new(c"closedir");

#[unsafe(no_mangle)]
pub unsafe extern "C" fn open(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    let real = || unsafe { OPEN.get()(path, flags, mode) };
    unsafe { journalled_open("open", libc::AT_FDCWD, path, flags, real) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn open64(path: *const c_char, flags: c_int, mode: mode_t) -> c_int {
    let real = || unsafe { OPEN64.get()(path, flags, mode) };
    unsafe { journalled_open("open64", libc::AT_FDCWD, path, flags, real) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn openat(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: mode_t,
) -> c_int {
    let real = || unsafe { OPENAT.get()(dirfd, path, flags, mode) };
    unsafe { journalled_open("openat", dirfd, path, flags, real) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn openat64(
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: mode_t,
) -> c_int {
    let real = || unsafe { OPENAT64.get()(dirfd, path, flags, mode) };
    unsafe { journalled_open("openat64", dirfd, path, flags, real) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __open_2(path: *const c_char, flags: c_int) -> c_int {
    let real = || unsafe { OPEN_2.get()(path, flags) };
    unsafe { journalled_open("__open_2", libc::AT_FDCWD, path, flags, real) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __open64_2(path: *const c_char, flags: c_int) -> c_int {
    let real = || unsafe { OPEN64_2.get()(path, flags) };
    unsafe { journalled_open("__open64_2", libc::AT_FDCWD, path, flags, real) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __openat_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    let real = || unsafe { OPENAT_2.get()(dirfd, path, flags) };
    unsafe { journalled_open("__openat_2", dirfd, path, flags, real) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn __openat64_2(dirfd: c_int, path: *const c_char, flags: c_int) -> c_int {
    let real = || unsafe { OPENAT64_2.get()(dirfd, path, flags) };
    unsafe { journalled_open("__openat64_2", dirfd, path, flags, real) }
}

const CREAT_FLAGS: c_int = libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC;

#[unsafe(no_mangle)]
pub unsafe extern "C" fn creat(path: *const c_char, mode: mode_t) -> c_int {
    let real = || unsafe { CREAT.get()(path, mode) };
    unsafe { journalled_open("creat", libc::AT_FDCWD, path, CREAT_FLAGS, real) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn creat64(path: *const c_char, mode: mode_t) -> c_int {
    let real = || unsafe { CREAT64.get()(path, mode) };
    unsafe { journalled_open("creat64", libc::AT_FDCWD, path, CREAT_FLAGS, real) }
}

/// What an open does to the files before it returns an fd.
enum OpenEffect {
    Nothing,
    Creates,
    Truncates,
}

/// An open: journals the file it creates or the bytes its O_TRUNC drops, and tracks the fd when
/// it names a regular file or directory under the root.
unsafe fn journalled_open(
    call: &str,
    dirfd: c_int,
    path: *const c_char,
    flags: c_int,
    real: impl FnOnce() -> c_int,
) -> c_int {
    let Some(_reentry) = Reentry::enter() else {
        return real();
    };
    let Some(shim) = shim::get() else {
        return real();
    };
    if path.is_null() {
        return real();
    }
    let errno = Errno::at_entry();
    let Some(abs) = paths::resolve(dirfd, unsafe { CStr::from_ptr(path) }) else {
        return errno.call(real).0;
    };
    if !shim.contains(&abs) {
        return errno.call(real).0;
    }
    if flags & libc::O_TMPFILE == libc::O_TMPFILE {
        sys::die(
            call,
            abs.bytes(),
            "O_TMPFILE under the power-loss root is not modelled",
        );
    }
    if !shim.owns_journal() {
        // Another process journals this root: reading is harmless, changing is not modelled.
        let changes = libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC;
        if flags & changes != 0 {
            shim.abort_unless_owner(call, abs.bytes());
        }
        return errno.call(real).0;
    }
    let mut state = shim.lock(call, abs.bytes());
    let c_path = abs.c_string();
    let st = sys::lstat(&c_path);
    let effect = match &st {
        Ok(st) if sys::is_symlink(st) => sys::die(
            call,
            abs.bytes(),
            "symlinks under the power-loss root are not modelled",
        ),
        _ if flags & libc::O_PATH != 0 => OpenEffect::Nothing,
        Err(libc::ENOENT) if flags & libc::O_CREAT != 0 => OpenEffect::Creates,
        Ok(st) if flags & libc::O_TRUNC != 0 && sys::is_regular(st) && st.st_size > 0 => {
            OpenEffect::Truncates
        }
        _ => OpenEffect::Nothing,
    };
    let recorded = match (effect, st) {
        (OpenEffect::Creates, _) => match parent_dir(call, &abs) {
            Some((dir, name)) => {
                state.record(&Record::Create { dir, name });
                true
            }
            // No parent directory: the real open fails, and there is nothing to journal.
            None => false,
        },
        (OpenEffect::Truncates, Ok(st)) => {
            let size = st.st_size as u64;
            let saved = state.save(call, abs.bytes(), &c_path, 0, size);
            let file = file_id(&st);
            state.record(&Record::SetSize {
                file,
                size: 0,
                size_before: size,
                saved,
            });
            true
        }
        _ => false,
    };
    let (fd, err) = errno.call(real);
    if fd < 0 {
        if recorded {
            state.record_outcome(failure(err));
        }
    } else if let Ok(st) = sys::fstat(fd)
        && (sys::is_regular(&st) || sys::is_dir(&st))
    {
        let tracked = Tracked {
            id: file_id(&st),
            is_dir: sys::is_dir(&st),
            path: abs.bytes().to_vec(),
        };
        state.track(fd, tracked);
    }
    drop(state);
    sys::set_errno(err);
    fd
}

/// The identity of `path`'s parent directory and the last name, for a name record; None if
/// the parent is not an existing directory (then the operation fails and changes nothing).
pub(super) fn parent_dir(call: &str, path: &AbsPath) -> Option<(baton_powerloss::FileId, Vec<u8>)> {
    let (parent, name) = path.split()?;
    let st = sys::lstat(&parent.c_string()).ok()?;
    if sys::is_symlink(&st) {
        sys::die(
            call,
            path.bytes(),
            "symlinks under the power-loss root are not modelled",
        );
    }
    sys::is_dir(&st).then(|| (file_id(&st), name))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    let real = || unsafe { CLOSE.get()(fd) };
    if !maybe_tracked(fd) {
        return real();
    }
    let Some(_reentry) = Reentry::enter() else {
        return real();
    };
    let errno = Errno::at_entry();
    let Some(mut state) = shim::get().and_then(|shim| shim.lock_table()) else {
        return errno.call(real).0;
    };
    // Under the lock, so no tracked open can get this number before the table forgets it.
    let (ret, err) = errno.call(real);
    state.untrack(fd);
    drop(state);
    sys::set_errno(err);
    ret
}

/// A duplicating call: `newfd` (if it succeeds) refers to what `oldfd` does, and whatever
/// `newfd` was before is closed.
fn journalled_dup(oldfd: c_int, target: Option<c_int>, real: impl FnOnce() -> c_int) -> c_int {
    let Some(_reentry) = Reentry::enter() else {
        return real();
    };
    let errno = Errno::at_entry();
    let Some(mut state) = shim::get().and_then(|shim| shim.lock_table()) else {
        return errno.call(real).0;
    };
    let (ret, err) = errno.call(real);
    if ret >= 0 && Some(oldfd) != target {
        match state.lookup(oldfd).cloned() {
            Some(tracked) => state.track(ret, tracked),
            None => state.untrack(ret),
        }
    }
    drop(state);
    sys::set_errno(err);
    ret
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup(oldfd: c_int) -> c_int {
    let real = || unsafe { DUP.get()(oldfd) };
    if !maybe_tracked(oldfd) {
        return real();
    }
    journalled_dup(oldfd, None, real)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup2(oldfd: c_int, newfd: c_int) -> c_int {
    let real = || unsafe { DUP2.get()(oldfd, newfd) };
    if !maybe_tracked(oldfd) && !maybe_tracked(newfd) {
        return real();
    }
    journalled_dup(oldfd, Some(newfd), real)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup3(oldfd: c_int, newfd: c_int, flags: c_int) -> c_int {
    let real = || unsafe { DUP3.get()(oldfd, newfd, flags) };
    if !maybe_tracked(oldfd) && !maybe_tracked(newfd) {
        return real();
    }
    journalled_dup(oldfd, Some(newfd), real)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    let real = || unsafe { FCNTL.get()(fd, cmd, arg) };
    fcntl_hook(fd, cmd, real)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: c_ulong) -> c_int {
    // glibc before 2.28 has no fcntl64; there fcntl is the same function.
    let real = || unsafe { FCNTL64.find().unwrap_or_else(|| FCNTL.get())(fd, cmd, arg) };
    fcntl_hook(fd, cmd, real)
}

/// Only F_DUPFD and F_DUPFD_CLOEXEC concern the table; every other command passes through
/// (F_SETFL may toggle O_APPEND, which each write reads afresh).
fn fcntl_hook(fd: c_int, cmd: c_int, real: impl FnOnce() -> c_int) -> c_int {
    if !(cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC) || !maybe_tracked(fd) {
        return real();
    }
    journalled_dup(fd, None, real)
}

/// opendir opens its fd inside glibc, where no hook sees it; tracked here so that an fsync of
/// `dirfd(dir)` counts. Opening changes nothing, so nothing is journalled.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn opendir(path: *const c_char) -> *mut libc::DIR {
    let dir = unsafe { OPENDIR.get()(path) };
    if dir.is_null() || path.is_null() {
        return dir;
    }
    let Some(_reentry) = Reentry::enter() else {
        return dir;
    };
    let Some(shim) = shim::get().filter(|shim| shim.owns_journal()) else {
        return dir;
    };
    let err = sys::errno();
    if let Some(abs) = paths::resolve(libc::AT_FDCWD, unsafe { CStr::from_ptr(path) })
        && shim.contains(&abs)
        && let Some(mut state) = shim.lock_table()
    {
        let fd = unsafe { libc::dirfd(dir) };
        if let Ok(st) = sys::fstat(fd) {
            let tracked = Tracked {
                id: file_id(&st),
                is_dir: true,
                path: abs.bytes().to_vec(),
            };
            state.track(fd, tracked);
        }
    }
    sys::set_errno(err);
    dir
}

/// closedir closes its fd inside glibc; the table forgets it here.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn closedir(dir: *mut libc::DIR) -> c_int {
    let real = || unsafe { CLOSEDIR.get()(dir) };
    if dir.is_null() {
        return real();
    }
    let fd = unsafe { libc::dirfd(dir) };
    if !maybe_tracked(fd) {
        return real();
    }
    let Some(_reentry) = Reentry::enter() else {
        return real();
    };
    let errno = Errno::at_entry();
    let Some(mut state) = shim::get().and_then(|shim| shim.lock_table()) else {
        return errno.call(real).0;
    };
    let (ret, err) = errno.call(real);
    state.untrack(fd);
    drop(state);
    sys::set_errno(err);
    ret
}
