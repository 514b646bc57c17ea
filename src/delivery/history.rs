//! The attempt history kept with each recipient (`attempts_log` in
//! `sluice queue show`): what the scheduler records besides the outcome.

use chrono::{DateTime, Utc};
use sluice_queue::{AttemptRecord, LoggedAttempt};

use super::attempt::Attempt;

/// The history entries of `attempts`, all recorded at `at`: for each, the
/// hosts tried before the one that gave its result, then that result.
pub fn logged(attempts: &[Attempt], at: DateTime<Utc>) -> Vec<LoggedAttempt> {
    attempts
        .iter()
        .flat_map(|attempt| {
            let earlier = attempt.earlier.iter().map(move |tried| LoggedAttempt {
                index: attempt.index,
                attempt: AttemptRecord {
                    at,
                    relay: tried.relay.clone(),
                    tls: tried.tls.clone(),
                    reply: tried.reply.clone(),
                },
            });
            earlier.chain(std::iter::once(LoggedAttempt {
                index: attempt.index,
                attempt: AttemptRecord {
                    at,
                    relay: attempt.relay.clone(),
                    tls: attempt.tls.clone(),
                    reply: attempt.reply.clone(),
                },
            }))
        })
        .collect()
}
