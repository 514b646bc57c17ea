//! Local access (DESIGN.md "Local access and privileges"), with the real
//! binary run as the users concerned: throwaway users made with `useradd`
//! (the tests need root, as CI runs them; without it they say so and pass),
//! the tools run as them through `setpriv`.

#[allow(dead_code, unused_imports)]
mod common {
    pub mod destination;
    pub mod server;
    pub mod smtp;
    pub use {server::*, smtp::*};
}

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::destination::{Destination, Options, wait_delivered};
use common::{DEADLINE, Sluice, wait_for};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Skips the test (passing) when not root.
macro_rules! needs_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root to create users");
            return;
        }
    };
}

/// A user (and its group) that exists for one test.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
}

static USERS: AtomicUsize = AtomicUsize::new(0);

impl TestUser {
    fn new(role: &str) -> TestUser {
        let name = format!(
            "sl{role}{}x{}",
            std::process::id() % 100_000,
            USERS.fetch_add(1, Ordering::SeqCst)
        );
        let status = Command::new("useradd")
            .args(["--no-create-home", "--user-group", "--shell", "/bin/false"])
            .arg(&name)
            .status()
            .expect("run useradd");
        assert!(status.success(), "useradd {name}");
        let id = |flag: &str| -> u32 {
            let output = Command::new("id").arg(flag).arg(&name).output().unwrap();
            String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .unwrap()
        };
        TestUser {
            uid: id("-u"),
            gid: id("-g"),
            name,
        }
    }

    /// `command` run as this user (its own group only).
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups")
            .arg("--")
            .arg(program)
            .env_remove("SLUICE_CONFIG");
        command
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
        let _ = Command::new("groupdel")
            .arg(&self.name)
            .stderr(Stdio::null())
            .status();
    }
}

/// A group of its own (the maildrop helper's), removed at the end.
struct TestGroup {
    name: String,
    gid: u32,
}

impl TestGroup {
    fn new() -> TestGroup {
        let name = format!(
            "sldrop{}x{}",
            std::process::id() % 100_000,
            USERS.fetch_add(1, Ordering::SeqCst)
        );
        assert!(
            Command::new("groupadd")
                .arg(&name)
                .status()
                .unwrap()
                .success()
        );
        let output = Command::new("getent")
            .args(["group", &name])
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&output.stdout).into_owned();
        let gid = line.split(':').nth(2).unwrap().parse().unwrap();
        TestGroup { name, gid }
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).status();
    }
}

/// Runs `command` with `stdin`: (exit code, stdout, stderr).
fn output(mut command: Command, stdin: &[u8]) -> (i32, String, String) {
    use std::io::Write as _;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut input = child.stdin.take().unwrap();
    let bytes = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&bytes);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn binary() -> PathBuf {
    PathBuf::from(common::binary())
}

/// A test directory any user may traverse (tempdir makes 0700 ones).
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// Every entry under `dir` (the directory itself included).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = vec![dir.to_path_buf()];
    if std::fs::symlink_metadata(dir).unwrap().is_dir() {
        for entry in std::fs::read_dir(dir).unwrap() {
            found.extend(walk(&entry.unwrap().path()));
        }
    }
    found
}

/// A config in `dir` whose mail goes to `route`; `extra` appended.
fn config(dir: &Path, route: std::net::SocketAddr, extra: &str) -> PathBuf {
    let text = common::config_text(
        dir,
        "",
        &format!("[delivery]\ntls = \"disabled\"\n\n[routes]\n\"*\" = \"{route}\"\n\n{extra}"),
    );
    let path = common::write_config(dir, &text);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

fn submit_over_smtp(server: &Sluice, recipient: &str) -> String {
    let mut client = server.connect();
    client.expect("EHLO c.test", "250");
    client.expect("MAIL FROM:<a@origin.test>", "250");
    client.expect(&format!("RCPT TO:<{recipient}>"), "250");
    client.expect("DATA", "354");
    let reply = client.expect("Subject: secret text\r\n\r\nthe secret body\r\n.", "250");
    client.expect("QUIT", "221");
    reply.split("queued as ").nth(1).unwrap().trim().to_string()
}

#[test]
fn the_spool_is_0700_and_0600_under_umask_022_and_a_plain_user_cannot_read_it() {
    needs_root!();
    let destination = Destination::start(Options::default());
    destination.on_rcpt(|_, _| Some("451 4.3.0 later".into()));
    let dir = open_dir();
    // A spool left by a careless hand: world-readable.
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(spool.join("notes"), "x").unwrap();
    std::fs::set_permissions(spool.join("notes"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = config(dir.path(), destination.addr, "");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut server = Sluice::start_with_command(dir, &text, |command| {
        // SAFETY: umask is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                libc::umask(0o022);
                Ok(())
            });
        }
    });
    let id = submit_over_smtp(&server, "b@dest.test");
    server.wait_log(&["spool modes repaired"]);
    let user = TestUser::new("u");
    let spool = server.dir.path().join("spool");
    for entry in walk(&spool) {
        let metadata = std::fs::symlink_metadata(&entry).unwrap();
        let kind = metadata.file_type();
        if kind.is_socket() {
            continue;
        }
        let wanted = if kind.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&entry), wanted, "{} under umask 022", entry.display());
    }
    // The plain user: not the database, not the socket's directory.
    let mut cat = user.command(Path::new("/bin/cat"));
    cat.arg(spool.join("db").join("db"));
    let (code, _, stderr) = output(cat, b"");
    assert_ne!(code, 0, "a plain user read the database");
    assert!(stderr.contains("Permission denied"), "{stderr}");

    // Offline (no server holds the spool): `queue cat` as the plain user
    // is refused; as root it works.
    assert!(server.terminate().success());
    let mut queue_cat = user.command(&binary());
    queue_cat
        .args(["queue", "cat", &id, "--config"])
        .arg(&server.config_path);
    let (code, stdout, stderr) = output(queue_cat, b"");
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(!stdout.contains("the secret body"), "{stdout}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    let shown = common::cli_ok(&server.config_path, &["queue", "cat", &id]);
    assert!(shown.contains("the secret body"), "{shown}");
}

#[test]
fn root_never_follows_the_owners_link_and_leaves_no_root_owned_file() {
    needs_root!();
    let owner = TestUser::new("o");
    let dir = open_dir();
    let destination = Destination::start(Options::default());
    destination.on_rcpt(|_, _| Some("451 4.3.0 later".into()));
    let path = config(dir.path(), destination.addr, "");
    // The owner's spool, filled by its own offline sendmail.
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    std::os::unix::fs::chown(&spool, Some(owner.uid), Some(owner.gid)).unwrap();
    let mut sendmail = owner.command(&binary());
    sendmail
        .args(["sendmail", "--config"])
        .arg(&path)
        .arg("b@dest.test");
    let (code, _, stderr) = output(sendmail, b"Subject: from the owner\n\nx\n");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(std::fs::metadata(&spool).unwrap().uid(), owner.uid);

    // The owner points spool/lock at a file of its choosing.
    let target = dir.path().join("made-by-root");
    std::fs::remove_file(spool.join("lock")).unwrap();
    std::os::unix::fs::symlink(&target, spool.join("lock")).unwrap();
    let (code, _, stderr) = common::cli(&path, &["queue", "list"]);
    assert_ne!(code, 0, "the link was followed");
    assert!(
        std::fs::symlink_metadata(&target).is_err(),
        "root created the link's target"
    );
    assert!(stderr.contains("lock"), "{stderr}");
    std::fs::remove_file(spool.join("lock")).unwrap();

    // Root's offline sendmail writes as the owner.
    let (code, _, stderr) = common::run(Some(b"Subject: from root\n\nx\n"), |command| {
        command
            .args(["sendmail", "--config"])
            .arg(&path)
            .arg("b@dest.test");
    });
    assert_eq!(code, 0, "{stderr}");
    for entry in walk(&spool) {
        let metadata = std::fs::symlink_metadata(&entry).unwrap();
        assert_eq!(
            metadata.uid(),
            owner.uid,
            "{} is not the owner's",
            entry.display()
        );
    }
    let listed = common::cli_ok(&path, &["queue", "list"]);
    assert!(listed.contains("in 2 messages"), "{listed}");
}

#[test]
fn a_fake_listener_on_the_smtp_port_gets_nothing_while_the_server_is_down() {
    needs_root!();
    let destination = Destination::start(Options::default());
    let dir = open_dir();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let path = config(dir.path(), destination.addr, "");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("127.0.0.1:0\"\nkind", &format!("127.0.0.1:{port}\"\nkind"));
    std::fs::write(&path, &text).unwrap();
    let mut server = Sluice::start_with(dir, &text);
    assert!(server.terminate().success());
    let fake = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    fake.set_nonblocking(true).unwrap();
    let (code, _, stderr) = common::run(Some(b"Subject: stolen?\n\nx\n"), |command| {
        command
            .args(["sendmail", "--config"])
            .arg(&server.config_path)
            .arg("b@dest.test");
    });
    assert_eq!(code, 0, "written into the spool: {stderr}");
    assert!(
        fake.accept().is_err(),
        "sendmail connected to the fake listener"
    );
    drop(fake);
    let server = server.restart();
    let delivered = wait_delivered(&destination, 1);
    let body = String::from_utf8_lossy(&delivered[0].body).into_owned();
    assert!(body.contains("Subject: stolen?"), "{body}");
    assert!(body.contains("(sluice, from userid 0 (root))"), "{body}");
    drop(server);
}

/// Copies `sluice` and `sluice-maildrop` into `dir/bin`, the helper setgid
/// to `group`; returns the copied `sluice`.
fn install(dir: &Path, group: &TestGroup) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sluice = bin.join("sluice");
    std::fs::copy(common::binary(), &sluice).unwrap();
    let helper = bin.join("sluice-maildrop");
    std::fs::copy(env!("CARGO_BIN_EXE_sluice-maildrop"), &helper).unwrap();
    std::os::unix::fs::chown(&helper, None, Some(group.gid)).unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o2755)).unwrap();
    sluice
}

#[test]
fn a_plain_users_sendmail_goes_over_the_socket_or_through_the_maildrop() {
    needs_root!();
    let user = TestUser::new("u");
    let group = TestGroup::new();
    let destination = Destination::start(Options::default());
    let dir = open_dir();
    let sluice = install(dir.path(), &group);
    // The socket where any user reaches it (as /run/sluice/submit.sock).
    let run = dir.path().join("run");
    let path = config(
        dir.path(),
        destination.addr,
        &format!(
            "[limits]\nmax_message_size = \"64KiB\"\n\n[local]\nsubmit_socket = \"{}\"\n",
            run.join("submit.sock").display()
        ),
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let mut server = Sluice::start_with(dir, &text);
    let config_path = server.config_path.clone();
    let sendmail = |subject: &str| {
        let mut command = user.command(&sluice);
        command
            .args(["sendmail", "--config"])
            .arg(&config_path)
            .arg("b@dest.test");
        output(command, format!("Subject: {subject}\n\nx\n").as_bytes())
    };

    // Server up: over the socket, the uid in Received.
    let (code, _, stderr) = sendmail("over the socket");
    assert_eq!(code, 0, "{stderr}");
    let delivered = wait_delivered(&destination, 1);
    let body = String::from_utf8_lossy(&delivered[0].body).into_owned();
    let received = format!("from userid {} ({})", user.uid, user.name);
    assert!(body.contains(&received), "{received} in {body}");
    assert_eq!(delivered[0].mail_from, format!("{}@sluice.test", user.name));

    // Server down: the spool is root's, so through the setgid helper into
    // the maildrop (group-owned 1730, as packaging makes it).
    assert!(server.terminate().success());
    let maildrop = server.dir.path().join("spool.maildrop");
    assert_eq!(mode(&maildrop), 0o1730, "made by the server");
    std::os::unix::fs::chown(&maildrop, None, Some(group.gid)).unwrap();
    let (code, _, stderr) = sendmail("through the maildrop");
    assert_eq!(code, 0, "{stderr}");
    let files: Vec<_> = std::fs::read_dir(&maildrop).unwrap().collect();
    assert_eq!(files.len(), 1, "one maildrop file");
    // A file no helper wrote: set aside, not a crash.
    std::fs::write(maildrop.join("0000-garbage"), "not a maildrop file\n").unwrap();
    // Over max_message_size (64 KiB) plus 1 MiB: set aside unread.
    let mut oversized = b"SLUICE-MAILDROP 1\nuid 0\nsender a@b.test\nrcpt c@d.test\n\n".to_vec();
    oversized.resize(1200 * 1024, b'x');
    std::fs::write(maildrop.join("0001-oversized"), oversized).unwrap();
    assert_eq!(destination.delivered().len(), 1, "nothing while down");

    let server = server.restart();
    let delivered = wait_delivered(&destination, 2);
    let body = String::from_utf8_lossy(&delivered[1].body).into_owned();
    assert!(body.contains("Subject: through the maildrop"), "{body}");
    assert!(body.contains(&received), "{received} in {body}");
    server.wait_log(&["maildrop file refused", "0000-garbage"]);
    server.wait_log(&["maildrop file refused", "0001-oversized", "larger than"]);
    wait_for("the maildrop emptied", DEADLINE, || {
        let left: Vec<_> = std::fs::read_dir(&maildrop)
            .unwrap()
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_name() != "rejected")
            .collect();
        left.is_empty().then_some(())
    });
    assert!(maildrop.join("rejected").join("0000-garbage").exists());
    assert!(maildrop.join("rejected").join("0001-oversized").exists());

    // While the server runs, a file the helper writes is taken in too.
    let helper = server.dir.path().join("bin/sluice-maildrop");
    let mut drop_off = user.command(&helper);
    drop_off.arg(&maildrop);
    let file = format!(
        "SLUICE-MAILDROP 1\nuid {}\nsender {}@sluice.test\nrcpt b@dest.test\n\nSubject: while up\r\n\r\nx\r\n",
        user.uid, user.name
    );
    let (code, _, stderr) = output(drop_off, file.as_bytes());
    assert_eq!(code, 0, "{stderr}");
    let delivered = wait_delivered(&destination, 3);
    let body = String::from_utf8_lossy(&delivered[2].body).into_owned();
    assert!(body.contains("Subject: while up"), "{body}");

    // The helper refuses a file naming another uid.
    let mut forged = user.command(&helper);
    forged.arg(&maildrop);
    let (code, _, stderr) = output(
        forged,
        b"SLUICE-MAILDROP 1\nuid 0\nsender a@b.test\nrcpt c@d.test\n\nx\r\n",
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("not yours"), "{stderr}");
    drop(server);
}

#[test]
fn server_user_binds_as_root_then_runs_as_that_user() {
    needs_root!();
    let user = TestUser::new("s");
    let destination = Destination::start(Options::default());
    let dir = open_dir();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(user.uid), Some(user.gid)).unwrap();
    // A spool root made earlier: given to the user at start.
    std::fs::create_dir_all(home.join("spool/db")).unwrap();
    let path = config(
        &home,
        destination.addr,
        &format!("[server]\nuser = \"{}\"\n", user.name),
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let server = Sluice::start_with(dir, &text);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let uid_line = status
        .lines()
        .find(|line| line.starts_with("Uid:"))
        .unwrap();
    let uids: Vec<u32> = uid_line
        .split_whitespace()
        .skip(1)
        .map(|id| id.parse().unwrap())
        .collect();
    assert_eq!(uids, [user.uid; 4], "{uid_line}");
    let gid_line = status
        .lines()
        .find(|line| line.starts_with("Gid:"))
        .unwrap();
    assert!(gid_line.contains(&user.gid.to_string()), "{gid_line}");
    let id = submit_over_smtp(&server, "b@dest.test");
    wait_delivered(&destination, 1);
    for entry in walk(&home.join("spool")) {
        assert_eq!(
            std::fs::symlink_metadata(&entry).unwrap().uid(),
            user.uid,
            "{} ({id})",
            entry.display()
        );
    }
}
