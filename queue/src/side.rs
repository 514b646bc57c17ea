//! Small key-value trees beside the queue, in the same sled database, for
//! state the delivery side keeps across restarts (the MTA-STS policy cache).
//! The queue gives them out by name and never reads them.

use crate::QueueError;
use crate::store::StoreSlot;

/// One named tree of byte values under string keys. Cheap to clone. It
/// finds its tree in the database open at each call, so it holds no handle
/// on a database that [`crate::Queue::recover`] replaced.
#[derive(Clone)]
pub struct SideTree {
    name: String,
    slot: StoreSlot,
}

impl SideTree {
    pub(crate) fn new(name: &str, slot: StoreSlot) -> Result<SideTree, QueueError> {
        let side = SideTree {
            name: name.to_string(),
            slot,
        };
        side.tree()?;
        Ok(side)
    }

    fn tree(&self) -> Result<sled::Tree, QueueError> {
        self.slot.get()?.side_tree(&self.name)
    }

    /// The value under `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, QueueError> {
        self.tree()?
            .get(key.as_bytes())
            .map(|value| value.map(|value| value.to_vec()))
            .map_err(|error| QueueError::Storage(format!("tree {}: {error}", self.name)))
    }

    /// Stores `value` under `key`; returns once it is on disk.
    pub async fn insert(&self, key: &str, value: &[u8]) -> Result<(), QueueError> {
        let error =
            |error: sled::Error| QueueError::Storage(format!("tree {}: {error}", self.name));
        let tree = self.tree()?;
        tree.insert(key.as_bytes(), value).map_err(error)?;
        tree.flush_async().await.map_err(error)?;
        Ok(())
    }

    /// Removes `key`.
    pub fn remove(&self, key: &str) -> Result<(), QueueError> {
        self.tree()?
            .remove(key.as_bytes())
            .map(|_| ())
            .map_err(|error| QueueError::Storage(format!("tree {}: {error}", self.name)))
    }
}
