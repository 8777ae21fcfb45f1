//! A schedule's record, `schedules/<name>/stowage-schedule.json`. Velero keeps its Schedules in
//! the cluster only, so the file is stowage's; it has the shape of Velero's `velero.io/v1`
//! `Schedule` (`spec.schedule`, `spec.template`, `spec.paused`, `status.lastBackup`) so it
//! reads as one, with what stowage adds (the last firing, the skipped firings) beside it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    backup::{API_VERSION, BackupSpec},
    meta::{Extra, ObjectMeta, null_as_default},
};

pub const SCHEDULE_KIND: &str = "Schedule";

/// `schedules/<name>/stowage-schedule.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleRecord {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "schedule_kind")]
    pub kind: String,
    /// `name`, `uid`, `creationTimestamp`.
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ScheduleSpecRecord,
    #[serde(default)]
    pub status: ScheduleStatusRecord,
    #[serde(flatten)]
    pub extra: Extra,
}

fn api_version() -> String {
    API_VERSION.to_string()
}

fn schedule_kind() -> String {
    SCHEDULE_KIND.to_string()
}

impl ScheduleRecord {
    /// A record for schedule `name` with an empty spec and status.
    pub fn new(name: impl Into<String>) -> ScheduleRecord {
        ScheduleRecord {
            api_version: api_version(),
            kind: schedule_kind(),
            metadata: ObjectMeta {
                name: name.into(),
                ..ObjectMeta::default()
            },
            spec: ScheduleSpecRecord::default(),
            status: ScheduleStatusRecord::default(),
            extra: Extra::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }
}

/// `spec` of a Schedule: Velero's fields. The template is a Velero `BackupSpec`; what Velero's
/// spec has no field for (stowage's timeout, exclude paths, retention) is in its `extra`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSpecRecord {
    #[serde(default)]
    pub schedule: String,
    #[serde(default)]
    pub template: BackupSpec,
    #[serde(default)]
    pub paused: bool,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One firing that made no backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SkippedFiringRecord {
    pub at: DateTime<Utc>,
    #[serde(default)]
    pub reason: String,
}

/// `status` of a Schedule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleStatusRecord {
    /// When the last backup was started (Velero's field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<DateTime<Utc>>,
    /// When the last firing was skipped (Velero's field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_skipped: Option<DateTime<Utc>>,
    /// The time the last firing (run or skipped) was scheduled for: the next firings are
    /// counted from it, also after a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fired: Option<DateTime<Utc>>,
    /// The name of the last backup the schedule started.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_backup_name: String,
    /// When the schedule was last resumed: a paused schedule's missed firings are not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed: Option<DateTime<Utc>>,
    /// The latest firings that made no backup, newest first.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub skipped: Vec<SkippedFiringRecord>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_keeps_unknown_fields() {
        let text = r#"{
            "apiVersion": "velero.io/v1", "kind": "Schedule",
            "metadata": {"name": "nightly", "uid": "u1"},
            "spec": {"schedule": "0 2 * * *", "paused": true,
                     "template": {"includedNamespaces": ["shop"], "ttl": "720h0m0s",
                                  "retention": {"keepLast": 2}},
                     "useOwnerReferencesInBackup": false},
            "status": {"lastBackup": "2026-01-01T02:00:00Z", "lastFired": "2026-01-01T02:00:00Z",
                       "lastBackupName": "nightly-20260101020000",
                       "skipped": [{"at": "2026-01-02T02:00:00Z", "reason": "still running"}]}
        }"#;
        let record: ScheduleRecord = serde_json::from_str(text).unwrap();
        assert_eq!(record.name(), "nightly");
        assert!(record.spec.paused);
        assert_eq!(record.spec.template.included_namespaces, ["shop"]);
        assert_eq!(record.spec.template.extra["retention"]["keepLast"], 2);
        assert_eq!(record.status.skipped[0].reason, "still running");
        assert_eq!(record.status.last_backup_name, "nightly-20260101020000");
        let again: ScheduleRecord =
            serde_json::from_str(&serde_json::to_string(&record).unwrap()).unwrap();
        assert_eq!(again, record);
        assert_eq!(again.spec.extra["useOwnerReferencesInBackup"], false);
    }
}
