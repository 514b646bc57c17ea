//! The scheduler: sleeps until the queue says something is due (or new mail
//! arrives), claims due messages, delivers the open recipients of each
//! message's due domains in one transaction per domain under the concurrency
//! limits (retries belong to the (message, domain) pair: one due recipient
//! brings its domain's others along, and a deferred domain gets one next
//! attempt time for all of them), then records the
//! outcomes, queues at most one DSN per message per round, and logs one line
//! per recipient.
//!
//! Nothing here scans the queue: `next_due` and `claim_due` are O(due), so a
//! queue of 100,000 deferred messages costs nothing while none is due.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use sluice_queue::{Claim, Message, RecipientStatus};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Engine;
use super::attempt::{Attempt, Failure, Shaping, Verdict, deliver_domain, recipient_domain};
use super::notices;
use super::plan::{DeliveryError, record};
use crate::smtp::session::log_address;

/// Messages claimed per `claim_due` call.
const CLAIM_BATCH: usize = 64;
/// Claimed messages that may wait, without a slot, for a busy domain's
/// `per_domain_concurrency` (see [`deliver_message`]). Bounds the memory a
/// backlog to slow domains takes.
const WAITING_FOR_DOMAIN: usize = 10_000;
/// Pause after a queue error before trying again.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// The scheduler loop; returns at shutdown. Each claimed message is
/// delivered by the engine in force when it was claimed (a reload swaps it).
pub async fn run(engines: Arc<ArcSwap<Engine>>) {
    let engine = engines.load_full();
    let ctx = engine.ctx.clone();
    let reaper_engine = engine.clone();
    let reaper_shutdown = ctx.shutdown.clone();
    ctx.tasks.spawn(async move {
        reaper_engine.pool.run_reaper(reaper_shutdown).await;
    });
    ctx.tasks
        .spawn(ctx.shaper.clone().run(ctx.shutdown.clone()));

    // Claimed messages in progress. Twice the transaction limit keeps the
    // transaction slots busy while finished messages are being recorded.
    // A reload that raises the limit adds slots (at the next turn of the
    // loop); one that lowers it keeps them, the engine's transaction limit
    // being what bounds the attempts.
    let slot_count =
        |ctx: &crate::context::Context| ctx.config().delivery.concurrency.get().saturating_mul(2);
    let mut slot_total = slot_count(&ctx);
    let slots = Arc::new(Semaphore::new(slot_total));
    let waiting = Arc::new(Semaphore::new(WAITING_FOR_DOMAIN));
    let changed = ctx.queue.changed();
    let jumped = engine
        .clock
        .jumped()
        .unwrap_or_else(|| Arc::new(tokio::sync::Notify::new()));
    loop {
        let wanted = slot_count(&ctx);
        if wanted > slot_total {
            slots.add_permits(wanted - slot_total);
            slot_total = wanted;
        }
        let first = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = ctx.shutdown.cancelled() => break,
        };
        // The other free slots in one step (not one at a time): unused
        // ones go back in one step too.
        let mut permits = first;
        let more = slots.available_permits().min(CLAIM_BATCH - 1);
        if more > 0
            && let Ok(extra) = slots.clone().try_acquire_many_owned(more as u32)
        {
            permits.merge(extra);
        }
        // Registered before looking, so a wake-up between the look and the
        // wait is not lost.
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let clock_jumped = jumped.notified();
        tokio::pin!(clock_jumped);
        clock_jumped.as_mut().enable();

        let now = engine.clock.now();
        let claims = match ctx.queue.claim_due(now, permits.num_permits()) {
            Ok(claims) => claims,
            Err(error) => {
                tracing::error!(%error, "cannot claim due messages");
                drop(permits);
                tokio::select! {
                    _ = tokio::time::sleep(ERROR_PAUSE) => {}
                    _ = ctx.shutdown.cancelled() => break,
                }
                continue;
            }
        };
        if claims.is_empty() {
            drop(permits);
            let wait = match ctx.queue.next_due() {
                Ok(Some(due)) => Some(
                    (due - now)
                        .to_std()
                        .unwrap_or(Duration::ZERO)
                        // Never spin if the queue's idea of "due" is a hair
                        // behind ours.
                        .max(Duration::from_millis(5)),
                ),
                Ok(None) => None,
                Err(error) => {
                    tracing::error!(%error, "cannot read the next due time");
                    Some(ERROR_PAUSE)
                }
            };
            tracing::debug!(wait = ?wait, "nothing due; waiting");
            tokio::select! {
                _ = &mut notified => {}
                _ = &mut clock_jumped => {}
                _ = tokio::time::sleep(wait.unwrap_or(Duration::MAX)), if wait.is_some() => {}
                _ = ctx.shutdown.cancelled() => break,
            }
            continue;
        }
        for claim in claims {
            let Some(permit) = permits.split(1) else {
                // claim_due returned more than asked: give the rest back.
                ctx.queue.unclaim(&claim.message.id);
                continue;
            };
            let engine = engines.load_full();
            ctx.tasks
                .spawn(deliver_message(engine, claim, permit, waiting.clone()));
        }
    }
    tracing::debug!("scheduler stopped");
}

/// Delivers the due recipients of one claimed message and records the
/// outcome. Holds `slot` until done, except when every domain it goes to is
/// at its `per_domain_concurrency` or shaping limit: then it trades the slot for a `waiting`
/// permit (when one is left), so that a backlog to one slow domain does not
/// take every slot and starve mail to the others, and keeps only its ID
/// while it waits (the message is read again when its turn comes). The
/// transactions it starts later are still bounded by `concurrency`.
///
/// A domain whose destination is suspended (`shaping`) is not attempted:
/// its recipients are put off until the suspension ends, uncharged.
async fn deliver_message(
    engine: Arc<Engine>,
    claim: Claim,
    slot: OwnedSemaphorePermit,
    waiting: Arc<Semaphore>,
) {
    let message = claim.message;
    let ctx = &engine.ctx;
    let now = engine.clock.now();
    let expired = engine.policy.is_expired(message.received_at, now);

    // Open recipients of due domains, grouped by domain; after expiry,
    // every open one.
    let due_domains = due_domains(&message, now, expired);
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut attempts: Vec<Attempt> = Vec::new();
    for (index, recipient) in message.recipients.iter().enumerate() {
        if !is_open(recipient.status)
            || !due_domains.contains(&recipient_domain(&recipient.address))
        {
            continue;
        }
        if expired {
            attempts.push(record::expired(
                &message,
                index,
                engine.policy.max_queue_lifetime,
            ));
            continue;
        }
        match recipient_domain(&recipient.address) {
            Some(domain) => groups.entry(domain).or_default().push(index),
            None => attempts.push(Attempt::local(
                index,
                &Failure::from(DeliveryError::NoDomain {
                    address: recipient.address.clone(),
                }),
            )),
        }
    }
    if attempts.is_empty() && groups.is_empty() {
        // Claimed, but nothing is due yet (another recipient made it due).
        ctx.queue.unclaim(&message.id);
        return;
    }
    if ctx.shutdown.is_cancelled() {
        ctx.queue.unclaim(&message.id);
        return;
    }

    let all_busy = attempts.is_empty()
        && groups.keys().all(|domain| {
            engine.domain_limit(domain).available_permits() == 0
                || engine.ctx.shaper.looks_busy(domain)
        });
    // Held until the end of this function, whichever it is.
    let waiting_permit = all_busy.then(|| waiting.try_acquire_owned().ok()).flatten();
    let (_held, light) = match waiting_permit {
        Some(waiting_permit) => {
            drop(slot);
            (waiting_permit, true)
        }
        None => (slot, false),
    };
    // Waiting behind busy destinations (a connection limit, a rate): keep
    // only the ID and the groups, not the envelope; the message is read
    // again when its turn comes.
    let id = message.id.clone();
    let kept: Option<Message> = (!light).then_some(message);
    let kept_ref = kept.as_ref();

    let rounds = groups.iter().map(|(domain, indices)| {
        let engine = engine.clone();
        let id = &id;
        async move {
            // The one settings snapshot of this domain's attempt: its
            // shaping rule and the delivery see the same configuration.
            let config = engine.ctx.config();
            let shaper = engine.ctx.shaper.clone();
            let shaped = shaper
                .resolve(&config, domain, async || mx_host_names(&engine, domain).await)
                .await;
            if let Some(suspension) = shaper.suspended(domain, shaped.as_ref()) {
                return Round::Postponed(indices.clone(), suspension);
            }
            let (admission, waited_for_domain, _domain_permit) = match &shaped {
                Some(resolved) => match shaper.admit(resolved, &engine.ctx.shutdown).await {
                    Some((admission, waited)) => (Some(admission), waited, None),
                    None => return Round::Attempts(Vec::new()),
                },
                None => {
                    let (permit, waited) = acquire(engine.domain_limit(domain)).await;
                    (None, waited, Some(permit))
                }
            };
            let (_permit, waited) = acquire(engine.transactions.clone()).await;
            // Shutting down: leave these recipients as they are; they are
            // due again after the restart.
            if engine.ctx.shutdown.is_cancelled() {
                return Round::Attempts(Vec::new());
            }
            // The wait for the permits can be long: if the operator held,
            // deleted or bounced the message meanwhile, leave it alone (its
            // claim is given back, or went with it). Without a wait, the
            // message was read at its claim a moment ago.
            let read_again = if waited_for_domain || waited || kept_ref.is_none() {
                match engine.ctx.queue.get(id) {
                    Ok(Some(current)) if !current.held => Some(current),
                    Ok(_) => {
                        tracing::debug!(queue_id = %id, domain, "held or removed while waiting; not delivered");
                        return Round::Attempts(Vec::new());
                    }
                    Err(error) if kept_ref.is_none() => {
                        tracing::warn!(queue_id = %id, %error, "cannot read a waiting message; trying later");
                        return Round::Attempts(Vec::new());
                    }
                    Err(_) => None,
                }
            } else {
                None
            };
            let Some(message) = read_again.as_ref().or(kept_ref) else {
                return Round::Attempts(Vec::new());
            };
            // Suspended meanwhile (another message's reply).
            if let Some(suspension) = shaper.suspended(domain, shaped.as_ref()) {
                return Round::Postponed(indices.clone(), suspension);
            }
            let shaping = shaped
                .as_ref()
                .zip(admission.as_ref())
                .map(|(resolved, admission)| Shaping {
                    rule: &resolved.rule,
                    pool: admission.pool_scope(),
                });
            let attempts =
                deliver_domain(&engine, &config, message, domain, indices, shaping.as_ref()).await;
            if let Some(resolved) = &shaped {
                shaper.after(resolved, &attempts).await;
            }
            Round::Attempts(attempts)
        }
    });
    let mut postponed = Vec::new();
    for round in futures::future::join_all(rounds).await {
        match round {
            Round::Attempts(results) => attempts.extend(results),
            Round::Postponed(indices, suspension) => postponed.push((indices, suspension)),
        }
    }
    for (indices, suspension) in postponed {
        // Not an attempt: nothing is charged, and the recipients are due
        // again when the suspension ends.
        let note = super::shaping::postpone_note(&suspension);
        tracing::info!(
            queue_id = %id,
            destination = %suspension.destination,
            recipients = indices.len(),
            until = %suspension.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "destination suspended; delivery put off"
        );
        if let Err(error) = ctx
            .queue
            .postpone(&id, &indices, suspension.until, &note)
            .await
        {
            tracing::warn!(queue_id = %id, %error, "cannot put off delivery to a suspended destination");
        }
    }
    if attempts.is_empty() {
        ctx.queue.unclaim(&id);
        return;
    }
    let message = match kept {
        Some(message) => message,
        // Read again for the record, as it is now.
        None => match ctx.queue.get(&id) {
            Ok(Some(message)) => message,
            Ok(None) => {
                tracing::info!(queue_id = %id, "message left the queue during delivery (deleted or bounced); outcomes not recorded");
                return;
            }
            Err(error) => {
                tracing::error!(queue_id = %id, %error, "cannot read the message to record its outcomes; it will be retried");
                unclaim_after_pause_id(&engine, &id).await;
                return;
            }
        },
    };
    record(&engine, &message, attempts).await;
}

/// What became of one domain group of a message in this round.
enum Round {
    /// Delivered (or not, at shutdown: then empty).
    Attempts(Vec<Attempt>),
    /// Its destination is suspended: these recipients wait, uncharged.
    Postponed(Vec<usize>, sluice_queue::Suspension),
}

/// The MX host names of `domain` (or its route's host), for shaping rules
/// keyed by MX suffix; empty when they cannot be found.
async fn mx_host_names(engine: &Engine, domain: &str) -> Vec<String> {
    match engine.router.next_hop(domain).await {
        Ok(hop) => hop.hosts.iter().map(|host| host.name.clone()).collect(),
        Err(_) => Vec::new(),
    }
}

/// True while a recipient still needs an attempt.
fn is_open(status: RecipientStatus) -> bool {
    matches!(status, RecipientStatus::Pending | RecipientStatus::Deferred)
}

/// The domains (`None`: addresses without one) of the message that are due:
/// those with at least one open recipient due at `now` (every open one once
/// the message `expired`).
///
/// Retries belong to the (message, domain) pair: when one recipient of a
/// domain is due, all that domain's open recipients go, in one transaction,
/// even those whose own time is later. They normally share one time anyway
/// ([`RetryPolicy::next_attempts_by_domain`](super::retry::RetryPolicy::next_attempts_by_domain));
/// they differ after a recipient was deferred in a round of its own, or in
/// a spool written before retries were kept per domain, and an operator who
/// sees one of them retried expects its domain's others to go with it
/// rather than in a second connection moments later.
fn due_domains(message: &Message, now: DateTime<Utc>, expired: bool) -> HashSet<Option<String>> {
    message
        .recipients
        .iter()
        .filter(|recipient| match recipient.status {
            RecipientStatus::Pending => true,
            RecipientStatus::Deferred => {
                // Millisecond precision, as the queue's due index keeps it.
                expired
                    || recipient
                        .next_attempt_at
                        .is_none_or(|at| at.timestamp_millis() <= now.timestamp_millis())
            }
            RecipientStatus::Delivered | RecipientStatus::Failed => false,
        })
        .map(|recipient| recipient_domain(&recipient.address))
        .collect()
}

/// A permit of `semaphore`, and whether getting it meant waiting.
async fn acquire(
    semaphore: Arc<Semaphore>,
) -> (
    Result<OwnedSemaphorePermit, tokio::sync::AcquireError>,
    bool,
) {
    match semaphore.clone().try_acquire_owned() {
        Ok(permit) => (Ok(permit), false),
        Err(_) => (semaphore.acquire_owned().await, true),
    }
}

/// Gives back the claim of a message whose outcomes could not be recorded,
/// after `retry_initial` (at least [`ERROR_PAUSE`]): the queue is failing
/// (disk full, I/O errors), and a message due again at once would be
/// redelivered in a busy loop.
async fn unclaim_after_pause(engine: &Engine, message: &Message) {
    unclaim_after_pause_id(engine, &message.id).await;
}

/// [`unclaim_after_pause`] by ID.
async fn unclaim_after_pause_id(engine: &Engine, id: &sluice_queue::QueueId) {
    let pause = engine.ctx.config().delivery.retry_initial.max(ERROR_PAUSE);
    tokio::select! {
        _ = tokio::time::sleep(pause) => {}
        _ = engine.ctx.shutdown.cancelled() => {}
    }
    engine.ctx.queue.unclaim(id);
}

/// True when the message was deleted or bounced by the operator while its
/// delivery was in flight: its outcomes have nowhere to go, and its claim
/// went with it, so there is nothing to give back (and no reason to keep a
/// delivery slot through [`unclaim_after_pause`]).
fn left_the_queue(engine: &Engine, message: &Message) -> bool {
    match engine.ctx.queue.get(&message.id) {
        Ok(None) => {
            tracing::info!(
                queue_id = %message.id,
                "message left the queue during delivery (deleted or bounced); outcomes not recorded"
            );
            true
        }
        Ok(Some(_)) | Err(_) => false,
    }
}

/// Turns attempts into queue updates, queues the DSN, completes the claim,
/// logs and counts.
async fn record(engine: &Arc<Engine>, message: &Message, attempts: Vec<Attempt>) {
    let ctx = &engine.ctx;
    let now = engine.clock.now();
    let plan = record::plan(
        message,
        attempts,
        &engine.policy,
        ctx.config().delivery.delay_warning,
        now,
        &mut rand::thread_rng(),
    );
    // Reports (bounces, success, the delay notice) are queued before the
    // outcomes are recorded: after a crash in between, the sender may get
    // one twice, never none.
    if let Err(error) = notices::queue_reports(ctx, message, &plan.reports, now).await {
        if left_the_queue(engine, message) {
            return;
        }
        tracing::error!(
            queue_id = %message.id,
            %error,
            "cannot queue a delivery report; the outcomes are not recorded and will be retried"
        );
        unclaim_after_pause(engine, message).await;
        return;
    }

    let record::RecordPlan {
        attempts,
        updates,
        next_attempts,
        ..
    } = plan;
    let logged = super::history::logged(&attempts, now);
    if let Err(error) = ctx
        .queue
        .complete_logged(&message.id, updates, logged)
        .await
    {
        if left_the_queue(engine, message) {
            return;
        }
        tracing::error!(queue_id = %message.id, %error, "cannot record delivery outcomes");
        unclaim_after_pause(engine, message).await;
        return;
    }
    for (attempt, next_attempt) in attempts.iter().zip(next_attempts) {
        let status = match attempt.verdict {
            Verdict::Sent => {
                ctx.metrics.recipients_delivered.inc();
                "sent"
            }
            Verdict::Deferred => {
                ctx.metrics.recipients_deferred.inc();
                "deferred"
            }
            Verdict::Failed => {
                ctx.metrics.recipients_bounced.inc();
                "bounced"
            }
        };
        if attempt.verdict != Verdict::Deferred {
            let latency = (now - message.received_at).to_std().unwrap_or_default();
            ctx.metrics
                .delivery_latency_seconds
                .observe(latency.as_secs_f64());
        }
        log_outcome(message, attempt, now, status, next_attempt, true);
    }
}

/// Logs one outcome line (`status` is sent, deferred or bounced), with
/// key=value fields so a grep on the queue ID tells the whole story.
/// `attempts=` is the number of delivery attempts actually made: this one
/// counts when `tried` (an operator's bounce is no attempt).
pub fn log_outcome(
    message: &Message,
    attempt: &Attempt,
    now: DateTime<Utc>,
    status: &str,
    next_attempt: Option<DateTime<Utc>>,
    tried: bool,
) {
    let recipient = &message.recipients[attempt.index];
    let delay = (now - message.received_at)
        .to_std()
        .unwrap_or_default()
        .as_secs_f64();
    let attempts = recipient.attempts.saturating_add(u32::from(tried));
    let next = next_attempt
        .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| "-".into());
    tracing::info!(
        queue_id = %message.id,
        recipient = %log_address(&recipient.address),
        relay = %attempt.relay,
        delay = %format!("{delay:.2}"),
        attempts,
        status = %status,
        dsn = %attempt.status,
        tls = %attempt.tls_policy,
        tls_session = %attempt.tls,
        next_attempt = %next,
        reply = ?attempt.reply,
        "delivery"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_queue::{QueueId, Recipient};

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).expect("valid time")
    }

    fn recipient(address: &str, status: RecipientStatus, next: Option<i64>) -> Recipient {
        Recipient {
            address: address.into(),
            status,
            attempts: 1,
            next_attempt_at: next.map(at),
            last_reply: None,
            attempts_log: Vec::new(),
            dsn: None,
        }
    }

    fn message(recipients: Vec<Recipient>) -> Message {
        Message {
            id: QueueId::parse("Q1").expect("valid ID"),
            sender: "a@origin.test".into(),
            size: 10,
            received_at: at(0),
            held: false,
            smtputf8: false,
            body_8bit: false,
            requiretls: false,
            recipients,
            dsn: None,
            delay_notified_at: None,
        }
    }

    fn domains(names: &[&str]) -> HashSet<Option<String>> {
        names.iter().map(|name| Some(name.to_string())).collect()
    }

    #[test]
    fn one_due_recipient_makes_its_whole_domain_due() {
        use RecipientStatus::{Deferred, Delivered, Pending};
        let message = message(vec![
            recipient("b@Dest.test", Deferred, Some(100)),
            recipient("c@dest.test", Deferred, Some(10)),
            recipient("d@other.test", Deferred, Some(100)),
            recipient("e@third.test", Delivered, None),
            recipient("f@fourth.test", Pending, Some(0)),
        ]);
        assert_eq!(
            due_domains(&message, at(5), false),
            domains(&["fourth.test"])
        );
        assert_eq!(
            due_domains(&message, at(10), false),
            domains(&["dest.test", "fourth.test"])
        );
        assert_eq!(
            due_domains(&message, at(5), true),
            domains(&["dest.test", "other.test", "fourth.test"]),
            "after expiry every open recipient is due; finished ones never"
        );
    }

    #[test]
    fn due_is_decided_to_the_millisecond_as_the_index_keeps_it() {
        let mut message = message(vec![recipient(
            "b@dest.test",
            RecipientStatus::Deferred,
            None,
        )]);
        message.recipients[0].next_attempt_at = Some(at(10) + chrono::Duration::microseconds(500));
        let previous_millisecond = at(10) - chrono::Duration::microseconds(100);
        // Earlier than the stored time, but in its millisecond: the queue
        // claimed it as due, so it must be delivered, not given back.
        let same_millisecond = at(10) + chrono::Duration::microseconds(100);
        assert!(due_domains(&message, previous_millisecond, false).is_empty());
        assert_eq!(
            due_domains(&message, same_millisecond, false),
            domains(&["dest.test"])
        );
    }
}
