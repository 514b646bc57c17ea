//! Delivery status notifications, RFC 3464: the one builder for every
//! report sluice sends: failure (bounce), delay, success (`delivered`)
//! and `relayed` (RFC 3461 §6.2.2: the next hop does not offer DSN).
//!
//! One report covers the recipients of one message that reached the same
//! state in one delivery pass: a multipart/report (RFC 6522) with a
//! human-readable part, a message/delivery-status part (one per-recipient
//! block each) and the original message (message/rfc822) or its header
//! section (text/rfc822-headers). When addresses or headers are UTF-8
//! (SMTPUTF8 mail), message/global-delivery-status, message/global and
//! message/global-headers instead (RFC 6533 §6). It comes from
//! `MAILER-DAEMON@<hostname>` with the null reverse path, so it can never
//! bounce in turn (RFC 5321 §6.1).

use std::io::{self, Read};

use chrono::{DateTime, Utc};
use mail_builder::MessageBuilder;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::MimePart;
use sluice_queue::{Envelope, OriginalRecipient};

use crate::smtp::reply::EnhancedCode;

/// The most of the original header section a DSN carries.
pub const MAX_ORIGINAL_HEADERS: usize = 256 * 1024;

/// The largest message a report returns whole; a larger one comes back as
/// its header section only.
pub const MAX_RETURNED_MESSAGE: u64 = 1024 * 1024;

/// Why one recipient failed, as reported in `Diagnostic-Code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diagnostic {
    /// A remote server's reply, on one line (`smtp; 550 5.1.1 ...`).
    Smtp(String),
    /// A reason found here (DNS, expiry, operator), `X-Sluice; ...`.
    Local(String),
}

/// RFC 3464 §2.3.3 `Action`: what a report says became of its recipients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Permanently undeliverable.
    Failed,
    /// Still being retried.
    Delayed,
    /// Accepted by a next hop that offers DSN.
    Delivered,
    /// Accepted by a next hop that does not offer DSN: no further report
    /// will come from there (RFC 3461 §6.2.2).
    Relayed,
}

impl Action {
    /// The field value (`failed`, `delayed`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
        }
    }
}

/// One recipient in a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedRecipient {
    /// The recipient address as given in the envelope.
    pub address: String,
    /// ORCPT, when the sender gave it (`Original-Recipient`).
    pub original: Option<OriginalRecipient>,
    /// RFC 3463 status, e.g. 5.1.1, 4.4.1 or 2.0.0.
    pub status: EnhancedCode,
    /// The host that gave the reply, if a remote one did.
    pub remote_mta: Option<String>,
    /// The reply or reason.
    pub diagnostic: Diagnostic,
    /// When the last attempt was made.
    pub last_attempt: DateTime<Utc>,
}

/// What a report returns of the original message.
#[derive(Debug, Clone, Copy)]
pub enum Returned<'a> {
    /// The header section (up to the blank line).
    Headers(&'a [u8]),
    /// The whole message.
    Message(&'a [u8]),
}

/// Everything a DSN reports.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// What became of every recipient in it.
    pub action: Action,
    /// Our host name (Reporting-MTA, From, Message-ID).
    pub reporting_mta: &'a str,
    /// The queue ID of the reported message.
    pub queue_id: &'a str,
    /// The reported message's envelope sender: the DSN goes there.
    pub sender: &'a str,
    /// ENVID, when the sender gave it (`Original-Envelope-Id`).
    pub envid: Option<&'a str>,
    /// When the message was accepted (Arrival-Date).
    pub arrival: DateTime<Utc>,
    /// Now (Date).
    pub now: DateTime<Utc>,
    /// For a delay report: when retrying stops (`Will-Retry-Until`).
    pub will_retry_until: Option<DateTime<Utc>>,
    /// The recipients being reported, one block each.
    pub recipients: &'a [ReportedRecipient],
    /// The original message or its header section.
    pub returned: Returned<'a>,
}

/// Builds the DSN: the envelope (null sender, to the original sender) and
/// the message bytes, CRLF line endings.
pub fn build(report: &Report<'_>) -> io::Result<(Envelope, Vec<u8>)> {
    let mailer_daemon = format!("MAILER-DAEMON@{}", report.reporting_mta);
    let human = human_text(report);
    let status = delivery_status(report);

    // RFC 6533 §6: message/delivery-status, message/rfc822 and
    // text/rfc822-headers are 7-bit (or 8bit MIME for the message);
    // UTF-8 (an SMTPUTF8 message's addresses or headers) goes in their
    // "global" counterparts, 8bit.
    let returned_part = match report.returned {
        Returned::Headers(headers) => {
            let headers = normalise_crlf(headers);
            let (content_type, encoding) = if headers.is_ascii() {
                ("text/rfc822-headers", "7bit")
            } else {
                ("message/global-headers", "8bit")
            };
            MimePart::new(content_type, headers).transfer_encoding(encoding)
        }
        Returned::Message(message) => {
            let message = normalise_crlf(message);
            let content_type = if global_message(&message) {
                "message/global"
            } else {
                "message/rfc822"
            };
            let encoding = if message.is_ascii() { "7bit" } else { "8bit" };
            MimePart::new(content_type, message).transfer_encoding(encoding)
        }
    };
    let (status_type, status_encoding) = if status.is_ascii() {
        ("message/delivery-status", "7bit")
    } else {
        ("message/global-delivery-status", "8bit")
    };
    let report_part = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        vec![
            MimePart::new(
                ContentType::new("text/plain").attribute("charset", "utf-8"),
                human,
            ),
            MimePart::new(status_type, status.into_bytes()).transfer_encoding(status_encoding),
            returned_part,
        ],
    );
    let message_id = format!(
        "{}.{}.{}@{}",
        report.queue_id,
        report.action.as_str(),
        report.now.timestamp_micros(),
        report.reporting_mta
    );
    let subject = match report.action {
        Action::Failed => "Undelivered Mail Returned to Sender",
        Action::Delayed => "Delayed Mail (still being retried)",
        Action::Delivered | Action::Relayed => "Successful Mail Delivery Report",
    };
    let mut builder = MessageBuilder::new()
        .from(("Mail Delivery System", mailer_daemon.as_str()))
        .subject(subject)
        .date(Date::new(report.now.timestamp()))
        .message_id(message_id)
        // RFC 3834 §5: an automatic reply; nobody should answer it.
        .header("Auto-Submitted", Raw::new("auto-replied"))
        .body(report_part);
    if !report.sender.is_empty() {
        builder = builder.to(report.sender);
    }
    let bytes = builder.write_to_vec()?;
    let envelope = Envelope {
        sender: String::new(),
        recipients: vec![report.sender.to_string()],
        smtputf8: !report.sender.is_ascii(),
        body_8bit: !bytes.is_ascii(),
        requiretls: false,
        dsn: None,
    };
    Ok((envelope, bytes))
}

/// The human-readable part: what happened, then one paragraph per
/// recipient with its reply.
fn human_text(report: &Report<'_>) -> String {
    let host = report.reporting_mta;
    let mut human = format!("This is the mail system at host {host}.\r\n\r\n");
    human.push_str(match report.action {
        Action::Failed => {
            "I'm sorry to have to inform you that your message could not\r\n\
             be delivered to one or more recipients. It's attached below.\r\n\r\n\
             For further assistance, please send mail to postmaster.\r\n"
        }
        Action::Delayed => {
            "####################################################################\r\n\
             # THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\r\n\
             ####################################################################\r\n\r\n\
             Your message could not be delivered for some time to one or more\r\n\
             recipients. It will be retried until it is too old.\r\n"
        }
        Action::Delivered => {
            "Your message was successfully delivered to the destination(s)\r\n\
             listed below. If the message was delivered to a mailbox you will\r\n\
             receive no further notifications. Otherwise you may still receive\r\n\
             notifications of mail delivery errors from other systems.\r\n"
        }
        Action::Relayed => {
            "Your message was successfully relayed to the destination(s)\r\n\
             listed below, which do not offer delivery status notifications:\r\n\
             you will receive no further notice of its delivery from them.\r\n"
        }
    });
    if let Some(until) = report.will_retry_until {
        human.push_str(&format!(
            "\r\nIt will be retried until {}.\r\n",
            until.to_rfc2822()
        ));
    }
    human.push_str("\r\nThe mail system\r\n");
    for recipient in report.recipients {
        human.push_str("\r\n<");
        human.push_str(&recipient.address);
        human.push_str(">: ");
        match (&recipient.remote_mta, &recipient.diagnostic) {
            (Some(host), Diagnostic::Smtp(reply)) => {
                // The reply on a line of its own: with the address and host
                // before it, a long reply would pass the 998-octet line
                // limit (RFC 5322 §2.1.1).
                human.push_str(&format!("host {host} said:\r\n    {}", one_line(reply)))
            }
            (_, Diagnostic::Smtp(text)) | (_, Diagnostic::Local(text)) => {
                human.push_str(&one_line(text))
            }
        }
        human.push_str("\r\n");
    }
    human
}

/// RFC 3464 §2.2: the per-message fields, then one block per recipient.
fn delivery_status(report: &Report<'_>) -> String {
    let mut status = String::new();
    // RFC 3464 §2.2.1: the ENVID, first.
    if let Some(envid) = report.envid {
        status.push_str(&format!("Original-Envelope-Id: {}\r\n", one_line(envid)));
    }
    status.push_str(&format!(
        "Reporting-MTA: dns; {}\r\nX-Sluice-Queue-ID: {}\r\nArrival-Date: {}\r\n",
        report.reporting_mta,
        report.queue_id,
        report.arrival.to_rfc2822()
    ));
    for recipient in report.recipients {
        status.push_str("\r\n");
        // RFC 3464 §2.3.1: the ORCPT as given, type and address.
        if let Some(original) = &recipient.original {
            status.push_str(&format!(
                "Original-Recipient: {}; {}\r\n",
                original.address_type,
                one_line(&original.address)
            ));
        }
        // RFC 6533 §3: "utf-8" address type for internationalized addresses.
        let address_type = if recipient.address.is_ascii() {
            "rfc822"
        } else {
            "utf-8"
        };
        status.push_str(&format!(
            "Final-Recipient: {address_type}; {}\r\nAction: {}\r\nStatus: {}\r\n",
            recipient.address,
            report.action.as_str(),
            recipient.status
        ));
        if let Some(host) = &recipient.remote_mta {
            status.push_str(&format!("Remote-MTA: dns; {host}\r\n"));
        }
        match &recipient.diagnostic {
            Diagnostic::Smtp(reply) => {
                status.push_str(&format!("Diagnostic-Code: smtp; {}\r\n", one_line(reply)))
            }
            Diagnostic::Local(text) => status.push_str(&format!(
                "Diagnostic-Code: X-Sluice; {}\r\n",
                one_line(text)
            )),
        }
        status.push_str(&format!(
            "Last-Attempt-Date: {}\r\n",
            recipient.last_attempt.to_rfc2822()
        ));
        // RFC 3464 §2.3.9: for a delay, when the MTA gives up.
        if let Some(until) = report.will_retry_until {
            status.push_str(&format!("Will-Retry-Until: {}\r\n", until.to_rfc2822()));
        }
    }
    status
}

/// RFC 6533 §3: a message with UTF-8 in its header section goes back as
/// message/global.
fn global_message(message: &[u8]) -> bool {
    let end = find_blank_line(message).unwrap_or(message.len());
    !message[..end].is_ascii()
}

/// Reads a message's header section: everything up to and including the
/// first empty line, at most `limit` bytes.
pub fn read_header_section(mut reader: impl Read, limit: usize) -> io::Result<Vec<u8>> {
    let mut headers = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let read = reader.read(&mut chunk)?;
        if read == 0 {
            return Ok(headers);
        }
        let search_from = headers.len().saturating_sub(3);
        headers.extend_from_slice(&chunk[..read]);
        if headers.starts_with(b"\r\n") || headers.starts_with(b"\n") {
            // No header section at all.
            headers.truncate(if headers[0] == b'\n' { 1 } else { 2 });
            return Ok(headers);
        }
        let end = find_blank_line(&headers[search_from..]).map(|end| search_from + end);
        if end.is_some() || headers.len() >= limit {
            let end = end.unwrap_or(headers.len());
            if end <= limit {
                headers.truncate(end);
            } else {
                headers.truncate(limit);
                // Do not cut a line in half.
                let last = headers.iter().rposition(|&byte| byte == b'\n');
                headers.truncate(last.map_or(0, |last| last + 1));
            }
            return Ok(headers);
        }
    }
}

/// The end of the header section (after the CRLF of the empty line).
fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .map(|index| index + 4)
        .or_else(|| {
            bytes
                .windows(2)
                .position(|window| window == b"\n\n")
                .map(|index| index + 2)
        })
}

fn normalise_crlf(bytes: &[u8]) -> Vec<u8> {
    let mut output = Vec::with_capacity(bytes.len() + 16);
    let mut previous = 0u8;
    for &byte in bytes {
        if byte == b'\n' && previous != b'\r' {
            output.push(b'\r');
        }
        output.push(byte);
        previous = byte;
    }
    if !output.is_empty() && !output.ends_with(b"\r\n") {
        output.extend_from_slice(b"\r\n");
    }
    output
}

fn one_line(text: &str) -> String {
    text.split(['\r', '\n'])
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::{MessageParser, MimeHeaders};

    fn arrival() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).expect("valid time")
    }

    fn report<'a>(
        action: Action,
        recipients: &'a [ReportedRecipient],
        returned: Returned<'a>,
    ) -> Report<'a> {
        Report {
            action,
            reporting_mta: "sluice.test",
            queue_id: "ABC123",
            sender: "alice@example.org",
            envid: None,
            arrival: arrival(),
            now: arrival() + chrono::Duration::seconds(60),
            will_retry_until: None,
            recipients,
            returned,
        }
    }

    fn report_for(recipients: &[ReportedRecipient], headers: &[u8]) -> (Envelope, Vec<u8>) {
        build(&report(
            Action::Failed,
            recipients,
            Returned::Headers(headers),
        ))
        .expect("DSN builds")
    }

    /// The delivery-status part's field groups, parsed by mail-parser: the
    /// per-message group, then one per recipient.
    fn status_groups(bytes: &[u8]) -> Vec<Vec<(String, String)>> {
        let message = MessageParser::default()
            .parse(bytes)
            .expect("the DSN parses");
        let part = message
            .parts
            .iter()
            .find(|part| {
                part.content_type().is_some_and(|ct| {
                    ct.ctype() == "message" && ct.subtype() == Some("delivery-status")
                })
            })
            .expect("a message/delivery-status part");
        let text = String::from_utf8_lossy(part.contents()).replace("\r\n", "\n");
        text.split("\n\n")
            .filter(|group| !group.trim().is_empty())
            .map(|group| {
                group
                    .lines()
                    .filter_map(|line| line.split_once(": "))
                    .map(|(name, value)| (name.to_string(), value.to_string()))
                    .collect()
            })
            .collect()
    }

    fn field<'a>(group: &'a [(String, String)], name: &str) -> Option<&'a str> {
        group
            .iter()
            .find(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    #[test]
    fn every_action_with_envid_orcpt_and_will_retry_until() {
        let recipient = ReportedRecipient {
            original: Some(OriginalRecipient {
                address_type: "rfc822".into(),
                address: "Bob@example.net".into(),
            }),
            status: EnhancedCode::new(2, 0, 0),
            diagnostic: Diagnostic::Smtp("250 2.0.0 Ok: queued".into()),
            ..failed("bob@example.net")
        };
        for (action, subject) in [
            (Action::Delivered, "Successful Mail Delivery Report"),
            (Action::Relayed, "Successful Mail Delivery Report"),
            (Action::Delayed, "Delayed Mail (still being retried)"),
            (Action::Failed, "Undelivered Mail Returned to Sender"),
        ] {
            let recipients = [recipient.clone()];
            let mut report = report(
                action,
                &recipients,
                Returned::Headers(b"Subject: x\r\n\r\n"),
            );
            report.envid = Some("QQ314159");
            let until = arrival() + chrono::Duration::days(5);
            if action == Action::Delayed {
                report.will_retry_until = Some(until);
            }
            let (_, bytes) = build(&report).expect("builds");
            let parsed = MessageParser::default().parse(&bytes).expect("parses");
            assert_eq!(parsed.subject(), Some(subject));
            let groups = status_groups(&bytes);
            assert_eq!(groups.len(), 2, "{groups:?}");
            assert_eq!(field(&groups[0], "Original-Envelope-Id"), Some("QQ314159"));
            assert_eq!(field(&groups[1], "Action"), Some(action.as_str()));
            assert_eq!(
                field(&groups[1], "Original-Recipient"),
                Some("rfc822; Bob@example.net")
            );
            assert_eq!(
                field(&groups[1], "Final-Recipient"),
                Some("rfc822; bob@example.net")
            );
            assert_eq!(
                field(&groups[1], "Will-Retry-Until"),
                (action == Action::Delayed)
                    .then(|| until.to_rfc2822())
                    .as_deref()
            );
        }
    }

    #[test]
    fn the_whole_message_comes_back_as_message_rfc822() {
        let original = b"Subject: hello\r\n\r\nthe body\r\n";
        let recipients = [failed("bob@example.net")];
        let (_, bytes) = build(&report(
            Action::Failed,
            &recipients,
            Returned::Message(original),
        ))
        .expect("builds");
        let parsed = MessageParser::default().parse(&bytes).expect("parses");
        let returned = parsed
            .parts
            .iter()
            .find(|part| {
                part.content_type()
                    .is_some_and(|ct| ct.ctype() == "message" && ct.subtype() == Some("rfc822"))
            })
            .expect("a message/rfc822 part");
        let inner = returned.message().expect("an embedded message");
        assert_eq!(inner.subject(), Some("hello"));
        assert_eq!(
            inner.body_text(0).as_deref().map(str::trim),
            Some("the body")
        );
    }

    fn failed(address: &str) -> ReportedRecipient {
        ReportedRecipient {
            address: address.into(),
            original: None,
            last_attempt: arrival(),
            status: EnhancedCode::new(5, 1, 1),
            remote_mta: Some("mx.example.net".into()),
            diagnostic: Diagnostic::Smtp("550 5.1.1 <bob@example.net>: no such user".into()),
        }
    }

    #[test]
    fn dsn_is_a_delivery_status_report_from_mailer_daemon_with_null_sender() {
        let headers = b"Subject: hello\r\nMessage-ID: <m1@example.org>\r\n\r\n";
        let (envelope, bytes) = report_for(&[failed("bob@example.net")], headers);
        assert_eq!(envelope.sender, "");
        assert_eq!(envelope.recipients, vec!["alice@example.org".to_string()]);

        let message = MessageParser::default()
            .parse(&bytes)
            .expect("the DSN parses");
        let content_type = message.content_type().expect("has a content type");
        assert_eq!(content_type.ctype(), "multipart");
        assert_eq!(content_type.subtype(), Some("report"));
        assert_eq!(
            content_type.attribute("report-type"),
            Some("delivery-status")
        );
        assert_eq!(
            message
                .from()
                .and_then(|from| from.first())
                .and_then(|a| a.address()),
            Some("MAILER-DAEMON@sluice.test")
        );
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("Auto-Submitted: auto-replied"), "{text}");
        for field in [
            "Reporting-MTA: dns; sluice.test",
            "Arrival-Date: ",
            "Final-Recipient: rfc822; bob@example.net",
            "Action: failed",
            "Status: 5.1.1",
            "Remote-MTA: dns; mx.example.net",
            "Diagnostic-Code: smtp; 550 5.1.1 <bob@example.net>: no such user",
            "Content-Type: text/rfc822-headers",
            "Message-ID: <m1@example.org>",
        ] {
            assert!(text.contains(field), "missing {field:?} in\n{text}");
        }
        let parts: Vec<String> = message
            .parts
            .iter()
            .filter_map(|part| part.content_type())
            .map(|ct| format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("")))
            .collect();
        assert!(
            parts.contains(&"message/delivery-status".to_string()),
            "{parts:?}"
        );
        assert!(parts.contains(&"text/plain".to_string()), "{parts:?}");
    }

    #[test]
    fn one_block_per_failed_recipient_and_local_diagnostics() {
        let dns_failure = ReportedRecipient {
            address: "carol@nowhere.test".into(),
            original: None,
            last_attempt: arrival(),
            status: EnhancedCode::new(5, 1, 2),
            remote_mta: None,
            diagnostic: Diagnostic::Local("domain nowhere.test not found (NXDOMAIN)".into()),
        };
        let (_, bytes) = report_for(&[failed("bob@example.net"), dns_failure], b"");
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(text.matches("Final-Recipient:").count(), 2, "{text}");
        assert!(text.contains("Status: 5.1.2"));
        assert!(text.contains("Diagnostic-Code: X-Sluice; domain nowhere.test not found"));
    }

    #[test]
    fn header_section_stops_at_the_blank_line() {
        let message = b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore\r\n";
        let headers = read_header_section(&message[..], 1000).unwrap();
        assert_eq!(headers, b"A: 1\r\nB: 2\r\n\r\n");
        let long = read_header_section(&message[..], 8).unwrap();
        assert_eq!(long, b"A: 1\r\n");
        assert_eq!(
            read_header_section(&b"A: 1\r\n"[..], 100).unwrap(),
            b"A: 1\r\n"
        );
    }

    #[test]
    fn internationalized_addresses_and_headers_use_the_global_types() {
        // RFC 6533 §6: UTF-8 in the report or the original headers goes in
        // message/global-delivery-status and message/global-headers;
        // message/delivery-status and text/rfc822-headers are 7-bit.
        let headers = "Subject: grüße\r\nFrom: grüße@exämple.org\r\n\r\n";
        let (_, bytes) = report_for(&[failed("bjørn@exämple.net")], headers.as_bytes());
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains("Final-Recipient: utf-8; bjørn@exämple.net"),
            "{text}"
        );
        assert!(
            text.contains("Content-Type: message/global-delivery-status"),
            "{text}"
        );
        assert!(
            text.contains("Content-Type: message/global-headers"),
            "{text}"
        );
        assert!(!text.contains("message/delivery-status"), "{text}");
        assert!(!text.contains("text/rfc822-headers"), "{text}");
        assert!(text.contains("report-type=\"delivery-status\""), "{text}");

        // ASCII everywhere: the classic types, 7bit.
        let (_, bytes) = report_for(&[failed("bob@example.net")], b"Subject: hi\r\n\r\n");
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains("Content-Type: message/delivery-status"),
            "{text}"
        );
        assert!(text.contains("Content-Type: text/rfc822-headers"), "{text}");
        assert!(!text.contains("global"), "{text}");
    }

    #[test]
    fn a_message_starting_with_an_empty_line_has_no_header_section() {
        assert_eq!(
            read_header_section(&b"\nbody only\n"[..], 100).unwrap(),
            b"\n"
        );
        assert_eq!(
            read_header_section(&b"\r\nbody only\r\n"[..], 100).unwrap(),
            b"\r\n"
        );
    }

    #[test]
    fn header_section_found_across_read_boundaries() {
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let Some((&first, rest)) = self.0.split_first() else {
                    return Ok(0);
                };
                buf[0] = first;
                self.0 = rest;
                Ok(1)
            }
        }
        let headers = read_header_section(Trickle(b"A: 1\r\n\r\nbody"), 1000).unwrap();
        assert_eq!(headers, b"A: 1\r\n\r\n");
    }
}
