//! REQUIRETLS (RFC 8689) in and out: offered only under TLS, refused with
//! 530 5.7.10 on a plaintext session; a REQUIRETLS message goes only over
//! verified TLS to a hop that offers REQUIRETLS (the parameter passed on),
//! and bounces at once with 5.7.30 otherwise, the bounce itself sent with
//! REQUIRETLS.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod destination;
    pub mod server;
    pub mod smtp;
    pub use {server::*, smtp::*};
}

use std::sync::Arc;

use common::destination::{Destination, Options, TestCerts, wait_delivered};
use common::{Sluice, SmtpClient, queue_id};

const BODY: &str =
    "From: a@origin.test\r\nTo: b@dest.test\r\nSubject: secret\r\n\r\nOnly over TLS.\r\n";

/// sluice with an inbound certificate, `extra` appended.
fn sluice_with_tls(extra: &str) -> (Sluice, rustls::pki_types::CertificateDer<'static>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let certified =
        rcgen::generate_simple_self_signed(vec!["sluice.test".to_string()]).expect("certificate");
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).expect("write cert");
    common::server::write_private(&key_path, certified.key_pair.serialize_pem())
        .expect("write key");
    let sluice = Sluice::start_in(
        dir,
        &format!(
            "[tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n\n{extra}",
            cert_path.display(),
            key_path.display()
        ),
    );
    (sluice, certified.cert.der().clone())
}

fn over_tls(
    sluice: &Sluice,
    certificate: &rustls::pki_types::CertificateDer<'static>,
) -> SmtpClient {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certificate.clone()).expect("add root");
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let mut client = sluice.connect();
    client.expect("EHLO client.test", "250");
    client.expect("STARTTLS", "220");
    client.start_tls(config)
}

/// Sends `BODY` with REQUIRETLS over TLS; returns the queue ID.
fn send_requiretls(client: &mut SmtpClient, recipient: &str) -> String {
    let ehlo = client.expect("EHLO client.test", "250");
    assert!(ehlo.contains("REQUIRETLS"), "offered under TLS: {ehlo}");
    client.expect("MAIL FROM:<a@origin.test> REQUIRETLS", "250");
    client.expect(&format!("RCPT TO:<{recipient}>"), "250");
    client.expect("DATA", "354");
    client.send_raw(format!("{BODY}.\r\n").as_bytes());
    let reply = client.read_reply();
    queue_id(&reply).unwrap_or_else(|| panic!("queued: {reply}"))
}

/// A destination with verified STARTTLS (a certificate for 127.0.0.1 from
/// a CA in `delivery.tls_ca`) that offers REQUIRETLS.
fn tls_destination(certs: &TestCerts) -> Destination {
    Destination::start(Options {
        starttls: Some(certs.server.clone()),
        requiretls: true,
        ..Options::default()
    })
}

#[test]
fn requiretls_without_tls_is_refused() {
    let sluice = Sluice::start_no_delivery("");
    let mut client = sluice.connect();
    let ehlo = client.expect("EHLO client.test", "250");
    assert!(
        !ehlo.contains("REQUIRETLS"),
        "not offered without TLS: {ehlo}"
    );
    let reply = client.command("MAIL FROM:<a@origin.test> REQUIRETLS");
    assert!(reply.starts_with("530 5.7.10"), "{reply}");
    // The session goes on: the same MAIL without it is fine.
    client.expect("MAIL FROM:<a@origin.test>", "250");
}

#[test]
fn requiretls_goes_on_over_verified_tls_to_a_hop_offering_it() {
    let certs = TestCerts::new(&["127.0.0.1"]);
    let destination = tls_destination(&certs);
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = certs.write_ca(dir.path());
    let (sluice, certificate) = sluice_with_tls(&format!(
        "[delivery]\ntls_ca = \"{}\"\nretry_initial = \"1h\"\n\n[routes]\n\"*\" = \"{}\"\n",
        ca.display(),
        destination.addr
    ));
    let mut client = over_tls(&sluice, &certificate);
    send_requiretls(&mut client, "b@dest.test");
    let delivered = wait_delivered(&destination, 1).remove(0);
    assert!(delivered.tls.is_some(), "over TLS");
    assert!(
        delivered.mail_params.iter().any(|p| p == "REQUIRETLS"),
        "REQUIRETLS passed on: {:?}",
        delivered.mail_params
    );
}

#[test]
fn requiretls_to_a_plain_hop_bounces_at_once_and_the_bounce_requires_tls() {
    let certs = TestCerts::new(&["127.0.0.1"]);
    // The sender's own server: verified TLS and REQUIRETLS, so the bounce
    // (sent with REQUIRETLS) can reach it.
    let inbox = tls_destination(&certs);
    let plain = Destination::start(Options::default());
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = certs.write_ca(dir.path());
    let (sluice, certificate) = sluice_with_tls(&format!(
        "[delivery]\ntls_ca = \"{}\"\nretry_initial = \"1h\"\n\n\
         [routes]\n\"dest.test\" = \"{}\"\n\"origin.test\" = \"{}\"\n",
        ca.display(),
        plain.addr,
        inbox.addr
    ));
    let mut client = over_tls(&sluice, &certificate);
    let id = send_requiretls(&mut client, "b@dest.test");
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "recipient=b@dest.test"]);
    assert!(line.contains("status=bounced"), "{line}");
    assert!(line.contains("5.7.30"), "{line}");
    let bounce = wait_delivered(&inbox, 1).remove(0);
    assert!(bounce.mail_from.is_empty(), "a bounce: {bounce:?}");
    assert!(
        bounce.mail_params.iter().any(|p| p == "REQUIRETLS"),
        "the bounce asks for REQUIRETLS too: {:?}",
        bounce.mail_params
    );
    assert!(String::from_utf8_lossy(&bounce.body).contains("5.7.30"));
    assert!(plain.delivered().is_empty(), "nothing went in plaintext");
}

#[test]
fn tls_required_no_delivers_where_the_policy_would_defer() {
    let plain = Destination::start(Options::default());
    let sluice = Sluice::start(&format!(
        "[delivery]\nretry_initial = \"1h\"\n\n[tls_policy]\n\"dest.test\" = \"required\"\n\n\
         [routes]\n\"*\" = \"{}\"\n",
        plain.addr
    ));
    let mut client = sluice.connect();
    let lifted = client.send_message(
        "a@origin.test",
        &["b@dest.test"],
        "From: a@origin.test\r\nTLS-Required: No\r\nSubject: lifted\r\n\r\nAny way.\r\n",
    );
    let kept = client.send_message("a@origin.test", &["c@dest.test"], BODY);
    let delivered = wait_delivered(&plain, 1).remove(0);
    assert_eq!(delivered.recipients, ["b@dest.test"]);
    assert!(
        delivered.tls.is_none(),
        "in plaintext, as the header allows"
    );
    sluice.wait_log(&[&format!("queue_id={lifted}"), "TLS-Required: No"]);
    let line = sluice.wait_log(&[&format!("queue_id={kept}"), "recipient=c@dest.test"]);
    assert!(
        line.contains("status=deferred"),
        "without the header, required TLS defers: {line}"
    );
    assert_eq!(plain.delivered().len(), 1);
}

#[test]
fn tls_required_no_is_ignored_with_the_requiretls_parameter() {
    let plain = Destination::start(Options::default());
    let certs = TestCerts::new(&["127.0.0.1"]);
    let inbox = tls_destination(&certs);
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = certs.write_ca(dir.path());
    let (sluice, certificate) = sluice_with_tls(&format!(
        "[delivery]\ntls_ca = \"{}\"\nretry_initial = \"1h\"\n\n\
         [routes]\n\"dest.test\" = \"{}\"\n\"origin.test\" = \"{}\"\n",
        ca.display(),
        plain.addr,
        inbox.addr
    ));
    let mut client = over_tls(&sluice, &certificate);
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<a@origin.test> REQUIRETLS", "250");
    client.expect("RCPT TO:<b@dest.test>", "250");
    client.expect("DATA", "354");
    client.send_raw(b"From: a@origin.test\r\nTLS-Required: No\r\n\r\nx\r\n.\r\n");
    let id = queue_id(&client.read_reply()).expect("queued");
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "recipient=b@dest.test"]);
    assert!(
        line.contains("status=bounced") && line.contains("5.7.30"),
        "{line}"
    );
    assert!(plain.delivered().is_empty());
}

#[test]
fn sluice_route_says_what_a_requiretls_message_would_do() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = common::config_text(
        dir.path(),
        "",
        "[tls_policy]\n\"plain.test\" = \"disabled\"\n\n\
         [routes]\n\"plain.test\" = \"127.0.0.1:2526\"\n\"checked.test\" = \"127.0.0.1:2527\"\n\
         \"box.test\" = \"lmtp:unix:/run/dovecot/lmtp\"\n\n\
         [dns]\nnameservers = [\"127.0.0.1:9\"]\n",
    );
    let path = common::write_config(dir.path(), &text);
    let out = common::cli_ok(&path, &["route", "plain.test"]);
    assert!(
        out.contains("requiretls: bounced at once (5.7.30)"),
        "{out}"
    );
    let out = common::cli_ok(&path, &["route", "checked.test"]);
    assert!(
        out.contains("requiretls: delivered over required TLS"),
        "{out}"
    );
    let out = common::cli_ok(&path, &["route", "box.test", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("route JSON");
    assert_eq!(json["protocol"], "lmtp", "{out}");
}
