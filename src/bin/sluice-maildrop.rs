//! `sluice-maildrop DIR [MAX_BYTES]`: the setgid helper (as Postfix's
//! postdrop) that lets any local user leave a message while the server is
//! down. Installed setgid to a group of its own that alone may write into
//! the maildrop directory (mode 1730, owned by the service user and that
//! group); `sluice sendmail` runs it with the maildrop file on stdin.
//!
//! It checks the file (`sluice::local::maildrop::parse`), refuses one
//! whose uid is not the caller's, and writes it under a temporary name,
//! fsynced, then renamed: the server takes in only finished files. It
//! changes nothing else and reads nothing but stdin.
//!
//! Exit status: 0 written; 1 a refused file (malformed, wrong uid, too
//! large); 75 a temporary failure (the directory cannot be written).

// The parser alone, not the whole library: the helper stays small.
#[path = "../local/maildrop.rs"]
#[allow(dead_code)] // the writer half is `sluice sendmail`'s
mod maildrop;

use std::io::{Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::PathBuf;
use std::process::ExitCode;

/// The largest file accepted, whatever the caller asks.
const HARD_LIMIT: u64 = 1 << 30;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let Some(dir) = args.first().map(PathBuf::from) else {
        eprintln!("usage: sluice-maildrop DIR [MAX_BYTES] < file");
        return ExitCode::from(2);
    };
    let limit = args
        .get(1)
        .and_then(|arg| arg.to_str()?.parse::<u64>().ok())
        .unwrap_or(HARD_LIMIT)
        .min(HARD_LIMIT);
    let mut bytes = Vec::new();
    if let Err(error) = std::io::stdin()
        .lock()
        .take(limit + 1)
        .read_to_end(&mut bytes)
    {
        eprintln!("sluice-maildrop: cannot read stdin: {error}");
        return ExitCode::from(75);
    }
    let dropped = match maildrop::parse(&bytes, limit as usize) {
        Ok(dropped) => dropped,
        Err(error) => {
            eprintln!("sluice-maildrop: refused: {error}");
            return ExitCode::from(1);
        }
    };
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    if dropped.uid != uid {
        eprintln!(
            "sluice-maildrop: refused: the file names uid {}, not yours ({uid})",
            dropped.uid
        );
        return ExitCode::from(1);
    }
    match write(&dir, &bytes) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "sluice-maildrop: cannot write into {}: {error}",
                dir.display()
            );
            ExitCode::from(75)
        }
    }
}

/// Writes `bytes` as `tmp-NAME`, fsyncs, renames it to `NAME`. The name
/// starts with the time, so the server takes files in order.
fn write(dir: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let name = format!(
        "{:013}{:06}-{}-{:08x}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        now.subsec_nanos() ^ std::process::id().rotate_left(13)
    );
    let temporary = dir.join(format!("tmp-{name}"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temporary)?;
    // The service user reads it through the group or as the directory's
    // owner; nobody else can reach the directory.
    file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&temporary, dir.join(&name)));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}
