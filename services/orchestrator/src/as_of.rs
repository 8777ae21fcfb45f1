//! Restore as of a time: per volume, the last completed snapshot of the volume's stable
//! identity that finished at or before the time, across every backup in the location,
//! instead of the named backup's own snapshot. Pure: it reads backup records and nothing else.

use stowage_proto::{
    prost_types::Timestamp,
    v1::{Backup, PodVolumeBackup, VolumePhase},
};

use crate::error::{Error, Result};

/// Where one volume's snapshot comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Chosen {
    /// The named backup's volume with `snapshot_id` and `repository` of the chosen snapshot.
    pub volume: PodVolumeBackup,
    /// The backup the snapshot was taken by.
    pub backup: String,
    /// When the chosen snapshot's backup of the volume finished.
    pub finished: Timestamp,
}

/// `namespace/pod/volume`, as a volume of a backup is named to users.
pub fn volume_name(volume: &PodVolumeBackup) -> String {
    let reference = volume.volume.clone().unwrap_or_default();
    format!(
        "{}/{}/{}",
        reference.namespace, reference.pod_name, reference.volume_name
    )
}

/// Whether two backup volumes are the same volume over time: the same stable identity, or,
/// for records without one (Velero's), the same namespace, pod and volume name.
fn same_volume(a: &PodVolumeBackup, b: &PodVolumeBackup) -> bool {
    if !a.stable_identity.is_empty() || !b.stable_identity.is_empty() {
        return a.stable_identity == b.stable_identity;
    }
    volume_name(a) == volume_name(b)
}

fn not_after(time: &Timestamp, limit: &Timestamp) -> bool {
    (time.seconds, time.nanos) <= (limit.seconds, limit.nanos)
}

/// For each of `volumes` (the named backup's), the last completed snapshot of the same
/// volume in `backups` whose backup of the volume finished at or before `as_of`. A volume
/// with none is [`Error::VolumeNotFound`] naming it and the time. Backups that cannot be
/// restored (their repository is gone or unreadable) are not looked at.
pub fn choose(
    volumes: &[PodVolumeBackup],
    backups: &[Backup],
    as_of: &Timestamp,
) -> Result<Vec<Chosen>> {
    volumes
        .iter()
        .map(|wanted| {
            let best = backups
                .iter()
                .filter(|backup| backup.unrestorable_reason.is_empty())
                .flat_map(|backup| {
                    let status = backup.status.as_ref();
                    status
                        .into_iter()
                        .flat_map(|status| &status.volumes)
                        .map(move |volume| (backup, volume))
                })
                .filter(|(_, volume)| {
                    volume.phase == VolumePhase::Completed as i32
                        && !volume.snapshot_id.is_empty()
                        && same_volume(wanted, volume)
                })
                .filter_map(|(backup, volume)| {
                    let finished = volume.finished?;
                    not_after(&finished, as_of).then_some((backup, volume, finished))
                })
                // The latest; a tie (two records of one snapshot) goes to the backup name
                // sorting last, so the choice does not depend on listing order.
                .max_by(|a, b| {
                    (a.2.seconds, a.2.nanos, &a.0.name).cmp(&(b.2.seconds, b.2.nanos, &b.0.name))
                });
            let Some((backup, volume, finished)) = best else {
                return Err(Error::VolumeNotFound(format!(
                    "volume {} has no completed snapshot taken at or before {}",
                    volume_name(wanted),
                    crate::backup::rfc3339(as_of)
                )));
            };
            Ok(Chosen {
                volume: PodVolumeBackup {
                    snapshot_id: volume.snapshot_id.clone(),
                    repository: volume.repository.clone(),
                    finished: Some(finished),
                    ..wanted.clone()
                },
                backup: backup.name.clone(),
                finished,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use stowage_proto::v1::{BackupStatus, PodVolumeRef};

    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp { seconds, nanos: 0 }
    }

    fn volume(pod: &str, identity: &str, snapshot: &str, finished: i64) -> PodVolumeBackup {
        PodVolumeBackup {
            volume: Some(PodVolumeRef {
                namespace: "shop".into(),
                pod_name: pod.into(),
                volume_name: "data".into(),
                ..Default::default()
            }),
            phase: VolumePhase::Completed as i32,
            stable_identity: identity.into(),
            snapshot_id: snapshot.into(),
            repository: format!("repo-of-{snapshot}"),
            finished: Some(at(finished)),
            ..Default::default()
        }
    }

    fn backup(name: &str, volumes: Vec<PodVolumeBackup>) -> Backup {
        Backup {
            name: name.into(),
            status: Some(BackupStatus {
                volumes,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_last_snapshot_of_the_identity_at_or_before_the_time_is_chosen() {
        let backups = [
            backup("monday", vec![volume("db-0", "pvc-uid/a", "aaa1", 100)]),
            // The pod was recreated under another name; its claim, the identity, is the same.
            backup("tuesday", vec![volume("db-x", "pvc-uid/a", "aaa2", 200)]),
            backup("wednesday", vec![volume("db-0", "pvc-uid/a", "aaa3", 300)]),
            backup("other", vec![volume("db-0", "pvc-uid/b", "bbb1", 250)]),
        ];
        let wanted = [volume("db-0", "pvc-uid/a", "aaa3", 300)];
        let chosen = choose(&wanted, &backups, &at(250)).unwrap();
        assert_eq!(chosen[0].backup, "tuesday");
        assert_eq!(chosen[0].volume.snapshot_id, "aaa2");
        assert_eq!(chosen[0].volume.repository, "repo-of-aaa2");
        // The volume is still the named backup's: its pod and name stay.
        assert_eq!(chosen[0].volume.volume.as_ref().unwrap().pod_name, "db-0");
        // Exactly at the time counts as before it.
        let chosen = choose(&wanted, &backups, &at(300)).unwrap();
        assert_eq!(chosen[0].backup, "wednesday");
    }

    #[test]
    fn failed_volumes_and_unrestorable_backups_are_passed_over() {
        let mut failed = volume("db-0", "pvc-uid/a", "aaa2", 200);
        failed.phase = VolumePhase::Failed as i32;
        let mut unreadable = backup("broken", vec![volume("db-0", "pvc-uid/a", "aaa3", 210)]);
        unreadable.unrestorable_reason = "restic repository not found".into();
        let backups = [
            backup("monday", vec![volume("db-0", "pvc-uid/a", "aaa1", 100)]),
            backup("tuesday", vec![failed]),
            unreadable,
        ];
        let chosen = choose(&[volume("db-0", "pvc-uid/a", "x", 1)], &backups, &at(250)).unwrap();
        assert_eq!(chosen[0].backup, "monday");
    }

    #[test]
    fn a_volume_without_a_snapshot_before_the_time_is_not_found_by_name() {
        let backups = [backup(
            "monday",
            vec![volume("db-0", "pvc-uid/a", "aaa1", 100)],
        )];
        let error = choose(
            &[volume("db-0", "pvc-uid/a", "aaa1", 100)],
            &backups,
            &at(99),
        )
        .unwrap_err();
        assert_eq!(error.code(), tonic::Code::NotFound);
        assert_eq!(
            error.to_string(),
            "volume shop/db-0/data has no completed snapshot taken at or before 1970-01-01T00:01:39Z"
        );
    }

    #[test]
    fn records_without_an_identity_match_by_pod_and_volume_name() {
        let backups = [
            backup("velero-1", vec![volume("db-0", "", "vvv1", 100)]),
            backup("velero-2", vec![volume("db-1", "", "vvv2", 150)]),
        ];
        let chosen = choose(&[volume("db-0", "", "vvv9", 400)], &backups, &at(200)).unwrap();
        assert_eq!(chosen[0].volume.snapshot_id, "vvv1");
    }
}
