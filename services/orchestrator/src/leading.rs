//! What only the leading replica runs, started in one place once it leads (or at start-up
//! when election is off): recovery of the runs in the storage location, housekeeping (TTL
//! expiry, backups new in the bucket), and the schedules. A standby runs none of it; a
//! leader that loses its Lease exits (`stowage_leader::exit_lost`) instead of stopping them one
//! by one.

use std::time::Duration;

use crate::{deps::Deps, recovery, schedules};

/// Starts the leader's work. Every task runs in `deps.tasks` and stops on `deps.shutdown`.
pub async fn start(deps: &Deps, housekeeping_interval: Duration, scheduler_max_sleep: Duration) {
    // An unreachable store must not keep the API down: housekeeping picks the backups up
    // once it answers.
    if let Err(error) = recovery::load(deps).await {
        tracing::warn!(%error, "reading the backups in the storage location");
    }
    deps.tasks
        .spawn(recovery::housekeeping(deps.clone(), housekeeping_interval));
    // Read before the API answers, so a new leader lists its schedules at once; the scheduler
    // reads them again (and retries) when it starts. Only the leader fires schedules.
    if let Err(error) = deps.schedules.load().await {
        tracing::warn!(%error, "reading the schedules in the storage location");
    }
    deps.tasks.spawn(schedules::scheduler::run(
        deps.clone(),
        scheduler_max_sleep,
        deps.shutdown.child_token(),
    ));
}
