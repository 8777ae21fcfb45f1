//! The `stowage` CLI against an orchestrator that requires mutual TLS or a bearer token: the
//! credentials given as flags, as environment variables and through a context saved with
//! `stowage config`, and each refusal without them one sentence that says what to give.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use stowage_e2e::{
    TestProcess, agent::wait_until_serving, binary, failure_after_waiting_for, free_port,
    kubelet::new_pod_uid, pki::TestCa,
};

/// A CLI run isolated from the developer's own settings: no STOWAGE_* variables but those
/// given, and a config directory of the test's own.
fn stowage(config_home: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
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
        "STOWAGE_CONFIG",
    ] {
        command.env_remove(variable);
    }
    command
        .env("XDG_CONFIG_HOME", config_home)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("running the stowage binary")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn succeeded(output: &Output, what: &str, log: &dyn Fn() -> String) {
    assert!(
        output.status.success(),
        "{what}: stderr: {}\nstdout: {}\norchestrator log:\n{}",
        stderr(output),
        stdout(output),
        log()
    );
}

/// A failed command: non-zero exit and exactly one line on stderr, returned.
fn one_sentence_failure(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "expected a failure, got success; stdout:\n{}",
        stdout(output)
    );
    let text = stderr(output);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one sentence on stderr:\n{text}");
    lines[0].to_string()
}

/// The names of the backups `backup get -o json` printed.
fn backup_names(output: &Output) -> Vec<String> {
    let list: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("-o json prints one JSON document");
    list["backups"]
        .as_array()
        .expect("a backups array")
        .iter()
        .map(|backup| backup["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

struct SecuredOrchestrator {
    process: TestProcess,
    /// `https://127.0.0.1:<port>`
    url: String,
    port: u16,
    ca: TestCa,
}

/// An orchestrator serving TLS with a certificate from a test CA (valid for 127.0.0.1), with
/// no Kubernetes API or repo-manager: enough for the calls that read its own records.
async fn secured_orchestrator(dir: &Path, extra_args: &[String]) -> SecuredOrchestrator {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).expect("log dir");
    let ca = TestCa::new(&dir.join("pki"), "stowage");
    let port = free_port();
    let mut args = vec![
        "--listen".to_string(),
        format!("127.0.0.1:{port}"),
        "--repo-manager".to_string(),
        format!("http://127.0.0.1:{}", free_port()),
        "--no-kubernetes".to_string(),
    ];
    args.extend(ca.issue("stowage-orchestrator").server_args(&ca));
    args.extend_from_slice(extra_args);
    let mut process = TestProcess::start(
        "stowage-orchestrator",
        binary("stowage-orchestrator"),
        &args,
        &BTreeMap::new(),
        &logs,
    );
    let probe = ca.issue("probe");
    wait_until_serving(
        &format!("http://127.0.0.1:{port}"),
        Some(ca.client_tls(Some(&probe))),
        &mut process,
        Duration::from_secs(30),
    )
    .await;
    SecuredOrchestrator {
        process,
        url: format!("https://127.0.0.1:{port}"),
        port,
        ca,
    }
}

fn path(path: &Path) -> String {
    path.display().to_string()
}

/// mTLS through `--cacert/--cert/--key`, through STOWAGE_* variables and through a saved
/// context; without a client certificate, with one from another CA, or in plaintext the
/// orchestrator refuses and the CLI says which flags to give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reaches_an_mtls_orchestrator_through_flags_env_and_a_saved_context() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("config-home");
    let orchestrator = secured_orchestrator(dir.path(), &[]).await;
    let log = || orchestrator.process.log();
    let cli = orchestrator.ca.issue("stowage-cli");
    let (ca, cert, key) = (
        path(&orchestrator.ca.ca_path),
        path(&cli.cert_path),
        path(&cli.key_path),
    );
    let url = orchestrator.url.as_str();
    // The CA and the CLI's certificate, as flags.
    let mtls = ["--cacert", &ca, "--cert", &cert, "--key", &key];
    let with_mtls =
        |args: &[&str]| stowage(&home, &[&["--server", url][..], &mtls, args].concat(), &[]);

    // Flags.
    let created = with_mtls(&["backup", "create", "over-mtls"]);
    succeeded(&created, "backup create with flags", &log);
    assert!(
        stdout(&created).starts_with("Backup request \"over-mtls\" submitted successfully."),
        "{}",
        stdout(&created)
    );
    // An http:// address is dialled with TLS once a CA is given, as the services do.
    let plain_scheme = format!("http://127.0.0.1:{}", orchestrator.port);
    let listed = stowage(
        &home,
        &[
            &["--server", &plain_scheme][..],
            &mtls,
            &["backup", "get", "-o", "json"],
        ]
        .concat(),
        &[],
    );
    succeeded(&listed, "backup get with an http:// address and a CA", &log);
    assert_eq!(backup_names(&listed), ["over-mtls"]);

    // The name verified in the server's certificate can be given: one it carries works, one
    // it does not is a TLS failure saying what to check.
    let named = with_mtls(&[
        "--tls-server-name",
        "stowage-orchestrator",
        "backup",
        "get",
        "-o",
        "json",
    ]);
    succeeded(&named, "backup get with --tls-server-name", &log);
    let misnamed = with_mtls(&["--tls-server-name", "stowage-repo-manager", "backup", "get"]);
    let sentence = one_sentence_failure(&misnamed);
    assert!(sentence.contains("--cacert"), "{sentence}");
    assert!(sentence.contains("TLS"), "{sentence}");

    // The environment.
    let listed = stowage(
        &home,
        &["backup", "get", "-o", "json"],
        &[
            ("STOWAGE_SERVER", url),
            ("STOWAGE_CACERT", &ca),
            ("STOWAGE_CERT", &cert),
            ("STOWAGE_KEY", &key),
        ],
    );
    succeeded(&listed, "backup get with STOWAGE_* variables", &log);
    assert_eq!(backup_names(&listed), ["over-mtls"]);

    // Refusals, each one sentence saying what to give.
    let no_certificate = stowage(
        &home,
        &["--server", url, "--cacert", &ca, "backup", "get"],
        &[],
    );
    let sentence = one_sentence_failure(&no_certificate);
    assert!(sentence.contains(url), "{sentence}");
    assert!(
        sentence.contains("--cert") || sentence.contains("certificate"),
        "{sentence}"
    );
    let plaintext = stowage(&home, &["--server", &plain_scheme, "backup", "get"], &[]);
    let sentence = one_sentence_failure(&plaintext);
    assert!(sentence.contains(&plain_scheme), "{sentence}");
    assert!(sentence.contains("--cacert"), "{sentence}");
    let https_without_ca = stowage(&home, &["--server", url, "backup", "get"], &[]);
    let sentence = one_sentence_failure(&https_without_ca);
    assert!(sentence.contains("--cacert"), "{sentence}");
    let rogue_dir = tempfile::tempdir().unwrap();
    let rogue = TestCa::new(rogue_dir.path(), "rogue").issue("stowage-cli");
    let foreign = stowage(
        &home,
        &[
            "--server",
            url,
            "--cacert",
            &ca,
            "--cert",
            &path(&rogue.cert_path),
            "--key",
            &path(&rogue.key_path),
            "backup",
            "get",
        ],
        &[],
    );
    let sentence = one_sentence_failure(&foreign);
    assert!(sentence.contains(url), "{sentence}");
    let half = stowage(
        &home,
        &[
            "--server", url, "--cacert", &ca, "--cert", &cert, "backup", "get",
        ],
        &[],
    );
    assert!(
        one_sentence_failure(&half).contains("--key"),
        "{}",
        stderr(&half)
    );

    // A saved context: typed once, then every command reaches the server without flags.
    let saved = stowage(
        &home,
        &[
            "config",
            "set-context",
            "secure",
            "--server",
            url,
            "--tls-server-name",
            "stowage-orchestrator",
            "--cacert",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
        ],
        &[],
    );
    succeeded(&saved, "config set-context", &log);
    let switched = stowage(&home, &["config", "use-context", "secure"], &[]);
    succeeded(&switched, "config use-context", &log);
    let config_file = home.join("stowage").join("config");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&config_file)
            .expect("the config file under XDG_CONFIG_HOME")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "config file mode {mode:o}");
    }
    let listed = stowage(&home, &["backup", "get", "-o", "json"], &[]);
    succeeded(&listed, "backup get through the saved context", &log);
    assert_eq!(backup_names(&listed), ["over-mtls"]);
    let current = stowage(&home, &["config", "current-context"], &[]);
    assert_eq!(stdout(&current), "secure\n");
    let contexts = stowage(&home, &["config", "get-contexts"], &[]);
    let text = stdout(&contexts);
    let row: Vec<&str> = text
        .lines()
        .find(|line| line.contains("secure"))
        .unwrap_or_else(|| panic!("no context row:\n{text}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[..4], ["*", "secure", url, "mTLS"], "{text}");

    // A flag overrides the context's setting: another server is tried, with the context's
    // credentials.
    let elsewhere = format!("https://127.0.0.1:{}", free_port());
    let sentence = failure_after_waiting_for(
        &stowage(&home, &["--server", &elsewhere, "backup", "get"], &[]),
        &elsewhere,
    );
    assert!(sentence.contains(&elsewhere), "{sentence}");
    let sentence = one_sentence_failure(&stowage(
        &home,
        &["--context", "staging", "backup", "get"],
        &[],
    ));
    assert!(
        sentence.contains("no context \"staging\"") && sentence.contains("secure"),
        "{sentence}"
    );
}

/// A TLS orchestrator that also admits bearer tokens: `--token-file`, STOWAGE_TOKEN_FILE and a
/// context's token file are sent; a missing or wrong token is refused in one sentence; the
/// token never appears in the CLI's output or the config file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_sends_the_bearer_token_of_a_file_from_flags_env_or_context() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("config-home");
    let token = format!("token-{}", new_pod_uid());
    let tokens = dir.path().join("server-tokens");
    std::fs::write(&tokens, format!("{token}\n")).unwrap();
    let orchestrator = secured_orchestrator(
        dir.path(),
        &["--auth-token-file".to_string(), path(&tokens)],
    )
    .await;
    let log = || orchestrator.process.log();
    let ca = path(&orchestrator.ca.ca_path);
    let url = orchestrator.url.as_str();
    let mine: PathBuf = dir.path().join("my-token");
    std::fs::write(&mine, format!("# the CLI's token\n{token}\n")).unwrap();
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-token\n").unwrap();

    let refused = stowage(
        &home,
        &["--server", url, "--cacert", &ca, "backup", "get"],
        &[],
    );
    let sentence = one_sentence_failure(&refused);
    assert!(
        sentence.starts_with(&format!(
            "Error: the stowage server at {url} refused the call"
        )),
        "{sentence}"
    );
    assert!(sentence.contains("--token-file"), "{sentence}");
    let guessed = stowage(
        &home,
        &[
            "--server",
            url,
            "--cacert",
            &ca,
            "--token-file",
            &path(&wrong),
            "backup",
            "get",
        ],
        &[],
    );
    let sentence = one_sentence_failure(&guessed);
    assert!(
        sentence.contains("bearer token is not accepted"),
        "{sentence}"
    );

    let created = stowage(
        &home,
        &[
            "--server",
            url,
            "--cacert",
            &ca,
            "--token-file",
            &path(&mine),
            "backup",
            "create",
            "with-token",
        ],
        &[],
    );
    succeeded(&created, "backup create with --token-file", &log);
    let listed = stowage(
        &home,
        &["backup", "get", "-o", "json"],
        &[
            ("STOWAGE_SERVER", url),
            ("STOWAGE_CACERT", &ca),
            ("STOWAGE_TOKEN_FILE", &path(&mine)),
        ],
    );
    succeeded(&listed, "backup get with STOWAGE_TOKEN_FILE", &log);
    assert_eq!(backup_names(&listed), ["with-token"]);

    // `config set-server` makes a `default` context and selects it; set-context adds the rest.
    let set = stowage(&home, &["config", "set-server", url], &[]);
    succeeded(&set, "config set-server", &log);
    assert_eq!(
        stdout(&set),
        format!("Server of context \"default\" set to {url}.\n")
    );
    let set = stowage(
        &home,
        &[
            "config",
            "set-context",
            "default",
            "--cacert",
            &ca,
            "--token-file",
            &path(&mine),
        ],
        &[],
    );
    succeeded(&set, "config set-context", &log);
    let listed = stowage(&home, &["backup", "get", "-o", "json"], &[]);
    succeeded(&listed, "backup get through the context", &log);
    assert_eq!(backup_names(&listed), ["with-token"]);
    // The flag wins over the context's token file.
    let overridden = stowage(
        &home,
        &["--token-file", &path(&wrong), "backup", "get"],
        &[],
    );
    assert!(
        one_sentence_failure(&overridden).contains("bearer token is not accepted"),
        "{}",
        stderr(&overridden)
    );

    let config = std::fs::read_to_string(home.join("stowage/config")).unwrap();
    assert!(config.contains(&path(&mine)), "{config}");
    for output in [&refused, &guessed, &created, &listed, &overridden] {
        assert!(!stdout(output).contains(&token) && !stderr(output).contains(&token));
    }
    assert!(
        !config.contains(&token),
        "the token itself is in the config file"
    );
    assert!(
        !log().contains(&token),
        "the token is in the orchestrator log"
    );
}
