//! Crash test: a child process enqueues with 16 concurrent writers and
//! reports each ID only after `commit` returned; it is killed with SIGKILL
//! mid-stream. Reopening the spool must find every reported message, with
//! its envelope and body intact.
//!
//! The child is this test binary itself, re-run with `CHILD_SPOOL_ENV` set
//! and filtered to the `crash_child_enqueues_until_killed` test.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sluice_queue::{Envelope, Queue, QueueId, QueueOptions};

const CHILD_SPOOL_ENV: &str = "SLUICE_QUEUE_CRASH_CHILD_SPOOL";
const CHILD_TEST: &str = "crash_child_enqueues_until_killed";
const WRITERS: u64 = 16;

/// The body of message number `seed`: mostly small (inline in sled), every
/// seventh one 70-200 KiB (a body file), all bytes derived from the seed.
fn body_for(seed: u64) -> Vec<u8> {
    let size = if seed % 7 == 3 {
        70 * 1024 + (seed % 130) as usize * 1024
    } else {
        (seed % 9000) as usize
    };
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn recipient_for(seed: u64) -> String {
    format!("rcpt-{seed}@example.com")
}

/// The child's work; a no-op unless started by the crash test.
#[test]
fn crash_child_enqueues_until_killed() {
    let Some(spool) = std::env::var_os(CHILD_SPOOL_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let queue =
            Queue::open(Path::new(&spool), QueueOptions::default()).expect("child opens the spool");
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let queue = queue.clone();
                tokio::spawn(async move {
                    for round in 0u64.. {
                        let seed = round * WRITERS
                            + writer
                            + u64::from(std::process::id()) * 1_000_000_000;
                        let envelope = Envelope {
                            sender: "crash@example.org".into(),
                            recipients: vec![recipient_for(seed)],
                            smtputf8: false,
                            body_8bit: false,
                            requiretls: false,
                            dsn: None,
                        };
                        let id = queue
                            .enqueue(envelope, &body_for(seed))
                            .await
                            .expect("enqueue");
                        // Only now is the message acknowledged.
                        println!("QUEUED {id} {seed}");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.expect("writer");
        }
    });
}

/// Runs one child on `spool`, kills it with SIGKILL once it reported at least
/// `wanted` messages, and returns every (ID, seed) it reported.
fn run_and_kill_child(spool: &Path, wanted: usize) -> Vec<(QueueId, u64)> {
    let mut child = Command::new(std::env::current_exe().expect("test binary path"))
        .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_SPOOL_ENV, spool)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("child starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (lines_tx, lines_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut line = Vec::new();
        loop {
            line.clear();
            match stdout.read_until(b'\n', &mut line) {
                // A line cut short by the kill was never fully reported.
                Ok(0) | Err(_) => return,
                Ok(_) if line.ends_with(b"\n") => {
                    if lines_tx
                        .send(String::from_utf8_lossy(&line).into_owned())
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(_) => return,
            }
        }
    });

    let mut reported = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while reported.len() < wanted {
        let now = Instant::now();
        assert!(
            now < deadline,
            "child reported only {} messages in 60 s",
            reported.len()
        );
        match lines_rx.recv_timeout(deadline - now) {
            Ok(line) => reported.extend(parse(&line)),
            Err(_) => {
                let status = child.try_wait().expect("child status");
                panic!(
                    "child stopped reporting after {} messages (status {status:?})",
                    reported.len()
                );
            }
        }
    }
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("child reaped");
    assert!(
        !status.success(),
        "child was killed, not finished: {status:?}"
    );
    reader.join().expect("reader thread");
    reported.extend(lines_rx.try_iter().filter_map(|line| parse(&line)));
    reported
}

fn parse(line: &str) -> Option<(QueueId, u64)> {
    let mut words = line.strip_prefix("QUEUED ")?.split_whitespace();
    let id = QueueId::parse(words.next()?)?;
    let seed = words.next()?.parse().ok()?;
    Some((id, seed))
}

fn assert_all_present(queue: &Queue, reported: &[(QueueId, u64)]) {
    for (id, seed) in reported {
        let message = queue.get(id).expect("get").unwrap_or_else(|| {
            panic!("reported message {id} (seed {seed}) is missing after the crash")
        });
        assert_eq!(
            message.recipients[0].address,
            recipient_for(*seed),
            "envelope of {id}"
        );
        let expected = body_for(*seed);
        assert_eq!(message.size, expected.len() as u64, "size of {id}");
        let mut body = Vec::new();
        queue
            .open_body(id)
            .unwrap_or_else(|error| panic!("body of {id}: {error}"))
            .read_to_end(&mut body)
            .unwrap_or_else(|error| panic!("reading body of {id}: {error}"));
        assert!(
            body == expected,
            "body of {id} (seed {seed}) differs after the crash"
        );
    }
}

#[tokio::test]
async fn every_acknowledged_message_survives_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut all_reported = Vec::new();
    for round in 1..=2 {
        let reported = run_and_kill_child(dir.path(), 300);
        assert!(
            reported.len() >= 300,
            "round {round}: {} reported",
            reported.len()
        );
        all_reported.extend(reported);

        let queue = Queue::open(dir.path(), QueueOptions::default())
            .unwrap_or_else(|error| panic!("round {round}: reopening after SIGKILL: {error}"));
        assert_all_present(&queue, &all_reported);
        let stats = queue.stats().expect("stats");
        assert!(
            stats.messages >= all_reported.len() as u64,
            "round {round}: {} queued < {} reported",
            stats.messages,
            all_reported.len()
        );
        // Everything queued is readable and due, not only what was reported.
        let mut listed = 0u64;
        for message in queue.iter(None) {
            let message = message.expect("no corrupt record after a crash");
            queue
                .open_body(&message.id)
                .expect("every queued message has its body");
            listed += 1;
        }
        assert_eq!(listed, stats.messages);
        assert_eq!(
            queue
                .claim_due(chrono::Utc::now(), usize::MAX)
                .expect("claim")
                .len() as u64,
            listed
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp"))
                .expect("tmp dir")
                .count(),
            0,
            "uncommitted bodies of the killed child were cleaned up"
        );
        queue.close().await.expect("close");
    }
    let mut ids: Vec<&QueueId> = all_reported.iter().map(|(id, _)| id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        all_reported.len(),
        "IDs are unique across crashes"
    );
}
