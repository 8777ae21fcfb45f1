//! The run loop backups and restores share: one task per volume, each waiting for what must
//! come first (its pod, for a restore), then for a slot overall and on its node, then running
//! on the node's agent, under the run's cancel token, its wall-clock deadline and the stall
//! timeout. Every task is joined; a panicking volume ends Failed with the panic's message.
//! What a volume *is* (backup or restore, which agent call) is the [`VolumeWork`]'s business.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use stowage_proto::v1::Progress;
use tokio::{
    sync::{Notify, Semaphore, watch},
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::{Error, Result};

/// Why volumes still running at shutdown failed.
pub const SHUT_DOWN: &str = "the orchestrator shut down";

/// How many volumes run at once, and when a volume that stopped moving is given up.
#[derive(Debug, Clone)]
pub struct RunLimits {
    pub max_parallel_volumes: usize,
    pub max_parallel_per_node: usize,
    /// A running volume whose bytes and files done have not moved for this long fails.
    pub stall_timeout: Duration,
}

/// How one run is stopped: asked to (its token), by shutdown (the token's parent), or by its
/// wall-clock deadline.
#[derive(Debug, Clone)]
pub struct RunControl {
    pub cancel: CancellationToken,
    pub shutdown: CancellationToken,
    pub deadline: Instant,
    /// The timeout the deadline came from, for messages.
    pub timeout: Duration,
    /// Woken each time a volume ends, so the run's record is written as it progresses.
    pub volume_ended: Arc<Notify>,
}

impl RunControl {
    /// The control of a run stopped by `cancel` (a child of `shutdown`) or after `timeout`.
    pub fn new(cancel: CancellationToken, shutdown: CancellationToken, timeout: Duration) -> Self {
        RunControl {
            cancel,
            shutdown,
            deadline: Instant::now() + timeout,
            timeout,
            volume_ended: Arc::default(),
        }
    }

    /// Whether the run was cancelled by someone asking, not by the orchestrator shutting down.
    pub fn cancel_requested(&self) -> bool {
        self.cancel.is_cancelled() && !self.shutdown.is_cancelled()
    }

    /// How a volume stopped by this run's token ends: Cancelled when someone asked, Failed
    /// when the orchestrator shuts down.
    pub fn stopped(&self) -> VolumeOutcome {
        if self.shutdown.is_cancelled() {
            VolumeOutcome::Failed(SHUT_DOWN.to_string())
        } else {
            VolumeOutcome::Cancelled
        }
    }
}

/// How one volume ended.
#[derive(Debug, Clone, PartialEq)]
pub enum VolumeOutcome {
    Completed,
    Failed(String),
    Cancelled,
}

/// What the agent last said of a running volume, as the stall watch reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Beat {
    /// Waiting in the agent's own queue: restic does not run, so nothing can move.
    queued: bool,
    bytes_done: u64,
    bytes_total: u64,
    files_done: u64,
}

/// Handed to [`VolumeWork::run`]: what the agent reports goes through it to the stall watch.
pub struct Reporter {
    beat: watch::Sender<Beat>,
}

impl Reporter {
    /// The agent queued the operation behind others of its own.
    pub fn queued(&self) {
        self.beat.send_modify(|beat| beat.queued = true);
    }

    /// restic reported `progress`.
    pub fn progress(&self, progress: &Progress) {
        self.beat.send_modify(|beat| {
            beat.queued = false;
            beat.bytes_done = progress.bytes_done;
            beat.bytes_total = progress.bytes_total;
            beat.files_done = progress.files_done;
        });
    }
}

/// One kind of run's volumes, indexed as in its status.
#[tonic::async_trait]
pub trait VolumeWork: Send + Sync + 'static {
    /// The span a volume's task runs in.
    fn span(&self, index: usize) -> tracing::Span;
    /// What must happen before the volume may take a slot (a restore waits for its pod to run
    /// its restore helper); returns the node the volume runs on.
    async fn prepare(&self, index: usize) -> Result<String>;
    /// Runs the volume on the node's agent, reporting what the agent says to `reporter`; Ok
    /// once the agent reported its result.
    async fn run(&self, index: usize, node: &str, reporter: &Reporter) -> Result<()>;
    /// Tells the agent to stop a volume whose run was given up (cancel, timeout, stall), so
    /// restic is killed and not only its stream dropped.
    async fn stop(&self, index: usize, node: &str);
    /// Records how the volume ended (called once per volume, panics included).
    fn finish(&self, index: usize, outcome: VolumeOutcome);
    /// Whether a volume still running when the orchestrator shuts down is left running on its
    /// agent for the next leader to re-attach (true), or stopped there (false).
    fn hands_over_on_shutdown(&self) -> bool {
        false
    }
}

/// Slots per node, made as nodes are first seen (a restore learns a volume's node late).
struct NodeSlots {
    per_node: usize,
    nodes: Mutex<BTreeMap<String, Arc<Semaphore>>>,
}

impl NodeSlots {
    fn of(&self, node: &str) -> Arc<Semaphore> {
        self.nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(node.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_node.max(1))))
            .clone()
    }
}

/// The slots one run's volumes share: overall and per node. A run whose volumes are started
/// in groups (a backup's, pod by pod around the pod's hooks) hands every group the same slots,
/// so the limits hold across the groups.
pub struct Slots {
    overall: Arc<Semaphore>,
    nodes: Arc<NodeSlots>,
    stall_timeout: Duration,
}

impl Slots {
    pub fn new(limits: &RunLimits) -> Slots {
        Slots {
            overall: Arc::new(Semaphore::new(limits.max_parallel_volumes.max(1))),
            nodes: Arc::new(NodeSlots {
                per_node: limits.max_parallel_per_node,
                nodes: Mutex::default(),
            }),
            stall_timeout: limits.stall_timeout,
        }
    }
}

/// Runs the volumes `indexes` of `work` to their ends and returns when every one has ended
/// and been recorded through [`VolumeWork::finish`].
// Backups and restores run their volumes in groups (pod by pod, around the pods' hooks)
// through `run_volumes_in`; a taken-over backup and a data-only restore have no groups.
pub async fn run_volumes<W: VolumeWork>(
    work: Arc<W>,
    indexes: Vec<usize>,
    limits: &RunLimits,
    control: &RunControl,
) {
    run_volumes_in(work, indexes, &Slots::new(limits), control).await;
}

/// [`run_volumes`] within `slots` that other groups of the same run share.
pub async fn run_volumes_in<W: VolumeWork>(
    work: Arc<W>,
    indexes: Vec<usize>,
    slots: &Slots,
    control: &RunControl,
) {
    let mut tasks = JoinSet::new();
    let mut by_task = HashMap::new();
    for index in indexes {
        let span = work.span(index);
        let handle = tasks.spawn(
            drive(
                work.clone(),
                index,
                slots.overall.clone(),
                slots.nodes.clone(),
                slots.stall_timeout,
                control.clone(),
            )
            .instrument(span),
        );
        by_task.insert(handle.id(), index);
    }
    while let Some(joined) = tasks.join_next_with_id().await {
        let (id, outcome) = match joined {
            Ok((id, outcome)) => (id, outcome),
            Err(error) => {
                let id = error.id();
                let message = if error.is_panic() {
                    format!(
                        "the volume's task panicked: {}",
                        panic_message(error.into_panic().as_ref())
                    )
                } else {
                    format!("the volume's task ended abnormally: {error}")
                };
                (id, VolumeOutcome::Failed(message))
            }
        };
        if let Some(index) = by_task.remove(&id) {
            work.finish(index, outcome);
            control.volume_ended.notify_one();
        }
    }
}

/// Runs `body` and meanwhile writes the run's record through `write` once volumes have ended,
/// at most once per `every` (volumes ending together are one write), so an orchestrator
/// restarted mid-run finds the volumes that ended as they ended. Returns `body`'s output once
/// a write in flight has finished too.
pub async fn while_writing<T, F, Fut>(
    body: impl Future<Output = T>,
    volume_ended: &Notify,
    every: Duration,
    write: F,
) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    let done = CancellationToken::new();
    let writer = async {
        loop {
            tokio::select! {
                () = volume_ended.notified() => {}
                () = done.cancelled() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = done.cancelled() => return,
            }
            write().await;
        }
    };
    let body = async {
        let output = body.await;
        done.cancel();
        output
    };
    let (output, ()) = tokio::join!(body, writer);
    output
}

/// The text of a panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_string()
    }
}

async fn drive<W: VolumeWork>(
    work: Arc<W>,
    index: usize,
    overall: Arc<Semaphore>,
    nodes: Arc<NodeSlots>,
    stall_timeout: Duration,
    control: RunControl,
) -> VolumeOutcome {
    let stopped = RunControl::stopped;
    if control.cancel.is_cancelled() {
        return stopped(&control);
    }
    let before_start = || {
        VolumeOutcome::Failed(format!(
            "{} before it started",
            Error::TimedOut {
                after: control.timeout
            }
        ))
    };
    // Biased, stop first: a volume cancelled while it waits must not start because its slot
    // came free in the same instant.
    let node = tokio::select! {
        biased;
        () = control.cancel.cancelled() => return stopped(&control),
        () = tokio::time::sleep_until(control.deadline) => return before_start(),
        node = work.prepare(index) => match node {
            Ok(node) => node,
            Err(error) => return VolumeOutcome::Failed(error.to_string()),
        },
    };
    // Both slots, overall first: a node's slot is not held while waiting for a global one.
    let node_slots = nodes.of(&node);
    let permits = async {
        let overall = overall.acquire_owned().await;
        let node = node_slots.acquire_owned().await;
        (overall, node)
    };
    let _permits = tokio::select! {
        biased;
        () = control.cancel.cancelled() => return stopped(&control),
        () = tokio::time::sleep_until(control.deadline) => return before_start(),
        permits = permits => permits,
    };
    let (sender, mut beats) = watch::channel(Beat::default());
    let reporter = Reporter { beat: sender };
    let outcome = {
        let run = work.run(index, &node, &reporter);
        tokio::pin!(run);
        let mut last = Beat::default();
        let mut moved_at = Instant::now();
        loop {
            tokio::select! {
                biased;
                result = &mut run => break match result {
                    Ok(()) => VolumeOutcome::Completed,
                    Err(error) => VolumeOutcome::Failed(error.to_string()),
                },
                () = control.cancel.cancelled() => break stopped(&control),
                () = tokio::time::sleep_until(control.deadline) => {
                    break VolumeOutcome::Failed(Error::TimedOut { after: control.timeout }.to_string());
                }
                changed = beats.changed() => {
                    if changed.is_ok() {
                        let beat = *beats.borrow_and_update();
                        // Only work done counts: a total that grows while nothing is done
                        // is restic still scanning, not progress.
                        if beat.queued != last.queued
                            || beat.bytes_done != last.bytes_done
                            || beat.files_done != last.files_done
                        {
                            moved_at = Instant::now();
                        }
                        last = beat;
                    }
                }
                () = tokio::time::sleep_until(moved_at + stall_timeout), if !last.queued => {
                    break VolumeOutcome::Failed(
                        Error::Stalled {
                            idle: stall_timeout,
                            last: last_progress(&last),
                        }
                        .to_string(),
                    );
                }
            }
        }
    };
    let handed_over = control.shutdown.is_cancelled() && work.hands_over_on_shutdown();
    if outcome != VolumeOutcome::Completed && !handed_over {
        // The stream is dropped by now; the agent is told to kill restic too.
        work.stop(index, &node).await;
    }
    outcome
}

/// `1.2 GiB of 3.4 GiB`, or `1.2 GiB, 340 files` when no total is known.
fn last_progress(beat: &Beat) -> String {
    if beat.bytes_total > 0 {
        format!(
            "{} of {}",
            human_bytes(beat.bytes_done),
            human_bytes(beat.bytes_total)
        )
    } else {
        format!(
            "{}, {} files",
            human_bytes(beat.bytes_done),
            beat.files_done
        )
    }
}

/// Bytes in binary units with one decimal, as the CLI prints them (`512 B`, `1.2 GiB`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A duration as Go prints it, which is how restic and Velero users read timeouts: `10m0s`,
/// `1h0m0s`, `45s`, `1.5s`, `250ms`.
pub fn go_duration(duration: Duration) -> String {
    let total = duration.as_secs();
    let nanos = duration.subsec_nanos();
    if total == 0 {
        return match nanos {
            0 => "0s".to_string(),
            n if n % 1_000_000 == 0 => format!("{}ms", n / 1_000_000),
            n => format!("{}s", trim_fraction(n)),
        };
    }
    let (hours, minutes, seconds) = (total / 3600, total / 60 % 60, total % 60);
    let seconds = if nanos == 0 {
        format!("{seconds}s")
    } else {
        format!(
            "{seconds}.{}s",
            trim_fraction(nanos).trim_start_matches("0.")
        )
    };
    match (hours, minutes) {
        (0, 0) => seconds,
        (0, minutes) => format!("{minutes}m{seconds}"),
        (hours, minutes) => format!("{hours}h{minutes}m{seconds}"),
    }
}

/// `0.25` for 250,000,000 ns: the fraction of a second without trailing zeros.
fn trim_fraction(nanos: u32) -> String {
    let text = format!("0.{nanos:09}");
    text.trim_end_matches('0').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_go_prints_them() {
        assert_eq!(go_duration(Duration::from_secs(600)), "10m0s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_secs(3725)), "1h2m5s");
        assert_eq!(go_duration(Duration::from_secs(45)), "45s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(go_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn sizes_read_as_the_cli_prints_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1288490189), "1.2 GiB");
        assert_eq!(
            last_progress(&Beat {
                queued: false,
                bytes_done: 1288490189,
                bytes_total: 3650722202,
                files_done: 3,
            }),
            "1.2 GiB of 3.4 GiB"
        );
        assert_eq!(
            last_progress(&Beat {
                queued: false,
                bytes_done: 1288490189,
                bytes_total: 0,
                files_done: 340,
            }),
            "1.2 GiB, 340 files"
        );
    }

    #[test]
    fn the_stall_message_names_the_idle_time_and_the_last_progress() {
        let error = Error::Stalled {
            idle: Duration::from_secs(600),
            last: "1.2 GiB of 3.4 GiB".into(),
        };
        assert_eq!(
            error.to_string(),
            "stalled: no progress for 10m0s (last: 1.2 GiB of 3.4 GiB)"
        );
    }
}
