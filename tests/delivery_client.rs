//! The delivery building blocks against real sockets: the SMTP client
//! against the test destination server (plaintext, STARTTLS, AUTH), and the
//! router against the test DNS server.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod destination;
    pub mod dns;
    pub mod server;
    pub mod smtp;
    pub use {server::*, smtp::*};
}

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::destination::{DROP, Destination, Options, TestCerts};
use common::dns::DnsServer;
use sluice::config::Config;
use sluice::delivery::client::{Body, ClientError, Connection, Timeouts, server_name};
use sluice::delivery::route::{NextHopKind, RouteError, Router};
use sluice::delivery::tls::TlsClients;
use sluice::smtp::client::{Envelope, Stage, Verdict};

fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(5),
        command: Duration::from_secs(5),
        data: Duration::from_secs(5),
    }
}

fn config(text: &str) -> Config {
    Config::parse(text, Path::new("test.toml")).expect("valid test config")
}

async fn session(destination: &Destination) -> Connection {
    let mut connection = Connection::connect(destination.addr, timeouts())
        .await
        .expect("connect");
    connection
        .open("sluice.test")
        .await
        .expect("greeting and EHLO");
    connection
}

/// A 7-bit transaction from s@example.org declaring `size` octets.
fn plain(recipients: &[String], size: u64) -> Envelope<'_> {
    Envelope {
        sender: "s@example.org",
        recipients,
        size: Some(size),
        eight_bit: false,
        smtputf8: false,
        message_dsn: None,
        recipient_dsn: &[],
        chunking: false,
        requiretls: false,
    }
}

/// The body, opened afresh for each transaction that sends it.
fn body(bytes: &[u8]) -> impl FnMut() -> std::io::Result<Body> + Send + use<> {
    let bytes = Bytes::copy_from_slice(bytes);
    move || Ok(Body::Memory(Some(bytes.clone())))
}

/// The reply code of each verdict.
fn codes(verdicts: &[Verdict]) -> Vec<u16> {
    verdicts
        .iter()
        .map(|verdict| verdict.reply.code())
        .collect()
}

#[tokio::test]
async fn pipelined_transaction_delivers_body_bytes_intact() {
    let destination = Destination::start(Options::default());
    let mut connection = session(&destination).await;
    assert!(connection.capabilities().pipelining);
    let message: &[u8] =
        b"Subject: caf\xc3\xa9\r\n\r\n.leading dot\r\n..two dots\r\n\xff\xfe raw 8-bit\r\n.\r\nend";
    let recipients = vec!["a@dest.test".to_string(), "b@dest.test".to_string()];
    let result = connection
        .send(
            Envelope {
                sender: "s@example.org",
                recipients: &recipients,
                size: Some(message.len() as u64),
                eight_bit: true,
                smtputf8: false,
                message_dsn: None,
                recipient_dsn: &[],
                chunking: false,
                requiretls: false,
            },
            &mut body(message),
        )
        .await
        .expect("transaction");
    assert_eq!(codes(&result), [250, 250]);
    let seen = destination.delivered();
    assert_eq!(seen.len(), 1);
    let mut expected = message.to_vec();
    expected.extend_from_slice(b"\r\n");
    assert_eq!(seen[0].body, expected, "body changed in transit");
    assert_eq!(seen[0].recipients, recipients);
    assert!(seen[0].mail_params.contains(&"BODY=8BITMIME".to_string()));
    assert_eq!(seen[0].tls, None);
}

#[tokio::test]
async fn each_recipient_gets_its_own_reply() {
    let recipients: Vec<String> = ["ok@dest.test", "temp@dest.test", "gone@dest.test"]
        .iter()
        .map(|r| r.to_string())
        .collect();
    for pipelining in [true, false] {
        let destination = Destination::start(Options {
            pipelining,
            ..Options::default()
        });
        destination.on_rcpt(|rcpt, _| match rcpt {
            "temp@dest.test" => Some("450 4.2.1 mailbox busy".into()),
            "gone@dest.test" => Some("550 5.1.1 no such user".into()),
            _ => None,
        });
        let mut connection = session(&destination).await;
        let result = connection
            .send(plain(&recipients, 10), &mut body(b"hello\r\n"))
            .await
            .expect("transaction");
        assert_eq!(codes(&result), [250, 450, 550], "pipelining={pipelining}");
        assert_eq!(destination.delivered()[0].recipients, ["ok@dest.test"]);
        // The connection is still usable for another message.
        let again = connection
            .send(
                Envelope {
                    sender: "",
                    recipients: &recipients[..1],
                    size: Some(10),
                    eight_bit: false,
                    smtputf8: false,
                    message_dsn: None,
                    recipient_dsn: &[],
                    chunking: false,
                    requiretls: false,
                },
                &mut body(b"again\r\n"),
            )
            .await
            .expect("second transaction on the same connection");
        assert_eq!(codes(&again), [250]);
        assert_eq!(destination.connections(), 1);
    }
}

#[tokio::test]
async fn a_broken_off_transaction_keeps_the_refusals_and_says_if_data_was_sent() {
    let recipients: Vec<String> = ["ok@dest.test", "temp@dest.test", "gone@dest.test"]
        .iter()
        .map(|r| r.to_string())
        .collect();
    // (pipelining, drop at the DATA command or after the end of data)
    for (pipelining, after_data) in [(true, false), (false, false), (true, true), (false, true)] {
        let destination = Destination::start(Options {
            pipelining,
            ..Options::default()
        });
        destination.on_rcpt(|rcpt, _| match rcpt {
            "temp@dest.test" => Some("450 4.2.1 mailbox busy".into()),
            "gone@dest.test" => Some("550 5.1.1 no such user".into()),
            _ => None,
        });
        if after_data {
            destination.on_data(|_, _| Some(DROP.into()));
        } else {
            destination.on_data_command(|_, _| Some(DROP.into()));
        }
        let mut connection = session(&destination).await;
        let error = connection
            .send(plain(&recipients, 10), &mut body(b"hello\r\n"))
            .await
            .expect_err("the server dropped the connection");
        let case = format!("pipelining={pipelining} after_data={after_data}");
        assert!(
            matches!(error.error, ClientError::Closed { .. }),
            "{case}: {error}"
        );
        let codes: Vec<Option<u16>> = error
            .verdicts
            .iter()
            .map(|verdict| verdict.as_ref().map(|verdict| verdict.reply.code()))
            .collect();
        assert_eq!(codes, vec![None, Some(450), Some(550)], "{case}");
        assert_eq!(error.data_sent, after_data, "{case}");
        assert!(!connection.is_usable(), "{case}");
    }
}

#[tokio::test]
async fn a_421_ends_the_transaction_as_a_failure_not_a_verdict() {
    let destination = Destination::start(Options::default());
    destination.on_mail(|_, _| Some("421 4.3.2 shutting down".into()));
    let mut connection = session(&destination).await;
    let recipients = vec!["x@dest.test".to_string()];
    let error = connection
        .send(plain(&recipients, 10), &mut body(b"hello\r\n"))
        .await
        .expect_err("421 closes the session");
    match &error.error {
        ClientError::Rejected { reply, .. } => assert_eq!(reply.code(), 421),
        other => panic!("expected the 421, got {other}"),
    }
    assert_eq!(error.verdicts.len(), 1);
    assert!(error.verdicts[0].is_none() && !error.data_sent);
    assert!(error.before_transaction);
    assert!(!connection.is_usable());
}

#[tokio::test]
async fn all_recipients_refused_sends_no_body() {
    let destination = Destination::start(Options::default());
    destination.on_rcpt(|_, _| Some("550 5.1.1 nobody here".into()));
    let mut connection = session(&destination).await;
    let recipients = vec!["x@dest.test".to_string()];
    let result = connection
        .send(plain(&recipients, 10), &mut body(b"hello\r\n"))
        .await
        .expect("transaction");
    assert_eq!(codes(&result), [550]);
    assert!(destination.transactions().is_empty());
}

#[tokio::test]
async fn helo_is_used_when_ehlo_is_refused() {
    let destination = Destination::start(Options {
        ehlo: false,
        ..Options::default()
    });
    let mut connection = session(&destination).await;
    assert!(!connection.capabilities().pipelining);
    let recipients = vec!["x@dest.test".to_string()];
    let result = connection
        .send(plain(&recipients, 10), &mut body(b"hi\r\n"))
        .await
        .expect("transaction");
    assert_eq!(codes(&result), [250]);
    assert_eq!(destination.delivered()[0].helo, "sluice.test");
}

#[tokio::test]
async fn starttls_verifies_the_host_name_against_the_extra_ca() {
    let certs = TestCerts::new(&["mx.dest.test"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = certs.write_ca(dir.path());
    let destination = Destination::start(Options {
        starttls: Some(certs.server.clone()),
        ..Options::default()
    });
    let config = config(&format!("[delivery]\ntls_ca = \"{}\"\n", ca.display()));
    let tls = TlsClients::from_config(&config).expect("TLS clients");

    let mut connection = session(&destination).await;
    assert!(connection.capabilities().starttls);
    connection.send_starttls().await.expect("STARTTLS");
    let connection = connection
        .finish_starttls(
            &tls.verified,
            server_name("mx.dest.test").unwrap(),
            "sluice.test",
        )
        .await
        .expect("verified handshake");
    let info = connection.tls().expect("TLS active").clone();
    assert!(info.version.starts_with("TLSv1."), "{info}");

    // The same certificate does not verify for another name.
    let mut connection = session(&destination).await;
    connection.send_starttls().await.expect("STARTTLS");
    let error = connection
        .finish_starttls(
            &tls.verified,
            server_name("other.dest.test").unwrap(),
            "sluice.test",
        )
        .await
        .err()
        .expect("wrong name must fail");
    assert!(matches!(error, ClientError::TlsHandshake(_)), "{error}");

    // Without verification any certificate is accepted.
    let mut connection = session(&destination).await;
    connection.send_starttls().await.expect("STARTTLS");
    connection
        .finish_starttls(
            &tls.unverified,
            server_name("other.dest.test").unwrap(),
            "sluice.test",
        )
        .await
        .expect("opportunistic handshake");
}

#[tokio::test]
async fn auth_plain_and_login_over_tls() {
    let certs = TestCerts::new(&["127.0.0.1"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = certs.write_ca(dir.path());
    let destination = Destination::start(Options {
        starttls: Some(certs.server.clone()),
        auth: Some(("user".into(), "secret".into())),
        ..Options::default()
    });
    let tls = TlsClients::from_config(&config(&format!(
        "[delivery]\ntls_ca = \"{}\"\n",
        ca.display()
    )))
    .expect("TLS clients");
    let mut connection = session(&destination).await;
    assert!(
        connection.capabilities().auth.is_empty(),
        "no AUTH before TLS"
    );
    connection.send_starttls().await.expect("STARTTLS");
    let mut connection = connection
        .finish_starttls(
            &tls.verified,
            server_name("127.0.0.1").unwrap(),
            "sluice.test",
        )
        .await
        .expect("handshake on an IP certificate");
    assert!(connection.capabilities().offers_auth("PLAIN"));
    let error = connection
        .authenticate("user", "wrong")
        .await
        .expect_err("wrong password refused");
    assert!(
        matches!(&error, ClientError::Rejected { stage: Stage::Auth, reply } if reply.code() == 535),
        "{error}"
    );
    connection
        .authenticate("user", "secret")
        .await
        .expect("right password accepted");
    let recipients = vec!["x@dest.test".to_string()];
    connection
        .send(plain(&recipients, 4), &mut body(b"hi\r\n"))
        .await
        .expect("authenticated transaction");
    let seen = destination.delivered();
    assert_eq!(seen[0].auth.as_deref(), Some("user"));
    assert!(seen[0].tls.is_some());
}

fn router(dns: &DnsServer, extra: &str) -> Router {
    Router::new(&config(&format!("{}{extra}", dns.config())))
}

#[tokio::test]
async fn mx_records_are_followed_by_preference() {
    let dns = DnsServer::start();
    dns.mx(
        "example.test",
        &[(20, "backup.example.test"), (10, "mx1.example.test")],
    );
    dns.a("mx1.example.test", &[Ipv4Addr::new(127, 0, 0, 2)]);
    let router = router(&dns, "");
    let hop = router.next_hop("example.test").await.expect("next hop");
    assert_eq!(hop.kind, NextHopKind::Mx);
    let names: Vec<&str> = hop.hosts.iter().map(|host| host.name.as_str()).collect();
    assert_eq!(names, ["mx1.example.test", "backup.example.test"]);
    assert_eq!(hop.hosts[0].port, 25);
    let addresses = router
        .addresses(&hop, &hop.hosts[0])
        .await
        .expect("A record");
    assert_eq!(addresses, vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))]);
    let error = router.addresses(&hop, &hop.hosts[1]).await.unwrap_err();
    assert!(matches!(error, RouteError::NoSuchDomain { .. }), "{error}");
}

#[tokio::test]
async fn dns_failures_are_classified() {
    let dns = DnsServer::start();
    dns.null_mx("nullmx.test");
    dns.servfail("broken.test");
    dns.a("plain.test", &[Ipv4Addr::new(127, 0, 0, 3)]);
    let router = router(&dns, "[delivery]\nport = 2525\n");

    let error = router.next_hop("nullmx.test").await.unwrap_err();
    assert!(matches!(error, RouteError::NullMx { .. }), "{error}");
    assert_eq!(error.status().to_string(), "5.1.10");

    let error = router.next_hop("nosuch.test").await.unwrap_err();
    assert!(matches!(error, RouteError::NoSuchDomain { .. }), "{error}");
    assert!(error.is_permanent());

    let error = router.next_hop("broken.test").await.unwrap_err();
    assert!(matches!(error, RouteError::Temporary { .. }), "{error}");
    assert!(!error.is_permanent());

    let hop = router.next_hop("plain.test").await.expect("implicit MX");
    assert_eq!(hop.kind, NextHopKind::ImplicitMx);
    assert_eq!(hop.hosts[0].name, "plain.test");
    assert_eq!(hop.hosts[0].port, 2525);
}

#[tokio::test]
async fn routes_and_smarthost_need_no_dns() {
    let dns = DnsServer::start();
    dns.mx("example.test", &[(10, "mx.example.test")]);
    let router = router(&dns, "[routes]\n\"example.test\" = \"127.0.0.1:2600\"\n");
    let hop = router.next_hop("example.test").await.expect("route");
    assert_eq!(hop.kind, NextHopKind::Route);
    assert_eq!(hop.hosts[0].name, "127.0.0.1");
    assert!(
        dns.queries().is_empty(),
        "a route must beat MX without a lookup"
    );
}

#[tokio::test]
async fn auth_login_is_used_when_plain_is_not_offered() {
    let certs = TestCerts::new(&["127.0.0.1"]);
    let destination = Destination::start(Options {
        starttls: Some(certs.server.clone()),
        auth: Some(("user".into(), "pass word".into())),
        auth_mechanisms: "LOGIN".into(),
        ..Options::default()
    });
    let tls = TlsClients::from_config(&Config::default()).expect("TLS clients");
    let mut connection = session(&destination).await;
    connection.send_starttls().await.expect("STARTTLS");
    let mut connection = connection
        .finish_starttls(
            &tls.unverified,
            server_name("127.0.0.1").unwrap(),
            "sluice.test",
        )
        .await
        .expect("handshake");
    connection
        .authenticate("user", "pass word")
        .await
        .expect("AUTH LOGIN");
    assert!(
        destination.commands().iter().any(|c| c == "AUTH LOGIN"),
        "{:?}",
        destination.commands()
    );
}

#[tokio::test]
async fn implicit_tls_starts_before_the_greeting() {
    let certs = TestCerts::new(&["smart.test"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = certs.write_ca(dir.path());
    let destination = Destination::start(Options {
        implicit_tls: Some(certs.server.clone()),
        ..Options::default()
    });
    let tls = TlsClients::from_config(&config(&format!(
        "[delivery]\ntls_ca = \"{}\"\n",
        ca.display()
    )))
    .expect("TLS clients");
    let connection = Connection::connect(destination.addr, timeouts())
        .await
        .expect("connect");
    let mut connection = connection
        .start_implicit_tls(&tls.verified, server_name("smart.test").unwrap())
        .await
        .expect("implicit TLS handshake");
    connection
        .open("sluice.test")
        .await
        .expect("greeting and EHLO over TLS");
    let recipients = vec!["x@dest.test".to_string()];
    connection
        .send(plain(&recipients, 4), &mut body(b"hi\r\n"))
        .await
        .expect("transaction over implicit TLS");
    assert!(destination.delivered()[0].tls.is_some());
}
