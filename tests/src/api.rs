//! Driving the orchestrator's API the way a scheduler does: start a backup or restore, then
//! follow its watch stream to the end.

use std::time::Duration;

use stowage_grpc::TracedChannel;
use stowage_proto::v1::{
    Backup, BackupSpec, CreateBackupRequest, GetBackupLogsRequest, Restore, VolumePhase,
    WatchBackupRequest, WatchRestoreRequest, orchestrator_client::OrchestratorClient,
};

pub type Client = OrchestratorClient<TracedChannel>;

/// How long a test waits for a backup or restore of a few small volumes to end.
pub const ENDS_WITHIN: Duration = Duration::from_secs(120);

/// The spec of a backup of `namespace` alone.
pub fn namespace_spec(namespace: &str) -> BackupSpec {
    BackupSpec {
        included_namespaces: vec![namespace.to_string()],
        ..Default::default()
    }
}

/// Starts backup `name` and returns its last state once it ended.
pub async fn backup_to_end(client: &mut Client, name: &str, spec: BackupSpec) -> Backup {
    client
        .create_backup(CreateBackupRequest {
            name: name.to_string(),
            spec: Some(spec),
        })
        .await
        .expect("CreateBackup");
    wait_backup(client, name).await
}

/// Follows backup `name` until it ends, and returns its last state; panics after
/// [`ENDS_WITHIN`] with the last state seen.
pub async fn wait_backup(client: &mut Client, name: &str) -> Backup {
    wait_backup_within(client, name, ENDS_WITHIN).await
}

/// [`wait_backup`], for a test whose point is that the backup ends within `within`.
pub async fn wait_backup_within(client: &mut Client, name: &str, within: Duration) -> Backup {
    let mut stream = client
        .watch_backup(WatchBackupRequest { name: name.into() })
        .await
        .expect("WatchBackup")
        .into_inner();
    let mut last = None;
    let watched = tokio::time::timeout(within, async {
        while let Some(event) = stream.message().await.expect("a backup event") {
            last = event.backup;
        }
    })
    .await;
    assert!(
        watched.is_ok(),
        "backup {name} did not end within {within:?}: {last:#?}"
    );
    last.expect("at least one backup event")
}

/// Follows backup `name` until one of its volumes is in one of `phases` (with its agent, or
/// queued there); panics when none is within `within` or the backup ends first.
pub async fn wait_volume_in(
    client: &mut Client,
    name: &str,
    phases: &[VolumePhase],
    within: Duration,
) {
    let mut stream = client
        .watch_backup(WatchBackupRequest { name: name.into() })
        .await
        .expect("WatchBackup")
        .into_inner();
    let reached = tokio::time::timeout(within, async {
        while let Some(event) = stream.message().await.expect("a backup event") {
            let status = event.backup.unwrap_or_default().status.unwrap_or_default();
            if status
                .volumes
                .iter()
                .any(|volume| phases.iter().any(|phase| volume.phase == *phase as i32))
            {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        reached,
        Ok(true),
        "backup {name} never had a volume {phases:?}"
    );
}

/// Backup `name`'s log, its messages one per line.
pub async fn backup_log(client: &mut Client, name: &str) -> String {
    backup_log_lines(client, name, |_| true)
        .await
        .into_iter()
        .map(|(_, message)| message)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The lines of backup `name`'s log whose message `keep` accepts, as (level, message).
pub async fn backup_log_lines(
    client: &mut Client,
    name: &str,
    keep: impl Fn(&str) -> bool,
) -> Vec<(String, String)> {
    client
        .get_backup_logs(GetBackupLogsRequest { name: name.into() })
        .await
        .expect("GetBackupLogs")
        .into_inner()
        .lines
        .into_iter()
        .filter(|line| keep(&line.message))
        .map(|line| (line.level, line.message))
        .collect()
}

/// Follows restore `name` until it ends, and returns its last state; panics after
/// [`ENDS_WITHIN`] with the last state seen.
pub async fn wait_restore(client: &mut Client, name: &str) -> Restore {
    let mut stream = client
        .watch_restore(WatchRestoreRequest { name: name.into() })
        .await
        .expect("WatchRestore")
        .into_inner();
    let mut last = None;
    let watched = tokio::time::timeout(ENDS_WITHIN, async {
        while let Some(event) = stream.message().await.expect("a restore event") {
            last = event.restore;
        }
    })
    .await;
    assert!(
        watched.is_ok(),
        "restore {name} did not end within {ENDS_WITHIN:?}: {last:#?}"
    );
    last.expect("at least one restore event")
}
