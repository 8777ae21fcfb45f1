//! A restore's files under `restores/<name>/`, where Velero keeps its restore logs and results:
//! stowage's record of the restore (`stowage-restore.json`: spec, status and every volume, the
//! JSON twin of the API's `Restore` message, as `<name>-stowage.json` is for a backup) and
//! Velero's results file (`restore-<name>-results.gz`, `{"errors": {...}, "warnings": {...}}`).
//! The logs (`restore-<name>-logs.gz`) are text, as a backup's are.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::meta::{Extra, null_as_default};

/// Version of the restore record's schema; bumped only for incompatible changes.
pub const STOWAGE_RESTORE_VERSION: u32 = 1;

/// `restores/<name>/stowage-restore.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StowageRestoreRecord {
    #[serde(default = "record_version")]
    pub stowage_format_version: u32,
    pub name: String,
    /// The restore's uid: names the done files `.velero/<uid>` its restore helpers wait for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Version of the stowage orchestrator that wrote the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_by: Option<String>,
    #[serde(default)]
    pub spec: RestoreSpecRecord,
    #[serde(default)]
    pub status: RestoreStatusRecord,
    #[serde(flatten)]
    pub extra: Extra,
}

fn record_version() -> u32 {
    STOWAGE_RESTORE_VERSION
}

impl StowageRestoreRecord {
    /// A record for restore `name` with an empty spec and status.
    pub fn new(name: impl Into<String>) -> StowageRestoreRecord {
        StowageRestoreRecord {
            stowage_format_version: STOWAGE_RESTORE_VERSION,
            name: name.into(),
            uid: String::new(),
            written_by: None,
            spec: RestoreSpecRecord::default(),
            status: RestoreStatusRecord::default(),
            extra: Extra::new(),
        }
    }
}

/// What the restore was asked to do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpecRecord {
    #[serde(default)]
    pub backup_name: String,
    /// Old namespace -> new namespace.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub namespace_mapping: BTreeMap<String, String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub included_namespaces: Vec<String>,
    /// Resources restored from the tarball, Velero's spelling; empty means all.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub include_resources: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub exclude_resources: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub label_selector: BTreeMap<String, String>,
    /// `none` or `update`; empty means none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub existing_resource_policy: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// How the restore went, volume by volume.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatusRecord {
    /// `New`, `InProgress`, `Completed`, `PartiallyFailed`, `Failed`, `Cancelled`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<DateTime<Utc>>,
    #[serde(default)]
    pub volumes_total: u32,
    #[serde(default)]
    pub volumes_completed: u32,
    #[serde(default)]
    pub volumes_failed: u32,
    #[serde(default)]
    pub progress: ProgressRecord,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub failure_reason: String,
    /// Pods the restore created, as `namespace/name`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub pods_created: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trace_id: String,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub volumes: Vec<RestoreVolumeRecord>,
    /// What the restore did with each object of the backup's resource tarball.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub resources: Vec<RestoredResourceRecord>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One object of the resource tarball and what the restore did with it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoredResourceRecord {
    /// Velero's spelling: `deployments.apps`, `configmaps`.
    pub resource: String,
    /// After namespace mapping; empty for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
    /// `Created`, `Updated`, `SkippedExists`, `Skipped` or `Failed`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(flatten)]
    pub extra: Extra,
}

impl RestoredResourceRecord {
    /// `configmaps/shop/cfg` or `persistentvolumes/pv-1`, as Velero's messages name objects.
    pub fn path(&self) -> String {
        if self.namespace.is_empty() {
            format!("{}/{}", self.resource, self.name)
        } else {
            format!("{}/{}/{}", self.resource, self.namespace, self.name)
        }
    }
}

/// Bytes and files done and in total, and the seconds restic ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressRecord {
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub bytes_total: u64,
    #[serde(default)]
    pub files_done: u64,
    #[serde(default)]
    pub files_total: u64,
    #[serde(default)]
    pub seconds_elapsed: f64,
}

/// One restored-into pod volume.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreVolumeRecord {
    /// The new pod's namespace (after mapping).
    pub namespace: String,
    pub pod: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_uid: String,
    pub volume: String,
    /// The volume kind as the API names it (`VOLUME_SOURCE_PERSISTENT_VOLUME_CLAIM`, ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pv_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pvc_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pvc_uid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// `New`, `InProgress`, `Completed`, `Failed`, `Canceled` (the PodVolumeRestore phases).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub snapshot_id: String,
    #[serde(default)]
    pub progress: ProgressRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The namespace the volume was backed up from (differs under namespace mapping).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_namespace: String,
    /// restic URL of the repository the snapshot is restored from (no credentials).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub repository: String,
    /// The restore hooks that ran for this volume's pod.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub hooks: Vec<crate::stowage::HookRecord>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Velero's `results.Result`: messages about Velero itself, about cluster-scoped objects, and
/// per namespace. Velero omits empty parts, and reads a missing part as empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResultMessages {
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub velero: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cluster: Vec<String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub namespaces: BTreeMap<String, Vec<String>>,
}

impl ResultMessages {
    /// Adds `message` under `namespace`, or to the cluster-scoped list when `namespace` is
    /// empty (Velero's `Result.Add`).
    pub fn add(&mut self, namespace: &str, message: impl Into<String>) {
        if namespace.is_empty() {
            self.cluster.push(message.into());
        } else {
            self.namespaces
                .entry(namespace.to_string())
                .or_default()
                .push(message.into());
        }
    }

    /// How many messages, as Velero counts `status.errors` / `status.warnings`.
    pub fn len(&self) -> usize {
        self.velero.len()
            + self.cluster.len()
            + self.namespaces.values().map(Vec::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `restores/<name>/restore-<name>-results.gz`: Velero's `map[string]results.Result` with the
/// keys `errors` and `warnings`. Other keys are kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RestoreResults {
    /// Velero's writer always writes both keys, even when empty.
    #[serde(default)]
    pub errors: ResultMessages,
    #[serde(default)]
    pub warnings: ResultMessages,
    #[serde(flatten)]
    pub extra: Extra,
}

impl RestoreResults {
    /// The results of `record`: each failed volume is an error under its (restored-into)
    /// namespace naming the pod, volume and reason; a cancelled volume is a warning there; a
    /// failure of the restore as a whole that no volume explains is a Velero-level error.
    pub fn of_record(record: &StowageRestoreRecord) -> RestoreResults {
        let mut results = RestoreResults::default();
        for volume in &record.status.volumes {
            let text = |what: &str| {
                let mut text = format!("pod volume {}/{}: {what}", volume.pod, volume.volume);
                if !volume.message.is_empty() {
                    text.push_str(": ");
                    text.push_str(&volume.message);
                }
                text
            };
            match volume.phase.as_str() {
                "Failed" => results
                    .errors
                    .add(&volume.namespace, text("restore failed")),
                "Canceled" | "Cancelled" => results
                    .warnings
                    .add(&volume.namespace, text("restore cancelled")),
                _ => {}
            }
        }
        // Velero's words: an object that failed is an error, one that was already there a
        // warning, under the object's (restored-into) namespace or the cluster's.
        for resource in &record.status.resources {
            match resource.outcome.as_str() {
                "Failed" => results.errors.add(
                    &resource.namespace,
                    format!("error restoring {}: {}", resource.path(), resource.message),
                ),
                // Restoring into a namespace that exists is the usual case, as in Velero.
                "SkippedExists" if resource.resource != crate::resources::NAMESPACES => {
                    results.warnings.add(
                        &resource.namespace,
                        format!(
                            "could not restore, {} already exists: {}",
                            resource.path(),
                            resource.message
                        ),
                    )
                }
                _ => {}
            }
        }
        let reason = &record.status.failure_reason;
        if !reason.is_empty() && results.errors.is_empty() {
            results.errors.velero.push(reason.clone());
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(namespace: &str, pod: &str, phase: &str, message: &str) -> RestoreVolumeRecord {
        RestoreVolumeRecord {
            namespace: namespace.into(),
            pod: pod.into(),
            volume: "data".into(),
            phase: phase.into(),
            message: message.into(),
            ..Default::default()
        }
    }

    #[test]
    fn record_round_trips_with_unknown_fields() {
        let text = r#"{
          "stowageFormatVersion": 1,
          "name": "r1",
          "uid": "0f0f",
          "spec": {"backupName": "nightly", "namespaceMapping": {"foo": "bar"}, "futureSpec": 1},
          "status": {"phase": "PartiallyFailed", "volumesTotal": 2, "volumesFailed": 1,
             "progress": {"bytesDone": 5, "bytesTotal": 10, "filesDone": 1, "filesTotal": 2,
                          "secondsElapsed": 1.5},
             "podsCreated": ["bar/sample"],
             "volumes": [{"namespace": "bar", "pod": "sample", "volume": "data",
                          "phase": "Failed", "message": "no agent", "sourceNamespace": "foo"}]},
          "futureField": {"x": 1}
        }"#;
        let record: StowageRestoreRecord = serde_json::from_str(text).unwrap();
        assert_eq!(record.spec.namespace_mapping["foo"], "bar");
        assert_eq!(record.status.progress.seconds_elapsed, 1.5);
        assert_eq!(record.status.volumes[0].source_namespace, "foo");
        let written = serde_json::to_value(&record).unwrap();
        assert_eq!(written["futureField"]["x"], 1);
        assert_eq!(written["spec"]["futureSpec"], 1);
        assert_eq!(
            serde_json::from_value::<StowageRestoreRecord>(written).unwrap(),
            record
        );
    }

    #[test]
    fn minimal_record_gets_defaults() {
        let record: StowageRestoreRecord = serde_json::from_str(r#"{"name":"r1"}"#).unwrap();
        assert_eq!(record, StowageRestoreRecord::new("r1"));
    }

    #[test]
    fn failed_volumes_are_errors_under_their_namespace() {
        let mut record = StowageRestoreRecord::new("r1");
        record.status.volumes = vec![
            volume("bar", "a", "Completed", ""),
            volume("bar", "b", "Failed", "restic: wrong password"),
            volume("baz", "c", "Canceled", "restore cancelled by request"),
        ];
        record.status.failure_reason = "1 of 3 volumes failed".into();
        let results = RestoreResults::of_record(&record);
        assert_eq!(
            results.errors.namespaces["bar"],
            ["pod volume b/data: restore failed: restic: wrong password"]
        );
        assert_eq!(results.errors.len(), 1, "{results:?}");
        assert_eq!(
            results.warnings.namespaces["baz"],
            ["pod volume c/data: restore cancelled: restore cancelled by request"]
        );
        // Velero's shape: both keys always, empty parts omitted as Go's omitempty does.
        let json = serde_json::to_value(&results).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "errors": {"namespaces": {"bar": ["pod volume b/data: restore failed: restic: wrong password"]}},
                "warnings": {"namespaces": {"baz": ["pod volume c/data: restore cancelled: restore cancelled by request"]}},
            })
        );
    }

    #[test]
    fn failed_objects_are_errors_and_existing_ones_warnings_where_they_live() {
        let mut record = StowageRestoreRecord::new("r1");
        let resource =
            |resource: &str, namespace: &str, name: &str, outcome: &str, message: &str| {
                RestoredResourceRecord {
                    resource: resource.into(),
                    namespace: namespace.into(),
                    name: name.into(),
                    outcome: outcome.into(),
                    message: message.into(),
                    ..Default::default()
                }
            };
        record.status.resources = vec![
            resource("configmaps", "shop", "cfg", "Created", ""),
            resource(
                "secrets",
                "shop",
                "creds",
                "Failed",
                "forbidden (403 Forbidden)",
            ),
            resource("services", "shop", "web", "SkippedExists", "already exists"),
            resource("namespaces", "", "shop", "SkippedExists", "already exists"),
            resource(
                "persistentvolumes",
                "",
                "pv-1",
                "Failed",
                "invalid (422 Invalid)",
            ),
            resource(
                "pods",
                "shop",
                "web-1",
                "Skipped",
                "owned by ReplicaSet web",
            ),
        ];
        let results = RestoreResults::of_record(&record);
        assert_eq!(
            results.errors.namespaces["shop"],
            ["error restoring secrets/shop/creds: forbidden (403 Forbidden)"]
        );
        assert_eq!(
            results.errors.cluster,
            ["error restoring persistentvolumes/pv-1: invalid (422 Invalid)"]
        );
        assert_eq!(
            results.warnings.namespaces["shop"],
            ["could not restore, services/shop/web already exists: already exists"]
        );
        assert_eq!(results.errors.len() + results.warnings.len(), 3);
        let written = serde_json::to_value(&record).unwrap();
        assert_eq!(written["status"]["resources"][1]["outcome"], "Failed");
        assert!(written["status"]["resources"][4].get("namespace").is_none());
        assert!(
            results.warnings.cluster.is_empty(),
            "an existing namespace is no warning"
        );
        assert_eq!(
            serde_json::from_value::<StowageRestoreRecord>(written).unwrap(),
            record
        );
    }

    #[test]
    fn a_failure_no_volume_explains_is_a_velero_error() {
        let mut record = StowageRestoreRecord::new("r1");
        record.status.failure_reason = "backup nightly not found".into();
        let results = RestoreResults::of_record(&record);
        assert_eq!(results.errors.velero, ["backup nightly not found"]);
        assert!(results.warnings.is_empty());
    }

    #[test]
    fn velero_written_results_parse() {
        // What Velero's restore controller writes (json.Encoder: trailing newline, omitempty).
        let text = "{\"errors\":{\"namespaces\":{\"foo\":[\"error restoring pods/foo/sample: x\"]}},\"warnings\":{\"velero\":[\"w\"],\"cluster\":null}}\n";
        let results: RestoreResults = serde_json::from_str(text).unwrap();
        assert_eq!(results.errors.namespaces["foo"].len(), 1);
        assert_eq!(results.warnings.velero, ["w"]);
        assert!(results.warnings.cluster.is_empty());
        let empty: RestoreResults = serde_json::from_str(
            r#"{"errors":{"velero":[],"cluster":[],"namespaces":{}},"warnings":{}}"#,
        )
        .unwrap();
        assert!(empty.errors.is_empty() && empty.warnings.is_empty());
    }
}
