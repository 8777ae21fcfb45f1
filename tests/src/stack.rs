//! A whole stowage stack for end-to-end tests and the demo, launched in one place: the
//! Kubernetes API emulator, a local or S3 storage location, the repo-manager, one volume agent per
//! node (each with its own fake kubelet pods directory), and the orchestrator.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use stowage_grpc::TracedChannel;
use stowage_proto::v1::orchestrator_client::OrchestratorClient;

use crate::{
    ServiceProcess, kube::KubeEmulator, kubelet::FakeKubelet, s3::S3Server, start_service,
};

const MASTER_KEY: &str = "master-key-for-the-e2e-stack";

/// What to start.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Nodes that run a volume agent.
    pub agent_nodes: Vec<String>,
    /// Extra orchestrator flags.
    pub orchestrator_args: Vec<String>,
    /// Extra volume agent flags (every agent).
    pub agent_args: Vec<String>,
    /// Tell the orchestrator each agent's URL with `--agent NODE=URL`; when false it finds
    /// them through the Kubernetes API (the test seeds the agent pods).
    pub static_agents: bool,
    /// Use an S3-compatible server (moto) as the storage location instead of a directory.
    pub s3: bool,
    /// With `s3`: every service reaches the server through an [`crate::s3::S3Gate`], so a test
    /// can take the storage away and give it back with its objects.
    pub s3_gate: bool,
    /// Extra environment for every service (e.g. OTLP settings).
    pub env: BTreeMap<String, String>,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            agent_nodes: vec!["node-a".to_string()],
            orchestrator_args: Vec::new(),
            agent_args: Vec::new(),
            static_agents: true,
            s3: false,
            s3_gate: false,
            env: BTreeMap::new(),
        }
    }
}

pub struct Stack {
    // Processes first: they stop (on drop) before the directories they use are removed.
    pub orchestrator: ServiceProcess,
    pub agents: BTreeMap<String, ServiceProcess>,
    pub repo_manager: ServiceProcess,
    pub kube: KubeEmulator,
    pub kubelets: BTreeMap<String, FakeKubelet>,
    /// The storage location when it is a local directory (with `s3: false`).
    pub storage: PathBuf,
    /// The S3-compatible server holding the storage location (with `s3: true`).
    pub s3: Option<S3Server>,
    pub options: StackOptions,
    pub dir: tempfile::TempDir,
}

impl Stack {
    pub async fn start(options: StackOptions) -> Stack {
        let dir = tempfile::tempdir().expect("a temp dir");
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).expect("creating the log dir");
        let storage = dir.path().join("bucket");
        std::fs::create_dir_all(&storage).expect("creating the storage dir");
        let kube = KubeEmulator::start(&logs).await;
        let s3 = options.s3.then(|| {
            let s3 = S3Server::start(&logs, "stowage-e2e");
            if options.s3_gate {
                s3.behind_gate()
            } else {
                s3
            }
        });
        crate::kube::ensure_namespace(&kube.client().await, "stowage").await;

        let mut env = options.env.clone();
        env.insert("STOWAGE_MASTER_KEY".to_string(), MASTER_KEY.to_string());
        env.extend(s3.as_ref().map(S3Server::env).unwrap_or_default());
        let mut args = storage_args(&storage, s3.as_ref());
        args.extend([
            "--scratch-dir".to_string(),
            scratch(dir.path(), "repo-manager"),
        ]);
        let repo_manager = start_service(
            "stowage-repo-manager",
            "stowage.v1.RepoManager",
            &args,
            &env,
            &logs,
        )
        .await;

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
                &options.env,
                &logs,
            )
            .await;
            agents.insert(node.clone(), agent);
            kubelets.insert(node.clone(), kubelet);
        }
        let orchestrator = start_orchestrator(
            &options,
            &repo_manager,
            &agents,
            &kube,
            &storage_args(&storage, s3.as_ref()),
            &logs,
        )
        .await;
        Stack {
            orchestrator,
            agents,
            repo_manager,
            kube,
            kubelets,
            storage,
            s3,
            options,
            dir,
        }
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    pub async fn client(&self) -> OrchestratorClient<TracedChannel> {
        OrchestratorClient::new(
            stowage_grpc::connect(&self.orchestrator.url)
                .await
                .expect("connecting to the orchestrator"),
        )
    }

    pub async fn kube_client(&self) -> ::kube::Client {
        self.kube.client().await
    }

    /// Kills the orchestrator (SIGKILL, as a crash would) and starts a new one with the same
    /// configuration.
    pub async fn restart_orchestrator(&mut self) {
        self.orchestrator.process.kill();
        self.start_orchestrator_again().await;
    }

    /// Stops the orchestrator with SIGTERM (as Kubernetes does on a rollout), waits for it to
    /// exit, and starts a new one with the same configuration.
    pub async fn restart_orchestrator_gracefully(&mut self) {
        self.orchestrator
            .process
            .stop(std::time::Duration::from_secs(30));
        self.start_orchestrator_again().await;
    }

    /// Starts the agent of `node` again on its old port (after a test killed it), with the same
    /// configuration, so the orchestrator's `--agent` URL reaches the new process.
    pub async fn start_agent_again(&mut self, node: &str) {
        let port = self.agents[node].port;
        let mut args = vec![
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--node-name".to_string(),
            node.to_string(),
            "--pods-root".to_string(),
            self.kubelets[node].pods_root().display().to_string(),
            "--scratch-dir".to_string(),
            scratch(self.dir.path(), &format!("agent-{node}")),
        ];
        args.extend(self.options.agent_args.iter().cloned());
        let logs = self.logs();
        let mut process = crate::TestProcess::start(
            &format!("stowage-volume-agent-{node}-again"),
            crate::binary("stowage-volume-agent"),
            &args,
            &self.options.env,
            &logs,
        );
        let url = format!("http://127.0.0.1:{port}");
        crate::wait_for_health(
            &url,
            "stowage.v1.VolumeAgent",
            &mut process,
            std::time::Duration::from_secs(30),
        )
        .await;
        self.agents
            .insert(node.to_string(), ServiceProcess { process, url, port });
    }

    /// Starts the repo-manager again on its old port (after a test killed it), with the same
    /// configuration and storage, so the orchestrator reaches the new process.
    pub async fn start_repo_manager_again(&mut self) {
        let port = self.repo_manager.port;
        let mut args = vec!["--listen".to_string(), format!("127.0.0.1:{port}")];
        args.extend(storage_args(&self.storage, self.s3.as_ref()));
        args.extend([
            "--scratch-dir".to_string(),
            scratch(self.dir.path(), "repo-manager"),
        ]);
        let mut env = self.options.env.clone();
        env.insert("STOWAGE_MASTER_KEY".to_string(), MASTER_KEY.to_string());
        env.extend(self.s3.as_ref().map(S3Server::env).unwrap_or_default());
        let logs = self.logs();
        let mut process = crate::TestProcess::start(
            "stowage-repo-manager-again",
            crate::binary("stowage-repo-manager"),
            &args,
            &env,
            &logs,
        );
        let url = format!("http://127.0.0.1:{port}");
        crate::wait_for_health(
            &url,
            "stowage.v1.RepoManager",
            &mut process,
            std::time::Duration::from_secs(30),
        )
        .await;
        self.repo_manager = ServiceProcess { process, url, port };
    }

    /// Starts `moto_server` again on the S3 server's old port (after a test killed it) and
    /// creates the bucket again: moto keeps objects in memory, so the bucket comes back empty.
    pub fn start_s3_again(&mut self) {
        let s3 = self.s3.as_mut().expect("a stack with s3: true");
        let logs = self.dir.path().join("logs");
        s3.process = crate::TestProcess::start(
            "moto-server-again",
            "moto_server",
            &[
                "-H".to_string(),
                "127.0.0.1".to_string(),
                "-p".to_string(),
                s3.port.to_string(),
            ],
            &BTreeMap::new(),
            &logs,
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", s3.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not listen on port {} again; log:\n{}",
                s3.port,
                s3.process.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let bucket = s3.bucket.clone();
        s3.create_bucket(&bucket);
    }

    async fn start_orchestrator_again(&mut self) {
        self.orchestrator = start_orchestrator(
            &self.options,
            &self.repo_manager,
            &self.agents,
            &self.kube,
            &storage_args(&self.storage, self.s3.as_ref()),
            &self.logs(),
        )
        .await;
    }
}

fn storage_args(storage: &Path, s3: Option<&S3Server>) -> Vec<String> {
    match s3 {
        Some(s3) => s3.storage_args("cluster-1"),
        None => vec![
            "--storage-url".to_string(),
            format!("file://{}", storage.display()),
        ],
    }
}

fn scratch(root: &Path, name: &str) -> String {
    let path = root.join("scratch").join(name);
    std::fs::create_dir_all(&path).expect("creating a scratch dir");
    path.display().to_string()
}

async fn start_orchestrator(
    options: &StackOptions,
    repo_manager: &ServiceProcess,
    agents: &BTreeMap<String, ServiceProcess>,
    kube: &KubeEmulator,
    storage_args: &[String],
    logs: &Path,
) -> ServiceProcess {
    let mut args = vec![
        "--repo-manager".to_string(),
        repo_manager.url.clone(),
        "--poll-interval-ms".to_string(),
        "100".to_string(),
    ];
    args.extend_from_slice(storage_args);
    if options.static_agents {
        for (node, agent) in agents {
            args.push("--agent".to_string());
            args.push(format!("{node}={}", agent.url));
        }
    }
    args.extend(options.orchestrator_args.iter().cloned());
    let mut env = options.env.clone();
    env.extend(kube.env());
    if options.s3 {
        env.extend([
            (
                "AWS_ACCESS_KEY_ID".to_string(),
                crate::s3::ACCESS_KEY_ID.to_string(),
            ),
            (
                "AWS_SECRET_ACCESS_KEY".to_string(),
                crate::s3::SECRET_ACCESS_KEY.to_string(),
            ),
        ]);
    }
    start_service(
        "stowage-orchestrator",
        "stowage.v1.Orchestrator",
        &args,
        &env,
        logs,
    )
    .await
}

/// A restic wrapper that waits `seconds` before every `restic backup` (and nothing else), so a
/// test can act while a backup is running; returns its path, for `--restic-binary`.
pub fn slow_restic(dir: &Path, seconds: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("slow-restic");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" backup \"*) sleep {seconds};; esac\nexec restic \"$@\"\n"
        ),
    )
    .expect("writing the restic wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("making the restic wrapper executable");
    path
}

/// A stack whose agent's restic waits 60 s before each backup, so a backup is still running
/// when the test acts, with the example's emptyDir seeded; the wrapper's dir lives as long as
/// it.
pub async fn stack_with_slow_backups() -> (Stack, tempfile::TempDir) {
    let wrapper_dir = tempfile::tempdir().expect("a temp dir for the restic wrapper");
    let restic = slow_restic(wrapper_dir.path(), 60);
    let stack = Stack::start(StackOptions {
        agent_args: vec!["--restic-binary".into(), restic.display().to_string()],
        ..StackOptions::default()
    })
    .await;
    let kube = stack.kube_client().await;
    let example = crate::kube::seed_example(&kube, "foo", "node-a", Some("emptydir-volume")).await;
    let volume = stack.kubelets["node-a"]
        .pod(&example.pod_uid())
        .empty_dir("emptydir-volume");
    std::fs::write(volume.join("data.txt"), b"slow").expect("seeding the emptyDir");
    (stack, wrapper_dir)
}
