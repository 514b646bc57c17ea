//! One delivery attempt for one domain's recipients of one message: find
//! the next hop, walk its hosts as [`HostWalk`] says, open (or reuse) a
//! session with the TLS and AUTH it needs, run the transaction, and hand
//! what happened back to the walk. The decisions are the planners'
//! (`delivery::plan`); this file does the I/O.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use sluice_queue::{Message, QueueId};

use super::Engine;
use super::client::{Body, ClientError, Connection, server_name};
use super::plan::walk::{
    requiretls_refusal, requiretls_setup_failure, size_refusal, smtputf8_refusal,
};
use super::plan::{DeliveryError, Fallback, HostWalk, Ran, SessionFacts, Step};
use super::pool::{PoolKey, Shaped};
use super::requiretls;
use super::route::{Host, NextHopKind, Transport};
use super::secure::{self, HostPolicy};
use super::tls::TlsMode;
use crate::config::{Config, RelayAuth, ShapingRule};
use crate::smtp::client::Envelope;

pub use super::plan::{Attempt, Failure, MAX_ADDRESSES, MAX_HOSTS, Verdict, recipient_domain};

/// Bodies up to this size are read into memory at once; larger ones stream
/// from a reader thread in chunks of this size.
const IN_MEMORY_BODY: u64 = 256 * 1024;

/// The shaping rule one attempt runs under.
pub struct Shaping<'a> {
    /// The rule: a reply matching its `suspend_on` ends the host walk.
    pub rule: &'a ShapingRule,
    /// What the connection pool counts against the destination.
    pub pool: Shaped,
}

/// Delivers `indices` (recipients of `message` in `domain`): the next hop's
/// hosts in the order [`HostWalk`] gives (RFC 5321 §5.1), under `shaping`
/// when a rule applies.
///
/// Every index gets exactly one [`Attempt`]. Recipients over a server's
/// per-transaction limit go in follow-up transactions on the same session
/// (RFC 5321 §4.5.3.1.10, see `smtp::client`). `config` is the attempt's
/// one snapshot of the settings: it holds for the whole attempt, whatever a
/// reload does meanwhile.
pub async fn deliver_domain(
    engine: &Arc<Engine>,
    config: &Config,
    message: &Message,
    domain: &str,
    indices: &[usize],
    shaping: Option<&Shaping<'_>>,
) -> Vec<Attempt> {
    let hop = match engine.router.next_hop(domain).await {
        Ok(hop) => hop,
        Err(error) => {
            let failure = Failure::from(DeliveryError::Route(error));
            return indices
                .iter()
                .map(|&index| Attempt::local(index, &failure))
                .collect();
        }
    };
    let auth = match hop.kind {
        NextHopKind::Smarthost => config.delivery.relay_auth.as_ref(),
        _ => None,
    };
    let policy = config.tls_policy_for(domain);
    let shaped = shaping.map(|shaping| &shaping.pool);
    // DANE and MTA-STS (delivery::secure) come before the static policy.
    let security = engine
        .secure
        .for_domain(domain, &hop, engine.router.resolver(), &engine.tls.verified)
        .await;
    let mut walk = HostWalk::new(
        domain,
        hop.kind,
        hop.hosts.len(),
        indices,
        &config.listeners,
        shaping.map(|shaping| shaping.rule),
    );
    // An LMTP UNIX socket has no address to look up (see open_session).
    let unix = matches!(hop.transport, Transport::LmtpUnix(_));
    // RFC 8689 §5: `TLS-Required: No`, read once, only if a policy needs it.
    let mut tls_optional: Option<bool> = None;
    // The TLS policy and mode of the host whose addresses are being tried.
    let mut current: Option<(HostPolicy, TlsMode)> = None;
    loop {
        let (host, address) = match walk.step() {
            Step::Done(attempts) => {
                if let Some(reply) = walk.throttled() {
                    tracing::info!(queue_id = %message.id, domain, reply, "throttled: no other host is tried in this attempt");
                }
                return attempts;
            }
            Step::LookUp { host } => {
                let host = &hop.hosts[host];
                let mut host_policy = security.for_host(host).await;
                let mut policy = policy;
                let chosen =
                    host_policy.mode(TlsMode::choose(policy, hop.kind, host.port, auth.is_some()));
                if !message.requiretls && requiretls::is_mandatory(&host_policy, chosen) {
                    if tls_optional.is_none() {
                        let lifted =
                            requiretls::header_says_no(&engine.ctx.queue, &message.id).await;
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
                    walk.refused(Failure {
                        tls_policy: Some(policy),
                        ..Failure::from(DeliveryError::HostRefused {
                            reason: reason.clone(),
                        })
                    });
                    continue;
                }
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
                            tracing::info!(queue_id = %message.id, domain, host = %host.name, %reason, "host refused for a REQUIRETLS message");
                            walk.refused(Failure::from(DeliveryError::RequireTls { reason }));
                            continue;
                        }
                    }
                }
                // An LMTP UNIX socket has no address: the walk gets one
                // placeholder (port 0, which no listener has).
                let addresses = match unix {
                    true => Ok(vec![std::net::IpAddr::from([0, 0, 0, 0])]),
                    false => engine.router.addresses(&hop, host).await,
                };
                match addresses {
                    Ok(addresses) => walk.resolved(
                        addresses
                            .into_iter()
                            .map(|ip| SocketAddr::new(ip, host.port)),
                    ),
                    Err(error) => {
                        tracing::debug!(domain, host = %host.name, %error, "next hop has no address");
                        walk.unresolved(error);
                    }
                }
                current = Some((host_policy, mode));
                continue;
            }
            Step::Connect { host, address } => (&hop.hosts[host], address),
        };
        let (host_policy, mode) = current
            .as_ref()
            .expect("a host is looked up before its addresses are tried");
        let mode = *mode;
        let mut relay = format!("{}[{}]:{}", host.name, address.ip(), address.port());
        if unix {
            relay = host.name.clone();
        }
        let key = PoolKey {
            address,
            host: host.name.clone(),
            tls: mode,
            auth_user: auth.map(|auth| auth.username.clone()),
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
                policy: host_policy,
                shaped,
            };
            match transaction(engine, config, connection, &target, message, walk.open()).await {
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
                engine.pool.make_room(shaped).await;
                let (connector, observed) = secure::connector_for(host_policy, &engine.tls.roots);
                let opened = open_session(
                    engine,
                    config,
                    auth,
                    host,
                    address,
                    mode,
                    hop.kind,
                    &hop.transport,
                    connector.as_ref(),
                )
                .await;
                secure::observe_session(
                    engine,
                    domain,
                    &relay,
                    host_policy,
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
                        let mut failure = Failure::from_client(&error, &host.name, &relay);
                        // Name the policy that made TLS mandatory, so
                        // `queue show` says why (DANE, MTA-STS).
                        if let Some(why) = host_policy.describe(&security, host) {
                            failure = Failure {
                                reply: None,
                                tls_policy: Some(host_policy.label(mode, false)),
                                error: DeliveryError::MandatoryTls {
                                    why,
                                    source: Box::new(failure.error),
                                },
                                ..failure
                            };
                        }
                        // RFC 8689 4.2: a REQUIRETLS message never goes
                        // without TLS: no STARTTLS is final.
                        if let Some(error) =
                            requiretls_setup_failure(message.requiretls, &error, &host.name)
                        {
                            failure = Failure::from(error);
                        }
                        walk.failed(failure);
                        continue;
                    }
                };
                let target = Target {
                    host,
                    relay: &relay,
                    key: &key,
                    reused: false,
                    policy: host_policy,
                    shaped,
                };
                match transaction(engine, config, connection, &target, message, walk.open()).await {
                    Ok(ran) => ran,
                    Err(error) => Ran::BrokenOff {
                        settled: Vec::new(),
                        open: walk.open().to_vec(),
                        failure: Failure::from_client(&error, &host.name, &relay),
                    },
                }
            }
        };
        if let Ran::BrokenOff { open, failure, .. } = &ran {
            tracing::debug!(
                queue_id = %message.id,
                domain,
                %relay,
                reason = %failure.error,
                open = open.len(),
                "transaction broke off; trying the next host for the rest"
            );
        }
        walk.ran(ran);
    }
}

/// Connects, reads the greeting, EHLO, then TLS and AUTH as `mode` and the
/// smarthost settings (`auth`, for a `kind` smarthost) say.
#[allow(clippy::too_many_arguments)]
async fn open_session(
    engine: &Arc<Engine>,
    config: &Config,
    auth: Option<&RelayAuth>,
    host: &Host,
    address: SocketAddr,
    mode: TlsMode,
    kind: NextHopKind,
    transport: &Transport,
    connector: Option<&tokio_rustls::TlsConnector>,
) -> Result<Connection, ClientError> {
    let hostname = config.hostname.as_str();
    let mut connection = match transport {
        Transport::LmtpUnix(path) => {
            Connection::connect_unix(path, address, engine.timeouts).await?
        }
        _ => Connection::connect(address, engine.timeouts).await?,
    };
    let lmtp = transport.is_lmtp();
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
                        Err(error) => match Fallback::after_handshake(&error) {
                            Fallback::Reconnect => {
                                plaintext_fallback(engine, hostname, host, address, lmtp, &error)
                                    .await?
                            }
                            Fallback::Continue | Fallback::Fail => return Err(error),
                        },
                    }
                }
                Err(error) => match Fallback::after_starttls(&error) {
                    Fallback::Continue => {
                        tracing::debug!(%error, "STARTTLS refused; continuing in plaintext");
                        connection
                    }
                    Fallback::Reconnect => {
                        drop(connection);
                        plaintext_fallback(engine, hostname, host, address, lmtp, &error).await?
                    }
                    Fallback::Fail => return Err(error),
                },
            };
        }
        TlsMode::Opportunistic => {}
    }
    if let (NextHopKind::Smarthost, Some(auth)) = (kind, auth) {
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
    hostname: &str,
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
    connection.open_as(hostname, lmtp).await?;
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
    /// The shaping rule's hold on the pool, if any.
    shaped: Option<&'a Shaped>,
}

/// Runs the transaction on an open session. `Err` only on a reused
/// (pooled) connection, for failures before anything was sent that could
/// have been accepted, so a stale connection can be replaced without risking
/// a duplicate.
async fn transaction(
    engine: &Arc<Engine>,
    config: &Config,
    mut connection: Connection,
    target: &Target<'_>,
    message: &Message,
    indices: &[usize],
) -> Result<Ran, ClientError> {
    let session = SessionFacts {
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
    let local = |error: DeliveryError| -> Ran {
        let failure = Failure::from(error).on_session(&session);
        Ran::Done(
            indices
                .iter()
                .map(|&index| Attempt::local(index, &failure))
                .collect(),
        )
    };
    let capabilities = connection.capabilities().clone();
    if let Some(refusal) = requiretls_refusal(
        message.requiretls,
        connection.tls().is_some(),
        &capabilities,
        &session.host,
    ) {
        engine
            .pool
            .put(target.key.clone(), connection, target.shaped);
        return Ok(local(refusal));
    }
    if let Some(refusal) = size_refusal(message.size, &capabilities, &session.host) {
        engine
            .pool
            .put(target.key.clone(), connection, target.shaped);
        return Ok(local(refusal));
    }
    let recipients: Vec<String> = indices
        .iter()
        .map(|&index| message.recipients[index].address.clone())
        .collect();
    let smtputf8_needed = message.smtputf8 && needs_smtputf8(engine, message, &recipients).await;
    if let Some(refusal) = smtputf8_refusal(smtputf8_needed, &capabilities, &session.host) {
        engine
            .pool
            .put(target.key.clone(), connection, target.shaped);
        return Ok(local(refusal));
    }
    let body = match open_body(engine, &message.id, message.size) {
        Ok(body) => body,
        Err(error) => {
            engine
                .pool
                .put(target.key.clone(), connection, target.shaped);
            return Ok(local(DeliveryError::Body {
                reason: error.to_string(),
            }));
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
        chunking: config.delivery.chunking,
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
                engine
                    .pool
                    .put(target.key.clone(), connection, target.shaped);
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
            let failure = Failure::from_client(&broken.error, &session.host, target.relay)
                .on_session(&session);
            Ok(Ran::broken_off(indices, &broken, &session, failure))
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
