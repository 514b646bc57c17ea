//! Fuzzes the milter client: any bytes from a milter decode into replies
//! (or a precise error) without a panic, a conversation fed them always
//! finishes or fails cleanly, and the edits it gives apply to the message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::milter::codec::{MAX_PACKET, decode};
use sluice::milter::conversation::{Conversation, Next, Transaction, Verdict};
use sluice::milter::edit;

const MESSAGE: &[u8] = b"Received: from c by us\r\nSubject: fuzz\r\nX-A: 1\r\n\r\nbody\r\n";

fuzz_target!(|data: &[u8]| {
    let mut responses = Vec::new();
    let mut input = data;
    while let Ok(Some((response, used))) = decode(input) {
        assert!(used <= 4 + MAX_PACKET && used <= input.len());
        input = &input[used..];
        responses.push(response);
    }
    let recipients = vec!["b@fuzz.test".to_string()];
    let mut conversation = Conversation::new(Transaction {
        hostname: "fuzz.test",
        client: "192.0.2.1".parse().unwrap(),
        helo: Some("client.fuzz.test"),
        sender: "a@fuzz.test",
        recipients: &recipients,
        user: None,
        queue_id: "Q1",
        message: MESSAGE,
    });
    let mut responses = responses.into_iter();
    loop {
        match conversation.step() {
            Next::Write(octets) => assert!(!octets.is_empty()),
            Next::Read => match responses.next() {
                Some(response) => {
                    if conversation.receive(response).is_err() {
                        return;
                    }
                }
                None => return,
            },
            Next::Done(verdict) => {
                if let Verdict::Accept { edits, .. } = verdict {
                    let edited = edit::apply(MESSAGE, &edits);
                    // The edited message still has a header section and a body.
                    let (_, body_start) = edit::split(&edited);
                    assert!(body_start <= edited.len());
                }
                return;
            }
        }
    }
});
