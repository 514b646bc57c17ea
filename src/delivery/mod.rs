//! Outbound delivery: the scheduler, next-hop resolution, the SMTP client,
//! retries and bounces (DSNs).
//!
//! - `scheduler`: sleeps until work is due, claims it, runs deliveries under
//!   the concurrency limits, records outcomes and queues bounces;
//! - `attempt`: one transaction for one domain's recipients of a message;
//! - `route`: relay_host, `[routes]`, MX and implicit MX;
//! - `client`: the SMTP client's I/O, a pump over `smtp::client`;
//! - `tls`: outbound TLS policy; `pool`: connection reuse;
//! - `secure`: which policy governs (DANE, MTA-STS, static), over `dane`
//!   (TLSA lookups, the TLSA certificate verifier) and `mta_sts` (policy
//!   discovery, fetch, cache);
//! - `retry`: backoff and the clock; `dsn`: RFC 3464 bounces;
//! - `loops`: never deliver to ourselves (RFC 5321 §5.1);
//! - `requiretls`: which sessions may carry a REQUIRETLS message (RFC 8689);
//! - `shaping`: limits per destination (`[shaping]`), suspensions, and
//!   their sharing through Redis (`[cluster]`).

pub mod attempt;
pub mod client;
pub mod dane;
pub mod dsn;
pub mod history;
pub mod loops;
pub mod mta_sts;
pub mod notices;
pub mod plan;
pub mod pool;
pub mod requiretls;
pub mod retry;
pub mod route;
pub mod scheduler;
pub mod secure;
pub mod shaping;
pub mod tls;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use sluice_queue::{Message, Outcome, QueueId, RecipientStatus, RecipientUpdate};
use tokio::sync::Semaphore;

use crate::context::Context;

use self::attempt::{Attempt, Failure};
use self::client::Timeouts;
use self::plan::DeliveryError;
use self::pool::Pool;
use self::retry::{Clock, RetryPolicy, SystemClock};
use self::route::Router;
use self::secure::Secure;
use self::tls::TlsClients;

/// What every delivery task shares.
pub struct Engine {
    ctx: Context,
    router: Router,
    tls: TlsClients,
    /// DANE and MTA-STS (`delivery.dane`, `delivery.mta_sts`).
    secure: Secure,
    policy: RetryPolicy,
    clock: Arc<dyn Clock>,
    timeouts: Timeouts,
    /// `delivery.concurrency`: SMTP transactions in flight in total.
    transactions: Arc<Semaphore>,
    /// `delivery.per_domain_concurrency`, one semaphore per recipient domain.
    domains: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    pool: Arc<Pool>,
}

impl Engine {
    fn new(ctx: &Context, clock: Arc<dyn Clock>, tls: TlsClients) -> Engine {
        let config = ctx.config();
        let delivery = &config.delivery;
        Engine {
            ctx: ctx.clone(),
            router: Router::with_resolver(&config, ctx.resolver.clone()),
            tls,
            secure: Secure::from_config(&config, Some(&ctx.queue)),
            policy: RetryPolicy::from_config(delivery),
            clock,
            timeouts: timeouts(delivery),
            transactions: Arc::new(Semaphore::new(delivery.concurrency.get())),
            domains: Arc::new(Mutex::new(HashMap::new())),
            pool: Arc::new(Pool::new(delivery.per_domain_concurrency.get())),
        }
    }

    /// The engine for `config` (a reload), for the attempts that start from
    /// now on: routes, TLS clients, retry policy and timeouts from `config`;
    /// the connection pool and clock carried over, and the concurrency
    /// limits too unless `config` changes them (attempts in flight then
    /// finish under the old limit).
    fn reloaded(
        &self,
        old: &crate::config::Config,
        config: &crate::config::Config,
        tls: TlsClients,
    ) -> Engine {
        let (old, new) = (&old.delivery, &config.delivery);
        Engine {
            ctx: self.ctx.clone(),
            router: Router::with_resolver(config, self.ctx.resolver.clone()),
            tls,
            secure: Secure::from_config(config, Some(&self.ctx.queue)),
            policy: RetryPolicy::from_config(new),
            clock: self.clock.clone(),
            timeouts: timeouts(new),
            transactions: if old.concurrency == new.concurrency {
                self.transactions.clone()
            } else {
                Arc::new(Semaphore::new(new.concurrency.get()))
            },
            domains: if old.per_domain_concurrency == new.per_domain_concurrency {
                self.domains.clone()
            } else {
                Arc::new(Mutex::new(HashMap::new()))
            },
            pool: self.pool.clone(),
        }
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

/// The outbound timeouts of `[delivery]`.
fn timeouts(delivery: &crate::config::DeliveryConfig) -> Timeouts {
    Timeouts {
        connect: delivery.connect_timeout,
        command: delivery.command_timeout,
        data: delivery.data_timeout,
    }
}

/// Runs due deliveries under the configured concurrency limits.
pub struct Scheduler {
    engine: Arc<ArcSwap<Engine>>,
}

/// Puts a new configuration in force for the delivery attempts that start
/// from now on (see [`Scheduler::reloader`]).
#[derive(Clone)]
pub struct Reloader {
    engine: Arc<ArcSwap<Engine>>,
}

impl Reloader {
    /// Attempts that start after this use `config` (which replaces `old`)
    /// and `tls` (the TLS clients from [`crate::reload::files::load`]);
    /// those in flight finish as they began.
    pub fn reload(
        &self,
        old: &crate::config::Config,
        config: &crate::config::Config,
        tls: TlsClients,
    ) {
        let next = self.engine.load().reloaded(old, config, tls);
        self.engine.store(Arc::new(next));
    }
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
        let tls = TlsClients::from_config(&ctx.config())?;
        Ok(Scheduler::with_tls(ctx, clock, tls))
    }

    /// The scheduler with `tls`, the TLS client configurations already
    /// loaded (by [`crate::reload::files::load`]).
    pub fn with_tls(ctx: &Context, clock: Arc<dyn Clock>, tls: TlsClients) -> Scheduler {
        Scheduler {
            engine: Arc::new(ArcSwap::new(Arc::new(Engine::new(ctx, clock, tls)))),
        }
    }

    /// The handle a reload uses to swap the delivery settings.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            engine: self.engine.clone(),
        }
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
    let failure = Failure::from(DeliveryError::Operator {
        reason: if reason.is_empty() {
            "bounced by the operator".to_string()
        } else {
            reason.to_string()
        },
    });
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
    let reports = plan::record::reports_owed(&message, &attempts, now, None, None);
    notices::queue_reports(ctx, &message, &reports, now).await?;
    let updates = attempts
        .iter()
        .map(|attempt| RecipientUpdate {
            index: attempt.index,
            // Not a delivery attempt: the attempt count stays as it was.
            outcome: Outcome::Bounced {
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
