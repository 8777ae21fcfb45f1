//! A schedule as the storage location keeps it (`schedules/<name>/stowage-schedule.json`,
//! shaped as Velero's `Schedule`) and as the API shows it: the translation both ways. The
//! template is Velero's `BackupSpec` spelling (`includedNamespaces`, `ttl: "720h0m0s"`,
//! `hooks.resources`), with stowage's own fields (`timeout`, `excludePaths`, `retention`)
//! beside Velero's.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use stowage_proto::{
    prost_types,
    v1::{BackupSpec, RetentionPolicy, Schedule, ScheduleSpec, ScheduleStatus, SkippedFiring},
};
use stowage_velero_format as vf;

pub fn to_timestamp(time: &DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

pub fn to_chrono(timestamp: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(timestamp.seconds, timestamp.nanos.max(0) as u32)
}

fn go_duration(duration: Option<&prost_types::Duration>) -> Option<String> {
    crate::backup::to_duration(duration).map(vf::format_go_duration)
}

fn proto_duration(text: Option<&str>) -> Option<prost_types::Duration> {
    let duration = vf::parse_go_duration(text?)?;
    Some(prost_types::Duration {
        seconds: duration.as_secs() as i64,
        nanos: duration.subsec_nanos() as i32,
    })
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub fn template_record(spec: &BackupSpec) -> vf::BackupSpec {
    let mut record = vf::BackupSpec {
        included_namespaces: spec.included_namespaces.clone(),
        excluded_namespaces: spec.excluded_namespaces.clone(),
        ttl: go_duration(spec.ttl.as_ref()),
        default_volumes_to_fs_backup: Some(spec.default_volumes_to_fs_backup),
        ..Default::default()
    };
    if !spec.label_selector.is_empty() {
        record.label_selector = Some(vf::LabelSelector {
            match_labels: spec.label_selector.clone().into_iter().collect(),
            ..Default::default()
        });
    }
    let extra = &mut record.extra;
    if !spec.include_resources.is_empty() {
        extra.insert("includedResources".into(), json!(spec.include_resources));
    }
    if !spec.exclude_resources.is_empty() {
        extra.insert("excludedResources".into(), json!(spec.exclude_resources));
    }
    if let Some(timeout) = go_duration(spec.timeout.as_ref()) {
        extra.insert("timeout".into(), json!(timeout));
    }
    if !spec.exclude_paths.is_empty() {
        extra.insert("excludePaths".into(), json!(spec.exclude_paths));
    }
    if let Some(retention) = &spec.retention {
        let mut policy = json!({
            "keepLast": retention.keep_last,
            "keepHourly": retention.keep_hourly,
            "keepDaily": retention.keep_daily,
            "keepWeekly": retention.keep_weekly,
            "keepMonthly": retention.keep_monthly,
            "keepYearly": retention.keep_yearly,
        });
        if let Some(failed) = retention.keep_failed {
            policy["keepFailed"] = json!(failed);
        }
        extra.insert("retention".into(), policy);
    }
    if !spec.hooks.is_empty() {
        extra.insert("hooks".into(), crate::hooks::to_velero(&spec.hooks));
    }
    record
}

/// The template back from its record.
pub fn template_from(record: &vf::BackupSpec) -> BackupSpec {
    let extra = &record.extra;
    let retention = extra.get("retention").map(|policy| {
        let count = |key: &str| {
            policy
                .get(key)
                .and_then(Value::as_u64)
                .map_or(0, |n| n.min(u64::from(u32::MAX)) as u32)
        };
        RetentionPolicy {
            keep_last: count("keepLast"),
            keep_hourly: count("keepHourly"),
            keep_daily: count("keepDaily"),
            keep_weekly: count("keepWeekly"),
            keep_monthly: count("keepMonthly"),
            keep_yearly: count("keepYearly"),
            keep_failed: policy
                .get("keepFailed")
                .and_then(Value::as_u64)
                .map(|n| n.min(u64::from(u32::MAX)) as u32),
        }
    });
    // The schedule keeps its template's hooks as a Backup record's `spec.hooks`: one shape,
    // written and read by `hooks.rs`.
    let hooks = extra
        .get("hooks")
        .map(crate::hooks::from_velero)
        .unwrap_or_default();
    BackupSpec {
        included_namespaces: record.included_namespaces.clone(),
        excluded_namespaces: record.excluded_namespaces.clone(),
        label_selector: record
            .label_selector
            .as_ref()
            .map(|s| s.match_labels.clone().into_iter().collect())
            .unwrap_or_default(),
        default_volumes_to_fs_backup: record
            .default_volumes_to_fs_backup
            .or(record.default_volumes_to_restic)
            .unwrap_or(false),
        ttl: proto_duration(record.ttl.as_deref()),
        timeout: proto_duration(extra.get("timeout").and_then(Value::as_str)),
        include_resources: strings(extra.get("includedResources")),
        exclude_resources: strings(extra.get("excludedResources")),
        exclude_paths: strings(extra.get("excludePaths")),
        retention,
        hooks,
    }
}

/// The record of `schedule` (its computed status fields, `next_firing` and `would_delete`,
/// are not stored).
pub fn to_record(schedule: &Schedule, resumed: Option<DateTime<Utc>>) -> vf::ScheduleRecord {
    let spec = schedule.spec.clone().unwrap_or_default();
    let status = schedule.status.clone().unwrap_or_default();
    let mut record = vf::ScheduleRecord::new(&schedule.name);
    record.metadata.uid = Some(schedule.uid.clone());
    record.metadata.creation_timestamp = schedule.created.as_ref().and_then(to_chrono);
    record.spec.schedule = spec.schedule.clone();
    record.spec.paused = spec.paused;
    record.spec.template = template_record(&spec.template.unwrap_or_default());
    record.status.last_fired = status.last_fired.as_ref().and_then(to_chrono);
    record.status.last_backup_name = status.last_backup.clone();
    record.status.resumed = resumed;
    record.status.skipped = status
        .skipped
        .iter()
        .filter_map(|skipped| {
            Some(vf::SkippedFiringRecord {
                at: to_chrono(skipped.at.as_ref()?)?,
                reason: skipped.reason.clone(),
            })
        })
        .collect();
    record.status.last_skipped = record.status.skipped.first().map(|s| s.at);
    record
}

/// The schedule `record` describes, and when it was last resumed.
pub fn from_record(record: &vf::ScheduleRecord) -> (Schedule, Option<DateTime<Utc>>) {
    let schedule = Schedule {
        name: record.name().to_string(),
        uid: record.metadata.uid.clone().unwrap_or_default(),
        spec: Some(ScheduleSpec {
            schedule: record.spec.schedule.clone(),
            template: Some(template_from(&record.spec.template)),
            paused: record.spec.paused,
        }),
        status: Some(ScheduleStatus {
            last_fired: record.status.last_fired.as_ref().map(to_timestamp),
            last_backup: record.status.last_backup_name.clone(),
            next_firing: None,
            skipped: record
                .status
                .skipped
                .iter()
                .map(|skipped| SkippedFiring {
                    at: Some(to_timestamp(&skipped.at)),
                    reason: skipped.reason.clone(),
                })
                .collect(),
            would_delete: Vec::new(),
        }),
        created: record
            .metadata
            .creation_timestamp
            .as_ref()
            .map(to_timestamp),
    };
    (schedule, record.status.resumed)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use stowage_proto::v1::{BackupResourceHook, ExecHook};

    use super::*;

    fn full_template() -> BackupSpec {
        BackupSpec {
            included_namespaces: vec!["shop".into()],
            excluded_namespaces: vec!["kube-system".into()],
            label_selector: HashMap::from([("app".to_string(), "db".to_string())]),
            default_volumes_to_fs_backup: true,
            ttl: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            timeout: Some(prost_types::Duration {
                seconds: 600,
                nanos: 0,
            }),
            include_resources: vec!["deployments.apps".into()],
            exclude_resources: vec!["secrets".into()],
            exclude_paths: vec!["data:cache/**".into()],
            retention: Some(RetentionPolicy {
                keep_last: 2,
                keep_daily: 7,
                keep_failed: Some(3),
                ..Default::default()
            }),
            hooks: vec![BackupResourceHook {
                name: "freeze".into(),
                included_namespaces: vec!["shop".into()],
                excluded_namespaces: vec![],
                label_selector: HashMap::from([("app".to_string(), "db".to_string())]),
                pre: vec![ExecHook {
                    container: "db".into(),
                    command: vec!["/bin/sh".into(), "-c".into(), "sync".into()],
                    on_error: "Continue".into(),
                    timeout: Some(prost_types::Duration {
                        seconds: 90,
                        nanos: 0,
                    }),
                }],
                post: vec![],
            }],
        }
    }

    #[test]
    fn every_template_field_survives_the_record() {
        let template = full_template();
        let record = template_record(&template);
        // Velero's own spelling where Velero has the field.
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["ttl"], "1h0m0s");
        assert_eq!(json["includedResources"][0], "deployments.apps");
        assert_eq!(
            json["hooks"]["resources"][0]["pre"][0]["exec"]["timeout"],
            "1m30s"
        );
        assert_eq!(json["retention"]["keepLast"], 2);
        let back: vf::BackupSpec = serde_json::from_value(json).unwrap();
        assert_eq!(template_from(&back), template);
    }

    #[test]
    fn a_schedule_survives_its_record() {
        let at = DateTime::parse_from_rfc3339("2026-01-01T02:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let schedule = Schedule {
            name: "nightly".into(),
            uid: "u1".into(),
            spec: Some(ScheduleSpec {
                schedule: "0 2 * * *".into(),
                template: Some(full_template()),
                paused: true,
            }),
            status: Some(ScheduleStatus {
                last_fired: Some(to_timestamp(&at)),
                last_backup: "nightly-20260101020000".into(),
                next_firing: None,
                skipped: vec![SkippedFiring {
                    at: Some(to_timestamp(&at)),
                    reason: "the previous backup still runs".into(),
                }],
                would_delete: vec![],
            }),
            created: Some(to_timestamp(&at)),
        };
        let record = to_record(&schedule, Some(at));
        assert_eq!(record.status.last_skipped, Some(at));
        let (back, resumed) = from_record(&record);
        assert_eq!(back, schedule);
        assert_eq!(resumed, Some(at));
    }
}
