//! What the hooks' unit tests share: a cancellation that comes after a pause, and the status of
//! pod `shop/db-0`'s container `db` as the API server reports it.

use std::time::Duration;

use k8s_openapi::api::core::v1::PodStatus;
use tokio_util::sync::CancellationToken;

/// A token cancelled `after` the given (paused-clock) time, and the task that cancels it, for
/// the test to await so that its failure is seen.
pub fn cancel_after(after: Duration) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let cancel = CancellationToken::new();
    let canceller = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            cancel.cancel();
        })
    };
    (cancel, canceller)
}

/// The status of a pod in `phase` whose container `db` is running or waiting, ready or not.
pub fn db_status(phase: &str, running: bool, ready: bool) -> PodStatus {
    serde_json::from_value(serde_json::json!({
        "phase": phase,
        "containerStatuses": [{
            "name": "db", "image": "postgres", "imageID": "", "restartCount": 0,
            "ready": ready,
            "state": if running {
                serde_json::json!({"running": {"startedAt": "2026-03-01T00:00:00Z"}})
            } else {
                serde_json::json!({"waiting": {"reason": "PodInitializing"}})
            },
        }],
    }))
    .unwrap()
}
