//! Fuzzes the SMTP command parser and the session state machine: any bytes,
//! split into lines, must give a reply (or a precise error), never a panic.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use sluice::config::PolicyConfig;
use sluice::policy::Policy;
use sluice::smtp::command::Command;
use sluice::smtp::session::{Action, Session, SessionConfig};

fuzz_target!(|data: &[u8]| {
    let _ = Command::parse(data);
    let config = Arc::new(SessionConfig {
        hostname: "fuzz.test".into(),
        max_message_size: 1000,
        max_recipients: 5,
        max_errors: 1000,
        max_auth_failures: 1000,
        tls_available: true,
        auth_required: data.first().is_some_and(|b| b & 1 == 1),
        policy: Policy::new(&PolicyConfig {
            relay_networks: vec![],
            accept_domains: vec!["example.org".into()],
        }),
    });
    let tls = data.first().is_some_and(|b| b & 2 == 2);
    let mut session = Session::new(config, "192.0.2.1".parse().expect("literal"), tls);
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match session.handle_line(line) {
            Action::Authenticate(_) => {
                let _ = session.auth_result(None);
            }
            Action::StartTls(_) => session.tls_started(),
            Action::Close(replies) => {
                assert!(!replies.is_empty());
                return;
            }
            Action::Reply(reply) | Action::ReceiveData(reply) => {
                let wire = reply.to_wire();
                assert!(wire.ends_with("\r\n"));
            }
            Action::ReceiveChunk { .. } => {}
        }
        let _ = session.received_header("FUZZ", chrono::DateTime::UNIX_EPOCH);
    }
});
