//! `stowage`: the command-line client of the orchestrator, shaped after `velero backup|restore`.
//! This file holds the clap configuration and the exit-code policy; [`commands`] runs each
//! command over the stowage.v1 Orchestrator gRPC API.

mod browse;
mod commands;
mod config;
mod connection;
mod data_only;
mod error;
mod follow;
mod hooks_file;
mod parse;
mod render;
mod resource_results;
mod restore_args;
mod schedules;
mod session;
mod standby;
mod table;
mod view;
mod watch;

use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// Only the flags a user sets once per shell or per cluster (`--server` and the credentials,
/// `-o`) are also read from the environment; per-command arguments (names, selectors, `--wait`)
/// are not, because a stray `STOWAGE_FROM_BACKUP` in the environment would silently change
/// what a command does.
#[derive(Debug, Parser)]
#[command(
    name = "stowage",
    version,
    about = "Back up and restore Kubernetes pod volumes with restic",
    long_about = "Back up and restore Kubernetes pod volumes with restic.\n\n\
                  Talks gRPC to the stowage orchestrator; see docs/cli.md."
)]
pub struct Cli {
    #[command(flatten)]
    connection: connection::ConnectionArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, list, inspect, cancel and delete backups.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Backups made on a cron expression, with a keep policy.
    #[command(subcommand)]
    Schedule(schedules::ScheduleCommand),
    /// Restore pod volumes from a backup, and follow restores.
    #[command(subcommand)]
    Restore(RestoreCommand),
    /// The per-namespace restic repositories and their maintenance.
    #[command(subcommand, alias = "repository")]
    Repo(RepoCommand),
    /// Pod volumes that no backup would take, and why.
    Coverage {
        /// Namespaces to look at (comma-separated); all when not given.
        #[arg(long, value_delimiter = ',')]
        namespaces: Vec<String>,
        /// Judge as an opt-out backup would: every volume except the excluded ones.
        #[arg(long)]
        default_volumes_to_fs_backup: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Servers and their credentials, saved as named contexts in the config file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script: `source <(stowage completion bash)`.
    Completion {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
}

/// The config file's commands. The connection flags given on their command line (`--server`,
/// `--cacert`, `--tls-server-name`, `--cert`, `--key`, `--token-file`; not the environment) are
/// what they save.
#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Set the server of the current context (or of --context); creates and selects a context
    /// named `default` when there is none.
    SetServer {
        /// The orchestrator's address, e.g. https://stowage.example.com:8080.
        url: String,
    },
    /// Create a context or change the settings given: `stowage config set-context prod
    /// --server https://… --cacert ca.pem --token-file token`.
    SetContext {
        /// The context's name.
        name: String,
    },
    /// Make a context the current one.
    UseContext { name: String },
    /// List the contexts; the current one is marked `*`.
    GetContexts {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Print the current context's name.
    CurrentContext,
    /// Remove a context.
    DeleteContext { name: String },
}

/// Which connection flags were typed on the command line (not taken from the environment),
/// read from clap's matches: `config set-…` saves only those.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Typed {
    pub server: bool,
    pub cacert: bool,
    pub tls_server_name: bool,
    pub cert: bool,
    pub key: bool,
    pub token_file: bool,
}

impl Typed {
    fn from_matches(matches: &clap::ArgMatches) -> Typed {
        // Global flags may be typed before or after a subcommand: look at every level.
        let typed = |id: &str| {
            let mut level = Some(matches);
            while let Some(current) = level {
                if current.try_get_raw(id).ok().flatten().is_some()
                    && current.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
                {
                    return true;
                }
                level = current.subcommand().map(|(_, sub)| sub);
            }
            false
        };
        Typed {
            server: typed("server"),
            cacert: typed("cacert"),
            tls_server_name: typed("tls_server_name"),
            cert: typed("cert"),
            key: typed("key"),
            token_file: typed("token_file"),
        }
    }
}

/// Output format of lists, `describe` and `--wait` results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Yaml,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Output format: table (for people), yaml or json (for scripts; see docs/cli.md).
    #[arg(
        short = 'o',
        long = "output",
        env = "STOWAGE_OUTPUT",
        default_value = "table"
    )]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
enum BackupCommand {
    /// Start a backup of the annotated pod volumes.
    Create(Box<BackupCreate>),
    /// List backups, or show one.
    Get {
        name: Option<String>,
        /// List only backups with these labels: `key=value[,key=value]`, e.g.
        /// `velero.io/schedule-name=nightly` for a schedule's backups.
        #[arg(long, short = 'l', value_parser = parse::parse_selector)]
        selector: Option<std::collections::BTreeMap<String, String>>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show a backup's spec, status, volumes and skipped volumes.
    Describe {
        name: String,
        /// Add the per-volume table (node, phase, snapshot, size, duration, error).
        #[arg(long)]
        details: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Print the log lines kept with a backup.
    Logs {
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List the files of one pod volume in a backup (from its restic snapshot): mode, size,
    /// modification time and path, the volume root being `/`.
    Ls(BackupLs),
    /// Forget the backup's restic snapshots and delete its files from the object store.
    Delete { name: String },
    /// Stop a running backup; it ends Cancelled.
    Cancel { name: String },
}

#[derive(Debug, Args)]
pub struct BackupCreate {
    /// Backup name: a DNS-1123 subdomain, unique among backups.
    pub name: String,
    #[command(flatten)]
    pub spec: BackupSpecArgs,
    #[command(flatten)]
    pub keep: schedules::KeepArgs,
    /// Follow the backup with a progress display until it ends; exit non-zero unless it
    /// ends Completed.
    #[arg(long)]
    pub wait: bool,
    /// Print the created (or, with --wait, the finished) backup as yaml or json instead of a sentence.
    #[arg(short = 'o', long = "output", env = "STOWAGE_OUTPUT")]
    pub output: Option<Format>,
}

/// What a backup takes: the flags of `backup create`, which `schedule create` takes too.
#[derive(Debug, Args)]
pub struct BackupSpecArgs {
    /// Namespaces to include (comma-separated); all when not given.
    #[arg(long, value_delimiter = ',')]
    pub include_namespaces: Vec<String>,
    /// Namespaces to leave out (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub exclude_namespaces: Vec<String>,
    /// Resources to include in the backup's resource tarball (comma-separated, Velero's
    /// spelling: `deployments.apps,configmaps`, `*`); all when not given. The server refuses
    /// a bad entry, naming it.
    #[arg(long, value_delimiter = ',')]
    pub include_resources: Vec<String>,
    /// Resources to leave out of the resource tarball (comma-separated, as above).
    #[arg(long, value_delimiter = ',')]
    pub exclude_resources: Vec<String>,
    /// Only pods with these labels: `key=value[,key=value]` (equality only).
    #[arg(long, short = 'l', value_parser = parse::parse_selector)]
    pub selector: Option<std::collections::BTreeMap<String, String>>,
    /// Paths to leave out of the volumes' snapshots (comma-separated `[<volume>:]<glob>`,
    /// restic's glob syntax relative to the volume root, `**` for any depth: `cache,*.tmp`,
    /// `data:logs/**`); without `<volume>:` a pattern applies to every volume. Pods add their
    /// own with the `backup.stowage.io/exclude-paths` annotation.
    #[arg(long, value_delimiter = ',')]
    pub exclude_paths: Vec<String>,
    /// Back up every pod volume except those in `backup.velero.io/backup-volumes-excludes`
    /// (opt-out), instead of only those in `backup.velero.io/backup-volumes` (opt-in).
    #[arg(long)]
    pub default_volumes_to_fs_backup: bool,
    /// How long to keep the backup, e.g. 720h; the server default when not given.
    #[arg(long, value_parser = parse::parse_duration)]
    pub ttl: Option<std::time::Duration>,
    /// How long volumes may run before they are failed, e.g. 4h; the server default when not given.
    #[arg(long, value_parser = parse::parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// Exec hooks for the pods the backup selects by namespace and labels: a YAML file
    /// holding Velero's Backup `spec.hooks` (its `resources:` list). A pod's own hook
    /// annotations win over these, phase by phase.
    #[arg(long, value_name = "FILE")]
    pub hooks_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct BackupLs {
    /// The backup.
    pub backup: String,
    /// The pod volume, as `namespace/pod/volume` (see `stowage backup describe --details`).
    pub volume: String,
    /// Directory inside the volume; its root when not given.
    pub path: Option<String>,
    /// List the whole tree under PATH, not only its direct entries.
    #[arg(long, short = 'R')]
    pub recursive: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Subcommand)]
enum RestoreCommand {
    /// Restore pod volumes from a backup: recreate the pods and refill their volumes.
    Create(Box<RestoreCreate>),
    /// List restores, or show one.
    Get {
        name: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show a restore's spec, status and volumes.
    Describe {
        name: String,
        /// Add the per-volume table.
        #[arg(long)]
        details: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Print the log lines kept with a restore.
    Logs {
        name: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Stop a running restore: volumes not yet started end Cancelled, running restic is
    /// killed, and the recreated pods' restore helpers exit; it ends Cancelled.
    Cancel { name: String },
}

#[derive(Debug, Args)]
pub struct RestoreCreate {
    /// Restore name; the server names it `<backup>-<timestamp>` when not given.
    pub name: Option<String>,
    /// The backup to restore from.
    #[arg(long, required = true)]
    pub from_backup: String,
    /// Restore namespace `old` into `new`: `old:new[,old2:new2]`.
    #[arg(long, value_delimiter = ',', value_parser = parse::parse_mapping)]
    pub namespace_mappings: Vec<(String, String)>,
    /// Restore only these namespaces of the backup (before mapping); all when not given.
    #[arg(long, value_delimiter = ',')]
    pub include_namespaces: Vec<String>,
    #[command(flatten)]
    pub resources: restore_args::ResourceArgs,
    /// Restore only the files matching these patterns (comma-separated `[<volume>:]<glob>`,
    /// relative to the volume root: `data:data/2024/**`); other files are not written.
    #[arg(long, value_delimiter = ',')]
    pub include_paths: Vec<String>,
    /// Leave the files matching these patterns out of the restore (as --include-paths).
    #[arg(long, value_delimiter = ',')]
    pub exclude_paths: Vec<String>,
    /// Write the volumes' data into the claims that exist now (running pods' volumes, or a
    /// temporary restore pod's); no pod or resource is created. Scale the workload down first.
    #[arg(long)]
    pub data_only: bool,
    /// With --data-only: restore only these volumes of the backup, as `namespace/pod/volume`.
    #[arg(long, value_delimiter = ',')]
    pub volumes: Vec<String>,
    /// With --data-only: restore the one selected volume into this claim (`namespace/claim`).
    #[arg(long)]
    pub target_pvc: Option<String>,
    /// With --data-only: what happens to the files already in the claim (default merge).
    #[arg(long, value_enum)]
    pub overwrite_policy: Option<data_only::OverwritePolicy>,
    /// Restore, per volume, the last snapshot taken at or before this time (RFC 3339, e.g.
    /// 2024-05-01T12:00:00Z) across every backup, instead of --from-backup's own.
    #[arg(long, value_parser = data_only::parse_as_of)]
    pub as_of: Option<stowage_proto::prost_types::Timestamp>,
    /// With --data-only: restore even when a running pod mounts a target claim.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Follow the restore with a progress display until it ends; exit non-zero unless it
    /// ends Completed.
    #[arg(long)]
    pub wait: bool,
    /// Print the created (or, with --wait, the finished) restore as yaml or json instead of a sentence.
    #[arg(short = 'o', long = "output", env = "STOWAGE_OUTPUT")]
    pub output: Option<Format>,
}

#[derive(Debug, Subcommand)]
enum RepoCommand {
    /// List the restic repositories (one per namespace), or show one.
    Get {
        namespace: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Run `restic check` or prune on a namespace's repository now.
    #[command(group(clap::ArgGroup::new("task").required(true).args(["check", "prune"])))]
    Maintain {
        namespace: String,
        /// Verify the repository's structure (`restic check`).
        #[arg(long)]
        check: bool,
        /// Forget expired snapshots and remove unreferenced data.
        #[arg(long)]
        prune: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let typed = Typed::from_matches(&matches);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("Error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli, typed)) {
        Ok(code) => code,
        Err(error) => {
            // One sentence, no chain: every CliError already says what failed and why.
            eprintln!("Error: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_configuration_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn backup_create_reads_velero_style_flags() {
        let cli = Cli::try_parse_from([
            "stowage",
            "backup",
            "create",
            "nightly",
            "--include-namespaces",
            "a,b",
            "--selector",
            "app=db",
            "--ttl",
            "720h",
            "--wait",
        ])
        .unwrap();
        let Command::Backup(BackupCommand::Create(create)) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(create.spec.include_namespaces, ["a", "b"]);
        assert_eq!(
            create.spec.ttl,
            Some(std::time::Duration::from_secs(720 * 3600))
        );
        assert_eq!(create.spec.selector.unwrap()["app"], "db");
        assert!(create.wait);
    }

    #[test]
    fn bad_durations_and_mappings_are_usage_errors() {
        let error =
            Cli::try_parse_from(["stowage", "backup", "create", "x", "--ttl", "5x"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
        let error = Cli::try_parse_from([
            "stowage",
            "restore",
            "create",
            "--from-backup",
            "b",
            "--namespace-mappings",
            "nocolon",
        ])
        .unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
    }

    #[test]
    fn maintain_needs_exactly_one_task() {
        assert!(Cli::try_parse_from(["stowage", "repo", "maintain", "foo"]).is_err());
        assert!(
            Cli::try_parse_from(["stowage", "repo", "maintain", "foo", "--check", "--prune"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["stowage", "repo", "maintain", "foo", "--prune"]).is_ok());
    }

    #[test]
    fn config_commands_know_which_flags_were_typed() {
        let matches = Cli::command()
            .try_get_matches_from([
                "stowage",
                "config",
                "set-context",
                "prod",
                "--server",
                "https://stowage:8080",
                "--cacert",
                "ca.pem",
            ])
            .unwrap();
        assert_eq!(
            Typed::from_matches(&matches),
            Typed {
                server: true,
                cacert: true,
                ..Typed::default()
            }
        );
        // Before the subcommand counts too.
        let matches = Cli::command()
            .try_get_matches_from([
                "stowage",
                "--token-file",
                "t",
                "config",
                "set-server",
                "http://x:1",
            ])
            .unwrap();
        let typed = Typed::from_matches(&matches);
        assert!(typed.token_file && !typed.server, "{typed:?}");
    }

    #[test]
    fn restore_cancel_takes_one_name() {
        let cli = Cli::try_parse_from(["stowage", "restore", "cancel", "nightly-1"]).unwrap();
        let Command::Restore(RestoreCommand::Cancel { name }) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(name, "nightly-1");
        let error = Cli::try_parse_from(["stowage", "restore", "cancel"]).unwrap_err();
        assert_eq!(
            error.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
    }

    #[test]
    fn completion_takes_a_shell_name() {
        let cli = Cli::try_parse_from(["stowage", "completion", "zsh"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Completion {
                shell: clap_complete::Shell::Zsh
            }
        ));
        let error = Cli::try_parse_from(["stowage", "completion", "tcsh"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::InvalidValue);
    }
}
