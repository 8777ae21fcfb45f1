//! The one error type of this crate. Every variant names the object key (or tarball entry) it
//! is about and what did not parse, because an operator reading "backup cannot be restored"
//! needs to know which file in the bucket to look at.

/// What went wrong reading or writing a backup's or a restore's files.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// A JSON document (plain or after gunzip) did not parse into the expected record.
    #[error("{key}: not a valid {what}: {source}")]
    Json {
        key: String,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A `.gz` object is not a complete gzip stream (truncated, or not gzip at all).
    #[error("{key}: not a valid gzip stream: {source}")]
    Gzip {
        key: String,
        #[source]
        source: std::io::Error,
    },
    /// The resources tarball (after gunzip) is not a readable tar archive.
    #[error("{key}: not a valid tar archive: {source}")]
    Tar {
        key: String,
        #[source]
        source: std::io::Error,
    },
    /// One entry inside the resources tarball is not a JSON object.
    #[error("{key}: entry {entry} is not valid JSON: {source}")]
    TarEntry {
        key: String,
        entry: String,
        #[source]
        source: serde_json::Error,
    },
    /// A required object is absent from the store.
    #[error("{key}: not found")]
    NotFound { key: String },
    /// The object store failed (network, permissions, ...), not the content.
    #[error("{key}: object store error: {source}")]
    Store {
        key: String,
        #[source]
        source: object_store::Error,
    },
    /// A record cannot be written because it is inconsistent (e.g. no name).
    #[error("invalid backup record: {0}")]
    Invalid(String),
    /// The backup was written by Velero; stowage never modifies its files.
    #[error("backup {name} was written by Velero; its files are read-only to stowage")]
    ReadOnly { name: String },
    /// A backup name that Velero would not accept and that would not be a safe key prefix.
    #[error("invalid backup name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// A restore name that would not be a Kubernetes object name nor a safe key segment.
    #[error("invalid restore name {name:?}: {reason}")]
    InvalidRestoreName { name: String, reason: &'static str },
}

impl FormatError {
    /// The object key this error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            FormatError::Json { key, .. }
            | FormatError::Gzip { key, .. }
            | FormatError::Tar { key, .. }
            | FormatError::TarEntry { key, .. }
            | FormatError::NotFound { key }
            | FormatError::Store { key, .. } => Some(key),
            FormatError::Invalid(_)
            | FormatError::InvalidName { .. }
            | FormatError::InvalidRestoreName { .. }
            | FormatError::ReadOnly { .. } => None,
        }
    }

    /// True when the failure is the store's (retry may help), not the content's.
    pub fn is_transient(&self) -> bool {
        matches!(self, FormatError::Store { .. })
    }

    pub(crate) fn from_store(key: &str, source: object_store::Error) -> FormatError {
        match source {
            object_store::Error::NotFound { .. } => FormatError::NotFound {
                key: key.to_string(),
            },
            source => FormatError::Store {
                key: key.to_string(),
                source,
            },
        }
    }
}

pub type Result<T, E = FormatError> = std::result::Result<T, E>;
