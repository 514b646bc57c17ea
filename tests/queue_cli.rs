//! `sluice queue` against a running server (through the admin API) and
//! offline (on the spool), with the same results.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod admin;
    pub mod destination;
    pub mod server;
    pub mod smtp;
    pub mod spool;
    pub use {server::*, smtp::*};
}

use std::path::{Path, PathBuf};

use common::admin::{assert_message_shape, http};
use common::destination::{Sink, SinkMode};
use common::spool::{Seed, fill, fill_many_held, open_spool};
use common::{DEADLINE, Sluice, cli, cli_ok, routed_config_text, wait_for, write_config};
use serde_json::Value;

/// A spool in a temp dir pre-filled with `seeds`, and its config (all mail
/// routed to `sink`); no server yet.
fn offline(seeds: &[Seed], sink: &Sink) -> (tempfile::TempDir, PathBuf, Vec<String>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = fill(&dir.path().join("spool"), seeds);
    let config = write_config(
        dir.path(),
        &routed_config_text(dir.path(), sink.address, "", ""),
    );
    (dir, config, ids)
}

fn online(seeds: &[Seed], sink: &Sink) -> (Sluice, Vec<String>) {
    let (dir, config, ids) = offline(seeds, sink);
    let text = std::fs::read_to_string(config).expect("config");
    (Sluice::start_with(dir, &text), ids)
}

fn show_json(config: &Path, id: &str) -> Value {
    let text = cli_ok(config, &["queue", "show", id, "--json"]);
    let value: Value = serde_json::from_str(&text).expect("show --json is JSON");
    assert_message_shape(&value);
    value
}

fn list_json(config: &Path) -> Vec<Value> {
    let text = cli_ok(config, &["queue", "list", "--json"]);
    let value: Value = serde_json::from_str(&text).expect("list --json is JSON");
    let list = value.as_array().expect("list --json is an array").clone();
    for message in &list {
        assert_message_shape(message);
    }
    list
}

fn four_messages() -> Vec<Seed<'static>> {
    vec![
        Seed {
            sender: "alice@example.org",
            recipients: &["bob@example.net", "carol@example.com"],
            held: false,
        },
        Seed {
            sender: "dave@example.org",
            recipients: &["erin@example.net"],
            held: true,
        },
        Seed {
            sender: "",
            recipients: &["frank@example.org"],
            held: true,
        },
        Seed {
            sender: "grace@example.org",
            recipients: &["heidi@example.net"],
            held: false,
        },
    ]
}

/// Runs every command against `config` (a running server or the bare
/// spool) and checks each effect with `show --json` / `list --json`.
fn every_command(config: &Path, ids: &[String]) {
    let table = cli_ok(config, &["queue", "list"]);
    for id in ids {
        assert!(table.contains(id.as_str()), "{id} listed: {table}");
    }
    assert!(
        table.contains(&format!("{}!", ids[1])),
        "held mark: {table}"
    );
    assert!(!table.contains(&format!("{}!", ids[0])), "{table}");
    assert!(
        table.contains("alice@example.org") && table.contains("<>"),
        "{table}"
    );
    assert!(table.contains("carol@example.com"), "recipients: {table}");
    assert!(table.contains("in 4 messages"), "summary: {table}");
    assert_eq!(list_json(config).len(), 4);

    let text = cli_ok(config, &["queue", "show", &ids[0]]);
    assert!(
        text.contains(&ids[0]) && text.contains("bob@example.net"),
        "{text}"
    );
    assert_eq!(show_json(config, &ids[0])["sender"], "alice@example.org");

    cli_ok(config, &["queue", "hold", &ids[0]]);
    assert_eq!(show_json(config, &ids[0])["held"], true);
    cli_ok(config, &["queue", "release", &ids[0]]);
    assert_eq!(show_json(config, &ids[0])["held"], false);

    cli_ok(config, &["queue", "retry", &ids[3]]);
    let (code, _, stderr) = cli(config, &["queue", "retry", &ids[1]]);
    assert_eq!(code, 1, "retry of a held message is refused: {stderr}");
    assert!(stderr.contains("held"), "{stderr}");
    let text = cli_ok(config, &["queue", "retry", "--all"]);
    assert!(text.contains("due now"), "{text}");

    cli_ok(config, &["queue", "delete", &ids[2]]);
    let (code, _, stderr) = cli(config, &["queue", "show", &ids[2]]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no such message"), "{stderr}");

    // Bounce: the message leaves the queue, and a DSN to dave@ is queued or
    // delivered (the caller checks where it went).
    let text = cli_ok(config, &["queue", "bounce", &ids[1]]);
    assert!(text.contains("bounced"), "{text}");
    let (code, _, _) = cli(config, &["queue", "show", &ids[1]]);
    assert_eq!(code, 1, "a bounced message leaves the queue");
}

#[test]
fn every_command_works_against_a_running_server() {
    let sink = Sink::start(SinkMode::TempFail);
    let (sluice, ids) = online(&four_messages(), &sink);
    let config = sluice.config_path.clone();
    every_command(&config, &ids);
    // The server did the work (the spool is its own): it logged each action.
    for (id, action) in [
        (&ids[0], "hold"),
        (&ids[0], "release"),
        (&ids[3], "retry"),
        (&ids[2], "delete"),
        (&ids[1], "bounce"),
    ] {
        sluice.wait_log(&[&format!("queue_id={id}"), &format!("action={action}")]);
    }
    // The DSN for dave@ is in the queue (the sink defers everything).
    let dsn = wait_for("the DSN in the queue", DEADLINE, || {
        list_json(&config).into_iter().find(|message| {
            message["sender"] == "" && message["recipients"][0]["address"] == "dave@example.org"
        })
    });
    assert_message_shape(&dsn);
    let text = cli_ok(&config, &["queue", "delete", "--all"]);
    assert!(text.contains("deleted"), "{text}");
    assert_eq!(cli_ok(&config, &["queue", "list"]), "Mail queue is empty\n");
    assert_eq!(cli_ok(&config, &["queue", "list", "--json"]), "[]\n");
}

#[test]
fn every_command_works_offline_on_the_spool() {
    let sink = Sink::start(SinkMode::Accept);
    let (dir, config, ids) = offline(&four_messages(), &sink);
    every_command(&config, &ids);
    let dsn = list_json(&config)
        .into_iter()
        .find(|message| {
            message["sender"] == "" && message["recipients"][0]["address"] == "dave@example.org"
        })
        .expect("offline bounce queues the DSN to the sender");
    assert_message_shape(&dsn);
    let text = cli_ok(&config, &["queue", "delete", "--all"]);
    assert!(text.contains("deleted"), "{text}");
    assert_eq!(cli_ok(&config, &["queue", "list", "--json"]), "[]\n");
    assert!(
        sink.messages().is_empty(),
        "offline commands deliver nothing"
    );
    drop(dir);
}

#[test]
fn unknown_id_exits_1_with_no_such_message_online_and_offline() {
    let sink = Sink::start(SinkMode::TempFail);
    let (dir, config, _) = offline(&four_messages()[..1], &sink);
    let check = |config: &Path| {
        for args in [
            &["show", "NoSuchId1"][..],
            &["show", "NoSuchId1", "--json"],
            &["hold", "NoSuchId1"],
            &["release", "NoSuchId1"],
            &["retry", "NoSuchId1"],
            &["delete", "NoSuchId1"],
            &["bounce", "NoSuchId1"],
            &["show", "not-an-id"],
        ] {
            let mut argv = vec!["queue"];
            argv.extend_from_slice(args);
            let (code, stdout, stderr) = cli(config, &argv);
            assert_eq!(code, 1, "{argv:?}: {stdout}{stderr}");
            assert!(stderr.contains("no such message"), "{argv:?}: {stderr}");
        }
    };
    check(&config);
    let text = std::fs::read_to_string(&config).expect("config");
    let sluice = Sluice::start_with(dir, &text);
    check(&sluice.config_path);
}

#[test]
fn all_with_an_id_or_neither_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = Sink::start(SinkMode::TempFail);
    let config = write_config(
        dir.path(),
        &routed_config_text(dir.path(), sink.address, "", ""),
    );
    for args in [
        &["queue", "retry", "ABC", "--all"][..],
        &["queue", "delete", "ABC", "--all"],
        &["queue", "retry"],
        &["queue", "delete"],
        &["queue", "show"],
        // DESIGN.md second wave: `hold --all` is valid; IDs and filters,
        // or --all and filters, do not mix.
        &["queue", "hold"],
        &["queue", "hold", "ABC", "--domain", "example.net"],
        &["queue", "bounce", "--all", "--sender", "a@example.org"],
        &["queue", "delete", "--older-than", "soon"],
        &["queue", "cat"],
        &["queue", "frobnicate"],
    ] {
        let (code, _, stderr) = cli(&config, args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
    }
    assert!(
        !dir.path().join("spool").exists(),
        "usage errors touch nothing"
    );
}

#[test]
fn json_is_identical_through_the_api_and_offline() {
    let sink = Sink::start(SinkMode::TempFail);
    let seeds: Vec<Seed> = four_messages()
        .into_iter()
        .map(|seed| Seed { held: true, ..seed })
        .collect();
    let (dir, config, ids) = offline(&seeds, &sink);
    let list_offline = cli_ok(&config, &["queue", "list", "--json"]);
    let show_offline = cli_ok(&config, &["queue", "show", &ids[0], "--json"]);
    let table_offline = cli_ok(&config, &["queue", "list"]);
    let text = std::fs::read_to_string(&config).expect("config");
    let sluice = Sluice::start_with(dir, &text);
    let list_online = cli_ok(&sluice.config_path, &["queue", "list", "--json"]);
    assert_eq!(list_online, list_offline);
    assert_eq!(
        http("GET", sluice.admin, "/v1/queue", None).body,
        list_offline
    );
    assert_eq!(
        cli_ok(&sluice.config_path, &["queue", "show", &ids[0], "--json"]),
        show_offline
    );
    let table_online = cli_ok(&sluice.config_path, &["queue", "list"]);
    // Ages may tick between the two runs; compare all but the age column.
    let is_age = |word: &str| {
        word.len() > 1
            && word.ends_with(['s', 'm', 'h', 'd'])
            && word[..word.len() - 1].bytes().all(|b| b.is_ascii_digit())
    };
    let strip = |table: &str| -> Vec<String> {
        table
            .lines()
            .map(|line| {
                line.split_whitespace()
                    .filter(|word| !is_age(word))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    };
    assert_eq!(strip(&table_online), strip(&table_offline));
}

#[test]
fn a_spool_held_by_a_process_whose_api_does_not_answer_is_left_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = Sink::start(SinkMode::TempFail);
    let spool = dir.path().join("spool");
    let ids = fill(
        &spool,
        &[Seed {
            sender: "a@example.org",
            recipients: &["b@example.net"],
            held: false,
        }],
    );
    let config = write_config(
        dir.path(),
        &routed_config_text(dir.path(), sink.address, "", ""),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // This test process holds the spool, as a hung server would.
    let queue = runtime.block_on(async { open_spool(&spool) });
    let (code, _, stderr) = cli(&config, &["queue", "list"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("in use") && stderr.contains("does not answer"),
        "{stderr}"
    );
    // The admin socket that does not answer is named.
    let (code, _, stderr) = cli(&config, &["queue", "delete", &ids[0]]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("admin.sock"), "{stderr}");
    let id = sluice_queue::QueueId::parse(&ids[0]).expect("id");
    assert!(
        queue.get(&id).expect("read the spool").is_some(),
        "the message is untouched"
    );
    runtime.block_on(queue.close()).expect("close");
}

#[test]
fn hold_prevents_delivery_until_release() {
    let sink = Sink::start(SinkMode::Accept);
    let (sluice, ids) = online(
        &[
            Seed {
                sender: "a@example.org",
                recipients: &["parked@example.net"],
                held: true,
            },
            Seed {
                sender: "a@example.org",
                recipients: &["control@example.net"],
                held: false,
            },
        ],
        &sink,
    );
    let config = sluice.config_path.clone();
    // The unheld message goes: the scheduler ran and passed the held one by.
    wait_for("the control message at the sink", DEADLINE, || {
        sink.got_mail_for("control@example.net").then_some(())
    });
    wait_for("the control message to leave the queue", DEADLINE, || {
        (list_json(&config).len() == 1).then_some(())
    });
    assert!(
        !sink.got_mail_for("parked@example.net"),
        "a held message was delivered"
    );
    let parked = show_json(&config, &ids[0]);
    assert_eq!(parked["held"], true);
    assert_eq!(parked["recipients"][0]["status"], "pending");
    assert_eq!(parked["recipients"][0]["attempts"], 0);

    cli_ok(&config, &["queue", "release", &ids[0]]);
    wait_for("the released message at the sink", DEADLINE, || {
        sink.got_mail_for("parked@example.net").then_some(())
    });
    wait_for("the released message to leave the queue", DEADLINE, || {
        (cli(&config, &["queue", "show", &ids[0]]).0 == 1).then_some(())
    });
}

#[test]
fn retry_makes_a_deferred_message_due_now() {
    let sink = Sink::start(SinkMode::TempFail);
    let (sluice, ids) = online(
        &[Seed {
            sender: "a@example.org",
            recipients: &["later@example.net"],
            held: false,
        }],
        &sink,
    );
    let config = sluice.config_path.clone();
    let deferred = wait_for("the first attempt to defer", DEADLINE, || {
        let message = show_json(&config, &ids[0]);
        (message["recipients"][0]["status"] == "deferred").then_some(message)
    });
    let recipient = &deferred["recipients"][0];
    assert!(recipient["attempts"].as_u64() >= Some(1), "{deferred}");
    assert!(recipient["next_attempt_at"].is_string(), "{deferred}");
    assert!(
        recipient["last_reply"]
            .as_str()
            .is_some_and(|reply| reply.contains("451")),
        "{deferred}"
    );
    let table = cli_ok(&config, &["queue", "list"]);
    assert!(
        table.contains("deferred") && table.contains("451"),
        "{table}"
    );

    // retry_initial is 1h: only `queue retry` can bring it back in time.
    sink.set_mode(SinkMode::Accept);
    cli_ok(&config, &["queue", "retry", &ids[0]]);
    wait_for("the retried message at the sink", DEADLINE, || {
        sink.got_mail_for("later@example.net").then_some(())
    });
}

#[test]
fn bounce_sends_the_dsn_to_the_sender() {
    let sink = Sink::start(SinkMode::Accept);
    let (sluice, ids) = online(
        &[Seed {
            sender: "alice@example.org",
            recipients: &["bob@example.net"],
            held: true,
        }],
        &sink,
    );
    let config = sluice.config_path.clone();
    let text = cli_ok(&config, &["queue", "bounce", &ids[0]]);
    assert!(text.contains("alice@example.org"), "{text}");
    let dsn = wait_for("the DSN at the sink", DEADLINE, || {
        sink.messages()
            .into_iter()
            .find(|message| message.to == ["alice@example.org"])
    });
    assert_eq!(dsn.from, "", "a DSN has the null sender");
    assert!(
        dsn.data.to_ascii_lowercase().contains("multipart/report"),
        "{}",
        dsn.data
    );
    assert!(!sink.got_mail_for("bob@example.net"));
    assert_eq!(cli(&config, &["queue", "show", &ids[0]]).0, 1);
}

#[test]
fn list_of_a_big_queue_streams_every_message() {
    let sink = Sink::start(SinkMode::TempFail);
    const COUNT: usize = 3000;
    let dir = tempfile::tempdir().expect("temp dir");
    let ids = fill_many_held(&dir.path().join("spool"), COUNT);
    let config = write_config(
        dir.path(),
        &routed_config_text(dir.path(), sink.address, "", ""),
    );
    let table = cli_ok(&config, &["queue", "list"]);
    assert!(
        table.ends_with(&format!("in {COUNT} messages\n")),
        "{}",
        &table[table.len().saturating_sub(200)..]
    );
    let text = std::fs::read_to_string(&config).expect("config");
    let sluice = Sluice::start_with(dir, &text);
    let table = cli_ok(&sluice.config_path, &["queue", "list"]);
    assert!(table.ends_with(&format!("in {COUNT} messages\n")));
    let list = list_json(&sluice.config_path);
    let listed: Vec<&str> = list.iter().map(|m| m["id"].as_str().expect("id")).collect();
    assert_eq!(listed, ids);
}

#[test]
fn show_lists_the_attempt_history_online_and_offline() {
    let sink = Sink::start(SinkMode::TempFail);
    let (mut sluice, ids) = online(
        &[Seed {
            sender: "a@example.org",
            recipients: &["later@example.net"],
            held: false,
        }],
        &sink,
    );
    let config = sluice.config_path.clone();
    wait_for("the first attempt to defer", DEADLINE, || {
        let message = show_json(&config, &ids[0]);
        (message["recipients"][0]["attempts"] == 1).then_some(())
    });
    cli_ok(&config, &["queue", "retry", &ids[0]]);
    let message = wait_for("the second attempt to defer", DEADLINE, || {
        let message = show_json(&config, &ids[0]);
        (message["recipients"][0]["attempts"] == 2).then_some(message)
    });
    let log = message["recipients"][0]["attempts_log"]
        .as_array()
        .unwrap_or_else(|| panic!("show --json has an attempts_log: {message}"))
        .clone();
    assert_eq!(log.len(), 2, "one entry per attempt: {message}");
    let port = format!(":{}", sink.address.port());
    for attempt in &log {
        let relay = attempt["relay"].as_str().unwrap_or("");
        assert!(
            relay.contains("127.0.0.1") && relay.ends_with(&port),
            "relay host[address]:port: {attempt}"
        );
        assert_eq!(attempt["tls"], "plaintext", "{attempt}");
        assert!(
            attempt["reply"]
                .as_str()
                .is_some_and(|r| r.starts_with("451")),
            "{attempt}"
        );
    }
    assert!(
        log[0]["time"].as_str() <= log[1]["time"].as_str(),
        "oldest first"
    );
    let text = cli_ok(&config, &["queue", "show", &ids[0]]);
    assert!(
        text.contains("history:") && text.matches(" plaintext  451").count() == 2,
        "{text}"
    );
    // Listings stay lean: the history is only in `show`.
    let list = list_json(&config);
    assert!(
        list[0]["recipients"][0].get("attempts_log").is_none(),
        "{list:?}"
    );

    // Stored with the message: the spool alone shows it.
    sluice.terminate();
    let offline = show_json(&config, &ids[0]);
    assert_eq!(offline["recipients"][0]["attempts_log"], Value::Array(log));
}

/// Runs `sluice queue <args>` with `stdin`; returns (exit code, stdout, stderr).
fn cli_stdin(config: &Path, args: &[&str], stdin: &str) -> (i32, String, String) {
    common::run(Some(stdin.as_bytes()), |command| {
        command.arg("queue").args(args).arg("--config").arg(config);
    })
}

fn held(config: &Path, id: &str) -> bool {
    show_json(config, id)["held"] == true
}

/// The bulk forms on [`four_messages`], through whatever `config` reaches.
fn bulk_actions(config: &Path, ids: &[String]) {
    let q = |args: &[&str]| {
        let mut argv = vec!["queue"];
        argv.extend_from_slice(args);
        cli_ok(config, &argv)
    };
    // `list --older-than`: every message is at least 0 s old, none a day.
    let listed = q(&["list", "--older-than", "0s"]);
    assert!(
        ids.iter().all(|id| listed.contains(id.as_str())),
        "{listed}"
    );
    assert_eq!(
        q(&["list", "--older-than", "1d"]),
        "No queued message matches the filter\n"
    );
    assert_eq!(q(&["list", "--json", "--older-than", "1d"]).trim(), "[]");

    assert_eq!(q(&["hold", &ids[0], &ids[3]]), "2 messages held\n");
    assert!(held(config, &ids[0]) && held(config, &ids[3]));

    let stdin = format!("{}\n  {}\n\n", ids[0], ids[3]);
    let (code, stdout, stderr) = cli_stdin(config, &["release", "-"], &stdin);
    assert_eq!(
        (code, stdout.as_str()),
        (0, "2 messages released\n"),
        "{stderr}"
    );
    assert!(!held(config, &ids[0]) && !held(config, &ids[3]));

    // Refusals are reported one by one; the others are still done.
    let (code, stdout, stderr) = cli(
        config,
        &["queue", "hold", &ids[0], "ZZZZZZZZZZZZ", "not-an-id"],
    );
    assert_eq!(code, 1, "a refused ID exits 1: {stderr}");
    assert_eq!(stdout, "1 message held\n", "singular: {stderr}");
    assert!(
        stderr.contains("no such message: ZZZZZZZZZZZZ") && stderr.contains("not-an-id"),
        "{stderr}"
    );
    assert!(held(config, &ids[0]));

    // Filters: only what the action changes is counted.
    assert_eq!(
        q(&["release", "--domain", "example.net"]),
        "2 messages released\n"
    );
    assert!(!held(config, &ids[0]) && !held(config, &ids[1]));
    assert_eq!(
        q(&[
            "hold",
            "--domain",
            "EXAMPLE.net",
            "--sender",
            "grace@example.org"
        ]),
        "1 message held\n"
    );
    assert!(held(config, &ids[3]) && !held(config, &ids[0]));
    assert_eq!(q(&["hold", "--older-than", "1h"]), "0 messages held\n");
    assert_eq!(q(&["hold", "--status", "held"]), "0 messages held\n");
    assert_eq!(q(&["release", "--all"]), "2 messages released\n");
    assert_eq!(q(&["delete", "--sender", ""]), "1 message deleted\n");
    let (code, _, _) = cli(config, &["queue", "show", &ids[2]]);
    assert_eq!(code, 1, "the null-sender message was deleted");
    assert_eq!(
        q(&["bounce", "--domain", "example.com"]),
        "1 message bounced\n"
    );
    let (code, _, _) = cli(config, &["queue", "show", &ids[0]]);
    assert_eq!(code, 1, "the bounced message left the queue");
    let left: Vec<String> = list_json(config)
        .iter()
        .map(|message| message["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(left.contains(&ids[1]) && left.contains(&ids[3]), "{left:?}");
    assert_eq!(left.len(), 3, "m1, m3 and the DSN to alice: {left:?}");
}

#[test]
fn bulk_actions_take_several_ids_stdin_and_filters_against_a_running_server() {
    let sink = Sink::start(SinkMode::TempFail);
    let (sluice, ids) = online(&four_messages(), &sink);
    bulk_actions(&sluice.config_path, &ids);
    sluice.wait_log(&[&format!("queue_id={}", ids[3]), "action=hold"]);
    sluice.wait_log(&["action=bounce", "messages=1", "bulk action done"]);
}

#[test]
fn bulk_actions_take_several_ids_stdin_and_filters_offline() {
    let sink = Sink::start(SinkMode::Accept);
    let (dir, config, ids) = offline(&four_messages(), &sink);
    bulk_actions(&config, &ids);
    assert!(
        sink.messages().is_empty(),
        "offline commands deliver nothing"
    );
    drop(dir);
}

#[test]
fn bulk_actions_stream_over_a_big_queue_online_and_offline() {
    let count: usize = std::env::var("SLUICE_TEST_BULK_COUNT")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(20_000);
    let sink = Sink::start(SinkMode::TempFail);
    let dir = tempfile::tempdir().expect("temp dir");
    fill_many_held(&dir.path().join("spool"), count);
    let config = write_config(
        dir.path(),
        &routed_config_text(dir.path(), sink.address, "", ""),
    );
    let timed = |config: &Path, args: &[&str]| {
        let started = std::time::Instant::now();
        let out = cli_ok(config, args);
        let took = started.elapsed();
        eprintln!("{args:?} on {count} messages: {took:?}");
        assert!(
            took < std::time::Duration::from_secs(120),
            "{args:?} took {took:?} for {count} messages"
        );
        out
    };
    assert_eq!(
        timed(&config, &["queue", "release", "--all"]),
        format!("{count} messages released\n")
    );
    assert_eq!(
        timed(&config, &["queue", "hold", "--sender", "bulk@example.org"]),
        format!("{count} messages held\n")
    );
    let text = std::fs::read_to_string(&config).expect("config");
    let sluice = Sluice::start_with(dir, &text);
    assert_eq!(
        timed(
            &sluice.config_path,
            &["queue", "delete", "--domain", "example.net"]
        ),
        format!("{count} messages deleted\n")
    );
    assert_eq!(
        cli_ok(&sluice.config_path, &["queue", "list", "--json"]),
        "[]\n"
    );
    assert!(sink.messages().is_empty(), "held mail was never delivered");
}

/// The body `fill` writes for seed `index`.
fn seeded_body(seed: &Seed, index: usize) -> String {
    format!(
        "From: <{}>\r\nTo: <{}>\r\nSubject: queue test\r\nMessage-ID: <{index}@client.test>\r\n\r\nHello.\r\n",
        seed.sender,
        seed.recipients.join(">, <"),
    )
}

fn summary_and_cat(config: &Path, ids: &[String]) {
    let seeds = four_messages();
    for (index, id) in ids.iter().enumerate() {
        let body = seeded_body(&seeds[index], index);
        assert_eq!(cli_ok(config, &["queue", "cat", id]), body, "cat {id}");
        let header = &body[..body.find("\r\n\r\n").expect("header end") + 2];
        assert_eq!(
            cli_ok(config, &["queue", "cat", id, "--headers"]),
            header,
            "cat {id} --headers"
        );
    }
    let (code, _, stderr) = cli(config, &["queue", "cat", "ZZZZZZZZZZZZ"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no such message"), "{stderr}");

    let text = cli_ok(config, &["queue", "summary", "--json"]);
    let summary: Value = serde_json::from_str(&text).expect("summary --json is JSON");
    assert_eq!(summary["total"]["messages"], 4, "{summary}");
    assert_eq!(summary["total"]["held"], 2, "{summary}");
    assert_eq!(summary["total"]["ages"]["0-5m"], 4, "{summary}");
    let domains: Vec<(&str, u64, u64)> = summary["domains"]
        .as_array()
        .expect("domains")
        .iter()
        .map(|row| {
            assert_eq!(row["suspended"], false, "{row}");
            (
                row["domain"].as_str().unwrap_or_default(),
                row["messages"].as_u64().unwrap_or_default(),
                row["held"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        domains,
        [
            ("example.net", 3, 1),
            ("example.com", 1, 0),
            ("example.org", 1, 1)
        ],
        "{summary}"
    );
    let table = cli_ok(config, &["queue", "summary"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("DOMAIN") && lines[0].contains("160-320m"),
        "{table}"
    );
    let total: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        total[..6],
        ["TOTAL", "4", total[2], "2", "0", "4"],
        "{table}"
    );
    assert!(lines[2].starts_with("example.net "), "{table}");
}

#[test]
fn summary_and_cat_work_against_a_running_server() {
    let sink = Sink::start(SinkMode::TempFail);
    let (sluice, ids) = online(&four_messages(), &sink);
    let config = sluice.config_path.clone();
    summary_and_cat(&config, &ids);
    // The two unheld messages are deferred by the sink: the summary shows it.
    let net = wait_for("example.net deferred twice", DEADLINE, || {
        let text = cli_ok(&config, &["queue", "summary", "--json"]);
        let summary: Value = serde_json::from_str(&text).expect("JSON");
        let row = summary["domains"][0].clone();
        (row["deferred"] == 2).then_some(row)
    });
    assert_eq!(net["domain"], "example.net");
    assert!(
        net["top_reply"]
            .as_str()
            .is_some_and(|r| r.starts_with("451")),
        "{net}"
    );
    assert_eq!(net["top_reply_count"], 2, "{net}");
    let table = cli_ok(&config, &["queue", "summary"]);
    assert!(table.contains("  top reply (2): 451"), "{table}");
}

#[test]
fn summary_and_cat_work_offline_and_on_a_missing_spool() {
    let sink = Sink::start(SinkMode::Accept);
    let (dir, config, ids) = offline(&four_messages(), &sink);
    summary_and_cat(&config, &ids);
    drop(dir);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        dir.path(),
        &routed_config_text(dir.path(), sink.address, "", ""),
    );
    assert_eq!(
        cli_ok(&config, &["queue", "summary"]),
        "Mail queue is empty\n"
    );
    assert_eq!(
        cli_ok(&config, &["queue", "hold", "--all"]),
        "0 messages held\n"
    );
    assert!(
        !dir.path().join("spool").exists(),
        "looking creates nothing"
    );
}

/// `sendmail -bp` and `-q`: on the running server and offline, the same as
/// `queue list` and `queue retry --all`.
fn sendmail_bp_and_q(config: &Path, ids: &[String]) {
    let listed = cli_ok(config, &["sendmail", "-bp"]);
    assert!(listed.contains("in 4 messages"), "{listed}");
    for id in ids {
        assert!(listed.contains(id.as_str()), "{id} listed: {listed}");
    }
    let retried = cli_ok(config, &["sendmail", "-q"]);
    assert!(retried.contains("due now"), "{retried}");
    let (code, _, stderr) = cli(config, &["sendmail", "-q1h"]);
    assert_eq!(code, 2, "-q with an interval is a usage error: {stderr}");
}

#[test]
fn sendmail_bp_lists_and_q_retries_the_queue_online_and_offline() {
    let sink = Sink::start(SinkMode::TempFail);
    let (sluice, ids) = online(&four_messages(), &sink);
    sendmail_bp_and_q(&sluice.config_path, &ids);
    drop(sluice);
    let (dir, config, ids) = offline(&four_messages(), &sink);
    sendmail_bp_and_q(&config, &ids);
    drop(dir);
}

#[test]
fn invoked_as_mailq_it_is_queue_list_with_sluice_config() {
    let sink = Sink::start(SinkMode::TempFail);
    let (sluice, ids) = online(&four_messages(), &sink);
    let link_dir = tempfile::tempdir().expect("temp dir");
    let link = link_dir.path().join("mailq");
    std::os::unix::fs::symlink(common::binary(), &link).expect("symlink the binary");
    let output = std::process::Command::new(&link)
        .env("SLUICE_CONFIG", &sluice.config_path)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run mailq");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "mailq exits 0: {stderr}");
    assert!(stdout.contains("in 4 messages"), "{stdout}");
    for id in &ids {
        assert!(stdout.contains(id.as_str()), "{id} listed: {stdout}");
    }
}

#[test]
fn a_filter_matching_nothing_is_not_an_empty_queue() {
    let sink = Sink::start(SinkMode::TempFail);
    let seeds = &four_messages()[..1];
    let (dir, config, _) = offline(seeds, &sink);
    for filter in [
        &["--sender", ""][..],
        &["--domain", "nowhere.test"],
        &["--status", "held"],
    ] {
        let mut args = vec!["queue", "list"];
        args.extend_from_slice(filter);
        let text = cli_ok(&config, &args);
        assert_eq!(text, "No queued message matches the filter\n", "{filter:?}");
    }
    cli_ok(&config, &["queue", "delete", "--all"]);
    assert_eq!(cli_ok(&config, &["queue", "list"]), "Mail queue is empty\n");
    drop(dir);
}

/// A bounce by the operator after one deferred try is no attempt: its log
/// line counts the one try actually made, as the deferred line did.
#[test]
fn bounce_after_one_try_logs_the_attempts_made() {
    let sink = Sink::start(SinkMode::TempFail);
    let (sluice, ids) = online(
        &[Seed {
            sender: "a@example.org",
            recipients: &["once@example.net"],
            held: false,
        }],
        &sink,
    );
    let config = sluice.config_path.clone();
    sluice.wait_log(&["status=deferred"]);
    let deferred = show_json(&config, &ids[0]);
    assert_eq!(deferred["recipients"][0]["attempts"], 1, "{deferred}");
    // The API's answer shows the message as bounced, with the one try made.
    let bounced = http(
        "POST",
        sluice.admin,
        &format!("/v1/queue/{}/bounce", ids[0]),
        None,
    );
    assert_eq!(bounced.status, 200, "{}", bounced.body);
    let bounced = bounced.json();
    assert_eq!(bounced["recipients"][0]["status"], "failed", "{bounced}");
    assert_eq!(bounced["recipients"][0]["attempts"], 1, "{bounced}");
    sluice.wait_log(&["status=bounced"]);
    let log = sluice.log_text();
    let line = |status: &str| {
        log.lines()
            .find(|line| line.contains(status))
            .unwrap_or_else(|| panic!("no {status} line in {log}"))
            .to_string()
    };
    assert_eq!(common::field(&line("status=deferred"), "attempts"), "1");
    assert_eq!(common::field(&line("status=bounced"), "attempts"), "1");
}
