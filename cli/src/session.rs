//! The connection to the orchestrator and the calls that read one backup or restore: what the
//! commands and the `--wait` loop both use, kept here so neither module reaches into the other.

use stowage_proto::v1;

use crate::{
    connection::{self, Client, ConnectionArgs},
    error::{Call, CliError, from_status},
};

/// The connection to the orchestrator, its address for error sentences, and whether it is TLS
/// (which changes what a failed connection hints at).
pub struct Session {
    pub client: Client,
    pub server: String,
    pub tls: bool,
}

impl Session {
    pub fn fail(&self, status: tonic::Status, call: &Call) -> CliError {
        match from_status(&status, call, &self.server) {
            // A TLS handshake refused by the server shows only on the first call.
            CliError::Unreachable { server, cause } => {
                connection::unreachable(&server, self.tls, cause)
            }
            other => other,
        }
    }
}

pub async fn connect(args: &ConnectionArgs) -> Result<Session, CliError> {
    let settings = connection::settings(args)?;
    let client = connection::connect(&settings).await?;
    Ok(Session {
        client,
        server: settings.server.clone(),
        tls: settings.tls(),
    })
}

pub async fn get_backup(session: &mut Session, name: &str) -> Result<v1::Backup, CliError> {
    let call = Call::new("GetBackup", "backup", name, "getting");
    session
        .client
        .get_backup(v1::GetBackupRequest {
            name: name.to_string(),
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| session.fail(status, &call))
}

pub async fn get_restore(session: &mut Session, name: &str) -> Result<v1::Restore, CliError> {
    let call = Call::new("GetRestore", "restore", name, "getting");
    session
        .client
        .get_restore(v1::GetRestoreRequest {
            name: name.to_string(),
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| session.fail(status, &call))
}
