//! `restic snapshots --json` and `restic stats --json`: listing snapshots by tag, host or path,
//! picking the latest one, and the size of a snapshot.

use chrono::{DateTime, FixedOffset};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::{
    command::{Repository, Restic, ResticCommand},
    error::ResticError,
};

/// One snapshot as `restic snapshots --json` prints it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Snapshot {
    pub id: String,
    #[serde(default)]
    pub short_id: String,
    pub time: DateTime<FixedOffset>,
    #[serde(default)]
    pub tree: String,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub parent: Option<String>,
}

impl Snapshot {
    /// The value of a `key=value` tag.
    pub fn tag_value(&self, key: &str) -> Option<&str> {
        self.tags.iter().find_map(|tag| {
            tag.split_once('=')
                .filter(|(k, _)| *k == key)
                .map(|(_, v)| v)
        })
    }
}

/// Which snapshots to list; every given tag must be present (restic ANDs comma-joined tags).
#[derive(Clone, Debug, Default)]
pub struct SnapshotFilter {
    pub tags: Vec<String>,
    pub host: Option<String>,
    pub path: Option<String>,
}

/// `restic stats <id> --json` in the default restore-size mode.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct SnapshotStats {
    pub total_size: u64,
    pub total_file_count: u64,
}

impl Restic {
    pub async fn snapshots(
        &self,
        repository: &Repository,
        filter: &SnapshotFilter,
        cancel: &CancellationToken,
    ) -> Result<Vec<Snapshot>, ResticError> {
        let command = snapshots_command(filter)?;
        // restic prints `null` for an empty list in some versions.
        let snapshots: Option<Vec<Snapshot>> = self.run_json(repository, &command, cancel).await?;
        let mut snapshots = snapshots.unwrap_or_default();
        snapshots.sort_by_key(|snapshot| snapshot.time);
        Ok(snapshots)
    }

    /// The newest snapshot matching `filter`, if any.
    pub async fn latest_snapshot(
        &self,
        repository: &Repository,
        filter: &SnapshotFilter,
        cancel: &CancellationToken,
    ) -> Result<Option<Snapshot>, ResticError> {
        Ok(self.snapshots(repository, filter, cancel).await?.pop())
    }

    pub async fn stats(
        &self,
        repository: &Repository,
        snapshot: &str,
        cancel: &CancellationToken,
    ) -> Result<SnapshotStats, ResticError> {
        if snapshot.is_empty() || snapshot.starts_with('-') {
            return Err(ResticError::InvalidArgument {
                command: "stats".into(),
                reason: format!("`{snapshot}` is not a snapshot id"),
            });
        }
        let command = ResticCommand::new("stats").arg(snapshot).json();
        self.run_json(repository, &command, cancel).await
    }
}

pub fn snapshots_command(filter: &SnapshotFilter) -> Result<ResticCommand, ResticError> {
    let mut command = ResticCommand::new("snapshots").json();
    if !filter.tags.is_empty() {
        if let Some(bad) = filter.tags.iter().find(|t| t.contains(',') || t.is_empty()) {
            return Err(ResticError::InvalidArgument {
                command: "snapshots".into(),
                reason: format!("tag `{bad}` is empty or contains `,`"),
            });
        }
        command = command.arg("--tag").arg(filter.tags.join(","));
    }
    if let Some(host) = &filter.host {
        command = command.arg("--host").arg(host);
    }
    if let Some(path) = &filter.path {
        command = command.arg("--path").arg(path);
    }
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_list_of_restic_0_14_parses_and_reads_tags() {
        let text = r#"[{"time":"2026-11-24T19:32:57.849754919Z","tree":"306a","paths":["/tmp/rt/d"],"hostname":"h","username":"root","tags":["a=b","c=d"],"id":"63dfff4a979d","short_id":"63dfff4a"},{"time":"2026-11-24T19:33:32.0228Z","tree":"306a","paths":["/tmp/rt/d"],"hostname":"vm","id":"f03f7064e189","short_id":"f03f7064"}]"#;
        let snapshots: Vec<Snapshot> = serde_json::from_str(text).unwrap();
        assert_eq!(snapshots.len(), 2);
        assert_eq!(snapshots[0].tag_value("c"), Some("d"));
        assert_eq!(snapshots[0].tag_value("x"), None);
        assert!(snapshots[1].tags.is_empty());
        assert!(snapshots[0].time < snapshots[1].time);
    }

    #[test]
    fn tags_are_anded_in_one_flag() {
        let command = snapshots_command(&SnapshotFilter {
            tags: vec!["a=1".into(), "b=2".into()],
            ..Default::default()
        })
        .unwrap();
        let args = command.argument_strings();
        assert_eq!(args, ["--json", "--tag", "a=1,b=2"]);
    }

    #[test]
    fn stats_parse() {
        let stats: SnapshotStats =
            serde_json::from_str(r#"{"total_size":3,"total_file_count":1,"snapshots_count":1}"#)
                .unwrap();
        assert_eq!((stats.total_size, stats.total_file_count), (3, 1));
    }
}
