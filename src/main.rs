//! The `sluice` command line: the only place errors become exit codes
//! (0 success, 1 runtime or config error, 2 usage error, 75 `serve` stopped
//! after a storage failure and wants a restart).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::cli;
use sluice::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "A store-and-forward SMTP mail transfer agent"
)]
struct Cli {
    /// Configuration file (default: /etc/sluice/sluice.toml when it exists,
    /// else embedded defaults).
    #[arg(long, global = true, env = "SLUICE_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server in the foreground.
    Serve,
    /// Validate the configuration and print the effective settings.
    CheckConfig,
    /// Read a password on stdin and print an argon2id hash for [[user]].
    HashPassword,
    /// DKIM signing keys.
    Dkim {
        #[command(subcommand)]
        command: cli::dkim::DkimCommand,
    },
    /// Inspect and manage the queue.
    Queue {
        #[command(subcommand)]
        command: cli::queue::QueueCommand,
    },
    /// Delivery events for applications ([[events]] subscribers).
    Events {
        #[command(subcommand)]
        command: cli::events::EventsCommand,
    },
    /// Show the next hops and TLS policy (DANE, MTA-STS, static) for a
    /// recipient domain, without sending anything.
    Route(cli::route::RouteArgs),
    /// Submit a message read on stdin, like sendmail(1) (`sendmail --help`).
    #[command(disable_help_flag = true)]
    Sendmail {
        /// sendmail options and recipients (-f SENDER, -F NAME, -t, -i, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
    /// Write the man pages or shell completions (for packaging).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: Generate,
    },
}

#[derive(Debug, Subcommand)]
enum Generate {
    /// sluice(8), a page per command, and sluice.toml(5).
    Man {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// bash, zsh and fish completion scripts.
    Completions {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    // The spool is 0700/0600 whatever the umask (DESIGN.md "Local access").
    sluice::local::privilege::restrict_umask();
    // Installed as `sendmail` (a symlink to this binary): behave as
    // `sluice sendmail`, the configuration from SLUICE_CONFIG. As `mailq`:
    // `sluice sendmail -bp`, which is `sluice queue list`.
    let mut args = std::env::args_os();
    let invoked_as = args.next().map(PathBuf::from);
    let name = invoked_as.as_deref().and_then(|path| path.file_name());
    let first = match name.and_then(|name| name.to_str()) {
        Some("sendmail") => Some(None),
        Some("mailq") => Some(Some("-bp".to_string())),
        _ => None,
    };
    if let Some(first) = first {
        let args: Option<Vec<String>> = first
            .map(Some)
            .into_iter()
            .chain(args.map(|arg| arg.into_string().ok()))
            .collect();
        let config = std::env::var_os("SLUICE_CONFIG").map(PathBuf::from);
        let result = match args {
            Some(args) => sendmail(&args, config.as_deref()),
            None => sendmail_usage_error("arguments must be UTF-8"),
        };
        return exit(result);
    }
    let cli = Cli::parse();
    exit(run(cli))
}

/// Turns a command's result into the exit status, printing any error.
fn exit(result: anyhow::Result<u8>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("sluice: {}", render(&error));
            ExitCode::from(1)
        }
    }
}

/// `sluice sendmail`: usage errors exit 2 with the usage text.
fn sendmail(args: &[String], config: Option<&std::path::Path>) -> anyhow::Result<u8> {
    match cli::sendmail::run(args, config) {
        Err(error) if error.is_usage() => sendmail_usage_error(&error.to_string()),
        Err(error) if error.exit_code() != 1 => {
            eprintln!("sluice: {error}");
            Ok(error.exit_code())
        }
        result => Ok(result?),
    }
}

fn sendmail_usage_error(message: &str) -> anyhow::Result<u8> {
    eprintln!("sluice: {message}\n\n{}", cli::sendmail::USAGE);
    Ok(2)
}

/// The error and its causes joined by ": ", leaving out a cause whose text
/// the message already contains (many of our error types print their
/// source inline, and `{:#}` would repeat it).
fn render(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::HashPassword => {
            cli::hash_password::run()?;
            Ok(0)
        }
        Command::CheckConfig => {
            let loaded = Config::load(cli.config.as_deref())?;
            // Every file the config names is loaded as `serve` and a reload
            // load it: a check that passes means a start that does.
            sluice::reload::files::load(&loaded.config, loaded.path.as_deref())?;
            match &loaded.path {
                Some(path) => println!("# configuration from {} is valid", path.display()),
                None => println!("# no configuration file: embedded defaults"),
            }
            // Secrets are shown as "<redacted>" (see Config::redacted).
            let printed = loaded.config.redacted().to_toml();
            if printed.contains(sluice::config::REDACTED) {
                println!(
                    "# secrets are shown as {:?}; put them back before using a copy",
                    sluice::config::REDACTED
                );
            }
            print!("{printed}");
            Ok(0)
        }
        Command::Serve => {
            // Before any thread starts. Only the long-running server: the
            // offline commands' peak is the same either way, and their bulk
            // actions at 1,000,000 messages ran 40% slower on one arena.
            sluice_queue::limit_heap_arenas();
            let loaded = Config::load(cli.config.as_deref())?;
            sluice::logging::init(&loaded.config.log);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            match runtime.block_on(sluice::serve::run(loaded.config, loaded.path))? {
                sluice::serve::Stopped::Requested => Ok(0),
            }
        }
        Command::Sendmail { args } => sendmail(&args, cli.config.as_deref()),
        Command::Generate { what } => {
            use clap::CommandFactory;
            let command = Cli::command();
            let (dir, written) = match what {
                Generate::Man { out } => {
                    let written = cli::generate::man_pages(&command, &out)?;
                    (out, written)
                }
                Generate::Completions { out } => {
                    let written = cli::generate::completions(&command, &out)?;
                    (out, written)
                }
            };
            println!("{} files written into {}", written.len(), dir.display());
            Ok(0)
        }
        Command::Dkim { command } => {
            cli::dkim::run(command)?;
            Ok(0)
        }
        Command::Events { command } => {
            let loaded = Config::load(cli.config.as_deref())?;
            cli::events::run(command, &loaded)
        }
        Command::Route(args) => {
            let loaded = Config::load(cli.config.as_deref())?;
            cli::route::run(&args, &loaded.config)
        }
        Command::Queue { command } => {
            let loaded = Config::load(cli.config.as_deref())?;
            // Root against a spool it does not own: as its owner, before
            // opening anything.
            sluice::local::privilege::become_spool_owner(&loaded.config.spool.path)?;
            let code = cli::queue::run(command, &loaded)?;
            Ok(u8::try_from(code).unwrap_or(1))
        }
    }
}
