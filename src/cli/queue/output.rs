//! What `sluice queue` prints: the mailq-like table, the `show` details, and
//! the JSON forms (the same bytes whether they came from the API or the
//! spool).

use std::io::{self, Write};

use chrono::{DateTime, Utc};

use crate::admin::summary::{AGE_BUCKETS, Counts, Summary};
use crate::admin::view::{MessageView, format_time};

/// Prints the list table one message at a time and keeps the totals for the
/// summary line.
pub struct ListPrinter<W: Write> {
    out: W,
    now: DateTime<Utc>,
    /// Whether a filter chose the messages: then none printed means none
    /// matched, not an empty queue.
    filtered: bool,
    messages: u64,
    bytes: u64,
}

impl<W: Write> ListPrinter<W> {
    /// A printer whose ages are relative to `now`.
    pub fn new(out: W, now: DateTime<Utc>) -> Self {
        ListPrinter {
            out,
            now,
            filtered: false,
            messages: 0,
            bytes: 0,
        }
    }

    /// Says that a filter chose the messages (see [`Self::finish`]).
    pub fn filtered(mut self, filtered: bool) -> Self {
        self.filtered = filtered;
        self
    }

    /// Prints one message: a line with ID (`!` when held), size, age and
    /// sender (`<>` for the null sender), then one indented line per
    /// recipient with its status and last reply. The header line comes
    /// before the first message.
    pub fn message(&mut self, message: &MessageView) -> io::Result<()> {
        if self.messages == 0 {
            writeln!(
                self.out,
                "{:<22} {:>9} {:>5}  SENDER / RECIPIENTS",
                "QUEUE ID", "SIZE", "AGE"
            )?;
        }
        let id = format!("{}{}", message.id, if message.held { "!" } else { "" });
        writeln!(
            self.out,
            "{id:<22} {:>9} {:>5}  {}",
            message.size,
            age(self.now, message.received_at),
            sender_text(&message.sender)
        )?;
        for recipient in &message.recipients {
            let status = serde_json::to_value(recipient.status)
                .ok()
                .and_then(|value| value.as_str().map(str::to_string))
                .unwrap_or_default();
            write!(self.out, "{:<40}{status:<10} {}", "", recipient.address)?;
            if let Some(reply) = &recipient.last_reply {
                write!(self.out, " ({reply})")?;
            }
            writeln!(self.out)?;
        }
        self.messages += 1;
        self.bytes += message.size;
        Ok(())
    }

    /// Prints the summary (`-- N KiB in M messages`; with no message, `Mail
    /// queue is empty`, or `No queued message matches the filter` when
    /// filtered) and flushes.
    pub fn finish(mut self) -> io::Result<()> {
        if self.messages == 0 && self.filtered {
            writeln!(self.out, "No queued message matches the filter")?;
        } else if self.messages == 0 {
            writeln!(self.out, "Mail queue is empty")?;
        } else {
            writeln!(
                self.out,
                "-- {} KiB in {} message{}",
                self.bytes.div_ceil(1024),
                self.messages,
                if self.messages == 1 { "" } else { "s" }
            )?;
        }
        self.out.flush()
    }
}

/// `<>` for the null sender, else the address.
pub fn sender_text(sender: &str) -> &str {
    if sender.is_empty() { "<>" } else { sender }
}

/// A compact age: `42s`, `17m`, `5h`, `3d`.
pub fn age(now: DateTime<Utc>, then: DateTime<Utc>) -> String {
    let seconds = (now - then).num_seconds().max(0);
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..172_800 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// The `show` details, one field per line.
pub fn show(out: &mut dyn Write, message: &MessageView, now: DateTime<Utc>) -> io::Result<()> {
    writeln!(out, "id:            {}", message.id)?;
    writeln!(out, "sender:        {}", sender_text(&message.sender))?;
    writeln!(out, "size:          {} bytes", message.size)?;
    writeln!(
        out,
        "received:      {} ({} ago)",
        format_time(&message.received_at),
        age(now, message.received_at)
    )?;
    writeln!(
        out,
        "held:          {}",
        if message.held { "yes" } else { "no" }
    )?;
    if let Some(ret) = &message.ret {
        writeln!(out, "ret:           {ret}")?;
    }
    if let Some(envid) = &message.envid {
        writeln!(out, "envid:         {envid}")?;
    }
    if let Some(at) = &message.delay_notified_at {
        writeln!(out, "delay notice:  sent {}", format_time(at))?;
    }
    for recipient in &message.recipients {
        let status = serde_json::to_value(recipient.status)
            .ok()
            .and_then(|value| value.as_str().map(str::to_string))
            .unwrap_or_default();
        writeln!(out, "recipient:     {}", recipient.address)?;
        writeln!(out, "  status:      {status}")?;
        writeln!(out, "  attempts:    {}", recipient.attempts)?;
        if let Some(next) = recipient.next_attempt_at {
            writeln!(out, "  next:        {}", format_time(&next))?;
        }
        if let Some(reply) = &recipient.last_reply {
            writeln!(out, "  last reply:  {reply}")?;
        }
        if let Some(notify) = &recipient.notify {
            writeln!(out, "  notify:      {notify}")?;
        }
        if let Some(orcpt) = &recipient.orcpt {
            writeln!(out, "  orcpt:       {orcpt}")?;
        }
        let log = recipient.attempts_log.as_deref().unwrap_or_default();
        if !log.is_empty() {
            writeln!(out, "  history:     (last {}, oldest first)", log.len())?;
        }
        for attempt in log {
            writeln!(
                out,
                "    {}  {}  {}  {}",
                format_time(&attempt.time),
                attempt.relay,
                attempt.tls,
                attempt.reply
            )?;
        }
    }
    Ok(())
}

/// The `summary` table, like Postfix's qshape: one row per destination
/// domain (largest first) after the TOTAL row, counts of messages, deferred,
/// held, suspended (`yes`/`no`; TOTAL: how many domains), then messages by
/// age; below each domain with deferred mail, its most common last reply.
pub fn summary(out: &mut dyn Write, summary: &Summary) -> io::Result<()> {
    if summary.total.messages == 0 {
        return writeln!(out, "Mail queue is empty");
    }
    let width = summary
        .domains
        .iter()
        .map(|row| row.domain.len())
        .max()
        .unwrap_or(0)
        .max(24);
    let ages: Vec<String> = AGE_BUCKETS
        .iter()
        .map(|(label, _)| format!(" {label:>6}"))
        .collect();
    writeln!(
        out,
        "{:<width$} {:>6} {:>6} {:>6} {:>5}{}",
        "DOMAIN",
        "MSGS",
        "DEFER",
        "HELD",
        "SUSP",
        ages.concat()
    )?;
    let row = |out: &mut dyn Write, name: &str, counts: &Counts, suspended: &str| {
        let ages: Vec<String> = counts
            .ages
            .0
            .iter()
            .zip(AGE_BUCKETS)
            .map(|(count, (label, _))| format!(" {count:>w$}", w = label.len().max(6)))
            .collect();
        writeln!(
            out,
            "{name:<width$} {:>6} {:>6} {:>6} {suspended:>5}{}",
            counts.messages,
            counts.deferred,
            counts.held,
            ages.concat()
        )
    };
    let suspended = summary.domains.iter().filter(|d| d.suspended).count();
    row(out, "TOTAL", &summary.total, &suspended.to_string())?;
    for domain in &summary.domains {
        row(
            out,
            &domain.domain,
            &domain.counts,
            if domain.suspended { "yes" } else { "no" },
        )?;
        if let Some(reply) = &domain.top_reply {
            writeln!(out, "  top reply ({}): {reply}", domain.top_reply_count)?;
        }
    }
    Ok(())
}

/// `show --json`: one pretty-printed message object.
pub fn show_json(out: &mut dyn Write, message: &MessageView) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, message)?;
    writeln!(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::view::RecipientView;
    use chrono::TimeZone;
    use sluice_queue::RecipientStatus;

    fn view(held: bool, sender: &str) -> MessageView {
        MessageView {
            id: "AbC123".into(),
            sender: sender.into(),
            size: 1500,
            received_at: Utc.with_ymd_and_hms(2026, 11, 25, 9, 0, 0).unwrap(),
            held,
            recipients: vec![RecipientView {
                address: "b@example.net".into(),
                status: RecipientStatus::Deferred,
                attempts: 2,
                next_attempt_at: None,
                last_reply: Some("421 4.7.0 try later".into()),
                notify: None,
                orcpt: None,
                attempts_log: None,
            }],
            ret: None,
            envid: None,
            delay_notified_at: None,
        }
    }

    #[test]
    fn list_shows_held_mark_age_sender_recipients_and_summary() {
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 9, 12, 0).unwrap();
        let mut out = Vec::new();
        let mut printer = ListPrinter::new(&mut out, now);
        printer.message(&view(true, "")).unwrap();
        printer.message(&view(false, "a@example.org")).unwrap();
        printer.finish().unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("AbC123!"), "{text}");
        assert!(
            lines[1].contains("12m") && lines[1].ends_with("<>"),
            "{text}"
        );
        assert!(lines[2].contains("deferred") && lines[2].contains("(421 4.7.0 try later)"));
        assert!(lines[3].starts_with("AbC123 "), "{text}");
    }

    #[test]
    fn summary_counts_kib_and_messages() {
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 9, 12, 0).unwrap();
        let mut out = Vec::new();
        let mut printer = ListPrinter::new(&mut out, now);
        printer.message(&view(false, "a@example.org")).unwrap();
        printer.message(&view(false, "a@example.org")).unwrap();
        printer.finish().unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("-- 3 KiB in 2 messages\n"), "{text}");
    }

    #[test]
    fn summary_is_a_qshape_table_with_top_replies() {
        let summary: Summary = serde_json::from_value(serde_json::json!({
            "total": {"messages": 3, "deferred": 2, "held": 1,
                      "ages": {"0-5m": 2, "320m+": 1}},
            "domains": [{"domain": "example.net", "messages": 3, "deferred": 2, "held": 1,
                         "ages": {"0-5m": 2, "320m+": 1}, "suspended": false,
                         "top_reply": "451 4.3.0 later", "top_reply_count": 2}]
        }))
        .unwrap();
        let mut out = Vec::new();
        super::summary(&mut out, &summary).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("DOMAIN") && lines[0].ends_with(" 320m+"),
            "{text}"
        );
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "TOTAL", "3", "2", "1", "0", "2", "0", "0", "0", "0", "0", "0", "1"
            ]
        );
        let cells: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(cells[..5], ["example.net", "3", "2", "1", "no"]);
        assert_eq!(lines[3], "  top reply (2): 451 4.3.0 later");
        // The age columns line up under their labels.
        assert_eq!(lines[0].len(), lines[1].len(), "{text}");
    }

    #[test]
    fn empty_queue_says_so() {
        let mut out = Vec::new();
        ListPrinter::new(&mut out, Utc::now()).finish().unwrap();
        assert_eq!(out, b"Mail queue is empty\n");
        let mut out = Vec::new();
        let printer = ListPrinter::new(&mut out, Utc::now()).filtered(true);
        printer.finish().unwrap();
        assert_eq!(out, b"No queued message matches the filter\n");
    }

    #[test]
    fn ages_are_compact() {
        let now = Utc.with_ymd_and_hms(2026, 11, 25, 0, 0, 0).unwrap();
        let ago = |s: i64| age(now, now - chrono::Duration::seconds(s));
        assert_eq!(ago(5), "5s");
        assert_eq!(ago(600), "10m");
        assert_eq!(ago(7200), "2h");
        assert_eq!(ago(3 * 86_400), "3d");
        assert_eq!(ago(-5), "0s");
    }
}
