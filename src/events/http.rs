//! The HTTP sink: a JSON array per POST, signed with
//! `X-Sluice-Signature: sha256=<hex HMAC-SHA256 of the body>` when the
//! subscriber has a `secret`. 2xx is done; anything else, a timeout or a
//! transport error is retried by the dispatcher. https is verified against
//! the system roots plus `delivery.tls_ca`, as MTA-STS fetches are.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// A whole POST (connect, TLS, request, response) gets this long.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how to POST.
pub(super) struct HttpSink {
    pub url: http::Uri,
    pub secret: Option<String>,
    pub connector: TlsConnector,
}

impl HttpSink {
    /// Posts `body` (a JSON array); `Ok` only for a 2xx answer.
    pub(super) async fn send(&self, body: Vec<u8>) -> Result<(), String> {
        match tokio::time::timeout(TIMEOUT, self.post(body)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {}s", TIMEOUT.as_secs())),
        }
    }

    async fn post(&self, body: Vec<u8>) -> Result<(), String> {
        let https = self.url.scheme_str() == Some("https");
        let host = self.url.host().ok_or("the URL has no host")?.to_string();
        let port = self.url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let stream = tokio::net::TcpStream::connect((bare.as_str(), port))
            .await
            .map_err(|error| format!("connect to {host}:{port}: {error}"))?;
        let _ = stream.set_nodelay(true);
        let path = self
            .url
            .path_and_query()
            .map(|path| path.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let authority = match self.url.port_u16() {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        };
        let mut request = hyper::Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::USER_AGENT, "sluice")
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(secret) = &self.secret {
            request = request.header("X-Sluice-Signature", super::signature(secret, &body));
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|error| format!("HTTP request: {error}"))?;
        let status = if https {
            let name = ServerName::try_from(bare.clone())
                .map_err(|error| format!("not a valid TLS name {bare}: {error}"))?;
            let tls = self
                .connector
                .connect(name, stream)
                .await
                .map_err(|error| format!("TLS with {host}: {error}"))?;
            exchange(TokioIo::new(tls), request).await?
        } else {
            exchange(TokioIo::new(stream), request).await?
        };
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!("HTTP status {status}"))
        }
    }
}

async fn exchange<T>(io: T, request: hyper::Request<Full<Bytes>>) -> Result<u16, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|error| format!("HTTP: {error}"))?;
    let driver = tokio::spawn(connection);
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| format!("HTTP: {error}"))?;
        let status = response.status().as_u16();
        // Read (and drop) the answer, so that the connection ends cleanly.
        let _ = http_body_util::Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await;
        Ok(status)
    }
    .await;
    driver.abort();
    result
}
