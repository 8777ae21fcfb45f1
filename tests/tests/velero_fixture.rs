//! The Velero-restic-era fixture, generated with the real restic into a local location, read
//! back through `stowage-velero-format`, and checked against what restic itself reports.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use stowage_e2e::s3::S3Server;
use stowage_e2e::velero_fixture::{
    self, Corruption, FixtureLocation, STATIC_PASSWORD, VeleroEra, VeleroFixture,
};
use stowage_velero_format::{
    self as format, BackupPhase, FormatError, Origin, PodVolumeBackupPhase, resources,
};

fn local_location(dir: &std::path::Path) -> FixtureLocation {
    FixtureLocation::Local {
        root: dir.join("location"),
    }
}

/// `restic snapshots --json` of a namespace's repository, opened with the static password.
fn restic_snapshots(fixture: &VeleroFixture, namespace: &str) -> Vec<Value> {
    let output = fixture
        .restic(namespace, STATIC_PASSWORD, &["snapshots", "--json"])
        .expect("running restic snapshots");
    assert!(
        output.status.success(),
        "restic snapshots for {namespace}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("restic snapshots --json prints a JSON array")
}

fn snapshot_tags(snapshot: &Value) -> BTreeMap<String, String> {
    snapshot["tags"]
        .as_array()
        .expect("Velero's snapshots are tagged")
        .iter()
        .map(|tag| {
            let (key, value) = tag
                .as_str()
                .and_then(|tag| tag.split_once('='))
                .expect("Velero tags are key=value");
            (key.to_string(), value.to_string())
        })
        .collect()
}

#[tokio::test]
async fn velero_fixture_reads_back_through_the_format_crate_and_matches_restic() {
    let dir = tempfile::tempdir().unwrap();
    let location = local_location(dir.path());
    let work = dir.path().join("work");
    let old = velero_fixture::generate(&location, &work, "nightly-old", VeleroEra::Restic19)
        .await
        .unwrap();
    let new = velero_fixture::generate(&location, &work, "nightly-new", VeleroEra::FsBackupRestic)
        .await
        .unwrap();
    let store = new.object_store();

    // Both backups are listed, as Velero's, with their records intact.
    let listing = format::list_backups(&*store).await.unwrap();
    assert!(listing.failures.is_empty(), "{:?}", listing.failures);
    let listed: Vec<(&str, Origin)> = listing
        .backups
        .iter()
        .map(|listed| (listed.name.as_str(), listed.origin()))
        .collect();
    assert_eq!(
        listed,
        [
            ("nightly-new", Origin::Velero),
            ("nightly-old", Origin::Velero)
        ]
    );
    let record = &listing.backups[1].backup;
    assert_eq!(
        record.metadata.uid.as_deref(),
        Some(old.backup_uid.as_str())
    );
    assert_eq!(record.status.phase, Some(BackupPhase::Completed));
    assert_eq!(
        record.status.format_version.as_deref(),
        Some(format::FORMAT_VERSION)
    );
    assert_eq!(record.spec.included_namespaces, ["foo", "bar"]);
    assert_eq!(
        record.ttl(),
        Some(std::time::Duration::from_secs(720 * 3600))
    );
    assert_eq!(record.spec.default_volumes_to_restic, Some(false));
    assert_eq!(
        listing.backups[0].backup.spec.default_volumes_to_fs_backup,
        Some(false)
    );

    for fixture in [&old, &new] {
        let files = format::read_backup(&*store, &fixture.backup_name)
            .await
            .unwrap();
        assert_eq!(files.origin(), Origin::Velero);
        assert_eq!(files.backup, fixture.backup);
        assert!(
            format::check_backup(&*store, &fixture.backup_name)
                .await
                .is_empty()
        );

        // One PodVolumeBackup per volume, each carrying the snapshot restic made for it.
        assert_eq!(files.pod_volume_backups.len(), 3);
        for pvb in &files.pod_volume_backups {
            let volume = fixture.volume(pvb.pod_namespace(), &pvb.spec.pod.name, &pvb.spec.volume);
            assert_eq!(pvb.snapshot_id(), Some(volume.snapshot_id.as_str()));
            assert_eq!(pvb.backup_name(), Some(fixture.backup_name.as_str()));
            assert_eq!(pvb.status.phase, Some(PodVolumeBackupPhase::Completed));
            assert_eq!(
                pvb.spec.repo_identifier,
                location.restic_repository(&volume.namespace)
            );
            assert_eq!(
                format::layout::namespace_of_repo_identifier(&pvb.spec.repo_identifier),
                Some(volume.namespace.as_str())
            );
            assert_eq!(pvb.status.path, volume.dir.display().to_string());
            let progress = pvb.status.progress.as_ref().unwrap();
            let data_bytes: usize = volume.files.values().map(Vec::len).sum();
            assert_eq!(progress.total_bytes, data_bytes as u64);
            assert_eq!(pvb.uploader(), "restic");
            let expect_type = (fixture.era == VeleroEra::FsBackupRestic).then_some("restic");
            assert_eq!(pvb.spec.uploader_type.as_deref(), expect_type);
        }

        // Joined with the tarball, each volume knows its claim and the PV behind it.
        let volumes = files.volumes();
        assert_eq!(volumes.len(), 3);
        for volume in &volumes {
            let expected = fixture.volume(&volume.namespace, &volume.pod, &volume.volume);
            assert_eq!(
                volume.snapshot_id.as_deref(),
                Some(expected.snapshot_id.as_str())
            );
            assert_eq!(
                volume.pvc.as_ref(),
                expected.claim.as_ref().map(|(pvc, _, _)| pvc)
            );
            assert_eq!(
                volume.pv.as_ref(),
                expected.claim.as_ref().map(|(_, _, pv)| pv)
            );
        }

        // The tarball gives what a volume restore needs: pods, the PVC and its PV.
        let resources = files.resources.as_ref().expect("the tarball is there");
        assert_eq!(resources.format_version.as_deref(), Some("1.1.0"));
        let pods: BTreeSet<(Option<&str>, &str)> = resources
            .pods()
            .map(|(key, _)| (key.namespace.as_deref(), key.name.as_str()))
            .collect();
        assert_eq!(
            pods,
            BTreeSet::from([(Some("bar"), "web"), (Some("foo"), "sample")])
        );
        let sample = resources
            .get(resources::PODS, Some("foo"), "sample")
            .unwrap();
        assert_eq!(
            sample["metadata"]["annotations"]["backup.velero.io/backup-volumes"],
            "pvc-volume,emptydir-volume"
        );
        let pvc = resources
            .get(
                resources::PERSISTENT_VOLUME_CLAIMS,
                Some("foo"),
                "sample-pvc",
            )
            .unwrap();
        let pv_name = pvc["spec"]["volumeName"].as_str().unwrap();
        let pv = resources
            .get(resources::PERSISTENT_VOLUMES, None, pv_name)
            .expect("the PVC's PV is in the tarball");
        assert_eq!(pv["spec"]["claimRef"]["name"], "sample-pvc");
        assert_eq!(
            sample["spec"]["containers"][0]["volumeMounts"],
            serde_json::json!([
                {"name": "pvc-volume", "mountPath": "/data"},
                {"name": "emptydir-volume", "mountPath": "/cache"}
            ])
        );
        assert_eq!(resources.of_resource(resources::NAMESPACES).count(), 2);
        let list = format::read_resource_list(&*store, &fixture.backup_name)
            .await
            .unwrap()
            .expect("Velero wrote the resource list");
        assert_eq!(list["v1/Pod"], ["bar/web", "foo/sample"]);
        assert_eq!(list["v1/PersistentVolume"], ["pv-foo-sample"]);

        let logs = files.logs.as_deref().unwrap();
        assert!(logs.contains(&format!("backup=velero/{}", fixture.backup_name)));
        assert!(logs.contains(&fixture.volume("bar", "web", "www").snapshot_id));
        let entries = format::parse_logs(logs);
        assert!(entries.len() >= 5, "{entries:?}");
        for entry in &entries {
            assert_eq!(entry.level, "info", "{entry:?}");
            assert!(entry.time.is_some(), "{entry:?}");
            let expected_backup = format!("velero/{}", fixture.backup_name);
            assert_eq!(entry.fields.get("backup"), Some(&expected_backup));
        }
        let www = entries
            .iter()
            .find(|entry| entry.fields.get("volume").map(String::as_str) == Some("www"))
            .expect("a log line for bar/web/www");
        assert_eq!(
            www.fields["snapshotID"],
            fixture.volume("bar", "web", "www").snapshot_id
        );
    }

    // restic agrees: each repository holds the snapshots of both backups, taken as Velero did.
    for namespace in ["foo", "bar"] {
        let snapshots = restic_snapshots(&new, namespace);
        let expected = new
            .volumes
            .iter()
            .filter(|v| v.namespace == namespace)
            .count()
            * 2;
        assert_eq!(snapshots.len(), expected, "{namespace}: {snapshots:#?}");
        for snapshot in &snapshots {
            assert_eq!(snapshot["hostname"], "velero");
            let tags = snapshot_tags(snapshot);
            let fixture = if tags["backup"] == "nightly-old" {
                &old
            } else {
                &new
            };
            let volume = fixture.volume(&tags["ns"], &tags["pod"], &tags["volume"]);
            // Velero recorded restic's short id, which restic accepts wherever an id goes.
            assert_eq!(snapshot["short_id"], volume.snapshot_id.as_str());
            assert!(
                snapshot["id"]
                    .as_str()
                    .unwrap()
                    .starts_with(&volume.snapshot_id)
            );
            assert_eq!(snapshot["paths"][0], volume.dir.display().to_string());
            let mut expected_keys = vec!["backup", "backup-uid", "ns", "pod", "pod-uid", "volume"];
            if volume.claim.is_some() {
                expected_keys.push("pvc-uid");
            }
            expected_keys.sort();
            assert_eq!(
                tags.keys().map(String::as_str).collect::<Vec<_>>(),
                expected_keys
            );
            assert_eq!(tags["backup-uid"], fixture.backup_uid);
            assert_eq!(tags["pod-uid"], volume.pod_uid);
            if let Some((_, pvc_uid, _)) = &volume.claim {
                assert_eq!(&tags["pvc-uid"], pvc_uid);
            }
        }
    }

    // Restoring the way Velero did (`restic restore <id> --target=.` in the new volume
    // directory) gives back the files byte for byte.
    let volume = new.volume("foo", "sample", "pvc-volume");
    let target = dir.path().join("restored");
    std::fs::create_dir_all(&target).unwrap();
    let output = std::process::Command::new("restic")
        .current_dir(&target)
        .args(["restore", &volume.snapshot_id, "--target=."])
        .arg(format!("--repo={}", location.restic_repository("foo")))
        .env("RESTIC_PASSWORD", STATIC_PASSWORD)
        .env("RESTIC_CACHE_DIR", dir.path().join("cache"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for (relative, data) in &volume.files {
        let restored = std::fs::read(target.join(relative)).unwrap();
        assert_eq!(&restored, data, "{relative}");
    }
}

/// Velero backup `name` of the restic 1.9 era, generated into a local location under `dir`.
async fn restic19_backup(dir: &std::path::Path, name: &str) -> VeleroFixture {
    velero_fixture::generate(
        &local_location(dir),
        &dir.join("work"),
        name,
        VeleroEra::Restic19,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn each_corrupted_copy_reports_its_broken_file_and_leaves_the_original_alone() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = restic19_backup(dir.path(), "weekly").await;
    let store = fixture.object_store();
    let before = velero_fixture::snapshot_backup_objects(&*store, "weekly")
        .await
        .unwrap();
    assert_eq!(before.len(), 5, "{:?}", before.keys());

    let corrupted = velero_fixture::write_corrupted_copies(&fixture)
        .await
        .unwrap();
    assert_eq!(corrupted.len(), Corruption::ALL.len());

    for copy in &corrupted {
        let problems = format::check_backup(&*store, &copy.name).await;
        assert_eq!(problems.len(), 1, "{}: {problems:?}", copy.name);
        let problem = &problems[0];
        assert_eq!(problem.key(), Some(copy.broken_key.as_str()), "{problem}");
        assert!(
            problem.to_string().starts_with(&copy.broken_key),
            "{problem}"
        );
        let kind_matches = match copy.corruption {
            Corruption::BadBackupJson | Corruption::BadPodVolumeBackupsJson => {
                matches!(problem, FormatError::Json { .. })
            }
            Corruption::TruncatedPodVolumeBackupsGzip
            | Corruption::TruncatedTarball
            | Corruption::TruncatedLogs => matches!(problem, FormatError::Gzip { .. }),
            Corruption::TarballNotTar => matches!(problem, FormatError::Tar { .. }),
        };
        assert!(kind_matches, "{:?} gave {problem:?}", copy.corruption);
        let error = format::read_backup(&*store, &copy.name).await.unwrap_err();
        assert_eq!(error.key(), Some(copy.broken_key.as_str()));
    }

    // The listing keeps going past the broken record and lists every other copy.
    let listing = format::list_backups(&*store).await.unwrap();
    let failed: Vec<&str> = listing.failures.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(failed, [Corruption::BadBackupJson.copy_name("weekly")]);
    assert!(matches!(
        listing.failures[0].error,
        FormatError::Json { .. }
    ));
    assert_eq!(listing.backups.len(), Corruption::ALL.len());

    let after = velero_fixture::snapshot_backup_objects(&*store, "weekly")
        .await
        .unwrap();
    assert_eq!(before, after, "the original backup's objects changed");
}

#[tokio::test]
async fn wrong_password_and_missing_repository_backups_parse_but_restic_cannot_open_them() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = restic19_backup(dir.path(), "base").await;
    velero_fixture::write_wrong_password_backup(
        &fixture,
        "rotated-key",
        "qux",
        "operator-chose-this",
    )
    .await
    .unwrap();
    velero_fixture::write_missing_repository_backup(&fixture, "repo-gone", "gone")
        .await
        .unwrap();
    let store = fixture.object_store();

    for name in ["rotated-key", "repo-gone"] {
        assert!(
            format::check_backup(&*store, name).await.is_empty(),
            "{name}"
        );
        let files = format::read_backup(&*store, name).await.unwrap();
        assert_eq!(files.pod_volume_backups.len(), 1);
        assert!(files.pod_volume_backups[0].snapshot_id().is_some());
    }

    let wrong = fixture
        .restic("qux", STATIC_PASSWORD, &["snapshots", "--json"])
        .unwrap();
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("wrong password"), "{stderr}");
    // The repository is there and fine with its own password.
    let right = fixture
        .restic("qux", "operator-chose-this", &["snapshots", "--json"])
        .unwrap();
    assert!(
        right.status.success(),
        "{}",
        String::from_utf8_lossy(&right.stderr)
    );

    let missing = fixture
        .restic("gone", STATIC_PASSWORD, &["snapshots", "--json"])
        .unwrap();
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("Is there a repository"), "{stderr}");
    assert!(!dir.path().join("location/restic/gone").exists());
    assert!(dir.path().join("location/restic/foo/config").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn velero_fixture_on_s3_reads_back_and_reports_broken_copies() {
    let dir = tempfile::tempdir().unwrap();
    let server = S3Server::start(dir.path(), "velero-bucket");
    let location = FixtureLocation::s3(&server, "cluster-a");
    assert_eq!(
        location.restic_repository("foo"),
        format!("s3:{}/velero-bucket/cluster-a/restic/foo", server.endpoint)
    );
    assert_eq!(
        location.restic_repository("foo"),
        format::layout::velero_repo_identifier(
            format::layout::VeleroBackend::S3 {
                endpoint: &server.endpoint
            },
            "velero-bucket",
            "cluster-a",
            "foo"
        )
    );
    let fixture = velero_fixture::generate(
        &location,
        &dir.path().join("work"),
        "daily",
        VeleroEra::FsBackupRestic,
    )
    .await
    .unwrap();
    let store = fixture.object_store();

    let listing = format::list_backups(&*store).await.unwrap();
    assert!(listing.failures.is_empty(), "{:?}", listing.failures);
    assert_eq!(listing.backups.len(), 1);
    assert_eq!(listing.backups[0].origin(), Origin::Velero);
    let files = format::read_backup(&*store, "daily").await.unwrap();
    assert_eq!(files.backup, fixture.backup);
    assert_eq!(files.pod_volume_backups, fixture.pod_volume_backups);
    assert_eq!(files.resources.as_ref(), Some(&fixture.resources));

    // The snapshot ids in the PodVolumeBackups are the ones restic lists in the bucket.
    for namespace in ["foo", "bar"] {
        let listed: BTreeSet<String> = restic_snapshots(&fixture, namespace)
            .iter()
            .map(|snapshot| snapshot["short_id"].as_str().unwrap().to_string())
            .collect();
        let recorded: BTreeSet<String> = files
            .pod_volume_backups
            .iter()
            .filter(|pvb| pvb.pod_namespace() == namespace)
            .map(|pvb| pvb.snapshot_id().unwrap().to_string())
            .collect();
        assert_eq!(listed, recorded, "{namespace}");
    }

    let before = velero_fixture::snapshot_backup_objects(&*store, "daily")
        .await
        .unwrap();
    for corruption in [Corruption::BadBackupJson, Corruption::TruncatedTarball] {
        let copy = velero_fixture::write_corrupted_copy(&fixture, corruption)
            .await
            .unwrap();
        let problems = format::check_backup(&*store, &copy.name).await;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key(), Some(copy.broken_key.as_str()));
    }
    let listing = format::list_backups(&*store).await.unwrap();
    assert_eq!(listing.failures.len(), 1);
    assert_eq!(listing.failures[0].name, "daily-bad-record");

    velero_fixture::write_missing_repository_backup(&fixture, "repo-gone", "gone")
        .await
        .unwrap();
    let missing = fixture
        .restic("gone", STATIC_PASSWORD, &["snapshots", "--json"])
        .unwrap();
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("Is there a repository"), "{stderr}");
    assert_eq!(
        velero_fixture::snapshot_backup_objects(&*store, "daily")
            .await
            .unwrap(),
        before
    );
}
