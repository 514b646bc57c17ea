//! Fuzzes the maildrop file parser: its bytes come from any local user
//! (through the setgid helper), so any input must give a parsed file or a
//! precise error, never a panic; a parsed file writes back to the same
//! envelope.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::local::maildrop;

fuzz_target!(|data: &[u8]| {
    if let Ok(dropped) = maildrop::parse(data, 1 << 20) {
        assert!(!dropped.recipients.is_empty());
        let recipients: Vec<String> = dropped.recipients.iter().map(|r| r.to_string()).collect();
        let envelope = maildrop::envelope(dropped.uid, dropped.sender, &recipients);
        let mut again = envelope.clone();
        again.extend_from_slice(dropped.message);
        let reparsed = maildrop::parse(&again, usize::MAX).expect("a written file parses");
        assert_eq!(reparsed.uid, dropped.uid);
        assert_eq!(reparsed.sender, dropped.sender);
        assert_eq!(reparsed.recipients, dropped.recipients);
        assert_eq!(reparsed.message, dropped.message);
    }
});
