//! The `stowage` CLI run as a user runs it: the built binary against a running orchestrator,
//! checking what it prints, that `-o json` parses back into the documented shape, and that
//! failures exit non-zero with one sentence on stderr.

use std::{
    collections::BTreeMap,
    process::{Child, Output, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams};
use stowage_e2e::{
    ServiceProcess, binary,
    cli::{isolated, stowage},
    failure_after_waiting_for, free_port,
    kube::{bind_claim, mark_init_container_running, seed_example, wait_for_pod},
    kubelet::{manifest, write_sample_tree},
    stack::{Stack, StackOptions, stack_with_slow_backups},
    start_service,
    velero_fixture::{self, Corruption, FixtureLocation, VeleroEra},
};

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A failed command: non-zero exit and exactly one non-empty line on stderr, returned.
fn one_sentence_failure(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "expected a failure, got success; stdout:\n{}",
        stdout(output)
    );
    let text = stderr(output);
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one sentence on stderr, got:\n{text}"
    );
    lines[0].to_string()
}

/// An orchestrator on a free port without a Kubernetes API, repo-manager or agents: its
/// backups fail at once with a reason, which is enough for the calls that only read the
/// orchestrator's own records.
async fn orchestrator(log_dir: &std::path::Path) -> ServiceProcess {
    let repo_manager = format!("http://127.0.0.1:{}", free_port());
    start_service(
        "stowage-orchestrator",
        "stowage.v1.Orchestrator",
        &[
            "--repo-manager".to_string(),
            repo_manager,
            "--no-kubernetes".to_string(),
        ],
        &BTreeMap::new(),
        log_dir,
    )
    .await
}

#[test]
fn unreachable_server_is_one_sentence_naming_it() {
    let server = format!("http://127.0.0.1:{}", free_port());
    let output = stowage(&server, &["backup", "get"]);
    // Refused connections are waited out first, as through a takeover.
    let sentence = failure_after_waiting_for(&output, &server);
    assert!(sentence.contains("cannot reach"), "{sentence}");
    assert!(sentence.contains(&server), "{sentence}");
    assert!(stdout(&output).is_empty());
}

#[test]
fn server_without_scheme_is_refused_with_the_expected_form() {
    let output = stowage("127.0.0.1:8080", &["backup", "get"]);
    let sentence = one_sentence_failure(&output);
    assert!(sentence.contains("`127.0.0.1:8080`"), "{sentence}");
    assert!(sentence.contains("http://"), "{sentence}");
}

#[test]
fn bad_ttl_is_a_usage_error_naming_the_flag() {
    // No server runs here: the value is refused before any call.
    let server = format!("http://127.0.0.1:{}", free_port());
    let output = stowage(&server, &["backup", "create", "nightly", "--ttl", "5x"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(text.contains("--ttl"), "{text}");
    assert!(text.contains("5x"), "{text}");
}

#[test]
fn server_address_comes_from_the_environment() {
    let server = format!("http://127.0.0.1:{}", free_port());
    let output = isolated(std::process::Command::new(binary("stowage")))
        .args(["backup", "get"])
        .env("STOWAGE_SERVER", &server)
        .output()
        .expect("running the stowage binary");
    let sentence = failure_after_waiting_for(&output, &server);
    assert!(sentence.contains(&server), "{sentence}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_create_prints_the_created_backup_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = orchestrator(dir.path()).await;
    let output = stowage(
        &server.url,
        &[
            "backup",
            "create",
            "cli-json",
            "--ttl",
            "1h30m",
            "--selector",
            "app=db",
            "-o",
            "json",
        ],
    );
    assert!(
        output.status.success(),
        "stderr: {}\norchestrator log:\n{}",
        stderr(&output),
        server.process.log()
    );
    let backup: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("-o json prints one JSON document");
    assert_eq!(backup["name"], "cli-json");
    assert_eq!(backup["spec"]["ttl"], "1h30m");
    assert_eq!(backup["spec"]["labelSelector"]["app"], "db");
    let phase = backup["status"]["phase"].as_str().unwrap_or_default();
    assert!(
        [
            "New",
            "InProgress",
            "Completed",
            "PartiallyFailed",
            "Failed"
        ]
        .contains(&phase),
        "phase {phase:?} is not a documented phase word"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_create_without_output_flag_prints_velero_style_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let server = orchestrator(dir.path()).await;
    let output = stowage(&server.url, &["backup", "create", "cli-text"]);
    assert!(output.status.success(), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    assert!(
        text.starts_with("Backup request \"cli-text\" submitted successfully."),
        "{text}"
    );
    assert!(text.contains("stowage backup describe cli-text"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_backup_is_one_sentence_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = orchestrator(dir.path()).await;
    for command in [
        &["backup", "describe", "no-such-backup"][..],
        &["backup", "get", "no-such-backup", "-o", "json"],
        &["backup", "logs", "no-such-backup"],
        &["backup", "delete", "no-such-backup"],
        &["restore", "create", "--from-backup", "no-such-backup"],
        &[
            "restore",
            "create",
            "named",
            "--from-backup",
            "no-such-backup",
        ],
    ] {
        fails_naming(
            &server.url,
            command,
            "Error: backup \"no-such-backup\" not found",
        );
    }
}

/// `command` fails with exactly `sentence` on stderr and prints nothing on stdout.
fn fails_naming(url: &str, command: &[&str], sentence: &str) {
    let output = stowage(url, command);
    assert_eq!(one_sentence_failure(&output), sentence, "{command:?}");
    assert!(
        stdout(&output).is_empty(),
        "{command:?}: {}",
        stdout(&output)
    );
}

/// Every restore command about a restore that does not exist says so naming it, `cancel`
/// included: a server that cannot cancel restores still answers whether the restore exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_restore_is_one_sentence_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = orchestrator(dir.path()).await;
    for command in [
        &["restore", "describe", "no-such-restore"][..],
        &["restore", "get", "no-such-restore", "-o", "json"],
        &["restore", "logs", "no-such-restore"],
        &["restore", "cancel", "no-such-restore"],
    ] {
        fails_naming(
            &server.url,
            command,
            "Error: restore \"no-such-restore\" not found",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_list_parses_back_from_json_and_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let server = orchestrator(dir.path()).await;
    for name in ["first", "second"] {
        let output = stowage(&server.url, &["backup", "create", name, "--ttl", "30m"]);
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let json = stowage(&server.url, &["backup", "get", "-o", "json"]);
    assert!(json.status.success(), "{}", stderr(&json));
    let list: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let yaml = stowage(&server.url, &["backup", "get", "-o", "yaml"]);
    assert!(yaml.status.success(), "{}", stderr(&yaml));
    let from_yaml: serde_json::Value = serde_yaml::from_slice(&yaml.stdout).unwrap();
    assert_eq!(list, from_yaml, "yaml and json carry the same document");

    let backups = list["backups"].as_array().expect("a backups array");
    let mut names: Vec<&str> = backups.iter().filter_map(|b| b["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["first", "second"]);
    for backup in backups {
        assert_eq!(backup["spec"]["ttl"], "30m");
        // Without a Kubernetes API the orchestrator fails backups with its reason.
        assert_eq!(backup["status"]["phase"], "Failed", "{backup}");
        assert!(
            !backup["status"]["failureReason"]
                .as_str()
                .unwrap()
                .is_empty(),
            "{backup}"
        );
        let started = backup["status"]["started"].as_str().unwrap();
        chrono::DateTime::parse_from_rfc3339(started).expect("started is RFC 3339");
    }

    let table = stowage(&server.url, &["backup", "get"]);
    let text = stdout(&table);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&header[..3], ["NAME", "STATUS", "VOLUMES"]);
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(rows.iter().all(|row| row[1] == "Failed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_on_a_backup_that_fails_exits_non_zero_with_its_phase() {
    let dir = tempfile::tempdir().unwrap();
    let server = orchestrator(dir.path()).await;
    let output = stowage(&server.url, &["backup", "create", "doomed", "--wait"]);
    let sentence = one_sentence_failure(&output);
    assert!(
        sentence.starts_with("Error: backup \"doomed\" ended Failed ("),
        "{sentence}"
    );
    assert!(sentence.contains("stowage backup describe doomed --details"));
    // Not a terminal: plain progress lines, then the summary.
    let text = stdout(&output);
    assert!(
        text.lines()
            .any(|line| line.starts_with("backup doomed: Failed, 0/0 volumes done")),
        "{text}"
    );
    assert!(
        text.contains("Backup completed with status: Failed."),
        "{text}"
    );
}

/// Waits for a `stowage` process started in the background, killing it after `timeout` so a
/// restore that never ends fails the test instead of hanging it.
async fn finish(mut child: Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if child
            .try_wait()
            .expect("polling the stowage process")
            .is_some()
        {
            return child.wait_with_output().expect("collecting its output");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let output = child.wait_with_output().expect("collecting its output");
    panic!(
        "stowage did not finish within {timeout:?}; stdout:\n{}\nstderr:\n{}",
        stdout(&output),
        stderr(&output)
    );
}

/// Cells of the row of the table in `text` whose first cell is `key`.
fn row<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&key))
        .unwrap_or_else(|| panic!("no row {key} in:\n{text}"))
}

/// The `Progress:` line of a `describe`, without its label.
fn progress_line(text: &str) -> String {
    text.lines()
        .find_map(|line| line.strip_prefix("Progress:"))
        .unwrap_or_else(|| panic!("no Progress line in {text}"))
        .trim()
        .to_string()
}

/// Every plain `--wait` line starting with `prefix` that shows a total (`X of Y`) shows the
/// final one: restic's running count while it still scans is shown as `X so far`, never as
/// a total.
fn assert_totals_only_final(text: &str, prefix: &str) {
    let totals: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit_once(" failed, ").map(|(_, bytes)| bytes))
        .filter_map(|bytes| bytes.split_once(" of ").map(|(_, total)| total))
        .collect();
    let last = totals
        .last()
        .unwrap_or_else(|| panic!("no line with a total: {text}"));
    assert!(
        totals.iter().all(|total| total == last),
        "a line showed a total other than the final {last}: {text}"
    );
}

/// The user's journey of the demo, through the CLI only: coverage, `backup create --wait`,
/// `describe --details`, `-o json`, the repository, then the pod and its data lost and
/// `restore create --wait` while the test plays scheduler and kubelet for the new pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_journey_through_the_cli() {
    let stack = Stack::start(StackOptions::default()).await;
    let server = stack.orchestrator.url.clone();
    let kube = stack.kube_client().await;
    let example = seed_example(&kube, "foo", "node-a", Some("pvc-volume,emptydir-volume")).await;
    let kubelet = &stack.kubelets["node-a"];
    let pod_dir = kubelet.pod(&example.pod_uid());
    let pvc_dir = pod_dir.pv("kubernetes.io~local-volume", &example.pv_name());
    let empty_dir = pod_dir.empty_dir("emptydir-volume");
    write_sample_tree(&pvc_dir, "pvc");
    write_sample_tree(&empty_dir, "emptydir");
    let pvc_before = manifest(&pvc_dir, false);
    let empty_before = manifest(&empty_dir, false);

    let coverage = stowage(&server, &["coverage", "--namespaces", "foo", "-o", "json"]);
    assert!(coverage.status.success(), "{}", stderr(&coverage));
    let coverage: serde_json::Value = serde_json::from_slice(&coverage.stdout).unwrap();
    assert_eq!(coverage["volumesTotal"], 2, "{coverage}");
    assert_eq!(coverage["volumesCovered"], 2, "{coverage}");
    assert_eq!(coverage["uncovered"], serde_json::json!([]), "{coverage}");
    assert_eq!(
        coverage["claims"],
        serde_json::json!([{
            "namespace": "foo", "claim": "sample-pvc", "state": "BackedUp",
            "pod": "sample", "volume": "pvc-volume", "detail": "",
        }]),
        "{coverage}"
    );

    let created = stowage(
        &server,
        &[
            "backup",
            "create",
            "demo",
            "--include-namespaces",
            "foo",
            "--wait",
        ],
    );
    assert!(
        created.status.success(),
        "stderr: {}\nstdout: {}\norchestrator log:\n{}",
        stderr(&created),
        stdout(&created),
        stack.orchestrator.process.log()
    );
    let text = stdout(&created);
    assert!(
        text.contains("Backup completed with status: Completed."),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|line| line.starts_with("backup demo: Completed, 2/2 volumes done, 0 failed")),
        "{text}"
    );
    assert_totals_only_final(&text, "backup demo: ");

    let json = stowage(&server, &["backup", "get", "demo", "-o", "json"]);
    assert!(json.status.success(), "{}", stderr(&json));
    let backup: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(backup["status"]["phase"], "Completed");
    assert_eq!(backup["status"]["volumesCompleted"], 2);
    let volumes = backup["status"]["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 2);

    for volume in volumes {
        assert!(
            volume["bytesStored"].as_u64().unwrap_or(0) > 0,
            "what the location stores for it: {volume}"
        );
    }

    let describe = stowage(&server, &["backup", "describe", "demo", "--details"]);
    assert!(describe.status.success(), "{}", stderr(&describe));
    let text = stdout(&describe);
    assert!(text.contains("Phase:        Completed"), "{text}");
    // Two volumes of 4 regular files each (the sample tree's directories and symlink are not
    // files), all done.
    let backup_progress = progress_line(&text);
    assert!(backup_progress.ends_with(", 8 of 8 files"), "{text}");
    assert!(
        text.lines()
            .any(|line| line.starts_with("Stored: ") && !line.contains(" 0 B ")),
        "{text}"
    );
    for volume in volumes {
        let path = format!(
            "{}/{}/{}",
            volume["namespace"].as_str().unwrap(),
            volume["pod"].as_str().unwrap(),
            volume["volume"].as_str().unwrap()
        );
        let cells = row(&text, &path);
        let snapshot = volume["snapshotId"].as_str().unwrap();
        assert!(!snapshot.is_empty(), "{volume}");
        assert_eq!(
            &cells[1..4],
            ["node-a", "Completed", &snapshot[..8]],
            "{text}"
        );
    }

    let repository = stowage(&server, &["repo", "get", "foo", "-o", "json"]);
    assert!(repository.status.success(), "{}", stderr(&repository));
    let repository: serde_json::Value = serde_json::from_slice(&repository.stdout).unwrap();
    assert_eq!(repository["namespace"], "foo");
    assert_eq!(repository["phase"], "Ready", "{repository}");
    // No check has run yet: that is neither a success nor a failure.
    assert_eq!(
        repository["check"]["lastResult"], "NeverRun",
        "{repository}"
    );
    assert_eq!(
        repository["check"]["lastSucceeded"],
        serde_json::Value::Null,
        "{repository}"
    );
    let table = stdout(&stowage(&server, &["repo", "get", "foo"]));
    assert_eq!(row(&table, "foo")[2..4], ["never", "run"], "{table}");
    assert!(
        repository["url"].as_str().unwrap().ends_with("restic/foo"),
        "{repository}"
    );

    let missing = stowage(&server, &["repo", "get", "nobody-here"]);
    assert_eq!(
        one_sentence_failure(&missing),
        "Error: repository of namespace \"nobody-here\" not found"
    );

    // Disaster: the pod, its claim and its data are gone.
    std::fs::remove_dir_all(&pod_dir.dir).unwrap();
    let pods: Api<Pod> = Api::namespaced(kube.clone(), "foo");
    pods.delete("sample", &DeleteParams::default())
        .await
        .unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(kube.clone(), "foo");
    claims
        .delete("sample-pvc", &DeleteParams::default())
        .await
        .unwrap();

    let restoring = isolated(std::process::Command::new(binary("stowage")))
        .args([
            "--server",
            &server,
            "restore",
            "create",
            "demo-restore",
            "--from-backup",
            "demo",
            "--wait",
        ])
        .env_remove("STOWAGE_SERVER")
        .env_remove("STOWAGE_OUTPUT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting stowage restore create");

    // Play scheduler, provisioner and kubelet for the recreated pod.
    let pod = wait_for_pod(&kube, "foo", "sample", Duration::from_secs(30)).await;
    let new_pv = "pv-foo-sample-restored";
    bind_claim(&claims, "sample-pvc", new_pv).await;
    let new_pod_dir = kubelet.pod(&pod.metadata.uid.clone().unwrap());
    let new_pvc_dir = new_pod_dir.pv("kubernetes.io~local-volume", new_pv);
    let new_empty_dir = new_pod_dir.empty_dir("emptydir-volume");
    mark_init_container_running(&kube, "foo", "sample", "node-a", "restore-wait").await;

    let restored = finish(restoring, Duration::from_secs(120)).await;
    assert!(
        restored.status.success(),
        "stderr: {}\nstdout: {}\norchestrator log:\n{}",
        stderr(&restored),
        stdout(&restored),
        stack.orchestrator.process.log()
    );
    let text = stdout(&restored);
    assert!(
        text.contains("Restore completed with status: Completed."),
        "{text}"
    );
    assert_totals_only_final(&text, "restore demo-restore: ");
    assert_eq!(manifest(&new_pvc_dir, false), pvc_before);
    assert_eq!(manifest(&new_empty_dir, false), empty_before);

    let json = stowage(&server, &["restore", "get", "demo-restore", "-o", "json"]);
    assert!(json.status.success(), "{}", stderr(&json));
    let restore: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(restore["spec"]["backupName"], "demo");
    assert_eq!(restore["status"]["phase"], "Completed");
    assert_eq!(
        restore["status"]["podsCreated"],
        serde_json::json!(["foo/sample"])
    );

    // Without --details the volumes are listed by phase, as for a backup.
    let summary = stdout(&stowage(&server, &["restore", "describe", "demo-restore"]));
    assert!(summary.contains("Pod volume restores:"), "{summary}");
    let completed = summary
        .lines()
        .find(|line| line.trim_start().starts_with("Completed:"))
        .unwrap_or_else(|| panic!("no Completed volumes line:\n{summary}"));
    for volume in ["foo/sample/pvc-volume", "foo/sample/emptydir-volume"] {
        assert!(completed.contains(volume), "{summary}");
    }
    let describe = stowage(
        &server,
        &["restore", "describe", "demo-restore", "--details"],
    );
    assert!(describe.status.success(), "{}", stderr(&describe));
    let text = stdout(&describe);
    for volume in ["foo/sample/pvc-volume", "foo/sample/emptydir-volume"] {
        let cells = row(&text, volume);
        assert_eq!(&cells[1..4], ["foo", "node-a", "Completed"], "{text}");
    }
    // The same data counted the same way: bytes and regular files as the backup counted them.
    assert_eq!(progress_line(&text), backup_progress, "{text}");

    // A copy into another namespace, `--namespace-mappings foo:bar`.
    let copying = isolated(std::process::Command::new(binary("stowage")))
        .args([
            "--server",
            &server,
            "restore",
            "create",
            "copy",
            "--from-backup",
            "demo",
            "--namespace-mappings",
            "foo:bar",
            "--wait",
        ])
        .env_remove("STOWAGE_SERVER")
        .env_remove("STOWAGE_OUTPUT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting stowage restore create --namespace-mappings");
    let copy = wait_for_pod(&kube, "bar", "sample", Duration::from_secs(30)).await;
    let bar_claims: Api<PersistentVolumeClaim> = Api::namespaced(kube.clone(), "bar");
    let copy_pv = "pv-bar-sample";
    bind_claim(&bar_claims, "sample-pvc", copy_pv).await;
    // Plays kubelet: the new pod's volume directories exist before its init container runs.
    let copy_dir = kubelet.pod(&copy.metadata.uid.clone().unwrap());
    let copy_pvc_dir = copy_dir.pv("kubernetes.io~local-volume", copy_pv);
    let copy_empty_dir = copy_dir.empty_dir("emptydir-volume");
    mark_init_container_running(&kube, "bar", "sample", "node-a", "restore-wait").await;
    let copied = finish(copying, Duration::from_secs(120)).await;
    assert!(
        copied.status.success(),
        "stderr: {}\nstdout: {}\n{}",
        stderr(&copied),
        stdout(&copied),
        stdout(&stowage(
            &server,
            &["restore", "describe", "copy", "--details"]
        ))
    );
    assert_eq!(manifest(&copy_pvc_dir, false), pvc_before);
    assert_eq!(manifest(&copy_empty_dir, false), empty_before);
    let describe = stowage(&server, &["restore", "describe", "copy", "--details"]);
    let text = stdout(&describe);
    assert!(text.contains("Namespace mappings:  foo:bar"), "{text}");
    assert_eq!(
        row(&text, "bar/sample/pvc-volume")[1..4],
        ["foo", "node-a", "Completed"],
        "{text}"
    );

    let restores = stowage(&server, &["restore", "get"]);
    assert!(restores.status.success(), "{}", stderr(&restores));
    let text = stdout(&restores);
    for name in ["demo-restore", "copy"] {
        assert_eq!(
            row(&text, name)[1..4],
            ["demo", "Completed", "2/2"],
            "{text}"
        );
    }
    let restore_logs = stowage(&server, &["restore", "logs", "copy", "-o", "json"]);
    assert!(restore_logs.status.success(), "{}", stderr(&restore_logs));
    let lines: serde_json::Value = serde_json::from_slice(&restore_logs.stdout).unwrap();
    assert!(
        !lines.to_string().contains("RESTORE_PHASE_"),
        "raw phase names in the restore log: {lines}"
    );
    assert!(
        lines
            .as_array()
            .is_some_and(|lines| lines.iter().any(|line| line["message"]
                .as_str()
                .is_some_and(|message| message.starts_with("restore ended Completed:")))),
        "{lines}"
    );
    assert!(
        lines
            .as_array()
            .is_some_and(|lines| lines.iter().any(|line| line["message"]
                .as_str()
                .is_some_and(|message| message.contains("bar/sample")))),
        "{lines}"
    );

    // The backup's log lines: `<RFC 3339 time> <LEVEL> <message>`.
    let logs = stowage(&server, &["backup", "logs", "demo"]);
    assert!(logs.status.success(), "{}", stderr(&logs));
    let text = stdout(&logs);
    assert!(!text.is_empty(), "the backup kept no log lines");
    assert!(
        text.contains("backup demo ended Completed: 2 volumes"),
        "{text}"
    );
    assert!(!text.contains("BACKUP_PHASE_"), "raw phase names: {text}");
    for line in text.lines() {
        let mut parts = line.splitn(3, ' ');
        let time = parts.next().unwrap();
        chrono::DateTime::parse_from_rfc3339(time)
            .unwrap_or_else(|error| panic!("{line:?}: time {time:?}: {error}"));
        let level = parts.next().unwrap_or_default();
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level.trim()),
            "{line:?}"
        );
    }

    let check = stowage(&server, &["repo", "maintain", "foo", "--check"]);
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        stdout(&check).starts_with("check of the repository of namespace \"foo\" succeeded in "),
        "{}",
        stdout(&check)
    );
    let repository = stowage(&server, &["repo", "get", "foo", "-o", "json"]);
    let repository: serde_json::Value = serde_json::from_slice(&repository.stdout).unwrap();
    assert_eq!(
        repository["check"]["lastResult"], "Succeeded",
        "{repository}"
    );
    assert_eq!(repository["check"]["lastSucceeded"], true, "{repository}");

    // A pack file missing from the repository: the check fails, and restic's message is said
    // once, on one line, with nothing on stdout. The pack is put back before the backup is
    // deleted below.
    let pack = first_file(&stack.storage.join("restic/foo/data"));
    let aside = stack.storage.join("pack-set-aside");
    std::fs::rename(&pack, &aside).unwrap();
    let failed = stowage(&server, &["repo", "maintain", "foo", "--check"]);
    std::fs::rename(&aside, &pack).unwrap();
    let sentence = one_sentence_failure(&failed);
    assert!(
        sentence.starts_with("Error: check of the repository of namespace \"foo\" failed after "),
        "{sentence}"
    );
    assert!(sentence.contains("restic check"), "{sentence}");
    assert!(stdout(&failed).is_empty(), "{}", stdout(&failed));
    let repository = stowage(&server, &["repo", "get", "foo", "-o", "json"]);
    let repository: serde_json::Value = serde_json::from_slice(&repository.stdout).unwrap();
    assert_eq!(repository["check"]["lastResult"], "Failed", "{repository}");
    assert_eq!(repository["check"]["lastSucceeded"], false, "{repository}");

    let deleted = stowage(&server, &["backup", "delete", "demo"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert_eq!(
        stdout(&deleted),
        "Backup \"demo\" deleted; 2 restic snapshot(s) forgotten.\n"
    );
    let gone = stowage(&server, &["backup", "describe", "demo"]);
    assert_eq!(
        one_sentence_failure(&gone),
        "Error: backup \"demo\" not found"
    );
}

/// The first regular file under `dir` (depth first, in name order; restic's local backend
/// makes all 256 `data/` subdirectories, most of them empty).
fn first_file(dir: &std::path::Path) -> std::path::PathBuf {
    fn find(dir: &std::path::Path) -> Option<std::path::PathBuf> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .collect();
        entries.sort();
        entries.into_iter().find_map(|entry| {
            if entry.is_file() {
                Some(entry)
            } else if entry.is_dir() {
                find(&entry)
            } else {
                None
            }
        })
    }
    find(dir).unwrap_or_else(|| panic!("no file under {}", dir.display()))
}

/// Starts `stowage backup create NAME --include-namespaces foo --wait` in the background.
fn start_waiting_backup(server: &str, name: &str) -> Child {
    isolated(std::process::Command::new(binary("stowage")))
        .args([
            "--server",
            server,
            "backup",
            "create",
            name,
            "--include-namespaces",
            "foo",
            "--wait",
        ])
        .env_remove("STOWAGE_SERVER")
        .env_remove("STOWAGE_OUTPUT")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting stowage backup create --wait")
}

/// Polls `stowage backup get NAME -o json` until a volume is with the agent.
async fn wait_until_running(stack: &Stack, name: &str) {
    let server = &stack.orchestrator.url;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let output = stowage(server, &["backup", "get", name, "-o", "json"]);
        if output.status.success() {
            let backup: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            let running = backup["status"]["volumes"]
                .as_array()
                .is_some_and(|volumes| {
                    volumes
                        .iter()
                        .any(|v| v["phase"] == "InProgress" || v["phase"] == "Queued")
                });
            if running {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "backup {name} never had a running volume:\n{}",
            stack.orchestrator.process.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `backup cancel` while another `stowage backup create --wait` follows the backup: the
/// waiting command ends non-zero with the phase, and the volume shows Cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_a_waited_backup_cancelled() {
    let (stack, _wrapper) = stack_with_slow_backups().await;
    let server = stack.orchestrator.url.clone();
    let waiting = start_waiting_backup(&server, "slow");
    wait_until_running(&stack, "slow").await;
    let cancelled = stowage(&server, &["backup", "cancel", "slow"]);
    assert!(cancelled.status.success(), "{}", stderr(&cancelled));
    assert!(
        stdout(&cancelled).starts_with("Cancel of backup \"slow\" requested; its phase is now "),
        "{}",
        stdout(&cancelled)
    );

    let waited = finish(waiting, Duration::from_secs(60)).await;
    let sentence = one_sentence_failure(&waited);
    assert!(
        sentence.starts_with("Error: backup \"slow\" ended Cancelled"),
        "{sentence}"
    );
    assert!(
        stdout(&waited).contains("Backup completed with status: Cancelled."),
        "{}",
        stdout(&waited)
    );

    let describe = stowage(&server, &["backup", "describe", "slow", "--details"]);
    assert!(describe.status.success(), "{}", stderr(&describe));
    let text = stdout(&describe);
    assert!(text.contains("Phase:        Cancelled"), "{text}");
    assert_eq!(
        row(&text, "foo/sample/emptydir-volume")[1..3],
        ["node-a", "Cancelled"],
        "{text}"
    );
}

/// A bucket Velero's restic integration wrote: the CLI lists its backup as origin Velero,
/// with the volumes and snapshot ids of Velero's PodVolumeBackups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn velero_backups_in_the_bucket_are_listed_with_their_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("location");
    let location = FixtureLocation::Local { root: root.clone() };
    let fixture = velero_fixture::generate(
        &location,
        &dir.path().join("work"),
        "velero-nightly",
        VeleroEra::Restic19,
    )
    .await
    .expect("writing the Velero fixture");
    let broken = velero_fixture::write_corrupted_copy(&fixture, Corruption::TarballNotTar)
        .await
        .expect("writing a copy with a broken resources tarball");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let server = start_service(
        "stowage-orchestrator",
        "stowage.v1.Orchestrator",
        &[
            "--repo-manager".to_string(),
            format!("http://127.0.0.1:{}", free_port()),
            "--no-kubernetes".to_string(),
            "--storage-url".to_string(),
            format!("file://{}", root.display()),
        ],
        &BTreeMap::new(),
        &logs,
    )
    .await;

    let json = stowage(&server.url, &["backup", "get", "-o", "json"]);
    assert!(json.status.success(), "{}", stderr(&json));
    let list: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let backup = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|backup| backup["name"] == "velero-nightly")
        .unwrap_or_else(|| panic!("velero-nightly not listed: {list}"));
    assert_eq!(backup["origin"], "Velero", "{backup}");
    assert_eq!(backup["status"]["phase"], "Completed", "{backup}");
    let volumes = backup["status"]["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), fixture.volumes.len(), "{backup}");
    for expected in &fixture.volumes {
        let found = volumes
            .iter()
            .find(|v| {
                v["namespace"] == expected.namespace.as_str()
                    && v["volume"] == expected.volume.as_str()
            })
            .unwrap_or_else(|| {
                panic!(
                    "{}/{} missing: {backup}",
                    expected.namespace, expected.volume
                )
            });
        assert_eq!(found["snapshotId"], expected.snapshot_id.as_str());
        assert_eq!(found["pod"], expected.pod.as_str());
    }

    let table = stowage(&server.url, &["backup", "get"]);
    assert!(table.status.success(), "{}", stderr(&table));
    let text = stdout(&table);
    let cells = row(&text, "velero-nightly");
    assert_eq!(cells[1], "Completed");
    assert_eq!(cells[6], "Velero", "{text}");

    // The copy with a broken tarball is listed with why it cannot be restored, and a restore
    // of it is refused with that reason.
    let json = stowage(&server.url, &["backup", "get", &broken.name, "-o", "json"]);
    assert!(json.status.success(), "{}", stderr(&json));
    let unrestorable: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let reason = unrestorable["unrestorableReason"]
        .as_str()
        .unwrap_or_default();
    assert!(!reason.is_empty(), "{unrestorable}");
    let describe = stowage(&server.url, &["backup", "describe", &broken.name]);
    assert!(
        stdout(&describe).contains(&format!("Unrestorable: {reason}")),
        "{}",
        stdout(&describe)
    );
    let refused = stowage(
        &server.url,
        &["restore", "create", "--from-backup", &broken.name],
    );
    let sentence = one_sentence_failure(&refused);
    assert!(
        sentence.starts_with(&format!(
            "Error: creating a restore from backup \"{}\" failed: ",
            broken.name
        )),
        "{sentence}"
    );

    let describe = stowage(
        &server.url,
        &["backup", "describe", "velero-nightly", "--details"],
    );
    assert!(describe.status.success(), "{}", stderr(&describe));
    let text = stdout(&describe);
    assert!(text.contains("Origin:       Velero"), "{text}");
    // Velero's records carry the bytes and the times: no `0 B of 0 B`, and durations.
    let progress = text
        .lines()
        .find(|line| line.starts_with("Progress:"))
        .unwrap_or_else(|| panic!("no Progress line:\n{text}"));
    assert!(!progress.contains("0 B of 0 B"), "{text}");
    assert!(text.contains("Duration:     1m0s"), "{text}");
    for expected in &fixture.volumes {
        let path = format!(
            "{}/{}/{}",
            expected.namespace, expected.pod, expected.volume
        );
        let cells = row(&text, &path);
        assert_eq!(cells[3], &expected.snapshot_id[..8], "{text}");
        // SIZE is two cells (`1.5 KiB`), STORED is `-` (Velero does not record it); the
        // fixture's volumes each took 4 s.
        assert_eq!(cells[6], "-", "{text}");
        assert_eq!(cells[7], "4.0s", "{text}");
    }
}

/// Ctrl-C while waiting stops the CLI, not the backup: exit 130, a sentence saying how to
/// follow it, and the backup still running in the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupting_wait_leaves_the_backup_running() {
    let (stack, _wrapper) = stack_with_slow_backups().await;
    let server = stack.orchestrator.url.clone();

    // Only `emptydir-volume` is annotated: coverage names the other and why.
    let coverage = stowage(&server, &["coverage", "--namespaces", "foo"]);
    assert!(coverage.status.success(), "{}", stderr(&coverage));
    let text = stdout(&coverage);
    assert!(
        text.starts_with("1 of 2 pod volumes would be backed up (opt-in mode"),
        "{text}"
    );
    assert_eq!(
        row(&text, "foo")[..4],
        ["foo", "sample", "pvc-volume", "NotAnnotated"],
        "{text}"
    );
    // The claim of that volume is listed too, with the pod that mounts it without backing it up.
    assert!(
        text.contains("0 of 1 persistent volume claims would be backed up."),
        "{text}"
    );
    let claim = text
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.get(1) == Some(&"sample-pvc"))
        .unwrap_or_else(|| panic!("no claim row in:\n{text}"));
    assert_eq!(
        claim[..5],
        ["foo", "sample-pvc", "NotAnnotated", "sample", "pvc-volume"],
        "{text}"
    );
    let opt_out = stowage(
        &server,
        &[
            "coverage",
            "--namespaces",
            "foo",
            "--default-volumes-to-fs-backup",
            "-o",
            "json",
        ],
    );
    let opt_out: serde_json::Value = serde_json::from_slice(&opt_out.stdout).unwrap();
    assert_eq!(opt_out["volumesCovered"], 2, "{opt_out}");
    assert_eq!(opt_out["defaultVolumesToFsBackup"], true, "{opt_out}");

    let waiting = start_waiting_backup(&server, "interrupted");
    wait_until_running(&stack, "interrupted").await;
    let sent = std::process::Command::new("kill")
        .args(["-INT", &waiting.id().to_string()])
        .status()
        .expect("running kill");
    assert!(sent.success());
    let output = finish(waiting, Duration::from_secs(30)).await;
    assert_eq!(output.status.code(), Some(130), "{}", stderr(&output));
    assert!(
        stderr(&output)
            .contains("the backup goes on. Follow it with `stowage backup describe interrupted`"),
        "{}",
        stderr(&output)
    );
    let backup = stowage(&server, &["backup", "get", "interrupted", "-o", "json"]);
    let backup: serde_json::Value = serde_json::from_slice(&backup.stdout).unwrap();
    assert_eq!(backup["status"]["phase"], "InProgress", "{backup}");
}

/// The orchestrator going away while `--wait` follows a backup: once the CLI has waited for
/// it to accept connections again (as through a takeover, up to 30 s), non-zero, one sentence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_lost_while_waiting_is_one_sentence() {
    let (mut stack, _wrapper) = stack_with_slow_backups().await;
    let server = stack.orchestrator.url.clone();
    let waiting = start_waiting_backup(&server, "orphaned");
    wait_until_running(&stack, "orphaned").await;
    stack.orchestrator.process.kill();
    let output = finish(waiting, Duration::from_secs(90)).await;
    let sentence = failure_after_waiting_for(&output, &server);
    assert!(
        sentence.starts_with(&format!(
            "Error: lost the connection to the stowage server at {server} while waiting ("
        )),
        "{sentence}"
    );
    assert!(
        sentence
            .ends_with("the backup may still be running: see `stowage backup describe orphaned`"),
        "{sentence}"
    );
}

/// On a terminal `--wait` draws a spinner/bar (not the plain lines), and the summary after it
/// starts on its own line. The terminal is a pseudo-terminal from util-linux `script`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_on_a_terminal_draws_a_progress_display() {
    let dir = tempfile::tempdir().unwrap();
    let server = orchestrator(dir.path()).await;
    let command = format!(
        "{} --server {} backup create on-tty --wait",
        binary("stowage").display(),
        server.url
    );
    let output = isolated(std::process::Command::new("script"))
        .args(["-qec", &command, "/dev/null"])
        .env_remove("STOWAGE_SERVER")
        .env_remove("STOWAGE_OUTPUT")
        .output()
        .expect("running stowage under `script` (util-linux)");
    // The backup fails at once (no Kubernetes API), so the exit code is non-zero.
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let text = stdout(&output);
    assert!(
        text.contains("backup on-tty: Failed 0/0 volumes"),
        "{text:?}"
    );
    assert!(
        !text.contains("backup on-tty: Failed, 0/0 volumes done"),
        "plain lines on a terminal: {text:?}"
    );
    // Lines as the terminal shows them: the last redraw of each line wins.
    let shown: Vec<&str> = text
        .split("\r\n")
        .map(|line| line.rsplit(['\r']).next().unwrap_or(line))
        .collect();
    assert!(
        shown
            .iter()
            .any(|line| line.starts_with("Backup completed with status: Failed.")),
        "{shown:?}"
    );
}

/// `stowage completion SHELL` prints a script that names the subcommands, and the bash one is
/// valid bash; an unknown shell is a usage error.
#[test]
fn completion_scripts_name_the_subcommands_and_bash_parses_them() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let output = isolated(std::process::Command::new(binary("stowage")))
            .args(["completion", shell])
            .output()
            .expect("running stowage completion");
        assert!(output.status.success(), "{shell}: {}", stderr(&output));
        let script = stdout(&output);
        for word in [
            "backup",
            "restore",
            "repo",
            "coverage",
            "config",
            "set-context",
            "completion",
            "--token-file",
        ] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
        if shell == "bash" {
            let file = dir.path().join("stowage.bash");
            std::fs::write(&file, &script).unwrap();
            let checked = std::process::Command::new("bash")
                .arg("-n")
                .arg(&file)
                .output()
                .expect("running bash -n (bash must be installed)");
            assert!(
                checked.status.success(),
                "bash -n: {}",
                String::from_utf8_lossy(&checked.stderr)
            );
        }
    }
    let output = isolated(std::process::Command::new(binary("stowage")))
        .args(["completion", "tcsh"])
        .output()
        .expect("running stowage completion");
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("tcsh"), "{}", stderr(&output));
}
