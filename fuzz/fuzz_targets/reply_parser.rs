//! Fuzzes the client side: any bytes from a server parse into replies (or a
//! precise error) without a panic, within the size bound, and the outbound
//! state machines take whatever replies come and always finish.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::smtp::client::{Envelope, Opening, OpeningStep, Step, Transaction};
use sluice::smtp::reply::{MAX_REPLY_BYTES, MAX_REPLY_TEXT, ReplyBuffer};

fuzz_target!(|data: &[u8]| {
    let mut buffer = ReplyBuffer::new();
    buffer.input().extend_from_slice(data);
    let mut replies = Vec::new();
    while let Ok(Some(reply)) = buffer.next_reply() {
        assert!((200..600).contains(&reply.code()));
        assert!(reply.one_line().len() <= MAX_REPLY_TEXT);
        assert!(reply.to_wire().len() <= 2 * MAX_REPLY_BYTES);
        replies.push(reply);
    }
    let mut out = Vec::new();
    let (mut opening, mut step) = Opening::new("fuzz.test");
    let mut replies = replies.into_iter();
    let capabilities = loop {
        match step {
            OpeningStep::Read(_) => match replies.next() {
                Some(reply) => step = opening.receive(reply, &mut out),
                None => return,
            },
            OpeningStep::Ready(capabilities) => break capabilities,
            OpeningStep::Refused(_) => return,
        }
    };
    let recipients = vec!["a@fuzz.test".to_string(), "b@fuzz.test".to_string()];
    let envelope = Envelope {
        sender: "s@fuzz.test",
        recipients: &recipients,
        size: Some(1),
        eight_bit: false,
        smtputf8: false,
        message_dsn: None,
        recipient_dsn: &[],
    };
    let (mut transaction, mut step) = Transaction::start(envelope, &capabilities, &mut out);
    loop {
        step = match step {
            Step::Read(_) => match replies.next() {
                Some(reply) => transaction.receive(reply, &mut out),
                None => Step::Done(transaction.interrupted()),
            },
            Step::SendBody => transaction.body_sent(),
            Step::Done(outcome) => {
                assert_eq!(outcome.verdicts.len(), recipients.len());
                assert!(outcome.broken.is_some() || outcome.verdicts.iter().all(Option::is_some));
                return;
            }
        };
    }
});
