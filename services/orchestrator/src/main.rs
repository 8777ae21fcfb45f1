//! `stowage-orchestrator`: the gRPC API schedulers and the CLI call. Finds annotated pod
//! volumes, ensures repositories through the repo-manager, drives the node agents, and keeps
//! backup records in the object store. `main` only wires the parts together.

mod adapters;
mod api;
mod as_of;
mod backup;
mod browse;
mod coverage;
mod data_restore;
mod deps;
mod engine;
mod error;
mod fencing;
mod hooks;
mod kube;
mod leading;
mod lifecycle;
mod parents;
mod paths;
mod ports;
mod recovery;
mod repositories;
mod resources;
mod restore;
mod schedules;
mod selection;
mod state;
mod store;
mod takeover;
mod tally;
#[cfg(test)]
mod testing;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use stowage_proto::v1::{
    orchestrator_server::OrchestratorServer, repo_manager_client::RepoManagerClient,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

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
    /// Label selector of the volume agent DaemonSet's pods, in the stowage namespace.
    #[arg(
        long,
        env = "STOWAGE_AGENT_SELECTOR",
        default_value = "app.kubernetes.io/name=stowage-volume-agent"
    )]
    agent_selector: String,
    /// gRPC port of discovered agents (reached at their pod IP).
    #[arg(long, env = "STOWAGE_AGENT_PORT", default_value_t = 8082)]
    agent_port: u16,
    /// Do not use a Kubernetes API (backups, restores and coverage then fail with a reason).
    /// By default the in-cluster config or `KUBECONFIG` is used.
    #[arg(long, env = "STOWAGE_NO_KUBERNETES", default_value_t = false)]
    no_kubernetes: bool,
    /// Namespace stowage runs in: PodVolumeBackup/PodVolumeRestore mirrors, agent pods and the
    /// restore-helper ConfigMap live there.
    #[arg(long, env = "STOWAGE_NAMESPACE", default_value = "stowage")]
    namespace: String,
    /// Storage location: `file:///dir`, `/dir`, `s3://bucket[/prefix]`, `gs://…`, `azure://…`.
    /// Without it backups are kept in memory only.
    #[arg(long, env = "STOWAGE_STORAGE_URL")]
    storage_url: Option<String>,
    /// S3-compatible endpoint, e.g. `http://minio:9000`.
    #[arg(long, env = "STOWAGE_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    #[arg(long, env = "STOWAGE_S3_REGION")]
    s3_region: Option<String>,
    /// Path-style S3 requests (most S3-compatible servers need them).
    #[arg(long, env = "STOWAGE_S3_PATH_STYLE", default_value_t = false)]
    s3_path_style: bool,
    /// Volumes backed up or restored at once over all nodes.
    #[arg(long, env = "STOWAGE_MAX_PARALLEL_VOLUMES", default_value_t = 16)]
    max_parallel_volumes: usize,
    /// Volumes backed up or restored at once on one node.
    #[arg(long, env = "STOWAGE_MAX_PARALLEL_PER_NODE", default_value_t = 2)]
    max_parallel_per_node: usize,
    /// A running volume whose restic reports no new bytes or files for this many seconds is
    /// cancelled and fails as stalled; a slow volume that still moves is never stopped by it.
    #[arg(long, env = "STOWAGE_STALL_TIMEOUT_SECONDS", default_value_t = 600)]
    stall_timeout_seconds: u64,
    /// TTL of the repository leases backups and restores hold, in seconds; they are renewed
    /// every third of it, so the leases of a killed orchestrator lapse after about this long.
    #[arg(long, env = "STOWAGE_LEASE_TTL_SECONDS", default_value_t = 60)]
    lease_ttl_seconds: u64,
    /// Default per-backup and per-restore timeout in seconds (Velero's restic timeout: 4 h).
    #[arg(long, env = "STOWAGE_BACKUP_TIMEOUT_SECONDS", default_value_t = 4 * 3600)]
    backup_timeout_seconds: u64,
    /// Default backup TTL in seconds (30 days, like Velero).
    #[arg(long, env = "STOWAGE_BACKUP_TTL_SECONDS", default_value_t = 30 * 24 * 3600)]
    backup_ttl_seconds: u64,
    /// How long to wait for a namespace's repository to become ready, in seconds.
    #[arg(
        long,
        env = "STOWAGE_REPOSITORY_READY_TIMEOUT_SECONDS",
        default_value_t = 300
    )]
    repository_ready_timeout_seconds: u64,
    /// How long a restore waits for a recreated pod to run its restore helper, in seconds.
    #[arg(long, env = "STOWAGE_POD_START_TIMEOUT_SECONDS", default_value_t = 600)]
    pod_start_timeout_seconds: u64,
    /// How often Kubernetes objects are polled while waiting, in milliseconds.
    #[arg(long, env = "STOWAGE_POLL_INTERVAL_MS", default_value_t = 1000)]
    poll_interval_ms: u64,
    /// Objects per list request when a backup reads the namespaces' resources (the API
    /// server's `limit`; larger lists are read page by page with its continue token).
    #[arg(long, env = "STOWAGE_LIST_PAGE_SIZE", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    list_page_size: u32,
    /// Restore helper image when the ConfigMap names none; an untagged image gets this
    /// orchestrator's version as its tag.
    #[arg(
        long,
        env = "STOWAGE_RESTORE_HELPER_IMAGE",
        default_value_t = stowage_images::Image::RestoreHelper.repository()
    )]
    restore_helper_image: String,
    /// The scheduler's longest sleep, in seconds: it wakes at each schedule's next firing, and
    /// at least this often to notice a wall clock that jumped.
    #[arg(
        long,
        env = "STOWAGE_SCHEDULER_MAX_SLEEP_SECONDS",
        default_value_t = 30
    )]
    scheduler_max_sleep_seconds: u64,
    /// Seconds between looks for expired backups and for backups new in the object store.
    #[arg(
        long,
        env = "STOWAGE_HOUSEKEEPING_INTERVAL_SECONDS",
        default_value_t = 60
    )]
    housekeeping_interval_seconds: u64,
    #[command(flatten)]
    log: stowage_telemetry::LogArgs,
    #[command(flatten)]
    metrics: stowage_metrics::MetricsArgs,
    #[command(flatten)]
    tls: stowage_grpc::TlsArgs,
    #[command(flatten)]
    election: stowage_leader::ElectionArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    // ring (tonic) and aws-lc-rs (object_store) are both linked; rustls needs one chosen.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let telemetry = config.log.init("stowage-orchestrator")?;
    let shutdown = CancellationToken::new();
    stowage_grpc::cancel_on_signal(shutdown.clone());
    // Read the certificates before anything starts, so a bad mount fails the pod at once.
    // External API callers (schedulers, the CLI) are not known by name: any certificate the
    // CA signed, or a bearer token, is admitted.
    let security = config.tls.server().context("TLS settings")?;
    // Before the first channel: the repo-manager and agent clients pick it up.
    config
        .tls
        .install_client_tls()
        .context("client TLS settings")?;
    // Standing for election first: a standby serves health and answers Unavailable, and
    // starts no work until it leads.
    let settings = config
        .election
        .settings("stowage-orchestrator", &config.namespace)
        .context("leader election")?;
    anyhow::ensure!(
        settings.is_none() || !config.no_kubernetes,
        "--leader-elect elects through a Lease in the Kubernetes API; it cannot be combined \
         with --no-kubernetes"
    );
    let election = stowage_leader::Election::start(settings).await?;
    let leadership = election.leadership().clone();
    let index = Arc::new(state::Index::default());
    let gauges = index.clone();
    stowage_metrics::state::register(&mut stowage_metrics::registry(), move || {
        let (backups, restores) = gauges.phases();
        let mut families = stowage_metrics::orchestrator::families(&backups, &restores);
        families.extend(stowage_metrics::orchestrator::volume_families(
            &gauges.volume_backup_attempts(),
        ));
        families
    });
    let metrics_server = config.metrics.start(shutdown.clone()).await;

    let repo_manager = adapters::RepoManager::new(
        RepoManagerClient::new(stowage_grpc::connect_lazy(&config.repo_manager)?),
        leadership.term(),
    );
    let cluster = if config.no_kubernetes {
        None
    } else {
        // Its writes (the mirrors, a restore's objects) are refused once the term has ended.
        match stowage_leader::fenced_client(leadership.term(), "orchestrator").await {
            Ok(client) => Some(kube::Cluster::new(client, config.namespace.clone())),
            Err(error) => {
                tracing::warn!(%error, "no Kubernetes API: backups and restores will fail until one is configured");
                None
            }
        }
    };
    let static_agents = kube::agents::parse_static_agents(&config.agents)?;
    // This process's leader term (the fencing rule, `fencing.rs`), as the election reports it
    // on every renewal: sent to the agents and checked before every write to the storage
    // location. Without leader election it is never set, and neither happens.
    let term = leadership.term();
    let agents = kube::agents::Agents::new(
        static_agents,
        cluster.clone(),
        config.agent_selector.clone(),
        config.agent_port,
    )
    .with_term(term.clone());
    let mut schedule_store: Option<Arc<dyn schedules::ScheduleStore>> = None;
    let store = match &config.storage_url {
        Some(url) => {
            let location = stowage_storage_location::StorageLocation::from_env(
                url,
                stowage_storage_location::S3Options {
                    endpoint: config.s3_endpoint.clone(),
                    region: config.s3_region.clone(),
                    path_style: config.s3_path_style,
                },
            )
            .with_context(|| format!("storage location {url}"))?;
            let object_store = location
                .object_store()
                .with_context(|| format!("opening storage location {url}"))?;
            // Every write of this process to the location (records, logs, resource tarballs,
            // schedules, deletions) passes this fence; the record store's own check below
            // answers callers `Unavailable` before any of it is prepared.
            let object_store = Arc::new(stowage_storage_location::FencedObjectStore::new(
                object_store,
                term.clone(),
                "orchestrator",
            ));
            let records = Arc::new(store::Store::new(object_store, config.namespace.clone()));
            schedule_store = Some(records.clone());
            Some(Arc::new(fencing::FencedStore::new(records, term.clone()))
                as Arc<dyn ports::RecordStore>)
        }
        None => {
            tracing::warn!("no storage location: backups are kept in memory only");
            None
        }
    };
    let tasks = TaskTracker::new();
    let deps = deps::Deps {
        repo_manager: Arc::new(repo_manager),
        agents: Arc::new(agents),
        cluster: cluster.map(|cluster| Arc::new(cluster) as Arc<dyn ports::ClusterPort>),
        store,
        index,
        limits: deps::Limits {
            max_parallel_volumes: config.max_parallel_volumes,
            max_parallel_per_node: config.max_parallel_per_node,
            default_timeout: Duration::from_secs(config.backup_timeout_seconds),
            default_ttl: Duration::from_secs(config.backup_ttl_seconds),
            repository_ready_timeout: Duration::from_secs(config.repository_ready_timeout_seconds),
            pod_start_timeout: Duration::from_secs(config.pod_start_timeout_seconds),
            poll_interval: Duration::from_millis(config.poll_interval_ms),
            stall_timeout: Duration::from_secs(config.stall_timeout_seconds.max(1)),
            lease_ttl: Duration::from_secs(config.lease_ttl_seconds.max(1)),
            list_page_size: config.list_page_size,
        },
        restore_helper: deps::RestoreHelperDefaults {
            image: config.restore_helper_image.clone(),
        },
        schedules: Arc::new(schedules::Book::new(
            schedule_store,
            Arc::new(schedules::SystemClock),
        )),
        tasks: tasks.clone(),
        shutdown: shutdown.clone(),
    };
    type Api = OrchestratorServer<api::OrchestratorApi>;
    let (router, health) = stowage_grpc::secured_router_with_health::<Api>(&security).await?;
    let (gate, opener) = stowage_leader::gate::<Api>(&leadership, health).await;
    tracing::info!(
        repo_manager = %config.repo_manager,
        tls = security.is_tls(),
        metrics = %config.metrics.metrics_listen,
        leader_elect = config.election.leader_elect,
        identity = leadership.identity(),
        "orchestrator starting"
    );
    let mut server = tokio::spawn(stowage_grpc::serve(
        router.add_service(gate),
        config.listen,
        shutdown.clone(),
    ));
    let served = election
        .serve(&mut server, &shutdown, "orchestrator", async move || {
            leading::start(
                &deps,
                Duration::from_secs(config.housekeeping_interval_seconds.max(1)),
                Duration::from_secs(config.scheduler_max_sleep_seconds.max(1)),
            )
            .await;
            opener
                .open(OrchestratorServer::new(api::OrchestratorApi::new(deps)))
                .await;
            Ok::<(), std::convert::Infallible>(())
        })
        .await
        .unwrap_or_else(|never| match never {});
    let served = served
        .context("orchestrator gRPC server task")?
        .context("orchestrator gRPC server");
    // Running backups see the cancelled token, fail their volumes and write their records.
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    // Only now that nothing works any more may a standby take over: the Lease is released.
    election.release().await;
    if let Some(metrics_server) = metrics_server {
        let _ = metrics_server.await;
    }
    telemetry.shutdown();
    served
}

#[cfg(test)]
mod config_tests {
    /// Flags flattened in from shared crates (election, TLS, logs, metrics) must not reuse an
    /// argument id of the service's own: clap panics on it at start-up.
    #[test]
    fn every_flag_is_well_formed_and_unique() {
        use clap::CommandFactory;
        super::Config::command().debug_assert();
    }
}
