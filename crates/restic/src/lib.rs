//! The typed wrapper around the `restic` binary (0.17 or newer, see [`version`]). [`Restic`]
//! runs one restic command at a time against a [`Repository`] (URL, password, extra
//! environment): the password reaches restic only through a 0600 file in a per-run scratch
//! directory, restic inherits only an allow-listed part of the service's environment
//! ([`environment`]), the process runs in its own process group so cancellation kills it and
//! its children, and failures are classified into [`ResticError`]. Each command family has its
//! own module on top of the runner in [`command`].

pub mod backup;
pub mod command;
pub mod environment;
pub mod error;
pub mod keys;
pub mod locks;
pub mod ls;
pub mod maintenance;
pub mod outage;
pub mod processes;
pub mod restore;
pub mod retry;
pub mod snapshots;
pub mod version;

pub use backup::{BackupOptions, BackupProgress, BackupStatus, BackupSummary};
pub use command::{LineSink, Output, PeakRss, Repository, Restic, ResticCommand};
pub use error::{FailureClass, ResticError};
pub use keys::Key;
pub use locks::{Lock, LockInfo};
pub use ls::{LsNode, LsOptions, NodeSink};
pub use maintenance::{CheckData, RepositoryConfig};
pub use outage::{OutageClock, StorageRetry};
pub use processes::{ProcessTable, RunningProcess};
pub use restore::{Overwrite, RestoreOptions, RestoreStatus};
pub use retry::{Attempts, Retry, RetryPolicy};
pub use snapshots::{Snapshot, SnapshotFilter, SnapshotStats};
pub use version::{MINIMUM_VERSION, ResticVersion};
