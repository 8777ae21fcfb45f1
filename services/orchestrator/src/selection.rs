//! Which pod volumes a backup takes: the `backup.velero.io/backup-volumes` (opt-in) and
//! `backup.velero.io/backup-volumes-excludes` (opt-out) annotations, the volume types restic
//! cannot back up (raw block devices among them), pods that are not running, and claims that
//! cannot be read as files (block mode, not bound). Pure functions over the pod spec and the
//! claim; every volume left out gets a reason, which both backups and the coverage call report.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Volume};
use stowage_proto::v1::SkipReason;

pub const BACKUP_VOLUMES: &str = "backup.velero.io/backup-volumes";
pub const BACKUP_VOLUMES_EXCLUDES: &str = "backup.velero.io/backup-volumes-excludes";

/// Parses an annotation value `a, b,,c` into `[a, b, c]`: names trimmed, empties dropped,
/// duplicates kept once in first-seen order (Velero tolerates all of these).
pub fn parse_volume_list(value: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in value
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
    {
        if !names.iter().any(|seen| seen == name) {
            names.push(name.to_string());
        }
    }
    names
}

/// What kind of volume the pod spec declares, as far as backup cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeKind {
    EmptyDir,
    PersistentVolumeClaim {
        claim_name: String,
    },
    /// Types restic cannot or must not back up; the string names the type.
    Unsupported(&'static str),
    /// Any other plugin (CSI ephemeral, NFS, …): backed up by volume name.
    Other,
}

impl VolumeKind {
    pub fn of(volume: &Volume) -> VolumeKind {
        if volume.empty_dir.is_some() {
            VolumeKind::EmptyDir
        } else if let Some(claim) = &volume.persistent_volume_claim {
            VolumeKind::PersistentVolumeClaim {
                claim_name: claim.claim_name.clone(),
            }
        } else if volume.host_path.is_some() {
            VolumeKind::Unsupported("hostPath")
        } else if volume.secret.is_some() {
            VolumeKind::Unsupported("secret")
        } else if volume.config_map.is_some() {
            VolumeKind::Unsupported("configMap")
        } else if volume.projected.is_some() {
            VolumeKind::Unsupported("projected")
        } else if volume.downward_api.is_some() {
            VolumeKind::Unsupported("downwardAPI")
        } else {
            VolumeKind::Other
        }
    }
}

fn unsupported_detail(kind: &str) -> String {
    match kind {
        "hostPath" => "hostPath volumes hold node data, not pod data".to_string(),
        other => format!("{other} volumes are generated from the API, not pod data"),
    }
}

/// Volumes some container of `pod` uses as a raw block device (`volumeDevices`) rather than
/// a mounted file system: there are no files on the node for restic to read.
fn block_devices(pod: &Pod) -> Vec<String> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|container| container.volume_devices.iter().flatten())
        .map(|device| device.name.clone())
        .collect()
}

/// Why a backup cannot take claim `claim_name`, if it cannot: a raw block device (volumeMode
/// Block: no file system to read), not bound to a persistent volume (nothing mounted yet), or
/// no claim of that name (`claim` is None).
pub fn claim_skip(
    claim_name: &str,
    claim: Option<&PersistentVolumeClaim>,
) -> Option<(SkipReason, String)> {
    let Some(claim) = claim else {
        return Some((
            SkipReason::PvcNotBound,
            format!("PVC {claim_name} does not exist"),
        ));
    };
    let spec = claim.spec.as_ref();
    if spec.and_then(|spec| spec.volume_mode.as_deref()) == Some("Block") {
        return Some((
            SkipReason::BlockMode,
            format!(
                "PVC {claim_name} is a raw block device (volumeMode Block); restic backs up files"
            ),
        ));
    }
    let bound = spec
        .and_then(|spec| spec.volume_name.as_deref())
        .is_some_and(|volume| !volume.is_empty());
    if !bound {
        return Some((
            SkipReason::PvcNotBound,
            format!("PVC {claim_name} is not bound to a persistent volume"),
        ));
    }
    None
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedVolume {
    pub name: String,
    pub kind: VolumeKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub volume: String,
    pub reason: SkipReason,
    pub detail: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub selected: Vec<SelectedVolume>,
    pub skipped: Vec<Skipped>,
}

/// Whether the pod's volumes are mounted on a node: Running and bound to one.
pub fn pod_is_running(pod: &Pod) -> bool {
    let running = pod
        .status
        .as_ref()
        .and_then(|status| status.phase.as_deref())
        == Some("Running");
    let on_node = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.node_name.as_deref())
        .is_some_and(|node| !node.is_empty());
    running && on_node
}

/// Decides for every volume of `pod` whether a backup takes it, in opt-out mode when
/// `default_volumes_to_fs_backup`, otherwise by the opt-in annotation.
pub fn select_volumes(pod: &Pod, default_volumes_to_fs_backup: bool) -> Selection {
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let volumes: &[Volume] = pod
        .spec
        .as_ref()
        .map(|spec| spec.volumes.as_deref().unwrap_or_default())
        .unwrap_or_default();
    let included = parse_volume_list(annotations.get(BACKUP_VOLUMES).map_or("", String::as_str));
    let excluded = parse_volume_list(
        annotations
            .get(BACKUP_VOLUMES_EXCLUDES)
            .map_or("", String::as_str),
    );
    let running = pod_is_running(pod);
    let block = block_devices(pod);
    let mut selection = Selection::default();

    for volume in volumes {
        let skip = |reason, detail: String| Skipped {
            volume: volume.name.clone(),
            reason,
            detail,
        };
        let kind = VolumeKind::of(volume);
        if default_volumes_to_fs_backup {
            if excluded.contains(&volume.name) {
                selection.skipped.push(skip(
                    SkipReason::Excluded,
                    format!("listed in {BACKUP_VOLUMES_EXCLUDES}"),
                ));
                continue;
            }
        } else if !included.contains(&volume.name) {
            selection.skipped.push(skip(
                SkipReason::NotAnnotated,
                format!("not listed in {BACKUP_VOLUMES}"),
            ));
            continue;
        }
        if let VolumeKind::Unsupported(type_name) = kind {
            selection.skipped.push(skip(
                SkipReason::UnsupportedType,
                unsupported_detail(type_name),
            ));
            continue;
        }
        if block.contains(&volume.name) {
            selection.skipped.push(skip(
                SkipReason::BlockMode,
                "used as a raw block device (volumeDevices); restic backs up files".to_string(),
            ));
            continue;
        }
        if !running {
            selection.skipped.push(skip(
                SkipReason::PodNotRunning,
                "the pod is not running, so its volumes are not mounted on a node".to_string(),
            ));
            continue;
        }
        selection.selected.push(SelectedVolume {
            name: volume.name.clone(),
            kind,
        });
    }

    if !default_volumes_to_fs_backup {
        for name in &included {
            if !volumes.iter().any(|volume| &volume.name == name) {
                selection.skipped.push(Skipped {
                    volume: name.clone(),
                    reason: SkipReason::NoSuchVolume,
                    detail: format!("{BACKUP_VOLUMES} names a volume the pod does not have"),
                });
            }
        }
    }
    selection
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn pod(annotations: serde_json::Value, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "sample", "namespace": "foo", "annotations": annotations},
            "spec": {
                "nodeName": "node-a",
                "containers": [{"name": "app"}],
                "volumes": [
                    {"name": "pvc-volume", "persistentVolumeClaim": {"claimName": "data"}},
                    {"name": "emptydir-volume", "emptyDir": {}},
                    {"name": "host", "hostPath": {"path": "/var/log"}},
                    {"name": "token", "projected": {"sources": []}},
                    {"name": "cfg", "configMap": {"name": "c"}},
                    {"name": "creds", "secret": {"secretName": "s"}},
                    {"name": "info", "downwardAPI": {}},
                ],
            },
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    fn names(selection: &Selection) -> Vec<&str> {
        selection.selected.iter().map(|v| v.name.as_str()).collect()
    }

    fn reason_of(selection: &Selection, volume: &str) -> Option<SkipReason> {
        selection
            .skipped
            .iter()
            .find(|skip| skip.volume == volume)
            .map(|skip| skip.reason)
    }

    #[test]
    fn annotation_list_is_trimmed_and_deduplicated() {
        assert_eq!(parse_volume_list(" a, b,,a ,c,"), vec!["a", "b", "c"]);
        assert!(parse_volume_list("").is_empty());
        assert!(parse_volume_list(" , ").is_empty());
    }

    #[test]
    fn opt_in_takes_only_annotated_volumes() {
        let selection = select_volumes(
            &pod(
                json!({BACKUP_VOLUMES: "pvc-volume,emptydir-volume"}),
                "Running",
            ),
            false,
        );
        assert_eq!(names(&selection), vec!["pvc-volume", "emptydir-volume"]);
        assert_eq!(
            selection.selected[0].kind,
            VolumeKind::PersistentVolumeClaim {
                claim_name: "data".into()
            }
        );
        assert_eq!(
            reason_of(&selection, "host"),
            Some(SkipReason::NotAnnotated)
        );
    }

    #[test]
    fn annotated_unsupported_types_are_skipped_with_their_reason() {
        let selection = select_volumes(
            &pod(
                json!({BACKUP_VOLUMES: "host,token,cfg,creds,info,missing"}),
                "Running",
            ),
            false,
        );
        assert!(selection.selected.is_empty());
        for volume in ["host", "token", "cfg", "creds", "info"] {
            assert_eq!(
                reason_of(&selection, volume),
                Some(SkipReason::UnsupportedType),
                "{volume}"
            );
        }
        assert_eq!(
            reason_of(&selection, "missing"),
            Some(SkipReason::NoSuchVolume)
        );
        let host = selection
            .skipped
            .iter()
            .find(|s| s.volume == "host")
            .unwrap();
        assert!(host.detail.contains("hostPath"), "{}", host.detail);
    }

    #[test]
    fn opt_out_takes_every_supported_volume_but_the_excluded() {
        let selection = select_volumes(
            &pod(
                json!({BACKUP_VOLUMES_EXCLUDES: "emptydir-volume"}),
                "Running",
            ),
            true,
        );
        assert_eq!(names(&selection), vec!["pvc-volume"]);
        assert_eq!(
            reason_of(&selection, "emptydir-volume"),
            Some(SkipReason::Excluded)
        );
        assert_eq!(
            reason_of(&selection, "token"),
            Some(SkipReason::UnsupportedType)
        );
    }

    #[test]
    fn volumes_of_pods_not_running_are_skipped() {
        let selection = select_volumes(
            &pod(json!({BACKUP_VOLUMES: "pvc-volume"}), "Pending"),
            false,
        );
        assert!(selection.selected.is_empty());
        assert_eq!(
            reason_of(&selection, "pvc-volume"),
            Some(SkipReason::PodNotRunning)
        );
    }

    #[test]
    fn raw_block_devices_are_skipped_as_block_mode() {
        let mut pod = pod(
            json!({BACKUP_VOLUMES: "pvc-volume,emptydir-volume"}),
            "Running",
        );
        pod.spec.as_mut().unwrap().containers[0].volume_devices = Some(vec![
            serde_json::from_value(json!({"name": "pvc-volume", "devicePath": "/dev/xvda"}))
                .unwrap(),
        ]);
        let selection = select_volumes(&pod, false);
        assert_eq!(names(&selection), vec!["emptydir-volume"]);
        assert_eq!(
            reason_of(&selection, "pvc-volume"),
            Some(SkipReason::BlockMode)
        );
    }

    fn claim(spec: serde_json::Value) -> PersistentVolumeClaim {
        serde_json::from_value(json!({"metadata": {"name": "data"}, "spec": spec})).unwrap()
    }

    #[test]
    fn claims_in_block_mode_unbound_or_missing_cannot_be_backed_up() {
        let block = claim(json!({"volumeMode": "Block", "volumeName": "pv-1"}));
        let (reason, detail) = claim_skip("data", Some(&block)).unwrap();
        assert_eq!(reason, SkipReason::BlockMode);
        assert!(detail.contains("volumeMode Block"), "{detail}");
        assert_eq!(
            claim_skip("data", Some(&claim(json!({"volumeMode": "Filesystem"}))))
                .map(|skip| skip.0),
            Some(SkipReason::PvcNotBound)
        );
        assert_eq!(
            claim_skip("data", None).map(|skip| skip.0),
            Some(SkipReason::PvcNotBound)
        );
        assert_eq!(
            claim_skip("data", Some(&claim(json!({"volumeName": "pv-1"})))),
            None
        );
        assert_eq!(
            claim_skip(
                "data",
                Some(&claim(
                    json!({"volumeMode": "Filesystem", "volumeName": "pv-1"})
                ))
            ),
            None
        );
    }

    proptest! {
        // Every volume of the pod gets exactly one verdict: selected or skipped, never both.
        #[test]
        fn every_volume_is_selected_or_skipped_once(
            annotated in proptest::collection::vec(
                prop_oneof![
                    Just("pvc-volume"), Just("emptydir-volume"), Just("host"),
                    Just("token"), Just("cfg"), Just("nope"),
                ],
                0..6,
            ),
            opt_out in any::<bool>(),
            running in any::<bool>(),
        ) {
            let value = annotated.join(",");
            let annotations = if opt_out {
                json!({BACKUP_VOLUMES_EXCLUDES: value})
            } else {
                json!({BACKUP_VOLUMES: value})
            };
            let pod = pod(annotations, if running { "Running" } else { "Pending" });
            let selection = select_volumes(&pod, opt_out);
            for volume in pod.spec.as_ref().unwrap().volumes.as_ref().unwrap() {
                let selected = selection.selected.iter().filter(|v| v.name == volume.name).count();
                let skipped = selection.skipped.iter().filter(|s| s.volume == volume.name).count();
                prop_assert_eq!(selected + skipped, 1, "volume {}", volume.name);
            }
            if !running {
                prop_assert!(selection.selected.is_empty());
            }
            for selected in &selection.selected {
                prop_assert!(!matches!(selected.kind, VolumeKind::Unsupported(_)));
                if opt_out {
                    prop_assert!(!annotated.contains(&selected.name.as_str()));
                } else {
                    prop_assert!(annotated.contains(&selected.name.as_str()));
                }
            }
        }

        #[test]
        fn parsed_names_are_nonempty_trimmed_and_unique(value in "[a-z ,]{0,40}") {
            let names = parse_volume_list(&value);
            let mut seen = std::collections::BTreeSet::new();
            for name in &names {
                prop_assert!(!name.is_empty());
                prop_assert_eq!(name.trim(), name.as_str());
                prop_assert!(seen.insert(name.clone()));
            }
        }
    }
}
