//! The interposers, grouped by kind. Each has glibc's exported name and signature and ends in
//! the real function (or the raw syscall) with the caller's arguments, so results and errno are
//! what they would be without the shim.
//!
//! Every hook follows one shape: a cheap test says whether the call can concern the root (fd
//! table flag, or a path resolved against the root); if not, straight to the real function.
//! Otherwise, inside a [`crate::shim::Reentry`] and under the shim's lock: look at the files,
//! save what the operation will destroy, journal the record, run the real call, journal its
//! outcome when it is not a full success.
//!
//! SAFETY, for every `unsafe` block here: the hooks pass the caller's pointers unchanged to the
//! real function, which has the same contract; the shim itself reads only C strings (paths) and
//! iovec arrays, which the same contract makes valid.

mod data;
mod names;
mod open;
mod sync;
mod unmodelled;

use libc::c_int;

use crate::sys;

/// The caller's errno, set again right before the real call (which then sees what it would have
/// seen); `call` returns the errno the real call left, for the hook to set again before returning.
pub(crate) struct Errno(c_int);

impl Errno {
    pub fn at_entry() -> Errno {
        Errno(sys::errno())
    }

    pub fn call<T>(&self, real: impl FnOnce() -> T) -> (T, c_int) {
        sys::set_errno(self.0);
        let ret = real();
        (ret, sys::errno())
    }
}

/// `-errno` as the journal's failure outcome.
pub(crate) fn failure(errno: c_int) -> i64 {
    -i64::from(errno)
}
