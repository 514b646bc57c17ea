//! `sluice hash-password`: an argon2id PHC hash for a `[[user]]` entry.

use std::io::Read;

use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};

/// Reads a password from stdin (one trailing newline is dropped) and prints
/// its argon2id PHC hash.
pub fn run() -> anyhow::Result<()> {
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .map_err(|error| anyhow::anyhow!("cannot read the password from stdin: {error}"))?;
    let password = password
        .strip_suffix('\n')
        .map(|rest| rest.strip_suffix('\r').unwrap_or(rest))
        .unwrap_or(&password);
    if password.is_empty() {
        anyhow::bail!("empty password on stdin");
    }
    println!("{}", hash(password)?);
    Ok(())
}

/// The argon2id PHC string for `password`, with a fresh random salt.
pub fn hash(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    let hash = argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|error| anyhow::anyhow!("hashing failed: {error}"))?;
    Ok(hash.to_string())
}
