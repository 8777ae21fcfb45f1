//! The one way a backup is deleted, whether a user asked (DeleteBackup) or its TTL ran out:
//! its snapshots are forgotten in each repository that holds one, its files deleted from the
//! storage location, its PodVolumeBackup mirrors deleted, and it leaves the index.

use stowage_contract::tags::labels;
use stowage_proto::v1::{BackupOrigin, BackupPhase};

use crate::{
    backup::{backup_is_final, namespaces_of},
    deps::Deps,
    error::{Error, Result},
    kube::mirror::MirrorKind,
    state::BackupEntry,
};

/// Deletes the backup of `entry`; returns the ids of the snapshots forgotten. A failure
/// leaves the backup Deleting, so the deletion may be retried.
pub async fn delete_backup(deps: &Deps, entry: &BackupEntry) -> Result<Vec<String>> {
    let backup = entry.get();
    let name = backup.name.clone();
    let status = backup.status.clone().unwrap_or_default();
    if backup.origin == BackupOrigin::Velero as i32 {
        return Err(Error::Precondition(format!(
            "backup `{name}` was written by Velero; stowage does not delete it"
        )));
    }
    if !backup_is_final(status.phase) && status.phase != BackupPhase::Deleting as i32 {
        return Err(Error::Precondition(format!(
            "backup `{name}` is {}; cancel it before deleting it",
            crate::tally::backup_phase_word(status.phase)
        )));
    }
    entry.update(|b| {
        b.status.get_or_insert_with(Default::default).phase = BackupPhase::Deleting as i32
    });
    entry.log("info", format!("deleting backup {name}"));
    let result = remove(deps, &name, &status).await;
    match &result {
        Ok(_) => deps.index.remove_backup(&name),
        Err(error) => entry.log("error", format!("deleting backup {name}: {error}")),
    }
    result
}

async fn remove(
    deps: &Deps,
    name: &str,
    status: &stowage_proto::v1::BackupStatus,
) -> Result<Vec<String>> {
    let namespaces = namespaces_of(
        status
            .volumes
            .iter()
            .filter(|v| !v.snapshot_id.is_empty())
            .map(|v| v.volume.as_ref()),
    );
    let mut forgotten = Vec::new();
    for namespace in namespaces {
        forgotten.extend(deps.repo_manager.forget_backup(&namespace, name).await?);
    }
    if let Some(store) = &deps.store {
        store.delete_backup(name).await?;
    }
    if let Some(cluster) = &deps.cluster
        && let Err(error) = cluster
            .delete_mirrors(MirrorKind::PodVolumeBackup, labels::BACKUP_NAME, name)
            .await
    {
        // The backup is gone from the bucket and the repositories; a mirror left behind is
        // only a stale object, not a reason to report the deletion failed.
        tracing::warn!(%error, "deleting the PodVolumeBackup mirrors of {name}");
    }
    Ok(forgotten)
}
