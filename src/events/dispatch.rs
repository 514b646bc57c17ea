//! One task per `[[events]]` subscriber: it reads the journal from the
//! subscriber's cursor, turns entries into events, sends them in batches,
//! and moves the cursor (durably) only after the sink said done, so every
//! event arrives at least once, in journal order, across restarts, kill -9
//! and outages. A failed send is retried with backoff (1 s doubling to
//! 5 min); an event older than the subscriber's `max_age` is dropped with a
//! log line and counted. A pruning task removes what every subscriber took.
//!
//! The backlog lives in the spool, never in memory: what a subscriber has
//! not taken stays in the journal, bounded by the disk reserve.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use sluice_queue::Queue;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::http::HttpSink;
use super::redis::RedisSink;
use super::{Classifier, Event};
use crate::config::{Config, EventSink, EventsConfig};

/// How often an idle subscriber looks for new entries.
const POLL: Duration = Duration::from_millis(100);
/// The first retry after a failed send, doubled up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// What `sluice events status` and the admin API show of a subscriber.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct SubscriberStatus {
    pub name: String,
    pub sink: String,
    /// Journal entries not yet taken.
    pub pending: u64,
    /// The time of the oldest entry not yet taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest: Option<String>,
    pub sent: u64,
    pub failed: u64,
    pub dropped: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<String>,
}

/// The event metrics: `sluice_events_pending{subscriber}`, and sent,
/// failed and dropped totals.
#[derive(Default)]
pub struct EventMetrics {
    pub pending: Family<Vec<(String, String)>, Gauge>,
    pub sent: Family<Vec<(String, String)>, Counter>,
    pub failed: Family<Vec<(String, String)>, Counter>,
    pub dropped: Family<Vec<(String, String)>, Counter>,
}

impl EventMetrics {
    /// Registers them under `sluice_events_*`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "events_pending",
            "Journal entries a subscriber has not taken yet",
            self.pending.clone(),
        );
        registry.register(
            "events_sent",
            "Events a subscriber accepted",
            self.sent.clone(),
        );
        registry.register(
            "events_failed",
            "Failed sends to a subscriber (each retried)",
            self.failed.clone(),
        );
        registry.register(
            "events_dropped",
            "Events given up on at the subscriber's max_age",
            self.dropped.clone(),
        );
    }
}

fn label(name: &str) -> Vec<(String, String)> {
    vec![("subscriber".to_string(), name.to_string())]
}

/// The running subscribers and their status.
pub struct Dispatchers {
    statuses: Arc<Mutex<BTreeMap<String, SubscriberStatus>>>,
    queue: Queue,
}

impl Dispatchers {
    /// Starts a task per subscriber of `config` (none: the journal stays
    /// off and nothing runs); they stop at `shutdown`.
    pub fn start(
        config: &Config,
        queue: &Queue,
        connector: TlsConnector,
        metrics: Arc<EventMetrics>,
        shutdown: CancellationToken,
    ) -> Arc<Dispatchers> {
        let dispatchers = Arc::new(Dispatchers {
            statuses: Arc::new(Mutex::new(BTreeMap::new())),
            queue: queue.clone(),
        });
        queue.set_journal(!config.events.is_empty());
        if config.events.is_empty() {
            return dispatchers;
        }
        let node = config.cluster.node.clone();
        let classifier = Arc::new(Classifier::new(&config.bounce_classes));
        let lifetime = config.delivery.max_queue_lifetime;
        for subscriber in &config.events {
            lock(&dispatchers.statuses).insert(
                subscriber.name.clone(),
                SubscriberStatus {
                    name: subscriber.name.clone(),
                    sink: sink_name(&subscriber.sink()),
                    ..SubscriberStatus::default()
                },
            );
            let task = Subscriber {
                config: subscriber.clone(),
                queue: queue.clone(),
                node: node.clone(),
                classifier: classifier.clone(),
                max_age: subscriber.max_age.unwrap_or(lifetime),
                statuses: dispatchers.statuses.clone(),
                metrics: metrics.clone(),
                connector: connector.clone(),
            };
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = task.run() => {}
                    () = shutdown.cancelled() => {}
                }
            });
        }
        let names: Vec<String> = config.events.iter().map(|s| s.name.clone()).collect();
        let prune_queue = queue.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                    () = shutdown.cancelled() => return,
                }
                prune(&prune_queue, &names);
            }
        });
        dispatchers
    }

    /// Every subscriber's status now.
    pub fn statuses(&self) -> Vec<SubscriberStatus> {
        let mut out: Vec<SubscriberStatus> = lock(&self.statuses).values().cloned().collect();
        for status in &mut out {
            fill_pending(&self.queue, status);
        }
        out
    }
}

/// The status of `config`'s subscribers read from the spool alone (no
/// server runs): pending and oldest; the counters live in the server.
pub fn status_offline(config: &Config, queue: &Queue) -> Vec<SubscriberStatus> {
    config
        .events
        .iter()
        .map(|subscriber| {
            let mut status = SubscriberStatus {
                name: subscriber.name.clone(),
                sink: sink_name(&subscriber.sink()),
                ..SubscriberStatus::default()
            };
            fill_pending(queue, &mut status);
            status
        })
        .collect()
}

fn fill_pending(queue: &Queue, status: &mut SubscriberStatus) {
    let cursor = queue
        .journal_cursor(&status.name)
        .ok()
        .flatten()
        .unwrap_or(0);
    status.pending = queue.journal_pending(cursor);
    status.oldest = queue
        .journal_read(cursor, 1)
        .ok()
        .and_then(|entries| entries.into_iter().next())
        .map(|entry| super::rfc3339(entry.time));
}

/// Removes the entries every configured subscriber took.
fn prune(queue: &Queue, names: &[String]) {
    let mut lowest = u64::MAX;
    for name in names {
        match queue.journal_cursor(name) {
            Ok(Some(cursor)) => lowest = lowest.min(cursor),
            _ => return,
        }
    }
    if lowest > 0
        && lowest != u64::MAX
        && let Err(error) = queue.journal_prune(lowest)
    {
        tracing::warn!(%error, "pruning the event journal failed");
    }
}

fn sink_name(sink: &EventSink) -> String {
    match sink {
        EventSink::Http { .. } => "http".into(),
        EventSink::Amqp { .. } => "amqp".into(),
        EventSink::Redis { .. } => "redis".into(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A subscriber's sink, built once.
enum Sink {
    Http(HttpSink),
    Redis(RedisSink),
}

impl Sink {
    async fn send(&mut self, events: &[Event]) -> Result<(), String> {
        match self {
            Sink::Http(sink) => {
                let body = serde_json::to_vec(events).map_err(|error| error.to_string())?;
                sink.send(body).await
            }
            Sink::Redis(sink) => {
                let texts: Vec<String> = events
                    .iter()
                    .map(|event| serde_json::to_string(event).unwrap_or_default())
                    .collect();
                sink.send(&texts).await
            }
        }
    }
}

struct Subscriber {
    config: EventsConfig,
    queue: Queue,
    node: String,
    classifier: Arc<Classifier>,
    max_age: Duration,
    statuses: Arc<Mutex<BTreeMap<String, SubscriberStatus>>>,
    metrics: Arc<EventMetrics>,
    connector: TlsConnector,
}

impl Subscriber {
    fn sink(&self) -> Result<Sink, String> {
        match self.config.sink() {
            EventSink::Http { url } => Ok(Sink::Http(HttpSink {
                url: url
                    .parse()
                    .map_err(|error| format!("URL {url:?}: {error}"))?,
                secret: self.config.secret.clone(),
                connector: self.connector.clone(),
            })),
            EventSink::Redis { url, stream } => Ok(Sink::Redis(RedisSink::new(&url, &stream)?)),
            EventSink::Amqp { .. } => {
                Err("AMQP subscribers are not supported by this build yet".into())
            }
        }
    }

    async fn run(self) {
        let name = self.config.name.clone();
        let mut sink = match self.sink() {
            Ok(sink) => sink,
            Err(error) => {
                tracing::error!(subscriber = %name, %error, "event subscriber cannot start");
                self.failed(&error);
                return;
            }
        };
        let mut cursor = match self.queue.journal_cursor(&name) {
            Ok(cursor) => cursor.unwrap_or(0),
            Err(error) => {
                tracing::error!(subscriber = %name, %error, "reading the event cursor failed");
                return;
            }
        };
        let mut backoff = BACKOFF_MIN;
        tracing::info!(subscriber = %name, cursor, "event subscriber started");
        loop {
            self.metrics
                .pending
                .get_or_create(&label(&name))
                .set(i64::try_from(self.queue.journal_pending(cursor)).unwrap_or(i64::MAX));
            let entries = match self.queue.journal_read(cursor, self.config.batch) {
                Ok(entries) => entries,
                Err(error) => {
                    tracing::warn!(subscriber = %name, %error, "reading the event journal failed");
                    tokio::time::sleep(BACKOFF_MIN).await;
                    continue;
                }
            };
            let Some(last) = entries.last().map(|entry| entry.seq) else {
                tokio::time::sleep(POLL).await;
                continue;
            };
            let mut batch = Vec::with_capacity(entries.len());
            for entry in &entries {
                let Some(event) = Event::from_entry(entry, &self.node, &self.classifier) else {
                    continue;
                };
                if !self.config.wants(&event.kind) {
                    continue;
                }
                batch.push((entry.time, event));
            }
            // Sent until done, or until the oldest is past max_age.
            loop {
                let now = Utc::now();
                let now_age = |time: DateTime<Utc>| (now - time).to_std().unwrap_or_default();
                let before = batch.len();
                batch.retain(|(time, event)| {
                    let keep = now_age(*time) <= self.max_age;
                    if !keep {
                        tracing::warn!(subscriber = %name, event_id = %event.id, kind = %event.kind,
                            queue_id = event.queue_id.as_deref().unwrap_or(""),
                            "event dropped: older than the subscriber's max_age");
                    }
                    keep
                });
                let dropped = before - batch.len();
                if dropped > 0 {
                    self.metrics
                        .dropped
                        .get_or_create(&label(&name))
                        .inc_by(dropped as u64);
                    lock(&self.statuses)
                        .entry(name.clone())
                        .or_default()
                        .dropped += dropped as u64;
                }
                if batch.is_empty() {
                    break;
                }
                let events: Vec<Event> = batch.iter().map(|(_, event)| event.clone()).collect();
                match sink.send(&events).await {
                    Ok(()) => {
                        self.metrics
                            .sent
                            .get_or_create(&label(&name))
                            .inc_by(events.len() as u64);
                        lock(&self.statuses).entry(name.clone()).or_default().sent +=
                            events.len() as u64;
                        backoff = BACKOFF_MIN;
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(subscriber = %name, events = events.len(), %error,
                            retry_in = ?backoff, "sending events failed");
                        self.failed(&error);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
            if let Err(error) = self.queue.journal_ack(&name, last).await {
                tracing::warn!(subscriber = %name, %error, "saving the event cursor failed");
                tokio::time::sleep(BACKOFF_MIN).await;
            }
            cursor = last;
        }
    }

    fn failed(&self, error: &str) {
        self.metrics
            .failed
            .get_or_create(&label(&self.config.name))
            .inc();
        let mut statuses = lock(&self.statuses);
        let status = statuses.entry(self.config.name.clone()).or_default();
        status.failed += 1;
        status.last_error = Some(error.to_string());
        status.last_error_at = Some(super::rfc3339(Utc::now()));
    }
}
