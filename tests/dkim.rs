//! DKIM signing against the real binary: keys from `sluice dkim keygen`,
//! published on the test DNS server, and the signatures checked by an
//! independent verifier (Python's dkimpy, fetching the keys from that DNS
//! server with dnspython).

#[allow(dead_code, unused_imports)]
mod common {
    pub mod admin;
    pub mod dns;
    pub mod server;
    pub mod smtp;
    pub mod spool;
    pub use {server::*, smtp::*};
}

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::dns::DnsServer;
use common::spool::stop_and_read_queue;
use common::{NO_DELIVERY, Sluice};

const MESSAGE: &str = "From: Alice <alice@example.org>\r\nTo: bob@dest.test\r\n\
                       Subject: signed\r\nMessage-ID: <1@example.org>\r\n\r\n\
                       Hello Bob.\r\n\r\nA second paragraph.  With  spaces.\r\n";

/// Runs `sluice dkim keygen` into `dir`; returns the key file and the TXT
/// value printed (its quoted strings joined).
fn keygen(dir: &Path, domain: &str, selector: &str, algorithm: &str) -> (PathBuf, String) {
    let (code, stdout, stderr) = common::run(None, |command| {
        command.args([
            "dkim",
            "keygen",
            "--domain",
            domain,
            "--selector",
            selector,
            "--algorithm",
            algorithm,
            "--out",
        ]);
        command.arg(dir);
    });
    assert_eq!(code, 0, "keygen failed: {stderr}");
    let record = stdout
        .lines()
        .find(|line| line.starts_with(&format!("{selector}._domainkey.{domain}. IN TXT ")))
        .unwrap_or_else(|| panic!("no TXT record line in {stdout}"));
    let txt: String = record
        .split('"')
        .skip(1)
        .step_by(2)
        .collect::<Vec<_>>()
        .concat();
    let path = dir.join(format!("{domain}.{selector}.pem"));
    let mode = std::fs::metadata(&path)
        .expect("key written")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the private key is private");
    (path, txt)
}

fn dkim_entry(domain: &str, selector: &str, key: &Path) -> String {
    format!(
        "[[dkim]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nprivate_key = \"{}\"\n",
        key.display()
    )
}

/// dkimpy's verdict on each DKIM-Signature of `message`, in order, with
/// the keys looked up on `dns`.
fn dkimpy_verify(dns: &DnsServer, message: &[u8]) -> Vec<bool> {
    let script = format!(
        r#"
import sys, dkim, dns.resolver
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = ["{ip}"]
resolver.port = {port}
def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    answer = resolver.resolve(name, "TXT")
    return b"".join(b"".join(record.strings) for record in answer)
message = sys.stdin.buffer.read()
verifier = dkim.DKIM(message)
count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
def verdict(index):
    try:
        return bool(verifier.verify(idx=index, dnsfunc=dnsfunc))
    except dkim.DKIMException:
        return False
print(" ".join(str(verdict(i)) for i in range(count)))
"#,
        ip = dns.addr.ip(),
        port = dns.addr.port()
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs (dkimpy and dnspython are installed by .ci/run)");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(message)
        .expect("write message");
    let output = child.wait_with_output().expect("python3 ends");
    assert!(
        output.status.success(),
        "dkimpy failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(|verdict| verdict == "True")
        .collect()
}

/// Sends `message` from a relay client, stops the server and returns the
/// stored message.
fn send_and_read(mut sluice: Sluice, message: &str) -> String {
    let mut client = sluice.connect();
    client.send_message("alice@example.org", &["bob@dest.test"], message);
    client.command("QUIT");
    let queued = stop_and_read_queue(&mut sluice);
    assert_eq!(queued.len(), 1);
    queued[0].body.clone()
}

#[test]
fn signatures_by_both_algorithms_verify_with_dkimpy_and_a_tampered_body_fails() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (ed_key, ed_txt) = keygen(keys.path(), "example.org", "ed", "ed25519");
    let (rsa_key, rsa_txt) = keygen(keys.path(), "example.org", "rsa", "rsa");
    assert!(ed_txt.starts_with("v=DKIM1; k=ed25519; p="), "{ed_txt}");
    assert!(rsa_txt.starts_with("v=DKIM1; k=rsa; p="), "{rsa_txt}");
    let dns = DnsServer::start();
    dns.txt("ed._domainkey.example.org", &ed_txt);
    dns.txt("rsa._domainkey.example.org", &rsa_txt);
    let sluice = Sluice::start(&format!(
        "{}\n{}\n{NO_DELIVERY}",
        dkim_entry("example.org", "ed", &ed_key),
        dkim_entry("example.org", "rsa", &rsa_key)
    ));
    let admin = sluice.admin;
    let mut client = sluice.connect();
    client.send_message("alice@example.org", &["bob@dest.test"], MESSAGE);
    let metrics = common::admin::http("GET", admin, "/metrics", None).body;
    assert!(
        metrics.contains("sluice_dkim_signatures_total 2"),
        "two signatures counted:\n{metrics}"
    );
    client.command("QUIT");
    let stored = {
        let mut sluice = sluice;
        let queued = stop_and_read_queue(&mut sluice);
        queued[0].body.clone()
    };
    assert!(stored.starts_with("DKIM-Signature: "), "{stored}");
    assert_eq!(stored.matches("DKIM-Signature: ").count(), 2, "{stored}");
    assert!(stored.contains("a=ed25519-sha256"), "{stored}");
    assert!(stored.contains("a=rsa-sha256"), "{stored}");
    assert_eq!(
        dkimpy_verify(&dns, stored.as_bytes()),
        [true, true],
        "both signatures verify:\n{stored}"
    );
    let tampered = stored.replace("Hello Bob.", "Hello Eve.");
    assert_eq!(dkimpy_verify(&dns, tampered.as_bytes()), [false, false]);
    let added_from = stored.replace("From: Alice", "From: mallory@evil.test\r\nFrom: Alice");
    assert_eq!(
        dkimpy_verify(&dns, added_from.as_bytes()),
        [false, false],
        "From is over-signed: a second From breaks the signatures"
    );
}

#[test]
fn only_trusted_clients_mail_for_a_keyed_from_domain_is_signed() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (ed_key, _) = keygen(keys.path(), "example.org", "ed", "ed25519");
    let entry = dkim_entry("example.org", "ed", &ed_key);

    // A relay client, but the From: domain has no key.
    let other = MESSAGE.replace("alice@example.org", "alice@other.org");
    let stored = send_and_read(Sluice::start(&format!("{entry}\n{NO_DELIVERY}")), &other);
    assert!(!stored.contains("DKIM-Signature"), "{stored}");

    // The right domain, from a client outside relay_networks (mail for an
    // accepted domain from a stranger is not ours to sign).
    let stranger = format!(
        "{entry}\n[policy]\nrelay_networks = [\"192.0.2.0/24\"]\naccept_domains = [\"dest.test\"]\n\n{NO_DELIVERY}"
    );
    let stored = send_and_read(Sluice::start(&stranger), MESSAGE);
    assert!(!stored.contains("DKIM-Signature"), "{stored}");

    // The same from a relay client is signed.
    let stored = send_and_read(Sluice::start(&format!("{entry}\n{NO_DELIVERY}")), MESSAGE);
    assert!(stored.starts_with("DKIM-Signature: "), "{stored}");
}

#[test]
fn check_config_refuses_a_key_that_cannot_sign_naming_the_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (good, _) = keygen(dir.path(), "example.org", "ed", "ed25519");
    let missing = dir.path().join("missing.pem");
    let weak = dir.path().join("weak.pem");
    {
        use rsa::pkcs8::EncodePrivateKey as _;
        let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 1024).expect("rsa 1024");
        let pem = key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).expect("pem");
        common::server::write_private(&weak, pem.as_bytes()).expect("write key");
    }
    let config = |entries: &str| {
        let text = common::config_text(dir.path(), "", entries);
        common::write_config(dir.path(), &text)
    };

    let path = config(&dkim_entry("example.org", "ed", &good));
    let stdout = common::cli_ok(&path, &["check-config"]);
    assert!(
        stdout.contains("[[dkim]]"),
        "check-config prints the entries:\n{stdout}"
    );
    assert!(stdout.contains("[verify]"), "and [verify]:\n{stdout}");

    for (bad, expected) in [(&missing, "cannot read"), (&weak, "1024 bits")] {
        let path = config(&format!(
            "{}\n{}",
            dkim_entry("example.org", "ed", &good),
            dkim_entry("example.org", "rsa", bad)
        ));
        let (code, _, stderr) = common::cli(&path, &["check-config"]);
        assert_eq!(code, 1, "refused: {stderr}");
        assert!(stderr.contains("dkim[1].private_key"), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        // The server refuses to start on it too.
        let (code, _, stderr) = common::cli(&path, &["serve"]);
        assert_eq!(code, 1, "serve refused: {stderr}");
        assert!(stderr.contains("dkim[1].private_key"), "{stderr}");
    }
}

#[test]
fn a_message_sent_in_bdat_chunks_is_signed_too() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (ed_key, ed_txt) = keygen(keys.path(), "example.org", "ed", "ed25519");
    let dns = DnsServer::start();
    dns.txt("ed._domainkey.example.org", &ed_txt);
    let mut sluice = Sluice::start(&format!(
        "{}\n{NO_DELIVERY}",
        dkim_entry("example.org", "ed", &ed_key)
    ));
    let mut client = sluice.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<alice@example.org>", "250");
    client.expect("RCPT TO:<bob@dest.test>", "250");
    // The header/body boundary falls inside the second chunk.
    let (first, rest) = MESSAGE.split_at(30);
    let (second, third) = rest.split_at(rest.find("\r\n\r\n").expect("empty line") + 3);
    for (index, chunk) in [first, second, third].iter().enumerate() {
        let last = if index == 2 { " LAST" } else { "" };
        client.send_raw(format!("BDAT {}{last}\r\n{chunk}", chunk.len()).as_bytes());
        let reply = client.read_reply();
        assert!(reply.starts_with("250 "), "chunk {index}: {reply}");
    }
    client.command("QUIT");
    let stored = stop_and_read_queue(&mut sluice)[0].body.clone();
    assert!(stored.starts_with("DKIM-Signature: "), "{stored}");
    assert_eq!(dkimpy_verify(&dns, stored.as_bytes()), [true], "{stored}");
}

#[test]
fn a_message_with_long_lines_is_broken_before_signing_and_verifies() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (ed_key, ed_txt) = keygen(keys.path(), "example.org", "ed", "ed25519");
    let dns = DnsServer::start();
    dns.txt("ed._domainkey.example.org", &ed_txt);
    let sluice = Sluice::start(&format!(
        "{}\n{NO_DELIVERY}",
        dkim_entry("example.org", "ed", &ed_key)
    ));
    let words: Vec<String> = (0..150).map(|n| format!("w{n:08}")).collect();
    let message = format!(
        "From: Alice <alice@example.org>\r\nTo: bob@dest.test\r\nSubject: {}\r\n\r\n{}\r\n",
        words.join(" "),
        "y".repeat(5000)
    );
    let stored = send_and_read(sluice, &message);
    assert!(
        stored.lines().all(|line| line.len() <= 998),
        "no stored line over 998 octets"
    );
    assert_eq!(
        dkimpy_verify(&dns, stored.as_bytes()),
        [true],
        "the signature covers the broken lines:\n{stored}"
    );
}
