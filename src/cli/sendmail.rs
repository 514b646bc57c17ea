//! `sluice sendmail`: the sendmail(1)-compatible local submission command.
//! It reads one message on stdin and submits it over SMTP to the running
//! server, the way Postfix's and Exim's `sendmail` hand mail to their daemon.
//!
//! ```text
//! sluice sendmail [OPTIONS] [RECIPIENT...] < message
//! ```
//!
//! Also reached by invoking the binary under the name `sendmail` (for
//! example `ln -s /usr/bin/sluice /usr/sbin/sendmail`); the configuration then
//! comes from `SLUICE_CONFIG` or the default path.
//!
//! # Options
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
//! - `-bm`: read mail from stdin and deliver it (the default and only mode);
//!   any other `-b` mode (`-bs`, `-bp`, `-bi`, `-bv`, ...) is a usage error.
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
//! `Name <addr>` form; an address without `@` gets `@<hostname>` appended
//! (Postfix appends `$myorigin` the same way). Duplicates are submitted once.
//! No recipient at all (none given, none found with `-t`) is a usage error
//! ("no recipients", exit 2).
//!
//! # The message
//!
//! - Line endings: each line ends at LF; a CR right before that LF is part of
//!   the line ending, so both LF and CRLF input become CRLF on the wire. A CR
//!   elsewhere also ends a line (becomes CRLF), since the server refuses bare
//!   CRs. This does not contradict the server's "bare LF is rejected, never
//!   normalised" rule (the SMTP smuggling defence): that rule is about SMTP
//!   peers, where sender and receiver may disagree on where a message ends.
//!   Here the input is a local, trusted pipe read to end of file, with no
//!   end-of-data marker to disagree on; and what goes to the server is
//!   canonical SMTP (CRLF only, dot-stuffed), checked by the server as for
//!   any other client.
//! - A leading mbox `From ` line is dropped (as Postfix's sendmail does).
//! - The header section ends at the first empty line, or at the first line
//!   that is neither a header field nor a continuation (then an empty line
//!   is inserted before it). It may be at most 1 MiB.
//! - `Bcc:` (and `Resent-Bcc:`) headers are always removed, with or without
//!   `-t`: their content is by definition not for the recipients' eyes.
//! - Missing `From:`, `Date:` and `Message-ID:` headers are added at the end
//!   of the header section, as Postfix's cleanup does for local submission.
//!   `From:` is `Full Name <sender>` (or the bare sender; `MAILER-DAEMON@<hostname>`
//!   for the null sender), `Date:` the local time (RFC 5322 §3.3), and
//!   `Message-ID:` `<time.random@hostname>`.
//! - Lines beginning with `.` are dot-stuffed (RFC 5321 §4.5.2).
//!
//! # Submission
//!
//! The message goes over SMTP to the running server's first `relay`-kind
//! listener (submission listeners require TLS and AUTH): the address the
//! server recorded in `<spool>/smtp.address` when it started (so a listener
//! on port 0, or a configuration edited since, is still found; only with an
//! absolute spool path, since a relative one depends on the working
//! directory, which may be anyone's), else the
//! first relay `[[listener]]` of the configuration. When the recorded
//! address does not answer (a stale file after a crash), the configured one
//! is tried. A wildcard listener address (`0.0.0.0`, `::`) is reached on
//! `127.0.0.1` / `::1`; loopback is in the default `relay_networks`, so no
//! AUTH is needed. The
//! transaction is EHLO (HELO when EHLO is refused), `MAIL FROM` (with
//! `BODY=8BITMIME` and `SMTPUTF8` when the server offers them and, for
//! SMTPUTF8, an address needs it), `RCPT TO` per recipient, then DATA. The
//! message is streamed line by line from stdin to the socket: a message of
//! any size is never held in memory (only the header section is). The queue
//! ID is taken from the `250 2.0.0 Ok: queued as <ID>` reply.
//!
//! # Exit status
//!
//! - 0: the server accepted the message (a 250 after the data: it is on
//!   disk). Nothing is printed unless `-v`.
//! - 1: a runtime error, one line on stderr starting `sluice: `. No server
//!   answering (`sluice: cannot submit: no server answers on 127.0.0.1:2525
//!   (connection refused); is sluice serve running?`), any 4xx/5xx reply (the
//!   server's reply is printed; nothing was queued), a lost connection, an
//!   unreadable stdin or configuration.
//! - 2: a usage error: an unknown option, a missing option argument, an
//!   invalid address, no recipients.

use std::collections::HashSet;
use std::ffi::CStr;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Config, ConfigError, ListenerKind};
use crate::runfile;

/// The usage text printed with `--help` and after a usage error.
pub const USAGE: &str = "\
Usage: sluice sendmail [OPTIONS] [RECIPIENT...] < message

Reads a message on stdin and submits it to the running sluice server.

Options:
  -f SENDER     envelope sender (default: your login name @ hostname)
  -F NAME       full name for the From: header added when missing
  -t            also take recipients from the To:, Cc: and Bcc: headers
  -i, -oi       a line with a single dot does not end input (always so)
  -bm           read mail from stdin (the default and only mode)
  -v            print the queue ID on success
  -o X, -N, -R, -V, -B, -h, -G, -U, -m, -n   accepted and ignored
  --config PATH the sluice configuration
  --help        this text";

/// The largest header section read into memory.
const MAX_HEADER_SECTION: usize = 1 << 20;

/// How long to wait for the connection to the local server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Nothing accepts connections at the listener address.
    #[error("cannot submit: no server answers on {address} ({reason}); is sluice serve running?")]
    Connect { address: SocketAddr, reason: String },
    /// The server answered a command with a 4xx or 5xx reply.
    #[error("cannot submit: the server refused {command}: {reply}")]
    Refused { command: String, reply: String },
    /// The conversation broke down (connection lost, garbled reply).
    #[error("cannot submit: {what} with the server at {address}: {reason}")]
    Conversation {
        what: &'static str,
        address: SocketAddr,
        reason: String,
    },
    /// Reading the message on stdin failed, or it cannot be submitted.
    #[error("cannot read the message on stdin: {0}")]
    Input(String),
}

impl SendmailError {
    /// True for a command-line problem (exit 2), false for a runtime one (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, SendmailError::Usage(_))
    }
}

/// The parsed command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
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
        let chars = flags.char_indices();
        for (at, flag) in chars {
            match flag {
                't' => options.extract_recipients = true,
                'v' => options.verbose = true,
                'i' | 'G' | 'U' | 'm' | 'n' => {}
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
                        'b' if value != "m" => {
                            return Err(usage(format!("mode -b{value} is not supported")));
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
    let config = &loaded.config;
    let user = invoking_user();
    let hostname = config.hostname.as_str();

    let sender = match options.sender.as_deref() {
        Some(given) => qualify(&sender_address(given)?, hostname),
        None => format!("{}@{hostname}", user.login),
    };
    check_address(&sender)?;

    let stdin = io::stdin();
    let mut input = stdin.lock();
    let headers = HeaderSection::read(&mut input)?;

    let mut recipients = Recipients::default();
    for arg in &options.recipients {
        for address in split_recipient_argument(arg) {
            recipients.add(qualify(&address, hostname))?;
        }
    }
    if options.extract_recipients {
        for address in headers.recipients() {
            recipients.add(qualify(&address, hostname))?;
        }
    }
    if recipients.list.is_empty() {
        return Err(SendmailError::Usage("no recipients".into()));
    }

    let full_name = options.full_name.clone().or(user.full_name);
    let added = missing_headers(&headers, &sender, full_name.as_deref(), hostname);
    let mut client = connect(config)?;
    let id = client.submit(
        hostname,
        &sender,
        &recipients.list,
        config.limits.data_timeout,
        |data| {
            headers.write(data, &added)?;
            copy_body(&mut input, data, &headers.pending_body_lines)
        },
    )?;
    if options.verbose {
        println!("queued as {id}");
    }
    Ok(0)
}

/// The invoking user, for the default sender and `From:` name.
struct User {
    login: String,
    full_name: Option<String>,
}

/// The password database entry of the real user ID, else the environment.
fn invoking_user() -> User {
    if let Some(user) = password_entry() {
        return user;
    }
    let login = ["LOGNAME", "USER"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .find(|value| !value.is_empty() && value.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or_else(|| "nobody".to_string());
    User {
        login,
        full_name: None,
    }
}

/// `getpwuid_r(getuid())`: the login name and GECOS full name.
fn password_entry() -> Option<User> {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd (null pointers, zero IDs) is a valid value
    // for getpwuid_r to overwrite.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the strings it stores in
    // `entry` point into `buffer`, which outlives their use below.
    let status = unsafe {
        libc::getpwuid_r(
            uid,
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        )
    };
    if status != 0 || result.is_null() || entry.pw_name.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so pw_name is a NUL-terminated string in `buffer`.
    let login = unsafe { CStr::from_ptr(entry.pw_name) }
        .to_string_lossy()
        .into_owned();
    let gecos = if entry.pw_gecos.is_null() {
        String::new()
    } else {
        // SAFETY: as for pw_name.
        unsafe { CStr::from_ptr(entry.pw_gecos) }
            .to_string_lossy()
            .into_owned()
    };
    if login.is_empty() {
        return None;
    }
    let full_name = gecos_full_name(&gecos, &login);
    Some(User { login, full_name })
}

/// The full name in a GECOS field: its first comma-separated part, with `&`
/// standing for the capitalised login name (passwd(5)).
pub fn gecos_full_name(gecos: &str, login: &str) -> Option<String> {
    let first = gecos.split(',').next().unwrap_or("").trim();
    if first.is_empty() {
        return None;
    }
    let mut capitalised = login.to_string();
    if let Some(initial) = capitalised.get(..1) {
        let upper = initial.to_ascii_uppercase();
        capitalised.replace_range(..1, &upper);
    }
    Some(first.replace('&', &capitalised))
}

/// The `-f` value as an address: `<>` and `''` are the null sender, angle
/// brackets are removed.
fn sender_address(given: &str) -> Result<String, SendmailError> {
    let trimmed = given.trim();
    let inner = match (trimmed.find('<'), trimmed.rfind('>')) {
        (Some(open), Some(close)) if open < close => &trimmed[open + 1..close],
        _ => trimmed,
    };
    Ok(inner.trim().to_string())
}

/// Appends `@hostname` to an address without a domain; the null sender stays.
fn qualify(address: &str, hostname: &str) -> String {
    if address.is_empty() || address.contains('@') {
        address.to_string()
    } else {
        format!("{address}@{hostname}")
    }
}

/// Refuses what cannot go in `MAIL FROM:<…>` / `RCPT TO:<…>` as it is:
/// controls (no command injection through an argument), spaces, brackets.
fn check_address(address: &str) -> Result<(), SendmailError> {
    if address
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '<' || c == '>')
    {
        return Err(SendmailError::Usage(format!("invalid address {address:?}")));
    }
    Ok(())
}

/// The addresses in one recipient argument: comma-separated, each bare or
/// in the `Name <addr>` form.
pub fn split_recipient_argument(arg: &str) -> Vec<String> {
    arg.split(',')
        .map(|part| {
            let part = part.trim();
            match (part.find('<'), part.rfind('>')) {
                (Some(open), Some(close)) if open < close => part[open + 1..close].trim(),
                _ => part,
            }
            .to_string()
        })
        .filter(|address| !address.is_empty())
        .collect()
}

/// The envelope recipients in order, each once.
#[derive(Default)]
struct Recipients {
    list: Vec<String>,
    seen: HashSet<String>,
}

impl Recipients {
    fn add(&mut self, address: String) -> Result<(), SendmailError> {
        check_address(&address)?;
        if self.seen.insert(address.to_lowercase()) {
            self.list.push(address);
        }
        Ok(())
    }
}

/// One header field: its name and its lines (the first and any
/// continuations), line endings removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderField {
    /// The field name as written.
    pub name: String,
    /// The physical lines, without CRLF.
    pub lines: Vec<Vec<u8>>,
}

impl HeaderField {
    fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// The message's header section, read from the input before submission
/// (the only part of the message held in memory).
#[derive(Debug, Default)]
pub struct HeaderSection {
    /// The header fields in order.
    pub fields: Vec<HeaderField>,
    /// Body lines already read: the line that ended the section when it
    /// was not an empty line, and lines split off by bare CRs.
    pub pending_body_lines: Vec<Vec<u8>>,
}

impl HeaderSection {
    /// Reads lines up to the end of the header section (see the module doc).
    pub fn read(input: &mut impl BufRead) -> Result<HeaderSection, SendmailError> {
        let mut section = HeaderSection::default();
        let mut size = 0;
        let mut first = true;
        let mut reader = LineReader::default();
        while let Some(line) = reader.next_line(input)? {
            if std::mem::take(&mut first) && line.starts_with(b"From ") {
                continue;
            }
            size += line.len() + 2;
            if size > MAX_HEADER_SECTION {
                return Err(SendmailError::Input(format!(
                    "the header section is over {} KiB",
                    MAX_HEADER_SECTION / 1024
                )));
            }
            if line.is_empty() {
                break;
            }
            if line[0] == b' ' || line[0] == b'\t' {
                if let Some(field) = section.fields.last_mut() {
                    field.lines.push(line);
                    continue;
                }
            } else if let Some(name) = field_name(&line) {
                section.fields.push(HeaderField {
                    name,
                    lines: vec![line],
                });
                continue;
            }
            // Neither a field nor a continuation: the body starts here.
            section.pending_body_lines.push(line);
            break;
        }
        // A bare CR may have split the last line read: the rest is body.
        section.pending_body_lines.extend(reader.queued.drain(..));
        Ok(section)
    }

    fn has(&self, name: &str) -> bool {
        self.fields.iter().any(|field| field.is(name))
    }

    /// The addresses in the To:, Cc: and Bcc: fields (RFC 5322 §3.6.3),
    /// groups included.
    pub fn recipients(&self) -> Vec<String> {
        let mut raw = Vec::new();
        for field in self
            .fields
            .iter()
            .filter(|field| field.is("to") || field.is("cc") || field.is("bcc"))
        {
            for line in &field.lines {
                raw.extend_from_slice(line);
                raw.extend_from_slice(b"\r\n");
            }
        }
        if raw.is_empty() {
            return Vec::new();
        }
        raw.extend_from_slice(b"\r\n");
        let Some(message) = mail_parser::MessageParser::default().parse_headers(&raw[..]) else {
            return Vec::new();
        };
        let mut addresses = Vec::new();
        for name in ["To", "Cc", "Bcc"] {
            for value in message.header_values(name) {
                if let mail_parser::HeaderValue::Address(list) = value {
                    addresses.extend(
                        list.iter()
                            .filter_map(|addr| addr.address.as_deref())
                            .map(|address| address.trim().to_string())
                            .filter(|address| !address.is_empty()),
                    );
                }
            }
        }
        addresses
    }

    /// Writes the section as submitted: Bcc removed, `added` appended, then
    /// the empty line that ends it.
    fn write(&self, data: &mut DataWriter<'_>, added: &[String]) -> io::Result<()> {
        for field in &self.fields {
            if field.is("bcc") || field.is("resent-bcc") {
                continue;
            }
            for line in &field.lines {
                data.line(line)?;
            }
        }
        for header in added {
            data.line(header.as_bytes())?;
        }
        data.line(b"")
    }
}

/// The field name of a header line, when it is one (RFC 5322 §2.2:
/// printable ASCII but `:`, then `:`).
fn field_name(line: &[u8]) -> Option<String> {
    let colon = line.iter().position(|&byte| byte == b':')?;
    let name = &line[..colon];
    let name = name.strip_suffix(b" ").unwrap_or(name); // "Subject :" is seen in the wild
    (!name.is_empty() && name.iter().all(|&byte| (33..=126).contains(&byte)))
        .then(|| String::from_utf8_lossy(name).into_owned())
}

/// The headers to add: From:, Date: and Message-ID: when missing.
fn missing_headers(
    headers: &HeaderSection,
    sender: &str,
    full_name: Option<&str>,
    hostname: &str,
) -> Vec<String> {
    let mut added = Vec::new();
    if !headers.has("from") {
        let address = if sender.is_empty() {
            format!("MAILER-DAEMON@{hostname}")
        } else {
            sender.to_string()
        };
        added.push(
            match full_name.map(str::trim).filter(|name| !name.is_empty()) {
                Some(name) => format!("From: {} <{address}>", display_name(name)),
                None => format!("From: {address}"),
            },
        );
    }
    if !headers.has("date") {
        added.push(format!("Date: {}", chrono::Local::now().to_rfc2822()));
    }
    if !headers.has("message-id") {
        let random: u64 = rand::random();
        added.push(format!(
            "Message-ID: <{}.{random:016x}@{hostname}>",
            chrono::Utc::now().format("%Y%m%d%H%M%S")
        ));
    }
    added
}

/// A display name as RFC 5322 §3.4 wants it: atoms as they are, else a
/// quoted string; non-ASCII as an RFC 2047 encoded word.
pub fn display_name(name: &str) -> String {
    use base64::Engine as _;
    let name: String = name.chars().filter(|c| !c.is_control()).collect();
    if !name.is_ascii() {
        return format!(
            "=?utf-8?b?{}?=",
            base64::engine::general_purpose::STANDARD.encode(name.as_bytes())
        );
    }
    let atext =
        |c: char| c.is_ascii_alphanumeric() || c == ' ' || "!#$%&'*+-/=?^_`{|}~".contains(c);
    if name.chars().all(atext) {
        name
    } else {
        let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
        format!("\"{escaped}\"")
    }
}

/// Splits the input into lines (see the module doc on line endings).
#[derive(Default)]
struct LineReader {
    buffer: Vec<u8>,
    /// Lines split off by bare CRs, still to be returned.
    queued: std::collections::VecDeque<Vec<u8>>,
}

impl LineReader {
    /// The next line without its ending, or `None` at end of input.
    fn next_line(&mut self, input: &mut impl BufRead) -> Result<Option<Vec<u8>>, SendmailError> {
        if let Some(line) = self.queued.pop_front() {
            return Ok(Some(line));
        }
        self.buffer.clear();
        let read = input
            .read_until(b'\n', &mut self.buffer)
            .map_err(|error| SendmailError::Input(error.to_string()))?;
        if read == 0 {
            return Ok(None);
        }
        let mut line = self.buffer.as_slice();
        if let Some(rest) = line.strip_suffix(b"\n") {
            line = rest;
            while let Some(rest) = line.strip_suffix(b"\r") {
                line = rest;
            }
        }
        let mut pieces = line.split(|&byte| byte == b'\r');
        let first = pieces.next().unwrap_or_default().to_vec();
        self.queued.extend(pieces.map(<[u8]>::to_vec));
        Ok(Some(first))
    }
}

/// Why streaming the message stopped.
enum StreamError {
    /// Reading stdin failed.
    Input(SendmailError),
    /// Writing to the server failed.
    Output(io::Error),
}

impl From<io::Error> for StreamError {
    fn from(error: io::Error) -> Self {
        StreamError::Output(error)
    }
}

/// Streams the pending lines, then the rest of the input, as body lines.
fn copy_body(
    input: &mut impl BufRead,
    data: &mut DataWriter<'_>,
    pending: &[Vec<u8>],
) -> Result<(), StreamError> {
    for line in pending {
        data.line(line)?;
    }
    let mut reader = LineReader::default();
    while let Some(line) = reader.next_line(input).map_err(StreamError::Input)? {
        data.line(&line)?;
    }
    Ok(())
}

/// Writes message lines in DATA form: dot-stuffed, CRLF-terminated.
struct DataWriter<'a> {
    out: &'a mut BufWriter<TcpStream>,
}

impl DataWriter<'_> {
    /// One line, its content without a line ending (RFC 5321 §4.5.2).
    fn line(&mut self, content: &[u8]) -> io::Result<()> {
        if content.first() == Some(&b'.') {
            self.out.write_all(b".")?;
        }
        self.out.write_all(content)?;
        self.out.write_all(b"\r\n")
    }
}

/// Connects to the first of [`submission_addresses`] that answers; the
/// error of the last one tried when none does.
fn connect(config: &Config) -> Result<Client, SendmailError> {
    let mut failure = None;
    for address in submission_addresses(config)? {
        match Client::connect(address, config.limits.command_timeout) {
            Ok(client) => return Ok(client),
            Err(error @ SendmailError::Connect { .. }) => failure = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(failure.expect("submission_addresses returns at least one address"))
}

/// Where to submit, in order: the first relay listener the running server
/// recorded in the spool, then the first relay `[[listener]]` configured
/// (when it differs and its port is known). Never empty.
fn submission_addresses(config: &Config) -> Result<Vec<SocketAddr>, SendmailError> {
    let recorded = runfile::read_listeners(&config.spool.path).and_then(|listeners| {
        listeners
            .into_iter()
            .find(|(kind, _)| *kind == ListenerKind::Relay)
            .map(|(_, address)| reachable(address))
    });
    match (recorded, listener_address(config)) {
        (Some(recorded), Ok(configured)) if configured != recorded => {
            Ok(vec![recorded, configured])
        }
        (Some(recorded), _) => Ok(vec![recorded]),
        (None, configured) => configured.map(|address| vec![address]),
    }
}

/// A wildcard address (`0.0.0.0`, `::`) as reached from this host.
fn reachable(mut address: SocketAddr) -> SocketAddr {
    match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => address.set_ip(Ipv4Addr::LOCALHOST.into()),
        IpAddr::V6(ip) if ip.is_unspecified() => address.set_ip(Ipv6Addr::LOCALHOST.into()),
        _ => {}
    }
    address
}

/// The address of the first configured relay listener, wildcards mapped to
/// loopback.
fn listener_address(config: &Config) -> Result<SocketAddr, SendmailError> {
    let listener = config
        .listeners
        .iter()
        .find(|listener| listener.kind == ListenerKind::Relay)
        .ok_or_else(|| {
            SendmailError::NoListener(
                "the configuration has no relay-kind [[listener]] (submission listeners \
                 require TLS and AUTH)"
                    .into(),
            )
        })?;
    let address = listener.address;
    if address.port() == 0 {
        return Err(SendmailError::NoListener(format!(
            "the first relay [[listener]] address {address} has port 0 and no running server \
             recorded its address in {}; is sluice serve running?",
            runfile::smtp_address_file(&config.spool.path).display()
        )));
    }
    Ok(reachable(address))
}

/// One SMTP reply: its code and its text lines joined by spaces.
struct Reply {
    code: u16,
    text: String,
}

impl Reply {
    fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

/// A blocking SMTP client for one submission.
struct Client {
    address: SocketAddr,
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
    command_timeout: Duration,
}

impl Client {
    fn connect(address: SocketAddr, command_timeout: Duration) -> Result<Client, SendmailError> {
        let stream = TcpStream::connect_timeout(&address, CONNECT_TIMEOUT).map_err(|error| {
            SendmailError::Connect {
                address,
                reason: match error.kind() {
                    io::ErrorKind::ConnectionRefused => "connection refused".into(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                        "connection timed out".into()
                    }
                    _ => error.to_string(),
                },
            }
        })?;
        let broken = |error: io::Error| SendmailError::Conversation {
            what: "setting up the connection",
            address,
            reason: error.to_string(),
        };
        stream
            .set_read_timeout(Some(command_timeout))
            .map_err(broken)?;
        stream
            .set_write_timeout(Some(command_timeout))
            .map_err(broken)?;
        let reader = BufReader::new(stream.try_clone().map_err(broken)?);
        Ok(Client {
            address,
            reader,
            writer: BufWriter::with_capacity(64 * 1024, stream),
            command_timeout,
        })
    }

    fn broken(&self, what: &'static str, error: impl ToString) -> SendmailError {
        SendmailError::Conversation {
            what,
            address: self.address,
            reason: error.to_string(),
        }
    }

    /// Reads one (possibly multi-line) reply (RFC 5321 §4.2.1).
    fn read_reply(&mut self) -> Result<Reply, SendmailError> {
        let mut text = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = Read::take(&mut self.reader, 4096).read_until(b'\n', &mut line);
            let read = read.map_err(|error| self.broken("reading a reply", error))?;
            if read == 0 {
                return Err(self.broken("reading a reply", "the connection was closed"));
            }
            let content = String::from_utf8_lossy(&line).trim_end().to_string();
            let code = content
                .get(..3)
                .and_then(|code| code.parse::<u16>().ok())
                .filter(|code| (200..600).contains(code))
                .ok_or_else(|| {
                    self.broken("reading a reply", format!("garbled reply {content:?}"))
                })?;
            let last = content.as_bytes().get(3) != Some(&b'-');
            text.push(content);
            if last {
                return Ok(Reply {
                    code,
                    text: text.join(" "),
                });
            }
        }
    }

    /// Sends a command line and reads its reply; a 4xx/5xx is an error.
    fn command(&mut self, line: &str) -> Result<Reply, SendmailError> {
        self.writer
            .write_all(line.as_bytes())
            .and_then(|()| self.writer.write_all(b"\r\n"))
            .and_then(|()| self.writer.flush())
            .map_err(|error| self.broken("sending a command", error))?;
        let reply = self.read_reply()?;
        if !reply.is_positive() {
            return Err(self.refused(line, reply));
        }
        Ok(reply)
    }

    fn refused(&mut self, command: &str, reply: Reply) -> SendmailError {
        let _ = self
            .writer
            .write_all(b"QUIT\r\n")
            .and_then(|()| self.writer.flush());
        SendmailError::Refused {
            command: command.to_string(),
            reply: reply.text,
        }
    }

    /// Runs the transaction; `write_message` writes the message lines.
    /// Returns the queue ID of the final reply.
    fn submit(
        &mut self,
        hostname: &str,
        sender: &str,
        recipients: &[String],
        data_timeout: Duration,
        write_message: impl FnOnce(&mut DataWriter<'_>) -> Result<(), StreamError>,
    ) -> Result<String, SendmailError> {
        let greeting = self.read_reply()?;
        if greeting.code != 220 {
            return Err(self.refused("the connection", greeting));
        }
        let keywords: Vec<String> = match self.command(&format!("EHLO {hostname}")) {
            Ok(reply) => reply
                .text
                .split(' ')
                .map(|word| word.trim_start_matches("250-").to_ascii_uppercase())
                .collect(),
            Err(SendmailError::Refused { .. }) => {
                self.command(&format!("HELO {hostname}"))?;
                Vec::new()
            }
            Err(error) => return Err(error),
        };
        let offers = |keyword: &str| keywords.iter().any(|word| word == keyword);
        let mut mail = format!("MAIL FROM:<{sender}>");
        if offers("8BITMIME") {
            mail.push_str(" BODY=8BITMIME");
        }
        let needs_utf8 = !sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii());
        if needs_utf8 && offers("SMTPUTF8") {
            mail.push_str(" SMTPUTF8");
        }
        self.command(&mail)?;
        for recipient in recipients {
            self.command(&format!("RCPT TO:<{recipient}>"))?;
        }
        let reply = self.command("DATA")?;
        if reply.code != 354 {
            return Err(self.refused("DATA", reply));
        }
        let mut data = DataWriter {
            out: &mut self.writer,
        };
        // On an input error the end-of-data marker is never sent: the
        // server discards the unfinished transaction when we hang up.
        match write_message(&mut data) {
            Ok(()) => {}
            Err(StreamError::Input(error)) => return Err(error),
            Err(StreamError::Output(error)) => {
                return Err(self.broken("sending the message", error));
            }
        }
        let written = self
            .writer
            .write_all(b".\r\n")
            .and_then(|()| self.writer.flush());
        written.map_err(|error| self.broken("sending the message", error))?;
        let set_timeout = |timeout| self.reader.get_ref().set_read_timeout(Some(timeout));
        set_timeout(data_timeout).map_err(|error| self.broken("waiting for the reply", error))?;
        let reply = self.read_reply()?;
        if reply.code != 250 {
            return Err(self.refused("the message", reply));
        }
        let _ = self
            .reader
            .get_ref()
            .set_read_timeout(Some(self.command_timeout));
        let _ = self.command("QUIT");
        queue_id(&reply.text).ok_or_else(|| {
            self.broken(
                "reading the final reply",
                format!("no queue ID in {:?}", reply.text),
            )
        })
    }
}

/// The ID in `250 2.0.0 Ok: queued as <ID>`.
fn queue_id(reply: &str) -> Option<String> {
    let id = reply
        .split("queued as ")
        .nth(1)?
        .split_whitespace()
        .next()?;
    (!id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric())).then(|| id.to_string())
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
    }

    #[test]
    fn unknown_flags_missing_values_and_other_modes_are_usage_errors() {
        for bad in [
            &["-x"][..],
            &["-f"],
            &["-bs"],
            &["-bp"],
            &["--frob"],
            &["-tq"],
        ] {
            let error = parse_args(&args(bad)).unwrap_err();
            assert!(error.is_usage(), "{bad:?}: {error}");
        }
    }

    #[test]
    fn recipient_arguments_split_on_commas_and_angle_brackets() {
        assert_eq!(
            split_recipient_argument("a@x.test, Bob <b@y.test>,,c"),
            args(&["a@x.test", "b@y.test", "c"])
        );
    }

    #[test]
    fn addresses_with_controls_or_spaces_are_refused() {
        assert!(check_address("a@x.test\r\nRCPT TO:<b@y>").is_err());
        assert!(check_address("a b@x.test").is_err());
        assert!(check_address("a@x.test").is_ok());
        assert!(check_address("").is_ok());
    }

    #[test]
    fn header_section_ends_at_empty_line_and_keeps_continuations() {
        let mut input =
            &b"From sender Mon Jan 1\nSubject: hi\n there\r\nTo: a@x.test\n\nbody\n"[..];
        let section = HeaderSection::read(&mut input).unwrap();
        assert_eq!(section.fields.len(), 2);
        assert_eq!(
            section.fields[0].lines,
            vec![b"Subject: hi".to_vec(), b" there".to_vec()]
        );
        assert!(section.pending_body_lines.is_empty());
        assert_eq!(input, b"body\n");
    }

    #[test]
    fn a_non_header_line_starts_the_body() {
        let mut input = &b"Subject: x\nthis is body\nmore\n"[..];
        let section = HeaderSection::read(&mut input).unwrap();
        assert_eq!(section.fields.len(), 1);
        assert_eq!(section.pending_body_lines, vec![b"this is body".to_vec()]);
    }

    #[test]
    fn header_recipients_include_groups_and_display_names() {
        let mut input =
            &b"To: Al <a@x.test>, b@x.test\nCc: team: c@x.test, d@x.test;\nBcc: e@x.test\n\n"[..];
        let section = HeaderSection::read(&mut input).unwrap();
        assert_eq!(
            section.recipients(),
            args(&["a@x.test", "b@x.test", "c@x.test", "d@x.test", "e@x.test"])
        );
    }

    #[test]
    fn display_names_are_quoted_or_encoded_when_needed() {
        assert_eq!(display_name("Ann Smith"), "Ann Smith");
        assert_eq!(display_name("Smith, Ann"), "\"Smith, Ann\"");
        assert_eq!(display_name("Zoë"), "=?utf-8?b?Wm/Dqw==?=");
    }

    #[test]
    fn gecos_first_field_with_ampersand_is_the_full_name() {
        assert_eq!(
            gecos_full_name("& Doe,Room 1,,", "john").as_deref(),
            Some("John Doe")
        );
        assert_eq!(gecos_full_name(",,,", "john"), None);
    }

    #[test]
    fn wildcard_listener_is_reached_on_loopback_and_port_0_refused() {
        let mut config = Config::default();
        config.listeners[0].address = "0.0.0.0:2525".parse().unwrap();
        assert_eq!(
            listener_address(&config).unwrap(),
            "127.0.0.1:2525".parse().unwrap()
        );
        config.listeners[0].address = "[::]:2525".parse().unwrap();
        assert_eq!(
            listener_address(&config).unwrap(),
            "[::1]:2525".parse().unwrap()
        );
        config.listeners[0].address = "127.0.0.1:0".parse().unwrap();
        assert!(listener_address(&config).is_err());
    }

    #[test]
    fn recorded_relay_listener_comes_before_the_configured_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::default();
        config.spool.path = dir.path().to_path_buf();
        config.listeners[0].address = "127.0.0.1:2525".parse().unwrap();
        let configured: SocketAddr = "127.0.0.1:2525".parse().unwrap();
        assert_eq!(submission_addresses(&config).unwrap(), [configured]);

        std::fs::write(
            runfile::smtp_address_file(dir.path()),
            "submission 127.0.0.1:587\nrelay 0.0.0.0:40001\n",
        )
        .unwrap();
        let recorded: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert_eq!(
            submission_addresses(&config).unwrap(),
            [recorded, configured]
        );

        config.listeners[0].address = "127.0.0.1:0".parse().unwrap();
        assert_eq!(submission_addresses(&config).unwrap(), [recorded]);

        std::fs::remove_file(runfile::smtp_address_file(dir.path())).unwrap();
        let error = submission_addresses(&config).unwrap_err().to_string();
        assert!(
            error.contains("port 0") && error.contains("smtp.address"),
            "{error}"
        );
    }

    #[test]
    fn queue_id_is_read_from_the_final_reply() {
        assert_eq!(
            queue_id("250 2.0.0 Ok: queued as Abc123").as_deref(),
            Some("Abc123")
        );
        assert_eq!(queue_id("250 2.0.0 Ok"), None);
    }
}
