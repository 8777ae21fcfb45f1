//! [`ResourceApi`] over a kube client: discovery through `/api` and `/apis`, lists and gets as
//! plain JSON so objects of any kind, custom ones included, pass through unchanged.

use ::kube::{
    Client,
    api::{GetParams, ListParams},
    core::Request,
};
use serde_json::Value;

use super::{
    api::{ApiResource, Discovered, ListPage, ResourceApi, ResourceError},
    discovery::{preferred_versions, resources_of, settle},
};

pub struct KubeResources {
    client: Client,
}

impl KubeResources {
    pub fn new(client: Client) -> KubeResources {
        KubeResources { client }
    }
}

fn message(error: &::kube::Error) -> String {
    match error {
        ::kube::Error::Api(status) => {
            format!("{} ({} {})", status.message, status.code, status.reason)
        }
        other => other.to_string(),
    }
}

fn api_status(error: &::kube::Error) -> Option<u16> {
    match error {
        ::kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

fn describe(resource: &ApiResource, namespace: Option<&str>) -> String {
    match namespace.filter(|_| resource.namespaced) {
        Some(namespace) => format!("{} in namespace {namespace}", resource.group_resource()),
        None => resource.group_resource(),
    }
}

impl ResourceApi for KubeResources {
    async fn discover(&self) -> Result<Discovered, ResourceError> {
        let discovery_error = |path: String| {
            move |error: ::kube::Error| ResourceError::Discovery {
                path,
                message: message(&error),
            }
        };
        let core = self
            .client
            .list_core_api_versions()
            .await
            .map_err(discovery_error("/api".to_string()))?;
        let mut found = Discovered::default();
        if let Some(version) = core.versions.first() {
            let list = self
                .client
                .list_core_api_resources(version)
                .await
                .map_err(discovery_error(format!("/api/{version}")))?;
            found.resources.extend(resources_of(&list, "", version));
        }
        let groups = self
            .client
            .list_api_groups()
            .await
            .map_err(discovery_error("/apis".to_string()))?;
        for (group, version) in preferred_versions(&groups) {
            match self
                .client
                .list_api_group_resources(&format!("{group}/{version}"))
                .await
            {
                Ok(list) => found
                    .resources
                    .extend(resources_of(&list, &group, &version)),
                // One unavailable aggregated API does not hide the rest of the cluster.
                Err(error) => found
                    .failed_groups
                    .push(format!("{group}/{version}: {}", message(&error))),
            }
        }
        found.resources = settle(found.resources);
        Ok(found)
    }

    async fn list_page(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        label_selector: &str,
        limit: u32,
        continue_token: Option<&str>,
    ) -> Result<ListPage, ResourceError> {
        let what = describe(resource, namespace);
        let mut params = ListParams::default().limit(limit);
        if !label_selector.is_empty() {
            params = params.labels(label_selector);
        }
        if let Some(token) = continue_token {
            params = params.continue_token(token);
        }
        let request = Request::new(resource.collection_path(namespace))
            .list(&params)
            .map_err(|error| ResourceError::List {
                what: what.clone(),
                message: error.to_string(),
            })?;
        let list: Value = match self.client.request(request).await {
            Ok(list) => list,
            Err(error) if api_status(&error) == Some(410) => {
                return Err(ResourceError::Expired {
                    what,
                    message: message(&error),
                });
            }
            Err(error) if matches!(api_status(&error), Some(404 | 503)) => {
                return Err(ResourceError::Unavailable {
                    what,
                    message: message(&error),
                });
            }
            Err(error) => {
                return Err(ResourceError::List {
                    what,
                    message: message(&error),
                });
            }
        };
        page_of(list, resource, &what)
    }

    async fn get(
        &self,
        resource: &ApiResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, ResourceError> {
        let what = format!("{} {name}", describe(resource, namespace));
        let request = Request::new(resource.collection_path(namespace))
            .get(name, &GetParams::default())
            .map_err(|error| ResourceError::Get {
                what: what.clone(),
                message: error.to_string(),
            })?;
        match self.client.request::<Value>(request).await {
            Ok(mut object) => {
                fill_type(&mut object, resource);
                Ok(Some(object))
            }
            Err(error) if api_status(&error) == Some(404) => Ok(None),
            Err(error) => Err(ResourceError::Get {
                what,
                message: message(&error),
            }),
        }
    }
}

/// The items and continue token of a list response. The API server leaves apiVersion and kind
/// out of a built-in list's items; the tarball's objects carry them, as Velero's do.
fn page_of(list: Value, resource: &ApiResource, what: &str) -> Result<ListPage, ResourceError> {
    let continue_token = list
        .pointer("/metadata/continue")
        .and_then(Value::as_str)
        .filter(|token| !token.is_empty())
        .map(str::to_string);
    let items = match list.get("items") {
        Some(Value::Array(items)) => items.clone(),
        Some(Value::Null) | None => Vec::new(),
        Some(_) => {
            return Err(ResourceError::BadObject {
                what: what.to_string(),
                reason: "the list's items are not an array".to_string(),
            });
        }
    };
    let items = items
        .into_iter()
        .map(|mut item| {
            fill_type(&mut item, resource);
            item
        })
        .collect();
    Ok(ListPage {
        items,
        continue_token,
    })
}

fn fill_type(object: &mut Value, resource: &ApiResource) {
    if let Some(object) = object.as_object_mut() {
        object
            .entry("apiVersion")
            .or_insert_with(|| Value::String(resource.api_version()));
        object
            .entry("kind")
            .or_insert_with(|| Value::String(resource.kind.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn list_items_get_their_type_and_the_page_its_token() {
        let pods = ApiResource {
            group: String::new(),
            version: "v1".to_string(),
            plural: "pods".to_string(),
            singular: "pod".to_string(),
            short_names: Vec::new(),
            kind: "Pod".to_string(),
            namespaced: true,
            verbs: vec!["list".to_string()],
        };
        let page = page_of(
            json!({"kind": "PodList", "metadata": {"continue": "abc", "remainingItemCount": 3},
                   "items": [{"metadata": {"name": "a"}},
                             {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "b"}}]}),
            &pods,
            "pods",
        )
        .unwrap();
        assert_eq!(page.continue_token.as_deref(), Some("abc"));
        assert_eq!(page.items[0]["kind"], "Pod");
        assert_eq!(page.items[0]["apiVersion"], "v1");
        let last = page_of(
            json!({"metadata": {"continue": ""}, "items": null}),
            &pods,
            "pods",
        )
        .unwrap();
        assert_eq!(last, ListPage::default());
        assert!(page_of(json!({"items": {}}), &pods, "pods").is_err());
    }
}
