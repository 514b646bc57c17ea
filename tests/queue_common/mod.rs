//! Helpers for the queue-management tests: a pre-filled spool (written with
//! the queue crate before the binary starts), a config with every delivery
//! routed to a loopback SMTP sink, a tiny SMTP sink, an HTTP helper, and the
//! JSON contract check.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use sluice_queue::{Envelope, Queue, QueueOptions};

/// Opens the spool in this test process. Retries while it reports `Locked`:
/// a process that another test thread is forking at that moment holds a copy
/// of the previous holder's flock until it execs.
pub fn open_spool(spool: &Path) -> Queue {
    let start = std::time::Instant::now();
    loop {
        match Queue::open(spool, QueueOptions::default()) {
            Ok(queue) => return queue,
            Err(sluice_queue::QueueError::Locked { .. })
                if start.elapsed() < Duration::from_secs(20) =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(error) => panic!("open the test spool: {error}"),
        }
    }
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let queue = open_spool(spool);
        let mut ids = Vec::new();
        for seed in seeds {
            let envelope = Envelope {
                sender: seed.sender.to_string(),
                recipients: seed.recipients.iter().map(|r| r.to_string()).collect(),
                smtputf8: false,
                body_8bit: false,
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
        queue.close().await.expect("close the test spool");
        ids
    })
}

/// Writes `count` held messages concurrently (they share fsyncs); returns
/// their IDs sorted (= arrival order, as listed).
pub fn fill_many_held(spool: &Path, count: usize) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let queue = open_spool(spool);
        let one = |index: usize| {
            let queue = queue.clone();
            async move {
                let envelope = Envelope {
                    sender: "bulk@example.org".to_string(),
                    recipients: vec![format!("r{index}@example.net")],
                    smtputf8: false,
                    body_8bit: false,
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
        queue.close().await.expect("close the test spool");
        ids.sort();
        ids
    })
}

/// A complete config in `dir`: spool `dir/spool`, listeners and admin API on
/// loopback port 0, `admin_extra` inside `[admin]`, every domain routed to
/// `route` (a loopback address), DNS pointed at a dead loopback port so nothing
/// leaves the machine, and `extra` appended.
pub fn config_text(dir: &Path, route: SocketAddr, admin_extra: &str, extra: &str) -> String {
    format!(
        "hostname = \"sluice.test\"\n\n\
         [spool]\npath = \"{spool}\"\n\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"relay\"\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\n{admin_extra}\n\n\
         [delivery]\ntls = \"disabled\"\nretry_initial = \"1h\"\nretry_max = \"2h\"\nconnect_timeout = \"2s\"\n\n\
         [dns]\nnameservers = [\"127.0.0.1:9\"]\n\n\
         [routes]\n\"*\" = \"{route}\"\n\n\
         [log]\nlevel = \"info\"\n\n{extra}\n",
        spool = dir.join("spool").display()
    )
}

/// Writes `text` as `dir/sluice.toml`; returns its path.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Runs `sluice <args> --config <config>`; returns (exit code, stdout, stderr).
pub fn cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("SLUICE_CONFIG")
        .output()
        .expect("run sluice");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Like [`cli`], asserting exit 0; returns stdout.
pub fn cli_ok(config: &Path, args: &[&str]) -> String {
    let (code, stdout, stderr) = cli(config, args);
    assert_eq!(
        code, 0,
        "sluice {args:?} exited {code}\nstdout: {stdout}\nstderr: {stderr}"
    );
    stdout
}

/// An answer of the admin API.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub body: String,
    pub content_type: Option<String>,
    pub link: Option<String>,
    pub next_after: Option<String>,
    pub www_authenticate: Option<String>,
}

impl HttpReply {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {:?}", self.body))
    }
}

/// One HTTP request to the admin API at `admin`.
pub fn http(method: &str, admin: SocketAddr, path: &str, token: Option<&str>) -> HttpReply {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(20))
        .build();
    let mut request = agent.request(method, &format!("http://{admin}{path}"));
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let response = match if method == "GET" {
        request.call()
    } else {
        request.send_bytes(&[])
    } {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("{method} {path}: {error}"),
    };
    let header = |name: &str| response.header(name).map(str::to_string);
    let status = response.status();
    let content_type = header("content-type");
    let link = header("link");
    let next_after = header("sluice-next-after");
    let www_authenticate = header("www-authenticate");
    let body = response.into_string().expect("read the body");
    HttpReply {
        status,
        body,
        content_type,
        link,
        next_after,
        www_authenticate,
    }
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .unwrap_or_else(|| panic!("expected an object, got {value}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

fn is_rfc3339(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|text| chrono::DateTime::parse_from_rfc3339(text).is_ok())
}

/// Asserts that `message` is exactly a DESIGN.md message object.
pub fn assert_message_shape(message: &Value) {
    assert_eq!(
        keys(message),
        ["held", "id", "received_at", "recipients", "sender", "size"],
        "message object keys: {message}"
    );
    assert!(
        message["id"]
            .as_str()
            .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()))
    );
    assert!(message["sender"].is_string(), "{message}");
    assert!(message["size"].is_u64(), "{message}");
    assert!(is_rfc3339(&message["received_at"]), "{message}");
    assert!(message["held"].is_boolean(), "{message}");
    let recipients = message["recipients"].as_array().expect("recipients array");
    assert!(!recipients.is_empty(), "{message}");
    for recipient in recipients {
        assert_eq!(
            keys(recipient),
            [
                "address",
                "attempts",
                "last_reply",
                "next_attempt_at",
                "status"
            ],
            "recipient object keys: {recipient}"
        );
        assert!(recipient["address"].is_string());
        assert!(
            ["pending", "deferred", "delivered", "failed"]
                .contains(&recipient["status"].as_str().unwrap_or("")),
            "{recipient}"
        );
        assert!(recipient["attempts"].is_u64());
        assert!(
            recipient["next_attempt_at"].is_null() || is_rfc3339(&recipient["next_attempt_at"]),
            "{recipient}"
        );
        assert!(
            recipient["last_reply"].is_null() || recipient["last_reply"].is_string(),
            "{recipient}"
        );
    }
}

/// What the SMTP sink does with a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkMode {
    /// 250 to everything.
    Accept,
    /// 451 to every RCPT: the recipient is deferred.
    TempFail,
}

/// A message the sink accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

/// A tiny SMTP server on a loopback port: the destination of every delivery
/// in these tests.
pub struct Sink {
    pub address: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    mode: Arc<Mutex<SinkMode>>,
}

impl Sink {
    /// Starts a sink on 127.0.0.1, port 0.
    pub fn start(mode: SinkMode) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the SMTP sink");
        let address = listener.local_addr().expect("sink address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let mode = Arc::new(Mutex::new(mode));
        let (store, modes) = (received.clone(), mode.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (store, modes) = (store.clone(), modes.clone());
                std::thread::spawn(move || {
                    let _ = serve_sink(stream, &store, &modes);
                });
            }
        });
        Sink {
            address,
            received,
            mode,
        }
    }

    /// Changes what the sink answers from the next transaction on.
    pub fn set_mode(&self, mode: SinkMode) {
        *self.mode.lock().expect("sink mode lock") = mode;
    }

    /// Messages accepted so far.
    pub fn messages(&self) -> Vec<Received> {
        self.received.lock().expect("sink lock").clone()
    }

    /// Whether a message to `recipient` has arrived.
    pub fn got_mail_for(&self, recipient: &str) -> bool {
        self.messages()
            .iter()
            .any(|message| message.to.iter().any(|to| to == recipient))
    }
}

fn angle_address(argument: &str) -> String {
    let start = argument.find('<').map_or(0, |i| i + 1);
    let end = argument[start..]
        .find('>')
        .map_or(argument.len(), |i| start + i);
    argument[start..end].to_string()
}

fn serve_sink(
    stream: TcpStream,
    store: &Mutex<Vec<Received>>,
    mode: &Mutex<SinkMode>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    writer.write_all(b"220 sink.test ESMTP\r\n")?;
    let mut from = String::new();
    let mut to = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end();
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-sink.test\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 PIPELINING\r\n"
        } else if upper.starts_with("HELO") {
            b"250 sink.test\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            from = angle_address(&line[10..]);
            to.clear();
            b"250 2.1.0 Ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            if *mode.lock().expect("sink mode lock") == SinkMode::TempFail {
                b"451 4.3.0 sink says try later\r\n"
            } else {
                to.push(angle_address(&line[8..]));
                b"250 2.1.5 Ok\r\n"
            }
        } else if upper == "DATA" {
            if to.is_empty() {
                b"554 5.5.1 no valid recipients\r\n"
            } else {
                writer.write_all(b"354 go ahead\r\n")?;
                let mut data = String::new();
                loop {
                    let mut body_line = String::new();
                    if reader.read_line(&mut body_line)? == 0 {
                        return Ok(());
                    }
                    if body_line == ".\r\n" {
                        break;
                    }
                    let body_line = body_line.strip_prefix('.').unwrap_or(&body_line);
                    data.push_str(body_line);
                }
                store.lock().expect("sink lock").push(Received {
                    from: from.clone(),
                    to: std::mem::take(&mut to),
                    data,
                });
                b"250 2.0.0 Ok: queued\r\n"
            }
        } else if upper == "RSET" {
            to.clear();
            b"250 2.0.0 Ok\r\n"
        } else if upper == "NOOP" {
            b"250 2.0.0 Ok\r\n"
        } else if upper == "QUIT" {
            writer.write_all(b"221 2.0.0 Bye\r\n")?;
            return Ok(());
        } else {
            b"502 5.5.2 not implemented\r\n"
        };
        writer.write_all(reply)?;
    }
}
