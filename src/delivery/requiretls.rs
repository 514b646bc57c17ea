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

#[cfg(test)]
mod tests {
    use super::*;

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
