//! What the resource capture needs from the API server, and nothing more: the served resources
//! (discovery), one page of a list, and one object by name.

use std::future::Future;

use serde_json::Value;

/// One served resource at its group's preferred version, as discovery announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResource {
    /// Empty for the core group.
    pub group: String,
    pub version: String,
    /// The plural resource name (`deployments`).
    pub plural: String,
    pub singular: String,
    pub short_names: Vec<String>,
    pub kind: String,
    pub namespaced: bool,
    pub verbs: Vec<String>,
}

impl ApiResource {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Velero's name of the resource and its tarball directory: `pods`, `deployments.apps`.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The collection's URL path, in `namespace` or across the cluster.
    pub fn collection_path(&self, namespace: Option<&str>) -> String {
        let root = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        match namespace {
            Some(namespace) if self.namespaced => {
                format!("{root}/namespaces/{namespace}/{}", self.plural)
            }
            _ => format!("{root}/{}", self.plural),
        }
    }

    pub fn can(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == verb)
    }
}

/// One page of a list: its objects (each with apiVersion and kind set) and the token of the
/// next page, if any.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListPage {
    pub items: Vec<Value>,
    pub continue_token: Option<String>,
}

/// What discovery found: the resources, and the API groups whose discovery failed (an
/// aggregated API that is down answers 503; the rest of the cluster is still backed up, as
/// Velero does, and the backup's log names the group).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Discovered {
    pub resources: Vec<ApiResource>,
    pub failed_groups: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("invalid resource list entry `{entry}`: {reason}")]
    InvalidEntry { entry: String, reason: String },
    #[error("reading the API server's discovery ({path}): {message}")]
    Discovery { path: String, message: String },
    /// The continue token of a paginated list outlived the API server's history (410 Gone).
    #[error("listing {what}: the continue token has expired: {message}")]
    Expired { what: String, message: String },
    #[error("listing {what}: {message}")]
    List { what: String, message: String },
    /// The resource stopped being served after discovery (its CRD deleted: 404) or its
    /// aggregated API is down (503): like a group discovery could not read, it is left out
    /// and named in the backup's log.
    #[error("listing {what}: not served now: {message}")]
    Unavailable { what: String, message: String },
    #[error("reading {what}: {message}")]
    Get { what: String, message: String },
    #[error("object {what} from the API server: {reason}")]
    BadObject { what: String, reason: String },
}

impl From<ResourceError> for crate::error::Error {
    fn from(error: ResourceError) -> Self {
        match error {
            ResourceError::InvalidEntry { entry, reason } => crate::error::Error::InvalidArgument {
                what: "resource",
                value: entry,
                reason,
            },
            other => crate::error::Error::Failed(other.to_string()),
        }
    }
}

/// The API server as the capture sees it.
pub trait ResourceApi: Sync {
    /// Every served resource at its group's preferred version, core group first.
    fn discover(&self) -> impl Future<Output = Result<Discovered, ResourceError>> + Send;

    /// One page of `resource` in `namespace` (or across the cluster), at most `limit` objects
    /// from `continue_token` on, restricted by `label_selector` (`a=b,c=d`, empty for all).
    fn list_page(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        label_selector: &str,
        limit: u32,
        continue_token: Option<&str>,
    ) -> impl Future<Output = Result<ListPage, ResourceError>> + Send;

    /// One object by name, `None` when the API server says NotFound.
    fn get(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
    ) -> impl Future<Output = Result<Option<Value>, ResourceError>> + Send;
}
