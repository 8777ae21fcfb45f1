//! Gauges read from a service's own state at scrape time, for numbers the service already
//! keeps (backups by phase, the last maintenance run of each repository): a scrape shows the
//! state as it is, with no bookkeeping that could drift from it.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, gauge::ConstGauge},
    registry::Registry,
};

/// One sample of a gauge family.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// A gauge family as read now. A family with no samples is still described, so dashboards
/// see the name before the first backup.
#[derive(Clone, Debug, PartialEq)]
pub struct GaugeFamily {
    pub name: &'static str,
    pub help: &'static str,
    pub samples: Vec<Sample>,
}

struct StateCollector<F> {
    read: F,
}

impl<F> std::fmt::Debug for StateCollector<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

impl<F> Collector for StateCollector<F>
where
    F: Fn() -> Vec<GaugeFamily> + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in (self.read)() {
            let mut metric =
                encoder.encode_descriptor(family.name, family.help, None, MetricType::Gauge)?;
            for sample in family.samples {
                let labels: Vec<(&str, &str)> = sample
                    .labels
                    .iter()
                    .map(|(key, value)| (*key, value.as_str()))
                    .collect();
                ConstGauge::new(sample.value).encode(metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Registers `read`, called on every scrape (keep it cheap and non-blocking).
pub fn register(
    registry: &mut Registry,
    read: impl Fn() -> Vec<GaugeFamily> + Send + Sync + 'static,
) {
    registry.register_collector(Box::new(StateCollector { read }));
}

/// `SCREAMING_SNAKE` proto enum names without their prefix, as label values in the style of
/// the agent's phases: `BACKUP_PHASE_PARTIALLY_FAILED` → `PartiallyFailed`.
pub fn phase_label(proto_name: &str, prefix: &str) -> String {
    proto_name
        .strip_prefix(prefix)
        .unwrap_or(proto_name)
        .split('_')
        .filter(|word| !word.is_empty())
        .map(|word| {
            let lower = word.to_ascii_lowercase();
            let mut chars = lower.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, atomic::AtomicU32, atomic::Ordering};

    #[test]
    fn families_are_read_on_every_scrape() {
        let mut registry = Registry::default();
        let count = Arc::new(AtomicU32::new(1));
        let read = count.clone();
        register(&mut registry, move || {
            vec![
                GaugeFamily {
                    name: "stowage_test_things",
                    help: "things",
                    samples: vec![Sample {
                        labels: vec![("phase", "Completed".into())],
                        value: f64::from(read.load(Ordering::SeqCst)),
                    }],
                },
                GaugeFamily {
                    name: "stowage_test_empty",
                    help: "nothing yet",
                    samples: Vec::new(),
                },
            ]
        });
        let text = crate::encode(&registry);
        assert!(
            text.contains(r#"stowage_test_things{phase="Completed"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("# HELP stowage_test_empty nothing yet"),
            "{text}"
        );
        count.store(5, Ordering::SeqCst);
        let text = crate::encode(&registry);
        assert!(
            text.contains(r#"stowage_test_things{phase="Completed"} 5"#),
            "{text}"
        );
    }

    #[test]
    fn proto_enum_names_become_camel_case_labels() {
        assert_eq!(
            phase_label("BACKUP_PHASE_PARTIALLY_FAILED", "BACKUP_PHASE_"),
            "PartiallyFailed"
        );
        assert_eq!(
            phase_label("VOLUME_PHASE_IN_PROGRESS", "VOLUME_PHASE_"),
            "InProgress"
        );
    }
}
