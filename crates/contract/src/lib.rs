//! What several stowage processes must agree on, written once: the Velero phase names of the
//! mirrored pod volume objects, the restic snapshot tags, the one stable-identity rule, the
//! restore done-file protocol (done file, failure marker, restores mount), the rules for names
//! that become Kubernetes names, the path patterns inside a volume, the typed `velero.io/v1`
//! objects matching the shipped CRDs, and the leader-term fencing rule.
//! No I/O beyond the done-file helpers, no gRPC, no Kubernetes client.

pub mod done_file;
mod error;
pub mod fencing;
pub mod identity;
pub mod names;
pub mod objects;
pub mod paths;
pub mod phase;
pub mod tags;

pub use error::{ContractError, shown};
