//! The JSON views of queued messages (DESIGN.md "Queue inspection"), the
//! streaming array writer shared by the API and the offline command, and the
//! list filters.
//!
//! A message object is exactly
//! `{"id","sender","size","received_at","held","recipients":[{"address",
//! "status","attempts","next_attempt_at","last_reply"}]}`; times are RFC 3339
//! UTC, `sender` is `""` for the null sender `<>`. Messages with DSN
//! parameters (RFC 3461) add `"ret"`, `"envid"` and, per recipient,
//! `"notify"` and `"orcpt"`; one that got its delay notice adds
//! `"delay_notified_at"`. Each appears only when set.

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sluice_queue::{AttemptRecord, Message, Recipient, RecipientStatus};

use super::error::AdminError;

/// One queued message as the API and `sluice queue --json` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    /// The queue ID (`[A-Za-z0-9]+`, sorting in arrival order).
    pub id: String,
    /// The envelope sender; `""` for the null sender `<>` (bounces).
    pub sender: String,
    /// Body size in bytes.
    pub size: u64,
    /// When the message was accepted (RFC 3339, UTC).
    #[serde(with = "rfc3339")]
    pub received_at: DateTime<Utc>,
    /// Held messages are never delivered until released.
    pub held: bool,
    /// Every recipient, in the order given at RCPT time.
    pub recipients: Vec<RecipientView>,
    /// `RET` (RFC 3461 §4.3): `"FULL"` or `"HDRS"`; absent when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<String>,
    /// `ENVID` (RFC 3461 §4.4), decoded; absent when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
    /// When the delay notice was sent; absent until then.
    #[serde(
        default,
        with = "rfc3339_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub delay_notified_at: Option<DateTime<Utc>>,
}

/// One recipient's delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientView {
    /// The forward path.
    pub address: String,
    /// `pending`, `deferred`, `delivered` or `failed`.
    pub status: RecipientStatus,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due; `null` unless deferred.
    #[serde(with = "rfc3339_option")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The last reply from a next hop (or the reason of a failure), or `null`.
    pub last_reply: Option<String>,
    /// `NOTIFY` (RFC 3461 §4.1): `"NEVER"` or e.g. `"SUCCESS,FAILURE"`;
    /// absent when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<String>,
    /// `ORCPT` (RFC 3461 §4.2) as `type;address`, decoded; absent when not
    /// given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<String>,
    /// The last 20 attempts, oldest first: only in `show` (one message),
    /// absent from listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts_log: Option<Vec<AttemptView>>,
}

/// One delivery attempt in a recipient's `attempts_log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptView {
    /// When its outcome was recorded (RFC 3339, UTC).
    #[serde(with = "rfc3339")]
    pub time: DateTime<Utc>,
    /// The server that answered, `host[address]:port`, or `none`.
    pub relay: String,
    /// The TLS version and cipher, `plaintext`, or `none`.
    pub tls: String,
    /// The reply, or our reason when no server answered.
    pub reply: String,
}

impl From<AttemptRecord> for AttemptView {
    fn from(record: AttemptRecord) -> Self {
        AttemptView {
            time: record.at,
            relay: record.relay,
            tls: record.tls,
            reply: record.reply,
        }
    }
}

impl MessageView {
    /// The view `show` gives: every recipient with its `attempts_log`.
    pub fn detailed(message: Message) -> MessageView {
        let logs: Vec<Vec<AttemptView>> = message
            .recipients
            .iter()
            .map(|r| {
                r.attempts_log
                    .iter()
                    .cloned()
                    .map(AttemptView::from)
                    .collect()
            })
            .collect();
        let mut view = MessageView::from(message);
        for (recipient, log) in view.recipients.iter_mut().zip(logs) {
            recipient.attempts_log = Some(log);
        }
        view
    }
}

impl From<Message> for MessageView {
    fn from(message: Message) -> Self {
        let dsn = message.dsn.unwrap_or_default();
        MessageView {
            id: message.id.to_string(),
            sender: message.sender,
            size: message.size,
            received_at: message.received_at,
            held: message.held,
            recipients: message
                .recipients
                .into_iter()
                .map(RecipientView::from)
                .collect(),
            ret: dsn.ret.map(|ret| ret.keyword().to_string()),
            envid: dsn.envid,
            delay_notified_at: message.delay_notified_at,
        }
    }
}

impl From<Recipient> for RecipientView {
    fn from(recipient: Recipient) -> Self {
        let dsn = recipient.dsn.unwrap_or_default();
        RecipientView {
            address: recipient.address,
            status: recipient.status,
            attempts: recipient.attempts,
            next_attempt_at: recipient.next_attempt_at,
            last_reply: recipient.last_reply,
            notify: dsn.notify.map(|notify| notify.keywords()),
            orcpt: dsn
                .orcpt
                .map(|orcpt| format!("{};{}", orcpt.address_type, orcpt.address)),
            attempts_log: None,
        }
    }
}

/// RFC 3339 in UTC with whole seconds (`2026-11-25T09:44:21Z`).
pub fn format_time(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(text).map(|time| time.with_timezone(&Utc))
}

mod rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &DateTime<Utc>, out: S) -> Result<S::Ok, S::Error> {
        out.serialize_str(&super::format_time(time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(input: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(input)?;
        super::parse_time(&text).map_err(serde::de::Error::custom)
    }
}

mod rfc3339_option {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        time: &Option<DateTime<Utc>>,
        out: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => out.serialize_str(&super::format_time(time)),
            None => out.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        input: D,
    ) -> Result<Option<DateTime<Utc>>, D::Error> {
        match Option::<String>::deserialize(input)? {
            Some(text) => super::parse_time(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

/// Writes a JSON array of message objects one element at a time, one object
/// per line: `[\n{…},\n{…}\n]\n` (`[]\n` when empty). The API and the
/// offline command use it, so both print byte-identical output.
pub struct JsonArrayWriter<W: Write> {
    out: W,
    count: u64,
}

impl<W: Write> JsonArrayWriter<W> {
    /// Starts the array (writes `[`).
    pub fn new(mut out: W) -> std::io::Result<Self> {
        out.write_all(b"[")?;
        Ok(JsonArrayWriter { out, count: 0 })
    }

    /// Appends one message object.
    pub fn push(&mut self, message: &MessageView) -> std::io::Result<()> {
        self.out
            .write_all(if self.count == 0 { b"\n" } else { b",\n" })?;
        serde_json::to_writer(&mut self.out, message)?;
        self.count += 1;
        Ok(())
    }

    /// The messages written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The underlying writer (the API drains its buffer into chunks).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// Closes the array and returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.out
            .write_all(if self.count == 0 { b"]\n" } else { b"\n]\n" })?;
        Ok(self.out)
    }
}

/// Which messages `GET /v1/queue` (and `sluice queue list`) shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Messages with at least one recipient in this state, or held ones.
    pub status: Option<StatusFilter>,
    /// Messages with at least one recipient in this domain (case-insensitive).
    pub domain: Option<String>,
    /// Messages from this sender (case-insensitive); `""` selects the null
    /// sender.
    pub sender: Option<String>,
    /// Messages received at least this long ago.
    pub older_than: Option<std::time::Duration>,
}

/// The values of `?status=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    /// A recipient has this status.
    Recipient(RecipientStatus),
    /// The message is held.
    Held,
}

impl StatusFilter {
    /// Parses `pending`, `deferred`, `delivered`, `failed` or `held`.
    pub fn parse(text: &str) -> Result<StatusFilter, AdminError> {
        Ok(match text.to_ascii_lowercase().as_str() {
            "pending" => StatusFilter::Recipient(RecipientStatus::Pending),
            "deferred" => StatusFilter::Recipient(RecipientStatus::Deferred),
            "delivered" => StatusFilter::Recipient(RecipientStatus::Delivered),
            "failed" => StatusFilter::Recipient(RecipientStatus::Failed),
            "held" => StatusFilter::Held,
            _ => {
                return Err(AdminError::BadRequest(format!(
                    "bad status {text:?}: one of pending, deferred, delivered, failed, held"
                )));
            }
        })
    }
}

impl ListFilter {
    /// True when no filter is set.
    pub fn is_empty(&self) -> bool {
        self == &ListFilter::default()
    }

    /// Whether `message` passes every filter set, ages counted from now.
    pub fn matches(&self, message: &Message) -> bool {
        self.matches_at(message, self.cutoff(Utc::now()))
    }

    /// The latest arrival time `older_than` lets through, ages counted
    /// from `now` (for [`ListFilter::matches_at`]).
    pub fn cutoff(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let age = self.older_than?;
        Some(
            chrono::Duration::from_std(age)
                .ok()
                .and_then(|age| now.checked_sub_signed(age))
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        )
    }

    /// Whether `message` passes every filter set, `older_than` meaning
    /// "received at or before `cutoff`".
    pub fn matches_at(&self, message: &Message, cutoff: Option<DateTime<Utc>>) -> bool {
        if cutoff.is_some_and(|cutoff| message.received_at > cutoff) {
            return false;
        }
        let status_ok = match self.status {
            None => true,
            Some(StatusFilter::Held) => message.held,
            Some(StatusFilter::Recipient(status)) => {
                message.recipients.iter().any(|r| r.status == status)
            }
        };
        let domain_ok = self.domain.as_deref().is_none_or(|domain| {
            message.recipients.iter().any(|r| {
                r.address
                    .rsplit_once('@')
                    .is_some_and(|(_, d)| d.eq_ignore_ascii_case(domain))
            })
        });
        let sender_ok = self
            .sender
            .as_deref()
            .is_none_or(|sender| message.sender.eq_ignore_ascii_case(sender));
        status_ok && domain_ok && sender_ok
    }

    /// The filters as URL query pairs (for the CLI and `Link` headers).
    pub fn query_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        if let Some(status) = self.status {
            let text = match status {
                StatusFilter::Held => "held",
                StatusFilter::Recipient(RecipientStatus::Pending) => "pending",
                StatusFilter::Recipient(RecipientStatus::Deferred) => "deferred",
                StatusFilter::Recipient(RecipientStatus::Delivered) => "delivered",
                StatusFilter::Recipient(RecipientStatus::Failed) => "failed",
            };
            pairs.push(("status", text.to_string()));
        }
        if let Some(domain) = &self.domain {
            pairs.push(("domain", domain.clone()));
        }
        if let Some(sender) = &self.sender {
            pairs.push(("sender", sender.clone()));
        }
        if let Some(age) = self.older_than {
            pairs.push(("older_than", format!("{}s", age.as_secs())));
        }
        pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use sluice_queue::QueueId;

    fn message() -> Message {
        Message {
            id: QueueId::parse("Q1a2B3").expect("valid id"),
            sender: "a@example.org".into(),
            size: 1234,
            received_at: Utc.with_ymd_and_hms(2026, 11, 25, 9, 44, 21).unwrap(),
            held: false,
            smtputf8: false,
            body_8bit: false,
            requiretls: false,
            recipients: vec![
                Recipient {
                    address: "b@example.net".into(),
                    status: RecipientStatus::Deferred,
                    attempts: 2,
                    next_attempt_at: Some(Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap()),
                    last_reply: Some("421 4.7.0 try later".into()),
                    dsn: None,
                    attempts_log: vec![AttemptRecord {
                        at: Utc.with_ymd_and_hms(2026, 11, 25, 9, 50, 0).unwrap(),
                        relay: "mx.example.net[192.0.2.1]:25".into(),
                        tls: "TLSv1.3/TLS13_AES_256_GCM_SHA384".into(),
                        reply: "421 4.7.0 try later".into(),
                    }],
                },
                Recipient {
                    address: "c@Example.COM".into(),
                    status: RecipientStatus::Pending,
                    attempts: 0,
                    next_attempt_at: None,
                    last_reply: None,
                    dsn: None,
                    attempts_log: Vec::new(),
                },
            ],
            dsn: None,
            delay_notified_at: None,
        }
    }

    #[test]
    fn message_object_has_exactly_the_contract_keys_in_order() {
        let json = serde_json::to_string(&MessageView::from(message())).unwrap();
        assert_eq!(
            json,
            r#"{"id":"Q1a2B3","sender":"a@example.org","size":1234,"received_at":"2026-11-25T09:44:21Z","held":false,"recipients":[{"address":"b@example.net","status":"deferred","attempts":2,"next_attempt_at":"2026-11-25T10:00:00Z","last_reply":"421 4.7.0 try later"},{"address":"c@Example.COM","status":"pending","attempts":0,"next_attempt_at":null,"last_reply":null}]}"#
        );
    }

    #[test]
    fn show_adds_the_attempts_log_to_each_recipient() {
        let value = serde_json::to_value(MessageView::detailed(message())).unwrap();
        assert_eq!(
            value["recipients"][0]["attempts_log"],
            serde_json::json!([{"time": "2026-11-25T09:50:00Z",
                "relay": "mx.example.net[192.0.2.1]:25",
                "tls": "TLSv1.3/TLS13_AES_256_GCM_SHA384", "reply": "421 4.7.0 try later"}])
        );
        assert_eq!(
            value["recipients"][1]["attempts_log"],
            serde_json::json!([])
        );
        let back: MessageView = serde_json::from_value(value).unwrap();
        assert_eq!(back, MessageView::detailed(message()));
    }

    #[test]
    fn null_sender_is_an_empty_string() {
        let mut bounce = message();
        bounce.sender = String::new();
        let value = serde_json::to_value(MessageView::from(bounce)).unwrap();
        assert_eq!(value["sender"], "");
    }

    #[test]
    fn message_object_round_trips() {
        let view = MessageView::from(message());
        let text = serde_json::to_string(&view).unwrap();
        let back: MessageView = serde_json::from_str(&text).unwrap();
        assert_eq!(back, view);
    }

    #[test]
    fn array_writer_writes_one_object_per_line_and_a_valid_array() {
        let mut writer = JsonArrayWriter::new(Vec::new()).unwrap();
        let view = MessageView::from(message());
        writer.push(&view).unwrap();
        writer.push(&view).unwrap();
        let bytes = writer.finish().unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
        let parsed: Vec<MessageView> = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, vec![view.clone(), view]);
    }

    #[test]
    fn empty_array_is_brackets() {
        let bytes = JsonArrayWriter::new(Vec::new()).unwrap().finish().unwrap();
        assert_eq!(bytes, b"[]\n");
    }

    #[test]
    fn filters_match_status_domain_and_sender() {
        let message = message();
        let by = |filter: ListFilter| filter.matches(&message);
        assert!(by(ListFilter::default()));
        assert!(by(ListFilter {
            status: Some(StatusFilter::parse("deferred").unwrap()),
            ..ListFilter::default()
        }));
        assert!(!by(ListFilter {
            status: Some(StatusFilter::parse("failed").unwrap()),
            ..ListFilter::default()
        }));
        assert!(!by(ListFilter {
            status: Some(StatusFilter::Held),
            ..ListFilter::default()
        }));
        assert!(by(ListFilter {
            domain: Some("example.com".into()),
            ..ListFilter::default()
        }));
        assert!(!by(ListFilter {
            domain: Some("example.org".into()),
            ..ListFilter::default()
        }));
        assert!(by(ListFilter {
            sender: Some("A@example.org".into()),
            ..ListFilter::default()
        }));
        assert!(!by(ListFilter {
            sender: Some(String::new()),
            ..ListFilter::default()
        }));
    }

    #[test]
    fn unknown_status_is_a_bad_request() {
        assert!(matches!(
            StatusFilter::parse("stuck"),
            Err(AdminError::BadRequest(_))
        ));
    }
}
