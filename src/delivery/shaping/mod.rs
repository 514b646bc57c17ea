//! Traffic shaping per destination (`[shaping."KEY"]`): connection limits,
//! message rates, messages per connection and suspensions, enforced here
//! locally or, with `[cluster] redis`, shared by every node (`shared`).
//!
//! A *destination* is what a limit counts: the recipient domain for a
//! domain rule and for `"*"`, the MX suffix for a suffix rule (so every
//! domain hosted at ".google.com" shares one set of limits). A suspension
//! names a destination too, or any recipient domain.
//!
//! - `gcra`: the local token bucket; `shared`: Redis;
//! - `metrics`: what `/metrics` shows per rule.
//!
//! Mail held back by a connection limit or a rate waits in its delivery
//! task, keeping only its ID (the scheduler reads it again when its turn
//! comes), without an attempt being charged;
//! mail to a suspended destination is put off in the queue until the
//! suspension ends ([`sluice_queue::Queue::postpone`]: only its ID stays
//! in the due index), and then goes through the rate like any other.

pub mod gcra;
pub mod metrics;
pub mod shared;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sluice_queue::{Queue, Suspension};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use self::gcra::Gcra;
use self::metrics::ShapingMetrics;
use self::shared::{LeaseAnswer, Shared};
use super::attempt::{Attempt, Verdict};
use crate::config::{Config, Rate, ShapingKey, ShapingRule};

/// How long the MX host names of a domain are remembered for matching
/// suffix rules.
const MX_CACHE_TTL: Duration = Duration::from_secs(300);
/// Destinations remembered before idle ones are forgotten.
const MAX_DESTINATIONS: usize = 4096;
/// How often a node polls for a shared connection lease while all are taken.
const LEASE_POLL: Duration = Duration::from_millis(25);
/// The reason given for a suspension set by hand.
pub const BY_HAND: &str = "suspended by the operator";

/// The limits of one destination on this node.
pub struct Destination {
    /// The destination's name: a domain or an MX suffix.
    pub name: String,
    /// The rule's key, for metrics.
    rule: String,
    /// The connection limit this entry was made for.
    limit: usize,
    rate: Option<Rate>,
    connections: Arc<Semaphore>,
    /// Fair (FIFO): one waiter at a time asks the bucket, the others queue
    /// behind it, so a backlog costs no polling.
    bucket: tokio::sync::Mutex<Gcra>,
    /// The name again, shared with the connection pool.
    pool_name: Arc<str>,
    /// The rule's metrics, looked up once.
    in_use: prometheus_client::metrics::gauge::Gauge,
    sent: prometheus_client::metrics::counter::Counter,
    rate_wait: prometheus_client::metrics::counter::Counter<f64, std::sync::atomic::AtomicU64>,
}

/// A domain's rule and destination.
pub struct Resolved {
    /// The rule in force.
    pub rule: ShapingRule,
    /// Its limits.
    pub destination: Arc<Destination>,
}

/// The right to run one transaction to a destination; gives its
/// connection (and shared lease) back when dropped.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    _lease: Option<shared::Lease>,
    destination: Arc<Destination>,
    /// The rule's `messages_per_connection`.
    pub per_connection: Option<u32>,
}

impl Admission {
    /// What the connection pool must respect for this delivery.
    pub fn pool_scope(&self) -> super::pool::Shaped {
        super::pool::Shaped {
            per_connection: self.per_connection,
            destination: self.destination.pool_name.clone(),
            limit: self.destination.limit,
            in_use: self.destination.connections.clone(),
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.destination.in_use.dec();
    }
}

/// Rules, limits and suspensions for every destination.
pub struct Shaper {
    destinations: Mutex<HashMap<String, Arc<Destination>>>,
    /// MX host names per domain, for suffix rules.
    mx_hosts: Mutex<HashMap<String, (Vec<String>, Instant)>>,
    /// This node's suspensions (also in the spool), with whether Redis has
    /// them.
    suspensions: Mutex<HashMap<String, (Suspension, bool)>>,
    shared: Option<Arc<Shared>>,
    metrics: Arc<ShapingMetrics>,
    queue: Queue,
}

impl Shaper {
    /// The shaper for `config`, with the suspensions stored in `queue`'s
    /// spool. Does not touch Redis yet ([`Shaper::run`] connects).
    pub fn new(config: &Config, queue: &Queue, metrics: Arc<ShapingMetrics>) -> Shaper {
        let shared = config.cluster.redis.as_deref().and_then(|url| {
            match Shared::new(url, &config.cluster.node, metrics.clone()) {
                Ok(shared) => Some(Arc::new(shared)),
                Err(error) => {
                    tracing::error!(%error, "shared limits disabled");
                    None
                }
            }
        });
        let now = Utc::now();
        let mut suspensions = HashMap::new();
        match queue.suspensions() {
            Ok(stored) => {
                for suspension in stored {
                    if suspension.until > now {
                        metrics
                            .suspended
                            .get_or_create(&metrics::destination(&suspension.destination))
                            .set(1);
                        suspensions.insert(suspension.destination.clone(), (suspension, false));
                    }
                }
            }
            Err(error) => tracing::error!(%error, "cannot read the stored suspensions"),
        }
        Shaper {
            destinations: Mutex::new(HashMap::new()),
            mx_hosts: Mutex::new(HashMap::new()),
            suspensions: Mutex::new(suspensions),
            shared,
            metrics,
            queue: queue.clone(),
        }
    }

    /// The Redis side of the limits, with `[cluster] redis` (the client
    /// limits of the front door share it).
    pub fn shared(&self) -> Option<&Arc<Shared>> {
        self.shared.as_ref()
    }

    /// Removes ended suspensions from the spool, then keeps the shared
    /// side going (Redis) until `shutdown`; without `[cluster] redis`,
    /// returns after the clean-up.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        // Suspensions that ended while the server was down leave the spool.
        let now = Utc::now();
        for stored in self.queue.suspensions().unwrap_or_default() {
            if stored.until <= now
                && let Err(error) = self.queue.resume(&stored.destination).await
            {
                tracing::warn!(destination = %stored.destination, %error, "cannot remove an ended suspension");
            }
        }
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let shaper = self.clone();
        shared
            .run(shutdown, move |found| shaper.reconcile(found))
            .await;
    }

    /// After a read of the shared suspensions: ours that Redis had and no
    /// longer has were resumed on another node; ours it never got (set
    /// while it was down) are pushed.
    fn reconcile(self: &Arc<Self>, found: &HashMap<String, Suspension>) {
        let mut resumed = Vec::new();
        let mut unpushed = Vec::new();
        let mut expired = Vec::new();
        let now = Utc::now();
        {
            let mut ours = lock(&self.suspensions);
            ours.retain(|destination, (suspension, pushed)| {
                if suspension.until <= now {
                    expired.push(destination.clone());
                    false
                } else if found.contains_key(destination) {
                    *pushed = true;
                    true
                } else if *pushed {
                    resumed.push(destination.clone());
                    false
                } else {
                    unpushed.push(suspension.clone());
                    true
                }
            });
        }
        for destination in resumed.iter().chain(&expired) {
            self.metrics
                .suspended
                .get_or_create(&metrics::destination(destination))
                .set(0);
        }
        for destination in found.keys() {
            self.metrics
                .suspended
                .get_or_create(&metrics::destination(destination))
                .set(1);
        }
        if resumed.is_empty() && unpushed.is_empty() && expired.is_empty() {
            return;
        }
        let shaper = self.clone();
        tokio::spawn(async move {
            for destination in expired {
                if let Err(error) = shaper.queue.resume(&destination).await {
                    tracing::warn!(destination, %error, "cannot remove a stored suspension");
                }
            }
            for destination in resumed {
                tracing::info!(destination, "suspension ended on another node");
                if let Err(error) = shaper.queue.resume(&destination).await {
                    tracing::warn!(destination, %error, "cannot remove a stored suspension");
                }
                shaper.wake_postponed(&destination).await;
            }
            if let Some(shared) = &shaper.shared {
                for suspension in unpushed {
                    if shared.suspend(&suspension).await
                        && let Some(entry) =
                            lock(&shaper.suspensions).get_mut(&suspension.destination)
                    {
                        entry.1 = true;
                    }
                }
            }
        });
    }

    /// The rule and destination for recipient `domain`, or `None` when no
    /// rule applies (then only `delivery.per_domain_concurrency` does).
    /// Looks up the MX host names only when a suffix rule exists and no
    /// domain rule matched.
    pub async fn resolve(
        &self,
        config: &Config,
        domain: &str,
        mx_lookup: impl AsyncFnOnce() -> Vec<String>,
    ) -> Option<Resolved> {
        let shaping = &config.shaping;
        if shaping.is_empty() {
            return None;
        }
        let domain = domain.to_ascii_lowercase();
        let rule = match shaping.rule_for(&domain, []) {
            Some(rule) if matches!(rule.key, ShapingKey::Domain(_)) || !shaping.has_mx_rules() => {
                rule.clone()
            }
            _ => {
                let hosts = self.mx_hosts_of(&domain, mx_lookup).await;
                shaping
                    .rule_for(&domain, hosts.iter().map(String::as_str))?
                    .clone()
            }
        };
        let name = match &rule.key {
            ShapingKey::MxSuffix(suffix) => suffix.clone(),
            ShapingKey::Domain(_) | ShapingKey::Any => domain,
        };
        let limit = rule
            .connections
            .map_or(config.delivery.per_domain_concurrency.get(), |n| n.get());
        let destination = self.destination(&name, &rule, limit);
        Some(Resolved { rule, destination })
    }

    async fn mx_hosts_of(
        &self,
        domain: &str,
        lookup: impl AsyncFnOnce() -> Vec<String>,
    ) -> Vec<String> {
        if let Some((hosts, at)) = lock(&self.mx_hosts).get(domain)
            && at.elapsed() < MX_CACHE_TTL
        {
            return hosts.clone();
        }
        let hosts = lookup().await;
        let mut cache = lock(&self.mx_hosts);
        if cache.len() >= MAX_DESTINATIONS {
            cache.retain(|_, (_, at)| at.elapsed() < MX_CACHE_TTL);
        }
        cache.insert(domain.to_string(), (hosts.clone(), Instant::now()));
        hosts
    }

    /// The limits of destination `name` under `rule`; a changed rule (a
    /// reload) gets fresh ones.
    fn destination(&self, name: &str, rule: &ShapingRule, limit: usize) -> Arc<Destination> {
        let mut destinations = lock(&self.destinations);
        if let Some(existing) = destinations.get(name)
            && existing.limit == limit
            && existing.rate == rule.rate
            && existing.rule == rule.key.as_str()
        {
            return existing.clone();
        }
        if destinations.len() >= MAX_DESTINATIONS {
            // Forget destinations nobody is delivering to right now.
            destinations.retain(|_, destination| {
                Arc::strong_count(destination) > 1
                    || destination.connections.available_permits() < destination.limit
            });
        }
        let labels = metrics::rule(rule.key.as_str());
        let destination = Arc::new(Destination {
            name: name.to_string(),
            rule: rule.key.as_str().to_string(),
            limit,
            rate: rule.rate,
            connections: Arc::new(Semaphore::new(limit)),
            bucket: tokio::sync::Mutex::new(Gcra::default()),
            pool_name: Arc::from(name),
            in_use: self.metrics.connections.get_or_create(&labels).clone(),
            sent: self.metrics.messages_sent.get_or_create(&labels).clone(),
            rate_wait: self
                .metrics
                .rate_wait_seconds
                .get_or_create(&labels)
                .clone(),
        });
        destinations.insert(name.to_string(), destination.clone());
        destination
    }

    /// True when a delivery to `domain` would wait for its destination's
    /// connections or rate now (known destinations only; no lookups).
    pub fn looks_busy(&self, domain: &str) -> bool {
        let domain = domain.to_ascii_lowercase();
        let destinations = lock(&self.destinations);
        let by_mx = || {
            let cache = lock(&self.mx_hosts);
            let hosts = &cache.get(&domain)?.0;
            destinations
                .values()
                .filter(|destination| destination.name.starts_with('.'))
                .find(|destination| hosts.iter().any(|host| host.ends_with(&destination.name)))
                .cloned()
        };
        let Some(destination) = destinations.get(&domain).cloned().or_else(by_mx) else {
            return false;
        };
        destination.connections.available_permits() == 0 || destination.bucket.try_lock().is_err()
    }

    /// Waits for a connection to the destination and for its rate; `None`
    /// at shutdown. Returns with whether it waited.
    pub async fn admit(
        &self,
        resolved: &Resolved,
        shutdown: &CancellationToken,
    ) -> Option<(Admission, bool)> {
        let destination = &resolved.destination;
        let mut waited = false;
        let permit = match destination.connections.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                waited = true;
                tokio::select! {
                    permit = destination.connections.clone().acquire_owned() => permit.ok()?,
                    _ = shutdown.cancelled() => return None,
                }
            }
        };
        let mut lease = None;
        // The rate's first answer, when Redis gave it with the lease.
        let mut first_rate_wait = None;
        if let Some(shared) = &self.shared {
            shared.started().await;
            loop {
                match shared
                    .lease(
                        &destination.name,
                        &destination.rule,
                        destination.limit,
                        destination.rate,
                    )
                    .await
                {
                    LeaseAnswer::Granted(granted, rate_wait) => {
                        lease = Some(granted);
                        first_rate_wait = rate_wait;
                        break;
                    }
                    LeaseAnswer::Unavailable => break,
                    LeaseAnswer::Full => {
                        waited = true;
                        tokio::select! {
                            _ = tokio::time::sleep(LEASE_POLL) => {}
                            _ = shutdown.cancelled() => return None,
                        }
                    }
                }
            }
        }
        if let Some(rate) = destination.rate {
            let started = Instant::now();
            // Waiting counts (the message is read again before delivery)
            // only when another delivery had the bucket or the rate made
            // this one sleep, not for a busy machine's scheduling delay.
            let mut bucket = match destination.bucket.try_lock() {
                Ok(bucket) => bucket,
                Err(_) => {
                    waited = true;
                    tokio::select! {
                        bucket = destination.bucket.lock() => bucket,
                        _ = shutdown.cancelled() => return None,
                    }
                }
            };
            loop {
                let shared_wait = match (&self.shared, first_rate_wait.take()) {
                    (_, Some(wait)) => Some(wait),
                    (Some(shared), None) => {
                        shared
                            .rate_wait(&destination.name, &destination.rule, rate)
                            .await
                    }
                    (None, None) => None,
                };
                let wait = shared_wait.unwrap_or_else(|| bucket.take(rate, Instant::now()));
                if wait.is_zero() {
                    break;
                }
                waited = true;
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return None,
                }
            }
            drop(bucket);
            destination
                .rate_wait
                .inc_by(started.elapsed().as_secs_f64());
        }
        destination.in_use.inc();
        Some((
            Admission {
                _permit: permit,
                _lease: lease,
                destination: destination.clone(),
                per_connection: resolved.rule.messages_per_connection.map(|n| n.get()),
            },
            waited,
        ))
    }

    /// After a transaction under `resolved`: counts it when sent, and suspends the
    /// destination when a reply matches the rule's `suspend_on`.
    pub async fn after(&self, resolved: &Resolved, attempts: &[Attempt]) {
        let destination = &resolved.destination;
        if attempts
            .iter()
            .any(|attempt| attempt.verdict == Verdict::Sent)
        {
            destination.sent.inc();
        }
        if resolved.rule.suspend_on.is_empty() {
            return;
        }
        let Some(trigger) = attempts.iter().find(|attempt| {
            attempt.verdict != Verdict::Sent && resolved.rule.suspends_on(&attempt.reply)
        }) else {
            return;
        };
        let until = Utc::now()
            + chrono::Duration::from_std(resolved.rule.suspend_for)
                .unwrap_or(chrono::Duration::hours(1));
        match self
            .suspend(&destination.name, until, trigger.reply.clone())
            .await
        {
            Ok(_) => tracing::warn!(
                destination = %destination.name,
                rule = %destination.rule,
                until = %until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                reply = ?trigger.reply,
                "destination suspended by its reply"
            ),
            Err(error) => {
                tracing::error!(destination = %destination.name, %error, "cannot store the suspension");
            }
        }
    }

    /// The suspension in force for recipient `domain` (or its destination),
    /// if any.
    pub fn suspended(&self, domain: &str, resolved: Option<&Resolved>) -> Option<Suspension> {
        let domain = domain.to_ascii_lowercase();
        let mut names = vec![domain.as_str()];
        if let Some(resolved) = resolved
            && resolved.destination.name != domain
        {
            names.push(&resolved.destination.name);
        }
        let now = Utc::now();
        for name in names {
            let local = lock(&self.suspensions).get(name).map(|(s, _)| s.clone());
            let found = local.or_else(|| {
                self.shared
                    .as_ref()
                    .filter(|shared| shared.is_up())
                    .and_then(|shared| shared.suspension(name))
            });
            if let Some(suspension) = found.filter(|s| s.until > now) {
                return Some(suspension);
            }
        }
        None
    }

    /// The suspension in force for recipient `domain`, or for the MX
    /// suffix destination it was last delivered under (no lookups).
    pub fn suspended_as_known(&self, domain: &str) -> Option<Suspension> {
        let domain = domain.to_ascii_lowercase();
        let suffix = {
            let destinations = lock(&self.destinations);
            let cache = lock(&self.mx_hosts);
            cache.get(&domain).and_then(|(hosts, _)| {
                destinations
                    .values()
                    .filter(|destination| destination.name.starts_with('.'))
                    .filter(|destination| {
                        hosts.iter().any(|host| host.ends_with(&destination.name))
                    })
                    .max_by_key(|destination| destination.name.len())
                    .cloned()
            })
        };
        match suffix {
            Some(destination) => {
                let resolved = Resolved {
                    rule: ShapingRule {
                        key: ShapingKey::MxSuffix(destination.name.clone()),
                        connections: None,
                        messages_per_connection: None,
                        rate: None,
                        suspend_on: Vec::new(),
                        suspend_for: crate::config::DEFAULT_SUSPEND_FOR,
                    },
                    destination,
                };
                self.suspended(&domain, Some(&resolved))
            }
            None => self.suspended(&domain, None),
        }
    }

    /// Suspends `destination` until `until`: in memory, in the spool, and
    /// in Redis when shared. Durable on return (the spool part).
    pub async fn suspend(
        &self,
        destination: &str,
        until: DateTime<Utc>,
        reason: String,
    ) -> Result<Suspension, sluice_queue::QueueError> {
        let suspension = Suspension {
            destination: normalize(destination),
            until,
            reason,
        };
        self.queue.suspend(&suspension).await?;
        let mut event = crate::events::Event::new("suspended", "");
        event.destination = Some(suspension.destination.clone());
        event.reply = Some(crate::events::reply_object(&suspension.reason));
        crate::events::record(&self.queue, event);
        lock(&self.suspensions).insert(suspension.destination.clone(), (suspension.clone(), false));
        self.metrics
            .suspended
            .get_or_create(&metrics::destination(&suspension.destination))
            .set(1);
        if let Some(shared) = &self.shared
            && shared.suspend(&suspension).await
            && let Some(entry) = lock(&self.suspensions).get_mut(&suspension.destination)
        {
            entry.1 = true;
        }
        Ok(suspension)
    }

    /// Ends the suspension of `destination` (here, in the spool and in
    /// Redis) and makes its put-off mail due; true when there was one.
    pub async fn resume(&self, destination: &str) -> Result<bool, sluice_queue::QueueError> {
        let destination = normalize(destination);
        let local = lock(&self.suspensions).remove(&destination).is_some();
        let stored = self.queue.resume(&destination).await?;
        let mut shared_had = false;
        if let Some(shared) = &self.shared {
            shared_had = shared.suspension(&destination).is_some();
            shared.resume(&destination).await;
        }
        self.metrics
            .suspended
            .get_or_create(&metrics::destination(&destination))
            .set(0);
        let resumed = local || stored || shared_had;
        if resumed {
            let mut event = crate::events::Event::new("resumed", "");
            event.destination = Some(destination.clone());
            crate::events::record(&self.queue, event);
            self.wake_postponed(&destination).await;
        }
        Ok(resumed)
    }

    /// Makes the mail put off for `destination` due now (after a
    /// resume): the unheld messages with a recipient whose last reply is
    /// the note [`postpone_note`] wrote for it. Reads every record, on the
    /// blocking pool.
    pub async fn wake_postponed(&self, destination: &str) {
        let queue = self.queue.clone();
        let marker = format!("delivery to {destination} suspended until");
        let ids = tokio::task::spawn_blocking(move || {
            let mut ids = Vec::new();
            for message in queue.iter(None).flatten() {
                let put_off = message.recipients.iter().any(|recipient| {
                    recipient
                        .last_reply
                        .as_deref()
                        .is_some_and(|reply| reply.contains(&marker))
                });
                if put_off && !message.held {
                    ids.push(message.id.clone());
                }
            }
            ids
        })
        .await
        .unwrap_or_default();
        for id in ids {
            if let Err(error) = self.queue.retry_now(&id).await {
                tracing::debug!(queue_id = %id, %error, "cannot make a put-off message due");
            }
        }
    }

    /// Every suspension in force, soonest to end first. Expired ones are
    /// dropped (and their metric set to 0).
    pub fn list(&self) -> Vec<Suspension> {
        let now = Utc::now();
        let mut expired = Vec::new();
        let mut all: HashMap<String, Suspension> = HashMap::new();
        {
            let mut ours = lock(&self.suspensions);
            ours.retain(|destination, (suspension, _)| {
                if suspension.until > now {
                    all.insert(destination.clone(), suspension.clone());
                    true
                } else {
                    expired.push(destination.clone());
                    false
                }
            });
        }
        if let Some(shared) = self.shared.as_ref().filter(|shared| shared.is_up()) {
            for suspension in shared.suspensions() {
                if suspension.until > now {
                    all.entry(suspension.destination.clone())
                        .or_insert(suspension);
                }
            }
        }
        for destination in expired {
            if !all.contains_key(&destination) {
                self.metrics
                    .suspended
                    .get_or_create(&metrics::destination(&destination))
                    .set(0);
            }
        }
        let mut list: Vec<Suspension> = all.into_values().collect();
        list.sort_by(|a, b| {
            a.until
                .cmp(&b.until)
                .then(a.destination.cmp(&b.destination))
        });
        list
    }
}

/// The last reply noted on recipients put off by `suspension` (what
/// `queue show` displays, and what [`Shaper::wake_postponed`] looks for).
pub fn postpone_note(suspension: &Suspension) -> String {
    format!(
        "4.7.0 delivery to {} suspended until {}: {}",
        suspension.destination,
        suspension
            .until
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        suspension.reason
    )
}

/// A destination as stored: lower case, no trailing dot.
pub fn normalize(destination: &str) -> String {
    destination
        .trim()
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// A destination name an operator may give: a domain, an MX suffix
/// (".google.com") or an address literal's text; no spaces or slashes.
pub fn valid_destination(destination: &str) -> bool {
    let name = normalize(destination);
    !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '*'))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
