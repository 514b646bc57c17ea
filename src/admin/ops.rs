//! Queue management actions, shared by the HTTP API and the offline
//! `sluice queue` (which builds a [`Context`] around the spool it opened), so
//! both behave identically. Every action is logged with `queue_id` and
//! `action` fields.

use sluice_queue::{Message, QueueId};

use super::error::AdminError;
use super::view::MessageView;
use crate::context::Context;

/// The reason recorded for every recipient failed by `sluice queue bounce`
/// (delivery prefixes the enhanced status code: `5.0.0 bounced by …`).
pub const BOUNCE_REASON: &str = "bounced by the mail administrator";

/// Parses a queue ID given by a user.
pub fn parse_id(text: &str) -> Result<QueueId, AdminError> {
    QueueId::parse(text).ok_or_else(|| AdminError::BadId(text.to_string()))
}

fn get(ctx: &Context, id: &QueueId) -> Result<Message, AdminError> {
    ctx.queue
        .get(id)?
        .ok_or_else(|| AdminError::NotFound(id.clone()))
}

/// The message with this ID, with each recipient's attempt history.
pub fn show(ctx: &Context, id: &QueueId) -> Result<MessageView, AdminError> {
    get(ctx, id).map(MessageView::detailed)
}

/// Parks the message: it is never delivered until released. Holding a held
/// message is not an error.
pub async fn hold(ctx: &Context, id: &QueueId) -> Result<MessageView, AdminError> {
    get(ctx, id)?;
    let message = ctx.queue.hold(id).await?;
    tracing::info!(queue_id = %id, action = %"hold", "message held");
    Ok(message.into())
}

/// Un-parks the message. Releasing a message that is not held is not an error.
pub async fn release(ctx: &Context, id: &QueueId) -> Result<MessageView, AdminError> {
    get(ctx, id)?;
    let message = ctx.queue.release(id).await?;
    tracing::info!(queue_id = %id, action = %"release", "message released");
    Ok(message.into())
}

/// Makes every deferred recipient due now. A held message is refused
/// ([`AdminError::Held`]): it would not be delivered anyway.
pub async fn retry(ctx: &Context, id: &QueueId) -> Result<MessageView, AdminError> {
    if get(ctx, id)?.held {
        return Err(AdminError::Held(id.clone()));
    }
    let message = ctx.queue.retry_now(id).await?;
    tracing::info!(queue_id = %id, action = %"retry", "message due now");
    Ok(message.into())
}

/// Removes the message without notice to anyone.
pub async fn delete(ctx: &Context, id: &QueueId) -> Result<(), AdminError> {
    get(ctx, id)?;
    ctx.queue.delete(id).await?;
    tracing::info!(queue_id = %id, action = %"delete", "message deleted");
    Ok(())
}

/// Fails every remaining recipient now and queues the DSN to the sender
/// (none for the null sender). Returns the message's final state.
pub async fn bounce(ctx: &Context, id: &QueueId) -> Result<MessageView, AdminError> {
    get(ctx, id)?;
    let message = crate::delivery::bounce(ctx, id, BOUNCE_REASON)
        .await
        .map_err(
            |reason| match reason.downcast::<sluice_queue::QueueError>() {
                Ok(queue_error) => AdminError::from(queue_error),
                Err(reason) => AdminError::Bounce {
                    id: id.clone(),
                    reason,
                },
            },
        )?;
    tracing::info!(queue_id = %id, action = %"bounce", "message bounced");
    Ok(message.into())
}
