//! `--wait`: following a backup or restore until it ends. One loop serves both: it reads the
//! Watch stream, falls back to polling Get when the server cannot stream, re-reads the state
//! when a stream ends early, and stops on Ctrl-C/SIGTERM (the operation goes on in the server).

use std::{error::Error as _, time::Duration};

use stowage_proto::v1::{self, BackupPhase, RestorePhase};
use tokio_util::sync::CancellationToken;

use crate::{
    error::{Call, CliError, root_cause},
    session::{self, Session},
    view,
    watch::{Display, Snapshot},
};

/// How long to wait before asking again when the server cannot stream, or a stream ended
/// before the operation did.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The operation being followed, as last seen.
#[derive(Debug, Clone)]
pub enum Followed {
    Backup(v1::Backup),
    Restore(v1::Restore),
}

impl Followed {
    fn kind(&self) -> &'static str {
        match self {
            Followed::Backup(_) => "backup",
            Followed::Restore(_) => "restore",
        }
    }

    fn name(&self) -> &str {
        match self {
            Followed::Backup(backup) => &backup.name,
            Followed::Restore(restore) => &restore.name,
        }
    }

    fn snapshot(&self) -> Snapshot {
        let (phase, status, volumes) = match self {
            Followed::Backup(backup) => {
                let status = backup.status.clone().unwrap_or_default();
                let volumes: Vec<(String, view::ProgressView)> = status
                    .volumes
                    .iter()
                    .map(|v| (view::volume_phase(v.phase), (&v.progress).into()))
                    .collect();
                (
                    view::backup_phase(status.phase),
                    (
                        status.volumes_total,
                        status.volumes_completed,
                        status.volumes_failed,
                        status.progress.unwrap_or_default(),
                    ),
                    volumes,
                )
            }
            Followed::Restore(restore) => {
                let status = restore.status.clone().unwrap_or_default();
                let volumes: Vec<(String, view::ProgressView)> = status
                    .volumes
                    .iter()
                    .map(|v| (view::volume_phase(v.phase), (&v.progress).into()))
                    .collect();
                (
                    view::restore_phase(status.phase),
                    (
                        status.volumes_total,
                        status.volumes_completed,
                        status.volumes_failed,
                        status.progress.unwrap_or_default(),
                    ),
                    volumes,
                )
            }
        };
        let (volumes_total, volumes_completed, volumes_failed, progress) = status;
        let known = view::TotalsKnown::of(
            self.ended(),
            volumes
                .iter()
                .map(|(phase, progress)| (phase.as_str(), progress)),
        );
        Snapshot {
            kind: self.kind(),
            name: self.name().to_string(),
            phase,
            volumes_total,
            volumes_completed,
            volumes_failed,
            bytes_done: progress.bytes_done,
            bytes_total: progress.bytes_total,
            bytes_total_known: known.bytes,
        }
    }

    /// Whether the operation reached a phase it does not leave.
    pub fn ended(&self) -> bool {
        match self {
            Followed::Backup(backup) => matches!(
                backup
                    .status
                    .as_ref()
                    .and_then(|status| BackupPhase::try_from(status.phase).ok()),
                Some(
                    BackupPhase::Completed
                        | BackupPhase::PartiallyFailed
                        | BackupPhase::Failed
                        | BackupPhase::Cancelled
                        | BackupPhase::Deleting
                )
            ),
            Followed::Restore(restore) => matches!(
                restore
                    .status
                    .as_ref()
                    .and_then(|status| RestorePhase::try_from(status.phase).ok()),
                Some(
                    RestorePhase::Completed
                        | RestorePhase::PartiallyFailed
                        | RestorePhase::Failed
                        | RestorePhase::Cancelled
                )
            ),
        }
    }
}

/// A Watch stream of either kind.
enum Events {
    Backup(tonic::Streaming<v1::BackupEvent>),
    Restore(tonic::Streaming<v1::RestoreEvent>),
}

impl Events {
    /// The next state; `Ok(None)` when the stream ended.
    async fn next(&mut self) -> Result<Option<Option<Followed>>, tonic::Status> {
        Ok(match self {
            Events::Backup(stream) => stream
                .message()
                .await?
                .map(|event| event.backup.map(Followed::Backup)),
            Events::Restore(stream) => stream
                .message()
                .await?
                .map(|event| event.restore.map(Followed::Restore)),
        })
    }
}

fn watch_call(followed: &Followed) -> Call {
    match followed {
        Followed::Backup(_) => Call::new("WatchBackup", "backup", followed.name(), "watching"),
        Followed::Restore(_) => Call::new("WatchRestore", "restore", followed.name(), "watching"),
    }
}

async fn open(session: &mut Session, followed: &Followed) -> Result<Events, tonic::Status> {
    let name = followed.name().to_string();
    Ok(match followed {
        Followed::Backup(_) => Events::Backup(
            session
                .client
                .watch_backup(v1::WatchBackupRequest { name })
                .await?
                .into_inner(),
        ),
        Followed::Restore(_) => Events::Restore(
            session
                .client
                .watch_restore(v1::WatchRestoreRequest { name })
                .await?
                .into_inner(),
        ),
    })
}

async fn refresh(session: &mut Session, followed: &Followed) -> Result<Followed, CliError> {
    Ok(match followed {
        Followed::Backup(_) => {
            Followed::Backup(session::get_backup(session, followed.name()).await?)
        }
        Followed::Restore(_) => {
            Followed::Restore(session::get_restore(session, followed.name()).await?)
        }
    })
}

impl From<v1::Backup> for Followed {
    fn from(backup: v1::Backup) -> Self {
        Followed::Backup(backup)
    }
}

impl From<v1::Restore> for Followed {
    fn from(restore: v1::Restore) -> Self {
        Followed::Restore(restore)
    }
}

impl TryFrom<Followed> for v1::Backup {
    type Error = Followed;

    fn try_from(followed: Followed) -> Result<Self, Followed> {
        match followed {
            Followed::Backup(backup) => Ok(backup),
            other => Err(other),
        }
    }
}

impl TryFrom<Followed> for v1::Restore {
    type Error = Followed;

    fn try_from(followed: Followed) -> Result<Self, Followed> {
        match followed {
            Followed::Restore(restore) => Ok(restore),
            other => Err(other),
        }
    }
}

/// A token cancelled on Ctrl-C or SIGTERM.
fn interrupt_token() -> CancellationToken {
    let token = CancellationToken::new();
    stowage_grpc::cancel_on_signal(token.clone());
    token
}

/// Follows `created` (a backup or a restore) until it ends, showing progress on stdout
/// (stderr when stdout carries `-o json|yaml`). `None` when the user interrupted.
pub async fn follow<T>(
    session: &mut Session,
    created: T,
    progress_to_stderr: bool,
) -> Result<Option<T>, CliError>
where
    T: Into<Followed> + TryFrom<Followed>,
{
    let token = interrupt_token();
    let mut display = Display::new(progress_to_stderr);
    let result = follow_with(session, created.into(), &mut display, &token).await;
    match &result {
        Ok(Some(_)) => display.finish(),
        _ => display.abandon(),
    }
    // Stops the signal task.
    token.cancel();
    // The loop only replaces the state with one of the same kind, so the conversion back
    // cannot fail.
    Ok(result?.and_then(|finished| T::try_from(finished).ok()))
}

/// The pause before subscribing again to a stream that broke.
const RESUBSCRIBE_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

async fn follow_with(
    session: &mut Session,
    created: Followed,
    display: &mut Display,
    token: &CancellationToken,
) -> Result<Option<Followed>, CliError> {
    display.show(&created.snapshot());
    let mut latest = created;
    let mut streaming = true;
    // Why the last stream broke, while it is being opened again.
    let mut lost: Option<String> = None;
    loop {
        if latest.ended() {
            return Ok(Some(latest));
        }
        if streaming {
            let call = watch_call(&latest);
            let opened = tokio::select! {
                _ = token.cancelled() => return Ok(None),
                opened = open(session, &latest) => opened,
            };
            match opened {
                // The stream broke and the server cannot be reached again: the operation
                // itself is not known to have failed.
                Err(status) if status.source().is_some() && lost.is_some() => {
                    return Err(CliError::ConnectionLost {
                        server: session.server.clone(),
                        kind: latest.kind(),
                        name: latest.name().to_string(),
                        cause: lost.unwrap_or_else(|| root_cause(&status)),
                    });
                }
                Ok(mut events) => loop {
                    lost = None;
                    let next = tokio::select! {
                        _ = token.cancelled() => return Ok(None),
                        next = events.next() => next,
                    };
                    match next {
                        Ok(Some(Some(state))) => {
                            display.show(&state.snapshot());
                            latest = state;
                            if latest.ended() {
                                return Ok(Some(latest));
                            }
                        }
                        // An event without a body says nothing; keep reading.
                        Ok(Some(None)) => {}
                        Ok(None) => break,
                        // A transport failure of this client (the server went away, e.g.
                        // a leader that stopped): subscribe again at once, through the
                        // Service to whichever replica leads now (a standby's refusals are
                        // waited out, standby.rs).
                        Err(status) if status.source().is_some() => {
                            lost = Some(root_cause(&status));
                            break;
                        }
                        Err(status) => return Err(session.fail(status, &call)),
                    }
                },
                Err(status) if status.code() == tonic::Code::Unimplemented => streaming = false,
                Err(status) => return Err(session.fail(status, &call)),
            }
            if lost.is_some() {
                // A short pause, so that a server that accepts and drops at once is not
                // hammered.
                tokio::select! {
                    _ = token.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(RESUBSCRIBE_PAUSE) => {}
                }
                continue;
            }
        }
        // Polling, or the stream ended before the operation did: ask again after a pause.
        tokio::select! {
            _ = token.cancelled() => return Ok(None),
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
        }
        latest = refresh(session, &latest).await?;
        display.show(&latest.snapshot());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(phase: BackupPhase) -> Followed {
        Followed::Backup(v1::Backup {
            name: "b".into(),
            status: Some(v1::BackupStatus {
                phase: phase as i32,
                volumes_total: 2,
                volumes_completed: 1,
                progress: Some(v1::Progress {
                    bytes_done: 5,
                    bytes_total: 10,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn backups_end_in_terminal_phases_only() {
        for phase in [BackupPhase::New, BackupPhase::InProgress] {
            assert!(!backup(phase).ended(), "{phase:?}");
        }
        for phase in [
            BackupPhase::Completed,
            BackupPhase::PartiallyFailed,
            BackupPhase::Failed,
            BackupPhase::Cancelled,
            BackupPhase::Deleting,
        ] {
            assert!(backup(phase).ended(), "{phase:?}");
        }
        let unknown = Followed::Backup(v1::Backup {
            status: Some(v1::BackupStatus {
                phase: 99,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(!unknown.ended());
    }

    #[test]
    fn restores_end_in_terminal_phases_only() {
        let restore = |phase: RestorePhase| {
            Followed::Restore(v1::Restore {
                status: Some(v1::RestoreStatus {
                    phase: phase as i32,
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        for phase in [RestorePhase::New, RestorePhase::InProgress] {
            assert!(!restore(phase).ended(), "{phase:?}");
        }
        for phase in [
            RestorePhase::Completed,
            RestorePhase::PartiallyFailed,
            RestorePhase::Failed,
            RestorePhase::Cancelled,
        ] {
            assert!(restore(phase).ended(), "{phase:?}");
        }
    }

    #[test]
    fn snapshots_carry_phase_counts_and_bytes() {
        let snapshot = backup(BackupPhase::InProgress).snapshot();
        assert_eq!(snapshot.kind, "backup");
        assert_eq!(snapshot.phase, "InProgress");
        assert_eq!(
            (
                snapshot.volumes_total,
                snapshot.volumes_completed,
                snapshot.bytes_done,
                snapshot.bytes_total
            ),
            (2, 1, 5, 10)
        );
        assert!(snapshot.bytes_total_known);
    }

    #[test]
    fn a_total_restic_is_still_counting_is_not_known() {
        let mut followed = backup(BackupPhase::InProgress);
        let Followed::Backup(backup) = &mut followed else {
            unreachable!()
        };
        let status = backup.status.as_mut().unwrap();
        let volume = |phase: v1::VolumePhase, done: u64, total: u64| v1::PodVolumeBackup {
            phase: phase as i32,
            progress: Some(v1::Progress {
                bytes_done: done,
                bytes_total: total,
                files_total: total,
                ..Default::default()
            }),
            ..Default::default()
        };
        status.volumes = vec![
            volume(v1::VolumePhase::Completed, 5, 5),
            volume(v1::VolumePhase::InProgress, 0, 0),
        ];
        assert!(!followed.snapshot().bytes_total_known);
        let Followed::Backup(backup) = &mut followed else {
            unreachable!()
        };
        let status = backup.status.as_mut().unwrap();
        status.volumes[1] = volume(v1::VolumePhase::InProgress, 0, 5);
        assert!(followed.snapshot().bytes_total_known);
    }
}
