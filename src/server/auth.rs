//! AUTH credential checks (RFC 4954) against `[[user]]` argon2id PHC hashes,
//! run off the async runtime, and the growing delay after failures.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordVerifier};

use crate::config::UserConfig;
use crate::server::listener::client_key;
use crate::smtp::session::Credentials;

/// Failures older than this no longer slow a client down.
const FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);
/// The delay before the first `535`; it doubles with each further failure.
const FIRST_DELAY: Duration = Duration::from_millis(200);
/// The delay never grows beyond this.
const MAX_DELAY: Duration = Duration::from_secs(8);
/// Clients remembered at most (oldest forgotten first beyond this).
const MAX_TRACKED_CLIENTS: usize = 10_000;

/// Checks credentials and remembers recent failures per client address.
pub struct Authenticator {
    /// User name → PHC hash string.
    users: Arc<HashMap<String, String>>,
    /// Client address → (recent failures, time of the last one).
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
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
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Returns the user name when the password matches its hash. The argon2
    /// work runs in `spawn_blocking`. An unknown user costs the same work as
    /// a known one (checked against another user's hash) so timing does not
    /// reveal which names exist.
    pub async fn verify(&self, credentials: Credentials) -> Option<String> {
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

    /// Records a failure from `client` and returns how long to wait before
    /// answering it: 200 ms, doubling per recent failure, at most 8 s. An
    /// IPv6 client counts by its /64 ([`client_key`]).
    pub fn failure_delay(&self, client: IpAddr) -> Duration {
        let client = client_key(client);
        let now = Instant::now();
        let Ok(mut failures) = self.failures.lock() else {
            return MAX_DELAY;
        };
        if failures.len() >= MAX_TRACKED_CLIENTS {
            failures.retain(|_, (_, last)| now.duration_since(*last) < FAILURE_MEMORY);
            if failures.len() >= MAX_TRACKED_CLIENTS {
                failures.clear();
            }
        }
        let entry = failures.entry(client).or_insert((0, now));
        if now.duration_since(entry.1) >= FAILURE_MEMORY {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        let doublings = entry.0.saturating_sub(1).min(16);
        FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
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

    #[test]
    fn failure_delay_counts_an_ipv6_client_by_its_64_network() {
        let auth = authenticator();
        let first = auth.failure_delay("2001:db8:0:1::1".parse().unwrap());
        let second = auth.failure_delay("2001:db8:0:1::2".parse().unwrap());
        assert!(second > first, "{first:?} then {second:?}");
        assert_eq!(
            auth.failure_delay("2001:db8:0:2::1".parse().unwrap()),
            first
        );
    }

    #[test]
    fn failure_delay_grows_per_client() {
        let auth = authenticator();
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let first = auth.failure_delay(client);
        let second = auth.failure_delay(client);
        assert!(second > first, "{first:?} then {second:?}");
        assert_eq!(auth.failure_delay("192.0.2.2".parse().unwrap()), first);
        for _ in 0..20 {
            assert!(auth.failure_delay(client) <= MAX_DELAY);
        }
    }
}
