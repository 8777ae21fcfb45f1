//! The orchestrator's half of the fencing rule (`stowage_contract::fencing`): every write to
//! the storage location's records first checks that this process still holds its leader term
//! (its last lease renewal is fresh), so an old leader that wakes up after a takeover writes
//! nothing, and its caller is answered `Unavailable`. Beneath it, the object store every
//! writer of the location shares is fenced by the same term
//! (`stowage_storage_location::FencedObjectStore`, built in `main.rs`), which also covers the
//! schedules. Its requests to the agents and the repo-manager carry its term, which they
//! refuse once a newer leader spoke to them (`stowage_grpc::fencing`).

use std::{collections::BTreeSet, sync::Arc};

use stowage_contract::fencing::LeaderTerm;
use stowage_proto::v1::{Backup, LogLine, Restore};
use stowage_velero_format::BackupResources;
use tokio::time::Instant;

use crate::{
    error::{Error, Result},
    ports::RecordStore,
};

/// A record store whose writes are refused once this process no longer leads.
pub struct FencedStore {
    inner: Arc<dyn RecordStore>,
    term: LeaderTerm,
}

impl FencedStore {
    pub fn new(inner: Arc<dyn RecordStore>, term: LeaderTerm) -> FencedStore {
        FencedStore { inner, term }
    }

    fn check(&self, what: &str) -> Result<()> {
        if self.term.holds(Instant::now().into_std()) {
            return Ok(());
        }
        tracing::warn!(what, "not written: this orchestrator no longer leads");
        Err(Error::NotLeader(format!(
            "not writing {what}: this orchestrator's leader term {} has ended (another replica \
             leads)",
            self.term.get().unwrap_or_default()
        )))
    }
}

#[tonic::async_trait]
impl RecordStore for FencedStore {
    async fn put_backup(
        &self,
        backup: &Backup,
        logs: &[LogLine],
        resources: Option<&BackupResources>,
    ) -> Result<()> {
        self.check(&format!("backup {}", backup.name))?;
        self.inner.put_backup(backup, logs, resources).await
    }

    async fn list_backups_except(
        &self,
        known: &BTreeSet<String>,
    ) -> Result<Vec<(Backup, Vec<LogLine>)>> {
        self.inner.list_backups_except(known).await
    }

    async fn backup_tarball(&self, name: &str) -> Result<stowage_velero_format::BackupResources> {
        self.inner.backup_tarball(name).await
    }

    async fn delete_backup(&self, name: &str) -> Result<()> {
        self.check(&format!("the deletion of backup {name}"))?;
        self.inner.delete_backup(name).await
    }

    async fn repository_exists(&self, namespace: &str) -> Result<bool> {
        self.inner.repository_exists(namespace).await
    }

    async fn put_restore(&self, restore: &Restore, logs: &[LogLine]) -> Result<()> {
        self.check(&format!("restore {}", restore.name))?;
        self.inner.put_restore(restore, logs).await
    }

    async fn list_restores(&self) -> Result<Vec<Restore>> {
        self.inner.list_restores().await
    }

    async fn get_restore(&self, name: &str) -> Result<Option<Restore>> {
        self.inner.get_restore(name).await
    }

    async fn restore_logs(&self, name: &str) -> Result<Vec<LogLine>> {
        self.inner.restore_logs(name).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::testing::FakeStore;

    fn backup() -> Backup {
        Backup {
            name: "nightly".into(),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_whose_term_went_stale_writes_nothing() {
        let records = Arc::new(FakeStore::default());
        let term = LeaderTerm::default();
        let store = FencedStore::new(records.clone(), term.clone());
        store.put_backup(&backup(), &[], None).await.unwrap();
        assert_eq!(
            records.backups.lock().unwrap().len(),
            1,
            "no election: written"
        );
        records.backups.lock().unwrap().clear();

        term.renewed(3, Instant::now().into_std() + Duration::from_secs(10));
        store.put_backup(&backup(), &[], None).await.unwrap();
        assert_eq!(records.backups.lock().unwrap().len(), 1, "fresh: written");
        records.backups.lock().unwrap().clear();

        // Stopped past its renew deadline: it wakes up with a stale term.
        tokio::time::advance(Duration::from_secs(30)).await;
        let error = store.put_backup(&backup(), &[], None).await.unwrap_err();
        assert!(error.to_string().contains("term 3"), "{error}");
        assert_eq!(error.code(), tonic::Code::Unavailable);
        assert!(store.delete_backup("nightly").await.is_err());
        assert!(
            records.backups.lock().unwrap().is_empty(),
            "nothing written"
        );
    }

    #[tokio::test]
    async fn schedules_and_deletions_go_through_the_fenced_object_store_too() {
        use stowage_storage_location::object_store::{ObjectStore, memory::InMemory};

        use crate::schedules::ScheduleStore as _;

        let term = LeaderTerm::default();
        let bucket: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        // As main.rs builds it: the records' store over the fenced object store.
        let store = crate::store::Store::new(
            Arc::new(stowage_storage_location::FencedObjectStore::new(
                bucket.clone(),
                term.clone(),
                "orchestrator",
            )),
            "stowage".into(),
        );
        let schedule = stowage_velero_format::ScheduleRecord::new("nightly");
        let now = std::time::Instant::now();
        term.renewed(5, now + Duration::from_secs(10));
        store.put_schedule(&schedule).await.unwrap();
        assert_eq!(
            store.list_schedules().await.unwrap().len(),
            1,
            "fresh: written"
        );

        // Woken up after its renew deadline.
        term.renewed(5, now - Duration::from_millis(1));
        let error = store
            .put_schedule(&schedule)
            .await
            .expect_err("a stale term writes no schedule");
        assert!(
            error
                .to_string()
                .contains("this orchestrator's leader term 5 has ended"),
            "{error}"
        );
        assert!(store.delete_schedule("nightly").await.is_err());
        assert_eq!(
            store.list_schedules().await.unwrap().len(),
            1,
            "reads pass; nothing was deleted"
        );
    }
}
