//! Hooks a backup's spec declares for the pods it selects by namespace and labels (Velero's
//! `spec.hooks.resources`), read into typed hooks with Velero's defaults, and the rule that
//! picks a pod's hooks: for each phase, a hook the pod's own annotations declare wins, and
//! only without one do the spec's hooks selecting the pod run, all of them in order (Velero's
//! item hook handler does the same).

use std::{collections::BTreeMap, time::Duration};

use thiserror::Error;

use crate::annotations::{
    AnnotationError, BackupHooks, DEFAULT_EXEC_TIMEOUT, ExecHook, HookPhase, OnError, backup_hooks,
    container_name_problem,
};

/// One exec hook of a spec, as written (Velero's `exec` of a `pre`/`post` entry).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawExecHook {
    /// Empty: the pod's first container.
    pub container: String,
    pub command: Vec<String>,
    /// `Continue`, `Fail` or empty (Fail).
    pub on_error: String,
    /// None or zero: 30s.
    pub timeout: Option<Duration>,
}

/// One entry of the spec's hooks, as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawResourceHook {
    pub name: String,
    pub included_namespaces: Vec<String>,
    pub excluded_namespaces: Vec<String>,
    pub label_selector: BTreeMap<String, String>,
    pub pre: Vec<RawExecHook>,
    pub post: Vec<RawExecHook>,
}

/// A spec hook entry, checked: which pods it selects and the hooks it runs in them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceHook {
    pub name: String,
    included_namespaces: Vec<String>,
    excluded_namespaces: Vec<String>,
    label_selector: BTreeMap<String, String>,
    pub pre: Vec<ExecHook>,
    pub post: Vec<ExecHook>,
}

/// A spec hook that cannot be used; names the entry (by position and name) and the field.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpecHookError {
    #[error("hooks[{index}]: the name is empty; every hook needs one")]
    NoName { index: usize },
    #[error("hooks[{index}] `{name}`: it has no pre or post hook")]
    NoHooks { index: usize, name: String },
    #[error("hooks[{index}] `{name}`: {field}: {problem}")]
    Invalid {
        index: usize,
        name: String,
        field: String,
        problem: String,
    },
}

impl ResourceHook {
    /// Checks `raw`, the `index`th entry of the spec's hooks, and reads its exec hooks with
    /// Velero's defaults (first container, on-error Fail, 30s timeout).
    pub fn new(index: usize, raw: &RawResourceHook) -> Result<ResourceHook, SpecHookError> {
        let name = raw.name.trim().to_string();
        if name.is_empty() {
            return Err(SpecHookError::NoName { index });
        }
        if raw.pre.is_empty() && raw.post.is_empty() {
            return Err(SpecHookError::NoHooks { index, name });
        }
        let invalid = |field: String, problem: String| SpecHookError::Invalid {
            index,
            name: name.clone(),
            field,
            problem,
        };
        let read = |phase: HookPhase, field: &str, hooks: &[RawExecHook]| {
            hooks
                .iter()
                .enumerate()
                .map(|(position, hook)| {
                    exec_hook(phase, hook)
                        .map_err(|problem| invalid(format!("{field}[{position}]"), problem))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let pre = read(HookPhase::PreBackup, "pre", &raw.pre)?;
        let post = read(HookPhase::PostBackup, "post", &raw.post)?;
        Ok(ResourceHook {
            included_namespaces: raw.included_namespaces.clone(),
            excluded_namespaces: raw.excluded_namespaces.clone(),
            label_selector: raw.label_selector.clone(),
            name,
            pre,
            post,
        })
    }

    /// Whether the entry selects a pod in `namespace` with `labels`: its namespace is
    /// included (no list, or `*`, includes all) and not excluded, and the pod carries every
    /// label of the selector.
    pub fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        let included = self.included_namespaces.is_empty()
            || self
                .included_namespaces
                .iter()
                .any(|n| n == "*" || n == namespace);
        let excluded = self.excluded_namespaces.iter().any(|n| n == namespace);
        included
            && !excluded
            && self
                .label_selector
                .iter()
                .all(|(key, value)| labels.get(key) == Some(value))
    }
}

/// The spec entries checked, in order; the first bad one is refused.
pub fn resource_hooks(raw: &[RawResourceHook]) -> Result<Vec<ResourceHook>, SpecHookError> {
    raw.iter()
        .enumerate()
        .map(|(index, raw)| ResourceHook::new(index, raw))
        .collect()
}

/// The backup hooks of a pod in `namespace` with `annotations` and `labels`: per phase, the
/// annotations' hook when they declare one, else every hook of the entries of `spec` that
/// select the pod, in the spec's order.
pub fn pod_backup_hooks(
    namespace: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    spec: &[ResourceHook],
) -> Result<BackupHooks, AnnotationError> {
    let mut hooks = backup_hooks(annotations)?;
    let selecting: Vec<&ResourceHook> = spec
        .iter()
        .filter(|entry| entry.selects(namespace, labels))
        .collect();
    if hooks.pre.is_empty() {
        hooks.pre = selecting.iter().flat_map(|e| e.pre.clone()).collect();
    }
    if hooks.post.is_empty() {
        hooks.post = selecting.iter().flat_map(|e| e.post.clone()).collect();
    }
    Ok(hooks)
}

fn exec_hook(phase: HookPhase, raw: &RawExecHook) -> Result<ExecHook, String> {
    if raw.command.is_empty() || raw.command[0].trim().is_empty() {
        return Err("the command is empty".to_string());
    }
    let container = match raw.container.trim() {
        "" => None,
        name => {
            container_name_problem(name).map_or(Ok(()), |reason| {
                Err(format!(
                    "container `{name}` is not a valid container name ({reason})"
                ))
            })?;
            Some(name.to_string())
        }
    };
    let on_error = match raw.on_error.trim() {
        "" | "Fail" => OnError::Fail,
        "Continue" => OnError::Continue,
        other => {
            return Err(format!(
                "onError `{other}` is not an on-error mode; use Continue or Fail"
            ));
        }
    };
    Ok(ExecHook {
        phase,
        container,
        command: raw.command.clone(),
        on_error,
        timeout: raw
            .timeout
            .filter(|timeout| !timeout.is_zero())
            .unwrap_or(DEFAULT_EXEC_TIMEOUT),
        wait_timeout: None,
        wait_for_ready: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn raw_hook(command: &[&str]) -> RawExecHook {
        RawExecHook {
            command: command.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn entry(name: &str, namespaces: &[&str], labels: &[(&str, &str)]) -> RawResourceHook {
        RawResourceHook {
            name: name.into(),
            included_namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
            label_selector: map(labels),
            pre: vec![raw_hook(&["freeze"])],
            post: vec![raw_hook(&["thaw"])],
            ..Default::default()
        }
    }

    #[test]
    fn spec_hooks_get_velero_s_defaults() {
        let mut raw = entry("db", &[], &[]);
        raw.pre.push(RawExecHook {
            container: "db".into(),
            command: vec!["/bin/sh".into(), "-c".into(), "sync".into()],
            on_error: "Continue".into(),
            timeout: Some(Duration::from_secs(90)),
        });
        let hook = ResourceHook::new(0, &raw).unwrap();
        assert_eq!(hook.pre.len(), 2);
        assert_eq!(hook.pre[0].on_error, OnError::Fail);
        assert_eq!(hook.pre[0].timeout, DEFAULT_EXEC_TIMEOUT);
        assert_eq!(hook.pre[0].container, None);
        assert_eq!(hook.pre[1].command, ["/bin/sh", "-c", "sync"]);
        assert_eq!(hook.pre[1].container.as_deref(), Some("db"));
        assert_eq!(hook.pre[1].on_error, OnError::Continue);
        assert_eq!(hook.pre[1].timeout, Duration::from_secs(90));
        assert_eq!(hook.post[0].phase, HookPhase::PostBackup);
    }

    #[test]
    fn bad_spec_hooks_are_refused_naming_the_entry_and_the_field() {
        let mut raw = entry("db", &[], &[]);
        raw.post[0].on_error = "continue".into();
        assert_eq!(
            resource_hooks(&[entry("ok", &[], &[]), raw])
                .unwrap_err()
                .to_string(),
            "hooks[1] `db`: post[0]: onError `continue` is not an on-error mode; use Continue or Fail"
        );
        let mut raw = entry("db", &[], &[]);
        raw.pre[0].command.clear();
        assert_eq!(
            ResourceHook::new(0, &raw).unwrap_err().to_string(),
            "hooks[0] `db`: pre[0]: the command is empty"
        );
        let mut raw = entry("db", &[], &[]);
        raw.pre[0].container = "Bad_Name".into();
        assert!(
            ResourceHook::new(0, &raw)
                .unwrap_err()
                .to_string()
                .starts_with("hooks[0] `db`: pre[0]: container `Bad_Name` is not a valid container name (only lower-case")
        );
        assert_eq!(
            ResourceHook::new(2, &entry(" ", &[], &[])).unwrap_err(),
            SpecHookError::NoName { index: 2 }
        );
        let mut raw = entry("empty", &[], &[]);
        raw.pre.clear();
        raw.post.clear();
        assert_eq!(
            ResourceHook::new(0, &raw).unwrap_err().to_string(),
            "hooks[0] `empty`: it has no pre or post hook"
        );
    }

    #[test]
    fn an_entry_selects_pods_by_namespace_and_every_label() {
        let hook = ResourceHook::new(0, &entry("db", &["shop", "crm"], &[("app", "db")])).unwrap();
        assert!(hook.selects("shop", &map(&[("app", "db"), ("tier", "data")])));
        assert!(!hook.selects("shop", &map(&[("app", "web")])));
        assert!(!hook.selects("shop", &map(&[])));
        assert!(!hook.selects("blog", &map(&[("app", "db")])));
        let mut raw = entry("all", &["*"], &[]);
        raw.excluded_namespaces = vec!["kube-system".into()];
        let all = ResourceHook::new(0, &raw).unwrap();
        assert!(all.selects("blog", &map(&[])));
        assert!(!all.selects("kube-system", &map(&[])));
        assert!(
            ResourceHook::new(0, &entry("any", &[], &[]))
                .unwrap()
                .selects("x", &map(&[]))
        );
    }

    #[test]
    fn a_pods_annotation_hook_wins_over_spec_hooks_phase_by_phase() {
        let mut second = entry("second", &[], &[]);
        second.pre = vec![raw_hook(&["sync"])];
        second.post.clear();
        let spec = resource_hooks(&[
            entry("db", &["shop"], &[("app", "db")]),
            entry("other", &["blog"], &[]),
            second,
        ])
        .unwrap();
        let labels = map(&[("app", "db")]);
        let hooks = pod_backup_hooks("shop", &labels, &map(&[]), &spec).unwrap();
        let commands = |hooks: &[ExecHook]| -> Vec<String> {
            hooks.iter().map(|h| h.command.join(" ")).collect()
        };
        assert_eq!(commands(&hooks.pre), ["freeze", "sync"]);
        assert_eq!(commands(&hooks.post), ["thaw"]);

        let annotated = map(&[("pre.hook.backup.velero.io/command", "own-dump")]);
        let hooks = pod_backup_hooks("shop", &labels, &annotated, &spec).unwrap();
        assert_eq!(commands(&hooks.pre), ["own-dump"]);
        assert_eq!(
            commands(&hooks.post),
            ["thaw"],
            "no post annotation: the spec's post hook runs"
        );

        let unselected = pod_backup_hooks("crm", &labels, &map(&[]), &spec).unwrap();
        assert_eq!(commands(&unselected.pre), ["sync"]);
        assert!(unselected.post.is_empty());
    }
}
