//! The server under test: starts the real `sluice` binary on loopback ports
//! with its own spool and config, signals it, reads its log, and runs its
//! command line. Also the polling helpers every test waits with.
//!
//! The test harness is `tests/common/`: this module and `smtp` (the client)
//! always, plus what a test binary needs of `spool` (the spool offline),
//! `admin` (the HTTP API), `destination` (SMTP servers to deliver to) and
//! `dns` (a DNS server). Each binary compiles only the parts it names:
//!
//! ```ignore
//! #[allow(dead_code, unused_imports)]
//! mod common {
//!     pub mod destination;
//!     pub mod server;
//!     pub mod smtp;
//!     pub use {server::*, smtp::*};
//! }
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::smtp::SmtpClient;

/// Delivery that never succeeds: connection refused, so mail is deferred.
pub const NO_DELIVERY: &str = "[routes]\n\"*\" = \"127.0.0.1:9\"\n\n[delivery]\nport = 9\n";

/// A seed for randomised tests: `SLUICE_TEST_SEED`, or the clock (printed so
/// a failure can be replayed).
pub fn seed() -> u64 {
    let seed = std::env::var("SLUICE_TEST_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("random seed {seed} (set SLUICE_TEST_SEED to replay)");
    seed
}

/// How long a test waits for a condition before failing.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `sluice serve` with its own spool and configuration.
pub struct Sluice {
    child: Option<Child>,
    /// The temporary directory holding the config file and the spool.
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    /// The first SMTP listener's address; all of them in `smtp_addrs`.
    pub smtp: SocketAddr,
    pub smtp_addrs: Vec<SocketAddr>,
    pub admin: SocketAddr,
    /// Every line the server wrote to stderr so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

/// The admin token of each running test server whose token sluice
/// generated (`<spool>/admin.token`, named in the start line), by admin
/// address: what `admin::http` sends when a test gives no token.
static GENERATED_TOKENS: Mutex<Vec<(SocketAddr, String)>> = Mutex::new(Vec::new());

/// The generated admin token of the server whose admin API is at `admin`.
#[allow(dead_code)]
pub fn generated_token(admin: SocketAddr) -> Option<String> {
    GENERATED_TOKENS
        .lock()
        .expect("token lock")
        .iter()
        .rev()
        .find(|(address, _)| *address == admin)
        .map(|(_, token)| token.clone())
}

/// Writes a private key (or any file sluice must find private) with mode
/// 0600: sluice refuses key files others can read.
#[allow(dead_code)]
pub fn write_private(path: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let path = path.as_ref();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_ref())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// The path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_sluice")
}

/// A minimal config on free loopback ports; `extra` is appended verbatim
/// (it may add tables such as `[routes]`, or top-level keys before any table
/// when it starts with them: put top-level keys in `top`).
pub fn config_text(dir: &Path, top: &str, extra: &str) -> String {
    build_config(dir, top, "", "", extra)
}

/// A complete config in `dir` for the queue-management tests: like
/// [`config_text`], plus `admin_extra` inside `[admin]`, every domain routed
/// to `route` (a loopback address), retries an hour apart, and DNS pointed at
/// a dead loopback port so nothing leaves the machine; `extra` is appended.
pub fn routed_config_text(dir: &Path, route: SocketAddr, admin_extra: &str, extra: &str) -> String {
    let tables = format!(
        "\n[delivery]\ntls = \"disabled\"\nretry_initial = \"1h\"\nretry_max = \"2h\"\nconnect_timeout = \"2s\"\n\n\
         [dns]\nnameservers = [\"127.0.0.1:9\"]\n\n\
         [routes]\n\"*\" = \"{route}\"\n\n"
    );
    build_config(dir, "", admin_extra, &tables, extra)
}

/// The config text: `top` before any table, `admin_extra` inside `[admin]`,
/// `tables` before `[log]`, `extra` after it.
fn build_config(dir: &Path, top: &str, admin_extra: &str, tables: &str, extra: &str) -> String {
    format!(
        "hostname = \"sluice.test\"\n{top}\n\
         [spool]\npath = \"{spool}\"\n\n\
         [[listener]]\naddress = \"127.0.0.1:0\"\nkind = \"relay\"\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\n{admin_extra}\n{tables}\
         [log]\nlevel = \"info\"\n\n{extra}\n",
        spool = dir.join("spool").display()
    )
}

/// Writes `text` as `dir/sluice.toml`; returns its path.
pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

impl Sluice {
    /// Starts sluice with [`config_text`]`(dir, "", extra)`.
    pub fn start(extra: &str) -> Sluice {
        let dir = tempfile::tempdir().expect("create temp dir");
        Sluice::start_in(dir, extra)
    }

    /// Starts sluice with `extra` tables plus [`NO_DELIVERY`]: nothing it
    /// queues ever leaves loopback.
    pub fn start_no_delivery(extra: &str) -> Sluice {
        Sluice::start(&format!("{extra}\n{NO_DELIVERY}"))
    }

    /// Starts sluice with [`config_text`]`(dir, "", extra)` in `dir` (which
    /// may already hold a spool).
    pub fn start_in(dir: tempfile::TempDir, extra: &str) -> Sluice {
        let text = config_text(dir.path(), "", extra);
        Sluice::start_with(dir, &text)
    }

    /// Starts sluice with the given full configuration text, in `dir`.
    pub fn start_with(dir: tempfile::TempDir, config: &str) -> Sluice {
        Sluice::start_with_command(dir, config, |_| {})
    }

    /// Like [`Sluice::start_with`], letting `configure` adjust the command
    /// before it is spawned (resource limits in `pre_exec`, environment).
    pub fn start_with_command(
        dir: tempfile::TempDir,
        config: &str,
        configure: impl FnOnce(&mut Command),
    ) -> Sluice {
        let config_path = write_config(dir.path(), config);
        Sluice::launch(dir, config_path, configure)
    }

    fn launch(
        dir: tempfile::TempDir,
        config_path: PathBuf,
        configure: impl FnOnce(&mut Command),
    ) -> Sluice {
        let mut command = Command::new(binary());
        // Before `configure`, which may change or remove it.
        command.env("RUST_LOG", "info");
        configure(&mut command);
        let mut child = command
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("SLUICE_TEST_VERBOSE").is_some() {
                    eprintln!("[sluice] {line}");
                }
                sink.lock().expect("log lock").push(line);
            }
        });
        let started = wait_for("sluice to start", DEADLINE, || {
            let lines = log.lock().expect("log lock");
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "sluice exited with {status} before starting:\n{}",
                    lines.join("\n")
                );
            }
            lines
                .iter()
                .find(|line| line.contains("sluice started"))
                .cloned()
        });
        let smtp_addrs: Vec<SocketAddr> = field(&started, "smtp")
            .split(',')
            .filter(|text| !text.is_empty())
            .map(|text| text.parse().expect("smtp address in start line"))
            .collect();
        let admin = field(&started, "admin")
            .parse()
            .expect("admin address in start line");
        let token_file = field(&started, "admin_token_file");
        if !token_file.is_empty() {
            let token = std::fs::read_to_string(&token_file)
                .unwrap_or_else(|error| panic!("read {token_file}: {error}"));
            GENERATED_TOKENS
                .lock()
                .expect("token lock")
                .push((admin, token.trim().to_string()));
        }
        Sluice {
            child: Some(child),
            dir,
            config_path,
            smtp: *smtp_addrs.first().expect("at least one SMTP listener"),
            smtp_addrs,
            admin,
            log,
        }
    }

    /// Restarts the server on the same spool and config (after a stop or a kill).
    /// The ports may change when the config uses port 0.
    pub fn restart(mut self) -> Sluice {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        let config_path = self.config_path.clone();
        Sluice::launch(dir, config_path, |_| {})
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit status (panics after the deadline).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("server is running");
        signal(child.id(), "TERM");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait for sluice") {
                self.child = None;
                return status;
            }
            if start.elapsed() > Duration::from_secs(60) {
                panic!("sluice did not exit within 60s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the server to exit by itself; returns its exit status
    /// (panics after `timeout`).
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("server was started");
        wait_for("sluice to exit", timeout, || {
            child.try_wait().expect("wait for sluice")
        })
    }

    /// True while the server process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    /// Every log line so far, joined.
    pub fn log_text(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// Waits until a log line contains every one of `needles`; returns it.
    pub fn wait_log(&self, needles: &[&str]) -> String {
        wait_for(&format!("a log line with {needles:?}"), DEADLINE, || {
            self.log
                .lock()
                .expect("log lock")
                .iter()
                .find(|line| needles.iter().all(|needle| line.contains(needle)))
                .cloned()
        })
    }

    /// Runs `sluice <args>` with this server's config; returns (status code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        cli(&self.config_path, args)
    }

    /// A new SMTP client connected to the first listener, greeting read.
    pub fn connect(&self) -> SmtpClient {
        let mut client = SmtpClient::connect(self.smtp);
        let greeting = client.read_reply();
        assert!(
            greeting.starts_with("220 "),
            "expected a 220 greeting, got {greeting:?}"
        );
        client
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `sluice <args> --config <config>`; returns (exit code, stdout, stderr).
pub fn cli(config: &Path, args: &[&str]) -> (i32, String, String) {
    run(None, |command| {
        command.args(args).arg("--config").arg(config);
    })
}

/// Like [`cli`], asserting exit 0; returns stdout.
pub fn cli_ok(config: &Path, args: &[&str]) -> String {
    let (code, stdout, stderr) = cli(config, args);
    assert_eq!(
        code, 0,
        "sluice {args:?} exited {code}\nstdout: {stdout}\nstderr: {stderr}"
    );
    stdout
}

/// Runs the binary to completion once `build` added its arguments (and any
/// environment or working directory; `SLUICE_CONFIG` is removed first).
/// `stdin` is written from another thread (a process that exits without
/// reading it is no failure); `None` is an empty stdin. Returns (exit code,
/// stdout, stderr).
pub fn run(stdin: Option<&[u8]>, build: impl FnOnce(&mut Command)) -> (i32, String, String) {
    let mut command = Command::new(binary());
    command.env_remove("SLUICE_CONFIG");
    build(&mut command);
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    let writer = child.stdin.take().map(|mut input| {
        let bytes = stdin.unwrap_or_default().to_vec();
        std::thread::spawn(move || {
            let _ = input.write_all(&bytes);
        })
    });
    let output = child.wait_with_output().expect("wait for sluice");
    if let Some(writer) = writer {
        writer.join().expect("stdin writer");
    }
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Sends a signal by name with kill(1).
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// The value of `key=value` in a log line (text format; quotes stripped).
pub fn field(line: &str, key: &str) -> String {
    let needle = format!("{key}=");
    let start = line
        .match_indices(&needle)
        .find(|(index, _)| *index == 0 || line.as_bytes()[index - 1] == b' ')
        .map(|(index, _)| index + needle.len())
        .unwrap_or_else(|| panic!("no {key}= in log line {line:?}"));
    let rest = &line[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        quoted.split('"').next().unwrap_or("").to_string()
    } else {
        rest.split(' ').next().unwrap_or("").to_string()
    }
}
