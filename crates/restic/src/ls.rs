//! `restic ls --json <snapshot> <dir> [--recursive]`: the nodes of one directory of a snapshot
//! (or its whole tree), streamed as restic prints them, never collected. restic prints the
//! listed directory itself before its entries; [`Restic::ls`] leaves it out and says whether
//! it was there, so a caller can tell an empty directory from a missing one.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::{
    command::{LineSink, Repository, Restic, ResticCommand},
    error::ResticError,
};

#[derive(Clone, Debug, Default)]
pub struct LsOptions {
    /// Snapshot id (full or short).
    pub snapshot: String,
    /// Absolute directory inside the snapshot (`/` for its root).
    pub dir: String,
    /// The whole tree under `dir`, not only its direct entries.
    pub recursive: bool,
}

/// One `message_type: node` line.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct LsNode {
    pub name: String,
    /// `file`, `dir`, `symlink`, `dev`, `chardev`, `fifo`, `socket`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Absolute inside the snapshot.
    pub path: String,
    pub size: u64,
    /// Go's `os.FileMode` as restic records it: permission bits, and type bits in the high bits.
    pub mode: u32,
    pub mtime: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct Tagged {
    message_type: String,
}

/// The node of one stdout line; `None` for the snapshot line, non-JSON and other messages.
pub fn parse_ls_line(line: &str) -> Option<LsNode> {
    let line = line.trim();
    if !line.starts_with('{') {
        return None;
    }
    let tagged: Tagged = serde_json::from_str(line).ok()?;
    if tagged.message_type != "node" {
        return None;
    }
    serde_json::from_str(line).ok()
}

/// The argv for a listing. The snapshot id and the directory cannot read as flags.
pub fn ls_command(options: &LsOptions) -> Result<ResticCommand, ResticError> {
    if options.snapshot.is_empty() || options.snapshot.starts_with('-') {
        return Err(ResticError::InvalidArgument {
            command: "ls".into(),
            reason: format!("`{}` is not a snapshot id", options.snapshot),
        });
    }
    if !options.dir.starts_with('/') {
        return Err(ResticError::InvalidArgument {
            command: "ls".into(),
            reason: format!("`{}` is not an absolute directory", options.dir),
        });
    }
    let mut command = ResticCommand::new("ls")
        .json()
        .arg(&options.snapshot)
        .arg(&options.dir);
    if options.recursive {
        command = command.arg("--recursive");
    }
    Ok(command)
}

/// Receives the listing's nodes one at a time; restic waits while a node is handled.
pub trait NodeSink: Send {
    fn node(&mut self, node: LsNode) -> impl std::future::Future<Output = ()> + Send;
}

struct Nodes<'a, S> {
    dir: &'a str,
    found: bool,
    sink: S,
}

impl<S: NodeSink> LineSink for Nodes<'_, S> {
    async fn line(&mut self, line: &str) {
        let Some(node) = parse_ls_line(line) else {
            return;
        };
        // The listed directory itself: restic prints it first. A listed file is its own entry.
        if node.path == self.dir {
            self.found = true;
            if node.kind == "dir" {
                return;
            }
        }
        self.sink.node(node).await;
    }
}

impl Restic {
    /// Lists `options.dir` of the snapshot, handing each entry to `sink` (the directory itself
    /// left out). `Ok(false)` when the snapshot has no such path (restic then lists nothing
    /// and exits 0); the root always exists.
    pub async fn ls(
        &self,
        repository: &Repository,
        options: &LsOptions,
        cancel: &CancellationToken,
        sink: impl NodeSink,
    ) -> Result<bool, ResticError> {
        let command = ls_command(options)?;
        let mut nodes = Nodes {
            dir: &options.dir,
            found: options.dir == "/",
            sink,
        };
        self.run_lines(repository, &command, cancel, &mut nodes)
            .await?;
        Ok(nodes.found)
    }
}

impl<T: LineSink> LineSink for &mut T {
    fn line(&mut self, line: &str) -> impl std::future::Future<Output = ()> + Send {
        (**self).line(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_lines_parse_and_the_snapshot_line_is_skipped() {
        let snapshot = r#"{"time":"2026-12-02T03:48:48Z","paths":["/x"],"id":"a1","message_type":"snapshot","struct_type":"snapshot"}"#;
        assert_eq!(parse_ls_line(snapshot), None);
        let node = parse_ls_line(r#"{"name":"a.txt","type":"file","path":"/data/a.txt","uid":0,"gid":0,"size":2,"mode":420,"permissions":"-rw-r--r--","mtime":"2026-12-02T03:48:46.676120566Z","message_type":"node","struct_type":"node"}"#).unwrap();
        assert_eq!(node.path, "/data/a.txt");
        assert_eq!(node.kind, "file");
        assert_eq!((node.size, node.mode), (2, 0o644));
        assert_eq!(
            node.mtime.unwrap().to_rfc3339(),
            "2026-12-02T03:48:46.676120566+00:00"
        );
        assert_eq!(parse_ls_line("not json"), None);
    }

    #[test]
    fn the_argv_names_the_directory_and_refuses_flags() {
        let command = ls_command(&LsOptions {
            snapshot: "abcd".into(),
            dir: "/data".into(),
            recursive: true,
        })
        .unwrap();
        assert_eq!(
            command.argument_strings(),
            ["--json", "abcd", "/data", "--recursive"]
        );
        assert!(
            ls_command(&LsOptions {
                snapshot: "--x".into(),
                dir: "/".into(),
                recursive: false
            })
            .is_err()
        );
        assert!(
            ls_command(&LsOptions {
                snapshot: "abcd".into(),
                dir: "-x".into(),
                recursive: false
            })
            .is_err()
        );
    }

    struct Collect(Vec<String>);

    impl NodeSink for Collect {
        async fn node(&mut self, node: LsNode) {
            self.0.push(node.path);
        }
    }

    #[tokio::test]
    async fn the_listed_directory_is_left_out_and_marks_the_path_found() {
        let line = |path: &str, kind: &str| {
            format!(r#"{{"name":"x","type":"{kind}","path":"{path}","message_type":"node"}}"#)
        };
        let mut nodes = Nodes {
            dir: "/data",
            found: false,
            sink: Collect(Vec::new()),
        };
        nodes.line(r#"{"message_type":"snapshot"}"#).await;
        assert!(!nodes.found);
        nodes.line(&line("/data", "dir")).await;
        nodes.line(&line("/data/a", "file")).await;
        assert!(nodes.found);
        assert_eq!(nodes.sink.0, ["/data/a"]);
        // A file listed by its own path is its one entry.
        let mut file = Nodes {
            dir: "/a.txt",
            found: false,
            sink: Collect(Vec::new()),
        };
        file.line(&line("/a.txt", "file")).await;
        assert!(file.found);
        assert_eq!(file.sink.0, ["/a.txt"]);
    }
}
