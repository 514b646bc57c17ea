//! Durable enqueue throughput of 4 KiB messages at 1, 16 and 64 concurrent
//! writers, with the number of group flushes (fsyncs) each took.
//!
//! Run: `cargo bench -p sluice-queue` (SLUICE_BENCH_SECS sets the time per
//! round, default 3; SLUICE_BENCH_DIR the directory for the spools, default
//! cargo's target tmp dir, which must be on a real disk: fsync on tmpfs is
//! free and the figures would mean nothing; SLUICE_BENCH_WRITERS a comma
//! separated list of writer counts instead of 1,16,64).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice_queue::{Envelope, Queue, QueueOptions};

const MESSAGE_SIZE: usize = 4096;
const WRITER_COUNTS: [usize; 3] = [1, 16, 64];

struct Round {
    writers: usize,
    /// Bytes the process wrote (write/pwrite) during the round.
    written: u64,
    messages: u64,
    flushes: u64,
    elapsed: Duration,
}

impl Round {
    fn per_second(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    fn per_flush(&self) -> f64 {
        self.messages as f64 / self.flushes.max(1) as f64
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: then
    // only check that the benchmark runs at all.
    let quick = !std::env::args().any(|arg| arg == "--bench");
    let seconds: f64 = std::env::var("SLUICE_BENCH_SECS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(if quick { 0.2 } else { 3.0 });
    let base = std::env::var_os("SLUICE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).expect("benchmark directory can be created");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    println!(
        "disk: {:.0} fsyncs/s (4 KiB write + fdatasync, one writer)",
        raw_fsync_rate(&base, seconds)
    );
    println!(
        "{:>7} {:>9} {:>11} {:>8} {:>12} {:>10} {:>13}",
        "writers", "messages", "messages/s", "fsyncs", "msgs/fsync", "fsyncs/msg", "KiB write/msg"
    );
    let writer_counts: Vec<usize> = std::env::var("SLUICE_BENCH_WRITERS")
        .ok()
        .map(|text| {
            text.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .collect()
        })
        .filter(|counts: &Vec<usize>| !counts.is_empty())
        .unwrap_or_else(|| WRITER_COUNTS.to_vec());
    let mut rounds = Vec::new();
    let mut fullest: Option<(u64, tempfile::TempDir)> = None;
    for writers in writer_counts {
        let (round, spool) =
            runtime.block_on(run_round(&base, writers, Duration::from_secs_f64(seconds)));
        if fullest
            .as_ref()
            .is_none_or(|(messages, _)| round.messages > *messages)
        {
            fullest = Some((round.messages, spool));
        }
        println!(
            "{:>7} {:>9} {:>11.0} {:>8} {:>12.1} {:>10.3} {:>13.1}",
            round.writers,
            round.messages,
            round.per_second(),
            round.flushes,
            round.per_flush(),
            1.0 / round.per_flush(),
            round.written as f64 / 1024.0 / round.messages.max(1) as f64
        );
        rounds.push(round);
    }
    if let Some((messages, spool)) = fullest {
        let start = Instant::now();
        let queue = Queue::open(spool.path(), QueueOptions::default()).expect("queue reopens");
        let opened = start.elapsed();
        let start = Instant::now();
        let stats = queue.stats().expect("stats");
        let counted = start.elapsed();
        assert_eq!(stats.messages, messages, "every message is still queued");
        println!(
            "reopening a spool of {messages} messages: {:.0} ms; stats(): {} ns",
            opened.as_secs_f64() * 1000.0,
            counted.as_nanos()
        );
    }
    let single = &rounds[0];
    let most = rounds.last().expect("at least one round");
    let speedup = most.per_second() / single.per_second();
    println!(
        "{} writers vs 1: {speedup:.1}x the rate, {:.1} messages per fsync (targets: >= 10x, >= 10)",
        most.writers,
        most.per_flush()
    );
}

async fn run_round(
    base: &std::path::Path,
    writers: usize,
    duration: Duration,
) -> (Round, tempfile::TempDir) {
    let dir = tempfile::tempdir_in(base).expect("spool directory");
    let queue = Queue::open(dir.path(), QueueOptions::default()).expect("queue opens");
    let body = Arc::new(message());
    let messages = Arc::new(AtomicU64::new(0));
    let flushes_before = queue.flush_count();
    let written_before = bytes_written();
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let (queue, body, messages) = (queue.clone(), body.clone(), messages.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let envelope = Envelope {
                        sender: "bench@example.org".into(),
                        recipients: vec!["rcpt@example.com".into()],
                        smtputf8: false,
                        body_8bit: false,
                        requiretls: false,
                        dsn: None,
                    };
                    queue
                        .enqueue(envelope, &body)
                        .await
                        .expect("durable enqueue");
                    messages.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer task");
    }
    let elapsed = start.elapsed();
    let round = Round {
        writers,
        messages: messages.load(Ordering::Relaxed),
        flushes: queue.flush_count() - flushes_before,
        written: bytes_written().saturating_sub(written_before),
        elapsed,
    };
    queue.close().await.expect("queue closes");
    (round, dir)
}

/// The process's `wchar` from /proc/self/io (0 where unavailable): bytes
/// passed to write system calls, so the write amplification shows.
fn bytes_written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("wchar:"))
                .and_then(|value| value.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A 4 KiB message: headers, then filler lines.
fn message() -> Vec<u8> {
    let mut body =
        b"From: bench@example.org\r\nTo: rcpt@example.com\r\nSubject: benchmark\r\n\r\n".to_vec();
    while body.len() < MESSAGE_SIZE {
        body.extend_from_slice(
            b"The quick brown fox jumps over the lazy dog, again and again.\r\n",
        );
    }
    body.truncate(MESSAGE_SIZE);
    body
}

/// How many 4 KiB write + fdatasync cycles one writer gets per second: the
/// disk's bare fsync rate, for comparison.
fn raw_fsync_rate(base: &std::path::Path, seconds: f64) -> f64 {
    let mut file = tempfile::tempfile_in(base).expect("scratch file");
    let block = [0u8; MESSAGE_SIZE];
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed().as_secs_f64() < seconds.min(1.0) {
        file.write_all(&block).expect("write");
        file.sync_data().expect("fdatasync");
        count += 1;
    }
    count as f64 / start.elapsed().as_secs_f64()
}
