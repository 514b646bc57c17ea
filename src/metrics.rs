//! Prometheus metrics (`sluice_<thing>_<unit>`), shared by every part.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The process's metrics. Queue sizes are set from the queue's stats at
/// scrape time by the admin API (`queue_messages`, `queue_recipients`).
pub struct Metrics {
    registry: Registry,
    /// Messages accepted with a 250 after DATA/BDAT.
    pub messages_received: Counter,
    /// Recipients delivered (2xx from the next hop).
    pub recipients_delivered: Counter,
    /// Recipients deferred (4xx, connection, DNS or TLS failure).
    pub recipients_deferred: Counter,
    /// Recipients failed permanently (bounced).
    pub recipients_bounced: Counter,
    /// Inbound SMTP connections open now.
    pub connections_active: Gauge,
    /// Outbound SMTP transactions in progress now.
    pub deliveries_in_flight: Gauge,
    /// Time from acceptance to a final outcome, per recipient.
    pub delivery_latency_seconds: Histogram,
    /// Size of accepted messages.
    pub message_size_bytes: Histogram,
    /// Queued messages, by `state` (queued, held).
    pub queue_messages: Family<Vec<(String, String)>, Gauge>,
    /// Queued recipients, by `status` (pending, deferred, delivered, failed).
    pub queue_recipients: Family<Vec<(String, String)>, Gauge>,
    /// DKIM signatures added to accepted messages.
    pub dkim_signatures: Counter,
    /// Inbound authentication verdicts, by `kind` (spf, dkim, dmarc) and
    /// `result` (pass, fail, softfail, neutral, none, temperror, permerror…).
    pub auth_results: Family<Vec<(String, String)>, Counter>,
    /// Free space on the spool's filesystem and whether new mail is
    /// refused for want of it (`spool.min_free`), kept by
    /// [`crate::disk::DiskReserve`].
    pub spool_space: crate::disk::SpaceGauges,
    /// Outbound TLS sessions by recipient `domain`, `policy` (dane, mta-sts,
    /// required, opportunistic) and `result` (success, failure): what a
    /// TLS-RPT (RFC 8460) report is built from.
    pub tls_sessions: Family<Vec<(String, String)>, Counter>,
    /// Configuration reloads (SIGHUP), by `result` (ok, failed).
    pub config_reloads: Family<Vec<(String, String)>, Counter>,
    /// Clients, commands and recipients refused by the front door
    /// (`crate::frontdoor`), by `reason` (pregreet, dnsbl, connection_rate,
    /// message_rate, recipient_rate, unknown_recipient,
    /// unverified_recipient, greylisted).
    pub front_door_refusals: Family<Vec<(String, String)>, Counter>,
    /// Traffic shaping per rule and destination (`delivery::shaping`).
    pub shaping: std::sync::Arc<crate::delivery::shaping::metrics::ShapingMetrics>,
    /// Delivery events per subscriber (`events::dispatch`).
    pub events: std::sync::Arc<crate::events::EventMetrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric at zero, registered under the `sluice_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sluice");
        let metrics = Metrics {
            messages_received: Counter::default(),
            recipients_delivered: Counter::default(),
            recipients_deferred: Counter::default(),
            recipients_bounced: Counter::default(),
            connections_active: Gauge::default(),
            deliveries_in_flight: Gauge::default(),
            delivery_latency_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 20)),
            message_size_bytes: Histogram::new(exponential_buckets(512.0, 4.0, 12)),
            queue_messages: Family::default(),
            queue_recipients: Family::default(),
            dkim_signatures: Counter::default(),
            auth_results: Family::default(),
            spool_space: crate::disk::SpaceGauges::default(),
            tls_sessions: Family::default(),
            config_reloads: Family::default(),
            front_door_refusals: Family::default(),
            shaping: Default::default(),
            events: Default::default(),
            registry: Registry::default(),
        };
        registry.register(
            "messages_received",
            "Messages accepted into the queue",
            metrics.messages_received.clone(),
        );
        registry.register(
            "recipients_delivered",
            "Recipients delivered to the next hop",
            metrics.recipients_delivered.clone(),
        );
        registry.register(
            "recipients_deferred",
            "Delivery attempts deferred with a temporary failure",
            metrics.recipients_deferred.clone(),
        );
        registry.register(
            "recipients_bounced",
            "Recipients failed permanently",
            metrics.recipients_bounced.clone(),
        );
        registry.register(
            "connections_active",
            "Inbound SMTP connections open",
            metrics.connections_active.clone(),
        );
        registry.register(
            "deliveries_in_flight",
            "Outbound SMTP transactions in progress",
            metrics.deliveries_in_flight.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Time from acceptance to final outcome per recipient",
            metrics.delivery_latency_seconds.clone(),
        );
        registry.register(
            "message_size_bytes",
            "Size of accepted messages",
            metrics.message_size_bytes.clone(),
        );
        registry.register(
            "queue_messages",
            "Messages in the queue",
            metrics.queue_messages.clone(),
        );
        registry.register(
            "queue_recipients",
            "Recipients in the queue by status",
            metrics.queue_recipients.clone(),
        );
        registry.register(
            "frontdoor_refusals",
            "Connections, commands and recipients refused by the front door, by reason",
            metrics.front_door_refusals.clone(),
        );
        registry.register(
            "dkim_signatures",
            "DKIM signatures added to accepted messages",
            metrics.dkim_signatures.clone(),
        );
        registry.register(
            "auth_results",
            "Inbound SPF, DKIM and DMARC verdicts by kind and result",
            metrics.auth_results.clone(),
        );
        registry.register(
            "spool_free_bytes",
            "Free bytes on the spool's filesystem at the last check",
            metrics.spool_space.free_bytes.clone(),
        );
        registry.register(
            "spool_space_low",
            "1 while new mail is refused because the spool's free space is below spool.min_free",
            metrics.spool_space.low.clone(),
        );
        registry.register(
            "tls_sessions",
            "Outbound TLS sessions by policy and result",
            metrics.tls_sessions.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP) by result: ok, or failed (the old settings stayed)",
            metrics.config_reloads.clone(),
        );
        // Both results are shown from the start, at 0.
        for result in ["ok", "failed"] {
            let _ = metrics
                .config_reloads
                .get_or_create(&vec![("result".to_string(), result.to_string())]);
        }
        metrics.shaping.register(&mut registry);
        metrics.events.register(&mut registry);
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Counts one configuration reload with `result` "ok" or "failed".
    pub fn config_reloaded(&self, result: &str) {
        self.config_reloads
            .get_or_create(&vec![("result".to_string(), result.to_string())])
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}
