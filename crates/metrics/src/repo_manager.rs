//! The repo-manager's state gauges: repositories by phase and the last check and prune of
//! each, read from its repository records at scrape time.

use crate::state::{GaugeFamily, Sample};

/// The last run of one maintenance kind (`check`, `prune`) on a repository.
#[derive(Clone, Debug)]
pub struct MaintenanceState {
    pub kind: &'static str,
    /// Unix time the last run finished; `None` if it never ran.
    pub finished_unix: Option<f64>,
    pub duration_seconds: f64,
    pub succeeded: bool,
}

#[derive(Clone, Debug)]
pub struct RepositoryState {
    pub namespace: String,
    /// `Ready`, `NotReady`, `Failed`.
    pub phase: String,
    pub maintenance: Vec<MaintenanceState>,
}

pub fn families(repositories: &[RepositoryState]) -> Vec<GaugeFamily> {
    let mut phases: Vec<(String, f64)> = ["Ready", "NotReady", "Failed"]
        .iter()
        .map(|phase| (phase.to_string(), 0.0))
        .collect();
    let mut succeeded = Vec::new();
    let mut finished = Vec::new();
    let mut duration = Vec::new();
    for repository in repositories {
        match phases
            .iter_mut()
            .find(|(known, _)| *known == repository.phase)
        {
            Some(entry) => entry.1 += 1.0,
            None => phases.push((repository.phase.clone(), 1.0)),
        }
        for run in &repository.maintenance {
            let Some(finished_unix) = run.finished_unix else {
                continue;
            };
            let labels = vec![
                ("namespace", repository.namespace.clone()),
                ("kind", run.kind.to_string()),
            ];
            succeeded.push(Sample {
                labels: labels.clone(),
                value: if run.succeeded { 1.0 } else { 0.0 },
            });
            finished.push(Sample {
                labels: labels.clone(),
                value: finished_unix,
            });
            duration.push(Sample {
                labels,
                value: run.duration_seconds,
            });
        }
    }
    vec![
        GaugeFamily {
            name: "stowage_repositories",
            help: "Repositories the repo-manager keeps, by phase",
            samples: phases
                .into_iter()
                .map(|(phase, value)| Sample {
                    labels: vec![("phase", phase)],
                    value,
                })
                .collect(),
        },
        GaugeFamily {
            name: "stowage_repository_maintenance_last_succeeded",
            help: "1 when the last run of this maintenance kind on the repository succeeded, 0 when it failed",
            samples: succeeded,
        },
        GaugeFamily {
            name: "stowage_repository_maintenance_last_finished_timestamp_seconds",
            help: "Unix time the last run of this maintenance kind on the repository finished",
            samples: finished,
        },
        GaugeFamily {
            name: "stowage_repository_maintenance_last_duration_seconds",
            help: "How long the last run of this maintenance kind on the repository took",
            samples: duration,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_and_their_last_maintenance_are_exposed() {
        let repositories = vec![
            RepositoryState {
                namespace: "shop".into(),
                phase: "Ready".into(),
                maintenance: vec![
                    MaintenanceState {
                        kind: "check",
                        finished_unix: Some(1_700_000_000.0),
                        duration_seconds: 2.5,
                        succeeded: false,
                    },
                    MaintenanceState {
                        kind: "prune",
                        finished_unix: None,
                        duration_seconds: 0.0,
                        succeeded: false,
                    },
                ],
            },
            RepositoryState {
                namespace: "crm".into(),
                phase: "NotReady".into(),
                maintenance: Vec::new(),
            },
        ];
        let mut registry = prometheus_client::registry::Registry::default();
        crate::state::register(&mut registry, move || families(&repositories));
        let text = crate::encode(&registry);
        for line in [
            r#"stowage_repositories{phase="Ready"} 1"#,
            r#"stowage_repositories{phase="NotReady"} 1"#,
            r#"stowage_repositories{phase="Failed"} 0"#,
            r#"stowage_repository_maintenance_last_succeeded{namespace="shop",kind="check"} 0"#,
            r#"stowage_repository_maintenance_last_duration_seconds{namespace="shop",kind="check"} 2.5"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(
            !text.contains(r#"kind="prune""#),
            "a run that never happened: {text}"
        );
    }
}
