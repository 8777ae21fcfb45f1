//! The repositories themselves: creating and opening one per namespace (init once, even under
//! concurrent calls), handing out access, running check/prune under the exclusive lease after
//! clearing stale restic locks, forgetting a backup's snapshots and rotating keys. Knows
//! nothing of gRPC.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use stowage_contract::fencing::LeaderTerm;
use stowage_restic::{CheckData, Restic, ResticError};
use stowage_storage_location::StorageLocation;
use tokio_util::sync::CancellationToken;

use crate::{
    error::RepoError,
    keys::{KeyStore, Passwords, generate_password},
    leases::{LeaseManager, LeaseMode},
    lock_holders::{LockHolders, StaleReason},
    mirror::RepositoryMirror,
    schedule::{MaintenanceKind, Schedules},
    state::{Phase, RepositoryRecord, StateStore},
    verification::{InvalidateOnDrop, Verifications},
};

#[derive(Debug, Clone)]
pub struct ManagerSettings {
    /// How long maintenance (and forget, key rotation) waits for backups to release their
    /// shared leases before giving up.
    pub maintenance_wait: Duration,
    /// restic locks younger than this are never considered stale.
    pub stale_lock_age: chrono::Duration,
    pub schedules: Schedules,
    /// Open existing repositories that have no stored key with Velero's repository password.
    pub adopt_velero_repositories: bool,
    /// The password Velero's repositories open with: [`VELERO_STATIC_PASSWORD`] unless the
    /// operator replaced the `repository-password` key of Velero's credentials Secret.
    pub velero_repository_password: String,
    /// How long a repository this process verified answers EnsureRepository without restic;
    /// zero verifies on every call.
    pub verify_interval: Duration,
    /// This process's leader term, as the election reports it (the fencing rule): restic
    /// runs under the exclusive lease start only while it holds. Never set without election.
    pub term: LeaderTerm,
}

/// The password Velero's restic integration gives every repository unless the operator
/// replaced it (`static-passw0rd` in Velero's `pkg/repository/keys`).
pub const VELERO_STATIC_PASSWORD: &str = "static-passw0rd";

/// What one maintenance run ended with.
#[derive(Debug, Clone)]
pub struct MaintenanceOutcome {
    pub namespace: String,
    pub kind: MaintenanceKind,
    pub error: Option<String>,
    pub duration_seconds: f64,
    pub finished: DateTime<Utc>,
}

/// Everything restic needs to open a namespace's repository. Sensitive.
pub struct Access {
    pub url: String,
    pub password: String,
    pub env: BTreeMap<String, String>,
}

pub struct Manager {
    location: StorageLocation,
    restic: Restic,
    state: StateStore,
    keys: KeyStore,
    pub leases: LeaseManager,
    records: Mutex<BTreeMap<String, RepositoryRecord>>,
    /// One async lock per namespace: init, open and key changes of a namespace never overlap.
    namespace_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    settings: ManagerSettings,
    verifications: Verifications,
    /// `ResticRepository` objects in Kubernetes, when an API is configured.
    mirror: Option<RepositoryMirror>,
    /// Judges locks of stowage pods that are gone, when an API is configured.
    lock_holders: Option<LockHolders>,
    /// This process's leader term: restic runs under the exclusive lease (maintenance, forget,
    /// key rotation) start only while it holds; the store under `state` and `keys` checks it
    /// before every write.
    term: LeaderTerm,
    shutdown: CancellationToken,
}

/// What the manager does through the Kubernetes API, when one is configured.
pub struct Cluster {
    /// Mirrors each repository as a `ResticRepository`.
    pub mirror: RepositoryMirror,
    /// Judges restic locks of stowage pods that are gone.
    pub lock_holders: LockHolders,
}

/// Releases a lease when dropped, whether the task finished or was abandoned.
struct ReleaseOnDrop<'a> {
    leases: &'a LeaseManager,
    id: String,
}

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        self.leases.release(&self.id);
    }
}

pub fn validate_namespace(namespace: &str) -> Result<(), RepoError> {
    if stowage_contract::names::is_namespace(namespace) {
        Ok(())
    } else {
        Err(RepoError::InvalidNamespace(namespace.to_string()))
    }
}

fn restic_message(error: &ResticError) -> String {
    error.to_string()
}

impl Manager {
    /// A manager with the records persisted in the location loaded back.
    pub async fn load(
        location: StorageLocation,
        restic: Restic,
        state: StateStore,
        keys: KeyStore,
        settings: ManagerSettings,
        cluster: Option<Cluster>,
        shutdown: CancellationToken,
    ) -> Result<Manager, RepoError> {
        let (mirror, lock_holders) = match cluster {
            Some(cluster) => (Some(cluster.mirror), Some(cluster.lock_holders)),
            None => (None, None),
        };
        let mut records = state
            .load_all()
            .await?
            .into_iter()
            .map(|record| (record.namespace.clone(), record))
            .collect::<BTreeMap<_, _>>();
        // A check or prune its repo-manager was running when it stopped (killed, or its
        // leadership lost) ends failed, saying so, and is due at once: the scheduler runs it
        // again to its end. Its restic's lock is cleared as stale before that run (its pod,
        // or on this host its pid, is gone).
        let now = Utc::now();
        for record in records.values_mut() {
            let mut ended = false;
            for (kind, task) in [
                (MaintenanceKind::Check, &mut record.check),
                (MaintenanceKind::Prune, &mut record.prune),
            ] {
                if task.end_interrupted(now) {
                    tracing::warn!(
                        namespace = %record.namespace,
                        kind = kind.name(),
                        "maintenance was interrupted when the previous repo-manager stopped; it runs again"
                    );
                    ended = true;
                }
            }
            if ended {
                state.save(record).await?;
            }
        }
        tracing::info!(
            repositories = records.len(),
            "loaded repository state from the storage location"
        );
        // Copies an earlier version wrote unsealed (it ran without a master key) are sealed
        // now rather than on their namespace's next use; a failure leaves that to the next use.
        if let Err(error) = keys.seal_unsealed_copies().await {
            tracing::warn!(%error, "cannot look for unsealed bucket copies of passwords");
        }
        let term = settings.term.clone();
        let manager = Manager {
            location,
            restic,
            state,
            keys,
            leases: LeaseManager::default(),
            records: Mutex::new(records),
            namespace_locks: Mutex::new(HashMap::new()),
            verifications: Verifications::new(settings.verify_interval),
            settings,
            mirror,
            lock_holders,
            term,
            shutdown,
        };
        for record in manager.list() {
            manager.write_mirror(&record).await;
        }
        Ok(manager)
    }

    /// Updates the record's `ResticRepository`; a failure is logged, never returned.
    async fn write_mirror(&self, record: &RepositoryRecord) {
        if let Some(mirror) = &self.mirror {
            let frequency = self
                .settings
                .schedules
                .interval(&record.namespace, MaintenanceKind::Prune);
            if let Err(error) = mirror.write(record, frequency).await {
                tracing::warn!(namespace = %record.namespace, %error, "cannot mirror the repository as a ResticRepository");
            }
        }
    }

    pub fn schedules(&self) -> &Schedules {
        &self.settings.schedules
    }

    fn records(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RepositoryRecord>> {
        self.records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn namespace_lock(&self, namespace: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.namespace_locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(namespace.to_string())
            .or_default()
            .clone()
    }

    fn restic_repository(
        &self,
        namespace: &str,
        password: &str,
    ) -> Result<stowage_restic::Repository, RepoError> {
        let url = self.url(namespace)?;
        let mut repository = stowage_restic::Repository::new(url, password);
        repository.env = self.location.restic_env();
        Ok(repository)
    }

    fn url(&self, namespace: &str) -> Result<String, RepoError> {
        self.location
            .restic_repository(namespace)
            .map_err(|_| RepoError::InvalidNamespace(namespace.to_string()))
    }

    /// Updates the in-memory record and persists it.
    async fn store_record(
        &self,
        namespace: &str,
        update: impl FnOnce(&mut RepositoryRecord),
    ) -> Result<RepositoryRecord, RepoError> {
        let url = self.url(namespace)?;
        let secret_name = self.keys.secret_name(namespace);
        let record = {
            let mut records = self.records();
            let record = records
                .entry(namespace.to_string())
                .or_insert_with(|| RepositoryRecord {
                    namespace: namespace.to_string(),
                    url,
                    phase: Phase::NotReady,
                    message: String::new(),
                    created: Utc::now(),
                    secret_name,
                    check: Default::default(),
                    prune: Default::default(),
                });
            update(record);
            record.clone()
        };
        self.state.save(&record).await?;
        self.write_mirror(&record).await;
        Ok(record)
    }

    pub fn get(&self, namespace: &str) -> Result<RepositoryRecord, RepoError> {
        validate_namespace(namespace)?;
        self.records()
            .get(namespace)
            .cloned()
            .ok_or_else(|| RepoError::RepositoryNotFound(namespace.to_string()))
    }

    pub fn list(&self) -> Vec<RepositoryRecord> {
        self.records().values().cloned().collect()
    }

    /// Each repository's phase and last check and prune, as the metrics gauges read them.
    pub fn metric_states(&self) -> Vec<stowage_metrics::repo_manager::RepositoryState> {
        self.records()
            .values()
            .map(RepositoryRecord::metric_state)
            .collect()
    }

    /// Makes sure the namespace's repository exists and opens with its key.
    #[tracing::instrument(skip(self))]
    pub async fn ensure(&self, namespace: &str) -> Result<RepositoryRecord, RepoError> {
        validate_namespace(namespace)?;
        let lock = self.namespace_lock(namespace);
        let _guard = lock.lock().await;
        // The one object-store request of the fast path: a location wiped or replaced behind
        // this process (an S3 server that came back empty) must be found, and initialised
        // again, by the ensure before the next backup, not by the backup's restic.
        if self.verifications.is_fresh(namespace, Instant::now())
            && let Ok(record) = self.get(namespace)
            && record.phase == Phase::Ready
            && matches!(
                self.state.restic_repository_exists(namespace).await,
                Ok(true)
            )
        {
            tracing::debug!(
                namespace,
                "repository verified recently by this process: ready without running restic"
            );
            return Ok(record);
        }
        let ticket = self.verifications.begin(namespace, Instant::now());
        let (phase, message) = match self.open_or_init(namespace).await {
            Ok(()) => (Phase::Ready, String::new()),
            Err(RepoError::Restic(error)) if error.is_cancelled() => {
                self.verifications.invalidate(namespace);
                return Err(RepoError::Cancelled);
            }
            Err(RepoError::Restic(error @ ResticError::WrongPassword { .. })) => {
                (Phase::Failed, restic_message(&error))
            }
            Err(RepoError::Restic(error)) => (Phase::NotReady, restic_message(&error)),
            Err(error @ RepoError::MasterKeyMismatch(_)) => (Phase::Failed, error.to_string()),
            Err(error @ RepoError::NotReady { .. }) => (Phase::Failed, error.to_string()),
            Err(error) => {
                self.verifications.invalidate(namespace);
                return Err(error);
            }
        };
        if phase != Phase::Ready {
            self.verifications.invalidate(namespace);
            tracing::warn!(namespace, %message, "repository is not ready");
        }
        let record = self
            .store_record(namespace, |record| {
                record.phase = phase;
                record.message = message;
            })
            .await?;
        // Every backup and restore ensures its repository first: a lock left by a restic that
        // died (a prune whose repo-manager was killed) would otherwise make it fail at once.
        if phase == Phase::Ready {
            let repository = self.ready_repository(namespace).await?;
            // Locks that could not be inspected may still be there: verify again next time.
            if self
                .clear_stale_locks(namespace, &repository, &self.shutdown.child_token())
                .await
            {
                self.verifications.succeeded(namespace, ticket);
            }
        }
        Ok(record)
    }

    async fn open_or_init(&self, namespace: &str) -> Result<(), RepoError> {
        let cancel = self.shutdown.child_token();
        match self.keys.load(namespace).await? {
            Some(passwords) => self.open(namespace, passwords, &cancel).await.map(drop),
            None => {
                if self.state.restic_repository_exists(namespace).await? {
                    if self.settings.adopt_velero_repositories
                        && self.adopt_velero_repository(namespace, &cancel).await?
                    {
                        return Ok(());
                    }
                    // Never init over data we cannot read: the key is lost, not the repository.
                    let message = if self.settings.adopt_velero_repositories {
                        "a restic repository exists but no password for it was found: no \
                         stowage key, and Velero's repository password does not open it (wrong \
                         password; restore the Secret or the bucket key copy)"
                    } else {
                        "a restic repository exists but no password for it was found \
                         (restore the Secret or the bucket key copy)"
                    };
                    return Err(RepoError::NotReady {
                        namespace: namespace.to_string(),
                        message: message.into(),
                    });
                }
                let password = generate_password()?;
                // Stored before init: a crash in between leaves a key for an empty location,
                // which the next call inits with, never a repository nobody can open.
                self.keys
                    .save(
                        namespace,
                        &Passwords {
                            current: password.clone(),
                            pending: None,
                        },
                    )
                    .await?;
                let repository = self.restic_repository(namespace, &password)?;
                tracing::info!(namespace, url = %repository.url, "initialising restic repository");
                self.restic.init(&repository, &cancel).await?;
                Ok(())
            }
        }
    }

    /// A repository Velero created (same layout, Velero's static password): stowage adds a
    /// random key of its own beside Velero's (`restic key add`) and uses only that from then
    /// on. Velero's key is never removed, so a location Velero still reads (or a restore of an
    /// old backup with Velero's own tooling) keeps working; both keys open the same repository,
    /// so Velero's snapshots stay restorable and stowage's backups deduplicate against them.
    async fn adopt_velero_repository(
        &self,
        namespace: &str,
        cancel: &CancellationToken,
    ) -> Result<bool, RepoError> {
        let velero_password = self.settings.velero_repository_password.as_str();
        let repository = self.restic_repository(namespace, velero_password)?;
        match self.restic.cat_config(&repository, cancel).await {
            Ok(_) => {
                let own = generate_password()?;
                // Stored as pending before restic knows it (as in a rotation): a crash in
                // between leaves restic holding no key we lack, and the repository still opens
                // with Velero's key, as before the adoption.
                self.keys
                    .save(
                        namespace,
                        &Passwords {
                            current: velero_password.to_string(),
                            pending: Some(own.clone()),
                        },
                    )
                    .await?;
                self.restic.add_key(&repository, &own, cancel).await?;
                self.keys
                    .save(
                        namespace,
                        &Passwords {
                            current: own,
                            pending: None,
                        },
                    )
                    .await?;
                tracing::warn!(
                    namespace,
                    "adopted a Velero restic repository: added a key of stowage's own beside \
                     Velero's static one, which stays"
                );
                Ok(true)
            }
            Err(ResticError::WrongPassword { .. }) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    /// Opens the repository with the current password, or with the pending one of an
    /// interrupted rotation (which then becomes current). Inits when the key exists but the
    /// repository does not (its key was saved, the init never ran).
    async fn open(
        &self,
        namespace: &str,
        passwords: Passwords,
        cancel: &CancellationToken,
    ) -> Result<String, RepoError> {
        let repository = self.restic_repository(namespace, &passwords.current)?;
        match self.restic.cat_config(&repository, cancel).await {
            Ok(_) => Ok(passwords.current),
            Err(ResticError::RepositoryMissing { .. }) => {
                tracing::info!(namespace, "key stored but no repository: initialising");
                self.restic.init(&repository, cancel).await?;
                Ok(passwords.current)
            }
            Err(error @ ResticError::WrongPassword { .. }) => {
                let Some(pending) = passwords.pending else {
                    return Err(error.into());
                };
                let rotated = self.restic_repository(namespace, &pending)?;
                self.restic.cat_config(&rotated, cancel).await?;
                tracing::info!(namespace, "finishing an interrupted key rotation");
                self.keys
                    .save(
                        namespace,
                        &Passwords {
                            current: pending.clone(),
                            pending: None,
                        },
                    )
                    .await?;
                Ok(pending)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// URL, password and environment of the namespace's repository.
    pub async fn access(&self, namespace: &str) -> Result<Access, RepoError> {
        validate_namespace(namespace)?;
        let Some(passwords) = self.keys.load(namespace).await? else {
            // The key went away behind this process: the next ensure must not vouch for it.
            self.verifications.invalidate(namespace);
            return Err(RepoError::RepositoryNotFound(namespace.to_string()));
        };
        Ok(Access {
            url: self.url(namespace)?,
            password: passwords.current,
            env: self.location.restic_env(),
        })
    }

    async fn ready_repository(
        &self,
        namespace: &str,
    ) -> Result<stowage_restic::Repository, RepoError> {
        let record = self.get(namespace)?;
        if record.phase != Phase::Ready {
            return Err(RepoError::NotReady {
                namespace: namespace.to_string(),
                message: record.message,
            });
        }
        let access = self.access(namespace).await?;
        self.restic_repository(namespace, &access.password)
    }

    /// Takes the exclusive lease for `holder`, runs `task`, releases the lease.
    async fn exclusively<T>(
        &self,
        namespace: &str,
        holder: &str,
        task: impl AsyncFnOnce() -> Result<T, RepoError>,
    ) -> Result<T, RepoError> {
        let lease = self
            .leases
            .acquire(
                namespace,
                LeaseMode::Exclusive,
                holder,
                // Held by this process only and released by the guard below, also when the
                // caller goes away mid-task (the RPC future is dropped); the TTL is a backstop.
                Duration::from_secs(24 * 3600),
                self.settings.maintenance_wait,
            )
            .await?;
        let _release = ReleaseOnDrop {
            leases: &self.leases,
            id: lease.id,
        };
        // Checked after the wait for the lease, right before restic starts: a repo-manager
        // paused through a takeover starts nothing when it wakes up.
        if !self.term.holds(Instant::now()) {
            return Err(RepoError::TermEnded {
                what: holder.to_string(),
                term: self.term.get().unwrap_or_default(),
            });
        }
        task().await
    }

    /// Runs check or prune now: takes the exclusive lease (waiting for backups to finish),
    /// clears stale restic locks, runs restic, records the result.
    #[tracing::instrument(skip(self), fields(kind = kind.name()))]
    pub async fn run_maintenance(
        &self,
        namespace: &str,
        kind: MaintenanceKind,
    ) -> Result<MaintenanceOutcome, RepoError> {
        let repository = self.ready_repository(namespace).await?;
        let cancel = self.shutdown.child_token();
        let started = Utc::now();
        // Recorded before restic runs, so a repo-manager that takes over after this one is
        // killed finds the run unfinished (see `MaintenanceRecord::end_interrupted`).
        self.store_record(namespace, |record| {
            let task = match kind {
                MaintenanceKind::Check => &mut record.check,
                MaintenanceKind::Prune => &mut record.prune,
            };
            task.running_since = Some(started);
        })
        .await?;
        let invalidate = InvalidateOnDrop::new(&self.verifications, namespace);
        let result = self
            .exclusively(
                namespace,
                &format!("maintenance/{}", kind.name()),
                async || {
                    self.clear_stale_locks(namespace, &repository, &cancel)
                        .await;
                    match kind {
                        MaintenanceKind::Check => {
                            self.restic
                                .check(&repository, CheckData::Structure, &cancel)
                                .await
                        }
                        MaintenanceKind::Prune => self.restic.prune(&repository, &cancel).await,
                    }
                    .map(drop)
                    .map_err(RepoError::from)
                },
            )
            .await;
        // A restic that failed or was cancelled may have left its lock behind, or failed
        // because the key or the repository is gone: only success keeps the verification.
        if result.is_ok() {
            invalidate.disarm();
        } else {
            drop(invalidate);
        }
        if let Err(RepoError::Restic(error)) = &result
            && error.is_cancelled()
        {
            return Err(RepoError::Cancelled);
        }
        let finished = Utc::now();
        let error = result.err().map(|error| error.to_string());
        match &error {
            None => tracing::info!(namespace, kind = kind.name(), "maintenance succeeded"),
            Some(error) => {
                tracing::warn!(namespace, kind = kind.name(), %error, "maintenance failed")
            }
        }
        let record = self
            .store_record(namespace, |record| {
                let task = match kind {
                    MaintenanceKind::Check => &mut record.check,
                    MaintenanceKind::Prune => &mut record.prune,
                };
                task.record(started, finished, error.clone());
            })
            .await?;
        let task = match kind {
            MaintenanceKind::Check => record.check,
            MaintenanceKind::Prune => record.prune,
        };
        Ok(MaintenanceOutcome {
            namespace: namespace.to_string(),
            kind,
            error,
            duration_seconds: task.last_duration_seconds,
            finished,
        })
    }

    /// Removes restic locks whose holder is gone: at once those of stowage pods the API server
    /// no longer has, and those of present agent pods whose agent runs no restic with the
    /// lock's pid (each lock file deleted by its id: `restic unlock` would keep them for 30
    /// minutes), then those restic's own rule calls stale (`restic unlock`). Failures
    /// only log (restic then reports the lock itself). Whether the locks could be inspected.
    async fn clear_stale_locks(
        &self,
        namespace: &str,
        repository: &stowage_restic::Repository,
        cancel: &CancellationToken,
    ) -> bool {
        let cleared = async {
            let locks = self.restic.locks(repository, cancel).await?;
            let mut removed = Vec::new();
            if let Some(holders) = &self.lock_holders {
                let this_host = stowage_restic::locks::hostname();
                for stale in holders.stale_locks(&locks, &this_host).await {
                    let message = match stale.reason {
                        StaleReason::PodGone => {
                            "removing the restic lock of a stowage pod that no longer exists"
                        }
                        StaleReason::ResticGone | StaleReason::PidReused { .. } => {
                            "removing the restic lock of a restic that no longer runs in its agent pod"
                        }
                    };
                    tracing::info!(
                        namespace,
                        lock = %stale.id,
                        pod = %stale.holder,
                        pid = stale.pid,
                        why = %stale.reason,
                        "{message}"
                    );
                    // That lock file alone: `restic unlock --remove-all` would also remove
                    // the locks of restics that still run.
                    self.state.remove_restic_lock(namespace, &stale.id).await?;
                    removed.push(stale.id);
                }
            }
            let rest: Vec<_> = locks
                .into_iter()
                .filter(|lock| !removed.contains(&lock.id))
                .collect();
            removed.extend(
                self.restic
                    .remove_stale_locks_among(
                        repository,
                        &rest,
                        self.settings.stale_lock_age,
                        cancel,
                    )
                    .await?,
            );
            Ok::<_, RepoError>(removed)
        };
        match cleared.await {
            Ok(removed) => {
                if !removed.is_empty() {
                    tracing::info!(namespace, locks = ?removed, "removed stale restic locks");
                }
                true
            }
            Err(error) => {
                tracing::warn!(namespace, %error, "cannot inspect or remove restic locks");
                false
            }
        }
    }

    /// Forgets every snapshot tagged `backup=<backup_name>`, then prunes. A namespace that
    /// never had a repository has nothing to forget (an empty answer, not an error), so
    /// deleting a backup does not depend on which namespaces it found volumes in.
    #[tracing::instrument(skip(self))]
    pub async fn forget_backup(
        &self,
        namespace: &str,
        backup_name: &str,
    ) -> Result<Vec<String>, RepoError> {
        validate_namespace(namespace)?;
        // The name becomes a restic `--tag backup=<name>` filter, where `,` would separate tags.
        if !stowage_storage_location::is_backup_name(backup_name) {
            return Err(RepoError::InvalidArgument(format!(
                "backup name `{backup_name}`: must be lowercase letters, digits, `-` and `.`, \
                 at most 63 characters"
            )));
        }
        if self.get(namespace).is_err() {
            // Not known to this process: nothing to forget when the namespace never had a
            // repository, else open it first (a new repo-manager on an existing location).
            if self.keys.load(namespace).await?.is_none()
                && !self.state.restic_repository_exists(namespace).await?
            {
                return Ok(Vec::new());
            }
            self.ensure(namespace).await?;
        }
        let repository = self.ready_repository(namespace).await?;
        let cancel = self.shutdown.child_token();
        // Forget and prune take restic's exclusive lock; one that failed, or whose caller went
        // away, may have left it.
        let _invalidate = InvalidateOnDrop::new(&self.verifications, namespace);
        self.exclusively(namespace, &format!("forget/{backup_name}"), async || {
            self.clear_stale_locks(namespace, &repository, &cancel)
                .await;
            let forgotten = self
                .restic
                .forget_tagged(&repository, &[format!("backup={backup_name}")], &cancel)
                .await?;
            if !forgotten.is_empty() {
                self.restic.prune(&repository, &cancel).await?;
            }
            tracing::info!(
                namespace,
                backup = backup_name,
                snapshots = forgotten.len(),
                "forgot backup"
            );
            Ok(forgotten)
        })
        .await
    }

    /// A token cancelled at shutdown, for a run its caller may also stop.
    pub fn run_token(&self) -> CancellationToken {
        self.shutdown.child_token()
    }

    /// Lists a directory of one of the namespace's snapshots into `sink` (`restic ls`), under
    /// restic's own shared lock, stopped by `cancel` (take it from [`Manager::run_token`]). A
    /// snapshot that lacks
    /// `options.dir` is [`RepoError::PathNotFound`].
    pub async fn list_snapshot_files(
        &self,
        namespace: &str,
        options: &stowage_restic::LsOptions,
        cancel: &CancellationToken,
        sink: impl stowage_restic::NodeSink,
    ) -> Result<(), RepoError> {
        validate_namespace(namespace)?;
        if self.get(namespace).is_err() {
            // Not known to this process: open it when the location has it (a new
            // repo-manager), never create one to list it.
            if self.keys.load(namespace).await?.is_none()
                && !self.state.restic_repository_exists(namespace).await?
            {
                return Err(RepoError::RepositoryNotFound(namespace.to_string()));
            }
            self.ensure(namespace).await?;
        }
        let repository = self.ready_repository(namespace).await?;
        let found = self.restic.ls(&repository, options, cancel, sink).await?;
        if !found {
            return Err(RepoError::PathNotFound {
                snapshot: options.snapshot.clone(),
                path: options.dir.clone(),
            });
        }
        Ok(())
    }

    /// Adds a new random key and removes the old one, under the exclusive lease.
    #[tracing::instrument(skip(self))]
    pub async fn rotate_key(&self, namespace: &str) -> Result<RepositoryRecord, RepoError> {
        let repository = self.ready_repository(namespace).await?;
        let cancel = self.shutdown.child_token();
        self.exclusively(namespace, "rotate-key", async || {
            let lock = self.namespace_lock(namespace);
            let _guard = lock.lock().await;
            // Under the namespace lock, so no ensure can vouch for the old key in between.
            self.verifications.invalidate(namespace);
            let current = repository.password().to_string();
            let new = generate_password()?;
            // The new password is stored (as pending) before restic knows it, so no crash can
            // leave the repository with a key we do not have.
            self.keys
                .save(
                    namespace,
                    &Passwords {
                        current: current.clone(),
                        pending: Some(new.clone()),
                    },
                )
                .await?;
            let key_id = self.restic.rotate_key(&repository, &new, &cancel).await?;
            self.keys
                .save(
                    namespace,
                    &Passwords {
                        current: new,
                        pending: None,
                    },
                )
                .await?;
            tracing::info!(namespace, key = %key_id, "rotated repository key");
            Ok(())
        })
        .await?;
        self.get(namespace)
    }

    /// Tasks whose next run is due now, for the scheduler.
    pub fn due(&self, now: DateTime<Utc>) -> Vec<(String, MaintenanceKind)> {
        let records = self.records();
        let mut due = Vec::new();
        for record in records
            .values()
            .filter(|record| record.phase == Phase::Ready)
        {
            for (kind, task) in [
                (MaintenanceKind::Check, &record.check),
                (MaintenanceKind::Prune, &record.prune),
            ] {
                let interval = self.settings.schedules.interval(&record.namespace, kind);
                if task.is_due(record.created, interval, now) {
                    due.push((record.namespace.clone(), kind));
                }
            }
        }
        due
    }
}

#[cfg(test)]
mod fencing_tests {
    use stowage_storage_location::{
        FencedObjectStore, S3Options,
        object_store::{ObjectStore, memory::InMemory},
    };

    use super::*;
    use crate::keys::MasterKey;

    /// A manager over an in-memory bucket behind the fenced store, as `main` builds it; its
    /// restic is never run.
    async fn manager(term: &LeaderTerm, dir: &std::path::Path) -> Manager {
        let location =
            StorageLocation::from_env(&format!("file://{}", dir.display()), S3Options::default())
                .unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(FencedObjectStore::new(
            Arc::new(InMemory::new()),
            term.clone(),
            "repo-manager",
        ));
        Manager::load(
            location,
            Restic::new(dir.join("no-restic"), dir),
            StateStore::new(store.clone()),
            KeyStore::new(store, MasterKey::from_secret_text("master"), None),
            ManagerSettings {
                maintenance_wait: Duration::from_secs(1),
                stale_lock_age: chrono::Duration::minutes(5),
                schedules: Schedules {
                    check: Duration::from_secs(3600),
                    prune: Duration::from_secs(3600),
                    check_overrides: Default::default(),
                    prune_overrides: Default::default(),
                },
                adopt_velero_repositories: false,
                velero_repository_password: VELERO_STATIC_PASSWORD.into(),
                verify_interval: Duration::ZERO,
                term: term.clone(),
            },
            None,
            CancellationToken::new(),
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_repo_manager_whose_term_ended_starts_no_exclusive_run_and_records_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let term = LeaderTerm::default();
        let manager = manager(&term, dir.path()).await;
        term.renewed(3, Instant::now() + Duration::from_secs(10));
        manager
            .exclusively("foo", "maintenance/prune", async || Ok(()))
            .await
            .expect("a live term runs");
        manager
            .store_record("foo", |_| {})
            .await
            .expect("a live term writes");

        // Woken up after its renew deadline: the run is not started, nothing is written.
        term.renewed(3, Instant::now() - Duration::from_millis(1));
        let mut started = false;
        let refused = manager
            .exclusively("foo", "maintenance/prune", async || {
                started = true;
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(!started, "restic would not have started");
        assert!(
            refused.to_string().contains(
                "not running maintenance/prune: this repo-manager's leader term 3 has ended"
            ),
            "{refused}"
        );
        assert_eq!(
            tonic::Status::from(refused).code(),
            tonic::Code::Unavailable
        );
        let error = manager
            .store_record("foo", |record| record.message = "stale".into())
            .await
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("this repo-manager's leader term 3 has ended"),
            "{error}"
        );
        term.lost();
        assert!(
            manager
                .exclusively("foo", "forget/nightly", async || Ok(()))
                .await
                .is_err(),
            "lost"
        );
    }
}
