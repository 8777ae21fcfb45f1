//! Schedules with the real processes: the orchestrator fires a schedule's backups itself (the
//! agent's real restic takes them), never two at once, keeps firing after it was restarted
//! (the schedule is read back from the storage location), makes none while paused, and
//! deletes the backups its keep policy drops, snapshots included.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use stowage_e2e::{
    ServiceProcess,
    api::{Client, namespace_spec, wait_backup},
    cli::stowage,
    free_port,
    kube::{EXEC_DIR_ANNOTATION, patch_pod, seed_example},
    restic::{RepositoryRestic, repository_access},
    stack::{Stack, StackOptions},
    start_service,
};
use stowage_proto::v1::{
    Backup, BackupPhase, CreateScheduleRequest, GetScheduleRequest, ListBackupsRequest,
    PauseScheduleRequest, RetentionPolicy, Schedule, ScheduleSpec,
};

const SCHEDULE_LABEL: &str = "velero.io/schedule-name";

/// A stack with Velero's example pod in `shop`, its emptyDir selected and seeded, and the
/// volume's directory as the emulator's exec directory (so a hook runs in it).
async fn stack_with_shop(annotations: serde_json::Value) -> Stack {
    let stack = Stack::start(StackOptions::default()).await;
    let kube = stack.kube_client().await;
    let example = seed_example(&kube, "shop", "node-a", Some("emptydir-volume")).await;
    let volume_dir = stack.kubelets["node-a"]
        .pod(&example.pod_uid())
        .empty_dir("emptydir-volume");
    std::fs::write(volume_dir.join("orders.db"), b"orders").unwrap();
    let mut annotations = annotations;
    annotations[EXEC_DIR_ANNOTATION] = serde_json::json!(volume_dir.display().to_string());
    patch_pod(
        &kube,
        "shop",
        "sample",
        serde_json::json!({"metadata": {"annotations": annotations}}),
    )
    .await;
    stack
}

async fn create_schedule(
    client: &mut Client,
    name: &str,
    expression: &str,
    retention: Option<RetentionPolicy>,
    paused: bool,
) -> Schedule {
    let mut template = namespace_spec("shop");
    template.retention = retention;
    client
        .create_schedule(CreateScheduleRequest {
            name: name.into(),
            spec: Some(ScheduleSpec {
                schedule: expression.into(),
                template: Some(template),
                paused,
            }),
        })
        .await
        .expect("CreateSchedule")
        .into_inner()
}

async fn get_schedule(client: &mut Client, name: &str) -> Schedule {
    client
        .get_schedule(GetScheduleRequest { name: name.into() })
        .await
        .expect("GetSchedule")
        .into_inner()
}

/// The backups labelled as made by schedule `schedule`, by name.
async fn backups_of(client: &mut Client, schedule: &str) -> Vec<Backup> {
    let mut backups: Vec<Backup> = client
        .list_backups(ListBackupsRequest {})
        .await
        .expect("ListBackups")
        .into_inner()
        .backups
        .into_iter()
        .filter(|b| b.labels.get(SCHEDULE_LABEL).map(String::as_str) == Some(schedule))
        .collect();
    backups.sort_by(|a, b| a.name.cmp(&b.name));
    backups
}

/// Polls until `done` says yes about the schedule, or panics after `within` with the last
/// state seen.
async fn schedule_until(
    client: &mut Client,
    name: &str,
    within: Duration,
    what: &str,
    mut done: impl FnMut(&Schedule) -> bool,
) -> Schedule {
    let deadline = Instant::now() + within;
    loop {
        let schedule = get_schedule(client, name).await;
        if done(&schedule) {
            return schedule;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}: {schedule:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn last_backup(schedule: &Schedule) -> String {
    schedule
        .status
        .as_ref()
        .map(|s| s.last_backup.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schedule_fires_without_overlap_survives_a_restart_and_stops_when_paused() {
    // The first backup's pre hook sleeps 30 s, longer than the schedule's period: the firing
    // that comes while it runs must be skipped, not run beside it. Later backups are quick.
    let mut stack = stack_with_shop(serde_json::json!({
        "pre.hook.backup.velero.io/command":
            r#"["/bin/sh", "-c", "if [ ! -e slowed ]; then touch slowed; sleep 30; fi"]"#,
        "pre.hook.backup.velero.io/timeout": "2m",
    }))
    .await;
    let mut client = stack.client().await;
    let created = create_schedule(&mut client, "every20", "@every 20s", None, false).await;
    assert!(created.status.unwrap().next_firing.is_some());

    // The first firing (within 20 s) starts the slow backup.
    let fired = schedule_until(
        &mut client,
        "every20",
        Duration::from_secs(40),
        "a first firing",
        |s| !last_backup(s).is_empty(),
    )
    .await;
    let first = last_backup(&fired);
    assert!(first.starts_with("every20-2"), "{first}");
    // 20 s later it still runs: that firing is skipped and recorded.
    let skipped = schedule_until(
        &mut client,
        "every20",
        Duration::from_secs(40),
        "a skipped firing",
        |s| !s.status.as_ref().unwrap().skipped.is_empty(),
    )
    .await;
    let reason = &skipped.status.as_ref().unwrap().skipped[0].reason;
    assert!(
        reason.contains(&format!("previous backup `{first}` was still running")),
        "{reason}"
    );
    let first_backup = wait_backup(&mut client, &first).await;
    assert_eq!(
        first_backup.status.as_ref().unwrap().phase,
        BackupPhase::Completed as i32,
        "{first_backup:#?}"
    );
    assert_eq!(first_backup.labels[SCHEDULE_LABEL], "every20");
    // The next firing after it ended runs.
    let second = last_backup(
        &schedule_until(
            &mut client,
            "every20",
            Duration::from_secs(40),
            "a second backup",
            |s| last_backup(s) != first,
        )
        .await,
    );
    wait_backup(&mut client, &second).await;
    // Never two at once: each of the schedule's backups started after the one before ended.
    let backups = backups_of(&mut client, "every20").await;
    assert_eq!(backups.len(), 2, "{backups:#?}");
    let ended = backups[0].status.as_ref().unwrap().finished.unwrap();
    let started = backups[1].status.as_ref().unwrap().started.unwrap();
    assert!(
        (started.seconds, started.nanos) > (ended.seconds, ended.nanos),
        "{backups:#?}"
    );

    // A new orchestrator reads the schedule from the storage location and keeps firing it.
    stack.restart_orchestrator().await;
    let mut client = stack.client().await;
    let after_restart = get_schedule(&mut client, "every20").await;
    assert_eq!(after_restart.spec.as_ref().unwrap().schedule, "@every 20s");
    assert_eq!(after_restart.uid, created.uid);
    let third = last_backup(
        &schedule_until(
            &mut client,
            "every20",
            Duration::from_secs(45),
            "a firing after the restart",
            |s| last_backup(s) != second,
        )
        .await,
    );
    let third_backup = wait_backup(&mut client, &third).await;
    assert_eq!(
        third_backup.status.unwrap().phase,
        BackupPhase::Completed as i32
    );

    // Paused, it makes no backup for more than a period.
    client
        .pause_schedule(PauseScheduleRequest {
            name: "every20".into(),
        })
        .await
        .expect("PauseSchedule");
    let before: Vec<String> = backups_of(&mut client, "every20")
        .await
        .into_iter()
        .map(|b| b.name)
        .collect();
    tokio::time::sleep(Duration::from_secs(25)).await;
    let after: Vec<String> = backups_of(&mut client, "every20")
        .await
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(after, before, "a paused schedule made a backup");
    let paused = get_schedule(&mut client, "every20").await;
    assert!(paused.status.unwrap().next_firing.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_last_two_over_five_scheduled_backups_leaves_two_backups_and_their_snapshots() {
    let stack = stack_with_shop(serde_json::json!({})).await;
    let mut client = stack.client().await;
    // @every 5s rather than 20s keeps five firings within half a minute.
    create_schedule(
        &mut client,
        "keep2",
        "@every 5s",
        Some(RetentionPolicy {
            keep_last: 2,
            ..Default::default()
        }),
        false,
    )
    .await;
    // A paused schedule beside it: it must make nothing in all that time.
    create_schedule(&mut client, "idle", "@every 5s", None, true).await;

    let mut seen = Vec::<String>::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.len() < 5 {
        let name = last_backup(&get_schedule(&mut client, "keep2").await);
        if !name.is_empty() && !seen.contains(&name) {
            seen.push(name);
        }
        assert!(Instant::now() < deadline, "five firings: only {seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client
        .pause_schedule(PauseScheduleRequest {
            name: "keep2".into(),
        })
        .await
        .expect("PauseSchedule");
    // Retention runs before a backup's end is shown: once the fifth has ended, it has run.
    let fifth = wait_backup(&mut client, &seen[4]).await;
    assert_eq!(
        fifth.status.as_ref().unwrap().phase,
        BackupPhase::Completed as i32
    );

    let left = backups_of(&mut client, "keep2").await;
    let names: Vec<&str> = left.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(
        names,
        [seen[3].as_str(), seen[4].as_str()],
        "seen: {seen:?}"
    );
    assert!(backups_of(&mut client, "idle").await.is_empty());

    // The repository holds exactly the snapshots of the two backups left.
    let kept: BTreeSet<String> = left
        .iter()
        .flat_map(|b| b.status.as_ref().unwrap().volumes.clone())
        .map(|v| v.snapshot_id)
        .collect();
    assert_eq!(kept.len(), 2, "{left:#?}");
    let repository = RepositoryRestic::new(&repository_access(&stack, "shop").await);
    let ids = repository.snapshot_ids();
    assert_eq!(ids.len(), 2, "restic snapshots: {ids:?}");
    for id in &ids {
        assert!(
            kept.iter().any(|kept| id.starts_with(kept.as_str())),
            "snapshot {id} belongs to none of {kept:?}"
        );
    }
    // The deletions are in the backups' logs.
    let logs = client
        .get_backup_logs(stowage_proto::v1::GetBackupLogsRequest {
            name: seen[4].clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .lines;
    assert!(
        logs.iter()
            .any(|l| l.message.contains(&format!("deleted backup {}", seen[2]))),
        "{logs:#?}"
    );
    // describe's would_delete: after the next backup, the older of the two.
    let schedule = get_schedule(&mut client, "keep2").await;
    assert_eq!(schedule.status.unwrap().would_delete, [seen[3].clone()]);
}

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// An orchestrator with no cluster and no storage location: enough for the schedule calls,
/// whose `@daily` schedules do not fire while the test runs.
async fn bare_orchestrator(dir: &std::path::Path) -> ServiceProcess {
    start_service(
        "stowage-orchestrator",
        "stowage.v1.Orchestrator",
        &[
            "--repo-manager".to_string(),
            format!("http://127.0.0.1:{}", free_port()),
            "--no-kubernetes".to_string(),
        ],
        &Default::default(),
        dir,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_describes_pauses_and_deletes_a_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let server = bare_orchestrator(dir.path()).await;
    let url = server.url.as_str();
    let created = stowage(
        url,
        &[
            "schedule",
            "create",
            "nightly",
            "--schedule",
            "@daily",
            "--include-namespaces",
            "shop",
            "--ttl",
            "72h",
            "--keep-last",
            "3",
            "--keep-daily",
            "7",
        ],
    );
    assert!(created.status.success(), "{}", text(&created));
    assert!(
        text(&created).starts_with("Schedule \"nightly\" created; next firing "),
        "{}",
        text(&created)
    );
    let described = stowage(url, &["schedule", "describe", "nightly"]);
    let out = text(&described);
    assert!(described.status.success(), "{out}");
    assert!(out.contains("Schedule:     @daily"), "{out}");
    assert!(out.contains("Namespaces included:  shop"), "{out}");
    assert!(
        out.contains("Retention:    keep-last=3 keep-daily=7 keep-failed=1"),
        "{out}"
    );
    assert!(out.contains("Next firing:  20"), "{out}");
    let listed = stowage(url, &["schedule", "list", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("-o json");
    assert_eq!(json["schedules"][0]["name"], "nightly");
    assert_eq!(json["schedules"][0]["template"]["ttl"], "72h");
    assert_eq!(json["schedules"][0]["paused"], false);

    let paused = stowage(url, &["schedule", "pause", "nightly"]);
    assert!(paused.status.success(), "{}", text(&paused));
    let table = text(&stowage(url, &["schedule", "get", "nightly"]));
    assert!(table.contains("Paused"), "{table}");
    let resumed = stowage(url, &["schedule", "unpause", "nightly"]);
    assert!(
        text(&resumed).contains("resumed; next firing 20"),
        "{}",
        text(&resumed)
    );

    // Refusals are one sentence naming what is wrong.
    let bad = stowage(url, &["schedule", "create", "bad", "--schedule", "0 2 * *"]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("0 2 * *"), "{}", text(&bad));
    let taken = stowage(
        url,
        &["schedule", "create", "nightly", "--schedule", "@hourly"],
    );
    assert!(!taken.status.success());
    assert!(text(&taken).contains("nightly"), "{}", text(&taken));

    let deleted = stowage(url, &["schedule", "delete", "nightly"]);
    assert!(deleted.status.success(), "{}", text(&deleted));
    let gone = stowage(url, &["schedule", "describe", "nightly"]);
    assert!(!gone.status.success());
    assert!(text(&gone).contains("nightly"), "{}", text(&gone));
}
