//! Taking maildrop files in: at start and then every [`POLL`], each file
//! the `sluice-maildrop` helper left in the maildrop directory is checked
//! ([`super::maildrop::parse`]), its owner compared with the uid it names,
//! and the message submitted through the server's own local session (the
//! same `Received:` field naming the uid, DKIM signing and durable commit
//! as a submission over the socket). Only after the 250 is the file removed.
//!
//! A malformed or oversized file, or one refused with a 5xx, is moved to
//! `rejected/` in the maildrop directory with a log line; a 4xx (disk
//! low) leaves it for the next pass. Nothing here can crash the server.

use std::io;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::maildrop::{self, Dropped};
use crate::context::Context;
use crate::server::Server;

/// How often the maildrop directory is looked at.
pub const POLL: Duration = Duration::from_secs(1);

/// How old an unfinished (`tmp-`) file must be to count as abandoned.
const ABANDONED: Duration = Duration::from_secs(24 * 3600);

/// Where refused files are set aside, inside the maildrop directory.
pub const REJECTED: &str = "rejected";

/// What became of one file.
#[derive(Debug)]
enum Taken {
    Queued(String),
    /// Refused for good: set aside.
    Refused(String),
    /// Try again later.
    Later(String),
}

/// Takes maildrop files in until `ctx.shutdown`.
pub async fn run(ctx: Context, server: Arc<Server>, dir: PathBuf) {
    loop {
        scan(&ctx, &server, &dir).await;
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// One pass over the maildrop directory.
pub async fn scan(ctx: &Context, server: &Arc<Server>, dir: &Path) {
    let listed = {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || list(&dir)).await
    };
    let names = match listed {
        Ok(Ok(names)) => names,
        Ok(Err(error)) if error.kind() == io::ErrorKind::NotFound => return,
        Ok(Err(error)) => {
            tracing::warn!(maildrop = %dir.display(), %error, "cannot read the maildrop directory");
            return;
        }
        Err(_) => return,
    };
    let max_size = usize::try_from(ctx.config().limits.max_message_size)
        .unwrap_or(usize::MAX)
        .saturating_add(1 << 20);
    for name in names {
        if ctx.shutdown.is_cancelled() {
            return;
        }
        let path = dir.join(&name);
        let taken = take(server, &path, max_size).await;
        match taken {
            Taken::Queued(id) => {
                tracing::info!(file = %name, queue_id = %id, "maildrop file taken in");
                if let Err(error) = std::fs::remove_file(&path) {
                    tracing::error!(file = %path.display(), %error, "cannot remove a maildrop file taken in: it will be queued again");
                }
            }
            Taken::Refused(reason) => {
                tracing::warn!(file = %name, %reason, "maildrop file refused: set aside in {REJECTED}/");
                let aside = dir.join(REJECTED);
                let moved = std::fs::create_dir_all(&aside)
                    .and_then(|()| std::fs::rename(&path, aside.join(&name)));
                if let Err(error) = moved {
                    tracing::error!(file = %path.display(), %error, "cannot set the maildrop file aside; removing it");
                    let _ = std::fs::remove_file(&path);
                }
            }
            Taken::Later(reason) => {
                tracing::info!(file = %name, %reason, "maildrop file not taken in yet: will retry");
            }
        }
    }
}

/// The names of finished files (the helper writes `tmp-*` first, then
/// renames), oldest first (names start with the time).
fn list(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with("tmp-") {
            // Left by a helper that died mid-write: nobody will finish it.
            let abandoned = entry
                .metadata()
                .and_then(|metadata| metadata.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .is_some_and(|age| age > ABANDONED);
            if abandoned {
                tracing::warn!(file = %name, "removing an unfinished maildrop file");
                let _ = std::fs::remove_file(entry.path());
            }
            continue;
        }
        if name == REJECTED || name.starts_with('.') {
            continue;
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}

async fn take(server: &Arc<Server>, path: &Path, max_size: usize) -> Taken {
    let read = {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || read_file(&path, max_size)).await
    };
    let (owner, bytes) = match read {
        Ok(Ok(read)) => read,
        Ok(Err(error)) => return Taken::Refused(error.to_string()),
        Err(error) => return Taken::Later(error.to_string()),
    };
    let dropped = match maildrop::parse(&bytes, max_size) {
        Ok(dropped) => dropped,
        Err(error) => return Taken::Refused(error.to_string()),
    };
    if dropped.uid != owner {
        return Taken::Refused(format!(
            "names uid {} but belongs to uid {owner}",
            dropped.uid
        ));
    }
    match submit(server, &dropped).await {
        Ok(Ok(id)) => Taken::Queued(id),
        Ok(Err(reply)) if reply.starts_with('4') => Taken::Later(reply),
        Ok(Err(reply)) => Taken::Refused(reply),
        Err(error) => Taken::Later(error.to_string()),
    }
}

/// Reads a regular file, never through a link, of at most `max_size`
/// bytes; with its owner's uid.
fn read_file(path: &Path, max_size: usize) -> io::Result<(u32, Vec<u8>)> {
    use std::io::Read as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    if metadata.len() > max_size as u64 {
        return Err(io::Error::other(format!("larger than {max_size} bytes")));
    }
    let mut bytes = Vec::with_capacity(metadata.len() as usize);
    file.take(max_size as u64 + 1).read_to_end(&mut bytes)?;
    Ok((metadata.uid(), bytes))
}

/// Submits `dropped` through the server's local session. The queue ID, or
/// the refusing reply.
async fn submit(server: &Arc<Server>, dropped: &Dropped<'_>) -> io::Result<Result<String, String>> {
    let uid = dropped.uid;
    let name = tokio::task::spawn_blocking(move || {
        super::privilege::account_by_uid(uid).map(|account| account.name)
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_else(|| format!("uid{uid}"));
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let session = {
        let server = server.clone();
        tokio::spawn(async move { server.serve_local_from(theirs, Some((uid, &name))).await })
    };
    let (read, mut write) = tokio::io::split(ours);
    let mut read = BufReader::new(read);
    let result = async {
        expect(&mut read, "2").await?;
        let utf8 = !dropped.sender.is_ascii() || dropped.recipients.iter().any(|r| !r.is_ascii());
        let mut commands = vec!["EHLO localhost".to_string()];
        commands.push(format!(
            "MAIL FROM:<{}> BODY=8BITMIME{}",
            dropped.sender,
            if utf8 { " SMTPUTF8" } else { "" }
        ));
        for recipient in &dropped.recipients {
            commands.push(format!("RCPT TO:<{recipient}>"));
        }
        commands.push("DATA".into());
        for command in commands {
            write.write_all(format!("{command}\r\n").as_bytes()).await?;
            let reply = reply(&mut read).await?;
            if !(reply.starts_with('2') || reply.starts_with('3')) {
                return Ok(Err(reply));
            }
        }
        let mut stuffed = Vec::with_capacity(dropped.message.len() + 1024);
        let mut stuffer = crate::smtp::dot::DotStuffer::new();
        stuffer.encode(dropped.message, &mut stuffed);
        stuffer.finish(&mut stuffed);
        write.write_all(&stuffed).await?;
        let reply = reply(&mut read).await?;
        let _ = write.write_all(b"QUIT\r\n").await;
        if !reply.starts_with('2') {
            return Ok(Err(reply));
        }
        let id = reply
            .split("queued as ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("?")
            .to_string();
        Ok(Ok(id))
    }
    .await;
    drop(write);
    drop(read);
    let _ = session.await;
    result
}

/// The next reply's last line (multi-line replies: `250-` lines skipped).
async fn reply<R: tokio::io::AsyncBufRead + Unpin>(read: &mut R) -> io::Result<String> {
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the local session closed",
            ));
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(line.trim_end().to_string());
        }
    }
}

async fn expect<R: tokio::io::AsyncBufRead + Unpin>(read: &mut R, class: &str) -> io::Result<()> {
    let line = reply(read).await?;
    if line.starts_with(class) {
        Ok(())
    } else {
        Err(io::Error::other(format!("unexpected greeting {line}")))
    }
}
