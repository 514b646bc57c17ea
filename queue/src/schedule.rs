//! The in-memory due-time index and delivery leases, rebuilt at open.
//!
//! `due` is an ordered set of (due time in milliseconds, packed queue ID)
//! holding exactly the messages that are neither held, finished nor
//! claimed, so the earliest due message is its first element and claiming
//! `n` due messages costs O(n log N). That set is the whole per-message
//! memory of the index: 24 bytes an element, nothing at all for a held
//! message. A message's current due time is not kept beside it: every
//! change reads the record first, and the record it read is the one the
//! index was last set from (all record writes and index updates happen
//! under one lock), so callers pass the old due time along with the new.
//! Leases (`claimed`, a few hundred entries at most) live only here, so a
//! restart voids them and work in flight at a crash is due again.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};

use crate::model::QueueId;

/// A queue ID packed into 16 bytes: the ID's bytes, zero-padded. IDs are
/// `[A-Za-z0-9]+`, so padding keeps their order and never collides. The
/// queue's own IDs are 12 characters; a longer one (never written by this
/// queue, but [`QueueId::parse`] accepts up to 64) gets a key starting with
/// a zero byte and a number, and its text is kept in [`Schedule::long`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Key([u8; KEY_LEN]);

const KEY_LEN: usize = 16;

/// The key of the long ID numbered `number`.
fn long_key(number: u64) -> Key {
    let mut key = [0u8; KEY_LEN];
    key[1..9].copy_from_slice(&number.to_be_bytes());
    Key(key)
}

/// Messages new to the index, gathered for [`Schedule::add_staged`].
#[derive(Debug, Default)]
pub(crate) struct Staged(Vec<(i64, Key)>);

/// Due times and leases of every queued message.
#[derive(Debug, Default)]
pub(crate) struct Schedule {
    /// Unleased messages that are due at some time.
    due: BTreeSet<(i64, Key)>,
    /// Leased messages, with the due time they get back when the lease ends
    /// without an outcome (`None`: none, e.g. held meanwhile).
    claimed: HashMap<Key, Option<i64>>,
    /// IDs longer than [`KEY_LEN`], by the number in their key.
    long: HashMap<u64, QueueId>,
    /// The numbers of those IDs.
    long_keys: HashMap<QueueId, u64>,
    /// The next number for a long ID.
    next_long: u64,
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
    /// The key of `id`; `None` for a long ID that has no number.
    fn key(&self, id: &QueueId) -> Option<Key> {
        let bytes = id.as_str().as_bytes();
        if bytes.len() <= KEY_LEN {
            let mut key = [0u8; KEY_LEN];
            key[..bytes.len()].copy_from_slice(bytes);
            return Some(Key(key));
        }
        self.long_keys.get(id).map(|&number| long_key(number))
    }

    /// The key of `id`, numbering a long ID if it has no number yet.
    fn key_or_new(&mut self, id: &QueueId) -> Key {
        if let Some(key) = self.key(id) {
            return key;
        }
        let number = self.next_long;
        self.next_long += 1;
        self.long_keys.insert(id.clone(), number);
        self.long.insert(number, id.clone());
        long_key(number)
    }

    /// The ID a key stands for.
    fn id(&self, key: &Key) -> Option<QueueId> {
        if key.0[0] != 0 {
            let len = key.0.iter().position(|&b| b == 0).unwrap_or(KEY_LEN);
            let text = std::str::from_utf8(&key.0[..len]).ok()?;
            return QueueId::parse(text);
        }
        let number = u64::from_be_bytes(key.0[1..9].try_into().ok()?);
        self.long.get(&number).cloned()
    }

    /// Stages a message new to the index, due at `due`, for
    /// [`Schedule::add_staged`].
    pub(crate) fn stage(&mut self, staged: &mut Staged, id: &QueueId, due: DateTime<Utc>) {
        let key = self.key_or_new(id);
        staged.0.push((millis(due), key));
    }

    /// Adds the staged messages at once (the rebuild at open): a set built
    /// from sorted elements has full nodes, where one built by inserting
    /// in no particular order (due times do not follow IDs) has nodes about
    /// half full: about 27 bytes a message instead of 49.
    pub(crate) fn add_staged(&mut self, staged: Staged) {
        let built: BTreeSet<(i64, Key)> = staged.0.into_iter().collect();
        if self.due.is_empty() {
            self.due = built;
        } else {
            self.due.extend(built);
        }
    }

    /// Records that the message's due time changed from `old` (what the
    /// index was last told, `None` for a message new to it) to `new`
    /// (`None`: not to be claimed), keeping its lease if it has one.
    pub(crate) fn set(
        &mut self,
        id: &QueueId,
        old: Option<DateTime<Utc>>,
        new: Option<DateTime<Utc>>,
    ) {
        let key = match new {
            Some(_) => self.key_or_new(id),
            None => match self.key(id) {
                Some(key) => key,
                // A long ID neither indexed nor to be: nothing to do.
                None => return,
            },
        };
        let new = new.map(millis);
        if let Some(lease) = self.claimed.get_mut(&key) {
            *lease = new;
            return;
        }
        if let Some(old) = old {
            self.due.remove(&(millis(old), key));
        }
        match new {
            Some(new) => {
                self.due.insert((new, key));
            }
            None => self.forget_long(id),
        }
    }

    /// Forgets the message whose due time the index was last told was
    /// `old` (it left the queue), lease included.
    pub(crate) fn remove(&mut self, id: &QueueId, old: Option<DateTime<Utc>>) {
        let Some(key) = self.key(id) else {
            return;
        };
        if self.claimed.remove(&key).is_none()
            && let Some(old) = old
        {
            self.due.remove(&(millis(old), key));
        }
        self.forget_long(id);
    }

    /// Drops the number of a long ID that is neither due nor leased.
    fn forget_long(&mut self, id: &QueueId) {
        if let Some(number) = self.long_keys.remove(id) {
            self.long.remove(&number);
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
            let (due, key) = self.due.pop_first().expect("checked non-empty above");
            self.claimed.insert(key, Some(due));
            match self.id(&key) {
                Some(id) => claimed.push(id),
                None => {
                    // Cannot happen: every key in `due` has its ID.
                    self.claimed.remove(&key);
                    tracing::error!("queue index: an entry without its ID, dropped");
                }
            }
        }
        claimed
    }

    /// Ends the lease on `id`; returns its due time if it is due again.
    pub(crate) fn unclaim(&mut self, id: &QueueId) -> Option<DateTime<Utc>> {
        let key = self.key(id)?;
        let due = self.claimed.remove(&key)?;
        match due {
            Some(due) => {
                self.due.insert((due, key));
                Some(from_millis(due))
            }
            None => {
                self.forget_long(id);
                None
            }
        }
    }

    /// The earliest due time of an unleased, unheld message.
    pub(crate) fn next_due(&self) -> Option<DateTime<Utc>> {
        self.due.first().map(|(due, _)| from_millis(*due))
    }

    /// Leases again in this (rebuilt) index every message leased in `old`,
    /// so that work in flight while the database was reopened is not
    /// handed out a second time.
    pub(crate) fn carry_claims(&mut self, old: &Schedule) {
        let keys: HashSet<Key> = old
            .claimed
            .keys()
            .filter_map(|key| old.id(key))
            .filter_map(|id| self.key(&id))
            .collect();
        let mut moved = Vec::new();
        self.due.retain(|(due, key)| {
            let leased = keys.contains(key);
            if leased {
                moved.push((*key, *due));
            }
            !leased
        });
        for (key, due) in moved {
            self.claimed.insert(key, Some(due));
        }
    }

    /// True when the message is leased.
    pub(crate) fn is_claimed(&self, id: &QueueId) -> bool {
        self.key(id)
            .is_some_and(|key| self.claimed.contains_key(&key))
    }

    /// Messages in the due set (unleased, not held, not finished).
    #[cfg(test)]
    fn due_count(&self) -> usize {
        self.due.len()
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
        schedule.set(&id("C"), None, Some(at(5)));
        schedule.set(&id("B"), None, Some(at(1)));
        schedule.set(&id("A"), None, Some(at(5)));
        schedule.set(&id("D"), None, Some(at(100)));
        assert_eq!(schedule.next_due(), Some(at(1)));
        assert_eq!(
            schedule.claim_due(at(10), 10),
            vec![id("B"), id("A"), id("C")]
        );
        assert_eq!(schedule.next_due(), Some(at(100)));
    }

    #[test]
    fn staged_messages_are_added_at_once_beside_those_already_indexed() {
        let long = "L".repeat(40);
        let mut schedule = Schedule::default();
        schedule.set(&id("E"), None, Some(at(3)));
        let mut staged = Staged::default();
        schedule.stage(&mut staged, &id("C"), at(5));
        schedule.stage(&mut staged, &id("B"), at(1));
        schedule.stage(&mut staged, &id(&long), at(2));
        schedule.stage(&mut staged, &id("A"), at(5));
        assert_eq!(schedule.due_count(), 1);
        schedule.add_staged(staged);
        assert_eq!(schedule.due_count(), 5);
        assert_eq!(
            schedule.claim_due(at(10), 10),
            vec![id("B"), id(&long), id("E"), id("A"), id("C")]
        );
        // A staged message is indexed like one set: its due time moves.
        let mut schedule = Schedule::default();
        let mut staged = Staged::default();
        schedule.stage(&mut staged, &id("A"), at(1));
        schedule.add_staged(staged);
        schedule.set(&id("A"), Some(at(1)), Some(at(50)));
        assert_eq!(schedule.next_due(), Some(at(50)));
    }

    #[test]
    fn a_claimed_message_is_not_claimed_again_until_unclaimed() {
        let mut schedule = Schedule::default();
        schedule.set(&id("A"), None, Some(at(0)));
        assert_eq!(schedule.claim_due(at(0), 1), vec![id("A")]);
        assert!(schedule.is_claimed(&id("A")));
        assert!(schedule.claim_due(at(0), 1).is_empty());
        assert_eq!(schedule.next_due(), None);
        // A new due time while claimed takes effect at unclaim.
        schedule.set(&id("A"), Some(at(0)), Some(at(7)));
        assert!(schedule.claim_due(at(10), 1).is_empty());
        assert_eq!(schedule.unclaim(&id("A")), Some(at(7)));
        assert!(!schedule.is_claimed(&id("A")));
        assert_eq!(schedule.claim_due(at(10), 1), vec![id("A")]);
    }

    #[test]
    fn messages_without_due_time_are_never_claimed() {
        let mut schedule = Schedule::default();
        schedule.set(&id("A"), None, Some(at(0)));
        schedule.set(&id("A"), Some(at(0)), None);
        assert!(schedule.claim_due(at(1000), 10).is_empty());
        assert_eq!(schedule.next_due(), None);
        schedule.set(&id("A"), None, Some(at(2)));
        schedule.remove(&id("A"), Some(at(2)));
        assert!(schedule.claim_due(at(1000), 10).is_empty());
        assert_eq!(schedule.due_count(), 0);
    }

    #[test]
    fn removing_a_claimed_message_ends_its_lease() {
        let mut schedule = Schedule::default();
        schedule.set(&id("A"), None, Some(at(0)));
        assert_eq!(schedule.claim_due(at(0), 1), vec![id("A")]);
        schedule.remove(&id("A"), Some(at(0)));
        assert!(!schedule.is_claimed(&id("A")));
        assert_eq!(schedule.unclaim(&id("A")), None);
        assert_eq!(schedule.due_count(), 0);
    }

    #[test]
    fn long_ids_are_indexed_too_and_forgotten_when_done() {
        let long = id(&"L".repeat(40));
        let other = id(&"M".repeat(64));
        let mut schedule = Schedule::default();
        schedule.set(&long, None, Some(at(3)));
        schedule.set(&other, None, Some(at(1)));
        schedule.set(&id("S"), None, Some(at(2)));
        assert_eq!(
            schedule.claim_due(at(10), 10),
            vec![other.clone(), id("S"), long.clone()]
        );
        assert_eq!(schedule.unclaim(&long), Some(at(3)));
        assert_eq!(schedule.claim_due(at(10), 10), vec![long.clone()]);
        schedule.remove(&long, Some(at(3)));
        schedule.remove(&other, Some(at(1)));
        assert!(schedule.long.is_empty() && schedule.long_keys.is_empty());
    }

    #[test]
    fn padded_keys_keep_id_order() {
        let mut schedule = Schedule::default();
        for text in ["B", "AB", "A", "Abc", "a", "0"] {
            schedule.set(&id(text), None, Some(at(0)));
        }
        let order: Vec<String> = schedule
            .claim_due(at(0), 10)
            .iter()
            .map(|id| id.to_string())
            .collect();
        assert_eq!(order, ["0", "A", "AB", "Abc", "B", "a"]);
    }
}
