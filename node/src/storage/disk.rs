//! Watches the free space of the data dir's filesystem, so a filling disk is met early (refuse
//! new workflows, hand leadership away) rather than at 100%, where every write fails.
//!
//! Free space is read with `statvfs` every [`CHECK_INTERVAL`] and counted as the blocks an
//! unprivileged process may still use (`f_bavail`): the root-reserved blocks of ext4 are not ours
//! to plan with even when batond runs as root. The disk is *low* below the reserve
//! (`--disk-reserve-mb`) and stays low until free space is back above the reserve plus a margin
//! ([`clear_margin_bytes`]), so a disk hovering at the reserve (log purges, snapshot files
//! coming and going) does not flip the node between refusing and accepting every second.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::metrics;

/// How often free space is read. A disk fills at most a few hundred MiB a second even under a
/// burst of large specs, and the default reserve is 256 MiB: a second is early enough.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The smallest margin above the reserve free space must reach before a low disk counts as
/// no longer low (the margin is otherwise a tenth of the reserve).
pub const CLEAR_MARGIN_BYTES_MIN: u64 = 16 * MIB;

const MIB: u64 = 1024 * 1024;

/// How far above the reserve free space must climb before a low disk is no longer low: a tenth
/// of the reserve, at least [`CLEAR_MARGIN_BYTES_MIN`].
pub fn clear_margin_bytes(reserve_bytes: u64) -> u64 {
    (reserve_bytes / 10).max(CLEAR_MARGIN_BYTES_MIN)
}

/// Whether the disk is low after a reading of `free_bytes`, given whether it was low before
/// (the hysteresis). A reserve of 0 turns the check off: never low.
pub fn next_low(was_low: bool, free_bytes: u64, reserve_bytes: u64) -> bool {
    if reserve_bytes == 0 {
        return false;
    }
    if was_low {
        free_bytes < reserve_bytes.saturating_add(clear_margin_bytes(reserve_bytes))
    } else {
        free_bytes < reserve_bytes
    }
}

/// Bytes available to unprivileged writers on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `statvfs` is plain old data, for which all zeroes is a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `stat` is a valid,
    // exclusive pointer to a `statvfs` the call fills in.
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The field widths differ between platforms (u32 on some 32-bit targets).
    #[allow(clippy::useless_conversion)]
    Ok(u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize)))
}

/// The data disk's state as last read. Cheap to share: readers take atomics, one task writes.
pub struct DiskWatcher {
    node_id: u64,
    dir: PathBuf,
    reserve_bytes: u64,
    free_bytes: AtomicU64,
    low: AtomicBool,
}

impl DiskWatcher {
    /// Reads the disk of `dir` once (so [`DiskWatcher::is_low`] is true from the first moment
    /// on a disk that starts low), then every [`CHECK_INTERVAL`] on a task that lives as long as
    /// the returned handle is not aborted.
    pub fn start(
        node_id: u64,
        dir: &Path,
        reserve_bytes: u64,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let watcher = Arc::new(Self {
            node_id,
            dir: dir.to_owned(),
            reserve_bytes,
            free_bytes: AtomicU64::new(u64::MAX),
            low: AtomicBool::new(false),
        });
        watcher.check();
        let task = tokio::spawn({
            let watcher = watcher.clone();
            async move {
                let mut every = tokio::time::interval(CHECK_INTERVAL);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                every.tick().await;
                loop {
                    every.tick().await;
                    let checked = watcher.clone();
                    // statvfs can block on a sick disk or a network filesystem: never on a
                    // runtime thread.
                    if tokio::task::spawn_blocking(move || checked.check())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        (watcher, task)
    }

    /// One reading: updates the state, the gauges, and logs a change.
    fn check(&self) {
        let free = match free_bytes(&self.dir) {
            Ok(free) => free,
            Err(err) => {
                // Keep the last reading: a node must not start refusing work because the
                // filesystem could not be asked (nor stop refusing because of it).
                tracing::warn!(dir = %self.dir.display(), error = %err, "cannot read the data disk's free space");
                return;
            }
        };
        self.free_bytes.store(free, Ordering::Relaxed);
        let was_low = self.low.load(Ordering::Relaxed);
        let low = next_low(was_low, free, self.reserve_bytes);
        self.low.store(low, Ordering::Relaxed);
        metrics::disk(free, self.reserve_bytes, low);
        if low && !was_low {
            tracing::warn!(
                node = self.node_id,
                dir = %self.dir.display(),
                free_bytes = free,
                reserve_bytes = self.reserve_bytes,
                "data disk below its reserve: refusing new workflows and handing leadership to a \
                 voter with room"
            );
        } else if was_low && !low {
            tracing::info!(
                node = self.node_id,
                dir = %self.dir.display(),
                free_bytes = free,
                reserve_bytes = self.reserve_bytes,
                "data disk back above its reserve: accepting new workflows"
            );
        }
    }

    /// Whether the data disk is below its reserve (with the hysteresis above).
    pub fn is_low(&self) -> bool {
        self.low.load(Ordering::Relaxed)
    }

    /// Free bytes at the last reading.
    pub fn free_bytes(&self) -> u64 {
        self.free_bytes.load(Ordering::Relaxed)
    }

    /// The refusal a leader whose disk is low gives a new workflow: the node, the disk, its free
    /// space and the reserve, and what ends it.
    pub fn refusal(&self) -> String {
        let free = self.free_bytes();
        let (free_mib, reserve_mib) = (free / MIB, self.reserve_bytes / MIB);
        let below = if free < self.reserve_bytes {
            format!("below the {reserve_mib} MiB reserve (--disk-reserve-mb)")
        } else {
            // Between the reserve and the margin above it: still low since it fell below.
            format!(
                "not yet {} MiB (the {reserve_mib} MiB reserve, --disk-reserve-mb, plus a margin) \
                 since it fell below the reserve",
                (self.reserve_bytes + clear_margin_bytes(self.reserve_bytes)) / MIB
            )
        };
        format!(
            "node {}: data disk {} has {free_mib} MiB free, {below}: not accepting new workflows \
             until space is freed",
            self.node_id,
            self.dir.display()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_below_the_reserve_and_clear_only_well_above_it() {
        let reserve = 256 * MIB;
        let clear = reserve + clear_margin_bytes(reserve);
        assert_eq!(clear_margin_bytes(reserve), reserve / 10);
        // Comfortably above: not low; just above the reserve: still not low.
        assert!(!next_low(false, 10 * 1024 * MIB, reserve));
        assert!(!next_low(false, reserve, reserve));
        // One byte under the reserve: low.
        assert!(next_low(false, reserve - 1, reserve));
        // Once low, climbing back over the reserve is not enough...
        assert!(next_low(true, reserve, reserve));
        assert!(next_low(true, clear - 1, reserve));
        // ...the margin above it is.
        assert!(!next_low(true, clear, reserve));
        // A disk hovering around the reserve stays in one state, not flipping each reading.
        let mut low = false;
        let mut changes = 0;
        for free in [
            reserve + MIB,
            reserve - MIB,
            reserve + MIB,
            reserve - MIB,
            reserve + MIB,
        ] {
            let next = next_low(low, free, reserve);
            changes += usize::from(next != low);
            low = next;
        }
        assert_eq!((low, changes), (true, 1));
    }

    #[test]
    fn a_small_reserve_gets_the_minimum_margin_and_zero_turns_the_check_off() {
        let reserve = 16 * MIB;
        assert_eq!(clear_margin_bytes(reserve), CLEAR_MARGIN_BYTES_MIN);
        assert!(next_low(true, 31 * MIB, reserve));
        assert!(!next_low(true, 32 * MIB, reserve));
        for was_low in [false, true] {
            assert!(!next_low(was_low, 0, 0));
        }
        // No overflow with an absurd reserve.
        assert!(next_low(true, u64::MAX - 1, u64::MAX));
    }

    #[test]
    fn the_filesystem_of_a_real_dir_reports_free_space() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        let err = free_bytes(&dir.path().join("missing")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn the_refusal_names_the_node_the_disk_the_free_space_and_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        // A reserve no disk can meet: low from the first reading.
        let (watcher, task) = DiskWatcher::start(2, dir.path(), u64::MAX / 2);
        task.abort();
        assert!(watcher.is_low());
        let refusal = watcher.refusal();
        let free_mib = watcher.free_bytes() / MIB;
        assert!(
            refusal.starts_with(&format!(
                "node 2: data disk {} has {free_mib} MiB free, below the {} MiB reserve \
                 (--disk-reserve-mb): not accepting new workflows",
                dir.path().display(),
                u64::MAX / 2 / MIB
            )),
            "{refusal}"
        );
        let (watcher, task) = DiskWatcher::start(2, dir.path(), 0);
        task.abort();
        assert!(!watcher.is_low());
    }
}
