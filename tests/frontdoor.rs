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

use common::{NO_DELIVERY, Sluice, SmtpClient, cli_ok, config_text};

/// A config for a server accepting mail for `example.org` from anyone,
/// never delivering; `listener` goes into the `[[listener]]` table,
/// `extra` after everything.
fn mx_config(dir: &std::path::Path, listener: &str, extra: &str) -> String {
    let text = config_text(
        dir,
        "",
        &format!("[policy]\naccept_domains = [\"example.org\"]\n\n{NO_DELIVERY}\n{extra}"),
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
