//! `/metrics` of the real binaries, scraped over HTTP after real backups and restores: the
//! agent's operation counts by phase, durations, bytes, in-flight/queued gauges, and the gRPC
//! request counts by method and status code. Names as documented in docs/metrics.md.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use stowage_e2e::agent::{AgentFixture, run_backup, run_restore, sample};
use stowage_proto::v1::{CancelOperationRequest, PodVolumeRef};
use tonic::Code;

const OPERATIONS: &str = "stowage_agent_pod_volume_operations_total";

fn grpc(method: &str, code: &str) -> String {
    format!(
        r#"stowage_grpc_server_requests_total{{grpc_service="stowage.v1.VolumeAgent",grpc_method="{method}",grpc_code="{code}"}}"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_metrics_count_backups_restores_bytes_and_grpc_calls() {
    let fixture = AgentFixture::start(&[], &BTreeMap::new(), None).await;
    let before = fixture.scrape().await;
    assert_eq!(
        sample(&before, "stowage_agent_operations_running"),
        Some(0.0),
        "gauges are exposed before any operation:\n{before}"
    );
    assert_eq!(
        sample(&before, "stowage_agent_backup_bytes_total"),
        Some(0.0)
    );

    let volume = fixture.pod_with_data("db-0", 300_000);
    let mut client = fixture.client(None).await.expect("connecting");
    let backup = run_backup(&mut client, fixture.backup_request("op-1", volume.clone()))
        .await
        .expect("backup");
    let mut bad = volume.clone();
    bad.pod_uid = "../etc".into();
    let refused = run_backup(&mut client, fixture.backup_request("op-2", bad))
        .await
        .expect_err("a bad pod uid is refused");
    assert_eq!(refused.code(), Code::InvalidArgument);

    let target_uid = stowage_e2e::kubelet::new_pod_uid();
    fixture.kubelet.pod(&target_uid).empty_dir("data");
    let target = PodVolumeRef {
        pod_uid: target_uid,
        pod_name: "db-0-restored".into(),
        ..volume.clone()
    };
    let restored = run_restore(
        &mut client,
        fixture.restore_request("op-3", target, &backup.snapshot_id),
    )
    .await
    .expect("restore");

    let text = fixture.scrape().await;
    let expect = |series: &str, value: f64| {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    };
    expect(
        &format!(r#"{OPERATIONS}{{operation="backup",phase="Completed"}}"#),
        1.0,
    );
    expect(
        &format!(r#"{OPERATIONS}{{operation="restore",phase="Completed"}}"#),
        1.0,
    );
    expect(
        r#"stowage_agent_pod_volume_operation_duration_seconds_count{operation="backup",phase="Completed"}"#,
        1.0,
    );
    // A request refused before it was accepted is not an operation.
    assert!(
        !text.contains(r#"operation="backup",phase="Failed""#),
        "{text}"
    );
    assert!(backup.bytes_total >= 300_000, "{backup:?}");
    expect(
        "stowage_agent_backup_bytes_total",
        backup.bytes_total as f64,
    );
    expect(
        "stowage_agent_backup_added_bytes_total",
        backup.bytes_added as f64,
    );
    expect(
        "stowage_agent_restore_bytes_total",
        restored.bytes_restored as f64,
    );
    expect("stowage_agent_operations_running", 0.0);
    expect("stowage_agent_operations_queued", 0.0);
    // Each operation's restic peak memory, as its result reports it.
    assert!(backup.restic_peak_rss_bytes > 0, "{backup:?}");
    expect(
        r#"stowage_agent_restic_peak_rss_bytes_count{operation="backup"}"#,
        1.0,
    );
    expect(
        r#"stowage_agent_restic_peak_rss_bytes_sum{operation="backup"}"#,
        backup.restic_peak_rss_bytes as f64,
    );
    expect(
        r#"stowage_agent_restic_peak_rss_bytes_sum{operation="restore"}"#,
        restored.restic_peak_rss_bytes as f64,
    );
    expect(&grpc("BackupVolume", "OK"), 1.0);
    expect(&grpc("BackupVolume", "InvalidArgument"), 1.0);
    expect(&grpc("RestoreVolume", "OK"), 1.0);
    assert!(
        text.contains(
            r#"stowage_grpc_server_request_duration_seconds_count{grpc_service="stowage.v1.VolumeAgent",grpc_method="BackupVolume",grpc_code="OK"} 1"#
        ),
        "{text}"
    );
}

/// Polls the agent's metrics until `series` has `value`.
async fn wait_for_sample(fixture: &AgentFixture, series: &str, value: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = fixture.scrape().await;
        if sample(&text, series) == Some(value) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} never became {value}; last scrape:\n{text}\nagent log:\n{}",
            fixture.agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_gauges_show_running_and_queued_operations_and_cancelled_ones_are_counted() {
    // One slot and a slow upload, so the first backup runs long enough for the second to queue.
    let args: Vec<String> = ["--max-concurrent", "1", "--upload-limit-kib", "256"]
        .map(String::from)
        .to_vec();
    let fixture = AgentFixture::start(&args, &BTreeMap::new(), None).await;
    let first = fixture.pod_with_data("db-0", 8 << 20);
    let second = fixture.pod_with_data("db-1", 1000);
    let client = fixture.client(None).await.expect("connecting");

    let mut first_client = client.clone();
    let first_request = fixture.backup_request("slow", first);
    let first_run = tokio::spawn(async move { run_backup(&mut first_client, first_request).await });
    wait_for_sample(&fixture, "stowage_agent_operations_running", 1.0).await;
    let mut second_client = client.clone();
    let second_request = fixture.backup_request("waiting", second);
    let second_run =
        tokio::spawn(async move { run_backup(&mut second_client, second_request).await });
    wait_for_sample(&fixture, "stowage_agent_operations_queued", 1.0).await;

    for id in ["waiting", "slow"] {
        let cancelled = client
            .clone()
            .cancel_operation(CancelOperationRequest {
                operation_id: id.into(),
            })
            .await
            .expect("cancel")
            .into_inner()
            .cancelled;
        assert!(cancelled, "{id} was known to the agent");
    }
    for run in [first_run, second_run] {
        let status = run
            .await
            .expect("backup task")
            .expect_err("cancelled backups fail");
        assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    }
    wait_for_sample(
        &fixture,
        &format!(r#"{OPERATIONS}{{operation="backup",phase="Cancelled"}}"#),
        2.0,
    )
    .await;
    let text = fixture.scrape().await;
    assert_eq!(sample(&text, "stowage_agent_operations_running"), Some(0.0));
    assert_eq!(sample(&text, "stowage_agent_operations_queued"), Some(0.0));
    assert_eq!(sample(&text, "stowage_agent_backup_bytes_total"), Some(0.0));
    assert_eq!(
        sample(&text, &grpc("BackupVolume", "Cancelled")),
        Some(2.0),
        "{text}"
    );
}

/// The whole stack after one backup and one repository check: each service's `/metrics`
/// shows its part (orchestrator state, repositories and their maintenance, agent operations)
/// and its own gRPC requests.
#[tokio::test(flavor = "multi_thread")]
async fn every_service_serves_metrics_after_a_backup() {
    use stowage_e2e::{
        agent::scrape,
        free_port,
        kube::seed_example,
        kubelet::write_sample_tree,
        stack::{Stack, StackOptions},
    };
    use stowage_proto::v1::{BackupPhase, MaintenanceKind, RunMaintenanceRequest};

    let orchestrator_metrics = format!("127.0.0.1:{}", free_port());
    let agent_metrics = format!("127.0.0.1:{}", free_port());
    let repo_manager_metrics = format!("127.0.0.1:{}", free_port());
    let stack = Stack::start(StackOptions {
        orchestrator_args: vec!["--metrics-listen".into(), orchestrator_metrics.clone()],
        agent_args: vec!["--metrics-listen".into(), agent_metrics.clone()],
        // Flags win over the environment, so only the repo-manager takes this one.
        env: BTreeMap::from([(
            "STOWAGE_METRICS_LISTEN".to_string(),
            repo_manager_metrics.clone(),
        )]),
        ..Default::default()
    })
    .await;
    let kube = stack.kube_client().await;
    let example = seed_example(&kube, "foo", "node-a", Some("pvc-volume,emptydir-volume")).await;
    let pod = stack.kubelets["node-a"].pod(&example.pod_uid());
    write_sample_tree(
        &pod.pv("kubernetes.io~local-volume", &example.pv_name()),
        "pvc",
    );
    write_sample_tree(&pod.empty_dir("emptydir-volume"), "emptydir");

    let mut client = stack.client().await;
    let last = stowage_e2e::api::backup_to_end(
        &mut client,
        "nightly",
        stowage_e2e::api::namespace_spec("foo"),
    )
    .await;
    let phase = last.status.as_ref().map(|s| s.phase);
    assert_eq!(phase, Some(BackupPhase::Completed as i32));
    let check = client
        .maintain_repository(RunMaintenanceRequest {
            namespace: "foo".into(),
            kind: MaintenanceKind::Check as i32,
        })
        .await
        .expect("a repository check")
        .into_inner();
    assert!(check.succeeded, "{check:?}");

    let orchestrator = scrape(&orchestrator_metrics).await;
    for (series, value) in [
        (r#"stowage_orchestrator_backups{phase="Completed"}"#, 1.0),
        (r#"stowage_orchestrator_backups{phase="InProgress"}"#, 0.0),
        (
            r#"stowage_orchestrator_pod_volume_backups{phase="Completed"}"#,
            2.0,
        ),
        (
            r#"stowage_grpc_server_requests_total{grpc_service="stowage.v1.Orchestrator",grpc_method="CreateBackup",grpc_code="OK"}"#,
            1.0,
        ),
        (
            r#"stowage_grpc_server_requests_total{grpc_service="stowage.v1.Orchestrator",grpc_method="WatchBackup",grpc_code="OK"}"#,
            1.0,
        ),
    ] {
        assert_eq!(
            sample(&orchestrator, series),
            Some(value),
            "{series} in\n{orchestrator}"
        );
    }

    let repo_manager = scrape(&repo_manager_metrics).await;
    for (series, value) in [
        (r#"stowage_repositories{phase="Ready"}"#, 1.0),
        (
            r#"stowage_repository_maintenance_last_succeeded{namespace="foo",kind="check"}"#,
            1.0,
        ),
        (
            r#"stowage_grpc_server_requests_total{grpc_service="stowage.v1.RepoManager",grpc_method="RunMaintenance",grpc_code="OK"}"#,
            1.0,
        ),
    ] {
        assert_eq!(
            sample(&repo_manager, series),
            Some(value),
            "{series} in\n{repo_manager}"
        );
    }
    assert!(
        repo_manager.contains(r#"grpc_method="EnsureRepository",grpc_code="OK""#),
        "{repo_manager}"
    );

    let agent = scrape(&agent_metrics).await;
    assert_eq!(
        sample(
            &agent,
            &format!(r#"{OPERATIONS}{{operation="backup",phase="Completed"}}"#)
        ),
        Some(2.0),
        "{agent}"
    );
    assert_eq!(
        sample(&agent, r#"stowage_agent_info{node="node-a"}"#),
        Some(1.0),
        "{agent}"
    );

    // Each backed-up volume: its last backup succeeded, and when, under the node the
    // agent names, so "agent down on a node with backed-up volumes" can join the two.
    let pod = example.pod.metadata.name.clone().unwrap_or_default();
    for volume in ["pvc-volume", "emptydir-volume"] {
        let labels = format!(r#"{{namespace="foo",pod="{pod}",volume="{volume}",node="node-a"}}"#);
        assert_eq!(
            sample(
                &orchestrator,
                &format!("stowage_orchestrator_volume_last_backup_succeeded{labels}")
            ),
            Some(1.0),
            "{orchestrator}"
        );
        let finished = sample(
            &orchestrator,
            &format!(
                "stowage_orchestrator_volume_last_successful_backup_timestamp_seconds{labels}"
            ),
        )
        .unwrap_or_else(|| panic!("no last success of {volume} in\n{orchestrator}"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            finished > now - 3600.0 && finished <= now,
            "{volume} last succeeded at {finished}, now is {now}"
        );
    }

    // The shipped alerts and dashboard name only what these processes export.
    let problems = monitoring_problems(&exported(&[&orchestrator, &repo_manager, &agent]));
    assert!(
        problems.is_empty(),
        "deploy/kustomize/components/monitoring:\n{}",
        problems.join("\n")
    );
}

/// Metric names as the samples of a scrape spell them (`_total`, `_bucket` included), each
/// with the label names its samples carry.
type Exported = BTreeMap<String, BTreeSet<String>>;

fn exported(scrapes: &[&str]) -> Exported {
    let mut names = Exported::new();
    for line in scrapes
        .iter()
        .flat_map(|text| text.lines())
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = names.entry(line[..end].to_string()).or_default();
        let Some(rest) = line[end..].strip_prefix('{') else {
            continue;
        };
        // name="value" pairs; values are quoted with backslash escapes.
        let mut chars = rest.chars().peekable();
        loop {
            let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
            if name.is_empty() {
                break;
            }
            labels.insert(name.trim_start_matches(',').to_string());
            assert_eq!(chars.next(), Some('"'), "a quoted label value in {line}");
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => break,
                    _ => {}
                }
            }
            if chars.peek() == Some(&'}') {
                break;
            }
        }
    }
    names
}

/// Labels Prometheus gives every scraped series itself; queries may join on them.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// What a PromQL expression names: its metric selectors (name, matched label names), the
/// labels of `by`/`without`, and the labels a binary operation joins on (`on`, `ignoring`) or
/// copies (`group_left`/`group_right`) with the metrics on each side.
#[derive(Default)]
struct Names {
    selectors: Vec<(Option<String>, Vec<String>)>,
    grouping: BTreeSet<String>,
    /// (label, metrics that must carry it, the side's description)
    joins: Vec<(String, Vec<Option<String>>, &'static str)>,
}

impl Names {
    fn of(expr: &promql_parser::parser::Expr) -> Names {
        let mut names = Names::default();
        names.walk(expr);
        names
    }

    fn metrics(&self) -> Vec<Option<String>> {
        self.selectors
            .iter()
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn walk(&mut self, expr: &promql_parser::parser::Expr) {
        use promql_parser::parser::{Expr, LabelModifier, VectorMatchCardinality};
        let mut selector = |vs: &promql_parser::parser::VectorSelector| {
            let labels = vs
                .matchers
                .matchers
                .iter()
                .chain(vs.matchers.or_matchers.iter().flatten())
                .map(|matcher| matcher.name.clone())
                .filter(|name| name != "__name__")
                .collect();
            self.selectors.push((vs.name.clone(), labels));
        };
        match expr {
            Expr::VectorSelector(vs) => selector(vs),
            Expr::MatrixSelector(ms) => selector(&ms.vs),
            Expr::Aggregate(aggregate) => {
                if let Some(modifier) = &aggregate.modifier {
                    self.grouping
                        .extend(modifier.labels().labels.iter().cloned());
                }
                if let Some(param) = &aggregate.param {
                    self.walk(param);
                }
                self.walk(&aggregate.expr);
            }
            Expr::Binary(binary) => {
                let lhs = Names::of(&binary.lhs);
                let rhs = Names::of(&binary.rhs);
                if let Some(modifier) = &binary.modifier {
                    // `on (x)` joins on x, so both sides must have it; `ignoring` only drops.
                    if let Some(LabelModifier::Include(labels)) = &modifier.matching {
                        for label in &labels.labels {
                            self.joins.push((label.clone(), lhs.metrics(), "left"));
                            self.joins.push((label.clone(), rhs.metrics(), "right"));
                        }
                    }
                    match &modifier.card {
                        VectorMatchCardinality::ManyToOne(labels) => {
                            for label in &labels.labels {
                                self.joins.push((label.clone(), rhs.metrics(), "right"));
                            }
                        }
                        VectorMatchCardinality::OneToMany(labels) => {
                            for label in &labels.labels {
                                self.joins.push((label.clone(), lhs.metrics(), "left"));
                            }
                        }
                        _ => {}
                    }
                }
                for side in [lhs, rhs] {
                    self.selectors.extend(side.selectors);
                    self.grouping.extend(side.grouping);
                    self.joins.extend(side.joins);
                }
            }
            Expr::Unary(unary) => self.walk(&unary.expr),
            Expr::Paren(paren) => self.walk(&paren.expr),
            Expr::Subquery(subquery) => self.walk(&subquery.expr),
            Expr::Call(call) => {
                for arg in &call.args.args {
                    self.walk(arg);
                }
            }
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }
}

/// Checks one PromQL expression (and the `$labels.x` its alert text names) against what the
/// services export: every metric exists; every label it matches is one that metric carries;
/// every label it groups by or prints is carried by one of its metrics; every label it joins
/// on is carried by a metric on each side.
fn check_expression(
    source: &str,
    expr: &str,
    printed: &[String],
    exported: &Exported,
) -> Vec<String> {
    let parsed = match promql_parser::parser::parse(expr) {
        Ok(parsed) => parsed,
        Err(error) => return vec![format!("{source}: `{expr}` is not PromQL: {error}")],
    };
    let names = Names::of(&parsed);
    let labels_of = |metric: &Option<String>| -> BTreeSet<&str> {
        let mut labels: BTreeSet<&str> = TARGET_LABELS.into_iter().collect();
        if let Some(has) = metric.as_ref().and_then(|name| exported.get(name)) {
            labels.extend(has.iter().map(String::as_str));
        }
        labels
    };
    let mut problems = Vec::new();
    if names.selectors.is_empty() {
        problems.push(format!("{source}: `{expr}` selects no metric"));
    }
    for (name, labels) in &names.selectors {
        let Some(name) = name else {
            problems.push(format!(
                "{source}: a selector without a metric name in `{expr}`"
            ));
            continue;
        };
        let Some(has) = exported.get(name) else {
            problems.push(format!("{source}: no service exports {name}"));
            continue;
        };
        for label in labels {
            if !has.contains(label) {
                problems.push(format!(
                    "{source}: {name} has no label {label} (it has {has:?})"
                ));
            }
        }
    }
    let all: BTreeSet<&str> = names.metrics().iter().flat_map(labels_of).collect();
    for label in names.grouping.iter().chain(printed) {
        if !all.contains(label.as_str()) {
            problems.push(format!(
                "{source}: `{expr}` uses label {label}, which none of its metrics has"
            ));
        }
    }
    for (label, metrics, side) in &names.joins {
        if !metrics
            .iter()
            .any(|metric| labels_of(metric).contains(label.as_str()))
        {
            problems.push(format!(
                "{source}: `{expr}` joins on {label}, which no metric on its {side} side has"
            ));
        }
    }
    problems
}

/// `{{ $labels.x }}` names in an alert's annotations.
fn printed_labels(annotations: &serde_json::Value) -> Vec<String> {
    let mut labels = Vec::new();
    for text in annotations
        .as_object()
        .into_iter()
        .flat_map(|map| map.values())
        .filter_map(|value| value.as_str())
    {
        for (_, rest) in text
            .match_indices("$labels.")
            .map(|(at, _)| text.split_at(at + 8))
        {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            labels.push(name);
        }
    }
    labels
}

/// Every expression of the monitoring component: the PrometheusRule's alerts (with the
/// labels their annotations print) and the dashboard's panel queries.
fn monitoring_expressions() -> Vec<(String, String, Vec<String>)> {
    let dir = stowage_e2e::workspace_root().join("deploy/kustomize/components/monitoring");
    let rule: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(dir.join("prometheus-rule.yaml")).expect("prometheus-rule.yaml"),
    )
    .expect("prometheus-rule.yaml is YAML");
    let mut expressions = Vec::new();
    for group in rule["spec"]["groups"].as_array().expect("rule groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .expect("an alert or record name");
            let expr = rule["expr"].as_str().expect("an expr");
            expressions.push((
                format!("alert {name}"),
                expr.to_string(),
                printed_labels(&rule["annotations"]),
            ));
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("dashboard.json")).expect("dashboard.json"),
    )
    .expect("dashboard.json is JSON");
    fn exprs(value: &serde_json::Value, title: &str, out: &mut Vec<(String, String, Vec<String>)>) {
        let title = value["title"].as_str().unwrap_or(title);
        match value {
            serde_json::Value::Object(map) => {
                if let Some(expr) = map.get("expr").and_then(|expr| expr.as_str()) {
                    out.push((format!("panel {title:?}"), expr.to_string(), Vec::new()));
                }
                for child in map.values() {
                    exprs(child, title, out);
                }
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    exprs(item, title, out);
                }
            }
            _ => {}
        }
    }
    exprs(&dashboard, "dashboard", &mut expressions);
    expressions
}

fn monitoring_problems(exported: &Exported) -> Vec<String> {
    monitoring_expressions()
        .iter()
        .flat_map(|(source, expr, printed)| check_expression(source, expr, printed, exported))
        .collect()
}

#[test]
fn the_monitoring_check_refuses_names_no_service_exports() {
    let scrape = concat!(
        "# TYPE stowage_agent_info gauge\n",
        "stowage_agent_info{node=\"node-a\"} 1\n",
        "stowage_repositories{phase=\"Ready\"} 1\n",
    );
    let exported = exported(&[scrape]);
    let check = |expr: &str, printed: &[&str]| {
        let printed: Vec<String> = printed.iter().map(|s| s.to_string()).collect();
        check_expression("test", expr, &printed, &exported)
    };
    assert!(check("sum by (node) (stowage_agent_info)", &["node"]).is_empty());
    assert!(check(r#"stowage_repositories{phase="Ready"} * on (instance) group_left (node) stowage_agent_info"#, &[]).is_empty());
    for (expr, printed) in [
        ("stowage_agent_up == 0", &[][..]),
        (r#"stowage_agent_info{nodename="a"}"#, &[]),
        ("count by (host) (stowage_agent_info)", &[]),
        ("stowage_repositories * on (node) stowage_agent_info", &[]),
        ("stowage_agent_info", &["pod"]),
        (r#"{__name__="stowage_agent_info"}"#, &[]),
        ("time() -", &[]),
    ] {
        assert!(
            !check(expr, printed).is_empty(),
            "`{expr}` printing {printed:?} passed"
        );
    }
    // The shipped files are read and hold expressions.
    let expressions = monitoring_expressions();
    assert!(
        expressions
            .iter()
            .filter(|(source, _, _)| source.starts_with("alert"))
            .count()
            >= 5
            && expressions
                .iter()
                .any(|(source, _, _)| source.starts_with("panel")),
        "{expressions:?}"
    );
}
