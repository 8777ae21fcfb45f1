//! `stowage-bench-instant-agent`: a BENCHMARK DOUBLE of the volume agent. It implements the
//! VolumeAgent gRPC contract but runs no restic: every backup and restore completes at once
//! with a made-up snapshot id, so a benchmark measures the orchestrator, not restic. One
//! process can stand in for many nodes (the orchestrator's `--agent NODE=URL`, same URL).

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use anyhow::Context;
use clap::Parser;
use stowage_proto::{
    prost_types,
    v1::{
        AbandonRestoreRequest, AbandonRestoreResponse, AgentInfo, AttachOperationRequest,
        BackupVolumeEvent, BackupVolumeRequest, BackupVolumeResult, CancelOperationRequest,
        CancelOperationResponse, GetAgentInfoRequest, RestoreVolumeEvent, RestoreVolumeRequest,
        RestoreVolumeResult, backup_volume_event, restore_volume_event,
        volume_agent_server::{VolumeAgent, VolumeAgentServer},
    },
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

#[derive(Debug, Parser)]
#[command(name = "stowage-bench-instant-agent", version, about)]
struct Config {
    /// Address the gRPC server listens on.
    #[arg(long, env = "STOWAGE_LISTEN", default_value = "127.0.0.1:8082")]
    listen: SocketAddr,
    /// Node name reported by GetAgentInfo (the double serves any node it is asked about).
    #[arg(long, env = "NODE_NAME", default_value = "bench-instant")]
    node_name: String,
    #[command(flatten)]
    log: stowage_telemetry::LogArgs,
}

/// Counts calls so the log says how many RPCs the double answered.
#[derive(Default)]
struct InstantAgent {
    node_name: String,
    backups: AtomicU64,
    restores: AtomicU64,
    next_id: AtomicU64,
}

type Single<T> = tokio_stream::Once<Result<T, Status>>;

fn now() -> prost_types::Timestamp {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
    }
}

impl InstantAgent {
    /// A restic-shaped (64 hex digits) id, unique within this process.
    fn snapshot_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{:064x}", n + 1)
    }
}

#[tonic::async_trait]
impl VolumeAgent for InstantAgent {
    type BackupVolumeStream = Single<BackupVolumeEvent>;
    type RestoreVolumeStream = Single<RestoreVolumeEvent>;
    type AttachBackupStream = Single<BackupVolumeEvent>;
    type AttachRestoreStream = Single<RestoreVolumeEvent>;

    async fn attach_backup(
        &self,
        request: Request<AttachOperationRequest>,
    ) -> Result<Response<Self::AttachBackupStream>, Status> {
        // Every operation ends as it starts: there is never one to attach to.
        Err(Status::not_found(format!(
            "no operation `{}`: the benchmark agent keeps none",
            request.get_ref().operation_id
        )))
    }

    async fn attach_restore(
        &self,
        request: Request<AttachOperationRequest>,
    ) -> Result<Response<Self::AttachRestoreStream>, Status> {
        Err(Status::not_found(format!(
            "no operation `{}`: the benchmark agent keeps none",
            request.get_ref().operation_id
        )))
    }

    #[tracing::instrument(skip_all, fields(operation = %request.get_ref().operation_id))]
    async fn backup_volume(
        &self,
        request: Request<BackupVolumeRequest>,
    ) -> Result<Response<Self::BackupVolumeStream>, Status> {
        let request = request.into_inner();
        if request.volume.is_none() {
            return Err(Status::invalid_argument("volume is required"));
        }
        self.backups.fetch_add(1, Ordering::Relaxed);
        let stamp = now();
        let result = BackupVolumeResult {
            snapshot_id: self.snapshot_id(),
            started: Some(stamp),
            finished: Some(stamp),
            ..Default::default()
        };
        Ok(Response::new(tokio_stream::once(Ok(BackupVolumeEvent {
            event: Some(backup_volume_event::Event::Result(result)),
        }))))
    }

    #[tracing::instrument(skip_all, fields(operation = %request.get_ref().operation_id))]
    async fn restore_volume(
        &self,
        request: Request<RestoreVolumeRequest>,
    ) -> Result<Response<Self::RestoreVolumeStream>, Status> {
        let request = request.into_inner();
        self.restores.fetch_add(1, Ordering::Relaxed);
        let stamp = now();
        let result = RestoreVolumeResult {
            snapshot_id: request.snapshot_id,
            started: Some(stamp),
            finished: Some(stamp),
            ..Default::default()
        };
        Ok(Response::new(tokio_stream::once(Ok(RestoreVolumeEvent {
            event: Some(restore_volume_event::Event::Result(result)),
        }))))
    }

    async fn cancel_operation(
        &self,
        _request: Request<CancelOperationRequest>,
    ) -> Result<Response<CancelOperationResponse>, Status> {
        // Nothing ever runs long enough to be cancelled.
        Ok(Response::new(CancelOperationResponse { cancelled: false }))
    }

    async fn abandon_restore(
        &self,
        _request: Request<AbandonRestoreRequest>,
    ) -> Result<Response<AbandonRestoreResponse>, Status> {
        // It writes into no volume, so there is no restore helper to tell.
        Ok(Response::new(AbandonRestoreResponse { written: false }))
    }

    async fn get_agent_info(
        &self,
        _request: Request<GetAgentInfoRequest>,
    ) -> Result<Response<AgentInfo>, Status> {
        Ok(Response::new(AgentInfo {
            node_name: self.node_name.clone(),
            version: format!("{} (benchmark double)", env!("CARGO_PKG_VERSION")),
            max_concurrent_operations: u32::MAX,
            restic_version: "none: benchmark double".to_string(),
            ..Default::default()
        }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = config.log.init("stowage-bench-instant-agent")?;
    let shutdown = CancellationToken::new();
    stowage_grpc::cancel_on_signal(shutdown.clone());
    let agent = std::sync::Arc::new(InstantAgent {
        node_name: config.node_name.clone(),
        ..Default::default()
    });
    let started = Instant::now();
    let router = stowage_grpc::router_for::<VolumeAgentServer<InstantAgent>>()
        .await?
        .add_service(VolumeAgentServer::from_arc(agent.clone()));
    tracing::warn!("benchmark double: answers every backup and restore at once, runs no restic");
    let served = stowage_grpc::serve(router, config.listen, shutdown)
        .await
        .context("instant agent gRPC server");
    tracing::info!(
        backups = agent.backups.load(Ordering::Relaxed),
        restores = agent.restores.load(Ordering::Relaxed),
        seconds = started.elapsed().as_secs_f64(),
        "instant agent stopped"
    );
    telemetry.shutdown();
    served
}
