//! `sluice queue …`: through the admin API when a server runs, else on the
//! spool directly.

use clap::Subcommand;

use crate::config::Loaded;

/// The `sluice queue` subcommands.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// One line per message, like mailq.
    List {
        #[arg(long)]
        json: bool,
    },
}

/// Runs a queue subcommand; returns the process exit code.
pub fn run(command: QueueCommand, loaded: &Loaded) -> anyhow::Result<i32> {
    let _ = (command, loaded);
    anyhow::bail!("sluice queue is not implemented yet")
}
