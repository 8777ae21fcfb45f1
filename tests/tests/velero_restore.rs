//! Velero's restic-era backups restored through stowage, end to end: the fixture generator
//! writes a bucket the way Velero's restic integration did (real restic, static password), a
//! stack with a fresh emulated cluster lists it, restores it byte for byte through the normal
//! restore path, then backs the restored namespace up with stowage's own key. Broken copies are
//! listed with why they cannot be restored and refused. No object of a Velero backup changes.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
use kube::{Api, api::ListParams};
use stowage_e2e::{
    api::{self, Client, wait_restore},
    kube::{bind_claim, mark_init_container_running, mark_pod_running, wait_for_pod},
    kubelet::manifest,
    stack::{Stack, StackOptions},
    velero_fixture::{
        self, CorruptedBackup, FixtureLocation, STATIC_PASSWORD, VeleroEra, VeleroFixture,
    },
};
use stowage_proto::v1::{
    Backup, BackupOrigin, BackupPhase, CreateRestoreRequest, GetBackupRequest,
    GetRepositoryAccessRequest, ListBackupsRequest, Restore, RestorePhase, RestoreSpec,
    VolumePhase, repo_manager_client::RepoManagerClient,
};

const BACKUP: &str = "velero-nightly";
/// The nodes of the fresh cluster: `foo/sample` is scheduled on the first, `bar/web` on the
/// second, so each volume must be restored by the agent of its own pod's node.
const NODES: [&str; 2] = ["node-1", "node-2"];

/// A stack whose storage location holds the Velero fixture (and whatever `extra` adds), read
/// by an orchestrator started after the bucket was complete.
async fn stack_with_velero_bucket<F, Fut>(
    s3: bool,
    extra: F,
) -> (Stack, VeleroFixture, tempfile::TempDir)
where
    F: FnOnce(VeleroFixture) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut stack = Stack::start(StackOptions {
        agent_nodes: NODES.iter().map(|n| n.to_string()).collect(),
        s3,
        // The bucket is read once, by the restarted orchestrator below, never half-written.
        orchestrator_args: vec!["--housekeeping-interval-seconds".into(), "3600".into()],
        ..StackOptions::default()
    })
    .await;
    let location = match &stack.s3 {
        Some(server) => FixtureLocation::s3(server, "cluster-1"),
        None => FixtureLocation::Local {
            root: stack.storage.clone(),
        },
    };
    let work = tempfile::tempdir().expect("a temp dir");
    let fixture =
        velero_fixture::generate(&location, work.path(), BACKUP, VeleroEra::FsBackupRestic)
            .await
            .expect("writing the Velero fixture");
    extra(fixture.clone()).await;
    stack.restart_orchestrator().await;
    (stack, fixture, work)
}

async fn backup_to_end(client: &mut Client, name: &str, namespace: &str) -> Backup {
    api::backup_to_end(client, name, api::namespace_spec(namespace)).await
}

async fn list_backups(client: &mut Client) -> BTreeMap<String, Backup> {
    client
        .list_backups(ListBackupsRequest {})
        .await
        .expect("ListBackups")
        .into_inner()
        .backups
        .into_iter()
        .map(|backup| (backup.name.clone(), backup))
        .collect()
}

/// The password the repo-manager hands out for `namespace`'s repository.
async fn repository_password(stack: &Stack, namespace: &str) -> String {
    let channel = stowage_grpc::connect(&stack.repo_manager.url)
        .await
        .expect("connecting to the repo-manager");
    RepoManagerClient::new(channel)
        .get_repository_access(GetRepositoryAccessRequest {
            namespace: namespace.into(),
        })
        .await
        .expect("GetRepositoryAccess")
        .into_inner()
        .password
}

/// Restores the fixture's backup into the fresh cluster (`foo` mapped to `foo_target`), plays
/// scheduler, provisioner and kubelet for the recreated pods, and checks every volume is on the
/// right node and identical to the data Velero backed up.
async fn restore_fixture(
    stack: &Stack,
    client: &mut Client,
    fixture: &VeleroFixture,
    foo_target: &str,
) -> Restore {
    let kube = stack.kube_client().await;
    let mut mapping = std::collections::HashMap::new();
    if foo_target != "foo" {
        mapping.insert("foo".to_string(), foo_target.to_string());
    }
    let restore = client
        .create_restore(CreateRestoreRequest {
            name: "from-velero".into(),
            spec: Some(RestoreSpec {
                backup_name: BACKUP.into(),
                namespace_mapping: mapping,
                ..Default::default()
            }),
        })
        .await
        .expect("CreateRestore of the Velero backup")
        .into_inner();

    // The pods come back from the backup's tarball with the restore helper first.
    let sample = wait_for_pod(&kube, foo_target, "sample", Duration::from_secs(30)).await;
    let web = wait_for_pod(&kube, "bar", "web", Duration::from_secs(30)).await;
    for pod in [&sample, &web] {
        let spec = pod.spec.clone().unwrap();
        assert!(spec.node_name.is_none(), "{pod:?}");
        let init = spec.init_containers.unwrap_or_default();
        assert_eq!(init[0].name, "restore-wait", "{pod:?}");
        assert_eq!(init[0].args.clone().unwrap(), vec![restore.uid.clone()]);
    }
    // The PVC comes from the tarball too, unbound: play the provisioner.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(kube.clone(), foo_target);
    let claim = claims
        .get("sample-pvc")
        .await
        .expect("the PVC is recreated");
    assert!(claim.spec.unwrap().volume_name.is_none());
    let new_pv = "pv-foo-sample-restored";
    bind_claim(&claims, "sample-pvc", new_pv).await;

    let sample_dir = stack.kubelets[NODES[0]].pod(sample.metadata.uid.as_deref().unwrap());
    let web_dir = stack.kubelets[NODES[1]].pod(web.metadata.uid.as_deref().unwrap());
    let restored = [
        (("foo", "sample", "pvc-volume"), sample_dir.csi_pv(new_pv)),
        (
            ("foo", "sample", "emptydir-volume"),
            sample_dir.empty_dir("emptydir-volume"),
        ),
        (("bar", "web", "www"), web_dir.empty_dir("www")),
    ];
    mark_init_container_running(&kube, foo_target, "sample", NODES[0], "restore-wait").await;
    mark_init_container_running(&kube, "bar", "web", NODES[1], "restore-wait").await;

    let restore = wait_restore(client, &restore.name).await;
    let status = restore.status.clone().unwrap();
    assert_eq!(
        status.phase,
        RestorePhase::Completed as i32,
        "{status:#?}\n{}",
        stack.orchestrator.process.log()
    );
    assert_eq!(status.volumes_completed, 3, "{status:#?}");
    for volume in &status.volumes {
        let reference = volume.volume.clone().unwrap();
        let node = if reference.pod_name == "sample" {
            NODES[0]
        } else {
            NODES[1]
        };
        assert_eq!(volume.node, node, "{volume:#?}");
    }
    let mut created = status.pods_created.clone();
    created.sort();
    let mut expected = vec!["bar/web".to_string(), format!("{foo_target}/sample")];
    expected.sort();
    assert_eq!(created, expected);
    for ((namespace, pod, volume), dir) in &restored {
        let source = fixture.volume(namespace, pod, volume);
        assert_eq!(
            manifest(dir, false),
            manifest(&source.dir, false),
            "{namespace}/{pod} {volume} differs from what Velero backed up"
        );
        assert!(!source.files.is_empty());
        for (relative, data) in &source.files {
            assert_eq!(
                &std::fs::read(dir.join(relative)).unwrap(),
                data,
                "{relative}"
            );
        }
        assert!(dir.join(".velero").join(&restore.uid).exists());
    }
    restore
}

#[tokio::test(flavor = "multi_thread")]
async fn velero_backup_restores_byte_for_byte_then_backs_up_with_stowage_s_own_key() {
    let (stack, fixture, _work) = stack_with_velero_bucket(false, |_| async {}).await;
    let store = fixture.object_store();
    let before = velero_fixture::snapshot_backup_objects(&*store, BACKUP)
        .await
        .unwrap();
    let mut client = stack.client().await;

    // Listed beside stowage's own, marked as Velero's, restorable.
    let listed = list_backups(&mut client).await;
    let backup = listed
        .get(BACKUP)
        .unwrap_or_else(|| panic!("{BACKUP} not listed: {listed:#?}"));
    assert_eq!(backup.origin, BackupOrigin::Velero as i32);
    assert_eq!(backup.unrestorable_reason, "", "{backup:#?}");
    assert_eq!(
        backup.status.as_ref().unwrap().phase,
        BackupPhase::Completed as i32
    );

    // GetBackup shows its volumes with Velero's short snapshot ids.
    let described = client
        .get_backup(GetBackupRequest {
            name: BACKUP.into(),
        })
        .await
        .expect("GetBackup")
        .into_inner();
    let volumes = described.status.unwrap().volumes;
    assert_eq!(volumes.len(), fixture.volumes.len(), "{volumes:#?}");
    for source in &fixture.volumes {
        let volume = volumes
            .iter()
            .find(|v| {
                let r = v.volume.as_ref().unwrap();
                r.namespace == source.namespace
                    && r.pod_name == source.pod
                    && r.volume_name == source.volume
            })
            .unwrap_or_else(|| {
                panic!(
                    "{}/{} {} not shown",
                    source.namespace, source.pod, source.volume
                )
            });
        assert_eq!(volume.snapshot_id, source.snapshot_id);
        assert_eq!(volume.node, velero_fixture::NODE);
        assert_eq!(volume.phase, VolumePhase::Completed as i32);
    }

    restore_fixture(&stack, &mut client, &fixture, "foo").await;

    // The restored pod runs; stowage backs its namespace up into `restic/foo`, the repository
    // Velero's snapshots are in, with a key of its own: Velero's stays and opens it too.
    let kube = stack.kube_client().await;
    mark_pod_running(&kube, "foo", "sample", NODES[0]).await;
    let after = backup_to_end(&mut client, "after-velero", "foo").await;
    let status = after.status.unwrap();
    assert_eq!(
        status.phase,
        BackupPhase::Completed as i32,
        "{status:#?}\n{}",
        stack.orchestrator.process.log()
    );
    assert_eq!(status.volumes_completed, 2, "{status:#?}");
    assert_eq!(after.origin, BackupOrigin::Stowage as i32);
    let own = repository_password(&stack, "foo").await;
    assert_ne!(
        own, STATIC_PASSWORD,
        "stowage backs up with Velero's static password"
    );
    let snapshots = fixture
        .restic(
            "foo",
            STATIC_PASSWORD,
            &["snapshots", "--json", "--tag", "backup=after-velero"],
        )
        .unwrap();
    assert!(
        snapshots.status.success(),
        "Velero's key was removed: {snapshots:?}"
    );
    let snapshots: Vec<serde_json::Value> = serde_json::from_slice(&snapshots.stdout).unwrap();
    assert_eq!(snapshots.len(), 2, "{snapshots:#?}");
    let opened = fixture
        .restic(
            "foo",
            &own,
            &["snapshots", "--json", "--tag", "backup=velero-nightly"],
        )
        .unwrap();
    assert!(opened.status.success(), "{opened:?}");

    // Nothing of Velero's backup changed.
    let unchanged = velero_fixture::snapshot_backup_objects(&*store, BACKUP)
        .await
        .unwrap();
    assert_eq!(unchanged, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn velero_backup_on_s3_restores_into_a_mapped_namespace_with_its_own_repository() {
    let (stack, fixture, _work) = stack_with_velero_bucket(true, |_| async {}).await;
    let store = fixture.object_store();
    let before = velero_fixture::snapshot_backup_objects(&*store, BACKUP)
        .await
        .unwrap();
    let mut client = stack.client().await;
    let listed = list_backups(&mut client).await;
    assert_eq!(listed[BACKUP].origin, BackupOrigin::Velero as i32);
    assert_eq!(listed[BACKUP].unrestorable_reason, "");

    let restore = restore_fixture(&stack, &mut client, &fixture, "foo-restored").await;
    let status = restore.status.unwrap();
    for volume in &status.volumes {
        let reference = volume.volume.as_ref().unwrap();
        if reference.pod_name == "sample" {
            assert_eq!(reference.namespace, "foo-restored");
            assert_eq!(volume.source_namespace, "foo");
        }
    }
    let kube = stack.kube_client().await;
    let namespaces: Api<Namespace> = Api::all(kube.clone());
    assert!(
        namespaces.get_opt("foo").await.unwrap().is_none(),
        "foo was created"
    );

    // The mapped namespace is a new one to stowage: its own repository, its own key.
    mark_pod_running(&kube, "foo-restored", "sample", NODES[0]).await;
    let after = backup_to_end(&mut client, "after-velero", "foo-restored").await;
    let status = after.status.unwrap();
    assert_eq!(
        status.phase,
        BackupPhase::Completed as i32,
        "{status:#?}\n{}",
        stack.orchestrator.process.log()
    );
    assert_eq!(status.volumes_completed, 2, "{status:#?}");
    for volume in &status.volumes {
        assert!(
            volume.repository.ends_with("/restic/foo-restored"),
            "{volume:#?}"
        );
    }
    let own = repository_password(&stack, "foo-restored").await;
    assert_ne!(own, STATIC_PASSWORD);
    let velero_key = fixture
        .restic(
            "foo-restored",
            STATIC_PASSWORD,
            &["cat", "config", "--no-lock"],
        )
        .unwrap();
    assert!(
        !velero_key.status.success(),
        "Velero's static password opens stowage's own repository"
    );
    let own_key = fixture
        .restic(
            "foo-restored",
            &own,
            &["snapshots", "--json", "--tag", "backup=after-velero"],
        )
        .unwrap();
    assert!(own_key.status.success(), "{own_key:?}");
    let snapshots: Vec<serde_json::Value> = serde_json::from_slice(&own_key.stdout).unwrap();
    assert_eq!(snapshots.len(), 2, "{snapshots:#?}");

    let unchanged = velero_fixture::snapshot_backup_objects(&*store, BACKUP)
        .await
        .unwrap();
    assert_eq!(unchanged, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_velero_backups_are_listed_with_why_and_refused_without_touching_the_cluster() {
    let mut corrupted: Vec<CorruptedBackup> = Vec::new();
    let written = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = written.clone();
    let (stack, fixture, _work) = stack_with_velero_bucket(false, |fixture| async move {
        let copies = velero_fixture::write_corrupted_copies(&fixture)
            .await
            .expect("writing the corrupted copies");
        velero_fixture::write_wrong_password_backup(
            &fixture,
            "velero-wrong-password",
            "vault",
            "the-operator-replaced-it",
        )
        .await
        .expect("writing the wrong-password backup");
        velero_fixture::write_missing_repository_backup(&fixture, "velero-no-repository", "gone")
            .await
            .expect("writing the missing-repository backup");
        sink.lock().unwrap().extend(copies);
    })
    .await;
    corrupted.extend(written.lock().unwrap().drain(..));
    assert_eq!(corrupted.len(), velero_fixture::Corruption::ALL.len());
    let store = fixture.object_store();

    // (backup, what its reason must say)
    let mut expected: Vec<(String, Vec<String>)> = corrupted
        .iter()
        .map(|c| (c.name.clone(), vec![c.broken_key.clone()]))
        .collect();
    expected.push((
        "velero-wrong-password".into(),
        vec!["restic/vault".into(), "wrong password".into()],
    ));
    expected.push((
        "velero-no-repository".into(),
        vec!["restic/gone".into(), "not found".into()],
    ));
    let mut before = BTreeMap::new();
    for (name, _) in &expected {
        before.insert(
            name.clone(),
            velero_fixture::snapshot_backup_objects(&*store, name)
                .await
                .unwrap(),
        );
    }

    let mut client = stack.client().await;
    let listed = list_backups(&mut client).await;
    assert_eq!(
        listed[BACKUP].unrestorable_reason, "",
        "the intact original"
    );
    for (name, words) in &expected {
        let backup = listed
            .get(name)
            .unwrap_or_else(|| panic!("{name} not listed: {listed:#?}"));
        assert_eq!(backup.origin, BackupOrigin::Velero as i32, "{name}");
        for word in words {
            assert!(
                backup.unrestorable_reason.contains(word.as_str()),
                "{name}: reason {:?} does not say {word:?}",
                backup.unrestorable_reason
            );
        }
        let refused = client
            .create_restore(CreateRestoreRequest {
                name: format!("restore-{name}"),
                spec: Some(RestoreSpec {
                    backup_name: name.clone(),
                    ..Default::default()
                }),
            })
            .await
            .expect_err("a restore from a broken backup is refused");
        assert_eq!(
            refused.code(),
            tonic::Code::FailedPrecondition,
            "{name}: {refused:?}"
        );
        for word in words {
            assert!(
                refused.message().contains(word.as_str()),
                "{name}: {:?} does not say {word:?}",
                refused.message()
            );
        }
    }

    // Nothing was created in the cluster, and no repository was initialised for the missing one.
    let kube = stack.kube_client().await;
    let namespaces: Api<Namespace> = Api::all(kube.clone());
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|ns| ns.metadata.name)
        .collect();
    assert_eq!(
        names,
        vec!["stowage".to_string()],
        "namespaces were created"
    );
    for namespace in ["foo", "bar", "vault", "gone"] {
        let pods: Api<Pod> = Api::namespaced(kube.clone(), namespace);
        assert!(
            pods.list(&ListParams::default())
                .await
                .unwrap()
                .items
                .is_empty()
        );
    }
    assert!(
        !stowage_velero_format::store::restic_repository_exists(&*store, "gone")
            .await
            .unwrap(),
        "a repository was initialised where Velero's was missing"
    );
    for (name, objects) in &before {
        let now = velero_fixture::snapshot_backup_objects(&*store, name)
            .await
            .unwrap();
        assert_eq!(&now, objects, "{name} changed");
    }
}
