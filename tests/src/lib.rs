//! Test support shared by every end-to-end test: locating the workspace's binaries, starting
//! them as real processes on free ports with their logs in a temp dir, and waiting until they
//! answer the gRPC health service. Each peer the tests need (restic repositories, the
//! S3-compatible server, the Kubernetes API emulator, the OTLP collector) has its own module.

pub mod agent;
pub mod api;
pub mod cli;
pub mod ha;
pub mod kube;
pub mod kubelet;
pub mod otlp;
pub mod pki;
pub mod processes;
pub mod restic;
pub mod restore_helper;
pub mod s3;
pub mod stack;
pub mod velero_fixture;

use std::{
    collections::BTreeMap,
    ffi::OsString,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

/// The repository root (where the workspace `Cargo.toml` is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Path of a binary built by this workspace, next to the running test executable
/// (`target/<profile>/deps/<test>` → `target/<profile>/<name>`). Build them first with
/// `cargo build --workspace --bins`, as `scripts/test` does.
pub fn binary(name: &str) -> PathBuf {
    let test_exe = std::env::current_exe().expect("the test knows its own path");
    let profile_dir = test_exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "binary {} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("binding an ephemeral port on loopback")
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped, with its stdout and
/// stderr in `log_path`.
///
/// Dropping blocks the thread while the process drains its connections; a gRPC server waits
/// for its clients' connections to close, so tests holding clients should run on a
/// multi-threaded runtime (`#[tokio::test(flavor = "multi_thread")]`), or the drop waits
/// for the SIGKILL deadline.
pub struct TestProcess {
    pub name: String,
    pub child: Child,
    pub log_path: PathBuf,
}

impl TestProcess {
    /// Starts `program` with `args` and `envs`; output goes to `<log_dir>/<name>.log`.
    ///
    /// Metrics are off unless `envs` or `args` ask for them: every stowage binary would
    /// otherwise bind the default `0.0.0.0:9090`, and all but the first process on the machine
    /// would log an error (tests check that clean runs log none). A test that scrapes gives
    /// `--metrics-listen` or `STOWAGE_METRICS_LISTEN` a free port.
    pub fn start(
        name: &str,
        program: impl Into<OsString>,
        args: &[String],
        envs: &BTreeMap<String, String>,
        log_dir: &Path,
    ) -> TestProcess {
        let log_path = log_dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).expect("creating the process log file");
        let program = program.into();
        let child = Command::new(&program)
            .args(args)
            .env("STOWAGE_METRICS_LISTEN", "off")
            .envs(envs)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log file handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("starting {name} ({program:?}): {error}"));
        TestProcess {
            name: name.to_string(),
            child,
            log_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process has written so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to `grace` for the exit, then SIGKILLs.
    pub fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status();
}

/// Waits until the gRPC server at `url` reports SERVING for `service` (`""` = the server as a
/// whole), or panics after `timeout` with the process log.
pub async fn wait_for_health(
    url: &str,
    service: &str,
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
        match health_status(url, service).await {
            Ok(ServingStatus::Serving) => return,
            Ok(other) => last_error = format!("status {other:?}"),
            Err(error) => last_error = error,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{} at {url} not healthy after {timeout:?} ({last_error}); log:\n{}",
        process.name,
        process.log()
    );
}

/// One health check of `service` at `url`.
pub async fn health_status(url: &str, service: &str) -> Result<ServingStatus, String> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|error| error.to_string())?
        .connect()
        .await
        .map_err(|error| error.to_string())?;
    let response = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|status| status.to_string())?;
    Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
}

/// A stowage service binary started on a free loopback port.
pub struct ServiceProcess {
    pub process: TestProcess,
    /// `http://127.0.0.1:<port>`
    pub url: String,
    pub port: u16,
}

/// Starts workspace binary `binary_name` with `--listen 127.0.0.1:<free port>` plus `args`
/// and `envs`, and waits until it serves `grpc_service` (e.g. `stowage.v1.Orchestrator`).
pub async fn start_service(
    binary_name: &str,
    grpc_service: &str,
    args: &[String],
    envs: &BTreeMap<String, String>,
    log_dir: &Path,
) -> ServiceProcess {
    let port = free_port();
    let mut all_args = vec!["--listen".to_string(), format!("127.0.0.1:{port}")];
    all_args.extend_from_slice(args);
    let mut process =
        TestProcess::start(binary_name, binary(binary_name), &all_args, envs, log_dir);
    let url = format!("http://127.0.0.1:{port}");
    wait_for_health(&url, grpc_service, &mut process, Duration::from_secs(30)).await;
    ServiceProcess { process, url, port }
}

/// The CLI's failure after it waited out a server that refused its connections: stderr is the
/// one waiting line naming `server` (the CLI waits up to 30 s, as through a takeover), then one
/// sentence, which is returned. Panics when the CLI succeeded or said anything else.
pub fn failure_after_waiting_for(output: &std::process::Output, server: &str) -> String {
    assert!(
        !output.status.success(),
        "expected a failure, got success; stdout:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let text = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "expected the waiting line and one sentence on stderr, got:\n{text}"
    );
    assert!(
        lines[0].starts_with(&format!(
            "Waiting for the stowage server at {server} (up to 30 s)"
        )),
        "{text}"
    );
    lines[1].to_string()
}
