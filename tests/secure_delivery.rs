//! Secure delivery end to end: MTA-STS (RFC 8461) with a real HTTPS policy
//! server on loopback port 443, and DANE (RFC 7672) with TLSA records from
//! the test DNS server, which sets the AD bit for names marked secure. The
//! MX hosts are test destinations with STARTTLS; certificates come from a
//! test CA (trusted through `delivery.tls_ca` where a test says so).

#[allow(dead_code, unused_imports)]
mod common {
    pub mod admin;
    pub mod destination;
    pub mod dns;
    pub mod https;
    pub mod server;
    pub mod smtp;
    pub mod spool;
    pub use {server::*, smtp::*};
}

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use common::destination::{Destination, Options, TestCerts, wait_delivered};
use common::dns::DnsServer;
use common::https::{PolicyReply, PolicyServer};
use common::spool::enqueue_offline;
use common::{Sluice, cli, field, write_config};

const BODY: &[u8] = b"From: alice@origin.test\r\nSubject: secure\r\n\r\nsecret stuff\r\n";

fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

fn enqueue(dir: &tempfile::TempDir, recipients: &[&str]) -> String {
    enqueue_offline(
        &dir.path().join("spool"),
        "alice@origin.test",
        recipients,
        BODY,
    )
}

/// A STARTTLS destination on `ip` (port chosen by the system) presenting
/// `certs`' certificate.
fn tls_destination(ip: [u8; 4], certs: &TestCerts) -> Destination {
    Destination::start_on(
        SocketAddr::from((ip, 0)),
        Options {
            starttls: Some(certs.server.clone()),
            ..Options::default()
        },
    )
}

/// `[dns]` and `[delivery]` for MX delivery to `port`, trusting `ca` when
/// given.
fn config(dns: &DnsServer, port: u16, ca: Option<&Path>) -> String {
    let ca = ca
        .map(|path| format!("tls_ca = \"{}\"\n", path.display()))
        .unwrap_or_default();
    format!(
        "{}[delivery]\nport = {port}\nretry_initial = \"1h\"\nretry_max = \"2h\"\n{ca}",
        dns.config()
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

/// The `sluice_tls_sessions_total` line for `policy`, `result` from
/// `/metrics`, with its value, waiting for it to appear (no domain label:
/// the label set stays bounded).
fn tls_sessions(sluice: &Sluice, _domain: &str, policy: &str, result: &str) -> String {
    let needle = format!("sluice_tls_sessions_total{{policy=\"{policy}\",result=\"{result}\"}}");
    common::wait_for(&needle, std::time::Duration::from_secs(30), || {
        let reply = common::admin::http("GET", sluice.admin, "/metrics", None);
        reply
            .body
            .lines()
            .find(|line| line.starts_with(&needle))
            .map(str::to_string)
    })
}

/// The last reply of the recipient in `queue show --json`.
fn last_reply(sluice: &Sluice, id: &str) -> String {
    let (code, out, err) = sluice.cli(&["queue", "show", id, "--json"]);
    assert_eq!(code, 0, "queue show: {err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("queue show JSON");
    json["recipients"][0]["last_reply"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

// ---------------------------------------------------------------- MTA-STS

const STS_DOMAIN: &str = "sts.test";

fn policy(mode: &str, mx: &[&str]) -> String {
    let mut text = format!("version: STSv1\r\nmode: {mode}\r\n");
    for host in mx {
        text.push_str(&format!("mx: {host}\r\n"));
    }
    text.push_str("max_age: 86400\r\n");
    text
}

/// DNS for `sts.test`: the `_mta-sts` TXT record with `id`, and
/// `mta-sts.sts.test` at the policy server.
fn publish_policy(dns: &DnsServer, server: &PolicyServer, id: &str) {
    dns.clear(
        &format!("_mta-sts.{STS_DOMAIN}"),
        hickory_proto::rr::RecordType::TXT,
    );
    dns.txt(
        &format!("_mta-sts.{STS_DOMAIN}"),
        &format!("v=STSv1; id={id};"),
    );
    dns.a(&format!("mta-sts.{STS_DOMAIN}"), &[server.ip()]);
}

/// A TLS destination for `mx_name` at 127.0.0.`last`, the MX of sts.test,
/// and a policy server with `reply`; the certificates name `cert_names`.
struct StsWorld {
    dns: DnsServer,
    destination: Destination,
    server: PolicyServer,
    certs: TestCerts,
}

fn sts_world(mx_name: &str, last: u8, cert_names: &[&str], reply: PolicyReply) -> StsWorld {
    let mut names = cert_names.to_vec();
    let policy_host = format!("mta-sts.{STS_DOMAIN}");
    names.push(&policy_host);
    let certs = TestCerts::new(&names);
    let destination = tls_destination([127, 0, 0, last], &certs);
    let dns = DnsServer::start();
    dns.mx(STS_DOMAIN, &[(10, mx_name)]);
    dns.a(mx_name, &[Ipv4Addr::new(127, 0, 0, last)]);
    let server = PolicyServer::start(certs.server.clone(), reply);
    publish_policy(&dns, &server, "one");
    StsWorld {
        dns,
        destination,
        server,
        certs,
    }
}

#[test]
fn mta_sts_enforce_delivers_over_verified_tls_to_a_matching_mx() {
    let world = sts_world(
        "mx.sts.test",
        21,
        &["mx.sts.test"],
        PolicyReply::policy(&policy("enforce", &["*.sts.test"])),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = world.certs.write_ca(dir.path());
    let id = enqueue(&dir, &["bob@sts.test"]);
    let port = world.destination.addr.port();
    let sluice = Sluice::start_in(dir, &config(&world.dns, port, Some(&ca)));
    let seen = wait_delivered(&world.destination, 1);
    assert!(seen[0].tls.is_some(), "delivered over TLS");
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=sent"]);
    assert_eq!(field(&line, "tls"), "mta-sts", "{line}");
    assert!(tls_sessions(&sluice, "sts.test", "mta-sts", "success").ends_with(" 1"));
    let requests = world.server.requests();
    assert_eq!(
        requests,
        ["GET /.well-known/mta-sts.txt host=mta-sts.sts.test"],
        "one policy fetch"
    );
}

#[test]
fn mta_sts_enforce_defers_when_no_mx_matches_the_policy() {
    let world = sts_world(
        "mx.elsewhere.test",
        22,
        &["mx.elsewhere.test"],
        PolicyReply::policy(&policy("enforce", &["mx.sts.test"])),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = world.certs.write_ca(dir.path());
    let id = enqueue(&dir, &["bob@sts.test"]);
    let port = world.destination.addr.port();
    let sluice = Sluice::start_in(dir, &config(&world.dns, port, Some(&ca)));
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=deferred"]);
    assert_eq!(field(&line, "dsn"), "4.7.5", "{line}");
    assert_eq!(
        world.destination.connections(),
        0,
        "a non-matching MX is never contacted"
    );
    let reply = last_reply(&sluice, &id);
    assert!(
        reply.contains("MTA-STS policy of sts.test (enforce") && reply.contains("does not match"),
        "queue show names the policy: {reply}"
    );
}

#[test]
fn mta_sts_enforce_defers_without_a_certificate_valid_for_the_mx() {
    let world = sts_world(
        "mx.sts.test",
        23,
        &["wrong-name.test"],
        PolicyReply::policy(&policy("enforce", &["mx.sts.test"])),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = world.certs.write_ca(dir.path());
    let id = enqueue(&dir, &["bob@sts.test"]);
    let port = world.destination.addr.port();
    let sluice = Sluice::start_in(dir, &config(&world.dns, port, Some(&ca)));
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=deferred"]);
    assert_eq!(field(&line, "dsn"), "4.7.5", "{line}");
    assert_eq!(field(&line, "tls"), "mta-sts", "{line}");
    no_mail_sent(&world.destination);
    let reply = last_reply(&sluice, &id);
    assert!(
        reply.contains("MTA-STS policy of sts.test (enforce, id one)"),
        "queue show names the policy: {reply}"
    );
}

#[test]
fn mta_sts_testing_delivers_and_logs_what_enforce_would_refuse() {
    let world = sts_world(
        "mx.sts.test",
        24,
        &["wrong-name.test"],
        PolicyReply::policy(&policy("testing", &["other.sts.test"])),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = world.certs.write_ca(dir.path());
    let id = enqueue(&dir, &["bob@sts.test"]);
    let port = world.destination.addr.port();
    let sluice = Sluice::start_in(dir, &config(&world.dns, port, Some(&ca)));
    wait_delivered(&world.destination, 1);
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=sent"]);
    assert_eq!(field(&line, "tls"), "opportunistic", "{line}");
    sluice.wait_log(&["MTA-STS testing", "does not match the policy"]);
    sluice.wait_log(&["MTA-STS testing", "enforce would defer"]);
}

#[test]
fn mta_sts_none_is_ignored() {
    let world = sts_world(
        "mx.sts.test",
        25,
        &["wrong-name.test"],
        PolicyReply::policy(&policy("none", &[])),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = world.certs.write_ca(dir.path());
    let id = enqueue(&dir, &["bob@sts.test"]);
    let port = world.destination.addr.port();
    let sluice = Sluice::start_in(dir, &config(&world.dns, port, Some(&ca)));
    wait_delivered(&world.destination, 1);
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=sent"]);
    assert_eq!(field(&line, "tls"), "opportunistic", "{line}");
    assert_eq!(world.server.requests().len(), 1, "the policy was fetched");
}

#[test]
fn a_cached_policy_survives_a_restart_and_a_new_id_forces_a_refetch() {
    let world = sts_world(
        "mx.sts.test",
        26,
        &["mx.sts.test"],
        PolicyReply::policy(&policy("enforce", &["mx.sts.test"])),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = world.certs.write_ca(dir.path());
    let first = enqueue(&dir, &["bob@sts.test"]);
    let port = world.destination.addr.port();
    let sluice = Sluice::start_in(dir, &config(&world.dns, port, Some(&ca)));
    sluice.wait_log(&[&format!("queue_id={first}"), "status=sent", "tls=mta-sts"]);
    assert_eq!(world.server.requests().len(), 1);

    // After a restart (SIGKILL) with the policy server failing, the cached
    // policy (same id) is used without a fetch.
    world.server.set_reply(PolicyReply {
        status: 500,
        content_type: "text/plain".into(),
        body: b"down".to_vec(),
        location: None,
    });
    let sluice = sluice.restart();
    let send = |to: &str| {
        sluice
            .connect()
            .send_message("alice@origin.test", &[to], "Subject: again\r\n\r\nhi\r\n")
    };
    let second = send("carol@sts.test");
    sluice.wait_log(&[&format!("queue_id={second}"), "status=sent", "tls=mta-sts"]);
    assert_eq!(
        world.server.requests().len(),
        1,
        "no fetch while the id is unchanged"
    );

    // A new id, but the fetch fails: the cached policy stays in force.
    publish_policy(&world.dns, &world.server, "two");
    let third = send("dave@sts.test");
    sluice.wait_log(&[&format!("queue_id={third}"), "status=sent", "tls=mta-sts"]);
    assert_eq!(world.server.requests().len(), 2, "the new id was fetched");
    sluice.wait_log(&[
        "MTA-STS policy fetch failed",
        "HTTP status 500",
        "cached=true",
    ]);

    // Another id with the server back: the new policy (no MX allowed) rules.
    world.server.set_reply(PolicyReply::policy(&policy(
        "enforce",
        &["nothing.sts.test"],
    )));
    publish_policy(&world.dns, &world.server, "three");
    let fourth = send("erin@sts.test");
    sluice.wait_log(&[&format!("queue_id={fourth}"), "status=deferred"]);
    assert_eq!(world.server.requests().len(), 3);
    assert!(last_reply(&sluice, &fourth).contains("id three"));
}

#[test]
fn policy_fetches_refuse_redirects_and_oversized_bodies() {
    // Two domains with the same MX (plaintext only); their policies would
    // refuse it, but neither policy can be fetched: delivery goes on as
    // before.
    let certs = TestCerts::new(&["mta-sts.redirect.test", "mta-sts.big.test"]);
    let destination =
        Destination::start_on(SocketAddr::from(([127, 0, 0, 27], 0)), Options::default());
    let dns = DnsServer::start();
    let enforce = policy("enforce", &["nothing.test"]);
    let redirect = PolicyServer::start(
        certs.server.clone(),
        PolicyReply {
            status: 301,
            content_type: "text/plain".into(),
            body: Vec::new(),
            location: Some("https://mta-sts.big.test/.well-known/mta-sts.txt".into()),
        },
    );
    let mut big_body = enforce.clone();
    while big_body.len() <= 64 * 1024 {
        big_body.push_str("# padding padding padding padding padding padding padding\r\n");
    }
    let big = PolicyServer::start(certs.server.clone(), PolicyReply::policy(&big_body));
    for (domain, server) in [("redirect.test", &redirect), ("big.test", &big)] {
        dns.mx(domain, &[(10, "mx.shared.test")]);
        dns.txt(&format!("_mta-sts.{domain}"), "v=STSv1; id=1;");
        dns.a(&format!("mta-sts.{domain}"), &[server.ip()]);
    }
    dns.a("mx.shared.test", &[Ipv4Addr::new(127, 0, 0, 27)]);
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = certs.write_ca(dir.path());
    let id = enqueue(&dir, &["a@redirect.test", "b@big.test"]);
    let port = destination.addr.port();
    let sluice = Sluice::start_in(dir, &config(&dns, port, Some(&ca)));
    wait_delivered(&destination, 2);
    sluice.wait_log(&[&format!("queue_id={id}"), "a@redirect.test", "status=sent"]);
    sluice.wait_log(&[&format!("queue_id={id}"), "b@big.test", "status=sent"]);
    sluice.wait_log(&["MTA-STS policy fetch failed", "HTTP status 301"]);
    sluice.wait_log(&["MTA-STS policy fetch failed", "over 65536 bytes"]);
    assert_eq!(redirect.requests().len(), 1);
    assert!(big.requests().len() == 1, "the redirect was not followed");

    // A failed fetch is not tried again at once for the same id.
    let again = sluice.connect().send_message(
        "alice@origin.test",
        &["c@redirect.test"],
        "Subject: again\r\n\r\nhi\r\n",
    );
    sluice.wait_log(&[&format!("queue_id={again}"), "status=sent"]);
    assert_eq!(
        redirect.requests().len(),
        1,
        "no second fetch within the backoff"
    );
}

// ------------------------------------------------------------------- DANE

const DANE_DOMAIN: &str = "dane.test";
const DANE_MX: &str = "mx.dane.test";

/// A secure MX for dane.test at 127.0.0.`last` with a TLS destination
/// whose certificate names `cert_name`; the TLSA record is added by `tlsa`.
fn dane_world(last: u8, cert_name: &str) -> (DnsServer, Destination, TestCerts) {
    let certs = TestCerts::new(&[cert_name]);
    let destination = tls_destination([127, 0, 0, last], &certs);
    let dns = DnsServer::start();
    dns.mx(DANE_DOMAIN, &[(10, DANE_MX)]);
    dns.a(DANE_MX, &[Ipv4Addr::new(127, 0, 0, last)]);
    dns.secure(DANE_DOMAIN);
    dns.secure(DANE_MX);
    (dns, destination, certs)
}

fn tlsa_name(port: u16) -> String {
    format!("_{port}._tcp.{DANE_MX}")
}

/// Delivers with one TLSA record chosen from the certificates by `record`;
/// the test CA is NOT trusted, so only DANE can authenticate the server.
fn dane_delivers(last: u8, cert_name: &str, record: impl Fn(&TestCerts) -> (u8, u8, u8, Vec<u8>)) {
    let (dns, destination, certs) = dane_world(last, cert_name);
    let port = destination.addr.port();
    let (usage, selector, matching, data) = record(&certs);
    dns.tlsa(&tlsa_name(port), usage, selector, matching, &data);
    dns.secure(&tlsa_name(port));
    let dir = tempfile::tempdir().expect("temp dir");
    let id = enqueue(&dir, &["bob@dane.test"]);
    let sluice = Sluice::start_in(dir, &config(&dns, port, None));
    let seen = wait_delivered(&destination, 1);
    assert!(seen[0].tls.is_some());
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=sent"]);
    assert_eq!(field(&line, "tls"), "dane", "{line}");
}

#[test]
fn dane_ee_spki_sha256_authenticates_whatever_the_name() {
    // RFC 7672 §3.1.1: with DANE-EE the certificate's names do not matter.
    dane_delivers(31, "unrelated.test", |certs| {
        (3, 1, 1, sha256(&certs.leaf_spki))
    });
}

#[test]
fn dane_ee_full_certificate_sha256_authenticates() {
    dane_delivers(32, "unrelated.test", |certs| {
        (3, 0, 1, sha256(&certs.leaf_der))
    });
}

#[test]
fn dane_ta_spki_sha256_authenticates_a_chain_for_the_mx_name() {
    dane_delivers(33, DANE_MX, |certs| (2, 1, 1, sha256(&certs.ca_spki)));
}

#[test]
fn dane_takes_precedence_over_mta_sts() {
    // The MTA-STS policy would refuse the MX host; its TLSA records win.
    let (dns, destination, certs) = dane_world(38, "unrelated.test");
    let port = destination.addr.port();
    dns.tlsa(&tlsa_name(port), 3, 1, 1, &sha256(&certs.leaf_spki));
    dns.secure(&tlsa_name(port));
    let policy_certs = TestCerts::new(&["mta-sts.dane.test"]);
    let server = PolicyServer::start(
        policy_certs.server.clone(),
        PolicyReply::policy(&policy("enforce", &["nothing.dane.test"])),
    );
    dns.txt("_mta-sts.dane.test", "v=STSv1; id=1;");
    dns.a("mta-sts.dane.test", &[server.ip()]);
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = policy_certs.write_ca(dir.path());
    let id = enqueue(&dir, &["bob@dane.test"]);
    let sluice = Sluice::start_in(dir, &config(&dns, port, Some(&ca)));
    wait_delivered(&destination, 1);
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=sent"]);
    assert_eq!(field(&line, "tls"), "dane", "{line}");
    assert_eq!(server.requests().len(), 1, "the policy was there");
}

#[test]
fn a_tlsa_mismatch_defers_and_never_falls_back_to_plaintext() {
    let (dns, destination, _certs) = dane_world(34, DANE_MX);
    let port = destination.addr.port();
    dns.tlsa(&tlsa_name(port), 3, 1, 1, &[0xab; 32]);
    dns.secure(&tlsa_name(port));
    let dir = tempfile::tempdir().expect("temp dir");
    let id = enqueue(&dir, &["bob@dane.test"]);
    let sluice = Sluice::start_in(dir, &config(&dns, port, None));
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=deferred"]);
    assert_eq!(field(&line, "dsn"), "4.7.5", "{line}");
    assert_eq!(field(&line, "tls"), "dane", "{line}");
    assert!(destination.tls_failures() >= 1, "a handshake was tried");
    no_mail_sent(&destination);
    let reply = last_reply(&sluice, &id);
    assert!(reply.contains("DANE TLSA for mx.dane.test"), "{reply}");
    assert!(reply.contains("matches no TLSA record"), "{reply}");
    assert!(tls_sessions(&sluice, "dane.test", "dane", "failure").ends_with(" 1"));
    assert!(
        !sluice.log_text().contains("retrying in plaintext"),
        "no plaintext fallback under DANE"
    );
}

#[test]
fn insecure_tlsa_is_ignored_and_a_failed_lookup_defers() {
    // An insecure answer (no AD bit): as if there were no TLSA records.
    let (dns, destination, _certs) = dane_world(35, DANE_MX);
    let port = destination.addr.port();
    dns.tlsa(&tlsa_name(port), 3, 1, 1, &[0xab; 32]);
    let dir = tempfile::tempdir().expect("temp dir");
    let id = enqueue(&dir, &["bob@dane.test"]);
    let sluice = Sluice::start_in(dir, &config(&dns, port, None));
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=sent"]);
    assert_eq!(field(&line, "tls"), "opportunistic", "{line}");

    // SERVFAIL on the TLSA lookup of a host of a secure MX: defer.
    dns.error_for(
        &tlsa_name(port),
        hickory_proto::rr::RecordType::TLSA,
        hickory_proto::op::ResponseCode::ServFail,
    );
    let second = sluice.connect().send_message(
        "alice@origin.test",
        &["carol@dane.test"],
        "Subject: 2\r\n\r\nhi\r\n",
    );
    let line = sluice.wait_log(&[&format!("queue_id={second}"), "status=deferred"]);
    assert_eq!(field(&line, "dsn"), "4.7.5", "{line}");
    assert!(last_reply(&sluice, &second).contains("TLSA lookup"));
    assert_eq!(destination.delivered().len(), 1, "nothing more was sent");
}

// ---------------------------------------------------------- sluice route

#[test]
fn sluice_route_shows_hops_addresses_and_the_tls_policy_with_its_source() {
    let (dns, destination, certs) = dane_world(36, DANE_MX);
    let port = destination.addr.port();
    dns.tlsa(&tlsa_name(port), 3, 1, 1, &sha256(&certs.leaf_spki));
    dns.secure(&tlsa_name(port));
    let sts = sts_world(
        "mx.sts.test",
        37,
        &["mx.sts.test"],
        PolicyReply::policy(&policy("enforce", &["mx.sts.test"])),
    );
    // Both domains in one DNS: copy sts.test into the DANE server.
    dns.mx(STS_DOMAIN, &[(10, "mx.sts.test")]);
    dns.a("mx.sts.test", &[Ipv4Addr::new(127, 0, 0, 37)]);
    publish_policy(&dns, &sts.server, "one");
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = sts.certs.write_ca(dir.path());
    let text = common::config_text(dir.path(), "", &config(&dns, port, Some(&ca)));
    let path = write_config(dir.path(), &text);

    let (code, out, err) = cli(&path, &["route", "dane.test"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("1. mx.dane.test port {port}: 127.0.0.36")),
        "{out}"
    );
    assert!(out.contains("tls: dane"), "{out}");
    assert!(
        out.contains("requiretls: delivered over required TLS"),
        "{out}"
    );
    assert!(
        out.contains(&format!("TLSA 3 1 1 {}", hex(&sha256(&certs.leaf_spki)))),
        "{out}"
    );

    let (code, out, err) = cli(&path, &["route", "sts.test", "--json"]);
    assert_eq!(code, 0, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("route JSON");
    assert_eq!(json["hosts"][0]["name"], "mx.sts.test", "{out}");
    assert_eq!(json["hosts"][0]["addresses"][0], "127.0.0.37", "{out}");
    assert_eq!(json["hosts"][0]["tls"]["policy"], "mta-sts", "{out}");
    assert_eq!(
        json["hosts"][0]["requiretls"]["outcome"], "deliver",
        "{out}"
    );
    assert_eq!(json["mta_sts"]["mode"], "enforce", "{out}");
    assert_eq!(json["mta_sts"]["id"], "one", "{out}");
    assert!(json["mta_sts"]["expires_at"].is_string(), "{out}");
    assert_eq!(json["static_tls"]["source"], "delivery.tls", "{out}");
    assert!(destination.connections() == 0, "no mail is sent");

    let (code, out, _) = cli(&path, &["route", "missing.test"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not found"), "{out}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
