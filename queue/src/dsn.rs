//! What a sender asked of delivery status notifications (RFC 3461), as
//! stored with a message: RET and ENVID for the message, NOTIFY and ORCPT
//! per recipient. Plain data: the SMTP server parses the parameters, the
//! delivery side acts on them; the queue only keeps them.
//!
//! Every field is optional in the stored record, so records written before
//! these fields existed read back as "no DSN parameters given".

use serde::{Deserialize, Serialize};

/// RFC 3461 §4.3 `RET`: how much of the message a report returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ret {
    /// `RET=FULL`: the whole message.
    Full,
    /// `RET=HDRS`: the header section only.
    Hdrs,
}

impl Ret {
    /// The keyword as written in MAIL (`FULL`, `HDRS`).
    pub fn keyword(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        }
    }
}

/// RFC 3461 §4.1 `NOTIFY`: which reports a recipient wants. `NEVER` is
/// all three false.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NotifyOn {
    /// `SUCCESS`: report delivery (or relay to a hop without DSN).
    pub success: bool,
    /// `FAILURE`: report a permanent failure.
    pub failure: bool,
    /// `DELAY`: report that delivery is delayed.
    pub delay: bool,
}

impl NotifyOn {
    /// `NOTIFY=NEVER`.
    pub const NEVER: NotifyOn = NotifyOn {
        success: false,
        failure: false,
        delay: false,
    };

    /// True for `NEVER`.
    pub fn is_never(self) -> bool {
        self == NotifyOn::NEVER
    }

    /// The value as written in RCPT: `NEVER`, or the keywords joined by
    /// commas in the order SUCCESS, FAILURE, DELAY.
    pub fn keywords(self) -> String {
        if self.is_never() {
            return "NEVER".to_string();
        }
        let mut words = Vec::with_capacity(3);
        if self.success {
            words.push("SUCCESS");
        }
        if self.failure {
            words.push("FAILURE");
        }
        if self.delay {
            words.push("DELAY");
        }
        words.join(",")
    }
}

/// RFC 3461 §4.2 `ORCPT`: the recipient address as the sender first gave
/// it, decoded from xtext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginalRecipient {
    /// The address type, e.g. `rfc822` or `utf-8` (RFC 6533), as given.
    pub address_type: String,
    /// The address, decoded.
    pub address: String,
}

/// A message's DSN parameters from MAIL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDsn {
    /// `RET`; `None` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<Ret>,
    /// `ENVID`, decoded from xtext; `None` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
}

/// A recipient's DSN parameters from RCPT.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientDsn {
    /// `NOTIFY`; `None` when not given (failure and delay reports only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<NotifyOn>,
    /// `ORCPT`; `None` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<OriginalRecipient>,
}

impl RecipientDsn {
    /// True when nothing was given.
    pub fn is_empty(&self) -> bool {
        self.notify.is_none() && self.orcpt.is_none()
    }
}

/// Which report a recipient reached, to ask whether its NOTIFY wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    /// A permanent failure.
    Failure,
    /// Still deferred after `delivery.delay_warning`.
    Delay,
    /// Accepted by the next hop.
    Success,
}

/// RFC 3461 §4.1: whether a recipient with these parameters gets a report
/// of `kind`. Without NOTIFY, failure and delay reports only.
pub fn wants_report(dsn: Option<&RecipientDsn>, kind: ReportKind) -> bool {
    let notify = dsn.and_then(|dsn| dsn.notify);
    match (notify, kind) {
        (None, ReportKind::Success) => false,
        (None, ReportKind::Failure | ReportKind::Delay) => true,
        (Some(notify), ReportKind::Success) => notify.success,
        (Some(notify), ReportKind::Failure) => notify.failure,
        (Some(notify), ReportKind::Delay) => notify.delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_keywords_and_what_each_wants() {
        let success_delay = NotifyOn {
            success: true,
            failure: false,
            delay: true,
        };
        assert_eq!(success_delay.keywords(), "SUCCESS,DELAY");
        assert_eq!(NotifyOn::NEVER.keywords(), "NEVER");
        let dsn = |notify| RecipientDsn {
            notify,
            orcpt: None,
        };
        let given = dsn(Some(success_delay));
        assert!(wants_report(Some(&given), ReportKind::Success));
        assert!(wants_report(Some(&given), ReportKind::Delay));
        assert!(!wants_report(Some(&given), ReportKind::Failure));
        let never = dsn(Some(NotifyOn::NEVER));
        for kind in [ReportKind::Success, ReportKind::Failure, ReportKind::Delay] {
            assert!(!wants_report(Some(&never), kind));
        }
        for absent in [None, Some(&dsn(None))] {
            assert!(!wants_report(absent, ReportKind::Success));
            assert!(wants_report(absent, ReportKind::Failure));
            assert!(wants_report(absent, ReportKind::Delay));
        }
    }

    #[test]
    fn messages_stored_before_dsn_read_back_without_parameters() {
        // A record's message as the queue wrote it before these fields.
        let old = r#"{"id":"Q1","sender":"a@example.org","size":5,
            "received_at":"2026-11-25T09:44:21Z","held":false,"smtputf8":false,
            "body_8bit":false,"recipients":[{"address":"b@example.net",
            "status":"deferred","attempts":1,"next_attempt_at":null,
            "last_reply":"451 later"}]}"#;
        let message: crate::Message = serde_json::from_str(old).expect("old records read");
        assert_eq!(message.dsn, None);
        assert_eq!(message.delay_notified_at, None);
        assert_eq!(message.recipients[0].dsn, None);
        // And without parameters nothing new is written.
        let written = serde_json::to_string(&message).unwrap();
        assert!(
            !written.contains("dsn") && !written.contains("delay"),
            "{written}"
        );
    }

    #[test]
    fn old_records_without_the_fields_read_as_none() {
        let dsn: MessageDsn = serde_json::from_str("{}").unwrap();
        assert_eq!(dsn, MessageDsn::default());
        let written = serde_json::to_string(&RecipientDsn::default()).unwrap();
        assert_eq!(written, "{}");
    }
}
