//! Where each file lives under a backup storage location, as Velero laid it out, plus the one
//! stowage-only file beside them. Keys are relative to the location's root (bucket + prefix).

use crate::error::{FormatError, Result};

/// Top-level directory of the backups.
pub const BACKUPS_DIR: &str = "backups";
/// Top-level directory of the per-namespace restic repositories.
pub const RESTIC_DIR: &str = "restic";
/// Every backup's Velero record.
pub const BACKUP_RECORD_FILE: &str = "velero-backup.json";
/// Top-level directory of the restores (Velero keeps each restore's logs and results there).
pub const RESTORES_DIR: &str = "restores";
/// Every stowage restore's record. Velero writes no record of a restore to the bucket (its
/// Restore lives in the cluster), so this name is stowage's own.
pub const RESTORE_RECORD_FILE: &str = "stowage-restore.json";
/// Top-level directory of the schedules (stowage's own: Velero keeps its Schedules in the
/// cluster, never in the bucket).
pub const SCHEDULES_DIR: &str = "schedules";
/// Every schedule's record.
pub const SCHEDULE_RECORD_FILE: &str = "stowage-schedule.json";

/// `backups/<name>/`
pub fn backup_dir(name: &str) -> String {
    format!("{BACKUPS_DIR}/{name}/")
}

/// `backups/<name>/velero-backup.json`
pub fn backup_record_key(name: &str) -> String {
    format!("{BACKUPS_DIR}/{name}/{BACKUP_RECORD_FILE}")
}

/// `backups/<name>/<name>-podvolumebackups.json.gz`
pub fn pod_volume_backups_key(name: &str) -> String {
    format!("{BACKUPS_DIR}/{name}/{name}-podvolumebackups.json.gz")
}

/// `backups/<name>/<name>.tar.gz`
pub fn resources_key(name: &str) -> String {
    format!("{BACKUPS_DIR}/{name}/{name}.tar.gz")
}

/// `backups/<name>/<name>-resource-list.json.gz`: `{"<apiVersion>/<Kind>": ["<ns>/<name>", ...]}`,
/// what `velero backup describe --details` shows as the resource list.
pub fn resource_list_key(name: &str) -> String {
    format!("{BACKUPS_DIR}/{name}/{name}-resource-list.json.gz")
}

/// `backups/<name>/<name>-logs.gz`
pub fn logs_key(name: &str) -> String {
    format!("{BACKUPS_DIR}/{name}/{name}-logs.gz")
}

/// `backups/<name>/<name>-stowage.json`: stowage's additions (stable identities, key
/// references, progress). Velero never reads it, so its presence does not change what Velero's
/// files mean; its absence marks a backup Velero wrote.
pub fn stowage_info_key(name: &str) -> String {
    format!("{BACKUPS_DIR}/{name}/{name}-stowage.json")
}

/// `restores/<name>/`
pub fn restore_dir(name: &str) -> String {
    format!("{RESTORES_DIR}/{name}/")
}

/// `restores/<name>/stowage-restore.json`: the restore's spec, status and volumes.
pub fn restore_record_key(name: &str) -> String {
    format!("{RESTORES_DIR}/{name}/{RESTORE_RECORD_FILE}")
}

/// `restores/<name>/restore-<name>-logs.gz` (Velero's name).
pub fn restore_logs_key(name: &str) -> String {
    format!("{RESTORES_DIR}/{name}/restore-{name}-logs.gz")
}

/// `restores/<name>/restore-<name>-results.gz` (Velero's name and shape: gzipped
/// `{"errors": {...}, "warnings": {...}}`).
pub fn restore_results_key(name: &str) -> String {
    format!("{RESTORES_DIR}/{name}/restore-{name}-results.gz")
}

/// `schedules/<name>/stowage-schedule.json`: the schedule's spec and status.
pub fn schedule_record_key(name: &str) -> String {
    format!("{SCHEDULES_DIR}/{name}/{SCHEDULE_RECORD_FILE}")
}

/// `restic/<namespace>`: the key prefix of a namespace's restic repository.
pub fn restic_repository_key(namespace: &str) -> String {
    format!("{RESTIC_DIR}/{namespace}")
}

/// The restic repository URL of `namespace` under a location whose restic base is `base`:
/// a local directory (`/data/loc` → `/data/loc/restic/foo`) or a restic S3 URL
/// (`s3:http://host:9000/bucket/prefix` → `s3:http://host:9000/bucket/prefix/restic/foo`).
pub fn restic_repository_url(base: &str, namespace: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        restic_repository_key(namespace)
    )
}

/// The object-store kind behind a Velero backup storage location, as far as the restic
/// repository URL goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VeleroBackend<'a> {
    /// AWS or S3-compatible: `endpoint` is the location's `s3Url` (e.g. `http://minio:9000`)
    /// or, on AWS, `s3-<region>.amazonaws.com`.
    S3 {
        endpoint: &'a str,
    },
    Azure,
    Gcp,
}

/// The `repoIdentifier` Velero gave namespace `namespace`'s restic repository in a location
/// with `bucket` and `prefix` (the restic-era rule, for locations without `resticRepoPrefix`):
/// `s3:<endpoint>/<bucket>[/<prefix>]/restic/<ns>`, `azure:<container>:/[<prefix>/]restic/<ns>`,
/// `gs:<bucket>:/[<prefix>/]restic/<ns>`.
pub fn velero_repo_identifier(
    backend: VeleroBackend<'_>,
    bucket: &str,
    prefix: &str,
    namespace: &str,
) -> String {
    let prefix = prefix.trim_matches('/');
    let restic_dir = if prefix.is_empty() {
        RESTIC_DIR.to_string()
    } else {
        format!("{prefix}/{RESTIC_DIR}")
    };
    match backend {
        VeleroBackend::S3 { endpoint } => format!(
            "s3:{}/{bucket}/{restic_dir}/{namespace}",
            endpoint.trim_end_matches('/')
        ),
        VeleroBackend::Azure => format!("azure:{bucket}:/{restic_dir}/{namespace}"),
        VeleroBackend::Gcp => format!("gs:{bucket}:/{restic_dir}/{namespace}"),
    }
}

/// The namespace a restic repository URL belongs to under this layout (its last segment after
/// `/restic/`), whatever endpoint it names: a Velero PodVolumeBackup's `repoIdentifier` may
/// name an in-cluster endpoint that is not reachable from where stowage runs, so the
/// repository is found again by namespace under stowage's own view of the location.
pub fn namespace_of_repo_identifier(identifier: &str) -> Option<&str> {
    let marker = format!("/{RESTIC_DIR}/");
    let start = identifier.rfind(&marker)? + marker.len();
    let namespace = identifier[start..].trim_end_matches('/');
    (!namespace.is_empty() && !namespace.contains('/')).then_some(namespace)
}

/// If `key` is `backups/<name>/velero-backup.json`, the backup name.
pub fn backup_name_from_record_key(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(BACKUPS_DIR)?.strip_prefix('/')?;
    let name = rest.strip_suffix(BACKUP_RECORD_FILE)?.strip_suffix('/')?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// Checks `name` is a Kubernetes object name (DNS-1123 subdomain) as Velero requires, which
/// also makes it a safe single key segment.
pub fn validate_backup_name(name: &str) -> Result<()> {
    match subdomain_problem(name) {
        None => Ok(()),
        Some(reason) => Err(FormatError::InvalidName {
            name: name.to_string(),
            reason,
        }),
    }
}

/// The same rule for a restore's name (the key segment under `restores/`).
pub fn validate_restore_name(name: &str) -> Result<()> {
    match subdomain_problem(name) {
        None => Ok(()),
        Some(reason) => Err(FormatError::InvalidRestoreName {
            name: name.to_string(),
            reason,
        }),
    }
}

/// The same rule for a schedule's name (the key segment under `schedules/`).
pub fn validate_schedule_name(name: &str) -> Result<()> {
    match subdomain_problem(name) {
        None => Ok(()),
        Some(reason) => Err(FormatError::InvalidName {
            name: name.to_string(),
            reason,
        }),
    }
}

/// If `restores/<name>/stowage-restore.json`, the restore name.
pub fn restore_name_from_record_key(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(RESTORES_DIR)?.strip_prefix('/')?;
    let name = rest.strip_suffix(RESTORE_RECORD_FILE)?.strip_suffix('/')?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// Why `name` is not a DNS-1123 subdomain, if it is not.
fn subdomain_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("empty");
    }
    if name.len() > 253 {
        return Some("longer than 253 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Some("only lowercase letters, digits, '-' and '.' are allowed");
    }
    let first = name.as_bytes()[0];
    let last = name.as_bytes()[name.len() - 1];
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return Some("must start and end with a letter or digit");
    }
    if name.split('.').any(str::is_empty) {
        return Some("empty label between dots");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_velero_layout() {
        assert_eq!(backup_record_key("b1"), "backups/b1/velero-backup.json");
        assert_eq!(
            pod_volume_backups_key("b1"),
            "backups/b1/b1-podvolumebackups.json.gz"
        );
        assert_eq!(resources_key("b1"), "backups/b1/b1.tar.gz");
        assert_eq!(logs_key("b1"), "backups/b1/b1-logs.gz");
        assert_eq!(
            resource_list_key("b1"),
            "backups/b1/b1-resource-list.json.gz"
        );
        assert_eq!(stowage_info_key("b1"), "backups/b1/b1-stowage.json");
        assert_eq!(restic_repository_key("foo"), "restic/foo");
        assert_eq!(backup_dir("b1"), "backups/b1/");
    }

    #[test]
    fn restore_keys_follow_velero_layout() {
        assert_eq!(restore_dir("r1"), "restores/r1/");
        assert_eq!(restore_record_key("r1"), "restores/r1/stowage-restore.json");
        assert_eq!(restore_logs_key("r1"), "restores/r1/restore-r1-logs.gz");
        assert_eq!(
            restore_results_key("r1"),
            "restores/r1/restore-r1-results.gz"
        );
    }

    #[test]
    fn restic_urls_join_under_the_location() {
        assert_eq!(
            restic_repository_url("/data/loc/", "foo"),
            "/data/loc/restic/foo"
        );
        assert_eq!(
            restic_repository_url("s3:http://127.0.0.1:9000/bucket/pre", "bar"),
            "s3:http://127.0.0.1:9000/bucket/pre/restic/bar"
        );
    }

    #[test]
    fn velero_repo_identifiers_follow_the_restic_era_rule() {
        let aws = VeleroBackend::S3 {
            endpoint: "s3-eu-west-1.amazonaws.com",
        };
        assert_eq!(
            velero_repo_identifier(aws, "backups-bucket", "", "foo"),
            "s3:s3-eu-west-1.amazonaws.com/backups-bucket/restic/foo"
        );
        let minio = VeleroBackend::S3 {
            endpoint: "http://minio.velero.svc:9000/",
        };
        assert_eq!(
            velero_repo_identifier(minio, "velero", "/cluster-a/", "bar"),
            "s3:http://minio.velero.svc:9000/velero/cluster-a/restic/bar"
        );
        assert_eq!(
            velero_repo_identifier(VeleroBackend::Azure, "container", "pre", "foo"),
            "azure:container:/pre/restic/foo"
        );
        assert_eq!(
            velero_repo_identifier(VeleroBackend::Gcp, "bucket", "", "foo"),
            "gs:bucket:/restic/foo"
        );
    }

    #[test]
    fn namespaces_come_back_out_of_repo_identifiers() {
        for (identifier, namespace) in [
            (
                "s3:http://minio.velero.svc:9000/velero/cluster-a/restic/bar",
                Some("bar"),
            ),
            ("s3:s3-eu-west-1.amazonaws.com/b/restic/foo/", Some("foo")),
            ("azure:container:/pre/restic/foo", Some("foo")),
            ("gs:bucket:/restic/kube-system", Some("kube-system")),
            ("/data/location/restic/foo", Some("foo")),
            ("/data/restic/", None),
            ("s3:host/bucket/other/foo", None),
            ("/data/restic/foo/extra", None),
        ] {
            assert_eq!(
                namespace_of_repo_identifier(identifier),
                namespace,
                "{identifier}"
            );
        }
    }

    #[test]
    fn record_keys_give_back_the_backup_name() {
        assert_eq!(
            backup_name_from_record_key("backups/b1/velero-backup.json"),
            Some("b1")
        );
        assert_eq!(backup_name_from_record_key("backups/b1/b1.tar.gz"), None);
        assert_eq!(
            backup_name_from_record_key("backups/a/b/velero-backup.json"),
            None
        );
        assert_eq!(
            backup_name_from_record_key("backups//velero-backup.json"),
            None
        );
        assert_eq!(
            backup_name_from_record_key("restic/velero-backup.json"),
            None
        );
    }

    #[test]
    fn restore_names_follow_the_same_rule_and_are_named_as_restores() {
        assert!(validate_restore_name("nightly-20260101").is_ok());
        let error = validate_restore_name("../x").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("invalid restore name \"../x\""),
            "{error}"
        );
        assert_eq!(
            restore_name_from_record_key("restores/r1/stowage-restore.json"),
            Some("r1")
        );
        assert_eq!(
            restore_name_from_record_key("restores/r1/restore-r1-logs.gz"),
            None
        );
        assert_eq!(
            restore_name_from_record_key("backups/r1/stowage-restore.json"),
            None
        );
    }

    #[test]
    fn backup_names_must_be_dns_subdomains() {
        for good in ["b1", "nightly-20220301", "a.b-c", "0"] {
            assert!(validate_backup_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "B1",
            "-a",
            "a-",
            "a/b",
            "..",
            "a..b",
            "a_b",
            &"x".repeat(254),
        ] {
            let error = validate_backup_name(bad).unwrap_err();
            assert!(matches!(error, FormatError::InvalidName { .. }), "{bad}");
        }
    }
}
