//! Connection reuse: idle SMTP connections kept for a short while so the
//! next message to the same host skips connect, greeting, EHLO and TLS (as
//! Postfix's connection cache does).
//!
//! A connection is keyed by everything that shaped its session: address,
//! host name (TLS identity), TLS mode and AUTH user. It goes back to the pool
//! only after a clean transaction, and is closed after `MAX_IDLE` or
//! `MAX_TRANSACTIONS` (or a shaping rule's `messages_per_connection`, see
//! [`with_transaction_limit`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::client::Connection;
use super::tls::TlsMode;

/// How long an idle connection is kept.
pub const MAX_IDLE: Duration = Duration::from_secs(5);
/// Transactions after which a connection is closed rather than reused.
pub const MAX_TRANSACTIONS: u32 = 200;

tokio::task_local! {
    /// The `messages_per_connection` of the shaping rule a delivery runs
    /// under: set around it by the scheduler, read by [`Pool::put`].
    static TRANSACTION_LIMIT: u32;
}

/// Runs `delivery` with connections closed after `limit` transactions
/// (a shaping rule's `messages_per_connection`) instead of
/// [`MAX_TRANSACTIONS`].
pub async fn with_transaction_limit<F: Future>(limit: Option<u32>, delivery: F) -> F::Output {
    match limit {
        Some(limit) => TRANSACTION_LIMIT.scope(limit, delivery).await,
        None => delivery.await,
    }
}

/// What a pooled connection was set up for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The remote address.
    pub address: SocketAddr,
    /// The host name the session was opened for (TLS identity).
    pub host: String,
    /// The TLS mode it was opened with.
    pub tls: TlsMode,
    /// The AUTH user, when authenticated.
    pub auth_user: Option<String>,
}

/// Idle connections by key.
pub struct Pool {
    idle: Mutex<HashMap<PoolKey, Vec<(Connection, Instant)>>>,
    /// Wakes the reaper when the pool stops being empty.
    filled: Notify,
    /// Most idle connections kept per key.
    per_key: usize,
}

impl Pool {
    /// An empty pool keeping at most `per_key` idle connections per key.
    pub fn new(per_key: usize) -> Pool {
        Pool {
            idle: Mutex::new(HashMap::new()),
            filled: Notify::new(),
            per_key: per_key.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Vec<(Connection, Instant)>>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// An idle connection for `key` that is still fresh, if any.
    pub fn take(&self, key: &PoolKey) -> Option<Connection> {
        let mut idle = self.lock();
        let connections = idle.get_mut(key)?;
        let now = Instant::now();
        let mut found = None;
        while let Some((connection, since)) = connections.pop() {
            if now.duration_since(since) < MAX_IDLE {
                found = Some(connection);
                break;
            }
            close_later(connection);
        }
        if connections.is_empty() {
            idle.remove(key);
        }
        found
    }

    /// Returns a connection after a clean transaction; closes it instead when
    /// it is not [usable](Connection::is_usable), has done enough, or the key
    /// already has enough idle ones.
    pub fn put(&self, key: PoolKey, connection: Connection) {
        let limit = TRANSACTION_LIMIT
            .try_with(|limit| *limit)
            .unwrap_or(MAX_TRANSACTIONS)
            .min(MAX_TRANSACTIONS);
        if !connection.is_usable() || connection.transactions() >= limit {
            close_later(connection);
            return;
        }
        let mut idle = self.lock();
        let connections = idle.entry(key).or_default();
        if connections.len() >= self.per_key {
            drop(idle);
            close_later(connection);
            return;
        }
        connections.push((connection, Instant::now()));
        drop(idle);
        self.filled.notify_one();
    }

    /// Closes idle connections older than [`MAX_IDLE`]; true when some remain.
    fn reap(&self) -> bool {
        let mut idle = self.lock();
        let now = Instant::now();
        idle.retain(|_, connections| {
            let (stale, fresh): (Vec<_>, Vec<_>) = std::mem::take(connections)
                .into_iter()
                .partition(|(_, since)| now.duration_since(*since) >= MAX_IDLE);
            for (connection, _) in stale {
                close_later(connection);
            }
            *connections = fresh;
            !connections.is_empty()
        });
        !idle.is_empty()
    }

    /// Closes every idle connection.
    fn drain(&self) {
        let mut idle = self.lock();
        for (_, connections) in idle.drain() {
            for (connection, _) in connections {
                close_later(connection);
            }
        }
    }

    /// Closes stale connections until shutdown. Sleeps without waking while
    /// the pool is empty, so an idle server uses no CPU.
    pub async fn run_reaper(&self, shutdown: CancellationToken) {
        loop {
            let filled = self.filled.notified();
            let remaining = self.reap();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = filled, if !remaining => {}
                _ = tokio::time::sleep(MAX_IDLE / 2), if remaining => {}
            }
        }
        self.drain();
    }
}

fn close_later(connection: Connection) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(connection.quit());
    }
}
