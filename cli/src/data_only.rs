//! `restore create --data-only` and `--as-of`: the spec fields they set, and the check that
//! asks for `--yes` before a data-only restore writes into a claim a running pod mounts. The
//! server restores into such a claim when asked; the question is the client's to put.

use std::collections::BTreeMap;

use clap::ValueEnum;
use stowage_proto::{prost_types::Timestamp, v1};

use crate::{
    error::{Call, CliError},
    session::{Session, get_backup},
};

/// `--overwrite-policy`: what a data-only restore does with the files already in the claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OverwritePolicy {
    /// Restore over what is there; files not in the snapshot stay.
    Merge,
    /// Make the volume identical to the snapshot: files not in it are deleted (paths excluded
    /// from the restore are left alone).
    Replace,
    /// Overwrite only files that are older than the snapshot's.
    IfNewer,
}

impl OverwritePolicy {
    pub fn proto(self) -> v1::OverwritePolicy {
        match self {
            OverwritePolicy::Merge => v1::OverwritePolicy::Merge,
            OverwritePolicy::Replace => v1::OverwritePolicy::Replace,
            OverwritePolicy::IfNewer => v1::OverwritePolicy::IfNewer,
        }
    }
}

/// `--as-of` as RFC 3339 (`2024-05-01T12:00:00Z`, an offset allowed).
pub fn parse_as_of(text: &str) -> Result<Timestamp, String> {
    let time = chrono::DateTime::parse_from_rfc3339(text.trim()).map_err(|error| {
        format!("`{text}` is not an RFC 3339 time like 2024-05-01T12:00:00Z: {error}")
    })?;
    Ok(Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    })
}

/// The flags of `restore create` that only data-only restores take, refused without
/// `--data-only` so a forgotten flag does not recreate pods instead.
pub fn check_flags(
    data_only: bool,
    volumes: &[String],
    target_pvc: Option<&str>,
    overwrite: Option<OverwritePolicy>,
) -> Result<(), CliError> {
    if data_only {
        return Ok(());
    }
    let given: Vec<&str> = [
        (!volumes.is_empty()).then_some("--volumes"),
        target_pvc.map(|_| "--target-pvc"),
        overwrite.map(|_| "--overwrite-policy"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if given.is_empty() {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "{} only apply with --data-only",
            given.join(", ")
        )))
    }
}

/// The claims (`namespace/claim`) a data-only restore of `backup` writes into, as the server
/// resolves them: each selected completed volume's own claim in its namespace after mapping,
/// or `target_pvc`. Volumes whose record names no claim are left to the server to judge.
pub fn target_claims(
    backup: &v1::Backup,
    volumes: &[String],
    included_namespaces: &[String],
    mapping: &BTreeMap<String, String>,
    target_pvc: Option<&str>,
) -> Vec<(String, String)> {
    if let Some(target) = target_pvc {
        return target
            .split_once('/')
            .map(|(namespace, claim)| vec![(namespace.to_string(), claim.to_string())])
            .unwrap_or_default();
    }
    let mut claims = Vec::new();
    for volume in backup.status.iter().flat_map(|status| &status.volumes) {
        let Some(reference) = &volume.volume else {
            continue;
        };
        let name = format!(
            "{}/{}/{}",
            reference.namespace, reference.pod_name, reference.volume_name
        );
        let selected = if volumes.is_empty() {
            volume.phase == v1::VolumePhase::Completed as i32
                && (included_namespaces.is_empty()
                    || included_namespaces.contains(&reference.namespace))
        } else {
            volumes.contains(&name)
        };
        if selected && !reference.pvc_name.is_empty() {
            let namespace = mapping
                .get(&reference.namespace)
                .cloned()
                .unwrap_or_else(|| reference.namespace.clone());
            claims.push((namespace, reference.pvc_name.clone()));
        }
    }
    claims.sort();
    claims.dedup();
    claims
}

/// Refuses, without `--yes`, a data-only restore into claims that running pods mount, naming
/// them: what those pods read and write changes under them. The cluster's view comes from the
/// server's coverage report, which names the running pod mounting each claim.
pub async fn confirm_running_pods(
    session: &mut Session,
    backup_name: &str,
    claims_of: impl FnOnce(&v1::Backup) -> Vec<(String, String)>,
) -> Result<(), CliError> {
    let backup = get_backup(session, backup_name).await?;
    let claims = claims_of(&backup);
    if claims.is_empty() {
        return Ok(());
    }
    let mut namespaces: Vec<String> = claims.iter().map(|(ns, _)| ns.clone()).collect();
    namespaces.dedup();
    let call = Call::new(
        "GetCoverage",
        "coverage",
        "",
        "looking up the pods that mount the target claims",
    );
    let coverage = session
        .client
        .get_coverage(v1::GetCoverageRequest {
            namespaces,
            default_volumes_to_fs_backup: false,
        })
        .await
        .map_err(|status| session.fail(status, &call))?
        .into_inner();
    let mounted: Vec<String> = coverage
        .claims
        .iter()
        .filter(|claim| !claim.pod.is_empty())
        .filter(|claim| {
            claims
                .iter()
                .any(|(namespace, name)| *namespace == claim.namespace && *name == claim.claim)
        })
        .map(|claim| {
            format!(
                "claim {}/{} is mounted by running pod {}/{}",
                claim.namespace, claim.claim, claim.namespace, claim.pod
            )
        })
        .collect();
    if mounted.is_empty() {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "{}; the restore would change files under the running application. Scale the \
             workload down first, or give --yes to restore into the running pod",
            mounted.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup() -> v1::Backup {
        let volume =
            |pod: &str, name: &str, claim: &str, phase: v1::VolumePhase| v1::PodVolumeBackup {
                volume: Some(v1::PodVolumeRef {
                    namespace: "shop".into(),
                    pod_name: pod.into(),
                    volume_name: name.into(),
                    pvc_name: claim.into(),
                    ..Default::default()
                }),
                phase: phase as i32,
                ..Default::default()
            };
        v1::Backup {
            status: Some(v1::BackupStatus {
                volumes: vec![
                    volume("db-0", "data", "data-db-0", v1::VolumePhase::Completed),
                    volume("db-0", "cache", "", v1::VolumePhase::Completed),
                    volume("db-1", "data", "data-db-1", v1::VolumePhase::Failed),
                ],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn targets_are_the_selected_volumes_claims_after_mapping_or_the_given_claim() {
        let mapping = BTreeMap::from([("shop".to_string(), "shop-copy".to_string())]);
        assert_eq!(
            target_claims(&backup(), &[], &[], &mapping, None),
            [("shop-copy".to_string(), "data-db-0".to_string())]
        );
        assert_eq!(
            target_claims(
                &backup(),
                &["shop/db-1/data".to_string()],
                &[],
                &BTreeMap::new(),
                None
            ),
            [("shop".to_string(), "data-db-1".to_string())]
        );
        assert_eq!(
            target_claims(&backup(), &[], &[], &mapping, Some("other/scratch")),
            [("other".to_string(), "scratch".to_string())]
        );
    }

    #[test]
    fn data_only_flags_without_data_only_are_refused_by_name() {
        let error = check_flags(
            false,
            &["a/b/c".into()],
            None,
            Some(OverwritePolicy::Replace),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "--volumes, --overwrite-policy only apply with --data-only"
        );
        assert!(check_flags(true, &["a/b/c".into()], Some("a/b"), None).is_ok());
        assert!(check_flags(false, &[], None, None).is_ok());
    }

    #[test]
    fn as_of_reads_rfc_3339_with_offsets_and_names_a_bad_time() {
        assert_eq!(
            parse_as_of("2024-05-01T12:00:00Z").unwrap().seconds,
            1714564800
        );
        assert_eq!(
            parse_as_of("2024-05-01T14:00:00+02:00").unwrap().seconds,
            1714564800
        );
        let error = parse_as_of("yesterday").unwrap_err();
        assert!(
            error.starts_with("`yesterday` is not an RFC 3339 time"),
            "{error}"
        );
    }
}
