//! Delivery events for applications (DESIGN.md "Delivery events for
//! applications"): the queue's journal (written in the same durable commit
//! as each change) turned into JSON events, and one task per `[[events]]`
//! subscriber that sends them at least once, in order, with backoff through
//! outages and restarts, until the subscriber's `max_age`.
//!
//! - `classify.rs`: the bounce classifier.
//! - `dispatch.rs`: a subscriber's cursor, batches, retries, metrics.
//! - `http.rs`, `redis.rs`: the sinks; a new sink is one file with a
//!   `send(batch)`.

pub mod classify;
mod dispatch;
mod http;
mod redis;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sluice_queue::{JournalEntry, JournalKind};

pub use classify::Classifier;
pub use dispatch::{Dispatchers, EventMetrics, SubscriberStatus, status_offline};

/// One event, as sent (the contract's JSON object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Stable across retries of the same delivery of the event: receivers
    /// drop duplicates by it.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    pub node: String,
}

impl Event {
    /// An event about no queued message (`rejected`, `suspended`,
    /// `resumed`, `delayed`), with a fresh ID; [`Event::journal_entry`]
    /// stores it.
    pub fn new(kind: &str, node: &str) -> Event {
        Event {
            id: random_id(),
            kind: kind.to_string(),
            time: rfc3339(Utc::now()),
            queue_id: None,
            message_id: None,
            sender: None,
            recipient: None,
            attempt: None,
            relay: None,
            tls: None,
            reply: None,
            class: None,
            destination: None,
            client: None,
            node: node.to_string(),
        }
    }

    /// The journal entry that carries this event.
    pub fn journal_entry(&self) -> JournalEntry {
        JournalEntry::note(serde_json::to_string(self).unwrap_or_default())
    }

    /// The event a journal entry stands for; `None` for an entry that is
    /// not an event (a message deleted by the operator).
    pub fn from_entry(entry: &JournalEntry, node: &str, classifier: &Classifier) -> Option<Event> {
        if entry.kind == JournalKind::Note {
            let mut event: Event = serde_json::from_str(entry.note.as_deref()?).ok()?;
            if event.node.is_empty() {
                event.node = node.to_string();
            }
            return Some(event);
        }
        let reply = entry.reply.as_deref();
        let kind = match entry.kind {
            JournalKind::Received => "received",
            JournalKind::Delivered => "delivered",
            JournalKind::Deferred => "deferred",
            JournalKind::Failed if reply.is_some_and(is_expiry) => "expired",
            JournalKind::Failed => "bounced",
            JournalKind::Deleted | JournalKind::Note => return None,
        };
        let class = matches!(kind, "bounced" | "deferred")
            .then(|| reply.map(|reply| classifier.classify(reply).to_string()))
            .flatten();
        Some(Event {
            id: stable_id(entry, kind),
            kind: kind.to_string(),
            time: rfc3339(entry.time),
            queue_id: Some(entry.queue_id.clone()),
            message_id: entry.message_id.clone(),
            sender: Some(entry.sender.clone()),
            recipient: Some(entry.recipient.clone()),
            attempt: (kind != "received").then_some(entry.attempts.max(1)),
            relay: entry
                .attempt
                .as_ref()
                .map(|attempt| attempt.relay.clone())
                .filter(|relay| relay != "none"),
            tls: entry
                .attempt
                .as_ref()
                .map(|attempt| attempt.tls.clone())
                .filter(|tls| tls != "none"),
            reply: reply.map(reply_object),
            class,
            destination: None,
            client: None,
            node: node.to_string(),
        })
    }
}

/// The expiry's reply (`delivery::scheduler`): 4.4.7 (RFC 3463 "delivery
/// time expired").
fn is_expiry(reply: &str) -> bool {
    reply.starts_with("4.4.7") || reply.contains(" 4.4.7 ")
}

/// `{"code": 250, "enhanced": "2.0.0", "text": "…"}` from a reply line; a
/// local reason without a code has only the text.
pub fn reply_object(reply: &str) -> Value {
    let mut words = reply.splitn(2, ' ');
    let first = words.next().unwrap_or("");
    let Some(code) = first
        .parse::<u16>()
        .ok()
        .filter(|code| (200..600).contains(code))
    else {
        return json!({ "text": reply });
    };
    let rest = words.next().unwrap_or("");
    let (enhanced, text) = match rest.split_once(' ') {
        Some((word, text)) if is_enhanced(word) => (Some(word), text),
        None if is_enhanced(rest) => (Some(rest), ""),
        _ => (None, rest),
    };
    match enhanced {
        Some(enhanced) => json!({ "code": code, "enhanced": enhanced, "text": text }),
        None => json!({ "code": code, "text": text }),
    }
}

fn is_enhanced(word: &str) -> bool {
    let parts: Vec<&str> = word.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
}

/// The same (message, recipient, type, attempt) gives the same ID, so a
/// change written twice (retried after a crash) is one event to the
/// receiver.
fn stable_id(entry: &JournalEntry, kind: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!(
            "{}\n{}\n{}\n{}",
            entry.queue_id, entry.recipient, kind, entry.attempts
        )
        .as_bytes(),
    );
    hex(&digest.as_ref()[..16])
}

fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The HMAC-SHA256 of `body` under `secret`, as `X-Sluice-Signature`
/// carries it: `sha256=<hex>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    format!("sha256={}", hex(ring::hmac::sign(&key, body).as_ref()))
}

/// Records an event about no queued message (`rejected`, `delayed`,
/// `suspended`, `resumed`) in the journal, off the caller's path: it
/// reports a decision already made, whose reply must not wait for a flush.
/// Nothing is written while no subscriber is configured.
pub fn record(queue: &sluice_queue::Queue, event: Event) {
    if !queue.journal_enabled() {
        return;
    }
    let queue = queue.clone();
    tokio::spawn(async move {
        let kind = event.kind.clone();
        if let Err(error) = queue.journal_append(vec![event.journal_entry()]).await {
            tracing::warn!(%error, kind, "writing an event failed");
        }
    });
}

/// The `rejected` event of a refused RCPT (`recipient` set) or of a refused
/// message (DATA/BDAT, one event per recipient of the transaction).
pub fn rejected(
    queue: &sluice_queue::Queue,
    node: &str,
    client: std::net::IpAddr,
    sender: Option<&str>,
    recipients: &[&str],
    reply: &crate::smtp::reply::Reply,
) {
    if !queue.journal_enabled() {
        return;
    }
    let text = reply.to_string();
    let line = text.lines().next().unwrap_or("").to_string();
    let targets: Vec<Option<&str>> = if recipients.is_empty() {
        vec![None]
    } else {
        recipients
            .iter()
            .map(|recipient| Some(*recipient))
            .collect()
    };
    for recipient in targets {
        let mut event = Event::new("rejected", node);
        event.sender = sender.map(str::to_string);
        event.recipient = recipient.map(str::to_string);
        event.client = Some(client.to_string());
        event.reply = Some(reply_object(line.trim_end()));
        record(queue, event);
    }
}

/// The forward path of an `RCPT TO:<…>` line, for a `rejected` event.
pub fn rcpt_address(line: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(line).ok()?;
    if text.len() < 8 || !text[..8].eq_ignore_ascii_case("RCPT TO:") {
        return None;
    }
    let rest = text[8..].trim_start();
    let inner = rest.strip_prefix('<')?;
    let end = inner.find('>')?;
    Some(inner[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_queue::AttemptRecord;

    fn entry(kind: JournalKind, reply: Option<&str>) -> JournalEntry {
        JournalEntry {
            seq: 7,
            time: Utc::now(),
            kind,
            queue_id: "Q1".into(),
            sender: "a@example.org".into(),
            recipient: "b@example.net".into(),
            message_id: Some("<m@x>".into()),
            attempts: 2,
            reply: reply.map(str::to_string),
            attempt: Some(AttemptRecord {
                at: Utc::now(),
                relay: "mx.example.net[192.0.2.1]:25".into(),
                tls: "TLSv1.3".into(),
                reply: reply.unwrap_or_default().to_string(),
            }),
            note: None,
        }
    }

    #[test]
    fn a_bounce_carries_its_reply_class_and_a_stable_id() {
        let classifier = Classifier::default();
        let failed = entry(JournalKind::Failed, Some("550 5.1.1 no such user"));
        let event = Event::from_entry(&failed, "mx1", &classifier).expect("an event");
        assert_eq!(event.kind, "bounced");
        assert_eq!(event.class.as_deref(), Some("invalid_recipient"));
        assert_eq!(
            event.reply,
            Some(json!({"code": 550, "enhanced": "5.1.1", "text": "no such user"}))
        );
        assert_eq!(event.attempt, Some(2));
        assert_eq!(event.relay.as_deref(), Some("mx.example.net[192.0.2.1]:25"));
        let again = Event::from_entry(&failed, "mx1", &classifier).expect("an event");
        assert_eq!(event.id, again.id, "the same change, the same ID");
        let delivered = entry(JournalKind::Delivered, Some("250 2.0.0 ok"));
        let other = Event::from_entry(&delivered, "mx1", &classifier).expect("an event");
        assert_ne!(event.id, other.id);
        assert_eq!(other.class, None, "only bounces and deferrals have a class");
    }

    #[test]
    fn expiry_is_its_own_type_and_deletion_is_none() {
        let classifier = Classifier::default();
        let expired = entry(
            JournalKind::Failed,
            Some("4.4.7 message expired after 5d in the queue; last reply: 451 4.3.0 later"),
        );
        assert_eq!(
            Event::from_entry(&expired, "n", &classifier).unwrap().kind,
            "expired"
        );
        assert!(Event::from_entry(&entry(JournalKind::Deleted, None), "n", &classifier).is_none());
    }

    #[test]
    fn notes_carry_whole_events() {
        let mut event = Event::new("suspended", "mx1");
        event.destination = Some("dest.test".into());
        let entry = event.journal_entry();
        let back = Event::from_entry(&entry, "mx1", &Classifier::default()).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn reply_objects() {
        assert_eq!(reply_object("250 ok"), json!({"code": 250, "text": "ok"}));
        assert_eq!(
            reply_object("connect failed"),
            json!({"text": "connect failed"})
        );
        assert_eq!(
            reply_object("421 4.7.0 try later"),
            json!({"code": 421, "enhanced": "4.7.0", "text": "try later"})
        );
    }

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
