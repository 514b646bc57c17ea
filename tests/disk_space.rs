//! The free-space reserve (`spool.min_free`, DESIGN.md "Disk space"): below
//! it, MAIL gets `452 4.3.1`, the server stays up and delivers, and
//! accepting resumes by itself once space is back. Against the real binary,
//! a real destination, and (as root) a real small tmpfs filled to the
//! reserve.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod admin;
    pub mod destination;
    pub mod server;
    pub mod smtp;
    pub use {server::*, smtp::*};
}

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::destination::{Destination, Options, wait_delivered};
use common::{DEADLINE, Sluice, SmtpClient, wait_for};

/// A destination that answers RCPT `451` while `refusing` is set.
fn destination(refusing: &Arc<AtomicBool>) -> Destination {
    let destination = Destination::start(Options::default());
    let flag = refusing.clone();
    destination.on_rcpt(move |_, _| {
        flag.load(Ordering::SeqCst)
            .then(|| "451 4.3.0 not now".to_string())
    });
    destination
}

/// The server's config: everything routed to `route`, retries an hour
/// apart (the test retries by hand), `min_free` in `[spool]`.
fn config(dir: &Path, route: std::net::SocketAddr, min_free: &str) -> String {
    common::routed_config_text(dir, route, "", "").replace(
        "[spool]\n",
        &format!("[spool]\nmin_free = \"{min_free}\"\n"),
    )
}

/// Sends one message of `body_size` octets; returns the reply to MAIL and,
/// when MAIL was accepted, the final reply.
fn send(client: &mut SmtpClient, recipient: &str, body_size: usize) -> (String, Option<String>) {
    let mail = client.command("MAIL FROM:<a@origin.test>");
    if !mail.starts_with("250") {
        return (mail, None);
    }
    client.expect(&format!("RCPT TO:<{recipient}>"), "250");
    client.expect("DATA", "354");
    let mut message = format!("Subject: {recipient}\r\n\r\n").into_bytes();
    let line = [b'x'; 998];
    while message.len() < body_size {
        message.extend_from_slice(&line);
        message.extend_from_slice(b"\r\n");
    }
    message.extend_from_slice(b".\r\n");
    client.send_raw(&message);
    (mail, Some(client.read_reply()))
}

/// The value of an unlabelled metric on `/metrics`.
fn metric(server: &Sluice, name: &str) -> i64 {
    let text = common::admin::http("GET", server.admin, "/metrics", None).body;
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not an integer"))
}

/// Without root: a reserve larger than any filesystem is crossed from the
/// start. MAIL gets 452 4.3.1 (and sendmail exits 1 with that reply) while
/// the server stays up and delivers the mail it already has; a restart
/// with the reserve off accepts again.
#[test]
fn below_the_reserve_mail_gets_452_while_delivery_goes_on() {
    let refusing = Arc::new(AtomicBool::new(true));
    let destination = destination(&refusing);
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), destination.addr, "0");
    let server = Sluice::start_with(dir, &text);
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    let mut ids = Vec::new();
    for index in 0..3 {
        let (mail, end) = send(&mut client, &format!("r{index}@dest.test"), 2000);
        assert!(mail.starts_with("250"), "{mail}");
        ids.push(end.unwrap());
    }
    client.expect("QUIT", "221");
    wait_for("three deferrals", DEADLINE, || {
        (0..3)
            .all(|index| destination.rcpt_attempts(&format!("r{index}@dest.test")) > 0)
            .then_some(())
    });

    // 1,000,000 GiB: more than any filesystem has free.
    std::fs::write(
        &server.config_path,
        config(server.dir.path(), destination.addr, "1000000GiB"),
    )
    .unwrap();
    let mut server = server.restart();
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    let (mail, _) = send(&mut client, "late@dest.test", 100);
    assert_eq!(mail.trim_end(), "452 4.3.1 Insufficient system storage");
    // The session goes on; a second MAIL is refused the same way.
    client.expect("NOOP", "250");
    let (mail, _) = send(&mut client, "late@dest.test", 100);
    assert!(mail.starts_with("452 4.3.1"), "{mail}");
    client.expect("QUIT", "221");
    let line = server.wait_log(&["below spool.min_free"]);
    assert!(line.contains("WARN"), "{line}");
    server.wait_log(&["transaction refused", "reply=\"452 4.3.1"]);
    assert_eq!(metric(&server, "sluice_spool_space_low"), 1);
    assert!(metric(&server, "sluice_spool_free_bytes") > 0);

    // sendmail exits with the server's reply.
    let client_config = server.dir.path().join("client.toml");
    std::fs::write(
        &client_config,
        format!(
            "hostname = \"sluice.test\"\n[local]\nsubmit_socket = \"{}\"\n",
            server.dir.path().join("spool/submit.sock").display()
        ),
    )
    .unwrap();
    let (code, _, stderr) = common::run(Some(b"Subject: x\n\nx\n"), |command| {
        command
            .args(["sendmail", "--config"])
            .arg(&client_config)
            .arg("b@dest.test");
    });
    assert_eq!(
        code, 75,
        "a 4xx refusal is a temporary failure (EX_TEMPFAIL): {stderr}"
    );
    assert!(
        stderr.contains("452 4.3.1 Insufficient system storage"),
        "{stderr}"
    );

    // Delivery goes on below the reserve: the queue drains.
    refusing.store(false, Ordering::SeqCst);
    let (code, _, stderr) = server.cli(&["queue", "retry", "--all"]);
    assert_eq!(code, 0, "{stderr}");
    let delivered = wait_delivered(&destination, 3);
    assert_eq!(delivered.len(), 3);
    wait_for("an empty queue", DEADLINE, || {
        let (_, stdout, _) = server.cli(&["queue", "list"]);
        stdout.contains("Mail queue is empty").then_some(())
    });
    assert!(server.is_running(), "the server stays up below the reserve");
    assert_eq!(
        server
            .log_text()
            .matches("new mail gets 452 4.3.1 until space is back")
            .count(),
        1,
        "entering the state is logged once, not per message"
    );

    // Reserve off: accepting again.
    std::fs::write(
        &server.config_path,
        config(server.dir.path(), destination.addr, "0"),
    )
    .unwrap();
    let server = server.restart();
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    let (mail, end) = send(&mut client, "again@dest.test", 100);
    assert!(mail.starts_with("250"), "{mail}");
    assert!(end.unwrap().starts_with("250 2.0.0"));
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "32m"); `None` when not root or when
    /// mounting is not allowed here.
    fn mount(size: &str) -> Option<Tmpfs> {
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } != 0 {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .ok()?;
        status.success().then_some(Tmpfs { path, _dir: dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// As root (CI): a 40 MiB tmpfs spool with an 8 MiB reserve, filled with
/// 3 MiB messages while the destination defers them, until MAIL gets
/// 452 4.3.1 with the server up. The destination then accepts: delivery
/// drains the queue, which frees the space, and accepting resumes by
/// itself, without a restart; every message acknowledged is delivered.
#[test]
fn a_small_spool_filled_to_the_reserve_drains_and_accepts_again() {
    let Some(tmpfs) = Tmpfs::mount("40m") else {
        eprintln!(
            "\n*** SKIPPED a_small_spool_filled_to_the_reserve_drains_and_accepts_again: \
             it needs root to mount a tmpfs (CI runs as root); \
             below_the_reserve_mail_gets_452_while_delivery_goes_on still ran ***\n"
        );
        return;
    };
    let refusing = Arc::new(AtomicBool::new(true));
    let destination = destination(&refusing);
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), destination.addr, "8MiB").replace(
        &format!("path = \"{}\"", dir.path().join("spool").display()),
        &format!("path = \"{}\"", tmpfs.path.join("spool").display()),
    );
    let mut server = Sluice::start_with(dir, &text);

    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    let mut accepted = Vec::new();
    let refused = loop {
        assert!(accepted.len() < 40, "the reserve was never reached");
        let (mail, end) = send(
            &mut client,
            &format!("r{}@dest.test", accepted.len()),
            3 << 20,
        );
        match end {
            // The message that took the free space below the reserve is
            // refused at its end, nothing queued.
            Some(end) if end.starts_with("452 4.3.1") => break end,
            Some(end) => {
                assert!(end.starts_with("250 2.0.0"), "{end}");
                accepted.push(end);
            }
            None => break mail,
        }
        // The reserve is checked at most once a second: pace the filling
        // as a test, so that the check sees each message.
        std::thread::sleep(Duration::from_millis(1100));
    };
    assert_eq!(refused.trim_end(), "452 4.3.1 Insufficient system storage");
    assert!(accepted.len() >= 3, "only {} accepted", accepted.len());
    client.expect("NOOP", "250");
    assert!(server.is_running(), "the server stays up at the reserve");
    server.wait_log(&["below spool.min_free"]);

    // Delivery goes on and frees the space; accepting resumes by itself.
    refusing.store(false, Ordering::SeqCst);
    let (code, _, stderr) = server.cli(&["queue", "retry", "--all"]);
    assert_eq!(code, 0, "{stderr}");
    let delivered = wait_delivered(&destination, accepted.len());
    let mut recipients: Vec<String> = delivered
        .iter()
        .flat_map(|transaction| transaction.recipients.clone())
        .collect();
    recipients.sort();
    recipients.dedup();
    assert_eq!(
        recipients.len(),
        accepted.len(),
        "nothing acknowledged is lost"
    );
    let reply = wait_for("MAIL accepted again", Duration::from_secs(30), || {
        let reply = client.command("MAIL FROM:<a@origin.test>");
        if reply.starts_with("250") {
            Some(reply)
        } else {
            std::thread::sleep(Duration::from_millis(200));
            None
        }
    });
    assert!(reply.starts_with("250 2.1.0"), "{reply}");
    client.expect("RSET", "250");
    server.wait_log(&["back above spool.min_free"]);
    let (_, end) = send(&mut client, "after@dest.test", 1 << 20);
    assert!(end.unwrap().starts_with("250 2.0.0"));
    client.expect("QUIT", "221");
    assert!(server.is_running());
    server.terminate();
    drop(tmpfs);
}

/// The free bytes of the filesystem holding `path` (statvfs `f_bavail`).
fn free_bytes(path: &Path) -> u64 {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a zeroed statvfs is a valid out-parameter; `path` is a valid
    // C string for the duration of the call.
    unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(path.as_ptr(), &mut stat), 0, "statvfs");
        stat.f_bavail as u64 * stat.f_frsize as u64
    }
}

/// Samples the free space of `path` every few milliseconds until `stop`;
/// returns the lowest figure seen.
fn sample_free_space(path: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut lowest = u64::MAX;
        while !stop.load(Ordering::SeqCst) && path.exists() {
            lowest = lowest.min(free_bytes(&path));
            std::thread::sleep(Duration::from_millis(3));
        }
        lowest
    })
}

/// One message of about `body_size` octets to `good<n>` and `bad<n>`; the
/// reply to MAIL and, when MAIL was accepted, the final reply.
fn send_pair(client: &mut SmtpClient, n: usize, body_size: usize) -> (String, Option<String>) {
    let mail = client.command("MAIL FROM:<a@origin.test>");
    if !mail.starts_with("250") {
        return (mail, None);
    }
    client.expect(&format!("RCPT TO:<good{n}@dest.test>"), "250");
    client.expect(&format!("RCPT TO:<bad{n}@dest.test>"), "250");
    client.expect("DATA", "354");
    let mut message = format!("Subject: pair {n}\r\n\r\n").into_bytes();
    while message.len() < body_size {
        message.extend_from_slice(&[b'y'; 78]);
        message.extend_from_slice(b"\r\n");
    }
    message.extend_from_slice(b".\r\n");
    client.send_raw(&message);
    (mail, Some(client.read_reply()))
}

/// The config of a spool on `tmpfs`, routed to `route`, with `min_free`
/// and retries 2 s apart.
fn tmpfs_config(dir: &Path, tmpfs: &Path, route: std::net::SocketAddr, min_free: &str) -> String {
    config(dir, route, min_free)
        .replace(
            &format!("path = \"{}\"", dir.join("spool").display()),
            &format!("path = \"{}\"", tmpfs.join("spool").display()),
        )
        .replace("retry_initial = \"1h\"", "retry_initial = \"2s\"")
        .replace("retry_max = \"2h\"", "retry_max = \"4s\"")
}

/// As root (CI): a 24 MiB tmpfs spool with a 6 MiB reserve, filled as fast
/// as one client can by 8 KiB messages to two recipients each, while the
/// destination refuses one of them (550: a bounce for each message, made
/// under pressure) and defers the other and the bounces. The free space,
/// sampled every few milliseconds, never reaches 0; the server never stops;
/// once the destination accepts, every acknowledged message is delivered to
/// its good recipient and bounced for its bad one, and the drained spool
/// accepts new mail again.
#[test]
fn bounces_made_under_pressure_never_take_the_last_byte() {
    let Some(tmpfs) = Tmpfs::mount("24m") else {
        eprintln!(
            "\n*** SKIPPED bounces_made_under_pressure_never_take_the_last_byte: \
             it needs root to mount a tmpfs (CI runs as root) ***\n"
        );
        return;
    };
    let deferring = Arc::new(AtomicBool::new(true));
    let destination = Destination::start(Options::default());
    let flag = deferring.clone();
    destination.on_rcpt(move |recipient, _| {
        if recipient.contains("bad") {
            Some("550 5.1.1 no such user".to_string())
        } else {
            flag.load(Ordering::SeqCst)
                .then(|| "451 4.3.0 not now".to_string())
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let text = tmpfs_config(dir.path(), &tmpfs.path, destination.addr, "6MiB");
    let mut server = Sluice::start_with(dir, &text);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_free_space(tmpfs.path.clone(), stop.clone());

    let started = std::time::Instant::now();
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    let mut accepted = Vec::new();
    let mut refused = 0;
    let mut refusals_in_a_row = 0;
    while refusals_in_a_row < 30 && started.elapsed() < Duration::from_secs(60) {
        let n = accepted.len() + refused;
        let (mail, end) = send_pair(&mut client, n, 8 << 10);
        match end {
            Some(end) if end.starts_with("250 2.0.0") => {
                accepted.push(n);
                refusals_in_a_row = 0;
            }
            Some(end) => {
                assert!(end.starts_with("452 4.3.1"), "end of DATA: {end}");
                refused += 1;
                refusals_in_a_row += 1;
            }
            None => {
                assert!(mail.starts_with("452 4.3.1"), "MAIL: {mail}");
                refused += 1;
                refusals_in_a_row += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        assert!(server.is_running(), "the server stopped while filling");
    }
    assert!(refusals_in_a_row >= 30, "the reserve was never reached");
    assert!(
        accepted.len() > 200,
        "only {} accepted, {refused} refused",
        accepted.len()
    );
    client.expect("QUIT", "221");
    let filled = started.elapsed();

    // Let the delivery retries and bounces run at the reserve for a while.
    std::thread::sleep(Duration::from_secs(3));
    assert!(server.is_running(), "the server stopped at the reserve");
    deferring.store(false, Ordering::SeqCst);
    let (code, _, stderr) = server.cli(&["queue", "retry", "--all"]);
    assert_eq!(code, 0, "{stderr}");
    let (good, bounced) = wait_for(
        "every acknowledged message delivered and bounced",
        Duration::from_secs(90),
        || {
            let delivered = destination.delivered();
            let mut good = std::collections::HashSet::new();
            let mut bounced = std::collections::HashSet::new();
            for transaction in &delivered {
                for recipient in &transaction.recipients {
                    if let Some(n) = recipient
                        .trim_matches(|c| c == '<' || c == '>')
                        .strip_prefix("good")
                        .and_then(|rest| rest.strip_suffix("@dest.test"))
                    {
                        good.insert(n.parse::<usize>().unwrap());
                    }
                }
                if transaction
                    .mail_from
                    .trim_matches(|c| c == '<' || c == '>')
                    .is_empty()
                {
                    let body = String::from_utf8_lossy(&transaction.body);
                    // The first "bad<n>@dest.test" the bounce names.
                    if let Some(n) = body.split("bad").skip(1).find_map(|rest| {
                        let digits = rest.split("@dest.test").next()?;
                        digits.parse::<usize>().ok()
                    }) {
                        bounced.insert(n);
                    }
                }
            }
            let done = accepted
                .iter()
                .all(|n| good.contains(n) && bounced.contains(n));
            if !done {
                std::thread::sleep(Duration::from_millis(500));
            }
            done.then_some((good.len(), bounced.len()))
        },
    );
    let reply = wait_for("MAIL accepted again", Duration::from_secs(30), || {
        let mut client = server.connect();
        client.expect("EHLO client.test", "250");
        let reply = client.command("MAIL FROM:<a@origin.test>");
        if reply.starts_with("250") {
            Some(reply)
        } else {
            std::thread::sleep(Duration::from_millis(200));
            None
        }
    });
    assert!(reply.starts_with("250 2.1.0"), "{reply}");
    stop.store(true, Ordering::SeqCst);
    let lowest = sampler.join().unwrap();
    let log = server.log_text();
    eprintln!(
        "filled in {filled:?}: {} acknowledged, {refused} refused with 452 4.3.1, \
         {good} delivered, {bounced} bounced, lowest free space {lowest} bytes of 24 MiB, \
         {} notices postponed",
        accepted.len(),
        log.matches("notice postponed").count()
    );
    assert!(lowest > 0, "the spool's filesystem was full at some moment");
    assert!(
        !log.contains("the spool cannot be written"),
        "no write failed: the reserve held"
    );
    assert!(server.is_running());
    server.terminate();
    drop(tmpfs);
}

/// Fills the filesystem holding `dir` with a file until a write fails with
/// ENOSPC; returns the file's path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    for size in [1 << 20, 4096, 512, 1] {
        let chunk = vec![0u8; size];
        while file.write_all(&chunk).is_ok() {}
    }
    let _ = file.sync_all();
    path
}

/// As root (CI): a disk filled from outside while the server is idle. MAIL
/// gets 452 4.3.1 within a second or so, the server stays up. With the
/// reserve switched off (a reload) the message gets to the write, which
/// fails (ENOSPC in sled's log): 452 4.3.1 for that message, and the
/// server stays up. Once the filler is removed, the spool's database is
/// reopened in process and mail is accepted again within seconds; the
/// message acknowledged before the fill is delivered.
#[test]
fn a_disk_filled_from_outside_gets_452_and_accepts_again_once_freed() {
    let Some(tmpfs) = Tmpfs::mount("16m") else {
        eprintln!(
            "\n*** SKIPPED a_disk_filled_from_outside_gets_452_and_accepts_again_once_freed: \
             it needs root to mount a tmpfs (CI runs as root) ***\n"
        );
        return;
    };
    let refusing = Arc::new(AtomicBool::new(true));
    let destination = destination(&refusing);
    let dir = tempfile::tempdir().unwrap();
    let text = tmpfs_config(dir.path(), &tmpfs.path, destination.addr, "2MiB");
    let mut server = Sluice::start_with(dir, &text);
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    let (_, end) = send(&mut client, "before@dest.test", 20_000);
    assert!(end.unwrap().starts_with("250 2.0.0"));

    let filler = fill(&tmpfs.path);
    assert!(free_bytes(&tmpfs.path) < 4096, "the filler filled the disk");
    let reply = wait_for("452 at MAIL", Duration::from_secs(5), || {
        let reply = client.command("MAIL FROM:<a@origin.test>");
        if reply.starts_with("250") {
            client.expect("RSET", "250");
            std::thread::sleep(Duration::from_millis(100));
            None
        } else {
            Some(reply)
        }
    });
    assert_eq!(reply.trim_end(), "452 4.3.1 Insufficient system storage");
    assert!(server.is_running());

    // The reserve off: the write itself meets the full disk.
    std::fs::write(
        &server.config_path,
        tmpfs_config(server.dir.path(), &tmpfs.path, destination.addr, "0"),
    )
    .unwrap();
    common::signal(server.pid(), "HUP");
    server.wait_log(&["configuration reloaded", "spool.min_free"]);
    // A connection keeps the settings it started with: a new one.
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    wait_for("MAIL accepted with the reserve off", DEADLINE, || {
        let reply = client.command("MAIL FROM:<a@origin.test>");
        client.expect("RSET", "250");
        reply.starts_with("250").then_some(())
    });
    // sled may still have room inside its files: messages of 60 KiB (kept
    // in the database) until one meets the full disk.
    let mut acknowledged = Vec::new();
    let end = loop {
        assert!(acknowledged.len() < 200, "no write ever failed");
        let recipient = format!("full{}@dest.test", acknowledged.len());
        let (mail, end) = send(&mut client, &recipient, 60_000);
        assert!(mail.starts_with("250"), "{mail}");
        let end = end.unwrap();
        if !end.starts_with("250") {
            break end;
        }
        acknowledged.push(recipient);
    };
    assert!(
        end.starts_with("452 4.3.1") || end.starts_with("451 4.3.0"),
        "a message written onto a full disk: {end}"
    );
    server.wait_log(&["the spool cannot be written"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        server.is_running(),
        "the server stays up after a failed write"
    );
    client.expect("NOOP", "250");

    std::fs::remove_file(&filler).unwrap();
    let freed = std::time::Instant::now();
    let end = wait_for("accepting again", Duration::from_secs(15), || {
        let mut client = server.connect();
        client.expect("EHLO client.test", "250");
        let (_, end) = send(&mut client, "after@dest.test", 20_000);
        match end {
            Some(end) if end.starts_with("250") => Some(end),
            _ => {
                std::thread::sleep(Duration::from_millis(100));
                None
            }
        }
    });
    eprintln!(
        "accepting again {:?} after the filler was removed",
        freed.elapsed()
    );
    assert!(end.starts_with("250 2.0.0"), "{end}");
    assert!(server.is_running());

    refusing.store(false, Ordering::SeqCst);
    let (code, _, stderr) = server.cli(&["queue", "retry", "--all"]);
    assert_eq!(code, 0, "{stderr}");
    acknowledged.push("before@dest.test".to_string());
    acknowledged.push("after@dest.test".to_string());
    wait_for("every acknowledged message delivered", DEADLINE, || {
        acknowledged
            .iter()
            .all(|recipient| destination.got_mail_for(recipient))
            .then_some(())
    });
    let refused = format!("full{}@dest.test", acknowledged.len() - 2);
    assert!(
        !destination.got_mail_for(&refused),
        "the message refused on the full disk was not queued"
    );
    eprintln!(
        "{} messages acknowledged on the full disk before a write failed",
        acknowledged.len() - 2
    );
    server.terminate();
    drop(tmpfs);
}
