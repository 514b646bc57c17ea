//! The admin HTTP API (`/v1/queue…`, `/health`, `/metrics`) and the queue
//! dashboard at `/` (`dashboard`).
//!
//! `api` holds the routes, `ops` the queue actions (shared with the offline
//! `sluice queue`), `view` the JSON shapes, `error` the error answers, `http`
//! the connections (limits and timeouts against hostile clients), `browser`
//! the defences against web pages (DNS rebinding, cross-site requests).
//!
//! The same API is served on the admin socket (`socket`) to `sluice queue`;
//! on the TCP address every route but `/health` and `/metrics` needs the
//! token (`token`).
//!
//! Once bound, the server writes the address it listens on to
//! `<spool>/admin.address` ([`ADDRESS_FILE`]), so `sluice queue` finds it even
//! when `[admin] address` has port 0; the file is removed at shutdown.

pub mod api;
pub mod browser;
pub mod bulk;
pub mod content;
pub mod dashboard;
pub mod error;
pub mod http;
pub mod ops;
pub mod socket;
pub mod summary;
pub mod suspensions;
pub mod token;
pub mod view;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::context::Context;
use crate::runfile::RunFile;

/// The file in the spool directory naming the running admin API's address.
pub const ADDRESS_FILE: &str = "admin.address";

/// Where the running server records its admin address for `spool`.
pub fn address_file(spool: &Path) -> PathBuf {
    spool.join(ADDRESS_FILE)
}

/// The bound admin API.
pub struct Admin {
    ctx: Context,
    listener: tokio::net::TcpListener,
    /// The admin socket and its path.
    socket: (tokio::net::UnixListener, PathBuf),
    /// The token rule of the TCP listener.
    token: token::AdminToken,
    /// `<spool>/admin.address`, removed when the admin API stops.
    address_file: Option<RunFile>,
}

impl Admin {
    /// Binds `[admin] address`, before the spool is opened, so a start that
    /// cannot listen leaves nothing behind. Refuses a non-loopback address
    /// without `[admin] token`: the API can hold and delete mail, so it is
    /// never open to the network unauthenticated.
    pub async fn bind_socket(
        config: &crate::config::Config,
    ) -> anyhow::Result<tokio::net::TcpListener> {
        let address = config.admin.address;
        if !address.ip().is_loopback() && config.admin.token.is_none() {
            anyhow::bail!(
                "refusing to serve the admin API on non-loopback address {address} without \
                 [admin] token: set a token or use a loopback address"
            );
        }
        tokio::net::TcpListener::bind(address)
            .await
            .map_err(|error| anyhow::anyhow!("cannot listen on {address} (admin API): {error}"))
    }

    /// The admin API over `listener` (from [`Admin::bind_socket`]) and the
    /// admin socket, bound now (the spool is open, its lock held); reads or
    /// generates the token file when no token is configured; records the
    /// bound address in the spool.
    pub fn new(ctx: &Context, listener: tokio::net::TcpListener) -> anyhow::Result<Admin> {
        let config = ctx.config();
        let socket_path = config.admin.socket_path(&config.spool.path);
        let socket = socket::bind(&socket_path)?;
        let token = token::AdminToken::new(ctx)?;
        let mut admin = Admin {
            ctx: ctx.clone(),
            listener,
            socket: (socket, socket_path),
            token,
            address_file: None,
        };
        if let Some(bound) = admin.local_addr() {
            let path = address_file(&ctx.config().spool.path);
            match RunFile::write(path.clone(), &format!("{bound}\n")) {
                Ok(file) => admin.address_file = Some(file),
                Err(error) => tracing::warn!(
                    path = %path.display(),
                    %error,
                    "cannot record the admin address; `sluice queue` will use [admin] address"
                ),
            }
        }
        Ok(admin)
    }

    /// The token file, when the token in force comes from it (for the start
    /// line).
    pub fn token_file(&self) -> Option<PathBuf> {
        self.token.file_in_use().map(Path::to_path_buf)
    }

    /// The admin socket's path.
    pub fn socket_path(&self) -> &Path {
        &self.socket.1
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves requests until shutdown, with the limits of [`http`]. The
    /// address file is removed when this returns or is cancelled.
    pub async fn run(self) {
        let dashboard = dashboard::Dashboard::start(&self.ctx);
        let router = api::router(self.ctx.clone())
            .layer(axum::Extension(dashboard))
            .layer(axum::Extension(self.token.clone()))
            .layer(axum::Extension(dashboard::session::Sessions::default()));
        let (socket, socket_path) = self.socket;
        tokio::join!(
            http::serve(self.listener, router.clone(), self.ctx.shutdown.clone()),
            socket::serve(socket, socket_path, router, self.ctx.shutdown.clone()),
        );
        drop(self.address_file);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;

    #[tokio::test]
    async fn bind_refuses_a_non_loopback_address_without_a_token() {
        let mut config = Config::default();
        config.admin.address = SocketAddr::from(([0, 0, 0, 0], 0));
        config.admin.token = None;
        let error = bind_with(config).await;
        assert!(error.contains("without [admin] token"), "{error}");
    }

    async fn bind_with(config: Config) -> String {
        let dir = tempfile::tempdir().expect("temp dir");
        let queue = match sluice_queue::Queue::open(
            &dir.path().join("spool"),
            sluice_queue::QueueOptions::default(),
        ) {
            Ok(queue) => queue,
            Err(error) => return format!("queue unavailable: {error}"),
        };
        let ctx = Context::new(Arc::new(config), queue);
        match Admin::bind_socket(&ctx.config()).await {
            Ok(listener) => match Admin::new(&ctx, listener) {
                Ok(_) => "bound".to_string(),
                Err(error) => error.to_string(),
            },
            Err(error) => error.to_string(),
        }
    }
}
