//! The repo-manager against the real restic binary, with a local directory and with an
//! S3-compatible server (moto) as the storage location: repositories are created once per
//! namespace under concurrent calls, keys are per namespace, prune waits for backups' leases,
//! stale restic locks are cleared while live ones are kept, state survives a restart, and no
//! password leaks into logs or process arguments.

use std::{
    collections::BTreeMap,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use stowage_e2e::{ServiceProcess, s3::S3Server, start_service};
use stowage_proto::{
    prost_types,
    v1::{
        AcquireLeaseRequest, EnsureRepositoryRequest, ForgetBackupRequest,
        GetRepositoryAccessRequest, GetRepositoryRequest, LeaseMode, ListRepositoriesRequest,
        MaintenanceKind, MaintenanceResult, ReleaseLeaseRequest, Repository, RepositoryAccess,
        RepositoryPhase, RotateKeyRequest, RunMaintenanceRequest,
        repo_manager_client::RepoManagerClient,
    },
};
use tonic::{Code, transport::Channel};

const MASTER_KEY: &str = "master-key-for-the-e2e-tests";

type Client = RepoManagerClient<Channel>;

/// A test's directories: the storage location, scratch dirs, logs.
struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        Scene {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    fn storage(&self) -> PathBuf {
        self.path("bucket")
    }

    fn local_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "--storage-url".to_string(),
            format!("file://{}", self.storage().display()),
        ];
        args.extend(self.common_args(extra));
        args
    }

    fn common_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "--scratch-dir".to_string(),
            self.path("scratch").display().to_string(),
        ];
        args.extend(extra.iter().map(|arg| arg.to_string()));
        args
    }

    async fn start(&self, args: Vec<String>, env: BTreeMap<String, String>) -> ServiceProcess {
        let mut env = env;
        env.entry("STOWAGE_MASTER_KEY".into())
            .or_insert_with(|| MASTER_KEY.into());
        // Debug logging: the password must stay out of even the most verbose log.
        env.insert("STOWAGE_LOG_LEVEL".into(), "debug".into());
        start_service(
            "stowage-repo-manager",
            "stowage.v1.RepoManager",
            &args,
            &env,
            &self.path("logs"),
        )
        .await
    }
}

async fn connect(service: &ServiceProcess) -> Client {
    RepoManagerClient::connect(service.url.clone())
        .await
        .expect("connecting to the repo-manager")
}

async fn ensure(client: &mut Client, namespace: &str) -> Repository {
    client
        .ensure_repository(EnsureRepositoryRequest {
            namespace: namespace.into(),
        })
        .await
        .unwrap_or_else(|status| panic!("ensure {namespace}: {status}"))
        .into_inner()
}

async fn access(client: &mut Client, namespace: &str) -> RepositoryAccess {
    client
        .get_repository_access(GetRepositoryAccessRequest {
            namespace: namespace.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn get(client: &mut Client, namespace: &str) -> Repository {
    client
        .get_repository(GetRepositoryRequest {
            namespace: namespace.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Runs maintenance `kind` of `namespace`'s repository to its end.
async fn maintain(
    client: &mut Client,
    namespace: &str,
    kind: MaintenanceKind,
) -> MaintenanceResult {
    client
        .run_maintenance(RunMaintenanceRequest {
            namespace: namespace.into(),
            kind: kind as i32,
        })
        .await
        .unwrap()
        .into_inner()
}

/// The Kubernetes API emulator with namespace `stowage`, a client of it, and the settings
/// that make a repo-manager use it from that namespace.
async fn kubernetes(
    scene: &Scene,
) -> (
    stowage_e2e::kube::KubeEmulator,
    kube::Client,
    BTreeMap<String, String>,
) {
    let emulator = stowage_e2e::kube::KubeEmulator::start(&scene.path("kube")).await;
    let kube = emulator.client().await;
    stowage_e2e::kube::ensure_namespace(&kube, "stowage").await;
    let mut env = emulator.env();
    env.insert("STOWAGE_KUBERNETES".into(), "true".into());
    env.insert("STOWAGE_NAMESPACE".into(), "stowage".into());
    (emulator, kube, env)
}

/// A running volume-agent pod `name` in namespace `stowage` on node-a, as the repo-manager
/// looks for the holders of restic locks.
async fn agent_pod(kube: &kube::Client, name: &str) {
    let _: k8s_openapi::api::core::v1::Pod = stowage_e2e::kube::create(
        kube,
        Some("stowage"),
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "namespace": "stowage",
                "labels": {"app.kubernetes.io/name": "stowage-volume-agent"},
            },
            "spec": {"containers": [{"name": "agent", "image": "stowage-volume-agent"}]},
        }),
    )
    .await;
    stowage_e2e::kube::mark_pod_running(kube, "stowage", name, "node-a").await;
}

fn assert_ready(repository: &Repository) {
    assert_eq!(
        repository.phase,
        RepositoryPhase::Ready as i32,
        "repository {} not ready: {}",
        repository.namespace,
        repository.message
    );
}

/// restic run by the test itself, as a volume agent would, with what GetRepositoryAccess gave.
struct ResticAs {
    url: String,
    env: BTreeMap<String, String>,
    password_file: PathBuf,
    cache: PathBuf,
    _dir: tempfile::TempDir,
}

impl ResticAs {
    fn new(access: &RepositoryAccess) -> ResticAs {
        Self::with_password(access, &access.password)
    }

    fn with_password(access: &RepositoryAccess, password: &str) -> ResticAs {
        let dir = tempfile::tempdir().unwrap();
        let password_file = dir.path().join("password");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&password_file)
            .unwrap()
            .write_all(password.as_bytes())
            .unwrap();
        ResticAs {
            url: access.url.clone(),
            env: access.env.clone().into_iter().collect(),
            password_file,
            cache: dir.path().join("cache"),
            _dir: dir,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("restic");
        command
            .args(args)
            .env("RESTIC_REPOSITORY", &self.url)
            .env("RESTIC_PASSWORD_FILE", &self.password_file)
            .env("RESTIC_CACHE_DIR", &self.cache)
            .envs(&self.env)
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running restic")
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "restic {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `restic backup --stdin` that holds its lock until the test writes and closes stdin.
    fn backup_from_stdin(&self, name: &str, tag: &str) -> Child {
        self.command(&[
            "backup",
            "--stdin",
            "--stdin-filename",
            name,
            "--tag",
            tag,
            "--quiet",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting restic backup")
    }

    fn backup_dir(&self, dir: &Path, tag: &str) {
        self.ok(&[
            "backup",
            "--quiet",
            "--tag",
            tag,
            &dir.display().to_string(),
        ]);
    }

    fn locks(&self) -> Vec<String> {
        self.ok(&["list", "locks", "--no-lock"])
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    fn snapshot_ids(&self, tag: Option<&str>) -> Vec<String> {
        let mut args = vec!["snapshots", "--json", "--no-lock"];
        if let Some(tag) = tag {
            args.extend(["--tag", tag]);
        }
        let text = self.ok(&args);
        let snapshots: Option<Vec<serde_json::Value>> = serde_json::from_str(&text).unwrap();
        let mut ids: Vec<String> = snapshots
            .unwrap_or_default()
            .iter()
            .map(|snapshot| snapshot["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    }
}

/// Feeds `data` to a `backup_from_stdin` child and waits for it; panics when restic failed.
fn finish_backup(mut child: Child, data: &[u8]) {
    child.stdin.take().unwrap().write_all(data).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "restic backup failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Waits until `restic list locks` shows `count` locks (a started restic takes a moment).
fn wait_for_locks(restic: &ResticAs, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let locks = restic.locks();
        if locks.len() >= count {
            return locks;
        }
        assert!(
            Instant::now() < deadline,
            "expected {count} restic locks, see {locks:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checks ensure under concurrency: all calls Ready, one `restic init` (one key, one config).
async fn check_concurrent_ensure(service: &ServiceProcess, namespace: &str) -> Repository {
    let mut calls = Vec::new();
    for _ in 0..4 {
        let mut client = connect(service).await;
        let namespace = namespace.to_string();
        calls.push(tokio::spawn(async move {
            ensure(&mut client, &namespace).await
        }));
    }
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    for repository in &results {
        assert_ready(repository);
        assert_eq!(repository.created, results[0].created, "one repository");
    }
    let mut client = connect(service).await;
    let again = ensure(&mut client, namespace).await;
    assert_ready(&again);
    assert_eq!(again.created, results[0].created, "ensure is idempotent");
    assert_eq!(again.url, results[0].url);

    let access = access(&mut client, namespace).await;
    assert_eq!(access.url, again.url);
    let keys = ResticAs::new(&access).ok(&["key", "list", "--json"]);
    let keys: Vec<serde_json::Value> = serde_json::from_str(&keys).unwrap();
    assert_eq!(keys.len(), 1, "restic init ran once: {keys:?}");
    again
}

/// Two namespaces: different random passwords, and neither opens the other's repository.
async fn check_namespace_isolation(client: &mut Client, a: &str, b: &str) {
    assert_ready(&ensure(client, b).await);
    let access_a = access(client, a).await;
    let access_b = access(client, b).await;
    assert_ne!(access_a.password, access_b.password);
    assert_ne!(access_a.url, access_b.url);
    assert!(access_a.password.len() >= 32, "a long random password");

    let a_with_b_key = ResticAs::with_password(&access_a, &access_b.password);
    let output = a_with_b_key.run(&["cat", "config", "--no-lock"]);
    assert!(!output.status.success(), "b's key opened a's repository");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("wrong password"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let b_with_a_key = ResticAs::with_password(&access_b, &access_a.password);
    assert!(
        !b_with_a_key
            .run(&["cat", "config", "--no-lock"])
            .status
            .success()
    );
    ResticAs::new(&access_a).ok(&["cat", "config", "--no-lock"]);
    ResticAs::new(&access_b).ok(&["cat", "config", "--no-lock"]);
}

/// Neither the password nor the master key is in the log or any process's command line.
fn assert_no_secret_leak(service: &ServiceProcess, secrets: &[&str]) {
    let log = service.process.log();
    assert!(log.contains("repo manager starting"), "log is captured");
    for secret in secrets {
        assert!(!log.contains(secret), "a secret is in the repo-manager log");
    }
    // Every process now running (the repo-manager and any restic it started).
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        for secret in secrets {
            assert!(
                !cmdline.contains(secret),
                "a secret is in the arguments of process {}",
                entry.file_name().to_string_lossy()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_ensure_is_idempotent_and_concurrent_safe_and_keys_are_per_namespace() {
    let scene = Scene::new();
    let service = scene.start(scene.local_args(&[]), BTreeMap::new()).await;
    let repository = check_concurrent_ensure(&service, "team-a").await;
    assert_eq!(
        repository.url,
        scene.storage().join("restic/team-a").display().to_string()
    );
    assert!(scene.storage().join("restic/team-a/config").is_file());

    let mut client = connect(&service).await;
    check_namespace_isolation(&mut client, "team-a", "team-b").await;

    // The bucket copy of the password is sealed: it is there, the password is not readable.
    let password = access(&mut client, "team-a").await.password;
    let sealed = std::fs::read_to_string(scene.storage().join("stowage/keys/team-a.json")).unwrap();
    assert!(sealed.contains("AES-256-GCM"));
    assert!(!sealed.contains(&password));

    let listed = client
        .list_repositories(ListRepositoriesRequest {})
        .await
        .unwrap()
        .into_inner()
        .repositories;
    let names: Vec<&str> = listed.iter().map(|r| r.namespace.as_str()).collect();
    assert_eq!(names, ["team-a", "team-b"]);

    let other = access(&mut client, "team-b").await.password;
    assert_no_secret_leak(&service, &[&password, &other, MASTER_KEY]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_ensure_is_concurrent_safe_keys_are_per_namespace_and_state_survives_restart() {
    let scene = Scene::new();
    let s3 = S3Server::start(&scene.path("logs"), "stowage-e2e");
    let mut args = s3.storage_args("cluster-1");
    args.extend(scene.common_args(&[]));
    let mut service = scene.start(args.clone(), s3.env()).await;

    let repository = check_concurrent_ensure(&service, "team-a").await;
    assert_eq!(
        repository.url,
        format!("s3:{}/stowage-e2e/cluster-1/restic/team-a", s3.endpoint)
    );
    let mut client = connect(&service).await;
    check_namespace_isolation(&mut client, "team-a", "team-b").await;

    // restic with the handed-out access can back up into the S3 repository.
    let access_a = access(&mut client, "team-a").await;
    assert_eq!(
        access_a.env.get("AWS_ACCESS_KEY_ID").map(String::as_str),
        Some(stowage_e2e::s3::ACCESS_KEY_ID)
    );
    let data = scene.path("data");
    std::fs::write(data.join("file.txt"), b"hello s3").unwrap();
    let restic = ResticAs::new(&access_a);
    restic.backup_dir(&data, "backup=first");
    assert_eq!(restic.snapshot_ids(None).len(), 1);

    let check = maintain(&mut client, "team-a", MaintenanceKind::Check).await;
    assert!(check.succeeded, "check failed: {}", check.message);
    let before = get(&mut client, "team-a").await;
    drop(client);

    assert_no_secret_leak(
        &service,
        &[
            &access_a.password,
            stowage_e2e::s3::SECRET_ACCESS_KEY,
            MASTER_KEY,
        ],
    );

    // A new process finds repositories and schedule state in the bucket; this one reads its
    // S3 credentials from a mounted credentials file instead of the environment.
    service.process.stop(Duration::from_secs(10));
    let credentials = scene.path("aws").join("credentials");
    std::fs::write(
        &credentials,
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            stowage_e2e::s3::ACCESS_KEY_ID,
            stowage_e2e::s3::SECRET_ACCESS_KEY
        ),
    )
    .unwrap();
    let file_env = BTreeMap::from([(
        "AWS_SHARED_CREDENTIALS_FILE".to_string(),
        credentials.display().to_string(),
    )]);
    let service = scene.start(args, file_env).await;
    let mut client = connect(&service).await;
    let after = get(&mut client, "team-a").await;
    assert_eq!(after, before, "state kept across the restart");
    assert!(after.check.unwrap().last_succeeded);
    let access_again = access(&mut client, "team-a").await;
    assert_eq!(access_again.password, access_a.password);
    assert_eq!(
        access_again
            .env
            .get("AWS_SECRET_ACCESS_KEY")
            .map(String::as_str),
        Some(stowage_e2e::s3::SECRET_ACCESS_KEY),
        "credentials from the file are handed to restic"
    );
    assert_eq!(ResticAs::new(&access_again).snapshot_ids(None).len(), 1);
    assert_ready(&ensure(&mut client, "team-a").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_waits_for_shared_leases_then_succeeds_and_backups_finish() {
    let scene = Scene::new();
    let service = scene.start(scene.local_args(&[]), BTreeMap::new()).await;
    let mut client = connect(&service).await;
    assert_ready(&ensure(&mut client, "shop").await);
    let restic = ResticAs::new(&access(&mut client, "shop").await);

    let mut leases = Vec::new();
    let mut backups = Vec::new();
    for name in ["orders", "users"] {
        let lease = client
            .acquire_lease(AcquireLeaseRequest {
                namespace: "shop".into(),
                mode: LeaseMode::Shared as i32,
                holder: format!("backup/nightly/shop/db/{name}"),
                ttl: Some(prost_types::Duration {
                    seconds: 300,
                    nanos: 0,
                }),
                wait_timeout: Some(prost_types::Duration::default()),
            })
            .await
            .unwrap()
            .into_inner();
        leases.push(lease);
        backups.push(restic.backup_from_stdin(name, "backup=nightly"));
    }
    wait_for_locks(&restic, 2);

    let prune = tokio::spawn({
        let mut client = client.clone();
        async move {
            client
                .run_maintenance(RunMaintenanceRequest {
                    namespace: "shop".into(),
                    kind: MaintenanceKind::Prune as i32,
                })
                .await
        }
    });
    // Give the prune every chance to (wrongly) run while the backups hold their leases.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!prune.is_finished(), "prune ran while backups held leases");

    // While the prune waits, a new backup's lease waits behind it instead of starting.
    let late = client
        .acquire_lease(AcquireLeaseRequest {
            namespace: "shop".into(),
            mode: LeaseMode::Shared as i32,
            holder: "backup/late".into(),
            ttl: None,
            wait_timeout: Some(prost_types::Duration {
                seconds: 0,
                nanos: 100_000_000,
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::Unavailable, "{late}");

    for (backup, data) in backups.into_iter().zip([&b"orders"[..], b"users"]) {
        finish_backup(backup, data);
    }
    for lease in &leases {
        let released = client
            .release_lease(ReleaseLeaseRequest {
                lease_id: lease.lease_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(released.released);
    }
    let result = prune.await.unwrap().expect("prune answered").into_inner();
    // The exclusive lease went to the prune only after both backups released theirs.
    let log = service.process.log();
    let line_of = |needles: &[&str]| {
        log.lines()
            .position(|line| needles.iter().all(|needle| line.contains(needle)))
            .unwrap_or_else(|| panic!("no log line with {needles:?}"))
    };
    let granted = line_of(&["lease granted", "maintenance/prune"]);
    for lease in &leases {
        let released = line_of(&["lease released", &lease.lease_id]);
        assert!(
            released < granted,
            "prune got its lease before backup lease {} was released",
            lease.lease_id
        );
    }
    assert!(result.succeeded, "prune failed: {}", result.message);
    assert_eq!(result.kind, MaintenanceKind::Prune as i32);
    assert_eq!(restic.snapshot_ids(Some("backup=nightly")).len(), 2);
    let status = get(&mut client, "shop").await.prune.unwrap();
    assert!(status.last_succeeded && status.last_finished.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_lock_of_killed_restic_is_cleared_and_live_lock_is_kept() {
    let scene = Scene::new();
    let service = scene
        .start(
            scene.local_args(&["--stale-lock-age", "1s"]),
            BTreeMap::new(),
        )
        .await;
    let mut client = connect(&service).await;
    assert_ready(&ensure(&mut client, "locks").await);
    let access = access(&mut client, "locks").await;
    let restic = ResticAs::new(&access);

    let live = restic.backup_from_stdin("live", "backup=live");
    wait_for_locks(&restic, 1);
    let mut killed = restic.backup_from_stdin("killed", "backup=killed");
    wait_for_locks(&restic, 2);
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert_eq!(
        restic.locks().len(),
        2,
        "a SIGKILLed restic leaves its lock"
    );
    // Past the stale-lock age, so age alone no longer protects the dead one.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let maintenance = maintain(&mut client, "locks", MaintenanceKind::Check).await;
    let remaining = restic.locks();
    assert_eq!(
        remaining.len(),
        1,
        "the dead lock is gone, the live one stays"
    );
    let holder: serde_json::Value =
        serde_json::from_str(&restic.ok(&["cat", "lock", &remaining[0], "--no-lock"])).unwrap();
    assert_eq!(holder["pid"].as_u64(), Some(live.id() as u64));
    assert_no_secret_leak(&service, &[&access.password, MASTER_KEY]);

    finish_backup(live, b"still fine");
    assert!(restic.locks().is_empty());
    let maintenance_after = maintain(&mut client, "locks", MaintenanceKind::Check).await;
    assert!(
        maintenance_after.succeeded,
        "check failed: {} (while the live lock was held: {})",
        maintenance_after.message, maintenance.message
    );
}

/// `restic backup --stdin` run as host `hostname` (in a UTS namespace of its own, as restic in
/// a pod writes the pod's name into its lock), SIGKILLed once its lock is written: the lock it
/// leaves is fresh, and restic's own rule would keep it for 30 minutes.
fn kill_restic_running_as_host(restic: &ResticAs, hostname: &str) {
    let probe = Command::new("unshare")
        .args(["--user", "--map-root-user", "--uts", "hostname", "probe"])
        .output()
        .expect("running unshare (util-linux) to give restic another host name");
    assert!(
        probe.status.success(),
        "unshare cannot give restic another host name: {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let before = restic.locks().len();
    let mut child = Command::new("unshare")
        .args(["--user", "--map-root-user", "--uts", "sh", "-c"])
        .arg(r#"hostname "$0" && exec "$@""#)
        .arg(hostname)
        .arg("restic")
        .args([
            "backup",
            "--stdin",
            "--stdin-filename",
            "held",
            "--tag",
            "backup=held",
            "--quiet",
        ])
        .env("RESTIC_REPOSITORY", &restic.url)
        .env("RESTIC_PASSWORD_FILE", &restic.password_file)
        .env("RESTIC_CACHE_DIR", &restic.cache)
        .envs(&restic.env)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting restic backup under another host name");
    wait_for_locks(restic, before + 1);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The host names in the repository's locks.
fn lock_hosts(restic: &ResticAs) -> Vec<String> {
    restic
        .locks()
        .iter()
        .map(|id| {
            let holder: serde_json::Value =
                serde_json::from_str(&restic.ok(&["cat", "lock", id, "--no-lock"])).unwrap();
            holder["hostname"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_of_a_stowage_pod_that_no_longer_exists_is_cleared_before_prune_and_a_live_one_is_kept()
 {
    use k8s_openapi::api::core::v1::Pod;
    use kube::Api;

    let scene = Scene::new();
    let (_emulator, kube, env) = kubernetes(&scene).await;
    // An agent pod that exists (and runs); `stowage-volume-agent-gone1` does not.
    let live = "stowage-volume-agent-live1";
    agent_pod(&kube, live).await;
    // The default stale-lock age (5m) and restic's 30 minutes: no age rule removes a lock
    // written seconds ago.
    let service = scene.start(scene.local_args(&[]), env).await;
    let mut client = connect(&service).await;
    assert_ready(&ensure(&mut client, "podlocks").await);
    let restic = ResticAs::new(&access(&mut client, "podlocks").await);
    let prune =
        async |client: &mut Client| maintain(client, "podlocks", MaintenanceKind::Prune).await;

    // A restic of an agent pod that is gone (killed mid-backup, the pod replaced).
    kill_restic_running_as_host(&restic, "stowage-volume-agent-gone1");
    assert_eq!(lock_hosts(&restic), ["stowage-volume-agent-gone1"]);
    let pruned = prune(&mut client).await;
    assert!(
        pruned.succeeded,
        "prune after clearing the gone pod's lock: {}; log:\n{}",
        pruned.message,
        service.process.log()
    );
    assert!(restic.locks().is_empty(), "the gone pod's lock is removed");
    assert!(
        service
            .process
            .log()
            .contains("removing the restic lock of a stowage pod that no longer exists")
    );

    // The same from a pod that exists: its restic may still run, the lock stays, and prune
    // fails on it as restic reports it.
    kill_restic_running_as_host(&restic, live);
    let refused = prune(&mut client).await;
    assert!(!refused.succeeded, "prune ran past a live pod's lock");
    assert!(
        refused.message.contains("lock"),
        "prune names the lock: {}",
        refused.message
    );
    assert_eq!(lock_hosts(&restic), [live], "the live pod's lock is kept");

    // Once that pod is gone, its lock goes at the next maintenance.
    let pods: Api<Pod> = Api::namespaced(kube.clone(), "stowage");
    pods.delete(live, &Default::default()).await.unwrap();
    let pruned = prune(&mut client).await;
    assert!(pruned.succeeded, "{}", pruned.message);
    assert!(restic.locks().is_empty());
}

/// A volume agent serving on a free loopback port, run as host `pod` (in a UTS namespace of its
/// own, as an agent in its pod sees the pod's name; the restic processes it starts write that
/// name into their locks), over a fake kubelet tree holding one pod volume of random data.
struct AgentAsPod {
    process: stowage_e2e::TestProcess,
    url: String,
    port: u16,
    kubelet: stowage_e2e::kubelet::FakeKubelet,
}

impl AgentAsPod {
    async fn start(scene: &Scene, pod: &str, extra: &[&str]) -> AgentAsPod {
        let kubelet = stowage_e2e::kubelet::FakeKubelet::new(scene.path("pods"));
        let port = stowage_e2e::free_port();
        let mut args: Vec<String> = [
            "--user",
            "--map-root-user",
            "--uts",
            "sh",
            "-c",
            r#"hostname "$0" && exec "$@""#,
            pod,
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect();
        args.push(
            stowage_e2e::binary("stowage-volume-agent")
                .display()
                .to_string(),
        );
        args.extend(
            [
                "--listen".to_string(),
                format!("127.0.0.1:{port}"),
                "--node-name".into(),
                "node-a".into(),
                "--pods-root".into(),
                kubelet.pods_root().display().to_string(),
                "--scratch-dir".into(),
                scene.path("agent-scratch").display().to_string(),
                "--restic-binary".into(),
                "restic".into(),
            ]
            .into_iter()
            .chain(extra.iter().map(|arg| arg.to_string())),
        );
        let mut process = stowage_e2e::TestProcess::start(
            "stowage-volume-agent",
            "unshare",
            &args,
            &BTreeMap::new(),
            &scene.path("logs"),
        );
        let url = format!("http://127.0.0.1:{port}");
        stowage_e2e::agent::wait_until_serving(&url, None, &mut process, Duration::from_secs(30))
            .await;
        AgentAsPod {
            process,
            url,
            port,
            kubelet,
        }
    }

    async fn client(
        &self,
    ) -> stowage_proto::v1::volume_agent_client::VolumeAgentClient<stowage_grpc::TracedChannel>
    {
        stowage_proto::v1::volume_agent_client::VolumeAgentClient::new(
            stowage_grpc::connect_with(&self.url, None)
                .await
                .expect("connecting to the agent"),
        )
    }

    /// A backup of a new pod volume holding `bytes` random bytes into `access`.
    fn backup_request(
        &self,
        operation: &str,
        bytes: usize,
        access: &RepositoryAccess,
    ) -> stowage_proto::v1::BackupVolumeRequest {
        let uid = stowage_e2e::kubelet::new_pod_uid();
        let dir = self.kubelet.pod(&uid).empty_dir("data");
        stowage_e2e::kubelet::write_random_file(&dir.join("blob"), bytes, 11);
        stowage_proto::v1::BackupVolumeRequest {
            operation_id: operation.into(),
            volume: Some(stowage_proto::v1::PodVolumeRef {
                namespace: "agentlocks".into(),
                pod_name: format!("app-{operation}"),
                pod_uid: uid,
                volume_name: "data".into(),
                source: stowage_proto::v1::VolumeSource::EmptyDir as i32,
                pv_name: String::new(),
                pvc_name: String::new(),
                pvc_uid: String::new(),
            }),
            repository: Some(access.clone()),
            backup_name: format!("backup-{operation}"),
            backup_uid: "7d3c1e2a-0000-4000-8000-00000000000a".into(),
            stable_identity: String::new(),
            extra_tags: Default::default(),
            parent_snapshot_id: String::new(),
            ..Default::default()
        }
    }
}

/// Waits for the lock of a running `restic backup` (the agent may run other restic commands
/// first, whose locks come and go): its id, pid and host name.
fn wait_for_backup_lock(restic: &ResticAs) -> (String, u32, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for id in restic.locks() {
            let output = restic.run(&["cat", "lock", &id, "--no-lock"]);
            let Ok(holder) = serde_json::from_slice::<serde_json::Value>(&output.stdout) else {
                continue;
            };
            let pid = holder["pid"].as_u64().unwrap_or_default() as u32;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.split(|b| *b == 0).any(|arg| arg == b"backup") {
                let host = holder["hostname"].as_str().unwrap_or_default().to_string();
                return (id, pid, host);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no lock of a running restic backup; locks: {:?}",
            restic.locks()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_of_an_agent_s_killed_restic_is_cleared_before_prune_and_a_running_one_s_is_kept() {
    let scene = Scene::new();
    let (_emulator, kube, env) = kubernetes(&scene).await;
    // The agent's pod stays there throughout: only its restic dies.
    let pod = "stowage-volume-agent-kill1";
    agent_pod(&kube, pod).await;
    stowage_e2e::kube::patch_pod(
        &kube,
        "stowage",
        pod,
        serde_json::json!({"status": {"podIP": "127.0.0.1"}}),
    )
    .await;
    // Backups slow enough to be caught running: 4 MiB at 64 KiB/s.
    let agent = AgentAsPod::start(&scene, pod, &["--upload-limit-kib", "64"]).await;
    // The default stale-lock age (5m) and restic's 30 minutes: no age rule removes a lock
    // written seconds ago.
    let service = scene
        .start(
            scene.local_args(&["--agent-port", &agent.port.to_string()]),
            env,
        )
        .await;
    let mut client = connect(&service).await;
    assert_ready(&ensure(&mut client, "agentlocks").await);
    let access = access(&mut client, "agentlocks").await;
    let restic = ResticAs::new(&access);
    let prune =
        async |client: &mut Client| maintain(client, "agentlocks", MaintenanceKind::Prune).await;

    // The agent's restic, SIGKILLed mid-backup: its lock stays, its pod and agent stay.
    let mut agent_client = agent.client().await;
    let killed_backup = tokio::spawn({
        let mut agent_client = agent_client.clone();
        let request = agent.backup_request("killed", 4 << 20, &access);
        async move { stowage_e2e::agent::run_backup(&mut agent_client, request).await }
    });
    let (lock, pid, host) = wait_for_backup_lock(&restic);
    assert_eq!(host, pod, "restic writes the pod's name into its lock");
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success(), "SIGKILL to the agent's restic {pid}");
    let failed = killed_backup.await.unwrap();
    assert!(
        failed.is_err(),
        "the backup of a killed restic fails: {failed:?}; agent log:\n{}",
        agent.process.log()
    );
    assert_eq!(
        restic.locks(),
        std::slice::from_ref(&lock),
        "the killed restic's lock stays"
    );

    let pruned = prune(&mut client).await;
    assert!(
        pruned.succeeded,
        "prune after clearing the killed restic's lock: {}; log:\n{}",
        pruned.message,
        service.process.log()
    );
    assert!(
        restic.locks().is_empty(),
        "the killed restic's lock is removed"
    );
    let log = service.process.log();
    let removal = log
        .lines()
        .find(|line| {
            line.contains(
                "removing the restic lock of a restic that no longer runs in its agent pod",
            )
        })
        .unwrap_or_else(|| panic!("the removal is logged; log:\n{log}"));
    for part in [
        lock.as_str(),
        pod,
        &pid.to_string(),
        "no restic with that pid",
    ] {
        assert!(
            removal.contains(part),
            "the removal names {part}: {removal}"
        );
    }

    // A restic of the agent that still runs: its lock is kept, and prune fails naming it.
    let running_backup = tokio::spawn({
        let request = agent.backup_request("running", 4 << 20, &access);
        async move { stowage_e2e::agent::run_backup(&mut agent_client, request).await }
    });
    let (lock, pid, _) = wait_for_backup_lock(&restic);
    let refused = prune(&mut client).await;
    assert!(!refused.succeeded, "prune ran past a running restic's lock");
    assert!(
        refused.message.contains("locked") && refused.message.contains(pod),
        "prune names the lock's holder: {}",
        refused.message
    );
    assert!(
        restic.locks().contains(&lock),
        "the running restic's lock (pid {pid}) is kept"
    );
    running_backup.abort();
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_schedule_state_and_namespace_overrides_apply() {
    let scene = Scene::new();
    let args = scene.local_args(&["--check-interval-override", "nightly=1h"]);
    let mut service = scene.start(args.clone(), BTreeMap::new()).await;
    let mut client = connect(&service).await;
    assert_ready(&ensure(&mut client, "nightly").await);
    assert_ready(&ensure(&mut client, "weekly").await);
    for kind in [MaintenanceKind::Check, MaintenanceKind::Prune] {
        let result = maintain(&mut client, "nightly", kind).await;
        assert!(result.succeeded, "{kind:?} failed: {}", result.message);
    }
    let before = get(&mut client, "nightly").await;
    let check = before.check.clone().unwrap();
    assert_eq!(check.interval_seconds, 3600, "per-namespace override");
    assert!(check.last_succeeded);
    let started = check.last_started.unwrap();
    assert_eq!(
        check.next_run.unwrap().seconds,
        started.seconds + 3600,
        "next run is one interval after the last start"
    );
    let weekly = get(&mut client, "weekly").await;
    assert_eq!(weekly.check.unwrap().interval_seconds, 24 * 3600);
    assert_eq!(weekly.prune.unwrap().interval_seconds, 7 * 24 * 3600);
    drop(client);

    service.process.stop(Duration::from_secs(10));
    let service = scene.start(args, BTreeMap::new()).await;
    let mut client = connect(&service).await;
    let after = get(&mut client, "nightly").await;
    assert_eq!(after, before, "status and schedule survive the restart");
    let listed = client
        .list_repositories(ListRepositoriesRequest {})
        .await
        .unwrap()
        .into_inner()
        .repositories;
    assert_eq!(listed.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_namespace_names_are_refused_with_invalid_argument() {
    let scene = Scene::new();
    let service = scene.start(scene.local_args(&[]), BTreeMap::new()).await;
    let mut client = connect(&service).await;
    let too_long = "a".repeat(64);
    for name in [
        "", "Team-A", "team_a", "../etc", "-x", "x-", "a.b", &too_long,
    ] {
        let namespace = name.to_string();
        let codes = [
            client
                .ensure_repository(EnsureRepositoryRequest {
                    namespace: namespace.clone(),
                })
                .await
                .map(drop),
            client
                .get_repository(GetRepositoryRequest {
                    namespace: namespace.clone(),
                })
                .await
                .map(drop),
            client
                .get_repository_access(GetRepositoryAccessRequest {
                    namespace: namespace.clone(),
                })
                .await
                .map(drop),
            client
                .run_maintenance(RunMaintenanceRequest {
                    namespace: namespace.clone(),
                    kind: MaintenanceKind::Check as i32,
                })
                .await
                .map(drop),
            client
                .acquire_lease(AcquireLeaseRequest {
                    namespace: namespace.clone(),
                    mode: LeaseMode::Shared as i32,
                    holder: "backup".into(),
                    ttl: None,
                    wait_timeout: None,
                })
                .await
                .map(drop),
            client
                .forget_backup(ForgetBackupRequest {
                    namespace: namespace.clone(),
                    backup_name: "b".into(),
                })
                .await
                .map(drop),
            client
                .rotate_key(RotateKeyRequest {
                    namespace: namespace.clone(),
                })
                .await
                .map(drop),
        ];
        for (call, result) in codes.into_iter().enumerate() {
            let status = result.expect_err("an invalid namespace is refused");
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "call {call} with `{name}`: {status}"
            );
        }
    }
    assert!(
        !scene.storage().join("restic").exists(),
        "nothing was created for an invalid name"
    );
    // A valid name that has no repository yet is NotFound, not InvalidArgument.
    let status = client
        .get_repository(GetRepositoryRequest {
            namespace: "fine".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_backup_removes_its_snapshots_and_rotate_key_replaces_the_key() {
    let scene = Scene::new();
    let service = scene.start(scene.local_args(&[]), BTreeMap::new()).await;
    let mut client = connect(&service).await;
    assert_ready(&ensure(&mut client, "app").await);
    let old = access(&mut client, "app").await;
    let restic = ResticAs::new(&old);
    let data = scene.path("data");
    std::fs::write(data.join("a.txt"), b"first").unwrap();
    restic.backup_dir(&data, "backup=monday");
    std::fs::write(data.join("a.txt"), b"second").unwrap();
    restic.backup_dir(&data, "backup=tuesday");
    let monday = restic.snapshot_ids(Some("backup=monday"));
    let tuesday = restic.snapshot_ids(Some("backup=tuesday"));
    assert_eq!((monday.len(), tuesday.len()), (1, 1));

    let mut forgotten = client
        .forget_backup(ForgetBackupRequest {
            namespace: "app".into(),
            backup_name: "monday".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .forgotten_snapshot_ids;
    forgotten.sort();
    assert_eq!(forgotten, monday);
    // A namespace that never had a repository has nothing to forget, and gets none.
    let nothing = client
        .forget_backup(ForgetBackupRequest {
            namespace: "never-used".into(),
            backup_name: "monday".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(nothing.forgotten_snapshot_ids.is_empty());
    assert!(!scene.storage().join("restic/never-used").exists());
    assert_eq!(restic.snapshot_ids(None), tuesday, "only tuesday is left");

    let rotated = client
        .rotate_key(RotateKeyRequest {
            namespace: "app".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ready(&rotated);
    let new = access(&mut client, "app").await;
    assert_ne!(new.password, old.password);
    let output = restic.run(&["cat", "config", "--no-lock"]);
    assert!(!output.status.success(), "the old key was removed");
    let with_new = ResticAs::new(&new);
    assert_eq!(with_new.snapshot_ids(None), tuesday);
    let keys: Vec<serde_json::Value> =
        serde_json::from_str(&with_new.ok(&["key", "list", "--json"])).unwrap();
    assert_eq!(keys.len(), 1, "old key removed, new key added");
    assert_ready(&ensure(&mut client, "app").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_repo_manager_regains_access_only_with_the_master_key() {
    let scene = Scene::new();
    let args = scene.local_args(&[]);
    let mut first = scene.start(args.clone(), BTreeMap::new()).await;
    let mut client_first = connect(&first).await;
    assert_ready(&ensure(&mut client_first, "dr").await);
    let original = access(&mut client_first, "dr").await.password;
    drop(client_first);
    first.process.stop(Duration::from_secs(10));
    // A new cluster: no repository records, only the bucket's restic data and sealed keys.
    std::fs::remove_dir_all(scene.storage().join("stowage/repositories")).unwrap();

    let wrong_key = BTreeMap::from([("STOWAGE_MASTER_KEY".to_string(), "not-it".to_string())]);
    let mut wrong = scene.start(args.clone(), wrong_key).await;
    let mut client_wrong = connect(&wrong).await;
    let refused = ensure(&mut client_wrong, "dr").await;
    assert_eq!(refused.phase, RepositoryPhase::Failed as i32);
    assert!(
        refused.message.contains("master key"),
        "{}",
        refused.message
    );
    drop(client_wrong);
    wrong.process.stop(Duration::from_secs(10));

    let right = scene.start(args, BTreeMap::new()).await;
    let mut client_right = connect(&right).await;
    assert_ready(&ensure(&mut client_right, "dr").await);
    assert_eq!(access(&mut client_right, "dr").await.password, original);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_live_in_kubernetes_secrets_and_are_recreated_from_the_bucket() {
    use k8s_openapi::api::core::v1::Secret;
    use kube::Api;

    let scene = Scene::new();
    let (_emulator, kube, env) = kubernetes(&scene).await;
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), "stowage");
    let args = scene.local_args(&[]);

    let mut first = scene.start(args.clone(), env.clone()).await;
    let mut client = connect(&first).await;
    let repository = ensure(&mut client, "team-k").await;
    assert_ready(&repository);
    assert_eq!(repository.secret_name, "stowage-repo-team-k");
    let password = access(&mut client, "team-k").await.password;

    let secret = secrets.get("stowage-repo-team-k").await.unwrap();
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("stowage.io/namespace").map(String::as_str),
        Some("team-k")
    );
    let stored = &secret.data.clone().unwrap()["repository-password"].0;
    assert_eq!(String::from_utf8_lossy(stored), password);

    // The repository is mirrored as Velero's ResticRepository, updated after maintenance.
    let resource = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("velero.io", "v1", "ResticRepository"),
        "resticrepositories",
    );
    let restic_repositories: Api<kube::api::DynamicObject> =
        Api::namespaced_with(kube.clone(), "stowage", &resource);
    let mirrored = restic_repositories
        .get("team-k-default")
        .await
        .unwrap_or_else(|error| panic!("{error}; log:\n{}", first.process.log()));
    assert_eq!(mirrored.data["spec"]["volumeNamespace"], "team-k");
    assert_eq!(
        mirrored.data["spec"]["resticIdentifier"],
        repository.url.as_str()
    );
    assert_eq!(mirrored.data["spec"]["maintenanceFrequency"], "168h0m0s");
    assert_eq!(mirrored.data["status"]["phase"], "Ready");
    assert!(mirrored.data["status"]["lastMaintenanceTime"].is_null());
    let pruned = maintain(&mut client, "team-k", MaintenanceKind::Prune).await;
    assert!(pruned.succeeded, "{}", pruned.message);
    let mirrored = restic_repositories.get("team-k-default").await.unwrap();
    assert!(
        mirrored.data["status"]["lastMaintenanceTime"].is_string(),
        "{:?}",
        mirrored.data["status"]
    );
    drop(client);
    first.process.stop(Duration::from_secs(10));

    // A new cluster: the Secret is gone, the bucket (and its sealed copy) remains.
    secrets
        .delete("stowage-repo-team-k", &Default::default())
        .await
        .unwrap();
    let second = scene.start(args, env).await;
    let mut client = connect(&second).await;
    assert_ready(&ensure(&mut client, "team-k").await);
    assert_eq!(access(&mut client, "team-k").await.password, password);
    let recreated = secrets.get("stowage-repo-team-k").await.unwrap();
    let stored = &recreated.data.unwrap()["repository-password"].0;
    assert_eq!(String::from_utf8_lossy(stored), password);
    assert_no_secret_leak(&second, &[&password, MASTER_KEY]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_runs_check_when_it_is_due() {
    let scene = Scene::new();
    let service = scene
        .start(
            scene.local_args(&["--check-interval", "2s", "--scheduler-tick", "1s"]),
            BTreeMap::new(),
        )
        .await;
    let mut client = connect(&service).await;
    let created = ensure(&mut client, "cron").await;
    assert_ready(&created);
    assert!(created.check.unwrap().last_finished.is_none());

    let deadline = Instant::now() + Duration::from_secs(60);
    let check = loop {
        let check = get(&mut client, "cron").await.check.unwrap();
        if check.last_finished.is_some() {
            break check;
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled check ran; log:\n{}",
            service.process.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        check.last_succeeded,
        "scheduled check failed: {}",
        check.last_error
    );
    assert_eq!(check.interval_seconds, 2);
    assert_eq!(
        check.next_run.unwrap().seconds,
        check.last_started.unwrap().seconds + 2
    );
    let prune = get(&mut client, "cron").await.prune.unwrap();
    assert!(prune.last_started.is_none(), "prune is not due for a week");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_maintenance_request_does_not_block_later_backups() {
    let scene = Scene::new();
    let service = scene.start(scene.local_args(&[]), BTreeMap::new()).await;
    let mut client = connect(&service).await;
    assert_ready(&ensure(&mut client, "quit").await);
    let backup = client
        .acquire_lease(AcquireLeaseRequest {
            namespace: "quit".into(),
            mode: LeaseMode::Shared as i32,
            holder: "backup/one".into(),
            ttl: None,
            wait_timeout: None,
        })
        .await
        .unwrap()
        .into_inner();

    // The caller gives up while the prune waits for the backup's lease.
    let mut request = tonic::Request::new(RunMaintenanceRequest {
        namespace: "quit".into(),
        kind: MaintenanceKind::Prune as i32,
    });
    request.set_timeout(Duration::from_millis(500));
    let status = client.run_maintenance(request).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status}"
    );
    client
        .release_lease(ReleaseLeaseRequest {
            lease_id: backup.lease_id,
        })
        .await
        .unwrap();

    // Nothing is left waiting or holding: the next backup gets its lease, and a prune runs.
    let next = client
        .acquire_lease(AcquireLeaseRequest {
            namespace: "quit".into(),
            mode: LeaseMode::Shared as i32,
            holder: "backup/two".into(),
            ttl: None,
            wait_timeout: Some(prost_types::Duration {
                seconds: 5,
                nanos: 0,
            }),
        })
        .await
        .expect("a shared lease after the abandoned prune")
        .into_inner();
    client
        .release_lease(ReleaseLeaseRequest {
            lease_id: next.lease_id,
        })
        .await
        .unwrap();
    let prune = maintain(&mut client, "quit", MaintenanceKind::Prune).await;
    assert!(prune.succeeded, "{}", prune.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn velero_repository_is_adopted_with_a_key_of_its_own_beside_velero_s() {
    let scene = Scene::new();
    // A repository as Velero's restic integration left it: `restic/<ns>`, static password.
    let legacy = RepositoryAccess {
        url: scene.storage().join("restic/legacy").display().to_string(),
        password: "static-passw0rd".into(),
        env: Default::default(),
    };
    let velero = ResticAs::new(&legacy);
    velero.ok(&["init"]);
    let data = scene.path("data");
    std::fs::write(data.join("old.txt"), b"from velero").unwrap();
    velero.backup_dir(&data, "backup=velero-era");
    let snapshots = velero.snapshot_ids(None);

    let mut refusing = scene
        .start(
            scene.local_args(&["--adopt-velero-repositories", "false"]),
            BTreeMap::new(),
        )
        .await;
    let mut client = connect(&refusing).await;
    let refused = ensure(&mut client, "legacy").await;
    assert_eq!(refused.phase, RepositoryPhase::Failed as i32);
    assert!(
        refused.message.contains("no password"),
        "{}",
        refused.message
    );
    drop(client);
    refusing.process.stop(Duration::from_secs(10));

    let service = scene.start(scene.local_args(&[]), BTreeMap::new()).await;
    let mut client = connect(&service).await;
    assert_ready(&ensure(&mut client, "legacy").await);
    // Adoption adds a key of stowage's own and keeps Velero's.
    let adopted = access(&mut client, "legacy").await;
    assert_ne!(adopted.password, "static-passw0rd");
    assert_eq!(ResticAs::new(&adopted).snapshot_ids(None), snapshots);
    assert!(velero.run(&["cat", "config", "--no-lock"]).status.success());

    client
        .rotate_key(RotateKeyRequest {
            namespace: "legacy".into(),
        })
        .await
        .unwrap();
    let own = access(&mut client, "legacy").await;
    assert_ne!(own.password, "static-passw0rd");
    assert_eq!(ResticAs::new(&own).snapshot_ids(None), snapshots);
    assert_ne!(own.password, adopted.password);
    // Rotation replaces stowage's key only; Velero's stays.
    assert!(
        velero.run(&["cat", "config", "--no-lock"]).status.success(),
        "Velero's static key was removed"
    );
    assert!(
        !ResticAs::new(&adopted)
            .run(&["cat", "config", "--no-lock"])
            .status
            .success(),
        "stowage's first key was not removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn velero_repository_with_a_replaced_password_opens_only_with_that_password() {
    const VELERO_PASSWORD: &str = "operator-chosen-velero-password";
    let scene = Scene::new();
    let legacy = RepositoryAccess {
        url: scene.storage().join("restic/legacy").display().to_string(),
        password: VELERO_PASSWORD.into(),
        env: Default::default(),
    };
    let velero = ResticAs::new(&legacy);
    velero.ok(&["init"]);
    let data = scene.path("data");
    std::fs::write(data.join("old.txt"), b"from velero").unwrap();
    velero.backup_dir(&data, "backup=velero-era");
    let snapshots = velero.snapshot_ids(None);

    // Velero's default password does not open it: reported, and the repository left alone.
    let mut defaulted = scene.start(scene.local_args(&[]), BTreeMap::new()).await;
    let mut client = connect(&defaulted).await;
    let refused = ensure(&mut client, "legacy").await;
    assert_eq!(refused.phase, RepositoryPhase::Failed as i32);
    assert!(
        refused.message.contains("wrong password"),
        "{}",
        refused.message
    );
    drop(client);
    defaulted.process.stop(Duration::from_secs(10));
    assert_eq!(velero.snapshot_ids(None), snapshots);

    let password_file = scene.path("velero-credentials").join("repository-password");
    std::fs::write(&password_file, format!("{VELERO_PASSWORD}\n")).unwrap();
    let service = scene
        .start(
            scene.local_args(&[
                "--velero-repository-password-file",
                password_file.to_str().unwrap(),
            ]),
            BTreeMap::new(),
        )
        .await;
    let mut client = connect(&service).await;
    assert_ready(&ensure(&mut client, "legacy").await);
    let adopted = access(&mut client, "legacy").await;
    assert_ne!(adopted.password, VELERO_PASSWORD);
    assert_eq!(ResticAs::new(&adopted).snapshot_ids(None), snapshots);
    assert!(velero.run(&["cat", "config", "--no-lock"]).status.success());
    assert_no_secret_leak(&service, &[VELERO_PASSWORD]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_renewal_extends_it_and_release_reports_whether_it_was_held() {
    let scene = Scene::new();
    let service = scene.start(scene.local_args(&[]), BTreeMap::new()).await;
    let mut client = connect(&service).await;
    let seconds = |s: i64| {
        Some(prost_types::Duration {
            seconds: s,
            nanos: 0,
        })
    };
    let lease = client
        .acquire_lease(AcquireLeaseRequest {
            namespace: "renew".into(),
            mode: LeaseMode::Exclusive as i32,
            holder: "maintenance/test".into(),
            ttl: seconds(60),
            wait_timeout: seconds(0),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lease.mode, LeaseMode::Exclusive as i32);
    assert_eq!(lease.holder, "maintenance/test");
    let renewed = client
        .renew_lease(stowage_proto::v1::RenewLeaseRequest {
            lease_id: lease.lease_id.clone(),
            ttl: seconds(3600),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        renewed.expires.unwrap().seconds > lease.expires.unwrap().seconds + 3000,
        "renewal moved the expiry an hour out"
    );
    let released = |client: &mut Client, id: String| {
        let mut client = client.clone();
        async move {
            client
                .release_lease(ReleaseLeaseRequest { lease_id: id })
                .await
                .unwrap()
                .into_inner()
                .released
        }
    };
    assert!(released(&mut client, lease.lease_id.clone()).await);
    assert!(!released(&mut client, lease.lease_id.clone()).await);
    let status = client
        .renew_lease(stowage_proto::v1::RenewLeaseRequest {
            lease_id: lease.lease_id,
            ttl: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let bad_mode = client
        .acquire_lease(AcquireLeaseRequest {
            namespace: "renew".into(),
            mode: LeaseMode::Unspecified as i32,
            holder: "x".into(),
            ttl: None,
            wait_timeout: None,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_mode.code(), Code::InvalidArgument);
}

/// `base64 -w0` of `data` (coreutils), for writing a key file the way the service does.
fn base64(data: &[u8]) -> String {
    let mut child = Command::new("base64")
        .arg("-w0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running base64");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_key_rotation_is_finished_by_the_next_ensure() {
    let scene = Scene::new();
    let mut service = scene.start(scene.local_args(&[]), BTreeMap::new()).await;
    let mut client = connect(&service).await;
    assert_ready(&ensure(&mut client, "turn").await);
    let old = access(&mut client, "turn").await;
    drop(client);
    service.process.stop(Duration::from_secs(10));

    // A rotation that got as far as restic (new key added, old key removed) and died before
    // the new password became current: only the pending password opens the repository.
    let new_password = "the-pending-password-of-an-interrupted-rotation";
    let restic = ResticAs::new(&old);
    let old_key: Vec<serde_json::Value> =
        serde_json::from_str(&restic.ok(&["key", "list", "--json"])).unwrap();
    let new_password_file = scene.path("pending").join("password");
    std::fs::write(&new_password_file, new_password).unwrap();
    restic.ok(&[
        "key",
        "add",
        "--new-password-file",
        &new_password_file.display().to_string(),
    ]);
    let with_new = ResticAs::with_password(&old, new_password);
    with_new.ok(&["key", "remove", old_key[0]["id"].as_str().unwrap()]);
    // The bucket copy as versions that ran without a master key left it: unsealed
    // (`encryption: none`). It is still read, and written again sealed.
    let passwords = serde_json::json!({"current": old.password, "pending": new_password});
    let key_file = scene.storage().join("stowage/keys/turn.json");
    std::fs::write(
        &key_file,
        serde_json::json!({
            "version": 1,
            "namespace": "turn",
            "encryption": "none",
            "nonce": "",
            "data": base64(passwords.to_string().as_bytes()),
        })
        .to_string(),
    )
    .unwrap();

    let service = scene.start(scene.local_args(&[]), BTreeMap::new()).await;
    let mut client = connect(&service).await;
    assert_ready(&ensure(&mut client, "turn").await);
    assert_eq!(access(&mut client, "turn").await.password, new_password);
    assert_sealed(
        &std::fs::read(&key_file).unwrap(),
        &[&old.password, new_password],
    );
    assert!(
        service.process.log().contains("sealed bucket copies"),
        "the service says it sealed an unsealed copy"
    );
    // Opens with the new password on the next call without any pending one left.
    assert_ready(&ensure(&mut client, "turn").await);
}

/// `copy` (a `stowage/keys/<ns>.json`) is sealed: AES-256-GCM with a nonce, and none of
/// `passwords` in it, neither in the clear nor base64-encoded.
fn assert_sealed(copy: &[u8], passwords: &[&str]) {
    let text = String::from_utf8_lossy(copy);
    let file: serde_json::Value = serde_json::from_slice(copy)
        .unwrap_or_else(|error| panic!("key copy is not JSON ({error}): {text}"));
    assert_eq!(file["encryption"], "AES-256-GCM", "{text}");
    assert!(
        !file["nonce"].as_str().unwrap_or_default().is_empty(),
        "{text}"
    );
    let data = decode_base64(file["data"].as_str().unwrap_or_default());
    for password in passwords {
        assert!(
            !text.contains(password),
            "a password is in the clear: {text}"
        );
        assert!(
            !String::from_utf8_lossy(&data).contains(password),
            "a password is only base64-encoded: {text}"
        );
    }
}

/// `base64 -d` of `text` (coreutils).
fn decode_base64(text: &str) -> Vec<u8> {
    let mut child = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running base64");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "`{text}` is not base64");
    output.stdout
}

/// Every `stowage/keys/*.json` in the bucket directory `storage`.
fn key_copies(storage: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(storage.join("stowage/keys"))
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| {
                    (
                        entry.file_name().to_string_lossy().into_owned(),
                        std::fs::read(entry.path()).unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repo_manager_with_kubernetes_and_no_master_key_creates_the_secret_and_seals_every_copy() {
    use k8s_openapi::api::core::v1::Secret;
    use kube::Api;

    let scene = Scene::new();
    let (_emulator, kube, mut env) = kubernetes(&scene).await;
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), "stowage");
    assert!(
        secrets
            .get_opt("stowage-master-key")
            .await
            .unwrap()
            .is_none(),
        "no master key Secret before the first start"
    );
    // No master key given: neither STOWAGE_MASTER_KEY nor a file.
    env.insert("STOWAGE_MASTER_KEY".into(), String::new());
    let args = scene.local_args(&[]);

    let mut first = scene.start(args.clone(), env.clone()).await;
    let created = secrets
        .get("stowage-master-key")
        .await
        .unwrap_or_else(|error| panic!("{error}; log:\n{}", first.process.log()));
    let master = String::from_utf8(
        created.data.clone().unwrap_or_default()["master-key"]
            .0
            .clone(),
    )
    .unwrap();
    assert_eq!(master.len(), 64, "32 random bytes, hex-encoded");
    assert!(master.bytes().all(|b| b.is_ascii_hexdigit()));

    let mut client = connect(&first).await;
    let mut passwords = Vec::new();
    for namespace in ["sealed-a", "sealed-b"] {
        assert_ready(&ensure(&mut client, namespace).await);
        passwords.push(access(&mut client, namespace).await.password);
    }
    // A rotation writes the copy twice more (with the pending password, then the new one).
    client
        .rotate_key(RotateKeyRequest {
            namespace: "sealed-a".into(),
        })
        .await
        .unwrap();
    let rotated = access(&mut client, "sealed-a").await.password;
    passwords.push(rotated.clone());
    let copies = key_copies(&scene.storage());
    assert_eq!(
        copies.keys().collect::<Vec<_>>(),
        ["sealed-a.json", "sealed-b.json"]
    );
    let password_refs: Vec<&str> = passwords.iter().map(String::as_str).collect();
    for copy in copies.values() {
        assert_sealed(copy, &password_refs);
    }
    let mut secrets_of_the_run = password_refs.clone();
    secrets_of_the_run.push(&master);
    assert_no_secret_leak(&first, &secrets_of_the_run);
    drop(client);
    first.process.stop(Duration::from_secs(10));

    // A restart reads the Secret it created; it is neither replaced nor rewritten.
    let mut second = scene.start(args, env).await;
    let kept = secrets.get("stowage-master-key").await.unwrap();
    assert_eq!(
        kept.metadata.resource_version,
        created.metadata.resource_version
    );
    let mut client = connect(&second).await;
    assert_eq!(access(&mut client, "sealed-a").await.password, rotated);
    drop(client);
    second.process.stop(Duration::from_secs(10));

    // The copies are sealed with that Secret's key: a repo-manager without Kubernetes, given
    // only the key (in a file), opens them from the bucket alone.
    let key_file = scene.path("master").join("master-key");
    std::fs::write(&key_file, &master).unwrap();
    let from_file = scene
        .start(
            scene.local_args(&["--master-key-file", &key_file.display().to_string()]),
            BTreeMap::from([("STOWAGE_MASTER_KEY".to_string(), String::new())]),
        )
        .await;
    let mut client = connect(&from_file).await;
    assert_ready(&ensure(&mut client, "sealed-b").await);
    assert_eq!(access(&mut client, "sealed-a").await.password, rotated);
    assert_eq!(access(&mut client, "sealed-b").await.password, passwords[1]);
}

/// Starts a repo-manager on local storage with `extra` flags and `master_key` (empty: none)
/// that must refuse to start: waits for it to exit, asserts it failed, and returns its log.
async fn refused_start(scene: &Scene, extra: &[&str], master_key: &str) -> String {
    let mut args = vec![
        "--listen".to_string(),
        format!("127.0.0.1:{}", stowage_e2e::free_port()),
    ];
    args.extend(scene.local_args(extra));
    let mut process = stowage_e2e::TestProcess::start(
        "stowage-repo-manager",
        stowage_e2e::binary("stowage-repo-manager"),
        &args,
        &BTreeMap::from([("STOWAGE_MASTER_KEY".to_string(), master_key.to_string())]),
        &scene.path("logs"),
    );
    // A deadline only so a hang fails instead of blocking the suite.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = process.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the repo-manager is still running; log:\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = process.log();
    assert!(!status.success(), "exit status {status}; log:\n{log}");
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repo_manager_without_kubernetes_or_master_key_refuses_to_start_naming_the_flag() {
    let scene = Scene::new();
    let log = refused_start(&scene, &[], "").await;
    assert!(
        log.contains("no master key") && log.contains("--master-key-file"),
        "the refusal names the flag; log:\n{log}"
    );
    assert!(
        key_copies(&scene.storage()).is_empty(),
        "nothing was written to the bucket"
    );
}

/// A restic that appends each invocation's arguments (never a password: the repo-manager
/// passes it in a file) to `runs`, and fails `restic check` while the file `fail-check`
/// exists beside it.
struct CountingRestic {
    binary: PathBuf,
    runs: PathBuf,
    fail_check: PathBuf,
}

impl CountingRestic {
    fn new(dir: &Path) -> CountingRestic {
        use std::os::unix::fs::PermissionsExt;
        let binary = dir.join("counting-restic");
        let runs = dir.join("runs");
        let fail_check = dir.join("fail-check");
        std::fs::write(
            &binary,
            format!(
                "#!/bin/sh\necho \"$*\" >> '{runs}'\n\
                 if [ -e '{fail}' ]; then case \" $* \" in *\" check \"*) \
                 echo 'check failed on purpose' >&2; exit 1;; esac; fi\n\
                 exec restic \"$@\"\n",
                runs = runs.display(),
                fail = fail_check.display(),
            ),
        )
        .unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        CountingRestic {
            binary,
            runs,
            fail_check,
        }
    }

    fn count(&self) -> usize {
        std::fs::read_to_string(&self.runs)
            .map(|text| text.lines().count())
            .unwrap_or(0)
    }

    fn path(&self) -> String {
        self.binary.display().to_string()
    }
}

/// How many restic commands one EnsureRepository ran.
async fn restic_runs_of_ensure(
    client: &mut Client,
    restic: &CountingRestic,
    namespace: &str,
) -> usize {
    let before = restic.count();
    assert_ready(&ensure(client, namespace).await);
    restic.count() - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recently_verified_repository_is_ensured_without_restic_until_something_invalidates_it() {
    let scene = Scene::new();
    let restic = CountingRestic::new(&scene.path("bin"));
    let mut service = scene
        .start(
            scene.local_args(&["--restic-binary", &restic.path()]),
            BTreeMap::new(),
        )
        .await;
    let mut client = connect(&service).await;
    assert!(restic_runs_of_ensure(&mut client, &restic, "quick").await > 0);
    assert_eq!(
        restic_runs_of_ensure(&mut client, &restic, "quick").await,
        0,
        "verified moments ago by this process"
    );
    assert!(
        service
            .process
            .log()
            .contains("ready without running restic"),
        "the fast path logs at debug"
    );
    // Another namespace has its own verification.
    assert!(restic_runs_of_ensure(&mut client, &restic, "other").await > 0);

    // A failed check may have left its restic lock: the next ensure verifies again.
    std::fs::write(&restic.fail_check, b"").unwrap();
    let failed = maintain(&mut client, "quick", MaintenanceKind::Check).await;
    assert!(!failed.succeeded, "the wrapper fails check");
    std::fs::remove_file(&restic.fail_check).unwrap();
    assert!(restic_runs_of_ensure(&mut client, &restic, "quick").await > 0);
    assert_eq!(
        restic_runs_of_ensure(&mut client, &restic, "quick").await,
        0
    );
    assert_eq!(
        restic_runs_of_ensure(&mut client, &restic, "other").await,
        0,
        "maintenance of one namespace leaves the other's verification"
    );

    // A check that succeeds vouches for the same key and leaves no lock.
    let passed = maintain(&mut client, "quick", MaintenanceKind::Check).await;
    assert!(passed.succeeded, "check failed: {}", passed.message);
    assert_eq!(
        restic_runs_of_ensure(&mut client, &restic, "quick").await,
        0
    );

    // A new key: the next ensure opens the repository with it.
    let old = access(&mut client, "quick").await;
    assert_ready(
        &client
            .rotate_key(RotateKeyRequest {
                namespace: "quick".into(),
            })
            .await
            .unwrap()
            .into_inner(),
    );
    assert_ne!(access(&mut client, "quick").await.password, old.password);
    assert!(restic_runs_of_ensure(&mut client, &restic, "quick").await > 0);
    assert_eq!(
        restic_runs_of_ensure(&mut client, &restic, "quick").await,
        0
    );

    // Forget takes restic's exclusive lock and prunes: verified again afterwards.
    client
        .forget_backup(ForgetBackupRequest {
            namespace: "quick".into(),
            backup_name: "nothing-to-forget".into(),
        })
        .await
        .unwrap();
    assert!(restic_runs_of_ensure(&mut client, &restic, "quick").await > 0);

    // A repository gone from the location behind the repo-manager's back is noticed by the
    // next ensure, which initialises it again under the stored key.
    std::fs::remove_dir_all(scene.storage().join("restic/quick")).unwrap();
    assert!(restic_runs_of_ensure(&mut client, &restic, "quick").await > 0);
    assert!(scene.storage().join("restic/quick/config").exists());
    assert_eq!(
        restic_runs_of_ensure(&mut client, &restic, "quick").await,
        0
    );
    drop(client);
    service.process.stop(Duration::from_secs(10));

    // The verification lives in memory: a restarted repo-manager verifies first.
    let service = scene
        .start(
            scene.local_args(&[
                "--restic-binary",
                &restic.path(),
                "--repository-verify-interval",
                "0",
            ]),
            BTreeMap::new(),
        )
        .await;
    let mut client = connect(&service).await;
    // Interval 0: every ensure runs restic.
    for _ in 0..2 {
        assert!(restic_runs_of_ensure(&mut client, &restic, "quick").await > 0);
    }
    assert!(
        !service
            .process
            .log()
            .contains("ready without running restic")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repo_manager_refuses_a_restic_older_than_0_17_naming_both_versions() {
    use std::os::unix::fs::PermissionsExt as _;
    let scene = Scene::new();
    let stub = scene.path("bin").join("old-restic");
    // Stands in for Debian 12's restic, whatever it is asked.
    std::fs::write(
        &stub,
        "#!/bin/sh\necho 'restic 0.14.0 compiled with go1.19.8 on linux/amd64'\n",
    )
    .unwrap();
    std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = refused_start(
        &scene,
        &["--restic-binary", &stub.display().to_string()],
        MASTER_KEY,
    )
    .await;
    assert!(
        log.contains("restic 0.14.0 is too old") && log.contains("needs restic 0.17.0 or newer"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restic_runs_without_the_master_key_or_any_stowage_setting_in_its_environment() {
    use std::os::unix::fs::PermissionsExt as _;
    let scene = Scene::new();
    let recordings = scene.path("environments");
    let wrapper = scene.path("bin").join("restic");
    // Records the environment restic is started with (what /proc/<pid>/environ shows for the
    // whole run: exec keeps the pid and the environment), then becomes the real restic.
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncat /proc/$$/environ > '{}/'$$\nexec restic \"$@\"\n",
            recordings.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let service = scene
        .start(
            scene.local_args(&["--restic-binary", &wrapper.display().to_string()]),
            BTreeMap::new(),
        )
        .await;
    let mut client = connect(&service).await;
    assert_ready(&ensure(&mut client, "environ").await);
    let password = access(&mut client, "environ").await.password;

    let mut runs = 0;
    let mut against_the_repository = 0;
    for entry in std::fs::read_dir(&recordings).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let variables: Vec<&str> = text.split('\0').filter(|v| !v.is_empty()).collect();
        runs += 1;
        assert!(
            variables.iter().any(|v| v.starts_with("PATH=")),
            "{variables:?}"
        );
        if variables
            .iter()
            .any(|v| v.starts_with("RESTIC_REPOSITORY="))
        {
            against_the_repository += 1;
        }
        for variable in &variables {
            assert!(
                !variable.starts_with("STOWAGE_")
                    && !variable.contains(MASTER_KEY)
                    && !variable.contains(&password),
                "`{variable}` reached restic: {variables:?}"
            );
        }
    }
    assert!(
        runs >= 2 && against_the_repository >= 1,
        "version and the repository's commands were recorded ({runs} runs)"
    );
}

/// A repo-manager killed in the middle of a prune (its pod, restic included, gone): the next
/// one finds the run unfinished in the repository's record, records it failed as interrupted,
/// clears the dead restic's lock and runs the prune again to its end, though the prune is not
/// due for a week.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prune_whose_repo_manager_was_killed_is_recorded_interrupted_and_run_again_by_the_next() {
    let scene = Scene::new();
    let marker = scene.path("wrapper").join("first-prune.pid");
    // The first prune hangs before restic starts (its pid written for the test to kill, as
    // the pod's death would); every later prune is restic's own.
    let wrapper = stowage_e2e::restic::restic_wrapper(
        &scene.path("wrapper"),
        "restic",
        &format!(
            "case \" $* \" in *\" prune \"*) if [ ! -f {marker} ]; then echo $$ > {marker}; \
             sleep 300; fi;; esac\nexec restic \"$@\"\n",
            marker = marker.display()
        ),
    );
    let args = scene.local_args(&[
        "--restic-binary",
        &wrapper.display().to_string(),
        "--scheduler-tick",
        "1s",
        "--stale-lock-age",
        "1s",
    ]);
    let mut first = scene.start(args.clone(), BTreeMap::new()).await;
    let mut client = connect(&first).await;
    assert_ready(&ensure(&mut client, "shop").await);
    let restic = ResticAs::new(&access(&mut client, "shop").await);
    let prune = tokio::spawn({
        let mut client = client.clone();
        async move {
            client
                .run_maintenance(RunMaintenanceRequest {
                    namespace: "shop".into(),
                    kind: MaintenanceKind::Prune as i32,
                })
                .await
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the prune never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The pod dies: the repo-manager and its restic with it, leaving the restic's lock.
    first.process.kill();
    let pid = std::fs::read_to_string(&marker).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status();
    let _ = prune.await;
    let mut dead = restic.backup_from_stdin("dead-prune", "backup=dead");
    wait_for_locks(&restic, 1);
    dead.kill().unwrap();
    dead.wait().unwrap();
    assert_eq!(restic.locks().len(), 1, "the killed restic's lock stays");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let next = scene.start(args, BTreeMap::new()).await;
    let mut client = connect(&next).await;
    let recorded = get(&mut client, "shop").await.prune.unwrap();
    assert!(!recorded.last_succeeded);
    assert!(
        recorded.last_error.contains("interrupted"),
        "{}",
        recorded.last_error
    );
    let interrupted_at = recorded.last_started.unwrap().seconds;
    let deadline = Instant::now() + Duration::from_secs(120);
    let prune = loop {
        let prune = get(&mut client, "shop").await.prune.unwrap();
        if prune.last_succeeded {
            break prune;
        }
        assert!(
            Instant::now() < deadline,
            "the interrupted prune did not run again: {prune:?}; log:\n{}",
            next.process.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(prune.last_started.unwrap().seconds >= interrupted_at);
    assert!(restic.locks().is_empty(), "no stale lock left");
    // Ran once: not due again for a week.
    assert!(prune.next_run.unwrap().seconds > prune.last_started.unwrap().seconds + 86_400);
}
