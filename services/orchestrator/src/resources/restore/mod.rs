//! The restore's resource half: every object of the backup's resource tarball (stowage's or a
//! restic-era Velero backup's) created again in Velero's restore order, stripped of what the
//! API server sets, namespace-mapped, filtered, with the existing-resource policy applied and
//! ownership re-pointed at the restored owners; one result per object.
//!
//! [`plan`] is the pure part (order, skip rules, object preparation), [`run`] drives the API
//! server through the narrow [`api::ObjectApi`]; [`kube::KubeObjects`] is the real one, and
//! the tests use an in-memory fake.

pub mod api;
pub mod kube;
pub mod plan;
pub mod run;
pub mod selector;

#[cfg(test)]
pub mod fake;
#[cfg(test)]
mod tests;

pub use api::ObjectApi;
pub use run::{ExistingPolicy, Handled, Options, Outcome, restore_resources};
pub use selector::LabelSelector;
