//! The tonic handlers of the Orchestrator service.

use std::{collections::BTreeMap, pin::Pin};

use stowage_grpc::TracedChannel;
use stowage_proto::v1::{
    Backup, BackupEvent, BackupPhase, BackupStatus, CancelBackupRequest, CreateBackupRequest,
    CreateRestoreRequest, DeleteBackupRequest, DeleteBackupResponse, EnsureRepositoryRequest,
    GetAgentInfoRequest, GetBackupLogsRequest, GetBackupRequest, GetCoverageRequest,
    GetCoverageResponse, GetLogsResponse, GetRestoreLogsRequest, GetRestoreRequest,
    ListBackupsRequest, ListBackupsResponse, ListRepositoriesRequest, ListRepositoriesResponse,
    ListRestoresRequest, ListRestoresResponse, MaintenanceResult, Restore, RestoreEvent,
    RunMaintenanceRequest, WatchBackupRequest, WatchRestoreRequest,
    orchestrator_server::Orchestrator, repo_manager_client::RepoManagerClient,
    volume_agent_client::VolumeAgentClient,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum AgentConfigError {
    #[error("agent `{0}` is not of the form NODE=URL")]
    Malformed(String),
    #[error("agent for node `{node}`: {source}")]
    Endpoint {
        node: String,
        source: stowage_grpc::GrpcError,
    },
}

/// Parses `NODE=URL` agent flags into lazily connecting clients.
pub fn parse_static_agents(
    specs: &[String],
) -> Result<BTreeMap<String, VolumeAgentClient<TracedChannel>>, AgentConfigError> {
    specs
        .iter()
        .filter(|spec| !spec.is_empty())
        .map(|spec| {
            let (node, url) = spec
                .split_once('=')
                .ok_or_else(|| AgentConfigError::Malformed(spec.clone()))?;
            let channel =
                stowage_grpc::connect_lazy(url).map_err(|source| AgentConfigError::Endpoint {
                    node: node.to_string(),
                    source,
                })?;
            Ok((node.to_string(), VolumeAgentClient::new(channel)))
        })
        .collect()
}

pub struct OrchestratorApi {
    repo_manager: RepoManagerClient<TracedChannel>,
    agents: BTreeMap<String, VolumeAgentClient<TracedChannel>>,
}

impl OrchestratorApi {
    pub fn new(
        repo_manager: RepoManagerClient<TracedChannel>,
        agents: BTreeMap<String, VolumeAgentClient<TracedChannel>>,
    ) -> Self {
        Self {
            repo_manager,
            agents,
        }
    }
}

fn unimplemented(call: &str) -> Status {
    Status::unimplemented(format!("{call} is not implemented yet"))
}

#[tonic::async_trait]
impl Orchestrator for OrchestratorApi {
    type WatchBackupStream = EventStream<BackupEvent>;
    type WatchRestoreStream = EventStream<RestoreEvent>;

    #[tracing::instrument(skip_all, fields(backup = %request.get_ref().name))]
    async fn create_backup(
        &self,
        request: Request<CreateBackupRequest>,
    ) -> Result<Response<Backup>, Status> {
        let request = request.into_inner();
        let spec = request.spec.unwrap_or_default();
        for namespace in &spec.included_namespaces {
            self.repo_manager
                .clone()
                .ensure_repository(EnsureRepositoryRequest {
                    namespace: namespace.clone(),
                })
                .await?;
        }
        for agent in self.agents.values() {
            agent.clone().get_agent_info(GetAgentInfoRequest {}).await?;
        }
        Ok(Response::new(Backup {
            name: request.name,
            spec: Some(spec),
            status: Some(BackupStatus {
                phase: BackupPhase::New as i32,
                trace_id: stowage_telemetry::current_trace_id().unwrap_or_default(),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn get_backup(
        &self,
        _request: Request<GetBackupRequest>,
    ) -> Result<Response<Backup>, Status> {
        Err(unimplemented("GetBackup"))
    }

    async fn list_backups(
        &self,
        _request: Request<ListBackupsRequest>,
    ) -> Result<Response<ListBackupsResponse>, Status> {
        Err(unimplemented("ListBackups"))
    }

    async fn watch_backup(
        &self,
        _request: Request<WatchBackupRequest>,
    ) -> Result<Response<Self::WatchBackupStream>, Status> {
        Err(unimplemented("WatchBackup"))
    }

    async fn cancel_backup(
        &self,
        _request: Request<CancelBackupRequest>,
    ) -> Result<Response<Backup>, Status> {
        Err(unimplemented("CancelBackup"))
    }

    async fn delete_backup(
        &self,
        _request: Request<DeleteBackupRequest>,
    ) -> Result<Response<DeleteBackupResponse>, Status> {
        Err(unimplemented("DeleteBackup"))
    }

    async fn get_backup_logs(
        &self,
        _request: Request<GetBackupLogsRequest>,
    ) -> Result<Response<GetLogsResponse>, Status> {
        Err(unimplemented("GetBackupLogs"))
    }

    async fn create_restore(
        &self,
        _request: Request<CreateRestoreRequest>,
    ) -> Result<Response<Restore>, Status> {
        Err(unimplemented("CreateRestore"))
    }

    async fn get_restore(
        &self,
        _request: Request<GetRestoreRequest>,
    ) -> Result<Response<Restore>, Status> {
        Err(unimplemented("GetRestore"))
    }

    async fn list_restores(
        &self,
        _request: Request<ListRestoresRequest>,
    ) -> Result<Response<ListRestoresResponse>, Status> {
        Err(unimplemented("ListRestores"))
    }

    async fn watch_restore(
        &self,
        _request: Request<WatchRestoreRequest>,
    ) -> Result<Response<Self::WatchRestoreStream>, Status> {
        Err(unimplemented("WatchRestore"))
    }

    async fn get_restore_logs(
        &self,
        _request: Request<GetRestoreLogsRequest>,
    ) -> Result<Response<GetLogsResponse>, Status> {
        Err(unimplemented("GetRestoreLogs"))
    }

    async fn list_repositories(
        &self,
        request: Request<ListRepositoriesRequest>,
    ) -> Result<Response<ListRepositoriesResponse>, Status> {
        self.repo_manager
            .clone()
            .list_repositories(request.into_inner())
            .await
    }

    async fn maintain_repository(
        &self,
        request: Request<RunMaintenanceRequest>,
    ) -> Result<Response<MaintenanceResult>, Status> {
        self.repo_manager
            .clone()
            .run_maintenance(request.into_inner())
            .await
    }

    async fn get_coverage(
        &self,
        _request: Request<GetCoverageRequest>,
    ) -> Result<Response<GetCoverageResponse>, Status> {
        Err(unimplemented("GetCoverage"))
    }
}
