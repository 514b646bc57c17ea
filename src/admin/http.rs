//! The admin API's HTTP/1.1 connection layer: accepting connections and
//! serving the router on them under fixed limits, because every byte that
//! comes from the network is hostile.
//!
//! - At most [`MAX_CONNECTIONS`] connections are served at once; one more is
//!   answered `503` with a JSON error and closed, so a flood cannot pile up
//!   tasks and sockets.
//! - A request head (request line and header fields, at most
//!   [`MAX_HEADER_BYTES`]) must arrive within [`REQUEST_HEAD_TIMEOUT`] of the
//!   connection opening or of the previous response: a client that trickles
//!   bytes (slowloris), or an idle keep-alive connection, is closed then.
//! - A request body is read within [`BODY_TIMEOUT`] and may be at most
//!   [`MAX_BODY_BYTES`] (no endpoint takes a body): `413`/`408` with a JSON
//!   error otherwise (see `api::limit_body`).
//! - A response write that makes no progress for [`WRITE_TIMEOUT`] (a client
//!   that stopped reading a long listing) closes the connection, which also
//!   ends the queue scan feeding it.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::browser::LocalAddress;
use super::error::ErrorBody;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;

/// Time allowed for a whole request head, from the connection's start or the
/// end of the previous response; also the limit on an idle keep-alive
/// connection.
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request head (request line and header fields); larger is
/// answered `431`. As large as hyper's URI limit, so any URI it accepts is
/// answered by the API itself.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The largest request body accepted; no endpoint takes one.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Time allowed to receive a request body once the head is in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a response write may make no progress before the connection is
/// closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection over the limit is given to take its `503`.
const REJECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The shortest interval between two "connection limit reached" warnings.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Serves `router` on connections accepted from `listener` until `shutdown`
/// is cancelled; then stops accepting, lets requests in progress finish, and
/// returns once every connection is closed.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) {
    let serving = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Answering the connections over the limit is bounded as well.
    let rejecting = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let connections = TaskTracker::new();
    let mut last_warning: Option<Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors, most likely: back off a little
                    // rather than spin.
                    tracing::warn!(%error, "admin API cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        match serving.clone().try_acquire_owned() {
            Ok(permit) => {
                connections.spawn(serve_connection(
                    stream,
                    peer,
                    router.clone(),
                    shutdown.clone(),
                    permit,
                ));
            }
            Err(_) => {
                if last_warning.is_none_or(|at| at.elapsed() >= WARN_INTERVAL) {
                    last_warning = Some(Instant::now());
                    tracing::warn!(
                        %peer,
                        limit = MAX_CONNECTIONS,
                        "admin API connection limit reached; answering 503"
                    );
                }
                if let Ok(permit) = rejecting.clone().try_acquire_owned() {
                    tokio::spawn(reject(stream, permit));
                }
            }
        }
    }
    // New connections are refused from now on.
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Serves one connection with the limits of this module.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    // What `browser::guard` compares the Host header with.
    let router = match stream.local_addr() {
        Ok(local) => router.layer(axum::Extension(LocalAddress(local))),
        Err(error) => {
            tracing::debug!(%peer, %error, "admin API connection without a local address");
            return;
        }
    };
    serve_stream(stream, &peer, router, shutdown).await;
}

/// Serves HTTP/1.1 on one accepted stream (TCP or the admin socket) with
/// the limits of this module, until the client closes or `shutdown`.
pub(super) async fn serve_stream<S>(
    stream: S,
    peer: &(dyn std::fmt::Display + Sync),
    router: Router,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(WriteDeadline::new(stream, WRITE_TIMEOUT));
    let service = TowerToHyperService::new(router);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_HEAD_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.cancelled() => {
            // Finish the request in progress, take no new one.
            connection.as_mut().graceful_shutdown();
            connection.as_mut().await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "admin API connection closed");
    }
}

/// Answers a connection over the limit with `503` and a JSON error, then
/// closes it, reading what the client sent meanwhile so the close does not
/// turn into a reset that loses the answer.
async fn reject(mut stream: TcpStream, _permit: OwnedSemaphorePermit) {
    let body = serde_json::to_string(&ErrorBody {
        error: format!(
            "too many admin API connections (at most {MAX_CONNECTIONS}); try again later"
        ),
    })
    .expect("an error body always serializes");
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REJECT_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < MAX_HEADER_BYTES {
            match stream.read(&mut sink).await? {
                0 => break,
                read => drained += read,
            }
        }
        Ok::<_, io::Error>(())
    })
    .await;
}

/// A stream whose writes fail with `TimedOut` once a write (or flush) has
/// been pending, without progress, for longer than the timeout. Reads pass
/// through: waiting for a request is bounded by hyper's header timeout.
pub struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    /// Running while a write is pending; reset by any progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    /// Wraps `inner`; a write stalled for `timeout` fails.
    pub fn new(inner: S, timeout: Duration) -> WriteDeadline<S> {
        WriteDeadline {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// Called when the inner write is pending: fails once it has been so
    /// for the whole timeout.
    fn poll_stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.timeout;
        let stall = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.stalled = None;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the client read nothing for {timeout:?}"),
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<T>(
        &mut self,
        poll: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => self.poll_stall(cx),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.progress(poll, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.progress(poll, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.progress(poll, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.progress(poll, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_the_peer_never_reads_fails_after_the_timeout() {
        let (near, _far) = tokio::io::duplex(64);
        let mut stream = WriteDeadline::new(near, Duration::from_millis(50));
        let started = Instant::now();
        let error = stream
            .write_all(&[b'x'; 4096])
            .await
            .expect_err("nobody reads: the write must time out");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_slow_but_steady_reader_keeps_the_write_alive() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut stream = WriteDeadline::new(near, Duration::from_millis(200));
        let reader = tokio::spawn(async move {
            let mut total = 0;
            let mut buf = [0u8; 64];
            while total < 4096 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                total += far.read(&mut buf).await.expect("read");
            }
            total
        });
        // 64 reads of 64 bytes, 5 ms apart: ~320 ms in all, longer than the
        // timeout, but never 200 ms without progress.
        stream
            .write_all(&[b'x'; 4096])
            .await
            .expect("steady progress");
        assert_eq!(reader.await.expect("reader"), 4096);
    }
}
