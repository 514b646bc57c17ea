//! The local user who runs `sluice sendmail`: the default sender's login
//! name and the full name of an added `From:` header.

use std::ffi::CStr;

/// The invoking user, for the default sender and `From:` name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The login name: the local part of the default sender.
    pub login: String,
    /// The GECOS full name, when the password database has one.
    pub full_name: Option<String>,
}

/// The password database entry of the real user ID; without one, the login
/// name in `$LOGNAME`, then `$USER` (when printable ASCII), else `nobody`.
pub fn invoking_user() -> User {
    if let Some(user) = password_entry() {
        return user;
    }
    let login = ["LOGNAME", "USER"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .find(|value| !value.is_empty() && value.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or_else(|| "nobody".to_string());
    User {
        login,
        full_name: None,
    }
}

/// `getpwuid_r(getuid())`: the login name and GECOS full name.
fn password_entry() -> Option<User> {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd (null pointers, zero IDs) is a valid value
    // for getpwuid_r to overwrite.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the strings it stores in
    // `entry` point into `buffer`, which outlives their use below.
    let status = unsafe {
        libc::getpwuid_r(
            uid,
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        )
    };
    if status != 0 || result.is_null() || entry.pw_name.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so pw_name is a NUL-terminated string in `buffer`.
    let login = unsafe { CStr::from_ptr(entry.pw_name) }
        .to_string_lossy()
        .into_owned();
    let gecos = if entry.pw_gecos.is_null() {
        String::new()
    } else {
        // SAFETY: as for pw_name.
        unsafe { CStr::from_ptr(entry.pw_gecos) }
            .to_string_lossy()
            .into_owned()
    };
    if login.is_empty() {
        return None;
    }
    let full_name = gecos_full_name(&gecos, &login);
    Some(User { login, full_name })
}

/// The full name in a GECOS field: its first comma-separated part, with `&`
/// standing for the capitalised login name (passwd(5)).
pub fn gecos_full_name(gecos: &str, login: &str) -> Option<String> {
    let first = gecos.split(',').next().unwrap_or("").trim();
    if first.is_empty() {
        return None;
    }
    let mut capitalised = login.to_string();
    if let Some(initial) = capitalised.get(..1) {
        let upper = initial.to_ascii_uppercase();
        capitalised.replace_range(..1, &upper);
    }
    Some(first.replace('&', &capitalised))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gecos_first_field_with_ampersand_is_the_full_name() {
        assert_eq!(
            gecos_full_name("& Doe,Room 1,,", "john").as_deref(),
            Some("John Doe")
        );
        assert_eq!(gecos_full_name(",,,", "john"), None);
        assert_eq!(gecos_full_name("", "john"), None);
    }

    #[test]
    fn the_invoking_user_has_a_printable_login() {
        let user = invoking_user();
        assert!(!user.login.is_empty());
        assert!(!user.login.contains(['@', ' ', '\n']), "{user:?}");
    }
}
