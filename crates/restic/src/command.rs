//! The runner every restic command goes through: builds the argv (never a shell), starts restic
//! with an allow-listed environment (see [`crate::environment`]) and hands it the repository
//! and password through that environment and a 0600 password file in a per-run scratch
//! directory, streams stdout line by line, keeps stderr for the error, and on cancel interrupts
//! the process group (restic then removes its lock) and kills it after a grace period; a
//! dropped future kills it at once. The child is reaped with wait4(2), which also gives its
//! peak resident memory.

use std::{
    collections::BTreeMap,
    ffi::{OsStr, OsString},
    fmt,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio_util::sync::CancellationToken;

use crate::{
    environment::{restic_environment, settable_for_restic},
    error::{ResticError, STDERR_LIMIT, classify_exit},
    outage::{OutageClock, StorageRetry, parse_retry_line, status_progress},
};

/// How to run restic on this machine: which binary, the private directory where per-run
/// password files and the shared restic cache live, and settings every run gets.
#[derive(Clone, Debug)]
pub struct Restic {
    binary: PathBuf,
    scratch_dir: PathBuf,
    stop_grace: Duration,
    /// Set for every run, e.g. `GOMEMLIMIT`; values are not secret.
    env: BTreeMap<String, String>,
    /// `--retry-lock` of every command that opens a repository.
    retry_lock: Option<Duration>,
    /// Where each run's peak RSS is recorded, when someone asked (see [`PeakRss`]).
    peak_rss: Option<PeakRss>,
    /// How long restic may retry storage requests without progress before it is stopped.
    storage_outage_timeout: Option<Duration>,
    /// Told of every retry restic announces, when someone asked.
    retry_observer: Option<RetryObserver>,
}

/// Told of each storage retry restic announces on stderr while it runs
/// ([`Restic::reporting_retries`]).
#[derive(Clone)]
pub struct RetryObserver(Arc<dyn Fn(&StorageRetry) + Send + Sync>);

impl fmt::Debug for RetryObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RetryObserver")
    }
}

/// The highest peak resident set size of the restic runs made through the [`Restic`] it was
/// given to ([`Restic::measuring`]): how much memory one operation's restic needed.
#[derive(Clone, Debug, Default)]
pub struct PeakRss(Arc<AtomicU64>);

impl PeakRss {
    pub fn new() -> Self {
        PeakRss::default()
    }

    /// The largest peak of the runs finished so far, in bytes; 0 before the first.
    pub fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn record(&self, bytes: u64) {
        self.0.fetch_max(bytes, Ordering::Relaxed);
    }
}

/// How long a cancelled restic gets to remove its lock after SIGINT before it is killed.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(5);

/// Everything needed to open one repository. `Debug` never shows the password or the values
/// of `env` (they carry object-store credentials).
#[derive(Clone)]
pub struct Repository {
    pub url: String,
    password: String,
    pub env: BTreeMap<String, String>,
}

impl Repository {
    pub fn new(url: impl Into<String>, password: impl Into<String>) -> Self {
        Repository {
            url: url.into(),
            password: password.into(),
            env: BTreeMap::new(),
        }
    }

    /// Adds an environment variable for restic (e.g. `AWS_ACCESS_KEY_ID`).
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    pub fn password(&self) -> &str {
        &self.password
    }
}

impl fmt::Debug for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("url", &self.url)
            .field("password", &"<redacted>")
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// One restic invocation: the subcommand, its arguments and the working directory.
#[derive(Clone, Debug)]
pub struct ResticCommand {
    name: String,
    args: Vec<OsString>,
    current_dir: Option<PathBuf>,
}

impl ResticCommand {
    /// `restic <name>`; `name` is the subcommand (`backup`, `snapshots`, `key`, …).
    pub fn new(name: impl Into<String>) -> Self {
        ResticCommand {
            name: name.into(),
            args: Vec::new(),
            current_dir: None,
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = A>, A: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Adds `--json` so stdout is machine-readable.
    pub fn json(self) -> Self {
        self.arg("--json")
    }

    /// Runs restic in `dir` (a backup of `.` there stores the files at the snapshot root).
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn arguments(&self) -> &[OsString] {
        &self.args
    }

    /// The arguments as text, as the unit tests compare them.
    #[cfg(test)]
    pub(crate) fn argument_strings(&self) -> Vec<String> {
        self.args
            .iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect()
    }
}

/// What a finished command printed.
#[derive(Clone, Debug, Default)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

impl Restic {
    pub fn new(binary: impl Into<PathBuf>, scratch_dir: impl Into<PathBuf>) -> Self {
        Restic {
            binary: binary.into(),
            scratch_dir: scratch_dir.into(),
            stop_grace: DEFAULT_STOP_GRACE,
            env: BTreeMap::new(),
            retry_lock: None,
            peak_rss: None,
            storage_outage_timeout: None,
            retry_observer: None,
        }
    }

    /// Stops a run whose restic has been retrying storage requests for longer than `timeout`
    /// with no progress in between (see [`crate::outage`]); it then fails with
    /// [`ResticError::StorageOutage`]. `None` leaves restic to its own limit (15 minutes per
    /// request in restic 0.18).
    pub fn with_storage_outage_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.storage_outage_timeout = timeout;
        self
    }

    pub fn storage_outage_timeout(&self) -> Option<Duration> {
        self.storage_outage_timeout
    }

    /// This runner, also calling `observer` with every storage retry restic announces.
    pub fn reporting_retries(
        &self,
        observer: impl Fn(&StorageRetry) + Send + Sync + 'static,
    ) -> Restic {
        Restic {
            retry_observer: Some(RetryObserver(Arc::new(observer))),
            ..self.clone()
        }
    }

    /// Sets environment variable `key` for every run (e.g. `GOMEMLIMIT`); it wins over the
    /// service's own environment. `STOWAGE_*` names are refused: they are never restic's.
    pub fn with_env(
        mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Self, ResticError> {
        let key = key.into();
        if !settable_for_restic(OsStr::new(&key)) {
            return Err(ResticError::InvalidArgument {
                command: String::new(),
                reason: format!("`{key}` cannot be set for restic"),
            });
        }
        self.env.insert(key, value.into());
        Ok(self)
    }

    /// restic waits up to `wait` for a lock another process holds (`--retry-lock`) before it
    /// fails with [`ResticError::Locked`]; `None` or zero fails at once.
    pub fn with_retry_lock(mut self, wait: Option<Duration>) -> Self {
        self.retry_lock = wait.filter(|wait| !wait.is_zero());
        self
    }

    pub fn retry_lock(&self) -> Option<Duration> {
        self.retry_lock
    }

    /// This runner, recording every run's peak RSS into `peak` as well.
    pub fn measuring(&self, peak: &PeakRss) -> Restic {
        Restic {
            peak_rss: Some(peak.clone()),
            ..self.clone()
        }
    }

    /// Time between SIGINT and SIGKILL when a run is cancelled.
    pub fn with_stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn scratch_dir(&self) -> &Path {
        &self.scratch_dir
    }

    /// `restic version`, e.g. `restic 0.18.0 compiled with go1.24.4 on linux/amd64`; see
    /// [`Restic::supported_version`] for the check the services make at start.
    pub async fn version(&self, cancel: &CancellationToken) -> Result<String, ResticError> {
        let output = self
            .execute(None, &ResticCommand::new("version"), cancel, |line| {
                let _ = line;
            })
            .await?;
        Ok(output.stdout.trim().to_string())
    }

    /// Runs `command` against `repository` and returns everything it printed.
    pub async fn run(
        &self,
        repository: &Repository,
        command: &ResticCommand,
        cancel: &CancellationToken,
    ) -> Result<Output, ResticError> {
        self.execute(Some(repository), command, cancel, |_| {})
            .await
    }

    /// Runs `command`, calling `on_line` with each stdout line as it arrives (for `--json`
    /// progress). The returned [`Output::stdout`] is empty: lines are not kept.
    pub async fn run_streaming(
        &self,
        repository: &Repository,
        command: &ResticCommand,
        cancel: &CancellationToken,
        on_line: impl FnMut(&str) + Send,
    ) -> Result<Output, ResticError> {
        self.execute_inner(Some(repository), command, cancel, on_line, false)
            .await
    }

    /// Runs `command`, handing each stdout line to `sink` as it arrives and waiting for the
    /// sink before reading the next one, so a slow consumer slows restic down (its stdout
    /// pipe fills) instead of lines piling up in memory. Lines are not kept.
    pub async fn run_lines(
        &self,
        repository: &Repository,
        command: &ResticCommand,
        cancel: &CancellationToken,
        sink: impl LineSink,
    ) -> Result<Output, ResticError> {
        self.execute_sink(Some(repository), command, cancel, sink, false)
            .await
    }

    /// Runs `command` (add `--json` yourself) and parses its whole stdout as one JSON value.
    pub async fn run_json<T: DeserializeOwned>(
        &self,
        repository: &Repository,
        command: &ResticCommand,
        cancel: &CancellationToken,
    ) -> Result<T, ResticError> {
        let output = self.run(repository, command, cancel).await?;
        parse_json(command.name(), &output.stdout)
    }

    async fn execute(
        &self,
        repository: Option<&Repository>,
        command: &ResticCommand,
        cancel: &CancellationToken,
        on_line: impl FnMut(&str) + Send,
    ) -> Result<Output, ResticError> {
        self.execute_inner(repository, command, cancel, on_line, true)
            .await
    }

    async fn execute_inner(
        &self,
        repository: Option<&Repository>,
        command: &ResticCommand,
        cancel: &CancellationToken,
        on_line: impl FnMut(&str) + Send,
        keep_stdout: bool,
    ) -> Result<Output, ResticError> {
        self.execute_sink(repository, command, cancel, EachLine(on_line), keep_stdout)
            .await
    }

    #[tracing::instrument(
        name = "restic",
        skip_all,
        fields(
            restic.command = %command.name,
            restic.repository = repository.map(|r| r.url.as_str()).unwrap_or(""),
            restic.exit_code = tracing::field::Empty,
            restic.peak_rss_bytes = tracing::field::Empty,
        )
    )]
    async fn execute_sink(
        &self,
        repository: Option<&Repository>,
        command: &ResticCommand,
        cancel: &CancellationToken,
        mut sink: impl LineSink,
        keep_stdout: bool,
    ) -> Result<Output, ResticError> {
        if cancel.is_cancelled() {
            return Err(ResticError::Cancelled {
                command: command.name.clone(),
            });
        }
        let run_dir = self.prepare_run_dir()?;
        // std's Command, not tokio's: the child is reaped by wait4 below (for its rusage), and
        // tokio would reap it a second time, possibly a reused pid.
        use std::os::unix::process::CommandExt as _;
        let mut process = std::process::Command::new(&self.binary);
        process
            .arg(&command.name)
            .args(&command.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a cancel reaches anything restic starts (rclone, ssh).
            .process_group(0)
            // Only what restic needs from the service's environment; never its secrets.
            .env_clear()
            .envs(restic_environment(std::env::vars_os()));
        for (key, value) in &self.env {
            process.env(key, value);
        }
        if let Some(dir) = &command.current_dir {
            process.current_dir(dir);
        }
        if let Some(repository) = repository {
            for (key, value) in &repository.env {
                if settable_for_restic(OsStr::new(key)) {
                    process.env(key, value);
                } else {
                    tracing::warn!(variable = %key, "not passing a stowage setting to restic");
                }
            }
            let password_file = write_password_file(run_dir.path(), repository.password())?;
            process
                .env("RESTIC_REPOSITORY", &repository.url)
                .env("RESTIC_PASSWORD_FILE", password_file);
            if let Some(wait) = self.retry_lock {
                process.arg(format!("--retry-lock={}s", wait.as_secs().max(1)));
            }
        }
        process
            .env("RESTIC_CACHE_DIR", self.scratch_dir.join("cache"))
            // With --json restic prints 60 status lines a second by default; 2 is plenty.
            .env("RESTIC_PROGRESS_FPS", "2");
        tracing::debug!(args = ?command.args, "running restic");

        let mut child = process.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound && command.current_dir_exists() {
                ResticError::BinaryMissing {
                    binary: self.binary.clone(),
                    source,
                }
            } else {
                ResticError::Spawn {
                    binary: self.binary.clone(),
                    command: command.name.clone(),
                    source,
                }
            }
        })?;
        let pid = child.id() as i32;
        let io_error = |source| ResticError::Io {
            command: command.name.clone(),
            source,
        };
        let mut group = ProcessGroupGuard {
            pgid: Some(pid),
            reaped: Arc::new(Mutex::new(false)),
            reaping: std::sync::atomic::AtomicBool::new(false),
        };
        let stdout = child
            .stdout
            .take()
            .map(tokio::process::ChildStdout::from_std)
            .transpose()
            .map_err(io_error)?;
        let stderr = child
            .stderr
            .take()
            .map(tokio::process::ChildStderr::from_std)
            .transpose()
            .map_err(io_error)?;
        // Dropping std's Child neither waits nor kills; the group guard owns the pid now.
        drop(child);

        let mut kept_stdout = String::new();
        let cancelled = std::sync::atomic::AtomicBool::new(false);
        let outage_ended_run = std::sync::atomic::AtomicBool::new(false);
        let (clock, mut clock_changes) = tokio::sync::watch::channel(OutageClock::new());
        let (stdout_result, stderr_text, status) = {
            let read_stdout = async {
                if let Some(stdout) = stdout {
                    let mut lines = BufReader::new(stdout).lines();
                    while let Some(line) = lines.next_line().await? {
                        if let Some((bytes, files)) = status_progress(&line)
                            && clock.send_if_modified(|clock| clock.progressed(bytes, files))
                        {
                            tracing::info!(bytes, files, "restic makes progress again");
                        }
                        sink.line(&line).await;
                        if keep_stdout {
                            kept_stdout.push_str(&line);
                            kept_stdout.push('\n');
                        }
                    }
                }
                Ok::<(), std::io::Error>(())
            };
            // Pipes are read to the end even while stopping: restic writes to stderr as it
            // cleans up, and a Go program writing to a closed pipe dies of SIGPIPE before
            // removing its lock.
            let run = async {
                let on_stderr_line = |line: &str| {
                    let Some(retry) = parse_retry_line(&command.name, line) else {
                        return;
                    };
                    tracing::warn!(
                        operation = %retry.operation,
                        delay_ms = retry.delay.as_millis() as u64,
                        reason = %retry.reason,
                        "restic could not reach the storage, it retries"
                    );
                    if let Some(observer) = &self.retry_observer {
                        (observer.0)(&retry);
                    }
                    clock.send_modify(|clock| clock.retried(tokio::time::Instant::now(), retry));
                };
                let (stdout_result, stderr_text) =
                    tokio::join!(read_stdout, read_capped(stderr, on_stderr_line));
                // Reaped only once the pipes are closed: until then the leader's pid names the
                // group a cancel must still kill (restic's children may hold the pipes).
                let status = match group.reap().await {
                    Ok(reaped) => reaped,
                    Err(join) => Err(std::io::Error::other(join)),
                };
                (stdout_result, stderr_text, status)
            };
            let outage = async {
                let Some(timeout) = self.storage_outage_timeout else {
                    return std::future::pending().await;
                };
                loop {
                    let deadline = clock_changes.borrow_and_update().deadline(timeout);
                    tokio::select! {
                        changed = clock_changes.changed() => {
                            if changed.is_err() {
                                return std::future::pending().await;
                            }
                        }
                        () = async {
                            match deadline {
                                Some(deadline) => tokio::time::sleep_until(deadline).await,
                                None => std::future::pending().await,
                            }
                        } => return,
                    }
                }
            };
            let stop = async {
                tokio::select! {
                    () = cancel.cancelled() => {
                        cancelled.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    () = outage => {
                        outage_ended_run.store(true, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(
                            timeout = ?self.storage_outage_timeout,
                            "restic retried the storage for longer than the outage timeout, stopping it"
                        );
                    }
                }
                // SIGINT first: restic then removes its repository lock and exits, so the
                // next run (or prune) does not find a stale lock.
                group.signal(libc::SIGINT);
                tokio::time::sleep(self.stop_grace).await;
                tracing::warn!(grace = ?self.stop_grace, "restic ignored SIGINT, killing it");
                group.signal(libc::SIGKILL);
                std::future::pending::<()>().await
            };
            tokio::select! {
                finished = run => finished,
                () = stop => unreachable!("stopping never finishes on its own"),
            }
        };
        // The leader is reaped now, so its pid may be reused: never signal the group again.
        group.disarm();
        let span = tracing::Span::current();
        // Counted for cancelled runs too: a restic stopped for growing too large is the one
        // whose peak an operator wants to see.
        if let Ok((_, peak_rss_bytes)) = &status {
            span.record("restic.peak_rss_bytes", *peak_rss_bytes);
            if let Some(peak) = &self.peak_rss {
                peak.record(*peak_rss_bytes);
            }
        }
        if cancelled.load(std::sync::atomic::Ordering::Relaxed) {
            tracing::info!("restic stopped on cancel");
            return Err(ResticError::Cancelled {
                command: command.name.clone(),
            });
        }
        if outage_ended_run.load(std::sync::atomic::Ordering::Relaxed) {
            let clock = clock.borrow();
            let error = ResticError::StorageOutage {
                command: command.name.clone(),
                repository: repository.map(|r| r.url.as_str()).unwrap_or("").to_string(),
                waited: clock.lasted(tokio::time::Instant::now()),
                reason: clock
                    .last_retry()
                    .map(|retry| retry.reason.clone())
                    .unwrap_or_default(),
            };
            tracing::warn!(%error, "restic stopped after a storage outage");
            return Err(error);
        }
        drop(run_dir);
        let (status, _) = status.map_err(io_error)?;
        stdout_result.map_err(io_error)?;
        if let Some(code) = status.code() {
            span.record("restic.exit_code", code);
        }
        if status.success() {
            return Ok(Output {
                stdout: kept_stdout,
                stderr: stderr_text,
            });
        }
        use std::os::unix::process::ExitStatusExt as _;
        let error = classify_exit(
            &command.name,
            repository.map(|r| r.url.as_str()).unwrap_or(""),
            status.code(),
            status.signal(),
            stderr_text,
        );
        tracing::warn!(%error, "restic failed");
        Err(error)
    }

    /// A fresh 0700 directory for this run's password file, removed when dropped.
    fn prepare_run_dir(&self) -> Result<tempfile::TempDir, ResticError> {
        let scratch_error = |source| ResticError::Scratch {
            path: self.scratch_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&self.scratch_dir).map_err(scratch_error)?;
        std::fs::set_permissions(&self.scratch_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(scratch_error)?;
        tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(&self.scratch_dir)
            .map_err(scratch_error)
    }
}

impl ResticCommand {
    /// A spawn `NotFound` means the binary is missing only when the working dir exists.
    fn current_dir_exists(&self) -> bool {
        self.current_dir.as_ref().is_none_or(|dir| dir.is_dir())
    }
}

/// Where a run's stdout lines go, one at a time: the next line is read only once `line` has
/// finished, so a sink that waits (for a slow reader) makes restic wait.
pub trait LineSink: Send {
    fn line(&mut self, line: &str) -> impl std::future::Future<Output = ()> + Send;
}

/// A closure that takes each line at once.
struct EachLine<F>(F);

impl<F: FnMut(&str) + Send> LineSink for EachLine<F> {
    fn line(&mut self, line: &str) -> impl std::future::Future<Output = ()> + Send {
        (self.0)(line);
        std::future::ready(())
    }
}

/// Parses restic's JSON stdout; the error keeps the start of the text for the operator.
pub fn parse_json<T: DeserializeOwned>(command: &str, stdout: &str) -> Result<T, ResticError> {
    // Some commands print a human line before the JSON document (restic 0.14 `restore`);
    // the document is the last non-empty line when it is not the whole output.
    serde_json::from_str(stdout).or_else(|first_error| {
        stdout
            .lines()
            .rev()
            .find(|line| !line.trim().is_empty())
            .and_then(|line| serde_json::from_str(line).ok())
            .ok_or_else(|| ResticError::Output {
                command: command.to_string(),
                output: stdout.chars().take(512).collect(),
                source: first_error,
            })
    })
}

fn write_password_file(dir: &Path, password: &str) -> Result<PathBuf, ResticError> {
    let path = dir.join("password");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| ResticError::Scratch {
            path: path.clone(),
            source,
        })?;
    file.write_all(password.as_bytes())
        .map_err(|source| ResticError::Scratch {
            path: path.clone(),
            source,
        })?;
    Ok(path)
}

/// Reads a stream to its end line by line, calling `on_line` with each line and keeping only
/// the first [`STDERR_LIMIT`] bytes.
async fn read_capped(
    stream: Option<impl AsyncRead + Unpin>,
    mut on_line: impl FnMut(&str),
) -> String {
    let Some(stream) = stream else {
        return String::new();
    };
    let mut stream = BufReader::new(stream);
    let mut kept = Vec::new();
    let mut line = Vec::new();
    let mut truncated = false;
    loop {
        line.clear();
        match stream.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                on_line(String::from_utf8_lossy(&line).trim_end());
                let room = STDERR_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&line[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
    let mut text = String::from_utf8_lossy(&kept).into_owned();
    if truncated {
        text.push_str("\n[… stderr truncated]");
    }
    text
}

/// Waits for `pid` to exit and reaps it; returns its exit status and peak resident set size
/// in bytes. Sets `reaped` under its lock as the pid is released, so the group guard never
/// signals a pid (and group id) the kernel may already have handed to another process.
fn reap(pid: i32, reaped: &Mutex<bool>) -> std::io::Result<(ExitStatus, u64)> {
    use std::os::unix::process::ExitStatusExt as _;
    // First wait without reaping (WNOWAIT): the zombie keeps the pid taken meanwhile.
    loop {
        // SAFETY: siginfo_t is plain data, zeroed is a valid value; waitid only writes it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid(2) on our own child with a valid out pointer.
        let result = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if result == 0 {
            break;
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    let mut reaped = reaped
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut status = 0;
    // SAFETY: rusage is plain data, zeroed is a valid value; wait4 only writes it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4(2) on our own child, which has exited, with valid out pointers.
        let result = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if result == pid {
            break;
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    *reaped = true;
    // Linux reports ru_maxrss in KiB.
    let peak_rss_bytes = u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024;
    Ok((ExitStatus::from_raw(status), peak_rss_bytes))
}

/// Kills the process group when the run is abandoned (future dropped or cancelled), so no
/// restic keeps running after its caller is gone, and makes sure the leader is reaped.
struct ProcessGroupGuard {
    pgid: Option<i32>,
    /// Set by [`reap`] once the leader's pid is released.
    reaped: Arc<Mutex<bool>>,
    /// A reaper thread has been started for the leader.
    reaping: std::sync::atomic::AtomicBool,
}

impl ProcessGroupGuard {
    /// Waits for the leader in a blocking thread and reaps it. The thread keeps going when the
    /// caller's future is dropped (the guard kills the group then), so no zombie is left.
    fn reap(&self) -> tokio::task::JoinHandle<std::io::Result<(ExitStatus, u64)>> {
        let pid = self.pgid.unwrap_or(0);
        let reaped = self.reaped.clone();
        self.reaping.store(true, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || reap(pid, &reaped))
    }

    fn signal(&self, signal: libc::c_int) {
        let Some(pgid) = self.pgid.filter(|pgid| *pgid > 0) else {
            return;
        };
        // Held while signalling, so the leader cannot be reaped (and its id reused) between
        // the check and the kill.
        let reaped = self
            .reaped
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !*reaped {
            // SAFETY: kill(2) with a negative pid signals the group; no memory is involved.
            unsafe {
                libc::kill(-pgid, signal);
            }
        }
    }

    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for ProcessGroupGuard {
    fn drop(&mut self) {
        // Dropped mid-run (the caller's future went away): no time for SIGINT's cleanup.
        self.signal(libc::SIGKILL);
        if let Some(pid) = self.pgid
            && !self.reaping.load(Ordering::Relaxed)
        {
            // Nobody waits for it yet; a plain thread, as a drop may happen outside a runtime.
            let reaped = self.reaped.clone();
            std::thread::spawn(move || reap(pid, &reaped));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `script` to `path` as an executable stand-in for restic.
    fn stand_in(path: &Path, script: &str) -> PathBuf {
        std::fs::write(path, script).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path.to_path_buf()
    }

    /// A token cancelled as soon as `reached` says the stand-in got far enough, and the task
    /// that watches for it (awaited by the test, so its failure is seen).
    fn cancel_when(
        reached: impl Fn() -> bool + Send + 'static,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let cancel = CancellationToken::new();
        let canceller = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                while !reached() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                cancel.cancel();
            })
        };
        (cancel, canceller)
    }

    /// `restic backup` of a repository nobody reads, through `restic`.
    async fn run_backup(
        restic: &Restic,
        cancel: &CancellationToken,
    ) -> Result<Output, ResticError> {
        restic
            .run(
                &Repository::new("/r", "p"),
                &ResticCommand::new("backup"),
                cancel,
            )
            .await
    }

    #[test]
    fn debug_of_repository_hides_password_and_env_values() {
        let repository = Repository::new("/repo", "hunter2").with_env("AWS_SECRET", "s3cr3t");
        let text = format!("{repository:?}");
        assert!(text.contains("/repo") && text.contains("AWS_SECRET"));
        assert!(
            !text.contains("hunter2") && !text.contains("s3cr3t"),
            "{text}"
        );
    }

    #[test]
    fn json_after_a_human_line_is_found() {
        let value: serde_json::Value =
            parse_json("restore", "restoring <Snapshot 1> to x\n{\"a\":1}\n").unwrap();
        assert_eq!(value["a"], 1);
        let error = parse_json::<serde_json::Value>("stats", "not json").unwrap_err();
        assert!(matches!(error, ResticError::Output { .. }));
    }

    #[tokio::test]
    async fn password_file_is_private_and_removed_after_the_run() {
        let scratch = tempfile::tempdir().unwrap();
        // `env` stands in for restic: it prints its environment and exits 0.
        let restic = Restic::new("/usr/bin/env", scratch.path());
        let output = restic
            .run(
                &Repository::new("/repo", "pw"),
                &ResticCommand::new("--"),
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        let password_file = output
            .stdout
            .lines()
            .find_map(|line| line.strip_prefix("RESTIC_PASSWORD_FILE="))
            .expect("password file passed in the environment");
        assert!(password_file.starts_with(scratch.path().to_str().unwrap()));
        assert!(!Path::new(password_file).exists(), "removed after the run");
        assert!(output.stdout.contains("RESTIC_REPOSITORY=/repo"));
        assert!(!output.stdout.contains("=pw\n"));
    }

    #[tokio::test]
    async fn restic_gets_an_allow_listed_environment_and_the_runner_settings() {
        // cargo runs tests with CARGO_* set: variables restic has no use for.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let scratch = tempfile::tempdir().unwrap();
        let restic = Restic::new("/usr/bin/env", scratch.path())
            .with_env("GOMEMLIMIT", "536870912")
            .unwrap();
        let output = restic
            .run(
                &Repository::new("/repo", "pw")
                    .with_env("AWS_ACCESS_KEY_ID", "key")
                    .with_env("STOWAGE_MASTER_KEY", "leak"),
                &ResticCommand::new("--"),
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        let names: Vec<&str> = output
            .stdout
            .lines()
            .filter_map(|line| line.split_once('=').map(|(name, _)| name))
            .collect();
        assert!(names.contains(&"PATH"), "{names:?}");
        assert!(output.stdout.contains("GOMEMLIMIT=536870912\n"));
        assert!(output.stdout.contains("AWS_ACCESS_KEY_ID=key\n"));
        assert!(
            names
                .iter()
                .all(|name| crate::environment::inherited_by_restic(name)
                    || ["RESTIC_REPOSITORY", "RESTIC_PASSWORD_FILE"].contains(name)),
            "{names:?}"
        );
        assert!(!output.stdout.contains("CARGO_"), "{}", output.stdout);
        assert!(!output.stdout.contains("leak"), "{}", output.stdout);
        // `env` reads a trailing `NAME=value` argument as a variable and prints it back.
        let output = Restic::new("/usr/bin/env", scratch.path())
            .with_retry_lock(Some(Duration::from_secs(90)))
            .run(
                &Repository::new("/repo", "pw"),
                &ResticCommand::new("--"),
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        assert!(
            output.stdout.contains("--retry-lock=90s\n"),
            "{}",
            output.stdout
        );
        assert!(
            Restic::new("restic", scratch.path())
                .with_env("STOWAGE_MASTER_KEY", "x")
                .is_err()
        );
    }

    #[tokio::test]
    async fn peak_rss_of_the_child_is_measured() {
        let scratch = tempfile::tempdir().unwrap();
        // A stand-in that touches 64 MiB before it exits.
        let script = stand_in(
            &scratch.path().join("hungry"),
            "#!/bin/sh\nexec python3 -c 'b = bytearray(64 << 20)'\n",
        );
        let peak = PeakRss::new();
        let restic = Restic::new(&script, scratch.path().join("scratch")).measuring(&peak);
        assert_eq!(peak.bytes(), 0);
        run_backup(&restic, &CancellationToken::new())
            .await
            .unwrap();
        assert!(peak.bytes() >= 64 << 20, "peak {}", peak.bytes());
        assert!(peak.bytes() < 1 << 30, "peak {}", peak.bytes());
        // A smaller run later does not lower the peak.
        let small = Restic::new("/bin/true", scratch.path().join("scratch")).measuring(&peak);
        small
            .run(
                &Repository::new("/r", "p"),
                &ResticCommand::new("x"),
                &CancellationToken::new(),
            )
            .await
            .unwrap();
        assert!(peak.bytes() >= 64 << 20);
    }

    /// A stand-in for restic 0.18 while its storage is down: it announces a retry on stderr,
    /// as restic does, and keeps waiting.
    fn retrying_restic(dir: &Path) -> PathBuf {
        stand_in(
            &dir.join("retrying"),
            "#!/bin/sh\necho '{\"message_type\":\"status\",\"bytes_done\":5,\"files_done\":1}'\necho 'Save(<data/1a2b3c4d5e>) returned error, retrying after 1.5s: dial tcp 127.0.0.1:9: connect: connection refused' >&2\nsleep 120\n",
        )
    }

    #[tokio::test]
    async fn restic_retrying_past_the_outage_timeout_is_stopped_as_a_storage_error() {
        let scratch = tempfile::tempdir().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let restic = Restic::new(retrying_restic(scratch.path()), scratch.path().join("s"))
            .with_stop_grace(Duration::from_secs(60))
            .with_storage_outage_timeout(Some(Duration::from_millis(300)))
            .reporting_retries({
                let seen = seen.clone();
                move |retry| seen.lock().unwrap().push(retry.clone())
            });
        let error = restic
            .run(
                &Repository::new("s3:http://127.0.0.1:9/b/r", "p"),
                &ResticCommand::new("backup"),
                &CancellationToken::new(),
            )
            .await
            .unwrap_err();
        match &error {
            ResticError::StorageOutage {
                command,
                repository,
                waited,
                reason,
            } => {
                assert_eq!(command, "backup");
                assert_eq!(repository, "s3:http://127.0.0.1:9/b/r");
                assert!(*waited >= Duration::from_millis(300), "{waited:?}");
                assert!(reason.ends_with("connection refused"), "{reason}");
            }
            other => panic!("expected a storage outage, got {other:?}"),
        }
        let message = error.to_string();
        assert!(
            message.contains("cannot be reached") && message.contains("connection refused"),
            "{message}"
        );
        assert!(error.is_retryable(), "a later run may succeed");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].operation, "Save(<data/1a2b3c4d5e>)");
        assert_eq!(seen[0].delay, Duration::from_millis(1500));
    }

    #[tokio::test]
    async fn without_an_outage_timeout_restic_retries_until_cancelled() {
        let scratch = tempfile::tempdir().unwrap();
        let seen = Arc::new(Mutex::new(0));
        let restic = Restic::new(retrying_restic(scratch.path()), scratch.path().join("s"))
            .with_stop_grace(Duration::from_secs(60))
            .reporting_retries({
                let seen = seen.clone();
                move |_| *seen.lock().unwrap() += 1
            });
        // Cancelled only once the retry was seen: the run was still going then.
        let (cancel, canceller) = cancel_when({
            let seen = seen.clone();
            move || *seen.lock().unwrap() > 0
        });
        let error = run_backup(&restic, &cancel).await.unwrap_err();
        canceller.await.unwrap();
        assert!(error.is_cancelled(), "{error:?}");
    }

    #[tokio::test]
    async fn missing_binary_is_classified() {
        let scratch = tempfile::tempdir().unwrap();
        let restic = Restic::new("/nonexistent/restic", scratch.path());
        let error = restic.version(&CancellationToken::new()).await.unwrap_err();
        assert!(
            matches!(error, ResticError::BinaryMissing { .. }),
            "{error}"
        );
    }

    #[tokio::test]
    async fn cancel_lets_restic_clean_up_on_sigint_first() {
        let scratch = tempfile::tempdir().unwrap();
        let ready = scratch.path().join("ready");
        let cleaned = scratch.path().join("cleaned");
        // A stand-in that, like restic, removes its lock when interrupted.
        let script = stand_in(
            &scratch.path().join("tidy"),
            &format!(
                "#!/bin/sh\ntrap 'kill $child; echo lock removed > {cleaned}; exit 130' INT\nsleep 30 >/dev/null 2>&1 &\nchild=$!\necho > {ready}\nwait\n",
                cleaned = cleaned.display(),
                ready = ready.display()
            ),
        );
        let restic = Restic::new(&script, scratch.path().join("scratch"))
            .with_stop_grace(std::time::Duration::from_secs(60));
        let (cancel, canceller) = cancel_when(move || ready.exists());
        let error = run_backup(&restic, &cancel).await.unwrap_err();
        canceller.await.unwrap();
        assert!(error.is_cancelled(), "{error}");
        assert_eq!(
            std::fs::read_to_string(&cleaned).unwrap_or_default(),
            "lock removed\n",
            "SIGINT reached the process before any kill"
        );
    }

    #[tokio::test]
    async fn cancel_kills_the_process_group() {
        let scratch = tempfile::tempdir().unwrap();
        // A stand-in that starts a child of its own and records both pids.
        let pids = scratch.path().join("pids");
        let script = stand_in(
            &scratch.path().join("slow"),
            &format!(
                "#!/bin/sh\nsleep 30 &\necho $$ $! > {}\nwait\n",
                pids.display()
            ),
        );
        // sh dies of SIGINT but its background sleep ignores it: only the kill stops it.
        let restic = Restic::new(&script, scratch.path().join("scratch"))
            .with_stop_grace(std::time::Duration::from_millis(200));
        let (cancel, canceller) = cancel_when({
            let pids = pids.clone();
            move || pids.exists()
        });
        let error = run_backup(&restic, &cancel).await.unwrap_err();
        canceller.await.unwrap();
        assert!(error.is_cancelled(), "{error}");
        let text = std::fs::read_to_string(&pids).unwrap();
        for pid in text.split_whitespace() {
            let pid: i32 = pid.parse().unwrap();
            // The sleep child may linger as a zombie until init reaps it; it must not run.
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let running = !state.is_empty()
                && state
                    .rsplit(')')
                    .next()
                    .is_some_and(|rest| !rest.trim_start().starts_with('Z'));
            assert!(!running, "process {pid} still running: {state}");
        }
    }
}
