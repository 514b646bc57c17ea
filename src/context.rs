//! The shared state every long-running part of the server is given.

use std::sync::Arc;

use arc_swap::ArcSwap;
use sluice_queue::Queue;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::disk::DiskReserve;
use crate::metrics::Metrics;

/// What the listener, the scheduler and the admin API share.
#[derive(Clone)]
pub struct Context {
    /// The validated configuration, swapped whole by a reload: read it
    /// through [`Context::config`], once per connection or attempt.
    config: Arc<ArcSwap<Config>>,
    /// The durable queue.
    pub queue: Queue,
    /// The DNS resolver (`[dns]`): delivery's lookups and the inbound
    /// checks (`[verify]`) share it, and so its cache.
    pub resolver: hickory_resolver::TokioResolver,
    /// Counters and gauges exported on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The free-space reserve of the spool's filesystem (`spool.min_free`).
    pub disk: Arc<DiskReserve>,
    /// Cancelled once on SIGTERM/SIGINT; every task watches it.
    pub shutdown: CancellationToken,
    /// Every connection and delivery task is spawned on this, so shutdown can
    /// wait for them (with a deadline).
    pub tasks: TaskTracker,
    /// Traffic shaping: limits per destination and suspensions.
    pub shaper: Arc<crate::delivery::shaping::Shaper>,
    /// The event subscribers, once started (`serve`).
    pub events: Arc<std::sync::OnceLock<Arc<crate::events::Dispatchers>>>,
}

impl Context {
    /// The shared state over `queue`, with the resolver `config` names and
    /// fresh metrics, shutdown token and task tracker.
    pub fn new(config: Arc<Config>, queue: Queue) -> Self {
        let resolver = crate::delivery::route::resolver(&config);
        let metrics = Arc::new(Metrics::new());
        let disk = Arc::new(
            DiskReserve::new(&config.spool.path, metrics.spool_space.clone()).watch(queue.clone()),
        );
        let shaper = Arc::new(crate::delivery::shaping::Shaper::new(
            &config,
            &queue,
            metrics.shaping.clone(),
        ));
        Self {
            config: Arc::new(ArcSwap::new(config)),
            queue,
            resolver,
            metrics,
            disk,
            shaper,
            events: Arc::default(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// The configuration in force now. A reload swaps it; what holds the
    /// returned snapshot keeps the settings it started with.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Puts `config` in force for new connections and attempts.
    pub fn replace_config(&self, config: Arc<Config>) {
        self.config.store(config);
    }
}
