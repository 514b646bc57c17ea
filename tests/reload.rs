//! Reload (SIGHUP) against the real binary: what a reload changes (routes,
//! the certificate, listeners), what it refuses (a file that does not load,
//! a new spool path) with the old settings kept, `check-config` failing
//! where a start would, clean exits on every stop signal, and a reload
//! storm under load that loses and duplicates nothing.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod admin;
    pub mod destination;
    pub mod server;
    pub mod smtp;
    pub use {server::*, smtp::*};
}

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::destination::{Destination, Options, wait_delivered};
use common::{DEADLINE, Sluice, SmtpClient, routed_config_text, signal, wait_for, write_config};

/// `sluice_config_reloads_total{result="…"}` from /metrics.
fn reloads(server: &Sluice, result: &str) -> u64 {
    let metrics = common::admin::http("GET", server.admin, "/metrics", None).body;
    let prefix = format!("sluice_config_reloads_total{{result=\"{result}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{metrics}"))
        .trim()
        .parse()
        .expect("a counter value")
}

/// Sends SIGHUP and waits until the reload counter `result` reached one
/// more than before and the reload's log line came; returns the log lines
/// written since the signal.
fn hup(server: &Sluice, result: &str) -> String {
    hup_logged(server, result, true)
}

/// [`hup`], waiting for the log line only when `logged` (a reload to a
/// quieter log level does not log it).
fn hup_logged(server: &Sluice, result: &str, logged: bool) -> String {
    let before = (reloads(server, "ok"), reloads(server, "failed"));
    let lines_before = server.log.lock().expect("log lock").len();
    signal(server.pid(), "HUP");
    wait_for(&format!("a reload counted {result}"), DEADLINE, || {
        let now = (reloads(server, "ok"), reloads(server, "failed"));
        (now != before).then_some(())
    });
    assert_eq!(
        (reloads(server, "ok"), reloads(server, "failed")),
        match result {
            "ok" => (before.0 + 1, before.1),
            _ => (before.0, before.1 + 1),
        },
        "one reload, counted {result}; log:\n{}",
        server.log_text()
    );
    if logged {
        wait_for("the reload's log line", DEADLINE, || {
            let lines = server.log.lock().expect("log lock");
            lines[lines_before..]
                .iter()
                .any(|line| line.contains("configuration reload"))
                .then_some(())
        });
    }
    let lines = server.log.lock().expect("log lock");
    lines[lines_before..].join("\n")
}

/// A message whose body carries `token`, so the destination's copy can be
/// matched to it.
fn message(token: &str) -> String {
    format!("Subject: {token}\r\nMessage-ID: <{token}@client.test>\r\n\r\ntoken {token}\r\n")
}

/// A port free on 127.0.0.1 now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// The config of [`routed_config_text`] delivering everything to `route`.
fn routed(dir: &Path, route: SocketAddr, extra: &str) -> String {
    routed_config_text(dir, route, "", extra)
}

#[test]
fn a_route_change_takes_effect_after_hup() {
    let first = Destination::start(Options::default());
    let second = Destination::start(Options::default());
    let dir = tempfile::tempdir().expect("temp dir");
    let text = routed(dir.path(), first.addr, "");
    let server = Sluice::start_with(dir, &text);
    server
        .connect()
        .send_message("a@client.test", &["b@example.test"], &message("before"));
    wait_delivered(&first, 1);

    write_config(
        server.dir.path(),
        &routed(server.dir.path(), second.addr, ""),
    );
    let log = hup(&server, "ok");
    assert!(
        log.contains("configuration reloaded") && log.contains("routes.\"*\""),
        "the reload line names the changed key: {log}"
    );
    server
        .connect()
        .send_message("a@client.test", &["b@example.test"], &message("after"));
    let delivered = wait_delivered(&second, 1);
    assert!(String::from_utf8_lossy(&delivered[0].body).contains("token after"));
    assert_eq!(
        first.delivered().len(),
        1,
        "nothing more went to the old route"
    );
}

/// A self-signed certificate for "sluice.test": (certificate PEM, key PEM, DER).
fn certificate() -> (String, String, rustls::pki_types::CertificateDer<'static>) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["sluice.test".to_string()]).expect("certificate");
    (
        certified.cert.pem(),
        certified.key_pair.serialize_pem(),
        certified.cert.der().clone(),
    )
}

/// EHLO, STARTTLS and a handshake trusting only `trusted`; returns the
/// certificate the server presented, or the handshake error.
fn starttls_certificate(
    address: SocketAddr,
    trusted: &rustls::pki_types::CertificateDer<'static>,
) -> Result<rustls::pki_types::CertificateDer<'static>, String> {
    let mut client = SmtpClient::connect(address);
    assert!(client.read_reply().starts_with("220 "));
    client.expect("EHLO client.test", "250");
    client.expect("STARTTLS", "220");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).expect("add root");
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let name = rustls::pki_types::ServerName::try_from("sluice.test").expect("server name");
    let mut connection = rustls::ClientConnection::new(config, name).expect("client connection");
    let mut stream = client.stream;
    stream
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    while connection.is_handshaking() {
        connection
            .complete_io(&mut stream)
            .map_err(|error| error.to_string())?;
    }
    Ok(connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("a certificate")
        .clone()
        .into_owned())
}

#[test]
fn a_new_starttls_handshake_sees_the_new_certificate_after_hup() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (old_pem, old_key, old_der) = certificate();
    std::fs::write(&cert_path, old_pem).expect("write cert");
    common::server::write_private(&key_path, old_key).expect("write key");
    let text = routed(
        dir.path(),
        "127.0.0.1:9".parse().unwrap(),
        &format!(
            "[tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
            cert_path.display(),
            key_path.display()
        ),
    );
    let server = Sluice::start_with(dir, &text);
    assert_eq!(
        starttls_certificate(server.smtp, &old_der),
        Ok(old_der.clone())
    );

    // The certificate is renewed in place (same paths, as certbot does).
    let (new_pem, new_key, new_der) = certificate();
    std::fs::write(&cert_path, new_pem).expect("write cert");
    common::server::write_private(&key_path, new_key).expect("write key");
    hup(&server, "ok");
    assert_eq!(
        starttls_certificate(server.smtp, &new_der),
        Ok(new_der.clone()),
        "a new handshake gets the new certificate"
    );
    let refused = starttls_certificate(server.smtp, &old_der);
    assert!(refused.is_err(), "the old certificate is gone: {refused:?}");
}

/// The listeners `<spool>/smtp.address` names.
fn recorded_listeners(server: &Sluice) -> Vec<String> {
    std::fs::read_to_string(server.dir.path().join("spool/smtp.address"))
        .expect("smtp.address")
        .lines()
        .map(str::to_string)
        .collect()
}

fn listener_config(dir: &Path, listeners: &[String]) -> String {
    let mut text = routed(dir, "127.0.0.1:9".parse().unwrap(), "");
    for address in listeners {
        text.push_str(&format!(
            "\n[[listener]]\naddress = \"{address}\"\nkind = \"relay\"\n"
        ));
    }
    text
}

#[test]
fn listeners_are_added_and_removed_by_a_reload() {
    let dir = tempfile::tempdir().expect("temp dir");
    // routed_config_text has one listener on 127.0.0.1:0: it stays.
    let text = listener_config(dir.path(), &[]);
    let server = Sluice::start_with(dir, &text);
    let first = server.smtp;

    let port = free_port();
    let added: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    write_config(
        server.dir.path(),
        &listener_config(server.dir.path(), &[added.to_string()]),
    );
    let log = hup(&server, "ok");
    assert!(log.contains("listener[1].address"), "{log}");
    assert_eq!(
        recorded_listeners(&server),
        [format!("relay {first}"), format!("relay {added}")]
    );
    let mut on_added = SmtpClient::connect(added);
    assert!(on_added.read_reply().starts_with("220 "));
    // A session on the first listener, open across its removal.
    let mut on_first = server.connect();
    on_first.expect("EHLO client.test", "250");

    // Only the added listener is left: the first one closes.
    let mut text = routed(server.dir.path(), "127.0.0.1:9".parse().unwrap(), "");
    text = text.replace(
        "address = \"127.0.0.1:0\"\nkind = \"relay\"",
        &format!("address = \"{added}\"\nkind = \"relay\""),
    );
    write_config(server.dir.path(), &text);
    hup(&server, "ok");
    wait_for("the first listener to close", DEADLINE, || {
        TcpStream::connect_timeout(&first, Duration::from_secs(2))
            .is_err()
            .then_some(())
    });
    assert_eq!(recorded_listeners(&server), [format!("relay {added}")]);
    let reply = on_first
        .try_transaction(
            "a@client.test",
            &["b@example.test"],
            message("open").as_bytes(),
        )
        .expect("the session in progress goes on");
    assert!(reply.starts_with("250 "), "{reply}");
    on_added.expect("EHLO client.test", "250");
    let reply = on_added
        .try_transaction(
            "a@client.test",
            &["b@example.test"],
            message("kept").as_bytes(),
        )
        .expect("the kept listener's session goes on");
    assert!(reply.starts_with("250 "), "{reply}");
    let mut again = SmtpClient::connect(added);
    assert!(
        again.read_reply().starts_with("220 "),
        "the kept listener accepts"
    );
}

#[test]
fn a_file_that_does_not_load_is_refused_whole_and_the_old_settings_stay() {
    let first = Destination::start(Options::default());
    let second = Destination::start(Options::default());
    let dir = tempfile::tempdir().expect("temp dir");
    let text = routed(dir.path(), first.addr, "");
    let server = Sluice::start_with(dir, &text);
    let path = server.config_path.display().to_string();
    let good_new = routed(server.dir.path(), second.addr, "");
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_address = busy.local_addr().expect("address");
    let missing = server.dir.path().join("missing.pem");
    let garbage = server.dir.path().join("garbage.pem");
    common::server::write_private(&garbage, "not a key\n").expect("write");
    let (cert_pem, _, _) = certificate();
    let cert_path = server.dir.path().join("cert.pem");
    std::fs::write(&cert_path, cert_pem).expect("write");
    // Each one changes the route too: none of it may take effect.
    let broken = [
        (format!("{good_new}\n[limits\n"), "parse error"),
        (
            format!("{good_new}\n[limits]\nmax_recipents = 5\n"),
            "max_recipents",
        ),
        (
            format!(
                "{good_new}\n[tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
                missing.display(),
                garbage.display()
            ),
            "tls.certificate",
        ),
        (
            format!(
                "{good_new}\n[tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
                cert_path.display(),
                garbage.display()
            ),
            "tls.private_key",
        ),
        (
            good_new.replace(
                "[delivery]\n",
                &format!("[delivery]\ntls_ca = \"{}\"\n", missing.display()),
            ),
            "delivery.tls_ca",
        ),
        (
            format!("{good_new}\n[[listener]]\naddress = \"{busy_address}\"\n"),
            "listener[1].address",
        ),
    ];
    for (index, (text, key)) in broken.iter().enumerate() {
        write_config(server.dir.path(), text);
        let log = hup(&server, "failed");
        let errors: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("configuration reload refused"))
            .collect();
        assert_eq!(errors.len(), 1, "one error line for file {index}: {log}");
        assert!(
            errors[0].contains(&path) && errors[0].contains(key),
            "the error names the file and {key}: {}",
            errors[0]
        );
        assert!(errors[0].contains("ERROR"), "{}", errors[0]);
    }
    assert_eq!(reloads(&server, "ok"), 0);
    server
        .connect()
        .send_message("a@client.test", &["b@example.test"], &message("still-old"));
    wait_delivered(&first, 1);
    assert!(
        second.delivered().is_empty(),
        "the refused route was not used"
    );
    assert_eq!(recorded_listeners(&server).len(), 1, "no listener added");
    drop(busy);

    // A good file afterwards is taken.
    write_config(server.dir.path(), &good_new);
    hup(&server, "ok");
    server
        .connect()
        .send_message("a@client.test", &["b@example.test"], &message("new"));
    wait_delivered(&second, 1);
}

#[test]
fn a_changed_spool_path_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = routed(dir.path(), "127.0.0.1:9".parse().unwrap(), "");
    let mut server = Sluice::start_with(dir, &text);
    let other = server.dir.path().join("elsewhere");
    write_config(
        server.dir.path(),
        &text.replace(
            &server.dir.path().join("spool").display().to_string(),
            &other.display().to_string(),
        ),
    );
    let log = hup(&server, "failed");
    assert!(log.contains("spool.path"), "{log}");
    assert!(!other.exists(), "no new spool was made");
    assert!(server.is_running());
    let id = server
        .connect()
        .send_message("a@client.test", &["b@example.test"], &message("spool"));
    assert!(!id.is_empty());
}

/// Runs `check-config` on `text` written in `dir`; (exit code, stderr).
fn check_config(dir: &Path, text: &str) -> (i32, String) {
    let path: PathBuf = write_config(dir, text);
    let (code, _, stderr) = common::cli(&path, &["check-config"]);
    (code, stderr)
}

#[test]
fn check_config_fails_where_a_start_would() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = routed(dir.path(), "127.0.0.1:9".parse().unwrap(), "");
    let (cert_pem, key_pem, _) = certificate();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, cert_pem).expect("write");
    common::server::write_private(&key, key_pem).expect("write");
    let garbage = dir.path().join("garbage.pem");
    common::server::write_private(
        &garbage,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .expect("write");
    let missing = dir.path().join("missing.pem");
    let tls = |cert: &Path, key: &Path| {
        format!(
            "{base}\n[tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
            cert.display(),
            key.display()
        )
    };
    let (code, stderr) = check_config(dir.path(), &tls(&cert, &key));
    assert_eq!(code, 0, "a good certificate passes: {stderr}");
    for (text, key_name, file) in [
        (tls(&missing, &key), "tls.certificate", &missing),
        (tls(&cert, &garbage), "tls.private_key", &garbage),
        (tls(&cert, &missing), "tls.private_key", &missing),
        (
            base.replace(
                "[delivery]\n",
                &format!("[delivery]\ntls_ca = \"{}\"\n", missing.display()),
            ),
            "delivery.tls_ca",
            &missing,
        ),
        (
            format!(
                "{base}\n[[dkim]]\ndomain = \"example.org\"\nselector = \"s\"\nprivate_key = \"{}\"\n",
                garbage.display()
            ),
            "dkim[0].private_key",
            &garbage,
        ),
    ] {
        let (code, stderr) = check_config(dir.path(), &text);
        assert_eq!(code, 1, "{key_name}: {stderr}");
        assert!(
            stderr.contains(key_name)
                && stderr.contains(&file.display().to_string())
                && stderr.contains("sluice.toml"),
            "the message names the config file, {key_name} and {}: {stderr}",
            file.display()
        );
    }
}

#[test]
fn every_stop_signal_exits_cleanly_and_removes_the_run_files() {
    for stop in ["TERM", "INT", "QUIT"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let text = routed(dir.path(), "127.0.0.1:9".parse().unwrap(), "");
        let mut server = Sluice::start_with(dir, &text);
        let spool = server.dir.path().join("spool");
        assert!(spool.join("smtp.address").exists() && spool.join("admin.address").exists());
        // Neither a reload nor SIGUSR1 stops it.
        hup(&server, "ok");
        signal(server.pid(), "USR1");
        server.wait_log(&["SIGUSR1", "ignored"]);
        assert!(server.is_running());
        signal(server.pid(), stop);
        let status = server.wait_exit(DEADLINE);
        assert_eq!(status.code(), Some(0), "SIG{stop}: {}", server.log_text());
        for file in ["smtp.address", "admin.address"] {
            assert!(!spool.join(file).exists(), "SIG{stop} left {file} behind");
        }
    }
}

/// 20 sessions inject mail while a reload comes every 200 ms: every
/// acknowledged message is delivered exactly once and no session sees a
/// dropped connection or a refusal.
#[test]
fn reloads_under_load_lose_and_duplicate_nothing() {
    let destination = Destination::start(Options::default());
    let dir = tempfile::tempdir().expect("temp dir");
    let text = routed(dir.path(), destination.addr, "");
    let server = Sluice::start_with(dir, &text);
    // The reloads alternate between two files that differ, so each one
    // really swaps the settings.
    let variants = [
        text.clone(),
        routed(
            server.dir.path(),
            destination.addr,
            "[limits]\nmax_recipients = 99\n",
        ),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let address = server.smtp;
    let sessions: Vec<_> = (0..20)
        .map(|session| {
            let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
            std::thread::spawn(move || -> Result<(), String> {
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) {
                    // A few messages per connection: some sessions span
                    // reloads, and new ones start between them.
                    let mut client = SmtpClient::try_connect(address, DEADLINE)
                        .map_err(|error| format!("session {session}: connect: {error}"))?;
                    client.set_read_timeout(DEADLINE);
                    let greeting = client.try_read_reply().map_err(|e| e.to_string())?;
                    if !greeting.starts_with("220 ") {
                        return Err(format!("session {session}: greeting {greeting:?}"));
                    }
                    client
                        .try_expect("EHLO client.test", "250")
                        .map_err(|error| format!("session {session}: EHLO: {error}"))?;
                    for _ in 0..5 {
                        let token = format!("s{session}m{sent}");
                        let reply = client
                            .try_transaction(
                                "a@client.test",
                                &["b@example.test"],
                                message(&token).as_bytes(),
                            )
                            .map_err(|error| format!("session {session}, {token}: {error}"))?;
                        if !reply.starts_with("250 ") {
                            return Err(format!("session {session}, {token}: {reply}"));
                        }
                        acknowledged.lock().expect("lock").push(token);
                        sent += 1;
                    }
                    client
                        .try_expect("QUIT", "221")
                        .map_err(|error| format!("session {session}: QUIT: {error}"))?;
                }
                Ok(())
            })
        })
        .collect();
    let start = Instant::now();
    let mut hups = 0;
    while start.elapsed() < Duration::from_secs(3) {
        write_config(server.dir.path(), &variants[hups % 2]);
        signal(server.pid(), "HUP");
        hups += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for session in sessions {
        session.join().expect("session thread").expect("session");
    }
    let acknowledged = acknowledged.lock().expect("lock").clone();
    assert!(
        acknowledged.len() >= 20,
        "some mail was sent: {}",
        acknowledged.len()
    );
    let delivered = wait_for(
        &format!("{} messages at the destination", acknowledged.len()),
        Duration::from_secs(60),
        || {
            let delivered = destination.delivered();
            (delivered.len() >= acknowledged.len()).then_some(delivered)
        },
    );
    // Anything still on its way would show up as a duplicate.
    std::thread::sleep(Duration::from_millis(500));
    let delivered = destination.delivered().len().max(delivered.len());
    let bodies: Vec<String> = destination
        .delivered()
        .iter()
        .map(|transaction| String::from_utf8_lossy(&transaction.body).into_owned())
        .collect();
    assert_eq!(delivered, acknowledged.len(), "each message delivered once");
    for token in &acknowledged {
        let copies = bodies
            .iter()
            .filter(|body| body.contains(&format!("token {token}\r\n")))
            .count();
        assert_eq!(copies, 1, "{token} delivered {copies} times");
    }
    let ok = reloads(&server, "ok");
    assert!(ok >= 1, "reloads happened ({hups} HUPs sent)");
    assert_eq!(reloads(&server, "failed"), 0, "{}", server.log_text());
    eprintln!("{} messages, {hups} HUPs, {ok} reloads", acknowledged.len());
}

#[test]
fn the_log_level_follows_a_reload() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = routed(dir.path(), "127.0.0.1:9".parse().unwrap(), "");
    assert!(text.contains("level = \"info\""));
    // Without RUST_LOG, which would decide the filter instead of [log] level.
    let server = Sluice::start_with_command(dir, &text, |command| {
        command.env_remove("RUST_LOG");
    });
    let session = |server: &Sluice| {
        let mut client = server.connect();
        client.expect("EHLO client.test", "250");
        client.expect("QUIT", "221");
        client.read_to_end();
    };
    session(&server);
    server.wait_log(&["INFO", "disconnect"]);

    write_config(
        server.dir.path(),
        &text.replace("level = \"info\"", "level = \"warn\""),
    );
    hup_logged(&server, "ok", false);
    let quiet_from = server.log.lock().expect("log lock").len();
    session(&server);
    // Wait out the writes of the session's last lines, were they logged.
    std::thread::sleep(Duration::from_millis(300));
    let quiet_to = server.log.lock().expect("log lock").len();

    write_config(
        server.dir.path(),
        &text.replace("level = \"info\"", "level = \"debug\""),
    );
    hup(&server, "ok");
    session(&server);
    server.wait_log(&["DEBUG"]);
    let lines = server.log.lock().expect("log lock").clone();
    let quiet: Vec<&String> = lines[quiet_from..quiet_to]
        .iter()
        .filter(|line| line.contains(" INFO "))
        .collect();
    assert!(quiet.is_empty(), "info lines at level warn: {quiet:?}");
    assert!(
        lines[quiet_to..]
            .iter()
            .any(|line| line.contains("configuration reloaded") && line.contains("log.level")),
        "the reload to debug is logged"
    );
}

#[test]
fn a_kept_listener_takes_a_changed_kind_on_its_socket() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let (pem, key, _) = certificate();
    std::fs::write(&cert_path, pem).expect("write cert");
    common::server::write_private(&key_path, key).expect("write key");
    let tls = format!(
        "[tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
        cert_path.display(),
        key_path.display()
    );
    let text = routed(dir.path(), "127.0.0.1:9".parse().unwrap(), &tls);
    let server = Sluice::start_with(dir, &text);
    let mut relay = server.connect();
    relay.expect("EHLO client.test", "250");
    relay.expect("MAIL FROM:<a@client.test>", "250");

    write_config(
        server.dir.path(),
        &text.replace("kind = \"relay\"", "kind = \"submission\""),
    );
    let log = hup(&server, "ok");
    assert!(log.contains("listener[0].kind"), "{log}");
    assert_eq!(
        recorded_listeners(&server),
        [format!("submission {}", server.smtp)]
    );
    let mut submission = server.connect();
    submission.expect("EHLO client.test", "250");
    let reply = submission.command("MAIL FROM:<a@client.test>");
    assert!(reply.starts_with("530 "), "AUTH is required now: {reply}");
    // The session that began on the relay listener keeps its settings.
    relay.expect("RCPT TO:<b@example.test>", "250");
}

/// `sluice dkim keygen` for example.org with `selector` into `dir`; the key path.
fn dkim_key(dir: &Path, selector: &str) -> PathBuf {
    let (code, _, stderr) = common::run(None, |command| {
        command.args([
            "dkim",
            "keygen",
            "--domain",
            "example.org",
            "--selector",
            selector,
            "--out",
        ]);
        command.arg(dir);
    });
    assert_eq!(code, 0, "keygen: {stderr}");
    dir.join(format!("example.org.{selector}.pem"))
}

#[test]
fn dkim_keys_are_loaded_again_by_a_reload() {
    let destination = Destination::start(Options::default());
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).expect("keys dir");
    let entry = |selector: &str| {
        format!(
            "[[dkim]]\ndomain = \"example.org\"\nselector = \"{selector}\"\nprivate_key = \"{}\"\n",
            dkim_key(&keys, selector).display()
        )
    };
    let text = routed(dir.path(), destination.addr, "");
    let server = Sluice::start_with(dir, &text);
    let send = |token: &str| {
        server.connect().send_message(
            "a@example.org",
            &["b@example.test"],
            &format!("From: <a@example.org>\r\n{}", message(token)),
        );
    };
    let signature = |token: &str, count: usize| {
        let delivered = wait_delivered(&destination, count);
        let body = delivered
            .iter()
            .map(|transaction| String::from_utf8_lossy(&transaction.body).into_owned())
            .find(|body| body.contains(&format!("token {token}")))
            .expect("the message was delivered");
        body.lines()
            .find(|line| line.starts_with("DKIM-Signature:"))
            .map(str::to_string)
    };
    send("unsigned");
    assert_eq!(signature("unsigned", 1), None);

    write_config(server.dir.path(), &format!("{text}\n{}", entry("one")));
    let log = hup(&server, "ok");
    assert!(log.contains("dkim[0].private_key"), "{log}");
    send("one");
    let header = signature("one", 2).expect("signed after the reload");
    assert!(header.contains("s=one"), "{header}");

    // A rotated key: the next message is signed with it.
    write_config(server.dir.path(), &format!("{text}\n{}", entry("two")));
    hup(&server, "ok");
    send("two");
    let header = signature("two", 3).expect("signed");
    assert!(header.contains("s=two"), "{header}");
}

/// The config of [`routed`] with `delivery.concurrency = concurrency`.
fn with_concurrency(dir: &Path, route: SocketAddr, concurrency: usize) -> String {
    routed(dir, route, "").replace(
        "[delivery]\n",
        &format!("[delivery]\nconcurrency = {concurrency}\nper_domain_concurrency = 20\n"),
    )
}

#[test]
fn a_reload_raises_delivery_concurrency_beyond_its_value_at_start() {
    let destination = Destination::start(Options::default());
    destination.on_data(|_, _| {
        std::thread::sleep(Duration::from_millis(300));
        None
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let text = with_concurrency(dir.path(), destination.addr, 1);
    let server = Sluice::start_with(dir, &text);
    let mut client = server.connect();
    for n in 0..24 {
        client.send_message(
            "a@client.test",
            &["b@example.test"],
            &message(&n.to_string()),
        );
    }
    wait_delivered(&destination, 2);
    assert_eq!(
        destination.max_open(),
        1,
        "one transaction at a time at first"
    );

    write_config(
        server.dir.path(),
        &with_concurrency(server.dir.path(), destination.addr, 8),
    );
    let log = hup(&server, "ok");
    assert!(log.contains("delivery.concurrency"), "{log}");
    wait_delivered(&destination, 24);
    assert!(
        destination.max_open() >= 6,
        "up to 8 transactions at once after the reload (4 times the claim slots sized at start), \
         saw at most {} connections",
        destination.max_open()
    );
}
