//! The queue's memory of a failed storage write: sled refuses every write
//! after an I/O error on its log until the database is opened again, so the
//! first failed write or flush is kept and announced for the owner to act on
//! (stop, and be restarted once the disk has room).

use std::sync::Arc;

use tokio::sync::watch;

/// The first storage write or flush that failed, shared by every part of
/// one open queue. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    first: Arc<watch::Sender<Option<String>>>,
}

impl Default for Failure {
    fn default() -> Self {
        Failure {
            first: Arc::new(watch::Sender::new(None)),
        }
    }
}

impl Failure {
    /// Records `reason` unless a failure was recorded before; the first one
    /// is logged.
    pub(crate) fn set(&self, reason: &str) {
        self.first.send_if_modified(|first| {
            if first.is_some() {
                return false;
            }
            tracing::error!(%reason, "queue storage failed: no further writes until the spool is opened again");
            *first = Some(reason.to_string());
            true
        });
    }

    /// Forgets the failure, once the database was opened again.
    pub(crate) fn clear(&self) {
        self.first.send_replace(None);
    }

    /// The first failure, if any.
    pub(crate) fn get(&self) -> Option<String> {
        self.first.borrow().clone()
    }

    /// Resolves with the first failure once there is one.
    pub(crate) async fn wait(&self) -> String {
        let mut receiver = self.first.subscribe();
        // The sender lives in `self`, so the channel cannot close.
        let first = match receiver.wait_for(Option::is_some).await {
            Ok(first) => first.clone(),
            Err(_) => None,
        };
        match first {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_failure_is_kept_and_wakes_waiters() {
        let failure = Failure::default();
        assert_eq!(failure.get(), None);
        let waiter = tokio::spawn({
            let failure = failure.clone();
            async move { failure.wait().await }
        });
        failure.set("disk full");
        failure.set("later error");
        assert_eq!(failure.get().as_deref(), Some("disk full"));
        assert_eq!(waiter.await.expect("waiter"), "disk full");
        assert_eq!(
            failure.wait().await,
            "disk full",
            "resolves at once afterwards"
        );
    }
}
