//! Raw system calls for the shim's own I/O: they cannot recurse into its interposers, and errors
//! come back as values (the caller's errno is the application's, and is left alone).

use std::ffi::CStr;
use std::mem::MaybeUninit;

use libc::{c_int, c_long, off_t};

/// The result of a raw call: `Err(errno)` on failure.
pub type SysResult<T> = Result<T, c_int>;

fn check(ret: c_long) -> SysResult<c_long> {
    if ret < 0 { Err(errno()) } else { Ok(ret) }
}

pub fn errno() -> c_int {
    // SAFETY: glibc's errno location is valid for the calling thread's life.
    unsafe { *libc::__errno_location() }
}

pub fn set_errno(value: c_int) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = value }
}

/// Writes a message to stderr and aborts: for what the shim cannot model. A silent mis-model
/// would make the power cut lie, so the process dies loudly instead.
pub fn die(call: &str, path: &[u8], why: &str) -> ! {
    let mut message = b"baton-powerloss shim: ".to_vec();
    message.extend_from_slice(call.as_bytes());
    if !path.is_empty() {
        message.extend_from_slice(b" ");
        message.extend_from_slice(path);
    }
    message.extend_from_slice(b": ");
    message.extend_from_slice(why.as_bytes());
    message.extend_from_slice(b"; aborting\n");
    let _ = write_all(2, &message);
    // SAFETY: abort never returns.
    unsafe { libc::abort() }
}

pub fn write_all(fd: c_int, mut bytes: &[u8]) -> SysResult<()> {
    while !bytes.is_empty() {
        // SAFETY: the buffer is valid for its length.
        let ret = unsafe { libc::syscall(libc::SYS_write, fd, bytes.as_ptr(), bytes.len()) };
        match check(ret) {
            Ok(n) => bytes = &bytes[n as usize..],
            Err(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes at `offset`; a file shorter than that is `EIO`.
pub fn pread_exact(fd: c_int, buf: &mut [u8], offset: u64) -> SysResult<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        let at = (offset + done as u64) as off_t;
        // SAFETY: the buffer is valid for its length.
        let ret =
            unsafe { libc::syscall(libc::SYS_pread64, fd, rest.as_mut_ptr(), rest.len(), at) };
        match check(ret) {
            Ok(0) => return Err(libc::EIO),
            Ok(n) => done += n as usize,
            Err(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub fn read_to_end(fd: c_int) -> SysResult<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        // SAFETY: the buffer is valid for its length.
        let ret = unsafe { libc::syscall(libc::SYS_read, fd, chunk.as_mut_ptr(), chunk.len()) };
        match check(ret) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&chunk[..n as usize]),
            Err(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

pub fn open(path: &CStr, flags: c_int, mode: libc::mode_t) -> SysResult<c_int> {
    // SAFETY: the path is NUL-terminated.
    let ret =
        unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, path.as_ptr(), flags, mode) };
    check(ret).map(|fd| fd as c_int)
}

pub fn close(fd: c_int) {
    // SAFETY: closing an fd the shim owns.
    unsafe { libc::syscall(libc::SYS_close, fd) };
}

pub fn fstat(fd: c_int) -> SysResult<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: the kernel fills the struct on success.
    check(unsafe { libc::syscall(libc::SYS_fstat, fd, st.as_mut_ptr()) })?;
    // SAFETY: the call succeeded.
    Ok(unsafe { st.assume_init() })
}

/// `stat` of a path without following a final symlink.
pub fn lstat(path: &CStr) -> SysResult<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    let flags = libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: the path is NUL-terminated and the kernel fills the struct on success.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_newfstatat,
            libc::AT_FDCWD,
            path.as_ptr(),
            st.as_mut_ptr(),
            flags,
        )
    };
    check(ret)?;
    // SAFETY: the call succeeded.
    Ok(unsafe { st.assume_init() })
}

pub fn lseek_cur(fd: c_int) -> SysResult<u64> {
    // SAFETY: plain syscall.
    check(unsafe { libc::syscall(libc::SYS_lseek, fd, 0 as off_t, libc::SEEK_CUR) })
        .map(|n| n as u64)
}

pub fn status_flags(fd: c_int) -> SysResult<c_int> {
    // SAFETY: plain syscall.
    check(unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFL) }).map(|n| n as c_int)
}

pub fn ftruncate(fd: c_int, len: u64) -> SysResult<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::syscall(libc::SYS_ftruncate, fd, len as off_t) }).map(drop)
}

pub fn flock(fd: c_int, op: c_int) -> SysResult<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::syscall(libc::SYS_flock, fd, op) }).map(drop)
}

pub fn link(from: &CStr, to: &CStr) -> SysResult<()> {
    // SAFETY: both paths are NUL-terminated.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_linkat,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            0,
        )
    };
    check(ret).map(drop)
}

pub fn mkdir(path: &CStr, mode: libc::mode_t) -> SysResult<()> {
    // SAFETY: the path is NUL-terminated.
    check(unsafe { libc::syscall(libc::SYS_mkdirat, libc::AT_FDCWD, path.as_ptr(), mode) })
        .map(drop)
}

/// The target of a symlink, such as `/proc/self/fd/N`.
pub fn readlink(path: &CStr) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: the path is NUL-terminated and the buffer valid for its length.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_readlinkat,
            libc::AT_FDCWD,
            path.as_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    let n = check(ret)? as usize;
    if n == buf.len() {
        return Err(libc::ENAMETOOLONG);
    }
    buf.truncate(n);
    Ok(buf)
}

pub fn getcwd() -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: the buffer is valid for its length; the kernel NUL-terminates what it writes.
    let ret = unsafe { libc::syscall(libc::SYS_getcwd, buf.as_mut_ptr(), buf.len()) };
    check(ret)?;
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    buf.truncate(len);
    Ok(buf)
}

pub fn getpid() -> u32 {
    // SAFETY: plain syscall, cannot fail.
    (unsafe { libc::syscall(libc::SYS_getpid) }) as u32
}

/// The open fd `fd` as a path the shim can open a second time (to read old bytes).
pub fn proc_fd_path(fd: c_int) -> std::ffi::CString {
    std::ffi::CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a number")
}

pub fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

pub fn is_regular(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

pub fn is_symlink(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFLNK
}
