//! What a resource restore asks the API server, and nothing more: the served resources (read
//! again once a CustomResourceDefinition is created), one object by name, a create, and a
//! replace that carries the live resourceVersion. A refusal keeps the API server's Status
//! (code, reason, message), which the restore's results report as they are.

use serde_json::Value;

use crate::resources::api::ApiResource;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ObjectError {
    /// The API server answered with a Status: `409 AlreadyExists`, `422 Invalid`, …
    #[error("{what}: {message} ({code} {reason})")]
    Refused {
        what: String,
        code: u16,
        reason: String,
        message: String,
    },
    /// No answer (connection, timeout) or one that is not a Status.
    #[error("{what}: {message}")]
    Transport { what: String, message: String },
}

impl ObjectError {
    /// The object is already there (create).
    pub fn already_exists(&self) -> bool {
        matches!(self, ObjectError::Refused { code: 409, reason, .. } if reason == "AlreadyExists")
    }

    /// The object changed since it was read (replace with a stale resourceVersion).
    pub fn is_conflict(&self) -> bool {
        matches!(self, ObjectError::Refused { code: 409, reason, .. } if reason != "AlreadyExists")
    }

    /// The API server's words without the object's name, for a result that already names it.
    pub fn reason_text(&self) -> String {
        match self {
            ObjectError::Refused {
                code,
                reason,
                message,
                ..
            } => format!("{message} ({code} {reason})"),
            ObjectError::Transport { message, .. } => message.clone(),
        }
    }
}

/// The API server as the resource restore sees it.
#[tonic::async_trait]
pub trait ObjectApi: Send + Sync {
    /// Every served resource at its group's preferred version.
    async fn served(&self) -> Result<Vec<ApiResource>, ObjectError>;

    /// One object by name, `None` when the API server says NotFound.
    async fn get(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, ObjectError>;

    /// Creates `object`; the object as the API server stored it (its new uid).
    async fn create(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        object: &Value,
    ) -> Result<Value, ObjectError>;

    /// Replaces object `name` by `object`, whose `metadata.resourceVersion` must be the live
    /// one (else 409 Conflict); the object as stored.
    async fn replace(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
        object: &Value,
    ) -> Result<Value, ObjectError>;
}
