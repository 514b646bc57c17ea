//! The admin API's token: `[admin] token`, or, when none is configured, one
//! generated at first start into `<spool>/admin.token` (0600).
//!
//! On `admin.address` every route but `GET /health` and `GET /metrics` needs
//! it, loopback included: any local user reaches loopback. The token in
//! force is always the configured one, else the file's, so no reload (one
//! that removes `[admin] token`) can make the API answer without a token.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::context::Context;

/// The generated token's file in the spool directory.
pub const TOKEN_FILE: &str = "admin.token";

/// Random bytes in a generated token (hex-encoded in the file).
const TOKEN_BYTES: usize = 32;

/// The token the API requires, shared by every route and the dashboard.
#[derive(Clone)]
pub struct AdminToken {
    ctx: Context,
    /// `<spool>/admin.token`.
    file: PathBuf,
    /// The file's token, read (or created) once, when first needed.
    generated: Arc<OnceLock<String>>,
}

impl AdminToken {
    /// The token rule over `ctx`'s settings. With no `[admin] token`, reads
    /// or creates the token file now, so a start that cannot fails.
    pub fn new(ctx: &Context) -> anyhow::Result<AdminToken> {
        let token = AdminToken {
            ctx: ctx.clone(),
            file: ctx.config().spool.path.join(TOKEN_FILE),
            generated: Arc::new(OnceLock::new()),
        };
        if ctx.config().admin.token.is_none() {
            token.generated()?;
        }
        Ok(token)
    }

    /// The token file's path when the token in force comes from it.
    pub fn file_in_use(&self) -> Option<&Path> {
        self.ctx
            .config()
            .admin
            .token
            .is_none()
            .then_some(self.file.as_path())
    }

    /// The token in force: `[admin] token` as now loaded, else the file's.
    /// `None` only when the file can be neither read nor created (then
    /// nothing is accepted).
    pub fn expected(&self) -> Option<String> {
        if let Some(token) = self.ctx.config().admin.token.clone() {
            return Some(token);
        }
        match self.generated() {
            Ok(token) => Some(token),
            Err(error) => {
                tracing::error!(%error, "no admin token: every admin API request is refused");
                None
            }
        }
    }

    /// Whether `given` is the token in force (compared in constant time).
    pub fn accepts(&self, given: &str) -> bool {
        self.expected()
            .is_some_and(|expected| same_secret(given.as_bytes(), expected.as_bytes()))
    }

    fn generated(&self) -> anyhow::Result<String> {
        if let Some(token) = self.generated.get() {
            return Ok(token.clone());
        }
        let token = load_or_create(&self.file)?;
        Ok(self.generated.get_or_init(|| token).clone())
    }
}

/// Reads the token in `path`, or creates the file (0600, never through a
/// symbolic link) with a new random token.
pub fn load_or_create(path: &Path) -> anyhow::Result<String> {
    let mut options = std::fs::OpenOptions::new();
    options.custom_flags(libc::O_NOFOLLOW);
    match options.read(true).open(path) {
        Ok(mut file) => {
            let mode = file.metadata()?.permissions().mode();
            if mode & 0o077 != 0 {
                anyhow::bail!(
                    "the admin token file {} is readable by other users (mode {:o}): \
                     run `chmod 600 {}`",
                    path.display(),
                    mode & 0o777,
                    path.display()
                );
            }
            let mut text = String::new();
            file.read_to_string(&mut text)
                .map_err(|error| anyhow::anyhow!("cannot read {}: {error}", path.display()))?;
            let token = text.trim().to_string();
            if token.is_empty() {
                anyhow::bail!(
                    "the admin token file {} is empty: remove it to have a new one generated",
                    path.display()
                );
            }
            Ok(token)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(error) => Err(anyhow::anyhow!(
            "cannot read the admin token file {}: {error}",
            path.display()
        )),
    }
}

fn create(path: &Path) -> anyhow::Result<String> {
    use rand::RngCore as _;
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        file.write_all(format!("{token}\n").as_bytes())?;
        file.sync_all()
    })();
    match written {
        Ok(()) => Ok(token),
        // Created meanwhile by another process: that one is the token.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => load_or_create(path),
        Err(error) => Err(anyhow::anyhow!(
            "cannot create the admin token file {}: {error}",
            path.display()
        )),
    }
}

/// Compares without stopping at the first difference, so response time does
/// not tell how much of a guessed token was right.
pub fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_is_kept_in_a_private_file_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        let first = load_or_create(&path).unwrap();
        assert_eq!(first.len(), TOKEN_BYTES * 2);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create(&path).unwrap(), first);
    }

    #[test]
    fn a_token_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        std::fs::write(&path, "abc\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_or_create(&path).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
    }

    #[test]
    fn a_linked_token_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        let path = dir.path().join(TOKEN_FILE);
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(load_or_create(&path).is_err());
        assert!(!target.exists());
    }
}
