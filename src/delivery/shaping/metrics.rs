//! Metrics per shaping rule (label `rule`, the key as written) and per
//! suspended destination (label `destination`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// What `/metrics` shows about shaping.
#[derive(Default)]
pub struct ShapingMetrics {
    /// Connections (transactions) open now under a rule.
    pub connections: Family<Labels, Gauge>,
    /// Messages sent (a transaction that got a reply) under a rule.
    pub messages_sent: Family<Labels, Counter>,
    /// Time spent waiting for a rule's rate.
    pub rate_wait_seconds: Family<Labels, Counter<f64, std::sync::atomic::AtomicU64>>,
    /// 1 while a destination is suspended.
    pub suspended: Family<Labels, Gauge>,
    /// Redis calls that failed or timed out, by rule ("-" for the others).
    pub redis_errors: Family<Labels, Counter>,
    /// 1 while Redis cannot be reached and limits are local.
    pub redis_fallback: Gauge,
}

/// The label set of a rule.
pub fn rule(key: &str) -> Labels {
    vec![("rule".to_string(), key.to_string())]
}

/// The label set of a destination.
pub fn destination(name: &str) -> Labels {
    vec![("destination".to_string(), name.to_string())]
}

impl ShapingMetrics {
    /// Registers every metric (under the registry's `sluice_` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "shaping_connections",
            "Outbound connections in use under a shaping rule",
            self.connections.clone(),
        );
        registry.register(
            "shaping_messages_sent",
            "Messages sent under a shaping rule",
            self.messages_sent.clone(),
        );
        registry.register(
            "shaping_rate_wait_seconds",
            "Time deliveries waited for a shaping rule's rate",
            self.rate_wait_seconds.clone(),
        );
        registry.register(
            "shaping_suspended",
            "1 while a destination is suspended",
            self.suspended.clone(),
        );
        registry.register(
            "shaping_redis_errors",
            "Redis calls for shared limits that failed or timed out",
            self.redis_errors.clone(),
        );
        registry.register(
            "shaping_redis_fallback",
            "1 while Redis is unreachable and each node uses its local limits",
            self.redis_fallback.clone(),
        );
    }
}
