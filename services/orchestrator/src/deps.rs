//! What the backup and restore runners share: the ports they call, the index they update, the
//! limits they obey, and the task tracker `main` waits on at shutdown. Only traits appear
//! here; `main` wires the real adapters in, the unit tests the fakes.

use std::{sync::Arc, time::Duration};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    engine::RunLimits,
    kube::mirror::MirrorKind,
    ports::{AgentsPort, ClusterPort, MirrorSession, NoMirrors, RecordStore, RepoManagerPort},
    repositories::Readiness,
    schedules::Book,
    state::Index,
};

#[derive(Debug, Clone)]
pub struct Limits {
    /// Volumes backed up or restored at once, over all nodes.
    pub max_parallel_volumes: usize,
    /// Volumes at once on one node (its agent queues the rest anyway; this keeps the queue
    /// short so a cancel or timeout has little to unwind).
    pub max_parallel_per_node: usize,
    /// A backup's or restore's timeout when its spec has none (Velero's restic timeout: 4 h).
    pub default_timeout: Duration,
    /// A backup's TTL when its spec has none.
    pub default_ttl: Duration,
    /// How long to wait for a namespace's repository to become ready.
    pub repository_ready_timeout: Duration,
    /// How long a restore waits for a recreated pod to be scheduled and run its init container.
    pub pod_start_timeout: Duration,
    /// How often Kubernetes objects are polled while waiting.
    pub poll_interval: Duration,
    /// A running volume whose progress does not move for this long fails.
    pub stall_timeout: Duration,
    /// TTL of the repository leases a run takes; they are renewed every third of it.
    pub lease_ttl: Duration,
    /// Objects per list request when a backup reads the namespaces' resources.
    pub list_page_size: u32,
}

impl Limits {
    pub fn run_limits(&self) -> RunLimits {
        RunLimits {
            max_parallel_volumes: self.max_parallel_volumes,
            max_parallel_per_node: self.max_parallel_per_node,
            stall_timeout: self.stall_timeout,
        }
    }

    pub fn readiness(&self) -> Readiness {
        Readiness {
            timeout: self.repository_ready_timeout,
            poll_interval: self.poll_interval,
        }
    }
}

#[derive(Clone)]
pub struct Deps {
    pub repo_manager: Arc<dyn RepoManagerPort>,
    pub agents: Arc<dyn AgentsPort>,
    pub cluster: Option<Arc<dyn ClusterPort>>,
    pub store: Option<Arc<dyn RecordStore>>,
    pub index: Arc<Index>,
    pub limits: Limits,
    pub restore_helper: RestoreHelperDefaults,
    /// The schedules (the API changes them, the scheduler fires them).
    pub schedules: Arc<Book>,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

impl Deps {
    /// A mirror writer for one run's objects of `kind`; without a cluster, one that drops
    /// every mirror.
    pub fn mirrors(&self, kind: MirrorKind) -> Arc<dyn MirrorSession> {
        match &self.cluster {
            Some(cluster) => Arc::from(cluster.mirrors(kind)),
            None => Arc::new(NoMirrors),
        }
    }
}

/// The restore helper's image when no ConfigMap names one (`--restore-helper-image`); an
/// untagged image gets this release's tag (`stowage_images::VERSION`).
#[derive(Debug, Clone)]
pub struct RestoreHelperDefaults {
    pub image: String,
}
