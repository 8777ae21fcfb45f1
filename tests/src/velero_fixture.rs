//! A Velero-restic-era backup storage location, written the way Velero laid it out: one restic
//! repository per namespace at `restic/<ns>` (static password `static-passw0rd`), snapshots
//! taken by the real `restic` as `restic backup .` from inside each volume directory with
//! `--host=velero` and Velero's tags, then `velero-backup.json`, the PodVolumeBackup list with
//! the real snapshot ids, the resources tarball and the logs. Also writes corrupted copies of
//! each file, and backups whose repository is missing or opened with another password, for the
//! "cannot be restored, and why" tests.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, bail, ensure};
use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use futures::TryStreamExt;
use object_store::{
    ObjectStore, ObjectStoreExt, PutPayload, aws::AmazonS3Builder, local::LocalFileSystem,
    path::Path as StorePath, prefix::PrefixStore,
};
use serde_json::{Value, json};
use stowage_velero_format::{
    self as format, Backup, BackupPhase, BackupResources, PodVolumeBackup, PodVolumeBackupPhase,
    PodVolumeOperationProgress, layout, pod_volume_backup::tags,
};

/// The password Velero gave every restic repository unless the operator changed it.
pub const STATIC_PASSWORD: &str = format::VELERO_DEFAULT_REPOSITORY_PASSWORD;
/// The namespace Velero's server (and its PodVolumeBackups) ran in.
pub const VELERO_NAMESPACE: &str = "velero";
/// The node every fixture pod ran on.
pub const NODE: &str = "node-1";

/// Where the fixture is written.
#[derive(Debug, Clone)]
pub enum FixtureLocation {
    /// A local directory, the location root.
    Local { root: PathBuf },
    /// An S3-compatible server; the location root is `<bucket>/<prefix>`.
    S3 {
        /// `http://127.0.0.1:<port>`
        endpoint: String,
        bucket: String,
        /// Without leading or trailing `/`; may be empty.
        prefix: String,
        region: String,
        access_key_id: String,
        secret_access_key: String,
    },
}

impl FixtureLocation {
    /// The bucket of a test S3 server, under `prefix` (may be empty).
    pub fn s3(server: &crate::s3::S3Server, prefix: &str) -> FixtureLocation {
        FixtureLocation::S3 {
            endpoint: server.endpoint.clone(),
            bucket: server.bucket.clone(),
            prefix: prefix.trim_matches('/').to_string(),
            region: crate::s3::REGION.to_string(),
            access_key_id: crate::s3::ACCESS_KEY_ID.to_string(),
            secret_access_key: crate::s3::SECRET_ACCESS_KEY.to_string(),
        }
    }

    /// The restic repository URL of `namespace`, as Velero's `repoIdentifier` spelled it.
    pub fn restic_repository(&self, namespace: &str) -> String {
        match self {
            FixtureLocation::Local { root } => {
                layout::restic_repository_url(&root.display().to_string(), namespace)
            }
            FixtureLocation::S3 {
                endpoint,
                bucket,
                prefix,
                ..
            } => {
                let base = if prefix.is_empty() {
                    format!("s3:{}/{bucket}", endpoint.trim_end_matches('/'))
                } else {
                    format!("s3:{}/{bucket}/{prefix}", endpoint.trim_end_matches('/'))
                };
                layout::restic_repository_url(&base, namespace)
            }
        }
    }

    /// Environment restic needs to reach the location.
    pub fn restic_env(&self) -> BTreeMap<String, String> {
        match self {
            FixtureLocation::Local { .. } => BTreeMap::new(),
            FixtureLocation::S3 {
                region,
                access_key_id,
                secret_access_key,
                ..
            } => BTreeMap::from([
                ("AWS_ACCESS_KEY_ID".to_string(), access_key_id.clone()),
                (
                    "AWS_SECRET_ACCESS_KEY".to_string(),
                    secret_access_key.clone(),
                ),
                ("AWS_DEFAULT_REGION".to_string(), region.clone()),
            ]),
        }
    }

    /// An object store rooted at the location (bucket + prefix).
    pub fn object_store(&self) -> anyhow::Result<Arc<dyn ObjectStore>> {
        match self {
            FixtureLocation::Local { root } => {
                std::fs::create_dir_all(root)
                    .with_context(|| format!("creating {}", root.display()))?;
                Ok(Arc::new(LocalFileSystem::new_with_prefix(root)?))
            }
            FixtureLocation::S3 {
                endpoint,
                bucket,
                prefix,
                region,
                access_key_id,
                secret_access_key,
            } => {
                let store = AmazonS3Builder::new()
                    .with_endpoint(endpoint)
                    .with_bucket_name(bucket)
                    .with_region(region)
                    .with_access_key_id(access_key_id)
                    .with_secret_access_key(secret_access_key)
                    .with_allow_http(true)
                    .with_virtual_hosted_style_request(false)
                    .build()?;
                if prefix.is_empty() {
                    Ok(Arc::new(store))
                } else {
                    Ok(Arc::new(PrefixStore::new(store, prefix.as_str())))
                }
            }
        }
    }
}

/// Which Velero wrote the backup: the field names of the fs-backup switch and of the uploader
/// changed in 1.10, and buckets hold both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VeleroEra {
    /// Velero 1.5–1.9: `defaultVolumesToRestic`, no `uploaderType`.
    Restic19,
    /// Velero 1.10–1.16 with the restic uploader: `defaultVolumesToFsBackup`,
    /// `uploaderType: restic`.
    FsBackupRestic,
}

/// One pod volume of the fixture.
#[derive(Debug, Clone)]
pub struct FixtureVolume {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub volume: String,
    /// `(pvc name, pvc uid, pv name)` for PVC-backed volumes.
    pub claim: Option<(String, String, String)>,
    /// The fake volume directory that was backed up (the `status.path`).
    pub dir: PathBuf,
    /// Every file written into `dir`, by relative path.
    pub files: BTreeMap<String, Vec<u8>>,
    /// The snapshot's short id, as restic's backup summary reports it and Velero recorded it.
    pub snapshot_id: String,
    /// `total_bytes_processed` of restic's summary.
    pub bytes: u64,
}

/// What [`generate`] wrote.
#[derive(Debug, Clone)]
pub struct VeleroFixture {
    pub location: FixtureLocation,
    pub backup_name: String,
    pub backup_uid: String,
    pub era: VeleroEra,
    pub volumes: Vec<FixtureVolume>,
    pub backup: Backup,
    pub pod_volume_backups: Vec<PodVolumeBackup>,
    pub resources: BackupResources,
    pub logs: String,
    /// Where restic's cache and password file live.
    pub work_dir: PathBuf,
}

impl VeleroFixture {
    pub fn volume(&self, namespace: &str, pod: &str, volume: &str) -> &FixtureVolume {
        self.volumes
            .iter()
            .find(|v| v.namespace == namespace && v.pod == pod && v.volume == volume)
            .unwrap_or_else(|| panic!("no fixture volume {namespace}/{pod}/{volume}"))
    }

    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.location
            .object_store()
            .expect("the fixture's store was opened once already")
    }

    /// Runs `restic <args>` against `namespace`'s repository with `password`.
    pub fn restic(
        &self,
        namespace: &str,
        password: &str,
        args: &[&str],
    ) -> anyhow::Result<std::process::Output> {
        run_restic_raw(
            &self.location,
            &self.work_dir,
            namespace,
            password,
            args,
            None,
        )
    }
}

/// Deterministic bytes, so a restore can be compared byte for byte without keeping copies.
pub fn sample_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        })
        .collect()
}

struct VolumeSpec {
    namespace: &'static str,
    pod: &'static str,
    volume: &'static str,
    /// `(pvc, pv)`
    claim: Option<(&'static str, &'static str)>,
    files: Vec<(&'static str, Vec<u8>)>,
}

fn fixture_volumes() -> Vec<VolumeSpec> {
    vec![
        VolumeSpec {
            namespace: "foo",
            pod: "sample",
            volume: "pvc-volume",
            claim: Some(("sample-pvc", "pv-foo-sample")),
            files: vec![
                ("data.txt", b"hello from foo/sample pvc-volume\n".to_vec()),
                ("nested/dir/blob.bin", sample_bytes(1, 48 * 1024)),
                ("empty", Vec::new()),
            ],
        },
        VolumeSpec {
            namespace: "foo",
            pod: "sample",
            volume: "emptydir-volume",
            claim: None,
            files: vec![
                ("cache.txt", b"scratch data of foo/sample\n".to_vec()),
                ("tmp/part-0001", sample_bytes(2, 8 * 1024)),
            ],
        },
        VolumeSpec {
            namespace: "bar",
            pod: "web",
            volume: "www",
            claim: None,
            files: vec![
                (
                    "index.html",
                    b"<html><body>bar/web</body></html>\n".to_vec(),
                ),
                ("assets/logo.bin", sample_bytes(3, 16 * 1024)),
            ],
        },
    ]
}

/// A uid that looks like Kubernetes' and is stable for a given seed text, so runs compare.
fn fake_uid(seed: &str) -> String {
    let bytes = sample_bytes(
        seed.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        }),
        16,
    );
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-4{}-8{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// Runs restic the way Velero's pod volume backupper did, returning its output.
fn run_restic_raw(
    location: &FixtureLocation,
    work_dir: &Path,
    namespace: &str,
    password: &str,
    args: &[&str],
    current_dir: Option<&Path>,
) -> anyhow::Result<std::process::Output> {
    std::fs::create_dir_all(work_dir)?;
    // Velero mounted the password as a file from its credentials Secret.
    let password_file = work_dir.join(format!(
        "restic-password-{}",
        fake_uid(&format!("{namespace}/{password}"))
    ));
    std::fs::write(&password_file, password)?;
    let mut command = std::process::Command::new("restic");
    command
        .args(args)
        .arg(format!("--repo={}", location.restic_repository(namespace)))
        .arg(format!("--password-file={}", password_file.display()))
        .arg(format!(
            "--cache-dir={}",
            work_dir.join("restic-cache").display()
        ))
        .envs(location.restic_env())
        .env_remove("RESTIC_PASSWORD")
        .env_remove("RESTIC_REPOSITORY");
    if let Some(dir) = current_dir {
        command.current_dir(dir);
    }
    command
        .output()
        .with_context(|| format!("running restic {args:?}"))
}

fn run_restic(
    location: &FixtureLocation,
    work_dir: &Path,
    namespace: &str,
    password: &str,
    args: &[&str],
    current_dir: Option<&Path>,
) -> anyhow::Result<Vec<u8>> {
    let output = run_restic_raw(location, work_dir, namespace, password, args, current_dir)?;
    ensure!(
        output.status.success(),
        "restic {args:?} for namespace {namespace} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output.stdout)
}

/// `restic backup .` inside `dir` with Velero's host and tags; returns (snapshot id, bytes).
fn velero_restic_backup(
    location: &FixtureLocation,
    work_dir: &Path,
    password: &str,
    dir: &Path,
    snapshot_tags: &BTreeMap<String, String>,
) -> anyhow::Result<(String, u64)> {
    let namespace = snapshot_tags
        .get(tags::NAMESPACE)
        .context("the ns tag is set")?
        .clone();
    let tag_args: Vec<String> = snapshot_tags
        .iter()
        .map(|(key, value)| format!("--tag={key}={value}"))
        .collect();
    let mut args = vec!["backup", "."];
    args.extend(tag_args.iter().map(String::as_str));
    args.extend(["--host=velero", "--json"]);
    let stdout = run_restic(location, work_dir, &namespace, password, &args, Some(dir))?;
    // restic prints status lines then one summary object.
    for line in String::from_utf8_lossy(&stdout).lines().rev() {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if message["message_type"] == "summary" {
            // Velero recorded the 8-character short id; restic 0.14 prints that, newer
            // versions the full id.
            let id: String = message["snapshot_id"]
                .as_str()
                .context("summary has snapshot_id")?
                .chars()
                .take(8)
                .collect();
            let bytes = message["total_bytes_processed"].as_u64().unwrap_or(0);
            return Ok((id, bytes));
        }
    }
    bail!(
        "restic backup printed no summary: {}",
        String::from_utf8_lossy(&stdout)
    )
}

fn init_repository(
    location: &FixtureLocation,
    work_dir: &Path,
    namespace: &str,
    password: &str,
) -> anyhow::Result<()> {
    run_restic(location, work_dir, namespace, password, &["init"], None).map(|_| ())
}

/// Where the kubelet kept the volume on the node, which Velero recorded as `status.path`.
fn volume_dir(host_pods: &Path, pod_uid: &str, volume: &str, pv: Option<&str>) -> PathBuf {
    let volumes = host_pods.join(pod_uid).join("volumes");
    match pv {
        Some(pv) => volumes.join("kubernetes.io~csi").join(pv).join("mount"),
        None => volumes.join("kubernetes.io~empty-dir").join(volume),
    }
}

fn timestamp(base: DateTime<Utc>, seconds: i64) -> DateTime<Utc> {
    base + ChronoDuration::seconds(seconds)
}

/// Writes a complete Velero-restic-era backup named `backup_name` of namespaces `foo` (pod
/// `sample`: `pvc-volume` on PVC `sample-pvc` bound to PV `pv-foo-sample`, and `emptydir-volume`)
/// and `bar` (pod `web`: `www`) into `location`, with fake volume directories and restic's
/// cache under `work_dir`. Repositories are created if missing, so a second backup into the
/// same location adds snapshots to the same repositories, as Velero did.
pub async fn generate(
    location: &FixtureLocation,
    work_dir: &Path,
    backup_name: &str,
    era: VeleroEra,
) -> anyhow::Result<VeleroFixture> {
    layout::validate_backup_name(backup_name)?;
    let store = location.object_store()?;
    let host_pods = work_dir.join(backup_name).join("host_pods");
    let backup_uid = fake_uid(&format!("backup/{backup_name}"));
    let started = Utc
        .with_ymd_and_hms(2023, 3, 1, 2, 0, 0)
        .single()
        .context("fixed start time")?;

    let specs = fixture_volumes();
    let mut volumes = Vec::new();
    for spec in &specs {
        let pod_uid = fake_uid(&format!("pod/{}/{}", spec.namespace, spec.pod));
        let claim = spec.claim.map(|(pvc, pv)| {
            (
                pvc.to_string(),
                fake_uid(&format!("pvc/{}/{pvc}", spec.namespace)),
                pv.to_string(),
            )
        });
        let dir = volume_dir(
            &host_pods,
            &pod_uid,
            spec.volume,
            claim.as_ref().map(|(_, _, pv)| pv.as_str()),
        );
        let mut files = BTreeMap::new();
        for (relative, data) in &spec.files {
            let path = dir.join(relative);
            std::fs::create_dir_all(path.parent().context("file has a parent")?)?;
            std::fs::write(&path, data)?;
            files.insert(relative.to_string(), data.clone());
        }
        volumes.push(FixtureVolume {
            namespace: spec.namespace.to_string(),
            pod: spec.pod.to_string(),
            pod_uid,
            volume: spec.volume.to_string(),
            claim,
            dir,
            files,
            snapshot_id: String::new(),
            bytes: 0,
        });
    }

    let mut namespaces: Vec<String> = volumes.iter().map(|v| v.namespace.clone()).collect();
    namespaces.dedup();
    for namespace in &namespaces {
        ensure_repository(location, work_dir, namespace, STATIC_PASSWORD)?;
    }

    let mut pod_volume_backups = Vec::new();
    let mut log_lines = vec![
        format!(
            "time=\"{}\" level=info msg=\"Setting up backup log\" backup={VELERO_NAMESPACE}/{backup_name} logSource=\"pkg/controller/backup_controller.go:599\"",
            started.to_rfc3339()
        ),
        format!(
            "time=\"{}\" level=info msg=\"Starting backup\" backup={VELERO_NAMESPACE}/{backup_name} logSource=\"pkg/backup/backup.go:243\"",
            started.to_rfc3339()
        ),
    ];
    for (index, volume) in volumes.iter_mut().enumerate() {
        let mut snapshot_tags = BTreeMap::from([
            (tags::BACKUP.to_string(), backup_name.to_string()),
            (tags::BACKUP_UID.to_string(), backup_uid.clone()),
            (tags::NAMESPACE.to_string(), volume.namespace.clone()),
            (tags::POD.to_string(), volume.pod.clone()),
            (tags::POD_UID.to_string(), volume.pod_uid.clone()),
            (tags::VOLUME.to_string(), volume.volume.clone()),
        ]);
        if let Some((_, pvc_uid, _)) = &volume.claim {
            snapshot_tags.insert(tags::PVC_UID.to_string(), pvc_uid.clone());
        }
        let (snapshot_id, bytes) = velero_restic_backup(
            location,
            work_dir,
            STATIC_PASSWORD,
            &volume.dir,
            &snapshot_tags,
        )?;
        volume.snapshot_id = snapshot_id.clone();
        volume.bytes = bytes;

        let suffix: String = fake_uid(&format!("{backup_name}/{index}"))
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(5)
            .collect();
        let mut pvb = PodVolumeBackup::new(format!("{backup_name}-{suffix}"), VELERO_NAMESPACE);
        pvb.metadata.uid = Some(fake_uid(&format!("pvb/{backup_name}/{index}")));
        pvb.metadata
            .extra
            .insert("generateName".into(), json!(format!("{backup_name}-")));
        pvb.metadata.extra.insert(
            "ownerReferences".into(),
            json!([{"apiVersion": "velero.io/v1", "kind": "Backup", "name": backup_name,
                    "uid": backup_uid, "controller": true}]),
        );
        pvb.metadata.labels.insert(
            format::pod_volume_backup::BACKUP_NAME_LABEL.into(),
            backup_name.into(),
        );
        pvb.metadata.labels.insert(
            format::pod_volume_backup::BACKUP_UID_LABEL.into(),
            backup_uid.clone(),
        );
        // Velero's `newPodVolumeBackup` marks a PVC's volume with its uid (label) and name
        // (annotation, which its restore looks for).
        if let Some((pvc, pvc_uid, _)) = &volume.claim {
            pvb.metadata.labels.insert(
                format::pod_volume_backup::PVC_UID_LABEL.into(),
                pvc_uid.clone(),
            );
            pvb.metadata.annotations.insert(
                format::pod_volume_backup::PVC_NAME_ANNOTATION.into(),
                pvc.clone(),
            );
        }
        pvb.spec.node = NODE.into();
        pvb.spec.pod = format::PodReference {
            kind: "Pod".into(),
            namespace: volume.namespace.clone(),
            name: volume.pod.clone(),
            uid: volume.pod_uid.clone(),
            extra: Default::default(),
        };
        pvb.spec.volume = volume.volume.clone();
        pvb.spec.backup_storage_location = "default".into();
        pvb.spec.repo_identifier = location.restic_repository(&volume.namespace);
        if era == VeleroEra::FsBackupRestic {
            pvb.spec.uploader_type = Some(format::pod_volume_backup::UPLOADER_RESTIC.into());
        }
        pvb.spec.tags = snapshot_tags;
        pvb.status.phase = Some(PodVolumeBackupPhase::Completed);
        pvb.status.path = volume.dir.display().to_string();
        pvb.status.snapshot_id = snapshot_id.clone();
        pvb.status.start_timestamp = Some(timestamp(started, 5 + 10 * index as i64));
        pvb.status.completion_timestamp = Some(timestamp(started, 9 + 10 * index as i64));
        pvb.status.progress = Some(PodVolumeOperationProgress {
            total_bytes: bytes,
            bytes_done: bytes,
            extra: Default::default(),
        });
        pod_volume_backups.push(pvb);
        log_lines.push(format!(
            "time=\"{}\" level=info msg=\"Completed pod volume backup\" backup={VELERO_NAMESPACE}/{backup_name} namespace={} pod={} volume={} snapshotID={snapshot_id} logSource=\"pkg/podvolume/backupper.go:290\"",
            timestamp(started, 9 + 10 * index as i64).to_rfc3339(),
            volume.namespace, volume.pod, volume.volume,
        ));
    }
    let completed = timestamp(started, 60);
    log_lines.push(format!(
        "time=\"{}\" level=info msg=\"Backup completed\" backup={VELERO_NAMESPACE}/{backup_name} logSource=\"pkg/controller/backup_controller.go:777\"",
        completed.to_rfc3339()
    ));

    let resources = fixture_resources(&volumes)?;
    let backup = fixture_backup(
        backup_name,
        &backup_uid,
        era,
        started,
        completed,
        &resources,
    );
    let logs = log_lines.join("\n") + "\n";

    // Written with the crate's encoders but without a stowage file: this is Velero's backup.
    put(
        &*store,
        &layout::pod_volume_backups_key(backup_name),
        format::codec::encode_json_gz(&pod_volume_backups)?,
    )
    .await?;
    put(
        &*store,
        &layout::resources_key(backup_name),
        resources.to_tar_gz()?,
    )
    .await?;
    put(
        &*store,
        &layout::resource_list_key(backup_name),
        format::codec::encode_json_gz(&resources.resource_list())?,
    )
    .await?;
    put(
        &*store,
        &layout::logs_key(backup_name),
        format::codec::encode_logs(&logs),
    )
    .await?;
    put(
        &*store,
        &layout::backup_record_key(backup_name),
        format::codec::encode_json(&backup)?,
    )
    .await?;

    Ok(VeleroFixture {
        location: location.clone(),
        backup_name: backup_name.to_string(),
        backup_uid,
        era,
        volumes,
        backup,
        pod_volume_backups,
        resources,
        logs,
        work_dir: work_dir.to_path_buf(),
    })
}

fn ensure_repository(
    location: &FixtureLocation,
    work_dir: &Path,
    namespace: &str,
    password: &str,
) -> anyhow::Result<()> {
    let probe = run_restic_raw(
        location,
        work_dir,
        namespace,
        password,
        &["cat", "config"],
        None,
    )?;
    if probe.status.success() {
        return Ok(());
    }
    init_repository(location, work_dir, namespace, password)
}

async fn put(store: &dyn ObjectStore, key: &str, data: Vec<u8>) -> anyhow::Result<()> {
    store
        .put(&StorePath::from(key), PutPayload::from(data))
        .await
        .with_context(|| format!("writing {key}"))?;
    Ok(())
}

fn fixture_backup(
    name: &str,
    uid: &str,
    era: VeleroEra,
    started: DateTime<Utc>,
    completed: DateTime<Utc>,
    resources: &BackupResources,
) -> Backup {
    let mut backup = Backup::new(name, VELERO_NAMESPACE);
    backup.metadata.uid = Some(uid.to_string());
    backup.metadata.resource_version = Some("48213".into());
    backup.metadata.generation = Some(7);
    backup.metadata.creation_timestamp = Some(started);
    backup.metadata.labels = BTreeMap::from([(
        "velero.io/storage-location".to_string(),
        "default".to_string(),
    )]);
    backup.metadata.annotations = BTreeMap::from([
        (
            "velero.io/source-cluster-k8s-gitversion".to_string(),
            "v1.25.6".to_string(),
        ),
        (
            "velero.io/source-cluster-k8s-major-version".to_string(),
            "1".to_string(),
        ),
        (
            "velero.io/source-cluster-k8s-minor-version".to_string(),
            "25".to_string(),
        ),
        (
            "velero.io/resource-timeout".to_string(),
            "10m0s".to_string(),
        ),
    ]);
    backup.spec.included_namespaces = vec!["foo".into(), "bar".into()];
    backup.spec.ttl = Some("720h0m0s".into());
    backup.spec.storage_location = Some("default".into());
    match era {
        VeleroEra::Restic19 => backup.spec.default_volumes_to_restic = Some(false),
        VeleroEra::FsBackupRestic => backup.spec.default_volumes_to_fs_backup = Some(false),
    }
    backup.spec.extra.insert("hooks".into(), json!({}));
    backup.spec.extra.insert("metadata".into(), json!({}));
    backup
        .spec
        .extra
        .insert("snapshotVolumes".into(), json!(false));
    backup
        .spec
        .extra
        .insert("volumeSnapshotLocations".into(), json!(["default"]));
    backup.status.phase = Some(BackupPhase::Completed);
    backup.status.start_timestamp = Some(started);
    backup.status.completion_timestamp = Some(completed);
    backup.status.expiration = Some(started + ChronoDuration::hours(720));
    let items = resources.objects.len();
    backup.status.extra.insert(
        "progress".into(),
        json!({"totalItems": items, "itemsBackedUp": items}),
    );
    backup
}

fn fixture_resources(volumes: &[FixtureVolume]) -> anyhow::Result<BackupResources> {
    let mut resources = BackupResources::new();
    let mut pods: BTreeMap<(String, String), Vec<&FixtureVolume>> = BTreeMap::new();
    for volume in volumes {
        pods.entry((volume.namespace.clone(), volume.pod.clone()))
            .or_default()
            .push(volume);
    }
    let mut namespaces: Vec<&str> = volumes.iter().map(|v| v.namespace.as_str()).collect();
    namespaces.dedup();
    for namespace in namespaces {
        resources.insert_object(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace, "uid": fake_uid(&format!("ns/{namespace}")),
                         "labels": {"kubernetes.io/metadata.name": namespace}},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"}
        }))?;
    }
    for ((namespace, pod), pod_volumes) in &pods {
        let annotation: Vec<&str> = pod_volumes.iter().map(|v| v.volume.as_str()).collect();
        let spec_volumes: Vec<Value> = pod_volumes
            .iter()
            .map(|v| match &v.claim {
                Some((pvc, _, _)) => json!({"name": v.volume, "persistentVolumeClaim": {"claimName": pvc}}),
                None => json!({"name": v.volume, "emptyDir": {}}),
            })
            .chain(std::iter::once(json!({"name": "kube-api-access-x7k2p", "projected": {
                "defaultMode": 420, "sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}})))
            .collect();
        let mounts: Vec<Value> = pod_volumes
            .iter()
            // The same mount points as the seeded example cluster's pod.
            .map(|v| {
                let mount_path = match v.volume.as_str() {
                    "pvc-volume" => "/data".to_string(),
                    "emptydir-volume" => "/cache".to_string(),
                    other => format!("/{other}"),
                };
                json!({"name": v.volume, "mountPath": mount_path})
            })
            .collect();
        // The controllers behind the pod, as a Velero backup of the namespace holds them.
        let deployment_uid = fake_uid(&format!("deploy/{namespace}/{pod}"));
        let replica_set = format!("{pod}-5d8f7b9c4d");
        let template = json!({
            "metadata": {"labels": {"app": pod, "pod-template-hash": "5d8f7b9c4d"}},
            "spec": {"containers": [{"name": "app", "image": "busybox",
                                     "command": ["sleep", "infinity"], "volumeMounts": mounts}],
                     "volumes": spec_volumes}
        });
        resources.insert_object(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": pod, "namespace": namespace, "uid": deployment_uid,
                         "labels": {"app": pod}, "generation": 1, "resourceVersion": "4711",
                         "annotations": {"deployment.kubernetes.io/revision": "1"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": pod}},
                     "template": {"metadata": {"labels": {"app": pod}}, "spec": template["spec"]},
                     "strategy": {"type": "RollingUpdate"}},
            "status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1,
                       "observedGeneration": 1}
        }))?;
        resources.insert_object(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": replica_set, "namespace": namespace,
                         "uid": fake_uid(&format!("rs/{namespace}/{pod}")),
                         "labels": {"app": pod, "pod-template-hash": "5d8f7b9c4d"},
                         "resourceVersion": "4712",
                         "annotations": {"deployment.kubernetes.io/revision": "1"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                             "name": pod, "uid": deployment_uid,
                             "controller": true, "blockOwnerDeletion": true}]},
            "spec": {"replicas": 1,
                     "selector": {"matchLabels": {"app": pod, "pod-template-hash": "5d8f7b9c4d"}},
                     "template": template},
            "status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1}
        }))?;
        resources.insert_object(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": pod, "namespace": namespace, "uid": pod_volumes[0].pod_uid,
                "labels": {"app": pod, "pod-template-hash": "5d8f7b9c4d"},
                "annotations": {"backup.velero.io/backup-volumes": annotation.join(",")},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": replica_set, "uid": fake_uid(&format!("rs/{namespace}/{pod}")),
                    "controller": true, "blockOwnerDeletion": true}]
            },
            "spec": {
                "nodeName": NODE,
                "containers": [{"name": "app", "image": "busybox",
                                "command": ["sleep", "infinity"], "volumeMounts": mounts}],
                "volumes": spec_volumes,
                "restartPolicy": "Always",
                "serviceAccountName": "default"
            },
            "status": {"phase": "Running", "hostIP": "10.0.0.11", "podIP": "10.244.1.7"}
        }))?;
    }
    for volume in volumes {
        let Some((pvc, pvc_uid, pv)) = &volume.claim else {
            continue;
        };
        resources.insert_object(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": pvc, "namespace": volume.namespace, "uid": pvc_uid,
                         "annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                     "storageClassName": "standard", "volumeMode": "Filesystem", "volumeName": pv},
            "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}}
        }))?;
        resources.insert_object(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": pv, "uid": fake_uid(&format!("pv/{pv}"))},
            "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"},
                     "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                  "name": pvc, "namespace": volume.namespace, "uid": pvc_uid},
                     "csi": {"driver": "hostpath.csi.k8s.io", "volumeHandle": fake_uid(&format!("handle/{pv}"))},
                     "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "standard",
                     "volumeMode": "Filesystem"},
            "status": {"phase": "Bound"}
        }))?;
    }
    Ok(resources)
}

/// How a corrupted copy is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// `velero-backup.json` cut off mid-object.
    BadBackupJson,
    /// `<name>-podvolumebackups.json.gz` is valid gzip of text that is not JSON.
    BadPodVolumeBackupsJson,
    /// `<name>-podvolumebackups.json.gz` cut in half.
    TruncatedPodVolumeBackupsGzip,
    /// `<name>.tar.gz` is valid gzip of bytes that are not a tar archive.
    TarballNotTar,
    /// `<name>.tar.gz` cut in half.
    TruncatedTarball,
    /// `<name>-logs.gz` cut in half.
    TruncatedLogs,
}

impl Corruption {
    pub const ALL: [Corruption; 6] = [
        Corruption::BadBackupJson,
        Corruption::BadPodVolumeBackupsJson,
        Corruption::TruncatedPodVolumeBackupsGzip,
        Corruption::TarballNotTar,
        Corruption::TruncatedTarball,
        Corruption::TruncatedLogs,
    ];

    /// A backup name for the copy (`<base>-<what is broken>`).
    pub fn copy_name(self, base: &str) -> String {
        let what = match self {
            Corruption::BadBackupJson => "bad-record",
            Corruption::BadPodVolumeBackupsJson => "bad-pvb-json",
            Corruption::TruncatedPodVolumeBackupsGzip => "truncated-pvb",
            Corruption::TarballNotTar => "bad-tarball",
            Corruption::TruncatedTarball => "truncated-tarball",
            Corruption::TruncatedLogs => "truncated-logs",
        };
        format!("{base}-{what}")
    }

    /// The key of the broken file in backup `name`.
    pub fn broken_key(self, name: &str) -> String {
        match self {
            Corruption::BadBackupJson => layout::backup_record_key(name),
            Corruption::BadPodVolumeBackupsJson | Corruption::TruncatedPodVolumeBackupsGzip => {
                layout::pod_volume_backups_key(name)
            }
            Corruption::TarballNotTar | Corruption::TruncatedTarball => layout::resources_key(name),
            Corruption::TruncatedLogs => layout::logs_key(name),
        }
    }
}

/// A backup the fixture broke on purpose.
#[derive(Debug, Clone)]
pub struct CorruptedBackup {
    pub name: String,
    pub corruption: Corruption,
    /// The file that does not parse.
    pub broken_key: String,
}

/// Copies backup `source` to `target` (renaming the files and the record's name, the way
/// Velero names them), leaving the source untouched.
pub async fn copy_backup(
    store: &dyn ObjectStore,
    source: &str,
    target: &str,
) -> anyhow::Result<()> {
    let mut backup = format::read_backup_record(store, source).await?;
    backup.metadata.name = target.to_string();
    for (from, to) in [
        (
            layout::pod_volume_backups_key(source),
            layout::pod_volume_backups_key(target),
        ),
        (layout::resources_key(source), layout::resources_key(target)),
        (
            layout::resource_list_key(source),
            layout::resource_list_key(target),
        ),
        (layout::logs_key(source), layout::logs_key(target)),
    ] {
        let data = store
            .get(&StorePath::from(from.as_str()))
            .await?
            .bytes()
            .await?;
        put(store, &to, data.to_vec()).await?;
    }
    put(
        store,
        &layout::backup_record_key(target),
        format::codec::encode_json(&backup)?,
    )
    .await
}

/// Writes a copy of the fixture's backup with `corruption` applied to one file.
pub async fn write_corrupted_copy(
    fixture: &VeleroFixture,
    corruption: Corruption,
) -> anyhow::Result<CorruptedBackup> {
    let store = fixture.object_store();
    let name = corruption.copy_name(&fixture.backup_name);
    copy_backup(&*store, &fixture.backup_name, &name).await?;
    let key = corruption.broken_key(&name);
    let original = store
        .get(&StorePath::from(key.as_str()))
        .await?
        .bytes()
        .await?;
    let half = |data: &[u8]| data[..data.len() / 2].to_vec();
    let broken = match corruption {
        Corruption::BadBackupJson => original[..original.len() / 3].to_vec(),
        Corruption::BadPodVolumeBackupsJson => format::codec::gzip(
            b"[{\"kind\": \"PodVolumeBackup\", \"spec\": {\"volume\": pvc-volume}}]",
        ),
        Corruption::TarballNotTar => {
            format::codec::gzip(&b"not a tar archive, just text in a gzip stream\n".repeat(32))
        }
        Corruption::TruncatedPodVolumeBackupsGzip
        | Corruption::TruncatedTarball
        | Corruption::TruncatedLogs => half(&original),
    };
    put(&*store, &key, broken).await?;
    Ok(CorruptedBackup {
        name,
        corruption,
        broken_key: key,
    })
}

/// Writes one corrupted copy per [`Corruption`].
pub async fn write_corrupted_copies(
    fixture: &VeleroFixture,
) -> anyhow::Result<Vec<CorruptedBackup>> {
    let mut out = Vec::new();
    for corruption in Corruption::ALL {
        out.push(write_corrupted_copy(fixture, corruption).await?);
    }
    Ok(out)
}

/// Writes backup `backup_name` of a one-volume pod in `namespace` whose repository was created
/// with `password` instead of the static one (the operator replaced the Secret's key and the
/// new key is not known to the reader).
pub async fn write_wrong_password_backup(
    fixture: &VeleroFixture,
    backup_name: &str,
    namespace: &str,
    password: &str,
) -> anyhow::Result<()> {
    write_single_volume_backup(fixture, backup_name, namespace, password).await
}

/// Writes backup `backup_name` of a one-volume pod in `namespace`, then deletes the
/// namespace's repository `restic/<namespace>`, as if someone had cleaned the bucket up.
pub async fn write_missing_repository_backup(
    fixture: &VeleroFixture,
    backup_name: &str,
    namespace: &str,
) -> anyhow::Result<()> {
    write_single_volume_backup(fixture, backup_name, namespace, STATIC_PASSWORD).await?;
    let store = fixture.object_store();
    let prefix = StorePath::from(layout::restic_repository_key(namespace).as_str());
    let keys: Vec<StorePath> = store
        .list(Some(&prefix))
        .map_ok(|meta| meta.location)
        .try_collect()
        .await?;
    for key in keys {
        store.delete(&key).await?;
    }
    if let FixtureLocation::Local { root } = &fixture.location {
        let dir = root.join(layout::restic_repository_key(namespace));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
    }
    Ok(())
}

async fn write_single_volume_backup(
    fixture: &VeleroFixture,
    backup_name: &str,
    namespace: &str,
    password: &str,
) -> anyhow::Result<()> {
    layout::validate_backup_name(backup_name)?;
    let location = &fixture.location;
    let work_dir = &fixture.work_dir;
    let store = fixture.object_store();
    let pod = "app";
    let pod_uid = fake_uid(&format!("pod/{namespace}/{pod}"));
    let backup_uid = fake_uid(&format!("backup/{backup_name}"));
    let dir = volume_dir(
        &work_dir.join(backup_name).join("host_pods"),
        &pod_uid,
        "data",
        None,
    );
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("data.txt"), format!("data of {namespace}/{pod}\n"))?;
    ensure_repository(location, work_dir, namespace, password)?;
    let snapshot_tags = BTreeMap::from([
        (tags::BACKUP.to_string(), backup_name.to_string()),
        (tags::BACKUP_UID.to_string(), backup_uid.clone()),
        (tags::NAMESPACE.to_string(), namespace.to_string()),
        (tags::POD.to_string(), pod.to_string()),
        (tags::POD_UID.to_string(), pod_uid.clone()),
        (tags::VOLUME.to_string(), "data".to_string()),
    ]);
    let (snapshot_id, bytes) =
        velero_restic_backup(location, work_dir, password, &dir, &snapshot_tags)?;
    let volume = FixtureVolume {
        namespace: namespace.to_string(),
        pod: pod.to_string(),
        pod_uid: pod_uid.clone(),
        volume: "data".to_string(),
        claim: None,
        dir: dir.clone(),
        files: BTreeMap::new(),
        snapshot_id: snapshot_id.clone(),
        bytes,
    };
    let mut pvb = PodVolumeBackup::new(format!("{backup_name}-q8z2m"), VELERO_NAMESPACE);
    pvb.metadata.labels.insert(
        format::pod_volume_backup::BACKUP_NAME_LABEL.into(),
        backup_name.into(),
    );
    pvb.spec.node = NODE.into();
    pvb.spec.pod = format::PodReference {
        kind: "Pod".into(),
        namespace: namespace.into(),
        name: pod.into(),
        uid: pod_uid,
        extra: Default::default(),
    };
    pvb.spec.volume = "data".into();
    pvb.spec.backup_storage_location = "default".into();
    pvb.spec.repo_identifier = location.restic_repository(namespace);
    pvb.spec.tags = snapshot_tags;
    pvb.status.phase = Some(PodVolumeBackupPhase::Completed);
    pvb.status.path = dir.display().to_string();
    pvb.status.snapshot_id = snapshot_id;
    pvb.status.progress = Some(PodVolumeOperationProgress {
        total_bytes: bytes,
        bytes_done: bytes,
        extra: Default::default(),
    });
    let started = fixture
        .backup
        .status
        .start_timestamp
        .unwrap_or_else(Utc::now);
    let resources = fixture_resources(std::slice::from_ref(&volume))?;
    let mut backup = fixture_backup(
        backup_name,
        &backup_uid,
        fixture.era,
        started,
        timestamp(started, 30),
        &resources,
    );
    backup.spec.included_namespaces = vec![namespace.to_string()];
    put(
        &*store,
        &layout::pod_volume_backups_key(backup_name),
        format::codec::encode_json_gz(&vec![pvb])?,
    )
    .await?;
    put(
        &*store,
        &layout::resources_key(backup_name),
        resources.to_tar_gz()?,
    )
    .await?;
    put(
        &*store,
        &layout::resource_list_key(backup_name),
        format::codec::encode_json_gz(&resources.resource_list())?,
    )
    .await?;
    put(
        &*store,
        &layout::logs_key(backup_name),
        format::codec::encode_logs(
            "time=\"2023-03-01T02:00:00Z\" level=info msg=\"Backup completed\"\n",
        ),
    )
    .await?;
    put(
        &*store,
        &layout::backup_record_key(backup_name),
        format::codec::encode_json(&backup)?,
    )
    .await
}

/// Every object key and content under `backups/<name>/`, to prove later that nothing changed.
pub async fn snapshot_backup_objects(
    store: &dyn ObjectStore,
    name: &str,
) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for key in format::list_backup_keys(store, name).await? {
        let data = store
            .get(&StorePath::from(key.as_str()))
            .await?
            .bytes()
            .await?;
        out.insert(key, data.to_vec());
    }
    Ok(out)
}
