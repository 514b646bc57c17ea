//! Helpers shared by the SMTP server tests (`tests/smtp_*.rs`): configs that
//! keep delivery on loopback, and reading the spool after the server stopped.
#![allow(dead_code)]

use std::io::Read as _;
use std::path::Path;

use sluice_queue::{Message, Queue, QueueOptions};

use crate::common::Sluice;

/// Delivery goes to 127.0.0.1:9 (connection refused: deferred), so nothing
/// these tests queue ever leaves loopback.
pub const LOOPBACK_DELIVERY: &str = "[delivery]\nport = 9\n\n[routes]\n\"*\" = \"127.0.0.1:9\"\n";

/// Starts sluice with `extra` tables plus [`LOOPBACK_DELIVERY`].
pub fn start(extra: &str) -> Sluice {
    Sluice::start(&format!("{extra}\n{LOOPBACK_DELIVERY}"))
}

/// A queued message and its body.
pub struct Queued {
    pub message: Message,
    pub body: String,
}

/// Every message in the spool at `spool`, in arrival order (the server must
/// not be running).
pub fn read_spool(spool: &Path) -> Vec<Queued> {
    let queue = Queue::open(spool, QueueOptions::default()).expect("open the spool");
    let messages: Vec<Message> = queue
        .iter(None)
        .map(|message| message.expect("read a queued message"))
        .collect();
    messages
        .into_iter()
        .map(|message| {
            let mut body = Vec::new();
            queue
                .open_body(&message.id)
                .expect("open a body")
                .read_to_end(&mut body)
                .expect("read a body");
            Queued {
                message,
                body: String::from_utf8_lossy(&body).into_owned(),
            }
        })
        .collect()
}

/// Stops the server with SIGTERM (asserting exit 0) and returns the queue.
pub fn stop_and_read_queue(server: &mut Sluice) -> Vec<Queued> {
    let status = server.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}\n{}",
        server.log_text()
    );
    read_spool(&server.dir.path().join("spool"))
}

/// The enhanced status code of a reply line ("250 2.1.0 Ok" → "2.1.0").
pub fn enhanced_code(reply: &str) -> Option<&str> {
    let code = reply.get(4..)?.split(' ').next()?;
    let parts: Vec<&str> = code.split('.').collect();
    (parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
    .then_some(code)
}
