//! Bad input never panics or hangs the real binary: random and hostile bytes
//! on the SMTP port, slowloris connections, hostile admin API requests. After
//! each, the process is alive and serves a fresh client a full transaction.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod server;
    pub mod smtp;
    pub use {server::*, smtp::*};
}

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{DEADLINE, NO_DELIVERY, Sluice, SmtpClient, seed};
use rand::{Rng as _, SeedableRng as _};

/// Small timeouts so that every stuck state ends quickly.
fn hostile_config(timeout: &str) -> String {
    format!(
        "[limits]\ncommand_timeout = \"{timeout}\"\ndata_timeout = \"{timeout}\"\n\
         max_message_size = \"1MiB\"\nmax_connections_per_ip = 1000\n\n{NO_DELIVERY}"
    )
}

/// A full transaction on a fresh connection, every reply within `limit`.
/// Returns what went wrong, if anything.
fn full_transaction(address: SocketAddr, limit: Duration) -> Result<String, String> {
    let attempt = || -> std::io::Result<String> {
        let mut client = SmtpClient::try_connect(address, limit)?;
        let greeting = client.try_read_reply()?;
        if !greeting.starts_with("220") {
            return Err(std::io::Error::other(format!(
                "expected 220, got {greeting:?}"
            )));
        }
        client.try_expect("EHLO prober.test", "250")?;
        let last = client.try_transaction(
            "probe@origin.test",
            &["probe@dest.test"],
            b"Subject: probe\r\n\r\nstill serving\r\n",
        )?;
        if common::queue_id(&last).is_none() {
            return Err(std::io::Error::other(format!(
                "expected 250 queued as, got {last:?}"
            )));
        }
        let _ = client.try_send_raw(b"QUIT\r\n");
        Ok(last)
    };
    attempt().map_err(|error| format!("{error} (every reply due within {limit:?})"))
}

/// Probes the server with full transactions until `stop`; returns failures.
fn prober(
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    limit: Duration,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut failures = Vec::new();
        let mut count = 0;
        while !stop.load(Ordering::SeqCst) {
            if let Err(error) = full_transaction(address, limit) {
                failures.push(error);
            }
            count += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(count > 0, "the prober never ran");
        failures
    })
}

/// The server is alive, logged no panic, and serves a full transaction.
fn assert_healthy(sluice: &mut Sluice) {
    assert!(sluice.is_running(), "the server process died");
    let log = sluice.log_text();
    assert!(
        !log.contains("panicked"),
        "a panic in the server log:\n{log}"
    );
    if let Err(error) = full_transaction(sluice.smtp, Duration::from_secs(10)) {
        panic!("a fresh client cannot complete a transaction: {error}");
    }
}

/// How a hostile case ends on the client side.
#[derive(Debug, Clone, Copy)]
enum End {
    /// Shut down the write side, then read until the server closes.
    HalfClose,
    /// Keep the socket open and wait: the server's timeouts must end it.
    Wait,
}

/// One hostile conversation.
#[derive(Debug, Clone)]
struct Case {
    name: String,
    bytes: Vec<u8>,
    end: End,
}

fn case(name: &str, bytes: &[u8], end: End) -> Case {
    Case {
        name: name.to_string(),
        bytes: bytes.to_vec(),
        end,
    }
}

/// The fixed hostile inputs named in the brief.
fn fixed_cases() -> Vec<Case> {
    let long_line = {
        let mut line = b"EHLO ".to_vec();
        line.extend(std::iter::repeat_n(b'a', 100 * 1024));
        line.extend_from_slice(b"\r\nNOOP\r\n");
        line
    };
    let mut tls_hello = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    tls_hello.extend((0..=255u8).cycle().take(500));
    let transaction = b"EHLO x\r\nMAIL FROM:<a@origin.test>\r\nRCPT TO:<b@dest.test>\r\n".to_vec();
    let with = |tail: &[u8]| {
        let mut bytes = transaction.clone();
        bytes.extend_from_slice(tail);
        bytes
    };
    vec![
        case("nul bytes", b"EHLO a\0b\r\nMAIL FROM:<a\0@b.test>\r\n\0\0\0\r\n", End::HalfClose),
        case("100 KB line", &long_line, End::HalfClose),
        case("100 KB line, no end", &long_line[..100 * 1024], End::Wait),
        case("invalid utf-8", b"EHLO \xff\xfe\r\nMAIL FROM:<\xc3\x28@x.test>\r\nRCPT TO:<\xed\xa0\x80@y.test>\r\n", End::HalfClose),
        case("bdat before mail", b"EHLO x\r\nBDAT 10 LAST\r\n0123456789", End::HalfClose),
        case("bdat u64 max", &with(b"BDAT 18446744073709551615 LAST\r\nabc"), End::HalfClose),
        case("bdat u64 max, wait", &with(b"BDAT 18446744073709551615\r\nabc"), End::Wait),
        case("bdat overflow", &with(b"BDAT 99999999999999999999999999 LAST\r\n"), End::HalfClose),
        case("bdat negative", &with(b"BDAT -1 LAST\r\n"), End::HalfClose),
        case("bdat chunks sum past u64", &with(b"BDAT 18446744073709551615\r\nBDAT 18446744073709551615\r\n"), End::HalfClose),
        case("bdat short", &with(b"BDAT 100 LAST\r\nonly a little"), End::Wait),
        case("bdat then data", &with(b"BDAT 3\r\nabcDATA\r\n"), End::HalfClose),
        case("huge SIZE", b"EHLO x\r\nMAIL FROM:<a@origin.test> SIZE=99999999999999999999999999999\r\nMAIL FROM:<a@origin.test> SIZE=18446744073709551615\r\nMAIL FROM:<a@origin.test> SIZE=-5\r\n", End::HalfClose),
        case("truncated commands", b"MAIL FROM:<\r\nRCPT TO:\r\nEHL\r\n\r\nMAIL\r\nRCPT TO:<>\r\nAUTH\r\nAUTH PLAIN\r\n", End::HalfClose),
        case("truncated, no newline", b"MAIL FROM:<a@b", End::HalfClose),
        case("tls hello", &tls_hello, End::Wait),
        case("tls hello, closed", &tls_hello, End::HalfClose),
        case("half close mid data", &with(b"DATA\r\nSubject: x\r\n\r\nhalf"), End::HalfClose),
        case("data bare lf", &with(b"DATA\r\nSubject: x\n\nbody\n.\n\r\n.\r\n"), End::HalfClose),
        case("data, wait", &with(b"DATA\r\nSubject: x\r\n"), End::Wait),
        case("pipelined flood", &b"NOOP\r\n".repeat(20_000), End::HalfClose),
        case("rcpt flood", &with(&b"RCPT TO:<c@dest.test>\r\n".repeat(500)), End::HalfClose),
        case("starttls without tls", b"EHLO x\r\nSTARTTLS\r\n\x16\x03\x01", End::HalfClose),
        case("auth garbage", b"EHLO x\r\nAUTH PLAIN =\r\nAUTH LOGIN\r\n\xff\xff\r\n*\r\n", End::HalfClose),
        case("lone CR", b"EHLO x\rMAIL FROM:<a@b>\r\r\r\n", End::HalfClose),
        case("immediate close", b"", End::HalfClose),
    ]
}

/// Random conversations: SMTP words, numbers and garbage, glued with random
/// line endings.
fn random_case(rng: &mut rand::rngs::StdRng, number: usize) -> Case {
    const WORDS: &[&str] = &[
        "EHLO",
        "HELO",
        "MAIL FROM:",
        "RCPT TO:",
        "DATA",
        "BDAT",
        "LAST",
        "RSET",
        "NOOP",
        "QUIT",
        "VRFY",
        "EXPN",
        "HELP",
        "STARTTLS",
        "AUTH",
        "PLAIN",
        "LOGIN",
        "SIZE=",
        "BODY=8BITMIME",
        "BODY=BINARYMIME",
        "SMTPUTF8",
        "<",
        ">",
        "<>",
        "@",
        ":",
        ".",
        " ",
        "a@b.test",
        "postmaster",
        "[127.0.0.1]",
        "[IPv6:::1]",
    ];
    const ENDINGS: &[&[u8]] = &[b"\r\n", b"\n", b"\r", b"", b"\r\n.\r\n", b"\r\r\n"];
    let mut bytes = Vec::new();
    let lines = rng.gen_range(1..30);
    for _ in 0..lines {
        let parts = rng.gen_range(0..8);
        for _ in 0..parts {
            match rng.gen_range(0..10) {
                0..=4 => bytes.extend_from_slice(WORDS[rng.gen_range(0..WORDS.len())].as_bytes()),
                5 | 6 => bytes.extend_from_slice(
                    match rng.gen_range(0..4) {
                        0 => rng.gen_range(0..100u64).to_string(),
                        1 => rng.r#gen::<u64>().to_string(),
                        2 => "9".repeat(rng.gen_range(1..40)),
                        _ => format!("-{}", rng.gen_range(0..1000)),
                    }
                    .as_bytes(),
                ),
                7 => {
                    let len = rng.gen_range(0..64);
                    bytes.extend((0..len).map(|_| rng.r#gen::<u8>()));
                }
                8 => {
                    let len = rng.gen_range(0..2000);
                    bytes.extend(std::iter::repeat_n(b'x', len));
                }
                _ => bytes.push(0),
            }
        }
        bytes.extend_from_slice(ENDINGS[rng.gen_range(0..ENDINGS.len())]);
    }
    Case {
        name: format!("random #{number}"),
        bytes,
        end: if rng.gen_bool(0.8) {
            End::HalfClose
        } else {
            End::Wait
        },
    }
}

/// True when `line` looks like an SMTP reply line: three digits, 2xx to
/// 5xx, then a space or a hyphen (or nothing).
fn is_reply_line(line: &str) -> bool {
    let bytes = line.as_bytes();
    bytes.len() >= 3
        && (b'2'..=b'5').contains(&bytes[0])
        && bytes[1].is_ascii_digit()
        && bytes[2].is_ascii_digit()
        && (bytes.len() == 3 || bytes[3] == b' ' || bytes[3] == b'-')
}

/// Plays one case; returns what is wrong with the server's behaviour.
fn play(address: SocketAddr, case: &Case, timeout: Duration) -> Result<(), String> {
    let stream = TcpStream::connect(address).map_err(|error| format!("connect: {error}"))?;
    // Every case must end by a close from the server within its timeouts.
    let limit = timeout * 3 + Duration::from_secs(8);
    stream
        .set_read_timeout(Some(limit))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(limit))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let bytes = case.bytes.clone();
    let end = case.end;
    // Write from another thread: the server may stop reading (or be
    // blocked writing replies we have not read yet).
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&bytes);
        if let End::HalfClose = end {
            let _ = writer.shutdown(Shutdown::Write);
        }
    });
    let started = Instant::now();
    let mut received = Vec::new();
    let mut reader = stream;
    let mut buffer = [0u8; 16 * 1024];
    let mut reset = false;
    let outcome = loop {
        match reader.read(&mut buffer) {
            Ok(0) => break Ok(()),
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                reset = true;
                break Ok(());
            }
            Err(error) => {
                break Err(format!(
                    "no close within {:?} ({error}); got {:?}",
                    started.elapsed(),
                    String::from_utf8_lossy(&received[received.len().saturating_sub(300)..])
                ));
            }
        }
    };
    let _ = sender.join();
    outcome?;
    let text = String::from_utf8_lossy(&received);
    if !text.starts_with("220 ") {
        return Err(format!("no greeting: {text:?}"));
    }
    for line in text.split("\r\n").filter(|line| !line.is_empty()) {
        if !is_reply_line(line) {
            return Err(format!("not a reply line: {line:?}"));
        }
    }
    if !reset && !received.ends_with(b"\r\n") {
        return Err("reply cut off before its CRLF".into());
    }
    Ok(())
}

#[test]
fn hostile_bytes_get_replies_or_a_close_and_never_crash_or_hang_the_server() {
    let timeout = Duration::from_secs(2);
    let mut sluice = Sluice::start(&hostile_config("2s"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let mut cases = fixed_cases();
    for number in 0..150 {
        cases.push(random_case(&mut rng, number));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let probe = prober(sluice.smtp, stop.clone(), Duration::from_secs(10));

    let queue = Arc::new(Mutex::new(cases));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..12)
        .map(|_| {
            let queue = queue.clone();
            let failures = failures.clone();
            let address = sluice.smtp;
            std::thread::spawn(move || {
                loop {
                    let Some(case) = queue.lock().expect("queue lock").pop() else {
                        return;
                    };
                    if let Err(error) = play(address, &case, timeout) {
                        failures.lock().expect("failures lock").push(format!(
                            "{}: {error}\n  input: {:?}",
                            case.name,
                            String::from_utf8_lossy(&case.bytes[..case.bytes.len().min(300)])
                        ));
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("worker thread");
    }
    stop.store(true, Ordering::SeqCst);
    let probe_failures = probe.join().expect("prober thread");
    let failures = failures.lock().expect("failures lock");
    assert!(
        failures.is_empty(),
        "{} hostile cases misbehaved:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        probe_failures.is_empty(),
        "ordinary clients were hindered while hostile ones ran: {probe_failures:?}"
    );
    assert_healthy(&mut sluice);
}

#[test]
fn half_closed_pipelined_commands_are_all_answered_before_the_close() {
    let mut sluice = Sluice::start(&hostile_config("2s"));
    let mut stream = TcpStream::connect(sluice.smtp).expect("connect");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    stream
        .write_all(b"EHLO x\r\nNOOP\r\nMAIL FROM:<a@origin.test>\r\nRSET\r\n")
        .expect("write");
    stream.shutdown(Shutdown::Write).expect("half close");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read to the close");
    let finals: Vec<&str> = text
        .split("\r\n")
        .filter(|line| line.len() > 3 && line.as_bytes()[3] == b' ')
        .collect();
    assert_eq!(finals.len(), 5, "greeting and four replies: {text:?}");
    assert!(
        finals[1..].iter().all(|line| line.starts_with("250")),
        "{text:?}"
    );
    assert_healthy(&mut sluice);
}

/// What a trickling connection sends once it is set up, one byte at a time.
#[derive(Debug, Clone, Copy)]
enum Trickle {
    /// A command line that never ends.
    Command,
    /// Message data after DATA that never ends.
    Data,
    /// Command lines, each finished, one byte at a time.
    Lines,
    /// A BDAT chunk that never completes.
    Bdat,
}

#[test]
fn slowloris_connections_do_not_block_others_and_are_dropped_with_421() {
    let mut sluice = Sluice::start(&hostile_config("1s"));
    let kinds = [
        Trickle::Command,
        Trickle::Data,
        Trickle::Lines,
        Trickle::Bdat,
    ];
    let mut connections = Vec::new();
    for number in 0..100 {
        let kind = kinds[number % kinds.len()];
        let mut stream = TcpStream::connect(sluice.smtp).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("greeting");
        assert!(line.starts_with("220"), "greeting {line:?}");
        if let Trickle::Data | Trickle::Bdat = kind {
            stream
                .write_all(b"EHLO slow\r\nMAIL FROM:<s@origin.test>\r\nRCPT TO:<r@dest.test>\r\n")
                .expect("write");
            let mut finals = 0;
            while finals < 3 {
                line.clear();
                reader.read_line(&mut line).expect("reply");
                assert!(line.starts_with("250"), "setting up: {line:?}");
                finals += usize::from(line.as_bytes().get(3) == Some(&b' '));
            }
            if let Trickle::Data = kind {
                stream.write_all(b"DATA\r\n").expect("write");
                line.clear();
                reader.read_line(&mut line).expect("reply");
                assert!(line.starts_with("354"), "DATA: {line:?}");
            } else {
                stream.write_all(b"BDAT 100000 LAST\r\n").expect("write");
            }
        }
        stream.set_nonblocking(true).expect("nonblocking");
        connections.push((kind, stream, Vec::<u8>::new(), None::<Instant>));
    }
    let pattern = |kind: Trickle, index: usize| -> u8 {
        match kind {
            Trickle::Command => b"EHLO aaaaaaaaaaaaaaaaaaaaaaaa"[index.min(27)],
            Trickle::Data | Trickle::Bdat => b"x"[0],
            Trickle::Lines => b"NOOP\r\n"[index % 6],
        }
    };

    // Trickle a byte every 200 ms on every connection (well inside the 1 s
    // timeout) while ordinary clients send mail.
    let started = Instant::now();
    let mut sent = 0;
    let mut ordinary = Vec::new();
    let mut next_ordinary = Instant::now();
    while started.elapsed() < Duration::from_secs(12) {
        for (kind, stream, received, closed) in connections.iter_mut() {
            if closed.is_some() {
                continue;
            }
            let _ = stream.write(&[pattern(*kind, sent)]);
            let mut buffer = [0u8; 4096];
            loop {
                match stream.read(&mut buffer) {
                    Ok(0) => {
                        *closed = Some(Instant::now());
                        break;
                    }
                    Ok(n) => received.extend_from_slice(&buffer[..n]),
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        *closed = Some(Instant::now());
                        break;
                    }
                }
            }
        }
        sent += 1;
        if Instant::now() >= next_ordinary && ordinary.len() < 8 {
            let begun = Instant::now();
            ordinary.push((
                full_transaction(sluice.smtp, Duration::from_secs(5)),
                begun.elapsed(),
            ));
            next_ordinary = Instant::now() + Duration::from_millis(500);
        }
        if connections.iter().all(|(_, _, _, closed)| closed.is_some()) && ordinary.len() >= 8 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for (result, took) in &ordinary {
        assert!(
            result.is_ok(),
            "an ordinary client failed among slowloris connections: {result:?}"
        );
        assert!(
            *took < Duration::from_secs(5),
            "an ordinary transaction took {took:?}"
        );
    }
    let mut problems = Vec::new();
    for (kind, _, received, closed) in &connections {
        let text = String::from_utf8_lossy(received);
        match closed {
            None => problems.push(format!(
                "{kind:?}: still open after {:?}",
                started.elapsed()
            )),
            Some(_) if !text.contains("421 4.4.2") => {
                problems.push(format!("{kind:?}: closed without 421 4.4.2: {text:?}"))
            }
            Some(_) => {}
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} trickling connections were not dropped with 421 4.4.2:\n{}",
        problems.len(),
        connections.len(),
        problems.join("\n")
    );
    assert_healthy(&mut sluice);
}

/// One raw HTTP/1.1 exchange: (status, content type, body). Status 0 when
/// the server closed without an answer.
fn http_raw(address: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(address).expect("connect to admin");
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    if let Err(error) = stream.read_to_end(&mut response)
        && response.is_empty()
        && error.kind() != std::io::ErrorKind::ConnectionReset
    {
        return (
            0,
            String::new(),
            format!("no answer within {DEADLINE:?}: {error}"),
        );
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return (0, String::new(), text);
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, body.to_string())
}

fn request(admin: SocketAddr, method: &str, target: &str) -> Vec<u8> {
    // With the token sluice generated: what a bad request gets once past
    // the token check (without it, every one gets 401).
    let authorization = common::server::generated_token(admin)
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    format!(
        "{method} {target} HTTP/1.1\r\nHost: {admin}\r\nX-Sluice-Request: 1\r\n\
         {authorization}Connection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn admin_api_answers_hostile_requests_with_json_errors() {
    let mut sluice = Sluice::start(NO_DELIVERY);
    let id = full_transaction(sluice.smtp, DEADLINE).expect("queue one message");
    let id = common::queue_id(id.trim()).expect("queue ID");
    // A request that never ends its headers (open until the admin API's
    // 10 s header timeout) must not hold up the others.
    let mut stalled = TcpStream::connect(sluice.admin).expect("connect to admin");
    stalled
        .write_all(b"GET /v1/queue HTTP/1.1\r\nHost: x\r\n")
        .expect("write a partial request");
    // Just under hyper's URI limit (64 KiB): the API itself answers.
    let huge_query = format!("/v1/queue?{}", "colour=red&".repeat(5_500));
    let huge_id = format!("/v1/queue/{}", "A".repeat(60_000));
    let cases: Vec<(&str, String, u16)> = vec![
        ("GET", "/v1/queue/not-an-id".into(), 400),
        ("GET", "/v1/queue/%FF%FE".into(), 400),
        ("GET", "/v1/queue/%00".into(), 400),
        ("GET", "/v1/queue/ab%2Fcd".into(), 400),
        ("GET", "/v1/queue/..%2F..%2Fetc".into(), 400),
        ("GET", huge_id, 400),
        ("GET", "/v1/queue/ZZZZZZZZZZZZ".into(), 404),
        ("POST", "/v1/queue/ZZZZZZZZZZZZ/retry".into(), 404),
        ("POST", "/v1/queue/%FF/hold".into(), 400),
        ("DELETE", "/v1/queue/a-b".into(), 400),
        ("GET", "/v1/queue?limit=abc".into(), 400),
        ("GET", "/v1/queue?limit=99999999999999999999999".into(), 400),
        ("GET", "/v1/queue?limit=-1".into(), 400),
        ("GET", "/v1/queue?after=%FF".into(), 400),
        ("GET", "/v1/queue?status=%ZZ".into(), 400),
        ("GET", "/v1/queue?%%%%=%%%".into(), 400),
        ("GET", huge_query, 400),
        ("PUT", "/v1/queue".into(), 405),
        ("PATCH", format!("/v1/queue/{id}"), 405),
        ("GET", format!("/v1/queue/{id}/retry"), 405),
        ("DELETE", "/health".into(), 405),
        ("POST", "/v1/queue/retry/extra/parts".into(), 404),
        ("GET", "/v2/anything".into(), 404),
        ("BREW", "/v1/queue".into(), 405),
    ];
    let mut problems = Vec::new();
    for (method, target, want) in &cases {
        let (status, content_type, body) =
            http_raw(sluice.admin, &request(sluice.admin, method, target));
        let json: Option<serde_json::Value> = serde_json::from_str(&body).ok();
        let has_error = json
            .as_ref()
            .and_then(|json| json.get("error"))
            .is_some_and(|error| error.is_string());
        let shown = &target[..target.len().min(60)];
        if status != *want || !content_type.starts_with("application/json") || !has_error {
            problems.push(format!(
                "{method} {shown}: want {want} with a JSON error, got {status} {content_type:?} {:?}",
                &body[..body.len().min(200)]
            ));
        }
    }
    // Not HTTP at all, or over the limits: any 4xx or a close, never a 5xx.
    let garbage: Vec<Vec<u8>> = vec![
        b"BLAH\r\n\r\n".to_vec(),
        b"\x16\x03\x01\x00\x05hello\r\n\r\n".to_vec(),
        b"GET /v1/queue HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(),
        format!(
            "GET /v1/queue?{} HTTP/1.1\r\nHost: x\r\n\r\n",
            "a".repeat(2_000_000)
        )
        .into_bytes(),
        format!(
            "GET /v1/queue HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "b".repeat(1_000_000)
        )
        .into_bytes(),
        // Over hyper's URI limit: it answers 414 itself.
        format!(
            "GET /v1/queue/{} HTTP/1.1\r\nHost: x\r\n\r\n",
            "A".repeat(70_000)
        )
        .into_bytes(),
    ];
    for bytes in &garbage {
        let (status, _, body) = http_raw(sluice.admin, bytes);
        if status >= 500 || body.starts_with("no answer") {
            problems.push(format!(
                "garbage {:?}: got {status} {body:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "admin API mishandled {} requests:\n{}",
        problems.len(),
        problems.join("\n")
    );
    let (status, _, body) = http_raw(
        sluice.admin,
        &request(sluice.admin, "GET", &format!("/v1/queue/{id}")),
    );
    assert_eq!(status, 200, "the queued message is still shown: {body}");
    drop(stalled);
    assert_healthy(&mut sluice);
}
