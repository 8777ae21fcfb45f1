//! [`ObjectApi`] over a kube client: objects of any kind as plain JSON, so custom resources
//! pass through unchanged; a refusal keeps the API server's Status.

use ::kube::{
    Client,
    api::{GetParams, PostParams},
    core::Request,
};
use serde_json::Value;

use super::api::{ObjectApi, ObjectError};
use crate::resources::{
    api::{ApiResource, ResourceApi},
    kube::KubeResources,
};

pub struct KubeObjects {
    client: Client,
}

impl KubeObjects {
    pub fn new(client: Client) -> KubeObjects {
        KubeObjects { client }
    }
}

fn what(resource: &ApiResource, namespace: Option<&str>, name: &str) -> String {
    match namespace.filter(|_| resource.namespaced) {
        Some(namespace) => format!("{}/{namespace}/{name}", resource.group_resource()),
        None => format!("{}/{name}", resource.group_resource()),
    }
}

fn object_error(what: String, error: ::kube::Error) -> ObjectError {
    match error {
        ::kube::Error::Api(status) => ObjectError::Refused {
            what,
            code: status.code,
            reason: status.reason,
            message: status.message,
        },
        other => ObjectError::Transport {
            what,
            message: other.to_string(),
        },
    }
}

fn request_error(what: String, error: impl std::fmt::Display) -> ObjectError {
    ObjectError::Transport {
        what,
        message: error.to_string(),
    }
}

fn body(object: &Value, what: &str) -> Result<Vec<u8>, ObjectError> {
    serde_json::to_vec(object).map_err(|error| request_error(what.to_string(), error))
}

#[tonic::async_trait]
impl ObjectApi for KubeObjects {
    async fn served(&self) -> Result<Vec<ApiResource>, ObjectError> {
        // The capture's discovery, written once: preferred versions, cohabiting resources.
        let discovered = KubeResources::new(self.client.clone())
            .discover()
            .await
            .map_err(|error| request_error("discovery".to_string(), error))?;
        Ok(discovered.resources)
    }

    async fn get(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, ObjectError> {
        let what = what(resource, namespace, name);
        let request = Request::new(resource.collection_path(namespace))
            .get(name, &GetParams::default())
            .map_err(|error| request_error(what.clone(), error))?;
        match self.client.request::<Value>(request).await {
            Ok(object) => Ok(Some(object)),
            Err(::kube::Error::Api(status)) if status.code == 404 => Ok(None),
            Err(error) => Err(object_error(what, error)),
        }
    }

    async fn create(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        object: &Value,
    ) -> Result<Value, ObjectError> {
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let what = what(resource, namespace, name);
        let request = Request::new(resource.collection_path(namespace))
            .create(&PostParams::default(), body(object, &what)?)
            .map_err(|error| request_error(what.clone(), error))?;
        self.client
            .request::<Value>(request)
            .await
            .map_err(|error| object_error(what, error))
    }

    async fn replace(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
        object: &Value,
    ) -> Result<Value, ObjectError> {
        let what = what(resource, namespace, name);
        let request = Request::new(resource.collection_path(namespace))
            .replace(name, &PostParams::default(), body(object, &what)?)
            .map_err(|error| request_error(what.clone(), error))?;
        self.client
            .request::<Value>(request)
            .await
            .map_err(|error| object_error(what, error))
    }
}
