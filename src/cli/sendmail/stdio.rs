//! `sluice sendmail -bs`: an SMTP session on stdin and stdout, which
//! programs such as mutt (`sendmail="/usr/sbin/sendmail -bs"`) use to get
//! each recipient's verdict.
//!
//! The choice: when the running server answers, the dialogue is relayed
//! byte for byte to its first relay listener (the one plain `sendmail`
//! submits to), so the client talks to the real server and its replies are
//! the server's own. When no server answers, the same session runs in this
//! process over the spool, as [`super::maildrop`] does for a plain
//! submission: same replies, same `Received:` field and signing, durable
//! commit, delivery when the server starts. No STARTTLS either way over a
//! local pipe (the relayed server may offer it; a client over a pipe has
//! no reason to take it). The client is on loopback for the server, so
//! `relay_networks` decides as for any local submission.
//!
//! Exit status: 0 when the session ran (its replies told the client how
//! each command went), 1 when it could not start or the spool is
//! held by another process.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use crate::config::Config;

use super::SendmailError;
use super::maildrop::Maildrop;
use super::submit::connect_server;

/// Runs the session on stdin and stdout; see the module doc.
pub fn run(config: &Config) -> Result<u8, SendmailError> {
    let refused = match connect_server(config) {
        Ok((stream, address)) => {
            relay(stream).map_err(|error| SendmailError::Conversation {
                what: "relaying the session",
                server: format!("the server at {}", address.display()),
                reason: error.to_string(),
            })?;
            return Ok(0);
        }
        Err(error) => error,
    };
    let maildrop = Maildrop::open(config, refused)?;
    let stdio = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
    let session = maildrop.spawn(stdio);
    maildrop.close(session)?;
    Ok(0)
}

/// Copies stdin to the server and the server's replies to stdout, until
/// the server closes the connection (after QUIT, or its own timeout). The
/// end of stdin is passed on as a half-close, so the server sees the
/// client hang up.
fn relay(stream: UnixStream) -> io::Result<()> {
    let mut upstream = stream.try_clone()?;
    std::thread::spawn(move || {
        let _ = io::copy(&mut io::stdin().lock(), &mut upstream);
        let _ = upstream.shutdown(Shutdown::Write);
    });
    let mut replies = stream;
    let mut stdout = io::stdout().lock();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let read = replies.read(&mut buffer)?;
        if read == 0 {
            return stdout.flush();
        }
        // Flushed at once: the client waits for each reply.
        stdout.write_all(&buffer[..read])?;
        stdout.flush()?;
    }
}
