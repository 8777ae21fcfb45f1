//! The human-readable output of every command: list tables and `describe` texts, built from
//! the views in [`crate::view`]. Pure: the current time is a parameter.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use crate::{
    config::Config,
    table::{expires_in, human_bytes, human_seconds, list_or_none, render_table},
    view::{
        BackupView, CoverageView, HookResultView, LogLineView, MaintenanceResultView,
        MaintenanceView, ProgressView, RepositoryView, RestoreView, SkippedVolumeView, TotalsKnown,
        VolumeRefView,
    },
};

fn parse_time(text: &Option<String>) -> Option<DateTime<Utc>> {
    text.as_deref()
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map(|at| at.with_timezone(&Utc))
}

fn or_none(text: &Option<String>) -> String {
    text.clone().unwrap_or_else(|| "<none>".to_string())
}

fn selector_text(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Volume duration from its timestamps, else from restic's elapsed time.
fn volume_duration(started: &Option<String>, finished: &Option<String>, elapsed: f64) -> String {
    match (parse_time(started), parse_time(finished)) {
        (Some(start), Some(end)) if end >= start => {
            human_seconds((end - start).num_milliseconds() as f64 / 1000.0)
        }
        _ if elapsed > 0.0 => human_seconds(elapsed),
        _ => String::new(),
    }
}

/// restic's 8-character short id, which every restic command accepts.
fn short_id(id: &str) -> String {
    id.chars().take(8).collect()
}

/// The `Volumes:` and `Progress:` lines of a `describe` of a run in `phase`, from its volume
/// counts, its progress and each volume's phase and progress. A total that is not final yet is not shown as one: `1.0 MiB so far` rather than
/// `1.0 MiB of 1.2 MiB` when more will be counted.
fn volume_totals<'a>(
    out: &mut String,
    phase: &str,
    total: u32,
    completed: u32,
    failed: u32,
    progress: &ProgressView,
    volumes: impl Iterator<Item = (&'a str, &'a ProgressView)>,
) {
    let known = TotalsKnown::of(run_ended(phase), volumes);
    let _ = writeln!(
        out,
        "Volumes:      {total} total, {completed} completed, {failed} failed"
    );
    let _ = writeln!(out, "Progress:     {}", progress_text(progress, known));
}

/// `1.0 MiB of 2.0 MiB, 3 of 10 files`, with `so far` for what is still being counted.
pub fn progress_text(progress: &ProgressView, known: TotalsKnown) -> String {
    let bytes = if known.bytes {
        format!(
            "{} of {}",
            human_bytes(progress.bytes_done),
            human_bytes(progress.bytes_total)
        )
    } else {
        format!("{} so far", human_bytes(progress.bytes_done))
    };
    let files = if known.files {
        format!("{} of {} files", progress.files_done, progress.files_total)
    } else {
        format!("{} files so far", progress.files_done)
    };
    format!("{bytes}, {files}")
}

/// Whether a backup or restore in `phase` is over (its totals are final).
fn run_ended(phase: &str) -> bool {
    matches!(
        phase,
        "Completed" | "PartiallyFailed" | "Failed" | "Cancelled"
    )
}

/// The volume summary of a `describe` without `--details`: the volumes' paths grouped by
/// phase, and how to get the table.
fn volumes_by_phase<'a>(
    out: &mut String,
    heading: &str,
    command: &str,
    name: &str,
    volumes: impl Iterator<Item = (&'a str, String)>,
) {
    let _ = writeln!(
        out,
        "{heading}:  (run `stowage {command} describe {name} --details` for the table)"
    );
    let volumes: Vec<(&str, String)> = volumes.collect();
    let mut phases: Vec<&str> = volumes.iter().map(|(phase, _)| *phase).collect();
    phases.sort_unstable();
    phases.dedup();
    if phases.is_empty() {
        let _ = writeln!(out, "  <none>");
    }
    for phase in phases {
        let names: Vec<&str> = volumes
            .iter()
            .filter(|(of, _)| *of == phase)
            .map(|(_, path)| path.as_str())
            .collect();
        let _ = writeln!(out, "  {phase}:  {}", names.join(", "));
    }
}

/// The `Started:` and `Finished:` lines of a run, and its `Duration:` when it has both ends.
fn run_times(out: &mut String, started: &Option<String>, finished: &Option<String>) {
    let _ = writeln!(out, "Started:      {}", or_none(started));
    let _ = writeln!(out, "Finished:     {}", or_none(finished));
    if let (Some(start), Some(end)) = (parse_time(started), parse_time(finished))
        && end >= start
    {
        let _ = writeln!(
            out,
            "Duration:     {}",
            human_seconds((end - start).num_milliseconds() as f64 / 1000.0)
        );
    }
}

/// The `Hooks:` section of a `describe --details`: each pod's hook runs once (every volume of
/// the pod carries them), how each ended, and its output as the server kept it.
fn hook_lines<'a>(
    out: &mut String,
    volumes: impl Iterator<Item = (&'a VolumeRefView, &'a [HookResultView])>,
) {
    let mut seen = std::collections::BTreeSet::new();
    let mut lines = String::new();
    for (volume, hooks) in volumes {
        if hooks.is_empty() || !seen.insert((volume.namespace.clone(), volume.pod.clone())) {
            continue;
        }
        for hook in hooks {
            let ended = if hook.succeeded {
                "succeeded".to_string()
            } else if hook.exit_code >= 0 {
                format!("failed (exit code {})", hook.exit_code)
            } else {
                "failed".to_string()
            };
            let _ = writeln!(
                lines,
                "  {}/{} {} {:?} in {}: {ended}",
                volume.namespace, volume.pod, hook.phase, hook.command, hook.container
            );
            for (name, text) in [
                ("error", &hook.error),
                ("stdout", &hook.stdout),
                ("stderr", &hook.stderr),
            ] {
                let text = text.trim_end();
                // A run that succeeded has no error to show.
                let shown = !text.is_empty() && (name != "error" || !hook.succeeded);
                if shown {
                    let _ = writeln!(lines, "    {name}: {}", text.replace('\n', "\n      "));
                }
            }
        }
    }
    if !lines.is_empty() {
        out.push('\n');
        let _ = writeln!(out, "Hooks:");
        out.push_str(&lines);
    }
}

/// A filter's `Included:` (`*` when empty: everything) and `Excluded:` lines under `heading`.
fn included_excluded(out: &mut String, heading: &str, included: &[String], excluded: &[String]) {
    let _ = writeln!(out, "{heading}:");
    let included = if included.is_empty() {
        "*".to_string()
    } else {
        included.join(", ")
    };
    let _ = writeln!(out, "  Included:  {included}");
    let _ = writeln!(out, "  Excluded:  {}", list_or_none(excluded));
}

/// A `describe --details` table, indented under its heading.
fn indented_table(out: &mut String, headers: &[&str], rows: &[Vec<String>]) {
    for line in render_table(headers, rows).lines() {
        let _ = writeln!(out, "  {line}");
    }
}

pub fn backup_table(backups: &[BackupView], now: DateTime<Utc>) -> String {
    let rows: Vec<Vec<String>> = backups
        .iter()
        .map(|backup| {
            let status = &backup.status;
            vec![
                backup.name.clone(),
                status.phase.clone(),
                format!("{}/{}", status.volumes_completed, status.volumes_total),
                status.volumes_failed.to_string(),
                status.started.clone().unwrap_or_default(),
                expires_in(now, parse_time(&status.expiration)),
                backup.origin.clone(),
                selector_text(&backup.spec.label_selector),
            ]
        })
        .collect();
    render_table(
        &[
            "NAME", "STATUS", "VOLUMES", "FAILED", "STARTED", "EXPIRES", "ORIGIN", "SELECTOR",
        ],
        &rows,
    )
}

fn skipped_lines(out: &mut String, skipped: &[SkippedVolumeView]) {
    for volume in skipped {
        let _ = write!(
            out,
            "  {}/{}/{}: {}",
            volume.namespace, volume.pod, volume.volume, volume.reason
        );
        if !volume.detail.is_empty() {
            let _ = write!(out, " ({})", volume.detail);
        }
        out.push('\n');
    }
}

pub fn describe_backup(backup: &BackupView, details: bool) -> String {
    let spec = &backup.spec;
    let status = &backup.status;
    let mut out = String::new();
    let _ = writeln!(out, "Name:         {}", backup.name);
    let _ = writeln!(out, "UID:          {}", backup.uid);
    let _ = writeln!(out, "Origin:       {}", backup.origin);
    let _ = writeln!(
        out,
        "Labels:       {}",
        crate::schedules::labels_text(&backup.labels)
    );
    let _ = writeln!(out, "Phase:        {}", status.phase);
    if !status.failure_reason.is_empty() {
        let _ = writeln!(out, "Failure:      {}", status.failure_reason);
    }
    if !backup.unrestorable_reason.is_empty() {
        let _ = writeln!(out, "Unrestorable: {}", backup.unrestorable_reason);
    }
    out.push('\n');
    included_excluded(
        &mut out,
        "Namespaces",
        &spec.included_namespaces,
        &spec.excluded_namespaces,
    );
    included_excluded(
        &mut out,
        "Resources",
        &spec.included_resources,
        &spec.excluded_resources,
    );
    if !spec.exclude_paths.is_empty() {
        let _ = writeln!(out, "Excluded paths:  {}", spec.exclude_paths.join(", "));
    }
    let selector = selector_text(&spec.label_selector);
    let _ = writeln!(
        out,
        "Label selector:  {}",
        if selector.is_empty() {
            "<none>".to_string()
        } else {
            selector
        }
    );
    let _ = writeln!(
        out,
        "Default volumes to fs backup:  {}",
        spec.default_volumes_to_fs_backup
    );
    let _ = writeln!(
        out,
        "TTL:          {}",
        spec.ttl.as_deref().unwrap_or("<server default>")
    );
    let _ = writeln!(
        out,
        "Timeout:      {}",
        spec.timeout.as_deref().unwrap_or("<server default>")
    );
    out.push('\n');
    run_times(&mut out, &status.started, &status.finished);
    let _ = writeln!(out, "Expiration:   {}", or_none(&status.expiration));
    if !status.trace_id.is_empty() {
        let _ = writeln!(out, "Trace ID:     {}", status.trace_id);
    }
    out.push('\n');
    volume_totals(
        &mut out,
        &status.phase,
        status.volumes_total,
        status.volumes_completed,
        status.volumes_failed,
        &status.progress,
        status
            .volumes
            .iter()
            .map(|volume| (volume.phase.as_str(), &volume.progress)),
    );
    // Velero's records do not say what a backup stored; stowage's carry restic's figure.
    let velero = backup.origin == "Velero";
    if !velero {
        let stored: u64 = status
            .volumes
            .iter()
            .map(|volume| volume.bytes_stored)
            .sum();
        let _ = writeln!(
            out,
            "Stored:       {} (what the backup added to the location, after compression)",
            human_bytes(stored)
        );
    }
    out.push('\n');
    if details {
        let _ = writeln!(out, "Pod volume backups:");
        let rows: Vec<Vec<String>> = status
            .volumes
            .iter()
            .map(|volume| {
                let size = volume.progress.bytes_total.max(volume.progress.bytes_done);
                vec![
                    volume.volume.path(),
                    volume.node.clone(),
                    volume.phase.clone(),
                    short_id(&volume.snapshot_id),
                    human_bytes(size),
                    if velero {
                        "-".to_string()
                    } else {
                        human_bytes(volume.bytes_stored)
                    },
                    volume_duration(
                        &volume.started,
                        &volume.finished,
                        volume.progress.seconds_elapsed,
                    ),
                    volume.error_message.clone(),
                ]
            })
            .collect();
        indented_table(
            &mut out,
            &[
                "NAMESPACE/POD/VOLUME",
                "NODE",
                "PHASE",
                "SNAPSHOT",
                "SIZE",
                "STORED",
                "DURATION",
                "ERROR",
            ],
            &rows,
        );
        excluded_lines(
            &mut out,
            "Excluded paths (not in the snapshots)",
            status
                .volumes
                .iter()
                .map(|volume| (volume.volume.path(), &volume.excluded_paths)),
        );
    } else {
        volumes_by_phase(
            &mut out,
            "Pod volume backups",
            "backup",
            &backup.name,
            status
                .volumes
                .iter()
                .map(|volume| (volume.phase.as_str(), volume.volume.path())),
        );
    }
    if details {
        hook_lines(
            &mut out,
            status
                .volumes
                .iter()
                .map(|volume| (&volume.volume, volume.hooks.as_slice())),
        );
    }
    if !status.skipped.is_empty() {
        out.push('\n');
        let _ = writeln!(out, "Skipped volumes:");
        skipped_lines(&mut out, &status.skipped);
    }
    out
}

pub fn restore_table(restores: &[RestoreView]) -> String {
    let rows: Vec<Vec<String>> = restores
        .iter()
        .map(|restore| {
            let status = &restore.status;
            vec![
                restore.name.clone(),
                restore.spec.backup_name.clone(),
                status.phase.clone(),
                format!("{}/{}", status.volumes_completed, status.volumes_total),
                status.volumes_failed.to_string(),
                status.started.clone().unwrap_or_default(),
                status.finished.clone().unwrap_or_default(),
            ]
        })
        .collect();
    render_table(
        &[
            "NAME", "BACKUP", "STATUS", "VOLUMES", "FAILED", "STARTED", "FINISHED",
        ],
        &rows,
    )
}

pub fn describe_restore(restore: &RestoreView, details: bool) -> String {
    let spec = &restore.spec;
    let status = &restore.status;
    let mut out = String::new();
    let _ = writeln!(out, "Name:         {}", restore.name);
    let _ = writeln!(out, "UID:          {}", restore.uid);
    let _ = writeln!(out, "Backup:       {}", spec.backup_name);
    let _ = writeln!(out, "Phase:        {}", status.phase);
    if !status.failure_reason.is_empty() {
        let _ = writeln!(out, "Failure:      {}", status.failure_reason);
    }
    out.push('\n');
    let _ = writeln!(
        out,
        "Namespaces:   {}",
        if spec.included_namespaces.is_empty() {
            "* (all in the backup)".to_string()
        } else {
            spec.included_namespaces.join(", ")
        }
    );
    let mappings: Vec<String> = spec
        .namespace_mapping
        .iter()
        .map(|(old, new)| format!("{old}:{new}"))
        .collect();
    let _ = writeln!(out, "Namespace mappings:  {}", list_or_none(&mappings));
    if !spec.include_paths.is_empty() {
        let _ = writeln!(out, "Include paths:  {}", spec.include_paths.join(", "));
    }
    if !spec.exclude_paths.is_empty() {
        let _ = writeln!(out, "Exclude paths:  {}", spec.exclude_paths.join(", "));
    }
    out.push('\n');
    run_times(&mut out, &status.started, &status.finished);
    if !status.trace_id.is_empty() {
        let _ = writeln!(out, "Trace ID:     {}", status.trace_id);
    }
    let _ = writeln!(out, "Pods created: {}", list_or_none(&status.pods_created));
    let mut repositories: Vec<String> = status
        .volumes
        .iter()
        .filter(|volume| !volume.repository.is_empty())
        .map(|volume| volume.repository.clone())
        .collect();
    repositories.sort_unstable();
    repositories.dedup();
    let _ = writeln!(out, "Repositories: {}", list_or_none(&repositories));
    out.push('\n');
    volume_totals(
        &mut out,
        &status.phase,
        status.volumes_total,
        status.volumes_completed,
        status.volumes_failed,
        &status.progress,
        status
            .volumes
            .iter()
            .map(|volume| (volume.phase.as_str(), &volume.progress)),
    );
    if details {
        out.push('\n');
        let _ = writeln!(out, "Pod volume restores:");
        let rows: Vec<Vec<String>> = status
            .volumes
            .iter()
            .map(|volume| {
                vec![
                    volume.volume.path(),
                    volume.source_namespace.clone(),
                    volume.node.clone(),
                    volume.phase.clone(),
                    short_id(&volume.snapshot_id),
                    human_bytes(volume.progress.bytes_done),
                    volume_duration(
                        &volume.started,
                        &volume.finished,
                        volume.progress.seconds_elapsed,
                    ),
                    volume.error_message.clone(),
                ]
            })
            .collect();
        indented_table(
            &mut out,
            &[
                "NAMESPACE/POD/VOLUME",
                "FROM",
                "NODE",
                "PHASE",
                "SNAPSHOT",
                "SIZE",
                "DURATION",
                "ERROR",
            ],
            &rows,
        );
        hook_lines(
            &mut out,
            status
                .volumes
                .iter()
                .map(|volume| (&volume.volume, volume.hooks.as_slice())),
        );
        excluded_lines(
            &mut out,
            "Never backed up (excluded when the backup ran)",
            status
                .volumes
                .iter()
                .map(|volume| (volume.volume.path(), &volume.excluded_at_backup)),
        );
    } else {
        out.push('\n');
        volumes_by_phase(
            &mut out,
            "Pod volume restores",
            "restore",
            &restore.name,
            status
                .volumes
                .iter()
                .map(|volume| (volume.phase.as_str(), volume.volume.path())),
        );
    }
    crate::resource_results::describe(&mut out, &status.resources, details);
    out
}

/// A titled list of `namespace/pod/volume: pattern, …`, for the volumes that have patterns;
/// nothing when none has.
fn excluded_lines<'a>(
    out: &mut String,
    title: &str,
    volumes: impl Iterator<Item = (String, &'a Vec<String>)>,
) {
    let lines: Vec<String> = volumes
        .filter(|(_, patterns)| !patterns.is_empty())
        .map(|(path, patterns)| format!("  {path}: {}", patterns.join(", ")))
        .collect();
    if lines.is_empty() {
        return;
    }
    out.push('\n');
    let _ = writeln!(out, "{title}:");
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
}

/// `2026-…Z`, with ` (failed)` when the last run failed; `never run` or `running` when no run
/// has finished.
fn last_run(status: &MaintenanceView) -> String {
    match (&status.last_finished, status.last_result.as_str()) {
        (Some(at), "Succeeded") => at.clone(),
        (Some(at), _) => format!("{at} (failed)"),
        (None, "Running") => "running".to_string(),
        (None, _) => "never run".to_string(),
    }
}

/// The earlier of the next check and the next prune.
fn next_maintenance(repository: &RepositoryView) -> String {
    let check = parse_time(&repository.check.next_run);
    let prune = parse_time(&repository.prune.next_run);
    let (at, kind) = match (check, prune) {
        (Some(c), Some(p)) if p < c => (p, "prune"),
        (Some(c), _) => (c, "check"),
        (None, Some(p)) => (p, "prune"),
        (None, None) => return String::new(),
    };
    format!(
        "{} ({kind})",
        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// Restic's message on one line: its lines trimmed, empty and repeated ones dropped, joined
/// with `; `, so a failure reads as one sentence.
pub fn one_line(text: &str) -> String {
    let mut lines: Vec<&str> = Vec::new();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    lines.join("; ")
}

/// What `repo maintain` prints for its result in table mode: a sentence on success; on failure
/// nothing here, as the error sentence says it all, once.
pub fn maintenance_result(
    result: &MaintenanceResultView,
    task: &str,
    namespace: &str,
) -> Option<String> {
    result.succeeded.then(|| {
        format!(
            "{task} of the repository of namespace \"{namespace}\" succeeded in {}.\n",
            human_seconds(result.duration_seconds)
        )
    })
}

pub fn repository_table(repositories: &[RepositoryView]) -> String {
    let rows: Vec<Vec<String>> = repositories
        .iter()
        .map(|repository| {
            vec![
                repository.namespace.clone(),
                repository.phase.clone(),
                last_run(&repository.check),
                last_run(&repository.prune),
                next_maintenance(repository),
                repository.message.clone(),
            ]
        })
        .collect();
    render_table(
        &[
            "NAMESPACE",
            "PHASE",
            "LAST CHECK",
            "LAST PRUNE",
            "NEXT MAINTENANCE",
            "MESSAGE",
        ],
        &rows,
    )
}

pub fn coverage_text(coverage: &CoverageView) -> String {
    let mut out = format!(
        "{} of {} pod volumes would be backed up{}.\n",
        coverage.volumes_covered,
        coverage.volumes_total,
        if coverage.default_volumes_to_fs_backup {
            " (opt-out mode, --default-volumes-to-fs-backup)"
        } else {
            " (opt-in mode, backup.velero.io/backup-volumes)"
        }
    );
    if !coverage.uncovered.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = coverage
            .uncovered
            .iter()
            .map(|volume| {
                vec![
                    volume.namespace.clone(),
                    volume.pod.clone(),
                    volume.volume.clone(),
                    volume.reason.clone(),
                    volume.detail.clone(),
                ]
            })
            .collect();
        out.push_str(&render_table(
            &["NAMESPACE", "POD", "VOLUME", "REASON", "DETAIL"],
            &rows,
        ));
    }
    if coverage.claims.is_empty() {
        return out;
    }
    // Every claim, mounted or not: what the pod volumes above cannot show.
    let backed_up = coverage
        .claims
        .iter()
        .filter(|claim| claim.state == "BackedUp")
        .count();
    out.push_str(&format!(
        "\n{backed_up} of {} persistent volume claims would be backed up.\n\n",
        coverage.claims.len()
    ));
    let rows: Vec<Vec<String>> = coverage
        .claims
        .iter()
        .map(|claim| {
            vec![
                claim.namespace.clone(),
                claim.claim.clone(),
                claim.state.clone(),
                claim.pod.clone(),
                claim.volume.clone(),
                claim.detail.clone(),
            ]
        })
        .collect();
    out.push_str(&render_table(
        &["NAMESPACE", "CLAIM", "STATE", "POD", "VOLUME", "DETAIL"],
        &rows,
    ));
    out
}

/// `config get-contexts`: one row per context, `*` marking the current one. Paths are shown,
/// never what the files hold.
pub fn contexts_table(config: &Config) -> String {
    let path = |path: &Option<std::path::PathBuf>| {
        path.as_ref()
            .map(|path| path.display().to_string())
            .unwrap_or_default()
    };
    let rows: Vec<Vec<String>> = config
        .contexts
        .iter()
        .map(|context| {
            let current = config.current_context.as_deref() == Some(context.name.as_str());
            let server = context.server.clone().unwrap_or_default();
            let tls = if context.cert.is_some() {
                "mTLS"
            } else if context.cacert.is_some() || server.starts_with("https://") {
                "TLS"
            } else {
                "plaintext"
            };
            vec![
                // A blank (not `<none>`) for the others, as kubectl prints it.
                if current { "*" } else { " " }.to_string(),
                context.name.clone(),
                server,
                tls.to_string(),
                path(&context.cacert),
                path(&context.cert),
                path(&context.token_file),
            ]
        })
        .collect();
    render_table(
        &[
            "CURRENT",
            "NAME",
            "SERVER",
            "TLS",
            "CACERT",
            "CERT",
            "TOKEN-FILE",
        ],
        &rows,
    )
}

pub fn log_lines(lines: &[LogLineView]) -> String {
    let mut out = String::new();
    for line in lines {
        let _ = writeln!(
            out,
            "{} {:<5} {}",
            line.time.as_deref().unwrap_or("-"),
            line.level.to_uppercase(),
            line.message
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::{
        BackupSpecView, BackupStatusView, PodVolumeBackupView, PodVolumeRestoreView, ProgressView,
        RestoreSpecView, RestoreStatusView, VolumeRefView,
    };

    fn volume(name: &str, phase: &str, error: &str) -> PodVolumeBackupView {
        PodVolumeBackupView {
            volume: VolumeRefView {
                namespace: "foo".into(),
                pod: "sample".into(),
                pod_uid: "uid".into(),
                volume: name.into(),
                source: "EmptyDir".into(),
                pv_name: String::new(),
                pvc_name: String::new(),
            },
            node: "node-1".into(),
            phase: phase.into(),
            snapshot_id: "0123456789abcdef".into(),
            parent_snapshot_id: String::new(),
            stable_identity: String::new(),
            repository: String::new(),
            progress: ProgressView {
                bytes_done: 2048,
                bytes_total: 2048,
                ..Default::default()
            },
            bytes_added: 0,
            bytes_stored: 1536,
            files_new: 0,
            files_changed: 0,
            files_unmodified: 0,
            started: Some("2026-11-24T10:00:00Z".into()),
            finished: Some("2026-11-24T10:03:20Z".into()),
            error_message: error.into(),
            hooks: Vec::new(),
            excluded_paths: Vec::new(),
        }
    }

    fn backup() -> BackupView {
        BackupView {
            name: "demo".into(),
            uid: "u-1".into(),
            origin: "Stowage".into(),
            unrestorable_reason: String::new(),
            labels: Default::default(),
            spec: BackupSpecView {
                included_namespaces: vec!["foo".into()],
                excluded_namespaces: vec![],
                included_resources: vec!["deployments.apps".into(), "configmaps".into()],
                excluded_resources: vec![],
                label_selector: [("app".to_string(), "db".to_string())].into(),
                default_volumes_to_fs_backup: false,
                ttl: Some("720h".into()),
                timeout: None,
                exclude_paths: Vec::new(),
            },
            status: BackupStatusView {
                phase: "PartiallyFailed".into(),
                started: Some("2026-11-24T10:00:00Z".into()),
                finished: None,
                expiration: Some("2026-12-24T10:00:00Z".into()),
                volumes_total: 2,
                volumes_completed: 1,
                volumes_failed: 1,
                progress: ProgressView::default(),
                failure_reason: String::new(),
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                volumes: vec![
                    volume("data", "Completed", ""),
                    volume("cache", "Failed", "restic: disk full"),
                ],
                skipped: vec![SkippedVolumeView {
                    namespace: "foo".into(),
                    pod: "sample".into(),
                    volume: "host".into(),
                    reason: "UnsupportedType".into(),
                    detail: "hostPath volumes hold node data".into(),
                }],
            },
        }
    }

    #[test]
    fn backup_list_shows_counts_expiry_and_selector() {
        let now = DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let table = backup_table(&[backup()], now);
        let mut lines = table.lines();
        let header = lines.next().unwrap();
        assert!(header.starts_with("NAME   STATUS"), "{header}");
        let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            [
                "demo",
                "PartiallyFailed",
                "1/2",
                "1",
                "2026-11-24T10:00:00Z",
                "30d",
                "Stowage",
                "app=db"
            ]
        );
    }

    #[test]
    fn describe_details_has_one_row_per_volume() {
        let text = describe_backup(&backup(), true);
        assert!(text.contains("Phase:        PartiallyFailed"), "{text}");
        assert!(text.contains("Trace ID:     4bf92f3577b34da6a3ce929d0e0e4736"));
        let row = text
            .lines()
            .find(|line| line.contains("foo/sample/cache"))
            .unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "foo/sample/cache",
                "node-1",
                "Failed",
                "01234567",
                "2.0",
                "KiB",
                "1.5",
                "KiB",
                "3m20s",
                "restic:",
                "disk",
                "full"
            ]
        );
        assert!(
            text.contains("foo/sample/host: UnsupportedType (hostPath volumes hold node data)")
        );
    }

    #[test]
    fn describe_shows_what_the_location_stores() {
        let text = describe_backup(&backup(), false);
        assert!(
            text.contains("Stored:       3.0 KiB (what the backup added to the location"),
            "{text}"
        );
    }

    #[test]
    fn describe_shows_the_resource_filters() {
        let text = describe_backup(&backup(), false);
        assert!(
            text.contains(
                "Resources:\n  Included:  deployments.apps, configmaps\n  Excluded:  <none>\n"
            ),
            "{text}"
        );
        let mut everything = backup();
        everything.spec.included_resources.clear();
        everything.spec.excluded_resources = vec!["secrets".into()];
        let text = describe_backup(&everything, false);
        assert!(
            text.contains("Resources:\n  Included:  *\n  Excluded:  secrets\n"),
            "{text}"
        );
    }

    #[test]
    fn progress_still_being_counted_is_not_shown_as_a_total() {
        let mut backup = backup();
        backup.status.phase = "InProgress".into();
        backup.status.progress = ProgressView {
            bytes_done: 1024,
            bytes_total: 2048,
            files_done: 1,
            files_total: 4,
            ..Default::default()
        };
        // One volume is done; the other runs and restic is still scanning it.
        backup.status.volumes[1].phase = "InProgress".into();
        backup.status.volumes[1].progress = ProgressView {
            bytes_done: 1024,
            ..Default::default()
        };
        let text = describe_backup(&backup, false);
        assert!(
            text.contains("Progress:     1.0 KiB so far, 1 files so far\n"),
            "{text}"
        );
        // Once the scan has counted the tree, the sum is the total.
        backup.status.volumes[1].progress.bytes_total = 2048;
        backup.status.volumes[1].progress.files_total = 2;
        let text = describe_backup(&backup, false);
        assert!(
            text.contains("Progress:     1.0 KiB of 2.0 KiB, 1 of 4 files\n"),
            "{text}"
        );
        // A volume still waiting to run adds to the total only when it runs.
        backup.status.volumes[1].phase = "Queued".into();
        backup.status.volumes[1].progress = ProgressView::default();
        let text = describe_backup(&backup, false);
        assert!(text.contains("1.0 KiB so far"), "{text}");
        // An ended run's totals are final whatever its volumes say.
        backup.status.phase = "Cancelled".into();
        let text = describe_backup(&backup, false);
        assert!(text.contains("1.0 KiB of 2.0 KiB"), "{text}");
    }

    #[test]
    fn excluded_paths_show_in_describe_and_per_volume_with_details() {
        let mut view = backup();
        view.spec.exclude_paths = vec!["*.tmp".into()];
        view.status.volumes[0].excluded_paths = vec!["*.tmp".into(), "cache".into()];
        let text = describe_backup(&view, false);
        assert!(text.contains("Excluded paths:  *.tmp\n"), "{text}");
        assert!(!text.contains("not in the snapshots"), "{text}");
        let details = describe_backup(&view, true);
        assert!(
            details.contains(
                "Excluded paths (not in the snapshots):\n  foo/sample/data: *.tmp, cache\n"
            ),
            "{details}"
        );
        // A volume without patterns gets no line.
        assert!(!details.contains("foo/sample/cache:"), "{details}");

        let mut restore = restore();
        restore.spec.include_paths = vec!["data:data/2024/**".into()];
        restore.status.volumes[0].excluded_at_backup = vec!["cache".into()];
        let text = describe_restore(&restore, true);
        assert!(
            text.contains("Include paths:  data:data/2024/**\n"),
            "{text}"
        );
        assert!(!text.contains("Exclude paths:"), "{text}");
        assert!(
            text.contains("Never backed up (excluded when the backup ran):\n  foo/sample/"),
            "{text}"
        );
    }

    #[test]
    fn describe_without_details_groups_volumes_by_phase() {
        let text = describe_backup(&backup(), false);
        assert!(text.contains("  Completed:  foo/sample/data\n"), "{text}");
        assert!(text.contains("  Failed:  foo/sample/cache\n"), "{text}");
        assert!(!text.contains("SNAPSHOT"));
    }

    #[test]
    fn next_maintenance_is_the_earlier_task() {
        let mut repository = RepositoryView {
            namespace: "foo".into(),
            url: "/r/foo".into(),
            phase: "Ready".into(),
            message: String::new(),
            created: None,
            secret_name: "stowage-repo-foo".into(),
            check: MaintenanceView {
                last_result: "Failed".into(),
                last_started: None,
                last_finished: Some("2026-11-24T09:00:00Z".into()),
                last_duration_seconds: 1.0,
                last_succeeded: Some(false),
                last_error: "boom".into(),
                next_run: Some("2026-11-25T09:00:00Z".into()),
                interval: Some("24h".into()),
            },
            prune: MaintenanceView {
                last_result: "NeverRun".into(),
                last_started: None,
                last_finished: None,
                last_duration_seconds: 0.0,
                last_succeeded: None,
                last_error: String::new(),
                next_run: Some("2026-11-24T12:00:00Z".into()),
                interval: Some("168h".into()),
            },
        };
        let table = repository_table(std::slice::from_ref(&repository));
        let row = table.lines().nth(1).unwrap();
        assert!(row.contains("2026-11-24T09:00:00Z (failed)"), "{row}");
        assert!(row.contains("2026-11-24T12:00:00Z (prune)"), "{row}");
        // The prune that never ran says so instead of an empty cell.
        assert!(row.contains("never run"), "{row}");
        repository.prune.next_run = None;
        assert_eq!(
            next_maintenance(&repository),
            "2026-11-25T09:00:00Z (check)"
        );
    }

    #[test]
    fn coverage_lists_uncovered_volumes_with_reasons() {
        let coverage = CoverageView {
            volumes_total: 3,
            volumes_covered: 2,
            default_volumes_to_fs_backup: false,
            uncovered: backup().status.skipped,
            claims: vec![],
        };
        let text = coverage_text(&coverage);
        assert!(text.starts_with("2 of 3 pod volumes would be backed up"));
        assert!(
            text.contains("foo         sample   host     UnsupportedType"),
            "{text}"
        );
    }

    fn restore() -> RestoreView {
        let restored = |name: &str, phase: &str| PodVolumeRestoreView {
            volume: volume(name, phase, "").volume,
            source_namespace: "foo".into(),
            node: "node-1".into(),
            phase: phase.into(),
            snapshot_id: "0123456789abcdef".into(),
            progress: ProgressView::default(),
            started: None,
            finished: None,
            error_message: String::new(),
            repository: "/loc/restic/foo".into(),
            hooks: Vec::new(),
            excluded_at_backup: Vec::new(),
        };
        RestoreView {
            name: "demo-restore".into(),
            uid: "r-1".into(),
            spec: RestoreSpecView {
                backup_name: "demo".into(),
                namespace_mapping: Default::default(),
                included_namespaces: vec![],
                include_paths: vec![],
                exclude_paths: vec![],
            },
            status: RestoreStatusView {
                phase: "PartiallyFailed".into(),
                started: Some("2026-11-24T10:00:00Z".into()),
                finished: Some("2026-11-24T10:01:30Z".into()),
                volumes_total: 2,
                volumes_completed: 1,
                volumes_failed: 1,
                progress: ProgressView::default(),
                failure_reason: String::new(),
                pods_created: vec!["foo/sample".into()],
                trace_id: String::new(),
                volumes: vec![restored("data", "Completed"), restored("cache", "Failed")],
                resources: vec![],
            },
        }
    }

    #[test]
    fn restore_describe_without_details_groups_volumes_by_phase_as_backups_do() {
        let text = describe_restore(&restore(), false);
        assert!(
            text.contains(
                "Pod volume restores:  (run `stowage restore describe demo-restore --details` for the table)"
            ),
            "{text}"
        );
        assert!(text.contains("  Completed:  foo/sample/data\n"), "{text}");
        assert!(text.contains("  Failed:  foo/sample/cache\n"), "{text}");
        assert!(text.contains("Duration:     1m30s\n"), "{text}");
        assert!(!text.contains("SNAPSHOT"), "{text}");
        let details = describe_restore(&restore(), true);
        assert!(details.contains("SNAPSHOT"), "{details}");
        assert!(!details.contains("--details` for the table"), "{details}");
    }

    /// A restore read back from the bucket after it was cancelled: its phase, why, each
    /// volume's phase and error, and the repository it read show in describe and get.
    #[test]
    fn a_cancelled_restore_shows_its_phase_reason_and_volumes() {
        let mut cancelled = restore();
        cancelled.status.phase = "Cancelled".into();
        cancelled.status.failure_reason = "cancelled by request".into();
        cancelled.status.volumes[1].phase = "Cancelled".into();
        cancelled.status.volumes[1].error_message = "restore cancelled".into();
        let text = describe_restore(&cancelled, false);
        assert!(text.contains("Phase:        Cancelled\n"), "{text}");
        assert!(
            text.contains("Failure:      cancelled by request\n"),
            "{text}"
        );
        assert!(text.contains("  Cancelled:  foo/sample/cache\n"), "{text}");
        assert!(text.contains("Repositories: /loc/restic/foo\n"), "{text}");
        let details = describe_restore(&cancelled, true);
        assert!(details.contains("Cancelled"), "{details}");
        assert!(details.contains("restore cancelled"), "{details}");
        let table = restore_table(std::slice::from_ref(&cancelled));
        assert!(table.contains("demo-restore"), "{table}");
        assert!(table.contains("Cancelled"), "{table}");
    }

    /// A restore whose record in the bucket does not parse is served with only its name, the
    /// Failed phase and why: get and describe show that much and nothing invented.
    #[test]
    fn an_unreadable_restore_record_shows_its_name_and_why() {
        let view = RestoreView::from(&stowage_proto::v1::Restore {
            name: "broken".into(),
            spec: Some(Default::default()),
            status: Some(stowage_proto::v1::RestoreStatus {
                phase: stowage_proto::v1::RestorePhase::Failed as i32,
                failure_reason: "unreadable restore record: restores/broken/stowage-restore.json: not a valid restore record: EOF".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let text = describe_restore(&view, false);
        assert!(text.contains("Name:         broken\n"), "{text}");
        assert!(text.contains("Phase:        Failed\n"), "{text}");
        assert!(
            text.contains(
                "Failure:      unreadable restore record: restores/broken/stowage-restore.json"
            ),
            "{text}"
        );
        assert!(text.contains("Repositories: <none>\n"), "{text}");
        let table = restore_table(std::slice::from_ref(&view));
        assert!(
            table
                .lines()
                .nth(1)
                .unwrap_or_default()
                .starts_with("broken"),
            "{table}"
        );
    }

    #[test]
    fn contexts_list_marks_the_current_one_and_its_security() {
        use crate::config::{Config, Context};
        let config = Config {
            current_context: Some("prod".into()),
            contexts: vec![
                Context {
                    name: "dev".into(),
                    server: Some("http://127.0.0.1:8080".into()),
                    ..Default::default()
                },
                Context {
                    name: "prod".into(),
                    server: Some("https://127.0.0.1:9443".into()),
                    cacert: Some("/etc/stowage/ca.pem".into()),
                    cert: Some("/etc/stowage/cli.crt".into()),
                    key: Some("/etc/stowage/cli.key".into()),
                    ..Default::default()
                },
            ],
        };
        let table = contexts_table(&config);
        let rows: Vec<Vec<&str>> = table
            .lines()
            .skip(1)
            .map(|line| line.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows[0],
            [
                "dev",
                "http://127.0.0.1:8080",
                "plaintext",
                "<none>",
                "<none>",
                "<none>"
            ]
        );
        assert_eq!(
            rows[1],
            [
                "*",
                "prod",
                "https://127.0.0.1:9443",
                "mTLS",
                "/etc/stowage/ca.pem",
                "/etc/stowage/cli.crt",
                "<none>"
            ]
        );
    }

    #[test]
    fn coverage_lists_every_claim_with_its_state() {
        use crate::view::ClaimView;
        use stowage_proto::v1;
        let claim = |name: &str, covered: bool, pod: &str, reason: v1::SkipReason| {
            ClaimView::from(&v1::ClaimCoverage {
                namespace: "foo".into(),
                claim: name.into(),
                covered,
                pod: pod.into(),
                volume: if pod.is_empty() { "" } else { "data" }.into(),
                reason: reason as i32,
                detail: String::new(),
            })
        };
        let coverage = CoverageView {
            volumes_total: 2,
            volumes_covered: 1,
            default_volumes_to_fs_backup: false,
            uncovered: vec![],
            claims: vec![
                claim("web", true, "sample", v1::SkipReason::Unspecified),
                claim("db", false, "db-0", v1::SkipReason::NotAnnotated),
                claim("orphan", false, "", v1::SkipReason::NotMounted),
                claim("pending", false, "", v1::SkipReason::PvcNotBound),
                claim("raw", false, "vm", v1::SkipReason::BlockMode),
            ],
        };
        let text = coverage_text(&coverage);
        assert!(
            text.contains("1 of 5 persistent volume claims would be backed up."),
            "{text}"
        );
        let rows: Vec<&str> = text
            .lines()
            .skip_while(|line| !line.starts_with("NAMESPACE"))
            .collect();
        assert_eq!(
            rows,
            vec![
                "NAMESPACE   CLAIM     STATE          POD      VOLUME   DETAIL",
                "foo         web       BackedUp       sample   data     <none>",
                "foo         db        NotAnnotated   db-0     data     <none>",
                "foo         orphan    NotMounted     <none>   <none>   <none>",
                "foo         pending   PvcNotBound    <none>   <none>   <none>",
                "foo         raw       BlockMode      vm       data     <none>",
            ]
        );
    }

    #[test]
    fn describe_details_shows_each_pods_hook_runs_once() {
        let hook = |phase: &str, succeeded: bool, exit_code: i32, stderr: &str| HookResultView {
            phase: phase.into(),
            container: "app".into(),
            command: vec!["/bin/sh".into(), "-c".into(), "pg_dump".into()],
            succeeded,
            exit_code,
            stdout: if succeeded {
                "dumped\n".into()
            } else {
                String::new()
            },
            stderr: stderr.into(),
            error: if succeeded {
                String::new()
            } else {
                "post-backup hook exited with code 3".into()
            },
            started: None,
            finished: None,
        };
        let mut backup = backup();
        for volume in &mut backup.status.volumes {
            volume.hooks = vec![
                hook("pre", true, 0, ""),
                hook("post", false, 3, "thaw failed\nno lock"),
            ];
        }
        let text = describe_backup(&backup, true);
        assert_eq!(text.matches("foo/sample pre").count(), 1, "{text}");
        assert!(
            text.contains(
                "Hooks:\n  foo/sample pre [\"/bin/sh\", \"-c\", \"pg_dump\"] in app: succeeded\n    stdout: dumped\n  foo/sample post [\"/bin/sh\", \"-c\", \"pg_dump\"] in app: failed (exit code 3)\n    error: post-backup hook exited with code 3\n    stderr: thaw failed\n      no lock\n"
            ),
            "{text}"
        );
        assert!(!describe_backup(&backup, false).contains("Hooks:"));
    }
}
