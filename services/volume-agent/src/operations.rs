//! The agent's operation table: which backups and restores are queued, running or ended and
//! kept (so a new caller can take their result), the slot limit that makes the rest wait, and
//! the per-operation cancellation token that CancelOperation and agent shutdown fire. Each
//! entry holds the operation's event relay, which AttachBackup/AttachRestore and GetAgentInfo
//! read. It publishes the running/queued counts as gauges whenever they change.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use stowage_metrics::agent::AgentMetrics;
use stowage_proto::v1::{BackupVolumeEvent, PodVolumeRef, RestoreVolumeEvent};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::relay::Relay;

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
    serials: std::sync::atomic::AtomicU64,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    metrics: AgentMetrics,
}

struct Entry {
    cancel: CancellationToken,
    running: bool,
    /// Ended and kept for its result; takes no slot and counts as neither running nor queued.
    ended: bool,
    /// Tells this registration from a later one of the same id (after this one ended).
    serial: u64,
    info: Arc<OperationInfo>,
}

/// The relay of an operation, by kind.
#[derive(Clone)]
pub enum Relays {
    Backup(Arc<Relay<BackupVolumeEvent>>),
    Restore(Arc<Relay<RestoreVolumeEvent>>),
}

impl Relays {
    /// The operation's kind, as a message names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Relays::Backup(_) => BackupVolumeEvent::KIND,
            Relays::Restore(_) => RestoreVolumeEvent::KIND,
        }
    }
}

/// The events of one kind of operation, and how its relay is picked out of [`Relays`]: what
/// lets one attach handler serve AttachBackup and AttachRestore.
pub trait RelayKind: Clone + Send + Sized + 'static {
    /// `backup` or `restore`.
    const KIND: &'static str;
    /// The relay when the operation is of this kind.
    fn relay(relays: Relays) -> Option<Arc<Relay<Self>>>;
    /// `relay` as an operation of this kind.
    fn relays(relay: Arc<Relay<Self>>) -> Relays;
}

impl RelayKind for BackupVolumeEvent {
    const KIND: &'static str = "backup";
    fn relay(relays: Relays) -> Option<Arc<Relay<Self>>> {
        match relays {
            Relays::Backup(relay) => Some(relay),
            Relays::Restore(_) => None,
        }
    }
    fn relays(relay: Arc<Relay<Self>>) -> Relays {
        Relays::Backup(relay)
    }
}

impl RelayKind for RestoreVolumeEvent {
    const KIND: &'static str = "restore";
    fn relay(relays: Relays) -> Option<Arc<Relay<Self>>> {
        match relays {
            Relays::Restore(relay) => Some(relay),
            Relays::Backup(_) => None,
        }
    }
    fn relays(relay: Arc<Relay<Self>>) -> Relays {
        Relays::Restore(relay)
    }
}

/// What an operation is, for GetAgentInfo and attach.
pub struct OperationInfo {
    pub volume: Option<PodVolumeRef>,
    /// Name and uid of the backup or restore.
    pub name: String,
    pub uid: String,
    pub relay: Relays,
}

/// One row of [`Operations::list`].
pub struct Listed {
    pub id: String,
    pub running: bool,
    pub ended: bool,
    pub info: Arc<OperationInfo>,
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
                serials: Default::default(),
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

    /// Adds `id` as queued. The entry lives as long as the returned handle. An ended entry
    /// kept for its result gives way to a new operation of the same id.
    pub fn register(
        &self,
        id: &str,
        info: OperationInfo,
    ) -> Result<OperationHandle, OperationError> {
        let mut entries = self.lock();
        if entries.get(id).is_some_and(|entry| !entry.ended) {
            return Err(OperationError::AlreadyExists(id.to_string()));
        }
        let cancel = self.inner.shutdown.child_token();
        let serial = self
            .inner
            .serials
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        entries.insert(
            id.to_string(),
            Entry {
                cancel: cancel.clone(),
                running: false,
                ended: false,
                serial,
                info: Arc::new(info),
            },
        );
        self.publish(&entries);
        Ok(OperationHandle {
            id: id.to_string(),
            serial,
            operations: self.clone(),
            cancel,
        })
    }

    /// Fires the token of `id`; false when there is no such operation queued or running. An
    /// ended one kept for its result is forgotten at once.
    pub fn cancel(&self, id: &str) -> bool {
        match self.lock().get(id) {
            Some(entry) => {
                entry.cancel.cancel();
                !entry.ended
            }
            None => false,
        }
    }

    /// The operation `id`, queued, running or ended and kept.
    pub fn get(&self, id: &str) -> Option<Arc<OperationInfo>> {
        self.lock().get(id).map(|entry| entry.info.clone())
    }

    /// Every operation, sorted by id.
    pub fn list(&self) -> Vec<Listed> {
        let mut listed: Vec<Listed> = self
            .lock()
            .iter()
            .map(|(id, entry)| Listed {
                id: id.clone(),
                running: entry.running,
                ended: entry.ended,
                info: entry.info.clone(),
            })
            .collect();
        listed.sort_by(|a, b| a.id.cmp(&b.id));
        listed
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
    let live = entries.values().filter(|e| !e.ended).count() as u32;
    (running, live - running)
}

/// One registered operation; dropping it removes the entry and frees its slot.
pub struct OperationHandle {
    id: String,
    serial: u64,
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
        if let Some(entry) = entries
            .get_mut(&self.id)
            .filter(|e| e.serial == self.serial)
        {
            entry.running = true;
        }
        self.operations.publish(&entries);
        Some(permit)
    }

    /// The operation ended (its slot is free by now); its entry stays, with its result in its
    /// relay, until the handle is dropped.
    pub fn ended(&self) {
        let mut entries = self.operations.lock();
        if let Some(entry) = entries
            .get_mut(&self.id)
            .filter(|e| e.serial == self.serial)
        {
            entry.running = false;
            entry.ended = true;
        }
        self.operations.publish(&entries);
    }
}

impl Drop for OperationHandle {
    fn drop(&mut self) {
        let mut entries = self.operations.lock();
        if entries
            .get(&self.id)
            .is_some_and(|e| e.serial == self.serial)
        {
            entries.remove(&self.id);
        }
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

    fn info() -> OperationInfo {
        OperationInfo {
            volume: None,
            name: "nightly".into(),
            uid: "u1".into(),
            relay: Relays::Backup(Arc::new(Relay::new().0)),
        }
    }

    #[tokio::test]
    async fn an_ended_operation_is_kept_apart_from_the_counts_and_gives_way_to_a_new_one() {
        let operations = Operations::new(1, CancellationToken::new(), metrics().1);
        let a = operations.register("a", info()).unwrap();
        let permit = a.start(|_| {}).await.unwrap();
        assert!(
            operations.register("a", info()).is_err(),
            "running: refused"
        );
        drop(permit);
        a.ended();
        assert_eq!(operations.counts(), (0, 0));
        assert!(operations.get("a").is_some(), "kept for its result");
        assert!(operations.list()[0].ended);
        let again = operations.register("a", info()).unwrap();
        drop(a);
        assert!(
            operations.get("a").is_some(),
            "the old handle does not remove the new registration"
        );
        assert_eq!(operations.counts(), (0, 1));
        drop(again);
        assert!(operations.get("a").is_none());
    }

    #[tokio::test]
    async fn third_operation_queues_and_cancel_releases_it() {
        let (registry, metrics) = metrics();
        let operations = Operations::new(2, CancellationToken::new(), metrics);
        let a = operations.register("a", info()).unwrap();
        let b = operations.register("b", info()).unwrap();
        let c = operations.register("c", info()).unwrap();
        assert!(
            operations.register("a", info()).is_err(),
            "duplicate id refused"
        );
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

    #[test]
    fn an_attach_takes_the_relay_of_its_own_kind_only() {
        let backup = info().relay;
        assert_eq!(backup.kind(), "backup");
        assert!(BackupVolumeEvent::relay(backup.clone()).is_some());
        assert!(RestoreVolumeEvent::relay(backup).is_none());
        let restore = Relays::Restore(Arc::new(Relay::new().0));
        assert_eq!(restore.kind(), "restore");
        assert!(RestoreVolumeEvent::relay(restore.clone()).is_some());
        assert!(BackupVolumeEvent::relay(restore).is_none());
    }

    #[tokio::test]
    async fn finished_operation_frees_its_slot() {
        let operations = Operations::new(1, CancellationToken::new(), metrics().1);
        let a = operations.register("a", info()).unwrap();
        let permit = a.start(|_| {}).await.unwrap();
        drop(permit);
        drop(a);
        let b = operations.register("b", info()).unwrap();
        let mut queued = false;
        assert!(b.start(|_| queued = true).await.is_some());
        assert!(!queued);
        assert_eq!(operations.counts(), (1, 0));
    }
}
