//! What can go wrong in a command, each as one plain sentence for the user: the CLI prints
//! the message alone on stderr and exits non-zero, so the wording here is the user interface.

use std::error::Error as _;

use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "cannot reach the stowage server at {server} ({cause}); is the orchestrator running, and is the address right (--server, STOWAGE_SERVER or the context's server)?"
    )]
    Unreachable { server: String, cause: String },
    #[error(
        "cannot reach the stowage server at {server} ({cause}); if it serves TLS, give --cacert (and --cert/--key or --token-file), or use a context that has them"
    )]
    MaybeTls { server: String, cause: String },
    #[error(
        "the TLS connection to the stowage server at {server} failed ({cause}); check --cacert (the CA that signed the server's certificate) and --cert/--key"
    )]
    TlsFailed { server: String, cause: String },
    #[error("the stowage server at {server} refused the call: {message}; {hint}")]
    Refused {
        server: String,
        message: String,
        hint: &'static str,
    },
    #[error("reading {what} {path} ({flag}): {cause}")]
    CredentialFile {
        what: &'static str,
        flag: &'static str,
        path: String,
        cause: String,
    },
    #[error("{0}")]
    Config(String),
    #[error("`{server}` is not a server address: write it like http://127.0.0.1:8080")]
    BadServer { server: String },
    #[error("{kind} \"{name}\" not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} \"{name}\" already exists")]
    AlreadyExists { kind: &'static str, name: String },
    #[error("the server at {server} does not support {call} yet ({message})")]
    Unimplemented {
        server: String,
        call: &'static str,
        message: String,
    },
    #[error("{action} failed: {message}")]
    Server { action: String, message: String },
    #[error(
        "{task} of the repository of namespace \"{namespace}\" failed after {duration}: {message}"
    )]
    MaintenanceFailed {
        task: &'static str,
        namespace: String,
        duration: String,
        message: String,
    },
    #[error(
        "{kind} \"{name}\" ended {phase}{reason}; run `stowage {command} describe {name} --details`"
    )]
    EndedUnsuccessfully {
        kind: &'static str,
        command: &'static str,
        name: String,
        phase: String,
        reason: String,
    },
    #[error(
        "lost the connection to the stowage server at {server} while waiting ({cause}); the {kind} may still be running: see `stowage {kind} describe {name}`"
    )]
    ConnectionLost {
        server: String,
        kind: &'static str,
        name: String,
        cause: String,
    },
    #[error("{0}")]
    Usage(String),
    #[error("writing the output: {0}")]
    Output(String),
}

/// The innermost cause of a transport error: tonic says "transport error", the OS says
/// "Connection refused".
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current: &(dyn std::error::Error + 'static) = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// What the CLI was doing when a call failed, to name it in the sentence.
#[derive(Debug, Clone)]
pub struct Call {
    /// The RPC, e.g. `GetBackup`.
    pub rpc: &'static str,
    /// `backup`, `restore`, `repository`…
    pub kind: &'static str,
    /// The object's name; empty for lists.
    pub name: String,
    /// In words: `getting backup "nightly"`.
    pub action: String,
}

impl Call {
    /// A call about one object (`kind` singular), or about a collection when `name` is empty
    /// (`kind` then in the plural, as it reads: `listing backups`).
    pub fn new(rpc: &'static str, kind: &'static str, name: &str, verb: &str) -> Call {
        let action = if name.is_empty() {
            format!("{verb} {kind}")
        } else {
            format!("{verb} {kind} \"{name}\"")
        };
        Call {
            rpc,
            kind,
            name: name.to_string(),
            action,
        }
    }
}

/// Turns a gRPC status into the sentence for the user. The server's own message is kept
/// where it says more than the code (validation errors), and trimmed to its first line.
pub fn from_status(status: &tonic::Status, call: &Call, server: &str) -> CliError {
    let message = status
        .message()
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .trim_end_matches('.')
        .to_string();
    match status.code() {
        // A status with a source was made by this client's tonic from a transport or HTTP/2
        // error (Unavailable when the connection failed; Unknown, Cancelled or Internal when TLS
        // or the protocol broke it afterwards, e.g. a refused client certificate or plaintext
        // at a TLS port); a status the server sent has none and is the server's sentence.
        _ if status.source().is_some() => CliError::Unreachable {
            server: server.to_string(),
            cause: status
                .source()
                .map(root_cause)
                .unwrap_or_else(|| message.clone()),
        },
        Code::NotFound if !call.name.is_empty() => CliError::NotFound {
            kind: call.kind,
            name: call.name.clone(),
        },
        Code::AlreadyExists if !call.name.is_empty() => CliError::AlreadyExists {
            kind: call.kind,
            name: call.name.clone(),
        },
        Code::Unauthenticated => CliError::Refused {
            server: server.to_string(),
            message,
            hint: "give a client certificate (--cert/--key with --cacert) or a bearer token \
                   (--token-file), or use a context that has them (`stowage config get-contexts`)",
        },
        Code::PermissionDenied => CliError::Refused {
            server: server.to_string(),
            message,
            hint: "present a certificate with an identity the server allows",
        },
        Code::Unimplemented => CliError::Unimplemented {
            server: server.to_string(),
            call: call.rpc,
            message,
        },
        _ => CliError::Server {
            action: call.action.clone(),
            message: if message.is_empty() {
                format!("{:?}", status.code())
            } else {
                message
            },
        },
    }
}

/// The sentence of a failed `repo maintain`, saying restic's message once: on one line, or,
/// when the result was printed as json/yaml, where in it to read the message.
pub fn maintenance_failed(
    result: &crate::view::MaintenanceResultView,
    task: &'static str,
    namespace: &str,
    printed: bool,
) -> CliError {
    let message = crate::render::one_line(&result.message);
    CliError::MaintenanceFailed {
        task,
        namespace: namespace.to_string(),
        duration: crate::table::human_seconds(result.duration_seconds),
        message: if printed {
            "restic's message is the result's `message`".to_string()
        } else if message.is_empty() {
            "restic gave no message".to_string()
        } else {
            message
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_maintenance_says_restic_s_message_once_on_one_line() {
        let result = crate::view::MaintenanceResultView {
            namespace: "foo".into(),
            kind: "Check".into(),
            succeeded: false,
            message: "restic check failed with exit code 1: using temporary cache\n\
                      error: load <data/4f5a>: file does not exist\n\n\
                      Fatal: repository contains errors\n"
                .into(),
            duration_seconds: 1.3,
            finished: None,
        };
        // Nothing on stdout in table mode: the error is the one place it is said.
        assert_eq!(
            crate::render::maintenance_result(&result, "check", "foo"),
            None
        );
        let text = maintenance_failed(&result, "check", "foo", false).to_string();
        assert_eq!(
            text,
            "check of the repository of namespace \"foo\" failed after 1.3s: restic check failed \
             with exit code 1: using temporary cache; error: load <data/4f5a>: file does not \
             exist; Fatal: repository contains errors"
        );
        assert!(!text.contains('\n'));
        let printed = maintenance_failed(&result, "check", "foo", true).to_string();
        assert!(!printed.contains("Fatal"), "{printed}");
        let ok = crate::view::MaintenanceResultView {
            succeeded: true,
            ..result
        };
        assert_eq!(
            crate::render::maintenance_result(&ok, "prune", "foo").as_deref(),
            Some("prune of the repository of namespace \"foo\" succeeded in 1.3s.\n")
        );
    }

    #[test]
    fn not_found_names_the_object() {
        let call = Call::new("GetBackup", "backup", "nightly", "getting");
        let error = from_status(
            &tonic::Status::not_found("no such thing"),
            &call,
            "http://x",
        );
        assert_eq!(error.to_string(), "backup \"nightly\" not found");
    }

    #[test]
    fn other_errors_keep_the_first_line_of_the_server_message() {
        let call = Call::new("CreateBackup", "backup", "Bad_Name", "creating");
        let error = from_status(
            &tonic::Status::invalid_argument("name must be a DNS-1123 subdomain.\ndetails"),
            &call,
            "http://x",
        );
        assert_eq!(
            error.to_string(),
            "creating backup \"Bad_Name\" failed: name must be a DNS-1123 subdomain"
        );
        let list = Call::new("ListBackups", "backups", "", "listing");
        let error = from_status(&tonic::Status::internal(""), &list, "http://x");
        assert_eq!(error.to_string(), "listing backups failed: Internal");
    }

    #[test]
    fn unavailable_from_the_server_is_its_sentence_not_unreachable() {
        let call = Call::new("ListRepositories", "repositories", "", "listing");
        let error = from_status(
            &tonic::Status::unavailable("repo-manager: tcp connect error"),
            &call,
            "http://x",
        );
        assert_eq!(
            error.to_string(),
            "listing repositories failed: repo-manager: tcp connect error"
        );
    }

    #[test]
    fn unimplemented_names_the_call_and_server() {
        let call = Call::new("GetCoverage", "coverage", "", "getting");
        let error = from_status(
            &tonic::Status::unimplemented("GetCoverage is not implemented yet"),
            &call,
            "http://127.0.0.1:8080",
        );
        let text = error.to_string();
        assert!(text.contains("does not support GetCoverage"), "{text}");
        assert!(text.contains("http://127.0.0.1:8080"), "{text}");
    }
}
