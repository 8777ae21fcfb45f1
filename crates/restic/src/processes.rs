//! Which restic processes are alive on this host, read from `/proc`: the pid and the start
//! time of each. restic writes its pid into every lock it takes; a service that can see the
//! process table the lock's restic ran in (the volume agent) reports these, so one that cannot
//! (the repo-manager) can tell a lock of a killed restic from a live one, and a pid reused by a
//! later restic (it started after the lock was written) from the lock's own holder.

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

/// One live restic process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningProcess {
    pub pid: u32,
    /// When the process started, to within a second (the kernel's boot time is whole
    /// seconds; the start offset is in clock ticks).
    pub started: SystemTime,
}

/// How a process table names restic: the `comm` the kernel keeps, the file name of its
/// executable, or the file name of its `argv[0]`. `names` are file names (`restic`, or the
/// file name of a configured binary such as `restic-0.18`).
#[derive(Clone, Debug)]
pub struct ProcessTable<'a> {
    /// The `/proc` directory (a test gives a directory laid out like it).
    pub root: &'a Path,
    /// Clock ticks per second of `/proc/<pid>/stat`'s start time (`sysconf(_SC_CLK_TCK)`).
    pub ticks_per_second: u64,
}

impl ProcessTable<'static> {
    /// This host's `/proc`.
    pub fn host() -> ProcessTable<'static> {
        // SAFETY: sysconf only reads a configuration value.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        ProcessTable {
            root: Path::new("/proc"),
            ticks_per_second: u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100),
        }
    }
}

impl ProcessTable<'_> {
    /// Every process whose name is one of `names`, in pid order. A process that ends while
    /// the table is read is skipped; a table that cannot be listed at all, or that has no
    /// boot time, is an error (an empty answer would call every lock's holder dead).
    pub fn running(&self, names: &[&str]) -> std::io::Result<Vec<RunningProcess>> {
        let boot = self.boot_time()?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(self.root)? {
            let entry = entry?;
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<u32>().ok())
            else {
                continue;
            };
            let dir = entry.path();
            if !self.is_named(&dir, names) {
                continue;
            }
            let Some(start_ticks) = std::fs::read_to_string(dir.join("stat"))
                .ok()
                .and_then(|stat| start_ticks(&stat))
            else {
                continue;
            };
            let offset = Duration::from_millis(
                start_ticks.saturating_mul(1000) / self.ticks_per_second.max(1),
            );
            found.push(RunningProcess {
                pid,
                started: boot + offset,
            });
        }
        found.sort_by_key(|process| process.pid);
        Ok(found)
    }

    /// The kernel's boot time (`btime` of `/proc/stat`).
    fn boot_time(&self) -> std::io::Result<SystemTime> {
        let stat = std::fs::read_to_string(self.root.join("stat"))?;
        stat.lines()
            .find_map(|line| line.strip_prefix("btime "))
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(|seconds| SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} has no btime line", self.root.join("stat").display()),
                )
            })
    }

    fn is_named(&self, dir: &Path, names: &[&str]) -> bool {
        let matches = |name: &str| names.contains(&name);
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if matches(comm.trim_end_matches('\n')) {
            return true;
        }
        let exe = std::fs::read_link(dir.join("exe")).ok();
        if exe
            .as_deref()
            .and_then(Path::file_name)
            .and_then(|name| name.to_str())
            .is_some_and(matches)
        {
            return true;
        }
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        std::str::from_utf8(argv0)
            .ok()
            .and_then(|argv0| Path::new(argv0).file_name())
            .and_then(|name| name.to_str())
            .is_some_and(matches)
    }
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks after boot). The second field
/// is the command name in parentheses and may hold spaces and parentheses itself, so the
/// fields are counted after its last `)`.
fn start_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts with field 3 (state); the start time is field 22.
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A directory laid out like `/proc`: boot time 1_700_000_000, 100 ticks a second.
    struct FakeProc {
        dir: tempfile::TempDir,
    }

    impl FakeProc {
        fn new() -> FakeProc {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(
                dir.path().join("stat"),
                "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n",
            )
            .unwrap();
            std::fs::create_dir(dir.path().join("self")).unwrap();
            FakeProc { dir }
        }

        /// Process `pid` named `comm` with `argv0`, started `ticks` after boot.
        fn process(&self, pid: u32, comm: &str, argv0: &str, ticks: u64) -> PathBuf {
            let dir = self.dir.path().join(pid.to_string());
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
            std::fs::write(dir.join("cmdline"), format!("{argv0}\0backup\0--json\0")).unwrap();
            let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
            fields[0] = "S".into();
            fields[22 - 3] = ticks.to_string();
            std::fs::write(
                dir.join("stat"),
                format!("{pid} ({comm}) {}\n", fields.join(" ")),
            )
            .unwrap();
            dir
        }

        fn table(&self) -> ProcessTable<'_> {
            ProcessTable {
                root: self.dir.path(),
                ticks_per_second: 100,
            }
        }
    }

    fn at(seconds: u64, millis: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds) + Duration::from_millis(millis)
    }

    #[test]
    fn restic_processes_are_found_by_comm_or_argv0_with_their_start_time() {
        let proc = FakeProc::new();
        proc.process(40, "restic", "/usr/bin/restic", 12_345);
        proc.process(7, "sh", "/bin/sh", 10);
        // A wrapper named otherwise in comm, run by the configured binary's name.
        proc.process(41, "restic-wrap", "/opt/bin/restic-wrap", 200);
        // A command name with a space and a parenthesis does not shift the fields.
        proc.process(42, "restic) x", "/x/restic", 300);
        let running = proc.table().running(&["restic", "restic-wrap"]).unwrap();
        assert_eq!(
            running,
            [
                RunningProcess {
                    pid: 40,
                    started: at(1_700_000_123, 450),
                },
                RunningProcess {
                    pid: 41,
                    started: at(1_700_000_002, 0),
                },
                RunningProcess {
                    pid: 42,
                    started: at(1_700_000_003, 0),
                },
            ]
        );
    }

    #[test]
    fn a_process_that_ended_while_reading_is_skipped() {
        let proc = FakeProc::new();
        let dir = proc.process(40, "restic", "restic", 1);
        std::fs::remove_file(dir.join("stat")).unwrap();
        proc.process(41, "restic", "restic", 1);
        let pids: Vec<u32> = proc
            .table()
            .running(&["restic"])
            .unwrap()
            .iter()
            .map(|process| process.pid)
            .collect();
        assert_eq!(pids, [41]);
    }

    #[test]
    fn a_table_without_boot_time_is_an_error_not_an_empty_answer() {
        let proc = FakeProc::new();
        proc.process(40, "restic", "restic", 1);
        std::fs::write(proc.dir.path().join("stat"), "cpu 1 2 3\n").unwrap();
        let error = proc.table().running(&["restic"]).unwrap_err();
        assert!(error.to_string().contains("btime"), "{error}");
    }

    #[test]
    fn this_host_s_table_lists_a_running_child_by_name() {
        let before = SystemTime::now();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let running = ProcessTable::host().running(&["sleep"]);
        let after = SystemTime::now();
        let _ = child.kill();
        let _ = child.wait();
        let running = running.unwrap();
        let found = running
            .iter()
            .find(|process| process.pid == child.id())
            .expect("the child is listed");
        // The boot time is whole seconds, so the start time is known to within one.
        let slack = Duration::from_secs(2);
        assert!(
            found.started + slack >= before && found.started <= after + slack,
            "started {:?}, spawned between {before:?} and {after:?}",
            found.started
        );
    }
}
