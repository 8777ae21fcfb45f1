//! The tonic handlers of the Orchestrator service: parse and validate the request, call the
//! backup/restore/coverage logic, map the result. Domain errors become gRPC statuses in the one
//! `From<Error> for Status` below.

use std::{pin::Pin, time::Duration};

use stowage_proto::v1::{
    Backup, BackupEvent, CancelBackupRequest, CancelRestoreRequest, CreateBackupRequest,
    CreateRestoreRequest, CreateScheduleRequest, DeleteBackupRequest, DeleteBackupResponse,
    DeleteScheduleRequest, DeleteScheduleResponse, GetBackupLogsRequest, GetBackupRequest,
    GetCoverageRequest, GetCoverageResponse, GetLogsResponse, GetRestoreLogsRequest,
    GetRestoreRequest, GetScheduleRequest, ListBackupFilesRequest, ListBackupFilesResponse,
    ListBackupsRequest, ListBackupsResponse, ListRepositoriesRequest, ListRepositoriesResponse,
    ListRestoresRequest, ListRestoresResponse, ListSchedulesRequest, ListSchedulesResponse,
    MaintenanceResult, PauseScheduleRequest, Restore, RestoreEvent, ResumeScheduleRequest,
    RunMaintenanceRequest, Schedule, WatchBackupRequest, WatchRestoreRequest,
    orchestrator_server::Orchestrator,
};
use tokio::{sync::watch, time::Instant};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::{
    backup::{self, backup_is_final},
    coverage::namespace_coverage,
    deps::Deps,
    error::{Error, Result, validate_name, validate_namespace},
    lifecycle,
    restore::{self, restore_is_final},
    schedules,
};

pub type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        match &error {
            Error::Rpc { status, .. } => Status::new(status.code(), error.to_string()),
            _ => Status::new(error.code(), error.to_string()),
        }
    }
}

/// The repo-manager's own answer to a call the API only forwards, as it gave it.
fn forwarded(error: Error) -> Status {
    match error {
        Error::Rpc { status, .. } => status,
        other => other.into(),
    }
}

pub struct OrchestratorApi {
    deps: Deps,
}

impl OrchestratorApi {
    pub fn new(deps: Deps) -> Self {
        Self { deps }
    }

    fn backup_entry(&self, name: &str) -> Result<std::sync::Arc<crate::state::BackupEntry>> {
        validate_name("backup name", name)?;
        self.deps
            .index
            .backup(name)
            .ok_or_else(|| Error::BackupNotFound(name.to_string()))
    }

    async fn restore_entry(
        &self,
        name: &str,
    ) -> Result<std::sync::Arc<crate::state::RestoreEntry>> {
        validate_name("restore name", name)?;
        restore::find(&self.deps, name).await
    }

    async fn delete(&self, name: &str) -> Result<DeleteBackupResponse> {
        let entry = self.backup_entry(name)?;
        Ok(DeleteBackupResponse {
            forgotten_snapshot_ids: lifecycle::delete_backup(&self.deps, &entry).await?,
        })
    }

    async fn coverage(&self, request: GetCoverageRequest) -> Result<GetCoverageResponse> {
        for namespace in &request.namespaces {
            validate_namespace(namespace)?;
        }
        let cluster = self
            .deps
            .cluster
            .as_ref()
            .ok_or(Error::NoCluster("the coverage call"))?;
        let namespaces = if request.namespaces.is_empty() {
            cluster.namespaces().await?
        } else {
            request.namespaces.clone()
        };
        let mut response = GetCoverageResponse::default();
        for namespace in namespaces {
            let pods = cluster.pods(&namespace, &Default::default()).await?;
            let claims = cluster.pvcs(&namespace).await?;
            let coverage = namespace_coverage(
                &namespace,
                &pods,
                &claims,
                request.default_volumes_to_fs_backup,
            );
            response.volumes_covered += coverage.volumes_covered;
            response.volumes_total += coverage.volumes_total;
            response.uncovered.extend(coverage.uncovered);
            response.claims.extend(coverage.claims);
        }
        Ok(response)
    }
}

/// While a backup or restore runs, its watchers get at most one state per this interval:
/// every volume event changes the state, and each state sent is the whole backup (about 1 MB
/// at 2,000 volumes), so sending each one cost more than running the backup.
const WATCH_EVENTS_EVERY: Duration = Duration::from_millis(150);

/// Streams the states of `receiver` until (and including) the first final one: the current
/// state at once, then the newest state at most every `every`, a final state as soon as it is
/// there. States replaced within the interval are never sent.
fn watch_until<T, E>(
    receiver: watch::Receiver<T>,
    is_final: fn(&T) -> bool,
    wrap: fn(T) -> E,
    every: Duration,
) -> EventStream<E>
where
    T: Clone + Send + Sync + 'static,
    E: Send + 'static,
{
    struct Watching<T> {
        rx: watch::Receiver<T>,
        /// When the previous state was sent; `None` before the first.
        sent: Option<Instant>,
        done: bool,
    }
    let stream = futures::stream::unfold(
        Watching {
            rx: receiver,
            sent: None,
            done: false,
        },
        move |mut watching| async move {
            if watching.done {
                return None;
            }
            if let Some(sent) = watching.sent {
                if watching.rx.changed().await.is_err() {
                    return None;
                }
                let due = sent + every;
                // Wait out the interval, but not past a final state.
                while !is_final(&watching.rx.borrow()) {
                    tokio::select! {
                        () = tokio::time::sleep_until(due) => break,
                        changed = watching.rx.changed() => if changed.is_err() { break },
                    }
                }
            }
            let value = watching.rx.borrow_and_update().clone();
            watching.done = is_final(&value);
            watching.sent = Some(Instant::now());
            Some((Ok(wrap(value)), watching))
        },
    );
    Box::pin(stream)
}

#[tonic::async_trait]
impl Orchestrator for OrchestratorApi {
    type WatchBackupStream = EventStream<BackupEvent>;
    type WatchRestoreStream = EventStream<RestoreEvent>;
    type ListBackupFilesStream = EventStream<ListBackupFilesResponse>;

    #[tracing::instrument(skip_all, fields(
        backup = %request.get_ref().backup_name,
        namespace = %request.get_ref().namespace,
        pod = %request.get_ref().pod,
        volume = %request.get_ref().volume,
        path = %request.get_ref().path,
        recursive = request.get_ref().recursive,
        snapshot_id = tracing::field::Empty,
    ))]
    async fn list_backup_files(
        &self,
        request: Request<ListBackupFilesRequest>,
    ) -> Result<Response<Self::ListBackupFilesStream>, Status> {
        use futures::StreamExt as _;
        let batches = crate::browse::list_backup_files(&self.deps, request.into_inner()).await?;
        Ok(Response::new(Box::pin(batches.map(|batch| {
            batch
                .map(|entries| ListBackupFilesResponse { entries })
                .map_err(forwarded)
        }))))
    }

    #[tracing::instrument(skip_all, fields(schedule = %request.get_ref().name))]
    async fn create_schedule(
        &self,
        request: Request<CreateScheduleRequest>,
    ) -> Result<Response<Schedule>, Status> {
        Ok(Response::new(
            schedules::create(&self.deps, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(schedule = %request.get_ref().name))]
    async fn get_schedule(
        &self,
        request: Request<GetScheduleRequest>,
    ) -> Result<Response<Schedule>, Status> {
        Ok(Response::new(schedules::get(
            &self.deps,
            &request.get_ref().name,
        )?))
    }

    #[tracing::instrument(skip_all)]
    async fn list_schedules(
        &self,
        _request: Request<ListSchedulesRequest>,
    ) -> Result<Response<ListSchedulesResponse>, Status> {
        Ok(Response::new(ListSchedulesResponse {
            schedules: schedules::list(&self.deps),
        }))
    }

    #[tracing::instrument(skip_all, fields(schedule = %request.get_ref().name))]
    async fn pause_schedule(
        &self,
        request: Request<PauseScheduleRequest>,
    ) -> Result<Response<Schedule>, Status> {
        Ok(Response::new(
            schedules::set_paused(&self.deps, &request.get_ref().name, true).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(schedule = %request.get_ref().name))]
    async fn resume_schedule(
        &self,
        request: Request<ResumeScheduleRequest>,
    ) -> Result<Response<Schedule>, Status> {
        Ok(Response::new(
            schedules::set_paused(&self.deps, &request.get_ref().name, false).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(schedule = %request.get_ref().name))]
    async fn delete_schedule(
        &self,
        request: Request<DeleteScheduleRequest>,
    ) -> Result<Response<DeleteScheduleResponse>, Status> {
        schedules::delete(&self.deps, &request.get_ref().name).await?;
        Ok(Response::new(DeleteScheduleResponse {}))
    }

    #[tracing::instrument(skip_all, fields(backup = %request.get_ref().name))]
    async fn create_backup(
        &self,
        request: Request<CreateBackupRequest>,
    ) -> Result<Response<Backup>, Status> {
        Ok(Response::new(
            backup::create(&self.deps, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(backup = %request.get_ref().name))]
    async fn get_backup(
        &self,
        request: Request<GetBackupRequest>,
    ) -> Result<Response<Backup>, Status> {
        Ok(Response::new(
            self.backup_entry(&request.get_ref().name)?.get(),
        ))
    }

    #[tracing::instrument(skip_all)]
    async fn list_backups(
        &self,
        _request: Request<ListBackupsRequest>,
    ) -> Result<Response<ListBackupsResponse>, Status> {
        let backups = self.deps.index.backups().iter().map(|e| e.get()).collect();
        Ok(Response::new(ListBackupsResponse { backups }))
    }

    #[tracing::instrument(skip_all, fields(backup = %request.get_ref().name))]
    async fn watch_backup(
        &self,
        request: Request<WatchBackupRequest>,
    ) -> Result<Response<Self::WatchBackupStream>, Status> {
        let entry = self.backup_entry(&request.get_ref().name)?;
        Ok(Response::new(watch_until(
            entry.subscribe(),
            |b: &Backup| backup_is_final(b.status.as_ref().map_or(0, |s| s.phase)),
            |backup| BackupEvent {
                backup: Some(backup),
            },
            WATCH_EVENTS_EVERY,
        )))
    }

    #[tracing::instrument(skip_all, fields(backup = %request.get_ref().name))]
    async fn cancel_backup(
        &self,
        request: Request<CancelBackupRequest>,
    ) -> Result<Response<Backup>, Status> {
        let entry = self.backup_entry(&request.get_ref().name)?;
        Ok(Response::new(backup::cancel(&entry)))
    }

    #[tracing::instrument(skip_all, fields(backup = %request.get_ref().name))]
    async fn delete_backup(
        &self,
        request: Request<DeleteBackupRequest>,
    ) -> Result<Response<DeleteBackupResponse>, Status> {
        Ok(Response::new(self.delete(&request.get_ref().name).await?))
    }

    #[tracing::instrument(skip_all, fields(backup = %request.get_ref().name))]
    async fn get_backup_logs(
        &self,
        request: Request<GetBackupLogsRequest>,
    ) -> Result<Response<GetLogsResponse>, Status> {
        let entry = self.backup_entry(&request.get_ref().name)?;
        Ok(Response::new(GetLogsResponse {
            lines: entry.logs(),
        }))
    }

    #[tracing::instrument(skip_all, fields(restore = %request.get_ref().name))]
    async fn create_restore(
        &self,
        request: Request<CreateRestoreRequest>,
    ) -> Result<Response<Restore>, Status> {
        Ok(Response::new(
            restore::create(&self.deps, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, fields(restore = %request.get_ref().name))]
    async fn get_restore(
        &self,
        request: Request<GetRestoreRequest>,
    ) -> Result<Response<Restore>, Status> {
        Ok(Response::new(
            self.restore_entry(&request.get_ref().name).await?.get(),
        ))
    }

    #[tracing::instrument(skip_all)]
    async fn list_restores(
        &self,
        _request: Request<ListRestoresRequest>,
    ) -> Result<Response<ListRestoresResponse>, Status> {
        let restores = self.deps.index.restores().iter().map(|e| e.get()).collect();
        Ok(Response::new(ListRestoresResponse { restores }))
    }

    #[tracing::instrument(skip_all, fields(restore = %request.get_ref().name))]
    async fn watch_restore(
        &self,
        request: Request<WatchRestoreRequest>,
    ) -> Result<Response<Self::WatchRestoreStream>, Status> {
        let entry = self.restore_entry(&request.get_ref().name).await?;
        Ok(Response::new(watch_until(
            entry.subscribe(),
            |r: &Restore| restore_is_final(r.status.as_ref().map_or(0, |s| s.phase)),
            |restore| RestoreEvent {
                restore: Some(restore),
            },
            WATCH_EVENTS_EVERY,
        )))
    }

    #[tracing::instrument(skip_all, fields(restore = %request.get_ref().name))]
    async fn get_restore_logs(
        &self,
        request: Request<GetRestoreLogsRequest>,
    ) -> Result<Response<GetLogsResponse>, Status> {
        let entry = self.restore_entry(&request.get_ref().name).await?;
        Ok(Response::new(GetLogsResponse {
            lines: entry.logs(),
        }))
    }

    #[tracing::instrument(skip_all, fields(restore = %request.get_ref().name))]
    async fn cancel_restore(
        &self,
        request: Request<CancelRestoreRequest>,
    ) -> Result<Response<Restore>, Status> {
        let entry = self.restore_entry(&request.get_ref().name).await?;
        Ok(Response::new(restore::cancel(&entry)))
    }

    #[tracing::instrument(skip_all)]
    async fn list_repositories(
        &self,
        request: Request<ListRepositoriesRequest>,
    ) -> Result<Response<ListRepositoriesResponse>, Status> {
        Ok(Response::new(
            self.deps
                .repo_manager
                .list_repositories(request.into_inner())
                .await
                .map_err(forwarded)?,
        ))
    }

    #[tracing::instrument(skip_all, fields(namespace = %request.get_ref().namespace))]
    async fn maintain_repository(
        &self,
        request: Request<RunMaintenanceRequest>,
    ) -> Result<Response<MaintenanceResult>, Status> {
        validate_namespace(&request.get_ref().namespace)?;
        Ok(Response::new(
            self.deps
                .repo_manager
                .run_maintenance(request.into_inner())
                .await
                .map_err(forwarded)?,
        ))
    }

    #[tracing::instrument(skip_all)]
    async fn get_coverage(
        &self,
        request: Request<GetCoverageRequest>,
    ) -> Result<Response<GetCoverageResponse>, Status> {
        Ok(Response::new(self.coverage(request.into_inner()).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stowage_proto::v1::BackupPhase;
    use tokio_stream::StreamExt;

    fn phase_of(backup: &Backup) -> i32 {
        backup.status.as_ref().map_or(0, |s| s.phase)
    }

    fn backup_events(receiver: watch::Receiver<Backup>) -> EventStream<BackupEvent> {
        watch_until(
            receiver,
            |b: &Backup| backup_is_final(phase_of(b)),
            |backup| BackupEvent {
                backup: Some(backup),
            },
            WATCH_EVENTS_EVERY,
        )
    }

    fn set_phase(sender: &watch::Sender<Backup>, phase: BackupPhase) {
        sender.send_modify(|b| b.status.get_or_insert_with(Default::default).phase = phase as i32);
    }

    #[tokio::test(start_paused = true)]
    async fn watch_streams_changes_and_ends_with_the_final_state() {
        let (sender, receiver) = watch::channel(Backup::default());
        let mut stream = backup_events(receiver);
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(phase_of(first.backup.as_ref().unwrap()), 0);
        for phase in [BackupPhase::InProgress, BackupPhase::Completed] {
            set_phase(&sender, phase);
            let event = stream.next().await.unwrap().unwrap();
            assert_eq!(phase_of(event.backup.as_ref().unwrap()), phase as i32);
        }
        assert!(
            stream.next().await.is_none(),
            "the stream ends after the final state"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn watch_coalesces_a_burst_and_sends_the_final_state_at_once() {
        let (sender, receiver) = watch::channel(Backup::default());
        let mut stream = backup_events(receiver);
        let started = Instant::now();
        stream.next().await.unwrap().unwrap();
        // A burst of volume events within one interval is one event, the newest state.
        for n in 0..100 {
            sender.send_modify(|b| b.uid = format!("{n}"));
        }
        let event = stream.next().await.unwrap().unwrap();
        assert_eq!(event.backup.unwrap().uid, "99");
        assert!(started.elapsed() >= WATCH_EVENTS_EVERY);
        // The final state does not wait for the interval.
        set_phase(&sender, BackupPhase::InProgress);
        let sent = Instant::now();
        let watcher = tokio::spawn(async move {
            let event = stream.next().await.unwrap().unwrap();
            (event, Instant::now(), stream.next().await.is_none())
        });
        tokio::time::sleep(WATCH_EVENTS_EVERY / 10).await;
        set_phase(&sender, BackupPhase::Completed);
        let (event, at, ended) = watcher.await.unwrap();
        assert_eq!(
            phase_of(event.backup.as_ref().unwrap()),
            BackupPhase::Completed as i32
        );
        assert!(at - sent < WATCH_EVENTS_EVERY, "{:?}", at - sent);
        assert!(ended, "the final state is the last event");
    }

    #[test]
    fn errors_map_to_their_grpc_codes() {
        let status: Status = Error::BackupNotFound("x".into()).into();
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "backup `x` not found");
        let status: Status = Error::NoAgent("node-b".into()).into();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        let status: Status = Error::Rpc {
            service: "repo-manager",
            action: "forgetting".into(),
            status: Status::not_found("no repository"),
        }
        .into();
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert!(status.message().contains("no repository"));
    }
}
