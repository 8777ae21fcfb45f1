//! The `stowage` CLI run as a user runs it: the built binary against a running orchestrator,
//! checking what it prints, that `-o json` parses back into the documented shape, and that
//! failures exit non-zero with one sentence on stderr.

use std::{collections::BTreeMap, process::Output};

use stowage_e2e::{ServiceProcess, binary, free_port, start_service};

/// Runs `stowage --server <server> <args>` with a clean environment for its own variables,
/// so a developer's `STOWAGE_SERVER` cannot leak into the test.
fn stowage(server: &str, args: &[&str]) -> Output {
    std::process::Command::new(binary("stowage"))
        .arg("--server")
        .arg(server)
        .args(args)
        .env_remove("STOWAGE_SERVER")
        .env_remove("STOWAGE_OUTPUT")
        .output()
        .expect("running the stowage binary")
}

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
    let sentence = one_sentence_failure(&output);
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
    let output = std::process::Command::new(binary("stowage"))
        .args(["backup", "get"])
        .env("STOWAGE_SERVER", &server)
        .output()
        .expect("running the stowage binary");
    let sentence = one_sentence_failure(&output);
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
    ] {
        let output = stowage(&server.url, command);
        let sentence = one_sentence_failure(&output);
        assert_eq!(
            sentence, "Error: backup \"no-such-backup\" not found",
            "{command:?}"
        );
        assert!(
            stdout(&output).is_empty(),
            "{command:?}: {}",
            stdout(&output)
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
