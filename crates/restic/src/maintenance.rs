//! Repository lifecycle and maintenance commands: `init`, `cat config` (does it open with this
//! key?), `check`, `forget` of given snapshots and `prune`.

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::{
    command::{Output, Repository, Restic, ResticCommand},
    error::ResticError,
    snapshots::SnapshotFilter,
};

/// `restic cat config`: the repository's identity and format version.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct RepositoryConfig {
    pub version: u32,
    pub id: String,
}

/// What `check` reads besides the structure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CheckData {
    /// Structure only: indexes, snapshots, trees (fast; the scheduled default).
    #[default]
    Structure,
    /// Also read back every pack file (slow, downloads the whole repository).
    All,
    /// Read back this percentage of pack files (1–100).
    Subset(u8),
}

impl Restic {
    /// `restic init` with the repository's password (the first key of the repository), as
    /// repository format 2: compressed (restic's `auto` compression, its default for format 2
    /// repositories) and readable by restic 0.14 and newer.
    pub async fn init(
        &self,
        repository: &Repository,
        cancel: &CancellationToken,
    ) -> Result<(), ResticError> {
        self.run(repository, &init_command(), cancel)
            .await
            .map(drop)
    }

    /// `restic cat config --no-lock`: succeeds only when the repository exists and the password
    /// opens it. Takes no lock so it works while a prune holds the exclusive one.
    pub async fn cat_config(
        &self,
        repository: &Repository,
        cancel: &CancellationToken,
    ) -> Result<RepositoryConfig, ResticError> {
        let command = ResticCommand::new("cat").args(["config", "--no-lock"]);
        self.run_json(repository, &command, cancel).await
    }

    /// `restic check`; restic takes an exclusive lock for it.
    pub async fn check(
        &self,
        repository: &Repository,
        data: CheckData,
        cancel: &CancellationToken,
    ) -> Result<Output, ResticError> {
        let command = check_command(data)?;
        self.run(repository, &command, cancel).await
    }

    /// `restic forget <ids…>`: removes the snapshots' entries (data stays until `prune`).
    pub async fn forget(
        &self,
        repository: &Repository,
        snapshot_ids: &[String],
        cancel: &CancellationToken,
    ) -> Result<(), ResticError> {
        if snapshot_ids.is_empty() {
            return Ok(());
        }
        let command = forget_command(snapshot_ids)?;
        self.run(repository, &command, cancel).await.map(drop)
    }

    /// Forgets every snapshot carrying all of `tags`; returns the forgotten snapshot ids.
    pub async fn forget_tagged(
        &self,
        repository: &Repository,
        tags: &[String],
        cancel: &CancellationToken,
    ) -> Result<Vec<String>, ResticError> {
        if tags.is_empty() {
            // An empty filter would match every snapshot in the repository.
            return Err(ResticError::InvalidArgument {
                command: "forget".into(),
                reason: "at least one tag is needed to choose snapshots".into(),
            });
        }
        let filter = SnapshotFilter {
            tags: tags.to_vec(),
            ..Default::default()
        };
        let ids: Vec<String> = self
            .snapshots(repository, &filter, cancel)
            .await?
            .into_iter()
            .map(|snapshot| snapshot.id)
            .collect();
        self.forget(repository, &ids, cancel).await?;
        Ok(ids)
    }

    /// `restic prune`: removes data no snapshot references; takes restic's exclusive lock.
    pub async fn prune(
        &self,
        repository: &Repository,
        cancel: &CancellationToken,
    ) -> Result<Output, ResticError> {
        self.run(repository, &ResticCommand::new("prune"), cancel)
            .await
    }
}

/// The repository format new repositories get: 2 stores compressed data. Said explicitly so a
/// later restic changing its default does not change what stowage creates.
pub const REPOSITORY_VERSION: u32 = 2;

fn init_command() -> ResticCommand {
    ResticCommand::new("init").arg(format!("--repository-version={REPOSITORY_VERSION}"))
}

fn check_command(data: CheckData) -> Result<ResticCommand, ResticError> {
    let command = ResticCommand::new("check");
    Ok(match data {
        CheckData::Structure => command,
        CheckData::All => command.arg("--read-data"),
        CheckData::Subset(percent) if (1..=100).contains(&percent) => {
            command.arg(format!("--read-data-subset={percent}%"))
        }
        CheckData::Subset(percent) => {
            return Err(ResticError::InvalidArgument {
                command: "check".into(),
                reason: format!("read-data subset {percent}% is not within 1–100%"),
            });
        }
    })
}

fn forget_command(snapshot_ids: &[String]) -> Result<ResticCommand, ResticError> {
    // Ids go into argv: refuse anything that restic could read as a flag.
    if let Some(bad) = snapshot_ids
        .iter()
        .find(|id| id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ResticError::InvalidArgument {
            command: "forget".into(),
            reason: format!("`{bad}` is not a snapshot id"),
        });
    }
    Ok(ResticCommand::new("forget").args(snapshot_ids.iter().cloned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_creates_format_2() {
        assert_eq!(
            init_command().argument_strings(),
            ["--repository-version=2"]
        );
    }

    #[test]
    fn check_reads_data_only_when_asked() {
        assert!(
            check_command(CheckData::Structure)
                .unwrap()
                .argument_strings()
                .is_empty()
        );
        assert_eq!(
            check_command(CheckData::Subset(10))
                .unwrap()
                .argument_strings(),
            ["--read-data-subset=10%"]
        );
        assert!(check_command(CheckData::Subset(0)).is_err());
        assert!(check_command(CheckData::Subset(101)).is_err());
    }

    #[test]
    fn forget_takes_only_hex_ids() {
        assert_eq!(
            forget_command(&["ab12".into(), "CD34".into()])
                .unwrap()
                .argument_strings(),
            ["ab12", "CD34"]
        );
        assert!(forget_command(&["--prune".into()]).is_err());
        assert!(forget_command(&[String::new()]).is_err());
    }

    #[test]
    fn config_json_parses() {
        let config: RepositoryConfig = serde_json::from_str(
            r#"{"version":2,"id":"c9b4","chunker_polynomial":"211f5637e84db5"}"#,
        )
        .unwrap();
        assert_eq!(config.version, 2);
        assert_eq!(config.id, "c9b4");
    }
}
