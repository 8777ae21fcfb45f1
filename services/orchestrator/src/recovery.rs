//! Startup and housekeeping: the backups already in the object store become the index (the
//! store is the source of truth, so a fresh orchestrator lists them), a backup that was running
//! when the previous orchestrator died or lost its leadership is taken over and run to its end
//! (`takeover.rs`), and so is a restore that was running (one known only from its mirrors,
//! without a record, has its unfinished volumes failed with "orchestrator restarted"), and
//! expired backups are deleted.

use std::{collections::BTreeMap, time::Duration};

use ::kube::api::DynamicObject;
use serde_json::Value;
use stowage_contract::tags::labels as mirror_labels;
use stowage_proto::{
    prost_types,
    v1::{
        BackupPhase, LogLine, PodVolumeRef, PodVolumeRestore, Progress, Restore, RestorePhase,
        RestoreSpec, RestoreStatus, VolumePhase,
    },
};
use tokio_util::sync::CancellationToken;

use crate::{
    backup::{backup_is_final, expiration, is_terminal, persist, recount, volume_mirror},
    deps::Deps,
    error::Result,
    kube::mirror::MirrorKind,
    lifecycle, restore,
    restore::restore_is_final,
    state::{Entry, RestoreEntry, now},
    tally::ending,
};

pub const RESTARTED: &str = "orchestrator restarted";

pub async fn load(deps: &Deps) -> Result<()> {
    // Backups first: a taken-over data-only restore looks its snapshots up among them.
    let listed = load_backups(deps).await;
    recover_restores(deps).await;
    listed
}

async fn load_backups(deps: &Deps) -> Result<()> {
    if let Some(store) = &deps.store {
        let mut checked = VeleroChecks::default();
        for (backup, logs) in store.list_backups_except(&Default::default()).await? {
            let backup = check_velero_repositories(deps, backup, &mut checked).await;
            adopt(deps, backup, logs, true).await;
        }
    }
    Ok(())
}

/// The restores a previous orchestrator ran, from their records in the storage location and,
/// for those without one, from their PodVolumeRestore mirrors. One that was running is taken
/// over and run to its end (`takeover.rs`). One known only from its mirrors cannot be (its
/// spec is not there): it ends its unfinished volumes Failed "orchestrator restarted", and the
/// restore helpers of their pods are told, so the pods do not wait out the helper's timeout.
async fn recover_restores(deps: &Deps) {
    // The restores with a record (taken over when unfinished), and those known only from
    // their mirrors (ended when unfinished: without the record's spec they cannot be run).
    let mut restores: BTreeMap<String, (Restore, Vec<LogLine>, bool)> = BTreeMap::new();
    if let Some(store) = &deps.store {
        match store.list_restores().await {
            Ok(listed) => {
                for restore in listed {
                    let logs = match store.restore_logs(&restore.name).await {
                        Ok(logs) => logs,
                        Err(error) => {
                            tracing::warn!(restore = %restore.name, %error, "reading a restore's logs");
                            Vec::new()
                        }
                    };
                    restores.insert(restore.name.clone(), (restore, logs, true));
                }
            }
            Err(error) => tracing::warn!(%error, "reading past restores from the storage location"),
        }
    }
    if let Some(cluster) = &deps.cluster {
        match cluster.list_mirrors(MirrorKind::PodVolumeRestore).await {
            Ok(objects) => {
                for restore in restores_from_mirrors(&objects) {
                    restores
                        .entry(restore.name.clone())
                        .or_insert((restore, Vec::new(), false));
                }
            }
            Err(error) => tracing::warn!(%error, "reading past restores from their mirrors"),
        }
    }
    let mut taken_over = Vec::new();
    for (name, (restore, logs, recorded)) in restores {
        let unfinished = restore.status.as_ref().is_none_or(|status| {
            !restore_is_final(status.phase) || status.volumes.iter().any(|v| !is_terminal(v.phase))
        });
        if unfinished && recorded && deps.cluster.is_some() {
            tracing::warn!(restore = %name, "taking over a restore its orchestrator left running");
            let span = tracing::info_span!(
                "restore", restore = %name, restore_uid = %restore.uid, resumed = true
            );
            let entry = Entry::new(restore, logs, deps.shutdown.child_token());
            deps.index.insert_restore(&name, entry.clone());
            taken_over.push((entry, span));
            continue;
        }
        let entry = Entry::new(restore, logs, CancellationToken::new());
        if unfinished {
            end_unfinished_restore(deps, &entry).await;
        }
        deps.index.insert_restore(&name, entry);
    }
    // A mirror no restore above accounted for (its labels lost) must not stay InProgress
    // either: nobody will finish it.
    if let Some(cluster) = &deps.cluster {
        match cluster
            .fail_unfinished_mirrors(MirrorKind::PodVolumeRestore, RESTARTED)
            .await
        {
            Ok(0) => {}
            Ok(marked) => {
                tracing::warn!(marked, "unfinished PodVolumeRestores failed: {RESTARTED}")
            }
            Err(error) => tracing::warn!(%error, "failing unfinished PodVolumeRestores"),
        }
    }
    // Started only now: the mirrors failed above include theirs, which each runner writes
    // again as recorded before any volume runs, with nothing left to overwrite them.
    for (entry, span) in taken_over {
        restore::spawn(deps, entry, restore::Start::TakenOver, span);
    }
}

/// Ends a restore no task of this process runs: its unfinished volumes fail, their pods'
/// helpers get the failure marker, and the mirrors and the record say so.
async fn end_unfinished_restore(deps: &Deps, entry: &RestoreEntry) {
    let mut ended = Vec::new();
    entry.modify(|restore| {
        let status = restore.status.get_or_insert_with(Default::default);
        for (index, volume) in status.volumes.iter_mut().enumerate() {
            if !is_terminal(volume.phase) {
                volume.phase = VolumePhase::Failed as i32;
                volume.error_message = RESTARTED.to_string();
                volume.finished = Some(now());
                ended.push(index);
            }
        }
        restore::recount(status);
        // The restart failed the run: never Completed.
        status.phase = RestorePhase::from(ending(
            status.volumes_completed,
            status.volumes_failed,
            true,
        )) as i32;
        status.failure_reason = RESTARTED.to_string();
        status.finished = Some(now());
    });
    let name = entry.read(|restore| restore.name.clone());
    entry.log(
        "error",
        format!("restore {name} was running when the {RESTARTED}; its unfinished volumes failed"),
    );
    let mut current = entry.get();
    // Not taken over: an agent keeps an operation whose caller went away running for its
    // grace period, so the ones still there are stopped now (restic killed), before the
    // helpers are told, and no restic writes into a volume whose restore ended.
    let uid = current.uid.clone();
    for &index in &ended {
        let node = current
            .status
            .as_ref()
            .and_then(|s| s.volumes.get(index))
            .map(|v| v.node.clone())
            .unwrap_or_default();
        if node.is_empty() {
            continue;
        }
        if let Err(error) = deps
            .agents
            .cancel_operation(&node, &format!("{uid}-{index}"))
            .await
        {
            tracing::warn!(%error, node, "stopping an unfinished restore's operation");
        }
    }
    restore::abandon_unrestored(deps, entry, &mut current).await;
    crate::data_restore::delete_leftover_pods(deps, entry, &current).await;
    entry.update(|restore| *restore = current.clone());
    if let Some(cluster) = &deps.cluster {
        for &index in &ended {
            if let Some(volume) = current.status.as_ref().and_then(|s| s.volumes.get(index)) {
                let mirror = restore::volume_mirror(&current, volume);
                if let Err(error) = cluster
                    .apply_mirror(MirrorKind::PodVolumeRestore, &mirror)
                    .await
                {
                    tracing::warn!(%error, "mirroring PodVolumeRestore {}", mirror.name);
                }
            }
        }
    }
    restore::persist(deps, entry, &entry.get()).await;
}

/// What one listing learned of the Velero repositories it checked: each namespace's answer,
/// and whether the repo-manager could not be asked (then the rest of the listing is not
/// checked). The check is best-effort and asks once (`Patience::Once`): a listing, at start
/// above all, must not wait out an absent repo-manager, let alone once per namespace.
#[derive(Default)]
struct VeleroChecks {
    answers: BTreeMap<String, Option<String>>,
    unreachable: bool,
}

/// A readable Velero backup gets the reason its repositories cannot be opened (missing, wrong
/// password) as its `unrestorable_reason`, so it is listed with it. `checked` keeps each
/// namespace's answer for one listing. When the check cannot run, the backup is listed as it
/// is; `CreateRestore` checks again.
async fn check_velero_repositories(
    deps: &Deps,
    mut backup: stowage_proto::v1::Backup,
    checked: &mut VeleroChecks,
) -> stowage_proto::v1::Backup {
    if backup.origin != stowage_proto::v1::BackupOrigin::Velero as i32
        || !backup.unrestorable_reason.is_empty()
    {
        return backup;
    }
    let mut problems = Vec::new();
    for namespace in restore::backup_namespaces(&backup) {
        if !checked.unreachable && !checked.answers.contains_key(&namespace) {
            match restore::velero_namespace_problem(deps, &namespace, restore::Patience::Once).await
            {
                Ok(problem) => {
                    checked.answers.insert(namespace.clone(), problem);
                }
                Err(error) => {
                    checked.unreachable = true;
                    tracing::warn!(
                        backup = %backup.name, %namespace, %error,
                        "could not check the repository of a Velero backup; a restore checks again"
                    );
                }
            }
        }
        if let Some(Some(problem)) = checked.answers.get(&namespace) {
            problems.push(problem.clone());
        }
    }
    backup.unrestorable_reason = problems.join("; ");
    backup
}

/// Puts a backup read from the store into the index. One that is unfinished (its orchestrator
/// died or lost its leadership) is taken over when `take_over` (at start, or on becoming the
/// leader): this process runs it to its end. Otherwise no task of this process runs it, so its
/// unfinished volumes fail "orchestrator restarted" and that is written back.
async fn adopt(
    deps: &Deps,
    backup: stowage_proto::v1::Backup,
    logs: Vec<stowage_proto::v1::LogLine>,
    take_over: bool,
) {
    let name = backup.name.clone();
    // Velero's backups are read-only to stowage, whatever their phase.
    let unfinished = !backup_is_final(backup.status.as_ref().map_or(0, |s| s.phase))
        && backup.origin == stowage_proto::v1::BackupOrigin::Stowage as i32;
    if unfinished && take_over {
        tracing::warn!(backup = %name, "taking over a backup its orchestrator left running");
        let entry = Entry::new(backup, logs, deps.shutdown.child_token());
        deps.index.insert_backup(&name, entry.clone());
        crate::backup::spawn_resumed(deps, entry);
        return;
    }
    let expires = expiration(deps, &backup);
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
            // The restart failed the run: never Completed.
            status.phase = BackupPhase::from(ending(
                status.volumes_completed,
                status.volumes_failed,
                true,
            )) as i32;
            status.failure_reason = RESTARTED.to_string();
            status.finished = Some(now());
            // Ended like any other run, so it expires like any other.
            if status.expiration.is_none() {
                status.expiration = Some(expires);
            }
        });
        entry.log(
            "error",
            format!(
                "backup {name} was running when the {RESTARTED}; its unfinished volumes failed"
            ),
        );
        persist(deps, &entry, None).await;
        let backup = entry.get();
        if let Some(cluster) = &deps.cluster {
            // Objects the previous orchestrator wrote: patched first.
            for volume in backup.status.iter().flat_map(|status| &status.volumes) {
                let mirror = volume_mirror(&backup, volume);
                if let Err(error) = cluster
                    .apply_mirror(MirrorKind::PodVolumeBackup, &mirror)
                    .await
                {
                    tracing::warn!(%error, "mirroring PodVolumeBackup {}", mirror.name);
                }
            }
        }
    }
    deps.index.insert_backup(&name, entry);
}

fn timestamp(value: &Value) -> Option<prost_types::Timestamp> {
    let time = chrono::DateTime::parse_from_rfc3339(value.as_str()?).ok()?;
    Some(prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: 0,
    })
}

/// Rebuilds the restores a previous orchestrator ran from their PodVolumeRestore mirrors (the
/// only place restores are kept), so ListRestores/GetRestore still answer after a restart.
pub fn restores_from_mirrors(objects: &[DynamicObject]) -> Vec<Restore> {
    let mut restores: BTreeMap<String, Restore> = BTreeMap::new();
    for object in objects {
        let labels = object.metadata.labels.clone().unwrap_or_default();
        let Some(name) = labels.get(mirror_labels::RESTORE_NAME) else {
            continue;
        };
        let restore = restores.entry(name.clone()).or_insert_with(|| Restore {
            name: name.clone(),
            uid: labels
                .get(mirror_labels::RESTORE_UID)
                .cloned()
                .unwrap_or_default(),
            spec: Some(RestoreSpec {
                backup_name: labels
                    .get(mirror_labels::BACKUP_NAME)
                    .cloned()
                    .unwrap_or_default(),
                ..Default::default()
            }),
            status: Some(RestoreStatus::default()),
        });
        let data = &object.data;
        let text = |pointer: &str| {
            data.pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let number = |pointer: &str| data.pointer(pointer).and_then(Value::as_u64).unwrap_or(0);
        let phase = VolumePhase::try_from(
            stowage_contract::phase::VolumePhase::parse(&text("/status/phase")).to_proto(),
        )
        .unwrap_or_default();
        let status = restore.status.get_or_insert_with(Default::default);
        let pod = format!("{}/{}", text("/spec/pod/namespace"), text("/spec/pod/name"));
        if !status.pods_created.contains(&pod) {
            status.pods_created.push(pod);
        }
        status.volumes.push(PodVolumeRestore {
            volume: Some(PodVolumeRef {
                namespace: text("/spec/pod/namespace"),
                pod_name: text("/spec/pod/name"),
                pod_uid: text("/spec/pod/uid"),
                volume_name: text("/spec/volume"),
                ..Default::default()
            }),
            phase: phase as i32,
            snapshot_id: text("/spec/snapshotID"),
            progress: Some(Progress {
                bytes_done: number("/status/progress/bytesDone"),
                bytes_total: number("/status/progress/totalBytes"),
                ..Default::default()
            }),
            started: data.pointer("/status/startTimestamp").and_then(timestamp),
            finished: data
                .pointer("/status/completionTimestamp")
                .and_then(timestamp),
            error_message: text("/status/message"),
            source_namespace: text("/spec/sourceNamespace"),
            repository: text("/spec/repoIdentifier"),
            ..Default::default()
        });
    }
    restores
        .into_values()
        .map(|mut restore| {
            let status = restore.status.get_or_insert_with(Default::default);
            restore::recount(status);
            // Volumes still running when their orchestrator went leave the restore running,
            // for recovery to end.
            status.phase = if status.volumes.iter().all(|v| is_terminal(v.phase)) {
                RestorePhase::from(ending(
                    status.volumes_completed,
                    status.volumes_failed,
                    false,
                )) as i32
            } else {
                RestorePhase::InProgress as i32
            };
            status.started = status
                .volumes
                .iter()
                .filter_map(|v| v.started)
                .min_by_key(|t| t.seconds);
            status.finished = status
                .volumes
                .iter()
                .filter_map(|v| v.finished)
                .max_by_key(|t| t.seconds);
            restore
        })
        .collect()
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
    let known = deps
        .index
        .backups()
        .iter()
        .map(|entry| entry.read(|backup| backup.name.clone()))
        .collect();
    match store.list_backups_except(&known).await {
        Ok(backups) => {
            let mut checked = VeleroChecks::default();
            for (backup, logs) in backups {
                if deps.index.backup(&backup.name).is_none() {
                    let backup = check_velero_repositories(deps, backup, &mut checked).await;
                    tracing::info!(backup = %backup.name, "backup found in the object store");
                    adopt(deps, backup, logs, false).await;
                }
            }
        }
        Err(error) => tracing::warn!(%error, "listing the backups in the object store"),
    }
}

/// Deletes the backups past their expiration, the way DeleteBackup does.
async fn expire(deps: &Deps) {
    let now = chrono::Utc::now().timestamp();
    for entry in deps.index.backups() {
        let (name, expired) = entry.read(|backup| {
            let status = backup.status.clone().unwrap_or_default();
            let expired = status
                .expiration
                .as_ref()
                .is_some_and(|e| e.seconds > 0 && e.seconds < now)
                && backup_is_final(status.phase)
                && backup.origin == stowage_proto::v1::BackupOrigin::Stowage as i32;
            (backup.name.clone(), expired)
        });
        if !expired {
            continue;
        }
        tracing::info!(backup = %name, "backup expired");
        if let Err(error) = lifecycle::delete_backup(deps, &entry).await {
            tracing::warn!(backup = %name, %error, "deleting an expired backup");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mirror(restore: &str, volume: &str, phase: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "velero.io/v1", "kind": "PodVolumeRestore",
            "metadata": {"name": format!("{restore}-{volume}"), "labels": {
                "velero.io/restore-name": restore, "velero.io/restore-uid": "uid-1",
                "velero.io/backup-name": "nightly",
            }},
            "spec": {"pod": {"namespace": "bar", "name": "sample", "uid": "p1"}, "volume": volume,
                     "snapshotID": "abc", "sourceNamespace": "foo",
                     "repoIdentifier": "s3:http://s3/bucket/restic/foo"},
            "status": {"phase": phase, "message": if phase == "Failed" { RESTARTED } else { "" },
                       "completionTimestamp": "2026-01-01T00:00:00Z"},
        }))
        .unwrap()
    }

    #[test]
    fn restores_are_rebuilt_from_their_mirrors() {
        let restores = restores_from_mirrors(&[
            mirror("r1", "data", "Completed"),
            mirror("r1", "cache", "Failed"),
            mirror("r2", "data", "Completed"),
        ]);
        assert_eq!(restores.len(), 2);
        let r1 = &restores[0];
        assert_eq!((r1.name.as_str(), r1.uid.as_str()), ("r1", "uid-1"));
        assert_eq!(r1.spec.as_ref().unwrap().backup_name, "nightly");
        let status = r1.status.as_ref().unwrap();
        assert_eq!(status.phase, RestorePhase::PartiallyFailed as i32);
        assert_eq!(status.pods_created, vec!["bar/sample".to_string()]);
        assert_eq!(status.volumes[1].error_message, RESTARTED);
        assert_eq!(
            status.volumes[0].repository,
            "s3:http://s3/bucket/restic/foo"
        );
        assert_eq!(status.volumes[0].source_namespace, "foo");
        assert!(status.finished.is_some());
        assert_eq!(
            restores[1].status.as_ref().unwrap().phase,
            RestorePhase::Completed as i32
        );
    }
}

/// Recovery after a restart, against in-memory fakes: nothing that was running stays running.
#[cfg(test)]
mod restart {
    use stowage_proto::v1::{Backup, BackupOrigin, BackupStatus, PodVolumeBackup, Restore};

    use super::*;
    use crate::{
        ports::ClusterPort,
        testing::{World, limits, pod},
    };

    fn volume(pod: &str, name: &str) -> PodVolumeRef {
        PodVolumeRef {
            namespace: "shop".into(),
            pod_name: pod.into(),
            volume_name: name.into(),
            ..Default::default()
        }
    }

    /// A running backup that appears in the location later (not at start or takeover) is not
    /// this orchestrator's to run: it ends failed.
    #[tokio::test(start_paused = true)]
    async fn a_running_backup_found_later_ends_failed_and_expires_like_any_other() {
        let world = World::new(limits());
        let backup = Backup {
            name: "nightly".into(),
            uid: "u1".into(),
            origin: BackupOrigin::Stowage as i32,
            status: Some(BackupStatus {
                phase: BackupPhase::InProgress as i32,
                volumes: vec![
                    PodVolumeBackup {
                        volume: Some(volume("db", "data")),
                        phase: VolumePhase::Completed as i32,
                        snapshot_id: "s1".into(),
                        ..Default::default()
                    },
                    PodVolumeBackup {
                        volume: Some(volume("db", "logs")),
                        phase: VolumePhase::InProgress as i32,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        world
            .store
            .backups
            .lock()
            .unwrap()
            .insert("nightly".into(), (backup, Vec::new()));
        sync_from_store(&world.deps).await;
        let recovered = world.deps.index.backup("nightly").unwrap().get();
        let status = recovered.status.unwrap();
        assert_eq!(status.phase, BackupPhase::PartiallyFailed as i32);
        assert_eq!(status.failure_reason, RESTARTED);
        assert_eq!(status.volumes[1].phase, VolumePhase::Failed as i32);
        assert_eq!(status.volumes[1].error_message, RESTARTED);
        let expiration = status.expiration.expect("an ended backup expires");
        let from_now = expiration.seconds - chrono::Utc::now().timestamp();
        assert!(
            (30 * 86_400 - 60..=30 * 86_400).contains(&from_now),
            "the default TTL of 30 days, from now: {from_now} s"
        );
        let stored = world.store.backups.lock().unwrap()["nightly"].0.clone();
        assert_eq!(
            stored.status.unwrap().phase,
            BackupPhase::PartiallyFailed as i32
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_restore_known_only_from_its_mirrors_is_ended_too() {
        let world = World::new(limits());
        let mut running = pod("shop", "db-0", "node-a", &["data"]);
        running.metadata.uid = Some("new-db-0".into());
        world.cluster.add_pod(running);
        let restore = Restore {
            name: "back".into(),
            uid: "restore-uid".into(),
            spec: Some(RestoreSpec {
                backup_name: "nightly".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let volume = PodVolumeRestore {
            volume: Some(PodVolumeRef {
                pod_uid: "new-db-0".into(),
                ..volume("db-0", "data")
            }),
            phase: VolumePhase::InProgress as i32,
            ..Default::default()
        };
        world
            .cluster
            .apply_mirror(
                MirrorKind::PodVolumeRestore,
                &restore::volume_mirror(&restore, &volume),
            )
            .await
            .unwrap();
        load(&world.deps).await.unwrap();
        let status = world
            .deps
            .index
            .restore("back")
            .unwrap()
            .get()
            .status
            .unwrap();
        assert_eq!(status.phase, RestorePhase::Failed as i32);
        assert_eq!(
            world.agents.abandoned_volumes(),
            [("data".into(), RESTARTED.into())]
        );
        assert_eq!(
            world.store.restores.lock().unwrap()["back"]
                .0
                .status
                .as_ref()
                .unwrap()
                .phase,
            RestorePhase::Failed as i32
        );
    }
}
