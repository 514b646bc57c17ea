//! The free-space reserve on the spool's filesystem (`spool.min_free`,
//! DESIGN.md "Disk space"), as Postfix's `queue_minfree`: below it, new mail
//! is refused with `452 4.3.1 Insufficient system storage` while delivery,
//! which is what frees the space, goes on. Accepting resumes by itself once
//! the free space is back above the reserve.
//!
//! The check is one `statvfs(2)` of the spool directory, made at most once
//! per [`CHECK_INTERVAL`] whatever the number of sessions asking: callers
//! between two checks get the cached answer, so a burst of MAIL commands
//! costs no syscall storm. Entering and leaving the low state are logged
//! once each, and exported as the gauges `sluice_spool_free_bytes` and
//! `sluice_spool_space_low`.
//!
//! The reserve is a soft limit for new mail only. A write that fails anyway
//! (the disk filled faster than the checks, or an I/O error) still takes the
//! storage-failure path: `451 4.3.0`, and a stop when the queue database
//! cannot be written.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;

use crate::config::MinFree;

/// How long one `statvfs` answer is used for.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Free space on a filesystem, from one `statvfs(2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes available to an unprivileged writer (`f_bavail`).
    pub free: u64,
    /// The filesystem's size (`f_blocks`).
    pub size: u64,
}

impl Space {
    /// The space of the filesystem holding `path`.
    pub fn of(path: &Path) -> std::io::Result<Space> {
        let stat = rustix::fs::statvfs(path)?;
        Ok(Space {
            free: stat.f_bavail.saturating_mul(stat.f_frsize),
            size: stat.f_blocks.saturating_mul(stat.f_frsize),
        })
    }
}

/// The gauges the reserve keeps up to date.
#[derive(Clone, Default)]
pub struct SpaceGauges {
    /// `sluice_spool_free_bytes`: free bytes at the last check.
    pub free_bytes: Gauge,
    /// `sluice_spool_space_low`: 1 while new mail is refused for want of space.
    pub low: Gauge,
}

/// The cached state of the spool's free space; one per process.
pub struct DiskReserve {
    spool: PathBuf,
    gauges: SpaceGauges,
    /// The answer given between checks.
    low: AtomicBool,
    /// When the last check ran; held only during a check, which is why a
    /// session finding it taken uses [`DiskReserve::low`] as it is.
    checked: Mutex<Option<Instant>>,
}

impl DiskReserve {
    /// The reserve of the filesystem holding `spool`; nothing is checked yet.
    pub fn new(spool: &Path, gauges: SpaceGauges) -> DiskReserve {
        DiskReserve {
            spool: spool.to_path_buf(),
            gauges,
            low: AtomicBool::new(false),
            checked: Mutex::new(None),
        }
    }

    /// True while the free space is below `min_free`: new mail must be
    /// refused. Checks the filesystem when the last check is older than
    /// [`CHECK_INTERVAL`], else answers from the cache. A filesystem that
    /// cannot be checked counts as having space (the write itself will say).
    pub fn is_low(&self, min_free: MinFree) -> bool {
        if min_free == MinFree::Bytes(0) {
            self.set_low(false, None, 0);
            return false;
        }
        if let Ok(mut checked) = self.checked.try_lock()
            && checked.is_none_or(|at| at.elapsed() >= CHECK_INTERVAL)
        {
            *checked = Some(Instant::now());
            match Space::of(&self.spool) {
                Ok(space) => {
                    let reserve = min_free.bytes(space.size);
                    self.gauges
                        .free_bytes
                        .set(i64::try_from(space.free).unwrap_or(i64::MAX));
                    self.set_low(space.free < reserve, Some(space), reserve);
                }
                Err(error) => {
                    tracing::debug!(spool = %self.spool.display(), %error, "statvfs of the spool failed");
                    self.set_low(false, None, 0);
                }
            }
        }
        self.low.load(Ordering::Relaxed)
    }

    /// Records the state, logging a change (once per change, never per
    /// message).
    fn set_low(&self, low: bool, space: Option<Space>, reserve: u64) {
        if self.low.swap(low, Ordering::Relaxed) == low {
            return;
        }
        self.gauges.low.set(i64::from(low));
        let free = space.map_or(0, |space| space.free);
        if low {
            tracing::warn!(
                spool = %self.spool.display(),
                free,
                min_free = reserve,
                "spool free space below spool.min_free: new mail gets 452 4.3.1 until space is back; delivery goes on"
            );
        } else {
            tracing::info!(
                spool = %self.spool.display(),
                free,
                min_free = reserve,
                "spool free space back above spool.min_free: accepting mail again"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reserve_above_the_free_space_is_low_and_zero_is_off() {
        let dir = tempfile::tempdir().expect("temp dir");
        let space = Space::of(dir.path()).expect("statvfs");
        assert!(space.size >= space.free && space.size > 0, "{space:?}");
        let gauges = SpaceGauges::default();
        let reserve = DiskReserve::new(dir.path(), gauges.clone());
        assert!(reserve.is_low(MinFree::Bytes(u64::MAX)));
        assert_eq!(gauges.low.get(), 1);
        // 0 switches the reserve off at once, without waiting for a check.
        assert!(!reserve.is_low(MinFree::Bytes(0)));
        assert_eq!(gauges.low.get(), 0);
        *reserve.checked.lock().unwrap() = None;
        assert!(!reserve.is_low(MinFree::Bytes(1)));
        assert!(gauges.free_bytes.get() > 0);
    }
}
