//! The volume agent's metric families: the node it serves, its operation queue, pod-volume
//! operations by kind and final phase with their duration, and the bytes it backed up and
//! restored.

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

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
    let info: Family<NodeLabels, Gauge> = Family::default();
    info.get_or_create(&NodeLabels {
        node: node.to_string(),
    })
    .set(1);
    registry.register(
        "stowage_agent_info",
        "1, labelled with the node this volume agent serves",
        info,
    );
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
}

fn duration_histogram() -> Histogram {
    Histogram::new(crate::duration_buckets())
}

impl AgentMetrics {
    pub fn register(registry: &mut Registry) -> AgentMetrics {
        let metrics = AgentMetrics {
            running: Gauge::default(),
            queued: Gauge::default(),
            operations: Family::default(),
            durations: Family::new_with_constructor(duration_histogram),
            backup_bytes: Counter::default(),
            backup_added_bytes: Counter::default(),
            restore_bytes: Counter::default(),
        };
        registry.register(
            "stowage_agent_operations_running",
            "Backups and restores running restic now",
            metrics.running.clone(),
        );
        registry.register(
            "stowage_agent_operations_queued",
            "Backups and restores accepted and waiting for a free slot",
            metrics.queued.clone(),
        );
        registry.register(
            "stowage_agent_pod_volume_operations",
            "Pod-volume backups and restores that ended, by operation and final phase",
            metrics.operations.clone(),
        );
        registry.register(
            "stowage_agent_pod_volume_operation_duration_seconds",
            "Time from acceptance (queueing included) to the end of a pod-volume operation",
            metrics.durations.clone(),
        );
        registry.register(
            "stowage_agent_backup_bytes",
            "Bytes of volume data read by completed backups (restic total_bytes_processed)",
            metrics.backup_bytes.clone(),
        );
        registry.register(
            "stowage_agent_backup_added_bytes",
            "Bytes completed backups added to their repositories after deduplication (restic data_added)",
            metrics.backup_added_bytes.clone(),
        );
        registry.register(
            "stowage_agent_restore_bytes",
            "Bytes written into volumes by completed restores",
            metrics.restore_bytes.clone(),
        );
        metrics
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
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
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
