//! Which reports one delivery pass owes a message's sender, as the
//! recipients' NOTIFY asks (RFC 3461 §4.1), and queuing them: failure,
//! success (`delivered`, or `relayed` when the next hop does not offer
//! DSN) and the one delay notice after `delivery.delay_warning`. The
//! reports themselves are built by [`super::dsn`].
//!
//! - Without NOTIFY: failure and delay reports only; NOTIFY=NEVER: none.
//! - Recipients of one message that reach the same state in one pass share
//!   one report.
//! - Never any report to the null sender (RFC 5321 §6.1).
//! - Every report is durable before the outcome it reports is recorded:
//!   after a crash in between, a sender may get a report twice, never not
//!   at all. The delay notice is recorded in the message
//!   (`delay_notified_at`), so a restart does not send it again.
//! - A message without DSN parameters costs one field check per recipient
//!   here, unless something failed or a delay notice is due.

use chrono::{DateTime, Utc};
use sluice_queue::{Message, RecipientStatus, ReportKind, Ret, wants_report};

use super::attempt::{Attempt, Verdict};
use super::dsn::{self, Action, Diagnostic, ReportedRecipient, Returned};
use crate::context::Context;
use crate::smtp::reply::EnhancedCode;
use crate::smtp::session::log_address;

/// Queues the reports this pass owes: one per [`Action`] reached by a
/// recipient that asked for it. When `will_retry_until` is given (the
/// message's expiry) and the delay notice is due, that too, recorded as
/// sent. Returns only once everything is durable.
pub async fn queue_reports(
    ctx: &Context,
    message: &Message,
    attempts: &[Attempt],
    now: DateTime<Utc>,
    will_retry_until: Option<DateTime<Utc>>,
) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    let mut delivered = Vec::new();
    let mut relayed = Vec::new();
    for attempt in attempts {
        let dsn = message.recipients[attempt.index].dsn.as_ref();
        match attempt.verdict {
            Verdict::Failed if wants_report(dsn, ReportKind::Failure) => failed.push(attempt),
            Verdict::Sent if dsn.is_some() && wants_report(dsn, ReportKind::Success) => {
                if attempt.next_hop_dsn {
                    delivered.push(attempt);
                } else {
                    relayed.push(attempt);
                }
            }
            _ => {}
        }
    }
    let delayed = match will_retry_until {
        Some(_) if delay_notice_due(ctx, message, now) => still_deferred(message, attempts, now),
        _ => Vec::new(),
    };
    if failed.is_empty() && delivered.is_empty() && relayed.is_empty() && delayed.is_empty() {
        return Ok(());
    }
    if message.sender.is_empty() {
        if !failed.is_empty() {
            tracing::warn!(
                queue_id = %message.id,
                recipients = failed.len(),
                "not bouncing a message with a null sender; the failure notice is dropped"
            );
        }
        return Ok(());
    }
    let original = read_original(ctx, message).await?;
    let returned = match &original {
        Original::Headers(bytes) => Returned::Headers(bytes),
        Original::Message(bytes) => Returned::Message(bytes),
    };
    let reports = [
        (Action::Failed, from_attempts(message, &failed, now)),
        (Action::Delivered, from_attempts(message, &delivered, now)),
        (Action::Relayed, from_attempts(message, &relayed, now)),
    ];
    for (action, recipients) in &reports {
        queue_one(ctx, message, *action, recipients, now, None, returned).await?;
    }
    if !delayed.is_empty() {
        queue_one(
            ctx,
            message,
            Action::Delayed,
            &delayed,
            now,
            will_retry_until,
            returned,
        )
        .await?;
        ctx.queue.note_delay_notice(&message.id, now).await?;
    }
    Ok(())
}

/// True when the message has waited `delivery.delay_warning` and got no
/// delay notice yet. A null sender never gets one.
fn delay_notice_due(ctx: &Context, message: &Message, now: DateTime<Utc>) -> bool {
    let Some(warning) = ctx.config().delivery.delay_warning else {
        return false;
    };
    message.delay_notified_at.is_none()
        && !message.sender.is_empty()
        && chrono::Duration::from_std(warning)
            .is_ok_and(|warning| now >= message.received_at + warning)
}

/// The recipients still deferred after this pass whose NOTIFY allows a
/// delay notice, each with its last reply: this pass's, or the stored one
/// for those not tried in it.
fn still_deferred(
    message: &Message,
    attempts: &[Attempt],
    now: DateTime<Utc>,
) -> Vec<ReportedRecipient> {
    let mut delayed = Vec::new();
    for (index, recipient) in message.recipients.iter().enumerate() {
        if !wants_report(recipient.dsn.as_ref(), ReportKind::Delay) {
            continue;
        }
        match attempts.iter().find(|attempt| attempt.index == index) {
            Some(attempt) if attempt.verdict == Verdict::Deferred => {
                delayed.push(reported(message, attempt, now));
            }
            Some(_) => {}
            None if recipient.status == RecipientStatus::Deferred => {
                let reply = recipient.last_reply.clone().unwrap_or_default();
                delayed.push(ReportedRecipient {
                    address: recipient.address.clone(),
                    original: recipient.dsn.as_ref().and_then(|dsn| dsn.orcpt.clone()),
                    status: status_of(&reply),
                    remote_mta: None,
                    diagnostic: if reply.starts_with(|c: char| c.is_ascii_digit()) {
                        Diagnostic::Smtp(reply)
                    } else {
                        Diagnostic::Local(reply)
                    },
                    last_attempt: now,
                });
            }
            None => {}
        }
    }
    delayed
}

/// The RFC 3463 status in a stored reply (`451 4.3.0 ...` or `4.4.1 ...`),
/// else 4.0.0.
fn status_of(reply: &str) -> EnhancedCode {
    reply
        .split_whitespace()
        .take(2)
        .find_map(|word| {
            let mut parts = word.split('.').map(str::parse::<u16>);
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(Ok(4)), Some(Ok(subject)), Some(Ok(detail)), None) => {
                    Some(EnhancedCode::new(4, subject, detail))
                }
                _ => None,
            }
        })
        .unwrap_or(EnhancedCode::new(4, 0, 0))
}

fn reported(message: &Message, attempt: &Attempt, now: DateTime<Utc>) -> ReportedRecipient {
    let recipient = &message.recipients[attempt.index];
    ReportedRecipient {
        address: recipient.address.clone(),
        original: recipient.dsn.as_ref().and_then(|dsn| dsn.orcpt.clone()),
        status: attempt.status,
        remote_mta: attempt.remote_mta.clone(),
        diagnostic: attempt.diagnostic.clone(),
        last_attempt: now,
    }
}

fn from_attempts(
    message: &Message,
    attempts: &[&Attempt],
    now: DateTime<Utc>,
) -> Vec<ReportedRecipient> {
    attempts
        .iter()
        .map(|attempt| reported(message, attempt, now))
        .collect()
}

/// What of the original a report returns.
enum Original {
    Headers(Vec<u8>),
    Message(Vec<u8>),
}

/// RET=HDRS: the header section. Otherwise the whole message up to
/// [`dsn::MAX_RETURNED_MESSAGE`], and the header section of a larger one.
async fn read_original(ctx: &Context, message: &Message) -> anyhow::Result<Original> {
    let headers_only = message
        .dsn
        .as_ref()
        .is_some_and(|dsn| dsn.ret == Some(Ret::Hdrs))
        || message.size > dsn::MAX_RETURNED_MESSAGE;
    let reader = ctx.queue.open_body(&message.id)?;
    let read = move |mut reader: sluice_queue::BodyReader| -> std::io::Result<Original> {
        if headers_only {
            return dsn::read_header_section(reader, dsn::MAX_ORIGINAL_HEADERS)
                .map(Original::Headers);
        }
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut bytes)?;
        Ok(Original::Message(bytes))
    };
    // Read on the blocking pool when it is in a body file, else from the
    // database's memory cache right here.
    Ok(if reader.is_file() {
        tokio::task::spawn_blocking(move || read(reader)).await??
    } else {
        read(reader)?
    })
}

/// Builds and queues one report; nothing when `recipients` is empty.
async fn queue_one(
    ctx: &Context,
    message: &Message,
    action: Action,
    recipients: &[ReportedRecipient],
    now: DateTime<Utc>,
    will_retry_until: Option<DateTime<Utc>>,
    returned: Returned<'_>,
) -> anyhow::Result<()> {
    if recipients.is_empty() {
        return Ok(());
    }
    let (mut envelope, bytes) = dsn::build(&dsn::Report {
        action,
        reporting_mta: &ctx.config().hostname,
        queue_id: message.id.as_str(),
        sender: &message.sender,
        envid: message.dsn.as_ref().and_then(|dsn| dsn.envid.as_deref()),
        arrival: message.received_at,
        now,
        will_retry_until,
        recipients,
        returned,
    })?;
    // RFC 8689 §5: the report on a REQUIRETLS message asks for it too.
    envelope.requiretls = message.requiretls;
    let dsn_id = ctx.queue.enqueue(envelope, &bytes).await?;
    let what = match action {
        Action::Failed => "bounce queued",
        Action::Delayed => "delay notice queued",
        Action::Delivered | Action::Relayed => "success notice queued",
    };
    tracing::info!(
        queue_id = %message.id,
        dsn_id = %dsn_id,
        action = action.as_str(),
        sender = %log_address(&message.sender),
        recipients = recipients.len(),
        "{what}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_replies_give_their_temporary_status() {
        assert_eq!(status_of("451 4.3.0 try later"), EnhancedCode::new(4, 3, 0));
        assert_eq!(
            status_of("4.4.1 connection refused"),
            EnhancedCode::new(4, 4, 1)
        );
        assert_eq!(status_of("451 try later"), EnhancedCode::new(4, 0, 0));
        assert_eq!(status_of(""), EnhancedCode::new(4, 0, 0));
    }
}
