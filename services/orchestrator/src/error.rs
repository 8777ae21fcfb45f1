//! The orchestrator's domain errors. Each variant names the failure and the input that caused
//! it; `api.rs` maps them to gRPC status codes in one place.

use stowage_proto::prost_types;
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {what} `{value}`: {reason}")]
    InvalidArgument {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("backup `{0}` not found")]
    BackupNotFound(String),
    #[error("restore `{0}` not found")]
    RestoreNotFound(String),
    /// A volume a restore names that the backup (or the location, for `as_of`) does not have,
    /// or a target claim that does not exist; the text names it.
    #[error("{0}")]
    VolumeNotFound(String),
    #[error("backup `{0}` already exists")]
    BackupExists(String),
    #[error("restore `{0}` already exists")]
    RestoreExists(String),
    #[error("schedule `{0}` not found")]
    ScheduleNotFound(String),
    #[error("schedule `{0}` already exists")]
    ScheduleExists(String),
    #[error("backup `{name}` is {phase}: {reason}")]
    BackupNotRestorable {
        name: String,
        phase: String,
        reason: String,
    },
    #[error("{0}")]
    Precondition(String),
    #[error("no agent on node {0}")]
    NoAgent(String),
    #[error("no Kubernetes API is configured; {0} needs one")]
    NoCluster(&'static str),
    #[error("Kubernetes API: {action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: ::kube::Error,
    },
    #[error("{service}: {action}: {}", status_text(status))]
    Rpc {
        service: &'static str,
        action: String,
        status: tonic::Status,
    },
    #[error("object store: {0}")]
    Store(String),
    #[error(transparent)]
    Repository(#[from] crate::repositories::Unusable),
    /// A name or other input that breaks a rule every stowage process applies.
    #[error(transparent)]
    Contract(#[from] stowage_contract::ContractError),
    /// A Kubernetes object that should not exist yet does.
    #[error("{0}")]
    Conflict(String),
    #[error("{}", agent_failure(node, status))]
    Agent { node: String, status: tonic::Status },
    /// A run or volume reached its wall-clock timeout.
    #[error("timed out after {}", crate::engine::go_duration(*after))]
    TimedOut { after: std::time::Duration },
    /// restic reported no new bytes or files for `idle`; `last` is what it reported last.
    #[error("stalled: no progress for {} (last: {last})", crate::engine::go_duration(*idle))]
    Stalled {
        idle: std::time::Duration,
        last: String,
    },
    #[error("{0}")]
    Failed(String),
    /// This process's leader term ended; another replica leads (see `fencing.rs`).
    #[error("{0}")]
    NotLeader(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn kube(action: impl Into<String>) -> impl FnOnce(::kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Kube { action, source }
    }

    pub fn rpc(
        service: &'static str,
        action: impl Into<String>,
    ) -> impl FnOnce(tonic::Status) -> Error {
        let action = action.into();
        move |status| Error::Rpc {
            service,
            action,
            status,
        }
    }

    /// The gRPC code this error is reported with.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument { .. } | Error::Contract(_) => Code::InvalidArgument,
            Error::BackupNotFound(_)
            | Error::RestoreNotFound(_)
            | Error::ScheduleNotFound(_)
            | Error::VolumeNotFound(_) => Code::NotFound,
            Error::BackupExists(_) | Error::RestoreExists(_) | Error::ScheduleExists(_) => {
                Code::AlreadyExists
            }
            Error::BackupNotRestorable { .. } | Error::NoCluster(_) | Error::Precondition(_) => {
                Code::FailedPrecondition
            }
            Error::NoAgent(_) | Error::NotLeader(_) => Code::Unavailable,
            Error::Conflict(_) => Code::AlreadyExists,
            Error::Repository(_) => Code::FailedPrecondition,
            Error::Agent { status, .. } => status.code(),
            Error::TimedOut { .. } | Error::Stalled { .. } => Code::DeadlineExceeded,
            Error::Kube { .. } | Error::Store(_) => Code::Unavailable,
            Error::Rpc { status, .. } => status.code(),
            Error::Failed(_) => Code::Internal,
        }
    }
}

/// A gRPC status as a person reads it, its code and message (`Unavailable: no route to host`)
/// and the transport error behind it if any; tonic's own Display adds `details: [],
/// metadata: MetadataMap {…}`, which ends up in volume errors and logs.
pub fn status_text(status: &tonic::Status) -> String {
    let message = status.message().trim();
    let mut text = if message.is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {message}", status.code())
    };
    if let Some(source) = std::error::Error::source(status) {
        let causes = cause_chain(source);
        if !text.contains(&causes) {
            text.push_str(&format!(" ({causes})"));
        }
    }
    text
}

/// Why a call to the agent of `node` failed, for a volume's error message. A status made on
/// this side from a transport error (it has a source; one the agent sent has none) means the
/// connection broke or never came up: a refused certificate is told apart from a killed
/// agent, since the fixes differ.
pub fn agent_failure(node: &str, status: &tonic::Status) -> String {
    let Some(source) = std::error::Error::source(status) else {
        return format!("agent on node {node}: {}", status.message());
    };
    let causes = cause_chain(source);
    if causes.to_ascii_lowercase().contains("certificate") {
        format!(
            "no TLS connection to the agent on node {node} ({causes}): check that the agent's \
             certificate is signed by the CA in --tls-ca and carries the name in --tls-server-name"
        )
    } else {
        format!(
            "lost the connection to the agent on node {node} ({causes}): was the agent killed or restarted?"
        )
    }
}

/// `error` and its sources, outermost first, without repeating a message a wrapper already
/// includes.
fn cause_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(error) = next {
        let text = error.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        next = error.source();
    }
    parts.join(": ")
}

/// Checks a backup or restore name: a DNS-1123 subdomain (the contract's rule, which every
/// stowage process applies), and at most 63 characters, because it also becomes a Kubernetes
/// label value (`velero.io/backup-name`) that selects its objects.
pub fn validate_name(what: &'static str, name: &str) -> Result<()> {
    stowage_contract::names::dns_subdomain(what, name)?;
    if name.len() > stowage_contract::names::MAX_LABEL {
        return Err(Error::InvalidArgument {
            what,
            value: name.to_string(),
            reason: "must be at most 63 characters".to_string(),
        });
    }
    Ok(())
}

/// Checks a namespace name as the API server and the repo-manager do: a DNS-1123 label, no dots.
pub fn validate_namespace(name: &str) -> Result<()> {
    Ok(stowage_contract::names::namespace("namespace", name)?)
}

/// Checks a label selector's `key=value` pairs as Kubernetes label keys and values, so a bad
/// selector is refused when the backup is created rather than by the API server mid-backup.
pub fn validate_label_selector(selector: &std::collections::HashMap<String, String>) -> Result<()> {
    for (key, value) in selector {
        let invalid = |reason: String| Error::InvalidArgument {
            what: "label selector",
            value: format!("{key}={value}"),
            reason,
        };
        let (prefix, name) = match key.rsplit_once('/') {
            Some((prefix, name)) => (Some(prefix), name),
            None => (None, key.as_str()),
        };
        if let Some(prefix) = prefix {
            let dns_label = |part: &str| {
                !part.is_empty()
                    && part.len() <= 63
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            };
            if prefix.is_empty() || prefix.len() > 253 || !prefix.split('.').all(dns_label) {
                return Err(invalid(format!(
                    "key prefix `{prefix}` must be a DNS subdomain"
                )));
            }
        }
        if name.is_empty() {
            return Err(invalid("key must have a name".into()));
        }
        check_label_part(name).map_err(|reason| invalid(format!("key {reason}")))?;
        if !value.is_empty() {
            check_label_part(value).map_err(|reason| invalid(format!("value {reason}")))?;
        }
    }
    Ok(())
}

/// A label name or value: at most 63 characters, letters, digits, `-`, `_` and `.`, starting
/// and ending with a letter or digit.
fn check_label_part(part: &str) -> std::result::Result<(), &'static str> {
    if part.len() > 63 {
        return Err("must be at most 63 characters");
    }
    if !part
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("must consist of letters, digits, `-`, `_` and `.`");
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(part.chars().next()) || !alnum(part.chars().last()) {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

/// Checks that a duration given in a request is not negative; `what` names the field.
pub fn validate_duration(
    what: &'static str,
    duration: Option<&prost_types::Duration>,
) -> Result<()> {
    match duration {
        Some(duration) if duration.seconds < 0 || duration.nanos < 0 => {
            Err(Error::InvalidArgument {
                what,
                value: format!("{}s", duration.seconds),
                reason: "must not be negative".into(),
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_call_reads_as_its_code_and_message() {
        let error = Error::Rpc {
            service: "repo-manager",
            action: "repository access".into(),
            status: tonic::Status::unavailable("repo-manager is restarting"),
        };
        assert_eq!(
            error.to_string(),
            "repo-manager: repository access: Unavailable: repo-manager is restarting"
        );
        let broken = tonic::Status::from_error(Box::new(std::io::Error::other("connection reset")));
        let text = status_text(&broken);
        assert!(text.contains("connection reset"), "{text}");
        for raw in ["status:", "details:", "metadata", "MetadataMap"] {
            assert!(!text.contains(raw), "{text}");
        }
    }

    #[test]
    fn a_broken_connection_is_told_apart_from_the_agent_s_own_error() {
        let broken = tonic::Status::from_error(Box::new(std::io::Error::other("connection reset")));
        let message = agent_failure("node-a", &broken);
        assert!(
            message.starts_with("lost the connection to the agent on node node-a"),
            "{message}"
        );
        let refused = tonic::Status::failed_precondition("restic binary missing");
        assert_eq!(
            agent_failure("node-a", &refused),
            "agent on node node-a: restic binary missing"
        );
    }

    #[derive(Debug)]
    struct Wrapped(&'static str, std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.1)
        }
    }

    #[test]
    fn a_refused_certificate_is_not_reported_as_a_killed_agent() {
        let tls = tonic::Status::from_error(Box::new(Wrapped(
            "transport error",
            std::io::Error::other("invalid peer certificate: NotValidForName"),
        )));
        let message = agent_failure("node-a", &tls);
        assert!(
            message.starts_with("no TLS connection to the agent on node node-a"),
            "{message}"
        );
        assert!(message.contains("NotValidForName"), "{message}");
        assert!(!message.contains("killed"), "{message}");
    }

    #[test]
    fn label_selectors_are_checked_as_kubernetes_labels() {
        let selector = |key: &str, value: &str| {
            std::collections::HashMap::from([(key.to_string(), value.to_string())])
        };
        for (key, value) in [
            ("app", "db"),
            ("app.kubernetes.io/name", "postgres-14"),
            ("tier", ""),
            ("A_b.c", "X.y_z"),
        ] {
            assert!(
                validate_label_selector(&selector(key, value)).is_ok(),
                "{key}={value}"
            );
        }
        for (key, value) in [
            ("app name", "db"),
            ("", "db"),
            ("app", "d b"),
            ("app", "-db"),
            ("/app", "db"),
            ("Example.com/app", "db"),
            ("app", &"v".repeat(64)),
        ] {
            let error = validate_label_selector(&selector(key, value)).unwrap_err();
            assert_eq!(error.code(), Code::InvalidArgument, "{key}={value}");
            assert!(error.to_string().contains("label selector"), "{error}");
        }
    }

    #[test]
    fn negative_durations_are_refused_naming_the_field() {
        let negative = prost_types::Duration {
            seconds: -60,
            nanos: 0,
        };
        let error = validate_duration("ttl", Some(&negative)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid ttl `-60s`: must not be negative"
        );
        assert!(validate_duration("ttl", None).is_ok());
        assert!(validate_duration("ttl", Some(&prost_types::Duration::default())).is_ok());
    }

    #[test]
    fn namespaces_are_labels_as_the_repo_manager_requires() {
        assert!(validate_namespace("shop-1").is_ok());
        for bad in ["shop.eu", "Shop", "", "-shop"] {
            let error = validate_namespace(bad).unwrap_err();
            assert_eq!(error.code(), Code::InvalidArgument, "{bad}");
        }
        let error = validate_namespace("shop.eu").unwrap_err();
        assert!(error.to_string().contains("shop.eu"), "{error}");
    }

    #[test]
    fn dns_names_are_accepted() {
        for name in ["nightly", "a", "backup-2024.01.01", "x1"] {
            assert!(validate_name("backup name", name).is_ok(), "{name}");
        }
    }

    #[test]
    fn bad_names_are_invalid_arguments() {
        for name in [
            "",
            "Nightly",
            "-a",
            "a-",
            "a_b",
            "a/b",
            "ä",
            &"a".repeat(64),
        ] {
            let error = validate_name("backup name", name).unwrap_err();
            assert_eq!(error.code(), Code::InvalidArgument, "{name}");
        }
    }
}
