//! `stowage backup create --hooks-file FILE`: the backup's hooks for the pods it selects by
//! namespace and labels, written as Velero's `spec.hooks` of a Backup (its `resources` list),
//! so a Velero user's hooks YAML works unchanged. Fields stowage does not run are refused by
//! name instead of being ignored: `includedResources`/`excludedResources` (hooks run in pods
//! only), `matchExpressions` (selectors are equality only).

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;
use stowage_proto::v1;

use crate::{parse, view};

/// Velero's `spec.hooks`: `resources: [...]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Hooks {
    #[serde(default)]
    resources: Vec<ResourceHook>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ResourceHook {
    name: String,
    #[serde(default)]
    included_namespaces: Vec<String>,
    #[serde(default)]
    excluded_namespaces: Vec<String>,
    #[serde(default)]
    label_selector: Option<LabelSelector>,
    #[serde(default)]
    pre: Vec<Hook>,
    #[serde(default)]
    post: Vec<Hook>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LabelSelector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Hook {
    exec: ExecHook,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ExecHook {
    #[serde(default)]
    container: String,
    command: Vec<String>,
    #[serde(default)]
    on_error: String,
    /// A Go duration (`30s`, `2m`).
    #[serde(default)]
    timeout: Option<String>,
}

/// The hooks in the file at `path`, for the backup's spec; an error names the file and what
/// in it is wrong (the server checks the hooks themselves again, naming the bad one).
pub fn read(path: &Path) -> Result<Vec<v1::BackupResourceHook>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("reading {}: {error}", path.display()))?;
    parse_hooks(&text).map_err(|error| format!("{}: {error}", path.display()))
}

fn parse_hooks(text: &str) -> Result<Vec<v1::BackupResourceHook>, String> {
    // The file holds `spec.hooks` itself, or a `hooks:` key around it (as copied from a spec).
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|error| error.to_string())?;
    let (value, prefix) = match value {
        serde_yaml::Value::Mapping(map) if map.contains_key("hooks") => {
            (map["hooks"].clone(), "hooks: ")
        }
        value => (value, ""),
    };
    let hooks: Hooks = serde_yaml::from_value(value).map_err(|error| format!("{prefix}{error}"))?;
    if hooks.resources.is_empty() {
        return Err("no hooks: expected Velero's `resources:` list of hooks".to_string());
    }
    hooks
        .resources
        .into_iter()
        .map(|resource| {
            let exec = |hooks: Vec<Hook>, phase: &str| -> Result<Vec<v1::ExecHook>, String> {
                hooks
                    .into_iter()
                    .enumerate()
                    .map(|(index, hook)| {
                        let timeout = match hook.exec.timeout.as_deref() {
                            Some(text) => Some(view::proto_duration(
                                parse::parse_duration(text).map_err(|error| {
                                    format!(
                                        "hook `{}` {phase}[{index}]: timeout: {error}",
                                        resource.name
                                    )
                                })?,
                            )),
                            None => None,
                        };
                        Ok(v1::ExecHook {
                            container: hook.exec.container,
                            command: hook.exec.command,
                            on_error: hook.exec.on_error,
                            timeout,
                        })
                    })
                    .collect()
            };
            Ok(v1::BackupResourceHook {
                pre: exec(resource.pre, "pre")?,
                post: exec(resource.post, "post")?,
                name: resource.name,
                included_namespaces: resource.included_namespaces,
                excluded_namespaces: resource.excluded_namespaces,
                label_selector: resource
                    .label_selector
                    .map(|selector| selector.match_labels.into_iter().collect())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn velero_s_spec_hooks_read_as_the_backup_spec_s() {
        let text = r#"
resources:
  - name: freeze-db
    includedNamespaces: [shop]
    labelSelector:
      matchLabels:
        app: db
    pre:
      - exec:
          container: db
          command: ["/bin/sh", "-c", "pg_dump > /data/dump.sql"]
          onError: Fail
          timeout: 2m
    post:
      - exec:
          command: ["/bin/sh", "-c", "rm /data/dump.sql"]
"#;
        let hooks = parse_hooks(text).unwrap();
        assert_eq!(hooks.len(), 1);
        let hook = &hooks[0];
        assert_eq!(hook.name, "freeze-db");
        assert_eq!(hook.included_namespaces, ["shop"]);
        assert_eq!(
            hook.label_selector.get("app").map(String::as_str),
            Some("db")
        );
        assert_eq!(hook.pre[0].container, "db");
        assert_eq!(hook.pre[0].on_error, "Fail");
        assert_eq!(hook.pre[0].timeout.map(|t| t.seconds), Some(120));
        assert_eq!(hook.post[0].command[2], "rm /data/dump.sql");
        assert_eq!(hook.post[0].timeout, None);

        let wrapped = format!("hooks:\n{}", text.replace('\n', "\n  "));
        assert_eq!(parse_hooks(&wrapped).unwrap(), hooks);
    }

    #[test]
    fn what_stowage_does_not_run_is_refused_by_name() {
        let resources = "resources:\n  - name: x\n    includedResources: [pods]\n    pre: []\n";
        let error = parse_hooks(resources).unwrap_err();
        assert!(error.contains("includedResources"), "{error}");
        let expressions =
            "resources:\n  - name: x\n    labelSelector:\n      matchExpressions: []\n";
        let error = parse_hooks(expressions).unwrap_err();
        assert!(error.contains("matchExpressions"), "{error}");
        let error = parse_hooks(
            "resources:\n  - name: x\n    pre:\n      - exec:\n          command: [a]\n          timeout: soon\n",
        )
        .unwrap_err();
        assert!(error.starts_with("hook `x` pre[0]: timeout:"), "{error}");
        assert_eq!(
            parse_hooks("resources: []\n").unwrap_err(),
            "no hooks: expected Velero's `resources:` list of hooks"
        );
    }
}
