//! What the repo-manager remembers across restarts, kept in the storage location itself under
//! `stowage/repositories/<namespace>.json` (beside Velero's `backups/` and `restic/`, never
//! inside them): each repository's phase, creation time and maintenance status.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use stowage_storage_location::object_store::{
    self, ObjectStore, ObjectStoreExt as _, PutPayload, path::Path,
};

use stowage_metrics::repo_manager::{MaintenanceState, RepositoryState};

use crate::{
    error::RepoError,
    schedule::{MaintenanceKind, MaintenanceRecord},
};

pub const STATE_PREFIX: &str = "stowage/repositories";

/// The object at `path`, or None when there is none: the repo-manager's own files (records,
/// key copies) are absent until first written.
pub async fn read_optional(
    store: &dyn ObjectStore,
    path: &Path,
) -> Result<Option<bytes::Bytes>, RepoError> {
    match store.get(path).await {
        Ok(result) => result.bytes().await.map(Some),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(error) => Err(error),
    }
    .map_err(|source| RepoError::Store {
        operation: "read",
        path: path.to_string(),
        source,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    NotReady,
    Ready,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepositoryRecord {
    pub namespace: String,
    pub url: String,
    pub phase: Phase,
    #[serde(default)]
    pub message: String,
    pub created: DateTime<Utc>,
    #[serde(default)]
    pub secret_name: String,
    #[serde(default)]
    pub check: MaintenanceRecord,
    #[serde(default)]
    pub prune: MaintenanceRecord,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::NotReady => "NotReady",
            Phase::Ready => "Ready",
            Phase::Failed => "Failed",
        }
    }
}

impl RepositoryRecord {
    /// The record as the metrics gauges read it.
    pub fn metric_state(&self) -> RepositoryState {
        let run = |kind: MaintenanceKind, record: &MaintenanceRecord| MaintenanceState {
            kind: kind.name(),
            finished_unix: record
                .last_finished
                .map(|finished| finished.timestamp_millis() as f64 / 1000.0),
            duration_seconds: record.last_duration_seconds,
            succeeded: record.last_succeeded,
        };
        RepositoryState {
            namespace: self.namespace.clone(),
            phase: self.phase.name().to_string(),
            maintenance: vec![
                run(MaintenanceKind::Check, &self.check),
                run(MaintenanceKind::Prune, &self.prune),
            ],
        }
    }
}

/// Reads and writes repository records in the object store.
#[derive(Debug, Clone)]
pub struct StateStore {
    store: Arc<dyn ObjectStore>,
}

fn record_path(namespace: &str) -> Path {
    Path::from(format!("{STATE_PREFIX}/{namespace}.json"))
}

impl StateStore {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        StateStore { store }
    }

    pub async fn save(&self, record: &RepositoryRecord) -> Result<(), RepoError> {
        let path = record_path(&record.namespace);
        let body = serde_json::to_vec_pretty(record).map_err(|error| RepoError::Corrupt {
            path: path.to_string(),
            reason: error.to_string(),
        })?;
        self.store
            .put(&path, PutPayload::from(body))
            .await
            .map_err(|source| RepoError::Store {
                operation: "write",
                path: path.to_string(),
                source,
            })?;
        Ok(())
    }

    /// Every stored record. An unreadable one is skipped with a warning rather than keeping
    /// the service from starting.
    pub async fn load_all(&self) -> Result<Vec<RepositoryRecord>, RepoError> {
        let prefix = Path::from(STATE_PREFIX);
        let objects: Vec<_> =
            self.store
                .list(Some(&prefix))
                .try_collect()
                .await
                .map_err(|source| RepoError::Store {
                    operation: "list",
                    path: prefix.to_string(),
                    source,
                })?;
        let mut records = Vec::new();
        for object in objects {
            if !object.location.as_ref().ends_with(".json") {
                continue;
            }
            match self.read(&object.location).await {
                Ok(Some(record)) => records.push(record),
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "skipping unreadable repository record"),
            }
        }
        records.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        Ok(records)
    }

    async fn read(&self, path: &Path) -> Result<Option<RepositoryRecord>, RepoError> {
        let Some(bytes) = read_optional(&*self.store, path).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| RepoError::Corrupt {
                path: path.to_string(),
                reason: error.to_string(),
            })
    }

    /// Whether restic's repository for `namespace` exists (its `config` object is there).
    /// Deletes lock file `id` of the namespace's restic repository (`restic/<ns>/locks/<id>`),
    /// one restic's `unlock` would not remove yet. Already gone is fine.
    pub async fn remove_restic_lock(&self, namespace: &str, id: &str) -> Result<(), RepoError> {
        // Ids come from `restic list locks`: hex, never a path.
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RepoError::InvalidArgument(format!(
                "`{id}` is not a restic lock id"
            )));
        }
        let path = Path::from(format!("restic/{namespace}/locks/{id}"));
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(source) => Err(RepoError::Store {
                operation: "delete",
                path: path.to_string(),
                source,
            }),
        }
    }

    pub async fn restic_repository_exists(&self, namespace: &str) -> Result<bool, RepoError> {
        let path = Path::from(format!("restic/{namespace}/config"));
        match self.store.head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(source) => Err(RepoError::Store {
                operation: "stat",
                path: path.to_string(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    #[tokio::test]
    async fn records_round_trip_through_the_store() {
        let store = StateStore::new(Arc::new(InMemory::new()));
        let mut record = RepositoryRecord {
            namespace: "team-a".into(),
            url: "/x/restic/team-a".into(),
            phase: Phase::Ready,
            message: String::new(),
            created: "2026-01-01T00:00:00Z".parse().unwrap(),
            secret_name: "stowage-repo-team-a".into(),
            check: MaintenanceRecord::default(),
            prune: MaintenanceRecord::default(),
        };
        record.check.record(
            "2026-01-02T00:00:00Z".parse().unwrap(),
            "2026-01-02T00:00:03Z".parse().unwrap(),
            None,
        );
        store.save(&record).await.unwrap();
        let mut other = record.clone();
        other.namespace = "b".into();
        store.save(&other).await.unwrap();
        let loaded = store.load_all().await.unwrap();
        assert_eq!(loaded, vec![other, record.clone()]);

        let state = record.metric_state();
        assert_eq!(
            (state.namespace.as_str(), state.phase.as_str()),
            ("team-a", "Ready")
        );
        let check = &state.maintenance[0];
        assert_eq!(check.kind, "check");
        assert_eq!(check.finished_unix, Some(1_767_312_003.0));
        assert_eq!(check.duration_seconds, 3.0);
        assert!(check.succeeded);
        assert_eq!(state.maintenance[1].finished_unix, None, "prune never ran");
    }
}
