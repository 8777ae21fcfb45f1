//! `stowage-repo-manager`: owns one restic repository per namespace, its key, its scheduled
//! check and prune, and the leases that keep prune away from running backups.

mod api;
mod error;
mod keys;
mod leases;
mod listing;
mod lock_holders;
mod master_key;
mod mirror;
mod repositories;
mod schedule;
mod scheduler;
mod state;
mod verification;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use clap::Parser;
use stowage_proto::v1::repo_manager_server::RepoManagerServer;
use stowage_storage_location::{S3Options, StorageLocation};
use tokio_util::sync::CancellationToken;

use crate::schedule::{NamespaceInterval, Schedules, parse_duration, parse_namespace_interval};

#[derive(Debug, Parser)]
#[command(name = "stowage-repo-manager", version, about)]
struct Config {
    /// Address the gRPC server listens on.
    #[arg(long, env = "STOWAGE_LISTEN", default_value = "0.0.0.0:8081")]
    listen: SocketAddr,
    /// Backup storage location: `file:///path`, a plain absolute path, `s3://bucket[/prefix]`,
    /// `gs://bucket[/prefix]` or `azure://container[/prefix]`.
    #[arg(long, env = "STOWAGE_STORAGE_URL")]
    storage_url: String,
    /// S3 endpoint of an S3-compatible server (`http://host:9000`); AWS when unset.
    #[arg(long, env = "STOWAGE_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    #[arg(long, env = "STOWAGE_S3_REGION")]
    s3_region: Option<String>,
    /// Path-style S3 requests (most S3-compatible servers need them).
    #[arg(long, env = "STOWAGE_S3_PATH_STYLE", default_value_t = false)]
    s3_path_style: bool,
    /// The restic binary (0.17 or newer; the repo-manager refuses to start with an older one).
    #[arg(long, env = "STOWAGE_RESTIC_BINARY", default_value = "restic")]
    restic_binary: PathBuf,
    /// Private directory for restic's cache and per-run password files.
    #[arg(
        long,
        env = "STOWAGE_SCRATCH_DIR",
        default_value = "/tmp/stowage-repo-manager"
    )]
    scratch_dir: PathBuf,
    /// Master key sealing the bucket copies of repository passwords. Prefer the file or the
    /// env var: a flag value is visible in `ps`.
    #[arg(long, env = "STOWAGE_MASTER_KEY", hide_env_values = true)]
    master_key: Option<String>,
    /// File holding the master key (e.g. a mounted Secret). Without a master key given here
    /// or in STOWAGE_MASTER_KEY, a repo-manager with --kubernetes keeps one in Secret
    /// `stowage-master-key` (creating it on first start); one without Kubernetes does not
    /// start.
    #[arg(long, env = "STOWAGE_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// Keep passwords in Kubernetes Secrets (the kubeconfig or in-cluster config is used).
    #[arg(long, env = "STOWAGE_KUBERNETES", default_value_t = false)]
    kubernetes: bool,
    /// The namespace stowage runs in, where the password Secrets are kept.
    #[arg(long, env = "STOWAGE_NAMESPACE", default_value = "stowage")]
    stowage_namespace: String,
    /// How often `restic check` runs per repository.
    #[arg(long, env = "STOWAGE_CHECK_INTERVAL", default_value = "24h", value_parser = parse_duration)]
    check_interval: Duration,
    /// How often prune runs per repository (Velero's default maintenance frequency).
    #[arg(long, env = "STOWAGE_PRUNE_INTERVAL", default_value = "7d", value_parser = parse_duration)]
    prune_interval: Duration,
    /// Per-namespace check interval, `namespace=duration`; repeat or comma-separate.
    #[arg(long, env = "STOWAGE_CHECK_INTERVAL_OVERRIDES", value_delimiter = ',', value_parser = parse_namespace_interval)]
    check_interval_override: Vec<NamespaceInterval>,
    /// Per-namespace prune interval, `namespace=duration`; repeat or comma-separate.
    #[arg(long, env = "STOWAGE_PRUNE_INTERVAL_OVERRIDES", value_delimiter = ',', value_parser = parse_namespace_interval)]
    prune_interval_override: Vec<NamespaceInterval>,
    /// How often the scheduler looks for due maintenance.
    #[arg(long, env = "STOWAGE_SCHEDULER_TICK", default_value = "60s", value_parser = parse_duration)]
    scheduler_tick: Duration,
    /// How long maintenance waits for backups to release their leases before giving up.
    #[arg(long, env = "STOWAGE_MAINTENANCE_WAIT", default_value = "30m", value_parser = parse_duration)]
    maintenance_wait: Duration,
    /// Workloads in --stowage-namespace whose pods run restic. With --kubernetes, a restic lock
    /// whose host name is a pod of one of them (`<name>-<hash>-<5>` or `<name>-<5>`) that the
    /// API server no longer has (or that has ended) is removed at once, before maintenance,
    /// instead of after restic's 30 minutes. Comma-separated.
    #[arg(
        long,
        env = "STOWAGE_LOCK_HOLDER_WORKLOADS",
        value_delimiter = ',',
        default_value = "stowage-repo-manager,stowage-volume-agent"
    )]
    lock_holder_workloads: Vec<String>,
    /// Label selector (`key=value` pairs) of the volume agent DaemonSet's pods. With
    /// --kubernetes, the agent of a present pod of this selector that holds a restic lock is
    /// asked (GetAgentInfo at its pod IP and --agent-port) which restic processes run there;
    /// the lock of a restic that no longer runs is removed at once.
    #[arg(
        long,
        env = "STOWAGE_AGENT_SELECTOR",
        default_value = "app.kubernetes.io/name=stowage-volume-agent"
    )]
    agent_selector: lock_holders::LabelSelector,
    /// gRPC port of the volume agents (reached at their pod IP).
    #[arg(long, env = "STOWAGE_AGENT_PORT", default_value_t = 8082)]
    agent_port: u16,
    /// restic locks younger than this are never removed by restic's rule, even when their
    /// holder is gone (a gone stowage pod's lock is removed whatever its age).
    #[arg(long, env = "STOWAGE_STALE_LOCK_AGE", default_value = "5m", value_parser = parse_duration)]
    stale_lock_age: Duration,
    /// Take over repositories Velero created (no stowage key, Velero's static password).
    #[arg(
        long,
        env = "STOWAGE_ADOPT_VELERO_REPOSITORIES",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    adopt_velero_repositories: bool,
    /// File holding the password of Velero's repositories, for operators who replaced
    /// Velero's default (the `repository-password` key of its `velero-repo-credentials` or
    /// `velero-restic-credentials` Secret, mounted as a file). Unset: Velero's default.
    #[arg(long, env = "STOWAGE_VELERO_REPOSITORY_PASSWORD_FILE")]
    velero_repository_password_file: Option<PathBuf>,
    /// Lifetime of a lease whose request gives no TTL.
    #[arg(long, env = "STOWAGE_LEASE_TTL", default_value = "10m", value_parser = parse_duration)]
    lease_ttl: Duration,
    /// How long a lease request without `wait_timeout` waits for a conflicting holder.
    #[arg(long, env = "STOWAGE_LEASE_WAIT", default_value = "60s", value_parser = parse_duration)]
    lease_wait: Duration,
    /// How long a repository this repo-manager opened and cleared of stale locks answers
    /// EnsureRepository without running restic; 0 verifies on every call. Kept in memory
    /// only, so a restarted repo-manager verifies each repository on its first call.
    #[arg(long, env = "STOWAGE_REPOSITORY_VERIFY_INTERVAL", default_value = "300s", value_parser = parse_duration)]
    repository_verify_interval: Duration,
    #[command(flatten)]
    log: stowage_telemetry::LogArgs,
    #[command(flatten)]
    metrics: stowage_metrics::MetricsArgs,
    #[command(flatten)]
    tls: stowage_grpc::TlsArgs,
    #[command(flatten)]
    election: stowage_leader::ElectionArgs,
}

/// How long an agent asked about a restic lock's holder may take to answer; one that does not
/// keeps its locks.
const AGENT_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Who may call the repo-manager when mTLS is on and --tls-allowed-clients is not given: it
/// hands out repository passwords, and only the orchestrator asks for them.
const DEFAULT_ALLOWED_CLIENTS: &[&str] = &["stowage-orchestrator"];

impl Config {
    /// The master key given to the process, if any.
    fn given_master_key(&self) -> anyhow::Result<Option<keys::MasterKey>> {
        if let Some(path) = &self.master_key_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the master key file {}", path.display()))?;
            anyhow::ensure!(
                !text.trim().is_empty(),
                "master key file {} is empty",
                path.display()
            );
            return Ok(Some(keys::MasterKey::from_secret_text(&text)));
        }
        Ok(self
            .master_key
            .as_deref()
            .filter(|key| !key.trim().is_empty())
            .map(keys::MasterKey::from_secret_text))
    }

    fn schedules(&self) -> Schedules {
        let overrides = |list: &[NamespaceInterval]| {
            list.iter()
                .map(|item| (item.namespace.clone(), item.interval))
                .collect()
        };
        Schedules {
            check: self.check_interval,
            prune: self.prune_interval,
            check_overrides: overrides(&self.check_interval_override),
            prune_overrides: overrides(&self.prune_interval_override),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    // ring (tonic, kube) and aws-lc-rs (object_store) are both linked; rustls needs one chosen.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let telemetry = config.log.init("stowage-repo-manager")?;
    let shutdown = CancellationToken::new();
    let signals = stowage_grpc::cancel_on_signal(shutdown.clone());
    // Read the certificates before anything starts, so a bad mount fails the pod at once.
    let security = config
        .tls
        .server_allowing(DEFAULT_ALLOWED_CLIENTS)
        .context("TLS settings")?;
    // Before the first channel: the agents asked about restic locks are reached with it.
    config
        .tls
        .install_client_tls()
        .context("client TLS settings")?;

    let location = StorageLocation::from_env(
        &config.storage_url,
        S3Options {
            endpoint: config.s3_endpoint.clone(),
            region: config.s3_region.clone(),
            path_style: config.s3_path_style,
        },
    )?;
    // Standing for election first: a standby serves health and answers Unavailable; it reads
    // no repository state and runs no maintenance until it leads. The Lease is in the
    // Kubernetes API whether or not passwords are kept there (--kubernetes).
    let election = stowage_leader::Election::start(
        config
            .election
            .settings("stowage-repo-manager", &config.stowage_namespace)
            .context("leader election")?,
    )
    .await?;
    let leadership = election.leadership().clone();
    // Its writes (password Secrets, ResticRepository mirrors) are refused once the term has
    // ended, as the writes to the storage location are.
    let client = if config.kubernetes {
        Some(
            stowage_leader::fenced_client(leadership.term(), "repo-manager")
                .await
                .context("connecting to the Kubernetes API")?,
        )
    } else {
        None
    };
    let restic = stowage_restic::Restic::new(&config.restic_binary, &config.scratch_dir);
    // A restic too old to classify its failures by exit code stops the repo-manager here,
    // naming the version found and the one needed. A missing one is logged: every repository
    // call then fails naming the binary.
    let restic_version = match restic.supported_version(&shutdown).await {
        Ok((line, _)) => line,
        Err(error @ stowage_restic::ResticError::BinaryMissing { .. }) => {
            tracing::error!(%error, "restic is not usable");
            String::new()
        }
        Err(error) => {
            tracing::error!(%error, "refusing to start with this restic");
            return Err(anyhow::Error::new(error).context("checking the restic binary"));
        }
    };
    let metrics_server = config.metrics.start(shutdown.clone()).await;

    type Api = RepoManagerServer<api::RepoManagerApi>;
    let (router, health) = stowage_grpc::secured_router_with_health::<Api>(&security).await?;
    let (gate, opener) = stowage_leader::gate::<Api>(&leadership, health).await;
    tracing::info!(
        storage = %config.storage_url,
        restic = %restic_version,
        tls = security.is_tls(),
        metrics = %config.metrics.metrics_listen,
        leader_elect = config.election.leader_elect,
        identity = leadership.identity(),
        "repo manager starting"
    );
    let mut server = tokio::spawn(stowage_grpc::serve(
        router.add_service(gate),
        config.listen,
        shutdown.clone(),
    ));
    let mut scheduler = None;
    let served = election
        .serve(&mut server, &shutdown, "repo-manager", async || {
            let manager = lead(
                &config,
                location,
                client,
                restic,
                leadership.term(),
                &shutdown,
            )
            .await?;
            scheduler = Some(tokio::spawn(scheduler::run(
                manager.clone(),
                config.scheduler_tick,
                shutdown.clone(),
            )));
            opener
                .open(RepoManagerServer::new(api::RepoManagerApi::new(
                    manager,
                    api::LeaseDefaults {
                        ttl: config.lease_ttl,
                        wait: config.lease_wait,
                    },
                )))
                .await;
            Ok::<(), anyhow::Error>(())
        })
        .await?;
    let served = served
        .context("repo manager gRPC server task")?
        .context("repo manager gRPC server");
    shutdown.cancel();
    if let Some(scheduler) = scheduler
        && let Err(error) = scheduler.await
    {
        tracing::error!(%error, "maintenance scheduler panicked");
    }
    // Only now that no maintenance runs may a standby take over: the Lease is released.
    election.release().await;
    if let Some(metrics_server) = metrics_server {
        let _ = metrics_server.await;
    }
    signals.abort();
    telemetry.shutdown();
    served
}

/// What the leader loads before it serves: the master key (creating its Secret on a first
/// start), the repositories' state from the bucket, and the repository manager over them.
async fn lead(
    config: &Config,
    location: StorageLocation,
    client: Option<kube::Client>,
    restic: stowage_restic::Restic,
    term: stowage_contract::fencing::LeaderTerm,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<repositories::Manager>> {
    // Every write to the location (repository records, `running_since`, maintenance results,
    // sealed key copies, removed restic locks) passes this fence (the fencing rule: a
    // repo-manager woken up after its term ended writes nothing).
    let store: Arc<dyn stowage_storage_location::object_store::ObjectStore> =
        Arc::new(stowage_storage_location::FencedObjectStore::new(
            location.object_store()?,
            term.clone(),
            "repo-manager",
        ));
    // Never without a master key: every bucket copy of a password is written sealed.
    let master = match (config.given_master_key()?, &client) {
        (Some(master), _) => master,
        (None, Some(client)) => master_key::from_secret_or_create(
            &master_key::KubeMasterKeySecret::new(client.clone(), &config.stowage_namespace),
        )
        .await
        .context("the master key sealing repository passwords")?,
        (None, None) => anyhow::bail!(
            "no master key: the repo-manager seals every repository password it stores in the \
             bucket with one, and without Kubernetes access (--kubernetes) it cannot keep one \
             in the Secret `{}`; give --master-key-file (STOWAGE_MASTER_KEY_FILE) with the \
             key, or STOWAGE_MASTER_KEY",
            master_key::MASTER_KEY_SECRET
        ),
    };
    let (secrets, cluster) = match client {
        Some(client) => (
            Some(keys::SecretStore {
                client: client.clone(),
                namespace: config.stowage_namespace.clone(),
            }),
            Some(repositories::Cluster {
                mirror: mirror::RepositoryMirror::new(client.clone(), &config.stowage_namespace),
                lock_holders: lock_holders::LockHolders::new(
                    Box::new(lock_holders::KubePods::new(
                        client,
                        &config.stowage_namespace,
                    )),
                    config.lock_holder_workloads.clone(),
                )
                .with_agents(lock_holders::Agents {
                    directory: Box::new(lock_holders::GrpcAgents {
                        port: config.agent_port,
                        timeout: AGENT_ANSWER_TIMEOUT,
                    }),
                    selector: config.agent_selector.clone(),
                }),
            }),
        ),
        None => (None, None),
    };
    let manager = Arc::new(
        repositories::Manager::load(
            location,
            restic,
            state::StateStore::new(store.clone()),
            keys::KeyStore::new(store, master, secrets),
            repositories::ManagerSettings {
                maintenance_wait: config.maintenance_wait,
                stale_lock_age: chrono::Duration::from_std(config.stale_lock_age)
                    .context("stale lock age is too large")?,
                schedules: config.schedules(),
                adopt_velero_repositories: config.adopt_velero_repositories,
                velero_repository_password: velero_repository_password(
                    config.velero_repository_password_file.as_deref(),
                )?,
                verify_interval: config.repository_verify_interval,
                term,
            },
            cluster,
            shutdown.clone(),
        )
        .await?,
    );
    let gauges = manager.clone();
    stowage_metrics::state::register(&mut stowage_metrics::registry(), move || {
        stowage_metrics::repo_manager::families(&gauges.metric_states())
    });
    Ok(manager)
}

/// Velero's repository password: the file's first line, or Velero's default.
fn velero_repository_password(file: Option<&std::path::Path>) -> anyhow::Result<String> {
    let Some(file) = file else {
        return Ok(repositories::VELERO_STATIC_PASSWORD.to_string());
    };
    let text = std::fs::read_to_string(file).with_context(|| {
        format!(
            "reading the Velero repository password file {}",
            file.display()
        )
    })?;
    let password = text.lines().next().unwrap_or_default();
    anyhow::ensure!(
        !password.is_empty(),
        "the Velero repository password file {} is empty",
        file.display()
    );
    Ok(password.to_string())
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
