//! `stowage-orchestrator`: the gRPC API schedulers and the CLI call. Finds annotated pod
//! volumes, ensures repositories through the repo-manager, and drives the node agents.

mod api;

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use stowage_proto::v1::{
    orchestrator_server::OrchestratorServer, repo_manager_client::RepoManagerClient,
};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "stowage-orchestrator", version, about)]
struct Config {
    /// Address the gRPC server listens on.
    #[arg(long, env = "STOWAGE_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// gRPC address of the repo-manager.
    #[arg(
        long,
        env = "STOWAGE_REPO_MANAGER",
        default_value = "http://stowage-repo-manager.stowage.svc:8081"
    )]
    repo_manager: String,
    /// Agents by node, `NODE=URL`, for clusters where agents are not discovered through the
    /// Kubernetes API (comma-separated in the environment variable).
    #[arg(long = "agent", env = "STOWAGE_AGENTS", value_delimiter = ',')]
    agents: Vec<String>,
    #[command(flatten)]
    log: stowage_telemetry::LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = config.log.init("stowage-orchestrator")?;
    let shutdown = CancellationToken::new();
    stowage_grpc::cancel_on_signal(shutdown.clone());

    let repo_manager = RepoManagerClient::new(stowage_grpc::connect_lazy(&config.repo_manager)?);
    let agents = api::parse_static_agents(&config.agents)?;
    let api = api::OrchestratorApi::new(repo_manager, agents);
    let router = stowage_grpc::router_for::<OrchestratorServer<api::OrchestratorApi>>()
        .await?
        .add_service(OrchestratorServer::new(api));
    let served = stowage_grpc::serve(router, config.listen, shutdown)
        .await
        .context("orchestrator gRPC server");
    telemetry.shutdown();
    served
}
