//! Inbound SMTP: the I/O around the pure `smtp` core.
//!
//! Modules, each depending only on those listed after it:
//! - `listener`: accepts connections, applies the connection limits and the
//!   shutdown rule, spawns one task per connection;
//! - `connection`: one connection's pump: reads bytes, feeds the session and
//!   the message intake, writes replies, stores messages in the queue;
//! - `sasl`: AUTH credential checks against `[[user]]`;
//! - `limits`: per-client counts (connections, AUTH failure delays);
//! - `tls`: the rustls server configuration.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ListenerKind};
use crate::context::Context;
use crate::policy::Policy;
use crate::smtp::session::SessionConfig;

pub mod connection;
pub mod limits;
pub mod listener;
pub mod sasl;
pub mod tls;

/// A bound `[[listener]]` socket and its kind.
pub type BoundListener = (tokio::net::TcpListener, ListenerKind);

/// The bound SMTP listeners.
pub struct Server {
    ctx: Context,
    listeners: Vec<BoundListener>,
    shared: Arc<connection::Shared>,
}

impl Server {
    /// Binds every `[[listener]]`. Called before the spool is opened, so a
    /// start that cannot listen leaves nothing behind (not even the spool
    /// directory).
    pub async fn bind_sockets(config: &Config) -> anyhow::Result<Vec<BoundListener>> {
        let mut listeners = Vec::new();
        for listener in &config.listeners {
            let socket = tokio::net::TcpListener::bind(listener.address)
                .await
                .map_err(|error| {
                    anyhow::anyhow!("cannot listen on {}: {error}", listener.address)
                })?;
            listeners.push((socket, listener.kind));
        }
        Ok(listeners)
    }

    /// The server over `listeners` (from [`Server::bind_sockets`]); loads
    /// the TLS certificate and the DKIM keys. A bad or missing file is an
    /// error naming it.
    pub fn new(ctx: &Context, listeners: Vec<BoundListener>) -> anyhow::Result<Server> {
        let config = ctx.config();
        let tls = match &config.tls {
            Some(tls) => Some(TlsAcceptor::from(
                tls::server_config(tls).context("loading the [tls] certificate")?,
            )),
            None => None,
        };
        let session_config = SessionConfig {
            hostname: config.hostname.clone(),
            max_message_size: config.limits.max_message_size,
            max_recipients: config.limits.max_recipients.get(),
            max_errors: config.limits.max_errors.get(),
            max_auth_failures: config.limits.max_auth_failures.get(),
            tls_available: tls.is_some(),
            auth_required: false,
            policy: Policy::new(&config.policy),
        };
        let shared = Arc::new(connection::Shared {
            ctx: ctx.clone(),
            submission_config: Arc::new(SessionConfig {
                auth_required: true,
                ..session_config.clone()
            }),
            relay_config: Arc::new(session_config),
            tls,
            auth: sasl::Authenticator::new(&config.users),
            auth_failures: limits::AuthFailures::new(),
            dkim: crate::auth::dkim::Signer::load(&config.dkim)?,
            verifier: crate::auth::verify::Verifier::new(&config, ctx.resolver.clone()),
        });
        Ok(Server {
            ctx: ctx.clone(),
            listeners,
            shared,
        })
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(listener, _)| listener.local_addr().ok())
            .collect()
    }

    /// Serves one SMTP session over `stream`, a local pipe rather than a
    /// socket (`sluice sendmail` writing into the spool when no server
    /// answers), as a relay listener serves a loopback client: same
    /// `Received:` field, DKIM signing and commit; no STARTTLS.
    pub async fn serve_local<S>(&self, stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let config = Arc::new(SessionConfig {
            tls_available: false,
            ..(*self.shared.relay_config).clone()
        });
        let loopback = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
        connection::serve_stream(&self.shared, stream, loopback, config).await;
    }

    /// Accepts connections; connection tasks are spawned on `ctx.tasks`.
    /// Once `ctx.shutdown` is cancelled, idle connections are closed with
    /// `421 4.3.2`, transactions in progress may finish, and new connections
    /// are answered `421 4.3.2` until the process stops this task.
    pub async fn run(self) {
        let limits = Arc::new(limits::ConnectionLimits::new(
            self.ctx.config().limits.max_connections.get(),
            self.ctx.config().limits.max_connections_per_ip.get(),
        ));
        let mut accepting = tokio::task::JoinSet::new();
        for (socket, kind) in self.listeners {
            accepting.spawn(listener::accept_loop(
                socket,
                kind,
                self.shared.clone(),
                limits.clone(),
            ));
        }
        while accepting.join_next().await.is_some() {}
    }
}
