//! The backup and restore files in the object store, read and written only through
//! `stowage-velero-format` (layout and record formats) over the store
//! `stowage-storage-location` opens. This module only translates between those records and the
//! API's `Backup` and `Restore` messages.

use std::{collections::BTreeMap, sync::Arc};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use stowage_proto::{
    prost_types,
    v1::{
        Backup, BackupOrigin, BackupPhase, BackupSpec, BackupStatus, LogLine, PodVolumeBackup,
        PodVolumeRef, PodVolumeRestore, Progress, ResourceOutcome, Restore, RestorePhase,
        RestoreSpec, RestoreStatus, RestoredResource, SkipReason, SkippedVolume, VolumePhase,
        VolumeSource,
    },
};
use stowage_storage_location::object_store::{ObjectStore, ObjectStoreExt, path::Path};
use stowage_velero_format as vf;

use crate::{
    backup::{recount, to_duration},
    error::{Error, Result},
    kube::mirror,
};

/// The object store of the storage location, with the namespace stowage runs in (the
/// namespace Velero's records name as theirs).
#[derive(Clone)]
pub struct Store {
    store: Arc<dyn ObjectStore>,
    server_namespace: String,
}

fn store_error(error: vf::FormatError) -> Error {
    match error {
        vf::FormatError::InvalidRestoreName { name, reason } => Error::InvalidArgument {
            what: "restore name",
            value: name,
            reason: reason.to_string(),
        },
        error => Error::Store(error.to_string()),
    }
}

fn to_chrono(timestamp: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(timestamp.seconds, timestamp.nanos.max(0) as u32)
}

fn to_timestamp(time: &DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

fn backup_phase_name(phase: i32) -> String {
    match BackupPhase::try_from(phase).unwrap_or_default() {
        BackupPhase::Unspecified | BackupPhase::New => "New",
        BackupPhase::InProgress => "InProgress",
        BackupPhase::Completed => "Completed",
        BackupPhase::PartiallyFailed => "PartiallyFailed",
        BackupPhase::Failed => "Failed",
        BackupPhase::Cancelled => "Cancelled",
        BackupPhase::Deleting => "Deleting",
    }
    .to_string()
}

fn backup_phase_from(name: &str) -> BackupPhase {
    match name {
        "New" | "" => BackupPhase::New,
        "InProgress" | "WaitingForPluginOperations" | "Finalizing" => BackupPhase::InProgress,
        "Completed" => BackupPhase::Completed,
        "PartiallyFailed"
        | "WaitingForPluginOperationsPartiallyFailed"
        | "FinalizingPartiallyFailed" => BackupPhase::PartiallyFailed,
        "Cancelled" => BackupPhase::Cancelled,
        "Deleting" => BackupPhase::Deleting,
        _ => BackupPhase::Failed,
    }
}

fn restore_phase_name(phase: i32) -> &'static str {
    match RestorePhase::try_from(phase).unwrap_or_default() {
        RestorePhase::Unspecified | RestorePhase::New => "New",
        RestorePhase::InProgress => "InProgress",
        RestorePhase::Completed => "Completed",
        RestorePhase::PartiallyFailed => "PartiallyFailed",
        RestorePhase::Failed => "Failed",
        RestorePhase::Cancelled => "Cancelled",
    }
}

fn restore_phase_from(name: &str) -> RestorePhase {
    match name {
        "New" | "" => RestorePhase::New,
        "InProgress" => RestorePhase::InProgress,
        "Completed" => RestorePhase::Completed,
        "PartiallyFailed" => RestorePhase::PartiallyFailed,
        "Cancelled" | "Canceled" => RestorePhase::Cancelled,
        _ => RestorePhase::Failed,
    }
}

fn volume_phase_name(phase: i32) -> &'static str {
    match VolumePhase::try_from(phase).unwrap_or_default() {
        VolumePhase::Unspecified | VolumePhase::Pending => "New",
        VolumePhase::Queued | VolumePhase::InProgress => "InProgress",
        VolumePhase::Completed => "Completed",
        VolumePhase::Failed => "Failed",
        VolumePhase::Cancelled => "Canceled",
    }
}

fn volume_phase_from(name: &str) -> VolumePhase {
    match name {
        "New" | "" => VolumePhase::Pending,
        "InProgress" => VolumePhase::InProgress,
        "Completed" => VolumePhase::Completed,
        "Canceled" | "Cancelled" => VolumePhase::Cancelled,
        _ => VolumePhase::Failed,
    }
}

impl Store {
    pub fn new(store: Arc<dyn ObjectStore>, server_namespace: String) -> Store {
        Store {
            store,
            server_namespace,
        }
    }

    /// Writes every file of `backup`: the stowage record, the PodVolumeBackups, the logs,
    /// `resources` when given, and the Backup record last, so a reader that finds the record
    /// finds the rest.
    pub async fn save_backup(
        &self,
        backup: &Backup,
        logs: &[LogLine],
        resources: Option<&vf::BackupResources>,
    ) -> Result<()> {
        let store = self.store.as_ref();
        let name = backup.name.as_str();
        let (record, info, pod_volume_backups) = self.to_records(backup);
        vf::store::write_stowage_info(store, name, &info)
            .await
            .map_err(store_error)?;
        vf::store::write_pod_volume_backups(store, name, &pod_volume_backups)
            .await
            .map_err(store_error)?;
        vf::store::write_logs(store, name, &render_logs(logs))
            .await
            .map_err(store_error)?;
        if let Some(tarball) = resources {
            vf::store::write_resources(store, name, tarball)
                .await
                .map_err(store_error)?;
        }
        vf::store::write_backup_record(store, &record)
            .await
            .map_err(store_error)
    }

    fn to_records(
        &self,
        backup: &Backup,
    ) -> (vf::Backup, vf::StowageBackupInfo, Vec<vf::PodVolumeBackup>) {
        let spec = backup.spec.clone().unwrap_or_default();
        let status = backup.status.clone().unwrap_or_default();
        let mut record = vf::Backup::new(&backup.name, &self.server_namespace);
        record.metadata.uid = Some(backup.uid.clone());
        record.metadata.labels = backup
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        record.spec.included_namespaces = spec.included_namespaces.clone();
        record.spec.excluded_namespaces = spec.excluded_namespaces.clone();
        if !spec.label_selector.is_empty() {
            record.spec.label_selector = Some(vf::LabelSelector {
                match_labels: spec.label_selector.clone().into_iter().collect(),
                ..Default::default()
            });
        }
        record.spec.ttl = to_duration(spec.ttl.as_ref()).map(vf::format_go_duration);
        record.spec.default_volumes_to_fs_backup = Some(spec.default_volumes_to_fs_backup);
        if !spec.hooks.is_empty() {
            record
                .spec
                .extra
                .insert("hooks".to_string(), crate::hooks::to_velero(&spec.hooks));
        }
        record.status.phase = Some(vf::BackupPhase::from(backup_phase_name(status.phase)));
        record.status.start_timestamp = status.started.as_ref().and_then(to_chrono);
        record.status.completion_timestamp = status.finished.as_ref().and_then(to_chrono);
        record.status.expiration = status.expiration.as_ref().and_then(to_chrono);
        record.status.errors = Some(i64::from(status.volumes_failed));

        let mut info = vf::StowageBackupInfo::new(&backup.uid);
        info.written_by = Some(env!("CARGO_PKG_VERSION").to_string());
        let mut extra = BTreeMap::new();
        extra.insert("traceId".to_string(), json!(status.trace_id));
        extra.insert("failureReason".to_string(), json!(status.failure_reason));
        if let Some(timeout) = to_duration(spec.timeout.as_ref()) {
            extra.insert("timeoutSeconds".to_string(), json!(timeout.as_secs()));
        }
        if !spec.exclude_paths.is_empty() {
            extra.insert("excludePaths".to_string(), json!(spec.exclude_paths));
        }
        info.extra = extra;
        let mut pod_volume_backups = Vec::new();
        for volume in &status.volumes {
            let reference = volume.volume.clone().unwrap_or_default();
            let progress = volume.progress.unwrap_or_default();
            if !volume.repository.is_empty() {
                info.namespaces
                    .entry(reference.namespace.clone())
                    .or_insert_with(|| vf::stowage::NamespaceRepository {
                        repository_url: volume.repository.clone(),
                        ..Default::default()
                    });
            }
            let source = VolumeSource::try_from(reference.source).unwrap_or_default();
            let mut record_extra = BTreeMap::new();
            record_extra.insert("source".to_string(), json!(source.as_str_name()));
            record_extra.insert("bytesAdded".to_string(), json!(volume.bytes_added));
            record_extra.insert("bytesStored".to_string(), json!(volume.bytes_stored));
            record_extra.insert("filesNew".to_string(), json!(volume.files_new));
            record_extra.insert("filesChanged".to_string(), json!(volume.files_changed));
            record_extra.insert(
                "filesUnmodified".to_string(),
                json!(volume.files_unmodified),
            );
            // Kept so a backup read back (after a restart) writes its PodVolumeBackups whole.
            if !reference.pvc_uid.is_empty() {
                record_extra.insert("pvcUid".to_string(), json!(reference.pvc_uid));
            }
            if !volume.path.is_empty() {
                record_extra.insert("path".to_string(), json!(volume.path));
            }
            if !volume.excluded_paths.is_empty() {
                record_extra.insert("excludedPaths".to_string(), json!(volume.excluded_paths));
            }
            info.volumes.push(vf::stowage::VolumeRecord {
                namespace: reference.namespace.clone(),
                pod: reference.pod_name.clone(),
                pod_uid: reference.pod_uid.clone(),
                volume: reference.volume_name.clone(),
                pvc: Some(reference.pvc_name.clone()).filter(|s| !s.is_empty()),
                pv: Some(reference.pv_name.clone()).filter(|s| !s.is_empty()),
                node: volume.node.clone(),
                stable_id: volume.stable_identity.clone(),
                snapshot_id: Some(volume.snapshot_id.clone()).filter(|s| !s.is_empty()),
                parent_snapshot_id: Some(volume.parent_snapshot_id.clone())
                    .filter(|s| !s.is_empty()),
                phase: volume_phase_name(volume.phase).to_string(),
                message: volume.error_message.clone(),
                bytes_done: progress.bytes_done,
                bytes_total: progress.bytes_total,
                files_done: progress.files_done,
                files_total: progress.files_total,
                started: volume.started.as_ref().and_then(to_chrono),
                finished: volume.finished.as_ref().and_then(to_chrono),
                progress: Vec::new(),
                hooks: volume.hooks.iter().map(crate::hooks::to_record).collect(),
                extra: record_extra,
            });

            let pvb = velero_pod_volume_backup(backup, volume, &self.server_namespace);
            pod_volume_backups.push(pvb);
        }
        for skipped in &status.skipped {
            let reason = SkipReason::try_from(skipped.reason).unwrap_or_default();
            info.skipped.push(vf::stowage::SkippedVolume {
                namespace: skipped.namespace.clone(),
                pod: skipped.pod.clone(),
                volume: skipped.volume.clone(),
                reason: format!("{}: {}", reason.as_str_name(), skipped.detail),
            });
        }
        (record, info, pod_volume_backups)
    }

    /// Every backup in the location, with its log lines.
    pub async fn load_backups(&self) -> Result<Vec<(Backup, Vec<LogLine>)>> {
        self.load_backups_except(|_| false).await
    }

    /// Every backup in the location but those `known` says are known, with its log lines (only
    /// the records of the known ones are read).
    pub async fn load_backups_except(
        &self,
        known: impl Fn(&str) -> bool,
    ) -> Result<Vec<(Backup, Vec<LogLine>)>> {
        let store = self.store.as_ref();
        let listing = vf::store::list_backups(store).await.map_err(store_error)?;
        let mut backups = Vec::new();
        for listed in listing
            .backups
            .into_iter()
            .filter(|listed| !known(&listed.name))
        {
            let mut backup = from_records(&listed.backup, listed.stowage.as_ref());
            if listed.stowage.is_none() {
                // Velero's restic-era backup: its volumes are in the PodVolumeBackups file.
                match vf::store::read_pod_volume_backups(store, &listed.name).await {
                    Ok(pvbs) => {
                        let status = backup.status.get_or_insert_with(Default::default);
                        status.volumes = pvbs.iter().map(from_velero_pvb).collect();
                        recount(status);
                    }
                    Err(error) => backup.unrestorable_reason = error.to_string(),
                }
                // A Velero backup with a missing or unreadable file is listed with why it
                // cannot be restored, instead of failing halfway through a restore.
                if backup.unrestorable_reason.is_empty() {
                    let problems = vf::store::check_backup(store, &listed.name).await;
                    backup.unrestorable_reason = problems
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ");
                }
            }
            let logs = match vf::store::read_logs(store, &listed.name).await {
                Ok(Some(text)) => parse_logs(&text),
                _ => Vec::new(),
            };
            backups.push((backup, logs));
        }
        for failure in listing
            .failures
            .into_iter()
            .filter(|failure| !known(&failure.name))
        {
            tracing::warn!(backup = %failure.name, error = %failure.error, "unreadable backup");
            // A directory without its record is a backup still being written (stowage writes
            // the record last) or a leftover; a record that does not parse is listed, so an
            // operator sees the backup and why it cannot be restored.
            if !matches!(failure.error, vf::FormatError::NotFound { .. }) {
                backups.push((unreadable_backup(&failure), Vec::new()));
            }
        }
        Ok(backups)
    }

    /// Whether `restic/<namespace>` holds a restic repository (only looks, never creates).
    pub async fn repository_exists(&self, namespace: &str) -> Result<bool> {
        vf::store::restic_repository_exists(self.store.as_ref(), namespace)
            .await
            .map_err(store_error)
    }

    /// The backup's resource tarball; empty when it has none.
    pub async fn load_tarball(&self, name: &str) -> Result<vf::BackupResources> {
        Ok(vf::store::read_resources(self.store.as_ref(), name)
            .await
            .map_err(store_error)?
            .unwrap_or_default())
    }

    /// Deletes every file under `backups/<name>/`.
    pub async fn delete_backup(&self, name: &str) -> Result<()> {
        let keys = vf::store::list_backup_keys(self.store.as_ref(), name)
            .await
            .map_err(store_error)?;
        for key in keys {
            self.store
                .delete(&Path::from(key.as_str()))
                .await
                .map_err(|error| Error::Store(format!("deleting {key}: {error}")))?;
        }
        Ok(())
    }
}

/// Schedules in the bucket, under `schedules/<name>/`.
#[tonic::async_trait]
impl crate::schedules::ScheduleStore for Store {
    async fn put_schedule(&self, record: &vf::ScheduleRecord) -> Result<()> {
        vf::store::write_schedule(self.store.as_ref(), record)
            .await
            .map_err(store_error)
    }

    async fn list_schedules(&self) -> Result<Vec<vf::ScheduleRecord>> {
        let (schedules, failures) = vf::store::list_schedules(self.store.as_ref())
            .await
            .map_err(store_error)?;
        for failure in failures {
            tracing::warn!(schedule = %failure.name, error = %failure.error, "unreadable schedule record");
        }
        Ok(schedules)
    }

    async fn delete_schedule(&self, name: &str) -> Result<()> {
        vf::store::delete_schedule(self.store.as_ref(), name)
            .await
            .map_err(store_error)
    }
}

/// Restores in the bucket, under `restores/<name>/`.
// The run engine's store adapter calls these (put on every state change, list and get after a
// restart, delete with the restore); until it is wired in, only this module's tests do.
#[allow(dead_code)]
impl Store {
    /// Writes restore `restore.name`'s files under `restores/<name>/`: its results (failed
    /// volumes as errors under their namespace), its logs, and its record (spec, status and
    /// every volume) last. Each is one whole-object put, so a reader finds the previous state
    /// or the new one, never a part; call it again for each new state.
    pub async fn put_restore(&self, restore: &Restore, logs: &[LogLine]) -> Result<()> {
        vf::store::write_restore(
            self.store.as_ref(),
            &restore_record(restore),
            &render_logs(logs),
        )
        .await
        .map_err(store_error)
    }

    /// Every restore recorded in the location, by name. A directory whose record does not
    /// parse is listed as a Failed restore whose failure reason says why; one without a record
    /// (a restore Velero ran, or one being deleted) is not a stowage restore and is skipped.
    pub async fn list_restores(&self) -> Result<Vec<Restore>> {
        let listing = vf::store::list_restores(self.store.as_ref())
            .await
            .map_err(store_error)?;
        let mut restores: Vec<Restore> = listing.restores.iter().map(from_restore_record).collect();
        for failure in listing.failures {
            if matches!(failure.error, vf::FormatError::NotFound { .. }) {
                tracing::debug!(restore = %failure.name, "restore directory without a stowage record");
                continue;
            }
            tracing::warn!(restore = %failure.name, error = %failure.error, "unreadable restore record");
            restores.push(unreadable_restore(&failure));
        }
        restores.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(restores)
    }

    /// Restore `name` as the location records it; `None` when it has no record. A record that
    /// does not parse comes back as a Failed restore naming why, as in [`Store::list_restores`].
    pub async fn get_restore(&self, name: &str) -> Result<Option<Restore>> {
        match vf::store::read_restore_record(self.store.as_ref(), name).await {
            Ok(record) => Ok(Some(from_restore_record(&record))),
            Err(vf::FormatError::NotFound { .. }) => Ok(None),
            Err(error @ (vf::FormatError::Json { .. } | vf::FormatError::Invalid(_))) => {
                Ok(Some(unreadable_restore(&vf::ListFailure {
                    name: name.to_string(),
                    error,
                })))
            }
            Err(error) => Err(store_error(error)),
        }
    }

    /// Restore `name`'s log lines; empty when it has none.
    pub async fn restore_logs(&self, name: &str) -> Result<Vec<LogLine>> {
        let text = vf::store::read_restore_logs(self.store.as_ref(), name)
            .await
            .map_err(store_error)?;
        Ok(text.as_deref().map(parse_logs).unwrap_or_default())
    }

    /// Deletes every file under `restores/<name>/`, its record first (a delete stopped halfway
    /// leaves no record behind, so the restore is no longer listed). Deleting a restore that
    /// has no files is not an error.
    pub async fn delete_restore(&self, name: &str) -> Result<()> {
        vf::store::delete_restore(self.store.as_ref(), name)
            .await
            .map_err(store_error)
    }
}

fn progress_record(progress: Option<&Progress>) -> vf::ProgressRecord {
    let progress = progress.copied().unwrap_or_default();
    vf::ProgressRecord {
        bytes_done: progress.bytes_done,
        bytes_total: progress.bytes_total,
        files_done: progress.files_done,
        files_total: progress.files_total,
        seconds_elapsed: progress.seconds_elapsed,
    }
}

fn from_progress_record(progress: &vf::ProgressRecord) -> Progress {
    Progress {
        bytes_done: progress.bytes_done,
        bytes_total: progress.bytes_total,
        files_done: progress.files_done,
        files_total: progress.files_total,
        seconds_elapsed: progress.seconds_elapsed,
    }
}

/// The bucket's record of `restore`: every field of the API message, so a restore read back
/// after a restart (or by another orchestrator) shows what the one that ran it showed.
fn restore_record(restore: &Restore) -> vf::StowageRestoreRecord {
    let spec = restore.spec.clone().unwrap_or_default();
    let status = restore.status.clone().unwrap_or_default();
    let mut record = vf::StowageRestoreRecord::new(&restore.name);
    record.uid = restore.uid.clone();
    // Kubernetes' matchExpressions shape, as a Velero Restore's labelSelector holds them.
    let expressions: Vec<Value> = spec
        .label_selector_expressions
        .iter()
        .map(|r| json!({"key": r.key, "operator": r.operator, "values": r.values}))
        .collect();
    record.written_by = Some(env!("CARGO_PKG_VERSION").to_string());
    record.spec = vf::RestoreSpecRecord {
        backup_name: spec.backup_name,
        namespace_mapping: spec.namespace_mapping.into_iter().collect(),
        included_namespaces: spec.included_namespaces,
        include_resources: spec.include_resources,
        exclude_resources: spec.exclude_resources,
        label_selector: spec.label_selector.into_iter().collect(),
        existing_resource_policy: spec.existing_resource_policy,
        extra: [
            ("includePaths", spec.include_paths),
            ("excludePaths", spec.exclude_paths),
        ]
        .into_iter()
        .filter(|(_, paths)| !paths.is_empty())
        .map(|(key, paths)| (key.to_string(), json!(paths)))
        .chain(
            (!expressions.is_empty())
                .then(|| ("labelSelectorExpressions".to_string(), json!(expressions))),
        )
        .collect(),
    };
    record.status = vf::RestoreStatusRecord {
        phase: restore_phase_name(status.phase).to_string(),
        started: status.started.as_ref().and_then(to_chrono),
        finished: status.finished.as_ref().and_then(to_chrono),
        volumes_total: status.volumes_total,
        volumes_completed: status.volumes_completed,
        volumes_failed: status.volumes_failed,
        progress: progress_record(status.progress.as_ref()),
        failure_reason: status.failure_reason,
        pods_created: status.pods_created,
        trace_id: status.trace_id,
        volumes: status
            .volumes
            .iter()
            .map(|volume| {
                let reference = volume.volume.clone().unwrap_or_default();
                let source = VolumeSource::try_from(reference.source).unwrap_or_default();
                vf::RestoreVolumeRecord {
                    namespace: reference.namespace,
                    pod: reference.pod_name,
                    pod_uid: reference.pod_uid,
                    volume: reference.volume_name,
                    source: if source == VolumeSource::Unspecified {
                        String::new()
                    } else {
                        source.as_str_name().to_string()
                    },
                    pv_name: reference.pv_name,
                    pvc_name: reference.pvc_name,
                    pvc_uid: reference.pvc_uid,
                    node: volume.node.clone(),
                    phase: volume_phase_name(volume.phase).to_string(),
                    snapshot_id: volume.snapshot_id.clone(),
                    progress: progress_record(volume.progress.as_ref()),
                    started: volume.started.as_ref().and_then(to_chrono),
                    finished: volume.finished.as_ref().and_then(to_chrono),
                    message: volume.error_message.clone(),
                    source_namespace: volume.source_namespace.clone(),
                    repository: volume.repository.clone(),
                    hooks: volume.hooks.iter().map(crate::hooks::to_record).collect(),
                    extra: if volume.excluded_at_backup.is_empty() {
                        Default::default()
                    } else {
                        [(
                            "excludedAtBackup".to_string(),
                            json!(volume.excluded_at_backup),
                        )]
                        .into()
                    },
                }
            })
            .collect(),
        resources: status
            .resources
            .iter()
            .map(|resource| vf::RestoredResourceRecord {
                resource: resource.resource.clone(),
                namespace: resource.namespace.clone(),
                name: resource.name.clone(),
                outcome: resource_outcome_name(resource.outcome).to_string(),
                message: resource.message.clone(),
                extra: Default::default(),
            })
            .collect(),
        extra: Default::default(),
    };
    record
}

/// The record's word for an object's outcome.
fn resource_outcome_name(outcome: i32) -> &'static str {
    match ResourceOutcome::try_from(outcome).unwrap_or_default() {
        ResourceOutcome::Created => "Created",
        ResourceOutcome::Updated => "Updated",
        ResourceOutcome::SkippedExists => "SkippedExists",
        ResourceOutcome::Skipped => "Skipped",
        ResourceOutcome::Failed => "Failed",
        ResourceOutcome::Unspecified => "",
    }
}

fn resource_outcome_from(name: &str) -> ResourceOutcome {
    match name {
        "Created" => ResourceOutcome::Created,
        "Updated" => ResourceOutcome::Updated,
        "SkippedExists" => ResourceOutcome::SkippedExists,
        "Skipped" => ResourceOutcome::Skipped,
        "Failed" => ResourceOutcome::Failed,
        _ => ResourceOutcome::Unspecified,
    }
}

/// A list of strings kept in a record's `extra`; empty when absent or of another shape.
fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn from_restore_record(record: &vf::StowageRestoreRecord) -> Restore {
    let status = &record.status;
    Restore {
        name: record.name.clone(),
        uid: record.uid.clone(),
        spec: Some(RestoreSpec {
            backup_name: record.spec.backup_name.clone(),
            namespace_mapping: record.spec.namespace_mapping.clone().into_iter().collect(),
            included_namespaces: record.spec.included_namespaces.clone(),
            include_resources: record.spec.include_resources.clone(),
            exclude_resources: record.spec.exclude_resources.clone(),
            label_selector: record.spec.label_selector.clone().into_iter().collect(),
            existing_resource_policy: record.spec.existing_resource_policy.clone(),
            include_paths: strings(record.spec.extra.get("includePaths")),
            exclude_paths: strings(record.spec.extra.get("excludePaths")),
            label_selector_expressions: record
                .spec
                .extra
                .get("labelSelectorExpressions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|r| stowage_proto::v1::LabelSelectorRequirement {
                    key: r["key"].as_str().unwrap_or_default().to_string(),
                    operator: r["operator"].as_str().unwrap_or_default().to_string(),
                    values: strings(r.get("values")),
                })
                .collect(),
            ..Default::default()
        }),
        status: Some(RestoreStatus {
            phase: restore_phase_from(&status.phase) as i32,
            started: status.started.as_ref().map(to_timestamp),
            finished: status.finished.as_ref().map(to_timestamp),
            volumes: status
                .volumes
                .iter()
                .map(|volume| PodVolumeRestore {
                    volume: Some(PodVolumeRef {
                        namespace: volume.namespace.clone(),
                        pod_name: volume.pod.clone(),
                        pod_uid: volume.pod_uid.clone(),
                        volume_name: volume.volume.clone(),
                        source: VolumeSource::from_str_name(&volume.source).unwrap_or_default()
                            as i32,
                        pv_name: volume.pv_name.clone(),
                        pvc_name: volume.pvc_name.clone(),
                        pvc_uid: volume.pvc_uid.clone(),
                    }),
                    node: volume.node.clone(),
                    phase: volume_phase_from(&volume.phase) as i32,
                    snapshot_id: volume.snapshot_id.clone(),
                    progress: Some(from_progress_record(&volume.progress)),
                    started: volume.started.as_ref().map(to_timestamp),
                    finished: volume.finished.as_ref().map(to_timestamp),
                    error_message: volume.message.clone(),
                    source_namespace: volume.source_namespace.clone(),
                    repository: volume.repository.clone(),
                    hooks: volume.hooks.iter().map(crate::hooks::from_record).collect(),
                    excluded_at_backup: strings(volume.extra.get("excludedAtBackup")),
                })
                .collect(),
            volumes_total: status.volumes_total,
            volumes_completed: status.volumes_completed,
            volumes_failed: status.volumes_failed,
            progress: Some(from_progress_record(&status.progress)),
            failure_reason: status.failure_reason.clone(),
            pods_created: status.pods_created.clone(),
            trace_id: status.trace_id.clone(),
            resources: status
                .resources
                .iter()
                .map(|resource| RestoredResource {
                    resource: resource.resource.clone(),
                    namespace: resource.namespace.clone(),
                    name: resource.name.clone(),
                    outcome: resource_outcome_from(&resource.outcome) as i32,
                    message: resource.message.clone(),
                })
                .collect(),
        }),
    }
}

/// A restore whose record does not parse: only its name and why are known. It reads as
/// Failed (a final phase), so restart recovery never takes it for a running restore.
fn unreadable_restore(failure: &vf::ListFailure) -> Restore {
    Restore {
        name: failure.name.clone(),
        uid: String::new(),
        spec: Some(RestoreSpec::default()),
        status: Some(RestoreStatus {
            phase: RestorePhase::Failed as i32,
            failure_reason: format!("unreadable restore record: {}", failure.error),
            ..Default::default()
        }),
    }
}

fn from_records(record: &vf::Backup, info: Option<&vf::StowageBackupInfo>) -> Backup {
    let phase = backup_phase_from(record.status.phase.as_ref().map_or("", |p| p.as_str()));
    let mut status = BackupStatus {
        phase: phase as i32,
        started: record.status.start_timestamp.as_ref().map(to_timestamp),
        finished: record
            .status
            .completion_timestamp
            .as_ref()
            .map(to_timestamp),
        expiration: record.status.expiration.as_ref().map(to_timestamp),
        ..Default::default()
    };
    let ttl = record.ttl().map(|ttl| prost_types::Duration {
        seconds: ttl.as_secs() as i64,
        nanos: 0,
    });
    let mut spec = BackupSpec {
        included_namespaces: record.spec.included_namespaces.clone(),
        excluded_namespaces: record.spec.excluded_namespaces.clone(),
        label_selector: record
            .spec
            .label_selector
            .as_ref()
            .map(|s| s.match_labels.clone().into_iter().collect())
            .unwrap_or_default(),
        default_volumes_to_fs_backup: record.default_volumes_to_fs_backup(),
        ttl,
        timeout: None,
        hooks: record
            .spec
            .extra
            .get("hooks")
            .map(crate::hooks::from_velero)
            .unwrap_or_default(),
        ..Default::default()
    };
    let mut origin = BackupOrigin::Velero;
    if let Some(info) = info {
        origin = BackupOrigin::Stowage;
        let text = |key: &str| {
            info.extra
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        status.trace_id = text("traceId");
        status.failure_reason = text("failureReason");
        spec.exclude_paths = strings(info.extra.get("excludePaths"));
        if let Some(seconds) = info.extra.get("timeoutSeconds").and_then(Value::as_u64) {
            spec.timeout = Some(prost_types::Duration {
                seconds: seconds as i64,
                nanos: 0,
            });
        }
        let repositories: BTreeMap<&str, &str> = info
            .namespaces
            .iter()
            .map(|(ns, repo)| (ns.as_str(), repo.repository_url.as_str()))
            .collect();
        status.volumes = info
            .volumes
            .iter()
            .map(|record| {
                let number = |key: &str| record.extra.get(key).and_then(Value::as_u64).unwrap_or(0);
                let text = |key: &str| {
                    record
                        .extra
                        .get(key)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                let source = record
                    .extra
                    .get("source")
                    .and_then(Value::as_str)
                    .and_then(VolumeSource::from_str_name)
                    .unwrap_or(if record.pvc.is_some() {
                        VolumeSource::PersistentVolumeClaim
                    } else {
                        VolumeSource::EmptyDir
                    });
                PodVolumeBackup {
                    volume: Some(PodVolumeRef {
                        namespace: record.namespace.clone(),
                        pod_name: record.pod.clone(),
                        pod_uid: record.pod_uid.clone(),
                        volume_name: record.volume.clone(),
                        source: source as i32,
                        pv_name: record.pv.clone().unwrap_or_default(),
                        pvc_name: record.pvc.clone().unwrap_or_default(),
                        pvc_uid: text("pvcUid"),
                    }),
                    node: record.node.clone(),
                    phase: volume_phase_from(&record.phase) as i32,
                    snapshot_id: record.snapshot_id.clone().unwrap_or_default(),
                    parent_snapshot_id: record.parent_snapshot_id.clone().unwrap_or_default(),
                    stable_identity: record.stable_id.clone(),
                    repository: repositories
                        .get(record.namespace.as_str())
                        .map(|s| s.to_string())
                        .unwrap_or_default(),
                    progress: Some(Progress {
                        bytes_done: record.bytes_done,
                        bytes_total: record.bytes_total,
                        files_done: record.files_done,
                        files_total: record.files_total,
                        seconds_elapsed: 0.0,
                    }),
                    bytes_added: number("bytesAdded"),
                    bytes_stored: number("bytesStored"),
                    files_new: number("filesNew"),
                    files_changed: number("filesChanged"),
                    files_unmodified: number("filesUnmodified"),
                    started: record.started.as_ref().map(to_timestamp),
                    finished: record.finished.as_ref().map(to_timestamp),
                    error_message: record.message.clone(),
                    path: text("path"),
                    hooks: record.hooks.iter().map(crate::hooks::from_record).collect(),
                    excluded_paths: strings(record.extra.get("excludedPaths")),
                }
            })
            .collect();
        status.skipped = info
            .skipped
            .iter()
            .map(|skipped| {
                let (code, detail) = skipped
                    .reason
                    .split_once(": ")
                    .unwrap_or(("", skipped.reason.as_str()));
                SkippedVolume {
                    namespace: skipped.namespace.clone(),
                    pod: skipped.pod.clone(),
                    volume: skipped.volume.clone(),
                    reason: SkipReason::from_str_name(code).unwrap_or_default() as i32,
                    detail: detail.to_string(),
                }
            })
            .collect();
        recount(&mut status);
    }
    Backup {
        name: record.name().to_string(),
        uid: info
            .map(|info| info.backup_id.clone())
            .or_else(|| record.metadata.uid.clone())
            .unwrap_or_default(),
        spec: Some(spec),
        status: Some(status),
        origin: origin as i32,
        unrestorable_reason: String::new(),
        labels: record
            .metadata
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// A backup whose record (or stowage file) does not parse: only its name and why are known.
/// It counts as Velero's unless its stowage file is what is broken, so stowage never deletes
/// or rewrites it on a guess.
fn unreadable_backup(failure: &vf::ListFailure) -> Backup {
    let stowage_file = vf::layout::stowage_info_key(&failure.name);
    // A stowage backup reads as Failed (a final phase), so the restart recovery never takes it
    // for an unfinished one and rewrites its files; Velero's phase is simply not known.
    let (origin, phase) = if failure.error.key() == Some(stowage_file.as_str()) {
        (BackupOrigin::Stowage, BackupPhase::Failed)
    } else {
        (BackupOrigin::Velero, BackupPhase::Unspecified)
    };
    Backup {
        name: failure.name.clone(),
        uid: String::new(),
        spec: Some(BackupSpec::default()),
        status: Some(BackupStatus {
            phase: phase as i32,
            failure_reason: failure.error.to_string(),
            ..Default::default()
        }),
        origin: origin as i32,
        unrestorable_reason: failure.error.to_string(),
        ..Default::default()
    }
}

/// Velero's PodVolumeBackup for one volume of `backup`, every field Velero's `newPodVolumeBackup`
/// and its controller write (`pkg/podvolume/backupper.go`, `PodVolumeBackupStatus`): the
/// backup's name and uid labels, for a PVC its uid label, `velero.io/pvc-name` annotation and
/// `pvc-uid` tag, the owner reference to the Backup, the storage location, and the status with
/// the path restic read. The object name is the mirror's, so the file and the cluster agree.
fn velero_pod_volume_backup(
    backup: &Backup,
    volume: &PodVolumeBackup,
    server_namespace: &str,
) -> vf::PodVolumeBackup {
    use vf::pod_volume_backup::{self as pvb_format, tags};
    let reference = volume.volume.clone().unwrap_or_default();
    let progress = volume.progress.unwrap_or_default();
    let name = mirror::object_name(&backup.name, &reference.pod_uid, &reference.volume_name);
    let mut pvb = vf::PodVolumeBackup::new(name.clone(), server_namespace);
    pvb.metadata.uid = Some(derived_uid(&backup.uid, &name));
    pvb.metadata.creation_timestamp = backup
        .status
        .as_ref()
        .and_then(|status| status.started.as_ref())
        .and_then(to_chrono);
    pvb.metadata
        .extra
        .insert("generateName".into(), json!(format!("{}-", backup.name)));
    pvb.metadata.extra.insert(
        "ownerReferences".into(),
        json!([{
            "apiVersion": vf::backup::API_VERSION, "kind": "Backup",
            "name": backup.name, "uid": backup.uid, "controller": true,
        }]),
    );
    pvb.metadata.labels = BTreeMap::from([
        (
            pvb_format::BACKUP_NAME_LABEL.to_string(),
            backup.name.clone(),
        ),
        (pvb_format::BACKUP_UID_LABEL.to_string(), backup.uid.clone()),
    ]);
    pvb.spec.tags = BTreeMap::from([
        (tags::BACKUP.to_string(), backup.name.clone()),
        (tags::BACKUP_UID.to_string(), backup.uid.clone()),
        (tags::NAMESPACE.to_string(), reference.namespace.clone()),
        (tags::POD.to_string(), reference.pod_name.clone()),
        (tags::POD_UID.to_string(), reference.pod_uid.clone()),
        (tags::VOLUME.to_string(), reference.volume_name.clone()),
    ]);
    if !reference.pvc_name.is_empty() {
        pvb.metadata.annotations.insert(
            pvb_format::PVC_NAME_ANNOTATION.to_string(),
            reference.pvc_name.clone(),
        );
    }
    if !reference.pvc_uid.is_empty() {
        pvb.metadata.labels.insert(
            pvb_format::PVC_UID_LABEL.to_string(),
            reference.pvc_uid.clone(),
        );
        pvb.spec
            .tags
            .insert(tags::PVC_UID.to_string(), reference.pvc_uid.clone());
    }
    pvb.spec.node = volume.node.clone();
    pvb.spec.pod = vf::pod_volume_backup::PodReference {
        kind: "Pod".to_string(),
        namespace: reference.namespace.clone(),
        name: reference.pod_name.clone(),
        uid: reference.pod_uid.clone(),
        ..Default::default()
    };
    pvb.spec.volume = reference.volume_name.clone();
    pvb.spec.backup_storage_location = pvb_format::DEFAULT_STORAGE_LOCATION.to_string();
    pvb.spec.repo_identifier = volume.repository.clone();
    pvb.spec.uploader_type = Some(pvb_format::UPLOADER_RESTIC.to_string());
    pvb.status.phase = Some(pvb_format::PodVolumeBackupPhase::from(
        volume_phase_name(volume.phase).to_string(),
    ));
    pvb.status.path = volume.path.clone();
    pvb.status.snapshot_id = volume.snapshot_id.clone();
    pvb.status.message = volume.error_message.clone();
    pvb.status.start_timestamp = volume.started.as_ref().and_then(to_chrono);
    // The agent takes a volume on when it starts it: stowage has no separate acceptance.
    pvb.status.accepted_timestamp = pvb.status.start_timestamp;
    pvb.status.completion_timestamp = volume.finished.as_ref().and_then(to_chrono);
    pvb.status.progress = Some(pvb_format::PodVolumeOperationProgress {
        total_bytes: progress.bytes_total,
        bytes_done: progress.bytes_done,
        ..Default::default()
    });
    pvb.status.incremental_bytes = volume.bytes_added;
    pvb
}

/// A uid for an object only the file holds (the API server gives the mirror its own):
/// derived from the backup's uid and the object's name, so writing the file again gives the
/// same one. FNV-1a, as for the mirror's names, twice for 128 bits, shaped as a v4 UUID.
fn derived_uid(backup_uid: &str, name: &str) -> String {
    let fnv = |seed: u64| {
        let mut hash = seed;
        for byte in backup_uid.bytes().chain([0]).chain(name.bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash
    };
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&fnv(0xcbf2_9ce4_8422_2325).to_be_bytes());
    bytes[8..].copy_from_slice(&fnv(0x6c62_272e_07bb_0142).to_be_bytes());
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

fn from_velero_pvb(pvb: &vf::PodVolumeBackup) -> PodVolumeBackup {
    PodVolumeBackup {
        volume: Some(PodVolumeRef {
            namespace: pvb.spec.pod.namespace.clone(),
            pod_name: pvb.spec.pod.name.clone(),
            pod_uid: pvb.spec.pod.uid.clone(),
            volume_name: pvb.spec.volume.clone(),
            pvc_uid: pvb
                .metadata
                .labels
                .get(vf::pod_volume_backup::PVC_UID_LABEL)
                .cloned()
                .unwrap_or_default(),
            ..Default::default()
        }),
        node: pvb.spec.node.clone(),
        phase: volume_phase_from(pvb.status.phase.as_ref().map_or("", |p| p.as_str())) as i32,
        snapshot_id: pvb.status.snapshot_id.clone(),
        repository: pvb.spec.repo_identifier.clone(),
        error_message: pvb.status.message.clone(),
        path: pvb.status.path.clone(),
        // Velero records bytes (not files) and when the volume started and ended.
        progress: pvb.status.progress.as_ref().map(|progress| Progress {
            bytes_done: progress.bytes_done,
            bytes_total: progress.total_bytes,
            seconds_elapsed: match (
                &pvb.status.start_timestamp,
                &pvb.status.completion_timestamp,
            ) {
                (Some(start), Some(end)) if end >= start => {
                    (*end - *start).num_milliseconds() as f64 / 1000.0
                }
                _ => 0.0,
            },
            ..Default::default()
        }),
        started: pvb.status.start_timestamp.as_ref().map(to_timestamp),
        finished: pvb.status.completion_timestamp.as_ref().map(to_timestamp),
        ..Default::default()
    }
}

/// One line per entry: `<rfc3339> <level> <message>`.
fn render_logs(logs: &[LogLine]) -> String {
    logs.iter()
        .map(|line| {
            let time = line
                .time
                .as_ref()
                .and_then(to_chrono)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            format!(
                "{time} {} {}\n",
                line.level,
                line.message.replace('\n', " ")
            )
        })
        .collect()
}

fn parse_logs(text: &str) -> Vec<LogLine> {
    text.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let mut parts = line.splitn(3, ' ');
            let time = parts.next().unwrap_or_default();
            let level = parts.next().unwrap_or_default();
            let message = parts.next().unwrap_or_default();
            match DateTime::parse_from_rfc3339(time) {
                Ok(parsed) => LogLine {
                    time: Some(to_timestamp(&parsed.with_timezone(&Utc))),
                    level: level.to_string(),
                    message: message.to_string(),
                },
                // Velero's own logs are not in this shape; keep the line whole.
                Err(_) => LogLine {
                    time: None,
                    level: "info".to_string(),
                    message: line.to_string(),
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use stowage_storage_location::object_store::memory::InMemory;

    /// A Velero PodVolumeBackup's bytes and timestamps reach the volume, so `describe` shows
    /// its size and duration instead of `0 B of 0 B`.
    #[test]
    fn a_velero_volume_keeps_its_progress_and_times() {
        let start = DateTime::parse_from_rfc3339("2024-05-01T02:00:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut pvb = vf::PodVolumeBackup::new("nightly-abcde", "velero");
        pvb.spec.pod.namespace = "shop".into();
        pvb.spec.pod.name = "db-0".into();
        pvb.spec.volume = "data".into();
        pvb.status.phase = Some(vf::PodVolumeBackupPhase::Completed);
        pvb.status.snapshot_id = "0123abcd".into();
        pvb.status.start_timestamp = Some(start);
        pvb.status.completion_timestamp = Some(start + chrono::Duration::seconds(4));
        pvb.status.progress = Some(vf::PodVolumeOperationProgress {
            total_bytes: 4096,
            bytes_done: 4096,
            extra: Default::default(),
        });
        let volume = from_velero_pvb(&pvb);
        let progress = volume.progress.expect("progress");
        assert_eq!((progress.bytes_done, progress.bytes_total), (4096, 4096));
        assert_eq!(progress.seconds_elapsed, 4.0);
        assert_eq!(volume.started, Some(to_timestamp(&start)));
        assert_eq!(
            volume.finished.map(|at| at.seconds),
            Some(start.timestamp() + 4)
        );
        let mut status = BackupStatus {
            volumes: vec![volume],
            ..Default::default()
        };
        recount(&mut status);
        assert_eq!(status.progress.unwrap_or_default().bytes_total, 4096);
    }

    fn sample() -> Backup {
        let mut status = BackupStatus {
            phase: BackupPhase::PartiallyFailed as i32,
            started: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            trace_id: "abc".into(),
            volumes: vec![
                PodVolumeBackup {
                    volume: Some(PodVolumeRef {
                        namespace: "foo".into(),
                        pod_name: "sample".into(),
                        pod_uid: "uid-1".into(),
                        volume_name: "pvc-volume".into(),
                        source: VolumeSource::PersistentVolumeClaim as i32,
                        pv_name: "pv-1".into(),
                        pvc_name: "sample-pvc".into(),
                        pvc_uid: "p1".into(),
                    }),
                    node: "node-a".into(),
                    path: "/var/lib/kubelet/pods/uid-1/volumes/kubernetes.io~local-volume/pv-1"
                        .into(),
                    phase: VolumePhase::Completed as i32,
                    snapshot_id: "0123abcd".into(),
                    stable_identity: "pvc-uid/p1".into(),
                    repository: "/loc/restic/foo".into(),
                    bytes_added: 7,
                    hooks: vec![stowage_proto::v1::HookResult {
                        phase: "pre".into(),
                        container: "app".into(),
                        command: vec!["/bin/sh".into(), "-c".into(), "pg_dump".into()],
                        succeeded: true,
                        exit_code: 0,
                        stdout: "dumped\n".into(),
                        started: Some(prost_types::Timestamp {
                            seconds: 1_700_000_001,
                            nanos: 0,
                        }),
                        finished: Some(prost_types::Timestamp {
                            seconds: 1_700_000_002,
                            nanos: 500,
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                PodVolumeBackup {
                    volume: Some(PodVolumeRef {
                        namespace: "foo".into(),
                        pod_name: "sample".into(),
                        pod_uid: "uid-1".into(),
                        volume_name: "emptydir-volume".into(),
                        source: VolumeSource::EmptyDir as i32,
                        ..Default::default()
                    }),
                    phase: VolumePhase::Failed as i32,
                    error_message: "no agent on node node-b".into(),
                    ..Default::default()
                },
            ],
            skipped: vec![SkippedVolume {
                namespace: "foo".into(),
                pod: "sample".into(),
                volume: "host".into(),
                reason: SkipReason::UnsupportedType as i32,
                detail: "hostPath volumes hold node data, not pod data".into(),
            }],
            ..Default::default()
        };
        recount(&mut status);
        Backup {
            name: "nightly".into(),
            uid: "b-uid".into(),
            spec: Some(BackupSpec {
                included_namespaces: vec!["foo".into()],
                hooks: vec![stowage_proto::v1::BackupResourceHook {
                    name: "db".into(),
                    label_selector: [("app".to_string(), "db".to_string())].into(),
                    pre: vec![stowage_proto::v1::ExecHook {
                        command: vec!["freeze".into()],
                        on_error: "Continue".into(),
                        timeout: Some(prost_types::Duration {
                            seconds: 90,
                            nanos: 0,
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(status),
            origin: BackupOrigin::Stowage as i32,
            unrestorable_reason: String::new(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn backup_labels_are_kept_in_velero_s_record() {
        let bucket = Arc::new(InMemory::new());
        let store = Store::new(bucket.clone(), "stowage".into());
        let mut backup = sample();
        backup.labels = [("velero.io/schedule-name".to_string(), "nightly".to_string())].into();
        store.save_backup(&backup, &[], None).await.unwrap();
        let record = vf::read_backup_record(bucket.as_ref(), "nightly")
            .await
            .unwrap();
        assert_eq!(record.metadata.labels["velero.io/schedule-name"], "nightly");
        let loaded = store.load_backups().await.unwrap();
        assert_eq!(loaded[0].0.labels, backup.labels);
    }

    #[tokio::test]
    async fn a_saved_backup_loads_back_the_same() {
        let store = Store::new(Arc::new(InMemory::new()), "stowage".into());
        let backup = sample();
        let logs = vec![LogLine {
            time: Some(prost_types::Timestamp {
                seconds: 1_700_000_001,
                nanos: 0,
            }),
            level: "info".into(),
            message: "backup nightly started".into(),
        }];
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sample", "namespace": "foo"}});
        let mut tarball = vf::BackupResources::new();
        tarball.insert_object(pod.clone()).unwrap();
        store
            .save_backup(&backup, &logs, Some(&tarball))
            .await
            .unwrap();
        let loaded = store.load_backups().await.unwrap();
        assert_eq!(loaded.len(), 1);
        let (loaded, loaded_logs) = &loaded[0];
        assert_eq!(loaded.name, backup.name);
        assert_eq!(loaded.uid, backup.uid);
        assert_eq!(loaded.status.as_ref().unwrap().volumes.len(), 2);
        let status = loaded.status.clone().unwrap();
        let original = backup.status.clone().unwrap();
        assert_eq!(status.phase, original.phase);
        assert_eq!(status.trace_id, "abc");
        assert_eq!(status.volumes[0].volume, original.volumes[0].volume);
        assert_eq!(status.volumes[0].snapshot_id, "0123abcd");
        assert_eq!(status.volumes[0].repository, "/loc/restic/foo");
        assert_eq!(status.volumes[0].bytes_added, 7);
        assert_eq!(status.volumes[0].path, original.volumes[0].path);
        assert_eq!(status.volumes[1].error_message, "no agent on node node-b");
        assert_eq!(status.skipped, original.skipped);
        assert_eq!(loaded_logs[0].message, "backup nightly started");
        let tarball = store.load_tarball("nightly").await.unwrap();
        assert_eq!(tarball.objects.into_values().collect::<Vec<_>>(), vec![pod]);

        store.delete_backup("nightly").await.unwrap();
        assert!(store.load_backups().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn pod_volume_backups_carry_velero_s_pvc_fields_and_path_and_are_rewritten_the_same() {
        use vf::pod_volume_backup as pvb;
        let bucket = Arc::new(InMemory::new());
        let store = Store::new(bucket.clone(), "stowage".into());
        let backup = sample();
        store.save_backup(&backup, &[], None).await.unwrap();
        let written = vf::store::read_pod_volume_backups(&*bucket, "nightly")
            .await
            .unwrap();
        let (pvc, empty) = (&written[0], &written[1]);
        assert_eq!(pvc.metadata.labels[pvb::PVC_UID_LABEL], "p1");
        assert_eq!(
            pvc.metadata.annotations[pvb::PVC_NAME_ANNOTATION],
            "sample-pvc"
        );
        assert_eq!(pvc.spec.tags[pvb::tags::PVC_UID], "p1");
        assert_eq!(
            pvc.status.path,
            "/var/lib/kubelet/pods/uid-1/volumes/kubernetes.io~local-volume/pv-1"
        );
        assert_eq!(pvc.spec.backup_storage_location, "default");
        assert_eq!(pvc.status.incremental_bytes, 7);
        assert_eq!(pvc.metadata.extra["generateName"], "nightly-");
        assert_eq!(pvc.metadata.extra["ownerReferences"][0]["kind"], "Backup");
        assert!(!empty.metadata.labels.contains_key(pvb::PVC_UID_LABEL));
        assert!(empty.metadata.annotations.is_empty());
        assert!(!empty.spec.tags.contains_key(pvb::tags::PVC_UID));
        assert_ne!(pvc.metadata.uid, empty.metadata.uid);

        // Read back (as after a restart) and written again: the same metadata (uids
        // included), tags and path.
        let (loaded, _) = store.load_backups().await.unwrap().remove(0);
        store.save_backup(&loaded, &[], None).await.unwrap();
        let rewritten = vf::store::read_pod_volume_backups(&*bucket, "nightly")
            .await
            .unwrap();
        assert_eq!(rewritten.len(), written.len());
        for (again, first) in rewritten.iter().zip(&written) {
            assert_eq!(again.metadata, first.metadata);
            assert_eq!(again.spec.tags, first.spec.tags);
            assert_eq!(again.status.path, first.status.path);
            assert_eq!(
                again.status.incremental_bytes,
                first.status.incremental_bytes
            );
        }
    }

    #[test]
    fn an_unreadable_record_is_listed_as_velero_s_with_why() {
        let failure = vf::ListFailure {
            name: "nightly".into(),
            error: vf::FormatError::NotFound {
                key: "backups/nightly/velero-backup.json".into(),
            },
        };
        let backup = unreadable_backup(&failure);
        assert_eq!(backup.origin, BackupOrigin::Velero as i32);
        assert_eq!(
            backup.unrestorable_reason,
            "backups/nightly/velero-backup.json: not found"
        );
        let failure = vf::ListFailure {
            name: "nightly".into(),
            error: vf::FormatError::NotFound {
                key: vf::layout::stowage_info_key("nightly"),
            },
        };
        let backup = unreadable_backup(&failure);
        assert_eq!(backup.origin, BackupOrigin::Stowage as i32);
        assert_eq!(
            backup.status.unwrap().phase,
            BackupPhase::Failed as i32,
            "a final phase: restart recovery leaves it alone"
        );
    }

    fn sample_restore() -> Restore {
        let at = |seconds| {
            Some(prost_types::Timestamp {
                seconds,
                nanos: 500_000_000,
            })
        };
        Restore {
            name: "nightly-20260101".into(),
            uid: "r-uid".into(),
            spec: Some(RestoreSpec {
                backup_name: "nightly".into(),
                namespace_mapping: [("foo".to_string(), "bar".to_string())].into(),
                included_namespaces: vec!["foo".into()],
                label_selector_expressions: vec![stowage_proto::v1::LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: vec!["api".into(), "web".into()],
                }],
                ..Default::default()
            }),
            status: Some(RestoreStatus {
                phase: RestorePhase::PartiallyFailed as i32,
                started: at(1_700_000_000),
                finished: at(1_700_000_060),
                volumes: vec![
                    PodVolumeRestore {
                        volume: Some(PodVolumeRef {
                            namespace: "bar".into(),
                            pod_name: "sample".into(),
                            pod_uid: "new-pod-uid".into(),
                            volume_name: "pvc-volume".into(),
                            source: VolumeSource::PersistentVolumeClaim as i32,
                            pv_name: "pv-2".into(),
                            pvc_name: "sample-pvc".into(),
                            pvc_uid: "p2".into(),
                        }),
                        node: "node-a".into(),
                        phase: VolumePhase::Completed as i32,
                        snapshot_id: "0123abcd".into(),
                        progress: Some(Progress {
                            bytes_done: 4096,
                            bytes_total: 4096,
                            files_done: 2,
                            files_total: 2,
                            seconds_elapsed: 1.25,
                        }),
                        started: at(1_700_000_001),
                        finished: at(1_700_000_003),
                        error_message: String::new(),
                        source_namespace: "foo".into(),
                        repository: "/loc/restic/foo".into(),
                        hooks: vec![stowage_proto::v1::HookResult {
                            phase: "post-restore".into(),
                            container: "app".into(),
                            command: vec!["check".into()],
                            succeeded: false,
                            exit_code: 2,
                            stderr: "no table\n".into(),
                            error: "post-restore hook [\"check\"] exited with code 2".into(),
                            started: at(1_700_000_004),
                            finished: at(1_700_000_005),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                    PodVolumeRestore {
                        volume: Some(PodVolumeRef {
                            namespace: "bar".into(),
                            pod_name: "sample".into(),
                            pod_uid: "new-pod-uid".into(),
                            volume_name: "emptydir-volume".into(),
                            source: VolumeSource::EmptyDir as i32,
                            ..Default::default()
                        }),
                        node: "node-b".into(),
                        phase: VolumePhase::Failed as i32,
                        snapshot_id: "4567cdef".into(),
                        progress: Some(Progress::default()),
                        error_message: "no agent on node node-b".into(),
                        source_namespace: "foo".into(),
                        repository: "/loc/restic/foo".into(),
                        ..Default::default()
                    },
                ],
                volumes_total: 2,
                volumes_completed: 1,
                volumes_failed: 1,
                progress: Some(Progress {
                    bytes_done: 4096,
                    bytes_total: 4096,
                    files_done: 2,
                    files_total: 2,
                    seconds_elapsed: 0.0,
                }),
                failure_reason: "1 of 2 volumes failed".into(),
                pods_created: vec!["bar/sample".into()],
                trace_id: "trace-1".into(),
                ..Default::default()
            }),
        }
    }

    fn log_line(seconds: i64, level: &str, message: &str) -> LogLine {
        LogLine {
            time: Some(prost_types::Timestamp { seconds, nanos: 0 }),
            level: level.into(),
            message: message.into(),
        }
    }

    fn local_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let local =
            stowage_storage_location::object_store::local::LocalFileSystem::new_with_prefix(
                dir.path(),
            )
            .unwrap();
        (dir, Store::new(Arc::new(local), "stowage".into()))
    }

    #[tokio::test]
    async fn a_put_restore_reads_back_the_same_with_its_logs() {
        let (dir, store) = local_store();
        let restore = sample_restore();
        let logs = vec![
            log_line(1_700_000_000, "info", "restore nightly-20260101 started"),
            log_line(
                1_700_000_060,
                "error",
                "volume bar/sample/emptydir-volume failed",
            ),
        ];
        store.put_restore(&restore, &logs).await.unwrap();
        for file in [
            "stowage-restore.json",
            "restore-nightly-20260101-logs.gz",
            "restore-nightly-20260101-results.gz",
        ] {
            assert!(
                dir.path()
                    .join("restores/nightly-20260101")
                    .join(file)
                    .is_file(),
                "{file}"
            );
        }
        assert_eq!(
            store.get_restore("nightly-20260101").await.unwrap(),
            Some(restore.clone())
        );
        assert_eq!(store.list_restores().await.unwrap(), vec![restore.clone()]);
        assert_eq!(store.restore_logs("nightly-20260101").await.unwrap(), logs);

        // A later state replaces the earlier one whole; a cancelled restore stays cancelled.
        let mut cancelled = restore.clone();
        let status = cancelled.status.as_mut().unwrap();
        status.phase = RestorePhase::Cancelled as i32;
        status.volumes[1].phase = VolumePhase::Cancelled as i32;
        store.put_restore(&cancelled, &logs[..1]).await.unwrap();
        assert_eq!(
            store.get_restore("nightly-20260101").await.unwrap(),
            Some(cancelled)
        );
        assert_eq!(
            store.restore_logs("nightly-20260101").await.unwrap(),
            &logs[..1]
        );
    }

    #[tokio::test]
    async fn restore_results_name_the_failed_volumes_under_their_namespace() {
        let (_dir, store) = local_store();
        store.put_restore(&sample_restore(), &[]).await.unwrap();
        let results = vf::store::read_restore_results(store.store.as_ref(), "nightly-20260101")
            .await
            .unwrap()
            .expect("results file");
        assert_eq!(
            results.errors.namespaces["bar"],
            ["pod volume sample/emptydir-volume: restore failed: no agent on node node-b"]
        );
        assert_eq!(results.errors.len(), 1);
        assert!(results.warnings.is_empty());
    }

    #[tokio::test]
    async fn restore_listing_skips_foreign_directories_and_reports_broken_records() {
        let (dir, store) = local_store();
        assert!(store.list_restores().await.unwrap().is_empty());
        store.put_restore(&sample_restore(), &[]).await.unwrap();
        let broken = dir.path().join("restores/broken");
        std::fs::create_dir_all(&broken).unwrap();
        std::fs::write(broken.join("stowage-restore.json"), b"{\"name\": 7").unwrap();
        // A restore Velero ran: logs and results only.
        let velero = dir.path().join("restores/velero-run");
        std::fs::create_dir_all(&velero).unwrap();
        std::fs::write(velero.join("restore-velero-run-logs.gz"), b"x").unwrap();
        // A backup of the same name is not a restore.
        store.save_backup(&sample(), &[], None).await.unwrap();

        let listed = store.list_restores().await.unwrap();
        let names: Vec<&str> = listed.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["broken", "nightly-20260101"]);
        let status = listed[0].status.clone().unwrap();
        assert_eq!(status.phase, RestorePhase::Failed as i32);
        assert!(
            status.failure_reason.starts_with(
                "unreadable restore record: restores/broken/stowage-restore.json: not a valid restore record"
            ),
            "{}",
            status.failure_reason
        );
        assert_eq!(
            store
                .get_restore("broken")
                .await
                .unwrap()
                .unwrap()
                .status
                .unwrap()
                .failure_reason,
            status.failure_reason
        );
        assert_eq!(store.get_restore("velero-run").await.unwrap(), None);
        assert_eq!(store.get_restore("absent").await.unwrap(), None);
        assert!(store.restore_logs("absent").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_deleted_restore_is_gone_and_its_neighbours_stay() {
        let (dir, store) = local_store();
        let mut other = sample_restore();
        other.name = "nightly-20260101-2".into();
        store.put_restore(&sample_restore(), &[]).await.unwrap();
        store.put_restore(&other, &[]).await.unwrap();
        store.save_backup(&sample(), &[], None).await.unwrap();
        store.delete_restore("nightly-20260101").await.unwrap();
        assert!(
            !dir.path()
                .join("restores/nightly-20260101")
                .join("stowage-restore.json")
                .exists()
        );
        assert_eq!(store.get_restore("nightly-20260101").await.unwrap(), None);
        assert_eq!(store.list_restores().await.unwrap(), vec![other]);
        assert_eq!(store.load_backups().await.unwrap().len(), 1);
        store.delete_restore("nightly-20260101").await.unwrap();
    }

    #[tokio::test]
    async fn a_restore_name_that_is_no_object_name_is_an_invalid_argument() {
        let (_dir, store) = local_store();
        for call in [
            store.get_restore("../backups").await.map(|_| ()),
            store.restore_logs("../backups").await.map(|_| ()),
            store.delete_restore("../backups").await,
        ] {
            let error = call.unwrap_err();
            assert!(
                matches!(
                    error,
                    Error::InvalidArgument {
                        what: "restore name",
                        ..
                    }
                ),
                "{error}"
            );
            assert!(error.to_string().contains("../backups"), "{error}");
        }
        let mut restore = sample_restore();
        restore.name = "Bad_Name".into();
        let error = store.put_restore(&restore, &[]).await.unwrap_err();
        assert!(error.to_string().contains("Bad_Name"), "{error}");
    }
}
