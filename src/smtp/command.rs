//! SMTP command parsing: one command line (without its CRLF) in, a typed
//! [`Command`] or a precise [`CommandError`] out. Pure: no I/O, no state.
//!
//! Grammar: RFC 5321 §4.1.1 (commands), §4.1.2 (paths and mailboxes),
//! §4.1.3 (address literals); RFC 1870 (SIZE), RFC 6152 (8BITMIME),
//! RFC 6531 (SMTPUTF8: UTF-8 in local parts and domains), RFC 3030 (BDAT),
//! RFC 3207 (STARTTLS), RFC 4954 (AUTH), RFC 3461 (DSN: RET, ENVID,
//! NOTIFY, ORCPT; their values are read by `smtp::dsn_params`). The ABNF is quoted at the end of
//! this file.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use sluice_queue::{NotifyOn, OriginalRecipient, Ret};

use super::dsn_params;

/// A parsed SMTP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain` (RFC 5321 §4.1.1.1).
    Ehlo(String),
    /// `HELO domain`.
    Helo(String),
    /// `MAIL FROM:<reverse-path> [parameters]`.
    Mail {
        sender: ReversePath,
        parameters: MailParameters,
    },
    /// `RCPT TO:<forward-path> [parameters]`.
    Rcpt {
        recipient: ForwardPath,
        parameters: RcptParameters,
    },
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (RFC 3030 §2).
    Bdat { size: u64, last: bool },
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY string`.
    Vrfy,
    /// `EXPN string` (not supported, answered 502).
    Expn,
    /// `HELP [string]`.
    Help,
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954 §4).
    Auth {
        mechanism: AuthMechanism,
        /// The base64 initial response as sent ("=" means empty).
        initial_response: Option<String>,
    },
}

/// SASL mechanisms we implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMechanism {
    /// RFC 4616.
    Plain,
    /// The de-facto LOGIN mechanism (draft-murchison-sasl-login).
    Login,
}

/// The argument of `MAIL FROM:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    /// `<>`: the null sender, used by bounces (RFC 5321 §4.5.5).
    Null,
    /// A mailbox.
    Mailbox(Mailbox),
}

/// The argument of `RCPT TO:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardPath {
    /// `<Postmaster>` without a domain (RFC 5321 §4.1.1.3), any case.
    Postmaster,
    /// A mailbox.
    Mailbox(Mailbox),
}

/// `local-part@domain`, as given except that an ASCII domain is lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// The local part exactly as sent (a quoted string keeps its quotes).
    pub local_part: String,
    /// The domain (ASCII letters lowercased), or an address literal in brackets.
    pub domain: String,
}

impl Mailbox {
    /// True when the address needs SMTPUTF8 (RFC 6531 §3.3).
    pub fn is_ascii(&self) -> bool {
        self.local_part.is_ascii() && self.domain.is_ascii()
    }

    /// True when the domain is an address literal such as `[192.0.2.1]`.
    pub fn is_address_literal(&self) -> bool {
        self.domain.starts_with('[')
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local_part, self.domain)
    }
}

/// `BODY=` values (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    SevenBit,
    EightBitMime,
}

/// The MAIL parameters we understand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParameters {
    /// `SIZE=n` (RFC 1870 §3): the client's estimate of the message size.
    pub size: Option<u64>,
    /// `BODY=7BIT|8BITMIME`.
    pub body: Option<BodyType>,
    /// `SMTPUTF8` (RFC 6531 §3.4).
    pub smtputf8: bool,
    /// `RET=FULL|HDRS` (RFC 3461 §4.3).
    pub ret: Option<Ret>,
    /// `ENVID=` (RFC 3461 §4.4), decoded from xtext.
    pub envid: Option<String>,
    /// `REQUIRETLS` (RFC 8689 §4.1): the message must travel only over
    /// authenticated TLS.
    pub requiretls: bool,
}

/// The RCPT parameters we understand (RFC 3461 §4.1, §4.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RcptParameters {
    /// `NOTIFY=`.
    pub notify: Option<NotifyOn>,
    /// `ORCPT=`, decoded from xtext.
    pub orcpt: Option<OriginalRecipient>,
}

impl RcptParameters {
    /// True when none was given.
    pub fn is_empty(&self) -> bool {
        self.notify.is_none() && self.orcpt.is_none()
    }
}

/// Why a command line could not be parsed; each maps to one reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The verb is not an SMTP command we know (`500 5.5.2`).
    #[error("command not recognized")]
    Unrecognized,
    /// The arguments do not follow the grammar (`501 5.5.4`).
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    /// A `BDAT` whose size cannot be read: the octets that follow cannot be
    /// skipped, so the connection must be closed (`501 5.5.4`, then close).
    #[error("syntax error in BDAT: {0}")]
    BdatSyntax(&'static str),
    /// A MAIL/RCPT parameter we do not implement (`555 5.5.4`, RFC 5321 §4.1.1.11).
    #[error("parameter {0} not supported")]
    UnknownParameter(String),
    /// An AUTH mechanism we do not offer (`504 5.5.4`, RFC 4954 §4).
    #[error("mechanism {0} not supported")]
    UnknownMechanism(String),
}

impl Command {
    /// Parses one command line, without its terminating CRLF.
    pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
        let line = std::str::from_utf8(line)
            .map_err(|_| CommandError::Syntax("the command line is not UTF-8"))?;
        let (verb, rest) = match line.find(' ') {
            Some(index) => (&line[..index], &line[index + 1..]),
            None => (line, ""),
        };
        if verb.len() > 8 || !verb.is_ascii() {
            return Err(CommandError::Unrecognized);
        }
        let verb = verb.to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => Ok(Command::Ehlo(parse_helo_argument(rest)?)),
            "HELO" => Ok(Command::Helo(parse_helo_argument(rest)?)),
            "MAIL" => parse_mail(rest),
            "RCPT" => parse_rcpt(rest),
            "DATA" => no_argument(rest, Command::Data),
            "BDAT" => parse_bdat(rest),
            "RSET" => no_argument(rest, Command::Rset),
            "NOOP" => Ok(Command::Noop),
            "QUIT" => no_argument(rest, Command::Quit),
            "VRFY" if rest.trim().is_empty() => Err(CommandError::Syntax("VRFY needs an argument")),
            "VRFY" => Ok(Command::Vrfy),
            "EXPN" => Ok(Command::Expn),
            "HELP" => Ok(Command::Help),
            "STARTTLS" => no_argument(rest, Command::StartTls),
            "AUTH" => parse_auth(rest),
            _ => Err(CommandError::Unrecognized),
        }
    }
}

fn no_argument(rest: &str, command: Command) -> Result<Command, CommandError> {
    if rest.trim_end().is_empty() {
        Ok(command)
    } else {
        Err(CommandError::Syntax("this command takes no argument"))
    }
}

/// The EHLO/HELO argument: one token of visible characters. It ends up in the
/// `Received:` header, so nothing that could break a header line is allowed.
fn parse_helo_argument(rest: &str) -> Result<String, CommandError> {
    let argument = rest.trim_end();
    if argument.is_empty() {
        return Err(CommandError::Syntax(
            "a domain or address literal is needed",
        ));
    }
    if argument.len() > 255
        || argument
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '(' | ')'))
    {
        return Err(CommandError::Syntax("invalid domain"));
    }
    Ok(argument.to_string())
}

/// Strips `keyword:` (case-insensitive) and the spaces some clients put after it.
fn strip_keyword<'a>(rest: &'a str, keyword: &str) -> Option<&'a str> {
    let head = rest.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| rest[keyword.len()..].trim_start_matches(' '))
}

fn parse_mail(rest: &str) -> Result<Command, CommandError> {
    let rest =
        strip_keyword(rest, "FROM:").ok_or(CommandError::Syntax("expected MAIL FROM:<address>"))?;
    let (path, parameters) = split_path(rest)?;
    let sender = if path.is_empty() {
        ReversePath::Null
    } else {
        ReversePath::Mailbox(parse_mailbox(path)?)
    };
    let parameters = parse_mail_parameters(parameters)?;
    Ok(Command::Mail { sender, parameters })
}

fn parse_rcpt(rest: &str) -> Result<Command, CommandError> {
    let rest =
        strip_keyword(rest, "TO:").ok_or(CommandError::Syntax("expected RCPT TO:<address>"))?;
    let (path, parameters) = split_path(rest)?;
    let parameters = parse_rcpt_parameters(parameters)?;
    if path.is_empty() {
        return Err(CommandError::Syntax("the null path is not a recipient"));
    }
    let without_route = strip_source_route(path)?;
    if without_route.eq_ignore_ascii_case("postmaster") {
        return Ok(Command::Rcpt {
            recipient: ForwardPath::Postmaster,
            parameters,
        });
    }
    Ok(Command::Rcpt {
        recipient: ForwardPath::Mailbox(parse_mailbox(path)?),
        parameters,
    })
}

/// Splits `<path> params` into the text between the brackets and the rest.
/// A `>` inside a quoted local part does not end the path.
fn split_path(rest: &str) -> Result<(&str, &str), CommandError> {
    let inner = rest.strip_prefix('<').ok_or(CommandError::Syntax(
        "the address must be in angle brackets",
    ))?;
    let mut quoted = false;
    let mut escaped = false;
    for (index, c) in inner.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => {
                let after = &inner[index + 1..];
                if !after.is_empty() && !after.starts_with(' ') {
                    return Err(CommandError::Syntax("expected a space after the address"));
                }
                return Ok((&inner[..index], after.trim_start_matches(' ')));
            }
            _ => {}
        }
    }
    Err(CommandError::Syntax("missing '>' after the address"))
}

/// RFC 5321 §4.1.1.3: a source route `@a,@b:` is accepted and ignored.
fn strip_source_route(path: &str) -> Result<&str, CommandError> {
    if !path.starts_with('@') {
        return Ok(path);
    }
    let (route, mailbox) = path
        .split_once(':')
        .ok_or(CommandError::Syntax("bad source route"))?;
    for hop in route.split(',') {
        let domain = hop
            .strip_prefix('@')
            .ok_or(CommandError::Syntax("bad source route"))?;
        if !is_domain(domain) {
            return Err(CommandError::Syntax("bad source route"));
        }
    }
    Ok(mailbox)
}

/// Parses `[source-route:]local-part@domain`.
fn parse_mailbox(path: &str) -> Result<Mailbox, CommandError> {
    let path = strip_source_route(path)?;
    let at = path
        .rfind('@')
        .ok_or(CommandError::Syntax("the address needs a domain"))?;
    let (local_part, domain) = (&path[..at], &path[at + 1..]);
    if !is_local_part(local_part) {
        return Err(CommandError::Syntax("bad local part"));
    }
    let domain = if domain.starts_with('[') {
        if !is_address_literal(domain) {
            return Err(CommandError::Syntax("bad address literal"));
        }
        domain.to_string()
    } else {
        if !is_domain(domain) {
            return Err(CommandError::Syntax("bad domain"));
        }
        domain.to_ascii_lowercase()
    };
    Ok(Mailbox {
        local_part: local_part.to_string(),
        domain,
    })
}

/// RFC 5322 atext, plus any non-ASCII character (RFC 6531 §3.3 UTF8-non-ascii).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// `Dot-string / Quoted-string` (RFC 5321 §4.1.2).
fn is_local_part(local: &str) -> bool {
    if local.is_empty() || local.len() > 256 {
        return false;
    }
    if let Some(inner) = local.strip_prefix('"') {
        let Some(inner) = inner.strip_suffix('"') else {
            return false;
        };
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                // quoted-pairSMTP = %d92 %d32-126
                '\\' => match chars.next() {
                    Some(next) if (' '..='~').contains(&next) => {}
                    _ => return false,
                },
                // qtextSMTP = %d32-33 / %d35-91 / %d93-126, or UTF-8
                '"' => return false,
                c if (' '..='~').contains(&c) || !c.is_ascii() => {}
                _ => return false,
            }
        }
        return true;
    }
    local
        .split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// `sub-domain *("." sub-domain)`, labels of letters, digits and hyphens
/// (or U-labels, RFC 6531), not starting or ending with a hyphen.
fn is_domain(domain: &str) -> bool {
    if domain.is_empty() || domain.len() > 255 {
        return false;
    }
    domain.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || c == '-'
                    || !c.is_ascii() && !c.is_control() && !c.is_whitespace()
            })
    })
}

/// `"[" ( IPv4-address-literal / IPv6-address-literal / General-address-literal ) "]"`.
fn is_address_literal(text: &str) -> bool {
    let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) else {
        return false;
    };
    if let Some(v6) = inner
        .get(..5)
        .filter(|tag| tag.eq_ignore_ascii_case("IPv6:"))
    {
        let _ = v6;
        return inner[5..].parse::<Ipv6Addr>().is_ok();
    }
    if inner.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    // General-address-literal = Standardized-tag ":" 1*dcontent
    match inner.split_once(':') {
        Some((tag, content)) => {
            is_domain(tag)
                && !content.is_empty()
                && content
                    .bytes()
                    .all(|b| (33..=90).contains(&b) || (94..=126).contains(&b))
        }
        None => false,
    }
}

fn parse_mail_parameters(text: &str) -> Result<MailParameters, CommandError> {
    let mut parameters = MailParameters::default();
    let mut seen_auth = false;
    for word in text.split(' ').filter(|word| !word.is_empty()) {
        let (keyword, value) = match word.split_once('=') {
            Some((keyword, value)) => (keyword, Some(value)),
            None => (word, None),
        };
        if keyword.is_empty()
            || !keyword
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(CommandError::Syntax("bad parameter"));
        }
        match (keyword.to_ascii_uppercase().as_str(), value) {
            ("SIZE", Some(value)) if parameters.size.is_none() => {
                if value.is_empty()
                    || value.len() > 20
                    || !value.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(CommandError::Syntax("SIZE needs a number"));
                }
                // A number too large for u64 is certainly too large for us.
                parameters.size = Some(value.parse().unwrap_or(u64::MAX));
            }
            ("BODY", Some(value)) if parameters.body.is_none() => {
                parameters.body = Some(if value.eq_ignore_ascii_case("7BIT") {
                    BodyType::SevenBit
                } else if value.eq_ignore_ascii_case("8BITMIME") {
                    BodyType::EightBitMime
                } else {
                    // BINARYMIME (RFC 3030 §3) is not advertised.
                    return Err(CommandError::UnknownParameter(format!(
                        "BODY={}",
                        value.to_ascii_uppercase()
                    )));
                });
            }
            ("SMTPUTF8", None) if !parameters.smtputf8 => parameters.smtputf8 = true,
            ("REQUIRETLS", None) if !parameters.requiretls => parameters.requiretls = true,
            // RFC 4954 §5: AUTH=<mailbox> may be sent to a server offering AUTH;
            // we accept and ignore it (the identity is the authenticated user).
            ("AUTH", Some(_)) if !seen_auth => seen_auth = true,
            ("RET", Some(value)) if parameters.ret.is_none() => {
                parameters.ret = Some(dsn_params::parse_ret(value).map_err(dsn_syntax)?);
            }
            ("ENVID", Some(value)) if parameters.envid.is_none() => {
                parameters.envid = Some(dsn_params::parse_envid(value).map_err(dsn_syntax)?);
            }
            ("SIZE" | "BODY" | "SMTPUTF8" | "AUTH" | "RET" | "ENVID", _) => {
                return Err(CommandError::Syntax("repeated or malformed parameter"));
            }
            (other, _) => return Err(CommandError::UnknownParameter(other.to_string())),
        }
    }
    Ok(parameters)
}

/// RCPT parameters: NOTIFY and ORCPT (RFC 3461), each at most once. RFC
/// 5321 §4.1.1.11: any other is refused with 555.
fn parse_rcpt_parameters(text: &str) -> Result<RcptParameters, CommandError> {
    let mut parameters = RcptParameters::default();
    for word in text.split(' ').filter(|word| !word.is_empty()) {
        let (keyword, value) = match word.split_once('=') {
            Some((keyword, value)) => (keyword, Some(value)),
            None => (word, None),
        };
        if keyword.is_empty()
            || !keyword
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(CommandError::Syntax("bad parameter"));
        }
        match (keyword.to_ascii_uppercase().as_str(), value) {
            ("NOTIFY", Some(value)) if parameters.notify.is_none() => {
                parameters.notify = Some(dsn_params::parse_notify(value).map_err(dsn_syntax)?);
            }
            ("ORCPT", Some(value)) if parameters.orcpt.is_none() => {
                parameters.orcpt = Some(dsn_params::parse_orcpt(value).map_err(dsn_syntax)?);
            }
            ("NOTIFY" | "ORCPT", _) => {
                return Err(CommandError::Syntax("repeated or malformed parameter"));
            }
            (other, _) => return Err(CommandError::UnknownParameter(other.to_string())),
        }
    }
    Ok(parameters)
}

/// A malformed DSN parameter value: `501 5.5.4`.
fn dsn_syntax(error: dsn_params::DsnParamError) -> CommandError {
    CommandError::Syntax(error.reason())
}

fn parse_bdat(rest: &str) -> Result<Command, CommandError> {
    let mut words = rest.split(' ').filter(|word| !word.is_empty());
    let size = words
        .next()
        .ok_or(CommandError::BdatSyntax("BDAT needs a size"))?;
    if size.len() > 19 || !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CommandError::BdatSyntax("bad chunk size"));
    }
    let size = size
        .parse()
        .map_err(|_| CommandError::BdatSyntax("bad chunk size"))?;
    let last = match words.next() {
        None => false,
        Some(word) if word.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::BdatSyntax("expected LAST")),
    };
    if words.next().is_some() {
        return Err(CommandError::BdatSyntax("too many arguments"));
    }
    Ok(Command::Bdat { size, last })
}

fn parse_auth(rest: &str) -> Result<Command, CommandError> {
    let mut words = rest.split(' ').filter(|word| !word.is_empty());
    let mechanism = words
        .next()
        .ok_or(CommandError::Syntax("AUTH needs a mechanism"))?;
    let mechanism = if mechanism.eq_ignore_ascii_case("PLAIN") {
        AuthMechanism::Plain
    } else if mechanism.eq_ignore_ascii_case("LOGIN") {
        AuthMechanism::Login
    } else {
        return Err(CommandError::UnknownMechanism(
            mechanism.to_ascii_uppercase(),
        ));
    };
    let initial_response = words.next().map(str::to_string);
    if words.next().is_some() {
        return Err(CommandError::Syntax("too many arguments"));
    }
    Ok(Command::Auth {
        mechanism,
        initial_response,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Command, CommandError> {
        Command::parse(line.as_bytes())
    }

    fn mailbox(local: &str, domain: &str) -> Mailbox {
        Mailbox {
            local_part: local.into(),
            domain: domain.into(),
        }
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(
            parse("ehlo client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(parse("QuIt"), Ok(Command::Quit));
        assert_eq!(parse("data"), Ok(Command::Data));
        assert_eq!(parse("starttls"), Ok(Command::StartTls));
    }

    #[test]
    fn unknown_verb_is_unrecognized() {
        assert_eq!(parse("FOO bar"), Err(CommandError::Unrecognized));
        assert_eq!(parse(""), Err(CommandError::Unrecognized));
        assert_eq!(parse("TOOLONGVERB x"), Err(CommandError::Unrecognized));
    }

    #[test]
    fn ehlo_needs_a_single_token() {
        assert!(matches!(parse("EHLO"), Err(CommandError::Syntax(_))));
        assert!(matches!(parse("EHLO a b"), Err(CommandError::Syntax(_))));
        assert!(matches!(parse("HELO a(b)"), Err(CommandError::Syntax(_))));
        assert_eq!(
            parse("HELO [192.0.2.1]"),
            Ok(Command::Helo("[192.0.2.1]".into()))
        );
    }

    #[test]
    fn mail_from_with_parameters() {
        assert_eq!(
            parse("MAIL FROM:<Alice@Example.ORG> SIZE=1000 BODY=8BITMIME SMTPUTF8 requiretls"),
            Ok(Command::Mail {
                sender: ReversePath::Mailbox(mailbox("Alice", "example.org")),
                parameters: MailParameters {
                    size: Some(1000),
                    body: Some(BodyType::EightBitMime),
                    smtputf8: true,
                    ret: None,
                    envid: None,
                    requiretls: true,
                },
            })
        );
    }

    #[test]
    fn dsn_parameters_on_mail_and_rcpt() {
        assert_eq!(
            parse("MAIL FROM:<a@b.example> ret=hdrs ENVID=QQ+2B1"),
            Ok(Command::Mail {
                sender: ReversePath::Mailbox(mailbox("a", "b.example")),
                parameters: MailParameters {
                    ret: Some(Ret::Hdrs),
                    envid: Some("QQ+1".into()),
                    ..MailParameters::default()
                },
            })
        );
        assert_eq!(
            parse("RCPT TO:<c@d.example> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;C+40d.example"),
            Ok(Command::Rcpt {
                recipient: ForwardPath::Mailbox(mailbox("c", "d.example")),
                parameters: RcptParameters {
                    notify: Some(NotifyOn {
                        success: true,
                        failure: false,
                        delay: true,
                    }),
                    orcpt: Some(OriginalRecipient {
                        address_type: "rfc822".into(),
                        address: "C@d.example".into(),
                    }),
                },
            })
        );
        assert!(matches!(
            parse("RCPT TO:<postmaster> NOTIFY=NEVER"),
            Ok(Command::Rcpt {
                recipient: ForwardPath::Postmaster,
                parameters: RcptParameters {
                    notify: Some(NotifyOn::NEVER),
                    orcpt: None
                },
            })
        ));
    }

    #[test]
    fn malformed_or_repeated_dsn_parameters_are_syntax_errors() {
        for line in [
            "MAIL FROM:<a@b.example> RET=ALL",
            "MAIL FROM:<a@b.example> RET=FULL RET=FULL",
            "MAIL FROM:<a@b.example> RET",
            "MAIL FROM:<a@b.example> ENVID=a=b",
            "MAIL FROM:<a@b.example> ENVID=",
            "MAIL FROM:<a@b.example> ENVID=x ENVID=y",
            "RCPT TO:<a@b.example> NOTIFY=NEVER,DELAY",
            "RCPT TO:<a@b.example> NOTIFY=SOMETIMES",
            "RCPT TO:<a@b.example> NOTIFY=DELAY NOTIFY=DELAY",
            "RCPT TO:<a@b.example> NOTIFY",
            "RCPT TO:<a@b.example> ORCPT=a@b.example",
            "RCPT TO:<a@b.example> ORCPT=rfc822;a+2cb@b.example",
            "RCPT TO:<a@b.example> ORCPT=rfc822;x ORCPT=rfc822;y",
        ] {
            assert!(
                matches!(parse(line), Err(CommandError::Syntax(_))),
                "{line}: {:?}",
                parse(line)
            );
        }
    }

    #[test]
    fn null_sender_is_accepted() {
        assert_eq!(
            parse("MAIL FROM:<>"),
            Ok(Command::Mail {
                sender: ReversePath::Null,
                parameters: MailParameters::default(),
            })
        );
    }

    #[test]
    fn space_after_colon_is_tolerated() {
        assert!(matches!(
            parse("mail from: <a@b.example>"),
            Ok(Command::Mail { .. })
        ));
    }

    #[test]
    fn unknown_mail_parameter_is_refused() {
        assert_eq!(
            parse("MAIL FROM:<a@b.example> MT-PRIORITY=3"),
            Err(CommandError::UnknownParameter("MT-PRIORITY".into()))
        );
        assert_eq!(
            parse("MAIL FROM:<a@b.example> BODY=BINARYMIME"),
            Err(CommandError::UnknownParameter("BODY=BINARYMIME".into()))
        );
        assert_eq!(
            parse("RCPT TO:<a@b.example> RRVS=2030-01-01T00:00:00Z"),
            Err(CommandError::UnknownParameter("RRVS".into()))
        );
    }

    #[test]
    fn malformed_size_is_a_syntax_error() {
        assert!(matches!(
            parse("MAIL FROM:<a@b.example> SIZE=x"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            parse("MAIL FROM:<a@b.example> SIZE=1 SIZE=2"),
            Err(CommandError::Syntax(_))
        ));
        assert_eq!(
            parse("MAIL FROM:<a@b.example> SIZE=99999999999999999999"),
            Ok(Command::Mail {
                sender: ReversePath::Mailbox(mailbox("a", "b.example")),
                parameters: MailParameters {
                    size: Some(u64::MAX),
                    ..Default::default()
                },
            })
        );
    }

    #[test]
    fn auth_parameter_on_mail_is_ignored() {
        assert!(matches!(
            parse("MAIL FROM:<a@b.example> AUTH=<>"),
            Ok(Command::Mail { .. })
        ));
    }

    #[test]
    fn bad_paths_are_syntax_errors() {
        for line in [
            "MAIL FROM:a@b.example",
            "MAIL FROM:<a@b.example",
            "MAIL FROM:<a@b.example>x",
            "MAIL FROM:<a>",
            "MAIL FROM:<@b.example>",
            "MAIL FROM:<a@>",
            "MAIL FROM:<a..b@c.example>",
            "MAIL FROM:<a@-b.example>",
            "MAIL FROM:<a@b..example>",
            "MAIL FROM:<a b@c.example>",
            "MAIL FROM:<a@[300.1.1.1]>",
            "MAIL <a@b.example>",
            "RCPT TO:<>",
            "RCPT <a@b.example>",
        ] {
            assert!(
                matches!(parse(line), Err(CommandError::Syntax(_))),
                "{line}"
            );
        }
    }

    #[test]
    fn quoted_local_part_may_hold_specials() {
        assert_eq!(
            parse("RCPT TO:<\"a >b\\\"c\"@d.example>"),
            Ok(Command::Rcpt {
                recipient: ForwardPath::Mailbox(mailbox("\"a >b\\\"c\"", "d.example")),
                parameters: RcptParameters::default(),
            })
        );
    }

    #[test]
    fn source_route_is_ignored() {
        assert_eq!(
            parse("RCPT TO:<@hop1.example,@hop2.example:user@d.example>"),
            Ok(Command::Rcpt {
                recipient: ForwardPath::Mailbox(mailbox("user", "d.example")),
                parameters: RcptParameters::default(),
            })
        );
    }

    #[test]
    fn address_literals() {
        assert!(matches!(
            parse("RCPT TO:<u@[192.0.2.1]>"),
            Ok(Command::Rcpt { .. })
        ));
        assert!(matches!(
            parse("RCPT TO:<u@[IPv6:2001:db8::1]>"),
            Ok(Command::Rcpt { .. })
        ));
        assert!(matches!(
            parse("RCPT TO:<u@[IPv6:nope]>"),
            Err(CommandError::Syntax(_))
        ));
    }

    #[test]
    fn unqualified_postmaster_any_case() {
        for line in [
            "RCPT TO:<postmaster>",
            "RCPT TO:<PostMaster>",
            "rcpt to:<POSTMASTER>",
        ] {
            assert_eq!(
                parse(line),
                Ok(Command::Rcpt {
                    recipient: ForwardPath::Postmaster,
                    parameters: RcptParameters::default(),
                }),
                "{line}"
            );
        }
    }

    #[test]
    fn utf8_addresses_parse() {
        let Ok(Command::Rcpt {
            recipient: ForwardPath::Mailbox(mailbox),
            ..
        }) = parse("RCPT TO:<δοκιμή@παράδειγμα.δοκιμή>")
        else {
            panic!("UTF-8 address should parse");
        };
        assert!(!mailbox.is_ascii());
        assert_eq!(mailbox.local_part, "δοκιμή");
    }

    #[test]
    fn non_utf8_line_is_a_syntax_error() {
        assert!(matches!(
            Command::parse(b"MAIL FROM:<\xff@x.example>"),
            Err(CommandError::Syntax(_))
        ));
    }

    #[test]
    fn bdat_forms() {
        assert_eq!(
            parse("BDAT 100"),
            Ok(Command::Bdat {
                size: 100,
                last: false
            })
        );
        assert_eq!(
            parse("bdat 0 last"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        assert!(matches!(parse("BDAT"), Err(CommandError::BdatSyntax(_))));
        assert!(matches!(parse("BDAT -1"), Err(CommandError::BdatSyntax(_))));
        assert!(matches!(
            parse("BDAT 1 FIRST"),
            Err(CommandError::BdatSyntax(_))
        ));
    }

    #[test]
    fn commands_without_arguments_refuse_them() {
        assert!(matches!(parse("DATA now"), Err(CommandError::Syntax(_))));
        assert!(matches!(parse("RSET x"), Err(CommandError::Syntax(_))));
        assert_eq!(parse("NOOP anything"), Ok(Command::Noop));
        assert!(matches!(parse("VRFY"), Err(CommandError::Syntax(_))));
        assert_eq!(parse("VRFY bob"), Ok(Command::Vrfy));
    }

    #[test]
    fn auth_forms() {
        assert_eq!(
            parse("AUTH PLAIN AGFwcABzZWNyZXQ="),
            Ok(Command::Auth {
                mechanism: AuthMechanism::Plain,
                initial_response: Some("AGFwcABzZWNyZXQ=".into()),
            })
        );
        assert_eq!(
            parse("auth login"),
            Ok(Command::Auth {
                mechanism: AuthMechanism::Login,
                initial_response: None,
            })
        );
        assert_eq!(
            parse("AUTH CRAM-MD5"),
            Err(CommandError::UnknownMechanism("CRAM-MD5".into()))
        );
    }
}

// RFC 5321 §4.1.2 (with RFC 6531 §3.3 extensions):
//
//   Reverse-path   = Path / "<>"
//   Forward-path   = Path
//   Path           = "<" [ A-d-l ":" ] Mailbox ">"
//   A-d-l          = At-domain *( "," At-domain )
//   At-domain      = "@" Domain
//   Mail-parameters  = esmtp-param *(SP esmtp-param)
//   Rcpt-parameters  = esmtp-param *(SP esmtp-param)
//   esmtp-param    = esmtp-keyword ["=" esmtp-value]
//   esmtp-keyword  = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
//   esmtp-value    = 1*(%d33-60 / %d62-126)
//   Domain         = sub-domain *("." sub-domain)
//   sub-domain     = Let-dig [Ldh-str] / U-label
//   Mailbox        = Local-part "@" ( Domain / address-literal )
//   Local-part     = Dot-string / Quoted-string
//   Dot-string     = Atom *("."  Atom)
//   Atom           = 1*atext
//   Quoted-string  = DQUOTE *QcontentSMTP DQUOTE
//   QcontentSMTP   = qtextSMTP / quoted-pairSMTP
//   quoted-pairSMTP  = %d92 %d32-126
//   qtextSMTP      = %d32-33 / %d35-91 / %d93-126 / UTF8-non-ascii
//   address-literal  = "[" ( IPv4-address-literal / IPv6-address-literal /
//                      General-address-literal ) "]"
//   rcpt = "RCPT TO:" ( "<Postmaster@" Domain ">" / "<Postmaster>" /
//          Forward-path ) [SP Rcpt-parameters] CRLF
