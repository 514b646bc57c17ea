//! The admin API on a UNIX socket (`[admin] socket`, default
//! `<spool>/admin.sock`, mode 0600): what `sluice queue` talks to.
//!
//! The file mode lets only the socket's owner (and root) connect; each
//! accepted connection is checked again by its peer's credentials
//! (`SO_PEERCRED`): only uid 0 and the server's own uid are served, others
//! are closed at once with a log line. Those peers need no token: who they
//! are is known. No other process can take the socket's place while the
//! server is down without write access to the spool directory, unlike a
//! TCP port any user may bind.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::http::{MAX_CONNECTIONS, serve_stream};

/// The socket's default file name in the spool directory.
pub const SOCKET_FILE: &str = "admin.sock";

/// Put in the extensions of each request that came over the admin socket:
/// the peer's uid, already checked.
#[derive(Debug, Clone, Copy)]
pub struct SocketPeer {
    /// The connecting process's user ID.
    pub uid: u32,
}

/// Binds the admin socket at `path`, mode 0600. Called with the spool lock
/// held, so a socket file left there is a dead server's and is replaced.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|error| {
                anyhow::anyhow!(
                    "cannot remove the old admin socket {}: {error}",
                    path.display()
                )
            })?
        }
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket: remove it or set [admin] socket elsewhere",
            path.display()
        ),
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(|error| {
        anyhow::anyhow!(
            "cannot listen on {} (admin socket): {error}",
            path.display()
        )
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|error| {
        anyhow::anyhow!(
            "cannot set the mode of the admin socket {}: {error}",
            path.display()
        )
    })?;
    Ok(listener)
}

/// Whether a peer with `uid` may use the admin socket.
pub fn is_allowed(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

/// Serves `router` on the admin socket until `shutdown`; removes the socket
/// file when it returns.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    router: Router,
    shutdown: CancellationToken,
) {
    let serving = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let connections = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "admin socket cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let uid = match stream.peer_cred() {
            Ok(credentials) => credentials.uid(),
            Err(error) => {
                tracing::warn!(%error, "admin socket: cannot tell who connected; closed");
                continue;
            }
        };
        if !is_allowed(uid) {
            tracing::warn!(
                uid,
                socket = %path.display(),
                "admin socket connection refused: only root and the server's user may use it"
            );
            continue;
        }
        let Ok(permit) = serving.clone().try_acquire_owned() else {
            tracing::warn!(uid, "admin socket connection limit reached; closed");
            continue;
        };
        let router = router.clone().layer(axum::Extension(SocketPeer { uid }));
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let peer = format!("uid {uid}");
            serve_stream(stream, &peer, router, shutdown).await;
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    let _ = std::fs::remove_file(&path);
}
