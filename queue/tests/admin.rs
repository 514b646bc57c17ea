//! The administrative handle ([`Queue::open_admin`]), used by `sluice queue`
//! while no server runs: what it writes is what a serving open schedules
//! afterwards, and it shares the spool's exclusive lock.

use std::io::Read;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sluice_queue::{
    Envelope, Outcome, Queue, QueueError, QueueId, QueueOptions, QueueStats, RecipientStatus,
    RecipientUpdate,
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

fn serve(dir: &tempfile::TempDir) -> Queue {
    reopen(|| Queue::open(dir.path(), QueueOptions::default()))
}

fn admin(dir: &tempfile::TempDir) -> Queue {
    reopen(|| Queue::open_admin(dir.path(), QueueOptions::default()))
}

/// Opens a spool the test just closed. sled releases its own lock on the
/// database only when its background writer threads let go of it, a moment
/// after the handle is dropped, so `Locked` is retried for a while.
fn reopen(open: impl Fn() -> Result<Queue, QueueError>) -> Queue {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match open() {
            Ok(queue) => return queue,
            Err(QueueError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(error) => panic!("opening the spool: {error}"),
        }
    }
}

async fn close(queue: Queue) {
    queue.close().await.expect("close");
    drop(queue);
}

fn far_future() -> DateTime<Utc> {
    Utc::now() + chrono::Duration::days(365)
}

fn deferred_until(at: DateTime<Utc>) -> Vec<RecipientUpdate> {
    vec![RecipientUpdate {
        index: 0,
        outcome: Outcome::Deferred {
            reply: "451 4.3.0 try later".into(),
            next_attempt_at: at,
        },
    }]
}

fn claimed(queue: &Queue) -> Vec<QueueId> {
    let mut ids: Vec<QueueId> = queue
        .claim_due(Utc::now() + chrono::Duration::seconds(1), 100)
        .expect("claim_due")
        .into_iter()
        .map(|claim| claim.message.id)
        .collect();
    ids.sort();
    ids
}

fn read_body(queue: &Queue, id: &QueueId) -> Vec<u8> {
    let mut body = Vec::new();
    queue
        .open_body(id)
        .expect("body opens")
        .read_to_end(&mut body)
        .expect("body reads");
    body
}

#[tokio::test]
async fn changes_made_offline_are_scheduled_by_the_next_serving_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = serve(&dir);
    let mut ids = Vec::new();
    for name in ["retried", "deferred", "held", "deleted", "bounced"] {
        let address = format!("{name}@x.example");
        ids.push(
            queue
                .enqueue(envelope(&[&address]), name.as_bytes())
                .await
                .expect("enqueue"),
        );
    }
    let [retried, deferred, held, deleted, bounced] = <[QueueId; 5]>::try_from(ids).expect("5");
    assert_eq!(claimed(&queue).len(), 5);
    for id in [&retried, &deferred, &held, &deleted, &bounced] {
        queue
            .complete(id, deferred_until(far_future()))
            .await
            .expect("complete");
    }
    assert!(claimed(&queue).is_empty(), "everything deferred for a year");
    close(queue).await;

    let queue = admin(&dir);
    assert_eq!(
        queue.stats().expect("stats").deferred,
        5,
        "counted by a scan"
    );
    queue.retry_now(&retried).await.expect("retry");
    let message = queue.hold(&held).await.expect("hold");
    assert!(message.held);
    queue.retry_now(&held).await.expect("retry a held message");
    queue.delete(&deleted).await.expect("delete");
    let bounce = queue
        .complete(
            &bounced,
            vec![RecipientUpdate {
                index: 0,
                outcome: Outcome::Failed {
                    reply: "5.0.0 bounced by the mail administrator".into(),
                },
            }],
        )
        .await
        .expect("bounce");
    assert_eq!(bounce.recipients[0].status, RecipientStatus::Failed);
    let dsn = queue
        .enqueue(envelope(&["sender@example.org"]), b"the DSN")
        .await
        .expect("enqueue the DSN");
    assert!(dsn > bounced, "IDs keep increasing across handles");
    assert!(claimed(&queue).is_empty(), "an admin handle never delivers");
    assert_eq!(queue.next_due().expect("next_due"), None);
    assert_eq!(queue.get(&deleted).expect("get"), None);
    assert_eq!(queue.get(&bounced).expect("get"), None, "finished: removed");
    assert_eq!(read_body(&queue, &dsn), b"the DSN");
    close(queue).await;

    let queue = serve(&dir);
    assert_eq!(
        claimed(&queue),
        vec![retried.clone(), dsn.clone()],
        "due: the retried message and the DSN; not the held, deferred, deleted or bounced"
    );
    assert_eq!(
        queue.stats().expect("stats"),
        QueueStats {
            messages: 4,
            held: 1,
            pending: 1,
            deferred: 3,
            delivered: 0,
            failed: 0,
        }
    );
    assert_eq!(read_body(&queue, &held), b"held");
    let due = queue.get(&held).expect("get").expect("held is queued");
    assert!(
        due.recipients[0].next_attempt_at.expect("has a time") <= Utc::now(),
        "retry of a held message is recorded, to take effect on release"
    );
    close(queue).await;

    let queue = admin(&dir);
    queue.release(&held).await.expect("release");
    close(queue).await;
    let queue = serve(&dir);
    let mut expected = vec![held, retried, dsn];
    expected.sort();
    assert_eq!(
        claimed(&queue),
        expected,
        "released offline: due at the next serving open"
    );
}

#[tokio::test]
async fn deleting_offline_removes_the_body_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = serve(&dir);
    let id = queue
        .enqueue(envelope(&["a@x.example"]), &vec![b'x'; 300 * 1024])
        .await
        .expect("enqueue");
    close(queue).await;
    let body_file = dir.path().join("bodies").join(id.as_str());
    assert!(body_file.exists(), "a 300 KiB body lives in a file");

    let queue = admin(&dir);
    assert_eq!(read_body(&queue, &id).len(), 300 * 1024);
    queue.delete(&id).await.expect("delete");
    assert!(!body_file.exists(), "body file removed");
    assert!(matches!(
        queue.delete(&id).await,
        Err(QueueError::NotFound(_))
    ));
    close(queue).await;
    assert_eq!(serve(&dir).stats().expect("stats"), QueueStats::default());
}

#[tokio::test]
async fn the_spool_lock_is_exclusive_between_serving_and_admin_handles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let locked = |result: Result<Queue, QueueError>| match result {
        Err(QueueError::Locked { path }) => assert_eq!(path, dir.path()),
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("expected Locked, the spool opened twice"),
    };
    let queue = serve(&dir);
    locked(Queue::open_admin(dir.path(), QueueOptions::default()));
    close(queue).await;

    let queue = admin(&dir);
    locked(Queue::open(dir.path(), QueueOptions::default()));
    locked(Queue::open_admin(dir.path(), QueueOptions::default()));
    close(queue).await;
    serve(&dir);
}

#[tokio::test]
async fn iteration_streams_every_message_in_arrival_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = serve(&dir);
    let mut ids = Vec::new();
    for number in 0..50 {
        let address = format!("r{number}@x.example");
        ids.push(
            queue
                .enqueue(envelope(&[&address]), b"x")
                .await
                .expect("enqueue"),
        );
    }
    close(queue).await;
    let queue = admin(&dir);
    let listed: Vec<QueueId> = queue
        .iter(None)
        .map(|message| message.expect("message").id)
        .collect();
    assert_eq!(listed, ids);
    let after: Vec<QueueId> = queue
        .iter(Some(&ids[47]))
        .map(|message| message.expect("message").id)
        .collect();
    assert_eq!(after, ids[48..]);
}
