//! Hooks that change a file's bytes or size: the write family, truncates, fallocate.

use std::ffi::{CStr, c_void};

use baton_powerloss::journal::{Record, SyncTarget};
use libc::{c_char, c_int, iovec, off_t, size_t, ssize_t};

use super::{Errno, failure};
use crate::paths;
use crate::real::Real;
use crate::shim::{self, Reentry, State, Tracked, file_id, maybe_tracked};
use crate::sys;

type WriteFn = unsafe extern "C" fn(c_int, *const c_void, size_t) -> ssize_t;
type PwriteFn = unsafe extern "C" fn(c_int, *const c_void, size_t, off_t) -> ssize_t;
type WritevFn = unsafe extern "C" fn(c_int, *const iovec, c_int) -> ssize_t;
type PwritevFn = unsafe extern "C" fn(c_int, *const iovec, c_int, off_t) -> ssize_t;
type Pwritev2Fn = unsafe extern "C" fn(c_int, *const iovec, c_int, off_t, c_int) -> ssize_t;
type FtruncateFn = unsafe extern "C" fn(c_int, off_t) -> c_int;
type TruncateFn = unsafe extern "C" fn(*const c_char, off_t) -> c_int;
type FallocateFn = unsafe extern "C" fn(c_int, c_int, off_t, off_t) -> c_int;
type PosixFallocateFn = unsafe extern "C" fn(c_int, off_t, off_t) -> c_int;

static WRITE: Real<WriteFn> = Real::new(c"write");
static PWRITE: Real<PwriteFn> = Real::new(c"pwrite");
static PWRITE64: Real<PwriteFn> = Real::new(c"pwrite64");
static WRITEV: Real<WritevFn> = Real::new(c"writev");
static PWRITEV: Real<PwritevFn> = Real::new(c"pwritev");
static PWRITEV64: Real<PwritevFn> = Real::new(c"pwritev64");
static PWRITEV2: Real<Pwritev2Fn> = Real::new(c"pwritev2");
static PWRITEV64V2: Real<Pwritev2Fn> = Real::new(c"pwritev64v2");
static FTRUNCATE: Real<FtruncateFn> = Real::new(c"ftruncate");
static FTRUNCATE64: Real<FtruncateFn> = Real::new(c"ftruncate64");
static TRUNCATE: Real<TruncateFn> = Real::new(c"truncate");
static TRUNCATE64: Real<TruncateFn> = Real::new(c"truncate64");
static FALLOCATE: Real<FallocateFn> = Real::new(c"fallocate");
static FALLOCATE64: Real<FallocateFn> = Real::new(c"fallocate64");
static POSIX_FALLOCATE: Real<PosixFallocateFn> = Real::new(c"posix_fallocate");
static POSIX_FALLOCATE64: Real<PosixFallocateFn> = Real::new(c"posix_fallocate64");

// pwritev2 flags (linux/fs.h).
const RWF_DSYNC: c_int = 0x2;
const RWF_SYNC: c_int = 0x4;
const RWF_APPEND: c_int = 0x10;

// fallocate modes (linux/falloc.h).
const FALLOC_FL_KEEP_SIZE: c_int = 0x01;
const FALLOC_FL_PUNCH_HOLE: c_int = 0x02;
const FALLOC_FL_COLLAPSE_RANGE: c_int = 0x08;
const FALLOC_FL_ZERO_RANGE: c_int = 0x10;
const FALLOC_FL_INSERT_RANGE: c_int = 0x20;
const FALLOC_FL_UNSHARE_RANGE: c_int = 0x40;

/// Where a write lands, before O_APPEND has its say.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Position {
    Cursor,
    At(off_t),
    Append,
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t {
    let real = || unsafe { WRITE.get()(fd, buf, count) };
    if !maybe_tracked(fd) {
        return real();
    }
    journalled_write("write", fd, count, Position::Cursor, false, real)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwrite(
    fd: c_int,
    buf: *const c_void,
    count: size_t,
    offset: off_t,
) -> ssize_t {
    let real = || unsafe { PWRITE.get()(fd, buf, count, offset) };
    if !maybe_tracked(fd) {
        return real();
    }
    journalled_write("pwrite", fd, count, Position::At(offset), false, real)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwrite64(
    fd: c_int,
    buf: *const c_void,
    count: size_t,
    offset: off_t,
) -> ssize_t {
    let real = || unsafe { PWRITE64.get()(fd, buf, count, offset) };
    if !maybe_tracked(fd) {
        return real();
    }
    journalled_write("pwrite64", fd, count, Position::At(offset), false, real)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const iovec, iovcnt: c_int) -> ssize_t {
    let real = || unsafe { WRITEV.get()(fd, iov, iovcnt) };
    if !maybe_tracked(fd) {
        return real();
    }
    match unsafe { iov_len(iov, iovcnt) } {
        Some(len) => journalled_write("writev", fd, len, Position::Cursor, false, real),
        None => real(),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwritev(
    fd: c_int,
    iov: *const iovec,
    iovcnt: c_int,
    offset: off_t,
) -> ssize_t {
    let real = || unsafe { PWRITEV.get()(fd, iov, iovcnt, offset) };
    if !maybe_tracked(fd) {
        return real();
    }
    match unsafe { iov_len(iov, iovcnt) } {
        Some(len) => journalled_write("pwritev", fd, len, Position::At(offset), false, real),
        None => real(),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwritev64(
    fd: c_int,
    iov: *const iovec,
    iovcnt: c_int,
    offset: off_t,
) -> ssize_t {
    let real = || unsafe { PWRITEV64.get()(fd, iov, iovcnt, offset) };
    if !maybe_tracked(fd) {
        return real();
    }
    match unsafe { iov_len(iov, iovcnt) } {
        Some(len) => journalled_write("pwritev64", fd, len, Position::At(offset), false, real),
        None => real(),
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwritev2(
    fd: c_int,
    iov: *const iovec,
    iovcnt: c_int,
    offset: off_t,
    flags: c_int,
) -> ssize_t {
    let real = || unsafe { PWRITEV2.get()(fd, iov, iovcnt, offset, flags) };
    unsafe { pwritev2_hook("pwritev2", fd, iov, iovcnt, offset, flags, real) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwritev64v2(
    fd: c_int,
    iov: *const iovec,
    iovcnt: c_int,
    offset: off_t,
    flags: c_int,
) -> ssize_t {
    // Older glibc has only pwritev2 (the same function on 64-bit targets).
    let real = || unsafe {
        PWRITEV64V2.find().unwrap_or_else(|| PWRITEV2.get())(fd, iov, iovcnt, offset, flags)
    };
    unsafe { pwritev2_hook("pwritev64v2", fd, iov, iovcnt, offset, flags, real) }
}

unsafe fn pwritev2_hook(
    call: &str,
    fd: c_int,
    iov: *const iovec,
    iovcnt: c_int,
    offset: off_t,
    flags: c_int,
    real: impl FnOnce() -> ssize_t,
) -> ssize_t {
    if !maybe_tracked(fd) {
        return real();
    }
    let position = match (flags & RWF_APPEND != 0, offset) {
        (true, _) => Position::Append,
        (false, -1) => Position::Cursor,
        (false, offset) => Position::At(offset),
    };
    let sync = flags & (RWF_DSYNC | RWF_SYNC) != 0;
    match unsafe { iov_len(iov, iovcnt) } {
        Some(len) => journalled_write(call, fd, len, position, sync, real),
        None => real(),
    }
}

/// The total length of an iovec array, or None if the kernel will refuse it anyway.
unsafe fn iov_len(iov: *const iovec, iovcnt: c_int) -> Option<usize> {
    if iov.is_null() || !(0..=libc::UIO_MAXIOV).contains(&iovcnt) {
        return None;
    }
    let iovs = unsafe { std::slice::from_raw_parts(iov, iovcnt as usize) };
    iovs.iter()
        .try_fold(0usize, |total, v| total.checked_add(v.iov_len))
}

/// A write of `len` bytes to tracked-looking `fd`: saves the bytes it overwrites, journals it,
/// runs it, journals a failure or short count. `sync` marks a write that is durable when it
/// returns (RWF_SYNC/RWF_DSYNC; O_SYNC/O_DSYNC is read from the fd).
fn journalled_write(
    call: &str,
    fd: c_int,
    len: usize,
    position: Position,
    sync: bool,
    real: impl FnOnce() -> ssize_t,
) -> ssize_t {
    let Some(_reentry) = Reentry::enter() else {
        return real();
    };
    let Some(shim) = shim::get() else {
        return real();
    };
    let errno = Errno::at_entry();
    let mut state = shim.lock(call, b"");
    let Some((tracked, st)) = state.tracked(fd) else {
        drop(state);
        return errno.call(real).0;
    };
    if tracked.is_dir || len == 0 {
        return errno.call(real).0;
    }
    let flags = sys::status_flags(fd).unwrap_or(0);
    let size = st.st_size as u64;
    let offset = match position {
        _ if flags & libc::O_APPEND != 0 => size,
        Position::Append => size,
        Position::At(offset) if offset < 0 => return errno.call(real).0,
        Position::At(offset) => offset as u64,
        Position::Cursor => match sys::lseek_cur(fd) {
            Ok(cursor) => cursor,
            Err(_) => return errno.call(real).0,
        },
    };
    let len = len as u64;
    let saved_len = if offset < size {
        len.min(size - offset)
    } else {
        0
    };
    let saved = state.save(
        call,
        &tracked.path,
        &sys::proc_fd_path(fd),
        offset,
        saved_len,
    );
    state.record(&Record::Write {
        file: tracked.id,
        offset,
        len,
        size_before: size,
        saved,
    });
    let (ret, err) = errno.call(real);
    if ret < 0 {
        state.record_outcome(failure(err));
    } else if (ret as u64) < len {
        state.record_outcome(ret as i64);
    }
    if ret > 0 && (sync || flags & libc::O_DSYNC != 0) {
        record_instant_sync(&mut state, &tracked);
    }
    drop(state);
    sys::set_errno(err);
    ret
}

/// A sync that began after the operation just journalled and returned with it.
fn record_instant_sync(state: &mut State, tracked: &Tracked) {
    let sync = state.next_sync();
    state.record(&Record::SyncBegin {
        sync,
        target: SyncTarget::File(tracked.id),
    });
    state.record(&Record::SyncEnd { sync });
}

/// What a size-changing call does to a file of `size` bytes.
enum Change {
    /// Bytes `[offset, offset + len)` change (zeros, for a hole punch).
    Bytes { offset: u64, len: u64 },
    /// The size becomes this.
    Size(u64),
    /// Nothing anyone can read.
    Invisible,
    /// Changes the shim cannot model; the reason.
    Refused(String),
}

/// A size or hole change on tracked-looking `fd`. `failed` turns the real result into a failure
/// errno (posix_fallocate returns it instead of setting errno).
fn journalled_fd_change(
    call: &str,
    fd: c_int,
    change: impl FnOnce(u64) -> Change,
    real: impl FnOnce() -> c_int,
    failed: impl FnOnce(c_int, c_int) -> Option<c_int>,
) -> c_int {
    let Some(_reentry) = Reentry::enter() else {
        return real();
    };
    let Some(shim) = shim::get() else {
        return real();
    };
    let errno = Errno::at_entry();
    let mut state = shim.lock(call, b"");
    let Some((tracked, st)) = state.tracked(fd) else {
        drop(state);
        return errno.call(real).0;
    };
    if tracked.is_dir {
        return errno.call(real).0;
    }
    let size = st.st_size as u64;
    let recorded = journal_change(
        &mut state,
        call,
        &tracked.path,
        tracked.id,
        &sys::proc_fd_path(fd),
        size,
        change(size),
    );
    let (ret, err) = errno.call(real);
    if recorded && let Some(err) = failed(ret, err) {
        state.record_outcome(failure(err));
    }
    drop(state);
    sys::set_errno(err);
    ret
}

/// Saves and journals `change` to a file of `size` bytes readable at `source`; false if there
/// was nothing to journal.
fn journal_change(
    state: &mut State,
    call: &str,
    path: &[u8],
    file: baton_powerloss::FileId,
    source: &CStr,
    size: u64,
    change: Change,
) -> bool {
    match change {
        Change::Invisible => false,
        Change::Refused(why) => sys::die(call, path, &why),
        Change::Size(new_size) if new_size == size => false,
        Change::Size(new_size) => {
            let saved = state.save(call, path, source, new_size, size.saturating_sub(new_size));
            state.record(&Record::SetSize {
                file,
                size: new_size,
                size_before: size,
                saved,
            });
            true
        }
        Change::Bytes { len: 0, .. } => false,
        Change::Bytes { offset, len } => {
            let saved_len = if offset < size {
                len.min(size - offset)
            } else {
                0
            };
            let saved = state.save(call, path, source, offset, saved_len);
            state.record(&Record::Write {
                file,
                offset,
                len,
                size_before: size,
                saved,
            });
            true
        }
    }
}

fn failed_if_nonzero(ret: c_int, errno: c_int) -> Option<c_int> {
    (ret != 0).then_some(errno)
}

fn truncate_change(length: off_t) -> impl FnOnce(u64) -> Change {
    move |_| {
        if length < 0 {
            Change::Invisible
        } else {
            Change::Size(length as u64)
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ftruncate(fd: c_int, length: off_t) -> c_int {
    let real = || unsafe { FTRUNCATE.get()(fd, length) };
    if !maybe_tracked(fd) {
        return real();
    }
    journalled_fd_change(
        "ftruncate",
        fd,
        truncate_change(length),
        real,
        failed_if_nonzero,
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ftruncate64(fd: c_int, length: off_t) -> c_int {
    let real = || unsafe { FTRUNCATE64.get()(fd, length) };
    if !maybe_tracked(fd) {
        return real();
    }
    journalled_fd_change(
        "ftruncate64",
        fd,
        truncate_change(length),
        real,
        failed_if_nonzero,
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn truncate(path: *const c_char, length: off_t) -> c_int {
    let real = || unsafe { TRUNCATE.get()(path, length) };
    unsafe { truncate_hook("truncate", path, length, real) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn truncate64(path: *const c_char, length: off_t) -> c_int {
    let real = || unsafe { TRUNCATE64.get()(path, length) };
    unsafe { truncate_hook("truncate64", path, length, real) }
}

unsafe fn truncate_hook(
    call: &str,
    path: *const c_char,
    length: off_t,
    real: impl FnOnce() -> c_int,
) -> c_int {
    let Some(_reentry) = Reentry::enter() else {
        return real();
    };
    let Some(shim) = shim::get() else {
        return real();
    };
    if path.is_null() || length < 0 {
        return real();
    }
    let errno = Errno::at_entry();
    let Some(abs) = paths::resolve(libc::AT_FDCWD, unsafe { CStr::from_ptr(path) }) else {
        return errno.call(real).0;
    };
    if !shim.contains(&abs) {
        return errno.call(real).0;
    }
    let mut state = shim.lock(call, abs.bytes());
    let c_path = abs.c_string();
    let st = match sys::lstat(&c_path) {
        Ok(st) if sys::is_symlink(&st) => sys::die(
            call,
            abs.bytes(),
            "symlinks under the power-loss root are not modelled",
        ),
        Ok(st) if sys::is_regular(&st) => st,
        _ => return errno.call(real).0,
    };
    let size = st.st_size as u64;
    let change = Change::Size(length as u64);
    let recorded = journal_change(
        &mut state,
        call,
        abs.bytes(),
        file_id(&st),
        &c_path,
        size,
        change,
    );
    let (ret, err) = errno.call(real);
    if recorded && ret != 0 {
        state.record_outcome(failure(err));
    }
    drop(state);
    sys::set_errno(err);
    ret
}

/// What fallocate `mode` does to the visible file; aborts for modes that move bytes around.
fn fallocate_change(mode: c_int, offset: off_t, len: off_t) -> impl FnOnce(u64) -> Change {
    move |size| {
        let known = FALLOC_FL_KEEP_SIZE
            | FALLOC_FL_PUNCH_HOLE
            | FALLOC_FL_ZERO_RANGE
            | FALLOC_FL_UNSHARE_RANGE
            | FALLOC_FL_COLLAPSE_RANGE
            | FALLOC_FL_INSERT_RANGE;
        if mode & (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE) != 0 || mode & !known != 0 {
            return Change::Refused(format!(
                "fallocate mode {mode:#x} on a tracked file is not modelled"
            ));
        }
        if offset < 0 || len <= 0 {
            return Change::Invisible;
        }
        let (start, end) = (offset as u64, offset as u64 + len as u64);
        let keep_size = mode & FALLOC_FL_KEEP_SIZE != 0;
        if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE) != 0 {
            let end = if keep_size { end.min(size) } else { end };
            Change::Bytes {
                offset: start,
                len: end.saturating_sub(start),
            }
        } else if !keep_size && end > size {
            Change::Size(end)
        } else {
            Change::Invisible
        }
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fallocate(fd: c_int, mode: c_int, offset: off_t, len: off_t) -> c_int {
    let real = || unsafe { FALLOCATE.get()(fd, mode, offset, len) };
    if !maybe_tracked(fd) {
        return real();
    }
    journalled_fd_change(
        "fallocate",
        fd,
        fallocate_change(mode, offset, len),
        real,
        failed_if_nonzero,
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fallocate64(fd: c_int, mode: c_int, offset: off_t, len: off_t) -> c_int {
    let real = || unsafe { FALLOCATE64.get()(fd, mode, offset, len) };
    if !maybe_tracked(fd) {
        return real();
    }
    journalled_fd_change(
        "fallocate64",
        fd,
        fallocate_change(mode, offset, len),
        real,
        failed_if_nonzero,
    )
}

/// posix_fallocate returns the error number instead of setting errno.
fn posix_failed(ret: c_int, _errno: c_int) -> Option<c_int> {
    (ret != 0).then_some(ret)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_fallocate(fd: c_int, offset: off_t, len: off_t) -> c_int {
    let real = || unsafe { POSIX_FALLOCATE.get()(fd, offset, len) };
    if !maybe_tracked(fd) {
        return real();
    }
    journalled_fd_change(
        "posix_fallocate",
        fd,
        fallocate_change(0, offset, len),
        real,
        posix_failed,
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_fallocate64(fd: c_int, offset: off_t, len: off_t) -> c_int {
    let real = || unsafe { POSIX_FALLOCATE64.get()(fd, offset, len) };
    if !maybe_tracked(fd) {
        return real();
    }
    let change = fallocate_change(0, offset, len);
    journalled_fd_change("posix_fallocate64", fd, change, real, posix_failed)
}
