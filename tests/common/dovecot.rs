//! A private Dovecot LMTP server (Debian's `dovecot-lmtpd`) for the LMTP
//! tests: its own base_dir, state and log under a temporary directory, an
//! inet listener on a free loopback port and a UNIX socket, users from a
//! passwd-file with Maildirs in the same directory. Killed on drop.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::server::{DEADLINE, signal, wait_for};

/// The uid and gid mail is stored as (`nobody`): Dovecot refuses root.
const MAIL_ID: u32 = 65534;

/// A running `dovecot -F` with LMTP only.
pub struct Dovecot {
    child: Child,
    /// Holds everything: config, sockets, users, Maildirs.
    pub dir: tempfile::TempDir,
    /// The inet LMTP listener.
    pub address: SocketAddr,
    /// The UNIX LMTP socket.
    pub socket: PathBuf,
    users: Vec<(String, PathBuf)>,
}

impl Dovecot {
    /// Starts Dovecot with `users` (local parts; any domain is stripped),
    /// each with a home under the temporary directory.
    pub fn start(users: &[&str]) -> Dovecot {
        assert!(
            Path::new("/usr/lib/dovecot/lmtp").exists(),
            "the LMTP tests need Debian's dovecot-lmtpd (apt-get install dovecot-lmtpd)"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        // The mail user must reach its Maildir below the (0700) temp dir.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        let base = dir.path();
        for sub in ["run", "state", "mail"] {
            std::fs::create_dir(base.join(sub)).expect("mkdir");
        }
        std::fs::set_permissions(base.join("mail"), std::fs::Permissions::from_mode(0o777))
            .expect("chmod mail");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        let config = format!(
            "base_dir = {base}/run\n\
             state_dir = {base}/state\n\
             log_path = {base}/dovecot.log\n\
             protocols = lmtp\n\
             listen = 127.0.0.1\n\
             ssl = no\n\
             auth_username_format = %Ln\n\
             default_internal_user = dovecot\n\
             default_login_user = dovenull\n\
             first_valid_uid = 1\n\
             mail_location = maildir:~/Maildir\n\
             passdb {{\n  driver = passwd-file\n  args = {base}/users\n}}\n\
             userdb {{\n  driver = passwd-file\n  args = {base}/users\n}}\n\
             service lmtp {{\n\
               inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n\
               unix_listener lmtp {{\n    mode = 0666\n  }}\n\
             }}\n",
            base = base.display()
        );
        std::fs::write(base.join("dovecot.conf"), config).expect("write dovecot.conf");
        let users: Vec<(String, PathBuf)> = users
            .iter()
            .map(|user| (user.to_string(), base.join("mail").join(user)))
            .collect();
        write_users(base, &users);
        let dovecot = Dovecot {
            child: Command::new("dovecot")
                .arg("-F")
                .arg("-c")
                .arg(base.join("dovecot.conf"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start dovecot"),
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            socket: base.join("run").join("lmtp"),
            dir,
            users,
        };
        let address = dovecot.address;
        wait_for("Dovecot's LMTP listener", DEADLINE, || {
            TcpStream::connect(address).ok()
        });
        dovecot
    }

    /// Points `user`'s home at `home`: a path below a regular file makes
    /// every delivery to it fail with 451 4.2.0 (Dovecot cannot create the
    /// Maildir), a temporary failure. Dovecot re-reads the file when it
    /// changes.
    pub fn set_home(&mut self, user: &str, home: PathBuf) {
        for entry in &mut self.users {
            if entry.0 == user {
                entry.1 = home.clone();
            }
        }
        write_users(self.dir.path(), &self.users);
    }

    /// A home no Maildir can be created in (see [`Dovecot::set_home`]).
    pub fn broken_home(&self) -> PathBuf {
        self.dir.path().join("users").join("nowhere")
    }

    /// A working home for `user`.
    pub fn home(&self, user: &str) -> PathBuf {
        self.dir.path().join("mail").join(user)
    }
}

/// Counts the passwd-file versions written (see [`write_users`]).
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Writes the passwd-file, atomically (Dovecot may read it any time).
fn write_users(base: &Path, users: &[(String, PathBuf)]) {
    {
        let text: String = users
            .iter()
            .map(|(user, home)| {
                format!(
                    "{user}:{{PLAIN}}x:{MAIL_ID}:{MAIL_ID}::{}::\n",
                    home.display()
                )
            })
            .collect();
        let path = base.join("users");
        let temporary = base.join("users.new");
        std::fs::write(&temporary, text).expect("write users");
        // Dovecot notices a change by the mtime, in whole seconds: each
        // version gets a later second than the last, however fast.
        let generation = GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mtime = std::time::SystemTime::now() + std::time::Duration::from_secs(2 * generation);
        std::fs::File::options()
            .write(true)
            .open(&temporary)
            .and_then(|file| file.set_modified(mtime))
            .expect("set the users file's mtime");
        std::fs::rename(&temporary, &path).expect("replace users");
    }
}

impl Dovecot {
    /// The messages in `user`'s Maildir (new and cur), each as bytes.
    pub fn messages(&self, user: &str) -> Vec<Vec<u8>> {
        let maildir = self.home(user).join("Maildir");
        let mut messages = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(maildir.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                if let Ok(bytes) = std::fs::read(entry.path()) {
                    messages.push(bytes);
                }
            }
        }
        messages
    }

    /// Dovecot's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        signal(self.child.id(), "TERM");
        let _ = self.child.wait();
    }
}
