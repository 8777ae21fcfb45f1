//! Taking over a backup a previous orchestrator left running (it died, or lost its
//! leadership): the record it wrote to the storage location as volumes ended says which
//! volumes are not done. Each of those is first re-attached on its node's agent, which keeps an
//! operation whose caller went away running for a grace period and keeps its result after it
//! ends, so a volume whose restic still runs or has finished is taken, not run again. A volume
//! the agent does not have is run: one that never started, or, once, one whose agent lost it
//! (the agent restarted, or the grace period passed). The run then goes on in the one run
//! engine and ends like any other, with the same record: `backup describe` shows one run.
//! Each pod runs between the hooks still due, as far as the record tells (`run_backup_pods`).
//! Restores are taken over the same way (their volumes re-attached with AttachRestore), both
//! a whole application's and a data-only one; their runner is `restore.rs`'s.

use std::{collections::BTreeMap, sync::Arc};

use stowage_proto::v1::{PodVolumeBackup, PodVolumeRef, PodVolumeRestore, Restore, VolumePhase};
use stowage_velero_format::resources as vf_resources;

use crate::{
    backup::{BackupWork, is_terminal, namespaces_of},
    deps::Deps,
    engine::{self, RunControl},
    error::{Error, Result},
    parents::Parents,
    ports::{AgentEvents, MirrorSession},
    repositories::{self, Leases, Prepared},
    restore::{self, HookedPod, Recreated, RestoreWork, RunParts},
    state::{BackupEntry, Entry},
};

/// The unfinished volumes of a taken-over backup, run to their ends: leases taken again for
/// this orchestrator (the old one's expire on their own), then the engine.
pub(crate) async fn execute_backup(
    deps: &Deps,
    entry: &Arc<BackupEntry>,
    mirrors: &Arc<dyn MirrorSession>,
    leases: &Leases,
    control: &RunControl,
) -> Result<()> {
    let backup = entry.get();
    let volumes = backup
        .status
        .as_ref()
        .map(|status| status.volumes.clone())
        .unwrap_or_default();
    let unfinished: Vec<usize> = volumes
        .iter()
        .enumerate()
        .filter(|(_, volume)| !is_terminal(volume.phase))
        .map(|(index, _)| index)
        .collect();
    entry.log(
        "warning",
        taking_over("backup", &backup.name, unfinished.len(), volumes.len()),
    );
    let namespaces = namespaces_of(unfinished.iter().map(|&i| volumes[i].volume.as_ref()));
    let holder = format!("backup/{}", backup.name);
    let readiness = deps.limits.readiness();
    let repositories = tokio::select! {
        prepared = repositories::prepare(&deps.repo_manager, leases, &namespaces, &holder, &readiness) => prepared,
        () = control.cancel.cancelled() => Prepared::unusable(&namespaces, "the backup was cancelled"),
        () = tokio::time::sleep_until(control.deadline) => {
            Prepared::unusable(&namespaces, &Error::TimedOut { after: control.timeout }.to_string())
        }
    };
    for problem in repositories.problems() {
        entry.log("error", problem.to_string());
    }
    let parents = Parents::from_index(&deps.index, &backup.name);
    let parents = volumes
        .iter()
        .map(|volume| {
            let namespace = volume
                .volume
                .as_ref()
                .map(|r| r.namespace.as_str())
                .unwrap_or_default();
            repositories.access(namespace).ok().and_then(|access| {
                parents
                    .of(&access.url, &volume.stable_identity)
                    .map(str::to_string)
            })
        })
        .collect();
    let work = Arc::new(BackupWork {
        deps: deps.clone(),
        entry: entry.clone(),
        mirrors: mirrors.clone(),
        header: stowage_proto::v1::Backup {
            name: backup.name.clone(),
            uid: backup.uid.clone(),
            ..Default::default()
        },
        parents,
        // A spec that could not be read now was read when the backup started: its hooks are
        // then left out, as the pods' annotations still count.
        spec_hooks: crate::hooks::spec_hooks(
            backup.spec.as_ref().map_or(&[][..], |spec| &spec.hooks),
        )
        .unwrap_or_default(),
        repositories,
        resumed: true,
    });
    run_backup_pods(deps, &work, &volumes, unfinished, control).await;
    Ok(())
}

/// Runs the `unfinished` volumes of a taken-over backup pod by pod, each pod between its
/// hooks as in a backup that was never interrupted, as far as the record tells: a pod whose
/// volumes had all not started gets its pre and post hooks; one whose volumes had started
/// (so its pre hooks ran before the takeover) and whose hooks' results are not recorded (they
/// are, on every volume of the pod, once its post hooks ran) gets its post hooks only; one
/// whose results are recorded, none. A pod that is gone, or was replaced (another uid), runs
/// no hook; its volumes fail on their agents with the reason.
async fn run_backup_pods(
    deps: &Deps,
    work: &Arc<BackupWork>,
    volumes: &[PodVolumeBackup],
    unfinished: Vec<usize>,
    control: &RunControl,
) {
    let slots = engine::Slots::new(&deps.limits.run_limits());
    // The record's volumes by pod, all of them (those that ended say what ran).
    let mut pods: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for (index, volume) in volumes.iter().enumerate() {
        let reference = volume.volume.clone().unwrap_or_default();
        pods.entry((reference.namespace, reference.pod_name))
            .or_default()
            .push(index);
    }
    let unfinished: std::collections::BTreeSet<usize> = unfinished.into_iter().collect();
    let mut without_hooks = Vec::new();
    let mut hooked = Vec::new();
    for ((namespace, name), indexes) in pods {
        let to_run: Vec<usize> = indexes
            .iter()
            .copied()
            .filter(|index| unfinished.contains(index))
            .collect();
        if to_run.is_empty() {
            continue;
        }
        let hooks_recorded = indexes.iter().any(|&i| !volumes[i].hooks.is_empty());
        let started = indexes.iter().any(|&i| {
            !matches!(
                VolumePhase::try_from(volumes[i].phase),
                Ok(VolumePhase::Pending | VolumePhase::Unspecified) | Err(_)
            )
        });
        let recorded_uid = volumes[indexes[0]]
            .volume
            .as_ref()
            .map(|r| r.pod_uid.clone())
            .unwrap_or_default();
        let pod = match (&deps.cluster, hooks_recorded) {
            (Some(cluster), false) => match cluster.pod(&namespace, &name).await {
                Ok(pod) => pod.filter(|pod| {
                    recorded_uid.is_empty() || pod.metadata.uid.as_deref() == Some(&recorded_uid)
                }),
                Err(error) => {
                    work.entry.log(
                        "warning",
                        format!("pod {namespace}/{name}: backup hooks not run: {error}"),
                    );
                    None
                }
            },
            _ => None,
        };
        match (pod, &deps.cluster) {
            (Some(pod), Some(cluster)) => hooked.push((cluster.clone(), pod, to_run, started)),
            _ => without_hooks.extend(to_run),
        }
    }
    let hooked_pods = hooked.iter().map(|(cluster, pod, indexes, started)| {
        crate::backup::run_pod(
            cluster,
            work,
            pod,
            indexes.clone(),
            *started,
            &slots,
            control,
        )
    });
    futures::future::join(
        engine::run_volumes_in(work.clone(), without_hooks, &slots, control),
        futures::future::join_all(hooked_pods),
    )
    .await;
}

/// The events of volume `index`'s operation on its agent when the agent still has it; `None`
/// when the volume is to be run. Says in the backup's log which it was.
pub(crate) async fn reattach_backup(
    work: &BackupWork,
    index: usize,
    node: &str,
    volume: &PodVolumeBackup,
) -> Result<Option<AgentEvents<stowage_proto::v1::BackupVolumeEvent>>> {
    let operation = work.operation_id(index);
    let kept = work.deps.agents.attach_backup(node, &operation).await?;
    let reference = volume.volume.clone().unwrap_or_default();
    log_reattach(&work.entry, &reference, volume.phase, node, kept.is_some());
    Ok(kept)
}

/// Says in a taken-over run's log what became of a volume's operation: re-attached (`kept`),
/// or run again because its agent no longer has it (nothing is said of a volume that had not
/// started: running it is what was to come).
pub(crate) fn log_reattach<T: Clone>(
    entry: &Entry<T>,
    reference: &PodVolumeRef,
    phase: i32,
    node: &str,
    kept: bool,
) {
    let what = format!(
        "{}/{} volume {}",
        reference.namespace, reference.pod_name, reference.volume_name
    );
    let was_started = !matches!(
        VolumePhase::try_from(phase),
        Ok(VolumePhase::Pending | VolumePhase::Unspecified) | Err(_)
    );
    match (kept, was_started) {
        (true, _) => entry.log(
            "info",
            format!("{what}: re-attached to its operation on node {node}"),
        ),
        (false, true) => entry.log(
            "warning",
            format!(
                "{what}: the agent on node {node} no longer has its operation (it restarted, \
                 or the orchestrator was gone longer than its grace period); running it again, \
                 which is safe: restic restore writes the same files into the same volume"
            ),
        ),
        (false, false) => {}
    }
}

/// The log line a taken-over run starts with.
fn taking_over(kind: &str, name: &str, unfinished: usize, total: usize) -> String {
    format!(
        "{kind} {name} was running when its orchestrator stopped; taking it over: {unfinished} \
         of {total} volumes unfinished, each re-attached on its agent or else run"
    )
}

/// The unfinished volumes of a taken-over whole-application restore, run to their ends: its
/// objects were restored before its record was first written, so only volumes are left. A
/// volume that ended stays as recorded; the others wait for their pod (there already, its
/// restore helper waiting), are re-attached or run, and their agent writes the done file the
/// helper waits for. A pod with a post-restore hook gets it once its volumes are back, unless
/// its volumes had all ended before the takeover and the hook's result is recorded.
pub(crate) async fn execute_restore(run: &RunParts<'_>) -> Result<()> {
    let (deps, entry) = (run.deps, run.entry);
    let cluster = deps.cluster.as_ref().ok_or(Error::NoCluster("a restore"))?;
    let restore = entry.get();
    let volumes = restore
        .status
        .as_ref()
        .map(|status| status.volumes.clone())
        .unwrap_or_default();
    let unfinished: Vec<usize> = (0..volumes.len())
        .filter(|&index| !is_terminal(volumes[index].phase))
        .collect();
    entry.log(
        "warning",
        taking_over("restore", &restore.name, unfinished.len(), volumes.len()),
    );
    let repositories = run.repositories(&unfinished).await;
    let hooked = hooked_pods(run, &restore, &volumes).await;
    let work = Arc::new(RestoreWork {
        volumes: run.volumes(repositories, true),
        place: Recreated {
            cluster: cluster.clone(),
        },
    });
    restore::run_by_pod(&work, unfinished, &hooked, run.control).await;
    Ok(())
}

/// The recreated pods of a taken-over restore whose backed-up manifest declares a
/// post-restore hook still to run: one with a volume unfinished, or with all its volumes
/// restored and no hook result recorded. The manifests come from the backup's tarball; when
/// it cannot be read, no hook runs and the log says why.
async fn hooked_pods(
    run: &RunParts<'_>,
    restore: &Restore,
    volumes: &[PodVolumeRestore],
) -> Vec<HookedPod> {
    let backup_name = restore
        .spec
        .as_ref()
        .map(|spec| spec.backup_name.clone())
        .unwrap_or_default();
    let Some(store) = &run.deps.store else {
        return Vec::new();
    };
    let tarball = match store.backup_tarball(&backup_name).await {
        Ok(tarball) => tarball,
        Err(error) => {
            run.entry.log(
                "warning",
                format!(
                    "post-restore hooks not run: the manifests of backup {backup_name} could \
                     not be read: {error}"
                ),
            );
            return Vec::new();
        }
    };
    let created = restore
        .status
        .as_ref()
        .map(|status| status.pods_created.clone())
        .unwrap_or_default();
    // The restore's volumes by recreated pod, with the pod's namespace in the backup.
    let mut pods: BTreeMap<(String, String), (String, Vec<usize>)> = BTreeMap::new();
    for (index, volume) in volumes.iter().enumerate() {
        let reference = volume.volume.clone().unwrap_or_default();
        pods.entry((reference.namespace, reference.pod_name))
            .or_insert_with(|| (volume.source_namespace.clone(), Vec::new()))
            .1
            .push(index);
    }
    let mut hooked = Vec::new();
    for ((namespace, name), (source_namespace, indexes)) in pods {
        if !created.contains(&format!("{namespace}/{name}")) {
            continue;
        }
        let Some(manifest) = tarball.get(vf_resources::PODS, Some(&source_namespace), &name) else {
            continue;
        };
        let annotations = crate::hooks::annotations_of(manifest);
        if !stowage_hooks::declares_restore_exec_hook(&annotations) {
            continue;
        }
        let to_run: Vec<usize> = indexes
            .iter()
            .copied()
            .filter(|&index| !is_terminal(volumes[index].phase))
            .collect();
        let hook_pending = indexes.iter().all(|&index| {
            volumes[index].phase == VolumePhase::Completed as i32 && volumes[index].hooks.is_empty()
        });
        if to_run.is_empty() && !hook_pending {
            continue;
        }
        hooked.push(HookedPod {
            namespace,
            name,
            annotations,
            indexes,
            to_run,
        });
    }
    hooked
}

/// Each volume's name in the backup, for a taken-over data-only restore whose record keeps
/// only where each volume went: found by the volume's snapshot among the backups this
/// orchestrator knows, else the record's own volume name.
pub(crate) fn source_volumes(deps: &Deps, restore: &Restore) -> Vec<String> {
    let mut by_snapshot: BTreeMap<String, String> = BTreeMap::new();
    for entry in deps.index.backups() {
        entry.read(|backup| {
            for volume in backup.status.iter().flat_map(|status| &status.volumes) {
                if !volume.snapshot_id.is_empty() {
                    let name = volume.volume.as_ref().map(|r| r.volume_name.clone());
                    by_snapshot.insert(volume.snapshot_id.clone(), name.unwrap_or_default());
                }
            }
        });
    }
    restore
        .status
        .iter()
        .flat_map(|status| &status.volumes)
        .map(|volume| {
            by_snapshot
                .get(&volume.snapshot_id)
                .cloned()
                .or_else(|| volume.volume.as_ref().map(|r| r.volume_name.clone()))
                .unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use stowage_proto::v1::{
        Backup, BackupOrigin, BackupPhase, BackupStatus, PodVolumeBackup, RestorePhase,
        RestoreStatus,
    };

    use crate::{
        kube::mirror::MirrorKind,
        ports::ClusterPort,
        recovery,
        testing::{Script, World, limits},
    };

    use super::*;

    fn volume(pod: &str, name: &str, phase: VolumePhase) -> PodVolumeBackup {
        PodVolumeBackup {
            volume: Some(PodVolumeRef {
                namespace: "shop".into(),
                pod_name: pod.into(),
                volume_name: name.into(),
                ..Default::default()
            }),
            node: "node-a".into(),
            phase: phase as i32,
            stable_identity: format!("shop/{pod}/{name}"),
            ..Default::default()
        }
    }

    /// A backup its orchestrator left with one volume done, two running (one of which the
    /// agent still has) and one not started.
    fn left_running(world: &World) {
        backup_in_progress(
            world,
            vec![
                PodVolumeBackup {
                    snapshot_id: "snap-done".into(),
                    ..volume("db", "done", VolumePhase::Completed)
                },
                volume("db", "kept", VolumePhase::InProgress),
                volume("db", "lost", VolumePhase::InProgress),
                volume("web", "waiting", VolumePhase::Pending),
            ],
        );
        kept(world, "u1-1");
    }

    /// Backup `nightly` (uid u1) recorded InProgress with `volumes`.
    fn backup_in_progress(world: &World, volumes: Vec<PodVolumeBackup>) {
        let backup = Backup {
            name: "nightly".into(),
            uid: "u1".into(),
            origin: BackupOrigin::Stowage as i32,
            status: Some(BackupStatus {
                phase: BackupPhase::InProgress as i32,
                volumes,
                ..Default::default()
            }),
            ..Default::default()
        };
        world
            .store
            .backups
            .lock()
            .unwrap()
            .insert("nightly".into(), (backup, Vec::new()));
    }

    /// `entry` once `phase` of it is final, with every task of the world ended.
    async fn final_state<T: Clone>(
        world: &World,
        entry: Arc<Entry<T>>,
        phase: fn(&T) -> Option<i32>,
        is_final: fn(i32) -> bool,
    ) -> T {
        let mut watch = entry.subscribe();
        while !phase(&watch.borrow_and_update()).is_some_and(is_final) {
            watch.changed().await.unwrap();
        }
        world.settle().await;
        entry.get()
    }

    async fn ended(world: &World) -> Backup {
        let entry = world.deps.index.backup("nightly").expect("recovered");
        let phase = |backup: &Backup| backup.status.as_ref().map(|s| s.phase);
        final_state(world, entry, phase, crate::backup::backup_is_final).await
    }

    /// The agent still has operation `id`, three progress steps from its end.
    fn kept(world: &World, id: &str) {
        world.agents.kept.lock().unwrap().insert(
            id.into(),
            Script::Complete {
                steps: 3,
                every: Duration::from_secs(5),
            },
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_taken_over_backup_reattaches_what_runs_and_runs_only_the_rest() {
        let world = World::new(limits());
        left_running(&world);
        recovery::load(&world.deps).await.unwrap();
        let backup = ended(&world).await;
        let status = backup.status.unwrap();
        assert_eq!(status.phase, BackupPhase::Completed as i32, "{status:?}");
        let snapshots: Vec<&str> = status
            .volumes
            .iter()
            .map(|v| v.snapshot_id.as_str())
            .collect();
        assert_eq!(snapshots, ["snap-done", "snap-kept", "snap-1", "snap-1"]);
        assert_eq!(
            *world.agents.attached.lock().unwrap(),
            ["attach node-a u1-1"]
        );
        let mut started = world.agents.started.lock().unwrap().clone();
        started.sort();
        assert_eq!(
            started,
            ["backup node-a lost", "backup node-a waiting"],
            "the completed and the re-attached volumes are not run again"
        );
        let stored = world.store.backups.lock().unwrap()["nightly"].clone();
        assert_eq!(
            stored.0.status.unwrap().phase,
            BackupPhase::Completed as i32,
            "the one record ends Completed"
        );
        let log: Vec<String> = stored.1.iter().map(|l| l.message.clone()).collect();
        assert!(
            log.iter()
                .any(|l| l.contains("db volume kept: re-attached")),
            "{log:?}"
        );
        assert!(
            log.iter()
                .any(|l| l.contains("db volume lost: the agent on node node-a no longer has")),
            "{log:?}"
        );
        // The leases were taken again for this orchestrator and released at the end.
        assert!(world.repo_manager.count("acquire") >= 1);
        assert!(world.repo_manager.held().is_empty());
    }

    fn restore_volume(pod: &str, phase: VolumePhase, node: &str) -> PodVolumeRestore {
        PodVolumeRestore {
            volume: Some(PodVolumeRef {
                namespace: "shop".into(),
                pod_name: pod.into(),
                pod_uid: if node.is_empty() {
                    String::new()
                } else {
                    format!("uid-shop-{pod}")
                },
                volume_name: "data".into(),
                ..Default::default()
            }),
            node: node.into(),
            phase: phase as i32,
            snapshot_id: format!("snap-{pod}"),
            source_namespace: "shop".into(),
            ..Default::default()
        }
    }

    /// A restore its orchestrator left with one volume restored, one that failed before the
    /// takeover, two running (one of which the agent still has) and one whose pod was not
    /// yet seen; every pod runs with its restore helper waiting.
    fn restore_left_running(world: &World) {
        for pod in ["db-0", "db-1", "db-2", "db-3", "db-4"] {
            world
                .cluster
                .add_pod(crate::testing::pod("shop", pod, "node-a", &["data"]));
        }
        let restore = Restore {
            name: "back".into(),
            uid: "restore-uid".into(),
            spec: Some(stowage_proto::v1::RestoreSpec {
                backup_name: "nightly".into(),
                ..Default::default()
            }),
            status: Some(RestoreStatus {
                phase: RestorePhase::InProgress as i32,
                volumes: vec![
                    restore_volume("db-0", VolumePhase::InProgress, "node-a"),
                    restore_volume("db-1", VolumePhase::InProgress, "node-a"),
                    restore_volume("db-2", VolumePhase::Pending, ""),
                    restore_volume("db-3", VolumePhase::Completed, "node-a"),
                    PodVolumeRestore {
                        error_message: "restic: wrong password".into(),
                        ..restore_volume("db-4", VolumePhase::Failed, "node-a")
                    },
                ],
                pods_created: ["db-0", "db-1", "db-2", "db-3", "db-4"]
                    .map(|pod| format!("shop/{pod}"))
                    .to_vec(),
                ..Default::default()
            }),
        };
        world
            .store
            .restores
            .lock()
            .unwrap()
            .insert("back".into(), (restore, Vec::new()));
        kept(world, "restore-uid-0");
    }

    async fn restore_ended(world: &World) -> Restore {
        let entry = world.deps.index.restore("back").expect("recovered");
        let phase = |restore: &Restore| restore.status.as_ref().map(|s| s.phase);
        final_state(world, entry, phase, restore::restore_is_final).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_taken_over_restore_reattaches_what_runs_and_runs_only_the_rest() {
        let world = World::new(limits());
        restore_left_running(&world);
        // The mirrors the previous orchestrator wrote, as its record has the volumes.
        let recorded = world.store.restores.lock().unwrap()["back"].0.clone();
        for volume in &recorded.status.as_ref().unwrap().volumes {
            world
                .cluster
                .apply_mirror(
                    MirrorKind::PodVolumeRestore,
                    &restore::volume_mirror(&recorded, volume),
                )
                .await
                .unwrap();
        }
        recovery::load(&world.deps).await.unwrap();
        let restore = restore_ended(&world).await;
        let status = restore.status.unwrap();
        let mut mirrored: Vec<String> = world
            .cluster
            .last_mirrors(MirrorKind::PodVolumeRestore)
            .values()
            .map(|mirror| format!("{} {}", mirror.status["phase"], mirror.status["message"]))
            .collect();
        mirrored.sort();
        assert_eq!(
            mirrored,
            [
                r#""Completed" """#,
                r#""Completed" """#,
                r#""Completed" """#,
                r#""Completed" """#,
                r#""Failed" "restic: wrong password""#
            ],
            "each mirror ends as its volume did, none as `orchestrator restarted`"
        );
        let phases: Vec<i32> = status.volumes.iter().map(|v| v.phase).collect();
        assert_eq!(
            phases,
            [
                VolumePhase::Completed,
                VolumePhase::Completed,
                VolumePhase::Completed,
                VolumePhase::Completed,
                VolumePhase::Failed
            ]
            .map(|p| p as i32),
            "{status:#?}"
        );
        assert_eq!(
            status.volumes[4].error_message, "restic: wrong password",
            "a volume that ended stays as recorded"
        );
        assert_eq!(status.phase, RestorePhase::PartiallyFailed as i32);
        assert_eq!(
            *world.agents.attached.lock().unwrap(),
            ["attach node-a restore-uid-0"]
        );
        let mut sent: Vec<String> = world
            .agents
            .restore_requests
            .lock()
            .unwrap()
            .iter()
            .map(|request| request.operation_id.clone())
            .collect();
        sent.sort();
        assert_eq!(
            sent,
            ["restore-uid-1", "restore-uid-2"],
            "the ended and the re-attached volumes are not run again"
        );
        // The helpers of the restored volumes were released by their agents' done files; only
        // the volume that failed before the takeover has its helper told (again).
        assert_eq!(
            world.agents.abandoned_volumes(),
            [("data".to_string(), "restic: wrong password".to_string())]
        );
        let stored = world.store.restores.lock().unwrap()["back"].clone();
        assert_eq!(
            stored.0.status.unwrap().phase,
            RestorePhase::PartiallyFailed as i32,
            "the one record ends"
        );
        let log: Vec<String> = stored.1.iter().map(|l| l.message.clone()).collect();
        let has = |text: &str| log.iter().any(|line| line.contains(text));
        assert!(
            has("restore back was running when its orchestrator stopped; taking it over: 3 of 5"),
            "{log:#?}"
        );
        assert!(
            has("shop/db-0 volume data: re-attached to its operation on node node-a"),
            "{log:#?}"
        );
        assert!(
            has("shop/db-1 volume data: the agent on node node-a no longer has its operation"),
            "{log:#?}"
        );
        assert_eq!(
            log.iter()
                .filter(|l| l.starts_with("restore ended"))
                .count(),
            1,
            "one end: {log:#?}"
        );
        assert!(world.repo_manager.count("acquire") >= 1);
        assert!(world.repo_manager.held().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_restore_handed_over_at_shutdown_stays_running_in_its_record_with_its_helpers_waiting()
     {
        let world = World::new(limits());
        restore_left_running(&world);
        world.agents.kept.lock().unwrap().insert(
            "restore-uid-0".into(),
            Script::Complete {
                steps: 100,
                every: Duration::from_secs(60),
            },
        );
        recovery::load(&world.deps).await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        world.deps.shutdown.cancel();
        world.settle().await;
        let (stored, log) = world.store.restores.lock().unwrap()["back"].clone();
        let status = stored.status.unwrap();
        assert_eq!(status.phase, RestorePhase::InProgress as i32, "{log:#?}");
        assert_eq!(status.volumes[0].phase, VolumePhase::InProgress as i32);
        assert!(
            world.agents.abandoned_volumes().is_empty(),
            "no helper is told: the next leader takes the restore over"
        );
        assert!(
            !world
                .agents
                .cancelled
                .lock()
                .unwrap()
                .contains(&"restore-uid-0".to_string()),
            "the volume keeps running on its agent"
        );
        assert!(
            log.iter()
                .any(|l| l.message.contains("left running for the next leader")),
            "{log:#?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_taken_over_pod_whose_volumes_started_gets_its_post_hook_only_and_the_rest_both() {
        let world = World::new(limits());
        for (name, volume) in [("db", "kept"), ("web", "waiting")] {
            let mut pod = crate::testing::pod("shop", name, "node-a", &[volume]);
            let annotations = pod
                .metadata
                .annotations
                .get_or_insert_with(Default::default);
            annotations.insert("pre.hook.backup.velero.io/command".into(), "freeze".into());
            annotations.insert("post.hook.backup.velero.io/command".into(), "thaw".into());
            world.cluster.add_pod(pod);
        }
        backup_in_progress(
            &world,
            vec![
                volume("db", "kept", VolumePhase::InProgress),
                volume("web", "waiting", VolumePhase::Pending),
            ],
        );
        kept(&world, "u1-0");
        recovery::load(&world.deps).await.unwrap();
        let status = ended(&world).await.status.unwrap();
        assert_eq!(status.phase, BackupPhase::Completed as i32, "{status:#?}");
        let timeline = world.cluster.timeline.lock().unwrap().clone();
        let of = |pod: &str, volume: &str| -> Vec<String> {
            timeline
                .iter()
                .filter(|event| event.contains(&format!("shop/{pod} ")) || event.ends_with(volume))
                .cloned()
                .collect()
        };
        assert_eq!(
            of("db", "kept"),
            ["exec thaw in shop/db container app"],
            "its pre hook ran before the takeover, its volume is re-attached, not run"
        );
        assert_eq!(
            of("web", "waiting"),
            [
                "exec freeze in shop/web container app",
                "restic waiting",
                "exec thaw in shop/web container app"
            ]
        );
        assert_eq!(status.volumes[0].hooks.len(), 1, "{:?}", status.volumes[0]);
        assert_eq!(status.volumes[1].hooks.len(), 2, "{:?}", status.volumes[1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reattached_volume_that_failed_on_its_agent_fails_with_the_agents_reason() {
        let world = World::new(limits());
        left_running(&world);
        world
            .agents
            .kept
            .lock()
            .unwrap()
            .insert("u1-1".into(), Script::Fail("restic: disk full".into()));
        recovery::load(&world.deps).await.unwrap();
        let status = ended(&world).await.status.unwrap();
        assert_eq!(status.phase, BackupPhase::PartiallyFailed as i32);
        assert_eq!(status.volumes[1].phase, VolumePhase::Failed as i32);
        assert!(
            status.volumes[1].error_message.contains("disk full"),
            "{}",
            status.volumes[1].error_message
        );
        assert!(
            !world
                .agents
                .started
                .lock()
                .unwrap()
                .contains(&"backup node-a kept".to_string()),
            "a failure the agent reports is not retried by running restic again"
        );
    }
}
