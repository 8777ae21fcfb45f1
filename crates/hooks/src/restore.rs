//! A restored pod's post-restore exec hook (`post.hook.restore.velero.io/*`): it runs once the
//! pod's volumes are back and its container runs, as Velero's waiting hook handler does.
//!
//! - The pod is read every `poll` until the hook's container is running (and ready, with
//!   `wait-for-ready: true`). Its containers start only after the restore helper exits, which
//!   it does once every volume's data is in place, so a running container means restored data.
//! - The wait is bounded by the hook's `wait-timeout`, by the restore's deadline and by its
//!   cancellation token; a pod that ends or is deleted first ends the wait at once.
//! - Every way it ends is a [`HookRun`]: a hook that never started is recorded with why
//!   ([`HookResult::NotStarted`]) and weighed by its on-error like one that failed.

use std::{future::Future, time::SystemTime};

use k8s_openapi::api::core::v1::Pod;
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    annotations::ExecHook,
    exec::{ExecTarget, HookResult, HookRun, PodExec, run_hook, target},
    pod::container_up,
};

/// Where and how long a post-restore hook waits.
#[derive(Clone, Copy, Debug)]
pub struct Wait {
    /// How often the pod is read while its container is not up.
    pub poll: Duration,
    /// The restore's own deadline, which bounds a hook without `wait-timeout`.
    pub deadline: Option<Instant>,
    /// How much of each output stream the run keeps.
    pub output_limit: usize,
}

/// Waits for `hook`'s container in pod `namespace/name` (read by `fetch`) and runs the hook
/// there, as the module comment says. `fetch` answers None for a pod that is gone and an
/// error for a read that failed (it is tried again at the next poll).
pub async fn post_restore<E, F, Fut>(
    exec: &E,
    namespace: &str,
    name: &str,
    hook: &ExecHook,
    mut fetch: F,
    wait: Wait,
    cancel: &CancellationToken,
) -> HookRun
where
    E: PodExec,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<Pod>, String>>,
{
    let began = SystemTime::now();
    let own = hook.wait_timeout.map(|timeout| Instant::now() + timeout);
    let until = match (own, wait.deadline) {
        (Some(own), Some(deadline)) => Some(own.min(deadline)),
        (own, deadline) => own.or(deadline),
    };
    let mut target_of_last = ExecTarget {
        namespace: namespace.to_string(),
        pod: name.to_string(),
        container: hook.container.clone().unwrap_or_default(),
    };
    let mut last_error = String::new();
    loop {
        if cancel.is_cancelled() {
            return not_run(hook, target_of_last, HookResult::Cancelled, began);
        }
        match fetch().await {
            Ok(Some(pod)) => {
                let target = match target(&pod, hook) {
                    Ok(target) => target,
                    Err(error) => {
                        let result = HookResult::NotStarted(error.to_string());
                        return not_run(hook, target_of_last, result, began);
                    }
                };
                match container_up(&pod, &target.container, hook.wait_for_ready) {
                    Ok(true) => {
                        return run_hook(exec, target, hook, wait.output_limit, cancel).await;
                    }
                    Ok(false) => target_of_last = target,
                    Err(why) => {
                        return not_run(hook, target, HookResult::NotStarted(why), began);
                    }
                }
            }
            Ok(None) => {
                let why = format!("pod {namespace}/{name} was deleted");
                return not_run(hook, target_of_last, HookResult::NotStarted(why), began);
            }
            Err(error) => last_error = error,
        }
        if until.is_some_and(|until| Instant::now() >= until) {
            let mut why = match (hook.wait_timeout, own == until) {
                (Some(timeout), true) => format!(
                    "container {} was not {} within its wait-timeout {}",
                    target_of_last.container,
                    if hook.wait_for_ready {
                        "ready"
                    } else {
                        "running"
                    },
                    stowage_velero_format::format_go_duration(timeout)
                ),
                _ => format!(
                    "container {} was not {} before the restore's timeout",
                    target_of_last.container,
                    if hook.wait_for_ready {
                        "ready"
                    } else {
                        "running"
                    },
                ),
            };
            if !last_error.is_empty() {
                why.push_str(&format!(" (last error reading the pod: {last_error})"));
            }
            return not_run(hook, target_of_last, HookResult::NotStarted(why), began);
        }
        let nap = match until {
            Some(until) => wait
                .poll
                .min(until.saturating_duration_since(Instant::now())),
            None => wait.poll,
        };
        tokio::select! {
            () = cancel.cancelled() => {}
            () = tokio::time::sleep(nap) => {}
        }
    }
}

fn not_run(hook: &ExecHook, target: ExecTarget, result: HookResult, began: SystemTime) -> HookRun {
    let run = HookRun {
        phase: hook.phase,
        target,
        command: hook.command.clone(),
        on_error: hook.on_error,
        result,
        stdout: String::new(),
        stderr: String::new(),
        started: began,
        finished: SystemTime::now(),
    };
    tracing::warn!(reason = %run.reason(), fails_pod = run.fails_pod(), "post-restore hook not run");
    run
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        sync::{Arc, Mutex},
    };

    use super::*;
    use crate::{
        annotations::{HookPhase, OnError},
        exec::{ExecError, Output},
        testing::{cancel_after, db_status},
    };

    /// The container and command of each exec.
    type Calls = Arc<Mutex<Vec<(String, Vec<String>)>>>;
    /// What a pod read answers.
    type Read = Result<Option<Pod>, String>;

    /// Records each command and answers exit 0 with "restored" on stdout.
    #[derive(Clone, Default)]
    struct RecordingExec {
        calls: Calls,
    }

    impl PodExec for RecordingExec {
        async fn exec(
            &self,
            target: &ExecTarget,
            command: &[String],
            output: &mut Output,
        ) -> Result<i32, ExecError> {
            self.calls
                .lock()
                .unwrap()
                .push((target.container.clone(), command.to_vec()));
            output.stdout.push(b"restored\n");
            Ok(0)
        }
    }

    fn hook(wait_timeout: Option<Duration>, wait_for_ready: bool) -> ExecHook {
        ExecHook {
            phase: HookPhase::PostRestore,
            container: None,
            command: vec!["check".into()],
            on_error: OnError::Fail,
            timeout: Duration::from_secs(30),
            wait_timeout,
            wait_for_ready,
        }
    }

    /// Pod `shop/db-0` with container `db` in `phase`, running or waiting, ready or not.
    fn pod(phase: &str, running: bool, ready: bool) -> Pod {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db-0", "namespace": "shop"},
            "spec": {"containers": [{"name": "db"}]},
        }))
        .unwrap();
        pod.status = Some(db_status(phase, running, ready));
        pod
    }

    /// A `fetch` answering `states` in turn, then the last one forever; counts its reads.
    fn reads(states: Vec<Read>) -> (Arc<Mutex<usize>>, impl FnMut() -> std::future::Ready<Read>) {
        let count = Arc::new(Mutex::new(0));
        let mut states: VecDeque<_> = states.into();
        let counter = count.clone();
        let fetch = move || {
            *counter.lock().unwrap() += 1;
            let next = if states.len() > 1 {
                states.pop_front().unwrap()
            } else {
                states.front().cloned().unwrap()
            };
            std::future::ready(next)
        };
        (count, fetch)
    }

    fn wait() -> Wait {
        Wait {
            poll: Duration::from_secs(1),
            deadline: None,
            output_limit: 64,
        }
    }

    /// `hook` run in pod `shop/db-0` as the pod reads come, polled every second, with no
    /// deadline but the hook's own and nobody cancelling.
    async fn on_db(
        exec: &RecordingExec,
        hook: &ExecHook,
        fetch: impl FnMut() -> std::future::Ready<Read>,
    ) -> HookRun {
        post_restore(
            exec,
            "shop",
            "db-0",
            hook,
            fetch,
            wait(),
            &CancellationToken::new(),
        )
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn the_hook_runs_once_its_container_runs() {
        let exec = RecordingExec::default();
        let (count, fetch) = reads(vec![
            Ok(Some(pod("Pending", false, false))),
            Err("connection reset".into()),
            Ok(Some(pod("Running", true, false))),
        ]);
        let run = on_db(&exec, &hook(None, false), fetch).await;
        assert_eq!(run.result, HookResult::Succeeded, "{}", run.reason());
        assert_eq!(run.stdout, "restored\n");
        assert_eq!(*count.lock().unwrap(), 3);
        assert_eq!(
            *exec.calls.lock().unwrap(),
            [("db".to_string(), vec!["check".to_string()])]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn wait_for_ready_waits_past_running() {
        let exec = RecordingExec::default();
        let (count, fetch) = reads(vec![
            Ok(Some(pod("Running", true, false))),
            Ok(Some(pod("Running", true, false))),
            Ok(Some(pod("Running", true, true))),
        ]);
        let run = on_db(&exec, &hook(None, true), fetch).await;
        assert_eq!(run.result, HookResult::Succeeded);
        assert_eq!(*count.lock().unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_container_not_up_within_the_wait_timeout_is_not_run_and_fails_by_on_error() {
        let exec = RecordingExec::default();
        let (_, fetch) = reads(vec![Ok(Some(pod("Pending", false, false)))]);
        let started = Instant::now();
        let run = on_db(&exec, &hook(Some(Duration::from_secs(10)), false), fetch).await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert!(exec.calls.lock().unwrap().is_empty());
        assert!(run.fails_pod());
        assert_eq!(
            run.reason(),
            r#"post-restore hook ["check"] in shop/db-0 container db was not run: container db was not running within its wait-timeout 10s"#
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_restores_deadline_bounds_a_hook_without_wait_timeout() {
        let exec = RecordingExec::default();
        let (_, fetch) = reads(vec![Ok(Some(pod("Pending", false, false)))]);
        let run = post_restore(
            &exec,
            "shop",
            "db-0",
            &hook(None, false),
            fetch,
            Wait {
                poll: Duration::from_secs(1),
                deadline: Some(Instant::now() + Duration::from_secs(5)),
                output_limit: 64,
            },
            &CancellationToken::new(),
        )
        .await;
        assert!(
            run.reason()
                .ends_with("was not running before the restore's timeout"),
            "{}",
            run.reason()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_that_ended_or_went_away_ends_the_wait_at_once() {
        let exec = RecordingExec::default();
        let (count, fetch) = reads(vec![Ok(Some(pod("Failed", false, false)))]);
        let run = on_db(&exec, &hook(None, false), fetch).await;
        assert_eq!(*count.lock().unwrap(), 1);
        assert!(
            run.reason().contains("pod shop/db-0 is Failed"),
            "{}",
            run.reason()
        );

        let (_, fetch) = reads(vec![Ok(None)]);
        let run = on_db(&exec, &hook(None, false), fetch).await;
        assert_eq!(
            run.result,
            HookResult::NotStarted("pod shop/db-0 was deleted".into())
        );
        assert!(exec.calls.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_the_restore_ends_the_wait() {
        let exec = RecordingExec::default();
        let (_, fetch) = reads(vec![Ok(Some(pod("Pending", false, false)))]);
        let (cancel, canceller) = cancel_after(Duration::from_secs(3));
        let run = post_restore(
            &exec,
            "shop",
            "db-0",
            &hook(None, false),
            fetch,
            wait(),
            &cancel,
        )
        .await;
        canceller.await.unwrap();
        assert_eq!(run.result, HookResult::Cancelled);
        assert!(exec.calls.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_hook_naming_a_missing_container_is_not_run() {
        let exec = RecordingExec::default();
        let (_, fetch) = reads(vec![Ok(Some(pod("Running", true, true)))]);
        let mut bad = hook(None, false);
        bad.container = Some("sidecar".into());
        let run = on_db(&exec, &bad, fetch).await;
        assert!(
            run.reason().contains("has no container `sidecar`"),
            "{}",
            run.reason()
        );
        assert!(exec.calls.lock().unwrap().is_empty());
    }
}
