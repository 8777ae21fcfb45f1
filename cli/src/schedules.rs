//! `stowage schedule …`: backups the orchestrator makes on a cron expression, and the keep
//! flags (`--keep-last`, …) that `schedule create` and `backup create` share.

use std::{collections::BTreeMap, fmt::Write as _, process::ExitCode};

use clap::{Args, Subcommand};
use serde::Serialize;
use stowage_proto::v1;

use crate::{
    BackupSpecArgs, Format, OutputArgs,
    commands::{backup_spec, print_structured, print_text},
    error::{Call, CliError},
    session::Session,
    table::{list_or_none, render_table},
    view::{BackupSpecView, rfc3339},
};

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule: `stowage schedule create nightly --schedule "0 2 * * *"
    /// --include-namespaces shop --keep-daily 7`.
    Create(Box<ScheduleCreate>),
    /// List the schedules, or show one.
    #[command(visible_alias = "list")]
    Get {
        name: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show a schedule: its expression, template, keep policy, last and next firing, skipped
    /// firings, and which backups its keep policy would delete after its next backup.
    Describe {
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Stop a schedule from firing until it is resumed.
    Pause { name: String },
    /// Let a paused schedule fire again, from its next time on (missed firings are not made up).
    #[command(visible_alias = "unpause")]
    Resume { name: String },
    /// Delete a schedule; the backups it made stay.
    Delete { name: String },
}

#[derive(Debug, Args)]
pub struct ScheduleCreate {
    /// Schedule name: a DNS-1123 subdomain of at most 48 characters (its backups are named
    /// `<schedule>-<yyyymmddhhmmss>`).
    pub name: String,
    /// When it fires, in UTC: a cron expression (`0 2 * * *`), `@every 6h`, `@daily`, or a
    /// jittered form such as `@daily-random` (a time spread by the schedule's name).
    #[arg(long, required = true)]
    pub schedule: String,
    /// Create the schedule paused.
    #[arg(long)]
    pub paused: bool,
    #[command(flatten)]
    pub spec: BackupSpecArgs,
    #[command(flatten)]
    pub keep: KeepArgs,
    /// Print the created schedule as yaml or json instead of a sentence.
    #[arg(short = 'o', long = "output", env = "STOWAGE_OUTPUT")]
    pub output: Option<Format>,
}

/// The keep policy applied after each backup, per stable identity (restic's `forget` rules, as
/// KubeStash and K8up spell them). Without any, every backup is kept until its TTL.
#[derive(Debug, Clone, Default, Args)]
pub struct KeepArgs {
    /// Keep the N newest backups.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest backup of each of the N newest hours that have one.
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// Keep the newest backup of each of the N newest days.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// Keep the newest backup of each of the N newest ISO weeks.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// Keep the newest backup of each of the N newest months.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// Keep the newest backup of each of the N newest years.
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
    /// Failed backups kept, newest first (default 1).
    #[arg(long, value_name = "N")]
    pub keep_failed: Option<u32>,
}

impl KeepArgs {
    /// The policy the flags give; `None` when no flag was given.
    pub fn policy(&self) -> Option<v1::RetentionPolicy> {
        let counts = [
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
            self.keep_failed,
        ];
        if counts.iter().all(Option::is_none) {
            return None;
        }
        Some(v1::RetentionPolicy {
            keep_last: self.keep_last.unwrap_or(0),
            keep_hourly: self.keep_hourly.unwrap_or(0),
            keep_daily: self.keep_daily.unwrap_or(0),
            keep_weekly: self.keep_weekly.unwrap_or(0),
            keep_monthly: self.keep_monthly.unwrap_or(0),
            keep_yearly: self.keep_yearly.unwrap_or(0),
            keep_failed: self.keep_failed,
        })
    }
}

/// A keep policy as `keep-last=2 keep-daily=7 keep-failed=1`.
fn policy_text(policy: &Option<v1::RetentionPolicy>) -> String {
    let Some(policy) = policy else {
        return "<none: backups are kept until their TTL>".to_string();
    };
    let mut parts: Vec<String> = [
        ("last", policy.keep_last),
        ("hourly", policy.keep_hourly),
        ("daily", policy.keep_daily),
        ("weekly", policy.keep_weekly),
        ("monthly", policy.keep_monthly),
        ("yearly", policy.keep_yearly),
    ]
    .iter()
    .filter(|(_, count)| *count > 0)
    .map(|(rule, count)| format!("keep-{rule}={count}"))
    .collect();
    if parts.is_empty() {
        return "<none: backups are kept until their TTL>".to_string();
    }
    parts.push(format!("keep-failed={}", policy.keep_failed.unwrap_or(1)));
    parts.join(" ")
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SkippedFiringView {
    pub at: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleView {
    pub name: String,
    pub uid: String,
    pub schedule: String,
    pub paused: bool,
    pub created: Option<String>,
    pub template: BackupSpecView,
    /// `keep-last=2 keep-failed=1`, or a sentence saying there is none.
    pub retention: String,
    pub last_fired: Option<String>,
    pub last_backup: String,
    pub next_firing: Option<String>,
    pub skipped: Vec<SkippedFiringView>,
    pub would_delete: Vec<String>,
}

impl From<&v1::Schedule> for ScheduleView {
    fn from(schedule: &v1::Schedule) -> Self {
        let spec = schedule.spec.clone().unwrap_or_default();
        let status = schedule.status.clone().unwrap_or_default();
        ScheduleView {
            name: schedule.name.clone(),
            uid: schedule.uid.clone(),
            schedule: spec.schedule,
            paused: spec.paused,
            created: rfc3339(&schedule.created),
            template: (&spec.template).into(),
            retention: policy_text(&spec.template.and_then(|t| t.retention)),
            last_fired: rfc3339(&status.last_fired),
            last_backup: status.last_backup,
            next_firing: rfc3339(&status.next_firing),
            skipped: status
                .skipped
                .iter()
                .map(|s| SkippedFiringView {
                    at: rfc3339(&s.at),
                    reason: s.reason.clone(),
                })
                .collect(),
            would_delete: status.would_delete,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScheduleListView {
    pub schedules: Vec<ScheduleView>,
}

fn state(schedule: &ScheduleView) -> &'static str {
    if schedule.paused { "Paused" } else { "Enabled" }
}

fn dash(text: &Option<String>) -> String {
    text.clone().unwrap_or_else(|| "-".to_string())
}

pub fn schedule_table(schedules: &[ScheduleView]) -> String {
    let rows: Vec<Vec<String>> = schedules
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                state(s).to_string(),
                s.schedule.clone(),
                if s.last_backup.is_empty() {
                    "-".to_string()
                } else {
                    s.last_backup.clone()
                },
                dash(&s.next_firing),
            ]
        })
        .collect();
    render_table(
        &["NAME", "STATUS", "SCHEDULE", "LAST BACKUP", "NEXT FIRING"],
        &rows,
    )
}

pub fn describe_schedule(schedule: &ScheduleView) -> String {
    let t = &schedule.template;
    let mut out = String::new();
    let _ = writeln!(out, "Name:         {}", schedule.name);
    let _ = writeln!(out, "UID:          {}", schedule.uid);
    let _ = writeln!(out, "Status:       {}", state(schedule));
    let _ = writeln!(out, "Schedule:     {}", schedule.schedule);
    let _ = writeln!(out, "Created:      {}", dash(&schedule.created));
    out.push('\n');
    let _ = writeln!(out, "Backup template:");
    let included = if t.included_namespaces.is_empty() {
        "*".to_string()
    } else {
        t.included_namespaces.join(", ")
    };
    let _ = writeln!(out, "  Namespaces included:  {included}");
    let _ = writeln!(
        out,
        "  Namespaces excluded:  {}",
        list_or_none(&t.excluded_namespaces)
    );
    let selector: Vec<String> = t
        .label_selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(out, "  Label selector:       {}", list_or_none(&selector));
    let _ = writeln!(
        out,
        "  TTL:                  {}",
        t.ttl.as_deref().unwrap_or("<server default>")
    );
    let _ = writeln!(out, "Retention:    {}", schedule.retention);
    out.push('\n');
    let _ = writeln!(out, "Last fired:   {}", dash(&schedule.last_fired));
    let last = if schedule.last_backup.is_empty() {
        "-"
    } else {
        &schedule.last_backup
    };
    let _ = writeln!(out, "Last backup:  {last}");
    let _ = writeln!(
        out,
        "Next firing:  {}",
        if schedule.paused {
            "- (paused)".to_string()
        } else {
            dash(&schedule.next_firing)
        }
    );
    let _ = writeln!(out, "Skipped firings:");
    if schedule.skipped.is_empty() {
        let _ = writeln!(out, "  <none>");
    }
    for skipped in &schedule.skipped {
        let _ = writeln!(out, "  {}: {}", dash(&skipped.at), skipped.reason);
    }
    let _ = writeln!(out, "Would delete after the next backup:");
    if schedule.would_delete.is_empty() {
        let _ = writeln!(out, "  <none>");
    }
    for backup in &schedule.would_delete {
        let _ = writeln!(out, "  {backup}");
    }
    out
}

pub async fn run(session: &mut Session, command: ScheduleCommand) -> Result<ExitCode, CliError> {
    match command {
        ScheduleCommand::Create(create) => {
            let create = *create;
            let name = create.name.clone();
            let call = Call::new("CreateSchedule", "schedule", &name, "creating");
            let mut template = backup_spec(create.spec)?;
            template.retention = create.keep.policy();
            let schedule = session
                .client
                .create_schedule(v1::CreateScheduleRequest {
                    name: name.clone(),
                    spec: Some(v1::ScheduleSpec {
                        schedule: create.schedule,
                        template: Some(template),
                        paused: create.paused,
                    }),
                })
                .await
                .map_err(|status| session.fail(status, &call))?
                .into_inner();
            let view = ScheduleView::from(&schedule);
            match create.output.filter(|f| *f != Format::Table) {
                Some(format) => print_structured(&view, format)?,
                None => print_text(&format!(
                    "Schedule \"{name}\" created; next firing {}. Run `stowage schedule describe {name}` for details.\n",
                    if view.paused {
                        "when resumed".to_string()
                    } else {
                        dash(&view.next_firing)
                    }
                ))?,
            }
            Ok(ExitCode::SUCCESS)
        }
        ScheduleCommand::Get {
            name: Some(name),
            output,
        } => {
            let view = ScheduleView::from(&get(session, &name).await?);
            match output.format {
                Format::Table => print_text(&schedule_table(std::slice::from_ref(&view)))?,
                format => print_structured(&view, format)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        ScheduleCommand::Get { name: None, output } => {
            let call = Call::new("ListSchedules", "schedules", "", "listing");
            let response = session
                .client
                .list_schedules(v1::ListSchedulesRequest {})
                .await
                .map_err(|status| session.fail(status, &call))?
                .into_inner();
            let list = ScheduleListView {
                schedules: response.schedules.iter().map(ScheduleView::from).collect(),
            };
            match output.format {
                Format::Table => print_text(&schedule_table(&list.schedules))?,
                format => print_structured(&list, format)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        ScheduleCommand::Describe { name, output } => {
            let view = ScheduleView::from(&get(session, &name).await?);
            match output.format {
                Format::Table => print_text(&describe_schedule(&view))?,
                format => print_structured(&view, format)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        ScheduleCommand::Pause { name } => {
            let call = Call::new("PauseSchedule", "schedule", &name, "pausing");
            session
                .client
                .pause_schedule(v1::PauseScheduleRequest { name: name.clone() })
                .await
                .map_err(|status| session.fail(status, &call))?;
            print_text(&format!("Schedule \"{name}\" paused.\n"))?;
            Ok(ExitCode::SUCCESS)
        }
        ScheduleCommand::Resume { name } => {
            let call = Call::new("ResumeSchedule", "schedule", &name, "resuming");
            let schedule = session
                .client
                .resume_schedule(v1::ResumeScheduleRequest { name: name.clone() })
                .await
                .map_err(|status| session.fail(status, &call))?
                .into_inner();
            let view = ScheduleView::from(&schedule);
            print_text(&format!(
                "Schedule \"{name}\" resumed; next firing {}.\n",
                dash(&view.next_firing)
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        ScheduleCommand::Delete { name } => {
            let call = Call::new("DeleteSchedule", "schedule", &name, "deleting");
            session
                .client
                .delete_schedule(v1::DeleteScheduleRequest { name: name.clone() })
                .await
                .map_err(|status| session.fail(status, &call))?;
            print_text(&format!(
                "Schedule \"{name}\" deleted; the backups it made are kept.\n"
            ))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn get(session: &mut Session, name: &str) -> Result<v1::Schedule, CliError> {
    let call = Call::new("GetSchedule", "schedule", name, "getting");
    session
        .client
        .get_schedule(v1::GetScheduleRequest {
            name: name.to_string(),
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| session.fail(status, &call))
}

/// Labels as `key=value` lines, for `backup describe`.
pub fn labels_text(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "<none>".to_string();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::{Cli, Command};

    #[test]
    fn schedule_create_takes_the_backup_flags_and_the_keep_policy() {
        let cli = Cli::try_parse_from([
            "stowage",
            "schedule",
            "create",
            "nightly",
            "--schedule",
            "0 2 * * *",
            "--include-namespaces",
            "shop",
            "--ttl",
            "72h",
            "--keep-last",
            "2",
            "--keep-daily",
            "7",
        ])
        .unwrap();
        let Command::Schedule(ScheduleCommand::Create(create)) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(create.schedule, "0 2 * * *");
        assert_eq!(create.spec.include_namespaces, ["shop"]);
        let policy = create.keep.policy().unwrap();
        assert_eq!((policy.keep_last, policy.keep_daily), (2, 7));
        assert_eq!(policy.keep_failed, None);
        assert_eq!(
            policy_text(&Some(policy)),
            "keep-last=2 keep-daily=7 keep-failed=1"
        );
        let spec = backup_spec(create.spec).unwrap();
        assert_eq!(spec.ttl.unwrap().seconds, 72 * 3600);
    }

    #[test]
    fn a_schedule_needs_its_expression() {
        let error = Cli::try_parse_from(["stowage", "schedule", "create", "nightly"]).unwrap_err();
        assert_eq!(
            error.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn backup_create_takes_keep_flags_and_no_flag_means_no_policy() {
        let cli =
            Cli::try_parse_from(["stowage", "backup", "create", "b", "--keep-last", "3"]).unwrap();
        let Command::Backup(crate::BackupCommand::Create(create)) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(create.keep.policy().unwrap().keep_last, 3);
        assert_eq!(KeepArgs::default().policy(), None);
    }

    #[test]
    fn describe_says_what_would_be_deleted_and_why_firings_were_skipped() {
        let view = ScheduleView {
            name: "nightly".into(),
            uid: "u".into(),
            schedule: "@every 20s".into(),
            paused: false,
            created: None,
            template: (&None).into(),
            retention: "keep-last=2 keep-failed=1".into(),
            last_fired: Some("2026-01-01T00:00:20Z".into()),
            last_backup: "nightly-20260101000020".into(),
            next_firing: Some("2026-01-01T00:00:40Z".into()),
            skipped: vec![SkippedFiringView {
                at: Some("2026-01-01T00:00:20Z".into()),
                reason: "the schedule's previous backup `x` was still running".into(),
            }],
            would_delete: vec!["nightly-20260101000000".into()],
        };
        let text = describe_schedule(&view);
        assert!(
            text.contains("Would delete after the next backup:\n  nightly-20260101000000"),
            "{text}"
        );
        assert!(text.contains("was still running"), "{text}");
        assert!(
            text.contains("Retention:    keep-last=2 keep-failed=1"),
            "{text}"
        );
    }
}
