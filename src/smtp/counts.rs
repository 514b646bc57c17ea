//! The commands of one connection, counted by verb for its disconnect log
//! line, Postfix style: `ehlo=1 mail=1 rcpt=1/2 data=1 quit=1 commands=5/6`
//! (`/N` is the number of that verb's commands, when some were refused).
//!
//! Fixed-size counters: counting costs no allocation, and the summary is
//! written straight into the log line by its `Display`.

use std::fmt;

/// The verbs counted, in the order the summary lists them; `unknown` is any
/// other word.
const VERBS: [&str; 15] = [
    "helo", "ehlo", "starttls", "auth", "mail", "rcpt", "data", "bdat", "rset", "noop", "vrfy",
    "expn", "help", "quit", "unknown",
];

/// The index of `unknown` in [`VERBS`].
const UNKNOWN: usize = VERBS.len() - 1;

/// A command's verb, as an index into the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verb(usize);

impl Verb {
    /// The verb of a command line: its first word, case-insensitive.
    pub fn of(line: &[u8]) -> Verb {
        let end = line
            .iter()
            .position(|&b| b == b' ' || b == b'\r' || b == b'\n')
            .unwrap_or(line.len());
        let word = &line[..end];
        let index = VERBS[..UNKNOWN]
            .iter()
            .position(|verb| word.eq_ignore_ascii_case(verb.as_bytes()))
            .unwrap_or(UNKNOWN);
        Verb(index)
    }

    /// The verb, lower case (`unknown` for any other word).
    pub fn name(self) -> &'static str {
        VERBS[self.0]
    }

    /// DATA or BDAT, whichever carried a message.
    pub fn message(chunking: bool) -> Verb {
        Verb::of(if chunking { b"bdat" } else { b"data" })
    }
}

/// How many commands of each verb a connection sent, and how many were
/// accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandCounts {
    total: [u32; VERBS.len()],
    accepted: [u32; VERBS.len()],
}

impl CommandCounts {
    /// A command of `verb` was answered; `accepted` unless refused.
    pub fn count(&mut self, verb: Verb, accepted: bool) {
        self.total[verb.0] = self.total[verb.0].saturating_add(1);
        if accepted {
            self.accepted[verb.0] = self.accepted[verb.0].saturating_add(1);
        }
    }

    /// A command counted as accepted turned out refused (a DATA whose
    /// message was refused after the 354).
    pub fn refused_later(&mut self, verb: Verb) {
        self.accepted[verb.0] = self.accepted[verb.0].saturating_sub(1);
    }
}

impl fmt::Display for CommandCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut total = 0u32;
        let mut accepted = 0u32;
        for (index, verb) in VERBS.iter().enumerate() {
            let (all, good) = (self.total[index], self.accepted[index]);
            if all == 0 {
                continue;
            }
            total = total.saturating_add(all);
            accepted = accepted.saturating_add(good);
            if good == all {
                write!(f, "{verb}={all} ")?;
            } else {
                write!(f, "{verb}={good}/{all} ")?;
            }
        }
        if accepted == total {
            write!(f, "commands={total}")
        } else {
            write!(f, "commands={accepted}/{total}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_read_case_insensitively() {
        assert_eq!(Verb::of(b"EHLO client.test"), Verb::of(b"ehlo"));
        assert_eq!(Verb::of(b"MaIl FROM:<a@b>"), Verb::of(b"mail"));
        assert_eq!(Verb::of(b"XYZZY"), Verb(UNKNOWN));
        assert_eq!(Verb::of(b""), Verb(UNKNOWN));
        assert_eq!(Verb::message(false), Verb::of(b"DATA"));
        assert_eq!(Verb::message(true), Verb::of(b"BDAT 5 LAST"));
    }

    #[test]
    fn summary_lists_only_the_verbs_used_with_failures() {
        let mut counts = CommandCounts::default();
        assert_eq!(counts.to_string(), "commands=0");
        counts.count(Verb::of(b"EHLO x"), true);
        counts.count(Verb::of(b"MAIL FROM:<>"), true);
        counts.count(Verb::of(b"RCPT TO:<a@b>"), true);
        counts.count(Verb::of(b"RCPT TO:<bad"), false);
        counts.count(Verb::of(b"DATA"), true);
        counts.count(Verb::of(b"QUIT"), true);
        assert_eq!(
            counts.to_string(),
            "ehlo=1 mail=1 rcpt=1/2 data=1 quit=1 commands=5/6"
        );
        counts.refused_later(Verb::of(b"DATA"));
        assert!(counts.to_string().contains("data=0/1"), "{counts}");
    }
}
