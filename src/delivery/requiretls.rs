//! REQUIRETLS (RFC 8689) on the way out: which sessions may carry a
//! message whose sender asked for it, as pure rules over what the attempt
//! knows (the next hop, the host's TLS policy, the DNSSEC status of the MX
//! records, and the session's TLS and EHLO).
//!
//! RFC 8689 §4.2.1: the next hop's name must be authenticated (DNSSEC-
//! validated MX records, or an MTA-STS policy in enforce mode, or DANE),
//! its certificate must be valid for that name (or match its TLSA
//! records), and it must offer REQUIRETLS, which goes on with MAIL.
//! A route or a smarthost is the operator's own name, not one learned from
//! DNS: a verified certificate for it is enough. Anything less, and the
//! message is not sent: it fails at once with 5.7.30 (RFC 8689 §5), since
//! waiting would not make the hop authenticated.
//!
//! RFC 8689 §5: the other way round, a `TLS-Required: No` header field on
//! a message without the REQUIRETLS parameter asks that TLS policies
//! (DANE, MTA-STS, `required`) not stop it: it goes as opportunistic mail.
//! With the parameter, the header field is ignored.

use crate::smtp::reply::EnhancedCode;

use super::route::NextHopKind;
use super::secure::HostPolicy;
use super::tls::TlsMode;

/// RFC 8689 §5: "REQUIRETLS support required".
pub const STATUS: EnhancedCode = EnhancedCode::new(5, 7, 30);

/// How a REQUIRETLS message may go to one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRule {
    /// Over TLS in this mode (never opportunistic: the certificate is
    /// always checked).
    Tls(TlsMode),
    /// Not to this host: the reason, for the bounce.
    Refused(String),
}

/// The TLS mode a REQUIRETLS message uses toward `host`, given the mode
/// the attempt chose for ordinary mail.
pub fn host_rule(
    kind: NextHopKind,
    policy: &HostPolicy,
    mode: TlsMode,
    mx_secure: bool,
    host: &str,
) -> HostRule {
    let refused = |why: &str| {
        HostRule::Refused(format!(
            "REQUIRETLS: no authenticated TLS to {host}: {why} (RFC 8689 4.2)"
        ))
    };
    match policy {
        HostPolicy::Dane(_) | HostPolicy::MtaStsEnforce => return HostRule::Tls(mode),
        HostPolicy::Refused { reason, .. } => return refused(reason),
        HostPolicy::MtaStsTesting | HostPolicy::Static => {}
    }
    let name_authenticated = match kind {
        NextHopKind::Smarthost | NextHopKind::Route => true,
        NextHopKind::Mx | NextHopKind::ImplicitMx => mx_secure,
    };
    if !name_authenticated {
        return refused("its MX records are not DNSSEC-validated and no MTA-STS policy enforces");
    }
    match mode {
        TlsMode::Disabled => refused("TLS is disabled for it"),
        // The certificate must be verified for the name.
        TlsMode::Opportunistic | TlsMode::Required => HostRule::Tls(TlsMode::Required),
        TlsMode::Implicit | TlsMode::Dane => HostRule::Tls(mode),
    }
}

/// Whether an open session may carry the message: TLS is up (under the
/// mode [`host_rule`] chose) and the server offers REQUIRETLS. `Err`
/// gives the reason for the bounce.
pub fn session_rule(tls: bool, offers_requiretls: bool, host: &str) -> Result<(), String> {
    if !tls {
        return Err(format!(
            "REQUIRETLS: {host} did not negotiate TLS (RFC 8689 4.2)"
        ));
    }
    if !offers_requiretls {
        return Err(format!(
            "REQUIRETLS: {host} does not offer REQUIRETLS (RFC 8689 4.2.1)"
        ));
    }
    Ok(())
}

/// True when `headers` (a header section) has a `TLS-Required: No`
/// field (names and the value case-insensitive, RFC 8689 §5; folded
/// white space around the value allowed).
pub fn tls_required_no(headers: &[u8]) -> bool {
    let text = String::from_utf8_lossy(headers);
    let mut fields: Vec<String> = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            break;
        }
        match fields.last_mut() {
            Some(field) if line.starts_with([' ', '\t']) => field.push_str(line),
            _ => fields.push(line.to_string()),
        }
    }
    fields.iter().any(|field| {
        field.split_once(':').is_some_and(|(name, value)| {
            name.trim_end().eq_ignore_ascii_case("TLS-Required")
                && value.trim().eq_ignore_ascii_case("No")
        })
    })
}

/// Reads the queued message's header section and looks for
/// `TLS-Required: No` (a body file on the blocking pool). A header that
/// cannot be read lifts nothing.
pub async fn header_says_no(queue: &sluice_queue::Queue, id: &sluice_queue::QueueId) -> bool {
    let Ok(reader) = queue.open_body(id) else {
        return false;
    };
    let check = |reader| {
        super::dsn::read_header_section(reader, 1024 * 1024)
            .is_ok_and(|headers| tls_required_no(&headers))
    };
    if !reader.is_file() {
        return check(reader);
    }
    tokio::task::spawn_blocking(move || check(reader))
        .await
        .unwrap_or(false)
}

/// True when the policy for a host would make TLS mandatory for a
/// message: what `TLS-Required: No` lifts.
pub fn is_mandatory(policy: &HostPolicy, mode: TlsMode) -> bool {
    match policy {
        HostPolicy::Dane(_) | HostPolicy::MtaStsEnforce | HostPolicy::Refused { .. } => true,
        HostPolicy::MtaStsTesting | HostPolicy::Static => {
            matches!(mode, TlsMode::Required | TlsMode::Dane)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_required_no_field() {
        assert!(tls_required_no(
            b"Subject: x\r\nTLS-Required: No\r\n\r\nbody"
        ));
        assert!(tls_required_no(b"tls-required :\r\n  no \r\n\r\n"));
        assert!(!tls_required_no(b"TLS-Required: Yes\r\n\r\n"));
        assert!(!tls_required_no(b"X-TLS-Required: No\r\n\r\n"));
        assert!(!tls_required_no(b"Subject: x\r\n\r\nTLS-Required: No\r\n"));
        assert!(!tls_required_no(b"Subject: TLS-Required: No\r\n\r\n"));
    }

    #[test]
    fn only_authenticated_names_with_checked_certificates_qualify() {
        use NextHopKind::*;
        let rule = |kind, policy: &HostPolicy, mode, secure| {
            host_rule(kind, policy, mode, secure, "mx.test")
        };
        assert_eq!(
            rule(Mx, &HostPolicy::MtaStsEnforce, TlsMode::Required, false),
            HostRule::Tls(TlsMode::Required)
        );
        assert_eq!(
            rule(Mx, &HostPolicy::Dane(Vec::new()), TlsMode::Dane, true),
            HostRule::Tls(TlsMode::Dane)
        );
        assert_eq!(
            rule(Mx, &HostPolicy::Static, TlsMode::Opportunistic, true),
            HostRule::Tls(TlsMode::Required)
        );
        assert!(matches!(
            rule(Mx, &HostPolicy::Static, TlsMode::Opportunistic, false),
            HostRule::Refused(_)
        ));
        assert!(matches!(
            rule(
                ImplicitMx,
                &HostPolicy::MtaStsTesting,
                TlsMode::Required,
                false
            ),
            HostRule::Refused(_)
        ));
        assert_eq!(
            rule(Route, &HostPolicy::Static, TlsMode::Opportunistic, false),
            HostRule::Tls(TlsMode::Required)
        );
        assert!(matches!(
            rule(Route, &HostPolicy::Static, TlsMode::Disabled, false),
            HostRule::Refused(_)
        ));
        let refused = HostPolicy::Refused {
            policy: "mta-sts",
            reason: "not in the policy".into(),
        };
        assert!(matches!(
            rule(Mx, &refused, TlsMode::Required, true),
            HostRule::Refused(_)
        ));
    }

    #[test]
    fn the_session_needs_tls_and_the_extension() {
        assert!(session_rule(true, true, "h").is_ok());
        assert!(session_rule(false, true, "h").unwrap_err().contains("TLS"));
        assert!(
            session_rule(true, false, "h")
                .unwrap_err()
                .contains("does not offer")
        );
    }
}
