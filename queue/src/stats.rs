//! Queue counters kept up to date on every change, so that a metrics scrape
//! costs a lock and a copy, not a scan.

use crate::QueueStats;
use crate::model::{Message, RecipientStatus};

impl QueueStats {
    /// Counts a message that entered the queue (or its new state).
    pub(crate) fn add(&mut self, message: &Message) {
        self.apply(message, |count, n| *count += n);
    }

    /// Uncounts a message that left the queue (or its old state).
    pub(crate) fn remove(&mut self, message: &Message) {
        self.apply(message, |count, n| *count = count.saturating_sub(n));
    }

    fn apply(&mut self, message: &Message, change: impl Fn(&mut u64, u64)) {
        change(&mut self.messages, 1);
        change(&mut self.held, u64::from(message.held));
        for recipient in &message.recipients {
            let count = match recipient.status {
                RecipientStatus::Pending => &mut self.pending,
                RecipientStatus::Deferred => &mut self.deferred,
                RecipientStatus::Delivered => &mut self.delivered,
                RecipientStatus::Failed => &mut self.failed,
            };
            change(count, 1);
        }
    }
}
