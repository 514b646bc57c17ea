//! Storage failures: a child process (this test binary, re-run with
//! `CHILD_SPOOL_ENV` set) lowers its file size limit so that writes past
//! 1 MiB fail with EFBIG, as on a full disk. A failed body file write fails
//! only that message; a failed database write is remembered and announced
//! ([`Queue::failure`], [`Queue::failed`]). Reopening the spool without the
//! limit finds every message whose enqueue succeeded.

use std::process::{Command, Stdio};
use std::time::Duration;

use sluice_queue::{Envelope, Queue, QueueError, QueueId, QueueOptions};

const CHILD_SPOOL_ENV: &str = "SLUICE_QUEUE_FAILURE_CHILD_SPOOL";
const CHILD_TEST: &str = "failure_child_writes_until_the_disk_is_full";
const LIMIT: u64 = 1024 * 1024;

fn envelope() -> Envelope {
    Envelope {
        sender: "sender@example.org".into(),
        recipients: vec!["rcpt@example.net".into()],
        smtputf8: false,
        body_8bit: false,
        requiretls: false,
        dsn: None,
    }
}

/// The child's work; a no-op unless started by the parent test.
#[test]
fn failure_child_writes_until_the_disk_is_full() {
    let Some(spool) = std::env::var_os(CHILD_SPOOL_ENV) else {
        return;
    };
    let limit = libc::rlimit {
        rlim_cur: LIMIT,
        rlim_max: LIMIT,
    };
    // SAFETY: plain system calls on this process, before any thread of the
    // test's own is started; SIGXFSZ ignored so EFBIG is returned instead.
    unsafe {
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let queue = Queue::open(std::path::Path::new(&spool), QueueOptions::default())
            .expect("child opens the spool");
        let big = vec![b'b'; 2 * LIMIT as usize];
        match queue.enqueue(envelope(), &big).await {
            Err(QueueError::Body { .. }) => {}
            other => panic!("a body file over the limit must fail with Body, got {other:?}"),
        }
        assert_eq!(
            queue.failure(),
            None,
            "a body file failure is no storage failure"
        );

        let body = vec![b'i'; 60_000];
        let mut error = None;
        for _ in 0..100 {
            match queue.enqueue(envelope(), &body).await {
                Ok(id) => println!("QUEUED {id}"),
                Err(failed) => {
                    error = Some(failed);
                    break;
                }
            }
        }
        let error = error.expect("the database outgrew the file size limit");
        assert!(matches!(error, QueueError::Storage(_)), "got {error:?}");
        let reason = tokio::time::timeout(Duration::from_secs(10), queue.failed())
            .await
            .expect("failed() resolves");
        assert_eq!(queue.failure().as_deref(), Some(reason.as_str()));
        assert!(reason.contains("File too large"), "{reason}");
        assert!(
            queue.enqueue(envelope(), b"later").await.is_err(),
            "sled refuses writes after the failure"
        );
        println!("FAILED {reason}");
    });
}

#[tokio::test]
async fn a_failed_database_write_is_announced_and_acknowledged_messages_survive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(std::env::current_exe().expect("test binary path"))
        .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_SPOOL_ENV, dir.path())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("child runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "child failed:\n{stdout}");
    assert!(stdout.contains("FAILED "), "child output:\n{stdout}");
    let queued: Vec<QueueId> = stdout
        .lines()
        // libtest may print the test's name on the first line's start.
        .filter_map(|line| line.split_once("QUEUED ").map(|(_, id)| id))
        .map(|id| QueueId::parse(id.trim()).expect("queue ID"))
        .collect();
    assert!(queued.len() >= 3, "only {} queued", queued.len());

    let queue = Queue::open(dir.path(), QueueOptions::default()).expect("reopens");
    assert_eq!(queue.failure(), None, "a reopened spool is healthy");
    let listed: Vec<QueueId> = queue
        .iter(None)
        .map(|message| message.expect("message").id)
        .collect();
    assert_eq!(listed, queued, "exactly the acknowledged messages");
    queue
        .enqueue(envelope(), b"after")
        .await
        .expect("writes succeed again");
}
