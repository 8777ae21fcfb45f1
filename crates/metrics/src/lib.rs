//! Metrics for every stowage process: one prometheus-client registry per process, the tiny
//! HTTP server that serves it on `/metrics` (its own `--metrics-listen` address, so a scrape
//! never competes with gRPC traffic or needs the gRPC client certificates), the tower layer
//! counting gRPC requests, and the domain metric families the services record into.
//! Every name is documented in `docs/metrics.md`.

pub mod agent;
pub mod endpoint;
pub mod grpc;
pub mod orchestrator;
pub mod repo_manager;
pub mod state;

use std::sync::{Mutex, MutexGuard, OnceLock};

pub use endpoint::{MetricsArgs, MetricsError};
pub use prometheus_client::registry::Registry;

static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();

/// The process's registry. Metric families are registered once at start-up and recorded into
/// through their own handles, so this lock is only held while registering or scraping.
pub fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY
        .get_or_init(|| Mutex::new(Registry::default()))
        .lock()
        // A panic while registering leaves a usable registry; keep serving metrics.
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Registers `metric` under `name` with its `help` and hands it back, so a family is declared
/// where its handle is kept and the registry records into the same series.
pub(crate) fn registered<M>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, metric.clone());
    metric
}

/// `registry` in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

/// Buckets for operation durations: 50 ms to about 3.6 h, doubling, since a pod volume takes
/// from milliseconds (empty) to hours (terabytes).
pub fn duration_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.05, 2.0, 19)
}
