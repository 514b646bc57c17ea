//! Call-ahead verification (`[recipients] verify = "call-ahead"`): asks the
//! recipient domain's next hop whether an address exists, the way Postfix's
//! `reject_unverified_recipient` does: `EHLO`, `MAIL FROM:<>`, `RCPT TO:`,
//! then `RSET` and `QUIT`; never DATA, so nothing is ever delivered by a
//! probe. Plain SMTP: the next hop of an MX is usually the inner server on
//! a private network.
//!
//! The answer: a 2xx to RCPT means the address exists, a 5xx that it does
//! not; anything else (no next hop, no connection, a 4xx, a refused MAIL,
//! a timeout) means the question could not be answered, which is never
//! taken as "unknown".

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::delivery::route::Router;
use crate::smtp::reply::{Reply, ReplyBuffer};

/// The most one probe may take, connection included.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the next hop said about an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// RCPT got a 2xx.
    Exists,
    /// RCPT got a 5xx: the reply, for the log.
    Unknown(String),
    /// The next hop could not be asked, or gave no final answer: why.
    Unavailable(String),
}

/// Asks the next hop of `address`'s domain about it, saying `hostname` in
/// EHLO; at most [`PROBE_TIMEOUT`].
pub async fn probe(router: &Router, hostname: &str, address: &str) -> Answer {
    match tokio::time::timeout(PROBE_TIMEOUT, probe_hosts(router, hostname, address)).await {
        Ok(answer) => answer,
        Err(_) => Answer::Unavailable(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

async fn probe_hosts(router: &Router, hostname: &str, address: &str) -> Answer {
    let Some((_, domain)) = address.rsplit_once('@') else {
        return Answer::Unavailable("no domain".into());
    };
    let hop = match router.next_hop(domain).await {
        Ok(hop) => hop,
        Err(error) => return Answer::Unavailable(error.to_string()),
    };
    let mut last = String::from("no host to ask");
    for host in &hop.hosts {
        let addresses = match router.addresses(&hop, host).await {
            Ok(addresses) => addresses,
            Err(error) => {
                last = error.to_string();
                continue;
            }
        };
        for ip in addresses {
            let target = SocketAddr::new(ip, host.port);
            match ask(target, hostname, address).await {
                Ok(answer) => return answer,
                Err(error) => last = format!("{target}: {error}"),
            }
        }
    }
    Answer::Unavailable(last)
}

/// One SMTP conversation with `target`; `Err` when it broke before the
/// RCPT reply (the next host is tried then).
async fn ask(target: SocketAddr, hostname: &str, address: &str) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect(target).await?;
    let mut replies = ReplyBuffer::new();
    let greeting = read_reply(&mut stream, &mut replies).await?;
    if greeting.code() != 220 {
        return Ok(Answer::Unavailable(format!(
            "greeting {}",
            greeting.one_line()
        )));
    }
    for command in [format!("EHLO {hostname}"), "MAIL FROM:<>".to_string()] {
        let reply = command_reply(&mut stream, &mut replies, &command).await?;
        if reply.code() / 100 != 2 {
            return Ok(Answer::Unavailable(format!(
                "{} got {}",
                command.split(' ').next().unwrap_or(""),
                reply.one_line()
            )));
        }
    }
    let reply = command_reply(&mut stream, &mut replies, &format!("RCPT TO:<{address}>")).await?;
    let answer = match reply.code() / 100 {
        2 => Answer::Exists,
        5 => Answer::Unknown(reply.one_line()),
        _ => Answer::Unavailable(format!("RCPT got {}", reply.one_line())),
    };
    // Courtesy only: the answer is known whatever comes now.
    let _ = command_reply(&mut stream, &mut replies, "RSET").await;
    let _ = stream.write_all(b"QUIT\r\n").await;
    Ok(answer)
}

async fn command_reply(
    stream: &mut TcpStream,
    replies: &mut ReplyBuffer,
    command: &str,
) -> std::io::Result<Reply> {
    stream
        .write_all(format!("{command}\r\n").as_bytes())
        .await?;
    read_reply(stream, replies).await
}

async fn read_reply(stream: &mut TcpStream, replies: &mut ReplyBuffer) -> std::io::Result<Reply> {
    loop {
        match replies.next_reply() {
            Ok(Some(reply)) => return Ok(reply),
            Ok(None) => {}
            Err(error) => return Err(std::io::Error::other(error.to_string())),
        }
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        replies.input().extend_from_slice(&chunk[..read]);
    }
}
