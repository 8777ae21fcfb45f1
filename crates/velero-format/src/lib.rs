//! Velero's restic-era bucket format (file format 1.x) and stowage's additions beside it: the
//! key layout of a backup storage location, serde types for the `velero.io/v1` `Backup` and
//! `PodVolumeBackup` records (unknown fields kept), the gzip/JSON/tar encodings, and async
//! helpers that read and write a whole backup over an `object_store::ObjectStore`.
//!
//! Restores are kept under `restores/<name>/` as Velero keeps its restore logs and results
//! there, with stowage's record of the restore beside them.
//!
//! Schedules are stowage's own, under `schedules/<name>/` (Velero keeps them in the cluster).
//!
//! Velero's files keep Velero's meaning; what stowage adds lives in `<name>-stowage.json` and
//! `stowage-restore.json`.

pub mod backup;
pub mod codec;
pub mod error;
pub mod layout;
pub mod logs;
pub mod meta;
pub mod pod_volume_backup;
pub mod resources;
pub mod restore;
pub mod schedule;
pub mod store;
pub mod stowage;
pub mod volumes;

pub use backup::{Backup, BackupPhase, BackupSpec, BackupStatus, FORMAT_VERSION};
pub use error::{FormatError, Result};
pub use logs::{LogEntry, format_log_line, format_logs, parse_log_line, parse_logs};
pub use meta::{LabelSelector, ObjectMeta, format_go_duration, parse_go_duration};
pub use pod_volume_backup::{
    PodReference, PodVolumeBackup, PodVolumeBackupPhase, PodVolumeBackupSpec,
    PodVolumeBackupStatus, PodVolumeOperationProgress,
};
pub use resources::{BackupResources, ResourceKey};
pub use restore::{
    ProgressRecord, RestoreResults, RestoreSpecRecord, RestoreStatusRecord, RestoreVolumeRecord,
    RestoredResourceRecord, ResultMessages, StowageRestoreRecord,
};
pub use schedule::{ScheduleRecord, ScheduleSpecRecord, ScheduleStatusRecord, SkippedFiringRecord};
pub use store::{
    BackupFiles, BackupListing, ListFailure, ListedBackup, RestoreListing, check_backup,
    delete_restore, ensure_writable, list_backup_keys, list_backups, list_restore_keys,
    list_restores, read_backup, read_backup_record, read_logs, read_pod_volume_backups,
    read_resource_list, read_resources, read_restore_logs, read_restore_record,
    read_restore_results, read_stowage_info, write_backup, write_backup_record, write_logs,
    write_pod_volume_backups, write_resource_list, write_resources, write_restore,
    write_stowage_info,
};
pub use stowage::{
    HookRecord, KeyReference, NamespaceRepository, Origin, ProgressSample, SkippedVolume,
    StowageBackupInfo, VolumeRecord,
};

pub use volumes::{BackedUpVolume, annotated_backup_volumes, claim_of_pod_volume};

/// Velero's default password for every restic repository it created (used unless the operator
/// replaced the `repository-password` key of the `velero-restic-credentials` /
/// `velero-repo-credentials` Secret).
pub const VELERO_DEFAULT_REPOSITORY_PASSWORD: &str = "static-passw0rd";
/// The `--host` Velero gave every restic snapshot.
pub const VELERO_SNAPSHOT_HOST: &str = "velero";
