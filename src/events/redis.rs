//! The Redis Streams sink: `XADD <stream> * event <the JSON>` per event,
//! pipelined per batch; the replies (entry IDs) count as done.

use std::time::Duration;

use redis::aio::MultiplexedConnection;

/// A batch's round trip gets this long.
const TIMEOUT: Duration = Duration::from_secs(10);

pub(super) struct RedisSink {
    pub client: redis::Client,
    pub stream: String,
    pub connection: Option<MultiplexedConnection>,
}

impl RedisSink {
    pub(super) fn new(url: &str, stream: &str) -> Result<RedisSink, String> {
        let client = redis::Client::open(url).map_err(|error| format!("redis URL: {error}"))?;
        Ok(RedisSink {
            client,
            stream: stream.to_string(),
            connection: None,
        })
    }

    /// Adds each of `events` (JSON texts) to the stream, in order.
    pub(super) async fn send(&mut self, events: &[String]) -> Result<(), String> {
        let result = tokio::time::timeout(TIMEOUT, self.add(events)).await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => {
                self.connection = None;
                Err(error)
            }
            Err(_) => {
                self.connection = None;
                Err(format!("no answer within {}s", TIMEOUT.as_secs()))
            }
        }
    }

    async fn add(&mut self, events: &[String]) -> Result<(), String> {
        if self.connection.is_none() {
            let connection = self
                .client
                .get_multiplexed_async_connection()
                .await
                .map_err(|error| format!("connect: {error}"))?;
            self.connection = Some(connection);
        }
        let Some(connection) = self.connection.as_mut() else {
            return Err("no connection".into());
        };
        let mut pipe = redis::pipe();
        for event in events {
            pipe.cmd("XADD")
                .arg(&self.stream)
                .arg("*")
                .arg("event")
                .arg(event);
        }
        let ids: Vec<String> = pipe
            .query_async(connection)
            .await
            .map_err(|error| format!("XADD: {error}"))?;
        if ids.len() != events.len() {
            return Err(format!("{} replies for {} events", ids.len(), events.len()));
        }
        Ok(())
    }
}
