//! Repository keys: `restic key list --json`, `key add` (the new password through a 0600
//! file, never argv) and `key remove`, and the rotation built from them.

use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::{
    command::{Repository, Restic, ResticCommand},
    error::ResticError,
};

/// One key as `restic key list --json` prints it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Key {
    /// The key this password opened.
    pub current: bool,
    /// Short id (a prefix restic accepts in `key remove`).
    pub id: String,
    #[serde(rename = "userName", default)]
    pub user_name: String,
    #[serde(rename = "hostName", default)]
    pub host_name: String,
    #[serde(default)]
    pub created: String,
}

impl Restic {
    pub async fn list_keys(
        &self,
        repository: &Repository,
        cancel: &CancellationToken,
    ) -> Result<Vec<Key>, ResticError> {
        let command = ResticCommand::new("key").arg("list").json();
        self.run_json(repository, &command, cancel).await
    }

    /// The id of the key `repository`'s password opens.
    pub async fn current_key(
        &self,
        repository: &Repository,
        cancel: &CancellationToken,
    ) -> Result<Key, ResticError> {
        self.list_keys(repository, cancel)
            .await?
            .into_iter()
            .find(|key| key.current)
            .ok_or_else(|| ResticError::MissingOutput {
                command: "key list".into(),
                reason: "no key is marked current".into(),
            })
    }

    /// `restic key add`: after it, `new_password` opens the repository too.
    pub async fn add_key(
        &self,
        repository: &Repository,
        new_password: &str,
        cancel: &CancellationToken,
    ) -> Result<(), ResticError> {
        let scratch = |source| ResticError::Scratch {
            path: self.scratch_dir().to_path_buf(),
            source,
        };
        std::fs::create_dir_all(self.scratch_dir()).map_err(scratch)?;
        let dir = tempfile::Builder::new()
            .prefix("key-")
            .tempdir_in(self.scratch_dir())
            .map_err(scratch)?;
        let path = dir.path().join("new-password");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(scratch)?;
        file.write_all(new_password.as_bytes()).map_err(scratch)?;
        drop(file);
        let command = ResticCommand::new("key")
            .arg("add")
            .arg("--new-password-file")
            .arg(&path);
        self.run(repository, &command, cancel).await.map(drop)
    }

    /// `restic key remove <id>`; restic refuses to remove the key the password opened.
    pub async fn remove_key(
        &self,
        repository: &Repository,
        key_id: &str,
        cancel: &CancellationToken,
    ) -> Result<(), ResticError> {
        if key_id.is_empty() || !key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ResticError::InvalidArgument {
                command: "key remove".into(),
                reason: format!("`{key_id}` is not a key id"),
            });
        }
        let command = ResticCommand::new("key").args(["remove", key_id]);
        self.run(repository, &command, cancel).await.map(drop)
    }

    /// Replaces the key `repository`'s password opens with one for `new_password`: adds the
    /// new key, confirms it opens the repository, then removes the old key with the new one.
    /// Returns the new key's id.
    pub async fn rotate_key(
        &self,
        repository: &Repository,
        new_password: &str,
        cancel: &CancellationToken,
    ) -> Result<String, ResticError> {
        let old = self.current_key(repository, cancel).await?;
        self.add_key(repository, new_password, cancel).await?;
        let mut rotated = Repository::new(repository.url.clone(), new_password);
        rotated.env = repository.env.clone();
        let new = self.current_key(&rotated, cancel).await?;
        if new.id != old.id {
            self.remove_key(&rotated, &old.id, cancel).await?;
        }
        Ok(new.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_list_json_parses() {
        let keys: Vec<Key> = serde_json::from_str(
            r#"[{"current":true,"id":"eb8615b0","userName":"root","hostName":"vm","created":"2026-11-24 19:36:04"},
                {"current":false,"id":"0a1b2c3d","userName":"u","hostName":"h","created":"x"}]"#,
        )
        .unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys[0].current && keys[0].id == "eb8615b0" && keys[0].host_name == "vm");
        assert!(!keys[1].current);
    }
}
