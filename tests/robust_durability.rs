//! "Nothing accepted is ever lost", end to end on the real binary: write
//! failures at acceptance (the file size limit makes writes fail with
//! EFBIG; a failed database write stops the server with status 1 for its
//! supervisor to restart it), and SIGKILL at random points while clients
//! send and while deliveries are in flight.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod destination;
    pub mod server;
    pub mod smtp;
    pub mod spool;
    pub use {server::*, smtp::*};
}

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::destination::{Destination, Options};
use common::spool::{read_body, with_queue};
use common::{DEADLINE, NO_DELIVERY, Sluice, SmtpClient, config_text, seed, wait_for};
use rand::{Rng as _, SeedableRng as _};
use sluice_queue::QueueId;

/// A client that reports failures instead of panicking (the server may be
/// killed under it): connected, greeted and EHLO sent.
fn connect(address: SocketAddr) -> std::io::Result<SmtpClient> {
    let mut client = SmtpClient::try_connect(address, DEADLINE)?;
    let greeting = client.try_read_reply()?;
    if !greeting.starts_with("220 ") {
        return Err(std::io::Error::other(format!("greeting {greeting:?}")));
    }
    client.try_command("EHLO robust.test")?;
    Ok(client)
}

/// One transaction; the final reply to the data (any code).
fn transaction(client: &mut SmtpClient, body: &[u8]) -> std::io::Result<String> {
    client.try_transaction("sender@origin.test", &["rcpt@dest.test"], body)
}

/// A message body of about `size` bytes in 78-octet lines, tagged with `tag`.
fn body(tag: &str, size: usize) -> Vec<u8> {
    let mut body = format!("Subject: {tag}\r\n\r\n").into_bytes();
    let line = format!("{tag} {}\r\n", "x".repeat(76 - tag.len().min(60)));
    while body.len() < size {
        body.extend_from_slice(line.as_bytes());
    }
    body
}

/// The queue ID in a final 250, or `None` for any other reply.
fn acknowledged(reply: &str) -> Option<String> {
    common::queue_id(reply)
}

/// Every queue ID `sluice queue list --json` shows.
fn listed(sluice: &Sluice) -> BTreeSet<String> {
    let (code, stdout, stderr) = sluice.cli(&["queue", "list", "--json"]);
    assert_eq!(code, 0, "queue list failed: {stderr}");
    let list: serde_json::Value = serde_json::from_str(&stdout).expect("queue list JSON");
    list.as_array()
        .expect("queue list is an array")
        .iter()
        .map(|message| message["id"].as_str().expect("id").to_string())
        .collect()
}

/// Spawns the server with a file size limit: any write past `bytes` in any
/// file fails with EFBIG (SIGXFSZ is ignored, so it does not kill).
fn start_with_file_limit(extra: &str, bytes: u64) -> Sluice {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config_text(dir.path(), "", extra);
    Sluice::start_with_command(dir, &text, move |command| {
        // SAFETY: only async-signal-safe calls (setrlimit, signal) between
        // fork and exec.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: bytes,
                    rlim_max: bytes,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                Ok(())
            });
        }
    })
}

/// Files in a spool subdirectory.
fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// With the server stopped: the stored bodies of `ids`, in order.
///
/// The spool lock is an flock, shared with any child a parallel test forks
/// until that child execs: opening is retried for a moment.
fn stored_bodies(spool: &Path, ids: &[&str]) -> Vec<Vec<u8>> {
    with_queue(spool, |queue, _| {
        ids.iter()
            .map(|id| read_body(queue, &QueueId::parse(id).expect("queue ID")))
            .collect()
    })
}

#[test]
fn a_body_file_write_failure_gets_451_leaves_nothing_and_the_server_keeps_accepting() {
    // Bodies over 64 KiB are spooled to files: a 1 MiB size limit fails the
    // write of a 2 MiB message half way, while the database stays small.
    let mut sluice = start_with_file_limit(NO_DELIVERY, 1024 * 1024);
    let spool = sluice.dir.path().join("spool");
    let small = body("before", 2_000);
    let mut client = connect(sluice.smtp).expect("connect");
    let before = acknowledged(&transaction(&mut client, &small).expect("send"))
        .expect("a small message is accepted");

    let big = body("toobig", 2 * 1024 * 1024);
    let reply = transaction(&mut client, &big).expect("a reply, not a hang or a close");
    assert!(
        reply.starts_with("451 4.3.0"),
        "a message that cannot be written must get 451 4.3.0, got {reply:?}"
    );
    assert!(
        files_in(&spool.join("tmp")).is_empty(),
        "half-written body left in tmp/"
    );
    assert_eq!(files_in(&spool.join("bodies")), Vec::<String>::new());
    assert_eq!(listed(&sluice), BTreeSet::from([before.clone()]));

    // Space "is available again" for what fits: the same connection and a
    // new one get their mail accepted, a spooled body under the limit too.
    let medium = body("medium", 300_000);
    let after_same = acknowledged(&transaction(&mut client, &small).expect("send"))
        .expect("the same session accepts mail after the failure");
    let mut fresh = connect(sluice.smtp).expect("connect");
    let after_medium = acknowledged(&transaction(&mut fresh, &medium).expect("send"))
        .expect("a spooled body under the limit is accepted");
    assert!(sluice.is_running());
    assert!(!sluice.log_text().contains("panicked"));

    let mut sluice = sluice.restart();
    let ids = listed(&sluice);
    for id in [&before, &after_same, &after_medium] {
        assert!(
            ids.contains(id),
            "acknowledged {id} lost; queue has {ids:?}"
        );
    }
    assert_eq!(ids.len(), 3, "only acknowledged mail is queued: {ids:?}");
    sluice.terminate();
    let stored = stored_bodies(&spool, &[&after_medium, &before]);
    assert!(stored[0].ends_with(&medium), "spooled body changed");
    assert!(stored[1].ends_with(&small), "inline body changed");
}

#[test]
fn a_database_write_failure_gets_451_and_the_server_stays_up_and_loses_nothing() {
    // 60 KB bodies are stored inline in sled: its log file hits the 1 MiB
    // limit after a dozen or so. sled then refuses every write until the
    // database is opened again: the server stays up (DESIGN.md "Faults"),
    // answers 451 4.3.0 for what it cannot store, and reopens the database
    // in process (here the limit stays, so writes keep failing).
    let mut sluice = start_with_file_limit(NO_DELIVERY, 1024 * 1024);
    let spool = sluice.dir.path().join("spool");
    // A session in the middle of a transaction when the failure strikes.
    let mut in_flight = connect(sluice.smtp).expect("connect");
    for (line, code) in [
        ("MAIL FROM:<sender@origin.test>", "250"),
        ("RCPT TO:<rcpt@dest.test>", "250"),
    ] {
        let reply = in_flight.try_command(line).expect("reply");
        assert!(reply.starts_with(code), "{line} got {reply:?}");
    }

    let mut acked = Vec::new();
    let mut client = connect(sluice.smtp).expect("connect");
    let mut refusal = None;
    for number in 0..60 {
        let message = body(&format!("m{number}"), 60_000);
        let reply = transaction(&mut client, &message).expect("a reply, not a close");
        match acknowledged(&reply) {
            Some(id) => acked.push((id, message)),
            None => {
                refusal = Some(reply);
                break;
            }
        }
    }
    let refusal = refusal.expect("the file size limit was never reached");
    assert!(
        refusal.contains("451 4.3.0"),
        "a failed write must get 451 4.3.0, got {refusal:?}"
    );
    assert!(
        acked.len() >= 3,
        "only {} accepted before failing",
        acked.len()
    );
    let stopped = sluice.wait_log(&["the spool cannot be written"]);
    assert!(
        stopped.contains(&format!("spool={}", spool.display())),
        "the error names the spool: {stopped}"
    );

    // The transaction in flight finishes with a reply; new connections are
    // greeted as usual: the server stays up.
    let message = body("inflight", 60_000);
    let reply = in_flight
        .try_expect("DATA", "354")
        .and_then(|_| {
            in_flight.try_send_raw(&message)?;
            in_flight.try_send_raw(b".\r\n")?;
            in_flight.try_read_reply()
        })
        .expect("the transaction in flight gets its reply");
    match acknowledged(&reply) {
        Some(id) => acked.push((id, message)),
        None => assert!(reply.starts_with("451 4.3.0"), "got {reply:?}"),
    }
    let mut probe = SmtpClient::try_connect(sluice.smtp, DEADLINE).expect("connect");
    let greeting = probe.try_read_reply().expect("greeting");
    assert!(greeting.starts_with("220"), "got {greeting:?}");
    assert!(
        sluice.is_running(),
        "a storage failure does not stop the server"
    );
    let log = sluice.log_text();
    assert!(!log.contains("panicked"), "panic in the log:\n{log}");

    // Restarted without the limit: everything acknowledged is there.
    let mut sluice = sluice.restart();
    let ids = listed(&sluice);
    for (id, _) in &acked {
        assert!(
            ids.contains(id),
            "acknowledged {id} lost after the write failure"
        );
    }
    assert_eq!(
        ids.len(),
        acked.len(),
        "mail that got 451 must not be queued: {ids:?}"
    );
    let mut client = connect(sluice.smtp).expect("connect after restart");
    let later = acknowledged(&transaction(&mut client, &body("later", 60_000)).expect("send"))
        .expect("mail is accepted again once writes succeed");
    assert!(listed(&sluice).contains(&later));
    assert_eq!(sluice.terminate().code(), Some(0), "a clean stop exits 0");
    let ids: Vec<&str> = acked.iter().map(|(id, _)| id.as_str()).collect();
    for ((id, message), stored) in acked.iter().zip(stored_bodies(&spool, &ids)) {
        assert!(stored.ends_with(message), "{id} body changed");
    }
}

/// Clients sending in a loop on `threads` connections until the server goes
/// away; every acknowledged ID is pushed to `acked`.
fn load(
    address: SocketAddr,
    threads: usize,
    round: usize,
    acked: &Arc<Mutex<Vec<String>>>,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..threads)
        .map(|thread| {
            let acked = acked.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let Ok(mut client) = connect(address) else {
                    return;
                };
                for number in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    // Mostly inline bodies, now and then a spooled one.
                    let size = if number % 7 == 3 { 100_000 } else { 1_500 };
                    let message = body(&format!("r{round}t{thread}n{number}"), size);
                    match transaction(&mut client, &message) {
                        Ok(reply) => match acknowledged(&reply) {
                            Some(id) => acked.lock().expect("acked lock").push(id),
                            None => return,
                        },
                        Err(_) => return,
                    }
                }
            })
        })
        .collect()
}

#[test]
fn every_acknowledged_message_survives_kill_9_at_random_points_under_load() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let mut sluice = Sluice::start(NO_DELIVERY);
    let acked = Arc::new(Mutex::new(Vec::new()));
    for round in 0..5 {
        let before = acked.lock().expect("acked lock").len();
        let stop = Arc::new(AtomicBool::new(false));
        let clients = load(sluice.smtp, 6, round, &acked, &stop);
        let target = before + rng.gen_range(5..40);
        wait_for("acknowledged messages", DEADLINE, || {
            (acked.lock().expect("acked lock").len() >= target).then_some(())
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..30)));
        sluice.kill9();
        stop.store(true, Ordering::SeqCst);
        for client in clients {
            client.join().expect("client thread");
        }
        sluice = sluice.restart();
        let ids = listed(&sluice);
        let acked = acked.lock().expect("acked lock");
        let lost: Vec<&String> = acked.iter().filter(|id| !ids.contains(*id)).collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} of {} acknowledged messages lost: {lost:?}",
            lost.len(),
            acked.len()
        );
        eprintln!(
            "round {round}: {} acknowledged in all, {} queued",
            acked.len(),
            ids.len()
        );
    }
}

#[test]
fn kill_9_with_deliveries_in_flight_delivers_everything_at_least_once_and_drains() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let destination = Destination::start(Options::default());
    destination.stall_data.store(true, Ordering::SeqCst);
    let extra = format!(
        "[routes]\n\"*\" = \"{}\"\n\n[delivery]\nretry_initial = \"1s\"\nretry_max = \"1s\"\n",
        destination.addr
    );
    let mut sluice = Sluice::start(&extra);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(sluice.smtp, 4, 0, &acked, &stop);
    // Deliveries are under way (the destination holds its final replies)
    // while clients are still sending.
    let in_flight = rng.gen_range(2..8);
    wait_for("deliveries in flight", DEADLINE, || {
        (destination.stalled.load(Ordering::SeqCst) >= in_flight).then_some(())
    });
    std::thread::sleep(Duration::from_millis(rng.gen_range(0..30)));
    sluice.kill9();
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().expect("client thread");
    }
    destination.stall_data.store(false, Ordering::SeqCst);
    let acked: Vec<String> = acked.lock().expect("acked lock").clone();
    assert!(!acked.is_empty());

    let sluice = sluice.restart();
    let missing = || {
        let delivered = destination.delivered();
        acked
            .iter()
            .filter(|id| {
                let marker = format!(" id {id}");
                !delivered
                    .iter()
                    .any(|transaction| String::from_utf8_lossy(&transaction.body).contains(&marker))
            })
            .cloned()
            .collect::<Vec<_>>()
    };
    let deadline = Duration::from_secs(30);
    let start = std::time::Instant::now();
    while !missing().is_empty() && start.elapsed() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let missing = missing();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged messages never delivered: {missing:?}",
        missing.len(),
        acked.len()
    );
    wait_for("the queue to drain", DEADLINE, || {
        listed(&sluice).is_empty().then_some(())
    });
}
