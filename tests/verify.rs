//! `[verify]` against the real binary and the test DNS server: SPF, DKIM
//! and DMARC verdicts in the Authentication-Results header, DMARC
//! enforcement, forged results removed, and temporary DNS failures that
//! never refuse mail.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod admin;
    pub mod dns;
    pub mod server;
    pub mod smtp;
    pub mod spool;
    pub use {server::*, smtp::*};
}

use std::time::{Duration, Instant};

use common::dns::{DnsServer, SilentNameserver};
use common::spool::stop_and_read_queue;
use common::{NO_DELIVERY, Sluice};

/// Sluice checking mail from strangers: loopback is not a relay network, so
/// the test client is one; it may send to dest.test.
fn start(dns_config: &str, enforce_dmarc: bool) -> Sluice {
    Sluice::start(&format!(
        "[policy]\nrelay_networks = [\"192.0.2.0/24\"]\naccept_domains = [\"dest.test\"]\n\n\
         [verify]\nenabled = true\nenforce_dmarc = {enforce_dmarc}\n\n{dns_config}\n{NO_DELIVERY}"
    ))
}

fn message(from: &str, extra_headers: &str) -> String {
    format!("{extra_headers}From: {from}\r\nTo: bob@dest.test\r\nSubject: check\r\n\r\nHello.\r\n")
}

/// The final reply to one transaction from `sender` with `data`.
fn send(client: &mut common::SmtpClient, sender: &str, data: &str) -> String {
    let mut stuffed = String::new();
    for line in data.split_inclusive("\r\n") {
        if line.starts_with('.') {
            stuffed.push('.');
        }
        stuffed.push_str(line);
    }
    client
        .try_transaction(sender, &["bob@dest.test"], stuffed.as_bytes())
        .expect("transaction")
}

/// The stored messages' Authentication-Results fields (unfolded), by sender.
fn results_by_sender(sluice: &mut Sluice) -> Vec<(String, Vec<String>)> {
    stop_and_read_queue(sluice)
        .into_iter()
        .map(|queued| {
            let header_section = queued
                .body
                .split("\r\n\r\n")
                .next()
                .unwrap_or("")
                .to_string();
            let unfolded = header_section.replace("\r\n\t", " ").replace("\r\n ", " ");
            let fields = unfolded
                .split("\r\n")
                .filter(|line| {
                    line.to_ascii_lowercase()
                        .starts_with("authentication-results:")
                })
                .map(str::to_string)
                .collect();
            (queued.message.sender.clone(), fields)
        })
        .collect()
}

fn ours<'a>(results: &'a [(String, Vec<String>)], sender: &str) -> &'a str {
    let (_, fields) = results
        .iter()
        .find(|(from, _)| from == sender)
        .unwrap_or_else(|| panic!("no message from {sender}: {results:?}"));
    let ours: Vec<&String> = fields
        .iter()
        .filter(|field| field.starts_with("Authentication-Results: sluice.test;"))
        .collect();
    assert_eq!(ours.len(), 1, "one field of ours for {sender}: {fields:?}");
    ours[0]
}

#[test]
fn spf_verdicts_pass_fail_softfail_neutral_none_and_temperror() {
    let dns = DnsServer::start();
    dns.txt("pass.test", "v=spf1 ip4:127.0.0.1 -all");
    dns.txt("fail.test", "v=spf1 ip4:192.0.2.1 -all");
    dns.txt("softfail.test", "v=spf1 ~all");
    dns.txt("neutral.test", "v=spf1 ?all");
    dns.a("none.test", &["127.0.0.1".parse().unwrap()]);
    dns.servfail("temperror.test");
    let mut sluice = start(&dns.config(), false);
    let admin = sluice.admin;
    let mut client = sluice.connect();
    client.expect("EHLO client.test", "250");
    let cases = ["pass", "fail", "softfail", "neutral", "none", "temperror"];
    for case in cases {
        let sender = format!("alice@{case}.test");
        let reply = send(&mut client, &sender, &message(&sender, ""));
        assert!(
            reply.starts_with("250 "),
            "{case}: accepted whatever SPF says: {reply}"
        );
    }
    client.command("QUIT");
    let metrics = common::admin::http("GET", admin, "/metrics", None).body;
    for case in cases {
        let line = format!("sluice_auth_results_total{{kind=\"spf\",result=\"{case}\"}} 1");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    let results = results_by_sender(&mut sluice);
    for case in cases {
        let field = ours(&results, &format!("alice@{case}.test"));
        assert!(
            field.contains(&format!("spf={case} smtp.mailfrom=alice@{case}.test")),
            "{case}: {field}"
        );
        assert!(field.contains("dkim=none"), "{case}: {field}");
        assert!(field.contains("dmarc="), "{case}: {field}");
    }
}

/// Publishes SPF for bounce.<org> (the envelope domain) and DMARC `p=reject`
/// for <org> (the From: domain), with `aspf` as given.
fn dmarc_domain(dns: &DnsServer, org: &str, aspf: &str) {
    dns.txt(&format!("bounce.{org}"), "v=spf1 ip4:127.0.0.1 -all");
    dns.txt(
        &format!("_dmarc.{org}"),
        &format!("v=DMARC1; p=reject; aspf={aspf}"),
    );
}

#[test]
fn dmarc_alignment_relaxed_passes_and_strict_fails_and_is_enforced_only_when_asked() {
    let dns = DnsServer::start();
    dmarc_domain(&dns, "relaxed.test", "r");
    dmarc_domain(&dns, "strict.test", "s");

    for enforce in [false, true] {
        let mut sluice = start(&dns.config(), enforce);
        let mut client = sluice.connect();
        client.expect("EHLO client.test", "250");
        let relaxed = send(
            &mut client,
            "alice@bounce.relaxed.test",
            &message("alice@relaxed.test", ""),
        );
        assert!(
            relaxed.starts_with("250 "),
            "relaxed alignment passes: {relaxed}"
        );
        let strict = send(
            &mut client,
            "alice@bounce.strict.test",
            &message("alice@strict.test", ""),
        );
        if enforce {
            assert!(
                strict.starts_with("550 5.7.1 "),
                "a DMARC failure under p=reject is refused when enforced: {strict}"
            );
        } else {
            assert!(
                strict.starts_with("250 "),
                "only recorded when not enforced: {strict}"
            );
        }
        client.command("QUIT");
        let results = results_by_sender(&mut sluice);
        let field = ours(&results, "alice@bounce.relaxed.test");
        assert!(field.contains("spf=pass"), "{field}");
        assert!(
            field.contains("dmarc=pass header.from=relaxed.test policy.dmarc=reject"),
            "{field}"
        );
        if enforce {
            assert_eq!(results.len(), 1, "the refused message is not queued");
        } else {
            let field = ours(&results, "alice@bounce.strict.test");
            assert!(field.contains("spf=pass"), "{field}");
            assert!(
                field.contains("dmarc=fail") && field.contains("header.from=strict.test"),
                "strict alignment fails: {field}"
            );
        }
    }
}

#[test]
fn forged_results_in_our_name_are_removed_and_others_kept() {
    let dns = DnsServer::start();
    dns.txt("pass.test", "v=spf1 ip4:127.0.0.1 -all");
    let mut sluice = start(&dns.config(), false);
    let mut client = sluice.connect();
    client.expect("EHLO client.test", "250");
    let forged = "Authentication-Results: sluice.test; spf=pass; dkim=pass; dmarc=pass\r\n\
                  Authentication-Results: other.test;\r\n\tspf=pass\r\n\
                  Authentication-Results: SLUICE.TEST (forged); dmarc=pass\r\n";
    let reply = send(
        &mut client,
        "alice@pass.test",
        &message("alice@pass.test", forged),
    );
    assert!(reply.starts_with("250 "), "{reply}");
    client.command("QUIT");
    let queued = stop_and_read_queue(&mut sluice);
    let body = &queued[0].body;
    assert!(
        body.starts_with("Authentication-Results: sluice.test;"),
        "ours comes first: {body}"
    );
    assert_eq!(
        body.to_ascii_lowercase()
            .matches("authentication-results: sluice.test")
            .count(),
        1,
        "only ours claims sluice.test: {body}"
    );
    assert!(
        body.contains("Authentication-Results: other.test;\r\n\tspf=pass\r\n"),
        "{body}"
    );
    assert!(
        body.contains("spf=pass smtp.mailfrom=alice@pass.test"),
        "{body}"
    );
}

#[test]
fn a_silent_nameserver_gives_temperror_within_the_dns_timeout_and_never_refuses() {
    let silent = SilentNameserver::start();
    let mut sluice = start(&silent.config("1s"), true);
    let mut client = sluice.connect();
    client.expect("EHLO client.test", "250");
    let started = Instant::now();
    let reply = send(
        &mut client,
        "alice@slow.test",
        &message("alice@slow.test", ""),
    );
    let took = started.elapsed();
    assert!(
        reply.starts_with("250 "),
        "a DNS failure never refuses: {reply}"
    );
    assert!(
        took < Duration::from_secs(5),
        "bounded by dns.timeout: took {took:?}"
    );
    client.command("QUIT");
    let results = results_by_sender(&mut sluice);
    let field = ours(&results, "alice@slow.test");
    assert!(field.contains("spf=temperror"), "{field}");
    assert!(field.contains("dmarc=temperror"), "{field}");
}

/// Runs `sluice dkim keygen` for `domain`/`selector` (Ed25519) in `dir`;
/// returns the key file and the TXT value.
fn keygen(dir: &std::path::Path, domain: &str, selector: &str) -> (std::path::PathBuf, String) {
    let (code, stdout, stderr) = common::run(None, |command| {
        command.args([
            "dkim",
            "keygen",
            "--domain",
            domain,
            "--selector",
            selector,
            "--out",
        ]);
        command.arg(dir);
    });
    assert_eq!(code, 0, "keygen: {stderr}");
    let txt = stdout
        .lines()
        .find(|line| line.contains("._domainkey."))
        .expect("TXT line")
        .split('"')
        .skip(1)
        .step_by(2)
        .collect::<String>();
    (dir.join(format!("{domain}.{selector}.pem")), txt)
}

#[test]
fn a_sluice_signature_passes_dkim_and_aligns_dmarc_and_a_tampered_one_is_refused() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (key, txt) = keygen(keys.path(), "example.org", "ed");
    let dns = DnsServer::start();
    dns.txt("ed._domainkey.example.org", &txt);
    dns.txt("_dmarc.example.org", "v=DMARC1; p=reject");

    // Signed by one sluice, for a relay client…
    let mut signer = Sluice::start(&format!(
        "[[dkim]]\ndomain = \"example.org\"\nselector = \"ed\"\nprivate_key = \"{}\"\n\n{NO_DELIVERY}",
        key.display()
    ));
    let mut client = signer.connect();
    client.send_message(
        "alice@example.org",
        &["bob@dest.test"],
        &message("Alice <alice@example.org>", ""),
    );
    client.command("QUIT");
    let signed = stop_and_read_queue(&mut signer)[0].body.clone();
    assert!(signed.starts_with("DKIM-Signature: "), "{signed}");

    // …and checked by another, as mail from a stranger.
    let mut checker = start(&dns.config(), true);
    let mut client = checker.connect();
    client.expect("EHLO client.test", "250");
    let reply = send(&mut client, "alice@example.org", &signed);
    assert!(reply.starts_with("250 "), "{reply}");
    let tampered = signed.replace("Hello.", "Hello!");
    let refused = send(&mut client, "mallory@example.org", &tampered);
    assert!(
        refused.starts_with("550 5.7.1 "),
        "a broken signature fails DMARC, enforced: {refused}"
    );
    client.command("QUIT");
    let results = results_by_sender(&mut checker);
    assert_eq!(results.len(), 1, "{results:?}");
    let field = ours(&results, "alice@example.org");
    assert!(field.contains("spf=none"), "{field}");
    assert!(
        field.contains("dkim=pass header.d=example.org header.s=ed"),
        "{field}"
    );
    assert!(
        field.contains("dmarc=pass header.from=example.org"),
        "{field}"
    );
}
