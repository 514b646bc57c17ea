//! What the queue writes to the spool's filesystem, counted as it happens,
//! for the free-space reserve of the binary (DESIGN.md "Faults"): a
//! `statvfs` sample is up to a second old, and a second of intake can be
//! more than the reserve, so the reserve corrects the sample by what was
//! written since and by what is being received.
//!
//! The counts are estimates that err on the side of more: every sled write
//! counts its key and value plus a little for sled's own framing; bytes
//! being received count as in flight from their arrival while they are
//! held in memory, and as written once spilled to `tmp/`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What sled adds to each write in its log (headers, page fragments), as a
/// round figure.
pub(crate) const WRITE_OVERHEAD: u64 = 64;

/// The counters of one open queue; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SpoolUsage {
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    /// Bytes of message bodies being received and held in memory, not yet
    /// committed or dropped.
    in_flight: AtomicU64,
    /// Bytes written to the database since the queue was opened (monotonic).
    written: AtomicU64,
    /// Bytes of the database's live data (records and inline chunks of the
    /// queued messages), as an estimate; 0 once the queue is empty.
    live: AtomicU64,
}

impl SpoolUsage {
    /// Bytes of bodies being received right now.
    pub fn in_flight(&self) -> u64 {
        self.counters.in_flight.load(Ordering::Relaxed)
    }

    /// Bytes written to the database since open; the difference of two
    /// readings is what was written between them.
    pub fn written(&self) -> u64 {
        self.counters.written.load(Ordering::Relaxed)
    }

    /// Estimated bytes of live data in the database: the rest of its file
    /// is space sled reuses for new writes.
    pub fn live(&self) -> u64 {
        self.counters.live.load(Ordering::Relaxed)
    }

    pub(crate) fn receiving(&self, bytes: u64) {
        self.counters.in_flight.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn received(&self, bytes: u64) {
        let _ = self
            .counters
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(bytes))
            });
    }

    pub(crate) fn wrote(&self, bytes: u64) {
        self.counters
            .written
            .fetch_add(bytes + WRITE_OVERHEAD, Ordering::Relaxed);
    }

    pub(crate) fn stored(&self, bytes: u64) {
        self.counters.live.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn released(&self, bytes: u64) {
        let _ = self
            .counters
            .live
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(bytes))
            });
    }

    /// Sets the live estimate (at open, and to 0 when the queue empties).
    pub(crate) fn set_live(&self, bytes: u64) {
        self.counters.live.store(bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_saturate_and_writes_carry_overhead() {
        let usage = SpoolUsage::default();
        usage.receiving(100);
        usage.received(150);
        assert_eq!(usage.in_flight(), 0);
        usage.wrote(10);
        assert_eq!(usage.written(), 10 + WRITE_OVERHEAD);
        usage.stored(5);
        usage.released(9);
        assert_eq!(usage.live(), 0);
    }
}
