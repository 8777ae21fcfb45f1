//! What one backup or restore does, between a validated request and its result: resolve the
//! volume, pick the parent snapshot, run restic, turn its output into progress and a result.
//! No gRPC here beyond the generated message types.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Instant, SystemTime},
};

use stowage_contract::{done_file, identity::StableIdentity, paths, tags};
use stowage_proto::v1::{
    AbandonRestoreRequest, BackupVolumeRequest, BackupVolumeResult, OverwritePolicy, PodVolumeRef,
    Progress, RepositoryAccess, RestoreVolumeRequest, RestoreVolumeResult, Retrying, VolumeSource,
};
use stowage_restic::{
    BackupOptions, BackupProgress, BackupStatus, Overwrite, Repository, Restic, RestoreOptions,
    RestoreStatus, Retry, RetryPolicy, SnapshotFilter, StorageRetry,
};
use tokio_util::sync::CancellationToken;

use crate::{
    error::AgentError,
    names,
    parent::{Next, ParentChoice},
    volume_path::{self, ResolvedVolume, VolumePathError},
};

/// What every job needs from the agent.
#[derive(Clone, Debug)]
pub struct AgentContext {
    pub restic: Restic,
    pub pods_root: PathBuf,
    pub node_name: String,
    /// `--host` given to `restic backup`.
    pub snapshot_host: String,
    /// `--limit-upload` (KiB/s) of every backup; `None` for no limit.
    pub limit_upload_kib: Option<u64>,
    /// How a restic command that failed for a transient reason is run again.
    pub retry: RetryPolicy,
}

/// What a running job tells its caller before the result.
#[derive(Debug)]
pub enum JobEvent {
    Progress(Progress),
    Retrying(Retrying),
}

/// Logs a retry and passes it on, so both the operator reading the agent's log and the caller
/// watching the stream learn why the volume takes longer.
fn report_retry(on_event: &impl Fn(JobEvent), retry: &Retry) {
    tracing::warn!(
        command = retry.error.command(),
        failed_attempt = retry.failed_attempt,
        max_attempts = retry.max_attempts,
        delay_ms = retry.delay.as_millis() as u64,
        error = %retry.error,
        "restic failed for a reason that may pass, retrying"
    );
    on_event(JobEvent::Retrying(Retrying {
        command: retry.error.command().to_string(),
        failed_attempt: retry.failed_attempt,
        max_attempts: retry.max_attempts,
        delay_seconds: retry.delay.as_secs_f64(),
        reason: retry.error.to_string(),
    }));
}

/// The `Retrying` event of a storage retry restic 0.17+ makes by itself while it runs (it
/// retries a failed storage request without exiting), numbered `attempt` by the job. restic
/// sets no number of attempts, so `max_attempts` is 0; the agent's storage outage timeout
/// bounds the outage instead.
fn restic_retry_event(retry: &StorageRetry, attempt: u32) -> Retrying {
    Retrying {
        command: retry.command.clone(),
        failed_attempt: attempt,
        max_attempts: 0,
        delay_seconds: retry.delay.as_secs_f64(),
        reason: format!("{} returned error: {}", retry.operation, retry.reason),
    }
}

/// `context` with a runner that passes every storage retry restic announces on to `on_event`
/// as a `Retrying` event, counted across the job's restic runs. The runner logs each retry as
/// a warning itself.
fn reporting_restic_retries(
    context: &AgentContext,
    on_event: Arc<impl Fn(JobEvent) + Send + Sync + 'static>,
) -> AgentContext {
    let attempts = AtomicU32::new(0);
    AgentContext {
        restic: context.restic.reporting_retries(move |retry| {
            let attempt = attempts.fetch_add(1, Ordering::Relaxed) + 1;
            on_event(JobEvent::Retrying(restic_retry_event(retry, attempt)));
        }),
        ..context.clone()
    }
}

/// A backup whose input has been checked and whose volume has been found.
#[derive(Debug)]
pub struct BackupPlan {
    pub path: ResolvedVolume,
    pub repository: Repository,
    pub identity: String,
    pub tags: Vec<String>,
    /// The request's `parent_snapshot_id`; `None` when it named none.
    pub parent: Option<String>,
    /// restic `--exclude` patterns, anchored at the volume's directory on this node.
    pub excludes: Vec<String>,
}

/// A restore whose input has been checked and whose target volume has been found.
#[derive(Debug)]
pub struct RestorePlan {
    pub path: ResolvedVolume,
    pub repository: Repository,
    pub snapshot_id: String,
    pub restore_uid: String,
    /// A data-only restore into a volume in use: no done file (no restore helper waits) and
    /// no failure marker.
    pub data_only: bool,
    /// What restic does with the files already in the volume (the overwrite policy).
    pub overwrite: OverwriteMode,
    /// restic `restore --include`/`--exclude` patterns, anchored at the snapshot root.
    pub includes: Vec<String>,
    pub excludes: Vec<String>,
}

/// A restore's overwrite policy as restic flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverwriteMode {
    pub overwrite: Option<Overwrite>,
    pub delete: bool,
}

impl OverwriteMode {
    /// `merge` (and unset): restic's default over what is there, files not in the snapshot
    /// stay; `replace`: `--delete`, the volume ends identical to the snapshot (paths the
    /// restore excludes are left alone); `if-newer`: `--overwrite if-newer`.
    pub fn of(policy: i32) -> Result<OverwriteMode, AgentError> {
        let mode = |overwrite, delete| OverwriteMode { overwrite, delete };
        match OverwritePolicy::try_from(policy) {
            Ok(OverwritePolicy::Unspecified | OverwritePolicy::Merge) => Ok(mode(None, false)),
            Ok(OverwritePolicy::Replace) => Ok(mode(None, true)),
            Ok(OverwritePolicy::IfNewer) => Ok(mode(Some(Overwrite::IfNewer), false)),
            Err(_) => Err(AgentError::InvalidRequest(format!(
                "overwrite_policy {policy} is not one of merge, replace, if-newer"
            ))),
        }
    }
}

pub fn repository(access: Option<RepositoryAccess>) -> Result<Repository, AgentError> {
    let access =
        access.ok_or_else(|| AgentError::InvalidRequest("repository is missing".into()))?;
    names::repository_url(&access.url)?;
    for key in access.env.keys() {
        names::repository_env_key(key)?;
    }
    if access.password.is_empty() {
        return Err(AgentError::InvalidRequest(
            "repository password is empty".into(),
        ));
    }
    let mut repository = Repository::new(access.url, access.password);
    repository.env = access.env.into_iter().collect();
    Ok(repository)
}

/// The identity the orchestrator sent, or, when it sent none, the shared rule's identity for a
/// volume whose owner is not known: the claim's uid when the request gives one, else the pod's
/// (then a recreated pod with a new name starts a new chain, as in Velero).
pub fn stable_identity(request: &BackupVolumeRequest, volume: &PodVolumeRef) -> String {
    if !request.stable_identity.is_empty() {
        return request.stable_identity.clone();
    }
    let source = VolumeSource::try_from(volume.source).unwrap_or(VolumeSource::Unspecified);
    let pvc_uid = match source {
        VolumeSource::PersistentVolumeClaim => volume.pvc_uid.as_str(),
        _ => "",
    };
    StableIdentity::without_owner(pvc_uid, &volume.pod_name, &volume.volume_name).to_string()
}

/// Our tags plus Velero's names for the same facts, so tools that read Velero's snapshots
/// read ours. restic splits tags on `,`, so no value may contain one.
pub fn snapshot_tags(
    request: &BackupVolumeRequest,
    volume: &PodVolumeRef,
    identity: &str,
) -> Result<Vec<String>, AgentError> {
    let mut pairs: Vec<(&str, &str)> = vec![
        (tags::BACKUP, &request.backup_name),
        (tags::BACKUP_UID, &request.backup_uid),
        (tags::NS, &volume.namespace),
        (tags::NAMESPACE, &volume.namespace),
        (tags::POD, &volume.pod_name),
        (tags::POD_UID, &volume.pod_uid),
        (tags::VOLUME, &volume.volume_name),
        (tags::PVC, &volume.pvc_name),
        (tags::PV, &volume.pv_name),
        (tags::STABLE_IDENTITY, identity),
    ];
    let mut extra: Vec<_> = request.extra_tags.iter().collect();
    extra.sort();
    pairs.extend(extra.into_iter().map(|(k, v)| (k.as_str(), v.as_str())));
    tags::build(pairs).map_err(names::refused)
}

pub fn plan_backup(
    context: &AgentContext,
    request: BackupVolumeRequest,
) -> Result<BackupPlan, AgentError> {
    names::operation_id(&request.operation_id)?;
    let volume = request
        .volume
        .clone()
        .ok_or_else(|| AgentError::InvalidRequest("volume is missing".into()))?;
    // Both become snapshot tags and, on restore, the names of objects in the cluster.
    names::dns_label("namespace", &volume.namespace)?;
    names::dns_subdomain("pod_name", &volume.pod_name)?;
    if !request.backup_name.is_empty() {
        names::dns_subdomain("backup_name", &request.backup_name)?;
    }
    // Path fields first, so a bad uid or volume name is reported as such, not as a bad tag.
    volume_path::validate(&volume)?;
    // The id becomes a restic argument; hex only, so it can never read as an option.
    let parent = Some(request.parent_snapshot_id.clone()).filter(|id| !id.is_empty());
    if let Some(parent) = &parent {
        names::snapshot_id_field("parent_snapshot_id", parent)?;
    }
    let identity = stable_identity(&request, &volume);
    let tags = snapshot_tags(&request, &volume, &identity)?;
    let repository = repository(request.repository)?;
    let excludes = names::path_patterns("exclude_patterns", &request.exclude_patterns)?;
    let path = volume_path::resolve(&context.pods_root, &volume)?;
    // restic matches backup excludes against the absolute paths it reads.
    let root = path.path.display().to_string();
    let excludes = excludes
        .iter()
        .map(|pattern| paths::anchored(&root, pattern))
        .collect();
    Ok(BackupPlan {
        path,
        repository,
        identity,
        tags,
        parent,
        excludes,
    })
}

pub fn plan_restore(
    context: &AgentContext,
    request: RestoreVolumeRequest,
) -> Result<RestorePlan, AgentError> {
    names::operation_id(&request.operation_id)?;
    // The id becomes a restic argument; hex only, so it can never read as an option.
    names::snapshot_id(&request.snapshot_id)?;
    done_file::validate_restore_uid(&request.restore_uid).map_err(names::refused)?;
    let volume = request
        .volume
        .ok_or_else(|| AgentError::InvalidRequest("volume is missing".into()))?;
    restored_pod_names(&volume)?;
    let overwrite = OverwriteMode::of(request.overwrite_policy)?;
    if !request.data_only && overwrite != OverwriteMode::of(0)? {
        // A recreated pod's volume is new and empty: there is nothing to overwrite.
        return Err(AgentError::InvalidRequest(
            "overwrite_policy applies to data-only restores only".into(),
        ));
    }
    // A snapshot of the volume's `.` holds its files at the snapshot root.
    let snapshot_patterns = |field: &str, patterns: &[String]| -> Result<Vec<String>, AgentError> {
        Ok(names::path_patterns(field, patterns)?
            .iter()
            .map(|pattern| paths::anchored("", pattern))
            .collect())
    };
    let includes = snapshot_patterns("include_patterns", &request.include_patterns)?;
    let excludes = snapshot_patterns("exclude_patterns", &request.exclude_patterns)?;
    let repository = repository(request.repository)?;
    let path = volume_path::resolve(&context.pods_root, &volume)?;
    Ok(RestorePlan {
        path,
        repository,
        snapshot_id: request.snapshot_id,
        restore_uid: request.restore_uid,
        data_only: request.data_only,
        overwrite,
        includes,
        excludes,
    })
}

/// The recreated pod's namespace and name only reach logs and spans; checked when given.
fn restored_pod_names(volume: &PodVolumeRef) -> Result<(), AgentError> {
    if !volume.namespace.is_empty() {
        names::dns_label("namespace", &volume.namespace)?;
    }
    if !volume.pod_name.is_empty() {
        names::dns_subdomain("pod_name", &volume.pod_name)?;
    }
    Ok(())
}

/// Writes the failure marker of `request` (`AbandonRestore`) into the pod volume's directory
/// on this node. `Ok(false)` when the pod or the volume is not on this node: there is no helper
/// here to tell.
pub fn abandon_restore(
    context: &AgentContext,
    request: &AbandonRestoreRequest,
) -> Result<Option<PathBuf>, AgentError> {
    done_file::validate_restore_uid(&request.restore_uid).map_err(names::refused)?;
    let volume = request
        .volume
        .as_ref()
        .ok_or_else(|| AgentError::InvalidRequest("volume is missing".into()))?;
    restored_pod_names(volume)?;
    let path = match volume_path::resolve(&context.pods_root, volume) {
        Ok(resolved) => resolved.path,
        Err(VolumePathError::PodNotFound { .. } | VolumePathError::VolumeNotFound { .. }) => {
            return Ok(None);
        }
        Err(error) => return Err(error.into()),
    };
    write_failure(&path, &request.restore_uid, &request.reason).map(Some)
}

/// Progress of a backup from one restic status line. The totals are restic's only once its
/// scanner has finished (`totals_final`); before that they are the scanner's running count,
/// so they are sent as 0, unknown, rather than as a size the backup will outgrow.
fn backup_progress(status: &BackupStatus, totals_final: bool) -> Progress {
    let total = |value: u64| if totals_final { value } else { 0 };
    Progress {
        bytes_done: status.bytes_done,
        bytes_total: total(status.total_bytes),
        files_done: status.files_done,
        files_total: total(status.total_files),
        seconds_elapsed: status.seconds_elapsed as f64,
    }
}

/// Progress of a restore from one restic status line, in the units a backup reports: bytes of
/// file contents (restored or found already in place), totals only once restic has finished
/// walking the snapshot. Files are not counted while the restore runs: restic counts
/// directories and symlinks as files, a backup counts regular files only, so the restore's
/// count of regular files comes with its result.
fn restore_progress(status: &RestoreStatus, seconds_elapsed: f64) -> Progress {
    Progress {
        bytes_done: status.bytes_done(),
        bytes_total: if status.totals_final() {
            status.bytes_total()
        } else {
            0
        },
        files_done: 0,
        files_total: 0,
        seconds_elapsed,
    }
}

/// The identity's latest snapshot by `restic snapshots` (its full id), retried under the
/// context's policy.
async fn look_up_parent(
    context: &AgentContext,
    plan: &BackupPlan,
    cancel: &CancellationToken,
    on_event: &(impl Fn(JobEvent) + Sync),
) -> Result<Option<String>, AgentError> {
    let filter = SnapshotFilter {
        tags: vec![tags::identity_filter(&plan.identity).map_err(names::refused)?],
        ..Default::default()
    };
    let mut attempts = context.retry.attempts(cancel);
    let found = loop {
        match context
            .restic
            .latest_snapshot(&plan.repository, &filter, cancel)
            .await
        {
            Ok(found) => break found,
            Err(error) => {
                attempts
                    .retry_after(error, |retry| report_retry(on_event, retry))
                    .await?
            }
        }
    };
    Ok(found.map(|snapshot| snapshot.id))
}

/// Runs the backup; `on_event` gets every restic status line and every retry. The parent is
/// the request's when it named one (one restic process); see [`crate::parent`] for when it is
/// looked up instead. Each restic command is retried on its own under the context's policy.
pub async fn backup(
    context: &AgentContext,
    plan: &BackupPlan,
    cancel: &CancellationToken,
    on_event: impl Fn(JobEvent) + Send + Sync + 'static,
) -> Result<BackupVolumeResult, AgentError> {
    let on_event = Arc::new(on_event);
    let context = &reporting_restic_retries(context, on_event.clone());
    let on_event = &*on_event;
    let started = SystemTime::now();
    let clock = Instant::now();
    let span = tracing::Span::current();
    let mut choice = ParentChoice::given(plan.parent.clone());
    if choice.needs_lookup() {
        let found = look_up_parent(context, plan, cancel, on_event).await?;
        tracing::info!(
            parent = found.as_deref().unwrap_or("none"),
            identity = %plan.identity,
            "no parent snapshot given; looked it up with restic snapshots"
        );
        choice.looked_up(found);
    }
    let mut options = BackupOptions {
        working_dir: plan.path.path.clone(),
        paths: Vec::new(),
        host: Some(context.snapshot_host.clone()),
        tags: plan.tags.clone(),
        parent: None,
        excludes: plan.excludes.clone(),
        limit_upload_kib: context.limit_upload_kib,
    };
    let mut attempts = context.retry.attempts(cancel);
    let summary = loop {
        options.parent = choice.parent().map(str::to_string);
        if let Some(parent) = &options.parent {
            span.record("parent_snapshot_id", parent.as_str());
        }
        // A new attempt scans again.
        let mut totals = BackupProgress::default();
        let run = context
            .restic
            .backup(&plan.repository, &options, cancel, |status| {
                // The span keeps the latest progress, so a trace of a cancelled or failed
                // backup shows how far it got.
                span.record("bytes_done", status.bytes_done);
                span.record("files_done", status.files_done);
                let totals_final = totals.totals_final(status);
                on_event(JobEvent::Progress(backup_progress(status, totals_final)))
            })
            .await;
        let error = match run {
            Ok(summary) => break summary,
            Err(error) => error,
        };
        match choice.after_failure(&error) {
            Next::LookUp => {
                let reason = choice
                    .fallback()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                tracing::warn!(
                    %reason,
                    identity = %plan.identity,
                    "the given parent snapshot is gone; looking the parent up with restic snapshots"
                );
                let found = look_up_parent(context, plan, cancel, on_event).await?;
                tracing::info!(
                    parent = found.as_deref().unwrap_or("none"),
                    "parent looked up"
                );
                choice.looked_up(found);
            }
            Next::WithoutParent => tracing::warn!(
                parent = options.parent.as_deref().unwrap_or_default(),
                "the looked-up parent snapshot is gone too; backing up without a parent"
            ),
            Next::Fail => {
                attempts
                    .retry_after(error, |retry| report_retry(on_event, retry))
                    .await?
            }
        }
    };
    let parent_id = choice.parent().map(str::to_string);
    span.record("snapshot_id", summary.snapshot_id.as_str());
    span.record("bytes", summary.total_bytes_processed);
    span.record("bytes_added", summary.data_added);
    span.record("bytes_stored", summary.data_added_packed);
    tracing::info!(
        snapshot_id = %summary.snapshot_id,
        bytes_stored = summary.data_added_packed,
        files_new = summary.files_new,
        files_changed = summary.files_changed,
        files_unmodified = summary.files_unmodified,
        "backup done"
    );
    Ok(BackupVolumeResult {
        snapshot_id: summary.snapshot_id,
        parent_snapshot_id: parent_id.unwrap_or_default(),
        bytes_total: summary.total_bytes_processed,
        bytes_added: summary.data_added,
        bytes_stored: summary.data_added_packed,
        files_new: summary.files_new,
        files_changed: summary.files_changed,
        files_unmodified: summary.files_unmodified,
        files_total: summary.total_files_processed,
        duration_seconds: clock.elapsed().as_secs_f64(),
        started: Some(started.into()),
        finished: Some(SystemTime::now().into()),
        path: plan.path.path.display().to_string(),
        // Measured by the caller, around every restic run of the job.
        restic_peak_rss_bytes: 0,
        parent_fallback_reason: choice
            .fallback()
            .map(ToString::to_string)
            .unwrap_or_default(),
    })
}

/// Runs the restore (one `restic restore --json --sparse`; progress comes from its status
/// lines), counts the regular files now in the volume, then writes
/// `<volume>/.velero/<restore_uid>`.
pub async fn restore(
    context: &AgentContext,
    plan: &RestorePlan,
    cancel: &CancellationToken,
    on_event: impl Fn(JobEvent) + Send + Sync + 'static,
) -> Result<RestoreVolumeResult, AgentError> {
    let on_event = Arc::new(on_event);
    let context = &reporting_restic_retries(context, on_event.clone());
    let on_event = &*on_event;
    let started = SystemTime::now();
    let clock = Instant::now();
    let span = tracing::Span::current();
    let target = plan.path.path.clone();
    let command = stowage_restic::restore::restore_command(&RestoreOptions {
        snapshot: plan.snapshot_id.clone(),
        target: PathBuf::from("."),
        overwrite: plan.overwrite.overwrite,
        delete: plan.overwrite.delete,
        includes: plan.includes.clone(),
        excludes: plan.excludes.clone(),
        ..Default::default()
    })?
    .current_dir(&target);
    // A retry restores over what the failed attempt left: restic skips the files already in
    // place (same size and mtime, counted as skipped) and rewrites the rest.
    let mut attempts = context.retry.attempts(cancel);
    let summary = loop {
        let run = context
            .restic
            .run_restore(&plan.repository, &command, cancel, |status| {
                on_event(JobEvent::Progress(restore_progress(
                    status,
                    clock.elapsed().as_secs_f64(),
                )))
            })
            .await;
        match run {
            Ok(summary) => break summary,
            Err(error) => {
                attempts
                    .retry_after(error, |retry| report_retry(on_event, retry))
                    .await?
            }
        }
    };
    let bytes = summary.bytes_done();
    span.record("bytes", bytes);
    // Regular files, as a backup counts them; restic's own count takes in directories and
    // symlinks. Counted before the marker is written, so it is not one of them.
    let dir = target.clone();
    let files = tokio::task::spawn_blocking(move || count_regular_files(&dir))
        .await
        .map_err(|error| AgentError::CountingFiles {
            path: target.clone(),
            reason: error.to_string(),
        })?;
    on_event(JobEvent::Progress(Progress {
        bytes_done: bytes,
        bytes_total: bytes,
        files_done: files,
        files_total: files,
        seconds_elapsed: clock.elapsed().as_secs_f64(),
    }));
    // A data-only restore has no helper waiting, and a marker would be a stray file in the
    // application's volume.
    if !plan.data_only {
        write_marker(&target, &plan.restore_uid)?;
    }
    tracing::info!(
        snapshot_id = %plan.snapshot_id,
        bytes,
        bytes_skipped = summary.bytes_skipped,
        files,
        "restore done"
    );
    Ok(RestoreVolumeResult {
        snapshot_id: plan.snapshot_id.clone(),
        bytes_restored: bytes,
        files_restored: files,
        duration_seconds: clock.elapsed().as_secs_f64(),
        started: Some(started.into()),
        finished: Some(SystemTime::now().into()),
        path: target.display().to_string(),
        // Measured by the caller, around every restic run of the job.
        restic_peak_rss_bytes: 0,
    })
}

fn marker_error(error: done_file::MarkerError) -> AgentError {
    AgentError::Marker {
        path: error.path,
        source: error.source,
    }
}

/// `<volume>/.velero/<restore_uid>`, the file the restore helper waits for.
pub fn write_marker(volume_dir: &Path, restore_uid: &str) -> Result<PathBuf, AgentError> {
    done_file::write_done(volume_dir, restore_uid).map_err(marker_error)
}

/// `<volume>/.velero/<restore_uid>.failed` holding `reason`: the restore helper waiting for
/// this volume exits non-zero at once, logging the reason.
pub fn write_failure(
    volume_dir: &Path,
    restore_uid: &str,
    reason: &str,
) -> Result<PathBuf, AgentError> {
    let path = done_file::write_failure(volume_dir, restore_uid, reason).map_err(marker_error)?;
    tracing::warn!(marker = %path.display(), reason, "restore helper told the volume failed");
    Ok(path)
}

/// Regular files under `dir`, not following symlinks: what a backup of the same tree counts
/// as its files. Entries that cannot be read are not counted.
fn count_regular_files(dir: &Path) -> u64 {
    let mut count = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                count += 1;
            }
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn request() -> BackupVolumeRequest {
        BackupVolumeRequest {
            operation_id: "op".into(),
            volume: Some(PodVolumeRef {
                namespace: "shop".into(),
                pod_name: "db-0".into(),
                pod_uid: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into(),
                volume_name: "data".into(),
                source: VolumeSource::PersistentVolumeClaim as i32,
                pv_name: "pvc-123".into(),
                pvc_name: "data-db-0".into(),
                pvc_uid: String::new(),
            }),
            repository: None,
            backup_name: "nightly".into(),
            backup_uid: "b-uid".into(),
            stable_identity: "pvc-uid/abc".into(),
            extra_tags: [("team".to_string(), "red".to_string())].into(),
            parent_snapshot_id: String::new(),
            ..Default::default()
        }
    }

    #[test]
    fn overwrite_policies_become_restic_flags_and_unknown_ones_are_refused() {
        let mode = |policy: OverwritePolicy| OverwriteMode::of(policy as i32).unwrap();
        let merge = OverwriteMode {
            overwrite: None,
            delete: false,
        };
        assert_eq!(mode(OverwritePolicy::Unspecified), merge);
        assert_eq!(mode(OverwritePolicy::Merge), merge);
        assert_eq!(
            mode(OverwritePolicy::Replace),
            OverwriteMode {
                overwrite: None,
                delete: true
            }
        );
        assert_eq!(
            mode(OverwritePolicy::IfNewer),
            OverwriteMode {
                overwrite: Some(Overwrite::IfNewer),
                delete: false
            }
        );
        let error = OverwriteMode::of(42).unwrap_err();
        assert!(error.to_string().contains("overwrite_policy 42"), "{error}");
    }

    #[test]
    fn tags_carry_ours_and_velero_names() {
        let request = request();
        let volume = request.volume.clone().unwrap();
        let tags = snapshot_tags(&request, &volume, "pvc-uid/abc").unwrap();
        for expected in [
            "backup=nightly",
            "backup-uid=b-uid",
            "ns=shop",
            "namespace=shop",
            "pod=db-0",
            "pod-uid=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
            "volume=data",
            "stable-identity=pvc-uid/abc",
            "team=red",
        ] {
            assert!(
                tags.iter().any(|t| t == expected),
                "{expected} missing: {tags:?}"
            );
        }
    }

    #[test]
    fn tag_values_with_commas_are_refused() {
        let mut request = request();
        request.backup_name = "a,b".into();
        let volume = request.volume.clone().unwrap();
        assert!(snapshot_tags(&request, &volume, "x").is_err());
    }

    #[test]
    fn identity_falls_back_to_the_shared_rule() {
        let mut request = request();
        request.stable_identity.clear();
        let volume = request.volume.clone().unwrap();
        // Without the claim's uid the agent cannot name the claim as the orchestrator does.
        assert_eq!(stable_identity(&request, &volume), "Pod/db-0/data");
        let mut volume = volume;
        volume.pvc_uid = "abc".into();
        assert_eq!(stable_identity(&request, &volume), "pvc-uid/abc");
        volume.source = VolumeSource::EmptyDir as i32;
        assert_eq!(stable_identity(&request, &volume), "Pod/db-0/data");
    }

    #[test]
    fn marker_replaces_a_planted_symlink() {
        let volume = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), volume.path().join(done_file::MARKER_DIR))
            .unwrap();
        let marker = write_marker(volume.path(), "r-1").unwrap();
        assert!(marker.starts_with(volume.path()) && marker.is_file());
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    }

    /// The agent of node-a, its kubelet pods directory and restic's scratch under `root`.
    fn context_at(root: &Path) -> AgentContext {
        AgentContext {
            restic: Restic::new(root.join("restic"), root.join("scratch")),
            pods_root: root.into(),
            node_name: "node-a".into(),
            snapshot_host: "node-a".into(),
            limit_upload_kib: None,
            retry: RetryPolicy::NEVER,
        }
    }

    /// Pod `shop/db-0`'s emptyDir volume `data`.
    fn empty_dir_ref(pod_uid: &str) -> PodVolumeRef {
        PodVolumeRef {
            namespace: "shop".into(),
            pod_name: "db-0".into(),
            pod_uid: pod_uid.into(),
            volume_name: "data".into(),
            source: VolumeSource::EmptyDir as i32,
            ..Default::default()
        }
    }

    /// The directory of emptyDir volume `data` of pod `pod_uid`, made under the pods
    /// directory `pods`, as the kubelet lays it out.
    fn empty_dir_volume(pods: &Path, pod_uid: &str) -> PathBuf {
        let volume = pods
            .join(pod_uid)
            .join("volumes")
            .join(volume_path::EMPTY_DIR_PLUGIN)
            .join("data");
        std::fs::create_dir_all(&volume).unwrap();
        volume
    }

    fn abandon_request(pod_uid: &str, restore_uid: &str) -> AbandonRestoreRequest {
        AbandonRestoreRequest {
            volume: Some(empty_dir_ref(pod_uid)),
            restore_uid: restore_uid.into(),
            reason: "restic failed:\nFatal: wrong password".into(),
        }
    }

    #[test]
    fn path_patterns_are_checked_and_anchored_where_restic_looks() {
        let pods = tempfile::tempdir().unwrap();
        let pod_uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        let volume = empty_dir_volume(pods.path(), pod_uid);
        let context = context_at(pods.path());
        let reference = empty_dir_ref(pod_uid);
        let access = RepositoryAccess {
            url: "s3:http://127.0.0.1:9/b/r".into(),
            password: "p".into(),
            ..Default::default()
        };
        let backup = |patterns: &[&str]| {
            plan_backup(
                &context,
                BackupVolumeRequest {
                    volume: Some(reference.clone()),
                    repository: Some(access.clone()),
                    exclude_patterns: patterns.iter().map(|p| p.to_string()).collect(),
                    ..request()
                },
            )
        };
        let root = volume.canonicalize().unwrap().display().to_string();
        let plan = backup(&["cache/", "*.tmp"]).unwrap();
        assert_eq!(
            plan.excludes,
            [format!("{root}/cache"), format!("{root}/*.tmp")]
        );
        let error = backup(&["cache", "../../etc"]).unwrap_err().to_string();
        assert!(error.contains("`../../etc` climbs out"), "{error}");

        let restore = |include: &[&str], exclude: &[&str]| {
            plan_restore(
                &context,
                RestoreVolumeRequest {
                    operation_id: "op".into(),
                    volume: Some(reference.clone()),
                    repository: Some(access.clone()),
                    snapshot_id: "abcdef12".into(),
                    restore_uid: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f1".into(),
                    include_patterns: include.iter().map(|p| p.to_string()).collect(),
                    exclude_patterns: exclude.iter().map(|p| p.to_string()).collect(),
                    ..Default::default()
                },
            )
        };
        let plan = restore(&["data/2024/**"], &["**/*.tmp"]).unwrap();
        assert_eq!(plan.includes, ["/data/2024/**"]);
        assert_eq!(plan.excludes, ["/**/*.tmp"]);
        let error = restore(&["/etc"], &[]).unwrap_err().to_string();
        assert!(
            error.contains("include_patterns: path pattern `/etc` is absolute"),
            "{error}"
        );
    }

    #[test]
    fn abandon_writes_the_failure_marker_where_the_helper_looks() {
        let pods = tempfile::tempdir().unwrap();
        let pod_uid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        let volume = empty_dir_volume(pods.path(), pod_uid);
        let context = context_at(pods.path());
        let written = abandon_restore(&context, &abandon_request(pod_uid, "r-1"))
            .unwrap()
            .expect("the volume is on this node");
        assert_eq!(
            written,
            volume.canonicalize().unwrap().join(".velero/r-1.failed")
        );
        assert_eq!(
            done_file::read_failure(&volume, "r-1").unwrap().as_deref(),
            Some("restic failed: Fatal: wrong password")
        );
        assert!(!done_file::is_done(&volume, "r-1"));

        // Another node's pod: nothing to tell here.
        let elsewhere = "1f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        assert_eq!(
            abandon_restore(&context, &abandon_request(elsewhere, "r-1")).unwrap(),
            None
        );

        for (request, field) in [
            (abandon_request(pod_uid, "../r"), "restore uid"),
            (abandon_request(pod_uid, ""), "restore uid"),
            (
                AbandonRestoreRequest {
                    volume: None,
                    ..abandon_request(pod_uid, "r-1")
                },
                "volume is missing",
            ),
            (
                {
                    let mut request = abandon_request(pod_uid, "r-1");
                    request.volume.as_mut().unwrap().namespace = "a.b".into();
                    request
                },
                "namespace `a.b`",
            ),
        ] {
            let error = abandon_restore(&context, &request).unwrap_err();
            assert_eq!(error.code(), tonic::Code::InvalidArgument, "{error}");
            assert!(error.to_string().contains(field), "{field}: {error}");
        }
    }

    #[test]
    fn only_regular_files_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"12345").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        std::fs::write(dir.path().join("sub/b"), b"123").unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("link")).unwrap();
        // A symlink to a directory is not followed.
        std::os::unix::fs::symlink("sub", dir.path().join("sublink")).unwrap();
        assert_eq!(count_regular_files(dir.path()), 2);
    }

    fn backup_status(line: &str) -> BackupStatus {
        match stowage_restic::backup::parse_backup_line(line) {
            Some(stowage_restic::backup::BackupMessage::Status(status)) => status,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn backup_progress_has_no_total_while_restic_is_still_scanning() {
        // restic 0.18's first line for a 23-byte tree whose scan had not finished.
        let early = backup_status(
            r#"{"message_type":"status","percent_done":0,"total_files":1,"total_bytes":23}"#,
        );
        let mut totals = BackupProgress::default();
        let progress = backup_progress(&early, totals.totals_final(&early));
        assert_eq!((progress.bytes_done, progress.bytes_total), (0, 0));
        assert_eq!(progress.files_total, 0);
        let scanned = backup_status(
            r#"{"message_type":"status","seconds_elapsed":1,"seconds_remaining":4,"percent_done":0.2,"total_files":10,"files_done":2,"total_bytes":5000,"bytes_done":1000}"#,
        );
        let progress = backup_progress(&scanned, totals.totals_final(&scanned));
        assert_eq!((progress.bytes_done, progress.bytes_total), (1000, 5000));
        assert_eq!((progress.files_done, progress.files_total), (2, 10));
    }

    fn restore_status(line: &str) -> RestoreStatus {
        match stowage_restic::restore::parse_restore_line(line) {
            Some(stowage_restic::restore::RestoreMessage::Status(status)) => status,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn restore_progress_counts_bytes_and_leaves_restics_file_count_out() {
        // restic 0.18 still walking the snapshot: one file found already in place.
        let walking = restore_status(
            r#"{"message_type":"status","percent_done":0,"files_skipped":1,"bytes_skipped":6}"#,
        );
        let progress = restore_progress(&walking, 1.0);
        assert_eq!((progress.bytes_done, progress.bytes_total), (6, 0));
        // Writing contents: 55 "files" are 53 regular files, a directory and a symlink.
        let writing = restore_status(
            r#"{"message_type":"status","percent_done":0.06,"total_files":55,"files_restored":52,"total_bytes":314572955,"bytes_restored":19418129}"#,
        );
        let progress = restore_progress(&writing, 2.0);
        assert_eq!(
            (progress.bytes_done, progress.bytes_total),
            (19418129, 314572955)
        );
        assert_eq!((progress.files_done, progress.files_total), (0, 0));
        assert_eq!(progress.seconds_elapsed, 2.0);
    }

    const GONE: &str = "d8ab32ffeaf87a2edbf959469dee2558921f7ba423b91d22ae5e8be10c7709a7";
    const KNOWN: &str = "1234abcd1234abcd1234abcd1234abcd1234abcd1234abcd1234abcd1234abcd";
    const LATEST: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";

    /// A stand-in restic that appends each run's arguments to `runs`, answers `snapshots` with
    /// the file `snapshots.json` beside it, and fails `backup --parent GONE` (given, as every
    /// full id, one digit short) the way restic 0.18 does for a forgotten snapshot.
    struct FakeRestic {
        dir: tempfile::TempDir,
    }

    impl FakeRestic {
        fn new(snapshots: &str) -> FakeRestic {
            use std::os::unix::fs::PermissionsExt as _;
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().display().to_string();
            std::fs::write(dir.path().join("snapshots.json"), snapshots).unwrap();
            let script = dir.path().join("restic");
            std::fs::write(
                &script,
                format!(
                    r#"#!/bin/sh
echo "$*" >> '{root}/runs'
case "$1" in
  snapshots) cat '{root}/snapshots.json' ;;
  backup)
    case " $* " in *" --parent {gone} "*)
      echo '{{"message_type":"exit_error","code":1,"message":"no matching ID found for prefix \"{gone}\""}}' >&2
      exit 1;;
    esac
    if [ -f '{root}/retries' ]; then cat '{root}/retries' >&2; fi
    if [ -f '{root}/stuck' ]; then sleep 60; fi
    echo '{{"message_type":"summary","files_new":1,"total_bytes_processed":5,"snapshot_id":"0badc0de0badc0de"}}' ;;
esac
"#,
                    gone = &GONE[..63],
                ),
            )
            .unwrap();
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
            FakeRestic { dir }
        }

        fn context(&self) -> AgentContext {
            context_at(self.dir.path())
        }

        /// Each restic run's arguments, in order.
        fn runs(&self) -> Vec<String> {
            std::fs::read_to_string(self.dir.path().join("runs"))
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect()
        }

        async fn backup(&self, parent: Option<&str>) -> BackupVolumeResult {
            let plan = plan(self.dir.path(), parent);
            backup(&self.context(), &plan, &CancellationToken::new(), |_| {})
                .await
                .unwrap()
        }
    }

    fn snapshot_list(id: &str) -> String {
        format!(
            r#"[{{"time":"2026-11-24T19:32:57Z","tags":["stable-identity=pvc-uid/abc"],"id":"{id}","short_id":"{}"}}]"#,
            &id[..8]
        )
    }

    /// The command and the snapshot its `--parent` names, if any, of each run (restic gets a
    /// full id one digit short; see `stowage_restic::backup::parent_argument`).
    fn commands(runs: &[String]) -> Vec<(String, Option<String>)> {
        runs.iter()
            .map(|run| {
                let words: Vec<&str> = run.split_whitespace().collect();
                let parent = words
                    .iter()
                    .position(|w| *w == "--parent")
                    .map(|i| words[i + 1].to_string())
                    .map(|given| {
                        [GONE, KNOWN, LATEST]
                            .into_iter()
                            .find(|id| id.len() == given.len() + 1 && id.starts_with(&given))
                            .map_or(given, str::to_string)
                    });
                (words[0].to_string(), parent)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_given_parent_makes_the_backup_one_restic_run() {
        let restic = FakeRestic::new(&snapshot_list(LATEST));
        let result = restic.backup(Some(KNOWN)).await;
        assert_eq!(
            commands(&restic.runs()),
            [("backup".to_string(), Some(KNOWN.to_string()))]
        );
        assert_eq!(result.parent_snapshot_id, KNOWN);
        assert_eq!(result.parent_fallback_reason, "");
    }

    #[tokio::test]
    async fn without_a_given_parent_it_is_looked_up_and_the_result_says_why() {
        let restic = FakeRestic::new(&snapshot_list(LATEST));
        let result = restic.backup(None).await;
        assert_eq!(
            commands(&restic.runs()),
            [
                ("snapshots".to_string(), None),
                ("backup".to_string(), Some(LATEST.to_string()))
            ]
        );
        assert_eq!(result.parent_snapshot_id, LATEST);
        assert!(
            result.parent_fallback_reason.contains("no parent"),
            "{}",
            result.parent_fallback_reason
        );
        // A first backup: nothing to find, one backup without a parent.
        let first = FakeRestic::new("null");
        let result = first.backup(None).await;
        assert_eq!(
            commands(&first.runs()),
            [
                ("snapshots".to_string(), None),
                ("backup".to_string(), None)
            ]
        );
        assert_eq!(result.parent_snapshot_id, "");
    }

    #[tokio::test]
    async fn a_forgotten_parent_falls_back_to_the_lookup_naming_it() {
        let restic = FakeRestic::new(&snapshot_list(LATEST));
        let result = restic.backup(Some(GONE)).await;
        assert_eq!(
            commands(&restic.runs()),
            [
                ("backup".to_string(), Some(GONE.to_string())),
                ("snapshots".to_string(), None),
                ("backup".to_string(), Some(LATEST.to_string()))
            ]
        );
        assert_eq!(result.parent_snapshot_id, LATEST);
        assert_eq!(result.snapshot_id, "0badc0de0badc0de");
        let reason = &result.parent_fallback_reason;
        assert!(
            reason.contains(GONE) && reason.contains("does not exist"),
            "{reason}"
        );
        // The lookup finds the forgotten one again (restic's index lags the forget): no loop,
        // a backup without a parent.
        let stale = FakeRestic::new(&snapshot_list(GONE));
        let result = stale.backup(Some(GONE)).await;
        assert_eq!(
            commands(&stale.runs()),
            [
                ("backup".to_string(), Some(GONE.to_string())),
                ("snapshots".to_string(), None),
                ("backup".to_string(), Some(GONE.to_string())),
                ("backup".to_string(), None)
            ]
        );
        assert_eq!(result.parent_snapshot_id, "");
    }

    const REFUSED: &str = "Save(<data/1a2b3c4d5e>) returned error, retrying after 1.5s: dial tcp 127.0.0.1:9: connect: connection refused";

    /// The backup of the volume at `dir` (identity `pvc-uid/abc`) with `parent`, if any.
    fn plan(dir: &Path, parent: Option<&str>) -> BackupPlan {
        BackupPlan {
            path: ResolvedVolume {
                path: dir.into(),
                plugin: "kubernetes.io~empty-dir".into(),
            },
            repository: Repository::new("s3:http://127.0.0.1:9/b/r", "p"),
            identity: "pvc-uid/abc".into(),
            tags: vec!["stable-identity=pvc-uid/abc".into()],
            parent: parent.map(str::to_string),
            excludes: Vec::new(),
        }
    }

    #[tokio::test]
    async fn each_retry_restic_makes_itself_is_streamed_numbered_by_the_job() {
        let restic = FakeRestic::new("null");
        std::fs::write(
            restic.dir.path().join("retries"),
            format!(
                "{REFUSED}\nsome other warning\n{}\n",
                REFUSED.replace("1.5s", "3s")
            ),
        )
        .unwrap();
        let events = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = events.clone();
        let result = backup(
            &restic.context(),
            &plan(restic.dir.path(), Some(KNOWN)),
            &CancellationToken::new(),
            move |event| {
                if let JobEvent::Retrying(retrying) = event {
                    seen.lock().unwrap().push(retrying);
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(result.snapshot_id, "0badc0de0badc0de");
        let events = events.lock().unwrap();
        let numbered: Vec<_> = events
            .iter()
            .map(|retrying| (retrying.failed_attempt, retrying.delay_seconds))
            .collect();
        assert_eq!(numbered, [(1, 1.5), (2, 3.0)], "{events:?}");
        for retrying in events.iter() {
            assert_eq!(retrying.command, "backup");
            assert_eq!(retrying.max_attempts, 0, "restic decides how often");
            assert!(
                retrying
                    .reason
                    .starts_with("Save(<data/1a2b3c4d5e>) returned error")
                    && retrying.reason.ends_with("connection refused"),
                "{}",
                retrying.reason
            );
        }
    }

    #[tokio::test]
    async fn an_outage_longer_than_the_timeout_fails_the_backup_as_unavailable() {
        let restic = FakeRestic::new("null");
        std::fs::write(restic.dir.path().join("retries"), format!("{REFUSED}\n")).unwrap();
        std::fs::write(restic.dir.path().join("stuck"), "").unwrap();
        let mut context = restic.context();
        context.restic = context
            .restic
            .with_stop_grace(Duration::from_secs(30))
            .with_storage_outage_timeout(Some(Duration::from_millis(200)));
        // The agent's own retries do not run an outage restic waited out once more.
        context.retry = RetryPolicy::new(3, Duration::from_millis(1));
        let error = backup(
            &context,
            &plan(restic.dir.path(), Some(KNOWN)),
            &CancellationToken::new(),
            |_| {},
        )
        .await
        .unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unavailable, "{error}");
        let message = error.to_string();
        assert!(
            message.contains("cannot be reached")
                && message.contains("without progress")
                && message.contains("connection refused"),
            "{message}"
        );
        assert_eq!(restic.runs().len(), 1, "{:?}", restic.runs());
    }

    #[test]
    fn a_parent_that_is_not_a_snapshot_id_is_refused_naming_the_field() {
        let restic = FakeRestic::new("null");
        let mut request = request();
        request.parent_snapshot_id = "--dry-run".into();
        let error = plan_backup(&restic.context(), request).unwrap_err();
        assert!(matches!(error, AgentError::InvalidRequest(_)), "{error}");
        assert!(error.to_string().contains("parent_snapshot_id"), "{error}");
    }
}
