//! Hooks for what the shim sees but cannot model: writes that bypass the write family. On a
//! tracked file they abort the process, naming the call and path, rather than let a cut lie.

use std::ffi::{CStr, c_void};

use libc::{FILE, c_char, c_int, c_uint, loff_t, off_t, size_t, ssize_t};

use crate::paths;
use crate::real::Real;
use crate::shim::{self, Reentry, maybe_tracked};
use crate::sys;

type CopyFileRangeFn =
    unsafe extern "C" fn(c_int, *mut loff_t, c_int, *mut loff_t, size_t, c_uint) -> ssize_t;
type SendfileFn = unsafe extern "C" fn(c_int, c_int, *mut off_t, size_t) -> ssize_t;
type SpliceFn =
    unsafe extern "C" fn(c_int, *mut loff_t, c_int, *mut loff_t, size_t, c_uint) -> ssize_t;
type FopenFn = unsafe extern "C" fn(*const c_char, *const c_char) -> *mut FILE;
type FdopenFn = unsafe extern "C" fn(c_int, *const c_char) -> *mut FILE;

static COPY_FILE_RANGE: Real<CopyFileRangeFn> = Real::new(c"copy_file_range");
static SENDFILE: Real<SendfileFn> = Real::new(c"sendfile");
static SENDFILE64: Real<SendfileFn> = Real::new(c"sendfile64");
static SPLICE: Real<SpliceFn> = Real::new(c"splice");
static FOPEN: Real<FopenFn> = Real::new(c"fopen");
static FOPEN64: Real<FopenFn> = Real::new(c"fopen64");
static FDOPEN: Real<FdopenFn> = Real::new(c"fdopen");

/// Aborts if `fd` is a tracked file; `why` says what is not modelled.
fn refuse_tracked(call: &str, fd: c_int, why: &str) {
    if !maybe_tracked(fd) {
        return;
    }
    let Some(_reentry) = Reentry::enter() else {
        return;
    };
    let Some(shim) = shim::get() else { return };
    let mut state = shim.lock(call, b"");
    if let Some((tracked, _)) = state.tracked(fd) {
        let path = tracked.path.clone();
        drop(state);
        sys::die(call, &path, why);
    }
}

/// A shared writable mapping writes the file with no call the shim could see. Interposed with
/// the raw syscall as the real function: malloc maps memory too, and looking up glibc's mmap
/// from inside an allocation could recurse.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmap(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: off_t,
) -> *mut c_void {
    if fd >= 0 && prot & libc::PROT_WRITE != 0 && flags & libc::MAP_SHARED != 0 {
        refuse_tracked(
            "mmap",
            fd,
            "a shared writable mapping of a tracked file is not modelled",
        );
    }
    // SAFETY: the caller's arguments, unchanged; glibc's mmap is this syscall on 64-bit Linux.
    unsafe { libc::syscall(libc::SYS_mmap, addr, len, prot, flags, fd, offset) as *mut c_void }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn mmap64(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: off_t,
) -> *mut c_void {
    unsafe { mmap(addr, len, prot, flags, fd, offset) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn copy_file_range(
    fd_in: c_int,
    off_in: *mut loff_t,
    fd_out: c_int,
    off_out: *mut loff_t,
    len: size_t,
    flags: c_uint,
) -> ssize_t {
    refuse_tracked(
        "copy_file_range",
        fd_out,
        "copy_file_range into a tracked file is not modelled",
    );
    unsafe { COPY_FILE_RANGE.get()(fd_in, off_in, fd_out, off_out, len, flags) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendfile(
    out_fd: c_int,
    in_fd: c_int,
    offset: *mut off_t,
    count: size_t,
) -> ssize_t {
    refuse_tracked(
        "sendfile",
        out_fd,
        "sendfile into a tracked file is not modelled",
    );
    unsafe { SENDFILE.get()(out_fd, in_fd, offset, count) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendfile64(
    out_fd: c_int,
    in_fd: c_int,
    offset: *mut off_t,
    count: size_t,
) -> ssize_t {
    refuse_tracked(
        "sendfile64",
        out_fd,
        "sendfile into a tracked file is not modelled",
    );
    unsafe { SENDFILE64.get()(out_fd, in_fd, offset, count) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn splice(
    fd_in: c_int,
    off_in: *mut loff_t,
    fd_out: c_int,
    off_out: *mut loff_t,
    len: size_t,
    flags: c_uint,
) -> ssize_t {
    refuse_tracked(
        "splice",
        fd_out,
        "splice into a tracked file is not modelled",
    );
    unsafe { SPLICE.get()(fd_in, off_in, fd_out, off_out, len, flags) }
}

/// Whether an fopen mode string writes.
unsafe fn writes(mode: *const c_char) -> bool {
    !mode.is_null()
        && unsafe { CStr::from_ptr(mode) }
            .to_bytes()
            .iter()
            .any(|b| b"wa+".contains(b))
}

/// stdio writes through glibc's internal write, which no interposer sees.
unsafe fn refuse_stdio_path(call: &str, path: *const c_char, mode: *const c_char) {
    if path.is_null() || !unsafe { writes(mode) } {
        return;
    }
    let Some(_reentry) = Reentry::enter() else {
        return;
    };
    let Some(shim) = shim::get() else { return };
    let Some(abs) = paths::resolve(libc::AT_FDCWD, unsafe { CStr::from_ptr(path) }) else {
        return;
    };
    if shim.contains(&abs) {
        sys::die(
            call,
            abs.bytes(),
            "stdio writes under the power-loss root are not modelled",
        );
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fopen(path: *const c_char, mode: *const c_char) -> *mut FILE {
    unsafe { refuse_stdio_path("fopen", path, mode) };
    unsafe { FOPEN.get()(path, mode) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fopen64(path: *const c_char, mode: *const c_char) -> *mut FILE {
    unsafe { refuse_stdio_path("fopen64", path, mode) };
    unsafe { FOPEN64.get()(path, mode) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdopen(fd: c_int, mode: *const c_char) -> *mut FILE {
    if unsafe { writes(mode) } {
        refuse_tracked(
            "fdopen",
            fd,
            "stdio writes to a tracked file are not modelled",
        );
    }
    unsafe { FDOPEN.get()(fd, mode) }
}
