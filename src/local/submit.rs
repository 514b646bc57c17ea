//! `local.submit_socket`: the UNIX socket `sluice sendmail` submits over
//! (never TCP: a process that grabs a TCP port while the server is down
//! gets nothing). Mode 0666, so any user who can reach its directory may
//! submit; the kernel tells who the peer is (SO_PEERCRED), and the
//! `Received:` field names its uid and user name.

use std::io;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::sync::Semaphore;

use crate::context::Context;
use crate::server::Server;

/// Local sessions served at once; more wait in the listen backlog.
const MAX_SESSIONS: usize = 64;

/// The bound submit socket; removes its file when dropped.
pub struct SubmitSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl SubmitSocket {
    /// Binds `path` (mode 0666). A socket left by a previous run is
    /// replaced; a socket another server answers on, or anything else at
    /// `path`, is an error. A missing parent
    /// directory is created 0755 (as /run/sluice is).
    pub fn bind(path: &Path) -> io::Result<SubmitSocket> {
        let context = |error: io::Error| {
            io::Error::new(
                error.kind(),
                format!("cannot listen on {}: {error}", path.display()),
            )
        };
        match std::fs::symlink_metadata(path) {
            Ok(metadata) if metadata.file_type().is_socket() => {
                // Another server's (on another spool): not ours to take.
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(context(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        "another server is listening there",
                    )));
                }
                std::fs::remove_file(path).map_err(context)?
            }
            Ok(_) => {
                return Err(context(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists and is not a socket",
                )));
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(context(error)),
        }
        if let Some(parent) = path.parent()
            && !parent.exists()
        {
            std::fs::create_dir_all(parent).map_err(context)?;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))
                .map_err(context)?;
        }
        let listener = UnixListener::bind(path).map_err(context)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(context)?;
        Ok(SubmitSocket {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts local submissions until `ctx.shutdown`; each session runs on
    /// `ctx.tasks` with the settings in force when it connects.
    pub async fn run(self, ctx: Context, server: Arc<Server>) {
        let sessions = Arc::new(Semaphore::new(MAX_SESSIONS));
        loop {
            let permit = tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                permit = sessions.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let stream = tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(socket = %self.path.display(), %error, "local accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let server = server.clone();
            ctx.tasks.spawn(async move {
                let _permit = permit;
                let Ok(credentials) = stream.peer_cred() else {
                    tracing::warn!("local connection without peer credentials: closed");
                    return;
                };
                let uid = credentials.uid();
                let name = tokio::task::spawn_blocking(move || {
                    crate::local::privilege::account_by_uid(uid).map(|account| account.name)
                })
                .await
                .ok()
                .flatten()
                .unwrap_or_else(|| format!("uid{uid}"));
                tracing::info!(uid, user = %name, "local submission");
                server.serve_local_from(stream, Some((uid, &name))).await;
            });
        }
    }
}

impl Drop for SubmitSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_or_a_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("submit.sock");
        let first = SubmitSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
        let error = SubmitSocket::bind(&path).err().expect("in use");
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse, "{error}");
        // Left behind (a crash): replaced.
        std::mem::forget(first);
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("x.sock")).unwrap();
        drop(listener);
        let stale = dir.path().join("x.sock");
        let second = SubmitSocket::bind(&stale).unwrap();
        drop(second);
        assert!(!stale.exists(), "removed when dropped");
        std::fs::write(&stale, "a file").unwrap();
        assert!(SubmitSocket::bind(&stale).is_err());
    }
}
