//! The interface contract (/work/shared/DESIGN.md) clause by clause, for the
//! clauses no other test file pins down: CLI forms and exit codes,
//! `SLUICE_CONFIG` and `--config`, embedded defaults, the documented config
//! keys, the exact EHLO keyword list, and the delivery outcome log line.
//! Everything runs the real binary on loopback, each test in its own
//! temporary directory.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod destination;
    pub mod server;
    pub mod smtp;
    pub mod spool;
    pub use {server::*, smtp::*};
}

use std::path::Path;

use common::destination::{Destination, Options};
use common::spool::enqueue_offline;
use common::{DEADLINE, NO_DELIVERY, Sluice, SmtpClient, config_text, field, queue_id, wait_for};

/// An argon2id PHC hash (of "pw") for configs with a `[[user]]`.
const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$4cYoOKWeX7KncVmUYDcGLQ$Ibxani10KQs/tI7K6KRKUxVRJw7csoR+L/ZbR2fUkyM";

/// Runs `sluice <args>` in `cwd` with `SLUICE_CONFIG` set to `env_config`
/// (or removed); returns (exit code, stdout, stderr).
fn run_in(cwd: &Path, env_config: Option<&Path>, args: &[&str]) -> (i32, String, String) {
    common::run(None, |command| {
        command.args(args).current_dir(cwd).env("NO_COLOR", "1");
        if let Some(path) = env_config {
            command.env("SLUICE_CONFIG", path);
        }
    })
}

/// `run_in` a fresh temp dir without `SLUICE_CONFIG`.
fn run(args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    run_in(dir.path(), None, args)
}

/// The effective config printed by check-config, without its comment header.
fn effective(stdout: &str) -> toml::Table {
    stdout.parse().expect("check-config prints TOML")
}

#[test]
fn check_config_prints_an_effective_config_that_checks_again_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.toml");
    std::fs::write(&first, "hostname = \"mx.example.org\"\n").unwrap();
    let (code, printed, stderr) = run(&["check-config", "--config", first.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    // Every default the contract names is in the effective config.
    for line in [
        "hostname = \"mx.example.org\"",
        "path = \"./spool\"",
        "min_free = \"auto\"",
        "address = \"127.0.0.1:2525\"",
        "kind = \"relay\"",
        "max_message_size = \"35MiB\"",
        "max_recipients = 100",
        "max_connections = 1000",
        "max_connections_per_ip = 50",
        "command_timeout = \"5m\"",
        "data_timeout = \"10m\"",
        "relay_networks = [\"127.0.0.0/8\", \"::1/128\"]",
        "port = 25",
        "tls = \"opportunistic\"",
        "concurrency = 100",
        "per_domain_concurrency = 10",
        "retry_initial = \"1m\"",
        "retry_max = \"1h\"",
        "retry_factor = 2.0",
        "connect_timeout = \"30s\"",
        "address = \"127.0.0.1:8025\"",
        "format = \"text\"",
        "level = \"info\"",
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "{line:?} missing:\n{printed}"
        );
    }
    let second = dir.path().join("second.toml");
    std::fs::write(&second, &printed).unwrap();
    let (code, again, stderr) = run(&["check-config", "--config", second.to_str().unwrap()]);
    assert_eq!(code, 0, "the printed config must parse again: {stderr}");
    assert_eq!(effective(&again), effective(&printed));
}

#[test]
fn without_a_config_file_the_embedded_defaults_are_used() {
    if Path::new("/etc/sluice/sluice.toml").exists() {
        eprintln!("/etc/sluice/sluice.toml exists; the embedded defaults are not in use");
        return;
    }
    let (code, stdout, stderr) = run(&["check-config"]);
    assert_eq!(code, 0, "{stderr}");
    let config = effective(&stdout);
    let listener = &config["listener"].as_array().expect("[[listener]]")[0];
    assert_eq!(listener["address"].as_str(), Some("127.0.0.1:2525"));
    assert_eq!(listener["kind"].as_str(), Some("relay"));
    assert_eq!(config["spool"]["path"].as_str(), Some("./spool"));
    assert_eq!(config["admin"]["address"].as_str(), Some("127.0.0.1:8025"));
    assert_eq!(config["delivery"]["port"].as_integer(), Some(25));
    let networks: Vec<&str> = config["policy"]["relay_networks"]
        .as_array()
        .expect("relay_networks")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(networks, ["127.0.0.0/8", "::1/128"]);
}

/// The configuration block of DESIGN.md, verbatim except for a real hash.
const DESIGN_CONFIG: &str = r#"
hostname = "mx.example.org"            # greeting, EHLO, Received, bounces

[spool]
path = "./spool"

[[listener]]
address = "127.0.0.1:2525"
kind = "relay"          # relay (port-25 style) | submission (STARTTLS + AUTH required) | submissions (implicit TLS, AUTH required)

[tls]                   # inbound certificate; STARTTLS is offered when present
certificate = "conf/tls/cert.pem"
private_key = "conf/tls/key.pem"

[limits]
max_message_size = "35MiB"
max_recipients = 100
max_connections = 1000
max_connections_per_ip = 50
command_timeout = "5m"
data_timeout = "10m"

[policy]
relay_networks = ["127.0.0.0/8", "::1/128"]  # may relay to any domain without AUTH
accept_domains = ["example.org"]             # anyone may send to these domains

[[user]]                # AUTH PLAIN/LOGIN accounts; password is a PHC hash (argon2id)
name = "app"
password_hash = "HASH"

[delivery]
port = 25               # remote SMTP port (tests point it elsewhere)
tls = "opportunistic"   # opportunistic | required | disabled
concurrency = 100       # deliveries in flight in total
per_domain_concurrency = 10
retry_initial = "1m"
retry_max = "1h"
retry_factor = 2.0
max_queue_lifetime = "5d"
connect_timeout = "30s"
tls_ca = "conf/tls/ca.pem"   # extra CA for verifying remote servers (tests use it)
relay_host = "smtp.provider.example:587"   # optional smarthost: all mail goes there
relay_auth = { username = "u", password = "p" }

[tls_policy]            # per-destination-domain override of delivery.tls
"bank.example" = "required"

[dns]
nameservers = ["127.0.0.1:5353"]   # default: the system resolver configuration

[routes]                # static next hops by recipient domain, before MX; "*" catches all
"example.test" = "127.0.0.1:2526"

[admin]
address = "127.0.0.1:8025"
token = "…"            # bearer token; required when address is not loopback

[log]
format = "text"        # text | json
level = "info"
"#;

#[test]
fn every_documented_config_key_is_accepted_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("design.toml");
    std::fs::write(&path, DESIGN_CONFIG.replace("HASH", HASH)).unwrap();
    // check-config loads the files it names, as a start would: the example's
    // relative conf/tls/ files are made in the directory it runs in.
    let tls = dir.path().join("conf/tls");
    std::fs::create_dir_all(&tls).unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["mx.example.org".into()]).unwrap();
    std::fs::write(tls.join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(tls.join("ca.pem"), certified.cert.pem()).unwrap();
    common::server::write_private(tls.join("key.pem"), certified.key_pair.serialize_pem()).unwrap();
    let (code, stdout, stderr) = run_in(
        dir.path(),
        None,
        &["check-config", "--config", path.to_str().unwrap()],
    );
    assert_eq!(code, 0, "DESIGN.md's example config is rejected: {stderr}");
    let printed = effective(&stdout);
    // Every value is printed as written ("5d" stays "5d"), except the
    // secrets, which are redacted.
    let written: toml::Table = DESIGN_CONFIG
        .replace("HASH", "<redacted>")
        .replace("password = \"p\"", "password = \"<redacted>\"")
        .replace("token = \"…\"", "token = \"<redacted>\"")
        .parse()
        .unwrap();
    for (table, value) in &written {
        let Some(inner) = value.as_table() else {
            assert_eq!(printed.get(table), Some(value), "{table}");
            continue;
        };
        for (key, value) in inner {
            let shown = printed[table].get(key);
            assert_eq!(shown, Some(value), "{table}.{key}:\n{stdout}");
        }
    }
    for array in ["listener", "user"] {
        assert_eq!(
            printed.get(array),
            written.get(array),
            "[[{array}]]:\n{stdout}"
        );
    }
}

#[test]
fn sluice_config_env_is_the_config_flag() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("env.toml");
    std::fs::write(
        &path,
        format!(
            "hostname = \"env.example\"\n[spool]\npath = \"{}\"\n",
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = run_in(dir.path(), Some(&path), &["check-config"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("hostname = \"env.example\""), "{stdout}");
    assert!(stdout.contains(&path.display().to_string()), "{stdout}");
    // The flag wins over the environment.
    let other = dir.path().join("other.toml");
    std::fs::write(&other, "hostname = \"flag.example\"\n").unwrap();
    let (code, stdout, _) = run_in(
        dir.path(),
        Some(&path),
        &["check-config", "--config", other.to_str().unwrap()],
    );
    assert_eq!(code, 0);
    assert!(stdout.contains("hostname = \"flag.example\""), "{stdout}");
    // A missing file named by the environment is an error, like the flag.
    let (code, _, stderr) = run_in(
        dir.path(),
        Some(&dir.path().join("absent.toml")),
        &["check-config"],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("absent.toml"), "{stderr}");
    // `sluice queue` reads it too (offline: no server, empty spool).
    let (code, stdout, stderr) = run_in(dir.path(), Some(&path), &["queue", "list", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "[]");
}

#[test]
fn every_subcommand_accepts_config_before_or_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "hostname = \"c.example\"\n[spool]\npath = \"{}\"\n[admin]\naddress = \"127.0.0.1:1\"\n",
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let config = path.to_str().unwrap();
    for args in [
        &["check-config", "--config", config][..],
        &["--config", config, "check-config"],
        &["queue", "list", "--config", config],
        &["queue", "--config", config, "list"],
        &["--config", config, "queue", "list", "--json"],
        &["queue", "retry", "--all", "--config", config],
        &["queue", "delete", "--all", "--config", config],
    ] {
        let (code, _, stderr) = run(args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
    }
    for args in [
        &["queue", "show", "NoSuchId1", "--config", config][..],
        &["queue", "hold", "NoSuchId1", "--config", config],
        &["queue", "release", "NoSuchId1", "--config", config],
        &["queue", "bounce", "NoSuchId1", "--config", config],
    ] {
        let (code, _, stderr) = run(args);
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert!(stderr.contains("no such message"), "{args:?}: {stderr}");
    }
    // hash-password takes --config too (and needs no config at all).
    let (code, stdout, _) = common::run(Some(b"pw\n"), |command| {
        command.args(["hash-password", "--config", config]);
    });
    assert_eq!(code, 0);
    assert!(stdout.starts_with("$argon2id$"));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["queue"],
        &["queue", "show"],
        &["queue", "hold"],
        &["queue", "release"],
        &["queue", "bounce"],
        &["queue", "list", "extra"],
        &["queue", "frob"],
        &["serve", "--no-such-flag"],
        &["check-config", "--config"],
    ] {
        let (code, _, stderr) = run(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains("--help"), "{args:?}: {stderr}");
    }
}

#[test]
fn help_and_version_exit_0_and_list_every_command() {
    let (code, stdout, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for command in [
        "serve",
        "check-config",
        "hash-password",
        "queue",
        "--config",
    ] {
        assert!(stdout.contains(command), "--help lacks {command}: {stdout}");
    }
    let (code, stdout, _) = run(&["queue", "--help"]);
    assert_eq!(code, 0);
    for command in [
        "list", "show", "retry", "hold", "release", "delete", "bounce",
    ] {
        assert!(stdout.contains(command), "queue --help lacks {command}");
    }
    let (code, stdout, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("sluice "), "{stdout}");
}

#[test]
fn runtime_errors_exit_1_with_one_sluice_prefixed_line_naming_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let (code, _, stderr) = run(&["serve", "--config", missing.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        format!(
            "sluice: cannot read config file {}: No such file or directory (os error 2)\n",
            missing.display()
        )
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[limits]\nmax_recipients = \"many\"\n").unwrap();
    for command in ["serve", "check-config"] {
        let (code, _, stderr) = run(&[command, "--config", bad.to_str().unwrap()]);
        assert_eq!(code, 1, "{command}");
        assert!(stderr.starts_with("sluice: "), "{command}: {stderr}");
        assert!(stderr.contains("bad.toml"), "{command}: {stderr}");
        assert!(stderr.contains("max_recipients"), "{command}: {stderr}");
    }

    // A listener that cannot be bound: the address is named.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = busy.local_addr().unwrap().to_string();
    let text = format!(
        "[spool]\npath = \"{}\"\n[[listener]]\naddress = \"{taken}\"\nkind = \"relay\"\n\
         [admin]\naddress = \"127.0.0.1:0\"\n",
        dir.path().join("spool").display()
    );
    let config = dir.path().join("busy.toml");
    std::fs::write(&config, text).unwrap();
    let (code, _, stderr) = run(&["serve", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1);
    let last = stderr.lines().last().unwrap_or("");
    assert!(last.starts_with("sluice: "), "{stderr}");
    assert!(last.contains(&taken), "{stderr}");
}

/// DESIGN.md "Reload": check-config loads certificate and key files too,
/// so it fails exactly where a reload or a start would (exit 1, naming the
/// config file, the key and the file).
#[test]
fn check_config_fails_on_certificate_files_it_cannot_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tls.toml");
    for (text, key, file) in [
        (
            "[tls]\ncertificate = \"/nonexistent/cert.pem\"\nprivate_key = \"/nonexistent/key.pem\"\n",
            "tls.certificate",
            "/nonexistent/cert.pem",
        ),
        (
            "[delivery]\ntls_ca = \"/nonexistent/ca.pem\"\n",
            "delivery.tls_ca",
            "/nonexistent/ca.pem",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let (code, _, stderr) = run(&["check-config", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.starts_with("sluice: ")
                && stderr.contains("tls.toml")
                && stderr.contains(key)
                && stderr.contains(file),
            "the error names the config file, {key} and {file}: {stderr}"
        );
    }
}

/// The EHLO keywords after the host name line.
fn ehlo_keywords(client: &mut SmtpClient) -> Vec<String> {
    let reply = client.expect("EHLO client.test", "250");
    reply
        .lines()
        .skip(1)
        .map(|line| line[4..].to_string())
        .collect()
}

#[test]
fn ehlo_lists_exactly_the_documented_keywords_with_the_default_size() {
    let server = Sluice::start(NO_DELIVERY);
    let mut client = SmtpClient::connect(server.smtp);
    assert_eq!(client.read_reply(), "220 sluice.test ESMTP sluice");
    assert_eq!(
        ehlo_keywords(&mut client),
        [
            "PIPELINING",
            "SIZE 36700160",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            // DESIGN.md "Sender notifications": EHLO advertises DSN.
            "DSN"
        ]
    );
}

#[test]
fn ehlo_offers_starttls_but_not_auth_before_tls() {
    let dir = tempfile::tempdir().unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    common::server::write_private(&key, generated.key_pair.serialize_pem()).unwrap();
    let text = config_text(
        dir.path(),
        "",
        &format!(
            "[tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n\
             [[user]]\nname = \"app\"\npassword_hash = \"{HASH}\"\n{NO_DELIVERY}",
            cert.display(),
            key.display()
        ),
    );
    let server = Sluice::start_with(dir, &text);
    let mut client = server.connect();
    let keywords = ehlo_keywords(&mut client);
    assert_eq!(
        keywords,
        [
            "PIPELINING",
            "SIZE 36700160",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "DSN",
            "STARTTLS"
        ]
    );
    client.expect("AUTH PLAIN AGFwcABwdw==", "538 5.7.11");
}

#[test]
fn helo_is_answered_with_the_hostname() {
    // RFC 2034 §3 exempts the greeting and HELO/EHLO replies from enhanced codes.
    let server = Sluice::start("");
    let mut client = server.connect();
    assert_eq!(client.command("HELO client.test"), "250 sluice.test");
    client.expect("MAIL FROM:<a@example.org>", "250 2.1.0");
}

#[test]
fn delivery_outcome_is_one_log_line_and_the_message_leaves_the_queue() {
    let destination = Destination::start(Options::default());
    let dir = tempfile::tempdir().unwrap();
    let id = enqueue_offline(
        &dir.path().join("spool"),
        "alice@origin.test",
        &["bob@dest.test"],
        b"Subject: contract\r\n\r\nbody\r\n",
    );
    let text = config_text(
        dir.path(),
        "",
        &format!("[routes]\n\"*\" = \"{}\"\n", destination.addr),
    );
    let sluice = Sluice::start_with(dir, &text);
    let line = sluice.wait_log(&[&format!("queue_id={id}"), "status=sent"]);
    assert_eq!(field(&line, "recipient"), "bob@dest.test", "{line}");
    assert!(
        field(&line, "relay").contains(&destination.addr.port().to_string()),
        "relay host named: {line}"
    );
    let delay: f64 = field(&line, "delay").parse().expect("delay in seconds");
    assert!((0.0..60.0).contains(&delay), "{line}");
    assert!(field(&line, "reply").starts_with("250"), "{line}");
    let (code, _, stderr) = wait_for("the message to leave the queue", DEADLINE, || {
        let result = sluice.cli(&["queue", "show", &id]);
        (result.0 == 1).then_some(result)
    });
    assert_eq!(code, 1);
    assert!(stderr.contains("no such message"), "{stderr}");
}

#[test]
fn queued_as_reply_names_the_id_that_queue_show_knows() {
    let server = Sluice::start(NO_DELIVERY);
    let mut client = server.connect();
    client.expect("EHLO client.test", "250");
    client.expect("MAIL FROM:<a@example.org>", "250 2.1.0 Ok");
    client.expect("RCPT TO:<b@example.net>", "250 2.1.5 Ok");
    client.expect("DATA", "354 ");
    client.send_raw(b"Subject: x\r\n\r\nx\r\n.\r\n");
    let reply = client.read_reply();
    let id = queue_id(&reply).unwrap_or_else(|| panic!("{reply:?}"));
    assert_eq!(reply, format!("250 2.0.0 Ok: queued as {id}"));
    let (code, stdout, stderr) = server.cli(&["queue", "show", &id, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let shown: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["sender"], "a@example.org");
    assert_eq!(shown["recipients"][0]["address"], "b@example.net");
}

#[test]
fn operator_bounce_of_a_null_sender_message_sends_nothing() {
    let destination = Destination::start(Options::default());
    destination.on_rcpt(|_, _| Some("451 4.3.0 try later".into()));
    let dir = tempfile::tempdir().unwrap();
    let id = enqueue_offline(
        &dir.path().join("spool"),
        "",
        &["bob@dest.test"],
        b"Subject: a bounce\r\n\r\nbody\r\n",
    );
    let text = config_text(
        dir.path(),
        "",
        &format!(
            "[delivery]\nretry_initial = \"1h\"\n[routes]\n\"*\" = \"{}\"\n",
            destination.addr
        ),
    );
    let sluice = Sluice::start_with(dir, &text);
    sluice.wait_log(&[&format!("queue_id={id}"), "status=deferred"]);
    let (code, _, stderr) = sluice.cli(&["queue", "bounce", &id]);
    assert_eq!(code, 0, "{stderr}");
    sluice.wait_log(&[&format!("queue_id={id}"), "null sender"]);
    wait_for("the bounced message to leave the queue", DEADLINE, || {
        (sluice.cli(&["queue", "show", &id]).0 == 1).then_some(())
    });
    // A DSN would be queued durably before the bounce returns, and stay
    // deferred (the destination answers 451): the queue must be empty.
    let (code, stdout, stderr) = sluice.cli(&["queue", "list", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "[]", "nothing may be bounced to <>");
    assert!(
        destination
            .transactions()
            .iter()
            .all(|t| !t.mail_from.is_empty()),
        "nothing may be bounced to <>: {:?}",
        destination.transactions()
    );
}
