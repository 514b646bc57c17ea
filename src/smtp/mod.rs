//! The SMTP protocol core, both directions: pure parsing, replies, the
//! inbound session and the outbound client state machines. No tokio, no
//! sockets.

pub mod client;
pub mod command;
pub mod counts;
pub mod data;
pub mod dot;
pub mod dsn_params;
pub mod ehlo;
pub mod header_field;
pub mod hops;
pub mod intake;
pub mod line;
pub mod lines;
pub mod message_id;
pub mod reply;
pub mod session;
