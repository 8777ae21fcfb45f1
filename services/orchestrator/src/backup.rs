//! The backup runner: finds the pods' selected volumes, makes sure each namespace's repository
//! is ready and leased, and hands the volumes to the run engine, which runs BackupVolume on
//! each volume's node agent within the limits, pod by pod between the pod's backup hooks
//! (Velero's annotations, run through the cluster's exec). Progress streams into the backup's
//! status; every volume ends Completed, Failed or Cancelled before the backup's files are
//! written to the object store.

use std::{panic::AssertUnwindSafe, sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use stowage_proto::{
    prost_types,
    v1::{
        Backup, BackupOrigin, BackupPhase, BackupStatus, BackupVolumeRequest, CreateBackupRequest,
        PodVolumeBackup, PodVolumeRef, Progress, SkippedVolume, VolumePhase, VolumeSource,
        backup_volume_event,
    },
};
use tokio::time::Instant;
use tracing::{Instrument, field};

use stowage_contract::{
    self as contract,
    identity::{StableIdentity, deployment_of_replica_set},
    tags::{self, labels},
};

use crate::{
    deps::Deps,
    engine::{self, Reporter, RunControl, SHUT_DOWN, VolumeOutcome, VolumeWork, panic_message},
    error::{
        Error, Result, validate_duration, validate_label_selector, validate_name,
        validate_namespace,
    },
    kube::mirror::{self, Mirror, MirrorKind},
    parents::Parents,
    ports::{ClusterExec, ClusterPort, MirrorSession},
    repositories::{self, Leases, Prepared},
    selection::{VolumeKind, claim_skip, select_volumes},
    state::{BackupEntry, Entry, now},
    tally::{ending, tally},
};

/// At most how often a running backup's record is written as its volumes end.
const RECORD_EVERY: Duration = Duration::from_secs(10);

/// How often a running volume's progress is copied into its PodVolumeBackup mirror.
const MIRROR_PROGRESS_EVERY: Duration = Duration::from_secs(5);

pub fn to_duration(duration: Option<&prost_types::Duration>) -> Option<Duration> {
    duration
        .filter(|d| d.seconds > 0 || d.nanos > 0)
        .map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
}

pub fn is_terminal(phase: i32) -> bool {
    matches!(
        VolumePhase::try_from(phase),
        Ok(VolumePhase::Completed | VolumePhase::Failed | VolumePhase::Cancelled)
    )
}

pub fn backup_is_final(phase: i32) -> bool {
    matches!(
        BackupPhase::try_from(phase),
        Ok(BackupPhase::Completed
            | BackupPhase::PartiallyFailed
            | BackupPhase::Failed
            | BackupPhase::Cancelled)
    )
}

/// Validates the request, records the backup as NEW and starts its runner.
pub async fn create(deps: &Deps, request: CreateBackupRequest) -> Result<Backup> {
    create_labelled(deps, request, Default::default()).await
}

/// [`create`] for a backup carrying `labels` (a schedule's backups carry
/// `velero.io/schedule-name`): the one way a backup is started.
pub async fn create_labelled(
    deps: &Deps,
    request: CreateBackupRequest,
    labels: std::collections::HashMap<String, String>,
) -> Result<Backup> {
    validate_name("backup name", &request.name)?;
    let spec = request.spec.unwrap_or_default();
    validate_spec(&spec)?;
    let uid = uuid::Uuid::new_v4().to_string();
    let backup = Backup {
        name: request.name.clone(),
        uid: uid.clone(),
        spec: Some(spec),
        status: Some(BackupStatus {
            phase: BackupPhase::New as i32,
            started: Some(now()),
            trace_id: stowage_telemetry::current_trace_id().unwrap_or_default(),
            ..Default::default()
        }),
        origin: BackupOrigin::Stowage as i32,
        unrestorable_reason: String::new(),
        labels,
    };
    let entry = Entry::new(backup.clone(), Vec::new(), deps.shutdown.child_token());
    if !deps.index.insert_backup(&request.name, entry.clone()) {
        return Err(Error::BackupExists(request.name));
    }
    let span = tracing::info_span!("backup", backup = %request.name, backup_uid = %uid);
    let runner_deps = deps.clone();
    deps.tasks
        .spawn(async move { run(runner_deps, entry, false).await }.instrument(span));
    Ok(backup)
}

/// Checks a backup's spec as CreateBackup does (a schedule's template is checked the same way).
pub fn validate_spec(spec: &stowage_proto::v1::BackupSpec) -> Result<()> {
    for namespace in spec
        .included_namespaces
        .iter()
        .chain(&spec.excluded_namespaces)
    {
        if namespace != "*" {
            validate_namespace(namespace)?;
        }
    }
    validate_label_selector(&spec.label_selector)?;
    validate_duration("ttl", spec.ttl.as_ref())?;
    validate_duration("timeout", spec.timeout.as_ref())?;
    crate::resources::validate_resource_lists(&spec.include_resources, &spec.exclude_resources)?;
    crate::hooks::spec_hooks(&spec.hooks)?;
    crate::paths::backup_excludes(spec)?;
    Ok(())
}

/// Runs a backup that a previous orchestrator left running (found InProgress in the storage
/// location) to its end: see [`crate::takeover`].
pub fn spawn_resumed(deps: &Deps, entry: Arc<BackupEntry>) {
    let (name, uid) = entry.read(|backup| (backup.name.clone(), backup.uid.clone()));
    let span = tracing::info_span!("backup", backup = %name, backup_uid = %uid, resumed = true);
    let runner_deps = deps.clone();
    deps.tasks
        .spawn(async move { run(runner_deps, entry, true).await }.instrument(span));
}

/// A volume the runner will back up, with the pod it belongs to.
struct Planned {
    volume: PodVolumeBackup,
    /// Its pod, as an index into [`Plan::pods`].
    pod: usize,
}

/// The result of looking at the cluster: volumes to back up, volumes left out, and the
/// manifests a restore needs (pods with backed-up volumes, their PVCs).
#[derive(Default)]
struct Plan {
    volumes: Vec<Planned>,
    skipped: Vec<SkippedVolume>,
    resources: Vec<Value>,
    /// The pods with volumes to back up, as listed (their hook annotations are read from
    /// these).
    pods: Vec<Pod>,
}

/// The expiration of a backup that ends now: its spec's TTL or the default.
pub fn expiration(deps: &Deps, backup: &Backup) -> prost_types::Timestamp {
    let ttl = to_duration(backup.spec.as_ref().and_then(|s| s.ttl.as_ref()))
        .unwrap_or(deps.limits.default_ttl);
    let expires = chrono::Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default();
    prost_types::Timestamp {
        seconds: expires.timestamp(),
        nanos: 0,
    }
}

/// Runs one backup to its end. Whatever happens inside (an error, a panic, a cancel), the
/// leases are released, the mirrors written, the final state stored and then shown to
/// watchers.
async fn run(deps: Deps, entry: Arc<BackupEntry>, resumed: bool) {
    let name = entry.get().name;
    if !resumed {
        entry.log("info", format!("backup {name} started"));
    }
    let timeout = to_duration(entry.get().spec.and_then(|s| s.timeout).as_ref())
        .unwrap_or(deps.limits.default_timeout);
    let control = RunControl::new(entry.cancel.clone(), deps.shutdown.clone(), timeout);
    let mirrors = deps.mirrors(MirrorKind::PodVolumeBackup);
    let warn_entry = entry.clone();
    let leases = Leases::new(
        deps.repo_manager.clone(),
        deps.limits.lease_ttl,
        Arc::new(move |message| warn_entry.log("warning", message)),
    );
    let body = async {
        if resumed {
            crate::takeover::execute_backup(&deps, &entry, &mirrors, &leases, &control).await
        } else {
            execute(&deps, &entry, &mirrors, &leases, &control).await
        }
    };
    let body = AssertUnwindSafe(body).catch_unwind();
    let (deps_ref, entry_ref) = (&deps, &entry);
    let outcome = engine::while_writing(body, &control.volume_ended, RECORD_EVERY, move || {
        persist(deps_ref, entry_ref, None)
    })
    .await
    .unwrap_or_else(|panic| {
        Err(Error::Failed(format!(
            "the backup runner panicked: {}",
            panic_message(panic.as_ref())
        )))
    });
    let cancelled = control.cancel_requested();
    if deps.shutdown.is_cancelled() && !cancelled && outcome.is_ok() {
        // Shut down (a rolling update, a drain, lost leadership) mid-run: the volumes on the
        // agents keep running and the record stays InProgress, for the next leader (or this
        // one restarted) to take over. The leases are left to lapse, not released: restic
        // still runs under them.
        entry.log(
            "warning",
            format!("the orchestrator shut down; backup {name} is left running for the next leader to take over"),
        );
        mirrors.finish().await;
        persist(&deps, &entry, None).await;
        return;
    }
    leases.release_all().await;
    // Every volume's mirror shows its end before the backup does.
    mirrors.finish().await;
    let outcome = match outcome {
        Ok(()) if deps.shutdown.is_cancelled() => Err(Error::Failed(SHUT_DOWN.to_string())),
        other => other,
    };
    // The final state is written to the object store before watchers see it, so a backup
    // reported ended is one a restarted orchestrator also finds ended.
    let mut backup = entry.get();
    let expires = expiration(&deps, &backup);
    {
        let status = backup.status.get_or_insert_with(Default::default);
        if let Err(error) = &outcome {
            status.failure_reason = error.to_string();
        }
        let reason = if cancelled {
            "the backup was cancelled".to_string()
        } else {
            status.failure_reason.clone()
        };
        for volume in &mut status.volumes {
            if !is_terminal(volume.phase) {
                volume.phase = if cancelled {
                    VolumePhase::Cancelled as i32
                } else {
                    VolumePhase::Failed as i32
                };
                volume.error_message = reason.clone();
                volume.finished = Some(now());
            }
        }
        recount(status);
        status.phase = final_phase(status, cancelled, outcome.is_err()) as i32;
        status.finished = Some(now());
        status.expiration = Some(expires);
    }
    let status = backup.status.clone().unwrap_or_default();
    let phase = BackupPhase::try_from(status.phase).unwrap_or_default();
    if let Err(error) = &outcome {
        entry.log("error", format!("backup {name} failed: {error}"));
    }
    entry.log(
        "info",
        format!(
            "backup {name} ended {}: {} volumes, {} completed, {} failed",
            crate::tally::backup_phase_word(phase as i32),
            status.volumes_total,
            status.volumes_completed,
            status.volumes_failed
        ),
    );
    // Before the final state is written and shown: its deletions are in its log, and a
    // schedule's next firing never overlaps them.
    crate::schedules::retention::after_backup(&deps, &entry, &backup).await;
    if let Some(store) = &deps.store
        && let Err(error) = store.put_backup(&backup, &entry.logs(), None).await
    {
        entry.log(
            "error",
            format!("writing the backup to the object store: {error}"),
        );
    }
    entry.update(|current| *current = backup);
}

/// Writes the backup's record and logs (and `resources` when given); a failure is logged with
/// the backup, since the in-memory state is still served.
pub async fn persist(
    deps: &Deps,
    entry: &BackupEntry,
    resources: Option<&stowage_velero_format::BackupResources>,
) {
    if let Some(store) = &deps.store
        && let Err(error) = store
            .put_backup(&entry.get(), &entry.logs(), resources)
            .await
    {
        entry.log(
            "error",
            format!("writing the backup to the object store: {error}"),
        );
    }
}

fn final_phase(status: &BackupStatus, cancelled: bool, failed: bool) -> BackupPhase {
    if cancelled {
        BackupPhase::Cancelled
    } else {
        ending(status.volumes_completed, status.volumes_failed, failed).into()
    }
}

/// Recomputes the counters and the summed progress from the volumes.
pub fn recount(status: &mut BackupStatus) {
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

/// The namespaces of `volumes`, each once, sorted.
pub fn namespaces_of<'a>(
    references: impl IntoIterator<Item = Option<&'a PodVolumeRef>>,
) -> Vec<String> {
    let mut namespaces: Vec<String> = references
        .into_iter()
        .flatten()
        .map(|reference| reference.namespace.clone())
        .collect();
    namespaces.sort();
    namespaces.dedup();
    namespaces
}

async fn execute(
    deps: &Deps,
    entry: &Arc<BackupEntry>,
    mirrors: &Arc<dyn MirrorSession>,
    leases: &Leases,
    control: &RunControl,
) -> Result<()> {
    let backup = entry.update(|backup| {
        backup.status.get_or_insert_with(Default::default).phase = BackupPhase::InProgress as i32;
    });
    let cluster = deps.cluster.as_ref().ok_or(Error::NoCluster("a backup"))?;
    let plan = discover(cluster.as_ref(), &backup).await?;
    entry.log(
        "info",
        format!(
            "found {} volumes to back up, {} skipped",
            plan.volumes.len(),
            plan.skipped.len()
        ),
    );
    for skipped in &plan.skipped {
        entry.log(
            "info",
            format!(
                "skipping {}/{} volume {}: {}",
                skipped.namespace, skipped.pod, skipped.volume, skipped.detail
            ),
        );
    }
    let backup = entry.update(|backup| {
        let status = backup.status.get_or_insert_with(Default::default);
        status.volumes = plan.volumes.iter().map(|p| p.volume.clone()).collect();
        status.skipped = plan.skipped.clone();
        recount(status);
    });
    // Written before any agent runs, so a restarted orchestrator knows which volumes were
    // unfinished.
    let resources = cluster
        .capture_resources(
            &backup,
            deps.limits.list_page_size,
            &plan.resources,
            &|level, line| entry.log(level, line),
        )
        .await?;
    persist(deps, entry, Some(&resources)).await;
    // A volume still waiting for its turn is mirrored as New once it has waited as long as a
    // mirror may lag its volume anyway (progress is mirrored no more often): most volumes
    // start sooner, and their objects are created once, already running, instead of created
    // New and patched moments later.
    for volume in backup.status.iter().flat_map(|status| &status.volumes) {
        mirrors.submit_after(volume_mirror(&backup, volume), MIRROR_PROGRESS_EVERY);
    }

    // One repository and one shared lease per namespace.
    let namespaces = namespaces_of(plan.volumes.iter().map(|p| p.volume.volume.as_ref()));
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

    // Each volume's parent from the records of every other backup, read once for the run; a
    // backup that completes meanwhile is not waited for (the agent can still look it up).
    let parents = Parents::from_index(&deps.index, &backup.name);
    let mut work = BackupWork {
        deps: deps.clone(),
        entry: entry.clone(),
        mirrors: mirrors.clone(),
        header: Backup {
            name: backup.name.clone(),
            uid: backup.uid.clone(),
            ..Default::default()
        },
        parents: Vec::new(),
        repositories,
        spec_hooks: crate::hooks::spec_hooks(
            backup.spec.as_ref().map_or(&[][..], |spec| &spec.hooks),
        )?,
        resumed: false,
    };
    for planned in &plan.volumes {
        let namespace = planned
            .volume
            .volume
            .as_ref()
            .map(|r| r.namespace.as_str())
            .unwrap_or_default();
        let parent = work.repositories.access(namespace).ok().and_then(|access| {
            parents
                .of(&access.url, &planned.volume.stable_identity)
                .map(str::to_string)
        });
        work.parents.push(parent);
    }
    // Pod by pod, so each pod's hooks run once around all of its volumes; every pod's
    // volumes share the run's slots.
    let work = Arc::new(work);
    let slots = engine::Slots::new(&deps.limits.run_limits());
    let mut by_pod: Vec<Vec<usize>> = vec![Vec::new(); plan.pods.len()];
    for (index, planned) in plan.volumes.iter().enumerate() {
        by_pod[planned.pod].push(index);
    }
    let pods = plan
        .pods
        .iter()
        .zip(by_pod)
        .map(|(pod, indexes)| run_pod(cluster, &work, pod, indexes, false, &slots, control));
    futures::future::join_all(pods).await;
    Ok(())
}

/// Backs up the volumes `indexes` of `pod` between the pod's pre and post backup hooks
/// (Velero's annotations; `stowage_hooks::around_pod_volumes` has the rules). A hook that
/// cannot be run (a bad annotation, a container the pod lacks) or a pre hook that fails the
/// pod fails its volumes without running restic; a post hook with on-error Fail that fails
/// turns the pod's completed volumes Failed (their snapshots stay recorded). Every hook run
/// goes into the backup's log. A pod whose volumes `started` before a takeover had its pre
/// hooks run then (its volumes run only after them): only its post hooks run now.
pub(crate) async fn run_pod(
    cluster: &Arc<dyn ClusterPort>,
    work: &Arc<BackupWork>,
    pod: &Pod,
    indexes: Vec<usize>,
    started: bool,
    slots: &engine::Slots,
    control: &RunControl,
) {
    let pod_name = format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    );
    if let Err(error) = crate::paths::pod_excludes(pod) {
        work.fail_volumes(&indexes, &VolumeOutcome::Failed(error.to_string()), control);
        return;
    }
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let labels = crate::hooks::labels_of(pod);
    let hooks =
        match stowage_hooks::pod_backup_hooks(namespace, &labels, &annotations, &work.spec_hooks) {
            Ok(mut hooks) => {
                if started {
                    hooks.pre.clear();
                }
                hooks
            }
            Err(error) => {
                let reason = format!("pod {pod_name}: backup hook not run: {error}");
                work.fail_volumes(&indexes, &VolumeOutcome::Failed(reason), control);
                return;
            }
        };
    // No hook for a pod whose repository cannot be used: its volumes fail in the engine
    // with the repository's reason, and nothing is frozen for a backup that will not run.
    if hooks.is_empty() || work.repositories.access(namespace).is_err() {
        engine::run_volumes_in(work.clone(), indexes, slots, control).await;
        return;
    }
    let volumes = engine::run_volumes_in(work.clone(), indexes.clone(), slots, control);
    let hooked = stowage_hooks::around_pod_volumes(
        &ClusterExec(cluster.clone()),
        pod,
        &hooks,
        stowage_hooks::DEFAULT_OUTPUT_LIMIT,
        &control.cancel,
        volumes,
    )
    .await;
    let hooked = match hooked {
        Ok(hooked) => hooked,
        Err(error) => {
            let reason = format!("pod {pod_name}: backup hook not run: {error}");
            work.fail_volumes(&indexes, &VolumeOutcome::Failed(reason), control);
            return;
        }
    };
    for run in hooked.runs() {
        let (level, line) = crate::hooks::log_line(run);
        work.entry.log(level, line);
    }
    // On every volume of the pod (its records and mirrors), before any is failed for them.
    let results: Vec<_> = hooked.runs().map(crate::hooks::result_of).collect();
    for &index in &indexes {
        let volume = work.update(index, |volume| volume.hooks = results.clone());
        work.mirrors.submit(volume_mirror(&work.header, &volume));
    }
    let Some(reason) = hooked.failure() else {
        return;
    };
    if hooked.volumes.is_none() {
        // The pre hook failed the pod: none of its volumes ran. A pre hook cut short by the
        // backup's cancel ends them as the engine ends a stopped volume.
        let outcome = if control.cancel.is_cancelled() {
            control.stopped()
        } else {
            VolumeOutcome::Failed(reason)
        };
        work.fail_volumes(&indexes, &outcome, control);
    } else {
        let completed: Vec<usize> = indexes
            .into_iter()
            .filter(|&index| work.volume(index).phase == VolumePhase::Completed as i32)
            .collect();
        work.fail_volumes(&completed, &VolumeOutcome::Failed(reason), control);
    }
}

fn namespace_of(volume: &PodVolumeBackup) -> String {
    volume
        .volume
        .as_ref()
        .map(|r| r.namespace.clone())
        .unwrap_or_default()
}

/// The backup's volumes as the run engine drives them.
pub(crate) struct BackupWork {
    pub(crate) deps: Deps,
    pub(crate) entry: Arc<BackupEntry>,
    pub(crate) mirrors: Arc<dyn MirrorSession>,
    /// The backup's name and uid, all a mirror or a request needs of it.
    pub(crate) header: Backup,
    /// Each namespace's repository, or why it cannot be used.
    pub(crate) repositories: Prepared,
    /// The snapshot the agent gives `restic backup --parent`; `None` when no record names one.
    pub(crate) parents: Vec<Option<String>>,
    /// The spec's hooks, for the pods they select that declare none of their own.
    pub(crate) spec_hooks: Vec<stowage_hooks::ResourceHook>,
    /// Taken over from a previous orchestrator: a volume is first re-attached on its agent,
    /// and run only when the agent does not have it.
    pub(crate) resumed: bool,
}

impl BackupWork {
    /// Applies `change` to volume `index`, recounts the backup, and returns the volume.
    /// Only the volume is cloned, never the whole backup: that made large backups quadratic.
    fn update(&self, index: usize, change: impl FnOnce(&mut PodVolumeBackup)) -> PodVolumeBackup {
        let mut updated = PodVolumeBackup::default();
        self.entry.modify(|backup| {
            let status = backup.status.get_or_insert_with(Default::default);
            if let Some(volume) = status.volumes.get_mut(index) {
                change(volume);
                updated = volume.clone();
            }
            recount(status);
        });
        updated
    }

    fn volume(&self, index: usize) -> PodVolumeBackup {
        self.entry
            .read(|backup| {
                backup
                    .status
                    .as_ref()
                    .and_then(|s| s.volumes.get(index).cloned())
            })
            .unwrap_or_default()
    }

    /// Ends volumes that will not run (their pod's hook failed them) or that a post hook
    /// failed after they completed, as the engine ends a volume.
    fn fail_volumes(&self, indexes: &[usize], outcome: &VolumeOutcome, control: &RunControl) {
        for &index in indexes {
            self.finish(index, outcome.clone());
        }
        if !indexes.is_empty() {
            control.volume_ended.notify_one();
        }
    }

    /// Stable across orchestrators (the backup's uid and the volume's place in its record),
    /// so one that takes over asks the agent for the operation its predecessor started.
    pub(crate) fn operation_id(&self, index: usize) -> String {
        format!("{}-{index}", self.header.uid)
    }

    /// The agent ran `restic snapshots` to find the parent: expected when no record named one
    /// (a first backup), a warning when the one sent was gone (forgotten behind our back).
    fn log_parent_fallback(&self, index: usize, volume: &PodVolumeBackup, reason: &str) {
        if reason.is_empty() {
            return;
        }
        let reference = volume.volume.clone().unwrap_or_default();
        let level = if self.parents.get(index).is_some_and(Option::is_some) {
            "warning"
        } else {
            "info"
        };
        self.entry.log(
            level,
            format!(
                "{}/{} volume {}: the agent looked the parent snapshot up with restic \
                 snapshots: {reason}",
                reference.namespace, reference.pod_name, reference.volume_name
            ),
        );
    }
}

#[tonic::async_trait]
impl VolumeWork for BackupWork {
    fn span(&self, index: usize) -> tracing::Span {
        let volume = self.volume(index);
        let reference = volume.volume.clone().unwrap_or_default();
        tracing::info_span!(
            "backup_volume",
            backup = %self.header.name,
            namespace = %reference.namespace,
            pod = %reference.pod_name,
            volume = %reference.volume_name,
            node = %volume.node,
            snapshot_id = field::Empty,
            bytes = field::Empty,
        )
    }

    async fn prepare(&self, index: usize) -> Result<String> {
        let volume = self.volume(index);
        self.repositories.access(&namespace_of(&volume))?;
        Ok(volume.node)
    }

    async fn run(&self, index: usize, node: &str, reporter: &Reporter) -> Result<()> {
        let volume = self.volume(index);
        let repository = self.repositories.access(&namespace_of(&volume))?;
        let backup = &self.header;
        let request = BackupVolumeRequest {
            operation_id: self.operation_id(index),
            volume: volume.volume.clone(),
            repository: Some(repository.clone()),
            backup_name: backup.name.clone(),
            backup_uid: backup.uid.clone(),
            stable_identity: volume.stable_identity.clone(),
            extra_tags: Default::default(),
            exclude_patterns: volume.excluded_paths.clone(),
            parent_snapshot_id: self
                .parents
                .get(index)
                .cloned()
                .flatten()
                .unwrap_or_default(),
        };
        let kept = if self.resumed {
            crate::takeover::reattach_backup(self, index, node, &volume).await?
        } else {
            None
        };
        let reattached = kept.is_some();
        let started = self.update(index, |volume| {
            volume.phase = VolumePhase::InProgress as i32;
            if !reattached || volume.started.is_none() {
                volume.started = Some(now());
            }
            volume.repository = repository.url.clone();
        });
        self.mirrors.submit(volume_mirror(backup, &started));
        let mut stream = match kept {
            Some(stream) => stream,
            None => self.deps.agents.backup_volume(node, request).await?,
        };
        let mut last_mirrored = Instant::now();
        loop {
            let Some(event) = stream.next().await else {
                return Err(Error::Failed(format!(
                    "agent on node {node} ended the stream without a result"
                )));
            };
            match event?.event {
                Some(backup_volume_event::Event::Queued(_)) => {
                    reporter.queued();
                    self.update(index, |v| v.phase = VolumePhase::Queued as i32);
                }
                Some(backup_volume_event::Event::Retrying(retrying)) => {
                    log_retry(node, &retrying);
                }
                Some(backup_volume_event::Event::Progress(progress)) => {
                    reporter.progress(&progress);
                    let volume = self.update(index, |v| {
                        v.phase = VolumePhase::InProgress as i32;
                        v.progress = Some(progress);
                    });
                    // The mirror shows progress too, but the API server is not written to on
                    // every restic status line.
                    if last_mirrored.elapsed() >= MIRROR_PROGRESS_EVERY {
                        last_mirrored = Instant::now();
                        self.mirrors.submit(volume_mirror(backup, &volume));
                    }
                }
                Some(backup_volume_event::Event::Result(result)) => {
                    let span = tracing::Span::current();
                    span.record("snapshot_id", result.snapshot_id.as_str());
                    span.record("bytes", result.bytes_total);
                    self.log_parent_fallback(index, &volume, &result.parent_fallback_reason);
                    self.update(index, |v| {
                        v.snapshot_id = result.snapshot_id.clone();
                        v.parent_snapshot_id = result.parent_snapshot_id.clone();
                        v.bytes_added = result.bytes_added;
                        v.bytes_stored = result.bytes_stored;
                        v.files_new = result.files_new;
                        v.files_changed = result.files_changed;
                        v.files_unmodified = result.files_unmodified;
                        v.path = result.path.clone();
                        v.progress = Some(Progress {
                            bytes_done: result.bytes_total,
                            bytes_total: result.bytes_total,
                            files_done: result.files_total,
                            files_total: result.files_total,
                            seconds_elapsed: result.duration_seconds,
                        });
                    });
                    return Ok(());
                }
                None => {}
            }
        }
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

    fn hands_over_on_shutdown(&self) -> bool {
        true
    }

    fn finish(&self, index: usize, outcome: VolumeOutcome) {
        if self.deps.shutdown.is_cancelled() && outcome == VolumeOutcome::Failed(SHUT_DOWN.into()) {
            // Handed over (see `hands_over_on_shutdown`): the volume stays as it is in the
            // record, for the next leader to re-attach.
            return;
        }
        let volume = self.update(index, |volume| {
            volume.finished = Some(now());
            match &outcome {
                VolumeOutcome::Completed => volume.phase = VolumePhase::Completed as i32,
                VolumeOutcome::Failed(message) => {
                    volume.phase = VolumePhase::Failed as i32;
                    volume.error_message = message.clone();
                }
                VolumeOutcome::Cancelled => {
                    volume.phase = VolumePhase::Cancelled as i32;
                    volume.error_message = "the backup was cancelled".to_string();
                }
            }
        });
        let reference = volume.volume.clone().unwrap_or_default();
        let what = format!(
            "{}/{} volume {}",
            reference.namespace, reference.pod_name, reference.volume_name
        );
        match &outcome {
            VolumeOutcome::Completed => self.entry.log(
                "info",
                format!("{what} completed: snapshot {}", volume.snapshot_id),
            ),
            VolumeOutcome::Failed(message) => {
                self.entry.log("error", format!("{what} failed: {message}"))
            }
            VolumeOutcome::Cancelled => self.entry.log("warning", format!("{what} cancelled")),
        }
        self.mirrors.submit(volume_mirror(&self.header, &volume));
    }
}

/// The PodVolumeBackup mirror of `volume`, as `kubectl get podvolumebackups` should show it.
pub fn volume_mirror(backup: &Backup, volume: &PodVolumeBackup) -> Mirror {
    let reference = volume.volume.clone().unwrap_or_default();
    let name = mirror::object_name(&backup.name, &reference.pod_uid, &reference.volume_name);
    let phase = contract::phase::VolumePhase::of_proto(volume.phase).as_str();
    let progress = volume.progress.unwrap_or_default();
    let mut labels = json!({
        labels::BACKUP_NAME: backup.name,
        labels::BACKUP_UID: backup.uid,
    });
    let mut spec = json!({
        "node": volume.node,
        "pod": {"kind": "Pod", "namespace": reference.namespace, "name": reference.pod_name, "uid": reference.pod_uid},
        "volume": reference.volume_name,
        "backupStorageLocation": stowage_velero_format::pod_volume_backup::DEFAULT_STORAGE_LOCATION,
        "repoIdentifier": volume.repository,
        "uploaderType": "restic",
        "tags": {
            tags::BACKUP: backup.name, tags::BACKUP_UID: backup.uid, tags::NS: reference.namespace,
            tags::POD: reference.pod_name, tags::POD_UID: reference.pod_uid,
            tags::VOLUME: reference.volume_name,
        },
    });
    if !volume.excluded_paths.is_empty() {
        spec["excludedPaths"] = json!(volume.excluded_paths);
    }
    // As Velero marks a PVC's volume: `kubectl get podvolumebackups -l velero.io/pvc-uid=…`.
    if !reference.pvc_uid.is_empty() {
        labels[labels::PVC_UID] = json!(reference.pvc_uid);
        spec["tags"][tags::PVC_UID] = json!(reference.pvc_uid);
    }
    let status = json!({
        "path": volume.path,
        "phase": phase,
        "snapshotID": volume.snapshot_id,
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

/// The agent runs a restic command again after a transient failure; the volume stays in
/// progress, the log says why it takes longer.
pub fn log_retry(node: &str, retrying: &stowage_proto::v1::Retrying) {
    tracing::warn!(
        node,
        command = %retrying.command,
        failed_attempt = retrying.failed_attempt,
        max_attempts = retrying.max_attempts,
        delay_seconds = retrying.delay_seconds,
        reason = %retrying.reason,
        "the agent retries restic"
    );
}

pub fn rfc3339(timestamp: &prost_types::Timestamp) -> String {
    chrono::DateTime::from_timestamp(timestamp.seconds, timestamp.nanos.max(0) as u32)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Lists the pods the backup covers and decides on each of their volumes.
async fn discover(cluster: &dyn ClusterPort, backup: &Backup) -> Result<Plan> {
    let spec = backup.spec.clone().unwrap_or_default();
    let namespaces = if spec.included_namespaces.is_empty()
        || spec.included_namespaces.iter().any(|n| n == "*")
    {
        cluster.namespaces().await?
    } else {
        spec.included_namespaces.clone()
    };
    let excludes = crate::paths::backup_excludes(&spec)?;
    let mut plan = Plan::default();
    for namespace in namespaces
        .iter()
        .filter(|n| !spec.excluded_namespaces.contains(n))
    {
        for pod in cluster
            .pods(
                namespace,
                &spec.label_selector.clone().into_iter().collect(),
            )
            .await?
        {
            plan_pod(
                cluster,
                namespace,
                &pod,
                spec.default_volumes_to_fs_backup,
                &excludes,
                &mut plan,
            )
            .await?;
        }
    }
    Ok(plan)
}

async fn plan_pod(
    cluster: &dyn ClusterPort,
    namespace: &str,
    pod: &Pod,
    opt_out: bool,
    excludes: &[stowage_contract::paths::ScopedPattern],
    plan: &mut Plan,
) -> Result<()> {
    // A bad annotation fails the pod's volumes when they run (`run_pod`), naming it.
    let pod_excludes = crate::paths::pod_excludes(pod).unwrap_or_default();
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let selection = select_volumes(pod, opt_out);
    for skipped in selection.skipped {
        plan.skipped.push(SkippedVolume {
            namespace: namespace.to_string(),
            pod: pod_name.clone(),
            volume: skipped.volume,
            reason: skipped.reason as i32,
            detail: skipped.detail,
        });
    }
    let mut took_any = false;
    for selected in selection.selected {
        let mut reference = PodVolumeRef {
            namespace: namespace.to_string(),
            pod_name: pod_name.clone(),
            pod_uid: pod_uid.clone(),
            volume_name: selected.name.clone(),
            ..Default::default()
        };
        let stable_identity = match &selected.kind {
            VolumeKind::PersistentVolumeClaim { claim_name } => {
                let pvc = cluster.pvc(namespace, claim_name).await?;
                // A block-mode or unbound claim has no files on the node to read.
                let usable = match claim_skip(claim_name, pvc.as_ref()) {
                    Some(skip) => Err(skip),
                    None => pvc
                        .as_ref()
                        .and_then(|pvc| {
                            let pv = pvc.spec.as_ref()?.volume_name.clone()?;
                            Some((pvc, pv))
                        })
                        .ok_or((
                            stowage_proto::v1::SkipReason::PvcNotBound,
                            format!("PVC {claim_name} is not bound to a persistent volume"),
                        )),
                };
                let (pvc, pv_name) = match usable {
                    Ok(usable) => usable,
                    Err((reason, detail)) => {
                        plan.skipped.push(SkippedVolume {
                            namespace: namespace.to_string(),
                            pod: pod_name.clone(),
                            volume: selected.name.clone(),
                            reason: reason as i32,
                            detail,
                        });
                        continue;
                    }
                };
                reference.source = VolumeSource::PersistentVolumeClaim as i32;
                reference.pv_name = pv_name;
                reference.pvc_name = claim_name.clone();
                reference.pvc_uid = pvc.metadata.uid.clone().unwrap_or_default();
                let mut manifest = serde_json::to_value(pvc)
                    .map_err(|error| Error::Failed(format!("PVC manifest: {error}")))?;
                strip_server_fields(&mut manifest);
                if !plan.resources.contains(&manifest) {
                    plan.resources.push(manifest);
                }
                StableIdentity::claim(pvc.metadata.uid.clone().unwrap_or_default()).to_string()
            }
            VolumeKind::EmptyDir => {
                reference.source = VolumeSource::EmptyDir as i32;
                owner_identity(cluster, namespace, pod, &selected.name).await?
            }
            _ => {
                reference.source = VolumeSource::Other as i32;
                owner_identity(cluster, namespace, pod, &selected.name).await?
            }
        };
        took_any = true;
        plan.volumes.push(Planned {
            pod: plan.pods.len(),
            volume: PodVolumeBackup {
                volume: Some(reference),
                node: node.clone(),
                phase: VolumePhase::Pending as i32,
                stable_identity,
                excluded_paths: crate::paths::volume_excludes(
                    excludes,
                    &pod_excludes,
                    &selected.name,
                ),
                ..Default::default()
            },
        });
    }
    if took_any {
        let mut manifest = serde_json::to_value(pod)
            .map_err(|error| Error::Failed(format!("pod manifest: {error}")))?;
        strip_server_fields(&mut manifest);
        plan.resources.push(manifest);
        plan.pods.push(pod.clone());
    }
    Ok(())
}

/// Removes what the API server owns (status, uid, resourceVersion, …) so the manifest can be
/// created again in another cluster.
pub fn strip_server_fields(manifest: &mut Value) {
    if let Some(object) = manifest.as_object_mut() {
        object.remove("status");
        if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            for field in [
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "generation",
                "managedFields",
                "selfLink",
                "deletionTimestamp",
            ] {
                metadata.remove(field);
            }
        }
    }
}

/// `<owner-kind>/<owner-name>/<volume>` for volumes that live and die with the pod: the
/// controller that recreates the pod names it, so a recreated pod finds its parent snapshot.
async fn owner_identity(
    cluster: &dyn ClusterPort,
    namespace: &str,
    pod: &Pod,
    volume: &str,
) -> Result<String> {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let owner = pod
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|owner| owner.controller == Some(true));
    let Some(owner) = owner else {
        return Ok(StableIdentity::pod(pod_name, volume).to_string());
    };
    if owner.kind == "ReplicaSet" {
        if let Some(deployment) = cluster.replica_set_owner(namespace, &owner.name).await? {
            return Ok(StableIdentity::owned("Deployment", deployment, volume).to_string());
        }
        // The ReplicaSet cannot be read: its name `<deployment>-<pod-template-hash>` says it.
        let hash = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get("pod-template-hash"));
        let deployment = deployment_of_replica_set(&owner.name, hash.map(String::as_str))
            .filter(|name| !name.is_empty());
        if let Some(deployment) = deployment {
            return Ok(StableIdentity::owned("Deployment", deployment, volume).to_string());
        }
    }
    Ok(StableIdentity::owned(owner.kind, owner.name, volume).to_string())
}

/// Cancels a running backup; its volumes end CANCELLED when their agents stop. An ended
/// backup is returned as it is.
pub fn cancel(entry: &Entry<Backup>) -> Backup {
    if !backup_is_final(entry.read(|b| b.status.as_ref().map_or(0, |s| s.phase))) {
        entry.log("warning", "cancel requested");
        entry.cancel.cancel();
    }
    entry.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(phase: VolumePhase) -> PodVolumeBackup {
        PodVolumeBackup {
            phase: phase as i32,
            ..Default::default()
        }
    }

    fn status(phases: &[VolumePhase]) -> BackupStatus {
        let mut status = BackupStatus {
            volumes: phases.iter().map(|p| volume(*p)).collect(),
            ..Default::default()
        };
        recount(&mut status);
        status
    }

    #[test]
    fn phase_follows_volume_results() {
        use VolumePhase::*;
        assert_eq!(
            final_phase(&status(&[]), false, false),
            BackupPhase::Completed
        );
        assert_eq!(
            final_phase(&status(&[Completed, Completed]), false, false),
            BackupPhase::Completed
        );
        assert_eq!(
            final_phase(&status(&[Completed, Failed]), false, false),
            BackupPhase::PartiallyFailed
        );
        assert_eq!(
            final_phase(&status(&[Failed, Failed]), false, false),
            BackupPhase::Failed
        );
        assert_eq!(
            final_phase(&status(&[Completed]), true, false),
            BackupPhase::Cancelled
        );
        assert_eq!(final_phase(&status(&[]), false, true), BackupPhase::Failed);
    }

    #[test]
    fn counters_and_progress_are_summed() {
        let mut status = status(&[
            VolumePhase::Completed,
            VolumePhase::Cancelled,
            VolumePhase::InProgress,
        ]);
        status.volumes[0].progress = Some(Progress {
            bytes_done: 5,
            bytes_total: 10,
            ..Default::default()
        });
        status.volumes[2].progress = Some(Progress {
            bytes_done: 1,
            bytes_total: 2,
            ..Default::default()
        });
        recount(&mut status);
        assert_eq!(
            (
                status.volumes_total,
                status.volumes_completed,
                status.volumes_failed
            ),
            (3, 1, 1)
        );
        let progress = status.progress.unwrap();
        assert_eq!((progress.bytes_done, progress.bytes_total), (6, 12));
    }

    #[test]
    fn server_fields_are_stripped() {
        let mut manifest =
            json!({"metadata": {"name": "a", "uid": "u", "resourceVersion": "1"}, "status": {}});
        strip_server_fields(&mut manifest);
        assert_eq!(manifest, json!({"metadata": {"name": "a"}}));
    }
}

/// The backup runner and the run engine against in-memory fakes of the four ports, in paused
/// time: limits, leases, timeouts, cancel, panics and deletion.
#[cfg(test)]
mod runs {
    use std::time::Duration;

    use stowage_proto::v1::{BackupSpec, CreateBackupRequest, VolumePhase};

    use super::*;
    use crate::testing::{Script, World, limits, pod};

    async fn start(world: &World, spec: BackupSpec) -> Arc<BackupEntry> {
        create(
            &world.deps,
            CreateBackupRequest {
                name: "nightly".into(),
                spec: Some(spec),
            },
        )
        .await
        .expect("the backup starts");
        world.deps.index.backup("nightly").expect("indexed")
    }

    fn shop(world: &World, pods_per_node: usize) {
        for node in ["node-a", "node-b"] {
            for n in 0..pods_per_node {
                world
                    .cluster
                    .add_pod(pod("shop", &format!("{node}-db-{n}"), node, &["data"]));
            }
        }
    }

    fn spec() -> BackupSpec {
        BackupSpec {
            included_namespaces: vec!["shop".into()],
            ..Default::default()
        }
    }

    fn phases(entry: &BackupEntry) -> Vec<(String, i32, String)> {
        entry
            .get()
            .status
            .unwrap_or_default()
            .volumes
            .iter()
            .map(|v| {
                (
                    v.volume.clone().unwrap_or_default().pod_name,
                    v.phase,
                    v.error_message.clone(),
                )
            })
            .collect()
    }

    fn phase(entry: &BackupEntry) -> BackupPhase {
        BackupPhase::try_from(entry.get().status.unwrap_or_default().phase).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_node_limit_run_at_once_on_a_node() {
        let world = World::new(limits());
        shop(&world, 4);
        world.agents.script(
            "data",
            Script::Complete {
                steps: 3,
                every: Duration::from_secs(2),
            },
        );
        let entry = start(&world, spec()).await;
        world.settle().await;
        assert_eq!(
            phase(&entry),
            BackupPhase::Completed,
            "{:?}",
            phases(&entry)
        );
        let most = world.agents.most_at_once.lock().unwrap().clone();
        assert_eq!(most.get("node-a"), Some(&2), "{most:?}");
        assert_eq!(most.get("node-b"), Some(&2), "{most:?}");
        assert_eq!(world.agents.started.lock().unwrap().len(), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn the_overall_limit_holds_across_nodes() {
        let world = World::new(crate::deps::Limits {
            max_parallel_volumes: 3,
            max_parallel_per_node: 4,
            ..limits()
        });
        shop(&world, 4);
        world.agents.script(
            "data",
            Script::Complete {
                steps: 2,
                every: Duration::from_secs(5),
            },
        );
        let entry = start(&world, spec()).await;
        world.settle().await;
        assert_eq!(phase(&entry), BackupPhase::Completed);
        assert_eq!(*world.agents.most_overall.lock().unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn leases_are_short_renewed_while_held_and_released_at_the_end() {
        let world = World::new(limits());
        shop(&world, 1);
        // 100 s of work under a 60 s lease: renewed every 20 s.
        world.agents.script(
            "data",
            Script::Complete {
                steps: 10,
                every: Duration::from_secs(10),
            },
        );
        let entry = start(&world, spec()).await;
        world.settle().await;
        assert_eq!(phase(&entry), BackupPhase::Completed);
        let calls = world.repo_manager.calls();
        assert!(
            calls.contains(&"acquire shop backup/nightly/shop lease-1".to_string()),
            "{calls:?}"
        );
        assert_eq!(
            world.repo_manager.ttls.lock().unwrap().clone(),
            [Duration::from_secs(60)]
        );
        let renewals = world.repo_manager.count("renew lease-1");
        assert!((4..=6).contains(&renewals), "{calls:?}");
        assert_eq!(calls.last().map(String::as_str), Some("release lease-1"));
        assert!(world.repo_manager.held().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_the_repo_manager_forgot_is_taken_again_and_released_at_the_end() {
        let world = World::new(limits());
        shop(&world, 1);
        world.agents.script(
            "data",
            Script::Complete {
                steps: 10,
                every: Duration::from_secs(10),
            },
        );
        let entry = start(&world, spec()).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        world.repo_manager.forget_leases();
        world.settle().await;
        assert_eq!(phase(&entry), BackupPhase::Completed);
        let calls = world.repo_manager.calls();
        assert!(
            calls.contains(&"acquire shop backup/nightly/shop lease-2".to_string()),
            "{calls:?}"
        );
        assert!(world.repo_manager.count("renew lease-2") >= 1, "{calls:?}");
        assert_eq!(calls.last().map(String::as_str), Some("release lease-2"));
        assert!(world.repo_manager.held().is_empty());
        assert!(
            entry
                .logs()
                .iter()
                .any(|line| line.message.contains("had lapsed; taken again"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_volume_fails_naming_its_last_progress_and_a_slow_one_finishes() {
        let world = World::new(limits());
        world
            .cluster
            .add_pod(pod("shop", "db", "node-a", &["stuck", "slow"]));
        world.agents.script("stuck", Script::StallAfterFirst);
        // Far slower than the stall timeout as a whole, but moving every 5 minutes.
        world.agents.script(
            "slow",
            Script::Complete {
                steps: 12,
                every: Duration::from_secs(300),
            },
        );
        let entry = start(&world, spec()).await;
        world.settle().await;
        let volumes = entry.get().status.unwrap().volumes;
        let stuck = &volumes[0];
        assert_eq!(stuck.phase, VolumePhase::Failed as i32);
        assert_eq!(
            stuck.error_message,
            "stalled: no progress for 10m0s (last: 40 B of 100 B)"
        );
        assert_eq!(volumes[1].phase, VolumePhase::Completed as i32);
        assert_eq!(phase(&entry), BackupPhase::PartiallyFailed);
        let uid = entry.get().uid;
        assert_eq!(
            world.agents.cancelled.lock().unwrap().clone(),
            [format!("{uid}-0")],
            "restic of the stalled volume is killed, the slow one's is not"
        );
        assert!(world.repo_manager.held().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_volume_queued_in_its_agent_is_not_stalled() {
        let world = World::new(limits());
        shop(&world, 1);
        world
            .agents
            .script("data", Script::QueuedFor(Duration::from_secs(3600)));
        let entry = start(&world, spec()).await;
        world.settle().await;
        assert_eq!(
            phase(&entry),
            BackupPhase::Completed,
            "{:?}",
            phases(&entry)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_wall_clock_timeout_fails_running_volumes_and_kills_restic() {
        let world = World::new(limits());
        shop(&world, 1);
        world.agents.script(
            "data",
            Script::Complete {
                steps: 10,
                every: Duration::from_secs(60),
            },
        );
        let entry = start(
            &world,
            BackupSpec {
                timeout: Some(prost_types::Duration {
                    seconds: 100,
                    nanos: 0,
                }),
                ..spec()
            },
        )
        .await;
        world.settle().await;
        assert_eq!(phase(&entry), BackupPhase::Failed);
        for (_, volume_phase, message) in phases(&entry) {
            assert_eq!(volume_phase, VolumePhase::Failed as i32);
            assert_eq!(message, "timed out after 1m40s");
        }
        assert_eq!(world.agents.cancelled.lock().unwrap().len(), 2);
        assert!(world.repo_manager.held().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_backup_stops_its_volumes_and_releases_its_leases() {
        let world = World::new(crate::deps::Limits {
            max_parallel_per_node: 1,
            ..limits()
        });
        shop(&world, 2);
        world.agents.script(
            "data",
            Script::Complete {
                steps: 10,
                every: Duration::from_secs(60),
            },
        );
        let entry = start(&world, spec()).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        cancel(&entry);
        world.settle().await;
        assert_eq!(phase(&entry), BackupPhase::Cancelled);
        for (_, volume_phase, message) in phases(&entry) {
            assert_eq!(volume_phase, VolumePhase::Cancelled as i32);
            assert_eq!(message, "the backup was cancelled");
        }
        // Two were running (one per node), two waited for a slot and never reached an agent.
        assert_eq!(world.agents.cancelled.lock().unwrap().len(), 2);
        assert_eq!(world.agents.started.lock().unwrap().len(), 2);
        assert!(world.repo_manager.held().is_empty());
        assert_eq!(
            world.repo_manager.calls().last().map(String::as_str),
            Some("release lease-1")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_volume_fails_alone_and_the_leases_are_released() {
        let world = World::new(limits());
        world
            .cluster
            .add_pod(pod("shop", "db", "node-a", &["data", "broken"]));
        world.agents.script("broken", Script::Panic);
        let entry = start(&world, spec()).await;
        world.settle().await;
        let volumes = phases(&entry);
        assert_eq!(volumes[0].1, VolumePhase::Completed as i32);
        assert_eq!(volumes[1].1, VolumePhase::Failed as i32);
        assert!(
            volumes[1]
                .2
                .starts_with("the volume's task panicked: the fake agent was told to panic"),
            "{volumes:?}"
        );
        assert_eq!(phase(&entry), BackupPhase::PartiallyFailed);
        assert!(world.repo_manager.held().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_runner_ends_the_backup_failed_and_watchers_see_it() {
        let world = World::new(limits());
        *world.cluster.panic_on_namespace.lock().unwrap() = Some("shop".into());
        let entry = start(&world, spec()).await;
        let mut watcher = entry.subscribe();
        let ended = watcher
            .wait_for(|backup| backup_is_final(backup.status.as_ref().map_or(0, |s| s.phase)))
            .await
            .expect("the watcher sees the end")
            .clone();
        let status = ended.status.unwrap();
        assert_eq!(status.phase, BackupPhase::Failed as i32);
        assert_eq!(
            status.failure_reason,
            "the backup runner panicked: listing pods in shop went wrong"
        );
        assert!(status.expiration.is_some());
        world.settle().await;
        let stored = world.store.backups.lock().unwrap()["nightly"].0.clone();
        assert_eq!(stored.status.unwrap().phase, BackupPhase::Failed as i32);
    }

    #[tokio::test(start_paused = true)]
    async fn deleting_a_backup_forgets_its_snapshots_and_removes_its_files_and_mirrors() {
        let world = World::new(limits());
        shop(&world, 1);
        let entry = start(&world, spec()).await;
        world.settle().await;
        assert_eq!(phase(&entry), BackupPhase::Completed);
        assert!(
            !world
                .cluster
                .last_mirrors(MirrorKind::PodVolumeBackup)
                .is_empty()
        );
        let forgotten = crate::lifecycle::delete_backup(&world.deps, &entry)
            .await
            .unwrap();
        assert_eq!(forgotten, ["snap-shop"]);
        assert!(
            world
                .repo_manager
                .calls()
                .contains(&"forget shop nightly".to_string())
        );
        assert!(world.store.backups.lock().unwrap().is_empty());
        assert!(
            world
                .cluster
                .last_mirrors(MirrorKind::PodVolumeBackup)
                .is_empty()
        );
        assert!(world.deps.index.backup("nightly").is_none());
    }

    /// A pod `shop/<name>` on node-a with `volumes`, its only container `app`, annotated
    /// with `hooks` besides the volumes to back up.
    fn hooked_pod(world: &World, name: &str, volumes: &[&str], hooks: &[(&str, &str)]) {
        let mut pod = pod("shop", name, "node-a", volumes);
        let annotations = pod
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        for (key, value) in hooks {
            annotations.insert((*key).to_string(), (*value).to_string());
        }
        world.cluster.add_pod(pod);
    }

    fn timeline(world: &World) -> Vec<String> {
        world.cluster.timeline.lock().unwrap().clone()
    }

    fn log_text(entry: &BackupEntry) -> String {
        entry
            .logs()
            .iter()
            .map(|line| format!("{} {}", line.level, line.message))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn volume_of<'a>(
        phases: &'a [(String, i32, String)],
        pod: &str,
    ) -> Vec<&'a (String, i32, String)> {
        phases.iter().filter(|(name, _, _)| name == pod).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_pods_hooks_run_once_around_all_of_its_volumes() {
        let world = World::new(limits());
        hooked_pod(
            &world,
            "db-0",
            &["data", "wal"],
            &[
                ("pre.hook.backup.velero.io/command", r#"["freeze", "-a"]"#),
                ("post.hook.backup.velero.io/command", "thaw"),
            ],
        );
        world.agents.script(
            "data",
            Script::Complete {
                steps: 3,
                every: Duration::from_secs(2),
            },
        );
        let entry = start(&world, spec()).await;
        world.settle().await;
        assert_eq!(
            phase(&entry),
            BackupPhase::Completed,
            "{:?}",
            phases(&entry)
        );
        let events = timeline(&world);
        assert_eq!(events.len(), 4, "{events:?}");
        assert_eq!(events[0], "exec freeze -a in shop/db-0 container app");
        let mut middle = events[1..3].to_vec();
        middle.sort();
        assert_eq!(middle, ["restic data", "restic wal"]);
        assert_eq!(events[3], "exec thaw in shop/db-0 container app");
        let logs = log_text(&entry);
        assert!(
            logs.contains(
                r#"info pre-backup hook ["freeze", "-a"] in shop/db-0 container app (on-error Fail) exited with code 0; stdout: "freeze ran"; stderr: """#
            ),
            "{logs}"
        );
        assert!(logs.contains(r#"post-backup hook ["thaw"]"#), "{logs}");
    }

    #[tokio::test(start_paused = true)]
    async fn spec_hooks_run_in_the_pods_they_select_and_every_run_is_on_the_records() {
        let world = World::new(limits());
        let mut db = pod("shop", "db-0", "node-a", &["data", "wal"]);
        db.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
        world.cluster.add_pod(db);
        // Its own pre hook wins over the spec's; the spec's post hook still runs.
        let mut annotated = pod("shop", "db-1", "node-a", &["data"]);
        annotated.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
        annotated
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("pre.hook.backup.velero.io/command".into(), "own".into());
        world.cluster.add_pod(annotated);
        world
            .cluster
            .add_pod(pod("shop", "web-0", "node-a", &["cache"]));
        let exec = |command: &str| stowage_proto::v1::ExecHook {
            command: vec![command.to_string()],
            ..Default::default()
        };
        let mut spec = spec();
        spec.hooks = vec![stowage_proto::v1::BackupResourceHook {
            name: "db".into(),
            label_selector: [("app".to_string(), "db".to_string())].into(),
            pre: vec![exec("freeze"), exec("sync")],
            post: vec![exec("thaw")],
            ..Default::default()
        }];
        let entry = start(&world, spec).await;
        world.settle().await;
        assert_eq!(
            phase(&entry),
            BackupPhase::Completed,
            "{:?}",
            phases(&entry)
        );
        let execs: Vec<String> = timeline(&world)
            .into_iter()
            .filter(|event| event.starts_with("exec"))
            .collect();
        let of = |pod: &str| -> Vec<String> {
            execs
                .iter()
                .filter(|e| e.ends_with(&format!("shop/{pod} container app")))
                .map(|e| e.split(' ').nth(1).unwrap_or_default().to_string())
                .collect()
        };
        assert_eq!(of("db-0"), ["freeze", "sync", "thaw"]);
        assert_eq!(of("db-1"), ["own", "thaw"]);
        assert!(of("web-0").is_empty(), "{execs:?}");

        let backup = entry.get();
        let volumes = &backup.status.as_ref().unwrap().volumes;
        for volume in volumes {
            let pod = volume.volume.clone().unwrap_or_default().pod_name;
            let recorded: Vec<(&str, &str, bool, i32)> = volume
                .hooks
                .iter()
                .map(|h| {
                    (
                        h.phase.as_str(),
                        h.command[0].as_str(),
                        h.succeeded,
                        h.exit_code,
                    )
                })
                .collect();
            match pod.as_str() {
                "db-0" => assert_eq!(
                    recorded,
                    [
                        ("pre", "freeze", true, 0),
                        ("pre", "sync", true, 0),
                        ("post", "thaw", true, 0)
                    ]
                ),
                "db-1" => assert_eq!(
                    recorded,
                    [("pre", "own", true, 0), ("post", "thaw", true, 0)]
                ),
                _ => assert!(recorded.is_empty()),
            }
        }
        let mirrors = world.cluster.last_mirrors(MirrorKind::PodVolumeBackup);
        let db_mirrors: Vec<&Mirror> = mirrors
            .values()
            .filter(|m| m.spec["pod"]["name"] == "db-0")
            .collect();
        assert_eq!(db_mirrors.len(), 2);
        for mirror in db_mirrors {
            assert_eq!(mirror.status["phase"], "Completed");
            assert_eq!(mirror.status["hooks"][2]["phase"], "post", "{mirror:?}");
            assert_eq!(mirror.status["hooks"][0]["stdout"], "freeze ran\n");
        }
    }

    #[tokio::test]
    async fn a_bad_spec_hook_is_refused_when_the_backup_is_created() {
        let world = World::new(limits());
        let mut spec = spec();
        spec.hooks = vec![stowage_proto::v1::BackupResourceHook {
            name: "db".into(),
            post: vec![stowage_proto::v1::ExecHook::default()],
            ..Default::default()
        }];
        let error = create(
            &world.deps,
            CreateBackupRequest {
                name: "nightly".into(),
                spec: Some(spec),
            },
        )
        .await
        .unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(
            error
                .to_string()
                .contains("hooks[0] `db`: post[0]: the command is empty"),
            "{error}"
        );
        assert!(world.deps.index.backup("nightly").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_pre_hook_failing_with_fail_fails_its_pods_volumes_without_restic() {
        let world = World::new(limits());
        hooked_pod(
            &world,
            "db-0",
            &["data", "wal"],
            &[
                ("pre.hook.backup.velero.io/command", "dump"),
                ("pre.hook.backup.velero.io/on-error", "Fail"),
                ("post.hook.backup.velero.io/command", "thaw"),
            ],
        );
        hooked_pod(&world, "web-0", &["cache"], &[]);
        world
            .cluster
            .exec_answers
            .lock()
            .unwrap()
            .insert("dump".into(), (2, "pg_dump: connection refused\n".into()));
        let entry = start(&world, spec()).await;
        world.settle().await;
        assert_eq!(phase(&entry), BackupPhase::PartiallyFailed);
        let phases = phases(&entry);
        let db = volume_of(&phases, "db-0");
        assert_eq!(db.len(), 2);
        for (_, volume_phase, message) in db {
            assert_eq!(*volume_phase, VolumePhase::Failed as i32);
            assert_eq!(
                message,
                r#"pre-backup hook ["dump"] in shop/db-0 container app exited with code 2: pg_dump: connection refused"#
            );
        }
        assert_eq!(
            volume_of(&phases, "web-0")[0].1,
            VolumePhase::Completed as i32
        );
        // No restic for the pod's volumes, and no post hook after a pre hook that failed it.
        assert_eq!(
            timeline(&world),
            ["exec dump in shop/db-0 container app", "restic cache"]
        );
        let logs = log_text(&entry);
        assert!(
            logs.contains(r#"error pre-backup hook ["dump"] in shop/db-0 container app (on-error Fail) exited with code 2; stdout: "dump ran"; stderr: "pg_dump: connection refused""#),
            "{logs}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pre_hook_failing_with_continue_backs_up_and_runs_the_post_hook() {
        let world = World::new(limits());
        hooked_pod(
            &world,
            "db-0",
            &["data"],
            &[
                ("pre.hook.backup.velero.io/command", "dump"),
                ("pre.hook.backup.velero.io/on-error", "Continue"),
                ("post.hook.backup.velero.io/command", "thaw"),
            ],
        );
        world
            .cluster
            .exec_answers
            .lock()
            .unwrap()
            .insert("dump".into(), (1, "disk full".into()));
        let entry = start(&world, spec()).await;
        world.settle().await;
        assert_eq!(
            phase(&entry),
            BackupPhase::Completed,
            "{:?}",
            phases(&entry)
        );
        assert_eq!(
            timeline(&world),
            [
                "exec dump in shop/db-0 container app",
                "restic data",
                "exec thaw in shop/db-0 container app"
            ]
        );
        let logs = log_text(&entry);
        assert!(
            logs.contains(r#"warning pre-backup hook ["dump"] in shop/db-0 container app (on-error Continue) exited with code 1"#),
            "{logs}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_post_hook_failing_with_fail_fails_the_volumes_it_follows() {
        let world = World::new(limits());
        hooked_pod(
            &world,
            "db-0",
            &["data"],
            &[
                ("post.hook.backup.velero.io/command", "thaw"),
                ("post.hook.backup.velero.io/on-error", "Fail"),
            ],
        );
        world
            .cluster
            .exec_answers
            .lock()
            .unwrap()
            .insert("thaw".into(), (1, "still frozen".into()));
        let entry = start(&world, spec()).await;
        world.settle().await;
        assert_eq!(phase(&entry), BackupPhase::Failed, "{:?}", phases(&entry));
        let volume = entry.get().status.unwrap_or_default().volumes[0].clone();
        assert_eq!(volume.snapshot_id, "snap-1", "the snapshot stays recorded");
        assert!(
            volume
                .error_message
                .starts_with(r#"post-backup hook ["thaw"]"#)
                && volume.error_message.ends_with("still frozen"),
            "{}",
            volume.error_message
        );
        assert_eq!(
            timeline(&world),
            ["restic data", "exec thaw in shop/db-0 container app"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_bad_hook_annotation_fails_the_pods_volumes_naming_it() {
        let world = World::new(limits());
        hooked_pod(
            &world,
            "db-0",
            &["data"],
            &[
                ("pre.hook.backup.velero.io/command", "dump"),
                ("pre.hook.backup.velero.io/on-error", "Sometimes"),
            ],
        );
        hooked_pod(
            &world,
            "db-1",
            &["wal"],
            &[
                ("pre.hook.backup.velero.io/command", "dump"),
                ("pre.hook.backup.velero.io/container", "sidecar"),
            ],
        );
        let entry = start(&world, spec()).await;
        world.settle().await;
        assert_eq!(phase(&entry), BackupPhase::Failed);
        let phases = phases(&entry);
        let message = &volume_of(&phases, "db-0")[0].2;
        assert!(
            message.starts_with("pod shop/db-0: backup hook not run: annotation pre.hook.backup.velero.io/on-error: `Sometimes`"),
            "{message}"
        );
        let message = &volume_of(&phases, "db-1")[0].2;
        assert!(
            message.starts_with("pod shop/db-1: backup hook not run:")
                && message.contains("sidecar"),
            "{message}"
        );
        assert!(timeline(&world).is_empty(), "{:?}", timeline(&world));
    }

    #[tokio::test(start_paused = true)]
    async fn no_hook_runs_for_a_pod_whose_repository_cannot_be_used() {
        let world = World::new(limits());
        hooked_pod(
            &world,
            "db-0",
            &["data"],
            &[
                ("pre.hook.backup.velero.io/command", "freeze"),
                ("post.hook.backup.velero.io/command", "thaw"),
            ],
        );
        world
            .repo_manager
            .broken
            .lock()
            .unwrap()
            .insert("shop".into());
        let entry = start(&world, spec()).await;
        world.settle().await;
        assert_eq!(phase(&entry), BackupPhase::Failed);
        let message = &phases(&entry)[0].2;
        assert!(message.contains("wrong password"), "{message}");
        assert!(timeline(&world).is_empty(), "{:?}", timeline(&world));
    }

    #[tokio::test(start_paused = true)]
    async fn a_backup_cancelled_before_its_pre_hook_runs_no_hook_and_no_restic() {
        let world = World::new(limits());
        hooked_pod(
            &world,
            "db-0",
            &["data"],
            &[("pre.hook.backup.velero.io/command", "dump")],
        );
        let entry = start(&world, spec()).await;
        cancel(&entry);
        world.settle().await;
        assert_eq!(phase(&entry), BackupPhase::Cancelled);
        assert_eq!(phases(&entry)[0].1, VolumePhase::Cancelled as i32);
        assert!(timeline(&world).is_empty(), "{:?}", timeline(&world));
    }
}
