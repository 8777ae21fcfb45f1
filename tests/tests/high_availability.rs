//! Two orchestrators and two repo-managers, each pair electing a leader through its Lease in
//! the Kubernetes API emulator, survive what a cluster does to them: the leading orchestrator
//! killed (SIGKILL) in the middle of a backup, the leading repo-manager killed during a prune,
//! and a rolling update of both Deployments during a 20-volume backup. Real processes, real
//! restic; the volume agents' restic is slowed by a wrapper so that a backup is caught mid-way.

use std::{collections::BTreeMap, time::Duration};

use stowage_e2e::{
    agent::wait_running_operations,
    api::{namespace_spec, wait_backup_within},
    ha::{Election, HaOptions, HaStack, ORCHESTRATOR_LEASE, REPO_MANAGER_LEASE, holder},
    kube::seed_pod_with_empty_dirs,
    processes::KillOnDrop,
    restic::{RepositoryRestic, restic_wrapper},
    stack::slow_restic,
};
use stowage_proto::v1::{
    BackupPhase, CreateBackupRequest, EnsureRepositoryRequest, GetRepositoryAccessRequest,
    GetRepositoryRequest, MaintenanceKind, RepositoryPhase, RunMaintenanceRequest, VolumePhase,
};
use tokio::time::Instant;

/// The bound: a standby leads within 20 s of the leader's death. With the harness's
/// timings (lease 4 s) it is a correctness bound, not a benchmark: missing it means the standby
/// did not take the Lease when it expired.
const LEADS_WITHIN: Duration = Duration::from_secs(20);

/// How long a backup of these few tiny volumes may take, takeovers included.
const BACKUP_ENDS_WITHIN: Duration = Duration::from_secs(120);

/// Seeds `count` tiny emptyDir volumes in namespace `namespace`, spread over the stack's nodes
/// (one pod per node, its volumes `v0`, `v1`, …); returns every volume's `pod/volume`.
async fn seed_volumes(stack: &HaStack, namespace: &str, count: usize) -> Vec<String> {
    let kube = stack.kube_client().await;
    let nodes: Vec<String> = stack.kubelets.keys().cloned().collect();
    let mut per_node: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for index in 0..count {
        per_node
            .entry(nodes[index % nodes.len()].as_str())
            .or_default()
            .push(format!("v{index}"));
    }
    let mut seeded = Vec::new();
    for (node, volumes) in per_node {
        let pod_name = format!("app-{node}");
        let pod = seed_pod_with_empty_dirs(&kube, namespace, &pod_name, node, &volumes).await;
        let uid = pod.metadata.uid.clone().expect("a stored pod has a uid");
        for volume in &volumes {
            let dir = stack.kubelets[node].pod(&uid).empty_dir(volume);
            std::fs::write(dir.join("data.txt"), format!("{pod_name}/{volume}"))
                .expect("seeding an emptyDir");
            seeded.push(format!("{pod_name}/{volume}"));
        }
    }
    seeded
}

/// restic run by the test on namespace `namespace`'s repository, with the access the leading
/// repo-manager gives.
async fn repository(stack: &HaStack, namespace: &str) -> RepositoryRestic {
    let access = stack
        .repo_manager_client()
        .await
        .get_repository_access(GetRepositoryAccessRequest {
            namespace: namespace.into(),
        })
        .await
        .expect("GetRepositoryAccess")
        .into_inner();
    RepositoryRestic::new(&access)
}

/// Asserts that `name` completed with every one of `volumes` (`pod/volume`) once, each with a
/// snapshot, and that the repository holds exactly those snapshots: restic ran once per
/// volume.
async fn assert_completed_once(
    stack: &HaStack,
    client: &mut stowage_e2e::api::Client,
    name: &str,
    namespace: &str,
    volumes: &[String],
) {
    let backup = wait_backup_within(client, name, BACKUP_ENDS_WITHIN).await;
    let status = backup.status.clone().unwrap_or_default();
    assert_eq!(
        status.phase,
        BackupPhase::Completed as i32,
        "{status:#?}\n{}",
        stack.logs()
    );
    let mut recorded: Vec<String> = status
        .volumes
        .iter()
        .map(|volume| {
            assert_eq!(volume.phase, VolumePhase::Completed as i32, "{volume:#?}");
            assert!(!volume.snapshot_id.is_empty(), "{volume:#?}");
            let reference = volume.volume.clone().unwrap_or_default();
            format!("{}/{}", reference.pod_name, reference.volume_name)
        })
        .collect();
    recorded.sort();
    let mut expected = volumes.to_vec();
    expected.sort();
    assert_eq!(recorded, expected, "every volume, once");
    let mut snapshots = repository(stack, namespace).await.snapshot_ids();
    snapshots.sort();
    let mut recorded_snapshots: Vec<String> = status
        .volumes
        .iter()
        .map(|volume| volume.snapshot_id.clone())
        .collect();
    recorded_snapshots.sort();
    assert_eq!(
        snapshots, recorded_snapshots,
        "exactly one snapshot per volume, the one recorded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_leading_orchestrator_is_replaced_within_the_bound_and_its_backup_completes_once()
{
    let test_started = Instant::now();
    let wrapper = tempfile::tempdir().unwrap();
    let _cleanup = KillOnDrop(wrapper.path().display().to_string());
    let restic = slow_restic(wrapper.path(), 8);
    let mut stack = HaStack::start(HaOptions {
        agent_args: vec!["--restic-binary".into(), restic.display().to_string()],
        ..HaOptions::default()
    })
    .await;
    let volumes = seed_volumes(&stack, "shop", 2).await;
    let mut client = stack.client().await;
    let created = client
        .create_backup(CreateBackupRequest {
            name: "nightly".into(),
            spec: Some(namespace_spec("shop")),
        })
        .await
        .expect("CreateBackup")
        .into_inner();
    // Killed only once the agent runs both: a volume only sent (its request not yet at the
    // agent) is rightly run afresh, which is not what this test is about.
    wait_running_operations(&stack.agents["node-a"].url, None, volumes.len(), || {
        stack.logs()
    })
    .await;
    drop(client);

    let leader = stack.orchestrators.one_leader(LEADS_WITHIN).await;
    stack.orchestrators.get_mut(&leader).kill();
    let killed_at = Instant::now();
    let new_leader = stack.orchestrators.one_leader(LEADS_WITHIN).await;
    let took = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    assert!(
        took <= LEADS_WITHIN,
        "the standby led {took:?} after the kill"
    );
    assert_eq!(
        holder(&stack.kube_client().await, ORCHESTRATOR_LEASE)
            .await
            .as_deref(),
        Some(new_leader.as_str())
    );

    let mut client = stack.client().await;
    assert_completed_once(&stack, &mut client, "nightly", "shop", &volumes).await;
    let log = stowage_e2e::api::backup_log(&mut client, "nightly").await;
    assert_eq!(
        log.matches("re-attached to its operation on node node-a")
            .count(),
        volumes.len(),
        "both volumes ran on the agent when the leader died, and both were re-attached:\n{log}"
    );
    assert!(!log.contains("running it again"), "{log}");

    // What an operator sees: one backup, the one created, with both volumes once.
    let listed = stack.cli(&["backup", "get"]);
    let listed_text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{listed:?}");
    assert_eq!(
        listed_text.matches("nightly").count(),
        1,
        "one run listed:\n{listed_text}"
    );
    let described = stack.cli(&["backup", "describe", "nightly", "--details"]);
    let text = String::from_utf8_lossy(&described.stdout);
    assert!(described.status.success(), "{described:?}");
    assert!(text.contains(&created.uid), "{text}");
    assert!(text.contains("Completed"), "{text}");
    for volume in &volumes {
        assert_eq!(
            text.matches(&format!("shop/{volume}")).count(),
            1,
            "{volume} once:\n{text}"
        );
    }
    eprintln!(
        "the standby led {took:?} after the kill; the test took {:?}",
        test_started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repo_manager_killed_mid_prune_is_replaced_and_the_prune_runs_again_without_a_stale_lock()
{
    let test_started = Instant::now();
    let wrapper_dir = tempfile::tempdir().unwrap();
    let _cleanup = KillOnDrop(wrapper_dir.path().display().to_string());
    let marker = wrapper_dir.path().join("first-prune.pids");
    // The first prune's restic is frozen (SIGSTOP) once its exclusive lock is in the
    // repository, as a pod frozen mid-prune would be; every later prune is restic's own.
    // restic saves a file as `<id>-tmp-…` and renames it to its 64-hex id: only the
    // renamed file is a lock (`restic list locks` skips the other), so the wrapper waits
    // for that one.
    let wrapper = restic_wrapper(
        wrapper_dir.path(),
        "restic",
        &format!(
            "case \" $* \" in *\" prune \"*) if [ ! -f {marker} ]; then\n\
             restic \"$@\" & pid=$!\n\
             while kill -0 $pid 2>/dev/null && ! ls \"$RESTIC_REPOSITORY/locks\" 2>/dev/null | grep -Eq '^[0-9a-f]{{64}}$'; do sleep 0.01; done\n\
             kill -STOP $pid\n\
             echo \"$pid $$\" > {marker}\n\
             wait $pid; exit $?\n\
             fi;; esac\nexec restic \"$@\"\n",
            marker = marker.display()
        ),
    );
    let mut stack = HaStack::start(HaOptions {
        repo_manager_args: vec![
            "--restic-binary".into(),
            wrapper.display().to_string(),
            "--scheduler-tick".into(),
            "1s".into(),
            "--stale-lock-age".into(),
            "1s".into(),
        ],
        orchestrators: Vec::new(),
        ..HaOptions::default()
    })
    .await;
    let mut client = stack.repo_manager_client().await;
    let ensured = client
        .ensure_repository(EnsureRepositoryRequest {
            namespace: "shop".into(),
        })
        .await
        .expect("EnsureRepository")
        .into_inner();
    assert_eq!(ensured.phase, RepositoryPhase::Ready as i32, "{ensured:?}");
    let restic = repository(&stack, "shop").await;
    let prune = tokio::spawn({
        let mut client = client.clone();
        async move {
            client
                .run_maintenance(RunMaintenanceRequest {
                    namespace: "shop".into(),
                    kind: MaintenanceKind::Prune as i32,
                })
                .await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "the prune never started\n{}",
            stack.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(restic.locks().len(), 1, "the running prune holds its lock");

    // The leader's pod dies, its restic with it: the lock stays behind.
    let leader = stack.repo_managers.one_leader(LEADS_WITHIN).await;
    stack.repo_managers.get_mut(&leader).kill();
    let killed_at = Instant::now();
    let pids = std::fs::read_to_string(&marker).unwrap();
    stowage_e2e::processes::kill(
        &pids
            .split_whitespace()
            .map(|pid| pid.parse().unwrap())
            .collect::<Vec<u32>>(),
    );
    let refused = prune.await.expect("the prune call's task");
    assert!(
        refused.is_err(),
        "the killed prune never answered: {refused:?}"
    );
    assert_eq!(restic.locks().len(), 1, "the killed restic's lock stays");

    let new_leader = stack.repo_managers.one_leader(LEADS_WITHIN).await;
    let took = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    assert_eq!(
        holder(&stack.kube_client().await, REPO_MANAGER_LEASE)
            .await
            .as_deref(),
        Some(new_leader.as_str())
    );
    // The new leader records the prune as interrupted and runs it again, at its scheduler's
    // next tick, to its end.
    let mut client = stack.repo_manager_client().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let rerun = loop {
        let prune = client
            .get_repository(GetRepositoryRequest {
                namespace: "shop".into(),
            })
            .await
            .expect("GetRepository")
            .into_inner()
            .prune
            .unwrap_or_default();
        if prune.last_succeeded {
            break prune;
        }
        assert!(
            Instant::now() < deadline,
            "the interrupted prune did not run again: {prune:?}\n{}",
            stack.repo_managers.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let new_log = stack.repo_managers.get(&new_leader).log();
    assert!(
        new_log.contains("maintenance was interrupted when the previous repo-manager stopped"),
        "the new leader says why the prune ran again:\n{new_log}"
    );
    assert!(rerun.last_error.is_empty(), "{rerun:?}");
    assert!(restic.locks().is_empty(), "no stale lock left");

    // The next prune, asked for, runs and succeeds.
    let next = client
        .run_maintenance(RunMaintenanceRequest {
            namespace: "shop".into(),
            kind: MaintenanceKind::Prune as i32,
        })
        .await
        .expect("the next prune")
        .into_inner();
    assert!(next.succeeded, "{next:?}");
    assert!(restic.locks().is_empty(), "no lock left by the next prune");
    eprintln!(
        "the standby led {took:?} after the kill; the test took {:?}",
        test_started.elapsed()
    );
}

/// One step of a Deployment controller's rolling update with maxSurge 1 and maxUnavailable 0:
/// a new replica starts, and once it is ready (its process-wide health, which the readiness
/// probe asks: a standby is ready too, so the rollout proceeds while the Lease is another's) an
/// old one is stopped (SIGTERM, as the kubelet does); then the service has one leader again,
/// routed to by the Service.
async fn roll_one(
    stack: &mut HaStack,
    orchestrators: bool,
    new: &str,
    old: &str,
    timeline: &mut Vec<String>,
    started: Instant,
) {
    if orchestrators {
        stack.add_orchestrator(new).await;
    } else {
        stack.add_repo_manager(new).await;
    }
    let replicas = if orchestrators {
        &mut stack.orchestrators
    } else {
        &mut stack.repo_managers
    };
    replicas.wait_ready(new, Duration::from_secs(30)).await;
    let status = replicas.get_mut(old).stop(Duration::from_secs(30));
    assert!(
        status.is_some_and(|status| status.success()),
        "{old} stopped cleanly on SIGTERM: {status:?}\n{}",
        replicas.logs()
    );
    let leader = replicas.one_leader(LEADS_WITHIN).await;
    timeline.push(format!(
        "{:?}: {new} up, {old} stopped, {leader} leads",
        started.elapsed()
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_update_of_both_deployments_during_a_20_volume_backup_loses_no_volume() {
    let started = Instant::now();
    let wrapper = tempfile::tempdir().unwrap();
    let _cleanup = KillOnDrop(wrapper.path().display().to_string());
    let restic = slow_restic(wrapper.path(), 4);
    let mut stack = HaStack::start(HaOptions {
        agent_nodes: vec!["node-a".into(), "node-b".into(), "node-c".into()],
        agent_args: vec!["--restic-binary".into(), restic.display().to_string()],
        ..HaOptions::default()
    })
    .await;
    let volumes = seed_volumes(&stack, "shop", 20).await;
    let mut client = stack.client().await;
    client
        .create_backup(CreateBackupRequest {
            name: "nightly".into(),
            spec: Some(namespace_spec("shop")),
        })
        .await
        .expect("CreateBackup");
    wait_running_operations(&stack.agents["node-a"].url, None, 1, || stack.logs()).await;
    drop(client);

    // Both Deployments roll at once, one pod at a time each, the leaders among the old pods.
    let mut timeline = vec![format!("{:?}: backup running", started.elapsed())];
    let first_orchestrator = stack.orchestrators.one_leader(LEADS_WITHIN).await;
    let second_orchestrator = other_old(&stack.orchestrators.replicas, &first_orchestrator);
    let first_repo_manager = stack.repo_managers.one_leader(LEADS_WITHIN).await;
    let second_repo_manager = other_old(&stack.repo_managers.replicas, &first_repo_manager);
    roll_one(
        &mut stack,
        true,
        "orchestrator-new-1",
        &first_orchestrator,
        &mut timeline,
        started,
    )
    .await;
    roll_one(
        &mut stack,
        false,
        "repo-manager-new-1",
        &first_repo_manager,
        &mut timeline,
        started,
    )
    .await;
    roll_one(
        &mut stack,
        true,
        "orchestrator-new-2",
        &second_orchestrator,
        &mut timeline,
        started,
    )
    .await;
    roll_one(
        &mut stack,
        false,
        "repo-manager-new-2",
        &second_repo_manager,
        &mut timeline,
        started,
    )
    .await;

    let mut client = stack.client().await;
    assert_completed_once(&stack, &mut client, "nightly", "shop", &volumes).await;
    timeline.push(format!("{:?}: backup completed", started.elapsed()));
    eprintln!("{}", timeline.join("\n"));
    // The leading orchestrator went first, with the backup running: it was handed over.
    let log = stowage_e2e::api::backup_log(&mut client, "nightly").await;
    assert!(log.contains("taking it over"), "{log}");
}

/// The identity of the old replica other than `identity`.
fn other_old(replicas: &[stowage_e2e::ha::Replica], identity: &str) -> String {
    replicas
        .iter()
        .find(|replica| replica.identity != identity)
        .expect("two replicas")
        .identity
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_default_timings_standbys_lead_within_20_s_of_their_leaders_death() {
    // The binaries' defaults (lease 15 s, renew deadline 10 s, retry 2 s): a standby takes the
    // Lease once it expires, at most 15 s after the dead leader's last renewal, plus the random
    // pause of at most 1 s before it claims it.
    let mut stack = HaStack::start(HaOptions {
        election: Election::DEFAULT,
        ..HaOptions::default()
    })
    .await;
    let orchestrator = stack.orchestrators.one_leader(LEADS_WITHIN).await;
    let repo_manager = stack.repo_managers.one_leader(LEADS_WITHIN).await;
    // Both leaders die at once, as when their node is lost.
    stack.orchestrators.get_mut(&orchestrator).kill();
    stack.repo_managers.get_mut(&repo_manager).kill();
    let killed_at = Instant::now();
    let new_repo_manager = stack.repo_managers.one_leader(LEADS_WITHIN).await;
    let repo_manager_took = killed_at.elapsed();
    let new_orchestrator = stack.orchestrators.one_leader(LEADS_WITHIN).await;
    let orchestrator_took = killed_at.elapsed();
    assert_ne!(new_repo_manager, repo_manager);
    assert_ne!(new_orchestrator, orchestrator);
    assert!(repo_manager_took <= LEADS_WITHIN, "{repo_manager_took:?}");
    assert!(orchestrator_took <= LEADS_WITHIN, "{orchestrator_took:?}");
    eprintln!(
        "after the kill the repo-manager standby led in {repo_manager_took:?}, the \
         orchestrator standby in {orchestrator_took:?}"
    );
}

/// While a takeover leaves the orchestrators' Service without an endpoint (the leader dead,
/// the standby not leading yet), connections are refused; the CLI waits that out, saying so
/// once, and answers once the standby leads.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_waits_out_an_orchestrator_takeover() {
    let mut stack = HaStack::start(HaOptions::default()).await;
    let leader = stack.orchestrators.one_leader(LEADS_WITHIN).await;
    stack.orchestrators.get_mut(&leader).kill();
    // The window: the Service has no endpoint (its port refuses connections).
    let mut routed = stack.orchestrators.routed.clone();
    tokio::time::timeout(LEADS_WITHIN, routed.wait_for(Option::is_none))
        .await
        .expect("the Service drops the killed leader")
        .expect("the Service runs");

    let listed = stack.cli(&["backup", "get"]);
    let stderr = String::from_utf8_lossy(&listed.stderr);
    assert!(
        listed.status.success(),
        "{listed:?}\n{}",
        stack.orchestrators.logs()
    );
    assert_eq!(
        stderr
            .matches(&format!(
                "Waiting for the stowage server at {}",
                stack.orchestrator_service.url
            ))
            .count(),
        1,
        "said once: {stderr}"
    );
    let new_leader = stack.orchestrators.one_leader(LEADS_WITHIN).await;
    assert_ne!(new_leader, leader);
}
