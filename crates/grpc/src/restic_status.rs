//! The one mapping from a restic failure to a gRPC code, used by every service that runs
//! restic (the volume agent and the repo-manager), so a caller sees the same code for the same
//! failure whichever of them ran restic.

use stowage_restic::{FailureClass, ResticError};
use tonic::Code;

/// The gRPC code of a restic failure (after retries, the one of the last attempt):
/// `InvalidArgument` for refused arguments; `FailedPrecondition` for a wrong password, no
/// repository at the URL or an unusable restic (not `PermissionDenied`, which stowage keeps for
/// callers whose identity a server refuses); `Unavailable` for a held lock or unreachable
/// storage (retry later); `Cancelled`; `Internal` for any other restic failure.
pub fn restic_code(error: &ResticError) -> Code {
    match error.class() {
        FailureClass::BadInput => Code::InvalidArgument,
        FailureClass::Precondition => Code::FailedPrecondition,
        FailureClass::Retryable => Code::Unavailable,
        FailureClass::Cancelled => Code::Cancelled,
        FailureClass::Internal => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_restic_failure_has_its_code() {
        let cases = [
            (
                ResticError::InvalidArgument {
                    command: "cat lock".into(),
                    reason: "`x` is not a lock id".into(),
                },
                Code::InvalidArgument,
            ),
            (
                ResticError::WrongPassword {
                    command: "backup".into(),
                    repository: "/r".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                ResticError::RepositoryMissing {
                    command: "snapshots".into(),
                    repository: "/r".into(),
                    stderr: "Is there a repository".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                ResticError::Locked {
                    command: "prune".into(),
                    repository: "/r".into(),
                    stderr: "repository is already locked".into(),
                },
                Code::Unavailable,
            ),
            (
                ResticError::Cancelled {
                    command: "backup".into(),
                },
                Code::Cancelled,
            ),
            (
                ResticError::Failed {
                    command: "check".into(),
                    code: 1,
                    stderr: "Fatal: repository contains errors".into(),
                },
                Code::Internal,
            ),
            (
                ResticError::GaveUp {
                    attempts: 4,
                    last: Box::new(ResticError::StorageUnreachable {
                        command: "backup".into(),
                        repository: "s3:http://127.0.0.1:9/b".into(),
                        stderr: "connection refused".into(),
                    }),
                },
                Code::Unavailable,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(restic_code(&error), code, "{error}");
        }
    }
}
