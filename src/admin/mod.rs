//! The admin HTTP API (`/v1/queue…`, `/health`, `/metrics`).

use std::net::SocketAddr;

use crate::context::Context;

/// The bound admin API.
pub struct Admin {
    ctx: Context,
    listener: tokio::net::TcpListener,
}

impl Admin {
    /// Binds `[admin] address`.
    pub async fn bind(ctx: &Context) -> anyhow::Result<Admin> {
        let address = ctx.config.admin.address;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|error| anyhow::anyhow!("cannot listen on {address} (admin API): {error}"))?;
        Ok(Admin {
            ctx: ctx.clone(),
            listener,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves requests until shutdown.
    pub async fn run(self) {
        self.ctx.shutdown.cancelled().await;
    }
}
