//! The typed objects against the shipped CRDs: a fully filled object of each type must pass its
//! CRD's `openAPIV3Schema` (types, formats, required fields, no field the schema does not know:
//! an API server prunes those silently), and every field the CRD declares must be written by
//! the type (a CRD field the type lacks is a field stowage can never fill).

use serde_json::{Value, json};

use super::*;

const PVB_CRD: &str =
    include_str!("../../../../deploy/kustomize/base/crds/podvolumebackups.velero.io.yaml");
const PVR_CRD: &str =
    include_str!("../../../../deploy/kustomize/base/crds/podvolumerestores.velero.io.yaml");
const REPO_CRD: &str =
    include_str!("../../../../deploy/kustomize/base/crds/resticrepositories.velero.io.yaml");

fn crd(text: &str) -> Value {
    serde_yaml::from_str(text).expect("the CRD is YAML")
}

fn schema(crd: &Value) -> &Value {
    crd.pointer("/spec/versions/0/schema/openAPIV3Schema")
        .expect("the CRD has a schema")
}

/// The errors of `value` against `schema`, the subset of OpenAPI v3 the shipped CRDs use, read
/// as the API server reads it.
fn validate(schema: &Value, value: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() {
        if schema["nullable"] != json!(true) {
            errors.push(format!("{path}: null in a field that is not nullable"));
        }
        return;
    }
    match schema["type"].as_str() {
        Some("object") => {
            let Some(object) = value.as_object() else {
                errors.push(format!("{path}: expected an object, got {value}"));
                return;
            };
            for required in schema["required"].as_array().into_iter().flatten() {
                let required = required.as_str().unwrap();
                if !object.contains_key(required) {
                    errors.push(format!("{path}: required field `{required}` is missing"));
                }
            }
            let properties = schema["properties"].as_object();
            let additional = schema.get("additionalProperties");
            if properties.is_none() && additional.is_none() {
                // `type: object` alone (metadata): the API server checks it by its own rules.
                return;
            }
            for (key, field) in object {
                let field_path = format!("{path}.{key}");
                match (properties.and_then(|p| p.get(key)), additional) {
                    (Some(field_schema), _) | (None, Some(field_schema)) => {
                        validate(field_schema, field, &field_path, errors)
                    }
                    (None, None) => errors.push(format!(
                        "{field_path}: not in the CRD (the API server would prune it)"
                    )),
                }
            }
        }
        Some("string") => match value.as_str() {
            None => errors.push(format!("{path}: expected a string, got {value}")),
            Some(text) if schema["format"] == json!("date-time") => {
                let looks_like_rfc3339 = text.len() >= 20
                    && text.as_bytes()[10] == b'T'
                    && (text.ends_with('Z') || text[19..].contains(['+', '-']));
                if !looks_like_rfc3339 {
                    errors.push(format!("{path}: `{text}` is not an RFC 3339 date-time"));
                }
            }
            Some(text) => {
                let min = schema["minLength"].as_u64().unwrap_or(0);
                if (text.chars().count() as u64) < min {
                    errors.push(format!("{path}: `{text}` is shorter than {min}"));
                }
            }
        },
        Some("array") => match value.as_array() {
            None => errors.push(format!("{path}: expected an array, got {value}")),
            Some(items) => {
                for (index, item) in items.iter().enumerate() {
                    validate(&schema["items"], item, &format!("{path}[{index}]"), errors);
                }
            }
        },
        Some("integer") => {
            if value.as_i64().is_none() {
                errors.push(format!("{path}: expected an int64, got {value}"));
            }
        }
        Some("boolean") => {
            if !value.is_boolean() {
                errors.push(format!("{path}: expected a boolean, got {value}"));
            }
        }
        other => errors.push(format!("{path}: schema type {other:?} not checked here")),
    }
}

/// Every property path the schema declares below `path` (not inside `additionalProperties` maps
/// or free-form objects).
fn declared_paths(schema: &Value, path: &str, paths: &mut Vec<String>) {
    for (key, field) in schema["properties"].as_object().into_iter().flatten() {
        let field_path = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        paths.push(field_path.clone());
        declared_paths(field, &field_path, paths);
        // The fields of an array's items, as `<array>.0.<field>` (the first item's).
        if field["type"] == json!("array") && field["items"]["properties"].is_object() {
            declared_paths(&field["items"], &format!("{field_path}.0"), paths);
        }
    }
}

fn has_path(value: &Value, path: &str) -> bool {
    let mut current = value;
    for key in path.split('.') {
        let next = match key.parse::<usize>() {
            Ok(index) => current.get(index),
            Err(_) => current.get(key),
        };
        match next {
            Some(next) if !next.is_null() => current = next,
            _ => return false,
        }
    }
    true
}

fn time(seconds: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
}

fn metadata(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some("stowage".into()),
        labels: Some(
            [(
                crate::tags::labels::BACKUP_NAME.to_string(),
                "nightly".to_string(),
            )]
            .into(),
        ),
        ..Default::default()
    }
}

fn full_pod_reference() -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        field_path: Some("spec.volumes{data}".into()),
        resource_version: Some("42".into()),
        ..pod_reference("shop", "db-0", "8f1c")
    }
}

fn full_hook(phase: &str) -> HookStatus {
    HookStatus {
        phase: phase.into(),
        container: "db".into(),
        command: vec![
            "/bin/sh".into(),
            "-c".into(),
            "pg_dump > /data/dump.sql".into(),
        ],
        succeeded: false,
        exit_code: 2,
        stdout: "dumping\n".into(),
        stderr: "pg_dump: connection refused\n".into(),
        error: "pre-backup hook exited with code 2".into(),
        start_timestamp: Some(time(1_764_633_590)),
        completion_timestamp: Some(time(1_764_633_595)),
    }
}

fn full_backup() -> PodVolumeBackup {
    let mut object = PodVolumeBackup::new(
        metadata("nightly-db-0-data"),
        PodVolumeBackupSpec {
            backup_storage_location: DEFAULT_STORAGE_LOCATION.into(),
            node: "node-1".into(),
            pod: full_pod_reference(),
            volume: "data".into(),
            repo_identifier: "s3:http://127.0.0.1:9000/bucket/restic/shop".into(),
            tags: [(crate::tags::BACKUP.to_string(), "nightly".to_string())].into(),
            uploader_type: UPLOADER_RESTIC.into(),
            excluded_paths: vec!["cache".into(), "**/*.tmp".into()],
        },
    );
    object.status = PodVolumeBackupStatus {
        phase: VolumePhase::Canceled,
        snapshot_id: "1a2b3c4d".into(),
        path: "/var/lib/kubelet/pods/8f1c/volumes/kubernetes.io~empty-dir/data".into(),
        message: "cancelled on request".into(),
        progress: Progress {
            total_bytes: 3 << 30,
            bytes_done: 1 << 30,
        },
        start_timestamp: Some(time(1_764_633_600)),
        completion_timestamp: Some(time(1_764_633_700)),
        hooks: vec![full_hook("pre")],
    };
    object
}

fn full_restore() -> PodVolumeRestore {
    let mut object = PodVolumeRestore::new(
        metadata("restore-1-db-0-data"),
        PodVolumeRestoreSpec {
            backup_storage_location: DEFAULT_STORAGE_LOCATION.into(),
            pod: full_pod_reference(),
            volume: "data".into(),
            repo_identifier: "s3:http://127.0.0.1:9000/bucket/restic/shop".into(),
            snapshot_id: "1a2b3c4d".into(),
            source_namespace: "shop-old".into(),
            uploader_type: UPLOADER_RESTIC.into(),
            excluded_at_backup: vec!["cache".into()],
        },
    );
    object.status = PodVolumeRestoreStatus {
        phase: VolumePhase::Failed,
        message: "restic failed".into(),
        progress: Progress {
            total_bytes: 10,
            bytes_done: 5,
        },
        start_timestamp: Some(time(1_764_633_600)),
        completion_timestamp: Some(time(1_764_633_700)),
        hooks: vec![full_hook("post-restore")],
    };
    object
}

fn full_repository() -> ResticRepository {
    let mut object = ResticRepository::new(
        metadata("shop-default"),
        ResticRepositorySpec {
            backup_storage_location: DEFAULT_STORAGE_LOCATION.into(),
            volume_namespace: "shop".into(),
            restic_identifier: "s3:http://127.0.0.1:9000/bucket/restic/shop".into(),
            maintenance_frequency: go_duration(std::time::Duration::from_secs(7 * 24 * 3600)),
        },
    );
    object.status = ResticRepositoryStatus {
        phase: RepositoryPhase::NotReady,
        message: "repository is locked".into(),
        last_maintenance_time: Some(time(1_764_633_600)),
    };
    object
}

fn objects() -> Vec<(&'static str, Value, Value)> {
    vec![
        (
            "PodVolumeBackup",
            crd(PVB_CRD),
            serde_json::to_value(full_backup()).unwrap(),
        ),
        (
            "PodVolumeRestore",
            crd(PVR_CRD),
            serde_json::to_value(full_restore()).unwrap(),
        ),
        (
            "ResticRepository",
            crd(REPO_CRD),
            serde_json::to_value(full_repository()).unwrap(),
        ),
    ]
}

#[test]
fn full_objects_pass_their_crd_schema() {
    for (kind, crd, object) in objects() {
        assert_eq!(crd["spec"]["names"]["kind"], json!(kind));
        assert_eq!(crd["spec"]["group"], json!(GROUP));
        assert_eq!(object["apiVersion"], json!(API_VERSION));
        assert_eq!(object["kind"], json!(kind));
        let mut errors = Vec::new();
        validate(schema(&crd), &object, kind, &mut errors);
        assert!(errors.is_empty(), "{kind}: {errors:#?}");
    }
}

#[test]
fn every_crd_field_is_written_by_its_type() {
    for (kind, crd, object) in objects() {
        let mut paths = Vec::new();
        declared_paths(schema(&crd), "", &mut paths);
        let missing: Vec<_> = paths.iter().filter(|p| !has_path(&object, p)).collect();
        assert!(missing.is_empty(), "{kind} lacks {missing:?}");
    }
}

#[test]
fn the_resource_names_are_the_crds() {
    use k8s_openapi::Resource;
    for (crd, plural, kind) in [
        (
            crd(PVB_CRD),
            PodVolumeBackup::URL_PATH_SEGMENT,
            PodVolumeBackup::KIND,
        ),
        (
            crd(PVR_CRD),
            PodVolumeRestore::URL_PATH_SEGMENT,
            PodVolumeRestore::KIND,
        ),
        (
            crd(REPO_CRD),
            ResticRepository::URL_PATH_SEGMENT,
            ResticRepository::KIND,
        ),
    ] {
        assert_eq!(crd["spec"]["names"]["plural"], json!(plural));
        assert_eq!(crd["spec"]["names"]["kind"], json!(kind));
        assert_eq!(crd["spec"]["scope"], json!("Namespaced"));
        assert_eq!(crd["spec"]["versions"][0]["name"], json!(VERSION));
    }
}

#[test]
fn the_checker_refuses_what_an_api_server_refuses() {
    // The checks above only mean something if this checker can fail.
    let crd = crd(PVB_CRD);
    let mut object = serde_json::to_value(full_backup()).unwrap();
    object["spec"].as_object_mut().unwrap().remove("node");
    object["spec"]["extra"] = json!("x");
    object["status"]["progress"]["bytesDone"] = json!("many");
    object["status"]["phase"] = Value::Null;
    object["status"]["startTimestamp"] = json!("yesterday");
    let mut errors = Vec::new();
    validate(schema(&crd), &object, "PodVolumeBackup", &mut errors);
    let text = errors.join("\n");
    for expected in [
        "required field `node`",
        "spec.extra: not in the CRD",
        "bytesDone: expected an int64",
        "status.phase: null",
        "`yesterday` is not an RFC 3339",
    ] {
        assert!(text.contains(expected), "{expected} not in {text}");
    }
    assert!(!has_path(&object, "spec.node"));
}

#[test]
fn objects_read_back_including_velero_written_ones() {
    let backup = full_backup();
    let read: PodVolumeBackup =
        serde_json::from_value(serde_json::to_value(&backup).unwrap()).unwrap();
    assert_eq!(read, backup);
    let restore = full_restore();
    let read: PodVolumeRestore =
        serde_json::from_value(serde_json::to_value(&restore).unwrap()).unwrap();
    assert_eq!(read, restore);
    let repository = full_repository();
    let read: ResticRepository =
        serde_json::from_value(serde_json::to_value(&repository).unwrap()).unwrap();
    assert_eq!(read, repository);
    // As Velero writes a new object: no status, phases absent or empty.
    let velero: PodVolumeRestore = serde_json::from_value(json!({
        "apiVersion": "velero.io/v1", "kind": "PodVolumeRestore",
        "metadata": {"name": "r"},
        "spec": {"pod": {"name": "p"}, "volume": "v", "repoIdentifier": "r", "snapshotID": "s"},
        "status": {"phase": "", "startTimestamp": null},
    }))
    .unwrap();
    assert_eq!(velero.status.phase, VolumePhase::New);
    assert_eq!(velero.status.start_timestamp, None);
}

#[test]
fn go_durations_read_as_velero_writes_them() {
    assert_eq!(
        go_duration(std::time::Duration::from_secs(7 * 24 * 3600)),
        "168h0m0s"
    );
    assert_eq!(go_duration(std::time::Duration::from_secs(3661)), "1h1m1s");
}
