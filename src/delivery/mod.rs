//! Outbound delivery: the scheduler, next-hop resolution, the SMTP client,
//! retries and bounces (DSNs).
//!
//! - `scheduler`: sleeps until work is due, claims it, runs deliveries under
//!   the concurrency limits, records outcomes and queues bounces;
//! - `attempt`: one transaction for one domain's recipients of a message;
//! - `route`: relay_host, `[routes]`, MX and implicit MX;
//! - `client`: the SMTP client's I/O, a pump over `smtp::client`;
//! - `tls`: outbound TLS policy; `pool`: connection reuse;
//! - `retry`: backoff and the clock; `dsn`: RFC 3464 bounces;
//! - `loops`: never deliver to ourselves (RFC 5321 §5.1);
//! - `shaping`: limits per destination (`[shaping]`), suspensions, and
//!   their sharing through Redis (`[cluster]`).

pub mod attempt;
pub mod client;
pub mod dsn;
pub mod history;
pub mod loops;
pub mod notices;
pub mod pool;
pub mod retry;
pub mod route;
pub mod scheduler;
pub mod shaping;
pub mod tls;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sluice_queue::{Message, Outcome, QueueId, RecipientStatus, RecipientUpdate};
use tokio::sync::Semaphore;

use crate::context::Context;

use self::attempt::{Attempt, Failure};
use self::client::Timeouts;
use self::pool::Pool;
use self::retry::{Clock, RetryPolicy, SystemClock};
use self::route::Router;
use self::tls::TlsClients;
use crate::smtp::reply::EnhancedCode;

/// What every delivery task shares.
pub struct Engine {
    ctx: Context,
    router: Router,
    tls: TlsClients,
    policy: RetryPolicy,
    clock: Arc<dyn Clock>,
    timeouts: Timeouts,
    /// `delivery.concurrency`: SMTP transactions in flight in total.
    transactions: Arc<Semaphore>,
    /// `delivery.per_domain_concurrency`, one semaphore per recipient domain.
    domains: Mutex<HashMap<String, Arc<Semaphore>>>,
    pool: Pool,
}

impl Engine {
    fn new(ctx: &Context, clock: Arc<dyn Clock>) -> anyhow::Result<Engine> {
        let delivery = &ctx.config().delivery;
        let router = Router::with_resolver(&ctx.config(), ctx.resolver.clone());
        let tls = TlsClients::from_config(&ctx.config())?;
        Ok(Engine {
            ctx: ctx.clone(),
            router,
            tls,
            policy: RetryPolicy::from_config(delivery),
            clock,
            timeouts: Timeouts {
                connect: delivery.connect_timeout,
                command: delivery.command_timeout,
                data: delivery.data_timeout,
            },
            transactions: Arc::new(Semaphore::new(delivery.concurrency.get())),
            domains: Mutex::new(HashMap::new()),
            pool: Pool::new(delivery.per_domain_concurrency.get()),
        })
    }

    /// The semaphore limiting transactions to `domain`.
    fn domain_limit(&self, domain: &str) -> Arc<Semaphore> {
        let per_domain = self.ctx.config().delivery.per_domain_concurrency.get();
        let mut domains = self
            .domains
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if domains.len() > 1024 {
            // Forget domains nobody is delivering to right now.
            domains.retain(|_, limit| {
                Arc::strong_count(limit) > 1 || limit.available_permits() < per_domain
            });
        }
        domains
            .entry(domain.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(per_domain)))
            .clone()
    }
}

/// Runs due deliveries under the configured concurrency limits.
pub struct Scheduler {
    engine: Arc<Engine>,
}

impl Scheduler {
    /// Prepares the scheduler: the DNS resolver (`[dns] nameservers`, else
    /// the system configuration) and the TLS client configurations (webpki
    /// roots plus `delivery.tls_ca`). Fails on a bad CA file.
    pub fn new(ctx: &Context) -> anyhow::Result<Scheduler> {
        Scheduler::with_clock(ctx, Arc::new(SystemClock))
    }

    /// Like [`Scheduler::new`], reading time from `clock` (tests).
    pub fn with_clock(ctx: &Context, clock: Arc<dyn Clock>) -> anyhow::Result<Scheduler> {
        Ok(Scheduler {
            engine: Arc::new(Engine::new(ctx, clock)?),
        })
    }

    /// Delivers due work until `ctx.shutdown` is cancelled. Delivery tasks
    /// run on `ctx.tasks`; those in flight at shutdown finish (or are cut
    /// off by the grace period, in which case their messages are simply due
    /// again after the restart).
    pub async fn run(self) {
        scheduler::run(self.engine).await;
    }
}

/// Fails every remaining recipient of a queued message now with `reason`, and
/// queues the DSN to the sender (none for a null sender). Used by
/// `sluice queue bounce`.
pub async fn bounce(ctx: &Context, id: &QueueId, reason: &str) -> anyhow::Result<Message> {
    let message = ctx
        .queue
        .get(id)?
        .ok_or_else(|| anyhow::anyhow!("no such message: {id}"))?;
    let failure = Failure::local(
        true,
        EnhancedCode::new(5, 0, 0),
        if reason.is_empty() {
            "bounced by the operator".to_string()
        } else {
            reason.to_string()
        },
    );
    let attempts: Vec<Attempt> = message
        .recipients
        .iter()
        .enumerate()
        .filter(|(_, recipient)| {
            matches!(
                recipient.status,
                RecipientStatus::Pending | RecipientStatus::Deferred
            )
        })
        .map(|(index, _)| Attempt::local(index, &failure))
        .collect();
    let now = chrono::Utc::now();
    notices::queue_reports(ctx, &message, &attempts, now, None).await?;
    let updates = attempts
        .iter()
        .map(|attempt| RecipientUpdate {
            index: attempt.index,
            outcome: Outcome::Failed {
                reply: attempt.reply.clone(),
            },
        })
        .collect();
    for attempt in &attempts {
        scheduler::log_outcome(&message, attempt, now, "bounced", None, false);
        ctx.metrics.recipients_bounced.inc();
    }
    let message = ctx.queue.complete(id, updates).await?;
    Ok(message)
}
