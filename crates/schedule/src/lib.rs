//! A schedule's policy as pure functions: when it fires ([`Schedule`]: cron, `@every`, the
//! nicknames and K8up's jittered `@daily-random` forms, with the no-overlap and missed-firing
//! rules in [`Schedule::decide`]) and which backups its keep policy deletes
//! ([`retention::plan`], restic's `forget` rules per stable identity).

mod expr;
pub mod retention;

pub use expr::{Decision, Schedule, ScheduleError};
pub use retention::{Deleted, Entry, KeepPolicy, KeepReason, Kept, Outcome, Plan, Rule, UNLIMITED};
