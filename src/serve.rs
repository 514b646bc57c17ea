//! `sluice serve`: opens the queue, binds the listeners and the admin API,
//! starts the scheduler, reports readiness, reloads the configuration on
//! SIGHUP (see [`crate::reload`]), and shuts down on SIGTERM, SIGINT or
//! SIGQUIT. A spool that can no longer be written (disk full, I/O error)
//! does not stop it: [`crate::recovery`] reopens the database once writes
//! can succeed. Every way out removes the files it left in the spool
//! (`admin.address`, `smtp.address`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use sluice_queue::{Queue, QueueOptions};

use crate::admin::Admin;
use crate::config::Config;
use crate::context::Context;
use crate::delivery::Scheduler;
use crate::delivery::retry::SystemClock;
use crate::reload::Reloader;
use crate::runfile::{self, RunFile};
use crate::server::Server;

/// Why [`run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// SIGTERM, SIGINT or SIGQUIT: a clean stop.
    Requested,
}

/// How long `serve` waits at start for a spool another process holds (an
/// offline `sluice queue` or `sluice sendmail` that is about to finish).
const SPOOL_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens the queue off the runtime. A spool held by another process is
/// waited for, up to [`SPOOL_LOCK_WAIT`], with one log line saying so: a
/// short-lived command holding it must not make the start fail. Another
/// server holding it still fails the start once the wait is over.
async fn open_queue(spool: std::path::PathBuf, options: QueueOptions) -> anyhow::Result<Queue> {
    let deadline = tokio::time::Instant::now() + SPOOL_LOCK_WAIT;
    let mut logged = false;
    loop {
        let (path, options_now) = (spool.clone(), options.clone());
        let opened = tokio::task::spawn_blocking(move || Queue::open(&path, options_now))
            .await
            .context("opening the queue")?;
        match opened {
            Err(sluice_queue::QueueError::Locked { .. })
                if tokio::time::Instant::now() < deadline =>
            {
                if !logged {
                    tracing::warn!(
                        spool = %spool.display(),
                        wait = ?SPOOL_LOCK_WAIT,
                        "the spool is in use by another process; waiting for it"
                    );
                    logged = true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return Ok(other?),
        }
    }
}

/// Runs the server until a shutdown signal or a storage failure; returns
/// once every task ended (or the grace period ran out) and the queue is
/// flushed. `path` is the configuration file, read again on SIGHUP.
pub async fn run(config: Config, path: Option<PathBuf>) -> anyhow::Result<Stopped> {
    // First of all: from here on, no signal kills the process without the
    // clean-up below.
    let mut signals = Signals::new().context("watching signals")?;
    let files = crate::reload::files::load(&config, path.as_deref())?;
    let config = Arc::new(config);
    let spool = config.spool.path.clone();
    let options = QueueOptions {
        cache_capacity: config.spool.cache_capacity,
    };
    // Listen first: a start that cannot bind must not create the spool.
    let smtp_sockets = Server::bind_sockets(&config).await?;
    let admin_socket = Admin::bind_socket(&config).await?;
    crate::local::privilege_after_bind(&config)?;
    let queue = open_queue(spool, options).await?;
    let submit_socket = crate::local::prepare_spool(&config)?;
    let ctx = Context::new(config.clone(), queue.clone());

    let crate::reload::files::Files {
        server_tls,
        tls_clients,
        dkim,
        recipients,
    } = files;
    let server = Arc::new(Server::new(
        &ctx,
        smtp_sockets,
        server_tls,
        dkim,
        recipients,
    ));
    let admin = Admin::new(&ctx, admin_socket)?;
    let dispatchers = crate::events::Dispatchers::start(
        &config,
        &queue,
        tls_clients.verified.clone(),
        ctx.metrics.events.clone(),
        ctx.shutdown.clone(),
    );
    let _ = ctx.events.set(dispatchers);
    let scheduler = Scheduler::with_tls(&ctx, Arc::new(SystemClock), tls_clients);
    let smtp_addresses: Vec<String> = server
        .local_addrs()
        .iter()
        .map(|(_, address)| address.to_string())
        .collect();
    let mut reloader = Reloader {
        path,
        ctx: ctx.clone(),
        server: server.clone(),
        delivery: scheduler.reloader(),
        // Kept until the server stops: `sluice sendmail` reads it.
        smtp_address_file: record_smtp_listeners(&config, &server.local_addrs()),
    };
    tracing::info!(
        hostname = %config.hostname,
        smtp = %smtp_addresses.join(","),
        admin = %admin.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        admin_socket = %admin.socket_path().display(),
        admin_token_file = %admin.token_file().map(|p| p.display().to_string()).unwrap_or_default(),
        spool = %config.spool.path.display(),
        "sluice started"
    );

    let mut parts = tokio::task::JoinSet::new();
    server.start();
    parts.spawn(admin.run());
    parts.spawn(scheduler.run());
    parts.spawn(submit_socket.run(ctx.clone(), server.clone()));
    parts.spawn(crate::local::intake::run(
        ctx.clone(),
        server.clone(),
        config.local.maildrop(&config.spool.path),
    ));
    parts.spawn(crate::recovery::run(ctx.clone()));
    // Readiness for systemd (Type=notify): listeners are bound.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    let stopped = loop {
        tokio::select! {
            signal = signals.next() => match signal {
                Signal::Stop(name) => {
                    tracing::info!(
                        signal = name,
                        "shutdown requested: no new connections, finishing work in progress"
                    );
                    break Stopped::Requested;
                }
                Signal::Reload => {
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
                    reloader.reload().await;
                    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
                }
                Signal::Ignored(name) => tracing::info!(signal = name, "signal ignored"),
            },
        }
    };
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    ctx.shutdown.cancel();
    ctx.tasks.close();
    let grace = ctx.config().limits.shutdown_grace;
    if tokio::time::timeout(grace, ctx.tasks.wait()).await.is_err() {
        tracing::warn!(
            grace = ?grace,
            "tasks still running after the shutdown grace period; stopping them"
        );
    }
    server.stop();
    parts.abort_all();
    while parts.join_next().await.is_some() {}
    drop(reloader);
    let closed = queue.close().await;
    if let Some(reason) = queue.failure() {
        // Stopped while the spool was failed: the final flush fails too;
        // what it could not write was never acknowledged.
        if let Err(error) = closed {
            tracing::warn!(%error, %reason, "final flush of the failed spool");
        }
        tracing::info!("sluice stopped");
        return Ok(stopped);
    }
    closed.context("flushing the queue")?;
    tracing::info!("sluice stopped");
    Ok(stopped)
}

/// Writes `<spool>/smtp.address` (see [`crate::runfile`]) with the bound
/// listeners in `[[listener]]` order. A failure is only a warning: `sluice
/// sendmail` then uses the configured address.
fn record_smtp_listeners(
    config: &Config,
    listeners: &[(crate::config::ListenerKind, std::net::SocketAddr)],
) -> Option<RunFile> {
    let path = runfile::smtp_address_file(&config.spool.path);
    match RunFile::write(path.clone(), &runfile::format_listeners(listeners)) {
        Ok(file) => Some(file),
        Err(error) => {
            tracing::warn!(
                path = %path.display(),
                %error,
                "cannot record the SMTP listener addresses; `sluice sendmail` will use [[listener]] address"
            );
            None
        }
    }
}

/// What a signal asks of the server.
enum Signal {
    /// SIGTERM, SIGINT, SIGQUIT: stop cleanly.
    Stop(&'static str),
    /// SIGHUP: read the configuration again.
    Reload,
    /// SIGUSR1, SIGUSR2: nothing (their default action would kill the
    /// process and leave its files behind).
    Ignored(&'static str),
}

/// The signals `serve` handles; installed once at start.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    user1: tokio::signal::unix::Signal,
    user2: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            hangup: signal(SignalKind::hangup())?,
            user1: signal(SignalKind::user_defined1())?,
            user2: signal(SignalKind::user_defined2())?,
        })
    }

    /// The next signal received.
    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.terminate.recv() => Signal::Stop("SIGTERM"),
            _ = self.interrupt.recv() => Signal::Stop("SIGINT"),
            _ = self.quit.recv() => Signal::Stop("SIGQUIT"),
            _ = self.hangup.recv() => Signal::Reload,
            _ = self.user1.recv() => Signal::Ignored("SIGUSR1"),
            _ = self.user2.recv() => Signal::Ignored("SIGUSR2"),
        }
    }
}
