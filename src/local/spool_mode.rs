//! The spool is the service user's alone: 0700 directories, 0600 files,
//! whatever the umask it was created under. [`repair`] checks and fixes
//! the modes at start; the umask ([`super::privilege::restrict_umask`])
//! keeps new files so.

use std::io;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::Path;

/// Makes `spool` 0700 and everything in it 0700 (directories) or 0600
/// (files), without following symbolic links (a link is left as it is;
/// its target is not the spool's). Sockets keep their own modes. Returns
/// how many modes were changed.
pub fn repair(spool: &Path) -> io::Result<usize> {
    let mut changed = 0;
    repair_entry(spool, &mut changed)?;
    Ok(changed)
}

fn repair_entry(path: &Path, changed: &mut usize) -> io::Result<()> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        // Removed meanwhile (a body file delivered): nothing to repair.
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    let kind = metadata.file_type();
    let wanted = if kind.is_dir() {
        0o700
    } else if kind.is_file() {
        0o600
    } else {
        // Symbolic links, sockets, anything else: not ours to change.
        return Ok(());
    };
    if kind.is_socket() {
        return Ok(());
    }
    if metadata.permissions().mode() & 0o7777 != wanted {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(wanted))?;
        *changed += 1;
    }
    if kind.is_dir() {
        for entry in std::fs::read_dir(path)? {
            repair_entry(&entry?.path(), changed)?;
        }
    }
    Ok(())
}

/// Makes everything in `spool` (itself included) owned by `uid`:`gid`,
/// never through a symbolic link (lchown); root only, before becoming
/// `[server] user`. A missing spool is left to be created. Returns how many
/// entries changed owner.
pub fn give_to(spool: &Path, uid: u32, gid: u32) -> io::Result<usize> {
    use std::os::unix::fs::MetadataExt as _;
    fn walk(path: &Path, uid: u32, gid: u32, changed: &mut usize) -> io::Result<()> {
        let metadata = match std::fs::symlink_metadata(path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        };
        if metadata.uid() != uid || metadata.gid() != gid {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
            *changed += 1;
        }
        if metadata.is_dir() {
            for entry in std::fs::read_dir(path)? {
                walk(&entry?.path(), uid, gid, changed)?;
            }
        }
        Ok(())
    }
    let mut changed = 0;
    walk(spool, uid, gid, &mut changed)?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn directories_become_0700_and_files_0600_and_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        std::fs::create_dir_all(spool.join("db")).unwrap();
        std::fs::write(spool.join("db/db"), "x").unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "y").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&outside, spool.join("link")).unwrap();
        for path in [&spool, &spool.join("db")] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(spool.join("db/db"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        assert_eq!(repair(&spool).unwrap(), 3);
        assert_eq!(mode(&spool), 0o700);
        assert_eq!(mode(&spool.join("db")), 0o700);
        assert_eq!(mode(&spool.join("db/db")), 0o600);
        assert_eq!(mode(&outside), 0o644, "a link's target is left alone");
        assert_eq!(repair(&spool).unwrap(), 0);
    }
}
