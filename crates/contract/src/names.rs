//! Rules for the names that become Kubernetes names, object-store keys and snapshot tags: a
//! namespace is a DNS-1123 label (no dots, as the API server requires of namespaces), a backup or
//! a restore is named as most objects are, a DNS-1123 subdomain, but of at most 63 characters,
//! as its name is also a label value (`velero.io/backup-name`). Every error names the field and
//! the value, and says which part of the rule it breaks.

use crate::{ContractError, error::shown};

/// The longest DNS-1123 label (a namespace, one part of a subdomain).
pub const MAX_LABEL: usize = 63;
/// The longest DNS-1123 subdomain (a backup, a restore, a pod).
pub const MAX_SUBDOMAIN: usize = 253;

const LABEL: &str = "DNS-1123 label";
const SUBDOMAIN: &str = "DNS-1123 subdomain";

fn label_problem(label: &str) -> Option<&'static str> {
    if label.is_empty() {
        Some("has an empty label")
    } else if label.len() > MAX_LABEL {
        Some("has a label longer than 63 characters")
    } else if !label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("may only hold lower-case letters, digits and `-`")
    } else if label.starts_with('-') || label.ends_with('-') {
        Some("must start and end with a letter or digit")
    } else {
        None
    }
}

fn invalid(field: &str, value: &str, rule: &'static str, reason: &'static str) -> ContractError {
    ContractError::InvalidName {
        field: field.to_string(),
        value: shown(value),
        rule,
        reason,
    }
}

/// A DNS-1123 label: lower-case letters, digits and `-`, at most 63, starting and ending with a
/// letter or digit. `field` names the input in the error.
pub fn dns_label(field: &str, value: &str) -> Result<(), ContractError> {
    if value.is_empty() {
        return Err(ContractError::Empty {
            field: field.to_string(),
        });
    }
    // Said apart: a dotted namespace is the usual mistake (a subdomain where a label is due).
    if value.contains('.') {
        return Err(invalid(field, value, LABEL, "may not hold a `.`"));
    }
    match label_problem(value) {
        Some(reason) => Err(invalid(field, value, LABEL, reason)),
        None => Ok(()),
    }
}

/// A DNS-1123 subdomain: DNS-1123 labels joined by `.`, at most 253 characters.
pub fn dns_subdomain(field: &str, value: &str) -> Result<(), ContractError> {
    if value.is_empty() {
        return Err(ContractError::Empty {
            field: field.to_string(),
        });
    }
    if value.len() > MAX_SUBDOMAIN {
        return Err(invalid(
            field,
            value,
            SUBDOMAIN,
            "is longer than 253 characters",
        ));
    }
    match value.split('.').find_map(label_problem) {
        Some(reason) => Err(invalid(field, value, SUBDOMAIN, reason)),
        None => Ok(()),
    }
}

/// A namespace name, as the API server accepts it: a DNS-1123 label.
pub fn namespace(field: &str, value: &str) -> Result<(), ContractError> {
    dns_label(field, value)
}

/// Whether `value` is a namespace name the API server accepts.
pub fn is_namespace(value: &str) -> bool {
    namespace("namespace", value).is_ok()
}

/// The name of a run (backup or restore): a subdomain that also fits a label value.
fn run_name(field: &str, value: &str) -> Result<(), ContractError> {
    dns_subdomain(field, value)?;
    if value.len() > MAX_LABEL {
        return Err(invalid(
            field,
            value,
            SUBDOMAIN,
            "is longer than 63 characters, the most a label value (`velero.io/backup-name`) holds",
        ));
    }
    Ok(())
}

/// A backup's name: a DNS-1123 subdomain of at most 63 characters; it names
/// `backups/<name>/` in the bucket and is the `velero.io/backup-name` label's value.
pub fn backup_name(field: &str, value: &str) -> Result<(), ContractError> {
    run_name(field, value)
}

/// A restore's name: as a backup's (`restores/<name>/`, `velero.io/restore-name`).
pub fn restore_name(field: &str, value: &str) -> Result<(), ContractError> {
    run_name(field, value)
}

/// Whether `value` is a name a backup or a restore may have.
pub fn is_run_name(value: &str) -> bool {
    run_name("name", value).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn namespaces_are_labels_without_dots() {
        for good in ["shop", "a", "db-0", &"a".repeat(63)] {
            assert!(namespace("namespace", good).is_ok(), "{good}");
            assert!(is_namespace(good), "{good}");
        }
        for bad in ["Shop", "-a", "a-", "a_b", &"a".repeat(64), "a\0"] {
            let error = namespace("namespace", bad).unwrap_err().to_string();
            assert!(error.starts_with("namespace `"), "{error}");
            assert!(error.contains("is not a DNS-1123 label"), "{error}");
        }
        let dotted = namespace("spec.namespace", "kube.system")
            .unwrap_err()
            .to_string();
        assert_eq!(
            dotted,
            "spec.namespace `kube.system` is not a DNS-1123 label: it may not hold a `.`"
        );
        assert_eq!(
            namespace("namespace", "").unwrap_err().to_string(),
            "namespace is empty"
        );
    }

    #[test]
    fn backup_and_restore_names_are_subdomains() {
        assert!(backup_name("backup name", "nightly.2026-12-01").is_ok());
        assert!(restore_name("restore name", "nightly-restore").is_ok());
        for bad in ["a..b", ".a", "a.", "A", "a/b", "a b", &"a.".repeat(127)] {
            let error = backup_name("backup name", bad).unwrap_err().to_string();
            assert!(error.starts_with("backup name `"), "{bad}: {error}");
            let error = restore_name("restore name", bad).unwrap_err().to_string();
            assert!(
                error.contains("is not a DNS-1123 subdomain"),
                "{bad}: {error}"
            );
        }
        let long = "a".repeat(254);
        assert!(
            backup_name("name", &long)
                .unwrap_err()
                .to_string()
                .contains("longer than 253")
        );
        // A label value holds 63 characters: the name is one.
        let dotted = format!("{}.{}", "a".repeat(40), "b".repeat(22));
        assert!(is_run_name(&dotted), "{}", dotted.len());
        let error = restore_name("restore name", &format!("{dotted}c"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("longer than 63"), "{error}");
        assert!(dns_subdomain("pod_name", &format!("{dotted}c")).is_ok());
    }

    #[test]
    fn errors_escape_and_shorten_the_value() {
        let error = dns_label("namespace", "a\nb").unwrap_err().to_string();
        assert!(error.contains("a\\nb"), "{error}");
        let error = dns_label("namespace", &"X".repeat(1000))
            .unwrap_err()
            .to_string();
        assert!(error.len() < 400, "{}", error.len());
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
    }

    proptest! {
        #[test]
        fn generated_kubernetes_names_are_accepted(labels in prop::collection::vec(label(), 1..4)) {
            let name = labels.join(".");
            prop_assume!(name.len() <= 253);
            prop_assert!(dns_subdomain("pod_name", &name).is_ok());
            prop_assert!(namespace("namespace", &labels[0]).is_ok());
        }

        #[test]
        fn accepted_names_hold_nothing_a_path_key_or_tag_could_misread(name in "\\PC{0,80}") {
            if dns_subdomain("name", &name).is_ok() {
                prop_assert!(!name.contains(['/', '\0', ',', '=', ' ']));
                prop_assert!(!name.contains(".."));
                prop_assert!(!name.starts_with(['-', '.']));
            }
            if is_namespace(&name) {
                prop_assert!(!name.contains('.'));
            }
        }
    }
}
