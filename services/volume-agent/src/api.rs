//! The tonic handlers of the VolumeAgent service.

use std::{path::PathBuf, pin::Pin};

use stowage_proto::v1::{
    AgentInfo, BackupVolumeEvent, BackupVolumeRequest, CancelOperationRequest,
    CancelOperationResponse, GetAgentInfoRequest, RestoreVolumeEvent, RestoreVolumeRequest,
    volume_agent_server::VolumeAgent,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

pub struct AgentApi {
    node_name: String,
    pods_root: PathBuf,
}

impl AgentApi {
    pub fn new(node_name: String, pods_root: PathBuf) -> Self {
        Self {
            node_name,
            pods_root,
        }
    }
}

#[tonic::async_trait]
impl VolumeAgent for AgentApi {
    type BackupVolumeStream = EventStream<BackupVolumeEvent>;
    type RestoreVolumeStream = EventStream<RestoreVolumeEvent>;

    async fn backup_volume(
        &self,
        _request: Request<BackupVolumeRequest>,
    ) -> Result<Response<Self::BackupVolumeStream>, Status> {
        Err(Status::unimplemented("BackupVolume is not implemented yet"))
    }

    async fn restore_volume(
        &self,
        _request: Request<RestoreVolumeRequest>,
    ) -> Result<Response<Self::RestoreVolumeStream>, Status> {
        Err(Status::unimplemented(
            "RestoreVolume is not implemented yet",
        ))
    }

    async fn cancel_operation(
        &self,
        _request: Request<CancelOperationRequest>,
    ) -> Result<Response<CancelOperationResponse>, Status> {
        Ok(Response::new(CancelOperationResponse { cancelled: false }))
    }

    #[tracing::instrument(skip_all, fields(node = %self.node_name))]
    async fn get_agent_info(
        &self,
        _request: Request<GetAgentInfoRequest>,
    ) -> Result<Response<AgentInfo>, Status> {
        Ok(Response::new(AgentInfo {
            node_name: self.node_name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            pods_root: self.pods_root.display().to_string(),
            ..Default::default()
        }))
    }
}
