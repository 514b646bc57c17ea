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
    // check-config loads the files a config names, as a start would: the
    // example's certificate is put in a temporary /etc/sluice/tls.
    let example = include_str!("../conf/sluice.toml");
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    std::fs::create_dir(&tls).unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["mx.example.org".into()]).unwrap();
    std::fs::write(tls.join("cert.pem"), certified.cert.pem()).unwrap();
    common::server::write_private(tls.join("key.pem"), certified.key_pair.serialize_pem()).unwrap();
    let path = dir.path().join("sluice.toml");
    let text = example.replace("/etc/sluice/tls/", &format!("{}/", tls.display()));
    std::fs::write(&path, text).unwrap();
    let (code, stdout, stderr) =
        sluice(&["check-config", "--config", path.to_str().unwrap()], None);
    assert_eq!(code, 0, "check-config rejected conf/sluice.toml: {stderr}");
    assert!(
        stdout.contains("max_message_size"),
        "effective config printed: {stdout}"
    );
    // As it is, on a machine without the certificate: refused, naming it.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/sluice.toml");
    let (code, _, stderr) = sluice(&["check-config", "--config", path], None);
    if !std::path::Path::new("/etc/sluice/tls/cert.pem").exists() {
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains("tls.certificate") && stderr.contains("/etc/sluice/tls/cert.pem"),
            "{stderr}"
        );
    }
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

/// A zero limit is refused at load, naming the file and the key, the same
/// way for every count: `max_errors` and `max_auth_failures` used to turn a 0
/// into 1 silently.
#[test]
fn check_config_refuses_a_zero_count_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    for key in ["max_recipients", "max_errors", "max_auth_failures"] {
        let path = dir.path().join(format!("{key}.toml"));
        std::fs::write(&path, format!("[limits]\n{key} = 0\n")).unwrap();
        let path = path.to_str().unwrap();
        let (code, stdout, stderr) = sluice(&["check-config", "--config", path], None);
        assert_eq!(code, 1, "{key} = 0 must exit 1: {stdout}");
        assert_eq!(
            stderr.trim_end(),
            format!("sluice: config file {path}: limits.{key}: must be at least 1"),
            "{key}"
        );
    }
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

/// An argon2id PHC hash (of "pw").
const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$4cYoOKWeX7KncVmUYDcGLQ$Ibxani10KQs/tI7K6KRKUxVRJw7csoR+L/ZbR2fUkyM";

#[test]
fn check_config_redacts_secrets_and_a_saved_copy_names_the_placeholder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret.toml");
    std::fs::write(
        &path,
        format!(
            "[admin]\ntoken = \"adm1n-t0ken\"\n\n[delivery]\nrelay_host = \"smart.example:587\"\n\
             relay_auth = {{ username = \"relayuser\", password = \"relay-pa55\" }}\n\n\
             [[user]]\nname = \"app\"\npassword_hash = \"{HASH}\"\n"
        ),
    )
    .unwrap();
    let (code, stdout, stderr) =
        sluice(&["check-config", "--config", path.to_str().unwrap()], None);
    assert_eq!(code, 0, "{stderr}");
    for secret in ["adm1n-t0ken", "relay-pa55", HASH] {
        assert!(!stdout.contains(secret), "{secret:?} printed:\n{stdout}");
    }
    let printed: toml::Table = stdout.parse().expect("check-config prints TOML");
    assert_eq!(printed["admin"]["token"].as_str(), Some("<redacted>"));
    let auth = &printed["delivery"]["relay_auth"];
    assert_eq!(auth["username"].as_str(), Some("relayuser"));
    assert_eq!(auth["password"].as_str(), Some("<redacted>"));
    let user = &printed["user"].as_array().expect("[[user]]")[0];
    assert_eq!(user["name"].as_str(), Some("app"));
    assert_eq!(user["password_hash"].as_str(), Some("<redacted>"));
    assert!(stdout.contains("# secrets are shown as"), "{stdout}");

    // A saved copy is refused until the secrets are put back: it cannot run
    // with a guessable placeholder token.
    let copy = dir.path().join("copy.toml");
    std::fs::write(&copy, &stdout).unwrap();
    let (code, _, stderr) = sluice(&["check-config", "--config", copy.to_str().unwrap()], None);
    assert_eq!(code, 1, "a copy with placeholders must not load");
    assert!(
        stderr.contains("admin.token") && stderr.contains("<redacted>"),
        "{stderr}"
    );
    let restored = stdout
        .replace("token = \"<redacted>\"", "token = \"adm1n-t0ken\"")
        .replace("password = \"<redacted>\"", "password = \"relay-pa55\"")
        .replace(
            "password_hash = \"<redacted>\"",
            &format!("password_hash = \"{HASH}\""),
        );
    std::fs::write(&copy, restored).unwrap();
    let (code, again, stderr) = sluice(&["check-config", "--config", copy.to_str().unwrap()], None);
    assert_eq!(code, 0, "{stderr}");
    let again: toml::Table = again.parse().unwrap();
    assert_eq!(again, printed, "the restored copy is the same config");
}

#[test]
fn check_config_prints_durations_and_sizes_in_the_config_style() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("units.toml");
    std::fs::write(
        &path,
        "[limits]\ncommand_timeout = \"90s\"\ndata_timeout = \"1h 30m\"\n\
         max_message_size = \"10MiB\"\n\n[delivery]\nmax_queue_lifetime = \"7d\"\n\
         retry_initial = \"1500ms\"\n",
    )
    .unwrap();
    let (code, stdout, stderr) =
        sluice(&["check-config", "--config", path.to_str().unwrap()], None);
    assert_eq!(code, 0, "{stderr}");
    for line in [
        "command_timeout = \"90s\"",
        "data_timeout = \"90m\"",
        "max_message_size = \"10MiB\"",
        "max_queue_lifetime = \"7d\"",
        "delay_warning = \"4h\"",
        "retry_initial = \"1500ms\"",
        "retry_max = \"1h\"",
        "shutdown_grace = \"30s\"",
        "cache_capacity = \"16MiB\"",
    ] {
        assert!(
            stdout.lines().any(|printed| printed == line),
            "{line:?} missing:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains("days"),
        "humantime style leaked:\n{stdout}"
    );
}
