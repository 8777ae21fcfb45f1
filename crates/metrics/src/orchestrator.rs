//! The orchestrator's state gauges: backups and restores it knows by phase, and their pod
//! volumes by phase, read from its in-memory index at scrape time.

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
}
