//! The attempt history kept with each recipient (`attempts_log` in
//! `sluice queue show`): what the scheduler records besides the outcome.

use chrono::{DateTime, Utc};
use sluice_queue::{AttemptRecord, LoggedAttempt};

use super::attempt::Attempt;

/// The history entries of `attempts`, all recorded at `at`.
pub fn logged(attempts: &[Attempt], at: DateTime<Utc>) -> Vec<LoggedAttempt> {
    attempts
        .iter()
        .map(|attempt| LoggedAttempt {
            index: attempt.index,
            attempt: AttemptRecord {
                at,
                relay: attempt.relay.clone(),
                tls: attempt.tls.clone(),
                reply: attempt.reply.clone(),
            },
        })
        .collect()
}
