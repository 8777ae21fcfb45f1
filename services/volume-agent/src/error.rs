//! The agent's domain error and its one mapping to gRPC status codes.

use stowage_restic::ResticError;
use tonic::{Code, Status};

use crate::{operations::OperationError, volume_path::VolumePathError};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error(transparent)]
    VolumePath(#[from] VolumePathError),
    #[error(transparent)]
    Operation(#[from] OperationError),
    #[error("operation `{0}` was cancelled")]
    Cancelled(String),
    #[error(transparent)]
    Restic(#[from] ResticError),
    #[error("writing the restore marker {}: {source}", path.display())]
    Marker {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("counting the files restored under {}: {reason}", path.display())]
    CountingFiles {
        path: std::path::PathBuf,
        reason: String,
    },
}

impl AgentError {
    pub fn code(&self) -> Code {
        match self {
            AgentError::InvalidRequest(_) => Code::InvalidArgument,
            AgentError::VolumePath(error) => match error {
                VolumePathError::InvalidUid(_)
                | VolumePathError::InvalidName { .. }
                | VolumePathError::Unsupported { .. }
                | VolumePathError::Escapes { .. } => Code::InvalidArgument,
                VolumePathError::PodNotFound { .. } | VolumePathError::VolumeNotFound { .. } => {
                    Code::NotFound
                }
                VolumePathError::NotADirectory { .. } => Code::FailedPrecondition,
                VolumePathError::Io { .. } => Code::Internal,
            },
            AgentError::Operation(OperationError::AlreadyExists(_)) => Code::AlreadyExists,
            AgentError::Cancelled(_) => Code::Cancelled,
            // After retries the code is the one of the last attempt's failure.
            AgentError::Restic(error) => match error.last() {
                ResticError::InvalidArgument { .. } => Code::InvalidArgument,
                ResticError::WrongPassword { .. } => Code::PermissionDenied,
                ResticError::RepositoryMissing { .. } => Code::FailedPrecondition,
                // Another process holds the lock, or the storage is down: try again later.
                ResticError::Locked { .. }
                | ResticError::StorageUnreachable { .. }
                | ResticError::StorageOutage { .. } => Code::Unavailable,
                ResticError::Cancelled { .. } => Code::Cancelled,
                ResticError::BinaryMissing { .. } | ResticError::Scratch { .. } => {
                    Code::FailedPrecondition
                }
                _ => Code::Internal,
            },
            AgentError::Marker { .. } | AgentError::CountingFiles { .. } => Code::Internal,
        }
    }
}

impl From<AgentError> for Status {
    fn from(error: AgentError) -> Status {
        Status::new(error.code(), error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_invalid_argument_and_lock_is_retryable() {
        let status: Status = AgentError::from(VolumePathError::InvalidUid("../x".into())).into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("../x"));
        let status: Status = AgentError::from(ResticError::Locked {
            command: "backup".into(),
            repository: "/r".into(),
            stderr: "locked".into(),
        })
        .into();
        assert_eq!(status.code(), Code::Unavailable);
    }

    #[test]
    fn giving_up_keeps_the_code_of_the_last_failure_and_names_the_attempts() {
        let status: Status = AgentError::from(ResticError::GaveUp {
            attempts: 4,
            last: Box::new(ResticError::StorageUnreachable {
                command: "backup".into(),
                repository: "s3:http://127.0.0.1:9/b".into(),
                stderr: "connection refused".into(),
            }),
        })
        .into();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status.message().contains("4 attempts")
                && status.message().contains("cannot be reached"),
            "{}",
            status.message()
        );
        let status: Status = AgentError::from(ResticError::GaveUp {
            attempts: 2,
            last: Box::new(ResticError::WrongPassword {
                command: "backup".into(),
                repository: "/r".into(),
            }),
        })
        .into();
        assert_eq!(status.code(), Code::PermissionDenied);
    }
}
