//! `[log] level` is for sluice's own targets: at `debug`, the server logs
//! its own debug lines but not those of its dependencies (sled, hickory),
//! unless `RUST_LOG` asks for them.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod destination;
    pub mod dns;
    pub mod server;
    pub mod smtp;
    pub mod spool;
    pub use {server::*, smtp::*};
}

use std::net::Ipv4Addr;

use common::destination::{Destination, Options, wait_delivered};
use common::dns::DnsServer;
use common::spool::enqueue_offline;
use common::{Sluice, config_text};

/// Delivers one message through DNS (so hickory resolves) with `[log] level
/// = "debug"` and `RUST_LOG` as given (`None`: unset); returns the log.
fn debug_log_of_a_delivery(rust_log: Option<&str>) -> String {
    let destination = Destination::start(Options::default());
    let dns = DnsServer::start();
    dns.mx("dest.test", &[(10, "mx.dest.test")]);
    dns.a("mx.dest.test", &[Ipv4Addr::LOCALHOST]);
    let dir = tempfile::tempdir().expect("temp dir");
    enqueue_offline(
        &dir.path().join("spool"),
        "alice@origin.test",
        &["bob@dest.test"],
        b"From: alice@origin.test\r\nSubject: log\r\n\r\nHello.\r\n",
    );
    let extra = format!(
        "{}[delivery]\nport = {}\ntls = \"disabled\"\n",
        dns.config(),
        destination.addr.port()
    );
    let config = config_text(dir.path(), "", &extra)
        .replace("[log]\nlevel = \"info\"", "[log]\nlevel = \"debug\"");
    let mut sluice = Sluice::start_with_command(dir, &config, |command| match rust_log {
        Some(value) => {
            command.env("RUST_LOG", value);
        }
        None => {
            command.env_remove("RUST_LOG");
        }
    });
    wait_delivered(&destination, 1);
    sluice.wait_log(&["status=sent"]);
    sluice.terminate();
    sluice.log_text()
}

/// The targets of the debug lines in `log` (text format: time, level,
/// target followed by `:`).
fn debug_targets(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let _time = words.next()?;
            (words.next()? == "DEBUG").then(|| words.next().unwrap_or("").to_string())
        })
        .collect()
}

#[test]
fn debug_level_shows_sluice_debug_lines_and_no_dependency_internals() {
    let log = debug_log_of_a_delivery(None);
    let targets = debug_targets(&log);
    assert!(
        targets.iter().any(|target| target.starts_with("sluice")),
        "sluice's own debug lines are there:\n{log}"
    );
    let foreign: Vec<&String> = targets
        .iter()
        .filter(|target| !target.starts_with("sluice"))
        .collect();
    assert!(
        foreign.is_empty(),
        "no debug line from a dependency (sled, hickory, …): {foreign:?}\n{log}"
    );
}

#[test]
fn rust_log_still_reaches_the_dependencies() {
    let log = debug_log_of_a_delivery(Some("debug"));
    let targets = debug_targets(&log);
    assert!(
        targets.iter().any(|target| target.starts_with("hickory")),
        "RUST_LOG=debug shows hickory's debug lines: {targets:?}"
    );
}
