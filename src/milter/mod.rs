//! The milter client (Sendmail milter protocol version 6), in the shape
//! `smtp/` has: [`codec`] (packets, bytes in and out) and [`conversation`]
//! (the state machine of one message with one milter) are pure; [`edit`]
//! applies a milter's changes to the message; [`client`] is the socket.
//! [`filter`] runs the configured milters in order over one message.

pub mod client;
pub mod codec;
pub mod conversation;
pub mod edit;

use crate::config::{MilterConfig, OnFailure};
use crate::smtp::reply::{EnhancedCode, Reply};
pub use conversation::{Transaction, Verdict};

/// What the milters decided about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Queue it: `message` is the new text when a milter changed it;
    /// `quarantine` the reason when one asked for it to be held.
    Accept {
        message: Option<Vec<u8>>,
        quarantine: Option<String>,
    },
    /// Answer 250 and drop it.
    Discard,
    /// Refuse it with this reply.
    Refuse(Reply),
}

/// The reply when a milter with `on_failure = "tempfail"` fails.
pub fn unavailable() -> Reply {
    Reply::new(
        451,
        EnhancedCode::new(4, 7, 1),
        "Error: content filter unavailable, try again later",
    )
}

/// Runs `milters` in order over `transaction`'s message; each sees the
/// message as the ones before it left it. A reject, tempfail or discard
/// ends the run. A milter that fails (unreachable, timed out, broke the
/// protocol) refuses the message with [`unavailable`] under
/// `on_failure = "tempfail"`, and is passed over under `"accept"`. Logs one
/// line per milter asked.
pub async fn filter(milters: &[&MilterConfig], transaction: Transaction<'_>) -> Decision {
    let mut current: Option<Vec<u8>> = None;
    let mut quarantine: Option<String> = None;
    for milter in milters {
        let message = current.as_deref().unwrap_or(transaction.message);
        let asked = Transaction {
            message,
            ..transaction.clone()
        };
        let started = std::time::Instant::now();
        let verdict = client::ask(&milter.address, milter.timeout, asked).await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let queue_id = transaction.queue_id;
        match verdict {
            Ok(Verdict::Accept {
                edits,
                quarantine: held,
            }) => {
                tracing::info!(queue_id, milter = %milter.address, action = "accept",
                    edits = edits.len(), quarantine = held.as_deref().unwrap_or("-"), elapsed_ms, "milter");
                if !edits.is_empty() {
                    current = Some(edit::apply(message, &edits));
                }
                if held.is_some() {
                    quarantine = held;
                }
            }
            Ok(Verdict::Discard) => {
                tracing::info!(queue_id, milter = %milter.address, action = "discard", elapsed_ms, "milter");
                return Decision::Discard;
            }
            Ok(Verdict::Refuse(reply)) => {
                tracing::info!(queue_id, milter = %milter.address, action = "refuse",
                    reply = %reply.one_line(), elapsed_ms, "milter");
                return Decision::Refuse(reply);
            }
            Err(error) => {
                tracing::warn!(queue_id, milter = %milter.address, %error,
                    on_failure = ?milter.on_failure, elapsed_ms, "milter failed");
                if milter.on_failure == OnFailure::Tempfail {
                    return Decision::Refuse(unavailable());
                }
            }
        }
    }
    Decision::Accept {
        message: current,
        quarantine,
    }
}
