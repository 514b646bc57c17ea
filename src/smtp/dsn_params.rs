//! The DSN extension's parameters (RFC 3461): `RET` and `ENVID` on MAIL,
//! `NOTIFY` and `ORCPT` on RCPT, and the xtext encoding (§4) their values
//! travel in. Pure: parsing for the inbound session, formatting for the
//! outbound client. Every malformed value is a [`DsnParamError`], which the
//! session answers `501 5.5.4`.
//!
//! The choices made, with their RFC:
//! - RFC 3461 §4: xtext is `xchar` (`!`..`~` except `+` and `=`) or `+`
//!   and two *upper-case* hex digits; anything else (lower-case hex, a
//!   lone `+`, a space, a control, a raw `=`) is malformed.
//! - §4.4: ENVID decodes to at most 100 printable US-ASCII characters.
//! - §4.2: ORCPT is `addr-type ";" xtext`, at most 500 characters
//!   encoded; the type is an atom, kept as given (`rfc822`, RFC 6533's
//!   `utf-8`, ...). Its address decodes to printable characters. Only the
//!   `utf-8` type (RFC 6533 §3) may carry UTF-8, raw (as SMTPUTF8 clients
//!   send it) or as `\x{HEX}`; it is relayed in `\x{HEX}` form.
//! - §4.1: NOTIFY is `NEVER` alone, or a comma list of `SUCCESS`,
//!   `FAILURE` and `DELAY`, each at most once; keywords in any case.
//! - §4.3: RET is `FULL` or `HDRS`, any case.
//! - Decoded values are stored; they are xtext-encoded again when relayed
//!   (`+` and `=` always, and every byte outside `!`..`~`), a `utf-8`
//!   ORCPT as `utf-8-addr-xtext`.

use sluice_queue::{NotifyOn, OriginalRecipient, Ret};

/// RFC 3461 §4.4: the longest ENVID, decoded.
pub const MAX_ENVID: usize = 100;
/// RFC 3461 §4.2: the longest ORCPT value, as sent.
pub const MAX_ORCPT: usize = 500;

/// Why a DSN parameter value is malformed (answered `501 5.5.4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.reason())]
pub enum DsnParamError {
    /// RET other than FULL or HDRS.
    Ret,
    /// ENVID not xtext, empty, too long, or not printable US-ASCII.
    Envid,
    /// NOTIFY with an unknown, repeated or empty keyword, or NEVER combined.
    Notify,
    /// ORCPT without `type;`, with a bad type, or a malformed address.
    Orcpt,
}

impl DsnParamError {
    /// The reply text's reason, for `CommandError::Syntax`.
    pub fn reason(self) -> &'static str {
        match self {
            DsnParamError::Ret => "RET must be FULL or HDRS",
            DsnParamError::Envid => "malformed ENVID",
            DsnParamError::Notify => "NOTIFY must be NEVER or a list of SUCCESS, FAILURE and DELAY",
            DsnParamError::Orcpt => "malformed ORCPT",
        }
    }
}

/// Parses the value of `RET=`.
pub fn parse_ret(value: &str) -> Result<Ret, DsnParamError> {
    if value.eq_ignore_ascii_case("FULL") {
        Ok(Ret::Full)
    } else if value.eq_ignore_ascii_case("HDRS") {
        Ok(Ret::Hdrs)
    } else {
        Err(DsnParamError::Ret)
    }
}

/// Parses the value of `ENVID=` into the decoded envelope ID.
pub fn parse_envid(value: &str) -> Result<String, DsnParamError> {
    let decoded = decode_xtext(value).ok_or(DsnParamError::Envid)?;
    if decoded.is_empty()
        || decoded.len() > MAX_ENVID
        || !decoded.iter().all(|&b| (0x20..0x7f).contains(&b))
    {
        return Err(DsnParamError::Envid);
    }
    Ok(String::from_utf8(decoded).expect("printable ASCII is UTF-8"))
}

/// Parses the value of `NOTIFY=`.
pub fn parse_notify(value: &str) -> Result<NotifyOn, DsnParamError> {
    if value.eq_ignore_ascii_case("NEVER") {
        return Ok(NotifyOn::NEVER);
    }
    let mut notify = NotifyOn::NEVER;
    for keyword in value.split(',') {
        let flag = if keyword.eq_ignore_ascii_case("SUCCESS") {
            &mut notify.success
        } else if keyword.eq_ignore_ascii_case("FAILURE") {
            &mut notify.failure
        } else if keyword.eq_ignore_ascii_case("DELAY") {
            &mut notify.delay
        } else {
            // NEVER among others, an empty item, or an unknown word.
            return Err(DsnParamError::Notify);
        };
        if *flag {
            return Err(DsnParamError::Notify);
        }
        *flag = true;
    }
    Ok(notify)
}

/// Parses the value of `ORCPT=` (`addr-type;xtext`).
pub fn parse_orcpt(value: &str) -> Result<OriginalRecipient, DsnParamError> {
    if value.len() > MAX_ORCPT {
        return Err(DsnParamError::Orcpt);
    }
    let (address_type, encoded) = value.split_once(';').ok_or(DsnParamError::Orcpt)?;
    if address_type.is_empty() || !address_type.bytes().all(is_atext) {
        return Err(DsnParamError::Orcpt);
    }
    let utf8_type = address_type.eq_ignore_ascii_case("utf-8");
    let decoded = if utf8_type {
        decode_unitext(encoded)
    } else {
        decode_xtext(encoded)
    }
    .ok_or(DsnParamError::Orcpt)?;
    let address = String::from_utf8(decoded).map_err(|_| DsnParamError::Orcpt)?;
    if address.is_empty() || address.chars().any(|c| c.is_control()) {
        return Err(DsnParamError::Orcpt);
    }
    Ok(OriginalRecipient {
        address_type: address_type.to_string(),
        address,
    })
}

/// RFC 3461 §4: decodes xtext; `None` when it is not xtext.
pub fn decode_xtext(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => {
                let high = hex_digit(*bytes.get(index + 1)?)?;
                let low = hex_digit(*bytes.get(index + 2)?)?;
                decoded.push(high << 4 | low);
                index += 3;
            }
            byte if is_xchar(byte) => {
                decoded.push(byte);
                index += 1;
            }
            _ => return None,
        }
    }
    Some(decoded)
}

/// RFC 6533 §3: the value of a `utf-8` ORCPT: `utf-8-addr-xtext`
/// (`\x{HEX}` for what is not a QCHAR) or `utf-8-addr-unitext` (raw UTF-8,
/// as SMTPUTF8 clients send it). `+XX` is read as in xtext too, as some
/// clients encode that way.
fn decode_unitext(text: &str) -> Option<Vec<u8>> {
    let mut decoded = Vec::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("\\x{") {
            let end = after.find('}')?;
            let hex = &after[..end];
            if !(1..=6).contains(&hex.len()) || !hex.bytes().all(|b| hex_digit(b).is_some()) {
                return None;
            }
            let c = char::from_u32(u32::from_str_radix(hex, 16).ok()?)?;
            decoded.extend_from_slice(c.encode_utf8(&mut [0u8; 4]).as_bytes());
            rest = &after[end + 1..];
            continue;
        }
        let plain = rest
            .find(|c: char| !c.is_ascii() || c == '\\')
            .unwrap_or(rest.len());
        if plain == 0 {
            let c = rest.chars().next()?;
            if c == '\\' {
                // A backslash not starting \x{...}.
                return None;
            }
            decoded.extend_from_slice(c.encode_utf8(&mut [0u8; 4]).as_bytes());
            rest = &rest[c.len_utf8()..];
            continue;
        }
        decoded.extend(decode_xtext(&rest[..plain])?);
        rest = &rest[plain..];
    }
    Some(decoded)
}

/// RFC 6533 §3 `utf-8-addr-xtext`: QCHARs as they are, every other
/// character as `\x{HEX}`.
pub fn encode_utf8_addr_xtext(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for c in text.chars() {
        let qchar = c.is_ascii() && is_xchar(c as u8) && c != '\\';
        if qchar {
            encoded.push(c);
        } else {
            encoded.push_str(&format!("\\x{{{:X}}}", u32::from(c)));
        }
    }
    encoded
}

/// RFC 3461 §4: encodes bytes as xtext: `+`, `=` and everything outside
/// `!`..`~` as `+XX`.
pub fn encode_xtext(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for &byte in bytes {
        if is_xchar(byte) {
            text.push(byte as char);
        } else {
            text.push('+');
            text.push(HEX[usize::from(byte >> 4)] as char);
            text.push(HEX[usize::from(byte & 0xf)] as char);
        }
    }
    text
}

/// The RCPT parameters that carry NOTIFY and ORCPT on to a next hop that
/// offers DSN: ` NOTIFY=... ORCPT=type;xtext` (with the leading space), or
/// nothing.
pub fn rcpt_parameters(notify: Option<NotifyOn>, orcpt: Option<&OriginalRecipient>) -> String {
    let mut text = String::new();
    if let Some(notify) = notify {
        text.push_str(" NOTIFY=");
        text.push_str(&notify.keywords());
    }
    if let Some(orcpt) = orcpt {
        text.push_str(" ORCPT=");
        text.push_str(&orcpt.address_type);
        text.push(';');
        if orcpt.address_type.eq_ignore_ascii_case("utf-8") {
            text.push_str(&encode_utf8_addr_xtext(&orcpt.address));
        } else {
            text.push_str(&encode_xtext(orcpt.address.as_bytes()));
        }
    }
    text
}

/// The MAIL parameters that carry RET and ENVID on: ` RET=... ENVID=...`,
/// or nothing.
pub fn mail_parameters(ret: Option<Ret>, envid: Option<&str>) -> String {
    let mut text = String::new();
    if let Some(ret) = ret {
        text.push_str(" RET=");
        text.push_str(ret.keyword());
    }
    if let Some(envid) = envid {
        text.push_str(" ENVID=");
        text.push_str(&encode_xtext(envid.as_bytes()));
    }
    text
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// RFC 3461 §4 `xchar`: `!`..`~` except `+` and `=`.
fn is_xchar(byte: u8) -> bool {
    (b'!'..=b'~').contains(&byte) && byte != b'+' && byte != b'='
}

/// RFC 3461 §4 `hexchar`: upper-case hex digits only.
fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// RFC 5322 atext (ASCII), for the ORCPT address type (an atom).
fn is_atext(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ret_is_full_or_hdrs_in_any_case() {
        assert_eq!(parse_ret("FULL"), Ok(Ret::Full));
        assert_eq!(parse_ret("hdrs"), Ok(Ret::Hdrs));
        for bad in ["", "HEADERS", "FULL,HDRS", " FULL"] {
            assert_eq!(parse_ret(bad), Err(DsnParamError::Ret), "{bad:?}");
        }
    }

    #[test]
    fn notify_never_alone_or_a_list_without_repeats() {
        assert_eq!(parse_notify("NEVER"), Ok(NotifyOn::NEVER));
        assert_eq!(parse_notify("never"), Ok(NotifyOn::NEVER));
        let all = NotifyOn {
            success: true,
            failure: true,
            delay: true,
        };
        assert_eq!(parse_notify("SUCCESS,FAILURE,DELAY"), Ok(all));
        assert_eq!(parse_notify("delay,Success,FAILURE"), Ok(all));
        assert_eq!(
            parse_notify("FAILURE"),
            Ok(NotifyOn {
                failure: true,
                ..NotifyOn::NEVER
            })
        );
        for bad in [
            "",
            ",",
            "SUCCESS,",
            ",DELAY",
            "SUCCESS,,DELAY",
            "NEVER,SUCCESS",
            "SUCCESS,NEVER",
            "SUCCESS,SUCCESS",
            "SUCCESS;DELAY",
            "SUCCESS DELAY",
            "ALWAYS",
        ] {
            assert_eq!(parse_notify(bad), Err(DsnParamError::Notify), "{bad:?}");
        }
    }

    #[test]
    fn xtext_decodes_xchars_and_upper_case_hex() {
        assert_eq!(decode_xtext("abc").unwrap(), b"abc");
        assert_eq!(decode_xtext("a+2Bb+3D").unwrap(), b"a+b=");
        assert_eq!(decode_xtext("+20+7F+00").unwrap(), b" \x7f\0");
        assert_eq!(decode_xtext("").unwrap(), b"");
        for bad in [
            "+", "+2", "+2b", "+G0", "a b", "a=b", "\u{e9}", "a\tb", "+ 20",
        ] {
            assert_eq!(decode_xtext(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn envid_is_printable_ascii_up_to_100() {
        assert_eq!(parse_envid("QQ314159").unwrap(), "QQ314159");
        assert_eq!(parse_envid("a+20b").unwrap(), "a b");
        assert_eq!(parse_envid(&"x".repeat(100)).unwrap().len(), 100);
        for bad in [
            "".to_string(),
            "x".repeat(101),
            "a+0Db".into(),
            "a+80".into(),
            "a+7F".into(),
            "bad=".into(),
            "+4".into(),
        ] {
            assert_eq!(parse_envid(&bad), Err(DsnParamError::Envid), "{bad:?}");
        }
    }

    #[test]
    fn orcpt_is_a_type_and_an_xtext_address() {
        let orcpt = parse_orcpt("rfc822;bob+2Bsub@example.net").unwrap();
        assert_eq!(orcpt.address_type, "rfc822");
        assert_eq!(orcpt.address, "bob+sub@example.net");
        let utf8 = parse_orcpt("utf-8;bj\u{f8}rn@ex\u{e4}mple.net").unwrap();
        assert_eq!(utf8.address, "bj\u{f8}rn@ex\u{e4}mple.net");
        let escaped = parse_orcpt("utf-8;bj\\x{F8}rn+2Bx@example.net").unwrap();
        assert_eq!(escaped.address, "bj\u{f8}rn+x@example.net");
        for bad in [
            "utf-8;a\\b@example.net",
            "utf-8;a\\x{}@example.net",
            "utf-8;a\\x{f8}@example.net",
            "utf-8;a\\x{1234567}@example.net",
            "utf-8;a\\x{D800}@example.net",
            "utf-8;a\\x{F8@example.net",
        ] {
            assert_eq!(parse_orcpt(bad), Err(DsnParamError::Orcpt), "{bad:?}");
        }
        // xtext-encoded UTF-8 octets decode too.
        let encoded = parse_orcpt("rfc822;bj+C3+B8rn@example.net").unwrap();
        assert_eq!(encoded.address, "bj\u{f8}rn@example.net");
        let long = format!("rfc822;{}", "a".repeat(MAX_ORCPT));
        for bad in [
            "bob@example.net",
            ";bob@example.net",
            "rfc 822;bob@example.net",
            "rfc822;",
            "rfc822;bob@exa mple.net",
            "rfc822;bob=x@example.net",
            "rfc822;bob+2b@example.net",
            "rfc822;bj\u{f8}rn@example.net",
            "rfc822;a+0Ab@example.net",
            "rfc822;+FF",
            long.as_str(),
        ] {
            assert_eq!(parse_orcpt(bad), Err(DsnParamError::Orcpt), "{bad:?}");
        }
    }

    #[test]
    fn relayed_parameters_are_xtext_encoded() {
        let orcpt = OriginalRecipient {
            address_type: "rfc822".into(),
            address: "a+b=c@example.net".into(),
        };
        assert_eq!(
            rcpt_parameters(
                Some(NotifyOn {
                    success: true,
                    delay: true,
                    failure: false
                }),
                Some(&orcpt)
            ),
            " NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a+2Bb+3Dc@example.net"
        );
        assert_eq!(
            rcpt_parameters(Some(NotifyOn::NEVER), None),
            " NOTIFY=NEVER"
        );
        assert_eq!(rcpt_parameters(None, None), "");
        assert_eq!(
            mail_parameters(Some(Ret::Hdrs), Some("id 1")),
            " RET=HDRS ENVID=id+201"
        );
        assert_eq!(mail_parameters(None, None), "");
    }

    proptest! {
        #[test]
        fn xtext_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let encoded = encode_xtext(&bytes);
            prop_assert!(encoded.bytes().all(|b| (b'!'..=b'~').contains(&b) && b != b'='));
            prop_assert_eq!(decode_xtext(&encoded), Some(bytes));
        }

        #[test]
        fn any_text_parses_without_panic(text in "\\PC{0,40}") {
            let _ = parse_orcpt(&text);
            let _ = parse_envid(&text);
            let _ = parse_notify(&text);
            let _ = decode_xtext(&text);
        }
    }
}

// RFC 3461 §4 (xtext), §4.1-§4.4, and RFC 6533 §3:
//
//   xtext = *( xchar / hexchar )
//   xchar = any ASCII CHAR between "!" (33) and "~" (126) inclusive,
//           except for "+" and "=".
//   hexchar = ASCII "+" immediately followed by two upper case
//             hexadecimal digits
//
//   notify-esmtp-value  = "NEVER" / 1#notify-list-element
//   notify-list-element = "SUCCESS" / "FAILURE" / "DELAY"
//
//   orcpt-parameter = "ORCPT=" original-recipient-address
//   original-recipient-address = addr-type ";" xtext
//   addr-type = atom
//
//   ret-parameter = "RET=" ret-value
//   ret-value = "FULL" / "HDRS"
//
//   envid-parameter = "ENVID=" xtext
//
//   utf-8-addr-unitext = 1*(QUNITEXT-CHAR / EmbeddedUnicodeChar)
