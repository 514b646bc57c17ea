//! A real HTTPS server for MTA-STS tests: rustls (a test CA, trusted by
//! sluice through `delivery.tls_ca`) and hyper, on port 443 of a loopback
//! address of its own (127.44.x.y; binding 443 needs root, which the test
//! machines and CI have). It answers every request with the configured
//! [`PolicyReply`] and counts requests.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// What the server answers.
#[derive(Debug, Clone)]
pub struct PolicyReply {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
    pub location: Option<String>,
}

impl PolicyReply {
    /// 200, text/plain, `body`.
    pub fn policy(body: &str) -> PolicyReply {
        PolicyReply {
            status: 200,
            content_type: "text/plain".into(),
            body: body.as_bytes().to_vec(),
            location: None,
        }
    }
}

/// A running policy server; stops when dropped.
pub struct PolicyServer {
    /// Its loopback address (port 443).
    pub addr: SocketAddr,
    reply: Arc<Mutex<PolicyReply>>,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

static NEXT: AtomicUsize = AtomicUsize::new(1);

impl PolicyServer {
    /// Starts on 443 of a fresh loopback address with `tls` (a server
    /// configuration whose certificate names `mta-sts.<domain>`).
    pub fn start(tls: Arc<rustls::ServerConfig>, reply: PolicyReply) -> PolicyServer {
        let pid = std::process::id() as usize;
        let (listener, addr) = (0..200)
            .find_map(|_| {
                let n = NEXT.fetch_add(1, Ordering::SeqCst);
                let ip = Ipv4Addr::new(127, 44, (pid % 250) as u8, (n % 250 + 1) as u8);
                let addr = SocketAddr::new(IpAddr::V4(ip), 443);
                std::net::TcpListener::bind(addr).ok().map(|l| (l, addr))
            })
            .expect("bind 127.44.x.y:443 (tests need root for port 443)");
        listener.set_nonblocking(true).expect("nonblocking");
        let reply = Arc::new(Mutex::new(reply));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (shared_reply, shared_requests) = (reply.clone(), requests.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("https runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                loop {
                    let accepted = tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => accepted,
                    };
                    let Ok((stream, _)) = accepted else { continue };
                    let acceptor = acceptor.clone();
                    let reply = shared_reply.clone();
                    let requests = shared_requests.clone();
                    tokio::spawn(async move {
                        let Ok(Ok(tls)) =
                            tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                                .await
                        else {
                            return;
                        };
                        let service =
                            service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                                let reply = reply.lock().expect("reply lock").clone();
                                requests.lock().expect("requests lock").push(format!(
                                    "{} {} host={}",
                                    request.method(),
                                    request.uri().path(),
                                    request
                                        .headers()
                                        .get(hyper::header::HOST)
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or("")
                                ));
                                async move {
                                    let mut response = hyper::Response::builder()
                                        .status(reply.status)
                                        .header(hyper::header::CONTENT_TYPE, reply.content_type);
                                    if let Some(location) = reply.location {
                                        response =
                                            response.header(hyper::header::LOCATION, location);
                                    }
                                    response.body(Full::new(Bytes::from(reply.body)))
                                }
                            });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
        });
        PolicyServer {
            addr,
            reply,
            requests,
            stop: Some(stop),
        }
    }

    /// Answers `reply` from now on.
    pub fn set_reply(&self, reply: PolicyReply) {
        *self.reply.lock().expect("reply lock") = reply;
    }

    /// Requests so far: "GET /path host=...".
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests lock").clone()
    }

    /// The IPv4 address, for an A record.
    pub fn ip(&self) -> Ipv4Addr {
        match self.addr.ip() {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(_) => unreachable!("bound on IPv4"),
        }
    }
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
