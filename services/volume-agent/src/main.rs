//! `stowage-volume-agent`: runs on every node (DaemonSet) and backs up / restores pod volumes
//! found under the kubelet pods directory with restic.

mod api;

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::Parser;
use stowage_proto::v1::volume_agent_server::VolumeAgentServer;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "stowage-volume-agent", version, about)]
struct Config {
    /// Address the gRPC server listens on.
    #[arg(long, env = "STOWAGE_LISTEN", default_value = "0.0.0.0:8082")]
    listen: SocketAddr,
    /// Name of the node this agent serves (from the downward API in the DaemonSet).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// The host's kubelet pods directory, as mounted in the agent.
    #[arg(
        long,
        env = "STOWAGE_PODS_ROOT",
        default_value = "/var/lib/kubelet/pods"
    )]
    pods_root: PathBuf,
    /// Private scratch directory for restic password files and cache.
    #[arg(long, env = "STOWAGE_SCRATCH_DIR", default_value = "/scratch")]
    scratch_dir: PathBuf,
    /// Operations run at once; further ones queue.
    #[arg(long, env = "STOWAGE_MAX_CONCURRENT", default_value_t = 2)]
    max_concurrent: u32,
    /// The restic binary to run.
    #[arg(long, env = "STOWAGE_RESTIC_BINARY", default_value = "restic")]
    restic_binary: PathBuf,
    #[command(flatten)]
    log: stowage_telemetry::LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = config.log.init("stowage-volume-agent")?;
    let shutdown = CancellationToken::new();
    stowage_grpc::cancel_on_signal(shutdown.clone());

    let agent = api::AgentApi::new(config.node_name.clone(), config.pods_root.clone());
    let router = stowage_grpc::router_for::<VolumeAgentServer<api::AgentApi>>()
        .await?
        .add_service(VolumeAgentServer::new(agent));
    tracing::info!(node = %config.node_name, pods_root = %config.pods_root.display(), "volume agent starting");
    let served = stowage_grpc::serve(router, config.listen, shutdown)
        .await
        .context("volume agent gRPC server");
    telemetry.shutdown();
    served
}
