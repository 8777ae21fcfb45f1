//! Which backups a keep policy deletes, by restic's `forget` rules (as KubeStash and K8up
//! spell them: keep-last, keep-hourly, keep-daily, keep-weekly, keep-monthly, keep-yearly).
//!
//! A backup holds volumes of several stable identities (a workload's volume across pod
//! restarts), and deleting is of whole backups. So the policy is applied to each identity's
//! history on its own, as `restic forget --group-by` does, and a backup is deleted only when
//! no identity's policy keeps it: a backup kept by any rule is kept.
//!
//! Within one identity, successful volumes newest first (by the backup's start time, UTC):
//! - keep-last n keeps the n newest;
//! - keep-hourly/daily/weekly/monthly/yearly n keeps the newest of each of the n newest
//!   hours/days/ISO weeks/months/years that have one;
//! - while a rule has counts left when the oldest is reached, the oldest is kept too
//!   (restic 0.17's "oldest daily snapshot"), so a young history is not cut short;
//! - a count of [`UNLIMITED`] keeps every one of its buckets.
//!
//! Failed volumes are kept by their own limit, the newest `failed_last` of each identity
//! (default 1: the last failure stays to be looked at). A backup still running is never
//! deleted. A policy with no keep rule keeps every successful backup.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use chrono::{DateTime, Datelike, Timelike, Utc};

/// A count that keeps every bucket of its rule (restic's `unlimited`).
pub const UNLIMITED: u32 = u32::MAX;

/// A keep policy. Counts of 0 turn a rule off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepPolicy {
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
    /// Failed backups kept per identity, newest first.
    pub failed_last: u32,
}

impl Default for KeepPolicy {
    fn default() -> Self {
        KeepPolicy {
            last: 0,
            hourly: 0,
            daily: 0,
            weekly: 0,
            monthly: 0,
            yearly: 0,
            failed_last: 1,
        }
    }
}

impl KeepPolicy {
    /// Whether any rule limits successful backups (without one, all are kept).
    pub fn limits_successful(&self) -> bool {
        self.rules().iter().any(|(_, count)| *count > 0)
    }

    fn rules(&self) -> [(Rule, u32); 6] {
        [
            (Rule::Last, self.last),
            (Rule::Hourly, self.hourly),
            (Rule::Daily, self.daily),
            (Rule::Weekly, self.weekly),
            (Rule::Monthly, self.monthly),
            (Rule::Yearly, self.yearly),
        ]
    }
}

impl fmt::Display for KeepPolicy {
    /// `keep-last=2 keep-daily=7 failed-last=1`, the rules that are on.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self
            .rules()
            .iter()
            .filter(|(_, count)| *count > 0)
            .map(|(rule, count)| match *count {
                UNLIMITED => format!("keep-{}=unlimited", rule.name()),
                count => format!("keep-{}={count}", rule.name()),
            })
            .collect();
        parts.push(format!("failed-last={}", self.failed_last));
        f.write_str(&parts.join(" "))
    }
}

/// A keep rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    Last,
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Rule {
    fn name(self) -> &'static str {
        match self {
            Rule::Last => "last",
            Rule::Hourly => "hourly",
            Rule::Daily => "daily",
            Rule::Weekly => "weekly",
            Rule::Monthly => "monthly",
            Rule::Yearly => "yearly",
        }
    }

    /// The bucket of `time` for this rule; `index` makes every backup its own bucket for
    /// keep-last.
    fn bucket(self, time: DateTime<Utc>, index: usize) -> i64 {
        let (year, month, day, hour) = (
            i64::from(time.year()),
            i64::from(time.month()),
            i64::from(time.day()),
            i64::from(time.hour()),
        );
        match self {
            Rule::Last => index as i64,
            Rule::Hourly => ((year * 100 + month) * 100 + day) * 100 + hour,
            Rule::Daily => (year * 100 + month) * 100 + day,
            Rule::Weekly => {
                let week = time.iso_week();
                i64::from(week.year()) * 100 + i64::from(week.week())
            }
            Rule::Monthly => year * 100 + month,
            Rule::Yearly => year,
        }
    }
}

/// Why a backup is kept, for one identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeepReason {
    /// Kept by `rule` (restic's "daily snapshot").
    Rule { identity: String, rule: Rule },
    /// The identity's oldest, kept because `rule` had counts left (restic's "oldest daily
    /// snapshot").
    Oldest { identity: String, rule: Rule },
    /// Among the newest failed ones of the identity.
    FailedLast { identity: String },
    /// The policy has no rule for successful backups.
    NoPolicy { identity: String },
    /// Still running.
    InProgress,
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepReason::Rule { identity, rule } => {
                write!(f, "{} backup of {identity}", rule.name())
            }
            KeepReason::Oldest { identity, rule } => {
                write!(f, "oldest {} backup of {identity}", rule.name())
            }
            KeepReason::FailedLast { identity } => write!(f, "last failed backup of {identity}"),
            KeepReason::NoPolicy { identity } => {
                write!(f, "no keep rule limits the backups of {identity}")
            }
            KeepReason::InProgress => f.write_str("in progress"),
        }
    }
}

/// How one volume of a backup ended, as far as retention cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    InProgress,
}

/// One identity's volume in one backup.
#[derive(Clone, Debug)]
pub struct Entry {
    pub backup: String,
    /// The stable identity (the group the policy is applied to).
    pub identity: String,
    /// The backup's start time: the bucket it falls in.
    pub started: DateTime<Utc>,
    pub outcome: Outcome,
}

/// A backup the policy keeps, with every reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    pub backup: String,
    pub reasons: Vec<KeepReason>,
}

/// A backup the policy deletes, with why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deleted {
    pub backup: String,
    pub reason: String,
}

/// The policy's verdict over a set of backups, each list newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub keep: Vec<Kept>,
    pub delete: Vec<Deleted>,
}

/// Applies `policy` to the backups `entries` describe (one entry per backup and identity; a
/// backup with no volumes is one entry with an empty identity).
pub fn plan(policy: &KeepPolicy, entries: &[Entry]) -> Plan {
    let mut started: BTreeMap<&str, DateTime<Utc>> = BTreeMap::new();
    let mut by_identity: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    for entry in entries {
        started
            .entry(&entry.backup)
            .and_modify(|time| *time = (*time).min(entry.started))
            .or_insert(entry.started);
        by_identity.entry(&entry.identity).or_default().push(entry);
    }
    let mut reasons: BTreeMap<&str, BTreeSet<KeepReason>> = BTreeMap::new();
    let mut failed_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (identity, mut history) in by_identity {
        // Newest first; the name breaks ties so the verdict does not depend on input order.
        history.sort_by(|a, b| b.started.cmp(&a.started).then(b.backup.cmp(&a.backup)));
        let succeeded: Vec<&Entry> = history
            .iter()
            .copied()
            .filter(|e| e.outcome == Outcome::Succeeded)
            .collect();
        for (backup, reason) in apply_rules(policy, identity, &succeeded) {
            reasons.entry(backup).or_default().insert(reason);
        }
        let mut failed_kept = 0u32;
        for entry in &history {
            match entry.outcome {
                Outcome::InProgress => {
                    reasons
                        .entry(&entry.backup)
                        .or_default()
                        .insert(KeepReason::InProgress);
                }
                Outcome::Failed if failed_kept < policy.failed_last => {
                    failed_kept += 1;
                    reasons
                        .entry(&entry.backup)
                        .or_default()
                        .insert(KeepReason::FailedLast {
                            identity: identity.to_string(),
                        });
                }
                Outcome::Failed => failed_of.entry(&entry.backup).or_default().push(identity),
                Outcome::Succeeded => {}
            }
        }
    }
    let mut backups: Vec<(&str, DateTime<Utc>)> = started.into_iter().collect();
    backups.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(a.0)));
    let mut result = Plan::default();
    for (backup, _) in backups {
        match reasons.remove(backup) {
            Some(kept) if !kept.is_empty() => result.keep.push(Kept {
                backup: backup.to_string(),
                reasons: kept.into_iter().collect(),
            }),
            _ => {
                let reason = if failed_of.contains_key(backup)
                    && entries
                        .iter()
                        .filter(|e| e.backup == backup)
                        .all(|e| e.outcome == Outcome::Failed)
                {
                    format!(
                        "failed, and {} newer failed backup(s) of its volumes are kept (failed-last={})",
                        policy.failed_last, policy.failed_last
                    )
                } else {
                    format!("kept by no rule of {policy} for any of its volumes")
                };
                result.delete.push(Deleted {
                    backup: backup.to_string(),
                    reason,
                });
            }
        }
    }
    result
}

/// restic's `ApplyPolicy` over one identity's successful entries, newest first: the backups
/// kept and why.
fn apply_rules<'a>(
    policy: &KeepPolicy,
    identity: &str,
    history: &[&'a Entry],
) -> Vec<(&'a str, KeepReason)> {
    let mut kept = Vec::new();
    if !policy.limits_successful() {
        for entry in history {
            kept.push((
                entry.backup.as_str(),
                KeepReason::NoPolicy {
                    identity: identity.to_string(),
                },
            ));
        }
        return kept;
    }
    // Each rule: counts left and the bucket of the last backup it kept.
    let mut rules: Vec<(Rule, u32, Option<i64>)> = policy
        .rules()
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(rule, count)| (rule, count, None))
        .collect();
    let oldest = history.len().saturating_sub(1);
    for (index, entry) in history.iter().enumerate() {
        for (rule, count, last) in rules.iter_mut() {
            if *count == 0 {
                continue;
            }
            let bucket = rule.bucket(entry.started, index);
            let new_bucket = Some(bucket) != *last;
            if new_bucket || index == oldest {
                let reason = if new_bucket {
                    KeepReason::Rule {
                        identity: identity.to_string(),
                        rule: *rule,
                    }
                } else {
                    KeepReason::Oldest {
                        identity: identity.to_string(),
                        rule: *rule,
                    }
                };
                kept.push((entry.backup.as_str(), reason));
                *last = Some(bucket);
                if *count != UNLIMITED {
                    *count -= 1;
                }
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn entry(backup: &str, identity: &str, started: DateTime<Utc>, outcome: Outcome) -> Entry {
        Entry {
            backup: backup.to_string(),
            identity: identity.to_string(),
            started,
            outcome,
        }
    }

    fn kept_names(plan: &Plan) -> Vec<&str> {
        plan.keep.iter().map(|k| k.backup.as_str()).collect()
    }

    fn deleted_names(plan: &Plan) -> Vec<&str> {
        plan.delete.iter().map(|d| d.backup.as_str()).collect()
    }

    /// One backup a day at 02:00 from `first` for `days` days, one identity `db`, named by date.
    fn daily(first: DateTime<Utc>, days: i64) -> Vec<Entry> {
        (0..days)
            .map(|day| {
                let started = first + Duration::days(day);
                entry(
                    &format!("nightly-{}", started.format("%Y%m%d")),
                    "db",
                    started,
                    Outcome::Succeeded,
                )
            })
            .collect()
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let entries = daily(at("2026-01-01T02:00:00Z"), 5);
        let policy = KeepPolicy {
            last: 2,
            ..Default::default()
        };
        let plan = plan(&policy, &entries);
        assert_eq!(kept_names(&plan), ["nightly-20260105", "nightly-20260104"]);
        assert_eq!(
            deleted_names(&plan),
            ["nightly-20260103", "nightly-20260102", "nightly-20260101"]
        );
        assert_eq!(
            plan.delete[0].reason,
            "kept by no rule of keep-last=2 failed-last=1 for any of its volumes"
        );
        assert_eq!(
            plan.keep[0].reasons,
            [KeepReason::Rule {
                identity: "db".into(),
                rule: Rule::Last
            }]
        );
        // Input order does not matter.
        let mut reversed = entries.clone();
        reversed.reverse();
        assert_eq!(super::plan(&policy, &reversed), plan);
    }

    /// restic's documentation: with a backup every day for years, `--keep-daily 7
    /// --keep-weekly 5 --keep-monthly 12 --keep-yearly 75` keeps the 7 newest dailies, 4 more
    /// week ends (the dailies already hold one), 11 or 12 month ends and the year ends.
    #[test]
    fn restic_documented_daily_weekly_monthly_yearly_policy() {
        // 2023-01-01 .. 2026-03-15 (a Sunday), daily.
        let first = at("2023-01-01T02:00:00Z");
        let days = (at("2026-03-15T02:00:00Z") - first).num_days() + 1;
        let entries = daily(first, days);
        let policy = KeepPolicy {
            daily: 7,
            weekly: 5,
            monthly: 12,
            yearly: 75,
            ..Default::default()
        };
        let plan = plan(&policy, &entries);
        let kept: BTreeSet<&str> = kept_names(&plan).into_iter().collect();
        let reasons_of = |name: &str| {
            plan.keep
                .iter()
                .find(|k| k.backup == name)
                .map(|k| k.reasons.clone())
                .unwrap_or_default()
        };
        let has = |name: &str, rule: Rule| {
            reasons_of(name).contains(&KeepReason::Rule {
                identity: "db".into(),
                rule,
            })
        };
        // 7 dailies: 03-09 .. 03-15.
        for day in 9..=15 {
            assert!(
                has(&format!("nightly-202603{day:02}"), Rule::Daily),
                "03-{day}"
            );
        }
        // Weekly: the newest of each ISO week: Sunday 03-15 (also daily), then the Sundays
        // 03-08, 03-01, 02-22, 02-15: 4 more.
        for name in [
            "nightly-20260315",
            "nightly-20260308",
            "nightly-20260301",
            "nightly-20260222",
            "nightly-20260215",
        ] {
            assert!(has(name, Rule::Weekly), "{name}");
        }
        // Monthly: 03-15 (newest of March), then the month ends 2026-02-28 .. 2025-04-30.
        assert!(has("nightly-20260315", Rule::Monthly));
        assert!(has("nightly-20260228", Rule::Monthly));
        assert!(has("nightly-20250430", Rule::Monthly));
        assert!(
            !kept.contains("nightly-20250331"),
            "the 13th month is not kept"
        );
        // Yearly: 2026's newest, the year ends of 2025 (also December's monthly), 2024 and
        // 2023, and as counts are left when the history ends, its oldest backup (restic
        // 0.17's rule).
        for name in ["nightly-20251231", "nightly-20241231", "nightly-20231231"] {
            assert!(has(name, Rule::Yearly), "{name}");
        }
        assert_eq!(
            reasons_of("nightly-20230101"),
            [KeepReason::Oldest {
                identity: "db".into(),
                rule: Rule::Yearly
            }]
        );
        // 7 daily + 4 weekly + 11 monthly (March's is a daily) + 2 year ends (2025's is a
        // monthly) + the oldest.
        assert_eq!(kept.len(), 7 + 4 + 11 + 2 + 1, "{kept:?}");
        assert_eq!(plan.keep.len() + plan.delete.len(), entries.len());
    }

    /// restic's documentation: backups only on Sundays for 12 weeks; `--keep-daily 4` keeps
    /// the last four Sundays, as only days with a backup count.
    #[test]
    fn restic_documented_sparse_daily_counts_days_with_backups() {
        let first = at("2026-01-04T10:00:00Z"); // a Sunday
        let entries: Vec<Entry> = (0..12)
            .map(|week| {
                let started = first + Duration::weeks(week);
                entry(&format!("w{week:02}"), "db", started, Outcome::Succeeded)
            })
            .collect();
        let plan = plan(
            &KeepPolicy {
                daily: 4,
                ..Default::default()
            },
            &entries,
        );
        assert_eq!(kept_names(&plan), ["w11", "w10", "w09", "w08"]);
        assert_eq!(plan.delete.len(), 8);
    }

    #[test]
    fn a_bucket_keeps_its_newest_and_the_oldest_while_counts_are_left() {
        // Three backups on one day, keep-daily 7: the day's newest is kept, and since six
        // daily counts are left at the end of the history, the oldest too (restic 0.17+).
        let entries = vec![
            entry(
                "morning",
                "db",
                at("2026-03-01T06:00:00Z"),
                Outcome::Succeeded,
            ),
            entry("noon", "db", at("2026-03-01T12:00:00Z"), Outcome::Succeeded),
            entry(
                "evening",
                "db",
                at("2026-03-01T18:00:00Z"),
                Outcome::Succeeded,
            ),
        ];
        let plan = plan(
            &KeepPolicy {
                daily: 7,
                ..Default::default()
            },
            &entries,
        );
        assert_eq!(kept_names(&plan), ["evening", "morning"]);
        assert_eq!(deleted_names(&plan), ["noon"]);
        assert_eq!(
            plan.keep[1].reasons,
            [KeepReason::Oldest {
                identity: "db".into(),
                rule: Rule::Daily
            }]
        );
        assert_eq!(
            plan.keep[1].reasons[0].to_string(),
            "oldest daily backup of db"
        );
    }

    #[test]
    fn hourly_and_weekly_buckets_follow_the_clock_and_iso_weeks() {
        let entries = vec![
            entry("a", "db", at("2026-03-01T10:05:00Z"), Outcome::Succeeded),
            entry("b", "db", at("2026-03-01T10:55:00Z"), Outcome::Succeeded),
            entry("c", "db", at("2026-03-01T11:00:00Z"), Outcome::Succeeded),
            entry("d", "db", at("2026-03-01T12:30:00Z"), Outcome::Succeeded),
        ];
        let hourly = plan(
            &KeepPolicy {
                hourly: 2,
                ..Default::default()
            },
            &entries,
        );
        assert_eq!(kept_names(&hourly), ["d", "c"]);

        // 2026-12-31 (Thursday) and 2027-01-03 (Sunday) are ISO week 53 of 2026; 2027-01-04
        // starts week 1 of 2027.
        let entries = vec![
            entry("thu", "db", at("2026-12-31T00:00:00Z"), Outcome::Succeeded),
            entry("sun", "db", at("2027-01-03T00:00:00Z"), Outcome::Succeeded),
            entry("mon", "db", at("2027-01-04T00:00:00Z"), Outcome::Succeeded),
        ];
        let weekly = plan(
            &KeepPolicy {
                weekly: 2,
                ..Default::default()
            },
            &entries,
        );
        assert_eq!(kept_names(&weekly), ["mon", "sun"]);
        assert_eq!(deleted_names(&weekly), ["thu"]);
        let yearly = plan(
            &KeepPolicy {
                yearly: 1,
                ..Default::default()
            },
            &entries,
        );
        assert_eq!(
            kept_names(&yearly),
            ["mon"],
            "calendar years, not ISO years"
        );
    }

    #[test]
    fn unlimited_keeps_every_bucket() {
        let entries = daily(at("2026-01-01T02:00:00Z"), 40);
        let plan = plan(
            &KeepPolicy {
                monthly: UNLIMITED,
                ..Default::default()
            },
            &entries,
        );
        // January's newest (01-31), February's newest (02-09), and the oldest (01-01).
        assert_eq!(
            kept_names(&plan),
            ["nightly-20260209", "nightly-20260131", "nightly-20260101"]
        );
        assert_eq!(
            KeepPolicy {
                monthly: UNLIMITED,
                last: 3,
                ..Default::default()
            }
            .to_string(),
            "keep-last=3 keep-monthly=unlimited failed-last=1"
        );
    }

    #[test]
    fn a_backup_kept_for_any_identity_is_kept() {
        // `shared` is old for `db` (deleted by keep-last 1) but the newest for `cache`.
        let entries = vec![
            entry("old", "db", at("2026-03-01T00:00:00Z"), Outcome::Succeeded),
            entry(
                "shared",
                "db",
                at("2026-03-02T00:00:00Z"),
                Outcome::Succeeded,
            ),
            entry(
                "shared",
                "cache",
                at("2026-03-02T00:00:00Z"),
                Outcome::Succeeded,
            ),
            entry("new", "db", at("2026-03-03T00:00:00Z"), Outcome::Succeeded),
        ];
        let plan = plan(
            &KeepPolicy {
                last: 1,
                ..Default::default()
            },
            &entries,
        );
        assert_eq!(kept_names(&plan), ["new", "shared"]);
        assert_eq!(deleted_names(&plan), ["old"]);
        assert_eq!(
            plan.keep[1].reasons,
            [KeepReason::Rule {
                identity: "cache".into(),
                rule: Rule::Last
            }]
        );
    }

    #[test]
    fn failed_backups_are_kept_by_their_own_limit() {
        let entries = vec![
            entry("ok-1", "db", at("2026-03-01T00:00:00Z"), Outcome::Succeeded),
            entry("fail-1", "db", at("2026-03-02T00:00:00Z"), Outcome::Failed),
            entry("fail-2", "db", at("2026-03-03T00:00:00Z"), Outcome::Failed),
            entry("ok-2", "db", at("2026-03-04T00:00:00Z"), Outcome::Succeeded),
            entry(
                "running",
                "db",
                at("2026-03-05T00:00:00Z"),
                Outcome::InProgress,
            ),
        ];
        let policy = KeepPolicy {
            last: 1,
            ..Default::default()
        };
        let plan = plan(&policy, &entries);
        // The newest success, the newest failure, the running one.
        assert_eq!(kept_names(&plan), ["running", "ok-2", "fail-2"]);
        assert_eq!(deleted_names(&plan), ["fail-1", "ok-1"]);
        assert_eq!(
            plan.delete[0].reason,
            "failed, and 1 newer failed backup(s) of its volumes are kept (failed-last=1)"
        );
        // Failures do not use up keep-last: it counts successful backups only.
        assert_eq!(plan.keep[1].reasons[0].to_string(), "last backup of db");

        let none = super::plan(
            &KeepPolicy {
                last: 1,
                failed_last: 0,
                ..Default::default()
            },
            &entries,
        );
        assert_eq!(deleted_names(&none), ["fail-2", "fail-1", "ok-1"]);
    }

    #[test]
    fn no_keep_rule_keeps_every_successful_backup() {
        let entries = vec![
            entry("a", "db", at("2026-03-01T00:00:00Z"), Outcome::Succeeded),
            entry("b", "db", at("2026-03-02T00:00:00Z"), Outcome::Failed),
            entry("c", "db", at("2026-03-03T00:00:00Z"), Outcome::Failed),
        ];
        let plan = plan(&KeepPolicy::default(), &entries);
        assert_eq!(kept_names(&plan), ["c", "a"]);
        assert_eq!(deleted_names(&plan), ["b"]);
        assert_eq!(
            plan.keep[1].reasons[0].to_string(),
            "no keep rule limits the backups of db"
        );
        assert_eq!(super::plan(&KeepPolicy::default(), &[]), Plan::default());
    }

    #[test]
    fn ties_in_start_time_break_by_name() {
        let time = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
        let entries = vec![
            entry("b", "db", time, Outcome::Succeeded),
            entry("a", "db", time, Outcome::Succeeded),
        ];
        let policy = KeepPolicy {
            last: 1,
            ..Default::default()
        };
        assert_eq!(kept_names(&plan(&policy, &entries)), ["b"]);
        let mut swapped = entries.clone();
        swapped.swap(0, 1);
        assert_eq!(kept_names(&plan(&policy, &swapped)), ["b"]);
    }
}
