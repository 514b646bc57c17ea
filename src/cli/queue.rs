//! `sluice queue …`: through the admin API when a server runs, else on the
//! spool directly.
//!
//! Which applies: when `GET /health` answers on the admin socket (`[admin]
//! socket`, default `<spool>/admin.sock`), the API is used there, never over
//! TCP (any user can bind a port while the server is down). Otherwise the
//! spool is opened; sled lets only one process hold it, so if a server holds
//! it but its socket does not answer, the command says so and exits 1
//! without touching the spool.

mod local;
mod output;
pub(crate) mod remote;
mod socket_http;

use std::io::{self, Write};

use clap::{Subcommand, ValueEnum};
use sluice_queue::{QueueId, RecipientStatus};

pub use crate::admin::bulk::Action;
use crate::admin::summary::Summary;
use crate::admin::suspensions::{SuspensionList, SuspensionView};
use crate::admin::view::{ListFilter, MessageView, StatusFilter};
use crate::config::Loaded;

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
        /// Only messages received at least this long ago (90s, 30m, 1h, 2d).
        #[arg(long, value_name = "AGE", value_parser = crate::admin::bulk::parse_age)]
        older_than: Option<std::time::Duration>,
    },
    /// Envelope, per-recipient state, attempts and last reply of a message.
    Show {
        /// The queue ID.
        id: String,
        /// One JSON message object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Per destination domain: messages, deferred, held, suspended, ages
    /// (like Postfix's qshape) and the most common last reply.
    Summary {
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// The message as stored, our Received: header included (like postcat -q).
    Cat {
        /// The queue ID.
        id: String,
        /// Only the header section.
        #[arg(long)]
        headers: bool,
    },
    /// Attempt delivery now (deferred recipients become due).
    Retry {
        #[command(flatten)]
        targets: Targets,
    },
    /// Park messages: they are not delivered until released.
    Hold {
        #[command(flatten)]
        targets: Targets,
    },
    /// Un-park held messages.
    Release {
        #[command(flatten)]
        targets: Targets,
    },
    /// Remove without notice to anyone.
    Delete {
        #[command(flatten)]
        targets: Targets,
    },
    /// Fail every remaining recipient now and send the sender a bounce (DSN).
    Bounce {
        #[command(flatten)]
        targets: Targets,
    },
    /// Stop delivery attempts to a destination for a while (its mail waits
    /// and is not charged attempts).
    Suspend {
        /// A recipient domain, or an MX suffix like ".google.com".
        destination: String,
        /// How long (default: the rule's suspend_for, else 30m).
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_suspend_for)]
        duration: Option<std::time::Duration>,
    },
    /// End a suspension now; the destination's waiting mail becomes due.
    Resume {
        /// The destination as suspended.
        destination: String,
    },
    /// The destinations suspended now, until when, and why.
    Suspended {
        /// `{"suspensions": [...]}` instead of the table.
        #[arg(long)]
        json: bool,
    },
}

fn parse_suspend_for(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text)
        .ok()
        .filter(|duration| !duration.is_zero())
        .ok_or_else(|| format!("bad duration {text:?}: expected e.g. \"30m\" or \"2h\""))
}

/// Which messages an action applies to: IDs, `--all`, or filters.
#[derive(Debug, Clone, clap::Args)]
pub struct Targets {
    /// Queue IDs; "-" reads IDs from stdin (separated by white space).
    #[arg(
        value_name = "ID",
        required_unless_present_any = ["all", "domain", "sender", "status", "older_than"],
        conflicts_with_all = ["all", "domain", "sender", "status", "older_than"]
    )]
    ids: Vec<String>,
    /// Every queued message (retry: every deferred one that is not held).
    #[arg(long, conflicts_with_all = ["domain", "sender", "status", "older_than"])]
    all: bool,
    /// Messages with a recipient in this domain.
    #[arg(long, value_name = "DOMAIN")]
    domain: Option<String>,
    /// Messages from this sender ("" for the null sender <>).
    #[arg(long, value_name = "ADDRESS")]
    sender: Option<String>,
    /// Messages with a recipient in this state (or held ones).
    #[arg(long, value_enum)]
    status: Option<StatusArg>,
    /// Messages received at least this long ago (90s, 30m, 1h, 2d).
    #[arg(long, value_name = "AGE", value_parser = crate::admin::bulk::parse_age)]
    older_than: Option<std::time::Duration>,
}

impl Targets {
    /// `--all` (for `sendmail -q`, which is `queue retry --all`).
    pub fn all() -> Targets {
        Targets {
            ids: Vec::new(),
            all: true,
            domain: None,
            sender: None,
            status: None,
            older_than: None,
        }
    }

    /// The filter `--all` or the filter options select.
    fn filter(&self) -> ListFilter {
        ListFilter {
            status: self.status.map(StatusFilter::from),
            domain: self.domain.clone(),
            sender: self.sender.clone(),
            older_than: self.older_than,
        }
    }
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
    /// Performs `action` on each ID as `act` would; how many succeeded.
    /// Each refusal (no such message, held, …) goes to `refused`.
    fn act_on_ids(
        &mut self,
        action: Action,
        ids: &mut dyn Iterator<Item = String>,
        refused: &mut dyn FnMut(String),
    ) -> anyhow::Result<u64>;
    /// Performs `action` on every message passing `filter` that it would
    /// change (see `admin::bulk`); how many.
    fn act_on_selection(&mut self, action: Action, filter: &ListFilter) -> anyhow::Result<u64>;
    /// The queue's shape by destination domain.
    fn summary(&mut self) -> anyhow::Result<Summary>;
    /// Writes the stored message (or its header section) to `out`.
    fn cat(&mut self, id: &QueueId, headers: bool, out: &mut dyn Write) -> anyhow::Result<()>;
    /// Suspends `destination` for `duration` (default: its rule's).
    fn suspend(
        &mut self,
        destination: &str,
        duration: Option<std::time::Duration>,
    ) -> anyhow::Result<SuspensionView>;
    /// Ends the suspension of `destination`; false when there was none.
    fn resume(&mut self, destination: &str) -> anyhow::Result<bool>;
    /// The suspensions in force.
    fn suspensions(&mut self) -> anyhow::Result<SuspensionList>;
    /// Releases what was opened, flushing it.
    fn close(&mut self) -> anyhow::Result<()>;
}

/// Runs a queue subcommand; returns the process exit code (errors, such as
/// "no such message", are returned and exit 1).
pub fn run(command: QueueCommand, loaded: &Loaded) -> anyhow::Result<i32> {
    let config = &loaded.config;
    let socket = config.admin.socket_path(&config.spool.path);
    let remote = remote::Remote::new(socket.clone());
    let reason = match remote.ping() {
        Ok(()) => return execute(command, Box::new(remote)),
        Err(why) => why,
    };
    match local::Local::open(config) {
        Ok(local) => execute(command, Box::new(local)),
        Err(local::OpenError::Locked) => {
            anyhow::bail!(
                "the spool {} is in use by another process (a running `sluice serve`?), but its \
                 admin socket does not answer ({reason}); not touching the spool",
                config.spool.path.display()
            )
        }
        Err(local::OpenError::Other(error)) => Err(error),
    }
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
            older_than,
        } => {
            let filter = ListFilter {
                status: status.map(StatusFilter::from),
                domain,
                sender,
                older_than,
            };
            if json {
                access.json_list(&filter, &mut out)?;
            } else {
                let filtered = filter.status.is_some()
                    || filter.domain.is_some()
                    || filter.sender.is_some()
                    || filter.older_than.is_some();
                let mut printer =
                    output::ListPrinter::new(&mut out, chrono::Utc::now()).filtered(filtered);
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
        QueueCommand::Summary { json } => {
            let summary = access.summary()?;
            if json {
                serde_json::to_writer_pretty(&mut out, &summary)?;
                writeln!(out)?;
            } else {
                output::summary(&mut out, &summary)?;
            }
        }
        QueueCommand::Cat { id, headers } => {
            access.cat(&queue_id(&id)?, headers, &mut out)?;
        }
        QueueCommand::Retry { targets } => return act(access, out, Action::Retry, targets),
        QueueCommand::Hold { targets } => return act(access, out, Action::Hold, targets),
        QueueCommand::Release { targets } => return act(access, out, Action::Release, targets),
        QueueCommand::Delete { targets } => return act(access, out, Action::Delete, targets),
        QueueCommand::Bounce { targets } => return act(access, out, Action::Bounce, targets),
        QueueCommand::Suspend {
            destination,
            duration,
        } => {
            check_destination(&destination)?;
            let suspension = access.suspend(&destination, duration)?;
            writeln!(
                out,
                "{}: suspended until {}",
                suspension.destination, suspension.until
            )?;
        }
        QueueCommand::Resume { destination } => {
            check_destination(&destination)?;
            if !access.resume(&destination)? {
                anyhow::bail!(
                    "{} is not suspended",
                    crate::delivery::shaping::normalize(&destination)
                );
            }
            writeln!(
                out,
                "{}: resumed",
                crate::delivery::shaping::normalize(&destination)
            )?;
        }
        QueueCommand::Suspended { json } => {
            let list = access.suspensions()?;
            if json {
                serde_json::to_writer_pretty(&mut out, &list)?;
                writeln!(out)?;
            } else if list.suspensions.is_empty() {
                writeln!(out, "No destination is suspended.")?;
            } else {
                for suspension in &list.suspensions {
                    writeln!(
                        out,
                        "{}  until {}  {}",
                        suspension.destination, suspension.until, suspension.reason
                    )?;
                }
            }
        }
    }
    out.flush()?;
    Ok(0)
}

fn check_destination(destination: &str) -> anyhow::Result<()> {
    if !crate::delivery::shaping::valid_destination(destination) {
        anyhow::bail!(
            "bad destination {destination:?}: expected a domain or an MX suffix like \".google.com\""
        );
    }
    Ok(())
}

fn plural(count: u64) -> &'static str {
    if count == 1 { "" } else { "s" }
}

/// Runs an action on its targets. One ID keeps the single-message answer
/// (`ID: held`); several IDs, `-`, `--all` or filters print how many
/// messages were affected. Several IDs: each refusal is printed on stderr
/// and the exit code is 1 if there was any.
fn act(
    access: &mut dyn Access,
    mut out: impl Write,
    action: Action,
    targets: Targets,
) -> anyhow::Result<i32> {
    let verb = match action {
        Action::Retry => "due now",
        Action::Hold => "held",
        Action::Release => "released",
        Action::Delete => "deleted",
        Action::Bounce => "bounced",
    };
    let mut code = 0;
    let count = match targets.ids.as_slice() {
        [id] if id != "-" => {
            single(access, &mut out, action, Some(id))?;
            out.flush()?;
            return Ok(0);
        }
        [] => access.act_on_selection(action, &targets.filter())?,
        _ => {
            let mut ids = id_source(targets.ids);
            access.act_on_ids(action, &mut ids, &mut |error| {
                eprintln!("sluice: {error}");
                code = 1;
            })?
        }
    };
    writeln!(out, "{count} message{} {verb}", plural(count))?;
    out.flush()?;
    Ok(code)
}

/// The IDs of the command line, in order; `-` stands for those read from
/// stdin (separated by white space), read as they are needed.
fn id_source(args: Vec<String>) -> impl Iterator<Item = String> {
    args.into_iter()
        .flat_map(|arg| -> Box<dyn Iterator<Item = String>> {
            if arg == "-" {
                Box::new(
                    io::stdin()
                        .lines()
                        .map_while(|line| match line {
                            Ok(line) => Some(line),
                            Err(error) => {
                                eprintln!("sluice: reading IDs from stdin: {error}");
                                None
                            }
                        })
                        .flat_map(|line| {
                            line.split_whitespace()
                                .map(str::to_string)
                                .collect::<Vec<_>>()
                        }),
                )
            } else {
                Box::new(std::iter::once(arg))
            }
        })
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
            let failed = format!("{failed} recipient{} failed", plural(failed as u64));
            if message.sender.is_empty() {
                writeln!(out, "{id}: bounced ({failed}; null sender: no DSN)")?;
            } else {
                writeln!(
                    out,
                    "{id}: bounced ({failed}; DSN queued to {})",
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
    fn bulk_targets_are_ids_all_or_filters_never_mixed() {
        for args in [
            &["hold", "A1", "B2"][..],
            &["release", "-"],
            &["bounce", "A1", "-", "B2"],
            &["hold", "--all"],
            &["delete", "--domain", "example.net", "--older-than", "1h"],
            &["retry", "--sender", "", "--status", "deferred"],
            &["summary", "--json"],
            &["cat", "A1", "--headers"],
        ] {
            parse(args).unwrap_or_else(|error| panic!("{args:?}: {error}"));
        }
        for args in [
            &["hold"][..],
            &["hold", "A1", "--domain", "example.net"],
            &["hold", "--all", "--domain", "example.net"],
            &["delete", "--older-than", "soon"],
            &["cat"],
        ] {
            let error = parse(args).expect_err(&format!("{args:?} is a usage error"));
            assert_eq!(error.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn a_malformed_id_is_no_such_message() {
        let error = queue_id("not-an-id").unwrap_err().to_string();
        assert!(error.contains("no such message"), "{error}");
    }
}
