//! Body file I/O never blocks the async runtime: the caller's thread is a
//! tokio worker, and a disk that stalls must stall only the blocking pool.
//!
//! A stalled disk is played by a FIFO put where the queue expects a body
//! file: opening a FIFO blocks until the other end is opened, as an open,
//! read or write on a stuck disk would. Each test runs the queue on a
//! current-thread runtime (one worker, the worst case) and checks that a
//! timer on that runtime still fires while the file operation is stuck.

use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use sluice_queue::{Envelope, Queue, QueueOptions};

/// How long a stuck file operation may keep the runtime from a 20 ms timer.
const PATIENCE: Duration = Duration::from_secs(5);

fn envelope() -> Envelope {
    Envelope {
        sender: "sender@example.org".into(),
        recipients: vec!["a@x.example".into()],
        smtputf8: false,
        body_8bit: false,
        requiretls: false,
        dsn: None,
    }
}

fn mkfifo(path: &Path) {
    let name = CString::new(path.as_os_str().as_bytes()).expect("no NUL in the path");
    // SAFETY: `name` is a valid NUL-terminated path.
    let result = unsafe { libc::mkfifo(name.as_ptr(), 0o600) };
    assert_eq!(result, 0, "mkfifo {}", path.display());
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn spilling_a_big_body_leaves_the_runtime_free_while_the_disk_is_stuck() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().to_path_buf();
    let big = vec![b'x'; 100 * 1024];
    let size = big.len();
    let (ready, fifo_path) = mpsc::channel::<PathBuf>();
    let (ticked, tick) = mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        let runtime = current_thread_runtime();
        runtime.block_on(async move {
            let queue = Queue::open(&spool, QueueOptions::default()).expect("queue opens");
            let mut writer = queue.new_body().expect("new body");
            // The spill file will be tmp/<ID>: make it a FIFO nobody reads.
            let fifo = spool.join("tmp").join(writer.id().as_str());
            mkfifo(&fifo);
            ready.send(fifo).expect("test thread waits");
            let appending = tokio::spawn(async move {
                writer.append(&big).await.expect("append");
                writer
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = ticked.send(());
            drop(appending.await.expect("append task"));
            queue.close().await.expect("close");
        });
    });
    let fifo = fifo_path.recv().expect("the FIFO is made");
    let runtime_was_free = tick.recv_timeout(PATIENCE).is_ok();
    // Un-stick the disk: read what the spill wrote, so the worker finishes.
    let mut reader = std::fs::File::open(&fifo).expect("open the FIFO for reading");
    let mut spilled = vec![0u8; size];
    reader.read_exact(&mut spilled).expect("the spilled bytes");
    worker.join().expect("the runtime thread ends");
    assert!(
        runtime_was_free,
        "a 20 ms timer did not fire in {PATIENCE:?} while the body's spill file \
         could not be opened: BodyWriter::append blocked the runtime thread"
    );
}

#[test]
fn opening_a_body_file_does_no_io_and_reads_say_they_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = current_thread_runtime();
    let queue = Queue::open(dir.path(), QueueOptions::default()).expect("queue opens");
    let id = runtime
        .block_on(queue.enqueue(envelope(), &vec![b'y'; 100 * 1024]))
        .expect("enqueue");
    let small = runtime
        .block_on(queue.enqueue(envelope(), b"Subject: small\r\n\r\nx\r\n"))
        .expect("enqueue");
    assert!(!queue.open_body(&small).expect("open").is_file());
    // The body file becomes a FIFO with no writer: opening it blocks.
    let path = dir.path().join("bodies").join(id.as_str());
    std::fs::remove_file(&path).expect("remove the body file");
    mkfifo(&path);

    let (opened, open) = mpsc::channel();
    let opener = {
        let queue = queue.clone();
        let id = id.clone();
        std::thread::spawn(move || {
            let reader = queue.open_body(&id).expect("open_body");
            let _ = opened.send(reader.is_file());
        })
    };
    let result = open.recv_timeout(PATIENCE);
    // Un-stick a blocked open: a writer end lets it return. Non-blocking,
    // so that with no reader waiting this fails (ENXIO) instead of hanging.
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path);
    opener.join().expect("the opener ends");
    match result {
        Ok(is_file) => assert!(is_file, "a 100 KiB body is read from a file"),
        Err(_) => panic!(
            "Queue::open_body did not return in {PATIENCE:?} while the body file \
             could not be opened: it did file I/O on the caller's thread"
        ),
    }
    runtime.block_on(queue.close()).expect("close");
}

#[test]
fn a_lazily_opened_body_file_reads_back_byte_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = current_thread_runtime();
    let queue = Queue::open(dir.path(), QueueOptions::default()).expect("queue opens");
    let body: Vec<u8> = (0..300 * 1024u32).map(|i| (i % 253) as u8).collect();
    let mut writer = queue.new_body().expect("new body");
    runtime.block_on(async {
        for piece in body.chunks(7_000) {
            writer.append(piece).await.expect("append");
        }
    });
    let id = runtime
        .block_on(queue.commit(envelope(), writer))
        .expect("commit");
    let mut read = Vec::new();
    queue
        .open_body(&id)
        .expect("open")
        .read_to_end(&mut read)
        .expect("read");
    assert!(read == body, "300 KiB body differs after the round trip");
    // A missing file shows at the first read, naming the message.
    let gone = queue.open_body(&id).expect("open");
    std::fs::remove_file(dir.path().join("bodies").join(id.as_str())).expect("remove");
    let mut gone = gone;
    let error = gone.read(&mut [0u8; 16]).expect_err("the file is gone");
    assert!(error.to_string().contains(id.as_str()), "{error}");
    runtime.block_on(queue.close()).expect("close");
}
