//! Which path patterns each volume gets: a backup's excludes (the spec's `exclude_paths` and
//! the pod's `backup.stowage.io/exclude-paths` annotation) and a restore's include and exclude
//! paths. Pure: the rules of one pattern are `stowage_contract::paths`; this module applies
//! them per volume and refuses, naming it, a pattern for a volume that is not there.

use k8s_openapi::api::core::v1::Pod;
use stowage_contract::{
    paths::{self, ScopedPattern},
    tags::annotations,
};
use stowage_proto::v1::{Backup, BackupSpec, RestoreSpec, VolumePhase};

use crate::error::{Error, Result};

/// The spec's `exclude_paths`, checked (the backup is refused before it starts when one is
/// bad). A `<volume>:` no pod has is not an error here: which pods a backup finds is known
/// only when it runs.
pub fn backup_excludes(spec: &BackupSpec) -> Result<Vec<ScopedPattern>> {
    Ok(paths::scoped_all("exclude_paths", &spec.exclude_paths)?)
}

/// The pod's `backup.stowage.io/exclude-paths` patterns. Refused, naming the pod and the
/// annotation: a bad pattern, and a `<volume>:` the pod has no volume of (a typo that would
/// otherwise back up what it meant to leave out).
pub fn pod_excludes(pod: &Pod) -> Result<Vec<ScopedPattern>> {
    let Some(value) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::EXCLUDE_PATHS))
    else {
        return Ok(Vec::new());
    };
    let pod_name = format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    );
    let field = format!("pod {pod_name} annotation {}", annotations::EXCLUDE_PATHS);
    let patterns = paths::scoped_list(&field, value)?;
    let volumes: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|spec| spec.volumes.iter().flatten())
        .map(|volume| volume.name.as_str())
        .collect();
    if let Some(unknown) = paths::unknown_volume(&patterns, &volumes) {
        return Err(Error::InvalidArgument {
            what: "path pattern",
            value: unknown.to_string(),
            reason: format!(
                "{field} names volume `{}`, which the pod does not have",
                unknown.volume.as_deref().unwrap_or_default()
            ),
        });
    }
    Ok(patterns)
}

/// The patterns restic excludes from one volume's backup: the spec's, then the pod's, each
/// once.
pub fn volume_excludes(spec: &[ScopedPattern], pod: &[ScopedPattern], volume: &str) -> Vec<String> {
    let mut found = paths::for_volume(spec, volume);
    for pattern in paths::for_volume(pod, volume) {
        if !found.contains(&pattern) {
            found.push(pattern);
        }
    }
    found
}

/// The restore's include and exclude paths, checked against the backup before anything is
/// created: a bad pattern is refused naming it, and a `<volume>:` naming no volume the backup
/// holds a snapshot of is [`Error::VolumeNotFound`].
pub fn check_restore(spec: &RestoreSpec, backup: &Backup) -> Result<()> {
    let volumes: Vec<&str> = backup
        .status
        .iter()
        .flat_map(|status| &status.volumes)
        .filter(|volume| volume.phase == VolumePhase::Completed as i32)
        .filter_map(|volume| volume.volume.as_ref())
        .map(|reference| reference.volume_name.as_str())
        .collect();
    for (field, texts) in [
        ("include_paths", &spec.include_paths),
        ("exclude_paths", &spec.exclude_paths),
    ] {
        let patterns = paths::scoped_all(field, texts)?;
        if let Some(unknown) = paths::unknown_volume(&patterns, &volumes) {
            return Err(Error::VolumeNotFound(format!(
                "{field}: `{unknown}` names volume `{}`, of which backup `{}` holds no snapshot",
                unknown.volume.as_deref().unwrap_or_default(),
                backup.name
            )));
        }
    }
    Ok(())
}

/// One volume's restic `restore --include` and `--exclude` patterns (relative), from a spec
/// [`check_restore`] accepted.
pub fn restore_patterns(spec: &RestoreSpec, volume: &str) -> (Vec<String>, Vec<String>) {
    let of = |texts: &Vec<String>| {
        paths::scoped_all("paths", texts)
            .map(|patterns| paths::for_volume(&patterns, volume))
            .unwrap_or_default()
    };
    (of(&spec.include_paths), of(&spec.exclude_paths))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodSpec, Volume};
    use stowage_proto::v1::{BackupStatus, PodVolumeBackup, PodVolumeRef};

    use super::*;

    fn pod(annotation: Option<&str>, volumes: &[&str]) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.namespace = Some("shop".into());
        pod.metadata.name = Some("db-0".into());
        if let Some(value) = annotation {
            pod.metadata.annotations =
                Some([(annotations::EXCLUDE_PATHS.to_string(), value.to_string())].into());
        }
        pod.spec = Some(PodSpec {
            volumes: Some(
                volumes
                    .iter()
                    .map(|name| Volume {
                        name: name.to_string(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        pod
    }

    fn spec(patterns: &[&str]) -> BackupSpec {
        BackupSpec {
            exclude_paths: patterns.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn each_volume_gets_the_backups_and_its_pods_patterns_once() {
        let backup = backup_excludes(&spec(&["*.tmp", "data:cache/", "logs:old"])).unwrap();
        let pod = pod_excludes(&pod(
            Some("data:cache, data:**/*.log,*.tmp"),
            &["data", "scratch"],
        ))
        .unwrap();
        assert_eq!(
            volume_excludes(&backup, &pod, "data"),
            ["*.tmp", "cache", "**/*.log"]
        );
        assert_eq!(volume_excludes(&backup, &pod, "scratch"), ["*.tmp"]);
        assert!(volume_excludes(&[], &[], "data").is_empty());
    }

    #[test]
    fn a_bad_spec_pattern_is_refused_naming_it() {
        let error = backup_excludes(&spec(&["cache", "data:/etc"])).unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            error.to_string(),
            "exclude_paths: path pattern `data:/etc` is absolute; patterns are relative to the \
             volume root (write `etc`)"
        );
    }

    #[test]
    fn the_annotation_may_not_name_a_volume_the_pod_lacks_or_hold_a_bad_pattern() {
        assert!(pod_excludes(&pod(None, &["data"])).unwrap().is_empty());
        let error = pod_excludes(&pod(Some("dta:cache"), &["data"])).unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        let text = error.to_string();
        assert!(text.contains("`dta:cache`"), "{text}");
        assert!(
            text.contains("names volume `dta`, which the pod does not have"),
            "{text}"
        );
        assert!(text.contains("pod shop/db-0"), "{text}");
        let error = pod_excludes(&pod(Some("data:../x"), &["data"])).unwrap_err();
        assert!(
            error.to_string().starts_with(
                "pod shop/db-0 annotation backup.stowage.io/exclude-paths: path pattern `data:../x`"
            ),
            "{error}"
        );
    }

    fn backup_with(volumes: &[(&str, VolumePhase)]) -> Backup {
        Backup {
            name: "nightly".into(),
            status: Some(BackupStatus {
                volumes: volumes
                    .iter()
                    .map(|(name, phase)| PodVolumeBackup {
                        volume: Some(PodVolumeRef {
                            volume_name: name.to_string(),
                            ..Default::default()
                        }),
                        phase: *phase as i32,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn restore_patterns_must_name_a_volume_the_backup_holds() {
        let backup = backup_with(&[
            ("data", VolumePhase::Completed),
            ("logs", VolumePhase::Failed),
        ]);
        let restore = |include: &[&str], exclude: &[&str]| RestoreSpec {
            include_paths: include.iter().map(|p| p.to_string()).collect(),
            exclude_paths: exclude.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        };
        let spec = restore(&["data:data/2024/**", "*.csv"], &["**/*.tmp"]);
        check_restore(&spec, &backup).unwrap();
        assert_eq!(
            restore_patterns(&spec, "data"),
            (
                vec!["data/2024/**".to_string(), "*.csv".to_string()],
                vec!["**/*.tmp".to_string()]
            )
        );
        assert_eq!(
            restore_patterns(&spec, "other").0,
            vec!["*.csv".to_string()]
        );
        // A volume whose backup failed has no snapshot to restore from.
        let error = check_restore(&restore(&[], &["logs:x"]), &backup).unwrap_err();
        assert_eq!(error.code(), tonic::Code::NotFound);
        assert_eq!(
            error.to_string(),
            "exclude_paths: `logs:x` names volume `logs`, of which backup `nightly` holds no snapshot"
        );
        let error = check_restore(&restore(&[""], &[]), &backup).unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert_eq!(error.to_string(), "include_paths: path pattern `` is empty");
    }
}
