//! `stowage-volume-agent`: runs on every node (DaemonSet) and backs up / restores pod volumes
//! found under the kubelet pods directory with restic.

mod api;
mod error;
mod jobs;
mod names;
mod operations;
mod parent;
mod relay;
mod volume_path;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Parser;
use stowage_proto::v1::volume_agent_server::VolumeAgentServer;
use stowage_restic::{Restic, ResticError, RetryPolicy};
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
    /// `--host` of the snapshots this agent makes; the node name when unset. Velero used
    /// `velero` for every snapshot; set that to keep its look.
    #[arg(long, env = "STOWAGE_SNAPSHOT_HOST")]
    snapshot_host: Option<String>,
    /// The host's kubelet pods directory, as mounted in the agent.
    #[arg(
        long,
        env = "STOWAGE_PODS_ROOT",
        default_value = "/var/lib/kubelet/pods"
    )]
    pods_root: PathBuf,
    /// Private scratch directory for restic password files and cache (an emptyDir).
    #[arg(long, env = "STOWAGE_SCRATCH_DIR", default_value = "/scratch")]
    scratch_dir: PathBuf,
    /// Operations run at once; further ones queue.
    #[arg(long, env = "STOWAGE_MAX_CONCURRENT", default_value_t = 2)]
    max_concurrent: u32,
    /// The restic binary to run (0.17 or newer; the agent refuses to start with an older one).
    #[arg(long, env = "STOWAGE_RESTIC_BINARY", default_value = "restic")]
    restic_binary: PathBuf,
    /// Soft memory limit of each restic process (its GOMEMLIMIT): `512MiB`, `2GiB`, or bytes.
    /// Up to --max-concurrent restic processes run at once, each under this limit, beside the
    /// agent itself; keep their sum under the container's memory limit. Unset: no limit.
    #[arg(long, env = "STOWAGE_RESTIC_MEMORY_LIMIT", value_parser = stowage_restic::environment::parse_memory_size)]
    restic_memory_limit: Option<u64>,
    /// Seconds restic itself waits for a repository lock another process holds (restic
    /// `--retry-lock`) before the volume fails; 0 = restic does not wait and a held lock is
    /// retried like a storage outage (--restic-retries).
    #[arg(long, env = "STOWAGE_RESTIC_RETRY_LOCK_SECONDS", default_value_t = 60)]
    restic_retry_lock_seconds: u64,
    /// Seconds a cancelled restic gets after SIGINT to remove its repository lock before it
    /// is killed.
    #[arg(long, env = "STOWAGE_RESTIC_STOP_GRACE_SECONDS", default_value_t = 5)]
    restic_stop_grace_seconds: u64,
    /// Upload bandwidth of each backup in KiB/s (restic `--limit-upload`); 0 = unlimited.
    #[arg(long, env = "STOWAGE_UPLOAD_LIMIT_KIB", default_value_t = 0)]
    upload_limit_kib: u64,
    /// Times a restic command that failed for a reason that may pass (the storage could not be
    /// reached; the repository was locked, when --restic-retry-lock-seconds is 0) is run again
    /// before its volume fails; 0 = never.
    #[arg(long, env = "STOWAGE_RESTIC_RETRIES", default_value_t = 3)]
    restic_retries: u32,
    /// Milliseconds before the first retry; each later wait is twice as long (at most 5
    /// minutes). A cancel ends the wait at once.
    #[arg(long, env = "STOWAGE_RESTIC_RETRY_DELAY_MS", default_value_t = 2000)]
    restic_retry_delay_ms: u64,
    /// How long restic may keep retrying storage requests with no progress in between before
    /// the agent stops it and fails the volume as a storage error: `90s`, `5m`, `1h`, or
    /// seconds. restic 0.17+ retries a failed request by itself for up to 15 minutes, so an
    /// outage does not reach --restic-retries before that. `0` leaves it to restic.
    #[arg(
        long,
        env = "STOWAGE_STORAGE_OUTAGE_TIMEOUT",
        default_value = "5m",
        value_parser = parse_duration
    )]
    storage_outage_timeout: Duration,
    /// Seconds an operation whose caller went away (an orchestrator that died or lost its
    /// leadership) keeps running for a new caller to re-attach (AttachBackup/AttachRestore)
    /// before it is cancelled and its restic killed; an ended operation keeps its result as
    /// long for a caller that missed it.
    #[arg(long, env = "STOWAGE_DETACH_GRACE_SECONDS", default_value_t = 120)]
    detach_grace_seconds: u64,
    /// How long running operations get to stop (their restic is killed) on shutdown.
    #[arg(long, env = "STOWAGE_SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
    shutdown_grace_seconds: u64,
    #[command(flatten)]
    log: stowage_telemetry::LogArgs,
    #[command(flatten)]
    metrics: stowage_metrics::MetricsArgs,
    #[command(flatten)]
    tls: stowage_grpc::TlsArgs,
}

/// Parses `90s`, `5m`, `1h` (or a plain number of seconds), as the repo manager's duration
/// flags do.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 90s, 5m or 1h"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        other => return Err(format!("unknown duration unit `{other}` in `{text}`")),
    };
    number
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration `{text}` is too large"))
}

/// Who may call the agent when mTLS is on and --tls-allowed-clients is not given: the two
/// services that drive it. Anyone else reaching the node could otherwise read any volume.
const DEFAULT_ALLOWED_CLIENTS: &[&str] = &["stowage-orchestrator", "stowage-repo-manager"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = config.log.init("stowage-volume-agent")?;
    let shutdown = CancellationToken::new();
    stowage_grpc::cancel_on_signal(shutdown.clone());
    // Read the certificates before anything starts, so a bad mount fails the pod at once.
    let security = config
        .tls
        .server_allowing(DEFAULT_ALLOWED_CLIENTS)
        .context("TLS settings")?;
    let metrics = stowage_metrics::agent::AgentMetrics::register(&mut stowage_metrics::registry());
    stowage_metrics::agent::register_node(&mut stowage_metrics::registry(), &config.node_name);
    let metrics_server = config.metrics.start(shutdown.clone()).await;

    let retry_lock = Duration::from_secs(config.restic_retry_lock_seconds);
    let mut restic = Restic::new(&config.restic_binary, &config.scratch_dir)
        .with_stop_grace(Duration::from_secs(config.restic_stop_grace_seconds))
        .with_retry_lock(Some(retry_lock))
        .with_storage_outage_timeout(
            Some(config.storage_outage_timeout).filter(|timeout| !timeout.is_zero()),
        );
    if let Some(limit) = config.restic_memory_limit {
        restic = restic.with_env("GOMEMLIMIT", limit.to_string())?;
    }
    // A restic too old to classify its failures by exit code stops the agent here, naming the
    // version found and the one needed. A missing restic does not: the agent still serves
    // (GetAgentInfo shows it) and every job fails with a clear FailedPrecondition.
    let restic_version = match restic.supported_version(&CancellationToken::new()).await {
        Ok((line, _)) => line,
        Err(error @ ResticError::BinaryMissing { .. }) => {
            tracing::error!(%error, "restic is not usable");
            String::new()
        }
        Err(error) => {
            tracing::error!(%error, "refusing to start with this restic");
            return Err(anyhow::Error::new(error).context("checking the restic binary"));
        }
    };
    let mut retry = RetryPolicy::new(
        config.restic_retries,
        Duration::from_millis(config.restic_retry_delay_ms),
    );
    if restic.retry_lock().is_some() {
        // restic waited for the lock already; running it again would wait once more.
        retry = retry.without_lock_retries();
    }
    let context = jobs::AgentContext {
        restic,
        pods_root: config.pods_root.clone(),
        node_name: config.node_name.clone(),
        snapshot_host: config
            .snapshot_host
            .clone()
            .filter(|host| !host.is_empty())
            .unwrap_or_else(|| config.node_name.clone()),
        limit_upload_kib: (config.upload_limit_kib > 0).then_some(config.upload_limit_kib),
        retry,
    };
    let operations = operations::Operations::new(config.max_concurrent, shutdown.clone(), metrics);
    let agent = api::AgentApi::new(
        context,
        operations.clone(),
        restic_version.clone(),
        Duration::from_secs(config.detach_grace_seconds),
    );
    let router = stowage_grpc::secured_router_for::<VolumeAgentServer<api::AgentApi>>(&security)
        .await?
        .add_service(VolumeAgentServer::new(agent));
    tracing::info!(
        node = %config.node_name,
        pods_root = %config.pods_root.display(),
        restic = %restic_version,
        max_concurrent = operations.max_concurrent(),
        detach_grace_seconds = config.detach_grace_seconds,
        restic_retries = config.restic_retries,
        restic_retry_lock_seconds = config.restic_retry_lock_seconds,
        storage_outage_timeout_seconds = config.storage_outage_timeout.as_secs(),
        restic_memory_limit = config.restic_memory_limit,
        tls = security.is_tls(),
        metrics = %config.metrics.metrics_listen,
        "volume agent starting"
    );
    let served = stowage_grpc::serve(router, config.listen, shutdown.clone())
        .await
        .context("volume agent gRPC server");
    // Whatever ended serving, stop the jobs (their restic is killed) and wait for them.
    shutdown.cancel();
    operations.tasks().close();
    if tokio::time::timeout(
        Duration::from_secs(config.shutdown_grace_seconds),
        operations.tasks().wait(),
    )
    .await
    .is_err()
    {
        tracing::warn!("operations did not stop in time");
    }
    if let Some(metrics_server) = metrics_server {
        let _ = metrics_server.await;
    }
    telemetry.shutdown();
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_bad_ones_name_the_input() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        let error = parse_duration("5 minutes").unwrap_err();
        assert!(error.contains("5 minutes"), "{error}");
        assert!(parse_duration("m").unwrap_err().contains("`m`"));
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn the_outage_timeout_defaults_to_five_minutes_and_takes_the_duration_syntax() {
        let config = Config::try_parse_from(["agent", "--node-name", "n"]).unwrap();
        assert_eq!(config.storage_outage_timeout, Duration::from_secs(300));
        let config = Config::try_parse_from([
            "agent",
            "--node-name",
            "n",
            "--storage-outage-timeout",
            "10s",
        ])
        .unwrap();
        assert_eq!(config.storage_outage_timeout, Duration::from_secs(10));
    }
}
