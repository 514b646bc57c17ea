//! The SMTP protocol core: pure parsing, replies and the session state
//! machine. No tokio, no sockets.
