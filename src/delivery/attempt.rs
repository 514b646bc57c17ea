//! One delivery attempt for one domain's recipients of one message: find
//! the next hop, open (or reuse) a session with the TLS and AUTH it needs,
//! run the transaction, and turn what happened into a verdict per recipient.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use sluice_queue::{Message, QueueId};

use super::Engine;
use super::client::{Body, ClientError, Connection, server_name};
use super::dsn::Diagnostic;
use super::loops;
use super::pool::PoolKey;
use super::requiretls;
use super::route::{Host, NextHop, NextHopKind, RouteError, Transport};
use super::secure::{self, HostPolicy};
use super::tls::TlsMode;
use crate::smtp::client::Envelope;
use crate::smtp::reply::{EnhancedCode, Reply};

/// What became of one recipient in one attempt: sent, deferred or failed,
/// as `smtp::client::disposition` decides for server replies.
pub use crate::smtp::client::Disposition as Verdict;

/// Bodies up to this size are read into memory at once; larger ones stream
/// from a reader thread in chunks of this size.
const IN_MEMORY_BODY: u64 = 256 * 1024;

/// One recipient's result, with everything the log line and a DSN need.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Index in [`Message::recipients`].
    pub index: usize,
    /// Sent, deferred or failed.
    pub verdict: Verdict,
    /// The RFC 3463 status (the reply's, or ours).
    pub status: EnhancedCode,
    /// The remote reply, or our own reason, on one line (stored as
    /// `last_reply`).
    pub reply: String,
    /// What a DSN reports as Diagnostic-Code.
    pub diagnostic: Diagnostic,
    /// The host that answered, for Remote-MTA.
    pub remote_mta: Option<String>,
    /// `host[ip]:port`, or "none" when no server was reached.
    pub relay: String,
    /// `TLSv1.3/CIPHER`, "plaintext", or "none".
    pub tls: String,
    /// Which TLS policy applied (the log line's `tls=`): dane, mta-sts,
    /// required, opportunistic, plaintext, or "none" (no session).
    pub tls_policy: &'static str,
    /// The server that answered offers DSN (RFC 3461): a success report
    /// for a sent recipient is then `delivered`, else `relayed`.
    pub next_hop_dsn: bool,
}

impl Attempt {
    fn from_server(
        index: usize,
        verdict: &crate::smtp::client::Verdict,
        session: &Session,
    ) -> Attempt {
        let reply = verdict.reply.one_line();
        Attempt {
            index,
            verdict: verdict.disposition,
            status: verdict.status(),
            diagnostic: Diagnostic::Smtp(reply.clone()),
            reply,
            remote_mta: Some(session.host.clone()),
            relay: session.relay.clone(),
            tls: session.tls.clone(),
            tls_policy: session.tls_policy,
            next_hop_dsn: session.dsn,
        }
    }

    /// A result decided here, not by a remote reply.
    pub fn local(index: usize, failure: &Failure) -> Attempt {
        let verdict = if failure.permanent {
            Verdict::Failed
        } else {
            Verdict::Deferred
        };
        let (reply, diagnostic) = match &failure.reply {
            Some(reply) => (reply.one_line(), Diagnostic::Smtp(reply.one_line())),
            None => (
                format!("{} {}", failure.status, failure.reason),
                Diagnostic::Local(failure.reason.clone()),
            ),
        };
        Attempt {
            index,
            verdict,
            status: failure.status,
            reply,
            diagnostic,
            remote_mta: failure.remote_mta.clone(),
            relay: failure.relay.clone().unwrap_or_else(|| "none".into()),
            tls: failure.tls.clone().unwrap_or_else(|| "none".into()),
            tls_policy: failure.tls_policy.unwrap_or("none"),
            next_hop_dsn: false,
        }
    }
}

/// Why a whole domain group could not be delivered in this attempt.
#[derive(Debug, Clone)]
pub struct Failure {
    /// True when retrying cannot help.
    pub permanent: bool,
    /// The RFC 3463 status to report.
    pub status: EnhancedCode,
    /// In words, naming the host or domain involved.
    pub reason: String,
    /// The server's reply, when one refused.
    pub reply: Option<Reply>,
    /// The host involved, when one was reached.
    pub remote_mta: Option<String>,
    /// `host[ip]:port`, when a connection was attempted.
    pub relay: Option<String>,
    /// The TLS state of the session, when one was open.
    pub tls: Option<String>,
    /// The TLS policy that applied, when a host was tried under one.
    pub tls_policy: Option<&'static str>,
}

impl Failure {
    /// A failure decided here (no remote involved).
    pub fn local(permanent: bool, status: EnhancedCode, reason: impl Into<String>) -> Failure {
        Failure {
            permanent,
            status,
            reason: reason.into(),
            reply: None,
            remote_mta: None,
            relay: None,
            tls: None,
            tls_policy: None,
        }
    }

    /// The same failure, but worth another try later (class 4).
    pub fn temporary(self) -> Failure {
        Failure {
            permanent: false,
            status: self.status.with_class(4),
            ..self
        }
    }

    fn from_route(error: &RouteError) -> Failure {
        Failure::local(error.is_permanent(), error.status(), error.to_string())
    }

    fn from_client(error: &ClientError, host: &str, relay: &str) -> Failure {
        let status = match error {
            ClientError::Rejected { reply, .. } => reply.status(),
            ClientError::Connect(_) => EnhancedCode::new(4, 4, 1),
            ClientError::Timeout { .. } => EnhancedCode::new(4, 4, 2),
            ClientError::Io { .. } | ClientError::Closed { .. } => EnhancedCode::new(4, 4, 2),
            ClientError::Protocol { .. } | ClientError::Unexpected { .. } => {
                EnhancedCode::new(4, 5, 0)
            }
            ClientError::TlsHandshake(_) => EnhancedCode::new(4, 7, 5),
            ClientError::TlsNotOffered => EnhancedCode::new(4, 7, 4),
            ClientError::TlsInjection => EnhancedCode::new(4, 7, 0),
            ClientError::AuthNotOffered => EnhancedCode::new(4, 7, 4),
            ClientError::Body(_) => EnhancedCode::new(4, 3, 0),
        };
        // Whatever the server said, the session failed, not a recipient:
        // a refusal of the session (smtp::client::disposition) or a
        // transaction broken off before it settled them.
        Failure {
            permanent: false,
            status: status.with_class(4),
            reason: format!("{relay}: {error}"),
            reply: error.reply().cloned(),
            remote_mta: Some(host.to_string()),
            relay: Some(relay.to_string()),
            tls: None,
            tls_policy: None,
        }
    }
}

/// Facts about the open session, for the log and the DSN.
struct Session {
    host: String,
    relay: String,
    tls: String,
    /// The log line's `tls=`.
    tls_policy: &'static str,
    /// The server offers DSN (RFC 3461).
    dsn: bool,
}

/// The recipient's domain, lower case; an address literal loses its
/// brackets (RFC 5321 §4.1.3). `None` when there is no domain part.
pub fn recipient_domain(address: &str) -> Option<String> {
    let (_, domain) = address.rsplit_once('@')?;
    let domain = domain.trim_end_matches('.');
    if domain.is_empty() {
        return None;
    }
    if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        let literal = literal
            .strip_prefix("IPv6:")
            .or_else(|| literal.strip_prefix("ipv6:"))
            .unwrap_or(literal);
        return Some(literal.to_ascii_lowercase());
    }
    Some(domain.to_ascii_lowercase())
}

/// MX hosts looked at per attempt, at most: DNS answers come from the
/// remote side too, and a thousand MX records must not keep one delivery
/// busy for hours.
pub const MAX_HOSTS: usize = 10;
/// Addresses connected to per attempt, at most, over all hosts (as
/// Postfix's `smtp_mx_address_limit`); the rest wait for the next attempt.
pub const MAX_ADDRESSES: usize = 10;

/// Delivers `indices` (recipients of `message` in `domain`): one pass over
/// the next hop's hosts, in order, each host's addresses in turn (RFC 5321
/// §5.1). A host that cannot be reached or will not talk to
/// us passes the recipients on to the next one; so does a transaction that
/// breaks off before the end of data, for the recipients it did not settle.
/// A reply about a recipient (2xx, 4xx or 5xx at RCPT, DATA or the end of
/// data) settles it for this attempt: it is never offered to another host.
///
/// Every index gets exactly one [`Attempt`]. Recipients over a server's
/// per-transaction limit go in follow-up transactions on the same session
/// (RFC 5321 §4.5.3.1.10, see `smtp::client`).
pub async fn deliver_domain(
    engine: &Arc<Engine>,
    message: &Message,
    domain: &str,
    indices: &[usize],
) -> Vec<Attempt> {
    let all = |failure: &Failure| -> Vec<Attempt> {
        indices
            .iter()
            .map(|&index| Attempt::local(index, failure))
            .collect()
    };
    let hop = match engine.router.next_hop(domain).await {
        Ok(hop) => hop,
        Err(error) => return all(&Failure::from_route(&error)),
    };
    let auth = match hop.kind {
        NextHopKind::Smarthost => engine.ctx.config().delivery.relay_auth.clone(),
        _ => None,
    };
    let policy = engine.ctx.config().tls_policy_for(domain);
    // DANE and MTA-STS (delivery::secure) come before the static policy.
    let security = engine
        .secure
        .for_domain(domain, &hop, engine.router.resolver(), &engine.tls.verified)
        .await;
    let mut last_failure = Failure::local(
        false,
        EnhancedCode::new(4, 4, 0),
        format!("no usable host for {domain}"),
    );
    // Recipients settled so far, and those still to be tried.
    let mut settled: Vec<Attempt> = Vec::with_capacity(indices.len());
    let mut open: Vec<usize> = indices.to_vec();
    let finish = |mut settled: Vec<Attempt>, open: &[usize], failure: &Failure| {
        settled.extend(open.iter().map(|&index| Attempt::local(index, failure)));
        settled
    };
    // Hosts before ourselves in the list were tried (RFC 5321 §5.1).
    let mut tried = false;
    let mut connections = 0;
    // RFC 8689 §5: `TLS-Required: No`, read once, only if a policy needs it.
    let mut tls_optional: Option<bool> = None;
    for host in hop.hosts.iter().take(MAX_HOSTS) {
        let mut host_policy = security.for_host(host).await;
        let mut policy = policy;
        let chosen = host_policy.mode(TlsMode::choose(policy, hop.kind, host.port, auth.is_some()));
        if !message.requiretls && requiretls::is_mandatory(&host_policy, chosen) {
            if tls_optional.is_none() {
                let lifted = requiretls::header_says_no(&engine.ctx.queue, &message.id).await;
                tls_optional = Some(lifted);
            }
            if tls_optional == Some(true) {
                tracing::info!(queue_id = %message.id, domain, host = %host.name, "TLS-Required: No: TLS policies lifted for this message (RFC 8689)");
                host_policy = HostPolicy::Static;
                if policy == crate::config::TlsPolicy::Required {
                    policy = crate::config::TlsPolicy::Opportunistic;
                }
            }
        }
        if let HostPolicy::Refused { policy, reason } = &host_policy {
            tracing::info!(queue_id = %message.id, domain, host = %host.name, %reason, "host refused by policy");
            secure::count_session(&engine.ctx.metrics, domain, policy, false);
            let mut failure = Failure::local(false, EnhancedCode::new(4, 7, 5), reason.clone());
            failure.tls_policy = Some(policy);
            last_failure = failure;
            tried = true;
            continue;
        }
        // An LMTP UNIX socket has no address to look up (see open_session).
        let unix = matches!(hop.transport, Transport::LmtpUnix(_));
        let addresses = match unix {
            true => Ok(vec![std::net::IpAddr::from([0, 0, 0, 0])]),
            false => engine.router.addresses(&hop, host).await,
        };
        let addresses = match addresses {
            Ok(addresses) => addresses,
            Err(error) => {
                let mut failure = Failure::from_route(&error);
                // A missing MX host is the domain's DNS being broken, maybe
                // for a while; only the implicit MX (the domain itself has no
                // address) is final.
                if hop.kind != NextHopKind::ImplicitMx {
                    failure = failure.temporary();
                }
                tracing::debug!(domain, host = %host.name, %error, "next hop has no address");
                last_failure = failure;
                tried = true;
                continue;
            }
        };
        let mut mode =
            host_policy.mode(TlsMode::choose(policy, hop.kind, host.port, auth.is_some()));
        if unix {
            mode = TlsMode::Disabled;
        }
        if message.requiretls {
            match requiretls::host_rule(
                hop.kind,
                &host_policy,
                mode,
                security.mx_secure,
                &host.name,
            ) {
                requiretls::HostRule::Tls(checked) => mode = checked,
                requiretls::HostRule::Refused(reason) => {
                    last_failure = Failure::local(true, requiretls::STATUS, reason);
                    tried = true;
                    continue;
                }
            }
        }
        for ip in addresses {
            if connections >= MAX_ADDRESSES {
                tracing::debug!(domain, "address limit reached for this attempt");
                return finish(settled, &open, &last_failure);
            }
            let address = SocketAddr::new(ip, host.port);
            let mut relay = format!("{}[{}]:{}", host.name, ip, host.port);
            if unix {
                relay = host.name.clone();
            }
            if loops::loops_back(&engine.ctx.config().listeners, hop.kind, address) {
                // RFC 5321 §5.1: ourselves and anything after us is out.
                tracing::warn!(domain, %relay, "next hop is this server: mail loop");
                if tried {
                    return finish(settled, &open, &last_failure);
                }
                let status = EnhancedCode::new(5, 4, 6);
                return all(&Failure::local(true, status, loops::reason(domain)));
            }
            tried = true;
            connections += 1;
            let key = PoolKey {
                address,
                host: host.name.clone(),
                tls: mode,
                auth_user: auth.as_ref().map(|auth| auth.username.clone()),
            };
            let mut ran = None;
            // A pooled connection may have been closed by the server while
            // idle: on a failure before the transaction got going, open a
            // fresh one and try again.
            if let Some(connection) = engine.pool.take(&key) {
                let target = Target {
                    host,
                    relay: &relay,
                    key: &key,
                    reused: true,
                    policy: &host_policy,
                };
                match transaction(engine, connection, &target, message, &open).await {
                    Ok(result) => ran = Some(result),
                    Err(error) => {
                        tracing::debug!(%relay, %error, "reused connection failed; reconnecting");
                    }
                }
            }
            let ran = match ran {
                Some(ran) => ran,
                None => {
                    // A shaping rule's connection limit counts idle ones too.
                    engine.pool.make_room().await;
                    let (connector, observed) =
                        secure::connector_for(&host_policy, &engine.tls.roots);
                    let opened =
                        open_session(engine, host, address, mode, &hop, connector.as_ref()).await;
                    secure::observe_session(
                        engine,
                        domain,
                        &relay,
                        &host_policy,
                        mode,
                        &opened,
                        observed.as_ref(),
                    );
                    let connection = match opened {
                        Ok(connection) => connection,
                        Err(error) => {
                            tracing::debug!(domain, %relay, %error, "session setup failed");
                            // A host that will not talk to us (5xx greeting,
                            // EHLO or AUTH refused) says nothing about the
                            // recipients: try the next host, and defer if
                            // none works (as Postfix's smtp_skip_5xx_greeting
                            // and smtp_sasl_auth_soft_bounce).
                            last_failure = Failure::from_client(&error, &host.name, &relay);
                            // Name the policy that made TLS mandatory, so
                            // `queue show` says why (DANE, MTA-STS).
                            if let Some(why) = host_policy.describe(&security, host) {
                                last_failure.reason = format!("{why}: {}", last_failure.reason);
                                last_failure.reply = None;
                                last_failure.tls_policy = Some(host_policy.label(mode, false));
                            }
                            if message.requiretls && matches!(error, ClientError::TlsNotOffered) {
                                let reason = requiretls::session_rule(false, false, &host.name);
                                let reason = reason.err().unwrap_or_default();
                                last_failure = Failure::local(true, requiretls::STATUS, reason);
                            }
                            continue;
                        }
                    };
                    let target = Target {
                        host,
                        relay: &relay,
                        key: &key,
                        reused: false,
                        policy: &host_policy,
                    };
                    match transaction(engine, connection, &target, message, &open).await {
                        Ok(ran) => ran,
                        Err(error) => Ran::BrokenOff {
                            settled: Vec::new(),
                            open: open.clone(),
                            failure: Failure::from_client(&error, &host.name, &relay),
                        },
                    }
                }
            };
            match ran {
                Ran::Done(attempts) => {
                    settled.extend(attempts);
                    return settled;
                }
                Ran::BrokenOff {
                    settled: now_settled,
                    open: still_open,
                    failure,
                } => {
                    tracing::debug!(
                        queue_id = %message.id,
                        domain,
                        %relay,
                        reason = %failure.reason,
                        open = still_open.len(),
                        "transaction broke off; trying the next host for the rest"
                    );
                    settled.extend(now_settled);
                    if still_open.is_empty() {
                        return settled;
                    }
                    open = still_open;
                    last_failure = failure;
                }
            }
        }
    }
    finish(settled, &open, &last_failure)
}

/// Connects, reads the greeting, EHLO, then TLS and AUTH as `mode` and the
/// smarthost settings say.
async fn open_session(
    engine: &Arc<Engine>,
    host: &Host,
    address: SocketAddr,
    mode: TlsMode,
    hop: &NextHop,
    connector: Option<&tokio_rustls::TlsConnector>,
) -> Result<Connection, ClientError> {
    let config = engine.ctx.config();
    let hostname = config.hostname.as_str();
    let mut connection = match &hop.transport {
        Transport::LmtpUnix(path) => {
            Connection::connect_unix(path, address, engine.timeouts).await?
        }
        _ => Connection::connect(address, engine.timeouts).await?,
    };
    let lmtp = hop.transport.is_lmtp();
    if mode == TlsMode::Implicit {
        connection = connection
            .start_implicit_tls(&engine.tls.verified, server_name(&host.name)?)
            .await?;
    }
    connection.open_as(hostname, lmtp).await?;
    match mode {
        TlsMode::Disabled | TlsMode::Implicit => {}
        TlsMode::Required | TlsMode::Dane => {
            if !connection.capabilities().starttls {
                let _ = connection.quit().await;
                return Err(ClientError::TlsNotOffered);
            }
            connection.send_starttls().await?;
            // DANE brings its own verifier (delivery::dane).
            let connector = connector.unwrap_or(&engine.tls.verified);
            connection = connection
                .finish_starttls(connector, server_name(&host.name)?, hostname)
                .await?;
        }
        TlsMode::Opportunistic if connection.capabilities().starttls => {
            connection = match connection.send_starttls().await {
                Ok(()) => {
                    let name = server_name(&host.name)
                        .or_else(|_| server_name(&address.ip().to_string()))?;
                    match connection
                        .finish_starttls(
                            connector.unwrap_or(&engine.tls.unverified),
                            name,
                            hostname,
                        )
                        .await
                    {
                        Ok(upgraded) => upgraded,
                        Err(
                            error @ (ClientError::TlsHandshake(_) | ClientError::Timeout { .. }),
                        ) => plaintext_fallback(engine, host, address, lmtp, &error).await?,
                        Err(error) => return Err(error),
                    }
                }
                // STARTTLS refused: the session goes on in plaintext,
                // unless the server is closing it (RFC 5321 §3.8).
                Err(ClientError::Rejected { reply, .. }) if reply.code() != 421 => {
                    tracing::debug!(%reply, "STARTTLS refused; continuing in plaintext");
                    connection
                }
                // Plaintext arrived where the handshake should start: this
                // connection cannot be trusted, a fresh plaintext one can.
                Err(error @ ClientError::TlsInjection) => {
                    drop(connection);
                    plaintext_fallback(engine, host, address, lmtp, &error).await?
                }
                Err(error) => return Err(error),
            };
        }
        TlsMode::Opportunistic => {}
    }
    if let (NextHopKind::Smarthost, Some(auth)) =
        (hop.kind, &engine.ctx.config().delivery.relay_auth)
    {
        // Never send the password in clear.
        if connection.tls().is_none() {
            return Err(ClientError::TlsNotOffered);
        }
        connection
            .authenticate(&auth.username, &auth.password)
            .await?;
    }
    Ok(connection)
}

/// RFC 7435: when opportunistic TLS fails on a host, deliver to that host
/// in plaintext, on a fresh connection that does not try STARTTLS.
async fn plaintext_fallback(
    engine: &Arc<Engine>,
    host: &Host,
    address: SocketAddr,
    lmtp: bool,
    error: &ClientError,
) -> Result<Connection, ClientError> {
    tracing::info!(
        relay = %format!("{}[{}]:{}", host.name, address.ip(), address.port()),
        %error,
        "opportunistic TLS failed; retrying in plaintext"
    );
    let mut connection = Connection::connect(address, engine.timeouts).await?;
    connection
        .open_as(&engine.ctx.config().hostname, lmtp)
        .await?;
    Ok(connection)
}

/// Where a session goes: the host, its `host[ip]:port` for logs, the pool
/// key, and whether the connection came from the pool.
struct Target<'a> {
    host: &'a Host,
    relay: &'a str,
    key: &'a PoolKey,
    reused: bool,
    /// The host's TLS policy (for the log line's `tls=`).
    policy: &'a HostPolicy,
}

/// What a transaction on one host came to.
enum Ran {
    /// Every recipient has its attempt.
    Done(Vec<Attempt>),
    /// The transaction broke off before the end of data: `settled` got a
    /// reply of their own before that, `open` may try the next host, and
    /// `failure` is why they are still open.
    BrokenOff {
        settled: Vec<Attempt>,
        open: Vec<usize>,
        failure: Failure,
    },
}

/// Runs the transaction on an open session. `Err` only on a reused
/// (pooled) connection, for failures before anything was sent that could
/// have been accepted, so a stale connection can be replaced without risking
/// a duplicate.
async fn transaction(
    engine: &Arc<Engine>,
    mut connection: Connection,
    target: &Target<'_>,
    message: &Message,
    indices: &[usize],
) -> Result<Ran, ClientError> {
    let session = Session {
        host: target.host.name.clone(),
        relay: target.relay.to_string(),
        tls: connection
            .tls()
            .map(ToString::to_string)
            .unwrap_or_else(|| "plaintext".into()),
        tls_policy: target
            .policy
            .label(target.key.tls, connection.tls().is_some()),
        dsn: connection.capabilities().dsn,
    };
    let with_session = |failure: Failure| -> Failure {
        Failure {
            remote_mta: Some(session.host.clone()),
            relay: Some(session.relay.clone()),
            tls: Some(session.tls.clone()),
            tls_policy: Some(session.tls_policy),
            ..failure
        }
    };
    let local = |failure: Failure| -> Ran {
        let failure = with_session(failure);
        Ran::Done(
            indices
                .iter()
                .map(|&index| Attempt::local(index, &failure))
                .collect(),
        )
    };
    let capabilities = connection.capabilities().clone();
    if message.requiretls
        && let Err(reason) = requiretls::session_rule(
            connection.tls().is_some(),
            capabilities.requiretls,
            &session.host,
        )
    {
        engine.pool.put(target.key.clone(), connection);
        return Ok(local(Failure::local(true, requiretls::STATUS, reason)));
    }
    // RFC 1870 §6.1: a declared limit below the message size is final.
    if capabilities.rejects_size(message.size) {
        engine.pool.put(target.key.clone(), connection);
        return Ok(local(Failure::local(
            true,
            EnhancedCode::new(5, 3, 4),
            format!(
                "message size {} exceeds the limit of {} bytes at {}",
                message.size,
                capabilities.size.unwrap_or(0),
                session.host
            ),
        )));
    }
    let recipients: Vec<String> = indices
        .iter()
        .map(|&index| message.recipients[index].address.clone())
        .collect();
    let smtputf8_needed = message.smtputf8 && needs_smtputf8(engine, message, &recipients).await;
    // RFC 6531 §3.4: no downgrade; the message cannot go to this server.
    if smtputf8_needed && !capabilities.smtputf8 {
        engine.pool.put(target.key.clone(), connection);
        return Ok(local(Failure::local(
            true,
            EnhancedCode::new(5, 6, 7),
            format!(
                "{} does not support SMTPUTF8, which the message needs",
                session.host
            ),
        )));
    }
    let body = match open_body(engine, &message.id, message.size) {
        Ok(body) => body,
        Err(error) => {
            engine.pool.put(target.key.clone(), connection);
            return Ok(local(Failure::local(
                false,
                EnhancedCode::new(4, 3, 0),
                format!("cannot read the queued body: {error}"),
            )));
        }
    };
    // Only messages that carry DSN parameters pay for copying them.
    let recipient_dsn: Vec<Option<sluice_queue::RecipientDsn>> = if indices
        .iter()
        .any(|&index| message.recipients[index].dsn.is_some())
    {
        indices
            .iter()
            .map(|&index| message.recipients[index].dsn.clone())
            .collect()
    } else {
        Vec::new()
    };
    let envelope = Envelope {
        sender: &message.sender,
        recipients: &recipients,
        size: Some(message.size),
        eight_bit: message.body_8bit,
        smtputf8: message.smtputf8 && capabilities.smtputf8,
        message_dsn: message.dsn.as_ref(),
        recipient_dsn: &recipient_dsn,
        chunking: engine.ctx.config().delivery.chunking,
        requiretls: message.requiretls,
    };
    // A follow-up transaction (too many recipients) sends the body again.
    let mut first = Some(body);
    let mut bodies = || match first.take() {
        Some(body) => Ok(body),
        None => open_body(engine, &message.id, message.size),
    };
    engine.ctx.metrics.deliveries_in_flight.inc();
    let result = connection.send(envelope, &mut bodies).await;
    engine.ctx.metrics.deliveries_in_flight.dec();
    match result {
        Ok(verdicts) => {
            if connection.is_usable() && !engine.ctx.shutdown.is_cancelled() {
                engine.pool.put(target.key.clone(), connection);
            } else {
                connection.quit().await;
            }
            Ok(Ran::Done(
                indices
                    .iter()
                    .zip(verdicts.iter())
                    .map(|(&index, verdict)| Attempt::from_server(index, verdict, &session))
                    .collect(),
            ))
        }
        Err(broken) => {
            if target.reused && broken.before_transaction {
                return Err(broken.error);
            }
            // The session is in an unknown state: close it (a 421 asked
            // for that anyway).
            drop(connection);
            let failure = with_session(Failure::from_client(
                &broken.error,
                &session.host,
                target.relay,
            ));
            // RFC 5321 §3.3: a recipient refused at RCPT keeps its own
            // reply, whatever happened to the transaction afterwards.
            let mut settled = Vec::new();
            let mut open = Vec::new();
            for (&index, verdict) in indices.iter().zip(broken.verdicts.iter()) {
                match verdict {
                    Some(verdict) => settled.push(Attempt::from_server(index, verdict, &session)),
                    None => open.push(index),
                }
            }
            // After the final dot the server may hold the message (RFC
            // 5321 §6.1 and RFC 1047): no other host gets it in this
            // attempt. A body we cannot read fails everywhere alike.
            if broken.data_sent || matches!(broken.error, ClientError::Body(_)) {
                settled.extend(open.iter().map(|&index| Attempt::local(index, &failure)));
                return Ok(Ran::Done(settled));
            }
            Ok(Ran::BrokenOff {
                settled,
                open,
                failure,
            })
        }
    }
}

/// RFC 6531 §3.4: SMTPUTF8 is needed when an envelope address or the header
/// section is not ASCII.
async fn needs_smtputf8(engine: &Arc<Engine>, message: &Message, recipients: &[String]) -> bool {
    if !message.sender.is_ascii() || recipients.iter().any(|r| !r.is_ascii()) {
        return true;
    }
    let Ok(reader) = engine.ctx.queue.open_body(&message.id) else {
        return true;
    };
    let headers_are_ascii = |reader| {
        super::dsn::read_header_section(reader, 1024 * 1024).is_ok_and(|headers| headers.is_ascii())
    };
    // Only a body file is read on the blocking pool; one in the database
    // is read from its memory cache here.
    if !reader.is_file() {
        return !headers_are_ascii(reader);
    }
    tokio::task::spawn_blocking(move || !headers_are_ascii(reader))
        .await
        .unwrap_or(true)
}

/// Opens the queued body: small ones held in the database at once, the
/// others (body files) streamed by a reader on the blocking pool, so a
/// 50 MiB message never sits in memory and no file is read on a runtime
/// worker.
fn open_body(engine: &Arc<Engine>, id: &QueueId, size: u64) -> std::io::Result<Body> {
    let mut reader = engine
        .ctx
        .queue
        .open_body(id)
        .map_err(std::io::Error::other)?;
    if size <= IN_MEMORY_BODY && !reader.is_file() {
        let mut bytes = Vec::with_capacity(size as usize);
        reader.read_to_end(&mut bytes)?;
        return Ok(Body::Memory(Some(Bytes::from(bytes))));
    }
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        loop {
            let mut chunk = vec![0u8; IN_MEMORY_BODY as usize];
            match reader.read(&mut chunk) {
                Ok(0) => break,
                Ok(read) => {
                    chunk.truncate(read);
                    if sender.blocking_send(Ok(Bytes::from(chunk))).is_err() {
                        break;
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => {
                    let _ = sender.blocking_send(Err(error));
                    break;
                }
            }
        }
    });
    Ok(Body::Stream(receiver))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipient_domains_are_lower_case_and_literals_unbracketed() {
        assert_eq!(
            recipient_domain("a@Example.NET"),
            Some("example.net".into())
        );
        assert_eq!(recipient_domain("a@b@c.test"), Some("c.test".into()));
        assert_eq!(recipient_domain("a@[127.0.0.1]"), Some("127.0.0.1".into()));
        assert_eq!(recipient_domain("a@[IPv6:::1]"), Some("::1".into()));
        assert_eq!(recipient_domain("postmaster"), None);
        assert_eq!(recipient_domain("a@"), None);
    }

    #[test]
    fn local_failures_read_like_status_and_reason() {
        let failure = Failure::local(true, EnhancedCode::new(5, 1, 10), "null MX");
        let attempt = Attempt::local(3, &failure);
        assert_eq!(attempt.verdict, Verdict::Failed);
        assert_eq!(attempt.reply, "5.1.10 null MX");
        assert_eq!(attempt.relay, "none");
        assert_eq!(attempt.diagnostic, Diagnostic::Local("null MX".into()));
    }
}
