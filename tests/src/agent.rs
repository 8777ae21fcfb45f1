//! A volume agent over a fake kubelet tree and a local restic repository, for the tests that
//! look at the agent from outside (metrics, security): start it with extra flags, reach it in
//! plaintext or with TLS, scrape its `/metrics`, and tell whether the pods tree or the
//! repository changed.

use std::{
    collections::BTreeMap,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use stowage_proto::v1::{
    BackupVolumeRequest, BackupVolumeResult, PodVolumeRef, RepositoryAccess, RestoreVolumeRequest,
    RestoreVolumeResult, VolumeSource, backup_volume_event, restore_volume_event,
    volume_agent_client::VolumeAgentClient,
};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{
    Status,
    transport::{Channel, ClientTlsConfig, Endpoint},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    TestProcess, binary, free_port,
    kubelet::{FakeKubelet, new_pod_uid},
};

pub struct AgentFixture {
    pub dir: TempDir,
    pub kubelet: FakeKubelet,
    pub repository: PathBuf,
    /// Unique, so finding it anywhere means it leaked.
    pub password: String,
    pub agent: TestProcess,
    /// `http://127.0.0.1:<port>` (dialled as https when a client uses TLS)
    pub url: String,
    /// `127.0.0.1:<port>` of `/metrics`.
    pub metrics_addr: String,
}

/// `restic init` of a local repository at `path` with `password`.
pub fn init_repository(path: &Path, password: &str, scratch: &Path) {
    let password_file = scratch.join("init-password");
    std::fs::write(&password_file, password).expect("writing the password file");
    let init = Command::new("restic")
        .args(["init", "--repo"])
        .arg(path)
        .arg("--password-file")
        .arg(&password_file)
        .output()
        .expect("running restic init");
    std::fs::remove_file(&password_file).expect("removing the password file");
    assert!(
        init.status.success(),
        "restic init: {}",
        String::from_utf8_lossy(&init.stderr)
    );
}

impl AgentFixture {
    /// An agent on free ports (gRPC and metrics) with `extra_args`, waited for with `tls`
    /// (the TLS the agent's health service is reached with; `None` = plaintext).
    pub async fn start(
        extra_args: &[String],
        envs: &BTreeMap<String, String>,
        tls: Option<ClientTlsConfig>,
    ) -> AgentFixture {
        let dir = tempfile::tempdir().expect("temp dir");
        AgentFixture::start_in(dir, extra_args, envs, tls).await
    }

    /// [`AgentFixture::start`] in a prepared `dir` (e.g. holding certificates).
    pub async fn start_in(
        dir: TempDir,
        extra_args: &[String],
        envs: &BTreeMap<String, String>,
        tls: Option<ClientTlsConfig>,
    ) -> AgentFixture {
        let kubelet = FakeKubelet::new(dir.path().join("pods"));
        let repository = dir.path().join("storage/restic/shop");
        let password = format!("pw-{}", new_pod_uid());
        init_repository(&repository, &password, dir.path());
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).expect("log dir");
        let port = free_port();
        let metrics_addr = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<String> = vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--metrics-listen".into(),
            metrics_addr.clone(),
            "--node-name".into(),
            "node-1".into(),
            "--pods-root".into(),
            kubelet.pods_root().display().to_string(),
            "--scratch-dir".into(),
            dir.path().join("scratch").display().to_string(),
            "--restic-binary".into(),
            "restic".into(),
        ];
        args.extend_from_slice(extra_args);
        let mut agent = TestProcess::start(
            "stowage-volume-agent",
            binary("stowage-volume-agent"),
            &args,
            envs,
            &logs,
        );
        let url = format!("http://127.0.0.1:{port}");
        wait_until_serving(&url, tls, &mut agent, Duration::from_secs(30)).await;
        AgentFixture {
            dir,
            kubelet,
            repository,
            password,
            agent,
            url,
            metrics_addr,
        }
    }

    /// A client over plaintext (`None`) or TLS.
    pub async fn client(
        &self,
        tls: Option<ClientTlsConfig>,
    ) -> Result<VolumeAgentClient<stowage_grpc::TracedChannel>, stowage_grpc::GrpcError> {
        Ok(VolumeAgentClient::new(
            stowage_grpc::connect_with(&self.url, tls).await?,
        ))
    }

    pub fn access(&self) -> RepositoryAccess {
        RepositoryAccess {
            url: self.repository.display().to_string(),
            password: self.password.clone(),
            env: Default::default(),
        }
    }

    /// A pod with one emptyDir volume `data` holding `bytes` bytes; returns its reference.
    pub fn pod_with_data(&self, pod_name: &str, bytes: usize) -> PodVolumeRef {
        let uid = new_pod_uid();
        let dir = self.kubelet.pod(&uid).empty_dir("data");
        crate::kubelet::write_random_file(&dir.join("blob"), bytes, 7);
        PodVolumeRef {
            namespace: "shop".into(),
            pod_name: pod_name.into(),
            pod_uid: uid,
            volume_name: "data".into(),
            source: VolumeSource::EmptyDir as i32,
            pv_name: String::new(),
            pvc_name: String::new(),
            pvc_uid: String::new(),
        }
    }

    pub fn backup_request(&self, operation: &str, volume: PodVolumeRef) -> BackupVolumeRequest {
        BackupVolumeRequest {
            operation_id: operation.into(),
            volume: Some(volume),
            repository: Some(self.access()),
            backup_name: "nightly".into(),
            backup_uid: "7d3c1e2a-0000-4000-8000-000000000001".into(),
            stable_identity: String::new(),
            extra_tags: Default::default(),
            parent_snapshot_id: String::new(),
            ..Default::default()
        }
    }

    pub fn restore_request(
        &self,
        operation: &str,
        volume: PodVolumeRef,
        snapshot_id: &str,
    ) -> RestoreVolumeRequest {
        RestoreVolumeRequest {
            operation_id: operation.into(),
            volume: Some(volume),
            repository: Some(self.access()),
            snapshot_id: snapshot_id.into(),
            restore_uid: "5a0c7f5e-0000-4000-8000-000000000002".into(),
            restore_name: "restore-1".into(),
            ..Default::default()
        }
    }

    /// Files under the pods root and the repository with their sizes and content hashes.
    pub fn fingerprint(&self) -> BTreeMap<String, (u64, u64)> {
        let mut files = fingerprint_dir(self.kubelet.pods_root(), "pods");
        files.extend(fingerprint_dir(&self.repository, "repository"));
        files
    }

    /// `GET /metrics` of this agent.
    pub async fn scrape(&self) -> String {
        scrape(&self.metrics_addr).await
    }
}

/// Every file under `root` (as `<label>/<relative path>`) with its size and content hash, to
/// tell whether anything under it changed.
pub fn fingerprint_dir(root: &Path, label: &str) -> BTreeMap<String, (u64, u64)> {
    let mut files = BTreeMap::new();
    walk(root, &mut |path, data| {
        let relative = path.strip_prefix(root).unwrap_or(path);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        data.hash(&mut hasher);
        files.insert(
            format!("{label}/{}", relative.display()),
            (data.len() as u64, hasher.finish()),
        );
    });
    files
}

fn walk(dir: &Path, visit: &mut dyn FnMut(&Path, &[u8])) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => walk(&path, visit),
            Ok(_) => visit(&path, &std::fs::read(&path).unwrap_or_default()),
            Err(_) => {}
        }
    }
}

/// Runs a backup to its result.
pub async fn run_backup(
    client: &mut VolumeAgentClient<stowage_grpc::TracedChannel>,
    request: BackupVolumeRequest,
) -> Result<BackupVolumeResult, Status> {
    let mut stream = client.backup_volume(request).await?.into_inner();
    while let Some(event) = stream.message().await? {
        if let Some(backup_volume_event::Event::Result(result)) = event.event {
            return Ok(result);
        }
    }
    Err(Status::internal("backup stream ended without a result"))
}

/// Runs a restore to its result.
pub async fn run_restore(
    client: &mut VolumeAgentClient<stowage_grpc::TracedChannel>,
    request: RestoreVolumeRequest,
) -> Result<RestoreVolumeResult, Status> {
    let mut stream = client.restore_volume(request).await?.into_inner();
    while let Some(event) = stream.message().await? {
        if let Some(restore_volume_event::Event::Result(result)) = event.event {
            return Ok(result);
        }
    }
    Err(Status::internal("restore stream ended without a result"))
}

/// `GET /metrics` at `addr` (`host:port`), the body of a 200 answer; panics otherwise.
pub async fn scrape(addr: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|error| panic!("connecting to the metrics endpoint {addr}: {error}"));
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: stowage\r\nConnection: close\r\n\r\n")
        .await
        .expect("sending the scrape");
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .await
        .expect("reading the scrape");
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    assert!(head.starts_with("HTTP/1.1 200"), "scrape of {addr}: {head}");
    body.to_string()
}

/// The value of the sample `series` (name with labels exactly as exposed) in `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|value| value.split_whitespace().next())
            .and_then(|value| value.parse().ok())
    })
}

/// Waits until the gRPC server at `url` answers health checks over `tls` (or plaintext).
pub async fn wait_until_serving(
    url: &str,
    tls: Option<ClientTlsConfig>,
    process: &mut TestProcess,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    let mut last_error = String::new();
    while Instant::now() < deadline {
        if let Ok(Some(status)) = process.child.try_wait() {
            panic!(
                "{} exited with {status} before serving; log:\n{}",
                process.name,
                process.log()
            );
        }
        match health(url, tls.clone()).await {
            Ok(()) => return,
            Err(error) => last_error = error,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{} at {url} not serving after {timeout:?} ({last_error}); log:\n{}",
        process.name,
        process.log()
    );
}

async fn health(url: &str, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    let channel: Channel = match tls {
        Some(tls) => Endpoint::from_shared(url.replacen("http://", "https://", 1))
            .and_then(|endpoint| endpoint.tls_config(tls))
            .map_err(|error| error.to_string())?
            .connect()
            .await
            .map_err(|error| format!("{error:?}"))?,
        None => Endpoint::from_shared(url.to_string())
            .map_err(|error| error.to_string())?
            .connect()
            .await
            .map_err(|error| error.to_string())?,
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|_| ())
        .map_err(|status| status.to_string())
}

/// Waits until the agent at `url` runs restic (not only queued it) for at least `at_least`
/// operations, of `kind` when given; panics after 60 s with what it saw and `context` (the
/// test's logs). A test kills or pauses an orchestrator only then: a volume it had only sent
/// is rightly run afresh by the next one, not re-attached.
pub async fn wait_running_operations(
    url: &str,
    kind: Option<stowage_proto::v1::AgentOperationKind>,
    at_least: usize,
    context: impl Fn() -> String,
) {
    use stowage_proto::v1::{AgentOperationState, GetAgentInfoRequest};
    let mut agent = VolumeAgentClient::new(
        stowage_grpc::connect(url)
            .await
            .expect("connecting to the agent"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let info = agent
            .get_agent_info(GetAgentInfoRequest {})
            .await
            .expect("GetAgentInfo")
            .into_inner();
        let running = info
            .operations
            .iter()
            .filter(|op| kind.is_none_or(|kind| op.kind == kind as i32))
            .filter(|op| op.state == AgentOperationState::Running as i32)
            .count();
        if running >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agent at {url} ran {running} operations ({kind:?}), not {at_least}, within 60 s\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
