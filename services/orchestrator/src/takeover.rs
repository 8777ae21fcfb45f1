//! Taking over a backup a previous orchestrator left running (it died, or lost its
//! leadership): the record it wrote to the storage location as volumes ended says which
//! volumes are not done. Each of those is first re-attached on its node's agent, which keeps an
//! operation whose caller went away running for a grace period and keeps its result after it
//! ends, so a volume whose restic still runs or has finished is taken, not run again. A volume
//! the agent does not have is run: one that never started, or, once, one whose agent lost it
//! (the agent restarted, or the grace period passed). The run then goes on in the one run
//! engine and ends like any other, with the same record: `backup describe` shows one run.
//! Restores are not taken over: recovery ends them as before (see `recovery.rs`).

use std::sync::Arc;

use stowage_proto::v1::{PodVolumeBackup, VolumePhase};

use crate::{
    backup::{BackupWork, is_terminal, namespaces_of},
    deps::Deps,
    engine::{self, RunControl},
    error::{Error, Result},
    parents::Parents,
    ports::{AgentEvents, MirrorSession},
    repositories::{self, Leases, Prepared},
    state::BackupEntry,
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
        format!(
            "backup {} was running when its orchestrator stopped; taking it over: {} of {} \
             volumes unfinished, each re-attached on its agent or else run",
            backup.name,
            unfinished.len(),
            volumes.len()
        ),
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
        // A resumed backup runs its volumes without their pods' hooks (docs/high-availability.md).
        spec_hooks: Vec::new(),
        repositories,
        resumed: true,
    });
    engine::run_volumes(work, unfinished, &deps.limits.run_limits(), control).await;
    Ok(())
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
    let reference = volume.volume.clone().unwrap_or_default();
    let what = format!(
        "{}/{} volume {}",
        reference.namespace, reference.pod_name, reference.volume_name
    );
    let kept = work.deps.agents.attach_backup(node, &operation).await?;
    let was_started = !matches!(
        VolumePhase::try_from(volume.phase),
        Ok(VolumePhase::Pending | VolumePhase::Unspecified) | Err(_)
    );
    match (&kept, was_started) {
        (Some(_), _) => work.entry.log(
            "info",
            format!("{what}: re-attached to its operation on node {node}"),
        ),
        (None, true) => work.entry.log(
            "warning",
            format!(
                "{what}: the agent on node {node} no longer has its operation (it restarted, \
                 or the orchestrator was gone longer than its grace period); running it again"
            ),
        ),
        (None, false) => {}
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use stowage_proto::v1::{
        Backup, BackupOrigin, BackupPhase, BackupStatus, PodVolumeBackup, PodVolumeRef,
    };

    use crate::{
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
        let backup = Backup {
            name: "nightly".into(),
            uid: "u1".into(),
            origin: BackupOrigin::Stowage as i32,
            status: Some(BackupStatus {
                phase: BackupPhase::InProgress as i32,
                volumes: vec![
                    PodVolumeBackup {
                        snapshot_id: "snap-done".into(),
                        ..volume("db", "done", VolumePhase::Completed)
                    },
                    volume("db", "kept", VolumePhase::InProgress),
                    volume("db", "lost", VolumePhase::InProgress),
                    volume("web", "waiting", VolumePhase::Pending),
                ],
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
        world.agents.kept.lock().unwrap().insert(
            "u1-1".into(),
            Script::Complete {
                steps: 3,
                every: Duration::from_secs(5),
            },
        );
    }

    async fn ended(world: &World) -> Backup {
        let entry = world.deps.index.backup("nightly").expect("recovered");
        let mut watch = entry.subscribe();
        loop {
            let phase = watch.borrow_and_update().status.as_ref().map(|s| s.phase);
            if phase.is_some_and(crate::backup::backup_is_final) {
                break;
            }
            watch.changed().await.unwrap();
        }
        world.settle().await;
        entry.get()
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
