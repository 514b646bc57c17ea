//! With no server answering and a spool this user may not write (neither
//! root nor its owner): the message goes through the setgid
//! `sluice-maildrop` helper installed beside this binary, into the
//! maildrop directory the server takes files in from (see
//! [`crate::local::intake`]), as Postfix's sendmail goes through postdrop.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::config::Config;
use crate::local::maildrop;

use super::SendmailError;
use super::message::WriteError;

/// The helper's file name, beside `sluice`.
pub const HELPER: &str = "sluice-maildrop";

/// True when this process may write the spool itself: root (which becomes
/// the owner first), or the spool's owner, or no spool yet.
pub fn may_write_spool(config: &Config) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    if crate::local::privilege::is_root() {
        return true;
    }
    match std::fs::metadata(&config.spool.path) {
        // SAFETY: geteuid has no preconditions and cannot fail.
        Ok(metadata) => metadata.uid() == unsafe { libc::geteuid() },
        Err(_) => true,
    }
}

/// Hands the message to the helper. `refused` says why no server took it.
pub fn drop_off(
    config: &Config,
    sender: &str,
    recipients: &[String],
    write_message: impl FnOnce(&mut dyn Write) -> Result<(), WriteError>,
    refused: &SendmailError,
) -> Result<String, SendmailError> {
    let directory = config.local.maildrop(&config.spool.path);
    let failed = |reason: String, temporary: bool| SendmailError::Maildrop {
        path: directory.clone(),
        reason: format!(
            "{reason} (no server took the message: {})",
            refused.no_server_reason()
        ),
        temporary,
    };
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let mut file = maildrop::envelope(uid, sender, recipients);
    write_message(&mut file).map_err(|error| SendmailError::Input(error.to_string()))?;
    let helper = helper_path().map_err(|reason| failed(reason, true))?;
    let limit = config.limits.max_message_size.saturating_add(1 << 20);
    let mut child = Command::new(&helper)
        .arg(&directory)
        .arg(limit.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| failed(format!("cannot run {}: {error}", helper.display()), true))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A write error shows as the helper's status below.
        let _ = stdin.write_all(&file);
    }
    let output = child
        .wait_with_output()
        .map_err(|error| failed(format!("{}: {error}", helper.display()), true))?;
    let said = String::from_utf8_lossy(&output.stderr).trim().to_string();
    match output.status.code() {
        Some(0) => Ok("the maildrop".into()),
        Some(1) => Err(failed(said, false)),
        _ => Err(failed(said, true)),
    }
}

/// `sluice-maildrop` beside this executable.
fn helper_path() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|error| format!("cannot find {HELPER}: {error}"))?;
    let path = exe
        .parent()
        .map(|dir| dir.join(HELPER))
        .ok_or_else(|| format!("cannot find {HELPER}"))?;
    if !path.exists() {
        return Err(format!("{} is not installed", path.display()));
    }
    Ok(path)
}
