//! The `sluice sendmail` command line.
//!
//! Parsed by hand, getopt style as Postfix does: flags may be clustered
//! (`-ti`), an option's argument may be attached or separate (`-fme@x` or
//! `-f me@x`), options and recipients may be mixed, `--` ends the options.
//!
//! - `-f SENDER` (or the obsolete `-r SENDER`): the envelope sender. `-f ''`
//!   or `-f '<>'` gives the null sender. A sender without `@` gets
//!   `@<hostname>` appended. Default: the invoking user's login name (from
//!   the password database entry of the real user ID; when there is none,
//!   `$LOGNAME`, then `$USER`, then `nobody`) at the configured `hostname`.
//! - `-F NAME`: the full name put in a `From:` header that sluice adds when
//!   the message has none. Default: the user's GECOS full name (its first
//!   comma-separated field, `&` replaced by the capitalised login), if any.
//! - `-t`: also take recipients from the `To:`, `Cc:` and `Bcc:` headers. As
//!   in Postfix, recipients named on the command line are *added* to them
//!   (classic sendmail would exclude them instead). `Resent-*` headers are
//!   not consulted.
//! - `-i`, `-oi`: a line holding a single dot does not end the input. sluice
//!   always reads to end of file, so these are accepted and change nothing.
//! - `-bm`: read mail from stdin and deliver it (the default mode).
//! - `-bp`: list the queue instead, as `sluice queue list` (the `mailq`
//!   of sendmail and Postfix); recipients and other options are ignored.
//! - `-q`: attempt delivery of all queued mail now, as `sluice queue retry
//!   --all`. `-q` with a value (`-q1h`, `-qRsite`, ...) is a usage error.
//! - `-bs`: an SMTP session on stdin and stdout, as mutt or cron may use
//!   (see [`super::stdio`]); recipients and other options are ignored.
//! - Any other `-b` mode (`-bi`, `-bv`, `-bd`, ...) is a usage error. When
//!   several modes are given, the last one applies.
//! - `-o X` (`-odi`, `-odb`, `-oem`, `-oee`, `-om`, `-oo`, ...): accepted and
//!   ignored, as Postfix does (use the configuration file instead); `-oi` is
//!   `-i`.
//! - `-v`: print `queued as <ID>` on stdout after a successful submission
//!   (otherwise sendmail is silent on success).
//! - `-N DSN`, `-R RET`, `-V ENVID`, `-B TYPE`, `-h HOPS`, `-G`, `-U`, `-m`,
//!   `-n`: accepted for compatibility and ignored (DSN options are not
//!   passed on).
//! - `--config PATH`: the sluice configuration, as for every subcommand.
//! - Any other option is a usage error: exit 2.
//!
//! Recipient arguments may hold several comma-separated addresses and the
//! `Name <addr>` form (see [`super::envelope`]).

use std::path::PathBuf;

use super::SendmailError;

/// The usage text printed with `--help` and after a usage error.
pub const USAGE: &str = "\
Usage: sluice sendmail [OPTIONS] [RECIPIENT...] < message

Reads a message on stdin and submits it to the running sluice server,
or writes it into the spool itself when no server answers.

Options:
  -f SENDER     envelope sender (default: your login name @ hostname)
  -F NAME       full name for the From: header added when missing
  -t            also take recipients from the To:, Cc: and Bcc: headers
  -i, -oi       a line with a single dot does not end input (always so)
  -bm           read mail from stdin (the default mode)
  -bp           list the queue (as `sluice queue list`)
  -bs           speak SMTP on stdin and stdout
  -q            deliver all queued mail now (as `sluice queue retry --all`)
  -v            print the queue ID on success
  -o X, -N, -R, -V, -B, -h, -G, -U, -m, -n   accepted and ignored
  --config PATH the sluice configuration
  --help        this text";

/// What the command does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mode {
    /// `-bm` (the default): submit the message read on stdin.
    #[default]
    Submit,
    /// `-bp`: list the queue.
    ListQueue,
    /// `-q`: retry all queued mail.
    RetryQueue,
    /// `-bs`: an SMTP session on stdin and stdout.
    Smtp,
}

/// The parsed command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// `-bm`, `-bp`, `-bs` or `-q`.
    pub mode: Mode,
    /// `-f`: `Some("")` is the null sender.
    pub sender: Option<String>,
    /// `-F`.
    pub full_name: Option<String>,
    /// `-t`.
    pub extract_recipients: bool,
    /// `-v`.
    pub verbose: bool,
    /// `--help`.
    pub help: bool,
    /// `--config`.
    pub config: Option<PathBuf>,
    /// The recipient arguments, as given (split later).
    pub recipients: Vec<String>,
}

/// Parses the arguments after `sendmail`, getopt style (see the module doc).
/// Every error is a [`SendmailError::Usage`].
pub fn parse_args(args: &[String]) -> Result<Options, SendmailError> {
    let usage = SendmailError::Usage;
    let mut options = Options::default();
    let mut index = 0;
    while index < args.len() {
        let arg = &args[index];
        index += 1;
        if arg == "--" {
            options.recipients.extend(args[index..].iter().cloned());
            break;
        }
        if arg == "--help" {
            options.help = true;
            continue;
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            options.config = Some(PathBuf::from(path));
            continue;
        }
        if arg == "--config" {
            let path = args
                .get(index)
                .ok_or_else(|| usage("option --config requires a path".into()))?;
            index += 1;
            options.config = Some(PathBuf::from(path));
            continue;
        }
        if arg.starts_with("--") {
            return Err(usage(format!("unknown option {arg}")));
        }
        let Some(flags) = arg.strip_prefix('-').filter(|flags| !flags.is_empty()) else {
            options.recipients.push(arg.clone());
            continue;
        };
        for (at, flag) in flags.char_indices() {
            match flag {
                't' => options.extract_recipients = true,
                'v' => options.verbose = true,
                'i' | 'G' | 'U' | 'm' | 'n' => {}
                'q' => {
                    let rest = &flags[at + flag.len_utf8()..];
                    if !rest.is_empty() {
                        return Err(usage(format!("option -q{rest} is not supported")));
                    }
                    options.mode = Mode::RetryQueue;
                }
                'f' | 'r' | 'F' | 'o' | 'b' | 'N' | 'R' | 'V' | 'B' | 'h' => {
                    let rest = &flags[at + flag.len_utf8()..];
                    let value = if !rest.is_empty() {
                        rest.to_string()
                    } else {
                        let value = args
                            .get(index)
                            .ok_or_else(|| usage(format!("option -{flag} requires an argument")))?;
                        index += 1;
                        value.clone()
                    };
                    match flag {
                        'f' | 'r' => options.sender = Some(value),
                        'F' => options.full_name = Some(value),
                        'b' => {
                            options.mode = match value.as_str() {
                                "m" => Mode::Submit,
                                "p" => Mode::ListQueue,
                                "s" => Mode::Smtp,
                                _ => {
                                    return Err(usage(format!("mode -b{value} is not supported")));
                                }
                            };
                        }
                        // -o options, DSN and body type: ignored (see the module doc).
                        _ => {}
                    }
                    break;
                }
                other => return Err(usage(format!("unknown option -{other}"))),
            }
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|arg| arg.to_string()).collect()
    }

    #[test]
    fn options_parse_getopt_style_with_clusters_attached_values_and_permutation() {
        let options = parse_args(&args(&[
            "-ti",
            "-fme@x.test",
            "a@y.test",
            "-F",
            "Me Myself",
            "-oi",
            "-odb",
            "-oem",
            "-bm",
            "-v",
            "b@y.test",
        ]))
        .unwrap();
        assert!(options.extract_recipients && options.verbose);
        assert_eq!(options.sender.as_deref(), Some("me@x.test"));
        assert_eq!(options.full_name.as_deref(), Some("Me Myself"));
        assert_eq!(options.recipients, args(&["a@y.test", "b@y.test"]));
    }

    #[test]
    fn double_dash_ends_options_and_config_is_taken() {
        let options = parse_args(&args(&["--config", "/c.toml", "--", "-odd@x.test"])).unwrap();
        assert_eq!(options.config, Some(PathBuf::from("/c.toml")));
        assert_eq!(options.recipients, args(&["-odd@x.test"]));
        let options = parse_args(&args(&["--config=/d.toml", "-r", "", "x"])).unwrap();
        assert_eq!(options.config, Some(PathBuf::from("/d.toml")));
        assert_eq!(
            options.sender.as_deref(),
            Some(""),
            "-r '' is the null sender"
        );
    }

    #[test]
    fn ignored_options_swallow_their_argument() {
        let options = parse_args(&args(&["-N", "never", "-R", "hdrs", "-h", "5", "a@x"])).unwrap();
        assert_eq!(options.recipients, args(&["a@x"]));
        assert!(parse_args(&args(&["--help"])).unwrap().help);
    }

    #[test]
    fn bp_lists_and_q_retries_the_queue_the_last_mode_wins() {
        assert_eq!(parse_args(&args(&[])).unwrap().mode, Mode::Submit);
        assert_eq!(parse_args(&args(&["-bp"])).unwrap().mode, Mode::ListQueue);
        assert_eq!(
            parse_args(&args(&["-b", "p"])).unwrap().mode,
            Mode::ListQueue
        );
        assert_eq!(parse_args(&args(&["-q"])).unwrap().mode, Mode::RetryQueue);
        assert_eq!(parse_args(&args(&["-vq"])).unwrap().mode, Mode::RetryQueue);
        assert_eq!(
            parse_args(&args(&["-q", "-bm"])).unwrap().mode,
            Mode::Submit
        );
        assert_eq!(
            parse_args(&args(&["-bp", "-q"])).unwrap().mode,
            Mode::RetryQueue
        );
    }

    #[test]
    fn unknown_flags_missing_values_and_other_modes_are_usage_errors() {
        for bad in [
            &["-x"][..],
            &["-f"],
            &["-bi"],
            &["-bx"],
            &["--frob"],
            &["-q1h"],
            &["-qRexample.org"],
            &["--config"],
        ] {
            let error = parse_args(&args(bad)).unwrap_err();
            assert!(error.is_usage(), "{bad:?}: {error}");
        }
    }
}
