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
    #[error("reading the process table /proc for the running restic processes: {0}")]
    ProcessTable(std::io::Error),
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
            // The code every service running restic gives its failure (after retries, the
            // last attempt's).
            AgentError::Restic(error) => stowage_grpc::restic_code(error),
            AgentError::Marker { .. }
            | AgentError::CountingFiles { .. }
            | AgentError::ProcessTable(_) => Code::Internal,
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
        assert_eq!(status.code(), Code::FailedPrecondition);
    }

    /// The repo-manager's error mapping has the same test: both give each restic failure the
    /// code of the one shared mapping.
    #[test]
    fn restic_failures_get_the_code_every_restic_running_service_gives_them() {
        for error in ResticError::examples() {
            let expected = stowage_grpc::restic_code(&error);
            let message = error.to_string();
            let status: Status = AgentError::from(error).into();
            assert_eq!(status.code(), expected, "{message}");
        }
    }
}
