//! The `velero.io/v1` `PodVolumeBackup` object: one per backed-up pod volume, stored as a gzipped
//! JSON array in `backups/<name>/<name>-podvolumebackups.json.gz`. The restic snapshot id and
//! the tags Velero put on the snapshot are what a restore of a restic-era backup needs.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::meta::{Extra, ObjectMeta, null_as_default};

pub const POD_VOLUME_BACKUP_KIND: &str = "PodVolumeBackup";
/// The label Velero puts on every PodVolumeBackup, naming its Backup.
pub const BACKUP_NAME_LABEL: &str = "velero.io/backup-name";
/// The label carrying the Backup's uid.
pub const BACKUP_UID_LABEL: &str = "velero.io/backup-uid";
/// The label carrying the PVC's uid, for PVC-backed volumes.
pub const PVC_UID_LABEL: &str = "velero.io/pvc-uid";
/// The annotation naming the PVC, for PVC-backed volumes (Velero's restore looks for it to tell
/// whether a PVC has a pod volume backup).
pub const PVC_NAME_ANNOTATION: &str = "velero.io/pvc-name";
/// `spec.backupStorageLocation`: the name of Velero's default BackupStorageLocation, the one
/// location stowage writes to.
pub const DEFAULT_STORAGE_LOCATION: &str = "default";
/// `spec.uploaderType` of restic-era backups (absent before Velero 1.10 meant restic too).
pub const UPLOADER_RESTIC: &str = "restic";

/// The restic snapshot tag keys Velero used (`--tag key=value`).
pub mod tags {
    pub const BACKUP: &str = "backup";
    pub const BACKUP_UID: &str = "backup-uid";
    pub const NAMESPACE: &str = "ns";
    pub const POD: &str = "pod";
    pub const POD_UID: &str = "pod-uid";
    pub const VOLUME: &str = "volume";
    pub const PVC_UID: &str = "pvc-uid";
}

/// A `velero.io/v1` `PodVolumeBackup`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodVolumeBackup {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "kind")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodVolumeBackupSpec,
    #[serde(default)]
    pub status: PodVolumeBackupStatus,
    #[serde(flatten)]
    pub extra: Extra,
}

fn api_version() -> String {
    crate::backup::API_VERSION.to_string()
}

fn kind() -> String {
    POD_VOLUME_BACKUP_KIND.to_string()
}

/// A reference to the pod (`corev1.ObjectReference`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodReference {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec` of a PodVolumeBackup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodVolumeBackupSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(default)]
    pub pod: PodReference,
    /// The volume's name in the pod spec.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub volume: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backup_storage_location: String,
    /// The restic repository URL (`s3:<endpoint>/<bucket>/<prefix>/restic/<ns>`, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub repo_identifier: String,
    /// `restic` (or `kopia` after 1.10); absent in backups older than 1.10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploader_type: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub tags: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `status.phase` of a PodVolumeBackup. Unknown phases are kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum PodVolumeBackupPhase {
    New,
    /// The next four come from Velero 1.16+'s node-agent data path.
    Accepted,
    Prepared,
    Canceling,
    Canceled,
    InProgress,
    Completed,
    Failed,
    Other(String),
}

impl PodVolumeBackupPhase {
    pub fn as_str(&self) -> &str {
        match self {
            PodVolumeBackupPhase::New => "New",
            PodVolumeBackupPhase::Accepted => "Accepted",
            PodVolumeBackupPhase::Prepared => "Prepared",
            PodVolumeBackupPhase::Canceling => "Canceling",
            PodVolumeBackupPhase::Canceled => "Canceled",
            PodVolumeBackupPhase::InProgress => "InProgress",
            PodVolumeBackupPhase::Completed => "Completed",
            PodVolumeBackupPhase::Failed => "Failed",
            PodVolumeBackupPhase::Other(other) => other,
        }
    }
}

impl From<String> for PodVolumeBackupPhase {
    fn from(text: String) -> Self {
        match text.as_str() {
            "New" => PodVolumeBackupPhase::New,
            "Accepted" => PodVolumeBackupPhase::Accepted,
            "Prepared" => PodVolumeBackupPhase::Prepared,
            "Canceling" => PodVolumeBackupPhase::Canceling,
            "Canceled" => PodVolumeBackupPhase::Canceled,
            "InProgress" => PodVolumeBackupPhase::InProgress,
            "Completed" => PodVolumeBackupPhase::Completed,
            "Failed" => PodVolumeBackupPhase::Failed,
            _ => PodVolumeBackupPhase::Other(text),
        }
    }
}

impl From<PodVolumeBackupPhase> for String {
    fn from(phase: PodVolumeBackupPhase) -> Self {
        phase.as_str().to_string()
    }
}

impl std::fmt::Display for PodVolumeBackupPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `status.progress`: bytes, as restic reported them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodVolumeOperationProgress {
    #[serde(default)]
    pub total_bytes: u64,
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `status` of a PodVolumeBackup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodVolumeBackupStatus {
    #[serde(
        default,
        deserialize_with = "empty_phase_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub phase: Option<PodVolumeBackupPhase>,
    /// The directory on the node that was backed up.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(
        default,
        rename = "snapshotID",
        skip_serializing_if = "String::is_empty"
    )]
    pub snapshot_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timestamp: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<PodVolumeOperationProgress>,
    /// Bytes the backup added to the repository (Velero 1.15+; absent when zero, as Go's
    /// `omitempty` writes it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub incremental_bytes: u64,
    /// When the node's uploader took the volume on (Velero 1.16+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_timestamp: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub extra: Extra,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

fn empty_phase_as_none<'de, D>(deserializer: D) -> Result<Option<PodVolumeBackupPhase>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let text = Option::<String>::deserialize(deserializer)?;
    Ok(text
        .filter(|text| !text.is_empty())
        .map(PodVolumeBackupPhase::from))
}

impl PodVolumeBackup {
    /// An empty record with apiVersion/kind set.
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> PodVolumeBackup {
        PodVolumeBackup {
            api_version: api_version(),
            kind: kind(),
            metadata: ObjectMeta {
                name: name.into(),
                namespace: Some(namespace.into()),
                ..ObjectMeta::default()
            },
            spec: PodVolumeBackupSpec::default(),
            status: PodVolumeBackupStatus::default(),
            extra: Extra::new(),
        }
    }

    /// The backup this record belongs to: the `velero.io/backup-name` label, else the
    /// `backup` snapshot tag.
    pub fn backup_name(&self) -> Option<&str> {
        self.metadata
            .labels
            .get(BACKUP_NAME_LABEL)
            .or_else(|| self.spec.tags.get(tags::BACKUP))
            .map(String::as_str)
    }

    /// The restic snapshot id, if the volume completed.
    pub fn snapshot_id(&self) -> Option<&str> {
        Some(self.status.snapshot_id.as_str()).filter(|id| !id.is_empty())
    }

    /// The uploader that wrote the snapshot; records older than Velero 1.10 have none and
    /// were always restic.
    pub fn uploader(&self) -> &str {
        self.spec
            .uploader_type
            .as_deref()
            .unwrap_or(UPLOADER_RESTIC)
    }

    /// The namespace whose restic repository holds the snapshot.
    pub fn pod_namespace(&self) -> &str {
        if self.spec.pod.namespace.is_empty() {
            self.spec
                .tags
                .get(tags::NAMESPACE)
                .map(String::as_str)
                .unwrap_or_default()
        } else {
            &self.spec.pod.namespace
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like one element of a `<name>-podvolumebackups.json.gz` written by Velero 1.9.
    const VELERO_PVB: &str = r#"{
      "kind": "PodVolumeBackup",
      "apiVersion": "velero.io/v1",
      "metadata": {
        "name": "nightly-20220301-7x2kq",
        "generateName": "nightly-20220301-",
        "namespace": "velero",
        "uid": "0d5e2c48-5a0e-4b8f-8a7e-4b8b1f0c2a11",
        "labels": {
          "velero.io/backup-name": "nightly-20220301",
          "velero.io/backup-uid": "6f0f8a1e-2a6b-4d8e-9b44-3a7b1c2d9e01",
          "velero.io/pvc-uid": "3c1f0000-1111-2222-3333-444455556666"
        },
        "ownerReferences": [{"apiVersion": "velero.io/v1", "kind": "Backup",
          "name": "nightly-20220301", "uid": "6f0f8a1e-2a6b-4d8e-9b44-3a7b1c2d9e01",
          "controller": true}]
      },
      "spec": {
        "node": "worker-1",
        "pod": {"kind": "Pod", "namespace": "foo", "name": "sample",
                "uid": "9a8b7c6d-0000-4000-8000-000000000001"},
        "volume": "pvc-volume",
        "backupStorageLocation": "default",
        "repoIdentifier": "s3:http://minio.velero.svc:9000/velero/restic/foo",
        "tags": {
          "backup": "nightly-20220301",
          "backup-uid": "6f0f8a1e-2a6b-4d8e-9b44-3a7b1c2d9e01",
          "ns": "foo",
          "pod": "sample",
          "pod-uid": "9a8b7c6d-0000-4000-8000-000000000001",
          "pvc-uid": "3c1f0000-1111-2222-3333-444455556666",
          "volume": "pvc-volume"
        }
      },
      "status": {
        "phase": "Completed",
        "path": "/host_pods/9a8b7c6d-0000-4000-8000-000000000001/volumes/kubernetes.io~csi/pvc-3c1f/mount",
        "snapshotID": "4bd7e2a1",
        "startTimestamp": "2022-03-01T02:00:05Z",
        "completionTimestamp": "2022-03-01T02:00:09Z",
        "progress": {"totalBytes": 10485760, "bytesDone": 10485760}
      }
    }"#;

    #[test]
    fn parses_a_velero_pod_volume_backup() {
        let pvb: PodVolumeBackup = serde_json::from_str(VELERO_PVB).unwrap();
        assert_eq!(pvb.backup_name(), Some("nightly-20220301"));
        assert_eq!(pvb.spec.node, "worker-1");
        assert_eq!(pvb.spec.pod.kind, "Pod");
        assert_eq!(pvb.spec.pod.name, "sample");
        assert_eq!(pvb.pod_namespace(), "foo");
        assert_eq!(pvb.spec.volume, "pvc-volume");
        assert_eq!(
            pvb.spec.repo_identifier,
            "s3:http://minio.velero.svc:9000/velero/restic/foo"
        );
        assert_eq!(pvb.uploader(), "restic");
        assert_eq!(pvb.spec.tags[tags::POD_UID], pvb.spec.pod.uid);
        assert_eq!(pvb.status.phase, Some(PodVolumeBackupPhase::Completed));
        assert_eq!(pvb.snapshot_id(), Some("4bd7e2a1"));
        let progress = pvb.status.progress.as_ref().unwrap();
        assert_eq!(
            (progress.total_bytes, progress.bytes_done),
            (10485760, 10485760)
        );
        assert!(pvb.status.start_timestamp < pvb.status.completion_timestamp);
    }

    #[test]
    fn round_trip_keeps_owner_references_and_field_names() {
        let original: serde_json::Value = serde_json::from_str(VELERO_PVB).unwrap();
        let pvb: PodVolumeBackup = serde_json::from_value(original.clone()).unwrap();
        let written = serde_json::to_value(&pvb).unwrap();
        assert_eq!(
            written.pointer("/metadata/ownerReferences"),
            original.pointer("/metadata/ownerReferences")
        );
        assert_eq!(
            written.pointer("/metadata/generateName"),
            original.pointer("/metadata/generateName")
        );
        assert_eq!(written["status"]["snapshotID"], "4bd7e2a1");
        assert_eq!(written["status"]["progress"]["bytesDone"], 10485760);
        assert_eq!(
            written["spec"]["repoIdentifier"],
            original["spec"]["repoIdentifier"]
        );
        assert_eq!(
            serde_json::from_value::<PodVolumeBackup>(written).unwrap(),
            pvb
        );
    }

    #[test]
    fn every_velero_phase_name_round_trips() {
        for name in [
            "New",
            "Accepted",
            "Prepared",
            "InProgress",
            "Canceling",
            "Canceled",
            "Completed",
            "Failed",
        ] {
            let phase = PodVolumeBackupPhase::from(name.to_string());
            assert!(!matches!(phase, PodVolumeBackupPhase::Other(_)), "{name}");
            assert_eq!(String::from(phase), name);
        }
    }

    #[test]
    fn failed_volume_without_snapshot_has_no_snapshot_id() {
        let pvb: PodVolumeBackup = serde_json::from_str(
            r#"{"metadata":{"name":"x"},"spec":{"tags":{"backup":"b1","ns":"bar"},
                "uploaderType":"kopia"},
                "status":{"phase":"Failed","message":"error running restic backup: exit 1",
                "snapshotID":""}}"#,
        )
        .unwrap();
        assert_eq!(pvb.snapshot_id(), None);
        assert_eq!(pvb.backup_name(), Some("b1"));
        assert_eq!(pvb.pod_namespace(), "bar");
        assert_eq!(pvb.uploader(), "kopia");
        assert_eq!(pvb.status.phase, Some(PodVolumeBackupPhase::Failed));
        assert!(pvb.status.message.contains("exit 1"));
    }
}
