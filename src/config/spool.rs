//! `[spool]`: where the queue lives.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::units::byte_size;

/// `[spool]`, as written and as used.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    /// The queue's directory.
    pub path: PathBuf,
    /// sled's page cache.
    #[serde(with = "byte_size")]
    pub cache_capacity: u64,
}
