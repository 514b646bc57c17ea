//! Connection reuse: idle SMTP connections kept for a short while so the
//! next message to the same host skips connect, greeting, EHLO and TLS (as
//! Postfix's connection cache does).
//!
//! A connection is keyed by everything that shaped its session: address,
//! host name (TLS identity), TLS mode and AUTH user. It goes back to the pool
//! only after a clean transaction, and is closed after `MAX_IDLE` or
//! `MAX_TRANSACTIONS` (or a shaping rule's `messages_per_connection`, see
//! [`Shaped`]). Under a shaping rule, idle connections count against the
//! destination's connection limit: [`Pool::make_room`] closes one before a
//! new connection would exceed it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::client::Connection;
use super::tls::TlsMode;

/// How long an idle connection is kept.
pub const MAX_IDLE: Duration = Duration::from_secs(5);
/// Transactions after which a connection is closed rather than reused.
pub const MAX_TRANSACTIONS: u32 = 200;

/// What a shaping rule asks of the connections one delivery uses: given
/// by the attempt to [`Pool::put`] and [`Pool::make_room`].
#[derive(Clone)]
pub struct Shaped {
    /// Transactions after which a connection is closed (the rule's
    /// `messages_per_connection`), instead of [`MAX_TRANSACTIONS`].
    pub per_connection: Option<u32>,
    /// The destination the delivery counts against.
    pub destination: Arc<str>,
    /// Its connection limit.
    pub limit: usize,
    /// Its transactions in progress (permits taken of `limit`).
    pub in_use: Arc<Semaphore>,
}

/// One idle connection.
struct Idle {
    connection: Connection,
    since: Instant,
    /// The shaped destination it was last used for.
    destination: Option<Arc<str>>,
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
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    /// Wakes the reaper when the pool stops being empty.
    filled: Notify,
    /// Most idle connections kept per key.
    per_key: usize,
    /// Connections of shaped destinations being closed (QUIT sent, not yet
    /// answered): they still count against the destination's limit.
    closing: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    /// Signalled when one of those is closed.
    closed: Arc<Notify>,
}

/// The longest [`Pool::make_room`] waits for connections being closed
/// before it lets a new one open anyway.
const CLOSING_WAIT: Duration = Duration::from_secs(2);

impl Pool {
    /// An empty pool keeping at most `per_key` idle connections per key.
    pub fn new(per_key: usize) -> Pool {
        Pool {
            idle: Mutex::new(HashMap::new()),
            filled: Notify::new(),
            per_key: per_key.max(1),
            closing: Arc::new(Mutex::new(HashMap::new())),
            closed: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Vec<Idle>>> {
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
        while let Some(idle) = connections.pop() {
            if now.duration_since(idle.since) < MAX_IDLE {
                found = Some(idle.connection);
                break;
            }
            self.close(idle.connection, idle.destination);
        }
        if connections.is_empty() {
            idle.remove(key);
        }
        found
    }

    /// Returns a connection after a clean transaction; closes it instead when
    /// it is not [usable](Connection::is_usable), has done enough, or the key
    /// already has enough idle ones.
    /// `shaped` is the shaping rule the transaction ran under, if any.
    pub fn put(&self, key: PoolKey, connection: Connection, shaped: Option<&Shaped>) {
        let limit = shaped
            .and_then(|shaped| shaped.per_connection)
            .unwrap_or(MAX_TRANSACTIONS)
            .min(MAX_TRANSACTIONS);
        let destination = shaped.map(|shaped| shaped.destination.clone());
        if !connection.is_usable() || connection.transactions() >= limit {
            self.close(connection, destination);
            return;
        }
        let mut idle = self.lock();
        let connections = idle.entry(key).or_default();
        if connections.len() >= self.per_key {
            drop(idle);
            self.close(connection, destination);
            return;
        }
        connections.push(Idle {
            connection,
            since: Instant::now(),
            destination,
        });
        drop(idle);
        self.filled.notify_one();
    }

    /// Before a new connection is opened under a shaping rule: closes idle
    /// connections of the same destination (oldest first) while they and
    /// the transactions in progress (this one included) would exceed the
    /// destination's connection limit, and waits for them to close. Does
    /// nothing outside a rule.
    pub async fn make_room(&self, shaped: Option<&Shaped>) {
        let Some(shaped) = shaped else {
            return;
        };
        let deadline = tokio::time::Instant::now() + CLOSING_WAIT;
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            let closing = lock(&self.closing)
                .get(&shaped.destination)
                .copied()
                .unwrap_or(0);
            let victim = {
                let mut idle = self.lock();
                let in_progress = shaped
                    .limit
                    .saturating_sub(shaped.in_use.available_permits());
                let mut oldest: Option<(PoolKey, usize, Instant)> = None;
                let mut count = 0;
                for (key, connections) in idle.iter() {
                    for (position, entry) in connections.iter().enumerate() {
                        if entry.destination.as_deref() != Some(&*shaped.destination) {
                            continue;
                        }
                        count += 1;
                        if oldest
                            .as_ref()
                            .is_none_or(|(_, _, since)| entry.since < *since)
                        {
                            oldest = Some((key.clone(), position, entry.since));
                        }
                    }
                }
                if count + closing + in_progress <= shaped.limit {
                    break;
                }
                match oldest {
                    Some((key, position, _)) => {
                        let connections = idle.get_mut(&key).expect("the key was just seen");
                        let entry = connections.remove(position);
                        if connections.is_empty() {
                            idle.remove(&key);
                        }
                        Some(entry.connection)
                    }
                    None => None,
                }
            };
            match victim {
                Some(connection) => connection.quit().await,
                // Only connections being closed are in the way: wait for
                // them (not forever: a QUIT is bounded by the command
                // timeout, and this wait by CLOSING_WAIT).
                None => {
                    if tokio::time::timeout_at(deadline, closed).await.is_err() {
                        break;
                    }
                }
            }
        }
    }

    /// Closes idle connections older than [`MAX_IDLE`]; true when some remain.
    fn reap(&self) -> bool {
        let mut idle = self.lock();
        let now = Instant::now();
        idle.retain(|_, connections| {
            let (stale, fresh): (Vec<_>, Vec<_>) = std::mem::take(connections)
                .into_iter()
                .partition(|idle| now.duration_since(idle.since) >= MAX_IDLE);
            for idle in stale {
                self.close(idle.connection, idle.destination);
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
            for idle in connections {
                close_later(idle.connection);
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

impl Pool {
    /// Closes `connection` in the background; one of a shaped
    /// `destination` counts against its limit until it is closed.
    fn close(&self, connection: Connection, destination: Option<Arc<str>>) {
        let Some(destination) = destination else {
            close_later(connection);
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        *lock(&self.closing).entry(destination.clone()).or_default() += 1;
        let closing = self.closing.clone();
        let closed = self.closed.clone();
        runtime.spawn(async move {
            connection.quit().await;
            let mut closing = lock(&closing);
            if let Some(count) = closing.get_mut(&destination) {
                *count -= 1;
                if *count == 0 {
                    closing.remove(&destination);
                }
            }
            drop(closing);
            closed.notify_waiters();
        });
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn close_later(connection: Connection) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(connection.quit());
    }
}
