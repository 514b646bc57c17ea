//! Inbound checks (`[verify]`) of mail from clients outside
//! `relay_networks` that did not authenticate: SPF (RFC 7208, with its
//! limit of 10 DNS-querying terms), every DKIM signature (RFC 6376) and
//! DMARC (RFC 7489, the organisational domain from the public suffix list),
//! by the mail-auth crate over the delivery resolver (one DNS cache).
//!
//! The verdicts become one `Authentication-Results` header field (RFC 8601)
//! at the top of the message; fields the client sent that claim our
//! hostname as their authserv-id are removed first (RFC 8601 §5), so a
//! forged verdict never reaches a reader downstream.
//!
//! All lookups of one message share one deadline (`dns.timeout`): a check
//! still waiting then is a `temperror`, so a slow DNS cannot stall the
//! session past its own timeouts. A temporary error never refuses mail; only
//! a DMARC `fail` under `p=reject` does, with `enforce_dmarc`.

use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, DkimOutput, DkimResult, DmarcResult, MessageAuthenticator, Parameters,
    SpfResult,
};
use tokio::time::Instant;

use crate::config::Config;

/// Checks inbound mail; built once, from the config and the shared resolver.
pub struct Verifier {
    authenticator: MessageAuthenticator,
    /// Our authserv-id.
    hostname: String,
    /// All the lookups of one message together.
    timeout: Duration,
    enforce_dmarc: bool,
}

/// What the checks found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The `Authentication-Results:` header field, CRLF-terminated.
    pub header: String,
    /// `(kind, result)` for each verdict: `spf`, each `dkim` signature (or
    /// one `none`), `dmarc`.
    pub results: Vec<(&'static str, &'static str)>,
    /// DMARC failed under `p=reject` and `enforce_dmarc` is set: refuse.
    pub reject: bool,
}

impl Verifier {
    /// A verifier when `[verify] enabled`, else `None`.
    pub fn new(config: &Config, resolver: TokioResolver) -> Option<Verifier> {
        if !config.verify.enabled {
            return None;
        }
        Some(Verifier {
            authenticator: MessageAuthenticator(resolver),
            hostname: config.hostname.clone(),
            timeout: config.dns.timeout,
            enforce_dmarc: config.verify.enforce_dmarc,
        })
    }

    /// Our hostname, the authserv-id of the header we add.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Checks `message` (as received) from `client`, which said `helo` and
    /// `MAIL FROM:<sender>` (empty for `<>`).
    pub async fn check(&self, message: &[u8], client: IpAddr, helo: &str, sender: &str) -> Verdict {
        let deadline = Instant::now() + self.timeout;
        let parsed = AuthenticatedMessage::parse(message);
        // RFC 7208 §2.4: a null sender is checked as postmaster@<HELO>.
        let spf_parameters = if sender.is_empty() {
            SpfParameters::verify_ehlo(client, helo, &self.hostname)
        } else {
            SpfParameters::verify_mail_from(client, helo, &self.hostname, sender)
        };
        let spf_check = tokio::time::timeout_at(
            deadline,
            self.authenticator
                .verify_spf(Parameters::new(spf_parameters)),
        );
        let dkim_check = async {
            match &parsed {
                Some(parsed) => {
                    tokio::time::timeout_at(
                        deadline,
                        self.authenticator.verify_dkim(Parameters::new(parsed)),
                    )
                    .await
                }
                None => Ok(Vec::new()),
            }
        };
        let (spf, dkim) = tokio::join!(spf_check, dkim_check);
        let spf = spf.ok();
        let dkim: Option<Vec<DkimOutput<'_>>> = dkim.ok();
        let mail_from_domain = match sender.rsplit_once('@') {
            Some((_, domain)) => domain,
            None => helo,
        };

        let mut header = format!("Authentication-Results: {}", self.hostname);
        let mut results = Vec::new();

        let spf_result = spf
            .as_ref()
            .map_or("temperror", |spf| spf_name(spf.result()));
        results.push(("spf", spf_result));
        header.push_str(&format!(";\r\n\tspf={spf_result} smtp.mailfrom="));
        if sender.is_empty() {
            header.push_str(&format!("postmaster@{}", pvalue(helo)));
        } else {
            header.push_str(&pvalue(sender));
        }

        match &dkim {
            None => {
                results.push(("dkim", "temperror"));
                header.push_str(";\r\n\tdkim=temperror");
            }
            Some(outputs) if outputs.is_empty() => {
                results.push(("dkim", "none"));
                header.push_str(";\r\n\tdkim=none");
            }
            Some(outputs) => {
                for output in outputs {
                    let result = dkim_name(output.result());
                    results.push(("dkim", result));
                    header.push_str(&format!(";\r\n\tdkim={result}"));
                    if let Some(signature) = output.signature() {
                        header.push_str(&format!(
                            " header.d={} header.s={}",
                            pvalue(&signature.d),
                            pvalue(&signature.s)
                        ));
                    }
                }
            }
        }

        let mut reject = false;
        let dmarc_result = match (&parsed, &spf, &dkim) {
            (Some(parsed), Some(spf), Some(dkim)) => {
                let check = self
                    .authenticator
                    .verify_dmarc(Parameters::new(DmarcParameters::new(
                        parsed,
                        dkim,
                        mail_from_domain,
                        spf,
                    )));
                match tokio::time::timeout_at(deadline, check).await {
                    Ok(dmarc) => {
                        let result = dmarc_name(&dmarc.result());
                        let from_domain = dmarc.domain().to_string();
                        header.push_str(&format!(";\r\n\tdmarc={result}"));
                        if !from_domain.is_empty() {
                            header.push_str(&format!(" header.from={}", pvalue(&from_domain)));
                        }
                        let policy = dmarc.policy();
                        if dmarc.dmarc_record().is_some() {
                            header.push_str(match policy {
                                Policy::Reject => " policy.dmarc=reject",
                                Policy::Quarantine => " policy.dmarc=quarantine",
                                Policy::None | Policy::Unspecified => " policy.dmarc=none",
                            });
                        }
                        reject = self.enforce_dmarc
                            && matches!(dmarc.result(), DmarcResult::Fail(_))
                            && policy == Policy::Reject;
                        result
                    }
                    Err(_) => {
                        header.push_str(";\r\n\tdmarc=temperror");
                        "temperror"
                    }
                }
            }
            (None, _, _) => {
                header.push_str(";\r\n\tdmarc=permerror");
                "permerror"
            }
            _ => {
                // SPF or DKIM ran out of time: DMARC cannot be evaluated.
                header.push_str(";\r\n\tdmarc=temperror");
                "temperror"
            }
        };
        results.push(("dmarc", dmarc_result));
        header.push_str("\r\n");
        Verdict {
            header,
            results,
            reject,
        }
    }
}

fn spf_name(result: SpfResult) -> &'static str {
    match result {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

fn dkim_name(result: &DkimResult) -> &'static str {
    match result {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

fn dmarc_name(result: &DmarcResult) -> &'static str {
    match result {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}

/// A property value (RFC 8601 §2.2: a `value` is a token or a quoted
/// string): quoted unless it is made of token characters and '@' and '.'.
fn pvalue(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._@+=!#$%&'*/?^`{|}~".contains(&b));
    if plain {
        value.to_string()
    } else {
        let escaped: String = value
            .chars()
            .filter(|c| !c.is_control())
            .flat_map(|c| match c {
                '"' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        format!("\"{escaped}\"")
    }
}

/// The header section of `message` without the `Authentication-Results`
/// fields whose authserv-id is `hostname` (RFC 8601 §5): the length of the
/// original header section and its replacement, or `None` when there is
/// nothing to remove. A lone CR or LF counts as a line end, as it does for
/// Postfix, Dovecot and most mail readers, so a forged field hidden behind
/// one is found too.
pub fn strip_forged(message: &[u8], hostname: &str) -> Option<(usize, Vec<u8>)> {
    // The header section ends with the first empty line (kept in the body).
    let mut end = message.len();
    let mut at = 0;
    while let Some((line_end, length)) = next_line_end(message, at) {
        at = line_end + length;
        if line_end == 0 || next_line_end(message, at).is_some_and(|(next, _)| next == at) {
            end = if line_end == 0 { 0 } else { at };
            break;
        }
    }
    let section = &message[..end];
    let mut kept = Vec::with_capacity(section.len());
    let mut removed = false;
    let mut start = 0;
    while start < section.len() {
        // A field runs to the line end not followed by a space or tab.
        let mut stop = start;
        loop {
            match next_line_end(section, stop) {
                Some((line_end, length)) => {
                    stop = line_end + length;
                    if !matches!(section.get(stop), Some(b' ' | b'\t')) {
                        break;
                    }
                }
                None => {
                    stop = section.len();
                    break;
                }
            }
        }
        let field = &section[start..stop];
        if claims(field, hostname) {
            removed = true;
        } else {
            kept.extend_from_slice(field);
        }
        start = stop;
    }
    removed.then_some((end, kept))
}

/// The next line end in `text` from `from`: where it starts and its length
/// (2 for CRLF, 1 for a lone CR or LF).
fn next_line_end(text: &[u8], from: usize) -> Option<(usize, usize)> {
    let at = from + memchr::memchr2(b'\r', b'\n', text.get(from..)?)?;
    let length = if text[at] == b'\r' && text.get(at + 1) == Some(&b'\n') {
        2
    } else {
        1
    };
    Some((at, length))
}

/// True when `field` is an `Authentication-Results` field whose authserv-id
/// (the first token of its value, comments aside) is `hostname`.
fn claims(field: &[u8], hostname: &str) -> bool {
    let Some(colon) = memchr::memchr(b':', field) else {
        return false;
    };
    if !field[..colon]
        .trim_ascii()
        .eq_ignore_ascii_case(b"Authentication-Results")
    {
        return false;
    }
    let value = String::from_utf8_lossy(&field[colon + 1..]);
    let mut depth = 0usize;
    let uncommented: String = value
        .chars()
        .filter(|&c| match c {
            '(' => {
                depth += 1;
                false
            }
            ')' => {
                depth = depth.saturating_sub(1);
                false
            }
            _ => depth == 0,
        })
        .collect();
    let id = uncommented
        .split(';')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_matches('"');
    id.eq_ignore_ascii_case(hostname.trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_results_claiming_our_hostname_are_removed_and_others_kept() {
        let message = b"Received: from x\r\n\
            Authentication-Results: MX.test; spf=pass\r\n\
            Authentication-Results: other.test;\r\n\tdkim=pass\r\n\
            authentication-results: (comment) mx.test\r\n\t; dmarc=pass\r\n\
            Subject: hi\r\n\r\nAuthentication-Results: mx.test; in the body\r\n";
        let (end, kept) = strip_forged(message, "mx.test").expect("something removed");
        assert_eq!(
            &message[end..end + 2],
            b"\r\n",
            "the section ends before the empty line"
        );
        assert_eq!(
            String::from_utf8(kept).unwrap(),
            "Received: from x\r\nAuthentication-Results: other.test;\r\n\tdkim=pass\r\nSubject: hi\r\n"
        );
        assert!(strip_forged(b"Subject: x\r\n\r\nbody", "mx.test").is_none());
    }

    #[test]
    fn forged_fields_behind_a_lone_cr_or_lf_are_removed_too() {
        for message in [
            &b"X-Foo: a\nAuthentication-Results: mx.test; dkim=pass\r\nSubject: hi\r\n\r\nbody"[..],
            b"X-Foo: a\rAuthentication-Results: mx.test; dkim=pass\r\nSubject: hi\r\n\r\nbody",
        ] {
            let (end, kept) = strip_forged(message, "mx.test").expect("the forged field is found");
            assert_eq!(&message[end..], b"\r\nbody");
            let kept = String::from_utf8(kept).unwrap();
            assert!(!kept.contains("Authentication-Results"), "{kept:?}");
            assert!(
                kept.starts_with("X-Foo: a") && kept.ends_with("Subject: hi\r\n"),
                "{kept:?}"
            );
        }
        let message = b"Subject: hi\n\nAuthentication-Results: mx.test; in the body\n";
        assert!(
            strip_forged(message, "mx.test").is_none(),
            "an LF LF ends the header"
        );
    }

    #[test]
    fn property_values_are_quoted_when_they_must_be() {
        assert_eq!(pvalue("alice@example.org"), "alice@example.org");
        assert_eq!(pvalue("a b\"c"), "\"a b\\\"c\"");
        assert_eq!(pvalue(""), "\"\"");
    }
}
