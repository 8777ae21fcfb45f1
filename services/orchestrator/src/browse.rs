//! `ListBackupFiles` (`stowage backup ls`): finds the pod volume in the backup's record, maps it
//! to its snapshot and namespace repository, and hands back the repo-manager's streamed
//! listing as it comes (the orchestrator never holds a listing). Paths are the snapshot's,
//! which are the volume's own (`/` is the volume root): volumes are backed up as `.`.

use stowage_contract::{names, paths};
use stowage_proto::v1::{ListBackupFilesRequest, ListSnapshotFilesRequest, VolumePhase};

use crate::{
    deps::Deps,
    error::{Error, Result, validate_name, validate_namespace},
    ports::FileBatches,
};

/// Checks the request, finds the volume's snapshot and starts the listing. Bad input is
/// `InvalidArgument`; an unknown backup or a volume the backup does not hold is `NotFound`
/// naming it; a volume whose backup made no snapshot is `FailedPrecondition` with its error.
pub async fn list_backup_files(
    deps: &Deps,
    request: ListBackupFilesRequest,
) -> Result<FileBatches> {
    validate_name("backup name", &request.backup_name)?;
    validate_namespace(&request.namespace)?;
    names::dns_subdomain("pod", &request.pod)?;
    names::dns_label("volume", &request.volume)?;
    let dir = paths::snapshot_dir("path", &request.path)?;
    let backup = deps
        .index
        .backup(&request.backup_name)
        .ok_or_else(|| Error::BackupNotFound(request.backup_name.clone()))?
        .get();
    let what = format!("{}/{}/{}", request.namespace, request.pod, request.volume);
    let volume = backup
        .status
        .iter()
        .flat_map(|status| &status.volumes)
        .find(|volume| {
            volume.volume.as_ref().is_some_and(|r| {
                r.namespace == request.namespace
                    && r.pod_name == request.pod
                    && r.volume_name == request.volume
            })
        })
        .ok_or_else(|| {
            Error::VolumeNotFound(format!(
                "backup `{}` has no pod volume {what}",
                request.backup_name
            ))
        })?;
    if volume.snapshot_id.is_empty() || volume.phase != VolumePhase::Completed as i32 {
        return Err(Error::Precondition(format!(
            "pod volume {what} of backup `{}` has no snapshot: {}",
            request.backup_name,
            if volume.error_message.is_empty() {
                "it was not backed up"
            } else {
                volume.error_message.as_str()
            }
        )));
    }
    tracing::Span::current().record("snapshot_id", volume.snapshot_id.as_str());
    deps.repo_manager
        .list_snapshot_files(ListSnapshotFilesRequest {
            namespace: request.namespace,
            snapshot_id: volume.snapshot_id.clone(),
            path: dir,
            recursive: request.recursive,
        })
        .await
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;
    use stowage_proto::v1::{
        Backup, BackupPhase, BackupStatus, FileEntry, PodVolumeBackup, PodVolumeRef,
    };
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{
        state::Entry,
        testing::{World, limits},
    };

    fn world() -> World {
        let world = World::new(limits());
        let volume =
            |name: &str, phase: VolumePhase, snapshot: &str, error: &str| PodVolumeBackup {
                volume: Some(PodVolumeRef {
                    namespace: "shop".into(),
                    pod_name: "db-0".into(),
                    volume_name: name.into(),
                    ..Default::default()
                }),
                phase: phase as i32,
                snapshot_id: snapshot.into(),
                error_message: error.into(),
                ..Default::default()
            };
        let backup = Backup {
            name: "nightly".into(),
            status: Some(BackupStatus {
                phase: BackupPhase::PartiallyFailed as i32,
                volumes: vec![
                    volume("data", VolumePhase::Completed, "abcdef12", ""),
                    volume("logs", VolumePhase::Failed, "", "restic failed: boom"),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        world.deps.index.insert_backup(
            "nightly",
            Entry::new(backup, Vec::new(), CancellationToken::new()),
        );
        let entry = |path: &str| FileEntry {
            path: path.into(),
            r#type: "file".into(),
            ..Default::default()
        };
        world.repo_manager.snapshot_files.lock().unwrap().insert(
            "abcdef12".into(),
            vec![entry("/data/a"), entry("/data/b"), entry("/data/c")],
        );
        world
    }

    fn request(pod: &str, volume: &str, path: &str) -> ListBackupFilesRequest {
        ListBackupFilesRequest {
            backup_name: "nightly".into(),
            namespace: "shop".into(),
            pod: pod.into(),
            volume: volume.into(),
            path: path.into(),
            recursive: true,
        }
    }

    #[tokio::test]
    async fn the_volumes_snapshot_is_listed_from_its_namespace_repository() {
        let world = world();
        let batches: Vec<Vec<FileEntry>> =
            list_backup_files(&world.deps, request("db-0", "data", "data/"))
                .await
                .unwrap()
                .map(|batch| batch.unwrap())
                .collect()
                .await;
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            [2, 1],
            "the repo-manager's batches are passed on as they come"
        );
        assert_eq!(world.repo_manager.calls(), ["ls shop abcdef12 /data true"]);
    }

    #[tokio::test]
    async fn unknown_volumes_and_bad_input_are_refused_naming_them_before_any_listing() {
        let world = world();
        let error = |request| {
            let deps = world.deps.clone();
            async move {
                match list_backup_files(&deps, request).await {
                    Ok(_) => panic!("listed"),
                    Err(error) => (error.code(), error.to_string()),
                }
            }
        };
        assert_eq!(
            error(request("db-0", "cache", "")).await,
            (
                tonic::Code::NotFound,
                "backup `nightly` has no pod volume shop/db-0/cache".to_string()
            )
        );
        let (code, text) = error(request("db-0", "logs", "")).await;
        assert_eq!(code, tonic::Code::FailedPrecondition);
        assert!(text.contains("restic failed: boom"), "{text}");
        let (code, text) = error(request("db-0", "data", "../etc")).await;
        assert_eq!(code, tonic::Code::InvalidArgument);
        assert!(text.contains("`../etc`"), "{text}");
        let (code, text) = error(ListBackupFilesRequest {
            backup_name: "weekly".into(),
            ..request("db-0", "data", "")
        })
        .await;
        assert_eq!(
            (code, text.as_str()),
            (tonic::Code::NotFound, "backup `weekly` not found")
        );
        assert!(world.repo_manager.calls().is_empty());
    }
}
