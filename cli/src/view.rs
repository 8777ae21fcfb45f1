//! The shapes `-o json` and `-o yaml` print: serde structs that mirror the stowage.v1 messages
//! with camelCase keys (as Kubernetes and Velero print theirs), phases as words (`Completed`),
//! timestamps as RFC 3339 and durations as `720h`. They are the CLI's scripting contract,
//! documented in docs/cli.md, so they change only by adding fields.

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use stowage_proto::{prost_types, v1};

use crate::parse::format_duration;

/// `BACKUP_PHASE_PARTIALLY_FAILED` → `PartiallyFailed`: the proto enum name without its type
/// prefix, in the CamelCase Velero prints phases in.
pub fn enum_word(proto_name: &str, prefix: &str) -> String {
    let bare = proto_name.strip_prefix(prefix).unwrap_or(proto_name);
    bare.split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let lower = part.to_ascii_lowercase();
            let mut chars = lower.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// A wire value this CLI does not know yet (a newer server) prints as `Unknown(<n>)` instead
/// of failing, so an older CLI still shows everything else.
macro_rules! word_of {
    ($enum:ty, $value:expr, $prefix:literal) => {
        match <$enum>::try_from($value) {
            Ok(known) => enum_word(known.as_str_name(), $prefix),
            Err(_) => format!("Unknown({})", $value),
        }
    };
}

pub fn backup_phase(value: i32) -> String {
    word_of!(v1::BackupPhase, value, "BACKUP_PHASE_")
}
pub fn restore_phase(value: i32) -> String {
    word_of!(v1::RestorePhase, value, "RESTORE_PHASE_")
}
pub fn volume_phase(value: i32) -> String {
    word_of!(v1::VolumePhase, value, "VOLUME_PHASE_")
}
pub fn repository_phase(value: i32) -> String {
    word_of!(v1::RepositoryPhase, value, "REPOSITORY_PHASE_")
}
pub fn backup_origin(value: i32) -> String {
    word_of!(v1::BackupOrigin, value, "BACKUP_ORIGIN_")
}
pub fn skip_reason(value: i32) -> String {
    word_of!(v1::SkipReason, value, "SKIP_REASON_")
}
pub fn volume_source(value: i32) -> String {
    word_of!(v1::VolumeSource, value, "VOLUME_SOURCE_")
}
pub fn maintenance_kind(value: i32) -> String {
    word_of!(v1::MaintenanceKind, value, "MAINTENANCE_KIND_")
}

/// A log message with any proto phase name (`BACKUP_PHASE_COMPLETED`) as its word
/// (`Completed`): log lines kept with older backups spelled phases so.
pub fn readable_message(message: &str) -> String {
    const PREFIXES: [&str; 3] = ["BACKUP_PHASE_", "RESTORE_PHASE_", "VOLUME_PHASE_"];
    if !PREFIXES.iter().any(|prefix| message.contains(prefix)) {
        return message.to_string();
    }
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while !rest.is_empty() {
        // Tokens are runs of uppercase letters, digits and `_`; everything else is copied.
        let start = rest
            .find(|c: char| c.is_ascii_uppercase())
            .unwrap_or(rest.len());
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        let token = &rest[..end];
        match PREFIXES.iter().find(|prefix| token.starts_with(**prefix)) {
            Some(prefix) if token.len() > prefix.len() => out.push_str(&enum_word(token, prefix)),
            _ => out.push_str(token),
        }
        rest = &rest[end..];
    }
    out
}

/// An error text with tonic's status formatting (`status: Unavailable, message: "…",
/// details: [], metadata: MetadataMap { … }`) reduced to `Unavailable: …`, wherever in the text
/// it is; older orchestrators stored volume errors so.
pub fn readable_error(text: &str) -> String {
    const HEAD: &str = "status: ";
    const MESSAGE: &str = ", message: \"";
    let Some(at) = text.find(HEAD) else {
        return text.to_string();
    };
    let after = &text[at + HEAD.len()..];
    let Some(code_end) = after.find(MESSAGE) else {
        return text.to_string();
    };
    let code = &after[..code_end];
    if code.is_empty() || !code.chars().all(|c| c.is_ascii_alphabetic()) {
        return text.to_string();
    }
    // The message is Rust-Debug quoted: read up to the closing quote, undoing escapes.
    let mut message = String::new();
    let mut chars = after[code_end + MESSAGE.len()..].char_indices();
    let mut closed = None;
    while let Some((index, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, 'n')) => message.push(' '),
                Some((_, 't')) => message.push(' '),
                Some((_, other)) => message.push(other),
                None => break,
            },
            '"' => {
                closed = Some(code_end + MESSAGE.len() + index + 1);
                break;
            }
            other => message.push(other),
        }
    }
    let Some(closed) = closed else {
        return text.to_string();
    };
    // Drop `, details: […], metadata: MetadataMap { … }` up to the end of the status.
    let tail = &after[closed..];
    let tail = match tail.find("MetadataMap {") {
        Some(start) => {
            let from = &tail[start..];
            let mut depth = 0usize;
            let mut end = from.len();
            for (index, c) in from.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            end = index + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            &from[end..]
        }
        None => tail,
    };
    format!("{}{code}: {}{}", &text[..at], message.trim(), tail)
}

/// A protobuf timestamp as a UTC instant; `None` for unset or out-of-range values.
pub fn instant(timestamp: &Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let timestamp = timestamp.as_ref()?;
    let nanos = u32::try_from(timestamp.nanos).ok()?;
    DateTime::from_timestamp(timestamp.seconds, nanos)
}

/// RFC 3339 in UTC with whole seconds (`2026-11-24T19:32:27Z`).
pub fn rfc3339(timestamp: &Option<prost_types::Timestamp>) -> Option<String> {
    instant(timestamp).map(|at| at.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// A protobuf duration; `None` when unset or zero (proto's "server default").
pub fn std_duration(duration: &Option<prost_types::Duration>) -> Option<Duration> {
    let duration = duration.as_ref()?;
    let seconds = u64::try_from(duration.seconds).ok()?;
    let nanos = u32::try_from(duration.nanos).ok()?;
    let duration = Duration::new(seconds, nanos);
    (!duration.is_zero()).then_some(duration)
}

pub fn proto_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).unwrap_or(0),
    }
}

fn sorted(map: &std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn is_false(value: &bool) -> bool {
    !*value
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProgressView {
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub files_done: u64,
    pub files_total: u64,
    pub seconds_elapsed: f64,
}

/// Which of a run's summed totals are final. The agents send a volume's total as 0 while
/// restic is still counting (a backup's scan, a restore's walk of the snapshot; a restore's
/// files until it ends), and a volume still waiting adds its size only once it runs: until
/// every volume has ended or sent its total, the sum is only a lower bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TotalsKnown {
    pub bytes: bool,
    pub files: bool,
}

impl TotalsKnown {
    /// From each volume's phase word and progress; `run_ended` when the backup or restore is
    /// over, which makes every total final.
    pub fn of<'a>(
        run_ended: bool,
        volumes: impl IntoIterator<Item = (&'a str, &'a ProgressView)>,
    ) -> TotalsKnown {
        let mut known = TotalsKnown {
            bytes: true,
            files: true,
        };
        if run_ended {
            return known;
        }
        for (phase, progress) in volumes {
            if matches!(phase, "Completed" | "Failed" | "Cancelled") {
                continue;
            }
            known.bytes &= progress.bytes_total > 0;
            known.files &= progress.files_total > 0;
        }
        known
    }
}

impl From<&Option<v1::Progress>> for ProgressView {
    fn from(progress: &Option<v1::Progress>) -> Self {
        let progress = progress.unwrap_or_default();
        ProgressView {
            bytes_done: progress.bytes_done,
            bytes_total: progress.bytes_total,
            files_done: progress.files_done,
            files_total: progress.files_total,
            seconds_elapsed: progress.seconds_elapsed,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRefView {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub volume: String,
    pub source: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pv_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pvc_name: String,
}

impl From<&Option<v1::PodVolumeRef>> for VolumeRefView {
    fn from(volume: &Option<v1::PodVolumeRef>) -> Self {
        let volume = volume.clone().unwrap_or_default();
        VolumeRefView {
            namespace: volume.namespace,
            pod: volume.pod_name,
            pod_uid: volume.pod_uid,
            volume: volume.volume_name,
            source: volume_source(volume.source),
            pv_name: volume.pv_name,
            pvc_name: volume.pvc_name,
        }
    }
}

impl VolumeRefView {
    /// `namespace/pod/volume`, the key a user reads a volume by.
    pub fn path(&self) -> String {
        format!("{}/{}/{}", self.namespace, self.pod, self.volume)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpecView {
    pub included_namespaces: Vec<String>,
    pub excluded_namespaces: Vec<String>,
    /// Velero's spelling (`deployments.apps`); empty = every resource.
    pub included_resources: Vec<String>,
    pub excluded_resources: Vec<String>,
    pub label_selector: BTreeMap<String, String>,
    pub default_volumes_to_fs_backup: bool,
    /// `null` = the server default.
    pub ttl: Option<String>,
    pub timeout: Option<String>,
    /// `[<volume>:]<glob>` patterns left out of every volume's snapshot.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude_paths: Vec<String>,
}

impl From<&Option<v1::BackupSpec>> for BackupSpecView {
    fn from(spec: &Option<v1::BackupSpec>) -> Self {
        let spec = spec.clone().unwrap_or_default();
        BackupSpecView {
            included_namespaces: spec.included_namespaces,
            excluded_namespaces: spec.excluded_namespaces,
            included_resources: spec.include_resources,
            excluded_resources: spec.exclude_resources,
            label_selector: sorted(&spec.label_selector),
            default_volumes_to_fs_backup: spec.default_volumes_to_fs_backup,
            ttl: std_duration(&spec.ttl).map(format_duration),
            timeout: std_duration(&spec.timeout).map(format_duration),
            exclude_paths: spec.exclude_paths,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodVolumeBackupView {
    #[serde(flatten)]
    pub volume: VolumeRefView,
    pub node: String,
    pub phase: String,
    pub snapshot_id: String,
    pub parent_snapshot_id: String,
    pub stable_identity: String,
    pub repository: String,
    pub progress: ProgressView,
    pub bytes_added: u64,
    /// What the location stores for this volume's backup, after compression.
    pub bytes_stored: u64,
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub started: Option<String>,
    pub finished: Option<String>,
    pub error_message: String,
    /// The patterns restic left out of this volume's snapshot (the backup's and the pod's).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub excluded_paths: Vec<String>,
    /// The pod's backup hooks that ran around this volume.
    pub hooks: Vec<HookResultView>,
}

/// What one exec hook did.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HookResultView {
    /// `pre`, `post` or `post-restore`.
    pub phase: String,
    pub container: String,
    pub command: Vec<String>,
    pub succeeded: bool,
    /// -1 when the command did not run to an exit code.
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub error: String,
    pub started: Option<String>,
    pub finished: Option<String>,
}

impl From<&v1::HookResult> for HookResultView {
    fn from(hook: &v1::HookResult) -> Self {
        HookResultView {
            phase: hook.phase.clone(),
            container: hook.container.clone(),
            command: hook.command.clone(),
            succeeded: hook.succeeded,
            exit_code: hook.exit_code,
            stdout: hook.stdout.clone(),
            stderr: hook.stderr.clone(),
            error: hook.error.clone(),
            started: rfc3339(&hook.started),
            finished: rfc3339(&hook.finished),
        }
    }
}

impl From<&v1::PodVolumeBackup> for PodVolumeBackupView {
    fn from(volume: &v1::PodVolumeBackup) -> Self {
        PodVolumeBackupView {
            volume: (&volume.volume).into(),
            node: volume.node.clone(),
            phase: volume_phase(volume.phase),
            snapshot_id: volume.snapshot_id.clone(),
            parent_snapshot_id: volume.parent_snapshot_id.clone(),
            stable_identity: volume.stable_identity.clone(),
            repository: volume.repository.clone(),
            progress: (&volume.progress).into(),
            bytes_added: volume.bytes_added,
            bytes_stored: volume.bytes_stored,
            files_new: volume.files_new,
            files_changed: volume.files_changed,
            files_unmodified: volume.files_unmodified,
            started: rfc3339(&volume.started),
            finished: rfc3339(&volume.finished),
            error_message: readable_error(&volume.error_message),
            hooks: volume.hooks.iter().map(Into::into).collect(),
            excluded_paths: volume.excluded_paths.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SkippedVolumeView {
    pub namespace: String,
    pub pod: String,
    pub volume: String,
    pub reason: String,
    pub detail: String,
}

impl From<&v1::SkippedVolume> for SkippedVolumeView {
    fn from(skipped: &v1::SkippedVolume) -> Self {
        SkippedVolumeView {
            namespace: skipped.namespace.clone(),
            pod: skipped.pod.clone(),
            volume: skipped.volume.clone(),
            reason: skip_reason(skipped.reason),
            detail: skipped.detail.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatusView {
    pub phase: String,
    pub started: Option<String>,
    pub finished: Option<String>,
    pub expiration: Option<String>,
    pub volumes_total: u32,
    pub volumes_completed: u32,
    pub volumes_failed: u32,
    pub progress: ProgressView,
    pub failure_reason: String,
    pub trace_id: String,
    pub volumes: Vec<PodVolumeBackupView>,
    pub skipped: Vec<SkippedVolumeView>,
}

impl From<&Option<v1::BackupStatus>> for BackupStatusView {
    fn from(status: &Option<v1::BackupStatus>) -> Self {
        let status = status.clone().unwrap_or_default();
        BackupStatusView {
            phase: backup_phase(status.phase),
            started: rfc3339(&status.started),
            finished: rfc3339(&status.finished),
            expiration: rfc3339(&status.expiration),
            volumes_total: status.volumes_total,
            volumes_completed: status.volumes_completed,
            volumes_failed: status.volumes_failed,
            progress: (&status.progress).into(),
            failure_reason: readable_error(&status.failure_reason),
            trace_id: status.trace_id,
            volumes: status.volumes.iter().map(Into::into).collect(),
            skipped: status.skipped.iter().map(Into::into).collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupView {
    pub name: String,
    pub uid: String,
    pub origin: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub unrestorable_reason: String,
    /// Velero's backup labels, e.g. `velero.io/schedule-name` on a schedule's backups.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub spec: BackupSpecView,
    pub status: BackupStatusView,
}

impl From<&v1::Backup> for BackupView {
    fn from(backup: &v1::Backup) -> Self {
        BackupView {
            name: backup.name.clone(),
            uid: backup.uid.clone(),
            origin: backup_origin(backup.origin),
            unrestorable_reason: backup.unrestorable_reason.clone(),
            labels: sorted(&backup.labels),
            spec: (&backup.spec).into(),
            status: (&backup.status).into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BackupListView {
    pub backups: Vec<BackupView>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSpecView {
    pub backup_name: String,
    pub namespace_mapping: BTreeMap<String, String>,
    pub included_namespaces: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub include_paths: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude_paths: Vec<String>,
}

impl From<&Option<v1::RestoreSpec>> for RestoreSpecView {
    fn from(spec: &Option<v1::RestoreSpec>) -> Self {
        let spec = spec.clone().unwrap_or_default();
        RestoreSpecView {
            backup_name: spec.backup_name,
            namespace_mapping: sorted(&spec.namespace_mapping),
            included_namespaces: spec.included_namespaces,
            include_paths: spec.include_paths,
            exclude_paths: spec.exclude_paths,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodVolumeRestoreView {
    #[serde(flatten)]
    pub volume: VolumeRefView,
    pub source_namespace: String,
    pub node: String,
    pub phase: String,
    pub snapshot_id: String,
    pub progress: ProgressView,
    pub started: Option<String>,
    pub finished: Option<String>,
    pub error_message: String,
    /// restic URL of the repository the snapshot was restored from.
    pub repository: String,
    /// The restore hooks that ran for this volume's pod.
    pub hooks: Vec<HookResultView>,
    /// Patterns left out when the volume was backed up: never in the snapshot.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub excluded_at_backup: Vec<String>,
}

impl From<&v1::PodVolumeRestore> for PodVolumeRestoreView {
    fn from(volume: &v1::PodVolumeRestore) -> Self {
        PodVolumeRestoreView {
            volume: (&volume.volume).into(),
            source_namespace: volume.source_namespace.clone(),
            node: volume.node.clone(),
            phase: volume_phase(volume.phase),
            snapshot_id: volume.snapshot_id.clone(),
            progress: (&volume.progress).into(),
            started: rfc3339(&volume.started),
            finished: rfc3339(&volume.finished),
            error_message: readable_error(&volume.error_message),
            repository: volume.repository.clone(),
            hooks: volume.hooks.iter().map(Into::into).collect(),
            excluded_at_backup: volume.excluded_at_backup.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreStatusView {
    pub phase: String,
    pub started: Option<String>,
    pub finished: Option<String>,
    pub volumes_total: u32,
    pub volumes_completed: u32,
    pub volumes_failed: u32,
    pub progress: ProgressView,
    pub failure_reason: String,
    pub pods_created: Vec<String>,
    pub trace_id: String,
    pub volumes: Vec<PodVolumeRestoreView>,
    /// What the restore did with each object of the backup's resource tarball.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<crate::resource_results::RestoredResourceView>,
}

impl From<&Option<v1::RestoreStatus>> for RestoreStatusView {
    fn from(status: &Option<v1::RestoreStatus>) -> Self {
        let status = status.clone().unwrap_or_default();
        RestoreStatusView {
            phase: restore_phase(status.phase),
            started: rfc3339(&status.started),
            finished: rfc3339(&status.finished),
            volumes_total: status.volumes_total,
            volumes_completed: status.volumes_completed,
            volumes_failed: status.volumes_failed,
            progress: (&status.progress).into(),
            failure_reason: readable_error(&status.failure_reason),
            pods_created: status.pods_created,
            trace_id: status.trace_id,
            volumes: status.volumes.iter().map(Into::into).collect(),
            resources: status.resources.iter().map(Into::into).collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreView {
    pub name: String,
    pub uid: String,
    pub spec: RestoreSpecView,
    pub status: RestoreStatusView,
}

impl From<&v1::Restore> for RestoreView {
    fn from(restore: &v1::Restore) -> Self {
        RestoreView {
            name: restore.name.clone(),
            uid: restore.uid.clone(),
            spec: (&restore.spec).into(),
            status: (&restore.status).into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RestoreListView {
    pub restores: Vec<RestoreView>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceView {
    /// `NeverRun`, `Running` (started, not finished), `Succeeded` or `Failed`.
    pub last_result: String,
    pub last_started: Option<String>,
    pub last_finished: Option<String>,
    pub last_duration_seconds: f64,
    /// `null` until a run has finished: a task that never ran neither failed nor succeeded.
    pub last_succeeded: Option<bool>,
    pub last_error: String,
    pub next_run: Option<String>,
    /// `null` when the task is not scheduled.
    pub interval: Option<String>,
}

impl From<&Option<v1::MaintenanceStatus>> for MaintenanceView {
    fn from(status: &Option<v1::MaintenanceStatus>) -> Self {
        let status = status.clone().unwrap_or_default();
        let finished = rfc3339(&status.last_finished);
        let started = rfc3339(&status.last_started);
        let last_result = match (&started, &finished) {
            (_, Some(_)) if status.last_succeeded => "Succeeded",
            (_, Some(_)) => "Failed",
            (Some(_), None) => "Running",
            (None, None) => "NeverRun",
        };
        MaintenanceView {
            last_result: last_result.to_string(),
            last_succeeded: finished.is_some().then_some(status.last_succeeded),
            last_started: started,
            last_finished: finished,
            last_duration_seconds: status.last_duration_seconds,
            last_error: status.last_error,
            next_run: rfc3339(&status.next_run),
            interval: (status.interval_seconds > 0)
                .then(|| format_duration(Duration::from_secs(status.interval_seconds))),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryView {
    pub namespace: String,
    pub url: String,
    pub phase: String,
    pub message: String,
    pub created: Option<String>,
    pub secret_name: String,
    pub check: MaintenanceView,
    pub prune: MaintenanceView,
}

impl From<&v1::Repository> for RepositoryView {
    fn from(repository: &v1::Repository) -> Self {
        RepositoryView {
            namespace: repository.namespace.clone(),
            url: repository.url.clone(),
            phase: repository_phase(repository.phase),
            message: repository.message.clone(),
            created: rfc3339(&repository.created),
            secret_name: repository.secret_name.clone(),
            check: (&repository.check).into(),
            prune: (&repository.prune).into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RepositoryListView {
    pub repositories: Vec<RepositoryView>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceResultView {
    pub namespace: String,
    pub kind: String,
    pub succeeded: bool,
    pub message: String,
    pub duration_seconds: f64,
    pub finished: Option<String>,
}

impl From<&v1::MaintenanceResult> for MaintenanceResultView {
    fn from(result: &v1::MaintenanceResult) -> Self {
        MaintenanceResultView {
            namespace: result.namespace.clone(),
            kind: maintenance_kind(result.kind),
            succeeded: result.succeeded,
            message: result.message.clone(),
            duration_seconds: result.duration_seconds,
            finished: rfc3339(&result.finished),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CoverageView {
    pub volumes_total: u32,
    pub volumes_covered: u32,
    #[serde(skip_serializing_if = "is_false")]
    pub default_volumes_to_fs_backup: bool,
    pub uncovered: Vec<SkippedVolumeView>,
    pub claims: Vec<ClaimView>,
}

impl CoverageView {
    pub fn new(response: &v1::GetCoverageResponse, opt_out: bool) -> Self {
        CoverageView {
            volumes_total: response.volumes_total,
            volumes_covered: response.volumes_covered,
            default_volumes_to_fs_backup: opt_out,
            uncovered: response.uncovered.iter().map(Into::into).collect(),
            claims: response.claims.iter().map(Into::into).collect(),
        }
    }
}

/// One PersistentVolumeClaim in coverage: `BackedUp` (by `pod`'s annotation) or the reason
/// no backup takes it (NotAnnotated, Excluded, NotMounted, PvcNotBound, BlockMode, …).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClaimView {
    pub namespace: String,
    pub claim: String,
    pub state: String,
    pub pod: String,
    pub volume: String,
    pub detail: String,
}

impl From<&v1::ClaimCoverage> for ClaimView {
    fn from(claim: &v1::ClaimCoverage) -> Self {
        ClaimView {
            namespace: claim.namespace.clone(),
            claim: claim.claim.clone(),
            state: if claim.covered {
                "BackedUp".to_string()
            } else {
                skip_reason(claim.reason)
            },
            pod: claim.pod.clone(),
            volume: claim.volume.clone(),
            detail: claim.detail.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LogLineView {
    pub time: Option<String>,
    pub level: String,
    pub message: String,
}

impl From<&v1::LogLine> for LogLineView {
    fn from(line: &v1::LogLine) -> Self {
        LogLineView {
            time: rfc3339(&line.time),
            level: line.level.clone(),
            message: readable_error(&readable_message(&line.message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_print_as_camel_case_words() {
        assert_eq!(
            backup_phase(v1::BackupPhase::PartiallyFailed as i32),
            "PartiallyFailed"
        );
        assert_eq!(backup_phase(v1::BackupPhase::Completed as i32), "Completed");
        assert_eq!(
            restore_phase(v1::RestorePhase::InProgress as i32),
            "InProgress"
        );
        assert_eq!(volume_phase(v1::VolumePhase::Queued as i32), "Queued");
        assert_eq!(
            skip_reason(v1::SkipReason::PvcNotBound as i32),
            "PvcNotBound"
        );
        assert_eq!(
            volume_source(v1::VolumeSource::PersistentVolumeClaim as i32),
            "PersistentVolumeClaim"
        );
    }

    #[test]
    fn unknown_enum_values_print_their_number() {
        assert_eq!(backup_phase(42), "Unknown(42)");
        assert_eq!(backup_phase(0), "Unspecified");
    }

    #[test]
    fn timestamps_print_as_rfc3339_utc() {
        let at = Some(prost_types::Timestamp {
            seconds: 1_795_030_347,
            nanos: 500,
        });
        assert_eq!(rfc3339(&at).as_deref(), Some("2026-11-18T19:32:27Z"));
        assert_eq!(rfc3339(&None), None);
        let broken = Some(prost_types::Timestamp {
            seconds: 0,
            nanos: -1,
        });
        assert_eq!(rfc3339(&broken), None);
    }

    #[test]
    fn backup_json_has_the_documented_shape() {
        let backup = v1::Backup {
            name: "nightly".into(),
            uid: "u-1".into(),
            origin: v1::BackupOrigin::Stowage as i32,
            spec: Some(v1::BackupSpec {
                included_namespaces: vec!["foo".into()],
                ttl: Some(proto_duration(Duration::from_secs(720 * 3600))),
                ..Default::default()
            }),
            status: Some(v1::BackupStatus {
                phase: v1::BackupPhase::Completed as i32,
                volumes: vec![v1::PodVolumeBackup {
                    volume: Some(v1::PodVolumeRef {
                        namespace: "foo".into(),
                        pod_name: "sample".into(),
                        volume_name: "data".into(),
                        source: v1::VolumeSource::EmptyDir as i32,
                        ..Default::default()
                    }),
                    phase: v1::VolumePhase::Completed as i32,
                    snapshot_id: "abc".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            unrestorable_reason: String::new(),
            ..Default::default()
        };
        let json = serde_json::to_value(BackupView::from(&backup)).unwrap();
        assert_eq!(json["name"], "nightly");
        assert_eq!(json["origin"], "Stowage");
        assert_eq!(json["spec"]["includedNamespaces"][0], "foo");
        assert_eq!(json["spec"]["ttl"], "720h");
        assert_eq!(json["spec"]["timeout"], serde_json::Value::Null);
        assert_eq!(json["status"]["phase"], "Completed");
        let volume = &json["status"]["volumes"][0];
        assert_eq!(volume["namespace"], "foo");
        assert_eq!(volume["pod"], "sample");
        assert_eq!(volume["volume"], "data");
        assert_eq!(volume["source"], "EmptyDir");
        assert_eq!(volume["phase"], "Completed");
        assert_eq!(volume["snapshotId"], "abc");
        assert!(json.get("unrestorableReason").is_none());
    }

    #[test]
    fn restore_json_has_the_documented_shape_and_a_cancelled_phase() {
        let restore = v1::Restore {
            name: "nightly-1".into(),
            uid: "r-1".into(),
            spec: Some(v1::RestoreSpec {
                backup_name: "nightly".into(),
                namespace_mapping: [("foo".to_string(), "bar".to_string())].into(),
                included_namespaces: vec![],
                ..Default::default()
            }),
            status: Some(v1::RestoreStatus {
                phase: v1::RestorePhase::Cancelled as i32,
                failure_reason: "cancelled by request".into(),
                volumes: vec![v1::PodVolumeRestore {
                    volume: Some(v1::PodVolumeRef {
                        namespace: "bar".into(),
                        pod_name: "sample".into(),
                        volume_name: "data".into(),
                        ..Default::default()
                    }),
                    phase: v1::VolumePhase::Cancelled as i32,
                    source_namespace: "foo".into(),
                    repository: "s3:http://127.0.0.1:9000/bucket/restic/foo".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        };
        let json = serde_json::to_value(RestoreView::from(&restore)).unwrap();
        assert_eq!(json["spec"]["backupName"], "nightly");
        assert_eq!(json["spec"]["namespaceMapping"]["foo"], "bar");
        assert_eq!(json["status"]["phase"], "Cancelled");
        assert_eq!(json["status"]["failureReason"], "cancelled by request");
        let volume = &json["status"]["volumes"][0];
        assert_eq!(volume["phase"], "Cancelled");
        assert_eq!(volume["sourceNamespace"], "foo");
        assert_eq!(
            volume["repository"],
            "s3:http://127.0.0.1:9000/bucket/restic/foo"
        );
    }

    #[test]
    fn log_messages_read_phases_as_words() {
        assert_eq!(
            readable_message("backup demo ended BACKUP_PHASE_COMPLETED: 2 volumes, 2 completed"),
            "backup demo ended Completed: 2 volumes, 2 completed"
        );
        assert_eq!(
            readable_message("restore ended RESTORE_PHASE_PARTIALLY_FAILED."),
            "restore ended PartiallyFailed."
        );
        let plain = "found 2 volumes to back up, 0 skipped (DNS ok)";
        assert_eq!(readable_message(plain), plain);
        let line = LogLineView::from(&v1::LogLine {
            time: None,
            level: "info".into(),
            message: "backup x ended BACKUP_PHASE_FAILED: 1 volumes".into(),
        });
        assert_eq!(line.message, "backup x ended Failed: 1 volumes");
    }

    #[test]
    fn grpc_status_formatting_reads_as_code_and_message() {
        let raw = "volume agent: restore on node node-a: status: Unavailable, message: \"error trying to connect: tcp connect error: Connection refused (os error 111)\", details: [], metadata: MetadataMap { headers: {\"content-type\": \"application/grpc\"} }";
        assert_eq!(
            readable_error(raw),
            "volume agent: restore on node node-a: Unavailable: error trying to connect: tcp connect error: Connection refused (os error 111)"
        );
        let quoted = "status: Internal, message: \"restic said \\\"no\\\"\\nbye\", details: [], metadata: MetadataMap { headers: {} } (retried)";
        assert_eq!(
            readable_error(quoted),
            "Internal: restic said \"no\" bye (retried)"
        );
        let plain = "agent on node node-a: restic binary missing";
        assert_eq!(readable_error(plain), plain);
        let volume = PodVolumeRestoreView::from(&v1::PodVolumeRestore {
            error_message: raw.into(),
            ..Default::default()
        });
        assert!(
            !volume.error_message.contains("MetadataMap"),
            "{}",
            volume.error_message
        );
    }

    #[test]
    fn maintenance_that_never_ran_is_not_a_failure() {
        let never = MaintenanceView::from(&Some(v1::MaintenanceStatus {
            interval_seconds: 86_400,
            ..Default::default()
        }));
        assert_eq!(never.last_result, "NeverRun");
        assert_eq!(never.last_succeeded, None);
        let yaml = serde_yaml::to_string(&never).unwrap();
        assert!(yaml.contains("lastSucceeded: null"), "{yaml}");
        assert!(!yaml.contains("lastSucceeded: false"), "{yaml}");
        let at = Some(prost_types::Timestamp {
            seconds: 1_795_030_347,
            nanos: 0,
        });
        let failed = MaintenanceView::from(&Some(v1::MaintenanceStatus {
            last_started: at,
            last_finished: at,
            last_error: "restic check failed".into(),
            ..Default::default()
        }));
        assert_eq!(failed.last_result, "Failed");
        assert_eq!(failed.last_succeeded, Some(false));
        let running = MaintenanceView::from(&Some(v1::MaintenanceStatus {
            last_started: at,
            ..Default::default()
        }));
        assert_eq!(running.last_result, "Running");
    }
}
