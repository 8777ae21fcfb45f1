//! The one stable-identity rule: what names a pod volume across pod recreation, so a backup of
//! a recreated pod finds its parent snapshot (the latest one tagged with the same identity in
//! the namespace's repository).
//!
//! - a volume of a PersistentVolumeClaim whose uid is known: `pvc-uid/<claim uid>`;
//! - any other volume of a pod with a controller: `<kind>/<name>/<volume>`, where a ReplicaSet
//!   that belongs to a Deployment is named by the Deployment (`Deployment/web/cache`), so a
//!   rollout keeps the chain;
//! - a volume of a pod without a controller, or one whose owner the caller cannot know (the
//!   agent given no identity): `Pod/<pod>/<volume>`.
//!
//! The namespace is not part of it: every namespace has its own repository. These are the
//! identities the orchestrator has always sent, so existing repositories keep their parents.
//! The agent's own fallback for a request without an identity used to build `pvc/<ns>/<claim>`
//! and `pod/<ns>/<pod>/<volume>`; such snapshots (only written for callers other than the
//! orchestrator) start one new chain, a full backup, not a failure.

use std::fmt;

use crate::{ContractError, error::shown};

/// The prefix of a claim's identity.
const PVC_UID_PREFIX: &str = "pvc-uid";
/// The kind of an identity built from the pod itself.
const POD_KIND: &str = "Pod";

/// A pod volume's identity across pod recreation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StableIdentity {
    /// A PersistentVolumeClaim's volume, by the claim's uid.
    Claim { uid: String },
    /// A volume of a pod with a controller (Deployment, StatefulSet, DaemonSet, Job…).
    Owned {
        kind: String,
        name: String,
        volume: String,
    },
    /// A volume of a pod without a controller.
    Pod { pod: String, volume: String },
}

impl StableIdentity {
    pub fn claim(uid: impl Into<String>) -> StableIdentity {
        StableIdentity::Claim { uid: uid.into() }
    }

    /// The identity of `volume` in a pod whose controller is `kind`/`name`; a `Pod` kind is the
    /// same as [`Self::pod`].
    pub fn owned(
        kind: impl Into<String>,
        name: impl Into<String>,
        volume: impl Into<String>,
    ) -> StableIdentity {
        let kind = kind.into();
        if kind == POD_KIND {
            return StableIdentity::pod(name, volume);
        }
        StableIdentity::Owned {
            kind,
            name: name.into(),
            volume: volume.into(),
        }
    }

    pub fn pod(pod: impl Into<String>, volume: impl Into<String>) -> StableIdentity {
        StableIdentity::Pod {
            pod: pod.into(),
            volume: volume.into(),
        }
    }

    /// The identity when the caller knows no owner: the claim's when its uid is given (empty
    /// when not a claim's volume or not known), else the pod's.
    pub fn without_owner(pvc_uid: &str, pod: &str, volume: &str) -> StableIdentity {
        if pvc_uid.is_empty() {
            StableIdentity::pod(pod, volume)
        } else {
            StableIdentity::claim(pvc_uid)
        }
    }

    /// Reads an identity this rule builds; refuses anything else, naming it.
    pub fn parse(value: &str) -> Result<StableIdentity, ContractError> {
        let invalid = |reason| ContractError::InvalidIdentity {
            value: shown(value),
            reason,
        };
        let parts: Vec<&str> = value.split('/').collect();
        if parts.iter().any(|part| part.is_empty()) {
            return Err(invalid("it has an empty part"));
        }
        match parts.as_slice() {
            [PVC_UID_PREFIX, uid] => Ok(StableIdentity::claim(*uid)),
            [kind, name, volume] => Ok(StableIdentity::owned(*kind, *name, *volume)),
            _ => Err(invalid(
                "expected `pvc-uid/<uid>`, `<kind>/<name>/<volume>` or `Pod/<pod>/<volume>`",
            )),
        }
    }
}

impl fmt::Display for StableIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StableIdentity::Claim { uid } => write!(f, "{PVC_UID_PREFIX}/{uid}"),
            StableIdentity::Owned { kind, name, volume } => write!(f, "{kind}/{name}/{volume}"),
            StableIdentity::Pod { pod, volume } => write!(f, "{POD_KIND}/{pod}/{volume}"),
        }
    }
}

/// The Deployment a ReplicaSet belongs to, from its name `<deployment>-<pod-template-hash>`,
/// for when the ReplicaSet itself cannot be read.
pub fn deployment_of_replica_set<'a>(
    replica_set: &'a str,
    pod_template_hash: Option<&str>,
) -> Option<&'a str> {
    match pod_template_hash {
        Some(hash) => replica_set.strip_suffix(&format!("-{hash}")),
        None => replica_set.rsplit_once('-').map(|(name, _)| name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_spelled_as_existing_records_spell_them() {
        // As in the orchestrator's records since the first release: these must not change, or
        // every volume's next backup loses its parent.
        assert_eq!(StableIdentity::claim("4f1c").to_string(), "pvc-uid/4f1c");
        assert_eq!(
            StableIdentity::owned("Deployment", "web", "cache").to_string(),
            "Deployment/web/cache"
        );
        assert_eq!(
            StableIdentity::owned("StatefulSet", "db", "scratch").to_string(),
            "StatefulSet/db/scratch"
        );
        assert_eq!(
            StableIdentity::pod("sample", "data").to_string(),
            "Pod/sample/data"
        );
        assert_eq!(
            StableIdentity::owned("Pod", "sample", "data"),
            StableIdentity::pod("sample", "data")
        );
    }

    #[test]
    fn without_an_owner_a_claim_is_still_its_uid() {
        assert_eq!(
            StableIdentity::without_owner("abc", "db-0", "data").to_string(),
            "pvc-uid/abc"
        );
        assert_eq!(
            StableIdentity::without_owner("", "db-0", "data").to_string(),
            "Pod/db-0/data"
        );
    }

    #[test]
    fn every_identity_reads_back() {
        for identity in [
            StableIdentity::claim("4f1c-aa"),
            StableIdentity::owned("DaemonSet", "log", "buffer"),
            StableIdentity::pod("sample", "data"),
        ] {
            assert_eq!(
                StableIdentity::parse(&identity.to_string()).unwrap(),
                identity
            );
        }
        for bad in ["", "pvc-uid/", "pvc/shop/data-db-0/x", "a/b", "a//b", "x"] {
            let error = StableIdentity::parse(bad).unwrap_err().to_string();
            assert!(error.contains(&format!("`{bad}`")), "{error}");
        }
    }

    #[test]
    fn replica_sets_name_their_deployment() {
        assert_eq!(
            deployment_of_replica_set("web-7d9f8c", Some("7d9f8c")),
            Some("web")
        );
        assert_eq!(
            deployment_of_replica_set("my-web-7d9f8c", None),
            Some("my-web")
        );
        assert_eq!(deployment_of_replica_set("web-1", Some("other")), None);
    }
}
