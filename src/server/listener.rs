//! Accepting connections: the connection limits of [`ConnectionLimits`]
//! (answered `421 4.7.0` at connect), the shutdown rule (after shutdown
//! starts, new connections get `421 4.3.2`), the PROXY header on listeners
//! behind a load balancer (`proxy_protocol`), and one task per connection on
//! the context's task tracker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument as _;

use crate::config::{ListenerConfig, ListenerKind};
use crate::server::connection::{self, Shared, closing_reply};
use crate::server::{Inbound, proxy};
use crate::smtp::counts::CommandCounts;
use crate::smtp::reply::Reply;
use crate::smtp::session::{LogReply, Session};

/// How long a `proxy_protocol` listener waits for the PROXY header: a load
/// balancer sends it at once.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts on `listener` until the task is aborted. Each connection is
/// served with the [`Inbound`] in force when it was accepted (a reload swaps
/// it). After shutdown starts, new connections are answered `421 4.3.2`
/// (`421 4.3.0` after a storage failure) and closed.
pub async fn accept_loop(
    listener: Arc<TcpListener>,
    settings: ListenerConfig,
    inbound: Arc<ArcSwap<Inbound>>,
) {
    let kind = settings.kind;
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
        let current = inbound.load_full();
        if settings.proxy_protocol {
            // The client is known only once the header is read: that, and
            // everything decided by the client, happens in its own task.
            tokio::spawn(async move {
                let mut stream = stream;
                let peer = match proxy::read_header(&mut stream, PROXY_HEADER_TIMEOUT).await {
                    Ok(source) => source.unwrap_or(peer),
                    Err(error) => {
                        tracing::info!(balancer = %peer, %error, "PROXY header refused, closing");
                        return;
                    }
                };
                admit(current, stream, peer, kind);
            });
            continue;
        }
        admit(current, stream, peer, kind);
    }
}

/// Serves `stream` from `peer` (the client, from the PROXY header when the
/// listener takes one) unless the shutdown rule or the connection limits
/// refuse it.
fn admit(current: Arc<Inbound>, stream: TcpStream, peer: SocketAddr, kind: ListenerKind) {
    let implicit_tls = kind == ListenerKind::Submissions;
    let (shared, limits) = (&current.shared, &current.limits);
    if shared.ctx.shutdown.is_cancelled() {
        let reply = closing_reply(&shared.ctx);
        log_refused_connection(peer, "shutting down, refused", &reply);
        tokio::spawn(refuse(stream, reply));
        return;
    }
    let Some(slot) = limits.try_acquire(peer.ip()) else {
        let reply = Session::too_many_connections(&shared.ctx.config().hostname);
        log_refused_connection(peer, "too many connections, refused", &reply);
        tokio::spawn(refuse(stream, reply));
        return;
    };
    let shared = shared.clone();
    let config = match kind {
        ListenerKind::Relay => shared.relay_config.clone(),
        ListenerKind::Submission | ListenerKind::Submissions => shared.submission_config.clone(),
    };
    let span = tracing::info_span!("smtp", peer = %peer);
    shared.ctx.tasks.clone().spawn(
        async move {
            let relay = kind == ListenerKind::Relay;
            if let Some(refusal) = shared
                .front_door
                .at_connect(&stream, peer.ip(), relay)
                .await
            {
                // Refused before the greeting, or gone during the pregreet wait.
                tracing::info!(client = %peer.ip(), "connect");
                if let Some(reply) = refusal {
                    refuse(stream, reply).await;
                }
                tracing::info!(client = %peer.ip(), "disconnect {}", CommandCounts::default());
                drop(slot);
                return;
            }
            let metrics = shared.ctx.metrics.clone();
            metrics.connections_active.inc();
            serve_counted(shared, stream, peer, config, implicit_tls).await;
            metrics.connections_active.dec();
            drop(slot);
        }
        .instrument(span),
    );
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

/// The lines of a connection refused at connect: `connect`, why with the
/// reply, and `disconnect` with no commands, as every connection has.
fn log_refused_connection(peer: SocketAddr, why: &str, reply: &Reply) {
    tracing::info!(client = %peer.ip(), "connect");
    tracing::info!(client = %peer.ip(), reply = %LogReply(reply), "{why}");
    tracing::info!(client = %peer.ip(), "disconnect {}", CommandCounts::default());
}

/// Answers a connection we will not serve, then closes it.
async fn refuse(mut stream: TcpStream, reply: Reply) {
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = stream.write_all(reply.to_wire().as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
