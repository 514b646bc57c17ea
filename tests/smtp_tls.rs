//! Inbound TLS and AUTH against the real binary: STARTTLS (RFC 3207),
//! implicit TLS (RFC 8314), TLS versions, AUTH PLAIN/LOGIN (RFC 4954),
//! submission listeners. Certificates are made here with rcgen.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod server;
    pub mod smtp;
    pub mod spool;
    pub use {server::*, smtp::*};
}

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHasher, SaltString};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::spool::stop_and_read_queue;
use common::{NO_DELIVERY, Sluice, SmtpClient, config_text, queue_id};

const PASSWORD: &str = "correct horse";

/// A cheap argon2id hash (tests need speed, not strength).
fn cheap_hash(password: &str) -> String {
    let params = argon2::Params::new(1024, 1, 1, None).expect("argon2 params");
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::encode_b64(b"sluice-test-salt").expect("salt");
    argon
        .hash_password(password.as_bytes(), &salt)
        .expect("hash")
        .to_string()
}

/// A server with a fresh certificate for "sluice.test", user "app", and
/// listeners: [0] relay, [1] submission, [2] submissions (implicit TLS).
struct TlsServer {
    server: Sluice,
    certificate: rustls::pki_types::CertificateDer<'static>,
}

fn start_tls(policy: &str, limits: &str) -> TlsServer {
    let dir = tempfile::tempdir().expect("temp dir");
    let certified =
        rcgen::generate_simple_self_signed(vec!["sluice.test".to_string()]).expect("certificate");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).expect("write cert");
    common::server::write_private(&key_path, certified.key_pair.serialize_pem())
        .expect("write key");
    let extra = format!(
        "[tls]\ncertificate = \"{cert}\"\nprivate_key = \"{key}\"\n\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"submission\"\n\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"submissions\"\n\n\
         [[user]]\nname = \"app\"\npassword_hash = \"{hash}\"\n\n{policy}\n{limits}\n{NO_DELIVERY}",
        cert = cert_path.display(),
        key = key_path.display(),
        hash = cheap_hash(PASSWORD),
    );
    let server = Sluice::start_in(dir, &extra);
    assert_eq!(server.smtp_addrs.len(), 3, "three listeners bound");
    TlsServer {
        server,
        certificate: certified.cert.der().clone(),
    }
}

fn client_config(
    certificate: &rustls::pki_types::CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certificate.clone()).expect("add root");
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

fn plain_auth(user: &str, password: &str) -> String {
    BASE64.encode(format!("\0{user}\0{password}"))
}

/// Connects to the relay listener, EHLO, STARTTLS, handshake, EHLO again.
fn relay_over_tls(tls: &TlsServer) -> SmtpClient {
    let mut client = SmtpClient::connect(tls.server.smtp_addrs[0]);
    assert!(
        client
            .read_reply()
            .starts_with("220 sluice.test ESMTP sluice")
    );
    client.expect("EHLO client.test", "250");
    client.expect("STARTTLS", "220 2.0.0");
    let mut client = client.start_tls(client_config(&tls.certificate, rustls::ALL_VERSIONS));
    client.expect("EHLO client.test", "250");
    client
}

#[test]
fn starttls_handshake_restarts_the_session_and_offers_auth() {
    let tls = start_tls("", "");
    let mut client = SmtpClient::connect(tls.server.smtp_addrs[0]);
    client.read_reply();
    let before = client.expect("EHLO client.test", "250");
    assert!(
        before.contains("250-STARTTLS") || before.contains("250 STARTTLS"),
        "{before}"
    );
    assert!(
        !before.contains("AUTH"),
        "AUTH must not be offered before TLS: {before}"
    );
    client.expect("MAIL FROM:<a@example.org>", "250");
    client.expect("STARTTLS", "220 2.0.0");
    let mut client = client.start_tls(client_config(&tls.certificate, rustls::ALL_VERSIONS));
    assert_eq!(client.tls_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    // RFC 3207 §4.2: everything before is forgotten, EHLO is needed again.
    client.expect("RCPT TO:<b@example.net>", "503 5.5.1");
    client.expect("MAIL FROM:<a@example.org>", "503 5.5.1");
    let after = client.expect("EHLO client.test", "250");
    assert!(after.contains("AUTH PLAIN LOGIN"), "{after}");
    assert!(!after.contains("STARTTLS"), "{after}");
    client.expect("STARTTLS", "503 5.5.1");
}

#[test]
fn tls_1_2_is_accepted() {
    let tls = start_tls("", "");
    let mut client = SmtpClient::connect(tls.server.smtp_addrs[0]);
    client.read_reply();
    client.expect("EHLO client.test", "250");
    client.expect("STARTTLS", "220");
    let mut client = client.start_tls(client_config(&tls.certificate, &[&rustls::version::TLS12]));
    assert_eq!(client.tls_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    client.expect("EHLO client.test", "250");
}

/// A minimal TLS 1.1 ClientHello (record version 3.1, client version 3.2).
fn tls_1_1_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // two AES-CBC suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0x00, (body.len() >> 8) as u8, body.len() as u8];
    handshake.extend_from_slice(&body);
    let mut record = vec![
        0x16,
        0x03,
        0x01,
        (handshake.len() >> 8) as u8,
        handshake.len() as u8,
    ];
    record.extend_from_slice(&handshake);
    record
}

#[test]
fn tls_1_1_is_refused() {
    let tls = start_tls("", "");
    let mut client = SmtpClient::connect(tls.server.smtp_addrs[0]);
    client.read_reply();
    client.expect("EHLO client.test", "250");
    client.expect("STARTTLS", "220");
    client.send_raw(&tls_1_1_client_hello());
    client.set_read_timeout(Duration::from_secs(10));
    let answer = client.read_bytes_to_end();
    // Either a fatal alert record (type 21) or a plain close; never a ServerHello.
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "a TLS 1.1 ClientHello got a handshake answer: {:02x?}",
        &answer[..answer.len().min(16)]
    );
    if answer.len() >= 7 {
        // A fatal alert: protocol_version (70) or handshake_failure (40).
        assert_eq!(answer[5], 2, "alert level should be fatal: {answer:02x?}");
        assert!(
            matches!(answer[6], 40 | 70),
            "unexpected alert: {answer:02x?}"
        );
    }
}

#[test]
fn auth_is_refused_before_tls() {
    let tls = start_tls("", "");
    let mut client = SmtpClient::connect(tls.server.smtp_addrs[0]);
    client.read_reply();
    client.expect("EHLO client.test", "250");
    client.expect(
        &format!("AUTH PLAIN {}", plain_auth("app", PASSWORD)),
        "538 5.7.11",
    );
}

const NO_RELAY: &str = "[policy]\nrelay_networks = []\n";

#[test]
fn auth_plain_right_and_wrong_and_authenticated_sessions_may_relay() {
    let mut tls = start_tls(NO_RELAY, "");
    let mut client = relay_over_tls(&tls);
    client.expect("MAIL FROM:<a@example.org>", "250");
    client.expect("RCPT TO:<b@elsewhere.test>", "554 5.7.1");
    client.expect("RSET", "250");
    client.expect(
        &format!("AUTH PLAIN {}", plain_auth("app", "wrong")),
        "535 5.7.8",
    );
    client.expect(
        &format!("AUTH PLAIN {}", plain_auth("nobody", PASSWORD)),
        "535 5.7.8",
    );
    // Without an initial response: an empty 334 challenge first.
    client.expect("AUTH PLAIN", "334");
    client.expect(&plain_auth("app", PASSWORD), "235 2.7.0");
    client.expect("AUTH PLAIN", "503 5.5.1");
    client.expect("MAIL FROM:<a@example.org>", "250");
    client.expect("RCPT TO:<b@elsewhere.test>", "250");
    client.expect("DATA", "354");
    client.send_raw(b"Subject: authenticated\r\n\r\nhi\r\n.\r\n");
    let reply = client.read_reply();
    assert!(queue_id(&reply).is_some(), "{reply}");
    tls.server
        .wait_log(&["message accepted", "protocol=ESMTPSA", "user=app"]);
    let queued = stop_and_read_queue(&mut tls.server);
    assert!(
        queued[0].body.contains("with ESMTPSA id"),
        "{}",
        queued[0].body
    );
}

#[test]
fn auth_login_right_and_wrong() {
    let tls = start_tls("", "");
    let mut client = relay_over_tls(&tls);
    client.expect("AUTH LOGIN", "334 VXNlcm5hbWU6");
    client.expect(&BASE64.encode("app"), "334 UGFzc3dvcmQ6");
    client.expect(&BASE64.encode("wrong"), "535 5.7.8");
    client.expect(
        &format!("AUTH LOGIN {}", BASE64.encode("app")),
        "334 UGFzc3dvcmQ6",
    );
    client.expect(&BASE64.encode(PASSWORD), "235 2.7.0");
}

#[test]
fn repeated_auth_failures_close_the_connection() {
    let tls = start_tls("", "[limits]\nmax_auth_failures = 2\n");
    let mut client = relay_over_tls(&tls);
    client.expect(
        &format!("AUTH PLAIN {}", plain_auth("app", "bad1")),
        "535 5.7.8",
    );
    client.expect(
        &format!("AUTH PLAIN {}", plain_auth("app", "bad2")),
        "535 5.7.8",
    );
    let closing = client.read_reply();
    assert!(
        closing.starts_with("421"),
        "expected 421 and close, got {closing:?}"
    );
    assert_eq!(client.read_reply(), "", "connection closed");
}

#[test]
fn submission_listener_refuses_mail_without_auth() {
    let tls = start_tls("", "");
    let mut client = SmtpClient::connect(tls.server.smtp_addrs[1]);
    assert!(
        client
            .read_reply()
            .starts_with("220 sluice.test ESMTP sluice")
    );
    client.expect("EHLO client.test", "250");
    // Even from a relay network: submission needs AUTH.
    client.expect("MAIL FROM:<a@example.org>", "530 5.7.0");
    client.expect("STARTTLS", "220");
    let mut client = client.start_tls(client_config(&tls.certificate, rustls::ALL_VERSIONS));
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<a@example.org>", "530 5.7.0");
    client.expect(
        &format!("AUTH PLAIN {}", plain_auth("app", PASSWORD)),
        "235",
    );
    client.expect("MAIL FROM:<a@example.org>", "250");
}

#[test]
fn implicit_tls_listener_greets_over_tls_and_requires_auth() {
    let mut tls = start_tls("", "");
    let config = client_config(&tls.certificate, rustls::ALL_VERSIONS);
    let mut client = SmtpClient::connect_tls(tls.server.smtp_addrs[2], config);
    assert!(
        client
            .read_reply()
            .starts_with("220 sluice.test ESMTP sluice")
    );
    let ehlo = client.expect("EHLO client.test", "250");
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    client.expect("MAIL FROM:<a@example.org>", "530 5.7.0");
    client.expect(
        &format!("AUTH PLAIN {}", plain_auth("app", PASSWORD)),
        "235",
    );
    client.expect("MAIL FROM:<a@example.org>", "250");
    client.expect("RCPT TO:<b@elsewhere.test>", "250");
    client.expect("DATA", "354");
    client.send_raw(b"Subject: 465\r\n\r\nx\r\n.\r\n");
    assert!(queue_id(&client.read_reply()).is_some());
    let queued = stop_and_read_queue(&mut tls.server);
    assert!(queued[0].body.contains("with ESMTPSA id"));
}

#[test]
fn starttls_discards_pipelined_plaintext() {
    let tls = start_tls("", "");
    let mut client = SmtpClient::connect(tls.server.smtp_addrs[0]);
    client.read_reply();
    client.expect("EHLO client.test", "250");
    // An attacker's injection rides along after STARTTLS in the same packet.
    client.send_raw(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\nRCPT TO:<x@example.net>\r\n");
    assert!(client.read_reply().starts_with("220"));
    let mut client = client.start_tls(client_config(&tls.certificate, rustls::ALL_VERSIONS));
    // The first reply over TLS answers our EHLO, not the injected commands.
    let ehlo = client.expect("EHLO client.test", "250-sluice.test");
    assert!(ehlo.contains("AUTH"));
    client.expect("RCPT TO:<y@example.net>", "503 5.5.1");
}

#[test]
fn hash_password_output_authenticates() {
    let (_, stdout, _) = common::run(Some(b"s3cret\n"), |command| {
        command.arg("hash-password");
    });
    let hash = stdout.trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let dir = tempfile::tempdir().expect("temp dir");
    let certified =
        rcgen::generate_simple_self_signed(vec!["sluice.test".to_string()]).expect("certificate");
    std::fs::write(dir.path().join("c.pem"), certified.cert.pem()).unwrap();
    common::server::write_private(dir.path().join("k.pem"), certified.key_pair.serialize_pem())
        .unwrap();
    let extra = format!(
        "[tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n\n[[user]]\nname = \"ops\"\npassword_hash = \"{hash}\"\n\n{NO_DELIVERY}",
        dir.path().join("c.pem").display(),
        dir.path().join("k.pem").display(),
    );
    let server = Sluice::start_in(dir, &extra);
    let tls = TlsServer {
        server,
        certificate: certified.cert.der().clone(),
    };
    let mut client = relay_over_tls(&tls);
    client.expect(
        &format!("AUTH PLAIN {}", plain_auth("ops", "s3cret")),
        "235",
    );
}

#[test]
fn missing_or_bad_certificate_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.pem");
    std::fs::write(dir.path().join("garbage.pem"), "not a certificate\n").unwrap();
    for (cert, needle) in [
        (missing.as_path(), "missing.pem"),
        (&dir.path().join("garbage.pem") as &Path, "garbage.pem"),
    ] {
        let extra = format!(
            "[tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n",
            cert.display(),
            dir.path().join("garbage.pem").display()
        );
        let config = dir.path().join("sluice.toml");
        std::fs::write(&config, config_text(dir.path(), "", &extra)).unwrap();
        let (code, _, stderr) = common::run(None, |command| {
            command.args(["serve", "--config"]).arg(&config);
        });
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains(needle) && stderr.contains("tls"),
            "stderr should name {needle}: {stderr}"
        );
    }
}

/// A PLAIN response for `user` whose password makes the base64 line
/// `octets` long (a multiple of 4).
fn long_plain_auth(user: &str, octets: usize) -> String {
    let raw = octets / 4 * 3;
    let password = "p".repeat(raw - user.len() - 2);
    let response = plain_auth(user, &password);
    assert_eq!(response.len(), octets, "base64 of {raw} octets");
    response
}

#[test]
fn auth_lines_of_up_to_12288_octets_are_accepted() {
    // RFC 4954 §4: SASL responses may be far longer than a 512-octet
    // command line, on the AUTH line and in answer to a 334 challenge.
    let tls = start_tls("", "[limits]\nmax_auth_failures = 9\n");
    let mut client = relay_over_tls(&tls);
    client.expect(
        &format!("AUTH PLAIN {}", long_plain_auth("app", 10_000)),
        "535 5.7.8",
    );
    client.expect(
        &format!("AUTH PLAIN {}", long_plain_auth("app", 12_288)),
        "535 5.7.8",
    );
    client.expect("AUTH PLAIN", "334");
    client.expect(&long_plain_auth("app", 12_288), "535 5.7.8");
    client.expect("AUTH LOGIN", "334 VXNlcm5hbWU6");
    client.expect(&BASE64.encode("app"), "334 UGFzc3dvcmQ6");
    client.expect(&BASE64.encode("p".repeat(9_000)), "535 5.7.8");
    client.expect("NOOP", "250 2.0.0");
}

#[test]
fn auth_lines_over_12288_octets_are_refused_and_the_session_goes_on() {
    let tls = start_tls("", "[limits]\nmax_auth_failures = 5\n");
    let mut client = relay_over_tls(&tls);
    // RFC 4954 §6: 500 5.5.6, "Authentication Exchange line is too long".
    client.expect(
        &format!("AUTH PLAIN {}", long_plain_auth("app", 12_292)),
        "500 5.5.6",
    );
    client.expect("NOOP", "250 2.0.0");
    client.expect("AUTH PLAIN", "334");
    client.expect(&long_plain_auth("app", 12_292), "500 5.5.6");
    client.expect("AUTH LOGIN", "334 VXNlcm5hbWU6");
    // Sent without end: dropped as it arrives, answered once the line ends.
    client.send_raw(&vec![b'A'; 100_000]);
    client.expect("", "500 5.5.6");
    // The exchange is over: the next line is a command again.
    client.expect("NOOP", "250 2.0.0");
    // Other commands keep the 512-octet limit of RFC 5321 §4.5.3.1.4.
    client.expect(&format!("NOOP {}", "x".repeat(600)), "500 5.5.2");
    client.expect(
        &format!("AUTH PLAIN {}", plain_auth("app", PASSWORD)),
        "235 2.7.0",
    );
}
