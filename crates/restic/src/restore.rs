//! `restic restore --json --sparse <snapshot> --target <dir>`: options, the status and summary
//! lines restic (0.17 and later) prints while restoring, and the run that turns status lines
//! into progress callbacks, so a restore needs no second restic process for its totals.

use std::path::PathBuf;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::{
    command::{Repository, Restic, ResticCommand},
    error::ResticError,
};

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Snapshot id (full or short) or `latest`.
    pub snapshot: String,
    pub target: PathBuf,
    pub includes: Vec<String>,
    pub excludes: Vec<String>,
    /// `--verify`: read every restored file back and compare.
    pub verify: bool,
    /// `--overwrite`: what restic does with a file already in the target; `None` leaves
    /// restic's default (`always`).
    pub overwrite: Option<Overwrite>,
    /// `--delete`: remove files from the target that are not in the snapshot, so the target
    /// ends identical to it. Paths left out by `excludes` (or not matched by `includes`) are
    /// not touched, as restic 0.18 only deletes within what it restores.
    pub delete: bool,
}

/// restic 0.18's `restore --overwrite` behaviours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overwrite {
    /// Rewrite every file (restic still skips the ones whose content it finds unchanged).
    Always,
    /// Rewrite a file only when its size, mtime or content differs.
    IfChanged,
    /// Rewrite a file only when the snapshot's copy is newer (mtime) than the one in place.
    IfNewer,
    /// Never rewrite a file that exists.
    Never,
}

impl Overwrite {
    /// The value `--overwrite` takes.
    pub fn as_arg(self) -> &'static str {
        match self {
            Overwrite::Always => "always",
            Overwrite::IfChanged => "if-changed",
            Overwrite::IfNewer => "if-newer",
            Overwrite::Never => "never",
        }
    }
}

/// A `message_type: status` or `summary` line of `restic restore --json`; both carry the same
/// counters. restic counts every node it restores as a file: regular files, directories
/// (except the snapshot root), symlinks and other special files. Files it found already
/// restored (same size and mtime) are `files_skipped`/`bytes_skipped` and are not part of
/// `total_files`/`total_bytes`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct RestoreStatus {
    pub seconds_elapsed: u64,
    pub percent_done: f64,
    pub total_files: u64,
    pub files_restored: u64,
    pub files_skipped: u64,
    pub files_deleted: u64,
    pub total_bytes: u64,
    pub bytes_restored: u64,
    pub bytes_skipped: u64,
}

impl RestoreStatus {
    /// Bytes the snapshot (or the selected part of it) holds: restored and skipped.
    pub fn bytes_total(&self) -> u64 {
        self.total_bytes + self.bytes_skipped
    }

    /// Bytes already in place: written or found unchanged.
    pub fn bytes_done(&self) -> u64 {
        self.bytes_restored + self.bytes_skipped
    }

    /// Whether restic's totals are final. restic first walks the snapshot's trees, counting
    /// what it will restore as it goes, and only then writes file contents and restores the
    /// directories' and symlinks' metadata; so once anything is restored the walk is over and
    /// the totals no longer grow. Before that they are only what the walk has seen so far.
    pub fn totals_final(&self) -> bool {
        self.files_restored > 0 || self.bytes_restored > 0
    }
}

/// One parsed stdout line of `restic restore --json`.
#[derive(Clone, Debug, PartialEq)]
pub enum RestoreMessage {
    Status(RestoreStatus),
    Summary(RestoreStatus),
    /// Errors, verbose lines and message types newer restic versions add.
    Other(String),
}

#[derive(Deserialize)]
struct Tagged {
    message_type: String,
}

/// Parses one line; `None` for lines that are not JSON.
pub fn parse_restore_line(line: &str) -> Option<RestoreMessage> {
    let line = line.trim();
    if !line.starts_with('{') {
        return None;
    }
    let tagged: Tagged = serde_json::from_str(line).ok()?;
    match tagged.message_type.as_str() {
        "status" => serde_json::from_str(line).ok().map(RestoreMessage::Status),
        "summary" => serde_json::from_str(line).ok().map(RestoreMessage::Summary),
        other => Some(RestoreMessage::Other(other.to_string())),
    }
}

impl Restic {
    /// Runs `restic restore --json --sparse`, calling `on_status` for every status line, and
    /// returns the summary line.
    pub async fn restore(
        &self,
        repository: &Repository,
        options: &RestoreOptions,
        cancel: &CancellationToken,
        on_status: impl FnMut(&RestoreStatus) + Send,
    ) -> Result<RestoreStatus, ResticError> {
        let command = restore_command(options)?;
        self.run_restore(repository, &command, cancel, on_status)
            .await
    }

    /// Runs a restore command built by [`restore_command`] (possibly given a working
    /// directory), calling `on_status` for every status line, and returns the summary line.
    pub async fn run_restore(
        &self,
        repository: &Repository,
        command: &ResticCommand,
        cancel: &CancellationToken,
        mut on_status: impl FnMut(&RestoreStatus) + Send,
    ) -> Result<RestoreStatus, ResticError> {
        let mut summary = None;
        self.run_streaming(
            repository,
            command,
            cancel,
            |line| match parse_restore_line(line) {
                Some(RestoreMessage::Status(status)) => on_status(&status),
                Some(RestoreMessage::Summary(found)) => summary = Some(found),
                Some(RestoreMessage::Other(kind)) => {
                    tracing::debug!(kind, "restic restore message")
                }
                None => tracing::debug!(line, "restic restore output"),
            },
        )
        .await?;
        summary.ok_or_else(|| ResticError::MissingOutput {
            command: "restore".into(),
            reason: "restic exited 0 without a summary line".into(),
        })
    }
}

/// The argv for a restore. Always `--json` (progress and the summary come from restic's own
/// lines) and `--sparse` (runs of zeros are left as holes, so a sparse file restores sparse
/// instead of taking its full size on the node's disk).
pub fn restore_command(options: &RestoreOptions) -> Result<ResticCommand, ResticError> {
    if options.snapshot.is_empty() || options.snapshot.starts_with('-') {
        return Err(ResticError::InvalidArgument {
            command: "restore".into(),
            reason: format!("`{}` is not a snapshot id", options.snapshot),
        });
    }
    // The id cannot read as a flag (checked above); no `--` before it, since the runner may
    // append options of its own (`--retry-lock`) after ours.
    let mut command = ResticCommand::new("restore")
        .json()
        .arg(&options.snapshot)
        .arg("--sparse")
        .arg("--target")
        .arg(&options.target);
    for include in &options.includes {
        command = command.arg("--include").arg(include);
    }
    for exclude in &options.excludes {
        command = command.arg("--exclude").arg(exclude);
    }
    if options.verify {
        command = command.arg("--verify");
    }
    if let Some(overwrite) = options.overwrite {
        command = command.arg("--overwrite").arg(overwrite.as_arg());
    }
    if options.delete {
        command = command.arg("--delete");
    }
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_that_looks_like_a_flag_is_refused() {
        let error = restore_command(&RestoreOptions {
            snapshot: "--target=/".into(),
            target: "/x".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(error, ResticError::InvalidArgument { .. }));
        let command = restore_command(&RestoreOptions {
            snapshot: "abcd1234".into(),
            target: "/x".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            command.argument_strings(),
            ["--json", "abcd1234", "--sparse", "--target", "/x"]
        );
    }

    #[test]
    fn overwrite_and_delete_become_restic_flags() {
        let command = restore_command(&RestoreOptions {
            snapshot: "abcd1234".into(),
            target: ".".into(),
            excludes: vec!["*.tmp".into()],
            overwrite: Some(Overwrite::IfNewer),
            delete: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            command.argument_strings(),
            [
                "--json",
                "abcd1234",
                "--sparse",
                "--target",
                ".",
                "--exclude",
                "*.tmp",
                "--overwrite",
                "if-newer",
                "--delete"
            ]
        );
    }

    // Lines as restic 0.18.0 prints them: a first restore of 53 files in 2 directories
    // (plus a symlink), and the same restore again over the restored tree.
    const STATUS_0_18: &str = r#"{"message_type":"status","percent_done":0.061728539250934654,"total_files":55,"files_restored":52,"total_bytes":314572955,"bytes_restored":19418129}"#;
    const SUMMARY_0_18: &str = r#"{"message_type":"summary","total_files":55,"files_restored":55,"total_bytes":314572955,"bytes_restored":314572955}"#;
    const WALKING_0_18: &str =
        r#"{"message_type":"status","percent_done":0,"files_skipped":1,"bytes_skipped":6}"#;
    const SKIPPED_SUMMARY_0_18: &str = r#"{"message_type":"summary","total_files":2,"files_restored":2,"files_skipped":53,"bytes_skipped":314572955}"#;

    #[test]
    fn status_and_summary_lines_of_restic_0_18_parse() {
        match parse_restore_line(STATUS_0_18) {
            Some(RestoreMessage::Status(status)) => {
                assert_eq!(status.total_files, 55);
                assert_eq!(status.files_restored, 52);
                assert_eq!(
                    (status.bytes_done(), status.bytes_total()),
                    (19418129, 314572955)
                );
                assert!(status.totals_final());
            }
            other => panic!("{other:?}"),
        }
        match parse_restore_line(SUMMARY_0_18) {
            Some(RestoreMessage::Summary(summary)) => {
                assert_eq!(summary.bytes_done(), summary.bytes_total());
                assert_eq!(summary.files_restored, 55);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn skipped_files_count_as_done_and_as_part_of_the_total() {
        let Some(RestoreMessage::Summary(summary)) = parse_restore_line(SKIPPED_SUMMARY_0_18)
        else {
            panic!("summary expected");
        };
        assert_eq!(summary.bytes_total(), 314572955);
        assert_eq!(summary.bytes_done(), 314572955);
        assert_eq!(summary.files_skipped, 53);
    }

    #[test]
    fn totals_seen_while_restic_still_walks_the_snapshot_are_not_final() {
        let Some(RestoreMessage::Status(walking)) = parse_restore_line(WALKING_0_18) else {
            panic!("status expected");
        };
        assert!(!walking.totals_final());
        assert_eq!(walking.bytes_total(), 6, "only what the walk has seen yet");
    }

    #[test]
    fn unknown_and_plain_lines_are_not_errors() {
        assert_eq!(
            parse_restore_line(
                r#"{"message_type":"verbose_status","action":"restored","item":"/a","size":6}"#
            ),
            Some(RestoreMessage::Other("verbose_status".into()))
        );
        assert_eq!(parse_restore_line("restoring snapshot 1234"), None);
        assert_eq!(parse_restore_line("{broken"), None);
    }

    /// A stand-in restic that prints `stdout` and exits with `code`.
    fn fake_restic(dir: &std::path::Path, stdout: &str, code: i32) -> Restic {
        use std::os::unix::fs::PermissionsExt as _;
        let script = dir.join("restic");
        std::fs::write(
            &script,
            format!("#!/bin/sh\ncat <<'EOF'\n{stdout}\nEOF\nexit {code}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Restic::new(script, dir.join("scratch"))
    }

    async fn run(restic: &Restic) -> (Result<RestoreStatus, ResticError>, Vec<u64>) {
        let mut seen = Vec::new();
        let result = restic
            .restore(
                &Repository::new("/r", "p"),
                &RestoreOptions {
                    snapshot: "0badc0de".into(),
                    target: std::env::temp_dir(),
                    ..Default::default()
                },
                &CancellationToken::new(),
                |status| seen.push(status.bytes_restored),
            )
            .await;
        (result, seen)
    }

    #[tokio::test]
    async fn status_lines_reach_the_callback_and_the_summary_is_returned() {
        let dir = tempfile::tempdir().unwrap();
        let restic = fake_restic(
            dir.path(),
            &format!("{WALKING_0_18}\n{STATUS_0_18}\nnot json\n{SUMMARY_0_18}"),
            0,
        );
        let (result, seen) = run(&restic).await;
        assert_eq!(seen, vec![0, 19418129]);
        assert_eq!(result.unwrap().files_restored, 55);
    }

    #[tokio::test]
    async fn no_summary_or_a_failure_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let restic = fake_restic(dir.path(), STATUS_0_18, 0);
        let (result, _) = run(&restic).await;
        assert!(
            matches!(result, Err(ResticError::MissingOutput { .. })),
            "{result:?}"
        );
        let restic = fake_restic(dir.path(), SUMMARY_0_18, 1);
        let (result, _) = run(&restic).await;
        assert!(
            matches!(result, Err(ResticError::Failed { code: 1, .. })),
            "{result:?}"
        );
    }
}
