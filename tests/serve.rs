//! `sluice serve` as a process: embedded defaults, readiness, clean shutdown.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod server;
    pub mod smtp;
    pub mod spool;
    pub use {server::*, smtp::*};
}

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Sluice, wait_for};

#[test]
fn sigterm_stops_the_server_cleanly_with_exit_0() {
    let mut server = Sluice::start("");
    let status = server.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    let log = server.log_text();
    assert!(
        log.contains("sluice stopped"),
        "no 'sluice stopped' in the log:\n{log}"
    );
}

#[test]
fn serve_without_config_uses_embedded_defaults() {
    // The embedded defaults bind fixed loopback ports (2525, 8025); skip when
    // something else on this machine already holds them.
    for port in [2525, 8025] {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            eprintln!("port {port} is busy; skipping");
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(common::binary())
        .arg("serve")
        .current_dir(dir.path())
        .env_remove("SLUICE_CONFIG")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sluice");
    let greeting = wait_for(
        "the default listener on 127.0.0.1:2525",
        Duration::from_secs(20),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("sluice exited early with {status}");
            }
            let stream = std::net::TcpStream::connect(("127.0.0.1", 2525)).ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut line).ok()?;
            Some(line)
        },
    );
    assert!(greeting.starts_with("220 "), "greeting: {greeting:?}");
    assert!(
        dir.path().join("spool").is_dir(),
        "spool created in ./spool"
    );
    common::signal(child.id(), "TERM");
    let status = wait_for(
        "sluice to exit after SIGTERM",
        Duration::from_secs(60),
        || child.try_wait().expect("wait"),
    );
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_spool_held_by_a_short_lived_command_is_waited_for_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    // As an offline `sluice queue` or `sluice sendmail` would, this process
    // holds the spool while the server starts, and lets go a moment later.
    let holder = common::spool::open_spool(&dir.path().join("spool"));
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(holder.close()).expect("close the spool");
    });
    let server = Sluice::start_in(dir, "");
    release.join().expect("the holder thread");
    let log = server.log_text();
    assert!(
        log.contains("the spool is in use by another process; waiting for it"),
        "the start did not say it waited for the spool:\n{log}"
    );
}

#[test]
fn a_failed_bind_exits_1_and_leaves_no_spool_behind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let address = taken.local_addr().expect("local address");
    let dir = tempfile::tempdir().expect("temp dir");
    let spool = dir.path().join("spool");
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "hostname = \"sluice.test\"\n[spool]\npath = \"{}\"\n\
             [[listener]]\naddress = \"{address}\"\n[admin]\naddress = \"127.0.0.1:0\"\n",
            spool.display()
        ),
    )
    .expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .expect("run sluice serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "exit status; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("cannot listen on {address}")),
        "stderr does not name the address:\n{stderr}"
    );
    assert!(
        !spool.exists(),
        "a start that could not listen created the spool {}",
        spool.display()
    );
}
