//! The real implementations of the core's ports: the Kubernetes API (`kube::Cluster` and the
//! mirror writer), the repo-manager and agent gRPC clients, and the object store's `Store`.
//! Each only forwards and turns transport errors into the core's typed errors.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
    time::Duration,
};

use ::kube::api::DynamicObject;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use serde_json::Value;
use stowage_grpc::TracedChannel;
use stowage_hooks::{ExecError, ExecTarget, KubePodExec, Output, PodExec};
use stowage_proto::{
    prost_types,
    v1::{
        AbandonRestoreRequest, AcquireLeaseRequest, AttachOperationRequest, Backup,
        BackupVolumeEvent, BackupVolumeRequest, CancelOperationRequest, EnsureRepositoryRequest,
        ForgetBackupRequest, GetRepositoryAccessRequest, ListRepositoriesRequest,
        ListRepositoriesResponse, LogLine, MaintenanceResult, ReleaseLeaseRequest,
        RenewLeaseRequest, Repository, RepositoryAccess, Restore, RestoreVolumeEvent,
        RestoreVolumeRequest, RunMaintenanceRequest, repo_manager_client::RepoManagerClient,
    },
};
use stowage_velero_format::BackupResources;

use crate::{
    error::{Error, Result},
    kube::{
        Cluster,
        agents::Agents,
        mirror::{self, Mirror, MirrorKind, MirrorQueue, MirrorWriter},
    },
    ports::{AgentEvents, AgentsPort, ClusterPort, MirrorSession, RecordStore, RepoManagerPort},
    store::Store,
};

/// The mirror writer of one run.
struct KubeMirrors {
    queue: MirrorQueue,
    writer: Mutex<Option<MirrorWriter>>,
}

#[tonic::async_trait]
impl MirrorSession for KubeMirrors {
    fn submit(&self, mirror: Mirror) {
        self.queue.submit(mirror);
    }

    fn submit_after(&self, mirror: Mirror, hold: Duration) {
        self.queue.submit_after(mirror, hold);
    }

    async fn finish(&self) {
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(writer) = writer {
            writer.finish().await;
        }
    }
}

#[tonic::async_trait]
impl ClusterPort for Cluster {
    async fn namespaces(&self) -> Result<Vec<String>> {
        Cluster::namespaces(self).await
    }

    async fn pods(&self, namespace: &str, labels: &BTreeMap<String, String>) -> Result<Vec<Pod>> {
        Cluster::pods(self, namespace, labels).await
    }

    async fn pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>> {
        Cluster::pod(self, namespace, name).await
    }

    async fn pvcs(&self, namespace: &str) -> Result<Vec<PersistentVolumeClaim>> {
        Cluster::pvcs(self, namespace).await
    }

    async fn pvc(&self, namespace: &str, name: &str) -> Result<Option<PersistentVolumeClaim>> {
        Cluster::pvc(self, namespace, name).await
    }

    async fn replica_set_owner(&self, namespace: &str, name: &str) -> Result<Option<String>> {
        Cluster::replica_set_owner(self, namespace, name).await
    }

    async fn exec(
        &self,
        target: &ExecTarget,
        command: &[String],
        output: &mut Output,
    ) -> std::result::Result<i32, ExecError> {
        KubePodExec::new(self.client().clone())
            .exec(target, command, output)
            .await
    }

    async fn create_pod(&self, namespace: &str, pod: &Pod) -> Result<()> {
        match Cluster::create_pod(self, namespace, pod).await {
            Ok(_) => Ok(()),
            Err(Error::Kube { source, .. }) if crate::kube::is_conflict(&source) => {
                Err(Error::Conflict(format!(
                    "pod {namespace}/{} already exists",
                    pod.metadata.name.clone().unwrap_or_default()
                )))
            }
            Err(error) => Err(error),
        }
    }

    async fn delete_pod(&self, namespace: &str, name: &str) -> Result<()> {
        Cluster::delete_pod(self, namespace, name).await
    }

    async fn restore_helper_config(&self) -> Result<BTreeMap<String, String>> {
        Cluster::restore_helper_config(self).await
    }

    async fn capture_resources(
        &self,
        backup: &Backup,
        page_size: u32,
        volume_manifests: &[Value],
        log: &(dyn for<'a> Fn(&'a str, String) + Send + Sync),
    ) -> Result<BackupResources> {
        crate::resources::capture_backup(
            self,
            backup,
            page_size,
            volume_manifests,
            |level, line| log(level, line),
        )
        .await
    }

    fn objects(&self) -> std::sync::Arc<dyn crate::resources::restore::ObjectApi> {
        std::sync::Arc::new(crate::resources::restore::kube::KubeObjects::new(
            self.client().clone(),
        ))
    }

    fn mirrors(&self, kind: MirrorKind) -> Box<dyn MirrorSession> {
        let writer = MirrorWriter::start(Some(self), kind);
        Box::new(KubeMirrors {
            queue: writer.queue(),
            writer: Mutex::new(Some(writer)),
        })
    }

    async fn apply_mirror(&self, kind: MirrorKind, mirror: &Mirror) -> Result<()> {
        mirror::patch_or_create(self, kind, mirror).await
    }

    async fn list_mirrors(&self, kind: MirrorKind) -> Result<Vec<DynamicObject>> {
        mirror::list(self, kind).await
    }

    async fn fail_unfinished_mirrors(&self, kind: MirrorKind, message: &str) -> Result<usize> {
        mirror::fail_unfinished(self, kind, message).await
    }

    async fn delete_mirrors(&self, kind: MirrorKind, label: &str, value: &str) -> Result<()> {
        mirror::delete_labelled(self, kind, label, value).await
    }
}

/// The repo-manager over gRPC. Its calls wait out a change of the repo-manager's leader (see
/// [`through_takeover`]).
#[derive(Clone)]
pub struct RepoManager {
    client: RepoManagerClient<TracedChannel>,
    /// This orchestrator's leader term, sent with every request: the repo-manager refuses
    /// leases, forgets and maintenance from an orchestrator older than one it heard from.
    term: stowage_contract::fencing::LeaderTerm,
}

impl RepoManager {
    pub fn new(
        client: RepoManagerClient<TracedChannel>,
        term: stowage_contract::fencing::LeaderTerm,
    ) -> RepoManager {
        RepoManager { client, term }
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        stowage_grpc::fencing::with_term(&self.term, message)
    }
}

/// How long a call to the repo-manager waits in all for its leader: a takeover takes the
/// lease duration (15 s by default) and a few seconds more, as for the CLI.
const REPO_MANAGER_TAKEOVER_WAIT: Duration = Duration::from_secs(30);
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const LONGEST_PAUSE: Duration = Duration::from_secs(2);

/// Which failures of a call to the repo-manager are worth sending it again for, once a
/// repo-manager leads and serves. A rolling update or a killed leader gives these for a few
/// seconds; without waiting, one such moment failed every volume of a backup being prepared or
/// taken over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResendAfter {
    /// Only a standby's refusal (Unavailable, marked `stowage-standby`): it did nothing. For a
    /// call that must not run twice (a prune whose connection broke may have run).
    StandbyRefusal,
    /// Also a connection that could not be made or broke (a status made on this side from a
    /// transport error has it as its source; one the repo-manager sent has none). For a call
    /// that may run twice but whose Unavailable is the leader's answer (a lease an exclusive
    /// holder kept past the wait; a lease taken twice by a broken call lapses after its TTL).
    NoAnswer,
    /// Also any Unavailable: a leader shutting down for a rolling update cancels what it was
    /// doing and answers `Unavailable: shutting down`, and the repo-manager answers
    /// Unavailable only for what may pass. For reads, ensures, lease releases and forgets.
    Unavailable,
}

/// Whether `status` is a failure `resend` names.
fn worth_resending(status: &tonic::Status, resend: ResendAfter) -> bool {
    let unavailable = status.code() == tonic::Code::Unavailable;
    let refused_by_standby = unavailable
        && status
            .metadata()
            .contains_key(stowage_grpc::STANDBY_METADATA);
    let not_answered = std::error::Error::source(status).is_some();
    match resend {
        ResendAfter::StandbyRefusal => refused_by_standby,
        ResendAfter::NoAnswer => refused_by_standby || not_answered,
        ResendAfter::Unavailable => refused_by_standby || not_answered || unavailable,
    }
}

/// Sends `call` again, after a pause that doubles (up to 2 s), while it fails in a way
/// `resend` names and `wait` has not passed; any other answer is returned at once.
async fn through_takeover<T, F, Fut>(
    wait: Duration,
    resend: ResendAfter,
    mut call: F,
) -> std::result::Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = FIRST_PAUSE;
    loop {
        match call().await {
            Err(status)
                if worth_resending(&status, resend)
                    && tokio::time::Instant::now() + pause < deadline =>
            {
                tracing::debug!(error = %status, ?pause, "no repo-manager leader answered; calling again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(LONGEST_PAUSE);
            }
            answer => return answer,
        }
    }
}

fn proto_duration(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: duration.as_secs() as i64,
        nanos: duration.subsec_nanos() as i32,
    }
}

#[tonic::async_trait]
impl RepoManagerPort for RepoManager {
    async fn ensure_repository(&self, namespace: &str) -> Result<Repository> {
        Ok(
            through_takeover(REPO_MANAGER_TAKEOVER_WAIT, ResendAfter::Unavailable, || {
                let mut client = self.client.clone();
                let request = self.request(EnsureRepositoryRequest {
                    namespace: namespace.to_string(),
                });
                async move { client.ensure_repository(request).await }
            })
            .await
            .map_err(Error::rpc(
                "repo-manager",
                format!("repository of namespace {namespace}"),
            ))?
            .into_inner(),
        )
    }

    async fn ensure_repository_once(&self, namespace: &str) -> Result<Repository> {
        Ok(self
            .client
            .clone()
            .ensure_repository(self.request(EnsureRepositoryRequest {
                namespace: namespace.to_string(),
            }))
            .await
            .map_err(Error::rpc(
                "repo-manager",
                format!("repository of namespace {namespace}"),
            ))?
            .into_inner())
    }

    async fn repository_access(&self, namespace: &str) -> Result<RepositoryAccess> {
        Ok(
            through_takeover(REPO_MANAGER_TAKEOVER_WAIT, ResendAfter::Unavailable, || {
                let mut client = self.client.clone();
                let request = self.request(GetRepositoryAccessRequest {
                    namespace: namespace.to_string(),
                });
                async move { client.get_repository_access(request).await }
            })
            .await
            .map_err(Error::rpc("repo-manager", "repository access"))?
            .into_inner(),
        )
    }

    async fn acquire_lease(&self, request: AcquireLeaseRequest) -> Result<Option<String>> {
        let acquired = through_takeover(REPO_MANAGER_TAKEOVER_WAIT, ResendAfter::NoAnswer, || {
            let mut client = self.client.clone();
            let request = self.request(request.clone());
            async move { client.acquire_lease(request).await }
        })
        .await;
        match acquired {
            Ok(lease) => Ok(Some(lease.into_inner().lease_id)),
            // A repo-manager without leases still serves runs; prune safety is its concern.
            Err(status) if status.code() == tonic::Code::Unimplemented => Ok(None),
            Err(status) => Err(Error::rpc("repo-manager", "repository lease")(status)),
        }
    }

    async fn renew_lease(&self, lease_id: &str, ttl: Duration) -> Result<()> {
        // Not sent again here: the run's renewer complains and renews at its next period (a
        // third of the TTL), and waiting here would hold back its other leases' renewals.
        self.client
            .clone()
            .renew_lease(self.request(RenewLeaseRequest {
                lease_id: lease_id.to_string(),
                ttl: Some(proto_duration(ttl)),
            }))
            .await
            .map_err(Error::rpc(
                "repo-manager",
                format!("renewing lease {lease_id}"),
            ))?;
        Ok(())
    }

    async fn release_lease(&self, lease_id: &str) -> Result<bool> {
        Ok(
            through_takeover(REPO_MANAGER_TAKEOVER_WAIT, ResendAfter::Unavailable, || {
                let mut client = self.client.clone();
                let request = self.request(ReleaseLeaseRequest {
                    lease_id: lease_id.to_string(),
                });
                async move { client.release_lease(request).await }
            })
            .await
            .map_err(Error::rpc(
                "repo-manager",
                format!("releasing lease {lease_id}"),
            ))?
            .into_inner()
            .released,
        )
    }

    async fn forget_backup(&self, namespace: &str, backup_name: &str) -> Result<Vec<String>> {
        Ok(
            through_takeover(REPO_MANAGER_TAKEOVER_WAIT, ResendAfter::Unavailable, || {
                let mut client = self.client.clone();
                let request = self.request(ForgetBackupRequest {
                    namespace: namespace.to_string(),
                    backup_name: backup_name.to_string(),
                });
                async move { client.forget_backup(request).await }
            })
            .await
            .map_err(Error::rpc(
                "repo-manager",
                format!("forgetting snapshots in {namespace}"),
            ))?
            .into_inner()
            .forgotten_snapshot_ids,
        )
    }

    async fn list_snapshot_files(
        &self,
        request: stowage_proto::v1::ListSnapshotFilesRequest,
    ) -> Result<crate::ports::FileBatches> {
        let action = format!(
            "listing snapshot {} of namespace {}",
            request.snapshot_id, request.namespace
        );
        let stream = self
            .client
            .clone()
            .list_snapshot_files(self.request(request))
            .await
            .map_err(Error::rpc("repo-manager", action.clone()))?
            .into_inner();
        Ok(Box::pin(stream.map(move |item| {
            item.map(|response| response.entries)
                .map_err(Error::rpc("repo-manager", action.clone()))
        })))
    }

    async fn list_repositories(
        &self,
        request: ListRepositoriesRequest,
    ) -> Result<ListRepositoriesResponse> {
        Ok(
            through_takeover(REPO_MANAGER_TAKEOVER_WAIT, ResendAfter::Unavailable, || {
                let mut client = self.client.clone();
                let request = self.request(request);
                async move { client.list_repositories(request).await }
            })
            .await
            .map_err(Error::rpc("repo-manager", "listing repositories"))?
            .into_inner(),
        )
    }

    async fn run_maintenance(&self, request: RunMaintenanceRequest) -> Result<MaintenanceResult> {
        let namespace = request.namespace.clone();
        Ok(through_takeover(
            REPO_MANAGER_TAKEOVER_WAIT,
            ResendAfter::StandbyRefusal,
            || {
                let mut client = self.client.clone();
                let request = self.request(request.clone());
                async move { client.run_maintenance(request).await }
            },
        )
        .await
        .map_err(Error::rpc(
            "repo-manager",
            format!("maintenance of namespace {namespace}"),
        ))?
        .into_inner())
    }
}

fn agent_error(node: &str) -> impl Fn(tonic::Status) -> Error + Send + Sync + use<> {
    let node = node.to_string();
    move |status| Error::Agent {
        node: node.clone(),
        status,
    }
}

/// The events of an operation an agent answered an attach for; `None` when it does not have
/// the operation (NotFound).
fn kept_operation<T: Send + 'static>(
    node: &str,
    attached: std::result::Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
) -> Result<Option<AgentEvents<T>>> {
    let stream = match attached {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::NotFound => return Ok(None),
        Err(status) => return Err(agent_error(node)(status)),
    };
    let error = agent_error(node);
    Ok(Some(Box::pin(stream.map(move |item| item.map_err(&error)))))
}

#[tonic::async_trait]
impl AgentsPort for Agents {
    async fn attach_backup(
        &self,
        node: &str,
        operation_id: &str,
    ) -> Result<Option<AgentEvents<BackupVolumeEvent>>> {
        let request = self.request(AttachOperationRequest {
            operation_id: operation_id.to_string(),
        });
        let attached = self.for_node(node).await?.attach_backup(request).await;
        kept_operation(node, attached)
    }

    async fn attach_restore(
        &self,
        node: &str,
        operation_id: &str,
    ) -> Result<Option<AgentEvents<RestoreVolumeEvent>>> {
        let request = self.request(AttachOperationRequest {
            operation_id: operation_id.to_string(),
        });
        let attached = self.for_node(node).await?.attach_restore(request).await;
        kept_operation(node, attached)
    }

    async fn backup_volume(
        &self,
        node: &str,
        request: BackupVolumeRequest,
    ) -> Result<AgentEvents<BackupVolumeEvent>> {
        let stream = self
            .for_node(node)
            .await?
            .backup_volume(self.request(request))
            .await
            .map_err(agent_error(node))?
            .into_inner();
        let error = agent_error(node);
        Ok(Box::pin(stream.map(move |item| item.map_err(&error))))
    }

    async fn restore_volume(
        &self,
        node: &str,
        request: RestoreVolumeRequest,
    ) -> Result<AgentEvents<RestoreVolumeEvent>> {
        let stream = self
            .for_node(node)
            .await?
            .restore_volume(self.request(request))
            .await
            .map_err(agent_error(node))?
            .into_inner();
        let error = agent_error(node);
        Ok(Box::pin(stream.map(move |item| item.map_err(&error))))
    }

    async fn cancel_operation(&self, node: &str, operation_id: &str) -> Result<()> {
        self.for_node(node)
            .await?
            .cancel_operation(self.request(CancelOperationRequest {
                operation_id: operation_id.to_string(),
            }))
            .await
            .map_err(agent_error(node))?;
        Ok(())
    }

    async fn abandon_restore(&self, node: &str, request: AbandonRestoreRequest) -> Result<bool> {
        Ok(self
            .for_node(node)
            .await?
            .abandon_restore(self.request(request))
            .await
            .map_err(agent_error(node))?
            .into_inner()
            .written)
    }
}

#[tonic::async_trait]
impl RecordStore for Store {
    async fn put_backup(
        &self,
        backup: &Backup,
        logs: &[LogLine],
        resources: Option<&BackupResources>,
    ) -> Result<()> {
        self.save_backup(backup, logs, resources).await
    }

    async fn list_backups_except(
        &self,
        known: &BTreeSet<String>,
    ) -> Result<Vec<(Backup, Vec<LogLine>)>> {
        if known.is_empty() {
            return self.load_backups().await;
        }
        self.load_backups_except(|name| known.contains(name)).await
    }

    async fn backup_tarball(&self, name: &str) -> Result<BackupResources> {
        Store::load_tarball(self, name).await
    }

    async fn delete_backup(&self, name: &str) -> Result<()> {
        Store::delete_backup(self, name).await
    }

    async fn repository_exists(&self, namespace: &str) -> Result<bool> {
        Store::repository_exists(self, namespace).await
    }

    async fn put_restore(&self, restore: &Restore, logs: &[LogLine]) -> Result<()> {
        Store::put_restore(self, restore, logs).await
    }

    async fn list_restores(&self) -> Result<Vec<Restore>> {
        Store::list_restores(self).await
    }

    async fn get_restore(&self, name: &str) -> Result<Option<Restore>> {
        Store::get_restore(self, name).await
    }

    async fn restore_logs(&self, name: &str) -> Result<Vec<LogLine>> {
        Store::restore_logs(self, name).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;

    fn standby_refusal() -> tonic::Status {
        let mut status = tonic::Status::unavailable("not the leader; repo-manager-a leads");
        status.metadata_mut().insert(
            stowage_grpc::STANDBY_METADATA,
            "repo-manager-a".parse().unwrap(),
        );
        status
    }

    /// A status made on this side from a broken connection, as tonic makes it.
    fn connection_reset() -> tonic::Status {
        let mut status = tonic::Status::unknown("transport error");
        status.set_source(Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        status
    }

    /// Runs [`through_takeover`] over `answers`, one per call (the last one repeated), and
    /// returns its result and the number of calls.
    async fn run(
        answers: Vec<std::result::Result<u32, tonic::Status>>,
        resend: ResendAfter,
    ) -> (std::result::Result<u32, tonic::Status>, usize) {
        let calls = Arc::new(AtomicUsize::new(0));
        let result = through_takeover(REPO_MANAGER_TAKEOVER_WAIT, resend, || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let answer = answers[n.min(answers.len() - 1)].clone();
            async move { answer }
        })
        .await;
        (result, calls.load(Ordering::SeqCst))
    }

    fn shutting_down() -> tonic::Status {
        tonic::Status::unavailable("shutting down")
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_refused_by_a_standby_cut_off_or_stopped_is_sent_again_until_a_leader_answers() {
        let (result, calls) = run(
            vec![
                Err(standby_refusal()),
                Err(connection_reset()),
                Err(shutting_down()),
                Ok(7),
            ],
            ResendAfter::Unavailable,
        )
        .await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(calls, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_request_is_sent_again_when_unanswered_not_when_the_leader_says_unavailable() {
        let (result, calls) = run(
            vec![Err(standby_refusal()), Err(connection_reset()), Ok(7)],
            ResendAfter::NoAnswer,
        )
        .await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(calls, 3);
        // An exclusive holder kept the lease past the request's wait: the leader's answer.
        let (result, calls) = run(
            vec![
                Err(tonic::Status::unavailable(
                    "timed out after 0s waiting for a shared lease on namespace `shop`",
                )),
                Ok(7),
            ],
            ResendAfter::NoAnswer,
        )
        .await;
        assert_eq!(result.unwrap_err().code(), tonic::Code::Unavailable);
        assert_eq!(calls, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_must_not_run_twice_is_sent_again_only_after_a_standby_refusal() {
        let (result, calls) = run(
            vec![Err(standby_refusal()), Ok(7)],
            ResendAfter::StandbyRefusal,
        )
        .await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(calls, 2);
        for status in [connection_reset(), shutting_down()] {
            let (result, calls) = run(
                vec![Err(status.clone()), Ok(7)],
                ResendAfter::StandbyRefusal,
            )
            .await;
            assert_eq!(result.unwrap_err().code(), status.code());
            assert_eq!(
                calls, 1,
                "a prune cut off or stopped may have run: {status:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_leaders_own_errors_are_returned_at_once() {
        for status in [
            tonic::Status::not_found("no lease l1"),
            tonic::Status::invalid_argument("namespace `A` is not a namespace name"),
            tonic::Status::failed_precondition("repository not ready"),
        ] {
            let (result, calls) =
                run(vec![Err(status.clone()), Ok(7)], ResendAfter::Unavailable).await;
            assert_eq!(result.unwrap_err().code(), status.code());
            assert_eq!(calls, 1, "{status:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_leader_the_call_fails_once_the_wait_has_passed() {
        let started = tokio::time::Instant::now();
        let (result, calls) = run(vec![Err(standby_refusal())], ResendAfter::Unavailable).await;
        let status = result.unwrap_err();
        assert!(
            status
                .metadata()
                .contains_key(stowage_grpc::STANDBY_METADATA)
        );
        assert!(started.elapsed() <= REPO_MANAGER_TAKEOVER_WAIT);
        // 0.25 + 0.5 + 1 + 2 + 2 … s: the pauses double up to 2 s.
        assert!(
            (14..=20).contains(&calls),
            "{calls} calls in {:?}",
            started.elapsed()
        );
    }
}
