//! The in-memory index of backups and restores: the current state of each behind a watch
//! channel (WatchBackup/WatchRestore subscribe to it), its cancellation token, and the log lines
//! kept with it. The index knows nothing of gRPC handlers or the Kubernetes API.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, RwLock},
};

use stowage_metrics::orchestrator::{RunPhases, VolumeBackupAttempt};
use stowage_proto::{
    prost_types::Timestamp,
    v1::{Backup, LogLine, Restore},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub fn now() -> Timestamp {
    let now = chrono::Utc::now();
    Timestamp {
        seconds: now.timestamp(),
        nanos: now.timestamp_subsec_nanos() as i32,
    }
}

/// One backup or restore: its state, how to stop it, and its log.
pub struct Entry<T> {
    state: watch::Sender<T>,
    pub cancel: CancellationToken,
    logs: Mutex<Vec<LogLine>>,
}

impl<T: Clone> Entry<T> {
    pub fn new(value: T, logs: Vec<LogLine>, cancel: CancellationToken) -> Arc<Entry<T>> {
        Arc::new(Entry {
            state: watch::Sender::new(value),
            cancel,
            logs: Mutex::new(logs),
        })
    }

    pub fn get(&self) -> T {
        self.state.borrow().clone()
    }

    /// Applies `change` and wakes every watcher.
    pub fn update(&self, change: impl FnOnce(&mut T)) -> T {
        self.state.send_modify(change);
        self.get()
    }

    /// Reads part of the state without cloning the rest: a backup holds every volume, and a
    /// clone per volume event made large backups quadratic.
    pub fn read<R>(&self, read: impl FnOnce(&T) -> R) -> R {
        read(&self.state.borrow())
    }

    /// Applies `change` and wakes every watcher, without cloning the new state.
    pub fn modify(&self, change: impl FnOnce(&mut T)) {
        self.state.send_modify(change);
    }

    pub fn subscribe(&self) -> watch::Receiver<T> {
        self.state.subscribe()
    }

    /// Keeps a log line with the backup or restore (GetBackupLogs returns them).
    pub fn log(&self, level: &str, message: impl Into<String>) {
        let message = message.into();
        match level {
            "error" => tracing::error!("{message}"),
            "warning" => tracing::warn!("{message}"),
            _ => tracing::info!("{message}"),
        }
        self.logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(LogLine {
                time: Some(now()),
                level: level.to_string(),
                message,
            });
    }

    pub fn logs(&self) -> Vec<LogLine> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub type BackupEntry = Entry<Backup>;
pub type RestoreEntry = Entry<Restore>;

#[derive(Default)]
pub struct Index {
    backups: RwLock<BTreeMap<String, Arc<BackupEntry>>>,
    restores: RwLock<BTreeMap<String, Arc<RestoreEntry>>>,
}

impl Index {
    pub fn backup(&self, name: &str) -> Option<Arc<BackupEntry>> {
        self.backups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Adds `entry` under `name` unless the name is taken; false when it is.
    pub fn insert_backup(&self, name: &str, entry: Arc<BackupEntry>) -> bool {
        let mut backups = self.backups.write().unwrap_or_else(|e| e.into_inner());
        if backups.contains_key(name) {
            return false;
        }
        backups.insert(name.to_string(), entry);
        true
    }

    pub fn remove_backup(&self, name: &str) {
        self.backups
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    pub fn backups(&self) -> Vec<Arc<BackupEntry>> {
        self.backups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn restore(&self, name: &str) -> Option<Arc<RestoreEntry>> {
        self.restores
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub fn insert_restore(&self, name: &str, entry: Arc<RestoreEntry>) -> bool {
        let mut restores = self.restores.write().unwrap_or_else(|e| e.into_inner());
        if restores.contains_key(name) {
            return false;
        }
        restores.insert(name.to_string(), entry);
        true
    }

    /// Every backup and restore reduced to its phase and its volumes' phases, for the
    /// metrics gauges: a scrape must not clone every volume's paths and messages.
    pub fn phases(&self) -> (Vec<RunPhases>, Vec<RunPhases>) {
        let backups = self
            .backups()
            .iter()
            .map(|entry| {
                entry.read(|backup| {
                    backup
                        .status
                        .as_ref()
                        .map_or_else(RunPhases::default, |status| RunPhases {
                            phase: status.phase,
                            volume_phases: status.volumes.iter().map(|v| v.phase).collect(),
                        })
                })
            })
            .collect();
        let restores = self
            .restores()
            .iter()
            .map(|entry| {
                entry.read(|restore| {
                    restore
                        .status
                        .as_ref()
                        .map_or_else(RunPhases::default, |status| RunPhases {
                            phase: status.phase,
                            volume_phases: status.volumes.iter().map(|v| v.phase).collect(),
                        })
                })
            })
            .collect();
        (backups, restores)
    }

    /// Every ended pod volume of every known backup, reduced to what the per-volume gauges
    /// read (which volume, where, how it ended and when).
    pub fn volume_backup_attempts(&self) -> Vec<VolumeBackupAttempt> {
        let mut attempts = Vec::new();
        for entry in self.backups() {
            entry.read(|backup| {
                let volumes = backup.status.iter().flat_map(|status| &status.volumes);
                for volume in volumes {
                    let Some(finished) = &volume.finished else {
                        continue;
                    };
                    let reference = volume.volume.clone().unwrap_or_default();
                    attempts.push(VolumeBackupAttempt {
                        namespace: reference.namespace,
                        identity: volume.stable_identity.clone(),
                        pod: reference.pod_name,
                        volume: reference.volume_name,
                        node: volume.node.clone(),
                        phase: volume.phase,
                        finished_unix: Some(
                            finished.seconds as f64 + f64::from(finished.nanos) / 1e9,
                        ),
                    });
                }
            });
        }
        attempts
    }

    pub fn restores(&self) -> Vec<Arc<RestoreEntry>> {
        self.restores
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stowage_proto::v1::{BackupStatus, PodVolumeBackup};

    #[tokio::test]
    async fn watchers_see_updates_and_names_are_unique() {
        let index = Index::default();
        let entry = Entry::new(
            Backup {
                name: "a".into(),
                ..Default::default()
            },
            Vec::new(),
            CancellationToken::new(),
        );
        assert!(index.insert_backup("a", entry.clone()));
        assert!(!index.insert_backup("a", entry.clone()));
        let mut watcher = index.backup("a").unwrap().subscribe();
        entry.update(|backup| backup.uid = "u1".into());
        watcher.changed().await.unwrap();
        assert_eq!(watcher.borrow().uid, "u1");
        entry.log("info", "hello");
        assert_eq!(entry.logs()[0].message, "hello");
    }

    #[test]
    fn phases_keep_only_what_the_gauges_count() {
        use stowage_proto::v1::{BackupPhase, VolumePhase};
        let index = Index::default();
        let backup = Backup {
            name: "nightly".into(),
            status: Some(BackupStatus {
                phase: BackupPhase::Completed as i32,
                volumes: vec![PodVolumeBackup {
                    phase: VolumePhase::Completed as i32,
                    error_message: "slow".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        index.insert_backup(
            "nightly",
            Entry::new(backup, Vec::new(), CancellationToken::new()),
        );
        let (backups, restores) = index.phases();
        assert!(restores.is_empty());
        assert_eq!(
            backups,
            [RunPhases {
                phase: BackupPhase::Completed as i32,
                volume_phases: vec![VolumePhase::Completed as i32],
            }]
        );
    }

    #[test]
    fn volume_attempts_are_the_ended_volumes_with_their_identity_and_end() {
        use stowage_proto::v1::{PodVolumeRef, VolumePhase};
        let index = Index::default();
        let volume = |pod: &str, phase: VolumePhase, finished: Option<Timestamp>| PodVolumeBackup {
            volume: Some(PodVolumeRef {
                namespace: "shop".into(),
                pod_name: pod.into(),
                volume_name: "data".into(),
                ..Default::default()
            }),
            node: "node-a".into(),
            stable_identity: format!("pvc-uid/{pod}"),
            phase: phase as i32,
            finished,
            ..Default::default()
        };
        let backup = Backup {
            name: "nightly".into(),
            status: Some(BackupStatus {
                volumes: vec![
                    volume(
                        "db-0",
                        VolumePhase::Completed,
                        Some(Timestamp {
                            seconds: 100,
                            nanos: 500_000_000,
                        }),
                    ),
                    volume("db-1", VolumePhase::InProgress, None),
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        index.insert_backup(
            "nightly",
            Entry::new(backup, Vec::new(), CancellationToken::new()),
        );
        assert_eq!(
            index.volume_backup_attempts(),
            [VolumeBackupAttempt {
                namespace: "shop".into(),
                identity: "pvc-uid/db-0".into(),
                pod: "db-0".into(),
                volume: "data".into(),
                node: "node-a".into(),
                phase: VolumePhase::Completed as i32,
                finished_unix: Some(100.5),
            }]
        );
    }
}
