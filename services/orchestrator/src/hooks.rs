//! The orchestrator's side of Velero's hooks (the rules themselves are in `stowage_hooks`):
//! the backup spec's hooks checked at CreateBackup, a hook run turned into the `HookResult` of
//! the API, the records and the mirrors, the log line of a run, and a restored pod's
//! post-restore hook run once its volumes are back and its container runs.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use stowage_hooks::{HookPhase, HookRun, RawExecHook, RawResourceHook, ResourceHook};
use stowage_proto::{
    prost_types,
    v1::{BackupResourceHook, HookResult},
};
use stowage_velero_format::HookRecord;

use crate::{
    backup::to_duration,
    engine::RunControl,
    error::{Error, Result, validate_label_selector, validate_namespace},
    ports::{ClusterExec, ClusterPort},
};

/// The spec's hooks, checked: names, namespaces, label selectors and each exec hook, the
/// first bad one refused naming its entry.
pub fn spec_hooks(hooks: &[BackupResourceHook]) -> Result<Vec<ResourceHook>> {
    let mut raw = Vec::new();
    for hook in hooks {
        for namespace in hook
            .included_namespaces
            .iter()
            .chain(&hook.excluded_namespaces)
        {
            if namespace != "*" {
                validate_namespace(namespace)?;
            }
        }
        validate_label_selector(&hook.label_selector)?;
        let exec = |hooks: &[stowage_proto::v1::ExecHook]| -> Result<Vec<RawExecHook>> {
            hooks
                .iter()
                .map(|hook| {
                    crate::error::validate_duration("hook timeout", hook.timeout.as_ref())?;
                    Ok(RawExecHook {
                        container: hook.container.clone(),
                        command: hook.command.clone(),
                        on_error: hook.on_error.clone(),
                        timeout: to_duration(hook.timeout.as_ref()),
                    })
                })
                .collect()
        };
        raw.push(RawResourceHook {
            name: hook.name.clone(),
            included_namespaces: hook.included_namespaces.clone(),
            excluded_namespaces: hook.excluded_namespaces.clone(),
            label_selector: hook
                .label_selector
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            pre: exec(&hook.pre)?,
            post: exec(&hook.post)?,
        });
    }
    stowage_hooks::resource_hooks(&raw).map_err(|error| Error::InvalidArgument {
        what: "backup hook",
        value: match &error {
            stowage_hooks::SpecHookError::NoName { index } => format!("hooks[{index}]"),
            stowage_hooks::SpecHookError::NoHooks { name, .. }
            | stowage_hooks::SpecHookError::Invalid { name, .. } => name.clone(),
        },
        reason: error.to_string(),
    })
}

/// The spec's hooks as Velero writes a Backup's `spec.hooks` (`resources`, each hook under
/// `exec`, timeouts as Go durations), for the backup's record.
pub fn to_velero(hooks: &[BackupResourceHook]) -> Value {
    let exec = |hooks: &[stowage_proto::v1::ExecHook]| -> Vec<Value> {
        hooks
            .iter()
            .map(|hook| {
                let mut exec = json!({"command": hook.command});
                if !hook.container.is_empty() {
                    exec["container"] = json!(hook.container);
                }
                if !hook.on_error.is_empty() {
                    exec["onError"] = json!(hook.on_error);
                }
                if let Some(timeout) = to_duration(hook.timeout.as_ref()) {
                    exec["timeout"] = json!(stowage_velero_format::format_go_duration(timeout));
                }
                json!({"exec": exec})
            })
            .collect()
    };
    let resources: Vec<Value> = hooks
        .iter()
        .map(|hook| {
            let labels: BTreeMap<&String, &String> = hook.label_selector.iter().collect();
            json!({
                "name": hook.name,
                "includedNamespaces": hook.included_namespaces,
                "excludedNamespaces": hook.excluded_namespaces,
                "labelSelector": {"matchLabels": labels},
                "pre": exec(&hook.pre),
                "post": exec(&hook.post),
            })
        })
        .collect();
    json!({"resources": resources})
}

/// A Backup record's `spec.hooks` read back (Velero's own records have `{}`: no hooks).
pub fn from_velero(hooks: &Value) -> Vec<BackupResourceHook> {
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| item.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let text = |value: &Value| value.as_str().unwrap_or_default().to_string();
    let exec = |hooks: &Value| -> Vec<stowage_proto::v1::ExecHook> {
        hooks
            .as_array()
            .into_iter()
            .flatten()
            .map(|hook| {
                let exec = &hook["exec"];
                stowage_proto::v1::ExecHook {
                    container: text(&exec["container"]),
                    command: strings(&exec["command"]),
                    on_error: text(&exec["onError"]),
                    timeout: exec["timeout"]
                        .as_str()
                        .and_then(stowage_velero_format::parse_go_duration)
                        .map(|timeout| prost_types::Duration {
                            seconds: timeout.as_secs() as i64,
                            nanos: timeout.subsec_nanos() as i32,
                        }),
                }
            })
            .collect()
    };
    hooks["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|resource| BackupResourceHook {
            name: text(&resource["name"]),
            included_namespaces: strings(&resource["includedNamespaces"]),
            excluded_namespaces: strings(&resource["excludedNamespaces"]),
            label_selector: resource["labelSelector"]["matchLabels"]
                .as_object()
                .map(|labels| {
                    labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            pre: exec(&resource["pre"]),
            post: exec(&resource["post"]),
        })
        .collect()
}

/// How the records name a run's phase.
fn phase_word(phase: HookPhase) -> &'static str {
    match phase {
        HookPhase::PreBackup => "pre",
        HookPhase::PostBackup => "post",
        HookPhase::PostRestore => "post-restore",
    }
}

fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: since.as_secs() as i64,
        nanos: since.subsec_nanos() as i32,
    }
}

/// The API's record of one run.
pub fn result_of(run: &HookRun) -> HookResult {
    HookResult {
        phase: phase_word(run.phase).to_string(),
        container: run.target.container.clone(),
        command: run.command.clone(),
        succeeded: run.succeeded(),
        exit_code: run.exit_code().unwrap_or(-1),
        stdout: run.stdout.clone(),
        stderr: run.stderr.clone(),
        error: if run.succeeded() {
            String::new()
        } else {
            run.reason()
        },
        started: Some(timestamp(run.started)),
        finished: Some(timestamp(run.finished)),
    }
}

fn to_chrono(timestamp: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    timestamp.and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
}

fn to_timestamp(time: Option<&DateTime<Utc>>) -> Option<prost_types::Timestamp> {
    time.map(|time| prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    })
}

/// A run as the bucket's records keep it.
pub fn to_record(result: &HookResult) -> HookRecord {
    HookRecord {
        phase: result.phase.clone(),
        container: result.container.clone(),
        command: result.command.clone(),
        succeeded: result.succeeded,
        exit_code: result.exit_code,
        stdout: result.stdout.clone(),
        stderr: result.stderr.clone(),
        error: result.error.clone(),
        started: to_chrono(result.started.as_ref()),
        finished: to_chrono(result.finished.as_ref()),
    }
}

pub fn from_record(record: &HookRecord) -> HookResult {
    HookResult {
        phase: record.phase.clone(),
        container: record.container.clone(),
        command: record.command.clone(),
        succeeded: record.succeeded,
        exit_code: record.exit_code,
        stdout: record.stdout.clone(),
        stderr: record.stderr.clone(),
        error: record.error.clone(),
        started: to_timestamp(record.started.as_ref()),
        finished: to_timestamp(record.finished.as_ref()),
    }
}

/// The mirrors' `status.hooks` (the shipped CRDs' schema): the records' shape, with
/// Kubernetes' timestamp names.
pub fn mirror_status(hooks: &[HookResult]) -> Value {
    let rfc3339 = |t: Option<&prost_types::Timestamp>| {
        to_chrono(t).map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    };
    Value::Array(
        hooks
            .iter()
            .map(|hook| {
                json!({
                    "phase": hook.phase,
                    "container": hook.container,
                    "command": hook.command,
                    "succeeded": hook.succeeded,
                    "exitCode": hook.exit_code,
                    "stdout": hook.stdout,
                    "stderr": hook.stderr,
                    "error": hook.error,
                    "startTimestamp": rfc3339(hook.started.as_ref()),
                    "completionTimestamp": rfc3339(hook.finished.as_ref()),
                })
            })
            .collect(),
    )
}

/// The log line of one hook run: the command, the container, how it ended (exit code) and
/// its stdout and stderr as kept (truncated in the middle when long).
pub fn log_line(run: &HookRun) -> (&'static str, String) {
    let level = if run.succeeded() {
        "info"
    } else if run.fails_pod() {
        "error"
    } else {
        "warning"
    };
    let ended = match &run.result {
        stowage_hooks::HookResult::Succeeded => "exited with code 0".to_string(),
        stowage_hooks::HookResult::Exited(code) => format!("exited with code {code}"),
        _ => run.reason(),
    };
    let line = format!(
        "{} {:?} in {} (on-error {:?}) {ended}; stdout: {:?}; stderr: {:?}",
        run.phase.label(),
        run.command,
        run.target,
        run.on_error,
        run.stdout.trim_end(),
        run.stderr.trim_end(),
    );
    (level, line)
}

/// The post-restore hook of restored pod `namespace/name`, declared by its backed-up
/// `annotations`, run once its container is up (`stowage_hooks::post_restore`): None when
/// it declares none, an error naming the annotation when it cannot be read.
pub async fn post_restore(
    cluster: &Arc<dyn ClusterPort>,
    namespace: &str,
    name: &str,
    annotations: &BTreeMap<String, String>,
    poll: Duration,
    control: &RunControl,
) -> std::result::Result<Option<HookRun>, String> {
    let hook = match stowage_hooks::restore_exec_hook(annotations) {
        Ok(Some(hook)) => hook,
        Ok(None) => return Ok(None),
        Err(error) => return Err(format!("post-restore hook not run: {error}")),
    };
    let fetch = || async {
        cluster
            .pod(namespace, name)
            .await
            .map_err(|error| error.to_string())
    };
    let wait = stowage_hooks::Wait {
        poll,
        deadline: Some(control.deadline),
        output_limit: stowage_hooks::DEFAULT_OUTPUT_LIMIT,
    };
    let run = stowage_hooks::post_restore(
        &ClusterExec(cluster.clone()),
        namespace,
        name,
        &hook,
        fetch,
        wait,
        &control.cancel,
    )
    .await;
    Ok(Some(run))
}

/// The annotations of a pod manifest.
pub fn annotations_of(manifest: &Value) -> BTreeMap<String, String> {
    manifest
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|annotations| {
            annotations
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// The labels of a pod.
pub fn labels_of(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use stowage_proto::v1::ExecHook;

    use super::*;

    fn resource_hook(name: &str, on_error: &str) -> BackupResourceHook {
        BackupResourceHook {
            name: name.into(),
            included_namespaces: vec!["shop".into()],
            label_selector: [("app".to_string(), "db".to_string())].into(),
            pre: vec![ExecHook {
                command: vec!["freeze".into()],
                on_error: on_error.into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn bad_spec_hooks_are_invalid_arguments_naming_the_hook() {
        assert_eq!(spec_hooks(&[resource_hook("db", "Fail")]).unwrap().len(), 1);
        let error = spec_hooks(&[resource_hook("db", "Fail"), resource_hook("cache", "Later")])
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            error.to_string(),
            "invalid backup hook `cache`: hooks[1] `cache`: pre[0]: onError `Later` is not an on-error mode; use Continue or Fail"
        );
        let mut bad_namespace = resource_hook("db", "Fail");
        bad_namespace.included_namespaces = vec!["Shop".into()];
        assert_eq!(
            spec_hooks(&[bad_namespace]).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let mut bad_label = resource_hook("db", "Fail");
        bad_label.label_selector = [("app".to_string(), "-db".to_string())].into();
        assert!(
            spec_hooks(&[bad_label])
                .unwrap_err()
                .to_string()
                .contains("app=-db")
        );
    }

    #[test]
    fn spec_hooks_survive_velero_s_record_shape() {
        let mut hook = resource_hook("db", "Continue");
        hook.excluded_namespaces = vec!["kube-system".into()];
        hook.pre[0].container = "db".into();
        hook.pre[0].timeout = Some(prost_types::Duration {
            seconds: 90,
            nanos: 0,
        });
        hook.post = vec![ExecHook {
            command: vec!["thaw".into()],
            ..Default::default()
        }];
        let written = to_velero(std::slice::from_ref(&hook));
        assert_eq!(
            written["resources"][0]["pre"][0]["exec"]["timeout"],
            "1m30s"
        );
        assert_eq!(
            written["resources"][0]["labelSelector"]["matchLabels"]["app"],
            "db"
        );
        assert_eq!(from_velero(&written), vec![hook]);
        assert!(from_velero(&json!({})).is_empty());
    }

    #[test]
    fn a_result_survives_the_record_and_reads_as_the_mirror_shows_it() {
        let result = HookResult {
            phase: "post-restore".into(),
            container: "db".into(),
            command: vec!["check".into()],
            succeeded: false,
            exit_code: 3,
            stdout: String::new(),
            stderr: "missing table\n".into(),
            error: "post-restore hook [\"check\"] in shop/db-0 container db exited with code 3: missing table".into(),
            started: Some(prost_types::Timestamp {
                seconds: 1_780_000_000,
                nanos: 0,
            }),
            finished: Some(prost_types::Timestamp {
                seconds: 1_780_000_002,
                nanos: 0,
            }),
        };
        assert_eq!(from_record(&to_record(&result)), result);
        let mirrored = mirror_status(std::slice::from_ref(&result));
        assert_eq!(mirrored[0]["exitCode"], 3);
        assert_eq!(mirrored[0]["startTimestamp"], "2026-05-28T20:26:40Z");
        assert_eq!(mirrored[0]["stderr"], "missing table\n");
    }
}
