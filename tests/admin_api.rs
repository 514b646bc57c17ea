//! The admin HTTP API of a running server: JSON shapes, filters and paging,
//! actions, errors, the bearer token, metrics, and the refusal to serve a
//! non-loopback address without a token.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod admin;
    pub mod destination;
    pub mod server;
    pub mod smtp;
    pub mod spool;
    pub use {server::*, smtp::*};
}

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::admin::{HttpReply, assert_message_shape, http};
use common::destination::{Sink, SinkMode};
use common::spool::{Seed, fill};
use common::{DEADLINE, Sluice, field, routed_config_text, wait_for};
use serde_json::Value;

/// Starts a server on a spool pre-filled with `seeds`, routing all mail to a
/// sink in `mode`.
fn server(seeds: &[Seed], admin_extra: &str, mode: SinkMode) -> (Sluice, Sink, Vec<String>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = Sink::start(mode);
    let ids = fill(&dir.path().join("spool"), seeds);
    let text = routed_config_text(dir.path(), sink.address, admin_extra, "");
    (Sluice::start_with(dir, &text), sink, ids)
}

fn ids_of(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("expected an array, got {list}"))
        .iter()
        .map(|message| message["id"].as_str().expect("id").to_string())
        .collect()
}

fn assert_error(reply: &HttpReply, status: u16, words: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    let body = reply.json();
    let keys: Vec<&String> = body.as_object().expect("error object").keys().collect();
    assert_eq!(keys, ["error"], "error body is {{\"error\": …}}: {body}");
    let message = body["error"].as_str().expect("error text");
    assert!(
        message.contains(words),
        "expected {words:?} in the error, got {message:?}"
    );
}

#[test]
fn queue_list_is_a_json_array_of_contract_message_objects() {
    let (sluice, _sink, ids) = server(
        &[
            Seed {
                sender: "a@example.org",
                recipients: &["b@example.net", "c@example.com"],
                held: false,
            },
            Seed {
                sender: "",
                recipients: &["a@example.org"],
                held: true,
            },
        ],
        "",
        SinkMode::TempFail,
    );
    let reply = http("GET", sluice.admin, "/v1/queue", None);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        reply
            .content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("application/json")),
        "{reply:?}"
    );
    let list = reply.json();
    assert_eq!(ids_of(&list), ids, "arrival order");
    for message in list.as_array().expect("array") {
        assert_message_shape(message);
    }
    assert_eq!(list[0]["sender"], "a@example.org");
    assert_eq!(list[0]["held"], false);
    assert_eq!(list[0]["recipients"][1]["address"], "c@example.com");
    assert_eq!(list[1]["sender"], "", "the null sender is \"\"");
    assert_eq!(list[1]["held"], true);
}

#[test]
fn show_answers_one_object_and_errors_are_json_with_the_right_status() {
    let (sluice, _sink, ids) = server(
        &[Seed {
            sender: "a@example.org",
            recipients: &["b@example.net"],
            held: true,
        }],
        "",
        SinkMode::TempFail,
    );
    let admin = sluice.admin;
    let reply = http("GET", admin, &format!("/v1/queue/{}", ids[0]), None);
    assert_eq!(reply.status, 200, "{reply:?}");
    let message = reply.json();
    assert_message_shape(&message);
    assert_eq!(message["id"], ids[0].as_str());

    assert_error(
        &http("GET", admin, "/v1/queue/NoSuchId1", None),
        404,
        "no such message",
    );
    for (method, action) in [
        ("POST", "/retry"),
        ("POST", "/hold"),
        ("POST", "/release"),
        ("POST", "/bounce"),
        ("DELETE", ""),
    ] {
        assert_error(
            &http(method, admin, &format!("/v1/queue/NoSuchId1{action}"), None),
            404,
            "no such message",
        );
    }
    assert_error(
        &http("GET", admin, "/v1/queue/not-an-id", None),
        400,
        "bad queue ID",
    );
    assert_error(
        &http("POST", admin, &format!("/v1/queue/{}/retry", ids[0]), None),
        409,
        "held",
    );
    assert_error(
        &http("GET", admin, "/v1/nothing", None),
        404,
        "no such endpoint",
    );
    assert_error(
        &http("PUT", admin, "/v1/queue", None),
        405,
        "method not allowed",
    );
    assert_error(
        &http("GET", admin, "/v1/queue?status=stuck", None),
        400,
        "bad status",
    );
}

#[test]
fn list_filters_and_pages_with_a_next_cursor() {
    let (sluice, _sink, ids) = server(
        &[
            Seed {
                sender: "a@example.org",
                recipients: &["x@example.net"],
                held: true,
            },
            Seed {
                sender: "",
                recipients: &["y@example.com"],
                held: true,
            },
            Seed {
                sender: "B@Example.org",
                recipients: &["z@example.net"],
                held: false,
            },
        ],
        "",
        SinkMode::TempFail,
    );
    let admin = sluice.admin;
    let get = |path: &str| {
        let reply = http("GET", admin, path, None);
        assert_eq!(reply.status, 200, "{path}: {reply:?}");
        ids_of(&reply.json())
    };
    assert_eq!(get("/v1/queue?status=held"), ids[..2]);
    assert_eq!(get("/v1/queue?status=failed"), Vec::<String>::new());
    assert_eq!(get("/v1/queue?domain=example.com"), ids[1..2]);
    assert_eq!(
        get("/v1/queue?domain=EXAMPLE.NET"),
        [ids[0].clone(), ids[2].clone()]
    );
    assert_eq!(get("/v1/queue?sender="), ids[1..2], "empty sender = <>");
    assert_eq!(get("/v1/queue?sender=b%40example.org"), ids[2..3]);
    assert_eq!(get(&format!("/v1/queue?after={}", ids[0])), ids[1..]);

    // Paging: follow the cursor until no `Link` comes back.
    let mut seen = Vec::new();
    let mut path = "/v1/queue?limit=2".to_string();
    loop {
        let reply = http("GET", admin, &path, None);
        assert_eq!(reply.status, 200, "{reply:?}");
        let page = ids_of(&reply.json());
        assert!(page.len() <= 2, "{page:?}");
        seen.extend(page.clone());
        match reply.link {
            Some(link) => {
                assert!(link.ends_with("; rel=\"next\""), "{link}");
                let next = link
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .expect("link target")
                    .to_string();
                let after = reply.next_after.expect("Sluice-Next-After with Link");
                assert_eq!(&after, page.last().expect("a full page"));
                assert!(next.contains(&format!("after={after}")), "{next}");
                path = next;
            }
            None => {
                assert!(reply.next_after.is_none());
                break;
            }
        }
        assert!(seen.len() <= ids.len(), "paging does not end: {seen:?}");
    }
    assert_eq!(seen, ids);
    assert_error(&http("GET", admin, "/v1/queue?limit=0", None), 400, "limit");
}

#[test]
fn actions_change_the_message_and_are_logged_with_the_queue_id() {
    let (sluice, _sink, ids) = server(
        &[
            Seed {
                sender: "a@example.org",
                recipients: &["b@example.net"],
                held: false,
            },
            Seed {
                sender: "a@example.org",
                recipients: &["c@example.net"],
                held: false,
            },
        ],
        "",
        SinkMode::TempFail,
    );
    let admin = sluice.admin;
    let id = &ids[0];
    let reply = http("POST", admin, &format!("/v1/queue/{id}/hold"), None);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_message_shape(&reply.json());
    assert_eq!(reply.json()["held"], true);
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "action=hold"]);
    assert_eq!(field(&line, "action"), "hold");

    let reply = http("POST", admin, &format!("/v1/queue/{id}/release"), None);
    assert_eq!(reply.json()["held"], false, "{reply:?}");
    sluice.wait_log(&[&format!("queue_id={id}"), "action=release"]);

    let reply = http("POST", admin, &format!("/v1/queue/{id}/retry"), None);
    assert_eq!(reply.status, 200, "{reply:?}");
    sluice.wait_log(&[&format!("queue_id={id}"), "action=retry"]);

    let reply = http("POST", admin, "/v1/queue/retry", None);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.json()["retried"].is_u64(), "{reply:?}");

    let reply = http("DELETE", admin, &format!("/v1/queue/{id}"), None);
    assert_eq!(reply.status, 204, "{reply:?}");
    sluice.wait_log(&[&format!("queue_id={id}"), "action=delete"]);
    assert_eq!(
        http("GET", admin, &format!("/v1/queue/{id}"), None).status,
        404
    );

    let reply = http("DELETE", admin, "/v1/queue", None);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["deleted"], 1);
    sluice.wait_log(&[&format!("queue_id={}", ids[1]), "action=delete"]);
    assert_eq!(http("GET", admin, "/v1/queue", None).body, "[]\n");
}

#[test]
fn bearer_token_is_required_on_every_endpoint_but_health() {
    let (sluice, _sink, ids) = server(
        &[Seed {
            sender: "a@example.org",
            recipients: &["b@example.net"],
            held: true,
        }],
        "token = \"s3cret-token\"",
        SinkMode::TempFail,
    );
    let admin = sluice.admin;
    let show = format!("/v1/queue/{}", ids[0]);
    for (method, path) in [
        ("GET", "/v1/queue"),
        ("GET", show.as_str()),
        ("POST", "/v1/queue/retry"),
        ("DELETE", show.as_str()),
    ] {
        for token in [None, Some("wrong"), Some("s3cret-token2")] {
            let reply = http(method, admin, path, token);
            assert_error(&reply, 401, "bearer token");
            assert!(
                reply
                    .www_authenticate
                    .as_deref()
                    .is_some_and(|v| v.starts_with("Bearer")),
                "{reply:?}"
            );
        }
    }
    // DESIGN.md: `/health` and `/metrics` are the only routes open to all.
    assert_eq!(http("GET", admin, "/health", None).status, 200);
    assert_eq!(
        common::admin::http_anonymous("GET", admin, "/metrics").status,
        200
    );
    assert_eq!(http("GET", admin, &show, Some("s3cret-token")).status, 200);
    // Nothing was deleted by the refused DELETE.
    assert_eq!(http("GET", admin, &show, Some("s3cret-token")).status, 200);

    // The CLI goes through the admin socket, where the peer's uid is the
    // credential: it needs no token, so a config with a wrong one works too.
    let (code, stdout, stderr) = sluice.cli(&["queue", "list"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains(&ids[0]), "{stdout}");
    let wrong = sluice.dir.path().join("wrong.toml");
    let text = std::fs::read_to_string(&sluice.config_path)
        .expect("config")
        .replace("s3cret-token", "not-the-token");
    std::fs::write(&wrong, text).expect("write config");
    let (code, stdout, stderr) = common::cli(&wrong, &["queue", "list"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&ids[0]), "{stdout}");
}

#[test]
fn server_refuses_a_non_loopback_admin_address_without_a_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = Sink::start(SinkMode::Accept);
    // 192.0.2.1 (TEST-NET-1, RFC 5737): not loopback, and never bindable
    // here, so even a server that wrongly accepted it could not listen.
    let text = routed_config_text(dir.path(), sink.address, "", "").replace(
        "[admin]\naddress = \"127.0.0.1:0\"",
        "[admin]\naddress = \"192.0.2.1:8025\"",
    );
    let config = common::write_config(dir.path(), &text);
    let mut child = Command::new(common::binary())
        .args(["serve", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("sluice kept running with a non-loopback admin address and no token");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("admin") && stderr.contains("token") && stderr.contains("192.0.2.1"),
        "a clear message naming the address and the token: {stderr}"
    );
}

/// The value of an unlabelled or labelled sample in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.split(' ').next() == Some(name))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[test]
fn metrics_show_queue_sizes_and_change_after_delivery() {
    let (sluice, sink, _ids) = server(
        &[
            Seed {
                sender: "a@example.org",
                recipients: &["held@example.net"],
                held: true,
            },
            Seed {
                sender: "a@example.org",
                recipients: &["go@example.net"],
                held: false,
            },
        ],
        "",
        SinkMode::Accept,
    );
    let admin = sluice.admin;
    let reply = http("GET", admin, "/metrics", None);
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{reply:?}"
    );
    assert_eq!(
        sample(&reply.body, "sluice_queue_messages{state=\"held\"}"),
        Some(1.0),
        "{}",
        reply.body
    );
    wait_for("delivery to the sink", DEADLINE, || {
        sink.got_mail_for("go@example.net").then_some(())
    });
    let text = wait_for("metrics after delivery", DEADLINE, || {
        let text = http("GET", admin, "/metrics", None).body;
        (sample(&text, "sluice_recipients_delivered_total") == Some(1.0)
            && sample(&text, "sluice_queue_messages{state=\"queued\"}") == Some(0.0))
        .then_some(text)
    });
    assert_eq!(
        sample(&text, "sluice_queue_messages{state=\"held\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "sluice_queue_recipients{status=\"pending\"}"),
        Some(1.0),
        "{text}"
    );
}

#[test]
fn metrics_count_messages_received_over_smtp() {
    let (sluice, _sink, _) = server(&[], "", SinkMode::TempFail);
    let before = http("GET", sluice.admin, "/metrics", None).body;
    assert_eq!(
        sample(&before, "sluice_messages_received_total"),
        Some(0.0),
        "{before}"
    );
    let mut client = sluice.connect();
    client.send_message(
        "a@example.org",
        &["b@example.net"],
        "Subject: metrics\r\n\r\nHello.\r\n",
    );
    wait_for("messages_received to count the message", DEADLINE, || {
        let text = http("GET", sluice.admin, "/metrics", None).body;
        (sample(&text, "sluice_messages_received_total") == Some(1.0)).then_some(())
    });
}

/// The `Authorization` header line with the token sluice generated for
/// the test server at `admin`.
fn bearer(admin: std::net::SocketAddr) -> String {
    let token = common::server::generated_token(admin).expect("a generated admin token");
    format!("Authorization: Bearer {token}\r\n")
}

/// Sends `request` as is on a new connection and reads the answer to the
/// end of the connection; returns (status, body).
fn raw_http(admin: std::net::SocketAddr, request: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(admin).expect("connect to the admin API");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream.write_all(request).expect("send the request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read the answer");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {answer:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head:?}"));
    (status, body.to_string())
}

/// Waits until the server closes `stream` (end of file or reset); returns
/// how long that took. Panics when it stays open for `limit`.
fn closed_after(mut stream: std::net::TcpStream, started: Instant, limit: Duration) -> Duration {
    use std::io::{ErrorKind, Read};
    stream.set_read_timeout(Some(limit)).expect("timeout");
    let mut buffer = [0u8; 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return started.elapsed(),
            Ok(_) => continue, // a 408 answer before the close is fine
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the connection is still open after {limit:?}")
            }
            Err(_) => return started.elapsed(), // reset
        }
    }
}

#[test]
fn slow_and_silent_clients_are_disconnected_while_requests_still_succeed() {
    use std::io::Write;
    let (sluice, _sink, _) = server(&[], "", SinkMode::Accept);
    let admin = sluice.admin;
    let started = Instant::now();
    let silent = std::net::TcpStream::connect(admin).expect("connect");
    // A keep-alive connection that asks once, then idles.
    let mut idle = std::net::TcpStream::connect(admin).expect("connect");
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: sluice\r\n\r\n")
        .expect("request");
    let mut slow = std::net::TcpStream::connect(admin).expect("connect");
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: sluice\r\n")
        .expect("request line");
    // Slowloris: a header field every 200 ms, never the end of the head.
    let mut trickle = slow.try_clone().expect("clone");
    let trickler = std::thread::spawn(move || {
        for _ in 0..150 {
            if trickle.write_all(b"X-Slow: 1\r\n").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    // Meanwhile the API answers everyone else.
    for _ in 0..3 {
        assert_eq!(http("GET", admin, "/health", None).status, 200);
        assert_eq!(http("GET", admin, "/v1/queue", None).status, 200);
    }
    let limit = Duration::from_secs(25);
    for (what, stream) in [("slow", slow), ("silent", silent), ("idle", idle)] {
        let elapsed = closed_after(stream, started, limit);
        // The head must come within 10 s of the connection's start.
        assert!(
            elapsed >= Duration::from_secs(9) && elapsed <= Duration::from_secs(16),
            "the {what} client was disconnected after {elapsed:?}, expected about 10 s"
        );
    }
    trickler.join().expect("trickler");
    assert_eq!(http("GET", admin, "/health", None).status, 200);
}

#[test]
fn connections_over_the_limit_get_503_and_service_resumes_when_they_close() {
    let (sluice, _sink, _) = server(&[], "", SinkMode::Accept);
    let admin = sluice.admin;
    // sluice serves at most 64 admin connections at once.
    let idle: Vec<std::net::TcpStream> = (0..64)
        .map(|_| std::net::TcpStream::connect(admin).expect("connect"))
        .collect();
    let reply = http("GET", admin, "/health", None);
    assert_error(&reply, 503, "too many admin API connections");
    drop(idle);
    wait_for("the API to answer again", DEADLINE, || {
        (http("GET", admin, "/health", None).status == 200).then_some(())
    });
}

#[test]
fn an_oversized_body_gets_413_with_a_json_error_and_a_small_one_is_fine() {
    let (sluice, _sink, _) = server(&[], "", SinkMode::Accept);
    let admin = sluice.admin;
    let (status, body) = raw_http(
        admin,
        format!(
            "POST /v1/queue/retry HTTP/1.1\r\nHost: {admin}\r\nX-Sluice-Request: 1\r\n\
             Content-Length: 1048576\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(status, 413, "{body}");
    let error: Value = serde_json::from_str(&body).expect("a JSON error body");
    assert!(
        error["error"]
            .as_str()
            .is_some_and(|text| text.contains("too large")),
        "{body}"
    );
    let (status, body) = raw_http(
        admin,
        format!(
            "POST /v1/queue/retry HTTP/1.1\r\nHost: {admin}\r\nX-Sluice-Request: 1\r\n\
             {}Content-Length: 2\r\nConnection: close\r\n\r\n{{}}",
            bearer(admin)
        )
        .as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON")["retried"],
        0
    );
}

/// The queue gauges as `/v1/queue` counts them: messages by state (queued,
/// held) and recipients by status.
fn counts_from_list(admin: std::net::SocketAddr) -> Vec<(String, f64)> {
    let list = http("GET", admin, "/v1/queue", None).json();
    let messages = list.as_array().expect("an array");
    let held = messages.iter().filter(|m| m["held"] == true).count();
    let mut counts = vec![
        (
            "sluice_queue_messages{state=\"queued\"}".to_string(),
            (messages.len() - held) as f64,
        ),
        (
            "sluice_queue_messages{state=\"held\"}".to_string(),
            held as f64,
        ),
    ];
    for status in ["pending", "deferred", "delivered", "failed"] {
        let count = messages
            .iter()
            .flat_map(|m| m["recipients"].as_array().expect("recipients"))
            .filter(|r| r["status"] == status)
            .count();
        counts.push((
            format!("sluice_queue_recipients{{status=\"{status}\"}}"),
            count as f64,
        ));
    }
    counts
}

fn assert_gauges_match_the_list(admin: std::net::SocketAddr, after: &str) {
    // Delivery runs meanwhile: look until both views agree.
    wait_for(
        &format!("queue gauges equal to /v1/queue after {after}"),
        DEADLINE,
        || {
            let expected = counts_from_list(admin);
            let text = http("GET", admin, "/metrics", None).body;
            let got: Vec<(String, f64)> = expected
                .iter()
                .map(|(name, _)| (name.clone(), sample(&text, name).unwrap_or(-1.0)))
                .collect();
            (got == expected && counts_from_list(admin) == expected).then_some(())
        },
    );
}

#[test]
fn queue_gauges_stay_exact_after_every_action() {
    let (sluice, _sink, ids) = server(
        &[
            Seed {
                sender: "a@example.org",
                recipients: &["b@example.net", "c@example.com"],
                held: false,
            },
            Seed {
                sender: "a@example.org",
                recipients: &["d@example.net"],
                held: true,
            },
            Seed {
                sender: "",
                recipients: &["e@example.net"],
                held: false,
            },
        ],
        "",
        SinkMode::TempFail,
    );
    let admin = sluice.admin;
    assert_gauges_match_the_list(admin, "start");
    let post = |path: String| {
        let reply = http("POST", admin, &path, None);
        assert!(reply.status < 300, "{path}: {reply:?}");
    };
    post(format!("/v1/queue/{}/hold", ids[0]));
    assert_gauges_match_the_list(admin, "hold");
    post(format!("/v1/queue/{}/release", ids[1]));
    assert_gauges_match_the_list(admin, "release");
    post(format!("/v1/queue/{}/retry", ids[1]));
    assert_gauges_match_the_list(admin, "retry");
    post("/v1/queue/retry".to_string());
    assert_gauges_match_the_list(admin, "retry --all");
    post(format!("/v1/queue/{}/bounce", ids[0]));
    assert_gauges_match_the_list(admin, "bounce");
    post(format!("/v1/queue/{}/bounce", ids[2]));
    assert_gauges_match_the_list(admin, "bounce of a bounce");
    let reply = http("DELETE", admin, &format!("/v1/queue/{}", ids[1]), None);
    assert_eq!(reply.status, 204, "{reply:?}");
    assert_gauges_match_the_list(admin, "delete");
    let reply = http("DELETE", admin, "/v1/queue", None);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_gauges_match_the_list(admin, "delete --all");
    let counts = counts_from_list(admin);
    assert!(counts.iter().all(|(_, n)| *n == 0.0), "{counts:?}");
}

#[test]
fn a_foreign_host_is_refused_against_dns_rebinding() {
    let (sluice, _sink, ids) = server(
        &[Seed {
            sender: "a@example.org",
            recipients: &["b@example.net"],
            held: false,
        }],
        "",
        SinkMode::TempFail,
    );
    let admin = sluice.admin;
    for target in ["/v1/queue", "/health", "/metrics"] {
        let request =
            format!("GET {target} HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n");
        let (status, body) = raw_http(admin, request.as_bytes());
        assert_eq!(status, 421, "GET {target} with Host: evil.example: {body}");
        assert!(!body.contains(&ids[0]), "the queue leaked: {body}");
        let error: Value = serde_json::from_str(&body).expect("a JSON error body");
        assert!(
            error["error"].as_str().is_some_and(|e| e.contains("Host")),
            "{body}"
        );
    }
    let port = admin.port();
    for host in [format!("evil.example:{port}"), format!("127.0.0.2:{port}")] {
        let request =
            format!("GET /v1/queue HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let (status, body) = raw_http(admin, request.as_bytes());
        assert_eq!(status, 421, "Host: {host}: {body}");
    }
    for host in [admin.to_string(), format!("localhost:{port}")] {
        let request = format!(
            "GET /v1/queue HTTP/1.1\r\nHost: {host}\r\n{}Connection: close\r\n\r\n",
            bearer(admin)
        );
        let (status, body) = raw_http(admin, request.as_bytes());
        assert_eq!(status, 200, "Host: {host}: {body}");
        assert!(body.contains(&ids[0]), "{body}");
    }
}

#[test]
fn cross_site_state_changes_are_refused_and_the_cli_still_works() {
    let (sluice, _sink, ids) = server(
        &[Seed {
            sender: "a@example.org",
            recipients: &["b@example.net"],
            held: false,
        }],
        "",
        SinkMode::TempFail,
    );
    let admin = sluice.admin;
    let hold = format!("/v1/queue/{}/hold", ids[0]);
    // What a web page can send without a preflight: a "simple" request.
    let refused = [
        format!(
            "POST {hold} HTTP/1.1\r\nHost: {admin}\r\nOrigin: http://evil.example\r\n\
             Content-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        ),
        format!(
            "POST /v1/queue/retry HTTP/1.1\r\nHost: {admin}\r\nOrigin: http://evil.example\r\n\
             Content-Type: text/plain\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        // Even with the custom header, a foreign Origin is refused.
        format!(
            "POST {hold} HTTP/1.1\r\nHost: {admin}\r\nOrigin: http://evil.example\r\n\
             X-Sluice-Request: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        // No Origin (an old browser, a form), no custom header, no token.
        format!(
            "POST {hold} HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "DELETE /v1/queue HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    ];
    for request in &refused {
        let (status, body) = raw_http(admin, request.as_bytes());
        assert_eq!(status, 403, "{request:?}: {body}");
        let error: Value = serde_json::from_str(&body).expect("a JSON error body");
        assert!(
            error["error"]
                .as_str()
                .is_some_and(|e| e.contains("refused")),
            "{body}"
        );
    }
    let (status, body) = raw_http(
        admin,
        format!(
            "GET /v1/queue/{} HTTP/1.1\r\nHost: {admin}\r\n{}Connection: close\r\n\r\n",
            ids[0],
            bearer(admin)
        )
        .as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    let message: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(message["held"], false, "nothing was held: {body}");
    assert_eq!(
        http("GET", admin, "/v1/queue", None)
            .json()
            .as_array()
            .map(Vec::len),
        Some(1),
        "nothing was deleted"
    );

    // No CORS preflight is answered.
    let request = format!(
        "OPTIONS {hold} HTTP/1.1\r\nHost: {admin}\r\nOrigin: http://evil.example\r\n\
         Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: x-sluice-request\r\n\
         Connection: close\r\n\r\n"
    );
    let head = raw_head(admin, request.as_bytes());
    assert!(
        !head.starts_with("HTTP/1.1 2"),
        "a preflight must not succeed: {head}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("access-control-"),
        "no CORS headers: {head}"
    );

    // The same request from our own origin with the header is served, and
    // the CLI (which sends it) works unchanged.
    let (status, body) = raw_http(
        admin,
        format!(
            "POST {hold} HTTP/1.1\r\nHost: {admin}\r\nOrigin: http://{admin}\r\n\
             X-Sluice-Request: 1\r\n{}Content-Length: 0\r\nConnection: close\r\n\r\n",
            bearer(admin)
        )
        .as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    let config = sluice.config_path.clone();
    let (code, stdout, stderr) = common::cli(&config, &["queue", "release", &ids[0]]);
    assert_eq!(
        (code, stdout.as_str()),
        (0, format!("{}: released\n", ids[0]).as_str()),
        "{stderr}"
    );
    sluice.wait_log(&[&format!("queue_id={}", ids[0]), "action=release"]);
}

/// Sends `request` and returns the answer's head (status line and fields).
fn raw_head(admin: std::net::SocketAddr, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(admin).expect("connect to the admin API");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream.write_all(request).expect("send the request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read the answer");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    answer.split("\r\n\r\n").next().unwrap_or("").to_string()
}

/// `POST path` with a JSON `body` and the custom header; (status, JSON).
fn post_json(admin: std::net::SocketAddr, path: &str, body: &str) -> (u16, Value) {
    let token = common::server::generated_token(admin).expect("a generated admin token");
    let result = ureq::post(&format!("http://{admin}{path}"))
        .set("X-Sluice-Request", "1")
        .set("Authorization", &format!("Bearer {token}"))
        .set("Content-Type", "application/json")
        .send_string(body);
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("POST {path}: {error}"),
    };
    let status = response.status();
    (status, response.into_json().expect("a JSON answer"))
}

#[test]
fn bulk_endpoints_take_filters_or_a_list_of_ids_and_answer_counts() {
    let (sluice, _sink, ids) = server(
        &[
            Seed {
                sender: "a@example.org",
                recipients: &["b@example.net"],
                held: false,
            },
            Seed {
                sender: "c@example.org",
                recipients: &["d@example.com"],
                held: false,
            },
            Seed {
                sender: "e@example.org",
                recipients: &["f@example.net"],
                held: true,
            },
        ],
        "",
        SinkMode::TempFail,
    );
    let admin = sluice.admin;
    let reply = http("POST", admin, "/v1/queue/hold?domain=example.net", None);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.json(),
        serde_json::json!({"held": 1}),
        "the held one is not counted"
    );
    let reply = http("POST", admin, "/v1/queue/hold?older_than=1h", None);
    assert_eq!(reply.json(), serde_json::json!({"held": 0}));

    let body = format!(
        r#"{{"ids": ["{}", "{}", "ZZZZZZZZZZZZ", "a-b"]}}"#,
        ids[0], ids[2]
    );
    let (status, answer) = post_json(admin, "/v1/queue/release", &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["released"], 2, "{answer}");
    let errors = answer["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 2, "{answer}");
    assert!(
        errors[0]
            .as_str()
            .is_some_and(|e| e.contains("no such message: ZZZZZZZZZZZZ"))
            || errors[1]
                .as_str()
                .is_some_and(|e| e.contains("no such message: ZZZZZZZZZZZZ")),
        "{answer}"
    );

    let reply = http(
        "POST",
        admin,
        "/v1/queue/delete?sender=c%40example.org",
        None,
    );
    assert_eq!(reply.json(), serde_json::json!({"deleted": 1}));
    assert_eq!(
        http("GET", admin, &format!("/v1/queue/{}", ids[1]), None).status,
        404
    );
    let reply = http("DELETE", admin, "/v1/queue?domain=nowhere.example", None);
    assert_eq!(reply.json(), serde_json::json!({"deleted": 0}));

    for (path, body, words) in [
        ("/v1/queue/hold?limit=5", "", "listings"),
        ("/v1/queue/hold?older_than=soon", "", "bad age"),
        (
            "/v1/queue/hold?domain=example.net",
            r#"{"ids": []}"#,
            "not both",
        ),
        ("/v1/queue/hold", "[1, 2]", "bad body"),
    ] {
        let (status, answer) = post_json(admin, path, body);
        assert_eq!(status, 400, "{path} {body}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| e.contains(words)),
            "{answer}"
        );
    }
}

#[test]
fn summary_and_message_endpoints() {
    let (sluice, _sink, ids) = server(
        &[
            Seed {
                sender: "a@example.org",
                recipients: &["b@example.net", "c@example.net"],
                held: true,
            },
            Seed {
                sender: "",
                recipients: &["d@example.com"],
                held: true,
            },
        ],
        "",
        SinkMode::TempFail,
    );
    let admin = sluice.admin;
    let reply = http("GET", admin, "/v1/queue/summary", None);
    assert_eq!(reply.status, 200, "{reply:?}");
    let summary = reply.json();
    let keys: Vec<&String> = summary.as_object().expect("object").keys().collect();
    assert_eq!(keys, ["domains", "total"], "{summary}");
    assert_eq!(summary["total"]["messages"], 2, "{summary}");
    let row = &summary["domains"][0];
    let mut keys: Vec<&String> = row.as_object().expect("row").keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "ages",
            "deferred",
            "domain",
            "held",
            "messages",
            "suspended",
            "top_reply",
            "top_reply_count"
        ],
        "{row}"
    );
    assert_eq!(row["domain"], "example.com", "one message each: by name");
    // In bucket order on the wire (serde_json's Value would sort them).
    let buckets = [
        "0-5m", "5-10m", "10-20m", "20-40m", "40-80m", "80-160m", "160-320m", "320m+",
    ];
    let positions: Vec<usize> = buckets
        .iter()
        .map(|b| reply.body.find(&format!("\"{b}\":")).expect("every bucket"))
        .collect();
    assert!(positions.windows(2).all(|p| p[0] < p[1]), "{}", reply.body);
    assert_eq!(row["ages"].as_object().expect("ages").len(), 8, "{row}");

    let reply = http("GET", admin, &format!("/v1/queue/{}/message", ids[0]), None);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.content_type.as_deref(), Some("message/rfc822"));
    assert!(
        reply.body.starts_with("From: <a@example.org>\r\n")
            && reply.body.ends_with("\r\n\r\nHello.\r\n"),
        "{:?}",
        reply.body
    );
    let reply = http(
        "GET",
        admin,
        &format!("/v1/queue/{}/message?headers=true", ids[0]),
        None,
    );
    assert!(
        reply.body.ends_with("Message-ID: <0@client.test>\r\n") && !reply.body.contains("Hello."),
        "{:?}",
        reply.body
    );
    assert_error(
        &http("GET", admin, "/v1/queue/ZZZZZZZZZZZZ/message", None),
        404,
        "no such message",
    );
    assert_error(
        &http(
            "GET",
            admin,
            &format!("/v1/queue/{}/message?colour=red", ids[0]),
            None,
        ),
        400,
        "colour",
    );
}
