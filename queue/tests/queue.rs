//! Behaviour of the queue API on a real spool directory.

use std::io::Read;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sluice_queue::{
    Envelope, Outcome, Queue, QueueError, QueueId, QueueOptions, RecipientStatus, RecipientUpdate,
};

fn envelope(recipients: &[&str]) -> Envelope {
    Envelope {
        sender: "sender@example.org".into(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        smtputf8: false,
        body_8bit: false,
        requiretls: false,
        dsn: None,
    }
}

fn open(dir: &tempfile::TempDir) -> Queue {
    Queue::open(dir.path(), QueueOptions::default()).expect("queue opens")
}

/// A fresh spool holding one message to a@x.example; keep the directory
/// alive as long as the queue.
async fn one_message() -> (tempfile::TempDir, Queue, QueueId) {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir);
    let id = queue
        .enqueue(envelope(&["a@x.example"]), b"x")
        .await
        .expect("enqueue");
    (dir, queue, id)
}

fn far_future() -> DateTime<Utc> {
    Utc::now() + chrono::Duration::days(365)
}

fn read_body(queue: &Queue, id: &QueueId) -> Vec<u8> {
    let mut reader = queue.open_body(id).expect("body opens");
    let mut body = Vec::new();
    reader.read_to_end(&mut body).expect("body reads");
    assert_eq!(
        reader.size(),
        body.len() as u64,
        "size() matches the bytes read"
    );
    body
}

fn claimed_ids(queue: &Queue, now: DateTime<Utc>, max: usize) -> Vec<QueueId> {
    queue
        .claim_due(now, max)
        .expect("claim_due")
        .into_iter()
        .map(|claim| claim.message.id)
        .collect()
}

fn deferred(index: usize, at: DateTime<Utc>) -> RecipientUpdate {
    RecipientUpdate {
        index,
        outcome: Outcome::Deferred {
            reply: "451 4.3.0 try later".into(),
            next_attempt_at: at,
        },
    }
}

#[tokio::test]
async fn enqueued_message_is_stored_with_pending_recipients_and_body() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir);
    let id = queue
        .enqueue(
            envelope(&["a@example.com", "b@example.net"]),
            b"Subject: hi\r\n\r\nhello\r\n",
        )
        .await
        .expect("enqueue");
    assert!(id.as_str().bytes().all(|b| b.is_ascii_alphanumeric()));
    let message = queue.get(&id).expect("get").expect("message is queued");
    assert_eq!(message.sender, "sender@example.org");
    assert_eq!(message.size, 22);
    assert_eq!(message.recipients.len(), 2);
    assert!(
        message
            .recipients
            .iter()
            .all(|r| r.status == RecipientStatus::Pending)
    );
    assert_eq!(read_body(&queue, &id), b"Subject: hi\r\n\r\nhello\r\n");
    let stats = queue.stats().expect("stats");
    assert_eq!((stats.messages, stats.pending), (1, 2));
    assert!(queue.flush_count() >= 1, "enqueue fsynced");
    queue.close().await.expect("close");
}

#[tokio::test]
async fn ids_are_unique_and_sort_in_arrival_order_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let queue = open(&dir);
        for _ in 0..20 {
            ids.push(
                queue
                    .enqueue(envelope(&["a@example.com"]), b"x")
                    .await
                    .expect("enqueue"),
            );
        }
        queue.close().await.expect("close");
    }
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, ids, "IDs are unique and in arrival order");
    let queue = open(&dir);
    let listed: Vec<QueueId> = queue.iter(None).map(|m| m.expect("message").id).collect();
    assert_eq!(listed, ids, "iter lists in ID order");
    let after: Vec<QueueId> = queue
        .iter(Some(&ids[29]))
        .map(|m| m.expect("message").id)
        .collect();
    assert_eq!(after, ids[30..].to_vec(), "iter resumes after the cursor");
}

#[tokio::test]
async fn due_work_is_claimed_earliest_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir);
    let first = queue
        .enqueue(envelope(&["a@x.example"]), b"1")
        .await
        .expect("enqueue");
    let second = queue
        .enqueue(envelope(&["a@x.example"]), b"2")
        .await
        .expect("enqueue");
    let third = queue
        .enqueue(envelope(&["a@x.example"]), b"3")
        .await
        .expect("enqueue");
    // Push the first message back: the others are now due before it.
    assert_eq!(claimed_ids(&queue, far_future(), 1), vec![first.clone()]);
    let later = Utc::now() + chrono::Duration::hours(1);
    queue
        .complete(&first, vec![deferred(0, later)])
        .await
        .expect("complete");

    assert!(queue.next_due().expect("next_due").expect("something due") <= Utc::now());
    assert!(
        claimed_ids(&queue, Utc::now() - chrono::Duration::hours(1), 10).is_empty(),
        "nothing due an hour ago"
    );
    assert_eq!(claimed_ids(&queue, Utc::now(), 10), vec![second, third]);
    assert_eq!(
        queue.next_due().expect("next_due"),
        Some(from_millis(later))
    );
    assert!(
        claimed_ids(&queue, Utc::now(), 10).is_empty(),
        "deferred message not due yet"
    );
    assert_eq!(claimed_ids(&queue, later, 10), vec![first]);
}

fn from_millis(time: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(time.timestamp_millis()).expect("valid time")
}

#[tokio::test]
async fn claimed_message_is_not_claimed_again_until_unclaimed_or_completed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir);
    let id = queue
        .enqueue(envelope(&["a@x.example", "b@x.example"]), b"x")
        .await
        .expect("enqueue");
    assert_eq!(claimed_ids(&queue, far_future(), 10), vec![id.clone()]);
    assert!(
        claimed_ids(&queue, far_future(), 10).is_empty(),
        "claimed twice"
    );
    assert_eq!(
        queue.next_due().expect("next_due"),
        None,
        "next_due ignores claimed messages"
    );

    queue.unclaim(&id);
    assert_eq!(claimed_ids(&queue, far_future(), 10), vec![id.clone()]);

    let later = Utc::now() + chrono::Duration::minutes(5);
    let message = queue
        .complete(
            &id,
            vec![
                RecipientUpdate {
                    index: 0,
                    outcome: Outcome::Delivered {
                        reply: "250 ok".into(),
                    },
                },
                deferred(1, later),
            ],
        )
        .await
        .expect("complete");
    assert_eq!(message.recipients[0].status, RecipientStatus::Delivered);
    assert_eq!(message.recipients[1].status, RecipientStatus::Deferred);
    assert_eq!(message.recipients[1].attempts, 1);
    assert_eq!(
        message.recipients[1].last_reply.as_deref(),
        Some("451 4.3.0 try later")
    );
    assert!(
        claimed_ids(&queue, Utc::now(), 10).is_empty(),
        "not due before its retry time"
    );
    assert_eq!(claimed_ids(&queue, far_future(), 10), vec![id]);
}

#[tokio::test]
async fn reopening_the_spool_voids_leases() {
    let (dir, queue, id) = one_message().await;
    assert_eq!(claimed_ids(&queue, far_future(), 10), vec![id.clone()]);
    queue.close().await.expect("close");
    drop(queue);

    let queue = open(&dir);
    assert_eq!(
        claimed_ids(&queue, far_future(), 10),
        vec![id],
        "in-flight work is due again"
    );
}

#[tokio::test]
async fn the_index_is_rebuilt_at_open_over_many_read_ahead_batches() {
    // More records than several of the batches the index rebuild reads
    // ahead in (256), some held (not due).
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir);
    let mut due = Vec::new();
    for n in 0..700 {
        let id = queue
            .enqueue(envelope(&["a@x.example"]), b"x")
            .await
            .expect("enqueue");
        if n % 7 == 0 {
            queue.hold(&id).await.expect("hold");
        } else {
            due.push(id);
        }
    }
    queue.close().await.expect("close");
    drop(queue);

    let queue = open(&dir);
    assert_eq!(queue.stats().expect("stats").messages, 700);
    assert_eq!(
        claimed_ids(&queue, far_future(), 1000),
        due,
        "every unheld message is due again, in arrival order"
    );
}

#[tokio::test]
async fn held_message_is_never_claimed_until_released() {
    let (dir, queue, id) = one_message().await;
    assert!(queue.hold(&id).await.expect("hold").held);
    assert!(
        claimed_ids(&queue, far_future(), 10).is_empty(),
        "held message claimed"
    );
    assert_eq!(queue.next_due().expect("next_due"), None);
    assert_eq!(queue.stats().expect("stats").held, 1);

    // Holding survives a restart.
    queue.close().await.expect("close");
    drop(queue);
    let queue = open(&dir);
    assert!(
        claimed_ids(&queue, far_future(), 10).is_empty(),
        "held message claimed after reopen"
    );

    let notify = queue.changed();
    let notified = notify.notified();
    assert!(!queue.release(&id).await.expect("release").held);
    tokio::time::timeout(Duration::from_secs(5), notified)
        .await
        .expect("release signals changed()");
    assert_eq!(claimed_ids(&queue, far_future(), 10), vec![id]);
    assert_eq!(queue.stats().expect("stats").held, 0);
}

#[tokio::test]
async fn hold_while_claimed_keeps_it_from_being_due_after_unclaim() {
    let (_dir, queue, id) = one_message().await;
    assert_eq!(claimed_ids(&queue, far_future(), 10), vec![id.clone()]);
    queue.hold(&id).await.expect("hold");
    queue.unclaim(&id);
    assert!(claimed_ids(&queue, far_future(), 10).is_empty());
    queue.release(&id).await.expect("release");
    assert_eq!(claimed_ids(&queue, far_future(), 10), vec![id]);
}

#[tokio::test]
async fn retry_now_makes_deferred_recipients_due_now() {
    let (_dir, queue, id) = one_message().await;
    assert_eq!(claimed_ids(&queue, Utc::now(), 10), vec![id.clone()]);
    queue
        .complete(&id, vec![deferred(0, far_future())])
        .await
        .expect("complete");
    assert!(claimed_ids(&queue, Utc::now(), 10).is_empty());

    let message = queue.retry_now(&id).await.expect("retry_now");
    assert!(message.recipients[0].next_attempt_at.expect("has a time") <= Utc::now());
    assert_eq!(claimed_ids(&queue, Utc::now(), 10), vec![id]);
}

#[tokio::test]
async fn message_leaves_the_queue_when_every_recipient_is_done() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir);
    let id = queue
        .enqueue(envelope(&["a@x.example", "b@x.example"]), b"x")
        .await
        .expect("enqueue");
    queue.claim_due(far_future(), 1).expect("claim");
    let message = queue
        .complete(
            &id,
            vec![
                RecipientUpdate {
                    index: 0,
                    outcome: Outcome::Delivered {
                        reply: "250 ok".into(),
                    },
                },
                RecipientUpdate {
                    index: 1,
                    outcome: Outcome::Failed {
                        reply: "550 5.1.1 no such user".into(),
                    },
                },
            ],
        )
        .await
        .expect("complete");
    assert_eq!(message.recipients[0].status, RecipientStatus::Delivered);
    assert_eq!(message.recipients[1].status, RecipientStatus::Failed);
    assert_eq!(
        queue.get(&id).expect("get"),
        None,
        "finished message left the queue"
    );
    assert!(matches!(queue.open_body(&id), Err(QueueError::NotFound(_))));
    assert_eq!(queue.stats().expect("stats"), Default::default());
    assert_eq!(queue.next_due().expect("next_due"), None);
    assert!(matches!(
        queue.complete(&id, Vec::new()).await,
        Err(QueueError::NotFound(_))
    ));
}

#[tokio::test]
async fn stats_count_messages_and_recipients_by_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir);
    let a = queue
        .enqueue(
            envelope(&["1@x.example", "2@x.example", "3@x.example"]),
            b"x",
        )
        .await
        .expect("enqueue");
    let b = queue
        .enqueue(envelope(&["4@x.example"]), b"x")
        .await
        .expect("enqueue");
    queue.claim_due(far_future(), 10).expect("claim");
    queue
        .complete(
            &a,
            vec![
                RecipientUpdate {
                    index: 0,
                    outcome: Outcome::Delivered {
                        reply: "250".into(),
                    },
                },
                RecipientUpdate {
                    index: 1,
                    outcome: Outcome::Failed {
                        reply: "550".into(),
                    },
                },
                deferred(2, far_future()),
            ],
        )
        .await
        .expect("complete");
    queue.unclaim(&b);
    queue.hold(&b).await.expect("hold");
    let expected = sluice_queue::QueueStats {
        messages: 2,
        held: 1,
        pending: 1,
        deferred: 1,
        delivered: 1,
        failed: 1,
    };
    assert_eq!(queue.stats().expect("stats"), expected);
    queue.close().await.expect("close");
    drop(queue);
    assert_eq!(
        open(&dir).stats().expect("stats"),
        expected,
        "counters are rebuilt at open"
    );
}

#[tokio::test]
async fn delete_removes_message_and_body_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir);
    let big = vec![b'x'; 300 * 1024];
    let id = queue
        .enqueue(envelope(&["a@x.example"]), &big)
        .await
        .expect("enqueue");
    let body_file = dir.path().join("bodies").join(id.as_str());
    assert!(body_file.exists(), "a 300 KiB body lives in a file");
    queue.delete(&id).await.expect("delete");
    assert_eq!(queue.get(&id).expect("get"), None);
    assert!(!body_file.exists(), "body file removed");
    assert!(claimed_ids(&queue, far_future(), 10).is_empty());
    assert!(matches!(
        queue.delete(&id).await,
        Err(QueueError::NotFound(_))
    ));
}

#[tokio::test]
async fn large_body_spills_to_a_file_and_round_trips_byte_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir);
    let body: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mut writer = queue.new_body().expect("new_body");
    for piece in body.chunks(1000) {
        writer.append(piece).await.expect("write");
    }
    assert_eq!(writer.len(), body.len() as u64);
    let id = writer.id().clone();
    assert!(
        dir.path().join("tmp").join(id.as_str()).exists(),
        "spilled while written"
    );
    let committed = queue
        .commit(envelope(&["a@x.example"]), writer)
        .await
        .expect("commit");
    assert_eq!(committed, id);
    assert!(dir.path().join("bodies").join(id.as_str()).exists());
    assert!(!dir.path().join("tmp").join(id.as_str()).exists());
    assert_eq!(
        queue.get(&id).expect("get").expect("queued").size,
        body.len() as u64
    );
    assert!(
        read_body(&queue, &id) == body,
        "5 MiB body differs after the round trip"
    );
    queue.close().await.expect("close");
    drop(queue);
    let queue = open(&dir);
    assert!(
        read_body(&queue, &id) == body,
        "5 MiB body differs after reopen"
    );
}

#[tokio::test]
async fn inline_bodies_of_every_size_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir);
    for size in [0usize, 1, 4095, 4096, 4097, 65535, 65536, 65537] {
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let id = queue
            .enqueue(envelope(&["a@x.example"]), &body)
            .await
            .expect("enqueue");
        assert_eq!(read_body(&queue, &id), body, "body of {size} bytes");
    }
}

#[tokio::test]
async fn dropping_an_uncommitted_body_writer_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir);
    let mut writer = queue.new_body().expect("new_body");
    writer
        .append(&vec![b'y'; 1024 * 1024])
        .await
        .expect("write");
    let id = writer.id().clone();
    assert!(dir.path().join("tmp").join(id.as_str()).exists());
    drop(writer);
    // The file is removed on the blocking pool, moments after the drop.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(dir.path().join("tmp"))
        .expect("tmp")
        .count()
        > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "tmp/ is still not empty 10 s after the drop"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        std::fs::read_dir(dir.path().join("bodies"))
            .expect("bodies")
            .count(),
        0
    );
    assert_eq!(queue.get(&id).expect("get"), None);
    assert_eq!(queue.stats().expect("stats").messages, 0);
}

#[tokio::test]
async fn a_second_open_of_the_same_spool_is_locked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir);
    match Queue::open(dir.path(), QueueOptions::default()) {
        Err(QueueError::Locked { path }) => assert_eq!(path, dir.path()),
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("expected Locked, the spool opened twice"),
    }
    queue.close().await.expect("close");
    drop(queue);
    open(&dir);
}

#[tokio::test]
async fn durable_operations_fail_after_close() {
    let (_dir, queue, id) = one_message().await;
    queue.close().await.expect("close");
    assert!(matches!(
        queue.enqueue(envelope(&["a@x.example"]), b"x").await,
        Err(QueueError::Closed)
    ));
    assert!(matches!(queue.hold(&id).await, Err(QueueError::Closed)));
    assert!(queue.get(&id).expect("reads still work").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_enqueues_share_fsyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir);
    let before = queue.flush_count();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let queue = queue.clone();
            tokio::spawn(async move {
                queue
                    .enqueue(
                        envelope(&["a@x.example"]),
                        format!("message {i}").as_bytes(),
                    )
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("enqueue");
    }
    let flushes = queue.flush_count() - before;
    assert!(flushes < 64, "64 concurrent enqueues took {flushes} fsyncs");
    assert_eq!(queue.stats().expect("stats").messages, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claimers_never_get_the_same_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir);
    for _ in 0..200 {
        queue
            .enqueue(envelope(&["a@x.example"]), b"x")
            .await
            .expect("enqueue");
    }
    let claimers: Vec<_> = (0..8)
        .map(|_| {
            let queue = queue.clone();
            tokio::task::spawn_blocking(move || {
                let mut mine = Vec::new();
                loop {
                    let batch = claimed_ids(&queue, far_future(), 3);
                    if batch.is_empty() {
                        return mine;
                    }
                    mine.extend(batch);
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for claimer in claimers {
        all.extend(claimer.await.expect("claimer"));
    }
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), total, "a message was claimed twice");
    assert_eq!(total, 200, "every message claimed once");
}

#[tokio::test]
async fn commit_signals_changed_even_when_nobody_is_waiting_yet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir);
    let changed = queue.changed();
    queue
        .enqueue(envelope(&["a@x.example"]), b"x")
        .await
        .expect("enqueue");
    // The scheduler was busy during the commit; it must still wake up.
    tokio::time::timeout(Duration::from_secs(5), changed.notified())
        .await
        .expect("a permit was stored for the next waiter");
}

#[tokio::test]
async fn unclaim_signals_changed() {
    let (_dir, queue, id) = one_message().await;
    claimed_ids(&queue, far_future(), 1);
    let changed = queue.changed();
    // Consume the permit the commit left.
    tokio::time::timeout(Duration::from_secs(5), changed.notified())
        .await
        .expect("commit permit");
    let notified = changed.notified();
    queue.unclaim(&id);
    tokio::time::timeout(Duration::from_secs(5), notified)
        .await
        .expect("unclaim signals changed()");
}

#[tokio::test]
async fn message_with_thousands_of_recipients_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir);
    let recipients: Vec<String> = (0..3000)
        .map(|i| format!("recipient-{i}@example.com"))
        .collect();
    let refs: Vec<&str> = recipients.iter().map(String::as_str).collect();
    let id = queue.enqueue(envelope(&refs), b"x").await.expect("enqueue");
    queue.close().await.expect("close");
    drop(queue);
    let queue = open(&dir);
    let message = queue.get(&id).expect("get").expect("queued");
    assert_eq!(message.recipients.len(), 3000);
    assert_eq!(
        message.recipients[2999].address,
        "recipient-2999@example.com"
    );
    assert_eq!(queue.stats().expect("stats").pending, 3000);
}

#[tokio::test]
async fn open_removes_uncommitted_and_orphaned_body_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir);
    let kept = queue
        .enqueue(envelope(&["a@x.example"]), &vec![b'k'; 100_000])
        .await
        .expect("enqueue");
    queue.close().await.expect("close");
    drop(queue);
    // What a crash can leave behind: a body being received, and a body file
    // whose record never became durable.
    std::fs::write(dir.path().join("tmp").join("0000000001abc"), b"partial").expect("tmp file");
    std::fs::write(dir.path().join("bodies").join("0000000002abc"), b"orphan").expect("orphan");

    let queue = open(&dir);
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp"))
            .expect("tmp")
            .count(),
        0
    );
    let bodies: Vec<_> = std::fs::read_dir(dir.path().join("bodies"))
        .expect("bodies")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(bodies, vec![std::ffi::OsString::from(kept.as_str())]);
    assert_eq!(read_body(&queue, &kept), vec![b'k'; 100_000]);
}

/// A DKIM signature is known only once the body was hashed, and goes in
/// front of it: `replace_start` puts it there, in memory and in a spill file
/// alike, and `read_back` returns what is written so far.
#[tokio::test]
async fn the_start_of_a_body_can_be_replaced_before_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = open(&dir);
    for size in [100usize, 64 * 1024 - 10, 300 * 1024] {
        let mut writer = queue.new_body().expect("new body");
        let mut original = b"Subject: x\r\nX-Forged: yes\r\n\r\n".to_vec();
        original.extend(std::iter::repeat_n(b'b', size));
        for piece in original.chunks(7000) {
            writer.append(piece).await.expect("write");
        }
        assert_eq!(writer.read_back().await.expect("read back"), original);
        // Drop "Subject: x\r\n" and put two header lines in its place.
        writer
            .replace_start(12, b"DKIM-Signature: a\r\nSubject: y\r\n")
            .await
            .expect("replace");
        let mut expected = b"DKIM-Signature: a\r\nSubject: y\r\n".to_vec();
        expected.extend_from_slice(&original[12..]);
        assert_eq!(writer.len(), expected.len() as u64, "size {size}");
        writer.append(b"tail").await.expect("write after replace");
        expected.extend_from_slice(b"tail");
        let id = queue
            .commit(envelope(&["a@x.example"]), writer)
            .await
            .expect("commit");
        assert_eq!(read_body(&queue, &id), expected, "size {size}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("tmp"))
        .expect("tmp dir")
        .collect();
    assert!(
        leftovers.is_empty(),
        "no temporary files left: {leftovers:?}"
    );
}

#[tokio::test]
async fn outcomes_with_attempts_keep_the_last_twenty_across_a_reopen() {
    use sluice_queue::{ATTEMPTS_LOG_LEN, AttemptRecord, LoggedAttempt};
    let (dir, queue, id) = one_message().await;
    let attempt = |n: usize| LoggedAttempt {
        index: 0,
        attempt: AttemptRecord {
            at: Utc::now(),
            relay: "mx.x.example[192.0.2.1]:25".into(),
            tls: "plaintext".into(),
            reply: format!("451 4.3.0 try {n}"),
        },
    };
    for n in 0..ATTEMPTS_LOG_LEN + 3 {
        assert_eq!(claimed_ids(&queue, far_future(), 10), vec![id.clone()]);
        queue
            .complete_logged(&id, vec![deferred(0, Utc::now())], vec![attempt(n)])
            .await
            .expect("complete");
    }
    // An attempt for a recipient that does not exist is ignored.
    claimed_ids(&queue, far_future(), 10);
    let mut stray = attempt(99);
    stray.index = 7;
    queue
        .complete_logged(&id, vec![deferred(0, Utc::now())], vec![stray])
        .await
        .expect("complete");
    queue.close().await.expect("close");
    drop(queue);

    let queue = open(&dir);
    let message = queue.get(&id).expect("get").expect("still queued");
    let log = &message.recipients[0].attempts_log;
    assert_eq!(log.len(), ATTEMPTS_LOG_LEN);
    assert_eq!(log[0].reply, "451 4.3.0 try 3", "the oldest were dropped");
    assert_eq!(log[ATTEMPTS_LOG_LEN - 1].reply, "451 4.3.0 try 22");
    assert_eq!(message.recipients[0].attempts, ATTEMPTS_LOG_LEN as u32 + 4);
}

#[tokio::test]
async fn postponed_recipients_wait_uncharged_and_retry_now_wakes_them() {
    let (_dir, queue, id) = one_message().await;
    let now = Utc::now();
    let claims = claimed_ids(&queue, now, 10);
    assert_eq!(claims, vec![id.clone()]);
    let until = now + chrono::Duration::hours(1);
    let message = queue
        .postpone(&id, &[0], until, "4.7.0 delivery to x.example suspended")
        .await
        .expect("postpone");
    let recipient = &message.recipients[0];
    assert_eq!(recipient.status, RecipientStatus::Pending);
    assert_eq!(recipient.attempts, 0, "no attempt charged");
    assert_eq!(recipient.next_attempt_at, Some(until));
    queue.unclaim(&id);
    assert!(
        claimed_ids(&queue, now, 10).is_empty(),
        "not due before the end"
    );
    let due = queue.next_due().expect("next due").expect("some");
    assert_eq!(due.timestamp_millis(), until.timestamp_millis());
    queue.retry_now(&id).await.expect("retry now");
    assert_eq!(claimed_ids(&queue, Utc::now(), 10), vec![id]);
}

#[tokio::test]
async fn suspensions_are_kept_across_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let until = Utc::now() + chrono::Duration::minutes(30);
    {
        let queue = open(&dir);
        for destination in ["yahoo.com", ".google.com"] {
            queue
                .suspend(&sluice_queue::Suspension {
                    destination: destination.into(),
                    until,
                    reason: "421 4.7.0 [TSS04]".into(),
                })
                .await
                .expect("suspend");
        }
        assert!(queue.resume("yahoo.com").await.expect("resume"));
        assert!(!queue.resume("other.example").await.expect("resume"));
        queue.close().await.expect("close");
    }
    let queue = open(&dir);
    let kept = queue.suspensions().expect("read");
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].destination, ".google.com");
    assert_eq!(kept[0].until, until);
}
