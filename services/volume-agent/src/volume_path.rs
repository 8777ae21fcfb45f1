//! Finding a pod volume's directory under the kubelet pods root, and refusing anything that
//! could make the agent read or write outside it: malformed pod UIDs, names that are not a
//! single path component, and symlinks that lead out of the pod's directory.

use std::path::{Path, PathBuf};

use stowage_proto::v1::{PodVolumeRef, VolumeSource};

/// The emptyDir plugin's directory name under `<pod>/volumes`.
pub const EMPTY_DIR_PLUGIN: &str = "kubernetes.io~empty-dir";
/// CSI volumes are mounted one level deeper, at `<plugin>/<pv>/mount`.
pub const CSI_PLUGIN: &str = "kubernetes.io~csi";

#[derive(Debug, thiserror::Error)]
pub enum VolumePathError {
    #[error("pod uid `{0}` is not a Kubernetes UID")]
    InvalidUid(String),
    #[error("{field} `{value}` is not a single path component: {reason}")]
    InvalidName {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("volume `{volume}` is refused: {reason}")]
    Unsupported { volume: String, reason: String },
    #[error("pod {uid} has no directory under the pods root: {} does not exist", path.display())]
    PodNotFound { uid: String, path: PathBuf },
    #[error("volume `{volume}` of pod {uid} not found: looked for {looked_for} in {}", looked_in.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    VolumeNotFound {
        uid: String,
        volume: String,
        looked_for: String,
        looked_in: Vec<PathBuf>,
    },
    #[error("{} resolves to {}, outside pod directory {}", path.display(), resolved.display(), pod_dir.display())]
    Escapes {
        path: PathBuf,
        resolved: PathBuf,
        pod_dir: PathBuf,
    },
    #[error("{} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A volume directory found on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedVolume {
    /// Canonical path of the directory restic reads from or restores into.
    pub path: PathBuf,
    /// The volume plugin directory it was found under (`kubernetes.io~csi`, …).
    pub plugin: String,
}

/// Kubernetes UIDs are RFC 4122 UUIDs; static pods use a 32-hex-digit hash instead.
pub fn validate_pod_uid(uid: &str) -> Result<(), VolumePathError> {
    let hex = |c: char| c.is_ascii_hexdigit();
    let is_uuid = uid.len() == 36
        && uid.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => hex(c),
        });
    let is_hash = uid.len() == 32 && uid.chars().all(hex);
    if is_uuid || is_hash {
        Ok(())
    } else {
        Err(VolumePathError::InvalidUid(uid.to_string()))
    }
}

/// A name that becomes one directory name: no separators, no `..`, no NUL.
pub fn validate_component(field: &'static str, value: &str) -> Result<(), VolumePathError> {
    let reason = if value.is_empty() {
        Some("it is empty")
    } else if value.contains('/') || value.contains('\\') {
        Some("it contains a path separator")
    } else if value.contains("..") || value == "." {
        Some("it contains `..` or is `.`")
    } else if value.contains('\0') {
        Some("it contains a NUL byte")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(VolumePathError::InvalidName {
            field,
            value: value.escape_debug().to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Checks everything in `volume` that will name a path, before anything is touched.
pub fn validate(volume: &PodVolumeRef) -> Result<(), VolumePathError> {
    validate_pod_uid(&volume.pod_uid)?;
    validate_component("volume name", &volume.volume_name)?;
    match VolumeSource::try_from(volume.source).unwrap_or(VolumeSource::Unspecified) {
        VolumeSource::HostPath => Err(VolumePathError::Unsupported {
            volume: volume.volume_name.clone(),
            reason: "hostPath volumes live on the node, not in the pod; back them up with the node"
                .into(),
        }),
        VolumeSource::Block => Err(VolumePathError::Unsupported {
            volume: volume.volume_name.clone(),
            reason: "block-mode volumes are raw devices; restic backs up files".into(),
        }),
        VolumeSource::PersistentVolumeClaim => validate_component("PV name", &volume.pv_name),
        _ => Ok(()),
    }
}

/// Finds the directory of `volume` under `pods_root`.
pub fn resolve(pods_root: &Path, volume: &PodVolumeRef) -> Result<ResolvedVolume, VolumePathError> {
    validate(volume)?;
    let pod_dir = pods_root.join(&volume.pod_uid);
    let canonical_pod_dir = match pod_dir.canonicalize() {
        Ok(dir) => dir,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(VolumePathError::PodNotFound {
                uid: volume.pod_uid.clone(),
                path: pod_dir,
            });
        }
        Err(source) => {
            return Err(VolumePathError::Io {
                path: pod_dir,
                source,
            });
        }
    };
    // The pod dir itself must be inside the root too (a symlinked pod dir is not kubelet's).
    let canonical_root = pods_root
        .canonicalize()
        .map_err(|source| VolumePathError::Io {
            path: pods_root.to_path_buf(),
            source,
        })?;
    if !canonical_pod_dir.starts_with(&canonical_root) {
        return Err(VolumePathError::Escapes {
            path: pod_dir,
            resolved: canonical_pod_dir,
            pod_dir: canonical_root,
        });
    }
    let volumes_dir = pod_dir.join("volumes");
    let source = VolumeSource::try_from(volume.source).unwrap_or(VolumeSource::Unspecified);
    let (candidate, plugin) = match source {
        VolumeSource::EmptyDir => {
            let plugin_dir = volumes_dir.join(EMPTY_DIR_PLUGIN);
            let path = plugin_dir.join(&volume.volume_name);
            if !path.exists() {
                return Err(VolumePathError::VolumeNotFound {
                    uid: volume.pod_uid.clone(),
                    volume: volume.volume_name.clone(),
                    looked_for: format!("emptyDir `{}`", volume.volume_name),
                    looked_in: vec![plugin_dir],
                });
            }
            (path, EMPTY_DIR_PLUGIN.to_string())
        }
        VolumeSource::PersistentVolumeClaim => {
            search_plugins(&volumes_dir, &volume.pv_name, volume, "PV")?
        }
        _ => search_plugins(&volumes_dir, &volume.volume_name, volume, "volume")?,
    };
    let resolved = candidate
        .canonicalize()
        .map_err(|source| VolumePathError::Io {
            path: candidate.clone(),
            source,
        })?;
    if !resolved.starts_with(&canonical_pod_dir) {
        return Err(VolumePathError::Escapes {
            path: candidate,
            resolved,
            pod_dir: canonical_pod_dir,
        });
    }
    if !resolved.is_dir() {
        return Err(VolumePathError::NotADirectory { path: resolved });
    }
    Ok(ResolvedVolume {
        path: resolved,
        plugin,
    })
}

/// Looks for `<volumes>/<any plugin>/<dir>`, preferring CSI's `mount` subdirectory.
fn search_plugins(
    volumes_dir: &Path,
    dir: &str,
    volume: &PodVolumeRef,
    what: &str,
) -> Result<(PathBuf, String), VolumePathError> {
    let not_found = |looked_in| VolumePathError::VolumeNotFound {
        uid: volume.pod_uid.clone(),
        volume: volume.volume_name.clone(),
        looked_for: format!("{what} dir `{dir}`"),
        looked_in,
    };
    let entries = match std::fs::read_dir(volumes_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(not_found(vec![volumes_dir.to_path_buf()]));
        }
        Err(source) => {
            return Err(VolumePathError::Io {
                path: volumes_dir.to_path_buf(),
                source,
            });
        }
    };
    let mut plugins: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    plugins.sort();
    for plugin in &plugins {
        let path = volumes_dir.join(plugin).join(dir);
        if !path.exists() {
            continue;
        }
        // CSI keeps `vol_data.json` beside the real mount point `mount`.
        let mount = path.join("mount");
        if plugin == CSI_PLUGIN || mount.is_dir() {
            if mount.is_dir() {
                return Ok((mount, plugin.clone()));
            }
            continue;
        }
        return Ok((path, plugin.clone()));
    }
    let looked_in = if plugins.is_empty() {
        vec![volumes_dir.to_path_buf()]
    } else {
        plugins.iter().map(|p| volumes_dir.join(p)).collect()
    };
    Err(not_found(looked_in))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

    fn volume(source: VolumeSource, name: &str, pv: &str) -> PodVolumeRef {
        PodVolumeRef {
            namespace: "ns".into(),
            pod_name: "pod".into(),
            pod_uid: UID.into(),
            volume_name: name.into(),
            source: source as i32,
            pv_name: pv.into(),
            pvc_name: String::new(),
            pvc_uid: String::new(),
        }
    }

    fn mkdir(path: &Path) {
        std::fs::create_dir_all(path).unwrap();
    }

    #[test]
    fn uids_are_checked() {
        assert!(validate_pod_uid(UID).is_ok());
        assert!(validate_pod_uid("6f1b2c3d4e5f60718293a4b5c6d7e8f9").is_ok());
        for bad in [
            "",
            "..",
            "../etc",
            "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f",
            &format!("{UID}/x"),
        ] {
            assert!(validate_pod_uid(bad).is_err(), "{bad}");
        }
        assert!(validate_pod_uid("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1fz").is_err());
    }

    #[test]
    fn names_with_separators_dots_or_nul_are_refused() {
        for bad in ["", "a/b", "..", "a..b", ".", "a\0b", "x\\y"] {
            assert!(validate_component("volume name", bad).is_err(), "{bad:?}");
        }
        assert!(validate_component("volume name", "data-1.x").is_ok());
    }

    #[test]
    fn empty_dir_is_found_by_volume_name() {
        let root = tempfile::tempdir().unwrap();
        let dir = root
            .path()
            .join(UID)
            .join("volumes")
            .join(EMPTY_DIR_PLUGIN)
            .join("cache");
        mkdir(&dir);
        let found = resolve(root.path(), &volume(VolumeSource::EmptyDir, "cache", "")).unwrap();
        assert_eq!(found.path, dir.canonicalize().unwrap());
        assert_eq!(found.plugin, EMPTY_DIR_PLUGIN);
    }

    #[test]
    fn pvc_is_found_by_pv_name_under_any_plugin_and_csi_uses_mount() {
        let root = tempfile::tempdir().unwrap();
        let volumes = root.path().join(UID).join("volumes");
        mkdir(&volumes.join("kubernetes.io~nfs").join("pv-nfs"));
        mkdir(&volumes.join(CSI_PLUGIN).join("pv-csi").join("mount"));
        std::fs::write(
            volumes
                .join(CSI_PLUGIN)
                .join("pv-csi")
                .join("vol_data.json"),
            "{}",
        )
        .unwrap();
        let nfs = resolve(
            root.path(),
            &volume(VolumeSource::PersistentVolumeClaim, "data", "pv-nfs"),
        )
        .unwrap();
        assert!(nfs.path.ends_with("kubernetes.io~nfs/pv-nfs"));
        let csi = resolve(
            root.path(),
            &volume(VolumeSource::PersistentVolumeClaim, "data", "pv-csi"),
        )
        .unwrap();
        assert!(csi.path.ends_with("pv-csi/mount"), "{}", csi.path.display());
        assert_eq!(csi.plugin, CSI_PLUGIN);
    }

    #[test]
    fn missing_volume_names_what_and_where() {
        let root = tempfile::tempdir().unwrap();
        let volumes = root.path().join(UID).join("volumes");
        mkdir(&volumes.join(CSI_PLUGIN));
        let error = resolve(
            root.path(),
            &volume(VolumeSource::PersistentVolumeClaim, "data", "pv-x"),
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(text.contains("pv-x") && text.contains(CSI_PLUGIN), "{text}");
        let error = resolve(root.path(), &volume(VolumeSource::EmptyDir, "nope", "")).unwrap_err();
        assert!(matches!(error, VolumePathError::VolumeNotFound { .. }));
        let mut other_pod = volume(VolumeSource::EmptyDir, "x", "");
        other_pod.pod_uid = "11111111-2222-3333-4444-555555555555".into();
        assert!(matches!(
            resolve(root.path(), &other_pod).unwrap_err(),
            VolumePathError::PodNotFound { .. }
        ));
    }

    #[test]
    fn symlink_out_of_the_pod_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let plugin_dir = root.path().join(UID).join("volumes").join(EMPTY_DIR_PLUGIN);
        mkdir(&plugin_dir);
        std::os::unix::fs::symlink(outside.path(), plugin_dir.join("evil")).unwrap();
        let error = resolve(root.path(), &volume(VolumeSource::EmptyDir, "evil", "")).unwrap_err();
        assert!(matches!(error, VolumePathError::Escapes { .. }), "{error}");
    }

    #[test]
    fn host_path_and_block_are_refused_before_looking() {
        let root = tempfile::tempdir().unwrap();
        for source in [VolumeSource::HostPath, VolumeSource::Block] {
            let error = resolve(root.path(), &volume(source, "v", "")).unwrap_err();
            assert!(
                matches!(error, VolumePathError::Unsupported { .. }),
                "{error}"
            );
        }
        let error = resolve(
            root.path(),
            &volume(VolumeSource::PersistentVolumeClaim, "v", "../../etc"),
        )
        .unwrap_err();
        assert!(matches!(error, VolumePathError::InvalidName { .. }));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Names built from the characters that matter to paths, so `..`, `/` and NUL come up
        /// often rather than once in a billion cases.
        fn hostile_name() -> impl Strategy<Value = String> {
            prop::collection::vec(
                prop::sample::select(vec!["a", "b", ".", "..", "/", "\\", "\0", "~", "-", "data"]),
                0..6,
            )
            .prop_map(|parts| parts.concat())
        }

        fn source() -> impl Strategy<Value = VolumeSource> {
            prop::sample::select(vec![
                VolumeSource::EmptyDir,
                VolumeSource::PersistentVolumeClaim,
                VolumeSource::Unspecified,
                VolumeSource::Other,
            ])
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            /// Whatever the request names, a resolved volume is a directory inside its own pod
            /// dir, and a name that is not a plain component never resolves at all.
            #[test]
            fn resolution_never_leaves_the_pod(
                name in hostile_name(),
                pv in hostile_name(),
                uid in prop::sample::select(vec![UID.to_string(), format!("{UID}/.."), "..".to_string(), format!("../{UID}")]),
                source in source(),
            ) {
                let root = tempfile::tempdir().unwrap();
                let volumes = root.path().join(UID).join("volumes");
                // Real volumes to find, and an escape hatch a bad name might reach.
                mkdir(&volumes.join(EMPTY_DIR_PLUGIN).join("data"));
                mkdir(&volumes.join("kubernetes.io~nfs").join("data"));
                mkdir(&root.path().join("secret"));
                let mut request = volume(source, &name, &pv);
                request.pod_uid = uid;
                if let Ok(resolved) = resolve(root.path(), &request) {
                    let pod_dir = root.path().join(UID).canonicalize().unwrap();
                    prop_assert!(resolved.path.starts_with(&pod_dir), "{:?}", resolved.path);
                    prop_assert!(resolved.path.is_dir());
                    prop_assert!(validate_component("volume name", &name).is_ok());
                }
            }

            #[test]
            fn accepted_components_are_one_directory_level(name in "\\PC{0,40}|[./a\\\\]{0,6}") {
                if validate_component("volume name", &name).is_ok() {
                    let base = Path::new("/pods/uid/volumes/plugin");
                    let joined = base.join(&name);
                    prop_assert_eq!(joined.parent(), Some(base));
                    prop_assert_eq!(joined.components().count(), base.components().count() + 1);
                }
            }
        }
    }
}
