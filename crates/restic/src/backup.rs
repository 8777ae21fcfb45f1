//! `restic backup --json`: options, the status and summary lines it prints, and the run that
//! turns status lines into progress callbacks.

use std::path::PathBuf;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::{
    command::{Repository, Restic, ResticCommand},
    error::ResticError,
};

/// What to back up and how to label it.
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    /// Working directory; with `paths` = `["."]` the files are stored at the snapshot root,
    /// so the tree does not depend on where the directory sits on the node.
    pub working_dir: PathBuf,
    /// Paths to back up, relative to `working_dir`; `.` when empty.
    pub paths: Vec<PathBuf>,
    pub host: Option<String>,
    /// One `--tag` each. restic splits a tag on `,`, so tags must not contain one.
    pub tags: Vec<String>,
    /// `--parent`: the snapshot to compare against, so unchanged files are not read.
    pub parent: Option<String>,
    pub excludes: Vec<String>,
    /// `--limit-upload` in KiB/s, so backups leave bandwidth to the node's workloads.
    pub limit_upload_kib: Option<u64>,
}

/// A `message_type: status` line.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct BackupStatus {
    pub seconds_elapsed: u64,
    pub seconds_remaining: u64,
    pub percent_done: f64,
    pub total_files: u64,
    pub files_done: u64,
    pub total_bytes: u64,
    pub bytes_done: u64,
    pub error_count: u64,
    pub current_files: Vec<String>,
}

impl BackupStatus {
    /// Whether this line says restic's scanner has finished. restic scans the tree while it
    /// backs up, so `total_files` and `total_bytes` grow until the scan ends; only then does
    /// it estimate `seconds_remaining`, which it omits while it is 0. A line without it may
    /// still come after the scan (less than a second left), so see [`BackupProgress`].
    pub fn scan_finished(&self) -> bool {
        self.seconds_remaining > 0
    }
}

/// Follows a backup's status lines and says when their totals are final, so a caller never
/// shows the scanner's running count as the size of the backup.
#[derive(Clone, Debug, Default)]
pub struct BackupProgress {
    scan_finished: bool,
}

impl BackupProgress {
    /// Records `status`; true when its totals are final (the scan was seen to finish on this
    /// line or an earlier one).
    pub fn totals_final(&mut self, status: &BackupStatus) -> bool {
        self.scan_finished |= status.scan_finished();
        self.scan_finished
    }
}

/// The final `message_type: summary` line.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct BackupSummary {
    pub files_new: u64,
    pub files_changed: u64,
    pub files_unmodified: u64,
    pub dirs_new: u64,
    pub dirs_changed: u64,
    pub dirs_unmodified: u64,
    pub data_blobs: i64,
    pub tree_blobs: i64,
    pub data_added: u64,
    /// What the snapshot added to the repository after compression (restic 0.17 and later;
    /// 0 from older versions): what the location stores for this backup.
    pub data_added_packed: u64,
    /// Regular files only, like the status lines' `total_files`: restic does not count
    /// directories or symlinks here.
    pub total_files_processed: u64,
    pub total_bytes_processed: u64,
    pub total_duration: f64,
    /// restic 0.17+ prints the full id here (0.14 printed the short one).
    pub snapshot_id: String,
    /// restic's stderr when it exited 3: the snapshot was made but some files could not be
    /// read (they are missing from it). `None` for a complete snapshot.
    #[serde(skip)]
    pub unreadable: Option<String>,
}

/// restic's exit code for "snapshot created, but some source files could not be read".
pub const EXIT_INCOMPLETE: i32 = 3;

/// One parsed stdout line of `restic backup --json`.
#[derive(Clone, Debug, PartialEq)]
pub enum BackupMessage {
    Status(BackupStatus),
    Summary(BackupSummary),
    /// Errors, verbose lines and message types newer restic versions add.
    Other(String),
}

#[derive(Deserialize)]
struct Tagged {
    message_type: String,
}

/// Parses one line; `None` for lines that are not JSON (restic prints a few plain warnings).
pub fn parse_backup_line(line: &str) -> Option<BackupMessage> {
    let line = line.trim();
    if !line.starts_with('{') {
        return None;
    }
    let tagged: Tagged = serde_json::from_str(line).ok()?;
    match tagged.message_type.as_str() {
        "status" => serde_json::from_str(line).ok().map(BackupMessage::Status),
        "summary" => serde_json::from_str(line).ok().map(BackupMessage::Summary),
        other => Some(BackupMessage::Other(other.to_string())),
    }
}

impl Restic {
    /// Runs `restic backup --json`, calling `on_status` for every status line and, when a
    /// snapshot was made, once more with the final counts of the summary (restic 0.18 prints no
    /// status line for a backup that finishes within its first progress interval), and returns
    /// the summary.
    pub async fn backup(
        &self,
        repository: &Repository,
        options: &BackupOptions,
        cancel: &CancellationToken,
        mut on_status: impl FnMut(&BackupStatus) + Send,
    ) -> Result<BackupSummary, ResticError> {
        let command = backup_command(options)?;
        let mut summary: Option<BackupSummary> = None;
        let outcome = self
            .run_streaming(
                repository,
                &command,
                cancel,
                |line| match parse_backup_line(line) {
                    Some(BackupMessage::Status(status)) => on_status(&status),
                    Some(BackupMessage::Summary(found)) => summary = Some(found),
                    Some(BackupMessage::Other(kind)) => {
                        tracing::debug!(kind, "restic backup message")
                    }
                    None => tracing::debug!(line, "restic backup output"),
                },
            )
            .await;
        if let Some(summary) = &summary
            && matches!(
                &outcome,
                Ok(_)
                    | Err(ResticError::Failed {
                        code: EXIT_INCOMPLETE,
                        ..
                    })
            )
        {
            on_status(&final_status(summary));
        }
        match (outcome, summary) {
            (Ok(_), Some(summary)) => Ok(summary),
            // A snapshot exists, without the files restic could not read: the caller decides
            // whether that is good enough, so it gets the summary and restic's words.
            (
                Err(ResticError::Failed {
                    code: EXIT_INCOMPLETE,
                    stderr,
                    ..
                }),
                Some(mut summary),
            ) => {
                tracing::warn!(snapshot_id = %summary.snapshot_id, %stderr, "incomplete snapshot");
                summary.unreadable = Some(stderr);
                Ok(summary)
            }
            (Err(error), _) => Err(error),
            (Ok(_), None) => Err(ResticError::MissingOutput {
                command: "backup".into(),
                reason: "restic exited 0 without a summary line".into(),
            }),
        }
    }
}

/// The progress of a finished backup, from its summary: everything processed is done.
pub fn final_status(summary: &BackupSummary) -> BackupStatus {
    BackupStatus {
        seconds_elapsed: summary.total_duration as u64,
        seconds_remaining: 0,
        percent_done: 1.0,
        total_files: summary.total_files_processed,
        files_done: summary.total_files_processed,
        total_bytes: summary.total_bytes_processed,
        bytes_done: summary.total_bytes_processed,
        error_count: 0,
        current_files: Vec::new(),
    }
}

/// The argv for a backup; refuses tags restic would split.
pub fn backup_command(options: &BackupOptions) -> Result<ResticCommand, ResticError> {
    let mut command = ResticCommand::new("backup")
        .json()
        .current_dir(&options.working_dir);
    if let Some(host) = &options.host {
        command = command.arg("--host").arg(host);
    }
    for tag in &options.tags {
        if tag.contains(',') || tag.is_empty() {
            return Err(ResticError::InvalidArgument {
                command: "backup".into(),
                reason: format!("tag `{tag}` is empty or contains `,`, which restic splits on"),
            });
        }
        command = command.arg("--tag").arg(tag);
    }
    if let Some(parent) = &options.parent {
        command = command.arg("--parent").arg(parent_argument(parent));
    }
    if let Some(limit) = options.limit_upload_kib.filter(|limit| *limit > 0) {
        command = command.arg("--limit-upload").arg(limit.to_string());
    }
    for exclude in &options.excludes {
        command = command.arg("--exclude").arg(exclude);
    }
    // `--` so a path starting with `-` is never read as a flag.
    command = command.arg("--");
    if options.paths.is_empty() {
        command = command.arg(".");
    } else {
        command = command.args(options.paths.iter().map(|p| p.as_os_str().to_owned()));
    }
    Ok(command)
}

/// Digits of a full restic id; restic loads an id of this length without listing.
const FULL_ID_LEN: usize = 64;

/// How `parent` is given to `--parent`: a full id one digit short. restic loads a full id
/// straight from its local cache, which still holds a snapshot another process forgot (restic
/// 0.18 then backs up on top of a snapshot that is gone, whose data a prune may remove); any
/// shorter prefix makes restic list the repository's snapshots, so a forgotten parent is
/// refused instead. 63 digits stay unambiguous.
pub fn parent_argument(parent: &str) -> &str {
    if parent.len() == FULL_ID_LEN {
        parent.get(..FULL_ID_LEN - 1).unwrap_or(parent)
    } else {
        parent
    }
}

/// Whether `error` is restic saying that `parent`, given as `--parent`, does not exist in the
/// repository (forgotten or pruned since the caller recorded it), rather than any other failure.
/// restic 0.18 says so in one of two ways, as plain text or inside its `--json` `exit_error`
/// line: an id shorter than restic's full length (as [`parent_argument`] gives it) is looked up
/// by prefix (`no matching ID found for prefix "<id>"`); a full id is loaded directly
/// (`failed to load snapshot <8 hex>: <the backend's not-found words>`). A storage that cannot be reached is never this: that is a
/// retryable failure of its own.
pub fn is_missing_parent(error: &ResticError, parent: &str) -> bool {
    if parent.is_empty() || error.is_retryable() || error.is_cancelled() {
        return false;
    }
    let Some(stderr) = error.stderr() else {
        return false;
    };
    // restic's JSON output escapes the quotes around the prefix; plain text does not.
    let unescaped = stderr.replace("\\\"", "\"");
    let prefix = parent_argument(parent);
    if unescaped.contains(&format!("no matching ID found for prefix \"{prefix}\"")) {
        return true;
    }
    let short = parent.get(..8).unwrap_or(parent);
    let load_failed = format!("failed to load snapshot {short}: ");
    unescaped.lines().any(|line| {
        line.split_once(&load_failed).is_some_and(|(_, cause)| {
            // The local, S3 (and S3-compatible) and REST backends' words for a missing file.
            [
                "no such file or directory",
                "does not exist",
                "NoSuchKey",
                "not found",
            ]
            .iter()
            .any(|words| cause.contains(words))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Repository;

    #[test]
    fn status_and_summary_lines_of_restic_0_14_parse() {
        let status = r#"{"message_type":"status","seconds_elapsed":2,"percent_done":0.5,"total_files":4,"files_done":2,"total_bytes":4096,"bytes_done":2048,"current_files":["/a"]}"#;
        match parse_backup_line(status) {
            Some(BackupMessage::Status(status)) => {
                assert_eq!(
                    (status.bytes_done, status.total_bytes, status.files_done),
                    (2048, 4096, 2)
                );
                assert_eq!(status.current_files, vec!["/a".to_string()]);
            }
            other => panic!("{other:?}"),
        }
        let summary = r#"{"message_type":"summary","files_new":1,"files_changed":0,"files_unmodified":0,"dirs_new":0,"dirs_changed":0,"dirs_unmodified":0,"data_blobs":1,"tree_blobs":1,"data_added":354,"total_files_processed":1,"total_bytes_processed":3,"total_duration":0.215033081,"snapshot_id":"63dfff4a"}"#;
        match parse_backup_line(summary) {
            Some(BackupMessage::Summary(summary)) => {
                assert_eq!(summary.snapshot_id, "63dfff4a");
                assert_eq!(summary.data_added, 354);
                assert_eq!(summary.files_new, 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn summary_of_restic_0_18_carries_what_the_repository_stored() {
        let summary = r#"{"message_type":"summary","files_new":51,"files_changed":0,"files_unmodified":2,"dirs_new":0,"dirs_changed":1,"dirs_unmodified":0,"data_blobs":244,"tree_blobs":2,"data_added":314604600,"data_added_packed":314611154,"total_files_processed":53,"total_bytes_processed":314572955,"total_duration":4.108838784,"backup_start":"2026-12-01T21:43:04.716297286Z","backup_end":"2026-12-01T21:43:08.82513607Z","snapshot_id":"4f5e8616cfdc6f33f1b36608e6e8ef088f8bc7dbda835023bb6de162d10109bf"}"#;
        match parse_backup_line(summary) {
            Some(BackupMessage::Summary(summary)) => {
                assert_eq!(summary.data_added_packed, 314611154);
                assert_eq!(summary.data_added, 314604600);
                assert_eq!(summary.total_files_processed, 53);
                assert_eq!(summary.snapshot_id.len(), 64, "0.18 prints the full id");
            }
            other => panic!("{other:?}"),
        }
    }

    fn status(line: &str) -> BackupStatus {
        match parse_backup_line(line) {
            Some(BackupMessage::Status(status)) => status,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn totals_are_final_only_once_restic_has_finished_scanning() {
        let mut progress = BackupProgress::default();
        // Lines of restic 0.18 backing up 53 files: while scanning there is no estimate of
        // the time left, and the totals are what the scanner has counted so far.
        let scanning = status(
            r#"{"message_type":"status","percent_done":0,"total_files":12,"total_bytes":23}"#,
        );
        assert!(!progress.totals_final(&scanning));
        let scanned = status(
            r#"{"message_type":"status","seconds_remaining":3,"percent_done":0.018,"total_files":53,"files_done":52,"total_bytes":314572955,"bytes_done":5750882,"current_files":["/big"]}"#,
        );
        assert!(progress.totals_final(&scanned));
        // The last second has no estimate either; the scan stays finished.
        let last = status(
            r#"{"message_type":"status","seconds_elapsed":3,"percent_done":1,"total_files":53,"files_done":53,"total_bytes":314572955,"bytes_done":314572955}"#,
        );
        assert!(progress.totals_final(&last));
        assert!(!BackupProgress::default().totals_final(&last));
    }

    #[test]
    fn unknown_and_plain_lines_are_not_errors() {
        assert_eq!(
            parse_backup_line(r#"{"message_type":"verbose_status","action":"new"}"#),
            Some(BackupMessage::Other("verbose_status".into()))
        );
        assert_eq!(parse_backup_line("using parent snapshot 1234"), None);
        assert_eq!(parse_backup_line("{broken"), None);
    }

    #[test]
    fn command_has_one_tag_flag_per_tag_and_ends_with_dot() {
        let command = backup_command(&BackupOptions {
            working_dir: "/v".into(),
            host: Some("node-1".into()),
            tags: vec!["ns=a".into(), "pod=b".into()],
            parent: Some("abcd".into()),
            limit_upload_kib: Some(512),
            ..Default::default()
        })
        .unwrap();
        let args = command.argument_strings();
        assert_eq!(
            args,
            [
                "--json",
                "--host",
                "node-1",
                "--tag",
                "ns=a",
                "--tag",
                "pod=b",
                "--parent",
                "abcd",
                "--limit-upload",
                "512",
                "--",
                "."
            ]
        );
    }

    /// A stand-in restic that prints `stdout`, `stderr` and exits with `code`.
    fn fake_restic(dir: &std::path::Path, stdout: &str, stderr: &str, code: i32) -> Restic {
        use std::os::unix::fs::PermissionsExt as _;
        let script = dir.join("restic");
        std::fs::write(
            &script,
            format!("#!/bin/sh\ncat <<'EOF'\n{stdout}\nEOF\necho '{stderr}' >&2\nexit {code}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Restic::new(script, dir.join("scratch"))
    }

    const SUMMARY: &str = r#"{"message_type":"status","total_bytes":10,"bytes_done":5}
{"message_type":"summary","files_new":2,"snapshot_id":"0badc0de","data_added":10}"#;

    async fn run(restic: &Restic) -> (Result<BackupSummary, ResticError>, Vec<u64>) {
        let mut seen = Vec::new();
        let result = restic
            .backup(
                &Repository::new("/r", "p"),
                &BackupOptions {
                    working_dir: std::env::temp_dir(),
                    ..Default::default()
                },
                &CancellationToken::new(),
                |status| seen.push(status.bytes_done),
            )
            .await;
        (result, seen)
    }

    #[tokio::test]
    async fn incomplete_snapshot_is_returned_with_restics_words() {
        let dir = tempfile::tempdir().unwrap();
        let restic = fake_restic(
            dir.path(),
            SUMMARY,
            "error: open /v/x: permission denied",
            3,
        );
        let (result, seen) = run(&restic).await;
        let summary = result.unwrap();
        assert_eq!(summary.snapshot_id, "0badc0de");
        assert_eq!(
            seen,
            vec![5, 0],
            "the status line, then the summary's counts"
        );
        assert!(summary.unreadable.unwrap().contains("permission denied"));
    }

    #[tokio::test]
    async fn other_failures_stay_errors_even_with_a_summary() {
        let dir = tempfile::tempdir().unwrap();
        let restic = fake_restic(dir.path(), SUMMARY, "Fatal: boom", 1);
        let (result, _) = run(&restic).await;
        assert!(matches!(result, Err(ResticError::Failed { code: 1, .. })));
        let restic = fake_restic(dir.path(), "", "", 0);
        let (result, _) = run(&restic).await;
        assert!(matches!(result, Err(ResticError::MissingOutput { .. })));
    }

    #[test]
    fn a_full_parent_id_is_given_as_a_prefix_so_restic_checks_it_exists() {
        let full = "d8ab32ffeaf87a2edbf959469dee2558921f7ba423b91d22ae5e8be10c7709a7";
        assert_eq!(parent_argument(full), &full[..63]);
        assert_eq!(parent_argument("d8ab32ff"), "d8ab32ff");
        let command = backup_command(&BackupOptions {
            parent: Some(full.into()),
            ..Default::default()
        })
        .unwrap();
        let args = command.argument_strings();
        assert_eq!(args, ["--json", "--parent", &full[..63], "--", "."]);
    }

    #[test]
    fn tag_with_comma_is_refused() {
        let error = backup_command(&BackupOptions {
            tags: vec!["a=b,c".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(error, ResticError::InvalidArgument { .. }));
    }

    fn failed(stderr: &str) -> ResticError {
        ResticError::Failed {
            command: "backup".into(),
            code: 1,
            stderr: stderr.into(),
        }
    }

    /// restic 0.18.0's own words, as the local and S3 backends print them with `--json`.
    #[test]
    fn a_forgotten_parent_is_recognised_in_restic_0_18_words() {
        let full = "d8ab32ffeaf87a2edbf959469dee2558921f7ba423b91d22ae5e8be10c7709a7";
        let s3 = "Load(<snapshot/d8ab32ffea>, 0, 0) failed: The specified key does not exist.\n\
                  {\"message_type\":\"exit_error\",\"code\":1,\"message\":\"failed to load snapshot d8ab32ff: The specified key does not exist.\"}";
        assert!(is_missing_parent(&failed(s3), full));
        let local = "{\"message_type\":\"exit_error\",\"code\":1,\"message\":\"failed to load snapshot d8ab32ff: open /r/snapshots/d8ab32ff: no such file or directory\"}";
        assert!(is_missing_parent(&failed(local), full));
        let prefix = r#"{"message_type":"exit_error","code":1,"message":"no matching ID found for prefix \"d8ab32ff\""}"#;
        assert!(is_missing_parent(&failed(prefix), "d8ab32ff"));
        // A full id is given one digit short; restic names that prefix.
        let given = format!(
            r#"{{"message_type":"exit_error","code":1,"message":"no matching ID found for prefix \"{}\""}}"#,
            parent_argument(full)
        );
        assert!(is_missing_parent(&failed(&given), full));
        assert!(is_missing_parent(
            &failed("no matching ID found for prefix \"d8ab32ff\""),
            "d8ab32ff"
        ));
    }

    #[test]
    fn other_failures_are_not_a_missing_parent() {
        let full = "d8ab32ffeaf87a2edbf959469dee2558921f7ba423b91d22ae5e8be10c7709a7";
        // Another snapshot's id, another cause, an unreachable storage, a lock.
        let other = "failed to load snapshot 0badc0de: open x: no such file or directory";
        assert!(!is_missing_parent(&failed(other), full));
        let corrupt = "failed to load snapshot d8ab32ff: ciphertext verification failed";
        assert!(!is_missing_parent(&failed(corrupt), full));
        assert!(!is_missing_parent(
            &failed("no matching ID found for prefix \"d8ab32ff\""),
            "0badc0de"
        ));
        let unreachable = ResticError::StorageUnreachable {
            command: "backup".into(),
            repository: "s3:x".into(),
            stderr: "failed to load snapshot d8ab32ff: not found; connection refused".into(),
        };
        assert!(!is_missing_parent(&unreachable, full));
        assert!(!is_missing_parent(&failed("Fatal: boom"), full));
        assert!(!is_missing_parent(&failed(other), ""));
    }
}
