//! The volume agent's metric families: the node it serves, its operation queue, pod-volume
//! operations by kind and final phase with their duration, the bytes it backed up and restored,
//! and the peak memory of the restic processes it ran.

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::registered;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values as operators query them
pub enum OperationKind {
    backup,
    restore,
}

/// The final phase of a pod-volume operation, named as `stowage.v1.VolumePhase` names it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum FinalPhase {
    Completed,
    Failed,
    Cancelled,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: OperationKind,
    pub phase: FinalPhase,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

/// `stowage_agent_info{node="…"} 1`: the node this agent serves, so an alert can tell the
/// nodes whose volumes stowage backs up from the nodes with an agent answering scrapes (the
/// series goes stale when the agent does).
pub fn register_node(registry: &mut Registry, node: &str) {
    let info: Family<NodeLabels, Gauge> = registered(
        registry,
        "stowage_agent_info",
        "1, labelled with the node this volume agent serves",
        Family::default(),
    );
    info.get_or_create(&NodeLabels {
        node: node.to_string(),
    })
    .set(1);
}

/// Handles to the agent's families; clones record into the same series.
#[derive(Clone)]
pub struct AgentMetrics {
    pub running: Gauge,
    pub queued: Gauge,
    operations: Family<OperationLabels, Counter>,
    durations: Family<OperationLabels, Histogram, fn() -> Histogram>,
    backup_bytes: Counter,
    backup_added_bytes: Counter,
    restore_bytes: Counter,
    restic_peak_rss: Family<OperationKindLabel, Histogram, fn() -> Histogram>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationKindLabel {
    pub operation: OperationKind,
}

/// 16 MiB to 16 GiB, doubling: from restic on a small volume to one that needs a node's
/// memory (the range where an operator sets `--restic-memory-limit`).
fn peak_rss_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        16.0 * 1024.0 * 1024.0,
        2.0,
        11,
    ))
}

fn duration_histogram() -> Histogram {
    Histogram::new(crate::duration_buckets())
}

impl AgentMetrics {
    pub fn register(registry: &mut Registry) -> AgentMetrics {
        AgentMetrics {
            running: registered(
                registry,
                "stowage_agent_operations_running",
                "Backups and restores running restic now",
                Gauge::default(),
            ),
            queued: registered(
                registry,
                "stowage_agent_operations_queued",
                "Backups and restores accepted and waiting for a free slot",
                Gauge::default(),
            ),
            operations: registered(
                registry,
                "stowage_agent_pod_volume_operations",
                "Pod-volume backups and restores that ended, by operation and final phase",
                Family::default(),
            ),
            durations: registered(
                registry,
                "stowage_agent_pod_volume_operation_duration_seconds",
                "Time from acceptance (queueing included) to the end of a pod-volume operation",
                Family::new_with_constructor(duration_histogram),
            ),
            backup_bytes: registered(
                registry,
                "stowage_agent_backup_bytes",
                "Bytes of volume data read by completed backups (restic total_bytes_processed)",
                Counter::default(),
            ),
            backup_added_bytes: registered(
                registry,
                "stowage_agent_backup_added_bytes",
                "Bytes completed backups added to their repositories after deduplication (restic data_added)",
                Counter::default(),
            ),
            restore_bytes: registered(
                registry,
                "stowage_agent_restore_bytes",
                "Bytes written into volumes by completed restores",
                Counter::default(),
            ),
            restic_peak_rss: registered(
                registry,
                "stowage_agent_restic_peak_rss_bytes",
                "Peak resident memory of the restic processes of one pod-volume operation (the largest of its runs), by operation",
                Family::new_with_constructor(peak_rss_histogram),
            ),
        }
    }

    /// The peak RSS of one operation's restic; nothing when restic never ran (0).
    pub fn restic_peak_rss(&self, operation: OperationKind, bytes: u64) {
        if bytes > 0 {
            self.restic_peak_rss
                .get_or_create(&OperationKindLabel { operation })
                .observe(bytes as f64);
        }
    }

    /// One operation ended in `phase` after `seconds`.
    pub fn operation_ended(&self, operation: OperationKind, phase: FinalPhase, seconds: f64) {
        let labels = OperationLabels { operation, phase };
        self.operations.get_or_create(&labels).inc();
        self.durations.get_or_create(&labels).observe(seconds);
    }

    pub fn backed_up(&self, bytes_read: u64, bytes_added: u64) {
        self.backup_bytes.inc_by(bytes_read);
        self.backup_added_bytes.inc_by(bytes_added);
    }

    pub fn restored(&self, bytes: u64) {
        self.restore_bytes.inc_by(bytes);
    }

    /// The queue as the operation table last saw it.
    pub fn set_queue(&self, running: u32, queued: u32) {
        self.running.set(i64::from(running));
        self.queued.set(i64::from(queued));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_operations_and_bytes_are_exposed_under_their_documented_names() {
        let mut registry = Registry::default();
        let metrics = AgentMetrics::register(&mut registry);
        metrics.operation_ended(OperationKind::backup, FinalPhase::Completed, 1.5);
        metrics.operation_ended(OperationKind::restore, FinalPhase::Failed, 0.2);
        metrics.backed_up(1000, 10);
        metrics.restored(300);
        metrics.restic_peak_rss(OperationKind::backup, 100 * 1024 * 1024);
        metrics.restic_peak_rss(OperationKind::restore, 0);
        metrics.set_queue(2, 3);
        let text = crate::encode(&registry);
        for line in [
            r#"stowage_agent_pod_volume_operations_total{operation="backup",phase="Completed"} 1"#,
            r#"stowage_agent_pod_volume_operations_total{operation="restore",phase="Failed"} 1"#,
            r#"stowage_agent_pod_volume_operation_duration_seconds_sum{operation="backup",phase="Completed"} 1.5"#,
            "stowage_agent_backup_bytes_total 1000",
            "stowage_agent_backup_added_bytes_total 10",
            "stowage_agent_restore_bytes_total 300",
            "stowage_agent_operations_running 2",
            "stowage_agent_operations_queued 3",
            r#"stowage_agent_restic_peak_rss_bytes_sum{operation="backup"} 104857600"#,
            r#"stowage_agent_restic_peak_rss_bytes_count{operation="backup"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(
            !text.contains(r#"stowage_agent_restic_peak_rss_bytes_count{operation="restore"}"#),
            "an operation whose restic never ran records no peak:\n{text}"
        );
    }

    #[test]
    fn the_agent_names_its_node() {
        let mut registry = Registry::default();
        register_node(&mut registry, "node-a");
        let text = crate::encode(&registry);
        assert!(
            text.contains(r#"stowage_agent_info{node="node-a"} 1"#),
            "{text}"
        );
    }
}
