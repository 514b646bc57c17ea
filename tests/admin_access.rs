//! Admin access against the real binary, as the users concerned: a local
//! user reaching the TCP API without the token (401) or the admin socket
//! (refused), `sluice queue` never talking to a fake listener on the admin
//! port while the server is down, a reload that drops the token, and a
//! reload in the middle of a transaction (one settings snapshot per
//! connection).
//!
//! The tests that act as another user create a throwaway one (`useradd`)
//! and run the tools as it with `setpriv`; they need root (CI runs as root)
//! and say so, without failing, when not run as root.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod admin;
    pub mod server;
    pub mod smtp;
    pub use {server::*, smtp::*};
}

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::admin::{http, http_anonymous};
use common::{DEADLINE, NO_DELIVERY, Sluice, config_text, signal, wait_for};

/// A user created for one test, removed when dropped.
struct LocalUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl LocalUser {
    /// Creates a user with no home and no shell; `None` when not root.
    fn create() -> Option<LocalUser> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: creating a throwaway user needs root (CI runs as root)");
            return None;
        }
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "sladm{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let status = Command::new("useradd")
            .args([
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
            ])
            .arg(&name)
            .status()
            .expect("run useradd");
        assert!(status.success(), "useradd {name}: {status}");
        let id = |flag: &str| -> u32 {
            let output = Command::new("id")
                .arg(flag)
                .arg(&name)
                .output()
                .expect("id");
            String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .expect("a numeric id")
        };
        let (uid, gid) = (id("-u"), id("-g"));
        Some(LocalUser { name, uid, gid })
    }

    /// Runs `program args…` as this user; (exit code, stdout, stderr).
    fn run(&self, program: &str, args: &[&str]) -> (i32, String, String) {
        let output = Command::new("setpriv")
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups")
            .arg("--")
            .arg(program)
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .expect("run setpriv");
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

impl Drop for LocalUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

/// A copy of `sluice`'s config that `user` can read, in a directory of its
/// own; returns its path.
fn readable_config(sluice: &Sluice, dir: &Path) -> String {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    let path = dir.join("sluice.toml");
    std::fs::copy(&sluice.config_path, &path).expect("copy config");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    path.display().to_string()
}

/// Queues one message; returns its queue ID.
fn queue_one(sluice: &Sluice) -> String {
    sluice.connect().send_message(
        "a@example.org",
        &["b@example.net"],
        "Subject: secret\r\n\r\nthe secret text\r\n",
    )
}

#[test]
fn a_local_user_reads_nothing_through_the_api_or_the_admin_socket() {
    let Some(user) = LocalUser::create() else {
        return;
    };
    let sluice = Sluice::start_no_delivery("");
    let id = queue_one(&sluice);
    let admin = sluice.admin;

    // The TCP API: loopback is not trust, no token is 401.
    for (method, path) in [
        ("GET", "/v1/queue".to_string()),
        ("GET", format!("/v1/queue/{id}/message")),
        ("POST", format!("/v1/queue/{id}/hold")),
        ("POST", "/v1/queue/retry".to_string()),
    ] {
        let url = format!("http://{admin}{path}");
        let (code, stdout, stderr) = user.run(
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                method,
                "-H",
                "X-Sluice-Request: 1",
                &url,
            ],
        );
        assert_eq!(
            (code, stdout.as_str()),
            (0, "401"),
            "{method} {path} as {}: {stderr}",
            user.name
        );
    }
    // /health and /metrics are open, and tell nothing of the messages.
    let (_, health, _) = user.run(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{admin}/health"),
        ],
    );
    assert_eq!(health, "200");

    // The admin socket: the user's `sluice queue` cannot reach it (the
    // spool directory is the server's)…
    let own = tempfile::tempdir().expect("temp dir");
    let config = readable_config(&sluice, own.path());
    let sluice_binary = common::binary();
    let (code, stdout, stderr) = user.run(sluice_binary, &["queue", "list", "--config", &config]);
    assert_ne!(code, 0, "queue list as {}: {stdout}", user.name);
    assert!(!stdout.contains(&id), "the queue leaked: {stdout}");
    eprintln!("queue list as a plain user: exit {code}: {}", stderr.trim());

    // …and even when the directories and the socket are opened to everyone,
    // the server checks the peer's uid and closes the connection.
    let spool = sluice.dir.path().join("spool");
    for path in [sluice.dir.path(), spool.as_path()] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let socket = spool.join("admin.sock");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let (code, stdout, stderr) =
        user.run(sluice_binary, &["queue", "cat", &id, "--config", &config]);
    assert_ne!(code, 0, "queue cat as {}: {stdout}", user.name);
    assert!(
        !stdout.contains("the secret text"),
        "the message leaked: {stdout}"
    );
    sluice.wait_log(&[
        "admin socket connection refused",
        &format!("uid={}", user.uid),
    ]);
    eprintln!(
        "queue cat as a plain user, socket opened: exit {code}: {}",
        stderr.trim()
    );

    // Root goes through the socket, without a token.
    let (code, stdout, stderr) = sluice.cli(&["queue", "list"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&id), "{stdout}");
}

#[test]
fn sluice_queue_sends_nothing_to_a_fake_admin_listener_while_the_server_is_down() {
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port();
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config_text(dir.path(), "", NO_DELIVERY).replace(
        "[admin]\naddress = \"127.0.0.1:0\"",
        &format!("[admin]\naddress = \"127.0.0.1:{port}\"\ntoken = \"the-real-token\""),
    );
    assert!(text.contains(&port.to_string()), "{text}");
    let mut sluice = Sluice::start_with(dir, &text);
    let id = queue_one(&sluice);
    assert!(sluice.terminate().success());

    // Another user's process takes the port while the server is down.
    let fake = TcpListener::bind(("127.0.0.1", port)).expect("take the admin port");
    fake.set_nonblocking(true).expect("nonblocking");
    let (code, stdout, stderr) = sluice.cli(&["queue", "list"]);
    assert_eq!(code, 0, "offline queue list: {stderr}");
    assert!(stdout.contains(&id), "read from the spool: {stdout}");
    let (code, _, stderr) = sluice.cli(&["queue", "hold", &id]);
    assert_eq!(code, 0, "offline hold: {stderr}");
    match fake.accept() {
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("sluice queue connected to the fake admin API from {peer}"),
        Err(error) => panic!("accept: {error}"),
    }
}

/// `sluice_config_reloads_total{result="ok"}`.
fn reloads_ok(sluice: &Sluice) -> u64 {
    let metrics = http_anonymous("GET", sluice.admin, "/metrics").body;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("sluice_config_reloads_total{result=\"ok\"} "))
        .unwrap_or_else(|| panic!("no reload counter in /metrics:\n{metrics}"))
        .trim()
        .parse()
        .expect("a counter value")
}

/// Writes `text` as the config, sends SIGHUP and waits for the reload.
fn reload(sluice: &Sluice, text: &str) {
    let before = reloads_ok(sluice);
    std::fs::write(&sluice.config_path, text).expect("write config");
    signal(sluice.pid(), "HUP");
    wait_for("the reload", DEADLINE, || {
        (reloads_ok(sluice) > before).then_some(())
    });
}

#[test]
fn no_reload_makes_the_api_answer_without_a_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config_text(dir.path(), "", NO_DELIVERY).replace(
        "[admin]\naddress = \"127.0.0.1:0\"",
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken = \"first-token\"",
    );
    let sluice = Sluice::start_with(dir, &text);
    let admin = sluice.admin;
    let id = queue_one(&sluice);
    assert_eq!(http_anonymous("GET", admin, "/v1/queue").status, 401);
    assert_eq!(
        http("GET", admin, "/v1/queue", Some("first-token")).status,
        200
    );

    // The token removed and the address changed (which needs a restart):
    // the socket stays where it is bound, and still needs a token.
    let reloaded = text.replace("token = \"first-token\"\n", "").replace(
        "[admin]\naddress = \"127.0.0.1:0\"",
        "[admin]\naddress = \"127.0.0.2:0\"",
    );
    reload(&sluice, &reloaded);
    for (method, path) in [
        ("GET", "/v1/queue".to_string()),
        ("POST", "/v1/queue/retry".to_string()),
        ("GET", format!("/v1/queue/{id}/message")),
    ] {
        assert_eq!(
            http_anonymous(method, admin, path.as_str()).status,
            401,
            "{method} {path}"
        );
        assert_eq!(
            http(method, admin, &path, Some("first-token")).status,
            401,
            "{method} {path}"
        );
    }
    // The token in force is now the generated one, in a private file.
    let file = sluice.dir.path().join("spool/admin.token");
    let mode = std::fs::metadata(&file)
        .expect("the token file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let generated = std::fs::read_to_string(&file).expect("read the token");
    assert_eq!(
        http("GET", admin, "/v1/queue", Some(generated.trim())).status,
        200
    );
    // The command line needs none: it uses the socket.
    let (code, stdout, stderr) = sluice.cli(&["queue", "list"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&id), "{stdout}");
}

#[test]
fn a_reload_in_the_middle_of_a_transaction_keeps_its_size_limit() {
    let limits = "[limits]\nmax_message_size = \"1MiB\"\n";
    let dir = tempfile::tempdir().expect("temp dir");
    let text = config_text(dir.path(), "", &format!("{limits}\n{NO_DELIVERY}"));
    let sluice = Sluice::start_with(dir, &text);
    let line = format!("{}\r\n", "x".repeat(998));
    let half: String = line.repeat(150); // ~150 KB
    let lowered = text.replace(
        "max_message_size = \"1MiB\"",
        "max_message_size = \"200KiB\"",
    );
    let lowest = text.replace(
        "max_message_size = \"1MiB\"",
        "max_message_size = \"100KiB\"",
    );

    let mut client = sluice.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<a@example.org>", "250");
    client.expect("RCPT TO:<b@example.net>", "250");
    // The limit drops to 200 KiB between RCPT and DATA, then to 100 KiB
    // while the message (300 KB) is on its way.
    reload(&sluice, &lowered);
    client.expect("DATA", "354");
    client.send_raw(half.as_bytes());
    reload(&sluice, &lowest);
    client.send_raw(half.as_bytes());
    client.send_raw(b".\r\n");
    let reply = client.read_reply();
    assert!(
        reply.starts_with("250"),
        "the transaction in progress keeps its 1 MiB limit: {reply}"
    );
    client.expect("QUIT", "221");

    // A new connection has the new limit.
    let mut client = sluice.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<a@example.org>", "250");
    client.expect("RCPT TO:<b@example.net>", "250");
    client.expect("DATA", "354");
    client.send_raw(half.as_bytes());
    client.send_raw(half.as_bytes());
    client.send_raw(b".\r\n");
    let reply = client.read_reply();
    assert!(
        reply.starts_with("552"),
        "a new connection has the new limit: {reply}"
    );
}
