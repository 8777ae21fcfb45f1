//! Checks of request fields that become Kubernetes names, restic snapshot ids and restic's
//! environment, applied at the edge before anything runs. Kubernetes names follow the rules
//! every stowage process shares (`stowage_contract::names`); path components are checked in
//! `volume_path`.

use stowage_contract::{ContractError, names as contract, shown};

use crate::error::AgentError;

fn invalid(field: &str, value: &str, reason: &str) -> AgentError {
    AgentError::InvalidRequest(format!("{field} `{}` {reason}", shown(value)))
}

/// A contract rule broken by a request field, as the agent reports bad input.
pub fn refused(error: ContractError) -> AgentError {
    AgentError::InvalidRequest(error.to_string())
}

/// Path patterns relative to the volume root, checked as the orchestrator checks them (a
/// caller other than the orchestrator is not trusted to have), returned normalised.
pub fn path_patterns(field: &str, patterns: &[String]) -> Result<Vec<String>, AgentError> {
    patterns
        .iter()
        .map(|pattern| stowage_contract::paths::pattern(field, pattern).map_err(refused))
        .collect()
}

/// An RFC 1123 label, as namespaces are named.
pub fn dns_label(field: &str, value: &str) -> Result<(), AgentError> {
    contract::namespace(field, value).map_err(refused)
}

/// An RFC 1123 subdomain, as pods and most objects are named.
pub fn dns_subdomain(field: &str, value: &str) -> Result<(), AgentError> {
    contract::dns_subdomain(field, value).map_err(refused)
}

/// restic snapshot ids are hex: the 8-digit short form up to the full 64 digits.
pub fn snapshot_id(value: &str) -> Result<(), AgentError> {
    snapshot_id_field("snapshot_id", value)
}

/// [`snapshot_id`] for a request field of another name (`parent_snapshot_id`).
pub fn snapshot_id_field(field: &str, value: &str) -> Result<(), AgentError> {
    if value.is_empty() {
        return Err(AgentError::InvalidRequest(format!("{field} is empty")));
    }
    if (8..=64).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(invalid(
            field,
            value,
            "is not a restic snapshot id (8 to 64 hex digits)",
        ))
    }
}

/// An operation id only keys the agent's operation table and logs, but it is echoed in every
/// message, so it stays short and printable.
pub fn operation_id(value: &str) -> Result<(), AgentError> {
    if value.is_empty() {
        return Err(AgentError::InvalidRequest("operation_id is empty".into()));
    }
    if value.len() > 253 || value.chars().any(char::is_control) {
        return Err(invalid(
            "operation_id",
            value,
            "must be at most 253 printable characters",
        ));
    }
    Ok(())
}

/// The environment a request may give restic: object-store credentials and settings only.
/// Anything else could change what restic runs (`RESTIC_PASSWORD_COMMAND`, `LD_PRELOAD`) or
/// where it writes (`RESTIC_CACHE_DIR`).
const ENV_PREFIXES: &[&str] = &["AWS_", "AZURE_", "GOOGLE_", "B2_", "OS_", "ST_"];

pub fn repository_env_key(key: &str) -> Result<(), AgentError> {
    let well_formed = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if well_formed && ENV_PREFIXES.iter().any(|prefix| key.starts_with(prefix)) {
        Ok(())
    } else {
        Err(invalid(
            "repository.env key",
            key,
            &format!(
                "is not an object-store setting restic may be given (allowed: {}*)",
                ENV_PREFIXES.join("*, ")
            ),
        ))
    }
}

/// The repository URL reaches restic through its environment, never argv, but a NUL or a line
/// break in it can only be an attack or a bug.
pub fn repository_url(value: &str) -> Result<(), AgentError> {
    if value.is_empty() {
        return Err(AgentError::InvalidRequest("repository url is empty".into()));
    }
    if value.chars().any(char::is_control) || value.starts_with('-') {
        return Err(invalid(
            "repository url",
            value,
            "holds control characters or starts with `-`",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The name rule itself, and its properties, are proven in `stowage_contract::names`; here
    /// only that the agent applies it to the field it names and refuses as bad input.
    #[test]
    fn kubernetes_names() {
        for good in ["shop", "a", "db-0", &"a".repeat(63)] {
            assert!(dns_label("namespace", good).is_ok(), "{good}");
        }
        for bad in ["", "Shop", "-a", "a-", "a.b", "a_b", &"a".repeat(64), "a\0"] {
            let error = dns_label("namespace", bad).unwrap_err().to_string();
            assert!(error.starts_with("invalid request: namespace"), "{error}");
        }
        assert!(dns_subdomain("pod_name", "web-0.cache").is_ok());
        for bad in ["a..b", ".a", "a.", "A", "a/b", "a b", &"a.".repeat(127)] {
            let error = dns_subdomain("pod_name", bad).unwrap_err().to_string();
            assert!(error.contains("pod_name"), "{bad}: {error}");
        }
    }

    #[test]
    fn snapshot_ids_are_hex_of_restic_lengths() {
        assert!(snapshot_id("1a2b3c4d").is_ok());
        assert!(snapshot_id(&"f".repeat(64)).is_ok());
        for bad in [
            "",
            "1a2b3c4",
            "latest",
            "-1a2b3c4d",
            "1a2b3c4d/..",
            &"f".repeat(65),
        ] {
            assert!(snapshot_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn restic_environment_is_limited_to_object_store_settings() {
        for good in [
            "AWS_ACCESS_KEY_ID",
            "AZURE_ACCOUNT_KEY",
            "GOOGLE_PROJECT_ID",
            "B2_ACCOUNT_ID",
        ] {
            assert!(repository_env_key(good).is_ok(), "{good}");
        }
        for bad in [
            "RESTIC_PASSWORD_COMMAND",
            "RESTIC_CACHE_DIR",
            "LD_PRELOAD",
            "PATH",
            "aws_secret",
            "AWS_=x",
            "",
        ] {
            let error = repository_env_key(bad).unwrap_err().to_string();
            assert!(error.contains("repository.env key"), "{error}");
        }
    }

    proptest! {
        #[test]
        fn accepted_snapshot_ids_hold_nothing_a_path_or_argv_could_misread(name in "\\PC{0,80}") {
            if snapshot_id(&name).is_ok() {
                prop_assert!(name.bytes().all(|b| b.is_ascii_hexdigit()));
            }
        }
    }
}
