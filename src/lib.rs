//! sluice: a store-and-forward SMTP mail transfer agent.
//!
//! Layout: `smtp` is the pure protocol core (no I/O); `policy` is the pure
//! relay decision it consults; `server` accepts mail into the queue; `auth`
//! signs it (DKIM) and checks it (SPF, DKIM, DMARC); `delivery` forwards it; `admin` serves the HTTP API and
//! metrics; `cli` holds the operator commands; `serve` wires them together
//! and `reload` swaps the configuration on SIGHUP.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod context;
pub mod delivery;
pub mod disk;
pub mod events;
pub mod frontdoor;
pub mod keyfile;
pub mod local;
pub mod logging;
pub mod metrics;
pub mod milter;
pub mod policy;
pub mod recovery;
pub mod reload;
pub mod runfile;
pub mod serve;
pub mod server;
pub mod smtp;
