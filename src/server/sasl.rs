//! AUTH credential checks (RFC 4954, SASL PLAIN and LOGIN) against `[[user]]`
//! argon2id PHC hashes, run off the async runtime. The delay after failures
//! is kept per client in [`crate::server::limits::AuthFailures`].

use std::collections::HashMap;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordVerifier};

use crate::config::UserConfig;
use crate::smtp::session::Credentials;

/// Password checks (argon2) running at once, server-wide.
pub const MAX_CONCURRENT_HASHES: usize = 4;

/// Bounds the argon2 work: a flood of bad AUTH cannot take every blocking
/// thread or hundreds of MiB.
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_CONCURRENT_HASHES);

/// Checks credentials against the configured users.
pub struct Authenticator {
    /// User name → PHC hash string.
    users: Arc<HashMap<String, String>>,
}

impl Authenticator {
    /// Builds the user table from `[[user]]`.
    pub fn new(users: &[UserConfig]) -> Authenticator {
        Authenticator {
            users: Arc::new(
                users
                    .iter()
                    .map(|user| (user.name.clone(), user.password_hash.clone()))
                    .collect(),
            ),
        }
    }

    /// Returns the user name when the password matches its hash. The argon2
    /// work runs in `spawn_blocking`. An unknown user costs the same work as
    /// a known one (checked against another user's hash) so timing does not
    /// reveal which names exist.
    ///
    /// At most [`MAX_CONCURRENT_HASHES`] checks run at once across the
    /// server (each holds ~19 MiB and a blocking thread body I/O shares);
    /// the others wait their turn.
    pub async fn verify(&self, credentials: Credentials) -> Option<String> {
        let _permit = HASHING.acquire().await.ok()?;
        let users = self.users.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let (hash, known) = match users.get(&credentials.username) {
                Some(hash) => (hash.as_str(), true),
                None => (users.values().next()?.as_str(), false),
            };
            let parsed = PasswordHash::new(hash).ok()?;
            let matches = argon2::Argon2::default()
                .verify_password(credentials.password.as_bytes(), &parsed)
                .is_ok();
            (matches && known).then_some(credentials.username)
        })
        .await;
        checked.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, SaltString};

    fn cheap_hash(password: &str) -> String {
        let params = argon2::Params::new(256, 1, 1, None).unwrap();
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = SaltString::encode_b64(b"saltsaltsalt").unwrap();
        argon
            .hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    fn authenticator() -> Authenticator {
        Authenticator::new(&[UserConfig {
            name: "app".into(),
            password_hash: cheap_hash("right"),
        }])
    }

    fn credentials(username: &str, password: &str) -> Credentials {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    #[tokio::test]
    async fn right_password_names_the_user() {
        let auth = authenticator();
        assert_eq!(
            auth.verify(credentials("app", "right")).await,
            Some("app".into())
        );
    }

    #[tokio::test]
    async fn wrong_password_or_unknown_user_fails() {
        let auth = authenticator();
        assert_eq!(auth.verify(credentials("app", "wrong")).await, None);
        assert_eq!(auth.verify(credentials("nobody", "right")).await, None);
        assert_eq!(
            Authenticator::new(&[])
                .verify(credentials("app", "right"))
                .await,
            None
        );
    }
}
