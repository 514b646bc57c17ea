//! The SMTP protocol core, both directions: pure parsing, replies, the
//! inbound session and the outbound client state machines. No tokio, no
//! sockets.

pub mod client;
pub mod command;
pub mod data;
pub mod dot;
pub mod ehlo;
pub mod hops;
pub mod reply;
pub mod session;
