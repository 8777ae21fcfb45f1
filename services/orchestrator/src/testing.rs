//! In-memory fakes of the four ports, for the core's unit tests: a cluster that schedules
//! created pods at once, a repo-manager that records every lease call, agents that play a
//! script per volume and count how many operations run on each node, and a record store.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use ::kube::api::DynamicObject;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use serde_json::{Value, json};
use stowage_hooks::{ExecError, ExecTarget, Output};
use stowage_proto::v1::{
    AbandonRestoreRequest, AcquireLeaseRequest, Backup, BackupVolumeEvent, BackupVolumeRequest,
    BackupVolumeResult, ListRepositoriesRequest, ListRepositoriesResponse, LogLine,
    MaintenanceResult, Progress, Queued, Repository, RepositoryAccess, RepositoryPhase, Restore,
    RestoreVolumeEvent, RestoreVolumeRequest, RestoreVolumeResult, RunMaintenanceRequest,
    backup_volume_event, restore_volume_event,
};
use stowage_velero_format::BackupResources;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    deps::{Deps, Limits, RestoreHelperDefaults},
    error::{Error, Result},
    kube::mirror::{Mirror, MirrorKind},
    ports::{AgentEvents, AgentsPort, ClusterPort, MirrorSession, RecordStore, RepoManagerPort},
    resources::{
        api::ApiResource,
        restore::{ObjectApi, api::ObjectError, fake::FakeObjects},
    },
    restore::RESTORE_HELPER,
    state::Index,
};

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running pod on `node` with emptyDir volumes `volumes`, all annotated for backup.
pub fn pod(namespace: &str, name: &str, node: &str, volumes: &[&str]) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}"),
            "annotations": {"backup.velero.io/backup-volumes": volumes.join(",")},
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": "busybox"}],
            "volumes": volumes.iter().map(|v| json!({"name": v, "emptyDir": {}})).collect::<Vec<_>>(),
        },
        "status": {"phase": "Running"},
    }))
    .expect("a pod")
}

/// The fake cluster: pods by `namespace/name`; a created pod is scheduled on the node
/// `schedule` names for it (none: it stays Pending) with its restore helper running.
pub struct FakeCluster {
    pub pods: Arc<Mutex<BTreeMap<String, Pod>>>,
    /// Node a created pod is scheduled on, by pod name.
    pub schedule: Arc<Mutex<BTreeMap<String, String>>>,
    /// The API server a restore recreates objects through: pods go to `pods` (scheduled as
    /// `schedule` says), everything else to an in-memory API server.
    pub objects: Arc<ClusterObjects>,
    /// Every mirror state written, in order.
    pub mirrors: Arc<Mutex<Vec<(MirrorKind, Mirror)>>>,
    /// Listing pods in this namespace panics (a bug in the runner's path).
    pub panic_on_namespace: Mutex<Option<String>>,
    /// What an exec of a command (by its first word) answers: exit code and stderr; a
    /// command not named here exits 0.
    pub exec_answers: Mutex<BTreeMap<String, (i32, String)>>,
    /// Claims by `namespace/name`.
    pub pvcs: Mutex<BTreeMap<String, PersistentVolumeClaim>>,
    /// Pods deleted, as `namespace/name`, in order.
    pub deleted_pods: Mutex<Vec<String>>,
    /// `exec <command> in <target>` for each exec, and (shared with the fake agents by
    /// [`World`]) `restic <volume>` for each volume an agent started, in order.
    pub timeline: Arc<Mutex<Vec<String>>>,
}

impl Default for FakeCluster {
    fn default() -> FakeCluster {
        let pods: Arc<Mutex<BTreeMap<String, Pod>>> = Arc::default();
        let schedule: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
        FakeCluster {
            objects: Arc::new(ClusterObjects {
                pods: pods.clone(),
                schedule: schedule.clone(),
                others: FakeObjects::new(),
            }),
            pods,
            schedule,
            mirrors: Arc::default(),
            panic_on_namespace: Mutex::default(),
            exec_answers: Mutex::default(),
            pvcs: Mutex::default(),
            deleted_pods: Mutex::default(),
            timeline: Arc::default(),
        }
    }
}

/// Creates `pod` in `pods` with a new uid, scheduled on the node `schedule` names for it
/// with its restore helper running (none: it stays Pending).
fn create_fake_pod(
    pods: &Mutex<BTreeMap<String, Pod>>,
    schedule: &Mutex<BTreeMap<String, String>>,
    namespace: &str,
    pod: &Pod,
) -> Result<Pod> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let key = format!("{namespace}/{name}");
    if lock(pods).contains_key(&key) {
        return Err(Error::Conflict(format!("pod {key} already exists")));
    }
    let mut pod = pod.clone();
    pod.metadata.namespace = Some(namespace.to_string());
    pod.metadata.uid = Some(format!("new-uid-{namespace}-{name}"));
    pod.metadata.resource_version = Some("1".to_string());
    if let Some(node) = lock(schedule).get(&name).cloned() {
        let scheduled: Pod = serde_json::from_value(json!({
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": "Pending", "initContainerStatuses": [{
                "name": RESTORE_HELPER, "image": "helper", "imageID": "", "ready": false,
                "restartCount": 0, "state": {"running": {}},
            }]},
        }))
        .expect("a pod status");
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = Some(node);
        }
        pod.status = scheduled.status;
    }
    lock(pods).insert(key, pod.clone());
    Ok(pod)
}

/// [`ObjectApi`] of the fake cluster: pods in the cluster's own map, the rest in memory.
pub struct ClusterObjects {
    pods: Arc<Mutex<BTreeMap<String, Pod>>>,
    schedule: Arc<Mutex<BTreeMap<String, String>>>,
    pub others: FakeObjects,
}

fn pod_error(what: String, error: impl std::fmt::Display) -> ObjectError {
    ObjectError::Refused {
        what,
        code: 422,
        reason: "Invalid".to_string(),
        message: error.to_string(),
    }
}

#[tonic::async_trait]
impl ObjectApi for ClusterObjects {
    async fn served(&self) -> std::result::Result<Vec<ApiResource>, ObjectError> {
        self.others.served().await
    }

    async fn get(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
    ) -> std::result::Result<Option<Value>, ObjectError> {
        if resource.group_resource() != "pods" {
            return self.others.get(resource, namespace, name).await;
        }
        let key = format!("{}/{name}", namespace.unwrap_or_default());
        Ok(lock(&self.pods)
            .get(&key)
            .map(|pod| serde_json::to_value(pod).expect("a pod")))
    }

    async fn create(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        object: &Value,
    ) -> std::result::Result<Value, ObjectError> {
        if resource.group_resource() != "pods" {
            return self.others.create(resource, namespace, object).await;
        }
        let namespace = namespace.unwrap_or_default();
        let what = format!("pods/{namespace}");
        let pod: Pod =
            serde_json::from_value(object.clone()).map_err(|e| pod_error(what.clone(), e))?;
        match create_fake_pod(&self.pods, &self.schedule, namespace, &pod) {
            Ok(pod) => Ok(serde_json::to_value(pod).expect("a pod")),
            Err(error) => Err(ObjectError::Refused {
                what,
                code: 409,
                reason: "AlreadyExists".to_string(),
                message: error.to_string(),
            }),
        }
    }

    async fn replace(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
        object: &Value,
    ) -> std::result::Result<Value, ObjectError> {
        if resource.group_resource() != "pods" {
            return self.others.replace(resource, namespace, name, object).await;
        }
        let key = format!("{}/{name}", namespace.unwrap_or_default());
        let pod: Pod =
            serde_json::from_value(object.clone()).map_err(|e| pod_error(key.clone(), e))?;
        lock(&self.pods).insert(key, pod);
        Ok(object.clone())
    }
}

impl FakeCluster {
    pub fn add_pod(&self, pod: Pod) {
        let key = format!(
            "{}/{}",
            pod.metadata.namespace.clone().unwrap_or_default(),
            pod.metadata.name.clone().unwrap_or_default()
        );
        lock(&self.pods).insert(key, pod);
    }

    /// The last state written of each mirror of `kind`, by object name.
    pub fn last_mirrors(&self, kind: MirrorKind) -> BTreeMap<String, Mirror> {
        lock(&self.mirrors)
            .iter()
            .filter(|(k, _)| std::mem::discriminant(k) == std::mem::discriminant(&kind))
            .map(|(_, mirror)| (mirror.name.clone(), mirror.clone()))
            .collect()
    }
}

struct FakeMirrors {
    kind: MirrorKind,
    written: Arc<Mutex<Vec<(MirrorKind, Mirror)>>>,
}

#[tonic::async_trait]
impl MirrorSession for FakeMirrors {
    fn submit(&self, mirror: Mirror) {
        lock(&self.written).push((self.kind, mirror));
    }

    fn submit_after(&self, mirror: Mirror, _hold: Duration) {
        lock(&self.written).push((self.kind, mirror));
    }

    async fn finish(&self) {}
}

#[tonic::async_trait]
impl ClusterPort for FakeCluster {
    async fn namespaces(&self) -> Result<Vec<String>> {
        let namespaces: BTreeSet<String> = lock(&self.pods)
            .keys()
            .filter_map(|key| key.split_once('/').map(|(ns, _)| ns.to_string()))
            .collect();
        Ok(namespaces.into_iter().collect())
    }

    async fn pods(&self, namespace: &str, _labels: &BTreeMap<String, String>) -> Result<Vec<Pod>> {
        if lock(&self.panic_on_namespace).as_deref() == Some(namespace) {
            panic!("listing pods in {namespace} went wrong");
        }
        Ok(lock(&self.pods)
            .iter()
            .filter(|(key, _)| key.starts_with(&format!("{namespace}/")))
            .map(|(_, pod)| pod.clone())
            .collect())
    }

    async fn pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>> {
        Ok(lock(&self.pods)
            .get(&format!("{namespace}/{name}"))
            .cloned())
    }

    async fn pvcs(&self, _namespace: &str) -> Result<Vec<PersistentVolumeClaim>> {
        Ok(Vec::new())
    }

    async fn pvc(&self, namespace: &str, name: &str) -> Result<Option<PersistentVolumeClaim>> {
        Ok(lock(&self.pvcs)
            .get(&format!("{namespace}/{name}"))
            .cloned())
    }

    async fn replica_set_owner(&self, _namespace: &str, _name: &str) -> Result<Option<String>> {
        Ok(None)
    }

    async fn create_pod(&self, namespace: &str, pod: &Pod) -> Result<()> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let key = format!("{namespace}/{name}");
        if lock(&self.pods).contains_key(&key) {
            return Err(Error::Conflict(format!("pod {key} already exists")));
        }
        let mut pod = pod.clone();
        pod.metadata.uid = Some(format!("new-uid-{namespace}-{name}"));
        let helper = pod
            .spec
            .iter()
            .flat_map(|spec| spec.init_containers.iter().flatten())
            .any(|container| container.name == RESTORE_HELPER);
        if let Some(node) = lock(&self.schedule).get(&name).cloned()
            && !helper
        {
            // A pod without the restore helper (a data-only restore's) just runs.
            if let Some(spec) = pod.spec.as_mut() {
                spec.node_name = Some(node);
            }
            pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            });
        } else if let Some(node) = lock(&self.schedule).get(&name).cloned() {
            let scheduled: Pod = serde_json::from_value(json!({
                "spec": {"nodeName": node, "containers": []},
                "status": {"phase": "Pending", "initContainerStatuses": [{
                    "name": RESTORE_HELPER, "image": "helper", "imageID": "", "ready": false,
                    "restartCount": 0, "state": {"running": {}},
                }]},
            }))
            .expect("a pod status");
            if let Some(spec) = pod.spec.as_mut() {
                spec.node_name = Some(node);
            }
            pod.status = scheduled.status;
        }
        lock(&self.pods).insert(key, pod);
        Ok(())
    }

    async fn exec(
        &self,
        target: &ExecTarget,
        command: &[String],
        output: &mut Output,
    ) -> std::result::Result<i32, ExecError> {
        lock(&self.timeline).push(format!("exec {} in {target}", command.join(" ")));
        let first = command.first().cloned().unwrap_or_default();
        let (code, stderr) = lock(&self.exec_answers)
            .get(&first)
            .cloned()
            .unwrap_or_default();
        output.stdout.push(format!("{first} ran\n").as_bytes());
        output.stderr.push(stderr.as_bytes());
        Ok(code)
    }

    async fn delete_pod(&self, namespace: &str, name: &str) -> Result<()> {
        let key = format!("{namespace}/{name}");
        lock(&self.pods).remove(&key);
        lock(&self.deleted_pods).push(key);
        Ok(())
    }

    async fn restore_helper_config(&self) -> Result<BTreeMap<String, String>> {
        Ok(BTreeMap::new())
    }

    /// The volumes' pods and claims only: the fake has no other objects to list.
    async fn capture_resources(
        &self,
        _backup: &Backup,
        _page_size: u32,
        volume_manifests: &[Value],
        _log: &(dyn for<'a> Fn(&'a str, String) + Send + Sync),
    ) -> Result<BackupResources> {
        let mut resources = BackupResources::new();
        for manifest in volume_manifests {
            resources
                .insert_object(manifest.clone())
                .map_err(|error| Error::Failed(error.to_string()))?;
        }
        Ok(resources)
    }

    fn objects(&self) -> Arc<dyn ObjectApi> {
        self.objects.clone()
    }

    fn mirrors(&self, kind: MirrorKind) -> Box<dyn MirrorSession> {
        Box::new(FakeMirrors {
            kind,
            written: self.mirrors.clone(),
        })
    }

    async fn apply_mirror(&self, kind: MirrorKind, mirror: &Mirror) -> Result<()> {
        lock(&self.mirrors).push((kind, mirror.clone()));
        Ok(())
    }

    async fn list_mirrors(&self, kind: MirrorKind) -> Result<Vec<DynamicObject>> {
        let api_kind = match kind {
            MirrorKind::PodVolumeBackup => "PodVolumeBackup",
            MirrorKind::PodVolumeRestore => "PodVolumeRestore",
        };
        Ok(self
            .last_mirrors(kind)
            .into_values()
            .map(|mirror| {
                serde_json::from_value(json!({
                    "apiVersion": "velero.io/v1", "kind": api_kind,
                    "metadata": {"name": mirror.name, "labels": mirror.labels},
                    "spec": mirror.spec, "status": mirror.status,
                }))
                .expect("a mirror object")
            })
            .collect())
    }

    async fn fail_unfinished_mirrors(&self, kind: MirrorKind, message: &str) -> Result<usize> {
        let mut marked = 0;
        for mut mirror in self.last_mirrors(kind).into_values() {
            if matches!(
                mirror.status["phase"].as_str(),
                None | Some("New" | "InProgress")
            ) {
                mirror.status["phase"] = json!("Failed");
                mirror.status["message"] = json!(message);
                lock(&self.mirrors).push((kind, mirror));
                marked += 1;
            }
        }
        Ok(marked)
    }

    async fn delete_mirrors(&self, kind: MirrorKind, label: &str, value: &str) -> Result<()> {
        lock(&self.mirrors).retain(|(k, mirror)| {
            std::mem::discriminant(k) != std::mem::discriminant(&kind)
                || mirror.labels[label].as_str() != Some(value)
        });
        Ok(())
    }
}

/// The fake repo-manager: every repository Ready, every lease granted, each call recorded as
/// `acquire <namespace> <holder> <id>`, `renew <id>`, `release <id>`.
#[derive(Default)]
pub struct FakeRepoManager {
    pub calls: Mutex<Vec<String>>,
    /// Leases granted and not released.
    pub held: Mutex<BTreeSet<String>>,
    /// Each lease's TTL as asked for.
    pub ttls: Mutex<Vec<Duration>>,
    /// Namespaces whose repository is Failed.
    pub broken: Mutex<BTreeSet<String>>,
    /// The files of each snapshot id, listed (whole, in batches of two) by
    /// `list_snapshot_files`, which records `ls <namespace> <snapshot> <path> <recursive>`.
    pub snapshot_files: Mutex<BTreeMap<String, Vec<stowage_proto::v1::FileEntry>>>,
    next: Mutex<u32>,
}

impl FakeRepoManager {
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    pub fn count(&self, prefix: &str) -> usize {
        lock(&self.calls)
            .iter()
            .filter(|call| call.starts_with(prefix))
            .count()
    }

    pub fn held(&self) -> BTreeSet<String> {
        lock(&self.held).clone()
    }

    /// Forgets every lease, as a restarted repo-manager has.
    pub fn forget_leases(&self) {
        lock(&self.held).clear();
    }
}

#[tonic::async_trait]
impl RepoManagerPort for FakeRepoManager {
    async fn ensure_repository(&self, namespace: &str) -> Result<Repository> {
        lock(&self.calls).push(format!("ensure {namespace}"));
        if lock(&self.broken).contains(namespace) {
            return Ok(Repository {
                namespace: namespace.to_string(),
                phase: RepositoryPhase::Failed as i32,
                message: "wrong password".into(),
                ..Default::default()
            });
        }
        Ok(Repository {
            namespace: namespace.to_string(),
            phase: RepositoryPhase::Ready as i32,
            ..Default::default()
        })
    }

    async fn repository_access(&self, namespace: &str) -> Result<RepositoryAccess> {
        Ok(RepositoryAccess {
            url: format!("fake:/restic/{namespace}"),
            ..Default::default()
        })
    }

    async fn acquire_lease(&self, request: AcquireLeaseRequest) -> Result<Option<String>> {
        let id = {
            let mut next = lock(&self.next);
            *next += 1;
            format!("lease-{next}")
        };
        let ttl = request.ttl.unwrap_or_default();
        lock(&self.ttls).push(Duration::from_secs(ttl.seconds as u64));
        lock(&self.calls).push(format!(
            "acquire {} {} {id}",
            request.namespace, request.holder
        ));
        lock(&self.held).insert(id.clone());
        Ok(Some(id))
    }

    async fn renew_lease(&self, lease_id: &str, _ttl: Duration) -> Result<()> {
        lock(&self.calls).push(format!("renew {lease_id}"));
        if lock(&self.held).contains(lease_id) {
            Ok(())
        } else {
            Err(Error::Rpc {
                service: "repo-manager",
                action: format!("renewing lease {lease_id}"),
                status: tonic::Status::not_found(format!("lease {lease_id} not found")),
            })
        }
    }

    async fn release_lease(&self, lease_id: &str) -> Result<bool> {
        lock(&self.calls).push(format!("release {lease_id}"));
        Ok(lock(&self.held).remove(lease_id))
    }

    async fn forget_backup(&self, namespace: &str, backup_name: &str) -> Result<Vec<String>> {
        lock(&self.calls).push(format!("forget {namespace} {backup_name}"));
        Ok(vec![format!("snap-{namespace}")])
    }

    async fn list_repositories(
        &self,
        _request: ListRepositoriesRequest,
    ) -> Result<ListRepositoriesResponse> {
        Ok(ListRepositoriesResponse::default())
    }

    async fn run_maintenance(&self, _request: RunMaintenanceRequest) -> Result<MaintenanceResult> {
        Ok(MaintenanceResult::default())
    }

    async fn list_snapshot_files(
        &self,
        request: stowage_proto::v1::ListSnapshotFilesRequest,
    ) -> Result<crate::ports::FileBatches> {
        lock(&self.calls).push(format!(
            "ls {} {} {} {}",
            request.namespace, request.snapshot_id, request.path, request.recursive
        ));
        let files = lock(&self.snapshot_files)
            .get(&request.snapshot_id)
            .cloned()
            .unwrap_or_default();
        let batches: Vec<Result<Vec<_>>> = files.chunks(2).map(|c| Ok(c.to_vec())).collect();
        Ok(Box::pin(futures::stream::iter(batches)))
    }
}

/// What the fake agent does with one volume.
#[derive(Debug, Clone)]
pub enum Script {
    /// `steps` progress events `every` apart (bytes moving each time), then the result.
    Complete { steps: u64, every: Duration },
    /// One progress event, then silence until the stream is dropped (restic hangs).
    StallAfterFirst,
    /// The stream ends with an error after one progress event.
    Fail(String),
    /// Queued in the agent for `wait`, then completes like `Complete { steps: 1, .. }`.
    QueuedFor(Duration),
    /// Panics inside the agent call.
    Panic,
}

/// The fake agents: a script per volume name (default: complete at once), a count of the
/// operations running per node and the most ever seen, the operations cancelled and the
/// volumes abandoned.
#[derive(Default)]
pub struct FakeAgents {
    pub scripts: Mutex<BTreeMap<String, Script>>,
    running: Arc<Mutex<BTreeMap<String, usize>>>,
    pub most_at_once: Arc<Mutex<BTreeMap<String, usize>>>,
    pub most_overall: Arc<Mutex<usize>>,
    pub cancelled: Mutex<Vec<String>>,
    pub abandoned: Mutex<Vec<AbandonRestoreRequest>>,
    pub started: Mutex<Vec<String>>,
    /// Every restore request, in order.
    pub restore_requests: Mutex<Vec<RestoreVolumeRequest>>,
    /// `restic <volume>` for each backup started (see [`FakeCluster::timeline`]).
    pub timeline: Arc<Mutex<Vec<String>>>,
    /// Operations an agent still has from a previous orchestrator, by operation id: attaching
    /// plays the script (its result's snapshot is `snap-kept`).
    pub kept: Mutex<BTreeMap<String, Script>>,
    /// `attach <node> <operation id>` for each attach that found its operation.
    pub attached: Mutex<Vec<String>>,
}

impl FakeAgents {
    pub fn script(&self, volume: &str, script: Script) {
        lock(&self.scripts).insert(volume.to_string(), script);
    }

    fn script_of(&self, volume: &str) -> Script {
        lock(&self.scripts)
            .get(volume)
            .cloned()
            .unwrap_or(Script::Complete {
                steps: 1,
                every: Duration::from_secs(1),
            })
    }

    /// Counts the operation as running on `node` until the returned guard is dropped.
    fn enter(&self, node: &str) -> Running {
        let mut running = lock(&self.running);
        let count = running.entry(node.to_string()).or_default();
        *count += 1;
        let mut most = lock(&self.most_at_once);
        let seen = most.entry(node.to_string()).or_default();
        *seen = (*seen).max(*count);
        let total: usize = running.values().sum();
        let mut overall = lock(&self.most_overall);
        *overall = (*overall).max(total);
        Running {
            node: node.to_string(),
            running: self.running.clone(),
        }
    }

    pub fn abandoned_volumes(&self) -> Vec<(String, String)> {
        lock(&self.abandoned)
            .iter()
            .map(|request| {
                (
                    request
                        .volume
                        .as_ref()
                        .map(|v| v.volume_name.clone())
                        .unwrap_or_default(),
                    request.reason.clone(),
                )
            })
            .collect()
    }
}

struct Running {
    node: String,
    running: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(count) = lock(&self.running).get_mut(&self.node) {
            *count -= 1;
        }
    }
}

/// One step of a scripted stream.
enum Step {
    Queued,
    Progress(u64, u64),
    Done,
    Fail(String),
    Hang,
}

fn steps_of(script: &Script) -> (Vec<(Duration, Step)>, bool) {
    const TOTAL: u64 = 100;
    match script {
        Script::Complete { steps, every } => {
            let mut out: Vec<(Duration, Step)> = (1..=*steps)
                .map(|n| (*every, Step::Progress(n * TOTAL / steps, TOTAL)))
                .collect();
            out.push((Duration::ZERO, Step::Done));
            (out, false)
        }
        Script::StallAfterFirst => (
            vec![
                (Duration::ZERO, Step::Progress(40, TOTAL)),
                (Duration::ZERO, Step::Hang),
            ],
            false,
        ),
        Script::Fail(message) => (
            vec![
                (Duration::ZERO, Step::Progress(10, TOTAL)),
                (Duration::ZERO, Step::Fail(message.clone())),
            ],
            false,
        ),
        Script::QueuedFor(wait) => (
            vec![
                (Duration::ZERO, Step::Queued),
                (*wait, Step::Progress(TOTAL, TOTAL)),
                (Duration::ZERO, Step::Done),
            ],
            false,
        ),
        Script::Panic => (Vec::new(), true),
    }
}

/// A stream playing `script`, holding `running` until dropped; `wrap` builds each event.
fn play<T: Send + 'static>(
    script: Script,
    running: Running,
    wrap: fn(Step) -> Option<T>,
) -> AgentEvents<T> {
    let (steps, panics) = steps_of(&script);
    if panics {
        panic!("the fake agent was told to panic");
    }
    let stream = futures::stream::unfold(
        (steps.into_iter(), running),
        move |(mut steps, running)| async move {
            let (wait, step) = steps.next()?;
            tokio::time::sleep(wait).await;
            match step {
                Step::Hang => {
                    std::future::pending::<()>().await;
                    None
                }
                Step::Fail(message) => Some((Err(Error::Failed(message)), (steps, running))),
                step => wrap(step).map(|event| (Ok(event), (steps, running))),
            }
        },
    );
    Box::pin(stream.fuse())
}

fn progress(done: u64, total: u64) -> Progress {
    Progress {
        bytes_done: done,
        bytes_total: total,
        files_done: done / 10,
        files_total: total / 10,
        seconds_elapsed: 0.0,
    }
}

/// A kept backup's event for `step`, its result naming `snapshot`.
fn backup_event(step: Step, snapshot: &str) -> Option<BackupVolumeEvent> {
    let event = match step {
        Step::Queued => backup_volume_event::Event::Queued(Queued::default()),
        Step::Progress(done, total) => backup_volume_event::Event::Progress(progress(done, total)),
        Step::Done => backup_volume_event::Event::Result(BackupVolumeResult {
            snapshot_id: snapshot.into(),
            bytes_total: 100,
            ..Default::default()
        }),
        Step::Fail(_) | Step::Hang => return None,
    };
    Some(BackupVolumeEvent { event: Some(event) })
}

/// A kept restore's event for `step`, its result naming `snapshot`.
fn restore_event(step: Step, snapshot: &str) -> Option<RestoreVolumeEvent> {
    let event = match step {
        Step::Queued => restore_volume_event::Event::Queued(Queued::default()),
        Step::Progress(done, total) => restore_volume_event::Event::Progress(progress(done, total)),
        Step::Done => restore_volume_event::Event::Result(RestoreVolumeResult {
            snapshot_id: snapshot.into(),
            bytes_restored: 100,
            ..Default::default()
        }),
        Step::Fail(_) | Step::Hang => return None,
    };
    Some(RestoreVolumeEvent { event: Some(event) })
}

impl FakeAgents {
    /// The script of an operation the agent still has, taken (an attach finds it once), and
    /// the attach recorded.
    fn take_kept(&self, node: &str, operation_id: &str) -> Option<(Script, Running)> {
        let script = lock(&self.kept).remove(operation_id)?;
        lock(&self.attached).push(format!("attach {node} {operation_id}"));
        Some((script, self.enter(node)))
    }
}

#[tonic::async_trait]
impl AgentsPort for FakeAgents {
    async fn backup_volume(
        &self,
        node: &str,
        request: BackupVolumeRequest,
    ) -> Result<AgentEvents<BackupVolumeEvent>> {
        let volume = request.volume.clone().unwrap_or_default().volume_name;
        lock(&self.started).push(format!("backup {node} {volume}"));
        lock(&self.timeline).push(format!("restic {volume}"));
        let running = self.enter(node);
        Ok(play(self.script_of(&volume), running, |step| {
            let event = match step {
                Step::Queued => backup_volume_event::Event::Queued(Queued::default()),
                Step::Progress(done, total) => {
                    backup_volume_event::Event::Progress(progress(done, total))
                }
                Step::Done => backup_volume_event::Event::Result(BackupVolumeResult {
                    snapshot_id: "snap-1".into(),
                    bytes_total: 100,
                    ..Default::default()
                }),
                Step::Fail(_) | Step::Hang => return None,
            };
            Some(BackupVolumeEvent { event: Some(event) })
        }))
    }

    async fn restore_volume(
        &self,
        node: &str,
        request: RestoreVolumeRequest,
    ) -> Result<AgentEvents<RestoreVolumeEvent>> {
        let volume = request.volume.clone().unwrap_or_default().volume_name;
        lock(&self.started).push(format!("restore {node} {volume}"));
        lock(&self.restore_requests).push(request);
        let running = self.enter(node);
        Ok(play(self.script_of(&volume), running, |step| {
            let event = match step {
                Step::Queued => restore_volume_event::Event::Queued(Queued::default()),
                Step::Progress(done, total) => {
                    restore_volume_event::Event::Progress(progress(done, total))
                }
                Step::Done => restore_volume_event::Event::Result(RestoreVolumeResult {
                    snapshot_id: "snap-1".into(),
                    bytes_restored: 100,
                    ..Default::default()
                }),
                Step::Fail(_) | Step::Hang => return None,
            };
            Some(RestoreVolumeEvent { event: Some(event) })
        }))
    }

    async fn attach_backup(
        &self,
        node: &str,
        operation_id: &str,
    ) -> Result<Option<AgentEvents<BackupVolumeEvent>>> {
        Ok(self
            .take_kept(node, operation_id)
            .map(|(script, running)| play(script, running, |step| backup_event(step, "snap-kept"))))
    }

    async fn attach_restore(
        &self,
        node: &str,
        operation_id: &str,
    ) -> Result<Option<AgentEvents<RestoreVolumeEvent>>> {
        Ok(self.take_kept(node, operation_id).map(|(script, running)| {
            play(script, running, |step| restore_event(step, "snap-kept"))
        }))
    }

    async fn cancel_operation(&self, _node: &str, operation_id: &str) -> Result<()> {
        lock(&self.cancelled).push(operation_id.to_string());
        Ok(())
    }

    async fn abandon_restore(&self, _node: &str, request: AbandonRestoreRequest) -> Result<bool> {
        lock(&self.abandoned).push(request);
        Ok(true)
    }
}

/// The fake record store.
#[derive(Default)]
pub struct FakeStore {
    pub backups: Mutex<BTreeMap<String, (Backup, Vec<LogLine>)>>,
    pub resources: Mutex<BTreeMap<String, Vec<Value>>>,
    pub restores: Mutex<BTreeMap<String, (Restore, Vec<LogLine>)>>,
}

#[tonic::async_trait]
impl RecordStore for FakeStore {
    async fn put_backup(
        &self,
        backup: &Backup,
        logs: &[LogLine],
        resources: Option<&BackupResources>,
    ) -> Result<()> {
        lock(&self.backups).insert(backup.name.clone(), (backup.clone(), logs.to_vec()));
        if let Some(resources) = resources {
            let objects = resources.objects.values().cloned().collect();
            lock(&self.resources).insert(backup.name.clone(), objects);
        }
        Ok(())
    }

    async fn list_backups_except(
        &self,
        known: &BTreeSet<String>,
    ) -> Result<Vec<(Backup, Vec<LogLine>)>> {
        Ok(lock(&self.backups)
            .iter()
            .filter(|(name, _)| !known.contains(*name))
            .map(|(_, backup)| backup.clone())
            .collect())
    }

    /// The manifests of `resources`, each under the resource its kind names.
    async fn backup_tarball(&self, name: &str) -> Result<BackupResources> {
        let mut tarball = BackupResources::new();
        for object in lock(&self.resources).get(name).cloned().unwrap_or_default() {
            tarball
                .insert_object(object)
                .map_err(|error| Error::Failed(error.to_string()))?;
        }
        Ok(tarball)
    }

    async fn delete_backup(&self, name: &str) -> Result<()> {
        lock(&self.backups).remove(name);
        lock(&self.resources).remove(name);
        Ok(())
    }

    async fn repository_exists(&self, _namespace: &str) -> Result<bool> {
        Ok(true)
    }

    async fn put_restore(&self, restore: &Restore, logs: &[LogLine]) -> Result<()> {
        lock(&self.restores).insert(restore.name.clone(), (restore.clone(), logs.to_vec()));
        Ok(())
    }

    async fn list_restores(&self) -> Result<Vec<Restore>> {
        Ok(lock(&self.restores)
            .values()
            .map(|(restore, _)| restore.clone())
            .collect())
    }

    async fn get_restore(&self, name: &str) -> Result<Option<Restore>> {
        Ok(lock(&self.restores).get(name).map(|(r, _)| r.clone()))
    }

    async fn restore_logs(&self, name: &str) -> Result<Vec<LogLine>> {
        Ok(lock(&self.restores)
            .get(name)
            .map(|(_, logs)| logs.clone())
            .unwrap_or_default())
    }
}

/// The fake schedule store: records by name.
#[derive(Default)]
pub struct FakeScheduleStore {
    pub records: Mutex<BTreeMap<String, stowage_velero_format::ScheduleRecord>>,
}

#[tonic::async_trait]
impl crate::schedules::ScheduleStore for FakeScheduleStore {
    async fn put_schedule(&self, record: &stowage_velero_format::ScheduleRecord) -> Result<()> {
        lock(&self.records).insert(record.name().to_string(), record.clone());
        Ok(())
    }

    async fn list_schedules(&self) -> Result<Vec<stowage_velero_format::ScheduleRecord>> {
        Ok(lock(&self.records).values().cloned().collect())
    }

    async fn delete_schedule(&self, name: &str) -> Result<()> {
        lock(&self.records).remove(name);
        Ok(())
    }
}

/// A wall clock that moves with tokio's (paused) time, from 2026-01-01T00:00:00Z.
pub struct PausedClock {
    base: chrono::DateTime<chrono::Utc>,
    start: tokio::time::Instant,
}

impl PausedClock {
    pub fn new() -> PausedClock {
        PausedClock {
            base: chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
                .expect("a fixed time")
                .with_timezone(&chrono::Utc),
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for PausedClock {
    fn default() -> Self {
        PausedClock::new()
    }
}

impl crate::schedules::Clock for PausedClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.base + chrono::Duration::from_std(self.start.elapsed()).expect("a test's elapsed time")
    }
}

/// The four fakes and the deps wired over them.
pub struct World {
    pub cluster: Arc<FakeCluster>,
    pub repo_manager: Arc<FakeRepoManager>,
    pub agents: Arc<FakeAgents>,
    pub store: Arc<FakeStore>,
    pub schedule_store: Arc<FakeScheduleStore>,
    pub deps: Deps,
}

pub fn limits() -> Limits {
    Limits {
        max_parallel_volumes: 16,
        max_parallel_per_node: 2,
        default_timeout: Duration::from_secs(4 * 3600),
        default_ttl: Duration::from_secs(30 * 24 * 3600),
        repository_ready_timeout: Duration::from_secs(300),
        pod_start_timeout: Duration::from_secs(600),
        poll_interval: Duration::from_secs(1),
        stall_timeout: Duration::from_secs(600),
        lease_ttl: Duration::from_secs(60),
        list_page_size: 500,
    }
}

impl World {
    pub fn new(limits: Limits) -> World {
        let timeline = Arc::new(Mutex::new(Vec::new()));
        let cluster = Arc::new(FakeCluster {
            timeline: timeline.clone(),
            ..Default::default()
        });
        let repo_manager = Arc::new(FakeRepoManager::default());
        let agents = Arc::new(FakeAgents {
            timeline,
            ..Default::default()
        });
        let store = Arc::new(FakeStore::default());
        let schedule_store = Arc::new(FakeScheduleStore::default());
        let deps = Deps {
            repo_manager: repo_manager.clone(),
            agents: agents.clone(),
            cluster: Some(cluster.clone()),
            store: Some(store.clone()),
            index: Arc::new(Index::default()),
            limits,
            restore_helper: RestoreHelperDefaults {
                image: "helper".into(),
            },
            schedules: Arc::new(crate::schedules::Book::new(
                Some(schedule_store.clone()),
                Arc::new(PausedClock::new()),
            )),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        };
        World {
            cluster,
            repo_manager,
            agents,
            store,
            schedule_store,
            deps,
        }
    }

    /// Waits until every runner task has ended.
    pub async fn settle(&self) {
        self.deps.tasks.close();
        self.deps.tasks.wait().await;
        self.deps.tasks.reopen();
    }
}
