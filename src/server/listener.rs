//! Accepting connections: the connection limits (`max_connections`,
//! `max_connections_per_ip`, answered `421 4.7.0` at connect; an IPv6 client
//! counts by its /64), the shutdown rule (after shutdown starts, new
//! connections get `421 4.3.2`), and one task per connection on the
//! context's task tracker.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument as _;

use crate::config::ListenerKind;
use crate::server::connection::{self, Shared};
use crate::smtp::reply::Reply;
use crate::smtp::session::Session;

/// Connection counts, global (a semaphore) and per client address.
pub struct ConnectionLimits {
    global: Arc<Semaphore>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_per_ip: usize,
}

/// Held for as long as a connection is open; gives its slots back on drop.
pub struct ConnectionSlot {
    _global: OwnedSemaphorePermit,
    ip: IpAddr,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl ConnectionLimits {
    /// Limits of `max` connections in total and `max_per_ip` per address.
    pub fn new(max: usize, max_per_ip: usize) -> ConnectionLimits {
        ConnectionLimits {
            global: Arc::new(Semaphore::new(max)),
            per_ip: Arc::new(Mutex::new(HashMap::new())),
            max_per_ip,
        }
    }

    /// A slot for a connection from `ip`, or `None` when a limit is reached.
    /// The per-client count is by [`client_key`].
    pub fn try_acquire(&self, ip: IpAddr) -> Option<ConnectionSlot> {
        let ip = client_key(ip);
        let global = self.global.clone().try_acquire_owned().ok()?;
        let mut per_ip = self.per_ip.lock().ok()?;
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot {
            _global: global,
            ip,
            per_ip: self.per_ip.clone(),
        })
    }
}

/// The client a per-client limit counts: an IPv4 address as it is (also when
/// it arrives IPv4-mapped on an IPv6 socket), an IPv6 address by its /64
/// network, since one IPv6 host usually holds a whole /64 (RFC 7421) and
/// could otherwise take a fresh address for every connection.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Ok(mut per_ip) = self.per_ip.lock()
            && let Some(count) = per_ip.get_mut(&self.ip)
        {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// What a connection gets once shutdown started: `421 4.3.0` when the server
/// stops because the spool failed, else `421 4.3.2`.
pub(crate) fn closing_reply(ctx: &crate::context::Context) -> Reply {
    if ctx.queue.failure().is_some() {
        Session::storage_failure_reply()
    } else {
        Session::shutdown_reply()
    }
}

/// Accepts on `listener` until the task is aborted. After shutdown starts,
/// new connections are answered `421 4.3.2` (`421 4.3.0` after a storage
/// failure) and closed.
pub async fn accept_loop(
    listener: TcpListener,
    kind: ListenerKind,
    shared: Arc<Shared>,
    limits: Arc<ConnectionLimits>,
) {
    let config = match kind {
        ListenerKind::Relay => shared.relay_config.clone(),
        ListenerKind::Submission | ListenerKind::Submissions => shared.submission_config.clone(),
    };
    let implicit_tls = kind == ListenerKind::Submissions;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait a little rather
                // than spin; the listener itself stays usable.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if shared.ctx.shutdown.is_cancelled() {
            tokio::spawn(refuse(stream, closing_reply(&shared.ctx)));
            continue;
        }
        let Some(slot) = limits.try_acquire(peer.ip()) else {
            tracing::info!(client = %peer.ip(), "too many connections, refused");
            let reply = Session::too_many_connections(&shared.ctx.config.hostname);
            tokio::spawn(refuse(stream, reply));
            continue;
        };
        let shared = shared.clone();
        let config = config.clone();
        let span = tracing::info_span!("smtp", peer = %peer);
        shared.ctx.tasks.clone().spawn(
            async move {
                let metrics = shared.ctx.metrics.clone();
                metrics.connections_active.inc();
                serve_counted(shared, stream, peer, config, implicit_tls).await;
                metrics.connections_active.dec();
                drop(slot);
            }
            .instrument(span),
        );
    }
}

async fn serve_counted(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<crate::smtp::session::SessionConfig>,
    implicit_tls: bool,
) {
    tracing::debug!("connected");
    connection::serve(shared, stream, peer, config, implicit_tls).await;
    tracing::debug!("disconnected");
}

/// Answers a connection we will not serve, then closes it.
async fn refuse(mut stream: TcpStream, reply: Reply) {
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = stream.write_all(reply.to_wire().as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_limit_counts_and_releases() {
        let limits = ConnectionLimits::new(10, 2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let first = limits.try_acquire(ip).expect("first");
        let _second = limits.try_acquire(ip).expect("second");
        assert!(limits.try_acquire(ip).is_none());
        assert!(limits.try_acquire("192.0.2.2".parse().unwrap()).is_some());
        drop(first);
        assert!(limits.try_acquire(ip).is_some());
    }

    #[test]
    fn per_ip_limit_counts_an_ipv6_client_by_its_64_network() {
        // One IPv6 host usually holds a whole /64: counted per address, a
        // single client could open unlimited connections from new addresses.
        let limits = ConnectionLimits::new(10, 2);
        let _first = limits.try_acquire("2001:db8:1:2::1".parse().unwrap());
        let _second = limits.try_acquire("2001:db8:1:2::ffff:3".parse().unwrap());
        assert!(
            limits
                .try_acquire("2001:db8:1:2:abcd::9".parse().unwrap())
                .is_none()
        );
        assert!(
            limits
                .try_acquire("2001:db8:1:3::1".parse().unwrap())
                .is_some()
        );
    }

    #[test]
    fn per_ip_limit_counts_an_ipv4_mapped_client_as_its_ipv4_address() {
        let limits = ConnectionLimits::new(10, 1);
        let _v4 = limits
            .try_acquire("192.0.2.1".parse().unwrap())
            .expect("first");
        assert!(
            limits
                .try_acquire("::ffff:192.0.2.1".parse().unwrap())
                .is_none()
        );
        assert!(
            limits
                .try_acquire("::ffff:192.0.2.2".parse().unwrap())
                .is_some()
        );
    }

    #[test]
    fn global_limit_counts() {
        let limits = ConnectionLimits::new(1, 5);
        let _only = limits
            .try_acquire("192.0.2.1".parse().unwrap())
            .expect("first");
        assert!(limits.try_acquire("192.0.2.2".parse().unwrap()).is_none());
    }
}
