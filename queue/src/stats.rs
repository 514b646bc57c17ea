//! Queue counters kept up to date on every change, so that a metrics scrape
//! costs a lock and a copy, not a scan.

use crate::QueueStats;
use crate::model::{Message, RecipientStatus, Sketch};

impl QueueStats {
    /// Counts a message that entered the queue (or its new state).
    pub(crate) fn add(&mut self, message: &Message) {
        self.apply(message, |count, n| *count += n);
    }

    /// Uncounts a message that left the queue (or its old state).
    pub(crate) fn remove(&mut self, message: &Message) {
        self.apply(message, |count, n| *count = count.saturating_sub(n));
    }

    /// [`QueueStats::add`] for a message read as a [`Sketch`].
    pub(crate) fn add_sketch(&mut self, message: &Sketch<'_>) {
        let statuses = message.recipients.iter().map(|r| r.status);
        self.count(message.held, statuses, |count, n| *count += n);
    }

    fn apply(&mut self, message: &Message, change: impl Fn(&mut u64, u64)) {
        let statuses = message.recipients.iter().map(|r| r.status);
        self.count(message.held, statuses, change);
    }

    fn count(
        &mut self,
        held: bool,
        statuses: impl Iterator<Item = RecipientStatus>,
        change: impl Fn(&mut u64, u64),
    ) {
        change(&mut self.messages, 1);
        change(&mut self.held, u64::from(held));
        for status in statuses {
            let count = match status {
                RecipientStatus::Pending => &mut self.pending,
                RecipientStatus::Deferred => &mut self.deferred,
                RecipientStatus::Delivered => &mut self.delivered,
                RecipientStatus::Failed => &mut self.failed,
            };
            change(count, 1);
        }
    }
}
