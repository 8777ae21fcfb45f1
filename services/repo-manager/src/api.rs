//! The tonic handlers of the RepoManager service.

use stowage_proto::v1::{
    AcquireLeaseRequest, EnsureRepositoryRequest, ForgetBackupRequest, ForgetBackupResponse,
    GetRepositoryAccessRequest, GetRepositoryRequest, Lease, ListRepositoriesRequest,
    ListRepositoriesResponse, MaintenanceResult, ReleaseLeaseRequest, ReleaseLeaseResponse,
    RenewLeaseRequest, Repository, RepositoryAccess, RepositoryPhase, RotateKeyRequest,
    RunMaintenanceRequest, repo_manager_server::RepoManager,
};
use tonic::{Request, Response, Status};

pub struct RepoManagerApi {
    storage_url: String,
}

impl RepoManagerApi {
    pub fn new(storage_url: String) -> Self {
        Self { storage_url }
    }
}

fn unimplemented(call: &str) -> Status {
    Status::unimplemented(format!("{call} is not implemented yet"))
}

#[tonic::async_trait]
impl RepoManager for RepoManagerApi {
    #[tracing::instrument(skip_all, fields(namespace = %request.get_ref().namespace))]
    async fn ensure_repository(
        &self,
        request: Request<EnsureRepositoryRequest>,
    ) -> Result<Response<Repository>, Status> {
        let namespace = request.into_inner().namespace;
        Ok(Response::new(Repository {
            url: format!("{}/restic/{namespace}", self.storage_url),
            namespace,
            phase: RepositoryPhase::NotReady as i32,
            message: "repository initialisation is not implemented yet".into(),
            ..Default::default()
        }))
    }

    async fn get_repository(
        &self,
        _request: Request<GetRepositoryRequest>,
    ) -> Result<Response<Repository>, Status> {
        Err(unimplemented("GetRepository"))
    }

    async fn list_repositories(
        &self,
        _request: Request<ListRepositoriesRequest>,
    ) -> Result<Response<ListRepositoriesResponse>, Status> {
        Ok(Response::new(ListRepositoriesResponse::default()))
    }

    async fn run_maintenance(
        &self,
        _request: Request<RunMaintenanceRequest>,
    ) -> Result<Response<MaintenanceResult>, Status> {
        Err(unimplemented("RunMaintenance"))
    }

    async fn get_repository_access(
        &self,
        _request: Request<GetRepositoryAccessRequest>,
    ) -> Result<Response<RepositoryAccess>, Status> {
        Err(unimplemented("GetRepositoryAccess"))
    }

    async fn acquire_lease(
        &self,
        _request: Request<AcquireLeaseRequest>,
    ) -> Result<Response<Lease>, Status> {
        Err(unimplemented("AcquireLease"))
    }

    async fn renew_lease(
        &self,
        _request: Request<RenewLeaseRequest>,
    ) -> Result<Response<Lease>, Status> {
        Err(unimplemented("RenewLease"))
    }

    async fn release_lease(
        &self,
        _request: Request<ReleaseLeaseRequest>,
    ) -> Result<Response<ReleaseLeaseResponse>, Status> {
        Err(unimplemented("ReleaseLease"))
    }

    async fn forget_backup(
        &self,
        _request: Request<ForgetBackupRequest>,
    ) -> Result<Response<ForgetBackupResponse>, Status> {
        Err(unimplemented("ForgetBackup"))
    }

    async fn rotate_key(
        &self,
        _request: Request<RotateKeyRequest>,
    ) -> Result<Response<Repository>, Status> {
        Err(unimplemented("RotateKey"))
    }
}
