//! The shared state every long-running part of the server is given.

use std::sync::Arc;

use sluice_queue::Queue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::metrics::Metrics;

/// What the listener, the scheduler and the admin API share.
#[derive(Clone)]
pub struct Context {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The durable queue.
    pub queue: Queue,
    /// The DNS resolver (`[dns]`): delivery's lookups and the inbound
    /// checks (`[verify]`) share it, and so its cache.
    pub resolver: hickory_resolver::TokioResolver,
    /// Counters and gauges exported on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Cancelled once on SIGTERM/SIGINT; every task watches it.
    pub shutdown: CancellationToken,
    /// Every connection and delivery task is spawned on this, so shutdown can
    /// wait for them (with a deadline).
    pub tasks: TaskTracker,
}
