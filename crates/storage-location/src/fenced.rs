//! The fencing rule's write half (docs/high-availability.md, "Fencing"), written once for every
//! process that writes to the storage location: an object store whose writes (puts, multipart
//! uploads, deletes, copies, renames) are refused unless the process still holds its leader
//! term, so a leader that was paused through a takeover and wakes up late writes nothing.
//! Reads pass through.

use std::{fmt, ops::Range, sync::Arc, time::Instant};

use futures::{StreamExt as _, stream::BoxStream};
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result, path::Path,
};
use stowage_contract::fencing::LeaderTerm;

/// Why a write was refused: this process's leader term has ended.
#[derive(Debug, thiserror::Error)]
#[error(
    "not writing {location}: this {service}'s leader term {term} has ended (another replica leads)"
)]
pub struct TermEnded {
    pub service: &'static str,
    pub term: u64,
    pub location: String,
}

/// An object store that checks [`LeaderTerm::holds`] before every write. Without leader
/// election no term is ever set and every write passes.
#[derive(Debug)]
pub struct FencedObjectStore {
    inner: Arc<dyn ObjectStore>,
    term: LeaderTerm,
    /// The process named in the refusal (`orchestrator`, `repo-manager`).
    service: &'static str,
}

impl FencedObjectStore {
    pub fn new(inner: Arc<dyn ObjectStore>, term: LeaderTerm, service: &'static str) -> Self {
        FencedObjectStore {
            inner,
            term,
            service,
        }
    }

    fn check(&self, location: &Path) -> Result<()> {
        check(&self.term, self.service, location)
    }
}

fn check(term: &LeaderTerm, service: &'static str, location: &Path) -> Result<()> {
    // The monotonic clock keeps running while the process is stopped, so a process woken up
    // after its renew deadline fails here before its election loop has noticed anything.
    if term.holds(Instant::now()) {
        return Ok(());
    }
    let refused = TermEnded {
        service,
        term: term.get().unwrap_or_default(),
        location: location.to_string(),
    };
    tracing::warn!(error = %refused, "write refused by the fencing rule");
    Err(object_store::Error::Generic {
        store: "fenced",
        source: Box::new(refused),
    })
}

impl fmt::Display for FencedObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fenced({})", self.inner)
    }
}

#[async_trait::async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for FencedObjectStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.check(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.check(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        // Each deletion is checked as the inner store reaches it: a long batch stops at the
        // term's end.
        let term = self.term.clone();
        let service = self.service;
        let checked = locations
            .map(move |location| {
                let location = location?;
                check(&term, service, &location)?;
                Ok(location)
            })
            .boxed();
        self.inner.delete_stream(checked)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.check(to)?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.check(to)?;
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::TryStreamExt as _;
    use object_store::{ObjectStoreExt as _, memory::InMemory};

    use super::*;

    #[tokio::test]
    async fn a_process_whose_term_went_stale_writes_and_deletes_nothing() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let term = LeaderTerm::default();
        let store = FencedObjectStore::new(inner.clone(), term.clone(), "repo-manager");
        let path = Path::from("stowage/repositories/app.json");

        store.put(&path, "alone".into()).await.unwrap();
        term.renewed(4, Instant::now() + Duration::from_secs(10));
        store.put(&path, "fresh".into()).await.unwrap();

        // Woken up after the renew deadline (or the lease was lost): nothing is written.
        term.renewed(4, Instant::now() - Duration::from_millis(1));
        let refused = store.put(&path, "stale".into()).await.unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("not writing stowage/repositories/app.json: this repo-manager's leader term 4 has ended"),
            "{refused}"
        );
        assert!(store.delete(&path).await.is_err(), "a deletion is a write");
        let copy = Path::from("stowage/copy.json");
        assert!(store.copy(&path, &copy).await.is_err());
        assert!(store.put_multipart(&copy).await.is_err());
        let body = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(
            &body[..],
            b"fresh",
            "reads still pass; the object is untouched"
        );
        let listed: Vec<_> = store.list(None).try_collect().await.unwrap();
        assert_eq!(listed.len(), 1, "nothing copied");

        term.lost();
        assert!(store.put(&path, "lost".into()).await.is_err(), "lost");
    }
}
