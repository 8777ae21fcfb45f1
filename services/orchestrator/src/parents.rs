//! The parent snapshot each volume's backup is given, from the orchestrator's own records (the
//! index, which holds every backup in the storage location): the snapshot of the volume that
//! most recently finished Completed with the same stable identity in the same repository. A
//! failed, cancelled or pending volume has no usable snapshot; a backup being deleted has its
//! snapshots forgotten; another repository (another namespace's, another location's) holds
//! other snapshots even when the identity reads the same. With a parent the agent runs one
//! restic process; without one (or with one forgotten behind our back) it looks the parent up.

use std::collections::HashMap;

use stowage_proto::v1::{Backup, BackupPhase, PodVolumeBackup, VolumePhase};

use crate::state::Index;

/// Where a snapshot can serve as a parent: its repository URL and the volume's stable identity.
type Key = (String, String);

/// The latest completed snapshot of each identity in each repository.
#[derive(Debug, Default)]
pub struct Parents {
    latest: HashMap<Key, Candidate>,
}

#[derive(Debug)]
struct Candidate {
    /// When the volume finished (seconds, nanos); the latest one wins.
    finished: (i64, i32),
    snapshot_id: String,
}

impl Parents {
    /// The parents known from every backup in `index` but `except` (the backup asking), read
    /// in place: a backup holds every volume, and cloning them all per run would be wasted.
    pub fn from_index(index: &Index, except: &str) -> Parents {
        let mut parents = Parents::default();
        for entry in index.backups() {
            entry.read(|backup| {
                if backup.name != except {
                    parents.add(backup);
                }
            });
        }
        parents
    }

    /// Considers every volume of `backup`.
    pub fn add(&mut self, backup: &Backup) {
        let Some(status) = &backup.status else {
            return;
        };
        if status.phase == BackupPhase::Deleting as i32 {
            return;
        }
        let started = status.started.map(|t| (t.seconds, t.nanos));
        for volume in &status.volumes {
            if !usable(volume) {
                continue;
            }
            // A record without the volume's end time (written by an older version) ranks by
            // the backup's start, before any volume that says when it finished after that.
            let Some(finished) = volume.finished.map(|t| (t.seconds, t.nanos)).or(started) else {
                continue;
            };
            let key = (volume.repository.clone(), volume.stable_identity.clone());
            let candidate = Candidate {
                finished,
                snapshot_id: volume.snapshot_id.clone(),
            };
            match self.latest.get_mut(&key) {
                Some(known) if known.finished >= finished => {}
                Some(known) => *known = candidate,
                None => {
                    self.latest.insert(key, candidate);
                }
            }
        }
    }

    /// The parent of a volume with `identity` backed up into `repository`, if any is known.
    pub fn of(&self, repository: &str, identity: &str) -> Option<&str> {
        if repository.is_empty() || identity.is_empty() {
            return None;
        }
        self.latest
            .get(&(repository.to_string(), identity.to_string()))
            .map(|candidate| candidate.snapshot_id.as_str())
    }
}

/// A volume whose snapshot exists and can be found again by repository and identity.
fn usable(volume: &PodVolumeBackup) -> bool {
    volume.phase == VolumePhase::Completed as i32
        && !volume.snapshot_id.is_empty()
        && !volume.repository.is_empty()
        && !volume.stable_identity.is_empty()
}

#[cfg(test)]
mod tests {
    use stowage_proto::{
        prost_types::Timestamp,
        v1::{BackupStatus, PodVolumeRef},
    };

    use super::*;

    const FOO: &str = "s3:http://127.0.0.1:9000/bucket/cluster-1/restic/foo";
    const BAR: &str = "s3:http://127.0.0.1:9000/bucket/cluster-1/restic/bar";
    const IDENTITY: &str = "pvc-uid/4f1c";

    fn volume(repository: &str, phase: VolumePhase, snapshot: &str, at: i64) -> PodVolumeBackup {
        PodVolumeBackup {
            volume: Some(PodVolumeRef {
                namespace: "foo".into(),
                volume_name: "data".into(),
                ..Default::default()
            }),
            repository: repository.into(),
            stable_identity: IDENTITY.into(),
            phase: phase as i32,
            snapshot_id: snapshot.into(),
            finished: Some(Timestamp {
                seconds: at,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    fn backup(phase: BackupPhase, volumes: Vec<PodVolumeBackup>) -> Backup {
        Backup {
            name: "b".into(),
            status: Some(BackupStatus {
                phase: phase as i32,
                started: Some(Timestamp {
                    seconds: 1,
                    nanos: 0,
                }),
                volumes,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A completed backup of one completed volume.
    fn completed(repository: &str, snapshot: &str, at: i64) -> Backup {
        backup(
            BackupPhase::Completed,
            vec![volume(repository, VolumePhase::Completed, snapshot, at)],
        )
    }

    fn parents(backups: &[Backup]) -> Parents {
        let mut parents = Parents::default();
        for backup in backups {
            parents.add(backup);
        }
        parents
    }

    #[test]
    fn the_latest_completed_snapshot_of_the_identity_is_the_parent() {
        let backups = [
            completed(FOO, "aaaa1111", 100),
            completed(FOO, "cccc3333", 300),
            completed(FOO, "bbbb2222", 200),
        ];
        assert_eq!(parents(&backups).of(FOO, IDENTITY), Some("cccc3333"));
        // The order the index lists backups in does not matter.
        let mut reversed = backups.clone();
        reversed.reverse();
        assert_eq!(parents(&reversed).of(FOO, IDENTITY), Some("cccc3333"));
        assert_eq!(parents(&backups).of(FOO, "pvc-uid/other"), None);
    }

    #[test]
    fn failed_cancelled_and_unfinished_volumes_are_never_parents() {
        let backups = [
            completed(FOO, "aaaa1111", 100),
            backup(
                BackupPhase::PartiallyFailed,
                vec![
                    // restic may have printed an id before the volume failed.
                    volume(FOO, VolumePhase::Failed, "ffff0001", 500),
                ],
            ),
            backup(
                BackupPhase::Cancelled,
                vec![volume(FOO, VolumePhase::Cancelled, "ffff0002", 600)],
            ),
            backup(
                BackupPhase::InProgress,
                vec![volume(FOO, VolumePhase::InProgress, "", 700)],
            ),
        ];
        assert_eq!(parents(&backups).of(FOO, IDENTITY), Some("aaaa1111"));
        // A completed volume of a backup that failed as a whole still left its snapshot.
        let mut with_partial = backups.to_vec();
        with_partial.push(backup(
            BackupPhase::PartiallyFailed,
            vec![volume(FOO, VolumePhase::Completed, "dddd4444", 400)],
        ));
        assert_eq!(parents(&with_partial).of(FOO, IDENTITY), Some("dddd4444"));
    }

    #[test]
    fn another_repository_is_never_the_source_even_for_the_same_identity() {
        let backups = [
            completed(FOO, "aaaa1111", 100),
            completed(BAR, "bbbb2222", 900),
        ];
        let parents = parents(&backups);
        assert_eq!(parents.of(FOO, IDENTITY), Some("aaaa1111"));
        assert_eq!(parents.of(BAR, IDENTITY), Some("bbbb2222"));
        assert_eq!(parents.of("", IDENTITY), None);
    }

    #[test]
    fn a_backup_being_deleted_is_never_the_source() {
        let backups = [
            completed(FOO, "aaaa1111", 100),
            backup(
                BackupPhase::Deleting,
                vec![volume(FOO, VolumePhase::Completed, "bbbb2222", 900)],
            ),
        ];
        assert_eq!(parents(&backups).of(FOO, IDENTITY), Some("aaaa1111"));
    }

    #[test]
    fn the_index_answers_without_the_asking_backup_and_forgets_deleted_ones() {
        use tokio_util::sync::CancellationToken;

        use crate::state::Entry;

        let index = Index::default();
        let named = |name: &str, snapshot: &str, at: i64| {
            let mut backup = completed(FOO, snapshot, at);
            backup.name = name.into();
            Entry::new(backup, Vec::new(), CancellationToken::new())
        };
        index.insert_backup("monday", named("monday", "aaaa1111", 100));
        index.insert_backup("tuesday", named("tuesday", "bbbb2222", 200));
        assert_eq!(
            Parents::from_index(&index, "wednesday").of(FOO, IDENTITY),
            Some("bbbb2222")
        );
        assert_eq!(
            Parents::from_index(&index, "tuesday").of(FOO, IDENTITY),
            Some("aaaa1111"),
            "a backup is never its own parent's source"
        );
        // DeleteBackup and expiry remove the backup from the index once its snapshots are
        // forgotten.
        index.remove_backup("tuesday");
        assert_eq!(
            Parents::from_index(&index, "wednesday").of(FOO, IDENTITY),
            Some("aaaa1111")
        );
        index.remove_backup("monday");
        assert_eq!(
            Parents::from_index(&index, "wednesday").of(FOO, IDENTITY),
            None
        );
    }

    #[test]
    fn volumes_without_identity_or_end_time_rank_sensibly() {
        let mut velero = volume(FOO, VolumePhase::Completed, "eeee5555", 900);
        velero.stable_identity.clear();
        let mut old_record = volume(FOO, VolumePhase::Completed, "aaaa1111", 0);
        old_record.finished = None;
        let backups = [
            backup(BackupPhase::Completed, vec![velero]),
            backup(BackupPhase::Completed, vec![old_record]),
        ];
        // Velero's volumes carry no stable identity; the old record ranks by its backup's start.
        assert_eq!(parents(&backups).of(FOO, IDENTITY), Some("aaaa1111"));
        assert_eq!(parents(&backups).of(FOO, ""), None);
    }
}
