//! The tonic handlers of the VolumeAgent service: check the request, plan the job, run it as a
//! tracked task that streams events, and map errors to status codes (in `error.rs`).

use std::pin::Pin;

use stowage_metrics::agent::{FinalPhase, OperationKind};
use stowage_proto::v1::{
    AbandonRestoreRequest, AbandonRestoreResponse, AgentInfo, BackupVolumeEvent,
    BackupVolumeRequest, BackupVolumeResult, CancelOperationRequest, CancelOperationResponse,
    GetAgentInfoRequest, Queued, RestoreVolumeEvent, RestoreVolumeRequest, RestoreVolumeResult,
    RunningRestic, backup_volume_event, restore_volume_event, volume_agent_server::VolumeAgent,
};
use stowage_restic::PeakRss;
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::{
    error::AgentError,
    jobs::{self, AgentContext, JobEvent},
    operations::{OperationHandle, Operations},
};

/// The restic processes alive on this host: named `restic` or as the configured binary's file
/// (a wrapper script), with their start times, so a reused pid can be told from the lock's own
/// restic. Reading `/proc` of the agent's own PID namespace takes a few directory reads.
fn running_restic(binary: &std::path::Path) -> std::io::Result<Vec<RunningRestic>> {
    let configured = binary.file_name().and_then(|name| name.to_str());
    let mut names = vec!["restic"];
    names.extend(configured);
    Ok(stowage_restic::ProcessTable::host()
        .running(&names)?
        .into_iter()
        .map(|process| RunningRestic {
            pid: process.pid,
            started: Some(process.started.into()),
        })
        .collect())
}

pub type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Events buffered per stream; progress beyond this is dropped, never the result.
const EVENT_BUFFER: usize = 32;

pub struct AgentApi {
    context: AgentContext,
    operations: Operations,
    restic_version: String,
}

impl AgentApi {
    pub fn new(context: AgentContext, operations: Operations, restic_version: String) -> Self {
        Self {
            context,
            operations,
            restic_version,
        }
    }
}

/// `context` with a runner that also records the peak RSS of each of its restic runs into
/// `peak`, so a job's result and metrics can say how much memory its restic needed.
fn measured(context: &AgentContext, peak: &PeakRss) -> AgentContext {
    AgentContext {
        restic: context.restic.measuring(peak),
        ..context.clone()
    }
}

/// Runs `work` once a slot is free, sending `queued` if it has to wait, and the result or the
/// error as the last item. A caller that hangs up cancels the work, so no restic outlives it.
/// The ending is counted in the agent's metrics (`bytes` records what a success moved);
/// `failed` learns of a failure or a cancellation, queued or running, before the caller does.
#[allow(clippy::too_many_arguments)]
async fn drive<T, W, F>(
    handle: OperationHandle,
    kind: OperationKind,
    tx: mpsc::Sender<Result<T, Status>>,
    queued: impl FnOnce(u32) -> T,
    bytes: impl FnOnce(&stowage_metrics::agent::AgentMetrics, &W),
    result: impl FnOnce(W) -> T,
    failed: impl FnOnce(&AgentError),
    work: F,
) where
    F: Future<Output = Result<W, AgentError>>,
{
    let id = handle.id().to_string();
    let accepted = std::time::Instant::now();
    let metrics = handle.metrics().clone();
    let outcome = async {
        let queued_tx = tx.clone();
        let Some(_slot) = handle
            .start(|position| {
                let _ = queued_tx.try_send(Ok(queued(position)));
            })
            .await
        else {
            return Err(AgentError::Cancelled(id.clone()));
        };
        tracing::debug!("operation started");
        work.await.map_err(|error| match error {
            AgentError::Restic(restic) if restic.is_cancelled() => {
                AgentError::Cancelled(id.clone())
            }
            other => other,
        })
    };
    let outcome = {
        let mut outcome = std::pin::pin!(outcome);
        let mut hung_up = false;
        loop {
            tokio::select! {
                finished = &mut outcome => break finished,
                _ = tx.closed(), if !hung_up => {
                    tracing::info!("caller went away, cancelling");
                    hung_up = true;
                    handle.cancel.cancel();
                }
            }
        }
    };
    let phase = match &outcome {
        Ok(_) => FinalPhase::Completed,
        Err(AgentError::Cancelled(_)) => FinalPhase::Cancelled,
        Err(_) => FinalPhase::Failed,
    };
    metrics.operation_ended(kind, phase, accepted.elapsed().as_secs_f64());
    match &outcome {
        Ok(value) => bytes(&metrics, value),
        Err(error) => failed(error),
    }
    let item = match outcome {
        Ok(value) => Ok(result(value)),
        Err(AgentError::Cancelled(_)) => {
            tracing::info!("operation cancelled");
            Err(Status::from(AgentError::Cancelled(id)))
        }
        Err(error) => {
            tracing::warn!(%error, "operation failed");
            Err(Status::from(error))
        }
    };
    let _ = tx.send(item).await;
    drop(handle);
}

#[tonic::async_trait]
impl VolumeAgent for AgentApi {
    type BackupVolumeStream = EventStream<BackupVolumeEvent>;
    type RestoreVolumeStream = EventStream<RestoreVolumeEvent>;

    #[tracing::instrument(skip_all, fields(
        operation = %request.get_ref().operation_id,
        namespace = request.get_ref().volume.as_ref().map(|v| v.namespace.as_str()).unwrap_or(""),
        pod = request.get_ref().volume.as_ref().map(|v| v.pod_name.as_str()).unwrap_or(""),
        volume = request.get_ref().volume.as_ref().map(|v| v.volume_name.as_str()).unwrap_or(""),
        backup = %request.get_ref().backup_name,
        node = %self.context.node_name,
        repository = request.get_ref().repository.as_ref().map(|r| r.url.as_str()).unwrap_or(""),
        parent_snapshot_id = tracing::field::Empty,
        snapshot_id = tracing::field::Empty,
        bytes = tracing::field::Empty,
        bytes_added = tracing::field::Empty,
        bytes_stored = tracing::field::Empty,
        bytes_done = tracing::field::Empty,
        files_done = tracing::field::Empty,
    ))]
    async fn backup_volume(
        &self,
        request: Request<BackupVolumeRequest>,
    ) -> Result<Response<Self::BackupVolumeStream>, Status> {
        let request = request.into_inner();
        let operation_id = request.operation_id.clone();
        let plan = jobs::plan_backup(&self.context, request).map_err(Status::from)?;
        let handle = self
            .operations
            .register(&operation_id)
            .map_err(|error| Status::from(AgentError::from(error)))?;
        tracing::info!(path = %plan.path.path.display(), identity = %plan.identity, "backup accepted");
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let peak = PeakRss::new();
        let context = measured(&self.context, &peak);
        let metrics = handle.metrics().clone();
        let cancel = handle.cancel.clone();
        let progress_tx = tx.clone();
        let task = drive(
            handle,
            OperationKind::backup,
            tx,
            |position| BackupVolumeEvent {
                event: Some(backup_volume_event::Event::Queued(Queued { position })),
            },
            |metrics, result| metrics.backed_up(result.bytes_total, result.bytes_added),
            |result| BackupVolumeEvent {
                event: Some(backup_volume_event::Event::Result(result)),
            },
            |_| {},
            async move {
                let result = jobs::backup(&context, &plan, &cancel, move |event| {
                    let event = match event {
                        JobEvent::Progress(progress) => {
                            backup_volume_event::Event::Progress(progress)
                        }
                        JobEvent::Retrying(retrying) => {
                            backup_volume_event::Event::Retrying(retrying)
                        }
                    };
                    let _ = progress_tx.try_send(Ok(BackupVolumeEvent { event: Some(event) }));
                })
                .await;
                metrics.restic_peak_rss(OperationKind::backup, peak.bytes());
                result.map(|result| BackupVolumeResult {
                    restic_peak_rss_bytes: peak.bytes(),
                    ..result
                })
            },
        );
        self.operations
            .tasks()
            .spawn(task.instrument(tracing::Span::current()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[tracing::instrument(skip_all, fields(
        operation = %request.get_ref().operation_id,
        namespace = request.get_ref().volume.as_ref().map(|v| v.namespace.as_str()).unwrap_or(""),
        pod = request.get_ref().volume.as_ref().map(|v| v.pod_name.as_str()).unwrap_or(""),
        volume = request.get_ref().volume.as_ref().map(|v| v.volume_name.as_str()).unwrap_or(""),
        restore = %request.get_ref().restore_name,
        snapshot_id = %request.get_ref().snapshot_id,
        node = %self.context.node_name,
        repository = request.get_ref().repository.as_ref().map(|r| r.url.as_str()).unwrap_or(""),
        bytes = tracing::field::Empty,
    ))]
    async fn restore_volume(
        &self,
        request: Request<RestoreVolumeRequest>,
    ) -> Result<Response<Self::RestoreVolumeStream>, Status> {
        let request = request.into_inner();
        let operation_id = request.operation_id.clone();
        let plan = jobs::plan_restore(&self.context, request).map_err(Status::from)?;
        let handle = self
            .operations
            .register(&operation_id)
            .map_err(|error| Status::from(AgentError::from(error)))?;
        tracing::info!(path = %plan.path.path.display(), "restore accepted");
        let volume_dir = plan.path.path.clone();
        let restore_uid = plan.restore_uid.clone();
        let data_only = plan.data_only;
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let peak = PeakRss::new();
        let context = measured(&self.context, &peak);
        let metrics = handle.metrics().clone();
        let cancel = handle.cancel.clone();
        let progress_tx = tx.clone();
        let task = drive(
            handle,
            OperationKind::restore,
            tx,
            |position| RestoreVolumeEvent {
                event: Some(restore_volume_event::Event::Queued(Queued { position })),
            },
            |metrics, result| metrics.restored(result.bytes_restored),
            |result| RestoreVolumeEvent {
                event: Some(restore_volume_event::Event::Result(result)),
            },
            // The pod's restore helper waits for this volume: tell it now, not at its timeout.
            // A data-only restore has no helper to tell.
            move |error| {
                if data_only {
                    return;
                }
                let reason = match error {
                    AgentError::Cancelled(_) => {
                        format!("the restore of the volume was cancelled: {error}")
                    }
                    _ => format!("restoring the volume failed: {error}"),
                };
                if let Err(marker) = jobs::write_failure(&volume_dir, &restore_uid, &reason) {
                    tracing::error!(%marker, "cannot tell the restore helper the volume failed");
                }
            },
            async move {
                let result = jobs::restore(&context, &plan, &cancel, move |event| {
                    let event = match event {
                        JobEvent::Progress(progress) => {
                            restore_volume_event::Event::Progress(progress)
                        }
                        JobEvent::Retrying(retrying) => {
                            restore_volume_event::Event::Retrying(retrying)
                        }
                    };
                    let _ = progress_tx.try_send(Ok(RestoreVolumeEvent { event: Some(event) }));
                })
                .await;
                metrics.restic_peak_rss(OperationKind::restore, peak.bytes());
                result.map(|result| RestoreVolumeResult {
                    restic_peak_rss_bytes: peak.bytes(),
                    ..result
                })
            },
        );
        self.operations
            .tasks()
            .spawn(task.instrument(tracing::Span::current()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[tracing::instrument(skip_all, fields(operation = %request.get_ref().operation_id))]
    async fn cancel_operation(
        &self,
        request: Request<CancelOperationRequest>,
    ) -> Result<Response<CancelOperationResponse>, Status> {
        crate::names::operation_id(&request.get_ref().operation_id).map_err(Status::from)?;
        let cancelled = self.operations.cancel(&request.get_ref().operation_id);
        tracing::info!(cancelled, "cancel requested");
        Ok(Response::new(CancelOperationResponse { cancelled }))
    }

    #[tracing::instrument(skip_all, fields(node = %self.context.node_name))]
    async fn get_agent_info(
        &self,
        _request: Request<GetAgentInfoRequest>,
    ) -> Result<Response<AgentInfo>, Status> {
        let (running, queued) = self.operations.counts();
        // The repo-manager judges the restic locks of this pod by this list: a lock whose pid
        // is not here belongs to a killed restic. A table that cannot be read is an error, not
        // an empty list, which would call every lock of this pod dead.
        let restic =
            running_restic(self.context.restic.binary()).map_err(AgentError::ProcessTable)?;
        Ok(Response::new(AgentInfo {
            node_name: self.context.node_name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            max_concurrent_operations: self.operations.max_concurrent(),
            running_operations: running,
            queued_operations: queued,
            pods_root: self.context.pods_root.display().to_string(),
            restic_version: self.restic_version.clone(),
            host_name: stowage_restic::locks::hostname(),
            running_restic: restic,
        }))
    }

    #[tracing::instrument(skip_all, fields(
        namespace = request.get_ref().volume.as_ref().map(|v| v.namespace.as_str()).unwrap_or(""),
        pod = request.get_ref().volume.as_ref().map(|v| v.pod_name.as_str()).unwrap_or(""),
        volume = request.get_ref().volume.as_ref().map(|v| v.volume_name.as_str()).unwrap_or(""),
        restore_uid = %request.get_ref().restore_uid,
        node = %self.context.node_name,
    ))]
    async fn abandon_restore(
        &self,
        request: Request<AbandonRestoreRequest>,
    ) -> Result<Response<AbandonRestoreResponse>, Status> {
        let written =
            jobs::abandon_restore(&self.context, request.get_ref()).map_err(Status::from)?;
        if written.is_none() {
            tracing::info!("the pod volume is not on this node; no failure marker written");
        }
        Ok(Response::new(AbandonRestoreResponse {
            written: written.is_some(),
        }))
    }
}
