//! Destination suspensions, kept in their own sled tree ("suspensions") so
//! that a restart keeps them: key = the destination's name, value = a JSON
//! [`Suspension`]. The queue does not know what a destination is; the
//! binary decides (a recipient domain or an MX host-name suffix).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The name of the sled tree holding suspensions.
pub(crate) const TREE: &str = "suspensions";

/// A destination that gets no delivery attempts until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    /// The destination: a recipient domain or an MX suffix (".google.com").
    pub destination: String,
    /// When the suspension ends.
    pub until: DateTime<Utc>,
    /// Why: the reply that triggered it, or "suspended by the operator".
    pub reason: String,
}
