//! The free-space reserve on the spool's filesystem (`spool.min_free`,
//! DESIGN.md "Disk space" and "Faults"), as Postfix's `queue_minfree`:
//! below it, new mail is refused with `452 4.3.1 Insufficient system
//! storage` while delivery, which is what frees the space, goes on.
//! Accepting resumes by itself once the free space is back above the
//! reserve.
//!
//! The figure compared with the reserve is one `statvfs(2)` of the spool
//! directory, made at most once per [`CHECK_INTERVAL`] whatever the number
//! of sessions asking, corrected between two samples so that a burst cannot
//! run through the reserve:
//!
//! - minus what the queue wrote since the sample and the bytes of the
//!   transactions being received (counted as they arrive), from
//!   [`sluice_queue::SpoolUsage`];
//! - plus the space sled reuses inside its own file: sled never gives its
//!   file back, so after the queue drained the file still takes what the
//!   queue once held, and without this a drained queue would never accept
//!   again. Only what is above the live data (estimated twice over, plus
//!   [`SLED_MARGIN`]) counts.
//!
//! MAIL is refused when nothing is left above the reserve, or when its
//! `SIZE=` declaration is more than what is left; the end of DATA is
//! refused (`452 4.3.1`, nothing queued) when the message itself took the
//! figure below the reserve. Notices that sluice writes itself (bounces,
//! delay and success notices) may use the lower [`NOTICE_SHARE`] of the
//! reserve; below that hard floor they are postponed and the message they
//! report on stays queued, so that the last of the reserve is left for
//! delivery results and removals, the writes that free the space.
//!
//! Entering and leaving the low state are logged once each, and exported
//! as the gauges `sluice_spool_free_bytes` and `sluice_spool_space_low`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;

use sluice_queue::Queue;

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

/// What sled keeps in its file beyond the live data (open segments, data
/// not yet cleaned), never counted as reusable.
pub const SLED_MARGIN: u64 = 2 << 20;

/// The hard floor under which notices are postponed, as a share of the
/// reserve: notices may use the upper half of the reserve, not the lower.
pub fn notice_floor(reserve: u64) -> u64 {
    reserve / 2
}

/// One `statvfs` sample and the write counter at that moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    /// Free bytes for new mail at `at`: the filesystem's, plus what sled
    /// reuses inside its file.
    free: u64,
    /// The filesystem's free bytes alone.
    filesystem_free: u64,
    /// The filesystem's size, which `min_free = "auto"` is a share of.
    size: u64,
    /// [`sluice_queue::SpoolUsage::written`] at `at`.
    written: u64,
}

/// The cached state of the spool's free space; one per process.
pub struct DiskReserve {
    spool: PathBuf,
    gauges: SpaceGauges,
    /// The queue whose writes correct the sample; none in unit tests.
    queue: OnceLock<Queue>,
    /// True while new mail is refused (for logging changes once).
    low: AtomicBool,
    /// The latest sample; `None` before the first, or when the spool
    /// cannot be checked.
    sample: Mutex<Option<Sample>>,
}

impl DiskReserve {
    /// The reserve of the filesystem holding `spool`; nothing is checked yet.
    pub fn new(spool: &Path, gauges: SpaceGauges) -> DiskReserve {
        DiskReserve {
            spool: spool.to_path_buf(),
            gauges,
            queue: OnceLock::new(),
            low: AtomicBool::new(false),
            sample: Mutex::new(None),
        }
    }

    /// Corrects every sample by what `queue` writes, and counts the space
    /// sled reuses inside its file.
    pub fn watch(self, queue: Queue) -> DiskReserve {
        let _ = self.queue.set(queue);
        self
    }

    /// Free bytes for new mail now and the reserve `min_free` means here;
    /// `None` when the reserve is off or the filesystem cannot be checked
    /// (the write itself will say).
    fn free_and_reserve(&self, min_free: MinFree) -> Option<(u64, u64)> {
        if min_free == MinFree::Bytes(0) {
            self.set_low(false, 0, 0);
            return None;
        }
        let sample = self.sample()?;
        let reserve = min_free.bytes(sample.size);
        let free = match self.queue.get() {
            Some(queue) => {
                let usage = queue.usage();
                sample
                    .free
                    .saturating_sub(usage.written().saturating_sub(sample.written))
                    .saturating_sub(usage.in_flight())
            }
            None => sample.free,
        };
        Some((free, reserve))
    }

    /// The latest sample, taken anew when older than [`CHECK_INTERVAL`].
    fn sample(&self) -> Option<Sample> {
        let mut sample = self.sample.lock().unwrap_or_else(|p| p.into_inner());
        if sample.is_some_and(|sample| sample.at.elapsed() < CHECK_INTERVAL) {
            return *sample;
        }
        // The counter is read before statvfs: a write in between counts in
        // both, never in neither.
        let written = self.queue.get().map_or(0, |queue| queue.usage().written());
        *sample = match Space::of(&self.spool) {
            Ok(space) => {
                self.gauges
                    .free_bytes
                    .set(i64::try_from(space.free).unwrap_or(i64::MAX));
                Some(Sample {
                    at: Instant::now(),
                    free: space.free.saturating_add(self.reusable()),
                    filesystem_free: space.free,
                    size: space.size,
                    written,
                })
            }
            Err(error) => {
                tracing::debug!(spool = %self.spool.display(), %error, "statvfs of the spool failed");
                None
            }
        };
        *sample
    }

    /// The part of sled's file that new writes reuse: all of it above the
    /// live data counted twice over and [`SLED_MARGIN`]; none while the
    /// live data is unknown (an administrative handle).
    fn reusable(&self) -> u64 {
        let Some(queue) = self.queue.get() else {
            return 0;
        };
        let live = match queue.queued_messages() {
            Some(0) => 0,
            Some(_) => queue.usage().live().saturating_mul(2),
            None => return 0,
        };
        queue
            .database_bytes()
            .saturating_sub(live.saturating_add(SLED_MARGIN))
    }

    /// How many bytes new mail may take before the free space reaches
    /// `min_free` (`Some(0)`: none; new mail must be refused); `None` when
    /// there is no limit. Samples the filesystem when the last sample is
    /// older than [`CHECK_INTERVAL`], else corrects the cached one.
    pub fn headroom(&self, min_free: MinFree) -> Option<u64> {
        let (free, reserve) = self.free_and_reserve(min_free)?;
        self.set_low(free < reserve, free, reserve);
        Some(free.saturating_sub(reserve))
    }

    /// True while the free space is below `min_free`: new mail must be
    /// refused (see [`DiskReserve::headroom`]).
    pub fn is_low(&self, min_free: MinFree) -> bool {
        self.headroom(min_free) == Some(0)
    }

    /// True when a notice (bounce, delay or success notice) of `size`
    /// bytes may be written now: it leaves at least the hard floor
    /// ([`notice_floor`] of the reserve) free. Otherwise it is postponed.
    pub fn notice_allowed(&self, min_free: MinFree, size: u64) -> bool {
        match self.free_and_reserve(min_free) {
            Some((free, reserve)) => free >= notice_floor(reserve).saturating_add(size),
            None => true,
        }
    }

    /// Records the state, logging a change (once per change, never per
    /// message).
    fn set_low(&self, low: bool, free: u64, reserve: u64) {
        if self.low.swap(low, Ordering::Relaxed) == low {
            return;
        }
        self.gauges.low.set(i64::from(low));
        let filesystem_free = self
            .sample
            .lock()
            .ok()
            .and_then(|sample| sample.map(|sample| sample.filesystem_free))
            .unwrap_or(0);
        if low {
            tracing::warn!(
                spool = %self.spool.display(),
                free,
                filesystem_free,
                min_free = reserve,
                "spool free space below spool.min_free: new mail gets 452 4.3.1 until space is back; delivery goes on"
            );
        } else {
            tracing::info!(
                spool = %self.spool.display(),
                free,
                filesystem_free,
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
        *reserve.sample.lock().unwrap() = None;
        assert!(!reserve.is_low(MinFree::Bytes(1)));
        assert!(gauges.free_bytes.get() > 0);
    }
}
