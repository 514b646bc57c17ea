//! Small key-value trees beside the queue, in the same sled database, for
//! state the delivery side keeps across restarts (the MTA-STS policy cache).
//! The queue gives them out by name and never reads them. Their writes are
//! made durable by the queue's group commit, like every other write, so a
//! failing flush is reported (`Queue::failure`) like any other.

use crate::{Queue, QueueError};

/// One named tree of byte values under string keys. Cheap to clone.
#[derive(Clone)]
pub struct SideTree {
    name: String,
    tree: sled::Tree,
    /// The queue whose group commit makes the writes durable.
    queue: Queue,
}

impl SideTree {
    pub(crate) fn new(name: &str, tree: sled::Tree, queue: Queue) -> SideTree {
        SideTree {
            name: name.to_string(),
            tree,
            queue,
        }
    }

    /// The value under `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, QueueError> {
        self.tree
            .get(key.as_bytes())
            .map(|value| value.map(|value| value.to_vec()))
            .map_err(|error| QueueError::Storage(format!("tree {}: {error}", self.name)))
    }

    /// Stores `value` under `key`; returns once it is on disk.
    pub async fn insert(&self, key: &str, value: &[u8]) -> Result<(), QueueError> {
        let error =
            |error: sled::Error| QueueError::Storage(format!("tree {}: {error}", self.name));
        self.tree.insert(key.as_bytes(), value).map_err(error)?;
        self.queue.durable().await
    }

    /// Removes `key`.
    pub fn remove(&self, key: &str) -> Result<(), QueueError> {
        self.tree
            .remove(key.as_bytes())
            .map(|_| ())
            .map_err(|error| QueueError::Storage(format!("tree {}: {error}", self.name)))
    }
}
