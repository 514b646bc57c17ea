//! Limits shared by several nodes through Redis (`[cluster] redis`).
//!
//! - Rates: one Lua script per decision runs GCRA on Redis's own clock, so
//!   every node draws from one bucket per destination.
//! - Connections: a sorted set per destination of leases (member = node
//!   and lease number, score = expiry). A node renews its live leases every
//!   [`RENEW_EVERY`]; those of a node that crashed expire after
//!   [`LEASE_TTL`] and their share comes back.
//! - Suspensions: one hash, destination -> JSON, read every
//!   [`REFRESH_EVERY`] by every node.
//!
//! Every call is bounded by [`CALL_TIMEOUT`]. A failure switches the node to
//! its local limits (logged once, counted in `sluice_shaping_redis_errors`
//! and shown by `sluice_shaping_redis_fallback`) until a probe succeeds
//! again: accepting and delivering never wait for Redis.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use sluice_queue::Suspension;
use tokio_util::sync::CancellationToken;

use super::metrics::{self, ShapingMetrics};
use crate::config::Rate;

/// The longest a Redis call may take before the node falls back.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// The longest wait for a rate token a Redis answer may impose: the
/// answer is a number Redis sends, and a wrong one (a bug, a clock jump,
/// a hostile server) must not park deliveries for ever.
pub const MAX_ANSWERED_WAIT: Duration = Duration::from_secs(300);
/// How long a connection lease lives without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often live leases are renewed.
pub const RENEW_EVERY: Duration = Duration::from_secs(10);
/// How often shared suspensions are read, and Redis probed while down.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// The `rule` label of Redis errors outside a rule's decision.
const NO_RULE: &str = "-";

/// The hash holding shared suspensions.
const SUSPENSIONS_KEY: &str = "sluice:suspensions";

/// One admission decision, atomically: a connection lease when asked,
/// then a rate token when asked (GCRA on Redis's clock). Returns -1 when
/// every lease is taken (nothing changed), else the microseconds to wait
/// for the rate (0: the token was taken, or no rate was asked; a lease
/// asked for is then held either way).
/// KEYS[1]: the lease set; KEYS[2]: the rate bucket. ARGV: lease limit (0:
/// no lease), member, lease ttl (ms), rate interval (µs; 0: no rate), burst.
const ADMIT_SCRIPT: &str = r"
local time = redis.call('TIME')
local limit = tonumber(ARGV[1])
if limit > 0 then
  local ttl = tonumber(ARGV[3])
  local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
  if redis.call('ZCARD', KEYS[1]) >= limit then
    return -1
  end
  redis.call('ZADD', KEYS[1], now_ms + ttl, ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
end
local interval = tonumber(ARGV[4])
if interval == 0 then
  return 0
end
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tolerance = interval * (tonumber(ARGV[5]) - 1)
local tat = tonumber(redis.call('GET', KEYS[2]) or now)
if tat < now then tat = now end
local allowed_from = tat - tolerance
if now >= allowed_from then
  local next = tat + interval
  redis.call('SET', KEYS[2], string.format('%d', next), 'PX', math.floor((next - now) / 1000) + 1000)
  return 0
end
return math.floor(allowed_from - now) + 1
";

/// Pushes the expiry of a live lease. KEYS[1]: the set; ARGV: member, ttl.
const RENEW_SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return 1
";

/// The scripts, their SHA1 digests computed once (each call sends
/// EVALSHA, loading the script on a NOSCRIPT answer).
static ADMIT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(ADMIT_SCRIPT));
static RENEW: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RENEW_SCRIPT));

/// The sorted set of `destination`'s connection leases.
fn leases_key(destination: &str) -> String {
    format!("sluice:connections:{destination}")
}

/// Whether Redis is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Health {
    /// Not reached yet.
    Starting = 0,
    /// Limits are shared.
    Up = 1,
    /// Limits are local until a probe succeeds.
    Down = 2,
}

/// The answer to a lease request.
pub enum LeaseAnswer {
    /// Granted; released when dropped. With the rate asked for too, how
    /// long to wait for it (zero: the token was taken).
    Granted(Lease, Option<Duration>),
    /// Every lease of the destination is taken (by any node).
    Full,
    /// Redis is not in use now: go by the local limit.
    Unavailable,
}

/// The shared side of the limits.
pub struct Shared {
    client: redis::Client,
    node: String,
    connection: Mutex<Option<MultiplexedConnection>>,
    health: AtomicU8,
    next_lease: AtomicU64,
    /// This node's live leases: number -> (set key, member).
    leases: Mutex<HashMap<u64, (String, String)>>,
    /// The shared suspensions as last read.
    suspensions: Mutex<HashMap<String, Suspension>>,
    metrics: Arc<ShapingMetrics>,
}

impl Shared {
    /// A handle on `url` for node `node`; connects in [`Shared::run`].
    pub fn new(url: &str, node: &str, metrics: Arc<ShapingMetrics>) -> anyhow::Result<Shared> {
        let client = redis::Client::open(url)
            .map_err(|error| anyhow::anyhow!("cluster.redis {url:?}: {error}"))?;
        Ok(Shared {
            client,
            node: node.to_string(),
            connection: Mutex::new(None),
            health: AtomicU8::new(Health::Starting as u8),
            next_lease: AtomicU64::new(0),
            leases: Mutex::new(HashMap::new()),
            suspensions: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    fn health(&self) -> Health {
        match self.health.load(Ordering::Relaxed) {
            1 => Health::Up,
            2 => Health::Down,
            _ => Health::Starting,
        }
    }

    /// True while limits are shared.
    pub fn is_up(&self) -> bool {
        self.health() == Health::Up
    }

    /// Waits (at most a connection timeout and a bit) for the first try to
    /// reach Redis, so that a node starting with a backlog does not spend
    /// its first moments on local limits.
    pub async fn started(&self) {
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT * 3;
        while self.health() == Health::Starting && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn connection(&self) -> Option<MultiplexedConnection> {
        if !self.is_up() {
            return None;
        }
        lock(&self.connection).clone()
    }

    /// Records a failed call (for `rule`) and falls back, logging the
    /// change once.
    fn failed(&self, rule: &str, error: &str) {
        self.metrics
            .redis_errors
            .get_or_create(&metrics::rule(rule))
            .inc();
        *lock(&self.connection) = None;
        let before = self.health.swap(Health::Down as u8, Ordering::Relaxed);
        if before != Health::Down as u8 {
            self.metrics.redis_fallback.set(1);
            tracing::warn!(%error, "Redis for shared limits unreachable; using local limits");
        }
    }

    /// Runs a call with the timeout; `None` (after [`Shared::failed`]) on
    /// any failure.
    async fn call<T>(
        &self,
        rule: &str,
        call: impl AsyncFnOnce(MultiplexedConnection) -> redis::RedisResult<T>,
    ) -> Option<T> {
        let connection = self.connection()?;
        match tokio::time::timeout(CALL_TIMEOUT, call(connection)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                self.failed(rule, &error.to_string());
                None
            }
            Err(_) => {
                self.failed(rule, "timed out");
                None
            }
        }
    }

    /// How long to wait for `rate` at `destination` (zero: a token was
    /// taken); `None` when Redis is not in use.
    pub async fn rate_wait(&self, destination: &str, rule: &str, rate: Rate) -> Option<Duration> {
        let micros = self.admit(destination, rule, None, Some(rate)).await?;
        Some(answered_wait(micros))
    }

    /// Asks for one of `limit` connection leases to `destination` and, with
    /// `rate`, for a rate token in the same call.
    pub async fn lease(
        self: &Arc<Self>,
        destination: &str,
        rule: &str,
        limit: usize,
        rate: Option<Rate>,
    ) -> LeaseAnswer {
        if !self.is_up() {
            return LeaseAnswer::Unavailable;
        }
        let number = self.next_lease.fetch_add(1, Ordering::Relaxed);
        let member = format!("{}:{}:{number}", self.node, std::process::id());
        let answer = self
            .admit(destination, rule, Some((limit, member.clone())), rate)
            .await;
        match answer {
            None => LeaseAnswer::Unavailable,
            Some(micros) if micros < 0 => LeaseAnswer::Full,
            Some(micros) => {
                let key = leases_key(destination);
                lock(&self.leases).insert(number, (key, member));
                LeaseAnswer::Granted(
                    Lease {
                        shared: self.clone(),
                        number,
                    },
                    rate.map(|_| answered_wait(micros)),
                )
            }
        }
    }

    /// One run of [`ADMIT_SCRIPT`]: a lease (`limit`, member) and a rate
    /// token as asked.
    async fn admit(
        &self,
        destination: &str,
        rule: &str,
        lease: Option<(usize, String)>,
        rate: Option<Rate>,
    ) -> Option<i64> {
        let (limit, member) = lease.unwrap_or_default();
        let (interval, burst) = rate.map_or((0, 1), |rate| {
            (rate.interval().as_micros() as u64, rate.burst())
        });
        let (leases, bucket) = (
            leases_key(destination),
            format!("sluice:rate:{destination}"),
        );
        let ttl = LEASE_TTL.as_millis() as u64;
        self.call(rule, async move |mut connection| {
            ADMIT
                .key(leases)
                .key(bucket)
                .arg(limit)
                .arg(member)
                .arg(ttl)
                .arg(interval)
                .arg(burst)
                .invoke_async(&mut connection)
                .await
        })
        .await
    }

    /// Stores a suspension for every node (best effort).
    pub async fn suspend(&self, suspension: &Suspension) -> bool {
        let Ok(value) = serde_json::to_string(suspension) else {
            return false;
        };
        let field = suspension.destination.clone();
        let stored = self
            .call(NO_RULE, async move |mut connection| {
                redis::cmd("HSET")
                    .arg(SUSPENSIONS_KEY)
                    .arg(field)
                    .arg(value)
                    .query_async::<()>(&mut connection)
                    .await
            })
            .await
            .is_some();
        if stored {
            lock(&self.suspensions).insert(suspension.destination.clone(), suspension.clone());
        }
        stored
    }

    /// Ends a suspension for every node (best effort).
    pub async fn resume(&self, destination: &str) -> bool {
        lock(&self.suspensions).remove(destination);
        let field = destination.to_string();
        self.call(NO_RULE, async move |mut connection| {
            redis::cmd("HDEL")
                .arg(SUSPENSIONS_KEY)
                .arg(field)
                .query_async::<()>(&mut connection)
                .await
        })
        .await
        .is_some()
    }

    /// The shared suspensions as last read (expired ones included).
    pub fn suspensions(&self) -> Vec<Suspension> {
        lock(&self.suspensions).values().cloned().collect()
    }

    /// The shared suspension of `destination`, as last read.
    pub fn suspension(&self, destination: &str) -> Option<Suspension> {
        lock(&self.suspensions).get(destination).cloned()
    }

    /// Connects, then until shutdown: reads the shared suspensions, renews
    /// leases, and probes Redis while it is down. `pushed` is called after
    /// each successful read with what it found (the shaper reconciles its
    /// own suspensions with it).
    pub async fn run(
        self: Arc<Self>,
        shutdown: CancellationToken,
        mut refreshed: impl FnMut(&HashMap<String, Suspension>),
    ) {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            if !self.is_up() {
                self.connect().await;
            }
            if self.is_up() {
                if let Some(found) = self.read_suspensions().await {
                    refreshed(&found);
                    *lock(&self.suspensions) = found;
                }
                if last_renewal.elapsed() >= RENEW_EVERY {
                    self.renew().await;
                    last_renewal = tokio::time::Instant::now();
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(REFRESH_EVERY) => {}
            }
        }
    }

    async fn connect(&self) {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(CALL_TIMEOUT)
            .set_response_timeout(CALL_TIMEOUT);
        let attempt = async {
            let mut connection = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("PING")
                .query_async::<()>(&mut connection)
                .await?;
            Ok::<_, redis::RedisError>(connection)
        };
        match tokio::time::timeout(CALL_TIMEOUT * 2, attempt).await {
            Ok(Ok(connection)) => {
                *lock(&self.connection) = Some(connection);
                let before = self.health.swap(Health::Up as u8, Ordering::Relaxed);
                self.metrics.redis_fallback.set(0);
                if before == Health::Down as u8 {
                    tracing::info!("Redis for shared limits reachable again; limits are shared");
                } else {
                    tracing::info!("limits shared through Redis");
                }
            }
            Ok(Err(error)) => self.failed(NO_RULE, &error.to_string()),
            Err(_) => self.failed(NO_RULE, "connecting timed out"),
        }
    }

    async fn read_suspensions(&self) -> Option<HashMap<String, Suspension>> {
        let raw: HashMap<String, String> = self
            .call(NO_RULE, async move |mut connection| {
                redis::cmd("HGETALL")
                    .arg(SUSPENSIONS_KEY)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        let now = chrono::Utc::now();
        let mut found = HashMap::new();
        let mut expired = Vec::new();
        for (destination, value) in raw {
            match serde_json::from_str::<Suspension>(&value) {
                Ok(suspension) if suspension.until > now => {
                    found.insert(destination, suspension);
                }
                _ => expired.push(destination),
            }
        }
        if !expired.is_empty() {
            self.call(NO_RULE, async move |mut connection| {
                redis::cmd("HDEL")
                    .arg(SUSPENSIONS_KEY)
                    .arg(expired)
                    .query_async::<()>(&mut connection)
                    .await
            })
            .await;
        }
        Some(found)
    }

    async fn renew(&self) {
        let leases: Vec<(String, String)> = lock(&self.leases).values().cloned().collect();
        let ttl = LEASE_TTL.as_millis() as u64;
        for (key, member) in leases {
            let renewed = self
                .call(NO_RULE, async move |mut connection| {
                    RENEW
                        .key(key)
                        .arg(member)
                        .arg(ttl)
                        .invoke_async::<i64>(&mut connection)
                        .await
                })
                .await;
            if renewed.is_none() {
                break;
            }
        }
    }
}

/// A shared connection lease, given back when dropped.
pub struct Lease {
    shared: Arc<Shared>,
    number: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some((key, member)) = lock(&self.shared.leases).remove(&self.number) else {
            return;
        };
        let Some(mut connection) = self.shared.connection() else {
            // Down: the lease expires by itself.
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(
                    CALL_TIMEOUT,
                    redis::cmd("ZREM")
                        .arg(key)
                        .arg(member)
                        .query_async::<()>(&mut connection),
                )
                .await;
            });
        }
    }
}

/// The wait a Redis answer asks for, in microseconds, at most
/// [`MAX_ANSWERED_WAIT`].
fn answered_wait(micros: i64) -> Duration {
    Duration::from_micros(micros.max(0).unsigned_abs()).min(MAX_ANSWERED_WAIT)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
