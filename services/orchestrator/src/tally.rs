//! Counting a backup's or a restore's volumes by outcome and summing their progress: both
//! statuses report the same totals, so they are computed in one place.

use stowage_metrics::state::phase_label;
use stowage_proto::v1::{BackupPhase, Progress, RestorePhase, VolumePhase};

/// Volume counts and summed progress of one backup or restore.
#[derive(Debug, Default, PartialEq)]
pub struct VolumeTally {
    pub total: u32,
    pub completed: u32,
    /// Failed or cancelled: the volumes that did not end with data.
    pub failed: u32,
    /// Bytes and files summed; elapsed time is the longest volume's, as they run in parallel.
    pub progress: Progress,
}

/// Tallies volumes given as `(phase, progress)`.
pub fn tally<'a>(volumes: impl IntoIterator<Item = (i32, Option<&'a Progress>)>) -> VolumeTally {
    let mut tally = VolumeTally::default();
    for (phase, progress) in volumes {
        tally.total += 1;
        if phase == VolumePhase::Completed as i32 {
            tally.completed += 1;
        } else if phase == VolumePhase::Failed as i32 || phase == VolumePhase::Cancelled as i32 {
            tally.failed += 1;
        }
        if let Some(progress) = progress {
            tally.progress.bytes_done += progress.bytes_done;
            tally.progress.bytes_total += progress.bytes_total;
            tally.progress.files_done += progress.files_done;
            tally.progress.files_total += progress.files_total;
            tally.progress.seconds_elapsed =
                tally.progress.seconds_elapsed.max(progress.seconds_elapsed);
        }
    }
    tally
}

/// How a finished backup or restore ended, short of being cancelled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Ending {
    Completed,
    PartiallyFailed,
    Failed,
}

/// The ending of a run whose volumes counted `completed` and `failed`; `run_failed` when the
/// run itself failed (discovery, repository, timeout, a restart), which rules out Completed.
/// Nothing restored or backed up is a failure, whatever else went wrong.
pub fn ending(completed: u32, failed: u32, run_failed: bool) -> Ending {
    if completed == 0 && (run_failed || failed > 0) {
        Ending::Failed
    } else if failed == 0 && !run_failed {
        Ending::Completed
    } else {
        Ending::PartiallyFailed
    }
}

impl From<Ending> for BackupPhase {
    fn from(ending: Ending) -> BackupPhase {
        match ending {
            Ending::Completed => BackupPhase::Completed,
            Ending::PartiallyFailed => BackupPhase::PartiallyFailed,
            Ending::Failed => BackupPhase::Failed,
        }
    }
}

impl From<Ending> for RestorePhase {
    fn from(ending: Ending) -> RestorePhase {
        match ending {
            Ending::Completed => RestorePhase::Completed,
            Ending::PartiallyFailed => RestorePhase::PartiallyFailed,
            Ending::Failed => RestorePhase::Failed,
        }
    }
}

/// A backup's phase as people read it (`PartiallyFailed`, not `BACKUP_PHASE_PARTIALLY_FAILED`),
/// for log lines and error messages: the word the CLI prints and the metrics label.
pub fn backup_phase_word(phase: i32) -> String {
    let phase = BackupPhase::try_from(phase).unwrap_or_default();
    phase_label(phase.as_str_name(), "BACKUP_PHASE_")
}

/// [`backup_phase_word`] for a restore's phase.
pub fn restore_phase_word(phase: i32) -> String {
    let phase = RestorePhase::try_from(phase).unwrap_or_default();
    phase_label(phase.as_str_name(), "RESTORE_PHASE_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_read_as_words_in_logs() {
        assert_eq!(
            backup_phase_word(BackupPhase::PartiallyFailed as i32),
            "PartiallyFailed"
        );
        assert_eq!(
            backup_phase_word(BackupPhase::Completed as i32),
            "Completed"
        );
        assert_eq!(
            restore_phase_word(RestorePhase::InProgress as i32),
            "InProgress"
        );
        assert_eq!(restore_phase_word(RestorePhase::Failed as i32), "Failed");
    }

    fn progress(bytes: u64, seconds: f64) -> Progress {
        Progress {
            bytes_done: bytes,
            bytes_total: bytes * 2,
            files_done: 1,
            files_total: 2,
            seconds_elapsed: seconds,
        }
    }

    #[test]
    fn cancelled_counts_as_failed_and_running_as_neither() {
        let (a, b) = (progress(10, 3.0), progress(5, 7.5));
        let counted = tally([
            (VolumePhase::Completed as i32, Some(&a)),
            (VolumePhase::Cancelled as i32, None),
            (VolumePhase::Failed as i32, None),
            (VolumePhase::InProgress as i32, Some(&b)),
        ]);
        assert_eq!(counted.total, 4);
        assert_eq!(counted.completed, 1);
        assert_eq!(counted.failed, 2);
        assert_eq!(counted.progress.bytes_done, 15);
        assert_eq!(counted.progress.bytes_total, 30);
        assert_eq!(counted.progress.files_total, 4);
        assert_eq!(counted.progress.seconds_elapsed, 7.5);
    }

    #[test]
    fn no_volumes_tally_to_zero() {
        assert_eq!(tally([]), VolumeTally::default());
    }

    #[test]
    fn a_failed_run_is_never_completed_and_nothing_done_is_failed() {
        assert_eq!(
            ending(0, 0, false),
            Ending::Completed,
            "no volumes, no error"
        );
        assert_eq!(ending(2, 0, false), Ending::Completed);
        assert_eq!(ending(1, 1, false), Ending::PartiallyFailed);
        assert_eq!(ending(0, 2, false), Ending::Failed);
        assert_eq!(ending(0, 0, true), Ending::Failed);
        assert_eq!(ending(2, 0, true), Ending::PartiallyFailed);
        assert_eq!(ending(1, 1, true), Ending::PartiallyFailed);
    }
}
