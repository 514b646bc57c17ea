//! The bounce classifier: which class a deferral or bounce belongs to,
//! from the enhanced status code (RFC 3463) and the reply text, after the
//! operator's `[[bounce_class]]` rules.

use regex::Regex;

use crate::config::BounceClassConfig;

/// The operator's rules, compiled once per configuration.
#[derive(Debug, Clone, Default)]
pub struct Classifier {
    rules: Vec<(Regex, String)>,
}

impl Classifier {
    /// Compiles `[[bounce_class]]` (checked at load: a pattern that does not
    /// compile here was refused there, and is skipped).
    pub fn new(rules: &[BounceClassConfig]) -> Classifier {
        Classifier {
            rules: rules
                .iter()
                .filter_map(|rule| {
                    Regex::new(&rule.pattern)
                        .ok()
                        .map(|regex| (regex, rule.class.clone()))
                })
                .collect(),
        }
    }

    /// The class of `reply` (a whole reply line, or a local reason).
    pub fn classify(&self, reply: &str) -> &str {
        for (regex, class) in &self.rules {
            if regex.is_match(reply) {
                return class;
            }
        }
        builtin(reply)
    }
}

/// The built-in rules: the enhanced code first (RFC 3463 §3), then words
/// that the large receivers use in their texts.
fn builtin(reply: &str) -> &'static str {
    let lower = reply.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|word| lower.contains(word));
    let enhanced = enhanced_code(reply);
    // Texts that say more than their code (a 550 5.7.1 that is a block list).
    if has(&[
        "spamhaus",
        "blocklist",
        "blacklist",
        "block list",
        "spam",
        "junk",
        "tss04",
    ]) {
        return "spam_block";
    }
    if has(&[
        "rate limit",
        "rate-limit",
        "too many",
        "throttl",
        "try again later",
        "4.7.28",
    ]) {
        return "rate_limited";
    }
    if let Some((class, subject, detail)) = enhanced {
        match (subject, detail) {
            // X.1.1 bad destination mailbox, X.1.2 bad system, X.1.3 syntax,
            // X.1.6 moved, X.1.10 null MX.
            (1, 1 | 3 | 6) => return "invalid_recipient",
            (1, 2 | 10) => return "dns",
            // X.2.2 mailbox full, X.2.1 disabled counts as invalid.
            (2, 2) => return "mailbox_full",
            (2, 1) => return "invalid_recipient",
            (2, 3) | (3, 4) => return "message_too_large",
            (4, 3) => return "dns",
            (4, 1 | 2 | 7) => return "connection",
            (4, 4) if class == 5 => return "dns",
            (4, 4) => return "connection",
            (7, 28) => return "rate_limited",
            (7, 1) if has(&["spam", "reputation", "listed"]) => return "spam_block",
            (7, 10 | 30) => return "tls",
            (7, 5) => return "tls",
            (7, 23..=27) => return "policy",
            (7, _) => return "policy",
            _ => {}
        }
    }
    if has(&[
        "user unknown",
        "no such user",
        "unknown user",
        "does not exist",
        "mailbox unavailable",
        "recipient rejected",
        "invalid recipient",
    ]) {
        return "invalid_recipient";
    }
    if has(&[
        "quota",
        "mailbox full",
        "over quota",
        "insufficient storage",
    ]) {
        return "mailbox_full";
    }
    if has(&["too large", "size limit", "message size"]) {
        return "message_too_large";
    }
    if has(&["tls", "certificate", "starttls", "handshake"]) {
        return "tls";
    }
    if has(&[
        "dns",
        "mx record",
        "no mx",
        "address record",
        "no address",
        "nxdomain",
        "resolve",
        "lookup",
    ]) {
        return "dns";
    }
    if has(&[
        "connect",
        "timed out",
        "timeout",
        "refused",
        "reset",
        "unreachable",
        "closed",
    ]) {
        return "connection";
    }
    if has(&["policy", "not allowed", "denied", "dmarc", "spf", "dkim"]) {
        return "policy";
    }
    "other"
}

/// The enhanced status code in `reply` (RFC 3463: class.subject.detail),
/// after an optional basic code.
fn enhanced_code(reply: &str) -> Option<(u8, u16, u16)> {
    reply.split_whitespace().take(3).find_map(|word| {
        let mut parts = word.split('.');
        let class = parts.next()?.parse::<u8>().ok()?;
        let subject = parts.next()?.parse::<u16>().ok()?;
        let detail = parts.next()?.parse::<u16>().ok()?;
        (parts.next().is_none() && matches!(class, 2 | 4 | 5)).then_some((class, subject, detail))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_classes_from_codes_and_texts() {
        let classifier = Classifier::default();
        let cases = [
            (
                "550 5.1.1 <x@example.net>: Recipient address rejected: User unknown",
                "invalid_recipient",
            ),
            ("552 5.2.2 mailbox full", "mailbox_full"),
            (
                "452 4.2.2 The email account that you tried to reach is over quota",
                "mailbox_full",
            ),
            ("421 4.7.28 rate limited", "rate_limited"),
            (
                "550 5.7.1 Service unavailable; client host blocked using Spamhaus",
                "spam_block",
            ),
            ("552 5.3.4 message too big", "message_too_large"),
            ("connect to 127.0.0.1:25: Connection refused", "connection"),
            (
                "550 5.7.26 unauthenticated mail is prohibited (DMARC)",
                "policy",
            ),
            ("no MX or address records for example.invalid", "dns"),
            ("TLS handshake failed: invalid certificate", "tls"),
            ("554 5.0.0 something odd", "other"),
        ];
        for (reply, class) in cases {
            assert_eq!(classifier.classify(reply), class, "{reply}");
        }
    }

    #[test]
    fn the_operators_rules_come_first() {
        let classifier = Classifier::new(&[BounceClassConfig {
            pattern: "(?i)mailbox is frozen".into(),
            class: "mailbox_full".into(),
        }]);
        assert_eq!(
            classifier.classify("550 5.1.1 mailbox is frozen"),
            "mailbox_full"
        );
        assert_eq!(
            classifier.classify("550 5.1.1 no such user"),
            "invalid_recipient"
        );
    }
}
