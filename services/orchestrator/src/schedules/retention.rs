//! A backup's keep policy (`BackupSpec.retention`), applied when the backup ends: the backups
//! of its series that fall out of the policy are deleted whole, through the one deletion path
//! (`lifecycle::delete_backup`: snapshots forgotten, files and mirrors removed). The rules
//! themselves are `stowage_schedule::retention::plan` (restic's, per stable identity).
//!
//! A backup's series: for a schedule's backup, the backups labelled with the same schedule; for
//! a backup made by hand, the hand-made ones (no schedule label) whose volumes' identities are
//! all among its own, so a policy given to one application's backup never deletes another's.
//! Backups Velero wrote are never part of a series.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use stowage_proto::v1::{
    Backup, BackupOrigin, BackupPhase, BackupSpec, PodVolumeBackup, RetentionPolicy, VolumePhase,
};
use stowage_schedule::{Entry, KeepPolicy, Outcome, Plan};
use tracing::Instrument;

use super::{records::to_chrono, schedule_of};
use crate::{backup::backup_is_final, deps::Deps, state::BackupEntry};

/// The keep policy of `retention`; `None` when it has no rule for successful backups (then
/// nothing is deleted, whatever `keep_failed` says).
pub fn keep_policy(retention: Option<&RetentionPolicy>) -> Option<KeepPolicy> {
    let retention = retention?;
    let policy = KeepPolicy {
        last: retention.keep_last,
        hourly: retention.keep_hourly,
        daily: retention.keep_daily,
        weekly: retention.keep_weekly,
        monthly: retention.keep_monthly,
        yearly: retention.keep_yearly,
        failed_last: retention.keep_failed.unwrap_or(1),
    };
    policy.limits_successful().then_some(policy)
}

/// A volume's stable identity; a volume recorded without one is its own history.
fn identity_of(volume: &PodVolumeBackup) -> String {
    if volume.stable_identity.is_empty() {
        let reference = volume.volume.clone().unwrap_or_default();
        format!(
            "{}/{}/{}",
            reference.namespace, reference.pod_name, reference.volume_name
        )
    } else {
        volume.stable_identity.clone()
    }
}

/// The stable identities of a backup's volumes (a backup without volumes has the one empty
/// identity, so such backups form a history of their own).
fn identities(backup: &Backup) -> BTreeSet<String> {
    let volumes = backup
        .status
        .as_ref()
        .map(|s| s.volumes.as_slice())
        .unwrap_or_default();
    if volumes.is_empty() {
        return BTreeSet::from([String::new()]);
    }
    volumes.iter().map(identity_of).collect()
}

/// Whether `candidate` belongs to the series of `backup` (see the module comment).
fn in_series(backup: &Backup, candidate: &Backup) -> bool {
    if candidate.origin == BackupOrigin::Velero as i32 {
        return false;
    }
    match schedule_of(&backup.labels) {
        Some(schedule) => schedule_of(&candidate.labels) == Some(schedule),
        None => {
            schedule_of(&candidate.labels).is_none()
                && identities(candidate).is_subset(&identities(backup))
        }
    }
}

/// The plan's entries for one backup: one per identity.
fn entries(backup: &Backup) -> Vec<Entry> {
    let status = backup.status.clone().unwrap_or_default();
    let started = status
        .started
        .as_ref()
        .and_then(to_chrono)
        .unwrap_or(DateTime::UNIX_EPOCH);
    // A backup left Deleting by a deletion that failed is judged again, so the deletion is
    // retried.
    let finished = backup_is_final(status.phase) || status.phase == BackupPhase::Deleting as i32;
    let outcome_of = |phase: i32| {
        if !finished {
            Outcome::InProgress
        } else if phase == VolumePhase::Completed as i32 {
            Outcome::Succeeded
        } else {
            Outcome::Failed
        }
    };
    if status.volumes.is_empty() {
        let phase = if status.phase == BackupPhase::Completed as i32 {
            VolumePhase::Completed as i32
        } else {
            VolumePhase::Failed as i32
        };
        return vec![Entry {
            backup: backup.name.clone(),
            identity: String::new(),
            started,
            outcome: outcome_of(phase),
        }];
    }
    status
        .volumes
        .iter()
        .map(|volume| Entry {
            backup: backup.name.clone(),
            identity: identity_of(volume),
            started,
            outcome: outcome_of(volume.phase),
        })
        .collect()
}

/// What `policy` does to the series of `backup` among `all` (`backup` itself in its final
/// state, whatever `all` says about it).
pub fn plan(policy: &KeepPolicy, backup: &Backup, all: &[Backup]) -> Plan {
    let mut series: Vec<Entry> = entries(backup);
    for candidate in all {
        if candidate.name != backup.name && in_series(backup, candidate) {
            series.extend(entries(candidate));
        }
    }
    stowage_schedule::retention::plan(policy, &series)
}

/// Applies the keep policy of `backup` (which just ended; `entry` is its record, not yet
/// showing the end) to its series, logging each deletion with the backup. A deletion that
/// fails is logged and left for the next backup's turn; it does not fail this backup.
pub async fn after_backup(deps: &Deps, entry: &BackupEntry, backup: &Backup) {
    let Some(policy) = keep_policy(backup.spec.as_ref().and_then(|s| s.retention.as_ref())) else {
        return;
    };
    if deps.shutdown.is_cancelled() {
        // Deleting is not started on the way out; the next backup of the series does it.
        return;
    }
    let all: Vec<Backup> = deps.index.backups().iter().map(|e| e.get()).collect();
    let plan = plan(&policy, backup, &all);
    if plan.delete.is_empty() {
        entry.log("info", format!("retention ({policy}): nothing to delete"));
        return;
    }
    for deleted in plan.delete {
        let Some(victim) = deps.index.backup(&deleted.backup) else {
            continue;
        };
        let span =
            tracing::info_span!("retention_delete", backup = %deleted.backup, by = %backup.name);
        match crate::lifecycle::delete_backup(deps, &victim)
            .instrument(span)
            .await
        {
            Ok(forgotten) => entry.log(
                "info",
                format!(
                    "retention ({policy}): deleted backup {} ({}), {} snapshot(s) forgotten",
                    deleted.backup,
                    deleted.reason,
                    forgotten.len()
                ),
            ),
            Err(error) => entry.log(
                "warning",
                format!(
                    "retention ({policy}): deleting backup {}: {error}",
                    deleted.backup
                ),
            ),
        }
    }
}

/// What the keep policy in `template` would delete after schedule `schedule`'s next backup,
/// supposing it succeeds at `now` with the volumes of the schedule's newest backup.
pub fn would_delete(
    deps: &Deps,
    schedule: &str,
    template: &BackupSpec,
    now: DateTime<Utc>,
) -> Vec<String> {
    let Some(policy) = keep_policy(template.retention.as_ref()) else {
        return Vec::new();
    };
    let all: Vec<Backup> = deps
        .index
        .backups()
        .iter()
        .map(|e| e.get())
        .filter(|b| schedule_of(&b.labels) == Some(schedule))
        .collect();
    let Some(newest) = all.iter().max_by_key(|b| {
        b.status
            .as_ref()
            .and_then(|s| s.started)
            .map(|t| (t.seconds, t.nanos))
    }) else {
        return Vec::new();
    };
    let mut next = newest.clone();
    next.name = String::new();
    let status = next.status.get_or_insert_with(Default::default);
    // Newer than every backup there is, even when the clock says otherwise.
    let after_newest = status
        .started
        .as_ref()
        .and_then(to_chrono)
        .map(|started| started + chrono::Duration::seconds(1));
    let started = after_newest.map_or(now, |after| after.max(now));
    status.phase = BackupPhase::Completed as i32;
    status.started = Some(super::records::to_timestamp(&started));
    for volume in &mut status.volumes {
        volume.phase = VolumePhase::Completed as i32;
    }
    plan(&policy, &next, &all)
        .delete
        .into_iter()
        .map(|deleted| deleted.backup)
        .filter(|name| !name.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use stowage_proto::v1::{BackupStatus, PodVolumeBackup};

    use super::*;

    fn backup(name: &str, minute: i64, identities: &[&str], phase: BackupPhase) -> Backup {
        let volume_phase = if phase == BackupPhase::Completed {
            VolumePhase::Completed
        } else {
            VolumePhase::Failed
        };
        Backup {
            name: name.into(),
            origin: BackupOrigin::Stowage as i32,
            status: Some(BackupStatus {
                phase: phase as i32,
                started: Some(stowage_proto::prost_types::Timestamp {
                    seconds: 1_767_225_600 + minute * 60,
                    nanos: 0,
                }),
                volumes: identities
                    .iter()
                    .map(|id| PodVolumeBackup {
                        stable_identity: id.to_string(),
                        phase: volume_phase as i32,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn labelled(mut backup: Backup, schedule: &str) -> Backup {
        backup.labels = HashMap::from([(
            stowage_schedule::SCHEDULE_LABEL.to_string(),
            schedule.to_string(),
        )]);
        backup
    }

    fn deleted(plan: Plan) -> Vec<String> {
        let mut names: Vec<String> = plan.delete.into_iter().map(|d| d.backup).collect();
        names.sort();
        names
    }

    fn keep_last(n: u32) -> KeepPolicy {
        keep_policy(Some(&RetentionPolicy {
            keep_last: n,
            ..Default::default()
        }))
        .unwrap()
    }

    #[test]
    fn a_policy_without_a_rule_for_successful_backups_deletes_nothing() {
        assert_eq!(keep_policy(None), None);
        assert_eq!(
            keep_policy(Some(&RetentionPolicy {
                keep_failed: Some(0),
                ..Default::default()
            })),
            None
        );
        assert_eq!(keep_last(2).failed_last, 1, "keep_failed defaults to 1");
    }

    #[test]
    fn a_schedules_policy_sees_only_the_schedules_backups() {
        let ok = BackupPhase::Completed;
        let all = vec![
            labelled(backup("n-1", 1, &["shop/db/data"], ok), "n"),
            labelled(backup("n-2", 2, &["shop/db/data"], ok), "n"),
            labelled(backup("other-1", 0, &["shop/db/data"], ok), "other"),
            backup("by-hand", 0, &["shop/db/data"], ok),
        ];
        let newest = labelled(backup("n-3", 3, &["shop/db/data"], ok), "n");
        assert_eq!(deleted(plan(&keep_last(2), &newest, &all)), ["n-1"]);
    }

    #[test]
    fn a_hand_made_backups_policy_never_deletes_another_applications_backups() {
        let ok = BackupPhase::Completed;
        let mut velero = backup("velero-old", 0, &["shop/db/data"], ok);
        velero.origin = BackupOrigin::Velero as i32;
        let all = vec![
            backup("shop-old", 1, &["shop/db/data"], ok),
            backup("blog-old", 1, &["blog/web/html"], ok),
            // Holds another application's volume too: not this policy's to judge.
            backup("both-old", 1, &["shop/db/data", "blog/web/html"], ok),
            labelled(backup("n-1", 1, &["shop/db/data"], ok), "n"),
            velero,
        ];
        let newest = backup("shop-new", 2, &["shop/db/data"], ok);
        assert_eq!(deleted(plan(&keep_last(1), &newest, &all)), ["shop-old"]);
    }

    #[test]
    fn failed_backups_are_kept_by_their_own_limit() {
        let (ok, failed) = (BackupPhase::Completed, BackupPhase::Failed);
        let all = vec![
            labelled(backup("n-1", 1, &["id"], failed), "n"),
            labelled(backup("n-2", 2, &["id"], failed), "n"),
            labelled(backup("n-3", 3, &["id"], ok), "n"),
        ];
        let newest = labelled(backup("n-4", 4, &["id"], ok), "n");
        // keep-last=1: n-3 goes; the newest failed one (n-2) stays, n-1 goes.
        assert_eq!(deleted(plan(&keep_last(1), &newest, &all)), ["n-1", "n-3"]);
        // A backup whose deletion failed (left Deleting) is deleted again.
        let mut half_deleted = labelled(backup("n-2", 2, &["id"], ok), "n");
        half_deleted.status.as_mut().unwrap().phase = BackupPhase::Deleting as i32;
        assert_eq!(
            deleted(plan(&keep_last(1), &newest, &[half_deleted])),
            ["n-2"]
        );
        // A backup still running is never deleted.
        let mut running = labelled(backup("n-0", 0, &["id"], ok), "n");
        running.status.as_mut().unwrap().phase = BackupPhase::InProgress as i32;
        assert!(!deleted(plan(&keep_last(1), &newest, &[running])).contains(&"n-0".to_string()));
    }
}
