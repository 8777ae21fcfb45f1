//! The restore runner: reads the backup's manifests, recreates namespace, PVCs and pods (each
//! pod with the restore-helper init container first), ensures and leases the repositories it
//! reads, and hands the volumes to the run engine: each waits until its pod is scheduled with
//! the helper running, then restores on that node's agent, which writes the done file the
//! helper waits for. A volume that will never be restored gets its failure marker through
//! AbandonRestore, so its pod's helper exits at once instead of waiting out its timeout.

use std::{collections::BTreeMap, panic::AssertUnwindSafe, sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use stowage_contract::{self as contract, done_file, tags::labels};
use stowage_proto::v1::{
    AbandonRestoreRequest, Backup, BackupOrigin, BackupPhase, CreateRestoreRequest,
    PodVolumeBackup, PodVolumeRef, PodVolumeRestore, Progress, RepositoryAccess, RepositoryPhase,
    ResourceOutcome, Restore, RestorePhase, RestoreStatus, RestoreVolumeRequest, RestoredResource,
    VolumePhase, VolumeSource, restore_volume_event,
};
use stowage_velero_format::{layout as vf_layout, resources as vf_resources};
use tokio::time::Instant;
use tracing::{Instrument, field};

use crate::{
    backup::{is_terminal, rfc3339},
    data_restore::{self, Planned},
    deps::{Deps, RestoreHelperDefaults},
    engine::{self, Reporter, RunControl, SHUT_DOWN, VolumeOutcome, VolumeWork, panic_message},
    error::{Error, Result, validate_name, validate_namespace},
    kube::mirror::{self, Mirror, MirrorKind},
    ports::{ClusterPort, MirrorSession},
    repositories::{self, Leases, Prepared},
    resources::{
        self,
        restore::{ExistingPolicy, Handled, Outcome},
    },
    state::{Entry, RestoreEntry, now},
    tally::{Ending, ending, tally},
};

/// Name of the init container that waits for the volumes' done files.
pub const RESTORE_HELPER: &str = "restore-wait";

/// At most how often a running restore's record is written as its volumes end.
const RECORD_EVERY: Duration = Duration::from_secs(10);

/// How long a CustomResourceDefinition the restore created may take to be Established before
/// its custom resources are sent anyway (and fail with the API server's reason if not served).
const CRD_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a restore waits for a namespace it restores into to finish being deleted.
const NAMESPACE_TERMINATING_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the volumes of a cancelled restore did not end restored.
const CANCELLED: &str = "the restore was cancelled";

/// How long one AbandonRestore call may take: an unreachable agent must not hold up the end
/// of the restore (its pod's helper then waits out its own timeout).
const ABANDON_TIMEOUT: Duration = Duration::from_secs(10);

pub fn restore_is_final(phase: i32) -> bool {
    matches!(
        RestorePhase::try_from(phase),
        Ok(RestorePhase::Completed
            | RestorePhase::PartiallyFailed
            | RestorePhase::Failed
            | RestorePhase::Cancelled)
    )
}

pub async fn create(deps: &Deps, request: CreateRestoreRequest) -> Result<Restore> {
    let spec = request.spec.unwrap_or_default();
    validate_name("backup name", &spec.backup_name)?;
    let name = if request.name.is_empty() {
        // `<backup>-<timestamp>`, the backup part shortened to keep the name a label value.
        let prefix: String = spec.backup_name.chars().take(63 - 15).collect();
        let prefix = prefix.trim_end_matches(['-', '.']);
        format!("{prefix}-{}", chrono::Utc::now().format("%Y%m%d%H%M%S"))
    } else {
        request.name
    };
    validate_name("restore name", &name)?;
    for (from, to) in &spec.namespace_mapping {
        validate_namespace(from)?;
        validate_namespace(to)?;
    }
    resources::validate_resource_lists(&spec.include_resources, &spec.exclude_resources)?;
    ExistingPolicy::parse(&spec.existing_resource_policy)?;
    resources::restore::LabelSelector::from_spec(&spec)?;
    let backup = deps
        .index
        .backup(&spec.backup_name)
        .ok_or_else(|| Error::BackupNotFound(spec.backup_name.clone()))?
        .get();
    let phase =
        BackupPhase::try_from(backup.status.clone().unwrap_or_default().phase).unwrap_or_default();
    if !backup.unrestorable_reason.is_empty() {
        return Err(Error::BackupNotRestorable {
            name: backup.name,
            phase: crate::tally::backup_phase_word(phase as i32),
            reason: backup.unrestorable_reason,
        });
    }
    if !matches!(phase, BackupPhase::Completed | BackupPhase::PartiallyFailed) {
        return Err(Error::BackupNotRestorable {
            name: backup.name,
            phase: crate::tally::backup_phase_word(phase as i32),
            reason: "only completed or partially failed backups can be restored".to_string(),
        });
    }
    crate::paths::check_restore(&spec, &backup)?;
    if deps.cluster.is_none() {
        return Err(Error::NoCluster("a restore"));
    }
    // Checked again now (not only when listed): a repository may have gone since, and a restore
    // must never reach the repo-manager for one that is missing (it would initialise it).
    if backup.origin == BackupOrigin::Velero as i32
        && let Some(reason) = velero_repository_problem(deps, &backup).await?
    {
        return Err(Error::BackupNotRestorable {
            name: backup.name,
            phase: crate::tally::backup_phase_word(phase as i32),
            reason,
        });
    }
    // Snapshots (as-of) and data-only targets are decided now: a volume or claim that is not
    // there is refused before anything runs.
    let (planned, notes) = data_restore::plan(deps, &spec, backup).await?;
    let mut status = RestoreStatus {
        phase: RestorePhase::New as i32,
        started: Some(now()),
        trace_id: stowage_telemetry::current_trace_id().unwrap_or_default(),
        ..Default::default()
    };
    if let Planned::DataOnly(targets) = &planned {
        status.volumes = data_restore::pending_volumes(targets);
        recount(&mut status);
    }
    let backup_name = spec.backup_name.clone();
    let restore = Restore {
        name: name.clone(),
        uid: uuid::Uuid::new_v4().to_string(),
        spec: Some(spec),
        status: Some(status),
    };
    let entry = Entry::new(restore.clone(), Vec::new(), deps.shutdown.child_token());
    if !deps.index.insert_restore(&name, entry.clone()) {
        return Err(Error::RestoreExists(name));
    }
    for note in notes {
        entry.log("info", note);
    }
    let span = tracing::info_span!("restore", restore = %name, restore_uid = %restore.uid, backup = %backup_name);
    spawn(deps, entry, Start::New(planned), span);
    Ok(restore)
}

/// The restore named `name`: the index's, or one written to the storage location since this
/// process listed it (by another orchestrator), then kept in the index.
pub async fn find(deps: &Deps, name: &str) -> Result<Arc<RestoreEntry>> {
    if let Some(entry) = deps.index.restore(name) {
        return Ok(entry);
    }
    let not_found = || Error::RestoreNotFound(name.to_string());
    let store = deps.store.as_ref().ok_or_else(not_found)?;
    let restore = store.get_restore(name).await?.ok_or_else(not_found)?;
    let logs = store.restore_logs(name).await?;
    let entry = Entry::new(restore, logs, tokio_util::sync::CancellationToken::new());
    deps.index.insert_restore(name, entry);
    deps.index.restore(name).ok_or_else(not_found)
}

/// Cancels a running restore: volumes not started end Cancelled, running ones have their
/// agent operation cancelled, and the pods' helpers are told through AbandonRestore once the
/// runner has stopped them.
pub fn cancel(entry: &RestoreEntry) -> Restore {
    if !restore_is_final(entry.read(|r| r.status.as_ref().map_or(0, |s| s.phase))) {
        entry.log("warning", "cancel requested");
        entry.cancel.cancel();
    }
    entry.get()
}

/// The namespaces whose repositories a restore of `backup` reads.
pub fn backup_namespaces(backup: &Backup) -> Vec<String> {
    crate::backup::namespaces_of(
        backup
            .status
            .iter()
            .flat_map(|status| &status.volumes)
            .map(|volume| volume.volume.as_ref()),
    )
}

/// Why the restic repositories of a Velero backup cannot be opened, if one cannot.
pub async fn velero_repository_problem(deps: &Deps, backup: &Backup) -> Result<Option<String>> {
    let mut problems = Vec::new();
    for namespace in backup_namespaces(backup) {
        problems
            .extend(velero_namespace_problem(deps, &namespace, Patience::ThroughTakeover).await?);
    }
    Ok((!problems.is_empty()).then(|| problems.join("; ")))
}

/// Whether a check of a Velero repository waits out a change of the repo-manager's leader:
/// a restore does (it needs the answer); a listing asks once (its check is best-effort).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Patience {
    ThroughTakeover,
    Once,
}

/// Why the restic repository of `namespace` in a Velero location cannot be opened: missing
/// from the location, or opened neither by a stowage key nor by Velero's password. One that
/// exists is handed to the repo-manager, which adopts it (adding stowage's own key beside
/// Velero's); a missing one never is, as the repo-manager would initialise an empty one. An
/// error means the check itself could not run (store or repo-manager unreachable).
pub async fn velero_namespace_problem(
    deps: &Deps,
    namespace: &str,
    patience: Patience,
) -> Result<Option<String>> {
    let store = deps
        .store
        .as_ref()
        .ok_or_else(|| Error::Store("no storage location is configured".to_string()))?;
    let key = vf_layout::restic_repository_key(namespace);
    if !store.repository_exists(namespace).await? {
        return Ok(Some(format!(
            "restic repository {key} not found in the storage location"
        )));
    }
    let repository = match patience {
        Patience::ThroughTakeover => deps.repo_manager.ensure_repository(namespace).await?,
        Patience::Once => deps.repo_manager.ensure_repository_once(namespace).await?,
    };
    Ok(
        (repository.phase != RepositoryPhase::Ready as i32).then(|| {
            format!(
                "restic repository {key} cannot be opened: {}",
                repository.message
            )
        }),
    )
}

pub fn recount(status: &mut RestoreStatus) {
    let counted = tally(
        status
            .volumes
            .iter()
            .map(|volume| (volume.phase, volume.progress.as_ref())),
    );
    status.volumes_total = counted.total;
    status.volumes_completed = counted.completed;
    status.volumes_failed = counted.failed;
    status.progress = Some(counted.progress);
}

/// Writes the restore's record and logs to the storage location; a failure is logged with the
/// restore, whose in-memory state is still served.
pub async fn persist(deps: &Deps, entry: &RestoreEntry, restore: &Restore) {
    if let Some(store) = &deps.store
        && let Err(error) = store.put_restore(restore, &entry.logs()).await
    {
        entry.log(
            "error",
            format!("writing the restore to the object store: {error}"),
        );
    }
}

/// What a restore runner starts from.
pub(crate) enum Start {
    /// A new restore, as CreateRestore planned it.
    New(Planned),
    /// One a previous orchestrator left running in the storage location (see `takeover.rs`).
    TakenOver,
}

/// Spawns the runner of restore `entry`.
pub(crate) fn spawn(deps: &Deps, entry: Arc<RestoreEntry>, start: Start, span: tracing::Span) {
    let runner_deps = deps.clone();
    deps.tasks
        .spawn(async move { run(runner_deps, entry, start).await }.instrument(span));
}

/// Runs one restore, of either kind, to its end: whatever happens inside, the leases are
/// released, a data-only restore's restore pods deleted, the volumes that will not be
/// restored abandoned, the mirrors and the record written, and then the final state shown to
/// watchers. An orchestrator that shuts down mid-run hands the restore over instead (its
/// volumes keep running on the agents, its record stays InProgress) for the next leader.
async fn run(deps: Deps, entry: Arc<RestoreEntry>, start: Start) {
    let data_only = entry.read(|r| r.spec.as_ref().is_some_and(|spec| spec.data_only));
    let resumed = matches!(start, Start::TakenOver);
    match &start {
        Start::New(Planned::Full(backup)) => entry.log(
            "info",
            format!("restore from backup {} started", backup.name),
        ),
        Start::New(Planned::DataOnly(_)) => entry.log("info", "data-only restore started"),
        Start::TakenOver => {}
    }
    let timeout = deps.limits.default_timeout;
    let control = RunControl::new(entry.cancel.clone(), deps.shutdown.clone(), timeout);
    let mirrors = deps.mirrors(MirrorKind::PodVolumeRestore);
    let warn_entry = entry.clone();
    let leases = Leases::new(
        deps.repo_manager.clone(),
        deps.limits.lease_ttl,
        Arc::new(move |message| warn_entry.log("warning", message)),
    );
    let restore_pods = Arc::new(data_restore::RestorePods::default());
    if resumed {
        // Recovery failed every unfinished mirror it found (see `recovery.rs`); the volumes
        // this run takes over are shown as the record has them again.
        let restore = entry.get();
        let header = restore_header(&restore);
        let volumes = restore.status.iter().flat_map(|status| &status.volumes);
        for volume in volumes.filter(|volume| !is_terminal(volume.phase)) {
            mirrors.submit(volume_mirror(&header, volume));
        }
    }
    let body = async {
        let run = RunParts {
            deps: &deps,
            entry: &entry,
            mirrors: &mirrors,
            leases: &leases,
            control: &control,
        };
        match start {
            Start::New(Planned::Full(backup)) => execute(&run, &backup).await,
            Start::New(Planned::DataOnly(targets)) => {
                let source_volumes = data_restore::source_volumes(&targets);
                data_restore::execute(&run, source_volumes, &restore_pods, false).await
            }
            Start::TakenOver if data_only => {
                let source_volumes = crate::takeover::source_volumes(&deps, &entry.get());
                data_restore::execute(&run, source_volumes, &restore_pods, true).await
            }
            Start::TakenOver => crate::takeover::execute_restore(&run).await,
        }
    };
    let body = AssertUnwindSafe(body).catch_unwind();
    let (deps_ref, entry_ref) = (&deps, &entry);
    let outcome = engine::while_writing(
        body,
        &control.volume_ended,
        RECORD_EVERY,
        move || async move { persist(deps_ref, entry_ref, &entry_ref.get()).await },
    )
    .await
    .unwrap_or_else(|panic| {
        Err(Error::Failed(format!(
            "the restore runner panicked: {}",
            panic_message(panic.as_ref())
        )))
    });
    let cancelled = control.cancel_requested();
    if deps.shutdown.is_cancelled() && !cancelled && outcome.is_ok() {
        // As a backup is (see backup.rs): the volumes keep running on their agents, their
        // pods' helpers keep waiting, restore pods stay, the leases lapse.
        let name = entry.read(|restore| restore.name.clone());
        entry.log(
            "warning",
            format!("the orchestrator shut down; restore {name} is left running for the next leader to take over"),
        );
        mirrors.finish().await;
        persist(&deps, &entry, &entry.get()).await;
        return;
    }
    leases.release_all().await;
    if let Some(cluster) = deps.cluster.as_ref().filter(|_| data_only) {
        // Pods left by volumes that were cancelled, timed out or failed before their agent
        // ran; and, taken over, those the previous orchestrator started.
        restore_pods.delete_all(cluster.as_ref(), &entry).await;
        if resumed {
            data_restore::delete_leftover_pods(&deps, &entry, &entry.get()).await;
        }
    }
    let outcome = match outcome {
        Ok(()) if deps.shutdown.is_cancelled() => Err(Error::Failed(SHUT_DOWN.to_string())),
        other => other,
    };
    let mut restore = entry.get();
    conclude(&mut restore, &outcome, cancelled, mirrors.as_ref());
    abandon_unrestored(&deps, &entry, &mut restore).await;
    // Every volume's mirror shows its end before the restore does.
    mirrors.finish().await;
    log_end(&entry, &restore, &outcome);
    persist(&deps, &entry, &restore).await;
    entry.update(|current| *current = restore);
}

/// What a restore's execution borrows from its runner.
pub(crate) struct RunParts<'a> {
    pub(crate) deps: &'a Deps,
    pub(crate) entry: &'a Arc<RestoreEntry>,
    pub(crate) mirrors: &'a Arc<dyn MirrorSession>,
    pub(crate) leases: &'a Leases,
    pub(crate) control: &'a RunControl,
}

impl RunParts<'_> {
    /// The repository of each source namespace of volumes `indexes`, with a shared lease on
    /// it for the restore, or why it cannot be used (the run was cancelled or timed out
    /// first). One lease per namespace read, like a backup's: a prune waits for the restore
    /// instead of locking restic out halfway.
    pub(crate) async fn repositories(&self, indexes: &[usize]) -> Prepared {
        let (deps, control) = (self.deps, self.control);
        let namespaces: Vec<String> = self.entry.read(|restore| {
            let volumes = restore.status.as_ref().map(|status| &status.volumes[..]);
            let read: std::collections::BTreeSet<&str> = indexes
                .iter()
                .filter_map(|&index| volumes?.get(index))
                .map(|volume| volume.source_namespace.as_str())
                .collect();
            read.into_iter().map(str::to_string).collect()
        });
        let namespaces = namespaces.as_slice();
        let holder = format!("restore/{}", self.entry.read(|r| r.name.clone()));
        let readiness = deps.limits.readiness();
        let prepared = tokio::select! {
            prepared = repositories::prepare(&deps.repo_manager, self.leases, namespaces, &holder, &readiness) => prepared,
            () = control.cancel.cancelled() => Prepared::unusable(namespaces, CANCELLED),
            () = tokio::time::sleep_until(control.deadline) => {
                Prepared::unusable(namespaces, &Error::TimedOut { after: control.timeout }.to_string())
            }
        };
        for problem in prepared.problems() {
            self.entry.log("error", problem.to_string());
        }
        prepared
    }

    /// The parts of [`RestoreVolumes`] that come from the run.
    pub(crate) fn volumes(&self, repositories: Prepared, resumed: bool) -> RestoreVolumes {
        RestoreVolumes {
            deps: self.deps.clone(),
            entry: self.entry.clone(),
            mirrors: self.mirrors.clone(),
            header: restore_header(&self.entry.get()),
            repositories,
            resumed,
        }
    }
}

/// Ends every volume still unfinished (Cancelled when someone asked, else Failed with the
/// run's reason) and gives the restore its final phase: what a run that stopped records,
/// whatever the kind of restore.
pub(crate) fn conclude(
    restore: &mut Restore,
    outcome: &Result<()>,
    cancelled: bool,
    mirrors: &dyn MirrorSession,
) {
    let header = restore_header(restore);
    let status = restore.status.get_or_insert_with(Default::default);
    if let Err(error) = outcome {
        status.failure_reason = error.to_string();
    }
    let reason = if cancelled {
        CANCELLED.to_string()
    } else if status.failure_reason.is_empty() {
        "the restore ended before this volume ran".to_string()
    } else {
        status.failure_reason.clone()
    };
    for volume in &mut status.volumes {
        if !is_terminal(volume.phase) {
            volume.phase = if cancelled {
                VolumePhase::Cancelled
            } else {
                VolumePhase::Failed
            } as i32;
            volume.error_message = reason.clone();
            volume.finished = Some(now());
            mirrors.submit(volume_mirror(&header, volume));
        }
    }
    recount(status);
    status.phase = if cancelled {
        RestorePhase::Cancelled as i32
    } else {
        // An object that failed makes a restore whose volumes all came back
        // PartiallyFailed (Velero's phase for errors), or Failed if nothing came back.
        let objects = |wanted: &[ResourceOutcome]| {
            let count = status
                .resources
                .iter()
                .filter(|r| wanted.iter().any(|w| *w as i32 == r.outcome))
                .count();
            u32::try_from(count).unwrap_or(u32::MAX)
        };
        let restored = objects(&[ResourceOutcome::Created, ResourceOutcome::Updated]);
        let failed = objects(&[ResourceOutcome::Failed]);
        let ended = match ending(
            status.volumes_completed,
            status.volumes_failed,
            outcome.is_err(),
        ) {
            Ending::Completed if failed > 0 => {
                if status.volumes_completed == 0 && restored == 0 {
                    Ending::Failed
                } else {
                    Ending::PartiallyFailed
                }
            }
            other => other,
        };
        RestorePhase::from(ended) as i32
    };
    status.finished = Some(now());
}

/// The restore's last log lines: why it failed, and how it ended.
pub(crate) fn log_end(entry: &RestoreEntry, restore: &Restore, outcome: &Result<()>) {
    let status = restore.status.clone().unwrap_or_default();
    if let Err(error) = outcome {
        entry.log("error", format!("restore failed: {error}"));
    }
    let count = |outcome: ResourceOutcome| {
        status
            .resources
            .iter()
            .filter(|r| r.outcome == outcome as i32)
            .count()
    };
    entry.log(
        "info",
        format!(
            "restore ended {}: {} volumes, {} completed, {} failed; {} objects, {} created, {} updated, {} already existed, {} skipped, {} failed",
            crate::tally::restore_phase_word(status.phase),
            status.volumes_total,
            status.volumes_completed,
            status.volumes_failed,
            status.resources.len(),
            count(ResourceOutcome::Created),
            count(ResourceOutcome::Updated),
            count(ResourceOutcome::SkippedExists),
            count(ResourceOutcome::Skipped),
            count(ResourceOutcome::Failed),
        ),
    );
}

/// Tells the agent of every volume that ended without its data to write the failure marker,
/// so the pod's restore helper exits now with the reason. A volume whose pod was not yet seen
/// on a node (it waited for its turn, or its repository failed) has its pod looked up first:
/// by now it may run, its helper waiting; `restore` gets the node and pod uid found.
pub async fn abandon_unrestored(deps: &Deps, entry: &RestoreEntry, restore: &mut Restore) {
    // A data-only restore's volumes belong to pods no restore helper waits in: a failure
    // marker would only be a stray file in the application's volume.
    if restore.spec.as_ref().is_some_and(|spec| spec.data_only) {
        return;
    }
    if let Some(cluster) = &deps.cluster
        && let Some(status) = restore.status.as_mut()
    {
        // Only pods this restore created: a pod that was already there (its volumes failed
        // "already exists") is someone else's, and its volumes are not written to.
        let created = status.pods_created.clone();
        let volumes = status.volumes.iter_mut();
        for volume in volumes.filter(|v| v.phase != VolumePhase::Completed as i32) {
            let reference = volume.volume.get_or_insert_with(Default::default);
            let pod = format!("{}/{}", reference.namespace, reference.pod_name);
            let known = !volume.node.is_empty() && !reference.pod_uid.is_empty();
            if known || !created.contains(&pod) {
                continue;
            }
            match cluster.pod(&reference.namespace, &reference.pod_name).await {
                Ok(Some(pod)) => {
                    if let Some(node) = pod.spec.and_then(|spec| spec.node_name) {
                        volume.node = node;
                        reference.pod_uid = pod.metadata.uid.unwrap_or_default();
                    }
                }
                Ok(None) => {}
                Err(error) => entry.log("warning", error.to_string()),
            }
        }
    }
    // All at once: one unreachable agent costs the whole restore ABANDON_TIMEOUT, not each
    // of its volumes (recovery runs this before the API serves).
    let restore: &Restore = restore;
    let volumes = restore.status.iter().flat_map(|status| &status.volumes);
    let calls = volumes
        .filter(|v| v.phase != VolumePhase::Completed as i32)
        .filter(|v| !v.node.is_empty() && v.volume.as_ref().is_some_and(|r| !r.pod_uid.is_empty()))
        .map(|volume| async move {
            let reference = volume.volume.clone().unwrap_or_default();
            let what = format!(
                "{}/{} volume {}",
                reference.namespace, reference.pod_name, reference.volume_name
            );
            let request = AbandonRestoreRequest {
                volume: Some(reference),
                restore_uid: restore.uid.clone(),
                reason: volume.error_message.clone(),
            };
            let told = tokio::time::timeout(
                ABANDON_TIMEOUT,
                deps.agents.abandon_restore(&volume.node, request),
            )
            .await;
            match told {
                Ok(Ok(true)) => entry.log(
                    "info",
                    format!("{what}: told the restore helper the volume will not be restored"),
                ),
                Ok(Ok(false)) => {}
                Ok(Err(error)) => entry.log(
                    "warning",
                    format!("{what}: telling the restore helper failed: {error}"),
                ),
                Err(_) => entry.log(
                    "warning",
                    format!(
                        "{what}: the agent on node {} did not answer AbandonRestore within {}",
                        volume.node,
                        engine::go_duration(ABANDON_TIMEOUT)
                    ),
                ),
            }
        });
    futures::future::join_all(calls).await;
}

async fn execute(run: &RunParts<'_>, backup: &Backup) -> Result<()> {
    let (deps, entry, control) = (run.deps, run.entry, run.control);
    let cluster = deps.cluster.as_ref().ok_or(Error::NoCluster("a restore"))?;
    let store = deps
        .store
        .as_ref()
        .ok_or_else(|| Error::Store("no storage location is configured".to_string()))?;
    let restore = entry.update(|restore| {
        restore.status.get_or_insert_with(Default::default).phase = RestorePhase::InProgress as i32;
    });
    let spec = restore.spec.clone().unwrap_or_default();
    let tarball = store.backup_tarball(&backup.name).await?;
    let backed_up: Vec<PodVolumeBackup> = backup
        .status
        .clone()
        .unwrap_or_default()
        .volumes
        .into_iter()
        .filter(|v| v.phase == VolumePhase::Completed as i32 && !v.snapshot_id.is_empty())
        .collect();
    let helper = helper_container(cluster.as_ref(), &deps.restore_helper, &restore.uid).await?;
    // The backed-up volumes of each pod, by the pod's (source namespace, name).
    let mut pod_volumes: BTreeMap<(String, String), Vec<&PodVolumeBackup>> = BTreeMap::new();
    for volume in &backed_up {
        if let Some(reference) = &volume.volume {
            pod_volumes
                .entry((reference.namespace.clone(), reference.pod_name.clone()))
                .or_default()
                .push(volume);
        }
    }
    let dress = |namespace: &str, name: &str, pod: &mut Value| {
        let volumes = pod_volumes.get(&(namespace.to_string(), name.to_string()))?;
        let names: Vec<String> = volumes
            .iter()
            .filter_map(|v| v.volume.as_ref().map(|r| r.volume_name.clone()))
            .collect();
        Some(add_restore_helper(pod, &helper, &names))
    };
    let mut options = resource_options(&spec, &deps.limits)?;
    // The claims restic fills: from the volume records, or the pod spec when Velero's records
    // do not name the claim.
    options.restic_claims = backed_up
        .iter()
        .filter_map(|volume| {
            let reference = volume.volume.as_ref()?;
            let claim = if reference.pvc_name.is_empty() {
                let manifest = tarball.get(
                    vf_resources::PODS,
                    Some(&reference.namespace),
                    &reference.pod_name,
                )?;
                volume_in_manifest(manifest, &reference.volume_name).1?
            } else {
                reference.pvc_name.clone()
            };
            Some((reference.namespace.clone(), claim))
        })
        .collect();
    let log = |level: &str, line: String| entry.log(level, line);
    let objects = cluster.objects();
    // Searched by the restore's name like its volumes' spans; the counts say what it did.
    let span = tracing::info_span!(
        "restore_resources",
        restore = %restore.name,
        backup = %backup.name,
        objects = tarball.objects.len(),
        failed = field::Empty,
    );
    let handled = resources::restore::restore_resources(
        objects.as_ref(),
        &tarball,
        &options,
        &dress,
        &log,
        &control.cancel,
    )
    .instrument(span.clone())
    .await?;
    span.record(
        "failed",
        handled
            .iter()
            .filter(|h| h.outcome == Outcome::Failed)
            .count(),
    );
    entry.modify(|restore| {
        let status = restore.status.get_or_insert_with(Default::default);
        status.resources = handled.iter().map(restored_resource).collect();
    });

    let mut pending = Vec::new();
    // Pods with a post-restore hook, run once their volumes are back.
    let mut hooked: Vec<HookedPod> = Vec::new();
    for pod in handled.iter().filter(|h| h.has_volumes) {
        let source_namespace = pod.source_namespace.clone().unwrap_or_default();
        let namespace = pod.namespace.clone().unwrap_or_default();
        let pod_name = pod.name.clone();
        let Some(volumes) = pod_volumes.get(&(source_namespace.clone(), pod_name.clone())) else {
            continue;
        };
        let manifest = tarball
            .get(vf_resources::PODS, Some(&source_namespace), &pod_name)
            .cloned()
            .unwrap_or_default();
        // The pod spec says what each volume is; Velero's records do not carry it.
        let references: Vec<PodVolumeRef> = volumes
            .iter()
            .map(|volume| {
                let mut reference = volume.volume.clone().unwrap_or_default();
                let (source, claim) = volume_in_manifest(&manifest, &reference.volume_name);
                if reference.source == VolumeSource::Unspecified as i32 {
                    reference.source = source as i32;
                }
                if reference.pvc_name.is_empty() {
                    reference.pvc_name = claim.unwrap_or_default();
                }
                reference
            })
            .collect();
        // A pod that was not created fails its own volumes; the other pods still restore.
        let failure = match pod.outcome {
            Outcome::Created => None,
            Outcome::SkippedExists | Outcome::Updated => Some(format!(
                "pod {namespace}/{pod_name} already exists; its volumes are not restored into it"
            )),
            Outcome::Failed | Outcome::Skipped => Some(format!(
                "pod {namespace}/{pod_name} could not be created: {}",
                pod.message
            )),
        };
        // Only the count is read back: a clone of the whole restore per pod was quadratic.
        let mut indexes = 0;
        entry.modify(|restore| {
            let status = restore.status.get_or_insert_with(Default::default);
            if failure.is_none() {
                status.pods_created.push(format!("{namespace}/{pod_name}"));
            }
            for (volume, reference) in volumes.iter().zip(&references) {
                status.volumes.push(PodVolumeRestore {
                    volume: Some(PodVolumeRef {
                        namespace: namespace.clone(),
                        pod_name: pod_name.clone(),
                        pod_uid: String::new(),
                        volume_name: reference.volume_name.clone(),
                        source: reference.source,
                        pv_name: String::new(),
                        pvc_name: reference.pvc_name.clone(),
                        pvc_uid: reference.pvc_uid.clone(),
                    }),
                    phase: if failure.is_some() {
                        VolumePhase::Failed
                    } else {
                        VolumePhase::Pending
                    } as i32,
                    error_message: failure.clone().unwrap_or_default(),
                    snapshot_id: volume.snapshot_id.clone(),
                    source_namespace: source_namespace.clone(),
                    repository: volume.repository.clone(),
                    excluded_at_backup: volume.excluded_paths.clone(),
                    ..Default::default()
                });
            }
            recount(status);
            indexes = status.volumes.len();
        });
        if failure.is_none() {
            let created = indexes - volumes.len()..indexes;
            pending.extend(created.clone());
            let annotations = crate::hooks::annotations_of(&manifest);
            if stowage_hooks::declares_restore_exec_hook(&annotations) {
                hooked.push(HookedPod {
                    namespace: namespace.clone(),
                    name: pod_name.clone(),
                    annotations,
                    indexes: created.clone().collect(),
                    to_run: created.collect(),
                });
            }
        }
    }
    // Written before any agent runs, so a restarted orchestrator knows the restore and which
    // volumes were unfinished.
    persist(deps, entry, &entry.get()).await;

    let repositories = run.repositories(&pending).await;
    let work = Arc::new(RestoreWork {
        volumes: run.volumes(repositories, false),
        place: Recreated {
            cluster: cluster.clone(),
        },
    });
    run_by_pod(&work, pending, &hooked, control).await;
    Ok(())
}

/// Runs `pending` and the volumes of the `hooked` pods, each hooked pod as its own group whose
/// post-restore hook waits for its volumes; all share the run's slots.
pub(crate) async fn run_by_pod(
    work: &Arc<RestoreWork<Recreated>>,
    mut pending: Vec<usize>,
    hooked: &[HookedPod],
    control: &RunControl,
) {
    let slots = engine::Slots::new(&work.volumes.deps.limits.run_limits());
    let hooked_indexes: std::collections::BTreeSet<usize> =
        hooked.iter().flat_map(|pod| pod.indexes.clone()).collect();
    pending.retain(|index| !hooked_indexes.contains(index));
    let hooked_pods = hooked
        .iter()
        .map(|pod| run_hooked_pod(work, pod, &slots, control));
    futures::future::join(
        engine::run_volumes_in(work.clone(), pending, &slots, control),
        futures::future::join_all(hooked_pods),
    )
    .await;
}

/// A recreated pod that declares a post-restore hook, and its volumes' indexes: all of them,
/// and those to run (all, but for a taken-over restore those that had not ended).
pub(crate) struct HookedPod {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) annotations: BTreeMap<String, String>,
    pub(crate) indexes: Vec<usize>,
    pub(crate) to_run: Vec<usize>,
}

/// Restores the volumes of `pod`, then runs its post-restore hook (Velero's
/// `post.hook.restore.velero.io/*`) once they are all back and its container runs. The run is
/// logged and recorded on each of the pod's volumes; one that fails the pod (on-error Fail, a
/// container that never came up, an annotation that cannot be read) fails them with its
/// reason, so the restore ends PartiallyFailed or Failed. A pod whose volumes did not all come
/// back never runs its containers (its helper exits failing): its hook is not waited for.
async fn run_hooked_pod(
    work: &Arc<RestoreWork<Recreated>>,
    pod: &HookedPod,
    slots: &engine::Slots,
    control: &RunControl,
) {
    engine::run_volumes_in(work.clone(), pod.to_run.clone(), slots, control).await;
    if control.shutdown.is_cancelled() {
        // Handed over with the restore: the next leader runs the hook.
        return;
    }
    let entry = &work.volumes.entry;
    let what = format!("pod {}/{}", pod.namespace, pod.name);
    let restored = pod.indexes.iter().all(|&index| {
        volume_of(entry, index).is_some_and(|v| v.phase == VolumePhase::Completed as i32)
    });
    if !restored {
        entry.log(
            "warning",
            format!("{what}: post-restore hook not run: not all of its volumes were restored"),
        );
        return;
    }
    let ran = crate::hooks::post_restore(
        &work.place.cluster,
        &pod.namespace,
        &pod.name,
        &pod.annotations,
        work.volumes.deps.limits.poll_interval,
        control,
    )
    .await;
    let reason = match ran {
        Ok(None) => return,
        Err(reason) => format!("{what}: {reason}"),
        Ok(Some(run)) => {
            let (level, line) = crate::hooks::log_line(&run);
            entry.log(level, line);
            let result = crate::hooks::result_of(&run);
            let volumes = &work.volumes;
            for &index in &pod.indexes {
                update_volume(entry, index, |v| v.hooks.push(result.clone()));
                mirror_restore_volume(entry, volumes.mirrors.as_ref(), &volumes.header, index);
            }
            // A cancelled restore's volumes that came back stay restored.
            if !run.fails_pod() || run.result == stowage_hooks::HookResult::Cancelled {
                return;
            }
            run.reason()
        }
    };
    for &index in &pod.indexes {
        work.finish(index, VolumeOutcome::Failed(reason.clone()));
    }
    control.volume_ended.notify_one();
}

/// The restore's name, uid and backup name, all a request or a mirror needs of it.
pub(crate) fn restore_header(restore: &Restore) -> Restore {
    Restore {
        name: restore.name.clone(),
        uid: restore.uid.clone(),
        spec: Some(stowage_proto::v1::RestoreSpec {
            backup_name: restore
                .spec
                .as_ref()
                .map(|spec| spec.backup_name.clone())
                .unwrap_or_default(),
            include_paths: restore
                .spec
                .as_ref()
                .map(|spec| spec.include_paths.clone())
                .unwrap_or_default(),
            exclude_paths: restore
                .spec
                .as_ref()
                .map(|spec| spec.exclude_paths.clone())
                .unwrap_or_default(),
            ..Default::default()
        }),
        status: None,
    }
}

/// What every kind of restore needs to run one of its volumes on its node's agent: a whole
/// application's, a data-only one, and one taken over from a previous orchestrator. The
/// kinds differ in how a volume's node is found (their [`VolumeWork::prepare`]) and in what a
/// [`Writing`] says; running, stopping and ending a volume are written here once.
pub(crate) struct RestoreVolumes {
    pub(crate) deps: Deps,
    pub(crate) entry: Arc<RestoreEntry>,
    pub(crate) mirrors: Arc<dyn MirrorSession>,
    /// The restore's name, uid and path patterns (see [`restore_header`]).
    pub(crate) header: Restore,
    /// The repository of each source namespace, or why it cannot be used.
    pub(crate) repositories: Prepared,
    /// Taken over from a previous orchestrator: a volume is first re-attached on its agent,
    /// and run only when the agent does not have it.
    pub(crate) resumed: bool,
}

/// How a volume's data is written, which is what the kinds of restore differ in.
pub(crate) struct Writing {
    /// Into a running application's volume (no restore helper waits), under `overwrite_policy`.
    pub(crate) data_only: bool,
    pub(crate) overwrite_policy: i32,
    /// The volume's name in the backup, which `[<volume>:]` in the path patterns names.
    pub(crate) source_volume: String,
}

impl RestoreVolumes {
    pub(crate) fn volume(&self, index: usize) -> Result<PodVolumeRestore> {
        volume_of(&self.entry, index)
            .ok_or_else(|| Error::Failed(format!("the restore has no volume {index}")))
    }

    pub(crate) fn repository(&self, volume: &PodVolumeRestore) -> Result<RepositoryAccess> {
        self.repositories.access(&volume.source_namespace)
    }

    /// Stable across orchestrators (the restore's uid and the volume's place in its record),
    /// so one that takes over asks the agent for the operation its predecessor started.
    pub(crate) fn operation_id(&self, index: usize) -> String {
        format!("{}-{index}", self.header.uid)
    }

    /// Runs volume `index` on `node`'s agent to its result: re-attached to the operation the
    /// agent still has when the restore was taken over, else sent. The agent writes the done
    /// file (or the failure marker) the pod's restore helper waits for either way.
    async fn run(
        &self,
        index: usize,
        node: &str,
        reporter: &Reporter,
        writing: Writing,
    ) -> Result<()> {
        let volume = self.volume(index)?;
        let access = self.repository(&volume)?;
        let (include_patterns, exclude_patterns) = crate::paths::restore_patterns(
            self.header.spec.as_ref().unwrap_or(&Default::default()),
            &writing.source_volume,
        );
        let kept = if self.resumed {
            let operation = self.operation_id(index);
            let kept = self.deps.agents.attach_restore(node, &operation).await?;
            let reference = volume.volume.clone().unwrap_or_default();
            let kept_it = kept.is_some();
            crate::takeover::log_reattach(&self.entry, &reference, volume.phase, node, kept_it);
            kept
        } else {
            None
        };
        let reattached = kept.is_some();
        update_volume(&self.entry, index, |v| {
            v.phase = VolumePhase::InProgress as i32;
            if !reattached || v.started.is_none() {
                v.started = Some(now());
            }
        });
        mirror_restore_volume(&self.entry, self.mirrors.as_ref(), &self.header, index);
        let mut stream = match kept {
            Some(stream) => stream,
            None => {
                let request = RestoreVolumeRequest {
                    operation_id: self.operation_id(index),
                    volume: volume.volume.clone(),
                    repository: Some(access),
                    snapshot_id: volume.snapshot_id.clone(),
                    restore_uid: self.header.uid.clone(),
                    restore_name: self.header.name.clone(),
                    data_only: writing.data_only,
                    overwrite_policy: writing.overwrite_policy,
                    include_patterns,
                    exclude_patterns,
                };
                self.deps.agents.restore_volume(node, request).await?
            }
        };
        follow_restore(&self.entry, index, node, &mut stream, reporter).await
    }

    async fn stop(&self, index: usize, node: &str) {
        if let Err(error) = self
            .deps
            .agents
            .cancel_operation(node, &self.operation_id(index))
            .await
        {
            tracing::warn!(%error, "cancelling the agent's operation");
        }
    }

    fn finish(&self, index: usize, outcome: VolumeOutcome) {
        if self.deps.shutdown.is_cancelled() && outcome == VolumeOutcome::Failed(SHUT_DOWN.into()) {
            // Handed over (the engine left its operation running on the agent): the volume
            // stays as it is in the record, for the next leader to re-attach.
            return;
        }
        finish_volume(
            &self.entry,
            self.mirrors.as_ref(),
            &self.header,
            index,
            outcome,
        );
    }
}

/// Where a restore's volumes are written, which is what the kinds of restore differ in: a
/// whole application's go into the pods it recreated, a data-only one's into claims that exist.
#[tonic::async_trait]
pub(crate) trait Placement: Send + Sync + 'static {
    /// The span volume `index`'s task runs in.
    fn span(&self, volumes: &RestoreVolumes, index: usize) -> tracing::Span;
    /// The node volume `index` is written on, once its pod is there; the pod goes into the
    /// volume's record.
    async fn prepare(&self, volumes: &RestoreVolumes, index: usize) -> Result<String>;
    /// How volume `index` is written.
    fn writing(&self, volumes: &RestoreVolumes, index: usize) -> Writing;
    /// Called once volume `index` ran on its agent, whatever the result.
    async fn ran(&self, _volumes: &RestoreVolumes, _index: usize) {}
}

/// A restore's volumes as the run engine drives them, placed by `P`.
pub(crate) struct RestoreWork<P> {
    pub(crate) volumes: RestoreVolumes,
    pub(crate) place: P,
}

#[tonic::async_trait]
impl<P: Placement> VolumeWork for RestoreWork<P> {
    fn span(&self, index: usize) -> tracing::Span {
        self.place.span(&self.volumes, index)
    }

    async fn prepare(&self, index: usize) -> Result<String> {
        self.place.prepare(&self.volumes, index).await
    }

    async fn run(&self, index: usize, node: &str, reporter: &Reporter) -> Result<()> {
        let writing = self.place.writing(&self.volumes, index);
        let ran = self.volumes.run(index, node, reporter, writing).await;
        self.place.ran(&self.volumes, index).await;
        ran
    }

    async fn stop(&self, index: usize, node: &str) {
        self.volumes.stop(index, node).await;
    }

    /// Left running on the agents for the next leader, as a backup is.
    fn hands_over_on_shutdown(&self) -> bool {
        true
    }

    fn finish(&self, index: usize, outcome: VolumeOutcome) {
        self.volumes.finish(index, outcome);
    }
}

/// A whole application's restore: each volume waits for the pod the restore recreated.
pub(crate) struct Recreated {
    pub(crate) cluster: Arc<dyn ClusterPort>,
}

#[tonic::async_trait]
impl Placement for Recreated {
    fn span(&self, volumes: &RestoreVolumes, index: usize) -> tracing::Span {
        let volume = volume_of(&volumes.entry, index).unwrap_or_default();
        let reference = volume.volume.clone().unwrap_or_default();
        tracing::info_span!(
            "restore_volume",
            restore = %volumes.header.name,
            namespace = %reference.namespace,
            pod = %reference.pod_name,
            volume = %reference.volume_name,
            node = field::Empty,
            snapshot_id = %volume.snapshot_id,
            bytes = field::Empty,
        )
    }

    /// Waits for the recreated pod to be scheduled with its restore helper running.
    async fn prepare(&self, volumes: &RestoreVolumes, index: usize) -> Result<String> {
        let entry = &volumes.entry;
        let volume = volumes.volume(index)?;
        let mut reference = volume.volume.clone().unwrap_or_default();
        let (pod, node) = wait_for_pod(
            self.cluster.as_ref(),
            volumes,
            &reference.namespace,
            &reference.pod_name,
            helper_started,
            || "the recreated pod was deleted".to_string(),
            |within| {
                format!("the pod was not scheduled with its restore helper running within {within}")
            },
        )
        .await?;
        tracing::Span::current().record("node", node.as_str());
        reference.pod_uid = pod.metadata.uid.clone().unwrap_or_default();
        // Known as soon as the pod is: a volume that fails from here on can be abandoned.
        update_volume(entry, index, |v| {
            v.volume = Some(reference.clone());
            v.node = node.clone();
        });
        // Checked once the pod is known, so a volume failed by its repository is abandoned
        // and its helper does not wait.
        volumes.repository(&volume)?;
        if reference.source == VolumeSource::PersistentVolumeClaim as i32 {
            let pvc = self
                .cluster
                .pvc(&reference.namespace, &reference.pvc_name)
                .await?;
            reference.pv_name = pvc
                .and_then(|pvc| pvc.spec.and_then(|s| s.volume_name))
                .filter(|pv| !pv.is_empty())
                .ok_or_else(|| Error::Failed(format!("PVC {} is not bound", reference.pvc_name)))?;
            update_volume(entry, index, |v| v.volume = Some(reference.clone()));
        }
        entry.log(
            "info",
            format!(
                "pod {}/{} runs its restore helper on node {node}",
                reference.namespace, reference.pod_name
            ),
        );
        Ok(node)
    }

    fn writing(&self, volumes: &RestoreVolumes, index: usize) -> Writing {
        let volume = volume_of(&volumes.entry, index).unwrap_or_default();
        Writing {
            data_only: false,
            overwrite_policy: 0,
            source_volume: volume.volume.map(|r| r.volume_name).unwrap_or_default(),
        }
    }
}

/// Records how volume `index` ended, in its record, the restore's log and its mirror.
pub(crate) fn finish_volume(
    entry: &RestoreEntry,
    mirrors: &dyn MirrorSession,
    header: &Restore,
    index: usize,
    outcome: VolumeOutcome,
) {
    let volume = volume_of(entry, index).unwrap_or_default();
    let reference = volume.volume.clone().unwrap_or_default();
    let what = format!(
        "{}/{} volume {}",
        reference.namespace, reference.pod_name, reference.volume_name
    );
    let (phase, message) = match &outcome {
        VolumeOutcome::Completed => {
            entry.log(
                "info",
                format!("{what} restored from snapshot {}", volume.snapshot_id),
            );
            (VolumePhase::Completed, String::new())
        }
        VolumeOutcome::Failed(message) => {
            entry.log("error", format!("{what} failed: {message}"));
            (VolumePhase::Failed, message.clone())
        }
        VolumeOutcome::Cancelled => {
            entry.log("warning", format!("{what} cancelled"));
            (VolumePhase::Cancelled, CANCELLED.to_string())
        }
    };
    update_volume(entry, index, |v| {
        v.phase = phase as i32;
        v.error_message = message;
        v.finished = Some(now());
    });
    mirror_restore_volume(entry, mirrors, header, index);
}

/// Follows one agent restore's events to its result: queue position and progress go to the
/// volume's record and the stall watch; Ok once the agent reported its result.
pub(crate) async fn follow_restore(
    entry: &RestoreEntry,
    index: usize,
    node: &str,
    stream: &mut crate::ports::AgentEvents<stowage_proto::v1::RestoreVolumeEvent>,
    reporter: &Reporter,
) -> Result<()> {
    loop {
        let Some(event) = stream.next().await else {
            return Err(Error::Failed(format!(
                "agent on node {node} ended the stream without a result"
            )));
        };
        match event?.event {
            Some(restore_volume_event::Event::Queued(_)) => {
                reporter.queued();
                update_volume(entry, index, |v| v.phase = VolumePhase::Queued as i32);
            }
            Some(restore_volume_event::Event::Retrying(retrying)) => {
                crate::backup::log_retry(node, &retrying);
            }
            Some(restore_volume_event::Event::Progress(progress)) => {
                reporter.progress(&progress);
                update_volume(entry, index, |v| {
                    v.phase = VolumePhase::InProgress as i32;
                    v.progress = Some(progress);
                });
            }
            Some(restore_volume_event::Event::Result(result)) => {
                tracing::Span::current().record("bytes", result.bytes_restored);
                update_volume(entry, index, |v| {
                    v.progress = Some(Progress {
                        bytes_done: result.bytes_restored,
                        bytes_total: result.bytes_restored,
                        files_done: result.files_restored,
                        files_total: result.files_restored,
                        seconds_elapsed: result.duration_seconds,
                    });
                });
                return Ok(());
            }
            None => {}
        }
    }
}

/// The kind of volume `name` in a pod manifest, and its claim name for a PVC.
pub(crate) fn volume_in_manifest(manifest: &Value, name: &str) -> (VolumeSource, Option<String>) {
    let volume = manifest
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .and_then(|volumes| {
            volumes
                .iter()
                .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
        });
    let Some(volume) = volume else {
        return (VolumeSource::Other, None);
    };
    if let Some(claim) = volume
        .pointer("/persistentVolumeClaim/claimName")
        .and_then(Value::as_str)
    {
        (VolumeSource::PersistentVolumeClaim, Some(claim.to_string()))
    } else if volume.get("emptyDir").is_some() {
        (VolumeSource::EmptyDir, None)
    } else {
        (VolumeSource::Other, None)
    }
}

/// The resource restore's settings of one restore: its filters, mapping and policy.
pub fn resource_options(
    spec: &stowage_proto::v1::RestoreSpec,
    limits: &crate::deps::Limits,
) -> Result<resources::restore::Options> {
    Ok(resources::restore::Options {
        included_namespaces: spec.included_namespaces.clone(),
        namespace_mapping: spec.namespace_mapping.clone().into_iter().collect(),
        include_resources: spec.include_resources.clone(),
        exclude_resources: spec.exclude_resources.clone(),
        label_selector: resources::restore::LabelSelector::from_spec(spec)?,
        restic_claims: Default::default(),
        policy: ExistingPolicy::parse(&spec.existing_resource_policy)?,
        crd_timeout: CRD_ESTABLISHED_TIMEOUT,
        namespace_timeout: NAMESPACE_TERMINATING_TIMEOUT,
        poll_interval: limits.poll_interval,
    })
}

pub(crate) fn text(value: &Value, pointer: &str) -> String {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// One object's result as the API shows it.
fn restored_resource(handled: &Handled) -> RestoredResource {
    RestoredResource {
        resource: handled.resource.clone(),
        namespace: handled.namespace.clone().unwrap_or_default(),
        name: handled.name.clone(),
        outcome: match handled.outcome {
            Outcome::Created => ResourceOutcome::Created,
            Outcome::Updated => ResourceOutcome::Updated,
            Outcome::SkippedExists => ResourceOutcome::SkippedExists,
            Outcome::Skipped => ResourceOutcome::Skipped,
            Outcome::Failed => ResourceOutcome::Failed,
        } as i32,
        message: handled.message.clone(),
    }
}

/// Puts the restore helper first among a prepared pod's init containers, mounting every
/// restored volume; a helper left from an earlier restore is replaced.
fn add_restore_helper(
    pod: &mut Value,
    helper: &Value,
    volumes: &[String],
) -> std::result::Result<(), String> {
    let init_hook = stowage_hooks::restore_init_hook(&crate::hooks::annotations_of(pod))
        .map_err(|error| format!("init restore hook: {error}"))?;
    let spec = pod
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .ok_or("the pod manifest has no spec")?;
    let mut helper = helper.clone();
    // The helper waits for `<mount>/.velero/<restore-uid>` in each of these.
    let paths: Vec<String> = volumes
        .iter()
        .map(|volume| done_file::restores_mount_path(volume))
        .collect();
    if let Some(env) = helper.get_mut("env").and_then(Value::as_array_mut) {
        env.push(json!({"name": "STOWAGE_RESTORE_VOLUME_PATHS", "value": paths.join(",")}));
    }
    helper["volumeMounts"] = Value::Array(
        volumes
            .iter()
            .map(|volume| json!({"name": volume, "mountPath": done_file::restores_mount_path(volume)}))
            .collect(),
    );
    let mut init: Vec<Value> = spec
        .get("initContainers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    init.retain(|container| container.get("name").and_then(Value::as_str) != Some(RESTORE_HELPER));
    init.insert(0, helper);
    // Velero's `init.hook.restore.velero.io/*`: after the helper, so it sees the restored data.
    if let Some(hook) = init_hook {
        // A pod backed up after an earlier restore already has this very container.
        init.retain(|container| *container != hook.container());
        hook.insert_into(&mut init, RESTORE_HELPER)
            .map_err(|error| format!("init restore hook: {error}"))?;
    }
    spec.insert("initContainers".to_string(), Value::Array(init));
    Ok(())
}

/// The restore-helper container from the ConfigMap (image, requests, limits; `"0"` leaves
/// one unbounded), with defaults 100m CPU and 128Mi memory.
pub fn helper_spec(
    config: &BTreeMap<String, String>,
    defaults: &RestoreHelperDefaults,
    restore_uid: &str,
) -> Value {
    // The same rule the kustomize test applies to the shipped ConfigMap.
    let image = stowage_images::restore_helper_image(
        config.get("image").map(String::as_str),
        &defaults.image,
    );
    let quantity = |key: &str, default: &str| -> Option<String> {
        let value = config.get(key).map(String::as_str).unwrap_or(default);
        (value != "0" && !value.is_empty()).then(|| value.to_string())
    };
    let mut requests = serde_json::Map::new();
    let mut limits = serde_json::Map::new();
    if let Some(cpu) = quantity("cpuRequest", "100m") {
        requests.insert("cpu".into(), json!(cpu));
    }
    if let Some(memory) = quantity("memRequest", "128Mi") {
        requests.insert("memory".into(), json!(memory));
    }
    if let Some(cpu) = quantity("cpuLimit", "100m") {
        limits.insert("cpu".into(), json!(cpu));
    }
    if let Some(memory) = quantity("memLimit", "128Mi") {
        limits.insert("memory".into(), json!(memory));
    }
    json!({
        "name": RESTORE_HELPER,
        "image": image,
        "args": [restore_uid],
        "env": [
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        "resources": {"requests": requests, "limits": limits},
    })
}

async fn helper_container(
    cluster: &dyn ClusterPort,
    defaults: &RestoreHelperDefaults,
    restore_uid: &str,
) -> Result<Value> {
    let config = cluster.restore_helper_config().await?;
    Ok(helper_spec(&config, defaults, restore_uid))
}

/// Polls pod `namespace/name` until `ready` finds the node it is ready on, for at most the
/// pod start timeout; fails with `gone()` when the pod is deleted, or `late(timeout)`.
pub(crate) async fn wait_for_pod(
    cluster: &dyn ClusterPort,
    volumes: &RestoreVolumes,
    namespace: &str,
    name: &str,
    ready: fn(&Pod) -> Option<String>,
    gone: impl Fn() -> String,
    late: impl Fn(String) -> String,
) -> Result<(Pod, String)> {
    let limits = &volumes.deps.limits;
    let deadline = Instant::now() + limits.pod_start_timeout;
    loop {
        match cluster.pod(namespace, name).await {
            Ok(Some(pod)) => {
                if let Some(node) = ready(&pod) {
                    return Ok((pod, node));
                }
            }
            Ok(None) => return Err(Error::Failed(gone())),
            Err(error) => volumes.entry.log("warning", error.to_string()),
        }
        if Instant::now() >= deadline {
            return Err(Error::Failed(late(engine::go_duration(
                limits.pod_start_timeout,
            ))));
        }
        tokio::time::sleep(limits.poll_interval).await;
    }
}

/// Whether the recreated pod is on a node with the restore helper running (or past it).
fn helper_started(pod: &Pod) -> Option<String> {
    let node = pod
        .spec
        .as_ref()?
        .node_name
        .clone()
        .filter(|n| !n.is_empty())?;
    let status = pod.status.as_ref()?;
    let helper_running = status
        .init_container_statuses
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|s| {
            s.name == RESTORE_HELPER
                && s.state
                    .as_ref()
                    .is_some_and(|state| state.running.is_some() || state.terminated.is_some())
        });
    (helper_running || status.phase.as_deref() == Some("Running")).then_some(node)
}

/// Applies `change` to volume `index` and recounts, cloning nothing: a clone of the whole
/// restore per volume event made large restores quadratic.
pub(crate) fn update_volume(
    entry: &RestoreEntry,
    index: usize,
    change: impl FnOnce(&mut PodVolumeRestore),
) {
    entry.modify(|restore| {
        let status = restore.status.get_or_insert_with(Default::default);
        if let Some(volume) = status.volumes.get_mut(index) {
            change(volume);
        }
        recount(status);
    });
}

pub(crate) fn volume_of(entry: &RestoreEntry, index: usize) -> Option<PodVolumeRestore> {
    entry.read(|restore| {
        restore
            .status
            .as_ref()
            .and_then(|status| status.volumes.get(index).cloned())
    })
}

pub(crate) fn mirror_restore_volume(
    entry: &RestoreEntry,
    mirrors: &dyn MirrorSession,
    restore: &Restore,
    index: usize,
) {
    if let Some(volume) = volume_of(entry, index) {
        mirrors.submit(volume_mirror(restore, &volume));
    }
}

/// The PodVolumeRestore mirror of `volume`, as `kubectl get podvolumerestores` should show it.
pub fn volume_mirror(restore: &Restore, volume: &PodVolumeRestore) -> Mirror {
    let reference = volume.volume.clone().unwrap_or_default();
    let name = mirror::object_name(
        &restore.name,
        &format!("{}/{}", reference.namespace, reference.pod_name),
        &reference.volume_name,
    );
    let phase = contract::phase::VolumePhase::of_proto(volume.phase).as_str();
    let progress = volume.progress.unwrap_or_default();
    let backup_name = restore
        .spec
        .as_ref()
        .map(|spec| spec.backup_name.as_str())
        .unwrap_or_default();
    let labels = json!({
        labels::RESTORE_NAME: restore.name,
        labels::RESTORE_UID: restore.uid,
        labels::BACKUP_NAME: backup_name,
    });
    let mut spec = json!({
        "pod": {"kind": "Pod", "namespace": reference.namespace, "name": reference.pod_name, "uid": reference.pod_uid},
        "volume": reference.volume_name,
        "repoIdentifier": volume.repository,
        "snapshotID": volume.snapshot_id,
        "sourceNamespace": volume.source_namespace,
        "uploaderType": "restic",
    });
    if !volume.excluded_at_backup.is_empty() {
        spec["excludedAtBackup"] = json!(volume.excluded_at_backup);
    }
    let status = json!({
        "phase": phase,
        "message": volume.error_message,
        "progress": {"totalBytes": progress.bytes_total, "bytesDone": progress.bytes_done},
        "startTimestamp": volume.started.as_ref().map(rfc3339),
        "completionTimestamp": volume.finished.as_ref().map(rfc3339),
        "hooks": crate::hooks::mirror_status(&volume.hooks),
    });
    Mirror {
        name,
        labels,
        spec,
        status,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> RestoreHelperDefaults {
        RestoreHelperDefaults {
            image: "ghcr.io/stowage/stowage-restore-helper".into(),
        }
    }

    #[test]
    fn volume_kinds_come_from_the_pod_manifest() {
        let manifest = json!({"spec": {"volumes": [
            {"name": "data", "persistentVolumeClaim": {"claimName": "claim"}},
            {"name": "cache", "emptyDir": {}},
            {"name": "nfs", "nfs": {"server": "s", "path": "/"}},
        ]}});
        assert_eq!(
            volume_in_manifest(&manifest, "data"),
            (
                VolumeSource::PersistentVolumeClaim,
                Some("claim".to_string())
            )
        );
        assert_eq!(
            volume_in_manifest(&manifest, "cache"),
            (VolumeSource::EmptyDir, None)
        );
        assert_eq!(
            volume_in_manifest(&manifest, "nfs"),
            (VolumeSource::Other, None)
        );
        assert_eq!(
            volume_in_manifest(&manifest, "gone"),
            (VolumeSource::Other, None)
        );
    }

    #[test]
    fn a_backup_reads_each_namespace_s_repository_once() {
        let volume = |namespace: &str| PodVolumeBackup {
            volume: Some(PodVolumeRef {
                namespace: namespace.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let backup = Backup {
            status: Some(stowage_proto::v1::BackupStatus {
                volumes: vec![volume("foo"), volume("bar"), volume("foo")],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(backup_namespaces(&backup), vec!["bar", "foo"]);
        assert!(backup_namespaces(&Backup::default()).is_empty());
    }

    #[test]
    fn helper_resources_come_from_the_config_map_with_zero_unbounded() {
        let spec = helper_spec(&BTreeMap::new(), &defaults(), "uid-1");
        assert_eq!(
            spec["image"],
            "ghcr.io/stowage/stowage-restore-helper:0.1.0"
        );
        assert_eq!(spec["args"], json!(["uid-1"]));
        assert_eq!(spec["resources"]["requests"]["cpu"], "100m");
        assert_eq!(spec["resources"]["limits"]["memory"], "128Mi");
        let config = BTreeMap::from([
            ("image".to_string(), "my/helper".to_string()),
            ("cpuLimit".to_string(), "0".to_string()),
            ("memRequest".to_string(), "64Mi".to_string()),
        ]);
        let spec = helper_spec(&config, &defaults(), "uid-1");
        assert_eq!(spec["image"], "my/helper:0.1.0");
        assert!(spec["resources"]["limits"].get("cpu").is_none());
        assert_eq!(spec["resources"]["requests"]["memory"], "64Mi");
    }

    #[test]
    fn a_cancelled_volume_is_mirrored_canceled_under_velero_s_labels() {
        let restore = Restore {
            name: "back".into(),
            uid: "uid-1".into(),
            spec: Some(stowage_proto::v1::RestoreSpec {
                backup_name: "nightly".into(),
                ..Default::default()
            }),
            status: None,
        };
        let volume = PodVolumeRestore {
            phase: VolumePhase::Cancelled as i32,
            ..Default::default()
        };
        let mirror = volume_mirror(&restore, &volume);
        assert_eq!(mirror.status["phase"], "Canceled");
        assert_eq!(mirror.labels["velero.io/restore-name"], "back");
        assert_eq!(mirror.labels["velero.io/restore-uid"], "uid-1");
        assert_eq!(mirror.labels["velero.io/backup-name"], "nightly");
    }

    /// The pod as the resource restore creates it: the helper (and an init hook) added.
    fn restorable_pod(
        manifest: &Value,
        _namespace: &str,
        helper: &Value,
        volumes: &[String],
    ) -> std::result::Result<k8s_openapi::api::core::v1::Pod, String> {
        let mut pod = manifest.clone();
        add_restore_helper(&mut pod, helper, volumes)?;
        serde_json::from_value(pod).map_err(|error| error.to_string())
    }

    #[test]
    fn an_init_restore_hook_follows_the_helper_and_a_bad_one_is_refused() {
        let manifest = |annotations: Value| {
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "sample", "namespace": "foo", "annotations": annotations},
                "spec": {
                    "initContainers": [{"name": "setup", "image": "busybox"}],
                    "containers": [{"name": "app", "image": "busybox"}],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                },
            })
        };
        let helper = helper_spec(&BTreeMap::new(), &defaults(), "uid-1");
        let hooked = manifest(json!({
            "init.hook.restore.velero.io/container-image": "busybox:1.36",
            "init.hook.restore.velero.io/container-name": "warm",
            "init.hook.restore.velero.io/command": r#"["/bin/sh", "-c", "ls /data"]"#,
        }));
        let pod = restorable_pod(&hooked, "foo", &helper, &["data".to_string()]).unwrap();
        let init = pod.spec.unwrap().init_containers.unwrap();
        let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, [RESTORE_HELPER, "warm", "setup"]);
        assert_eq!(init[1].image.as_deref(), Some("busybox:1.36"));
        assert_eq!(
            init[1].command.clone().unwrap(),
            ["/bin/sh", "-c", "ls /data"]
        );

        // A pod backed up after an earlier restore already has the hook's container: once.
        let mut again = hooked.clone();
        again["spec"]["initContainers"] = json!([
            {"name": RESTORE_HELPER, "image": "old-helper"},
            {"name": "warm", "image": "busybox:1.36", "command": ["/bin/sh", "-c", "ls /data"]},
            {"name": "setup", "image": "busybox"},
        ]);
        let pod = restorable_pod(&again, "foo", &helper, &["data".to_string()]).unwrap();
        let init = pod.spec.unwrap().init_containers.unwrap();
        let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, [RESTORE_HELPER, "warm", "setup"]);

        let clash = manifest(json!({
            "init.hook.restore.velero.io/container-image": "alpine",
            "init.hook.restore.velero.io/container-name": "setup",
        }));
        let error = restorable_pod(&clash, "foo", &helper, &["data".to_string()]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "init restore hook: annotation init.hook.restore.velero.io/container-name: the pod already has a container named `setup`"
        );
        let bad = manifest(json!({
            "init.hook.restore.velero.io/container-image": "busybox",
            "init.hook.restore.velero.io/container-name": "Warm",
        }));
        assert!(
            restorable_pod(&bad, "foo", &helper, &["data".to_string()])
                .unwrap_err()
                .to_string()
                .contains("`Warm` is not a valid container name")
        );
    }

    #[test]
    fn recreated_pods_run_the_helper_first_and_lose_their_node() {
        let manifest = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "sample", "namespace": "foo", "uid": "old", "resourceVersion": "3"},
            "spec": {
                "nodeName": "node-a",
                "initContainers": [{"name": "setup", "image": "busybox"}],
                "containers": [{"name": "app", "image": "busybox"}],
                "volumes": [{"name": "data", "emptyDir": {}}],
            },
            "status": {"phase": "Running"},
        });
        let helper = helper_spec(&BTreeMap::new(), &defaults(), "uid-1");
        let mapping = BTreeMap::from([("foo".to_string(), "bar".to_string())]);
        let context = resources::restore::plan::Context {
            namespace_mapping: &mapping,
            volume_restored: false,
        };
        let mut manifest = resources::restore::plan::prepare("pods", &manifest, &context);
        add_restore_helper(&mut manifest, &helper, &["data".to_string()]).unwrap();
        let pod: Pod = serde_json::from_value(manifest).unwrap();
        assert_eq!(pod.metadata.namespace.as_deref(), Some("bar"));
        assert!(pod.metadata.uid.is_none());
        assert!(pod.status.is_none());
        let spec = pod.spec.unwrap();
        assert!(spec.node_name.is_none());
        let init = spec.init_containers.unwrap();
        assert_eq!(init[0].name, RESTORE_HELPER);
        assert_eq!(init[1].name, "setup");
        let mounts = init[0].volume_mounts.clone().unwrap();
        assert_eq!(mounts[0].mount_path, "/restores/data");
    }
}

/// The restore runner on the run engine against in-memory fakes of the four ports, in paused
/// time: limits, leases, cancel with AbandonRestore, and the record written as it goes.
#[cfg(test)]
mod runs {
    use std::time::Duration;

    use stowage_proto::v1::{BackupStatus, CreateRestoreRequest, RestoreSpec};

    use super::*;
    use crate::{
        backup::strip_server_fields,
        testing::{Script, World, limits, pod},
    };

    /// A Completed backup `nightly` of namespace `shop`: each pod with its volumes, each
    /// recreated pod scheduled on `node`.
    fn backup_of(world: &World, pods: &[(&str, &str, &[&str])]) {
        let mut volumes = Vec::new();
        let mut resources = Vec::new();
        for (name, node, names) in pods {
            let manifest = pod("shop", name, node, names);
            let mut manifest = serde_json::to_value(&manifest).unwrap();
            strip_server_fields(&mut manifest);
            resources.push(manifest);
            world
                .cluster
                .schedule
                .lock()
                .unwrap()
                .insert(name.to_string(), node.to_string());
            for volume in *names {
                volumes.push(PodVolumeBackup {
                    volume: Some(PodVolumeRef {
                        namespace: "shop".into(),
                        pod_name: name.to_string(),
                        volume_name: volume.to_string(),
                        ..Default::default()
                    }),
                    node: node.to_string(),
                    phase: VolumePhase::Completed as i32,
                    snapshot_id: format!("snap-{name}-{volume}"),
                    ..Default::default()
                });
            }
        }
        let backup = Backup {
            name: "nightly".into(),
            uid: "backup-uid".into(),
            status: Some(BackupStatus {
                phase: BackupPhase::Completed as i32,
                volumes,
                ..Default::default()
            }),
            origin: BackupOrigin::Stowage as i32,
            ..Default::default()
        };
        world.deps.index.insert_backup(
            "nightly",
            Entry::new(
                backup,
                Vec::new(),
                tokio_util::sync::CancellationToken::new(),
            ),
        );
        world
            .store
            .resources
            .lock()
            .unwrap()
            .insert("nightly".into(), resources);
    }

    async fn start(world: &World) -> Arc<RestoreEntry> {
        create(
            &world.deps,
            CreateRestoreRequest {
                name: "back".into(),
                spec: Some(RestoreSpec {
                    backup_name: "nightly".into(),
                    ..Default::default()
                }),
            },
        )
        .await
        .expect("the restore starts");
        world.deps.index.restore("back").expect("indexed")
    }

    fn phase(entry: &RestoreEntry) -> RestorePhase {
        RestorePhase::try_from(entry.get().status.unwrap_or_default().phase).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_restore_keeps_the_node_limit_and_holds_a_shared_lease_while_it_reads() {
        let world = World::new(limits());
        backup_of(
            &world,
            &[
                ("db-0", "node-a", &["data", "logs"]),
                ("db-1", "node-a", &["data", "logs"]),
                ("db-2", "node-b", &["data"]),
            ],
        );
        world.agents.script(
            "data",
            Script::Complete {
                steps: 4,
                every: Duration::from_secs(30),
            },
        );
        world.agents.script(
            "logs",
            Script::Complete {
                steps: 4,
                every: Duration::from_secs(30),
            },
        );
        let entry = start(&world).await;
        world.settle().await;
        assert_eq!(phase(&entry), RestorePhase::Completed);
        let most = world.agents.most_at_once.lock().unwrap().clone();
        assert_eq!(most.get("node-a"), Some(&2), "{most:?}");
        assert_eq!(most.get("node-b"), Some(&1), "{most:?}");
        let calls = world.repo_manager.calls();
        assert_eq!(
            calls[..2],
            ["ensure shop", "acquire shop restore/back/shop lease-1"],
            "{calls:?}"
        );
        // 2 minutes of restic on node-a's four volumes, two at a time: renewed meanwhile.
        assert!(world.repo_manager.count("renew lease-1") >= 4, "{calls:?}");
        assert_eq!(calls.last().map(String::as_str), Some("release lease-1"));
        assert!(world.repo_manager.held().is_empty());
        let stored = world.store.restores.lock().unwrap()["back"].clone();
        assert_eq!(
            stored.0.status.unwrap().phase,
            RestorePhase::Completed as i32
        );
        assert!(
            stored
                .1
                .iter()
                .any(|line| line.message.contains("restore ended Completed")),
            "the record carries the log"
        );
        assert!(world.agents.abandoned.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_a_restore_kills_restic_and_tells_every_waiting_helper() {
        let world = World::new(crate::deps::Limits {
            max_parallel_per_node: 1,
            ..limits()
        });
        backup_of(&world, &[("db-0", "node-a", &["data", "logs", "cache"])]);
        for volume in ["data", "logs", "cache"] {
            world.agents.script(
                volume,
                Script::Complete {
                    steps: 10,
                    every: Duration::from_secs(60),
                },
            );
        }
        let entry = start(&world).await;
        tokio::time::sleep(Duration::from_secs(90)).await;
        let answer = cancel(&entry);
        assert_eq!(
            answer.status.unwrap().phase,
            RestorePhase::InProgress as i32,
            "the answer is the restore as the cancel was recorded"
        );
        world.settle().await;
        assert_eq!(phase(&entry), RestorePhase::Cancelled);
        let status = entry.get().status.unwrap();
        for volume in &status.volumes {
            assert_eq!(volume.phase, VolumePhase::Cancelled as i32);
            assert_eq!(volume.error_message, "the restore was cancelled");
        }
        // One ran and had its restic killed; the other two never reached the agent.
        assert_eq!(world.agents.started.lock().unwrap().len(), 1);
        assert_eq!(
            world.agents.cancelled.lock().unwrap().clone(),
            [format!("{}-0", entry.get().uid)]
        );
        let abandoned = world.agents.abandoned_volumes();
        assert_eq!(abandoned.len(), 3, "{abandoned:?}");
        assert!(
            abandoned
                .iter()
                .all(|(_, reason)| reason == "the restore was cancelled")
        );
        let request = world.agents.abandoned.lock().unwrap()[0].clone();
        assert_eq!(request.restore_uid, entry.get().uid);
        assert_eq!(request.volume.unwrap().pod_uid, "new-uid-shop-db-0");
        assert!(world.repo_manager.held().is_empty());
        assert_eq!(
            world.store.restores.lock().unwrap()["back"]
                .0
                .status
                .as_ref()
                .unwrap()
                .phase,
            RestorePhase::Cancelled as i32
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_record_is_written_as_volumes_end() {
        let world = World::new(limits());
        backup_of(&world, &[("db-0", "node-a", &["data", "logs"])]);
        world.agents.script(
            "data",
            Script::Complete {
                steps: 1,
                every: Duration::from_secs(5),
            },
        );
        world.agents.script(
            "logs",
            Script::Complete {
                steps: 10,
                every: Duration::from_secs(60),
            },
        );
        let entry = start(&world).await;
        let stored_phases = || {
            world.store.restores.lock().unwrap()["back"]
                .0
                .status
                .clone()
                .unwrap()
                .volumes
                .iter()
                .map(|v| v.phase)
                .collect::<Vec<_>>()
        };
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(
            stored_phases(),
            [
                VolumePhase::Completed as i32,
                VolumePhase::InProgress as i32
            ],
            "a restart now finds the first volume restored"
        );
        world.settle().await;
        assert_eq!(phase(&entry), RestorePhase::Completed);
        assert_eq!(
            stored_phases(),
            [VolumePhase::Completed as i32, VolumePhase::Completed as i32]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn volumes_of_an_unusable_repository_fail_and_their_helpers_are_told() {
        let world = World::new(limits());
        backup_of(&world, &[("db-0", "node-a", &["data"])]);
        world
            .repo_manager
            .broken
            .lock()
            .unwrap()
            .insert("shop".into());
        let entry = start(&world).await;
        world.settle().await;
        assert_eq!(phase(&entry), RestorePhase::Failed);
        let reason = "repository of namespace shop: repository failed: wrong password";
        assert_eq!(entry.get().status.unwrap().volumes[0].error_message, reason);
        assert_eq!(
            world.agents.abandoned_volumes(),
            [("data".to_string(), reason.to_string())]
        );
        assert!(world.agents.started.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_restore_volume_is_abandoned_with_its_reason() {
        let world = World::new(limits());
        backup_of(&world, &[("db-0", "node-a", &["data", "logs"])]);
        world
            .agents
            .script("logs", Script::Fail("restic exploded".into()));
        let entry = start(&world).await;
        world.settle().await;
        assert_eq!(phase(&entry), RestorePhase::PartiallyFailed);
        assert_eq!(
            world.agents.abandoned_volumes(),
            [("logs".to_string(), "restic exploded".to_string())]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_restore_volume_that_stalls_fails_by_the_stall_timeout() {
        let world = World::new(crate::deps::Limits {
            stall_timeout: Duration::from_secs(120),
            ..limits()
        });
        backup_of(&world, &[("db-0", "node-a", &["data"])]);
        world.agents.script("data", Script::StallAfterFirst);
        let entry = start(&world).await;
        world.settle().await;
        assert_eq!(phase(&entry), RestorePhase::Failed);
        let volume = entry.get().status.unwrap().volumes[0].clone();
        assert_eq!(
            volume.error_message,
            "stalled: no progress for 2m0s (last: 40 B of 100 B)"
        );
        assert_eq!(world.agents.cancelled.lock().unwrap().len(), 1);
    }
}
