//! The processes a test's services started, found through `/proc`: what a killed service leaves
//! running (restic runs in its own process group, so outside a pod it can outlive the service
//! that started it), and whether a cancelled restic is really gone.

use std::process::Command;

/// Processes (by pid) whose command line or environment mentions `marker` (a test's own temp
/// dir, a service's scratch dir that restic gets as its cache).
pub fn mentioning(marker: &str) -> Vec<u32> {
    let own = std::process::id();
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| *pid != own)
                .filter(|pid| {
                    ["cmdline", "environ"].iter().any(|file| {
                        std::fs::read(format!("/proc/{pid}/{file}"))
                            .is_ok_and(|text| String::from_utf8_lossy(&text).contains(marker))
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The command line of `pid`, arguments joined by spaces; empty once it is gone.
pub fn command_line(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| {
            String::from_utf8_lossy(&bytes)
                .split('\0')
                .filter(|part| !part.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The processes mentioning `marker` whose command line has the word `word` (`restore`,
/// `backup`, `prune`), each as `pid: command line`; zombies (exited, not yet reaped) are left
/// out, as they hold nothing.
pub fn running_with_word(marker: &str, word: &str) -> Vec<String> {
    mentioning(marker)
        .into_iter()
        .filter(|pid| !is_zombie(*pid))
        .map(|pid| (pid, command_line(pid)))
        .filter(|(_, command)| command.split(' ').any(|part| part == word))
        .map(|(pid, command)| format!("{pid}: {command}"))
        .collect()
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // `pid (comm) S …`: the state follows the last `)`, as comm may hold spaces.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// SIGKILLs each of `pids` (processes this test started), as the end of a pod would.
pub fn kill(pids: &[u32]) {
    for pid in pids {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

/// Kills every process mentioning its marker when dropped, so a failed test leaves no restic
/// (or wrapper) of its own behind on the machine.
pub struct KillOnDrop(pub String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill(&mentioning(&self.0));
    }
}
