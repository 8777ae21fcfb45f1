//! The streamed answer of `ListSnapshotFiles`: restic's `ls` nodes become `FileEntry` batches
//! sent through a small bounded channel, so a directory of any size is never held in memory
//! (restic waits while the reader is slow), and a reader that hangs up stops restic.

use std::{future::Future, pin::Pin};

use futures::StreamExt as _;
use stowage_proto::{
    prost_types,
    v1::{FileEntry, ListSnapshotFilesResponse},
};
use stowage_restic::{LsNode, NodeSink};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// Entries per streamed message.
pub const BATCH: usize = 1000;
/// Messages waiting for the reader before restic is made to wait.
const QUEUED: usize = 2;

pub type FileStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<ListSnapshotFilesResponse, Status>> + Send>>;

pub fn file_entry(node: LsNode) -> FileEntry {
    FileEntry {
        path: node.path,
        r#type: node.kind,
        size: node.size,
        mode: node.mode,
        mtime: node.mtime.map(|time| prost_types::Timestamp {
            seconds: time.timestamp(),
            nanos: time.timestamp_subsec_nanos() as i32,
        }),
        // restic's `ls --json` does not print a symlink's target.
        link_target: String::new(),
    }
}

/// Collects nodes into batches of [`BATCH`] and sends each; when the reader is gone, cancels
/// the run.
pub struct Batches {
    batch: Vec<FileEntry>,
    size: usize,
    sender: mpsc::Sender<Result<ListSnapshotFilesResponse, Status>>,
    cancel: CancellationToken,
}

impl Batches {
    pub fn new(
        size: usize,
        sender: mpsc::Sender<Result<ListSnapshotFilesResponse, Status>>,
        cancel: CancellationToken,
    ) -> Batches {
        Batches {
            batch: Vec::with_capacity(size),
            size,
            sender,
            cancel,
        }
    }

    async fn send(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let entries = std::mem::replace(&mut self.batch, Vec::with_capacity(self.size));
        if self
            .sender
            .send(Ok(ListSnapshotFilesResponse { entries }))
            .await
            .is_err()
        {
            tracing::info!("the caller stopped reading the listing; stopping restic");
            self.cancel.cancel();
        }
    }
}

impl NodeSink for &mut Batches {
    async fn node(&mut self, node: LsNode) {
        if self.cancel.is_cancelled() {
            return;
        }
        self.batch.push(file_entry(node));
        if self.batch.len() >= self.size {
            self.send().await;
        }
    }
}

/// The response stream of a listing made by `list`, which fills the [`Batches`] it is given.
/// The listing runs as the stream is polled (no task of its own): what it sends comes first,
/// its error, if any, last; dropping the stream cancels `cancel`, which stops restic.
pub fn stream<F>(
    cancel: CancellationToken,
    list: impl FnOnce(Batches) -> F + Send + 'static,
) -> FileStream
where
    F: Future<Output = Result<(), Status>> + Send + 'static,
{
    let (sender, receiver) = mpsc::channel(QUEUED);
    let errors = sender.clone();
    let batches = Batches::new(BATCH, sender, cancel.clone());
    let run = async move {
        if let Err(status) = list(batches).await {
            let _ = errors.send(Err(status)).await;
        }
    };
    let guard = cancel.drop_guard();
    let run = futures::stream::once(run)
        .filter_map(|()| std::future::ready(None::<Result<ListSnapshotFilesResponse, Status>>));
    let merged =
        futures::stream::select(tokio_stream::wrappers::ReceiverStream::new(receiver), run);
    Box::pin(merged.map(move |item| {
        // Held by the stream: dropped with it.
        let _ = &guard;
        item
    }))
}

/// Sends what is left in `batches`; the end of a listing.
pub async fn flush(batches: &mut Batches) {
    batches.send().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(path: &str) -> LsNode {
        LsNode {
            name: path.rsplit('/').next().unwrap_or_default().to_string(),
            kind: "file".into(),
            path: path.into(),
            size: 1,
            mode: 0o644,
            mtime: None,
        }
    }

    #[tokio::test]
    async fn nodes_arrive_in_batches_and_an_error_comes_last() {
        let cancel = CancellationToken::new();
        let mut stream = stream(cancel.clone(), |mut batches: Batches| async move {
            batches.size = 2;
            for index in 0..5 {
                (&mut batches).node(node(&format!("/f{index}"))).await;
            }
            flush(&mut batches).await;
            Err(Status::not_found("snapshot abc has no path `/x`"))
        });
        let mut sizes = Vec::new();
        let mut error = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(response) => sizes.push(response.entries.len()),
                Err(status) => error = Some(status),
            }
        }
        assert_eq!(sizes, [2, 2, 1]);
        assert_eq!(error.unwrap().code(), tonic::Code::NotFound);
        assert!(!cancel.is_cancelled());
    }

    #[tokio::test]
    async fn dropping_the_stream_cancels_the_listing() {
        let cancel = CancellationToken::new();
        let watched = cancel.clone();
        let mut stream = stream(cancel, |mut batches: Batches| async move {
            batches.size = 1;
            loop {
                (&mut batches).node(node("/f")).await;
                if batches.cancel.is_cancelled() {
                    return Ok(());
                }
            }
        });
        assert!(stream.next().await.unwrap().is_ok());
        drop(stream);
        assert!(watched.is_cancelled());
    }
}
