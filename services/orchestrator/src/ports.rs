//! The four narrow traits the orchestrator's core talks to: the cluster (pods, PVCs, mirrors),
//! the repo-manager, the node agents and the record store. The runners, the run engine and
//! recovery see only these; `adapters.rs` implements them over kube, the gRPC clients and the
//! object store, and the unit tests over in-memory fakes.

use std::{
    collections::{BTreeMap, BTreeSet},
    pin::Pin,
    time::Duration,
};

use ::kube::api::DynamicObject;
use futures::Stream;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use serde_json::Value;
use stowage_hooks::{ExecError, ExecTarget, Output, PodExec};
use stowage_proto::v1::{
    AbandonRestoreRequest, AcquireLeaseRequest, Backup, BackupVolumeEvent, BackupVolumeRequest,
    FileEntry, ListRepositoriesRequest, ListRepositoriesResponse, ListSnapshotFilesRequest,
    LogLine, MaintenanceResult, Repository, RepositoryAccess, Restore, RestoreVolumeEvent,
    RestoreVolumeRequest, RunMaintenanceRequest,
};
use stowage_velero_format::BackupResources;

use crate::{
    error::Result,
    kube::mirror::{Mirror, MirrorKind},
};

/// Batches of a snapshot listing, each a batch or the error that ended the stream.
pub type FileBatches = Pin<Box<dyn Stream<Item = Result<Vec<FileEntry>>> + Send>>;

/// Events of one agent operation, each an event or the error that ended the stream.
pub type AgentEvents<T> = Pin<Box<dyn Stream<Item = Result<T>> + Send>>;

/// Where one backup's or restore's runner hands the states of its volumes' mirror objects,
/// without waiting for the API server.
#[tonic::async_trait]
pub trait MirrorSession: Send + Sync {
    /// Queues the state an object should get, written as soon as a write slot is free.
    fn submit(&self, mirror: Mirror);
    /// Queues a state to be written no sooner than `hold` from now, unless a newer one comes.
    fn submit_after(&self, mirror: Mirror, hold: Duration);
    /// Writes what is still queued; returns once every object shows its last state.
    async fn finish(&self);
}

/// The mirrors of a run without a cluster: nothing to write them to.
pub struct NoMirrors;

#[tonic::async_trait]
impl MirrorSession for NoMirrors {
    fn submit(&self, _mirror: Mirror) {}
    fn submit_after(&self, _mirror: Mirror, _hold: Duration) {}
    async fn finish(&self) {}
}

/// The Kubernetes objects the core reads and writes.
#[tonic::async_trait]
pub trait ClusterPort: Send + Sync {
    async fn namespaces(&self) -> Result<Vec<String>>;
    /// Pods of `namespace` carrying every label in `labels`.
    async fn pods(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Result<Vec<Pod>>;
    async fn pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>>;
    async fn pvcs(&self, namespace: &str) -> Result<Vec<PersistentVolumeClaim>>;
    async fn pvc(&self, namespace: &str, name: &str) -> Result<Option<PersistentVolumeClaim>>;
    /// The Deployment owning ReplicaSet `namespace/name`, if any.
    async fn replica_set_owner(&self, namespace: &str, name: &str) -> Result<Option<String>>;
    /// The backup's Kubernetes resources (every namespaced object it selects and the
    /// cluster-scoped ones they need), `page_size` objects per list request, with
    /// `volume_manifests` (the pods and claims of its volumes) as planned; what was captured or
    /// left out goes to `log` as `(level, line)`.
    async fn capture_resources(
        &self,
        backup: &Backup,
        page_size: u32,
        volume_manifests: &[Value],
        log: &(dyn for<'a> Fn(&'a str, String) + Send + Sync),
    ) -> Result<BackupResources>;
    /// Runs `command` in a pod's container through `pods/exec` (a backup's hooks), appending
    /// its output to `output` as it arrives; the command's exit code.
    async fn exec(
        &self,
        target: &ExecTarget,
        command: &[String],
        output: &mut Output,
    ) -> std::result::Result<i32, ExecError>;
    /// Creates a pod (a data-only restore's temporary restore pod); one that exists is
    /// `Error::Conflict`.
    async fn create_pod(&self, namespace: &str, pod: &Pod) -> Result<()>;
    /// Deletes the pod (a data-only restore's own restore pod); one already gone is fine.
    async fn delete_pod(&self, namespace: &str, name: &str) -> Result<()>;
    /// The pods of `namespace` whose volumes name claim `claim`, in any phase.
    async fn pods_using_claim(&self, namespace: &str, claim: &str) -> Result<Vec<Pod>> {
        let pods = self.pods(namespace, &BTreeMap::new()).await?;
        Ok(pods
            .into_iter()
            .filter(|pod| {
                pod.spec
                    .iter()
                    .flat_map(|spec| spec.volumes.iter().flatten())
                    .any(|volume| {
                        volume
                            .persistent_volume_claim
                            .as_ref()
                            .is_some_and(|source| source.claim_name == claim)
                    })
            })
            .collect())
    }
    /// The restore-helper ConfigMap's data (empty when there is none).
    async fn restore_helper_config(&self) -> Result<BTreeMap<String, String>>;
    /// The API server as a restore recreates the backup's objects through it.
    fn objects(&self) -> std::sync::Arc<dyn crate::resources::restore::ObjectApi>;
    /// A mirror writer for one run's objects of `kind`.
    fn mirrors(&self, kind: MirrorKind) -> Box<dyn MirrorSession>;
    /// Patches the mirror into its object, creating it when there is none.
    async fn apply_mirror(&self, kind: MirrorKind, mirror: &Mirror) -> Result<()>;
    async fn list_mirrors(&self, kind: MirrorKind) -> Result<Vec<DynamicObject>>;
    /// Marks every mirror of `kind` still New or InProgress Failed with `message`; how many.
    async fn fail_unfinished_mirrors(&self, kind: MirrorKind, message: &str) -> Result<usize>;
    /// Deletes every mirror labelled `label=value`.
    async fn delete_mirrors(&self, kind: MirrorKind, label: &str, value: &str) -> Result<()>;
}

/// The cluster's exec as the hooks crate runs hooks through it.
pub struct ClusterExec(pub std::sync::Arc<dyn ClusterPort>);

impl PodExec for ClusterExec {
    // An async fn, not the boxed future returned as it is: that one has a single lifetime
    // for all three borrows, which the trait's signature cannot name.
    async fn exec(
        &self,
        target: &ExecTarget,
        command: &[String],
        output: &mut Output,
    ) -> std::result::Result<i32, ExecError> {
        self.0.exec(target, command, output).await
    }
}

/// The repo-manager: repositories, their access and the leases that keep maintenance away.
#[tonic::async_trait]
pub trait RepoManagerPort: Send + Sync {
    async fn ensure_repository(&self, namespace: &str) -> Result<Repository>;
    /// `ensure_repository` asked once, without waiting out a change of the repo-manager's
    /// leader: for a best-effort check that may be skipped (a listing's), which must not hold
    /// its caller for the takeover wait.
    async fn ensure_repository_once(&self, namespace: &str) -> Result<Repository> {
        self.ensure_repository(namespace).await
    }
    async fn repository_access(&self, namespace: &str) -> Result<RepositoryAccess>;
    /// The lease's id; `None` from a repo-manager that has no leases.
    async fn acquire_lease(&self, request: AcquireLeaseRequest) -> Result<Option<String>>;
    async fn renew_lease(&self, lease_id: &str, ttl: Duration) -> Result<()>;
    /// False when the lease had already expired or been released.
    async fn release_lease(&self, lease_id: &str) -> Result<bool>;
    /// Forgets the backup's snapshots in the namespace's repository; the forgotten ids.
    async fn forget_backup(&self, namespace: &str, backup_name: &str) -> Result<Vec<String>>;
    async fn list_repositories(
        &self,
        request: ListRepositoriesRequest,
    ) -> Result<ListRepositoriesResponse>;
    async fn run_maintenance(&self, request: RunMaintenanceRequest) -> Result<MaintenanceResult>;
    /// A snapshot's files (`restic ls`), in the batches the repo-manager streams them.
    async fn list_snapshot_files(&self, request: ListSnapshotFilesRequest) -> Result<FileBatches>;
}

/// The volume agents, by the node they serve.
#[tonic::async_trait]
pub trait AgentsPort: Send + Sync {
    async fn backup_volume(
        &self,
        node: &str,
        request: BackupVolumeRequest,
    ) -> Result<AgentEvents<BackupVolumeEvent>>;
    async fn restore_volume(
        &self,
        node: &str,
        request: RestoreVolumeRequest,
    ) -> Result<AgentEvents<RestoreVolumeEvent>>;
    /// Re-attaches to a backup the agent on `node` still has (running, or ended and kept with
    /// its result), its latest state first; `None` when the agent has no such operation.
    async fn attach_backup(
        &self,
        node: &str,
        operation_id: &str,
    ) -> Result<Option<AgentEvents<BackupVolumeEvent>>>;
    /// [`AgentsPort::attach_backup`] for a restore.
    async fn attach_restore(
        &self,
        node: &str,
        operation_id: &str,
    ) -> Result<Option<AgentEvents<RestoreVolumeEvent>>>;
    /// Stops the operation; its restic is killed and reaped.
    async fn cancel_operation(&self, node: &str, operation_id: &str) -> Result<()>;
    /// Writes the failure marker in a pod volume whose restore will not happen; false when
    /// the agent found no such volume.
    async fn abandon_restore(&self, node: &str, request: AbandonRestoreRequest) -> Result<bool>;
}

/// The records of backups and restores in the storage location.
#[tonic::async_trait]
pub trait RecordStore: Send + Sync {
    /// Writes the backup's record and logs, and `resources` when given.
    async fn put_backup(
        &self,
        backup: &Backup,
        logs: &[LogLine],
        resources: Option<&BackupResources>,
    ) -> Result<()>;
    /// Every backup in the location but those named in `known`, with its log.
    async fn list_backups_except(
        &self,
        known: &BTreeSet<String>,
    ) -> Result<Vec<(Backup, Vec<LogLine>)>>;
    /// The backup's resource tarball (stowage's or Velero's), each object under its resource
    /// directory name; empty when the backup has none.
    async fn backup_tarball(&self, name: &str) -> Result<BackupResources>;
    async fn delete_backup(&self, name: &str) -> Result<()>;
    /// Whether the namespace's restic repository is in the location (only looks).
    async fn repository_exists(&self, namespace: &str) -> Result<bool>;
    async fn put_restore(&self, restore: &Restore, logs: &[LogLine]) -> Result<()>;
    async fn list_restores(&self) -> Result<Vec<Restore>>;
    async fn get_restore(&self, name: &str) -> Result<Option<Restore>>;
    async fn restore_logs(&self, name: &str) -> Result<Vec<LogLine>>;
}
