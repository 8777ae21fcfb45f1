//! The demo behind `bash scripts/demo`: the whole backup-and-restore journey on one machine,
//! on embedded defaults. It starts the stack the end-to-end tests use (Kubernetes API
//! emulator, local-directory storage, repo-manager, one volume agent, orchestrator), seeds the
//! example pod `foo/sample`, then drives everything through the `stowage` CLI as a user would,
//! playing the kubelet's part where a cluster would. It exits non-zero if any restored file
//! differs, and stops every process it started on exit, Ctrl-C or SIGTERM.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use stowage_e2e::{
    binary,
    kube::{mark_init_container_running, patch_pod, seed_example, wait_for_pod},
    kubelet::{manifest, write_sample_tree},
    otlp::OtlpCollector,
    stack::{Stack, StackOptions},
};
use tokio_util::sync::CancellationToken;

const NAMESPACE: &str = "foo";
const POD: &str = "sample";
const NODE: &str = "node-a";
const BACKUP: &str = "demo";
const RESTORE: &str = "demo-restore";
/// The restore-helper init container the orchestrator puts first in recreated pods.
const RESTORE_HELPER: &str = "restore-wait";

/// Why the demo stopped early.
#[derive(Debug)]
enum Stop {
    Interrupted,
    Failed(String),
}

type Step<T> = Result<T, Stop>;

fn failed(message: impl Into<String>) -> Stop {
    Stop::Failed(message.into())
}

fn heading(text: &str) {
    println!("\n=== {text}");
}

/// Runs `stowage <args>` against the demo's orchestrator with the terminal as its output, so
/// `--wait` draws its progress bar; stops it when the demo is interrupted.
async fn stowage(server: &str, args: &[&str], stop: &CancellationToken) -> Step<()> {
    println!("$ stowage {}", args.join(" "));
    let mut child = tokio::process::Command::new(binary("stowage"))
        .args(args)
        .env("STOWAGE_SERVER", server)
        // The demo's stack is plaintext: a context the user saved must not add its TLS.
        .env("STOWAGE_CONFIG", "/dev/null")
        .env_remove("STOWAGE_OUTPUT")
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| failed(format!("starting stowage: {error}")))?;
    tokio::select! {
        _ = stop.cancelled() => Err(Stop::Interrupted),
        status = child.wait() => match status {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(failed(format!("`stowage {}` exited with {status}", args.join(" ")))),
            Err(error) => Err(failed(format!("waiting for stowage: {error}"))),
        },
    }
}

/// `stowage <args> -o json`, parsed.
async fn stowage_json(server: &str, args: &[&str]) -> Step<serde_json::Value> {
    let output = tokio::process::Command::new(binary("stowage"))
        .args(args)
        .args(["-o", "json"])
        .env("STOWAGE_SERVER", server)
        .env("STOWAGE_CONFIG", "/dev/null")
        .output()
        .await
        .map_err(|error| failed(format!("running stowage: {error}")))?;
    if !output.status.success() {
        return Err(failed(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|error| failed(format!("stowage printed no JSON: {error}")))
}

/// SHA-256 of every regular file under `dir` (not `.velero`, where the agent writes its done
/// files), keyed by relative path, as `sha256sum` computes it.
fn checksums(dir: &Path) -> Step<BTreeMap<String, String>> {
    let mut files = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let entries = std::fs::read_dir(dir.join(&relative))
            .map_err(|error| failed(format!("reading {}: {error}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(|error| failed(error.to_string()))?;
            let path = relative.join(entry.file_name());
            if path == Path::new(".velero") {
                continue;
            }
            let kind = entry
                .file_type()
                .map_err(|error| failed(error.to_string()))?;
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                files.push(path);
            }
        }
    }
    if files.is_empty() {
        return Ok(BTreeMap::new());
    }
    let output = std::process::Command::new("sha256sum")
        .arg("--")
        .args(&files)
        .current_dir(dir)
        .output()
        .map_err(|error| failed(format!("running sha256sum: {error}")))?;
    if !output.status.success() {
        return Err(failed(String::from_utf8_lossy(&output.stderr).into_owned()));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once("  "))
        .map(|(sum, path)| (path.to_string(), sum.to_string()))
        .collect())
}

/// Compares restored checksums against the originals, printing one line per file; the
/// number of files that differ or are missing.
fn compare(
    volume: &str,
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> usize {
    let mut bad = 0;
    for (path, sum) in before {
        let verdict = match after.get(path) {
            Some(restored) if restored == sum => "ok",
            Some(_) => {
                bad += 1;
                "DIFFERS"
            }
            None => {
                bad += 1;
                "MISSING"
            }
        };
        println!(
            "  {verdict:<8} {}  {volume}/{path}",
            &sum[..16.min(sum.len())]
        );
    }
    for path in after.keys().filter(|path| !before.contains_key(*path)) {
        bad += 1;
        println!("  EXTRA    {volume}/{path}");
    }
    bad
}

async fn run(
    stack: &Stack,
    collector: Option<&OtlpCollector>,
    stop: &CancellationToken,
) -> Step<()> {
    let server = stack.orchestrator.url.as_str();
    let kube = stack.kube_client().await;
    let kubelet = &stack.kubelets[NODE];

    heading("Seeding the example: pod foo/sample with volumes pvc-volume and emptydir-volume");
    let example = seed_example(&kube, NAMESPACE, NODE, Some("pvc-volume,emptydir-volume")).await;
    let pod_dir = kubelet.pod(&example.pod_uid());
    let pvc_dir = pod_dir.pv("kubernetes.io~local-volume", &example.pv_name());
    let empty_dir = pod_dir.empty_dir("emptydir-volume");
    write_sample_tree(&pvc_dir, "pvc");
    write_sample_tree(&empty_dir, "emptydir");
    let pvc_sums = checksums(&pvc_dir)?;
    let empty_sums = checksums(&empty_dir)?;
    let pvc_manifest = manifest(&pvc_dir, false);
    let empty_manifest = manifest(&empty_dir, false);
    println!(
        "annotated backup.velero.io/backup-volumes=pvc-volume,emptydir-volume; {} + {} files under {}",
        pvc_sums.len(),
        empty_sums.len(),
        pod_dir.dir.display()
    );

    heading("Which volumes would a backup take?");
    stowage(server, &["coverage", "--namespaces", NAMESPACE], stop).await?;

    heading("Back up");
    stowage(
        server,
        &[
            "backup",
            "create",
            BACKUP,
            "--include-namespaces",
            NAMESPACE,
            "--wait",
        ],
        stop,
    )
    .await?;
    stowage(server, &["backup", "describe", BACKUP, "--details"], stop).await?;
    stowage(server, &["repo", "get"], stop).await?;

    heading("Disaster: the pod, its claim and all its data are deleted");
    std::fs::remove_dir_all(&pod_dir.dir)
        .map_err(|error| failed(format!("deleting {}: {error}", pod_dir.dir.display())))?;
    let pods: Api<Pod> = Api::namespaced(kube.clone(), NAMESPACE);
    pods.delete(POD, &DeleteParams::default())
        .await
        .map_err(|error| failed(format!("deleting the pod: {error}")))?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(kube.clone(), NAMESPACE);
    claims
        .delete("sample-pvc", &DeleteParams::default())
        .await
        .map_err(|error| failed(format!("deleting the claim: {error}")))?;
    println!(
        "deleted pod foo/sample, claim foo/sample-pvc and {}",
        pod_dir.dir.display()
    );

    heading("Restore");
    // The restore waits for the recreated pod to be scheduled and its restore helper to
    // run; on a cluster the scheduler and kubelet do that, here the demo plays them while
    // the CLI waits.
    let restore = stowage(
        server,
        &[
            "restore",
            "create",
            RESTORE,
            "--from-backup",
            BACKUP,
            "--wait",
        ],
        stop,
    );
    let play_kubelet = async {
        let pod = wait_for_pod(&kube, NAMESPACE, POD, Duration::from_secs(60)).await;
        let new_pv = "pv-foo-sample-restored";
        claims
            .patch(
                "sample-pvc",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"volumeName": new_pv}})),
            )
            .await
            .map_err(|error| failed(format!("binding the restored claim: {error}")))?;
        let new_pod_dir = kubelet.pod(&pod.metadata.uid.clone().unwrap_or_default());
        let dirs = (
            new_pod_dir.pv("kubernetes.io~local-volume", new_pv),
            new_pod_dir.empty_dir("emptydir-volume"),
        );
        mark_init_container_running(&kube, NAMESPACE, POD, NODE, RESTORE_HELPER).await;
        Ok::<_, Stop>(dirs)
    };
    // try_join: a restore that fails at once must not leave the demo waiting for its pod.
    let ((), (new_pvc_dir, new_empty_dir)) = tokio::try_join!(restore, play_kubelet)?;
    // The restore helper saw its done files and exited; the pod's containers start.
    patch_pod(
        &kube,
        NAMESPACE,
        POD,
        serde_json::json!({"status": {"phase": "Running"}}),
    )
    .await;
    stowage(server, &["restore", "describe", RESTORE, "--details"], stop).await?;

    heading("Did every file come back? (sha256)");
    let mut bad = compare("pvc-volume", &pvc_sums, &checksums(&new_pvc_dir)?);
    bad += compare("emptydir-volume", &empty_sums, &checksums(&new_empty_dir)?);
    // Modes, symlinks and mtimes too, not only contents.
    let same_metadata = manifest(&new_pvc_dir, false) == pvc_manifest
        && manifest(&new_empty_dir, false) == empty_manifest;
    if !same_metadata {
        println!("  file modes, symlinks or modification times differ from the originals");
    }

    heading("Tracing");
    let backup = stowage_json(server, &["backup", "get", BACKUP]).await?;
    let trace_id = backup["status"]["traceId"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if trace_id.is_empty() {
        println!("the backup has no trace id (no OTLP endpoint)");
    } else {
        println!("trace id of backup {BACKUP}: {trace_id}");
        match collector {
            Some(collector) => {
                // Services export spans in batches (every few seconds): wait until all three
                // have sent theirs, or give up after a while and show what came.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
                let by_service = loop {
                    let mut by_service: BTreeMap<String, usize> = BTreeMap::new();
                    for span in collector
                        .spans()
                        .iter()
                        .filter(|span| span.trace_id == trace_id)
                    {
                        *by_service.entry(span.service_name.clone()).or_default() += 1;
                    }
                    if by_service.len() >= 3 || tokio::time::Instant::now() > deadline {
                        break by_service;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                };
                for (service, count) in &by_service {
                    println!("  {count:>4} spans from {service}");
                }
                println!("(set OTEL_EXPORTER_OTLP_ENDPOINT to send them to Jaeger instead)");
            }
            None => println!(
                "exported to {}",
                std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_default()
            ),
        }
    }

    if bad > 0 || !same_metadata {
        return Err(failed(format!(
            "{bad} restored file(s) differ from the backed-up ones"
        )));
    }
    println!(
        "\nAll {} files restored identically.",
        pvc_sums.len() + empty_sums.len()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let stop = CancellationToken::new();
    stowage_grpc::cancel_on_signal(stop.clone());

    // Without an endpoint of the user's, spans go to an in-process collector so the demo can
    // show the backup's trace.
    let user_endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|endpoint| !endpoint.is_empty());
    let collector = match user_endpoint {
        Some(_) => None,
        None => Some(OtlpCollector::start().await),
    };
    let mut options = StackOptions {
        agent_nodes: vec![NODE.to_string()],
        ..StackOptions::default()
    };
    let endpoint = user_endpoint.clone().or_else(|| {
        collector
            .as_ref()
            .map(|collector| collector.endpoint.clone())
    });
    if let Some(endpoint) = endpoint {
        options
            .env
            .insert("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), endpoint);
    }

    heading("Starting the Kubernetes API emulator, repo-manager, volume agent and orchestrator");
    let stack = tokio::select! {
        _ = stop.cancelled() => {
            eprintln!("interrupted");
            return ExitCode::from(130);
        }
        stack = Stack::start(options) => stack,
    };
    println!(
        "orchestrator at {}; logs in {}",
        stack.orchestrator.url,
        stack.logs().display()
    );

    let outcome = tokio::select! {
        _ = stop.cancelled() => Err(Stop::Interrupted),
        outcome = run(&stack, collector.as_ref(), &stop) => outcome,
    };
    let code = match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Stop::Interrupted) => {
            eprintln!("\ninterrupted; stopping every process the demo started");
            ExitCode::from(130)
        }
        Err(Stop::Failed(message)) => {
            eprintln!("\ndemo failed: {}", message.trim_end());
            // The logs go with the temp dir; show their ends while they are still there.
            let processes = std::iter::once(&stack.orchestrator)
                .chain(std::iter::once(&stack.repo_manager))
                .chain(stack.agents.values());
            for service in processes {
                let log = service.process.log();
                let lines: Vec<&str> = log.lines().collect();
                eprintln!("--- last lines of {}:", service.process.name);
                for line in &lines[lines.len().saturating_sub(15)..] {
                    eprintln!("{line}");
                }
            }
            ExitCode::FAILURE
        }
    };
    // Dropping the stack stops the services (SIGTERM, then SIGKILL) and removes the temp dir.
    drop(stack);
    drop(collector);
    code
}
