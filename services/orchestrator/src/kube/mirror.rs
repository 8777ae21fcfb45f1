//! Mirrors each volume of a backup or restore as a Velero `PodVolumeBackup` /
//! `PodVolumeRestore` object in the stowage namespace, so that
//! `kubectl get podvolumebackups -l velero.io/backup-name=NAME -o yaml` works as in Velero's
//! troubleshooting guide. The object store stays the source of truth: a failed mirror write is
//! logged, never fails the volume.

use ::kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, PostParams},
};
use serde_json::{Value, json};

use super::{Cluster, is_not_found};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy)]
pub enum MirrorKind {
    PodVolumeBackup,
    PodVolumeRestore,
}

impl MirrorKind {
    fn resource(self) -> ApiResource {
        let (kind, plural) = match self {
            MirrorKind::PodVolumeBackup => ("PodVolumeBackup", "podvolumebackups"),
            MirrorKind::PodVolumeRestore => ("PodVolumeRestore", "podvolumerestores"),
        };
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("velero.io", "v1", kind), plural)
    }
}

/// A stable object name for one volume of one backup or restore: `<owner>-<hash>` where the
/// hash covers the pod uid and volume, so a restarted orchestrator updates the same object.
pub fn object_name(owner: &str, pod_uid: &str, volume: &str) -> String {
    // FNV-1a: stable across builds, unlike std's hasher, and plenty for a name suffix.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in pod_uid.bytes().chain([0]).chain(volume.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let suffix = format!("{:010x}", hash & 0xff_ffff_ffff);
    let prefix: String = owner.chars().take(63 - 1 - suffix.len()).collect();
    format!("{}-{suffix}", prefix.trim_end_matches(['-', '.']))
}

/// Creates the mirror object `name` with `labels`, `spec` and `status`, or merge-patches
/// `status` (and labels) into it when it exists.
pub async fn upsert(
    cluster: &Cluster,
    kind: MirrorKind,
    name: &str,
    labels: Value,
    spec: Value,
    status: Value,
) -> Result<()> {
    let resource = kind.resource();
    let api: Api<DynamicObject> = Api::namespaced_with(
        cluster.client().clone(),
        cluster.stowage_namespace(),
        &resource,
    );
    let patch = json!({"metadata": {"labels": labels}, "status": status});
    match Cluster::merge_patch(&api, name, &patch).await {
        Ok(_) => return Ok(()),
        Err(error) if is_not_found(&error) => {}
        Err(error) => return Err(Error::kube(format!("updating {kind:?} {name}"))(error)),
    }
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "velero.io/v1",
        "kind": resource.kind,
        "metadata": {"name": name, "namespace": cluster.stowage_namespace(), "labels": labels},
        "spec": spec,
        "status": status,
    }))
    .map_err(|error| Error::Failed(format!("{kind:?} manifest: {error}")))?;
    api.create(&PostParams::default(), &object)
        .await
        .map_err(Error::kube(format!("creating {kind:?} {name}")))?;
    Ok(())
}

/// Deletes every mirror object labelled `label=value` (a deleted backup's PodVolumeBackups).
pub async fn delete_labelled(
    cluster: &Cluster,
    kind: MirrorKind,
    label: &str,
    value: &str,
) -> Result<()> {
    let resource = kind.resource();
    let api: Api<DynamicObject> = Api::namespaced_with(
        cluster.client().clone(),
        cluster.stowage_namespace(),
        &resource,
    );
    let list = api
        .list(&::kube::api::ListParams::default().labels(&format!("{label}={value}")))
        .await
        .map_err(Error::kube(format!("listing {kind:?} objects of {value}")))?;
    for object in list.items {
        let Some(name) = object.metadata.name else {
            continue;
        };
        if let Err(error) = api.delete(&name, &Default::default()).await
            && !is_not_found(&error)
        {
            return Err(Error::kube(format!("deleting {kind:?} {name}"))(error));
        }
    }
    Ok(())
}

/// Every mirror object of `kind`.
pub async fn list(cluster: &Cluster, kind: MirrorKind) -> Result<Vec<DynamicObject>> {
    let resource = kind.resource();
    let api: Api<DynamicObject> = Api::namespaced_with(
        cluster.client().clone(),
        cluster.stowage_namespace(),
        &resource,
    );
    Ok(api
        .list(&::kube::api::ListParams::default())
        .await
        .map_err(Error::kube(format!("listing {kind:?} objects")))?
        .items)
}

/// Marks every mirror object of `kind` still `New` or `InProgress` as `Failed` with `message`:
/// after a restart nobody will finish them. Returns how many were marked.
pub async fn fail_unfinished(cluster: &Cluster, kind: MirrorKind, message: &str) -> Result<usize> {
    let resource = kind.resource();
    let api: Api<DynamicObject> = Api::namespaced_with(
        cluster.client().clone(),
        cluster.stowage_namespace(),
        &resource,
    );
    let list = api
        .list(&::kube::api::ListParams::default())
        .await
        .map_err(Error::kube(format!("listing {kind:?} objects")))?;
    let mut marked = 0;
    for object in list.items {
        let phase = object.data["status"]["phase"].as_str().unwrap_or_default();
        let Some(name) = object.metadata.name.clone() else {
            continue;
        };
        if matches!(phase, "" | "New" | "InProgress") {
            let patch = json!({"status": {"phase": "Failed", "message": message}});
            Cluster::merge_patch(&api, &name, &patch)
                .await
                .map_err(Error::kube(format!("failing {kind:?} {name}")))?;
            marked += 1;
        }
    }
    Ok(marked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_stable_distinct_and_short() {
        let a = object_name("nightly", "uid-1", "data");
        assert_eq!(a, object_name("nightly", "uid-1", "data"));
        assert_ne!(a, object_name("nightly", "uid-1", "cache"));
        assert_ne!(a, object_name("nightly", "uid-2", "data"));
        assert!(a.starts_with("nightly-"));
        let long = object_name(&"b".repeat(63), "uid", "v");
        assert!(long.len() <= 63, "{long}");
    }
}
