//! The in-memory due-time index and delivery leases, rebuilt at open.
//!
//! `due` is an ordered set of (due time in milliseconds, queue ID) holding
//! exactly the messages that are neither held, finished nor claimed, so the
//! earliest due message is its first element and claiming `n` due messages
//! costs O(n log N). `entries` knows every queued message, its due time and
//! whether it is leased. Leases live only here, so a restart voids them and
//! work in flight at a crash is due again.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};

use crate::model::QueueId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    /// When the message is due; `None` when held or finished.
    due: Option<i64>,
    /// Leased to a delivery worker until complete or unclaim.
    claimed: bool,
}

/// Due times and leases of every queued message.
#[derive(Debug, Default)]
pub(crate) struct Schedule {
    due: BTreeSet<(i64, QueueId)>,
    entries: HashMap<QueueId, Entry>,
}

/// Milliseconds since 1970, the index's time unit.
pub(crate) fn millis(time: DateTime<Utc>) -> i64 {
    time.timestamp_millis()
}

/// The inverse of [`millis`].
pub(crate) fn from_millis(millis: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(millis).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl Schedule {
    /// Records the message's due time (`None`: not to be claimed), keeping its
    /// lease if it has one.
    pub(crate) fn set(&mut self, id: &QueueId, due: Option<DateTime<Utc>>) {
        let due = due.map(millis);
        let entry = self.entries.entry(id.clone()).or_insert(Entry {
            due: None,
            claimed: false,
        });
        if !entry.claimed {
            if let Some(old) = entry.due {
                self.due.remove(&(old, id.clone()));
            }
            if let Some(new) = due {
                self.due.insert((new, id.clone()));
            }
        }
        entry.due = due;
    }

    /// Forgets the message (it left the queue), lease included.
    pub(crate) fn remove(&mut self, id: &QueueId) {
        if let Some(Entry {
            due: Some(due),
            claimed: false,
        }) = self.entries.remove(id)
        {
            self.due.remove(&(due, id.clone()));
        }
    }

    /// Leases up to `max` unleased messages due at or before `now`, earliest
    /// first (ties in ID, that is arrival, order).
    pub(crate) fn claim_due(&mut self, now: DateTime<Utc>, max: usize) -> Vec<QueueId> {
        let now = millis(now);
        let mut claimed = Vec::new();
        while claimed.len() < max {
            match self.due.first() {
                Some((due, _)) if *due <= now => {}
                _ => break,
            }
            let (_, id) = self.due.pop_first().expect("checked non-empty above");
            if let Some(entry) = self.entries.get_mut(&id) {
                entry.claimed = true;
            }
            claimed.push(id);
        }
        claimed
    }

    /// Ends the lease on `id`; returns its due time if it is due again.
    pub(crate) fn unclaim(&mut self, id: &QueueId) -> Option<DateTime<Utc>> {
        let entry = self.entries.get_mut(id)?;
        if !entry.claimed {
            return None;
        }
        entry.claimed = false;
        let due = entry.due?;
        self.due.insert((due, id.clone()));
        Some(from_millis(due))
    }

    /// The earliest due time of an unleased, unheld message.
    pub(crate) fn next_due(&self) -> Option<DateTime<Utc>> {
        self.due.first().map(|(due, _)| from_millis(*due))
    }

    /// True when the message is leased.
    pub(crate) fn is_claimed(&self, id: &QueueId) -> bool {
        self.entries.get(id).is_some_and(|entry| entry.claimed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> QueueId {
        QueueId::parse(text).expect("valid test ID")
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).expect("valid time")
    }

    #[test]
    fn claims_earliest_due_first_and_ties_in_id_order() {
        let mut schedule = Schedule::default();
        schedule.set(&id("C"), Some(at(5)));
        schedule.set(&id("B"), Some(at(1)));
        schedule.set(&id("A"), Some(at(5)));
        schedule.set(&id("D"), Some(at(100)));
        assert_eq!(schedule.next_due(), Some(at(1)));
        assert_eq!(
            schedule.claim_due(at(10), 10),
            vec![id("B"), id("A"), id("C")]
        );
        assert_eq!(schedule.next_due(), Some(at(100)));
    }

    #[test]
    fn a_claimed_message_is_not_claimed_again_until_unclaimed() {
        let mut schedule = Schedule::default();
        schedule.set(&id("A"), Some(at(0)));
        assert_eq!(schedule.claim_due(at(0), 1), vec![id("A")]);
        assert!(schedule.claim_due(at(0), 1).is_empty());
        assert_eq!(schedule.next_due(), None);
        // A new due time while claimed takes effect at unclaim.
        schedule.set(&id("A"), Some(at(7)));
        assert!(schedule.claim_due(at(10), 1).is_empty());
        assert_eq!(schedule.unclaim(&id("A")), Some(at(7)));
        assert_eq!(schedule.claim_due(at(10), 1), vec![id("A")]);
    }

    #[test]
    fn messages_without_due_time_are_never_claimed() {
        let mut schedule = Schedule::default();
        schedule.set(&id("A"), Some(at(0)));
        schedule.set(&id("A"), None);
        assert!(schedule.claim_due(at(1000), 10).is_empty());
        assert_eq!(schedule.next_due(), None);
        schedule.set(&id("A"), Some(at(2)));
        schedule.remove(&id("A"));
        assert!(schedule.claim_due(at(1000), 10).is_empty());
    }
}
