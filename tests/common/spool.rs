//! The spool seen from the test process, while no server holds it: putting
//! messages in before a server starts, as the SMTP server would have queued
//! them, and reading what a stopped server left.

use std::io::Read as _;
use std::path::Path;

use sluice_queue::{Envelope, Message, Queue, QueueId, QueueOptions};

use super::server::{DEADLINE, Sluice, wait_for};

/// Opens the spool in this test process. Retries while it reports `Locked`:
/// the lock is an flock, and a process that another test thread is forking
/// at that moment holds a copy of the previous holder's lock until it execs.
pub fn open_spool(spool: &Path) -> Queue {
    wait_for("the spool lock", DEADLINE, || {
        match Queue::open(spool, QueueOptions::default()) {
            Ok(queue) => Some(queue),
            Err(sluice_queue::QueueError::Locked { .. }) => None,
            Err(error) => panic!("open the test spool: {error}"),
        }
    })
}

/// Opens the spool (no server may be running), runs `f`, closes it.
pub fn with_queue<T>(spool: &Path, f: impl FnOnce(&Queue, &tokio::runtime::Runtime) -> T) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let queue = open_spool(spool);
    let result = f(&queue, &runtime);
    runtime.block_on(queue.close()).expect("close the spool");
    result
}

/// Puts a message into the spool at `spool` while no server runs (the queue
/// is locked while one does), as the SMTP server would have; returns its ID.
pub fn enqueue_offline(spool: &Path, sender: &str, recipients: &[&str], body: &[u8]) -> String {
    with_queue(spool, |queue, runtime| {
        let envelope = Envelope {
            sender: sender.to_string(),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            smtputf8: !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii()),
            body_8bit: !body.is_ascii(),
            requiretls: false,
            dsn: None,
        };
        runtime
            .block_on(queue.enqueue(envelope, body))
            .expect("enqueue")
            .to_string()
    })
}

/// One message to put in the spool before the test.
pub struct Seed<'a> {
    pub sender: &'a str,
    pub recipients: &'a [&'a str],
    pub held: bool,
}

/// Writes `seeds` into the spool at `spool` with the queue crate and closes it;
/// returns their queue IDs in order.
pub fn fill(spool: &Path, seeds: &[Seed]) -> Vec<String> {
    with_queue(spool, |queue, runtime| {
        runtime.block_on(async {
            let mut ids = Vec::new();
            for seed in seeds {
                let envelope = Envelope {
                    sender: seed.sender.to_string(),
                    recipients: seed.recipients.iter().map(|r| r.to_string()).collect(),
                    smtputf8: false,
                    body_8bit: false,
                    requiretls: false,
                    dsn: None,
                };
                let body = format!(
                    "From: <{}>\r\nTo: <{}>\r\nSubject: queue test\r\nMessage-ID: <{}@client.test>\r\n\r\nHello.\r\n",
                    seed.sender,
                    seed.recipients.join(">, <"),
                    ids.len()
                );
                let id = queue
                    .enqueue(envelope, body.as_bytes())
                    .await
                    .expect("enqueue a test message");
                if seed.held {
                    queue.hold(&id).await.expect("hold a test message");
                }
                ids.push(id.to_string());
            }
            ids
        })
    })
}

/// Writes `count` held messages concurrently (they share fsyncs); returns
/// their IDs sorted (= arrival order, as listed).
pub fn fill_many_held(spool: &Path, count: usize) -> Vec<String> {
    with_queue(spool, |queue, runtime| {
        runtime.block_on(async {
            let one = |index: usize| {
                let queue = queue.clone();
                async move {
                    let envelope = Envelope {
                        sender: "bulk@example.org".to_string(),
                        recipients: vec![format!("r{index}@example.net")],
                        smtputf8: false,
                        body_8bit: false,
                        requiretls: false,
                        dsn: None,
                    };
                    let id = queue
                        .enqueue(envelope, b"Subject: bulk\r\n\r\nHello.\r\n")
                        .await
                        .expect("enqueue a test message");
                    queue.hold(&id).await.expect("hold a test message");
                    id.to_string()
                }
            };
            let mut ids = futures::future::join_all((0..count).map(one)).await;
            ids.sort();
            ids
        })
    })
}

/// The stored body of message `id`.
pub fn read_body(queue: &Queue, id: &QueueId) -> Vec<u8> {
    let mut body = Vec::new();
    queue
        .open_body(id)
        .expect("open a body")
        .read_to_end(&mut body)
        .expect("read a body");
    body
}

/// A queued message and its body.
pub struct Queued {
    pub message: Message,
    pub body: String,
}

/// Every message in the spool at `spool`, in arrival order (the server must
/// not be running).
pub fn read_spool(spool: &Path) -> Vec<Queued> {
    with_queue(spool, |queue, _| {
        let messages: Vec<Message> = queue
            .iter(None)
            .map(|message| message.expect("read a queued message"))
            .collect();
        messages
            .into_iter()
            .map(|message| {
                let body = read_body(queue, &message.id);
                Queued {
                    message,
                    body: String::from_utf8_lossy(&body).into_owned(),
                }
            })
            .collect()
    })
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
