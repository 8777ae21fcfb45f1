//! The repo-manager's failures, and their one mapping to gRPC status codes.

use stowage_restic::ResticError;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("namespace `{0}` is not a valid Kubernetes namespace name (a DNS-1123 label)")]
    InvalidNamespace(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("namespace `{0}` has no repository yet")]
    RepositoryNotFound(String),
    #[error("repository of namespace `{namespace}` is not ready: {message}")]
    NotReady { namespace: String, message: String },
    #[error("snapshot {snapshot} has no path `{path}`")]
    PathNotFound { snapshot: String, path: String },
    #[error("lease `{0}` does not exist or has expired")]
    LeaseNotFound(String),
    #[error(
        "timed out after {waited_seconds:.0}s waiting for a {mode} lease on namespace `{namespace}`: held by {holders}"
    )]
    LeaseTimeout {
        namespace: String,
        mode: &'static str,
        waited_seconds: f64,
        holders: String,
    },
    #[error("object store {operation} `{path}`: {source}")]
    Store {
        operation: &'static str,
        path: String,
        source: stowage_storage_location::object_store::Error,
    },
    #[error("stored state `{path}` is unreadable: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("the master key cannot open the stored password of namespace `{0}`")]
    MasterKeyMismatch(String),
    #[error(
        "refusing to write the password of namespace `{0}` to the bucket unsealed: bucket \
         copies are only ever written sealed with the master key"
    )]
    UnsealedKeyCopy(String),
    #[error("Kubernetes Secret {name}: {source}")]
    Kubernetes { name: String, source: kube::Error },
    #[error("random number generator failed")]
    Random,
    #[error(transparent)]
    Restic(#[from] ResticError),
    #[error("shutting down")]
    Cancelled,
    #[error(
        "not running {what}: this repo-manager's leader term {term} has ended (another replica \
         leads)"
    )]
    TermEnded { what: String, term: u64 },
}

impl From<RepoError> for Status {
    fn from(error: RepoError) -> Status {
        let message = error.to_string();
        match &error {
            RepoError::InvalidNamespace(_) | RepoError::InvalidArgument(_) => {
                Status::invalid_argument(message)
            }
            RepoError::RepositoryNotFound(_)
            | RepoError::LeaseNotFound(_)
            | RepoError::PathNotFound { .. } => Status::not_found(message),
            RepoError::NotReady { .. } | RepoError::MasterKeyMismatch(_) => {
                Status::failed_precondition(message)
            }
            RepoError::LeaseTimeout { .. }
            | RepoError::Store { .. }
            | RepoError::Kubernetes { .. }
            | RepoError::Cancelled
            | RepoError::TermEnded { .. } => Status::unavailable(message),
            // The code every service running restic gives the failure (the agent too).
            RepoError::Restic(restic) => Status::new(stowage_grpc::restic_code(restic), message),
            RepoError::Corrupt { .. } | RepoError::UnsealedKeyCopy(_) | RepoError::Random => {
                Status::internal(message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's error mapping has the same test: both give each restic failure the code of
    /// the one shared mapping.
    #[test]
    fn restic_failures_get_the_code_every_restic_running_service_gives_them() {
        for error in ResticError::examples() {
            let expected = stowage_grpc::restic_code(&error);
            let message = error.to_string();
            let status = Status::from(RepoError::from(error));
            assert_eq!(status.code(), expected, "{message}");
            assert_eq!(status.message(), message);
        }
    }
}
