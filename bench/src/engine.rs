//! The engine benchmarks: bare restic 0.14 against 0.18 on the same data (6), one large file
//! with 1 MiB changed in its middle (7), many small files (8), and the agent's own footprint
//! with operations in flight (9). A child module of the driver, so it shares its helpers.

use std::convert::Infallible;

use super::*;

/// Debian 12's restic, the engine stowage ran before; only a baseline, never installed.
pub const OLD_RESTIC_PACKAGE: &str = "restic=0.14.0-1+b5";
/// Bytes of each file of benchmark 8.
pub const SMALL_FILE_BYTES: u64 = 100;
/// Operations in flight in benchmark 9 (the target's number).
pub const FOOTPRINT_OPERATIONS: usize = 4;
/// How often benchmark 9 looks at the agent's restic children: often enough for backups that
/// last seconds, seldom enough that scanning `/proc` does not compete with them.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Bytes changed in the middle of benchmark 7's file.
pub const LARGE_FILE_CHANGE: u64 = 1 << 20;

/// Where the baseline restic 0.14 comes from.
#[derive(Debug, Clone)]
pub enum OldRestic {
    /// Debian's package, downloaded and unpacked into the run's scratch directory.
    Download,
    /// A restic binary already at hand (its `restic version` is what the table shows).
    Binary(PathBuf),
}

/// The baseline restic binary: `apt-get download` of Debian's 0.14 package in `work`, unpacked
/// with `dpkg-deb -x` (nothing is installed on the machine), or the one given.
pub async fn old_restic(how: &OldRestic, work: &Path) -> Result<PathBuf> {
    let binary = match how {
        OldRestic::Binary(path) => path.clone(),
        OldRestic::Download => {
            let dir = work.join("restic-0.14");
            std::fs::create_dir_all(&dir)?;
            let fetched = tokio::process::Command::new("apt-get")
                .args(["download", OLD_RESTIC_PACKAGE])
                .current_dir(&dir)
                .output()
                .await
                .context("running apt-get (the restic 0.14 baseline is Debian's package)")?;
            ensure!(
                fetched.status.success(),
                "could not fetch the restic 0.14 baseline: `apt-get download {OLD_RESTIC_PACKAGE}` \
                 in {} failed (it needs Debian 12's package lists: apt-get update; or pass \
                 --old-restic with a restic 0.14 binary): {}",
                dir.display(),
                String::from_utf8_lossy(&fetched.stderr).trim()
            );
            let deb = std::fs::read_dir(&dir)?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == "deb"))
                .with_context(|| {
                    format!(
                        "apt-get download {OLD_RESTIC_PACKAGE} left no .deb in {}",
                        dir.display()
                    )
                })?;
            let root = dir.join("root");
            let unpacked = tokio::process::Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(&root)
                .output()
                .await
                .context("running dpkg-deb")?;
            ensure!(
                unpacked.status.success(),
                "dpkg-deb -x {} failed: {}",
                deb.display(),
                String::from_utf8_lossy(&unpacked.stderr).trim()
            );
            root.join("usr/bin/restic")
        }
    };
    let version = restic_version(&binary).await?;
    if matches!(how, OldRestic::Download) {
        ensure!(
            version.starts_with("0.14."),
            "{} says it is restic {version}, not the 0.14 baseline",
            binary.display()
        );
    }
    Ok(binary)
}

/// `0.18.0` from `restic version` of `binary`.
pub async fn restic_version(binary: &Path) -> Result<String> {
    let output = tokio::process::Command::new(binary)
        .arg("version")
        .output()
        .await
        .with_context(|| format!("running {} version", binary.display()))?;
    ensure!(
        output.status.success(),
        "{} version failed: {}",
        binary.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let text = String::from_utf8_lossy(&output.stdout);
    parse_restic_version(&text)
        .with_context(|| format!("{} version printed `{}`", binary.display(), text.trim()))
}

/// `restic 0.18.0 compiled with go1.24.4 on linux/amd64` → `0.18.0`.
fn parse_restic_version(text: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    (words.next()? == "restic").then_some(())?;
    let version = words.next()?;
    version
        .split('.')
        .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit()))
        .then(|| version.to_string())
}

// ---------------------------------------------------------------------------------------
// 6. restic 0.14 against 0.18

/// A restic command's wall time and peak RSS.
#[derive(Debug, Default, Clone, Copy)]
pub struct Measured {
    pub time: Duration,
    pub peak_rss_kib: u64,
}

/// One restic version on the data set: first backup into a fresh repository, the unchanged
/// data backed up again (restic finds the parent by path), and a restore of it.
#[derive(Debug, Default, Clone)]
pub struct EngineRun {
    pub version: String,
    pub backup: Measured,
    pub rebackup: Measured,
    pub restore: Measured,
}

#[derive(Debug, Default, Clone)]
pub struct Versions {
    pub old: EngineRun,
    pub new: EngineRun,
    pub other: OtherLoad,
}

async fn engine_run(binary: &Path, source: &Path, work: &Path, name: &str) -> Result<EngineRun> {
    let repo = BareRepo::init_with(work.join(name), binary).await?;
    let first = repo.backup(source).await?;
    let again = repo.backup(source).await?;
    let target = work.join(format!("{name}-restored"));
    std::fs::create_dir_all(&target)?;
    let (_, restore, restore_rss) = repo
        .measured(&["restore", &again.id, "--target", "."], &target)
        .await?;
    let restored = dir_bytes(&target)?;
    std::fs::remove_dir_all(&target).ok();
    std::fs::remove_dir_all(&repo.path).ok();
    std::fs::remove_dir_all(&repo.cache).ok();
    let expected = dir_bytes(source)?;
    ensure!(
        restored == expected,
        "{} restored {restored} bytes of {expected}",
        binary.display()
    );
    Ok(EngineRun {
        version: restic_version(binary).await?,
        backup: Measured {
            time: first.elapsed,
            peak_rss_kib: first.peak_rss_kib,
        },
        rebackup: Measured {
            time: again.elapsed,
            peak_rss_kib: again.peak_rss_kib,
        },
        restore: Measured {
            time: restore,
            peak_rss_kib: restore_rss,
        },
    })
}

/// Bytes in the regular files under `dir`.
fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                total += entry.metadata()?.len();
            }
        }
    }
    Ok(total)
}

/// One round: the old and the new restic back to back on the same (page-cached) data.
pub async fn versions(old: &Path, source: &Path, work: &Path, round: usize) -> Result<Versions> {
    let meter = LoadMeter::start();
    let old = engine_run(old, source, work, &format!("engine-old-{round}")).await?;
    let new = engine_run(
        Path::new("restic"),
        source,
        work,
        &format!("engine-new-{round}"),
    )
    .await?;
    Ok(Versions {
        old,
        new,
        other: meter.stop(),
    })
}

// ---------------------------------------------------------------------------------------
// 7. One large file, 1 MiB changed

#[derive(Debug, Default)]
pub struct LargeFile {
    pub bytes: u64,
    pub stowage_first: Duration,
    pub bare_first: Duration,
    pub rounds: Vec<LargeFileRound>,
}

/// One change and the three second backups of it.
#[derive(Debug, Default, Clone)]
pub struct LargeFileRound {
    pub stowage: Duration,
    /// Bytes the agent and its restic read (`rchar`).
    pub stowage_read: u64,
    /// The backup's parent was the previous snapshot of the volume.
    pub stowage_parent_ok: bool,
    pub stowage_restic: Vec<ResticRun>,
    /// Bare restic 0.18 with `--parent` its previous snapshot.
    pub bare_parent: Duration,
    pub bare_parent_read: u64,
    /// Velero's behaviour: bare restic on the new path, no parent.
    pub velero: Duration,
    pub velero_read: u64,
    pub other: OtherLoad,
}

/// A pod with one file of `size` bytes on its PVC, backed up by stowage and bare restic; then
/// each round recreates the pod (new path), overwrites 1 MiB in the middle of the file in
/// place, and backs it up again: stowage, Velero's way (bare restic, new path, no parent) and
/// bare restic with the right `--parent`.
pub async fn large_file(options: &Options, work: &Path, rounds: usize) -> Result<LargeFile> {
    let (wrapper, mut log) = ResticLog::wrapper(&work.join("large-file-restic"))?;
    let stack = Stack::start(StackOptions {
        agent_args: vec!["--restic-binary".into(), wrapper.display().to_string()],
        ..StackOptions::default()
    })
    .await;
    let _logs = KeepLogs::new(options.logs_dir.as_deref(), stack.logs(), "large-file");
    let namespace = "large";
    let kube = stack.kube_client().await;
    let kubelet = &stack.kubelets[NODE];
    let agent_pid = stack.agents[NODE].process.pid();
    let example = seed_example(&kube, namespace, NODE, Some("pvc-volume")).await;
    let mut dir = kubelet
        .pod(&example.pod_uid())
        .pv("kubernetes.io~local-volume", &example.pv_name());
    let size = options.large_file_size.max(LARGE_FILE_CHANGE);
    step("generating data", &format!("one file of {}", mib(size)));
    write_noise(&dir.join("large.bin"), size, &mut Noise(0x1A26E))?;
    ensure_repository(&stack, namespace).await?;
    let mut client = stack.client().await;

    let (first, stowage_first, _) = backup(&mut client, "large-1", spec(namespace)).await?;
    let mut parent = only_volume(&first)?.snapshot_id;
    let bare = BareRepo::init(work.join("bare-large")).await?;
    let bare_first = bare.backup(&dir).await?;
    let mut bare_parent = bare_first.id.clone();
    let mut result = LargeFile {
        bytes: size,
        stowage_first,
        bare_first: bare_first.elapsed,
        rounds: Vec::new(),
    };
    let mut noise = Noise(0xBAD5EED);
    for round in 0..rounds {
        dir = recreate_pod(&kube, kubelet, &example, &dir).await?;
        overwrite_middle(&dir.join("large.bin"), size, &mut noise)?;
        let meter = LoadMeter::start();
        let read_before = read_bytes(agent_pid)?;
        log.take()?;
        let name = format!("large-{}", round + 2);
        let (done, stowage, _) = backup(&mut client, &name, spec(namespace)).await?;
        let stowage_read = read_bytes(agent_pid)? - read_before;
        let stowage_restic = log.take()?;
        let volume = only_volume(&done)?;
        let stowage_parent_ok = same_snapshot(&volume.parent_snapshot_id, &parent);
        parent = volume.snapshot_id;
        // Velero's first: restic finds no snapshot of the new path. Then the explicit parent.
        let velero = bare.backup(&dir).await?;
        let best = bare.backup_with(&dir, Some(&bare_parent)).await?;
        bare_parent = best.id.clone();
        let measured = LargeFileRound {
            stowage,
            stowage_read,
            stowage_parent_ok,
            stowage_restic,
            bare_parent: best.elapsed,
            bare_parent_read: best.read,
            velero: velero.elapsed,
            velero_read: velero.read,
            other: meter.stop(),
        };
        step(
            &format!("large file, round {}", round + 1),
            &format!("{measured:?}"),
        );
        result.rounds.push(measured);
    }
    std::fs::remove_dir_all(&bare.path).ok();
    Ok(result)
}

/// Overwrites [`LARGE_FILE_CHANGE`] bytes in the middle of the file, in place (as a database
/// does): its size stays, its mtime changes, so restic reads the whole file again.
fn overwrite_middle(path: &Path, size: u64, noise: &mut Noise) -> Result<()> {
    use std::io::{Seek, SeekFrom, Write as _};
    let change = LARGE_FILE_CHANGE.min(size);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.seek(SeekFrom::Start((size - change) / 2))?;
    let mut bytes = vec![0u8; change as usize];
    noise.fill(&mut bytes);
    file.write_all(&bytes)?;
    file.sync_data()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 8. Many small files

#[derive(Debug, Default)]
pub struct SmallFiles {
    pub data: DataSet,
    /// Benchmark 1's round, on this data, with the agent's restic under GNU time.
    pub rounds: Vec<Wrap>,
}

/// `count` files of [`SMALL_FILE_BYTES`] bytes, 1,000 to a directory.
pub fn generate_small(dir: &Path, count: usize) -> Result<DataSet> {
    let mut noise = Noise(0x5A11_F11E);
    let mut data = DataSet::default();
    let mut bytes = vec![0u8; SMALL_FILE_BYTES as usize];
    for index in 0..count {
        let relative = PathBuf::from(format!("d{:04}/f{index:07}", index / 1000));
        if index % 1000 == 0 {
            std::fs::create_dir_all(dir.join(relative.parent().unwrap_or(Path::new("."))))?;
        }
        noise.fill(&mut bytes);
        std::fs::write(dir.join(&relative), &bytes)?;
        data.files.push(relative);
        data.bytes += SMALL_FILE_BYTES;
    }
    Ok(data)
}

pub async fn small_files(options: &Options, work: &Path, rounds: usize) -> Result<SmallFiles> {
    let source = work.join("small-files");
    step(
        "generating data",
        &format!("{} files of {SMALL_FILE_BYTES} B", options.small_files),
    );
    let data = generate_small(&source, options.small_files.max(1))?;
    let (wrapper, mut log) = ResticLog::wrapper(&work.join("small-files-restic"))?;
    let stack = Stack::start(StackOptions {
        agent_args: vec!["--restic-binary".into(), wrapper.display().to_string()],
        ..StackOptions::default()
    })
    .await;
    let _logs = KeepLogs::new(options.logs_dir.as_deref(), stack.logs(), "small-files");
    let mut result = SmallFiles {
        data,
        rounds: Vec::new(),
    };
    for round in 0..rounds {
        let measured = wrap(&stack, &mut log, "small", round, &source, work, None).await?;
        step(
            &format!("small files, round {}", round + 1),
            &format!("{measured:?}"),
        );
        result.rounds.push(measured);
    }
    std::fs::remove_dir_all(&source).ok();
    Ok(result)
}

// ---------------------------------------------------------------------------------------
// 9. The agent's footprint

#[derive(Debug, Default, Clone)]
pub struct Footprint {
    /// The agent's VmRSS once started and settled, and after the operations ended.
    pub idle_start_kib: u64,
    pub idle_after_kib: u64,
    /// The agent's VmHWM when the operations ended: its peak, restic excluded.
    pub peak_kib: u64,
    /// The most restic backups sampled running at once under the agent, and the agent's
    /// highest VmRSS sampled while that many ran.
    pub most_in_flight: usize,
    pub sampled_in_flight_kib: u64,
    /// The operations' restic commands.
    pub restic: Vec<ResticRun>,
    pub volumes: usize,
    pub bytes: u64,
    pub backup: Duration,
    pub completed: u32,
    pub other: OtherLoad,
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    field(&status, "VmRSS:").context("VmRSS in /proc/<pid>/status")
}

/// The subcommands of the restic processes running under `pid` (at any depth: the agent runs
/// restic through GNU time).
fn restic_under(pid: u32) -> Vec<String> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(child) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((ppid, _)) = process_ticks(&child.to_string()) {
                parents.push((child, ppid));
            }
        }
    }
    let mut under = vec![pid];
    let mut found = Vec::new();
    while let Some(parent) = under.pop() {
        for &(child, _) in parents.iter().filter(|(_, p)| *p == parent) {
            under.push(child);
            let Ok(cmdline) = std::fs::read(format!("/proc/{child}/cmdline")) else {
                continue;
            };
            let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let is_restic = argv
                .first()
                .is_some_and(|a| a.ends_with(b"/restic") || *a == b"restic");
            if is_restic {
                let subcommand = argv.get(1).copied().unwrap_or_default();
                found.push(String::from_utf8_lossy(subcommand).into_owned());
            }
        }
    }
    found
}

#[derive(Debug, Default)]
struct Samples {
    most_in_flight: usize,
    rss_at_most_kib: u64,
}

/// Samples the agent every [`SAMPLE_EVERY`] until dropped: how many restic backups run under it, and its
/// VmRSS while the most of them ran.
async fn sample_agent(pid: u32, samples: &mut Samples) -> Infallible {
    loop {
        let in_flight = restic_under(pid).iter().filter(|c| *c == "backup").count();
        let rss = rss_kib(pid).unwrap_or(0);
        if in_flight > samples.most_in_flight {
            samples.most_in_flight = in_flight;
            samples.rss_at_most_kib = rss;
        } else if in_flight == samples.most_in_flight {
            samples.rss_at_most_kib = samples.rss_at_most_kib.max(rss);
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

/// An agent allowed [`FOOTPRINT_OPERATIONS`] operations at once backs up that many volumes
/// (`size` bytes in all, hard links of `templates`) of one pod.
pub async fn footprint(
    options: &Options,
    templates: &[PathBuf],
    bytes_per_template: u64,
    work: &Path,
) -> Result<Footprint> {
    ensure!(!templates.is_empty(), "no data for the footprint benchmark");
    let (wrapper, mut log) = ResticLog::wrapper(&work.join("footprint-restic"))?;
    let operations = FOOTPRINT_OPERATIONS.to_string();
    let stack = Stack::start(StackOptions {
        agent_args: vec![
            "--max-concurrent".into(),
            operations.clone(),
            "--restic-binary".into(),
            wrapper.display().to_string(),
        ],
        orchestrator_args: vec!["--max-parallel-per-node".into(), operations],
        ..StackOptions::default()
    })
    .await;
    let _logs = KeepLogs::new(options.logs_dir.as_deref(), stack.logs(), "footprint");
    let agent = stack.agents[NODE].process.pid();
    // Started and answering health checks; give its start-up (`restic version`) a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_start_kib = rss_kib(agent)?;

    let namespace = "foot";
    let kube = stack.kube_client().await;
    stowage_e2e::kube::ensure_namespace(&kube, namespace).await;
    let names: Vec<String> = (0..FOOTPRINT_OPERATIONS).map(|v| format!("v{v}")).collect();
    let pod = pod_with_empty_dirs(&kube, namespace, "foot", NODE, &names).await?;
    let pod_dir = stack.kubelets[NODE].pod(&pod);
    for (v, name) in names.iter().enumerate() {
        link_tree(&templates[v % templates.len()], &pod_dir.empty_dir(name)).await?;
    }
    ensure_repository(&stack, namespace).await?;
    let mut client = stack.client().await;
    log.take()?;
    let mut samples = Samples::default();
    let meter = LoadMeter::start();
    let (done, wall, _) = tokio::select! {
        done = backup(&mut client, "foot", spec(namespace)) => done?,
        never = sample_agent(agent, &mut samples) => match never {},
    };
    let other = meter.stop();
    let peak_kib = peak_rss_kib(agent)?;
    let restic = log.take()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_after_kib = rss_kib(agent)?;
    Ok(Footprint {
        idle_start_kib,
        idle_after_kib,
        peak_kib,
        most_in_flight: samples.most_in_flight,
        sampled_in_flight_kib: samples.rss_at_most_kib,
        restic,
        volumes: names.len(),
        bytes: bytes_per_template * names.len() as u64,
        backup: wall,
        completed: done.status.unwrap_or_default().volumes_completed,
        other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restic_versions_parse_from_restic_version() {
        assert_eq!(
            parse_restic_version("restic 0.18.0 compiled with go1.24.4 on linux/amd64\n"),
            Some("0.18.0".to_string())
        );
        assert_eq!(
            parse_restic_version("restic 0.14.0 compiled with go1.19.8 on linux/amd64"),
            Some("0.14.0".to_string())
        );
        assert_eq!(parse_restic_version("rustic 0.1.0"), None);
        assert_eq!(parse_restic_version("restic dev"), None);
    }

    #[test]
    fn small_files_have_the_asked_count_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let data = generate_small(dir.path(), 1500).unwrap();
        assert_eq!(data.files.len(), 1500);
        assert_eq!(data.bytes, 1500 * SMALL_FILE_BYTES);
        assert_eq!(dir_bytes(dir.path()).unwrap(), data.bytes);
        assert!(dir.path().join("d0001/f0001499").is_file());
    }

    #[test]
    fn the_middle_of_a_file_is_overwritten_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let size = 3 * LARGE_FILE_CHANGE;
        write_noise(&path, size, &mut Noise(1)).unwrap();
        let before = std::fs::read(&path).unwrap();
        overwrite_middle(&path, size, &mut Noise(2)).unwrap();
        let after = std::fs::read(&path).unwrap();
        assert_eq!(after.len(), before.len());
        let changed = LARGE_FILE_CHANGE as usize;
        assert_eq!(before[..changed], after[..changed]);
        assert_eq!(before[2 * changed..], after[2 * changed..]);
        assert_ne!(before[changed..2 * changed], after[changed..2 * changed]);
    }

    #[test]
    fn restic_runs_under_this_process_are_found_with_their_subcommand() {
        // A stand-in named restic: a copy of `sleep` (the finder goes by argv[0]).
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("restic");
        std::fs::copy("/bin/sleep", &fake).unwrap();
        let mut child = std::process::Command::new(&fake)
            .arg("4.321")
            .spawn()
            .unwrap();
        let found = restic_under(std::process::id());
        child.kill().unwrap();
        child.wait().unwrap();
        // Other tests of this process may run a restic of their own meanwhile.
        assert!(found.contains(&"4.321".to_string()), "{found:?}");
    }
}
