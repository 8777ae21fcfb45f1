//! What a run needs of each repository it touches, backup and restore alike: the repository
//! ensured (and READY), its access, and a SHARED lease that keeps prune, forget and key
//! rotation away while restic reads or writes. Leases have a short TTL and are renewed every
//! third of it while the run holds them, so a killed orchestrator's leases lapse within about
//! a minute; the run releases them when it ends, however it ends.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use stowage_proto::{
    prost_types,
    v1::{AcquireLeaseRequest, LeaseMode, RepositoryAccess, RepositoryPhase},
};
use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    error::{Error, Result},
    ports::RepoManagerPort,
};

/// Where a lease holder's complaints go (the run's log).
pub type Warn = Arc<dyn Fn(String) + Send + Sync>;

/// One lease a run holds: what it was asked for, and its id now.
#[derive(Debug, Clone)]
struct Held {
    namespace: String,
    holder: String,
    id: String,
}

/// The SHARED lease request of `holder` on `namespace`'s repository.
fn shared(namespace: &str, holder: &str, ttl: Duration, wait: Duration) -> AcquireLeaseRequest {
    AcquireLeaseRequest {
        namespace: namespace.to_string(),
        mode: LeaseMode::Shared as i32,
        holder: holder.to_string(),
        ttl: Some(proto_duration(ttl)),
        wait_timeout: Some(proto_duration(wait)),
    }
}

/// The leases one run holds, renewed in the background until [`Leases::release_all`].
pub struct Leases {
    repo_manager: Arc<dyn RepoManagerPort>,
    ttl: Duration,
    /// Every lease held.
    held: Arc<Mutex<Vec<Held>>>,
    stop: CancellationToken,
    renewer: Mutex<Option<JoinHandle<()>>>,
    warn: Warn,
}

impl Leases {
    pub fn new(repo_manager: Arc<dyn RepoManagerPort>, ttl: Duration, warn: Warn) -> Leases {
        Leases {
            repo_manager,
            ttl,
            held: Arc::default(),
            stop: CancellationToken::new(),
            renewer: Mutex::new(None),
            warn,
        }
    }

    /// Takes a SHARED lease on `namespace`'s repository for `holder`, waiting up to `wait` for
    /// an exclusive holder (maintenance) to finish.
    pub async fn acquire_shared(
        &self,
        namespace: &str,
        holder: String,
        wait: Duration,
    ) -> Result<()> {
        let lease = self
            .repo_manager
            .acquire_lease(shared(namespace, &holder, self.ttl, wait))
            .await?;
        match lease {
            Some(id) => {
                self.held
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Held {
                        namespace: namespace.to_string(),
                        holder,
                        id,
                    });
                self.start_renewing();
            }
            None => (self.warn)("the repo-manager does not support leases".to_string()),
        }
        Ok(())
    }

    fn start_renewing(&self) {
        let mut renewer = self.renewer.lock().unwrap_or_else(|e| e.into_inner());
        if renewer.is_some() {
            return;
        }
        let repo_manager = self.repo_manager.clone();
        let held = self.held.clone();
        let stop = self.stop.clone();
        let warn = self.warn.clone();
        let ttl = self.ttl;
        let every = (ttl / 3).max(Duration::from_millis(100));
        *renewer = Some(tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = stop.cancelled() => return,
                }
                let leases = held.lock().unwrap_or_else(|e| e.into_inner()).clone();
                for lease in leases {
                    let Err(error) = repo_manager.renew_lease(&lease.id, ttl).await else {
                        continue;
                    };
                    if error.code() != tonic::Code::NotFound {
                        warn(format!(
                            "renewing the lease on the repository of namespace {}: {error}",
                            lease.namespace
                        ));
                        continue;
                    }
                    // The repo-manager no longer knows the lease (it restarted, or a renewal
                    // came too late): take it again at once, without waiting for maintenance
                    // that may have started meanwhile.
                    let again = repo_manager
                        .acquire_lease(shared(&lease.namespace, &lease.holder, ttl, Duration::ZERO))
                        .await;
                    match again {
                        Ok(Some(id)) => {
                            let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
                            if let Some(entry) = held.iter_mut().find(|h| h.id == lease.id) {
                                entry.id = id;
                            }
                            drop(held);
                            warn(format!(
                                "the lease on the repository of namespace {} had lapsed; \
                                 taken again",
                                lease.namespace
                            ));
                        }
                        Ok(None) => {}
                        Err(again) => warn(format!(
                            "the lease on the repository of namespace {} lapsed and could not \
                             be taken again ({again}); restic goes on without it",
                            lease.namespace
                        )),
                    }
                }
            }
        }));
    }

    /// Stops renewing and releases every lease held. Errors are logged, not returned: a lease
    /// that cannot be released lapses within its TTL.
    pub async fn release_all(&self) {
        self.stop.cancel();
        let renewer = self
            .renewer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(renewer) = renewer
            && let Err(error) = renewer.await
        {
            (self.warn)(format!("the lease renewal task ended abnormally: {error}"));
        }
        let leases = std::mem::take(&mut *self.held.lock().unwrap_or_else(|e| e.into_inner()));
        for lease in leases {
            if let Err(error) = self.repo_manager.release_lease(&lease.id).await {
                (self.warn)(format!(
                    "releasing the lease on the repository of namespace {}: {error}",
                    lease.namespace
                ));
            }
        }
    }
}

impl Drop for Leases {
    /// A holder dropped without `release_all` (its task was aborted) stops renewing, so its
    /// leases lapse within their TTL instead of living on.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn proto_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: duration.as_secs() as i64,
        nanos: duration.subsec_nanos() as i32,
    }
}

/// How long to wait for a repository, and how often to look.
#[derive(Debug, Clone)]
pub struct Readiness {
    pub timeout: Duration,
    pub poll_interval: Duration,
}

/// Why a namespace's repository cannot be used by a run; its volumes fail with it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("repository of namespace {namespace}: {reason}")]
pub struct Unusable {
    pub namespace: String,
    pub reason: String,
}

/// Each namespace's repository access, or why it cannot be used.
#[derive(Debug, Clone, Default)]
pub struct Prepared(BTreeMap<String, std::result::Result<RepositoryAccess, Unusable>>);

impl Prepared {
    /// Every namespace unusable for the same reason (the run was stopped while preparing).
    pub fn unusable(namespaces: &[String], reason: &str) -> Prepared {
        Prepared(
            namespaces
                .iter()
                .map(|namespace| {
                    let unusable = Unusable {
                        namespace: namespace.clone(),
                        reason: reason.to_string(),
                    };
                    (namespace.clone(), Err(unusable))
                })
                .collect(),
        )
    }

    /// The access to `namespace`'s repository.
    pub fn access(&self, namespace: &str) -> Result<RepositoryAccess> {
        match self.0.get(namespace) {
            Some(Ok(access)) => Ok(access.clone()),
            Some(Err(unusable)) => Err(unusable.clone().into()),
            None => Err(Unusable {
                namespace: namespace.to_string(),
                reason: "not prepared for this run".to_string(),
            }
            .into()),
        }
    }

    /// Why each unusable repository is.
    pub fn problems(&self) -> impl Iterator<Item = &Unusable> {
        self.0
            .values()
            .filter_map(|prepared| prepared.as_ref().err())
    }
}

/// Ensures each namespace's repository, reads its access and takes a shared lease on it for
/// `holder_prefix/<namespace>`. A namespace whose repository cannot be used maps to the
/// reason, so its volumes fail with it while the others run.
pub async fn prepare(
    repo_manager: &Arc<dyn RepoManagerPort>,
    leases: &Leases,
    namespaces: &[String],
    holder_prefix: &str,
    readiness: &Readiness,
) -> Prepared {
    let mut prepared = BTreeMap::new();
    for namespace in namespaces {
        let access = prepare_one(repo_manager, leases, namespace, holder_prefix, readiness).await;
        prepared.insert(
            namespace.clone(),
            access.map_err(|error| Unusable {
                namespace: namespace.clone(),
                reason: error.to_string(),
            }),
        );
    }
    Prepared(prepared)
}

async fn prepare_one(
    repo_manager: &Arc<dyn RepoManagerPort>,
    leases: &Leases,
    namespace: &str,
    holder_prefix: &str,
    readiness: &Readiness,
) -> Result<RepositoryAccess> {
    let deadline = Instant::now() + readiness.timeout;
    loop {
        let repository = repo_manager.ensure_repository(namespace).await?;
        match RepositoryPhase::try_from(repository.phase) {
            Ok(RepositoryPhase::Ready) => break,
            Ok(RepositoryPhase::Failed) => {
                return Err(Error::Failed(format!(
                    "repository failed: {}",
                    repository.message
                )));
            }
            _ if Instant::now() >= deadline => {
                return Err(Error::Failed(format!(
                    "repository not ready after {}: {}",
                    crate::engine::go_duration(readiness.timeout),
                    repository.message
                )));
            }
            _ => tokio::time::sleep(readiness.poll_interval).await,
        }
    }
    let access = repo_manager.repository_access(namespace).await?;
    leases
        .acquire_shared(
            namespace,
            format!("{holder_prefix}/{namespace}"),
            readiness.timeout,
        )
        .await?;
    Ok(access)
}
