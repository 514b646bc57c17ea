//! Sender notifications end to end (DESIGN.md "Sender notifications"): the
//! real binary takes DSN parameters over SMTP (RFC 3461), stores them,
//! carries them on to a next hop that offers DSN, and sends the failure,
//! success, relayed and delay reports its recipients asked for, to the
//! sender's own mailbox server (a real destination).
//!
//! Every report is parsed with mail-parser (not sluice's code): its MIME
//! structure, and each field group of the delivery-status part as a header
//! block; fields are compared, not searched for.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod destination;
    pub mod dns;
    pub mod server;
    pub mod smtp;
    pub mod spool;
    pub use {server::*, smtp::*};
}

use std::collections::BTreeSet;

use common::destination::{Destination, Options, Transaction};
use common::{DEADLINE, Sluice, config_text, queue_id, wait_for};
use mail_parser::{MessageParser, MimeHeaders, PartType};

const BODY: &str = "From: alice@origin.test\r\nTo: bob@dest.test\r\nSubject: dsn test\r\n\
                    Message-ID: <d1@origin.test>\r\n\r\nThe body line.\r\n";

/// One attempt per test unless a test asks for more; short timeouts.
const FAST: &str = "connect_timeout = \"3s\"\n\
                    command_timeout = \"3s\"\ndata_timeout = \"3s\"\ntls = \"disabled\"\n";

/// Starts sluice routing dest.test to `remote` and origin.test (where
/// reports go) to `inbox`; `delivery` goes into `[delivery]` after [`FAST`].
fn start(remote: &Destination, inbox: &Destination, delivery: &str) -> Sluice {
    let dir = tempfile::tempdir().expect("temp dir");
    let retry = if delivery.contains("retry_initial") {
        ""
    } else {
        "retry_initial = \"1h\"\nretry_max = \"1h\"\n"
    };
    let extra = format!(
        "[delivery]\n{FAST}{retry}{delivery}\n\n[routes]\n\"dest.test\" = \"{}\"\n\"origin.test\" = \"{}\"\n",
        remote.addr, inbox.addr
    );
    let text = config_text(dir.path(), "", &extra);
    Sluice::start_with(dir, &text)
}

/// Submits one message over SMTP: `mail` parameters after MAIL FROM, and
/// each recipient with its RCPT parameters. Returns the queue ID.
fn submit(sluice: &Sluice, sender: &str, mail: &str, recipients: &[(&str, &str)]) -> String {
    submit_body(sluice, sender, mail, recipients, BODY)
}

fn submit_body(
    sluice: &Sluice,
    sender: &str,
    mail: &str,
    recipients: &[(&str, &str)],
    body: &str,
) -> String {
    let mut client = sluice.connect();
    let ehlo = client.expect("EHLO client.test", "250");
    assert!(
        ehlo.lines().any(|line| line.get(4..) == Some("DSN")),
        "EHLO does not offer DSN: {ehlo}"
    );
    client.expect(&format!("MAIL FROM:<{sender}> {mail}"), "250");
    for (recipient, parameters) in recipients {
        client.expect(&format!("RCPT TO:<{recipient}> {parameters}"), "250");
    }
    client.expect("DATA", "354");
    client.send_raw(body.as_bytes());
    client.send_raw(b".\r\n");
    let reply = client.read_reply();
    queue_id(&reply).unwrap_or_else(|| panic!("expected 250 queued as, got {reply:?}"))
}

/// A report as an independent parser reads it.
#[derive(Debug)]
struct Report {
    subject: String,
    /// The per-message field group of the delivery-status part.
    message_fields: Vec<(String, String)>,
    /// One field group per recipient.
    recipients: Vec<Vec<(String, String)>>,
    /// The content type of the third part (the returned message or headers).
    returned_type: String,
    /// The returned message's body text, when the whole message came back.
    returned_body: Option<String>,
    /// The returned header section's Subject.
    returned_subject: Option<String>,
}

impl Report {
    fn parse(transaction: &Transaction) -> Report {
        let message = MessageParser::default()
            .parse(&transaction.body)
            .expect("the report parses");
        let content_type = message.content_type().expect("a content type");
        assert_eq!(
            (content_type.ctype(), content_type.subtype()),
            ("multipart", Some("report"))
        );
        assert_eq!(
            content_type.attribute("report-type"),
            Some("delivery-status")
        );
        let kind = |part: &mail_parser::MessagePart| {
            part.content_type()
                .map(|ct| format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("")))
                .unwrap_or_default()
        };
        let status = message
            .parts
            .iter()
            .find(|part| kind(part) == "message/delivery-status")
            .expect("a message/delivery-status part");
        let text = String::from_utf8_lossy(status.contents()).replace("\r\n", "\n");
        let mut groups = text
            .split("\n\n")
            .filter(|group| !group.trim().is_empty())
            .map(|group| {
                // Each group is a header block (RFC 3464 §2.1): parse it as one.
                let block = format!("{group}\n\n");
                let parsed = MessageParser::default()
                    .parse_headers(block.as_bytes())
                    .expect("a field group parses");
                parsed
                    .headers()
                    .iter()
                    .map(|header| {
                        let value = String::from_utf8_lossy(
                            &block.as_bytes()
                                [header.offset_start() as usize..header.offset_end() as usize],
                        )
                        .trim()
                        .to_string();
                        (header.name().to_string(), value)
                    })
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>();
        assert!(!groups.is_empty(), "no fields in {text}");
        let message_fields = groups.remove(0);
        let returned = message.parts.iter().rev().find(|part| {
            let kind = kind(part);
            kind == "message/rfc822" || kind == "text/rfc822-headers"
        });
        let returned_type = returned.map(kind).unwrap_or_default();
        let (returned_body, returned_subject) = match returned.map(|part| &part.body) {
            Some(PartType::Message(inner)) => (
                inner.body_text(0).map(|text| text.trim().to_string()),
                inner.subject().map(str::to_string),
            ),
            Some(_) => {
                let headers = MessageParser::default()
                    .parse(returned.expect("a part").contents())
                    .and_then(|parsed| parsed.subject().map(str::to_string));
                (None, headers)
            }
            None => (None, None),
        };
        Report {
            subject: message.subject().unwrap_or_default().to_string(),
            message_fields,
            recipients: groups,
            returned_type,
            returned_body,
            returned_subject,
        }
    }

    fn message_field(&self, name: &str) -> Option<&str> {
        field(&self.message_fields, name)
    }

    /// The field group of `recipient` (by Final-Recipient).
    fn recipient(&self, recipient: &str) -> &[(String, String)] {
        self.recipients
            .iter()
            .find(|group| field(group, "Final-Recipient") == Some(&format!("rfc822; {recipient}")))
            .unwrap_or_else(|| panic!("{recipient} is not in the report: {self:#?}"))
    }

    fn action(&self) -> String {
        let actions: BTreeSet<&str> = self
            .recipients
            .iter()
            .map(|group| field(group, "Action").expect("every recipient has an Action"))
            .collect();
        assert_eq!(actions.len(), 1, "one action per report: {self:#?}");
        actions.into_iter().next().expect("one").to_string()
    }

    fn final_recipients(&self) -> BTreeSet<String> {
        self.recipients
            .iter()
            .map(|group| {
                field(group, "Final-Recipient")
                    .expect("every recipient has a Final-Recipient")
                    .trim_start_matches("rfc822; ")
                    .to_string()
            })
            .collect()
    }
}

fn field<'a>(group: &'a [(String, String)], name: &str) -> Option<&'a str> {
    group
        .iter()
        .find(|(field, _)| field.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// The reports (null-sender mail) that reached the inbox so far.
fn reports(inbox: &Destination) -> Vec<Report> {
    inbox
        .delivered()
        .iter()
        .filter(|t| t.mail_from.is_empty())
        .map(Report::parse)
        .collect()
}

/// Waits until the queue is empty: every message done, every report
/// queued for them delivered. Then nothing more will arrive.
fn wait_queue_empty(sluice: &Sluice) {
    wait_for("an empty queue", DEADLINE, || {
        let (code, stdout, _) = sluice.cli(&["queue", "list", "--json"]);
        (code == 0 && stdout.trim() == "[]").then_some(())
    });
}

fn names(addresses: &[&str]) -> BTreeSet<String> {
    addresses.iter().map(|a| a.to_string()).collect()
}

#[test]
fn dsn_parameters_go_on_to_a_hop_offering_dsn_and_success_is_delivered() {
    let remote = Destination::start(Options {
        dsn: true,
        ..Options::default()
    });
    let inbox = Destination::start(Options::default());
    let sluice = start(&remote, &inbox, "");
    let id = submit(
        &sluice,
        "alice@origin.test",
        "RET=HDRS ENVID=QQ+2B314",
        &[
            ("a@dest.test", "NOTIFY=SUCCESS ORCPT=rfc822;A+2Bx@dest.test"),
            ("b@dest.test", "NOTIFY=SUCCESS,FAILURE"),
            ("c@dest.test", ""),
        ],
    );
    wait_queue_empty(&sluice);

    let sent = remote
        .delivered()
        .into_iter()
        .find(|t| t.mail_from == "alice@origin.test")
        .expect("the message reached the remote");
    assert!(
        sent.mail_params.contains(&"RET=HDRS".to_string())
            && sent.mail_params.contains(&"ENVID=QQ+2B314".to_string()),
        "MAIL parameters not carried on: {:?}",
        sent.mail_params
    );
    let rcpt = |address: &str| {
        sent.rcpt_params
            .iter()
            .find(|(rcpt, _)| rcpt == address)
            .map(|(_, params)| params.clone())
            .unwrap_or_else(|| panic!("no RCPT for {address}: {:?}", sent.rcpt_params))
    };
    assert_eq!(
        rcpt("a@dest.test"),
        ["NOTIFY=SUCCESS", "ORCPT=rfc822;A+2Bx@dest.test"]
    );
    assert_eq!(rcpt("b@dest.test"), ["NOTIFY=SUCCESS,FAILURE"]);
    assert!(rcpt("c@dest.test").is_empty());

    // One success report for both who asked; c@ asked for nothing.
    let reports = reports(&inbox);
    assert_eq!(reports.len(), 1, "{reports:#?}");
    let report = &reports[0];
    assert_eq!(report.subject, "Successful Mail Delivery Report");
    assert_eq!(report.action(), "delivered");
    assert_eq!(
        report.final_recipients(),
        names(&["a@dest.test", "b@dest.test"])
    );
    assert_eq!(report.message_field("Original-Envelope-Id"), Some("QQ+314"));
    assert_eq!(report.message_field("X-Sluice-Queue-ID"), Some(id.as_str()));
    let a = report.recipient("a@dest.test");
    assert_eq!(
        field(a, "Original-Recipient"),
        Some("rfc822; A+x@dest.test")
    );
    assert_eq!(field(a, "Status"), Some("2.0.0"));
    assert_eq!(
        field(a, "Diagnostic-Code"),
        Some("smtp; 250 2.0.0 Ok: queued")
    );
    assert_eq!(
        field(report.recipient("b@dest.test"), "Original-Recipient"),
        None
    );
    // RET=HDRS: the header section only.
    assert_eq!(report.returned_type, "text/rfc822-headers");
    assert_eq!(report.returned_subject.as_deref(), Some("dsn test"));
}

#[test]
fn a_hop_without_dsn_gets_no_parameters_and_success_is_relayed_with_the_message() {
    let remote = Destination::start(Options::default());
    let inbox = Destination::start(Options::default());
    let sluice = start(&remote, &inbox, "");
    submit(
        &sluice,
        "alice@origin.test",
        "ENVID=e1",
        &[("a@dest.test", "NOTIFY=SUCCESS ORCPT=rfc822;a@dest.test")],
    );
    wait_queue_empty(&sluice);
    let sent = remote
        .delivered()
        .into_iter()
        .find(|t| t.mail_from == "alice@origin.test")
        .expect("the message reached the remote");
    assert!(
        !sent.mail_params.iter().any(|p| p.starts_with("ENVID")),
        "{:?}",
        sent.mail_params
    );
    assert_eq!(sent.rcpt_params, [("a@dest.test".to_string(), vec![])]);

    let reports = reports(&inbox);
    assert_eq!(reports.len(), 1, "{reports:#?}");
    let report = &reports[0];
    assert_eq!(report.action(), "relayed");
    assert_eq!(report.message_field("Original-Envelope-Id"), Some("e1"));
    assert_eq!(
        field(report.recipient("a@dest.test"), "Original-Recipient"),
        Some("rfc822; a@dest.test")
    );
    // No RET: the whole message comes back.
    assert_eq!(report.returned_type, "message/rfc822");
    assert_eq!(report.returned_body.as_deref(), Some("The body line."));
    assert_eq!(report.returned_subject.as_deref(), Some("dsn test"));
}

#[test]
fn every_notify_combination_gets_the_reports_it_asked_for() {
    let remote = Destination::start(Options::default());
    // f-*: refused for good; s-*: accepted.
    remote.on_rcpt(|rcpt, _| {
        rcpt.starts_with("f-")
            .then(|| format!("550 5.1.1 <{rcpt}>: no such user"))
    });
    let inbox = Destination::start(Options::default());
    let sluice = start(&remote, &inbox, "");
    let notify = [
        ("default", ""),
        ("never", "NOTIFY=NEVER"),
        ("success", "NOTIFY=SUCCESS"),
        ("failure", "NOTIFY=FAILURE"),
        ("delay", "NOTIFY=DELAY"),
        ("success-failure", "NOTIFY=SUCCESS,FAILURE"),
        ("success-delay", "NOTIFY=SUCCESS,DELAY"),
        ("failure-delay", "NOTIFY=FAILURE,DELAY"),
        ("all", "NOTIFY=SUCCESS,FAILURE,DELAY"),
    ];
    let addresses: Vec<(String, &str)> = notify
        .iter()
        .flat_map(|(name, parameters)| {
            [
                (format!("f-{name}@dest.test"), *parameters),
                (format!("s-{name}@dest.test"), *parameters),
            ]
        })
        .collect();
    let recipients: Vec<(&str, &str)> = addresses
        .iter()
        .map(|(address, parameters)| (address.as_str(), *parameters))
        .collect();
    submit(&sluice, "alice@origin.test", "", &recipients);
    wait_queue_empty(&sluice);

    let reports = reports(&inbox);
    assert_eq!(
        reports.len(),
        2,
        "one failure and one success: {reports:#?}"
    );
    let failure = reports
        .iter()
        .find(|report| report.action() == "failed")
        .expect("a failure report");
    assert_eq!(failure.subject, "Undelivered Mail Returned to Sender");
    assert_eq!(
        failure.final_recipients(),
        names(&[
            "f-default@dest.test",
            "f-failure@dest.test",
            "f-success-failure@dest.test",
            "f-failure-delay@dest.test",
            "f-all@dest.test",
        ])
    );
    let gone = failure.recipient("f-default@dest.test");
    assert_eq!(field(gone, "Status"), Some("5.1.1"));
    assert_eq!(
        field(gone, "Diagnostic-Code"),
        Some("smtp; 550 5.1.1 <f-default@dest.test>: no such user")
    );
    let success = reports
        .iter()
        .find(|report| report.action() == "relayed")
        .expect("a success report (relayed: the remote offers no DSN)");
    assert_eq!(
        success.final_recipients(),
        names(&[
            "s-success@dest.test",
            "s-success-failure@dest.test",
            "s-success-delay@dest.test",
            "s-all@dest.test",
        ])
    );
    // No ENVID given: no Original-Envelope-Id.
    assert_eq!(success.message_field("Original-Envelope-Id"), None);
}

#[test]
fn a_message_over_1_mib_comes_back_as_headers_only() {
    let remote = Destination::start(Options::default());
    remote.on_rcpt(|_, _| Some("550 5.1.1 no such user".into()));
    let inbox = Destination::start(Options::default());
    let sluice = start(&remote, &inbox, "");
    let mut body = BODY.to_string();
    let line = format!("{}\r\n", "x".repeat(998));
    while body.len() <= 1024 * 1024 {
        body.push_str(&line);
    }
    submit_body(
        &sluice,
        "alice@origin.test",
        "RET=FULL",
        &[("big@dest.test", "")],
        &body,
    );
    wait_queue_empty(&sluice);
    let reports = reports(&inbox);
    assert_eq!(reports.len(), 1, "{reports:#?}");
    assert_eq!(reports[0].action(), "failed");
    assert_eq!(reports[0].returned_type, "text/rfc822-headers");
    assert_eq!(reports[0].returned_subject.as_deref(), Some("dsn test"));
}

#[test]
fn malformed_dsn_parameters_get_501() {
    let sluice = Sluice::start_no_delivery("");
    let mut client = sluice.connect();
    client.expect("EHLO client.test", "250");
    for line in [
        "MAIL FROM:<a@origin.test> RET=SOME",
        "MAIL FROM:<a@origin.test> ENVID=bad+zz",
        "MAIL FROM:<a@origin.test> ENVID=a=b",
    ] {
        let reply = client.command(line);
        assert!(reply.starts_with("501 5.5.4"), "{line}: {reply}");
    }
    client.expect("MAIL FROM:<a@origin.test> RET=hdrs ENVID=ok", "250");
    for line in [
        "RCPT TO:<b@dest.test> NOTIFY=NEVER,SUCCESS",
        "RCPT TO:<b@dest.test> NOTIFY=",
        "RCPT TO:<b@dest.test> ORCPT=b@dest.test",
        "RCPT TO:<b@dest.test> ORCPT=rfc822;b+4x@dest.test",
    ] {
        let reply = client.command(line);
        assert!(reply.starts_with("501 5.5.4"), "{line}: {reply}");
    }
    client.expect("RCPT TO:<b@dest.test> NOTIFY=delay,failure", "250");
}

#[test]
fn one_delay_notice_listing_the_deferred_recipients_and_none_after_a_restart() {
    let remote = Destination::start(Options::default());
    remote.on_rcpt(|rcpt, _| {
        rcpt.starts_with("d-")
            .then(|| format!("450 4.2.1 <{rcpt}>: mailbox busy"))
    });
    let inbox = Destination::start(Options::default());
    // Retries every second: the first attempt comes before the warning
    // time, later ones after it.
    let sluice = start(
        &remote,
        &inbox,
        "delay_warning = \"1s\"\nretry_initial = \"1s\"\nretry_max = \"1s\"\nretry_factor = 1.0\n",
    );
    let id = submit(
        &sluice,
        "alice@origin.test",
        "ENVID=slow1",
        &[
            ("d-default@dest.test", ""),
            (
                "d-delay@dest.test",
                "NOTIFY=DELAY ORCPT=rfc822;D+40dest.test",
            ),
            ("d-never@dest.test", "NOTIFY=NEVER"),
            ("d-failure@dest.test", "NOTIFY=FAILURE"),
            ("ok@dest.test", ""),
        ],
    );
    // A null sender never gets one.
    let bounce_id = submit(&sluice, "", "", &[("d-bounce@dest.test", "")]);

    let report = wait_for("the delay notice", DEADLINE, || {
        reports(&inbox).into_iter().next()
    });
    assert_eq!(report.subject, "Delayed Mail (still being retried)");
    assert_eq!(report.action(), "delayed");
    assert_eq!(
        report.final_recipients(),
        names(&["d-default@dest.test", "d-delay@dest.test"])
    );
    assert_eq!(report.message_field("Original-Envelope-Id"), Some("slow1"));
    let delayed = report.recipient("d-delay@dest.test");
    assert_eq!(field(delayed, "Status"), Some("4.2.1"));
    assert_eq!(
        field(delayed, "Diagnostic-Code"),
        Some("smtp; 450 4.2.1 <d-delay@dest.test>: mailbox busy")
    );
    assert_eq!(
        field(delayed, "Original-Recipient"),
        Some("rfc822; D@dest.test")
    );
    // Will-Retry-Until: arrival plus the queue lifetime (5 days by default).
    let until = field(delayed, "Will-Retry-Until").expect("Will-Retry-Until");
    let until = chrono::DateTime::parse_from_rfc2822(until).expect("an RFC 5322 date");
    let arrival = report
        .message_field("Arrival-Date")
        .and_then(|date| chrono::DateTime::parse_from_rfc2822(date).ok())
        .expect("an Arrival-Date");
    assert_eq!(until - arrival, chrono::Duration::days(5));

    // Recorded in the queue, and shown.
    let shown = sluice.cli(&["queue", "show", &id, "--json"]).1;
    let json: serde_json::Value = serde_json::from_str(&shown).expect("JSON");
    assert!(json["delay_notified_at"].is_string(), "{json}");
    assert_eq!(json["envid"], "slow1");
    assert_eq!(json["recipients"][1]["notify"], "DELAY");
    assert_eq!(json["recipients"][1]["orcpt"], "rfc822;D@dest.test");
    assert_eq!(json["recipients"][2]["notify"], "NEVER");
    assert!(json["recipients"][0].get("notify").is_none(), "{json}");

    // More attempts, a restart, more attempts: still one notice.
    let attempts = remote.rcpt_attempts("d-default@dest.test");
    wait_for("another attempt", DEADLINE, || {
        (remote.rcpt_attempts("d-default@dest.test") > attempts).then_some(())
    });
    let sluice = sluice.restart();
    let attempts = remote.rcpt_attempts("d-default@dest.test");
    wait_for("two attempts after the restart", DEADLINE, || {
        (remote.rcpt_attempts("d-default@dest.test") >= attempts + 2).then_some(())
    });
    let reports = reports(&inbox);
    assert_eq!(reports.len(), 1, "{reports:#?}");
    let bounce_queue_id = format!("queue_id={bounce_id}");
    assert!(
        !sluice
            .log_text()
            .lines()
            .any(|line| line.contains(&bounce_queue_id) && line.contains("notice queued")),
        "a delay notice for a null sender:\n{}",
        sluice.log_text()
    );
    assert!(
        remote.rcpt_attempts("d-bounce@dest.test") >= 2,
        "the null-sender message was retried after the warning time"
    );
}

#[test]
fn delay_warning_off_sends_no_notice() {
    let remote = Destination::start(Options::default());
    remote.on_rcpt(|_, _| Some("450 4.2.1 mailbox busy".into()));
    let inbox = Destination::start(Options::default());
    let sluice = start(
        &remote,
        &inbox,
        "delay_warning = \"off\"\nretry_initial = \"1s\"\nretry_max = \"1s\"\nretry_factor = 1.0\n",
    );
    let id = submit(&sluice, "alice@origin.test", "", &[("d@dest.test", "")]);
    wait_for("three attempts", DEADLINE, || {
        (remote.rcpt_attempts("d@dest.test") >= 3).then_some(())
    });
    assert!(reports(&inbox).is_empty());
    let shown = sluice.cli(&["queue", "show", &id, "--json"]).1;
    let json: serde_json::Value = serde_json::from_str(&shown).expect("JSON");
    assert!(json.get("delay_notified_at").is_none(), "{json}");
}
