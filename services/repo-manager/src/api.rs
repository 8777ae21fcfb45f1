//! The tonic handlers of the RepoManager service: validate the request, call the
//! [`Manager`], map the result (errors through `From<RepoError> for Status`).

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use stowage_contract::fencing::TermFence;
use stowage_proto::{
    prost_types,
    v1::{
        AcquireLeaseRequest, EnsureRepositoryRequest, ForgetBackupRequest, ForgetBackupResponse,
        GetRepositoryAccessRequest, GetRepositoryRequest, Lease, LeaseMode as ProtoLeaseMode,
        ListRepositoriesRequest, ListRepositoriesResponse, ListSnapshotFilesRequest,
        MaintenanceKind as ProtoKind, MaintenanceResult, MaintenanceStatus, ReleaseLeaseRequest,
        ReleaseLeaseResponse, RenewLeaseRequest, Repository, RepositoryAccess, RepositoryPhase,
        RotateKeyRequest, RunMaintenanceRequest, repo_manager_server::RepoManager,
    },
};
use tonic::{Request, Response, Status};

use stowage_restic::LsOptions;
use tracing::Instrument as _;

use crate::{
    error::RepoError,
    leases::{LeaseInfo, LeaseMode},
    listing,
    repositories::{Manager, validate_namespace},
    schedule::{MaintenanceKind, MaintenanceRecord},
    state::{Phase, RepositoryRecord},
};

/// Lease defaults when the request leaves them unset.
#[derive(Debug, Clone, Copy)]
pub struct LeaseDefaults {
    pub ttl: Duration,
    pub wait: Duration,
}

pub struct RepoManagerApi {
    manager: Arc<Manager>,
    lease_defaults: LeaseDefaults,
    /// The newest orchestrator leader term seen (the fencing rule): a request that changes
    /// something (a repository, a lease, snapshots, maintenance) from an older orchestrator
    /// is refused, so one paused through a takeover cannot take leases or forget snapshots
    /// once its successor has spoken to this repo-manager.
    fence: TermFence,
}

impl RepoManagerApi {
    pub fn new(manager: Arc<Manager>, lease_defaults: LeaseDefaults) -> Self {
        Self {
            manager,
            lease_defaults,
            fence: TermFence::new(),
        }
    }

    fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        stowage_grpc::fencing::admit(&self.fence, request)
    }

    fn repository(&self, record: RepositoryRecord) -> Repository {
        let schedules = self.manager.schedules();
        let status = |task: &MaintenanceRecord, kind| {
            let interval = schedules.interval(&record.namespace, kind);
            MaintenanceStatus {
                last_started: task.last_started.map(timestamp),
                last_finished: task.last_finished.map(timestamp),
                last_duration_seconds: task.last_duration_seconds,
                last_error: task.last_error.clone(),
                last_succeeded: task.last_succeeded,
                next_run: Some(timestamp(task.next_run(record.created, interval))),
                interval_seconds: interval.as_secs(),
            }
        };
        Repository {
            check: Some(status(&record.check, MaintenanceKind::Check)),
            prune: Some(status(&record.prune, MaintenanceKind::Prune)),
            phase: match record.phase {
                Phase::NotReady => RepositoryPhase::NotReady,
                Phase::Ready => RepositoryPhase::Ready,
                Phase::Failed => RepositoryPhase::Failed,
            } as i32,
            created: Some(timestamp(record.created)),
            namespace: record.namespace,
            url: record.url,
            message: record.message,
            secret_name: record.secret_name,
        }
    }
}

fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

fn duration(value: Option<prost_types::Duration>, default: Duration) -> Result<Duration, Status> {
    match value {
        None => Ok(default),
        Some(value) => Duration::try_from(value)
            .map_err(|_| Status::invalid_argument("durations must not be negative")),
    }
}

fn lease(info: LeaseInfo) -> Lease {
    Lease {
        lease_id: info.id,
        namespace: info.namespace,
        mode: match info.mode {
            LeaseMode::Shared => ProtoLeaseMode::Shared,
            LeaseMode::Exclusive => ProtoLeaseMode::Exclusive,
        } as i32,
        holder: info.holder,
        expires: Some(timestamp(info.expires)),
    }
}

fn kind(value: i32) -> Result<MaintenanceKind, Status> {
    match ProtoKind::try_from(value) {
        Ok(ProtoKind::Check) => Ok(MaintenanceKind::Check),
        Ok(ProtoKind::Prune) => Ok(MaintenanceKind::Prune),
        _ => Err(Status::invalid_argument(
            "kind must be MAINTENANCE_KIND_CHECK or MAINTENANCE_KIND_PRUNE",
        )),
    }
}

#[tonic::async_trait]
impl RepoManager for RepoManagerApi {
    type ListSnapshotFilesStream = listing::FileStream;

    #[tracing::instrument(skip_all, fields(
        namespace = %request.get_ref().namespace,
        snapshot_id = %request.get_ref().snapshot_id,
        path = %request.get_ref().path,
        recursive = request.get_ref().recursive,
    ))]
    async fn list_snapshot_files(
        &self,
        request: Request<ListSnapshotFilesRequest>,
    ) -> Result<Response<Self::ListSnapshotFilesStream>, Status> {
        let request = request.into_inner();
        // Refused before the stream starts, so bad input is the call's own status.
        validate_namespace(&request.namespace)?;
        if request.snapshot_id.len() < 8
            || !request.snapshot_id.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(RepoError::InvalidArgument(format!(
                "snapshot_id `{}` is not a restic snapshot id (8 to 64 hex digits)",
                request.snapshot_id.escape_debug()
            ))
            .into());
        }
        let dir = stowage_contract::paths::snapshot_dir("path", &request.path)
            .map_err(|error| RepoError::InvalidArgument(error.to_string()))?;
        let options = LsOptions {
            snapshot: request.snapshot_id,
            dir,
            recursive: request.recursive,
        };
        let manager = self.manager.clone();
        let cancel = manager.run_token();
        let run = cancel.clone();
        let span = tracing::Span::current();
        let stream = listing::stream(cancel, move |mut batches| {
            async move {
                manager
                    .list_snapshot_files(&request.namespace, &options, &run, &mut batches)
                    .await
                    .map_err(Status::from)?;
                listing::flush(&mut batches).await;
                Ok::<(), Status>(())
            }
            .instrument(span)
        });
        Ok(Response::new(stream))
    }

    #[tracing::instrument(skip_all, fields(namespace = %request.get_ref().namespace))]
    async fn ensure_repository(
        &self,
        request: Request<EnsureRepositoryRequest>,
    ) -> Result<Response<Repository>, Status> {
        self.admit(&request)?;
        let record = self.manager.ensure(&request.get_ref().namespace).await?;
        Ok(Response::new(self.repository(record)))
    }

    #[tracing::instrument(skip_all, fields(namespace = %request.get_ref().namespace))]
    async fn get_repository(
        &self,
        request: Request<GetRepositoryRequest>,
    ) -> Result<Response<Repository>, Status> {
        let record = self.manager.get(&request.get_ref().namespace)?;
        Ok(Response::new(self.repository(record)))
    }

    #[tracing::instrument(skip_all)]
    async fn list_repositories(
        &self,
        _request: Request<ListRepositoriesRequest>,
    ) -> Result<Response<ListRepositoriesResponse>, Status> {
        let repositories = self
            .manager
            .list()
            .into_iter()
            .map(|record| self.repository(record))
            .collect();
        Ok(Response::new(ListRepositoriesResponse { repositories }))
    }

    #[tracing::instrument(skip_all, fields(namespace = %request.get_ref().namespace, kind = request.get_ref().kind))]
    async fn run_maintenance(
        &self,
        request: Request<RunMaintenanceRequest>,
    ) -> Result<Response<MaintenanceResult>, Status> {
        self.admit(&request)?;
        let request = request.into_inner();
        let kind = kind(request.kind)?;
        let outcome = self
            .manager
            .run_maintenance(&request.namespace, kind)
            .await?;
        Ok(Response::new(MaintenanceResult {
            namespace: outcome.namespace,
            kind: match outcome.kind {
                MaintenanceKind::Check => ProtoKind::Check,
                MaintenanceKind::Prune => ProtoKind::Prune,
            } as i32,
            succeeded: outcome.error.is_none(),
            message: outcome.error.unwrap_or_default(),
            duration_seconds: outcome.duration_seconds,
            finished: Some(timestamp(outcome.finished)),
        }))
    }

    #[tracing::instrument(skip_all, fields(namespace = %request.get_ref().namespace))]
    async fn get_repository_access(
        &self,
        request: Request<GetRepositoryAccessRequest>,
    ) -> Result<Response<RepositoryAccess>, Status> {
        let access = self.manager.access(&request.get_ref().namespace).await?;
        Ok(Response::new(RepositoryAccess {
            url: access.url,
            password: access.password,
            env: access.env.into_iter().collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(
        namespace = %request.get_ref().namespace,
        holder = %request.get_ref().holder,
        mode = request.get_ref().mode,
    ))]
    async fn acquire_lease(
        &self,
        request: Request<AcquireLeaseRequest>,
    ) -> Result<Response<Lease>, Status> {
        self.admit(&request)?;
        let request = request.into_inner();
        validate_namespace(&request.namespace)?;
        let mode = match ProtoLeaseMode::try_from(request.mode) {
            Ok(ProtoLeaseMode::Shared) => LeaseMode::Shared,
            Ok(ProtoLeaseMode::Exclusive) => LeaseMode::Exclusive,
            _ => {
                return Err(RepoError::InvalidArgument(
                    "mode must be LEASE_MODE_SHARED or LEASE_MODE_EXCLUSIVE".into(),
                )
                .into());
            }
        };
        if request.holder.is_empty() {
            return Err(RepoError::InvalidArgument("holder must be set".into()).into());
        }
        let ttl = duration(request.ttl, self.lease_defaults.ttl)?;
        let wait = duration(request.wait_timeout, self.lease_defaults.wait)?;
        let info = self
            .manager
            .leases
            .acquire(&request.namespace, mode, &request.holder, ttl, wait)
            .await?;
        Ok(Response::new(lease(info)))
    }

    #[tracing::instrument(skip_all, fields(lease = %request.get_ref().lease_id))]
    async fn renew_lease(
        &self,
        request: Request<RenewLeaseRequest>,
    ) -> Result<Response<Lease>, Status> {
        self.admit(&request)?;
        let request = request.into_inner();
        let ttl = duration(request.ttl, self.lease_defaults.ttl)?;
        let info = self.manager.leases.renew(&request.lease_id, ttl)?;
        Ok(Response::new(lease(info)))
    }

    #[tracing::instrument(skip_all, fields(lease = %request.get_ref().lease_id))]
    async fn release_lease(
        &self,
        request: Request<ReleaseLeaseRequest>,
    ) -> Result<Response<ReleaseLeaseResponse>, Status> {
        self.admit(&request)?;
        let lease_id = &request.get_ref().lease_id;
        if lease_id.is_empty() {
            return Err(Status::invalid_argument("lease_id must not be empty"));
        }
        let released = self.manager.leases.release(lease_id);
        Ok(Response::new(ReleaseLeaseResponse { released }))
    }

    #[tracing::instrument(skip_all, fields(
        namespace = %request.get_ref().namespace,
        backup = %request.get_ref().backup_name,
    ))]
    async fn forget_backup(
        &self,
        request: Request<ForgetBackupRequest>,
    ) -> Result<Response<ForgetBackupResponse>, Status> {
        self.admit(&request)?;
        let request = request.into_inner();
        let forgotten_snapshot_ids = self
            .manager
            .forget_backup(&request.namespace, &request.backup_name)
            .await?;
        Ok(Response::new(ForgetBackupResponse {
            forgotten_snapshot_ids,
        }))
    }

    #[tracing::instrument(skip_all, fields(namespace = %request.get_ref().namespace))]
    async fn rotate_key(
        &self,
        request: Request<RotateKeyRequest>,
    ) -> Result<Response<Repository>, Status> {
        self.admit(&request)?;
        let record = self
            .manager
            .rotate_key(&request.get_ref().namespace)
            .await?;
        Ok(Response::new(self.repository(record)))
    }
}
