//! Velero's hook annotations on a pod, read into typed hooks with Velero's defaults.
//!
//! A hook is declared by its command annotation (an exec hook) or its image annotation (an
//! init-container restore hook); the other annotations of a hook without it are ignored, as
//! Velero ignores them. Where Velero silently falls back to a default on a value it cannot
//! read (an `on-error` of `continue`, a timeout of `30 seconds`), this module refuses it with
//! an error naming the annotation and the value: a hook that fails the backup where its
//! author wrote Continue is worse than a clear refusal.

use std::{collections::BTreeMap, time::Duration};

use thiserror::Error;

/// Velero's default for how long an exec hook may run (`pkg/podexec`'s `defaultTimeout`).
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);
/// Name of an init-container restore hook whose annotation names none. Velero generates a
/// random `velero-restore-init-<hex>`; a fixed name keeps a re-applied restore's pod the same.
pub const DEFAULT_INIT_CONTAINER_NAME: &str = "restore-hook";

/// Where a hook runs relative to the pod's volume backups or restores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookPhase {
    /// `pre.hook.backup.velero.io/*` (or the legacy `hook.backup.velero.io/*`): before restic
    /// reads the pod's volumes.
    PreBackup,
    /// `post.hook.backup.velero.io/*`: after all of the pod's volumes are backed up.
    PostBackup,
    /// `post.hook.restore.velero.io/*`: after the pod's volumes are restored and its
    /// containers run.
    PostRestore,
}

impl HookPhase {
    /// The annotation prefix of the phase, e.g. `pre.hook.backup.velero.io/`.
    pub fn prefix(self) -> &'static str {
        match self {
            HookPhase::PreBackup => "pre.hook.backup.velero.io/",
            HookPhase::PostBackup => "post.hook.backup.velero.io/",
            HookPhase::PostRestore => "post.hook.restore.velero.io/",
        }
    }

    /// How logs and failure reasons name the phase.
    pub fn label(self) -> &'static str {
        match self {
            HookPhase::PreBackup => "pre-backup hook",
            HookPhase::PostBackup => "post-backup hook",
            HookPhase::PostRestore => "post-restore hook",
        }
    }
}

/// What a failed hook does to the pod's volumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// The failure is logged; the backup or restore of the pod goes on.
    Continue,
    /// The pod's volumes fail (a pre-backup hook: without running restic).
    Fail,
}

/// An exec hook: a command run in one of the pod's containers through pods/exec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecHook {
    pub phase: HookPhase,
    /// None: the pod's first container, as Velero does.
    pub container: Option<String>,
    /// Executed as is (no shell unless the command names one), never empty.
    pub command: Vec<String>,
    pub on_error: OnError,
    pub timeout: Duration,
    /// Restore hooks only: how long to wait for the container to be running and ready
    /// before the command (`post.hook.restore.velero.io/wait-timeout`); None waits as long
    /// as the restore does.
    pub wait_timeout: Option<Duration>,
    /// Restore hooks only: wait for the container's readiness, not only for it to run
    /// (`post.hook.restore.velero.io/wait-for-ready`).
    pub wait_for_ready: bool,
}

/// A pod's backup hooks, run in order: at most one each from its annotations, or any number
/// from the backup spec's hooks that select the pod ([`crate::spec`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackupHooks {
    pub pre: Vec<ExecHook>,
    pub post: Vec<ExecHook>,
}

impl BackupHooks {
    pub fn is_empty(&self) -> bool {
        self.pre.is_empty() && self.post.is_empty()
    }
}

/// An init container added to a restored pod after the restore helper
/// (`init.hook.restore.velero.io/*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitContainerHook {
    pub name: String,
    pub image: String,
    /// Empty: the image's own entrypoint.
    pub command: Vec<String>,
}

impl InitContainerHook {
    /// The container, as Velero builds it from the annotations: name, image and (when given)
    /// command; no volume mounts.
    pub fn container(&self) -> serde_json::Value {
        let mut container = serde_json::json!({"name": self.name, "image": self.image});
        if !self.command.is_empty() {
            container["command"] = serde_json::json!(self.command);
        }
        container
    }

    /// Adds the hook's container to a pod's `initContainers` right after the one named
    /// `after` (the restore helper, so the hook sees the restored data), or first when there
    /// is none. A container of the same name already there is refused.
    pub fn insert_into(
        &self,
        init_containers: &mut Vec<serde_json::Value>,
        after: &str,
    ) -> Result<(), AnnotationError> {
        let name_of = |c: &serde_json::Value| {
            c.get("name")
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
        };
        if init_containers
            .iter()
            .any(|c| name_of(c).as_deref() == Some(self.name.as_str()))
        {
            return Err(AnnotationError::DuplicateContainer {
                annotation: "init.hook.restore.velero.io/container-name".to_string(),
                value: self.name.clone(),
            });
        }
        let position = init_containers
            .iter()
            .position(|c| name_of(c).as_deref() == Some(after))
            .map_or(0, |index| index + 1);
        init_containers.insert(position, self.container());
        Ok(())
    }
}

/// An annotation whose value cannot be used; names the annotation and the value.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AnnotationError {
    #[error("annotation {annotation}: the command is empty")]
    EmptyCommand { annotation: String },
    #[error(
        "annotation {annotation}: `{value}` starts with `[` but is not a JSON array of strings ({reason}); write a JSON array such as [\"/bin/sh\", \"-c\", \"...\"] or a single command"
    )]
    InvalidCommand {
        annotation: String,
        value: String,
        reason: String,
    },
    #[error("annotation {annotation}: `{value}` is not an on-error mode; use Continue or Fail")]
    InvalidOnError { annotation: String, value: String },
    #[error(
        "annotation {annotation}: `{value}` is not a duration; write it as Go does, such as 30s, 2m or 1h30m"
    )]
    InvalidDuration { annotation: String, value: String },
    #[error("annotation {annotation}: `{value}` is not true or false")]
    InvalidBool { annotation: String, value: String },
    #[error("annotation {annotation}: the pod already has a container named `{value}`")]
    DuplicateContainer { annotation: String, value: String },
    #[error("annotation {annotation}: `{value}` is not a valid container name ({reason})")]
    InvalidContainerName {
        annotation: String,
        value: String,
        reason: &'static str,
    },
}

/// The pre- and post-backup hooks of a pod with `annotations`. The legacy
/// `hook.backup.velero.io/*` annotations declare a pre hook when `pre.` ones do not, as in
/// Velero.
pub fn backup_hooks(
    annotations: &BTreeMap<String, String>,
) -> Result<BackupHooks, AnnotationError> {
    let pre = match exec_hook(annotations, HookPhase::PreBackup, "")? {
        Some(hook) => Some(hook),
        None => exec_hook(annotations, HookPhase::PreBackup, "legacy")?,
    };
    let post = exec_hook(annotations, HookPhase::PostBackup, "")?;
    Ok(BackupHooks {
        pre: pre.into_iter().collect(),
        post: post.into_iter().collect(),
    })
}

/// The post-restore exec hook of a pod with `annotations`, if it declares one. Its on-error
/// default is Continue (Velero's for restore hooks); its timeout is `exec-timeout`.
pub fn restore_exec_hook(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<ExecHook>, AnnotationError> {
    exec_hook(annotations, HookPhase::PostRestore, "")
}

/// Whether `annotations` declare a post-restore exec hook (its command annotation is set),
/// readable or not: one that cannot be read is still the pod's hook, refused when it is due.
pub fn declares_restore_exec_hook(annotations: &BTreeMap<String, String>) -> bool {
    annotations
        .get(&format!("{}command", HookPhase::PostRestore.prefix()))
        .is_some_and(|command| !command.trim().is_empty())
}

/// The init-container restore hook of a pod with `annotations`, if it declares one (by
/// `init.hook.restore.velero.io/container-image`).
pub fn restore_init_hook(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<InitContainerHook>, AnnotationError> {
    const PREFIX: &str = "init.hook.restore.velero.io/";
    let get = |key: &str| {
        annotations
            .get(&format!("{PREFIX}{key}"))
            .map(|value| value.trim())
            .filter(|value| !value.is_empty())
    };
    let Some(image) = get("container-image") else {
        return Ok(None);
    };
    let name = match get("container-name") {
        Some(name) => {
            validate_container_name(&format!("{PREFIX}container-name"), name)?;
            name.to_string()
        }
        None => DEFAULT_INIT_CONTAINER_NAME.to_string(),
    };
    let command = match get("command") {
        Some(value) => parse_command(&format!("{PREFIX}command"), value)?,
        None => Vec::new(),
    };
    Ok(Some(InitContainerHook {
        name,
        image: image.to_string(),
        command,
    }))
}

/// The command of a hook annotation: a JSON array of strings when the value starts with `[`,
/// else the whole value as one argument (Velero's `parseStringToCommand`).
pub fn parse_command(annotation: &str, value: &str) -> Result<Vec<String>, AnnotationError> {
    let value = value.trim();
    let command = if value.starts_with('[') {
        serde_json::from_str::<Vec<String>>(value).map_err(|error| {
            AnnotationError::InvalidCommand {
                annotation: annotation.to_string(),
                value: value.to_string(),
                reason: error.to_string(),
            }
        })?
    } else {
        vec![value.to_string()]
    };
    if command.is_empty() || command[0].trim().is_empty() {
        return Err(AnnotationError::EmptyCommand {
            annotation: annotation.to_string(),
        });
    }
    Ok(command)
}

/// A duration as Go's `time.ParseDuration` reads them (`30s`, `1m30s`, `1.5h`, `500ms`), as
/// Velero reads its timeouts.
pub fn parse_duration(annotation: &str, value: &str) -> Result<Duration, AnnotationError> {
    stowage_velero_format::parse_go_duration(value).ok_or_else(|| {
        AnnotationError::InvalidDuration {
            annotation: annotation.to_string(),
            value: value.to_string(),
        }
    })
}

fn parse_on_error(annotation: &str, value: &str) -> Result<OnError, AnnotationError> {
    match value.trim() {
        "Continue" => Ok(OnError::Continue),
        "Fail" => Ok(OnError::Fail),
        _ => Err(AnnotationError::InvalidOnError {
            annotation: annotation.to_string(),
            value: value.to_string(),
        }),
    }
}

/// A DNS-1123 label, as the API server requires of container names.
fn validate_container_name(annotation: &str, value: &str) -> Result<(), AnnotationError> {
    match container_name_problem(value) {
        Some(reason) => Err(AnnotationError::InvalidContainerName {
            annotation: annotation.to_string(),
            value: value.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Why `value` is not a container name (a DNS-1123 label), if it is not.
pub(crate) fn container_name_problem(value: &str) -> Option<&'static str> {
    if value.len() > 63 {
        Some("longer than 63 characters")
    } else if !value
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        Some("only lower-case letters, digits and `-` are allowed")
    } else if value.starts_with('-') || value.ends_with('-') {
        Some("must start and end with a letter or digit")
    } else {
        None
    }
}

/// The exec hook of `phase` declared by `annotations`; `variant` "legacy" reads the
/// pre-backup hook's unprefixed `hook.backup.velero.io/*` keys.
fn exec_hook(
    annotations: &BTreeMap<String, String>,
    phase: HookPhase,
    variant: &str,
) -> Result<Option<ExecHook>, AnnotationError> {
    let prefix = if variant == "legacy" {
        "hook.backup.velero.io/"
    } else {
        phase.prefix()
    };
    let key = |name: &str| format!("{prefix}{name}");
    let get = |name: &str| {
        annotations
            .get(&key(name))
            .map(String::as_str)
            .filter(|value| !value.trim().is_empty())
    };
    let Some(command) = get("command") else {
        return Ok(None);
    };
    let command = parse_command(&key("command"), command)?;
    let container = match get("container") {
        Some(name) => {
            let name = name.trim();
            validate_container_name(&key("container"), name)?;
            Some(name.to_string())
        }
        None => None,
    };
    let on_error = match get("on-error") {
        Some(value) => parse_on_error(&key("on-error"), value)?,
        None if phase == HookPhase::PostRestore => OnError::Continue,
        None => OnError::Fail,
    };
    let timeout_key = if phase == HookPhase::PostRestore {
        "exec-timeout"
    } else {
        "timeout"
    };
    let timeout = match get(timeout_key) {
        // Velero reads a zero timeout as "use the default".
        Some(value) => match parse_duration(&key(timeout_key), value)? {
            Duration::ZERO => DEFAULT_EXEC_TIMEOUT,
            timeout => timeout,
        },
        None => DEFAULT_EXEC_TIMEOUT,
    };
    let (wait_timeout, wait_for_ready) = if phase == HookPhase::PostRestore {
        let wait_timeout = match get("wait-timeout") {
            Some(value) => Some(parse_duration(&key("wait-timeout"), value)?)
                .filter(|timeout| !timeout.is_zero()),
            None => None,
        };
        let wait_for_ready = match get("wait-for-ready") {
            Some(value) => match value.trim() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(AnnotationError::InvalidBool {
                        annotation: key("wait-for-ready"),
                        value: value.to_string(),
                    });
                }
            },
            None => false,
        };
        (wait_timeout, wait_for_ready)
    } else {
        (None, false)
    };
    Ok(Some(ExecHook {
        phase,
        container,
        command,
        on_error,
        timeout,
        wait_timeout,
        wait_for_ready,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn pre_and_post_backup_hooks_take_velero_defaults() {
        let hooks = backup_hooks(&annotations(&[
            (
                "pre.hook.backup.velero.io/command",
                r#"["/bin/sh", "-c", "pg_dump > /data/dump.sql"]"#,
            ),
            ("post.hook.backup.velero.io/command", "/bin/unfreeze"),
            ("post.hook.backup.velero.io/container", "db"),
            ("post.hook.backup.velero.io/on-error", "Continue"),
            ("post.hook.backup.velero.io/timeout", "1m30s"),
        ]))
        .unwrap();
        let pre = hooks.pre[0].clone();
        assert_eq!(pre.phase, HookPhase::PreBackup);
        assert_eq!(pre.command, ["/bin/sh", "-c", "pg_dump > /data/dump.sql"]);
        assert_eq!(pre.container, None);
        assert_eq!(pre.on_error, OnError::Fail);
        assert_eq!(pre.timeout, Duration::from_secs(30));
        let post = hooks.post[0].clone();
        assert_eq!(post.command, ["/bin/unfreeze"]);
        assert_eq!(post.container.as_deref(), Some("db"));
        assert_eq!(post.on_error, OnError::Continue);
        assert_eq!(post.timeout, Duration::from_secs(90));
    }

    #[test]
    fn a_plain_command_is_one_argument_even_with_spaces() {
        let hooks = backup_hooks(&annotations(&[(
            "pre.hook.backup.velero.io/command",
            "/usr/bin/fsfreeze --freeze /data",
        )]))
        .unwrap();
        assert_eq!(hooks.pre[0].command, ["/usr/bin/fsfreeze --freeze /data"]);
    }

    #[test]
    fn legacy_annotations_declare_a_pre_hook_unless_pre_ones_do() {
        let legacy = annotations(&[
            ("hook.backup.velero.io/command", "legacy"),
            ("hook.backup.velero.io/on-error", "Continue"),
        ]);
        let pre = backup_hooks(&legacy).unwrap().pre.remove(0);
        assert_eq!(pre.command, ["legacy"]);
        assert_eq!(pre.on_error, OnError::Continue);
        assert_eq!(pre.phase, HookPhase::PreBackup);

        let mut both = legacy.clone();
        both.insert("pre.hook.backup.velero.io/command".into(), "new".into());
        let pre = backup_hooks(&both).unwrap().pre.remove(0);
        assert_eq!(pre.command, ["new"]);
        assert_eq!(
            pre.on_error,
            OnError::Fail,
            "legacy keys do not leak into the pre hook"
        );
    }

    #[test]
    fn hook_settings_without_a_command_declare_nothing() {
        let hooks = backup_hooks(&annotations(&[
            ("pre.hook.backup.velero.io/container", "db"),
            ("pre.hook.backup.velero.io/on-error", "whatever"),
            ("post.hook.backup.velero.io/command", "  "),
        ]))
        .unwrap();
        assert_eq!(hooks, BackupHooks::default());
    }

    #[test]
    fn bad_values_are_refused_naming_the_annotation() {
        let error = backup_hooks(&annotations(&[
            ("pre.hook.backup.velero.io/command", "x"),
            ("pre.hook.backup.velero.io/on-error", "continue"),
        ]))
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "annotation pre.hook.backup.velero.io/on-error: `continue` is not an on-error mode; use Continue or Fail"
        );

        let error = backup_hooks(&annotations(&[
            ("post.hook.backup.velero.io/command", "x"),
            ("post.hook.backup.velero.io/timeout", "30 seconds"),
        ]))
        .unwrap_err();
        assert!(
            matches!(&error, AnnotationError::InvalidDuration { annotation, value, .. }
                if annotation == "post.hook.backup.velero.io/timeout" && value == "30 seconds"),
            "{error}"
        );

        let error = backup_hooks(&annotations(&[(
            "pre.hook.backup.velero.io/command",
            r#"["/bin/sh", "-c", 3]"#,
        )]))
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("annotation pre.hook.backup.velero.io/command: `[\"/bin/sh\", \"-c\", 3]` starts with `[` but is not a JSON array of strings"),
            "{error}"
        );

        let error =
            backup_hooks(&annotations(&[("pre.hook.backup.velero.io/command", "[]")])).unwrap_err();
        assert_eq!(
            error,
            AnnotationError::EmptyCommand {
                annotation: "pre.hook.backup.velero.io/command".into()
            }
        );

        let error = backup_hooks(&annotations(&[
            ("pre.hook.backup.velero.io/command", "x"),
            ("pre.hook.backup.velero.io/container", "Db_1"),
        ]))
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("annotation pre.hook.backup.velero.io/container: `Db_1`"),
            "{error}"
        );
    }

    #[test]
    fn restore_exec_hook_continues_on_error_by_default_and_reads_its_waits() {
        let hook = restore_exec_hook(&annotations(&[
            ("post.hook.restore.velero.io/command", r#"["/bin/check"]"#),
            ("post.hook.restore.velero.io/exec-timeout", "2m"),
            ("post.hook.restore.velero.io/wait-timeout", "5m"),
            ("post.hook.restore.velero.io/wait-for-ready", "true"),
            // The backup hook's key means nothing to a restore hook.
            ("post.hook.restore.velero.io/timeout", "nonsense"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(hook.phase, HookPhase::PostRestore);
        assert_eq!(hook.on_error, OnError::Continue);
        assert_eq!(hook.timeout, Duration::from_secs(120));
        assert_eq!(hook.wait_timeout, Some(Duration::from_secs(300)));
        assert!(hook.wait_for_ready);

        let hook = restore_exec_hook(&annotations(&[
            ("post.hook.restore.velero.io/command", "x"),
            ("post.hook.restore.velero.io/on-error", "Fail"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(hook.on_error, OnError::Fail);
        assert_eq!(hook.timeout, DEFAULT_EXEC_TIMEOUT);
        assert_eq!(hook.wait_timeout, None);
        assert!(!hook.wait_for_ready);

        let error = restore_exec_hook(&annotations(&[
            ("post.hook.restore.velero.io/command", "x"),
            ("post.hook.restore.velero.io/wait-for-ready", "yes"),
        ]))
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "annotation post.hook.restore.velero.io/wait-for-ready: `yes` is not true or false"
        );
        assert_eq!(restore_exec_hook(&BTreeMap::new()).unwrap(), None);
    }

    #[test]
    fn init_hook_is_declared_by_its_image() {
        let hook = restore_init_hook(&annotations(&[
            (
                "init.hook.restore.velero.io/container-image",
                "busybox:1.36",
            ),
            ("init.hook.restore.velero.io/container-name", "fix-perms"),
            (
                "init.hook.restore.velero.io/command",
                r#"["/bin/sh", "-c", "chown -R 999 /data"]"#,
            ),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            hook,
            InitContainerHook {
                name: "fix-perms".into(),
                image: "busybox:1.36".into(),
                command: vec!["/bin/sh".into(), "-c".into(), "chown -R 999 /data".into()],
            }
        );

        let hook = restore_init_hook(&annotations(&[(
            "init.hook.restore.velero.io/container-image",
            "busybox",
        )]))
        .unwrap()
        .unwrap();
        assert_eq!(hook.name, DEFAULT_INIT_CONTAINER_NAME);
        assert!(hook.command.is_empty(), "the image's entrypoint runs");

        assert_eq!(
            restore_init_hook(&annotations(&[(
                "init.hook.restore.velero.io/command",
                "x"
            )]))
            .unwrap(),
            None
        );
    }

    #[test]
    fn init_hook_container_goes_right_after_the_restore_helper() {
        let hook = InitContainerHook {
            name: "fix-perms".into(),
            image: "busybox".into(),
            command: vec!["chown".into(), "-R".into(), "999".into(), "/data".into()],
        };
        let mut init = vec![
            serde_json::json!({"name": "restore-wait", "image": "helper"}),
            serde_json::json!({"name": "migrate", "image": "app"}),
        ];
        hook.insert_into(&mut init, "restore-wait").unwrap();
        let names: Vec<&str> = init.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["restore-wait", "fix-perms", "migrate"]);
        assert_eq!(
            init[1],
            serde_json::json!({"name": "fix-perms", "image": "busybox", "command": ["chown", "-R", "999", "/data"]})
        );
        let error = hook.insert_into(&mut init, "restore-wait").unwrap_err();
        assert_eq!(
            error.to_string(),
            "annotation init.hook.restore.velero.io/container-name: the pod already has a container named `fix-perms`"
        );

        let entrypoint = InitContainerHook {
            name: "warm".into(),
            image: "busybox".into(),
            command: vec![],
        };
        let mut no_helper = vec![serde_json::json!({"name": "migrate"})];
        entrypoint
            .insert_into(&mut no_helper, "restore-wait")
            .unwrap();
        assert_eq!(
            no_helper[0],
            serde_json::json!({"name": "warm", "image": "busybox"})
        );
    }

    #[test]
    fn durations_read_as_go_writes_them() {
        let parse = |text: &str| parse_duration("a", text);
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("2m3s4ms").unwrap(), Duration::from_millis(123_004));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        for bad in ["", "10", "-5s", "5 s", "1d", "s", "1..5s"] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
