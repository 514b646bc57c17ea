//! Files the running server leaves in its spool directory for the operator
//! commands: the addresses it actually bound, so `sluice queue` finds the
//! admin API (`admin.address`), and scripts the SMTP listeners
//! (`smtp.address`; `sluice sendmail` uses the submit socket, never TCP),
//! even when the configuration says port 0 or was edited since the server
//! started.
//!
//! Each file is written atomically (a temporary file renamed over it) and
//! removed when its [`RunFile`] is dropped, that is when the server stops.
//! After a crash (kill -9) a stale file names a port nobody listens on; the
//! commands then fall back to the configured address.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::config::ListenerKind;

/// The file in the spool directory naming the running server's SMTP
/// listeners, one `KIND ADDRESS` line each (`relay 127.0.0.1:2525`), in
/// `[[listener]]` order.
pub const SMTP_ADDRESS_FILE: &str = "smtp.address";

/// Where the running server records its SMTP listeners for `spool`.
pub fn smtp_address_file(spool: &Path) -> PathBuf {
    spool.join(SMTP_ADDRESS_FILE)
}

/// A file that exists while the server runs: written at once, removed on
/// drop.
#[derive(Debug)]
pub struct RunFile {
    path: PathBuf,
}

impl RunFile {
    /// Writes `text` to `path` atomically: a reader sees the old file or
    /// the whole new one, never a part.
    pub fn write(path: PathBuf, text: &str) -> io::Result<RunFile> {
        replace(&path, text)?;
        Ok(RunFile { path })
    }

    /// Replaces the file's text, atomically as [`RunFile::write`] does.
    pub fn rewrite(&self, text: &str) -> io::Result<()> {
        replace(&self.path, text)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Writes `text` to a temporary file and renames it over `path`.
fn replace(path: &Path, text: &str) -> io::Result<()> {
    let mut temporary = path.to_path_buf().into_os_string();
    temporary.push(".new");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, text)?;
    if let Err(error) = std::fs::rename(&temporary, path) {
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    Ok(())
}

impl Drop for RunFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The text of [`SMTP_ADDRESS_FILE`] for these listeners.
pub fn format_listeners(listeners: &[(ListenerKind, SocketAddr)]) -> String {
    listeners
        .iter()
        .map(|(kind, address)| format!("{} {address}\n", kind_name(*kind)))
        .collect()
}

/// Reads the SMTP listeners a running server recorded in `spool`; `None`
/// when there is no such file (no server, or an older one) or it cannot be
/// read. Lines that do not parse are skipped.
///
/// A relative spool path (the embedded default `./spool`) is resolved
/// against the working directory, which may be anyone's (`/tmp`): a file
/// found there would let its owner receive the mail submitted, so it is not
/// read (`None`); the configured address is used instead.
pub fn read_listeners(spool: &Path) -> Option<Vec<(ListenerKind, SocketAddr)>> {
    if !spool.is_absolute() {
        return None;
    }
    let text = std::fs::read_to_string(smtp_address_file(spool)).ok()?;
    Some(parse_listeners(&text))
}

/// Parses the text of [`SMTP_ADDRESS_FILE`], skipping malformed lines.
pub fn parse_listeners(text: &str) -> Vec<(ListenerKind, SocketAddr)> {
    text.lines()
        .filter_map(|line| {
            let (kind, address) = line.trim().split_once(' ')?;
            let kind = match kind {
                "relay" => ListenerKind::Relay,
                "submission" => ListenerKind::Submission,
                "submissions" => ListenerKind::Submissions,
                _ => return None,
            };
            Some((kind, address.trim().parse().ok()?))
        })
        .collect()
}

fn kind_name(kind: ListenerKind) -> &'static str {
    match kind {
        ListenerKind::Relay => "relay",
        ListenerKind::Submission => "submission",
        ListenerKind::Submissions => "submissions",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_round_trip_and_bad_lines_are_skipped() {
        let listeners = vec![
            (ListenerKind::Relay, "127.0.0.1:2525".parse().unwrap()),
            (ListenerKind::Submission, "[::1]:587".parse().unwrap()),
        ];
        let text = format_listeners(&listeners);
        assert_eq!(text, "relay 127.0.0.1:2525\nsubmission [::1]:587\n");
        assert_eq!(parse_listeners(&text), listeners);
        assert_eq!(
            parse_listeners("garbage\nrelay nowhere\nlmtp 127.0.0.1:24\nrelay 127.0.0.1:1\n"),
            vec![(ListenerKind::Relay, "127.0.0.1:1".parse().unwrap())]
        );
    }

    #[test]
    fn a_record_under_a_relative_spool_path_is_not_trusted() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(smtp_address_file(dir.path()), "relay 127.0.0.1:1\n").expect("write");
        assert_eq!(read_listeners(dir.path()).map(|l| l.len()), Some(1));
        assert_eq!(read_listeners(Path::new("./spool")), None);
    }

    #[test]
    fn run_file_is_removed_when_dropped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("x.address");
        let file = RunFile::write(path.clone(), "relay 127.0.0.1:1\n").expect("write");
        assert_eq!(
            std::fs::read_to_string(file.path()).expect("read"),
            "relay 127.0.0.1:1\n"
        );
        drop(file);
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    }
}
