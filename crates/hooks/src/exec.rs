//! Running an exec hook: the container it runs in (Velero's default: the pod's first), the
//! timeout, cancellation, and the outcome the backup or restore records. How a command reaches
//! the container is behind [`PodExec`], so this logic is tested with a fake and the Kubernetes
//! API is one adapter ([`crate::KubePodExec`]).

use std::{
    fmt,
    future::Future,
    time::{Duration, SystemTime},
};

use k8s_openapi::api::core::v1::Pod;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::annotations::{ExecHook, HookPhase, OnError};

/// How much of each output stream a hook run keeps (the start and the end; the middle is
/// dropped): enough for an error message, not enough to fill a backup's log with a dump.
pub const DEFAULT_OUTPUT_LIMIT: usize = 4096;

/// The container a command runs in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecTarget {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

impl fmt::Display for ExecTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} container {}",
            self.namespace, self.pod, self.container
        )
    }
}

/// A bounded copy of an output stream: its first and last `limit / 2` bytes and how many
/// bytes between them were dropped.
#[derive(Clone, Debug)]
pub struct Capture {
    limit: usize,
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    dropped: u64,
}

impl Capture {
    pub fn new(limit: usize) -> Capture {
        Capture {
            limit,
            head: Vec::new(),
            tail: std::collections::VecDeque::new(),
            dropped: 0,
        }
    }

    pub fn push(&mut self, mut bytes: &[u8]) {
        let head_room = (self.limit / 2 + self.limit % 2).saturating_sub(self.head.len());
        let into_head = head_room.min(bytes.len());
        self.head.extend_from_slice(&bytes[..into_head]);
        bytes = &bytes[into_head..];
        let tail_limit = self.limit / 2;
        self.tail.extend(bytes);
        if self.tail.len() > tail_limit {
            let excess = self.tail.len() - tail_limit;
            self.tail.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    /// The kept bytes as text (invalid UTF-8 replaced), with a marker where bytes were
    /// dropped.
    pub fn text(&self) -> String {
        let head = String::from_utf8_lossy(&self.head);
        let tail: Vec<u8> = self.tail.iter().copied().collect();
        let tail = String::from_utf8_lossy(&tail);
        if self.dropped == 0 {
            format!("{head}{tail}")
        } else {
            format!("{head}\n[… {} bytes omitted …]\n{tail}", self.dropped)
        }
    }

    /// Bytes dropped from the middle.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Where a running command's output goes.
#[derive(Clone, Debug)]
pub struct Output {
    pub stdout: Capture,
    pub stderr: Capture,
}

impl Output {
    pub fn new(limit: usize) -> Output {
        Output {
            stdout: Capture::new(limit),
            stderr: Capture::new(limit),
        }
    }
}

/// Why a command could not be run to an exit code.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ExecError {
    /// The API server refused the exec (the pod is gone, the container unknown, RBAC…).
    #[error("the Kubernetes API refused the exec ({code} {reason}): {message}")]
    Refused {
        code: u16,
        reason: String,
        message: String,
    },
    /// The command did not report an exit code: it could not be started in the container,
    /// or the runtime failed.
    #[error("the command failed without an exit code ({reason}): {message}")]
    Failed { reason: String, message: String },
    /// The connection to the API server failed or ended before the command's status.
    #[error("exec stream: {0}")]
    Stream(String),
}

/// Runs a command in a container and reports its exit code. Implementations append the
/// command's output to `output` as it arrives, so a timed-out or cancelled run (whose future
/// is dropped) still leaves what was printed so far.
pub trait PodExec: Send + Sync {
    fn exec(
        &self,
        target: &ExecTarget,
        command: &[String],
        output: &mut Output,
    ) -> impl Future<Output = Result<i32, ExecError>> + Send;
}

/// A hook that cannot be run in this pod at all.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TargetError {
    #[error("pod {namespace}/{pod} has no containers to run the {phase} in")]
    NoContainers {
        namespace: String,
        pod: String,
        phase: &'static str,
    },
    #[error(
        "{phase}: pod {namespace}/{pod} has no container `{container}` (its containers: {known})"
    )]
    NoSuchContainer {
        namespace: String,
        pod: String,
        container: String,
        known: String,
        phase: &'static str,
    },
}

/// The container `hook` runs in: the one it names, which must be one of the pod's
/// containers, or else the pod's first container (Velero's `setDefaultHookContainer`).
pub fn target(pod: &Pod, hook: &ExecHook) -> Result<ExecTarget, TargetError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let containers: Vec<&str> = pod
        .spec
        .as_ref()
        .map(|spec| spec.containers.iter().map(|c| c.name.as_str()).collect())
        .unwrap_or_default();
    let container = match &hook.container {
        Some(container) if containers.contains(&container.as_str()) => container.clone(),
        Some(container) => {
            return Err(TargetError::NoSuchContainer {
                namespace,
                pod: name,
                container: container.clone(),
                known: containers.join(", "),
                phase: hook.phase.label(),
            });
        }
        None => match containers.first() {
            Some(first) => first.to_string(),
            None => {
                return Err(TargetError::NoContainers {
                    namespace,
                    pod: name,
                    phase: hook.phase.label(),
                });
            }
        },
    };
    Ok(ExecTarget {
        namespace,
        pod: name,
        container,
    })
}

/// How a hook run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookResult {
    /// Exit code 0.
    Succeeded,
    /// A non-zero exit code.
    Exited(i32),
    /// Still running when its timeout passed (the API gives no way to stop it: it may run
    /// on in the container).
    TimedOut(Duration),
    /// The backup or restore was cancelled while the hook ran.
    Cancelled,
    /// It could not be run.
    Error(ExecError),
    /// A post-restore hook that never started: its container did not come up in time, the
    /// pod ended or went away, or it names a container the pod lacks.
    NotStarted(String),
}

/// A finished hook run: what the backup's log and the PodVolumeBackup records say about it.
#[derive(Clone, Debug)]
pub struct HookRun {
    pub phase: HookPhase,
    pub target: ExecTarget,
    pub command: Vec<String>,
    pub on_error: OnError,
    pub result: HookResult,
    pub stdout: String,
    pub stderr: String,
    /// When the run began and ended (wall clock, for the records).
    pub started: SystemTime,
    pub finished: SystemTime,
}

impl HookRun {
    pub fn succeeded(&self) -> bool {
        self.result == HookResult::Succeeded
    }

    /// The command's exit code; None when it did not run to one (timeout, cancel, refusal).
    pub fn exit_code(&self) -> Option<i32> {
        match self.result {
            HookResult::Succeeded => Some(0),
            HookResult::Exited(code) => Some(code),
            _ => None,
        }
    }

    /// Whether the pod's volumes fail for this run: it did not succeed and its on-error is
    /// Fail, or the run was cancelled (whatever on-error says, a cancelled backup stops).
    pub fn fails_pod(&self) -> bool {
        match self.result {
            HookResult::Succeeded => false,
            HookResult::Cancelled => true,
            _ => self.on_error == OnError::Fail,
        }
    }

    /// One line for a failure reason: what failed, where, and the end of its stderr (or of
    /// its stdout when stderr is empty).
    pub fn reason(&self) -> String {
        let what = match &self.result {
            HookResult::Succeeded => "succeeded".to_string(),
            HookResult::Exited(code) => format!("exited with code {code}"),
            HookResult::TimedOut(timeout) => {
                format!(
                    "timed out after {}",
                    stowage_velero_format::format_go_duration(*timeout)
                )
            }
            HookResult::Cancelled => "was cancelled".to_string(),
            HookResult::Error(error) => format!("could not run: {error}"),
            HookResult::NotStarted(why) => format!("was not run: {why}"),
        };
        let mut reason = format!(
            "{} {:?} in {} {what}",
            self.phase.label(),
            self.command,
            self.target
        );
        let output = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let output = output.trim();
        if !output.is_empty() && self.result != HookResult::Succeeded {
            // One line: the last lines of the output, joined.
            let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
            let last = &lines[lines.len().saturating_sub(3)..];
            reason.push_str(": ");
            reason.push_str(&last.join(" | "));
        }
        reason
    }
}

/// Runs `hook` in `target`, bounded by the hook's timeout and by `cancel`, keeping up to
/// `output_limit` bytes of each output stream. Never fails: every way it can end is a
/// [`HookResult`], which the caller weighs with [`HookRun::fails_pod`].
pub async fn run_hook<E: PodExec>(
    exec: &E,
    target: ExecTarget,
    hook: &ExecHook,
    output_limit: usize,
    cancel: &CancellationToken,
) -> HookRun {
    let span = tracing::info_span!(
        "hook",
        phase = hook.phase.label(),
        namespace = %target.namespace,
        pod = %target.pod,
        container = %target.container,
    );
    async move {
        let mut output = Output::new(output_limit);
        let started = SystemTime::now();
        let result = if cancel.is_cancelled() {
            HookResult::Cancelled
        } else {
            tracing::info!(command = ?hook.command, timeout = ?hook.timeout, "running hook");
            let run = exec.exec(&target, &hook.command, &mut output);
            tokio::select! {
                biased;
                _ = cancel.cancelled() => HookResult::Cancelled,
                finished = tokio::time::timeout(hook.timeout, run) => match finished {
                    Ok(Ok(0)) => HookResult::Succeeded,
                    Ok(Ok(code)) => HookResult::Exited(code),
                    Ok(Err(error)) => HookResult::Error(error),
                    Err(_) => HookResult::TimedOut(hook.timeout),
                },
            }
        };
        let run = HookRun {
            phase: hook.phase,
            target,
            command: hook.command.clone(),
            on_error: hook.on_error,
            result,
            stdout: output.stdout.text(),
            stderr: output.stderr.text(),
            started,
            finished: SystemTime::now(),
        };
        if run.succeeded() {
            tracing::info!("hook succeeded");
        } else {
            tracing::warn!(reason = %run.reason(), fails_pod = run.fails_pod(), "hook failed");
        }
        run
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    };

    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use kube::api::ObjectMeta;

    use super::*;

    /// What the fake does when a command runs.
    #[derive(Clone)]
    enum Behaviour {
        Exit {
            code: i32,
            stdout: &'static str,
            stderr: &'static str,
        },
        /// Prints, then never ends.
        Hang {
            stdout: &'static str,
        },
        Refuse,
    }

    /// The commands a fake was asked to run, and where.
    type Calls = Arc<Mutex<Vec<(ExecTarget, Vec<String>)>>>;

    #[derive(Clone)]
    struct FakeExec {
        behaviour: Behaviour,
        calls: Calls,
        finished: Arc<AtomicUsize>,
    }

    impl FakeExec {
        fn new(behaviour: Behaviour) -> FakeExec {
            FakeExec {
                behaviour,
                calls: Arc::default(),
                finished: Arc::default(),
            }
        }
    }

    impl PodExec for FakeExec {
        async fn exec(
            &self,
            target: &ExecTarget,
            command: &[String],
            output: &mut Output,
        ) -> Result<i32, ExecError> {
            self.calls
                .lock()
                .unwrap()
                .push((target.clone(), command.to_vec()));
            match self.behaviour.clone() {
                Behaviour::Exit {
                    code,
                    stdout,
                    stderr,
                } => {
                    output.stdout.push(stdout.as_bytes());
                    output.stderr.push(stderr.as_bytes());
                    self.finished.fetch_add(1, Ordering::SeqCst);
                    Ok(code)
                }
                Behaviour::Hang { stdout } => {
                    output.stdout.push(stdout.as_bytes());
                    std::future::pending::<()>().await;
                    unreachable!()
                }
                Behaviour::Refuse => Err(ExecError::Refused {
                    code: 404,
                    reason: "NotFound".into(),
                    message: "pods \"db-0\" not found".into(),
                }),
            }
        }
    }

    fn pod(containers: &[&str]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("db-0".into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: containers
                    .iter()
                    .map(|name| Container {
                        name: name.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn hook(container: Option<&str>, on_error: OnError) -> ExecHook {
        ExecHook {
            phase: HookPhase::PreBackup,
            container: container.map(str::to_string),
            command: vec!["/bin/sh".into(), "-c".into(), "pg_dump".into()],
            on_error,
            timeout: Duration::from_secs(30),
            wait_timeout: None,
            wait_for_ready: false,
        }
    }

    #[test]
    fn hook_runs_in_the_named_container_or_the_first() {
        let pod = pod(&["db", "metrics"]);
        let named = target(&pod, &hook(Some("metrics"), OnError::Fail)).unwrap();
        assert_eq!(named.container, "metrics");
        assert_eq!(
            (named.namespace.as_str(), named.pod.as_str()),
            ("shop", "db-0")
        );
        assert_eq!(
            target(&pod, &hook(None, OnError::Fail)).unwrap().container,
            "db"
        );
        let error = target(&pod, &hook(Some("sidecar"), OnError::Fail)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "pre-backup hook: pod shop/db-0 has no container `sidecar` (its containers: db, metrics)"
        );
        assert!(matches!(
            target(&self::pod(&[]), &hook(None, OnError::Fail)),
            Err(TargetError::NoContainers { .. })
        ));
    }

    fn db_target() -> ExecTarget {
        ExecTarget {
            namespace: "shop".into(),
            pod: "db-0".into(),
            container: "db".into(),
        }
    }

    #[tokio::test]
    async fn a_zero_exit_succeeds_and_keeps_the_output() {
        let exec = FakeExec::new(Behaviour::Exit {
            code: 0,
            stdout: "dumped 3 tables\n",
            stderr: "",
        });
        let run = run_hook(
            &exec,
            db_target(),
            &hook(None, OnError::Fail),
            DEFAULT_OUTPUT_LIMIT,
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(run.result, HookResult::Succeeded);
        assert!(!run.fails_pod());
        assert_eq!(run.stdout, "dumped 3 tables\n");
        let calls = exec.calls.lock().unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, db_target());
        assert_eq!(calls[0].1, ["/bin/sh", "-c", "pg_dump"]);
    }

    #[tokio::test]
    async fn a_non_zero_exit_fails_the_pod_only_with_on_error_fail() {
        let exec = FakeExec::new(Behaviour::Exit {
            code: 2,
            stdout: "starting\n",
            stderr: "pg_dump: error: connection refused\n",
        });
        let cancel = CancellationToken::new();
        let failing = run_hook(&exec, db_target(), &hook(None, OnError::Fail), 64, &cancel).await;
        assert_eq!(failing.result, HookResult::Exited(2));
        assert!(failing.fails_pod());
        assert_eq!(
            failing.reason(),
            r#"pre-backup hook ["/bin/sh", "-c", "pg_dump"] in shop/db-0 container db exited with code 2: pg_dump: error: connection refused"#
        );
        let continuing = run_hook(
            &exec,
            db_target(),
            &hook(None, OnError::Continue),
            64,
            &cancel,
        )
        .await;
        assert_eq!(continuing.result, HookResult::Exited(2));
        assert!(!continuing.fails_pod());
    }

    #[tokio::test(start_paused = true)]
    async fn a_hook_past_its_timeout_times_out_with_its_output_so_far() {
        let exec = FakeExec::new(Behaviour::Hang {
            stdout: "waiting for lock\n",
        });
        let mut slow = hook(None, OnError::Fail);
        slow.timeout = Duration::from_secs(45);
        let started = tokio::time::Instant::now();
        let run = run_hook(&exec, db_target(), &slow, 64, &CancellationToken::new()).await;
        assert_eq!(run.result, HookResult::TimedOut(Duration::from_secs(45)));
        assert_eq!(started.elapsed(), Duration::from_secs(45));
        assert!(run.fails_pod());
        assert_eq!(run.stdout, "waiting for lock\n");
        assert!(
            run.reason()
                .contains("timed out after 45s: waiting for lock"),
            "{}",
            run.reason()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_stops_a_running_hook_even_with_on_error_continue() {
        let exec = FakeExec::new(Behaviour::Hang { stdout: "" });
        let (cancel, canceller) = crate::testing::cancel_after(Duration::from_secs(5));
        let run = run_hook(
            &exec,
            db_target(),
            &hook(None, OnError::Continue),
            64,
            &cancel,
        )
        .await;
        canceller.await.unwrap();
        assert_eq!(run.result, HookResult::Cancelled);
        assert!(run.fails_pod());

        // Already cancelled: the command is not even started.
        let exec = FakeExec::new(Behaviour::Exit {
            code: 0,
            stdout: "",
            stderr: "",
        });
        let run = run_hook(&exec, db_target(), &hook(None, OnError::Fail), 64, &cancel).await;
        assert_eq!(run.result, HookResult::Cancelled);
        assert!(exec.calls.lock().unwrap().is_empty());
        assert_eq!(exec.finished.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_refused_exec_is_an_error_result() {
        let exec = FakeExec::new(Behaviour::Refuse);
        let run = run_hook(
            &exec,
            db_target(),
            &hook(None, OnError::Fail),
            64,
            &CancellationToken::new(),
        )
        .await;
        assert!(matches!(
            &run.result,
            HookResult::Error(ExecError::Refused { code: 404, .. })
        ));
        assert!(run.fails_pod());
        assert!(
            run.reason()
                .contains("could not run: the Kubernetes API refused the exec (404 NotFound)")
        );
    }

    #[test]
    fn capture_keeps_the_start_and_the_end() {
        let mut capture = Capture::new(8);
        capture.push(b"abc");
        assert_eq!(capture.text(), "abc");
        capture.push(b"defgh");
        assert_eq!(capture.text(), "abcdefgh");
        assert_eq!(capture.dropped(), 0);
        capture.push(b"ijklmn");
        assert_eq!(capture.dropped(), 6);
        assert_eq!(capture.text(), "abcd\n[… 6 bytes omitted …]\nklmn");
        let mut odd = Capture::new(3);
        odd.push(b"123456");
        assert_eq!(odd.text(), "12\n[… 3 bytes omitted …]\n6");
    }
}
