//! Milters against the real binary: Debian's rspamd in milter mode (its
//! proxy worker, started here once for this test binary on a free loopback
//! port with its own configuration) rejects the GTUBE test message and adds
//! its headers to a clean one; a milter that is down or hangs gives
//! `on_failure`. A small milter written here (it speaks the protocol from
//! the test side) triggers what rspamd cannot be made to: quarantine, body
//! replacement, header changes, discard, and a chain of two.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod admin;
    pub mod server;
    pub mod smtp;
    pub mod spool;
    pub use {server::*, smtp::*};
}

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::spool::stop_and_read_queue;
use common::{NO_DELIVERY, Sluice, wait_for};

const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// rspamd's proxy worker in milter mode, shared by the tests of this
/// binary. A watchdog shell ends it when the test process is gone.
struct Rspamd {
    address: SocketAddr,
    /// The shell that runs rspamd and ends it after us.
    _watchdog: std::process::Child,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

fn rspamd() -> &'static Rspamd {
    static RSPAMD: OnceLock<Rspamd> = OnceLock::new();
    RSPAMD.get_or_init(|| {
        let dir: PathBuf = tempfile::tempdir().expect("temp dir").keep();
        let port = free_port();
        std::fs::create_dir_all(dir.join("local.d")).unwrap();
        std::fs::create_dir_all(dir.join("db")).unwrap();
        let d = dir.display();
        // No DNS (a dead loopback port answers at once), no Redis; the
        // headers module told to report on local and authenticated mail
        // too, as the test client is on loopback.
        std::fs::write(
            dir.join("rspamd.conf"),
            format!(
                ".include \"$CONFDIR/common.conf\"\n\
                 options {{\n  pidfile = \"{d}/rspamd.pid\";\n  .include \"$CONFDIR/options.inc\"\n  \
                 dns {{ nameserver = [\"127.0.0.1:9\"]; timeout = 0.2s; retransmits = 1; }}\n}}\n\
                 logging {{ type = \"file\"; filename = \"{d}/rspamd.log\"; level = \"info\"; }}\n\
                 worker \"rspamd_proxy\" {{\n  bind_socket = \"127.0.0.1:{port}\";\n  milter = yes;\n  \
                 timeout = 30s;\n  upstream \"local\" {{ default = yes; self_scan = yes; }}\n  count = 1;\n  \
                 spam_header = \"X-Spam\";\n  reject_message = \"Spam message rejected\";\n}}\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("local.d/milter_headers.conf"),
            "use = [\"x-spamd-result\", \"x-rspamd-queue-id\", \"x-spam-status\", \"authentication-results\"];\n\
             skip_local = false;\nskip_authenticated = false;\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("local.d/options.inc"),
            "enable_test_patterns = true;\nlocal_addrs = [];\n",
        )
        .unwrap();
        let rspamd = format!(
            "rspamd -f -i -c {d}/rspamd.conf --var LOCAL_CONFDIR={d} --var DBDIR={d}/db \
             --var RUNDIR={d} --var LOGDIR={d}"
        );
        let watchdog = format!(
            "{rspamd} >{d}/stdout 2>&1 & r=$!; \
             while kill -0 {test} 2>/dev/null && kill -0 $r 2>/dev/null; do sleep 0.2; done; \
             kill $r 2>/dev/null; wait $r",
            test = std::process::id()
        );
        let watchdog = Command::new("sh")
            .args(["-c", &watchdog])
            .stdin(Stdio::null())
            .spawn()
            .expect("sh");
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        // Loading its rules takes rspamd several seconds (more on a busy machine).
        wait_for(
            &format!("rspamd (Debian package rspamd) to listen; its log is in {d}"),
            Duration::from_secs(240),
            || TcpStream::connect(address).ok(),
        );
        Rspamd {
            address,
            _watchdog: watchdog,
        }
    })
}

/// A milter section for `address`.
fn milter(address: SocketAddr, extra: &str) -> String {
    format!("[[milter]]\naddress = \"inet:{address}\"\n{extra}\n")
}

/// Sluice with `milters`, nothing delivered; loopback stays a relay
/// network unless `inbound`, which makes the test client a stranger
/// sending to dest.test.
fn start(milters: &str, inbound: bool) -> Sluice {
    let policy = if inbound {
        "[policy]\nrelay_networks = [\"192.0.2.0/24\"]\naccept_domains = [\"dest.test\"]\n"
    } else {
        ""
    };
    Sluice::start(&format!("{policy}\n{milters}\n{NO_DELIVERY}"))
}

fn message(subject: &str, body: &str) -> String {
    format!(
        "From: Alice <alice@origin.test>\r\nTo: bob@dest.test\r\nSubject: {subject}\r\n\
         Date: Tue, 08 Dec 2026 03:00:00 +0000\r\nMessage-ID: <{subject}@origin.test>\r\n\r\n{body}\r\n"
    )
}

/// One transaction; the final reply, whatever it is.
fn send(sluice: &Sluice, data: &str) -> String {
    let mut client = sluice.connect();
    client.expect("EHLO client.test", "250");
    client
        .try_transaction("alice@origin.test", &["bob@dest.test"], data.as_bytes())
        .expect("the transaction")
}

#[test]
fn rspamd_rejects_gtube_with_its_text() {
    let rspamd = rspamd();
    let mut sluice = start(&milter(rspamd.address, ""), true);
    let started = Instant::now();
    let reply = send(
        &sluice,
        &message("gtube", &format!("This is spam.\r\n{GTUBE}")),
    );
    eprintln!("GTUBE refused in {:?}", started.elapsed());
    assert!(
        reply.trim_end() == "554 5.7.1 Gtube pattern",
        "expected rspamd's \"554 5.7.1 Gtube pattern\", got {reply:?}"
    );
    sluice.wait_log(&["transaction refused", "reason=milter"]);
    assert!(
        stop_and_read_queue(&mut sluice).is_empty(),
        "nothing queued"
    );
}

#[test]
fn rspamd_adds_its_headers_to_a_clean_message() {
    let rspamd = rspamd();
    let mut sluice = start(&milter(rspamd.address, ""), true);
    let started = Instant::now();
    let reply = send(
        &sluice,
        &message("clean", "Hello Bob,\r\nsee you at lunch.\r\n\r\nAlice"),
    );
    eprintln!("clean message accepted in {:?}", started.elapsed());
    assert!(
        reply.starts_with("250 2.0.0"),
        "expected 250, got {reply:?}"
    );
    let queued = stop_and_read_queue(&mut sluice);
    assert_eq!(queued.len(), 1);
    let body = &queued[0].body;
    let header = body.split("\r\n\r\n").next().unwrap();
    eprintln!("stored header section:\n{header}");
    assert!(
        header.contains("\r\nX-Spamd-Result: default:")
            || header.starts_with("X-Spamd-Result: default:"),
        "expected rspamd's X-Spamd-Result in {header:?}"
    );
    assert!(header.contains("X-Rspamd-Queue-Id: "), "{header:?}");
    assert!(
        header.contains("\r\nX-Spam-Status: No, score="),
        "{header:?}"
    );
    // rspamd puts its Authentication-Results right below our Received:.
    assert!(
        header.contains("\r\nAuthentication-Results: "),
        "{header:?}"
    );
    assert!(
        !header.contains("X-Spam: Yes"),
        "a clean message is not marked spam: {header:?}"
    );
    assert!(
        body.ends_with("see you at lunch.\r\n\r\nAlice\r\n"),
        "the body is kept: {body:?}"
    );
    assert!(!queued[0].message.held);
}

#[test]
fn outbound_mail_goes_through_milters_unless_configured_otherwise() {
    let rspamd = rspamd();
    // The test client is in relay_networks (loopback): outbound mail.
    let mut sluice = start(&milter(rspamd.address, ""), false);
    let reply = send(&sluice, &message("out", GTUBE));
    assert!(reply.starts_with("554 5.7.1"), "outbound GTUBE: {reply:?}");
    sluice.terminate();
    let mut sluice = start(&milter(rspamd.address, "outbound = false"), false);
    let reply = send(&sluice, &message("out", GTUBE));
    assert!(
        reply.starts_with("250 2.0.0"),
        "outbound = false skips it: {reply:?}"
    );
    let queued = stop_and_read_queue(&mut sluice);
    assert!(!queued[0].body.contains("X-Spamd-Result"));
}

/// An address where nothing listens.
fn dead_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

#[test]
fn a_milter_that_is_down_gives_on_failure() {
    let down = dead_address();
    let mut sluice = start(&milter(down, "on_failure = \"tempfail\""), true);
    let reply = send(&sluice, &message("down", "hello"));
    assert!(reply.starts_with("451 4.7.1"), "tempfail: {reply:?}");
    sluice.wait_log(&["milter failed", "cannot connect"]);
    assert!(stop_and_read_queue(&mut sluice).is_empty());

    let mut sluice = start(&milter(down, "on_failure = \"accept\""), true);
    let reply = send(&sluice, &message("down", "hello"));
    assert!(reply.starts_with("250 2.0.0"), "accept: {reply:?}");
    assert_eq!(stop_and_read_queue(&mut sluice).len(), 1);
}

#[test]
fn a_milter_that_hangs_is_given_up_after_its_timeout() {
    // Accepts the connection and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let sluice = start(&milter(address, "timeout = \"1s\""), true);
    let started = Instant::now();
    let reply = send(&sluice, &message("hang", "hello"));
    let elapsed = started.elapsed();
    assert!(reply.starts_with("451 4.7.1"), "{reply:?}");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "given up after {elapsed:?}, the timeout is 1s"
    );
}

/// A milter written for the tests: answers `c` to every step and, at the
/// end of the message, sends `at_end` (raw packets, the final one
/// included). It keeps every header it was sent.
struct TestMilter {
    address: SocketAddr,
    headers: Arc<Mutex<Vec<(String, String)>>>,
}

fn packet(code: u8, data: &[u8]) -> Vec<u8> {
    let mut out = ((data.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(code);
    out.extend_from_slice(data);
    out
}

fn strings(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        out.extend_from_slice(part.as_bytes());
        out.push(0);
    }
    out
}

impl TestMilter {
    fn start(at_end: Vec<Vec<u8>>) -> TestMilter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let headers = Arc::new(Mutex::new(Vec::new()));
        let seen = headers.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let at_end = at_end.clone();
                let seen = seen.clone();
                std::thread::spawn(move || serve(stream, &at_end, &seen));
            }
        });
        TestMilter { address, headers }
    }
}

fn serve(mut stream: TcpStream, at_end: &[Vec<u8>], seen: &Mutex<Vec<(String, String)>>) {
    loop {
        let mut length = [0u8; 4];
        if stream.read_exact(&mut length).is_err() {
            return;
        }
        let mut data = vec![0u8; u32::from_be_bytes(length) as usize];
        if stream.read_exact(&mut data).is_err() || data.is_empty() {
            return;
        }
        let reply = match data[0] {
            // Version 6, the header actions, body and quarantine; every step.
            b'O' => vec![packet(b'O', &[0, 0, 0, 6, 0, 0, 0, 0x33, 0, 0, 0, 0])],
            b'D' => Vec::new(),
            b'L' => {
                let fields: Vec<String> = data[1..]
                    .split(|&b| b == 0)
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect();
                seen.lock()
                    .unwrap()
                    .push((fields[0].clone(), fields[1].clone()));
                vec![packet(b'c', b"")]
            }
            b'E' => at_end.to_vec(),
            b'Q' => return,
            _ => vec![packet(b'c', b"")],
        };
        for packet in reply {
            if stream.write_all(&packet).is_err() {
                return;
            }
        }
    }
}

#[test]
fn quarantine_holds_the_message() {
    let test = TestMilter::start(vec![
        packet(b'q', &strings(&["suspicious attachment"])),
        packet(b'a', b""),
    ]);
    let mut sluice = start(&milter(test.address, ""), true);
    let reply = send(&sluice, &message("held", "hello"));
    assert!(reply.starts_with("250 2.0.0 Ok: queued as"), "{reply:?}");
    sluice.wait_log(&["quarantined by a milter", "suspicious attachment"]);
    let queued = stop_and_read_queue(&mut sluice);
    assert_eq!(queued.len(), 1);
    assert!(queued[0].message.held, "a quarantined message is held");
}

#[test]
fn header_edits_and_body_replacement_are_stored() {
    let test = TestMilter::start(vec![
        packet(b'h', &strings(&["X-Filtered", "yes"])),
        packet(
            b'i',
            &[&[0, 0, 0, 0][..], &strings(&["X-Top", "first"])].concat(),
        ),
        packet(
            b'm',
            &[&[0, 0, 0, 1][..], &strings(&["Subject", "[checked] edits"])].concat(),
        ),
        packet(b'm', &[&[0, 0, 0, 1][..], &strings(&["Date", ""])].concat()),
        packet(b'b', b"replaced "),
        packet(b'b', b"body\r\n"),
        packet(b'c', b""),
    ]);
    let mut sluice = start(&milter(test.address, ""), true);
    let reply = send(&sluice, &message("edits", "original body"));
    assert!(reply.starts_with("250 2.0.0"), "{reply:?}");
    let queued = stop_and_read_queue(&mut sluice);
    let body = &queued[0].body;
    let (header, content) = body.split_once("\r\n\r\n").unwrap();
    assert!(
        header.starts_with("X-Top: first\r\nReceived: "),
        "{header:?}"
    );
    assert!(
        header.contains("\r\nSubject: [checked] edits\r\n"),
        "{header:?}"
    );
    assert!(!header.contains("Date:"), "deleted: {header:?}");
    assert!(header.ends_with("\r\nX-Filtered: yes"), "{header:?}");
    assert_eq!(content, "replaced body\r\n");
    // The milter saw our Received: first, then the client's fields, values
    // without the space after the colon.
    let seen = test.headers.lock().unwrap().clone();
    assert_eq!(seen[0].0, "Received");
    assert!(
        seen.contains(&("Subject".to_string(), "edits".to_string())),
        "{seen:?}"
    );
}

#[test]
fn discard_answers_250_and_keeps_nothing() {
    let test = TestMilter::start(vec![packet(b'd', b"")]);
    let mut sluice = start(&milter(test.address, ""), true);
    let reply = send(&sluice, &message("discard", "hello"));
    assert!(reply.starts_with("250 2.0.0"), "{reply:?}");
    sluice.wait_log(&["discarded by a milter"]);
    assert!(stop_and_read_queue(&mut sluice).is_empty());
}

#[test]
fn a_tempfail_keeps_the_milters_text() {
    let test = TestMilter::start(vec![packet(b'y', &strings(&["452 4.3.1 scanner busy"]))]);
    let sluice = start(&milter(test.address, ""), true);
    let reply = send(&sluice, &message("busy", "hello"));
    assert_eq!(reply.trim_end(), "452 4.3.1 scanner busy");
}

#[test]
fn milters_run_in_order_each_seeing_the_one_before() {
    let first = TestMilter::start(vec![
        packet(b'h', &strings(&["X-First", "1"])),
        packet(b'c', b""),
    ]);
    let second = TestMilter::start(vec![
        packet(b'h', &strings(&["X-Second", "2"])),
        packet(b'c', b""),
    ]);
    let config = format!(
        "{}\n{}",
        milter(first.address, ""),
        milter(second.address, "")
    );
    let mut sluice = start(&config, true);
    let reply = send(&sluice, &message("chain", "hello"));
    assert!(reply.starts_with("250 2.0.0"), "{reply:?}");
    let seen = second.headers.lock().unwrap().clone();
    assert!(
        seen.contains(&("X-First".into(), "1".into())),
        "the second saw the first's header: {seen:?}"
    );
    let queued = stop_and_read_queue(&mut sluice);
    let header = queued[0].body.split("\r\n\r\n").next().unwrap().to_string();
    assert!(header.ends_with("X-First: 1\r\nX-Second: 2"), "{header:?}");
}

#[test]
fn check_config_prints_the_milters() {
    let text = common::config_text(
        &std::env::temp_dir(),
        "",
        "[[milter]]\naddress = \"unix:/run/rspamd/milter.sock\"\non_failure = \"accept\"\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_config(dir.path(), &text);
    let printed = common::cli_ok(&path, &["check-config"]);
    assert!(printed.contains("[[milter]]"), "{printed}");
    assert!(
        printed.contains("address = \"unix:/run/rspamd/milter.sock\""),
        "{printed}"
    );
    assert!(printed.contains("timeout = \"30s\""), "{printed}");
    assert!(printed.contains("on_failure = \"accept\""), "{printed}");
    let bad = text.replace("unix:/run", "tcp:/run");
    std::fs::write(&path, bad).unwrap();
    let (code, _, stderr) = common::cli(&path, &["check-config"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("milter[0].address"), "{stderr}");
}
