//! How a service runs its election, written once for the orchestrator and the repo-manager:
//! stand for election (or lead alone), serve health while standing by, start the work once
//! leading, exit at once when the leadership is lost, and release the Lease only after the
//! work has stopped.

use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{Elector, LeaderError, Leadership, PodLabel, Settings, exit_lost};

/// A replica's election as its service runs it.
pub struct Election {
    leadership: Leadership,
    task: Option<JoinHandle<Result<(), LeaderError>>>,
    stop: CancellationToken,
    /// This replica's Pod, labelled once it leads (None when it leads alone).
    pod: Option<PodLabel>,
}

impl Election {
    /// Stands for election with `settings` (the Lease reached with the in-cluster config or
    /// `KUBECONFIG`), or leads alone when they are None (election off).
    pub async fn start(settings: Option<Settings>) -> Result<Election, LeaderError> {
        let stop = CancellationToken::new();
        let Some(settings) = settings else {
            return Ok(Election {
                leadership: Leadership::sole(),
                task: None,
                stop,
                pod: None,
            });
        };
        let config = kube::Config::infer()
            .await
            .map_err(|error| LeaderError::Config(error.to_string()))?;
        let (elector, leadership) = Elector::new(config, settings)?;
        let pod = elector.pod_label();
        let task = tokio::spawn(elector.run(stop.clone()));
        Ok(Election {
            leadership,
            task: Some(task),
            stop,
            pod: Some(pod),
        })
    }

    pub fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    /// Serves until `server` ends: once this replica leads (unless `shutdown` fires first),
    /// `lead` starts the service's work and opens its service, then this replica's Pod is
    /// labelled the leader's (retried until it is), so the Service routes callers to it; when
    /// the leadership is lost (also while `lead` runs) the process exits at once
    /// ([`exit_lost`], naming `service`). The server task's outcome, or `lead`'s error.
    pub async fn serve<T, E>(
        &self,
        server: &mut JoinHandle<T>,
        shutdown: &CancellationToken,
        service: &'static str,
        lead: impl AsyncFnOnce() -> Result<(), E>,
    ) -> Result<Result<T, JoinError>, E> {
        let lost = self.leadership.lost();
        tokio::select! {
            served = &mut *server => return Ok(served),
            leads = self.leadership.acquired(shutdown) => {
                if leads {
                    tokio::select! {
                        led = lead() => led?,
                        () = lost.cancelled() => exit_lost(service),
                    }
                }
            }
        }
        let labelled = async {
            if self.leadership.is_leader()
                && let Some(pod) = &self.pod
            {
                pod.set(shutdown).await;
            }
        };
        tokio::pin!(labelled);
        let mut labelling = true;
        loop {
            tokio::select! {
                served = &mut *server => return Ok(served),
                () = lost.cancelled() => exit_lost(service),
                () = &mut labelled, if labelling => labelling = false,
            }
        }
    }

    /// Leaves the election once nothing works any more: a held Lease is released, so a
    /// standby takes over at once instead of after the lease duration.
    pub async fn release(self) {
        self.stop.cancel();
        if let Some(task) = self.task {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "leader election"),
                Err(error) => tracing::error!(%error, "the leader election task failed"),
            }
        }
    }
}
