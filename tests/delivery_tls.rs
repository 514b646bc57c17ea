//! Outbound TLS policy end to end: opportunistic, required, disabled,
//! per-domain overrides, and the authenticated smarthost (always TLS).
//! Certificates come from rcgen; `delivery.tls_ca` trusts the test CA.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod destination;
    pub mod dns;
    pub mod server;
    pub mod smtp;
    pub mod spool;
    pub use {server::*, smtp::*};
}

use std::net::{Ipv4Addr, SocketAddr};

use common::destination::{Destination, Options, TestCerts, wait_delivered};
use common::dns::DnsServer;
use common::spool::enqueue_offline;
use common::{Sluice, field};

const BODY: &[u8] = b"From: alice@origin.test\r\nSubject: tls\r\n\r\nsecret stuff\r\n";

fn enqueue(dir: &tempfile::TempDir, recipients: &[&str]) -> String {
    enqueue_offline(
        &dir.path().join("spool"),
        "alice@origin.test",
        recipients,
        BODY,
    )
}

fn no_mail_sent(destination: &Destination) {
    let commands = destination.commands();
    assert!(
        !commands
            .iter()
            .any(|c| c.to_ascii_uppercase().starts_with("MAIL")),
        "nothing may be sent: {commands:?}"
    );
}

#[test]
fn opportunistic_tls_is_used_when_offered() {
    // The certificate names another host and no CA trusts it: opportunistic
    // TLS encrypts anyway.
    let certs = TestCerts::new(&["unrelated.test"]);
    let destination = Destination::start(Options {
        starttls: Some(certs.server.clone()),
        ..Options::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let id = enqueue(&dir, &["bob@dest.test"]);
    let sluice = Sluice::start_in(
        dir,
        &format!("[routes]\n\"*\" = \"{}\"\n", destination.addr),
    );
    let seen = wait_delivered(&destination, 1);
    assert!(seen[0].tls.is_some(), "the transaction must run over TLS");
    assert_eq!(seen[0].body, BODY);
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=sent"]);
    assert_eq!(field(&line, "tls"), "opportunistic", "{line}");
    let tls = field(&line, "tls_session");
    assert!(
        tls.starts_with("TLSv1.3/TLS13_"),
        "tls_session= names version and cipher: {line}"
    );
}

#[test]
fn opportunistic_tls_falls_back_to_plaintext_when_the_handshake_fails() {
    let destination = Destination::start(Options {
        broken_starttls: true,
        ..Options::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let id = enqueue(&dir, &["bob@dest.test"]);
    let sluice = Sluice::start_in(
        dir,
        &format!("[routes]\n\"*\" = \"{}\"\n", destination.addr),
    );
    let seen = wait_delivered(&destination, 1);
    assert_eq!(seen[0].tls, None);
    assert_eq!(destination.tls_failures(), 1);
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=sent"]);
    assert_eq!(field(&line, "tls"), "plaintext");
}

#[test]
fn disabled_tls_never_uses_starttls() {
    let certs = TestCerts::new(&["127.0.0.1"]);
    let destination = Destination::start(Options {
        starttls: Some(certs.server.clone()),
        ..Options::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    enqueue(&dir, &["bob@dest.test"]);
    let _sluice = Sluice::start_in(
        dir,
        &format!(
            "[delivery]\ntls = \"disabled\"\n[routes]\n\"*\" = \"{}\"\n",
            destination.addr
        ),
    );
    let seen = wait_delivered(&destination, 1);
    assert_eq!(seen[0].tls, None);
    assert!(!destination.commands().iter().any(|c| c == "STARTTLS"));
}

#[test]
fn required_tls_defers_a_plaintext_only_destination_without_sending() {
    let destination = Destination::start(Options::default());
    let dir = tempfile::tempdir().expect("temp dir");
    let id = enqueue(&dir, &["bob@dest.test"]);
    let sluice = Sluice::start_in(
        dir,
        &format!(
            "[delivery]\ntls = \"required\"\n[routes]\n\"*\" = \"{}\"\n",
            destination.addr
        ),
    );
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=deferred"]);
    assert_eq!(field(&line, "dsn"), "4.7.4", "{line}");
    assert!(field(&line, "reply").contains("STARTTLS"), "{line}");
    no_mail_sent(&destination);
}

/// MX `mx.secure.test` → 127.0.0.6 with a destination there whose
/// certificate names `cert_name`, trusted through `delivery.tls_ca`.
fn secure_mx(cert_name: &str) -> (Destination, DnsServer, TestCerts, u16) {
    let certs = TestCerts::new(&[cert_name]);
    let destination = Destination::start_on(
        SocketAddr::from(([127, 0, 0, 6], 0)),
        Options {
            starttls: Some(certs.server.clone()),
            ..Options::default()
        },
    );
    let port = destination.addr.port();
    let dns = DnsServer::start();
    dns.mx("secure.test", &[(10, "mx.secure.test")]);
    dns.a("mx.secure.test", &[Ipv4Addr::new(127, 0, 0, 6)]);
    (destination, dns, certs, port)
}

#[test]
fn required_tls_with_a_certificate_for_the_wrong_name_defers() {
    let (destination, dns, certs, port) = secure_mx("wrong.test");
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = certs.write_ca(dir.path());
    let id = enqueue(&dir, &["bob@secure.test"]);
    let sluice = Sluice::start_in(
        dir,
        &format!(
            "{}[delivery]\nport = {port}\ntls = \"required\"\ntls_ca = \"{}\"\n",
            dns.config(),
            ca.display()
        ),
    );
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=deferred"]);
    assert_eq!(field(&line, "dsn"), "4.7.5", "{line}");
    no_mail_sent(&destination);
    assert!(destination.tls_failures() >= 1);
}

#[test]
fn required_tls_delivers_when_the_certificate_matches_the_mx_name() {
    let (destination, dns, certs, port) = secure_mx("mx.secure.test");
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = certs.write_ca(dir.path());
    let id = enqueue(&dir, &["bob@secure.test"]);
    let sluice = Sluice::start_in(
        dir,
        &format!(
            "{}[delivery]\nport = {port}\ntls = \"required\"\ntls_ca = \"{}\"\n",
            dns.config(),
            ca.display()
        ),
    );
    let seen = wait_delivered(&destination, 1);
    assert!(seen[0].tls.is_some());
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=sent"]);
    assert_eq!(field(&line, "tls"), "required", "{line}");
    assert!(field(&line, "tls_session").starts_with("TLSv1."), "{line}");
}

#[test]
fn tls_policy_table_overrides_the_default_per_domain() {
    let destination = Destination::start(Options::default());
    let dir = tempfile::tempdir().expect("temp dir");
    let id = enqueue(&dir, &["a@secure.test", "b@relaxed.test"]);
    let sluice = Sluice::start_in(
        dir,
        &format!(
            "[tls_policy]\n\"secure.test\" = \"required\"\n[routes]\n\"*\" = \"{}\"\n",
            destination.addr
        ),
    );
    let seen = wait_delivered(&destination, 1);
    assert_eq!(seen[0].recipients, ["b@relaxed.test"]);
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "recipient=a@secure.test"]);
    assert_eq!(field(&line, "status"), "deferred", "{line}");
}

#[test]
fn smarthost_with_auth_over_tls_receives_the_message() {
    let certs = TestCerts::new(&["127.0.0.1"]);
    let destination = Destination::start(Options {
        starttls: Some(certs.server.clone()),
        auth: Some(("relayuser".into(), "relay secret".into())),
        ..Options::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = certs.write_ca(dir.path());
    let id = enqueue(&dir, &["bob@anywhere.test"]);
    let sluice = Sluice::start_in(
        dir,
        &format!(
            "[delivery]\ntls = \"disabled\"\ntls_ca = \"{}\"\nrelay_host = \"{}\"\n\
             relay_auth = {{ username = \"relayuser\", password = \"relay secret\" }}\n",
            ca.display(),
            destination.addr
        ),
    );
    let seen = wait_delivered(&destination, 1);
    assert_eq!(seen[0].auth.as_deref(), Some("relayuser"));
    assert!(
        seen[0].tls.is_some(),
        "AUTH only over TLS, even with tls = disabled"
    );
    assert_eq!(seen[0].body, BODY);
    let commands = destination.commands();
    let starttls = commands
        .iter()
        .position(|c| c == "STARTTLS")
        .expect("STARTTLS used");
    let auth = commands
        .iter()
        .position(|c| c.starts_with("AUTH"))
        .expect("AUTH used");
    assert!(starttls < auth, "credentials only after TLS: {commands:?}");
    sluice.wait_log(&[&format!("queue_id={id}"), "status=sent"]);
}

#[test]
fn smarthost_with_auth_never_sends_credentials_in_plaintext() {
    let destination = Destination::start(Options {
        auth: Some(("relayuser".into(), "pw".into())),
        ..Options::default()
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let id = enqueue(&dir, &["bob@anywhere.test"]);
    let sluice = Sluice::start_in(
        dir,
        &format!(
            "[delivery]\nrelay_host = \"{}\"\nrelay_auth = {{ username = \"relayuser\", password = \"pw\" }}\n",
            destination.addr
        ),
    );
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=deferred"]);
    assert_eq!(field(&line, "dsn"), "4.7.4", "{line}");
    assert!(
        !destination.commands().iter().any(|c| c.starts_with("AUTH")),
        "no AUTH without TLS"
    );
    no_mail_sent(&destination);
}
