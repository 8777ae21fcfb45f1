//! The orchestrator's state gauges: backups and restores it knows by phase, their pod
//! volumes by phase, and per backed-up volume whether its last backup succeeded and when it
//! last did, read from its in-memory index at scrape time.

use std::collections::BTreeMap;

use stowage_proto::v1::{BackupPhase, RestorePhase, VolumePhase};

use crate::state::{GaugeFamily, Sample, phase_label};

/// A backup's or restore's phase and its volumes' phases: all the gauges need, so a scrape
/// copies no volume paths or messages.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunPhases {
    pub phase: i32,
    pub volume_phases: Vec<i32>,
}

fn by_phase<P: Copy>(
    all: &[P],
    phases: impl Iterator<Item = i32>,
    name: impl Fn(P) -> String,
    of: impl Fn(i32) -> Option<P>,
) -> Vec<Sample> {
    let mut counts: Vec<(String, f64)> = all.iter().map(|p| (name(*p), 0.0)).collect();
    for phase in phases {
        if let Some(label) = of(phase).map(&name)
            && let Some(entry) = counts.iter_mut().find(|(known, _)| *known == label)
        {
            entry.1 += 1.0;
        }
    }
    counts
        .into_iter()
        .map(|(phase, value)| Sample {
            labels: vec![("phase", phase)],
            value,
        })
        .collect()
}

const BACKUP_PHASES: &[BackupPhase] = &[
    BackupPhase::New,
    BackupPhase::InProgress,
    BackupPhase::Completed,
    BackupPhase::PartiallyFailed,
    BackupPhase::Failed,
    BackupPhase::Cancelled,
    BackupPhase::Deleting,
];
const RESTORE_PHASES: &[RestorePhase] = &[
    RestorePhase::New,
    RestorePhase::InProgress,
    RestorePhase::Completed,
    RestorePhase::PartiallyFailed,
    RestorePhase::Failed,
];

fn volume_phases() -> Vec<VolumePhase> {
    (1..32)
        .filter_map(|value| VolumePhase::try_from(value).ok())
        .collect()
}

/// The families for `backups` and `restores` as the orchestrator holds them now.
pub fn families(backups: &[RunPhases], restores: &[RunPhases]) -> Vec<GaugeFamily> {
    let backup_phase = |p: BackupPhase| phase_label(p.as_str_name(), "BACKUP_PHASE_");
    let restore_phase = |p: RestorePhase| phase_label(p.as_str_name(), "RESTORE_PHASE_");
    let volume_phase = |p: VolumePhase| phase_label(p.as_str_name(), "VOLUME_PHASE_");
    let volume_phases = volume_phases();
    let run_phases = |runs: &[RunPhases]| runs.iter().map(|run| run.phase).collect::<Vec<_>>();
    let volume_phases_of = |runs: &[RunPhases]| {
        runs.iter()
            .flat_map(|run| run.volume_phases.iter().copied())
            .collect::<Vec<_>>()
    };
    vec![
        GaugeFamily {
            name: "stowage_orchestrator_backups",
            help: "Backups the orchestrator knows, by phase",
            samples: by_phase(
                BACKUP_PHASES,
                run_phases(backups).into_iter(),
                backup_phase,
                |v| BackupPhase::try_from(v).ok(),
            ),
        },
        GaugeFamily {
            name: "stowage_orchestrator_restores",
            help: "Restores the orchestrator knows, by phase",
            samples: by_phase(
                RESTORE_PHASES,
                run_phases(restores).into_iter(),
                restore_phase,
                |v| RestorePhase::try_from(v).ok(),
            ),
        },
        GaugeFamily {
            name: "stowage_orchestrator_pod_volume_backups",
            help: "Pod-volume backups of the known backups, by phase",
            samples: by_phase(
                &volume_phases,
                volume_phases_of(backups).into_iter(),
                volume_phase,
                |v| VolumePhase::try_from(v).ok(),
            ),
        },
        GaugeFamily {
            name: "stowage_orchestrator_pod_volume_restores",
            help: "Pod-volume restores of the known restores, by phase",
            samples: by_phase(
                &volume_phases,
                volume_phases_of(restores).into_iter(),
                volume_phase,
                |v| VolumePhase::try_from(v).ok(),
            ),
        },
    ]
}

/// One pod volume of one known backup, as the per-volume gauges read it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VolumeBackupAttempt {
    pub namespace: String,
    /// The volume's stable identity (`pvc-uid/…`, `<owner-kind>/<owner>/<volume>`), the same
    /// across pod replacements; empty for records that carry none.
    pub identity: String,
    pub pod: String,
    pub volume: String,
    pub node: String,
    /// A `VolumePhase`; only `Completed` and `Failed` count.
    pub phase: i32,
    /// Unix time the volume's backup ended.
    pub finished_unix: Option<f64>,
}

pub const VOLUME_LAST_BACKUP_SUCCEEDED: &str = "stowage_orchestrator_volume_last_backup_succeeded";
pub const VOLUME_LAST_SUCCESSFUL_BACKUP: &str =
    "stowage_orchestrator_volume_last_successful_backup_timestamp_seconds";

/// Per volume identity among the ended pod-volume backups: whether the newest one succeeded,
/// and when the newest successful one ended (0 when none did, so "no successful backup for a
/// day" also fires for a volume that never had one). Labelled with the namespace, pod, volume
/// and node of the newest attempt, so a replaced pod's volume stays one series instead of
/// leaving its old pod's behind.
pub fn volume_families(attempts: &[VolumeBackupAttempt]) -> Vec<GaugeFamily> {
    struct Latest<'a> {
        newest: &'a VolumeBackupAttempt,
        newest_finished: f64,
        last_success: f64,
    }
    let mut by_identity: BTreeMap<(&str, &str, &str, &str), Latest> = BTreeMap::new();
    for attempt in attempts {
        let succeeded = attempt.phase == VolumePhase::Completed as i32;
        if !succeeded && attempt.phase != VolumePhase::Failed as i32 {
            continue;
        }
        let Some(finished) = attempt.finished_unix else {
            continue;
        };
        // Without an identity the pod and volume names are the best key there is.
        let key = if attempt.identity.is_empty() {
            (
                attempt.namespace.as_str(),
                "",
                attempt.pod.as_str(),
                attempt.volume.as_str(),
            )
        } else {
            (
                attempt.namespace.as_str(),
                attempt.identity.as_str(),
                "",
                "",
            )
        };
        let success = if succeeded { finished } else { 0.0 };
        let latest = by_identity.entry(key).or_insert(Latest {
            newest: attempt,
            newest_finished: finished,
            last_success: success,
        });
        if finished > latest.newest_finished {
            latest.newest = attempt;
            latest.newest_finished = finished;
        }
        latest.last_success = latest.last_success.max(success);
    }
    // Two identities whose newest attempts share a pod and volume (a pod whose volume now
    // names another claim) would be one series twice: keep the newer.
    let mut by_labels: BTreeMap<(&str, &str, &str, &str), &Latest> = BTreeMap::new();
    for latest in by_identity.values() {
        let attempt = latest.newest;
        let labels = (
            attempt.namespace.as_str(),
            attempt.pod.as_str(),
            attempt.volume.as_str(),
            attempt.node.as_str(),
        );
        match by_labels.get(&labels) {
            Some(kept) if kept.newest_finished >= latest.newest_finished => {}
            _ => {
                by_labels.insert(labels, latest);
            }
        }
    }
    let mut succeeded = Vec::new();
    let mut last_success = Vec::new();
    for ((namespace, pod, volume, node), latest) in by_labels {
        let labels = vec![
            ("namespace", namespace.to_string()),
            ("pod", pod.to_string()),
            ("volume", volume.to_string()),
            ("node", node.to_string()),
        ];
        succeeded.push(Sample {
            labels: labels.clone(),
            value: if latest.newest.phase == VolumePhase::Completed as i32 {
                1.0
            } else {
                0.0
            },
        });
        last_success.push(Sample {
            labels,
            value: latest.last_success,
        });
    }
    vec![
        GaugeFamily {
            name: VOLUME_LAST_BACKUP_SUCCEEDED,
            help: "1 when the newest ended backup of this pod volume completed, 0 when it failed",
            samples: succeeded,
        },
        GaugeFamily {
            name: VOLUME_LAST_SUCCESSFUL_BACKUP,
            help: "Unix time the newest completed backup of this pod volume ended; 0 when none did",
            samples: last_success,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(phase: BackupPhase, volumes: &[VolumePhase]) -> RunPhases {
        RunPhases {
            phase: phase as i32,
            volume_phases: volumes.iter().map(|p| *p as i32).collect(),
        }
    }

    #[test]
    fn backups_and_their_volumes_are_counted_by_phase_with_zeroes() {
        let backups = [
            backup(BackupPhase::Completed, &[VolumePhase::Completed]),
            backup(
                BackupPhase::PartiallyFailed,
                &[VolumePhase::Completed, VolumePhase::Failed],
            ),
            backup(BackupPhase::Completed, &[]),
        ];
        let mut registry = prometheus_client::registry::Registry::default();
        crate::state::register(&mut registry, move || families(&backups, &[]));
        let text = crate::encode(&registry);
        for line in [
            r#"stowage_orchestrator_backups{phase="Completed"} 2"#,
            r#"stowage_orchestrator_backups{phase="PartiallyFailed"} 1"#,
            r#"stowage_orchestrator_backups{phase="InProgress"} 0"#,
            r#"stowage_orchestrator_pod_volume_backups{phase="Completed"} 2"#,
            r#"stowage_orchestrator_pod_volume_backups{phase="Failed"} 1"#,
            r#"stowage_orchestrator_restores{phase="Failed"} 0"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    fn attempt(
        identity: &str,
        pod: &str,
        phase: VolumePhase,
        finished: f64,
    ) -> VolumeBackupAttempt {
        VolumeBackupAttempt {
            namespace: "shop".into(),
            identity: identity.into(),
            pod: pod.into(),
            volume: "data".into(),
            node: format!("node-of-{pod}"),
            phase: phase as i32,
            finished_unix: Some(finished),
        }
    }

    #[test]
    fn each_volume_shows_its_newest_result_and_last_success_under_its_newest_pod() {
        let attempts = [
            attempt("pvc-uid/1", "db-0", VolumePhase::Completed, 100.0),
            // The same claim after its pod was replaced: one series, the new pod's labels.
            attempt("pvc-uid/1", "db-0-new", VolumePhase::Failed, 200.0),
            // Never succeeded: last success 0, so a missing-backup alert fires for it too.
            attempt("deployment/web/cache", "web-1", VolumePhase::Failed, 150.0),
            // Neither ended nor counted.
            attempt("pvc-uid/2", "db-1", VolumePhase::InProgress, 300.0),
            attempt("pvc-uid/3", "db-2", VolumePhase::Cancelled, 300.0),
        ];
        let mut registry = prometheus_client::registry::Registry::default();
        crate::state::register(&mut registry, move || volume_families(&attempts));
        let text = crate::encode(&registry);
        for line in [
            r#"stowage_orchestrator_volume_last_backup_succeeded{namespace="shop",pod="db-0-new",volume="data",node="node-of-db-0-new"} 0"#,
            r#"stowage_orchestrator_volume_last_successful_backup_timestamp_seconds{namespace="shop",pod="db-0-new",volume="data",node="node-of-db-0-new"} 100"#,
            r#"stowage_orchestrator_volume_last_backup_succeeded{namespace="shop",pod="web-1",volume="data",node="node-of-web-1"} 0"#,
            r#"stowage_orchestrator_volume_last_successful_backup_timestamp_seconds{namespace="shop",pod="web-1",volume="data",node="node-of-web-1"} 0"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        for absent in [r#"pod="db-0","#, r#"pod="db-1""#, r#"pod="db-2""#] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
    }

    #[test]
    fn a_later_success_clears_the_failure() {
        let attempts = [
            attempt("pvc-uid/1", "db-0", VolumePhase::Failed, 100.0),
            attempt("pvc-uid/1", "db-0", VolumePhase::Completed, 200.0),
        ];
        let families = volume_families(&attempts);
        assert_eq!(families[0].samples.len(), 1);
        assert_eq!(families[0].samples[0].value, 1.0);
        assert_eq!(families[1].samples[0].value, 200.0);
    }
}
