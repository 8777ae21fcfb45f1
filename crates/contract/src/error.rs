//! Why an input breaks a rule of the contract; every variant names the field and the value.

/// An input that breaks one of the contract's rules.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    #[error("{field} is empty")]
    Empty { field: String },
    #[error("{field} `{value}` is not a {rule}: it {reason}")]
    InvalidName {
        field: String,
        value: String,
        rule: &'static str,
        reason: &'static str,
    },
    #[error("snapshot tag `{tag}` cannot be stored: {reason}")]
    InvalidTag { tag: String, reason: &'static str },
    #[error("stable identity `{value}` is not one stowage builds: {reason}")]
    InvalidIdentity { value: String, reason: &'static str },
    #[error("{field}: path pattern `{pattern}` {reason}")]
    InvalidPathPattern {
        field: String,
        pattern: String,
        reason: String,
    },
    #[error("restore uid `{value}` {reason}")]
    InvalidRestoreUid { value: String, reason: &'static str },
}

/// `value` as an error message shows it: control characters escaped, at most 300 characters, so
/// a hostile input cannot forge log lines or flood them.
pub fn shown(value: &str) -> String {
    value.escape_debug().to_string().chars().take(300).collect()
}
