//! `backups/<name>/<name>-stowage.json`: what stowage records beside Velero's files. Velero's
//! records keep their meaning; this file adds the stable identity of the backup and of each
//! volume (so incremental parents survive pod re-creation), which key opens each namespace's
//! repository, and per-volume bytes and progress history. A backup without it was written by
//! Velero.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::meta::Extra;

/// Version of this file's schema; bumped only for incompatible changes.
pub const STOWAGE_INFO_VERSION: u32 = 1;

/// Who wrote a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Stowage,
    /// Velero's restic integration; such backups are read-only to stowage.
    Velero,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::Stowage => "stowage",
            Origin::Velero => "velero",
        })
    }
}

/// The whole stowage-only file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StowageBackupInfo {
    #[serde(default = "info_version")]
    pub stowage_format_version: u32,
    /// Stable identity of the backup (a UUID), independent of its name and of any cluster.
    #[serde(default)]
    pub backup_id: String,
    #[serde(default = "origin_stowage")]
    pub origin: Origin,
    /// Version of the stowage orchestrator that wrote the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_by: Option<String>,
    /// Cluster the backup was taken in, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_cluster: Option<String>,
    /// Per namespace: its repository and the key that opens it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, NamespaceRepository>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeRecord>,
    /// Pod volumes deliberately not backed up, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedVolume>,
    #[serde(flatten)]
    pub extra: Extra,
}

fn info_version() -> u32 {
    STOWAGE_INFO_VERSION
}

fn origin_stowage() -> Origin {
    Origin::Stowage
}

/// A namespace's restic repository and the reference to its key (never the key itself).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceRepository {
    /// The restic repository URL as the repo-manager reported it.
    pub repository_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyReference>,
    /// restic's repository id (`restic cat config`), to notice a repository replaced under the
    /// same path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_id: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Where the password of a repository is kept: a key of a Kubernetes Secret.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyReference {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret_namespace: String,
    pub secret_name: String,
    pub secret_key: String,
}

/// One backed-up pod volume, as stowage saw it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRecord {
    pub namespace: String,
    pub pod: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_uid: String,
    pub volume: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pv: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// Identity that outlives the pod (e.g. `foo/pvc/sample-pvc` or `foo/StatefulSet/db/data`),
    /// used to find the parent snapshot of the next backup.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stable_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_snapshot_id: Option<String>,
    /// `Completed`, `Failed`, ... (the PodVolumeBackup phase names).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub bytes_total: u64,
    #[serde(default)]
    pub files_done: u64,
    #[serde(default)]
    pub files_total: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<DateTime<Utc>>,
    /// Progress samples, oldest first (kept sparse by the writer).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub progress: Vec<ProgressSample>,
    /// The pod's backup hooks that ran around this volume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookRecord>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// What one exec hook did (a pod's backup hook, or a restored pod's post-restore hook), as
/// the records and the PodVolumeBackup/PodVolumeRestore objects' `status.hooks` spell it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookRecord {
    /// `pre`, `post` (backup) or `post-restore`.
    pub phase: String,
    #[serde(default)]
    pub container: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub succeeded: bool,
    /// -1 when the command did not run to an exit code.
    #[serde(default)]
    pub exit_code: i32,
    /// Output as kept (truncated in the middle when long).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr: String,
    /// Why it failed; empty when it succeeded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<DateTime<Utc>>,
}

/// One point of a volume's progress history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressSample {
    pub time: DateTime<Utc>,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// A pod volume that was not backed up, and why (hostPath, secret, not annotated, ...).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SkippedVolume {
    pub namespace: String,
    pub pod: String,
    pub volume: String,
    pub reason: String,
}

impl StowageBackupInfo {
    /// A fresh record for a stowage backup with identity `backup_id`.
    pub fn new(backup_id: impl Into<String>) -> StowageBackupInfo {
        StowageBackupInfo {
            stowage_format_version: STOWAGE_INFO_VERSION,
            backup_id: backup_id.into(),
            origin: Origin::Stowage,
            written_by: None,
            source_cluster: None,
            namespaces: BTreeMap::new(),
            volumes: Vec::new(),
            skipped: Vec::new(),
            extra: Extra::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stowage_info_round_trips_with_unknown_fields() {
        let text = r#"{
          "stowageFormatVersion": 1,
          "backupId": "c0ffee00-0000-4000-8000-000000000000",
          "origin": "stowage",
          "writtenBy": "0.1.0",
          "namespaces": {"foo": {"repositoryUrl": "/loc/restic/foo",
             "key": {"secretNamespace": "stowage", "secretName": "stowage-repo-foo", "secretKey": "password"}}},
          "volumes": [{"namespace": "foo", "pod": "sample", "volume": "pvc-volume", "pvc": "sample-pvc",
             "stableId": "foo/pvc/sample-pvc", "snapshotId": "abc", "phase": "Completed",
             "bytesDone": 10, "bytesTotal": 10,
             "progress": [{"time": "2026-01-01T00:00:00Z", "bytesDone": 5, "bytesTotal": 10}]}],
          "skipped": [{"namespace": "foo", "pod": "sample", "volume": "token", "reason": "projected volume"}],
          "futureField": {"x": 1}
        }"#;
        let info: StowageBackupInfo = serde_json::from_str(text).unwrap();
        assert_eq!(info.origin, Origin::Stowage);
        assert_eq!(
            info.namespaces["foo"].key.as_ref().unwrap().secret_name,
            "stowage-repo-foo"
        );
        assert_eq!(info.volumes[0].progress[0].bytes_done, 5);
        assert_eq!(info.skipped[0].reason, "projected volume");
        let written = serde_json::to_value(&info).unwrap();
        assert_eq!(written["futureField"]["x"], 1);
        assert_eq!(
            serde_json::from_value::<StowageBackupInfo>(written).unwrap(),
            info
        );
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let info: StowageBackupInfo = serde_json::from_str(r#"{"backupId":"x"}"#).unwrap();
        assert_eq!(info, StowageBackupInfo::new("x"));
        assert_eq!(Origin::Velero.to_string(), "velero");
    }
}
