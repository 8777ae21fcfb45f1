//! restic's own locks, the safety net under the repo-manager's leases: listing them, reading
//! who holds one (`cat lock`), deciding whether it is stale, and `restic unlock`.

use chrono::{DateTime, FixedOffset, Utc};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::{
    command::{Repository, Restic, ResticCommand},
    error::ResticError,
};

/// A lock file's content, as `restic cat lock <id>` prints it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct LockInfo {
    pub time: DateTime<FixedOffset>,
    #[serde(default)]
    pub exclusive: bool,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub pid: i64,
}

/// A lock and its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    pub id: String,
    pub info: LockInfo,
}

/// restic refreshes a live lock every 5 minutes; one untouched for this long belongs to a
/// process that is gone, wherever it ran (restic's own rule for locks of other hosts).
/// How long reading one lock may take before it is taken as removed.
const CAT_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub const OTHER_HOST_STALE_AFTER: chrono::Duration = chrono::Duration::minutes(30);

impl LockInfo {
    /// Stale: older than `min_age` and its holder is gone. On this host that is asked of the
    /// process table (`pid_alive`); a lock from another host cannot be checked that way, so it
    /// must also be older than [`OTHER_HOST_STALE_AFTER`].
    pub fn is_stale(
        &self,
        now: DateTime<Utc>,
        min_age: chrono::Duration,
        this_host: &str,
        pid_alive: impl Fn(i64) -> bool,
    ) -> bool {
        let age = now.signed_duration_since(self.time.with_timezone(&Utc));
        if age < min_age {
            return false;
        }
        if self.hostname == this_host {
            !pid_alive(self.pid)
        } else {
            age >= OTHER_HOST_STALE_AFTER
        }
    }
}

/// Whether a process with `pid` exists on this machine (signal 0 probes without signalling).
pub fn process_alive(pid: i64) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) with signal 0 only checks for existence and permission.
    let result = unsafe { libc::kill(pid, 0) };
    result == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// This machine's host name, as restic writes it into its locks: restic takes Go's
/// `os.Hostname()`, which on Linux reads `/proc/sys/kernel/hostname` and falls back to
/// `uname(2)` (in a pod both give the pod's name, from its UTS namespace).
pub fn hostname() -> String {
    if let Ok(name) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        return name.trim_end_matches('\n').to_string();
    }
    // SAFETY: uname fills the zeroed struct; nodename is NUL-terminated by the kernel.
    unsafe {
        let mut name: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut name) != 0 {
            return String::new();
        }
        std::ffi::CStr::from_ptr(name.nodename.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

impl Restic {
    /// Ids of the lock files in the repository (`restic list locks --no-lock`).
    pub async fn list_locks(
        &self,
        repository: &Repository,
        cancel: &CancellationToken,
    ) -> Result<Vec<String>, ResticError> {
        let command = ResticCommand::new("list").args(["locks", "--no-lock"]);
        let output = self.run(repository, &command, cancel).await?;
        Ok(output
            .stdout
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Who holds lock `id` (`restic cat lock <id> --no-lock`).
    pub async fn cat_lock(
        &self,
        repository: &Repository,
        id: &str,
        cancel: &CancellationToken,
    ) -> Result<LockInfo, ResticError> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ResticError::InvalidArgument {
                command: "cat lock".into(),
                reason: format!("`{id}` is not a lock id"),
            });
        }
        let command = ResticCommand::new("cat").args(["lock", id, "--no-lock"]);
        self.run_json(repository, &command, cancel).await
    }

    /// Every lock with its holder. A lock removed between listing and reading is skipped.
    pub async fn locks(
        &self,
        repository: &Repository,
        cancel: &CancellationToken,
    ) -> Result<Vec<Lock>, ResticError> {
        let mut locks = Vec::new();
        for id in self.list_locks(repository, cancel).await? {
            // restic retries a missing file for about a minute; a lock that vanished between
            // listing and reading (its holder finished) must not hold up maintenance that long.
            // A timed-out read drops the run, which kills restic.
            match tokio::time::timeout(CAT_LOCK_TIMEOUT, self.cat_lock(repository, &id, cancel))
                .await
            {
                Ok(Ok(info)) => locks.push(Lock { id, info }),
                Ok(Err(error)) if error.is_cancelled() => return Err(error),
                Ok(Err(error)) => {
                    tracing::debug!(lock = %id, %error, "lock vanished while reading")
                }
                Err(_) => tracing::debug!(lock = %id, "lock unreadable in time, probably removed"),
            }
        }
        Ok(locks)
    }

    /// `restic unlock`: removes the locks restic itself judges stale (holder process gone on
    /// this host, or not refreshed for 30 minutes); never `--remove-all`.
    pub async fn unlock(
        &self,
        repository: &Repository,
        cancel: &CancellationToken,
    ) -> Result<(), ResticError> {
        self.run(repository, &ResticCommand::new("unlock"), cancel)
            .await
            .map(drop)
    }

    /// Removes stale locks (see [`LockInfo::is_stale`]) and returns the ids judged stale. Runs
    /// `restic unlock` only when there is one, so a live lock is never touched by us, and
    /// restic's own check protects it once more.
    pub async fn remove_stale_locks(
        &self,
        repository: &Repository,
        min_age: chrono::Duration,
        cancel: &CancellationToken,
    ) -> Result<Vec<String>, ResticError> {
        let locks = self.locks(repository, cancel).await?;
        self.remove_stale_locks_among(repository, &locks, min_age, cancel)
            .await
    }

    /// [`Restic::remove_stale_locks`] over locks the caller already listed (and may have
    /// judged by rules of its own first).
    pub async fn remove_stale_locks_among(
        &self,
        repository: &Repository,
        locks: &[Lock],
        min_age: chrono::Duration,
        cancel: &CancellationToken,
    ) -> Result<Vec<String>, ResticError> {
        let host = hostname();
        let now = Utc::now();
        let stale: Vec<String> = locks
            .iter()
            .filter(|lock| lock.info.is_stale(now, min_age, &host, process_alive))
            .map(|lock| lock.id.clone())
            .collect();
        if !stale.is_empty() {
            tracing::info!(locks = ?stale, "removing stale restic locks");
            self.unlock(repository, cancel).await?;
        }
        Ok(stale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(age_seconds: i64, host: &str, pid: i64) -> (LockInfo, DateTime<Utc>) {
        let now: DateTime<Utc> = "2026-01-01T12:00:00Z".parse().unwrap();
        let time = (now - chrono::Duration::seconds(age_seconds)).fixed_offset();
        (
            LockInfo {
                time,
                exclusive: false,
                hostname: host.into(),
                username: "root".into(),
                pid,
            },
            now,
        )
    }

    #[test]
    fn lock_json_parses() {
        let info: LockInfo = serde_json::from_str(
            r#"{"time":"2026-11-24T19:36:07.245269661Z","exclusive":false,"hostname":"vm","username":"root","pid":18518}"#,
        )
        .unwrap();
        assert_eq!(info.pid, 18518);
        assert_eq!(info.hostname, "vm");
    }

    #[test]
    fn local_lock_is_stale_only_when_old_and_holder_gone() {
        let min_age = chrono::Duration::seconds(60);
        let (old, now) = lock(120, "here", 42);
        assert!(old.is_stale(now, min_age, "here", |_| false));
        assert!(
            !old.is_stale(now, min_age, "here", |pid| pid == 42),
            "live holder"
        );
        let (young, now) = lock(10, "here", 42);
        assert!(
            !young.is_stale(now, min_age, "here", |_| false),
            "too young"
        );
    }

    #[test]
    fn other_host_lock_needs_restic_refresh_window() {
        let min_age = chrono::Duration::seconds(60);
        let (recent, now) = lock(600, "elsewhere", 42);
        // Our process table says nothing about another host's pid 42.
        assert!(!recent.is_stale(now, min_age, "here", |_| false));
        let (old, now) = lock(31 * 60, "elsewhere", 42);
        assert!(old.is_stale(now, min_age, "here", |_| true));
    }

    #[test]
    fn this_process_is_alive_and_pid_zero_is_not() {
        assert!(process_alive(std::process::id() as i64));
        assert!(!process_alive(0));
        assert!(!process_alive(-5));
    }
}
