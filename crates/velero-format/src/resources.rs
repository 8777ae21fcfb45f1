//! The resources tarball `backups/<name>/<name>.tar.gz`: one JSON file per Kubernetes object,
//! `resources/<resource>/namespaces/<ns>/<name>.json` or `resources/<resource>/cluster/<name>.json`,
//! and, since format 1.1, the same objects again under `resources/<resource>/<version>-preferredversion/`.
//! `metadata/version` holds the format version. Objects are kept as `serde_json::Value`: a
//! restore edits them and sends them back to the API server, so nothing may be dropped.

use std::collections::BTreeMap;
use std::io::Read;

use serde_json::Value;

use crate::codec::{gunzip, gzip};
use crate::error::{FormatError, Result};

pub const RESOURCES_DIR: &str = "resources";
pub const NAMESPACED_DIR: &str = "namespaces";
pub const CLUSTER_DIR: &str = "cluster";
pub const METADATA_VERSION_ENTRY: &str = "metadata/version";
pub const PREFERRED_VERSION_SUFFIX: &str = "-preferredversion";

pub const PODS: &str = "pods";
pub const PERSISTENT_VOLUME_CLAIMS: &str = "persistentvolumeclaims";
pub const PERSISTENT_VOLUMES: &str = "persistentvolumes";
pub const NAMESPACES: &str = "namespaces";

/// Identifies one object in the tarball. `resource` is the plural resource, with `.<group>` for
/// non-core groups (`deployments.apps`), as Velero names the directories.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    pub resource: String,
    /// `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    pub name: String,
}

impl ResourceKey {
    /// The legacy (format 1.0) entry path of this object.
    pub fn entry_path(&self) -> String {
        self.entry_path_under(None)
    }

    fn entry_path_under(&self, version_dir: Option<&str>) -> String {
        let mut path = format!("{RESOURCES_DIR}/{}/", self.resource);
        if let Some(version_dir) = version_dir {
            path.push_str(version_dir);
            path.push('/');
        }
        match &self.namespace {
            Some(namespace) => path.push_str(&format!("{NAMESPACED_DIR}/{namespace}/")),
            None => path.push_str(&format!("{CLUSTER_DIR}/")),
        }
        path.push_str(&self.name);
        path.push_str(".json");
        path
    }
}

/// The objects of one backup's tarball.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackupResources {
    /// Content of `metadata/version`, if the tarball had one.
    pub format_version: Option<String>,
    pub objects: BTreeMap<ResourceKey, Value>,
}

/// The plural resource directory name for a kind, as Velero names it (`Pod` → `pods`,
/// `Deployment` in `apps/v1` → `deployments.apps`). Covers regular English plurals, which is
/// what the built-in kinds a volume restore touches use.
pub fn resource_for_kind(api_version: &str, kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    let plural = if lower == "endpoints" {
        lower.clone()
    } else if lower.ends_with('s') || lower.ends_with('x') || lower.ends_with("ch") {
        format!("{lower}es")
    } else if let Some(stem) = lower
        .strip_suffix('y')
        .filter(|stem| !stem.ends_with(['a', 'e', 'i', 'o', 'u']))
    {
        format!("{stem}ies")
    } else {
        format!("{lower}s")
    };
    match api_version.split_once('/') {
        Some((group, _)) => format!("{plural}.{group}"),
        None => plural,
    }
}

fn object_name(object: &Value) -> Option<&str> {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|name| !name.is_empty())
}

impl BackupResources {
    pub fn new() -> BackupResources {
        BackupResources {
            format_version: Some(crate::backup::FORMAT_VERSION.to_string()),
            objects: BTreeMap::new(),
        }
    }

    /// Adds `object`, deriving its resource from `apiVersion`/`kind` and its place from
    /// `metadata.namespace` (absent = cluster-scoped).
    pub fn insert_object(&mut self, object: Value) -> Result<ResourceKey> {
        let kind = object
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let api_version = object
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if kind.is_empty() || api_version.is_empty() {
            return Err(FormatError::Invalid(format!(
                "object {} has no apiVersion/kind",
                object_name(&object).unwrap_or("<unnamed>")
            )));
        }
        let resource = resource_for_kind(api_version, kind);
        self.insert(&resource, object)
    }

    /// Adds `object` under `resource`; namespace and name come from its metadata.
    pub fn insert(&mut self, resource: &str, object: Value) -> Result<ResourceKey> {
        let name = object_name(&object)
            .ok_or_else(|| {
                FormatError::Invalid(format!("a {resource} object has no metadata.name"))
            })?
            .to_string();
        let namespace = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .filter(|namespace| !namespace.is_empty())
            .map(str::to_string);
        let key = ResourceKey {
            resource: resource.to_string(),
            namespace,
            name,
        };
        self.objects.insert(key.clone(), object);
        Ok(key)
    }

    pub fn get(&self, resource: &str, namespace: Option<&str>, name: &str) -> Option<&Value> {
        self.objects.get(&ResourceKey {
            resource: resource.to_string(),
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        })
    }

    /// Every object of `resource`, in key order.
    pub fn of_resource<'a>(
        &'a self,
        resource: &'a str,
    ) -> impl Iterator<Item = (&'a ResourceKey, &'a Value)> + 'a {
        self.objects
            .iter()
            .filter(move |(key, _)| key.resource == resource)
    }

    pub fn pods(&self) -> impl Iterator<Item = (&ResourceKey, &Value)> + '_ {
        self.of_resource(PODS)
    }

    pub fn persistent_volume_claims(&self) -> impl Iterator<Item = (&ResourceKey, &Value)> + '_ {
        self.of_resource(PERSISTENT_VOLUME_CLAIMS)
    }

    pub fn persistent_volumes(&self) -> impl Iterator<Item = (&ResourceKey, &Value)> + '_ {
        self.of_resource(PERSISTENT_VOLUMES)
    }

    /// The backup's resource list as Velero writes it beside the tarball: objects grouped by
    /// `<apiVersion>/<Kind>` (`v1/Pod`, `apps/v1/Deployment`), each list of `<ns>/<name>` (or
    /// `<name>` when cluster-scoped) sorted. Objects without apiVersion or kind are left out.
    pub fn resource_list(&self) -> BTreeMap<String, Vec<String>> {
        let mut list: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (key, object) in &self.objects {
            let (Some(api_version), Some(kind)) = (
                object.get("apiVersion").and_then(Value::as_str),
                object.get("kind").and_then(Value::as_str),
            ) else {
                continue;
            };
            let entry = match &key.namespace {
                Some(namespace) => format!("{namespace}/{}", key.name),
                None => key.name.clone(),
            };
            list.entry(format!("{api_version}/{kind}"))
                .or_default()
                .push(entry);
        }
        for entries in list.values_mut() {
            entries.sort();
        }
        list
    }

    /// Writes the gzipped tarball in format 1.1: each object at its legacy path and at its
    /// `<version>-preferredversion` path, plus `metadata/version`.
    pub fn to_tar_gz(&self) -> Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        let version = self
            .format_version
            .clone()
            .unwrap_or_else(|| crate::backup::FORMAT_VERSION.to_string());
        // Velero writes the version with a trailing newline.
        append_entry(
            &mut builder,
            METADATA_VERSION_ENTRY,
            format!("{version}\n").as_bytes(),
        )?;
        for (key, object) in &self.objects {
            let json = serde_json::to_vec(object).map_err(|error| {
                FormatError::Invalid(format!("cannot serialize {}: {error}", key.entry_path()))
            })?;
            append_entry(&mut builder, &key.entry_path(), &json)?;
            // "apps/v1" → "v1"; "v1" → "v1".
            if let Some(version) = object
                .get("apiVersion")
                .and_then(Value::as_str)
                .and_then(|api_version| api_version.rsplit('/').next())
                .filter(|version| !version.is_empty())
            {
                let version_dir = format!("{version}{PREFERRED_VERSION_SUFFIX}");
                append_entry(
                    &mut builder,
                    &key.entry_path_under(Some(&version_dir)),
                    &json,
                )?;
            }
        }
        let tar = builder
            .into_inner()
            .map_err(|error| FormatError::Invalid(format!("cannot build tarball: {error}")))?;
        Ok(gzip(&tar))
    }

    /// Reads a gzipped tarball of either layout; `key` names the object in errors. Where both
    /// a legacy and a preferred-version copy exist the legacy one is kept (Velero's own restore
    /// does the same when API group versions are off); copies under non-preferred versions are
    /// skipped.
    pub fn from_tar_gz(data: &[u8], key: &str) -> Result<BackupResources> {
        let tar_bytes = gunzip(data, key)?;
        let tar_error = |source| FormatError::Tar {
            key: key.to_string(),
            source,
        };
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        let mut resources = BackupResources {
            format_version: None,
            objects: BTreeMap::new(),
        };
        let mut preferred = BTreeMap::new();
        let mut entry_count = 0usize;
        for entry in archive.entries().map_err(tar_error)? {
            let mut entry = entry.map_err(tar_error)?;
            entry_count += 1;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let path = entry
                .path()
                .map_err(tar_error)?
                .to_string_lossy()
                .into_owned();
            let path = path.trim_start_matches("./").to_string();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).map_err(tar_error)?;
            if path == METADATA_VERSION_ENTRY {
                resources.format_version =
                    Some(String::from_utf8_lossy(&content).trim().to_string());
                continue;
            }
            let Some((resource_key, version_dir)) = parse_entry_path(&path) else {
                continue;
            };
            let object: Value =
                serde_json::from_slice(&content).map_err(|source| FormatError::TarEntry {
                    key: key.to_string(),
                    entry: path.clone(),
                    source,
                })?;
            match version_dir {
                None => {
                    resources.objects.insert(resource_key, object);
                }
                Some(dir) if dir.ends_with(PREFERRED_VERSION_SUFFIX) => {
                    preferred.insert(resource_key, object);
                }
                Some(_) => {}
            }
        }
        // A gzip of something that is not a tar usually fails a header checksum above; an
        // archive with no entries at all is as unusable and is reported the same way.
        if entry_count == 0 {
            return Err(tar_error(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "archive has no entries",
            )));
        }
        for (resource_key, object) in preferred {
            resources.objects.entry(resource_key).or_insert(object);
        }
        Ok(resources)
    }
}

fn append_entry(builder: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    // Velero's entries are regular files with mode 0755.
    header.set_mode(0o755);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or(0),
    );
    builder
        .append_data(&mut header, path, data)
        .map_err(|error| FormatError::Invalid(format!("cannot add {path} to tarball: {error}")))
}

/// Splits `resources/<res>[/<version-dir>]/(namespaces/<ns>|cluster)/<name>.json`.
fn parse_entry_path(path: &str) -> Option<(ResourceKey, Option<&str>)> {
    let parts: Vec<&str> = path.split('/').collect();
    if parts.first() != Some(&RESOURCES_DIR) || parts.len() < 4 {
        return None;
    }
    let resource = parts[1];
    let file = *parts.last()?;
    let name = file.strip_suffix(".json")?;
    let (version_dir, scope) = match parts.len() {
        4 => (None, &parts[2..3]),
        5 if parts[2] == NAMESPACED_DIR => (None, &parts[2..4]),
        5 => (Some(parts[2]), &parts[3..4]),
        6 => (Some(parts[2]), &parts[3..5]),
        _ => return None,
    };
    let namespace = match scope {
        [dir] if *dir == CLUSTER_DIR => None,
        [dir, namespace] if *dir == NAMESPACED_DIR => Some(namespace.to_string()),
        _ => return None,
    };
    if resource.is_empty() || name.is_empty() {
        return None;
    }
    Some((
        ResourceKey {
            resource: resource.to_string(),
            namespace,
            name: name.to_string(),
        },
        version_dir,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> BackupResources {
        let mut resources = BackupResources::new();
        resources
            .insert_object(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "foo"}}),
            )
            .unwrap();
        resources
            .insert_object(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "sample", "namespace": "foo",
                  "annotations": {"backup.velero.io/backup-volumes": "pvc-volume,emptydir-volume"}},
                "spec": {"volumes": [{"name": "pvc-volume", "persistentVolumeClaim": {"claimName": "sample-pvc"}},
                                     {"name": "emptydir-volume", "emptyDir": {}}]}}))
            .unwrap();
        resources
            .insert_object(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "sample-pvc", "namespace": "foo"}, "spec": {"volumeName": "pv-1"}}))
            .unwrap();
        resources
            .insert_object(json!({"apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": "pv-1"}, "spec": {"claimRef": {"name": "sample-pvc", "namespace": "foo"}}}))
            .unwrap();
        resources
            .insert_object(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "bar"}}))
            .unwrap();
        resources
    }

    fn entry_names(tar_gz: &[u8]) -> Vec<String> {
        let tar = gunzip(tar_gz, "k").unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                entry
                    .unwrap()
                    .path()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }

    #[test]
    fn kinds_map_to_velero_resource_directories() {
        assert_eq!(resource_for_kind("v1", "Pod"), "pods");
        assert_eq!(
            resource_for_kind("v1", "PersistentVolumeClaim"),
            "persistentvolumeclaims"
        );
        assert_eq!(resource_for_kind("v1", "Namespace"), "namespaces");
        assert_eq!(
            resource_for_kind("apps/v1", "Deployment"),
            "deployments.apps"
        );
        assert_eq!(
            resource_for_kind("networking.k8s.io/v1", "Ingress"),
            "ingresses.networking.k8s.io"
        );
        assert_eq!(
            resource_for_kind("velero.io/v1", "BackupRepository"),
            "backuprepositories.velero.io"
        );
        assert_eq!(resource_for_kind("v1", "Endpoints"), "endpoints");
        assert_eq!(
            resource_for_kind("networking.k8s.io/v1", "NetworkPolicy"),
            "networkpolicies.networking.k8s.io"
        );
    }

    #[test]
    fn written_tarball_has_both_layouts_and_the_version_file() {
        let names = entry_names(&sample().to_tar_gz().unwrap());
        for expected in [
            "metadata/version",
            "resources/namespaces/cluster/foo.json",
            "resources/namespaces/v1-preferredversion/cluster/foo.json",
            "resources/pods/namespaces/foo/sample.json",
            "resources/pods/v1-preferredversion/namespaces/foo/sample.json",
            "resources/persistentvolumeclaims/namespaces/foo/sample-pvc.json",
            "resources/persistentvolumes/cluster/pv-1.json",
            "resources/persistentvolumes/v1-preferredversion/cluster/pv-1.json",
            "resources/deployments.apps/namespaces/bar/web.json",
            "resources/deployments.apps/v1-preferredversion/namespaces/bar/web.json",
        ] {
            assert!(
                names.iter().any(|name| name == expected),
                "{expected} missing from {names:?}"
            );
        }
    }

    #[test]
    fn an_application_tarball_keeps_discovery_names_both_ways() {
        // A whole-namespace backup: objects go under the resource names discovery gave, even
        // where a kind's English plural would differ (`Gizmo` served as `gizmoes`).
        let mut resources = BackupResources::new();
        let objects = [
            (
                "namespaces",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
            ),
            (
                "deployments.apps",
                json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "shop", "uid": "u-1"}, "spec": {"replicas": 2}}),
            ),
            (
                "serviceaccounts",
                json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "app", "namespace": "shop"}}),
            ),
            (
                "gizmoes.example.com",
                json!({"apiVersion": "example.com/v1beta2", "kind": "Gizmo",
                "metadata": {"name": "blue", "namespace": "shop"}, "spec": {"size": 3}}),
            ),
            (
                "customresourcedefinitions.apiextensions.k8s.io",
                json!({
                "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {"name": "gizmoes.example.com"}}),
            ),
        ];
        for (resource, object) in objects {
            resources.insert(resource, object).unwrap();
        }
        let data = resources.to_tar_gz().unwrap();
        let names = entry_names(&data);
        for expected in [
            "resources/gizmoes.example.com/namespaces/shop/blue.json",
            "resources/gizmoes.example.com/v1beta2-preferredversion/namespaces/shop/blue.json",
            "resources/customresourcedefinitions.apiextensions.k8s.io/cluster/gizmoes.example.com.json",
            "resources/customresourcedefinitions.apiextensions.k8s.io/v1-preferredversion/cluster/gizmoes.example.com.json",
            "resources/serviceaccounts/v1-preferredversion/namespaces/shop/app.json",
        ] {
            assert!(
                names.iter().any(|name| name == expected),
                "{expected} missing from {names:?}"
            );
        }
        // Every object once at its plain path and once as its preferred-version copy.
        assert_eq!(names.len(), 1 + 2 * resources.objects.len(), "{names:?}");
        let back = BackupResources::from_tar_gz(&data, "k").unwrap();
        assert_eq!(back, resources);
        assert_eq!(
            back.get("gizmoes.example.com", Some("shop"), "blue")
                .unwrap()["spec"]["size"],
            3
        );
        assert_eq!(
            back.resource_list()["example.com/v1beta2/Gizmo"],
            ["shop/blue"]
        );
    }

    #[test]
    fn resource_list_groups_by_api_version_and_kind() {
        let list = sample().resource_list();
        let expected: BTreeMap<String, Vec<String>> = [
            ("apps/v1/Deployment", vec!["bar/web"]),
            ("v1/Namespace", vec!["foo"]),
            ("v1/PersistentVolume", vec!["pv-1"]),
            ("v1/PersistentVolumeClaim", vec!["foo/sample-pvc"]),
            ("v1/Pod", vec!["foo/sample"]),
        ]
        .into_iter()
        .map(|(key, entries)| {
            (
                key.to_string(),
                entries.into_iter().map(String::from).collect(),
            )
        })
        .collect();
        assert_eq!(list, expected);
    }

    #[test]
    fn version_entry_is_written_like_velero_and_read_trimmed() {
        let data = sample().to_tar_gz().unwrap();
        let tar = gunzip(&data, "k").unwrap();
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some(METADATA_VERSION_ENTRY));
        assert_eq!(entry.header().mode().unwrap(), 0o755);
        let mut content = String::new();
        entry.read_to_string(&mut content).unwrap();
        assert_eq!(content, "1.1.0\n");
    }

    #[test]
    fn tarball_round_trips() {
        let resources = sample();
        let back = BackupResources::from_tar_gz(&resources.to_tar_gz().unwrap(), "k").unwrap();
        assert_eq!(back, resources);
        assert_eq!(back.format_version.as_deref(), Some("1.1.0"));
        assert_eq!(back.pods().count(), 1);
        assert_eq!(back.persistent_volume_claims().count(), 1);
        let (pv_key, pv) = back.persistent_volumes().next().unwrap();
        assert_eq!(pv_key.namespace, None);
        assert_eq!(pv["spec"]["claimRef"]["name"], "sample-pvc");
        let pod = back.get(PODS, Some("foo"), "sample").unwrap();
        assert_eq!(
            pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "sample-pvc"
        );
    }

    /// Builds a tarball by hand, the way an older or a newer Velero wrote it.
    fn hand_made(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            append_entry(&mut builder, path, data).unwrap();
        }
        gzip(&builder.into_inner().unwrap())
    }

    #[test]
    fn reads_a_format_1_0_tarball_without_version_copies() {
        let data = hand_made(&[
            (
                "./resources/pods/namespaces/foo/sample.json",
                br#"{"kind":"Pod","metadata":{"name":"sample"}}"#,
            ),
            (
                "resources/persistentvolumes/cluster/pv-1.json",
                br#"{"kind":"PersistentVolume"}"#,
            ),
            ("resources/pods/namespaces/foo/notes.txt", b"ignored"),
        ]);
        let resources = BackupResources::from_tar_gz(&data, "k").unwrap();
        assert_eq!(resources.format_version, None);
        assert_eq!(resources.objects.len(), 2);
        assert!(resources.get(PODS, Some("foo"), "sample").is_some());
        assert!(resources.get(PERSISTENT_VOLUMES, None, "pv-1").is_some());
    }

    #[test]
    fn preferred_version_copies_fill_in_and_other_versions_are_skipped() {
        let data = hand_made(&[
            ("metadata/version", b"1.1.0"),
            (
                "resources/pods/namespaces/foo/a.json",
                br#"{"from":"legacy"}"#,
            ),
            (
                "resources/pods/v1-preferredversion/namespaces/foo/a.json",
                br#"{"from":"preferred"}"#,
            ),
            (
                "resources/pods/v1-preferredversion/namespaces/foo/b.json",
                br#"{"from":"preferred"}"#,
            ),
            (
                "resources/widgets.example.com/v1beta1/namespaces/foo/c.json",
                br#"{"from":"other"}"#,
            ),
        ]);
        let resources = BackupResources::from_tar_gz(&data, "k").unwrap();
        assert_eq!(resources.format_version.as_deref(), Some("1.1.0"));
        assert_eq!(
            resources.get(PODS, Some("foo"), "a").unwrap()["from"],
            "legacy"
        );
        assert_eq!(
            resources.get(PODS, Some("foo"), "b").unwrap()["from"],
            "preferred"
        );
        assert_eq!(resources.of_resource("widgets.example.com").count(), 0);
    }

    #[test]
    fn a_bad_entry_names_the_tarball_and_the_entry() {
        let data = hand_made(&[("resources/pods/namespaces/foo/sample.json", b"{truncated")]);
        let error = BackupResources::from_tar_gz(&data, "backups/b/b.tar.gz").unwrap_err();
        let text = error.to_string();
        assert!(matches!(error, FormatError::TarEntry { .. }), "{text}");
        assert!(
            text.contains("backups/b/b.tar.gz")
                && text.contains("resources/pods/namespaces/foo/sample.json"),
            "{text}"
        );
    }

    #[test]
    fn gzipped_garbage_is_not_a_tarball() {
        let data = gzip(&b"this is not a tar archive at all. ".repeat(40));
        let error = BackupResources::from_tar_gz(&data, "backups/b/b.tar.gz").unwrap_err();
        assert!(matches!(error, FormatError::Tar { .. }), "{error}");
        let error = BackupResources::from_tar_gz(&gzip(b""), "backups/b/b.tar.gz").unwrap_err();
        assert!(matches!(error, FormatError::Tar { .. }), "{error}");
    }

    proptest::proptest! {
        /// Any set of objects with Kubernetes-shaped names survives the tarball both ways.
        #[test]
        fn any_objects_round_trip_through_the_tarball(
            objects in proptest::collection::vec(
                (
                    proptest::sample::select(vec!["pods", "persistentvolumeclaims", "persistentvolumes", "deployments.apps", "widgets.example.com"]),
                    proptest::option::of("[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?"),
                    "[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?",
                    proptest::option::of("v1|v1beta1|apps/v1"),
                    ".{0,40}",
                ),
                0..12,
            )
        ) {
            let mut resources = BackupResources::new();
            for (resource, namespace, name, api_version, payload) in objects {
                let mut object = json!({"metadata": {"name": name}, "data": payload});
                if let Some(namespace) = namespace {
                    object["metadata"]["namespace"] = json!(namespace);
                }
                if let Some(api_version) = api_version {
                    object["apiVersion"] = json!(api_version);
                }
                resources.insert(resource, object).unwrap();
            }
            let back = BackupResources::from_tar_gz(&resources.to_tar_gz().unwrap(), "k").unwrap();
            proptest::prop_assert_eq!(back, resources);
        }
    }

    #[test]
    fn objects_without_name_or_kind_are_refused() {
        let mut resources = BackupResources::new();
        assert!(
            resources
                .insert_object(json!({"kind": "Pod", "metadata": {"name": "a"}}))
                .is_err()
        );
        assert!(resources.insert(PODS, json!({"metadata": {}})).is_err());
    }
}
