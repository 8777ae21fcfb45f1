//! Joins a backup's PodVolumeBackups with the pods, PVCs and PVs of its tarball: for each
//! backed-up volume, everything a restore or a `describe --details` needs, whoever wrote the
//! backup.

use serde_json::Value;

use crate::pod_volume_backup::{PodVolumeBackup, PodVolumeBackupPhase};
use crate::resources::{BackupResources, PERSISTENT_VOLUME_CLAIMS, PODS};
use crate::store::BackupFiles;

/// One backed-up pod volume.
#[derive(Debug, Clone, PartialEq)]
pub struct BackedUpVolume {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub volume: String,
    pub node: String,
    pub phase: Option<PodVolumeBackupPhase>,
    /// The restic snapshot; `None` when the volume failed.
    pub snapshot_id: Option<String>,
    pub repo_identifier: String,
    /// The claim the pod mounted as this volume, from the pod in the tarball.
    pub pvc: Option<String>,
    /// The PV the claim was bound to, from the PVC in the tarball.
    pub pv: Option<String>,
    pub bytes_done: u64,
    pub total_bytes: u64,
    pub message: String,
}

/// The claim name of volume `volume` in a pod manifest.
pub fn claim_of_pod_volume(pod: &Value, volume: &str) -> Option<String> {
    pod.pointer("/spec/volumes")?
        .as_array()?
        .iter()
        .find(|entry| entry.get("name").and_then(Value::as_str) == Some(volume))?
        .pointer("/persistentVolumeClaim/claimName")?
        .as_str()
        .map(str::to_string)
}

/// The volumes a pod manifest asks Velero to back up (`backup.velero.io/backup-volumes`).
pub fn annotated_backup_volumes(pod: &Value) -> Vec<String> {
    pod.pointer("/metadata/annotations/backup.velero.io~1backup-volumes")
        .and_then(Value::as_str)
        .map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn backed_up_volume(pvb: &PodVolumeBackup, resources: Option<&BackupResources>) -> BackedUpVolume {
    let namespace = pvb.pod_namespace().to_string();
    let pvc = resources
        .and_then(|resources| resources.get(PODS, Some(&namespace), &pvb.spec.pod.name))
        .and_then(|pod| claim_of_pod_volume(pod, &pvb.spec.volume));
    let pv = pvc.as_deref().and_then(|claim| {
        resources?
            .get(PERSISTENT_VOLUME_CLAIMS, Some(&namespace), claim)?
            .pointer("/spec/volumeName")?
            .as_str()
            .filter(|name| !name.is_empty())
            .map(str::to_string)
    });
    let progress = pvb.status.progress.clone().unwrap_or_default();
    BackedUpVolume {
        namespace,
        pod: pvb.spec.pod.name.clone(),
        pod_uid: pvb.spec.pod.uid.clone(),
        volume: pvb.spec.volume.clone(),
        node: pvb.spec.node.clone(),
        phase: pvb.status.phase.clone(),
        snapshot_id: pvb.snapshot_id().map(str::to_string),
        repo_identifier: pvb.spec.repo_identifier.clone(),
        pvc,
        pv,
        bytes_done: progress.bytes_done,
        total_bytes: progress.total_bytes,
        message: pvb.status.message.clone(),
    }
}

impl BackupFiles {
    /// Every backed-up volume, in PodVolumeBackup order, with its claim and PV resolved from
    /// the tarball when it is there.
    pub fn volumes(&self) -> Vec<BackedUpVolume> {
        self.pod_volume_backups
            .iter()
            .map(|pvb| backed_up_volume(pvb, self.resources.as_ref()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::Backup;
    use serde_json::json;

    fn files() -> BackupFiles {
        let mut resources = BackupResources::new();
        resources
            .insert_object(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "sample", "namespace": "foo",
                  "annotations": {"backup.velero.io/backup-volumes": "pvc-volume, emptydir-volume"}},
                "spec": {"volumes": [
                  {"name": "pvc-volume", "persistentVolumeClaim": {"claimName": "sample-pvc"}},
                  {"name": "emptydir-volume", "emptyDir": {}}]}}))
            .unwrap();
        resources
            .insert_object(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "sample-pvc", "namespace": "foo"},
                "spec": {"volumeName": "pv-sample"}}))
            .unwrap();
        let pvb = |volume: &str, snapshot: &str| {
            let mut pvb = PodVolumeBackup::new(format!("b-{volume}"), "velero");
            pvb.spec.pod.namespace = "foo".into();
            pvb.spec.pod.name = "sample".into();
            pvb.spec.volume = volume.into();
            pvb.spec.node = "node-1".into();
            pvb.status.snapshot_id = snapshot.into();
            pvb
        };
        BackupFiles {
            backup: Backup::new("b", "velero"),
            pod_volume_backups: vec![pvb("pvc-volume", "aaaa1111"), pvb("emptydir-volume", "")],
            resources: Some(resources),
            logs: None,
            stowage: None,
        }
    }

    #[test]
    fn volumes_resolve_claim_and_pv_from_the_tarball() {
        let volumes = files().volumes();
        assert_eq!(volumes.len(), 2);
        assert_eq!(volumes[0].pvc.as_deref(), Some("sample-pvc"));
        assert_eq!(volumes[0].pv.as_deref(), Some("pv-sample"));
        assert_eq!(volumes[0].snapshot_id.as_deref(), Some("aaaa1111"));
        assert_eq!(volumes[1].pvc, None);
        assert_eq!(volumes[1].pv, None);
        assert_eq!(volumes[1].snapshot_id, None);
        assert_eq!(volumes[1].node, "node-1");
    }

    #[test]
    fn without_a_tarball_claims_are_unknown() {
        let mut files = files();
        files.resources = None;
        let volumes = files.volumes();
        assert!(
            volumes
                .iter()
                .all(|volume| volume.pvc.is_none() && volume.pv.is_none())
        );
    }

    #[test]
    fn annotation_lists_are_trimmed() {
        let files = files();
        let pod = files
            .resources
            .as_ref()
            .unwrap()
            .get(PODS, Some("foo"), "sample")
            .unwrap();
        assert_eq!(
            annotated_backup_volumes(pod),
            ["pvc-volume", "emptydir-volume"]
        );
        assert!(annotated_backup_volumes(&json!({"metadata": {}})).is_empty());
    }
}
