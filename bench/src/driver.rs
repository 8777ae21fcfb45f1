//! The benchmark driver: generates data, starts the e2e stack (`stowage_e2e::stack`, the same
//! launcher the tests and the demo use), measures stowage against its baseline in the same run,
//! and writes the table into `BENCHMARKS.md` between two markers, keeping the hand-written
//! notes around it. It is compiled twice: by `bench/examples/stowage-bench.rs` (the real run,
//! behind `bench/run`) and by `tests/tests/bench_smoke.rs` (a tiny size in CI, so it cannot
//! rot); so it uses only crates both have, and checks behaviour, never timings.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail, ensure};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use stowage_e2e::{
    ServiceProcess,
    kube::{create, mark_init_container_running, mark_pod_running, seed_example, wait_for_pod},
    kubelet::manifest,
    stack::{Stack, StackOptions},
    start_service,
};
use stowage_grpc::TracedChannel;
use stowage_proto::v1::{
    Backup, BackupPhase, BackupSpec, CreateBackupRequest, CreateRestoreRequest,
    EnsureRepositoryRequest, PodVolumeBackup, RepositoryPhase, Restore, RestorePhase, RestoreSpec,
    WatchBackupRequest, WatchRestoreRequest, orchestrator_client::OrchestratorClient,
    repo_manager_client::RepoManagerClient,
};

#[path = "engine.rs"]
pub mod engine;

use engine::{Footprint, LargeFile, OldRestic, SmallFiles, Versions};

type Client = OrchestratorClient<TracedChannel>;

const NODE: &str = "node-a";
const BEGIN: &str = "<!-- bench:begin (written by bench/run; edit outside the markers) -->";
const END: &str = "<!-- bench:end -->";
/// The restore-helper init container the orchestrator puts first in recreated pods.
const RESTORE_HELPER: &str = "restore-wait";
/// A benchmark waits this long for one backup or restore before it gives up.
const OPERATION_LIMIT: Duration = Duration::from_secs(3600);
const MIB: f64 = 1024.0 * 1024.0;

/// What to run, and how big.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bytes of generated data per data set (benchmarks 1, 2 and 5; split over the volumes of 3).
    pub size: u64,
    /// Agent concurrency levels of benchmark 3.
    pub concurrency: Vec<usize>,
    /// Annotated pod volumes of benchmark 4 (two per pod).
    pub scale_volumes: usize,
    /// Nodes those pods are spread over.
    pub scale_nodes: usize,
    /// Instant-agent processes the nodes share.
    pub scale_agent_processes: usize,
    /// Where the table goes (an existing file keeps what is outside the markers).
    pub out: PathBuf,
    /// Directory for the data and bare restic repositories (a temp dir when `None`).
    pub work_dir: Option<PathBuf>,
    /// Volumes of benchmark 3.
    pub parallel_volumes: usize,
    /// When set, `perf record` samples the agent during benchmark 1's backup and the
    /// orchestrator during benchmark 4's, into this directory.
    pub perf_dir: Option<PathBuf>,
    /// When set, every stack's service logs are copied here (one directory per stack) when the
    /// stack is done with, also after a failure.
    pub logs_dir: Option<PathBuf>,
    /// Rounds of benchmarks 1 and 5, each with its own pod, namespace and fresh repositories;
    /// the table shows their medians and every round's ratio, so one noisy round (other work
    /// on the machine) does not decide a target. Benchmarks 6 and 8 run in as many rounds,
    /// benchmark 7 changes its file and backs it up again as many times.
    pub rounds: usize,
    /// Bytes of benchmark 7's one large file.
    pub large_file_size: u64,
    /// Files of [`engine::SMALL_FILE_BYTES`] bytes in benchmark 8.
    pub small_files: usize,
    /// Where benchmark 6's restic 0.14 baseline comes from.
    pub old_restic: OldRestic,
}

impl Options {
    /// The CI smoke size: every benchmark runs, on a few MiB and a few dozen volumes.
    pub fn tiny(out: PathBuf) -> Options {
        Options {
            size: 4 << 20,
            concurrency: vec![2],
            scale_volumes: 40,
            scale_nodes: 4,
            scale_agent_processes: 1,
            out,
            work_dir: None,
            parallel_volumes: 2,
            perf_dir: None,
            logs_dir: None,
            rounds: 1,
            large_file_size: 8 << 20,
            small_files: 500,
            // The machine's restic stands in for 0.14 so the smoke test needs no network; the
            // table names the version it ran.
            old_restic: OldRestic::Binary(PathBuf::from("restic")),
        }
    }
}

/// What a run found; the smoke test checks its behaviour, the markdown shows its numbers.
#[derive(Debug, Default)]
pub struct Report {
    pub data: DataSet,
    /// The median of `limit_rounds`.
    pub limit: Limit,
    pub limit_rounds: Vec<Limit>,
    /// Every duration the median of `wrap_rounds`'s; identical only if every round was.
    pub wrap: Wrap,
    pub wrap_rounds: Vec<Wrap>,
    pub incremental: Incremental,
    pub parallel: Vec<Parallel>,
    pub scale: Scale,
    /// Benchmark 6, round by round.
    pub versions: Vec<Versions>,
    pub large_file: LargeFile,
    pub small_files: SmallFiles,
    pub footprint: Footprint,
}

#[derive(Default, Clone)]
pub struct DataSet {
    /// Relative paths of the regular files, sorted; large files first.
    pub files: Vec<PathBuf>,
    pub large_files: usize,
    pub bytes: u64,
}

/// The file count, not the ten thousand paths, so the report prints on a screen.
impl std::fmt::Debug for DataSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataSet")
            .field("files", &self.files.len())
            .field("large_files", &self.large_files)
            .field("bytes", &self.bytes)
            .finish()
    }
}

#[derive(Debug, Default, Clone)]
pub struct Limit {
    pub cat: Duration,
    pub sha256sum: Duration,
    pub other: OtherLoad,
}

#[derive(Debug, Default, Clone)]
pub struct Wrap {
    pub bare_backup: Duration,
    pub stowage_backup: Duration,
    /// Other work on the machine while each backup ran (see [`OtherLoad`]).
    pub bare_backup_other: OtherLoad,
    pub stowage_backup_other: OtherLoad,
    /// The agent's restic commands (parent lookup and backup), as the agent timed them.
    pub stowage_backup_restic: Duration,
    /// The stowage backup split by the orchestrator's timestamps: from CreateBackup until the
    /// agent is called (discovery, repository, lease, first mirrors), the agent's call, and
    /// from its result until the driver sees Completed (last mirrors, the backup record, watch).
    pub stowage_backup_split: BackupSplit,
    /// `restic cat config` and `restic list locks` on the bare repository: the two commands
    /// the repo-manager's EnsureRepository runs before every backup, timed here as a baseline
    /// for the time before the agent is called.
    pub restic_cat_config: Duration,
    pub restic_list_locks: Duration,
    pub bare_restore: Duration,
    /// From CreateRestore to Completed, including the emulated pod start.
    pub stowage_restore: Duration,
    /// From the recreated pod's restore helper running to Completed: what a cluster would wait.
    pub stowage_restore_after_pod_ready: Duration,
    pub bare_restore_other: OtherLoad,
    pub stowage_restore_other: OtherLoad,
    pub restored_identically: bool,
    /// Peak RSS of bare restic's backup and restore.
    pub bare_backup_rss_kib: u64,
    pub bare_restore_rss_kib: u64,
    /// The restic commands the agent ran for the backup and for the restore (in the median
    /// of several rounds: every round's).
    pub agent_backup_restic: Vec<ResticRun>,
    pub agent_restore_restic: Vec<ResticRun>,
    /// The agent's own peak RSS (VmHWM, restic excluded) when the round ended.
    pub agent_peak_rss_kib: u64,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct BackupSplit {
    pub before_agent: Duration,
    pub agent: Duration,
    pub after_agent: Duration,
}

impl BackupSplit {
    /// From the one volume's `started` and `finished` (set by the orchestrator around its call
    /// to the agent) and the driver's clock around the backup; same machine, same clock.
    fn of(volume: &PodVolumeBackup, created: SystemTime, ended: SystemTime) -> BackupSplit {
        let at = |t: &Option<stowage_proto::prost_types::Timestamp>| {
            t.as_ref().and_then(|t| {
                let nanos = u32::try_from(t.nanos).ok()?;
                let seconds = u64::try_from(t.seconds).ok()?;
                Some(SystemTime::UNIX_EPOCH + Duration::new(seconds, nanos))
            })
        };
        let between = |a: SystemTime, b: SystemTime| b.duration_since(a).unwrap_or_default();
        match (at(&volume.started), at(&volume.finished)) {
            (Some(started), Some(finished)) => BackupSplit {
                before_agent: between(created, started),
                agent: between(started, finished),
                after_agent: between(finished, ended),
            },
            _ => BackupSplit::default(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Incremental {
    pub files_changed: usize,
    pub bytes_changed: u64,
    pub first: Duration,
    pub second: Duration,
    /// Bytes the agent and its restic read (`rchar`), per backup.
    pub first_read: u64,
    pub second_read: u64,
    /// The agent's restic commands (parent lookup and backup) for the second backup.
    pub second_restic: Duration,
    pub second_parent_is_first: bool,
    pub second_files_unmodified: u64,
    pub bare_first: Duration,
    pub bare_second_no_parent: Duration,
    pub bare_first_read: u64,
    pub bare_second_read: u64,
    /// Bare restic's second backup on the new path with `--parent` its first snapshot: the
    /// best restic can do, the baseline of the incremental time target.
    pub bare_second_parent: Duration,
    pub bare_second_parent_read: u64,
    /// The restic commands the agent ran for the second backup.
    pub second_restic_runs: Vec<ResticRun>,
    /// Other work on the machine during the four backups.
    pub other: OtherLoad,
}

#[derive(Debug, Default)]
pub struct Parallel {
    pub concurrency: usize,
    pub volumes: usize,
    pub bytes: u64,
    pub wall: Duration,
    pub completed: u32,
    pub most_running: usize,
    pub other: OtherLoad,
}

#[derive(Debug, Default)]
pub struct Scale {
    pub volumes: usize,
    pub nodes: usize,
    pub seed: Duration,
    pub backup: Duration,
    pub completed: u32,
    pub orchestrator_peak_rss_kib: u64,
    pub orchestrator_cpu: Duration,
    pub emulator_cpu: Duration,
    pub agent_cpu: Duration,
    pub other: OtherLoad,
}

/// Runs every benchmark and writes the table to `options.out`.
pub async fn run(options: &Options) -> Result<Report> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let temp = tempfile::tempdir().context("a temp dir")?;
    let work = match &options.work_dir {
        Some(dir) => tempfile::tempdir_in(dir).context("a work dir")?,
        None => tempfile::tempdir_in(temp.path())?,
    };
    let work = work.path().to_path_buf();
    let mut report = Report::default();
    ensure!(
        Path::new(GNU_TIME).is_file(),
        "{GNU_TIME} is missing: the benchmarks measure restic's peak RSS with GNU time \
         (Debian package `time`)"
    );
    // First, so a missing baseline stops the run before anything long.
    let old_restic = engine::old_restic(&options.old_restic, &work).await?;

    let source = work.join("data");
    step(
        "generating data",
        &format!("{} MiB", options.size / (1 << 20)),
    );
    report.data = generate(&source, options.size, 1)?;
    let rounds = options.rounds.max(1);
    for round in 0..rounds {
        let limit = limit(&source).await?;
        step(
            &format!("limit, round {}", round + 1),
            &format!("{limit:?}"),
        );
        report.limit_rounds.push(limit);
    }
    report.limit = Limit {
        cat: median_duration(report.limit_rounds.iter().map(|l| l.cat)),
        sha256sum: median_duration(report.limit_rounds.iter().map(|l| l.sha256sum)),
        other: report
            .limit_rounds
            .iter()
            .map(|l| l.other)
            .fold(OtherLoad::default(), OtherLoad::and),
    };

    for round in 0..rounds {
        let result = engine::versions(&old_restic, &source, &work, round).await?;
        step(
            &format!("restic versions, round {}", round + 1),
            &format!("{result:?}"),
        );
        report.versions.push(result);
    }

    {
        // The agent's restic runs under GNU time, like bare restic's, for its peak RSS and
        // the list of commands it ran.
        let (wrapper, mut log) = ResticLog::wrapper(&work.join("wrap-restic"))?;
        let stack = Stack::start(StackOptions {
            agent_args: vec!["--restic-binary".into(), wrapper.display().to_string()],
            ..StackOptions::default()
        })
        .await;
        let _logs = KeepLogs::new(
            options.logs_dir.as_deref(),
            stack.logs(),
            "wrap-incremental",
        );
        for round in 0..rounds {
            // perf only once: it would slow the rounds it samples.
            let perf_dir = options.perf_dir.as_deref().filter(|_| round == 0);
            let result = wrap(&stack, &mut log, "wrap", round, &source, &work, perf_dir).await?;
            step(
                &format!("wrap, round {}", round + 1),
                &format!("{result:?}"),
            );
            report.wrap_rounds.push(result);
        }
        report.wrap = median_wrap(&report.wrap_rounds);
        report.incremental = incremental(&stack, &mut log, &source, &report.data, &work).await?;
        step("incremental", &format!("{:?}", report.incremental));
    }

    report.large_file = engine::large_file(options, &work, rounds).await?;
    report.small_files = engine::small_files(options, &work, rounds).await?;

    let volumes = options.parallel_volumes.max(1);
    let per_volume = (options.size / volumes as u64).max(64 << 10);
    let templates: Vec<PathBuf> = (0..volumes)
        .map(|v| work.join(format!("par-{v}")))
        .collect();
    for (v, dir) in templates.iter().enumerate() {
        generate(dir, per_volume, 100 + v as u64)?;
    }
    for &concurrency in &options.concurrency {
        let result = parallel(
            concurrency,
            &templates,
            per_volume * volumes as u64,
            options.logs_dir.as_deref(),
        )
        .await?;
        step("parallel", &format!("{result:?}"));
        report.parallel.push(result);
    }
    report.footprint = engine::footprint(options, &templates, per_volume, &work).await?;
    step("footprint", &format!("{:?}", report.footprint));
    for dir in &templates {
        std::fs::remove_dir_all(dir).ok();
    }

    report.scale = scale(options).await?;
    step("scale", &format!("{:?}", report.scale));

    let table = markdown(options, &report)?;
    write_between_markers(&options.out, &table)?;
    drop(temp);
    Ok(report)
}

fn step(name: &str, detail: &str) {
    eprintln!("[bench] {name}: {detail}");
}

/// The middle value (the mean of the two middle ones for an even count; zero for none).
fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn median_duration(values: impl IntoIterator<Item = Duration>) -> Duration {
    Duration::from_secs_f64(median(values.into_iter().map(|d| d.as_secs_f64())))
}

/// Each duration the median over the rounds; other load summed over them.
fn median_wrap(rounds: &[Wrap]) -> Wrap {
    let of = |f: fn(&Wrap) -> Duration| median_duration(rounds.iter().map(f));
    let load = |f: fn(&Wrap) -> OtherLoad| {
        rounds
            .iter()
            .map(f)
            .fold(OtherLoad::default(), OtherLoad::and)
    };
    Wrap {
        bare_backup: of(|w| w.bare_backup),
        stowage_backup: of(|w| w.stowage_backup),
        bare_backup_other: load(|w| w.bare_backup_other),
        stowage_backup_other: load(|w| w.stowage_backup_other),
        stowage_backup_restic: of(|w| w.stowage_backup_restic),
        stowage_backup_split: BackupSplit {
            before_agent: of(|w| w.stowage_backup_split.before_agent),
            agent: of(|w| w.stowage_backup_split.agent),
            after_agent: of(|w| w.stowage_backup_split.after_agent),
        },
        restic_cat_config: of(|w| w.restic_cat_config),
        restic_list_locks: of(|w| w.restic_list_locks),
        bare_restore: of(|w| w.bare_restore),
        stowage_restore: of(|w| w.stowage_restore),
        stowage_restore_after_pod_ready: of(|w| w.stowage_restore_after_pod_ready),
        bare_restore_other: load(|w| w.bare_restore_other),
        stowage_restore_other: load(|w| w.stowage_restore_other),
        restored_identically: !rounds.is_empty() && rounds.iter().all(|w| w.restored_identically),
        bare_backup_rss_kib: rounds
            .iter()
            .map(|w| w.bare_backup_rss_kib)
            .max()
            .unwrap_or(0),
        bare_restore_rss_kib: rounds
            .iter()
            .map(|w| w.bare_restore_rss_kib)
            .max()
            .unwrap_or(0),
        agent_backup_restic: rounds
            .iter()
            .flat_map(|w| w.agent_backup_restic.iter().cloned())
            .collect(),
        agent_restore_restic: rounds
            .iter()
            .flat_map(|w| w.agent_restore_restic.iter().cloned())
            .collect(),
        agent_peak_rss_kib: rounds
            .iter()
            .map(|w| w.agent_peak_rss_kib)
            .max()
            .unwrap_or(0),
    }
}

// ---------------------------------------------------------------------------------------
// Data

/// xorshift64: incompressible, non-repeating bytes restic cannot deduplicate.
struct Noise(u64);

impl Noise {
    fn fill(&mut self, buffer: &mut [u8]) {
        for word in buffer.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            word.copy_from_slice(&self.0.to_le_bytes()[..word.len()]);
        }
    }

    fn below(&mut self, n: u64) -> u64 {
        let mut word = [0u8; 8];
        self.fill(&mut word);
        u64::from_le_bytes(word) % n.max(1)
    }
}

fn write_noise(path: &Path, size: u64, noise: &mut Noise) -> Result<()> {
    let mut file = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut chunk = vec![0u8; (size as usize).min(1 << 20)];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        noise.fill(&mut chunk[..n]);
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.flush()?;
    Ok(())
}

/// `size` bytes under `dir`: 70% in four large files, 30% in small files of 1–64 KiB, 100 to
/// a directory, like a volume holding a database next to many small documents.
fn generate(dir: &Path, size: u64, seed: u64) -> Result<DataSet> {
    std::fs::create_dir_all(dir)?;
    let mut noise = Noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut data = DataSet::default();
    let large = size * 7 / 10 / 4;
    for i in 0..4 {
        let relative = PathBuf::from(format!("large-{i}.bin"));
        write_noise(&dir.join(&relative), large, &mut noise)?;
        data.files.push(relative);
        data.bytes += large;
    }
    data.large_files = 4;
    let mut index = 0;
    while data.bytes < size {
        let file_size = (1024 + noise.below(63 * 1024)).min(size - data.bytes);
        let relative = PathBuf::from(format!("small/{:04}/file-{index:06}.dat", index / 100));
        if index % 100 == 0 {
            std::fs::create_dir_all(dir.join(relative.parent().unwrap_or(Path::new("."))))?;
        }
        write_noise(&dir.join(&relative), file_size, &mut noise)?;
        data.files.push(relative);
        data.bytes += file_size;
        index += 1;
    }
    Ok(data)
}

/// Hard-links the tree `from` into `to` (same data and inodes, no copy).
async fn link_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    let status = tokio::process::Command::new("cp")
        .arg("-al")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .await?;
    ensure!(
        status.success(),
        "cp -al {} {}",
        from.display(),
        to.display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Measuring

async fn shell(script: &str, dir: &Path) -> Result<Duration> {
    let started = Instant::now();
    let output = tokio::process::Command::new("bash")
        .args(["-c", script])
        .current_dir(dir)
        .output()
        .await?;
    let elapsed = started.elapsed();
    ensure!(
        output.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(elapsed)
}

/// 5: how fast this machine reads and hashes the same data, one process each.
async fn limit(dir: &Path) -> Result<Limit> {
    // A first pass so every later reader finds the data in the page cache, as they all do.
    shell("find . -type f -print0 | xargs -0 cat > /dev/null", dir).await?;
    let meter = LoadMeter::start();
    let cat = shell("find . -type f -print0 | xargs -0 cat > /dev/null", dir).await?;
    let sha256sum = shell(
        "find . -type f -print0 | xargs -0 sha256sum > /dev/null",
        dir,
    )
    .await?;
    Ok(Limit {
        cat,
        sha256sum,
        other: meter.stop(),
    })
}

/// `rchar` of `pid`: bytes it read through read(2) and friends, including its reaped children
/// (the kernel adds a child's I/O counters to its parent's on wait).
fn read_bytes(pid: u32) -> Result<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    field(&io, "rchar:").context("rchar in /proc/<pid>/io")
}

fn field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}

/// User + system CPU time of `pid` (its own threads, and children it reaped).
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces, closed by the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|f| f.parse().ok())
        .collect();
    ensure!(fields.len() == 4, "reading /proc/{pid}/stat");
    // utime, stime, cutime, cstime in clock ticks (100 per second on Linux).
    Ok(Duration::from_millis(fields.iter().sum::<u64>() * 10))
}

/// CPU time that other processes on the machine used while a measurement ran: the machine's
/// busy time (`/proc/stat`) minus this run's own (the driver, the services it started, and the
/// restic processes they reaped). On a shared machine this says how contended a number is.
#[derive(Debug, Default, Clone, Copy)]
pub struct OtherLoad {
    pub cpu: Duration,
    pub wall: Duration,
}

impl OtherLoad {
    /// Cores busy with other work, on average.
    pub fn cores(&self) -> f64 {
        self.cpu.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }

    fn and(self, other: OtherLoad) -> OtherLoad {
        OtherLoad {
            cpu: self.cpu + other.cpu,
            wall: self.wall + other.wall,
        }
    }
}

/// Starts measuring [`OtherLoad`]; `stop` ends it. Reads nothing but `/proc`, and reports no
/// load where `/proc` cannot be read.
struct LoadMeter {
    started: Instant,
    machine: u64,
    own: u64,
}

/// Clock ticks per second of `/proc/stat` and `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const TICKS: u64 = 100;

impl LoadMeter {
    fn start() -> LoadMeter {
        LoadMeter {
            started: Instant::now(),
            machine: machine_busy_ticks().unwrap_or(0),
            own: own_ticks(),
        }
    }

    fn stop(self) -> OtherLoad {
        let wall = self.started.elapsed();
        let machine = machine_busy_ticks()
            .unwrap_or(0)
            .saturating_sub(self.machine);
        let own = own_ticks().saturating_sub(self.own);
        OtherLoad {
            cpu: Duration::from_millis(machine.saturating_sub(own) * 1000 / TICKS),
            wall,
        }
    }
}

/// user + nice + system + irq + softirq of the `cpu` line of `/proc/stat` (guest time is
/// already in user; idle, iowait and steal are not work done here).
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let at = |i: usize| fields.get(i).copied().unwrap_or(0);
    Some(at(0) + at(1) + at(2) + at(5) + at(6))
}

/// Parent pid and utime + stime + cutime + cstime of `pid`, from `/proc/<pid>/stat`.
fn process_ticks(pid: &str) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces, closed by the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let ticks = fields
        .get(11..15)?
        .iter()
        .map(|f| f.parse::<u64>().ok())
        .sum::<Option<u64>>()?;
    Some((ppid, ticks))
}

/// This process's CPU ticks and those of its live children (the services), each with the
/// children it reaped (restic under the agent; bare restic, cat, sha256sum under the driver).
fn own_ticks() -> u64 {
    let me = std::process::id();
    let mut ticks = process_ticks(&me.to_string()).map_or(0, |(_, t)| t);
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            if let Some((_, t)) = process_ticks(pid).filter(|(ppid, _)| *ppid == me) {
                ticks += t;
            }
        }
    }
    ticks
}

/// Peak resident set (VmHWM) of `pid` in KiB.
fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    field(&status, "VmHWM:").context("VmHWM in /proc/<pid>/status")
}

/// `perf record` attached to one process while a benchmark runs (nothing without a directory).
struct Perf(Option<tokio::process::Child>);

impl Perf {
    async fn start(dir: Option<&Path>, name: &str, pid: u32) -> Result<Perf> {
        let Some(dir) = dir else {
            return Ok(Perf(None));
        };
        std::fs::create_dir_all(dir)?;
        // cpu-clock: virtual machines often have no hardware counters.
        let child = tokio::process::Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-F", "999", "-g", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(dir.join(format!("{name}.data")))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting perf record")?;
        // perf needs a moment to attach before the work starts.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(Perf(Some(child)))
    }

    async fn stop(self) -> Result<()> {
        if let Some(mut child) = self.0 {
            if let Some(pid) = child.id() {
                // SIGINT makes perf write its data file and exit.
                tokio::process::Command::new("kill")
                    .args(["-INT", &pid.to_string()])
                    .status()
                    .await?;
            }
            child.wait().await?;
        }
        Ok(())
    }
}

/// Copies a stack's service logs into `--logs-dir` when dropped, so they outlive the stack's
/// temp dir, also when a benchmark fails. Declared after the stack, it drops first.
struct KeepLogs(Option<(PathBuf, PathBuf)>);

impl KeepLogs {
    fn new(dir: Option<&Path>, logs: PathBuf, name: &str) -> KeepLogs {
        KeepLogs(dir.map(|dir| (logs, dir.join(name))))
    }
}

impl Drop for KeepLogs {
    fn drop(&mut self) {
        let Some((from, to)) = &self.0 else { return };
        let copied = std::fs::create_dir_all(to).is_ok()
            && std::process::Command::new("cp")
                .arg("-r")
                .arg(format!("{}/.", from.display()))
                .arg(to)
                .status()
                .is_ok_and(|status| status.success());
        if copied {
            step("logs", &to.display().to_string());
        } else {
            step(
                "logs",
                &format!("could not copy {} to {}", from.display(), to.display()),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Bare restic, the baseline

struct BareRepo {
    path: PathBuf,
    cache: PathBuf,
    /// The restic binary: the machine's (`restic` on the PATH) or the 0.14 baseline.
    binary: PathBuf,
}

/// One bare restic backup: its snapshot, wall time, bytes read (`rchar`) and peak RSS.
#[derive(Debug, Default, Clone)]
struct BareBackup {
    id: String,
    elapsed: Duration,
    read: u64,
    peak_rss_kib: u64,
}

impl BareRepo {
    /// A fresh repository written by the machine's restic.
    async fn init(path: PathBuf) -> Result<BareRepo> {
        BareRepo::init_with(path, Path::new("restic")).await
    }

    async fn init_with(path: PathBuf, binary: &Path) -> Result<BareRepo> {
        let repo = BareRepo {
            cache: path.with_extension("cache"),
            path,
            binary: binary.to_path_buf(),
        };
        repo.restic(&["init"], Path::new(".")).await?;
        Ok(repo)
    }

    async fn restic(&self, args: &[&str], dir: &Path) -> Result<String> {
        Ok(self.measured(args, dir).await?.0)
    }

    /// Runs restic under GNU time (as the agent's restic runs in these benchmarks, see
    /// [`ResticLog`]); its stdout, wall time and peak RSS.
    async fn measured(&self, args: &[&str], dir: &Path) -> Result<(String, Duration, u64)> {
        let rss = self.path.with_extension("rss");
        let started = Instant::now();
        let output = tokio::process::Command::new(GNU_TIME)
            .args(["-f", "%M", "-o"])
            .arg(&rss)
            .arg(&self.binary)
            .args(args)
            .arg("--cache-dir")
            .arg(&self.cache)
            .env("RESTIC_REPOSITORY", &self.path)
            .env("RESTIC_PASSWORD", "bench")
            .current_dir(dir)
            .output()
            .await
            .with_context(|| format!("running {} under {GNU_TIME}", self.binary.display()))?;
        let elapsed = started.elapsed();
        ensure!(
            output.status.success(),
            "{} {args:?} failed: {}",
            self.binary.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        // The last line; a failed command would have a line before it saying so.
        let peak_rss_kib = std::fs::read_to_string(&rss)
            .ok()
            .and_then(|text| text.lines().last().and_then(|l| l.trim().parse().ok()))
            .with_context(|| format!("{GNU_TIME} wrote no peak RSS to {}", rss.display()))?;
        Ok((
            String::from_utf8_lossy(&output.stdout).into_owned(),
            elapsed,
            peak_rss_kib,
        ))
    }

    /// `restic backup` of `dir` the way the agent runs it (`.` from inside the volume), with
    /// no `--parent` (restic then looks for a snapshot of the same path itself).
    async fn backup(&self, dir: &Path) -> Result<BareBackup> {
        self.backup_with(dir, None).await
    }

    /// `restic backup` of `dir` with `--parent` when given.
    async fn backup_with(&self, dir: &Path, parent: Option<&str>) -> Result<BareBackup> {
        let mut args = vec!["backup", "--json", "--host", NODE];
        if let Some(parent) = parent {
            args.extend(["--parent", parent]);
        }
        args.extend(["--", "."]);
        let read_before = read_bytes(std::process::id())?;
        let (out, elapsed, peak_rss_kib) = self.measured(&args, dir).await?;
        let read = read_bytes(std::process::id())? - read_before;
        let summary: serde_json::Value = out
            .lines()
            .rev()
            .find_map(|line| serde_json::from_str(line).ok())
            .context("restic backup printed no summary")?;
        let id = summary["snapshot_id"]
            .as_str()
            .context("summary without snapshot_id")?;
        Ok(BareBackup {
            id: id.to_string(),
            elapsed,
            read,
            peak_rss_kib,
        })
    }
}

/// GNU time (Debian package `time`): measures the peak RSS of every restic in the run.
pub const GNU_TIME: &str = "/usr/bin/time";

/// One restic command the agent ran, as GNU time logged it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ResticRun {
    /// The subcommand (`backup`, `snapshots`, `restore`, ...).
    pub command: String,
    pub peak_rss_kib: u64,
    pub seconds: f64,
}

/// The agent's restic runs under GNU time through a wrapper script (`--restic-binary`), which
/// appends one line per command to this log: the subcommand, its peak RSS and its wall time.
/// restic is a child of GNU time, not of the agent, so the agent's own RSS excludes it.
/// (GNU time ignores SIGINT: a cancelled restic would not get the agent's signal; the
/// benchmarks cancel nothing.)
pub struct ResticLog {
    pub path: PathBuf,
    /// Bytes of the log already taken.
    taken: usize,
}

impl ResticLog {
    /// Writes the wrapper into `dir`; its path, for the agent's `--restic-binary`, and the log.
    fn wrapper(dir: &Path) -> Result<(PathBuf, ResticLog)> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir)?;
        let log = dir.join("restic-runs.log");
        let wrapper = dir.join("restic-under-time");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\n# restic under GNU time: one line per command (subcommand, peak RSS in KiB, seconds)\n\
                 exec {GNU_TIME} -a -o '{}' -f \"$1 %M %e\" restic \"$@\"\n",
                log.display()
            ),
        )?;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
        Ok((
            wrapper,
            ResticLog {
                path: log,
                taken: 0,
            },
        ))
    }

    /// The commands logged since the last call (only whole lines: a command may be ending).
    fn take(&mut self) -> Result<Vec<ResticRun>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => {
                return Err(error).with_context(|| format!("reading {}", self.path.display()));
            }
        };
        let end = text[self.taken..]
            .rfind('\n')
            .map_or(self.taken, |at| self.taken + at + 1);
        let runs = parse_restic_runs(&text[self.taken..end]);
        self.taken = end;
        Ok(runs)
    }
}

/// The lines of a [`ResticLog`]; GNU time's own lines about a failed command are skipped.
fn parse_restic_runs(text: &str) -> Vec<ResticRun> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let command = fields.next()?;
            let peak_rss_kib = fields.next()?.parse().ok()?;
            let seconds = fields.next()?.parse().ok()?;
            fields.next().is_none().then(|| ResticRun {
                command: command.to_string(),
                peak_rss_kib,
                seconds,
            })
        })
        .collect()
}

/// The highest peak RSS of the `command` runs (0 when there are none).
fn peak_of(runs: &[ResticRun], command: &str) -> u64 {
    runs.iter()
        .filter(|r| r.command == command)
        .map(|r| r.peak_rss_kib)
        .max()
        .unwrap_or(0)
}

/// `restic snapshots`, `restic backup`: the commands in the order they ended.
fn commands(runs: &[ResticRun]) -> String {
    if runs.is_empty() {
        return "none logged".to_string();
    }
    runs.iter()
        .map(|r| format!("`restic {}`", r.command))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------
// stowage through its API

async fn ensure_repository(stack: &Stack, namespace: &str) -> Result<()> {
    let mut client = RepoManagerClient::new(stowage_grpc::connect(&stack.repo_manager.url).await?);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let repository = client
            .ensure_repository(EnsureRepositoryRequest {
                namespace: namespace.to_string(),
            })
            .await?
            .into_inner();
        match RepositoryPhase::try_from(repository.phase) {
            Ok(RepositoryPhase::Ready) => return Ok(()),
            Ok(RepositoryPhase::Failed) => bail!("repository {namespace}: {}", repository.message),
            _ if Instant::now() > deadline => bail!("repository {namespace} not ready"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn spec(namespace: &str) -> BackupSpec {
    BackupSpec {
        included_namespaces: vec![namespace.to_string()],
        ..Default::default()
    }
}

/// Creates backup `name` and follows it to its end; the backup as it ended, the wall time,
/// and the most volumes running or queued at once.
async fn backup(
    client: &mut Client,
    name: &str,
    spec: BackupSpec,
) -> Result<(Backup, Duration, usize)> {
    let started = Instant::now();
    client
        .create_backup(CreateBackupRequest {
            name: name.to_string(),
            spec: Some(spec),
        })
        .await?;
    let mut stream = client
        .watch_backup(WatchBackupRequest { name: name.into() })
        .await?
        .into_inner();
    let mut last = None;
    let mut most_running = 0;
    tokio::time::timeout(OPERATION_LIMIT, async {
        while let Some(event) = stream.message().await? {
            if let Some(status) = event.backup.as_ref().and_then(|b| b.status.as_ref()) {
                let running = status
                    .volumes
                    .iter()
                    .filter(|v| {
                        v.phase == stowage_proto::v1::VolumePhase::InProgress as i32
                            || v.phase == stowage_proto::v1::VolumePhase::Queued as i32
                    })
                    .count();
                most_running = most_running.max(running);
            }
            last = event.backup;
        }
        Ok::<_, tonic::Status>(())
    })
    .await
    .with_context(|| format!("backup {name} did not end"))??;
    let elapsed = started.elapsed();
    let backup = last.context("no backup event")?;
    let status = backup.status.clone().unwrap_or_default();
    ensure!(
        status.phase == BackupPhase::Completed as i32,
        "backup {name} ended {:?}: {} {:?}",
        BackupPhase::try_from(status.phase),
        status.failure_reason,
        status
            .volumes
            .iter()
            .map(|v| v.error_message.clone())
            .find(|m| !m.is_empty())
    );
    Ok((backup, elapsed, most_running))
}

async fn wait_restore(client: &mut Client, name: &str) -> Result<Restore> {
    let mut stream = client
        .watch_restore(WatchRestoreRequest { name: name.into() })
        .await?
        .into_inner();
    let mut last = None;
    tokio::time::timeout(OPERATION_LIMIT, async {
        while let Some(event) = stream.message().await? {
            last = event.restore;
        }
        Ok::<_, tonic::Status>(())
    })
    .await
    .with_context(|| format!("restore {name} did not end"))??;
    let restore = last.context("no restore event")?;
    let status = restore.status.clone().unwrap_or_default();
    ensure!(
        status.phase == RestorePhase::Completed as i32,
        "restore {name} ended {:?}: {}",
        RestorePhase::try_from(status.phase),
        status.failure_reason
    );
    Ok(restore)
}

fn only_volume(backup: &Backup) -> Result<PodVolumeBackup> {
    let volumes = backup.status.clone().unwrap_or_default().volumes;
    ensure!(
        volumes.len() == 1,
        "expected one volume, got {}",
        volumes.len()
    );
    Ok(volumes[0].clone())
}

/// Whether two snapshot ids name the same snapshot: restic 0.17 and later report a backup's
/// full id, while a parent may be given by its short id (its first 8 hex digits).
fn same_snapshot(a: &str, b: &str) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    short.len() >= 8 && long.starts_with(short)
}

fn restic_seconds(volume: &PodVolumeBackup) -> Duration {
    Duration::from_secs_f64(
        volume
            .progress
            .map(|p| p.seconds_elapsed)
            .unwrap_or_default()
            .max(0.0),
    )
}

// ---------------------------------------------------------------------------------------
// 1. Wrap overhead

/// One round: its own namespace (`<prefix>-<round>`), pod, claim and repositories (stowage's
/// and bare restic's both fresh), so rounds measure the same thing. `log` is the stack's
/// agent's [`ResticLog`]. Benchmark 8 (many small files) runs the same on its own data.
async fn wrap(
    stack: &Stack,
    log: &mut ResticLog,
    prefix: &str,
    round: usize,
    source: &Path,
    work: &Path,
    perf_dir: Option<&Path>,
) -> Result<Wrap> {
    let namespace = &format!("{prefix}-{round}");
    let kube = stack.kube_client().await;
    let kubelet = &stack.kubelets[NODE];
    let example = seed_example(&kube, namespace, NODE, Some("pvc-volume")).await;
    let volume_dir = kubelet
        .pod(&example.pod_uid())
        .pv("kubernetes.io~local-volume", &example.pv_name());
    link_tree(source, &volume_dir).await?;
    let before = manifest(&volume_dir, false);

    let bare = BareRepo::init(work.join(format!("bare-{namespace}"))).await?;
    let meter = LoadMeter::start();
    let bare_first = bare.backup(&volume_dir).await?;
    let bare_backup_other = meter.stop();
    let (bare_snapshot, bare_backup) = (bare_first.id, bare_first.elapsed);
    let started = Instant::now();
    bare.restic(&["cat", "config"], Path::new(".")).await?;
    let restic_cat_config = started.elapsed();
    let started = Instant::now();
    bare.restic(&["list", "locks"], Path::new(".")).await?;
    let restic_list_locks = started.elapsed();
    ensure_repository(stack, namespace).await?;
    let mut client = stack.client().await;
    log.take()?;
    let perf = Perf::start(perf_dir, "agent-backup", stack.agents[NODE].process.pid()).await?;
    let meter = LoadMeter::start();
    let backup_created = SystemTime::now();
    let (backup_done, stowage_backup, _) = backup(&mut client, namespace, spec(namespace)).await?;
    let backup_ended = SystemTime::now();
    let stowage_backup_other = meter.stop();
    perf.stop().await?;
    let agent_backup_restic = log.take()?;
    let volume = only_volume(&backup_done)?;

    let bare_target = work.join(format!("bare-{namespace}-restored"));
    std::fs::create_dir_all(&bare_target)?;
    let meter = LoadMeter::start();
    let (_, bare_restore, bare_restore_rss_kib) = bare
        .measured(&["restore", &bare_snapshot, "--target", "."], &bare_target)
        .await?;
    let bare_restore_other = meter.stop();
    std::fs::remove_dir_all(&bare_target).ok();
    std::fs::remove_dir_all(&bare.path).ok();

    // Disaster: the pod, its claim and its data go; a restore recreates them (the driver
    // plays scheduler and kubelet, as the demo does).
    let pods: Api<Pod> = Api::namespaced(kube.clone(), namespace);
    pods.delete("sample", &DeleteParams::default()).await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(kube.clone(), namespace);
    claims
        .delete("sample-pvc", &DeleteParams::default())
        .await?;
    std::fs::remove_dir_all(&volume_dir).ok();
    let restore_name = format!("{namespace}-restore");
    let meter = LoadMeter::start();
    let started = Instant::now();
    client
        .create_restore(CreateRestoreRequest {
            name: restore_name.clone(),
            spec: Some(RestoreSpec {
                backup_name: namespace.to_string(),
                ..Default::default()
            }),
        })
        .await?;
    let play_kubelet = async {
        let pod = wait_for_pod(&kube, namespace, "sample", Duration::from_secs(120)).await;
        let new_pv = &format!("pv-{namespace}-sample-restored");
        claims
            .patch(
                "sample-pvc",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"volumeName": new_pv}})),
            )
            .await?;
        let dir = kubelet
            .pod(&pod.metadata.uid.clone().unwrap_or_default())
            .pv("kubernetes.io~local-volume", new_pv);
        mark_init_container_running(&kube, namespace, "sample", NODE, RESTORE_HELPER).await;
        Ok::<_, anyhow::Error>((dir, Instant::now()))
    };
    let (restored, played) = tokio::join!(wait_restore(&mut client, &restore_name), play_kubelet);
    let ended = Instant::now();
    let stowage_restore_other = meter.stop();
    let stowage_restore = ended - started;
    restored?;
    let (restored_dir, ready) = played?;
    let stowage_restore_after_pod_ready = ended.saturating_duration_since(ready);
    let agent_restore_restic = log.take()?;
    let restored_identically = manifest(&restored_dir, false) == before;
    ensure!(
        restored_identically,
        "the restored volume differs from the backed-up one"
    );
    // The restored copy is real data (not links to the source); later rounds need the room.
    std::fs::remove_dir_all(&restored_dir).ok();
    Ok(Wrap {
        bare_backup,
        stowage_backup,
        bare_backup_other,
        stowage_backup_other,
        stowage_backup_restic: restic_seconds(&volume),
        stowage_backup_split: BackupSplit::of(&volume, backup_created, backup_ended),
        restic_cat_config,
        restic_list_locks,
        bare_restore,
        stowage_restore,
        stowage_restore_after_pod_ready,
        bare_restore_other,
        stowage_restore_other,
        restored_identically,
        bare_backup_rss_kib: bare_first.peak_rss_kib,
        bare_restore_rss_kib,
        agent_backup_restic,
        agent_restore_restic,
        agent_peak_rss_kib: peak_rss_kib(stack.agents[NODE].process.pid())?,
    })
}

// ---------------------------------------------------------------------------------------
// 2. Incremental after pod recreate

/// The workload replaces pod `sample` of `example`: a new uid, the same claim; the node mounts
/// the same volume (same inodes) under the new pod's directory, moved there from `current`.
/// Returns the volume's new directory.
async fn recreate_pod(
    kube: &kube::Client,
    kubelet: &stowage_e2e::kubelet::FakeKubelet,
    example: &stowage_e2e::kube::Example,
    current: &Path,
) -> Result<PathBuf> {
    let namespace = example.namespace.as_str();
    let pods: Api<Pod> = Api::namespaced(kube.clone(), namespace);
    let old_uid = pods.get("sample").await?.metadata.uid.unwrap_or_default();
    pods.delete("sample", &DeleteParams::default()).await?;
    let mut pod = serde_json::to_value(&example.pod)?;
    if let Some(metadata) = pod["metadata"].as_object_mut() {
        for field in ["uid", "resourceVersion", "creationTimestamp"] {
            metadata.remove(field);
        }
    }
    let recreated: Pod = create(kube, Some(namespace), pod).await;
    mark_pod_running(kube, namespace, "sample", NODE).await;
    let new_uid = recreated.metadata.uid.clone().unwrap_or_default();
    ensure!(new_uid != old_uid, "the recreated pod kept its uid");
    let new_dir = kubelet
        .pod(&new_uid)
        .pv("kubernetes.io~local-volume", &example.pv_name());
    std::fs::remove_dir(&new_dir)?;
    std::fs::rename(current, &new_dir)?;
    Ok(new_dir)
}

async fn incremental(
    stack: &Stack,
    log: &mut ResticLog,
    source: &Path,
    data: &DataSet,
    work: &Path,
) -> Result<Incremental> {
    let namespace = "incr";
    let kube = stack.kube_client().await;
    let kubelet = &stack.kubelets[NODE];
    let agent_pid = stack.agents[NODE].process.pid();
    let example = seed_example(&kube, namespace, NODE, Some("pvc-volume")).await;
    let plugin = "kubernetes.io~local-volume";
    let old_dir = kubelet
        .pod(&example.pod_uid())
        .pv(plugin, &example.pv_name());
    link_tree(source, &old_dir).await?;
    ensure_repository(stack, namespace).await?;
    let mut client = stack.client().await;

    let read_before = read_bytes(agent_pid)?;
    let meter = LoadMeter::start();
    let (first_backup, first, _) = backup(&mut client, "incr-1", spec(namespace)).await?;
    let mut other = meter.stop();
    let first_read = read_bytes(agent_pid)? - read_before;
    let bare = BareRepo::init(work.join("bare-incr")).await?;
    let meter = LoadMeter::start();
    let bare_first = bare.backup(&old_dir).await?;
    other = other.and(meter.stop());

    let new_dir = recreate_pod(&kube, kubelet, &example, &old_dir).await?;

    // 1% of the files get new contents (written aside and renamed over, as editors and
    // databases do, so the hard-linked source stays as it was).
    let mut noise = Noise(0xC0FFEE);
    let mut files_changed = 0;
    let mut bytes_changed = 0;
    for (i, relative) in data.files.iter().enumerate() {
        if i % 100 != 50 % data.files.len().max(1) {
            continue;
        }
        let path = new_dir.join(relative);
        let size = std::fs::metadata(&path)?.len();
        let aside = path.with_extension("new");
        write_noise(&aside, size, &mut noise)?;
        std::fs::rename(&aside, &path)?;
        files_changed += 1;
        bytes_changed += size;
    }

    let read_before = read_bytes(agent_pid)?;
    log.take()?;
    let meter = LoadMeter::start();
    let (second_backup, second, _) = backup(&mut client, "incr-2", spec(namespace)).await?;
    other = other.and(meter.stop());
    let second_read = read_bytes(agent_pid)? - read_before;
    let second_restic_runs = log.take()?;
    // Velero's association first: restic finds no snapshot of the new path and reads it all.
    // Then the best bare restic can do: the right `--parent`, given explicitly.
    let meter = LoadMeter::start();
    let velero = bare.backup(&new_dir).await?;
    let best = bare.backup_with(&new_dir, Some(&bare_first.id)).await?;
    other = other.and(meter.stop());
    let first_volume = only_volume(&first_backup)?;
    let second_volume = only_volume(&second_backup)?;
    Ok(Incremental {
        files_changed,
        bytes_changed,
        first,
        second,
        first_read,
        second_read,
        second_restic: restic_seconds(&second_volume),
        second_parent_is_first: same_snapshot(
            &second_volume.parent_snapshot_id,
            &first_volume.snapshot_id,
        ),
        second_files_unmodified: second_volume.files_unmodified,
        bare_first: bare_first.elapsed,
        bare_second_no_parent: velero.elapsed,
        bare_first_read: bare_first.read,
        bare_second_read: velero.read,
        bare_second_parent: best.elapsed,
        bare_second_parent_read: best.read,
        second_restic_runs,
        other,
    })
}

// ---------------------------------------------------------------------------------------
// 3. Parallel volumes

async fn parallel(
    concurrency: usize,
    templates: &[PathBuf],
    bytes: u64,
    logs_dir: Option<&Path>,
) -> Result<Parallel> {
    let stack = Stack::start(StackOptions {
        agent_args: vec!["--max-concurrent".into(), concurrency.to_string()],
        orchestrator_args: vec!["--max-parallel-per-node".into(), concurrency.to_string()],
        ..StackOptions::default()
    })
    .await;
    let _logs = KeepLogs::new(logs_dir, stack.logs(), &format!("parallel-{concurrency}"));
    let namespace = "par";
    let kube = stack.kube_client().await;
    stowage_e2e::kube::ensure_namespace(&kube, namespace).await;
    let names: Vec<String> = (0..templates.len()).map(|v| format!("v{v}")).collect();
    let pod = pod_with_empty_dirs(&kube, namespace, "par", NODE, &names).await?;
    let pod_dir = stack.kubelets[NODE].pod(&pod);
    for (name, template) in names.iter().zip(templates) {
        link_tree(template, &pod_dir.empty_dir(name)).await?;
    }
    ensure_repository(&stack, namespace).await?;
    let mut client = stack.client().await;
    let meter = LoadMeter::start();
    let (done, wall, most_running) = backup(&mut client, "par", spec(namespace)).await?;
    let other = meter.stop();
    Ok(Parallel {
        concurrency,
        volumes: templates.len(),
        bytes,
        wall,
        completed: done.status.unwrap_or_default().volumes_completed,
        most_running,
        other,
    })
}

/// Creates running pod `namespace/name` on `node` with annotated emptyDir volumes `volumes`;
/// returns its uid.
async fn pod_with_empty_dirs(
    kube: &kube::Client,
    namespace: &str,
    name: &str,
    node: &str,
    volumes: &[String],
) -> Result<String> {
    let pod: Pod = create(
        kube,
        Some(namespace),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "namespace": namespace,
                "annotations": {"backup.velero.io/backup-volumes": volumes.join(",")},
            },
            "spec": {
                "nodeName": node,
                "containers": [{
                    "name": "app", "image": "busybox",
                    "volumeMounts": volumes.iter()
                        .map(|v| json!({"name": v, "mountPath": format!("/{v}")}))
                        .collect::<Vec<_>>(),
                }],
                "volumes": volumes.iter()
                    .map(|v| json!({"name": v, "emptyDir": {}}))
                    .collect::<Vec<_>>(),
            },
        }),
    )
    .await;
    mark_pod_running(kube, namespace, name, node).await;
    pod.metadata.uid.context("the emulator gave the pod no uid")
}

// ---------------------------------------------------------------------------------------
// 4. Orchestration at scale, against the instant agent (a benchmark double)

async fn scale(options: &Options) -> Result<Scale> {
    let logs = tempfile::tempdir()?;
    let _agent_logs = KeepLogs::new(
        options.logs_dir.as_deref(),
        logs.path().to_path_buf(),
        "scale-instant-agents",
    );
    let mut agents: Vec<ServiceProcess> = Vec::new();
    for _ in 0..options.scale_agent_processes.max(1) {
        agents.push(
            start_service(
                "stowage-bench-instant-agent",
                "stowage.v1.VolumeAgent",
                &[],
                &BTreeMap::new(),
                logs.path(),
            )
            .await,
        );
    }
    let nodes: Vec<String> = (0..options.scale_nodes.max(1))
        .map(|n| format!("node-{n:03}"))
        .collect();
    let mut orchestrator_args = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        orchestrator_args.push("--agent".to_string());
        orchestrator_args.push(format!("{node}={}", agents[n % agents.len()].url));
    }
    let stack = Stack::start(StackOptions {
        agent_nodes: Vec::new(),
        orchestrator_args,
        ..StackOptions::default()
    })
    .await;
    let _logs = KeepLogs::new(options.logs_dir.as_deref(), stack.logs(), "scale");
    let namespace = "scale";
    let kube = stack.kube_client().await;
    stowage_e2e::kube::ensure_namespace(&kube, namespace).await;
    let pods = options.scale_volumes.div_ceil(2);
    let volumes = ["a".to_string(), "b".to_string()];
    let seeding = Instant::now();
    futures::stream::iter(0..pods)
        .map(|p| {
            let kube = kube.clone();
            let node = nodes[p % nodes.len()].clone();
            let volumes = volumes.clone();
            async move {
                pod_with_empty_dirs(&kube, namespace, &format!("pod-{p:05}"), &node, &volumes).await
            }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await?;
    let seed = seeding.elapsed();
    ensure_repository(&stack, namespace).await?;

    let orchestrator = stack.orchestrator.process.pid();
    let emulator = stack.kube.process.pid();
    let cpu = |pids: &[u32]| -> Result<Duration> {
        pids.iter()
            .map(|&pid| cpu_time(pid))
            .sum::<Result<Duration>>()
    };
    let agent_pids: Vec<u32> = agents.iter().map(|a| a.process.pid()).collect();
    let before = (cpu(&[orchestrator])?, cpu(&[emulator])?, cpu(&agent_pids)?);
    let mut client = stack.client().await;
    let perf = Perf::start(
        options.perf_dir.as_deref(),
        "orchestrator-scale",
        orchestrator,
    )
    .await?;
    let meter = LoadMeter::start();
    let (done, backup_time, _) = backup(&mut client, "scale", spec(namespace)).await?;
    let other = meter.stop();
    perf.stop().await?;
    let after = (cpu(&[orchestrator])?, cpu(&[emulator])?, cpu(&agent_pids)?);
    Ok(Scale {
        volumes: pods * 2,
        nodes: nodes.len(),
        seed,
        backup: backup_time,
        completed: done.status.unwrap_or_default().volumes_completed,
        orchestrator_peak_rss_kib: peak_rss_kib(orchestrator)?,
        orchestrator_cpu: after.0.saturating_sub(before.0),
        emulator_cpu: after.1.saturating_sub(before.1),
        agent_cpu: after.2.saturating_sub(before.2),
        other,
    })
}

// ---------------------------------------------------------------------------------------
// The table

fn command_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .current_dir(stowage_e2e::workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| field(&info, "MemTotal:"))
        .map(|kib| format!("{:.1} GiB", kib as f64 / MIB))
        .unwrap_or_else(|| "unknown".to_string());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores (nproc), {memory} RAM, {cpu}")
}

/// `1GiB`, `256MiB` or plain bytes, as `--size` takes them.
fn size_flag(bytes: u64) -> String {
    if bytes > 0 && bytes.is_multiple_of(1 << 30) {
        format!("{}GiB", bytes >> 30)
    } else if bytes > 0 && bytes.is_multiple_of(1 << 20) {
        format!("{}MiB", bytes >> 20)
    } else {
        bytes.to_string()
    }
}

fn secs(duration: Duration) -> String {
    format!("{:.2} s", duration.as_secs_f64())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB)
}

fn rate(bytes: u64, duration: Duration) -> String {
    format!(
        "{:.0} MiB/s",
        bytes as f64 / MIB / duration.as_secs_f64().max(1e-9)
    )
}

fn ratio(a: f64, b: f64) -> f64 {
    a / b.max(1e-9)
}

fn verdict(met: bool) -> &'static str {
    if met { "**met**" } else { "**not met**" }
}

fn round_backup_ratio(w: &Wrap) -> f64 {
    ratio(w.stowage_backup.as_secs_f64(), w.bare_backup.as_secs_f64())
}

fn round_restore_ratio(w: &Wrap) -> f64 {
    ratio(
        w.stowage_restore_after_pod_ready.as_secs_f64(),
        w.bare_restore.as_secs_f64(),
    )
}

/// ` (rounds: 1.02, 0.99, 1.07)`, or nothing for a single round.
fn each_round(ratios: &[f64]) -> String {
    if ratios.len() < 2 {
        return String::new();
    }
    let list: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    format!(" (rounds: {})", list.join(", "))
}

/// Issue 15's targets: wrap overhead against bare restic 0.18 ...
const WRAP_TARGET: f64 = 1.03;
/// ... incremental backup after pod recreate against bare restic 0.18 with the right parent ...
const INCREMENTAL_TIME_TARGET: f64 = 1.05;
/// ... and against the first backup's bytes read ...
const INCREMENTAL_READ_TARGET: f64 = 0.01;
/// ... and the agent's own RSS (MB, 10^6 bytes), idle and with 4 operations in flight.
const AGENT_IDLE_TARGET_MB: f64 = 30.0;
const AGENT_BUSY_TARGET_MB: f64 = 60.0;

fn megabytes(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

fn mb(kib: u64) -> String {
    format!("{:.1} MB", megabytes(kib))
}

/// Cores busy with other work over several measurements.
fn load_of(loads: impl Iterator<Item = OtherLoad>) -> f64 {
    loads.fold(OtherLoad::default(), OtherLoad::and).cores()
}

/// Benchmarks 6–9.
fn engine_rows(md: &mut String, report: &Report) -> Result<()> {
    let versions = &report.versions;
    if let Some(first) = versions.first() {
        let (new, old) = (&first.new.version, &first.old.version);
        type Part = fn(&engine::EngineRun) -> engine::Measured;
        let parts: [(&str, Part); 3] = [
            ("first backup into a fresh repository", |e| e.backup),
            (
                "the same data again (restic finds the parent by path)",
                |e| e.rebackup,
            ),
            ("restore of that snapshot", |e| e.restore),
        ];
        for (what, part) in parts {
            let time = |run: fn(&Versions) -> &engine::EngineRun| {
                median_duration(versions.iter().map(|v| part(run(v)).time))
            };
            let rss = |run: fn(&Versions) -> &engine::EngineRun| {
                versions
                    .iter()
                    .map(|v| part(run(v)).peak_rss_kib)
                    .max()
                    .unwrap_or(0)
            };
            let ratios: Vec<f64> = versions
                .iter()
                .map(|v| {
                    ratio(
                        part(&v.new).time.as_secs_f64(),
                        part(&v.old).time.as_secs_f64(),
                    )
                })
                .collect();
            writeln!(
                md,
                "| 6 | Bare restic {new} against {old}, same data ({}): {what}; time (peak RSS) | restic {new}: {} ({}) | restic {old}: {} ({}) | {:.3}{} | — | measured |",
                mib(report.data.bytes),
                secs(time(|v| &v.new)),
                mb(rss(|v| &v.new)),
                secs(time(|v| &v.old)),
                mb(rss(|v| &v.old)),
                median(ratios.iter().copied()),
                each_round(&ratios),
            )?;
        }
    }

    let large = &report.large_file;
    if !large.rounds.is_empty() {
        let rounds = &large.rounds;
        let of = |f: fn(&engine::LargeFileRound) -> Duration| median_duration(rounds.iter().map(f));
        let read = |f: fn(&engine::LargeFileRound) -> u64| {
            median(rounds.iter().map(|r| f(r) as f64)) as u64
        };
        writeln!(
            md,
            "| 7 | One file of {} (random bytes), first backup | {} | bare restic: {} | {:.3} | — | measured |",
            mib(large.bytes),
            secs(large.stowage_first),
            secs(large.bare_first),
            ratio(
                large.stowage_first.as_secs_f64(),
                large.bare_first.as_secs_f64()
            ),
        )?;
        let ratios: Vec<f64> = rounds
            .iter()
            .map(|r| ratio(r.stowage.as_secs_f64(), r.bare_parent.as_secs_f64()))
            .collect();
        writeln!(
            md,
            "| 7 | … {} changed in its middle, pod recreated: stowage's backup (parent = previous snapshot: {}; the agent ran {}) | {} | bare restic 0.18 on the new path, `--parent` its previous snapshot: {} | {:.3}{} | — | measured |",
            mib(engine::LARGE_FILE_CHANGE),
            if rounds.iter().all(|r| r.stowage_parent_ok) {
                "yes"
            } else {
                "NO"
            },
            commands(&rounds[0].stowage_restic),
            secs(of(|r| r.stowage)),
            secs(of(|r| r.bare_parent)),
            median(ratios.iter().copied()),
            each_round(&ratios),
        )?;
        let velero: Vec<f64> = rounds
            .iter()
            .map(|r| ratio(r.velero.as_secs_f64(), r.bare_parent.as_secs_f64()))
            .collect();
        writeln!(
            md,
            "| 7 | … Velero's behaviour: bare restic on the new path, no parent | {} | bare restic with `--parent`: {} | {:.3}{} | — | for comparison |",
            secs(of(|r| r.velero)),
            secs(of(|r| r.bare_parent)),
            median(velero.iter().copied()),
            each_round(&velero),
        )?;
        writeln!(
            md,
            "| 7 | … bytes read (`rchar`): stowage / bare restic with `--parent` / Velero's | {} / {} / {} | the file: {} | — | — | measured |",
            mib(read(|r| r.stowage_read)),
            mib(read(|r| r.bare_parent_read)),
            mib(read(|r| r.velero_read)),
            mib(large.bytes),
        )?;
    }

    let small = &report.small_files;
    if !small.rounds.is_empty() {
        let m = median_wrap(&small.rounds);
        let backups: Vec<f64> = small.rounds.iter().map(round_backup_ratio).collect();
        let restores: Vec<f64> = small.rounds.iter().map(round_restore_ratio).collect();
        writeln!(
            md,
            "| 8 | {} files of {} B ({} in all): backup | {} | bare `restic backup`: {} | {:.3}{} | — | measured |",
            small.data.files.len(),
            engine::SMALL_FILE_BYTES,
            mib(small.data.bytes),
            secs(m.stowage_backup),
            secs(m.bare_backup),
            median(backups.iter().copied()),
            each_round(&backups),
        )?;
        writeln!(
            md,
            "| 8 | … restore, from the restore helper running to Completed (files verified: {}) | {} | bare `restic restore`: {} | {:.3}{} | — | measured |",
            if m.restored_identically {
                "identical"
            } else {
                "DIFFER"
            },
            secs(m.stowage_restore_after_pod_ready),
            secs(m.bare_restore),
            median(restores.iter().copied()),
            each_round(&restores),
        )?;
        writeln!(
            md,
            "| 8 | … peak RSS of restic: backup / restore (the agent's, the highest of the rounds) | {} / {} | bare: {} / {} | — | — | measured |",
            mb(peak_of(&m.agent_backup_restic, "backup")),
            mb(peak_of(&m.agent_restore_restic, "restore")),
            mb(m.bare_backup_rss_kib),
            mb(m.bare_restore_rss_kib),
        )?;
        writeln!(
            md,
            "| 8 | … the agent's own peak RSS (VmHWM, restic excluded) | {} | — | — | — | measured |",
            mb(m.agent_peak_rss_kib),
        )?;
    }

    let f = &report.footprint;
    writeln!(
        md,
        "| 9 | Agent RSS idle (VmRSS, restic excluded): after its start / after the operations below | {} / {} | — | — | < {AGENT_IDLE_TARGET_MB} MB | {} |",
        mb(f.idle_start_kib),
        mb(f.idle_after_kib),
        verdict(agent_idle_mb(f) < AGENT_IDLE_TARGET_MB),
    )?;
    writeln!(
        md,
        "| 9 | Agent peak RSS (VmHWM, restic excluded) backing up {} volumes ({} in all, {} completed in {}) with {} operations allowed at once; at most {} restic backups ran at once (sampled every {} ms; the agent's VmRSS then: {}) | {} | — | — | < {AGENT_BUSY_TARGET_MB} MB | {} |",
        f.volumes,
        mib(f.bytes),
        f.completed,
        secs(f.backup),
        engine::FOOTPRINT_OPERATIONS,
        f.most_in_flight,
        engine::SAMPLE_EVERY.as_millis(),
        mb(f.sampled_in_flight_kib),
        mb(f.peak_kib),
        busy_verdict(f),
    )?;
    let mut backups: Vec<u64> = f
        .restic
        .iter()
        .filter(|r| r.command == "backup")
        .map(|r| r.peak_rss_kib)
        .collect();
    backups.sort_unstable();
    writeln!(
        md,
        "| 9 | … restic's peak RSS per backup ({} of them, each volume {}) | {} | — | — | — | measured |",
        backups.len(),
        mib(f.bytes / f.volumes.max(1) as u64),
        backups
            .iter()
            .map(|&k| mb(k))
            .collect::<Vec<_>>()
            .join(", "),
    )?;
    Ok(())
}

/// The agent's idle RSS for its target: the larger of after its start and after operations.
fn agent_idle_mb(f: &Footprint) -> f64 {
    megabytes(f.idle_start_kib.max(f.idle_after_kib))
}

/// The verdict of the busy-agent target, which needs the operations to have overlapped.
fn busy_verdict(f: &Footprint) -> String {
    if f.most_in_flight < engine::FOOTPRINT_OPERATIONS {
        format!("**not measured** (at most {} in flight)", f.most_in_flight)
    } else {
        verdict(megabytes(f.peak_kib) < AGENT_BUSY_TARGET_MB).to_string()
    }
}

/// Every target of the run, as a ratio or a size measured in it, met or not.
fn targets(md: &mut String, report: &Report) -> Result<()> {
    let backup = median(report.wrap_rounds.iter().map(round_backup_ratio));
    let restore = median(report.wrap_rounds.iter().map(round_restore_ratio));
    let i = &report.incremental;
    let incremental_time = ratio(i.second.as_secs_f64(), i.bare_second_parent.as_secs_f64());
    let incremental_read = ratio(i.second_read as f64, i.first_read as f64);
    let f = &report.footprint;
    let s = &report.scale;
    let orchestrator_mb = megabytes(s.orchestrator_peak_rss_kib);
    // The baseline's version, as the targets name it.
    let bare = report.versions.first().map_or_else(
        || "restic".to_string(),
        |v| format!("restic {}", v.new.version),
    );
    writeln!(md, "\nTargets in this run:\n")?;
    writeln!(md, "| Target | This run | Result |")?;
    writeln!(md, "|---|---|---|")?;
    let rows = [
        (
            format!("1. Backup wrap overhead ≤ {WRAP_TARGET} of bare {bare}"),
            format!("{backup:.3}"),
            verdict(backup <= WRAP_TARGET).to_string(),
        ),
        (
            format!("1. Restore wrap overhead ≤ {WRAP_TARGET} of bare {bare}"),
            format!("{restore:.3}"),
            verdict(restore <= WRAP_TARGET).to_string(),
        ),
        (
            format!(
                "2. Backup after pod recreate ≤ {INCREMENTAL_TIME_TARGET} of bare {bare} with the right `--parent`: time"
            ),
            format!("{incremental_time:.3}"),
            verdict(incremental_time <= INCREMENTAL_TIME_TARGET).to_string(),
        ),
        (
            format!(
                "2. Backup after pod recreate ≤ {INCREMENTAL_READ_TARGET} of the first backup: bytes read"
            ),
            format!("{incremental_read:.4}"),
            verdict(incremental_read <= INCREMENTAL_READ_TARGET).to_string(),
        ),
        (
            format!("4. {} volumes backed up in < 5 s", s.volumes),
            secs(s.backup),
            verdict(s.backup < Duration::from_secs(5)).to_string(),
        ),
        (
            "4. Orchestrator peak RSS < 150 MB".to_string(),
            format!("{orchestrator_mb:.1} MB"),
            verdict(orchestrator_mb < 150.0).to_string(),
        ),
        (
            format!("9. Agent RSS idle < {AGENT_IDLE_TARGET_MB} MB"),
            format!("{:.1} MB", agent_idle_mb(f)),
            verdict(agent_idle_mb(f) < AGENT_IDLE_TARGET_MB).to_string(),
        ),
        (
            format!(
                "9. Agent RSS with {} operations in flight < {AGENT_BUSY_TARGET_MB} MB",
                engine::FOOTPRINT_OPERATIONS
            ),
            mb(f.peak_kib),
            busy_verdict(f),
        ),
    ];
    for (target, value, result) in rows {
        writeln!(md, "| {target} | {value} | {result} |")?;
    }
    Ok(())
}

fn markdown(options: &Options, report: &Report) -> Result<String> {
    let mut md = String::new();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let data = &report.data;
    let date = command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    writeln!(
        md,
        "Run of {date}: `bench/run --size {} --rounds {} --large-file-size {} --small-files {} --concurrency {} --scale-volumes {} --scale-nodes {}`.\n",
        size_flag(options.size),
        options.rounds.max(1),
        size_flag(options.large_file_size),
        options.small_files,
        options
            .concurrency
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(","),
        options.scale_volumes,
        options.scale_nodes
    )?;
    writeln!(md, "- Machine: {}", machine())?;
    writeln!(
        md,
        "- Versions: {}; {}; stowage {}{} ({profile} build)",
        command_line("restic", &["version"]),
        command_line("rustc", &["--version"]),
        command_line("git", &["rev-parse", "--short", "HEAD"]),
        if command_line(
            "git",
            &[
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ":!*.md"
            ]
        )
        .is_empty()
        {
            ""
        } else {
            " with uncommitted changes"
        },
    )?;
    writeln!(
        md,
        "- Data: {} in {} files ({} large files of {} each, the rest 1–64 KiB), random bytes; \
         every reader finds it in the page cache (warm), local-directory storage location.",
        mib(data.bytes),
        data.files.len(),
        data.large_files,
        mib(data.bytes * 7 / 10 / 4)
    )?;
    let rounds = report.wrap_rounds.len();
    writeln!(
        md,
        "- Benchmarks 1, 5, 6 and 8: {rounds} round(s), each with its own pod, namespace and \
         fresh repositories; benchmark 7: {rounds} change(s) of its file, each backed up again. \
         The table shows medians (for ratios, the median of the rounds' ratios, stowage and its \
         baseline paired within a round) and every round's ratio; benchmark 1's rounds are \
         listed below the table. Benchmarks 2, 3, 4 and 9: one run each, side by side with \
         the baseline."
    )?;
    writeln!(
        md,
        "- Every restic of benchmarks 1, 2 and 6–9, bare or the agent's, runs under GNU time \
         (`/usr/bin/time`), which gives its peak RSS and the list of the agent's restic \
         commands. The bare baseline is restic {} (the machine's); benchmark 6's older one is \
         restic {}.",
        report
            .versions
            .first()
            .map_or("?", |v| v.new.version.as_str()),
        report
            .versions
            .first()
            .map_or("?", |v| v.old.version.as_str()),
    )?;
    writeln!(
        md,
        "- Other work on the machine (CPU time of processes outside this run while a \
         measurement ran, in cores busy on average; the machine has {} cores): limit {:.2}, \
         wrap backups {:.2} (stowage) / {:.2} (bare), wrap restores {:.2} / {:.2}, incremental \
         {:.2}, parallel {}, scale {:.2}, restic versions {:.2}, large file {:.2}, small files \
         {:.2} / {:.2} (backups, stowage / bare) and {:.2} / {:.2} (restores), footprint {:.2}.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        report.limit.other.cores(),
        report.wrap.stowage_backup_other.cores(),
        report.wrap.bare_backup_other.cores(),
        report.wrap.stowage_restore_other.cores(),
        report.wrap.bare_restore_other.cores(),
        report.incremental.other.cores(),
        report
            .parallel
            .iter()
            .map(|p| format!("{:.2}", p.other.cores()))
            .collect::<Vec<_>>()
            .join(" / "),
        report.scale.other.cores(),
        load_of(report.versions.iter().map(|v| v.other)),
        load_of(report.large_file.rounds.iter().map(|r| r.other)),
        load_of(
            report
                .small_files
                .rounds
                .iter()
                .map(|w| w.stowage_backup_other)
        ),
        load_of(
            report
                .small_files
                .rounds
                .iter()
                .map(|w| w.bare_backup_other)
        ),
        load_of(
            report
                .small_files
                .rounds
                .iter()
                .map(|w| w.stowage_restore_other)
        ),
        load_of(
            report
                .small_files
                .rounds
                .iter()
                .map(|w| w.bare_restore_other)
        ),
        report.footprint.other.cores(),
    )?;

    writeln!(
        md,
        "| # | Measure | stowage | Baseline | Ratio | Target | Result |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|")?;
    let w = &report.wrap;
    let backup_ratios: Vec<f64> = report.wrap_rounds.iter().map(round_backup_ratio).collect();
    let backup_ratio = median(backup_ratios.iter().copied());
    writeln!(
        md,
        "| 1 | Backup of one volume (orchestrator → agent → restic) | {} ({}) | bare `restic backup`, fresh repo: {} ({}) | {backup_ratio:.3}{} | ≤ {WRAP_TARGET} | {} |",
        secs(w.stowage_backup),
        rate(data.bytes, w.stowage_backup),
        secs(w.bare_backup),
        rate(data.bytes, w.bare_backup),
        each_round(&backup_ratios),
        verdict(backup_ratio <= WRAP_TARGET)
    )?;
    let restore_ratios: Vec<f64> = report.wrap_rounds.iter().map(round_restore_ratio).collect();
    let restore_ratio = median(restore_ratios.iter().copied());
    writeln!(
        md,
        "| 1 | Restore of one volume, from the restore helper running to Completed (files verified: {}) | {} | bare `restic restore`: {} | {restore_ratio:.3}{} | ≤ {WRAP_TARGET} | {} |",
        if w.restored_identically {
            "identical"
        } else {
            "DIFFER"
        },
        secs(w.stowage_restore_after_pod_ready),
        secs(w.bare_restore),
        each_round(&restore_ratios),
        verdict(restore_ratio <= WRAP_TARGET)
    )?;
    writeln!(
        md,
        "| 1 | Restore, CreateRestore to Completed (includes the emulated pod creation and start) | {} | {} | {:.3} | — | for information |",
        secs(w.stowage_restore),
        secs(w.bare_restore),
        median(report.wrap_rounds.iter().map(|w| ratio(
            w.stowage_restore.as_secs_f64(),
            w.bare_restore.as_secs_f64()
        )))
    )?;
    writeln!(
        md,
        "| 1 | … peak RSS of restic: backup / restore (the agent's, the highest of the rounds) | {} / {} | bare: {} / {} | — | — | measured |",
        mb(peak_of(&w.agent_backup_restic, "backup")),
        mb(peak_of(&w.agent_restore_restic, "restore")),
        mb(w.bare_backup_rss_kib),
        mb(w.bare_restore_rss_kib),
    )?;
    let i = &report.incremental;
    let time_ratio = ratio(i.second.as_secs_f64(), i.bare_second_parent.as_secs_f64());
    let read_ratio = ratio(i.second_read as f64, i.first_read as f64);
    writeln!(
        md,
        "| 2 | Backup after pod recreate (new name and uid, same PVC), {} files ({}) changed: time (the agent ran {}) | {} | bare restic on the new path with `--parent` its first snapshot: {} | {time_ratio:.3} | ≤ {INCREMENTAL_TIME_TARGET} | {} |",
        i.files_changed,
        mib(i.bytes_changed),
        commands(&i.second_restic_runs),
        secs(i.second),
        secs(i.bare_second_parent),
        verdict(time_ratio <= INCREMENTAL_TIME_TARGET)
    )?;
    writeln!(
        md,
        "| 2 | … time against stowage's first backup | {} | first backup: {} | {:.3} | — | for information |",
        secs(i.second),
        secs(i.first),
        ratio(i.second.as_secs_f64(), i.first.as_secs_f64()),
    )?;
    writeln!(
        md,
        "| 2 | … bytes read by the agent and its restic (`rchar`); parent = first snapshot: {}, {} files unmodified | {} | first backup: {} | {read_ratio:.3} | ≤ {INCREMENTAL_READ_TARGET} | {} |",
        if i.second_parent_is_first {
            "yes"
        } else {
            "NO"
        },
        i.second_files_unmodified,
        mib(i.second_read),
        mib(i.first_read),
        verdict(read_ratio <= INCREMENTAL_READ_TARGET)
    )?;
    writeln!(
        md,
        "| 2 | Velero's pod-name association: bare restic on the new path, no `--parent`: time | {} | its first backup: {} | {:.3} | — | for comparison |",
        secs(i.bare_second_no_parent),
        secs(i.bare_first),
        ratio(
            i.bare_second_no_parent.as_secs_f64(),
            i.bare_first.as_secs_f64()
        )
    )?;
    writeln!(
        md,
        "| 2 | … bytes read (`rchar`) | {} | its first backup: {} | {:.3} | — | for comparison |",
        mib(i.bare_second_read),
        mib(i.bare_first_read),
        ratio(i.bare_second_read as f64, i.bare_first_read as f64)
    )?;
    writeln!(
        md,
        "| 2 | … bare restic with `--parent`: bytes read (`rchar`) | {} | its first backup: {} | {:.3} | — | for comparison |",
        mib(i.bare_second_parent_read),
        mib(i.bare_first_read),
        ratio(i.bare_second_parent_read as f64, i.bare_first_read as f64)
    )?;
    writeln!(
        md,
        "| 2 | stowage's second backup against Velero's | {} | {} | {:.3} | — | for comparison |",
        secs(i.second),
        secs(i.bare_second_no_parent),
        ratio(
            i.second.as_secs_f64(),
            i.bare_second_no_parent.as_secs_f64()
        )
    )?;
    let serial = report.parallel.iter().find(|p| p.concurrency == 1);
    for p in &report.parallel {
        let speedup = serial
            .map(|s| {
                format!(
                    "{:.2}× of concurrency 1",
                    ratio(s.wall.as_secs_f64(), p.wall.as_secs_f64())
                )
            })
            .unwrap_or_else(|| "—".to_string());
        writeln!(
            md,
            "| 3 | {} volumes ({} in all, {} completed) on one node, agent concurrency {}: wall time, throughput (at most {} running at once) | {}, {} | concurrency 1 | {speedup} | — | measured |",
            p.volumes,
            mib(p.bytes),
            p.completed,
            p.concurrency,
            p.most_running,
            secs(p.wall),
            rate(p.bytes, p.wall),
        )?;
    }
    let s = &report.scale;
    let rss_mb = s.orchestrator_peak_rss_kib as f64 * 1024.0 / 1e6;
    writeln!(
        md,
        "| 4 | {} annotated pod volumes on {} nodes, instant agents (benchmark double): CreateBackup to Completed ({} completed) | {} | — | — | < 5 s | {} |",
        s.volumes,
        s.nodes,
        s.completed,
        secs(s.backup),
        verdict(s.backup < Duration::from_secs(5))
    )?;
    writeln!(
        md,
        "| 4 | … orchestrator peak RSS (VmHWM) | {rss_mb:.1} MB | — | — | < 150 MB | {} |",
        verdict(rss_mb < 150.0)
    )?;
    writeln!(
        md,
        "| 4 | … BackupVolume RPCs per second | {:.0}/s | — | — | — | measured |",
        s.completed as f64 / s.backup.as_secs_f64().max(1e-9)
    )?;
    writeln!(
        md,
        "| 4 | … CPU time during the backup: orchestrator / Kubernetes API emulator / instant agents | {} / {} / {} | — | — | — | measured |",
        secs(s.orchestrator_cpu),
        secs(s.emulator_cpu),
        secs(s.agent_cpu)
    )?;
    writeln!(
        md,
        "| 5 | The limit: `cat > /dev/null` | {} | — | — | — | measured |",
        rate(data.bytes, report.limit.cat)
    )?;
    writeln!(
        md,
        "| 5 | The limit: `sha256sum` | {} | — | — | — | measured |",
        rate(data.bytes, report.limit.sha256sum)
    )?;
    writeln!(
        md,
        "| 5 | Backup throughput against `sha256sum` (stowage / bare restic) | {:.2} | {:.2} | — | — | measured |",
        ratio(
            report.limit.sha256sum.as_secs_f64(),
            w.stowage_backup.as_secs_f64()
        ),
        ratio(
            report.limit.sha256sum.as_secs_f64(),
            w.bare_backup.as_secs_f64()
        ),
    )?;

    engine_rows(&mut md, report)?;

    if report.wrap_rounds.len() > 1 {
        writeln!(
            md,
            "\nBenchmark 1 round by round (other work: cores busy outside this run, stowage / bare):\n"
        )?;
        writeln!(
            md,
            "| Round | stowage backup | bare backup | Ratio | Other work | stowage restore | bare restore | Ratio | Other work |"
        )?;
        writeln!(md, "|---|---|---|---|---|---|---|---|---|")?;
        for (n, r) in report.wrap_rounds.iter().enumerate() {
            writeln!(
                md,
                "| {} | {} | {} | {:.3} | {:.2} / {:.2} | {} | {} | {:.3} | {:.2} / {:.2} |",
                n + 1,
                secs(r.stowage_backup),
                secs(r.bare_backup),
                round_backup_ratio(r),
                r.stowage_backup_other.cores(),
                r.bare_backup_other.cores(),
                secs(r.stowage_restore_after_pod_ready),
                secs(r.bare_restore),
                round_restore_ratio(r),
                r.stowage_restore_other.cores(),
                r.bare_restore_other.cores(),
            )?;
        }
    }

    writeln!(md, "\nWhere the time goes (measured in this run):\n")?;
    writeln!(
        md,
        "- Backup of one volume (medians over the rounds): {} in all, of which the agent's restic commands ({}) took {}, against bare `restic backup`'s {}; the other {} are the orchestrator's and the agent's own. By the orchestrator's timestamps: {} from CreateBackup until the agent was called (discovery, repository and lease calls, the first PodVolumeBackup mirror; when the repo-manager verifies the repository, at most once per `--repository-verify-interval`, its EnsureRepository runs `restic cat config` and `restic list locks`, which take {} and {} on the bare repository), {} in the agent's call (its restic commands and the rest of the agent), {} from the agent's result until the driver saw Completed (the last mirrors, the backup record in the object store, the watch).",
        secs(w.stowage_backup),
        report
            .wrap_rounds
            .first()
            .map_or_else(|| "none".to_string(), |r| commands(&r.agent_backup_restic)),
        secs(w.stowage_backup_restic),
        secs(w.bare_backup),
        secs(w.stowage_backup.saturating_sub(w.stowage_backup_restic)),
        secs(w.stowage_backup_split.before_agent),
        secs(w.restic_cat_config),
        secs(w.restic_list_locks),
        secs(w.stowage_backup_split.agent),
        secs(w.stowage_backup_split.after_agent),
    )?;
    writeln!(
        md,
        "- Backup after pod recreate: {} in all, of which the agent's restic commands ({}) took {} (with the first snapshot as parent it reads only the changed files, but still starts, loads the repository index and writes a snapshot: a fixed cost that does not shrink with the data).",
        secs(i.second),
        commands(&i.second_restic_runs),
        secs(i.second_restic)
    )?;
    if let Some(round) = report.large_file.rounds.first() {
        let restic: f64 = round.stowage_restic.iter().map(|r| r.seconds).sum();
        writeln!(
            md,
            "- Large-file change (first round): stowage's backup took {}; the agent ran {} ({:.2} s of wall time summed over them, by GNU time); bare restic with `--parent` took {}. restic reads a changed file whole, in one thread, parent or not: stowage read {}, bare restic {}, Velero's way {}.",
            secs(round.stowage),
            commands(&round.stowage_restic),
            restic,
            secs(round.bare_parent),
            mib(round.stowage_read),
            mib(round.bare_parent_read),
            mib(round.velero_read),
        )?;
    }
    if let Some(round) = report.small_files.rounds.first() {
        let seconds = |runs: &[ResticRun]| runs.iter().map(|r| r.seconds).sum::<f64>();
        writeln!(
            md,
            "- Many small files (first round): stowage's backup took {}; the agent ran {} ({:.2} s of wall time summed over them, by GNU time), against bare restic's {}. Its restore took {} from the restore helper running; the agent ran {} ({:.2} s summed: commands that run side by side count twice), against bare restic's {}.",
            secs(round.stowage_backup),
            commands(&round.agent_backup_restic),
            seconds(&round.agent_backup_restic),
            secs(round.bare_backup),
            secs(round.stowage_restore_after_pod_ready),
            commands(&round.agent_restore_restic),
            seconds(&round.agent_restore_restic),
            secs(round.bare_restore),
        )?;
    }
    writeln!(
        md,
        "- Orchestration at scale: the backup took {} wall; the orchestrator used {} of CPU, the Python Kubernetes API emulator {}, the instant agents {}. {}",
        secs(s.backup),
        secs(s.orchestrator_cpu),
        secs(s.emulator_cpu),
        secs(s.agent_cpu),
        if s.emulator_cpu > s.orchestrator_cpu {
            "The emulator, not stowage, is the bottleneck here: the orchestrator's own share is its CPU time."
        } else {
            "The orchestrator's own work dominates."
        }
    )?;
    writeln!(
        md,
        "- Seeding the {} pods into the emulator took {} (not counted).",
        s.volumes.div_ceil(2),
        secs(s.seed)
    )?;
    targets(&mut md, report)?;
    Ok(md)
}

/// Puts `table` between the markers of `path`, keeping everything outside them.
fn write_between_markers(path: &Path, table: &str) -> Result<()> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{BEGIN}\n{table}{END}");
    let text = match (existing.find(BEGIN), existing.find(END)) {
        (Some(begin), Some(end)) if begin < end => format!(
            "{}{block}{}",
            &existing[..begin],
            &existing[end + END.len()..]
        ),
        _ if existing.trim().is_empty() => format!("# Benchmarks\n\n{block}\n"),
        _ => format!("{}\n{block}\n", existing.trim_end()),
    };
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_keep_the_notes_around_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("B.md");
        std::fs::write(&path, format!("# T\nintro\n{BEGIN}\nold\n{END}\nnotes\n")).unwrap();
        write_between_markers(&path, "new\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("# T\nintro\n{BEGIN}\nnew\n{END}\nnotes\n")
        );
    }

    #[test]
    fn the_restic_log_gives_each_whole_line_once() {
        let dir = tempfile::tempdir().unwrap();
        let (wrapper, mut log) = ResticLog::wrapper(dir.path()).unwrap();
        assert!(wrapper.is_file());
        assert_eq!(log.take().unwrap(), Vec::new());
        std::fs::write(
            &log.path,
            "snapshots 51200 0.71\nCommand exited with non-zero status 1\nbackup 102400 4.5",
        )
        .unwrap();
        // The backup's line is still being written: only the snapshots line is whole.
        let first = log.take().unwrap();
        assert_eq!(
            first,
            vec![ResticRun {
                command: "snapshots".into(),
                peak_rss_kib: 51200,
                seconds: 0.71
            }]
        );
        let mut text = std::fs::read_to_string(&log.path).unwrap();
        text.push('\n');
        std::fs::write(&log.path, text).unwrap();
        let second = log.take().unwrap();
        assert_eq!(commands(&second), "`restic backup`");
        assert_eq!(peak_of(&second, "backup"), 102400);
        assert_eq!(peak_of(&second, "restore"), 0);
        assert!(log.take().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_wrapper_runs_restic_under_gnu_time_and_logs_it() {
        let dir = tempfile::tempdir().unwrap();
        let (wrapper, mut log) = ResticLog::wrapper(dir.path()).unwrap();
        let status = tokio::process::Command::new(&wrapper)
            .arg("version")
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let runs = log.take().unwrap();
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert_eq!(runs[0].command, "version");
        assert!(runs[0].peak_rss_kib > 0);
    }

    #[test]
    fn snapshot_ids_match_by_their_short_form() {
        let full = "313bc4cf374b1eb668b9d0e9861e11b10c4fe84b256fe592e0f9d8b5068c5482";
        assert!(same_snapshot("313bc4cf", full));
        assert!(same_snapshot(full, "313bc4cf"));
        assert!(same_snapshot(full, full));
        assert!(!same_snapshot("bcae2cbb", full));
        assert!(!same_snapshot("", full));
        assert!(!same_snapshot("313b", full));
    }

    #[test]
    fn median_is_the_middle_value_or_the_mean_of_the_two_middle_ones() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median([7.0]), 7.0);
        assert_eq!(median([]), 0.0);
    }

    #[test]
    fn process_ticks_reads_the_parent_and_cpu_of_this_process() {
        // Burn a little CPU so the counters have something to show.
        let mut x = 0u64;
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(31).wrapping_add(1);
        }
        assert_ne!(x, 1);
        let (ppid, ticks) = process_ticks(&std::process::id().to_string()).unwrap();
        assert_eq!(ppid, std::os::unix::process::parent_id());
        assert!(ticks > 0);
        assert!(machine_busy_ticks().unwrap() >= ticks);
        let load = LoadMeter::start().stop();
        assert!(load.cores() >= 0.0);
    }

    #[test]
    fn generated_data_has_the_asked_size_and_mix() {
        let dir = tempfile::tempdir().unwrap();
        let data = generate(dir.path(), 1 << 20, 7).unwrap();
        assert_eq!(data.bytes, 1 << 20);
        assert_eq!(data.large_files, 4);
        assert!(data.files.len() > 10, "{}", data.files.len());
        let on_disk: u64 = data
            .files
            .iter()
            .map(|f| std::fs::metadata(dir.path().join(f)).unwrap().len())
            .sum();
        assert_eq!(on_disk, data.bytes);
    }
}
