//! Privileges: the umask every command runs under, becoming the spool's
//! owner, and `[server] user`.
//!
//! Run as root against a spool owned by another user, a command becomes
//! that user (supplementary groups, group, user: initgroups, setgid,
//! setuid, in that order, as postsuper does) before it opens anything in
//! the spool: a symbolic link the owner planted then gains nothing, and
//! every file written is the owner's.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

/// A user of the password database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Makes every file and directory this process creates 0600/0700 whatever
/// the umask it was started with (the sockets set their own modes).
pub fn restrict_umask() {
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe { libc::umask(0o077) };
}

/// True when running as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Run as root against an existing spool owned by another user: becomes
/// that user (with the group of its password entry, else the spool's
/// group). Otherwise does nothing. Returns the account switched to.
pub fn become_spool_owner(spool: &Path) -> io::Result<Option<Account>> {
    if !is_root() {
        return Ok(None);
    }
    let metadata = match std::fs::metadata(spool) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    if metadata.uid() == 0 {
        return Ok(None);
    }
    let account = account_by_uid(metadata.uid()).unwrap_or_else(|| Account {
        name: String::new(),
        uid: metadata.uid(),
        gid: metadata.gid(),
    });
    become_account(&account).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!(
                "cannot become uid {} (the owner of the spool {}): {error}",
                account.uid,
                spool.display()
            ),
        )
    })?;
    Ok(Some(account))
}

/// Becomes `account` for good: its supplementary groups (when it has a
/// name), its group, then its user.
pub fn become_account(account: &Account) -> io::Result<()> {
    if !account.name.is_empty() {
        let name = CString::new(account.name.as_str())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "user name with NUL"))?;
        // SAFETY: name is a valid NUL-terminated string.
        check(unsafe { libc::initgroups(name.as_ptr(), account.gid as libc::gid_t) })?;
    } else {
        // SAFETY: one group, from a valid array.
        check(unsafe { libc::setgroups(1, &account.gid) })?;
    }
    // SAFETY: setgid and setuid take plain integers.
    check(unsafe { libc::setgid(account.gid) })?;
    check(unsafe { libc::setuid(account.uid) })?;
    Ok(())
}

fn check(status: libc::c_int) -> io::Result<()> {
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The password entry of `uid`.
pub fn account_by_uid(uid: u32) -> Option<Account> {
    lookup(|entry, buffer, result| {
        // SAFETY: every pointer is valid for the call.
        unsafe { libc::getpwuid_r(uid, entry, buffer.as_mut_ptr(), buffer.len(), result) }
    })
}

/// The password entry named `name`.
pub fn account_by_name(name: &str) -> Option<Account> {
    let name = CString::new(name).ok()?;
    lookup(|entry, buffer, result| {
        // SAFETY: every pointer is valid for the call.
        unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                result,
            )
        }
    })
}

fn lookup(
    call: impl FnOnce(&mut libc::passwd, &mut [libc::c_char], &mut *mut libc::passwd) -> libc::c_int,
) -> Option<Account> {
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value to overwrite.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let status = call(&mut entry, &mut buffer, &mut result);
    if status != 0 || result.is_null() || entry.pw_name.is_null() {
        return None;
    }
    // SAFETY: the call succeeded: pw_name is a NUL-terminated string in `buffer`.
    let name = unsafe { CStr::from_ptr(entry.pw_name) }
        .to_string_lossy()
        .into_owned();
    Some(Account {
        name,
        uid: entry.pw_uid,
        gid: entry.pw_gid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_uid_0_in_the_password_database() {
        let root = account_by_uid(0).expect("root has an entry");
        assert_eq!(root.name, "root");
        assert_eq!(account_by_name("root").map(|a| a.uid), Some(0));
        assert_eq!(account_by_name("no-such-user-sluice"), None);
    }
}
