//! `restic restore --json <snapshot> --target <dir>`. restic 0.17+ prints `--json` status lines
//! while restoring; the runner reads them as progress that ends a storage outage (see
//! [`crate::outage`]). Callers that want progress of their own watch the target against
//! [`crate::SnapshotStats`].

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::{
    command::{Repository, Restic, ResticCommand},
    error::ResticError,
};

#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Snapshot id (full or short) or `latest`.
    pub snapshot: String,
    pub target: PathBuf,
    pub includes: Vec<String>,
    pub excludes: Vec<String>,
    /// `--verify`: read every restored file back and compare.
    pub verify: bool,
}

impl Restic {
    pub async fn restore(
        &self,
        repository: &Repository,
        options: &RestoreOptions,
        cancel: &CancellationToken,
    ) -> Result<(), ResticError> {
        let command = restore_command(options)?;
        self.run(repository, &command, cancel).await?;
        Ok(())
    }
}

pub fn restore_command(options: &RestoreOptions) -> Result<ResticCommand, ResticError> {
    if options.snapshot.is_empty() || options.snapshot.starts_with('-') {
        return Err(ResticError::InvalidArgument {
            command: "restore".into(),
            reason: format!("`{}` is not a snapshot id", options.snapshot),
        });
    }
    let mut command = ResticCommand::new("restore")
        .json()
        .arg(&options.snapshot)
        .arg("--target")
        .arg(&options.target);
    for include in &options.includes {
        command = command.arg("--include").arg(include);
    }
    for exclude in &options.excludes {
        command = command.arg("--exclude").arg(exclude);
    }
    if options.verify {
        command = command.arg("--verify");
    }
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_that_looks_like_a_flag_is_refused() {
        let error = restore_command(&RestoreOptions {
            snapshot: "--target=/".into(),
            target: "/x".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(error, ResticError::InvalidArgument { .. }));
        let command = restore_command(&RestoreOptions {
            snapshot: "abcd1234".into(),
            target: "/x".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(command.arguments().len(), 4);
    }
}
