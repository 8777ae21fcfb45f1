//! Runs each command: builds the request, calls the orchestrator, prints the answer in the
//! chosen format. Every failure becomes a [`CliError`] sentence.

use std::{collections::HashMap, io::Write, process::ExitCode};

use serde::Serialize;
use stowage_proto::v1;

use crate::{
    BackupCommand, BackupCreate, Cli, Command, ConfigCommand, Format, RepoCommand, RestoreCommand,
    RestoreCreate, Typed,
    config::{Config, ContextUpdate, DEFAULT_CONTEXT},
    connection::ConnectionArgs,
    data_only,
    error::{Call, CliError},
    follow::{self, Followed},
    parse, render,
    session::{Session, connect, get_backup, get_restore},
    view::{self, BackupView, RestoreView},
};

pub fn print_structured<T: Serialize>(value: &T, format: Format) -> Result<(), CliError> {
    let text = match format {
        Format::Json => serde_json::to_string_pretty(value)
            .map(|mut text| {
                text.push('\n');
                text
            })
            .map_err(|error| CliError::Output(error.to_string()))?,
        Format::Yaml | Format::Table => {
            serde_yaml::to_string(value).map_err(|error| CliError::Output(error.to_string()))?
        }
    };
    print_text(&text)
}

pub fn print_text(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        // `stowage backup get | head` closes the pipe early; that is not an error.
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(error) => Err(CliError::Output(error.to_string())),
    }
}

fn structured(format: Option<Format>) -> Option<Format> {
    format.filter(|format| *format != Format::Table)
}

pub async fn run(cli: Cli, typed: Typed) -> Result<ExitCode, CliError> {
    match cli.command {
        // These need no server, so they run without connecting.
        Command::Config(command) => config(&cli.connection, typed, command),
        Command::Completion { shell } => completion(shell),
        Command::Backup(command) => backup(&mut connect(&cli.connection).await?, command).await,
        Command::Restore(command) => restore(&mut connect(&cli.connection).await?, command).await,
        Command::Schedule(command) => {
            crate::schedules::run(&mut connect(&cli.connection).await?, command).await
        }
        Command::Repo(command) => repo(&mut connect(&cli.connection).await?, command).await,
        Command::Coverage {
            namespaces,
            default_volumes_to_fs_backup,
            output,
        } => {
            let mut session = connect(&cli.connection).await?;
            let call = Call::new("GetCoverage", "coverage", "", "getting");
            let response = session
                .client
                .get_coverage(v1::GetCoverageRequest {
                    namespaces,
                    default_volumes_to_fs_backup,
                })
                .await
                .map_err(|status| session.fail(status, &call))?
                .into_inner();
            let coverage = view::CoverageView::new(&response, default_volumes_to_fs_backup);
            match output.format {
                Format::Table => print_text(&render::coverage_text(&coverage))?,
                format => print_structured(&coverage, format)?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `stowage completion SHELL`: the script clap_complete writes from this CLI's definition.
fn completion(shell: clap_complete::Shell) -> Result<ExitCode, CliError> {
    let mut script = Vec::new();
    clap_complete::generate(
        shell,
        &mut <Cli as clap::CommandFactory>::command(),
        "stowage",
        &mut script,
    );
    print_text(&String::from_utf8_lossy(&script))?;
    Ok(ExitCode::SUCCESS)
}

/// `stowage config …`: reads the config file, changes it, writes it back whole.
fn config(
    args: &ConnectionArgs,
    typed: Typed,
    command: ConfigCommand,
) -> Result<ExitCode, CliError> {
    let failed = |error: crate::config::ConfigError| CliError::Config(error.to_string());
    let path = args.config_path().map_err(failed)?;
    let mut config = Config::load(&path).map_err(failed)?;
    // What the command line (not the environment) gives is what a context saves.
    let update = |server: Option<String>| ContextUpdate {
        server,
        cacert: args.cacert.clone().filter(|_| typed.cacert),
        tls_server_name: args
            .tls_server_name
            .clone()
            .filter(|_| typed.tls_server_name),
        cert: args.cert.clone().filter(|_| typed.cert),
        key: args.key.clone().filter(|_| typed.key),
        token_file: args.token_file.clone().filter(|_| typed.token_file),
    };
    let typed_server = args.server.clone().filter(|_| typed.server);
    let message = match command {
        ConfigCommand::SetServer { url } => {
            let name = args
                .context
                .clone()
                .or_else(|| config.current_context.clone())
                .unwrap_or_else(|| DEFAULT_CONTEXT.to_string());
            config
                .set_context(&name, update(Some(url.clone())))
                .map_err(failed)?;
            if config.current_context.is_none() {
                config.current_context = Some(name.clone());
            }
            config.save(&path).map_err(failed)?;
            format!("Server of context \"{name}\" set to {url}.\n")
        }
        ConfigCommand::SetContext { name } => {
            let existed = config.context(&name).is_some();
            config
                .set_context(&name, update(typed_server))
                .map_err(failed)?;
            config.save(&path).map_err(failed)?;
            format!(
                "Context \"{name}\" {}.\n",
                if existed { "modified" } else { "created" }
            )
        }
        ConfigCommand::UseContext { name } => {
            config.use_context(&name, &path).map_err(failed)?;
            config.save(&path).map_err(failed)?;
            format!("Switched to context \"{name}\".\n")
        }
        ConfigCommand::DeleteContext { name } => {
            config.delete_context(&name, &path).map_err(failed)?;
            config.save(&path).map_err(failed)?;
            format!("Deleted context \"{name}\".\n")
        }
        ConfigCommand::CurrentContext => match &config.current_context {
            Some(name) => format!("{name}\n"),
            None => {
                return Err(failed(crate::config::ConfigError::NoCurrentContext {
                    path,
                }));
            }
        },
        ConfigCommand::GetContexts { output } => match output.format {
            Format::Table => render::contexts_table(&config),
            format => {
                print_structured(&config, format)?;
                return Ok(ExitCode::SUCCESS);
            }
        },
    };
    print_text(&message)?;
    Ok(ExitCode::SUCCESS)
}

async fn backup(session: &mut Session, command: BackupCommand) -> Result<ExitCode, CliError> {
    match command {
        BackupCommand::Create(create) => create_backup(session, *create).await,
        BackupCommand::Get {
            name: Some(name),
            output,
            ..
        } => {
            let backup = BackupView::from(&get_backup(session, &name).await?);
            match output.format {
                Format::Table => print_text(&render::backup_table(
                    std::slice::from_ref(&backup),
                    chrono::Utc::now(),
                ))?,
                format => print_structured(&backup, format)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Get {
            name: None,
            selector,
            output,
        } => {
            let call = Call::new("ListBackups", "backups", "", "listing");
            let response = session
                .client
                .list_backups(v1::ListBackupsRequest {})
                .await
                .map_err(|status| session.fail(status, &call))?
                .into_inner();
            let selector = selector.unwrap_or_default();
            let list = view::BackupListView {
                backups: response
                    .backups
                    .iter()
                    .map(BackupView::from)
                    .filter(|backup| {
                        selector
                            .iter()
                            .all(|(key, value)| backup.labels.get(key) == Some(value))
                    })
                    .collect(),
            };
            match output.format {
                Format::Table => {
                    print_text(&render::backup_table(&list.backups, chrono::Utc::now()))?
                }
                format => print_structured(&list, format)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Describe {
            name,
            details,
            output,
        } => {
            let backup = BackupView::from(&get_backup(session, &name).await?);
            match output.format {
                Format::Table => print_text(&render::describe_backup(&backup, details))?,
                format => print_structured(&backup, format)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Logs { name, output } => {
            let call = Call::new("GetBackupLogs", "backup", &name, "getting the logs of");
            let response = session
                .client
                .get_backup_logs(v1::GetBackupLogsRequest { name })
                .await
                .map_err(|status| session.fail(status, &call))?
                .into_inner();
            print_logs(&response, output.format)
        }
        BackupCommand::Ls(ls) => crate::browse::list(session, ls).await,
        BackupCommand::Delete { name } => {
            let call = Call::new("DeleteBackup", "backup", &name, "deleting");
            let response = session
                .client
                .delete_backup(v1::DeleteBackupRequest { name: name.clone() })
                .await
                .map_err(|status| session.fail(status, &call))?
                .into_inner();
            print_text(&format!(
                "Backup \"{name}\" deleted; {} restic snapshot(s) forgotten.\n",
                response.forgotten_snapshot_ids.len()
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Cancel { name } => {
            let call = Call::new("CancelBackup", "backup", &name, "cancelling");
            let backup = session
                .client
                .cancel_backup(v1::CancelBackupRequest { name: name.clone() })
                .await
                .map_err(|status| session.fail(status, &call))?
                .into_inner();
            let phase = view::backup_phase(backup.status.unwrap_or_default().phase);
            print_text(&format!(
                "Cancel of backup \"{name}\" requested; its phase is now {phase}.\n"
            ))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_logs(response: &v1::GetLogsResponse, format: Format) -> Result<ExitCode, CliError> {
    let lines: Vec<view::LogLineView> = response.lines.iter().map(Into::into).collect();
    match format {
        Format::Table => print_text(&render::log_lines(&lines))?,
        format => print_structured(&lines, format)?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn create_backup(session: &mut Session, create: BackupCreate) -> Result<ExitCode, CliError> {
    let name = create.name.clone();
    let call = Call::new("CreateBackup", "backup", &name, "creating");
    let mut spec = backup_spec(create.spec)?;
    spec.retention = create.keep.policy();
    let request = v1::CreateBackupRequest {
        name: name.clone(),
        spec: Some(spec),
    };
    let created = match session.client.create_backup(request.clone()).await {
        Ok(created) => created.into_inner(),
        // The connection broke with the call in flight: the backup may have been created.
        Err(status) if std::error::Error::source(&status).is_some() => {
            crate::standby::create_backup_again(session, request, &call).await?
        }
        Err(status) => return Err(session.fail(status, &call)),
    };
    after_create(session, created, name, create.wait, create.output).await
}

/// The spec the backup flags give (`backup create` and `schedule create`).
/// The backup spec of `backup create`'s and `schedule create`'s flags; fails on a hooks file
/// that cannot be read.
pub fn backup_spec(args: crate::BackupSpecArgs) -> Result<v1::BackupSpec, CliError> {
    let hooks = match &args.hooks_file {
        Some(path) => crate::hooks_file::read(path).map_err(CliError::Usage)?,
        None => Vec::new(),
    };
    Ok(v1::BackupSpec {
        hooks,
        included_namespaces: args.include_namespaces,
        excluded_namespaces: args.exclude_namespaces,
        include_resources: args.include_resources,
        exclude_resources: args.exclude_resources,
        label_selector: args
            .selector
            .unwrap_or_default()
            .into_iter()
            .collect::<HashMap<_, _>>(),
        default_volumes_to_fs_backup: args.default_volumes_to_fs_backup,
        ttl: args.ttl.map(view::proto_duration),
        timeout: args.timeout.map(view::proto_duration),
        exclude_paths: args.exclude_paths,
        ..Default::default()
    })
}

/// What the create-and-wait flow needs to know of a backup or a restore.
trait Operation: Into<Followed> + TryFrom<Followed> {
    /// The word in sentences and in commands (`stowage backup describe`).
    const KIND: &'static str;
    /// [`Self::KIND`] at the start of a sentence.
    const SENTENCE_KIND: &'static str;
    /// What `-o json|yaml` prints.
    type View: Serialize + for<'a> From<&'a Self>;
    fn phase(view: &Self::View) -> &str;
    fn trace_id(view: &Self::View) -> &str;
    fn failure_reason(view: &Self::View) -> &str;
}

impl Operation for v1::Backup {
    const KIND: &'static str = "backup";
    const SENTENCE_KIND: &'static str = "Backup";
    type View = BackupView;
    fn phase(view: &BackupView) -> &str {
        &view.status.phase
    }
    fn trace_id(view: &BackupView) -> &str {
        &view.status.trace_id
    }
    fn failure_reason(view: &BackupView) -> &str {
        &view.status.failure_reason
    }
}

impl Operation for v1::Restore {
    const KIND: &'static str = "restore";
    const SENTENCE_KIND: &'static str = "Restore";
    type View = RestoreView;
    fn phase(view: &RestoreView) -> &str {
        &view.status.phase
    }
    fn trace_id(view: &RestoreView) -> &str {
        &view.status.trace_id
    }
    fn failure_reason(view: &RestoreView) -> &str {
        &view.status.failure_reason
    }
}

/// After a create: says the request was submitted (or prints the created object), and with
/// `--wait` follows it to its end, prints the outcome and fails unless it ended Completed.
async fn after_create<T: Operation>(
    session: &mut Session,
    created: T,
    name: String,
    wait: bool,
    output: Option<Format>,
) -> Result<ExitCode, CliError> {
    let (kind, sentence_kind) = (T::KIND, T::SENTENCE_KIND);
    let output = structured(output);
    if !wait {
        match output {
            Some(format) => print_structured(&T::View::from(&created), format)?,
            None => print_text(&format!(
                "{sentence_kind} request \"{name}\" submitted successfully.\n\
                 Run `stowage {kind} describe {name}` or `stowage {kind} logs {name}` for more details.\n"
            ))?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    if output.is_none() {
        print_text(&format!(
            "{sentence_kind} request \"{name}\" submitted successfully.\n\
             Waiting for the {kind} to complete. You may safely press ctrl-c to stop waiting - your {kind} will continue in the background.\n"
        ))?;
    }
    let Some(finished) = follow::follow(session, created, output.is_some()).await? else {
        return Ok(interrupted(kind, &name));
    };
    let view = T::View::from(&finished);
    let phase = T::phase(&view);
    match output {
        Some(format) => print_structured(&view, format)?,
        None => {
            let mut text = format!("{sentence_kind} completed with status: {phase}.");
            text.push_str(&format!(
                " You may check for more information using `stowage {kind} describe {name} --details` and `stowage {kind} logs {name}`.\n"
            ));
            let trace_id = T::trace_id(&view);
            if !trace_id.is_empty() {
                text.push_str(&format!("Trace ID: {trace_id}\n"));
            }
            print_text(&text)?;
        }
    }
    if phase == "Completed" {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(CliError::EndedUnsuccessfully {
            kind,
            command: kind,
            name,
            phase: phase.to_string(),
            reason: reason_suffix(T::failure_reason(&view)),
        })
    }
}

fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" ({})", reason.trim_end_matches('.'))
    }
}

/// Ctrl-C while waiting: the operation goes on in the server; say how to follow it again.
fn interrupted(kind: &str, name: &str) -> ExitCode {
    eprintln!(
        "Stopped waiting; the {kind} goes on. Follow it with `stowage {kind} describe {name}`."
    );
    ExitCode::from(130)
}

async fn restore(session: &mut Session, command: RestoreCommand) -> Result<ExitCode, CliError> {
    match command {
        RestoreCommand::Create(create) => create_restore(session, *create).await,
        RestoreCommand::Get {
            name: Some(name),
            output,
        } => {
            let restore = RestoreView::from(&get_restore(session, &name).await?);
            match output.format {
                Format::Table => {
                    print_text(&render::restore_table(std::slice::from_ref(&restore)))?
                }
                format => print_structured(&restore, format)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        RestoreCommand::Get { name: None, output } => {
            let call = Call::new("ListRestores", "restores", "", "listing");
            let response = session
                .client
                .list_restores(v1::ListRestoresRequest {})
                .await
                .map_err(|status| session.fail(status, &call))?
                .into_inner();
            let list = view::RestoreListView {
                restores: response.restores.iter().map(RestoreView::from).collect(),
            };
            match output.format {
                Format::Table => print_text(&render::restore_table(&list.restores))?,
                format => print_structured(&list, format)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        RestoreCommand::Describe {
            name,
            details,
            output,
        } => {
            let restore = RestoreView::from(&get_restore(session, &name).await?);
            match output.format {
                Format::Table => print_text(&render::describe_restore(&restore, details))?,
                format => print_structured(&restore, format)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        RestoreCommand::Logs { name, output } => {
            let call = Call::new("GetRestoreLogs", "restore", &name, "getting the logs of");
            let response = session
                .client
                .get_restore_logs(v1::GetRestoreLogsRequest { name })
                .await
                .map_err(|status| session.fail(status, &call))?
                .into_inner();
            print_logs(&response, output.format)
        }
        RestoreCommand::Cancel { name } => {
            let call = Call::new("CancelRestore", "restore", &name, "cancelling");
            let restore = match session
                .client
                .cancel_restore(v1::CancelRestoreRequest { name: name.clone() })
                .await
            {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    let failure = session.fail(status, &call);
                    if matches!(failure, CliError::Unimplemented { .. }) {
                        // A server that cannot cancel restores can still say whether the
                        // restore exists: a mistyped name is reported as such, not as a
                        // missing feature.
                        let lookup = get_restore(session, &name).await;
                        return Err(cancel_unsupported(failure, lookup));
                    }
                    return Err(failure);
                }
            };
            let phase = view::restore_phase(restore.status.unwrap_or_default().phase);
            print_text(&format!(
                "Cancel of restore \"{name}\" requested; its phase is now {phase}.\n"
            ))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The error of a `restore cancel` the server does not implement: "not found" when the
/// restore does not exist either, else the unsupported call.
fn cancel_unsupported(unsupported: CliError, lookup: Result<v1::Restore, CliError>) -> CliError {
    match lookup {
        Err(not_found @ CliError::NotFound { .. }) => not_found,
        _ => unsupported,
    }
}

async fn create_restore(
    session: &mut Session,
    create: RestoreCreate,
) -> Result<ExitCode, CliError> {
    let mapping = parse::collect_mappings(&create.namespace_mappings)
        .map_err(|error| CliError::Usage(error.to_string()))?;
    data_only::check_flags(
        create.data_only,
        &create.volumes,
        create.target_pvc.as_deref(),
        create.overwrite_policy,
    )?;
    if create.data_only && !create.yes {
        data_only::confirm_running_pods(session, &create.from_backup, |backup| {
            data_only::target_claims(
                backup,
                &create.volumes,
                &create.include_namespaces,
                &mapping,
                create.target_pvc.as_deref(),
            )
        })
        .await?;
    }
    let requested = create.name.clone().unwrap_or_default();
    let mut call = Call::new("CreateRestore", "restore", &requested, "creating");
    if requested.is_empty() {
        call.action = format!("creating a restore from backup \"{}\"", create.from_backup);
    }
    let mut spec = v1::RestoreSpec {
        backup_name: create.from_backup.clone(),
        namespace_mapping: mapping.into_iter().collect(),
        included_namespaces: create.include_namespaces,
        data_only: create.data_only,
        volumes: create.volumes,
        target_pvc: create.target_pvc.unwrap_or_default(),
        overwrite_policy: create
            .overwrite_policy
            .map_or(0, |policy| policy.proto() as i32),
        as_of: create.as_of,
        include_paths: create.include_paths,
        exclude_paths: create.exclude_paths,
        ..Default::default()
    };
    create.resources.apply(&mut spec);
    let created = session
        .client
        .create_restore(v1::CreateRestoreRequest {
            name: requested.clone(),
            spec: Some(spec),
        })
        .await
        .map_err(|status| match status.code() {
            // A restore being created cannot be missing; NotFound is about its backup, or
            // about a volume a path pattern names, which the server's sentence says.
            tonic::Code::NotFound
                if status.message() == format!("backup `{}` not found", create.from_backup) =>
            {
                CliError::NotFound {
                    kind: "backup",
                    name: create.from_backup.clone(),
                }
            }
            tonic::Code::NotFound => CliError::Server {
                action: call.action.clone(),
                message: status.message().to_string(),
            },
            _ => session.fail(status, &call),
        })?
        .into_inner();
    let name = created.name.clone();
    after_create(session, created, name, create.wait, create.output).await
}

async fn repo(session: &mut Session, command: RepoCommand) -> Result<ExitCode, CliError> {
    match command {
        RepoCommand::Get { namespace, output } => {
            let call = Call::new("ListRepositories", "repositories", "", "listing");
            let response = session
                .client
                .list_repositories(v1::ListRepositoriesRequest {})
                .await
                .map_err(|status| session.fail(status, &call))?
                .into_inner();
            let mut repositories: Vec<view::RepositoryView> =
                response.repositories.iter().map(Into::into).collect();
            repositories.sort_by(|a, b| a.namespace.cmp(&b.namespace));
            if let Some(namespace) = namespace {
                let Some(found) = repositories
                    .into_iter()
                    .find(|repository| repository.namespace == namespace)
                else {
                    return Err(CliError::NotFound {
                        kind: "repository of namespace",
                        name: namespace,
                    });
                };
                match output.format {
                    Format::Table => {
                        print_text(&render::repository_table(std::slice::from_ref(&found)))?
                    }
                    format => print_structured(&found, format)?,
                }
            } else {
                match output.format {
                    Format::Table => print_text(&render::repository_table(&repositories))?,
                    format => print_structured(&view::RepositoryListView { repositories }, format)?,
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        RepoCommand::Maintain {
            namespace,
            check,
            prune: _,
            output,
        } => {
            let (kind, word) = if check {
                (v1::MaintenanceKind::Check, "check")
            } else {
                (v1::MaintenanceKind::Prune, "prune")
            };
            let call = Call::new(
                "MaintainRepository",
                "repository of namespace",
                &namespace,
                "maintaining",
            );
            let result = session
                .client
                .maintain_repository(v1::RunMaintenanceRequest {
                    namespace: namespace.clone(),
                    kind: kind as i32,
                })
                .await
                .map_err(|status| session.fail(status, &call))?
                .into_inner();
            let view = view::MaintenanceResultView::from(&result);
            let structured_output = structured(Some(output.format));
            match structured_output {
                None => {
                    if let Some(sentence) = render::maintenance_result(&view, word, &namespace) {
                        print_text(&sentence)?;
                    }
                }
                Some(format) => print_structured(&view, format)?,
            }
            if view.succeeded {
                return Ok(ExitCode::SUCCESS);
            }
            Err(crate::error::maintenance_failed(
                &view,
                word,
                &namespace,
                structured_output.is_some(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsupported() -> CliError {
        crate::error::from_status(
            &tonic::Status::unimplemented("CancelRestore is not implemented yet"),
            &Call::new("CancelRestore", "restore", "nightly-1", "cancelling"),
            "http://127.0.0.1:1",
        )
    }

    #[test]
    fn cancel_of_an_unknown_restore_on_a_server_without_cancel_names_the_restore() {
        let lookup = Err(CliError::NotFound {
            kind: "restore",
            name: "nightly-1".into(),
        });
        assert_eq!(
            cancel_unsupported(unsupported(), lookup).to_string(),
            "restore \"nightly-1\" not found"
        );
    }

    #[test]
    fn cancel_of_a_known_restore_on_a_server_without_cancel_says_what_is_missing() {
        let found = Ok(v1::Restore {
            name: "nightly-1".into(),
            ..Default::default()
        });
        let text = cancel_unsupported(unsupported(), found).to_string();
        assert_eq!(
            text,
            "the server at http://127.0.0.1:1 does not support CancelRestore yet (CancelRestore is not implemented yet)"
        );
        // A lookup that failed otherwise does not hide the first answer.
        let unreachable = Err(CliError::Unreachable {
            server: "http://127.0.0.1:1".into(),
            cause: "Connection refused".into(),
        });
        assert!(
            cancel_unsupported(unsupported(), unreachable)
                .to_string()
                .contains("does not support CancelRestore")
        );
    }
}
