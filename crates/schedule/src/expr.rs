//! Schedule expressions and when they fire. All times are UTC.
//!
//! - five-field cron (`0 2 * * *`, minute hour day-of-month month day-of-week, Vixie cron's
//!   rules: a restricted day-of-month and day-of-week match either), through `croner`;
//! - `@yearly`/`@annually`, `@monthly`, `@weekly`, `@daily`/`@midnight`, `@hourly`;
//! - `@every <duration>` (`@every 6h`, `@every 1h30m`, Go's duration syntax): a fixed period
//!   from the previous firing, at least one second, as robfig/cron (Velero's and K8up's) does;
//! - `@hourly-random`, `@daily-random`, `@weekly-random`, `@monthly-random`,
//!   `@yearly-random`/`@annually-random` (K8up's): a cron expression whose minute, hour,
//!   day-of-month (1-27, so every month has it), month and weekday are chosen from a hash of
//!   the schedule's name, so 200 schedules spread over the period instead of all firing at
//!   02:00, and one schedule keeps its time across restarts.
//!
//! [`Schedule::decide`] applies the firing rules a scheduler needs: a schedule never overlaps
//! itself, and missed firings (the orchestrator was down) run once, never as a burst.

use std::{fmt, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};
use croner::{
    Cron,
    parser::{CronParser, Seconds, Year},
};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// An expression that cannot be used; names the expression.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("schedule `{expression}`: {reason}")]
    Invalid { expression: String, reason: String },
}

/// A parsed schedule expression.
#[derive(Clone)]
pub struct Schedule {
    expression: String,
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    /// `cron` is the effective five-field expression (a nickname's or a random's).
    Cron {
        cron: Box<Cron>,
        effective: String,
    },
    Every(Duration),
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({:?} = {})", self.expression, self.effective())
    }
}

/// What a scheduler does at a moment, by [`Schedule::decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing is due before `next`.
    Wait { next: DateTime<Utc> },
    /// Start the backup of the firing at `scheduled`. `missed` older firings passed while no
    /// one could run them and are not run (never a burst).
    Fire {
        scheduled: DateTime<Utc>,
        missed: u64,
    },
    /// The firing at `scheduled` is due but the schedule's previous backup still runs: it is
    /// skipped (and recorded), not queued.
    SkipOverlap {
        scheduled: DateTime<Utc>,
        missed: u64,
    },
}

/// Cap on the firings counted as missed, so a long outage of a per-minute schedule costs a
/// bounded walk.
const MAX_COUNTED_MISSED: u64 = 100_000;

impl Schedule {
    /// Parses `expression` for the schedule named `name` (the name seeds the `-random` forms).
    pub fn parse(expression: &str, name: &str) -> Result<Schedule, ScheduleError> {
        let invalid = |reason: String| ScheduleError::Invalid {
            expression: expression.to_string(),
            reason,
        };
        let text = expression.trim();
        if text.is_empty() {
            return Err(invalid("empty".to_string()));
        }
        if let Some(duration) = text.strip_prefix("@every") {
            let duration = duration.trim();
            if duration.is_empty() {
                return Err(invalid(
                    "@every needs a duration, such as @every 6h".to_string(),
                ));
            }
            let period = stowage_velero_format::parse_go_duration(duration).ok_or_else(|| {
                invalid(format!(
                    "`{duration}` is not a duration; write it as Go does, such as 30m, 6h or 1h30m"
                ))
            })?;
            // robfig/cron rounds a period down to whole seconds and refuses less than one.
            let period = Duration::from_secs(period.as_secs());
            if period.is_zero() {
                return Err(invalid("@every needs a period of at least 1s".to_string()));
            }
            return Ok(Schedule {
                expression: expression.to_string(),
                kind: Kind::Every(period),
            });
        }
        let effective = if text.starts_with('@') {
            nickname(text, name).ok_or_else(|| {
                invalid(
                    "unknown nickname; use @yearly, @monthly, @weekly, @daily, @hourly, \
                     @every <duration> or one of them with -random (e.g. @daily-random)"
                        .to_string(),
                )
            })?
        } else {
            let fields = text.split_whitespace().count();
            if fields != 5 {
                return Err(invalid(format!(
                    "{fields} fields; a cron expression has 5: minute hour day-of-month month day-of-week"
                )));
            }
            text.to_string()
        };
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(&effective)
            .map_err(|error| invalid(error.to_string()))?;
        let schedule = Schedule {
            expression: expression.to_string(),
            kind: Kind::Cron {
                cron: Box::new(cron),
                effective,
            },
        };
        // An expression that never fires (`0 0 30 2 *`) is refused now, not found out later.
        if schedule.next_after(DateTime::UNIX_EPOCH).is_none() {
            return Err(invalid("it never fires".to_string()));
        }
        Ok(schedule)
    }

    /// The expression as written.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The expression the schedule runs by: the cron expression of a nickname or of a
    /// `-random` form (what `describe` shows), or `@every <period>`.
    pub fn effective(&self) -> String {
        match &self.kind {
            Kind::Cron { effective, .. } => effective.clone(),
            Kind::Every(period) => format!(
                "@every {}",
                stowage_velero_format::format_go_duration(*period)
            ),
        }
    }

    /// The first firing strictly after `after`; None if there is none (a cron expression
    /// whose days never come).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Every(period) => after.checked_add_signed(TimeDelta::from_std(*period).ok()?),
            Kind::Cron { cron, .. } => cron.find_next_occurrence(&after, false).ok(),
        }
    }

    /// What to do at `now` for a schedule that last fired (ran or skipped) the firing
    /// scheduled at `last` — or, never fired yet, was created at `last` — while its previous
    /// backup `running` or not.
    ///
    /// When firings were missed, only the latest one runs, at once: it is less than one period
    /// late by construction (the next one has not come yet), and the older ones are counted in
    /// `missed` for the record. `@every` firings keep their phase: they fall at `last` plus
    /// whole periods.
    pub fn decide(&self, last: DateTime<Utc>, now: DateTime<Utc>, running: bool) -> Decision {
        let Some(first_due) = self.next_after(last) else {
            // Never fires again: wait "forever" without overflowing.
            return Decision::Wait {
                next: DateTime::<Utc>::MAX_UTC,
            };
        };
        if first_due > now {
            return Decision::Wait { next: first_due };
        }
        let (scheduled, missed) = match &self.kind {
            Kind::Every(period) => {
                let period = period.as_secs() as i64;
                let behind = (now - first_due).num_seconds() / period;
                (
                    first_due + TimeDelta::seconds(behind * period),
                    behind as u64,
                )
            }
            Kind::Cron { .. } => {
                let mut scheduled = first_due;
                let mut missed = 0u64;
                while let Some(next) = self.next_after(scheduled) {
                    if next > now {
                        break;
                    }
                    scheduled = next;
                    missed += 1;
                    if missed >= MAX_COUNTED_MISSED {
                        // Jump to the latest firing without counting the rest.
                        if let Kind::Cron { cron, .. } = &self.kind
                            && let Ok(latest) = cron.find_previous_occurrence(&now, true)
                        {
                            scheduled = latest;
                        }
                        break;
                    }
                }
                (scheduled, missed)
            }
        };
        if running {
            Decision::SkipOverlap { scheduled, missed }
        } else {
            Decision::Fire { scheduled, missed }
        }
    }
}

/// The label a schedule's backups carry, its value the schedule's name (Velero's).
pub const SCHEDULE_LABEL: &str = "velero.io/schedule-name";

/// The name of the backup `schedule` starts for its firing at `scheduled`:
/// `<schedule>-<UTC yyyymmddhhmmss>`, as Velero names a schedule's backups, so the names sort
/// by time and a firing cannot make two.
pub fn backup_name(schedule: &str, scheduled: DateTime<Utc>) -> String {
    format!("{schedule}-{}", scheduled.format("%Y%m%d%H%M%S"))
}

/// The five-field expression of a nickname, or None if `text` is not one.
fn nickname(text: &str, name: &str) -> Option<String> {
    let fixed = match text {
        "@yearly" | "@annually" => Some("0 0 1 1 *"),
        "@monthly" => Some("0 0 1 * *"),
        "@weekly" => Some("0 0 * * 0"),
        "@daily" | "@midnight" => Some("0 0 * * *"),
        "@hourly" => Some("0 * * * *"),
        _ => None,
    };
    if let Some(fixed) = fixed {
        return Some(fixed.to_string());
    }
    let spread = Spread::of(name);
    let (minute, hour, day, month, weekday) = (
        spread.pick(0, 60, 0),
        spread.pick(1, 24, 0),
        // Capped at 27 as K8up does: every month has the day, so no month is skipped.
        spread.pick(2, 27, 1),
        spread.pick(3, 12, 1),
        spread.pick(4, 7, 0),
    );
    match text {
        "@hourly-random" => Some(format!("{minute} * * * *")),
        "@daily-random" => Some(format!("{minute} {hour} * * *")),
        "@weekly-random" => Some(format!("{minute} {hour} * * {weekday}")),
        "@monthly-random" => Some(format!("{minute} {hour} {day} * *")),
        "@yearly-random" | "@annually-random" => Some(format!("{minute} {hour} {day} {month} *")),
        _ => None,
    }
}

/// Deterministic choices from a schedule's name: each field reduces its own 8 bytes of the
/// name's SHA-256 modulo its range, so the fields do not move together.
struct Spread([u8; 32]);

impl Spread {
    fn of(name: &str) -> Spread {
        Spread(Sha256::digest(name.as_bytes()).into())
    }

    /// A number in `offset..offset + modulus` for field number `field` (0 to 4).
    fn pick(&self, field: usize, modulus: u32, offset: u32) -> u32 {
        let start = field.min(4) * 6;
        let window: [u8; 8] = self.0[start..start + 8].try_into().unwrap_or([0; 8]);
        (u64::from_be_bytes(window) % u64::from(modulus)) as u32 + offset
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use chrono::{Datelike, TimeZone, Timelike};

    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn parse(expression: &str) -> Schedule {
        Schedule::parse(expression, "nightly").unwrap()
    }

    #[test]
    fn cron_fires_at_its_next_match_in_utc() {
        let nightly = parse("0 2 * * *");
        assert_eq!(
            nightly.next_after(at("2026-03-01T01:59:59Z")),
            Some(at("2026-03-01T02:00:00Z"))
        );
        // Strictly after: a firing at exactly `after` is the one already done.
        assert_eq!(
            nightly.next_after(at("2026-03-01T02:00:00Z")),
            Some(at("2026-03-02T02:00:00Z"))
        );
        // Vixie cron: restricted day-of-month OR day-of-week.
        let either = parse("0 0 13 * 5");
        assert_eq!(
            either.next_after(at("2026-03-01T00:00:00Z")),
            Some(at("2026-03-06T00:00:00Z")),
            "Friday the 6th comes before the 13th"
        );
        assert_eq!(
            parse("*/15 * * * *").next_after(at("2026-03-01T10:07:00Z")),
            Some(at("2026-03-01T10:15:00Z"))
        );
    }

    #[test]
    fn nicknames_are_their_cron_expressions() {
        for (nickname, effective) in [
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@hourly", "0 * * * *"),
        ] {
            assert_eq!(parse(nickname).effective(), effective, "{nickname}");
        }
        assert_eq!(
            parse("@weekly").next_after(at("2026-03-04T12:00:00Z")),
            Some(at("2026-03-08T00:00:00Z")),
            "Sunday midnight"
        );
    }

    #[test]
    fn every_is_a_period_from_the_previous_firing() {
        let every = parse("@every 6h");
        assert_eq!(every.effective(), "@every 6h0m0s");
        assert_eq!(
            every.next_after(at("2026-03-01T10:17:03Z")),
            Some(at("2026-03-01T16:17:03Z"))
        );
        assert_eq!(
            parse("@every 1h30m").next_after(at("2026-03-01T00:00:00Z")),
            Some(at("2026-03-01T01:30:00Z"))
        );
        assert_eq!(parse("@every 20s").effective(), "@every 20s");
        // Whole seconds, as robfig/cron.
        assert_eq!(parse("@every 2500ms").effective(), "@every 2s");
    }

    #[test]
    fn bad_expressions_are_refused_naming_them() {
        for (expression, reason) in [
            ("", "empty"),
            ("0 2 * *", "4 fields; a cron expression has 5"),
            ("0 0 2 * * *", "6 fields"),
            ("@every", "@every needs a duration"),
            ("@every soon", "`soon` is not a duration"),
            ("@every 500ms", "at least 1s"),
            ("@fortnightly", "unknown nickname"),
            ("@daily-randomly", "unknown nickname"),
            ("61 * * * *", ""),
            ("0 0 30 2 *", "never fires"),
        ] {
            let error = Schedule::parse(expression, "x").unwrap_err();
            let text = error.to_string();
            assert!(
                text.starts_with(&format!("schedule `{expression}`: ")),
                "{text}"
            );
            assert!(text.contains(reason), "{expression}: {text}");
        }
    }

    #[test]
    fn random_forms_are_stable_per_name_and_spread_over_names() {
        let a = Schedule::parse("@daily-random", "db-nightly").unwrap();
        let again = Schedule::parse("@daily-random", "db-nightly").unwrap();
        assert_eq!(
            a.effective(),
            again.effective(),
            "the same name, the same time"
        );

        let mut times = BTreeSet::new();
        let mut hours = BTreeSet::new();
        for index in 0..200 {
            let schedule = Schedule::parse("@daily-random", &format!("app-{index}")).unwrap();
            let effective = schedule.effective();
            let fields: Vec<u32> = effective
                .split_whitespace()
                .take(2)
                .map(|field| field.parse().unwrap())
                .collect();
            assert!(fields[0] < 60 && fields[1] < 24, "{effective}");
            assert!(effective.ends_with(" * * *"), "{effective}");
            times.insert((fields[1], fields[0]));
            hours.insert(fields[1]);
        }
        // 200 schedules over 1440 minutes of a day: they do not pile up.
        assert!(times.len() > 150, "only {} distinct times", times.len());
        assert_eq!(hours.len(), 24, "every hour of the day is used");

        for (form, shape) in [
            ("@hourly-random", [false, true, true, true, true]),
            ("@weekly-random", [false, false, true, true, false]),
            ("@monthly-random", [false, false, false, true, true]),
            ("@yearly-random", [false, false, false, false, true]),
            ("@annually-random", [false, false, false, false, true]),
        ] {
            let effective = Schedule::parse(form, "db").unwrap().effective();
            let stars: Vec<bool> = effective.split_whitespace().map(|f| f == "*").collect();
            assert_eq!(stars, shape, "{form} = {effective}");
        }
        let monthly = Schedule::parse("@monthly-random", "db")
            .unwrap()
            .effective();
        let day: u32 = monthly.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert!((1..=27).contains(&day), "{monthly}");
    }

    #[test]
    fn random_weekly_uses_every_weekday_over_names() {
        let weekdays: BTreeSet<String> = (0..100)
            .map(|index| {
                let effective = Schedule::parse("@weekly-random", &format!("s{index}"))
                    .unwrap()
                    .effective();
                effective.split_whitespace().nth(4).unwrap().to_string()
            })
            .collect();
        assert_eq!(weekdays.len(), 7, "{weekdays:?}");
    }

    #[test]
    fn scheduled_backups_are_named_by_schedule_and_firing_time() {
        assert_eq!(
            backup_name("nightly", at("2026-03-01T02:00:00Z")),
            "nightly-20260301020000"
        );
        let earlier = backup_name("nightly", at("2026-03-01T02:00:00Z"));
        let later = backup_name("nightly", at("2026-03-01T02:00:20Z"));
        assert!(earlier < later);
    }

    #[test]
    fn decide_waits_for_the_next_firing() {
        let nightly = parse("0 2 * * *");
        assert_eq!(
            nightly.decide(
                at("2026-03-01T02:00:00Z"),
                at("2026-03-01T12:00:00Z"),
                false
            ),
            Decision::Wait {
                next: at("2026-03-02T02:00:00Z")
            }
        );
        // A fresh schedule counts from its creation.
        assert_eq!(
            nightly.decide(
                at("2026-03-01T03:00:00Z"),
                at("2026-03-01T03:00:01Z"),
                false
            ),
            Decision::Wait {
                next: at("2026-03-02T02:00:00Z")
            }
        );
    }

    #[test]
    fn a_firing_missed_while_down_runs_once_on_start() {
        let nightly = parse("0 2 * * *");
        // Down from 01:00 to 03:00: the 02:00 firing is an hour late, less than a period.
        assert_eq!(
            nightly.decide(
                at("2026-03-01T02:00:00Z"),
                at("2026-03-02T03:00:00Z"),
                false
            ),
            Decision::Fire {
                scheduled: at("2026-03-02T02:00:00Z"),
                missed: 0
            }
        );
        // Down for three days: one run for the latest firing, the two before it are missed.
        assert_eq!(
            nightly.decide(
                at("2026-03-01T02:00:00Z"),
                at("2026-03-04T09:00:00Z"),
                false
            ),
            Decision::Fire {
                scheduled: at("2026-03-04T02:00:00Z"),
                missed: 2
            }
        );
        let every = parse("@every 20s");
        // @every keeps its phase: 00:00:00 + 20s steps; 75s later the 60s firing is the latest.
        assert_eq!(
            every.decide(
                at("2026-03-01T00:00:00Z"),
                at("2026-03-01T00:01:15Z"),
                false
            ),
            Decision::Fire {
                scheduled: at("2026-03-01T00:01:00Z"),
                missed: 2
            }
        );
        // After firing at 00:01:00, the next is 00:01:20 — no burst for the missed ones.
        assert_eq!(
            every.decide(
                at("2026-03-01T00:01:00Z"),
                at("2026-03-01T00:01:15Z"),
                false
            ),
            Decision::Wait {
                next: at("2026-03-01T00:01:20Z")
            }
        );
    }

    #[test]
    fn a_firing_while_the_last_backup_runs_is_skipped() {
        let every = parse("@every 20s");
        assert_eq!(
            every.decide(at("2026-03-01T00:00:00Z"), at("2026-03-01T00:00:21Z"), true),
            Decision::SkipOverlap {
                scheduled: at("2026-03-01T00:00:20Z"),
                missed: 0
            }
        );
    }

    #[test]
    fn a_long_outage_of_a_frequent_schedule_is_bounded() {
        let minutely = parse("* * * * *");
        let last = Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 30).unwrap();
        match minutely.decide(last, now, false) {
            Decision::Fire { scheduled, missed } => {
                assert_eq!(
                    scheduled,
                    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
                );
                assert_eq!(missed, MAX_COUNTED_MISSED);
                assert_eq!((scheduled.year(), scheduled.minute()), (2026, 0));
            }
            other => panic!("{other:?}"),
        }
    }
}
