//! Security at the edges of the real binaries: mutual TLS and caller identities, bearer tokens,
//! a table of malformed requests each refused with the right code and a message naming the
//! field (and nothing changed on disk or in the repository), and secrets kept out of logs and
//! exported spans.

use std::{collections::BTreeMap, time::Duration};

use stowage_e2e::{
    agent::{AgentFixture, run_backup, run_restore},
    kubelet::new_pod_uid,
    otlp::OtlpCollector,
    pki::TestCa,
};
use stowage_proto::v1::{
    BackupVolumeRequest, CancelOperationRequest, GetAgentInfoRequest, PodVolumeRef,
    RestoreVolumeRequest, VolumeSource, volume_agent_client::VolumeAgentClient,
};
use tonic::{Code, Status};

// ---------------------------------------------------------------------------------------------
// mTLS and caller identities

struct TlsAgent {
    ca: TestCa,
    fixture: AgentFixture,
}

/// An agent serving mTLS with its own certificate, admitting the default identities
/// (orchestrator, repo-manager), plus `extra_args`.
async fn tls_agent(extra_args: &[String]) -> TlsAgent {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = dir.path().join("pki");
    let ca = TestCa::new(&pki, "stowage");
    let server = ca.issue("stowage-volume-agent");
    let orchestrator = ca.issue("stowage-orchestrator");
    let mut args = server.server_args(&ca);
    args.extend_from_slice(extra_args);
    let fixture = AgentFixture::start_in(
        dir,
        &args,
        &BTreeMap::new(),
        Some(ca.client_tls(Some(&orchestrator))),
    )
    .await;
    TlsAgent { ca, fixture }
}

async fn agent_info(
    fixture: &AgentFixture,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<String, String> {
    let mut client = fixture
        .client(tls)
        .await
        .map_err(|error| error.to_string())?;
    client
        .get_agent_info(GetAgentInfoRequest {})
        .await
        .map(|response| response.into_inner().node_name)
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_over_mtls_serves_the_orchestrator_and_repo_manager_identities() {
    let agent = tls_agent(&[]).await;
    for identity in ["stowage-orchestrator", "stowage-repo-manager"] {
        let cert = agent.ca.issue(identity);
        assert_eq!(
            agent_info(&agent.fixture, Some(agent.ca.client_tls(Some(&cert)))).await,
            Ok("node-1".to_string()),
            "{identity}"
        );
    }
    // A whole backup over mTLS, streaming included.
    let cert = agent.ca.issue("stowage-orchestrator");
    let mut client = agent
        .fixture
        .client(Some(agent.ca.client_tls(Some(&cert))))
        .await
        .expect("connecting with TLS");
    let volume = agent.fixture.pod_with_data("db-0", 10_000);
    let result = run_backup(
        &mut client,
        agent.fixture.backup_request("tls-backup", volume),
    )
    .await
    .expect("backup over mTLS");
    assert!(!result.snapshot_id.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_over_mtls_refuses_other_identities_missing_certificates_and_plaintext() {
    let agent = tls_agent(&[]).await;
    // Signed by the right CA, but not a caller the agent serves.
    let stranger = agent.ca.issue("stowage-cli");
    let refused = agent_info(&agent.fixture, Some(agent.ca.client_tls(Some(&stranger)))).await;
    let message = refused.expect_err("a stranger identity is refused");
    assert!(message.starts_with("PermissionDenied"), "{message}");
    assert!(message.contains("stowage-orchestrator"), "{message}");

    // The right name, from a CA the agent does not trust.
    let other_dir = tempfile::tempdir().expect("temp dir");
    let other_ca = TestCa::new(other_dir.path(), "rogue");
    let impostor = other_ca.issue("stowage-orchestrator");
    let tls = agent
        .ca
        .client_tls(None)
        .identity(tonic::transport::Identity::from_pem(
            &impostor.cert_pem,
            &impostor.key_pem,
        ));
    assert!(
        agent_info(&agent.fixture, Some(tls)).await.is_err(),
        "a certificate from another CA is refused"
    );

    // No client certificate at all: the TLS handshake fails.
    assert!(
        agent_info(&agent.fixture, Some(agent.ca.client_tls(None)))
            .await
            .is_err(),
        "a caller without a certificate is refused"
    );

    // Plaintext against a TLS port.
    assert!(
        agent_info(&agent.fixture, None).await.is_err(),
        "a plaintext caller is refused"
    );
    assert!(
        agent
            .fixture
            .fingerprint()
            .keys()
            .all(|path| !path.contains("snapshots/")),
        "nothing was backed up"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_tokens_admit_external_callers_without_a_certificate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let token = format!("token-{}", new_pod_uid());
    let token_file = dir.path().join("tokens");
    std::fs::write(&token_file, format!("# callers\n{token}\n")).expect("writing tokens");
    let agent = tls_agent(&["--auth-token-file".into(), token_file.display().to_string()]).await;
    let call = |authorization: Option<String>| {
        let tls = agent.ca.client_tls(None);
        let fixture = &agent.fixture;
        async move {
            let mut client = fixture.client(Some(tls)).await.expect("connecting");
            let mut request = tonic::Request::new(GetAgentInfoRequest {});
            if let Some(value) = authorization {
                request
                    .metadata_mut()
                    .insert("authorization", value.parse().expect("header value"));
            }
            client.get_agent_info(request).await.map(|_| ())
        }
    };
    call(Some(format!("Bearer {token}")))
        .await
        .expect("a known token is admitted");
    for wrong in [
        None,
        Some("Bearer not-the-token".to_string()),
        Some(token.clone()),
    ] {
        let status = call(wrong.clone()).await.expect_err("refused");
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{wrong:?}: {status:?}"
        );
        assert!(!status.message().contains(&token), "{status:?}");
    }
    // The health service stays open for probes.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        stowage_grpc::connect_with(&agent.fixture.url, Some(agent.ca.client_tls(None)))
            .await
            .expect("connecting"),
    );
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health without credentials");
    assert!(
        !agent.fixture.agent.log().contains(&token),
        "token in the log"
    );
}

// ---------------------------------------------------------------------------------------------
// Malformed requests

enum Call {
    Backup(BackupVolumeRequest),
    Restore(RestoreVolumeRequest),
    Cancel(CancelOperationRequest),
}

struct Row {
    name: &'static str,
    call: Call,
    code: Code,
    /// What the message must name: the field, or the offending value.
    mentions: String,
}

async fn send(
    client: &mut VolumeAgentClient<stowage_grpc::TracedChannel>,
    call: Call,
) -> Result<(), Status> {
    match call {
        Call::Backup(request) => run_backup(client, request).await.map(|_| ()),
        Call::Restore(request) => run_restore(client, request).await.map(|_| ()),
        Call::Cancel(request) => client.cancel_operation(request).await.map(|_| ()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_agent_requests_are_refused_naming_the_field_and_change_nothing() {
    let fixture = AgentFixture::start(&[], &BTreeMap::new(), None).await;
    let volume = fixture.pod_with_data("db-0", 4096);
    let pod = fixture.kubelet.pod(&volume.pod_uid);
    let plugin_dir = pod.dir.join("volumes/kubernetes.io~empty-dir");
    let outside = fixture.dir.path().join("outside");
    std::fs::create_dir_all(&outside).expect("outside dir");
    std::os::unix::fs::symlink(&outside, plugin_dir.join("evil")).expect("symlink");
    std::fs::write(plugin_dir.join("afile"), b"not a directory").expect("file volume");
    let absent_uid = new_pod_uid();

    let backup = |edit: &dyn Fn(&mut BackupVolumeRequest)| {
        let mut request = fixture.backup_request("bad-backup", volume.clone());
        edit(&mut request);
        Call::Backup(request)
    };
    let on_volume = |edit: &dyn Fn(&mut PodVolumeRef)| {
        backup(&|request| {
            if let Some(volume) = request.volume.as_mut() {
                edit(volume)
            }
        })
    };
    let restore = |edit: &dyn Fn(&mut RestoreVolumeRequest)| {
        let mut request = fixture.restore_request("bad-restore", volume.clone(), "1a2b3c4d");
        edit(&mut request);
        Call::Restore(request)
    };
    let cancel = |id: &str| {
        Call::Cancel(CancelOperationRequest {
            operation_id: id.into(),
        })
    };
    use Code::{FailedPrecondition as Precondition, InvalidArgument as Invalid, NotFound};
    let row = |name, call, code, mentions: &str| Row {
        name,
        call,
        code,
        mentions: mentions.to_string(),
    };
    let rows = vec![
        // BackupVolume: the operation and the volume reference
        row(
            "empty operation id",
            backup(&|r| r.operation_id.clear()),
            Invalid,
            "operation_id",
        ),
        row(
            "operation id with a line break",
            backup(&|r| r.operation_id = "a\nb".into()),
            Invalid,
            "operation_id",
        ),
        row(
            "overlong operation id",
            backup(&|r| r.operation_id = "x".repeat(300)),
            Invalid,
            "operation_id",
        ),
        row(
            "missing volume",
            backup(&|r| r.volume = None),
            Invalid,
            "volume",
        ),
        row(
            "empty namespace",
            on_volume(&|v| v.namespace.clear()),
            Invalid,
            "namespace",
        ),
        row(
            "upper-case namespace",
            on_volume(&|v| v.namespace = "Shop".into()),
            Invalid,
            "namespace",
        ),
        row(
            "namespace with a path",
            on_volume(&|v| v.namespace = "shop/../kube-system".into()),
            Invalid,
            "namespace",
        ),
        row(
            "overlong namespace",
            on_volume(&|v| v.namespace = "n".repeat(64)),
            Invalid,
            "namespace",
        ),
        row(
            "empty pod name",
            on_volume(&|v| v.pod_name.clear()),
            Invalid,
            "pod_name",
        ),
        row(
            "pod name with a space",
            on_volume(&|v| v.pod_name = "db 0".into()),
            Invalid,
            "pod_name",
        ),
        row(
            "pod name with a comma",
            on_volume(&|v| v.pod_name = "db,0".into()),
            Invalid,
            "pod_name",
        ),
        row(
            "empty pod uid",
            on_volume(&|v| v.pod_uid.clear()),
            Invalid,
            "pod uid",
        ),
        row(
            "pod uid climbing out",
            on_volume(&|v| v.pod_uid = "../etc".into()),
            Invalid,
            "pod uid",
        ),
        row(
            "pod uid with a suffix",
            on_volume(&|v| v.pod_uid.push_str("/..")),
            Invalid,
            "pod uid",
        ),
        row(
            "pod uid with NUL",
            on_volume(&|v| v.pod_uid.replace_range(0..1, "\0")),
            Invalid,
            "pod uid",
        ),
        row(
            "pod not on this node",
            on_volume(&|v| v.pod_uid = absent_uid.clone()),
            NotFound,
            &absent_uid,
        ),
        row(
            "empty volume name",
            on_volume(&|v| v.volume_name.clear()),
            Invalid,
            "volume name",
        ),
        row(
            "volume name ..",
            on_volume(&|v| v.volume_name = "..".into()),
            Invalid,
            "volume name",
        ),
        row(
            "volume name with a slash",
            on_volume(&|v| v.volume_name = "a/b".into()),
            Invalid,
            "volume name",
        ),
        row(
            "volume name with NUL",
            on_volume(&|v| v.volume_name = "data\0".into()),
            Invalid,
            "volume name",
        ),
        row(
            "volume not in the pod",
            on_volume(&|v| v.volume_name = "missing".into()),
            NotFound,
            "`missing`",
        ),
        row(
            "volume symlinked out of the pod",
            on_volume(&|v| v.volume_name = "evil".into()),
            Invalid,
            "outside pod directory",
        ),
        row(
            "volume that is a file",
            on_volume(&|v| v.volume_name = "afile".into()),
            Precondition,
            "afile",
        ),
        row(
            "hostPath volume",
            on_volume(&|v| v.source = VolumeSource::HostPath as i32),
            Invalid,
            "hostPath",
        ),
        row(
            "block volume",
            on_volume(&|v| v.source = VolumeSource::Block as i32),
            Invalid,
            "block",
        ),
        row(
            "PV name climbing out",
            on_volume(&|v| {
                v.source = VolumeSource::PersistentVolumeClaim as i32;
                v.pv_name = "../../etc".into();
            }),
            Invalid,
            "PV name",
        ),
        row(
            "claim without a PV name",
            on_volume(&|v| {
                v.source = VolumeSource::PersistentVolumeClaim as i32;
                v.pv_name.clear();
            }),
            Invalid,
            "PV name",
        ),
        // BackupVolume: the repository
        row(
            "missing repository",
            backup(&|r| r.repository = None),
            Invalid,
            "repository",
        ),
        row(
            "empty repository url",
            backup(&|r| r.repository.as_mut().unwrap().url.clear()),
            Invalid,
            "repository url",
        ),
        row(
            "repository url with a line break",
            backup(&|r| r.repository.as_mut().unwrap().url.push_str("\nx")),
            Invalid,
            "repository url",
        ),
        row(
            "repository url as an option",
            backup(&|r| r.repository.as_mut().unwrap().url = "--insecure-tls".into()),
            Invalid,
            "repository url",
        ),
        row(
            "parent snapshot id as an option",
            backup(&|r| r.parent_snapshot_id = "--dry-run".into()),
            Invalid,
            "parent_snapshot_id",
        ),
        row(
            "parent snapshot id `latest`",
            backup(&|r| r.parent_snapshot_id = "latest".into()),
            Invalid,
            "parent_snapshot_id",
        ),
        row(
            "empty password",
            backup(&|r| r.repository.as_mut().unwrap().password.clear()),
            Invalid,
            "password",
        ),
        row(
            "password command in the environment",
            backup(&|r| {
                r.repository
                    .as_mut()
                    .unwrap()
                    .env
                    .insert("RESTIC_PASSWORD_COMMAND".into(), "touch /tmp/pwned".into());
            }),
            Invalid,
            "RESTIC_PASSWORD_COMMAND",
        ),
        row(
            "preloaded library in the environment",
            backup(&|r| {
                r.repository
                    .as_mut()
                    .unwrap()
                    .env
                    .insert("LD_PRELOAD".into(), "/tmp/x.so".into());
            }),
            Invalid,
            "LD_PRELOAD",
        ),
        row(
            "cache dir in the environment",
            backup(&|r| {
                r.repository
                    .as_mut()
                    .unwrap()
                    .env
                    .insert("RESTIC_CACHE_DIR".into(), "/".into());
            }),
            Invalid,
            "RESTIC_CACHE_DIR",
        ),
        // BackupVolume: what becomes snapshot tags
        row(
            "backup name with a comma",
            backup(&|r| r.backup_name = "a,b".into()),
            Invalid,
            "backup_name",
        ),
        row(
            "upper-case backup name",
            backup(&|r| r.backup_name = "Nightly".into()),
            Invalid,
            "backup_name",
        ),
        row(
            "tag value with a comma",
            backup(&|r| {
                r.extra_tags.insert("team".into(), "red,blue".into());
            }),
            Invalid,
            "team=red,blue",
        ),
        row(
            "tag key with =",
            backup(&|r| {
                r.extra_tags.insert("a=b".into(), "c".into());
            }),
            Invalid,
            "a=b=c",
        ),
        row(
            "stable identity with a comma",
            backup(&|r| r.stable_identity = "pvc/a,b".into()),
            Invalid,
            "stable-identity",
        ),
        // RestoreVolume
        row(
            "restore: empty operation id",
            restore(&|r| r.operation_id.clear()),
            Invalid,
            "operation_id",
        ),
        row(
            "restore: empty snapshot id",
            restore(&|r| r.snapshot_id.clear()),
            Invalid,
            "snapshot_id",
        ),
        row(
            "restore: snapshot id as an option",
            restore(&|r| r.snapshot_id = "--help".into()),
            Invalid,
            "snapshot_id",
        ),
        row(
            "restore: snapshot id `latest`",
            restore(&|r| r.snapshot_id = "latest".into()),
            Invalid,
            "snapshot_id",
        ),
        row(
            "restore: snapshot id with a path",
            restore(&|r| r.snapshot_id = "1a2b3c4d/../x".into()),
            Invalid,
            "snapshot_id",
        ),
        row(
            "restore: snapshot id with NUL",
            restore(&|r| r.snapshot_id = "1a2b3c4d\0".into()),
            Invalid,
            "snapshot_id",
        ),
        row(
            "restore: empty restore uid",
            restore(&|r| r.restore_uid.clear()),
            Invalid,
            "restore uid",
        ),
        row(
            "restore: restore uid climbing out",
            restore(&|r| r.restore_uid = "../x".into()),
            Invalid,
            "restore uid",
        ),
        row(
            "restore: missing volume",
            restore(&|r| r.volume = None),
            Invalid,
            "volume",
        ),
        row(
            "restore: bad pod uid",
            restore(&|r| r.volume.as_mut().unwrap().pod_uid = "..".into()),
            Invalid,
            "pod uid",
        ),
        row(
            "restore: pod not on this node",
            restore(&|r| r.volume.as_mut().unwrap().pod_uid = absent_uid.clone()),
            NotFound,
            &absent_uid,
        ),
        row(
            "restore: volume name ..",
            restore(&|r| r.volume.as_mut().unwrap().volume_name = "..".into()),
            Invalid,
            "volume name",
        ),
        row(
            "restore: volume not in the pod",
            restore(&|r| r.volume.as_mut().unwrap().volume_name = "missing".into()),
            NotFound,
            "`missing`",
        ),
        row(
            "restore: into a file",
            restore(&|r| r.volume.as_mut().unwrap().volume_name = "afile".into()),
            Precondition,
            "afile",
        ),
        row(
            "restore: bad namespace",
            restore(&|r| r.volume.as_mut().unwrap().namespace = "a_b".into()),
            Invalid,
            "namespace",
        ),
        row(
            "restore: missing repository",
            restore(&|r| r.repository = None),
            Invalid,
            "repository",
        ),
        row(
            "restore: empty password",
            restore(&|r| r.repository.as_mut().unwrap().password.clear()),
            Invalid,
            "password",
        ),
        row(
            "restore: PATH in the environment",
            restore(&|r| {
                r.repository
                    .as_mut()
                    .unwrap()
                    .env
                    .insert("PATH".into(), "/tmp".into());
            }),
            Invalid,
            "PATH",
        ),
        // CancelOperation
        row(
            "cancel: empty operation id",
            cancel(""),
            Invalid,
            "operation_id",
        ),
        row(
            "cancel: operation id with a control character",
            cancel("a\u{7}"),
            Invalid,
            "operation_id",
        ),
    ];
    assert!(rows.len() >= 40, "{} rows", rows.len());

    let before = fixture.fingerprint();
    let mut client = fixture.client(None).await.expect("connecting");
    let mut failures = Vec::new();
    for Row {
        name,
        call,
        code,
        mentions,
    } in rows
    {
        match send(&mut client, call).await {
            Ok(()) => failures.push(format!("{name}: accepted")),
            Err(status) if status.code() != code => failures.push(format!(
                "{name}: {:?} instead of {code:?} ({})",
                status.code(),
                status.message()
            )),
            Err(status) if !status.message().contains(&mentions) => failures.push(format!(
                "{name}: message does not name `{}`: {}",
                mentions.escape_debug(),
                status.message()
            )),
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        before,
        fixture.fingerprint(),
        "the pods tree or the repository changed"
    );
    assert!(
        std::fs::read_dir(&outside)
            .expect("outside dir")
            .next()
            .is_none(),
        "something was written through the symlink"
    );
    assert!(!std::path::Path::new("/tmp/pwned").exists());
}

// ---------------------------------------------------------------------------------------------
// Secrets

#[tokio::test(flavor = "multi_thread")]
async fn passwords_tokens_and_keys_stay_out_of_logs_and_spans() {
    let collector = OtlpCollector::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new(&dir.path().join("pki"), "stowage");
    let server = ca.issue("stowage-volume-agent");
    let orchestrator = ca.issue("stowage-orchestrator");
    let token = format!("token-{}", new_pod_uid());
    let token_file = dir.path().join("tokens");
    std::fs::write(&token_file, &token).expect("writing tokens");
    let mut args = server.server_args(&ca);
    args.extend([
        "--auth-token-file".to_string(),
        token_file.display().to_string(),
    ]);
    let envs = BTreeMap::from([
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
            collector.endpoint.clone(),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "100".to_string()),
        // The most verbose logging is the hardest case.
        ("STOWAGE_LOG_LEVEL".to_string(), "debug".to_string()),
    ]);
    let mut fixture =
        AgentFixture::start_in(dir, &args, &envs, Some(ca.client_tls(Some(&orchestrator)))).await;
    let aws_secret = format!("aws-{}", new_pod_uid());
    let mut client = fixture
        .client(Some(ca.client_tls(Some(&orchestrator))))
        .await
        .expect("connecting");

    let volume = fixture.pod_with_data("db-0", 20_000);
    let mut request = fixture.backup_request("secret-backup", volume.clone());
    request
        .repository
        .as_mut()
        .unwrap()
        .env
        .insert("AWS_SECRET_ACCESS_KEY".into(), aws_secret.clone());
    let backup = run_backup(&mut client, request).await.expect("backup");
    // Failures are where secrets leak into messages: a wrong password, a refused request.
    let mut wrong = fixture.backup_request("wrong-password", volume.clone());
    let wrong_password = format!("wrong-{}", new_pod_uid());
    wrong.repository.as_mut().unwrap().password = wrong_password.clone();
    let status = run_backup(&mut client, wrong)
        .await
        .expect_err("wrong password");
    assert!(!status.message().contains(&wrong_password), "{status:?}");
    let mut refused = fixture.restore_request("refused", volume.clone(), "latest");
    refused.repository.as_mut().unwrap().password = fixture.password.clone();
    let status = run_restore(&mut client, refused)
        .await
        .expect_err("refused");
    assert!(!status.message().contains(&fixture.password), "{status:?}");
    let mut with_token = tonic::Request::new(GetAgentInfoRequest {});
    with_token.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    client
        .get_agent_info(with_token)
        .await
        .expect("token accepted");

    collector
        .wait_for(Duration::from_secs(30), |spans| {
            spans.iter().any(|span| {
                span.name == "backup_volume"
                    && span.attribute("snapshot_id") == Some(backup.snapshot_id.as_str())
            })
        })
        .await;
    // Stopping flushes every span still buffered.
    fixture.agent.stop(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let key_body: Vec<&str> = server
        .key_pem
        .lines()
        .chain(orchestrator.key_pem.lines())
        .filter(|line| !line.starts_with("-----") && line.len() > 16)
        .collect();
    let mut secrets = vec![
        fixture.password.clone(),
        wrong_password,
        token.clone(),
        aws_secret,
    ];
    secrets.extend(key_body.iter().map(|line| line.to_string()));
    let log = fixture.agent.log();
    assert!(
        log.contains("backup done"),
        "the log is the agent's:\n{log}"
    );
    let spans = collector.spans();
    assert!(spans.len() > 3, "spans arrived: {}", spans.len());
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "a secret is in the agent log"
        );
        for span in &spans {
            for (key, value) in &span.attributes {
                assert!(
                    !value.contains(secret.as_str()),
                    "a secret is in attribute {key} of span {}",
                    span.name
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Malformed requests to the orchestrator and the repo-manager

type Answer = std::pin::Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>;

struct ServiceRow {
    name: String,
    call: Answer,
    code: Code,
    /// The message must name one of these (the field, or the offending value).
    mentions: Vec<String>,
}

/// A row's call: `$client`'s `$method` with `$request`, as an [`Answer`].
macro_rules! call {
    ($client:expr, $method:ident, $request:expr) => {{
        let mut client = $client;
        answer(async move { client.$method($request).await })
    }};
}

fn answer<T: Send + 'static>(
    future: impl Future<Output = Result<tonic::Response<T>, Status>> + Send + 'static,
) -> Answer {
    Box::pin(async move { future.await.map(|_| ()) })
}

/// What a stack holds that a refused request must not change: the bucket's files and what the
/// APIs list.
async fn stack_state(
    stack: &stowage_e2e::stack::Stack,
    orchestrator: &mut stowage_proto::v1::orchestrator_client::OrchestratorClient<
        stowage_grpc::TracedChannel,
    >,
    repo_manager: &mut stowage_proto::v1::repo_manager_client::RepoManagerClient<
        stowage_grpc::TracedChannel,
    >,
) -> (BTreeMap<String, (u64, u64)>, Vec<String>) {
    use stowage_proto::v1::{ListBackupsRequest, ListRepositoriesRequest, ListRestoresRequest};
    let mut listed = Vec::new();
    let backups = orchestrator
        .list_backups(ListBackupsRequest {})
        .await
        .expect("listing backups")
        .into_inner();
    listed.extend(backups.backups.iter().map(|b| format!("backup {}", b.name)));
    let restores = orchestrator
        .list_restores(ListRestoresRequest {})
        .await
        .expect("listing restores")
        .into_inner();
    listed.extend(
        restores
            .restores
            .iter()
            .map(|r| format!("restore {}", r.name)),
    );
    let repositories = repo_manager
        .list_repositories(ListRepositoriesRequest {})
        .await
        .expect("listing repositories")
        .into_inner();
    listed.extend(
        repositories
            .repositories
            .iter()
            .map(|r| format!("repository {}", r.namespace)),
    );
    (
        stowage_e2e::agent::fingerprint_dir(&stack.storage, "bucket"),
        listed,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_orchestrator_and_repo_manager_requests_are_refused_naming_the_field() {
    use stowage_proto::v1::{
        AcquireLeaseRequest, BackupSpec, CancelBackupRequest, CreateBackupRequest,
        CreateRestoreRequest, DeleteBackupRequest, EnsureRepositoryRequest, ForgetBackupRequest,
        GetBackupLogsRequest, GetBackupRequest, GetCoverageRequest, GetRepositoryAccessRequest,
        GetRepositoryRequest, GetRestoreRequest, LeaseMode, MaintenanceKind, ReleaseLeaseRequest,
        RenewLeaseRequest, RestoreSpec, RotateKeyRequest, RunMaintenanceRequest,
        WatchBackupRequest, repo_manager_client::RepoManagerClient,
    };
    let stack = stowage_e2e::stack::Stack::start(Default::default()).await;
    let orchestrator = stack.client().await;
    let repo_manager = RepoManagerClient::new(
        stowage_grpc::connect(&stack.repo_manager.url)
            .await
            .expect("connecting to the repo-manager"),
    );
    // One repository, so refusals are not just "nothing exists".
    repo_manager
        .clone()
        .ensure_repository(EnsureRepositoryRequest {
            namespace: "shop".into(),
        })
        .await
        .expect("a repository for shop");
    let before = stack_state(&stack, &mut orchestrator.clone(), &mut repo_manager.clone()).await;

    let spec = || BackupSpec {
        included_namespaces: vec!["shop".into()],
        ..Default::default()
    };
    let mut rows: Vec<ServiceRow> = Vec::new();
    let mut row = |name: &str, call: Answer, code: Code, mentions: &[&str]| {
        rows.push(ServiceRow {
            name: name.to_string(),
            call,
            code,
            mentions: mentions.iter().map(|m| m.to_string()).collect(),
        })
    };
    use Code::{InvalidArgument as Invalid, NotFound};
    let o = || orchestrator.clone();
    let r = || repo_manager.clone();

    // Orchestrator
    for (label, bad) in [
        ("upper case", "Nightly"),
        ("underscore", "a_b"),
        ("slash", "a/b"),
        ("dot-dot", ".."),
        ("overlong", &"n".repeat(254)),
    ] {
        let request = CreateBackupRequest {
            name: bad.to_string(),
            spec: Some(spec()),
        };
        row(
            &format!("CreateBackup: name with {label}"),
            call!(o(), create_backup, request),
            Invalid,
            &["name", bad],
        );
    }
    for (label, edit) in [
        (
            "included namespace with a path",
            Box::new(|s: &mut BackupSpec| s.included_namespaces = vec!["../kube-system".into()])
                as Box<dyn Fn(&mut BackupSpec)>,
        ),
        (
            "upper-case excluded namespace",
            Box::new(|s: &mut BackupSpec| s.excluded_namespaces = vec!["Shop".into()]),
        ),
        (
            "label selector key with a space",
            Box::new(|s: &mut BackupSpec| {
                s.label_selector.insert("app name".into(), "db".into());
            }),
        ),
        (
            "negative ttl",
            Box::new(|s: &mut BackupSpec| {
                let mut ttl = prost_duration();
                ttl.seconds = -60;
                s.ttl = Some(ttl);
            }),
        ),
        (
            "negative timeout",
            Box::new(|s: &mut BackupSpec| {
                let mut timeout = prost_duration();
                timeout.seconds = -1;
                s.timeout = Some(timeout);
            }),
        ),
    ] {
        let mut backup_spec = spec();
        edit(&mut backup_spec);
        let request = CreateBackupRequest {
            name: format!("nightly-{}", label.replace(' ', "-")),
            spec: Some(backup_spec),
        };
        let mentions: &[&str] = match label {
            "included namespace with a path" => &["included_namespaces", "../kube-system"],
            "upper-case excluded namespace" => &["excluded_namespaces", "Shop"],
            "label selector key with a space" => &["label", "app name"],
            "negative ttl" => &["ttl"],
            _ => &["timeout"],
        };
        row(
            &format!("CreateBackup: {label}"),
            call!(o(), create_backup, request),
            Invalid,
            mentions,
        );
    }
    row(
        "GetBackup: empty name",
        call!(
            o(),
            get_backup,
            GetBackupRequest {
                name: String::new(),
            }
        ),
        Invalid,
        &["name"],
    );
    row(
        "GetBackup: name with a path",
        call!(
            o(),
            get_backup,
            GetBackupRequest {
                name: "../etc".into(),
            }
        ),
        Invalid,
        &["name", "../etc"],
    );
    row(
        "GetBackup: unknown",
        call!(
            o(),
            get_backup,
            GetBackupRequest {
                name: "no-such-backup".into(),
            }
        ),
        NotFound,
        &["no-such-backup"],
    );
    row(
        "WatchBackup: unknown",
        answer({
            let mut c = o();
            async move {
                let mut stream = c
                    .watch_backup(WatchBackupRequest {
                        name: "no-such-backup".into(),
                    })
                    .await?
                    .into_inner();
                stream.message().await.map(tonic::Response::new)
            }
        }),
        NotFound,
        &["no-such-backup"],
    );
    row(
        "CancelBackup: unknown",
        call!(
            o(),
            cancel_backup,
            CancelBackupRequest {
                name: "no-such-backup".into(),
            }
        ),
        NotFound,
        &["no-such-backup"],
    );
    row(
        "DeleteBackup: name with a path",
        call!(
            o(),
            delete_backup,
            DeleteBackupRequest {
                name: "a/../b".into(),
            }
        ),
        Invalid,
        &["name", "a/../b"],
    );
    row(
        "GetBackupLogs: unknown",
        call!(
            o(),
            get_backup_logs,
            GetBackupLogsRequest {
                name: "no-such-backup".into(),
            }
        ),
        NotFound,
        &["no-such-backup"],
    );
    row(
        "CreateRestore: no backup name",
        call!(
            o(),
            create_restore,
            CreateRestoreRequest {
                name: String::new(),
                spec: Some(RestoreSpec::default()),
            }
        ),
        Invalid,
        &["backup_name", "backup name"],
    );
    row(
        "CreateRestore: unknown backup",
        call!(
            o(),
            create_restore,
            CreateRestoreRequest {
                name: String::new(),
                spec: Some(RestoreSpec {
                    backup_name: "no-such-backup".into(),
                    ..Default::default()
                }),
            }
        ),
        NotFound,
        &["no-such-backup"],
    );
    row(
        "CreateRestore: bad restore name",
        call!(
            o(),
            create_restore,
            CreateRestoreRequest {
                name: "Restore_1".into(),
                spec: Some(RestoreSpec {
                    backup_name: "no-such-backup".into(),
                    ..Default::default()
                }),
            }
        ),
        Invalid,
        &["name", "Restore_1"],
    );
    row(
        "CreateRestore: namespace mapping to a bad name",
        call!(
            o(),
            create_restore,
            CreateRestoreRequest {
                name: String::new(),
                spec: Some(RestoreSpec {
                    backup_name: "no-such-backup".into(),
                    namespace_mapping: [("shop".to_string(), "Shop_2".to_string())].into(),
                    ..Default::default()
                }),
            }
        ),
        Invalid,
        &["namespace_mapping", "Shop_2"],
    );
    row(
        "GetRestore: unknown",
        call!(
            o(),
            get_restore,
            GetRestoreRequest {
                name: "no-such-restore".into(),
            }
        ),
        NotFound,
        &["no-such-restore"],
    );
    row(
        "MaintainRepository: namespace with a path",
        call!(
            o(),
            maintain_repository,
            RunMaintenanceRequest {
                namespace: "../shop".into(),
                kind: MaintenanceKind::Check as i32,
            }
        ),
        Invalid,
        &["namespace", "../shop"],
    );
    row(
        "GetCoverage: namespace with a path",
        call!(
            o(),
            get_coverage,
            GetCoverageRequest {
                namespaces: vec!["a/b".into()],
                default_volumes_to_fs_backup: false,
            }
        ),
        Invalid,
        &["namespace", "a/b"],
    );

    // Repo-manager
    for (label, bad) in [
        ("empty", ""),
        ("upper case", "Shop"),
        ("a path", "../shop"),
        ("a slash", "a/b"),
        ("NUL", "shop\0"),
        ("overlong", &"n".repeat(64)),
    ] {
        let namespace = bad.to_string();
        row(
            &format!("EnsureRepository: namespace {label}"),
            call!(
                r(),
                ensure_repository,
                EnsureRepositoryRequest { namespace }
            ),
            Invalid,
            &["namespace"],
        );
    }
    row(
        "GetRepository: unknown",
        call!(
            r(),
            get_repository,
            GetRepositoryRequest {
                namespace: "no-such-ns".into(),
            }
        ),
        NotFound,
        &["no-such-ns"],
    );
    row(
        "GetRepository: bad namespace",
        call!(
            r(),
            get_repository,
            GetRepositoryRequest {
                namespace: "a_b".into(),
            }
        ),
        Invalid,
        &["namespace"],
    );
    row(
        "RunMaintenance: no kind",
        call!(
            r(),
            run_maintenance,
            RunMaintenanceRequest {
                namespace: "shop".into(),
                kind: MaintenanceKind::Unspecified as i32,
            }
        ),
        Invalid,
        &["kind"],
    );
    row(
        "RunMaintenance: bad namespace",
        call!(
            r(),
            run_maintenance,
            RunMaintenanceRequest {
                namespace: "../x".into(),
                kind: MaintenanceKind::Check as i32,
            }
        ),
        Invalid,
        &["namespace"],
    );
    row(
        "GetRepositoryAccess: bad namespace",
        call!(
            r(),
            get_repository_access,
            GetRepositoryAccessRequest {
                namespace: "../x".into(),
            }
        ),
        Invalid,
        &["namespace"],
    );
    row(
        "AcquireLease: no mode",
        call!(
            r(),
            acquire_lease,
            AcquireLeaseRequest {
                namespace: "shop".into(),
                mode: LeaseMode::Unspecified as i32,
                holder: "test".into(),
                ..Default::default()
            }
        ),
        Invalid,
        &["mode"],
    );
    row(
        "AcquireLease: bad namespace",
        call!(
            r(),
            acquire_lease,
            AcquireLeaseRequest {
                namespace: "Shop".into(),
                mode: LeaseMode::Shared as i32,
                holder: "test".into(),
                ..Default::default()
            }
        ),
        Invalid,
        &["namespace"],
    );
    row(
        "RenewLease: empty id",
        call!(
            r(),
            renew_lease,
            RenewLeaseRequest {
                lease_id: String::new(),
                ttl: None,
            }
        ),
        // No lease has the empty id; NotFound naming the lease is as clear as InvalidArgument.
        NotFound,
        &["lease"],
    );
    row(
        "RenewLease: unknown",
        call!(
            r(),
            renew_lease,
            RenewLeaseRequest {
                lease_id: "no-such-lease".into(),
                ttl: None,
            }
        ),
        NotFound,
        &["no-such-lease"],
    );
    row(
        "ReleaseLease: empty id",
        call!(
            r(),
            release_lease,
            ReleaseLeaseRequest {
                lease_id: String::new(),
            }
        ),
        Invalid,
        &["lease_id", "lease id"],
    );
    row(
        "ForgetBackup: backup name with a path",
        call!(
            r(),
            forget_backup,
            ForgetBackupRequest {
                namespace: "shop".into(),
                backup_name: "../nightly".into(),
            }
        ),
        Invalid,
        &["backup_name", "backup name", "../nightly"],
    );
    row(
        "ForgetBackup: bad namespace",
        call!(
            r(),
            forget_backup,
            ForgetBackupRequest {
                namespace: "a/b".into(),
                backup_name: "nightly".into(),
            }
        ),
        Invalid,
        &["namespace"],
    );
    row(
        "RotateKey: bad namespace",
        call!(
            r(),
            rotate_key,
            RotateKeyRequest {
                namespace: "../x".into(),
            }
        ),
        Invalid,
        &["namespace"],
    );
    row(
        "RotateKey: unknown",
        call!(
            r(),
            rotate_key,
            RotateKeyRequest {
                namespace: "no-such-ns".into(),
            }
        ),
        NotFound,
        &["no-such-ns"],
    );

    let count = rows.len();
    let mut failures = Vec::new();
    for row in rows {
        if let Some(failure) = check(row).await {
            failures.push(failure);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let after = stack_state(&stack, &mut orchestrator.clone(), &mut repo_manager.clone()).await;
    assert_eq!(before.1, after.1, "what the APIs list changed");
    assert_eq!(before.0, after.0, "the bucket changed");
}

/// `None` when the row was refused with its code and a message naming the field.
async fn check(row: ServiceRow) -> Option<String> {
    let ServiceRow {
        name,
        call,
        code,
        mentions,
    } = row;
    match call.await {
        Ok(()) => Some(format!("{name}: accepted")),
        Err(status) if status.code() != code => Some(format!(
            "{name}: {:?} instead of {code:?} ({})",
            status.code(),
            status.message()
        )),
        Err(status)
            if !mentions
                .iter()
                .any(|m| status.message().contains(m.as_str())) =>
        {
            Some(format!(
                "{name}: message names none of {mentions:?}: {}",
                status.message()
            ))
        }
        Err(_) => None,
    }
}

fn prost_duration() -> stowage_proto::prost_types::Duration {
    Default::default()
}

#[tokio::test(flavor = "multi_thread")]
async fn orchestrator_api_with_bearer_tokens_refuses_unauthenticated_callers() {
    use stowage_proto::v1::ListBackupsRequest;
    let dir = tempfile::tempdir().expect("temp dir");
    let token = format!("token-{}", new_pod_uid());
    let token_file = dir.path().join("tokens");
    std::fs::write(&token_file, format!("{token}\n")).expect("writing tokens");
    let stack = stowage_e2e::stack::Stack::start(stowage_e2e::stack::StackOptions {
        orchestrator_args: vec!["--auth-token-file".into(), token_file.display().to_string()],
        ..Default::default()
    })
    .await;
    let mut client = stack.client().await;
    let list = |authorization: Option<&str>| {
        let mut request = tonic::Request::new(ListBackupsRequest {});
        if let Some(value) = authorization {
            request
                .metadata_mut()
                .insert("authorization", value.parse().expect("header value"));
        }
        request
    };
    client
        .list_backups(list(Some(&format!("Bearer {token}"))))
        .await
        .expect("a caller with the token is served");
    for wrong in [None, Some("Bearer guess")] {
        let status = client.list_backups(list(wrong)).await.expect_err("refused");
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{wrong:?}: {status:?}"
        );
    }
    assert!(
        !stack.orchestrator.process.log().contains(&token),
        "the token is in the orchestrator log"
    );
}

/// The whole stack over mutual TLS, as the mtls component deploys it: a caller with a
/// certificate from the CA backs up through the orchestrator, which reaches the repo-manager by
/// name (verified under that name) and the agent by IP (verified under `--tls-server-name`).
/// The repo-manager admits only the orchestrator's identity; the orchestrator admits any
/// certificate the CA signed and no caller without one.
#[tokio::test(flavor = "multi_thread")]
async fn orchestrator_drives_the_repo_manager_and_agents_over_mtls() {
    use stowage_e2e::{
        TestProcess, agent::wait_until_serving, binary, free_port, kube::KubeEmulator,
        kube::seed_example, kubelet::FakeKubelet, kubelet::write_sample_tree,
    };
    use stowage_proto::v1::{
        BackupPhase, ListBackupsRequest, ListRepositoriesRequest,
        orchestrator_client::OrchestratorClient, repo_manager_client::RepoManagerClient,
    };

    // Declared first, so it is removed after the processes below have stopped.
    let dir = tempfile::tempdir().expect("temp dir");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).expect("log dir");
    let path = |name: &str| dir.path().join(name).display().to_string();
    let ca = TestCa::new(&dir.path().join("pki"), "stowage");
    let orchestrator_cert = ca.issue("stowage-orchestrator");
    let as_orchestrator = ca.client_tls(Some(&orchestrator_cert));
    let kube = KubeEmulator::start(&logs).await;
    let kube_client = kube.client().await;
    stowage_e2e::kube::ensure_namespace(&kube_client, "stowage").await;

    let start = async |name: &str, args: Vec<String>, env: BTreeMap<String, String>| {
        let port = free_port();
        let mut all = vec!["--listen".to_string(), format!("127.0.0.1:{port}")];
        all.extend(args);
        all.extend(ca.issue(name).server_args(&ca));
        let mut process = TestProcess::start(name, binary(name), &all, &env, &logs);
        wait_until_serving(
            &format!("http://127.0.0.1:{port}"),
            Some(as_orchestrator.clone()),
            &mut process,
            Duration::from_secs(30),
        )
        .await;
        (process, port)
    };
    let storage = format!("file://{}", path("bucket"));
    let (_repo_manager, repo_manager_port) = start(
        "stowage-repo-manager",
        vec![
            "--storage-url".into(),
            storage.clone(),
            "--scratch-dir".into(),
            path("scratch-repo-manager"),
        ],
        BTreeMap::from([("STOWAGE_MASTER_KEY".into(), "master-key-for-mtls".into())]),
    )
    .await;
    let kubelet = FakeKubelet::new(dir.path().join("nodes/node-a/pods"));
    let (_agent, agent_port) = start(
        "stowage-volume-agent",
        vec![
            "--node-name".into(),
            "node-a".into(),
            "--pods-root".into(),
            kubelet.pods_root().display().to_string(),
            "--scratch-dir".into(),
            path("scratch-agent"),
        ],
        BTreeMap::new(),
    )
    .await;
    let (orchestrator, orchestrator_port) = start(
        "stowage-orchestrator",
        vec![
            // By name: verified as `localhost`, which only the repo-manager's certificate
            // (of the two servers) is asked to carry here.
            "--repo-manager".into(),
            format!("http://localhost:{repo_manager_port}"),
            "--agent".into(),
            format!("node-a=http://127.0.0.1:{agent_port}"),
            "--tls-server-name".into(),
            "stowage-volume-agent".into(),
            "--storage-url".into(),
            storage,
            "--poll-interval-ms".into(),
            "100".into(),
        ],
        kube.env(),
    )
    .await;

    let example = seed_example(&kube_client, "foo", "node-a", Some("pvc-volume")).await;
    write_sample_tree(
        &kubelet
            .pod(&example.pod_uid())
            .pv("kubernetes.io~local-volume", &example.pv_name()),
        "pvc",
    );
    let caller = ca.issue("stowage-cli");
    let orchestrator_url = format!("http://127.0.0.1:{orchestrator_port}");
    let mut client = OrchestratorClient::new(
        stowage_grpc::connect_with(&orchestrator_url, Some(ca.client_tls(Some(&caller))))
            .await
            .expect("a caller with a certificate from the CA connects"),
    );
    let last = stowage_e2e::api::backup_to_end(
        &mut client,
        "over-mtls",
        stowage_e2e::api::namespace_spec("foo"),
    )
    .await;
    let status = last.status.expect("a status");
    assert_eq!(
        status.phase,
        BackupPhase::Completed as i32,
        "{status:?}\norchestrator log:\n{}",
        orchestrator.log()
    );
    assert_eq!(status.volumes.len(), 1, "{status:?}");

    // The repo-manager hands out repository passwords: a CA-signed stranger is refused.
    let mut stranger = RepoManagerClient::new(
        stowage_grpc::connect_with(
            &format!("http://127.0.0.1:{repo_manager_port}"),
            Some(ca.client_tls(Some(&caller))),
        )
        .await
        .expect("the TLS handshake succeeds"),
    );
    let refused = stranger
        .list_repositories(ListRepositoriesRequest::default())
        .await
        .expect_err("the repo-manager serves only the orchestrator");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // Without a certificate (and with no bearer tokens configured) the orchestrator's
    // handshake fails, so no call gets through.
    let anonymous =
        match stowage_grpc::connect_with(&orchestrator_url, Some(ca.client_tls(None))).await {
            Ok(channel) => Some(
                OrchestratorClient::new(channel)
                    .list_backups(ListBackupsRequest {})
                    .await,
            ),
            Err(_) => None,
        };
    assert!(
        !matches!(anonymous, Some(Ok(_))),
        "a caller without a certificate is served"
    );
}
