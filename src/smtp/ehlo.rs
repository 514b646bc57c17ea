//! What a server offers in its EHLO reply (RFC 5321 §4.1.1.1): the one
//! reader of EHLO keywords, for delivery and `sluice sendmail` alike.

use super::reply::Reply;

/// The service extensions a server announced. `Default` is what a server
/// that only answered HELO offers: nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// RFC 2920.
    pub pipelining: bool,
    /// RFC 1870: `Some(0)` means SIZE without a fixed limit.
    pub size: Option<u64>,
    /// RFC 6152.
    pub eight_bit_mime: bool,
    /// RFC 6531.
    pub smtputf8: bool,
    /// RFC 3207.
    pub starttls: bool,
    /// RFC 2034.
    pub enhanced_status_codes: bool,
    /// RFC 4954: mechanisms offered, upper case.
    pub auth: Vec<String>,
    /// RFC 3461: DSN parameters (RET, ENVID, NOTIFY, ORCPT) may be sent.
    pub dsn: bool,
    /// RFC 3030: BDAT may replace DATA.
    pub chunking: bool,
    /// RFC 8689: the REQUIRETLS MAIL parameter may be sent.
    pub requiretls: bool,
    /// Not a keyword: the session was opened with LHLO (RFC 2033), so the
    /// end of data gets one reply per accepted recipient.
    pub lmtp: bool,
}

impl Capabilities {
    /// Reads the keywords of an EHLO reply (every line but the first, which
    /// is the server's greeting text). Keywords are case-insensitive; a
    /// SIZE whose value is not a number means no declared limit.
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut capabilities = Capabilities::default();
        for line in reply.lines().iter().skip(1) {
            let mut words = line.split_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => capabilities.pipelining = true,
                "SIZE" => {
                    capabilities.size = Some(
                        words
                            .next()
                            .and_then(|limit| limit.parse().ok())
                            .unwrap_or(0),
                    )
                }
                "8BITMIME" => capabilities.eight_bit_mime = true,
                "SMTPUTF8" => capabilities.smtputf8 = true,
                "STARTTLS" => capabilities.starttls = true,
                "ENHANCEDSTATUSCODES" => capabilities.enhanced_status_codes = true,
                "DSN" => capabilities.dsn = true,
                "CHUNKING" => capabilities.chunking = true,
                "REQUIRETLS" => capabilities.requiretls = true,
                "AUTH" => capabilities
                    .auth
                    .extend(words.map(|mechanism| mechanism.to_ascii_uppercase())),
                _ => {}
            }
        }
        capabilities
    }

    /// True when the server's SIZE limit is below `size` (RFC 1870 §4: a
    /// limit of 0 means none is declared).
    pub fn rejects_size(&self, size: u64) -> bool {
        matches!(self.size, Some(limit) if limit > 0 && size > limit)
    }

    /// True when AUTH offers `mechanism`.
    pub fn offers_auth(&self, mechanism: &str) -> bool {
        self.auth
            .iter()
            .any(|offered| offered.eq_ignore_ascii_case(mechanism))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::parse_reply;
    use proptest::prelude::*;

    fn parse_all(text: &str) -> Reply {
        parse_reply(text.as_bytes())
            .expect("valid reply")
            .expect("complete reply")
            .0
    }

    #[test]
    fn ehlo_capabilities_are_read() {
        let reply = parse_all(
            "250-mx.example Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n\
             250-STARTTLS\r\n250-auth plain login\r\n250-dsn\r\n250 SMTPUTF8\r\n",
        );
        let capabilities = Capabilities::from_ehlo(&reply);
        assert!(capabilities.dsn);
        assert!(capabilities.pipelining);
        assert_eq!(capabilities.size, Some(1000));
        assert!(capabilities.rejects_size(1001));
        assert!(!capabilities.rejects_size(1000));
        assert!(capabilities.eight_bit_mime && capabilities.smtputf8 && capabilities.starttls);
        assert!(capabilities.offers_auth("PLAIN") && capabilities.offers_auth("login"));
    }

    #[test]
    fn the_greeting_line_is_not_a_keyword() {
        let reply = parse_all("250 PIPELINING\r\n");
        assert_eq!(Capabilities::from_ehlo(&reply), Capabilities::default());
    }

    #[test]
    fn garbage_size_limits_mean_no_limit() {
        for size in [
            "SIZE garbage",
            "SIZE -5",
            "SIZE 1e9",
            "SIZE 99999999999999999999999",
        ] {
            let reply = parse_all(&format!("250-mx\r\n250 {size}\r\n"));
            let capabilities = Capabilities::from_ehlo(&reply);
            assert_eq!(capabilities.size, Some(0), "{size}");
            assert!(!capabilities.rejects_size(u64::MAX), "{size}");
        }
    }

    #[test]
    fn size_zero_means_no_limit() {
        let reply = parse_all("250-mx\r\n250 SIZE\r\n");
        let capabilities = Capabilities::from_ehlo(&reply);
        assert_eq!(capabilities.size, Some(0));
        assert!(!capabilities.rejects_size(u64::MAX));
    }

    proptest! {
        #[test]
        fn any_ehlo_reply_reads_without_panic(
            lines in proptest::collection::vec("[ -~]{0,40}", 1..12),
        ) {
            let mut wire = String::new();
            for (index, line) in lines.iter().enumerate() {
                let separator = if index + 1 == lines.len() { ' ' } else { '-' };
                wire.push_str(&format!("250{separator}{line}\r\n"));
            }
            let reply = parse_all(&wire);
            let _ = Capabilities::from_ehlo(&reply);
        }
    }
}
