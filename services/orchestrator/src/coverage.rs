//! What the coverage call reports for one namespace: every pod volume a backup would take or
//! skip (with the reason), and every PersistentVolumeClaim, mounted or not, with the running pod
//! whose annotation has it backed up or the reason none does. Pure over the namespace's pods
//! and claims, so it is judged exactly as a backup would judge them (selection.rs).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use stowage_proto::v1::{ClaimCoverage, SkipReason, SkippedVolume};

use crate::selection::{VolumeKind, claim_skip, pod_is_running, select_volumes};

#[derive(Debug, Default, Clone, PartialEq)]
pub struct NamespaceCoverage {
    pub volumes_total: u32,
    pub volumes_covered: u32,
    pub uncovered: Vec<SkippedVolume>,
    pub claims: Vec<ClaimCoverage>,
}

/// Coverage of `namespace` given its `pods` and `claims`, judged in opt-out mode when
/// `default_volumes_to_fs_backup`.
pub fn namespace_coverage(
    namespace: &str,
    pods: &[Pod],
    claims: &[PersistentVolumeClaim],
    default_volumes_to_fs_backup: bool,
) -> NamespaceCoverage {
    let by_name: BTreeMap<&str, &PersistentVolumeClaim> = claims
        .iter()
        .filter_map(|claim| Some((claim.metadata.name.as_deref()?, claim)))
        .collect();
    let mut coverage = NamespaceCoverage::default();
    // What running pods say of each claim: the first pod that has it backed up wins over any
    // that only mounts it.
    let mut seen: BTreeMap<String, ClaimCoverage> = BTreeMap::new();
    let mut note = |claim: &str, found: ClaimCoverage| {
        let keep = seen
            .get(claim)
            .is_some_and(|known| known.covered || !found.covered);
        if !keep {
            seen.insert(claim.to_string(), found);
        }
    };
    let mut uncovered = |pod: &str, volume: &str, reason: SkipReason, detail: String| {
        coverage.uncovered.push(SkippedVolume {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            volume: volume.to_string(),
            reason: reason as i32,
            detail,
        });
    };
    let mut covered = 0;
    let mut total = 0;
    for pod in pods {
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let volumes = pod
            .spec
            .as_ref()
            .and_then(|spec| spec.volumes.as_deref())
            .unwrap_or_default();
        total += volumes.len() as u32;
        let claim_of = |volume: &str| {
            volumes
                .iter()
                .find(|candidate| candidate.name == volume)
                .and_then(|candidate| candidate.persistent_volume_claim.as_ref())
                .map(|claim| claim.claim_name.clone())
        };
        let running = pod_is_running(pod);
        let selection = select_volumes(pod, default_volumes_to_fs_backup);
        for selected in selection.selected {
            if let VolumeKind::PersistentVolumeClaim { claim_name } = &selected.kind {
                if let Some((reason, detail)) =
                    claim_skip(claim_name, by_name.get(claim_name.as_str()).copied())
                {
                    note(
                        claim_name,
                        ClaimCoverage {
                            covered: false,
                            pod: pod_name.clone(),
                            volume: selected.name.clone(),
                            reason: reason as i32,
                            detail: detail.clone(),
                            ..Default::default()
                        },
                    );
                    uncovered(&pod_name, &selected.name, reason, detail);
                    continue;
                }
                note(
                    claim_name,
                    ClaimCoverage {
                        covered: true,
                        pod: pod_name.clone(),
                        volume: selected.name.clone(),
                        ..Default::default()
                    },
                );
            }
            covered += 1;
        }
        for skipped in selection.skipped {
            if let Some(claim_name) = claim_of(&skipped.volume).filter(|_| running) {
                note(
                    &claim_name,
                    ClaimCoverage {
                        covered: false,
                        pod: pod_name.clone(),
                        volume: skipped.volume.clone(),
                        reason: skipped.reason as i32,
                        detail: skipped.detail.clone(),
                        ..Default::default()
                    },
                );
            }
            uncovered(&pod_name, &skipped.volume, skipped.reason, skipped.detail);
        }
    }
    coverage.volumes_covered = covered;
    coverage.volumes_total = total;
    for (name, claim) in by_name {
        let by_pod = seen.remove(name);
        let mut state = match claim_skip(name, Some(claim)) {
            // The claim itself cannot be read as files, whoever mounts it.
            Some((reason, detail)) => ClaimCoverage {
                covered: false,
                reason: reason as i32,
                detail,
                ..by_pod.unwrap_or_default()
            },
            None => by_pod.unwrap_or_else(|| ClaimCoverage {
                reason: SkipReason::NotMounted as i32,
                detail: format!("no running pod mounts PVC {name}"),
                ..Default::default()
            }),
        };
        state.namespace = namespace.to_string();
        state.claim = name.to_string();
        coverage.claims.push(state);
    }
    coverage
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selection::BACKUP_VOLUMES;
    use serde_json::json;

    fn pod(name: &str, annotated: &str, phase: &str, claims: &[(&str, &str)]) -> Pod {
        let volumes: Vec<_> = claims
            .iter()
            .map(|(volume, claim)| json!({"name": volume, "persistentVolumeClaim": {"claimName": claim}}))
            .chain([json!({"name": "cache", "emptyDir": {}})])
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "foo", "annotations": {BACKUP_VOLUMES: annotated}},
            "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "busybox"}], "volumes": volumes},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    fn claim(name: &str, spec: serde_json::Value) -> PersistentVolumeClaim {
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "foo"}, "spec": spec}),
        )
        .unwrap()
    }

    fn bound(name: &str) -> PersistentVolumeClaim {
        claim(name, json!({"volumeName": format!("pv-{name}")}))
    }

    /// (claim, covered, pod, reason) of every claim.
    fn states(coverage: &NamespaceCoverage) -> Vec<(&str, bool, &str, SkipReason)> {
        coverage
            .claims
            .iter()
            .map(|claim| {
                (
                    claim.claim.as_str(),
                    claim.covered,
                    claim.pod.as_str(),
                    SkipReason::try_from(claim.reason).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn every_claim_is_listed_with_its_state() {
        let pods = [
            pod(
                "web",
                "data,raw,pending",
                "Running",
                &[("data", "web-data"), ("raw", "raw"), ("pending", "pending")],
            ),
            pod("db", "", "Running", &[("db", "db-data")]),
            pod("batch", "work", "Succeeded", &[("work", "work")]),
        ];
        let claims = [
            bound("web-data"),
            claim(
                "raw",
                json!({"volumeMode": "Block", "volumeName": "pv-raw"}),
            ),
            claim("pending", json!({"volumeMode": "Filesystem"})),
            bound("db-data"),
            bound("work"),
            bound("orphan"),
        ];
        let coverage = namespace_coverage("foo", &pods, &claims, false);
        assert_eq!(
            states(&coverage),
            vec![
                ("db-data", false, "db", SkipReason::NotAnnotated),
                ("orphan", false, "", SkipReason::NotMounted),
                ("pending", false, "web", SkipReason::PvcNotBound),
                ("raw", false, "web", SkipReason::BlockMode),
                ("web-data", true, "web", SkipReason::Unspecified),
                ("work", false, "", SkipReason::NotMounted),
            ]
        );
        let web = coverage
            .claims
            .iter()
            .find(|c| c.claim == "web-data")
            .unwrap();
        assert_eq!(
            (web.namespace.as_str(), web.volume.as_str()),
            ("foo", "data")
        );
        let raw = coverage.claims.iter().find(|c| c.claim == "raw").unwrap();
        assert!(raw.detail.contains("volumeMode Block"), "{}", raw.detail);

        // A block-mode or unbound claim is no covered volume, and the volume says why.
        assert_eq!(coverage.volumes_covered, 1);
        assert_eq!(coverage.volumes_total, 8);
        let reason_of = |volume: &str| {
            coverage
                .uncovered
                .iter()
                .find(|skip| skip.pod == "web" && skip.volume == volume)
                .map(|skip| SkipReason::try_from(skip.reason).unwrap())
        };
        assert_eq!(reason_of("raw"), Some(SkipReason::BlockMode));
        assert_eq!(reason_of("pending"), Some(SkipReason::PvcNotBound));
        assert_eq!(reason_of("data"), None);
    }

    #[test]
    fn a_claim_backed_up_by_one_pod_is_covered_whoever_else_mounts_it() {
        let pods = [
            pod("reader", "", "Running", &[("shared", "shared")]),
            pod("writer", "shared", "Running", &[("shared", "shared")]),
        ];
        let coverage = namespace_coverage("foo", &pods, &[bound("shared")], false);
        assert_eq!(
            states(&coverage),
            vec![("shared", true, "writer", SkipReason::Unspecified)]
        );
        // Opt-out mode takes it through the first pod already.
        let coverage = namespace_coverage("foo", &pods, &[bound("shared")], true);
        assert_eq!(
            states(&coverage),
            vec![("shared", true, "reader", SkipReason::Unspecified)]
        );
    }
}
