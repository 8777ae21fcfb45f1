//! Running the `stowage` CLI in a test as a user runs it: none of the CLI's own settings
//! (`STOWAGE_*` variables) inherited from the test's environment, and a config file that does
//! not exist, so a developer's server or saved context cannot leak in and only what the test
//! gives reaches the CLI.

use std::process::{Command, Output};

use crate::binary;

/// `command` (the CLI, or a program that runs it) without any `STOWAGE_*` variable of the
/// test's environment and with a config file that does not exist.
pub fn isolated(mut command: Command) -> Command {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("STOWAGE_") {
            command.env_remove(name);
        }
    }
    command.env(
        "STOWAGE_CONFIG",
        std::env::temp_dir().join(format!("stowage-e2e-no-config-{}", std::process::id())),
    );
    command
}

/// Runs `stowage --server <server> <args>`, [`isolated`], to its end.
pub fn stowage(server: &str, args: &[&str]) -> Output {
    isolated(Command::new(binary("stowage")))
        .arg("--server")
        .arg(server)
        .args(args)
        .output()
        .expect("running the stowage binary")
}
