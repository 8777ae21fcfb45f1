//! The slice of Kubernetes `ObjectMeta` that Velero's records carry, plus Go-style durations.
//! Fields we do not model are kept in `extra` so a record read and written back loses nothing.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Unknown JSON fields, kept verbatim.
pub type Extra = BTreeMap<String, serde_json::Value>;

/// `metadata` of a Kubernetes object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<DateTime<Utc>>,
    /// Go's `map[string]string` serializes an empty map as absent, and older writers as `null`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A `LabelSelector` (only `matchLabels` is interpreted; `matchExpressions` is kept in `extra`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub match_labels: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl LabelSelector {
    /// Whether `labels` satisfy `matchLabels` (an empty selector matches everything).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
    }
}

pub(crate) fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Parses a Go `time.Duration` string as `metav1.Duration` writes it (`"720h0m0s"`, `"1h30m"`,
/// `"90s"`, `"1.5h"`, `"250ms"`). Velero stores the backup TTL this way.
pub fn parse_go_duration(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(std::time::Duration::ZERO);
    }
    if text.is_empty() || text.starts_with('-') {
        return None;
    }
    let text = text.strip_prefix('+').unwrap_or(text);
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * seconds_per_unit;
    }
    // Too large for a Duration (`99999999999999999999h`) is not a duration, not a panic: the
    // text can come from a user's annotation.
    std::time::Duration::try_from_secs_f64(total).ok()
}

/// Formats a duration the way Go's `time.Duration.String()` does for whole seconds
/// (`"720h0m0s"`), so TTLs stowage writes read like Velero's.
pub fn format_go_duration(duration: std::time::Duration) -> String {
    let seconds = duration.as_secs();
    if seconds == 0 {
        return "0s".to_string();
    }
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn go_durations_parse_like_metav1_duration() {
        assert_eq!(
            parse_go_duration("720h0m0s"),
            Some(Duration::from_secs(720 * 3600))
        );
        assert_eq!(parse_go_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration(""), None);
        assert_eq!(parse_go_duration("10 days"), None);
        assert_eq!(parse_go_duration("h"), None);
        assert_eq!(parse_go_duration("-1h"), None);
        assert_eq!(parse_go_duration("99999999999999999999999h"), None);
    }

    #[test]
    fn go_duration_format_round_trips() {
        for seconds in [0u64, 1, 59, 60, 61, 3599, 3600, 720 * 3600, 90061] {
            let duration = Duration::from_secs(seconds);
            let text = format_go_duration(duration);
            assert_eq!(parse_go_duration(&text), Some(duration), "{text}");
        }
        assert_eq!(
            format_go_duration(Duration::from_secs(720 * 3600)),
            "720h0m0s"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_whole_second_duration_round_trips(seconds in 0u64..10_000_000_000) {
            let duration = Duration::from_secs(seconds);
            proptest::prop_assert_eq!(parse_go_duration(&format_go_duration(duration)), Some(duration));
        }
    }

    #[test]
    fn label_selector_matches_only_when_every_label_matches() {
        let selector: LabelSelector =
            serde_json::from_str(r#"{"matchLabels":{"app":"web","tier":"db"}}"#).unwrap();
        let mut labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
        assert!(!selector.matches(&labels));
        labels.insert("tier".into(), "db".into());
        assert!(selector.matches(&labels));
        labels.insert("tier".into(), "cache".into());
        assert!(!selector.matches(&labels));
        assert!(LabelSelector::default().matches(&labels));
    }

    #[test]
    fn null_maps_and_unknown_metadata_fields_survive() {
        let meta: ObjectMeta = serde_json::from_str(
            r#"{"name":"b1","namespace":"velero","labels":null,"finalizers":["x"],
                "creationTimestamp":"2021-03-04T05:06:07Z"}"#,
        )
        .unwrap();
        assert!(meta.labels.is_empty());
        assert_eq!(meta.extra["finalizers"], serde_json::json!(["x"]));
        let back = serde_json::to_value(&meta).unwrap();
        assert_eq!(back["finalizers"], serde_json::json!(["x"]));
        assert_eq!(back["creationTimestamp"], "2021-03-04T05:06:07Z");
    }
}
