//! Leases on a namespace's repository: backups and restores hold SHARED leases while restic
//! runs, prune/check/forget take an EXCLUSIVE one. A waiting exclusive request blocks new
//! shared ones, so maintenance is not starved by a stream of backups; every wait is bounded.
//! Leases live in memory with a TTL that the holder renews: after a restart the holders'
//! renewals fail (NotFound) and restic's own locks remain the safety net.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::error::RepoError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseMode {
    Shared,
    Exclusive,
}

impl LeaseMode {
    fn name(self) -> &'static str {
        match self {
            LeaseMode::Shared => "shared",
            LeaseMode::Exclusive => "exclusive",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: String,
    pub namespace: String,
    pub mode: LeaseMode,
    pub holder: String,
    pub expires: DateTime<Utc>,
}

#[derive(Debug)]
struct Held {
    info: LeaseInfo,
    deadline: Instant,
}

#[derive(Debug, Default)]
struct NamespaceLeases {
    held: Vec<Held>,
    /// Exclusive requests waiting; shared requests queue behind them.
    exclusive_waiting: usize,
}

impl NamespaceLeases {
    fn drop_expired(&mut self, now: Instant) -> bool {
        let before = self.held.len();
        self.held.retain(|held| {
            let alive = held.deadline > now;
            if !alive {
                tracing::warn!(
                    lease = %held.info.id,
                    holder = %held.info.holder,
                    namespace = %held.info.namespace,
                    "lease expired without renewal"
                );
            }
            alive
        });
        self.held.len() != before
    }

    fn admits(&self, mode: LeaseMode) -> bool {
        match mode {
            LeaseMode::Shared => {
                self.exclusive_waiting == 0
                    && self
                        .held
                        .iter()
                        .all(|held| held.info.mode == LeaseMode::Shared)
            }
            LeaseMode::Exclusive => self.held.is_empty(),
        }
    }

    fn holders(&self) -> String {
        let names: Vec<String> = self
            .held
            .iter()
            .map(|held| format!("{} ({})", held.info.holder, held.info.mode.name()))
            .collect();
        if names.is_empty() {
            "a waiting maintenance task".to_string()
        } else {
            names.join(", ")
        }
    }

    fn next_expiry(&self) -> Option<Instant> {
        self.held.iter().map(|held| held.deadline).min()
    }
}

#[derive(Debug, Default)]
pub struct LeaseManager {
    namespaces: Mutex<HashMap<String, NamespaceLeases>>,
    /// Woken on every release, expiry or grant, so waiters re-check.
    changed: Notify,
}

/// Keeps the count of waiting exclusive requests right even when the waiting future is
/// dropped (the RPC was cancelled by its caller).
struct ExclusiveWaiter<'a> {
    manager: &'a LeaseManager,
    namespace: &'a str,
}

impl Drop for ExclusiveWaiter<'_> {
    fn drop(&mut self) {
        let mut namespaces = self.manager.lock();
        if let Some(leases) = namespaces.get_mut(self.namespace) {
            leases.exclusive_waiting = leases.exclusive_waiting.saturating_sub(1);
        }
        drop(namespaces);
        self.manager.changed.notify_waiters();
    }
}

impl LeaseManager {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, NamespaceLeases>> {
        // A panic while holding the map leaves it consistent (every update is one statement).
        self.namespaces
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Grants a lease once no conflicting one is held, waiting at most `wait`.
    pub async fn acquire(
        &self,
        namespace: &str,
        mode: LeaseMode,
        holder: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LeaseInfo, RepoError> {
        let started = Instant::now();
        let deadline = started + wait;
        let _waiter = (mode == LeaseMode::Exclusive).then(|| {
            self.lock()
                .entry(namespace.to_string())
                .or_default()
                .exclusive_waiting += 1;
            ExclusiveWaiter {
                manager: self,
                namespace,
            }
        });
        loop {
            // Register for wake-ups before checking, so a release in between is not missed.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            let wake_at = {
                let mut namespaces = self.lock();
                let leases = namespaces.entry(namespace.to_string()).or_default();
                let expired = leases.drop_expired(now);
                // This request itself counts as a waiting exclusive one; look past it.
                let admitted = match mode {
                    LeaseMode::Exclusive => leases.held.is_empty(),
                    LeaseMode::Shared => leases.admits(mode),
                };
                if admitted {
                    let info = LeaseInfo {
                        id: uuid::Uuid::new_v4().to_string(),
                        namespace: namespace.to_string(),
                        mode,
                        holder: holder.to_string(),
                        expires: Utc::now()
                            + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX),
                    };
                    leases.held.push(Held {
                        info: info.clone(),
                        deadline: now + ttl,
                    });
                    tracing::info!(
                        lease = %info.id, namespace, holder, mode = mode.name(),
                        waited_ms = started.elapsed().as_millis() as u64,
                        "lease granted"
                    );
                    return Ok(info);
                }
                if now >= deadline {
                    return Err(RepoError::LeaseTimeout {
                        namespace: namespace.to_string(),
                        mode: mode.name(),
                        waited_seconds: started.elapsed().as_secs_f64(),
                        holders: leases.holders(),
                    });
                }
                if expired {
                    self.changed.notify_waiters();
                }
                leases
                    .next_expiry()
                    .map_or(deadline, |expiry| expiry.min(deadline))
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wake_at.into()) => {}
            }
        }
    }

    /// Extends lease `id` to live `ttl` from now.
    pub fn renew(&self, id: &str, ttl: Duration) -> Result<LeaseInfo, RepoError> {
        let now = Instant::now();
        let mut namespaces = self.lock();
        for leases in namespaces.values_mut() {
            if leases.drop_expired(now) {
                self.changed.notify_waiters();
            }
            if let Some(held) = leases.held.iter_mut().find(|held| held.info.id == id) {
                held.deadline = now + ttl;
                held.info.expires =
                    Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
                return Ok(held.info.clone());
            }
        }
        Err(RepoError::LeaseNotFound(id.to_string()))
    }

    /// Drops lease `id`; false when it had already expired or been released.
    pub fn release(&self, id: &str) -> bool {
        let mut namespaces = self.lock();
        let mut released = false;
        for leases in namespaces.values_mut() {
            let before = leases.held.len();
            leases.held.retain(|held| held.info.id != id);
            if leases.held.len() != before {
                released = true;
                tracing::info!(lease = %id, "lease released");
            }
        }
        drop(namespaces);
        self.changed.notify_waiters();
        released
    }

    /// The leases held on `namespace` now.
    #[cfg(test)]
    pub fn held(&self, namespace: &str) -> Vec<LeaseInfo> {
        let mut namespaces = self.lock();
        namespaces
            .get_mut(namespace)
            .map(|leases| {
                leases.drop_expired(Instant::now());
                leases.held.iter().map(|held| held.info.clone()).collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const TTL: Duration = Duration::from_secs(60);
    const LONG: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn shared_leases_coexist_and_exclusive_waits_for_them() {
        let manager = Arc::new(LeaseManager::default());
        let a = manager
            .acquire("ns", LeaseMode::Shared, "backup-a", TTL, LONG)
            .await
            .unwrap();
        let b = manager
            .acquire("ns", LeaseMode::Shared, "backup-b", TTL, LONG)
            .await
            .unwrap();
        let prune = tokio::spawn({
            let manager = manager.clone();
            async move {
                manager
                    .acquire("ns", LeaseMode::Exclusive, "prune", TTL, LONG)
                    .await
            }
        });
        tokio::task::yield_now().await;
        assert!(manager.release(&a.id));
        tokio::task::yield_now().await;
        assert!(!prune.is_finished(), "one shared lease is still held");
        assert!(manager.release(&b.id));
        let exclusive = prune.await.unwrap().unwrap();
        assert_eq!(exclusive.mode, LeaseMode::Exclusive);
        assert_eq!(manager.held("ns").len(), 1);
    }

    #[tokio::test]
    async fn shared_request_waits_behind_waiting_exclusive_one() {
        let manager = Arc::new(LeaseManager::default());
        let backup = manager
            .acquire("ns", LeaseMode::Shared, "backup", TTL, LONG)
            .await
            .unwrap();
        let prune = tokio::spawn({
            let manager = manager.clone();
            async move {
                manager
                    .acquire("ns", LeaseMode::Exclusive, "prune", TTL, LONG)
                    .await
            }
        });
        // Let the prune register as waiting.
        while manager.lock().get("ns").map_or(0, |l| l.exclusive_waiting) == 0 {
            tokio::task::yield_now().await;
        }
        let late = manager
            .acquire("ns", LeaseMode::Shared, "late", TTL, Duration::ZERO)
            .await;
        assert!(matches!(late, Err(RepoError::LeaseTimeout { .. })));
        manager.release(&backup.id);
        let prune = prune.await.unwrap().unwrap();
        manager.release(&prune.id);
        manager
            .acquire("ns", LeaseMode::Shared, "after", TTL, Duration::ZERO)
            .await
            .expect("free again once the prune released");
    }

    #[tokio::test]
    async fn wait_is_bounded_and_names_the_holder() {
        let manager = LeaseManager::default();
        manager
            .acquire("ns", LeaseMode::Exclusive, "prune", TTL, LONG)
            .await
            .unwrap();
        let error = manager
            .acquire(
                "ns",
                LeaseMode::Shared,
                "backup",
                TTL,
                Duration::from_millis(20),
            )
            .await
            .unwrap_err();
        assert!(error.to_string().contains("prune"), "{error}");
        // The timed-out exclusive waiter count must not leak into later requests.
        let other = manager
            .acquire(
                "ns",
                LeaseMode::Exclusive,
                "x",
                TTL,
                Duration::from_millis(10),
            )
            .await;
        assert!(other.is_err());
        assert_eq!(manager.lock()["ns"].exclusive_waiting, 0);
    }

    #[tokio::test]
    async fn unrenewed_lease_expires_and_frees_the_repository() {
        let manager = LeaseManager::default();
        let short = manager
            .acquire(
                "ns",
                LeaseMode::Shared,
                "crashed-backup",
                Duration::from_millis(30),
                LONG,
            )
            .await
            .unwrap();
        let prune = manager
            .acquire("ns", LeaseMode::Exclusive, "prune", TTL, LONG)
            .await
            .expect("granted once the shared lease expired");
        assert!(!manager.release(&short.id), "already expired");
        assert!(matches!(
            manager.renew(&short.id, TTL),
            Err(RepoError::LeaseNotFound(_))
        ));
        assert!(manager.renew(&prune.id, TTL).is_ok());
    }

    #[tokio::test]
    async fn namespaces_do_not_block_each_other() {
        let manager = LeaseManager::default();
        manager
            .acquire("a", LeaseMode::Exclusive, "prune", TTL, LONG)
            .await
            .unwrap();
        manager
            .acquire("b", LeaseMode::Shared, "backup", TTL, Duration::ZERO)
            .await
            .expect("another namespace is free");
    }
}
