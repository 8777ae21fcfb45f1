//! The scheduler loop: wakes at the next firing of any schedule (or when one changes), and for
//! each due schedule starts its backup through the same path CreateBackup takes, labelled
//! `velero.io/schedule-name`, named `<schedule>-<yyyymmddhhmmss>`. A schedule never overlaps
//! itself (a firing while its last backup runs is skipped and recorded); firings missed while no
//! orchestrator ran are made up once, by the latest, never as a burst (`Schedule::decide`).
//! It runs until its cancellation token is cancelled, so it can be started and stopped (by
//! winning or losing leadership) without touching anything else.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use stowage_proto::v1::{BackupPhase, CreateBackupRequest, SkippedFiring};
use stowage_schedule::{Decision, SCHEDULE_LABEL, backup_name};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Slot, push_skipped, records::to_timestamp};
use crate::{backup::backup_is_final, deps::Deps};

/// Runs the schedules of `deps.schedules` until `cancel`. It first (re)reads the schedules in
/// the storage location, retrying every `max_sleep` until that works. `max_sleep` also bounds
/// every wait, so a wall clock that jumps is noticed within it.
pub async fn run(deps: Deps, max_sleep: Duration, cancel: CancellationToken) {
    let book = deps.schedules.clone();
    loop {
        match book.load().await {
            Ok(added) => {
                tracing::info!(added, "scheduler started");
                break;
            }
            Err(error) => {
                tracing::warn!(%error, "reading the schedules in the storage location");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(max_sleep) => {}
                }
            }
        }
    }
    loop {
        // Armed before looking, so a change made while firing is not missed.
        let changed = book.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let next = tick(&deps).await;
        let wait = (next - book.now())
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(max_sleep);
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
            () = changed => {}
        }
    }
    tracing::info!("scheduler stopped");
}

/// Fires or skips every due schedule; returns the time of the earliest next firing.
pub async fn tick(deps: &Deps) -> DateTime<Utc> {
    let book = &deps.schedules;
    let mut earliest = DateTime::<Utc>::MAX_UTC;
    for slot in book.slots() {
        if slot.paused() {
            continue;
        }
        let now = book.now();
        let status = slot.schedule.status.clone().unwrap_or_default();
        let running = (!status.last_backup.is_empty())
            .then(|| deps.index.backup(&status.last_backup))
            .flatten()
            .filter(|entry| {
                let phase = entry.read(|b| b.status.as_ref().map_or(0, |s| s.phase));
                !backup_is_final(phase) && phase != BackupPhase::Deleting as i32
            })
            .map(|_| status.last_backup.clone());
        let anchor = slot.anchor();
        let decision = slot.expression.decide(anchor, now, running.is_some());
        let scheduled = match decision {
            Decision::Wait { next } => {
                earliest = earliest.min(next);
                continue;
            }
            Decision::Fire { scheduled, missed } => {
                let span = tracing::info_span!(
                    "schedule_firing",
                    schedule = %slot.schedule.name,
                    scheduled = %scheduled,
                    backup = %backup_name(&slot.schedule.name, scheduled),
                );
                fire(deps, &slot, anchor, scheduled, missed)
                    .instrument(span)
                    .await;
                scheduled
            }
            Decision::SkipOverlap { scheduled, missed } => {
                let running = running.unwrap_or_default();
                let span = tracing::info_span!(
                    "schedule_firing",
                    schedule = %slot.schedule.name,
                    scheduled = %scheduled,
                    skipped = true,
                );
                let _entered = span.enter();
                tracing::info!(%running, "firing skipped: the previous backup still runs");
                let mut skipped = missed_firings(&slot, anchor, scheduled, missed);
                skipped.push(SkippedFiring {
                    at: Some(to_timestamp(&scheduled)),
                    reason: format!("the schedule's previous backup `{running}` was still running"),
                });
                record(deps, &slot, scheduled, None, skipped).await;
                scheduled
            }
        };
        if let Some(next) = slot.expression.next_after(scheduled) {
            earliest = earliest.min(next);
        }
    }
    earliest
}

/// The record of the firings `decide` counted as missed, if any: one entry at the first of
/// them, saying how many were not made up.
fn missed_firings(
    slot: &Slot,
    anchor: DateTime<Utc>,
    scheduled: DateTime<Utc>,
    missed: u64,
) -> Vec<SkippedFiring> {
    if missed == 0 {
        return Vec::new();
    }
    let first = slot.expression.next_after(anchor).unwrap_or(scheduled);
    vec![SkippedFiring {
        at: Some(to_timestamp(&first)),
        reason: format!(
            "{missed} firing(s) from {first} on were missed while no orchestrator ran the \
             schedule; only the latest, at {scheduled}, ran"
        ),
    }]
}

/// Starts the backup of the firing at `scheduled` and records the firing.
async fn fire(
    deps: &Deps,
    slot: &Slot,
    anchor: DateTime<Utc>,
    scheduled: DateTime<Utc>,
    missed: u64,
) {
    let name = &slot.schedule.name;
    let backup = backup_name(name, scheduled);
    let template = slot
        .schedule
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let labels = HashMap::from([(SCHEDULE_LABEL.to_string(), name.clone())]);
    let mut skipped = missed_firings(slot, anchor, scheduled, missed);
    if missed > 0 {
        tracing::info!(
            missed,
            "firings missed while no orchestrator ran; the latest runs"
        );
    }
    let request = CreateBackupRequest {
        name: backup.clone(),
        spec: Some(template),
    };
    let started = match crate::backup::create_labelled(deps, request, labels).await {
        Ok(_) => {
            tracing::info!("schedule fired");
            Some(backup)
        }
        Err(error) => {
            // Recorded as a skipped firing and not retried: the next firing tries again.
            tracing::warn!(%error, "the schedule's backup could not be started");
            skipped.push(SkippedFiring {
                at: Some(to_timestamp(&scheduled)),
                reason: format!("starting backup `{backup}`: {error}"),
            });
            None
        }
    };
    record(deps, slot, scheduled, started, skipped).await;
}

/// Stores the firing at `scheduled`: the backup it started, or the skipped firings (oldest
/// first in `skipped`, shown newest first).
async fn record(
    deps: &Deps,
    slot: &Slot,
    scheduled: DateTime<Utc>,
    started: Option<String>,
    skipped: Vec<SkippedFiring>,
) {
    let name = slot.schedule.name.clone();
    let changed = deps
        .schedules
        .change(&name, |slot| {
            let status = slot.schedule.status.get_or_insert_with(Default::default);
            status.last_fired = Some(to_timestamp(&scheduled));
            if let Some(backup) = started {
                status.last_backup = backup;
            }
            for firing in skipped {
                push_skipped(&mut status.skipped, firing);
            }
        })
        .await;
    if let Some((_, Err(error))) = changed {
        // The firing happened; a restart may repeat it only if its backup name is free, and
        // it is not (the backup is recorded under it).
        tracing::warn!(schedule = %name, %error, "writing the schedule's firing to the storage location");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use stowage_proto::v1::{
        BackupSpec, CreateBackupRequest, CreateScheduleRequest, RetentionPolicy, Schedule,
        ScheduleSpec,
    };
    use tonic::Code;

    use super::*;
    use crate::{
        error::Error,
        schedules::{self, Book},
        testing::{PausedClock, Script, World, limits, pod},
    };

    fn world() -> World {
        let world = World::new(limits());
        world
            .cluster
            .add_pod(pod("shop", "db-0", "node-a", &["data"]));
        world
    }

    fn template(retention: Option<RetentionPolicy>) -> BackupSpec {
        BackupSpec {
            included_namespaces: vec!["shop".into()],
            retention,
            ..Default::default()
        }
    }

    async fn create(world: &World, name: &str, expression: &str, spec: BackupSpec) -> Schedule {
        schedules::create(
            &world.deps,
            CreateScheduleRequest {
                name: name.into(),
                spec: Some(ScheduleSpec {
                    schedule: expression.into(),
                    template: Some(spec),
                    paused: false,
                }),
            },
        )
        .await
        .expect("the schedule is created")
    }

    /// Runs the scheduler for `seconds` of (paused) time, then stops it and lets the backups
    /// it started end.
    async fn run_for(world: &World, seconds: u64) {
        let cancel = CancellationToken::new();
        let scheduler = tokio::spawn(run(
            world.deps.clone(),
            Duration::from_secs(30),
            cancel.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        cancel.cancel();
        scheduler
            .await
            .expect("the scheduler ends without panicking");
        world.settle().await;
    }

    fn backup_names(world: &World) -> Vec<String> {
        let mut names: Vec<String> = world
            .deps
            .index
            .backups()
            .iter()
            .map(|e| e.get().name)
            .collect();
        names.sort();
        names
    }

    fn status(world: &World, name: &str) -> stowage_proto::v1::ScheduleStatus {
        schedules::get(&world.deps, name)
            .unwrap()
            .status
            .unwrap_or_default()
    }

    #[tokio::test(start_paused = true)]
    async fn a_schedule_fires_at_its_times_with_named_and_labelled_backups() {
        let world = world();
        create(&world, "nightly", "@every 20s", template(None)).await;
        run_for(&world, 65).await;
        assert_eq!(
            backup_names(&world),
            [
                "nightly-20260101000020",
                "nightly-20260101000040",
                "nightly-20260101000100"
            ]
        );
        for entry in world.deps.index.backups() {
            let backup = entry.get();
            assert_eq!(backup.labels[SCHEDULE_LABEL], "nightly");
            assert_eq!(
                backup.status.unwrap().phase,
                BackupPhase::Completed as i32,
                "{}",
                backup.name
            );
        }
        // The label is in what the store keeps, so a restart still knows the schedule's backups.
        let stored = world.store.backups.lock().unwrap();
        assert_eq!(
            stored["nightly-20260101000100"].0.labels[SCHEDULE_LABEL],
            "nightly"
        );
        drop(stored);
        let status = status(&world, "nightly");
        assert_eq!(status.last_backup, "nightly-20260101000100");
        assert!(status.skipped.is_empty(), "{:?}", status.skipped);
    }

    #[tokio::test(start_paused = true)]
    async fn a_firing_while_the_last_backup_runs_is_skipped_and_recorded() {
        let world = world();
        // Each backup takes 30 s: the firing 20 s after one starts finds it running.
        world.agents.script(
            "data",
            Script::Complete {
                steps: 3,
                every: Duration::from_secs(10),
            },
        );
        create(&world, "nightly", "@every 20s", template(None)).await;
        run_for(&world, 70).await;
        assert_eq!(
            backup_names(&world),
            ["nightly-20260101000020", "nightly-20260101000100"]
        );
        assert_eq!(
            *world.agents.most_overall.lock().unwrap(),
            1,
            "never two of the schedule's backups at once"
        );
        let skipped = status(&world, "nightly").skipped;
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert_eq!(
            skipped[0].at.as_ref().unwrap().seconds,
            DateTime::parse_from_rfc3339("2026-01-01T00:00:40Z")
                .unwrap()
                .timestamp()
        );
        assert!(
            skipped[0]
                .reason
                .contains("previous backup `nightly-20260101000020` was still running"),
            "{}",
            skipped[0].reason
        );
        // The skip is in the stored record too.
        let records = world.schedule_store.records.lock().unwrap();
        assert_eq!(records["nightly"].status.skipped.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn missed_firings_run_once_on_start_never_as_a_burst() {
        let world = world();
        create(&world, "nightly", "@every 20s", template(None)).await;
        // As if the schedule last fired 100 s before this orchestrator started: four firings
        // (at -80, -60, -40, -20 s) and the one due now passed while none ran.
        let last = world.deps.schedules.now() - chrono::Duration::seconds(100);
        let mut record = world.schedule_store.records.lock().unwrap()["nightly"].clone();
        record.status.last_fired = Some(last);
        record.metadata.creation_timestamp = Some(last - chrono::Duration::seconds(5));
        world
            .schedule_store
            .records
            .lock()
            .unwrap()
            .insert("nightly".into(), record);
        // A fresh orchestrator over the same store.
        let fresh = World::new(limits());
        fresh
            .cluster
            .add_pod(pod("shop", "db-0", "node-a", &["data"]));
        let mut deps = fresh.deps.clone();
        deps.schedules = Arc::new(Book::new(
            Some(world.schedule_store.clone()),
            Arc::new(PausedClock::new()),
        ));
        let fresh = World { deps, ..fresh };
        run_for(&fresh, 5).await;
        assert_eq!(backup_names(&fresh), ["nightly-20260101000000"]);
        let skipped = status(&fresh, "nightly").skipped;
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(
            skipped[0].reason.starts_with("4 firing(s)"),
            "{}",
            skipped[0].reason
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_schedule_makes_no_backup_and_resumes_without_making_up() {
        let world = world();
        create(&world, "nightly", "@every 20s", template(None)).await;
        schedules::set_paused(&world.deps, "nightly", true)
            .await
            .unwrap();
        assert!(status(&world, "nightly").next_firing.is_none());
        run_for(&world, 90).await;
        assert!(
            backup_names(&world).is_empty(),
            "{:?}",
            backup_names(&world)
        );
        // Resumed at 00:01:30: the next firing is 20 s later, nothing runs at once.
        let resumed = schedules::set_paused(&world.deps, "nightly", false)
            .await
            .unwrap();
        assert_eq!(
            resumed.status.unwrap().next_firing.unwrap().seconds,
            DateTime::parse_from_rfc3339("2026-01-01T00:01:50Z")
                .unwrap()
                .timestamp()
        );
        run_for(&world, 25).await;
        assert_eq!(backup_names(&world), ["nightly-20260101000150"]);
    }

    #[tokio::test(start_paused = true)]
    async fn retention_keeps_the_schedules_last_two_and_no_other_backup() {
        let world = world();
        // A backup made by hand of the same volume: not the schedule's to delete.
        crate::backup::create(
            &world.deps,
            CreateBackupRequest {
                name: "by-hand".into(),
                spec: Some(template(None)),
            },
        )
        .await
        .unwrap();
        // It ends a second later, long before the schedule's first firing.
        let keep_last_two = Some(RetentionPolicy {
            keep_last: 2,
            ..Default::default()
        });
        create(&world, "nightly", "@every 20s", template(keep_last_two)).await;
        run_for(&world, 105).await;
        assert_eq!(
            backup_names(&world),
            [
                "by-hand",
                "nightly-20260101000120",
                "nightly-20260101000140"
            ]
        );
        // Deleted through the one deletion path: snapshots forgotten, files removed.
        assert_eq!(world.repo_manager.count("forget"), 3);
        let stored = world.store.backups.lock().unwrap();
        assert!(!stored.contains_key("nightly-20260101000020"));
        assert!(stored.contains_key("by-hand"));
        drop(stored);
        let logs = world
            .deps
            .index
            .backup("nightly-20260101000140")
            .unwrap()
            .logs();
        assert!(
            logs.iter()
                .any(|l| l.message.contains("deleted backup nightly-20260101000100")),
            "{logs:?}"
        );
        // What the next backup would delete: the older of the two kept.
        assert_eq!(
            status(&world, "nightly").would_delete,
            ["nightly-20260101000120"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_backup_made_by_hand_applies_its_keep_policy_to_earlier_hand_made_ones() {
        let world = world();
        world
            .cluster
            .add_pod(pod("blog", "web-0", "node-a", &["html"]));
        let by_hand = |name: &str, namespace: &str, keep_last: u32| CreateBackupRequest {
            name: name.into(),
            spec: Some(BackupSpec {
                included_namespaces: vec![namespace.into()],
                retention: (keep_last > 0).then(|| RetentionPolicy {
                    keep_last,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        for request in [
            by_hand("shop-1", "shop", 0),
            by_hand("blog-1", "blog", 0),
            by_hand("shop-2", "shop", 0),
            by_hand("shop-3", "shop", 2),
        ] {
            crate::backup::create(&world.deps, request).await.unwrap();
            world.settle().await;
        }
        // keep-last=2 over shop's own hand-made backups; blog's is another application's.
        assert_eq!(backup_names(&world), ["blog-1", "shop-2", "shop-3"]);
        assert_eq!(world.repo_manager.count("forget"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn bad_requests_are_refused_naming_what_is_wrong() {
        let world = world();
        let refused = |result: crate::error::Result<Schedule>| result.unwrap_err();
        let request = |name: &str, expression: &str, spec: BackupSpec| CreateScheduleRequest {
            name: name.into(),
            spec: Some(ScheduleSpec {
                schedule: expression.into(),
                template: Some(spec),
                paused: false,
            }),
        };
        let error =
            refused(schedules::create(&world.deps, request("a", "0 2 * *", template(None))).await);
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(error.to_string().contains("`0 2 * *`"), "{error}");
        let error = refused(
            schedules::create(&world.deps, request("a", "@every 5x", template(None))).await,
        );
        assert!(error.to_string().contains("@every 5x"), "{error}");
        let error = refused(
            schedules::create(
                &world.deps,
                request(
                    "a",
                    "@daily",
                    BackupSpec {
                        included_namespaces: vec!["Bad_NS".into()],
                        ..Default::default()
                    },
                ),
            )
            .await,
        );
        assert_eq!(error.code(), Code::InvalidArgument);
        assert!(error.to_string().contains("Bad_NS"), "{error}");
        let long = "a".repeat(49);
        let error =
            refused(schedules::create(&world.deps, request(&long, "@daily", template(None))).await);
        assert!(error.to_string().contains("at most 48"), "{error}");
        let error = refused(
            schedules::create(&world.deps, request("Not_A_Name", "@daily", template(None))).await,
        );
        assert_eq!(error.code(), Code::InvalidArgument);
        create(&world, "nightly", "@daily", template(None)).await;
        let error = refused(
            schedules::create(&world.deps, request("nightly", "@hourly", template(None))).await,
        );
        assert!(matches!(error, Error::ScheduleExists(_)), "{error}");
        assert_eq!(error.code(), Code::AlreadyExists);
        for error in [
            schedules::get(&world.deps, "nope").unwrap_err(),
            schedules::set_paused(&world.deps, "nope", true)
                .await
                .unwrap_err(),
            schedules::delete(&world.deps, "nope").await.unwrap_err(),
        ] {
            assert_eq!(error.code(), Code::NotFound, "{error}");
        }
        assert!(world.schedule_store.records.lock().unwrap().len() == 1);
    }

    #[tokio::test(start_paused = true)]
    async fn schedules_are_found_by_a_fresh_book_and_deleted_from_the_store() {
        let world = world();
        create(&world, "nightly", "0 2 * * *", template(None)).await;
        let fresh = Book::new(
            Some(world.schedule_store.clone()),
            Arc::new(PausedClock::new()),
        );
        assert_eq!(fresh.load().await.unwrap(), 1);
        let slot = fresh.slot("nightly").unwrap();
        assert_eq!(slot.schedule.spec.unwrap().schedule, "0 2 * * *");
        let shown = schedules::get(&world.deps, "nightly").unwrap();
        assert_eq!(
            shown.status.unwrap().next_firing.unwrap().seconds,
            DateTime::parse_from_rfc3339("2026-01-01T02:00:00Z")
                .unwrap()
                .timestamp()
        );
        schedules::delete(&world.deps, "nightly").await.unwrap();
        assert!(world.schedule_store.records.lock().unwrap().is_empty());
        assert!(schedules::list(&world.deps).is_empty());
    }
}
