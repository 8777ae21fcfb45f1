//! The backup runner: finds the pods' selected volumes, makes sure each namespace's repository
//! is ready and leased, runs BackupVolume on each volume's node agent with bounded concurrency
//! (overall and per node), streams progress into the backup's status, and ends every volume
//! Completed, Failed or Cancelled before writing the backup's files to the object store.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use stowage_proto::{
    prost_types,
    v1::{
        AcquireLeaseRequest, Backup, BackupOrigin, BackupPhase, BackupStatus, BackupVolumeRequest,
        CancelOperationRequest, CreateBackupRequest, EnsureRepositoryRequest,
        GetRepositoryAccessRequest, LeaseMode, PodVolumeBackup, PodVolumeRef, Progress,
        ReleaseLeaseRequest, RepositoryAccess, RepositoryPhase, SkippedVolume, VolumePhase,
        VolumeSource, backup_volume_event,
    },
};
use tokio::{sync::Semaphore, task::JoinSet, time::Instant};
use tracing::{Instrument, field};

use crate::{
    deps::Deps,
    error::{
        Error, Result, agent_failure, validate_duration, validate_label_selector, validate_name,
    },
    kube::{
        Cluster,
        mirror::{self, Mirror, MirrorKind, MirrorQueue, MirrorWriter},
    },
    parents::Parents,
    selection::{VolumeKind, claim_skip, select_volumes},
    state::{BackupEntry, Entry, now},
    tally::{ending, tally},
};

/// How often a running volume's progress is copied into its PodVolumeBackup mirror.
const MIRROR_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Why volumes still running at shutdown failed.
const SHUT_DOWN: &str = "the orchestrator shut down";

pub fn to_duration(duration: Option<&prost_types::Duration>) -> Option<Duration> {
    duration
        .filter(|d| d.seconds > 0 || d.nanos > 0)
        .map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
}

fn is_terminal(phase: i32) -> bool {
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
    validate_name("backup name", &request.name)?;
    let spec = request.spec.unwrap_or_default();
    for namespace in spec
        .included_namespaces
        .iter()
        .chain(&spec.excluded_namespaces)
    {
        if namespace != "*" {
            validate_name("namespace", namespace)?;
        }
    }
    validate_label_selector(&spec.label_selector)?;
    validate_duration("ttl", spec.ttl.as_ref())?;
    validate_duration("timeout", spec.timeout.as_ref())?;
    crate::resources::validate_resource_lists(&spec.include_resources, &spec.exclude_resources)?;
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
    };
    let entry = Entry::new(backup.clone(), Vec::new(), deps.shutdown.child_token());
    if !deps.index.insert_backup(&request.name, entry.clone()) {
        return Err(Error::BackupExists(request.name));
    }
    let span = tracing::info_span!("backup", backup = %request.name, backup_uid = %uid);
    let runner_deps = deps.clone();
    deps.tasks
        .spawn(async move { run(runner_deps, entry).await }.instrument(span));
    Ok(backup)
}

/// A volume the runner will back up, with the pod it belongs to.
struct Planned {
    volume: PodVolumeBackup,
}

/// The result of looking at the cluster: volumes to back up, volumes left out, and the
/// manifests a restore needs (pods with backed-up volumes, their PVCs).
#[derive(Default)]
struct Plan {
    volumes: Vec<Planned>,
    skipped: Vec<SkippedVolume>,
    resources: Vec<Value>,
}

async fn run(deps: Deps, entry: Arc<BackupEntry>) {
    let name = entry.get().name;
    entry.log("info", format!("backup {name} started"));
    let timeout = to_duration(entry.get().spec.and_then(|s| s.timeout).as_ref())
        .unwrap_or(deps.limits.default_timeout);
    let mirrors = MirrorWriter::start(deps.cluster.as_ref(), MirrorKind::PodVolumeBackup);
    let outcome = execute(&deps, &entry, &mirrors.queue(), timeout).await;
    // Every volume's mirror shows its end before the backup does.
    mirrors.finish().await;
    // A shutdown cancels every backup's token too, but nobody asked to cancel these: their
    // unfinished volumes fail, as after a crash.
    let shutting_down = deps.shutdown.is_cancelled();
    let cancelled = entry.cancel.is_cancelled() && !shutting_down;
    let outcome = match outcome {
        Ok(()) if shutting_down => Err(Error::Failed(SHUT_DOWN.to_string())),
        other => other,
    };
    let ttl = to_duration(entry.get().spec.and_then(|s| s.ttl).as_ref())
        .unwrap_or(deps.limits.default_ttl);
    // The final state is written to the object store before watchers see it, so a backup
    // reported ended is one a restarted orchestrator also finds ended.
    let mut backup = entry.get();
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
        let expires = chrono::Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default();
        status.expiration = Some(prost_types::Timestamp {
            seconds: expires.timestamp(),
            nanos: 0,
        });
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
    if let Some(store) = &deps.store
        && let Err(error) = store.save_backup(&backup, &entry.logs(), None).await
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
            .save_backup(&entry.get(), &entry.logs(), resources)
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

async fn execute(
    deps: &Deps,
    entry: &Arc<BackupEntry>,
    mirrors: &MirrorQueue,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let backup = entry.update(|backup| {
        backup.status.get_or_insert_with(Default::default).phase = BackupPhase::InProgress as i32;
    });
    let cluster = deps.cluster.as_ref().ok_or(Error::NoCluster("a backup"))?;
    let plan = discover(cluster, &backup).await?;
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
    let resources = crate::resources::capture_backup(
        cluster,
        &backup,
        deps.limits.list_page_size,
        &plan.resources,
        |level, line| entry.log(level, line),
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
    let namespaces: Vec<String> = {
        let mut namespaces: Vec<String> = plan
            .volumes
            .iter()
            .filter_map(|p| p.volume.volume.as_ref().map(|v| v.namespace.clone()))
            .collect();
        namespaces.sort();
        namespaces.dedup();
        namespaces
    };
    let mut repositories: HashMap<String, Result<RepositoryAccess, String>> = HashMap::new();
    let mut leases = Vec::new();
    for namespace in &namespaces {
        let access = tokio::select! {
            access = prepare_repository(deps, entry, &backup, namespace, timeout) => access,
            () = entry.cancel.cancelled() => Err("the backup was cancelled".to_string()),
            () = tokio::time::sleep_until(deadline) => Err(format!("timed out after {timeout:?}")),
        };
        match access {
            Ok((access, lease)) => {
                leases.extend(lease);
                repositories.insert(namespace.clone(), Ok(access));
            }
            Err(message) => {
                entry.log(
                    "error",
                    format!("repository of namespace {namespace}: {message}"),
                );
                repositories.insert(namespace.clone(), Err(message));
            }
        }
    }

    // Each volume's parent from the records of every other backup, read once for the run; a
    // backup that completes meanwhile is not waited for (the agent can still look it up).
    let parents = Parents::from_index(&deps.index, &backup.name);
    let overall = Arc::new(Semaphore::new(deps.limits.max_parallel_volumes.max(1)));
    let mut per_node: BTreeMap<String, Arc<Semaphore>> = BTreeMap::new();
    let mut tasks = JoinSet::new();
    for (index, planned) in plan.volumes.iter().enumerate() {
        let volume_ref = planned.volume.volume.clone().unwrap_or_default();
        let node_limit = per_node
            .entry(planned.volume.node.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(deps.limits.max_parallel_per_node.max(1))))
            .clone();
        let repository = repositories
            .get(&volume_ref.namespace)
            .cloned()
            .unwrap_or_else(|| Err("no repository".to_string()));
        let parent = repository.as_ref().ok().and_then(|access| {
            parents
                .of(&access.url, &planned.volume.stable_identity)
                .map(str::to_string)
        });
        let span = tracing::info_span!(
            "backup_volume",
            backup = %backup.name,
            namespace = %volume_ref.namespace,
            pod = %volume_ref.pod_name,
            volume = %volume_ref.volume_name,
            node = %planned.volume.node,
            snapshot_id = field::Empty,
            bytes = field::Empty,
        );
        let job = VolumeJob {
            deps: deps.clone(),
            entry: entry.clone(),
            mirrors: mirrors.clone(),
            index,
            repository,
            parent,
            deadline,
            timeout,
            overall: overall.clone(),
            node_limit,
        };
        tasks.spawn(job.run().instrument(span));
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(error) = joined {
            entry.log("error", format!("a volume task ended abnormally: {error}"));
        }
    }
    for lease_id in leases {
        let released = deps
            .repo_manager
            .clone()
            .release_lease(ReleaseLeaseRequest { lease_id })
            .await;
        if let Err(status) = released {
            entry.log(
                "warning",
                format!("releasing a repository lease: {}", status.message()),
            );
        }
    }
    Ok(())
}

/// EnsureRepository (bounded wait for READY), GetRepositoryAccess and a SHARED lease.
async fn prepare_repository(
    deps: &Deps,
    entry: &BackupEntry,
    backup: &Backup,
    namespace: &str,
    timeout: Duration,
) -> Result<(RepositoryAccess, Option<String>), String> {
    let mut repo_manager = deps.repo_manager.clone();
    let deadline = Instant::now() + deps.limits.repository_ready_timeout;
    loop {
        let repository = repo_manager
            .ensure_repository(EnsureRepositoryRequest {
                namespace: namespace.to_string(),
            })
            .await
            .map_err(|status| format!("repo-manager: {}", status.message()))?
            .into_inner();
        match RepositoryPhase::try_from(repository.phase) {
            Ok(RepositoryPhase::Ready) => break,
            Ok(RepositoryPhase::Failed) => {
                return Err(format!("repository failed: {}", repository.message));
            }
            _ if Instant::now() >= deadline => {
                return Err(format!(
                    "repository not ready after {:?}: {}",
                    deps.limits.repository_ready_timeout, repository.message
                ));
            }
            _ => tokio::time::sleep(deps.limits.poll_interval).await,
        }
    }
    let access = repo_manager
        .get_repository_access(GetRepositoryAccessRequest {
            namespace: namespace.to_string(),
        })
        .await
        .map_err(|status| format!("repository access: {}", status.message()))?
        .into_inner();
    let lease = repo_manager
        .acquire_lease(AcquireLeaseRequest {
            namespace: namespace.to_string(),
            mode: LeaseMode::Shared as i32,
            holder: format!("backup/{}/{namespace}", backup.name),
            // The lease lives as long as the backup may run, so it needs no renewal.
            ttl: Some(prost_types::Duration {
                seconds: (timeout.as_secs() + 300) as i64,
                nanos: 0,
            }),
            wait_timeout: Some(prost_types::Duration {
                seconds: deps.limits.repository_ready_timeout.as_secs() as i64,
                nanos: 0,
            }),
        })
        .await;
    let lease_id = match lease {
        Ok(lease) => Some(lease.into_inner().lease_id),
        // A repo-manager without leases still serves backups; prune safety is its concern.
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            entry.log("warning", "the repo-manager does not support leases");
            None
        }
        Err(status) => return Err(format!("repository lease: {}", status.message())),
    };
    Ok((access, lease_id))
}

struct VolumeJob {
    deps: Deps,
    entry: Arc<BackupEntry>,
    mirrors: MirrorQueue,
    index: usize,
    repository: Result<RepositoryAccess, String>,
    /// The snapshot the agent gives `restic backup --parent`; `None` when no record names one.
    parent: Option<String>,
    deadline: Instant,
    timeout: Duration,
    overall: Arc<Semaphore>,
    node_limit: Arc<Semaphore>,
}

enum Outcome {
    Completed,
    Failed(String),
    Cancelled,
}

impl VolumeJob {
    /// Applies `change` to this job's volume, recounts the backup, and returns the volume.
    /// Only the volume is cloned, never the whole backup: that made large backups quadratic.
    fn update(&self, change: impl FnOnce(&mut PodVolumeBackup)) -> PodVolumeBackup {
        let mut updated = PodVolumeBackup::default();
        self.entry.modify(|backup| {
            let status = backup.status.get_or_insert_with(Default::default);
            if let Some(volume) = status.volumes.get_mut(self.index) {
                change(volume);
                updated = volume.clone();
            }
            recount(status);
        });
        updated
    }

    fn volume(&self) -> PodVolumeBackup {
        self.entry
            .read(|backup| {
                backup
                    .status
                    .as_ref()
                    .and_then(|s| s.volumes.get(self.index).cloned())
            })
            .unwrap_or_default()
    }

    /// The backup's name and uid, all a mirror or a request needs of it.
    fn header(&self) -> Backup {
        self.entry.read(|backup| Backup {
            name: backup.name.clone(),
            uid: backup.uid.clone(),
            ..Default::default()
        })
    }

    /// The agent ran `restic snapshots` to find the parent: expected when no record named one
    /// (a first backup), a warning when the one sent was gone (forgotten behind our back).
    fn log_parent_fallback(&self, volume: &PodVolumeBackup, reason: &str) {
        if reason.is_empty() {
            return;
        }
        let reference = volume.volume.clone().unwrap_or_default();
        let level = if self.parent.is_some() {
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

    async fn run(self) {
        let outcome = match self.execute().await {
            Outcome::Cancelled if self.deps.shutdown.is_cancelled() => {
                Outcome::Failed(SHUT_DOWN.to_string())
            }
            outcome => outcome,
        };
        let volume = self.update(|volume| {
            volume.finished = Some(now());
            match &outcome {
                Outcome::Completed => volume.phase = VolumePhase::Completed as i32,
                Outcome::Failed(message) => {
                    volume.phase = VolumePhase::Failed as i32;
                    volume.error_message = message.clone();
                }
                Outcome::Cancelled => {
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
            Outcome::Completed => self.entry.log(
                "info",
                format!("{what} completed: snapshot {}", volume.snapshot_id),
            ),
            Outcome::Failed(message) => {
                self.entry.log("error", format!("{what} failed: {message}"))
            }
            Outcome::Cancelled => self.entry.log("warning", format!("{what} cancelled")),
        }
        self.mirrors.submit(volume_mirror(&self.header(), &volume));
    }

    async fn execute(&self) -> Outcome {
        if self.entry.cancel.is_cancelled() {
            return Outcome::Cancelled;
        }
        let repository = match &self.repository {
            Ok(repository) => repository.clone(),
            Err(message) => return Outcome::Failed(message.clone()),
        };
        let cancel = self.entry.cancel.clone();
        // Both slots, overall first: a node's slot is not held while waiting for a global one.
        let permits = async {
            let overall = self.overall.clone().acquire_owned().await;
            let node = self.node_limit.clone().acquire_owned().await;
            (overall, node)
        };
        let _permits = tokio::select! {
            permits = permits => permits,
            () = cancel.cancelled() => return Outcome::Cancelled,
            () = tokio::time::sleep_until(self.deadline) => {
                return Outcome::Failed(format!("timed out after {:?} before it started", self.timeout));
            }
        };
        let volume = self.volume();
        let node = volume.node.clone();
        let mut agent = match self.deps.agents.for_node(&node).await {
            Ok(agent) => agent,
            Err(error) => return Outcome::Failed(error.to_string()),
        };
        let backup = self.header();
        let operation_id = format!("{}-{}", backup.uid, self.index);
        let request = BackupVolumeRequest {
            operation_id: operation_id.clone(),
            volume: volume.volume.clone(),
            repository: Some(repository),
            backup_name: backup.name.clone(),
            backup_uid: backup.uid.clone(),
            stable_identity: volume.stable_identity.clone(),
            extra_tags: Default::default(),
            parent_snapshot_id: self.parent.clone().unwrap_or_default(),
        };
        let repository_url = request
            .repository
            .as_ref()
            .map(|r| r.url.clone())
            .unwrap_or_default();
        let started = self.update(|volume| {
            volume.phase = VolumePhase::InProgress as i32;
            volume.started = Some(now());
            volume.repository = repository_url;
        });
        self.mirrors.submit(volume_mirror(&backup, &started));
        let call = async {
            let mut stream = agent
                .backup_volume(request)
                .await
                .map_err(|status| agent_failure(&node, &status))?
                .into_inner();
            let mut last_mirrored = Instant::now();
            loop {
                match stream.message().await {
                    Ok(Some(event)) => match event.event {
                        Some(backup_volume_event::Event::Queued(_)) => {
                            self.update(|v| v.phase = VolumePhase::Queued as i32);
                        }
                        Some(backup_volume_event::Event::Retrying(retrying)) => {
                            log_retry(&node, &retrying);
                        }
                        Some(backup_volume_event::Event::Progress(progress)) => {
                            let volume = self.update(|v| {
                                v.phase = VolumePhase::InProgress as i32;
                                v.progress = Some(progress);
                            });
                            // The mirror shows progress too, but the API server is not
                            // written to on every restic status line.
                            if last_mirrored.elapsed() >= MIRROR_PROGRESS_EVERY {
                                last_mirrored = Instant::now();
                                self.mirrors.submit(volume_mirror(&backup, &volume));
                            }
                        }
                        Some(backup_volume_event::Event::Result(result)) => {
                            let span = tracing::Span::current();
                            span.record("snapshot_id", result.snapshot_id.as_str());
                            span.record("bytes", result.bytes_total);
                            self.log_parent_fallback(&volume, &result.parent_fallback_reason);
                            self.update(|v| {
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
                    },
                    Ok(None) => {
                        return Err(format!(
                            "agent on node {node} ended the stream without a result"
                        ));
                    }
                    Err(status) => {
                        return Err(agent_failure(&node, &status));
                    }
                }
            }
        };
        let outcome = tokio::select! {
            result = call => match result {
                Ok(()) => Outcome::Completed,
                Err(message) => Outcome::Failed(message),
            },
            () = cancel.cancelled() => Outcome::Cancelled,
            () = tokio::time::sleep_until(self.deadline) => {
                Outcome::Failed(format!("timed out after {:?}", self.timeout))
            }
        };
        if !matches!(outcome, Outcome::Completed) {
            // The stream is dropped; tell the agent to kill restic too.
            let _ = agent
                .cancel_operation(CancelOperationRequest { operation_id })
                .await;
        }
        outcome
    }
}

/// The PodVolumeBackup mirror of `volume`, as `kubectl get podvolumebackups` should show it.
pub fn volume_mirror(backup: &Backup, volume: &PodVolumeBackup) -> Mirror {
    let reference = volume.volume.clone().unwrap_or_default();
    let name = mirror::object_name(&backup.name, &reference.pod_uid, &reference.volume_name);
    let phase = match VolumePhase::try_from(volume.phase).unwrap_or_default() {
        VolumePhase::InProgress | VolumePhase::Queued => "InProgress",
        VolumePhase::Completed => "Completed",
        VolumePhase::Failed => "Failed",
        VolumePhase::Cancelled => "Canceled",
        _ => "New",
    };
    let progress = volume.progress.unwrap_or_default();
    let mut labels = json!({
        "velero.io/backup-name": backup.name,
        "velero.io/backup-uid": backup.uid,
    });
    let mut spec = json!({
        "node": volume.node,
        "pod": {"kind": "Pod", "namespace": reference.namespace, "name": reference.pod_name, "uid": reference.pod_uid},
        "volume": reference.volume_name,
        "backupStorageLocation": stowage_velero_format::pod_volume_backup::DEFAULT_STORAGE_LOCATION,
        "repoIdentifier": volume.repository,
        "uploaderType": "restic",
        "tags": {
            "backup": backup.name, "backup-uid": backup.uid, "ns": reference.namespace,
            "pod": reference.pod_name, "pod-uid": reference.pod_uid, "volume": reference.volume_name,
        },
    });
    // As Velero marks a PVC's volume: `kubectl get podvolumebackups -l velero.io/pvc-uid=…`.
    if !reference.pvc_uid.is_empty() {
        labels["velero.io/pvc-uid"] = json!(reference.pvc_uid);
        spec["tags"]["pvc-uid"] = json!(reference.pvc_uid);
    }
    let status = json!({
        "path": volume.path,
        "phase": phase,
        "snapshotID": volume.snapshot_id,
        "message": volume.error_message,
        "progress": {"totalBytes": progress.bytes_total, "bytesDone": progress.bytes_done},
        "startTimestamp": volume.started.as_ref().map(rfc3339),
        "completionTimestamp": volume.finished.as_ref().map(rfc3339),
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
async fn discover(cluster: &Cluster, backup: &Backup) -> Result<Plan> {
    let spec = backup.spec.clone().unwrap_or_default();
    let namespaces = if spec.included_namespaces.is_empty()
        || spec.included_namespaces.iter().any(|n| n == "*")
    {
        cluster.namespaces().await?
    } else {
        spec.included_namespaces.clone()
    };
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
                &mut plan,
            )
            .await?;
        }
    }
    Ok(plan)
}

async fn plan_pod(
    cluster: &Cluster,
    namespace: &str,
    pod: &Pod,
    opt_out: bool,
    plan: &mut Plan,
) -> Result<()> {
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
                format!("pvc-uid/{}", pvc.metadata.uid.clone().unwrap_or_default())
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
            volume: PodVolumeBackup {
                volume: Some(reference),
                node: node.clone(),
                phase: VolumePhase::Pending as i32,
                stable_identity,
                ..Default::default()
            },
        });
    }
    if took_any {
        let mut manifest = serde_json::to_value(pod)
            .map_err(|error| Error::Failed(format!("pod manifest: {error}")))?;
        strip_server_fields(&mut manifest);
        plan.resources.push(manifest);
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
    cluster: &Cluster,
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
        return Ok(format!("Pod/{pod_name}/{volume}"));
    };
    if owner.kind == "ReplicaSet" {
        if let Some(deployment) = cluster.replica_set_owner(namespace, &owner.name).await? {
            return Ok(format!("Deployment/{deployment}/{volume}"));
        }
        let hash = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get("pod-template-hash"));
        let deployment = deployment_of_replica_set(&owner.name, hash.map(String::as_str));
        if let Some(deployment) = deployment {
            return Ok(format!("Deployment/{deployment}/{volume}"));
        }
    }
    Ok(format!("{}/{}/{volume}", owner.kind, owner.name))
}

/// The Deployment a ReplicaSet belongs to, from its name `<deployment>-<pod-template-hash>`,
/// for when the ReplicaSet itself cannot be read.
fn deployment_of_replica_set(replica_set: &str, pod_template_hash: Option<&str>) -> Option<String> {
    match pod_template_hash {
        Some(hash) => replica_set.strip_suffix(&format!("-{hash}")),
        None => replica_set.rsplit_once('-').map(|(name, _)| name),
    }
    .filter(|name| !name.is_empty())
    .map(str::to_string)
}

/// Cancels a running backup; its volumes end CANCELLED when their agents stop.
pub fn cancel(entry: &Entry<Backup>) -> Backup {
    entry.log("warning", "cancel requested");
    entry.cancel.cancel();
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
    fn replica_sets_name_their_deployment() {
        assert_eq!(
            deployment_of_replica_set("web-api-5d8f7b9c4d", Some("5d8f7b9c4d")).as_deref(),
            Some("web-api")
        );
        assert_eq!(
            deployment_of_replica_set("web-api-5d8f7b9c4d", None).as_deref(),
            Some("web-api")
        );
        // A hash label that does not match the name is not guessed around.
        assert_eq!(deployment_of_replica_set("web-api-5d8f", Some("77")), None);
        assert_eq!(deployment_of_replica_set("standalone", None), None);
    }

    #[test]
    fn server_fields_are_stripped() {
        let mut manifest =
            json!({"metadata": {"name": "a", "uid": "u", "resourceVersion": "1"}, "status": {}});
        strip_server_fields(&mut manifest);
        assert_eq!(manifest, json!({"metadata": {"name": "a"}}));
    }
}
