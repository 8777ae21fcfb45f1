//! What the backup and restore runners share: the peers they call, the index they update, the
//! limits they obey, and the task tracker `main` waits on at shutdown.

use std::{sync::Arc, time::Duration};

use stowage_grpc::TracedChannel;
use stowage_proto::v1::repo_manager_client::RepoManagerClient;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    kube::{Cluster, agents::Agents},
    state::Index,
    store::Store,
};

#[derive(Debug, Clone)]
pub struct Limits {
    /// Volumes backed up or restored at once, over all nodes.
    pub max_parallel_volumes: usize,
    /// Volumes at once on one node (its agent queues the rest anyway; this keeps the queue
    /// short so a cancel or timeout has little to unwind).
    pub max_parallel_per_node: usize,
    /// A backup's timeout when its spec has none (Velero's restic timeout: 4 h).
    pub default_timeout: Duration,
    /// A backup's TTL when its spec has none.
    pub default_ttl: Duration,
    /// How long to wait for a namespace's repository to become ready.
    pub repository_ready_timeout: Duration,
    /// How long a restore waits for a recreated pod to be scheduled and run its init container.
    pub pod_start_timeout: Duration,
    /// How often Kubernetes objects are polled while waiting.
    pub poll_interval: Duration,
    /// Objects per list request when a backup reads the namespaces' resources.
    pub list_page_size: u32,
}

#[derive(Clone)]
pub struct Deps {
    pub repo_manager: RepoManagerClient<TracedChannel>,
    pub agents: Agents,
    pub cluster: Option<Cluster>,
    pub store: Option<Store>,
    pub index: Arc<Index>,
    pub limits: Limits,
    pub restore_helper: RestoreHelperDefaults,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

/// The restore helper's image when no ConfigMap names one (`--restore-helper-image`); an
/// untagged image gets this release's tag (`stowage_images::VERSION`).
#[derive(Debug, Clone)]
pub struct RestoreHelperDefaults {
    pub image: String,
}
