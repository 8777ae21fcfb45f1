//! A pod's backup hooks around the backup of its volumes: once per pod per backup, the pre hook
//! before all of the pod's volumes and the post hook after them.
//!
//! - A pre hook that fails the pod (on-error Fail, or cancelled) stops there: the volumes are
//!   not backed up (no restic runs) and the post hook does not run, as in Velero.
//! - Otherwise the volumes are backed up, and the post hook runs after them whatever their
//!   result, even when the backup was cancelled meanwhile: a pre hook that froze a database
//!   must be followed by the post hook that thaws it. The post hook is bounded by its own
//!   timeout only.
//! - Both hooks' containers are resolved before anything runs, so a hook naming a container
//!   the pod lacks fails the pod without side effects.

use std::future::Future;

use k8s_openapi::api::core::v1::Pod;
use tokio_util::sync::CancellationToken;

use crate::{
    annotations::{BackupHooks, ExecHook},
    exec::{ExecTarget, HookRun, PodExec, TargetError, run_hook, target},
};

/// What happened around one pod's volumes.
#[derive(Debug)]
pub struct HookedBackup<T> {
    /// The pre hooks that ran, in order; the last one failed the pod when any did.
    pub pre: Vec<HookRun>,
    /// The volumes' result; None when a pre hook failed the pod.
    pub volumes: Option<T>,
    pub post: Vec<HookRun>,
}

impl<T> HookedBackup<T> {
    /// Why the pod's volumes fail because of a hook, if they do: a pre hook's failure (its
    /// volumes were not backed up) or a post hook's (with on-error Fail).
    pub fn failure(&self) -> Option<String> {
        self.runs().find(|run| run.fails_pod()).map(HookRun::reason)
    }

    /// The runs that happened, pre hooks first, for the backup's log and records.
    pub fn runs(&self) -> impl Iterator<Item = &HookRun> {
        self.pre.iter().chain(&self.post)
    }
}

/// Each hook with the container it runs in.
fn targets<'h>(
    pod: &Pod,
    hooks: &'h [ExecHook],
) -> Result<Vec<(&'h ExecHook, ExecTarget)>, TargetError> {
    hooks
        .iter()
        .map(|hook| Ok((hook, target(pod, hook)?)))
        .collect()
}

/// Runs `hooks` one after the other in their containers, stopping after the first run that
/// fails the pod (Velero stops a phase's hooks at the first error of a Fail hook).
async fn run_in_order<E: PodExec>(
    exec: &E,
    hooks: Vec<(&ExecHook, ExecTarget)>,
    output_limit: usize,
    cancel: &CancellationToken,
) -> Vec<HookRun> {
    let mut runs = Vec::new();
    for (hook, target) in hooks {
        let run = run_hook(exec, target, hook, output_limit, cancel).await;
        let stop = run.fails_pod();
        runs.push(run);
        if stop {
            break;
        }
    }
    runs
}

/// Runs `hooks` of `pod` around `volumes` (the backup of all of the pod's volumes), as the
/// module comment says. `cancel` is the backup's: it stops the pre hooks and is for `volumes`
/// to honour; the post hooks do not see it.
pub async fn around_pod_volumes<E, F, T>(
    exec: &E,
    pod: &Pod,
    hooks: &BackupHooks,
    output_limit: usize,
    cancel: &CancellationToken,
    volumes: F,
) -> Result<HookedBackup<T>, TargetError>
where
    E: PodExec,
    F: Future<Output = T>,
{
    let pre = targets(pod, &hooks.pre)?;
    let post = targets(pod, &hooks.post)?;
    let pre = run_in_order(exec, pre, output_limit, cancel).await;
    if pre.iter().any(HookRun::fails_pod) {
        return Ok(HookedBackup {
            pre,
            volumes: None,
            post: Vec::new(),
        });
    }
    let volumes = volumes.await;
    // Not the backup's token: the post hooks undo what the pre hooks did.
    let post = run_in_order(exec, post, output_limit, &CancellationToken::new()).await;
    Ok(HookedBackup {
        pre,
        volumes: Some(volumes),
        post,
    })
}

/// Whether a post-restore hook can run now in `container` of `pod` (Velero waits the same
/// way): the container is running, and ready too when the hook asks `wait_for_ready`. An
/// error when it never will: the pod has ended.
pub fn container_up(pod: &Pod, container: &str, wait_for_ready: bool) -> Result<bool, String> {
    let status = pod.status.as_ref();
    if let Some(phase @ ("Succeeded" | "Failed")) = status.and_then(|s| s.phase.as_deref()) {
        return Err(format!(
            "pod {}/{} is {phase}: container {container} will not run the post-restore hook",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default(),
        ));
    }
    let up = status
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|statuses| statuses.iter().find(|s| s.name == container))
        .is_some_and(|s| {
            s.state
                .as_ref()
                .is_some_and(|state| state.running.is_some())
                && (!wait_for_ready || s.ready)
        });
    Ok(up)
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::Duration,
    };

    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use kube::api::ObjectMeta;

    use super::*;
    use crate::{
        annotations::{ExecHook, HookPhase, OnError},
        exec::{ExecError, ExecTarget, HookResult, Output},
        testing::{cancel_after, db_status},
    };

    /// Runs a command by its first word: `ok`, `fail` (exit 1, stderr "boom"), `hang`; and
    /// writes each into the shared event log.
    #[derive(Clone, Default)]
    struct ScriptedExec {
        events: Arc<Mutex<Vec<String>>>,
    }

    impl PodExec for ScriptedExec {
        async fn exec(
            &self,
            target: &ExecTarget,
            command: &[String],
            output: &mut Output,
        ) -> Result<i32, ExecError> {
            self.events
                .lock()
                .unwrap()
                .push(format!("{} in {}", command[0], target.container));
            match command[0].as_str() {
                "fail" => {
                    output.stderr.push(b"boom\n");
                    Ok(1)
                }
                "hang" => std::future::pending().await,
                _ => Ok(0),
            }
        }
    }

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("db-0".into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "db".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn hook(phase: HookPhase, command: &str, on_error: OnError) -> ExecHook {
        ExecHook {
            phase,
            container: None,
            command: vec![command.to_string()],
            on_error,
            timeout: Duration::from_secs(30),
            wait_timeout: None,
            wait_for_ready: false,
        }
    }

    fn hooks(pre: Option<(&str, OnError)>, post: Option<(&str, OnError)>) -> BackupHooks {
        BackupHooks {
            pre: pre
                .map(|(command, on_error)| hook(HookPhase::PreBackup, command, on_error))
                .into_iter()
                .collect(),
            post: post
                .map(|(command, on_error)| hook(HookPhase::PostBackup, command, on_error))
                .into_iter()
                .collect(),
        }
    }

    /// The volumes' stand-in: records that it ran and answers `result`.
    async fn volumes(events: Arc<Mutex<Vec<String>>>, result: &'static str) -> &'static str {
        events.lock().unwrap().push("volumes".to_string());
        result
    }

    #[tokio::test]
    async fn pre_then_volumes_then_post() {
        let exec = ScriptedExec::default();
        let outcome = around_pod_volumes(
            &exec,
            &pod(),
            &hooks(Some(("ok", OnError::Fail)), Some(("ok", OnError::Fail))),
            64,
            &CancellationToken::new(),
            volumes(exec.events.clone(), "2 volumes done"),
        )
        .await
        .unwrap();
        assert_eq!(
            *exec.events.lock().unwrap(),
            ["ok in db", "volumes", "ok in db"]
        );
        assert_eq!(outcome.volumes, Some("2 volumes done"));
        assert_eq!(outcome.failure(), None);
        assert_eq!(outcome.runs().count(), 2);
    }

    #[tokio::test]
    async fn a_failing_pre_hook_with_fail_runs_no_volumes_and_no_post_hook() {
        let exec = ScriptedExec::default();
        let outcome = around_pod_volumes(
            &exec,
            &pod(),
            &hooks(Some(("fail", OnError::Fail)), Some(("ok", OnError::Fail))),
            64,
            &CancellationToken::new(),
            volumes(exec.events.clone(), "done"),
        )
        .await
        .unwrap();
        assert_eq!(*exec.events.lock().unwrap(), ["fail in db"]);
        assert_eq!(outcome.volumes, None);
        assert!(outcome.post.is_empty());
        assert_eq!(
            outcome.failure().as_deref(),
            Some(r#"pre-backup hook ["fail"] in shop/db-0 container db exited with code 1: boom"#)
        );
    }

    #[tokio::test]
    async fn a_failing_pre_hook_with_continue_goes_on() {
        let exec = ScriptedExec::default();
        let outcome = around_pod_volumes(
            &exec,
            &pod(),
            &hooks(
                Some(("fail", OnError::Continue)),
                Some(("ok", OnError::Fail)),
            ),
            64,
            &CancellationToken::new(),
            volumes(exec.events.clone(), "done"),
        )
        .await
        .unwrap();
        assert_eq!(
            *exec.events.lock().unwrap(),
            ["fail in db", "volumes", "ok in db"]
        );
        assert_eq!(outcome.failure(), None);
        assert_eq!(
            outcome.pre.first().map(|run| run.result.clone()),
            Some(HookResult::Exited(1)),
            "the failure is still recorded for the log"
        );
    }

    #[tokio::test]
    async fn a_failing_post_hook_with_fail_fails_the_pod_after_its_volumes() {
        let exec = ScriptedExec::default();
        let outcome = around_pod_volumes(
            &exec,
            &pod(),
            &hooks(None, Some(("fail", OnError::Fail))),
            64,
            &CancellationToken::new(),
            volumes(exec.events.clone(), "done"),
        )
        .await
        .unwrap();
        assert_eq!(outcome.volumes, Some("done"));
        assert!(
            outcome
                .failure()
                .unwrap()
                .starts_with("post-backup hook [\"fail\"]"),
            "{:?}",
            outcome.failure()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_post_hook_runs_even_when_the_backup_is_cancelled_meanwhile() {
        let exec = ScriptedExec::default();
        let cancel = CancellationToken::new();
        let events = exec.events.clone();
        let cancelled_volumes = {
            let cancel = cancel.clone();
            async move {
                events.lock().unwrap().push("volumes".to_string());
                cancel.cancel();
                "cancelled"
            }
        };
        let outcome = around_pod_volumes(
            &exec,
            &pod(),
            &hooks(Some(("ok", OnError::Fail)), Some(("ok", OnError::Fail))),
            64,
            &cancel,
            cancelled_volumes,
        )
        .await
        .unwrap();
        assert_eq!(
            *exec.events.lock().unwrap(),
            ["ok in db", "volumes", "ok in db"]
        );
        assert_eq!(
            outcome.post.first().map(|run| run.result.clone()),
            Some(HookResult::Succeeded)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_during_the_pre_hook_runs_nothing_else() {
        let exec = ScriptedExec::default();
        let (cancel, canceller) = cancel_after(Duration::from_secs(1));
        let outcome = around_pod_volumes(
            &exec,
            &pod(),
            &hooks(
                Some(("hang", OnError::Continue)),
                Some(("ok", OnError::Fail)),
            ),
            64,
            &cancel,
            volumes(exec.events.clone(), "done"),
        )
        .await
        .unwrap();
        canceller.await.unwrap();
        assert_eq!(*exec.events.lock().unwrap(), ["hang in db"]);
        assert_eq!(outcome.volumes, None);
        assert!(outcome.failure().unwrap().contains("was cancelled"));
    }

    #[test]
    fn a_post_restore_hook_waits_for_its_container_to_run_or_be_ready() {
        let with_status = |phase: &str, running: bool, ready: bool| {
            let mut pod = pod();
            pod.status = Some(db_status(phase, running, ready));
            pod
        };
        assert_eq!(
            container_up(&pod(), "db", false),
            Ok(false),
            "no status yet"
        );
        assert_eq!(
            container_up(&with_status("Pending", false, false), "db", false),
            Ok(false)
        );
        assert_eq!(
            container_up(&with_status("Running", true, false), "db", false),
            Ok(true)
        );
        assert_eq!(
            container_up(&with_status("Running", true, false), "db", true),
            Ok(false)
        );
        assert_eq!(
            container_up(&with_status("Running", true, true), "db", true),
            Ok(true)
        );
        assert_eq!(
            container_up(&with_status("Running", true, true), "other", false),
            Ok(false)
        );
        assert_eq!(
            container_up(&with_status("Failed", false, false), "db", false),
            Err("pod shop/db-0 is Failed: container db will not run the post-restore hook".into())
        );
    }

    #[tokio::test]
    async fn an_unknown_container_fails_before_anything_runs() {
        let exec = ScriptedExec::default();
        let mut bad = hooks(Some(("ok", OnError::Fail)), Some(("ok", OnError::Fail)));
        bad.post[0].container = Some("sidecar".into());
        let error = around_pod_volumes(
            &exec,
            &pod(),
            &bad,
            64,
            &CancellationToken::new(),
            volumes(exec.events.clone(), "done"),
        )
        .await
        .unwrap_err();
        assert!(matches!(error, TargetError::NoSuchContainer { .. }));
        assert!(exec.events.lock().unwrap().is_empty());
    }
}
