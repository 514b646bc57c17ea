//! `sluice sendmail`: the sendmail(1)-compatible local submission command.
//! It reads one message on stdin and submits it over SMTP on the running
//! server's UNIX socket (`local.submit_socket`, never TCP), the way
//! Postfix's and Exim's `sendmail` hand mail to their daemon.
//!
//! ```text
//! sluice sendmail [OPTIONS] [RECIPIENT...] < message
//! sluice sendmail -bp        (the queue, as `sluice queue list`)
//! sluice sendmail -q         (retry all, as `sluice queue retry --all`)
//! sluice sendmail -bs        (SMTP on stdin and stdout)
//! ```
//!
//! Also reached by invoking the binary under the name `sendmail` (for
//! example `ln -s /usr/bin/sluice /usr/sbin/sendmail`); the configuration then
//! comes from `SLUICE_CONFIG` or the default path. Under the name `mailq`,
//! it is `sendmail -bp`.
//!
//! This module is the glue; each concern has its own file:
//!
//! - [`args`]: the command line, getopt style, and every option's meaning;
//! - [`user`]: the invoking local user (login name, GECOS full name);
//! - [`envelope`]: the envelope sender and recipients (qualified, checked,
//!   each once);
//! - [`message`]: preparing the message (pure: header section, added and
//!   removed headers, `-t` recipients, line endings);
//! - [`submit`]: the submit socket and the SMTP submission;
//! - [`helper`]: the setgid `sluice-maildrop` helper, for users who may not
//!   write the spool;
//! - [`maildrop`]: when no server answers, the server's own session run in
//!   this process over the spool;
//! - [`stdio`]: `-bs`, SMTP on stdin and stdout.
//!
//! # Exit status
//!
//! - 0: the server accepted the message (a 250 after the data: it is on
//!   disk), or, with no server answering, it was written into the spool
//!   ([`maildrop`]) or handed to the `sluice-maildrop` helper ([`helper`]).
//!   Nothing is printed unless `-v`.
//! - 75 (EX_TEMPFAIL, DESIGN.md "Exit codes"): not queued for a temporary
//!   reason: a 4xx reply (printed), such as `452 4.3.1 Insufficient system
//!   storage`; no server answering on `local.submit_socket` and no way into
//!   the spool (a relative spool path, a helper that could not write); the
//!   spool still held by another process after [`maildrop::LOCK_WAIT`].
//! - 1: a runtime error, one line on stderr starting `sluice: `: a 5xx reply
//!   (the server's reply is printed; nothing was queued), a lost
//!   connection, an unreadable stdin or configuration, a spool that cannot
//!   be written, a file the helper refused.
//! - 2: a usage error: an unknown option, a missing option argument, an
//!   invalid address, no recipients.

pub mod args;
pub mod envelope;
pub mod helper;
pub mod maildrop;
pub mod message;
pub mod stdio;
pub mod submit;
pub mod user;

use std::io;
use std::path::{Path, PathBuf};

use crate::cli::queue::{QueueCommand, Targets};
use crate::config::{Config, ConfigError};

pub use args::{Mode, Options, USAGE, parse_args};

use envelope::Recipients;
use message::{HeaderSection, MessageError, Stamp};

/// Why `sluice sendmail` failed.
#[derive(Debug, thiserror::Error)]
pub enum SendmailError {
    /// A bad command line (exit 2).
    #[error("sendmail: {0}")]
    Usage(String),
    /// The configuration could not be loaded.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The configuration names no listener sendmail can use.
    #[error("cannot submit: {0}")]
    NoListener(String),
    /// Nothing accepts connections on `local.submit_socket`.
    #[error(
        "cannot submit: no server answers on {} ({reason}); is sluice serve running?",
        socket.display()
    )]
    Connect { socket: PathBuf, reason: String },
    /// No server answered and the `sluice-maildrop` helper did not take
    /// the message.
    #[error("cannot write into the maildrop {}: {reason}", path.display())]
    Maildrop {
        path: PathBuf,
        reason: String,
        /// Worth trying again later (exit 75).
        temporary: bool,
    },
    /// The server answered a command with a 4xx or 5xx reply.
    #[error("cannot submit: the server refused {command}: {reply}")]
    Refused { command: String, reply: String },
    /// The conversation broke down (connection lost, garbled reply).
    #[error("cannot submit: {what} with {server}: {reason}")]
    Conversation {
        what: &'static str,
        /// "the server at 127.0.0.1:2525", or the local session.
        server: String,
        reason: String,
    },
    /// Reading the message on stdin failed, or it cannot be submitted.
    #[error("cannot read the message on stdin: {0}")]
    Input(String),
    /// No server answered and another process holds the spool (exit 1: try
    /// again later).
    #[error(
        "cannot submit: {refused}, and the spool {} is locked by another process (a server that \
         does not answer?) after waiting {}s; try again later",
        path.display(),
        waited.as_secs()
    )]
    SpoolBusy {
        path: PathBuf,
        /// Why no server answered.
        refused: String,
        waited: std::time::Duration,
    },
    /// No server answered and writing into the spool failed.
    #[error("cannot write into the spool {}: {reason}", path.display())]
    Spool { path: PathBuf, reason: String },
    /// `-bp` or `-q` failed (as `sluice queue list` or `retry --all` would).
    #[error(transparent)]
    Queue(anyhow::Error),
}

impl SendmailError {
    /// True for a command-line problem (exit 2), false for a runtime one (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, SendmailError::Usage(_))
    }

    /// Why no server took the message, in a few words, for messages that
    /// go on to say what was tried instead: "no server answers on
    /// 127.0.0.1:2525 (connection refused)".
    pub fn no_server_reason(&self) -> String {
        match self {
            SendmailError::Connect { socket, reason } => {
                format!("no server answers on {} ({reason})", socket.display())
            }
            SendmailError::NoListener(reason) => reason.clone(),
            other => other.to_string(),
        }
    }

    /// The exit status for this error: 2 for a usage error, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            SendmailError::Usage(_) => 2,
            // DESIGN.md "Exit codes": EX_TEMPFAIL when the message could not
            // be queued for a temporary reason (a 4xx, a held spool, no
            // server and no way into the spool).
            SendmailError::SpoolBusy { .. } | SendmailError::Connect { .. } => 75,
            SendmailError::Refused { reply, .. } if reply.starts_with('4') => 75,
            SendmailError::Maildrop {
                temporary: true, ..
            } => 75,
            _ => 1,
        }
    }
}

impl From<MessageError> for SendmailError {
    fn from(error: MessageError) -> Self {
        SendmailError::Input(error.to_string())
    }
}

/// Runs `sluice sendmail` with the arguments after the subcommand name;
/// `config` is the `--config`/`SLUICE_CONFIG` path given to the binary.
/// Returns the exit status for a success (0), or the error.
pub fn run(args: &[String], config: Option<&Path>) -> Result<u8, SendmailError> {
    let options = parse_args(args)?;
    if options.help {
        println!("{USAGE}");
        return Ok(0);
    }
    let config_path = options.config.as_deref().or(config);
    let loaded = Config::load(config_path)?;
    let queue_command = match options.mode {
        Mode::Submit => None,
        Mode::Smtp => return stdio::run(&loaded.config),
        Mode::ListQueue => Some(QueueCommand::List {
            json: false,
            status: None,
            domain: None,
            sender: None,
            older_than: None,
        }),
        Mode::RetryQueue => Some(QueueCommand::Retry {
            targets: Targets::all(),
        }),
    };
    if let Some(command) = queue_command {
        let code = crate::cli::queue::run(command, &loaded).map_err(SendmailError::Queue)?;
        return Ok(u8::try_from(code).unwrap_or(1));
    }
    let config = &loaded.config;
    let user = user::invoking_user();
    let hostname = config.hostname.as_str();

    let sender = match options.sender.as_deref() {
        Some(given) => envelope::qualify(&envelope::sender_address(given), hostname),
        None => format!("{}@{hostname}", user.login),
    };
    envelope::check_address(&sender)?;

    let stdin = io::stdin();
    let mut input = stdin.lock();
    let headers = HeaderSection::read(&mut input)?;

    let mut recipients = Recipients::default();
    for arg in &options.recipients {
        for address in envelope::split_recipient_argument(arg) {
            recipients.add(envelope::qualify(&address, hostname))?;
        }
    }
    if options.extract_recipients {
        for address in headers.recipients() {
            recipients.add(envelope::qualify(&address, hostname))?;
        }
    }
    if recipients.is_empty() {
        return Err(SendmailError::Usage("no recipients".into()));
    }

    let full_name = options.full_name.clone().or(user.full_name);
    let added = headers.missing(&sender, full_name.as_deref(), hostname, &Stamp::now());
    let id = submit::submit(
        config,
        &sender,
        recipients.as_slice(),
        |data: &mut dyn io::Write| headers.write_message(&added, &mut input, data),
    )?;
    if options.verbose {
        println!("queued as {id}");
    }
    Ok(0)
}
