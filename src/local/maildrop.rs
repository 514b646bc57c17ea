//! The maildrop file: one message written by `sluice-maildrop` while the
//! server is down, taken in by [`super::intake`]. Its bytes come from any
//! local user, so [`parse`] trusts nothing (and has a fuzz target).
//!
//! ```text
//! SLUICE-MAILDROP 1\n
//! uid 1001\n
//! sender alice@host.example\n     (empty after "sender " for <>)
//! rcpt bob@example.org\n          (one line per recipient, at least one)
//! \n
//! the message, CRLF line endings, not dot-stuffed
//! ```

/// The first line of every maildrop file.
pub const MAGIC: &[u8] = b"SLUICE-MAILDROP 1\n";

/// The most recipients one file may name.
pub const MAX_RECIPIENTS: usize = 1000;

/// The longest envelope line, in bytes (RFC 5321 §4.5.3.1.3 paths are at
/// most 256 octets).
const MAX_LINE: usize = 512;

/// One parsed maildrop file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped<'a> {
    /// The submitting user, as the helper recorded it.
    pub uid: u32,
    /// The envelope sender; empty for the null sender.
    pub sender: &'a str,
    pub recipients: Vec<&'a str>,
    /// The message itself.
    pub message: &'a [u8],
}

/// Why a maildrop file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaildropError {
    #[error("not a maildrop file (no SLUICE-MAILDROP 1 line)")]
    Magic,
    #[error("larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the envelope ends before the empty line")]
    Truncated,
    #[error("bad envelope line {line}: {reason}")]
    Line { line: usize, reason: &'static str },
    #[error("no recipients")]
    NoRecipients,
    #[error("more than {MAX_RECIPIENTS} recipients")]
    TooManyRecipients,
}

/// Parses a whole maildrop file of at most `max_size` bytes.
pub fn parse(bytes: &[u8], max_size: usize) -> Result<Dropped<'_>, MaildropError> {
    if bytes.len() > max_size {
        return Err(MaildropError::TooLarge { limit: max_size });
    }
    let mut rest = bytes.strip_prefix(MAGIC).ok_or(MaildropError::Magic)?;
    let mut uid = None;
    let mut sender = None;
    let mut recipients = Vec::new();
    let mut number = 1;
    loop {
        number += 1;
        let end = memchr::memchr(b'\n', rest).ok_or(MaildropError::Truncated)?;
        let line = &rest[..end];
        rest = &rest[end + 1..];
        if line.is_empty() {
            break;
        }
        let bad = |reason| MaildropError::Line {
            line: number,
            reason,
        };
        if line.len() > MAX_LINE {
            return Err(bad("too long"));
        }
        let line = std::str::from_utf8(line).map_err(|_| bad("not UTF-8"))?;
        if line.chars().any(char::is_control) {
            return Err(bad("control character"));
        }
        let (key, value) = line.split_once(' ').ok_or(bad("no value"))?;
        let address_ok =
            |value: &str| !value.contains(|c: char| c.is_whitespace() || c == '<' || c == '>');
        match key {
            "uid" if uid.is_none() => {
                uid = Some(value.parse::<u32>().map_err(|_| bad("bad uid"))?);
            }
            "sender" if sender.is_none() => {
                if !address_ok(value) {
                    return Err(bad("bad sender address"));
                }
                sender = Some(value);
            }
            "rcpt" => {
                if value.is_empty() || !address_ok(value) || !value.contains('@') {
                    return Err(bad("bad recipient address"));
                }
                if recipients.len() == MAX_RECIPIENTS {
                    return Err(MaildropError::TooManyRecipients);
                }
                recipients.push(value);
            }
            _ => return Err(bad("unknown or repeated field")),
        }
    }
    if recipients.is_empty() {
        return Err(MaildropError::NoRecipients);
    }
    Ok(Dropped {
        uid: uid.ok_or(MaildropError::Line {
            line: 2,
            reason: "no uid",
        })?,
        sender: sender.ok_or(MaildropError::Line {
            line: 3,
            reason: "no sender",
        })?,
        recipients,
        message: rest,
    })
}

/// The envelope part of a maildrop file, up to and including the empty
/// line; the message follows it.
pub fn envelope(uid: u32, sender: &str, recipients: &[String]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(format!("uid {uid}\nsender {sender}\n").as_bytes());
    for recipient in recipients {
        out.extend_from_slice(format!("rcpt {recipient}\n").as_bytes());
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_envelope_parses_back() {
        let mut file = envelope(1001, "a@b.test", &["c@d.test".into(), "e@f.test".into()]);
        file.extend_from_slice(b"Subject: x\r\n\r\nbody\r\n");
        let dropped = parse(&file, 1 << 20).unwrap();
        assert_eq!(dropped.uid, 1001);
        assert_eq!(dropped.sender, "a@b.test");
        assert_eq!(dropped.recipients, ["c@d.test", "e@f.test"]);
        assert_eq!(dropped.message, b"Subject: x\r\n\r\nbody\r\n");
        let null = envelope(7, "", &["c@d.test".into()]);
        assert_eq!(parse(&null, 1 << 20).unwrap().sender, "");
    }

    #[test]
    fn malformed_files_are_refused() {
        assert_eq!(parse(b"hello", 100), Err(MaildropError::Magic));
        assert_eq!(
            parse(b"SLUICE-MAILDROP 1\nuid 1\n", 100),
            Err(MaildropError::Truncated)
        );
        assert_eq!(
            parse(b"SLUICE-MAILDROP 1\nuid 1\nsender a@b\n\n", 100),
            Err(MaildropError::NoRecipients)
        );
        assert!(matches!(
            parse(b"SLUICE-MAILDROP 1\nuid x\n\n", 100),
            Err(MaildropError::Line { line: 2, .. })
        ));
        assert!(matches!(
            parse(b"SLUICE-MAILDROP 1\nuid 1\nuid 2\n\n", 100),
            Err(MaildropError::Line { line: 3, .. })
        ));
        assert!(matches!(
            parse(b"SLUICE-MAILDROP 1\nuid 1\nsender a@b\nrcpt <x@y>\n\n", 100),
            Err(MaildropError::Line { line: 4, .. })
        ));
        let file = envelope(1, "a@b", &["c@d".into()]);
        assert_eq!(
            parse(&file, file.len() - 1),
            Err(MaildropError::TooLarge {
                limit: file.len() - 1
            })
        );
    }
}
