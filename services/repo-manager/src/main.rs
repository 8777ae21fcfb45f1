//! `stowage-repo-manager`: owns one restic repository per namespace, its key, its scheduled
//! check and prune, and the leases that keep prune away from running backups.

mod api;

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use stowage_proto::v1::repo_manager_server::RepoManagerServer;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "stowage-repo-manager", version, about)]
struct Config {
    /// Address the gRPC server listens on.
    #[arg(long, env = "STOWAGE_LISTEN", default_value = "0.0.0.0:8081")]
    listen: SocketAddr,
    /// Backup storage location: `file:///path`, `s3://bucket/prefix`, a plain path.
    #[arg(long, env = "STOWAGE_STORAGE_URL")]
    storage_url: String,
    #[command(flatten)]
    log: stowage_telemetry::LogArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = config.log.init("stowage-repo-manager")?;
    let shutdown = CancellationToken::new();
    stowage_grpc::cancel_on_signal(shutdown.clone());

    let router = stowage_grpc::router_for::<RepoManagerServer<api::RepoManagerApi>>()
        .await?
        .add_service(RepoManagerServer::new(api::RepoManagerApi::new(
            config.storage_url.clone(),
        )));
    tracing::info!(storage = %config.storage_url, "repo manager starting");
    let served = stowage_grpc::serve(router, config.listen, shutdown)
        .await
        .context("repo manager gRPC server");
    telemetry.shutdown();
    served
}
