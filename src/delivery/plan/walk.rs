//! The host walk of one attempt, as a machine with no I/O: given the next
//! hop and what each host did, it says which host to look up, which
//! address to connect to, and when every recipient has its result
//! ([`HostWalk`]). Beside it, the rules applied on an open session before
//! and after the transaction: the RFC 1870 size refusal, the RFC 6531
//! no-downgrade rule ([`size_refusal`], [`smtputf8_refusal`]), the RFC 8689
//! REQUIRETLS session rules ([`requiretls_refusal`],
//! [`requiretls_setup_failure`]), what a broken transaction leaves open
//! ([`Ran::broken_off`]) and the RFC 7435 plaintext fallback ([`Fallback`]).
//!
//! The rules, each tested below:
//! - RFC 5321 §5.1: hosts in order, each host's addresses in turn; at most
//!   [`MAX_HOSTS`] hosts and [`MAX_ADDRESSES`] addresses per attempt (as
//!   Postfix's `smtp_mx_address_limit`).
//! - RFC 5321 §5.1: an address that is this server ends the walk: what is
//!   still open fails as a mail loop when no host was tried before it, and
//!   keeps the earlier hosts' failure otherwise.
//! - RFC 5321 §5.1: a missing address is final only for the implicit MX
//!   (the domain itself); an MX host without one is broken DNS, temporary.
//! - A reply about a recipient settles it for the attempt; a host that will
//!   not talk to us, or breaks off before the final dot, passes the open
//!   recipients to the next host. After the final dot (RFC 5321 §6.1, RFC
//!   1047) no other host gets them.
//! - A reply matching the destination's `suspend_on` (a throttle), from any
//!   host, ends the walk: no other host is tried in this attempt, and the
//!   open recipients keep that reply, which suspends the destination.

use std::collections::VecDeque;
use std::net::SocketAddr;

use crate::config::{ListenerConfig, ShapingRule};
use crate::delivery::client::{ClientError, TransactionError};
use crate::delivery::loops;
use crate::delivery::requiretls;
use crate::delivery::route::{NextHopKind, RouteError};
use crate::smtp::ehlo::Capabilities;

use super::{Attempt, DeliveryError, Failure, HostTry, SessionFacts, Verdict};

/// MX hosts looked at per attempt, at most: DNS answers come from the
/// remote side too, and a thousand MX records must not keep one delivery
/// busy for hours.
pub const MAX_HOSTS: usize = 10;
/// Addresses connected to per attempt, at most, over all hosts (as
/// Postfix's `smtp_mx_address_limit`); the rest wait for the next attempt.
pub const MAX_ADDRESSES: usize = 10;

/// What the walk asks for next.
#[derive(Debug)]
pub enum Step {
    /// Look at host `host` (an index in the next hop's hosts): its TLS
    /// policy, then its addresses. Answer with [`HostWalk::refused`],
    /// [`HostWalk::unresolved`] or [`HostWalk::resolved`].
    LookUp { host: usize },
    /// Connect to `address` of host `host` and run the transaction for
    /// [`HostWalk::open`]. Answer with [`HostWalk::failed`] or
    /// [`HostWalk::ran`].
    Connect { host: usize, address: SocketAddr },
    /// The walk is over: exactly one attempt per recipient.
    Done(Vec<Attempt>),
}

/// What a transaction on one host came to.
// One per host tried, moved once: not worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Ran {
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

impl Ran {
    /// What a transaction of `indices` that broke off with `broken` leaves:
    /// RFC 5321 §3.3, a recipient refused at RCPT keeps its own reply,
    /// whatever happened afterwards; the others are open, unless the final
    /// dot was (being) sent: the server may hold the message then (RFC 5321
    /// §6.1, RFC 1047), so no other host gets it in this attempt. A body
    /// that cannot be read fails everywhere alike.
    pub fn broken_off(
        indices: &[usize],
        broken: &TransactionError,
        session: &SessionFacts,
        failure: Failure,
    ) -> Ran {
        let mut settled = Vec::new();
        let mut open = Vec::new();
        for (&index, verdict) in indices.iter().zip(broken.verdicts.iter()) {
            match verdict {
                Some(verdict) => settled.push(Attempt::from_server(index, verdict, session)),
                None => open.push(index),
            }
        }
        if broken.data_sent || matches!(broken.error, ClientError::Body(_)) {
            settled.extend(open.iter().map(|&index| Attempt::local(index, &failure)));
            return Ran::Done(settled);
        }
        Ran::BrokenOff {
            settled,
            open,
            failure,
        }
    }
}

/// The walk over one next hop's hosts for one attempt.
pub struct HostWalk<'a> {
    domain: &'a str,
    kind: NextHopKind,
    /// Hosts to look at: the next hop's, up to [`MAX_HOSTS`].
    hosts: usize,
    next_host: usize,
    /// The host whose addresses are being tried, and those left.
    current: usize,
    addresses: VecDeque<SocketAddr>,
    /// Our own listeners (loop detection).
    listeners: &'a [ListenerConfig],
    /// The shaping rule of the destination, when it has `suspend_on`.
    throttle: Option<&'a ShapingRule>,
    open: Vec<usize>,
    settled: Vec<Attempt>,
    /// Why the open recipients are not delivered yet.
    last: Failure,
    /// A host before the current one was tried (RFC 5321 §5.1).
    tried: bool,
    connections: usize,
    /// The walk ended early (a loop, the address cap, a throttle).
    over: bool,
    /// The reply that matched `suspend_on`, when one did.
    throttled: Option<String>,
    /// The hosts contacted so far that settled nobody, with their replies.
    tries: Vec<HostTry>,
    /// `last` is the failure of the last of `tries`.
    last_is_a_try: bool,
}

impl<'a> HostWalk<'a> {
    /// A walk over `hosts` hosts of a `kind` next hop of `domain` for the
    /// recipients `indices`; `throttle` is the destination's shaping rule.
    pub fn new(
        domain: &'a str,
        kind: NextHopKind,
        hosts: usize,
        indices: &[usize],
        listeners: &'a [ListenerConfig],
        throttle: Option<&'a ShapingRule>,
    ) -> HostWalk<'a> {
        HostWalk {
            domain,
            kind,
            hosts: hosts.min(MAX_HOSTS),
            next_host: 0,
            current: 0,
            addresses: VecDeque::new(),
            listeners,
            throttle: throttle.filter(|rule| !rule.suspend_on.is_empty()),
            open: indices.to_vec(),
            settled: Vec::with_capacity(indices.len()),
            last: Failure::from(DeliveryError::NoUsableHost {
                domain: domain.to_string(),
            }),
            tried: false,
            connections: 0,
            over: false,
            throttled: None,
            tries: Vec::new(),
            last_is_a_try: false,
        }
    }

    /// The recipients still open, for the transaction of a
    /// [`Step::Connect`].
    pub fn open(&self) -> &[usize] {
        &self.open
    }

    /// The reply that matched the destination's `suspend_on` and ended
    /// the walk, if one did.
    pub fn throttled(&self) -> Option<&str> {
        self.throttled.as_deref()
    }

    /// The next step.
    pub fn step(&mut self) -> Step {
        if self.over || self.open.is_empty() {
            return self.finish();
        }
        if let Some(address) = self.addresses.pop_front() {
            if self.connections >= MAX_ADDRESSES {
                tracing::debug!(
                    domain = self.domain,
                    "address limit reached for this attempt"
                );
                return self.finish();
            }
            if loops::loops_back(self.listeners, self.kind, address) {
                tracing::warn!(domain = self.domain, %address, "next hop is this server: mail loop");
                if !self.tried {
                    self.last = Failure::from(DeliveryError::Loop {
                        domain: self.domain.to_string(),
                    });
                    self.last_is_a_try = false;
                }
                return self.finish();
            }
            self.tried = true;
            self.connections += 1;
            return Step::Connect {
                host: self.current,
                address,
            };
        }
        if self.next_host >= self.hosts {
            return self.finish();
        }
        self.current = self.next_host;
        self.next_host += 1;
        Step::LookUp { host: self.current }
    }

    /// The host's TLS policy refused it (`failure` says why).
    pub fn refused(&mut self, failure: Failure) {
        self.last = failure;
        self.last_is_a_try = false;
        self.tried = true;
    }

    /// The host's addresses could not be found.
    pub fn unresolved(&mut self, error: RouteError) {
        // Only the implicit MX (the domain itself has no address) is final;
        // a missing MX host is the domain's DNS being broken, maybe for a
        // while.
        self.last = Failure::from(match self.kind {
            NextHopKind::ImplicitMx => DeliveryError::Route(error),
            _ => DeliveryError::HostAddress(error),
        });
        self.last_is_a_try = false;
        self.tried = true;
    }

    /// The host's addresses, in the order to try them.
    pub fn resolved(&mut self, addresses: impl IntoIterator<Item = SocketAddr>) {
        self.addresses = addresses.into_iter().collect();
    }

    /// The session with the address of the last [`Step::Connect`] could not
    /// be set up: the next address or host gets the open recipients.
    pub fn failed(&mut self, failure: Failure) {
        self.watch(&failure.reply_line());
        self.tried_host(failure);
    }

    /// The transaction on the address of the last [`Step::Connect`] ran.
    pub fn ran(&mut self, ran: Ran) {
        match ran {
            Ran::Done(attempts) => {
                self.settle(attempts);
                self.open.clear();
            }
            Ran::BrokenOff {
                settled,
                open,
                failure,
            } => {
                self.settle(settled);
                self.watch(&failure.reply_line());
                self.open = open;
                self.tried_host(failure);
            }
        }
    }

    /// A host was contacted and left the open recipients open.
    fn tried_host(&mut self, failure: Failure) {
        self.tries.push(HostTry::of(&failure));
        self.last = failure;
        self.last_is_a_try = true;
    }

    fn settle(&mut self, mut attempts: Vec<Attempt>) {
        for attempt in &mut attempts {
            if attempt.verdict != Verdict::Sent {
                self.watch(&attempt.reply);
            }
            attempt.earlier.clone_from(&self.tries);
        }
        self.settled.extend(attempts);
    }

    /// Ends the walk when `reply` is a throttle of the destination.
    fn watch(&mut self, reply: &str) {
        if self.throttled.is_none()
            && let Some(rule) = self.throttle
            && rule.suspends_on(reply)
        {
            self.throttled = Some(reply.to_string());
            self.over = true;
        }
    }

    fn finish(&mut self) -> Step {
        self.over = true;
        let mut settled = std::mem::take(&mut self.settled);
        // The last host contacted gives the open recipients their result;
        // the ones before it are their history.
        let mut earlier = std::mem::take(&mut self.tries);
        if self.last_is_a_try {
            earlier.pop();
        }
        let last = &self.last;
        settled.extend(self.open.drain(..).map(|index| Attempt {
            earlier: earlier.clone(),
            ..Attempt::local(index, last)
        }));
        Step::Done(settled)
    }
}

/// RFC 1870 §6.1: a declared limit below the message size is final.
pub fn size_refusal(size: u64, capabilities: &Capabilities, host: &str) -> Option<DeliveryError> {
    capabilities
        .rejects_size(size)
        .then(|| DeliveryError::TooBig {
            size,
            limit: capabilities.size.unwrap_or(0),
            host: host.to_string(),
        })
}

/// RFC 6531 §3.4: no downgrade; a message that needs SMTPUTF8 cannot go to
/// a server that does not offer it.
pub fn smtputf8_refusal(
    needed: bool,
    capabilities: &Capabilities,
    host: &str,
) -> Option<DeliveryError> {
    (needed && !capabilities.smtputf8).then(|| DeliveryError::NoSmtputf8 {
        host: host.to_string(),
    })
}

/// RFC 8689 §4.2.1: a REQUIRETLS message goes only on a session with TLS
/// up whose server offers REQUIRETLS; anything else is final (5.7.30).
pub fn requiretls_refusal(
    requiretls: bool,
    tls: bool,
    capabilities: &Capabilities,
    host: &str,
) -> Option<DeliveryError> {
    if !requiretls {
        return None;
    }
    requiretls::session_rule(tls, capabilities.requiretls, host)
        .err()
        .map(|reason| DeliveryError::RequireTls { reason })
}

/// RFC 8689 §4.2: a REQUIRETLS message whose host did not offer STARTTLS
/// fails for good, not as a temporary session failure.
pub fn requiretls_setup_failure(
    requiretls: bool,
    error: &ClientError,
    host: &str,
) -> Option<DeliveryError> {
    if !requiretls || !matches!(error, ClientError::TlsNotOffered) {
        return None;
    }
    requiretls::session_rule(false, false, host)
        .err()
        .map(|reason| DeliveryError::RequireTls { reason })
}

/// What opportunistic TLS does when STARTTLS fails on a host (RFC 7435:
/// deliver in plaintext rather than not at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Go on in plaintext on this connection.
    Continue,
    /// Connect again, in plaintext, without STARTTLS.
    Reconnect,
    /// Give up on this host.
    Fail,
}

impl Fallback {
    /// STARTTLS itself failed with `error`.
    pub fn after_starttls(error: &ClientError) -> Fallback {
        match error {
            // Refused: the session goes on in plaintext, unless the server
            // is closing it (RFC 5321 §3.8).
            ClientError::Rejected { reply, .. } if reply.code() != 421 => Fallback::Continue,
            // Plaintext arrived where the handshake should start (RFC 3207
            // §4.2): this connection cannot be trusted, a fresh one can.
            ClientError::TlsInjection => Fallback::Reconnect,
            _ => Fallback::Fail,
        }
    }

    /// The handshake after STARTTLS failed with `error`.
    pub fn after_handshake(error: &ClientError) -> Fallback {
        match error {
            ClientError::TlsHandshake(_) | ClientError::Timeout { .. } => Fallback::Reconnect,
            _ => Fallback::Fail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ListenerKind, ShapingKey};
    use crate::smtp::client::Stage;
    use crate::smtp::reply::{EnhancedCode, Reply};

    fn address(last: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, last], 25))
    }

    fn session(host: &str) -> SessionFacts {
        SessionFacts {
            host: host.into(),
            relay: format!("{host}[192.0.2.1]:25"),
            tls: "plaintext".into(),
            tls_policy: "opportunistic",
            dsn: false,
        }
    }

    fn server(index: usize, code: u16, enhanced: (u8, u16, u16), host: &str) -> Attempt {
        let reply = Reply::new(
            code,
            EnhancedCode::new(enhanced.0, enhanced.1, enhanced.2),
            "text",
        );
        // A 2xx settles a recipient only at the end of data.
        let stage = if code < 300 {
            Stage::EndOfData
        } else {
            Stage::Rcpt
        };
        let verdict = crate::smtp::client::Verdict {
            disposition: crate::smtp::client::disposition(stage, &reply),
            stage,
            reply,
        };
        Attempt::from_server(index, &verdict, &session(host))
    }

    /// A session ended by `code` `enhanced` `text` (a 421 closing it).
    fn refused_session(code: u16, text: &'static str) -> Failure {
        let (enhanced, text) = text.split_once(' ').expect("an enhanced code and a text");
        let enhanced = EnhancedCode::parse(enhanced).expect("an enhanced code");
        let reply = Reply::new(code, enhanced, text);
        Failure::from_client(
            &ClientError::Rejected {
                stage: Stage::Rcpt,
                reply,
            },
            "mx1.test",
            "mx1.test[192.0.2.1]:25",
        )
    }

    fn done(step: Step) -> Vec<Attempt> {
        match step {
            Step::Done(attempts) => attempts,
            other => panic!("expected the end of the walk, got {other:?}"),
        }
    }

    fn connect(step: Step) -> (usize, SocketAddr) {
        match step {
            Step::Connect { host, address } => (host, address),
            other => panic!("expected a connection, got {other:?}"),
        }
    }

    fn look_up(step: Step) -> usize {
        match step {
            Step::LookUp { host } => host,
            other => panic!("expected a look-up, got {other:?}"),
        }
    }

    #[test]
    fn hosts_go_in_order_and_each_address_in_turn() {
        // RFC 5321 §5.1.
        let mut walk = HostWalk::new("d.test", NextHopKind::Mx, 2, &[0], &[], None);
        assert_eq!(look_up(walk.step()), 0);
        walk.resolved([address(1), address(2)]);
        assert_eq!(connect(walk.step()), (0, address(1)));
        walk.failed(refused_session(421, "4.3.2 busy"));
        assert_eq!(connect(walk.step()), (0, address(2)));
        walk.failed(refused_session(421, "4.3.2 busy"));
        assert_eq!(look_up(walk.step()), 1);
        walk.resolved([address(3)]);
        assert_eq!(connect(walk.step()), (1, address(3)));
        walk.ran(Ran::Done(vec![server(0, 250, (2, 0, 0), "mx2.test")]));
        let attempts = done(walk.step());
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].verdict, Verdict::Sent);
    }

    #[test]
    fn each_host_contacted_is_in_the_history_of_the_recipients_it_left_open() {
        // Issue 21: attempts_log shows each host tried, with its reply.
        let mut walk = HostWalk::new("d.test", NextHopKind::Mx, 3, &[0, 1], &[], None);
        look_up(walk.step());
        walk.resolved([address(1)]);
        connect(walk.step());
        walk.failed(refused_session(421, "4.3.2 busy"));
        look_up(walk.step());
        walk.resolved([address(2)]);
        connect(walk.step());
        walk.ran(Ran::BrokenOff {
            settled: vec![server(1, 550, (5, 1, 1), "mx2.test")],
            open: vec![0],
            failure: refused_session(421, "4.3.2 closing"),
        });
        look_up(walk.step());
        walk.resolved([address(3)]);
        connect(walk.step());
        walk.failed(refused_session(421, "4.3.2 gone"));
        let mut attempts = done(walk.step());
        attempts.sort_by_key(|attempt| attempt.index);
        let replies = |attempt: &Attempt| -> Vec<String> {
            attempt
                .earlier
                .iter()
                .map(|tried| tried.reply.clone())
                .collect()
        };
        assert_eq!(
            replies(&attempts[0]),
            ["421 4.3.2 busy", "421 4.3.2 closing"]
        );
        assert_eq!(attempts[0].reply, "421 4.3.2 gone");
        assert_eq!(replies(&attempts[1]), ["421 4.3.2 busy"]);
        assert_eq!(attempts[1].relay, "mx2.test[192.0.2.1]:25");
        assert_eq!(attempts[0].earlier[0].relay, "mx1.test[192.0.2.1]:25");
    }

    #[test]
    fn at_most_max_addresses_are_connected_to_per_attempt() {
        // As Postfix's smtp_mx_address_limit.
        let mut walk = HostWalk::new("d.test", NextHopKind::Mx, 1, &[0, 1], &[], None);
        look_up(walk.step());
        walk.resolved((1..=MAX_ADDRESSES as u8 + 5).map(address));
        for _ in 0..MAX_ADDRESSES {
            connect(walk.step());
            walk.failed(refused_session(421, "4.3.2 busy"));
        }
        let attempts = done(walk.step());
        assert_eq!(attempts.len(), 2, "every recipient gets one attempt");
        assert!(attempts.iter().all(|a| a.verdict == Verdict::Deferred));
        assert!(
            attempts[0].reply.contains("4.3.2 busy"),
            "{}",
            attempts[0].reply
        );
    }

    #[test]
    fn at_most_max_hosts_are_looked_at() {
        let mut walk = HostWalk::new("d.test", NextHopKind::Mx, 1000, &[0], &[], None);
        let mut looked = 0;
        while let Step::LookUp { .. } = walk.step() {
            walk.unresolved(RouteError::NoAddress {
                host: "mx.test".into(),
            });
            looked += 1;
        }
        assert_eq!(looked, MAX_HOSTS);
    }

    #[test]
    fn ourselves_first_in_the_list_is_a_mail_loop() {
        // RFC 5321 §5.1: 5.4.6, as Postfix says it.
        let listeners = [ListenerConfig {
            address: address(9),
            kind: ListenerKind::Relay,
            proxy_protocol: false,
        }];
        let mut walk = HostWalk::new("loop.test", NextHopKind::Mx, 2, &[0], &listeners, None);
        look_up(walk.step());
        walk.resolved([address(9)]);
        let attempts = done(walk.step());
        assert_eq!(attempts[0].verdict, Verdict::Failed);
        assert_eq!(
            attempts[0].reply,
            "5.4.6 mail for loop.test loops back to myself"
        );
    }

    #[test]
    fn ourselves_after_other_hosts_ends_the_walk_with_their_failure() {
        // RFC 5321 §5.1: hosts after ourselves are not tried either.
        let listeners = [ListenerConfig {
            address: address(9),
            kind: ListenerKind::Relay,
            proxy_protocol: false,
        }];
        let mut walk = HostWalk::new("d.test", NextHopKind::Mx, 3, &[0], &listeners, None);
        look_up(walk.step());
        walk.resolved([address(1)]);
        connect(walk.step());
        walk.failed(refused_session(421, "4.3.2 busy"));
        look_up(walk.step());
        walk.resolved([address(9)]);
        let attempts = done(walk.step());
        assert_eq!(attempts[0].verdict, Verdict::Deferred);
        assert!(attempts[0].reply.contains("busy"), "{}", attempts[0].reply);
    }

    #[test]
    fn a_missing_address_is_final_only_for_the_implicit_mx() {
        // RFC 5321 §5.1: no MX, the domain itself is the host.
        let missing = || RouteError::NoAddress {
            host: "d.test".into(),
        };
        let mut walk = HostWalk::new("d.test", NextHopKind::ImplicitMx, 1, &[0], &[], None);
        look_up(walk.step());
        walk.unresolved(missing());
        let attempts = done(walk.step());
        assert_eq!(attempts[0].verdict, Verdict::Failed);
        assert_eq!(attempts[0].status, EnhancedCode::new(5, 4, 4));

        let mut walk = HostWalk::new("d.test", NextHopKind::Mx, 1, &[0], &[], None);
        look_up(walk.step());
        walk.unresolved(missing());
        let attempts = done(walk.step());
        assert_eq!(attempts[0].verdict, Verdict::Deferred);
        assert_eq!(attempts[0].status, EnhancedCode::new(4, 4, 4));
    }

    #[test]
    fn a_recipient_settled_by_one_host_is_not_offered_to_the_next() {
        let mut walk = HostWalk::new("d.test", NextHopKind::Mx, 2, &[0, 1], &[], None);
        look_up(walk.step());
        walk.resolved([address(1)]);
        connect(walk.step());
        walk.ran(Ran::BrokenOff {
            settled: vec![server(1, 550, (5, 1, 1), "mx1.test")],
            open: vec![0],
            failure: refused_session(421, "4.3.2 closing"),
        });
        assert_eq!(walk.open(), &[0]);
        look_up(walk.step());
        walk.resolved([address(2)]);
        connect(walk.step());
        assert_eq!(walk.open(), &[0]);
        walk.ran(Ran::Done(vec![server(0, 250, (2, 0, 0), "mx2.test")]));
        let mut attempts = done(walk.step());
        attempts.sort_by_key(|attempt| attempt.index);
        assert_eq!(attempts[0].verdict, Verdict::Sent);
        assert_eq!(attempts[1].verdict, Verdict::Failed);
    }

    #[test]
    fn no_other_host_after_the_final_dot() {
        // RFC 5321 §6.1, RFC 1047: the server may hold the message.
        let broken = TransactionError {
            error: ClientError::Timeout {
                moment: crate::delivery::client::Moment::After(Stage::EndOfData),
            },
            verdicts: vec![None, None],
            data_sent: true,
            before_transaction: false,
        };
        let facts = session("mx1.test");
        let failure = Failure::from_client(&broken.error, "mx1.test", &facts.relay);
        let Ran::Done(attempts) = Ran::broken_off(&[0, 1], &broken, &facts, failure) else {
            panic!("after the final dot, the walk must not go on");
        };
        assert_eq!(attempts.len(), 2);
        assert!(attempts.iter().all(|a| a.verdict == Verdict::Deferred));

        let before = TransactionError {
            data_sent: false,
            ..broken
        };
        let failure = Failure::from_client(&before.error, "mx1.test", &facts.relay);
        assert!(matches!(
            Ran::broken_off(&[0, 1], &before, &facts, failure),
            Ran::BrokenOff { open, .. } if open == [0, 1]
        ));
    }

    fn throttle() -> ShapingRule {
        ShapingRule {
            key: ShapingKey::Domain("d.test".into()),
            connections: None,
            messages_per_connection: None,
            rate: None,
            suspend_on: vec!["4.7.28".into()],
            suspend_for: std::time::Duration::from_secs(60),
        }
    }

    #[test]
    fn a_throttle_from_any_host_ends_the_walk() {
        // Issue 21: trying the next host right after a throttle is what the
        // throttle asks us not to do.
        let rule = throttle();
        let mut walk = HostWalk::new("d.test", NextHopKind::Mx, 2, &[0, 1], &[], Some(&rule));
        look_up(walk.step());
        walk.resolved([address(1), address(2)]);
        connect(walk.step());
        walk.ran(Ran::BrokenOff {
            settled: Vec::new(),
            open: vec![0, 1],
            failure: refused_session(421, "4.7.28 rate limited"),
        });
        let attempts = done(walk.step());
        assert_eq!(walk.throttled(), Some("421 4.7.28 rate limited"));
        assert_eq!(attempts.len(), 2);
        for attempt in &attempts {
            assert_eq!(attempt.verdict, Verdict::Deferred);
            assert_eq!(attempt.reply, "421 4.7.28 rate limited");
        }
    }

    #[test]
    fn a_throttle_at_the_greeting_or_for_one_recipient_ends_the_walk_too() {
        let rule = throttle();
        let mut walk = HostWalk::new("d.test", NextHopKind::Mx, 2, &[0], &[], Some(&rule));
        look_up(walk.step());
        walk.resolved([address(1)]);
        connect(walk.step());
        walk.failed(refused_session(421, "4.7.28 slow down"));
        assert_eq!(done(walk.step())[0].reply, "421 4.7.28 slow down");

        let mut walk = HostWalk::new("d.test", NextHopKind::Mx, 2, &[0, 1], &[], Some(&rule));
        look_up(walk.step());
        walk.resolved([address(1)]);
        connect(walk.step());
        walk.ran(Ran::BrokenOff {
            settled: vec![server(1, 450, (4, 7, 28), "mx1.test")],
            open: vec![0],
            failure: refused_session(421, "4.3.2 closing"),
        });
        assert_eq!(done(walk.step()).len(), 2, "the second host is not tried");
    }

    #[test]
    fn other_replies_go_on_to_the_next_host_under_a_throttle_rule() {
        let rule = throttle();
        let mut walk = HostWalk::new("d.test", NextHopKind::Mx, 2, &[0], &[], Some(&rule));
        look_up(walk.step());
        walk.resolved([address(1)]);
        connect(walk.step());
        walk.failed(refused_session(421, "4.3.2 busy"));
        assert_eq!(look_up(walk.step()), 1);
        assert_eq!(walk.throttled(), None);
    }

    #[test]
    fn requiretls_needs_tls_and_the_extension_and_is_final() {
        let offers = Capabilities {
            requiretls: true,
            ..Capabilities::default()
        };
        let silent = Capabilities::default();
        assert_eq!(requiretls_refusal(false, false, &silent, "mx.test"), None);
        assert_eq!(requiretls_refusal(true, true, &offers, "mx.test"), None);
        for (tls, capabilities) in [(false, &offers), (true, &silent)] {
            let error = requiretls_refusal(true, tls, capabilities, "mx.test")
                .expect("a REQUIRETLS refusal");
            assert!(error.is_permanent(), "{error}");
            assert_eq!(error.status(), EnhancedCode::new(5, 7, 30));
            assert!(error.to_string().contains("mx.test"), "{error}");
        }
        let error = requiretls_setup_failure(true, &ClientError::TlsNotOffered, "mx.test")
            .expect("no STARTTLS is final");
        assert!(error.is_permanent());
        assert_eq!(error.status(), EnhancedCode::new(5, 7, 30));
        assert_eq!(
            requiretls_setup_failure(false, &ClientError::TlsNotOffered, "mx.test"),
            None
        );
        let timeout = ClientError::TlsInjection;
        assert_eq!(requiretls_setup_failure(true, &timeout, "mx.test"), None);
    }

    #[test]
    fn the_size_and_smtputf8_refusals_are_final() {
        // RFC 1870 §6.1; RFC 6531 §3.4.
        let capabilities = Capabilities {
            size: Some(100),
            ..Capabilities::default()
        };
        let error = size_refusal(101, &capabilities, "mx.test").expect("refused");
        assert!(error.is_permanent());
        assert_eq!(
            error.to_string(),
            "message size 101 exceeds the limit of 100 bytes at mx.test"
        );
        assert!(size_refusal(100, &capabilities, "mx.test").is_none());
        let unlimited = Capabilities {
            size: Some(0),
            ..Capabilities::default()
        };
        assert!(size_refusal(u64::MAX, &unlimited, "mx.test").is_none());

        let error = smtputf8_refusal(true, &capabilities, "mx.test").expect("refused");
        assert_eq!(error.status(), EnhancedCode::new(5, 6, 7));
        assert!(smtputf8_refusal(false, &capabilities, "mx.test").is_none());
        let utf8 = Capabilities {
            smtputf8: true,
            ..Capabilities::default()
        };
        assert!(smtputf8_refusal(true, &utf8, "mx.test").is_none());
    }

    #[test]
    fn opportunistic_tls_falls_back_to_plaintext() {
        // RFC 7435 §3: better plaintext than not at all.
        let refused = ClientError::Rejected {
            stage: Stage::StartTls,
            reply: Reply::new(454, EnhancedCode::new(4, 7, 0), "no TLS"),
        };
        assert_eq!(Fallback::after_starttls(&refused), Fallback::Continue);
        let closing = ClientError::Rejected {
            stage: Stage::StartTls,
            reply: Reply::new(421, EnhancedCode::new(4, 3, 2), "bye"),
        };
        assert_eq!(Fallback::after_starttls(&closing), Fallback::Fail);
        assert_eq!(
            Fallback::after_starttls(&ClientError::TlsInjection),
            Fallback::Reconnect
        );
        assert_eq!(
            Fallback::after_handshake(&ClientError::TlsHandshake("bad".into())),
            Fallback::Reconnect
        );
        assert_eq!(
            Fallback::after_handshake(&ClientError::TlsNotOffered),
            Fallback::Fail
        );
    }
}
