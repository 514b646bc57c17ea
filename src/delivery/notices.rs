//! Queuing the reports one delivery pass owes a message's sender (which
//! ones is decided by [`super::plan::record::reports_owed`], as the
//! recipients' NOTIFY asks, RFC 3461 §4.1): failure, success (`delivered`,
//! or `relayed` when the next hop does not offer DSN) and the one delay
//! notice after `delivery.delay_warning`. The reports themselves are built
//! by [`super::dsn`].
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
use sluice_queue::{Message, Ret};

use super::dsn::{self, Action, ReportedRecipient, Returned};
use super::plan::Reports;
use crate::context::Context;
use crate::smtp::session::log_address;

/// Queues `reports` (planned by [`super::plan::record::reports_owed`]): one
/// per [`Action`], and the delay notice, recorded as sent. Nothing to the
/// null sender (RFC 5321 §6.1). Returns only once everything is durable.
pub async fn queue_reports(
    ctx: &Context,
    message: &Message,
    reports: &Reports,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    if reports.is_empty() {
        return Ok(());
    }
    if message.sender.is_empty() {
        if !reports.failed.is_empty() {
            tracing::warn!(
                queue_id = %message.id,
                recipients = reports.failed.len(),
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
    let each = [
        (Action::Failed, &reports.failed),
        (Action::Delivered, &reports.delivered),
        (Action::Relayed, &reports.relayed),
    ];
    for (action, recipients) in each {
        queue_one(ctx, message, action, recipients, now, None, returned).await?;
    }
    if !reports.delayed.is_empty() {
        queue_one(
            ctx,
            message,
            Action::Delayed,
            &reports.delayed,
            now,
            reports.will_retry_until,
            returned,
        )
        .await?;
        ctx.queue.note_delay_notice(&message.id, now).await?;
        for recipient in &reports.delayed {
            let mut event = crate::events::Event::new("delayed", &ctx.config().cluster.node);
            event.queue_id = Some(message.id.to_string());
            event.sender = Some(message.sender.clone());
            event.recipient = Some(recipient.address.clone());
            event.relay = recipient.remote_mta.clone();
            crate::events::record(&ctx.queue, event);
        }
    }
    Ok(())
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
    // DESIGN.md "Faults": a notice may use part of the spool's reserve, not
    // the last of it, which is left to the writes that free space
    // (delivery results, removals). Below that floor the notice waits: the
    // error leaves the outcomes unrecorded and the message queued, to be
    // tried again after a pause.
    let min_free = ctx.config().spool.min_free;
    if !ctx.disk.notice_allowed(min_free, bytes.len() as u64) {
        tracing::warn!(
            queue_id = %message.id,
            action = action.as_str(),
            size = bytes.len(),
            "notice postponed: the spool's free space is below the floor kept for delivery"
        );
        anyhow::bail!("spool free space below the notice floor: the notice is postponed");
    }
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
