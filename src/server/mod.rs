//! Inbound SMTP: the I/O around the pure `smtp` core.
//!
//! Modules, each depending only on those listed after it:
//! - `listener`: accepts connections, applies the connection limits and the
//!   shutdown rule, spawns one task per connection;
//! - `proxy`: the PROXY protocol header of listeners behind a balancer;
//! - `connection`: one connection's pump: reads bytes, feeds the session and
//!   the message intake, writes replies, stores messages in the queue;
//! - `sasl`: AUTH credential checks against `[[user]]`;
//! - `limits`: per-client counts (connections, AUTH failure delays);
//! - `tls`: the rustls server configuration.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;

use crate::auth::dkim::Signer;

use crate::config::{Config, ListenerConfig, ListenerKind};
use crate::context::Context;
use crate::frontdoor::recipients::RecipientList;
use crate::frontdoor::{FrontDoor, Memory};
use crate::policy::Policy;
use crate::smtp::session::SessionConfig;

pub mod connection;
pub mod limits;
pub mod listener;
pub mod milters;
pub mod proxy;
pub mod sasl;
pub mod tls;

/// A bound `[[listener]]` socket and the settings it was bound for.
pub type BoundListener = (TcpListener, ListenerConfig);

/// What a new connection is served with: built from one configuration and
/// swapped whole by a reload. A connection keeps the one it started with.
pub struct Inbound {
    /// Settings, certificate, users, DKIM keys, verifier.
    pub shared: Arc<connection::Shared>,
    /// The connection counts (shared by every generation; a reload changes
    /// only the maxima).
    pub limits: Arc<limits::ConnectionLimits>,
}

/// One bound listener.
struct Running {
    /// The `[[listener]]` entry it was bound for (address as configured,
    /// port 0 included).
    config: ListenerConfig,
    socket: Arc<TcpListener>,
    /// The accept loop, once started.
    accepting: Option<AbortHandle>,
}

impl Running {
    /// Stops the accept loop (the socket closes once nothing holds it).
    fn stop_accepting(&mut self) {
        if let Some(accepting) = self.accepting.take() {
            accepting.abort();
        }
    }
}

/// The socket a listener of a new configuration will use.
enum Socket {
    /// The running listener at this index, whose address did not change.
    Kept(usize),
    /// A socket bound for a new address.
    Bound(TcpListener),
}

/// Listeners bound for a new configuration, not yet accepting: see
/// [`Server::prepare`].
pub struct Prepared {
    inbound: Arc<Inbound>,
    /// `limits.max_connections` and `limits.max_connections_per_ip`.
    maxima: (usize, usize),
    /// For each `[[listener]]` of the new configuration: the index of the
    /// running listener it keeps, or a socket bound for it.
    listeners: Vec<(ListenerConfig, Socket)>,
}

/// The SMTP listeners and what their connections share.
pub struct Server {
    ctx: Context,
    inbound: Arc<ArcSwap<Inbound>>,
    running: Mutex<Vec<Running>>,
    /// AUTH failure delays, kept across reloads.
    auth_failures: Arc<limits::AuthFailures>,
    /// What the front door learnt, kept across reloads.
    memory: Arc<Memory>,
}

impl Server {
    /// Binds every `[[listener]]`. Called before the spool is opened, so a
    /// start that cannot listen leaves nothing behind (not even the spool
    /// directory).
    pub async fn bind_sockets(config: &Config) -> anyhow::Result<Vec<BoundListener>> {
        let mut listeners = Vec::new();
        for listener in &config.listeners {
            listeners.push((bind(listener).await?, listener.clone()));
        }
        Ok(listeners)
    }

    /// The server over `listeners` (from [`Server::bind_sockets`]) with the
    /// `[tls]` certificate and the DKIM keys loaded by
    /// [`crate::reload::files::load`]; accepting starts with [`Server::start`].
    pub fn new(
        ctx: &Context,
        listeners: Vec<BoundListener>,
        server_tls: Option<Arc<ServerConfig>>,
        dkim: Signer,
        recipients: Arc<RecipientList>,
    ) -> Server {
        let config = ctx.config();
        let limits = Arc::new(limits::ConnectionLimits::new(
            config.limits.max_connections.get(),
            config.limits.max_connections_per_ip.get(),
        ));
        let auth_failures = Arc::new(limits::AuthFailures::new());
        let memory = Arc::new(Memory::default());
        let inbound = inbound(
            ctx,
            &config,
            server_tls,
            dkim,
            limits,
            auth_failures.clone(),
            FrontDoor::new(ctx, &config, recipients, memory.clone()),
        );
        let running = listeners
            .into_iter()
            .map(|(socket, config)| Running {
                config,
                socket: Arc::new(socket),
                accepting: None,
            })
            .collect();
        Server {
            ctx: ctx.clone(),
            inbound: Arc::new(ArcSwap::new(Arc::new(inbound))),
            running: Mutex::new(running),
            auth_failures,
            memory,
        }
    }

    /// The addresses actually bound (port 0 resolved), in `[[listener]]`
    /// order, with their kinds.
    pub fn local_addrs(&self) -> Vec<(ListenerKind, SocketAddr)> {
        self.running()
            .iter()
            .filter_map(|running| Some((running.config.kind, running.socket.local_addr().ok()?)))
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
        self.serve_local_from(stream, None).await;
    }

    /// [`Server::serve_local`] for a peer known by uid and user name (a
    /// connection on `local.submit_socket`): the `Received:` field names it.
    pub async fn serve_local_from<S>(&self, stream: S, peer: Option<(u32, &str)>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let current = self.inbound.load_full();
        let config = Arc::new(SessionConfig {
            tls_available: false,
            ..(*current.shared.relay_config).clone()
        });
        let loopback = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
        connection::serve_stream(&current.shared, stream, loopback, config, peer).await;
    }

    /// Starts accepting on every listener. Connection tasks are spawned on
    /// `ctx.tasks`. Once `ctx.shutdown` is cancelled, idle connections are
    /// closed with `421 4.3.2`, transactions in progress may finish, and new
    /// connections are answered `421 4.3.2` until [`Server::stop`].
    pub fn start(&self) {
        for running in self.running().iter_mut() {
            running.stop_accepting();
            running.accepting = Some(self.accept(running));
        }
    }

    /// Stops accepting and closes every listener (connections in progress
    /// go on).
    pub fn stop(&self) {
        for mut running in self.running().drain(..) {
            running.stop_accepting();
        }
    }

    /// Everything a reload to `config` needs that can fail, done without
    /// changing what runs: the new [`Inbound`] and a socket for each
    /// listener whose address is new. Listeners on an unchanged address
    /// keep their socket. A bind failure gives the `[[listener]]` index.
    pub async fn prepare(
        &self,
        config: &Config,
        server_tls: Option<Arc<ServerConfig>>,
        dkim: Signer,
        recipients: Arc<RecipientList>,
    ) -> Result<Prepared, (usize, std::io::Error)> {
        let limits = self.inbound.load().limits.clone();
        let auth_failures = self.auth_failures.clone();
        let front_door = FrontDoor::new(&self.ctx, config, recipients, self.memory.clone());
        let inbound = inbound(
            &self.ctx,
            config,
            server_tls,
            dkim,
            limits,
            auth_failures,
            front_door,
        );
        let mut kept: Vec<(usize, ListenerConfig)> = self
            .running()
            .iter()
            .map(|running| running.config.clone())
            .enumerate()
            .collect();
        let mut listeners = Vec::new();
        for (number, listener) in config.listeners.iter().enumerate() {
            match kept
                .iter()
                .position(|(_, old)| old.address == listener.address)
            {
                Some(position) => {
                    let (index, _) = kept.remove(position);
                    listeners.push((listener.clone(), Socket::Kept(index)));
                }
                None => {
                    let socket = TcpListener::bind(listener.address)
                        .await
                        .map_err(|error| (number, error))?;
                    listeners.push((listener.clone(), Socket::Bound(socket)));
                }
            }
        }
        Ok(Prepared {
            inbound: Arc::new(inbound),
            maxima: (
                config.limits.max_connections.get(),
                config.limits.max_connections_per_ip.get(),
            ),
            listeners,
        })
    }

    /// Puts a prepared reload in force: new connections get the new
    /// settings; new listeners start accepting; listeners no longer
    /// configured are closed (their connections go on); a kept listener
    /// whose kind changed serves the new kind from now on.
    pub fn commit(&self, prepared: Prepared) {
        let (max, max_per_ip) = prepared.maxima;
        prepared.inbound.limits.set_limits(max, max_per_ip);
        self.inbound.store(prepared.inbound);
        let mut running = self.running();
        let mut old: Vec<Option<Running>> = running.drain(..).map(Some).collect();
        for (config, socket) in prepared.listeners {
            let mut next = match socket {
                Socket::Kept(index) => {
                    let Some(mut kept) = old.get_mut(index).and_then(Option::take) else {
                        continue; // `prepare` names each running listener once
                    };
                    if kept.config.kind == config.kind
                        && kept.config.proxy_protocol == config.proxy_protocol
                        && kept.accepting.is_some()
                    {
                        kept.config = config;
                        running.push(kept);
                        continue;
                    }
                    // Same socket, another kind: a new accept loop.
                    kept.stop_accepting();
                    kept.config = config;
                    kept
                }
                Socket::Bound(socket) => Running {
                    config,
                    socket: Arc::new(socket),
                    accepting: None,
                },
            };
            next.accepting = Some(self.accept(&next));
            running.push(next);
        }
        for mut closed in old.into_iter().flatten() {
            tracing::info!(address = %closed.config.address, "listener closed");
            closed.stop_accepting();
        }
    }

    fn accept(&self, running: &Running) -> AbortHandle {
        tokio::spawn(listener::accept_loop(
            running.socket.clone(),
            running.config.clone(),
            self.inbound.clone(),
        ))
        .abort_handle()
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Vec<Running>> {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn bind(listener: &ListenerConfig) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listener.address)
        .await
        .map_err(|error| anyhow::anyhow!("cannot listen on {}: {error}", listener.address))
}

/// What new connections are served with under `config`.
fn inbound(
    ctx: &Context,
    config: &Config,
    server_tls: Option<Arc<ServerConfig>>,
    dkim: Signer,
    limits: Arc<limits::ConnectionLimits>,
    auth_failures: Arc<limits::AuthFailures>,
    front_door: FrontDoor,
) -> Inbound {
    let tls = server_tls.map(TlsAcceptor::from);
    let session_config = SessionConfig {
        hostname: config.hostname.clone(),
        max_message_size: config.limits.max_message_size,
        max_recipients: config.limits.max_recipients.get(),
        max_errors: config.limits.max_errors.get(),
        max_junk_commands: config.limits.max_junk_commands.get(),
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
        auth_failures,
        dkim,
        verifier: crate::auth::verify::Verifier::new(config, ctx.resolver.clone()),
        front_door: Arc::new(front_door),
    });
    Inbound { shared, limits }
}
