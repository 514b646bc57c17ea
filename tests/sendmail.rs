//! `sluice sendmail`: local submission on stdin, run as the real binary
//! against a real server, which relays to a real SMTP destination.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod destination;
    pub mod server;
    pub mod smtp;
    pub mod spool;
    pub use {server::*, smtp::*};
}

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::destination::{Destination, Options, Transaction, wait_delivered};
use common::{Sluice, field};

/// A server relaying everything to a destination, and a client config for
/// `sluice sendmail` naming the server's submit socket (and a relative
/// spool, so that sendmail can only reach the server through the socket).
struct Setup {
    destination: Destination,
    server: Sluice,
    client_config: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        Setup::with("")
    }

    fn with(extra: &str) -> Setup {
        let destination = Destination::start(Options::default());
        let server = Sluice::start(&format!(
            "{extra}\n[routes]\n\"*\" = \"{}\"\n",
            destination.addr
        ));
        let client_config = server.dir.path().join("client.toml");
        write_client_config(
            &client_config,
            &server.dir.path().join("spool").join("submit.sock"),
        );
        Setup {
            destination,
            server,
            client_config,
        }
    }

    fn sendmail(&self, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
        sendmail(&self.client_config, args, stdin)
    }

    /// Waits for the destination to have received `count` transactions.
    fn delivered(&self, count: usize) -> Vec<Transaction> {
        wait_delivered(&self.destination, count)
    }
}

fn write_client_config(path: &Path, socket: &Path) {
    std::fs::write(
        path,
        format!(
            "hostname = \"sluice.test\"\n\n[local]\nsubmit_socket = \"{}\"\n",
            socket.display()
        ),
    )
    .expect("write client config");
}

/// Runs `sluice sendmail --config <config> <args>` with `stdin`.
fn sendmail(config: &Path, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
    // A usage error exits before reading: `run` ignores a write error.
    common::run(Some(stdin), |command| {
        command
            .arg("sendmail")
            .arg("--config")
            .arg(config)
            .args(args);
    })
}

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).into_owned()
}

/// The header section of a delivered body (up to the first empty line).
fn header_section(body: &[u8]) -> String {
    let body = text(body);
    body.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn message_is_queued_with_the_envelope_from_arguments_and_delivered() {
    let setup = Setup::new();
    let (code, stdout, stderr) = setup.sendmail(
        &["-f", "alice@origin.test", "-v", "bob@dest.test"],
        b"Subject: hello\n\nHi Bob.\n",
    );
    assert_eq!(code, 0, "{stderr}");
    let id = stdout
        .trim()
        .strip_prefix("queued as ")
        .unwrap_or_else(|| panic!("-v prints the queue ID: {stdout:?}"))
        .to_string();
    assert!(
        !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric()),
        "{id}"
    );
    // The server logged the same ID for the delivery.
    let line = setup
        .server
        .wait_log(&[&format!("queue_id={id}"), "status=sent"]);
    assert_eq!(field(&line, "recipient"), "bob@dest.test", "{line}");
    let delivered = setup.delivered(1);
    assert_eq!(delivered[0].mail_from, "alice@origin.test");
    assert_eq!(delivered[0].recipients, vec!["bob@dest.test".to_string()]);
    assert!(text(&delivered[0].body).contains("Subject: hello\r\n"));
    assert!(text(&delivered[0].body).ends_with("\r\n\r\nHi Bob.\r\n"));
}

#[test]
fn success_is_silent_without_v() {
    let setup = Setup::new();
    let (code, stdout, stderr) = setup.sendmail(
        &["-oi", "-f", "a@origin.test", "b@dest.test"],
        b"Subject: s\n\nx\n",
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(stderr, "");
    setup.delivered(1);
}

#[test]
fn t_takes_recipients_from_to_cc_bcc_and_removes_bcc() {
    let setup = Setup::new();
    let message = b"From: Alice <alice@origin.test>\n\
        To: Bob <bob@dest.test>, carol@dest.test\n\
        Cc: team: dave@dest.test;\n\
        Bcc: secret@dest.test,\n  hidden@dest.test\n\
        Subject: -t\n\nbody\n";
    let (code, _, stderr) = setup.sendmail(&["-t", "-i", "-f", "alice@origin.test"], message);
    assert_eq!(code, 0, "{stderr}");
    let delivered = setup.delivered(1);
    let mut recipients = delivered[0].recipients.clone();
    recipients.sort();
    assert_eq!(
        recipients,
        [
            "bob@dest.test",
            "carol@dest.test",
            "dave@dest.test",
            "hidden@dest.test",
            "secret@dest.test"
        ]
    );
    let body = text(&delivered[0].body);
    assert!(!body.to_ascii_lowercase().contains("bcc:"), "{body}");
    assert!(
        !body.contains("secret@") && !body.contains("hidden@"),
        "{body}"
    );
    assert!(
        body.contains("To: Bob <bob@dest.test>, carol@dest.test\r\n"),
        "{body}"
    );
    assert!(body.contains("\r\nSubject: -t\r\n"), "{body}");
    assert!(body.ends_with("\r\n\r\nbody\r\n"), "{body}");
}

#[test]
fn t_adds_command_line_recipients_to_the_header_ones() {
    let setup = Setup::new();
    let (code, _, stderr) = setup.sendmail(
        &["-t", "-f", "a@origin.test", "extra@dest.test"],
        b"To: b@dest.test\n\nx\n",
    );
    assert_eq!(code, 0, "{stderr}");
    let mut recipients = setup.delivered(1)[0].recipients.clone();
    recipients.sort();
    assert_eq!(recipients, ["b@dest.test", "extra@dest.test"]);
}

#[test]
fn bare_lf_becomes_crlf_and_leading_dots_survive() {
    let setup = Setup::new();
    let (code, _, stderr) = setup.sendmail(
        &["-f", "a@origin.test", "b@dest.test"],
        b"Subject: lines\n\nfirst\n.\n..two dots\nmixed\r\nbare\rcr\nlast line without newline",
    );
    assert_eq!(code, 0, "{stderr}");
    let body = setup.delivered(1)[0].body.clone();
    // The destination un-stuffs: the content arrives as it was written.
    assert!(
        text(&body).ends_with(
            "\r\n\r\nfirst\r\n.\r\n..two dots\r\nmixed\r\nbare\r\ncr\r\nlast line without newline\r\n"
        ),
        "{:?}",
        text(&body)
    );
    for (index, byte) in body.iter().enumerate() {
        match byte {
            b'\n' => assert!(index > 0 && body[index - 1] == b'\r', "bare LF at {index}"),
            b'\r' => assert_eq!(body.get(index + 1), Some(&b'\n'), "bare CR at {index}"),
            _ => {}
        }
    }
}

#[test]
fn missing_from_date_and_message_id_are_added() {
    let setup = Setup::new();
    let (code, _, stderr) = setup.sendmail(
        &["-F", "Ann Example", "-fann@origin.test", "b@dest.test"],
        b"Subject: bare\n\nbody\n",
    );
    assert_eq!(code, 0, "{stderr}");
    let body = setup.delivered(1)[0].body.clone();
    let headers = header_section(&body);
    assert!(
        headers.contains("\r\nFrom: Ann Example <ann@origin.test>"),
        "{headers}"
    );
    let date = headers
        .lines()
        .find_map(|line| line.strip_prefix("Date: "))
        .unwrap_or_else(|| panic!("Date: added: {headers}"));
    chrono::DateTime::parse_from_rfc2822(date.trim()).expect("Date: is RFC 5322");
    let message_id = headers
        .lines()
        .find_map(|line| line.strip_prefix("Message-ID: "))
        .unwrap_or_else(|| panic!("Message-ID: added: {headers}"));
    assert!(
        message_id.starts_with('<') && message_id.trim_end().ends_with("@sluice.test>"),
        "{message_id}"
    );
    assert!(text(&body).ends_with("\r\n\r\nbody\r\n"));
}

#[test]
fn present_headers_are_kept_and_not_duplicated() {
    let setup = Setup::new();
    let message = b"From: Me <me@origin.test>\nDate: Mon, 2 Mar 2026 10:00:00 +0000\n\
        Message-ID: <given@origin.test>\nSubject: full\n\nbody\n";
    let (code, _, stderr) = setup.sendmail(
        &["-F", "Other", "-f", "me@origin.test", "b@dest.test"],
        message,
    );
    assert_eq!(code, 0, "{stderr}");
    let headers = header_section(&setup.delivered(1)[0].body);
    for name in ["From: ", "Date: ", "Message-ID: "] {
        assert_eq!(
            headers.matches(&format!("\n{name}")).count(),
            1,
            "{name} once: {headers}"
        );
    }
    assert!(headers.contains("From: Me <me@origin.test>"), "{headers}");
    assert!(
        headers.contains("Message-ID: <given@origin.test>"),
        "{headers}"
    );
}

#[test]
fn default_sender_is_the_login_name_at_the_configured_hostname() {
    let setup = Setup::new();
    let (code, _, stderr) = setup.sendmail(&["b@dest.test"], b"Subject: who\n\nx\n");
    assert_eq!(code, 0, "{stderr}");
    let delivered = setup.delivered(1);
    let sender = &delivered[0].mail_from;
    let (login, domain) = sender.split_once('@').expect("sender has a domain");
    assert!(!login.is_empty(), "{sender}");
    assert_eq!(domain, "sluice.test");
    assert!(
        header_section(&delivered[0].body).contains(&format!("<{sender}>"))
            || header_section(&delivered[0].body).contains(&format!("From: {sender}")),
        "From: names the sender"
    );
}

#[test]
fn unqualified_sender_and_recipient_get_the_hostname() {
    let setup = Setup::with("[policy]\naccept_domains = [\"sluice.test\"]\n");
    let (code, _, stderr) = setup.sendmail(&["-f", "cron", "root"], b"Subject: q\n\nx\n");
    assert_eq!(code, 0, "{stderr}");
    let delivered = setup.delivered(1);
    assert_eq!(delivered[0].mail_from, "cron@sluice.test");
    assert_eq!(
        delivered[0].recipients,
        vec!["root@sluice.test".to_string()]
    );
}

#[test]
fn no_server_exits_75_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("submit.sock");
    let config = dir.path().join("client.toml");
    write_client_config(&config, &socket);
    let (code, _, stderr) = sendmail(&config, &["b@dest.test"], b"Subject: x\n\nx\n");
    assert_eq!(code, 75, "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "sluice: cannot submit: no server answers on {} (no such socket); \
             is sluice serve running?",
            socket.display()
        )
    );
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("client.toml");
    write_client_config(&config, Path::new("/nonexistent/submit.sock"));
    for args in [
        &["-x", "b@dest.test"][..],
        &["-bi"],
        &["-f"],
        &["--bogus", "b@dest.test"],
    ] {
        let (code, _, stderr) = sendmail(&config, args, b"");
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("sluice: sendmail: "),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains("Usage: sluice sendmail"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn no_recipients_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("client.toml");
    write_client_config(&config, Path::new("/nonexistent/submit.sock"));
    let (code, _, stderr) = sendmail(&config, &["-f", "a@origin.test"], b"Subject: x\n\nx\n");
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.starts_with("sluice: sendmail: no recipients"),
        "{stderr}"
    );
    // -t with no address headers: still none.
    let (code, _, stderr) = sendmail(&config, &["-t"], b"Subject: x\n\nx\n");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no recipients"), "{stderr}");
}

#[test]
fn help_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("client.toml");
    write_client_config(&config, Path::new("/nonexistent/submit.sock"));
    let (code, stdout, _) = sendmail(&config, &["--help"], b"");
    assert_eq!(code, 0);
    assert!(
        stdout.contains("-t") && stdout.contains("-f SENDER"),
        "{stdout}"
    );
}

#[test]
fn oversize_message_exits_1_with_the_server_reply() {
    let setup = Setup::with("[limits]\nmax_message_size = \"4KiB\"\n");
    let mut message = b"Subject: big\n\n".to_vec();
    for _ in 0..200 {
        message.extend_from_slice(
            b"0123456789012345678901234567890123456789012345678901234567890123\n",
        );
    }
    let (code, stdout, stderr) =
        setup.sendmail(&["-v", "-f", "a@origin.test", "b@dest.test"], &message);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stdout, "", "nothing was queued");
    assert!(stderr.starts_with("sluice: cannot submit: "), "{stderr}");
    assert!(
        stderr.contains("552 5.3.4"),
        "the server's reply is printed: {stderr}"
    );
    let (code, stdout, _) = setup.server.cli(&["queue", "list", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), "[]");
}

#[test]
fn refused_recipient_exits_1_with_the_server_reply() {
    // Without relay_networks, loopback may not relay: RCPT gets 554 5.7.1.
    let setup = Setup::with("[policy]\nrelay_networks = []\n");
    let (code, _, stderr) = setup.sendmail(&["-f", "a@origin.test", "b@dest.test"], b"x\n");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("RCPT TO:<b@dest.test>"), "{stderr}");
    assert!(stderr.contains("554 5.7.1"), "{stderr}");
}

/// Submits a message of `size` body bytes (100-byte lines); returns the
/// queue ID and the sendmail process's peak resident set size in KiB.
// The child is reaped by `wait4` (for its rusage), not `Child::wait`.
#[allow(clippy::zombie_processes)]
fn submit_measured(setup: &Setup, size: usize) -> (String, i64) {
    let log = setup.server.dir.path().join("sendmail.err");
    let mut child = Command::new(common::binary())
        .args([
            "sendmail",
            "-v",
            "-f",
            "a@origin.test",
            "b@dest.test",
            "--config",
        ])
        .arg(&setup.client_config)
        .env_remove("SLUICE_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn sluice sendmail");
    let pid = child.id() as libc::pid_t;
    let mut input = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        input.write_all(b"Subject: large\n\n").unwrap();
        let line = [b'x'; 99];
        let mut written = 0;
        while written < size {
            input.write_all(&line).unwrap();
            input.write_all(b"\n").unwrap();
            written += 100;
        }
    });
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
        text
    });
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child, not yet reaped; the pointers are valid.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid);
    writer.join().unwrap();
    let stdout = reader.join().unwrap();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let id = stdout
        .trim()
        .strip_prefix("queued as ")
        .expect("queue ID")
        .to_string();
    (id, usage.ru_maxrss)
}

/// A 40 MiB message is streamed: the sendmail process never holds it (its
/// peak memory is within a few MiB of a 1 KiB message's, side by side).
#[test]
fn a_large_message_is_streamed_not_buffered() {
    const SIZE: usize = 40 << 20;
    let setup = Setup::with(
        "[limits]\nmax_message_size = \"64MiB\"\n[delivery]\nretry_initial = \"1h\"\nretry_max = \"1h\"\n",
    );
    let (_, small_rss) = submit_measured(&setup, 1024);
    let (id, large_rss) = submit_measured(&setup, SIZE);
    eprintln!(
        "sendmail peak RSS: 1 KiB message {small_rss} KiB, {} MiB message {large_rss} KiB (queue ID {id})",
        SIZE >> 20
    );
    assert!(
        large_rss - small_rss < 8 * 1024,
        "sendmail peaked at {large_rss} KiB for a {} MiB message, {small_rss} KiB for 1 KiB",
        SIZE >> 20
    );
    let delivered = setup.delivered(2);
    assert!(
        delivered
            .iter()
            .any(|transaction| transaction.body.len() > SIZE),
        "the large message arrived whole"
    );
}

#[test]
fn invoked_as_sendmail_it_is_sluice_sendmail_with_sluice_config() {
    let setup = Setup::new();
    let link = setup.server.dir.path().join("sendmail");
    std::os::unix::fs::symlink(common::binary(), &link).expect("symlink the binary");
    let mut child = Command::new(&link)
        .args(["-oi", "-f", "a@origin.test", "b@dest.test"])
        .env("SLUICE_CONFIG", &setup.client_config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sendmail");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Subject: via link\n\nx\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let delivered = setup.delivered(1);
    assert_eq!(delivered[0].mail_from, "a@origin.test");
    assert!(text(&delivered[0].body).contains("Subject: via link\r\n"));
}

#[test]
fn listener_on_port_0_is_found_through_the_address_the_server_recorded() {
    let destination = Destination::start(Options::default());
    let mut server = Sluice::start(&format!("[routes]\n\"*\" = \"{}\"\n", destination.addr));
    // The server's own config says 127.0.0.1:0; only the spool knows the port.
    let config = std::fs::read_to_string(&server.config_path).expect("config");
    assert!(config.contains("address = \"127.0.0.1:0\""), "{config}");
    let record = server.dir.path().join("spool").join("smtp.address");
    let recorded = std::fs::read_to_string(&record).expect("smtp.address written at startup");
    assert_eq!(recorded, format!("relay {}\n", server.smtp), "{recorded}");

    let (code, stdout, stderr) = sendmail(
        &server.config_path,
        &["-v", "-f", "a@origin.test", "b@dest.test"],
        b"Subject: found\n\nx\n",
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("queued as "), "{stdout}");
    let delivered = wait_delivered(&destination, 1);
    assert_eq!(delivered[0].recipients, ["b@dest.test"]);

    // A clean shutdown removes the record; with no server to answer,
    // sendmail writes into the (absolute) spool itself.
    assert!(server.terminate().success());
    assert!(!record.exists(), "smtp.address removed at shutdown");
    let admin_record = server.dir.path().join("spool").join("admin.address");
    assert!(!admin_record.exists(), "admin.address removed at shutdown");
    let (code, stdout, stderr) = sendmail(
        &server.config_path,
        &["-v", "b@dest.test"],
        b"Subject: dropped\n\nx\n",
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("queued as "), "{stdout}");
    let server = server.restart();
    let delivered = wait_delivered(&destination, 2);
    assert!(text(&delivered[1].body).contains("Subject: dropped\r\n"));
    drop(server);
}

/// A config with an absolute spool in `dir`, a listener nothing answers
/// on (port 0, recorded nowhere), mail routed to `route`, and `extra`.
fn maildrop_config(dir: &Path, route: std::net::SocketAddr, extra: &str) -> PathBuf {
    let text = common::config_text(
        dir,
        "",
        &format!("[delivery]\ntls = \"disabled\"\n\n[routes]\n\"*\" = \"{route}\"\n\n{extra}"),
    );
    common::write_config(dir, &text)
}

/// The stored message, read offline with `sluice queue cat`.
fn stored(config: &Path, id: &str) -> String {
    common::cli_ok(config, &["queue", "cat", id])
}

/// With no server answering, the message is written into the spool by
/// sendmail itself, with the processing a submission gets: our Received:
/// field, the added Date: and Message-ID:, and a DKIM signature from the
/// matching [[dkim]] entry. The server delivers it once it starts.
#[test]
fn no_server_writes_into_the_spool_with_the_same_processing_and_the_server_delivers_it() {
    let destination = Destination::start(Options::default());
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = common::run(None, |command| {
        command.args([
            "dkim",
            "keygen",
            "--domain",
            "origin.test",
            "--selector",
            "s1",
            "--out",
        ]);
        command.arg(dir.path());
    });
    assert_eq!(code, 0, "{stderr}");
    let key = dir.path().join("origin.test.s1.pem");
    let config = maildrop_config(
        dir.path(),
        destination.addr,
        &format!(
            "[[dkim]]\ndomain = \"origin.test\"\nselector = \"s1\"\nprivate_key = \"{}\"\n",
            key.display()
        ),
    );
    let (code, stdout, stderr) = sendmail(
        &config,
        &["-v", "-f", "a@origin.test", "b@dest.test"],
        b"From: A <a@origin.test>\nSubject: maildrop\n\nwritten while the server was down\n",
    );
    assert_eq!(
        code, 0,
        "sendmail with no server must take the message: {stderr}"
    );
    assert_eq!(stderr, "", "silent success");
    let id = stdout
        .trim()
        .strip_prefix("queued as ")
        .unwrap_or_else(|| panic!("no queue ID in {stdout:?}"))
        .to_string();
    let message = stored(&config, &id);
    let headers = header_section(message.as_bytes());
    assert!(headers.starts_with("DKIM-Signature: "), "{headers}");
    assert!(
        headers.contains("d=origin.test") && headers.contains("s=s1"),
        "{headers}"
    );
    assert!(
        headers.contains("Received: by sluice.test (sluice, from userid ")
            && headers.contains(&format!("id {id}")),
        "{headers}"
    );
    assert!(headers.contains("\r\nDate: "), "{headers}");
    assert!(headers.contains("\r\nMessage-ID: <"), "{headers}");
    assert_eq!(destination.transactions().len(), 0);

    // The server picks it up at start.
    let text_config = std::fs::read_to_string(&config).unwrap();
    let _server = Sluice::start_with(dir, &text_config);
    let delivered = wait_delivered(&destination, 1);
    assert_eq!(delivered[0].mail_from, "a@origin.test");
    assert_eq!(delivered[0].recipients, ["b@dest.test"]);
    assert_eq!(text(&delivered[0].body), message, "delivered as stored");
}

/// Runs sendmail for `config` in the background with `stdin`.
fn spawn_sendmail(config: &Path, args: &[&str], stdin: &[u8]) -> std::process::Child {
    let mut child = Command::new(common::binary())
        .env_remove("SLUICE_CONFIG")
        .arg("sendmail")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sendmail");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child
}

/// A spool held by another process (here the test, as a server that does
/// not answer would) is waited for: released within the wait, the message
/// is taken; held past it, sendmail exits 75 (EX_TEMPFAIL) saying why.
#[test]
fn a_held_spool_is_waited_for_then_sendmail_exits_75() {
    let destination = Destination::start(Options::default());
    let dir = tempfile::tempdir().unwrap();
    let config = maildrop_config(dir.path(), destination.addr, "");
    let spool = dir.path().join("spool");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // Released after a second: sendmail waits, then takes the message.
    let queue = common::spool::open_spool(&spool);
    let child = spawn_sendmail(&config, &["-v", "b@dest.test"], b"Subject: waited\n\nx\n");
    std::thread::sleep(std::time::Duration::from_secs(1));
    runtime.block_on(queue.close()).unwrap();
    drop(queue);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("in use by another process: waiting"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("queued as "));

    // Held throughout: exit 75 after the bounded wait, nothing written.
    let queue = common::spool::open_spool(&spool);
    let started = std::time::Instant::now();
    let (code, _, stderr) = sendmail(&config, &["b@dest.test"], b"Subject: refused\n\nx\n");
    assert_eq!(code, 75, "{stderr}");
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(9),
        "the wait is bounded but real: {:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains("is locked by another process") && stderr.contains("try again later"),
        "{stderr}"
    );
    assert_eq!(
        queue.iter(None).count(),
        1,
        "only the first message is queued"
    );
    runtime.block_on(queue.close()).unwrap();
}

/// The SMTP dialogue a `-bs` client sends (all at once: the session reads
/// it in turn).
const BS_SESSION: &[u8] =
    b"EHLO client.test\r\nMAIL FROM:<a@origin.test>\r\nRCPT TO:<b@dest.test>\r\n\
RCPT TO:<c@dest.test>\r\nDATA\r\nSubject: bs\r\n\r\nover stdin\r\n.\r\nQUIT\r\n";

/// The replies of a `-bs` session, one per line of the dialogue above.
fn assert_bs_replies(stdout: &str) -> String {
    let codes: Vec<&str> = stdout
        .lines()
        .filter(|line| line.len() >= 4 && line.as_bytes()[3] == b' ')
        .map(|line| &line[..3])
        .collect();
    assert_eq!(
        codes,
        ["220", "250", "250", "250", "250", "354", "250", "221"],
        "{stdout}"
    );
    let queued = stdout
        .lines()
        .find(|line| line.contains("queued as "))
        .unwrap_or_else(|| panic!("no queue ID in {stdout:?}"));
    queued
        .split("queued as ")
        .nth(1)
        .unwrap()
        .trim()
        .to_string()
}

/// `-bs` with a running server: the dialogue is relayed to it.
#[test]
fn bs_relays_the_smtp_dialogue_to_the_running_server() {
    let setup = Setup::new();
    let (code, stdout, stderr) = setup.sendmail(&["-bs"], BS_SESSION);
    assert_eq!(code, 0, "{stderr}");
    let id = assert_bs_replies(&stdout);
    let delivered = setup.delivered(1);
    assert_eq!(delivered[0].recipients, ["b@dest.test", "c@dest.test"]);
    assert!(text(&delivered[0].body).contains(&format!("id {id}")));
    setup.server.wait_log(&["message accepted", &id]);
}

/// `-bs` with no server: the same session runs over the spool, and the
/// server delivers the message when it starts.
#[test]
fn bs_without_a_server_runs_the_session_over_the_spool() {
    let destination = Destination::start(Options::default());
    let dir = tempfile::tempdir().unwrap();
    let config = maildrop_config(dir.path(), destination.addr, "");
    let (code, stdout, stderr) = sendmail(&config, &["-bs"], BS_SESSION);
    assert_eq!(code, 0, "{stderr}");
    let id = assert_bs_replies(&stdout);
    assert!(stdout.starts_with("220 sluice.test ESMTP"), "{stdout}");
    assert!(!stdout.contains("STARTTLS"), "{stdout}");
    let text_config = std::fs::read_to_string(&config).unwrap();
    let _server = Sluice::start_with(dir, &text_config);
    let delivered = wait_delivered(&destination, 1);
    assert_eq!(delivered[0].recipients, ["b@dest.test", "c@dest.test"]);
    assert!(text(&delivered[0].body).contains(&format!("id {id}")));
    assert!(text(&delivered[0].body).contains("over stdin\r\n"));
}

/// A server that starts while sendmail holds the spool (a `-bs` session
/// still open) waits for it, starts once the session ends, and delivers
/// what the session wrote.
#[test]
fn a_server_starting_while_sendmail_holds_the_spool_waits_for_it() {
    use std::io::BufRead;
    let destination = Destination::start(Options::default());
    let dir = tempfile::tempdir().unwrap();
    let config = maildrop_config(dir.path(), destination.addr, "");
    let mut child = Command::new(common::binary())
        .env_remove("SLUICE_CONFIG")
        .args(["sendmail", "-bs", "--config"])
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sendmail -bs");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(
            b"EHLO client.test\r\nMAIL FROM:<a@origin.test>\r\nRCPT TO:<held@dest.test>\r\n\
              DATA\r\nSubject: held\r\n\r\nx\r\n.\r\n",
        )
        .unwrap();
    let mut replies = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("queued as") {
        let mut line = String::new();
        assert!(replies.read_line(&mut line).unwrap() > 0, "{seen}");
        seen.push_str(&line);
    }

    // The session is still open: the spool is held.
    let text_config = std::fs::read_to_string(&config).unwrap();
    let starting = std::thread::spawn(move || Sluice::start_with(dir, &text_config));
    std::thread::sleep(std::time::Duration::from_millis(1500));
    stdin.write_all(b"QUIT\r\n").unwrap();
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    let server = starting.join().expect("the server started");
    assert!(
        server
            .log_text()
            .contains("the spool is in use by another process; waiting for it"),
        "{}",
        server.log_text()
    );
    let delivered = wait_delivered(&destination, 1);
    assert_eq!(delivered[0].recipients, ["held@dest.test"]);
}
