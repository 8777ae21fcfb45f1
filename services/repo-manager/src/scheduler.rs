//! The maintenance scheduler: every tick, runs the check and prune tasks that are due (one at
//! a time, so maintenance never competes with itself for the machine), until shutdown.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{error::RepoError, repositories::Manager};

pub async fn run(manager: Arc<Manager>, tick: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        for (namespace, kind) in manager.due(chrono::Utc::now()) {
            if shutdown.is_cancelled() {
                return;
            }
            tracing::info!(
                namespace,
                kind = kind.name(),
                "scheduled maintenance is due"
            );
            match manager.run_maintenance(&namespace, kind).await {
                // The outcome is recorded in the repository's status by the manager.
                Ok(_) => {}
                Err(RepoError::Cancelled) => return,
                Err(error) => tracing::warn!(
                    namespace,
                    kind = kind.name(),
                    %error,
                    "scheduled maintenance could not start"
                ),
            }
        }
    }
}
