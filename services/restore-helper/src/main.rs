//! `stowage-restore-helper`: the init container added to restored pods. Like Velero's restore
//! helper it takes the restore UID and the mount paths of the restored volumes, and waits until
//! the volume agent has written `<mount>/.velero/<restore-uid>` into each; then the pod's own
//! containers start on complete data. When the agent writes the failure marker
//! `<mount>/.velero/<restore-uid>.failed` into any of them instead (the volume's restore failed,
//! was cancelled or abandoned), it exits 1 at once with the marker's reason in its log, so the
//! pod fails now rather than at the timeout. The protocol is `stowage_contract::done_file`.
//! Plain blocking code: it does one thing and exits.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::Parser;
use stowage_contract::done_file;

#[derive(Debug, Parser)]
#[command(name = "stowage-restore-helper", version, about)]
struct Config {
    /// UID of the restore; names the done file `.velero/<restore-uid>` in each volume.
    #[arg(env = "STOWAGE_RESTORE_UID")]
    restore_uid: String,
    /// Mount paths of the volumes being restored (also comma-separated in the env var).
    /// Without any, every directory under `--restores-dir` is one, as Velero's helper does.
    #[arg(env = "STOWAGE_RESTORE_VOLUME_PATHS", value_delimiter = ',')]
    mount_paths: Vec<PathBuf>,
    /// Where Velero mounts the restored volumes (`/restores/<volume>`); read only when no
    /// mount paths are given.
    #[arg(long, env = "STOWAGE_RESTORES_DIR", default_value = done_file::RESTORES_DIR)]
    restores_dir: PathBuf,
    /// Give up after this many seconds (0 = wait forever).
    #[arg(long, env = "STOWAGE_RESTORE_TIMEOUT_SECONDS", default_value_t = 14400)]
    timeout: u64,
    /// How often to look, in milliseconds.
    #[arg(long, env = "STOWAGE_RESTORE_POLL_MILLIS", default_value_t = 1000)]
    poll_millis: u64,
    /// Seconds between "still waiting" log lines.
    #[arg(long, env = "STOWAGE_RESTORE_LOG_EVERY_SECONDS", default_value_t = 10)]
    log_every: u64,
    /// Wait for nothing and never exit: the one container of a data-only restore's pod, which
    /// only keeps the claim mounted while the agent restores into it, until the orchestrator
    /// deletes the pod. The image has no shell or `sleep` of its own.
    #[arg(long, env = "STOWAGE_RESTORE_HOLD")]
    hold: bool,
}

#[derive(Debug, thiserror::Error)]
enum HelperError {
    #[error(transparent)]
    InvalidUid(stowage_contract::ContractError),
    #[error("restore {uid} failed for the volume at {}: {reason}", volume.display())]
    Failed {
        uid: String,
        volume: PathBuf,
        reason: String,
    },
    #[error("reading the failure marker {}", .0)]
    Marker(done_file::MarkerError),
    #[error("no mount paths given and {} cannot be read: {source}", dir.display())]
    RestoresDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("timed out after {seconds}s waiting for restore {uid} of: {}", pending.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    Timeout {
        uid: String,
        seconds: u64,
        pending: Vec<PathBuf>,
    },
}

/// The done files not there yet.
fn pending(markers: &[PathBuf]) -> Vec<PathBuf> {
    markers.iter().filter(|m| !m.exists()).cloned().collect()
}

fn markers(uid: &str, mount_paths: &[PathBuf]) -> Result<Vec<PathBuf>, HelperError> {
    done_file::validate_restore_uid(uid).map_err(HelperError::InvalidUid)?;
    Ok(mount_paths
        .iter()
        .map(|mount| done_file::done_file(mount, uid))
        .collect())
}

/// The first volume whose failure marker for `uid` exists, as the error to exit with.
fn failed(uid: &str, mount_paths: &[PathBuf]) -> Result<(), HelperError> {
    for mount in mount_paths {
        if let Some(reason) = done_file::read_failure(mount, uid).map_err(HelperError::Marker)? {
            return Err(HelperError::Failed {
                uid: uid.to_string(),
                volume: mount.clone(),
                reason,
            });
        }
    }
    Ok(())
}

/// The directories directly under `dir`, sorted; Velero mounts one per restored volume there.
fn volume_dirs(dir: &Path) -> Result<Vec<PathBuf>, HelperError> {
    let entries = std::fs::read_dir(dir).map_err(|source| HelperError::RestoresDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.path().is_dir())
        .map(|entry| entry.path())
        .collect();
    dirs.sort();
    Ok(dirs)
}

fn wait(config: &Config) -> Result<(), HelperError> {
    let mount_paths = if config.mount_paths.is_empty() {
        volume_dirs(&config.restores_dir)?
    } else {
        config.mount_paths.clone()
    };
    let markers = markers(&config.restore_uid, &mount_paths)?;
    let started = Instant::now();
    let timeout = (config.timeout > 0).then(|| Duration::from_secs(config.timeout));
    let mut last_log: Option<Instant> = None;
    loop {
        // Before the done files: a volume that failed fails the pod even if others are done.
        failed(&config.restore_uid, &mount_paths)?;
        let waiting = pending(&markers);
        if waiting.is_empty() {
            println!(
                "restore {} done for all {} volume(s) after {:.1}s",
                config.restore_uid,
                markers.len(),
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            return Err(HelperError::Timeout {
                uid: config.restore_uid.clone(),
                seconds: config.timeout,
                pending: waiting,
            });
        }
        if last_log.is_none_or(|at| at.elapsed() >= Duration::from_secs(config.log_every)) {
            let list: Vec<_> = waiting.iter().map(|p| p.display().to_string()).collect();
            println!(
                "waiting for restore {}: {} of {} volume(s) pending: {}",
                config.restore_uid,
                waiting.len(),
                markers.len(),
                list.join(", ")
            );
            last_log = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(config.poll_millis.max(10)));
    }
}

fn main() -> ExitCode {
    let config = Config::parse();
    if config.hold {
        if let Err(error) = done_file::validate_restore_uid(&config.restore_uid) {
            eprintln!("stowage-restore-helper: {error}");
            return ExitCode::FAILURE;
        }
        eprintln!(
            "stowage-restore-helper: holding the volume for data-only restore {} until the pod is deleted",
            config.restore_uid
        );
        loop {
            std::thread::park();
        }
    }
    match wait(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("stowage-restore-helper: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(uid: &str, paths: Vec<PathBuf>, timeout: u64) -> Config {
        Config {
            restore_uid: uid.into(),
            mount_paths: paths,
            restores_dir: PathBuf::from("/nonexistent"),
            timeout,
            poll_millis: 10,
            log_every: 10,
            hold: false,
        }
    }

    #[test]
    fn returns_once_every_marker_exists() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for dir in [a.path(), b.path()] {
            std::fs::create_dir(dir.join(".velero")).unwrap();
            std::fs::write(dir.join(".velero/r-1"), b"").unwrap();
        }
        wait(&config("r-1", vec![a.path().into(), b.path().into()], 5)).unwrap();
    }

    #[test]
    fn times_out_naming_the_missing_volume() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::create_dir(a.path().join(".velero")).unwrap();
        std::fs::write(a.path().join(".velero/r-1"), b"").unwrap();
        let error = wait(&config("r-1", vec![a.path().into(), b.path().into()], 1)).unwrap_err();
        match error {
            HelperError::Timeout { pending, .. } => {
                assert_eq!(pending, vec![b.path().join(".velero/r-1")])
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn a_marker_written_later_is_seen() {
        let a = tempfile::tempdir().unwrap();
        let dir = a.path().to_path_buf();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::create_dir(dir.join(".velero")).unwrap();
            std::fs::write(dir.join(".velero/r-2"), b"").unwrap();
        });
        wait(&config("r-2", vec![a.path().into()], 30)).unwrap();
        writer.join().unwrap();
    }

    #[test]
    fn without_paths_every_dir_under_the_restores_dir_is_waited_for() {
        let restores = tempfile::tempdir().unwrap();
        for volume in ["data", "logs"] {
            std::fs::create_dir_all(restores.path().join(volume).join(".velero")).unwrap();
        }
        std::fs::write(restores.path().join("data/.velero/r-3"), b"").unwrap();
        std::fs::write(restores.path().join("not-a-volume"), b"").unwrap();
        let mut config = config("r-3", Vec::new(), 1);
        config.restores_dir = restores.path().to_path_buf();
        match wait(&config).unwrap_err() {
            HelperError::Timeout { pending, .. } => {
                assert_eq!(pending, vec![restores.path().join("logs/.velero/r-3")])
            }
            other => panic!("{other}"),
        }
        std::fs::write(restores.path().join("logs/.velero/r-3"), b"").unwrap();
        wait(&config).unwrap();
    }

    #[test]
    fn env_var_paths_are_comma_separated() {
        // SAFETY: no other test in this binary reads or writes this variable.
        unsafe { std::env::set_var("STOWAGE_RESTORE_VOLUME_PATHS", "/restores/a,/restores/b") };
        let parsed = Config::try_parse_from(["stowage-restore-helper", "uid-1"]);
        unsafe { std::env::remove_var("STOWAGE_RESTORE_VOLUME_PATHS") };
        let config = parsed.unwrap();
        assert_eq!(
            config.mount_paths,
            vec![PathBuf::from("/restores/a"), PathBuf::from("/restores/b")]
        );
        assert_eq!(config.restore_uid, "uid-1");
    }

    #[test]
    fn uid_with_path_parts_is_refused() {
        assert!(markers("../x", &[PathBuf::from("/v")]).is_err());
        assert!(markers("a/b", &[PathBuf::from("/v")]).is_err());
        let error = markers("x.failed", &[PathBuf::from("/v")]).unwrap_err();
        assert!(error.to_string().contains("`x.failed`"), "{error}");
    }

    #[test]
    fn a_failure_marker_ends_the_wait_at_once_with_its_reason() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        done_file::write_done(a.path(), "r-1").unwrap();
        done_file::write_failure(b.path(), "r-1", "restic failed: Fatal: no space left").unwrap();
        // Without the marker this would wait the whole hour.
        let error = wait(&config("r-1", vec![a.path().into(), b.path().into()], 3600)).unwrap_err();
        match &error {
            HelperError::Failed { volume, reason, .. } => {
                assert_eq!(volume, b.path());
                assert_eq!(reason, "restic failed: Fatal: no space left");
            }
            other => panic!("{other}"),
        }
        let message = error.to_string();
        assert!(message.contains("restore r-1 failed"), "{message}");
        assert!(message.contains("no space left"), "{message}");
    }

    #[test]
    fn a_failure_marker_written_while_waiting_is_seen() {
        let a = tempfile::tempdir().unwrap();
        let dir = a.path().to_path_buf();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            done_file::write_failure(&dir, "r-4", "the restore was cancelled").unwrap();
        });
        let error = wait(&config("r-4", vec![a.path().into()], 3600)).unwrap_err();
        writer.join().unwrap();
        assert!(
            matches!(&error, HelperError::Failed { reason, .. } if reason == "the restore was cancelled"),
            "{error}"
        );
    }

    #[test]
    fn another_restores_failure_marker_is_not_this_ones() {
        let a = tempfile::tempdir().unwrap();
        done_file::write_failure(a.path(), "r-old", "an earlier restore failed").unwrap();
        done_file::write_done(a.path(), "r-5").unwrap();
        wait(&config("r-5", vec![a.path().into()], 5)).unwrap();
    }
}
