//! Hooks that make data durable: fsync, fdatasync, sync, syncfs. Each journals "sync began"
//! under the lock, runs the real call outside it (so other threads' writes go on, and one that
//! lands meanwhile is ordered after the begin, hence not covered), then journals "sync ended"
//! only on success.

use baton_powerloss::journal::{Record, SyncTarget};
use libc::{c_int, c_uint, off64_t};

use super::Errno;
use crate::real::Real;
use crate::shim::{self, Reentry, maybe_tracked};
use crate::sys;

type FdFn = unsafe extern "C" fn(c_int) -> c_int;
type SyncFn = unsafe extern "C" fn();
type SyncFileRangeFn = unsafe extern "C" fn(c_int, off64_t, off64_t, c_uint) -> c_int;

static FSYNC: Real<FdFn> = Real::new(c"fsync");
static FDATASYNC: Real<FdFn> = Real::new(c"fdatasync");
static SYNC: Real<SyncFn> = Real::new(c"sync");
static SYNCFS: Real<FdFn> = Real::new(c"syncfs");
static SYNC_FILE_RANGE: Real<SyncFileRangeFn> = Real::new(c"sync_file_range");

#[unsafe(no_mangle)]
pub unsafe extern "C" fn fsync(fd: c_int) -> c_int {
    let real = || unsafe { FSYNC.get()(fd) };
    if !maybe_tracked(fd) {
        return real();
    }
    journalled_fd_sync("fsync", fd, real)
}

/// Counted like fsync: the model is about data, and fdatasync flushes a file's data and size.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdatasync(fd: c_int) -> c_int {
    let real = || unsafe { FDATASYNC.get()(fd) };
    if !maybe_tracked(fd) {
        return real();
    }
    journalled_fd_sync("fdatasync", fd, real)
}

fn journalled_fd_sync(call: &str, fd: c_int, real: impl FnOnce() -> c_int) -> c_int {
    let Some(_reentry) = Reentry::enter() else {
        return real();
    };
    let Some(shim) = shim::get() else {
        return real();
    };
    let errno = Errno::at_entry();
    let begun = {
        let mut state = shim.lock(call, b"");
        state.tracked(fd).map(|(tracked, _)| {
            let sync = state.next_sync();
            state.record(&Record::SyncBegin {
                sync,
                target: SyncTarget::File(tracked.id),
            });
            sync
        })
    };
    journalled_sync(call, begun, errno, real)
}

/// Runs the real sync outside the lock; journals its end if it began journalled and succeeded.
fn journalled_sync(
    call: &str,
    begun: Option<u64>,
    errno: Errno,
    real: impl FnOnce() -> c_int,
) -> c_int {
    let (ret, err) = errno.call(real);
    if let (Some(sync), 0) = (begun, ret)
        && let Some(shim) = shim::get()
    {
        shim.lock(call, b"").record(&Record::SyncEnd { sync });
    }
    sys::set_errno(err);
    ret
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn sync() {
    let real = || unsafe { SYNC.get()() };
    let Some(_reentry) = Reentry::enter() else {
        return real();
    };
    let Some(shim) = shim::get().filter(|shim| shim.owns_journal()) else {
        return real();
    };
    let errno = Errno::at_entry();
    let sync = {
        let mut state = shim.lock("sync", b"");
        let sync = state.next_sync();
        state.record(&Record::SyncBegin {
            sync,
            target: SyncTarget::All,
        });
        sync
    };
    journalled_sync("sync", Some(sync), errno, || {
        real();
        0
    });
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn syncfs(fd: c_int) -> c_int {
    let real = || unsafe { SYNCFS.get()(fd) };
    let Some(_reentry) = Reentry::enter() else {
        return real();
    };
    let Some(shim) = shim::get().filter(|shim| shim.owns_journal()) else {
        return real();
    };
    let errno = Errno::at_entry();
    let begun = match sys::fstat(fd) {
        Ok(st) if st.st_dev == shim.root_dev => {
            let mut state = shim.lock("syncfs", b"");
            let sync = state.next_sync();
            state.record(&Record::SyncBegin {
                sync,
                target: SyncTarget::Device(st.st_dev),
            });
            Some(sync)
        }
        _ => None,
    };
    journalled_sync("syncfs", begun, errno, real)
}

/// Passed through and journalled as nothing: sync_file_range makes no durability promise (it
/// neither flushes metadata nor the disk's cache).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sync_file_range(
    fd: c_int,
    offset: off64_t,
    nbytes: off64_t,
    flags: c_uint,
) -> c_int {
    unsafe { SYNC_FILE_RANGE.get()(fd, offset, nbytes, flags) }
}
