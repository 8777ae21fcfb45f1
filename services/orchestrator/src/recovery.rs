//! Startup and housekeeping: the backups already in the object store become the index (the
//! store is the source of truth, so a fresh orchestrator lists them), a backup that was running
//! when the previous orchestrator died has its unfinished volumes failed with "orchestrator
//! restarted", and expired backups are deleted.

use std::time::Duration;

use stowage_proto::v1::{BackupPhase, ForgetBackupRequest, VolumePhase};
use tokio_util::sync::CancellationToken;

use crate::{
    backup::{backup_is_final, mirror_volume, persist, recount},
    deps::Deps,
    error::Result,
    kube::mirror::{self, MirrorKind},
    state::{Entry, now},
};

pub const RESTARTED: &str = "orchestrator restarted";

pub async fn load(deps: &Deps) -> Result<()> {
    let Some(store) = &deps.store else {
        return Ok(());
    };
    for (backup, logs) in store.load_backups().await? {
        let name = backup.name.clone();
        let unfinished = !backup_is_final(backup.status.as_ref().map_or(0, |s| s.phase));
        let entry = Entry::new(backup, logs, CancellationToken::new());
        if unfinished {
            entry.update(|backup| {
                let status = backup.status.get_or_insert_with(Default::default);
                for volume in &mut status.volumes {
                    let phase = VolumePhase::try_from(volume.phase).unwrap_or_default();
                    if !matches!(
                        phase,
                        VolumePhase::Completed | VolumePhase::Failed | VolumePhase::Cancelled
                    ) {
                        volume.phase = VolumePhase::Failed as i32;
                        volume.error_message = RESTARTED.to_string();
                        volume.finished = Some(now());
                    }
                }
                recount(status);
                status.phase = if status.volumes_completed == 0 {
                    BackupPhase::Failed
                } else {
                    BackupPhase::PartiallyFailed
                } as i32;
                status.failure_reason = RESTARTED.to_string();
                status.finished = Some(now());
            });
            entry.log(
                "error",
                format!(
                    "backup {name} was running when the {RESTARTED}; its unfinished volumes failed"
                ),
            );
            persist(deps, &entry, None).await;
            let backup = entry.get();
            for volume in &backup.status.clone().unwrap_or_default().volumes {
                mirror_volume(deps, &backup, volume).await;
            }
        }
        deps.index.insert_backup(&name, entry);
    }
    // Restores live in memory; their mirrors must not stay InProgress forever either.
    if let Some(cluster) = &deps.cluster {
        match mirror::fail_unfinished(cluster, MirrorKind::PodVolumeRestore, RESTARTED).await {
            Ok(0) => {}
            Ok(marked) => {
                tracing::warn!(marked, "unfinished PodVolumeRestores failed: {RESTARTED}")
            }
            Err(error) => tracing::warn!(%error, "failing unfinished PodVolumeRestores"),
        }
    }
    Ok(())
}

/// Every `interval` until shutdown: picks up backups that appeared in the object store (written
/// by Velero or another cluster) and deletes the expired ones.
pub async fn housekeeping(deps: Deps, interval: Duration) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = deps.shutdown.cancelled() => return,
        }
        sync_from_store(&deps).await;
        expire(&deps).await;
    }
}

/// Adds backups found in the store that the index does not know; known ones are left alone
/// (the index is ahead of the store while a backup runs or is being deleted).
async fn sync_from_store(deps: &Deps) {
    let Some(store) = &deps.store else {
        return;
    };
    let known = |name: &str| deps.index.backup(name).is_some();
    match store.load_backups_except(known).await {
        Ok(backups) => {
            for (backup, logs) in backups {
                if deps.index.backup(&backup.name).is_none() {
                    tracing::info!(backup = %backup.name, "backup found in the object store");
                    let name = backup.name.clone();
                    deps.index
                        .insert_backup(&name, Entry::new(backup, logs, CancellationToken::new()));
                }
            }
        }
        Err(error) => tracing::warn!(%error, "listing the backups in the object store"),
    }
}

/// Deletes the backups past their expiration: snapshots first, then files.
async fn expire(deps: &Deps) {
    {
        let now = chrono::Utc::now().timestamp();
        for entry in deps.index.backups() {
            let backup = entry.get();
            let status = backup.status.clone().unwrap_or_default();
            let expired = status
                .expiration
                .as_ref()
                .is_some_and(|e| e.seconds > 0 && e.seconds < now);
            if !expired
                || !backup_is_final(status.phase)
                || backup.origin != stowage_proto::v1::BackupOrigin::Stowage as i32
            {
                continue;
            }
            tracing::info!(backup = %backup.name, "backup expired");
            let mut namespaces: Vec<String> = status
                .volumes
                .iter()
                .filter_map(|v| v.volume.as_ref().map(|r| r.namespace.clone()))
                .collect();
            namespaces.sort();
            namespaces.dedup();
            let mut forgotten = true;
            for namespace in namespaces {
                let result = deps
                    .repo_manager
                    .clone()
                    .forget_backup(ForgetBackupRequest {
                        namespace,
                        backup_name: backup.name.clone(),
                    })
                    .await;
                if let Err(status) = result {
                    tracing::warn!(backup = %backup.name, error = %status.message(), "forgetting an expired backup");
                    forgotten = false;
                }
            }
            if forgotten {
                if let Some(store) = &deps.store
                    && let Err(error) = store.delete_backup(&backup.name).await
                {
                    tracing::warn!(backup = %backup.name, %error, "deleting an expired backup");
                    continue;
                }
                deps.index.remove_backup(&backup.name);
            }
        }
    }
}
