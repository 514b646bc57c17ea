//! The command line outside the server: check-config, hash-password, usage.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod server;
    pub mod smtp;
    pub use {server::*, smtp::*};
}

fn sluice(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    common::run(Some(stdin.unwrap_or("").as_bytes()), |command| {
        command.args(args);
    })
}

#[test]
fn example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/sluice.toml");
    let (code, stdout, stderr) = sluice(&["check-config", "--config", path], None);
    assert_eq!(code, 0, "check-config rejected conf/sluice.toml: {stderr}");
    assert!(
        stdout.contains("max_message_size"),
        "effective config printed: {stdout}"
    );
}

#[test]
fn check_config_names_file_and_key_of_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[delivery]\nretry_initial = \"soon\"\n").unwrap();
    let (code, _, stderr) = sluice(&["check-config", "--config", path.to_str().unwrap()], None);
    assert_eq!(code, 1, "a bad value must exit 1");
    assert!(stderr.contains("bad.toml"), "file named: {stderr}");
    assert!(stderr.contains("retry_initial"), "key named: {stderr}");
}

#[test]
fn check_config_missing_file_exits_1() {
    let (code, _, stderr) = sluice(
        &["check-config", "--config", "/nonexistent/sluice.toml"],
        None,
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("/nonexistent/sluice.toml"), "{stderr}");
}

#[test]
fn usage_error_exits_2() {
    let (code, _, _) = sluice(&["frobnicate"], None);
    assert_eq!(code, 2);
}

#[test]
fn hash_password_prints_a_verifiable_argon2id_hash() {
    use argon2::PasswordVerifier;
    let (code, stdout, stderr) = sluice(&["hash-password"], Some("correct horse\n"));
    assert_eq!(code, 0, "{stderr}");
    let hash = stdout.trim();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let parsed = argon2::PasswordHash::new(hash).expect("PHC string");
    assert!(
        argon2::Argon2::default()
            .verify_password(b"correct horse", &parsed)
            .is_ok()
    );
    assert!(
        argon2::Argon2::default()
            .verify_password(b"wrong", &parsed)
            .is_err()
    );
}
