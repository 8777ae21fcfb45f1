//! The restic snapshot tags (`--tag key=value`) stowage writes and reads, and the Velero labels
//! and annotations of the mirrored objects. Velero's keys come first so tools that read Velero's
//! snapshots read ours; `stable-identity` is what a backup's parent is found by. restic splits
//! `--tag` on `,`, so no tag may hold one.

use std::collections::BTreeMap;

use crate::{ContractError, error::shown};

/// Snapshot tag keys.
pub const BACKUP: &str = "backup";
pub const BACKUP_UID: &str = "backup-uid";
/// Velero's namespace key.
pub const NS: &str = "ns";
/// The namespace again under its full name, for people filtering `restic snapshots`.
pub const NAMESPACE: &str = "namespace";
pub const POD: &str = "pod";
pub const POD_UID: &str = "pod-uid";
pub const VOLUME: &str = "volume";
pub const PVC: &str = "pvc";
pub const PV: &str = "pv";
/// Velero's key for the claim's uid (also on the PodVolumeBackup's `spec.tags`).
pub const PVC_UID: &str = "pvc-uid";
/// The volume's [`crate::identity::StableIdentity`]; the parent of a backup is the latest
/// snapshot with the same one.
pub const STABLE_IDENTITY: &str = "stable-identity";

/// Labels and annotations Velero puts on its objects, which ours carry as well.
pub mod labels {
    /// On PodVolumeBackups (and PodVolumeRestores of a backup): the Backup's name.
    pub const BACKUP_NAME: &str = "velero.io/backup-name";
    pub const BACKUP_UID: &str = "velero.io/backup-uid";
    /// On PodVolumeRestores: the Restore's name and uid.
    pub const RESTORE_NAME: &str = "velero.io/restore-name";
    pub const RESTORE_UID: &str = "velero.io/restore-uid";
    /// On PodVolumeBackups of a PVC's volume: the claim's uid.
    pub const PVC_UID: &str = "velero.io/pvc-uid";
    /// Annotation on PodVolumeBackups of a PVC's volume: the claim's name.
    pub const PVC_NAME: &str = "velero.io/pvc-name";
    /// On ResticRepositories: the namespace whose volumes the repository holds.
    pub const VOLUME_NAMESPACE: &str = "velero.io/volume-namespace";
    /// On ResticRepositories: the backup storage location's name.
    pub const STORAGE_LOCATION: &str = "velero.io/storage-location";
}

/// Annotations stowage itself reads.
pub mod annotations {
    /// On a pod: paths left out of its volumes' backups, `<volume>:<glob>,…` (see
    /// [`crate::paths`]); a pattern without `<volume>:` applies to each of the pod's volumes.
    pub const EXCLUDE_PATHS: &str = "backup.stowage.io/exclude-paths";
}

/// `key=value`, refused when restic could not store it as one tag.
pub fn tag(key: &str, value: &str) -> Result<String, ContractError> {
    let tag = format!("{key}={value}");
    let reason = if key.is_empty() {
        Some("the key is empty")
    } else if key.contains('=') {
        Some("keys may not hold `=`")
    } else if tag.contains(',') {
        Some("restic splits tags on `,`")
    } else if tag.chars().any(char::is_control) {
        Some("tags may not hold control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ContractError::InvalidTag {
            tag: shown(&tag),
            reason,
        }),
        None => Ok(tag),
    }
}

/// The tags of `pairs` in their order, those with an empty value left out (restic keeps no
/// empty value, and a filter on one would match nothing).
pub fn build<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<String>, ContractError> {
    pairs
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(key, value)| tag(key, value))
        .collect()
}

/// The key and value of one `key=value` tag (split at the first `=`); `None` for a tag
/// without one, which stowage never writes.
pub fn parse(tag: &str) -> Option<(&str, &str)> {
    tag.split_once('=').filter(|(key, _)| !key.is_empty())
}

/// Every `key=value` tag of a snapshot by key; tags of another shape are left out.
pub fn parse_all<'a>(tags: impl IntoIterator<Item = &'a String>) -> BTreeMap<String, String> {
    tags.into_iter()
        .filter_map(|tag| parse(tag))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

/// The tag a backup's parent is looked up by (`restic snapshots --tag …`).
pub fn identity_filter(identity: &str) -> Result<String, ContractError> {
    tag(STABLE_IDENTITY, identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_keep_their_order_and_drop_empty_values() {
        let tags = build([
            (BACKUP, "nightly"),
            (NS, "shop"),
            (PVC, ""),
            (STABLE_IDENTITY, "pvc-uid/abc"),
        ])
        .unwrap();
        assert_eq!(
            tags,
            ["backup=nightly", "ns=shop", "stable-identity=pvc-uid/abc"]
        );
        let parsed = parse_all(&tags);
        assert_eq!(parsed[STABLE_IDENTITY], "pvc-uid/abc");
        assert_eq!(parsed.len(), 3);
    }

    #[test]
    fn tags_restic_would_misread_are_refused_naming_them() {
        let error = tag(PVC, "a,b").unwrap_err().to_string();
        assert_eq!(
            error,
            "snapshot tag `pvc=a,b` cannot be stored: restic splits tags on `,`"
        );
        assert!(tag("a=b", "c").is_err());
        assert!(tag("", "c").is_err());
        assert!(tag("k", "a\0b").unwrap_err().to_string().contains("\\0"));
        assert!(identity_filter("pvc/a,b").is_err());
        assert_eq!(
            identity_filter("pvc-uid/1").unwrap(),
            "stable-identity=pvc-uid/1"
        );
    }

    #[test]
    fn a_value_may_hold_an_equals_sign() {
        assert_eq!(parse("note=a=b"), Some(("note", "a=b")));
        assert_eq!(parse("bare"), None);
        assert_eq!(parse("=x"), None);
    }
}
