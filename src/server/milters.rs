//! The milters' turn on a complete message: after the last octet, before
//! DKIM signing, `Authentication-Results` and the commit, so that the 250
//! comes only after every milter agreed, and a signature covers what the
//! milters left.

use sluice_queue::BodyWriter;

use crate::auth::dkim::{Signer, SigningStream};
use crate::context::Context;
use crate::milter::{self, Decision, Transaction};
use crate::smtp::reply::Reply;
use crate::smtp::session::{LogReply, MessageOutcome, Session, log_address};

/// Runs the configured milters over the message in `body` (those with
/// `outbound = false` are skipped for `relay_networks` and authenticated
/// clients). Applies their edits to `body`, and restarts `signing` over the
/// edited message so the signature covers it. `Ok(true)`: the message is
/// to be held (quarantine); `Err`: the outcome for the client instead of a
/// commit (refused, discarded, or the body could not be rewritten).
pub(crate) async fn run<'s>(
    ctx: &Context,
    dkim: &'s Signer,
    session: &Session,
    body: &mut BodyWriter,
    signing: &mut Option<SigningStream<'s>>,
) -> Result<bool, MessageOutcome> {
    let config = ctx.config();
    let outbound = session.is_relay_client() || session.user().is_some();
    let milters: Vec<_> = config
        .milters
        .iter()
        .filter(|milter| milter.outbound || !outbound)
        .collect();
    if milters.is_empty() {
        return Ok(false);
    }
    let Some(transaction) = session.transaction() else {
        return Ok(false);
    };
    let message = match body.read_back().await {
        Ok(message) => message,
        Err(error) => {
            tracing::error!(queue_id = %body.id(), %error, "reading the message back failed");
            return Err(MessageOutcome::StorageFailed);
        }
    };
    let queue_id = body.id().to_string();
    let decision = milter::filter(
        &milters,
        Transaction {
            hostname: &config.hostname,
            client: session.client(),
            helo: session.helo_name(),
            sender: &transaction.sender,
            recipients: &transaction.recipients,
            user: session.user(),
            queue_id: &queue_id,
            message: &message,
        },
    )
    .await;
    match decision {
        Decision::Accept {
            message: edited,
            quarantine,
        } => {
            if let Some(edited) = edited {
                let length = body.len();
                if let Err(error) = body.replace_start(length, &edited).await {
                    tracing::error!(queue_id, %error, "writing the milters' changes failed");
                    return Err(MessageOutcome::StorageFailed);
                }
                if signing.is_some() {
                    *signing = dkim.stream().map(|mut stream| {
                        stream.write(&edited);
                        stream
                    });
                }
            }
            if let Some(reason) = &quarantine {
                tracing::info!(queue_id, reason = %reason, "quarantined by a milter: held");
            }
            Ok(quarantine.is_some())
        }
        Decision::Discard => {
            tracing::info!(queue_id, client = %session.client(),
                sender = %log_address(&transaction.sender), "discarded by a milter");
            Err(MessageOutcome::Discarded)
        }
        Decision::Refuse(reply) => {
            log_refused(session, &reply);
            Err(MessageOutcome::Milter(reply))
        }
    }
}

/// The `transaction refused` line, as the connection logs its own.
fn log_refused(session: &Session, reply: &Reply) {
    let transaction = session.transaction();
    let sender = transaction
        .map(|t| log_address(&t.sender).into_owned())
        .unwrap_or_default();
    let command = match transaction {
        Some(transaction) if transaction.chunking => "bdat",
        _ => "data",
    };
    tracing::info!(
        client = %session.client(),
        helo = %session.helo_name().unwrap_or(""),
        sender = %sender,
        command,
        reason = %"milter",
        reply = %LogReply(reply),
        "transaction refused"
    );
}
