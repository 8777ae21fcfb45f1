//! A highly available stowage stack for end-to-end tests: the Kubernetes API emulator, a local
//! storage location, one volume agent per node (each with its own fake kubelet pods directory),
//! and two (or more) replicas each of the orchestrator and the repo-manager, electing their
//! leaders through Leases with short timings. Each replica can be stopped (SIGTERM), killed
//! (SIGKILL), paused (SIGSTOP/SIGCONT) and started again under its identity. Each replica has
//! a Pod object in the emulator (named by its identity, in namespace `stowage`, as POD_NAME
//! and POD_NAMESPACE say), on which the leader sets its label; a [`Service`] forwards every
//! new connection to the replica whose Pod carries the label and whose process-wide health
//! answers, as a Kubernetes Service selecting the label sends it to a ready endpoint, so
//! clients, the orchestrators (to the repo-manager) and the CLI reach whichever replica leads.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Pod};
use kube::Api;
use stowage_grpc::TracedChannel;
use stowage_leader::LEADER_LABEL;
use stowage_proto::v1::{
    orchestrator_client::OrchestratorClient, repo_manager_client::RepoManagerClient,
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle, time::Instant};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    ServiceProcess, TestProcess, binary, free_port, health_status, kube::KubeEmulator,
    kubelet::FakeKubelet, start_service,
};

const MASTER_KEY: &str = "master-key-for-the-ha-stack";

/// The orchestrator's gRPC service, whose health is SERVING on the leader alone.
pub const ORCHESTRATOR: &str = "stowage.v1.Orchestrator";
/// The repo-manager's gRPC service, whose health is SERVING on the leader alone.
pub const REPO_MANAGER: &str = "stowage.v1.RepoManager";
/// The orchestrators' Lease in namespace `stowage`.
pub const ORCHESTRATOR_LEASE: &str = "stowage-orchestrator";
/// The repo-managers' Lease in namespace `stowage`.
pub const REPO_MANAGER_LEASE: &str = "stowage-repo-manager";

/// The exit code of a replica that lost its leadership (its Lease renewal failed).
pub const LOST_LEADERSHIP: i32 = 3;

/// The leader election's timings, in seconds (lease duration, renew deadline, retry period).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Election {
    pub lease_duration: u32,
    pub renew_deadline: u32,
    pub retry_period: u32,
}

impl Election {
    /// Short timings, so that a takeover takes seconds; their order is the one the flags
    /// require (lease > renew deadline > 1.2 retry periods).
    pub const SHORT: Election = Election {
        lease_duration: 4,
        renew_deadline: 3,
        retry_period: 1,
    };
    /// The binaries' defaults (client-go's).
    pub const DEFAULT: Election = Election {
        lease_duration: 15,
        renew_deadline: 10,
        retry_period: 2,
    };

    /// The election flags of replica `identity`.
    pub fn args(&self, identity: &str) -> Vec<String> {
        [
            "--leader-elect",
            "true",
            "--leader-elect-lease-duration-seconds",
            &self.lease_duration.to_string(),
            "--leader-elect-renew-deadline-seconds",
            &self.renew_deadline.to_string(),
            "--leader-elect-retry-period-seconds",
            &self.retry_period.to_string(),
            "--leader-elect-namespace",
            "stowage",
            "--leader-elect-identity",
            identity,
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect()
    }
}

/// One replica of a service with leader election: its identity (the pod name), the port it
/// keeps across restarts, and its process while it runs.
pub struct Replica {
    pub identity: String,
    binary_name: String,
    /// Every flag but `--listen`.
    args: Vec<String>,
    env: BTreeMap<String, String>,
    logs: PathBuf,
    pub port: u16,
    /// `http://127.0.0.1:<port>`
    pub url: String,
    /// The process of its latest start; `None` before the first.
    pub process: Option<TestProcess>,
    starts: u32,
    /// Stopped with SIGSTOP and not continued yet.
    paused: AtomicBool,
}

impl Replica {
    /// A replica of workspace binary `binary_name` on a free port, not started yet.
    pub fn new(
        binary_name: &str,
        identity: &str,
        args: Vec<String>,
        env: BTreeMap<String, String>,
        logs: &Path,
    ) -> Replica {
        let port = free_port();
        Replica {
            identity: identity.to_string(),
            binary_name: binary_name.to_string(),
            args,
            env,
            logs: logs.to_path_buf(),
            port,
            url: format!("http://127.0.0.1:{port}"),
            process: None,
            starts: 0,
            paused: AtomicBool::new(false),
        }
    }

    /// Starts the process (again, after a stop or kill: same identity, port, flags and
    /// environment, as a restarted container); returns without waiting for it to serve. Its
    /// log is `<identity>.log`, then `<identity>-2.log`, …
    pub fn start(&mut self) {
        assert!(!self.is_running(), "{} is already running", self.identity);
        self.starts += 1;
        self.paused.store(false, Ordering::SeqCst);
        let log_name = match self.starts {
            1 => self.identity.clone(),
            n => format!("{}-{n}", self.identity),
        };
        let mut args = vec!["--listen".to_string(), format!("127.0.0.1:{}", self.port)];
        args.extend(self.args.iter().cloned());
        self.process = Some(TestProcess::start(
            &log_name,
            binary(&self.binary_name),
            &args,
            &self.env,
            &self.logs,
        ));
    }

    /// Whether its process runs (or is paused).
    pub fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|process| matches!(process.child.try_wait(), Ok(None)))
    }

    /// The exit status of a process that ended by itself, if it did.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.process
            .as_mut()
            .and_then(|process| process.child.try_wait().ok().flatten())
    }

    /// SIGKILL, as a crash, an OOM kill or the loss of its node would.
    pub fn kill(&mut self) {
        if let Some(process) = self.process.as_mut() {
            // A paused process dies of SIGKILL too.
            process.kill();
        }
    }

    /// SIGTERM, as Kubernetes stops a pod (a rolling update, a drain), waiting up to `grace`
    /// for the exit before a SIGKILL; returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let process = self.process.as_mut()?;
        process.stop(grace);
        process.child.try_wait().ok().flatten()
    }

    /// SIGSTOP: the process keeps its sockets and state but runs nothing, no timer included,
    /// as a frozen VM or a stalled node. Its health checks time out, as a kubelet's probes
    /// would, and [`Replicas::one_leader`] leaves it out until [`Replica::resume`].
    pub fn pause(&self) {
        self.signal("STOP");
        self.paused.store(true, Ordering::SeqCst);
    }

    /// SIGCONT after [`Replica::pause`].
    pub fn resume(&self) {
        self.signal("CONT");
        self.paused.store(false, Ordering::SeqCst);
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    fn signal(&self, name: &str) {
        let process = self.process.as_ref().expect("a started replica");
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), process.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{name} {} failed", process.pid());
    }

    /// What all its processes have written so far, oldest start first.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                let name = match n {
                    1 => self.identity.clone(),
                    n => format!("{}-{n}", self.identity),
                };
                std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n--- started again:\n")
    }

    /// Its process-wide health (liveness and readiness) and its service's (SERVING on the
    /// leader alone); `Err` when it does not answer within [`PROBE_TIMEOUT`].
    pub async fn health(&self, service: &str) -> (HealthAnswer, HealthAnswer) {
        (probe(&self.url, "").await, probe(&self.url, service).await)
    }
}

/// One health check's answer.
pub type HealthAnswer = Result<ServingStatus, String>;

/// How long a health check may take, as a probe's `timeoutSeconds`: a paused process accepts
/// connections (the kernel does) but never answers.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One health check of `service` at `url`, given up after [`PROBE_TIMEOUT`].
pub async fn probe(url: &str, service: &str) -> HealthAnswer {
    tokio::time::timeout(PROBE_TIMEOUT, health_status(url, service))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {PROBE_TIMEOUT:?}")))
}

/// The replicas of one service: the orchestrators or the repo-managers.
pub struct Replicas {
    pub service: &'static str,
    pub lease: &'static str,
    pub replicas: Vec<Replica>,
    /// The identity of the replica the service's [`Service`] routes to, if any.
    pub routed: watch::Receiver<Option<String>>,
}

impl Replicas {
    pub fn get(&self, identity: &str) -> &Replica {
        self.replicas
            .iter()
            .find(|replica| replica.identity == identity)
            .unwrap_or_else(|| panic!("no replica {identity}"))
    }

    pub fn get_mut(&mut self, identity: &str) -> &mut Replica {
        self.replicas
            .iter_mut()
            .find(|replica| replica.identity == identity)
            .unwrap_or_else(|| panic!("no replica {identity}"))
    }

    /// Every replica's log, each under its identity.
    pub fn logs(&self) -> String {
        self.replicas
            .iter()
            .map(|replica| format!("=== {}:\n{}\n", replica.identity, replica.log()))
            .collect()
    }

    /// Waits until exactly one running replica reports its service SERVING while every other
    /// running one is live and NOT_SERVING (a standby), and the Service routes to it (its Pod
    /// carries the leader label); returns the leader's identity.
    /// Paused replicas are left out. Panics after `within`, when two are ready at once, or
    /// when a replica exits by itself (other than out of its leadership).
    pub async fn one_leader(&mut self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let mut last = Vec::new();
            for replica in &mut self.replicas {
                if replica.process.is_none() || replica.is_paused() {
                    continue;
                }
                if let Some(status) = replica.exited() {
                    // Killed or stopped by the test (a signal, or 0 after SIGTERM), or out of
                    // its leadership (3, a paused leader woken up): not a candidate. Any other
                    // exit is a failure.
                    if !matches!(status.code(), None | Some(0) | Some(LOST_LEADERSHIP)) {
                        panic!(
                            "{} exited with {status}; log:\n{}",
                            replica.identity,
                            replica.log()
                        );
                    }
                    continue;
                }
                let (live, ready) = replica.health(self.service).await;
                last.push((replica.identity.clone(), live, ready));
            }
            let serving: Vec<&String> = last
                .iter()
                .filter(|(_, _, ready)| *ready == Ok(ServingStatus::Serving))
                .map(|(identity, _, _)| identity)
                .collect();
            assert!(
                serving.len() <= 1,
                "two replicas of {} ready at once: {last:?}\n{}",
                self.service,
                self.logs()
            );
            let standbys_ok = last.iter().all(|(identity, live, ready)| {
                serving.contains(&identity)
                    || (*live == Ok(ServingStatus::Serving)
                        && *ready == Ok(ServingStatus::NotServing))
            });
            let routed = self.routed.borrow().clone();
            if serving.len() == 1 && standbys_ok && routed.as_ref() == Some(serving[0]) {
                return serving[0].clone();
            }
            assert!(
                Instant::now() < deadline,
                "no single leader of {} routed to within {within:?}: {last:?}, the Service routes \
                 to {routed:?}\n{}",
                self.service,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `identity` is ready as the kubelet's readiness probe sees it: its
    /// process-wide health SERVING, whether it leads or stands by. A Deployment controller's
    /// rolling update waits for this before it stops an old pod. Panics after `within`.
    pub async fn wait_ready(&mut self, identity: &str, within: Duration) {
        let service = self.service;
        let deadline = Instant::now() + within;
        loop {
            let replica = self.get_mut(identity);
            if let Some(status) = replica.exited() {
                panic!("{identity} exited with {status}; log:\n{}", replica.log());
            }
            let health = replica.health(service).await;
            if health.0 == Ok(ServingStatus::Serving) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{identity} of {service} is not ready within {within:?}: {health:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The holder of Lease `lease` in namespace `stowage`, if any.
pub async fn holder(kube: &kube::Client, lease: &str) -> Option<String> {
    Api::<Lease>::namespaced(kube.clone(), "stowage")
        .get_opt(lease)
        .await
        .expect("reading a Lease")?
        .spec?
        .holder_identity
}

/// The leader label's value on Pod `stowage/<identity>` in the emulator, if it carries it.
pub async fn leader_label(kube: &kube::Client, identity: &str) -> Option<String> {
    Api::<Pod>::namespaced(kube.clone(), "stowage")
        .get(identity)
        .await
        .unwrap_or_else(|error| panic!("reading Pod stowage/{identity}: {error}"))
        .metadata
        .labels?
        .remove(LEADER_LABEL)
}

/// How often a [`Service`] looks at its endpoints (the leader label, the process-wide health).
const ENDPOINTS_EVERY: Duration = Duration::from_millis(200);

/// A TCP forwarder on a loopback port, as a Kubernetes Service selecting the leader label: its
/// endpoint is the first replica whose Pod in the emulator carries `stowage.io/leader: "true"`
/// and whose process-wide health answers SERVING (the readiness probe), looked at every
/// [`ENDPOINTS_EVERY`]. Each new connection goes to the endpoint of that moment. With no
/// endpoint the port is closed, so connections are refused (as kube-proxy rejects them for a
/// Service without endpoints), and bound again once there is one. Connections already
/// forwarded stay with their replica until either side closes them.
pub struct Service {
    /// `http://127.0.0.1:<port>`
    pub url: String,
    /// (identity, URL) of each replica.
    backends: Arc<Mutex<Vec<(String, String)>>>,
    routed: watch::Receiver<Option<String>>,
    task: JoinHandle<()>,
}

impl Service {
    /// A Service over the replicas added with [`Service::add_backend`], reading their Pods
    /// through `kube`.
    pub async fn start(kube: kube::Client) -> Service {
        let first = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port for the Service");
        let address = first.local_addr().expect("the Service's address");
        let url = format!("http://{address}");
        let backends: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let (route, routed) = watch::channel(None);
        let pods: Api<Pod> = Api::namespaced(kube, "stowage");
        let task = tokio::spawn({
            let backends = backends.clone();
            async move {
                // Bound while there is an endpoint (none yet: closed until one is found).
                drop(first);
                let mut listener: Option<TcpListener> = None;
                let mut endpoint: Option<String> = None;
                // The forwarded connections: aborted with the Service (a JoinSet aborts its
                // tasks when dropped), reaped as they end.
                let mut connections = tokio::task::JoinSet::new();
                let mut look = tokio::time::interval(ENDPOINTS_EVERY);
                look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    while connections.try_join_next().is_some() {}
                    tokio::select! {
                        accepted = async { listener.as_ref().expect("listening").accept().await }, if listener.is_some() => {
                            let Ok((mut inbound, _)) = accepted else { continue };
                            let Some(backend) = endpoint.clone() else { continue };
                            connections.spawn(async move {
                                let address = backend.trim_start_matches("http://").to_string();
                                let Ok(mut outbound) = tokio::net::TcpStream::connect(address).await
                                else {
                                    return;
                                };
                                // Either side closing ends the forwarding; its error is the end.
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            });
                        }
                        _ = look.tick() => {
                            let candidates = backends.lock().unwrap().clone();
                            let found = endpoint_of(&pods, &candidates).await;
                            endpoint = found.as_ref().map(|(_, url)| url.clone());
                            route.send_if_modified(|routed| {
                                let now = found.map(|(identity, _)| identity);
                                let changed = *routed != now;
                                *routed = now;
                                changed
                            });
                            match (&endpoint, &listener) {
                                (None, Some(_)) => listener = None,
                                (Some(_), None) => {
                                    // The same port again (tokio sets SO_REUSEADDR); should it
                                    // fail, the next look tries again.
                                    listener = TcpListener::bind(address).await.ok();
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
        });
        Service {
            url,
            backends,
            routed,
            task,
        }
    }

    /// Adds replica `identity` at `url` (a new pod of the Deployment) as a possible endpoint.
    pub fn add_backend(&self, identity: &str, url: &str) {
        self.backends
            .lock()
            .unwrap()
            .push((identity.to_string(), url.to_string()));
    }

    /// The identity of the replica this Service routes to, as it changes.
    pub fn routed(&self) -> watch::Receiver<Option<String>> {
        self.routed.clone()
    }
}

/// The first of `candidates` (identity, URL) whose Pod carries the leader label and whose
/// process-wide health answers SERVING.
async fn endpoint_of(pods: &Api<Pod>, candidates: &[(String, String)]) -> Option<(String, String)> {
    for (identity, url) in candidates {
        let labelled = match pods.get_opt(identity).await {
            Ok(pod) => pod
                .and_then(|pod| pod.metadata.labels)
                .and_then(|labels| labels.get(LEADER_LABEL).cloned())
                .is_some_and(|value| value == "true"),
            Err(_) => false,
        };
        if labelled && probe(url, "").await == Ok(ServingStatus::Serving) {
            return Some((identity.clone(), url.clone()));
        }
    }
    None
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct HaOptions {
    /// Nodes that run a volume agent.
    pub agent_nodes: Vec<String>,
    /// Identities of the orchestrator replicas started at first (none: a test of the
    /// repo-managers alone).
    pub orchestrators: Vec<String>,
    /// Identities of the repo-manager replicas started at first.
    pub repo_managers: Vec<String>,
    pub election: Election,
    /// Extra flags of every orchestrator.
    pub orchestrator_args: Vec<String>,
    /// Extra flags of every repo-manager (`--restic-binary`, `--scheduler-tick`…).
    pub repo_manager_args: Vec<String>,
    /// Extra flags of every volume agent (`--restic-binary` for [`crate::stack::slow_restic`]).
    pub agent_args: Vec<String>,
}

impl Default for HaOptions {
    fn default() -> Self {
        HaOptions {
            agent_nodes: vec!["node-a".to_string()],
            orchestrators: vec!["orchestrator-a".to_string(), "orchestrator-b".to_string()],
            repo_managers: vec!["repo-manager-a".to_string(), "repo-manager-b".to_string()],
            election: Election::SHORT,
            orchestrator_args: Vec::new(),
            repo_manager_args: Vec::new(),
            agent_args: Vec::new(),
        }
    }
}

/// How long [`HaStack::start`] waits for each service's first leader.
pub const FIRST_LEADER_WITHIN: Duration = Duration::from_secs(30);

pub struct HaStack {
    // Processes first: they stop (on drop) before the directories they use are removed.
    pub orchestrators: Replicas,
    pub repo_managers: Replicas,
    /// The orchestrators' Service (what the CLI and schedulers call).
    pub orchestrator_service: Service,
    /// The repo-managers' Service (what the orchestrators call).
    pub repo_manager_service: Service,
    pub agents: BTreeMap<String, ServiceProcess>,
    pub kube: KubeEmulator,
    pub kubelets: BTreeMap<String, FakeKubelet>,
    /// The storage location (a local directory).
    pub storage: PathBuf,
    pub options: HaOptions,
    pub dir: tempfile::TempDir,
}

impl HaStack {
    /// Starts everything and waits until each service has one leader and its other replicas
    /// stand by.
    pub async fn start(options: HaOptions) -> HaStack {
        let dir = tempfile::tempdir().expect("a temp dir");
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).expect("creating the log dir");
        let storage = dir.path().join("bucket");
        std::fs::create_dir_all(&storage).expect("creating the storage dir");
        let kube = KubeEmulator::start(&logs).await;
        crate::kube::ensure_namespace(&kube.client().await, "stowage").await;

        let mut agents = BTreeMap::new();
        let mut kubelets = BTreeMap::new();
        for node in &options.agent_nodes {
            let kubelet = FakeKubelet::new(dir.path().join("nodes").join(node).join("pods"));
            let mut args = vec![
                "--node-name".to_string(),
                node.clone(),
                "--pods-root".to_string(),
                kubelet.pods_root().display().to_string(),
                "--scratch-dir".to_string(),
                scratch(dir.path(), &format!("agent-{node}")),
            ];
            args.extend(options.agent_args.iter().cloned());
            let agent = start_service(
                "stowage-volume-agent",
                "stowage.v1.VolumeAgent",
                &args,
                &BTreeMap::new(),
                &logs,
            )
            .await;
            agents.insert(node.clone(), agent);
            kubelets.insert(node.clone(), kubelet);
        }

        let repo_manager_service = Service::start(kube.client().await).await;
        let orchestrator_service = Service::start(kube.client().await).await;
        let mut stack = HaStack {
            orchestrators: Replicas {
                service: ORCHESTRATOR,
                lease: ORCHESTRATOR_LEASE,
                replicas: Vec::new(),
                routed: orchestrator_service.routed(),
            },
            repo_managers: Replicas {
                service: REPO_MANAGER,
                lease: REPO_MANAGER_LEASE,
                replicas: Vec::new(),
                routed: repo_manager_service.routed(),
            },
            orchestrator_service,
            repo_manager_service,
            agents,
            kube,
            kubelets,
            storage,
            options: options.clone(),
            dir,
        };
        for identity in &options.repo_managers {
            stack.add_repo_manager(identity).await;
        }
        if !options.repo_managers.is_empty() {
            stack.repo_managers.one_leader(FIRST_LEADER_WITHIN).await;
        }
        for identity in &options.orchestrators {
            stack.add_orchestrator(identity).await;
        }
        if !options.orchestrators.is_empty() {
            stack.orchestrators.one_leader(FIRST_LEADER_WITHIN).await;
        }
        stack
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// Every service process's log, for a failing assertion's message.
    pub fn logs(&self) -> String {
        let agents: String = self
            .agents
            .iter()
            .map(|(node, agent)| format!("=== agent {node}:\n{}\n", agent.process.log()))
            .collect();
        format!(
            "{}{}{agents}",
            self.orchestrators.logs(),
            self.repo_managers.logs()
        )
    }

    /// Creates the Pod of replica `identity` of `app` in the emulator, as the Deployment's
    /// ReplicaSet would (before its container starts), without the leader label.
    async fn create_pod(&self, app: &str, identity: &str) {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": identity,
                "namespace": "stowage",
                "labels": {"app.kubernetes.io/name": app},
            },
            "spec": {"containers": [{"name": "server", "image": app}]},
        }))
        .expect("a Pod");
        Api::<Pod>::namespaced(self.kube_client().await, "stowage")
            .create(&Default::default(), &pod)
            .await
            .unwrap_or_else(|error| panic!("creating Pod stowage/{identity}: {error}"));
    }

    /// The environment of replica `identity`: the emulator's, and its Pod (the downward API).
    fn replica_env(&self, identity: &str) -> BTreeMap<String, String> {
        let mut env = self.kube.env();
        env.insert("POD_NAME".to_string(), identity.to_string());
        env.insert("POD_NAMESPACE".to_string(), "stowage".to_string());
        env
    }

    /// Starts a new repo-manager replica `identity` (a new pod of the Deployment: its Pod is
    /// created first) and makes it a possible endpoint of the repo-managers' Service; returns
    /// without waiting for it.
    pub async fn add_repo_manager(&mut self, identity: &str) {
        self.create_pod("stowage-repo-manager", identity).await;
        let mut args = self.options.election.args(identity);
        args.extend([
            "--storage-url".to_string(),
            format!("file://{}", self.storage.display()),
            "--scratch-dir".to_string(),
            scratch(self.dir.path(), identity),
        ]);
        args.extend(self.options.repo_manager_args.iter().cloned());
        let mut env = self.replica_env(identity);
        env.insert("STOWAGE_MASTER_KEY".to_string(), MASTER_KEY.to_string());
        let mut replica = Replica::new(
            "stowage-repo-manager",
            identity,
            args,
            env,
            &self.logs_dir(),
        );
        replica.start();
        self.repo_manager_service
            .add_backend(&replica.identity, &replica.url);
        self.repo_managers.replicas.push(replica);
    }

    /// Starts a new orchestrator replica `identity` (its Pod created first), which calls the
    /// repo-managers through their Service, and makes it a possible endpoint of the
    /// orchestrators' Service; returns without waiting for it.
    pub async fn add_orchestrator(&mut self, identity: &str) {
        self.create_pod("stowage-orchestrator", identity).await;
        let mut args = self.options.election.args(identity);
        args.extend([
            "--repo-manager".to_string(),
            self.repo_manager_service.url.clone(),
            "--storage-url".to_string(),
            format!("file://{}", self.storage.display()),
            "--poll-interval-ms".to_string(),
            "100".to_string(),
        ]);
        for (node, agent) in &self.agents {
            args.push("--agent".to_string());
            args.push(format!("{node}={}", agent.url));
        }
        args.extend(self.options.orchestrator_args.iter().cloned());
        let mut replica = Replica::new(
            "stowage-orchestrator",
            identity,
            args,
            self.replica_env(identity),
            &self.logs_dir(),
        );
        replica.start();
        self.orchestrator_service
            .add_backend(&replica.identity, &replica.url);
        self.orchestrators.replicas.push(replica);
    }

    pub async fn kube_client(&self) -> kube::Client {
        self.kube.client().await
    }

    /// A client of the orchestrators' Service (the replica it routes to when it connects).
    pub async fn client(&self) -> OrchestratorClient<TracedChannel> {
        OrchestratorClient::new(
            stowage_grpc::connect(&self.orchestrator_service.url)
                .await
                .expect("connecting to the orchestrators' Service"),
        )
    }

    /// A client of the repo-managers' Service.
    pub async fn repo_manager_client(&self) -> RepoManagerClient<TracedChannel> {
        RepoManagerClient::new(
            stowage_grpc::connect(&self.repo_manager_service.url)
                .await
                .expect("connecting to the repo-managers' Service"),
        )
    }

    /// Runs the `stowage` CLI against the orchestrators' Service with `args`, its own
    /// environment variables and config file kept out; returns its output.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut command = std::process::Command::new(binary("stowage"));
        for variable in [
            "STOWAGE_SERVER",
            "STOWAGE_OUTPUT",
            "STOWAGE_CACERT",
            "STOWAGE_TLS_SERVER_NAME",
            "STOWAGE_CERT",
            "STOWAGE_KEY",
            "STOWAGE_TOKEN_FILE",
            "STOWAGE_CONTEXT",
        ] {
            command.env_remove(variable);
        }
        command
            .env("STOWAGE_CONFIG", self.dir.path().join("no-cli-config.yaml"))
            .arg("--server")
            .arg(&self.orchestrator_service.url)
            .args(args)
            .output()
            .expect("running the stowage binary")
    }
}

fn scratch(root: &Path, name: &str) -> String {
    let path = root.join("scratch").join(name);
    std::fs::create_dir_all(&path).expect("creating a scratch dir");
    path.display().to_string()
}
