//! The tonic handlers of the VolumeAgent service: check the request (and its leader term, see
//! `stowage_contract::fencing`), plan the job, run it as a tracked task whose events go through
//! the operation's relay to whoever is attached, and map errors to status codes (in
//! `error.rs`).

use std::{pin::Pin, sync::Arc, time::Duration};

use stowage_contract::fencing::TermFence;
use stowage_metrics::agent::{FinalPhase, OperationKind};
use stowage_proto::v1::{
    AbandonRestoreRequest, AbandonRestoreResponse, AgentInfo, AgentOperation, AgentOperationKind,
    AgentOperationState, AttachOperationRequest, BackupVolumeEvent, BackupVolumeRequest,
    BackupVolumeResult, CancelOperationRequest, CancelOperationResponse, GetAgentInfoRequest,
    Queued, RestoreVolumeEvent, RestoreVolumeRequest, RestoreVolumeResult, RunningRestic,
    agent_operation, backup_volume_event, restore_volume_event, volume_agent_server::VolumeAgent,
};
use stowage_restic::PeakRss;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::{
    error::AgentError,
    jobs::{self, AgentContext, JobEvent},
    operations::{OperationHandle, OperationInfo, Operations, RelayKind, Relays},
    relay::{Item, Relay, Snapshot},
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

/// A registered operation: its relay, the first caller's end of it, and its table entry.
type Registered<T> = (
    Arc<Relay<T>>,
    tokio::sync::mpsc::Receiver<Item<T>>,
    OperationHandle,
);

pub struct AgentApi {
    context: AgentContext,
    operations: Operations,
    restic_version: String,
    /// How long an operation whose caller went away keeps running (and an ended one keeps
    /// its result) for a new caller to attach.
    detach_grace: Duration,
    fence: TermFence,
}

impl AgentApi {
    pub fn new(
        context: AgentContext,
        operations: Operations,
        restic_version: String,
        detach_grace: Duration,
    ) -> Self {
        Self {
            context,
            operations,
            restic_version,
            detach_grace,
            fence: TermFence::new(),
        }
    }

    /// Refuses a request from a leader older than one this agent has heard from.
    fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        stowage_grpc::fencing::admit(&self.fence, request)
    }
}

/// The GetAgentInfo row of one operation, from what its relay holds.
fn describe<T>(
    id: &str,
    info: &OperationInfo,
    running: bool,
    kind: AgentOperationKind,
    snapshot: Snapshot<T>,
    progress: impl Fn(&T) -> Option<stowage_proto::v1::Progress>,
    result: impl Fn(T) -> Option<agent_operation::Result>,
) -> AgentOperation {
    let mut row = AgentOperation {
        operation_id: id.to_string(),
        kind: kind as i32,
        volume: info.volume.clone(),
        name: info.name.clone(),
        uid: info.uid.clone(),
        progress: snapshot.latest.as_ref().and_then(&progress),
        attached: snapshot.attached,
        ..Default::default()
    };
    let state = match snapshot.ended {
        None if running => AgentOperationState::Running,
        None => AgentOperationState::Queued,
        Some(Ok(event)) => {
            row.result = result(event);
            AgentOperationState::Succeeded
        }
        Some(Err(status)) => {
            row.error = status.message().to_string();
            if status.code() == tonic::Code::Cancelled {
                AgentOperationState::Cancelled
            } else {
                AgentOperationState::Failed
            }
        }
    };
    row.state = state as i32;
    row
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
/// error as the last item, all through `relay` to whoever is attached. A caller that goes
/// away does not stop the work at once: it keeps running for `grace`, for a new caller (an
/// orchestrator taking over) to attach; once nobody has been attached for `grace` it is
/// cancelled, so no restic outlives its callers for long. An ended operation keeps its result
/// for `grace` too, then its entry goes. The ending is counted in the agent's metrics
/// (`bytes` records what a success moved); `failed` learns of a failure or a cancellation,
/// queued or running, before the caller does.
#[allow(clippy::too_many_arguments)]
async fn drive<T, W, F>(
    handle: OperationHandle,
    kind: OperationKind,
    relay: Arc<Relay<T>>,
    grace: Duration,
    queued: impl FnOnce(u32) -> T,
    bytes: impl FnOnce(&stowage_metrics::agent::AgentMetrics, &W),
    result: impl FnOnce(W) -> T,
    failed: impl FnOnce(&AgentError),
    work: F,
) -> OperationHandle
where
    F: Future<Output = Result<W, AgentError>>,
    T: Clone + Send + 'static,
{
    let id = handle.id().to_string();
    let accepted = std::time::Instant::now();
    let metrics = handle.metrics().clone();
    let outcome = async {
        let Some(_slot) = handle
            .start(|position| relay.send(queued(position), true))
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
        let mut unattended = std::pin::pin!(relay.unattended_for(grace));
        let mut given_up = false;
        loop {
            tokio::select! {
                finished = &mut outcome => break finished,
                () = &mut unattended, if !given_up => {
                    tracing::info!(
                        grace_seconds = grace.as_secs(),
                        "no caller attached for the detach grace period, cancelling"
                    );
                    given_up = true;
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
    relay.finish(item, grace).await;
    handle.ended();
    handle
}

/// Keeps an ended operation's entry (and so its result) for a caller that went away before
/// the result: its successor attaches for it within `grace`, unless cancelled or shut down.
/// Run outside the operation's span, which ends with the result, not `grace` later.
async fn keep_for_a_late_caller(handle: OperationHandle, grace: Duration) {
    tokio::select! {
        () = tokio::time::sleep(grace) => {}
        () = handle.cancel.cancelled() => {}
    }
    drop(handle);
}

impl AgentApi {
    /// The relay of operation `id`; NotFound when this agent does not have it.
    fn attachable(&self, id: &str) -> Result<Relays, Status> {
        crate::names::operation_id(id).map_err(Status::from)?;
        self.operations
            .get(id)
            .map(|info| info.relay.clone())
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no operation `{id}` on this agent: it never ran here, or it ended and \
                     its result was forgotten"
                ))
            })
    }

    /// AttachBackup and AttachRestore: the caller becomes the only one of operation `id`,
    /// which must be of kind `T` (InvalidArgument naming its kind otherwise).
    fn attach<T: RelayKind>(
        &self,
        request: Request<AttachOperationRequest>,
    ) -> Result<Response<EventStream<T>>, Status> {
        self.admit(&request)?;
        let id = &request.get_ref().operation_id;
        let relays = self.attachable(id)?;
        let kind = relays.kind();
        let relay = T::relay(relays).ok_or_else(|| {
            Status::invalid_argument(format!("operation `{id}` is a {kind}, not a {}", T::KIND))
        })?;
        tracing::info!("caller attached to a running {}", T::KIND);
        Ok(Response::new(Box::pin(ReceiverStream::new(relay.attach()))))
    }

    /// A new operation `id` of kind `T` in the table, its relay with the caller's stream
    /// attached; refused when `id` is queued or running already.
    fn register<T: RelayKind>(
        &self,
        id: &str,
        volume: Option<stowage_proto::v1::PodVolumeRef>,
        name: String,
        uid: String,
    ) -> Result<Registered<T>, Status> {
        let (relay, rx) = Relay::new();
        let relay = Arc::new(relay);
        let info = OperationInfo {
            volume,
            name,
            uid,
            relay: T::relays(relay.clone()),
        };
        let handle = self
            .operations
            .register(id, info)
            .map_err(|error| Status::from(AgentError::from(error)))?;
        Ok((relay, rx, handle))
    }

    /// Runs an accepted operation's `task` as a tracked task in the handler's span, keeps its
    /// entry for a late caller afterwards, and answers the caller with its stream.
    fn start<T: RelayKind>(
        &self,
        task: impl Future<Output = OperationHandle> + Send + 'static,
        rx: tokio::sync::mpsc::Receiver<Item<T>>,
    ) -> Response<EventStream<T>> {
        let grace = self.detach_grace;
        let span = tracing::Span::current();
        self.operations.tasks().spawn(async move {
            let handle = task.instrument(span).await;
            keep_for_a_late_caller(handle, grace).await;
        });
        Response::new(Box::pin(ReceiverStream::new(rx)))
    }

    fn operation_rows(&self) -> Vec<AgentOperation> {
        self.operations
            .list()
            .into_iter()
            .map(|listed| {
                let running = listed.running && !listed.ended;
                match &listed.info.relay {
                    Relays::Backup(relay) => describe(
                        &listed.id,
                        &listed.info,
                        running,
                        AgentOperationKind::Backup,
                        relay.snapshot(),
                        |event| match &event.event {
                            Some(backup_volume_event::Event::Progress(p)) => Some(*p),
                            _ => None,
                        },
                        |event| match event.event {
                            Some(backup_volume_event::Event::Result(r)) => {
                                Some(agent_operation::Result::Backup(r))
                            }
                            _ => None,
                        },
                    ),
                    Relays::Restore(relay) => describe(
                        &listed.id,
                        &listed.info,
                        running,
                        AgentOperationKind::Restore,
                        relay.snapshot(),
                        |event| match &event.event {
                            Some(restore_volume_event::Event::Progress(p)) => Some(*p),
                            _ => None,
                        },
                        |event| match event.event {
                            Some(restore_volume_event::Event::Result(r)) => {
                                Some(agent_operation::Result::Restore(r))
                            }
                            _ => None,
                        },
                    ),
                }
            })
            .collect()
    }
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
        self.admit(&request)?;
        let request = request.into_inner();
        let operation_id = request.operation_id.clone();
        let (volume, name, uid) = (
            request.volume.clone(),
            request.backup_name.clone(),
            request.backup_uid.clone(),
        );
        let plan = jobs::plan_backup(&self.context, request).map_err(Status::from)?;
        let (relay, rx, handle) = self.register(&operation_id, volume, name, uid)?;
        tracing::info!(path = %plan.path.path.display(), identity = %plan.identity, "backup accepted");
        let peak = PeakRss::new();
        let context = measured(&self.context, &peak);
        let metrics = handle.metrics().clone();
        let cancel = handle.cancel.clone();
        let progress = relay.clone();
        let task = drive(
            handle,
            OperationKind::backup,
            relay,
            self.detach_grace,
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
                    let (event, keep) = match event {
                        JobEvent::Progress(progress) => {
                            (backup_volume_event::Event::Progress(progress), true)
                        }
                        JobEvent::Retrying(retrying) => {
                            (backup_volume_event::Event::Retrying(retrying), false)
                        }
                    };
                    progress.send(BackupVolumeEvent { event: Some(event) }, keep);
                })
                .await;
                metrics.restic_peak_rss(OperationKind::backup, peak.bytes());
                result.map(|result| BackupVolumeResult {
                    restic_peak_rss_bytes: peak.bytes(),
                    ..result
                })
            },
        );
        Ok(self.start(task, rx))
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
        self.admit(&request)?;
        let request = request.into_inner();
        let operation_id = request.operation_id.clone();
        let (volume, name, uid) = (
            request.volume.clone(),
            request.restore_name.clone(),
            request.restore_uid.clone(),
        );
        let plan = jobs::plan_restore(&self.context, request).map_err(Status::from)?;
        let (relay, rx, handle) = self.register(&operation_id, volume, name, uid)?;
        tracing::info!(path = %plan.path.path.display(), "restore accepted");
        let volume_dir = plan.path.path.clone();
        let restore_uid = plan.restore_uid.clone();
        let data_only = plan.data_only;
        let peak = PeakRss::new();
        let context = measured(&self.context, &peak);
        let metrics = handle.metrics().clone();
        let cancel = handle.cancel.clone();
        let progress = relay.clone();
        let task = drive(
            handle,
            OperationKind::restore,
            relay,
            self.detach_grace,
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
                    let (event, keep) = match event {
                        JobEvent::Progress(progress) => {
                            (restore_volume_event::Event::Progress(progress), true)
                        }
                        JobEvent::Retrying(retrying) => {
                            (restore_volume_event::Event::Retrying(retrying), false)
                        }
                    };
                    progress.send(RestoreVolumeEvent { event: Some(event) }, keep);
                })
                .await;
                metrics.restic_peak_rss(OperationKind::restore, peak.bytes());
                result.map(|result| RestoreVolumeResult {
                    restic_peak_rss_bytes: peak.bytes(),
                    ..result
                })
            },
        );
        Ok(self.start(task, rx))
    }

    #[tracing::instrument(skip_all, fields(operation = %request.get_ref().operation_id))]
    async fn cancel_operation(
        &self,
        request: Request<CancelOperationRequest>,
    ) -> Result<Response<CancelOperationResponse>, Status> {
        self.admit(&request)?;
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
            operations: self.operation_rows(),
        }))
    }

    type AttachBackupStream = EventStream<BackupVolumeEvent>;
    type AttachRestoreStream = EventStream<RestoreVolumeEvent>;

    #[tracing::instrument(skip_all, fields(
        operation = %request.get_ref().operation_id,
        node = %self.context.node_name,
    ))]
    async fn attach_backup(
        &self,
        request: Request<AttachOperationRequest>,
    ) -> Result<Response<Self::AttachBackupStream>, Status> {
        self.attach(request)
    }

    #[tracing::instrument(skip_all, fields(
        operation = %request.get_ref().operation_id,
        node = %self.context.node_name,
    ))]
    async fn attach_restore(
        &self,
        request: Request<AttachOperationRequest>,
    ) -> Result<Response<Self::AttachRestoreStream>, Status> {
        self.attach(request)
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
