//! The backup's resource capture: reads the API server's discovery, lists every namespaced
//! resource of the backup's namespaces page by page, adds the cluster-scoped objects they
//! need (their Namespace objects, the PersistentVolumes bound to their claims, the
//! CustomResourceDefinitions of their custom resources) and returns them keyed by Velero's
//! resource directory names, ready for the `<name>.tar.gz` tarball.
//!
//! What it asks the API server is the narrow [`ResourceApi`] trait; [`kube::KubeResources`] is
//! the real one, and the tests use an in-memory fake.

pub mod api;
pub mod capture;
pub mod discovery;
pub mod filter;
pub mod kube;
pub mod restore;

#[cfg(test)]
mod fake;

pub use capture::{CaptureSpec, capture};
pub use filter::validate_resource_lists;

use serde_json::Value;
use stowage_proto::v1::Backup;
use stowage_velero_format::BackupResources;
use tracing::Instrument;

use crate::{error::Result, kube::Cluster};

/// Captures `backup`'s resources from `cluster`, `page_size` objects per list request, with
/// `volume_manifests` (the pods and claims of its volumes) as the runner planned them; what
/// was captured, paginated or left out goes to `log`.
pub async fn capture_backup(
    cluster: &Cluster,
    backup: &Backup,
    page_size: u32,
    volume_manifests: &[Value],
    log: impl Fn(&str, String),
) -> Result<BackupResources> {
    let spec = backup.spec.clone().unwrap_or_default();
    let capture_spec = CaptureSpec {
        included_namespaces: spec.included_namespaces,
        excluded_namespaces: spec.excluded_namespaces,
        label_selector: spec.label_selector.into_iter().collect(),
        include_resources: spec.include_resources,
        exclude_resources: spec.exclude_resources,
        own_namespace: cluster.stowage_namespace().to_string(),
        page_size,
    };
    let api = kube::KubeResources::new(cluster.client().clone());
    // Searched by the backup's name like its volumes' spans; the counts say what it cost.
    let span = tracing::info_span!(
        "capture_resources",
        backup = %backup.name,
        objects = tracing::field::Empty,
        list_requests = tracing::field::Empty,
    );
    let captured = capture(&api, &capture_spec, volume_manifests)
        .instrument(span.clone())
        .await
        .inspect_err(|error| log("error", format!("capturing the resources: {error}")))?;
    span.record("objects", captured.resources.objects.len());
    span.record("list_requests", captured.list_requests);
    for warning in &captured.warnings {
        log("warning", warning.clone());
    }
    for (resource, namespace, objects, pages) in &captured.paginated {
        let place = if namespace.is_empty() {
            String::new()
        } else {
            format!(" in namespace {namespace}")
        };
        log(
            "info",
            format!("listed {objects} {resource}{place} in {pages} pages of at most {page_size}"),
        );
    }
    let kinds: std::collections::BTreeSet<&str> = captured
        .resources
        .objects
        .keys()
        .map(|key| key.resource.as_str())
        .collect();
    log(
        "info",
        format!(
            "captured {} objects of {} resources ({} list requests)",
            captured.resources.objects.len(),
            kinds.len(),
            captured.list_requests
        ),
    );
    Ok(captured.resources)
}
