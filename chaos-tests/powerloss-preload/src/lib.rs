//! The power-loss shim: an LD_PRELOAD library that journals every change a process makes under
//! one root folder, so that `baton_powerloss::cut` can rewind the folder after a SIGKILL to what
//! a power cut could have left. The durability model and the journal format live in
//! `baton-powerloss`; this crate only observes and records.
//!
//! Active only when `BATON_POWERLOSS_ROOT` and `BATON_POWERLOSS_JOURNAL` are set (see
//! `baton_powerloss::child_env`); otherwise every hook is a pass-through. Hooks never change a
//! call's arguments, result or errno.
//!
//! - `hooks/`: the interposed glibc functions, by kind (open and fd table, data, sync, names,
//!   and the calls it refuses).
//! - `shim`: configuration, the fd table (a lock-free flag per fd for the fast path), the one
//!   lock that orders tracked operations, and the journal writer.
//! - `paths`: whether a path is under the root.
//! - `sys`, `real`: raw syscalls for the shim's own I/O, and the real libc functions.

#[cfg(not(all(
    target_os = "linux",
    target_env = "gnu",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
compile_error!(
    "the power-loss shim interposes glibc on x86-64 or AArch64 Linux only (variadic open/fcntl ABI)"
);

mod hooks;
mod paths;
mod real;
mod shim;
mod sys;
