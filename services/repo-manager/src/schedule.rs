//! Maintenance schedules: how often `check` and prune run for each namespace (location-wide
//! defaults, per-namespace overrides), and the status kept for each task (last run, duration,
//! result, next run).

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaintenanceKind {
    Check,
    Prune,
}

impl MaintenanceKind {
    pub fn name(self) -> &'static str {
        match self {
            MaintenanceKind::Check => "check",
            MaintenanceKind::Prune => "prune",
        }
    }
}

/// Parses `90s`, `15m`, `24h`, `7d` (or a plain number of seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 90s, 15m, 24h or 7d"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unknown duration unit `{other}` in `{text}`")),
    };
    number
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration `{text}` is too large"))
}

/// A per-namespace override: `namespace=duration`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceInterval {
    pub namespace: String,
    pub interval: Duration,
}

pub fn parse_namespace_interval(text: &str) -> Result<NamespaceInterval, String> {
    let (namespace, duration) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not `namespace=duration`"))?;
    let namespace = namespace.trim();
    if !stowage_storage_location::is_dns1123_label(namespace) {
        return Err(format!("`{namespace}` is not a namespace name"));
    }
    Ok(NamespaceInterval {
        namespace: namespace.to_string(),
        interval: parse_duration(duration)?,
    })
}

/// How often each task runs.
#[derive(Debug, Clone)]
pub struct Schedules {
    pub check: Duration,
    pub prune: Duration,
    pub check_overrides: BTreeMap<String, Duration>,
    pub prune_overrides: BTreeMap<String, Duration>,
}

impl Schedules {
    pub fn interval(&self, namespace: &str, kind: MaintenanceKind) -> Duration {
        let (default, overrides) = match kind {
            MaintenanceKind::Check => (self.check, &self.check_overrides),
            MaintenanceKind::Prune => (self.prune, &self.prune_overrides),
        };
        overrides.get(namespace).copied().unwrap_or(default)
    }
}

impl Default for Schedules {
    fn default() -> Self {
        Schedules {
            check: Duration::from_secs(24 * 3600),
            prune: Duration::from_secs(7 * 24 * 3600),
            check_overrides: BTreeMap::new(),
            prune_overrides: BTreeMap::new(),
        }
    }
}

/// Status of one task of one repository; persisted with the repository.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MaintenanceRecord {
    pub last_started: Option<DateTime<Utc>>,
    pub last_finished: Option<DateTime<Utc>>,
    pub last_duration_seconds: f64,
    pub last_error: String,
    pub last_succeeded: bool,
    /// Set when the task starts and cleared when its outcome is recorded: a record loaded with
    /// it set belongs to a run whose repo-manager stopped (was killed, lost its leadership)
    /// before the task ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running_since: Option<DateTime<Utc>>,
    /// The last run was interrupted (recorded failed at load): the task is due at once, so the
    /// repo-manager that took over runs it to its end.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

impl MaintenanceRecord {
    /// When the task is next due: one interval after its last start, or after the
    /// repository's creation when it never ran.
    pub fn next_run(&self, created: DateTime<Utc>, interval: Duration) -> DateTime<Utc> {
        let base = self.last_started.unwrap_or(created);
        base + chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::MAX)
    }

    pub fn is_due(&self, created: DateTime<Utc>, interval: Duration, now: DateTime<Utc>) -> bool {
        self.interrupted || self.next_run(created, interval) <= now
    }

    /// A run that was going on when its repo-manager stopped ends failed, saying so, and the
    /// task becomes due. False when no run was going on.
    pub fn end_interrupted(&mut self, now: DateTime<Utc>) -> bool {
        let Some(started) = self.running_since else {
            return false;
        };
        self.record(
            started,
            now,
            Some(format!(
                "interrupted: the repo-manager running it since {} stopped before it ended; \
                 it runs again",
                started.to_rfc3339()
            )),
        );
        self.interrupted = true;
        true
    }

    pub fn record(
        &mut self,
        started: DateTime<Utc>,
        finished: DateTime<Utc>,
        error: Option<String>,
    ) {
        self.last_started = Some(started);
        self.last_finished = Some(finished);
        self.last_duration_seconds = (finished - started).num_milliseconds().max(0) as f64 / 1000.0;
        self.last_succeeded = error.is_none();
        self.last_error = error.unwrap_or_default();
        self.running_since = None;
        self.interrupted = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_run_ends_failed_and_is_due_at_once_until_it_runs_again() {
        let created: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let started: DateTime<Utc> = "2026-01-02T00:00:00Z".parse().unwrap();
        let now: DateTime<Utc> = "2026-01-02T00:05:00Z".parse().unwrap();
        let week = Duration::from_secs(7 * 86_400);
        let mut record = MaintenanceRecord {
            running_since: Some(started),
            ..Default::default()
        };
        assert!(record.end_interrupted(now));
        assert!(!record.last_succeeded);
        assert!(
            record.last_error.contains("interrupted"),
            "{}",
            record.last_error
        );
        assert_eq!(record.last_started, Some(started));
        assert_eq!(record.running_since, None);
        assert!(record.is_due(created, week, now), "due at once");
        record.record(now, now, None);
        assert!(!record.is_due(created, week, now), "ran: due a week later");
        assert!(!record.end_interrupted(now), "nothing was running");
        let text = serde_json::to_string(&record).unwrap();
        assert!(
            !text.contains("running_since") && !text.contains("interrupted"),
            "{text}"
        );
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert!(parse_duration("7w").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn overrides_win_over_defaults() {
        let mut schedules = Schedules::default();
        let special = parse_namespace_interval("team-a=1h").unwrap();
        schedules
            .prune_overrides
            .insert(special.namespace, special.interval);
        assert_eq!(
            schedules.interval("team-a", MaintenanceKind::Prune),
            Duration::from_secs(3600)
        );
        assert_eq!(
            schedules.interval("team-b", MaintenanceKind::Prune),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(
            schedules.interval("team-a", MaintenanceKind::Check),
            Duration::from_secs(86_400)
        );
        assert!(parse_namespace_interval("Bad_NS=1h").is_err());
        assert!(parse_namespace_interval("ns").is_err());
    }

    #[test]
    fn next_run_counts_from_last_start_or_creation() {
        let created: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut record = MaintenanceRecord::default();
        let day = Duration::from_secs(86_400);
        assert_eq!(
            record.next_run(created, day),
            "2026-01-02T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert!(!record.is_due(created, day, "2026-01-01T23:00:00Z".parse().unwrap()));
        assert!(record.is_due(created, day, "2026-01-02T00:00:00Z".parse().unwrap()));

        let started: DateTime<Utc> = "2026-01-05T10:00:00Z".parse().unwrap();
        let finished = started + chrono::Duration::milliseconds(2500);
        record.record(started, finished, Some("boom".into()));
        assert_eq!(record.last_duration_seconds, 2.5);
        assert!(!record.last_succeeded);
        assert_eq!(record.last_error, "boom");
        assert_eq!(
            record.next_run(created, day),
            "2026-01-06T10:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        record.record(started, finished, None);
        assert!(record.last_succeeded && record.last_error.is_empty());
    }
}
