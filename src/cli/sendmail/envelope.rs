//! The envelope of a local submission: the sender and the recipients as
//! they go into `MAIL FROM:<…>` and `RCPT TO:<…>`.
//!
//! Recipient arguments may hold several comma-separated addresses and the
//! `Name <addr>` form; an address without `@` gets `@<hostname>` appended
//! (Postfix appends `$myorigin` the same way). Duplicates are submitted once.
//! Nothing here does I/O.

use std::collections::HashSet;

use super::SendmailError;

/// The `-f` value as an address: `<>` and `''` are the null sender, angle
/// brackets are removed.
pub fn sender_address(given: &str) -> String {
    let trimmed = given.trim();
    let inner = match (trimmed.find('<'), trimmed.rfind('>')) {
        (Some(open), Some(close)) if open < close => &trimmed[open + 1..close],
        _ => trimmed,
    };
    inner.trim().to_string()
}

/// Appends `@hostname` to an address without a domain; the null sender stays.
pub fn qualify(address: &str, hostname: &str) -> String {
    if address.is_empty() || address.contains('@') {
        address.to_string()
    } else {
        format!("{address}@{hostname}")
    }
}

/// Refuses what cannot go in `MAIL FROM:<…>` / `RCPT TO:<…>` as it is:
/// controls (no command injection through an argument), spaces, brackets.
/// The error is a usage error.
pub fn check_address(address: &str) -> Result<(), SendmailError> {
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

/// The envelope recipients in the order first given, each once (compared
/// without regard to case).
#[derive(Debug, Default)]
pub struct Recipients {
    list: Vec<String>,
    seen: HashSet<String>,
}

impl Recipients {
    /// Adds a checked address (see [`check_address`]) unless already there.
    pub fn add(&mut self, address: String) -> Result<(), SendmailError> {
        check_address(&address)?;
        if self.seen.insert(address.to_lowercase()) {
            self.list.push(address);
        }
        Ok(())
    }

    /// True when no recipient was added.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The recipients in order.
    pub fn as_slice(&self) -> &[String] {
        &self.list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|item| item.to_string()).collect()
    }

    #[test]
    fn recipient_arguments_split_on_commas_and_angle_brackets() {
        assert_eq!(
            split_recipient_argument("a@x.test, Bob <b@y.test>,,c"),
            strings(&["a@x.test", "b@y.test", "c"])
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
    fn sender_brackets_are_removed_and_empty_is_the_null_sender() {
        assert_eq!(sender_address(" <me@x.test> "), "me@x.test");
        assert_eq!(sender_address("<>"), "");
        assert_eq!(sender_address(""), "");
        assert_eq!(sender_address("Me <me@x.test>"), "me@x.test");
    }

    #[test]
    fn unqualified_addresses_get_the_hostname_and_the_null_sender_stays() {
        assert_eq!(qualify("root", "h.test"), "root@h.test");
        assert_eq!(qualify("a@x.test", "h.test"), "a@x.test");
        assert_eq!(qualify("", "h.test"), "");
    }

    #[test]
    fn recipients_are_kept_once_in_order_ignoring_case() {
        let mut recipients = Recipients::default();
        for address in ["b@x.test", "a@x.test", "B@X.test"] {
            recipients.add(address.to_string()).unwrap();
        }
        assert_eq!(recipients.as_slice(), strings(&["b@x.test", "a@x.test"]));
        assert!(recipients.add("bad address".into()).unwrap_err().is_usage());
    }
}
