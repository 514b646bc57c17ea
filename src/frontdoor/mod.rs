//! The front door of an Internet MX: what a client from outside meets
//! before its mail is taken.
//!
//! - `screen`: at connect, on relay listeners: the pregreet test and DNS
//!   lists, with an allowlist of clients that passed (`[screen]`);
//! - `rates`: connection, message and recipient rates per client
//!   (`[client_limits]`), local or shared through `[cluster]` Redis;
//! - `recipients` and `callahead`: who exists in `accept_domains`
//!   (`[recipients]`): files, and the answer of the domain's next hop,
//!   cached;
//! - `greylist`: `[greylisting]`.
//!
//! [`FrontDoor`] is built from one configuration and swapped by a reload;
//! what it learns ([`Memory`]: caches, buckets, triplets) outlives reloads.
//! The session asks it through [`crate::smtp::session::Action::Check`] at
//! MAIL and RCPT; the listener calls [`FrontDoor::at_connect`].
//!
//! Order at RCPT: the recipient rate (`452 4.7.0`), then whether the
//! recipient exists (`550 5.1.1`, or `450 4.1.1` when the next hop cannot
//! say), then greylisting (`451 4.7.1`), so a client is never greylisted
//! for an address that does not exist.

pub mod callahead;
pub mod greylist;
pub mod rates;
pub mod recipients;
pub mod screen;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use tokio::net::TcpStream;

use crate::config::{Config, FrontDoorConfig, VerifyMode};
use crate::context::Context;
use crate::delivery::route::Router;
use crate::policy::Policy;
use crate::smtp::reply::{EnhancedCode, Reply};
use crate::smtp::session::Check;

use callahead::Answer;
use rates::{ClientRates, Counted};
use recipients::RecipientList;

/// The most call-ahead answers cached; past it, expired ones go, then all.
const MAX_VERIFIED: usize = 100_000;

/// What the front door has learnt, kept across reloads.
#[derive(Debug, Default)]
pub struct Memory {
    /// Call-ahead answers: lowercased address -> (exists, until).
    verified: Mutex<HashMap<String, (bool, Instant)>>,
    allowlist: screen::Allowlist,
    rates: ClientRates,
    greylist: Mutex<greylist::Greylist>,
}

/// The front door under one configuration.
pub struct FrontDoor {
    settings: FrontDoorConfig,
    policy: Policy,
    hostname: String,
    dns_timeout: Duration,
    recipients: Arc<RecipientList>,
    /// For call-ahead: the next hops, as delivery finds them.
    router: Router,
    resolver: TokioResolver,
    ctx: Context,
    memory: Arc<Memory>,
}

/// A refusal at MAIL or RCPT: the reply and the log reason.
pub type Refusal = (Reply, &'static str);

impl FrontDoor {
    /// The front door for `config`, with the recipients files as loaded
    /// and what earlier generations learnt.
    pub fn new(
        ctx: &Context,
        config: &Config,
        recipients: Arc<RecipientList>,
        memory: Arc<Memory>,
    ) -> FrontDoor {
        FrontDoor {
            settings: config.front_door.clone(),
            policy: Policy::new(&config.policy),
            hostname: config.hostname.clone(),
            dns_timeout: config.dns.timeout,
            recipients,
            router: Router::with_resolver(config, ctx.resolver.clone()),
            resolver: ctx.resolver.clone(),
            ctx: ctx.clone(),
            memory,
        }
    }

    /// True when MAIL and RCPT are to be checked.
    pub fn checks_commands(&self) -> bool {
        let settings = &self.settings;
        settings.recipients.is_active()
            || settings.client_limits.messages.is_some()
            || settings.client_limits.recipients.is_some()
            || settings.greylisting.enabled
    }

    fn refused(&self, reason: &'static str) {
        self.ctx
            .metrics
            .front_door_refusals
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
    }

    fn shared(&self) -> Option<&Arc<crate::delivery::shaping::shared::Shared>> {
        self.ctx.shaper.shared()
    }

    /// At connect, before the greeting: the connection rate (`421 4.7.0`)
    /// and, on relay listeners, the screen (`554 5.7.1`). `None`: serve the
    /// client; `Some(None)`: it left; `Some(Some(reply))`: refuse it.
    pub async fn at_connect(
        &self,
        stream: &TcpStream,
        client: IpAddr,
        relay_listener: bool,
    ) -> Option<Option<Reply>> {
        let trusted = self.policy.is_relay_client(client);
        if let Some(rate) = self.settings.client_limits.connections
            && !trusted
            && !self
                .memory
                .rates
                .take(Counted::Connections, rate, client, self.shared())
                .await
        {
            self.refused("connection_rate");
            let reply = Reply::new(
                421,
                EnhancedCode(4, 7, 0),
                format!(
                    "{} Error: too many connections from {client}, try again later",
                    self.hostname
                ),
            );
            tracing::info!(client = %client, reason = "connection rate", limit = %rate,
                "connection refused");
            return Some(Some(reply));
        }
        let screen = &self.settings.screen;
        if !relay_listener || !screen.is_active() || trusted {
            return None;
        }
        let now = Instant::now();
        if self.memory.allowlist.contains(client, now) {
            return None;
        }
        match screen::screen(screen, &self.resolver, self.dns_timeout, stream, client).await {
            screen::Verdict::Pass => {
                self.memory
                    .allowlist
                    .insert(client, now + screen.allowlist_ttl, now);
                None
            }
            screen::Verdict::Gone => Some(None),
            screen::Verdict::Refuse(refusal) => {
                self.refused(refusal.reason());
                tracing::info!(client = %client, reason = refusal.reason(),
                    detail = %refusal.detail(), "connection refused by the screen");
                Some(Some(Reply::new(
                    554,
                    EnhancedCode(5, 7, 1),
                    refusal.text(client),
                )))
            }
        }
    }

    /// The check of one MAIL or RCPT; `None` lets it go on.
    pub async fn check(&self, check: &Check) -> Option<Refusal> {
        let limits = &self.settings.client_limits;
        let Some(recipient) = &check.recipient else {
            if check.trusted {
                return None;
            }
            let rate = limits.messages?;
            if self
                .memory
                .rates
                .take(Counted::Messages, rate, check.client, self.shared())
                .await
            {
                return None;
            }
            self.refused("message_rate");
            return Some((
                Reply::new(
                    452,
                    EnhancedCode(4, 7, 0),
                    "Error: too many messages, slow down",
                ),
                "message rate",
            ));
        };
        if let Some(rate) = limits.recipients
            && !check.trusted
            && !self
                .memory
                .rates
                .take(Counted::Recipients, rate, check.client, self.shared())
                .await
        {
            self.refused("recipient_rate");
            return Some((
                Reply::new(
                    452,
                    EnhancedCode(4, 7, 0),
                    "Error: too many recipients, slow down",
                ),
                "recipient rate",
            ));
        }
        let (local, domain) = recipient.rsplit_once('@')?;
        // Only our own domains are checked; postmaster always exists
        // (RFC 5321 §4.5.1).
        if !self.policy.accepts_domain(domain) || local.eq_ignore_ascii_case("postmaster") {
            return None;
        }
        if let Some(refusal) = self.verify(recipient).await {
            return Some(refusal);
        }
        self.greylist(check, recipient)
    }

    /// Whether `recipient` of one of our domains exists.
    async fn verify(&self, recipient: &str) -> Option<Refusal> {
        let settings = &self.settings.recipients;
        if self.recipients.contains(recipient) {
            return None;
        }
        if settings.verify == VerifyMode::Off {
            if !self.recipients.is_configured() {
                return None;
            }
            self.refused("unknown_recipient");
            return Some(unknown(recipient));
        }
        let key = recipient.to_lowercase();
        let now = Instant::now();
        let cached = lock(&self.memory.verified)
            .get(&key)
            .filter(|(_, until)| *until > now)
            .map(|(exists, _)| *exists);
        let exists = match cached {
            Some(exists) => {
                tracing::debug!(recipient = %recipient, exists, "recipient known from the cache");
                exists
            }
            None => {
                let answer = callahead::probe(&self.router, &self.hostname, recipient).await;
                tracing::info!(recipient = %recipient, answer = ?answer, "call-ahead");
                let exists = match answer {
                    Answer::Exists => true,
                    Answer::Unknown(_) => false,
                    Answer::Unavailable(_) => {
                        self.refused("unverified_recipient");
                        return Some((
                            Reply::new(
                                450,
                                EnhancedCode(4, 1, 1),
                                format!(
                                    "<{recipient}>: Recipient address verification failed, try again later"
                                ),
                            ),
                            "recipient not verifiable now",
                        ));
                    }
                };
                let ttl = if exists {
                    settings.positive_ttl
                } else {
                    settings.negative_ttl
                };
                let mut verified = lock(&self.memory.verified);
                if verified.len() >= MAX_VERIFIED {
                    verified.retain(|_, (_, until)| *until > now);
                    if verified.len() >= MAX_VERIFIED {
                        verified.clear();
                    }
                }
                verified.insert(key, (exists, now + ttl));
                exists
            }
        };
        if exists {
            return None;
        }
        self.refused("unknown_recipient");
        Some(unknown(recipient))
    }

    fn greylist(&self, check: &Check, recipient: &str) -> Option<Refusal> {
        let settings = &self.settings.greylisting;
        if !settings.enabled || check.trusted {
            return None;
        }
        let wait = lock(&self.memory.greylist).check(
            check.client,
            &check.sender,
            recipient,
            settings.delay,
            settings.expiry,
            Instant::now(),
        )?;
        self.refused("greylisted");
        Some((
            Reply::new(
                451,
                EnhancedCode(4, 7, 1),
                format!(
                    "<{recipient}>: Greylisted, try again in {}s",
                    wait.as_secs().max(1)
                ),
            ),
            "greylisted",
        ))
    }
}

fn unknown(recipient: &str) -> Refusal {
    (
        Reply::new(
            550,
            EnhancedCode(5, 1, 1),
            format!("<{recipient}>: Recipient address rejected: User unknown"),
        ),
        "unknown recipient",
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
