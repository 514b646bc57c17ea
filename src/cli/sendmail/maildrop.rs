//! Writing into the spool when no server answers, as Postfix's sendmail
//! always does through its maildrop directory: cron jobs and scripts rely
//! on mail being taken while the server is down.
//!
//! sluice has no separate maildrop format. This process opens the spool
//! itself (the lock every spool user takes) and runs the server's own SMTP
//! session over it, on a local pipe instead of a socket
//! ([`Server::serve_local`]): the message gets exactly what a submission
//! gets (our `Received:` field, the DKIM signatures of a matching `[[dkim]]`
//! entry, the free-space reserve) and the queue's durable commit, which
//! returns only once message and envelope are fsynced. The server delivers
//! it once it starts: opening the spool reads every record.
//!
//! Only with an absolute spool path: a relative one (the default `./spool`)
//! depends on the working directory, which may be anyone's, and mail
//! written there would never be seen. Then, and when the configuration
//! names no spool a server could use, sendmail fails as before with the
//! reason no server answered.
//!
//! A spool held by another process (a server that does not answer, an
//! offline `sluice queue`) is waited for, up to [`LOCK_WAIT`]; then
//! sendmail exits 1 saying so: the caller should try again later.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_queue::{Queue, QueueError, QueueOptions};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::context::Context;
use crate::server::Server;

use super::SendmailError;

/// How long sendmail waits for a spool another process holds.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// The spool, opened by this process, and the SMTP server code over it.
pub struct Maildrop {
    runtime: tokio::runtime::Runtime,
    ctx: Context,
    server: Arc<Server>,
    /// Who runs this command (uid, login), taken before becoming the
    /// spool's owner: the `Received:` field names them.
    submitter: (u32, String),
}

impl Maildrop {
    /// Opens the spool of `config` for writing into it, since no server
    /// answered (`refused` says why). Fails with `refused` itself when the
    /// spool path is relative, and with [`SendmailError::SpoolBusy`] when
    /// another process still holds the spool after [`LOCK_WAIT`].
    pub fn open(config: &Config, refused: SendmailError) -> Result<Maildrop, SendmailError> {
        let applies = matches!(
            refused,
            SendmailError::Connect { .. } | SendmailError::NoListener(_)
        );
        if !applies || !config.spool.path.is_absolute() {
            return Err(refused);
        }
        let spool = config.spool.path.clone();
        // SAFETY: getuid has no preconditions and cannot fail.
        let submitter = (
            unsafe { libc::getuid() },
            super::user::invoking_user().login,
        );
        // Root writes as the spool's owner (DESIGN.md "Local access"): no
        // root-owned file in the spool, no link followed with root's rights.
        if let Err(error) = crate::local::privilege::become_spool_owner(&spool) {
            return Err(SendmailError::Spool {
                path: spool,
                reason: error.to_string(),
            });
        }
        let broken = |error: &dyn std::fmt::Display| SendmailError::Spool {
            path: spool.clone(),
            reason: format!(
                "{error} (no server took the message: {})",
                refused.no_server_reason()
            ),
        };
        // A local pipe has no TLS: the certificate (perhaps readable by the
        // server's user only) is not needed.
        let config = Config {
            tls: None,
            ..config.clone()
        };
        // One worker: the session runs there while this thread submits.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|error| broken(&error))?;
        let options = QueueOptions {
            cache_capacity: config.spool.cache_capacity,
        };
        let queue = open_waiting(&spool, options, &refused).map_err(|error| match error {
            OpenError::Busy => SendmailError::SpoolBusy {
                path: spool.clone(),
                refused: refused.no_server_reason(),
                waited: LOCK_WAIT,
            },
            OpenError::Failed(error) => broken(&error),
        })?;
        let _entered = runtime.enter();
        let ctx = Context::new(Arc::new(config), queue);
        let dkim = crate::auth::dkim::Signer::load(&ctx.config().dkim)
            .map_err(|error| broken(&format!("{}: {}", error.key(), error.message)))?;
        let server = Server::new(&ctx, Vec::new(), None, dkim, Default::default());
        drop(_entered);
        Ok(Maildrop {
            runtime,
            ctx,
            server: Arc::new(server),
            submitter,
        })
    }

    /// What answers, for messages.
    pub fn describe(&self) -> String {
        format!(
            "the local session over the spool {}",
            self.ctx.config().spool.path.display()
        )
    }

    /// An error of the local machinery (a pipe that cannot be made).
    pub fn failed(&self, error: impl std::fmt::Display) -> SendmailError {
        SendmailError::Spool {
            path: self.ctx.config().spool.path.clone(),
            reason: error.to_string(),
        }
    }

    /// Serves one SMTP session over the local end of a pipe, on this
    /// process's runtime; ends when the other end hangs up or quits.
    pub fn serve(&self, stream: std::os::unix::net::UnixStream) -> std::io::Result<JoinHandle<()>> {
        stream.set_nonblocking(true)?;
        let _entered = self.runtime.enter();
        let stream = tokio::net::UnixStream::from_std(stream)?;
        Ok(self.spawn(stream))
    }

    /// Serves one SMTP session over `stream` on this process's runtime.
    pub fn spawn<S>(&self, stream: S) -> JoinHandle<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
    {
        let server = self.server.clone();
        // The invoking user, as the submit socket would name them.
        let (uid, login) = self.submitter.clone();
        self.runtime.spawn(async move {
            server
                .serve_local_from(stream, Some((uid, login.as_str())))
                .await
        })
    }

    /// Waits for `session` to end, then flushes and closes the spool.
    pub fn close(self, session: JoinHandle<()>) -> Result<(), SendmailError> {
        let closed = self.runtime.block_on(async {
            let _ = session.await;
            self.ctx.queue.close().await
        });
        let path = self.ctx.config().spool.path.clone();
        // A blocking read of stdin (-bs) cannot be interrupted: do not wait
        // for it.
        self.runtime.shutdown_timeout(Duration::from_millis(100));
        closed.map_err(|error| SendmailError::Spool {
            path,
            reason: error.to_string(),
        })
    }
}

/// Why the spool could not be opened.
enum OpenError {
    /// Another process still held it after [`LOCK_WAIT`].
    Busy,
    Failed(QueueError),
}

/// Opens the spool for writing records (no scan of the queue: the server
/// does that when it starts), waiting up to [`LOCK_WAIT`] while another
/// process holds it; says so once on stderr.
fn open_waiting(
    spool: &std::path::Path,
    options: QueueOptions,
    refused: &SendmailError,
) -> Result<Queue, OpenError> {
    let deadline = Instant::now() + LOCK_WAIT;
    let mut said = false;
    loop {
        match Queue::open_admin(spool, options.clone()) {
            Ok(queue) => return Ok(queue),
            Err(QueueError::Locked { .. }) if Instant::now() < deadline => {
                if !said {
                    eprintln!(
                        "sluice: {}; the spool {} is in use by another process: waiting up to {}s for it",
                        refused.no_server_reason(),
                        spool.display(),
                        LOCK_WAIT.as_secs()
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(QueueError::Locked { .. }) => return Err(OpenError::Busy),
            Err(error) => return Err(OpenError::Failed(error)),
        }
    }
}
