//! `sluice queue …`: through the admin API when a server runs, else on the
//! spool directly.
//!
//! Which applies: when an admin address is known (`<spool>/admin.address`,
//! written by the running server, if the spool path is absolute; else
//! `[admin] address` unless its port is 0) and `GET /health` answers there, the API is used. Otherwise the spool is
//! opened; sled lets only one process hold it, so if a server holds it but its
//! API does not answer, the command says so and exits 1 without touching the
//! spool.

mod local;
mod output;
mod remote;

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use clap::{Subcommand, ValueEnum};
use sluice_queue::{QueueId, RecipientStatus};

use crate::admin::view::{ListFilter, MessageView, StatusFilter};
use crate::config::{Config, Loaded};

/// The `sluice queue` subcommands.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// One line per message, like mailq (`!` after the ID: held).
    List {
        /// A JSON array of message objects instead of the table.
        #[arg(long)]
        json: bool,
        /// Only messages with a recipient in this state (or held ones).
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
        /// Only messages with a recipient in this domain.
        #[arg(long, value_name = "DOMAIN")]
        domain: Option<String>,
        /// Only messages from this sender ("" for the null sender <>).
        #[arg(long, value_name = "ADDRESS")]
        sender: Option<String>,
    },
    /// Envelope, per-recipient state, attempts and last reply of a message.
    Show {
        /// The queue ID.
        id: String,
        /// One JSON message object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Attempt delivery now (deferred recipients become due).
    Retry {
        /// The queue ID.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every deferred message that is not held.
        #[arg(long)]
        all: bool,
    },
    /// Park a message: it is not delivered until released.
    Hold {
        /// The queue ID.
        id: String,
    },
    /// Un-park a held message.
    Release {
        /// The queue ID.
        id: String,
    },
    /// Remove without notice to anyone.
    Delete {
        /// The queue ID.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every queued message.
        #[arg(long)]
        all: bool,
    },
    /// Fail every remaining recipient now and send the sender a bounce (DSN).
    Bounce {
        /// The queue ID.
        id: String,
    },
}

/// The values of `queue list --status`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatusArg {
    /// A recipient not yet attempted.
    Pending,
    /// A recipient waiting for its next attempt.
    Deferred,
    /// A recipient delivered (others remain).
    Delivered,
    /// A recipient failed (others remain).
    Failed,
    /// The message is held.
    Held,
}

impl From<StatusArg> for StatusFilter {
    fn from(status: StatusArg) -> Self {
        match status {
            StatusArg::Pending => StatusFilter::Recipient(RecipientStatus::Pending),
            StatusArg::Deferred => StatusFilter::Recipient(RecipientStatus::Deferred),
            StatusArg::Delivered => StatusFilter::Recipient(RecipientStatus::Delivered),
            StatusArg::Failed => StatusFilter::Recipient(RecipientStatus::Failed),
            StatusArg::Held => StatusFilter::Held,
        }
    }
}

/// A per-message action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Deferred recipients become due now.
    Retry,
    /// Park the message.
    Hold,
    /// Un-park the message.
    Release,
    /// Remove it without notice.
    Delete,
    /// Fail what remains and notify the sender.
    Bounce,
}

/// The queue, through the API or on the spool: both answer the same.
trait Access {
    /// Calls `visit` for every message passing `filter`, in ID order, as it
    /// comes.
    fn each(
        &mut self,
        filter: &ListFilter,
        visit: &mut dyn FnMut(MessageView) -> io::Result<()>,
    ) -> anyhow::Result<()>;
    /// Writes the JSON array of the messages passing `filter`.
    fn json_list(&mut self, filter: &ListFilter, out: &mut dyn Write) -> anyhow::Result<()>;
    /// One message.
    fn show(&mut self, id: &QueueId) -> anyhow::Result<MessageView>;
    /// Performs `action`; the message's state afterwards (`None` for delete).
    fn act(&mut self, action: Action, id: &QueueId) -> anyhow::Result<Option<MessageView>>;
    /// Retries every deferred, unheld message; how many.
    fn retry_all(&mut self) -> anyhow::Result<u64>;
    /// Deletes every message; how many.
    fn delete_all(&mut self) -> anyhow::Result<u64>;
    /// Releases what was opened, flushing it.
    fn close(&mut self) -> anyhow::Result<()>;
}

/// Runs a queue subcommand; returns the process exit code (errors, such as
/// "no such message", are returned and exit 1).
pub fn run(command: QueueCommand, loaded: &Loaded) -> anyhow::Result<i32> {
    let config = &loaded.config;
    let address = admin_address(config);
    let mut reason = "no admin address is known (the [admin] address has port 0 and no server \
                      recorded one)"
        .to_string();
    if let Some(address) = address {
        let remote = remote::Remote::new(address, config.admin.token.clone());
        match remote.ping() {
            Ok(()) => return execute(command, Box::new(remote)),
            Err(why) => reason = why,
        }
    }
    match local::Local::open(config) {
        Ok(local) => execute(command, Box::new(local)),
        Err(local::OpenError::Locked) => {
            let api = address.map_or_else(|| "(unknown address)".to_string(), |a| a.to_string());
            anyhow::bail!(
                "the spool {} is in use by another process (a running `sluice serve`?), but the \
                 admin API at {api} does not answer ({reason}); not touching the spool",
                config.spool.path.display()
            )
        }
        Err(local::OpenError::Other(error)) => Err(error),
    }
}

/// Where the running server's API should be: the address it recorded in the
/// spool, else `[admin] address` (port 0 means unknown). A wildcard address
/// is reached on loopback.
///
/// The record is trusted only under an absolute spool path: a relative one
/// (the embedded default `./spool`) depends on the working directory, which
/// may be anyone's (`/tmp`), and whoever wrote a record there would receive
/// the bearer token (as for `sluice sendmail`, see [`crate::runfile`]).
fn admin_address(config: &Config) -> Option<SocketAddr> {
    let recorded = config
        .spool
        .path
        .is_absolute()
        .then(|| std::fs::read_to_string(crate::admin::address_file(&config.spool.path)).ok())
        .flatten()
        .and_then(|text| text.trim().parse::<SocketAddr>().ok());
    let mut address = recorded.or_else(|| {
        let configured = config.admin.address;
        (configured.port() != 0).then_some(configured)
    })?;
    if address.ip().is_unspecified() {
        address.set_ip(match address.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Some(address)
}

fn execute(command: QueueCommand, mut access: Box<dyn Access>) -> anyhow::Result<i32> {
    let result = dispatch(command, access.as_mut());
    let closed = access.close();
    let code = match result {
        Ok(code) => code,
        // `sluice queue list | head` is not an error.
        Err(error) if is_broken_pipe(&error) => 0,
        Err(error) => return Err(error),
    };
    closed?;
    Ok(code)
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<io::Error>())
        .any(|error| error.kind() == io::ErrorKind::BrokenPipe)
}

/// Parses an ID given on the command line; a malformed one cannot be queued,
/// so it is "no such message" too (exit 1).
fn queue_id(text: &str) -> anyhow::Result<QueueId> {
    QueueId::parse(text).ok_or_else(|| anyhow::anyhow!("no such message: {text} (not a queue ID)"))
}

fn dispatch(command: QueueCommand, access: &mut dyn Access) -> anyhow::Result<i32> {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    match command {
        QueueCommand::List {
            json,
            status,
            domain,
            sender,
        } => {
            let filter = ListFilter {
                status: status.map(StatusFilter::from),
                domain,
                sender,
            };
            if json {
                access.json_list(&filter, &mut out)?;
            } else {
                let mut printer = output::ListPrinter::new(&mut out, chrono::Utc::now());
                access.each(&filter, &mut |message| printer.message(&message))?;
                printer.finish()?;
            }
        }
        QueueCommand::Show { id, json } => {
            let message = access.show(&queue_id(&id)?)?;
            if json {
                output::show_json(&mut out, &message)?;
            } else {
                output::show(&mut out, &message, chrono::Utc::now())?;
            }
        }
        QueueCommand::Retry { all: true, .. } => {
            let count = access.retry_all()?;
            writeln!(out, "{count} message{} due now", plural(count))?;
        }
        QueueCommand::Delete { all: true, .. } => {
            let count = access.delete_all()?;
            writeln!(out, "{count} message{} deleted", plural(count))?;
        }
        QueueCommand::Retry { id, all: false } => {
            single(access, &mut out, Action::Retry, id.as_deref())?;
        }
        QueueCommand::Delete { id, all: false } => {
            single(access, &mut out, Action::Delete, id.as_deref())?;
        }
        QueueCommand::Hold { id } => single(access, &mut out, Action::Hold, Some(&id))?,
        QueueCommand::Release { id } => single(access, &mut out, Action::Release, Some(&id))?,
        QueueCommand::Bounce { id } => single(access, &mut out, Action::Bounce, Some(&id))?,
    }
    out.flush()?;
    Ok(0)
}

fn plural(count: u64) -> &'static str {
    if count == 1 { "" } else { "s" }
}

fn single(
    access: &mut dyn Access,
    out: &mut dyn Write,
    action: Action,
    id: Option<&str>,
) -> anyhow::Result<()> {
    // clap guarantees an ID when --all is absent.
    let text = id.ok_or_else(|| anyhow::anyhow!("a queue ID or --all is needed"))?;
    let id = queue_id(text)?;
    let message = access.act(action, &id)?;
    match (action, message) {
        (Action::Retry, _) => writeln!(out, "{id}: due now")?,
        (Action::Hold, _) => writeln!(out, "{id}: held")?,
        (Action::Release, _) => writeln!(out, "{id}: released")?,
        (Action::Delete, _) => writeln!(out, "{id}: deleted")?,
        (Action::Bounce, Some(message)) => {
            let failed = message
                .recipients
                .iter()
                .filter(|r| r.status == RecipientStatus::Failed)
                .count();
            if message.sender.is_empty() {
                writeln!(
                    out,
                    "{id}: bounced ({failed} recipients failed; null sender: no DSN)"
                )?;
            } else {
                writeln!(
                    out,
                    "{id}: bounced ({failed} recipients failed; DSN queued to {})",
                    message.sender
                )?;
            }
        }
        (Action::Bounce, None) => writeln!(out, "{id}: bounced")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: QueueCommand,
    }

    fn parse(args: &[&str]) -> Result<QueueCommand, clap::Error> {
        let mut argv = vec!["queue"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).map(|cli| cli.command)
    }

    #[test]
    fn all_and_an_id_together_are_a_usage_error() {
        for command in ["retry", "delete"] {
            let error = parse(&[command, "ABC", "--all"]).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{command}");
            let error = parse(&[command]).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{command} without ID");
            assert!(parse(&[command, "--all"]).is_ok());
            assert!(parse(&[command, "ABC"]).is_ok());
        }
    }

    #[test]
    fn every_design_command_parses() {
        for args in [
            &["list"][..],
            &["list", "--json"],
            &["show", "A1"],
            &["show", "A1", "--json"],
            &["hold", "A1"],
            &["release", "A1"],
            &["bounce", "A1"],
            &["list", "--status", "held", "--domain", "example.net"],
        ] {
            parse(args).unwrap_or_else(|error| panic!("{args:?}: {error}"));
        }
    }

    #[test]
    fn a_malformed_id_is_no_such_message() {
        let error = queue_id("not-an-id").unwrap_err().to_string();
        assert!(error.contains("no such message"), "{error}");
    }

    #[test]
    fn wildcard_admin_address_is_reached_on_loopback() {
        let mut config = Config::default();
        config.spool.path = "/nonexistent/spool".into();
        config.admin.address = "0.0.0.0:8025".parse().unwrap();
        assert_eq!(
            admin_address(&config),
            Some("127.0.0.1:8025".parse().unwrap())
        );
        config.admin.address = "127.0.0.1:0".parse().unwrap();
        assert_eq!(admin_address(&config), None);
    }

    #[test]
    fn a_recorded_admin_address_is_trusted_only_under_an_absolute_spool_path() {
        // Made under the working directory so that it has a relative name too.
        let spool = tempfile::tempdir_in(".").unwrap();
        std::fs::write(crate::admin::address_file(spool.path()), "127.0.0.9:4242\n").unwrap();
        let mut config = Config::default();
        config.admin.address = "127.0.0.1:8025".parse().unwrap();

        config.spool.path = std::fs::canonicalize(spool.path()).unwrap();
        assert_eq!(
            admin_address(&config),
            Some("127.0.0.9:4242".parse().unwrap())
        );
        config.spool.path = spool.path().file_name().unwrap().into();
        assert!(config.spool.path.is_relative());
        assert_eq!(
            admin_address(&config),
            Some("127.0.0.1:8025".parse().unwrap())
        );
    }
}
