//! The real libc functions behind the interposers, found once with `dlsym(RTLD_NEXT)` and cached.

use std::ffi::{CStr, c_void};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicPtr, Ordering};

/// A libc function by name; `F` is its function-pointer type.
pub struct Real<F> {
    name: &'static CStr,
    ptr: AtomicPtr<c_void>,
    _type: PhantomData<F>,
}

impl<F: Copy> Real<F> {
    pub const fn new(name: &'static CStr) -> Real<F> {
        Real {
            name,
            ptr: AtomicPtr::new(std::ptr::null_mut()),
            _type: PhantomData,
        }
    }

    /// The function, or None if this glibc lacks it.
    pub fn find(&self) -> Option<F> {
        const { assert!(size_of::<F>() == size_of::<*mut c_void>()) };
        let mut ptr = self.ptr.load(Ordering::Relaxed);
        if ptr.is_null() {
            // SAFETY: dlsym with a NUL-terminated name; RTLD_NEXT skips this library, so the
            // result is the definition the application would have called without the shim.
            ptr = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) };
            if ptr.is_null() {
                return None;
            }
            // Racing threads store the same value.
            self.ptr.store(ptr, Ordering::Relaxed);
        }
        // SAFETY: `F` is the function-pointer type of the symbol (checked to be pointer-sized).
        Some(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&ptr) })
    }

    /// The function; the process aborts if libc lacks it (then nothing could have called it
    /// through the shim either, so this is a broken environment).
    pub fn get(&self) -> F {
        match self.find() {
            Some(f) => f,
            None => crate::sys::die(
                "dlsym",
                self.name.to_bytes(),
                "no such function after the shim",
            ),
        }
    }
}

// SAFETY: the only state is an atomic pointer; `F` is a function-pointer type, never stored.
unsafe impl<F> Sync for Real<F> {}
