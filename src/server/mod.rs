//! Inbound SMTP: listeners (accept, limits, TLS), one task per connection
//! driving the pure `smtp` session, and the relay policy.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_rustls::TlsAcceptor;

use crate::config::ListenerKind;
use crate::context::Context;
use crate::smtp::session::SessionConfig;

pub mod auth;
pub mod connection;
pub mod listener;
pub mod policy;
pub mod tls;

/// The bound SMTP listeners.
pub struct Server {
    ctx: Context,
    listeners: Vec<(tokio::net::TcpListener, ListenerKind)>,
    shared: Arc<connection::Shared>,
}

impl Server {
    /// Binds every `[[listener]]` (and loads the TLS certificate). Returns
    /// only once the sockets are bound, so readiness can be reported. A bad
    /// or missing certificate file is an error naming the file.
    pub async fn bind(ctx: &Context) -> anyhow::Result<Server> {
        let config = &ctx.config;
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
            policy: policy::Policy::new(&config.policy),
        };
        let shared = Arc::new(connection::Shared {
            ctx: ctx.clone(),
            submission_config: Arc::new(SessionConfig {
                auth_required: true,
                ..session_config.clone()
            }),
            relay_config: Arc::new(session_config),
            tls,
            auth: auth::Authenticator::new(&config.users),
        });
        let mut listeners = Vec::new();
        for listener in &config.listeners {
            let socket = tokio::net::TcpListener::bind(listener.address)
                .await
                .map_err(|error| {
                    anyhow::anyhow!("cannot listen on {}: {error}", listener.address)
                })?;
            listeners.push((socket, listener.kind));
        }
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

    /// Accepts connections; connection tasks are spawned on `ctx.tasks`.
    /// Once `ctx.shutdown` is cancelled, idle connections are closed with
    /// `421 4.3.2`, transactions in progress may finish, and new connections
    /// are answered `421 4.3.2` until the process stops this task.
    pub async fn run(self) {
        let limits = Arc::new(listener::ConnectionLimits::new(
            self.ctx.config.limits.max_connections.get(),
            self.ctx.config.limits.max_connections_per_ip.get(),
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
