//! Outbound delivery: the scheduler, next-hop resolution, the SMTP client,
//! retries and bounces (DSNs).

use sluice_queue::{Message, QueueId};

use crate::context::Context;

/// Runs due deliveries under the configured concurrency limits.
pub struct Scheduler {
    ctx: Context,
}

impl Scheduler {
    /// Prepares the scheduler (DNS resolver, TLS client configuration).
    pub fn new(ctx: &Context) -> anyhow::Result<Scheduler> {
        Ok(Scheduler { ctx: ctx.clone() })
    }

    /// Delivers due work until shutdown.
    pub async fn run(self) {
        self.ctx.shutdown.cancelled().await;
    }
}

/// Fails every remaining recipient of a queued message now with `reason`, and
/// queues the DSN to the sender (none for a null sender). Used by
/// `sluice queue bounce`.
pub async fn bounce(ctx: &Context, id: &QueueId, reason: &str) -> anyhow::Result<Message> {
    let _ = (ctx, id, reason);
    anyhow::bail!("bounce is not implemented yet")
}
