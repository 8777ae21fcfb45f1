//! What can go wrong when running restic, classified from its exit status (and, for a storage
//! server that cannot be reached, which has no exit code of its own, from stderr) so callers can
//! react (retry on a lock, report a wrong password, tell a missing repository apart) without
//! matching on strings themselves.

use std::path::PathBuf;

/// Keep at most this much of restic's stderr in an error; a backup of a tree with many
/// unreadable files can print megabytes.
pub(crate) const STDERR_LIMIT: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ResticError {
    #[error("restic binary `{}` not found: {source}", binary.display())]
    BinaryMissing {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("starting restic `{}` {command}: {source}", binary.display())]
    Spawn {
        binary: PathBuf,
        command: String,
        source: std::io::Error,
    },
    #[error("preparing the restic scratch directory {}: {source}", path.display())]
    Scratch {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "restic {found} is too old: stowage needs restic {needed} or newer (`restic version` \
         printed `{output}`)"
    )]
    UnsupportedVersion {
        found: String,
        needed: String,
        output: String,
    },
    #[error("cannot tell which restic this is: `restic version` printed `{output}`")]
    UnrecognisedVersion { output: String },
    #[error("invalid restic {command} arguments: {reason}")]
    InvalidArgument { command: String, reason: String },
    #[error("restic {command}: wrong password or no key found for repository {repository}")]
    WrongPassword { command: String, repository: String },
    #[error("restic {command}: there is no repository at {repository}: {stderr}")]
    RepositoryMissing {
        command: String,
        repository: String,
        stderr: String,
    },
    #[error("restic {command}: the storage of repository {repository} cannot be reached: {stderr}")]
    StorageUnreachable {
        command: String,
        repository: String,
        stderr: String,
    },
    /// restic kept retrying storage requests (restic 0.17+ does so by itself for up to 15
    /// minutes) for longer than the runner's outage timeout with no progress in between, and
    /// was stopped; see [`crate::outage`].
    #[error(
        "restic {command}: the storage of repository {repository} cannot be reached: restic \
         retried for {:.1}s without progress and was stopped; its last retry: {reason}",
        waited.as_secs_f64()
    )]
    StorageOutage {
        command: String,
        repository: String,
        waited: std::time::Duration,
        reason: String,
    },
    #[error("restic {command}: repository {repository} is locked: {stderr}")]
    Locked {
        command: String,
        repository: String,
        stderr: String,
    },
    #[error("restic {command} was cancelled")]
    Cancelled { command: String },
    #[error("restic {command} was killed by signal {signal}: {stderr}")]
    Killed {
        command: String,
        signal: i32,
        stderr: String,
    },
    #[error("restic {command} failed with exit code {code}: {stderr}")]
    Failed {
        command: String,
        code: i32,
        stderr: String,
    },
    #[error("restic {command}: unexpected output ({source}): {output}")]
    Output {
        command: String,
        output: String,
        source: serde_json::Error,
    },
    #[error("restic {command}: {reason}")]
    MissingOutput { command: String, reason: String },
    #[error("talking to restic {command}: {source}")]
    Io {
        command: String,
        source: std::io::Error,
    },
    /// A command was run `attempts` times (see [`crate::RetryPolicy`]) and failed every time.
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp {
        attempts: u32,
        last: Box<ResticError>,
    },
}

/// What a failure means to whoever asked for the run, in the terms a service answers with:
/// the agent and the repo-manager both turn it into a gRPC code through one function
/// (`stowage_grpc::restic_code`), so the same restic failure gets the same code from both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureClass {
    /// The arguments were refused before restic ran.
    BadInput,
    /// Nothing will change by retrying until the setup does: a wrong password or key, no
    /// repository at the URL, restic missing, too old or unusable.
    Precondition,
    /// Another process holds the lock or the storage cannot be reached: try again later.
    Retryable,
    /// Someone asked the run to stop.
    Cancelled,
    /// restic failed otherwise (its stderr says how), was killed, or said something unreadable.
    Internal,
}

impl ResticError {
    /// The class of the failure; for [`ResticError::GaveUp`] the one of the last attempt.
    pub fn class(&self) -> FailureClass {
        match self.last() {
            ResticError::InvalidArgument { .. } => FailureClass::BadInput,
            ResticError::WrongPassword { .. }
            | ResticError::RepositoryMissing { .. }
            | ResticError::BinaryMissing { .. }
            | ResticError::Scratch { .. }
            | ResticError::UnsupportedVersion { .. }
            | ResticError::UnrecognisedVersion { .. } => FailureClass::Precondition,
            ResticError::Locked { .. }
            | ResticError::StorageUnreachable { .. }
            | ResticError::StorageOutage { .. } => FailureClass::Retryable,
            ResticError::Cancelled { .. } => FailureClass::Cancelled,
            ResticError::Spawn { .. }
            | ResticError::Killed { .. }
            | ResticError::Failed { .. }
            | ResticError::Output { .. }
            | ResticError::MissingOutput { .. }
            | ResticError::Io { .. }
            | ResticError::GaveUp { .. } => FailureClass::Internal,
        }
    }

    /// One error of each variant (and one given up after retries), for the tests of the
    /// services that map these errors to their answers.
    pub fn examples() -> Vec<ResticError> {
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let command = || "backup".to_string();
        let repository = || "s3:http://127.0.0.1:9/bucket/restic/shop".to_string();
        let stderr = || "restic's words".to_string();
        vec![
            ResticError::BinaryMissing {
                binary: "restic".into(),
                source: io(),
            },
            ResticError::Spawn {
                binary: "restic".into(),
                command: command(),
                source: io(),
            },
            ResticError::Scratch {
                path: "/tmp/scratch".into(),
                source: io(),
            },
            ResticError::UnsupportedVersion {
                found: "0.16.0".into(),
                needed: "0.17.0".into(),
                output: "restic 0.16.0".into(),
            },
            ResticError::UnrecognisedVersion {
                output: "what".into(),
            },
            ResticError::InvalidArgument {
                command: command(),
                reason: "bad".into(),
            },
            ResticError::WrongPassword {
                command: command(),
                repository: repository(),
            },
            ResticError::RepositoryMissing {
                command: command(),
                repository: repository(),
                stderr: stderr(),
            },
            ResticError::StorageUnreachable {
                command: command(),
                repository: repository(),
                stderr: stderr(),
            },
            ResticError::StorageOutage {
                command: command(),
                repository: repository(),
                waited: std::time::Duration::from_secs(300),
                reason: stderr(),
            },
            ResticError::Locked {
                command: command(),
                repository: repository(),
                stderr: stderr(),
            },
            ResticError::Cancelled { command: command() },
            ResticError::Killed {
                command: command(),
                signal: 9,
                stderr: stderr(),
            },
            ResticError::Failed {
                command: command(),
                code: 3,
                stderr: stderr(),
            },
            ResticError::Output {
                command: command(),
                output: "{".into(),
                source: serde_json::from_str::<serde_json::Value>("{").unwrap_err(),
            },
            ResticError::MissingOutput {
                command: command(),
                reason: "no summary".into(),
            },
            ResticError::Io {
                command: command(),
                source: io(),
            },
            ResticError::GaveUp {
                attempts: 4,
                last: Box::new(ResticError::WrongPassword {
                    command: command(),
                    repository: repository(),
                }),
            },
        ]
    }

    /// Worth trying again later without changing anything: another process holds the lock, or
    /// the storage could not be reached (a restarting object store, a network blip).
    pub fn is_retryable(&self) -> bool {
        self.class() == FailureClass::Retryable
    }

    /// The error ended because someone asked for it to stop.
    pub fn is_cancelled(&self) -> bool {
        self.class() == FailureClass::Cancelled
    }

    /// The failure itself: for [`ResticError::GaveUp`] the error of the last attempt, for any
    /// other error the error.
    pub fn last(&self) -> &ResticError {
        match self {
            ResticError::GaveUp { last, .. } => last.last(),
            other => other,
        }
    }

    /// The restic command that failed (`backup`, `snapshots`, …).
    pub fn command(&self) -> &str {
        match self {
            ResticError::BinaryMissing { .. } | ResticError::Scratch { .. } => "",
            ResticError::UnsupportedVersion { .. } | ResticError::UnrecognisedVersion { .. } => {
                "version"
            }
            ResticError::Spawn { command, .. }
            | ResticError::InvalidArgument { command, .. }
            | ResticError::WrongPassword { command, .. }
            | ResticError::RepositoryMissing { command, .. }
            | ResticError::StorageUnreachable { command, .. }
            | ResticError::StorageOutage { command, .. }
            | ResticError::Locked { command, .. }
            | ResticError::Cancelled { command }
            | ResticError::Killed { command, .. }
            | ResticError::Failed { command, .. }
            | ResticError::Output { command, .. }
            | ResticError::MissingOutput { command, .. }
            | ResticError::Io { command, .. } => command,
            ResticError::GaveUp { last, .. } => last.command(),
        }
    }

    /// restic's own words, when it said something.
    pub fn stderr(&self) -> Option<&str> {
        match self.last() {
            ResticError::RepositoryMissing { stderr, .. }
            | ResticError::StorageUnreachable { stderr, .. }
            | ResticError::StorageOutage { reason: stderr, .. }
            | ResticError::Locked { stderr, .. }
            | ResticError::Killed { stderr, .. }
            | ResticError::Failed { stderr, .. } => Some(stderr),
            _ => None,
        }
    }
}

/// Go's words for a storage server that cannot be reached (refused, unresolvable, silent).
const UNREACHABLE: &[&str] = &[
    "connection refused",
    "no such host",
    "i/o timeout",
    "connection reset by peer",
    "network is unreachable",
    "no route to host",
];

/// restic's exit code for "there is no repository at this location" (restic ≥ 0.17).
pub const EXIT_NO_REPOSITORY: i32 = 10;
/// restic's exit code for "the repository is already locked" (restic ≥ 0.17).
pub const EXIT_LOCKED: i32 = 11;
/// restic's exit code for "wrong password or no key found" (restic ≥ 0.17).
pub const EXIT_WRONG_PASSWORD: i32 = 12;

/// Turns a non-zero exit into the matching error. restic ≥ 0.17 names a missing repository,
/// a held lock and a wrong password by exit code; a storage server that cannot be reached is
/// a plain fatal error (exit 1), told by Go's network error words.
pub(crate) fn classify_exit(
    command: &str,
    repository: &str,
    code: Option<i32>,
    signal: Option<i32>,
    stderr: String,
) -> ResticError {
    let command = command.to_string();
    let repository = repository.to_string();
    let stderr = stderr.trim().to_string();
    match code {
        Some(EXIT_WRONG_PASSWORD) => {
            return ResticError::WrongPassword {
                command,
                repository,
            };
        }
        Some(EXIT_NO_REPOSITORY) => {
            return ResticError::RepositoryMissing {
                command,
                repository,
                stderr,
            };
        }
        Some(EXIT_LOCKED) => {
            return ResticError::Locked {
                command,
                repository,
                stderr,
            };
        }
        _ => {}
    }
    if code == Some(1) && UNREACHABLE.iter().any(|words| stderr.contains(words)) {
        return ResticError::StorageUnreachable {
            command,
            repository,
            stderr,
        };
    }
    match (code, signal) {
        (Some(code), _) => ResticError::Failed {
            command,
            code,
            stderr,
        },
        (None, signal) => ResticError::Killed {
            command,
            signal: signal.unwrap_or(0),
            stderr,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_password_is_recognised() {
        let error = classify_exit(
            "snapshots",
            "/r",
            Some(12),
            None,
            "Fatal: wrong password or no key found\n".into(),
        );
        assert!(
            matches!(error, ResticError::WrongPassword { .. }),
            "{error}"
        );
        assert!(!error.is_retryable(), "{error}");
    }

    #[test]
    fn missing_repository_is_recognised_and_keeps_stderr() {
        let stderr = "Fatal: repository does not exist: unable to open config file: stat nope/config: no such file or directory\nIs there a repository at the following location?\nnope\n";
        let error = classify_exit("snapshots", "nope", Some(10), None, stderr.into());
        match error {
            ResticError::RepositoryMissing { stderr, .. } => {
                assert!(stderr.contains("stat nope/config"))
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn unreachable_storage_is_not_a_missing_repository() {
        let stderr = "Fatal: unable to open config file: Stat: Get \"http://127.0.0.1:1/bucket/?location=\": dial tcp 127.0.0.1:1: connect: connection refused\nIs there a repository at the following location?\ns3:http://127.0.0.1:1/bucket/x\n";
        let error = classify_exit("snapshots", "s3:x", Some(1), None, stderr.into());
        assert!(
            matches!(&error, ResticError::StorageUnreachable { stderr, .. } if stderr.contains("connection refused")),
            "{error}"
        );
        assert!(error.to_string().contains("cannot be reached"), "{error}");
        assert!(error.is_retryable(), "a storage outage may pass: {error}");
    }

    #[test]
    fn lock_is_retryable() {
        let stderr = "unable to create lock in backend: repository is already locked by PID 12 on host by root (UID 0, GID 0)\nlock was created at 2026-01-01 (1s ago)\n";
        let error = classify_exit("backup", "/r", Some(11), None, stderr.into());
        assert!(matches!(error, ResticError::Locked { .. }), "{error}");
        assert!(error.is_retryable(), "{error}");
    }

    #[test]
    fn exit_codes_decide_not_the_words() {
        // The words of a failure restic did not classify do not make it one it did.
        let error = classify_exit(
            "backup",
            "/r",
            Some(1),
            None,
            "Fatal: wrong password or no key found; Is there a repository at the following location?; repository is already locked".into(),
        );
        assert!(
            matches!(error, ResticError::Failed { code: 1, .. }),
            "{error}"
        );
        // And a code says what it says whatever restic printed beside it.
        let error = classify_exit("check", "/r", Some(11), None, String::new());
        assert!(matches!(error, ResticError::Locked { .. }), "{error}");
        let error = classify_exit("cat", "/r", Some(10), None, String::new());
        assert!(
            matches!(error, ResticError::RepositoryMissing { .. }),
            "{error}"
        );
        let error = classify_exit("cat", "/r", Some(12), None, String::new());
        assert!(
            matches!(error, ResticError::WrongPassword { .. }),
            "{error}"
        );
    }

    #[test]
    fn giving_up_is_classed_as_its_last_failure() {
        let locked = classify_exit("prune", "/r", Some(11), None, String::new());
        assert_eq!(locked.class(), FailureClass::Retryable);
        let gave_up = ResticError::GaveUp {
            attempts: 3,
            last: Box::new(ResticError::GaveUp {
                attempts: 1,
                last: Box::new(classify_exit("backup", "/r", Some(12), None, String::new())),
            }),
        };
        assert_eq!(gave_up.class(), FailureClass::Precondition);
        let killed = classify_exit("backup", "/r", None, Some(9), String::new());
        assert_eq!(killed.class(), FailureClass::Internal);
    }

    #[test]
    fn other_failures_keep_code_and_text_and_signals_are_kills() {
        let error = classify_exit(
            "backup",
            "/r",
            Some(3),
            None,
            "some files unreadable".into(),
        );
        assert!(
            matches!(&error, ResticError::Failed { code: 3, stderr, .. } if stderr == "some files unreadable")
        );
        let error = classify_exit("backup", "/r", None, Some(9), String::new());
        assert!(matches!(error, ResticError::Killed { signal: 9, .. }));
    }
}
