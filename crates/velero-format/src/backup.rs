//! The `velero.io/v1` `Backup` object as Velero stores it in `backups/<name>/velero-backup.json`.
//! Only the fields a volume backup or restore needs are typed; everything else Velero wrote
//! (hooks, includedResources, warnings counts, ...) is kept in the `extra` maps.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::meta::{Extra, LabelSelector, ObjectMeta, null_as_default, parse_go_duration};

pub const API_VERSION: &str = "velero.io/v1";
pub const BACKUP_KIND: &str = "Backup";
/// The backup file format version Velero 1.x writes in `status.formatVersion` and in the
/// tarball's `metadata/version` (1.1.0 added the `<version>-preferredversion` copies).
pub const FORMAT_VERSION: &str = "1.1.0";
/// The deprecated integer `status.version` that Velero still sets.
pub const LEGACY_STATUS_VERSION: i64 = 1;

/// A `velero.io/v1` `Backup`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backup {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "backup_kind")]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: BackupSpec,
    #[serde(default)]
    pub status: BackupStatus,
    #[serde(flatten)]
    pub extra: Extra,
}

fn api_version() -> String {
    API_VERSION.to_string()
}

fn backup_kind() -> String {
    BACKUP_KIND.to_string()
}

/// `spec` of a Backup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub included_namespaces: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub excluded_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
    /// A Go duration string, e.g. `"720h0m0s"`; see [`Backup::ttl`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_location: Option<String>,
    /// Velero 1.10+: back up every pod volume unless opted out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_volumes_to_fs_backup: Option<bool>,
    /// Velero 1.5–1.9 name of the same switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_volumes_to_restic: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `status.phase` of a Backup. Unknown phases are kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum BackupPhase {
    New,
    /// Velero 1.17+: waiting for a free backup worker.
    Queued,
    ReadyToStart,
    FailedValidation,
    InProgress,
    WaitingForPluginOperations,
    WaitingForPluginOperationsPartiallyFailed,
    Finalizing,
    FinalizingPartiallyFailed,
    Completed,
    PartiallyFailed,
    Failed,
    Deleting,
    Other(String),
}

impl BackupPhase {
    pub fn as_str(&self) -> &str {
        match self {
            BackupPhase::New => "New",
            BackupPhase::Queued => "Queued",
            BackupPhase::ReadyToStart => "ReadyToStart",
            BackupPhase::FailedValidation => "FailedValidation",
            BackupPhase::InProgress => "InProgress",
            BackupPhase::WaitingForPluginOperations => "WaitingForPluginOperations",
            BackupPhase::WaitingForPluginOperationsPartiallyFailed => {
                "WaitingForPluginOperationsPartiallyFailed"
            }
            BackupPhase::Finalizing => "Finalizing",
            BackupPhase::FinalizingPartiallyFailed => "FinalizingPartiallyFailed",
            BackupPhase::Completed => "Completed",
            BackupPhase::PartiallyFailed => "PartiallyFailed",
            BackupPhase::Failed => "Failed",
            BackupPhase::Deleting => "Deleting",
            BackupPhase::Other(other) => other,
        }
    }

    /// Phases after which nothing more will be written to the backup.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            BackupPhase::Completed
                | BackupPhase::PartiallyFailed
                | BackupPhase::Failed
                | BackupPhase::FailedValidation
        )
    }
}

impl From<String> for BackupPhase {
    fn from(text: String) -> Self {
        match text.as_str() {
            "New" => BackupPhase::New,
            "Queued" => BackupPhase::Queued,
            "ReadyToStart" => BackupPhase::ReadyToStart,
            "FailedValidation" => BackupPhase::FailedValidation,
            "InProgress" => BackupPhase::InProgress,
            "WaitingForPluginOperations" => BackupPhase::WaitingForPluginOperations,
            "WaitingForPluginOperationsPartiallyFailed" => {
                BackupPhase::WaitingForPluginOperationsPartiallyFailed
            }
            "Finalizing" => BackupPhase::Finalizing,
            "FinalizingPartiallyFailed" => BackupPhase::FinalizingPartiallyFailed,
            "Completed" => BackupPhase::Completed,
            "PartiallyFailed" => BackupPhase::PartiallyFailed,
            "Failed" => BackupPhase::Failed,
            "Deleting" => BackupPhase::Deleting,
            _ => BackupPhase::Other(text),
        }
    }
}

impl From<BackupPhase> for String {
    fn from(phase: BackupPhase) -> Self {
        phase.as_str().to_string()
    }
}

impl std::fmt::Display for BackupPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `status` of a Backup.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// Velero writes `""` for a backup that has no phase yet; that reads as `None`.
    #[serde(
        default,
        deserialize_with = "empty_phase_as_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub phase: Option<BackupPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timestamp: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format_version: Option<String>,
    /// Deprecated integer version (always 1 in the restic era).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnings: Option<i64>,
    #[serde(flatten)]
    pub extra: Extra,
}

fn empty_phase_as_none<'de, D>(deserializer: D) -> Result<Option<BackupPhase>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let text = Option::<String>::deserialize(deserializer)?;
    Ok(text.filter(|text| !text.is_empty()).map(BackupPhase::from))
}

impl Backup {
    /// A new Backup record named `name` in the namespace Velero's server runs in, with the
    /// format version fields set the way Velero sets them.
    pub fn new(name: impl Into<String>, server_namespace: impl Into<String>) -> Backup {
        Backup {
            api_version: api_version(),
            kind: backup_kind(),
            metadata: ObjectMeta {
                name: name.into(),
                namespace: Some(server_namespace.into()),
                ..ObjectMeta::default()
            },
            spec: BackupSpec::default(),
            status: BackupStatus {
                format_version: Some(FORMAT_VERSION.to_string()),
                version: Some(LEGACY_STATUS_VERSION),
                ..BackupStatus::default()
            },
            extra: Extra::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The parsed `spec.ttl`, `None` when absent or not a Go duration.
    pub fn ttl(&self) -> Option<std::time::Duration> {
        self.spec.ttl.as_deref().and_then(parse_go_duration)
    }

    /// Whether pod volumes are backed up by default (opt-out mode), under either of the two
    /// names Velero has used for the switch.
    pub fn default_volumes_to_fs_backup(&self) -> bool {
        self.spec
            .default_volumes_to_fs_backup
            .or(self.spec.default_volumes_to_restic)
            .unwrap_or(false)
    }

    /// Whether namespace `namespace` is selected by included/excluded namespaces
    /// (empty or `*` includes all, like Velero).
    pub fn includes_namespace(&self, namespace: &str) -> bool {
        let included = self.spec.included_namespaces.is_empty()
            || self
                .spec
                .included_namespaces
                .iter()
                .any(|included| included == "*" || included == namespace);
        included
            && !self
                .spec
                .excluded_namespaces
                .iter()
                .any(|excluded| excluded == namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like a `velero-backup.json` a Velero 1.9 server wrote for a restic backup.
    const VELERO_19_BACKUP: &str = r#"{
      "kind": "Backup",
      "apiVersion": "velero.io/v1",
      "metadata": {
        "name": "nightly-20220301",
        "namespace": "velero",
        "uid": "6f0f8a1e-2a6b-4d8e-9b44-3a7b1c2d9e01",
        "resourceVersion": "123456",
        "generation": 5,
        "creationTimestamp": "2022-03-01T02:00:00Z",
        "labels": {"velero.io/schedule-name": "nightly", "velero.io/storage-location": "default"},
        "annotations": {"velero.io/source-cluster-k8s-gitversion": "v1.21.5"},
        "managedFields": [{"manager": "velero-server", "operation": "Update"}]
      },
      "spec": {
        "metadata": {},
        "includedNamespaces": ["foo", "bar"],
        "excludedNamespaces": null,
        "includedResources": ["*"],
        "labelSelector": {"matchLabels": {"app": "sample"}},
        "snapshotVolumes": false,
        "ttl": "720h0m0s",
        "storageLocation": "default",
        "hooks": {},
        "defaultVolumesToRestic": true
      },
      "status": {
        "version": 1,
        "formatVersion": "1.1.0",
        "expiration": "2022-03-31T02:00:00Z",
        "phase": "Completed",
        "startTimestamp": "2022-03-01T02:00:00Z",
        "completionTimestamp": "2022-03-01T02:03:10Z",
        "progress": {"totalItems": 42, "itemsBackedUp": 42},
        "warnings": 1
      }
    }"#;

    #[test]
    fn parses_a_velero_restic_era_backup_record() {
        let backup: Backup = serde_json::from_str(VELERO_19_BACKUP).unwrap();
        assert_eq!(backup.name(), "nightly-20220301");
        assert_eq!(
            backup.metadata.uid.as_deref(),
            Some("6f0f8a1e-2a6b-4d8e-9b44-3a7b1c2d9e01")
        );
        assert_eq!(backup.metadata.labels["velero.io/schedule-name"], "nightly");
        assert_eq!(backup.spec.included_namespaces, ["foo", "bar"]);
        assert!(backup.spec.excluded_namespaces.is_empty());
        assert_eq!(
            backup.spec.label_selector.as_ref().unwrap().match_labels["app"],
            "sample"
        );
        assert_eq!(
            backup.ttl(),
            Some(std::time::Duration::from_secs(720 * 3600))
        );
        assert!(backup.default_volumes_to_fs_backup());
        assert_eq!(backup.status.phase, Some(BackupPhase::Completed));
        assert_eq!(backup.status.format_version.as_deref(), Some("1.1.0"));
        assert_eq!(backup.status.version, Some(1));
        assert_eq!(
            backup.status.completion_timestamp.unwrap().to_rfc3339(),
            "2022-03-01T02:03:10+00:00"
        );
        assert!(backup.includes_namespace("foo"));
        assert!(!backup.includes_namespace("kube-system"));
    }

    #[test]
    fn unknown_fields_are_written_back_unchanged() {
        let original: serde_json::Value = serde_json::from_str(VELERO_19_BACKUP).unwrap();
        let backup: Backup = serde_json::from_value(original.clone()).unwrap();
        let written = serde_json::to_value(&backup).unwrap();
        for pointer in [
            "/metadata/managedFields",
            "/spec/includedResources",
            "/spec/snapshotVolumes",
            "/spec/hooks",
            "/spec/metadata",
            "/status/progress",
        ] {
            assert_eq!(
                written.pointer(pointer),
                original.pointer(pointer),
                "{pointer}"
            );
        }
        let reread: Backup = serde_json::from_value(written).unwrap();
        assert_eq!(reread, backup);
    }

    #[test]
    fn fs_backup_switch_prefers_the_newer_name_and_defaults_off() {
        let mut backup = Backup::new("b", "velero");
        assert!(!backup.default_volumes_to_fs_backup());
        backup.spec.default_volumes_to_restic = Some(true);
        assert!(backup.default_volumes_to_fs_backup());
        backup.spec.default_volumes_to_fs_backup = Some(false);
        assert!(!backup.default_volumes_to_fs_backup());
    }

    #[test]
    fn empty_and_unknown_phases_are_kept_apart() {
        let backup: Backup =
            serde_json::from_str(r#"{"metadata":{"name":"a"},"status":{"phase":""}}"#).unwrap();
        assert_eq!(backup.status.phase, None);
        assert_eq!(backup.api_version, API_VERSION);
        let backup: Backup =
            serde_json::from_str(r#"{"metadata":{"name":"a"},"status":{"phase":"Exploded"}}"#)
                .unwrap();
        assert_eq!(
            backup.status.phase,
            Some(BackupPhase::Other("Exploded".into()))
        );
        let written = serde_json::to_value(&backup).unwrap();
        assert_eq!(written["status"]["phase"], "Exploded");
    }

    #[test]
    fn every_velero_phase_name_round_trips() {
        for name in [
            "New",
            "Queued",
            "ReadyToStart",
            "FailedValidation",
            "InProgress",
            "WaitingForPluginOperations",
            "WaitingForPluginOperationsPartiallyFailed",
            "Finalizing",
            "FinalizingPartiallyFailed",
            "Completed",
            "PartiallyFailed",
            "Failed",
            "Deleting",
        ] {
            let phase = BackupPhase::from(name.to_string());
            assert!(!matches!(phase, BackupPhase::Other(_)), "{name}");
            assert_eq!(String::from(phase), name);
        }
    }

    #[test]
    fn namespace_selection_follows_include_then_exclude() {
        let mut backup = Backup::new("b", "velero");
        assert!(backup.includes_namespace("anything"));
        backup.spec.included_namespaces = vec!["*".into()];
        backup.spec.excluded_namespaces = vec!["kube-system".into()];
        assert!(backup.includes_namespace("foo"));
        assert!(!backup.includes_namespace("kube-system"));
    }
}
