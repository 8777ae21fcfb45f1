//! `stowage-restore-helper`: the init container added to restored pods. Like Velero's restore
//! helper it takes the restore UID and the mount paths of the restored volumes, and waits until
//! the volume agent has written `<mount>/.velero/<restore-uid>` into each; then the pod's own
//! containers start on complete data. Plain blocking code: it does one thing and exits.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "stowage-restore-helper", version, about)]
struct Config {
    /// UID of the restore; names the done file `.velero/<restore-uid>` in each volume.
    #[arg(env = "STOWAGE_RESTORE_UID")]
    restore_uid: String,
    /// Mount paths of the volumes being restored (as in Velero's restore helper).
    #[arg(
        env = "STOWAGE_RESTORE_VOLUME_PATHS",
        value_delimiter = ',',
        required = true
    )]
    mount_paths: Vec<PathBuf>,
    /// Give up after this many seconds (0 = wait forever).
    #[arg(long, env = "STOWAGE_RESTORE_TIMEOUT_SECONDS", default_value_t = 14400)]
    timeout: u64,
    /// How often to look, in milliseconds.
    #[arg(long, env = "STOWAGE_RESTORE_POLL_MILLIS", default_value_t = 1000)]
    poll_millis: u64,
    /// Seconds between "still waiting" log lines.
    #[arg(long, env = "STOWAGE_RESTORE_LOG_EVERY_SECONDS", default_value_t = 10)]
    log_every: u64,
}

#[derive(Debug, thiserror::Error)]
enum HelperError {
    #[error("restore uid `{0}` is not a single path component")]
    InvalidUid(String),
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
    if uid.is_empty() || uid.contains(['/', '\0']) || uid.contains("..") {
        return Err(HelperError::InvalidUid(uid.to_string()));
    }
    Ok(mount_paths
        .iter()
        .map(|mount| Path::new(mount).join(".velero").join(uid))
        .collect())
}

fn wait(config: &Config) -> Result<(), HelperError> {
    let markers = markers(&config.restore_uid, &config.mount_paths)?;
    let started = Instant::now();
    let timeout = (config.timeout > 0).then(|| Duration::from_secs(config.timeout));
    let mut last_log: Option<Instant> = None;
    loop {
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
            timeout,
            poll_millis: 10,
            log_every: 10,
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
    fn uid_with_path_parts_is_refused() {
        assert!(markers("../x", &[PathBuf::from("/v")]).is_err());
        assert!(markers("a/b", &[PathBuf::from("/v")]).is_err());
    }
}
