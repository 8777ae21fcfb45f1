//! restic as a test uses it beside the stack: a wrapper that records every restic process a
//! service starts, and restic run by the test itself against a stowage repository (to change it
//! behind stowage's back).

use std::{
    collections::BTreeMap,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use stowage_proto::v1::{
    GetRepositoryAccessRequest, RepositoryAccess, repo_manager_client::RepoManagerClient,
};

use crate::stack::Stack;

/// A restic wrapper that appends its first argument (the restic command: `backup`,
/// `snapshots`, …; never a password, which restic gets in a file) to a file, one line per
/// process, then runs the real `restic` with every argument.
pub struct CountingRestic {
    binary: PathBuf,
    runs: PathBuf,
}

impl CountingRestic {
    /// Writes the wrapper into `dir`.
    pub fn new(dir: &Path) -> CountingRestic {
        let binary = dir.join("counting-restic");
        let runs = dir.join("restic-runs");
        std::fs::write(
            &binary,
            format!(
                "#!/bin/sh\necho \"$1\" >> '{}'\nexec restic \"$@\"\n",
                runs.display()
            ),
        )
        .expect("writing the counting restic wrapper");
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755))
            .expect("making the counting restic wrapper executable");
        CountingRestic { binary, runs }
    }

    /// The wrapper's path, for a service's `--restic-binary`.
    pub fn path(&self) -> String {
        self.binary.display().to_string()
    }

    /// The commands run since the last [`Self::take`], in order, and starts counting anew.
    pub fn take(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.runs).unwrap_or_default();
        std::fs::write(&self.runs, "").expect("emptying the restic run list");
        text.lines().map(str::to_string).collect()
    }
}

/// The namespace repository's URL, password and environment, from the stack's repo-manager.
pub async fn repository_access(stack: &Stack, namespace: &str) -> RepositoryAccess {
    let mut repo_manager = RepoManagerClient::new(
        stowage_grpc::connect(&stack.repo_manager.url)
            .await
            .expect("connecting to the repo-manager"),
    );
    repo_manager
        .get_repository_access(GetRepositoryAccessRequest {
            namespace: namespace.into(),
        })
        .await
        .expect("GetRepositoryAccess")
        .into_inner()
}

/// restic run by the test against a stowage repository, with its own password file (0600) and
/// cache.
pub struct RepositoryRestic {
    pub url: String,
    pub env: BTreeMap<String, String>,
    pub password_file: PathBuf,
    /// Holds the password file and restic's cache; a test may put files of its own beside them.
    pub dir: tempfile::TempDir,
}

impl RepositoryRestic {
    pub fn new(access: &RepositoryAccess) -> RepositoryRestic {
        use std::io::Write as _;
        let dir = tempfile::tempdir().expect("a temp dir");
        let password_file = dir.path().join("password");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&password_file)
            .and_then(|mut file| file.write_all(access.password.as_bytes()))
            .expect("writing a password file");
        RepositoryRestic {
            url: access.url.clone(),
            env: access.env.clone().into_iter().collect(),
            password_file,
            dir,
        }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("restic")
            .args(args)
            .env("RESTIC_REPOSITORY", &self.url)
            .env("RESTIC_PASSWORD_FILE", &self.password_file)
            .env("RESTIC_CACHE_DIR", self.dir.path().join("cache"))
            .envs(&self.env)
            .stdin(Stdio::null())
            .output()
            .expect("running restic")
    }

    /// Runs restic and returns its stdout; panics with its output when it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "restic {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The ids of the repository's locks (`restic list locks`).
    pub fn locks(&self) -> Vec<String> {
        self.ok(&["list", "locks", "--no-lock"])
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The full ids of the repository's snapshots.
    pub fn snapshot_ids(&self) -> Vec<String> {
        let listed: Option<Vec<serde_json::Value>> =
            serde_json::from_str(&self.ok(&["snapshots", "--json", "--no-lock"]))
                .expect("restic snapshots --json");
        listed
            .unwrap_or_default()
            .iter()
            .filter_map(|snapshot| snapshot["id"].as_str().map(str::to_string))
            .collect()
    }
}

/// Writes an executable `/bin/sh` script named `name` into `dir` whose body is `script` (the
/// lines after the `#!/bin/sh` line), for a service's `--restic-binary`: a test's way to slow
/// restic down, stop its output or log when it runs, while the real `restic` does the work.
pub fn restic_wrapper(dir: &Path, name: &str, script: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{script}")).expect("writing the restic wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("making the restic wrapper executable");
    path
}
