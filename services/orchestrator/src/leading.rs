//! What only the leading replica runs, started in one place once it leads (or at start-up
//! when election is off): recovery of the runs in the storage location, housekeeping (TTL
//! expiry, backups new in the bucket), and the schedules. A standby runs none of it; a
//! leader that loses its Lease exits (`stowage_leader::exit_lost`) instead of stopping them one
//! by one.

use std::time::Duration;

use crate::{deps::Deps, recovery};

/// Starts the leader's work. Every task runs in `deps.tasks` and stops on `deps.shutdown`.
pub async fn start(deps: &Deps, housekeeping_interval: Duration) {
    // An unreachable store must not keep the API down: housekeeping picks the backups up
    // once it answers.
    if let Err(error) = recovery::load(deps).await {
        tracing::warn!(%error, "reading the backups in the storage location");
    }
    deps.tasks
        .spawn(recovery::housekeeping(deps.clone(), housekeeping_interval));
    // Schedules: the scheduler loop starts here, as a task in `deps.tasks` stopped by
    // `deps.shutdown`, so that only the leader fires schedules.
}
