//! Private key files (DKIM, TLS): refused when anyone but their owner may
//! read them, as OpenDKIM refuses such keys. A key others can read is a key
//! others may have copied; the error says how to fix the mode.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// Why a key file is refused before it is read.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file cannot be examined.
    #[error("cannot read {path}: {source}", path = .path.display())]
    Unreadable {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// Group or other users may read (or write) it.
    #[error(
        "private key {path} is accessible to group or other users (mode {mode:03o}); \
         run `chmod 600 {path}`",
        path = .path.display()
    )]
    TooOpen { path: std::path::PathBuf, mode: u32 },
}

/// Checks that only the owner may access the key file at `path`.
pub fn check_private(path: &Path) -> Result<(), KeyFileError> {
    let metadata = std::fs::metadata(path).map_err(|source| KeyFileError::Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_others_can_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(&path, "x").unwrap();
        for mode in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let error = check_private(&path).unwrap_err().to_string();
            assert!(error.contains("chmod 600"), "{error}");
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            check_private(&path).unwrap();
        }
    }
}
