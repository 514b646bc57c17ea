//! The front door of an Internet MX against the real binary: the PROXY
//! protocol on a listener behind a load balancer, recipient validation
//! (files and call-ahead), screening at connect (pregreet, DNS lists),
//! per-client rate limits and greylisting.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod admin;
    pub mod destination;
    pub mod dns;
    pub mod server;
    pub mod smtp;
    pub use {server::*, smtp::*};
}

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::destination::{Destination, Options};
use common::dns::DnsServer;
use common::{DEADLINE, Sluice, SmtpClient, cli_ok, config_text, signal, wait_for};

/// A config for a server accepting mail for `example.org` from anyone,
/// never delivering; `listener` goes into the `[[listener]]` table,
/// `extra` after everything.
fn mx_config(dir: &std::path::Path, listener: &str, extra: &str) -> String {
    mx_config_routed(dir, listener, "127.0.0.1:9", extra)
}

/// [`mx_config`] with `example.org` routed to `route`.
fn mx_config_routed(dir: &std::path::Path, listener: &str, route: &str, extra: &str) -> String {
    let text = config_text(
        dir,
        "",
        &format!(
            "[policy]\naccept_domains = [\"example.org\"]\n\n\
             [routes]\n\"example.org\" = \"{route}\"\n\"*\" = \"127.0.0.1:9\"\n\n\
             [delivery]\nport = 9\ntls = \"disabled\"\nretry_initial = \"1h\"\n\n{extra}"
        ),
    );
    text.replacen(
        "kind = \"relay\"\n",
        &format!("kind = \"relay\"\n{listener}\n"),
        1,
    )
}

fn start_mx(listener: &str, extra: &str) -> Sluice {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = mx_config(dir.path(), listener, extra);
    Sluice::start_with(dir, &text)
}

/// A connection to `server` that first sends `header` raw.
fn connect_with_header(server: &Sluice, header: &[u8]) -> SmtpClient {
    let mut client = SmtpClient::connect(server.smtp);
    client.send_raw(header);
    client
}

/// One message from `client` (greeting not read yet) to
/// `someone@example.org`; returns its queue ID.
fn one_message(client: &mut SmtpClient) -> String {
    let greeting = client.read_reply();
    assert!(greeting.starts_with("220 "), "greeting: {greeting:?}");
    client.send_message(
        "sender@remote.test",
        &["someone@example.org"],
        "Subject: t\r\n\r\nbody\r\n",
    )
}

#[test]
fn proxy_v1_header_gives_the_client_address_to_logs_and_received() {
    let server = start_mx("proxy_protocol = true", "");
    let mut client =
        connect_with_header(&server, b"PROXY TCP4 192.0.2.77 198.51.100.1 40000 25\r\n");
    let id = one_message(&mut client);
    server.wait_log(&["connect", "client=192.0.2.77"]);
    server.wait_log(&["message accepted", &id, "client=192.0.2.77"]);
    let text = cli_ok(&server.config_path, &["queue", "cat", &id]);
    assert!(
        text.starts_with("Received: from client.test ([192.0.2.77])"),
        "the Received field names the proxied client: {text:?}"
    );
}

#[test]
fn proxy_v2_header_gives_the_client_address() {
    let server = start_mx("proxy_protocol = true", "");
    let source: SocketAddr = "[2001:db8::77]:40000".parse().expect("address");
    let destination: SocketAddr = "[2001:db8::1]:25".parse().expect("address");
    let header = sluice::server::proxy::v2_header(source, destination);
    let mut client = connect_with_header(&server, &header);
    let id = one_message(&mut client);
    server.wait_log(&["message accepted", &id, "client=2001:db8::77"]);
    let text = cli_ok(&server.config_path, &["queue", "cat", &id]);
    assert!(
        text.starts_with("Received: from client.test ([IPv6:2001:db8::77])"),
        "{text:?}"
    );
}

#[test]
fn proxy_listener_closes_a_connection_without_the_header() {
    let server = start_mx("proxy_protocol = true", "");
    let mut stream = TcpStream::connect(server.smtp).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    stream.write_all(b"EHLO client.test\r\n").expect("write");
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    assert!(
        got.is_empty(),
        "no greeting, no reply, closed: got {:?}",
        String::from_utf8_lossy(&got)
    );
    server.wait_log(&["PROXY header refused", "no PROXY protocol header"]);
}

#[test]
fn a_listener_without_proxy_protocol_sees_the_header_as_a_command() {
    let server = start_mx("", "");
    let mut client = server.connect();
    client.send_line("PROXY TCP4 192.0.2.77 198.51.100.1 40000 25");
    let reply = client.read_reply();
    assert!(reply.starts_with('5'), "refused as a command: {reply:?}");
}

/// A connection through a `proxy_protocol` listener as `client`, greeting
/// read.
fn connect_as(server: &Sluice, client: &str) -> SmtpClient {
    let mut connection = connect_with_header(
        server,
        format!("PROXY TCP4 {client} 198.51.100.1 40000 25\r\n").as_bytes(),
    );
    let greeting = connection.read_reply();
    assert!(greeting.starts_with("220 "), "greeting: {greeting:?}");
    connection
}

/// `sluice_frontdoor_refusals_total{reason}` from /metrics.
fn refusals(server: &Sluice, reason: &str) -> u64 {
    let metrics = common::admin::http("GET", server.admin, "/metrics", None).body;
    let prefix = format!("sluice_frontdoor_refusals_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |value| value.trim().parse().expect("a counter"))
}

/// A destination that knows only `known@example.org`.
fn inner_server() -> Destination {
    let destination = Destination::start(Options::default());
    destination.on_rcpt(|recipient, _| {
        (!recipient.eq_ignore_ascii_case("known@example.org"))
            .then(|| "550 5.1.1 no such user".to_string())
    });
    destination
}

#[test]
fn call_ahead_accepts_known_refuses_unknown_at_rcpt_and_caches() {
    let inner = inner_server();
    let dir = tempfile::tempdir().expect("temp dir");
    let text = mx_config_routed(
        dir.path(),
        "proxy_protocol = true",
        &inner.addr.to_string(),
        "[recipients]\nverify = \"call-ahead\"\n",
    );
    let server = Sluice::start_with(dir, &text);
    let mut client = connect_as(&server, "192.0.2.50");
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<sender@remote.test>", "250");
    client.expect("RCPT TO:<known@example.org>", "250");
    let reply = client.command("RCPT TO:<nobody@example.org>");
    assert!(reply.starts_with("550 5.1.1"), "unknown at RCPT: {reply:?}");
    // Asked again: answered from the cache.
    let reply = client.command("RCPT TO:<Nobody@example.org>");
    assert!(reply.starts_with("550 5.1.1"), "{reply:?}");
    client.expect("RCPT TO:<known@example.org>", "250");
    assert_eq!(inner.rcpt_attempts("nobody@example.org"), 1, "one probe");
    assert_eq!(inner.rcpt_attempts("known@example.org"), 1, "one probe");
    let probes = inner.commands();
    assert!(
        probes.iter().any(|command| command == "MAIL FROM:<>"),
        "probes use the null sender: {probes:?}"
    );
    assert!(
        !probes
            .iter()
            .any(|command| command.eq_ignore_ascii_case("DATA")),
        "no probe sends DATA: {probes:?}"
    );
    client.expect("QUIT", "221");
    // Nothing was accepted for the unknown recipient, so nothing can bounce.
    let list = cli_ok(&server.config_path, &["queue", "list"]);
    assert!(!list.contains("nobody"), "{list}");
    server.wait_log(&[
        "transaction refused",
        "unknown recipient",
        "nobody@example.org",
    ]);
    assert_eq!(refusals(&server, "unknown_recipient"), 2);
}

#[test]
fn call_ahead_to_a_next_hop_that_is_down_gives_450() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = mx_config_routed(
        dir.path(),
        "proxy_protocol = true",
        "127.0.0.1:9",
        "[recipients]\nverify = \"call-ahead\"\n",
    );
    let server = Sluice::start_with(dir, &text);
    let mut client = connect_as(&server, "192.0.2.50");
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<sender@remote.test>", "250");
    let reply = client.command("RCPT TO:<someone@example.org>");
    assert!(reply.starts_with("450 4.1.1"), "never a 550: {reply:?}");
    // Mail to other domains is not verified (the client may not relay).
    let reply = client.command("RCPT TO:<someone@elsewhere.test>");
    assert!(reply.starts_with("554 5.7.1"), "{reply:?}");
}

#[test]
fn recipients_file_is_used_and_reloaded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("recipients.txt");
    std::fs::write(&file, "alice@example.org\n# comment\n").expect("write list");
    let text = mx_config(
        dir.path(),
        "",
        &format!("[recipients]\nfiles = [\"{}\"]\n", file.display()),
    );
    let server = Sluice::start_with(dir, &text);
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<sender@remote.test>", "250");
    client.expect("RCPT TO:<Alice@example.org>", "250");
    let reply = client.command("RCPT TO:<bob@example.org>");
    assert!(reply.starts_with("550 5.1.1"), "{reply:?}");
    client.expect("RCPT TO:<postmaster@example.org>", "250");
    client.expect("QUIT", "221");
    std::fs::write(&file, "alice@example.org\nbob@example.org\n").expect("write list");
    signal(server.pid(), "HUP");
    wait_for("bob to be known after the reload", DEADLINE, || {
        let mut client = server.connect();
        client.expect("EHLO client.test", "250");
        client.expect("MAIL FROM:<sender@remote.test>", "250");
        client
            .command("RCPT TO:<bob@example.org>")
            .starts_with("250")
            .then_some(())
    });
    // A list that does not load fails the reload; the old one stays.
    std::fs::write(&file, "not an address\n").expect("write list");
    signal(server.pid(), "HUP");
    server.wait_log(&["recipients.files", "line 1"]);
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<sender@remote.test>", "250");
    client.expect("RCPT TO:<bob@example.org>", "250");
}

#[test]
fn a_client_on_a_dns_list_is_refused_at_connect() {
    let dns = DnsServer::start();
    dns.a("99.2.0.192.zen.test", &["127.0.0.2".parse().expect("ip")]);
    dns.a("99.2.0.192.wl.test", &["127.0.0.2".parse().expect("ip")]);
    dns.a("98.2.0.192.zen.test", &["127.0.0.2".parse().expect("ip")]);
    dns.servfail("98.2.0.192.broken.test");
    let server = start_mx(
        "proxy_protocol = true",
        &format!(
            "{}\n[screen]\ndnsbl = [{{ zone = \"zen.test\", weight = 3 }}, \
             {{ zone = \"wl.test\", weight = -2 }}, {{ zone = \"broken.test\", weight = 5 }}]\n\
             threshold = 3\n",
            dns.config()
        ),
    );
    // Listed by zen.test alone: 3.
    let mut client =
        connect_with_header(&server, b"PROXY TCP4 192.0.2.98 198.51.100.1 40000 25\r\n");
    let reply = client.read_reply();
    assert!(
        reply.starts_with("554 5.7.1") && reply.contains("zen.test"),
        "refused at connect: {reply:?}"
    );
    assert_eq!(client.read_to_end(), "", "closed");
    server.wait_log(&[
        "connection refused by the screen",
        "192.0.2.98",
        "zen.test=3",
    ]);
    server.wait_log(&["DNS list lookup failed", "broken.test"]);
    // Listed by zen.test and by the allow list: 1, under the threshold.
    let mut client = connect_as(&server, "192.0.2.99");
    client.expect("EHLO client.test", "250");
    // Not listed at all.
    let mut client = connect_as(&server, "192.0.2.100");
    client.expect("EHLO client.test", "250");
    assert_eq!(refusals(&server, "dnsbl"), 1);
}

#[test]
fn a_client_that_talks_before_the_greeting_is_refused() {
    let server = start_mx("proxy_protocol = true", "[screen]\npregreet = \"1s\"\n");
    let mut client = connect_with_header(
        &server,
        b"PROXY TCP4 192.0.2.60 198.51.100.1 40000 25\r\nEHLO bot.test\r\n",
    );
    let reply = client.read_reply();
    assert!(reply.starts_with("554 5.7.1"), "{reply:?}");
    server.wait_log(&["connection refused by the screen", "pregreet", "192.0.2.60"]);
    // One that waits gets the greeting after the delay, and then at once
    // for the allowlist's lifetime.
    let started = std::time::Instant::now();
    let mut client = connect_as(&server, "192.0.2.61");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    client.expect("QUIT", "221");
    let started = std::time::Instant::now();
    let mut client = connect_as(&server, "192.0.2.61");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "allowlisted"
    );
    client.expect("QUIT", "221");
    assert_eq!(refusals(&server, "pregreet"), 1);
}

#[test]
fn client_rates_refuse_connections_messages_and_recipients() {
    let server = start_mx(
        "proxy_protocol = true",
        "[client_limits]\nconnections = \"2/m\"\nmessages = \"1/m\"\nrecipients = \"2/m\"\n",
    );
    let mut client = connect_as(&server, "192.0.2.70");
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<sender@remote.test>", "250");
    client.expect("RCPT TO:<a@example.org>", "250");
    let reply = client.command("RCPT TO:<b@example.org>");
    assert!(reply.starts_with("452 4.7.0"), "recipient rate: {reply:?}");
    client.expect("RSET", "250");
    let reply = client.command("MAIL FROM:<sender@remote.test>");
    assert!(reply.starts_with("452 4.7.0"), "message rate: {reply:?}");
    // Another client has its own buckets.
    let mut other = connect_as(&server, "192.0.2.71");
    other.expect("EHLO client.test", "250");
    other.expect("MAIL FROM:<sender@remote.test>", "250");
    // The first client's second connection is refused at connect.
    let mut again =
        connect_with_header(&server, b"PROXY TCP4 192.0.2.70 198.51.100.1 40001 25\r\n");
    let reply = again.read_reply();
    assert!(reply.starts_with("421 4.7.0"), "connection rate: {reply:?}");
    assert_eq!(refusals(&server, "connection_rate"), 1);
    assert_eq!(refusals(&server, "message_rate"), 1);
    assert_eq!(refusals(&server, "recipient_rate"), 1);
}

#[test]
fn greylisting_delays_a_new_triplet_then_lets_it_through() {
    let server = start_mx(
        "proxy_protocol = true",
        "[greylisting]\nenabled = true\ndelay = \"2s\"\n",
    );
    let first = std::time::Instant::now();
    let mut client = connect_as(&server, "192.0.2.80");
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<sender@remote.test>", "250");
    let reply = client.command("RCPT TO:<user@example.org>");
    assert!(reply.starts_with("451 4.7.1"), "greylisted: {reply:?}");
    // Too early: still refused.
    let reply = client.command("RCPT TO:<user@example.org>");
    assert!(reply.starts_with("451 4.7.1"), "{reply:?}");
    // From another address of the same /24, after the delay: accepted.
    wait_for("the triplet to pass", DEADLINE, || {
        let mut client = connect_as(&server, "192.0.2.81");
        client.expect("EHLO client.test", "250");
        client.expect("MAIL FROM:<sender@remote.test>", "250");
        client
            .command("RCPT TO:<user@example.org>")
            .starts_with("250")
            .then_some(())
    });
    assert!(
        first.elapsed() >= Duration::from_secs(2),
        "not before the delay"
    );
    // A relay client (loopback) is never greylisted.
    let mut local = connect_as(&server, "127.0.0.1");
    local.expect("EHLO client.test", "250");
    local.expect("MAIL FROM:<sender@remote.test>", "250");
    local.expect("RCPT TO:<other@example.org>", "250");
    assert!(refusals(&server, "greylisted") >= 2);
}
