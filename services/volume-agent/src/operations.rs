//! The agent's operation table: which backups and restores are queued or running, the slot
//! limit that makes the rest wait, and the per-operation cancellation token that
//! CancelOperation and agent shutdown fire. It publishes the running/queued counts as gauges
//! whenever they change.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use stowage_metrics::agent::AgentMetrics;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    #[error("operation `{0}` is already queued or running")]
    AlreadyExists(String),
}

#[derive(Clone)]
pub struct Operations {
    inner: Arc<Inner>,
}

struct Inner {
    slots: Arc<Semaphore>,
    max_concurrent: u32,
    entries: Mutex<HashMap<String, Entry>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    metrics: AgentMetrics,
}

struct Entry {
    cancel: CancellationToken,
    running: bool,
}

impl Operations {
    /// At most `max_concurrent` operations run at once (at least one). Every operation's
    /// token is a child of `shutdown`.
    pub fn new(max_concurrent: u32, shutdown: CancellationToken, metrics: AgentMetrics) -> Self {
        let max_concurrent = max_concurrent.max(1);
        Operations {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(max_concurrent as usize)),
                max_concurrent,
                entries: Mutex::new(HashMap::new()),
                shutdown,
                tasks: TaskTracker::new(),
                metrics,
            }),
        }
    }

    pub fn max_concurrent(&self) -> u32 {
        self.inner.max_concurrent
    }

    /// Where operation tasks are spawned, so shutdown can wait for them.
    pub fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }

    /// Adds `id` as queued. The entry lives as long as the returned handle.
    pub fn register(&self, id: &str) -> Result<OperationHandle, OperationError> {
        let mut entries = self.lock();
        if entries.contains_key(id) {
            return Err(OperationError::AlreadyExists(id.to_string()));
        }
        let cancel = self.inner.shutdown.child_token();
        entries.insert(
            id.to_string(),
            Entry {
                cancel: cancel.clone(),
                running: false,
            },
        );
        self.publish(&entries);
        Ok(OperationHandle {
            id: id.to_string(),
            operations: self.clone(),
            cancel,
        })
    }

    /// Fires the token of `id`; false when there is no such operation.
    pub fn cancel(&self, id: &str) -> bool {
        match self.lock().get(id) {
            Some(entry) => {
                entry.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// (running, queued)
    pub fn counts(&self) -> (u32, u32) {
        counts(&self.lock())
    }

    pub fn metrics(&self) -> &AgentMetrics {
        &self.inner.metrics
    }

    /// Called with the lock held after every change, so the gauges never show a state the
    /// table was not in.
    fn publish(&self, entries: &HashMap<String, Entry>) {
        let (running, queued) = counts(entries);
        self.inner.metrics.set_queue(running, queued);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock leaves a consistent map; keep serving.
        self.inner
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn counts(entries: &HashMap<String, Entry>) -> (u32, u32) {
    let running = entries.values().filter(|e| e.running).count() as u32;
    (running, entries.len() as u32 - running)
}

/// One registered operation; dropping it removes the entry and frees its slot.
pub struct OperationHandle {
    id: String,
    operations: Operations,
    pub cancel: CancellationToken,
}

impl OperationHandle {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn metrics(&self) -> &AgentMetrics {
        self.operations.metrics()
    }

    /// Waits for a free slot. `on_queued(position)` is called once if it has to wait
    /// (1 = next to run). `None` when cancelled while waiting.
    pub async fn start(&self, on_queued: impl FnOnce(u32)) -> Option<OwnedSemaphorePermit> {
        let slots = self.operations.inner.slots.clone();
        let permit = match slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let position = self.operations.counts().1;
                on_queued(position.max(1));
                tokio::select! {
                    biased;
                    _ = self.cancel.cancelled() => return None,
                    permit = slots.acquire_owned() => permit.ok()?,
                }
            }
        };
        let mut entries = self.operations.lock();
        if let Some(entry) = entries.get_mut(&self.id) {
            entry.running = true;
        }
        self.operations.publish(&entries);
        Some(permit)
    }
}

impl Drop for OperationHandle {
    fn drop(&mut self) {
        let mut entries = self.operations.lock();
        entries.remove(&self.id);
        self.operations.publish(&entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> (stowage_metrics::Registry, AgentMetrics) {
        let mut registry = stowage_metrics::Registry::default();
        let metrics = AgentMetrics::register(&mut registry);
        (registry, metrics)
    }

    #[tokio::test]
    async fn third_operation_queues_and_cancel_releases_it() {
        let (registry, metrics) = metrics();
        let operations = Operations::new(2, CancellationToken::new(), metrics);
        let a = operations.register("a").unwrap();
        let b = operations.register("b").unwrap();
        let c = operations.register("c").unwrap();
        assert!(operations.register("a").is_err(), "duplicate id refused");
        let _pa = a.start(|_| panic!("a must not queue")).await.unwrap();
        let _pb = b.start(|_| panic!("b must not queue")).await.unwrap();
        assert_eq!(operations.counts(), (2, 1));
        let text = stowage_metrics::encode(&registry);
        assert!(
            text.contains("stowage_agent_operations_running 2")
                && text.contains("stowage_agent_operations_queued 1"),
            "{text}"
        );
        let mut queued_at = None;
        let cancel = operations.clone();
        let waiter = c.start(|position| {
            queued_at = Some(position);
            assert!(cancel.cancel("c"));
        });
        assert!(waiter.await.is_none(), "cancelled while queued");
        assert_eq!(queued_at, Some(1));
        drop(c);
        assert!(!operations.cancel("c"), "entry removed with its handle");
        let text = stowage_metrics::encode(&registry);
        assert!(text.contains("stowage_agent_operations_queued 0"), "{text}");
    }

    #[tokio::test]
    async fn finished_operation_frees_its_slot() {
        let operations = Operations::new(1, CancellationToken::new(), metrics().1);
        let a = operations.register("a").unwrap();
        let permit = a.start(|_| {}).await.unwrap();
        drop(permit);
        drop(a);
        let b = operations.register("b").unwrap();
        let mut queued = false;
        assert!(b.start(|_| queued = true).await.is_some());
        assert!(!queued);
        assert_eq!(operations.counts(), (1, 0));
    }
}
