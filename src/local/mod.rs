//! Local access (DESIGN.md "Local access and privileges"): who on this host
//! may touch the spool, and the doors local users submit mail through.
//!
//! - [`privilege`]: the umask, becoming the spool's owner (root running any
//!   command against a spool it does not own, as postsuper does) and
//!   `[server] user` after binding;
//! - [`spool_mode`]: the spool is 0700/0600, checked and repaired at start;
//! - [`submit`]: `local.submit_socket`, the UNIX socket `sluice sendmail`
//!   submits over, with the peer's uid (SO_PEERCRED) in `Received:`;
//! - [`maildrop`]: the maildrop file format (a pure parser of untrusted
//!   bytes), written by the setgid `sluice-maildrop` helper while the server
//!   is down, taken in by [`intake`].

pub mod intake;
pub mod maildrop;
pub mod privilege;
pub mod spool_mode;
pub mod submit;

use anyhow::Context as _;

use crate::config::Config;

/// `serve`, once its listeners are bound: started as root, becomes
/// `[server] user`, else the spool's owner when that is not root.
pub fn privilege_after_bind(config: &Config) -> anyhow::Result<()> {
    if !privilege::is_root() {
        return Ok(());
    }
    match &config.server.user {
        Some(name) => {
            let account = privilege::account_by_name(name).with_context(|| {
                format!("server.user: no user {name:?} in the password database")
            })?;
            let spool = &config.spool.path;
            let changed =
                spool_mode::give_to(spool, account.uid, account.gid).with_context(|| {
                    format!(
                        "cannot give the spool {} to server.user {name}",
                        spool.display()
                    )
                })?;
            if changed > 0 {
                tracing::warn!(spool = %spool.display(), user = %name, changed, "spool ownership repaired");
            }
            privilege::become_account(&account)
                .with_context(|| format!("server.user: cannot become {name}"))?;
            tracing::info!(user = %name, uid = account.uid, gid = account.gid, "running as server.user");
        }
        None => {
            if let Some(account) = privilege::become_spool_owner(&config.spool.path)? {
                tracing::info!(uid = account.uid, user = %account.name, "running as the spool's owner");
            }
        }
    }
    Ok(())
}

/// `serve`, once the spool is open: repairs its modes (0700/0600), makes
/// the maildrop directory when missing (1730: only the helper's group may
/// write into it, and nobody else may look), and binds the submit socket.
pub fn prepare_spool(config: &Config) -> anyhow::Result<submit::SubmitSocket> {
    use std::os::unix::fs::PermissionsExt as _;
    let spool = &config.spool.path;
    match spool_mode::repair(spool) {
        Ok(0) => {}
        Ok(changed) => tracing::warn!(
            spool = %spool.display(),
            changed,
            "spool modes repaired: directories 0700, files 0600"
        ),
        Err(error) => {
            return Err(error)
                .with_context(|| format!("cannot set the modes of the spool {}", spool.display()));
        }
    }
    let maildrop = config.local.maildrop(spool);
    if spool.is_absolute() && !maildrop.exists() {
        let made = std::fs::create_dir(&maildrop).and_then(|()| {
            std::fs::set_permissions(&maildrop, std::fs::Permissions::from_mode(0o1730))
        });
        if let Err(error) = made {
            tracing::warn!(maildrop = %maildrop.display(), %error, "cannot create the maildrop directory");
        }
    }
    let path = config.local.submit_socket(spool);
    let socket = submit::SubmitSocket::bind(&path)?;
    tracing::info!(socket = %path.display(), "local submission socket ready");
    Ok(socket)
}
