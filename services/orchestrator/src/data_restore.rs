//! Data-only restores (`RestoreSpec.data_only`): each selected volume's snapshot is written
//! into a claim that exists now; no pod or other object of the backup is created. The target
//! is the volume's own claim (in its namespace after mapping) or `target_pvc`. When a running
//! pod mounts the claim, the agent on its node restores into that pod's volume; when none
//! does, a restore pod that only mounts the claim is started, the agent restores into it, and
//! it is deleted afterwards, also when the volume fails or the restore is cancelled.
//! Also where a restore's snapshots are chosen before it starts (`as_of`, for both kinds).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
};

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use stowage_proto::v1::{
    Backup, PodVolumeBackup, PodVolumeRef, PodVolumeRestore, Restore, RestoreSpec, VolumePhase,
    VolumeSource,
};
use tracing::field;

use crate::{
    as_of,
    backup::is_terminal,
    deps::Deps,
    engine,
    error::{Error, Result, validate_namespace},
    ports::ClusterPort,
    restore as full,
    state::RestoreEntry,
};

/// Label on a data-only restore's own pods; its value is the restore's name.
pub const RESTORE_POD_LABEL: &str = "stowage.io/data-restore";
/// The restore pod's one container, which only keeps the claim mounted.
pub const HOLD_CONTAINER: &str = "hold";
/// The claim's volume in the restore pod.
pub const RESTORE_POD_VOLUME: &str = "target";

/// One selected volume and where its data goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The backup's volume; its snapshot is the one restored (the as-of choice, if any).
    pub source: PodVolumeBackup,
    /// The backup the snapshot was taken by.
    pub backup: String,
    pub namespace: String,
    pub claim: String,
}

/// What a restore runs, decided before it starts.
pub enum Planned {
    /// The backup's pods and volumes recreated, with the snapshots chosen (as-of applied).
    Full(Box<Backup>),
    /// Data only, into these claims.
    DataOnly(Vec<Target>),
}

fn invalid(what: &'static str, value: &str, reason: impl Into<String>) -> Error {
    Error::InvalidArgument {
        what,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// `namespace/pod/volume`, as `volumes` names a volume of the backup.
pub fn parse_volume(text: &str) -> Result<(String, String, String)> {
    let parts: Vec<&str> = text.split('/').collect();
    match parts[..] {
        [namespace, pod, volume] if !pod.is_empty() && !volume.is_empty() => {
            validate_namespace(namespace)?;
            Ok((namespace.into(), pod.into(), volume.into()))
        }
        _ => Err(invalid("volume", text, "expected namespace/pod/volume")),
    }
}

/// `namespace/claim`, as `target_pvc` names a claim.
pub fn parse_claim(text: &str) -> Result<(String, String)> {
    match text.split_once('/') {
        Some((namespace, claim)) if !claim.is_empty() && !claim.contains('/') => {
            validate_namespace(namespace)?;
            stowage_contract::names::dns_subdomain("target_pvc", claim)?;
            Ok((namespace.into(), claim.into()))
        }
        _ => Err(invalid("target_pvc", text, "expected namespace/claim")),
    }
}

/// Fields that mean something for data-only restores only.
fn refuse_data_only_fields(spec: &RestoreSpec) -> Result<()> {
    if !spec.volumes.is_empty() {
        return Err(invalid(
            "volumes",
            &spec.volumes.join(","),
            "selects volumes of a data-only restore only",
        ));
    }
    if !spec.target_pvc.is_empty() {
        return Err(invalid(
            "target_pvc",
            &spec.target_pvc,
            "applies to data-only restores only",
        ));
    }
    if spec.overwrite_policy != 0 {
        return Err(invalid(
            "overwrite_policy",
            &spec.overwrite_policy.to_string(),
            "applies to data-only restores only: a recreated volume starts empty",
        ));
    }
    Ok(())
}

/// The volumes of a data-only restore of `backup` and the claims they go to: every completed
/// volume (of the included namespaces), or those `spec.volumes` names; each into its own
/// claim in its namespace after mapping, or into `target_pvc` when exactly one is selected.
/// `manifests` (the backup's pods) say which claim a volume is when its record does not.
pub fn select(backup: &Backup, spec: &RestoreSpec, manifests: &[Value]) -> Result<Vec<Target>> {
    let volumes: Vec<&PodVolumeBackup> = backup
        .status
        .iter()
        .flat_map(|status| &status.volumes)
        .collect();
    let completed =
        |v: &PodVolumeBackup| v.phase == VolumePhase::Completed as i32 && !v.snapshot_id.is_empty();
    let mut selected: Vec<PodVolumeBackup> = Vec::new();
    if spec.volumes.is_empty() {
        selected.extend(
            volumes
                .iter()
                .filter(|v| completed(v))
                .filter(|v| {
                    spec.included_namespaces.is_empty()
                        || v.volume
                            .as_ref()
                            .is_some_and(|r| spec.included_namespaces.contains(&r.namespace))
                })
                .map(|v| (*v).clone()),
        );
        if selected.is_empty() {
            return Err(Error::VolumeNotFound(format!(
                "no completed volume to restore in backup {}",
                backup.name
            )));
        }
    } else {
        let mut seen = BTreeSet::new();
        for text in &spec.volumes {
            let wanted = parse_volume(text)?;
            if !seen.insert(wanted.clone()) {
                continue;
            }
            let found = volumes.iter().find(|v| {
                v.volume.as_ref().is_some_and(|r| {
                    (&r.namespace, &r.pod_name, &r.volume_name) == (&wanted.0, &wanted.1, &wanted.2)
                })
            });
            match found {
                Some(volume) if completed(volume) => selected.push((*volume).clone()),
                Some(_) => {
                    return Err(Error::VolumeNotFound(format!(
                        "volume {text} has no completed snapshot in backup {}",
                        backup.name
                    )));
                }
                None => {
                    return Err(Error::VolumeNotFound(format!(
                        "volume {text} is not in backup {}",
                        backup.name
                    )));
                }
            }
        }
    }
    let target = if spec.target_pvc.is_empty() {
        None
    } else {
        let claim = parse_claim(&spec.target_pvc)?;
        if selected.len() != 1 {
            return Err(invalid(
                "target_pvc",
                &spec.target_pvc,
                format!(
                    "one claim takes exactly one volume, and {} are selected (choose one with --volumes)",
                    selected.len()
                ),
            ));
        }
        Some(claim)
    };
    let mut targets = Vec::new();
    let mut claims = BTreeMap::new();
    for volume in selected {
        let name = as_of::volume_name(&volume);
        let (namespace, claim) = match &target {
            Some((namespace, claim)) => (namespace.clone(), claim.clone()),
            None => {
                let reference = volume.volume.clone().unwrap_or_default();
                let claim = claim_of(&reference, manifests).ok_or_else(|| {
                    invalid(
                        "volume",
                        &name,
                        "it is not a PersistentVolumeClaim (an emptyDir has no claim to \
                         restore into): give a target claim with --target-pvc",
                    )
                })?;
                let namespace = spec
                    .namespace_mapping
                    .get(&reference.namespace)
                    .cloned()
                    .unwrap_or(reference.namespace);
                (namespace, claim)
            }
        };
        if let Some(other) = claims.insert((namespace.clone(), claim.clone()), name.clone()) {
            return Err(invalid(
                "volume",
                &name,
                format!("it would restore into claim {namespace}/{claim}, as {other} would"),
            ));
        }
        targets.push(Target {
            source: volume,
            backup: backup.name.clone(),
            namespace,
            claim,
        });
    }
    Ok(targets)
}

/// The claim a backed-up volume is, from its record or else from its pod's manifest.
fn claim_of(reference: &PodVolumeRef, manifests: &[Value]) -> Option<String> {
    if reference.source == VolumeSource::PersistentVolumeClaim as i32
        && !reference.pvc_name.is_empty()
    {
        return Some(reference.pvc_name.clone());
    }
    if reference.source != VolumeSource::Unspecified as i32 {
        return None;
    }
    let manifest = manifests.iter().find(|object| {
        object.get("kind").and_then(Value::as_str) == Some("Pod")
            && full::text(object, "/metadata/namespace") == reference.namespace
            && full::text(object, "/metadata/name") == reference.pod_name
    })?;
    match full::volume_in_manifest(manifest, &reference.volume_name) {
        (VolumeSource::PersistentVolumeClaim, claim) => claim,
        _ => None,
    }
}

/// Decides what a restore of `backup` runs, refusing bad input before anything runs:
/// `as_of` swaps each volume's snapshot for the last one of its identity at or before the
/// time; a data-only restore resolves its targets and checks every target claim exists and
/// is bound. Returns lines for the restore's log, which say where each snapshot comes from.
pub async fn plan(
    deps: &Deps,
    spec: &RestoreSpec,
    mut backup: Backup,
) -> Result<(Planned, Vec<String>)> {
    if !spec.data_only {
        refuse_data_only_fields(spec)?;
    }
    let mut notes = Vec::new();
    let volumes = backup
        .status
        .as_ref()
        .map(|status| status.volumes.clone())
        .unwrap_or_default();
    let chosen: Option<Vec<as_of::Chosen>> = match &spec.as_of {
        None => None,
        Some(time) => {
            let backups: Vec<Backup> = deps.index.backups().iter().map(|b| b.get()).collect();
            let wanted: Vec<PodVolumeBackup> = volumes
                .iter()
                .filter(|v| v.phase == VolumePhase::Completed as i32 && !v.snapshot_id.is_empty())
                .cloned()
                .collect();
            Some(as_of::choose(&wanted, &backups, time)?)
        }
    };
    if let (Some(chosen), Some(status)) = (&chosen, backup.status.as_mut()) {
        for pick in chosen {
            notes.push(format!(
                "volume {}: snapshot {} of backup {} (finished {}, the last at or before {})",
                as_of::volume_name(&pick.volume),
                pick.volume.snapshot_id,
                pick.backup,
                crate::backup::rfc3339(&pick.finished),
                spec.as_of
                    .as_ref()
                    .map(crate::backup::rfc3339)
                    .unwrap_or_default()
            ));
            if let Some(volume) = status.volumes.iter_mut().find(|v| {
                v.volume == pick.volume.volume
                    && v.phase == VolumePhase::Completed as i32
                    && !v.snapshot_id.is_empty()
            }) {
                *volume = pick.volume.clone();
            }
        }
    }
    if !spec.data_only {
        return Ok((Planned::Full(Box::new(backup)), notes));
    }
    let cluster = deps.cluster.as_ref().ok_or(Error::NoCluster("a restore"))?;
    let store = deps
        .store
        .as_ref()
        .ok_or_else(|| Error::Store("no storage location is configured".to_string()))?;
    // The pods and claims of the backup's tarball say which claim each volume used.
    let tarball = store.backup_tarball(&backup.name).await?;
    let manifests: Vec<Value> = tarball
        .pods()
        .chain(tarball.persistent_volume_claims())
        .map(|(_, manifest)| manifest.clone())
        .collect();
    let mut targets = select(&backup, spec, &manifests)?;
    for target in &mut targets {
        if let Some(pick) = chosen
            .iter()
            .flatten()
            .find(|pick| pick.volume.volume == target.source.volume)
        {
            target.backup = pick.backup.clone();
        }
        let what = format!("{}/{}", target.namespace, target.claim);
        let pvc = cluster
            .pvc(&target.namespace, &target.claim)
            .await?
            .ok_or_else(|| {
                Error::VolumeNotFound(format!(
                    "claim {what} (the target of volume {}) not found",
                    as_of::volume_name(&target.source)
                ))
            })?;
        let bound = pvc
            .spec
            .and_then(|spec| spec.volume_name)
            .is_some_and(|pv| !pv.is_empty());
        if !bound {
            return Err(Error::Precondition(format!(
                "claim {what} is not bound to a volume yet"
            )));
        }
        notes.push(format!(
            "volume {} goes into claim {what} (snapshot {} of backup {})",
            as_of::volume_name(&target.source),
            target.source.snapshot_id,
            target.backup
        ));
    }
    Ok((Planned::DataOnly(targets), notes))
}

/// The restore's volumes as it starts: one Pending per target, its pod not known yet.
pub fn pending_volumes(targets: &[Target]) -> Vec<PodVolumeRestore> {
    targets
        .iter()
        .map(|target| {
            let source = target.source.volume.clone().unwrap_or_default();
            PodVolumeRestore {
                volume: Some(PodVolumeRef {
                    namespace: target.namespace.clone(),
                    source: VolumeSource::PersistentVolumeClaim as i32,
                    pvc_name: target.claim.clone(),
                    ..Default::default()
                }),
                phase: VolumePhase::Pending as i32,
                snapshot_id: target.source.snapshot_id.clone(),
                source_namespace: source.namespace,
                repository: target.source.repository.clone(),
                ..Default::default()
            }
        })
        .collect()
}

/// Each target's volume name in the backup, which `[<volume>:]` in the path patterns names
/// (the record keeps only where each volume goes).
pub fn source_volumes(targets: &[Target]) -> Vec<String> {
    targets
        .iter()
        .map(|target| {
            target
                .source
                .volume
                .as_ref()
                .map(|r| r.volume_name.clone())
                .unwrap_or_default()
        })
        .collect()
}

/// Runs a data-only restore's volumes (`restore.rs` runs it to its end): all of them, or
/// when `resumed` (taken over from a previous orchestrator) those that had not ended, each
/// re-attached on its agent or else run.
pub(crate) async fn execute(
    run: &full::RunParts<'_>,
    source_volumes: Vec<String>,
    restore_pods: &Arc<RestorePods>,
    resumed: bool,
) -> Result<()> {
    let (deps, entry) = (run.deps, run.entry);
    let cluster = deps.cluster.as_ref().ok_or(Error::NoCluster("a restore"))?;
    let restore = entry.update(|restore| {
        restore.status.get_or_insert_with(Default::default).phase =
            stowage_proto::v1::RestorePhase::InProgress as i32;
    });
    full::persist(deps, entry, &restore).await;
    let volumes = restore
        .status
        .as_ref()
        .map(|s| s.volumes.clone())
        .unwrap_or_default();
    let indexes: Vec<usize> = (0..volumes.len())
        .filter(|&index| !resumed || !is_terminal(volumes[index].phase))
        .collect();
    let repositories = run.repositories(&indexes).await;
    let config = cluster.restore_helper_config().await?;
    let helper = full::helper_spec(&config, &deps.restore_helper, &restore.uid);
    let spec = restore.spec.clone().unwrap_or_default();
    let work = full::RestoreWork {
        volumes: run.volumes(repositories, resumed),
        place: Claims {
            source_volumes,
            cluster: cluster.clone(),
            overwrite_policy: spec.overwrite_policy,
            helper,
            restore_pods: restore_pods.clone(),
        },
    };
    engine::run_volumes(
        Arc::new(work),
        indexes,
        &deps.limits.run_limits(),
        run.control,
    )
    .await;
    Ok(())
}

/// Deletes the restore pods a data-only restore left when the orchestrator that ran it
/// stopped (recovery calls this for each unfinished restore): found by the restore's label in
/// the namespaces of its volumes; a pod without the label is never touched.
pub async fn delete_leftover_pods(deps: &Deps, entry: &RestoreEntry, restore: &Restore) {
    if !restore.spec.as_ref().is_some_and(|spec| spec.data_only) {
        return;
    }
    let Some(cluster) = &deps.cluster else {
        return;
    };
    let mut namespaces: Vec<String> = restore
        .status
        .iter()
        .flat_map(|status| &status.volumes)
        .filter_map(|volume| volume.volume.as_ref())
        .map(|reference| reference.namespace.clone())
        .collect();
    namespaces.sort();
    namespaces.dedup();
    let labels = BTreeMap::from([(RESTORE_POD_LABEL.to_string(), restore.name.clone())]);
    for namespace in namespaces {
        let pods = match cluster.pods(&namespace, &labels).await {
            Ok(pods) => pods,
            Err(error) => {
                entry.log(
                    "warning",
                    format!("listing restore pods in {namespace}: {error}"),
                );
                continue;
            }
        };
        let ours = pods
            .into_iter()
            .filter(|pod| is_restore_pod_of(pod, &restore.name));
        for pod in ours {
            let name = pod.metadata.name.unwrap_or_default();
            match cluster.delete_pod(&namespace, &name).await {
                Ok(()) => entry.log("info", format!("deleted restore pod {namespace}/{name}")),
                Err(error) => entry.log(
                    "warning",
                    format!("deleting restore pod {namespace}/{name}: {error}"),
                ),
            }
        }
    }
}

/// The restore pods a run started and has not deleted yet, by volume index.
#[derive(Default)]
pub struct RestorePods(Mutex<BTreeMap<usize, (String, String)>>);

impl RestorePods {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<usize, (String, String)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Deletes volume `index`'s restore pod, if it has one.
    async fn delete(&self, index: usize, cluster: &dyn ClusterPort, entry: &RestoreEntry) {
        let Some((namespace, name)) = self.lock().remove(&index) else {
            return;
        };
        match cluster.delete_pod(&namespace, &name).await {
            Ok(()) => entry.log("info", format!("deleted restore pod {namespace}/{name}")),
            Err(error) => {
                entry.log(
                    "warning",
                    format!("deleting restore pod {namespace}/{name}: {error}"),
                );
            }
        }
    }

    pub(crate) async fn delete_all(&self, cluster: &dyn ClusterPort, entry: &RestoreEntry) {
        let indexes: Vec<usize> = self.lock().keys().copied().collect();
        for index in indexes {
            self.delete(index, cluster, entry).await;
        }
    }
}

/// The restore pod for volume `index`: the claim mounted at `/data`, one container that only
/// holds it (the restore helper's image and resources, in its `--hold` mode), labelled with
/// the restore's name and owned by nothing.
pub fn restore_pod(
    helper: &Value,
    restore: &Restore,
    index: usize,
    namespace: &str,
    claim: &str,
) -> Result<Pod> {
    let uid: String = restore.uid.chars().filter(|c| *c != '-').take(10).collect();
    let mut container = helper.clone();
    container["name"] = json!(HOLD_CONTAINER);
    container["args"] = json!(["--hold", restore.uid]);
    container["volumeMounts"] = json!([{"name": RESTORE_POD_VOLUME, "mountPath": "/data"}]);
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("stowage-data-restore-{uid}-{index}"),
            "namespace": namespace,
            "labels": {
                RESTORE_POD_LABEL: restore.name,
                "app.kubernetes.io/managed-by": "stowage",
            },
        },
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [container],
            "volumes": [{"name": RESTORE_POD_VOLUME, "persistentVolumeClaim": {"claimName": claim}}],
        },
    }))
    .map_err(|error| Error::Failed(format!("restore pod manifest: {error}")))
}

/// Where a volume's data goes on the node: the pod, the node, and the volume's name in it.
struct Mount {
    pod: Pod,
    node: String,
    volume_name: String,
}

fn running_on_node(pod: &Pod) -> Option<String> {
    let node = pod
        .spec
        .as_ref()?
        .node_name
        .clone()
        .filter(|n| !n.is_empty())?;
    (pod.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(node)
}

/// Whether `pod` is a restore pod of restore `restore` (by its label).
fn is_restore_pod_of(pod: &Pod, restore: &str) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(RESTORE_POD_LABEL))
        .is_some_and(|name| name == restore)
}

/// The name of the volume of `pod` that mounts `claim`.
fn volume_of_claim(pod: &Pod, claim: &str) -> Option<String> {
    pod.spec
        .as_ref()?
        .volumes
        .iter()
        .flatten()
        .find_map(|volume| {
            volume
                .persistent_volume_claim
                .as_ref()
                .filter(|source| source.claim_name == claim)
                .map(|_| volume.name.clone())
        })
}

/// A data-only restore: each volume goes into its claim through the pod that mounts it, or a
/// restore pod started for it.
struct Claims {
    cluster: Arc<dyn ClusterPort>,
    overwrite_policy: i32,
    /// The restore-helper container, whose image and resources a restore pod takes.
    helper: Value,
    restore_pods: Arc<RestorePods>,
    /// Each volume's name in the backup, which `[<volume>:]` in the path patterns refers to.
    source_volumes: Vec<String>,
}

impl Claims {
    /// The running pod that mounts the claim, or a restore pod started for it and running.
    async fn mount(
        &self,
        volumes: &full::RestoreVolumes,
        index: usize,
        namespace: &str,
        claim: &str,
    ) -> Result<Mount> {
        let (entry, header) = (&volumes.entry, &volumes.header);
        let users: Vec<Pod> = self
            .cluster
            .pods_using_claim(namespace, claim)
            .await?
            .into_iter()
            .filter(|pod| pod.metadata.deletion_timestamp.is_none())
            // This restore's own restore pod (one a previous orchestrator started) is not a
            // user: it is found by its name below.
            .filter(|pod| !is_restore_pod_of(pod, &header.name))
            .filter(|pod| {
                !matches!(
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            })
            .collect();
        if let Some((pod, node)) = users
            .iter()
            .find_map(|pod| running_on_node(pod).map(|node| (pod.clone(), node)))
        {
            let volume_name = volume_of_claim(&pod, claim).unwrap_or_default();
            entry.log(
                "warning",
                format!(
                    "claim {namespace}/{claim} is mounted by running pod {namespace}/{}: \
                     restoring into its volume {volume_name} while it runs",
                    pod.metadata.name.clone().unwrap_or_default()
                ),
            );
            return Ok(Mount {
                pod,
                node,
                volume_name,
            });
        }
        if let Some(pod) = users.first() {
            // A pod about to start would see the volume change under it, and a
            // ReadWriteOnce claim may keep a restore pod from running beside it.
            return Err(Error::Failed(format!(
                "claim {namespace}/{claim} is used by pod {namespace}/{} which is not running \
                 (phase {}); scale it down or wait for it to run",
                pod.metadata.name.clone().unwrap_or_default(),
                pod.status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_else(|| "unknown".into())
            )));
        }
        let pod = restore_pod(&self.helper, header, index, namespace, claim)?;
        let name = pod.metadata.name.clone().unwrap_or_default();
        // Known before it is created: a cancel while waiting for it still deletes it.
        self.restore_pods
            .lock()
            .insert(index, (namespace.to_string(), name.clone()));
        // Taken over, the volume's restore pod may be there already (named by the restore's
        // uid and the volume's index), started by the previous orchestrator: it is used.
        let left = if volumes.resumed {
            self.cluster.pod(namespace, &name).await?
        } else {
            None
        };
        if left.is_some() {
            entry.log(
                "info",
                format!(
                    "using restore pod {namespace}/{name}, which the previous orchestrator started"
                ),
            );
        } else {
            self.cluster.create_pod(namespace, &pod).await?;
            entry.log(
                "info",
                format!("created restore pod {namespace}/{name} for claim {namespace}/{claim}"),
            );
        }
        let (pod, node) = full::wait_for_pod(
            self.cluster.as_ref(),
            volumes,
            namespace,
            &name,
            running_on_node,
            || format!("restore pod {namespace}/{name} was deleted before it ran"),
            |within| format!("restore pod {namespace}/{name} was not running within {within}"),
        )
        .await?;
        Ok(Mount {
            pod,
            node,
            volume_name: RESTORE_POD_VOLUME.to_string(),
        })
    }
}

#[tonic::async_trait]
impl full::Placement for Claims {
    fn span(&self, volumes: &full::RestoreVolumes, index: usize) -> tracing::Span {
        let volume = full::volume_of(&volumes.entry, index).unwrap_or_default();
        let reference = volume.volume.clone().unwrap_or_default();
        tracing::info_span!(
            "restore_volume",
            restore = %volumes.header.name,
            namespace = %reference.namespace,
            pvc = %reference.pvc_name,
            pod = field::Empty,
            volume = field::Empty,
            node = field::Empty,
            snapshot_id = %volume.snapshot_id,
            bytes = field::Empty,
        )
    }

    /// Finds (or starts) the pod whose volume directory the claim is on this node.
    async fn prepare(&self, volumes: &full::RestoreVolumes, index: usize) -> Result<String> {
        let volume = volumes.volume(index)?;
        let mut reference = volume.volume.clone().unwrap_or_default();
        let mount = self
            .mount(volumes, index, &reference.namespace, &reference.pvc_name)
            .await?;
        let span = tracing::Span::current();
        span.record("node", mount.node.as_str());
        span.record("volume", mount.volume_name.as_str());
        reference.pod_name = mount.pod.metadata.name.clone().unwrap_or_default();
        span.record("pod", reference.pod_name.as_str());
        reference.pod_uid = mount.pod.metadata.uid.clone().unwrap_or_default();
        reference.volume_name = mount.volume_name;
        let pvc = self
            .cluster
            .pvc(&reference.namespace, &reference.pvc_name)
            .await?;
        reference.pvc_uid = pvc
            .as_ref()
            .and_then(|pvc| pvc.metadata.uid.clone())
            .unwrap_or_default();
        reference.pv_name = pvc
            .and_then(|pvc| pvc.spec.and_then(|s| s.volume_name))
            .filter(|pv| !pv.is_empty())
            .ok_or_else(|| Error::Failed(format!("claim {} is not bound", reference.pvc_name)))?;
        full::update_volume(&volumes.entry, index, |v| {
            v.volume = Some(reference.clone());
            v.node = mount.node.clone();
        });
        volumes.repository(&volume)?;
        Ok(mount.node)
    }

    fn writing(&self, _volumes: &full::RestoreVolumes, index: usize) -> full::Writing {
        full::Writing {
            data_only: true,
            overwrite_policy: self.overwrite_policy,
            source_volume: self.source_volumes.get(index).cloned().unwrap_or_default(),
        }
    }

    /// Done with the volume either way; a volume given up (cancel, timeout, stall) does not
    /// get here, and the run deletes its pod once every volume has ended.
    async fn ran(&self, volumes: &full::RestoreVolumes, index: usize) {
        self.restore_pods
            .delete(index, self.cluster.as_ref(), &volumes.entry)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use stowage_proto::v1::BackupStatus;

    use super::*;

    fn volume(namespace: &str, pod: &str, name: &str, claim: &str) -> PodVolumeBackup {
        PodVolumeBackup {
            volume: Some(PodVolumeRef {
                namespace: namespace.into(),
                pod_name: pod.into(),
                volume_name: name.into(),
                source: if claim.is_empty() {
                    VolumeSource::EmptyDir
                } else {
                    VolumeSource::PersistentVolumeClaim
                } as i32,
                pvc_name: claim.into(),
                ..Default::default()
            }),
            phase: VolumePhase::Completed as i32,
            snapshot_id: format!("snap-{pod}-{name}"),
            ..Default::default()
        }
    }

    fn backup(volumes: Vec<PodVolumeBackup>) -> Backup {
        Backup {
            name: "nightly".into(),
            status: Some(BackupStatus {
                volumes,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn spec() -> RestoreSpec {
        RestoreSpec {
            backup_name: "nightly".into(),
            data_only: true,
            ..Default::default()
        }
    }

    #[test]
    fn every_claim_volume_goes_into_its_own_claim_in_the_mapped_namespace() {
        let backup = backup(vec![
            volume("shop", "db-0", "data", "data-db-0"),
            volume("shop", "db-1", "data", "data-db-1"),
        ]);
        let targets = select(
            &backup,
            &RestoreSpec {
                namespace_mapping: [("shop".to_string(), "shop-2".to_string())].into(),
                ..spec()
            },
            &[],
        )
        .unwrap();
        let places: Vec<(String, String, String)> = targets
            .iter()
            .map(|t| {
                (
                    t.namespace.clone(),
                    t.claim.clone(),
                    t.source.snapshot_id.clone(),
                )
            })
            .collect();
        assert_eq!(
            places,
            [
                ("shop-2".into(), "data-db-0".into(), "snap-db-0-data".into()),
                ("shop-2".into(), "data-db-1".into(), "snap-db-1-data".into()),
            ]
        );
    }

    #[test]
    fn an_unknown_volume_is_not_found_by_name() {
        let backup = backup(vec![volume("shop", "db-0", "data", "data-db-0")]);
        let error = select(
            &backup,
            &RestoreSpec {
                volumes: vec!["shop/db-0/data".into(), "shop/db-9/data".into()],
                ..spec()
            },
            &[],
        )
        .unwrap_err();
        assert_eq!(error.code(), tonic::Code::NotFound);
        assert_eq!(
            error.to_string(),
            "volume shop/db-9/data is not in backup nightly"
        );
        let error = select(
            &backup,
            &RestoreSpec {
                volumes: vec!["shop-db-0-data".into()],
                ..spec()
            },
            &[],
        )
        .unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(error.to_string().contains("`shop-db-0-data`"), "{error}");
    }

    #[test]
    fn a_target_claim_takes_exactly_one_volume() {
        let backup = backup(vec![
            volume("shop", "db-0", "data", "data-db-0"),
            volume("shop", "db-0", "cache", ""),
        ]);
        let error = select(
            &backup,
            &RestoreSpec {
                target_pvc: "shop/scratch".into(),
                ..spec()
            },
            &[],
        )
        .unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(
            error
                .to_string()
                .contains("exactly one volume, and 2 are selected"),
            "{error}"
        );
        // One volume, an emptyDir even: the claim named is the target.
        let targets = select(
            &backup,
            &RestoreSpec {
                volumes: vec!["shop/db-0/cache".into()],
                target_pvc: "shop/scratch".into(),
                ..spec()
            },
            &[],
        )
        .unwrap();
        assert_eq!(
            (targets[0].namespace.as_str(), targets[0].claim.as_str()),
            ("shop", "scratch")
        );
        let error = select(
            &backup,
            &RestoreSpec {
                volumes: vec!["shop/db-0/cache".into()],
                target_pvc: "scratch".into(),
                ..spec()
            },
            &[],
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("expected namespace/claim"),
            "{error}"
        );
    }

    #[test]
    fn an_empty_dir_volume_without_a_target_claim_is_refused_by_name() {
        let backup = backup(vec![volume("shop", "db-0", "cache", "")]);
        let error = select(&backup, &spec(), &[]).unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(error.to_string().contains("`shop/db-0/cache`"), "{error}");
        assert!(error.to_string().contains("--target-pvc"), "{error}");
    }

    #[test]
    fn a_record_without_a_kind_finds_its_claim_in_the_pod_manifest() {
        let mut velero = volume("shop", "db-0", "data", "");
        velero.volume.as_mut().unwrap().source = VolumeSource::Unspecified as i32;
        let manifest = json!({
            "kind": "Pod", "metadata": {"namespace": "shop", "name": "db-0"},
            "spec": {"volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}}]},
        });
        let targets = select(&backup(vec![velero]), &spec(), &[manifest]).unwrap();
        assert_eq!(targets[0].claim, "data-db-0");
    }

    #[test]
    fn data_only_fields_without_data_only_are_refused() {
        let error = refuse_data_only_fields(&RestoreSpec {
            target_pvc: "shop/x".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(refuse_data_only_fields(&RestoreSpec::default()).is_ok());
    }

    #[test]
    fn the_restore_pod_holds_the_claim_with_the_helper_image_and_a_label() {
        let helper = full::helper_spec(
            &BTreeMap::new(),
            &crate::deps::RestoreHelperDefaults {
                image: "ghcr.io/stowage/stowage-restore-helper".into(),
            },
            "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        );
        let restore = Restore {
            name: "back".into(),
            uid: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into(),
            ..Default::default()
        };
        let pod = restore_pod(&helper, &restore, 3, "shop", "data-db-0").unwrap();
        assert_eq!(
            pod.metadata.name.as_deref(),
            Some("stowage-data-restore-0f1e2d3c4b-3")
        );
        assert_eq!(pod.metadata.labels.unwrap()[RESTORE_POD_LABEL], "back");
        assert!(pod.metadata.owner_references.is_none());
        let spec = pod.spec.unwrap();
        let container = &spec.containers[0];
        assert_eq!(container.name, HOLD_CONTAINER);
        assert_eq!(
            container.image.as_deref(),
            Some("ghcr.io/stowage/stowage-restore-helper:0.1.0")
        );
        assert_eq!(container.args.as_ref().unwrap()[0], "--hold");
        assert!(container.resources.as_ref().unwrap().limits.is_some());
        assert_eq!(
            volume_of_claim(
                &Pod {
                    spec: Some(spec),
                    ..Default::default()
                },
                "data-db-0"
            )
            .as_deref(),
            Some(RESTORE_POD_VOLUME)
        );
    }
}

/// Data-only restores on the run engine against the fakes, in paused time: into a running
/// pod's volume, through a restore pod deleted afterwards (also on failure and cancel), and
/// refused before anything runs.
#[cfg(test)]
mod runs {
    use stowage_proto::v1::{
        BackupOrigin, BackupPhase, BackupStatus, CreateRestoreRequest, RestorePhase,
    };

    use std::time::Duration;

    use super::*;
    use crate::{
        state::Entry,
        testing::{Script, World, limits},
    };

    const POD_UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

    /// Backup `nightly` of `shop/db-0` volume `data` (claim `data-db-0`, bound), finished at
    /// `finished`, the claim existing now.
    fn world() -> World {
        let world = World::new(limits());
        insert_backup(&world, "nightly", "snap-nightly", 200);
        let pvc = serde_json::from_value(json!({
            "metadata": {"name": "data-db-0", "namespace": "shop", "uid": "pvc-uid-1"},
            "spec": {"volumeName": "pv-1"},
        }))
        .unwrap();
        world
            .cluster
            .pvcs
            .lock()
            .unwrap()
            .insert("shop/data-db-0".into(), pvc);
        world
    }

    fn insert_backup(world: &World, name: &str, snapshot: &str, finished: i64) {
        let backup = Backup {
            name: name.into(),
            status: Some(BackupStatus {
                phase: BackupPhase::Completed as i32,
                volumes: vec![PodVolumeBackup {
                    volume: Some(PodVolumeRef {
                        namespace: "shop".into(),
                        pod_name: "db-0".into(),
                        volume_name: "data".into(),
                        source: VolumeSource::PersistentVolumeClaim as i32,
                        pvc_name: "data-db-0".into(),
                        ..Default::default()
                    }),
                    phase: VolumePhase::Completed as i32,
                    snapshot_id: snapshot.into(),
                    stable_identity: "pvc-uid/pvc-uid-1".into(),
                    finished: Some(stowage_proto::prost_types::Timestamp {
                        seconds: finished,
                        nanos: 0,
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            origin: BackupOrigin::Stowage as i32,
            ..Default::default()
        };
        world.deps.index.insert_backup(
            name,
            Entry::new(
                backup,
                Vec::new(),
                tokio_util::sync::CancellationToken::new(),
            ),
        );
    }

    /// A pod of `shop` mounting claim `data-db-0` as volume `app-data`, in `phase`.
    fn app_pod(phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "db-0", "namespace": "shop", "uid": POD_UID},
            "spec": {
                "nodeName": "node-b",
                "containers": [{"name": "app", "image": "db"}],
                "volumes": [{"name": "app-data", "persistentVolumeClaim": {"claimName": "data-db-0"}}],
            },
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    async fn start(world: &World, spec: RestoreSpec) -> Result<Arc<RestoreEntry>> {
        create_restore(world, spec).await?;
        Ok(world.deps.index.restore("back").expect("indexed"))
    }

    async fn create_restore(world: &World, spec: RestoreSpec) -> Result<Restore> {
        full::create(
            &world.deps,
            CreateRestoreRequest {
                name: "back".into(),
                spec: Some(RestoreSpec {
                    backup_name: "nightly".into(),
                    data_only: true,
                    ..spec
                }),
            },
        )
        .await
    }

    fn phase(entry: &RestoreEntry) -> RestorePhase {
        RestorePhase::try_from(entry.get().status.unwrap_or_default().phase).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_pod_s_volume_is_restored_in_place_and_no_pod_is_made() {
        let world = world();
        world.cluster.add_pod(app_pod("Running"));
        let entry = start(
            &world,
            RestoreSpec {
                overwrite_policy: stowage_proto::v1::OverwritePolicy::Replace as i32,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        world.settle().await;
        assert_eq!(phase(&entry), RestorePhase::Completed, "{:?}", entry.logs());
        let requests = world.agents.restore_requests.lock().unwrap().clone();
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert!(request.data_only);
        assert_eq!(
            request.overwrite_policy,
            stowage_proto::v1::OverwritePolicy::Replace as i32
        );
        assert_eq!(request.snapshot_id, "snap-nightly");
        let reference = request.volume.clone().unwrap();
        assert_eq!(
            (
                reference.pod_name.as_str(),
                reference.pod_uid.as_str(),
                reference.volume_name.as_str(),
                reference.pv_name.as_str()
            ),
            ("db-0", POD_UID, "app-data", "pv-1")
        );
        assert_eq!(
            world.agents.started.lock().unwrap().clone(),
            ["restore node-b app-data"]
        );
        assert_eq!(
            world.cluster.pods.lock().unwrap().len(),
            1,
            "no pod created"
        );
        assert!(world.cluster.deleted_pods.lock().unwrap().is_empty());
        assert!(world.agents.abandoned.lock().unwrap().is_empty());
        assert!(world.repo_manager.held().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unmounted_claim_is_restored_through_a_restore_pod_deleted_afterwards() {
        let world = world();
        let entry = start(&world, RestoreSpec::default()).await.unwrap();
        let name = format!(
            "stowage-data-restore-{}-0",
            entry
                .get()
                .uid
                .replace('-', "")
                .chars()
                .take(10)
                .collect::<String>()
        );
        world
            .cluster
            .schedule
            .lock()
            .unwrap()
            .insert(name.clone(), "node-c".into());
        world.settle().await;
        assert_eq!(phase(&entry), RestorePhase::Completed, "{:?}", entry.logs());
        assert_eq!(
            world.agents.started.lock().unwrap().clone(),
            [format!("restore node-c {RESTORE_POD_VOLUME}")]
        );
        let request = world.agents.restore_requests.lock().unwrap()[0].clone();
        assert_eq!(
            request.volume.unwrap().pod_uid,
            format!("new-uid-shop-{name}")
        );
        assert_eq!(
            world.cluster.deleted_pods.lock().unwrap().clone(),
            [format!("shop/{name}")]
        );
        assert!(world.cluster.pods.lock().unwrap().is_empty());
        let volume = entry.get().status.unwrap().volumes[0].clone();
        assert_eq!(volume.volume.unwrap().pod_name, name);
    }

    #[tokio::test(start_paused = true)]
    async fn the_restore_pod_is_deleted_when_its_volume_fails() {
        let world = world();
        world
            .agents
            .script(RESTORE_POD_VOLUME, Script::Fail("restic exploded".into()));
        let entry = start(&world, RestoreSpec::default()).await.unwrap();
        let uid: String = entry.get().uid.replace('-', "").chars().take(10).collect();
        let name = format!("stowage-data-restore-{uid}-0");
        world
            .cluster
            .schedule
            .lock()
            .unwrap()
            .insert(name.clone(), "node-c".into());
        world.settle().await;
        assert_eq!(phase(&entry), RestorePhase::Failed);
        assert_eq!(
            entry.get().status.unwrap().volumes[0].error_message,
            "restic exploded"
        );
        assert_eq!(
            world.cluster.deleted_pods.lock().unwrap().clone(),
            [format!("shop/{name}")]
        );
        assert!(
            world.agents.abandoned.lock().unwrap().is_empty(),
            "no helper to tell"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_while_the_restore_pod_waits_to_run_deletes_it() {
        let world = world();
        // Not scheduled: the restore pod stays Pending.
        let entry = start(&world, RestoreSpec::default()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(
            world.cluster.pods.lock().unwrap().len(),
            1,
            "the restore pod waits"
        );
        full::cancel(&entry);
        world.settle().await;
        assert_eq!(phase(&entry), RestorePhase::Cancelled);
        assert!(world.agents.started.lock().unwrap().is_empty());
        assert_eq!(world.cluster.deleted_pods.lock().unwrap().len(), 1);
        assert!(world.cluster.pods.lock().unwrap().is_empty());
        assert!(world.repo_manager.held().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_restart_only_the_restore_s_own_labelled_pods_are_deleted() {
        let world = world();
        world.cluster.add_pod(app_pod("Running"));
        let mut leftover = app_pod("Running");
        leftover.metadata.name = Some("stowage-data-restore-abc-0".into());
        leftover.metadata.labels =
            Some([(RESTORE_POD_LABEL.to_string(), "back".to_string())].into());
        world.cluster.add_pod(leftover);
        let mut other = app_pod("Running");
        other.metadata.name = Some("stowage-data-restore-def-0".into());
        other.metadata.labels = Some([(RESTORE_POD_LABEL.to_string(), "other".to_string())].into());
        world.cluster.add_pod(other);
        let restore = Restore {
            name: "back".into(),
            spec: Some(RestoreSpec {
                data_only: true,
                ..Default::default()
            }),
            status: Some(stowage_proto::v1::RestoreStatus {
                volumes: pending_volumes(&[Target {
                    source: PodVolumeBackup::default(),
                    backup: "nightly".into(),
                    namespace: "shop".into(),
                    claim: "data-db-0".into(),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let entry = Entry::new(
            restore.clone(),
            Vec::new(),
            tokio_util::sync::CancellationToken::new(),
        );
        delete_leftover_pods(&world.deps, &entry, &restore).await;
        assert_eq!(
            world.cluster.deleted_pods.lock().unwrap().clone(),
            ["shop/stowage-data-restore-abc-0"]
        );
        // A restore that is not data-only has no restore pods to look for.
        let full_restore = Restore {
            spec: Some(RestoreSpec::default()),
            ..restore
        };
        delete_leftover_pods(&world.deps, &entry, &full_restore).await;
        assert_eq!(world.cluster.deleted_pods.lock().unwrap().len(), 1);
    }

    /// A data-only restore an orchestrator left running with its one volume restoring on
    /// node-a through the restore pod it had started.
    fn data_only_left_running(world: &World) -> String {
        let restore = Restore {
            name: "back".into(),
            uid: "7c9e6679-7425-40de-944b-e07fc1f90ae7".into(),
            spec: Some(RestoreSpec {
                backup_name: "nightly".into(),
                data_only: true,
                ..Default::default()
            }),
            status: Some(stowage_proto::v1::RestoreStatus {
                phase: RestorePhase::InProgress as i32,
                ..Default::default()
            }),
        };
        let helper = json!({"name": "restore-wait", "image": "stowage-restore-helper"});
        let mut pod = restore_pod(&helper, &restore, 0, "shop", "data-db-0").unwrap();
        let name = pod.metadata.name.clone().unwrap();
        pod.metadata.uid = Some("restore-pod-uid".into());
        pod.spec.as_mut().unwrap().node_name = Some("node-a".into());
        pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        });
        world.cluster.add_pod(pod);
        let volume = PodVolumeRestore {
            volume: Some(PodVolumeRef {
                namespace: "shop".into(),
                pod_name: name.clone(),
                pod_uid: "restore-pod-uid".into(),
                volume_name: RESTORE_POD_VOLUME.into(),
                pvc_name: "data-db-0".into(),
                ..Default::default()
            }),
            node: "node-a".into(),
            phase: VolumePhase::InProgress as i32,
            snapshot_id: "snap-nightly".into(),
            source_namespace: "shop".into(),
            ..Default::default()
        };
        let restore = Restore {
            status: Some(stowage_proto::v1::RestoreStatus {
                volumes: vec![volume],
                ..restore.status.unwrap()
            }),
            ..restore
        };
        world
            .store
            .restores
            .lock()
            .unwrap()
            .insert("back".into(), (restore, Vec::new()));
        name
    }

    #[tokio::test(start_paused = true)]
    async fn a_taken_over_data_only_restore_reattaches_through_its_restore_pod_then_deletes_it() {
        let world = world();
        let restore_pod = data_only_left_running(&world);
        world.agents.kept.lock().unwrap().insert(
            "7c9e6679-7425-40de-944b-e07fc1f90ae7-0".into(),
            Script::Complete {
                steps: 2,
                every: Duration::from_secs(5),
            },
        );
        crate::recovery::load(&world.deps).await.unwrap();
        world.settle().await;
        let entry = world.deps.index.restore("back").unwrap();
        assert_eq!(
            phase(&entry),
            RestorePhase::Completed,
            "{:#?}",
            entry.logs()
        );
        assert_eq!(world.agents.attached.lock().unwrap().len(), 1);
        assert!(
            world.agents.restore_requests.lock().unwrap().is_empty(),
            "restic is not run again"
        );
        let log: Vec<String> = entry.logs().into_iter().map(|l| l.message).collect();
        assert!(
            log.iter().any(|l| l.contains(&format!(
                "using restore pod shop/{restore_pod}, which the previous orchestrator started"
            ))),
            "{log:#?}"
        );
        assert_eq!(
            world.cluster.deleted_pods.lock().unwrap().clone(),
            [format!("shop/{restore_pod}")],
            "the restore pod goes once its volume is restored"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_taken_over_data_only_volume_the_agent_lost_is_run_again_with_its_backup_volume_name()
    {
        let world = world();
        data_only_left_running(&world);
        world
            .store
            .restores
            .lock()
            .unwrap()
            .get_mut("back")
            .unwrap()
            .0
            .spec
            .as_mut()
            .unwrap()
            .include_paths = vec!["data:orders".into()];
        crate::recovery::load(&world.deps).await.unwrap();
        world.settle().await;
        let entry = world.deps.index.restore("back").unwrap();
        assert_eq!(
            phase(&entry),
            RestorePhase::Completed,
            "{:#?}",
            entry.logs()
        );
        let requests = world.agents.restore_requests.lock().unwrap().clone();
        assert_eq!(requests.len(), 1, "run once more");
        assert!(requests[0].data_only);
        assert_eq!(
            requests[0].include_patterns,
            ["orders"],
            "`data:` names the volume as the backup has it, found by its snapshot"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_that_mounts_the_claim_but_does_not_run_fails_the_volume_naming_it() {
        let world = world();
        world.cluster.add_pod(app_pod("Pending"));
        let entry = start(&world, RestoreSpec::default()).await.unwrap();
        world.settle().await;
        assert_eq!(phase(&entry), RestorePhase::Failed);
        let message = entry.get().status.unwrap().volumes[0].error_message.clone();
        assert!(
            message.contains("pod shop/db-0 which is not running (phase Pending)"),
            "{message}"
        );
        assert!(world.cluster.deleted_pods.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_claim_or_volume_is_refused_before_anything_runs() {
        let world = world();
        let error = create_restore(
            &world,
            RestoreSpec {
                target_pvc: "shop/nothing".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(error.code(), tonic::Code::NotFound);
        assert_eq!(
            error.to_string(),
            "claim shop/nothing (the target of volume shop/db-0/data) not found"
        );
        let error = create_restore(
            &world,
            RestoreSpec {
                volumes: vec!["shop/db-0/logs".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(error.code(), tonic::Code::NotFound);
        assert!(world.deps.index.restore("back").is_none());
        assert!(world.cluster.pods.lock().unwrap().is_empty());
        assert!(world.repo_manager.calls().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn as_of_restores_the_last_snapshot_at_or_before_the_time_and_logs_its_backup() {
        let world = world();
        insert_backup(&world, "earlier", "snap-earlier", 100);
        world.cluster.add_pod(app_pod("Running"));
        let entry = start(
            &world,
            RestoreSpec {
                as_of: Some(stowage_proto::prost_types::Timestamp {
                    seconds: 150,
                    nanos: 0,
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        world.settle().await;
        assert_eq!(phase(&entry), RestorePhase::Completed);
        let request = world.agents.restore_requests.lock().unwrap()[0].clone();
        assert_eq!(request.snapshot_id, "snap-earlier");
        assert_eq!(
            entry.get().status.unwrap().volumes[0].snapshot_id,
            "snap-earlier"
        );
        assert!(
            entry.logs().iter().any(|line| line
                .message
                .contains("snapshot snap-earlier of backup earlier")),
            "{:?}",
            entry.logs()
        );
        let error = create_restore(
            &world,
            RestoreSpec {
                as_of: Some(stowage_proto::prost_types::Timestamp {
                    seconds: 50,
                    nanos: 0,
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(error.code(), tonic::Code::NotFound);
    }
}
