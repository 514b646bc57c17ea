//! The SMTP protocol core: pure parsing, replies and the session state
//! machine. No tokio, no sockets.

pub mod command;
pub mod data;
pub mod hops;
pub mod intake;
pub mod line;
pub mod reply;
pub mod session;
