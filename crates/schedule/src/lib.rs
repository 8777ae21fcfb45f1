//! A schedule's policy as pure functions: when it fires ([`Schedule`]: cron, `@every`, the
//! nicknames and K8up's jittered `@daily-random` forms, with the no-overlap and missed-firing
//! rules in [`Schedule::decide`]) and which backups its keep policy deletes
//! ([`retention::plan`], restic's `forget` rules per stable identity), and how its backups are
//! named and labelled ([`backup_name`], [`SCHEDULE_LABEL`]).

mod expr;
pub mod retention;

pub use expr::{Decision, SCHEDULE_LABEL, Schedule, ScheduleError, backup_name};
pub use retention::{Deleted, Entry, KeepPolicy, KeepReason, Kept, Outcome, Plan, Rule, UNLIMITED};
